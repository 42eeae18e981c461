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

#[test]
fn application_limits_attach_to_the_operations_they_name() {
    let catalog = Catalog::builtin();
    let get = catalog
        .by_key("catalogItems_2022-04-01.getCatalogItem")
        .unwrap();
    assert_eq!(
        get.app_plan,
        Some(UsagePlan {
            rate_per_second: 250.0,
            burst: 2
        })
    );
    let patch = catalog
        .by_key("listingsItems_2021-08-01.patchListingsItem")
        .unwrap();
    assert_eq!(patch.app_plan.map(|p| p.rate_per_second), Some(500.0));
    assert_eq!(
        patch
            .app_sub_limit(CallKind::ValidationPreview)
            .map(|p| p.rate_per_second),
        Some(20.0)
    );
    assert_eq!(
        patch
            .app_sub_limit(CallKind::Variations)
            .map(|p| p.rate_per_second),
        Some(5.0)
    );
    let with_app: Vec<&str> = catalog
        .operations()
        .iter()
        .filter(|o| o.app_plan.is_some())
        .map(|o| o.key)
        .collect();
    assert_eq!(with_app.len(), 14, "{with_app:?}");
    // Orders publish no application-wide limit.
    assert!(catalog
        .by_key("ordersV0.getOrders")
        .unwrap()
        .app_plan
        .is_none());
}

#[test]
fn application_limit_rows_naming_no_operation_or_twice_are_refused() {
    let base = || Catalog::parse(OPERATIONS_TSV).unwrap();
    let header = "key\tkind\trate\tburst\tsource\n";
    let unknown: &'static str =
        Box::leak(format!("{header}nope.getNothing\t\t1\t1\tx\n").into_boxed_str());
    assert!(base().with_app_limits(unknown).is_err());
    let twice: &'static str = Box::leak(
        format!("{header}ordersV0.getOrders\t\t1\t1\tx\nordersV0.getOrders\t\t2\t1\tx\n")
            .into_boxed_str(),
    );
    assert!(base().with_app_limits(twice).is_err());
    let bad_kind: &'static str =
        Box::leak(format!("{header}ordersV0.getOrders\tbulk\t1\t1\tx\n").into_boxed_str());
    assert!(base().with_app_limits(bad_kind).is_err());
    let zero: &'static str =
        Box::leak(format!("{header}ordersV0.getOrders\t\t0\t1\tx\n").into_boxed_str());
    assert!(base().with_app_limits(zero).is_err());
}

#[test]
fn a_validation_preview_is_told_by_its_query() {
    assert_eq!(
        kind_from_query(Some("marketplaceIds=X&mode=VALIDATION_PREVIEW")),
        Some(CallKind::ValidationPreview)
    );
    assert_eq!(kind_from_query(Some("marketplaceIds=X")), None);
    assert_eq!(kind_from_query(Some("modex=VALIDATION_PREVIEW")), None);
    assert_eq!(kind_from_query(None), None);
}
