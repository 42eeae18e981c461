//! The writer under faults that do not fail cleanly: a disk that stalls (a chain file that is
//! a FIFO nobody reads: `open(2)` blocks, as a hung `write(2)` would), an fsync that fails on
//! every call (a FIFO read by the test: writes succeed, `fsync` answers EINVAL), and a writer
//! thread that panics with a batch in hand.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::audit::config::AlertRules;
use crate::secret::Secret;

const KEY: &[u8] = b"synthetic-audit-key-0123456789abcdef";

/// Long enough for anything that is going to happen; only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        dir: dir.to_path_buf(),
        instance: "gw1".into(),
        key: Secret::new(KEY.to_vec()),
        retain_days: 365,
        fsync: FsyncPolicy::Never,
        queue_capacity: 4,
        write_delay: Duration::from_millis(5),
        full_wait: Duration::from_millis(50),
        stall_timeout: Duration::from_millis(300),
        on_failure: OnFailure::Refuse,
        alerts: AlertRules::default(),
    }
}

/// Makes the chain file of 2026-01-02 a FIFO.
fn fifo_for_day_two(dir: &Path) -> PathBuf {
    let path = dir.join("audit-gw1-2026-01-02.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    path
}

/// Reads `fifo` to its end (the writer closing it) on a thread of its own.
fn drain(fifo: PathBuf) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    std::thread::spawn(move || {
        let mut text = String::new();
        std::fs::File::open(fifo)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    })
}

/// Calls `record` on a thread of its own and says whether it returned within [`HANG`].
fn record_returns(auditor: &Auditor, r: Record) -> bool {
    let (tx, rx) = mpsc::channel();
    let a = auditor.clone();
    std::thread::spawn(move || {
        a.record(r);
        let _ = tx.send(());
    });
    rx.recv_timeout(HANG).is_ok()
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + HANG;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// H1: a writer stuck in I/O fills the queue. A record then awaits room for its bounded time
/// and is refused (counted as waiting before it waits, lost, and in the next gap record); the
/// auditor turns unavailable at once, the watchdog marks the stall, a durable caller stops
/// waiting, and everything recovers when the writer progresses again.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_blocks_no_caller_and_the_refused_records_become_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let auditor = Auditor::start_with_clock(&config(dir.path()), Arc::new(clock.clone())).unwrap();
    auditor
        .record_durable(Record::new(Kind::Reload).with_actor("ops-alice"))
        .await
        .unwrap();
    let fifo = fifo_for_day_two(dir.path());
    clock.advance(time::Duration::days(1));
    // The writer takes this record and blocks opening the day's file.
    auditor.record(Record::request("in-hand"));
    let health = auditor.inner.counters.health.clone();
    until("the writer holds the record", || {
        health.in_hand.load(Ordering::Relaxed) == 1
    })
    .await;
    let durable = tokio::spawn({
        let a = auditor.clone();
        async move { a.record_durable(Record::request("durable")).await }
    });
    let queue = auditor.inner.queue.clone().unwrap();
    until("the durable record is queued", || queue.len() == 1).await;
    for i in 0..3 {
        auditor.record(Record::request(&format!("queued-{i}")));
    }
    // The queue is full: this caller awaits room at most full_wait, then its record is refused.
    tokio::time::timeout(HANG, auditor.record_async(Record::request("refused-0")))
        .await
        .expect("the wait is bounded");
    let m = auditor.metrics();
    assert_eq!((m.blocked, m.refused, m.lost), (1, 1, 1));
    assert!(!auditor.available() && !auditor.healthy() && m.unavailable);
    // The next ones do not wait again: neither one that could, nor one that cannot.
    auditor.record_async(Record::request("refused-1")).await;
    assert!(record_returns(&auditor, Record::request("refused-2")));
    let m = auditor.metrics();
    assert_eq!((m.blocked, m.refused, m.lost), (1, 3, 3));
    // The watchdog finds the writer stalled; the durable caller hears "not written".
    let told = tokio::time::timeout(HANG, durable).await.unwrap().unwrap();
    assert_eq!(told, Err(Unrecorded));
    until("the stall is marked", || auditor.metrics().stalled).await;
    assert_eq!(auditor.metrics().durable_timeouts, 1);

    // The disk moves again: the writer writes what it held, then the gap record.
    let lines = drain(fifo);
    until("the log is available again", || auditor.available()).await;
    let m = auditor.metrics();
    assert!(!m.stalled && !m.unavailable, "{m:?}");
    let unrecorded = auditor.shutdown().await;
    let lines = lines.join().unwrap();
    // The gap record reported the loss; a FIFO cannot be fsynced, so the shutdown's sync fails
    // and every record written to it is not known to be on disk (review M-c).
    assert_eq!(unrecorded, lines.len() as u64, "{lines:?}");
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["in-hand", "durable", "queued-0", "queued-1", "queued-2"]
    );
    let gaps: Vec<_> = lines.iter().filter(|l| l["kind"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{lines:?}");
    assert_eq!(
        (gaps[0]["reason"].as_str(), gaps[0]["count"].as_u64()),
        (Some("queue_full"), Some(3))
    );
    assert_eq!(auditor.metrics().gaps, 1);
}

/// H1 at shutdown: a writer that stays stalled is not waited for forever; what it holds and
/// what is queued are counted as lost, so `serve` exits non-zero. A writer that recovers
/// later writes what it held, then a `gap` record for the queued records the shutdown dropped,
/// then `audit_stopped` (review M3b: before, nothing in the chain said they were missing).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_forever_for_a_stalled_writer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let auditor = Auditor::start_with_clock(&config(dir.path()), Arc::new(clock.clone())).unwrap();
    let fifo = fifo_for_day_two(dir.path());
    clock.advance(time::Duration::days(1));
    auditor.record(Record::request("in-hand"));
    let health = auditor.inner.counters.health.clone();
    until("the writer holds the record", || {
        health.in_hand.load(Ordering::Relaxed) == 1
    })
    .await;
    auditor.record(Record::request("queued"));
    let unrecorded = tokio::time::timeout(HANG, auditor.shutdown())
        .await
        .expect("shutdown returned");
    // The record in hand, the queued one, and audit_stopped.
    assert_eq!(unrecorded, 3);
    assert_eq!(auditor.metrics().lost, 3);
    // The disk moves again before the process exits.
    let lines = drain(fifo).join().unwrap();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["request", "gap", "audit_stopped"], "{lines:?}");
    assert_eq!(lines[0]["request_id"], "in-hand");
    assert_eq!(
        (lines[1]["reason"].as_str(), lines[1]["count"].as_u64()),
        (Some("writer_stalled"), Some(1))
    );
    assert_eq!(auditor.metrics().gaps, 1);
}

