//! `[audit]`: where the audit chain lives, how long it is kept, how often it is synced, and the
//! alert rules.
//!
//! ```toml
//! [audit]
//! dir = "data/audit"
//! instance = "gw1"                      # default: the host name
//! key = { env = "SPGATE_AUDIT_KEY" }    # base64, at least 32 bytes; never the master key
//! retain_days = 365                     # at least 365 (Amazon's DPP: 12 months)
//! fsync = "interval"                    # never | interval | always
//! fsync_interval_ms = 1000
//! queue_capacity = 65536
//! write_delay_ms = 50                   # 1..=1000: how long an ordinary record may wait
//! on_failure = "refuse"                 # refuse | serve_non_pii, while the log cannot be written
//! full_wait_ms = 100                    # 1..=10000: how long records await room once the queue is full
//! stall_timeout_ms = 10000              # 100..=600000: no writer progress this long = unavailable
//!
//! [audit.alerts]
//! reveals_per_tool_per_hour = 20
//! seller_denials = true
//! denial_burst = { count = 20, window_secs = 60 }
//! new_pii_category = true
//! cooldown_secs = 600
//! webhook = { env = "SPGATE_ALERT_WEBHOOK" }  # a URL, often with a token in it: a secret
//! webhook_timeout_ms = 5000
//! ```
//!
//! Parsed by [`parse_section`] into [`RawAudit`]; [`RawAudit::resolve`] takes the secrets the
//! config module has read (the key and the webhook URL) and reports problems with key paths.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::config::{ConfigIssue, Env, RawSecret};
use crate::secret::Secret;

/// The default of `full_wait_ms`.
pub const DEFAULT_FULL_WAIT_MS: u64 = 100;

/// The default of `stall_timeout_ms`.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 10_000;

/// The shortest retention allowed without `allow_short_retention` (Amazon's DPP: 12 months).
pub const MIN_RETAIN_DAYS: u32 = 365;

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Directory of the chain files (shared by instances, each writing its own chain).
    pub dir: Option<PathBuf>,
    /// This process's chain name; `[A-Za-z0-9_-]`, unique per running process.
    pub instance: Option<String>,
    /// The audit HMAC key (a reference; base64 of at least 32 bytes).
    pub key: Option<RawSecret>,
    /// Days a chain file is kept after its day.
    pub retain_days: Option<u32>,
    /// Allows `retain_days` below 365 (tests and demos only).
    pub allow_short_retention: Option<bool>,
    /// `never`, `interval` (default) or `always` (after every batch written).
    pub fsync: Option<String>,
    /// With `fsync = "interval"`: how often.
    pub fsync_interval_ms: Option<u64>,
    /// Records waiting for the writer before `record` blocks.
    pub queue_capacity: Option<usize>,
    /// How long a record nobody waits for may wait to be written, in ms (default 50): the
    /// writer collects them over this window instead of waking per record. Records that are
    /// waited for (buyer PII answers, reveals, admin actions) are written at once.
    pub write_delay_ms: Option<u64>,
    /// `refuse` (default) or `serve_non_pii`: what the gateway does while the log cannot be
    /// written.
    pub on_failure: Option<String>,
    /// How long records await room once the queue is found full, in ms (default 100): one
    /// deadline for every record of the episode, awaited without holding a thread (records
    /// made where nothing can await are refused at once); a record without room by then is
    /// refused (counted lost, reported by a gap record). The log is unavailable from the first
    /// look at the full queue until the writer writes again.
    pub full_wait_ms: Option<u64>,
    /// In ms (default 10000): a writer with records in hand that makes no progress this long
    /// (a disk that hangs without failing) makes the log unavailable until it progresses.
    pub stall_timeout_ms: Option<u64>,
    /// `[audit.alerts]`.
    pub alerts: Option<RawAlerts>,
}

/// `[audit.alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Alert when one tool makes more reveals than this within an hour.
    pub reveals_per_tool_per_hour: Option<u32>,
    /// Alert when a tool asks for a seller its key may not use.
    pub seller_denials: Option<bool>,
    /// Alert on this many denials (401/403) by one tool within the window.
    pub denial_burst: Option<RawDenialBurst>,
    /// Alert when a role receives a PII category it never received before.
    pub new_pii_category: Option<bool>,
    /// The same rule does not fire again for the same tool (or role) within this time.
    pub cooldown_secs: Option<u64>,
    /// Where alerts are POSTed (a reference: webhook URLs usually embed a token).
    pub webhook: Option<RawSecret>,
    /// The webhook's timeout.
    pub webhook_timeout_ms: Option<u64>,
}

