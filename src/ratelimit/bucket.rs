//! One Amazon bucket (application, seller, operation) and the queue of requests waiting for it.
//!
//! **Queue.** A request that cannot have a token at once waits in an ordered map whose order is
//! the service order: priority lane first (high, normal, low), then a start-time fair queueing
//! tag per tool (each request of a tool with weight `w` advances the tool's tag by `1/w`; a new
//! request starts at the lane's virtual time or after the tool's previous one), then arrival.
//! The n-th waiter (from 0) gets the n-th slot of the bucket: `next slot + n x interval`. Tools
//! thus share scarce tokens in proportion to their weights, FIFO within a tool and lane, and a
//! lone tool takes every token (work-conserving).
//!
//! **Deadlines.** Placing a request shifts everyone behind it by one interval. A newcomer that
//! would push a queued request past its deadline is placed behind that request instead; if its
//! own slot is then past its own deadline it is refused at once with the slot as retry-after.
//! So an admitted waiter is granted by its deadline unless Amazon's capacity shrinks meanwhile
//! (a 429, a lower reported rate); then the waiters that can no longer make it are refused at
//! once ([`State::shed`]).
//!
//! **Dispatch.** One task per bucket, alive while the queue is non-empty, grants the head at
//! each slot (local GCRA), or offers Redis the first waiter of each tool at the head of the
//! queue and reserves the slot for the one the script picks by the lanes and shares of every
//! instance's waiters (`fair.rs`), one round trip per decision; when the script defers them all
//! (another instance's tool goes first) it asks again after the hint.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::app::{joint_slot, reserve_joint, take_joint, Apps};
use super::fair::{self, Candidate};
use super::gcra::Gcra;
use super::redis::{Reply, Take, Verdict};
use super::{Inner, Mode, RateLimitError};
use crate::catalog::{Operation, UsagePlan};

/// Fixed-point scale of fair-queueing tags (one request of weight 1 = `TAG_SCALE`).
const TAG_SCALE: f64 = 1_000_000.0;

/// How long past its deadline a waiter keeps waiting for a grant already on its way (a Redis
/// round trip); only reached if the dispatcher is late.
const GRACE: Duration = Duration::from_secs(1);

/// What one request asks of a bucket.
#[derive(Debug, Clone)]
pub(crate) struct Ask<'a> {
    /// The calling tool.
    pub(crate) tool: &'a str,
    /// Priority lane: 0 high, 1 normal, 2 low.
    pub(crate) lane: usize,
    /// Fair-queueing weight (the tool's share).
    pub(crate) weight: f64,
    /// A tool-side bucket (rate, burst), if the tool's plan has an absolute rule.
    pub(crate) tool_limit: Option<(f64, u32)>,
    /// When the request arrived (an immediate grant is dated then).
    pub(crate) arrived: Instant,
    /// Latest grant time.
    pub(crate) deadline: Instant,
    /// The application-wide buckets taken together with this one.
    pub(crate) apps: Apps,
}

/// Order of the queue: lane, fair tag, arrival; `after` places a request right behind another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    lane: usize,
    tag: u64,
    seq: u64,
    after: u64,
}

type Grant = Result<Instant, RateLimitError>;

#[derive(Debug)]
struct Waiter {
    tool: Box<str>,
    /// Its tool's share (the weight of its fair-queueing tags, locally and in Redis).
    weight: f64,
    deadline: Instant,
    apps: Apps,
    tx: oneshot::Sender<Grant>,
}

/// Per-tool state in one bucket.
#[derive(Debug, Default)]
struct ToolState {
    admitted: u64,
    finish: [u64; 3],
    bucket: Option<Gcra>,
}

/// Rate and burst after the safety factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub(crate) rate_per_second: f64,
    pub(crate) burst: u32,
}

#[derive(Debug)]
struct State {
    plan: UsagePlan,
    observed: Option<f64>,
    amazon: Limits,
    /// The bucket as this instance enforces it: Amazon's (local mode) or the fallback share of
    /// it (Redis mode, used only while Redis is unreachable).
    local: Gcra,
    queue: BTreeMap<Key, Waiter>,
    virtual_time: [u64; 3],
    tools: HashMap<Box<str>, ToolState>,
    seq: u64,
    dispatcher: bool,
    redis_in_flight: bool,
    redis_busy_until: Option<Instant>,
    redis_view: Option<(f64, Instant)>,
    /// The Redis outage whose start emptied `local` (see [`State::enter_fallback`]).
    fallback_outage: u64,
}

/// Per-tool figures for [`super::BucketStatus`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ToolFigures {
    pub(crate) admitted: u64,
    pub(crate) waiting: usize,
}

