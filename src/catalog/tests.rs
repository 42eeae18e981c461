//! Unit tests for the catalog: loading, routing and path expansion.

use super::*;

#[test]
fn builtin_catalog_loads_all_370_operations() {
    let catalog = Catalog::parse(OPERATIONS_TSV).expect("catalog parses");
    assert_eq!(catalog.operations().len(), 370);
}

#[test]
fn every_operation_routes_to_itself_from_its_expanded_path() {
    let catalog = Catalog::builtin();
    for op in catalog.operations() {
        let names: Vec<&str> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let values: Vec<String> = names.iter().map(|n| format!("v-{n} /x")).collect();
        let params: Vec<(&str, &str)> = names
            .iter()
            .zip(&values)
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let path = op.expand_path(&params);
        let route = catalog
            .route(&op.method, &path)
            .unwrap_or_else(|| panic!("{} {} does not route", op.method, path));
        assert_eq!(route.operation.key, op.key, "{path}");
        for (n, v) in &params {
            assert!(
                route.params.contains(&(*n, (*v).to_string())),
                "{path}: {n}"
            );
        }
    }
}

#[test]
fn unknown_paths_methods_and_empty_segments_do_not_route() {
    let catalog = Catalog::builtin();
    let cases = [
        (Method::GET, "/orders/v0/ordersX"),
        (Method::GET, "/nope"),
        (Method::GET, "/"),
        (Method::PATCH, "/orders/v0/orders/123"),
        (Method::GET, "/orders/v0/orders//address"),
        (Method::GET, "/orders/v0/orders/123/address/"),
        (Method::GET, "/orders/v0/orders/%FF%FE/address"),
        (Method::GET, "/orders/v0/orders/../address"),
        (Method::GET, "/orders/v0/orders/%2e%2E/address"),
        (Method::GET, "/orders/v0/orders/./address"),
    ];
    for (method, path) in cases {
        assert!(catalog.route(&method, path).is_none(), "{method} {path}");
    }
}

#[test]
fn static_segments_win_over_parameters() {
    let catalog = Catalog::builtin();
    let route = catalog
        .route(
            &Method::POST,
            "/notifications/v1/subscriptions/ANY_OFFER_CHANGED/testNotification",
        )
        .expect("routes");
    assert_eq!(route.operation.operation_id, "sendTestNotification");
}

#[test]
fn restricted_grantless_and_plans_are_carried() {
    let catalog = Catalog::builtin();
    let addr = catalog.by_key("ordersV0.getOrderAddress").expect("exists");
    assert!(addr.restricted);
    assert_eq!(
        addr.usage_plan,
        Some(UsagePlan {
            rate_per_second: 0.5,
            burst: 30
        })
    );
    assert_eq!(addr.pii_map, Some("ordersV0.getOrderAddress"));
    let dest = catalog
        .by_key("notifications.getDestinations")
        .expect("exists");
    assert_eq!(
        dest.grantless_scope,
        Some("sellingpartnerapi::notifications")
    );
    assert!(!dest.restricted);
    let no_plan = catalog.by_key("customerFeedback_2024-06-01.getItemReviewTopics");
    assert!(no_plan.map(|o| o.usage_plan.is_none()).unwrap_or(true));
}

#[test]
fn bad_rows_are_rejected_with_their_line() {
    let cases: [(&'static str, &str); 3] = [
        ("h\na\tb\n", "line 2"),
        ("h\nk\ta\tm\to\tGET\t/x\tzz\t1\t0\t\t\tf\n", "bad rate"),
        (
            "h\nk\ta\tm\to\tGET\tx\t1\t1\t0\t\t\tf\n",
            "must start with /",
        ),
    ];
    for (tsv, want) in cases {
        let err = Catalog::parse(tsv).expect_err("rejected").to_string();
        assert!(err.contains(want), "{err}");
    }
}
