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
async fn the_cache_sees_its_own_writes_at_once_and_other_writers_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let inner = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let other = EmbeddedStore::open(dir.path()).unwrap();
    let ttl = std::time::Duration::from_millis(300);
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
        SellerStatus::Active,
        "another writer is seen only after the ttl"
    );
    tokio::time::sleep(ttl).await;
    assert_eq!(
        store.seller("A1").await.unwrap().unwrap().status,
        SellerStatus::Deauthorized
    );
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