/// A bucket's figures for [`super::BucketStatus`].
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) limits: Limits,
    pub(crate) tokens: f64,
    pub(crate) queue_depth: usize,
    pub(crate) tools: Vec<(String, ToolFigures)>,
}

/// One bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) seller: Box<str>,
    pub(crate) operation: &'static Operation,
    redis_key: Option<String>,
    state: Mutex<State>,
    wake: Notify,
}

enum Step {
    Granted(Instant),
    Rejected(RateLimitError),
    Wait(oneshot::Receiver<Grant>, Key),
    AskRedis(Duration),
}

/// How a request's own Redis decision ended.
enum Direct {
    /// Granted (after its wait) or refused.
    Done(Result<Instant, RateLimitError>),
    /// Redis failed.
    Failed,
    /// Another tool goes first (`fair.rs`): the request joins the queue.
    Queue,
}

/// Removes a waiter from the queue when its request is dropped or done.
struct Cancel<'b> {
    bucket: &'b Bucket,
    key: Key,
}

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        self.bucket.lock().queue.remove(&self.key);
    }
}

/// Clears the bucket's "Redis call in flight" mark when a direct call ends, even when the
/// request is dropped mid-call, and wakes the dispatcher waiting for it.
struct InFlight<'b> {
    bucket: &'b Bucket,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.bucket.lock().redis_in_flight = false;
        self.bucket.wake.notify_one();
    }
}