/// A writer held (the fault hook) with one record in hand, and the queue filled behind it.
async fn held_with_full_queue(auditor: &Auditor) -> WriterHold {
    let hold = auditor.hold_writer();
    auditor.record_urgent(Record::request("held"));
    let health = auditor.inner.counters.health.clone();
    let deadline = std::time::Instant::now() + HANG;
    // Real time: the writer thread takes the record (paused tokio time would not wait).
    while health.in_hand.load(Ordering::Relaxed) != 1 {
        assert!(std::time::Instant::now() < deadline, "never held");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..4 {
        auditor.record(Record::request(&format!("queued-{i}")));
    }
    assert_eq!(auditor.metrics().refused, 0);
    hold
}

/// Yields until `check` holds (other tasks on this runtime thread run meanwhile).
async fn yield_until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if check() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never: {what}");
}

/// Review M1: records awaiting room in a full queue hold no runtime thread. On a runtime of
/// one thread, three request-path records await room together while the test's own task
/// goes on; the auditor is unavailable from the first look at the full queue (before anyone
/// waits); once the writer moves, all three get in, none is lost. (With the wait a thread
/// sleep, the first waiter took the only thread for `full_wait_ms` and all three were refused.)
#[tokio::test(flavor = "current_thread")]
async fn records_awaiting_room_hold_no_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.full_wait = Duration::from_secs(10);
    cfg.stall_timeout = Duration::from_secs(600);
    let auditor = Auditor::start(&cfg).unwrap();
    let hold = held_with_full_queue(&auditor).await;
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let a = auditor.clone();
            tokio::spawn(async move { a.record_async(Record::request(&format!("w-{i}"))).await })
        })
        .collect();
    yield_until("three records await room", || {
        auditor.metrics().blocked == 3
    })
    .await;
    let m = auditor.metrics();
    assert_eq!((m.refused, m.lost), (0, 0), "{m:?}");
    assert!(
        m.unavailable && !auditor.available(),
        "unavailable before the wait ends"
    );
    assert!(waiters.iter().all(|w| !w.is_finished()));
    drop(hold);
    for w in waiters {
        tokio::time::timeout(HANG, w).await.unwrap().unwrap();
    }
    auditor.flush().await;
    let m = auditor.metrics();
    assert_eq!((m.blocked, m.refused, m.lost), (3, 0, 0), "{m:?}");
    assert_eq!(auditor.shutdown().await, 0);
}

