//! The console's live request statistics: a ring of per-second aggregates over the last hour,
//! fed by the audit log's tap (every request record passes it as the audit writer takes it), so
//! the figures are those of the request records themselves. Without an `[audit]` section there
//! are no request records and the overview says so.
//!
//! The tap ([`feed`]) runs on the audit writer's thread, not on the request path, and never
//! waits: it counts a request record at once when the ring's lock is free (`try_lock`); while the
//! console holds the lock it offers a small [`Sample`] to a bounded queue instead (`try_send`),
//! which a thread of the console's counts (it sleeps on the queue, so it costs nothing while
//! the lock is free). A full queue drops the sample and counts the drop
//! (`spgate_console_tap_dropped_total`), so a stalled console costs the gateway nothing.
//!
//! Per second: requests, answers by status class, gateway 429s (the limiter refused) and
//! upstream 429s (Amazon's 429 passed on), and a latency histogram (quarter-octave buckets,
//! so p50/p99 are within 19 %); the same per tool (at most [`MAX_TOOLS`] named, the rest under
//! `other`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::audit::record::{Decision, Kind, Record};

/// Seconds kept.
pub const WINDOW: u64 = 3600;
/// Samples the tap's queue holds (while the console holds the ring's lock) before it drops them.
pub const TAP_QUEUE: usize = 4096;

/// Samples the tap dropped because its queue was full (`/metrics`).
static TAP_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Samples the tap dropped so far (all consoles of the process).
pub fn tap_dropped() -> u64 {
    TAP_DROPPED.load(Ordering::Relaxed)
}

/// What the statistics need of one request record.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When (unix seconds).
    pub at: u64,
    /// The tool (`-`: none authenticated).
    pub tool: Option<crate::audit::record::Name>,
    /// The status answered.
    pub status: Option<u16>,
    /// The gateway's limiter refused it.
    pub gateway_429: bool,
    /// Its latency.
    pub latency_us: Option<u64>,
}

impl Sample {
    /// The sample of a request record seen at `at` (none for other records). A document
    /// download has two request records, one when it starts and one when its stream ends: it
    /// counts once, by its start (as `audit report` counts it), with the status and latency of
    /// its answer.
    pub fn of(record: &Record, at: u64) -> Option<Sample> {
        Sample::counted(record).then(|| {
            let f = Sample::fields(record, at);
            Sample {
                at,
                tool: record.tool.clone(),
                status: f.status,
                gateway_429: f.gateway_429,
                latency_us: f.latency_us,
            }
        })
    }

    /// Whether the statistics count `record` (see [`Sample::of`]).
    fn counted(record: &Record) -> bool {
        record.kind == Kind::Request && record.completed.is_none() && !record.is_withheld_note()
    }

    /// What is counted of `record`, borrowed (no allocation).
    fn fields(record: &Record, at: u64) -> Fields<'_> {
        Fields {
            at,
            tool: record.tool.as_ref().map_or("-", |t| t.as_str()),
            status: record.status,
            gateway_429: record
                .limiter
                .is_some_and(|l| l.decision == Decision::Rejected),
            latency_us: record.latency_us,
        }
    }
}

/// A sample's figures, the tool borrowed.
struct Fields<'a> {
    at: u64,
    tool: &'a str,
    status: Option<u16>,
    gateway_429: bool,
    latency_us: Option<u64>,
}

