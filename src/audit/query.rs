//! Reading chains back: every instance's files merged in time order (a k-way merge of the
//! per-instance streams, each already in time order; constant memory), with filters, and the
//! per-tool report.
//!
//! Reading does not verify (that needs the key: `spgate audit verify`). Filters first test the
//! raw line for the exact `"field":"value"` text, so lines that cannot match are skipped without
//! being parsed.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::chain::{list_chains, ChainError, ChainFile};
use super::record::{Kind, Reason};
use crate::pii::Category;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The chain could not be listed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A file could not be read.
    #[error("audit file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A bad argument.
    #[error("{0}")]
    Argument(String),
}

/// A status filter: one code, or a class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// Any status of this hundred (4 for `4xx`).
    Class(u16),
}

/// Which records a query returns. Times are normalized record times
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`): `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only this tool.
    pub tool: Option<String>,
    /// Only this seller.
    pub seller: Option<String>,
    /// Only this operation key.
    pub operation: Option<String>,
    /// Only this kind of record.
    pub kind: Option<Kind>,
    /// Only these statuses.
    pub status: Option<StatusFilter>,
    /// Only records where this PII category left the gateway (any action but `drop`).
    pub pii: Option<Category>,
    /// From this time.
    pub since: Option<String>,
    /// Before this time.
    pub until: Option<String>,
}

/// A record as read back (borrowing from its line).
#[derive(Debug, Deserialize)]
pub struct View<'a> {
    /// Sequence number in its instance's chain.
    pub seq: u64,
    /// Time written.
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    /// Instance.
    #[serde(borrow)]
    pub instance: Cow<'a, str>,
    /// Kind.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Request id.
    #[serde(borrow, default)]
    pub request_id: Option<Cow<'a, str>>,
    /// Tool.
    #[serde(borrow, default)]
    pub tool: Option<Cow<'a, str>>,
    /// Admin actor.
    #[serde(borrow, default)]
    pub actor: Option<Cow<'a, str>>,
    /// Role.
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    /// Seller.
    #[serde(borrow, default)]
    pub seller: Option<Cow<'a, str>>,
    /// Operation key.
    #[serde(borrow, default)]
    pub operation: Option<Cow<'a, str>>,
    /// Status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Latency.
    #[serde(default)]
    pub latency_us: Option<u64>,
    /// Limiter.
    #[serde(borrow, default)]
    pub limiter: Option<LimiterView<'a>>,
    /// PII categories and actions.
    #[serde(borrow, default)]
    pub pii: Vec<PiiView<'a>>,
    /// Reason.
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    /// Order id.
    #[serde(borrow, default)]
    pub order_id: Option<Cow<'a, str>>,
    /// Whether a document download's stream completed (only on the record of its end).
    #[serde(default)]
    pub completed: Option<bool>,
}

/// The limiter part of a [`View`].
#[derive(Debug, Deserialize)]
pub struct LimiterView<'a> {
    /// Decision.
    #[serde(borrow)]
    pub decision: Cow<'a, str>,
    /// Wait.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One PII entry of a [`View`].
#[derive(Debug, Deserialize)]
pub struct PiiView<'a> {
    /// Category.
    #[serde(borrow)]
    pub category: Cow<'a, str>,
    /// Action.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
}

/// One tool's summary in a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ToolSummary {
    /// Proxied requests.
    pub requests: u64,
    /// Requests denied (401 or 403).
    pub denials: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Responses per PII category received (in any form but dropped).
    pub pii: BTreeMap<String, u64>,
    /// Reveals.
    pub reveals: u64,
}

// === time arguments ===

/// Formats a time as records do.
pub fn record_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

/// Parses `--since`/`--until`: `YYYY-MM-DD` (midnight UTC), an RFC 3339 time, or a duration
/// back from `now` (`90m`, `24h`, `7d`).
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<String, QueryError> {
    let bad = || {
        QueryError::Argument(format!(
            "{text:?} is not a time: use YYYY-MM-DD, an RFC 3339 time, or 90m / 24h / 7d"
        ))
    };
    if let Ok(d) = Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    ) {
        return Ok(record_time(d.midnight().assume_utc()));
    }
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(record_time(t));
    }
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let back = match unit {
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(bad()),
    };
    Ok(record_time(now - back))
}

