//! [`Auditor`]: the handle the request path and the admin listener record through, and the
//! writer thread behind it.
//!
//! `record` only boxes the record and puts it on a bounded queue (no I/O, no serialization, no
//! lock shared with other callers beyond the queue's). `record_durable` does the same and waits
//! until the record has been handed to the kernel (for responses carrying buyer PII and for
//! admin and security actions): a SIGKILL after the answer cannot lose it.
//!
//! A dedicated thread takes records off the queue ([`super::queue`]) in batches, stamps them
//! with its clock, appends them to the chain, evaluates the alert rules, and writes the batch to
//! the OS in one `write(2)`. Ordinary records wait for the write window (`write_delay_ms`,
//! default 50 ms, from the first record queued, or from the previous write while records flow)
//! without waking the writer: at 1,000 req/s a wake-up costs more CPU than the records it
//! writes. A durable record, a flush or a shutdown wakes it, and the batch (group commit) is
//! written ~1 ms later with every record that joined it; so does a half-full queue. The head file moves lazily (with each fsync, at most once a second, and
//! at shutdown), never per batch.
//!
//! **When the queue is full** the caller blocks until the writer makes room (counted in
//! `spgate_audit_records_blocked_total`). **When a write fails** (disk full, read-only) the
//! batch is rolled back, its durable callers are told (their responses become 503), the
//! auditor turns unavailable (readiness 503, `spgate_audit_unavailable` 1, an error log and a
//! webhook alert), and the lost records are counted. The writer retries every 100 ms; the first
//! write that succeeds starts with a `gap` record (count and time span of what was lost), and
//! the auditor is available again. A process that stopped abruptly leaves a `gap` record too
//! (`abrupt_stop`, count unknown), written when the chain is resumed.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::alerts::{Alerts, Webhook};
use super::chain::{ChainError, ChainWriter};
use super::config::{AuditConfig, FsyncPolicy, OnFailure};
use super::queue::{Queue, Urgency};
use super::record::{Kind, Reason, Record, Stamp};

/// Where the writer's time comes from (tests inject a manual clock to rotate and expire files
/// without waiting).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to (for tests and benches of the writer).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<std::sync::Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: OffsetDateTime) -> ManualClock {
        ManualClock(Arc::new(std::sync::Mutex::new(at)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the audit log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The chain could not be opened.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The writer thread could not be started.
    #[error("could not start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditMetrics {
    /// Records appended to the chain (including the writer's own and alerts).
    pub written: u64,
    /// `record` calls that had to wait for room in the queue.
    pub blocked: u64,
    /// Records that could not be written (writer stopped, or a write error).
    pub lost: u64,
    /// Failed writes, flushes, syncs or retention passes.
    pub write_errors: u64,
    /// Alerts raised, by rule: reveals, seller denials, denial bursts, new PII categories.
    pub alerts: [u64; 4],
    /// Webhook posts that failed, timed out or were skipped.
    pub webhook_failures: u64,
    /// Audit files deleted by retention.
    pub files_expired: u64,
    /// `gap` records written.
    pub gaps: u64,
    /// Whether the log cannot be written right now.
    pub unavailable: bool,
}

/// A record could not be written (the log is failing or stopped): the caller must not answer
/// as if it had been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot be written")]
pub struct Unrecorded;

/// The rule names, in the order of [`AuditMetrics::alerts`].
pub const ALERT_RULES: [&str; 4] = [
    "reveals_per_tool_per_hour",
    "seller_denials",
    "denial_burst",
    "new_pii_category",
];

/// Told to a durable caller: whether its record was handed to the kernel.
type Ack = tokio::sync::oneshot::Sender<bool>;

enum Msg {
    Record(Box<Record>, Option<Ack>),
    Flush(Ack),
    /// Write everything, close the chain, tell the caller (none: every handle is gone).
    Shutdown(Option<tokio::sync::oneshot::Sender<()>>),
}

impl Counters {
    /// The writer thread is gone (it panicked): the log is stopped and failing, so readiness
    /// is 503 and requests are refused by `on_failure`. The queue is closed; the records still
    /// in it are counted as lost (their durable callers are told), as is every one after.
    fn writer_died(&self, queue: &Queue<Msg>) {
        self.stopped.store(true, Ordering::Relaxed);
        let mut left = VecDeque::new();
        queue.close(&mut left);
        let lost = left.iter().filter(|m| matches!(m, Msg::Record(..))).count() as u64;
        self.lost.fetch_add(lost, Ordering::Relaxed);
        self.unrecorded.fetch_add(lost, Ordering::Relaxed);
        drop(left);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                lost,
                "The audit writer thread died: nothing more can be recorded; the gateway refuses."
            );
        }
    }
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    blocked: AtomicU64,
    lost: AtomicU64,
    write_errors: AtomicU64,
    alerts: [AtomicU64; 4],
    webhook_failures: Arc<AtomicU64>,
    files_expired: AtomicU64,
    gaps: AtomicU64,
    /// Lost records not yet covered by a written `gap` record.
    unrecorded: AtomicU64,
    failing: AtomicBool,
    stopped: AtomicBool,
    /// The shutdown drain is cutting requests (their records say `shutdown`).
    draining: AtomicBool,
}

