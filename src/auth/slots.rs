//! A single-flight cache: one async mutex per key, so however many tasks find a key's value
//! missing or stale at once, one of them fetches it and the others wait for its result.
//!
//! Used for LWA access tokens (per seller or grantless scope) and Restricted Data Tokens (per
//! seller, resource and data elements).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// What a slot holds: a value fresh until an instant (and when it was obtained), or a recent
/// failure.
enum Entry<V, E> {
    Value(V, Instant, Instant),
    Failed(E, Instant),
}

/// A slot locked for inspection ([`Slots::lock`]): while it is held, nobody fetches or replaces
/// the key's value, so what is seen and what is done with it form one step.
pub struct Locked<V, E>(tokio::sync::OwnedMutexGuard<Option<Entry<V, E>>>);

type Slot<V, E> = Arc<tokio::sync::Mutex<Option<Entry<V, E>>>>;

/// How long a failed fetch is answered from memory: callers queued behind it get its error
/// at once instead of each repeating it (and each waiting out its timeout).
pub const FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Past this many keys, stale slots are dropped when a new key arrives.
pub const PRUNE_AT: usize = 10_000;

/// Values that are fresh until their own deadline, fetched single-flight per key.
pub struct Slots<K, V, E> {
    map: Mutex<HashMap<K, Slot<V, E>>>,
}

impl<K: Eq + Hash + Clone, V: Clone, E: Clone> Slots<K, V, E> {
    /// An empty cache.
    pub fn new() -> Slots<K, V, E> {
        Slots {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The key's value if it is fresh; otherwise `fetch`es one (which returns the value and the
    /// instant it stops being fresh) while other callers for the same key wait.
    pub async fn get_or_fetch<F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Instant), E>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        match cached.as_ref() {
            Some(Entry::Value(value, fresh_until, _)) if Instant::now() < *fresh_until => {
                return Ok(value.clone())
            }
            Some(Entry::Failed(error, until)) if Instant::now() < *until => {
                return Err(error.clone())
            }
            _ => {}
        }
        let obtained = Instant::now();
        match fetch().await {
            Ok((value, fresh_until)) => {
                *cached = Some(Entry::Value(value.clone(), fresh_until, obtained));
                Ok(value)
            }
            Err(error) => {
                *cached = Some(Entry::Failed(error.clone(), Instant::now() + FAILURE_TTL));
                Err(error)
            }
        }
    }

    /// Forgets the key's value if `stale` says so (e.g. it is the token Amazon just rejected).
    pub async fn invalidate_if(&self, key: &K, stale: impl FnOnce(&V) -> bool) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if matches!(cached.as_ref(), Some(Entry::Value(v, _, _)) if stale(v)) {
            *cached = None;
        }
    }

    /// Locks the key's slot (waiting for a fetch in progress to finish), so a caller can look at
    /// the value and clear it in one step.
    pub async fn lock(&self, key: &K) -> Locked<V, E> {
        Locked(self.slot(key).lock_owned().await)
    }

    /// Number of keys ever seen (for metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key was ever seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &K) -> Slot<V, E> {
        // A poisoned map only means another thread panicked mid-insert; the map is still valid.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // The key is cloned only when it is new, not on every hit.
        if let Some(slot) = map.get(key) {
            return slot.clone();
        }
        if map.len() >= PRUNE_AT {
            // Keys can be unbounded (an RDT per report document): drop slots that nobody is
            // using and that hold nothing fresh.
            let now = Instant::now();
            map.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || match slot.try_lock() {
                        Ok(entry) => {
                            matches!(&*entry, Some(Entry::Value(_, until, _)) if *until > now)
                        }
                        Err(_) => true,
                    }
            });
        }
        map.entry(key.clone()).or_default().clone()
    }
}

// === impl Locked ===

impl<V, E> Locked<V, E> {
    /// The value held (fresh or not) and how long ago it was obtained; `None` when the slot
    /// holds no value.
    pub fn value(&self) -> Option<(&V, std::time::Duration)> {
        match self.0.as_ref() {
            Some(Entry::Value(v, _, obtained)) => Some((v, obtained.elapsed())),
            _ => None,
        }
    }

    /// Forgets the value (or failure): the next caller fetches.
    pub fn clear(&mut self) {
        *self.0 = None;
    }
}

impl<K: Eq + Hash + Clone, V: Clone, E: Clone> Default for Slots<K, V, E> {
    fn default() -> Self {
        Slots::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_fetch_once_and_stale_values_are_refetched() {
        let slots: Arc<Slots<&str, u32, &str>> = Arc::new(Slots::new());
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (slots, fetches) = (slots.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                slots
                    .get_or_fetch(&"k", || async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok::<_, &str>((n, Instant::now() + Duration::from_secs(60)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(1));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        let v = slots
            .get_or_fetch(&"k", || async {
                Ok::<_, &str>((2, Instant::now() + Duration::from_secs(60)))
            })
            .await;
        assert_eq!(v, Ok(2));
        slots.invalidate_if(&"k", |v| *v == 1).await;
        let v = slots
            .get_or_fetch(&"k", || async { Ok::<_, &str>((3, Instant::now())) })
            .await;
        assert_eq!(v, Ok(2), "invalidation only removes the value it names");
        slots.invalidate_if(&"k", |v| *v == 2).await;
        let v = slots
            .get_or_fetch(&"k", || async { Ok::<_, &str>((4, Instant::now())) })
            .await;
        assert_eq!(v, Ok(4));
        let failed = slots
            .get_or_fetch(&"k", || async { Err::<(u32, Instant), _>("down") })
            .await;
        assert_eq!(
            failed,
            Err("down"),
            "a failed fetch is returned, not cached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_slots_are_dropped_once_there_are_many_keys() {
        let slots: Slots<u32, u32, ()> = Slots::new();
        for k in 0..PRUNE_AT as u32 {
            let _ = slots
                .get_or_fetch(&k, || async {
                    Ok((k, Instant::now() + Duration::from_secs(1)))
                })
                .await;
        }
        assert_eq!(slots.len(), PRUNE_AT);
        tokio::time::advance(Duration::from_secs(2)).await;
        let _ = slots
            .get_or_fetch(&u32::MAX, || async {
                Ok((0, Instant::now() + Duration::from_secs(60)))
            })
            .await;
        assert_eq!(slots.len(), 1, "only the fresh key is left");
    }
}
