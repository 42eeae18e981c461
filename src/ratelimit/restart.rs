//! State that survives a restart.
//!
//! **Local buckets** (no Redis): the choice is to start spent, not to persist. A persisted level
//! is only exact if it is written with every decision (SIGKILL leaves no time for a last write),
//! and a durable write per decision would cost more than the whole decision budget (under 1 µs).
//! What a process can record cheaply is a lease: `ratelimit-alive` holds a wall-clock time
//! [`LEASE`] ahead, renewed every [`HEARTBEAT`], and no decision is taken past the lease without
//! renewing it first (a starved heartbeat costs one synchronous write, never a decision the
//! marker does not cover). A restarted instance treats every bucket as emptied at the lease's
//! end (the latest moment its previous run may have spent it) and refilled since at the plan's
//! rate. So a quick restart hands out only what Amazon has
//! refilled since, a restart after a longer stop (more than a bucket's `burst / rate`) costs
//! nothing, and a first start (no file) begins full. The price is paid only after a restart:
//! an operation whose previous run did not spend its burst waits as if it had.
//!
//! **Redis buckets** already outlive a gateway restart. A Redis restart that loses the keys
//! would make every bucket full again; the limiter writes an epoch key (`<prefix>rl:epoch`,
//! no TTL) when it connects, and the decision script, finding it missing, knows Redis lost its
//! data: it sets the epoch to now and treats every bucket without a key as emptied then (see
//! `redis.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::RateLimitError;

/// How often `ratelimit-alive` is rewritten.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How far ahead of its writing the marker reaches.
pub const LEASE: Duration = Duration::from_secs(2);

/// The marker and the end of the lease it holds (wall-clock microseconds).
#[derive(Debug)]
pub(crate) struct Lease {
    path: PathBuf,
    until: AtomicU64,
}

impl Lease {
    /// Before a decision: the lease covers now, or is renewed (synchronously) first.
    pub(crate) fn cover(&self) -> Result<(), RateLimitError> {
        if now_micros() < self.until.load(Ordering::Acquire) {
            return Ok(());
        }
        self.renew().map_err(|e| {
            RateLimitError::Unavailable(format!(
                "cannot write the rate limiter's restart marker: {e}"
            ))
        })
    }

    fn renew(&self) -> std::io::Result<()> {
        let until = write(&self.path)?;
        self.until.fetch_max(until, Ordering::AcqRel);
        Ok(())
    }
}

/// The file's name in the data directory.
pub const FILE: &str = "ratelimit-alive";

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The instant (on tokio's clock) a previous run may last have spent its buckets, if one ran
/// recently enough to matter; an unreadable or malformed file counts as "just now".
pub(crate) fn last_alive(dir: &Path) -> Result<Option<Instant>, RateLimitError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "Cannot read the rate limiter's restart marker: every bucket starts empty.");
            return Ok(Some(Instant::now()));
        }
    };
    // The end of the previous run's last lease.
    let Ok(alive) = text.trim().parse::<u64>() else {
        tracing::warn!(path = %path.display(), "The rate limiter's restart marker is malformed: every bucket starts empty.");
        return Ok(Some(Instant::now()));
    };
    let spent = alive;
    let now_wall = now_micros();
    let now = Instant::now();
    Ok(Some(if spent >= now_wall {
        // A clock that went backwards, or a restart within one heartbeat.
        now + Duration::from_micros(spent - now_wall)
    } else {
        now.checked_sub(Duration::from_micros(now_wall - spent))
            .unwrap_or(now)
    }))
}

/// Writes a lease to the marker; returns its end.
fn write(path: &Path) -> std::io::Result<u64> {
    let lease = u64::try_from(LEASE.as_micros()).unwrap_or(u64::MAX);
    let until = now_micros().saturating_add(lease);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, until.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(until)
}

/// Writes the marker now (an error here is a startup error), then every [`HEARTBEAT`] in a task.
pub(crate) fn start_heartbeat(dir: &Path) -> Result<Arc<Lease>, RateLimitError> {
    let path: PathBuf = dir.join(FILE);
    let until = write(&path).map_err(|e| {
        RateLimitError::InvalidSettings(format!(
            "cannot write the rate limiter's restart marker {}: {e}",
            path.display()
        ))
    })?;
    let lease = Arc::new(Lease {
        path,
        until: AtomicU64::new(until),
    });
    let renewing = Arc::clone(&lease);
    tokio::spawn(async move {
        let mut failing = false;
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            let lease = Arc::clone(&renewing);
            let result = tokio::task::spawn_blocking(move || lease.renew()).await;
            match result {
                Ok(Ok(())) if failing => {
                    failing = false;
                    tracing::info!("The rate limiter's restart marker is written again.");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "Cannot write the rate limiter's restart marker: a restart now may hand out a burst already spent.");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "The restart marker task failed."),
            }
        }
    });
    Ok(lease)
}
