//! Requests refused before authentication, aggregated: one `unauthenticated` record per source
//! address and reason per minute (with the count and the span), instead of one per request.
//! Reasons: `unauthenticated` (no or a bad credential) and `address_limited` (the address was
//! past its per-address limit, `server::peers`, and got 429 before anything else was done; such
//! a request never reaches Amazon). The aggregates are written by the audit writer at least once
//! a minute and at shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::record::{Kind, Reason, Record, Stamp};

/// Open aggregates kept before new sources are folded into one.
pub const MAX_SOURCES: usize = 10_000;

/// The source an address is counted under: itself, or its /64 for IPv6.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// How long an aggregate collects before it is written.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Aggregate {
    count: u64,
    first: OffsetDateTime,
    last: OffsetDateTime,
    opened: Instant,
}

/// The aggregates.
pub struct Noise {
    open: Mutex<HashMap<(IpAddr, &'static str), Aggregate>>,
    /// Whether any aggregate is open (the common case, none, costs no lock).
    any: AtomicBool,
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
        Noise {
            open: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, &'static str), Aggregate>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request from `ip` refused before authentication for `reason`.
    /// IPv6 addresses count per /64 (one host's range); past [`MAX_SOURCES`] open aggregates,
    /// new sources are folded into one under the unspecified address, so memory and records
    /// stay bounded whatever the noise.
    pub fn count(&self, ip: IpAddr, reason: &'static str) {
        let now = OffsetDateTime::now_utc();
        let mut ip = source(ip);
        let mut open = self.lock();
        if open.len() >= MAX_SOURCES && !open.contains_key(&(ip, reason)) {
            ip = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        }
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
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_address_and_reason_bounded_whatever_the_noise() {
        let noise = Noise::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..1000 {
            noise.count(a, "unauthenticated");
        }
        noise.count(a, "address_limited");
        noise.count(b, "unauthenticated");
        // Two hosts of one IPv6 /64 are one source.
        noise.count("2001:db8::1".parse().unwrap(), "unauthenticated");
        noise.count("2001:db8::2".parse().unwrap(), "unauthenticated");
        assert!(noise.take(false).is_empty(), "a minute has not passed");
        let mut summary: Vec<(String, String, u64)> = noise
            .take(true)
            .iter()
            .map(|r| {
                (
                    r.source.unwrap().to_string(),
                    r.reason.as_ref().unwrap().to_string(),
                    r.count.unwrap(),
                )
            })
            .collect();
        summary.sort();
        let s = |ip: &str, reason: &str, n| (ip.to_string(), reason.to_string(), n);
        assert_eq!(
            summary,
            vec![
                s("192.0.2.1", "address_limited", 1),
                s("192.0.2.1", "unauthenticated", 1000),
                s("192.0.2.2", "unauthenticated", 1),
                s("2001:db8::", "unauthenticated", 2),
            ]
        );
        assert!(noise.take(true).is_empty());

        // Rotating sources: bounded, and every request still counted.
        for i in 0..(MAX_SOURCES as u32 + 500) {
            noise.count(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                "unauthenticated",
            );
        }
        let records = noise.take(true);
        assert_eq!(records.len(), MAX_SOURCES + 1);
        let total: u64 = records.iter().map(|r| r.count.unwrap()).sum();
        assert_eq!(total, MAX_SOURCES as u64 + 500);
    }
}
