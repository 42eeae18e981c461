//! Cost of `Auditor::record` on the request path (target: under 5 µs per call) with the default
//! fsync policy (`interval`, 1 s), the writer thread writing a real chain in a temp directory.
//! Building the record (its identifier fields) is included, as the pipeline pays for it too.
//!
//! The `audit query` time over 10 million records is measured with the `audit_gen` example:
//! `cargo run --release --example audit_gen -- DIR 10000000` then
//! `time target/release/spgate audit query DIR --tool tool-3 --json > /dev/null`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use spgate::audit::record::{Decision, Id, Limiter, PiiUse, TokenKind};
use spgate::audit::{AlertRules, AuditConfig, Auditor, FsyncPolicy, Record};
use spgate::pii::{Action, Category};
use spgate::secret::Secret;

fn request(i: u64) -> Record {
    let mut r = Record::request("3f9a1c2b7d4e-000000002a")
        .with_tool("label-printer")
        .with_role("shipping")
        .with_seller("A1BENCHSELLER")
        .with_status(200);
    r.operation = Some(Id::lossy("ordersV0.getOrderAddress"));
    r.latency_us = Some(850 + i % 100);
    r.limiter = Some(Limiter {
        decision: Decision::Admitted,
        wait_ms: 0,
    });
    r.token = Some(TokenKind::Rdt);
    r.pii = vec![
        PiiUse {
            category: Category::Address,
            action: Action::Pass,
        },
        PiiUse {
            category: Category::Name,
            action: Action::Mask,
        },
    ];
    r.upstream_request_id = Some(Id::lossy("8b1c4e2a-0f4e-4c1b-9a53-2f1d2b9e7c10"));
    r
}

fn record(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = AuditConfig {
        dir: dir.path().to_path_buf(),
        instance: "bench".into(),
        key: Secret::new(b"synthetic-audit-key-0123456789abcdef".to_vec()),
        retain_days: 365,
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        queue_capacity: 65_536,
        on_failure: spgate::audit::config::OnFailure::Refuse,
        alerts: AlertRules::default(),
    };
    let auditor = rt
        .block_on(async { Auditor::start(&config) })
        .expect("start");
    // The request path's cost: `record` while the queue has room (the writer catches up,
    // untimed, between batches of 8192 calls, as it does at any realistic request rate).
    let mut i = 0u64;
    c.bench_function("audit_record", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(8192);
                let start = Instant::now();
                for _ in 0..n {
                    i += 1;
                    auditor.record(black_box(request(i)));
                }
                total += start.elapsed();
                rt.block_on(auditor.flush());
                left -= n;
            }
            total
        })
    });
    // The writer's sustained capacity: record and write through (serialize, HMAC, SHA-256,
    // append), per record.
    c.bench_function("audit_record_written_through", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                i += 1;
                auditor.record(black_box(request(i)));
            }
            rt.block_on(auditor.flush());
            start.elapsed()
        })
    });
    rt.block_on(auditor.shutdown());
    let m = auditor.metrics();
    eprintln!(
        "audit bench: {} records written, {} calls waited for a full queue, {} lost",
        m.written, m.blocked, m.lost
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = record
}
criterion_main!(benches);
