//! [`Queue`]: the bounded queue between the [`Auditor`](super::Auditor) handles and the writer
//! thread. One mutex over a list of messages, the writer's condition, and for the senders of a
//! full queue a notification of room (async senders) and a condition (threads outside a runtime).
//!
//! The writer is woken only when it must act: for a message someone waits for (a durable
//! record, a flush, the shutdown: [`Urgency::Waited`], [`Urgency::Control`]), for the first
//! record into a queue it sleeps idle on (that record starts a write window), and when the
//! queue is half full. Other records join the list without a wake-up: while
//! records flow the writer wakes once per window on its own and takes what came (at 1,000
//! records a second a wake-up per record costs more CPU than writing the record).
//!
//! [`Queue::push`] never waits: it refuses a record at once when the queue is full. A sender in
//! async code may instead await room until a deadline ([`Queue::push_within`]): it registers
//! with the `room` notification and yields its runtime thread, so a writer that stalls (a disk
//! that hangs without failing) never holds a request handler's thread, however many senders
//! wait. Only a thread outside any async runtime (a benchmark's loop, a test's sender thread)
//! may block for room until a deadline ([`Queue::push_blocking`]). A record that gets no room
//! comes back refused and its sender counts it (and fails closed).
//!
//! Closing is atomic with taking what is left ([`Queue::close`]): once closed, every push
//! fails and its sender counts the record as lost, so no record slips in between the writer's
//! last look and its exit.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How soon a message needs the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Urgency {
    /// Written within the write window; the writer is not woken for it (unless it is the
    /// first record into an idle queue, or completes a batch).
    Lazy,
    /// Someone waits for it to be written: the writer is woken at once.
    Waited,
    /// Like `Waited`, and never waits for room: a flush or the shutdown (tiny, and ordered
    /// behind every record queued before it, full queue or not), or the note that a durable
    /// caller's answer was withheld (at most one per durable caller).
    Control,
}

/// The queue. Its senders are the auditor's handles, its one receiver the writer thread.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    /// The writer sleeps here.
    writer: Condvar,
    /// Senders in async code await room here while the queue is full (never a thread wait).
    room: tokio::sync::Notify,
    /// Threads outside any async runtime wait for room here.
    room_threads: Condvar,
    /// Records (not control messages) queued before a sender waits for room.
    capacity: usize,
    /// The most the writer takes per round (one write).
    batch: usize,
    /// Queued messages at which a sleeping writer is woken before its window ends (half the
    /// queue: before any sender has to wait, yet never during an ordinary burst, when the
    /// writer running beside the senders would only slow them down).
    wake_at: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Something queued is waited for: the writer writes now.
    urgent: bool,
    /// How the writer sleeps, if it does.
    sleep: Sleep,
    /// The writer has stopped taking messages.
    closed: bool,
    /// Senders awaiting room (the writer notifies `room` only when there are some).
    waiting: usize,
}

/// The writer's state as the senders see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// Working, or already woken: nobody needs to notify it.
    Awake,
    /// Asleep until its write window ends: woken only for an urgent message or a half-full
    /// queue.
    Window,
    /// Asleep with nothing queued: the next message wakes it.
    Idle,
}

/// Why [`Queue::push`] gave an item back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused<T> {
    /// The writer has stopped taking messages.
    Closed(T),
    /// The queue was full (and stayed full until the sender's deadline, if it could wait).
    Full(T),
}

/// Why [`Queue::wait_take`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    /// An urgent message (after the linger), or a half-full queue.
    Urgent,
    /// The write window ended (with or without records).
    Window,
    /// The idle timeout passed with nothing queued.
    Timeout,
    /// The queue is closed and nothing is left in it (the shutdown gave up on the writer).
    Closed,
}