impl Bucket {
    /// A full bucket for `plan` (the catalog's or the sandbox's).
    pub(crate) fn new(
        inner: &Inner,
        seller: &str,
        operation: &'static Operation,
        plan: UsagePlan,
        now: Instant,
    ) -> Bucket {
        let amazon = inner.effective(plan, None);
        let local = inner.local_share(amazon);
        Bucket {
            seller: seller.into(),
            operation,
            redis_key: inner.redis.as_ref().map(|r| r.key(seller, operation.key)),
            state: Mutex::new(State {
                plan,
                observed: None,
                amazon,
                local: inner.new_gcra(local, now),
                queue: BTreeMap::new(),
                virtual_time: [0; 3],
                tools: HashMap::new(),
                seq: 0,
                dispatcher: false,
                redis_in_flight: false,
                redis_busy_until: None,
                redis_view: None,
                fallback_outage: 0,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token (waiting up to the deadline); returns the instant it was granted.
    pub(crate) async fn acquire(
        self: &Arc<Bucket>,
        inner: &Arc<Inner>,
        ask: &Ask<'_>,
    ) -> Result<Instant, RateLimitError> {
        let mut now = ask.arrived;
        // Stage 1: the tool's own bucket, if its plan has one. Its slot is reserved (and given
        // back if Amazon's side refuses below).
        let tool_reserved = match ask.tool_limit {
            None => false,
            Some(limit) => {
                now = self
                    .acquire_tool(ask.tool, limit, now, ask.deadline)
                    .await?;
                true
            }
        };
        let result = self.acquire_amazon(inner, ask, now).await;
        if result.is_err() && tool_reserved {
            if let Some(g) = self
                .lock()
                .tools
                .get_mut(ask.tool)
                .and_then(|t| t.bucket.as_mut())
            {
                g.refund(Instant::now());
            }
        }
        result
    }

    /// Takes a token of the tool's own bucket (its plan's absolute rule `(rate, burst)`),
    /// waiting up to `deadline`; returns the instant it was granted. Used alone for a request
    /// answered without Amazon ([`super::Limiter::acquire_plan`]).
    pub(crate) async fn acquire_tool(
        &self,
        tool: &str,
        (rate, burst): (f64, u32),
        now: Instant,
        deadline: Instant,
    ) -> Result<Instant, RateLimitError> {
        let slot = {
            let mut st = self.lock();
            reserve_tool(&mut st.tool(tool).bucket, (rate, burst), now, deadline)?
        };
        Ok(sleep_to(slot, now).await)
    }

    async fn acquire_amazon(
        self: &Arc<Bucket>,
        inner: &Arc<Inner>,
        ask: &Ask<'_>,
        mut now: Instant,
    ) -> Result<Instant, RateLimitError> {
        loop {
            let mode = inner.mode(now);
            let step = {
                let mut st = self.lock();
                self.decide(&mut st, inner, ask, mode, now)
            };
            match step {
                Step::Granted(at) => return Ok(at),
                Step::Rejected(err) => return Err(err),
                Step::Wait(rx, key) => return self.wait(rx, key, ask).await,
                Step::AskRedis(max_wait) => {
                    match self.redis_direct(inner, ask, now, max_wait).await {
                        Direct::Done(result) => return result,
                        // Redis failed: decide again, now without it; or another tool goes
                        // first: decide again, now queued behind the deferral.
                        Direct::Failed | Direct::Queue => now = Instant::now(),
                    }
                }
            }
        }
    }

    fn decide(
        self: &Arc<Bucket>,
        st: &mut State,
        inner: &Arc<Inner>,
        ask: &Ask<'_>,
        mode: Mode,
        now: Instant,
    ) -> Step {
        match mode {
            Mode::Down => Step::Rejected(RateLimitError::Unavailable(
                "the rate limit store (Redis) is unreachable".into(),
            )),
            Mode::Local | Mode::Fallback => {
                if mode == Mode::Fallback {
                    inner.count_fallback();
                    st.enter_fallback(inner, now);
                }
                if st.queue.is_empty() && take_joint(&mut st.local, &ask.apps, now) {
                    st.admit(ask.tool);
                    return Step::Granted(now);
                }
                let (base, app_bound) = joint_slot(&st.local, &ask.apps, now);
                if app_bound {
                    inner.count_app_limited();
                }
                let (interval, rate) = (st.local.interval(), st.local.rate_per_second());
                self.enqueue(st, inner, ask, now, base, interval, rate)
            }
            Mode::Redis => {
                let busy = st.redis_busy_until.is_some_and(|u| u > now);
                if st.queue.is_empty() && !st.redis_in_flight && !busy && !st.dispatcher {
                    st.redis_in_flight = true;
                    return Step::AskRedis(ask.deadline.saturating_duration_since(now));
                }
                let base = st.redis_busy_until.map_or(now, |u| u.max(now));
                // Only Redis knows how much burst is left (other instances spend it too), so
                // the local queue must not assume one token per interval: that refused most
                // of a concurrent burst. Every waiter is queued, and the dispatcher asks Redis
                // for each, against that waiter's own deadline.
                let rate = st.amazon.rate_per_second;
                self.enqueue(st, inner, ask, now, base, Duration::ZERO, rate)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        self: &Arc<Bucket>,
        st: &mut State,
        inner: &Arc<Inner>,
        ask: &Ask<'_>,
        now: Instant,
        base: Instant,
        interval: Duration,
        rate: f64,
    ) -> Step {
        if st.queue.len() >= inner.config.max_queue {
            return Step::Rejected(RateLimitError::QueueFull {
                retry_after: (base + interval).saturating_duration_since(now),
                rate_per_second: rate,
            });
        }
        let tool_finish = st.tools.get(ask.tool).map_or(0, |t| t.finish[ask.lane]);
        let start = st.virtual_time[ask.lane].max(tool_finish);
        let finish = start.saturating_add((TAG_SCALE / ask.weight).ceil() as u64);
        st.seq += 1;
        let seq = st.seq;
        let natural = Key {
            lane: ask.lane,
            tag: start,
            seq,
            after: 0,
        };
        // Behind the last queued request it would otherwise push past its deadline.
        let mut key = natural;
        for (index, (k, w)) in st.queue.iter().enumerate() {
            if *k > natural && slot(base, interval, index + 1) > w.deadline {
                key = Key { after: seq, ..*k };
            }
        }
        let position = st.queue.range(..key).count();
        let own_slot = slot(base, interval, position);
        if own_slot > ask.deadline {
            return Step::Rejected(RateLimitError::Throttled {
                retry_after: own_slot - now,
                rate_per_second: rate,
            });
        }
        let (tx, rx) = oneshot::channel();
        st.queue.insert(
            key,
            Waiter {
                tool: ask.tool.into(),
                weight: ask.weight,
                deadline: ask.deadline,
                apps: ask.apps.clone(),
                tx,
            },
        );
        st.tool(ask.tool).finish[ask.lane] = finish;
        if !st.dispatcher {
            st.dispatcher = true;
            tokio::spawn(dispatch(Arc::clone(self), Arc::clone(inner)));
        }
        Step::Wait(rx, key)
    }

    async fn wait(
        &self,
        mut rx: oneshot::Receiver<Grant>,
        key: Key,
        ask: &Ask<'_>,
    ) -> Result<Instant, RateLimitError> {
        let _cancel = Cancel { bucket: self, key };
        match tokio::time::timeout_at(ask.deadline + GRACE, &mut rx).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => Err(RateLimitError::Unavailable(
                "the rate limiter stopped".into(),
            )),
            Err(_) => {
                // The dispatcher is late (it should never be): give up, unless the grant arrived.
                self.lock().queue.remove(&key);
                match rx.try_recv() {
                    Ok(grant) => grant,
                    Err(_) => {
                        tracing::error!(
                            operation = self.operation.key,
                            "Rate limit waiter passed its deadline without a decision."
                        );
                        Err(RateLimitError::Throttled {
                            retry_after: Duration::from_secs(1),
                            rate_per_second: self.lock().amazon.rate_per_second,
                        })
                    }
                }
            }
        }
    }

    /// One Redis decision for a request that found no queue.
    async fn redis_direct(
        &self,
        inner: &Arc<Inner>,
        ask: &Ask<'_>,
        now: Instant,
        max_wait: Duration,
    ) -> Direct {
        let (interval, burst, rate) = {
            let st = self.lock();
            (
                amazon_interval(st.amazon),
                st.amazon.burst,
                st.amazon.rate_per_second,
            )
        };
        let in_flight = InFlight { bucket: self };
        let candidate = Candidate {
            tool: ask.tool,
            lane: ask.lane,
            increment: fair::increment(ask.weight),
            max_wait,
            backlogged: false,
        };
        let reply = self
            .redis_take(inner, interval, burst, &ask.apps, &[candidate])
            .await;
        let now_after = Instant::now();
        let outcome = {
            let mut st = self.lock();
            st.redis_in_flight = false;
            let Some(r) = reply else {
                return Direct::Failed;
            };
            st.redis_view = Some((r.tokens, now_after));
            note_apps(inner, &ask.apps, &r, now_after);
            match r.verdict {
                Verdict::Granted { wait, .. } => {
                    // The wait counts from the answer: never forward before the reserved slot.
                    st.redis_busy_until = Some(now_after + wait);
                    st.admit(ask.tool);
                    Ok(if wait.is_zero() {
                        now
                    } else {
                        now_after + wait
                    })
                }
                // Its deadline comes before the bucket's next slot.
                Verdict::NoneLeft => Err(RateLimitError::Throttled {
                    retry_after: r.refused.wait,
                    rate_per_second: rate,
                }),
                Verdict::Deferred { retry, estimate } if now_after + retry > ask.deadline => {
                    Err(RateLimitError::Deferred {
                        retry_after: estimate,
                        rate_per_second: rate,
                    })
                }
                Verdict::Deferred { retry, .. } => {
                    st.redis_busy_until = Some(now_after + retry);
                    return Direct::Queue;
                }
            }
        };
        drop(in_flight);
        if let Ok(at) = outcome {
            if at > now_after {
                tokio::time::sleep_until(at).await;
            }
        }
        Direct::Done(outcome)
    }

    async fn redis_take(
        &self,
        inner: &Inner,
        interval: Duration,
        burst: u32,
        apps: &Apps,
        candidates: &[Candidate<'_>],
    ) -> Option<Reply> {
        let (redis, key) = (inner.redis.as_ref()?, self.redis_key.as_deref()?);
        let mut takes = vec![Take {
            key,
            interval,
            burst,
        }];
        let app_limits: Vec<(&str, Limits)> = apps
            .iter()
            .filter_map(|a| Some((a.redis_key.as_deref()?, a.lock().amazon)))
            .collect();
        takes.extend(app_limits.iter().map(|(key, limits)| Take {
            key,
            interval: amazon_interval(*limits),
            burst: limits.burst,
        }));
        match redis.take(&takes, candidates).await {
            Ok(reply) => Some(reply),
            Err(e) => {
                inner.redis_failed(&e);
                None
            }
        }
    }

    /// Amazon reported the real rate: adopt it (times the safety factor).
    pub(crate) fn observe_rate(&self, inner: &Inner, rate_per_second: f64) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.observed == Some(rate_per_second) {
            return;
        }
        st.observed = Some(rate_per_second);
        st.amazon = inner.effective(st.plan, st.observed);
        let local = inner.local_share(st.amazon);
        st.local
            .reconfigure(local.rate_per_second, local.burst, now);
        st.shed(now, inner.mode(now));
        drop(st);
        self.wake.notify_one();
    }

    /// Amazon answered 429: empty the bucket (locally, and in Redis when shared).
    pub(crate) fn observe_throttled(self: &Arc<Bucket>, inner: &Arc<Inner>) {
        let now = Instant::now();
        let (interval, burst) = {
            let mut st = self.lock();
            st.local.drain(now);
            st.redis_view = Some((0.0, now));
            st.shed(now, inner.mode(now));
            (amazon_interval(st.amazon), st.amazon.burst)
        };
        self.wake.notify_one();
        if let Some(key) = &self.redis_key {
            spawn_redis_drain(inner, key, interval, burst);
        }
    }

    /// The bucket's figures for status: limits, tokens now, queue depth, per-tool use.
    pub(crate) fn figures(&self, inner: &Inner) -> Figures {
        let now = Instant::now();
        let st = self.lock();
        let tokens = match (inner.mode(now), st.redis_view) {
            (Mode::Redis, Some((tokens, at))) => {
                let refill =
                    now.saturating_duration_since(at).as_secs_f64() * st.amazon.rate_per_second;
                (tokens + refill).clamp(0.0, f64::from(st.amazon.burst))
            }
            (Mode::Redis, None) => f64::from(st.amazon.burst),
            _ => st.local.tokens(now),
        };
        let mut tools: Vec<(String, ToolFigures)> = st
            .tools
            .iter()
            .map(|(name, t)| {
                (
                    name.to_string(),
                    ToolFigures {
                        admitted: t.admitted,
                        waiting: st.queue.values().filter(|w| w.tool == *name).count(),
                    },
                )
            })
            .collect();
        tools.sort_by(|a, b| a.0.cmp(&b.0));
        Figures {
            limits: st.amazon,
            tokens,
            queue_depth: st.queue.len(),
            tools,
        }
    }
}

impl State {
    /// Once per Redis outage, before the fallback bucket decides: empty it. What the other
    /// instances spent of the shared bucket is unknown, so the fallback hands out no burst,
    /// only its share of the rate from the moment the outage began (as a restart does).
    fn enter_fallback(&mut self, inner: &Inner, now: Instant) {
        let outage = inner.redis.as_ref().map_or(0, |r| r.outages());
        if self.fallback_outage != outage {
            self.fallback_outage = outage;
            self.local.drain(now);
        }
    }

    fn tool(&mut self, tool: &str) -> &mut ToolState {
        if !self.tools.contains_key(tool) {
            self.tools.insert(tool.into(), ToolState::default());
        }
        self.tools.get_mut(tool).expect("inserted above")
    }

    fn admit(&mut self, tool: &str) {
        self.tool(tool).admitted += 1;
    }

    /// Takes a waiter out of the queue to serve or refuse it (the lane's virtual time moves on).
    fn leave(&mut self, key: Key) -> Option<Waiter> {
        let waiter = self.queue.remove(&key)?;
        self.virtual_time[key.lane] = self.virtual_time[key.lane].max(key.tag);
        Some(waiter)
    }

    /// The waiters a Redis decision offers (`fair.rs`): the first waiter of each distinct tool
    /// in queue order, [`fair::MAX_CANDIDATES`] at most, taking the same application buckets as
    /// the head (the script takes one set of buckets); and the head's application buckets.
    /// Waiters whose request went away (closed) are dropped on the way and not counted towards
    /// [`fair::SCAN_LIMIT`], so however many of them sit in the queue, the live waiters behind
    /// are offered.
    fn offer(&mut self) -> (Vec<Offered>, Apps) {
        let mut offered: Vec<Offered> = Vec::new();
        // Tools whose first waiter takes other application buckets: not offered this time.
        let mut passed: Vec<&str> = Vec::new();
        let mut closed: Vec<Key> = Vec::new();
        let mut head: Option<&Apps> = None;
        let mut scanned = 0;
        for (key, w) in &self.queue {
            if w.tx.is_closed() {
                closed.push(*key);
                continue;
            }
            if scanned == fair::SCAN_LIMIT {
                // A queue this long: whoever was offered has more waiting behind, most likely.
                offered.iter_mut().for_each(|o| o.backlogged = true);
                break;
            }
            scanned += 1;
            if let Some(o) = offered.iter_mut().find(|o| o.tool == w.tool) {
                o.backlogged = true;
                continue;
            }
            if passed.contains(&&*w.tool) {
                continue;
            }
            let head = *head.get_or_insert(&w.apps);
            if !head.same(&w.apps) {
                passed.push(&w.tool);
            } else if offered.len() < fair::MAX_CANDIDATES {
                offered.push(Offered {
                    key: *key,
                    tool: w.tool.clone(),
                    weight: w.weight,
                    deadline: w.deadline,
                    backlogged: false,
                });
            }
        }
        let head = head.cloned().unwrap_or_default();
        for key in closed {
            self.queue.remove(&key);
        }
        (offered, head)
    }

    /// Refuses every waiter of `tools` taking the buckets `apps` whose deadline comes before
    /// `until`, the bucket's next slot (Redis refused those tools' first waiters on the spot: no
    /// grant comes before that slot).
    fn refuse_late(
        &mut self,
        tools: &[&str],
        apps: &Apps,
        until: Instant,
        retry_after: Duration,
        rate: f64,
    ) {
        let late: Vec<Key> = (self.queue.iter())
            .filter(|(_, w)| w.deadline < until && tools.contains(&&*w.tool) && w.apps.same(apps))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(w) = self.leave(key) {
                let _ = w.tx.send(Err(RateLimitError::Throttled {
                    retry_after,
                    rate_per_second: rate,
                }));
            }
        }
    }

    /// Refuses the waiters whose deadline comes before `until` (the next Redis decision): other
    /// tools went first (`fair.rs`) until their deadline; `retry_after` is the script's estimate
    /// of when this instance's waiters may go.
    fn refuse_before(&mut self, until: Instant, retry_after: Duration, rate: f64) {
        let late: Vec<Key> = (self.queue.iter())
            .filter(|(_, w)| w.deadline < until)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(w) = self.queue.remove(&key) {
                let _ = w.tx.send(Err(RateLimitError::Deferred {
                    retry_after,
                    rate_per_second: rate,
                }));
            }
        }
    }

    /// After Amazon's capacity shrank: refuse at once the waiters that can no longer be served
    /// by their deadline (local GCRA only; in Redis mode the head's reservation decides).
    fn shed(&mut self, now: Instant, mode: Mode) {
        // With Redis deciding, the local bucket is only the fallback: its slots say nothing
        // about when Redis will grant, and shedding on them refused most of a shared burst.
        if mode == Mode::Redis {
            return;
        }
        let base = self.local.next_slot(now);
        let interval = self.local.interval();
        let rate = self.local.rate_per_second();
        let mut kept = 0;
        let mut late = Vec::new();
        for (key, w) in &self.queue {
            let s = slot(base, interval, kept);
            if s > w.deadline {
                late.push((*key, s));
            } else {
                kept += 1;
            }
        }
        for (key, s) in late {
            if let Some(w) = self.queue.remove(&key) {
                let _ = w.tx.send(Err(RateLimitError::Throttled {
                    retry_after: s - now,
                    rate_per_second: rate,
                }));
            }
        }
    }
}

/// Reserves a token of a tool's own bucket (its plan's absolute rule `(rate, burst)`, created
/// full on first use, reconfigured when the plan changed) for the slot it returns, or refuses
/// when that slot is past `deadline`.
pub(crate) fn reserve_tool(
    bucket: &mut Option<Gcra>,
    (rate, burst): (f64, u32),
    now: Instant,
    deadline: Instant,
) -> Result<Instant, RateLimitError> {
    let g = bucket.get_or_insert_with(|| Gcra::new(rate, burst, now));
    if !g.has(rate, burst) {
        g.reconfigure(rate, burst, now);
    }
    let slot = g.next_slot(now);
    if slot > deadline {
        return Err(RateLimitError::Throttled {
            retry_after: slot - now,
            rate_per_second: g.rate_per_second(),
        });
    }
    Ok(g.reserve(now))
}

/// Waits for a reserved slot; returns the instant of the grant (`now` when it was there).
pub(crate) async fn sleep_to(slot: Instant, now: Instant) -> Instant {
    if slot > now {
        tokio::time::sleep_until(slot).await;
        return Instant::now();
    }
    now
}

/// Empties a bucket in Redis in the background (Amazon answered 429; the request that saw it
/// does not wait for this).
pub(crate) fn spawn_redis_drain(inner: &Arc<Inner>, key: &str, interval: Duration, burst: u32) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if inner.redis.is_none() {
        return;
    }
    let inner = Arc::clone(inner);
    let key = key.to_string();
    handle.spawn(async move {
        if let Some(redis) = inner.redis.as_ref() {
            let take = Take {
                key: &key,
                interval,
                burst,
            };
            if let Err(e) = redis.drain(take).await {
                inner.redis_failed(&e);
            }
        }
    });
}

/// Keeps the application buckets' view of Redis for status, and counts a decision an
/// application bucket set.
fn note_apps(inner: &Inner, apps: &Apps, reply: &Reply, at: Instant) {
    for (app, tokens) in apps.iter().zip(reply.app_tokens) {
        app.lock().redis_view = Some((tokens, at));
    }
    let decided = !matches!(reply.verdict, Verdict::Deferred { .. });
    if reply.app_bound && decided {
        inner.count_app_limited();
    }
}

fn slot(base: Instant, interval: Duration, index: usize) -> Instant {
    base + interval * u32::try_from(index).unwrap_or(u32::MAX)
}

pub(crate) fn amazon_interval(limits: Limits) -> Duration {
    super::gcra::interval(limits.rate_per_second)
}

enum Next {
    Exit,
    Sleep(Option<Instant>),
    GrantAt(Waiter, Instant),
    Redis(Round),
}

/// One waiter offered to Redis: the first of its tool in the local queue.
struct Offered {
    key: Key,
    tool: Box<str>,
    weight: f64,
    deadline: Instant,
    /// More of the same tool wait behind it here.
    backlogged: bool,
}

/// One Redis decision of the dispatcher: the waiters offered and the bucket's limits.
struct Round {
    offered: Vec<Offered>,
    apps: Apps,
    interval: Duration,
    burst: u32,
    rate: f64,
}

/// Serves a bucket's queue until it is empty.
async fn dispatch(bucket: Arc<Bucket>, inner: Arc<Inner>) {
    loop {
        let now = Instant::now();
        let mode = inner.mode(now);
        let next = {
            let mut st = bucket.lock();
            if mode == Mode::Fallback {
                st.enter_fallback(&inner, now);
            }
            next_step(&mut st, mode, now)
        };
        match next {
            Next::Exit => return,
            Next::GrantAt(waiter, at) => {
                tokio::time::sleep_until(at).await;
                let _ = waiter.tx.send(Ok(at));
            }
            Next::Sleep(until) => match until {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = bucket.wake.notified() => {}
                    }
                }
                None => bucket.wake.notified().await,
            },
            Next::Redis(round) => {
                if let Some((waiter, at)) = redis_round(&bucket, &inner, &round, now).await {
                    let now_after = Instant::now();
                    if at > now_after {
                        tokio::time::sleep_until(at).await;
                    }
                    let _ = waiter.tx.send(Ok(at.max(now_after)));
                }
            }
        }
    }
}

