//! Rate limits: Amazon never answers 429 because the gateway takes a token before forwarding.
//!
//! Amazon throttles per (application, seller, operation) with a token bucket (`rate` tokens a
//! second up to `burst`). [`Limiter::acquire`] takes one token of that bucket (and of the tool's
//! own bucket when its plan has an absolute rule) before a request is forwarded: at once, after a
//! bounded wait, or not at all (`429` with a retry-after). Waiting requests queue per bucket in
//! priority lanes and share scarce tokens between tools in proportion to their plans' shares
//! (see `bucket.rs` for the scheduler and its guarantees).
//!
//! Two stores for Amazon's buckets:
//! - local ([`Limiter::local`]): one GCRA state per bucket in this process (`gcra.rs`);
//! - Redis ([`Limiter::redis`]): one atomic Lua script per decision, on Redis's clock, so several
//!   gateway instances together respect the plan (`redis.rs`), with priority lanes and tool
//!   shares held across the instances in the same script (`fair.rs`). When Redis is unreachable the
//!   limiter either continues with a local bucket at plan / `expected_instances`
//!   ([`FailMode::Local`]; the bucket starts each outage empty: what the other instances spent
//!   of the shared bucket is unknown, so it hands out no burst, only its share of the rate) or
//!   refuses with 503 ([`FailMode::Closed`]), and tries Redis again after a short back-off.
//!
//! Plans ([`config`]) are named, assigned to tools by name, and replaced atomically on reload.
//!
//! Amazon also limits some operations per application, across all sellers (`app.rs`): such a
//! request takes its seller's bucket and the application's bucket(s) at one instant, locally or
//! in one Redis script.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::catalog::{CallKind, Operation, UsagePlan};

mod app;
mod bucket;
pub mod config;
mod fair;
mod gcra;
mod redis;
pub mod restart;

pub use config::{
    AppOverride, FailMode, LimiterConfig, Plan, Plans, RateLimitSettings, RawRateLimit,
    RedisSettings, Rule,
};

use app::{AppBucket, Apps};
use bucket::{Ask, Bucket, Limits};
use redis::RedisBackend;

/// Amazon's sandbox usage plan, used for every operation when `sandbox` is set.
pub const SANDBOX_PLAN: UsagePlan = UsagePlan {
    rate_per_second: 5.0,
    burst: 15,
};

/// A request's priority; a plan's `max_priority` caps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served before normal and low.
    High,
    /// The default.
    Normal,
    /// Served only when no high or normal request waits.
    Low,
}

impl Priority {
    /// Queue lane: 0 is served first.
    fn lane(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    /// This priority, lowered to `max` when it is above it.
    pub fn capped(self, max: Priority) -> Priority {
        if self.lane() < max.lane() {
            max
        } else {
            self
        }
    }
}

/// A priority that is not `high`, `normal` or `low`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?} (expected \"high\", \"normal\" or \"low\")")]
pub struct BadPriority(pub String);

impl FromStr for Priority {
    type Err = BadPriority;
    fn from_str(s: &str) -> Result<Priority, BadPriority> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(BadPriority(other.to_string())),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        })
    }
}

/// One request for a token.
#[derive(Debug, Clone, Copy)]
pub struct Acquire<'a> {
    /// The selling partner the request acts for (grantless operations: the application, e.g. "").
    pub seller: &'a str,
    /// The catalogued operation.
    pub operation: &'static Operation,
    /// The calling tool (its client id): the unit of fair sharing and of the per-tool counts.
    pub tool: &'a str,
    /// The tool's plan name; `None` (or a name no plan has): the default share, normal priority.
    pub plan: Option<&'a str>,
    /// Requested priority (capped by the plan's `max_priority`).
    pub priority: Priority,
    /// The caller's `x-spgate-max-wait-ms`: can only lower the plan's wait, never raise it.
    pub max_wait: Option<Duration>,
}

/// How a request got its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A token was there.
    Immediate,
    /// The request waited for its slot.
    Waited,
}

/// A granted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Time spent waiting for the token.
    pub waited: Duration,
    /// Immediate or after a wait.
    pub decision: Decision,
}

