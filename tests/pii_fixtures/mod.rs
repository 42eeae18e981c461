//! Synthetic buyer-PII responses from the built-in sandbox (synthetic orders, synthetic PII),
//! shared by `tests/pii_transform.rs` and `benches/pii.rs`.
//!
//! The sandbox is called in-process (`Sandbox::handle`): an LWA access token, a Restricted Data
//! Token granting every Orders v0 data element, then the order operations. Orders 2026-01-01
//! responses ask for every `includedData` block.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use spgate::sandbox::{QuotaMode, Sandbox, SandboxConfig};
use spgate::spapi;

const CLIENT_ID: &str = "amzn1.application-oa2-client.fixtures";
const CLIENT_SECRET: &str = "fixture-client-secret";
/// Sellers whose order books make up the fixtures (each has 40 synthetic orders).
const SELLERS: [(&str, &str); 3] = [
    ("A1FIXTURESELLER", "Atzr|fixture-seller-one"),
    ("A2FIXTURESELLER", "Atzr|fixture-seller-two"),
    ("A3FIXTURESELLER", "Atzr|fixture-seller-three"),
];
const INCLUDED: &str =
    "BUYER,RECIPIENT,PROCEEDS,EXPENSE,PROMOTION,CANCELLATION,FULFILLMENT,PACKAGES,TAX,PAYMENT";

/// One response and how it was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    /// The operation key, e.g. `ordersV0.getOrder`.
    pub(crate) op: &'static str,
    /// Path parameters of the request.
    pub(crate) params: Vec<(&'static str, String)>,
    /// The response body.
    pub(crate) body: Vec<u8>,
}

impl Fixture {
    /// The path parameters as the transform takes them.
    pub(crate) fn params(&self) -> Vec<(&str, &str)> {
        self.params.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("sandbox bodies are JSON")
    }
}

/// Every order operation the sandbox serves, for a few orders of the first seller, plus the
/// order lists of every seller.
pub(crate) fn sandbox_fixtures() -> Vec<Fixture> {
    runtime().block_on(async {
        let sandbox = sandbox();
        let mut out = Vec::new();
        for (index, (seller, refresh)) in SELLERS.iter().enumerate() {
            let tokens = Tokens::get(&sandbox, refresh).await;
            out.push(
                fixture(
                    &sandbox,
                    &tokens.rdt,
                    "ordersV0.getOrders",
                    vec![],
                    "/orders/v0/orders",
                )
                .await,
            );
            out.push(
                fixture(
                    &sandbox,
                    &tokens.plain,
                    "orders_2026-01-01.searchOrders",
                    vec![],
                    &format!(
                        "/orders/2026-01-01/orders?includedData={INCLUDED}&maxResultsPerPage=100"
                    ),
                )
                .await,
            );
            if index > 0 {
                continue;
            }
            for id in Sandbox::synthetic_order_ids(seller).iter().step_by(7) {
                let params = vec![("orderId", id.clone())];
                let v0 = format!("/orders/v0/orders/{id}");
                let calls = [
                    ("ordersV0.getOrder", v0.clone(), &tokens.rdt),
                    (
                        "ordersV0.getOrderAddress",
                        format!("{v0}/address"),
                        &tokens.plain,
                    ),
                    (
                        "ordersV0.getOrderBuyerInfo",
                        format!("{v0}/buyerInfo"),
                        &tokens.plain,
                    ),
                    (
                        "ordersV0.getOrderItems",
                        format!("{v0}/orderItems"),
                        &tokens.rdt,
                    ),
                    (
                        "ordersV0.getOrderItemsBuyerInfo",
                        format!("{v0}/orderItems/buyerInfo"),
                        &tokens.plain,
                    ),
                    (
                        "orders_2026-01-01.getOrder",
                        format!("/orders/2026-01-01/orders/{id}?includedData={INCLUDED}"),
                        &tokens.plain,
                    ),
                ];
                for (op, uri, token) in calls {
                    out.push(fixture(&sandbox, token, op, params.clone(), &uri).await);
                }
            }
        }
        out
    })
}

/// A 100-order Orders v0 `getOrders` response (orders of three synthetic sellers).
pub(crate) fn v0_orders_100(fixtures: &[Fixture]) -> Vec<u8> {
    merge(fixtures, "ordersV0.getOrders", &["payload", "Orders"], 100)
}

/// A 100-order Orders 2026-01-01 `searchOrders` response.
pub(crate) fn v2026_orders_100(fixtures: &[Fixture]) -> Vec<u8> {
    merge(fixtures, "orders_2026-01-01.searchOrders", &["orders"], 100)
}

/// The first fixture of an operation.
pub(crate) fn first<'a>(fixtures: &'a [Fixture], op: &str) -> &'a Fixture {
    fixtures
        .iter()
        .find(|f| f.op == op)
        .unwrap_or_else(|| panic!("no fixture for {op}"))
}

fn merge(fixtures: &[Fixture], op: &str, path: &[&str], count: usize) -> Vec<u8> {
    let mut orders = Vec::new();
    for f in fixtures.iter().filter(|f| f.op == op) {
        let mut v = f.json();
        for p in path {
            v = v[*p].take();
        }
        orders.extend(v.as_array().expect("an order list").iter().cloned());
    }
    assert!(orders.len() >= count, "{op}: only {} orders", orders.len());
    orders.truncate(count);
    let mut body = json!({});
    let mut slot = &mut body;
    for p in path {
        slot = &mut slot[*p];
    }
    *slot = Value::Array(orders);
    serde_json::to_vec(&body).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn sandbox() -> Sandbox {
    let sandbox = Sandbox::new(SandboxConfig {
        lwa_clients: vec![(CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())],
        access_token_ttl: Duration::from_secs(3600),
        quotas: QuotaMode::Off,
        require_rdt: false,
        open_enrollment: false,
    });
    for (seller, refresh) in SELLERS {
        sandbox.add_seller(seller, refresh);
    }
    sandbox
}

struct Tokens {
    plain: String,
    rdt: String,
}

impl Tokens {
    async fn get(sandbox: &Sandbox, refresh: &str) -> Tokens {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ])
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri("/auth/o2/token")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))
            .unwrap();
        let lwa = call(sandbox, request).await;
        let plain = lwa["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        let elements = json!(["buyerInfo", "shippingAddress", "buyerTaxInformation"]);
        let resources = json!({ "restrictedResources": [
            { "method": "GET", "path": "/orders/v0/orders", "dataElements": elements },
            { "method": "GET", "path": "/orders/v0/orders/{orderId}", "dataElements": elements },
            { "method": "GET", "path": "/orders/v0/orders/{orderId}/orderItems", "dataElements": ["buyerInfo"] },
        ]});
        let request = Request::builder()
            .method(Method::POST)
            .uri("/tokens/2021-03-01/restrictedDataToken")
            .header(spapi::ACCESS_TOKEN, plain.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(resources.to_string())))
            .unwrap();
        let rdt = call(sandbox, request).await["restrictedDataToken"]
            .as_str()
            .expect("restrictedDataToken")
            .to_owned();
        Tokens { plain, rdt }
    }
}

async fn call(sandbox: &Sandbox, request: Request<Full<Bytes>>) -> Value {
    let response = sandbox.handle(request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

async fn fixture(
    sandbox: &Sandbox,
    token: &str,
    op: &'static str,
    params: Vec<(&'static str, String)>,
    uri: &str,
) -> Fixture {
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(spapi::ACCESS_TOKEN, token)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = call(sandbox, request).await;
    Fixture {
        op,
        params,
        body: serde_json::to_vec(&body).unwrap(),
    }
}
