//! Tests for the sandbox: static examples, LWA, auth, RDTs, quotas, scripts, synthetic orders,
//! request bodies and the HTTP server.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};

use super::body::{self, KEEP_LIMIT};
use super::examples::{self, RawExample};
use super::orders::testing as order_book;
use super::*;
use crate::catalog::Catalog;

const CLIENT_ID: &str = "amzn1.application-oa2-client.sandboxtest";
const CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.first-secret";
const SELLER: &str = "A1SANDBOXSELLER";
const REFRESH: &str = "Atzr|seller-one-refresh-token";
const OTHER_SELLER: &str = "A2OTHERSELLER";
const OTHER_REFRESH: &str = "Atzr|seller-two-refresh-token";
const NOTIFICATIONS: &str = "sellingpartnerapi::notifications";
const ROTATION: &str = "sellingpartnerapi::client_credential:rotation";
const TTL: Duration = Duration::from_secs(3600);

fn config() -> SandboxConfig {
    SandboxConfig {
        lwa_clients: vec![(CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())],
        access_token_ttl: TTL,
        quotas: QuotaMode::Off,
        require_rdt: false,
        open_enrollment: false,
    }
}

fn sandbox_with(config: SandboxConfig) -> Sandbox {
    let sandbox = Sandbox::new(config);
    sandbox.add_seller(SELLER, REFRESH);
    sandbox.add_seller(OTHER_SELLER, OTHER_REFRESH);
    sandbox
}

fn sandbox() -> Sandbox {
    sandbox_with(config())
}

/// A response, fully read.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send_request<B>(sandbox: &Sandbox, request: Request<B>) -> Answer
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = sandbox.handle(request).await;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|never| match never {});
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn send(
    sandbox: &Sandbox,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(spapi::ACCESS_TOKEN, token);
    }
    let bytes = match body {
        Some(body) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(body).expect("JSON"))
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(bytes)).expect("valid request");
    send_request(sandbox, request).await
}

async fn get(sandbox: &Sandbox, token: &str, uri: &str) -> Answer {
    send(sandbox, Method::GET, uri, Some(token), None).await
}

