//! Amazon's buckets in Redis: one atomic Lua script per decision (EVALSHA), on Redis's clock.
//!
//! The script is the same GCRA as [`super::gcra`]: the bucket is a hash `{tat, iv}` (theoretical
//! arrival time and interval, in microseconds of Redis server time). A `take` offers the
//! waiters at the head of the instance's queue; the script picks the one that may go by the
//! fairness state kept next to the bucket (`fair.rs`: lanes and shares across instances), or
//! defers them all. It reserves the next slot for the chosen waiter when that slot is no later
//! than its `max_wait` from now and answers how long to wait for it, so a waiting request costs
//! one round trip and no retry; a slot too far away is not reserved and its wait comes back as
//! the retry-after. When the interval changes (Amazon reported another rate),
//! the tokens owed are kept. Keys expire a second after the bucket would be full again (an absent
//! key is a full bucket). Keys are `<prefix>rl:{<seller>}:<operation>` for a seller's bucket
//! (`...:fair` for its fairness state) and
//! `<prefix>rl:{app}:<operation>[:<kind>]` for an application-wide one; one script takes a
//! seller's bucket together with the application buckets, so the keys of one call span hash
//! slots: the limiter needs one Redis server (or a primary with replicas), not a Cluster.
//!
//! Connection handling: a lazily connecting [`ConnectionManager`] (reconnects by itself), every
//! call bounded by the configured timeout. After a failure the limiter stays local (or closed)
//! for `retry_backoff`, then tries Redis again on the next decision.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::time::Instant;

use super::config::RedisSettings;
use super::fair::Candidate;
use super::RateLimitError;
use crate::catalog::CallKind;

/// The GCRA decision over one or more buckets taken together (the seller's bucket first, then
/// the application-wide ones) and, for a take, the fairness decision of which waiter gets the
/// slot (`fair.rs`). KEYS: the buckets, the epoch, then (take) the seller bucket's fairness
/// hash; ARGV: "take"|"drain", the number of buckets, interval_us and burst per bucket, then
/// (take) the candidates (see `fair_candidates`). Every bucket is taken at one slot, the latest
/// of their next slots, or none is. Candidates whose deadline comes before that slot are refused
/// on the spot and never chosen; they count as waiting (`fair_split`) only when the seller's
/// bucket set the slot and more of them wait (a tool an application bucket keeps from ever being
/// served holds no one back). Returns {status (1 granted, 2 deferred: no candidate left may go yet, 0 none
/// left: every candidate was refused), wait_us (to the slot, or the retry hint when deferred),
/// index of the bucket that set the slot (1 = the seller's), index of the chosen candidate (0
/// when none), the refused candidates (bit j-1 for candidate j), wait_us to the slot (their
/// retry-after), the deferral estimate in us (when deferred: see `fair_estimate`), then
/// milli-tokens left per bucket}.
const BODY: &str = r#"
local op = ARGV[1]
local n = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The epoch key is written when a limiter connects; missing, Redis lost its data (a restart
-- without persistence): every bucket without a key is taken as emptied at the epoch.
local epoch = tonumber(redis.call('GET', KEYS[n + 1]))
if not epoch then
  epoch = now
  redis.call('SET', KEYS[n + 1], string.format('%.0f', now))
end
local tats, ivs, taus = {}, {}, {}
local slot, bound = now, 1
for i = 1, n do
  local iv = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local h = redis.call('HMGET', KEYS[i], 'tat', 'iv')
  local tat = tonumber(h[1]) or (epoch + iv * burst)
  local old_iv = tonumber(h[2]) or iv
  if tat < now then tat = now end
  if old_iv ~= iv then tat = now + math.ceil((tat - now) * iv / old_iv) end
  tats[i], ivs[i], taus[i] = tat, iv, iv * burst
  local s = tat + iv - taus[i]
  if s > slot then slot, bound = s, i end
end
local function store(i)
  redis.call('HSET', KEYS[i], 'tat', string.format('%.0f', tats[i]), 'iv', string.format('%.0f', ivs[i]))
  redis.call('PEXPIRE', KEYS[i], math.ceil((tats[i] - now) / 1000) + 1000)
end
local function answer(status, wait, chosen, refused, estimate)
  local out = {status, wait, bound, chosen, refused, slot - now, estimate}
  for i = 1, n do out[7 + i] = math.floor((taus[i] - (tats[i] - now)) * 1000 / ivs[i]) end
  return out
