//! Token buckets per (caller, operation), as SP-API's usage plans describe them.
//!
//! A bucket starts full (`burst` tokens), gains `rate_per_second` tokens per second up to
//! `burst`, and each request takes one token. An empty bucket means `429 QuotaExceeded`.
//! Operations with an application-wide limit also take a token of the application's bucket
//! (all sellers together), and of its sub-limit for the kind of call the query shows.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::catalog::{CallKind, UsagePlan};

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject<'a> {
    /// A selling partner (access tokens and RDTs).
    Seller(&'a str),
    /// An LWA client (grantless tokens).
    Client(&'a str),
    /// An application (LWA client) across all its sellers, per kind of call for sub-limits.
    Application(&'a str, Option<CallKind>),
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
    /// Takes one token from every bucket named, or from none when one of them is empty; the
    /// answer is the index of the first empty bucket, if any ("whichever threshold you reach
    /// first").
    pub(super) fn take_all(
        &mut self,
        buckets: &[(Subject<'_>, &'static str, UsagePlan)],
        now: Instant,
    ) -> Option<usize> {
        let mut empty = None;
        for (i, (subject, op_key, plan)) in buckets.iter().enumerate() {
            let bucket = self.refilled(*subject, op_key, *plan, now);
            // A tolerance for float rounding: 0.5/s over exactly 2 s must refill a whole token.
            if bucket.tokens < 1.0 - 1e-9 && empty.is_none() {
                empty = Some(i);
            }
        }
        if empty.is_none() {
            for (subject, op_key, plan) in buckets {
                let bucket = self.refilled(*subject, op_key, *plan, now);
                bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            }
        }
        empty
    }

    fn refilled(
        &mut self,
        subject: Subject<'_>,
        op_key: &'static str,
        plan: UsagePlan,
        now: Instant,
    ) -> &mut Bucket {
        let key = match subject {
            Subject::Seller(id) => format!("seller:{id}"),
            Subject::Client(id) => format!("client:{id}"),
            Subject::Application(id, None) => format!("app:{id}"),
            Subject::Application(id, Some(kind)) => format!("app:{id}:{kind}"),
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
        bucket
    }
}
