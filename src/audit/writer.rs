//! [`Auditor`]: the handle the request path and the admin listener record through, and the
//! writer thread behind it.
//!
//! `record` only boxes the record and puts it on a bounded queue (no I/O, no serialization, no
//! lock shared with other callers beyond the queue's). A dedicated thread takes records off the
//! queue in batches, stamps them with its clock, appends them to the chain, evaluates the alert
//! rules, writes each batch through to the OS and moves the head, fsyncs by policy, and once a
//! day (and at start) deletes chain files past their retention.
//!
//! **When the queue is full** the caller blocks until the writer makes room: an audit log that
//! cannot keep up slows the gateway down rather than losing records (counted in
//! `spgate_audit_records_blocked_total`). Records are lost only if the writer has stopped (after
//! `shutdown`, or a panic): counted in `spgate_audit_records_lost_total` and logged. A write
//! error (disk full) is counted and logged, and makes [`Auditor::healthy`] false until a write
//! succeeds again.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::alerts::{Alerts, Webhook};
use super::chain::{ChainError, ChainWriter};
use super::config::{AuditConfig, FsyncPolicy};
use super::record::{Kind, Reason, Record};

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
}

/// The rule names, in the order of [`AuditMetrics::alerts`].
pub const ALERT_RULES: [&str; 4] = [
    "reveals_per_tool_per_hour",
    "seller_denials",
    "denial_burst",
    "new_pii_category",
];

enum Msg {
    Record(Box<Record>),
    Flush(tokio::sync::oneshot::Sender<()>),
    Shutdown(tokio::sync::oneshot::Sender<()>),
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
    failing: AtomicBool,
    stopped: AtomicBool,
}

