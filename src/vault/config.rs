//! `[retention]`: how long buyer PII may stay, and the PII cache.
//!
//! ```toml
//! [retention]
//! # Days after delivery until an order's cached PII and data key are deleted (at most 30,
//! # Amazon's limit; shorter is allowed).
//! max_days = 30
//! # Cancelled orders are due this long after the gateway sees the cancellation.
//! cancelled_grace_seconds = 0
//! # Cache restricted responses (sealed under the order's data key) so repeats spend no quota.
//! cache = true
//! cache_ttl_seconds = 300
//! # The deletion scheduler wakes at least this often (and at the next due date).
//! scan_interval_seconds = 60
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigIssue;

/// Amazon's Data Protection Policy: buyer PII is kept no longer than 30 days after delivery.
pub const AMAZON_MAX_DAYS: u32 = 30;

/// The `[retention]` section as written (every key optional). Unknown keys are reported by
/// `config::section`, like every other section.
#[derive(Debug, Default, Deserialize)]
pub struct RawRetention {
    /// Days after delivery (0 to 30; default 30).
    pub max_days: Option<u32>,
    /// Grace after a cancellation is seen (default 0: due at once).
    pub cancelled_grace_seconds: Option<u64>,
    /// Whether restricted responses are cached (default true).
    pub cache: Option<bool>,
    /// How long a cached response is served (default 300; never past the order's due date).
    pub cache_ttl_seconds: Option<u64>,
    /// Longest sleep of the deletion scheduler (default 60, 1 to 3600).
    pub scan_interval_seconds: Option<u64>,
}

/// The validated `[retention]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Days after delivery until deletion; never more than [`AMAZON_MAX_DAYS`].
    pub max_days: u32,
    /// Cancelled orders are due this long after the cancellation is seen.
    pub cancelled_grace: Duration,
    /// Whether restricted responses are cached.
    pub cache_enabled: bool,
    /// How long a cached response is served.
    pub cache_ttl: Duration,
    /// Longest sleep of the deletion scheduler between passes.
    pub scan_interval: Duration,
}

// === impl RawRetention ===

impl RawRetention {
    /// Validates the section; every problem comes with its key path (`retention.max_days`).
    pub fn resolve(&self) -> Result<RetentionConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, message: &str| {
            issues.push(ConfigIssue {
                path: format!("retention.{path}"),
                message: message.to_string(),
            })
        };
        let max_days = self.max_days.unwrap_or(AMAZON_MAX_DAYS);
        if max_days > AMAZON_MAX_DAYS {
            issue(
                "max_days",
                "must be at most 30: Amazon's Data Protection Policy allows no longer (use a legal hold for exceptions)",
            );
        }
        let cache_enabled = self.cache.unwrap_or(true);
        let cache_ttl = self.cache_ttl_seconds.unwrap_or(300);
        if cache_enabled && cache_ttl == 0 {
            issue(
                "cache_ttl_seconds",
                "must be at least 1 (or set cache = false)",
            );
        }
        let scan = self.scan_interval_seconds.unwrap_or(60);
        if !(1..=3600).contains(&scan) {
            issue("scan_interval_seconds", "must be between 1 and 3600");
        }
        let grace = self.cancelled_grace_seconds.unwrap_or(0);
        if grace > u64::from(AMAZON_MAX_DAYS) * 86_400 {
            issue("cancelled_grace_seconds", "must be at most 30 days");
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(RetentionConfig {
            max_days,
            cancelled_grace: Duration::from_secs(grace),
            cache_enabled,
            cache_ttl: Duration::from_secs(cache_ttl),
            scan_interval: Duration::from_secs(scan),
        })
    }
}

// === impl RetentionConfig ===

impl RetentionConfig {
    /// The defaults (what an absent `[retention]` section means).
    pub fn defaults() -> RetentionConfig {
        RawRetention::default()
            .resolve()
            .expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_never_configured_longer_than_amazon_allows() {
        let d = RetentionConfig::defaults();
        assert_eq!(d.max_days, 30);
        assert!(d.cache_enabled);
        let raw: RawRetention = toml::from_str("max_days = 31\nscan_interval_seconds = 0").unwrap();
        let paths: Vec<_> = raw
            .resolve()
            .unwrap_err()
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(
            paths,
            ["retention.max_days", "retention.scan_interval_seconds"]
        );
        let raw: RawRetention = toml::from_str("max_days = 7\ncache = false").unwrap();
        let c = raw.resolve().unwrap();
        assert_eq!((c.max_days, c.cache_enabled), (7, false));
    }
}
