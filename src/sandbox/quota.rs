//! Token buckets per (caller, operation), as SP-API's usage plans describe them.
//!
//! A bucket starts full (`burst` tokens), gains `rate_per_second` tokens per second up to
//! `burst`, and each request takes one token. An empty bucket means `429 QuotaExceeded`.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::catalog::UsagePlan;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject<'a> {
    /// A selling partner (access tokens and RDTs).
    Seller(&'a str),
    /// An LWA client (grantless tokens).
    Client(&'a str),
}

/// One bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// Every bucket, by operation key, then by subject.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    buckets: HashMap<&'static str, HashMap<String, Bucket>>,
}

impl Quotas {
    /// Takes one token from the subject's bucket for `op_key` at time `now`; false when empty.
    pub(super) fn take(
        &mut self,
        subject: Subject<'_>,
        op_key: &'static str,
        plan: UsagePlan,
        now: Instant,
    ) -> bool {
        let key = match subject {
            Subject::Seller(id) => format!("seller:{id}"),
            Subject::Client(id) => format!("client:{id}"),
        };
        let burst = f64::from(plan.burst);
        let bucket = self
            .buckets
            .entry(op_key)
            .or_default()
            .entry(key)
            .or_insert(Bucket {
                tokens: burst,
                refilled_at: now,
            });
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * plan.rate_per_second).min(burst);
        bucket.refilled_at = now;
        // A tolerance for float rounding: 0.5/s over exactly 2 s must refill a whole token.
        if bucket.tokens >= 1.0 - 1e-9 {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}
