//! Cost of `Auditor::record` on the request path (target: under 5 µs per call) with the default
//! fsync policy (`interval`, 1 s), the writer thread writing a real chain in a temp directory.
//! Building the record (its identifier fields) is included, as the pipeline pays for it too.
//!
//! Then the audit path's CPU per record at a paced 1,000 and 5,000 records per second for a few
//! seconds each (as a gateway serving that many requests records them; the budget is
//! 5 µs per request), measured directly, not as a difference of two runs:
//!
//! - the **writer thread**: its CPU time from `/proc/self/task/<tid>/schedstat` (ns on CPU,
//!   the thread found by its name `audit-<instance>` in `/proc/self/task/*/comm`), before the
//!   first record and after the last one is written, over the records;
//! - the **console tap** (as `spgate demo`, or `serve` with the web console, attach it; off with
//!   `AUDIT_BENCH_TAP=0`): it counts on the writer thread (in the writer's figure); the CPU time
//!   of the console statistics' thread (`console-stats`, found the same way), which counts only
//!   what the tap met with a busy console, is added;
//! - the **caller**: the time spent inside each `record` call (the record built before the
//!   clock starts), summed over the calls. A call is far shorter than a scheduler time slice,
//!   so on a busy machine this is its CPU time up to a rare preemption (an upper bound).
//!
//! Printed as `audit paced: ...` lines, each followed by the budget's verdict (`audit budget:
//! PASS|FAIL`, 5 µs per record in all), with the latency of `record_durable` (what a response
//! carrying buyer PII waits for), p50/p99/max.
//!
//! Variables: `AUDIT_BENCH_RATES` (default `1000 5000`), `AUDIT_BENCH_SECONDS` (per rate,
//! default 5), `AUDIT_BENCH_TAP=0` (no console tap), `AUDIT_BENCH_PACED_ONLY=1` (only the paced CPU figures: no criterion benches, no
//! durable latencies; what `bench/audit_profile.sh` runs under callgrind).
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
    if paced_only() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), "calls");
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

/// The id of a thread of this process named `name` that is not in `known` (a new thread names
/// itself once it runs: waits for that, up to 2 s).
fn new_thread_named(name: &str, known: &[String]) -> String {
    for _ in 0..200 {
        if let Some(t) = threads_named(name).into_iter().find(|t| !known.contains(t)) {
            return t;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no new thread named {name}");
}

/// The ids of this process's threads named `name` (as `/proc/self/task/*/comm` shows it).
fn threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A thread's CPU time so far, in ns (`schedstat`'s first field: time on CPU).
fn thread_cpu_ns(tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("schedstat of the audit writer thread")
}

fn config(dir: &std::path::Path, instance: &str) -> AuditConfig {
    AuditConfig {
        dir: dir.to_path_buf(),
        instance: instance.into(),
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

/// The audit path's CPU at a paced rate, in ns.
struct PacedCpu {
    records: u64,
    /// The writer thread's CPU time.
    writer_ns: u64,
    /// The console statistics' counting thread's CPU time (the tap), if attached.
    tap_ns: Option<u64>,
    /// Time inside the `record` calls.
    caller_ns: u64,
}

/// The request path's side of a record, on its own (so that a profile can name it).
#[inline(never)]
fn record_one(auditor: &Auditor, r: Record) {
    auditor.record(r);
}

/// Records `rate` a second for `seconds` (async records from a paced thread) into a fresh
/// chain, and measures the writer thread's and the callers' CPU.
fn paced_cpu(rate: u64, seconds: u64) -> PacedCpu {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // The thread's name is `audit-<instance>`: 15 characters at most in `comm`.
    let instance = format!("p{rate}");
    let name = format!("audit-{instance}");
    let known = threads_named(&name);
    let auditor = Auditor::start(&config(dir.path(), &instance)).expect("start");
    let writer = new_thread_named(&name, &known);
    // As the gateway with its web console (`spgate demo`, `serve` with `[admin.console]`): every
    // record passes the console statistics' tap.
    let tap = tap_on().then(|| {
        let before = threads_named("console-stats");
        let stats = std::sync::Arc::new(spgate::admin::console::stats::Stats::new());
        auditor.set_tap(spgate::admin::console::stats::feed(
            stats,
            spgate::admin::console::stats::TAP_QUEUE,
        ));
        new_thread_named("console-stats", &before)
    });
    // The writer's start (opening the chain, its first records) is not the records' cost.
    rt.block_on(auditor.flush());
    std::thread::sleep(Duration::from_millis(20));
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let writer0 = thread_cpu_ns(&writer);
    let tap0 = tap.as_deref().map(thread_cpu_ns);
    let mut caller_ns = 0u64;
    let start = Instant::now();
    let records = rate * seconds;
    for i in 0..records {
        let due = start + interval * (i as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = request(i);
        let t = Instant::now();
        record_one(&auditor, black_box(r));
        caller_ns += t.elapsed().as_nanos() as u64;
    }
    // Everything recorded is written (the writer's CPU for the last window included), and
    // the writer back asleep before its time is read.
    rt.block_on(auditor.flush());
    std::thread::sleep(Duration::from_millis(20));
    let writer_ns = thread_cpu_ns(&writer) - writer0;
    let tap_ns = tap
        .as_deref()
        .zip(tap0)
        .map(|(t, t0)| thread_cpu_ns(t) - t0);
    rt.block_on(auditor.shutdown());
    assert_eq!(auditor.metrics().lost, 0, "records lost");
    PacedCpu {
        records,
        writer_ns,
        tap_ns,
        caller_ns,
    }
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
        let auditor = Auditor::start(&config(dir.path(), "durable")).expect("start");
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

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tap_on() -> bool {
    std::env::var("AUDIT_BENCH_TAP").map_or(true, |v| v != "0")
}

fn paced_only() -> bool {
    std::env::var("AUDIT_BENCH_PACED_ONLY").is_ok_and(|v| v == "1")
}

/// The budget: the audit path's CPU per request, in µs.
const BUDGET_US: f64 = 5.0;

fn paced(_: &mut Criterion) {
    let seconds = env_or("AUDIT_BENCH_SECONDS", 5u64).max(1);
    let rates: Vec<u64> = std::env::var("AUDIT_BENCH_RATES")
        .unwrap_or_else(|_| "1000 5000".into())
        .split_whitespace()
        .filter_map(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .collect();
    for rate in rates {
        let cpu = paced_cpu(rate, seconds);
        let per = |ns: u64| ns as f64 / cpu.records as f64 / 1000.0;
        let tap = cpu.tap_ns.map_or("no console tap".to_string(), |t| {
            format!("console tap thread {:.2}", per(t))
        });
        let total = per(cpu.writer_ns + cpu.tap_ns.unwrap_or(0) + cpu.caller_ns);
        eprintln!(
            "audit paced: {rate} records/s: {total:.2} us CPU per record (writer thread {:.2}, {tap}, caller {:.2} per record call), {} records",
            per(cpu.writer_ns),
            per(cpu.caller_ns),
            cpu.records,
        );
        eprintln!(
            "audit budget: {rate} records/s: {} ({total:.2} us per record, budget {BUDGET_US:.2} us)",
            if total <= BUDGET_US { "PASS" } else { "FAIL" },
        );
        if paced_only() {
            continue;
        }
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
