//! `spgate audit verify | query | report`: what the binary prints. Each function writes to
//! `out` and returns what `main` needs to choose its exit code.

use std::io::Write;
use std::path::Path;

use super::chain;
use super::query::{self, Filters, QueryError, View};
use crate::secret::Secret;

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Reading the chain failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Verification could not read the chain.
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    /// The key is not usable.
    #[error("{0}")]
    Key(String),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// Verifies every chain in `dir` with the base64 audit key; prints one line per instance, the
/// first bad record and every gap (records lost, with count and span, and a chain whose writer
/// is gone without its `audit_stopped` record: an abrupt stop or a cut tail). Returns whether
/// everything verified: false also when no chain is found (an empty directory proves nothing)
/// and, unless `allow_gaps`, when a chain reports a gap.
pub fn verify(
    dir: &Path,
    key_b64: &Secret<String>,
    allow_gaps: bool,
    out: &mut dyn Write,
) -> Result<bool, CliError> {
    let key = super::config::decode_key(key_b64).map_err(CliError::Key)?;
    let reports = chain::verify(dir, key.expose())?;
    if reports.is_empty() {
        writeln!(out, "no audit chain in {}", dir.display())?;
        return Ok(false);
    }
    let mut ok = true;
    for r in &reports {
        let range = match (r.first_seq, r.last_seq) {
            (Some(a), Some(b)) => format!("records {a}..{b}"),
            _ => "no records".to_string(),
        };
        let times = match (&r.first_time, &r.last_time) {
            (Some(a), Some(b)) => format!(", {a} .. {b}"),
            _ => String::new(),
        };
        let expired = r
            .expired_before
            .as_ref()
            .map(|d| format!(", days before {d} expired by retention"))
            .unwrap_or_default();
        for g in &r.gaps {
            let count = g
                .count
                .map_or("an unknown number of".to_string(), |c| c.to_string());
            writeln!(
                out,
                "{}: GAP at record {}: {count} record(s) lost between {} and {} ({})",
                r.instance,
                g.seq,
                g.from.as_deref().unwrap_or("?"),
                g.to.as_deref().unwrap_or("?"),
                g.reason.as_deref().unwrap_or("unknown"),
            )?;
        }
        if !r.gaps.is_empty() && !allow_gaps {
            ok = false;
        }
        if let Some(stop) = &r.abrupt_stop {
            writeln!(
                out,
                "{}: GAP after record {}: the writer stopped abruptly (no audit_stopped record, no live writer): records after {} may be lost, unwritten or cut ({} verified record(s) past the head file, {} byte(s) of an unfinished last line)",
                r.instance, stop.after_seq, stop.after_time, stop.beyond_head, stop.unflushed_tail
            )?;
            if !allow_gaps {
                ok = false;
            }
        } else if r.unflushed_tail > 0 || r.beyond_head > 0 {
            writeln!(
                out,
                "{}: note: {} verified record(s) past the head file and {} byte(s) of an unfinished last line (the live writer's unflushed tail; not tampering)",
                r.instance, r.beyond_head, r.unflushed_tail
            )?;
        }
        match &r.first_bad {
            None => writeln!(
                out,
                "{}: OK, {} records in {} files ({range}{times}{expired})",
                r.instance, r.records, r.files
            )?,
            Some(bad) => {
                ok = false;
                let at = if bad.line == 0 {
                    format!("{} (end of chain)", bad.file)
                } else {
                    format!("{} line {}", bad.file, bad.line)
                };
                let seq = bad.seq.map(|s| format!(", record {s}")).unwrap_or_default();
                writeln!(
                    out,
                    "{}: TAMPERED at {at}{seq}: {} ({} records verified before it)",
                    r.instance, bad.reason, r.records
                )?;
            }
        }
    }
    Ok(ok)
}

/// Prints the matching records in time order: an aligned table, or the stored JSON lines.
/// Returns how many matched.
pub fn query(
    dir: &Path,
    filters: &Filters,
    json: bool,
    out: &mut dyn Write,
) -> Result<u64, CliError> {
    if !json {
        writeln!(
            out,
            "{:<24} {:<12} {:<14} {:<16} {:<12} {:<16} {:<34} {:>6} {:>9} {:<12} pii",
            "time",
            "instance",
            "kind",
            "tool",
            "role",
            "seller",
            "operation",
            "status",
            "ms",
            "limiter"
        )?;
    }
    let n = query::query(dir, filters, |line| {
        if json {
            writeln!(out, "{line}").map_err(io)?;
            return Ok(());
        }
        let Ok(v) = serde_json::from_str::<View<'_>>(line) else {
            return Ok(());
        };
        writeln!(out, "{}", table_row(&v)).map_err(io)
    })?;
    if !json {
        writeln!(
            out,
            "({n} records; not verified: run `spgate audit verify`)"
        )?;
    }
    Ok(n)
}

fn io(e: std::io::Error) -> QueryError {
    QueryError::Io {
        path: "stdout".into(),
        source: e,
    }
}

fn table_row(v: &View<'_>) -> String {
    let s = |o: &Option<std::borrow::Cow<'_, str>>| o.as_deref().unwrap_or("-").to_string();
    let tool = match (&v.tool, &v.actor) {
        (Some(t), _) => t.to_string(),
        (None, Some(a)) => format!("@{a}"),
        (None, None) => "-".into(),
    };
    let operation = match (&v.operation, &v.reason) {
        (Some(o), _) => o.to_string(),
        (None, Some(r)) => format!("({r})"),
        (None, None) => "-".into(),
    };
    let limiter = v
        .limiter
        .as_ref()
        .map(|l| {
            if l.wait_ms > 0 {
                format!("{}+{}ms", l.decision, l.wait_ms)
            } else {
                l.decision.to_string()
            }
        })
        .unwrap_or_else(|| "-".into());
    let pii = v
        .pii
        .iter()
        .map(|p| format!("{}:{}", p.category, p.action))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{:<24} {:<12} {:<14} {:<16} {:<12} {:<16} {:<34} {:>6} {:>9} {:<12} {}",
        v.time,
        v.instance,
        v.kind,
        tool,
        s(&v.role),
        s(&v.seller),
        operation,
        v.status.map_or("-".into(), |c| c.to_string()),
        v.latency_us
            .map_or("-".into(), |us| format!("{:.1}", us as f64 / 1000.0)),
        limiter,
        if pii.is_empty() { "-".into() } else { pii }
    )
}

/// Prints the per-tool summary of `[since, until)`.
pub fn report(
    dir: &Path,
    since: Option<String>,
    until: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let tools = query::report(dir, since.clone(), until.clone())?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &tools).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "audit report {} .. {} (not verified: run `spgate audit verify`)",
        since.as_deref().unwrap_or("beginning"),
        until.as_deref().unwrap_or("now")
    )?;
    writeln!(
        out,
        "{:<24} {:>10} {:>8} {:>8} {:>8}  pii categories received (responses)",
        "tool", "requests", "denials", "429s", "reveals"
    )?;
    for (tool, s) in &tools {
        let pii = s
            .pii
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            out,
            "{:<24} {:>10} {:>8} {:>8} {:>8}  {}",
            tool,
            s.requests,
            s.denials,
            s.throttled,
            s.reveals,
            if pii.is_empty() { "-".into() } else { pii }
        )?;
    }
    Ok(())
}
