//! The `[ratelimit]` section: parsed leniently ([`RawRateLimit`], every field optional), then
//! resolved ([`RateLimitSettings`]) with every problem reported with its key path, like
//! [`crate::config`] does for the rest of the file.
//!
//! ```toml
//! [ratelimit]
//! safety_factor = 1.0          # effective rate and burst = Amazon's x factor (0 < f <= 1)
//! sandbox = false              # true: every operation uses the sandbox plan (5/s, burst 15)
//! fail_mode = "local"          # Redis unreachable: "local" (plan / expected_instances, no burst) or "closed"
//! expected_instances = 1
//! default_max_wait_ms = 10000  # how long a request may wait for a token
//! max_queue = 1000             # waiting requests per bucket; beyond it: 429 QueueFull
//! default_share = 0.2          # weight of a tool without a share rule
//! [ratelimit.redis]            # optional: share Amazon's buckets between instances
//! url = "redis://127.0.0.1:6379"
//! key_prefix = "spgate:"
//! timeout_ms = 100
//! retry_backoff_ms = 1000
//! [ratelimit.plans.label-printer]
//! max_wait_ms = 2000
//! max_priority = "normal"
//! default = { share = 0.3 }
//! apis.orders = { share = 0.5 }
//! operations."ordersV0.getOrderAddress" = { rate_per_second = 0.2, burst = 5 }
//! # Amazon's application-wide limit (all sellers together) where Amazon granted this application
//! # another one than it publishes (`data/app-rate-limits.tsv`); `kinds` for its sub-limits.
//! [ratelimit.application."catalogItems_2022-04-01.getCatalogItem"]
//! rate_per_second = 400
//! burst = 4
//! kinds.validation_preview = { rate_per_second = 40 }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{CallKind, Catalog, Operation, UsagePlan};
use crate::config::{ConfigError, ConfigIssue};

use super::Priority;

/// `[ratelimit]` as written in the file.
#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    /// Fraction of Amazon's rate and burst the gateway uses (0 < f <= 1).
    pub safety_factor: Option<f64>,
    /// Use Amazon's sandbox plan (5/s, burst 15) for every operation.
    pub sandbox: Option<bool>,
    /// `local` or `closed`: what to do when Redis is unreachable.
    pub fail_mode: Option<String>,
    /// How many gateway instances share the buckets (each takes plan/N when Redis is down).
    pub expected_instances: Option<u32>,
    /// Default longest wait for a token.
    pub default_max_wait_ms: Option<u64>,
    /// Waiting requests per bucket.
    pub max_queue: Option<usize>,
    /// Weight of a tool without a share rule for the operation.
    pub default_share: Option<f64>,
    /// Extra spacing between Amazon-bucket tokens, as a fraction of the interval (2 to 50 ms).
    pub spacing_allowance: Option<f64>,
    /// `[ratelimit.redis]`.
    pub redis: Option<RawRedis>,
    /// `[ratelimit.plans.<name>]`.
    pub plans: Option<BTreeMap<String, RawPlan>>,
    /// `[ratelimit.application."<operation key>"]`: Amazon's application-wide limits as granted
    /// to this application, where they differ from the published ones.
    pub application: Option<BTreeMap<String, RawAppLimit>>,
}

/// `[ratelimit.application."<operation key>"]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawAppLimit {
    /// Requests per second across all sellers.
    pub rate_per_second: Option<f64>,
    /// Bucket size (default: the published one, else 1).
    pub burst: Option<u32>,
    /// Sub-limits per kind of call (`variations`, `product_data`, `validation_preview`).
    pub kinds: Option<BTreeMap<String, RawAppLimit>>,
}

/// `[ratelimit.redis]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawRedis {
    /// `redis://host:port[/db]`; a reference (`{ env }`/`{ file }`) when it holds a password.
    pub url: Option<crate::config::RawSecret>,
    /// Prefix of every key the limiter writes.
    pub key_prefix: Option<String>,
    /// Longest wait for one Redis answer before the decision falls back.
    pub timeout_ms: Option<u64>,
    /// After a Redis failure, how long decisions stay local before Redis is tried again.
    pub retry_backoff_ms: Option<u64>,
    /// PEM CA for a `rediss://` server (read by `config`).
    pub ca_file: Option<std::path::PathBuf>,
    /// ACL user (a reference or a plain name; read by `config`).
    pub username: Option<crate::config::RawSecret>,
    /// ACL password (a reference; read by `config`).
    pub password: Option<crate::config::RawSecret>,
}