/// Parses `--status`: `429` or `4xx`.
pub fn parse_status(text: &str) -> Result<StatusFilter, QueryError> {
    let bad = || QueryError::Argument(format!("{text:?} is not a status: use e.g. 403 or 4xx"));
    if let Some(class) = text.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        return (1..=5)
            .contains(&c)
            .then_some(StatusFilter::Class(c))
            .ok_or_else(bad);
    }
    text.parse().map(StatusFilter::Exact).map_err(|_| bad())
}

// === impl Filters ===

impl Filters {
    fn needles(&self) -> Vec<String> {
        let mut n = Vec::new();
        let mut add = |field: &str, v: Option<&str>| {
            if let Some(v) = v {
                n.push(format!("\"{field}\":\"{v}\""));
            }
        };
        add("tool", self.tool.as_deref());
        add("seller", self.seller.as_deref());
        add("operation", self.operation.as_deref());
        add("kind", self.kind.map(Kind::as_str));
        add("category", self.pii.map(Category::as_str));
        n
    }

    fn day_in_range(&self, day: Date) -> bool {
        let d = day.to_string();
        self.since.as_ref().is_none_or(|s| d.as_str() >= &s[..10])
            && self.until.as_ref().is_none_or(|u| d.as_str() <= &u[..10])
    }

    /// Whether a parsed record matches (the exact test after the quick text test).
    pub fn matches(&self, v: &View<'_>) -> bool {
        let eq = |want: &Option<String>, got: &Option<Cow<'_, str>>| {
            want.as_ref()
                .is_none_or(|w| got.as_deref() == Some(w.as_str()))
        };
        eq(&self.tool, &v.tool)
            && eq(&self.seller, &v.seller)
            && eq(&self.operation, &v.operation)
            && self.kind.is_none_or(|k| v.kind == k.as_str())
            && self.status.is_none_or(|s| match (s, v.status) {
                (StatusFilter::Exact(c), Some(got)) => got == c,
                (StatusFilter::Class(c), Some(got)) => got / 100 == c,
                (_, None) => false,
            })
            && self.pii.is_none_or(|c| {
                v.pii
                    .iter()
                    .any(|p| p.category == c.as_str() && p.action != "drop")
            })
            && self.since.as_ref().is_none_or(|s| *v.time >= **s)
            && self.until.as_ref().is_none_or(|u| *v.time < **u)
    }
}

/// The `time` of a raw line without parsing it (lines start `{"seq":N,"time":"...`).
fn line_time(line: &str) -> Option<&str> {
    let at = line.get(..64)?.find("\"time\":\"")? + 8;
    line.get(at..at + 24)
}

/// One instance's matching lines, in file (and so time) order.
struct Stream {
    files: std::vec::IntoIter<ChainFile>,
    reader: Option<(BufReader<File>, String)>,
    line: String,
}

impl Stream {
    fn next_match(
        &mut self,
        filters: &Filters,
        needles: &[String],
    ) -> Result<Option<String>, QueryError> {
        loop {
            if self.reader.is_none() {
                let Some(f) = self.files.next() else {
                    return Ok(None);
                };
                let file = File::open(&f.path).map_err(|source| QueryError::Io {
                    path: f.path.display().to_string(),
                    source,
                })?;
                self.reader = Some((
                    BufReader::with_capacity(1 << 20, file),
                    f.path.display().to_string(),
                ));
            }
            let Some((reader, path)) = self.reader.as_mut() else {
                continue;
            };
            self.line.clear();
            let n = reader
                .read_line(&mut self.line)
                .map_err(|source| QueryError::Io {
                    path: path.clone(),
                    source,
                })?;
            if n == 0 {
                self.reader = None;
                continue;
            }
            let line = self.line.trim_end_matches('\n');
            if !needles.iter().all(|n| line.contains(n.as_str())) {
                continue;
            }
            if let (Some(until), Some(t)) = (&filters.until, line_time(line)) {
                if t >= until.as_str() {
                    // Time only grows within a chain: nothing later matches.
                    self.files = Vec::new().into_iter();
                    self.reader = None;
                    continue;
                }
            }
            if let (Some(since), Some(t)) = (&filters.since, line_time(line)) {
                if t < since.as_str() {
                    continue;
                }
            }
            match serde_json::from_str::<View<'_>>(line) {
                Ok(v) if filters.matches(&v) => return Ok(Some(line.to_string())),
                _ => continue,
            }
        }
    }
}

