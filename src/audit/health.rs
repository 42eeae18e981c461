//! [`Health`]: whether the audit writer keeps up, beyond "its last write succeeded".
//!
//! A disk can stall without failing (a `write(2)` or `fsync` that hangs): no error comes back,
//! the queue fills, and without this the gateway would go on serving with records piling up
//! unwritten, then block its request handlers. Three states make the auditor unavailable
//! (readiness 503, requests refused by `audit.on_failure`, `spgate_audit_unavailable` 1):
//!
//! - **queue full**: a record found the queue full. Set at once, before anyone waits
//!   ([`Health::found_full`]): the gateway refuses new requests while the records of those in
//!   flight await room, all until one deadline `full_wait_ms` after the first found it full
//!   (concurrent senders never wait a `full_wait_ms` each). A record that gets no room by then
//!   (or whose sender cannot wait) is refused (counted lost, and in the next `gap` record).
//!   Cleared when the writer writes and the queue is less than half full.
//! - **stalled**: the writer has work in hand and made no progress for `stall_timeout_ms`
//!   (the watchdog thread, [`spawn_watchdog`], looks a few times per timeout). Cleared when it
//!   progresses again. Durable callers waiting for it are told their record is not known to
//!   be written ([`Health::stall_notified`]).
//! - **sync failing**: an fsync failed; what was written since the last good sync has unknown
//!   durability. Cleared only by a sync that succeeds (the writer retries with a back-off).
//!
//! Each turn to unavailable is logged, counted and alerted (the webhook's `audit_unavailable`
//! or `audit_writer_stalled`); the way back is logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::alerts::Webhook;

/// The writer's progress and the states that make the auditor unavailable besides a failed
/// write. Shared by the handles, the writer thread and the watchdog.
pub(super) struct Health {
    /// The zero of `busy_since`.
    base: Instant,
    /// Milliseconds since `base` (plus one) when the writer last began work or progressed in
    /// it; 0 while it waits for work.
    busy_since: AtomicU64,
    /// Records taken off the queue whose fate is not settled yet: neither written through nor
    /// counted as lost (what a writer that dies takes with it).
    pub(super) in_hand: AtomicU64,
    /// Records refused for lack of room and not yet taken into a gap by the writer.
    pub(super) shed: AtomicU64,
    /// Records a shutdown dropped when it gave up on a stalled writer: the writer, if it
    /// recovers, reports them in a gap before `audit_stopped`.
    pub(super) abandoned: AtomicU64,
    /// Records refused for lack of room (a counter).
    pub(super) refused: AtomicU64,
    /// Durable callers told "not known to be written" because the writer stalled.
    pub(super) durable_timeouts: AtomicU64,
    /// Failed fsyncs (a counter).
    pub(super) sync_failures: AtomicU64,
    /// A record found the queue full since the writer last wrote with room to spare.
    pub(super) queue_full: AtomicBool,
    /// Until when the senders of the current full-queue episode may await room.
    full_until: Mutex<tokio::time::Instant>,
    /// The watchdog saw no progress for the stall timeout.
    pub(super) stalled: AtomicBool,
    /// The last fsync failed and none succeeded since.
    pub(super) sync_failing: AtomicBool,
    /// The writer is gone for good (stopped or dead): the watchdog ends.
    pub(super) finished: AtomicBool,
    /// How long a record may wait for room in a full queue.
    pub(super) full_wait: Duration,
    /// No progress for this long with work in hand is a stall.
    pub(super) stall_after: Duration,
    /// Woken when the writer is found stalled (durable callers stop waiting).
    stall: tokio::sync::Notify,
    /// The fault hook ([`Health::hold`]): while true, the writer waits at the start of each
    /// round, with its batch in hand, as it would in a `write(2)` that hangs.
    held: AtomicBool,
    gate: Mutex<bool>,
    gate_open: Condvar,
}

impl Health {
    pub(super) fn new(full_wait: Duration, stall_after: Duration) -> Health {
        Health {
            base: Instant::now(),
            busy_since: AtomicU64::new(0),
            in_hand: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            durable_timeouts: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            queue_full: AtomicBool::new(false),
            full_until: Mutex::new(tokio::time::Instant::now()),
            stalled: AtomicBool::new(false),
            sync_failing: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            full_wait,
            stall_after,
            stall: tokio::sync::Notify::new(),
            held: AtomicBool::new(false),
            gate: Mutex::new(false),
            gate_open: Condvar::new(),
        }
    }