/// `[ratelimit.plans.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawPlan {
    /// Longest wait for tools on this plan (callers can only lower it).
    pub max_wait_ms: Option<u64>,
    /// Highest priority tools on this plan may ask for: `high`, `normal` or `low`.
    pub max_priority: Option<String>,
    /// Rule for operations no other rule names.
    pub default: Option<RawRule>,
    /// Rules per API family (the catalog's `api`, e.g. `orders`).
    pub apis: Option<BTreeMap<String, RawRule>>,
    /// Rules per operation (the catalog's key, e.g. `ordersV0.getOrderAddress`).
    pub operations: Option<BTreeMap<String, RawRule>>,
}

/// One rule as written: either `share`, or `rate_per_second` with `burst`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RawRule {
    /// Fraction of the seller's Amazon budget (0 < s <= 1).
    pub share: Option<f64>,
    /// A tool-side bucket's rate, on top of Amazon's.
    pub rate_per_second: Option<f64>,
    /// A tool-side bucket's size.
    pub burst: Option<u32>,
}

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Each instance continues alone with a local bucket at plan / `expected_instances`.
    #[default]
    Local,
    /// Refuse requests with 503 until Redis is back.
    Closed,
}

/// How one tool may use one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// A weight in the seller's bucket: under contention the tool gets at least this fraction.
    Share(f64),
    /// A tool-side bucket (per seller and operation), checked in addition to Amazon's.
    Absolute {
        /// Tokens per second.
        rate_per_second: f64,
        /// Bucket size.
        burst: u32,
    },
}

/// A named plan, assigned to tools by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Longest wait; `None` means the limiter's default.
    pub max_wait: Option<Duration>,
    /// Highest priority allowed.
    pub max_priority: Priority,
    /// Rule for operations without a more specific one.
    pub default: Option<Rule>,
    /// Rules per API family.
    pub apis: HashMap<String, Rule>,
    /// Rules per operation key.
    pub operations: HashMap<String, Rule>,
}

impl Plan {
    /// The most specific rule for an operation: operation, then API, then default.
    pub fn rule_for(&self, operation: &Operation) -> Option<Rule> {
        self.operations
            .get(operation.key)
            .or_else(|| self.apis.get(operation.api))
            .copied()
            .or(self.default)
    }
}

/// Every named plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plans {
    /// Plans by name.
    pub plans: HashMap<String, Plan>,
}

impl Plans {
    /// The plan with this name.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }
}

/// An operator's override of Amazon's application-wide limits for one operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppOverride {
    /// The operation's limit (`None`: the published one).
    pub plan: Option<UsagePlan>,
    /// Sub-limits per kind of call (others: the published ones).
    pub kinds: HashMap<CallKind, UsagePlan>,
}

/// How the limiter behaves (all but the Redis connection).
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// Effective rate = plan rate x factor; burst = floor(burst x factor), at least 1.
    pub safety_factor: f64,
    /// Every operation uses Amazon's sandbox plan (5/s, burst 15).
    pub sandbox: bool,
    /// Longest wait when neither the plan nor the caller says less.
    pub default_max_wait: Duration,
    /// Waiting requests per bucket; beyond it requests are refused with `QueueFull`.
    pub max_queue: usize,
    /// Weight of a tool without a share rule (all such tools weigh the same).
    pub default_share: f64,
    /// Instances sharing the buckets: with Redis down and `FailMode::Local`, each takes plan/N.
    pub expected_instances: u32,
    /// What to do when Redis is unreachable.
    pub fail_mode: FailMode,
    /// Named plans.
    pub plans: Plans,
    /// Extra spacing between tokens of Amazon's buckets, as a fraction of the interval (at least
    /// 2 ms, at most 50 ms): covers the jitter between the gateway's decision and the request's arrival
    /// (a cold burst opens connections, a later request reuses one), so Amazon's own bucket
    /// never sees requests closer together than its plan allows.
    pub spacing_allowance: f64,
    /// Application-wide limits granted to this application, by operation key.
    pub application: HashMap<String, AppOverride>,
}

impl Default for LimiterConfig {
    fn default() -> LimiterConfig {
        LimiterConfig {
            safety_factor: 1.0,
            sandbox: false,
            default_max_wait: Duration::from_secs(10),
            max_queue: 1000,
            default_share: 0.2,
            expected_instances: 1,
            fail_mode: FailMode::Local,
            plans: Plans::default(),
            spacing_allowance: 0.0,
            application: HashMap::new(),
        }
    }
}

