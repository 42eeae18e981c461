//! End-to-end tests of the request path: a real gateway on port 0 in front of the in-process
//! sandbox. Each test has its own gateway, sandbox and data directory.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use spgate::catalog::Catalog;
use spgate::sandbox::{QuotaMode, Script, ScriptBody};
use spgate::store::SellerStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn every_catalogued_operation_reaches_the_upstream_as_itself() {
    let gw = start_gateway(Options {
        key_sellers: vec!["*".into()],
        ..Options::default()
    })
    .await;
    let catalog = Catalog::builtin();
    for op in catalog.operations() {
        let names: Vec<&str> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let params: Vec<(&str, &str)> = names.iter().map(|n| (*n, "routing-test")).collect();
        let path = op.expand_path(&params);
        let body = if op.method == Method::GET || op.method == Method::DELETE {
            empty()
        } else {
            full("{}")
        };
        let reply = gw
            .call(gw.request(op.method.clone(), &path).body(body).unwrap())
            .await;
        if spgate::proxy::GATEWAY_OWN.contains(&op.key) {
            // The gateway's own: refused, never sent on.
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", op.key);
        }
        assert!(
            reply.headers.contains_key("x-spgate-request-id"),
            "{}",
            op.key
        );
    }
    let stats = gw.sandbox.stats();
    // Every restricted operation first asked createRestrictedDataToken for its RDT.
    let restricted = catalog.operations().iter().filter(|o| o.restricted).count() as u64;
    let rdt_key = "tokens_2021-03-01.createRestrictedDataToken";
    for op in catalog.operations() {
        let expected = match op.key {
            k if k == rdt_key => restricted, // only the gateway's own calls
            "application_2023-11-30.rotateApplicationClientSecret" => 0,
            _ => 1,
        };
        assert_eq!(
            stats.by_operation.get(op.key).copied().unwrap_or(0),
            expected,
            "{} reached the upstream {:?} times",
            op.key,
            stats.by_operation.get(op.key)
        );
    }
    assert_eq!(
        stats.requests_total,
        catalog.operations().len() as u64 - 2 + restricted
    );
    assert_eq!(stats.rdts_issued, restricted);
}

#[tokio::test]
async fn an_unknown_operation_is_404_in_spapi_error_shape() {
    let gw = start_gateway(Options::default()).await;
    for path in [
        "/orders/v0/nothing",
        "/",
        "/orders/v0/orders/123/address/",
        "/orders/v0/orders//address",
    ] {
        let reply = gw.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "NotFound");
    }
    let reply = gw
        .call(
            gw.request(Method::PATCH, "/orders/v0/orders/1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.sandbox.stats().requests_total,
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_static_sandbox_example_comes_back_unchanged_through_the_gateway() {
    let gw = start_gateway(Options::default()).await;
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json()["payload"]["AmazonOrderId"],
        "902-1845936-5435065"
    );
    assert!(
        reply.headers.contains_key("x-amzn-requestid"),
        "Amazon's request id is passed back"
    );
    assert_eq!(reply.headers["x-amzn-ratelimit-limit"], "0.5");
    let reply = gw.get("/orders/v0/orders/TEST_CASE_400/address").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "InvalidInput");
}

