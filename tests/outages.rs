//! Readiness and errors tell the truth while LWA fails and while a PostgreSQL store is out of
//! reach, as `tests/readiness.rs` shows for Redis: `/readyz` answers 503 naming the dependency,
//! requests answer 503 `ServiceUnavailable` with `Retry-After` (never 500), and both recover
//! without a restart when the dependency does. (A process of its own: the once-per-interval
//! outage log is per process, and `tests/readiness.rs` counts its lines.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";

#[tokio::test]
async fn an_lwa_outage_opens_the_circuit_unready_503_with_retry_after_then_recovers() {
    let gw = start_gateway(Options::default()).await;
    let admin = admin_of(&gw);
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));
    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);

    // LWA answers 503 from now on, and the cached access token stops working: every request
    // needs a new token from LWA.
    gw.sandbox.set_lwa_down(true);
    gw.sandbox.expire_access_tokens();
    let opened_before = gw.gateway.lwa().circuit().opened();
    // A failed fetch is shared for a second, so the consecutive failures that open the circuit
    // take a few seconds of requests; every one of them is a 503 with Retry-After.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.gateway.lwa().circuit().is_open() {
        assert!(Instant::now() < deadline, "the LWA circuit never opened");
        assert_unavailable(&gw.get(ADDRESS).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gw.gateway.lwa().circuit().opened(), opened_before + 1);
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, "login with amazon circuit open\n");
    // With the circuit open, requests fail fast without asking LWA.
    let lwa_calls = (gw.lwa_calls)();
    for _ in 0..5 {
        assert_unavailable(&gw.get(ADDRESS).await);
    }
    assert_eq!(
        (gw.lwa_calls)(),
        lwa_calls,
        "an open circuit asks LWA nothing"
    );

    // LWA answers again: once the circuit lets a call through, the gateway is ready and serves.
    gw.sandbox.set_lwa_down(false);
    readyz_until(
        &admin,
        StatusCode::OK,
        spgate::auth::lwa::CIRCUIT_OPEN_FOR + Duration::from_secs(10),
    )
    .await;
    let reply = gw.get(ADDRESS).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(!gw.gateway.lwa().circuit().is_open());
}

/// The machine's PostgreSQL (shared by every test: never stopped by one).
const POSTGRES: &str = "127.0.0.1:5432";

/// A schema of the test's own, dropped at the end (also when the test fails).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &format!("postgres://postgres@{POSTGRES}/postgres"),
                "-qAtc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

#[tokio::test]
async fn a_postgres_outage_is_unready_and_answered_503_with_retry_after_then_recovers() {
    let random = spgate::crypto::random_token::<9>().unwrap();
    let schema = Schema(format!(
        "readiness_{}",
        &spgate::crypto::sha256_hex(random.as_bytes())[..12]
    ));
    // The store reaches PostgreSQL only through a proxy this test can cut.
    let proxy = common::cut::CutProxy::start(POSTGRES.parse().unwrap()).await;
    let gw = start_gateway(Options {
        store_toml: Some(format!(
            "[store]\ntype = \"postgres\"\nurl = \"postgres://postgres@{}/postgres\"\nschema = \"{}\"\n",
            proxy.addr, schema.0
        )),
        ..Options::default()
    })
    .await;
    let admin = admin_of(&gw);
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));
    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);

    proxy.cut();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, "store unavailable\n");
    for _ in 0..5 {
        assert_unavailable(&gw.get(ADDRESS).await);
    }
    assert!(proxy.refused() > 0, "the store was asked during the cut");

    // The network heals: the pool makes new connections, without a restart.
    proxy.restore();
    readyz_until(&admin, StatusCode::OK, Duration::from_secs(20)).await;
    let reply = gw.get(ADDRESS).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}
