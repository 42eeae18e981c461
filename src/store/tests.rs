//! The store contract, run against every backend.

use super::embedded::EmbeddedStore;
use super::*;

pub(crate) fn seller(id: &str) -> SellerRecord {
    SellerRecord {
        selling_partner_id: id.to_string(),
        region: Region::Eu,
        marketplaces: vec!["A1PA6795UKMFR9".into()],
        refresh_token_sealed: "v1:k1:sealed".into(),
        authorized_at: 1_700_000_000,
        reauthorize_by: 1_731_536_000,
        status: SellerStatus::Active,
    }
}

pub(crate) fn client(id: &str, hash: &str) -> ClientRecord {
    ClientRecord {
        id: id.to_string(),
        tool: format!("tool-{id}"),
        role: "orders".into(),
        sellers: vec!["A1".into(), "A2".into()],
        key_hash: hash.to_string(),
        key_prefix: "spg_abcd".into(),
        created_at: 1_700_000_000,
        revoked_at: None,
    }
}

/// The behaviour every backend must have.
pub(crate) async fn contract(store: &dyn Store) {
    assert!(store.seller("A1").await.unwrap().is_none());
    store.insert_seller(&seller("A1")).await.unwrap();
    assert!(
        matches!(
            store.insert_seller(&seller("A1")).await,
            Err(StoreError::Conflict(_))
        ),
        "never replaces"
    );
    store.put_seller(&seller("A0")).await.unwrap();
    assert_eq!(store.seller("A1").await.unwrap(), Some(seller("A1")));
    let ids: Vec<_> = store
        .sellers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.selling_partner_id)
        .collect();
    assert_eq!(ids, ["A0", "A1"]);
    let mut updated = seller("A1");
    updated.region = Region::Na;
    store.put_seller(&updated).await.unwrap();
    assert_eq!(
        store.seller("A1").await.unwrap().unwrap().region,
        Region::Na
    );
    assert!(store
        .set_seller_status("A1", SellerStatus::Deauthorized)
        .await
        .unwrap());
    assert_eq!(
        store.seller("A1").await.unwrap().unwrap().status,
        SellerStatus::Deauthorized
    );
    assert!(!store
        .set_seller_status("nope", SellerStatus::Active)
        .await
        .unwrap());
    assert!(store.remove_seller("A0").await.unwrap());
    assert!(!store.remove_seller("A0").await.unwrap());

    store.insert_client(&client("c1", "h1")).await.unwrap();
    assert!(matches!(
        store.insert_client(&client("c2", "h1")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.insert_client(&client("c1", "h9")).await,
        Err(StoreError::Conflict(_))
    ));
    let c = store.client_by_key_hash("h1").await.unwrap().unwrap();
    assert_eq!(c, client("c1", "h1"));
    assert!(c.allows_seller("A2") && !c.allows_seller("A3") && !c.allows_all_sellers());
    assert!(store.client_by_key_hash("h2").await.unwrap().is_none());
    assert!(store.revoke_client("c1", 1_800_000_000).await.unwrap());
    assert!(!store.revoke_client("c1", 1_800_000_001).await.unwrap());
    assert_eq!(
        store
            .client_by_key_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(1_800_000_000)
    );
    assert_eq!(store.clients().await.unwrap().len(), 1);
    assert_eq!(store.client("c1").await.unwrap().unwrap().id, "c1");
    assert!(store.client("nope").await.unwrap().is_none());

    let drop_in = DropInRecord {
        lwa_client_id: "spgate-dropin-1".into(),
        secret_hash: "sh".into(),
        refresh_hash: "rh".into(),
        client_id: "c1".into(),
        seller: "A1".into(),
    };
    store.insert_drop_in(&drop_in).await.unwrap();
    assert!(matches!(
        store.insert_drop_in(&drop_in).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.drop_in("spgate-dropin-1").await.unwrap(),
        Some(drop_in)
    );
    assert!(store.drop_in("other").await.unwrap().is_none());

    let token = |hash: &str, expires_at| GatewayToken {
        token_hash: hash.into(),
        client_id: "c1".into(),
        seller: "A1".into(),
        expires_at,
    };
    store
        .insert_gateway_token(&token("t1", 100), 0)
        .await
        .unwrap();
    assert_eq!(
        store.gateway_token("t1", 99).await.unwrap(),
        Some(token("t1", 100))
    );
    assert!(
        store.gateway_token("t1", 100).await.unwrap().is_none(),
        "expired"
    );
    let invite = Invite {
        id: "inv1".into(),
        region: Region::Fe,
        created_at: 10,
        expires_at: 1000,
        used_at: None,
        seller: Some("A1".into()),
    };
    store.insert_invite(&invite).await.unwrap();
    assert_eq!(store.invite("inv1").await.unwrap(), Some(invite));
    assert!(store.invite("inv2").await.unwrap().is_none());
    assert!(store.use_invite("inv1", 20).await.unwrap());
    assert!(!store.use_invite("inv1", 21).await.unwrap(), "single use");
    assert!(!store.use_invite("inv2", 21).await.unwrap());
    assert_eq!(
        store.invite("inv1").await.unwrap().unwrap().used_at,
        Some(20)
    );
    let state = |hash: &str, expires_at| OAuthState {
        state_hash: hash.into(),
        invite_id: "inv1".into(),
        expires_at,
    };
    store.insert_oauth_state(&state("s1", 600)).await.unwrap();
    store.insert_oauth_state(&state("s2", 600)).await.unwrap();
    assert_eq!(
        store.take_oauth_state("s1", 100).await.unwrap(),
        Some(state("s1", 600))
    );
    assert!(
        store.take_oauth_state("s1", 100).await.unwrap().is_none(),
        "a replayed state is gone"
    );
    assert!(
        store.take_oauth_state("s2", 600).await.unwrap().is_none(),
        "an expired state is refused"
    );
    assert!(
        store.take_oauth_state("s2", 0).await.unwrap().is_none(),
        "and gone"
    );
    store
        .insert_gateway_token(&token("t2", 300), 200)
        .await
        .unwrap();
    assert!(
        store.gateway_token("t1", 0).await.unwrap().is_none(),
        "expired tokens are purged"
    );
    retention_contract(store).await;
}

pub(crate) fn record(seller: &str, order: &str, due_at: i64) -> RetentionRecord {
    RetentionRecord {
        seller: seller.into(),
        order_id: order.into(),
        version: 0,
        state: RetentionState::Active,
        key_id: None,
        first_seen: 1_000,
        status: Some("Shipped".into()),
        latest_delivery: Some(2_000),
        delivered_at: None,
        delivery_source: None,
        cancelled_at: None,
        due_at,
        hold: None,
        deleted_at: None,
        deletion_reason: None,
    }
}

fn key(seller: &str, order: &str, id: &str) -> OrderKey {
    OrderKey {
        key_id: id.into(),
        seller: seller.into(),
        order_id: order.into(),
        wrapped: format!("v1:k1:wrapped-{id}"),
        created_at: 1_000,
    }
}

fn entry(seller: &str, order: &str, cache_id: &str, key_id: &str, expires_at: i64) -> CacheEntry {
    CacheEntry {
        seller: seller.into(),
        cache_id: cache_id.into(),
        order_id: order.into(),
        key_id: key_id.into(),
        sealed: vec![0, 159, 146, 150, 255, 1],
        stored_at: 1_000,
        expires_at,
    }
}

/// The vault's part of the contract: keys created once, versioned records, the due index,
/// the cache bound to a live key, and shredding that removes everything of one order.
pub(crate) async fn retention_contract(store: &dyn Store) {
    const O1: &str = "902-0000000-0000001";
    const O2: &str = "902-0000000-0000002";
    assert!(store.order_key("A1", O1).await.unwrap().is_none());
    let mut rec = record("A1", O1, 5_000);
    rec.key_id = Some("k1".into());
    assert_eq!(
        store
            .create_order_key(&key("A1", O1, "k1"), &rec)
            .await
            .unwrap(),
        KeyCreation::Created
    );
    // A racing creator with a stale view loses and learns the winner's key.
    assert_eq!(
        store
            .create_order_key(&key("A1", O1, "k2"), &rec)
            .await
            .unwrap(),
        KeyCreation::Exists(key("A1", O1, "k1"))
    );
    assert!(store.order_key_by_id("k2").await.unwrap().is_none());
    assert_eq!(
        store.order_key_by_id("k1").await.unwrap(),
        Some(key("A1", O1, "k1"))
    );
    let stored = store.retention("A1", O1).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.key_id.as_deref(), Some("k1"));

    // Versioned writes: a stale version changes nothing.
    let mut newer = stored.clone();
    newer.due_at = 4_000;
    assert!(store.put_retention(&newer).await.unwrap());
    assert!(!store.put_retention(&newer).await.unwrap(), "stale version");
    assert_eq!(
        store.retention("A1", O1).await.unwrap().unwrap().due_at,
        4_000
    );
    assert!(store.put_retention(&record("A1", O2, 9_000)).await.unwrap());
    assert!(
        !store.put_retention(&record("A1", O2, 9_000)).await.unwrap(),
        "exists"
    );
    assert!(store
        .put_retention(&record("A9", O1, 100_000))
        .await
        .unwrap());
    let sellers: Vec<_> = store
        .retention_by_order(O1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.seller)
        .collect();
    assert_eq!(sellers, ["A1", "A9"]);

    // The due index: purge_at <= now, earliest first; a hold pushes purge_at to its end.
    assert!(store.due(3_999, 10).await.unwrap().is_empty());
    let due: Vec<_> = store
        .due(9_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.order_id)
        .collect();
    assert_eq!(due, [O1, O2]);
    assert_eq!(store.due(9_000, 1).await.unwrap().len(), 1);
    let mut held = store.retention("A1", O2).await.unwrap().unwrap();
    held.state = RetentionState::Held;
    held.hold = Some(LegalHold {
        reason: "litigation".into(),
        until: 20_000,
        by: "sec".into(),
        at: 1_000,
    });
    assert!(store.put_retention(&held).await.unwrap());
    let due: Vec<_> = store
        .due(19_999, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.order_id)
        .collect();
    assert_eq!(due, [O1]);

    // The cache: bound to the order's live key, expiring on the caller's clock.
    assert!(
        !store
            .put_cached(&entry("A1", O1, "c1", "k2", 2_000))
            .await
            .unwrap(),
        "wrong key"
    );
    assert!(
        !store
            .put_cached(&entry("A1", O2, "c1", "k1", 2_000))
            .await
            .unwrap(),
        "no key"
    );
    assert!(store
        .put_cached(&entry("A1", O1, "c1", "k1", 2_000))
        .await
        .unwrap());
    assert!(store
        .put_cached(&entry("A1", O1, "c2", "k1", 2_000))
        .await
        .unwrap());
    assert_eq!(
        store.cached("A1", "c1", 1_999).await.unwrap(),
        Some(entry("A1", O1, "c1", "k1", 2_000))
    );
    assert!(
        store.cached("A1", "c1", 2_000).await.unwrap().is_none(),
        "expired"
    );
    assert!(
        store.cached("A2", "c1", 1_000).await.unwrap().is_none(),
        "per seller"
    );
    assert_eq!(store.cached_by_order("A1", O1).await.unwrap().len(), 2);

    // Pseudonyms link only orders with a live key.
    assert!(store.link_pseudonym("A1", O1, "psn_a").await.unwrap());
    assert!(
        store.link_pseudonym("A1", O1, "psn_a").await.unwrap(),
        "idempotent"
    );
    assert!(!store.link_pseudonym("A1", O2, "psn_a").await.unwrap());
    assert_eq!(
        store.orders_by_pseudonym("psn_a").await.unwrap(),
        [("A1".to_string(), O1.to_string())]
    );
    assert_eq!(store.pseudonyms_of("A1", O1).await.unwrap(), ["psn_a"]);

    let stats = store.retention_stats(5_000, 10).await.unwrap();
    assert_eq!(
        (
            stats.active,
            stats.held,
            stats.deleted,
            stats.overdue,
            stats.keys
        ),
        (2, 1, 0, 1, 1)
    );
    assert_eq!(stats.next.first().map(|r| r.order_id.as_str()), Some(O1));

    // Shredding: only from the version read; removes the key, cache and links at once.
    let current = store.retention("A1", O1).await.unwrap().unwrap();
    let mut tomb = current.clone();
    tomb.version -= 1;
    tomb.deleted_at = Some(5_000);
    tomb.deletion_reason = Some(DeletionReason::RetentionDue);
    assert_eq!(
        store.shred_order(&tomb).await.unwrap(),
        None,
        "stale version"
    );
    tomb.version = current.version;
    assert_eq!(
        store.shred_order(&tomb).await.unwrap(),
        Some(Shredded {
            key_id: Some("k1".into()),
            cache_entries: 2,
            pseudonyms: 1
        })
    );
    assert_eq!(store.shred_order(&tomb).await.unwrap(), None, "once only");
    assert!(store.order_key("A1", O1).await.unwrap().is_none());
    assert!(store.order_key_by_id("k1").await.unwrap().is_none());
    assert!(store.cached("A1", "c1", 0).await.unwrap().is_none());
    assert!(store.cached_by_order("A1", O1).await.unwrap().is_empty());
    assert!(store.orders_by_pseudonym("psn_a").await.unwrap().is_empty());
    assert!(store.pseudonyms_of("A1", O1).await.unwrap().is_empty());
    assert!(!store
        .put_cached(&entry("A1", O1, "c1", "k1", 9_000))
        .await
        .unwrap());
    let gone = store.retention("A1", O1).await.unwrap().unwrap();
    assert_eq!(gone.state, RetentionState::Deleted);
    assert_eq!(gone.deleted_at, Some(5_000));
    assert_eq!(
        gone.key_id.as_deref(),
        Some("k1"),
        "evidence of which key died"
    );
    assert!(store
        .due(i64::MAX / 2, 10)
        .await
        .unwrap()
        .iter()
        .all(|r| r.order_id != O1 || r.seller != "A1"));
    let mut revived = gone.clone();
    revived.state = RetentionState::Deleted;
    assert!(
        store.put_retention(&revived).await.is_err(),
        "only shred deletes"
    );
    // A deleted order seen again gets a fresh key.
    revived.state = RetentionState::Active;
    revived.key_id = Some("k3".into());
    assert_eq!(
        store
            .create_order_key(&key("A1", O1, "k3"), &revived)
            .await
            .unwrap(),
        KeyCreation::Created
    );
    let stats = store.retention_stats(5_000, 0).await.unwrap();
    assert_eq!(
        (stats.active, stats.held, stats.deleted, stats.keys),
        (2, 1, 0, 1)
    );
    assert!(stats.next.is_empty());
    // An expired entry is purged (embedded) or expires by itself (Redis).
    assert!(store
        .put_cached(&entry("A1", O1, "c3", "k3", 1_500))
        .await
        .unwrap());
    assert!(store.purge_expired_cache(1_500).await.unwrap() <= 1);
    assert!(store.cached("A1", "c3", 1_500).await.unwrap().is_none());
    store.compact().await.unwrap();
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    contract(&store).await;
}