/// Where the shared buckets live.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Connection URL (may hold a password, so it never prints).
    pub url: crate::secret::Secret<String>,
    /// Prefix of every key (`<prefix>rl:{seller}:operation`).
    pub key_prefix: String,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// How long decisions stay local after a failure before Redis is tried again.
    pub retry_backoff: Duration,
    /// TLS roots and ACL credentials.
    pub access: crate::config::RedisAccess,
}

impl RedisSettings {
    /// Settings for a URL with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url: crate::secret::Secret::new(url.into()),
            key_prefix: "spgate:".into(),
            timeout: Duration::from_millis(100),
            retry_backoff: Duration::from_secs(1),
            access: crate::config::RedisAccess::default(),
        }
    }
}

/// The resolved `[ratelimit]` section.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Limiter behaviour and plans.
    pub limiter: LimiterConfig,
    /// Redis, when the buckets are shared.
    pub redis: Option<RedisSettings>,
}

// === parsing ===

/// Parses the value of the `[ratelimit]` table, keeping going past unknown keys (reported with
/// their paths, e.g. `ratelimit.plans.x.foo`).
pub fn parse_section(value: toml::Value) -> (RawRateLimit, Vec<ConfigIssue>) {
    let mut raw = RawRateLimit::default();
    let mut issues = Vec::new();
    crate::config::section("ratelimit", value, &mut raw, &mut issues);
    (raw, issues)
}

/// Parses a whole config file's text and resolves its `[ratelimit]` section (absent: defaults).
pub fn from_toml(text: &str, catalog: &Catalog) -> Result<RateLimitSettings, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError(vec![issue("", &format!("invalid TOML: {}", e.message()))])
    })?;
    let (raw, mut issues) = match table.remove("ratelimit") {
        Some(value) => parse_section(value),
        None => (RawRateLimit::default(), Vec::new()),
    };
    match raw.resolve(catalog) {
        Ok(settings) if issues.is_empty() => Ok(settings),
        Ok(_) => Err(ConfigError(issues)),
        Err(more) => {
            issues.extend(more);
            Err(ConfigError(issues))
        }
    }
}

