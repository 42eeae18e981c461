//! The writer: everything recorded is written by shutdown, files rotate and expire on the
//! writer's clock, alerts reach the chain, the counters and a webhook.

use std::path::Path;
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::audit::chain;
use crate::audit::config::{AlertRules, DenialBurst};
use crate::secret::Secret;

const KEY: &[u8] = b"synthetic-audit-key-0123456789abcdef";

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        dir: dir.to_path_buf(),
        instance: "gw1".into(),
        key: Secret::new(KEY.to_vec()),
        retain_days: 365,
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        queue_capacity: 1024,
        write_delay: Duration::from_millis(50),
        full_wait: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(10),
        on_failure: crate::audit::config::OnFailure::Refuse,
        alerts: AlertRules::default(),
    }
}

fn kinds(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for files in chain::list_chains(dir).unwrap().into_values() {
        for f in files {
            for line in std::fs::read_to_string(&f.path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                out.push(v["kind"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

fn verified(dir: &Path) -> u64 {
    let reports = chain::verify(dir, KEY).unwrap();
    assert!(reports.iter().all(|r| r.first_bad.is_none()), "{reports:?}");
    reports.iter().map(|r| r.records).sum()
}

#[tokio::test]
async fn shutdown_writes_every_queued_record_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::start(&config(dir.path())).unwrap();
    for i in 0..500 {
        auditor.record(Record::request(&format!("req-{i}")).with_tool("labels"));
    }
    auditor.shutdown().await;
    let k = kinds(dir.path());
    assert_eq!(k.len(), 502);
    assert_eq!(
        (k[0].as_str(), k[501].as_str()),
        ("audit_started", "audit_stopped")
    );
    assert_eq!(verified(dir.path()), 502);
    let m = auditor.metrics();
    assert_eq!((m.written, m.lost), (502, 0));
    // After shutdown nothing is written, and the loss is counted.
    auditor.record(Record::request("late"));
    assert_eq!(auditor.metrics().lost, 1);
    assert!(!auditor.healthy());
    // A restart continues the same chain.
    let again = Auditor::start(&config(dir.path())).unwrap();
    again.shutdown().await;
    assert_eq!(verified(dir.path()), 504);
}

#[tokio::test]
async fn files_rotate_daily_and_expire_after_retention_on_the_writers_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let mut cfg = config(dir.path());
    cfg.retain_days = 3;
    let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock.clone())).unwrap();
    for _ in 0..5 {
        auditor.record(Record::new(Kind::Reload).with_actor("ops-alice"));
        auditor.flush().await;
        clock.advance(time::Duration::days(1));
    }
    // Days 1-5 written; on day 6 (the flush after the last advance) days before 01-03 expire,
    // and the retention record itself opens the day-6 file.
    auditor.flush().await;
    let days: Vec<String> = chain::list_chains(dir.path()).unwrap()["gw1"]
        .iter()
        .map(|f| f.day.to_string())
        .collect();
    assert_eq!(
        days,
        ["2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"]
    );
    assert_eq!(auditor.metrics().files_expired, 2);
    auditor.shutdown().await;
    assert!(kinds(dir.path()).contains(&"audit_retention".to_string()));
    let reports = chain::verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None, "{reports:?}");
    assert_eq!(reports[0].expired_before.as_deref(), Some("2026-01-03"));
}

/// A one-connection-at-a-time HTTP server that hands each request body to the test.
async fn webhook_sink() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            assert_eq!(req.method(), http::Method::POST);
                            assert_eq!(req.uri().path(), "/hook");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(body.to_vec());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn alerts_reach_the_chain_the_counters_and_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut bodies) = webhook_sink().await;
    let mut cfg = config(dir.path());
    cfg.alerts = AlertRules {
        reveals_per_tool_per_hour: None,
        seller_denials: true,
        denial_burst: Some(DenialBurst {
            count: 2,
            window: Duration::from_secs(60),
        }),
        new_pii_category: false,
        cooldown: Duration::from_secs(600),
        webhook: Some(Secret::new(url)),
        webhook_timeout: Duration::from_secs(5),
    };
    let auditor = Auditor::start(&cfg).unwrap();
    for i in 0..2 {
        auditor.record(
            Record::request(&format!("r{i}"))
                .with_tool("repricer")
                .with_seller("A2OTHERSELLER")
                .with_status(403)
                .with_reason(Reason::SELLER_NOT_ALLOWED),
        );
    }
    auditor.flush().await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let body = bodies.recv().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        got.push((
            v["rule"].as_str().unwrap().to_string(),
            v["tool"].clone(),
            v["instance"].clone(),
        ));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].0, "denial_burst");
    assert_eq!(got[1].0, "seller_denials");
    assert_eq!(got[1].1, "repricer");
    assert_eq!(got[1].2, "gw1");
    let m = auditor.metrics();
    assert_eq!(m.alerts, [0, 1, 1, 0]);
    let mut text = String::new();
    auditor.render_metrics(&mut text);
    assert!(text.contains("spgate_audit_alerts_total{rule=\"seller_denials\"} 1"));
    assert!(
        text.contains("spgate_audit_records_written_total 5"),
        "{text}"
    );
    auditor.shutdown().await;
    assert_eq!(
        kinds(dir.path())
            .iter()
            .filter(|k| k.as_str() == "alert")
            .count(),
        2
    );
    assert_eq!(auditor.metrics().webhook_failures, 0);
}