struct Inner {
    tx: Option<SyncSender<Msg>>,
    instance: String,
    counters: Arc<Counters>,
}

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

    /// Like [`Auditor::start`], with the writer's clock injected.
    pub fn start_with_clock(
        config: &AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Auditor, AuditError> {
        let chain = ChainWriter::open(&config.dir, &config.instance, config.key.expose())?;
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
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let mut writer = Writer {
            chain,
            rx,
            clock,
            fsync: config.fsync,
            retain_days: config.retain_days,
            alerts,
            webhook,
            counters: counters.clone(),
            last_sync: Instant::now(),
            unsynced: false,
            retention_day: None,
        };
        writer.started();
        std::thread::Builder::new()
            .name(format!("audit-{}", config.instance))
            .spawn(move || writer.run())
            .map_err(AuditError::Thread)?;
        Ok(Auditor {
            inner: Arc::new(Inner {
                tx: Some(tx),
                instance: config.instance.clone(),
                counters,
            }),
        })
    }

    /// An auditor that records nothing (no `[audit]` section configured).
    pub fn disabled() -> Auditor {
        Auditor {
            inner: Arc::new(Inner {
                tx: None,
                instance: String::new(),
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.inner.tx.is_some()
    }

    /// The instance whose chain this writes.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Queues a record. Blocks only while the queue is full (see the module docs).
    pub fn record(&self, record: Record) {
        let Some(tx) = &self.inner.tx else {
            return;
        };
        let c = &self.inner.counters;
        let msg = Msg::Record(Box::new(record));
        let lost = c.stopped.load(Ordering::Relaxed)
            || match tx.try_send(msg) {
                Ok(()) => false,
                Err(TrySendError::Full(msg)) => {
                    c.blocked.fetch_add(1, Ordering::Relaxed);
                    tx.send(msg).is_err()
                }
                Err(TrySendError::Disconnected(_)) => true,
            };
        if lost {
            c.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!("An audit record was lost: the audit writer has stopped.");
        }
    }

    async fn ask(&self, make: impl FnOnce(tokio::sync::oneshot::Sender<()>) -> Msg) {
        let Some(tx) = self.inner.tx.clone() else {
            return;
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let msg = make(done_tx);
        // `send` may block while the queue is full: not on a runtime worker.
        let sent = tokio::task::spawn_blocking(move || tx.send(msg).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = done_rx.await;
        }
    }

    /// Waits until every record queued before this call is written through to the OS, and
    /// runs the writer's daily duties (retention) if the day changed.
    pub async fn flush(&self) {
        self.ask(Msg::Flush).await;
    }

    /// Writes an `audit_stopped` record, writes and fsyncs everything queued, and stops the
    /// writer (records after this are counted as lost). Call on SIGTERM after draining.
    pub async fn shutdown(&self) {
        if self.inner.counters.stopped.load(Ordering::Relaxed) {
            return;
        }
        self.ask(Msg::Shutdown).await;
    }

    /// Whether the writer is running and its last write succeeded (for readiness).
    pub fn healthy(&self) -> bool {
        let c = &self.inner.counters;
        self.inner.tx.is_none()
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
    }
}

// === the writer thread ===

/// Records taken off the queue per batch (one write-through and head move per batch).
const BATCH: usize = 4096;

struct Writer {
    chain: ChainWriter,
    rx: mpsc::Receiver<Msg>,
    clock: Arc<dyn Clock>,
    fsync: FsyncPolicy,
    retain_days: u32,
    alerts: Alerts,
    webhook: Option<Webhook>,
    counters: Arc<Counters>,
    last_sync: Instant,
    unsynced: bool,
    retention_day: Option<time::Date>,
}

impl Writer {
    fn started(&mut self) {
        let mut r = Record::new(Kind::AuditStarted);
        if self.chain.recovered() > 0 {
            r.reason = Some(Reason::RECOVERED);
            r.count = Some(self.chain.recovered());
        }
        self.write(&r);
        self.housekeeping();
        self.end_batch();
    }

    fn run(mut self) {
        loop {
            let timeout = match self.fsync {
                FsyncPolicy::Interval(i) if self.unsynced => {
                    i.saturating_sub(self.last_sync.elapsed())
                }
                _ => Duration::from_secs(60),
            };
            let first = match self.rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle dropped without shutdown: write through what we have.
                    self.stop(None);
                    return;
                }
            };
            let mut waiting = Vec::new();
            let mut shutdown = None;
            let mut next = first;
            let mut taken = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => self.write_record(&r),
                    Msg::Flush(done) => waiting.push(done),
                    Msg::Shutdown(done) => {
                        shutdown = Some(done);
                        break;
                    }
                }
                taken += 1;
                if taken < BATCH {
                    next = self.rx.try_recv().ok();
                }
            }
            if let Some(done) = shutdown {
                for w in waiting {
                    let _ = w.send(());
                }
                self.stop(Some(done));
                return;
            }
            self.housekeeping();
            self.end_batch();
            for w in waiting {
                let _ = w.send(());
            }
        }
    }

    fn stop(&mut self, done: Option<tokio::sync::oneshot::Sender<()>>) {
        self.counters.stopped.store(true, Ordering::Relaxed);
        // Records queued behind the shutdown request are still written.
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Record(r) => self.write_record(&r),
                Msg::Flush(w) | Msg::Shutdown(w) => {
                    let _ = w.send(());
                }
            }
        }
        self.write(&Record::new(Kind::AuditStopped));
        if let Err(e) = self.chain.sync() {
            self.failed(&e);
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn failed(&self, e: &ChainError) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        self.counters.failing.store(true, Ordering::Relaxed);
        tracing::error!(error = %e, "Audit log write failed.");
    }

    /// Appends one record; false if it could not be written.
    fn write(&mut self, r: &Record) -> bool {
        match self.chain.append(self.clock.now(), r) {
            Ok(_) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                self.unsynced = true;
                true
            }
            Err(e) => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                self.failed(&e);
                false
            }
        }
    }

    fn write_record(&mut self, r: &Record) {
        self.write(r);
        let now = self.clock.now();
        for alert in self.alerts.observe(r, now) {
            let i = ALERT_RULES
                .iter()
                .position(|n| *n == alert.rule.as_str())
                .unwrap_or(0);
            self.counters.alerts[i].fetch_add(1, Ordering::Relaxed);
            alert.emit();
            self.write(&alert.to_record());
            if let Some(w) = &self.webhook {
                w.send(alert.webhook_body(self.chain.instance(), now));
            }
        }
    }

    /// Writes the batch through, moves the head, and fsyncs by policy.
    fn end_batch(&mut self) {
        let sync = match self.fsync {
            FsyncPolicy::Never => false,
            FsyncPolicy::Always => self.unsynced,
            FsyncPolicy::Interval(i) => self.unsynced && self.last_sync.elapsed() >= i,
        };
        let result = if sync {
            self.chain.sync()
        } else {
            self.chain.flush()
        };
        match result {
            Ok(()) => {
                self.counters.failing.store(false, Ordering::Relaxed);
                if sync || self.fsync == FsyncPolicy::Never {
                    self.unsynced = false;
                    self.last_sync = Instant::now();
                }
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
                self.write(&r);
            }
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
