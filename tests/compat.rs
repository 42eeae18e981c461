//! Issue 18 end to end: Orders v0 calls answered from Orders 2026-01-01 through the gateway, in
//! front of a sandbox whose v0 is switched off (answers as removed).
//!
//! The field-by-field acceptance (every produced field equal to the sandbox's own v0 answer for
//! every kind of synthetic order, and the PII policy equal for every role) is in
//! `src/sandbox/orders_compat_tests.rs`; here: the pipeline (the 2026 operation's rate limit and
//! credentials, NextToken pagination, errors in v0's shape, the audit record naming both
//! operations, `auto` switching on a removed answer) and an unmodified Python SDK.

mod common;

use common::*;
use http::StatusCode;

const SEARCH: &str = "orders_2026-01-01.searchOrders";
const GET_ORDER: &str = "orders_2026-01-01.getOrder";

fn translate_opts(audit_dir: Option<&std::path::Path>) -> Options {
    let audit = audit_dir.map_or(String::new(), |d| {
        format!(
            "[audit]\ndir = {:?}\ninstance = \"compat\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            d.display().to_string()
        )
    });
    Options {
        extra_toml: format!("[compat]\norders_v0 = \"translate\"\n{audit}"),
        ..Options::default()
    }
}

fn v0_calls(gw: &TestGateway) -> usize {
    spgate::compat::Kind::ALL
        .iter()
        .map(|k| gw.sandbox.received(k.v0_key()).len())
        .sum()
}