#[tokio::test]
async fn callers_without_a_valid_key_or_seller_are_refused_in_spapi_shape() {
    let gw = start_gateway(Options::default()).await;
    let path = "/orders/v0/orders/TEST_CASE_200/address";
    type Case<'a> = (Vec<(&'a str, String)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("x-spgate-seller", SELLER.into())],
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            vec![
                ("authorization", "Bearer nope".into()),
                ("x-spgate-seller", SELLER.into()),
            ],
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            vec![
                ("authorization", "Basic Zm9vOmJhcg==".into()),
                ("x-spgate-seller", SELLER.into()),
            ],
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            vec![
                ("authorization", "Bearer spg_unknownunknownunknown".into()),
                ("x-spgate-seller", SELLER.into()),
            ],
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            vec![("authorization", format!("Bearer {}", gw.key))],
            StatusCode::BAD_REQUEST,
            "InvalidInput",
        ),
        (
            vec![
                ("authorization", format!("Bearer {}", gw.key)),
                ("x-spgate-seller", "A9OTHERSELLER".into()),
            ],
            StatusCode::FORBIDDEN,
            "Unauthorized",
        ),
    ];
    for (headers, status, code) in cases {
        let mut req = http::Request::get(format!("{}{path}", gw.url));
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let reply = gw.call(req.body(empty()).unwrap()).await;
        assert_eq!(reply.status, status, "{headers:?}");
        assert_eq!(reply.error_code(), code);
        assert!(
            !String::from_utf8_lossy(&reply.body).contains(&gw.key),
            "the key is never echoed"
        );
    }
    assert_eq!(gw.sandbox.stats().requests_total, 0);
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let gw = start_gateway(Options::default()).await;
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
    let client = gw.store.clients().await.unwrap().remove(0);
    gw.store.revoke_client(&client.id, 1).await.unwrap();
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_seller_allowed_by_wildcard_but_never_onboarded_is_refused() {
    let gw = start_gateway(Options {
        key_sellers: vec!["*".into()],
        ..Options::default()
    })
    .await;
    let req = http::Request::get(format!("{}/orders/v0/orders/TEST_CASE_200/address", gw.url))
        .header("authorization", format!("Bearer {}", gw.key))
        .header("x-spgate-seller", "A0NEVERONBOARDED")
        .body(empty())
        .unwrap();
    let reply = gw.call(req).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "Unauthorized");
}

#[tokio::test]
async fn grantless_operations_need_a_tool_allowed_for_all_sellers() {
    let gw = start_gateway(Options::default()).await;
    let reply = gw.get("/notifications/v1/destinations").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let gw = start_gateway(Options {
        key_sellers: vec!["*".into()],
        ..Options::default()
    })
    .await;
    let reply = gw.get("/notifications/v1/destinations").await;
    assert_ne!(
        reply.status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(gw.sandbox.stats().lwa_client_credentials_grants, 1);
    let received = gw.sandbox.received("notifications.getDestinations");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].token_kind,
        spgate::sandbox::TokenKind::Grantless
    );
}