/// `denial_burst = { count, window_secs }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDenialBurst {
    /// Denials.
    pub count: Option<u32>,
    /// Within this many seconds.
    pub window_secs: Option<u64>,
}

/// The resolved audit configuration.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory of the chain files.
    pub dir: PathBuf,
    /// This process's chain name.
    pub instance: String,
    /// The audit HMAC key.
    pub key: Secret<Vec<u8>>,
    /// Days a chain file is kept.
    pub retain_days: u32,
    /// When the chain is made durable.
    pub fsync: FsyncPolicy,
    /// Records waiting for the writer before `record` blocks.
    pub queue_capacity: usize,
    /// How long a record nobody waits for may wait to be written (what a SIGKILL can lose of
    /// them).
    pub write_delay: Duration,
    /// What the gateway does while the log cannot be written.
    pub on_failure: OnFailure,
    /// How long the records of one full-queue episode may await room before they are refused.
    pub full_wait: Duration,
    /// No writer progress this long with records in hand makes the log unavailable.
    pub stall_timeout: Duration,
    /// Alert rules.
    pub alerts: AlertRules,
}

/// What the gateway does while the audit log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Proxied requests and admin or security actions get 503 until the log writes again.
    #[default]
    Refuse,
    /// Operations that may carry buyer PII get 503; the others are served (their records are
    /// counted in a gap record once the log writes again).
    ServeNonPii,
}

/// When written records are fsynced. Records are always written through to the OS after each
/// batch; this decides when they survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never explicitly (the OS decides).
    Never,
    /// At most this long after a record is written.
    Interval(Duration),
    /// After every batch, before the head moves (a batch is whatever was queued).
    Always,
}

/// The alert rules.
#[derive(Debug, Clone, Default)]
pub struct AlertRules {
    /// More than this many reveals per tool per hour.
    pub reveals_per_tool_per_hour: Option<u32>,
    /// Any request for a seller the tool may not use.
    pub seller_denials: bool,
    /// This many denials by one tool within the window.
    pub denial_burst: Option<DenialBurst>,
    /// A role receives a PII category for the first time.
    pub new_pii_category: bool,
    /// Quiet time per rule and tool (or role) after an alert.
    pub cooldown: Duration,
    /// Where alerts are POSTed.
    pub webhook: Option<Secret<String>>,
    /// The webhook's timeout.
    pub webhook_timeout: Duration,
}

/// A burst of denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialBurst {
    /// Denials.
    pub count: u32,
    /// Within this time.
    pub window: Duration,
}

/// Parses the `[audit]` table, reporting unknown keys and type errors with their paths.
pub fn parse_section(value: toml::Value) -> (RawAudit, Vec<ConfigIssue>) {
    let mut raw = RawAudit::default();
    let mut issues = Vec::new();
    crate::config::section("audit", value, &mut raw, &mut issues);
    (raw, issues)
}

/// Decodes an audit key: base64 (standard or URL-safe, padding optional) of at least 32 bytes.
pub fn decode_key(encoded: &Secret<String>) -> Result<Secret<Vec<u8>>, String> {
    let text = encoded.expose().trim();
    let bytes = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ]
    .iter()
    .find_map(|e| e.decode(text).ok())
    .ok_or_else(|| "the audit key must be base64".to_string())?;
    if bytes.len() < 32 {
        return Err(format!(
            "the audit key must be at least 32 bytes (got {})",
            bytes.len()
        ));
    }
    Ok(Secret::new(bytes))
}

