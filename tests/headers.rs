//! Header allowlists in both directions (issue 11 item 5), through the sandbox: what a tool may
//! send reaches Amazon and nothing else does; what Amazon sends back reaches the tool only when
//! allowlisted; every dropped header is counted per direction. The allowlist of SP-API request
//! headers is exactly the header parameters Amazon's models document.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use spgate::proxy::headers::{SP_API_REQUEST_HEADERS, TO_CALLER};
use spgate::sandbox::{Script, ScriptBody};

const SELLERS: &str = "/sellers/v1/marketplaceParticipations";
const SELLERS_OP: &str = "sellers.getMarketplaceParticipations";
const ADDRESS: &str = "/orders/v0/orders/123-1234567-1234567/address";
const ADDRESS_OP: &str = "ordersV0.getOrderAddress";

/// Headers Amazon (or anything posing as it) might send that a tool must never see.
const UNWANTED_BACK: [(&str, &str); 6] = [
    ("set-cookie", "session=amazon; Path=/"),
    ("location", "https://evil.example/phish"),
    ("x-amzn-trace-id", "Root=1-abc"),
    ("x-amz-rid", "R1"),
    ("x-spgate-cache", "hit"),
    ("server", "Server"),
];

fn script_with(headers: &[(&str, &str)], body: serde_json::Value) -> Script {
    let mut all: Vec<(&str, &str)> = vec![
        ("x-amzn-requestid", "amzn-req-1"),
        ("x-amzn-ratelimit-limit", "2.0"),
    ];
    all.extend_from_slice(headers);
    Script {
        status: StatusCode::OK,
        headers: all
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        body: ScriptBody::Json(body),
        header_delay: Duration::ZERO,
        times: None,
    }
}

#[tokio::test]
async fn set_cookie_location_and_arbitrary_amazon_headers_never_reach_tools() {
    let gw = start_gateway(Options::default()).await;
    for (op, path, body) in [
        (SELLERS_OP, SELLERS, serde_json::json!({"payload": []})),
        (ADDRESS_OP, ADDRESS, serde_json::json!({"payload": {}})),
    ] {
        gw.sandbox.script(op, script_with(&UNWANTED_BACK, body));
        let before = gw.gateway.header_drops().to_caller();
        let reply = gw.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{op}: {:?}", reply.body);
        for (name, _) in UNWANTED_BACK {
            if name == "x-spgate-cache" {
                continue; // checked below: Amazon cannot set the gateway's own headers
            }
            assert!(!reply.headers.contains_key(name), "{op}: {name} passed");
        }
        assert!(reply
            .headers
            .get("x-spgate-cache")
            .is_none_or(|v| v != "hit"));
        assert_eq!(reply.headers["x-amzn-requestid"], "amzn-req-1");
        assert_eq!(reply.headers["x-amzn-ratelimit-limit"], "2.0");
        assert!(reply.headers.contains_key("x-spgate-request-id"));
        let from_amazon: Vec<&str> = reply
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !k.starts_with("x-spgate-") && *k != "date")
            .collect();
        for name in &from_amazon {
            assert!(TO_CALLER.contains(name), "{op}: {name} is not allowlisted");
        }
        assert_eq!(
            gw.gateway.header_drops().to_caller() - before,
            // And the sandbox's `Date` (the gateway's server sets its own).
            UNWANTED_BACK.len() as u64 + 1,
            "{op}: every dropped header is counted"
        );
    }
}