struct Inner {
    /// The queue to the writer thread (none when the log is off).
    queue: Option<Arc<Queue<Msg>>>,
    noise: Arc<super::noise::Noise>,
    instance: String,
    on_failure: OnFailure,
    counters: Arc<Counters>,
    /// Sees every record as it is queued (the admin console's live statistics).
    tap: std::sync::OnceLock<Tap>,
}

impl Drop for Inner {
    /// Every handle is gone without a shutdown: the writer writes what it has and stops.
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            let _ = queue.push(Msg::Shutdown(None), Urgency::Control);
        }
    }
}

/// A function that sees every record as it is queued.
pub type Tap = Arc<dyn Fn(&Record) + Send + Sync>;

/// The audit log's handle: cheap to clone, `record` never does I/O.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

// === impl Auditor ===

impl Auditor {
    /// Opens this instance's chain (taking its lock) and starts the writer thread. Call from
    /// within a tokio runtime when alerts have a webhook (posts run on it).
    pub fn start(config: &AuditConfig) -> Result<Auditor, AuditError> {
        Auditor::start_with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`Auditor::start`], but waits while another process writes the chain (command-line
    /// actions: parallel commands take turns on one chain instead of failing).
    pub fn start_waiting(config: &AuditConfig) -> Result<Auditor, AuditError> {
        let chain = ChainWriter::open_waiting(&config.dir, &config.instance, config.key.expose())?;
        Auditor::start_chain(config, chain, Arc::new(SystemClock))
    }

    /// Like [`Auditor::start`], with the writer's clock injected.
    pub fn start_with_clock(
        config: &AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Auditor, AuditError> {
        let chain = ChainWriter::open(&config.dir, &config.instance, config.key.expose())?;
        Auditor::start_chain(config, chain, clock)
    }

    fn start_chain(
        config: &AuditConfig,
        chain: ChainWriter,
        clock: Arc<dyn Clock>,
    ) -> Result<Auditor, AuditError> {
        let counters = Arc::new(Counters::default());
        let webhook = config.alerts.webhook.as_ref().and_then(|url| {
            let runtime = tokio::runtime::Handle::try_current().ok();
            if runtime.is_none() {
                tracing::warn!("No async runtime: audit alerts will not be posted to the webhook.");
            }
            Webhook::new(
                url,
                config.alerts.webhook_timeout,
                runtime?,
                counters.webhook_failures.clone(),
            )
        });
        let seen_file = config.dir.join(format!("audit-{}.seen", config.instance));
        let alerts = Alerts::new(
            config.alerts.clone(),
            Some((seen_file, config.key.expose().as_slice())),
        );
        let queue = Arc::new(Queue::new(config.queue_capacity, BATCH));
        let noise = Arc::new(super::noise::Noise::new());
        let mut writer = Writer {
            chain,
            queue: queue.clone(),
            window: config.write_delay,
            clock,
            fsync: config.fsync,
            retain_days: config.retain_days,
            alerts,
            webhook,
            counters: counters.clone(),
            last_sync: Instant::now(),
            unsynced: false,
            retention_day: None,
            gap: None,
            gap_in_batch: false,
            since_head: 0,
            acks: Vec::new(),
            noise: noise.clone(),
            last_sweep: Instant::now(),
            instance: config.instance.clone(),
        };
        writer.started();
        std::thread::Builder::new()
            .name(format!("audit-{}", config.instance))
            .spawn({
                let counters = counters.clone();
                let queue = queue.clone();
                move || {
                    // A writer that dies must not leave the gateway serving without a log.
                    let run = std::panic::AssertUnwindSafe(move || writer.run());
                    if std::panic::catch_unwind(run).is_err() {
                        counters.writer_died(&queue);
                    }
                }
            })
            .map_err(AuditError::Thread)?;
        Ok(Auditor {
            inner: Arc::new(Inner {
                queue: Some(queue),
                noise,
                instance: config.instance.clone(),
                on_failure: config.on_failure,
                counters,
                tap: std::sync::OnceLock::new(),
            }),
        })
    }

    /// An auditor that records nothing (no `[audit]` section configured).
    pub fn disabled() -> Auditor {
        Auditor {
            inner: Arc::new(Inner {
                queue: None,
                noise: Arc::new(super::noise::Noise::new()),
                instance: String::new(),
                on_failure: OnFailure::Refuse,
                counters: Arc::new(Counters::default()),
                tap: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// The instance whose chain this writes.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Queues a record. Blocks only while the queue is full (see the module docs).
    pub fn record(&self, record: Record) {
        self.enqueue(record, None);
    }

    /// Queues a record and waits until it has been handed to the kernel (group commit with the
    /// other records of a ~1 ms batch). `Err` when it could not be written: the caller must not
    /// answer as if it had been (a disabled auditor always succeeds).
    pub async fn record_durable(&self, record: Record) -> Result<(), Unrecorded> {
        if self.inner.queue.is_none() {
            return Ok(());
        }
        let (ack, done) = tokio::sync::oneshot::channel();
        if !self.enqueue(record, Some(ack)) {
            return Err(Unrecorded);
        }
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(Unrecorded),
        }
    }

    /// Lets `tap` see every record from now on (one tap per auditor: false if one is set).
    pub fn set_tap(&self, tap: Tap) -> bool {
        self.inner.tap.set(tap).is_ok()
    }

    /// Returns false if the record was lost (the writer stopped: counted, and a durable
    /// caller is told).
    fn enqueue(&self, record: Record, ack: Option<Ack>) -> bool {
        let Some(queue) = &self.inner.queue else {
            return true;
        };
        if let Some(tap) = self.inner.tap.get() {
            tap(&record);
        }
        let c = &self.inner.counters;
        let urgency = if ack.is_some() {
            Urgency::Waited
        } else {
            Urgency::Lazy
        };
        match queue.push(Msg::Record(Box::new(record), ack), urgency) {
            Ok(waited) => {
                if waited {
                    c.blocked.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            // Dropped with its ack: a durable caller hears it was not written.
            Err(_) => {
                c.lost.fetch_add(1, Ordering::Relaxed);
                c.unrecorded.fetch_add(1, Ordering::Relaxed);
                tracing::error!("An audit record was lost: the audit writer has stopped.");
                false
            }
        }
    }

    /// Queues a flush or the shutdown (never waits for room); false when the writer has
    /// stopped.
    fn control(&self, msg: Msg) -> bool {
        self.inner
            .queue
            .as_ref()
            .is_some_and(|q| q.push(msg, Urgency::Control).is_ok())
    }

    /// Requests refused before authentication: aggregated per address and minute (see
    /// [`super::noise`]).
    pub fn noise(&self) -> &super::noise::Noise {
        &self.inner.noise
    }

    /// Whether records can be written right now (false while writes fail, or after
    /// shutdown). The request path refuses by [`Auditor::on_failure`] while this is false.
    pub fn available(&self) -> bool {
        self.healthy()
    }

    /// What the gateway does while the log cannot be written.
    pub fn on_failure(&self) -> OnFailure {
        self.inner.on_failure
    }

    /// Marks the shutdown drain as cutting requests: records of requests ended from now on
    /// say `shutdown`.
    pub fn begin_drain_cut(&self) {
        self.inner.counters.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the shutdown drain is cutting requests.
    pub fn draining(&self) -> bool {
        self.inner.counters.draining.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before this call is written through to the OS, and
    /// runs the writer's daily duties (retention) if the day changed.
    pub async fn flush(&self) {
        let _ = self.flushed().await;
    }

    /// Like [`Auditor::flush`], and says whether every record queued before the call was
    /// written (`Err` when a write failed since and no gap record has reported it yet). An
    /// admin or security action answers only after this (a disabled auditor always succeeds).
    pub async fn flushed(&self) -> Result<(), Unrecorded> {
        if self.inner.queue.is_none() {
            return Ok(());
        }
        let (ack, done) = tokio::sync::oneshot::channel();
        if !self.control(Msg::Flush(ack)) {
            return Err(Unrecorded);
        }
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(Unrecorded),
        }
    }

    /// A mark of the records lost so far, for [`Auditor::flushed_since`].
    pub fn lost_mark(&self) -> u64 {
        self.inner.counters.lost.load(Ordering::Relaxed)
    }

    /// Like [`Auditor::flushed`], and `Err` as well when any record was lost since `mark`
    /// (taken before the action recorded anything), even if a gap record has reported it
    /// since: an admin or security action is confirmed only when its own records are written.
    pub async fn flushed_since(&self, mark: u64) -> Result<(), Unrecorded> {
        self.flushed().await?;
        if self.lost_mark() == mark {
            Ok(())
        } else {
            Err(Unrecorded)
        }
    }

    /// Writes an `audit_stopped` record, writes and fsyncs everything queued, and stops the
    /// writer (records after this are counted as lost). Call on SIGTERM after draining.
    /// Returns how many records were lost without a `gap` record to say so (0: the log is
    /// complete); `serve` exits non-zero when it is not.
    pub async fn shutdown(&self) -> u64 {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        if self.control(Msg::Shutdown(Some(done_tx))) {
            // The writer answers once everything before it is written and the chain released.
            let _ = done.await;
        }
        self.inner.counters.unrecorded.load(Ordering::Relaxed)
    }

    /// Whether the writer is running and its last write succeeded (for readiness).
    pub fn healthy(&self) -> bool {
        let c = &self.inner.counters;
        self.inner.queue.is_none()
            || (!c.failing.load(Ordering::Relaxed) && !c.stopped.load(Ordering::Relaxed))
    }

    /// The counters.
    pub fn metrics(&self) -> AuditMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditMetrics {
            written: get(&c.written),
            blocked: get(&c.blocked),
            lost: get(&c.lost),
            write_errors: get(&c.write_errors),
            alerts: [
                get(&c.alerts[0]),
                get(&c.alerts[1]),
                get(&c.alerts[2]),
                get(&c.alerts[3]),
            ],
            webhook_failures: get(&c.webhook_failures),
            files_expired: get(&c.files_expired),
            gaps: get(&c.gaps),
            unavailable: self.inner.queue.is_some() && !self.healthy(),
        }
    }

    /// Appends the audit counters to a Prometheus text exposition.
    pub fn render_metrics(&self, out: &mut String) {
        let m = self.metrics();
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v| [(String::new(), v)];
        counter(
            "spgate_audit_records_written_total",
            "Audit records appended to this instance's chain.",
            &one(m.written),
        );
        counter(
            "spgate_audit_records_blocked_total",
            "Audit records whose caller waited for room in the full queue.",
            &one(m.blocked),
        );
        counter(
            "spgate_audit_records_lost_total",
            "Audit records that could not be written.",
            &one(m.lost),
        );
        counter(
            "spgate_audit_write_errors_total",
            "Failed audit writes, syncs or retention passes.",
            &one(m.write_errors),
        );
        let alerts: Vec<(String, u64)> = ALERT_RULES
            .iter()
            .zip(m.alerts)
            .map(|(rule, v)| (format!("{{rule=\"{rule}\"}}"), v))
            .collect();
        counter(
            "spgate_audit_alerts_total",
            "Audit alerts raised, by rule.",
            &alerts,
        );
        counter(
            "spgate_audit_webhook_failures_total",
            "Alert webhook posts that failed, timed out or were skipped.",
            &one(m.webhook_failures),
        );
        counter(
            "spgate_audit_files_expired_total",
            "Audit chain files deleted after their retention.",
            &one(m.files_expired),
        );
        counter(
            "spgate_audit_gaps_total",
            "Gap records written (records lost, with count and span).",
            &one(m.gaps),
        );
        let _ = writeln!(
            out,
            "# HELP spgate_audit_unavailable 1 while the audit log cannot be written (requests refused by audit.on_failure).\n# TYPE spgate_audit_unavailable gauge\nspgate_audit_unavailable {}",
            u8::from(m.unavailable)
        );
    }
}

// === the writer thread ===

/// Records taken off the queue per batch (one write-through per batch).
const BATCH: usize = 4096;

/// How long the writer lingers after it is woken for a waited-for record, for others to join
/// its write (group commit).
const LINGER: Duration = Duration::from_millis(1);

/// How often the writer retries while writes fail.
const RETRY: Duration = Duration::from_millis(100);

/// How often aggregated unauthenticated requests are looked at (written after a minute).
const SWEEP: Duration = Duration::from_secs(10);

/// How often the head moves at most without an fsync.
const HEAD_INTERVAL: Duration = Duration::from_secs(1);

/// The head moves at the latest after this many bytes written, whatever the time, so that
/// recovery's window (8 MiB from the end of the file) always reaches it.
const HEAD_BYTES: usize = 1024 * 1024;

/// Records lost and not yet reported in the chain.
struct PendingGap {
    count: u64,
    from: OffsetDateTime,
    to: OffsetDateTime,
}

struct Writer {
    chain: ChainWriter,
    queue: Arc<Queue<Msg>>,
    /// How long an ordinary record may wait to be written (`write_delay_ms`): SIGKILL loses
    /// at most about this much of them (an `abrupt_stop` gap on restart). Longer means fewer
    /// wake-ups per record, whose CPU is most of the audit's cost at 1,000 req/s.
    window: Duration,
    clock: Arc<dyn Clock>,
    fsync: FsyncPolicy,
    retain_days: u32,
    alerts: Alerts,
    webhook: Option<Webhook>,
    counters: Arc<Counters>,
    last_sync: Instant,
    unsynced: bool,
    retention_day: Option<time::Date>,
    gap: Option<PendingGap>,
    /// Whether the pending gap's record is in the batch being built.
    gap_in_batch: bool,
    /// Bytes written since the head last moved.
    since_head: usize,
    noise: Arc<super::noise::Noise>,
    last_sweep: Instant,
    /// Durable callers of the batch being written.
    acks: Vec<Ack>,
    instance: String,
}

fn stamp(at: OffsetDateTime) -> Stamp {
    Stamp::lossy(&super::query::record_time(at))
}

impl Writer {
    fn started(&mut self) {
        let mut r = Record::new(Kind::AuditStarted);
        if self.chain.recovered() > 0 {
            r.reason = Some(Reason::RECOVERED);
            r.count = Some(self.chain.recovered());
        }
        if let Some(last) = self.chain.abrupt_stop().map(str::to_string) {
            // Records the previous process had queued but not written are unknown: say so.
            let mut g = Record::new(Kind::Gap).with_reason(Reason::from_static("abrupt_stop"));
            g.gap_from = Some(Stamp::lossy(&last));
            g.gap_to = Some(stamp(self.clock.now()));
            tracing::warn!(
                since = %last,
                "The previous process stopped without closing its audit chain: a gap record marks the span."
            );
            self.append(&g);
            self.counters.gaps.fetch_add(1, Ordering::Relaxed);
        }
        self.append(&r);
        self.housekeeping();
        self.end_batch();
        // A head from the start: a chain with files and no head cannot be resumed.
        if let Err(e) = self.chain.move_head(true) {
            self.failed(&e);
        }
    }

    fn run(mut self) {
        let mut taken = VecDeque::new();
        // While records flow, the time of the last write: the next window starts there, so
        // that senders of ordinary records never wake the writer.
        let mut flowing = None;
        loop {
            self.queue.wait_take(
                &mut taken,
                self.window,
                flowing,
                self.idle_timeout(),
                LINGER,
            );
            let mut waiting = Vec::new();
            let mut records = 0usize;
            while let Some(msg) = taken.pop_front() {
                match msg {
                    Msg::Record(r, ack) => {
                        records += 1;
                        self.take(&r, ack);
                    }
                    Msg::Flush(done) => waiting.push(done),
                    Msg::Shutdown(done) => {
                        self.stop(&mut taken, waiting, done);
                        return;
                    }
                }
            }
            self.housekeeping();
            if self.last_sweep.elapsed() >= SWEEP {
                self.last_sweep = Instant::now();
                for r in self.noise.take(false) {
                    self.write_record(&r);
                }
            }
            // Every round writes what it took: one write(2) per wake-up.
            self.end_batch();
            for w in waiting {
                let _ = w.send(self.gap.is_none());
            }
            flowing = (records > 0).then(Instant::now);
        }
    }

    /// How long the writer sleeps with nothing queued: until the next retry, fsync or head
    /// move, or the next look at the unauthenticated counts.
    fn idle_timeout(&self) -> Duration {
        if self.gap.is_some() {
            return RETRY;
        }
        match self.fsync {
            FsyncPolicy::Interval(i) if self.unsynced => i.saturating_sub(self.last_sync.elapsed()),
            _ if self.unsynced => HEAD_INTERVAL,
            _ => SWEEP,
        }
    }

    /// Shuts down: closes the queue (a record queued from now on is counted as lost), writes
    /// every message left in `rest` and still queued, the unauthenticated counts and
    /// `audit_stopped`, syncs, releases the chain (and its lock), then answers the flushes and
    /// the shutdown's caller.
    fn stop(
        mut self,
        rest: &mut VecDeque<Msg>,
        mut waiting: Vec<Ack>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        self.counters.stopped.store(true, Ordering::Relaxed);
        self.queue.close(rest);
        let mut shutdowns = vec![done];
        while let Some(msg) = rest.pop_front() {
            match msg {
                Msg::Record(r, ack) => self.take(&r, ack),
                Msg::Flush(w) => waiting.push(w),
                Msg::Shutdown(w) => shutdowns.push(w),
            }
        }
        for r in self.noise.take(true) {
            self.write_record(&r);
        }
        self.append(&Record::new(Kind::AuditStopped));
        self.end_batch();
        if self.gap.is_none() {
            if let Err(e) = self.chain.sync() {
                self.failed(&e);
            }
        }
        let complete = self.gap.is_none();
        // The chain (and its lock) is released before anyone hears back.
        drop(self);
        for w in waiting {
            let _ = w.send(complete);
        }
        for done in shutdowns.into_iter().flatten() {
            let _ = done.send(());
        }
    }

    fn failed(&self, e: &ChainError) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        let was = self.counters.failing.swap(true, Ordering::Relaxed);
        tracing::error!(error = %e, "Audit log write failed.");
        if !was {
            tracing::error!(
                instance = %self.instance,
                "The audit log cannot be written: requests are refused (audit.on_failure) until it can."
            );
            if let Some(w) = &self.webhook {
                let body = serde_json::json!({
                    "rule": "audit_unavailable",
                    "instance": self.instance,
                    "time": super::query::record_time(self.clock.now()),
                });
                w.send(serde_json::to_vec(&body).unwrap_or_default());
            }
        }
    }

    /// Appends one record to the batch being built (no I/O, except when the day changes and
    /// the batch so far is written to the previous day's file). False if it was lost.
    fn append(&mut self, r: &Record) -> bool {
        let now = self.clock.now();
        self.append_at(r, now)
    }

    /// [`Writer::append`] stamped `now`.
    fn append_at(&mut self, r: &Record, now: OffsetDateTime) -> bool {
        // A pending gap is reported in the batch that reports anything after it.
        self.append_gap();
        match self.chain.append_record(now, r) {
            Ok(_) => true,
            Err(e @ ChainError::NotAnObject) => {
                self.lose(1, &e);
                false
            }
            Err(e) => {
                // The batch so far could not be written to the previous day's file.
                self.gap_in_batch = false;
                let rolled = self.chain.roll_back_count();
                self.lose(rolled + 1, &e);
                false
            }
        }
    }

    /// Counts records as lost (reported by the next `gap` record) and fails the waiting
    /// durable callers.
    fn lose(&mut self, lost: u64, e: &ChainError) {
        let now = self.clock.now();
        let gap = self.gap.get_or_insert(PendingGap {
            count: 0,
            from: now,
            to: now,
        });
        gap.count += lost;
        gap.to = now;
        self.counters.lost.fetch_add(lost, Ordering::Relaxed);
        self.counters.unrecorded.fetch_add(lost, Ordering::Relaxed);
        // Unavailable before a durable caller hears of it (it may look at readiness next).
        self.failed(e);
        for ack in self.acks.drain(..) {
            let _ = ack.send(false);
        }
    }

    /// One record off the queue, with its durable caller.
    fn take(&mut self, r: &Record, ack: Option<Ack>) {
        let appended = self.write_record(r);
        match ack {
            Some(ack) if appended => self.acks.push(ack),
            Some(ack) => {
                let _ = ack.send(false);
            }
            None => {}
        }
    }

    fn gap_record(&self) -> Option<Record> {
        let gap = self.gap.as_ref()?;
        let mut g = Record::new(Kind::Gap).with_reason(Reason::from_static("write_failed"));
        g.count = Some(gap.count);
        g.gap_from = Some(stamp(gap.from));
        g.gap_to = Some(stamp(gap.to));
        Some(g)
    }

    /// Appends the pending gap's record to the batch unless it is already in it.
    fn append_gap(&mut self) {
        if self.gap_in_batch {
            return;
        }
        if let Some(g) = self.gap_record() {
            self.gap_in_batch = self.chain.append_record(self.clock.now(), &g).is_ok();
        }
    }

    fn write_record(&mut self, r: &Record) -> bool {
        // One clock read per record: its time in the chain and for the alert windows.
        let now = self.clock.now();
        if !self.append_at(r, now) {
            return false;
        }
        for alert in self.alerts.observe(r, now) {
            let i = ALERT_RULES
                .iter()
                .position(|n| *n == alert.rule.as_str())
                .unwrap_or(0);
            self.counters.alerts[i].fetch_add(1, Ordering::Relaxed);
            alert.emit();
            self.append(&alert.to_record());
            if let Some(w) = &self.webhook {
                w.send(alert.webhook_body(self.chain.instance(), now));
            }
        }
        true
    }

    /// Writes the batch through in one write, tells its durable callers, fsyncs by policy and
    /// moves the head lazily. On failure the batch becomes (part of) a gap.
    fn end_batch(&mut self) {
        // Nothing else to write: probe with the gap record alone.
        self.append_gap();
        let had_gap = std::mem::take(&mut self.gap_in_batch);
        let batch_bytes = self.chain.unwritten_bytes();
        match self.chain.write_through() {
            Ok(n) => {
                self.since_head += batch_bytes;
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                if let Some(gap) = self.gap.take() {
                    self.counters.gaps.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .unrecorded
                        .fetch_sub(gap.count, Ordering::Relaxed);
                    tracing::warn!(
                        lost = gap.count,
                        "The audit log writes again; a gap record reports the records lost."
                    );
                }
                if self.counters.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("The audit log is writable again.");
                }
                for ack in self.acks.drain(..) {
                    let _ = ack.send(true);
                }
                self.unsynced |= n > 0;
            }
            Err(e) => {
                let rolled = self.chain.roll_back_count();
                self.lose(rolled.saturating_sub(u64::from(had_gap)), &e);
                return;
            }
        }
        let sync = match self.fsync {
            FsyncPolicy::Never => false,
            FsyncPolicy::Always => self.unsynced,
            FsyncPolicy::Interval(i) => self.unsynced && self.last_sync.elapsed() >= i,
        };
        let result = if sync {
            self.chain.sync_written()
        } else if self.unsynced
            && (self.last_sync.elapsed() >= HEAD_INTERVAL || self.since_head >= HEAD_BYTES)
        {
            self.chain.move_head(false)
        } else {
            return;
        };
        match result {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.since_head = 0;
            }
            Err(e) => self.failed(&e),
        }
    }

    /// At start and whenever the day changes: retention.
    fn housekeeping(&mut self) {
        let today = self.clock.now().date();
        if self.retention_day == Some(today) {
            return;
        }
        self.retention_day = Some(today);
        match self.chain.expire(today, self.retain_days) {
            Ok(e) if e.files > 0 => {
                self.counters
                    .files_expired
                    .fetch_add(e.files as u64, Ordering::Relaxed);
                tracing::info!(files = e.files, "Audit files past their retention deleted.");
                let mut r = Record::new(Kind::AuditRetention);
                r.count = Some(e.files as u64);
                self.append(&r);
            }
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
