//! Issue 18 end to end: Orders v0 calls answered from Orders 2026-01-01 through the gateway, in
//! front of a sandbox whose v0 is switched off (answers as removed).
//!
//! The field-by-field acceptance (every produced field equal to the sandbox's own v0 answer for
//! every kind of synthetic order, and the PII policy equal for every role) is in
//! `src/sandbox/orders_compat_tests.rs`; here: the pipeline (the 2026 operation's rate limit and
//! credentials, NextToken pagination, errors in v0's shape, the audit record naming both
//! operations, `auto` switching a region once several sellers are answered as removed, and its
//! reset) and an unmodified Python SDK.

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
    // Masked: only the last two digits remain (the synthetic phones are +1 206-555-01NN).
    let phone = p["ShippingAddress"]["Phone"].as_str().unwrap_or_default();
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    assert!(
        digits.len() == 2
            && phone.ends_with(&digits.iter().collect::<String>())
            && phone.contains('*'),
        "phone masked: {order}"
    );
    assert!(p.get("BuyerInfo").is_none(), "{order}");
    assert_eq!(p["OrderStatus"], "Unshipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_translates_a_region_only_after_several_sellers_are_answered_as_removed_and_can_be_reset(
) {
    use spgate::store::Region;
    let audit = tempfile::tempdir().unwrap();
    let mut opts = translate_opts(Some(audit.path()));
    opts.extra_toml = opts.extra_toml.replace(
        "orders_v0 = \"translate\"",
        "orders_v0 = \"auto\"\nauto_removal_sellers = 2",
    );
    opts.key_sellers = vec!["*".into()];
    let gw = start_gateway(opts).await;
    let (eu2, na) = ("A1COMPATEUTWO", "A1COMPATNAONE");
    add_seller(&gw, eu2, Region::Eu).await;
    add_seller(&gw, na, Region::Na).await;
    let list = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2000-01-01T00:00:00Z";
    assert_eq!(gw.get_for(SELLER, list).await.status, StatusCode::OK);
    assert_eq!(
        gw.sandbox.received("ordersV0.getOrders").len(),
        1,
        "passed through"
    );
    gw.sandbox.remove_orders_v0();
    // One seller's removed answers, however many, switch nobody: each call passes through.
    for _ in 0..3 {
        assert_eq!(gw.get_for(SELLER, list).await.status, StatusCode::NOT_FOUND);
    }
    // Another region's seller counts for its own region only.
    assert_eq!(gw.get_for(na, list).await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.sandbox.received("ordersV0.getOrders").len(), 5);
    assert_eq!(gw.sandbox.received(SEARCH).len(), 0);
    // A second seller of the region: the call that finds it gets Amazon's answer, every later
    // call of the region is translated; the other region still passes through.
    assert_eq!(gw.get_for(eu2, list).await.status, StatusCode::NOT_FOUND);
    let r = gw.get_for(SELLER, list).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(!r.json()["payload"]["Orders"].as_array().unwrap().is_empty());
    assert_eq!(gw.get_for(eu2, list).await.status, StatusCode::OK);
    assert_eq!(gw.get_for(na, list).await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.sandbox.received("ordersV0.getOrders").len(), 7);
    assert_eq!(gw.sandbox.received(SEARCH).len(), 2);
    let mut metrics = String::new();
    gw.gateway.compat().render_metrics(&mut metrics);
    assert!(
        metrics.contains("\nspgate_compat_orders_v0_auto_translating{region=\"eu\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nspgate_compat_orders_v0_auto_translating{region=\"na\"} 0\n"),
        "{metrics}"
    );
    // The reset goes through the admin listener (ops), and is audited.
    let ops = "ops-token-0123456789abcdef0123456789";
    let admin = spgate::admin::Admin::new(
        gw.gateway.clone(),
        &[spgate::config::AdminToken {
            name: "ops-alice".into(),
            role: spgate::config::AdminRole::Ops,
            token: spgate::secret::Secret::new(ops.into()),
        }],
        None,
        std::sync::Arc::new(spgate::config::MapEnv::default()),
    );
    let admin_call = |method: http::Method, path: &str, token: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap()
    };
    let status = admin
        .handle(admin_call(http::Method::GET, "/admin/compat", ops))
        .await;
    assert_eq!(status.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(status.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["orders_v0_auto"][1]["region"], "eu", "{v}");
    assert_eq!(v["orders_v0_auto"][1]["translating"], true, "{v}");
    assert_eq!(v["orders_v0_auto"][0]["sellers_answered_removed"], 1, "{v}");
    let refused = admin
        .handle(admin_call(
            http::Method::POST,
            "/admin/compat/reset",
            "not-a-token",
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let bad = admin
        .handle(admin_call(
            http::Method::POST,
            "/admin/compat/reset?region=mars",
            ops,
        ))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let reset = admin
        .handle(admin_call(
            http::Method::POST,
            "/admin/compat/reset?region=eu",
            ops,
        ))
        .await;
    assert_eq!(reset.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(reset.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["were_translating"], serde_json::json!(["eu"]));
    assert_eq!(
        gw.get_for(SELLER, list).await.status,
        StatusCode::NOT_FOUND,
        "passes through again"
    );
    // The switch and the reset are in the audit log.
    let records = audit_records(&gw, audit.path()).await;
    let switches: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "compat_switch")
        .collect();
    assert_eq!(switches.len(), 2, "{switches:?}");
    assert_eq!(switches[0]["reason"], "orders_v0_removed_eu");
    assert_eq!(switches[0]["seller"], eu2);
    assert_eq!(switches[0]["count"], 2);
    assert_eq!(switches[0]["operation"], "ordersV0.getOrders");
    assert_eq!(switches[1]["reason"], "reset_eu");
    assert_eq!(switches[1]["actor"], "ops-alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_is_not_recorded_as_translated() {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        pii_cache: true,
        ..translate_opts(Some(audit.path()))
    })
    .await;
    gw.sandbox.remove_orders_v0();
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[3].clone();
    let path = format!("/orders/v0/orders/{id}/address");
    let first = gw.get(&path).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-spgate-cache"], "miss");
    let second = gw.get(&path).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.headers["x-spgate-cache"], "hit");
    assert_eq!(second.json(), first.json());
    assert_eq!(
        gw.sandbox.received(GET_ORDER).len(),
        1,
        "the hit sent nothing"
    );
    let records = audit_records(&gw, audit.path()).await;
    let asked: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == "ordersV0.getOrderAddress")
        .collect();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0]["translated_to"], GET_ORDER);
    assert_eq!(asked[0]["unconverted"], 0);
    assert!(asked[1].get("translated_to").is_none(), "{:?}", asked[1]);
    assert!(asked[1].get("unconverted").is_none(), "{:?}", asked[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_words_of_a_translated_call_need_a_role_that_passes_both_operations_categories() {
    use spgate::sandbox::{Script, ScriptBody};
    // Passes every category getOrderItems (v0) carries, not those getOrder (2026) carries.
    let role = "[roles.gifts.pii]\ngift_message = \"pass\"\ncustomization_url = \"pass\"\n";
    let gw = start_gateway(Options {
        role: "gifts".into(),
        roles_toml: role.into(),
        ..translate_opts(None)
    })
    .await;
    gw.sandbox.remove_orders_v0();
    gw.sandbox.script(
        GET_ORDER,
        Script {
            status: StatusCode::BAD_REQUEST,
            headers: Vec::new(),
            body: ScriptBody::Json(serde_json::json!({"errors": [{
                "code": "InvalidInput",
                "message": "Order of Ada Synthetic at 1 Synthetic Way cannot be read.",
                "details": "Ada Synthetic",
            }]})),
            header_delay: std::time::Duration::ZERO,
            times: None,
        },
    );
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[1].clone();
    let r = gw.get(&format!("/orders/v0/orders/{id}/orderItems")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json();
    assert_eq!(v["errors"][0]["code"], "InvalidInput");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains("Synthetic"),
        "the 2026 error's words are withheld: {text}"
    );
    assert!(v["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
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
    // The business order's business data came through the translation.
    assert_eq!(v["order"]["IsBusinessOrder"], true);
    assert!(ids.contains(&v["order_id"].as_str().unwrap()));
    assert!(
        v["address"]["BuyerCompanyName"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert!(
        v["buyer"]["PurchaseOrderNumber"]
            .as_str()
            .is_some_and(|po| po.starts_with("PO-SYNTH-")),
        "{v}"
    );
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
    // The SDK's own paging helper sends the first page's filters again with each NextToken
    // (Amazon's v0 applies them); the same filters continue the same search.
    let mut paged: Vec<&str> = v["paged_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    paged.sort_unstable();
    assert_eq!(paged, ids);
    assert_eq!(v["changed_filter"]["status"], 400, "{v}");
    assert_eq!(v["changed_filter"]["details"], "CreatedAfter", "{v}");
    assert_eq!(v0_calls(&gw), 0, "Amazon's v0 was never asked");
    // 5 pages, the business search, 5 pages through the SDK's helper; the refused page is
    // never sent.
    assert_eq!(gw.sandbox.received(SEARCH).len(), 11);
    assert_eq!(gw.sandbox.received(GET_ORDER).len(), 3);
}