/// Asks Redis which of the offered waiters goes (`fair.rs`); refuses those that cannot wait for
/// the bucket's next slot and returns the waiter granted and the instant of its slot. `None`: no
/// waiter was granted (every one offered was refused; or deferred: the bucket is busy until the
/// retry hint, and waiters that cannot wait that long are refused as deferred; or Redis failed:
/// the waiters stay queued and the next round decides without Redis).
async fn redis_round(
    bucket: &Bucket,
    inner: &Inner,
    round: &Round,
    now: Instant,
) -> Option<(Waiter, Instant)> {
    let candidates: Vec<Candidate<'_>> = round
        .offered
        .iter()
        .map(|o| Candidate {
            tool: &o.tool,
            lane: o.key.lane,
            increment: fair::increment(o.weight),
            max_wait: o.deadline.saturating_duration_since(now),
            backlogged: o.backlogged,
        })
        .collect();
    let reply = bucket
        .redis_take(inner, round.interval, round.burst, &round.apps, &candidates)
        .await;
    let now_after = Instant::now();
    let mut st = bucket.lock();
    st.redis_in_flight = false;
    let r = reply?;
    st.redis_view = Some((r.tokens, now_after));
    note_apps(inner, &round.apps, &r, now_after);
    // Those that could not wait for the bucket's next slot, whatever was decided for the rest;
    // and every waiter of their tools behind them that cannot wait for it either (one decision,
    // not one round trip each).
    let refused: Vec<&str> = (round.offered.iter().enumerate())
        .filter(|(i, _)| r.refused.contains(*i))
        .map(|(_, o)| &*o.tool)
        .collect();
    if !refused.is_empty() {
        let until = now_after + r.refused.wait;
        st.refuse_late(&refused, &round.apps, until, r.refused.wait, round.rate);
    }
    match r.verdict {
        Verdict::Granted { index, wait } => {
            let at = now_after + wait;
            st.redis_busy_until = Some(at);
            // A waiter that went away meanwhile loses its slot; that cannot exceed the plan.
            let waiter = st.leave(round.offered.get(index)?.key)?;
            st.admit(&waiter.tool);
            Some((waiter, at))
        }
        Verdict::Deferred { retry, estimate } => {
            let until = now_after + retry;
            st.redis_busy_until = Some(until);
            st.refuse_before(until, estimate, round.rate);
            None
        }
        Verdict::NoneLeft => None,
    }
}