/// Review M1: one full-queue episode, one deadline. A record that finds the queue full
/// starts the episode (`full_wait_ms`); one that comes later in the episode waits only until
/// the same deadline, not a `full_wait_ms` of its own; after it, records are refused at once,
/// and a record from code that cannot await (`record`) never waits. All refused records are
/// in the gap written when the writer moves again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn records_in_one_full_queue_episode_share_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.full_wait = Duration::from_secs(10);
    cfg.stall_timeout = Duration::from_secs(600);
    let auditor = Auditor::start(&cfg).unwrap();
    let hold = held_with_full_queue(&auditor).await;
    let spawn = |id: &'static str| {
        let a = auditor.clone();
        tokio::spawn(async move { a.record_async(Record::request(id)).await })
    };
    let first = spawn("first");
    yield_until("the first awaits room", || auditor.metrics().blocked == 1).await;
    tokio::time::advance(Duration::from_secs(6)).await;
    let second = spawn("second");
    yield_until("the second awaits room", || auditor.metrics().blocked == 2).await;
    // The episode's deadline passes (the second has waited 5 of its own 10 s).
    tokio::time::advance(Duration::from_secs(5)).await;
    yield_until("both gave up", || {
        first.is_finished() && second.is_finished()
    })
    .await;
    assert_eq!(auditor.metrics().refused, 2);
    // After the deadline: refused at once, awaiting or not.
    auditor.record_async(Record::request("late")).await;
    auditor.record(Record::request("sync"));
    let m = auditor.metrics();
    assert_eq!((m.blocked, m.refused, m.lost), (2, 4, 4), "{m:?}");
    drop(hold);
    let deadline = std::time::Instant::now() + HANG;
    while !auditor.available() {
        assert!(
            std::time::Instant::now() < deadline,
            "never available again"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(auditor.shutdown().await, 0, "the gap reported them");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            text += &std::fs::read_to_string(path).unwrap();
        }
    }
    let gaps: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "gap")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0]["reason"].as_str(), gaps[0]["count"].as_u64()),
        (Some("queue_full"), Some(4))
    );
}

/// Review L1: a durable answer that became 503 (the writer stalled) is not recorded as
/// delivered. The record still queued when its caller stopped waiting is written as what the
/// client got (503, `answer_withheld`, no PII); the one the writer had in hand is written as it
/// was, followed by a note with its request id saying the answer was withheld; one whose
/// caller was dropped while it waited (the client went away) says the client got nothing.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_durable_answer_is_not_recorded_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 64;
    // Long enough for the test to drop one caller before the stall is marked.
    cfg.stall_timeout = Duration::from_secs(2);
    let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock.clone())).unwrap();
    let fifo = fifo_for_day_two(dir.path());
    clock.advance(time::Duration::days(1));
    let pii_answer = |id: &str| {
        let mut r = Record::request(id).with_status(200);
        r.outcome = Some(crate::audit::Outcome::Answered);
        r.pii = vec![crate::audit::PiiUse {
            category: crate::pii::Category::Name,
            action: crate::pii::Action::Pass,
        }];
        r
    };
    let durable = |r: Record| {
        let a = auditor.clone();
        tokio::spawn(async move { a.record_durable(r).await })
    };
    // The writer takes this one and blocks opening the day's file.
    let taken = durable(pii_answer("taken"));
    let health = auditor.inner.counters.health.clone();
    until("the writer holds the record", || {
        health.in_hand.load(Ordering::Relaxed) == 1
    })
    .await;
    let queued = durable(pii_answer("queued"));
    let gone = durable(pii_answer("gone"));
    let queue = auditor.inner.queue.clone().unwrap();
    until("both are queued", || queue.len() == 2).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    // The watchdog finds the writer stalled: both callers answer 503.
    assert_eq!(taken.await.unwrap(), Err(Unrecorded));
    assert_eq!(queued.await.unwrap(), Err(Unrecorded));
    let lines = drain(fifo);
    auditor.shutdown().await;
    let lines = lines.join().unwrap();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["request_id"] == id).collect()
    };
    let withheld = |l: &serde_json::Value| {
        l["status"] == 503 && l["reason"] == "answer_withheld" && l.get("pii").is_none()
    };
    let queued = of("queued");
    assert_eq!(queued.len(), 1, "{lines:?}");
    assert!(withheld(queued[0]), "{:?}", queued[0]);
    let gone = of("gone");
    assert_eq!(gone.len(), 1, "{lines:?}");
    assert!(
        gone[0]["outcome"] == "client_closed"
            && gone[0].get("status").is_none()
            && gone[0]["reason"] == "answer_withheld"
            && gone[0].get("pii").is_none(),
        "{:?}",
        gone[0]
    );
    let taken = of("taken");
    assert_eq!(taken.len(), 2, "{lines:?}");
    assert_eq!(taken[0]["status"], 200, "written as it was taken");
    assert!(withheld(taken[1]), "then the note: {:?}", taken[1]);
}

