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
//! written ~1 ms later with every record that joined it; so does a half-full queue. The head file moves lazily (at most every 5 s, with an fsync when the
//! policy syncs; after 1 MiB; at each new day's file and at shutdown), never per batch.
//!
//! **When the queue is full** the auditor is unavailable at once (the gateway refuses new
//! requests by `on_failure`) until the writer writes with the queue less than half full. Async
//! callers (`record_async`, `record_durable`: the request path) await room without holding
//! their thread, all until one deadline, `full_wait_ms` after a record first found the queue
//! full (counted in `spgate_audit_records_blocked_total` before each waits); a record that gets
//! no room by then, or comes after it, is refused (counted lost and in
//! `spgate_audit_records_refused_total`, reported by the next `gap` record, reason
//! `queue_full`). Sync callers (`record`, `record_urgent`: a request's drop guard, a document
//! stream's end, the command line, callbacks) never wait on a runtime's thread: in a full queue
//! their record is refused at once, counted the same way (only a thread outside any runtime,
//! such as a benchmark's loop, waits for room like an async caller, blocking only itself).
//! **When the writer stalls** (work in
//! hand, no progress for `stall_timeout_ms`: a disk that hangs without failing) a watchdog
//! makes it unavailable until it progresses, and durable callers stop waiting (their answers
//! become 503: their records are not known to be written, and a record that is written later
//! says the answer was withheld, see [`Auditor::record_durable`]). See [`super::health`].
//! **When an fsync fails** it is counted (`spgate_audit_sync_failures_total`), retried with a
//! back-off, and the auditor stays unavailable until a sync succeeds; durable callers are told
//! their records are not written meanwhile (with `fsync = "always"` they hear only after the
//! sync). What was written since the last good fsync is written again before the next fsync
//! is trusted (a failed fsync may have lost it: see [`ChainWriter::sync_records`]); records
//! that could not be (more than 8 MiB) become a `gap` record (`sync_failed`) once a sync
//! succeeds; a failed fsync at shutdown counts what it could not vouch for as unrecorded. A
//! durable caller hears written, in the chain but not durable (it then records the
//! `answer_withheld` note), or rolled back. A day rollover that fails (the previous file's
//! fsync, handled as a failed fsync, or the new file's open) keeps its gap pending and the
//! auditor unavailable until a gap record is written. **When a write fails** (disk full, read-only) the
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
use super::health::Health;
use super::queue::{Queue, Refused, Urgency, Woken};
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
    /// Records whose caller awaited room in the full queue.
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
    /// Records refused for lack of room: the queue stayed full until the episode's deadline
    /// (`full_wait_ms`), or the caller could not wait (also in `lost`).
    pub refused: u64,
    /// Failed fsyncs (also in `write_errors`).
    pub sync_failures: u64,
    /// Durable callers told their record is not known to be written because the writer
    /// stalled.
    pub durable_timeouts: u64,
    /// Whether the writer has records in hand and made no progress for `stall_timeout_ms`.
    pub stalled: bool,
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

/// The writer's answer about a durable record (or a flush: `Written` when everything before it
/// is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Handed to the kernel (synced, with `fsync = "always"`).
    Written,
    /// In the chain, but not known to be durable (fsyncs fail): its caller answers as if not
    /// written, and a note in the chain says so.
    InChain,
    /// Not in the chain (its write failed and was rolled back, or it was never written): the
    /// gap record reports it.
    NotInChain,
}

impl Answer {
    /// A flush's answer: everything before it written, or not.
    fn all(written: bool) -> Answer {
        if written {
            Answer::Written
        } else {
            Answer::NotInChain
        }
    }
}

/// Told to a durable caller: whether its record was handed to the kernel. The id finds the
/// record in the queue again if its caller stops waiting (see [`Auditor::record_durable`]).
struct Ack {
    tx: tokio::sync::oneshot::Sender<Answer>,
    id: u64,
}

impl Ack {
    /// A flush's (or a shutdown's) answer, never looked for in the queue.
    fn control(tx: tokio::sync::oneshot::Sender<Answer>) -> Ack {
        Ack { tx, id: 0 }
    }

    /// Tells the caller (who may have stopped listening).
    fn send(self, answer: Answer) -> Result<(), Answer> {
        self.tx.send(answer)
    }
}

