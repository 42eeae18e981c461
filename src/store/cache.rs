//! A read-through cache in front of any [`Store`] for the lookups every request makes: the
//! tool behind an API key, the tool by id, the seller, and drop-in tokens.
//!
//! Without it each request costs two to three database reads (a tool or a token and its tool, a
//! seller). Entries live `ttl` (1 s by default); every write through this handle drops the
//! entries it affects at once. Writes made elsewhere (the `spgate clients revoke` CLI, another
//! instance) change the store's [`Store::access_version`]; a cache hit is served only after
//! that number is read and found unchanged (one small read), else every entry is dropped. So a
//! revocation or deauthorization applies at the next request on every instance.
//!
//! ## One version check per request
//!
//! A request makes several lookups (its tool, then its seller). Inside [`request_scope`] (the
//! proxy runs each request in one) the version read by the request's first hit is remembered
//! for the rest of that request, and a later hit of the same request reads it again only when
//! the cache has since moved to another version. The invariant that keeps "the next request"
//! true: **a hit is served only if this request itself read the backend's access version, after
//! it began, and the cache still holds entries read under exactly that version.** A revocation
//! committed before the request began is therefore seen by its first check, which empties the
//! cache; a second check within the same request could only add what was committed while the
//! request was already running, which the guarantee never covered. The remembered version
//! belongs to the task of one request and one cache handle (keyed by a per-handle id): it never
//! outlives the request and is never shared with another request or another handle. Outside a
//! request scope (CLI, background tasks, tests) every hit checks, as before.
//!
//! The vault's methods (data keys, retention records, the PII cache) are never cached: a
//! destroyed key must be gone for the next reveal, on every instance. They pass straight
//! through.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    CacheEntry, ClientRecord, DropInRecord, GatewayToken, Invite, KeyCreation, OAuthState,
    OrderKey, RetentionRecord, RetentionStats, SellerRecord, SellerStatus, Shredded, Store,
    StoreError,
};

/// Entries kept per map; when full the map is cleared (a rare, cheap reset).
const MAX_ENTRIES: usize = 100_000;

/// Source of [`CachedStore::id`]s.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

tokio::task_local! {
    /// The access version the current request read, and the handle it read it through.
    static CHECKED: Cell<Option<Checked>>;
}

/// An access version read within the current request (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Checked {
    /// [`CachedStore::id`] of the handle that read it.
    store: u64,
    /// The version read.
    version: u64,
}

/// Runs one request: the cache's hits within `request` share one access version check (see
/// the module docs). Every request must get its own scope; nesting one starts afresh.
pub fn request_scope<F: Future>(request: F) -> impl Future<Output = F::Output> {
    CHECKED.scope(Cell::new(None), request)
}

struct TtlMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlMap {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        // A poisoned map only means another thread panicked mid-update; entries stay valid.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let map = self.lock();
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, (Instant::now(), value));
    }

    fn retain(&self, keep: impl FnMut(&K, &mut (Instant, V)) -> bool) {
        self.lock().retain(keep);
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// [`Store`] with cached per-request lookups.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    by_key: TtlMap<String, Option<ClientRecord>>,
    by_id: TtlMap<String, Option<ClientRecord>>,
    sellers: TtlMap<String, Option<SellerRecord>>,
    tokens: TtlMap<String, Option<GatewayToken>>,
    /// The store's access version the entries were read under (`u64::MAX`: none yet).
    version: AtomicU64,
    /// Tells this handle's checks from another handle's within one request scope.
    id: u64,
}

