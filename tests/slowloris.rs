//! Bounded work before authentication: 500 connections from one address trickle headers
//! (slowloris) or a token request body (slow body) at a gateway limited to 200 connections;
//! probes from another loopback address (127.0.0.2) keep answering, slow bodies get 408 at the
//! body-read deadline, and both refusals show in the metrics. Then the per-address rate limit:
//! a burst of unauthenticated token requests from one address is cut off with 429 while the
//! other address is still served.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";
const ATTACKERS: usize = 500;

/// A client whose connections leave from `ip`.
fn client_from(ip: &str) -> Client<HttpConnector, spgate::proxy::body::Body> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One attacking connection: headers (slowloris) or a body (slow body), a byte at a time.
/// Returns what the gateway answered before it closed the connection.
async fn trickle(addr: SocketAddr, slow_body: bool) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let head = if slow_body {
        "POST /auth/o2/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 4000\r\n\r\n"
    } else {
        "POST /auth/o2/token HTTP/1.1\r\nhost: x\r\n"
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    // Longer than the probes' bound: the slowloris connections outlast the probing.
    for _ in 0..240 {
        let byte: &[u8] = if slow_body { b"a" } else { b"x-slow: 1\r\n" };
        if s.write_all(byte).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_slow_bodies_from_500_connections_leave_another_address_served() {
    let gw = start_gateway(Options {
        server_toml: "max_connections = 200\nmax_connections_per_address = 50\nheader_read_timeout_ms = 60000\nbody_read_timeout_ms = 1000\n".into(),
        ..Options::default()
    })
    .await;
    let addr: SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    let mut slow_bodies = Vec::new();
    let mut slowloris = Vec::new();
    for i in 0..ATTACKERS {
        if i % 2 == 1 {
            slow_bodies.push(tokio::spawn(trickle(addr, true)));
        } else {
            slowloris.push(tokio::spawn(trickle(addr, false)));
        }
    }
    // Let the attack take hold before probing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let probe = client_from("127.0.0.2");
    for _ in 0..8 {
        let req = gw.request(Method::GET, ADDRESS).body(empty()).unwrap();
        // A bound, not a speed check: without the per-address cap a probe waits for ever.
        let resp = tokio::time::timeout(Duration::from_secs(10), probe.request(req))
            .await
            .expect("a probe from another address is answered during the attack")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    let mut timeouts = 0;
    for a in slow_bodies {
        if a.await.unwrap().starts_with("HTTP/1.1 408") {
            timeouts += 1;
        }
    }
    for a in slowloris {
        a.abort();
    }
    assert!(timeouts > 0, "slow bodies were answered 408");
    let mut metrics = String::new();
    spgate::server::peers::render_metrics(&mut metrics);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        value("spgate_peer_connections_refused_total") > 0,
        "{metrics}"
    );
    assert!(value("spgate_body_read_timeouts_total") > 0, "{metrics}");
}

#[tokio::test]
async fn a_burst_of_unauthenticated_requests_from_one_address_is_cut_off_and_others_are_served() {
    let gw = start_gateway(Options {
        server_toml: "unauthenticated_rate_per_second = 1\nunauthenticated_burst = 5\n".into(),
        ..Options::default()
    })
    .await;
    let token = |client: &Client<HttpConnector, spgate::proxy::body::Body>| {
        let req = http::Request::post(format!("{}/auth/o2/token", gw.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(
                "grant_type=refresh_token&refresh_token=x&client_id=y&client_secret=z",
            ))
            .unwrap();
        client.request(req)
    };
    let attacker = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(token(&attacker).await.unwrap().status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let other = client_from("127.0.0.2");
    assert_ne!(
        token(&other).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A tool with its API key from the other address is served as usual.
    let req = gw.request(Method::GET, ADDRESS).body(empty()).unwrap();
    assert_eq!(other.request(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_drop_in_tokens_answered_with_amazons_403_are_still_struck_per_address() {
    let gw = start_gateway(Options {
        server_toml: "unauthenticated_rate_per_second = 1\nunauthenticated_burst = 5\n".into(),
        ..Options::default()
    })
    .await;
    let attacker = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for i in 0..10 {
        let req = http::Request::get(format!("{}{ADDRESS}", gw.url))
            .header("x-amz-access-token", format!("spgat_1.guess{i}"))
            .body(empty())
            .unwrap();
        statuses.push(attacker.request(req).await.unwrap().status());
    }
    assert_eq!(statuses[0], StatusCode::FORBIDDEN, "Amazon's answer");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}