/// POSTs a form to the LWA endpoint.
async fn lwa(sandbox: &Sandbox, form: &[(&str, &str)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/auth/o2/token")
        .header(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded;charset=UTF-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    send_request(sandbox, request).await
}

async fn refresh_grant(sandbox: &Sandbox, refresh_token: &str) -> Answer {
    lwa(
        sandbox,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await
}

async fn access_token_for(sandbox: &Sandbox, refresh_token: &str) -> String {
    let answer = refresh_grant(sandbox, refresh_token).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn access_token(sandbox: &Sandbox) -> String {
    access_token_for(sandbox, REFRESH).await
}

async fn grantless_token(sandbox: &Sandbox, scope: &str) -> String {
    let answer = lwa(
        sandbox,
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn create_rdt(sandbox: &Sandbox, token: &str, resources: Value) -> Answer {
    send(
        sandbox,
        Method::POST,
        "/tokens/2021-03-01/restrictedDataToken",
        Some(token),
        Some(&json!({ "restrictedResources": resources })),
    )
    .await
}

async fn rdt_for(sandbox: &Sandbox, token: &str, resources: Value) -> String {
    let answer = create_rdt(sandbox, token, resources).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["restrictedDataToken"]
        .as_str()
        .expect("restrictedDataToken")
        .to_owned()
}

fn error_body(code: &str, message: &str, details: &str) -> Value {
    json!({ "errors": [{ "code": code, "message": message, "details": details }] })
}

fn unauthorized(details: &str) -> Value {
    error_body(
        "Unauthorized",
        "Access to requested resource is denied.",
        details,
    )
}

const EXPIRED: &str = "The access token you provided has expired.";

/// The seller's synthetic order ids, newest first.
fn order_ids(sandbox: &Sandbox, seller: &str) -> Vec<String> {
    order_book::summary(seller, sandbox.inner.order_anchor)
        .into_iter()
        .map(|(id, ..)| id)
        .collect()
}

fn business_order(sandbox: &Sandbox) -> String {
    order_book::summary(SELLER, sandbox.inner.order_anchor)
        .into_iter()
        .find(|(_, _, _, business)| *business)
        .map(|(id, ..)| id)
        .expect("a business order")
}

// ---------------------------------------------------------------------------------------------
// Static examples
// ---------------------------------------------------------------------------------------------

/// The example file's scalars as strings, the way a client puts them in a URL.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The placeholder for path parameters an example does not constrain.
const ANY_SEGMENT: &str = "sandbox-any";

/// Builds the request an example describes: path parameters via `expand_path` (placeholders for
/// ones it leaves open), the query string (arrays comma-separated, or as repeated keys), and the
/// JSON body.
fn example_request(example: &RawExample, repeated_keys: bool) -> (Method, String, Option<Value>) {
    let op = Catalog::builtin()
        .by_key(&example.op)
        .expect("example names a catalog operation");
    let names: Vec<&str> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    let values: Vec<(&str, String)> = names
        .iter()
        .map(|name| {
            let value = example
                .request
                .path
                .get(*name)
                .map(scalar_text)
                .unwrap_or_else(|| ANY_SEGMENT.to_owned());
            (*name, value)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut uri = op.expand_path(&pairs);
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in &example.request.query {
        match value {
            Value::Array(items) if repeated_keys => {
                for item in items {
                    query.append_pair(name, &scalar_text(item));
                }
            }
            Value::Array(items) => {
                let joined: Vec<String> = items.iter().map(scalar_text).collect();
                query.append_pair(name, &joined.join(","));
            }
            other => {
                query.append_pair(name, &scalar_text(other));
            }
        }
    }
    let query = query.finish();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&query);
    }
    (op.method.clone(), uri, example.request.body.clone())
}

/// Tokens for every kind of operation in the examples.
struct ExampleTokens {
    seller: String,
    grantless: HashMap<String, String>,
}

/// Sends an example's request and compares status and body with what `expected` says.
async fn check(
    sandbox: &Sandbox,
    tokens: &ExampleTokens,
    index: usize,
    example: &RawExample,
    expected: &RawExample,
) -> Result<(), String> {
    let op = Catalog::builtin()
        .by_key(&example.op)
        .ok_or_else(|| format!("#{index}: unknown op {}", example.op))?;
    let token = match op.grantless_scope {
        Some(scope) => tokens.grantless.get(scope).map(String::as_str),
        None => Some(tokens.seller.as_str()),
    };
    let (method, uri, body) = example_request(example, index % 2 == 1);
    let answer = send(sandbox, method, &uri, token, body.as_ref()).await;
    if answer.status.as_u16() != expected.status {
        return Err(format!(
            "#{index} {} {uri}: status {} instead of {}: {}",
            example.op,
            answer.status,
            expected.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let expected_body = match &expected.response {
        _ if expected.status == 204 => None,
        None => None,
        Some(value) => Some(value.clone()),
    };
    match expected_body {
        None if answer.body.is_empty() => Ok(()),
        None => Err(format!("#{index} {}: expected an empty body", example.op)),
        Some(value) => {
            let actual: Value = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("#{index} {}: body is not JSON: {e}", example.op))?;
            if actual == value {
                Ok(())
            } else {
                Err(format!("#{index} {}: body differs", example.op))
            }
        }
    }
}

/// Whether two examples describe the same request.
fn same_request(a: &RawExample, b: &RawExample) -> bool {
    a.op == b.op
        && a.request.path == b.request.path
        && a.request.query == b.request.query
        && a.request.body == b.request.body
}

#[test]
fn the_examples_file_parses_and_names_only_catalog_operations() {
    let examples = examples::examples();
    assert_eq!(examples.len, 913);
    assert_eq!(examples.unknown_ops, 0);
    assert_eq!(examples::raw().len(), 913);
}

#[tokio::test]
async fn every_static_example_is_served_with_its_status_and_body() {
    let sandbox = sandbox();
    let mut grantless = HashMap::new();
    for scope in [NOTIFICATIONS, ROTATION] {
        grantless.insert(scope.to_owned(), grantless_token(&sandbox, scope).await);
    }
    let tokens = ExampleTokens {
        seller: access_token(&sandbox).await,
        grantless,
    };
    let raw = examples::raw();
    let mut failures = Vec::new();
    let mut shadowed = Vec::new();
    for (index, example) in raw.iter().enumerate() {
        // An example whose request equals an earlier one's is answered by the earlier one.
        let first_identical = raw[..index].iter().position(|e| same_request(e, example));
        let expected = match first_identical {
            Some(first) => {
                shadowed.push((index, first, example.op.clone()));
                &raw[first]
            }
            None => example,
        };
        if let Err(failure) = check(&sandbox, &tokens, index, example, expected).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n{}",
        failures.len(),
        raw.len(),
        failures.join("\n")
    );
    // Identical requests with different answers in Amazon's models; only the first is reachable.
    assert_eq!(
        shadowed,
        vec![
            (605, 604, "sellers.getAccount".to_owned()),
            (802, 801, "shipping.getAccount".to_owned()),
        ],
        "shadowed examples changed"
    );
}

#[tokio::test]
async fn a_more_specific_example_wins_over_a_catch_all_one() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    // awd listInboundShipments: a catch-all 200 and a 400 for sortBy=TEST.
    let all = get(&sandbox, &token, "/awd/2024-05-09/inboundShipments").await;
    assert_eq!(all.status, StatusCode::OK);
    let specific = get(
        &sandbox,
        &token,
        "/awd/2024-05-09/inboundShipments?sortBy=TEST",
    )
    .await;
    assert_eq!(specific.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn requests_matching_no_example_get_400_invalid_input() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let answer = get(
        &sandbox,
        &token,
        "/orders/v0/orders/TEST_CASE_999/regulatedInfo",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json(),
        error_body(
            "InvalidInput",
            "No sandbox example matches this request.",
            ""
        )
    );
}

#[tokio::test]
async fn numeric_query_examples_match_equal_numbers_written_differently() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let raw = examples::raw();
    let (index, example) = raw
        .iter()
        .enumerate()
        .find(|(_, e)| e.request.query.get("baseAmount") == Some(&json!(500.0)))
        .expect("the getTransferPreview example with baseAmount 500.0");
    let (method, uri, _) = example_request(example, false);
    let uri = uri.replace("baseAmount=500.0", "baseAmount=500");
    assert!(uri.contains("baseAmount=500&") || uri.ends_with("baseAmount=500"));
    let answer = send(&sandbox, method, &uri, Some(&token), None).await;
    assert_eq!(answer.status.as_u16(), example.status, "example #{index}");
}

// ---------------------------------------------------------------------------------------------
// LWA
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn refresh_token_grant_returns_a_bearer_token_with_the_configured_lifetime() {
    let sandbox = sandbox();
    let answer = refresh_grant(&sandbox, REFRESH).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    let token = body["access_token"].as_str().expect("access_token");
    assert!(token.starts_with("Atza|"));
    assert!(
        token.len() >= "Atza|".len() + 43,
        "at least 256 random bits"
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["refresh_token"], REFRESH);
    let again = access_token(&sandbox).await;
    assert_ne!(again, token, "tokens are random");
    assert_eq!(sandbox.stats().lwa_refresh_grants, 2);
}

#[tokio::test]
async fn json_bodies_are_accepted_like_form_bodies() {
    let sandbox = sandbox();
    let body = json!({
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    });
    let answer = send(&sandbox, Method::POST, "/auth/o2/token", None, Some(&body)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json()["access_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("Atza|")));
}

#[tokio::test]
async fn client_credentials_grant_returns_a_grantless_token_without_a_refresh_token() {
    let sandbox = sandbox();
    let answer = lwa(
        &sandbox,
        &[
            ("grant_type", "client_credentials"),
            ("scope", NOTIFICATIONS),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(body["access_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("Atza|")));
    assert_eq!(body["expires_in"], 3600);
    assert!(body.get("refresh_token").is_none());
    assert_eq!(sandbox.stats().lwa_client_credentials_grants, 1);
}

#[tokio::test]
async fn authorization_code_grant_is_single_use_and_registers_the_seller() {
    let sandbox = Sandbox::new(config());
    sandbox.add_authorization_code("ANcode123", "A3NEWSELLER", "Atzr|new-seller-refresh");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "ANcode123"),
        ("redirect_uri", "https://app.example.com/callback"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    let answer = lwa(&sandbox, &form).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["refresh_token"], "Atzr|new-seller-refresh");
    let token = body["access_token"].as_str().expect("access_token");

    // The access token belongs to the new seller.
    let orders = get(&sandbox, token, "/orders/v0/orders").await;
    assert_eq!(orders.status, StatusCode::OK);
    let received = sandbox.received("ordersV0.getOrders");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].seller.as_deref(), Some("A3NEWSELLER"));
    assert_eq!(received[0].token_kind, TokenKind::Access);

    // The refresh token now works; the code does not work twice.
    access_token_for(&sandbox, "Atzr|new-seller-refresh").await;
    let again = lwa(&sandbox, &form).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.json()["error"], "invalid_grant");
    let stats = sandbox.stats();
    assert_eq!(stats.lwa_authorization_code_grants, 1);
    assert_eq!(stats.lwa_refresh_grants, 1);
    assert_eq!(stats.lwa_errors, 1);
}

#[tokio::test]
async fn lwa_errors_use_lwas_error_shape_and_statuses() {
    let sandbox = sandbox();
    sandbox.revoke_refresh_token(OTHER_REFRESH);
    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH),
                ("client_id", CLIENT_ID),
                ("client_secret", "wrong"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH),
                ("client_id", "amzn1.application-oa2-client.unknown"),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "Atzr|never-issued"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", OTHER_REFRESH),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", "never-issued"),
                ("redirect_uri", "https://app.example.com/cb"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", "some-code"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "sellingpartnerapi::nonsense"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    let count = cases.len() as u64;
    for (form, status, code) in cases {
        let answer = lwa(&sandbox, &form).await;
        assert_eq!(answer.status, status, "{form:?}");
        let body = answer.json();
        assert_eq!(body["error"], code, "{form:?}");
        assert!(body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert!(body.get("access_token").is_none());
    }
    let stats = sandbox.stats();
    assert_eq!(stats.lwa_errors, count);
    assert_eq!(stats.lwa_refresh_grants, 0);
}

#[tokio::test]
async fn malformed_json_lwa_bodies_are_invalid_requests() {
    let sandbox = sandbox();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/auth/o2/token")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .expect("valid request");
    let answer = send_request(&sandbox, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_request");
}

#[tokio::test]
async fn lwa_outage_answers_503_until_it_is_back() {
    let sandbox = sandbox();
    sandbox.set_lwa_down(true);
    let down = refresh_grant(&sandbox, REFRESH).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.json().get("access_token").is_none());
    sandbox.set_lwa_down(false);
    let up = refresh_grant(&sandbox, REFRESH).await;
    assert_eq!(up.status, StatusCode::OK);
    let stats = sandbox.stats();
    assert_eq!((stats.lwa_errors, stats.lwa_refresh_grants), (1, 1));
}

#[tokio::test]
async fn either_of_two_client_secrets_is_accepted_during_rotation() {
    let mut config = config();
    config.lwa_clients.push((
        CLIENT_ID.to_owned(),
        "amzn1.oa2-cs.v1.second-secret".to_owned(),
    ));
    config.lwa_clients.push((
        "amzn1.application-oa2-client.other".to_owned(),
        "other-secret".to_owned(),
    ));
    let sandbox = sandbox_with(config);
    for (id, secret, ok) in [
        (CLIENT_ID, CLIENT_SECRET, true),
        (CLIENT_ID, "amzn1.oa2-cs.v1.second-secret", true),
        ("amzn1.application-oa2-client.other", "other-secret", true),
        (CLIENT_ID, "other-secret", false),
    ] {
        let answer = lwa(
            &sandbox,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH),
                ("client_id", id),
                ("client_secret", secret),
            ],
        )
        .await;
        let expected = if ok {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(answer.status, expected, "{id} / secret #{secret:.8}");
    }
}

#[tokio::test]
async fn open_enrollment_accepts_any_atzr_token_and_derives_the_seller_id() {
    let mut open = config();
    open.open_enrollment = true;
    let sandbox = Sandbox::new(open);
    let token = access_token_for(&sandbox, "Atzr|bench-seller-1").await;
    get(&sandbox, &token, "/orders/v0/orders").await;
    let received = sandbox.received("ordersV0.getOrders");
    // "A" + the first 12 hex digits of SHA-256("Atzr|bench-seller-1"), uppercase.
    assert_eq!(received[0].seller.as_deref(), Some("A580A48CF7275"));

    let not_atzr = refresh_grant(&sandbox, "bench-seller-1").await;
    assert_eq!(not_atzr.status, StatusCode::BAD_REQUEST);
    sandbox.revoke_refresh_token("Atzr|bench-seller-1");
    let revoked = refresh_grant(&sandbox, "Atzr|bench-seller-1").await;
    assert_eq!(revoked.json()["error"], "invalid_grant");

    let closed = Sandbox::new(config());
    let refused = refresh_grant(&closed, "Atzr|bench-seller-1").await;
    assert_eq!(refused.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn re_adding_a_revoked_refresh_token_makes_it_valid_again() {
    let sandbox = sandbox();
    sandbox.revoke_refresh_token(REFRESH);
    assert_eq!(
        refresh_grant(&sandbox, REFRESH).await.status,
        StatusCode::BAD_REQUEST
    );
    sandbox.add_seller(SELLER, REFRESH);
    assert_eq!(
        refresh_grant(&sandbox, REFRESH).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_and_unknown_tokens_get_403_unauthorized_in_spapi_shape() {
    let sandbox = sandbox();
    let missing = send(&sandbox, Method::GET, "/orders/v0/orders", None, None).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(missing.json(), unauthorized(""));
    let unknown = get(&sandbox, "Atza|forged", "/orders/v0/orders").await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(unknown.json(), unauthorized(""));
    let stats = sandbox.stats();
    assert_eq!(stats.unauthorized_total, 2);
    assert_eq!(stats.requests_total, 2);
    assert_eq!(stats.by_operation.get("ordersV0.getOrders"), Some(&2));
    assert!(sandbox.received("ordersV0.getOrders").is_empty());
}

#[tokio::test(start_paused = true)]
async fn access_tokens_expire_after_their_lifetime() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    assert_eq!(
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
    tokio::time::advance(TTL - Duration::from_secs(1)).await;
    assert_eq!(
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let expired = get(&sandbox, &token, "/orders/v0/orders").await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert_eq!(expired.json(), unauthorized(EXPIRED));
}

#[tokio::test(start_paused = true)]
async fn expire_access_tokens_expires_every_issued_token_now() {
    let sandbox = sandbox();
    let seller = access_token(&sandbox).await;
    let grantless = grantless_token(&sandbox, NOTIFICATIONS).await;
    let rdt = rdt_for(
        &sandbox,
        &seller,
        json!([{ "method": "GET", "path": "/orders/v0/orders/{orderId}/address" }]),
    )
    .await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    sandbox.expire_access_tokens();
    for (token, uri) in [
        (&seller, "/orders/v0/orders".to_owned()),
        (&grantless, "/notifications/v1/destinations".to_owned()),
        (&rdt, format!("/orders/v0/orders/{order}/address")),
    ] {
        let answer = get(&sandbox, token, &uri).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(answer.json(), unauthorized(EXPIRED), "{uri}");
    }
    // New tokens work again.
    let fresh = access_token(&sandbox).await;
    assert_eq!(
        get(&sandbox, &fresh, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn grantless_tokens_work_only_for_operations_with_their_scope() {
    let sandbox = sandbox();
    let notifications = grantless_token(&sandbox, NOTIFICATIONS).await;
    let rotation = grantless_token(&sandbox, ROTATION).await;
    let seller = access_token(&sandbox).await;

    let ok = get(&sandbox, &notifications, "/notifications/v1/destinations").await;
    assert_ne!(ok.status, StatusCode::FORBIDDEN);
    let received = sandbox.received("notifications.getDestinations");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].token_kind, TokenKind::Grantless);
    assert_eq!(received[0].seller, None);

    for (token, uri) in [
        (&rotation, "/notifications/v1/destinations"),
        (&seller, "/notifications/v1/destinations"),
        (&notifications, "/orders/v0/orders"),
    ] {
        let answer = get(&sandbox, token, uri).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(answer.json(), unauthorized(""));
    }
    let rotate = send(
        &sandbox,
        Method::POST,
        "/applications/2023-11-30/clientSecret",
        Some(&rotation),
        None,
    )
    .await;
    assert_ne!(rotate.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_paths_get_404_not_found_in_spapi_shape() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    for (method, uri) in [
        (Method::GET, "/nothing/here"),
        (Method::DELETE, "/orders/v0/orders"),
        (Method::GET, "/auth/o2/token"),
    ] {
        let answer = send(&sandbox, method, uri, Some(&token), None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(answer.json()["errors"][0]["code"], "NotFound");
        assert!(answer.header(spapi::REQUEST_ID).is_some());
    }
}

#[tokio::test]
async fn spapi_responses_carry_a_fresh_request_id_json_content_type_and_the_rate_limit() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    let uri = format!("/orders/v0/orders/{order}");
    let first = get(&sandbox, &token, &uri).await;
    let second = get(&sandbox, &token, &uri).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header(spapi::RATE_LIMIT_LIMIT), Some("0.5"));
    let (a, b) = (
        first.header(spapi::REQUEST_ID).expect("request id"),
        second.header(spapi::REQUEST_ID).expect("request id"),
    );
    assert_eq!(a.len(), 36);
    assert_ne!(a, b);
    // Errors carry no rate limit.
    let missing = get(&sandbox, &token, "/orders/v0/orders/999-0000000-0000000").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header(spapi::RATE_LIMIT_LIMIT), None);
    assert_eq!(missing.header("content-type"), Some("application/json"));
}

// ---------------------------------------------------------------------------------------------
// Restricted Data Tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_rdt_authorizes_the_resources_it_names_when_rdts_are_required() {
    let mut config = config();
    config.require_rdt = true;
    let sandbox = sandbox_with(config);
    let token = access_token(&sandbox).await;
    let orders = order_ids(&sandbox, SELLER);
    let answer = create_rdt(
        &sandbox,
        &token,
        json!([
            { "method": "GET", "path": "/orders/v0/orders/{orderId}/address" },
            { "method": "GET", "path": format!("/orders/v0/orders/{}/buyerInfo", orders[0]) },
        ]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let rdt = body["restrictedDataToken"]
        .as_str()
        .expect("rdt")
        .to_owned();
    assert!(rdt.starts_with("Atz.sprdt|"));
    assert_eq!(body["expiresIn"], 3600);
    assert_eq!(sandbox.stats().rdts_issued, 1);

    let address = format!("/orders/v0/orders/{}/address", orders[3]);
    assert_eq!(
        get(&sandbox, &token, &address).await.status,
        StatusCode::FORBIDDEN
    );
    let with_rdt = get(&sandbox, &rdt, &address).await;
    assert_eq!(with_rdt.status, StatusCode::OK);
    assert_eq!(
        sandbox.received("ordersV0.getOrderAddress")[0].token_kind,
        TokenKind::Rdt
    );

    // The specific path covers only that order.
    let named = format!("/orders/v0/orders/{}/buyerInfo", orders[0]);
    assert_eq!(get(&sandbox, &rdt, &named).await.status, StatusCode::OK);
    let other = format!("/orders/v0/orders/{}/buyerInfo", orders[1]);
    assert_eq!(
        get(&sandbox, &rdt, &other).await.status,
        StatusCode::FORBIDDEN
    );

    // Not covered at all: another restricted operation, and an unrestricted one.
    let items = format!("/orders/v0/orders/{}/orderItems", orders[0]);
    assert_eq!(
        get(&sandbox, &rdt, &items).await.status,
        StatusCode::FORBIDDEN
    );
    let v2026 = format!("/orders/2026-01-01/orders/{}", orders[0]);
    assert_eq!(
        get(&sandbox, &rdt, &v2026).await.status,
        StatusCode::FORBIDDEN
    );
    // Unrestricted operations still take plain tokens.
    assert_eq!(get(&sandbox, &token, &v2026).await.status, StatusCode::OK);
    // An RDT cannot create RDTs.
    let nested = create_rdt(
        &sandbox,
        &rdt,
        json!([{ "method": "GET", "path": "/orders/v0/orders/{orderId}/address" }]),
    )
    .await;
    assert_eq!(nested.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn plain_tokens_reach_restricted_operations_when_rdts_are_not_required() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    let answer = get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{order}/address"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn invalid_rdt_requests_get_400_invalid_input() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let fifty_one: Vec<Value> = (0..51)
        .map(|_| json!({ "method": "GET", "path": "/orders/v0/orders/{orderId}/address" }))
        .collect();
    let cases = [
        json!([]),
        Value::Array(fifty_one),
        json!([{ "method": "PATCH", "path": "/orders/v0/orders/{orderId}/address" }]),
        json!([{ "path": "/orders/v0/orders/{orderId}/address" }]),
        json!([{ "method": "GET", "path": "/catalog/2022-04-01/items" }]),
        json!([{ "method": "GET", "path": "/no/such/api" }]),
        json!([{ "method": "GET", "path": "orders/v0/orders" }]),
        json!([{ "method": "GET", "path": "/orders/v0/orders", "dataElements": ["creditCard"] }]),
        json!([{ "method": "GET", "path": "/orders/v0/orders", "dataElements": "buyerInfo" }]),
        json!({ "method": "GET" }),
    ];
    for resources in cases {
        let answer = create_rdt(&sandbox, &token, resources.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{resources}");
        assert_eq!(
            answer.json()["errors"][0]["code"],
            "InvalidInput",
            "{resources}"
        );
    }
    let no_body = send(
        &sandbox,
        Method::POST,
        "/tokens/2021-03-01/restrictedDataToken",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(no_body.status, StatusCode::BAD_REQUEST);
    assert_eq!(sandbox.stats().rdts_issued, 0);
    // Fifty is allowed.
    let fifty: Vec<Value> = (0..50)
        .map(|_| json!({ "method": "GET", "path": "/orders/v0/orders/{orderId}/address" }))
        .collect();
    assert_eq!(
        create_rdt(&sandbox, &token, Value::Array(fifty))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn static_rdt_examples_win_over_the_dynamic_handler() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let body = json!({
        "restrictedResources": [{ "method": "GET", "path": "/orders/v0/orders/943-12-123434/address" }]
    });
    let answer = send(
        &sandbox,
        Method::POST,
        "/tokens/2021-03-01/restrictedDataToken",
        Some(&token),
        Some(&body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["restrictedDataToken"],
        "Atz.sprdt|AODFNESLjAsAhRmHjNgHpi0U-Dme37rR6CuUpSR"
    );
    assert_eq!(sandbox.stats().rdts_issued, 0);
}

#[tokio::test]
async fn rdt_data_elements_gate_buyer_pii_in_orders_v0() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let business = business_order(&sandbox);
    let order_uri = format!("/orders/v0/orders/{business}");
    let rdt_with = |elements: Value| {
        json!([
            { "method": "GET", "path": "/orders/v0/orders/{orderId}", "dataElements": elements.clone() },
            { "method": "GET", "path": "/orders/v0/orders", "dataElements": elements },
        ])
    };

    let plain = get(&sandbox, &token, &order_uri).await.json();
    let payload = &plain["payload"];
    assert_eq!(payload["AmazonOrderId"], business.as_str());
    for field in ["BuyerInfo", "ShippingAddress", "BuyerTaxInformation"] {
        assert!(payload.get(field).is_none(), "plain token got {field}");
    }

    let buyer_only = rdt_for(&sandbox, &token, rdt_with(json!(["buyerInfo"]))).await;
    let answer = get(&sandbox, &buyer_only, &order_uri).await.json();
    let payload = &answer["payload"];
    assert!(payload["BuyerInfo"]["BuyerEmail"].as_str().is_some());
    assert!(payload["BuyerInfo"]["BuyerName"].as_str().is_some());
    assert!(payload.get("ShippingAddress").is_none());
    assert!(payload.get("BuyerTaxInformation").is_none());

    let address_only = rdt_for(&sandbox, &token, rdt_with(json!(["shippingAddress"]))).await;
    let answer = get(&sandbox, &address_only, &order_uri).await.json();
    assert_eq!(
        answer["payload"]["ShippingAddress"]["AddressLine1"],
        "1 Synthetic Way"
    );
    assert!(answer["payload"].get("BuyerInfo").is_none());

    let all = rdt_for(
        &sandbox,
        &token,
        rdt_with(json!([
            "buyerInfo",
            "shippingAddress",
            "buyerTaxInformation"
        ])),
    )
    .await;
    let answer = get(&sandbox, &all, &order_uri).await.json();
    let payload = &answer["payload"];
    assert!(payload.get("BuyerInfo").is_some());
    assert!(payload.get("ShippingAddress").is_some());
    assert!(payload["BuyerTaxInformation"]["BuyerLegalCompanyName"]
        .as_str()
        .is_some());

    // getOrders: every order gets the granted blocks.
    let list = get(&sandbox, &buyer_only, "/orders/v0/orders").await.json();
    let orders = list["payload"]["Orders"].as_array().expect("Orders");
    assert_eq!(orders.len(), 40);
    assert!(orders.iter().all(|o| o.get("BuyerInfo").is_some()));
    assert!(orders.iter().all(|o| o.get("ShippingAddress").is_none()));

    // An RDT without dataElements grants no PII in getOrder.
    let none = rdt_for(
        &sandbox,
        &token,
        json!([{ "method": "GET", "path": "/orders/v0/orders/{orderId}" }]),
    )
    .await;
    let answer = get(&sandbox, &none, &order_uri).await.json();
    assert!(answer["payload"].get("BuyerInfo").is_none());
}

#[tokio::test]
async fn rdt_buyer_info_gates_gift_messages_and_customizations_in_order_items() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let with_pii = order_book::with_item_pii(SELLER, sandbox.inner.order_anchor);
    assert!(!with_pii.is_empty());
    let rdt = rdt_for(
        &sandbox,
        &token,
        json!([{ "method": "GET", "path": "/orders/v0/orders/{orderId}/orderItems", "dataElements": ["buyerInfo"] }]),
    )
    .await;
    let mut gift_seen = false;
    let mut custom_seen = false;
    for id in &with_pii {
        let uri = format!("/orders/v0/orders/{id}/orderItems");
        let plain = get(&sandbox, &token, &uri).await.json();
        let items = plain["payload"]["OrderItems"].as_array().expect("items");
        assert!(items.iter().all(|i| i.get("BuyerInfo").is_none()));
        assert_eq!(plain["payload"]["AmazonOrderId"], id.as_str());

        let granted = get(&sandbox, &rdt, &uri).await.json();
        let items = granted["payload"]["OrderItems"].as_array().expect("items");
        assert!(items.iter().any(|i| i.get("BuyerInfo").is_some()));
        gift_seen |= items
            .iter()
            .any(|i| i["BuyerInfo"]["GiftMessageText"].is_string());
        custom_seen |= items
            .iter()
            .any(|i| i["BuyerInfo"]["BuyerCustomizedInfo"]["CustomizedURL"].is_string());
    }
    assert!(gift_seen && custom_seen);
}

// ---------------------------------------------------------------------------------------------
// Quotas
// ---------------------------------------------------------------------------------------------

fn quota_config(mode: QuotaMode) -> SandboxConfig {
    let mut config = config();
    config.quotas = mode;
    config
}

#[tokio::test(start_paused = true)]
async fn catalog_quota_allows_the_burst_then_throttles_with_quota_exceeded() {
    let sandbox = sandbox_with(quota_config(QuotaMode::Catalog));
    let token = access_token(&sandbox).await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    let uri = format!("/orders/v0/orders/{order}"); // 0.5/s, burst 30
    for n in 0..30 {
        assert_eq!(
            get(&sandbox, &token, &uri).await.status,
            StatusCode::OK,
            "request {n}"
        );
    }
    let throttled = get(&sandbox, &token, &uri).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        throttled.json(),
        error_body(
            "QuotaExceeded",
            "You exceeded your quota for the requested resource.",
            ""
        )
    );
    assert!(throttled.header(spapi::REQUEST_ID).is_some());
    assert_eq!(throttled.header(spapi::RATE_LIMIT_LIMIT), None);

    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_eq!(
        get(&sandbox, &token, &uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(get(&sandbox, &token, &uri).await.status, StatusCode::OK);
    assert_eq!(
        get(&sandbox, &token, &uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sandbox.stats().throttled_total, 3);
    // Throttled attempts are recorded as received.
    assert_eq!(sandbox.received("ordersV0.getOrder").len(), 34);
}

#[tokio::test(start_paused = true)]
async fn a_granted_rate_is_reported_and_enforced_with_the_published_burst() {
    let sandbox = sandbox_with(quota_config(QuotaMode::Catalog));
    sandbox.grant_rate(10.0);
    let token = access_token(&sandbox).await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    let uri = format!("/orders/v0/orders/{order}"); // published: 0.5/s, burst 30
    for n in 0..30 {
        let answer = get(&sandbox, &token, &uri).await;
        assert_eq!(answer.status, StatusCode::OK, "request {n}");
        assert_eq!(answer.header(spapi::RATE_LIMIT_LIMIT), Some("10"));
    }
    assert_eq!(
        get(&sandbox, &token, &uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A token every 100 ms (the published plan would wait 2 s).
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(get(&sandbox, &token, &uri).await.status, StatusCode::OK);
    // Nonsense is ignored: the grant stays.
    sandbox.grant_rate(f64::NAN);
    sandbox.grant_rate(-1.0);
    tokio::time::advance(Duration::from_millis(100)).await;
    let answer = get(&sandbox, &token, &uri).await;
    assert_eq!(answer.header(spapi::RATE_LIMIT_LIMIT), Some("10"));
}

#[tokio::test(start_paused = true)]
async fn application_wide_limits_hold_across_sellers_and_count_their_429s() {
    let sandbox = sandbox_with(quota_config(QuotaMode::Catalog));
    let mut sellers = Vec::new();
    for i in 0..5 {
        let (seller, refresh) = (format!("A1APPSELLER{i}"), format!("Atzr|app-limit-{i}"));
        sandbox.add_seller(&seller, &refresh);
        sellers.push((seller, access_token_for(&sandbox, &refresh).await));
    }
    // Validation previews of listingsItems_2021-08-01.patchListingsItem: 20 in any second
    // across sellers (the operation: 500/s; each seller: 5/s, burst 5).
    let body = serde_json::json!({"productType": "PRODUCT", "patches": []});
    let patch = |i: usize, preview: bool| {
        let (seller, token) = &sellers[i % sellers.len()];
        let mode = if preview {
            "&mode=VALIDATION_PREVIEW"
        } else {
            ""
        };
        let uri =
            format!("/listings/2021-08-01/items/{seller}/SKU1?marketplaceIds=ATVPDKIKX0DER{mode}");
        let (sandbox, body, token) = (&sandbox, &body, token.clone());
        async move {
            send(sandbox, Method::PATCH, &uri, Some(&token), Some(body))
                .await
                .status
        }
    };
    // 21 previews 45 ms apart, round robin over 5 sellers (each 4.4/s, within its own plan).
    let mut statuses = Vec::new();
    for i in 0..21 {
        tokio::time::advance(Duration::from_millis(45)).await;
        statuses.push(patch(i, true).await);
    }
    let refused: Vec<usize> = (0..21)
        .filter(|i| statuses[*i] == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(refused, vec![20], "{statuses:?}");
    let stats = sandbox.stats();
    assert_eq!((stats.throttled_total, stats.app_throttled_total), (1, 1));
    // Not a preview: only the operation's limit (500 a second) applies.
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_ne!(patch(1, false).await, StatusCode::TOO_MANY_REQUESTS);
    // A second after the first preview, the window has room again.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_ne!(patch(2, true).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn quota_buckets_are_per_seller_and_per_operation() {
    let sandbox = sandbox_with(quota_config(QuotaMode::Catalog));
    let first = access_token(&sandbox).await;
    let second = access_token_for(&sandbox, OTHER_REFRESH).await;
    let first_order = order_ids(&sandbox, SELLER)[0].clone();
    let second_order = order_ids(&sandbox, OTHER_SELLER)[0].clone();
    for _ in 0..30 {
        get(
            &sandbox,
            &first,
            &format!("/orders/v0/orders/{first_order}"),
        )
        .await;
    }
    let uri = format!("/orders/v0/orders/{first_order}");
    assert_eq!(
        get(&sandbox, &first, &uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let other_seller = get(
        &sandbox,
        &second,
        &format!("/orders/v0/orders/{second_order}"),
    )
    .await;
    assert_eq!(other_seller.status, StatusCode::OK);
    let other_op = get(
        &sandbox,
        &first,
        &format!("/orders/v0/orders/{first_order}/address"),
    )
    .await;
    assert_eq!(other_op.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn quota_is_checked_after_authorization() {
    let sandbox = sandbox_with(quota_config(QuotaMode::AmazonSandbox));
    for _ in 0..40 {
        let answer = get(&sandbox, "Atza|forged", "/orders/v0/orders").await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    let token = access_token(&sandbox).await;
    assert_eq!(
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
    assert_eq!(sandbox.stats().throttled_total, 0);
}

#[tokio::test(start_paused = true)]
async fn amazon_sandbox_mode_limits_every_operation_to_5_per_second_with_burst_15() {
    let sandbox = sandbox_with(quota_config(QuotaMode::AmazonSandbox));
    let token = access_token(&sandbox).await;
    // searchOrders' own plan is 0.0056/s burst 20; the sandbox plan replaces it.
    let uri = "/orders/2026-01-01/orders";
    for n in 0..15 {
        assert_eq!(
            get(&sandbox, &token, uri).await.status,
            StatusCode::OK,
            "request {n}"
        );
    }
    assert_eq!(
        get(&sandbox, &token, uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(get(&sandbox, &token, uri).await.status, StatusCode::OK);
    assert_eq!(
        get(&sandbox, &token, uri).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Grantless calls are bucketed per client, with the same plan.
    let grantless = grantless_token(&sandbox, NOTIFICATIONS).await;
    let mut statuses = Vec::new();
    for _ in 0..16 {
        statuses.push(
            get(&sandbox, &grantless, "/notifications/v1/destinations")
                .await
                .status,
        );
    }
    assert!(statuses[..15]
        .iter()
        .all(|s| *s != StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(statuses[15], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn operations_without_a_usage_plan_are_unlimited_in_catalog_mode() {
    let sandbox = sandbox_with(quota_config(QuotaMode::Catalog));
    let token = access_token(&sandbox).await;
    let op = Catalog::builtin()
        .operations()
        .iter()
        .find(|op| {
            op.usage_plan.is_none() && op.grantless_scope.is_none() && op.method == Method::GET
        })
        .expect("an operation without a usage plan");
    let names: Vec<(&str, &str)> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|n| (n, "x"))
        .collect();
    let uri = op.expand_path(&names);
    for _ in 0..100 {
        let answer = get(&sandbox, &token, &uri).await;
        assert_ne!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", op.key);
    }
    assert_eq!(sandbox.stats().throttled_total, 0);
}

#[tokio::test(start_paused = true)]
async fn quota_off_never_throttles() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    for _ in 0..100 {
        assert_eq!(
            get(&sandbox, &token, "/orders/v0/orders").await.status,
            StatusCode::OK
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_script_overrides_status_headers_and_json_body_after_auth() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let mut script = Script::json(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "errors": [{ "code": "ServiceUnavailable", "message": "scripted" }] }),
    );
    script.headers = vec![
        (
            HeaderName::from_static("retry-after"),
            HeaderValue::from_static("7"),
        ),
        (
            HeaderName::from_static("x-amzn-requestid"),
            HeaderValue::from_static("scripted-id"),
        ),
    ];
    sandbox.script("ordersV0.getOrders", script);

    let unauthenticated = send(&sandbox, Method::GET, "/orders/v0/orders", None, None).await;
    assert_eq!(unauthenticated.status, StatusCode::FORBIDDEN);

    let answer = get(
        &sandbox,
        &token,
        "/orders/v0/orders?CreatedAfter=TEST_CASE_200",
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert_eq!(answer.header(spapi::REQUEST_ID), Some("scripted-id"));
    assert_eq!(answer.headers.get_all(spapi::REQUEST_ID).iter().count(), 1);
    assert_eq!(answer.json()["errors"][0]["message"], "scripted");

    // Other operations are unaffected; clearing restores the normal answer.
    let order = order_ids(&sandbox, SELLER)[0].clone();
    assert_eq!(
        get(&sandbox, &token, &format!("/orders/v0/orders/{order}"))
            .await
            .status,
        StatusCode::OK
    );
    sandbox.clear_scripts();
    assert_eq!(
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_scripted_success_carries_the_rate_limit_header() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    sandbox.script(
        "ordersV0.getOrders",
        Script::json(StatusCode::OK, json!({ "payload": {} })),
    );
    let answer = get(&sandbox, &token, "/orders/v0/orders").await;
    assert_eq!(answer.header(spapi::RATE_LIMIT_LIMIT), Some("0.0167"));
    assert_eq!(answer.json(), json!({ "payload": {} }));
}

#[tokio::test]
async fn scripts_with_times_apply_to_the_next_n_requests_only() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let mut script = Script::json(StatusCode::INTERNAL_SERVER_ERROR, json!({}));
    script.times = Some(2);
    sandbox.script("ordersV0.getOrders", script);
    let statuses = [
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        get(&sandbox, &token, "/orders/v0/orders").await.status,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK
        ]
    );
    let mut zero = Script::json(StatusCode::INTERNAL_SERVER_ERROR, json!({}));
    zero.times = Some(0);
    sandbox.script("ordersV0.getOrders", zero);
    assert_eq!(
        get(&sandbox, &token, "/orders/v0/orders").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_script_can_send_raw_bytes() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let script = Script {
        status: StatusCode::BAD_GATEWAY,
        headers: vec![(CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        body: ScriptBody::Bytes(Bytes::from_static(b"<html>bad gateway</html>")),
        header_delay: Duration::ZERO,
        times: None,
    };
    sandbox.script("ordersV0.getOrders", script);
    let answer = get(&sandbox, &token, "/orders/v0/orders").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("content-type"), Some("text/html"));
    assert_eq!(&answer.body[..], b"<html>bad gateway</html>");
}

#[tokio::test]
async fn a_stream_script_delivers_eight_megabytes_in_chunks() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    const TOTAL: u64 = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    sandbox.script(
        "reports_2021-06-30.getReportDocument",
        Script {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ScriptBody::Stream {
                total_bytes: TOTAL,
                chunk_bytes: CHUNK,
            },
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    let request = Request::builder()
        .uri("/reports/2021-06-30/documents/DOC-1")
        .header(spapi::ACCESS_TOKEN, &token)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sandbox.handle(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
        Some("8388608")
    );
    let mut body = response.into_body();
    let (mut frames, mut total, mut largest) = (0usize, 0u64, 0usize);
    while let Some(frame) = body.frame().await {
        let data = frame
            .unwrap_or_else(|never| match never {})
            .into_data()
            .unwrap_or_default();
        frames += 1;
        total += data.len() as u64;
        largest = largest.max(data.len());
    }
    assert_eq!(total, TOTAL);
    assert_eq!(frames, 128);
    assert_eq!(largest, CHUNK);
}

#[tokio::test(start_paused = true)]
async fn a_stall_script_sends_its_first_bytes_then_never_finishes() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    sandbox.script(
        "ordersV0.getOrders",
        Script {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ScriptBody::Stall {
                first_bytes: 100_000,
            },
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    let response = sandbox
        .handle(
            Request::builder()
                .uri("/orders/v0/orders")
                .header(spapi::ACCESS_TOKEN, &token)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
    let mut body = response.into_body();
    let mut received = 0u64;
    while received < 100_000 {
        let frame = body
            .frame()
            .await
            .expect("a frame")
            .unwrap_or_else(|never| match never {});
        received += frame
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or_default();
    }
    assert_eq!(received, 100_000);
    let next = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
    assert!(next.is_err(), "the body must never finish");
}

#[tokio::test(start_paused = true)]
async fn header_delay_holds_back_the_response() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let mut script = Script::json(StatusCode::OK, json!({}));
    script.header_delay = Duration::from_secs(30);
    sandbox.script("ordersV0.getOrders", script);
    let started = tokio::time::Instant::now();
    let answer = get(&sandbox, &token, "/orders/v0/orders").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------------
// Synthetic orders
// ---------------------------------------------------------------------------------------------

fn is_synthetic_order_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.len() == 3
        && parts[0] == "999"
        && parts[1].len() == 7
        && parts[2].len() == 7
        && parts[1..]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
async fn each_seller_has_forty_deterministic_orders_with_mixed_statuses() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let answer = get(
        &sandbox,
        &token,
        "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let orders = body["payload"]["Orders"]
        .as_array()
        .expect("Orders")
        .clone();
    assert_eq!(orders.len(), 40);
    assert!(body["payload"].get("NextToken").is_none());
    let ids: BTreeSet<String> = orders
        .iter()
        .map(|o| o["AmazonOrderId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.iter().all(|id| is_synthetic_order_id(id)), "{ids:?}");

    let statuses: BTreeSet<&str> = orders
        .iter()
        .map(|o| o["OrderStatus"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["Canceled", "Shipped", "Unshipped"])
    );
    let now = time::OffsetDateTime::now_utc();
    let delivered = orders
        .iter()
        .filter(|o| {
            o["OrderStatus"] == "Shipped"
                && o["LatestDeliveryDate"]
                    .as_str()
                    .and_then(|d| {
                        time::OffsetDateTime::parse(
                            d,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .is_some_and(|d| d < now)
        })
        .count();
    assert!(delivered >= 20, "{delivered} delivered");
    for order in &orders {
        for field in [
            "PurchaseDate",
            "LastUpdateDate",
            "LatestShipDate",
            "EarliestDeliveryDate",
            "LatestDeliveryDate",
            "MarketplaceId",
        ] {
            assert!(order[field].is_string(), "{field} missing");
        }
        for pii in ["BuyerInfo", "ShippingAddress", "BuyerTaxInformation"] {
            assert!(order.get(pii).is_none(), "plain getOrders carries {pii}");
        }
    }
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        !text.contains("Synthetic Way")
            && !text.contains("@example.com")
            && !text.contains("555-01")
    );

    // Deterministic per seller, different between sellers.
    let again = get(&sandbox, &token, "/orders/v0/orders").await.json();
    let again: BTreeSet<String> = again["payload"]["Orders"]
        .as_array()
        .expect("Orders")
        .iter()
        .map(|o| o["AmazonOrderId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(again, ids);
    let other: BTreeSet<String> = order_ids(&sandbox, OTHER_SELLER).into_iter().collect();
    assert!(other.is_disjoint(&ids));
}

#[tokio::test]
async fn get_orders_pages_with_next_token_and_keeps_the_filters() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let mut seen = Vec::new();
    let mut uri = "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&MaxResultsPerPage=10".to_owned();
    let mut pages = 0;
    loop {
        let body = get(&sandbox, &token, &uri).await.json();
        pages += 1;
        for order in body["payload"]["Orders"].as_array().expect("Orders") {
            assert_eq!(order["MarketplaceId"], "ATVPDKIKX0DER");
            seen.push(order["AmazonOrderId"].as_str().expect("id").to_owned());
        }
        match body["payload"]["NextToken"].as_str() {
            Some(next) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("NextToken", next)
                    .finish();
                uri = format!("/orders/v0/orders?{query}");
            }
            None => break,
        }
    }
    // One order in five is from the Canadian marketplace.
    assert_eq!(seen.len(), 32);
    assert_eq!(pages, 4);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 32);
    let bad = get(&sandbox, &token, "/orders/v0/orders?NextToken=garbage").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn get_orders_filters_by_status_and_dates() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let count = |body: Value| {
        body["payload"]["Orders"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    };
    let unshipped = get(
        &sandbox,
        &token,
        "/orders/v0/orders?OrderStatuses=Unshipped",
    )
    .await
    .json();
    assert_eq!(count(unshipped.clone()), 3);
    assert!(unshipped["payload"]["Orders"]
        .as_array()
        .expect("Orders")
        .iter()
        .all(|o| o["OrderStatus"] == "Unshipped"));
    let both = get(
        &sandbox,
        &token,
        "/orders/v0/orders?OrderStatuses=Unshipped&OrderStatuses=Canceled",
    )
    .await;
    assert_eq!(count(both.json()), 3 + 4);

    let now = time::OffsetDateTime::now_utc();
    let week_ago = (now - time::Duration::days(7))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("CreatedAfter", &week_ago)
        .finish();
    let recent = get(&sandbox, &token, &format!("/orders/v0/orders?{query}"))
        .await
        .json();
    let recent = count(recent);
    assert!(
        (4..=6).contains(&recent),
        "{recent} orders in the last week"
    );

    let bad = get(&sandbox, &token, "/orders/v0/orders?CreatedAfter=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = get(&sandbox, &token, "/orders/v0/orders?OrderStatuses=Lost").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = get(&sandbox, &token, "/orders/v0/orders?MaxResultsPerPage=101").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

fn assert_synthetic_phone(phone: &str) {
    let (_, line) = phone.rsplit_once("555-").expect("a 555 number");
    assert!(line.len() == 4 && line.starts_with("01"), "{phone}");
}

fn assert_synthetic_email(email: &str) {
    assert!(
        email.ends_with("@example.com") || email.ends_with(".invalid"),
        "{email}"
    );
}

#[tokio::test]
async fn order_address_and_buyer_info_return_synthetic_pii_with_a_plain_token() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let business = business_order(&sandbox);

    let address = get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{business}/address"),
    )
    .await;
    assert_eq!(address.status, StatusCode::OK);
    let payload = address.json()["payload"].clone();
    assert_eq!(payload["AmazonOrderId"], business.as_str());
    assert_eq!(payload["BuyerCompanyName"], "Synthetic Widgets LLC");
    let shipping = &payload["ShippingAddress"];
    assert_eq!(shipping["AddressLine1"], "1 Synthetic Way");
    for field in [
        "Name",
        "City",
        "StateOrRegion",
        "PostalCode",
        "CountryCode",
        "Phone",
        "AddressType",
    ] {
        assert!(shipping[field].is_string(), "{field}");
    }
    assert_synthetic_phone(shipping["Phone"].as_str().unwrap_or_default());
    assert!(payload["DeliveryPreferences"]["DropOffLocation"].is_string());

    let buyer = get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{business}/buyerInfo"),
    )
    .await;
    assert_eq!(buyer.status, StatusCode::OK);
    let payload = buyer.json()["payload"].clone();
    assert_synthetic_email(payload["BuyerEmail"].as_str().unwrap_or_default());
    assert!(payload["BuyerName"].is_string());
    assert_eq!(
        payload["BuyerTaxInfo"]["CompanyLegalName"],
        "Synthetic Widgets LLC"
    );

    let ids = order_ids(&sandbox, SELLER);
    let mut names = BTreeSet::new();
    for id in &ids[..2] {
        let body = get(
            &sandbox,
            &token,
            &format!("/orders/v0/orders/{id}/buyerInfo"),
        )
        .await
        .json();
        names.insert(
            body["payload"]["BuyerName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(names.contains("Ada Synthetic"), "{names:?}");
}

#[tokio::test]
async fn order_items_buyer_info_returns_gift_messages_and_customizations() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let mut gift = false;
    let mut custom = false;
    for id in order_book::with_item_pii(SELLER, sandbox.inner.order_anchor) {
        let answer = get(
            &sandbox,
            &token,
            &format!("/orders/v0/orders/{id}/orderItems/buyerInfo"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
        for item in body["payload"]["OrderItems"].as_array().expect("items") {
            assert!(item["OrderItemId"].is_string());
            gift |= item["GiftMessageText"].is_string();
            if let Some(url) = item["BuyerCustomizedInfo"]["CustomizedURL"].as_str() {
                custom = true;
                assert!(url.contains(".invalid/"), "{url}");
            }
        }
    }
    assert!(gift && custom);
}

#[tokio::test]
async fn unknown_order_ids_get_404_not_found() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let others = order_ids(&sandbox, OTHER_SELLER);
    for uri in [
        "/orders/v0/orders/999-0000000-0000000".to_owned(),
        "/orders/v0/orders/999-0000000-0000000/address".to_owned(),
        "/orders/v0/orders/999-0000000-0000000/orderItems".to_owned(),
        "/orders/2026-01-01/orders/999-0000000-0000000".to_owned(),
        // Another seller's order is not this seller's.
        format!("/orders/v0/orders/{}", others[0]),
    ] {
        let answer = get(&sandbox, &token, &uri).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(answer.json()["errors"][0]["code"], "NotFound");
    }
}

#[tokio::test]
async fn orders_2026_include_buyer_and_recipient_only_when_included_data_asks() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let search = |query: &'static str| {
        let sandbox = sandbox.clone();
        let token = token.clone();
        async move {
            let answer = get(
                &sandbox,
                &token,
                &format!("/orders/2026-01-01/orders{query}"),
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{query}");
            answer.json()["orders"].as_array().expect("orders").clone()
        }
    };
    let has = |orders: &[Value], field: &str| orders.iter().all(|o| o.get(field).is_some());
    let none = |orders: &[Value], field: &str| orders.iter().all(|o| o.get(field).is_none());

    let plain = search("").await;
    assert_eq!(plain.len(), 40);
    assert!(none(&plain, "buyer") && none(&plain, "recipient"));
    assert!(plain
        .iter()
        .all(|o| is_synthetic_order_id(o["orderId"].as_str().unwrap_or_default())));
    assert!(plain
        .iter()
        .all(|o| o["orderItems"].as_array().is_some_and(|i| !i.is_empty())));

    let buyer = search("?includedData=BUYER").await;
    assert!(has(&buyer, "buyer") && none(&buyer, "recipient"));
    assert_synthetic_email(buyer[0]["buyer"]["buyerEmail"].as_str().unwrap_or_default());

    let both = search("?includedData=BUYER,RECIPIENT").await;
    assert!(has(&both, "buyer") && has(&both, "recipient"));
    let repeated = search("?includedData=RECIPIENT&includedData=FULFILLMENT").await;
    assert!(
        none(&repeated, "buyer") && has(&repeated, "recipient") && has(&repeated, "fulfillment")
    );
    let address = &repeated[0]["recipient"]["deliveryAddress"];
    assert_eq!(address["addressLine1"], "1 Synthetic Way");
    assert_synthetic_phone(address["phone"].as_str().unwrap_or_default());

    let statuses: BTreeSet<String> = repeated
        .iter()
        .map(|o| {
            o["fulfillment"]["fulfillmentStatus"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from([
            "CANCELLED".to_owned(),
            "SHIPPED".to_owned(),
            "UNSHIPPED".to_owned()
        ])
    );
    let packages = search("?includedData=PACKAGES").await;
    let delivered = packages
        .iter()
        .filter(|o| o["packages"][0]["packageStatus"]["status"] == "DELIVERED")
        .count();
    assert!(delivered >= 20);

    // getOrder, same gating.
    let id = plain[5]["orderId"].as_str().expect("id").to_owned();
    let one = get(
        &sandbox,
        &token,
        &format!("/orders/2026-01-01/orders/{id}?includedData=RECIPIENT"),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK);
    let order = one.json()["order"].clone();
    assert_eq!(order["orderId"], id.as_str());
    assert!(order.get("recipient").is_some() && order.get("buyer").is_none());
    let bare = get(&sandbox, &token, &format!("/orders/2026-01-01/orders/{id}"))
        .await
        .json();
    assert!(bare["order"].get("recipient").is_none() && bare["order"].get("buyer").is_none());

    let bad = get(
        &sandbox,
        &token,
        "/orders/2026-01-01/orders?includedData=EVERYTHING",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn orders_2026_search_paginates_and_filters() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let first = get(
        &sandbox,
        &token,
        "/orders/2026-01-01/orders?maxResultsPerPage=25&fulfillmentStatuses=SHIPPED",
    )
    .await
    .json();
    let page_one = first["orders"].as_array().expect("orders").len();
    assert_eq!(page_one, 25);
    let next = first["pagination"]["nextToken"]
        .as_str()
        .expect("nextToken");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("paginationToken", next)
        .append_pair("includedData", "FULFILLMENT")
        .finish();
    let second = get(
        &sandbox,
        &token,
        &format!("/orders/2026-01-01/orders?{query}"),
    )
    .await
    .json();
    let rest = second["orders"].as_array().expect("orders");
    assert!(second.get("pagination").is_none());
    assert!(rest
        .iter()
        .all(|o| o["fulfillment"]["fulfillmentStatus"] == "SHIPPED"));
    assert_eq!(page_one + rest.len(), 33);
    let amazon = get(
        &sandbox,
        &token,
        "/orders/2026-01-01/orders?fulfilledBy=AMAZON",
    )
    .await
    .json();
    // Orders 6, 13, 20, 27 and 34 are fulfilled by Amazon.
    assert_eq!(amazon["orders"].as_array().map(Vec::len), Some(5));
}

// ---------------------------------------------------------------------------------------------
// Request bodies, stats, debug output
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_twenty_megabyte_request_body_is_drained_and_counted() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    const TOTAL: usize = 20 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'{'; CHUNK]);
    let frames = stream::iter(
        (0..TOTAL / CHUNK).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/feeds/2021-06-30/documents")
        .header(spapi::ACCESS_TOKEN, &token)
        .header(CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames))
        .expect("request");
    let answer = send_request(&sandbox, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let received = sandbox.received("feeds_2021-06-30.createFeedDocument");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body_bytes, TOTAL as u64);
}

#[tokio::test]
async fn request_bodies_are_kept_up_to_one_mebibyte_and_counted_beyond() {
    let at_limit = body::read(Full::new(Bytes::from(vec![b'a'; KEEP_LIMIT])))
        .await
        .expect("read");
    assert_eq!(at_limit.total, KEEP_LIMIT as u64);
    assert_eq!(at_limit.bytes.map(|b| b.len()), Some(KEEP_LIMIT));
    let chunks = stream::iter(
        [KEEP_LIMIT, 1, 10]
            .into_iter()
            .map(|n| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a'; n])))),
    );
    let over = body::read(StreamBody::new(chunks)).await.expect("read");
    assert_eq!(over.total, KEEP_LIMIT as u64 + 11);
    assert!(over.bytes.is_none());
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_gets_400() {
    let sandbox = sandbox();
    let frames = stream::iter([
        Ok(Frame::data(Bytes::from_static(b"{\"a\":"))),
        Err(std::io::Error::other("connection reset")),
    ]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/feeds/2021-06-30/documents")
        .body(StreamBody::new(frames))
        .expect("request");
    let answer = send_request(&sandbox, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_stats_endpoint_serves_the_counters_as_json() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    get(&sandbox, &token, "/orders/v0/orders").await;
    get(&sandbox, &token, "/orders/v0/orders").await;
    get(&sandbox, "Atza|forged", "/orders/v0/orders").await;
    let answer = send(&sandbox, Method::GET, "/_sandbox/stats", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let stats: Stats = serde_json::from_slice(&answer.body).expect("Stats JSON");
    assert_eq!(stats, sandbox.stats());
    assert_eq!(stats.requests_total, 3);
    assert_eq!(stats.by_operation.get("ordersV0.getOrders"), Some(&3));
    assert_eq!(stats.unauthorized_total, 1);
    assert_eq!(stats.lwa_refresh_grants, 1);
}

#[tokio::test]
async fn received_keeps_the_most_recent_ten_thousand_requests_per_operation() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    // A cheap scripted answer keeps ten thousand requests fast.
    sandbox.script(
        "ordersV0.getOrders",
        Script::json(StatusCode::OK, json!({})),
    );
    for n in 0..(RECEIVED_PER_OPERATION + 5) {
        get(&sandbox, &token, &format!("/orders/v0/orders?n={n}")).await;
    }
    let received = sandbox.received("ordersV0.getOrders");
    assert_eq!(received.len(), RECEIVED_PER_OPERATION);
    assert_eq!(received[0].path_and_query, "/orders/v0/orders?n=5");
    assert!(sandbox.received("ordersV0.getOrder").is_empty());
}

#[tokio::test]
async fn debug_output_never_shows_tokens_or_secrets() {
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let order = order_ids(&sandbox, SELLER)[0].clone();
    get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{order}/address?BuyerEmail=x%40example.com"),
    )
    .await;
    let received = sandbox.received("ordersV0.getOrderAddress");
    let debug = format!("{received:?} {sandbox:?} {:?}", config());
    assert!(!debug.contains(&token), "token leaked");
    assert!(!debug.contains(&token["Atza|".len()..]), "token leaked");
    assert!(!debug.contains(CLIENT_SECRET), "secret leaked");
    assert!(!debug.contains("example.com"), "query string leaked");
    assert!(debug.contains("<redacted>"));
    // The raw header is still there for tests that need it.
    assert_eq!(
        received[0]
            .headers
            .get(spapi::ACCESS_TOKEN)
            .and_then(|v| v.to_str().ok()),
        Some(token.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// The HTTP server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_answers_a_real_http_client_and_shuts_down_gracefully() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let sandbox = sandbox();
    sandbox.script(
        "reports_2021-06-30.getReportDocument",
        Script {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ScriptBody::Stream {
                total_bytes: 8 * 1024 * 1024,
                chunk_bytes: 64 * 1024,
            },
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sandbox.clone().serve(listener, async {
        let _ = stopped.await;
    }));

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", REFRESH)
        .append_pair("client_id", CLIENT_ID)
        .append_pair("client_secret", CLIENT_SECRET)
        .finish();
    let token_response = client
        .request(
            Request::post(format!("http://{addr}/auth/o2/token"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .expect("request"),
        )
        .await
        .expect("LWA answers");
    assert_eq!(token_response.status(), StatusCode::OK);
    let body = token_response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let token: Value = serde_json::from_slice(&body).expect("JSON");
    let token = token["access_token"].as_str().expect("token").to_owned();

    for _ in 0..3 {
        let response = client
            .request(
                Request::get(format!("http://{addr}/orders/v0/orders"))
                    .header(spapi::ACCESS_TOKEN, &token)
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("SP-API answers");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let orders: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            orders["payload"]["Orders"].as_array().map(Vec::len),
            Some(40)
        );
    }

    let report = client
        .request(
            Request::get(format!("http://{addr}/reports/2021-06-30/documents/DOC-1"))
                .header(spapi::ACCESS_TOKEN, &token)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("report answers");
    let mut body = report.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        total += frame
            .expect("frame")
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or_default();
    }
    assert_eq!(total, 8 * 1024 * 1024);

    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task did not panic");
    assert!(result.is_ok());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
    assert_eq!(sandbox.stats().requests_total, 4);
}

#[tokio::test]
async fn an_example_with_an_empty_path_parameter_is_reachable_through_its_exact_path() {
    // catalogItems 2022-04-01 getCatalogItem has a 400 example for asin "", which the catalog
    // router rejects (empty segment); the sandbox routes that exact path itself.
    let extra: Vec<String> = examples::examples()
        .extra_route_paths()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert_eq!(extra, vec!["GET /catalog/2022-04-01/items/".to_owned()]);
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let answer = get(
        &sandbox,
        &token,
        "/catalog/2022-04-01/items/?marketplaceIds=ATVPDKIKX0DER&includedData=classifications,dimensions,identifiers,images,productTypes,relationships,salesRanks,summaries,vendorDetails",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        sandbox
            .stats()
            .by_operation
            .get("catalogItems_2022-04-01.getCatalogItem"),
        Some(&1)
    );
}

#[tokio::test]
async fn orders_that_take_data_elements_answer_a_plain_token_without_buyer_pii_even_when_rdts_are_required(
) {
    let mut config = config();
    config.require_rdt = true;
    let sandbox = sandbox_with(config);
    let token = access_token(&sandbox).await;
    let orders = order_ids(&sandbox, SELLER);
    let order = get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{}", orders[8]),
    )
    .await;
    assert_eq!(order.status, StatusCode::OK);
    let text = order.json().to_string();
    assert!(
        !text.contains("ShippingAddress") && !text.contains("BuyerEmail"),
        "{text}"
    );
    let address = get(
        &sandbox,
        &token,
        &format!("/orders/v0/orders/{}/address", orders[8]),
    )
    .await;
    assert_eq!(address.status, StatusCode::FORBIDDEN);
}

/// getReportDocument at `path` with an RDT for it, asked on host `sandbox.test:1234`.
async fn report_document(sandbox: &Sandbox, token: &str, path: &str) -> Answer {
    let rdt = rdt_for(sandbox, token, json!([{ "method": "GET", "path": path }])).await;
    let request = Request::builder()
        .uri(path)
        .header(spapi::ACCESS_TOKEN, rdt)
        .header(http::header::HOST, "sandbox.test:1234")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_request(sandbox, request).await
}

#[tokio::test]
async fn the_orders_report_document_downloads_as_a_gzipped_flat_file_with_synthetic_pii() {
    use std::io::Read;
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    let path = format!(
        "/reports/2021-06-30/documents/{}",
        orders::ORDERS_DOCUMENT_ID
    );
    let answer = report_document(&sandbox, &token, &path).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let doc = answer.json();
    assert_eq!(doc["compressionAlgorithm"], "GZIP");
    let url = doc["url"].as_str().unwrap();
    let expected = format!("http://sandbox.test:1234{DOCUMENTS_PATH}{SELLER}");
    assert_eq!(url, expected);

    let download = Request::builder()
        .uri(&url["http://sandbox.test:1234".len()..])
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send_request(&sandbox, download).await;
    assert_eq!(answer.status, StatusCode::OK);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&answer.body[..])
        .read_to_string(&mut text)
        .unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(header[0], "order-id");
    assert!(header.contains(&"buyer-email") && header.contains(&"ship-address-1"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert!(rows.len() >= order_ids(&sandbox, SELLER).len());
    assert!(rows.iter().all(|r| r.len() == header.len()));
    assert!(rows.iter().any(|r| r[3].ends_with("@example.com")));
}

#[tokio::test]
async fn the_fixture_report_documents_download_as_the_files_in_fixtures() {
    use std::io::Read;
    let sandbox = sandbox();
    let token = access_token(&sandbox).await;
    for doc in &FIXTURE_DOCUMENTS {
        let path = format!("/reports/2021-06-30/documents/{}", doc.id);
        let answer = report_document(&sandbox, &token, &path).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}: {:?}",
            doc.id,
            answer.body
        );
        let meta = answer.json();
        assert_eq!(meta["reportDocumentId"], doc.id);
        assert_eq!(
            meta.get("compressionAlgorithm").is_some(),
            doc.gzip,
            "{meta}"
        );
        let url = meta["url"].as_str().unwrap();
        let path = url.strip_prefix("http://sandbox.test:1234").expect(url);
        let download = Request::builder()
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send_request(&sandbox, download).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", doc.id);
        let mut bytes = answer.body.to_vec();
        if doc.gzip {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .unwrap();
            bytes = plain;
        }
        let file = format!(
            "{}/fixtures/documents/{}",
            env!("CARGO_MANIFEST_DIR"),
            doc.file
        );
        assert_eq!(bytes, std::fs::read(file).unwrap(), "{}", doc.id);
    }
    // An unknown fixture is a 404, not some other document.
    let answer = send_request(
        &sandbox,
        Request::get("/_sandbox/fixtures/SPGATE-FIXTURE-NONE")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}
