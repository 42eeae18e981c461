//! The cached answers of `[shared_calls]`: bounded by count and by bytes, dropped by expiry
//! order when full, expired ones dropped on lookup and before each store, and indexed by
//! (seller, family) so a write drops its seller's family without looking at anything else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::{Answer, Key};

/// What a fixed entry costs besides its body, headers and key (map slots, the index, the
/// expiry order, the `Arc`s): an estimate on the safe side.
const ENTRY_OVERHEAD: usize = 256;

/// Cached answers within `max_entries` and `max_bytes`.
pub(super) struct Answers {
    max_entries: usize,
    max_bytes: usize,
    entries: HashMap<Arc<Key>, Entry>,
    /// Keys by (seller, family): what one write drops.
    by_family: HashMap<(String, &'static str), HashSet<Arc<Key>>>,
    /// Keys by expiry (then insertion order): what goes first when full, and what expired.
    by_expiry: BTreeMap<(Instant, u64), Arc<Key>>,
    bytes: usize,
    next_seq: u64,
}

struct Entry {
    answer: Arc<Answer>,
    /// When it expires, and its place in `by_expiry`.
    until: Instant,
    seq: u64,
    /// The leader that fetched it ([`super::Lead`]'s ticket: the later a leader started, the
    /// newer its answer).
    ticket: u64,
    size: usize,
}

/// What a lookup found.
pub(super) enum Found {
    /// A fresh answer.
    Fresh(Arc<Answer>),
    /// An expired answer, dropped now.
    Expired,
    /// Nothing.
    Nothing,
}

/// What a store did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored {
    /// Whether the answer is kept.
    pub(super) kept: bool,
    /// Expired answers dropped to make room.
    pub(super) expired: u64,
    /// Fresh answers dropped (the ones closest to expiry) to stay within the bounds.
    pub(super) evicted: u64,
    /// The answer alone is larger than `max_bytes`: not kept.
    pub(super) too_large: bool,
}

impl Answers {
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Answers {
        Answers {
            max_entries,
            max_bytes,
            entries: HashMap::new(),
            by_family: HashMap::new(),
            by_expiry: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    /// Answers kept.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes kept (the estimate the bound applies to).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The answer for `key` if fresh at `now`; an expired one is dropped.
    pub(super) fn get(&mut self, key: &Key, now: Instant) -> Found {
        match self.entries.get(key) {
            None => Found::Nothing,
            Some(e) if e.until > now => Found::Fresh(e.answer.clone()),
            Some(_) => {
                self.remove(key);
                Found::Expired
            }
        }
    }

    /// Keeps `answer` for `key` until `until`, unless a newer leader's answer is already kept
    /// (a later `ticket`); makes room by dropping expired answers, then the ones closest to
    /// expiry.
    pub(super) fn insert(
        &mut self,
        key: &Key,
        answer: Arc<Answer>,
        until: Instant,
        ticket: u64,
        now: Instant,
    ) -> Stored {
        let mut out = Stored::default();
        if self.entries.get(key).is_some_and(|e| e.ticket > ticket) {
            return out;
        }
        self.remove(key);
        let size = ENTRY_OVERHEAD + key.size() + answer.size();
        if size > self.max_bytes {
            out.too_large = true;
            return out;
        }
        out.expired = self.drop_expired(now);
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(soonest) = self.by_expiry.values().next().cloned() else {
                break;
            };
            self.remove(&soonest);
            out.evicted += 1;
        }
        let key = Arc::new(key.clone());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((until, seq), key.clone());
        self.by_family
            .entry((key.seller.clone(), key.family))
            .or_default()
            .insert(key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                answer,
                until,
                seq,
                ticket,
                size,
            },
        );
        out.kept = true;
        out
    }

    /// Drops the seller's answers of a family; returns how many.
    pub(super) fn drop_family(&mut self, seller: &str, family: &'static str) -> u64 {
        let Some(keys) = self.by_family.remove(&(seller.to_string(), family)) else {
            return 0;
        };
        let n = keys.len() as u64;
        for key in keys {
            if let Some(e) = self.entries.remove(&key) {
                self.by_expiry.remove(&(e.until, e.seq));
                self.bytes -= e.size;
            }
        }
        n
    }

    /// Drops every answer; returns how many.
    pub(super) fn clear(&mut self) -> u64 {
        let n = self.entries.len() as u64;
        self.entries.clear();
        self.by_family.clear();
        self.by_expiry.clear();
        self.bytes = 0;
        n
    }

    /// Drops every answer expired at `now`; returns how many.
    fn drop_expired(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        while let Some(key) = self
            .by_expiry
            .first_key_value()
            .filter(|((until, _), _)| *until <= now)
            .map(|(_, k)| k.clone())
        {
            self.remove(&key);
            n += 1;
        }
        n
    }