/// A clock that panics when told to: the writer thread dies in the middle of a batch.
struct PanickingClock {
    inner: ManualClock,
    panic: Arc<AtomicBool>,
}

impl Clock for PanickingClock {
    fn now(&self) -> OffsetDateTime {
        assert!(
            !self.panic.load(Ordering::Relaxed),
            "the test makes the writer panic"
        );
        self.inner.now()
    }
}

/// M1: a writer that panics loses the batch in its hand as well as the queue; both are counted,
/// and the shutdown reports them (and `audit_stopped`, which it cannot write): non-zero exit.
#[tokio::test]
async fn a_writer_that_dies_counts_the_batch_in_its_hand() {
    let dir = tempfile::tempdir().unwrap();
    let panic = Arc::new(AtomicBool::new(false));
    let clock = PanickingClock {
        inner: ManualClock::new(datetime!(2026-01-01 10:00 UTC)),
        panic: panic.clone(),
    };
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 64;
    let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock)).unwrap();
    auditor
        .record_durable(Record::request("written"))
        .await
        .unwrap();
    panic.store(true, Ordering::Relaxed);
    for i in 0..3 {
        auditor.record(Record::request(&format!("in-hand-{i}")));
    }
    // Taken in one batch with the three: the writer panics on the first of them.
    assert_eq!(
        auditor.record_durable(Record::request("durable")).await,
        Err(Unrecorded)
    );
    // (Not `healthy()`: the watchdog may find the writer stalled while its panic is reported.)
    until("the writer is gone", || {
        auditor.inner.counters.stopped.load(Ordering::Relaxed)
    })
    .await;
    assert!(!auditor.healthy());
    assert_eq!(auditor.metrics().lost, 4);
    assert_eq!(auditor.shutdown().await, 5);
    assert_eq!(auditor.metrics().lost, 5);
    // Asked again, the same answer: nothing is counted twice.
    assert_eq!(auditor.shutdown().await, 5);
}

/// M3: an fsync that fails on every call. Durable callers are told their records are not
/// written (with `fsync = "always"` they hear after the sync), the failures are counted, the
/// log stays unavailable through writes that succeed (no flapping), and the retries back off
/// instead of spinning.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_is_counted_backs_off_and_keeps_the_log_unavailable() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(Duration::from_millis(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
        let mut cfg = config(dir.path());
        cfg.fsync = fsync;
        cfg.queue_capacity = 64;
        let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock.clone())).unwrap();
        let lines = drain(fifo_for_day_two(dir.path()));
        clock.advance(time::Duration::days(1));
        let first = auditor.record_durable(Record::request("first")).await;
        if fsync == FsyncPolicy::Always {
            assert_eq!(first, Err(Unrecorded), "synced before the answer");
        }
        until("the sync failed", || auditor.metrics().sync_failures > 0).await;
        // Writes go on succeeding; the log stays unavailable and durable records are refused.
        for i in 0..20 {
            auditor.record(Record::request(&format!("lazy-{i}")));
            assert_eq!(auditor.flushed().await, Err(Unrecorded), "{fsync:?}");
            assert!(!auditor.available(), "{fsync:?} round {i}");
        }
        assert_eq!(
            auditor.record_durable(Record::request("later")).await,
            Err(Unrecorded)
        );
        // Idle for a second: the retries back off (100 ms, doubling), no spinning.
        let before = auditor.metrics().sync_failures;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = auditor.metrics();
        assert!(
            m.sync_failures - before <= 6,
            "{fsync:?}: {} fsyncs in a second",
            m.sync_failures - before
        );
        assert!(m.unavailable && m.write_errors >= m.sync_failures);
        auditor.shutdown().await;
        let lines = lines.join().unwrap();
        assert!(lines.iter().any(|l| l["request_id"] == "later"), "written");
    }
}