impl CachedStore {
    /// Wraps a store.
    pub fn new(inner: Arc<dyn Store>, ttl: Duration) -> CachedStore {
        CachedStore {
            inner,
            by_key: TtlMap::new(ttl),
            by_id: TtlMap::new(ttl),
            sellers: TtlMap::new(ttl),
            tokens: TtlMap::new(ttl),
            version: AtomicU64::new(u64::MAX),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether no other lookup saw a new access version while a backend read was under way:
    /// a value read before a revocation must not be cached after the cache was emptied for it.
    /// (A revocation the cache has not noticed yet empties it at the next hit anyway.)
    fn unchanged_since(&self, read_under: u64) -> bool {
        self.version.load(Ordering::Acquire) == read_under
    }

    /// Drops every entry when tools or sellers changed anywhere since they were read. Called
    /// before a hit is served; misses read the backend anyway. Within a [`request_scope`] the
    /// backend is asked once: a later hit of the same request reuses the version this request
    /// read, as long as the entries are still those read under it (the module docs).
    async fn fresh(&self) -> Result<(), StoreError> {
        let held = Checked {
            store: self.id,
            version: self.version.load(Ordering::Acquire),
        };
        if CHECKED.try_with(|c| c.get() == Some(held)).unwrap_or(false) {
            return Ok(());
        }
        let now = self.inner.access_version().await?;
        if self.version.swap(now, Ordering::AcqRel) != now {
            self.by_key.clear();
            self.by_id.clear();
            self.sellers.clear();
            self.tokens.clear();
        }
        // Outside a request scope there is nothing to remember.
        let _ = CHECKED.try_with(|c| {
            c.set(Some(Checked {
                store: self.id,
                version: now,
            }))
        });
        Ok(())
    }

    fn forget_client(&self, id: &str) {
        self.by_id.retain(|k, _| k != id);
        self.by_key
            .retain(|_, (_, c)| c.as_ref().is_none_or(|c| c.id != id));
        self.tokens.clear();
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn put_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        self.inner.put_seller(seller).await?;
        self.sellers.retain(|k, _| *k != seller.selling_partner_id);
        Ok(())
    }

    async fn insert_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        self.inner.insert_seller(seller).await?;
        self.sellers.retain(|k, _| *k != seller.selling_partner_id);
        Ok(())
    }

    async fn seller(&self, selling_partner_id: &str) -> Result<Option<SellerRecord>, StoreError> {
        if self.sellers.get(selling_partner_id).is_some() {
            self.fresh().await?;
            if let Some(hit) = self.sellers.get(selling_partner_id) {
                return Ok(hit);
            }
        }
        let read_under = self.version.load(Ordering::Acquire);
        let found = self.inner.seller(selling_partner_id).await?;
        if self.unchanged_since(read_under) {
            self.sellers
                .put(selling_partner_id.to_string(), found.clone());
        }
        Ok(found)
    }

    async fn sellers(&self) -> Result<Vec<SellerRecord>, StoreError> {
        self.inner.sellers().await
    }

    async fn remove_seller(&self, selling_partner_id: &str) -> Result<bool, StoreError> {
        let removed = self.inner.remove_seller(selling_partner_id).await?;
        self.sellers.retain(|k, _| k != selling_partner_id);
        Ok(removed)
    }

    async fn set_seller_status(
        &self,
        selling_partner_id: &str,
        status: SellerStatus,
    ) -> Result<bool, StoreError> {
        let changed = self
            .inner
            .set_seller_status(selling_partner_id, status)
            .await?;
        self.sellers.retain(|k, _| k != selling_partner_id);
        Ok(changed)
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        self.inner.insert_client(client).await?;
        // A key that was unknown a moment ago may be cached as unknown.
        self.by_key.retain(|k, _| *k != client.key_hash);
        self.by_id.retain(|k, _| *k != client.id);
        Ok(())
    }

    async fn client_by_key_hash(&self, key_hash: &str) -> Result<Option<ClientRecord>, StoreError> {
        if self.by_key.get(key_hash).is_some() {
            self.fresh().await?;
            if let Some(hit) = self.by_key.get(key_hash) {
                return Ok(hit);
            }
        }
        let read_under = self.version.load(Ordering::Acquire);
        let found = self.inner.client_by_key_hash(key_hash).await?;
        if self.unchanged_since(read_under) {
            self.by_key.put(key_hash.to_string(), found.clone());
        }
        Ok(found)
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.clients().await
    }

    async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let revoked = self.inner.revoke_client(id, at).await?;
        self.forget_client(id);
        Ok(revoked)
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        if self.by_id.get(id).is_some() {
            self.fresh().await?;
            if let Some(hit) = self.by_id.get(id) {
                return Ok(hit);
            }
        }
        let read_under = self.version.load(Ordering::Acquire);
        let found = self.inner.client(id).await?;
        if self.unchanged_since(read_under) {
            self.by_id.put(id.to_string(), found.clone());
        }
        Ok(found)
    }