#[tokio::test]
async fn cookies_forwarding_headers_and_tool_chosen_amazon_headers_never_reach_amazon() {
    let gw = start_gateway(Options::default()).await;
    let unwanted = [
        ("cookie", "session=tool"),
        ("forwarded", "for=10.1.2.3;proto=https"),
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-host", "internal.example"),
        ("x-real-ip", "10.1.2.3"),
        ("x-amzn-requestid", "tool-chosen"),
        ("x-amzn-trace-id", "Root=tool"),
        ("x-amz-date", "20260101T000000Z"),
        ("x-amz-security-token", "tool-token"),
        ("origin", "https://tool.example"),
        ("x-custom", "1"),
        // Documented, but for Shipping v2 only.
        ("x-amzn-idempotencykey", "idem-1"),
    ];
    let wanted = [
        ("accept", "application/json"),
        ("user-agent", "label-printer/2.1 (Language=Rust)"),
        ("accept-language", "de-DE"),
    ];
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let address = format!("/orders/v0/orders/{order}/address");
    for (op, path) in [(SELLERS_OP, SELLERS), (ADDRESS_OP, address.as_str())] {
        let before = gw.gateway.header_drops().to_upstream();
        let mut req = gw.request(Method::GET, path);
        for (k, v) in unwanted.iter().chain(&wanted) {
            req = req.header(*k, *v);
        }
        let reply = gw.call(req.body(empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{op}: {:?}", reply.body);
        let got = gw.sandbox.received(op);
        let h = &got.last().expect("the sandbox received the call").headers;
        for (name, _) in unwanted {
            assert!(!h.contains_key(name), "{op}: {name} reached Amazon");
        }
        for (name, value) in wanted {
            assert_eq!(h[name], value, "{op}: {name}");
        }
        for name in ["authorization", "x-spgate-seller"] {
            assert!(!h.contains_key(name), "{op}: {name} reached Amazon");
        }
        assert!(h.contains_key("x-amz-access-token"), "set by the gateway");
        // The unwanted headers and the tool's key, seller and `Host`, each counted once.
        assert_eq!(
            gw.gateway.header_drops().to_upstream() - before,
            unwanted.len() as u64 + 3,
            "{op}"
        );
    }
}

/// Every `in: header` parameter of every operation in a model (lower case), with the model.
fn header_params(stem: &str, model: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
    let resolve = |p: &serde_json::Value| -> serde_json::Value {
        match p["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap_or_default();
                model["parameters"][name].clone()
            }
            None => p.clone(),
        }
    };
    let Some(paths) = model["paths"].as_object() else {
        return;
    };
    for item in paths.values() {
        let shared: Vec<serde_json::Value> =
            item["parameters"].as_array().cloned().unwrap_or_default();
        for method in ["get", "put", "post", "delete", "patch", "head"] {
            let Some(op) = item.get(method) else { continue };
            let own = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in shared.iter().chain(&own).map(resolve) {
                if p["in"] == "header" {
                    let name = p["name"].as_str().unwrap().to_ascii_lowercase();
                    out.insert((name, stem.to_string()));
                }
            }
        }
    }
}

#[test]
fn the_sp_api_request_headers_allowed_up_are_exactly_those_the_models_document_per_api() {
    let Some(dir) = models_dir() else { return };
    let mut documented = BTreeSet::new();
    for api in std::fs::read_dir(&dir).unwrap() {
        let api = api.unwrap().path();
        if !api.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&api).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                let model: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                let stem = f.file_stem().unwrap().to_str().unwrap();
                header_params(stem, &model, &mut documented);
            }
        }
    }
    let allowed: BTreeSet<(String, String)> = SP_API_REQUEST_HEADERS
        .iter()
        .map(|(h, m)| (h.to_string(), m.to_string()))
        .collect();
    assert_eq!(
        allowed, documented,
        "headers::SP_API_REQUEST_HEADERS must list exactly the header parameters of Amazon's models, each with its model"
    );
}

#[tokio::test]
async fn a_documented_sp_api_header_reaches_the_api_that_documents_it() {
    let gw = start_gateway(Options::default()).await;
    let req = gw
        .request(
            Method::GET,
            "/shipping/v2/tracking?trackingId=1Z999&carrierId=AMZN_US",
        )
        .header("x-amzn-shipping-business-id", "AmazonShipping_US")
        .header("x-amzn-fulfillment-service-id", "for-fba-outbound-only")
        .body(empty())
        .unwrap();
    let _ = gw.call(req).await;
    let got = gw.sandbox.received("shippingV2.getTracking");
    let h = &got.last().expect("the sandbox received the call").headers;
    assert_eq!(h["x-amzn-shipping-business-id"], "AmazonShipping_US");
    assert!(!h.contains_key("x-amzn-fulfillment-service-id"));
}