end
if op == 'drain' then
  for i = 1, n do
    if tats[i] < now + taus[i] then tats[i] = now + taus[i] end
    store(i)
  end
  return answer(1, 0, 0, 0, 0)
end
local wait = slot - now
local fair = KEYS[n + 2]
local margin, hint, cands = fair_candidates(3 + 2 * n)
local live, waiting, refused = fair_split(cands, wait, bound == 1)
if #waiting == 0 then return answer(0, wait, 0, refused, 0) end
local st = fair_load(fair)
local j, s, min_start = fair_pick(st, waiting, now, now + hint + margin)
if not j then
  fair_save(fair, st, now, tats[1] - now)
  if #live == 0 then return answer(0, wait, 0, refused, 0) end
  local estimate = fair_estimate(st, live, now, wait, ivs[bound])
  return answer(2, hint, 0, refused, estimate)
end
local c = waiting[j]
for i = 1, n do
  if tats[i] < slot then tats[i] = slot end
  tats[i] = tats[i] + ivs[i]
  store(i)
end
fair_grant(st, c, s, min_start, slot, margin, waiting)
fair_save(fair, st, now, tats[1] - now)
return answer(1, wait, c.index, refused, 0)
"#;

/// One bucket of a decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Take<'a> {
    /// Its key.
    pub(crate) key: &'a str,
    /// Time between two tokens.
    pub(crate) interval: Duration,
    /// Bucket size.
    pub(crate) burst: u32,
}

/// What the script decided for the waiters offered to it (besides the refusals in
/// [`Reply::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Candidate `index` has the slot `wait` from now.
    Granted { index: usize, wait: Duration },
    /// No candidate left may go yet (another tool is behind on its share, or waits in a higher
    /// lane): ask again after `retry`; by the script's estimate they may go in `estimate`.
    Deferred { retry: Duration, estimate: Duration },
    /// Every candidate was refused: none could wait for the bucket's next slot.
    NoneLeft,
}

/// The candidates refused on the spot: their deadline comes before the bucket's next slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Refused {
    /// Bit `i` set: candidate `i` (from 0) is refused.
    pub(crate) mask: u8,
    /// Time to the bucket's next slot (their retry-after).
    pub(crate) wait: Duration,
}

impl Refused {
    /// Whether candidate `index` (from 0) is refused.
    pub(crate) fn contains(self, index: usize) -> bool {
        index < 8 && self.mask & (1 << index) != 0
    }
}

/// One answer of the script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reply {
    /// The decision (a drain is always `Granted` for index 0).
    pub(crate) verdict: Verdict,
    /// The candidates refused on the spot.
    pub(crate) refused: Refused,
    /// Tokens left in the seller's bucket after the decision (negative: slots reserved ahead).
    pub(crate) tokens: f64,
    /// Whether an application-wide bucket set the slot (it was the one without a token).
    pub(crate) app_bound: bool,
    /// Tokens left in each application bucket, in the order they were given.
    pub(crate) app_tokens: [f64; 2],
}