/// An auditor with `fsync = "always"` on `dir` that writes a durable record, then one (`id`)
/// whose fsync fails (its caller hears "not written"), and whose retry succeeds.
async fn sync_fails_once(dir: &Path, id: &str) -> Auditor {
    let mut cfg = config(dir);
    cfg.fsync = FsyncPolicy::Always;
    cfg.queue_capacity = 64;
    let auditor = Auditor::start(&cfg).unwrap();
    auditor
        .record_durable(Record::request("synced"))
        .await
        .unwrap();
    crate::audit::chain::fault::fail_syncs(dir, 1);
    assert_eq!(
        auditor.record_durable(Record::request(id)).await,
        Err(Unrecorded)
    );
    until("a sync succeeds again", || auditor.available()).await;
    auditor
}

/// Review M2 ("fsyncgate"): after a failed fsync the records written since the last good one
/// may be missing on disk though the next fsync succeeds (the fault hook zeroes them). The
/// writer writes them again before it trusts a sync: the chain verifies whole, without a gap;
/// the durable caller of the failed sync heard "not written", and the log is available again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_a_failed_fsync_are_written_again_and_the_chain_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = sync_fails_once(dir.path(), "lost-on-disk").await;
    auditor
        .record_durable(Record::request("after"))
        .await
        .unwrap();
    assert_eq!(auditor.shutdown().await, 0);
    let m = auditor.metrics();
    assert_eq!((m.sync_failures, m.gaps, m.lost), (1, 0, 0));
    let report = crate::audit::chain::verify(dir.path(), KEY).unwrap();
    assert_eq!(report[0].first_bad, None, "{report:?}");
    assert!(report[0].gaps.is_empty(), "{report:?}");
    let text = std::fs::read_to_string(dir.path().join(format!(
        "audit-gw1-{}.jsonl",
        OffsetDateTime::now_utc().date()
    )))
    .unwrap();
    for id in ["synced", "lost-on-disk", "after"] {
        assert!(text.contains(&format!("\"request_id\":\"{id}\"")), "{id}");
    }
}

/// M2, the fallback: records whose bytes were no longer kept when an fsync failed cannot be
/// written again; once a sync succeeds a `gap` record (reason `sync_failed`) reports them, and
/// the shutdown counts nothing unreported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_longer_kept_at_a_failed_fsync_become_a_sync_failed_gap() {
    let dir = tempfile::tempdir().unwrap();
    crate::audit::chain::fault::keep_at_most(dir.path(), 1);
    let auditor = sync_fails_once(dir.path(), "unkept").await;
    assert_eq!(auditor.shutdown().await, 0, "the gap record reported them");
    assert_eq!(auditor.metrics().gaps, 1);
    // What the disk lost was not written again: `verify` names the damaged spot (and stops
    // there); the gap record after it says why.
    let report = crate::audit::chain::verify(dir.path(), KEY).unwrap();
    assert!(report[0].first_bad.is_some(), "{report:?}");
    let text = std::fs::read(dir.path().join(format!(
        "audit-gw1-{}.jsonl",
        OffsetDateTime::now_utc().date()
    )))
    .unwrap();
    let gaps: Vec<serde_json::Value> = text
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(without_leading_zeros(l)).ok())
        .filter(|l: &serde_json::Value| l["kind"] == "gap")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0]["reason"].as_str(), gaps[0]["count"].as_u64()),
        (Some("sync_failed"), Some(1))
    );
}

/// The line without the zeros a lost page left before it.
fn without_leading_zeros(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|b| *b != 0).unwrap_or(line.len());
    &line[start..]
}