#[tokio::test]
async fn the_cached_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let inner = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let store = super::cache::CachedStore::new(inner, std::time::Duration::from_secs(60));
    contract(&store).await;
}

#[tokio::test]
async fn the_cache_sees_its_own_writes_and_other_writers_at_the_next_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let inner = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    // Another process on the same file (the CLI).
    let other = EmbeddedStore::open(dir.path()).unwrap();
    // Far longer than the test: only the access version can make the cache see `other`.
    let ttl = std::time::Duration::from_secs(3600);
    let store = super::cache::CachedStore::new(inner, ttl);
    assert!(
        store.client_by_key_hash("h1").await.unwrap().is_none(),
        "cached as unknown"
    );
    store.insert_client(&client("c1", "h1")).await.unwrap();
    assert!(
        store.client_by_key_hash("h1").await.unwrap().is_some(),
        "own insert seen at once"
    );
    store.revoke_client("c1", 5).await.unwrap();
    assert_eq!(
        store
            .client_by_key_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(5),
        "own revocation at once"
    );
    store.put_seller(&seller("A1")).await.unwrap();
    assert!(store.seller("A1").await.unwrap().is_some());
    other
        .set_seller_status("A1", SellerStatus::Deauthorized)
        .await
        .unwrap();
    assert_eq!(
        store.seller("A1").await.unwrap().unwrap().status,
        SellerStatus::Deauthorized,
        "another writer's deauthorization is seen at the next lookup"
    );
    store.insert_client(&client("c2", "h2")).await.unwrap();
    assert!(store.client_by_key_hash("h2").await.unwrap().is_some());
    other.revoke_client("c2", 7).await.unwrap();
    assert_eq!(
        store
            .client_by_key_hash("h2")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(7),
        "another writer's revocation is seen at the next lookup"
    );
}

