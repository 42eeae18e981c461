//! Requests refused before authentication, aggregated: one `unauthenticated` record per source
//! address and reason per minute (with the count and the span), instead of one per request; and
//! a per-address limit in front for addresses that keep failing.
//!
//! An address that failed authentication within the current minute is held to
//! [`LIMIT_PER_SECOND`] requests a second (burst [`LIMIT_BURST`]) by a `governor` keyed limiter
//! before anything else is done for it; past that it gets 429 at once (counted in the same
//! aggregate, reason `unauthenticated_limited`). Addresses that never failed never meet the
//! limiter. The aggregates are written by the audit writer at least once a minute and at
//! shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use time::OffsetDateTime;

use super::record::{Kind, Reason, Record, Stamp};

/// Requests a second an address that failed authentication may still make.
pub const LIMIT_PER_SECOND: u32 = 20;

/// Their burst.
pub const LIMIT_BURST: u32 = 40;

/// How long an aggregate collects before it is written.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Aggregate {
    count: u64,
    first: OffsetDateTime,
    last: OffsetDateTime,
    opened: Instant,
}

/// The aggregates and the limiter.
pub struct Noise {
    open: Mutex<HashMap<(IpAddr, &'static str), Aggregate>>,
    /// Whether any aggregate is open (the common case, none, costs no lock).
    any: AtomicBool,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Noise").finish_non_exhaustive()
    }
}

impl Default for Noise {
    fn default() -> Noise {
        Noise::new()
    }
}

impl Noise {
    /// Empty.
    pub fn new() -> Noise {
        let per_second = NonZeroU32::new(LIMIT_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(LIMIT_BURST).unwrap_or(NonZeroU32::MIN);
        Noise {
            open: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
            limiter: RateLimiter::hashmap(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, &'static str), Aggregate>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request from `ip` is refused in front (the address failed authentication
    /// this minute and is past its limit). A refusal is counted.
    pub fn refuse(&self, ip: IpAddr) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let failed = {
            let open = self.lock();
            open.contains_key(&(ip, "unauthenticated"))
                || open.contains_key(&(ip, "unauthenticated_limited"))
        };
        if !failed || self.limiter.check_key(&ip).is_ok() {
            return false;
        }
        self.count(ip, "unauthenticated_limited");
        true
    }

    /// Counts one request from `ip` refused before authentication for `reason`.
    pub fn count(&self, ip: IpAddr, reason: &'static str) {
        let now = OffsetDateTime::now_utc();
        let mut open = self.lock();
        self.any.store(true, Ordering::Relaxed);
        let a = open.entry((ip, reason)).or_insert(Aggregate {
            count: 0,
            first: now,
            last: now,
            opened: Instant::now(),
        });
        a.count += 1;
        a.last = now;
    }

    /// The records of aggregates at least a minute old (all of them if `all`), removed.
    pub fn take(&self, all: bool) -> Vec<Record> {
        let mut open = self.lock();
        let due: Vec<(IpAddr, &'static str)> = open
            .iter()
            .filter(|(_, a)| all || a.opened.elapsed() >= WINDOW)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            if let Some(a) = open.remove(&key) {
                let mut r =
                    Record::new(Kind::Unauthenticated).with_reason(Reason::from_static(key.1));
                r.source = Some(key.0);
                r.count = Some(a.count);
                r.gap_from = Some(Stamp::lossy(&super::query::record_time(a.first)));
                r.gap_to = Some(Stamp::lossy(&super::query::record_time(a.last)));
                out.push(r);
            }
        }
        if open.is_empty() {
            self.any.store(false, Ordering::Relaxed);
            self.limiter.retain_recent();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_address_and_reason_and_a_limit_in_front() {
        let noise = Noise::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            !noise.refuse(a),
            "an address that never failed is not limited"
        );
        for _ in 0..1000 {
            if !noise.refuse(a) {
                noise.count(a, "unauthenticated");
            }
        }
        noise.count(b, "unauthenticated");
        assert!(noise.take(false).is_empty(), "a minute has not passed");
        let mut records = noise.take(true);
        records.sort_by_key(|r| (r.source, r.reason.clone()));
        let summary: Vec<(String, String, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.source.unwrap().to_string(),
                    r.reason.as_ref().unwrap().to_string(),
                    r.count.unwrap(),
                )
            })
            .collect();
        // The burst (plus the first) got through to authentication; the rest was refused.
        let through = summary
            .iter()
            .find(|s| s.0 == "192.0.2.1" && s.1 == "unauthenticated")
            .unwrap()
            .2;
        let limited = summary
            .iter()
            .find(|s| s.1 == "unauthenticated_limited")
            .unwrap()
            .2;
        assert_eq!(through + limited, 1000);
        assert!(
            through <= u64::from(LIMIT_BURST) + 5,
            "{through} went through"
        );
        assert_eq!(summary.len(), 3, "{summary:?}");
        assert!(noise.take(true).is_empty());
    }
}
