//! Amazon's buckets in Redis: one atomic Lua script per decision (EVALSHA), on Redis's clock.
//!
//! The script is the same GCRA as [`super::gcra`]: the bucket is a hash `{tat, iv}` (theoretical
//! arrival time and interval, in microseconds of Redis server time). A `take` reserves the next
//! slot when it is no later than `max_wait` from now and answers how long to wait for it, so a
//! waiting request costs one round trip and no retry; a slot too far away is not reserved and its
//! wait comes back as the retry-after. When the interval changes (Amazon reported another rate),
//! the tokens owed are kept. Keys expire a second after the bucket would be full again (an absent
//! key is a full bucket). Keys are `<prefix>rl:{<seller>}:<operation>`: the hash tag keeps a
//! seller's buckets on one cluster slot.
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

/// The GCRA decision. KEYS[1]: bucket; ARGV: interval_us, burst, max_wait_us, "take"|"drain".
/// Returns {granted 0|1, wait_us, milli-tokens left after the decision}.
const SCRIPT: &str = r#"
local iv = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'tat', 'iv')
local tat = tonumber(h[1]) or now
local old_iv = tonumber(h[2]) or iv
if tat < now then tat = now end
if old_iv ~= iv then tat = now + math.ceil((tat - now) * iv / old_iv) end
local tau = iv * burst
local function store()
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'iv', string.format('%.0f', iv))
  redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + 1000)
end
if ARGV[4] == 'drain' then
  if tat < now + tau then tat = now + tau end
  store()
  return {1, 0, 0}
end
local slot = tat + iv - tau
if slot < now then slot = now end
local wait = slot - now
if wait > max_wait then
  return {0, wait, math.floor((tau - (tat - now)) * 1000 / iv)}
end
tat = tat + iv
store()
return {1, wait, math.floor((tau - (tat - now)) * 1000 / iv)}
"#;

/// One answer of the script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reply {
    /// Whether a slot was reserved.
    pub(crate) granted: bool,
    /// Wait until the slot (granted) or until a slot would be free (refused).
    pub(crate) wait: Duration,
    /// Tokens left after the decision (negative: slots reserved ahead).
    pub(crate) tokens: f64,
}

/// The Redis side of the limiter.
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    script: Script,
    settings: RedisSettings,
    /// Redis is not tried again before this instant.
    down_until: Mutex<Option<Instant>>,
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
            tracing::warn!(error = %reason, "Rate limit store (Redis) unreachable; decisions continue without it.");
        }
        *down = Some(Instant::now() + self.settings.retry_backoff);
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

    /// Reserves one token when its slot is at most `max_wait` away. One round trip.
    pub(crate) async fn take(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Reply, String> {
        self.run(key, interval, burst, max_wait, "take").await
    }

    /// Empties a bucket (Amazon answered 429).
    pub(crate) async fn drain(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Reply, String> {
        self.run(key, interval, burst, Duration::ZERO, "drain")
            .await
    }

    async fn run(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        max_wait: Duration,
        op: &str,
    ) -> Result<Reply, String> {
        // Whole microseconds, rounded up like the local interval.
        let interval_us = interval.as_nanos().div_ceil(1000).max(1);
        let interval_us = u64::try_from(interval_us).unwrap_or(u64::MAX);
        let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_us)
            .arg(burst)
            .arg(max_wait_us)
            .arg(op);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
        let result = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(crate::store::redis::describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
        };
        match result {
            Ok((granted, wait_us, milli_tokens)) => {
                self.recovered();
                Ok(Reply {
                    granted: granted == 1,
                    wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
                    tokens: milli_tokens as f64 / 1000.0,
                })
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }
}
