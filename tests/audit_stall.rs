//! A disk that stalls without failing, end to end in one gateway: the audit writer holds its
//! batch (the `hold_writer` fault hook, as in a `write(2)` that hangs) while requests keep
//! coming. No request handler blocks for good: once the queue is full a record waits at most
//! `full_wait_ms`, then the gateway fails closed (503 `ServiceUnavailable` with `Retry-After`,
//! `/readyz` 503, metrics), the watchdog marks the stall, and everything recovers when the
//! writer moves again, with a `gap` record counting the refused records.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;

const SELLERS: &str = "/sellers/v1/marketplaceParticipations";
const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";

/// Anything that hangs without the fix hangs here: the process fails instead of waiting for
/// ever (a handler blocked on a thread lock can stall the test's own runtime).
const HANG: Duration = Duration::from_secs(120);

fn fail_if_hung(done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + HANG;
        while std::time::Instant::now() < deadline {
            if done.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("the test hung: a request handler blocked on the audit queue");
        std::process::exit(101);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_audit_writer_fails_closed_and_recovers_with_a_gap_record() {
    let done = Arc::new(AtomicBool::new(false));
    fail_if_hung(done.clone());
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"stall\"\nkey = {{ env = \"AUDIT_KEY\" }}\nqueue_capacity = 16\nfull_wait_ms = 50\nstall_timeout_ms = 500\n",
            audit.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    let admin = admin_of(&gw);
    let auditor = gw.gateway.auditor().clone();
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));
    assert_eq!(gw.get(SELLERS).await.status, StatusCode::OK);
    auditor.flush().await;

    let hold = auditor.hold_writer();
    // Requests go on; their records fill the queue behind the held batch. The first record
    // refused for room turns the gateway unavailable: the next request is refused up front.
    let mut refused_answer = None;
    for _ in 0..40 {
        let reply = gw.get(SELLERS).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            refused_answer = Some(reply);
            break;
        }
    }
    let reply = refused_answer.expect("a full audit queue makes the gateway refuse");
    assert_unavailable(&reply);
    assert!(auditor.metrics().refused >= 1);
    assert_eq!(auditor.metrics().blocked, 1, "one bounded wait, then none");
    assert_unavailable(&gw.get(ADDRESS).await);
    let (status, body) = readyz(&admin).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable\n")
    );
    // The watchdog finds the writer stalled: the gauge says so.
    let deadline = std::time::Instant::now() + HANG;
    while !auditor.metrics().stalled {
        assert!(std::time::Instant::now() < deadline, "no stall marked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut metrics = String::new();
    auditor.render_metrics(&mut metrics);
    assert!(
        metrics.contains("\nspgate_audit_writer_stalled 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nspgate_audit_unavailable 1\n"),
        "{metrics}"
    );

    // The disk moves again: ready, serving, and the loss is in the chain.
    drop(hold);
    readyz_until(&admin, StatusCode::OK, Duration::from_secs(30)).await;
    assert_ne!(
        gw.get(SELLERS).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = auditor.metrics().refused;
    let records = audit_records(&gw, audit.path()).await;
    let gaps: Vec<_> = records.iter().filter(|r| r["kind"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["reason"], "queue_full");
    assert_eq!(gaps[0]["count"].as_u64(), Some(refused));
    assert!(!auditor.metrics().stalled);
    done.store(true, Ordering::Relaxed);
}
