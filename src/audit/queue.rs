//! [`Queue`]: the bounded queue between the [`Auditor`](super::Auditor) handles and the writer
//! thread. One mutex over a list of messages, and two conditions: the writer's, and room for
//! the senders of a full queue.
//!
//! The writer is woken only when it must act: for a message someone waits for (a durable
//! record, a flush, the shutdown: [`Urgency::Waited`], [`Urgency::Control`]), for the first
//! record into a queue it sleeps idle on (that record starts a write window), and when the
//! queue is half full. Other records join the list without a wake-up: while
//! records flow the writer wakes once per window on its own and takes what came (at 1,000
//! records a second a wake-up per record costs more CPU than writing the record).
//!
//! A sender of a record waits for room in a full queue at most the time it is given
//! ([`Queue::push`]): a writer that stalls (a disk that hangs without failing) never holds a
//! request handler's thread indefinitely; the record comes back refused, and the sender counts
//! it (and fails closed).
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
    /// behind every record queued before it, full queue or not).
    Control,
}

/// The queue. Its senders are the auditor's handles, its one receiver the writer thread.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    /// The writer sleeps here.
    writer: Condvar,
    /// Senders wait here while the queue is full.
    room: Condvar,
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
    /// Senders waiting for room.
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
    /// The queue stayed full for the whole wait.
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
            room: Condvar::new(),
            capacity,
            batch: batch.max(1),
            wake_at: (capacity / 2).max(1),
        }
    }

    /// Queues `item`. While the queue holds `capacity` items a record waits for room, at most
    /// `max_wait` (`Ok(true)`: it waited; `on_wait` runs once, before the wait begins). `Err`
    /// gives the item back: the queue is closed, or it stayed full for `max_wait` (a writer that
    /// stalls never blocks its senders' threads indefinitely).
    pub(super) fn push(
        &self,
        item: T,
        urgency: Urgency,
        max_wait: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<bool, Refused<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refused::Closed(item));
        }
        let mut waited = false;
        if urgency != Urgency::Control && s.items.len() >= self.capacity {
            if max_wait.is_zero() {
                return Err(Refused::Full(item));
            }
            waited = true;
            on_wait();
            let until = Instant::now() + max_wait;
            while s.items.len() >= self.capacity {
                if s.sleep != Sleep::Awake {
                    // The writer makes room only once awake.
                    s.sleep = Sleep::Awake;
                    self.writer.notify_one();
                }
                let now = Instant::now();
                if now >= until {
                    return Err(Refused::Full(item));
                }
                s.waiting += 1;
                s = self
                    .room
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                s.waiting -= 1;
                if s.closed {
                    return Err(Refused::Closed(item));
                }
            }
        }
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
        Ok(waited)
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
            self.room.notify_all();
        }
        woken
    }

    /// Closes the queue and moves everything still queued into `out`: from now on every
    /// push fails.
    pub(super) fn close(&self, out: &mut VecDeque<T>) {
        let mut s = self.lock();
        s.closed = true;
        out.extend(s.items.drain(..));
        drop(s);
        self.room.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(30);

    /// A push that may wait for room as long as any test runs.
    fn put<T>(q: &Queue<T>, item: T, urgency: Urgency) -> Result<bool, Refused<T>> {
        q.push(item, urgency, LONG, || {})
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

    #[test]
    fn a_full_queue_makes_records_wait_for_room_but_not_control_messages() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(2, 2));
        put(&q, 0, Urgency::Lazy).unwrap();
        put(&q, 1, Urgency::Lazy).unwrap();
        assert_eq!(put(&q, 99, Urgency::Control), Ok(false));
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || put(&q, 2, Urgency::Lazy))
        };
        while q.lock().waiting == 0 {
            std::thread::yield_now();
        }
        let mut out = VecDeque::new();
        while out.len() < 4 {
            q.wait_take(&mut out, LONG, None, LONG, Duration::ZERO);
        }
        assert_eq!(sender.join().unwrap(), Ok(true));
        assert_eq!(Vec::from(out), vec![0, 1, 99, 2]);
    }

    #[test]
    fn a_sender_waiting_for_room_when_the_queue_closes_gets_its_record_back() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(1, 1));
        put(&q, 0, Urgency::Lazy).unwrap();
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || put(&q, 1, Urgency::Lazy))
        };
        while q.lock().waiting == 0 {
            std::thread::yield_now();
        }
        let mut out = VecDeque::new();
        q.close(&mut out);
        assert_eq!(sender.join().unwrap(), Err(Refused::Closed(1)));
        assert_eq!(Vec::from(out), vec![0]);
    }

    /// A writer that stalls holds no sender: a record waits for room at most its bound, is
    /// counted as waiting before it waits, and comes back refused; with no wait allowed it
    /// comes back at once. Room made within the bound is taken.
    #[test]
    fn a_full_queue_gives_a_record_back_after_its_bounded_wait() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new(1, 1));
        put(&q, 0, Urgency::Lazy).unwrap();
        let waits = std::sync::atomic::AtomicU32::new(0);
        let counted = || {
            waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let bound = Duration::from_millis(50);
        let start = Instant::now();
        assert_eq!(
            q.push(1, Urgency::Waited, bound, counted),
            Err(Refused::Full(1))
        );
        assert!(start.elapsed() >= bound);
        assert_eq!(waits.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            q.push(2, Urgency::Lazy, Duration::ZERO, || unreachable!("no wait")),
            Err(Refused::Full(2))
        );
        // Room within the bound: the record is queued, having waited.
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || q.push(3, Urgency::Lazy, LONG, || {}))
        };
        while q.lock().waiting == 0 {
            std::thread::yield_now();
        }
        let mut out = VecDeque::new();
        while out.len() < 2 {
            q.wait_take(&mut out, LONG, None, LONG, Duration::ZERO);
        }
        assert_eq!(sender.join().unwrap(), Ok(true));
        assert_eq!(Vec::from(out), vec![0, 3]);
    }
}
