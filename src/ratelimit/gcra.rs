//! The Generic Cell Rate Algorithm over tokio's clock: one token bucket as one instant.
//!
//! A bucket of `burst` tokens refilled at `rate` tokens per second is the same thing as a
//! *theoretical arrival time* (TAT): the instant at which the bucket would be full again. A
//! request may go at `now` when `TAT + T - burst·T <= now` (with `T = 1/rate`), and taking a
//! token moves the TAT forward by `T`. The Redis script in [`super::redis`] runs the same
//! arithmetic on the server's clock, so both modes behave alike.
//!
//! Why not `governor`: its limiters answer only "may I go now?" and keep their state private.
//! The gateway also needs to *reserve* a future slot (a waiting request must never sleep and then
//! fail), to empty a bucket when Amazon answers 429, to change the rate while keeping the level
//! when Amazon reports a different one, to read the level without taking a token (status), and
//! to follow tokio's clock so tests run on paused time. Each of those is one line here.

use std::time::Duration;

use tokio::time::Instant;

/// One GCRA bucket. Times are tokio instants; the interval is whole nanoseconds, rounded up so
/// that the bucket never grants more than `rate` per second.
#[derive(Debug, Clone)]
pub(crate) struct Gcra {
    interval: Duration,
    burst: u32,
    tat: Instant,
}

impl Gcra {
    /// A full bucket.
    pub(crate) fn new(rate_per_second: f64, burst: u32, now: Instant) -> Gcra {
        Gcra {
            interval: interval(rate_per_second),
            burst: burst.max(1),
            tat: now,
        }
    }

    /// A bucket emptied at `spent` (possibly in the past): refilled since at its rate.
    pub(crate) fn spent_at(rate_per_second: f64, burst: u32, now: Instant, spent: Instant) -> Gcra {
        let mut g = Gcra::new(rate_per_second, burst, now);
        g.tat = now.max(spent + g.capacity());
        g
    }

    /// Time between two tokens.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Tokens per second (from the rounded interval).
    pub(crate) fn rate_per_second(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }

    fn capacity(&self) -> Duration {
        self.interval * self.burst
    }

    /// The earliest instant (not before `now`) at which one more token can be taken.
    pub(crate) fn next_slot(&self, now: Instant) -> Instant {
        (self.tat + self.interval)
            .checked_sub(self.capacity())
            .map_or(now, |slot| slot.max(now))
    }

    /// Takes one token now if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if self.next_slot(now) <= now {
            self.tat = self.tat.max(now) + self.interval;
            true
        } else {
            false
        }
    }

    /// Reserves the next token and returns the instant it may be used (now or later).
    pub(crate) fn reserve(&mut self, now: Instant) -> Instant {
        let slot = self.next_slot(now);
        self.tat = self.tat.max(now) + self.interval;
        slot
    }

    /// Takes the token for a request that goes at `at` (not before [`Gcra::next_slot`]).
    pub(crate) fn reserve_at(&mut self, at: Instant) {
        self.tat = self.tat.max(at) + self.interval;
    }

    /// Gives back one token taken or reserved earlier (its request was refused elsewhere).
    pub(crate) fn refund(&mut self, now: Instant) {
        if self.tat > now {
            self.tat = self
                .tat
                .checked_sub(self.interval)
                .map_or(now, |tat| tat.max(now));
        }
    }

    /// Tokens available now (fractional), between 0 and `burst`.
    pub(crate) fn tokens(&self, now: Instant) -> f64 {
        let debt = self.tat.saturating_duration_since(now);
        let free = self.capacity().saturating_sub(debt);
        (free.as_secs_f64() / self.interval.as_secs_f64()).clamp(0.0, f64::from(self.burst))
    }

    /// Whether the bucket is full: nothing taken or reserved still counts (it is then what
    /// [`Gcra::new`] would give).
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        self.tat <= now
    }

    /// Empties the bucket: the next token comes one interval from now (later if reserved).
    pub(crate) fn drain(&mut self, now: Instant) {
        self.tat = self.tat.max(now + self.capacity());
    }

    /// Whether the bucket has these parameters already.
    pub(crate) fn has(&self, rate_per_second: f64, burst: u32) -> bool {
        self.interval == interval(rate_per_second) && self.burst == burst.max(1)
    }

    /// Changes rate and burst, keeping the tokens already owed (taken or reserved) as tokens.
    pub(crate) fn reconfigure(&mut self, rate_per_second: f64, burst: u32, now: Instant) {
        let new_interval = interval(rate_per_second);
        let debt = self.tat.saturating_duration_since(now);
        let owed = debt.as_secs_f64() / self.interval.as_secs_f64();
        self.interval = new_interval;
        self.burst = burst.max(1);
        self.tat = now + new_interval.mul_f64(owed);
    }
}

/// `1/rate` as whole nanoseconds, rounded up, at least 1 ns; rates are validated as positive
/// before they get here, a non-positive one is treated as one token an hour.
pub(crate) fn interval(rate_per_second: f64) -> Duration {
    if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
        return Duration::from_secs(3600);
    }
    let nanos = (1e9 / rate_per_second).ceil();
    Duration::from_nanos((nanos as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_grants_exactly_burst_tokens_at_once() {
        let now = Instant::now();
        let mut g = Gcra::new(0.5, 3, now);
        assert!(g.try_take(now));
        assert!(g.try_take(now));
        assert!(g.try_take(now));
        assert!(!g.try_take(now));
        assert_eq!(g.next_slot(now), now + Duration::from_secs(2));
    }

    #[test]
    fn reservations_are_spaced_one_interval_apart_after_the_burst() {
        let now = Instant::now();
        let mut g = Gcra::new(2.0, 1, now);
        assert_eq!(g.reserve(now), now);
        assert_eq!(g.reserve(now), now + Duration::from_millis(500));
        assert_eq!(g.reserve(now), now + Duration::from_millis(1000));
    }

    #[test]
    fn draining_leaves_no_token_until_one_interval_has_passed() {
        let now = Instant::now();
        let mut g = Gcra::new(1.0, 10, now);
        g.drain(now);
        assert_eq!(g.tokens(now), 0.0);
        assert!(!g.try_take(now + Duration::from_millis(999)));
        assert!(g.try_take(now + Duration::from_secs(1)));
    }

    #[test]
    fn reconfiguring_keeps_the_tokens_owed() {
        let now = Instant::now();
        let mut g = Gcra::new(1.0, 10, now);
        for _ in 0..4 {
            assert!(g.try_take(now));
        }
        g.reconfigure(2.0, 10, now);
        assert!((g.tokens(now) - 6.0).abs() < 1e-6, "{}", g.tokens(now));
        // The 4 owed tokens now come back in 2 s instead of 4 s.
        assert!((g.tokens(now + Duration::from_secs(2)) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn the_interval_rounds_up_so_the_rate_is_never_exceeded() {
        let g = Gcra::new(3.0, 1, Instant::now());
        assert_eq!(g.interval(), Duration::from_nanos(333_333_334));
        assert!(g.rate_per_second() <= 3.0);
    }
}
