//! What writes did to shared answers, per (seller, family): the *generation* a leader must still
//! be in for its answer to be joined or cached, and the *settle window* after a write during
//! which no answer of the family is cached (SP-API writes are eventually consistent: a read right
//! after one may see Amazon's not-yet-propagated state).
//!
//! A generation is (epoch, writes): `writes` moves on with every write to the (seller, family),
//! here or (through [`super::invalidation`]) on another instance; the epoch moves on for every
//! family at once whenever the invalidation channel between instances goes down or comes back
//! (a write announced meanwhile may have been missed). Both only grow, so a leader's answer is
//! still current exactly when its generation is unchanged. Entries are never dropped: dropping
//! one would move its `writes` back to 0 and could make an older generation look current (the
//! map holds at most sellers x families small entries).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Writes per (seller, family), the epoch, and the settle windows.
pub(super) struct Writes {
    /// How long after a write reads of its family are not cached.
    settle: Duration,
    epoch: u64,
    families: HashMap<(String, &'static str), Family>,
}

/// A leader's place in time: its answer is joined and cached only while this stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation {
    epoch: u64,
    writes: u64,
}

#[derive(Default)]
struct Family {
    writes: u64,
    /// Reads starting before this are within the last write's settle window.
    settle_until: Option<Instant>,
}

// === impl Writes ===

impl Writes {
    pub(super) fn new(settle: Duration) -> Writes {
        Writes {
            settle,
            epoch: 0,
            families: HashMap::new(),
        }
    }

    /// The current generation of a (seller, family).
    pub(super) fn generation(&self, seller: &str, family: &'static str) -> Generation {
        let writes = self
            .families
            .get(&(seller.to_string(), family))
            .map_or(0, |f| f.writes);
        Generation {
            epoch: self.epoch,
            writes,
        }
    }

    /// A write to the (seller, family) started or ended (here or on another instance) at `now`:
    /// its next generation, and a settle window from `now`.
    pub(super) fn wrote(&mut self, seller: &str, family: &'static str, now: Instant) {
        let f = match self.families.get_mut(&(seller.to_string(), family)) {
            Some(f) => f,
            None => self
                .families
                .entry((seller.to_string(), family))
                .or_default(),
        };
        f.writes += 1;
        f.settle_until = Some(now + self.settle);
    }

    /// Whether a read of the (seller, family) that started at `started` began within a write's
    /// settle window (its answer may predate the write's propagation at Amazon).
    pub(super) fn settling(&self, seller: &str, family: &'static str, started: Instant) -> bool {
        self.families
            .get(&(seller.to_string(), family))
            .and_then(|f| f.settle_until)
            .is_some_and(|until| started < until)
    }

    /// Every (seller, family) moves to a new generation (the channel between instances went
    /// down or came back: writes announced meanwhile may have been missed).
    pub(super) fn new_epoch(&mut self) {
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_or_a_new_epoch_moves_the_generation_and_only_its_own_family() {
        let now = Instant::now();
        let mut w = Writes::new(Duration::from_secs(5));
        let g0 = w.generation("S1", "listings");
        assert_eq!(g0, w.generation("S1", "listings"));
        w.wrote("S1", "listings", now);
        let g1 = w.generation("S1", "listings");
        assert_ne!(g0, g1);
        assert_eq!(
            w.generation("S2", "listings"),
            g0,
            "another seller's is its own"
        );
        assert_eq!(
            w.generation("S1", "sellers"),
            g0,
            "another family's is its own"
        );
        w.new_epoch();
        assert_ne!(w.generation("S1", "listings"), g1);
        assert_ne!(w.generation("S2", "listings"), g0);
    }

    #[test]
    fn a_read_starting_within_the_settle_window_after_a_write_is_settling() {
        let now = Instant::now();
        let mut w = Writes::new(Duration::from_secs(5));
        assert!(!w.settling("S1", "listings", now));
        w.wrote("S1", "listings", now);
        assert!(w.settling("S1", "listings", now + Duration::from_secs(4)));
        assert!(!w.settling("S1", "listings", now + Duration::from_secs(5)));
        assert!(!w.settling("S2", "listings", now + Duration::from_secs(1)));
        let off = {
            let mut w = Writes::new(Duration::ZERO);
            w.wrote("S1", "listings", now);
            w.settling("S1", "listings", now)
        };
        assert!(!off, "a window of 0 s settles nothing");
    }
}