#[tokio::test]
async fn a_disabled_auditor_records_nothing_and_stays_healthy() {
    let a = Auditor::disabled();
    a.record(Record::request("r"));
    a.flush().await;
    a.shutdown().await;
    assert!(a.healthy() && !a.enabled());
    assert_eq!(a.metrics(), AuditMetrics::default());
}

#[tokio::test]
async fn a_durable_record_is_in_the_file_when_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::start(&config(dir.path())).unwrap();
    for i in 0..20 {
        let id = format!("durable-{i}");
        auditor
            .record_durable(Record::request(&id).with_tool("labels"))
            .await
            .unwrap();
        // Handed to the kernel: another reader sees it now, with no flush or shutdown.
        let files = chain::list_chains(dir.path()).unwrap();
        let text = std::fs::read_to_string(&files["gw1"][0].path).unwrap();
        assert!(text.contains(&format!("\"request_id\":\"{id}\"")), "{i}");
    }
    // The head moved lazily, yet the chain verifies with the records past it.
    let reports = chain::verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None, "{reports:?}");
    assert_eq!(reports[0].records, 21);
    assert_eq!(auditor.shutdown().await, 0);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failing_disk_refuses_durable_records_then_a_gap_record_reports_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let auditor = Auditor::start_with_clock(&config(dir.path()), Arc::new(clock.clone())).unwrap();
    auditor
        .record_durable(Record::new(Kind::Reload).with_actor("ops-alice"))
        .await
        .unwrap();
    // The next day's file is a device that answers every write with ENOSPC (a full disk).
    let next = dir.path().join("audit-gw1-2026-01-02.jsonl");
    std::os::unix::fs::symlink("/dev/full", &next).unwrap();
    clock.advance(time::Duration::days(1));
    let refused = auditor
        .record_durable(Record::new(Kind::Reveal).with_tool("labels"))
        .await;
    assert_eq!(refused, Err(Unrecorded));
    assert!(!auditor.available());
    assert!(auditor.metrics().unavailable);
    for i in 0..3 {
        auditor.record(Record::request(&format!("lost-{i}")));
    }
    auditor.flush().await;
    assert!(!auditor.available());
    assert_eq!(auditor.metrics().lost, 4);
    // Space again: the writer's retry writes the gap record and the log is available.
    std::fs::remove_file(&next).unwrap();
    let mut waited = 0;
    while !auditor.available() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert!(auditor.available());
    assert_eq!(auditor.shutdown().await, 0);
    let reports = chain::verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None, "{reports:?}");
    assert_eq!(reports[0].gaps.len(), 1, "{reports:?}");
    assert_eq!(reports[0].gaps[0].count, Some(4));
    assert!(reports[0].gaps[0].from.is_some() && reports[0].gaps[0].to.is_some());
    let k = kinds(dir.path());
    assert!(!k.contains(&"reveal".to_string()), "{k:?}");
    assert_eq!(auditor.metrics().gaps, 1);
}

