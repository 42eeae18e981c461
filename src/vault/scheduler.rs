//! The deletion scheduler: a task that runs [`Vault::run_due`] at start (catching up after
//! downtime: the schedule lives in the store, so a restart, even after SIGKILL, deletes what
//! fell due meanwhile), then sleeps until the next deletion time, at most `scan_interval`, or
//! until a due date moves earlier in this process.
//!
//! A pass that fails (the store is unreachable) is logged and retried at the next wake-up;
//! each order's deletion is atomic, so a pass cut short anywhere leaves nothing half-deleted.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Vault;

/// The shortest sleep between passes, so an order that cannot be deleted yet (a concurrent
/// writer keeps changing it) never makes the task spin.
const MIN_SLEEP: Duration = Duration::from_secs(1);

/// Starts the scheduler on the vault's clock; it stops when `shutdown` completes (a pass in
/// progress finishes first).
pub fn spawn_scheduler(
    vault: Vault,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let interval = vault.config().scan_interval;
        loop {
            let now = vault.now();
            match vault.run_due(now).await {
                Ok(deleted) if !deleted.is_empty() => tracing::info!(
                    deleted = deleted.len(),
                    "Retention pass deleted the cached PII of due orders."
                ),
                Ok(_) => tracing::debug!("Retention pass found nothing due."),
                Err(e) => tracing::warn!(error = %e, "Retention pass failed; retrying."),
            }
            let sleep = match vault.next_due().await {
                Ok(Some(at)) => {
                    let until = (at - vault.now()).whole_seconds().max(0) as u64;
                    Duration::from_secs(until).clamp(MIN_SLEEP, interval.max(MIN_SLEEP))
                }
                Ok(None) | Err(_) => interval.max(MIN_SLEEP),
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = vault.changed() => {}
                () = &mut shutdown => break,
            }
        }
        tracing::debug!("Retention scheduler stopped.");
    })
}