/// Why a request gets no token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// 429: no token within the request's deadline.
    #[error("rate limited: retry after {retry_after:?}")]
    Throttled {
        /// When a token would be there (for `Retry-After`).
        retry_after: Duration,
        /// The bucket's rate (for `x-amzn-RateLimit-Limit`).
        rate_per_second: f64,
    },
    /// 429: with the bucket shared through Redis, other tools went first until the deadline
    /// (a higher lane, or tools behind on their share, waiting on any instance: `fair.rs`).
    #[error("rate limited, deferred to other tools' shares: retry after {retry_after:?}")]
    Deferred {
        /// When the script expects this request's tool could go (for `Retry-After`).
        retry_after: Duration,
        /// The bucket's rate.
        rate_per_second: f64,
    },
    /// 429: too many requests already wait for this bucket.
    #[error("rate limit queue full: retry after {retry_after:?}")]
    QueueFull {
        /// When a place in the queue should be free.
        retry_after: Duration,
        /// The bucket's rate.
        rate_per_second: f64,
    },
    /// 503: the shared store is unreachable and the limiter fails closed.
    #[error("rate limiting unavailable: {0}")]
    Unavailable(String),
    /// The Redis settings cannot be used (startup only).
    #[error("invalid rate limit settings: {0}")]
    InvalidSettings(String),
}

impl RateLimitError {
    /// The retry-after of a 429, if this is one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RateLimitError::Throttled { retry_after, .. }
            | RateLimitError::Deferred { retry_after, .. }
            | RateLimitError::QueueFull { retry_after, .. } => Some(*retry_after),
            RateLimitError::Unavailable(_) | RateLimitError::InvalidSettings(_) => None,
        }
    }
}

/// One tool's use of a bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolStatus {
    /// The tool.
    pub tool: String,
    /// Requests admitted so far (by this instance).
    pub admitted: u64,
    /// Requests waiting now.
    pub waiting: usize,
}

/// One bucket, for `GET /admin/ratelimits`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketStatus {
    /// The selling partner.
    pub seller: String,
    /// The operation key.
    pub operation: String,
    /// Effective rate (after the safety factor and Amazon's reported rate).
    pub rate_per_second: f64,
    /// Effective burst.
    pub burst: u32,
    /// Tokens available now (in Redis mode: as of this instance's last decision, refilled since).
    pub tokens: f64,
    /// Requests waiting.
    pub queue_depth: usize,
    /// Per-tool use.
    pub tools: Vec<ToolStatus>,
}

/// One application-wide bucket (all sellers), for `GET /admin/ratelimits`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppBucketStatus {
    /// The operation key.
    pub operation: String,
    /// The kind of call a sub-limit is for; `None`: the operation's limit.
    pub kind: Option<CallKind>,
    /// Amazon's limit (published, or the operator's override).
    pub plan_rate_per_second: f64,
    /// Effective rate (after the safety factor and spacing).
    pub rate_per_second: f64,
    /// Effective burst.
    pub burst: u32,
    /// Tokens available now (in Redis mode: as of this instance's last decision, refilled since).
    pub tokens: f64,
}

/// Counters since start (rendered as Prometheus metrics by the caller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Admitted with a token at hand.
    pub admitted_immediate: u64,
    /// Admitted after waiting.
    pub admitted_waited: u64,
    /// Refused: no token within the deadline.
    pub rejected_throttled: u64,
    /// Refused: other tools' shares or a higher lane went first until the deadline (Redis).
    pub rejected_deferred: u64,
    /// Refused: queue full.
    pub rejected_queue_full: u64,
    /// Refused: store unavailable (fail closed).
    pub rejected_unavailable: u64,
    /// 429 answers from Amazon reported through [`Limiter::observe_throttled`].
    pub upstream_throttled: u64,
    /// Decisions taken by a local fallback bucket because Redis was unreachable.
    pub redis_fallbacks: u64,
    /// Decisions where an application-wide bucket (not the seller's) had no token.
    pub app_limited: u64,
    /// Failed Redis calls (each starts a back-off during which Redis is not asked).
    pub redis_errors: u64,
    /// Sum of the waits of admitted requests, in seconds.
    pub wait_seconds_sum: f64,
    /// Number of admitted requests in `wait_seconds_sum`.
    pub wait_count: u64,
}