impl<T> Queue<T> {
    /// A queue of `capacity` records, taken `batch` at a time.
    pub(super) fn new(capacity: usize, batch: usize) -> Queue<T> {
        let capacity = capacity.max(1);
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                urgent: false,
                sleep: Sleep::Awake,
                closed: false,
                waiting: 0,
            }),
            writer: Condvar::new(),
            room: tokio::sync::Notify::new(),
            room_threads: Condvar::new(),
            capacity,
            batch: batch.max(1),
            wake_at: (capacity / 2).max(1),
        }
    }

    /// Queues `item` without waiting: `Err` gives it back when the queue is closed, or when it
    /// holds `capacity` items and `item` is a record (a control message always fits).
    pub(super) fn push(&self, item: T, urgency: Urgency) -> Result<(), Refused<T>> {
        let s = self.lock();
        if s.closed {
            return Err(Refused::Closed(item));
        }
        if !self.has_room(&s, urgency) {
            return Err(Refused::Full(item));
        }
        self.put(s, item, urgency);
        Ok(())
    }

    /// Queues the item in `slot`, awaiting room in a full queue until `until` (`Ok(true)`: it
    /// awaited room). The wait yields the caller's thread: any number of senders may wait
    /// while the writer stalls. `Err` leaves the item in `slot`: the queue is closed, or it
    /// stayed full until `until`. Cancel-safe: a sender dropped while it waits keeps its item
    /// in `slot` (its owner decides what becomes of it).
    pub(super) async fn push_within(
        &self,
        slot: &mut Option<T>,
        urgency: Urgency,
        until: tokio::time::Instant,
    ) -> Result<bool, Refused<()>> {
        let mut waited = false;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(Refused::Closed(()));
                }
                if self.has_room(&s, urgency) {
                    if let Some(item) = slot.take() {
                        self.put(s, item, urgency);
                    }
                    return Ok(waited);
                }
                if tokio::time::Instant::now() >= until {
                    return Err(Refused::Full(()));
                }
                // Registered before the lock is released: a writer that makes room after this
                // notifies this sender.
                room.as_mut().enable();
                s.waiting += 1;
                if s.sleep != Sleep::Awake {
                    // The writer makes room only once awake.
                    s.sleep = Sleep::Awake;
                    self.writer.notify_one();
                }
            }
            let _waiting = Waiting(self);
            waited = true;
            let _ = tokio::time::timeout_at(until, room).await;
        }
    }

    /// Like [`Queue::push_within`] on a thread that may block (one outside any async runtime):
    /// waits for room until `until`. `Err` gives the item back.
    pub(super) fn push_blocking(
        &self,
        item: T,
        urgency: Urgency,
        until: Instant,
    ) -> Result<bool, Refused<T>> {
        let mut s = self.lock();
        let mut waited = false;
        loop {
            if s.closed {
                return Err(Refused::Closed(item));
            }
            if self.has_room(&s, urgency) {
                self.put(s, item, urgency);
                return Ok(waited);
            }
            let now = Instant::now();
            if now >= until {
                return Err(Refused::Full(item));
            }
            if s.sleep != Sleep::Awake {
                // The writer makes room only once awake.
                s.sleep = Sleep::Awake;
                self.writer.notify_one();
            }
            waited = true;
            s.waiting += 1;
            s = self
                .room_threads
                .wait_timeout(s, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.waiting -= 1;
        }
    }

    /// Whether `urgency`'s message fits now.
    fn has_room(&self, s: &State<T>, urgency: Urgency) -> bool {
        urgency == Urgency::Control || s.items.len() < self.capacity
    }

    /// Appends `item` and wakes the writer if it must act.
    fn put(&self, mut s: MutexGuard<'_, State<T>>, item: T, urgency: Urgency) {
        s.items.push_back(item);
        let urgent = urgency != Urgency::Lazy;
        s.urgent |= urgent;
        let wake = match s.sleep {
            Sleep::Awake => false,
            Sleep::Idle => true,
            Sleep::Window => urgent || s.items.len() >= self.wake_at,
        };
        if wake {
            // Notified once: later senders see it awake.
            s.sleep = Sleep::Awake;
        }
        drop(s);
        if wake {
            self.writer.notify_one();
        }
    }

    /// Rewrites the first queued item for which `f` returns true (a durable caller that
    /// stopped waiting marks its record); false if none did (the writer took it already).
    pub(super) fn update_first(&self, f: impl FnMut(&mut T) -> bool) -> bool {
        self.lock().items.iter_mut().any(f)
    }

    /// The writer's wait. Returns when a message is waited for (after `linger`, so that
    /// others join its write: group commit), when the queue is half full, when the write
    /// window ends, or after `timeout` with nothing queued. The window began at `flowing`
    /// (the previous write, while records flow) or begins with the first record queued.
    /// Moves up to a batch of messages into `out`.
    pub(super) fn wait_take(
        &self,
        out: &mut VecDeque<T>,
        window: Duration,
        flowing: Option<Instant>,
        timeout: Duration,
        linger: Duration,
    ) -> Woken {
        let start = Instant::now();
        let idle_until = start + timeout;
        let mut window_start = flowing;
        let mut s = self.lock();
        let woken = loop {
            if s.urgent || s.closed {
                if !linger.is_zero() {
                    drop(s);
                    std::thread::sleep(linger);
                    s = self.lock();
                }
                break Woken::Urgent;
            }
            // Half full, or a whole batch already waiting (a backlog left by the last round):
            // written at once, never a window per batch.
            if s.items.len() >= self.wake_at || s.items.len() >= self.batch {
                break Woken::Urgent;
            }
            let now = Instant::now();
            if window_start.is_none() && !s.items.is_empty() {
                window_start = Some(now);
            }
            let (until, why) = match window_start {
                Some(t) => ((t + window).min(idle_until), Woken::Window),
                None => (idle_until, Woken::Timeout),
            };
            if now >= until {
                break why;
            }
            s.sleep = if window_start.is_some() {
                Sleep::Window
            } else {
                Sleep::Idle
            };
            s = self
                .writer
                .wait_timeout(s, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.sleep = Sleep::Awake;
        };
        if s.closed && s.items.is_empty() {
            return Woken::Closed;
        }
        let n = s.items.len().min(self.batch);
        out.extend(s.items.drain(..n));
        // Left over (a backlog): still urgent if it was, so the next round starts at once.
        s.urgent &= !s.items.is_empty();
        let room = s.waiting > 0;
        drop(s);
        if room {
            self.room.notify_waiters();
            self.room_threads.notify_all();
        }
        woken
    }

    /// Closes the queue and moves everything still queued into `out`: from now on every
    /// push fails.
    pub(super) fn close(&self, out: &mut VecDeque<T>) {
        self.close_then(out, |_| {});
    }

    /// Like [`Queue::close`], and runs `then` on `out` before anyone else sees the
    /// queue closed (the shutdown that gives up on a stalled writer tells it what it dropped,
    /// before the writer can find the queue closed and stop).
    pub(super) fn close_then(&self, out: &mut VecDeque<T>, then: impl FnOnce(&VecDeque<T>)) {
        let mut s = self.lock();
        s.closed = true;
        out.extend(s.items.drain(..));
        then(out);
        drop(s);
        self.room.notify_waiters();
        self.room_threads.notify_all();
    }

    /// Messages queued right now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether less than half the queue is taken (room enough to stop refusing records).
    pub(super) fn less_than_half_full(&self) -> bool {
        self.lock().items.len() < self.wake_at
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every holder leaves the state consistent (pushes and drains only).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A sender awaiting room, counted until it stops waiting (also when it is dropped).
struct Waiting<'a, T>(&'a Queue<T>);

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(30);

    /// A push that never waits.
    fn put<T>(q: &Queue<T>, item: T, urgency: Urgency) -> Result<(), Refused<T>> {
        q.push(item, urgency)
    }

    /// A push that may await room as long as any test runs.
    async fn put_within<T>(q: &Queue<T>, item: T, urgency: Urgency) -> Result<bool, Refused<()>> {
        let mut slot = Some(item);
        let until = tokio::time::Instant::now() + LONG;
        q.push_within(&mut slot, urgency, until).await
    }

    /// Waits (yielding) until `n` senders await room.
    async fn until_waiting<T>(q: &Queue<T>, n: usize) {
        while q.lock().waiting < n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_lazy_record_waits_for_its_window_and_an_urgent_one_ends_it() {
        let q = Queue::new(64, 16);
        put(&q, 1, Urgency::Lazy).unwrap();
        let mut out = VecDeque::new();
        // The window (here nothing) ends: the record is taken.
        let woken = q.wait_take(&mut out, Duration::ZERO, None, LONG, Duration::ZERO);
        assert_eq!((woken, Vec::from(out.clone())), (Woken::Window, vec![1]));
        out.clear();
        put(&q, 2, Urgency::Lazy).unwrap();
        put(&q, 3, Urgency::Waited).unwrap();
        let woken = q.wait_take(&mut out, LONG, None, LONG, Duration::ZERO);
        assert_eq!((woken, Vec::from(out)), (Woken::Urgent, vec![2, 3]));
    }

    #[test]
    fn a_backlog_of_whole_batches_is_taken_without_waiting_for_windows() {
        let q = Queue::new(64, 4);
        for i in 0..10 {
            put(&q, i, Urgency::Lazy).unwrap();
        }
        let mut out = VecDeque::new();
        // A window far longer than the test: only the waiting batches end each wait.
        for expected in [vec![0, 1, 2, 3], vec![4, 5, 6, 7]] {
            let woken = q.wait_take(&mut out, LONG, Some(Instant::now()), LONG, Duration::ZERO);
            assert_eq!((woken, Vec::from(out.clone())), (Woken::Urgent, expected));
            out.clear();
        }
        // Less than a batch left: it waits for its window (here nothing).
        let woken = q.wait_take(&mut out, Duration::ZERO, None, LONG, Duration::ZERO);
        assert_eq!((woken, Vec::from(out)), (Woken::Window, vec![8, 9]));
    }

    #[test]
    fn an_idle_writer_times_out_with_nothing_and_a_half_full_queue_wakes_a_sleeping_one() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(8, 4));
        let mut out = VecDeque::new();
        let woken = q.wait_take(&mut out, LONG, None, Duration::ZERO, Duration::ZERO);
        assert_eq!((woken, out.len()), (Woken::Timeout, 0));
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..4 {
                    put(&q, i, Urgency::Lazy).unwrap();
                }
            })
        };
        // A window far longer than the test: only the half-full queue ends the wait.
        let woken = q.wait_take(&mut out, LONG, Some(Instant::now()), LONG, Duration::ZERO);
        sender.join().unwrap();
        assert_eq!((woken, Vec::from(out)), (Woken::Urgent, vec![0, 1, 2, 3]));
    }

    #[test]
    fn a_closed_queue_hands_back_what_was_left_and_refuses_every_push_after() {
        let q = Queue::new(64, 16);
        put(&q, "queued", Urgency::Lazy).unwrap();
        let mut out = VecDeque::new();
        q.close(&mut out);
        assert_eq!(Vec::from(out), vec!["queued"]);
        for urgency in [Urgency::Lazy, Urgency::Waited, Urgency::Control] {
            assert_eq!(put(&q, "late", urgency), Err(Refused::Closed("late")));
        }
    }

    /// A full queue refuses a record at once on the thread that pushes it (never a thread
    /// wait), takes control messages, and a sender in async code awaits room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_async_senders_await_room_but_refuses_the_others_at_once() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(2, 2));
        put(&q, 0, Urgency::Lazy).unwrap();
        put(&q, 1, Urgency::Lazy).unwrap();
        assert_eq!(put(&q, 98, Urgency::Lazy), Err(Refused::Full(98)));
        assert_eq!(put(&q, 99, Urgency::Control), Ok(()));
        let sender = tokio::spawn({
            let q = q.clone();
            async move { put_within(&q, 2, Urgency::Lazy).await }
        });
        until_waiting(&q, 1).await;
        let writer = std::thread::spawn({
            let q = q.clone();
            move || {
                let mut out = VecDeque::new();
                while out.len() < 4 {
                    q.wait_take(&mut out, LONG, None, LONG, Duration::ZERO);
                }
                out
            }
        });
        assert_eq!(sender.await.unwrap(), Ok(true));
        assert_eq!(Vec::from(writer.join().unwrap()), vec![0, 1, 99, 2]);
        assert_eq!(q.lock().waiting, 0);
    }

    /// A thread outside any runtime may block for room: it gets in when the writer makes
    /// room, and gets its record back at its deadline otherwise.
    #[test]
    fn a_thread_outside_a_runtime_blocks_for_room_until_its_deadline() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(1, 1));
        put(&q, 0, Urgency::Lazy).unwrap();
        let bound = Duration::from_millis(50);
        let start = Instant::now();
        assert_eq!(
            q.push_blocking(1, Urgency::Waited, start + bound),
            Err(Refused::Full(1))
        );
        assert!(start.elapsed() >= bound);
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || q.push_blocking(2, Urgency::Lazy, Instant::now() + LONG))
        };
        while q.lock().waiting == 0 {
            std::thread::yield_now();
        }
        let mut out = VecDeque::new();
        while out.len() < 2 {
            q.wait_take(&mut out, LONG, None, LONG, Duration::ZERO);
        }
        assert_eq!(sender.join().unwrap(), Ok(true));
        assert_eq!(Vec::from(out), vec![0, 2]);
    }

    #[tokio::test]
    async fn a_sender_awaiting_room_when_the_queue_closes_keeps_its_record() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(1, 1));
        put(&q, 0, Urgency::Lazy).unwrap();
        let sender = tokio::spawn({
            let q = q.clone();
            async move {
                let mut slot = Some(1);
                let until = tokio::time::Instant::now() + LONG;
                (q.push_within(&mut slot, Urgency::Lazy, until).await, slot)
            }
        });
        until_waiting(&q, 1).await;
        let mut out = VecDeque::new();
        q.close(&mut out);
        assert_eq!(sender.await.unwrap(), (Err(Refused::Closed(())), Some(1)));
        assert_eq!(Vec::from(out), vec![0]);
    }

    /// A writer that stalls holds no sender's thread: on a runtime of one thread, senders
    /// awaiting room leave it free for other tasks; each comes back refused at its deadline
    /// with its record; one dropped while it waits is no longer counted as waiting.
    #[tokio::test(start_paused = true)]
    async fn senders_awaiting_room_leave_the_runtime_thread_free_and_give_up_at_their_deadline() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(1, 1));
        put(&q, 0, Urgency::Lazy).unwrap();
        let bound = Duration::from_millis(100);
        let until = tokio::time::Instant::now() + bound;
        let senders: Vec<_> = (1..=3)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut slot = Some(i);
                    (q.push_within(&mut slot, Urgency::Waited, until).await, slot)
                })
            })
            .collect();
        let dropped = tokio::spawn({
            let q = q.clone();
            async move { put_within(&q, 9, Urgency::Lazy).await }
        });
        // Only a free runtime thread gets all four senders to wait.
        until_waiting(&q, 4).await;
        dropped.abort();
        let _ = dropped.await;
        assert_eq!(q.lock().waiting, 3);
        tokio::time::sleep(bound).await;
        for (i, sender) in (1..=3).zip(senders) {
            assert_eq!(sender.await.unwrap(), (Err(Refused::Full(())), Some(i)));
        }
        assert_eq!(q.lock().waiting, 0);
        assert_eq!(q.len(), 1);
    }
}