/// The Redis side of the limiter.
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    script: Script,
    settings: RedisSettings,
    /// Redis is not tried again before this instant.
    down_until: Mutex<Option<Instant>>,
    /// Outages so far (each failure that found Redis reachable starts one): a bucket empties
    /// its fallback once per outage.
    outages: std::sync::atomic::AtomicU64,
    /// Script calls so far (decisions and drains, answered or not).
    calls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("key_prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Prepares the connection (lazily: an unreachable server is a runtime condition, not a
    /// startup error) and loads the script when the server answers.
    pub(crate) async fn connect(settings: RedisSettings) -> Result<RedisBackend, RateLimitError> {
        // The error is not quoted: Redis errors may repeat the URL, password included.
        let client = (settings.access)
            .client(settings.url.expose())
            .map_err(|_| RateLimitError::InvalidSettings("the Redis URL is not valid".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(settings.retry_backoff);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            RateLimitError::InvalidSettings(format!("redis: {}", crate::store::redis::describe(&e)))
        })?;
        let backend = RedisBackend {
            conn,
            script: Script::new(&format!("{}{BODY}", super::fair::FAIR_LUA)),
            settings,
            down_until: Mutex::new(None),
            outages: std::sync::atomic::AtomicU64::new(0),
            calls: std::sync::atomic::AtomicU64::new(0),
        };
        let mut conn = backend.conn.clone();
        match tokio::time::timeout(
            backend.settings.timeout,
            backend.script.load_async(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => backend.failed(&crate::store::redis::describe(&e)),
            Err(_) => backend.failed("timed out"),
        }
        // A fresh deployment starts with full buckets: epoch 0, unless one is there already.
        // (Unreachable now: the first decision that finds no epoch sets it to its own time.)
        let mut set = redis::cmd("SET");
        set.arg(backend.epoch_key()).arg(0).arg("NX");
        if let Ok(Err(e)) =
            tokio::time::timeout(backend.settings.timeout, set.exec_async(&mut conn)).await
        {
            backend.failed(&crate::store::redis::describe(&e));
        }
        Ok(backend)
    }

    /// Whether Redis should be asked now (not within the back-off after a failure).
    pub(crate) fn available(&self, now: Instant) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.is_none_or(|until| now >= until)
    }

    /// Records a failure: decisions stay away from Redis for the back-off.
    pub(crate) fn failed(&self, reason: &str) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            self.outages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %reason, "Rate limit store (Redis) unreachable; decisions continue without it.");
        }
        *down = Some(Instant::now() + self.settings.retry_backoff);
    }

    /// How many outages have begun (see [`RedisBackend::failed`]).
    pub(crate) fn outages(&self) -> u64 {
        self.outages.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times the script was called (see [`RedisBackend::calls`]).
    #[cfg(test)]
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn recovered(&self) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.take().is_some() {
            tracing::info!("Rate limit store (Redis) reachable again.");
        }
    }

    /// Asks Redis whether it takes a write (readiness). A success ends a back-off early; a
    /// failure does not start one: only decisions do, so a slow probe never refuses requests.
    pub(crate) async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(format!("{}readyz", self.settings.key_prefix))
            .arg(1)
            .arg("PX")
            .arg(10_000);
        let call = set.exec_async(&mut conn);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(())) => {
                self.recovered();
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::store::redis::describe(&e), "Rate limit store (Redis) readiness probe failed.");
                false
            }
            Err(_) => {
                tracing::debug!("Rate limit store (Redis) readiness probe timed out.");
                false
            }
        }
    }

    /// The key of a seller's bucket for an operation.
    pub(crate) fn key(&self, seller: &str, operation: &str) -> String {
        format!("{}rl:{{{seller}}}:{operation}", self.settings.key_prefix)
    }

    /// The epoch key: written (as 0: buckets without a key are full) when a limiter connects,
    /// and never expires, so its absence means Redis lost its data.
    fn epoch_key(&self) -> String {
        format!("{}rl:epoch", self.settings.key_prefix)
    }

    /// The key of an application-wide bucket (every seller's), per kind of call.
    pub(crate) fn app_key(&self, operation: &str, kind: Option<CallKind>) -> String {
        match kind {
            None => format!("{}rl:{{app}}:{operation}", self.settings.key_prefix),
            Some(kind) => format!("{}rl:{{app}}:{operation}:{kind}", self.settings.key_prefix),
        }
    }

    /// The key of a seller bucket's fairness state (same hash tag as the bucket).
    pub(crate) fn fair_key(bucket_key: &str) -> String {
        format!("{bucket_key}:fair")
    }

    /// Gives the first eligible candidate (`fair.rs`) one token of every bucket at their joint
    /// slot, when that slot is within the candidate's wait. One round trip.
    pub(crate) async fn take(
        &self,
        buckets: &[Take<'_>],
        candidates: &[Candidate<'_>],
    ) -> Result<Reply, String> {
        let hint = super::fair::retry_hint(buckets.first().map_or(Duration::ZERO, |b| b.interval));
        let mut fair = vec![
            micros(super::fair::ACTIVE_MARGIN).to_string(),
            micros(hint).to_string(),
            candidates.len().to_string(),
        ];
        for c in candidates {
            fair.extend([
                c.tool.to_string(),
                c.lane.to_string(),
                c.increment.to_string(),
                micros(c.max_wait).to_string(),
                u8::from(c.backlogged).to_string(),
            ]);
        }
        let fair_key = buckets.first().map(|b| RedisBackend::fair_key(b.key));
        let reply = self
            .run(buckets, "take", fair_key.as_deref(), &fair)
            .await?;
        let verdict = Self::verdict(&reply, candidates.len()).inspect_err(|e| self.failed(e))?;
        // At most eight candidates fit the mask (`fair::MAX_CANDIDATES` is four).
        let offered = (1i64 << candidates.len().min(8)) - 1;
        if reply.refused & !offered != 0 {
            let e = format!("the limiter script refused candidates {:#b}", reply.refused);
            self.failed(&e);
            return Err(e);
        }
        Ok(Reply {
            verdict,
            refused: Refused {
                mask: u8::try_from(reply.refused).unwrap_or(0),
                wait: reply.slot_wait,
            },
            tokens: reply.tokens,
            app_bound: reply.app_bound,
            app_tokens: reply.app_tokens,
        })
    }

    /// The script's decision, checked against what was offered to it.
    fn verdict(reply: &Raw, offered: usize) -> Result<Verdict, String> {
        let index = |i: i64| {
            usize::try_from(i)
                .ok()
                .filter(|i| (1..=offered).contains(i))
                .map(|i| i - 1)
                .ok_or_else(|| format!("the limiter script chose candidate {i}"))
        };
        match reply.status {
            1 => Ok(Verdict::Granted {
                index: index(reply.chosen)?,
                wait: reply.wait,
            }),
            0 => Ok(Verdict::NoneLeft),
            2 => Ok(Verdict::Deferred {
                retry: reply.wait,
                estimate: reply.estimate.max(reply.wait),
            }),
            other => Err(format!("the limiter script answered status {other}")),
        }
    }

    /// Empties a bucket (Amazon answered 429).
    pub(crate) async fn drain(&self, bucket: Take<'_>) -> Result<Reply, String> {
        let raw = self.run(&[bucket], "drain", None, &[]).await?;
        Ok(Reply {
            verdict: Verdict::Granted {
                index: 0,
                wait: Duration::ZERO,
            },
            refused: Refused::default(),
            tokens: raw.tokens,
            app_bound: false,
            app_tokens: raw.app_tokens,
        })
    }

    async fn run(
        &self,
        buckets: &[Take<'_>],
        op: &str,
        fair_key: Option<&str>,
        fair: &[String],
    ) -> Result<Raw, String> {
        let result = self.call(buckets, op, fair_key, fair).await;
        match result {
            Ok(v) => {
                self.recovered();
                Ok(v)
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    async fn call(
        &self,
        buckets: &[Take<'_>],
        op: &str,
        fair_key: Option<&str>,
        fair: &[String],
    ) -> Result<Raw, String> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(op).arg(buckets.len());
        for b in buckets.iter() {
            // Whole microseconds, rounded up like the local interval.
            let interval_us = b.interval.as_nanos().div_ceil(1000).max(1);
            let interval_us = u64::try_from(interval_us).unwrap_or(u64::MAX);
            invocation.key(b.key).arg(interval_us).arg(b.burst);
        }
        invocation.key(self.epoch_key());
        if let Some(key) = fair_key {
            invocation.key(key);
        }
        for a in fair {
            invocation.arg(a);
        }
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let v = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(v)) if v.len() == 7 + buckets.len() => v,
            Ok(Ok(v)) => return Err(format!("the limiter script answered {} values", v.len())),
            Ok(Err(e)) => return Err(crate::store::redis::describe(&e)),
            Err(_) => return Err(format!("no answer within {:?}", self.settings.timeout)),
        };
        let us = |x: i64| Duration::from_micros(u64::try_from(x).unwrap_or(0));
        let tokens = |i: usize| v.get(7 + i).map_or(0.0, |m| *m as f64 / 1000.0);
        Ok(Raw {
            status: v[0],
            wait: us(v[1]),
            app_bound: v[2] > 1,
            chosen: v[3],
            refused: v[4],
            slot_wait: us(v[5]),
            estimate: us(v[6]),
            tokens: tokens(0),
            app_tokens: [tokens(1), tokens(2)],
        })
    }
}

/// The script's answer as it came.
struct Raw {
    status: i64,
    wait: Duration,
    app_bound: bool,
    chosen: i64,
    refused: i64,
    slot_wait: Duration,
    estimate: Duration,
    tokens: f64,
    app_tokens: [f64; 2],
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