/// The default instance name: the host name, reduced to `[A-Za-z0-9_-]` (dots become `-`).
pub fn default_instance(env: &dyn Env) -> String {
    let host = env
        .var("HOSTNAME")
        .or_else(|| env.read_file(std::path::Path::new("/etc/hostname")).ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    if name.is_empty() {
        "spgate".to_string()
    } else {
        name
    }
}

// === impl RawAudit ===

impl RawAudit {
    /// Validates the section. `key` is the resolved `audit.key` reference, `webhook` the
    /// resolved `audit.alerts.webhook` (when set); `env` supplies the host name for the default
    /// instance. Every problem is reported with its key path.
    pub fn resolve(
        &self,
        key: &Secret<String>,
        webhook: Option<Secret<String>>,
        env: &dyn Env,
    ) -> Result<AuditConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, message: String| {
            issues.push(ConfigIssue {
                path: path.to_string(),
                message,
            })
        };
        let key = match decode_key(key) {
            Ok(k) => k,
            Err(m) => {
                issue("audit.key", m);
                Secret::new(Vec::new())
            }
        };
        let instance = match &self.instance {
            Some(i) if super::chain::valid_instance(i) => i.clone(),
            Some(_) => {
                issue(
                    "audit.instance",
                    "must be 1-64 characters of [A-Za-z0-9_-]".into(),
                );
                String::new()
            }
            None => default_instance(env),
        };
        let retain_days = self.retain_days.unwrap_or(MIN_RETAIN_DAYS);
        if retain_days == 0 {
            issue("audit.retain_days", "must be at least 1".into());
        } else if retain_days < MIN_RETAIN_DAYS && !self.allow_short_retention.unwrap_or(false) {
            issue(
                "audit.retain_days",
                format!("must be at least {MIN_RETAIN_DAYS} (Amazon's DPP keeps audit logs 12 months); allow_short_retention = true is for tests and demos"),
            );
        }
        let interval = Duration::from_millis(self.fsync_interval_ms.unwrap_or(1000));
        if interval.is_zero() {
            issue("audit.fsync_interval_ms", "must be at least 1 ms".into());
        }
        let fsync = match self.fsync.as_deref().unwrap_or("interval") {
            "never" => FsyncPolicy::Never,
            "interval" => FsyncPolicy::Interval(interval),
            "always" => FsyncPolicy::Always,
            _ => {
                issue(
                    "audit.fsync",
                    "must be \"never\", \"interval\" or \"always\"".into(),
                );
                FsyncPolicy::Always
            }
        };
        let queue_capacity = self.queue_capacity.unwrap_or(65_536);
        if !(16..=16 * 1024 * 1024).contains(&queue_capacity) {
            issue(
                "audit.queue_capacity",
                "must be between 16 and 16777216".into(),
            );
        }
        let write_delay_ms = self.write_delay_ms.unwrap_or(50);
        if !(1..=1000).contains(&write_delay_ms) {
            issue("audit.write_delay_ms", "must be between 1 and 1000".into());
        }
        let full_wait_ms = self.full_wait_ms.unwrap_or(DEFAULT_FULL_WAIT_MS);
        if !(1..=10_000).contains(&full_wait_ms) {
            issue("audit.full_wait_ms", "must be between 1 and 10000".into());
        }
        let stall_timeout_ms = self.stall_timeout_ms.unwrap_or(DEFAULT_STALL_TIMEOUT_MS);
        if !(100..=600_000).contains(&stall_timeout_ms) {
            issue(
                "audit.stall_timeout_ms",
                "must be between 100 and 600000".into(),
            );
        }
        let on_failure = match self.on_failure.as_deref().unwrap_or("refuse") {
            "refuse" => OnFailure::Refuse,
            "serve_non_pii" => OnFailure::ServeNonPii,
            _ => {
                issue(
                    "audit.on_failure",
                    "must be \"refuse\" or \"serve_non_pii\"".into(),
                );
                OnFailure::Refuse
            }
        };
        let a = self.alerts.as_ref();
        let denial_burst = a.and_then(|a| a.denial_burst.as_ref()).map(|b| {
            let count = b.count.unwrap_or(0);
            let window = b.window_secs.unwrap_or(0);
            if count == 0 || window == 0 {
                issue(
                    "audit.alerts.denial_burst",
                    "needs count and window_secs, both above 0".into(),
                );
            }
            DenialBurst {
                count,
                window: Duration::from_secs(window),
            }
        });
        if let Some(url) = &webhook {
            let ok = url.expose().parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                issue("audit.alerts.webhook", "must be an http(s) URL".into());
            }
        }
        let alerts = AlertRules {
            reveals_per_tool_per_hour: a.and_then(|a| a.reveals_per_tool_per_hour),
            seller_denials: a.and_then(|a| a.seller_denials).unwrap_or(false),
            denial_burst,
            new_pii_category: a.and_then(|a| a.new_pii_category).unwrap_or(false),
            cooldown: Duration::from_secs(a.and_then(|a| a.cooldown_secs).unwrap_or(600)),
            webhook,
            webhook_timeout: Duration::from_millis(
                a.and_then(|a| a.webhook_timeout_ms).unwrap_or(5000).max(1),
            ),
        };
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(AuditConfig {
            dir: self
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/audit")),
            instance,
            key,
            retain_days,
            fsync,
            queue_capacity,
            write_delay: Duration::from_millis(write_delay_ms),
            on_failure,
            full_wait: Duration::from_millis(full_wait_ms),
            stall_timeout: Duration::from_millis(stall_timeout_ms),
            alerts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;

    const KEY_B64: &str = "c3ludGhldGljLWF1ZGl0LWtleS0wMTIzNDU2Nzg5YWJjZGVm";

    fn resolve(toml_text: &str) -> Result<AuditConfig, Vec<ConfigIssue>> {
        let value: toml::Value = toml_text.parse::<toml::Table>().unwrap().into();
        let (raw, issues) = parse_section(value);
        assert!(issues.is_empty(), "{issues:?}");
        let mut env = MapEnv::default();
        env.vars
            .insert("HOSTNAME".into(), "gw-1.example.internal".into());
        raw.resolve(&Secret::new(KEY_B64.into()), None, &env)
    }

    #[test]
    fn defaults_keep_a_year_sync_every_second_and_name_the_instance_after_the_host() {
        let c = resolve("").unwrap();
        assert_eq!(c.retain_days, 365);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_secs(1)));
        assert_eq!(c.instance, "gw-1-example-internal");
        assert_eq!(c.key.expose().len(), 36);
        assert!(!c.alerts.seller_denials && c.alerts.denial_burst.is_none());
        assert_eq!(c.write_delay, Duration::from_millis(50));
        assert_eq!(
            resolve("write_delay_ms = 10").unwrap().write_delay,
            Duration::from_millis(10)
        );
        for bad in ["write_delay_ms = 0", "write_delay_ms = 1001"] {
            assert_eq!(resolve(bad).unwrap_err()[0].path, "audit.write_delay_ms");
        }
        assert_eq!(c.full_wait, Duration::from_millis(100));
        assert_eq!(c.stall_timeout, Duration::from_secs(10));
        let c = resolve("full_wait_ms = 5\nstall_timeout_ms = 250").unwrap();
        assert_eq!(
            (c.full_wait, c.stall_timeout),
            (Duration::from_millis(5), Duration::from_millis(250))
        );
        for (bad, path) in [
            ("full_wait_ms = 0", "audit.full_wait_ms"),
            ("full_wait_ms = 10001", "audit.full_wait_ms"),
            ("stall_timeout_ms = 99", "audit.stall_timeout_ms"),
        ] {
            assert_eq!(resolve(bad).unwrap_err()[0].path, path);
        }
    }

    #[test]
    fn short_retention_needs_the_explicit_flag_and_bad_values_name_their_key() {
        let e = resolve("retain_days = 30").unwrap_err();
        assert_eq!(e[0].path, "audit.retain_days");
        assert_eq!(
            resolve("retain_days = 30\nallow_short_retention = true")
                .unwrap()
                .retain_days,
            30
        );
        let e = resolve(
            "fsync = \"sometimes\"\ninstance = \"a b\"\n[alerts]\ndenial_burst = { count = 5 }",
        )
        .unwrap_err();
        let paths: Vec<_> = e.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["audit.instance", "audit.fsync", "audit.alerts.denial_burst"]
        );
        let value: toml::Value = "colour = 1".parse::<toml::Table>().unwrap().into();
        assert_eq!(parse_section(value).1[0].path, "audit.colour");
    }

    #[test]
    fn alert_rules_resolve_and_a_short_key_is_refused() {
        let c = resolve("[alerts]\nreveals_per_tool_per_hour = 3\nseller_denials = true\ndenial_burst = { count = 5, window_secs = 60 }\nnew_pii_category = true").unwrap();
        assert_eq!(c.alerts.reveals_per_tool_per_hour, Some(3));
        assert_eq!(
            c.alerts.denial_burst,
            Some(DenialBurst {
                count: 5,
                window: Duration::from_secs(60)
            })
        );
        assert!(decode_key(&Secret::new("c2hvcnQ=".into())).is_err());
        assert!(decode_key(&Secret::new("not base64!".into())).is_err());
    }
}