/// The audit tap feeding `stats` (called on the audit writer's thread, never waiting): a request
/// record is counted at once when the ring's lock is free; while the console holds it, the
/// record's [`Sample`] is offered to a queue of `capacity` (full: dropped and counted), which a
/// thread of the console's counts as samples come (it ends when the tap is dropped, with its
/// auditor).
pub fn feed(stats: Arc<Stats>, capacity: usize) -> crate::audit::writer::Tap {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Sample>(capacity.max(1));
    let spawned = std::thread::Builder::new()
        .name("console-stats".into())
        .spawn({
            let stats = stats.clone();
            // Asleep on the queue: woken only by a sample the tap could not count itself.
            move || {
                while let Some(sample) = rx.blocking_recv() {
                    stats.count(&sample);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "No thread for the console's statistics: samples met with a busy console are dropped.");
    }
    Arc::new(move |record: &Record| {
        if !Sample::counted(record) {
            return;
        }
        let at = super::unix_now();
        let busy = match stats.slots.try_lock() {
            Ok(mut slots) => {
                Stats::count_in(&mut slots, &Sample::fields(record, at));
                false
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                Stats::count_in(&mut p.into_inner(), &Sample::fields(record, at));
                false
            }
            Err(std::sync::TryLockError::WouldBlock) => true,
        };
        if busy {
            if let Some(sample) = Sample::of(record, at) {
                if tx.try_send(sample).is_err() {
                    TAP_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}
/// Tools named per second; further tools are counted under `other`.
pub const MAX_TOOLS: usize = 32;
/// Latency buckets: quarter octaves of microseconds, up to 2^28 µs (~4.5 minutes).
const BUCKETS: usize = 112;

/// One second's (or one tool's second's) figures.
#[derive(Debug, Clone, Default)]
struct Counts {
    requests: u64,
    /// 1xx..5xx, then answers without a status (client gone, shut down).
    classes: [u64; 6],
    gateway_429: u64,
    upstream_429: u64,
    latency: Vec<u32>,
}

impl Counts {
    fn add(&mut self, status: Option<u16>, gateway_429: bool, latency_us: Option<u64>) {
        self.requests += 1;
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            _ => 5,
        };
        self.classes[class] += 1;
        if status == Some(429) {
            if gateway_429 {
                self.gateway_429 += 1;
            } else {
                self.upstream_429 += 1;
            }
        }
        if let Some(us) = latency_us {
            if self.latency.is_empty() {
                self.latency = vec![0; BUCKETS];
            }
            self.latency[bucket(us)] += 1;
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.gateway_429 += other.gateway_429;
        self.upstream_429 += other.upstream_429;
        if !other.latency.is_empty() {
            if self.latency.is_empty() {
                self.latency = vec![0; BUCKETS];
            }
            for (a, b) in self.latency.iter_mut().zip(&other.latency) {
                *a += b;
            }
        }
    }

    /// The latency below which `q` of the answers fell (the bucket's upper bound), in ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.latency.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(upper_bound_us(i) / 1000.0);
            }
        }
        None
    }
}

/// The quarter-octave bucket of a latency.
fn bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let log = (us as f64).log2() * 4.0;
    (log.ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound_us(bucket: usize) -> f64 {
    2f64.powf(bucket as f64 / 4.0)
}

#[derive(Debug, Default)]
struct Slot {
    second: u64,
    all: Counts,
    tools: BTreeMap<String, Counts>,
}

/// The ring.
#[derive(Debug)]
pub struct Stats {
    slots: Mutex<Vec<Slot>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// One point of a series (one minute, or one second for the live tail).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Start of the interval (unix seconds).
    pub at: u64,
    /// Requests per second over the interval.
    pub rps: f64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx, none.
    pub classes: [u64; 6],
    /// 429s the gateway's limiter answered.
    pub gateway_429: u64,
    /// 429s Amazon answered.
    pub upstream_429: u64,
    /// Median latency (ms), when any.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms), when any.
    pub p99_ms: Option<f64>,
}

/// The last hour, per minute, overall and per tool.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Now (unix seconds).
    pub now: u64,
    /// Per-minute points, oldest first (60).
    pub minutes: Vec<Point>,
    /// The whole hour.
    pub hour: Point,
    /// The last minute's figures.
    pub last_minute: Point,
    /// Per tool: the whole hour and its per-minute requests per second.
    pub tools: Vec<ToolOverview>,
}

/// One tool's hour.
#[derive(Debug, Clone, Serialize)]
pub struct ToolOverview {
    /// The tool (`-` for requests no tool was authenticated for).
    pub tool: String,
    /// The whole hour.
    pub hour: Point,
    /// Requests per second per minute, oldest first.
    pub rps: Vec<f64>,
}

impl Stats {
    /// An empty ring.
    pub fn new() -> Stats {
        Stats {
            slots: Mutex::new((0..WINDOW).map(|_| Slot::default()).collect()),
        }
    }

    /// Counts one record (only request records count) at `now` (unix seconds).
    pub fn observe(&self, record: &Record, now: u64) {
        if let Some(sample) = Sample::of(record, now) {
            self.count(&sample);
        }
    }

    /// Counts one request's sample.
    pub fn count(&self, sample: &Sample) {
        let f = Fields {
            at: sample.at,
            tool: sample.tool.as_ref().map_or("-", |t| t.as_str()),
            status: sample.status,
            gateway_429: sample.gateway_429,
            latency_us: sample.latency_us,
        };
        Stats::count_in(
            &mut self.slots.lock().unwrap_or_else(|p| p.into_inner()),
            &f,
        );
    }

    /// Counts one request in the ring (its lock held).
    fn count_in(slots: &mut [Slot], f: &Fields<'_>) {
        let (now, gateway_429, tool) = (f.at, f.gateway_429, f.tool);
        let slot = &mut slots[(now % WINDOW) as usize];
        if slot.second != now {
            *slot = Slot {
                second: now,
                ..Slot::default()
            };
        }
        slot.all.add(f.status, gateway_429, f.latency_us);
        let tool = if slot.tools.len() >= MAX_TOOLS && !slot.tools.contains_key(tool) {
            "other"
        } else {
            tool
        };
        // No allocation for a tool already seen this second.
        let counts = match slot.tools.get_mut(tool) {
            Some(counts) => counts,
            None => slot.tools.entry(tool.to_string()).or_default(),
        };
        counts.add(f.status, gateway_429, f.latency_us);
    }

    /// Holds the ring's lock (tests: a console that stalls).
    #[cfg(test)]
    pub(crate) fn stall(&self) -> impl Sized + '_ {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last hour ending at `now` (unix seconds).
    pub fn overview(&self, now: u64) -> Overview {
        let start = now.saturating_sub(WINDOW - 1);
        let mut minutes = vec![Counts::default(); 60];
        let mut tools: BTreeMap<String, Vec<Counts>> = BTreeMap::new();
        {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            for slot in slots.iter() {
                if slot.second < start || slot.second > now || slot.all.requests == 0 {
                    continue;
                }
                let minute = ((slot.second - start) / 60) as usize;
                minutes[minute].merge(&slot.all);
                for (tool, counts) in &slot.tools {
                    tools
                        .entry(tool.clone())
                        .or_insert_with(|| vec![Counts::default(); 60])[minute]
                        .merge(counts);
                }
            }
        }
        let point = |at: u64, c: &Counts, seconds: f64| Point {
            at,
            rps: c.requests as f64 / seconds,
            classes: c.classes,
            gateway_429: c.gateway_429,
            upstream_429: c.upstream_429,
            p50_ms: c.quantile_ms(0.5),
            p99_ms: c.quantile_ms(0.99),
        };
        let sum = |cs: &[Counts]| {
            let mut all = Counts::default();
            for c in cs {
                all.merge(c);
            }
            all
        };
        Overview {
            now,
            hour: point(start, &sum(&minutes), WINDOW as f64),
            last_minute: point(start + 59 * 60, &minutes[59], 60.0),
            minutes: minutes
                .iter()
                .enumerate()
                .map(|(i, c)| point(start + i as u64 * 60, c, 60.0))
                .collect(),
            tools: tools
                .iter()
                .map(|(tool, cs)| ToolOverview {
                    tool: tool.clone(),
                    hour: point(start, &sum(cs), WINDOW as f64),
                    rps: cs.iter().map(|c| c.requests as f64 / 60.0).collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{Limiter, Record};

    fn request(tool: &str, status: u16, latency_us: u64, rejected: bool) -> Record {
        let mut r = Record::request("req-1").with_tool(tool);
        r.status = Some(status);
        r.latency_us = Some(latency_us);
        if rejected {
            r.limiter = Some(Limiter {
                decision: Decision::Rejected,
                wait_ms: 0,
            });
        }
        r
    }

    #[test]
    fn counts_classes_429s_and_quantiles_per_tool() {
        let stats = Stats::new();
        let now = 1_000_000;
        for i in 0..98 {
            stats.observe(&request("labels", 200, 1_000 + i, false), now - 10);
        }
        stats.observe(&request("labels", 429, 500, true), now - 5);
        stats.observe(&request("repricer", 429, 80_000, false), now);
        // Not a request: not counted.
        stats.observe(&Record::new(Kind::Reload), now);
        // A download: its start counts, the record of its end does not.
        let start = request("labels", 200, 1_050, false)
            .with_reason(crate::audit::Reason::DOWNLOAD_STARTED);
        let mut end = start.clone();
        end.reason = None;
        end.completed = Some(true);
        stats.observe(&start, now - 10);
        stats.observe(&end, now - 9);
        let o = stats.overview(now);
        assert_eq!(o.hour.classes, [0, 99, 0, 2, 0, 0]);
        assert_eq!(o.hour.gateway_429, 1);
        assert_eq!(o.hour.upstream_429, 1);
        assert_eq!(o.last_minute.classes[1], 99);
        let p50 = o.hour.p50_ms.unwrap_or_default();
        assert!((1.0..=1.3).contains(&p50), "p50 {p50}");
        let p99 = o.hour.p99_ms.unwrap_or_default();
        assert!((1.0..=1.3).contains(&p99), "p99 {p99}");
        let repricer = o.tools.iter().find(|t| t.tool == "repricer");
        let repricer = repricer.map(|t| (t.hour.upstream_429, t.hour.p99_ms.unwrap_or_default()));
        assert!(matches!(repricer, Some((1, ms)) if (80.0..96.0).contains(&ms)));
        assert_eq!(o.tools.len(), 2);
    }

    #[test]
    fn a_withheld_answer_counts_once_as_503() {
        let stats = Stats::new();
        let now = 1_000_000;
        // Withheld after the writer took it: the request's record, then the follow-up note.
        let delivered = request("labels", 200, 900, false);
        stats.observe(&delivered, now);
        stats.observe(&delivered.withheld_note(), now);
        // Withheld while still queued: the one record says 503.
        let mut queued = request("labels", 200, 900, false);
        queued.withhold();
        stats.observe(&queued, now);
        let o = stats.overview(now);
        // Once each (the note is not a second request; the first keeps the 200 it was counted with).
        assert_eq!(o.hour.classes, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn forgets_what_is_older_than_an_hour() {
        let stats = Stats::new();
        stats.observe(&request("labels", 200, 10, false), 5_000);
        assert_eq!(stats.overview(5_000).hour.classes[1], 1);
        assert_eq!(stats.overview(5_000 + WINDOW).hour.classes[1], 0);
        // The slot is reused by a later second, and only that second's record stays.
        stats.observe(&request("labels", 500, 10, false), 5_000 + WINDOW);
        let o = stats.overview(5_000 + WINDOW);
        assert_eq!(o.hour.classes, [0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn tools_beyond_the_cap_are_folded() {
        let stats = Stats::new();
        for i in 0..MAX_TOOLS + 5 {
            stats.observe(&request(&format!("tool-{i}"), 200, 10, false), 7_000);
        }
        let o = stats.overview(7_000);
        assert_eq!(o.tools.len(), MAX_TOOLS + 1);
        let other = o.tools.iter().find(|t| t.tool == "other");
        assert_eq!(other.map(|t| t.hour.classes[1]), Some(5));
    }
}