/// Every instance's matching records in time order (ties: by instance name), each passed to
/// `each` as its raw line; returns how many matched.
pub fn query(
    dir: &Path,
    filters: &Filters,
    mut each: impl FnMut(&str) -> Result<(), QueryError>,
) -> Result<u64, QueryError> {
    let needles = filters.needles();
    let mut streams: Vec<Stream> = list_chains(dir)?
        .into_values()
        .map(|files| Stream {
            files: files
                .into_iter()
                .filter(|f| filters.day_in_range(f.day))
                .collect::<Vec<_>>()
                .into_iter(),
            reader: None,
            line: String::new(),
        })
        .collect();
    let mut heads: Vec<Option<String>> = vec![None; streams.len()];
    let mut heap = BinaryHeap::new();
    for (i, s) in streams.iter_mut().enumerate() {
        if let Some(line) = s.next_match(filters, &needles)? {
            heap.push(Reverse((line_time(&line).unwrap_or("").to_string(), i)));
            heads[i] = Some(line);
        }
    }
    let mut n = 0;
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(line) = heads[i].take() {
            each(&line)?;
            n += 1;
        }
        if let Some(line) = streams[i].next_match(filters, &needles)? {
            heap.push(Reverse((line_time(&line).unwrap_or("").to_string(), i)));
            heads[i] = Some(line);
        }
    }
    Ok(n)
}

/// Whether `v` is a withheld-answer note (see [`super::Record::is_withheld_note`]): a
/// request record that says `answer_withheld` without a latency.
fn is_note(v: &View<'_>) -> bool {
    v.kind == "request"
        && v.reason.as_deref() == Some(Reason::ANSWER_WITHHELD.as_str())
        && v.latency_us.is_none()
}

/// Per-tool summary of the records in `[since, until)` (order does not matter: no merge). A
/// withheld-answer note is applied to the record with its request id (503, no PII delivered)
/// and not counted as a request.
pub fn report(
    dir: &Path,
    since: Option<String>,
    until: Option<String>,
) -> Result<BTreeMap<String, ToolSummary>, QueryError> {
    let filters = Filters {
        since,
        until,
        ..Filters::default()
    };
    let mut out: BTreeMap<String, ToolSummary> = BTreeMap::new();
    for files in list_chains(dir)?.into_values() {
        let files: Vec<ChainFile> = files
            .into_iter()
            .filter(|f| filters.day_in_range(f.day))
            .collect();
        let stream = |files: Vec<ChainFile>| Stream {
            files: files.into_iter(),
            reader: None,
            line: String::new(),
        };
        // First pass: the requests whose answer was withheld after their record was written
        // (a follow-up note with their id): answered 503, no PII delivered.
        let mut withheld = std::collections::HashSet::new();
        let mut notes = stream(files.clone());
        while let Some(line) = notes.next_match(&filters, &[])? {
            let Ok(v) = serde_json::from_str::<View<'_>>(&line) else {
                continue;
            };
            if is_note(&v) {
                if let Some(id) = v.request_id {
                    withheld.insert(id.into_owned());
                }
            }
        }
        let mut stream = stream(files);
        while let Some(line) = stream.next_match(&filters, &[])? {
            let Ok(mut v) = serde_json::from_str::<View<'_>>(&line) else {
                continue;
            };
            let kind = v.kind.as_ref();
            if kind != "request" && kind != "reveal" {
                continue;
            }
            if is_note(&v) {
                // Not a request of its own: applied to the record it follows.
                continue;
            }
            if v.request_id
                .as_deref()
                .is_some_and(|id| withheld.contains(id))
            {
                v.status = Some(503);
                v.pii.clear();
            }
            let kind = v.kind.as_ref();
            let tool = v.tool.as_deref().unwrap_or("-");
            let s = out.entry(tool.to_string()).or_default();
            if kind == "reveal" {
                s.reveals += 1;
                continue;
            }
            // A download is counted once, by its start record (durable before the first byte,
            // so it is there even when the record of its end was lost); the end record brings
            // the categories the redactor emitted.
            let download_end = v.completed.is_some();
            if !download_end {
                s.requests += 1;
                match v.status {
                    Some(401 | 403) => s.denials += 1,
                    Some(429) => s.throttled += 1,
                    _ => {}
                }
            }
            if v.reason.as_deref() == Some(Reason::DOWNLOAD_STARTED.as_str()) {
                continue;
            }
            for p in v.pii.iter().filter(|p| p.action != "drop") {
                *s.pii.entry(p.category.to_string()).or_default() += 1;
            }
        }
    }
    Ok(out)
}