#[tokio::test]
async fn a_request_checks_the_access_version_once_and_the_next_request_sees_other_writers() {
    use super::cache::{request_scope, CachedStore};
    let dir = tempfile::tempdir().unwrap();
    let inner: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    // Another process on the same file (the CLI, another instance).
    let other = EmbeddedStore::open(dir.path()).unwrap();
    let ttl = std::time::Duration::from_secs(3600);
    let store = CachedStore::new(inner.clone(), ttl);
    // A second handle on the same backend: a check made through `store` is not its check.
    let second = CachedStore::new(inner, ttl);
    store.insert_client(&client("c1", "h1")).await.unwrap();
    store.put_seller(&seller("A1")).await.unwrap();
    store.put_seller(&seller("B1")).await.unwrap();
    // Cached under the current version: the first hit of each handle reads the version (and
    // empties the cache, read under none); the second round caches again under it.
    for _ in 0..2 {
        assert!(store.client_by_key_hash("h1").await.unwrap().is_some());
        assert!(store.seller("A1").await.unwrap().is_some());
        assert!(second.seller("B1").await.unwrap().is_some());
    }

    request_scope(async {
        // The request's first hit reads the version ...
        let tool = store.client_by_key_hash("h1").await.unwrap().unwrap();
        assert_eq!(tool.revoked_at, None);
        other.revoke_client("c1", 7).await.unwrap();
        other
            .set_seller_status("A1", SellerStatus::Deauthorized)
            .await
            .unwrap();
        other
            .set_seller_status("B1", SellerStatus::Deauthorized)
            .await
            .unwrap();
        // ... and its seller lookup reuses it: no second read, so a change committed while
        // the request runs is not seen by it (it applies from the next request).
        assert_eq!(
            store.seller("A1").await.unwrap().unwrap().status,
            SellerStatus::Active,
            "one access version check per request"
        );
        // Another handle's check is not reused.
        assert_eq!(
            second.seller("B1").await.unwrap().unwrap().status,
            SellerStatus::Deauthorized,
            "another handle checks for itself"
        );
    })
    .await;

    request_scope(async {
        assert_eq!(
            store
                .client_by_key_hash("h1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(7),
            "a revocation is seen by the next request"
        );
        assert_eq!(
            store.seller("A1").await.unwrap().unwrap().status,
            SellerStatus::Deauthorized,
            "a deauthorization is seen by the next request"
        );
    })
    .await;
}

#[tokio::test]
async fn the_embedded_store_survives_reopening_and_sees_other_processes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = EmbeddedStore::open(dir.path()).unwrap();
    let b = EmbeddedStore::open(dir.path()).unwrap();
    a.insert_client(&client("c1", "h1")).await.unwrap();
    assert!(b.client_by_key_hash("h1").await.unwrap().is_some());
    b.revoke_client("c1", 5).await.unwrap();
    assert_eq!(
        a.client_by_key_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(5)
    );
    drop((a, b));
    let c = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(c.clients().await.unwrap().len(), 1);
    let mode: String = rusqlite::Connection::open(c.path())
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_seller_record_does_not_print_its_sealed_token() {
    let printed = format!("{:?}", seller("A1"));
    assert!(!printed.contains("v1:k1:sealed"), "{printed}");
}