    /// Holds the writer (a fault hook for tests of a disk that stalls without failing): from
    /// its next round it waits, its batch in hand, until [`Health::release`].
    pub(super) fn hold(&self) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.held.store(true, Ordering::Relaxed);
    }

    /// Lets a held writer go on.
    pub(super) fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.gate_open.notify_all();
    }

    /// The writer's side of the hook: one atomic load unless a test holds it.
    pub(super) fn wait_while_held(&self) {
        if !self.held.load(Ordering::Relaxed) {
            return;
        }
        let mut held = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.gate_open.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether none of the three states holds.
    pub(super) fn ok(&self) -> bool {
        !self.queue_full.load(Ordering::Relaxed)
            && !self.stalled.load(Ordering::Relaxed)
            && !self.sync_failing.load(Ordering::Relaxed)
    }

    /// A sender found the queue full: the auditor is unavailable from now on, before anyone
    /// waits. The first to find it full starts the episode (true) and its deadline,
    /// `full_wait` from now; every sender of the episode may await room until that deadline
    /// (`None` once it has passed: the sender is refused at once).
    pub(super) fn found_full(&self) -> (bool, Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        let mut until = self.full_until.lock().unwrap_or_else(|p| p.into_inner());
        let first = !self.queue_full.swap(true, Ordering::Relaxed);
        if first {
            *until = now + self.full_wait;
        }
        (first, (now < *until).then_some(*until))
    }

    /// The writer begins work (or progresses in it): the stall clock restarts.
    pub(super) fn progressed(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.busy_since.store(ms, Ordering::Relaxed);
    }

    /// The writer has nothing in hand.
    pub(super) fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the writer has had work in hand without progress (`None` when idle).
    pub(super) fn stuck_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// A future that completes when the writer is next found stalled. Create it before
    /// checking [`Health::stalled`] (a notification in between is not missed).
    pub(super) fn stall_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.stall.notified()
    }

    /// One look by the watchdog: marks a stall (or its end) and says what changed.
    fn check(&self) -> Change {
        let stuck = self
            .stuck_for()
            .is_some_and(|for_| for_ >= self.stall_after);
        let was = self.stalled.swap(stuck, Ordering::Relaxed);
        match (was, stuck) {
            (false, true) => {
                self.stall.notify_waiters();
                Change::Stalled
            }
            (true, false) => Change::Recovered,
            (true, true) => {
                // Durable callers that began waiting since are told too.
                self.stall.notify_waiters();
                Change::None
            }
            (false, false) => Change::None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    Stalled,
    Recovered,
}

/// Starts the watchdog thread: a few looks per stall timeout (at most one a second, at least
/// every 10 ms), until the writer is finished.
pub(super) fn spawn_watchdog(
    health: Arc<Health>,
    webhook: Option<Arc<Webhook>>,
    instance: String,
) -> std::io::Result<()> {
    let tick = (health.stall_after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    std::thread::Builder::new()
        .name(format!("audit-watch-{instance}"))
        .spawn(move || {
            let mut full_seen = false;
            while !health.finished.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                match health.check() {
                    Change::Stalled => {
                        tracing::error!(
                            instance = %instance,
                            stalled_ms = health.stall_after.as_millis() as u64,
                            "The audit writer has made no progress with records in hand: the audit log is unavailable and requests are refused (audit.on_failure) until it progresses."
                        );
                        alert(webhook.as_deref(), "audit_writer_stalled", &instance);
                    }
                    Change::Recovered => tracing::info!(
                        instance = %instance,
                        "The audit writer progresses again."
                    ),
                    Change::None => {}
                }
                // The sender that found the queue full logged it; the alert goes from here.
                let full = health.queue_full.load(Ordering::Relaxed);
                if full && !full_seen {
                    alert(webhook.as_deref(), "audit_unavailable", &instance);
                }
                full_seen = full;
            }
        })
        .map(drop)
}

/// Posts an availability alert (rule name, instance, time).
pub(super) fn alert(webhook: Option<&Webhook>, rule: &str, instance: &str) {
    if let Some(w) = webhook {
        let body = serde_json::json!({
            "rule": rule,
            "instance": instance,
            "time": super::query::record_time(time::OffsetDateTime::now_utc()),
        });
        w.send(serde_json::to_vec(&body).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first look at a full queue makes the auditor unavailable and starts one deadline
    /// for every sender of the episode; after it, none may wait; once the writer clears the
    /// state, the next look starts a new episode.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_episode_has_one_deadline_from_its_first_look() {
        let h = Health::new(Duration::from_millis(100), Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let until = start + Duration::from_millis(100);
        assert_eq!(h.found_full(), (true, Some(until)));
        assert!(!h.ok());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(h.found_full(), (false, Some(until)));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(h.found_full(), (false, None));
        h.queue_full.store(false, Ordering::Relaxed);
        let again = tokio::time::Instant::now() + Duration::from_millis(100);
        assert_eq!(h.found_full(), (true, Some(again)));
    }

    #[test]
    fn work_in_hand_without_progress_is_a_stall_until_it_progresses() {
        let h = Health::new(Duration::from_millis(10), Duration::from_millis(30));
        assert_eq!(h.check(), Change::None);
        h.progressed();
        assert_eq!(h.check(), Change::None);
        assert!(h.ok());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.check(), Change::Stalled);
        assert!(!h.ok());
        h.progressed();
        assert_eq!(h.check(), Change::Recovered);
        assert!(h.ok());
        // Idle for long is no stall.
        h.idle();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.check(), Change::None);
        assert!(h.ok());
    }
}