#[tokio::test]
async fn headers_are_cleaned_both_ways_and_amazons_ids_pass_back() {
    let gw = start_gateway(Options::default()).await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![
                (
                    "x-amzn-requestid".parse().unwrap(),
                    "amzn-req-123".parse().unwrap(),
                ),
                (
                    "x-amzn-ratelimit-limit".parse().unwrap(),
                    "7.5".parse().unwrap(),
                ),
                (
                    "connection".parse().unwrap(),
                    "x-hop-header".parse().unwrap(),
                ),
                ("x-hop-header".parse().unwrap(), "1".parse().unwrap()),
                ("keep-alive".parse().unwrap(), "timeout=5".parse().unwrap()),
                ("x-end-to-end".parse().unwrap(), "kept".parse().unwrap()),
            ],
            body: ScriptBody::Json(serde_json::json!({"payload": {}})),
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    let req = gw
        .request(
            Method::GET,
            "/orders/v0/orders/123-1234567-1234567/address?x=1&y=%20z",
        )
        .header("x-amz-access-token", "caller-supplied-token")
        .header("x-spgate-priority", "high")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("host", "sellingpartnerapi-fe.amazon.com")
        .header("user-agent", "label-printer/2.1 (Language=Rust)")
        .body(empty())
        .unwrap();
    let reply = gw.call(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-amzn-requestid"], "amzn-req-123");
    assert_eq!(reply.headers["x-amzn-ratelimit-limit"], "7.5");
    assert!(
        !reply.headers.contains_key("x-end-to-end"),
        "headers outside the allowlist are dropped (issue 11)"
    );
    assert!(!reply.headers.contains_key("x-hop-header"));
    assert!(!reply.headers.contains_key("keep-alive"));

    let got = gw.sandbox.received("ordersV0.getOrderAddress");
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(
        got[0].path_and_query,
        "/orders/v0/orders/123-1234567-1234567/address?x=1&y=%20z"
    );
    assert!(
        !h.contains_key("authorization"),
        "the gateway key never reaches Amazon"
    );
    assert!(!h.contains_key("x-spgate-seller") && !h.contains_key("x-spgate-priority"));
    assert!(!h.contains_key("proxy-authorization") && !h.contains_key("te"));
    assert_ne!(h["x-amz-access-token"], "caller-supplied-token");
    assert!(
        h["x-amz-access-token"]
            .to_str()
            .unwrap()
            .starts_with("Atz.sprdt|"),
        "a restricted operation is called with an RDT"
    );
    assert_eq!(h["user-agent"], "label-printer/2.1 (Language=Rust)");
    let host = h["host"].to_str().unwrap();
    assert!(
        gw.sandbox_url.ends_with(host),
        "Host is the upstream's ({host}), never the caller's"
    );
}

#[tokio::test]
async fn access_tokens_are_cached_and_refreshed_after_expiry() {
    let gw = start_gateway(Options {
        token_ttl: Duration::from_secs(6),
        ..Options::default()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            gw.get("/orders/v0/orders/TEST_CASE_200/address")
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!((gw.lwa_calls)(), 1, "one LWA call serves many requests");
    assert_eq!(gw.sandbox.stats().lwa_refresh_grants, 1);
    // A 6 s token is refreshed at half its life, 3 s (the margin is capped at half the lifetime).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!((gw.lwa_calls)(), 2);
    assert_eq!(
        gw.sandbox.stats().unauthorized_total,
        0,
        "no request ever used an expired token"
    );
}

#[tokio::test]
async fn a_revoked_refresh_token_deauthorizes_the_seller() {
    let gw = start_gateway(Options::default()).await;
    gw.sandbox.revoke_refresh_token(REFRESH_TOKEN);
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&reply.body).contains("re-authorize"));
    assert_eq!(
        gw.store.seller(SELLER).await.unwrap().unwrap().status,
        SellerStatus::Deauthorized
    );
    // Later requests do not even ask LWA.
    let calls = (gw.lwa_calls)();
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!((gw.lwa_calls)(), calls);
}

#[tokio::test]
async fn an_lwa_outage_is_a_503_with_retry_after_not_a_hang() {
    let gw = start_gateway(Options::default()).await;
    gw.sandbox.set_lwa_down(true);
    let started = std::time::Instant::now();
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    assert!(reply.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.sandbox.set_lwa_down(false);
    // Requests queued behind a failed LWA call share its answer for a moment instead of each
    // waiting out another timeout; after that, recovery is immediate.
    tokio::time::sleep(spgate::auth::slots::FAILURE_TTL).await;
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_slow_upstream_hits_the_header_timeout_with_504() {
    let gw = start_gateway(Options {
        upstream_toml: "header_timeout_ms = 300\ntotal_timeout_ms = 5000".into(),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![],
            body: ScriptBody::Json(serde_json::json!({})),
            header_delay: Duration::from_secs(3),
            times: None,
        },
    );
    let started = std::time::Instant::now();
    let reply = gw.get("/orders/v0/orders/1/address").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "RequestTimeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_at_the_total_timeout() {
    let gw = start_gateway(Options {
        upstream_toml: "header_timeout_ms = 500\ntotal_timeout_ms = 600".into(),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "catalogItems_2022-04-01.getCatalogItem",
        Script {
            status: StatusCode::OK,
            // Not JSON: passes as a stream (JSON answers are read whole by the safety net).
            headers: vec![(
                "content-type".parse().unwrap(),
                "application/octet-stream".parse().unwrap(),
            )],
            body: ScriptBody::Stall { first_bytes: 100 },
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    let started = std::time::Instant::now();
    let resp = gw
        .send(
            gw.request(Method::GET, "/catalog/2022-04-01/items/B000000001")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the body must end in an error, not look complete"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_header_timeout_may_not_exceed_the_total_timeout() {
    let raw = spgate::config::RawConfig::parse(
        "[upstream]\nheader_timeout_ms = 5000\ntotal_timeout_ms = 100\n",
    )
    .unwrap();
    let err = spgate::config::Config::resolve(raw, &spgate::config::MapEnv::default())
        .err()
        .unwrap();
    assert!(
        err.0.iter().any(|i| i.path == "upstream.header_timeout_ms"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let gw = start_gateway(Options {
        eu_endpoint: Some(dead_url),
        ..Options::default()
    })
    .await;
    let reply = gw.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    // A restricted operation cannot even get its RDT there: fail closed, retry later.
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "ServiceUnavailable");
}

async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_is_a_400_and_the_connection_closes() {
    let gw = start_gateway(Options::default()).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let req = format!(
        "POST /orders/v0/orders/1/shipment HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nx-spgate-seller: {SELLER}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        gw.key
    );
    let out = raw_exchange(&addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "the smuggled request must not be answered: {out}"
    );
    assert_eq!(gw.sandbox.stats().requests_total, 0);
}

#[tokio::test]
async fn oversized_headers_are_431_and_oversized_bodies_413() {
    let gw = start_gateway(Options {
        server_toml: "max_header_bytes = 4096\nmax_request_body_bytes = 1000".into(),
        ..Options::default()
    })
    .await;
    let big = "a".repeat(5000);
    let reply = gw
        .call(
            gw.request(Method::GET, "/orders/v0/orders/TEST_CASE_200/address")
                .header("x-big", &big)
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(reply.error_code(), "InvalidInput");
    // Far beyond the limit, hyper itself refuses before the pipeline runs.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let out = raw_exchange(&addr, huge.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let body = "x".repeat(2000);
    let reply = gw
        .call(
            gw.request(Method::POST, "/orders/v0/orders/1/shipment")
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "InvalidInput");

    // Chunked (no Content-Length): the limit trips while streaming.
    let chunks = futures_util::stream::iter((0..20).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![b'y'; 100])))
    }));
    let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::StreamBody::new(chunks),
        |e| Box::new(e) as spgate::proxy::body::BoxError,
    ));
    let reply = gw
        .call(
            gw.request(Method::POST, "/orders/v0/orders/1/shipment")
                .body(body)
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops() {
    let mut gw = start_gateway(Options::default()).await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![],
            body: ScriptBody::Json(serde_json::json!({"payload": {"slow": true}})),
            header_delay: Duration::from_millis(700),
            times: None,
        },
    );
    let req = gw
        .request(Method::GET, "/orders/v0/orders/1/address")
        .body(empty())
        .unwrap();
    let client = gw.client.clone();
    let in_flight = tokio::spawn(async move { client.request(req).await });
    // Shut down only once the request is in flight upstream (not after a guessed delay).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.sandbox.received("ordersV0.getOrderAddress").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.begin_shutdown();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), StatusCode::OK);
    let server = gw.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    let addr = gw.url.trim_start_matches("http://").to_string();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn against_amazons_sandbox_the_gateway_enforces_the_sandbox_plan_itself() {
    let gw = start_gateway(Options {
        quotas: QuotaMode::AmazonSandbox,
        extra_toml: "[ratelimit]\nsandbox = true\n".into(),
        ..Options::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let req = gw
            .request(Method::GET, "/orders/v0/orders/TEST_CASE_200/address")
            .header("x-spgate-max-wait-ms", "0")
            .body(empty())
            .unwrap();
        statuses.push(gw.call(req).await);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count(),
        15,
        "the sandbox burst"
    );
    let refused = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("refused");
    assert_eq!(refused.error_code(), "QuotaExceeded");
    assert!(
        refused.headers.contains_key("retry-after"),
        "the gateway's own 429"
    );
    // SDKs report x-amzn-RequestId: the gateway's own answers carry the gateway's id.
    assert_eq!(
        refused.headers.get("x-amzn-requestid"),
        refused.headers.get("x-spgate-request-id")
    );
    assert!(refused.headers.contains_key("x-amzn-requestid"));
    // Amazon's answers keep Amazon's id.
    let served = statuses
        .iter()
        .find(|r| r.status == StatusCode::OK)
        .unwrap();
    assert_ne!(
        served.headers.get("x-amzn-requestid"),
        served.headers.get("x-spgate-request-id")
    );
    assert_eq!(
        gw.sandbox.stats().throttled_total,
        0,
        "Amazon's sandbox never had to refuse"
    );
}