    async fn insert_drop_in(&self, record: &DropInRecord) -> Result<(), StoreError> {
        self.inner.insert_drop_in(record).await
    }

    async fn drop_in(&self, lwa_client_id: &str) -> Result<Option<DropInRecord>, StoreError> {
        self.inner.drop_in(lwa_client_id).await
    }

    async fn insert_gateway_token(&self, token: &GatewayToken, now: i64) -> Result<(), StoreError> {
        self.inner.insert_gateway_token(token, now).await?;
        // Mirror the backend: the insert purges tokens expired at `now`.
        self.tokens.retain(|k, (_, cached)| {
            *k != token.token_hash && cached.as_ref().is_none_or(|t| t.expires_at > now)
        });
        Ok(())
    }

    async fn gateway_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<GatewayToken>, StoreError> {
        if self.tokens.get(token_hash).is_some() {
            self.fresh().await?;
            if let Some(hit) = self.tokens.get(token_hash) {
                return Ok(hit.filter(|t| t.expires_at > now));
            }
        }
        let read_under = self.version.load(Ordering::Acquire);
        let found = self.inner.gateway_token(token_hash, now).await?;
        if self.unchanged_since(read_under) {
            self.tokens.put(token_hash.to_string(), found.clone());
        }
        Ok(found)
    }

    async fn insert_invite(&self, invite: &Invite) -> Result<(), StoreError> {
        self.inner.insert_invite(invite).await
    }

    async fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError> {
        self.inner.invite(id).await
    }

    async fn use_invite(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        self.inner.use_invite(id, at).await
    }

    async fn insert_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        self.inner.insert_oauth_state(state).await
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError> {
        self.inner.take_oauth_state(state_hash, now).await
    }
    async fn order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        self.inner.order_key(seller, order_id).await
    }

    async fn order_key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, StoreError> {
        self.inner.order_key_by_id(key_id).await
    }

    async fn create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        self.inner.create_order_key(key, record).await
    }

    async fn retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        self.inner.retention(seller, order_id).await
    }

    async fn retention_by_order(&self, order_id: &str) -> Result<Vec<RetentionRecord>, StoreError> {
        self.inner.retention_by_order(order_id).await
    }

    async fn put_retention(&self, record: &RetentionRecord) -> Result<bool, StoreError> {
        self.inner.put_retention(record).await
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<RetentionRecord>, StoreError> {
        self.inner.due(now, limit).await
    }

    async fn shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        self.inner.shred_order(tombstone).await
    }

    async fn retention_stats(&self, now: i64, next: usize) -> Result<RetentionStats, StoreError> {
        self.inner.retention_stats(now, next).await
    }

    async fn put_cached(&self, entry: &CacheEntry) -> Result<bool, StoreError> {
        self.inner.put_cached(entry).await
    }

    async fn cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        self.inner.cached(seller, cache_id, now).await
    }

    async fn cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        self.inner.cached_by_order(seller, order_id).await
    }

    async fn purge_expired_cache(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.purge_expired_cache(now).await
    }

    async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        self.inner.link_pseudonym(seller, order_id, pseudonym).await
    }

    async fn orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.orders_by_pseudonym(pseudonym).await
    }

    async fn pseudonyms_of(&self, seller: &str, order_id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.pseudonyms_of(seller, order_id).await
    }

    async fn compact(&self) -> Result<(), StoreError> {
        self.inner.compact().await
    }

    async fn access_version(&self) -> Result<u64, StoreError> {
        self.inner.access_version().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
