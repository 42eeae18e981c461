//! Cost of `Auditor::record` on the request path (target: under 5 µs per call) with the default
//! fsync policy (`interval`, 1 s), the writer thread writing a real chain in a temp directory.
//! Building the record (its identifier fields) is included, as the pipeline pays for it too.
//!
//! Then, at a paced 1,000 and 5,000 records per second for a few seconds each (as a gateway
//! serving that many requests records them), the process's whole CPU time (caller and writer
//! thread, from `/proc/self/task/*/schedstat`, in ns) per record, with the pacing loop's own cost
//! measured on a disabled auditor and subtracted; and the latency of `record_durable` (what a
//! response carrying buyer PII waits for), p50/p99/max. Printed as `audit paced: ...` lines.
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
    let config = config(dir.path());
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

/// CPU time of every thread of this process, in ns.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn config(dir: &std::path::Path) -> AuditConfig {
    AuditConfig {
        dir: dir.to_path_buf(),
        instance: "paced".into(),
        key: Secret::new(b"synthetic-audit-key-0123456789abcdef".to_vec()),
        retain_days: 365,
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        queue_capacity: 65_536,
        write_delay: Duration::from_millis(50),
        full_wait: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(10),
        on_failure: spgate::audit::config::OnFailure::Refuse,
        alerts: AlertRules::default(),
    }
}

/// Records `rate` a second for `seconds` (async records from a paced thread); the process's CPU
/// ns spent.
fn paced_cpu(auditor: &Auditor, rate: u64, seconds: u64) -> u64 {
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let cpu0 = process_cpu_ns();
    for i in 0..rate * seconds {
        let due = start + interval * (i as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        auditor.record(black_box(request(i)));
    }
    let cpu = process_cpu_ns() - cpu0;
    // Let the writer finish what it has (its CPU for these records counted above only if it
    // ran already: flush and count the rest too).
    let cpu1 = process_cpu_ns();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(auditor.flush());
    cpu + (process_cpu_ns() - cpu1)
}

/// `record_durable` latencies (µs) at `rate` a second for `seconds`.
fn paced_durable(rate: u64, seconds: u64) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let auditor = Auditor::start(&config(dir.path())).expect("start");
        let interval = Duration::from_nanos(1_000_000_000 / rate);
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..rate * seconds {
            tokio::time::sleep_until(start + interval * (i as u32)).await;
            let a = auditor.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                a.record_durable(request(i)).await.expect("written");
                t.elapsed().as_micros() as u64
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        auditor.shutdown().await;
        out
    })
}

fn paced(_: &mut Criterion) {
    let seconds = 5;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for rate in [1000u64, 5000] {
        let baseline = paced_cpu(&Auditor::disabled(), rate, seconds);
        let dir = tempfile::tempdir().expect("temp dir");
        let auditor = Auditor::start(&config(dir.path())).expect("start");
        let on = paced_cpu(&auditor, rate, seconds);
        rt.block_on(auditor.shutdown());
        let n = rate * seconds;
        eprintln!(
            "audit paced: {rate} records/s: {:.2} us CPU per record (audit on {:.2}, pacing alone {:.2})",
            on.saturating_sub(baseline) as f64 / n as f64 / 1000.0,
            on as f64 / n as f64 / 1000.0,
            baseline as f64 / n as f64 / 1000.0,
        );
        let mut lat = paced_durable(rate, seconds);
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        eprintln!(
            "audit paced: {rate} durable records/s: latency p50 {} us, p99 {} us, max {} us",
            pct(0.5),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = record, paced
}
criterion_main!(benches);