/// What a durable caller heard of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// Handed to the kernel (synced, with `fsync = "always"`).
    Written,
    /// The writer says it is not written: its write failed (it is not in the chain).
    NotWritten,
    /// The writer says it is in the chain but not known durable (fsyncs fail).
    InChain,
    /// Dropped unanswered (the writer died, or the shutdown gave up on it).
    Dropped,
    /// The writer stalled before it answered.
    Stalled,
}

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
        // Known dead before the queue refuses anything (a shutdown that finds it closed counts
        // `audit_stopped`), and every loss counted before it reads as stopped.
        self.died.store(true, Ordering::Relaxed);
        let mut left = VecDeque::new();
        queue.close(&mut left);
        // The batch it had in hand is lost with it, as is what was still queued.
        let in_hand = self.health.in_hand.swap(0, Ordering::Relaxed);
        let lost = left.iter().filter(|m| matches!(m, Msg::Record(..))).count() as u64 + in_hand;
        self.count_lost(lost);
        drop(left);
        self.stopped.store(true, Ordering::Relaxed);
        self.health.idle();
        self.health.finished.store(true, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                lost,
                "The audit writer thread died: nothing more can be recorded; the gateway refuses."
            );
        }
    }
}

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
    /// The last durable record's id ([`Ack::id`]).
    durable_ids: AtomicU64,
    failing: AtomicBool,
    stopped: AtomicBool,
    /// The shutdown drain is cutting requests (their records say `shutdown`).
    draining: AtomicBool,
    /// The writer thread panicked.
    died: AtomicBool,
    /// Progress, stalls, full queue, failing syncs.
    health: Arc<Health>,
    /// Sees every record the writer takes (the admin console's live statistics).
    tap: std::sync::OnceLock<Tap>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new(Health::new(
            Duration::from_millis(super::config::DEFAULT_FULL_WAIT_MS),
            Duration::from_millis(super::config::DEFAULT_STALL_TIMEOUT_MS),
        ))
    }
}

impl Counters {
    fn new(health: Health) -> Counters {
        Counters {
            written: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            alerts: Default::default(),
            webhook_failures: Arc::default(),
            files_expired: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
            durable_ids: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            died: AtomicBool::new(false),
            health: Arc::new(health),
            tap: std::sync::OnceLock::new(),
        }
    }

    /// Counts `n` records as lost and not yet reported by a gap record.
    fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
        self.unrecorded.fetch_add(n, Ordering::Relaxed);
    }
}

struct Inner {
    /// The queue to the writer thread (none when the log is off).
    queue: Option<Arc<Queue<Msg>>>,
    noise: Arc<super::noise::Noise>,
    instance: String,
    on_failure: OnFailure,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    /// Every handle is gone without a shutdown: the writer writes what it has and stops.
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            let _ = queue.push(Msg::Shutdown(None), Urgency::Control);
        }
    }
}

/// A record awaiting room in a full queue. Its sender dropped while it waits (a client that
/// went away) loses it: counted as refused, like one that got no room.
struct Pending<'a> {
    auditor: &'a Auditor,
    slot: Option<Msg>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.slot.take().is_some() {
            self.auditor.refused();
        }
    }
}

/// A durable caller waiting for its record's answer. Dropped while it waits (its client went
/// away), its record must not say the answer was delivered.
struct Awaiting<'a> {
    auditor: &'a Auditor,
    id: u64,
    note: Option<Record>,
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        if let Some(note) = self.note.take() {
            self.auditor
                .withhold(self.id, note, Record::withhold_from_gone_client);
        }
    }
}

/// The guard of [`Auditor::hold_writer`]: the writer goes on when it is dropped.
#[doc(hidden)]
pub struct WriterHold(Arc<Health>);