#[derive(Debug, Default)]
struct Metrics {
    admitted_immediate: AtomicU64,
    admitted_waited: AtomicU64,
    rejected_throttled: AtomicU64,
    rejected_deferred: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_unavailable: AtomicU64,
    upstream_throttled: AtomicU64,
    redis_fallbacks: AtomicU64,
    app_limited: AtomicU64,
    redis_errors: AtomicU64,
    wait_nanos_sum: AtomicU64,
    wait_count: AtomicU64,
}

/// Where decisions go right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No Redis configured: local buckets.
    Local,
    /// Redis configured and not known to be down.
    Redis,
    /// Redis down, fail local: local buckets at plan / instances.
    Fallback,
    /// Redis down, fail closed.
    Down,
}

type BucketMap = HashMap<&'static str, HashMap<Box<str>, Arc<Bucket>>>;
type AppMap = HashMap<(&'static str, Option<CallKind>), Option<Arc<AppBucket>>>;
/// Tools' own buckets (absolute rules) for operations without Amazon's usage plan, by (seller,
/// operation, tool): no Amazon bucket is there to hold them.
type UnplannedMap = HashMap<(Box<str>, &'static str, Box<str>), Option<gcra::Gcra>>;

/// The map of [`UnplannedMap`] is swept at this size at the earliest.
const UNPLANNED_SWEEP_MIN: usize = 1024;

/// [`UnplannedMap`], bounded: when it has doubled since its last sweep (and holds more than
/// [`UNPLANNED_SWEEP_MIN`]), the buckets full again are dropped. A full bucket is what a new one
/// is, so no decision changes; the map holds about the buckets used within their refill time,
/// at an amortised constant cost per request.
#[derive(Debug, Default)]
struct Unplanned {
    map: UnplannedMap,
    /// The size past which the next sweep runs.
    sweep_at: usize,
}

impl Unplanned {
    /// Reserves a token of the tool's bucket (see [`bucket::reserve_tool`]), then sweeps if due.
    fn reserve(
        &mut self,
        key: (Box<str>, &'static str, Box<str>),
        limit: (f64, u32),
        now: Instant,
        deadline: Instant,
    ) -> Result<Instant, RateLimitError> {
        let result = bucket::reserve_tool(self.map.entry(key).or_default(), limit, now, deadline);
        if self.map.len() > self.sweep_at.max(UNPLANNED_SWEEP_MIN) {
            (self.map).retain(|_, g| g.as_ref().is_some_and(|g| !g.is_full(now)));
            self.sweep_at = 2 * self.map.len();
        }
        result
    }
}

/// State shared by the limiter and its dispatcher tasks.
pub(crate) struct Inner {
    pub(crate) config: LimiterConfig,
    plans: RwLock<Arc<Plans>>,
    buckets: RwLock<BucketMap>,
    apps: RwLock<AppMap>,
    unplanned: std::sync::Mutex<Unplanned>,
    /// The instant every bucket new to this process is taken to have been emptied at (the last
    /// moment a previous run of this instance may have spent it); see [`Limiter::guard_restarts`].
    spent_at: RwLock<Option<Instant>>,
    /// The restart marker's lease, when restarts are guarded.
    lease: std::sync::OnceLock<Arc<restart::Lease>>,
    metrics: Metrics,
    pub(crate) redis: Option<RedisBackend>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(crate) fn mode(&self, now: Instant) -> Mode {
        match &self.redis {
            None => Mode::Local,
            Some(r) if r.available(now) => Mode::Redis,
            Some(_) => match self.config.fail_mode {
                FailMode::Local => Mode::Fallback,
                FailMode::Closed => Mode::Down,
            },
        }
    }

    pub(crate) fn redis_failed(&self, reason: &str) {
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %reason, "Rate limit decision without Redis.");
    }

    /// Amazon's plan (or the rate Amazon reported) times the safety factor.
    pub(crate) fn count_fallback(&self) {
        self.metrics.redis_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_app_limited(&self) {
        self.metrics.app_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A new bucket with these limits: full, or refilled since a previous run may have emptied it.
    pub(crate) fn new_gcra(&self, limits: Limits, now: Instant) -> gcra::Gcra {
        match *self.spent_at.read().unwrap_or_else(|e| e.into_inner()) {
            Some(spent) => gcra::Gcra::spent_at(limits.rate_per_second, limits.burst, now, spent),
            None => gcra::Gcra::new(limits.rate_per_second, limits.burst, now),
        }
    }

    /// Amazon's application-wide limit for an operation (`None`) or a kind of call of it: the
    /// operator's override, else the published one; none in sandbox mode (Amazon's sandbox
    /// has one plan for everything).
    fn app_plan_for(&self, operation: &Operation, kind: Option<CallKind>) -> Option<UsagePlan> {
        if self.config.sandbox {
            return None;
        }
        let over = self.config.application.get(operation.key);
        match kind {
            None => over.and_then(|o| o.plan).or(operation.app_plan),
            Some(kind) => over
                .and_then(|o| o.kinds.get(&kind).copied())
                .or_else(|| operation.app_sub_limit(kind)),
        }
    }

    fn app_bucket(
        &self,
        operation: &'static Operation,
        kind: Option<CallKind>,
    ) -> Option<Arc<AppBucket>> {
        let key = (operation.key, kind);
        if let Some(found) = self
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return found.clone();
        }
        let mut map = self.apps.write().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let plan = self.app_plan_for(operation, kind)?;
                Some(Arc::new(AppBucket::new(
                    self,
                    operation,
                    kind,
                    plan,
                    Instant::now(),
                )))
            })
            .clone()
    }

    /// The application buckets a request of this operation (and kind) takes.
    fn apps_for(&self, operation: &'static Operation, kind: Option<CallKind>) -> Apps {
        Apps::new(
            self.app_bucket(operation, None),
            kind.and_then(|k| self.app_bucket(operation, Some(k))),
        )
    }

    pub(crate) fn effective(&self, plan: UsagePlan, observed: Option<f64>) -> Limits {
        let f = self.config.safety_factor;
        let rate = observed.unwrap_or(plan.rate_per_second) * f;
        // Spread tokens a little wider than the plan (see `LimiterConfig::spacing_allowance`).
        let interval = 1.0 / rate;
        let extra = if self.config.spacing_allowance > 0.0 {
            (interval * self.config.spacing_allowance).clamp(0.002, 0.050)
        } else {
            0.0
        };
        let rate = 1.0 / (interval + extra);
        let burst = (f64::from(plan.burst) * f).floor() as u32;
        Limits {
            rate_per_second: rate,
            burst: burst.max(1),
        }
    }

    /// The part of Amazon's bucket this instance enforces locally: all of it without Redis,
    /// 1/N of it as the fallback when Redis is configured.
    pub(crate) fn local_share(&self, amazon: Limits) -> Limits {
        if self.redis.is_none() {
            return amazon;
        }
        let n = self.config.expected_instances.max(1);
        Limits {
            rate_per_second: amazon.rate_per_second / f64::from(n),
            burst: (amazon.burst / n).max(1),
        }
    }

    fn plan_for(&self, operation: &Operation) -> Option<UsagePlan> {
        if self.config.sandbox {
            Some(SANDBOX_PLAN)
        } else {
            operation.usage_plan
        }
    }

    fn bucket(&self, seller: &str, operation: &'static Operation) -> Option<Arc<Bucket>> {
        let plan = self.plan_for(operation)?;
        {
            let map = self.buckets.read().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = map.get(operation.key).and_then(|m| m.get(seller)) {
                return Some(Arc::clone(b));
            }
        }
        let mut map = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let per_seller = map.entry(operation.key).or_default();
        let bucket = per_seller.entry(seller.into()).or_insert_with(|| {
            Arc::new(Bucket::new(self, seller, operation, plan, Instant::now()))
        });
        Some(Arc::clone(bucket))
    }

    fn existing(&self, seller: &str, operation: &Operation) -> Option<Arc<Bucket>> {
        let map = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        map.get(operation.key)
            .and_then(|m| m.get(seller))
            .map(Arc::clone)
    }

    /// For an operation without Amazon's usage plan (no Amazon bucket): the tool's own bucket
    /// when its plan has an absolute rule (the operator's limit applies whatever Amazon's is),
    /// waiting up to `deadline`; else nothing to take. Returns the instant of the grant.
    async fn acquire_unplanned(
        &self,
        seller: &str,
        operation: &'static Operation,
        tool: &str,
        limit: Option<(f64, u32)>,
        now: Instant,
        deadline: Instant,
    ) -> Result<Instant, RateLimitError> {
        let Some(limit) = limit else {
            return Ok(now);
        };
        let slot = {
            let mut unplanned = self.unplanned.lock().unwrap_or_else(|e| e.into_inner());
            let key = (seller.into(), operation.key, tool.into());
            unplanned.reserve(key, limit, now, deadline)?
        };
        Ok(bucket::sleep_to(slot, now).await)
    }
}

/// The rate limiter. Cheap to clone (one `Arc`); `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl Limiter {
    /// A limiter whose buckets live in this process.
    pub fn local(config: LimiterConfig) -> Limiter {
        Limiter::with(config, None)
    }

    /// A limiter whose Amazon buckets live in Redis, shared by every instance on the same
    /// key prefix. An unreachable server is not an error here: decisions follow `fail_mode`
    /// until it answers. Fails only for settings that cannot work (a bad URL).
    pub async fn redis(
        config: LimiterConfig,
        redis: RedisSettings,
    ) -> Result<Limiter, RateLimitError> {
        let backend = RedisBackend::connect(redis).await?;
        let reachable = backend.available(Instant::now());
        let limiter = Limiter::with(config, Some(backend));
        if !reachable {
            limiter
                .inner
                .metrics
                .redis_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(limiter)
    }

    fn with(mut config: LimiterConfig, redis: Option<RedisBackend>) -> Limiter {
        let plans = std::mem::take(&mut config.plans);
        Limiter {
            inner: Arc::new(Inner {
                config,
                plans: RwLock::new(Arc::new(plans)),
                buckets: RwLock::new(HashMap::new()),
                apps: RwLock::new(HashMap::new()),
                unplanned: std::sync::Mutex::new(Unplanned::default()),
                spent_at: RwLock::new(None),
                lease: std::sync::OnceLock::new(),
                metrics: Metrics::default(),
                redis,
            }),
        }
    }

    /// Takes one token of the Amazon bucket for (seller, operation) and of the tool's plan,
    /// waiting up to the deadline. `Ok(Admission)` carries how long it waited. Operations without
    /// a usage plan in Amazon's models take no Amazon bucket (outside sandbox mode), only the
    /// tool's own bucket when its plan has an absolute rule.
    pub async fn acquire(&self, req: Acquire<'_>) -> Result<Admission, RateLimitError> {
        self.acquire_kind(req, None).await
    }

    /// [`Limiter::acquire`] for a request whose kind of call has its own application-wide
    /// sub-limit (e.g. a Listings Items validation preview): it takes that bucket too.
    pub async fn acquire_kind(
        &self,
        req: Acquire<'_>,
        kind: Option<CallKind>,
    ) -> Result<Admission, RateLimitError> {
        let arrived = Instant::now();
        let inner = &self.inner;
        if let Some(lease) = inner.lease.get() {
            if let Err(e) = lease.cover() {
                inner
                    .metrics
                    .rejected_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        let bucket = inner.bucket(req.seller, req.operation);
        let plans = Arc::clone(&inner.plans.read().unwrap_or_else(|e| e.into_inner()));
        let plan = req.plan.and_then(|name| plans.get(name));
        let rule = plan.and_then(|p| p.rule_for(req.operation));
        let max_priority = plan.map_or(Priority::Normal, |p| p.max_priority);
        let plan_wait = plan
            .and_then(|p| p.max_wait)
            .unwrap_or(inner.config.default_max_wait);
        let max_wait = req.max_wait.map_or(plan_wait, |w| w.min(plan_wait));
        let tool_limit = match rule {
            Some(Rule::Absolute {
                rate_per_second,
                burst,
            }) => Some((rate_per_second, burst)),
            _ => None,
        };
        drop(plans);
        let result = match bucket {
            Some(bucket) => {
                let ask = Ask {
                    tool: req.tool,
                    lane: req.priority.capped(max_priority).lane(),
                    weight: match rule {
                        Some(Rule::Share(s)) => s,
                        _ => inner.config.default_share,
                    },
                    tool_limit,
                    arrived,
                    deadline: arrived + max_wait,
                    apps: inner.apps_for(req.operation, kind),
                };
                bucket.acquire(inner, &ask).await
            }
            // Amazon publishes no plan for it: only the tool's own rule applies (README, "Rate
            // limits": why such an operation is not refused).
            None => {
                let deadline = arrived + max_wait;
                let (seller, op) = (req.seller, req.operation);
                (inner.acquire_unplanned(seller, op, req.tool, tool_limit, arrived, deadline)).await
            }
        };
        let m = &inner.metrics;
        match result {
            Ok(granted) => {
                let waited = granted.saturating_duration_since(arrived);
                let decision = if waited.is_zero() {
                    m.admitted_immediate.fetch_add(1, Ordering::Relaxed);
                    Decision::Immediate
                } else {
                    m.admitted_waited.fetch_add(1, Ordering::Relaxed);
                    Decision::Waited
                };
                let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                m.wait_nanos_sum.fetch_add(nanos, Ordering::Relaxed);
                m.wait_count.fetch_add(1, Ordering::Relaxed);
                Ok(Admission { waited, decision })
            }
            Err(err) => {
                let counter = match err {
                    RateLimitError::Throttled { .. } => &m.rejected_throttled,
                    RateLimitError::Deferred { .. } => &m.rejected_deferred,
                    RateLimitError::QueueFull { .. } => &m.rejected_queue_full,
                    RateLimitError::Unavailable(_) | RateLimitError::InvalidSettings(_) => {
                        &m.rejected_unavailable
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// For a request answered without Amazon (a coalesced or cached answer, see
    /// `proxy::shared_calls`): only the tool's own rate plan, no token of Amazon's bucket. A
    /// plan's absolute rule is the tool's own bucket, taken as [`Limiter::acquire`] takes it; a
    /// share only weighs the tool's place in Amazon's bucket, so it takes nothing here. Counted
    /// in the metrics as every decision is (admitted, waited, refused).
    pub async fn acquire_plan(&self, req: Acquire<'_>) -> Result<Admission, RateLimitError> {
        let result = self.plan_only(req).await;
        let m = &self.inner.metrics;
        match &result {
            Ok(a) => {
                match a.decision {
                    Decision::Immediate => &m.admitted_immediate,
                    Decision::Waited => &m.admitted_waited,
                }
                .fetch_add(1, Ordering::Relaxed);
                let nanos = u64::try_from(a.waited.as_nanos()).unwrap_or(u64::MAX);
                m.wait_nanos_sum.fetch_add(nanos, Ordering::Relaxed);
                m.wait_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(RateLimitError::Throttled { .. }) => {
                m.rejected_throttled.fetch_add(1, Ordering::Relaxed);
            }
            Err(RateLimitError::Deferred { .. }) => {
                m.rejected_deferred.fetch_add(1, Ordering::Relaxed);
            }
            Err(RateLimitError::QueueFull { .. }) => {
                m.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(RateLimitError::Unavailable(_) | RateLimitError::InvalidSettings(_)) => {
                m.rejected_unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn plan_only(&self, req: Acquire<'_>) -> Result<Admission, RateLimitError> {
        let arrived = Instant::now();
        let inner = &self.inner;
        let (limit, max_wait) = {
            let plans = inner.plans.read().unwrap_or_else(|e| e.into_inner());
            let plan = req.plan.and_then(|name| plans.get(name));
            let limit = match plan.and_then(|p| p.rule_for(req.operation)) {
                Some(Rule::Absolute {
                    rate_per_second,
                    burst,
                }) => Some((rate_per_second, burst)),
                Some(Rule::Share(_)) | None => None,
            };
            let plan_wait = plan
                .and_then(|p| p.max_wait)
                .unwrap_or(inner.config.default_max_wait);
            (limit, req.max_wait.map_or(plan_wait, |w| w.min(plan_wait)))
        };
        let immediate = Admission {
            waited: Duration::ZERO,
            decision: Decision::Immediate,
        };
        let Some(limit) = limit else {
            return Ok(immediate);
        };
        let deadline = arrived + max_wait;
        let granted = match inner.bucket(req.seller, req.operation) {
            Some(bucket) => (bucket.acquire_tool(req.tool, limit, arrived, deadline)).await?,
            // No Amazon bucket for an operation without Amazon's plan: the tool's own bucket
            // is kept apart, as for `acquire` (the same one: both take the operator's limit).
            None => {
                let (seller, op) = (req.seller, req.operation);
                (inner.acquire_unplanned(seller, op, req.tool, Some(limit), arrived, deadline))
                    .await?
            }
        };
        let waited = granted.saturating_duration_since(arrived);
        Ok(if waited.is_zero() {
            immediate
        } else {
            Admission {
                waited,
                decision: Decision::Waited,
            }
        })
    }

    /// Makes a restart safe for local buckets (no Redis): buckets this process creates start as
    /// if emptied at the last moment a previous run may have spent them, so a restarted instance
    /// never hands out a burst it already spent. `dir` holds `ratelimit-alive`, a lease on the
    /// wall clock renewed every [`restart::HEARTBEAT`] by a task this starts (and before any
    /// decision past it). No file (a first start): buckets start full. Fails only when the file
    /// cannot be written now.
    pub fn guard_restarts(&self, dir: &std::path::Path) -> Result<(), RateLimitError> {
        let spent = restart::last_alive(dir)?;
        *self
            .inner
            .spent_at
            .write()
            .unwrap_or_else(|e| e.into_inner()) = spent;
        let lease = restart::start_heartbeat(dir)?;
        let _ = self.inner.lease.set(lease);
        Ok(())
    }

    /// Amazon told us the real rate in `x-amzn-RateLimit-Limit`: adopt it for that bucket (some
    /// sellers get more). Values that are not positive and finite are ignored, and so are buckets
    /// this instance has not used yet (the answer follows an acquire, which creates the bucket).
    pub fn observe_rate(&self, seller: &str, operation: &Operation, rate_per_second: f64) {
        if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
            return;
        }
        if let Some(bucket) = self.inner.existing(seller, operation) {
            bucket.observe_rate(&self.inner, rate_per_second);
        }
    }

    /// Amazon answered 429: empty that bucket, if this instance has used it (waiters that can no longer make their deadline
    /// are refused at once), and the operation's application-wide bucket.
    pub fn observe_throttled(&self, seller: &str, operation: &Operation) {
        self.inner
            .metrics
            .upstream_throttled
            .fetch_add(1, Ordering::Relaxed);
        if let Some(bucket) = self.inner.existing(seller, operation) {
            bucket.observe_throttled(&self.inner);
        }
        let app = self
            .inner
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(operation.key, None))
            .cloned()
            .flatten();
        if let Some(app) = app {
            app.drain(&self.inner);
        }
    }

    /// Replaces the rate plans atomically (config reload). Requests already waiting keep their
    /// place; new requests use the new plans. Plans are validated by config resolution first.
    pub fn reload_plans(&self, plans: Plans) {
        *self.inner.plans.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(plans);
    }

    /// Buckets matching the filters (both optional), sorted by seller then operation.
    pub fn status(&self, seller: Option<&str>, operation: Option<&str>) -> Vec<BucketStatus> {
        let buckets: Vec<Arc<Bucket>> = {
            let map = self.inner.buckets.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(op, _)| operation.is_none_or(|o| o == **op))
                .flat_map(|(_, per_seller)| per_seller.iter())
                .filter(|(s, _)| seller.is_none_or(|want| want == &***s))
                .map(|(_, b)| Arc::clone(b))
                .collect()
        };
        let mut out: Vec<BucketStatus> = buckets
            .iter()
            .map(|b| {
                let f = b.figures(&self.inner);
                BucketStatus {
                    seller: b.seller.to_string(),
                    operation: b.operation.key.to_string(),
                    rate_per_second: f.limits.rate_per_second,
                    burst: f.limits.burst,
                    tokens: f.tokens,
                    queue_depth: f.queue_depth,
                    tools: f
                        .tools
                        .into_iter()
                        .map(|(tool, t)| ToolStatus {
                            tool,
                            admitted: t.admitted,
                            waiting: t.waiting,
                        })
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.seller, &a.operation).cmp(&(&b.seller, &b.operation)));
        out
    }

    /// Application-wide buckets used so far (optionally of one operation), sorted by operation
    /// then kind.
    pub fn app_status(&self, operation: Option<&str>) -> Vec<AppBucketStatus> {
        let now = Instant::now();
        let mode = self.inner.mode(now);
        let apps: Vec<Arc<AppBucket>> = {
            let map = self.inner.apps.read().unwrap_or_else(|e| e.into_inner());
            map.values()
                .flatten()
                .filter(|a| operation.is_none_or(|o| o == a.operation.key))
                .map(Arc::clone)
                .collect()
        };
        let mut out: Vec<AppBucketStatus> = apps
            .iter()
            .map(|a| {
                let st = a.lock();
                let tokens = match (mode, st.redis_view) {
                    (Mode::Redis, Some((tokens, at))) => {
                        let refill = now.saturating_duration_since(at).as_secs_f64()
                            * st.amazon.rate_per_second;
                        (tokens + refill).clamp(0.0, f64::from(st.amazon.burst))
                    }
                    (Mode::Redis, None) => f64::from(st.amazon.burst),
                    _ => st.local.tokens(now),
                };
                AppBucketStatus {
                    operation: a.operation.key.to_string(),
                    kind: a.kind,
                    plan_rate_per_second: a.plan.rate_per_second,
                    rate_per_second: st.amazon.rate_per_second,
                    burst: st.amazon.burst,
                    tokens,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.operation, a.kind).cmp(&(&b.operation, b.kind)));
        out
    }

    /// The bucket's status for one seller and operation, if it exists yet.
    pub fn bucket_status(&self, seller: &str, operation: &Operation) -> Option<BucketStatus> {
        self.inner.existing(seller, operation)?;
        self.status(Some(seller), Some(operation.key)).pop()
    }

    /// Whether requests can get a decision: false only when Redis is configured with
    /// `fail_mode = "closed"` and does not answer a PING (every request would be refused).
    pub async fn ready(&self) -> bool {
        match (&self.inner.redis, self.inner.config.fail_mode) {
            (Some(redis), FailMode::Closed) => redis.ping().await,
            (None, _) | (Some(_), FailMode::Local) => true,
        }
    }

    /// Counters since start.
    pub fn metrics(&self) -> MetricsSnapshot {
        let m = &self.inner.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            admitted_immediate: get(&m.admitted_immediate),
            admitted_waited: get(&m.admitted_waited),
            rejected_throttled: get(&m.rejected_throttled),
            rejected_deferred: get(&m.rejected_deferred),
            rejected_queue_full: get(&m.rejected_queue_full),
            rejected_unavailable: get(&m.rejected_unavailable),
            upstream_throttled: get(&m.upstream_throttled),
            redis_fallbacks: get(&m.redis_fallbacks),
            app_limited: get(&m.app_limited),
            redis_errors: get(&m.redis_errors),
            wait_seconds_sum: get(&m.wait_nanos_sum) as f64 / 1e9,
            wait_count: get(&m.wait_count),
        }
    }
}

#[cfg(test)]
mod fair_tests;
#[cfg(test)]
mod tests;
