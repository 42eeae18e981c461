//! Rate-limited error logging: during an outage every refused request fails the same way, and
//! one log line per request buries everything else (tens of thousands of lines a second).
//!
//! [`admit`] lets the first occurrence of an error kind through at once, then at most one line
//! per [`INTERVAL`] per kind; the admitted line carries how many occurrences were held back
//! since the previous one (`repeats`), so the count is never lost. Metrics and audit records
//! still count every request.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// At most one line per error kind per interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Kinds tracked before the table is reset (kinds are static messages: a few dozen at most).
const MAX_KINDS: usize = 1024;

struct Seen {
    logged_at: Instant,
    held_back: u64,
}

fn table() -> std::sync::MutexGuard<'static, HashMap<&'static str, Seen>> {
    static TABLE: OnceLock<Mutex<HashMap<&'static str, Seen>>> = OnceLock::new();
    TABLE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        // A poisoned table only means a panic mid-update; the counts stay usable.
        .unwrap_or_else(|p| p.into_inner())
}

/// Whether to log this occurrence of `kind` now: `Some(n)` with the `n` occurrences held back
/// since the last line of this kind, or `None` to stay silent (the occurrence is counted).
pub fn admit(kind: &'static str) -> Option<u64> {
    admit_at(kind, Instant::now())
}

fn admit_at(kind: &'static str, now: Instant) -> Option<u64> {
    let mut table = table();
    if table.len() >= MAX_KINDS && !table.contains_key(kind) {
        table.clear();
    }
    match table.get_mut(kind) {
        Some(seen) if now.saturating_duration_since(seen.logged_at) < INTERVAL => {
            seen.held_back += 1;
            None
        }
        Some(seen) => {
            let repeats = seen.held_back;
            *seen = Seen {
                logged_at: now,
                held_back: 0,
            };
            Some(repeats)
        }
        None => {
            table.insert(
                kind,
                Seen {
                    logged_at: now,
                    held_back: 0,
                },
            );
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_error_logs_one_line_then_one_line_per_interval_with_the_count() {
        let kind = "log_limit test kind";
        let t0 = Instant::now();
        assert_eq!(admit_at(kind, t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(admit_at(kind, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            admit_at(kind, t0 + INTERVAL + Duration::from_millis(1)),
            Some(1000)
        );
        assert_eq!(
            admit_at(kind, t0 + INTERVAL + Duration::from_millis(2)),
            None
        );
        // Another kind is not held back by the first.
        assert_eq!(admit_at("log_limit other kind", t0), Some(0));
    }
}
