//! Token buckets per (caller, operation), as SP-API's usage plans describe them.
//!
//! A bucket starts full (`burst` tokens), gains `rate_per_second` tokens per second up to
//! `burst`, and each request takes one token. An empty bucket means `429 QuotaExceeded`.
//! Operations with an application-wide limit also count against the application (all sellers
//! together), and against its sub-limit for the kind of call the query shows. Amazon states
//! those limits as requests per second and publishes no burst for them, so the sandbox holds
//! them as written: at most `rate` requests in any one-second window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

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

/// Every bucket, by operation key, then by subject; the application windows likewise.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    buckets: HashMap<&'static str, HashMap<String, Bucket>>,
    windows: HashMap<&'static str, HashMap<String, VecDeque<Instant>>>,
}

/// The window of an application-wide limit.
const WINDOW: Duration = Duration::from_secs(1);

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
            let full = match subject {
                Subject::Application(..) => {
                    let window = self.window(*subject, op_key, now);
                    window.len() as f64 >= plan.rate_per_second.floor().max(1.0)
                }
                // A tolerance for float rounding: 0.5/s over exactly 2 s must refill a token.
                _ => self.refilled(*subject, op_key, *plan, now).tokens < 1.0 - 1e-9,
            };
            if full && empty.is_none() {
                empty = Some(i);
            }
        }
        if empty.is_none() {
            for (subject, op_key, plan) in buckets {
                match subject {
                    Subject::Application(..) => self.window(*subject, op_key, now).push_back(now),
                    _ => {
                        let bucket = self.refilled(*subject, op_key, *plan, now);
                        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
                    }
                }
            }
        }
        empty
    }

    /// The application's arrivals within the last second.
    fn window(
        &mut self,
        subject: Subject<'_>,
        op_key: &'static str,
        now: Instant,
    ) -> &mut VecDeque<Instant> {
        let window = self
            .windows
            .entry(op_key)
            .or_default()
            .entry(subject_key(subject))
            .or_default();
        while window
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= WINDOW)
        {
            window.pop_front();
        }
        window
    }

    fn refilled(
        &mut self,
        subject: Subject<'_>,
        op_key: &'static str,
        plan: UsagePlan,
        now: Instant,
    ) -> &mut Bucket {
        let key = subject_key(subject);
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

fn subject_key(subject: Subject<'_>) -> String {
    match subject {
        Subject::Seller(id) => format!("seller:{id}"),
        Subject::Client(id) => format!("client:{id}"),
        Subject::Application(id, None) => format!("app:{id}"),
        Subject::Application(id, Some(kind)) => format!("app:{id}:{kind}"),
    }
}