fn next_step(st: &mut State, mode: Mode, now: Instant) -> Next {
    while let Some(entry) = st.queue.first_entry() {
        if entry.get().tx.is_closed() {
            entry.remove();
        } else {
            break;
        }
    }
    if st.queue.is_empty() {
        st.dispatcher = false;
        return Next::Exit;
    }
    match mode {
        Mode::Down => {
            for (_, w) in std::mem::take(&mut st.queue) {
                let _ = w.tx.send(Err(RateLimitError::Unavailable(
                    "the rate limit store (Redis) is unreachable".into(),
                )));
            }
            st.dispatcher = false;
            Next::Exit
        }
        Mode::Local | Mode::Fallback => {
            let mut head_slot = None;
            while let Some(entry) = st.queue.first_entry() {
                if entry.get().tx.is_closed() {
                    entry.remove();
                    continue;
                }
                let (slot, app_bound) = joint_slot(&st.local, &entry.get().apps, now);
                if slot > now {
                    if slot > entry.get().deadline {
                        // Other sellers took the application-wide tokens it was counting on.
                        let w = entry.remove();
                        let _ = w.tx.send(Err(RateLimitError::Throttled {
                            retry_after: slot - now,
                            rate_per_second: st.local.rate_per_second(),
                        }));
                        continue;
                    }
                    if app_bound {
                        // Reserve the application slot now (every bucket at that one instant):
                        // many sellers' dispatchers waking for the same application token
                        // would otherwise race for it at every slot.
                        let apps = entry.get().apps.clone();
                        reserve_joint(&mut st.local, &apps, slot);
                        let (key, w) = st.queue.pop_first().expect("the head is there");
                        st.virtual_time[key.lane] = st.virtual_time[key.lane].max(key.tag);
                        st.admit(&w.tool);
                        return Next::GrantAt(w, slot);
                    }
                    head_slot = Some(slot);
                    break;
                }
                let apps = entry.get().apps.clone();
                if !take_joint(&mut st.local, &apps, now) {
                    head_slot = Some(now);
                    break;
                }
                let (key, w) = st.queue.pop_first().expect("the head is there");
                st.virtual_time[key.lane] = st.virtual_time[key.lane].max(key.tag);
                st.admit(&w.tool);
                // A waiter that went away just now loses its token; that cannot exceed the plan.
                let _ = w.tx.send(Ok(now));
            }
            if st.queue.is_empty() {
                st.dispatcher = false;
                Next::Exit
            } else {
                Next::Sleep(head_slot)
            }
        }
        Mode::Redis => {
            if st.redis_in_flight {
                return Next::Sleep(None);
            }
            if let Some(until) = st.redis_busy_until.filter(|u| *u > now) {
                return Next::Sleep(Some(until));
            }
            let (offered, apps) = st.offer();
            if offered.is_empty() {
                st.dispatcher = false;
                return Next::Exit;
            }
            st.redis_in_flight = true;
            Next::Redis(Round {
                offered,
                apps,
                interval: amazon_interval(st.amazon),
                burst: st.amazon.burst,
                rate: st.amazon.rate_per_second,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(now: Instant) -> State {
        let plan = UsagePlan {
            rate_per_second: 1.0,
            burst: 1,
        };
        State {
            plan,
            observed: None,
            amazon: Limits {
                rate_per_second: 1.0,
                burst: 1,
            },
            local: Gcra::new(1.0, 1, now),
            queue: BTreeMap::new(),
            virtual_time: [0; 3],
            tools: HashMap::new(),
            seq: 0,
            dispatcher: true,
            redis_in_flight: false,
            redis_busy_until: None,
            redis_view: None,
            fallback_outage: 0,
        }
    }

    /// Queues a waiter of `tool` at the back; dropping the receiver cancels it.
    fn push(st: &mut State, tool: &str, now: Instant) -> oneshot::Receiver<Grant> {
        st.seq += 1;
        let key = Key {
            lane: 1,
            tag: st.seq,
            seq: st.seq,
            after: 0,
        };
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tool: tool.into(),
            weight: 1.0,
            deadline: now + Duration::from_secs(10),
            apps: Apps::default(),
            tx,
        };
        st.queue.insert(key, waiter);
        rx
    }

    fn offered_tools(next: Next) -> Vec<String> {
        match next {
            Next::Redis(round) => round.offered.iter().map(|o| o.tool.to_string()).collect(),
            Next::Exit => vec!["(exit)".into()],
            Next::Sleep(_) | Next::GrantAt(..) => vec!["(no round)".into()],
        }
    }

    #[test]
    fn live_waiters_behind_hundreds_of_cancelled_ones_are_still_offered_to_redis() {
        let now = Instant::now();
        // A live head, 300 cancelled waiters, then a live waiter of another tool.
        let mut st = state(now);
        let _head = push(&mut st, "a", now);
        for _ in 0..300 {
            drop(push(&mut st, "gone", now));
        }
        let _live = push(&mut st, "b", now);
        assert_eq!(
            offered_tools(next_step(&mut st, Mode::Redis, now)),
            ["a", "b"]
        );
        assert_eq!(st.queue.len(), 2, "the cancelled waiters are dropped");
        // No live head: the dispatcher does not stop while a live waiter is queued.
        let mut st = state(now);
        for _ in 0..300 {
            drop(push(&mut st, "gone", now));
        }
        let _live = push(&mut st, "b", now);
        assert_eq!(offered_tools(next_step(&mut st, Mode::Redis, now)), ["b"]);
        assert!(st.dispatcher);
    }
}
