//! Amazon's buckets in Redis: one atomic Lua script per decision (EVALSHA), on Redis's clock.
//!
//! The script is the same GCRA as [`super::gcra`]: the bucket is a hash `{tat, iv}` (theoretical
//! arrival time and interval, in microseconds of Redis server time). A `take` reserves the next
//! slot when it is no later than `max_wait` from now and answers how long to wait for it, so a
//! waiting request costs one round trip and no retry; a slot too far away is not reserved and its
//! wait comes back as the retry-after. When the interval changes (Amazon reported another rate),
//! the tokens owed are kept. Keys expire a second after the bucket would be full again (an absent
//! key is a full bucket). Keys are `<prefix>rl:{<seller>}:<operation>` for a seller's bucket and
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
use super::RateLimitError;
use crate::catalog::CallKind;

/// The GCRA decision over one or more buckets taken together (the seller's bucket first, then
/// the application-wide ones), then the epoch key: KEYS: the buckets, the epoch; ARGV:
/// max_wait_us, "take"|"drain", then
/// interval_us and burst per key. Every bucket is taken at one slot, the latest of their next
/// slots, or none is. Returns {granted 0|1, wait_us, index of the bucket that set the slot (1 =
/// the seller's), then milli-tokens left per key after the decision}.
const SCRIPT: &str = r#"
local max_wait = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS - 1
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
local function answer(granted, wait)
  local out = {granted, wait, bound}
  for i = 1, n do out[3 + i] = math.floor((taus[i] - (tats[i] - now)) * 1000 / ivs[i]) end
  return out
end
if ARGV[2] == 'drain' then
  for i = 1, n do
    if tats[i] < now + taus[i] then tats[i] = now + taus[i] end
    store(i)
  end
  return answer(1, 0)
end
local wait = slot - now
if wait > max_wait then return answer(0, wait) end
for i = 1, n do
  if tats[i] < slot then tats[i] = slot end
  tats[i] = tats[i] + ivs[i]
  store(i)
end
return answer(1, wait)
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

/// One answer of the script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reply {
    /// Whether a slot was reserved.
    pub(crate) granted: bool,
    /// Wait until the slot (granted) or until a slot would be free (refused).
    pub(crate) wait: Duration,
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
            script: Script::new(SCRIPT),
            settings,
            down_until: Mutex::new(None),
            outages: std::sync::atomic::AtomicU64::new(0),
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

    /// Reserves one token of every bucket when their joint slot is at most `max_wait` away.
    /// One round trip.
    pub(crate) async fn take(
        &self,
        buckets: &[Take<'_>],
        max_wait: Duration,
    ) -> Result<Reply, String> {
        self.run(buckets, max_wait, "take").await
    }

    /// Empties a bucket (Amazon answered 429).
    pub(crate) async fn drain(&self, bucket: Take<'_>) -> Result<Reply, String> {
        self.run(&[bucket], Duration::ZERO, "drain").await
    }

    async fn run(
        &self,
        buckets: &[Take<'_>],
        max_wait: Duration,
        op: &str,
    ) -> Result<Reply, String> {
        let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(max_wait_us).arg(op);
        for b in buckets.iter() {
            // Whole microseconds, rounded up like the local interval.
            let interval_us = b.interval.as_nanos().div_ceil(1000).max(1);
            let interval_us = u64::try_from(interval_us).unwrap_or(u64::MAX);
            invocation.key(b.key).arg(interval_us).arg(b.burst);
        }
        invocation.key(self.epoch_key());
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let result = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(v)) if v.len() == 3 + buckets.len() => Ok(v),
            Ok(Ok(v)) => Err(format!("the limiter script answered {} values", v.len())),
            Ok(Err(e)) => Err(crate::store::redis::describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
        };
        match result {
            Ok(v) => {
                self.recovered();
                let tokens = |i: usize| v.get(3 + i).map_or(0.0, |m| *m as f64 / 1000.0);
                Ok(Reply {
                    granted: v[0] == 1,
                    wait: Duration::from_micros(u64::try_from(v[1]).unwrap_or(0)),
                    tokens: tokens(0),
                    app_bound: v[2] > 1,
                    app_tokens: [tokens(1), tokens(2)],
                })
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }
}