    fn remove(&mut self, key: &Key) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.by_expiry.remove(&(e.until, e.seq));
        self.bytes -= e.size;
        let index = (key.seller.clone(), key.family);
        if let Some(keys) = self.by_family.get_mut(&index) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_family.remove(&index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(seller: &str, family: &'static str, path: &str) -> Key {
        Key {
            seller: seller.into(),
            operation: "catalogItems_2022-04-01.getCatalogItem",
            family,
            path_and_query: path.into(),
            headers: Vec::new(),
        }
    }

    fn answer(body_bytes: usize) -> Arc<Answer> {
        Arc::new(Answer {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(vec![b'x'; body_bytes]),
            leader: "leader-1".into(),
        })
    }

    fn fresh(a: &mut Answers, k: &Key, now: Instant) -> bool {
        matches!(a.get(k, now), Found::Fresh(_))
    }

    #[test]
    fn bytes_bound_the_cache_and_the_soonest_to_expire_go_first() {
        let now = Instant::now();
        let mut a = Answers::new(1000, 3 * 100_000);
        let (k1, k2, k3) = (
            key("S", "f", "/1"),
            key("S", "f", "/2"),
            key("S", "f", "/3"),
        );
        let ttl = |s| now + Duration::from_secs(s);
        assert!(a.insert(&k1, answer(90_000), ttl(30), 1, now).kept);
        assert!(a.insert(&k2, answer(90_000), ttl(10), 2, now).kept);
        assert!(a.insert(&k3, answer(90_000), ttl(20), 3, now).kept);
        assert!(a.bytes() <= 300_000);
        let k4 = key("S", "f", "/4");
        let stored = a.insert(&k4, answer(90_000), ttl(40), 4, now);
        assert_eq!((stored.kept, stored.evicted, stored.expired), (true, 1, 0));
        assert!(!fresh(&mut a, &k2, now), "the one closest to expiry went");
        assert!(fresh(&mut a, &k1, now) && fresh(&mut a, &k3, now) && fresh(&mut a, &k4, now));
        assert!(a.bytes() <= 300_000, "{}", a.bytes());
        // An answer larger than the whole budget is not kept, and drops nothing.
        let big = a.insert(&key("S", "f", "/5"), answer(300_000), ttl(40), 5, now);
        assert!(big.too_large && !big.kept && big.evicted == 0);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn expired_answers_are_dropped_on_lookup_and_before_a_store() {
        let now = Instant::now();
        let mut a = Answers::new(1000, 10_000_000);
        let (k1, k2) = (key("S", "f", "/1"), key("S", "f", "/2"));
        a.insert(&k1, answer(10), now + Duration::from_secs(1), 1, now);
        a.insert(&k2, answer(10), now + Duration::from_secs(1), 2, now);
        let later = now + Duration::from_secs(2);
        assert!(matches!(a.get(&k1, later), Found::Expired));
        assert_eq!(a.len(), 1, "dropped on lookup");
        let stored = a.insert(
            &key("S", "f", "/3"),
            answer(10),
            later + Duration::from_secs(5),
            3,
            later,
        );
        assert_eq!(stored.expired, 1);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn a_family_is_dropped_through_its_index_and_bytes_add_up() {
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        let mut a = Answers::new(1000, 100_000_000);
        for i in 0..50 {
            a.insert(
                &key("S1", "listings", &format!("/{i}")),
                answer(100),
                until,
                i,
                now,
            );
            a.insert(
                &key("S2", "listings", &format!("/{i}")),
                answer(100),
                until,
                i,
                now,
            );
            a.insert(
                &key("S1", "sellers", &format!("/{i}")),
                answer(100),
                until,
                i,
                now,
            );
        }
        // The three sets of answers are alike (same sizes): one of them is a third.
        let before = a.bytes();
        assert_eq!(a.drop_family("S1", "listings"), 50);
        assert_eq!(a.drop_family("S1", "listings"), 0);
        assert_eq!(a.len(), 100);
        assert_eq!(a.bytes() * 3, before * 2);
        assert!(fresh(&mut a, &key("S2", "listings", "/7"), now));
        assert!(fresh(&mut a, &key("S1", "sellers", "/7"), now));
        assert_eq!(
            a.drop_family("S2", "listings") + a.drop_family("S1", "sellers"),
            100
        );
        assert_eq!((a.len(), a.bytes()), (0, 0));
        assert!(a.by_expiry.is_empty() && a.by_family.is_empty());
        a.insert(&key("S1", "sellers", "/1"), answer(100), until, 99, now);
        assert_eq!(a.clear(), 1);
        assert_eq!((a.len(), a.bytes()), (0, 0));
        assert!(a.by_expiry.is_empty() && a.by_family.is_empty());
    }

    #[test]
    fn an_older_leaders_answer_never_replaces_a_newer_one() {
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        let mut a = Answers::new(10, 10_000_000);
        let k = key("S", "f", "/1");
        assert!(a.insert(&k, answer(20), until, 7, now).kept);
        assert!(!a.insert(&k, answer(10), until, 6, now).kept);
        let Found::Fresh(kept) = a.get(&k, now) else {
            panic!("kept")
        };
        assert_eq!(kept.body.len(), 20);
        assert!(a.insert(&k, answer(30), until, 8, now).kept);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn the_count_bounds_the_cache_too() {
        let now = Instant::now();
        let mut a = Answers::new(3, 100_000_000);
        for i in 0..10 {
            a.insert(
                &key("S", "f", &format!("/{i}")),
                answer(1),
                now + Duration::from_secs(100 + i),
                i,
                now,
            );
        }
        assert_eq!(a.len(), 3);
        assert!(fresh(&mut a, &key("S", "f", "/9"), now));
        assert!(!fresh(&mut a, &key("S", "f", "/0"), now));
    }
}