fn issue(path: &str, message: &str) -> ConfigIssue {
    ConfigIssue {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// A map key as it appears in a dotted path: quoted when it contains a dot.
fn key_segment(key: &str) -> String {
    if key.contains('.') {
        format!("{key:?}")
    } else {
        key.to_string()
    }
}

// === resolving ===

impl RawRateLimit {
    /// Validates the section against the catalog (API and operation names) and returns every
    /// problem with its key path.
    pub fn resolve(&self, catalog: &Catalog) -> Result<RateLimitSettings, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let defaults = LimiterConfig::default();
        let safety_factor = self.safety_factor.unwrap_or(defaults.safety_factor);
        if !(safety_factor.is_finite() && safety_factor > 0.0 && safety_factor <= 1.0) {
            issues.push(issue(
                "ratelimit.safety_factor",
                "must be greater than 0 and at most 1",
            ));
        }
        let fail_mode = match self.fail_mode.as_deref().unwrap_or("local") {
            "local" => FailMode::Local,
            "closed" => FailMode::Closed,
            other => {
                issues.push(issue(
                    "ratelimit.fail_mode",
                    &format!("unknown mode {other:?} (expected \"local\" or \"closed\")"),
                ));
                FailMode::Local
            }
        };
        let expected_instances = self
            .expected_instances
            .unwrap_or(defaults.expected_instances);
        if expected_instances == 0 {
            issues.push(issue("ratelimit.expected_instances", "must be at least 1"));
        }
        let default_max_wait_ms = self.default_max_wait_ms.unwrap_or(10_000);
        if default_max_wait_ms > 3_600_000 {
            issues.push(issue(
                "ratelimit.default_max_wait_ms",
                "must be at most 3600000 (one hour)",
            ));
        }
        let max_queue = self.max_queue.unwrap_or(defaults.max_queue);
        if max_queue == 0 {
            issues.push(issue("ratelimit.max_queue", "must be at least 1"));
        }
        let default_share = self.default_share.unwrap_or(defaults.default_share);
        if !valid_share(default_share) {
            issues.push(issue(
                "ratelimit.default_share",
                "must be greater than 0 and at most 1",
            ));
        }
        let redis = self.redis.as_ref().map(|r| resolve_redis(r, &mut issues));
        let mut plans = Plans::default();
        let apis: HashSet<&str> = catalog.operations().iter().map(|o| o.api).collect();
        for (name, raw) in self.plans.iter().flatten() {
            let path = format!("ratelimit.plans.{}", key_segment(name));
            if name.trim().is_empty() {
                issues.push(issue(&path, "a plan needs a non-empty name"));
            }
            let plan = resolve_plan(raw, &path, catalog, &apis, &mut issues);
            plans.plans.insert(name.clone(), plan);
        }
        let spacing_allowance = self.spacing_allowance.unwrap_or(0.03);
        if !(spacing_allowance.is_finite() && (0.0..=0.5).contains(&spacing_allowance)) {
            issues.push(issue(
                "ratelimit.spacing_allowance",
                "must be between 0 and 0.5",
            ));
        }
        let mut application = HashMap::new();
        for (key, raw) in self.application.iter().flatten() {
            let path = format!("ratelimit.application.{}", key_segment(key));
            let Some(op) = catalog.by_key(key) else {
                issues.push(issue(
                    &path,
                    &format!("unknown operation {key:?} (expected a catalog key such as \"catalogItems_2022-04-01.getCatalogItem\")"),
                ));
                continue;
            };
            let mut over = AppOverride::default();
            if raw.rate_per_second.is_some() || raw.burst.is_some() {
                over.plan = resolve_app_limit(raw, op.app_plan, &path, &mut issues);
            }
            for (name, kind_raw) in raw.kinds.iter().flatten() {
                let kind_path = format!("{path}.kinds.{}", key_segment(name));
                if kind_raw.kinds.is_some() {
                    issues.push(issue(
                        &format!("{kind_path}.kinds"),
                        "a sub-limit has no kinds",
                    ));
                }
                match name.parse::<CallKind>() {
                    Ok(kind) => {
                        if let Some(plan) = resolve_app_limit(
                            kind_raw,
                            op.app_sub_limit(kind),
                            &kind_path,
                            &mut issues,
                        ) {
                            over.kinds.insert(kind, plan);
                        }
                    }
                    Err(e) => issues.push(issue(&kind_path, &e.to_string())),
                }
            }
            application.insert(key.clone(), over);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(RateLimitSettings {
            limiter: LimiterConfig {
                safety_factor,
                sandbox: self.sandbox.unwrap_or(false),
                default_max_wait: Duration::from_millis(default_max_wait_ms),
                max_queue,
                default_share,
                expected_instances,
                fail_mode,
                plans,
                spacing_allowance,
                application,
            },
            redis,
        })
    }
}

fn valid_share(s: f64) -> bool {
    s.is_finite() && s > 0.0 && s <= 1.0
}

fn resolve_redis(raw: &RawRedis, issues: &mut Vec<ConfigIssue>) -> RedisSettings {
    use crate::config::RawSecret;
    // A reference is read by `config` (the only module that reads env and files); a literal
    // URL may be written here only when it holds no password.
    let literal = match &raw.url {
        Some(RawSecret::Literal(url)) => Some(url.clone()),
        _ => None,
    };
    let mut settings = RedisSettings::new(literal.clone().unwrap_or_default());
    match (&raw.url, literal.as_deref()) {
        (None, _) => issues.push(issue("ratelimit.redis.url", "required")),
        (Some(_), Some(url)) if url.contains('@') => issues.push(issue(
            "ratelimit.redis.url",
            "a URL with a password is a secret: use { env = \"NAME\" } or { file = \"/path\" }",
        )),
        (Some(_), Some(url)) => {
            if redis::Client::open(url).is_err() {
                issues.push(issue("ratelimit.redis.url", "not a Redis URL"));
            }
        }
        (Some(_), None) => {}
    }
    if let Some(prefix) = &raw.key_prefix {
        if prefix.contains(['{', '}']) {
            issues.push(issue(
                "ratelimit.redis.key_prefix",
                "must not contain { or } (the limiter sets the hash tag)",
            ));
        }
        settings.key_prefix = prefix.clone();
    }
    if let Some(ms) = raw.timeout_ms {
        if ms == 0 {
            issues.push(issue("ratelimit.redis.timeout_ms", "must be at least 1 ms"));
        }
        settings.timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = raw.retry_backoff_ms {
        if ms == 0 {
            issues.push(issue(
                "ratelimit.redis.retry_backoff_ms",
                "must be at least 1 ms",
            ));
        }
        settings.retry_backoff = Duration::from_millis(ms);
    }
    settings
}

/// One application-wide limit: `rate_per_second` required, `burst` defaulting to the published
/// one (else 1).
fn resolve_app_limit(
    raw: &RawAppLimit,
    published: Option<UsagePlan>,
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<UsagePlan> {
    let burst = raw.burst.or(published.map(|p| p.burst)).unwrap_or(1);
    if burst == 0 {
        issues.push(issue(&format!("{path}.burst"), "must be at least 1"));
        return None;
    }
    match raw.rate_per_second {
        None => {
            issues.push(issue(&format!("{path}.rate_per_second"), "required"));
            None
        }
        Some(rate) if !(rate.is_finite() && rate > 0.0) => {
            issues.push(issue(
                &format!("{path}.rate_per_second"),
                "must be greater than 0",
            ));
            None
        }
        Some(rate_per_second) => Some(UsagePlan {
            rate_per_second,
            burst,
        }),
    }
}

fn resolve_plan(
    raw: &RawPlan,
    path: &str,
    catalog: &Catalog,
    apis: &HashSet<&str>,
    issues: &mut Vec<ConfigIssue>,
) -> Plan {
    let max_priority = match raw.max_priority.as_deref() {
        None => Priority::Normal,
        Some(s) => Priority::from_str(s).unwrap_or_else(|_| {
            issues.push(issue(
                &format!("{path}.max_priority"),
                &format!("unknown priority {s:?} (expected \"high\", \"normal\" or \"low\")"),
            ));
            Priority::Normal
        }),
    };
    if raw.max_wait_ms.is_some_and(|ms| ms > 3_600_000) {
        issues.push(issue(
            &format!("{path}.max_wait_ms"),
            "must be at most 3600000 (one hour)",
        ));
    }
    let default = raw
        .default
        .as_ref()
        .and_then(|r| resolve_rule(r, &format!("{path}.default"), issues));
    let mut plan_apis = HashMap::new();
    for (api, rule) in raw.apis.iter().flatten() {
        let rule_path = format!("{path}.apis.{}", key_segment(api));
        if !apis.contains(api.as_str()) {
            issues.push(issue(
                &rule_path,
                &format!("unknown API {api:?} (expected a catalog API such as \"orders\")"),
            ));
        }
        if let Some(rule) = resolve_rule(rule, &rule_path, issues) {
            plan_apis.insert(api.clone(), rule);
        }
    }
    let mut operations = HashMap::new();
    for (key, rule) in raw.operations.iter().flatten() {
        let rule_path = format!("{path}.operations.{}", key_segment(key));
        if catalog.by_key(key).is_none() {
            issues.push(issue(
                &rule_path,
                &format!(
                    "unknown operation {key:?} (expected a catalog key such as \"ordersV0.getOrderAddress\")"
                ),
            ));
        }
        if let Some(rule) = resolve_rule(rule, &rule_path, issues) {
            operations.insert(key.clone(), rule);
        }
    }
    Plan {
        max_wait: raw.max_wait_ms.map(Duration::from_millis),
        max_priority,
        default,
        apis: plan_apis,
        operations,
    }
}

fn resolve_rule(raw: &RawRule, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<Rule> {
    match (raw.share, raw.rate_per_second, raw.burst) {
        (Some(share), None, None) => {
            if valid_share(share) {
                Some(Rule::Share(share))
            } else {
                issues.push(issue(
                    &format!("{path}.share"),
                    "must be greater than 0 and at most 1",
                ));
                None
            }
        }
        (None, Some(rate), Some(burst)) => {
            let mut ok = true;
            if !(rate.is_finite() && rate > 0.0) {
                issues.push(issue(
                    &format!("{path}.rate_per_second"),
                    "must be greater than 0",
                ));
                ok = false;
            }
            if burst == 0 {
                issues.push(issue(&format!("{path}.burst"), "must be at least 1"));
                ok = false;
            }
            ok.then_some(Rule::Absolute {
                rate_per_second: rate,
                burst,
            })
        }
        (None, Some(_), None) => {
            issues.push(issue(
                &format!("{path}.burst"),
                "required with rate_per_second",
            ));
            None
        }
        (None, None, Some(_)) => {
            issues.push(issue(
                &format!("{path}.rate_per_second"),
                "required with burst",
            ));
            None
        }
        (Some(_), _, _) => {
            issues.push(issue(
                path,
                "give either share or rate_per_second with burst, not both",
            ));
            None
        }
        (None, None, None) => {
            issues.push(issue(
                path,
                "give either share or rate_per_second with burst",
            ));
            None
        }
    }
}