impl Drop for WriterHold {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A function that sees every record as the writer takes it (on the writer thread, off the
/// request path: it must never wait).
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
        let counters = Arc::new(Counters::new(Health::new(
            config.full_wait,
            config.stall_timeout,
        )));
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
            .map(Arc::new)
        });
        let seen_file = config.dir.join(format!("audit-{}.seen", config.instance));
        let alerts = Alerts::new(
            config.alerts.clone(),
            Some((seen_file, config.key.expose().as_slice())),
        );
        let queue = Arc::new(Queue::new(config.queue_capacity, BATCH));
        let noise = Arc::new(super::noise::Noise::new());
        let started_at = clock.now();
        let mut writer = Writer {
            chain,
            queue: queue.clone(),
            window: config.write_delay,
            clock,
            fsync: config.fsync,
            retain_days: config.retain_days,
            alerts,
            webhook: webhook.clone(),
            counters: counters.clone(),
            last_sync: Instant::now(),
            last_head: Instant::now(),
            unsynced: false,
            sync_backoff: Duration::ZERO,
            sync_retry_at: None,
            round_left: 0,
            // A gap before the first write spans from the start, not from 1970.
            last_write_at: started_at,
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
        super::health::spawn_watchdog(counters.health.clone(), webhook, config.instance.clone())
            .map_err(AuditError::Thread)?;
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
            .map_err(|e| {
                counters.health.finished.store(true, Ordering::Relaxed);
                AuditError::Thread(e)
            })?;
        Ok(Auditor {
            inner: Arc::new(Inner {
                queue: Some(queue),
                noise,
                instance: config.instance.clone(),
                on_failure: config.on_failure,
                counters,
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

    /// Queues a record. Never holds a runtime thread: on one, a record that finds the queue
    /// full is refused at once (counted lost and refused, reported by the next `gap` record,
    /// and the auditor turns unavailable). For code that cannot await: a request's drop guard,
    /// a document stream's end, callbacks, the command line. Async code calls
    /// [`Auditor::record_async`]. (A thread outside any runtime waits for room like an async
    /// caller, blocking only itself.)
    pub fn record(&self, record: Record) {
        self.enqueue(record, None, Urgency::Lazy);
    }

    /// Like [`Auditor::record`], and awaits room in a full queue (at most until the
    /// full-queue episode's deadline, `full_wait_ms` after a record first found it full)
    /// without holding its thread. For async code (the request path).
    pub async fn record_async(&self, record: Record) {
        self.enqueue_within(record, None, Urgency::Lazy).await;
    }

    /// Queues a record and wakes the writer at once (written ~1 ms later, not at the end of the
    /// write window), without waiting for it: for records that end something long, such as a
    /// document download, whose loss to a SIGKILL should be as unlikely as a durable one's.
    /// Never waits for room (like [`Auditor::record`]).
    pub fn record_urgent(&self, record: Record) {
        self.enqueue(record, None, Urgency::Waited);
    }

    /// Queues a record (awaiting room like [`Auditor::record_async`]) and waits until it has
    /// been handed to the kernel (group commit with the other records of a ~1 ms batch).
    /// `Err` when it could not be written: the caller must not answer as if it had been (it
    /// answers 503; a disabled auditor always succeeds).
    ///
    /// The record must not claim what the client did not get: when the caller stops waiting
    /// (the writer stalled, a write or sync failed) and its record is still queued, the record
    /// is rewritten to what the client got ([`Record::withhold`]: status 503, reason
    /// `answer_withheld`, no PII); if the writer had taken it already, a follow-up record with
    /// the same request id says so ([`Record::withheld_note`]).
    pub async fn record_durable(&self, record: Record) -> Result<(), Unrecorded> {
        if self.inner.queue.is_none() {
            return Ok(());
        }
        let (tx, done) = tokio::sync::oneshot::channel();
        let id = self
            .inner
            .counters
            .durable_ids
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let note = record.withheld_note();
        if !self
            .enqueue_within(record, Some(Ack { tx, id }), Urgency::Waited)
            .await
        {
            return Err(Unrecorded);
        }
        // Dropped before the answer (the client went away): the record says it got nothing.
        let mut awaiting = Awaiting {
            auditor: self,
            id,
            note: Some(note),
        };
        let told = self.told(done).await;
        let note = awaiting.note.take();
        // Possibly in the chain (or still queued) though its caller answers 503: a stalled
        // writer, or a write that went through while fsyncs fail (the writer says which). A
        // record whose write failed (rolled back) or that was dropped unwritten is not in the
        // chain: its gap reports it.
        let maybe_written = match told {
            Told::Written => return Ok(()),
            Told::Stalled | Told::InChain => true,
            Told::NotWritten | Told::Dropped => false,
        };
        if let (true, Some(note)) = (maybe_written, note) {
            self.withhold(id, note, Record::withhold);
        }
        Err(Unrecorded)
    }

    /// A durable caller stopped waiting (it answers 503, or its client went away): its record,
    /// if still queued, is rewritten by `how`; otherwise `note`, rewritten the same way,
    /// follows it.
    fn withhold(&self, id: u64, mut note: Record, how: fn(&mut Record)) {
        let Some(queue) = &self.inner.queue else {
            return;
        };
        let rewritten = queue.update_first(|m| match m {
            Msg::Record(r, Some(ack)) if ack.id == id => {
                how(r);
                true
            }
            _ => false,
        });
        how(&mut note);
        if !rewritten {
            // The original is written or in the writer's hand. The note never waits for room
            // (one per durable caller, like a control message) and skips the tap (a
            // correction, not another request).
            if queue
                .push(Msg::Record(Box::new(note), None), Urgency::Control)
                .is_err()
            {
                self.lost_closed();
            }
        }
    }

    /// Waits for the writer's answer to a durable record or a flush, unless the writer is
    /// found stalled first: then the record is not known to be written (it may be later: it
    /// is not counted lost), and the caller must not answer as if it were.
    async fn answer(&self, done: tokio::sync::oneshot::Receiver<Answer>) -> Result<(), Unrecorded> {
        match self.told(done).await {
            Told::Written => Ok(()),
            Told::NotWritten | Told::InChain | Told::Dropped | Told::Stalled => Err(Unrecorded),
        }
    }

    /// [`Auditor::answer`], saying why a record is not known to be written.
    async fn told(&self, done: tokio::sync::oneshot::Receiver<Answer>) -> Told {
        let health = &self.inner.counters.health;
        let stalled = health.stall_notified();
        tokio::pin!(stalled);
        stalled.as_mut().enable();
        let outcome = if health.stalled.load(Ordering::Relaxed) {
            None
        } else {
            tokio::select! {
                answer = done => Some(answer),
                () = stalled => None,
            }
        };
        match outcome {
            Some(Ok(Answer::Written)) => Told::Written,
            Some(Ok(Answer::InChain)) => Told::InChain,
            Some(Ok(Answer::NotInChain)) => Told::NotWritten,
            Some(Err(_)) => Told::Dropped,
            None => {
                health.durable_timeouts.fetch_add(1, Ordering::Relaxed);
                Told::Stalled
            }
        }
    }

    /// Lets `tap` see every record the writer takes from now on (one tap per auditor: false if
    /// one is set).
    pub fn set_tap(&self, tap: Tap) -> bool {
        self.inner.counters.tap.set(tap).is_ok()
    }

    /// Queues without holding a runtime thread: on a runtime's thread a record finding the
    /// queue full is refused at once; only a thread outside any runtime (a benchmark's loop, a
    /// test's sender thread) waits for room, until the episode's deadline. Returns false if
    /// the record was lost (the writer stopped, or no room: counted).
    fn enqueue(&self, record: Record, ack: Option<Ack>, urgency: Urgency) -> bool {
        let Some(queue) = &self.inner.queue else {
            return true;
        };
        let msg = match self.push_now(queue, record, ack, urgency) {
            Ok(queued) => return queued,
            Err(msg) => msg,
        };
        let until = self.found_full();
        let Some(until) = until.filter(|_| tokio::runtime::Handle::try_current().is_err()) else {
            self.refused();
            return false;
        };
        self.inner.counters.blocked.fetch_add(1, Ordering::Relaxed);
        self.settled(queue.push_blocking(msg, urgency, until.into_std()))
    }

    /// Queues, awaiting room in a full queue until the episode's deadline (the auditor is
    /// unavailable from the first look at a full queue, so new requests are refused while
    /// the records of those in flight wait). False if the record was lost (counted).
    async fn enqueue_within(&self, record: Record, ack: Option<Ack>, urgency: Urgency) -> bool {
        let Some(queue) = &self.inner.queue else {
            return true;
        };
        let msg = match self.push_now(queue, record, ack, urgency) {
            Ok(queued) => return queued,
            Err(msg) => msg,
        };
        let Some(until) = self.found_full() else {
            // This episode's wait is over: refused at once until the writer catches up.
            self.refused();
            return false;
        };
        // Counted before it waits.
        self.inner.counters.blocked.fetch_add(1, Ordering::Relaxed);
        let mut pending = Pending {
            auditor: self,
            slot: Some(msg),
        };
        let pushed = queue.push_within(&mut pending.slot, urgency, until).await;
        // Settled here: nothing left for the guard.
        pending.slot = None;
        self.settled(pushed)
    }

    /// One try without waiting: `Ok(queued)` when settled (false: the writer stopped,
    /// counted), the message back when the queue is full. Dropped with its ack when refused:
    /// a durable caller hears it was not written.
    fn push_now(
        &self,
        queue: &Queue<Msg>,
        record: Record,
        ack: Option<Ack>,
        urgency: Urgency,
    ) -> Result<bool, Msg> {
        match queue.push(Msg::Record(Box::new(record), ack), urgency) {
            Ok(()) => Ok(true),
            Err(Refused::Closed(_)) => {
                self.lost_closed();
                Ok(false)
            }
            Err(Refused::Full(msg)) => Err(msg),
        }
    }

    /// The end of a wait for room: queued, or lost (counted as the refusal says).
    fn settled<T, U>(&self, pushed: Result<T, Refused<U>>) -> bool {
        match pushed {
            Ok(_) => true,
            Err(Refused::Closed(_)) => {
                self.lost_closed();
                false
            }
            Err(Refused::Full(_)) => {
                self.refused();
                false
            }
        }
    }

    /// A sender found the queue full: the auditor is unavailable from now on (logged once
    /// per episode). Returns until when the sender may await room.
    fn found_full(&self) -> Option<tokio::time::Instant> {
        let h = &self.inner.counters.health;
        let (first, until) = h.found_full();
        if first {
            tracing::error!(
                instance = %self.inner.instance,
                wait_ms = h.full_wait.as_millis() as u64,
                "The audit queue is full: the gateway refuses requests (audit.on_failure) until the writer writes again; records wait at most wait_ms for room, then are refused and counted (a gap record will report them)."
            );
        }
        until
    }

    /// A record got no room: counted lost and refused, and reported by the writer's next gap
    /// record.
    fn refused(&self) {
        let c = &self.inner.counters;
        c.count_lost(1);
        c.health.refused.fetch_add(1, Ordering::Relaxed);
        c.health.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A record came after the writer stopped.
    fn lost_closed(&self) {
        self.inner.counters.count_lost(1);
        tracing::error!("An audit record was lost: the audit writer has stopped.");
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
        let (tx, done) = tokio::sync::oneshot::channel();
        if !self.control(Msg::Flush(Ack::control(tx))) {
            return Err(Unrecorded);
        }
        self.answer(done).await
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
    /// complete); `serve` exits non-zero when it is not. A writer that died cannot write
    /// `audit_stopped`: that record is lost too. A writer that stalls is not waited for: the
    /// records it holds and the ones still queued are counted as lost.
    pub async fn shutdown(&self) -> u64 {
        let c = &self.inner.counters;
        let (done_tx, done) = tokio::sync::oneshot::channel();
        if self.control(Msg::Shutdown(Some(done_tx))) {
            // The writer answers once everything before it is written and the chain released.
            let stalled = c.health.stall_notified();
            tokio::pin!(stalled);
            stalled.as_mut().enable();
            let answered = c.health.stalled.load(Ordering::Relaxed)
                || tokio::select! {
                    _ = done => true,
                    () = stalled => false,
                };
            if !answered {
                self.give_up_on_writer();
            }
        } else if c.died.swap(false, Ordering::Relaxed) {
            c.count_lost(1);
        }
        c.unrecorded.load(Ordering::Relaxed)
    }

    /// At shutdown, with the writer stalled: what it holds and what is queued will not be
    /// written before the process exits. Counted as lost. The queued records are dropped; a
    /// writer that recovers before the exit writes a `gap` record for them (reason
    /// `writer_stalled`) before `audit_stopped` (what it held it writes). If it never does,
    /// the chain ends without `audit_stopped` and the next start's `abrupt_stop` gap covers
    /// them (count unknown; the exit status counted them).
    fn give_up_on_writer(&self) {
        let c = &self.inner.counters;
        let mut left = VecDeque::new();
        let count = |left: &VecDeque<Msg>| {
            left.iter().filter(|m| matches!(m, Msg::Record(..))).count() as u64
        };
        if let Some(queue) = &self.inner.queue {
            // Told to the writer before it can find the queue closed and stop.
            queue.close_then(&mut left, |left| {
                c.health.abandoned.fetch_add(count(left), Ordering::Relaxed);
            });
        }
        let queued = count(&left);
        let lost = queued + c.health.in_hand.swap(0, Ordering::Relaxed) + 1;
        c.count_lost(lost);
        tracing::error!(
            lost,
            "The audit writer is stalled at shutdown: its records (and audit_stopped) are counted as lost."
        );
    }

    /// A fault hook for tests of a disk that stalls without failing: until the returned guard
    /// is dropped, the writer stops at the start of its next round with its batch in hand, as
    /// in a `write(2)` that hangs. Not for production use.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> WriterHold {
        let health = self.inner.counters.health.clone();
        health.hold();
        WriterHold(health)
    }

    /// Whether the writer is running and its last write succeeded (for readiness).
    pub fn healthy(&self) -> bool {
        let c = &self.inner.counters;
        self.inner.queue.is_none()
            || (!c.failing.load(Ordering::Relaxed)
                && !c.stopped.load(Ordering::Relaxed)
                && c.health.ok())
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
            refused: get(&c.health.refused),
            sync_failures: get(&c.health.sync_failures),
            durable_timeouts: get(&c.health.durable_timeouts),
            stalled: c.health.stalled.load(Ordering::Relaxed),
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
            "Audit records whose caller awaited room in the full queue.",
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
        counter(
            "spgate_audit_records_refused_total",
            "Audit records refused for lack of room: the queue stayed full for audit.full_wait_ms, or the caller could not wait (also counted lost).",
            &one(m.refused),
        );
        counter(
            "spgate_audit_sync_failures_total",
            "Failed fsyncs of the audit chain (also counted in write errors).",
            &one(m.sync_failures),
        );
        counter(
            "spgate_audit_durable_timeouts_total",
            "Durable audit records whose callers stopped waiting because the writer stalled (answered 503).",
            &one(m.durable_timeouts),
        );
        let _ = writeln!(
            out,
            "# HELP spgate_audit_writer_stalled 1 while the audit writer holds records and made no progress for audit.stall_timeout_ms.\n# TYPE spgate_audit_writer_stalled gauge\nspgate_audit_writer_stalled {}",
            u8::from(m.stalled)
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

/// How often the head moves at most: with the first fsync after this long when the policy
/// syncs (the head pins only durable records), lazily otherwise. Not with every fsync: its
/// move (a file created, synced and renamed) cost as much CPU as the fsync itself. Why a head
/// this old keeps its guarantees: see [`super::chain`].
const HEAD_INTERVAL: Duration = Duration::from_secs(5);

/// The head moves at the latest after this many bytes written, whatever the time, so that
/// recovery's window (8 MiB from the end of the file) always reaches it.
const HEAD_BYTES: usize = 1024 * 1024;

/// The longest wait between fsync retries while syncs fail.
const SYNC_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Records lost and not yet reported in the chain.
struct PendingGap {
    /// Why: `write_failed`, `queue_full` (refused for room while the writer stalled), or
    /// `writer_stalled` (dropped by a shutdown that gave up on the writer).
    reason: &'static str,
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
    webhook: Option<Arc<Webhook>>,
    counters: Arc<Counters>,
    last_sync: Instant,
    /// When the head last moved (lazily, without an fsync).
    last_head: Instant,
    /// Written since the last successful fsync.
    unsynced: bool,
    /// The wait before the next fsync retry while syncs fail (doubling up to
    /// [`SYNC_BACKOFF_MAX`]), and when that retry is due.
    sync_backoff: Duration,
    sync_retry_at: Option<Instant>,
    /// Records of this round's batch not taken yet (what a failed write leaves in hand).
    round_left: u64,
    /// The writer's time of its last successful write (where a span of refused records
    /// begins).
    last_write_at: OffsetDateTime,
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
            let woken = self.queue.wait_take(
                &mut taken,
                self.window,
                flowing,
                self.idle_timeout(),
                LINGER,
            );
            if woken == Woken::Closed {
                // The shutdown gave up waiting for this writer (it stalled) and counted what
                // it held; it still closes the chain if it can.
                self.stop(&mut taken, Vec::new(), None);
                return;
            }
            self.begin_round(&taken);
            let mut waiting = Vec::new();
            let mut records = 0usize;
            while let Some(msg) = taken.pop_front() {
                match msg {
                    Msg::Record(r, ack) => {
                        records += 1;
                        self.round_left = self.round_left.saturating_sub(1);
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
            self.counters.health.idle();
            let complete = self.complete();
            for w in waiting {
                let _ = w.send(Answer::all(complete));
            }
            flowing = (records > 0).then(Instant::now);
        }
    }

    /// A round begins with what was taken off the queue: the stall clock starts, the records
    /// are in hand (counted as lost if the writer dies with them), and records refused for
    /// room since the last round join the pending gap.
    fn begin_round(&mut self, taken: &VecDeque<Msg>) {
        let h = &self.counters.health;
        h.progressed();
        let records = taken
            .iter()
            .filter(|m| matches!(m, Msg::Record(..)))
            .count() as u64;
        self.round_left = records;
        h.in_hand.store(records, Ordering::Relaxed);
        h.wait_while_held();
        self.collect_shed();
    }

    /// Records refused for room since the last look become (part of) the pending gap, written
    /// before the next record.
    fn collect_shed(&mut self) {
        let shed = self.counters.health.shed.swap(0, Ordering::Relaxed);
        if shed > 0 {
            let now = self.clock.now();
            let since = self.last_write_at;
            let gap = self.gap.get_or_insert(PendingGap {
                reason: "queue_full",
                count: 0,
                from: since,
                to: now,
            });
            gap.count += shed;
            gap.from = gap.from.min(since);
            gap.to = now;
        }
    }

    /// Records the shutdown dropped when it gave up on this writer (stalled) become (part of)
    /// the pending gap: a writer that recovers reports them before `audit_stopped`.
    fn collect_abandoned(&mut self) {
        let abandoned = self.counters.health.abandoned.swap(0, Ordering::Relaxed);
        if abandoned > 0 {
            let now = self.clock.now();
            let gap = self.gap.get_or_insert(PendingGap {
                reason: "writer_stalled",
                count: 0,
                from: self.last_write_at,
                to: now,
            });
            gap.count += abandoned;
            gap.to = now;
        }
    }

    /// Whether everything taken so far is written and known durable: no loss waiting for its
    /// gap record, no failing fsync.
    fn complete(&self) -> bool {
        self.gap.is_none() && !self.counters.health.sync_failing.load(Ordering::Relaxed)
    }

    /// How long the writer sleeps with nothing queued: until the next retry, fsync or head
    /// move, or the next look at the unauthenticated counts.
    fn idle_timeout(&self) -> Duration {
        if self.gap.is_some() {
            return RETRY;
        }
        if let Some(at) = self.sync_retry_at {
            return at.saturating_duration_since(Instant::now());
        }
        match self.fsync {
            FsyncPolicy::Interval(i) if self.unsynced => i.saturating_sub(self.last_sync.elapsed()),
            _ if self.since_head > 0 => HEAD_INTERVAL.saturating_sub(self.last_head.elapsed()),
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
        let h = self.counters.health.clone();
        h.progressed();
        self.round_left = rest.iter().filter(|m| matches!(m, Msg::Record(..))).count() as u64;
        h.in_hand.store(self.round_left, Ordering::Relaxed);
        // Records refused for room since the last round (a saturated drain), and those a
        // shutdown that gave up on this writer dropped, get their gap before the chain says it
        // stopped cleanly.
        self.collect_shed();
        self.collect_abandoned();
        let mut shutdowns = vec![done];
        while let Some(msg) = rest.pop_front() {
            match msg {
                Msg::Record(r, ack) => {
                    self.round_left = self.round_left.saturating_sub(1);
                    self.take(&r, ack);
                }
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
            self.final_sync();
            // The final sync found records it could not vouch for: their gap, synced too.
            self.collect_unrepaired();
            if self.gap.is_some() {
                self.end_batch();
                self.final_sync();
            }
        }
        let complete = self.complete();
        // The chain (and its lock) is released before anyone hears back.
        drop(self);
        h.idle();
        h.finished.store(true, Ordering::Relaxed);
        for w in waiting {
            let _ = w.send(Answer::all(complete));
        }
        for done in shutdowns.into_iter().flatten() {
            let _ = done.send(());
        }
    }

    /// The shutdown's fsync. If it fails, the records written since the last good one are not
    /// known to be on disk: they count as unrecorded (the process exits non-zero).
    fn final_sync(&mut self) {
        if let Err(e) = self.chain.sync() {
            self.failed(&e);
            self.counters
                .unrecorded
                .fetch_add(self.chain.unsynced_records(), Ordering::Relaxed);
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
                self.rollover_failed(1, &e);
                false
            }
        }
    }

    /// A new day's file could not be begun (the batch so far not written to the previous
    /// day's file, that file not synced, or the new one not opened): what the rollover wrote
    /// is counted as written (unsynced; the gap record with it is reported), what it rolled
    /// back and `more` records are lost, and a failed fsync is handled as one.
    fn rollover_failed(&mut self, more: u64, e: &ChainError) {
        let wrote = self.chain.take_rollover_written();
        if wrote > 0 {
            self.counters.written.fetch_add(wrote, Ordering::Relaxed);
            self.unsynced = true;
            if std::mem::take(&mut self.gap_in_batch) {
                self.gap_written();
            }
        }
        self.gap_in_batch = false;
        if self.chain.rollover_sync_failed() {
            self.sync_failed(e);
        }
        let rolled = self.chain.roll_back_count();
        self.lose(rolled + more, e);
        if rolled > 0 {
            self.rolled_back_acks();
        } else {
            // Written through (and synced, unless that failed) before the rollover failed.
            self.answer_acks();
        }
        self.settled();
    }

    /// The pending gap's record is written through.
    fn gap_written(&mut self) {
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
    }

    /// Counts records as lost (reported by the next `gap` record) and marks the log
    /// unavailable. The durable callers are answered by the caller, which knows whether their
    /// records were rolled back.
    fn lose(&mut self, lost: u64, e: &ChainError) {
        if lost > 0 {
            let now = self.clock.now();
            let gap = self.gap.get_or_insert(PendingGap {
                reason: "write_failed",
                count: 0,
                from: now,
                to: now,
            });
            gap.count += lost;
            gap.to = now;
            self.counters.count_lost(lost);
        }
        // Unavailable before a durable caller hears of it (it may look at readiness next).
        self.failed(e);
    }

    /// Tells the batch's durable callers their records are not in the chain (rolled back).
    fn rolled_back_acks(&mut self) {
        for ack in self.acks.drain(..) {
            let _ = ack.send(Answer::NotInChain);
        }
    }

    /// One record off the queue, with its durable caller.
    fn take(&mut self, r: &Record, ack: Option<Ack>) {
        if let Some(tap) = self.counters.tap.get() {
            tap(r);
        }
        let appended = self.write_record(r);
        match ack {
            Some(ack) if appended => self.acks.push(ack),
            Some(ack) => {
                let _ = ack.send(Answer::NotInChain);
            }
            None => {}
        }
    }

    fn gap_record(&self) -> Option<Record> {
        let gap = self.gap.as_ref()?;
        let mut g = Record::new(Kind::Gap).with_reason(Reason::from_static(gap.reason));
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
        let Some(g) = self.gap_record() else {
            return;
        };
        let now = self.clock.now();
        if self.chain.rolls_over(now) && self.sync_retry_at.is_some_and(|at| Instant::now() < at) {
            // The previous day's file must be synced before the next one begins and fsyncs
            // are backing off: the idle probe waits (a record retries the rollover at once).
            return;
        }
        match self.chain.append_record(now, &g) {
            Ok(_) => self.gap_in_batch = true,
            Err(ChainError::NotAnObject) => {}
            // A failed rollover: the gap stays pending (the log unavailable).
            Err(e) => self.rollover_failed(0, &e),
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
        // A day's file synced before the next one began may have found unrepairable records.
        self.collect_unrepaired();
        // Nothing else to write: probe with the gap record alone.
        self.append_gap();
        let had_gap = std::mem::take(&mut self.gap_in_batch);
        let batch_bytes = self.chain.unwritten_bytes();
        match self.chain.write_through() {
            Ok(n) => {
                // A day rollover in this batch wrote the records before it (and synced them).
                let n = n + self.chain.take_rollover_written();
                self.since_head += batch_bytes;
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                // The gap is reported only by a gap record really written; until then the log
                // stays unavailable.
                if had_gap {
                    self.gap_written();
                }
                if self.gap.is_none() && self.counters.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("The audit log is writable again.");
                }
                self.unsynced |= n > 0;
                self.wrote();
            }
            Err(e) => {
                let rolled = self.chain.roll_back_count();
                self.lose(rolled.saturating_sub(u64::from(had_gap)), &e);
                self.rolled_back_acks();
                self.settled();
                return;
            }
        }
        // With `fsync = "always"` a durable caller hears once its record is synced; otherwise
        // once it is handed to the kernel.
        if self.fsync != FsyncPolicy::Always {
            self.answer_acks();
        }
        self.sync_by_policy();
        self.answer_acks();
    }

    /// The batch is written through: the records in hand are settled, the writer progressed,
    /// and a queue that was found full stops refusing once it is less than half full (not at
    /// the first free slot: under a sustained overload that would flap).
    fn wrote(&mut self) {
        self.last_write_at = self.clock.now();
        self.settled();
        let h = &self.counters.health;
        h.progressed();
        if h.queue_full.load(Ordering::Relaxed) && self.queue.less_than_half_full() {
            h.queue_full.store(false, Ordering::Relaxed);
            tracing::info!("The audit writer writes again: the queue has room.");
        }
    }

    /// Every record taken so far is written or counted as lost: only the ones not taken yet
    /// are still in hand.
    fn settled(&self) {
        self.counters
            .health
            .in_hand
            .store(self.round_left, Ordering::Relaxed);
    }

    /// Tells the batch's durable callers whether their records are written: not while fsyncs
    /// fail (what was written since the last good sync has unknown durability).
    fn answer_acks(&mut self) {
        let answer = if self.counters.health.sync_failing.load(Ordering::Relaxed) {
            Answer::InChain
        } else {
            Answer::Written
        };
        for ack in self.acks.drain(..) {
            let _ = ack.send(answer);
        }
    }

    /// fsyncs by policy, retries a failing fsync after its back-off (whatever the policy), and
    /// otherwise moves the head lazily.
    fn sync_by_policy(&mut self) {
        let failing = self.counters.health.sync_failing.load(Ordering::Relaxed);
        let due = failing
            || match self.fsync {
                FsyncPolicy::Never => false,
                FsyncPolicy::Always => self.unsynced,
                FsyncPolicy::Interval(i) => self.unsynced && self.last_sync.elapsed() >= i,
            };
        if due {
            if self.sync_retry_at.is_some_and(|at| Instant::now() < at) {
                // Backing off: no head move either (it would pin records not known durable).
                return;
            }
            match self.chain.sync_records() {
                Ok(()) => self.synced(),
                Err(e) => {
                    self.sync_failed(&e);
                    return;
                }
            }
        }
        if self.since_head == 0
            || (self.last_head.elapsed() < HEAD_INTERVAL && self.since_head < HEAD_BYTES)
        {
            return;
        }
        // With a policy that syncs, the head pins only synced records: it moves (synced) when
        // everything written is, else at the next sync, unless that is further away than
        // HEAD_INTERVAL or the bytes since the head approach the recovery window (lazily).
        let syncs_soon = match self.fsync {
            FsyncPolicy::Never => false,
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(i) => i <= HEAD_INTERVAL && self.since_head < HEAD_BYTES,
        };
        let sync = !self.unsynced && self.fsync != FsyncPolicy::Never;
        if !sync && syncs_soon {
            return;
        }
        match self.chain.move_head(sync) {
            Ok(()) => {
                self.since_head = 0;
                self.last_head = Instant::now();
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Records a successful fsync after a failed one could not vouch for become (part of) the
    /// pending gap (reason `sync_failed`).
    fn collect_unrepaired(&mut self) {
        let Some(u) = self.chain.take_unrepaired() else {
            return;
        };
        tracing::error!(
            records = u.count,
            "Audit records written before a failed fsync could not be written again: a gap record reports them."
        );
        self.counters.count_lost(u.count);
        let gap = self.gap.get_or_insert(PendingGap {
            reason: "sync_failed",
            count: 0,
            from: u.from,
            to: u.to,
        });
        gap.count += u.count;
        gap.from = gap.from.min(u.from);
        gap.to = gap.to.max(u.to);
    }

    fn synced(&mut self) {
        let now = Instant::now();
        self.collect_unrepaired();
        self.unsynced = false;
        self.last_sync = now;
        self.sync_backoff = Duration::ZERO;
        self.sync_retry_at = None;
        if self
            .counters
            .health
            .sync_failing
            .swap(false, Ordering::Relaxed)
        {
            tracing::info!("The audit log syncs again: it is available.");
        }
    }

    /// A failed fsync: counted, retried after a back-off, and the log stays unavailable (and
    /// durable callers are told their records are not written) until a sync succeeds.
    fn sync_failed(&mut self, e: &ChainError) {
        let h = &self.counters.health;
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        h.sync_failures.fetch_add(1, Ordering::Relaxed);
        self.sync_backoff = (self.sync_backoff * 2).clamp(RETRY, SYNC_BACKOFF_MAX);
        self.sync_retry_at = Some(Instant::now() + self.sync_backoff);
        tracing::error!(
            error = %e,
            retry_ms = self.sync_backoff.as_millis() as u64,
            "Audit log fsync failed."
        );
        if !h.sync_failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                instance = %self.instance,
                "The audit log cannot be made durable: requests are refused (audit.on_failure) until an fsync succeeds."
            );
            super::health::alert(self.webhook.as_deref(), "audit_sync_failed", &self.instance);
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

#[cfg(test)]
#[path = "writer_fault_tests.rs"]
mod fault_tests;