/// A day's records, a failed rollover into day two (`fail`, `heal` undo it), then records of day
/// two: while the rollover fails no gap is counted as written and the log stays unavailable;
/// once it heals the gap record is written and the shutdown exits clean.
async fn rollover_fails(dir: &Path, fail: impl Fn(), heal: impl Fn()) -> Auditor {
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let mut cfg = config(dir);
    cfg.queue_capacity = 64;
    let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock.clone())).unwrap();
    auditor.record(Record::request("day-one"));
    auditor.flushed().await.unwrap();
    fail();
    clock.advance(time::Duration::days(1));
    for i in 0..5 {
        auditor.record(Record::request(&format!("day-two-{i}")));
        assert_eq!(auditor.flushed().await, Err(Unrecorded));
        let m = auditor.metrics();
        assert!(
            !auditor.available(),
            "round {i}: available with a gap unwritten"
        );
        assert_eq!(m.gaps, 0, "round {i}: a gap counted that was never written");
        assert!(m.lost > 0, "round {i}: {m:?}");
    }
    heal();
    until("the gap is written", || auditor.metrics().gaps == 1).await;
    until("available again", || auditor.available()).await;
    auditor.record(Record::request("after"));
    assert_eq!(auditor.shutdown().await, 0);
    let report = crate::audit::chain::verify(dir, KEY).unwrap();
    assert_eq!(report[0].first_bad, None, "{report:?}");
    let text = std::fs::read_to_string(dir.join("audit-gw1-2026-01-02.jsonl")).unwrap();
    let gap: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["kind"] == "gap")
        .expect("a gap record in day two");
    assert_eq!(gap["count"].as_u64(), Some(auditor.metrics().lost));
    assert!(text.contains("\"request_id\":\"after\""));
    auditor
}

/// Review H1: the fsync of the previous day's file fails at the rollover. It is a sync failure
/// (counted, backed off); the gap stays pending until a rollover succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_whose_fsync_fails_keeps_its_gap_and_the_log_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let auditor = rollover_fails(
        dir.path(),
        || crate::audit::chain::fault::fail_syncs(&d, u32::MAX),
        || crate::audit::chain::fault::fail_syncs(&d, 0),
    )
    .await;
    assert!(auditor.metrics().sync_failures > 0);
}

/// Review H1: the new day's file cannot be opened (here: a directory stands in its place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_that_cannot_open_the_new_file_keeps_its_gap_and_the_log_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let day_two = dir.path().join("audit-gw1-2026-01-02.jsonl");
    rollover_fails(
        dir.path(),
        || std::fs::create_dir(&day_two).unwrap(),
        || std::fs::remove_dir(&day_two).unwrap(),
    )
    .await;
}

/// Review M-a: a durable record written through by a day rollover whose fsync then fails is in
/// the chain, not known durable: its caller answers 503 and the note saying so follows it
/// (before, the failed rollover told it "not written" and the writer's failing flag made the
/// caller skip the note, so the chain showed the answer as delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_record_written_by_a_failed_rollover_gets_its_withheld_note() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(datetime!(2026-01-01 10:00 UTC));
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 64;
    let auditor = Auditor::start_with_clock(&cfg, Arc::new(clock.clone())).unwrap();
    // The day changes as the writer takes "trigger": after "durable", in the same batch.
    let day_two = clock.clone();
    assert!(auditor.set_tap(Arc::new(move |r: &Record| {
        if r.request_id.as_ref().map(|i| i.as_str()) == Some("trigger") {
            day_two.advance(time::Duration::days(1));
        }
    })));
    let hold = held_with_full_queue(&auditor).await;
    let durable = {
        let a = auditor.clone();
        tokio::spawn(async move { a.record_durable(Record::request("durable")).await })
    };
    let queue = auditor.inner.queue.clone().unwrap();
    until("queued", || queue.len() == 5).await;
    auditor.record_urgent(Record::request("trigger"));
    crate::audit::chain::fault::fail_syncs(dir.path(), 1);
    drop(hold);
    assert_eq!(durable.await.unwrap(), Err(Unrecorded));
    until("the gap is written", || auditor.metrics().gaps == 1).await;
    auditor.shutdown().await;
    let text = std::fs::read_to_string(dir.path().join("audit-gw1-2026-01-01.jsonl")).unwrap()
        + &std::fs::read_to_string(dir.path().join("audit-gw1-2026-01-02.jsonl")).unwrap();
    let of: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["request_id"] == "durable")
        .collect();
    assert_eq!(of.len(), 2, "the record, then its note: {of:?}");
    assert_eq!(of[1]["reason"], "answer_withheld", "{of:?}");
}