fn url(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_get_orders_pages_through_gateway_tokens_and_spends_search_orders_quota() {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(translate_opts(Some(audit.path()))).await;
    gw.sandbox.remove_orders_v0();
    let mut path = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2&CreatedAfter=2000-01-01T00:00:00Z&MaxResultsPerPage=15".to_string();
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let r = gw.get(&path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        pages += 1;
        for o in v["payload"]["Orders"].as_array().unwrap() {
            assert!(
                o["OrderStatus"].is_string() && o["PurchaseDate"].is_string(),
                "{o}"
            );
            ids.push(o["AmazonOrderId"].as_str().unwrap().to_string());
        }
        assert!(v["payload"]["CreatedBefore"].is_string());
        let Some(next) = v["payload"]["NextToken"].as_str() else {
            break;
        };
        assert!(
            next.starts_with("spgate-v0-next."),
            "a gateway token: {next}"
        );
        path = format!("/orders/v0/orders?NextToken={}", url(next));
    }
    assert_eq!((pages, ids.len()), (3, 40));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "no order twice");
    // Amazon saw only the 2026 search, with the first page's parameters on every page.
    assert_eq!(v0_calls(&gw), 0);
    let sent = gw.sandbox.received(SEARCH);
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|r| r
        .path_and_query
        .contains("marketplaceIds=ATVPDKIKX0DER%2CA2EUQ1WTGCTBG2")));
    assert!(sent[1].path_and_query.contains("paginationToken="));
    // The quota spent is searchOrders' (no getOrders bucket exists).
    let limiter = gw.gateway.limiter();
    let search = limiter.status(Some(SELLER), Some(SEARCH));
    assert_eq!(search.len(), 1);
    assert_eq!(search[0].tools.iter().map(|t| t.admitted).sum::<u64>(), 3);
    assert!(limiter
        .status(Some(SELLER), Some("ordersV0.getOrders"))
        .is_empty());
    // The audit record names the v0 operation asked and the 2026 operation answering it.
    let records = audit_records(&gw, audit.path()).await;
    let translated: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == "ordersV0.getOrders")
        .collect();
    assert_eq!(translated.len(), 3);
    assert!(
        translated.iter().all(|r| r["translated_to"] == SEARCH),
        "{translated:?}"
    );
    // A token is bound to the tool and seller that got it, and tampering is refused.
    let r = gw
        .get("/orders/v0/orders?NextToken=spgate-v0-next.v1%3Ak%3Aforged")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_order_operations_answer_in_v0s_shape_from_get_order() {
    let gw = start_gateway(translate_opts(None)).await;
    gw.sandbox.remove_orders_v0();
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[5].clone(); // a business order
    let order = gw.get(&format!("/orders/v0/orders/{id}")).await.json();
    assert_eq!(order["payload"]["AmazonOrderId"], id.as_str());
    assert_eq!(order["payload"]["IsBusinessOrder"], true);
    assert!(
        order["payload"]["ShippingAddress"]["AddressLine1"].is_string(),
        "{order}"
    );
    assert!(
        order["payload"]["BuyerInfo"]["BuyerEmail"].is_string(),
        "{order}"
    );
    let address = gw
        .get(&format!("/orders/v0/orders/{id}/address"))
        .await
        .json();
    assert_eq!(address["payload"]["ShippingAddress"]["City"], "Testville");
    assert!(address["payload"]["BuyerCompanyName"].is_string());
    let buyer = gw
        .get(&format!("/orders/v0/orders/{id}/buyerInfo"))
        .await
        .json();
    assert!(buyer["payload"]["BuyerName"].is_string());
    let items = gw
        .get(&format!("/orders/v0/orders/{id}/orderItems"))
        .await
        .json();
    assert!(!items["payload"]["OrderItems"]
        .as_array()
        .unwrap()
        .is_empty());
    let items_buyer = gw
        .get(&format!("/orders/v0/orders/{id}/orderItems/buyerInfo"))
        .await
        .json();
    assert_eq!(items_buyer["payload"]["AmazonOrderId"], id.as_str());
    assert_eq!(v0_calls(&gw), 0);
    let sent = gw.sandbox.received(GET_ORDER);
    assert_eq!(sent.len(), 5);
    assert!(
        sent[2].path_and_query.ends_with("includedData=BUYER"),
        "{}",
        sent[2].path_and_query
    );
    // A missing order: Amazon's 404, in v0's (identical) error shape.
    let r = gw.get("/orders/v0/orders/999-0000000-0000000").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "NotFound");
    // A v0 parameter 2026 cannot express: refused before anything is sent, naming it.
    let before = gw.sandbox.received(SEARCH).len();
    let r = gw.get("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01&BuyerEmail=x%40example.com").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errors"][0]["details"], "BuyerEmail");
    assert_eq!(gw.sandbox.received(SEARCH).len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_data_is_reduced_to_the_role_and_its_policy_applies_to_the_v0_answer() {
    // A label printer: the address without the name, the phone masked, no buyer data.
    let role = "[roles.labels.pii]\naddress = \"pass\"\npostal_code = \"pass\"\ncoarse_location = \"pass\"\nphone = \"mask\"\n";
    let gw = start_gateway(Options {
        role: "labels".into(),
        roles_toml: role.into(),
        ..translate_opts(None)
    })
    .await;
    gw.sandbox.remove_orders_v0();
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let order = gw.get(&format!("/orders/v0/orders/{id}")).await.json();
    let sent = gw.sandbox.received(GET_ORDER);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0]
            .path_and_query
            .ends_with("?includedData=FULFILLMENT%2CPROCEEDS%2CRECIPIENT"),
        "BUYER is not asked for: {}",
        sent[0].path_and_query
    );
    let p = &order["payload"];
    assert_eq!(
        p["ShippingAddress"]["AddressLine1"], "1 Synthetic Way",
        "{order}"
    );
    assert!(
        p["ShippingAddress"].get("Name").is_none_or(|n| n == ""),
        "name dropped: {order}"
    );
    let phone = p["ShippingAddress"]["Phone"].as_str().unwrap_or_default();
    assert!(
        !phone.is_empty() && phone != "+1 206-555-0100",
        "phone masked: {order}"
    );
    assert!(p.get("BuyerInfo").is_none(), "{order}");
    assert_eq!(p["OrderStatus"], "Unshipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_passes_v0_through_until_amazon_answers_it_as_removed_then_translates() {
    let gw = start_gateway(Options {
        extra_toml: "[compat]\norders_v0 = \"auto\"\n".into(),
        ..Options::default()
    })
    .await;
    let list = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2000-01-01T00:00:00Z";
    assert_eq!(gw.get(list).await.status, StatusCode::OK);
    assert_eq!(
        gw.sandbox.received("ordersV0.getOrders").len(),
        1,
        "passed through"
    );
    gw.sandbox.remove_orders_v0();
    let r = gw.get(list).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the call that finds v0 removed gets Amazon's answer"
    );
    assert!(gw.gateway.compat().removal_seen());
    let r = gw.get(list).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(!r.json()["payload"]["Orders"].as_array().unwrap().is_empty());
    assert_eq!(gw.sandbox.received("ordersV0.getOrders").len(), 2);
    assert_eq!(gw.sandbox.received(SEARCH).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_amazon_sp_api_v0_orders_client_works_unmodified_in_translate_mode() {
    let Some(python) = sdk_python() else { return };
    let gw = start_gateway(translate_opts(None)).await;
    gw.sandbox.remove_orders_v0();
    let stdout = run_sdk_script(&gw, python, "orders_v0_translate.py").await;
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let mut ids: Vec<&str> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 40, "every synthetic order, over 5 pages");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    assert!(v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_str().unwrap().starts_with("spgate-v0-next.")));
    assert_eq!(v["order"]["IsBusinessOrder"], true);
    assert_eq!(v["address"]["AmazonOrderId"], v["order_id"]);
    assert!(
        v["address"]["ShippingAddress"]["AddressLine1"].is_string(),
        "{v}"
    );
    assert!(
        v["buyer"]["BuyerEmail"].is_string() && v["buyer"]["BuyerName"].is_string(),
        "{v}"
    );
    assert!(!v["items"]["OrderItems"].as_array().unwrap().is_empty());
    assert_eq!(v0_calls(&gw), 0, "Amazon's v0 was never asked");
    assert!(gw.sandbox.received(SEARCH).len() >= 6);
}