#[tokio::test]
async fn a_process_that_stopped_abruptly_leaves_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A writer that never writes audit_stopped (SIGKILL).
        let mut w = chain::ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
        w.append(
            datetime!(2026-01-01 10:00 UTC),
            &Record::new(Kind::AuditStarted),
        )
        .unwrap();
        w.flush().unwrap();
    }
    let auditor = Auditor::start(&config(dir.path())).unwrap();
    auditor.shutdown().await;
    let reports = chain::verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None, "{reports:?}");
    assert_eq!(reports[0].gaps.len(), 1);
    let gap = &reports[0].gaps[0];
    assert_eq!(
        (gap.count, gap.reason.as_deref(), gap.from.as_deref()),
        (None, Some("abrupt_stop"), Some("2026-01-01T10:00:00.000Z"))
    );
    // A clean stop leaves none.
    let again = Auditor::start(&config(dir.path())).unwrap();
    again.shutdown().await;
    assert_eq!(chain::verify(dir.path(), KEY).unwrap()[0].gaps.len(), 1);
}

/// A writer that is gone (its thread panicked) leaves the log stopped and failing: readiness
/// says 503, durable records are refused, never dropped while the gateway keeps serving, and
/// the records it left in the queue are counted as lost.
#[tokio::test]
async fn a_dead_writer_fails_closed() {
    let queue = Arc::new(Queue::new(4, BATCH));
    let auditor = Auditor {
        inner: Arc::new(Inner {
            queue: Some(queue.clone()),
            noise: Arc::new(crate::audit::noise::Noise::new()),
            instance: "dead".into(),
            on_failure: OnFailure::Refuse,
            counters: Arc::new(Counters::default()),
        }),
    };
    assert!(auditor.healthy());
    auditor.record(Record::request("queued-when-it-died"));
    auditor.inner.counters.writer_died(&queue);
    assert!(!auditor.healthy());
    assert!(!auditor.available());
    assert!(auditor
        .record_durable(Record::new(Kind::AuditStopped))
        .await
        .is_err());
    assert_eq!(auditor.metrics().lost, 2);
    // And `audit_stopped`, which a dead writer cannot write: the exit status is non-zero.
    assert_eq!(auditor.shutdown().await, 3);
}

/// Records queued by other threads while the writer shuts down are either written before
/// `audit_stopped` or counted as lost (and in `shutdown`'s answer): none disappears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_racing_the_shutdown_are_written_or_counted_never_silently_lost() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let auditor = Auditor::start(&config(dir.path())).unwrap();
        let senders: Vec<_> = (0..2)
            .map(|t| {
                let a = auditor.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        a.record(Record::request(&format!("race-{t}-{i}")));
                    }
                })
            })
            .collect();
        let unrecorded = auditor.shutdown().await;
        for s in senders {
            s.join().unwrap();
        }
        let requests = kinds(dir.path())
            .iter()
            .filter(|k| k.as_str() == "request")
            .count() as u64;
        let lost = auditor.metrics().lost;
        assert_eq!(requests + lost, 4000, "round {round}");
        // A writer slower than the senders (a loaded machine) refuses records after the
        // bounded wait: a gap record in the chain reports those.
        let reported: u64 = chain::verify(dir.path(), KEY).unwrap()[0]
            .gaps
            .iter()
            .filter_map(|g| g.count)
            .sum();
        // What `shutdown` reported was lost before it returned; the rest came after it. Asked
        // again once every sender is done, it reports exactly every loss no gap record reports.
        assert!(unrecorded <= lost - reported, "round {round}");
        assert_eq!(auditor.shutdown().await, lost - reported, "round {round}");
        assert_eq!(
            kinds(dir.path()).last().map(String::as_str),
            Some("audit_stopped")
        );
    }
}

#[tokio::test]
async fn ordinary_records_wait_for_the_write_window_and_a_durable_one_takes_them_along() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A window longer than the test: only the durable record makes the writer write.
    cfg.write_delay = Duration::from_secs(600);
    let auditor = Auditor::start(&cfg).unwrap();
    for i in 0..10 {
        auditor.record(Record::request(&format!("lazy-{i}")));
    }
    let requests = || {
        kinds(dir.path())
            .iter()
            .filter(|k| k.as_str() == "request")
            .count()
    };
    // Not written while the window runs (the writer, woken by the first record, sleeps).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(), 0);
    auditor
        .record_durable(Record::request("durable"))
        .await
        .unwrap();
    // Written together, without a flush.
    assert_eq!(requests(), 11);
    // An urgent record is written without anyone waiting for it, long before the window ends.
    auditor.record_urgent(Record::request("download-end"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while requests() < 12 {
        assert!(std::time::Instant::now() < deadline, "not written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    auditor.shutdown().await;
}
