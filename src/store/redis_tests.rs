//! Tests of the Redis backend against a real server at 127.0.0.1:6379 (CI starts one). Each test
//! works under its own random key prefix, so tests run in parallel without seeing each other,
//! and deletes its keys when it ends, passing or failing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RedisStore;
use crate::store::tests::{client, contract, seller};
use crate::store::token_cache::SharedTokenCache;
use crate::store::{DropInRecord, GatewayToken, SellerStatus, Store, StoreError};

const URL: &str = "redis://127.0.0.1:6379/";

/// A fresh, unique key prefix whose keys are deleted when it is dropped, also when the test
/// panics, so a failing test leaves nothing behind.
struct TestPrefix(String);

impl TestPrefix {
    fn new() -> TestPrefix {
        let token = crate::crypto::random_token::<9>().expect("random prefix");
        TestPrefix(format!("spgate-test-{token}:"))
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        // Blocking is fine here: a few local round trips at the end of a test.
        let Ok(mut conn) = redis::Client::open(URL)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.0))
                .arg("COUNT")
                .arg(500)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() && redis::cmd("DEL").arg(keys).exec(&mut conn).is_err() {
                return;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

async fn store_at(prefix: &TestPrefix) -> RedisStore {
    RedisStore::connect(URL, &prefix.0)
        .await
        .expect("Redis must run at 127.0.0.1:6379 for these tests")
}

/// A store under a fresh prefix; keep the prefix alive until the test ends.
async fn fresh() -> (RedisStore, TestPrefix) {
    let prefix = TestPrefix::new();
    (store_at(&prefix).await, prefix)
}

/// A plain connection, to look at keys behind the store's back.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under `prefix`.
async fn keys_under(prefix: &str) -> Vec<String> {
    let mut conn = raw().await;
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn drop_in(id: &str, client_id: &str) -> DropInRecord {
    DropInRecord {
        lwa_client_id: id.into(),
        secret_hash: "sh".into(),
        refresh_hash: "rh".into(),
        client_id: client_id.into(),
        seller: "A1".into(),
    }
}

#[tokio::test]
async fn the_redis_store_keeps_the_store_contract() {
    let (store, prefix) = fresh().await;
    contract(&store).await;
    assert!(
        !keys_under(store.key_prefix()).await.is_empty(),
        "the records live under the prefix"
    );
    drop(prefix);
    assert!(
        keys_under(store.key_prefix()).await.is_empty(),
        "the test's keys are deleted"
    );
}

#[tokio::test]
async fn two_handles_on_the_same_prefix_see_each_others_writes() {
    let prefix = TestPrefix::new();
    let a = store_at(&prefix).await;
    let b = store_at(&prefix).await;
    a.insert_client(&client("c1", "h1")).await.unwrap();
    assert_eq!(
        b.client_by_key_hash("h1").await.unwrap(),
        Some(client("c1", "h1"))
    );
    assert!(b.revoke_client("c1", 5).await.unwrap());
    assert_eq!(
        a.client_by_key_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(5)
    );
    assert!(matches!(
        b.insert_client(&client("c1", "h2")).await,
        Err(StoreError::Conflict(_))
    ));
    b.put_seller(&seller("A1")).await.unwrap();
    assert_eq!(a.sellers().await.unwrap(), vec![seller("A1")]);
    a.set_seller_status("A1", SellerStatus::Deauthorized)
        .await
        .unwrap();
    assert_eq!(
        b.seller("A1").await.unwrap().unwrap().status,
        SellerStatus::Deauthorized
    );
}

#[tokio::test]
async fn stores_under_different_prefixes_do_not_see_each_other() {
    let (a, _prefix_a) = fresh().await;
    let (b, _prefix_b) = fresh().await;
    a.insert_client(&client("c1", "h1")).await.unwrap();
    a.put_seller(&seller("A1")).await.unwrap();
    assert!(b.client_by_key_hash("h1").await.unwrap().is_none());
    assert!(b.clients().await.unwrap().is_empty());
    assert!(b.sellers().await.unwrap().is_empty());
    b.insert_client(&client("c1", "h1")).await.unwrap();
}

#[tokio::test]
async fn of_twenty_concurrent_inserts_of_one_client_id_exactly_one_wins() {
    let (store, _prefix) = fresh().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_client(&client("c1", &format!("h{i}"))).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => winners.push(format!("h{i}")),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let clients = store.clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].key_hash, winners[0]);
    // The losers left no key-hash index behind.
    for i in 0..20 {
        let hash = format!("h{i}");
        let found = store.client_by_key_hash(&hash).await.unwrap();
        assert_eq!(found.is_some(), hash == winners[0], "{hash}");
    }
}

#[tokio::test]
async fn of_twenty_concurrent_inserts_of_one_key_hash_exactly_one_wins() {
    let (store, _prefix) = fresh().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_client(&client(&format!("c{i}"), "h1")).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.clients().await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoking_or_deauthorizing_an_unknown_record_creates_nothing() {
    let (store, _prefix) = fresh().await;
    assert!(!store.revoke_client("ghost", 1).await.unwrap());
    assert!(store.client("ghost").await.unwrap().is_none());
    assert!(!store
        .set_seller_status("ghost", SellerStatus::Deauthorized)
        .await
        .unwrap());
    assert!(store.seller("ghost").await.unwrap().is_none());
    assert!(keys_under(store.key_prefix()).await.is_empty());
}

#[tokio::test]
async fn a_client_inserted_revoked_stays_revoked_at_its_original_time() {
    let (store, _prefix) = fresh().await;
    let mut c = client("c1", "h1");
    c.revoked_at = Some(7);
    store.insert_client(&c).await.unwrap();
    assert!(!store.revoke_client("c1", 9).await.unwrap());
    assert_eq!(store.client("c1").await.unwrap(), Some(c));
}

#[tokio::test]
async fn clients_are_listed_by_creation_then_id_and_sellers_by_id() {
    let (store, _prefix) = fresh().await;
    for (id, hash, created_at) in [("b", "h1", 20), ("c", "h2", 10), ("a", "h3", 20)] {
        let mut c = client(id, hash);
        c.created_at = created_at;
        store.insert_client(&c).await.unwrap();
    }
    let ids: Vec<_> = store
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["c", "a", "b"]);
    for id in ["A3", "A10", "A1"] {
        store.put_seller(&seller(id)).await.unwrap();
    }
    let ids: Vec<_> = store
        .sellers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.selling_partner_id)
        .collect();
    assert_eq!(ids, ["A1", "A10", "A3"]);
}

#[tokio::test]
async fn list_fields_keep_commas_and_empty_lists() {
    let (store, _prefix) = fresh().await;
    let mut s = seller("A1");
    s.marketplaces = vec![];
    store.put_seller(&s).await.unwrap();
    assert_eq!(store.seller("A1").await.unwrap(), Some(s));
    let mut c = client("c1", "h1");
    c.sellers = vec!["*".into(), "odd,id".into()];
    store.insert_client(&c).await.unwrap();
    assert_eq!(store.client("c1").await.unwrap(), Some(c));
}

#[tokio::test]
async fn drop_in_credentials_for_an_unknown_client_are_refused() {
    let (store, _prefix) = fresh().await;
    assert!(matches!(
        store.insert_drop_in(&drop_in("d1", "ghost")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.drop_in("d1").await.unwrap().is_none());
}

#[tokio::test]
async fn of_twenty_concurrent_inserts_of_one_drop_in_id_exactly_one_wins() {
    let (store, _prefix) = fresh().await;
    store.insert_client(&client("c1", "h1")).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_drop_in(&drop_in("d1", "c1")).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_gateway_token_vanishes_from_redis_when_its_lifetime_ends() {
    let (store, _prefix) = fresh().await;
    let now = unix_now();
    let token = GatewayToken {
        token_hash: "t1".into(),
        client_id: "c1".into(),
        seller: "A1".into(),
        expires_at: now + 1,
    };
    store.insert_gateway_token(&token, now).await.unwrap();
    assert_eq!(
        store.gateway_token("t1", now).await.unwrap(),
        Some(token.clone())
    );
    assert!(store.gateway_token("t1", now + 1).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Asked with the old `now`, only the key's TTL can explain its absence.
    assert!(store.gateway_token("t1", now).await.unwrap().is_none());
    let key = format!("{}gateway-token:t1", store.key_prefix());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn a_gateway_token_inserted_already_expired_is_not_kept() {
    let (store, _prefix) = fresh().await;
    let token = GatewayToken {
        token_hash: "t1".into(),
        client_id: "c1".into(),
        seller: "A1".into(),
        expires_at: 100,
    };
    store.insert_gateway_token(&token, 100).await.unwrap();
    assert!(store.gateway_token("t1", 0).await.unwrap().is_none());
}

#[tokio::test]
async fn a_corrupt_record_is_reported_without_its_value() {
    let (store, _prefix) = fresh().await;
    store.put_seller(&seller("A1")).await.unwrap();
    redis::cmd("HSET")
        .arg(format!("{}seller:A1", store.key_prefix()))
        .arg("region")
        .arg("mars")
        .exec_async(&mut raw().await)
        .await
        .unwrap();
    let err = store.seller("A1").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { what: "seller", .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("v1:k1:sealed"), "{err}");
}

#[tokio::test]
async fn a_wrongly_typed_key_gives_an_error_without_its_value() {
    let (store, _prefix) = fresh().await;
    redis::cmd("SET")
        .arg(format!("{}seller:A1", store.key_prefix()))
        .arg("secret-looking-value")
        .exec_async(&mut raw().await)
        .await
        .unwrap();
    let err = store.seller("A1").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Redis { op: "seller", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(!err.to_string().contains("secret-looking-value"), "{err}");
}

#[tokio::test]
async fn the_token_cache_returns_what_was_put_with_its_remaining_lifetime() {
    let (store, _prefix) = fresh().await;
    assert!(store.get("seller:A1").await.unwrap().is_none());
    store
        .put("seller:A1", "v1:k1:sealed-1", Duration::from_secs(10))
        .await
        .unwrap();
    let (sealed, ttl) = store.get("seller:A1").await.unwrap().unwrap();
    assert_eq!(sealed, "v1:k1:sealed-1");
    assert!(
        ttl > Duration::from_secs(9) && ttl <= Duration::from_secs(10),
        "{ttl:?}"
    );
    assert!(store.get("seller:A2").await.unwrap().is_none());
    store
        .put("seller:A1", "v1:k1:sealed-2", Duration::from_secs(60))
        .await
        .unwrap();
    let (sealed, ttl) = store.get("seller:A1").await.unwrap().unwrap();
    assert_eq!(sealed, "v1:k1:sealed-2");
    assert!(ttl > Duration::from_secs(59), "{ttl:?}");
    store
        .put("seller:A1", "v1:k1:sealed-3", Duration::ZERO)
        .await
        .unwrap();
    assert!(store.get("seller:A1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_cached_token_is_gone_after_its_ttl() {
    let (store, _prefix) = fresh().await;
    store
        .put(
            "grantless:notifications",
            "v1:k1:s",
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert!(store
        .get("grantless:notifications")
        .await
        .unwrap()
        .is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store
        .get("grantless:notifications")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn the_token_cache_is_shared_between_handles() {
    let prefix = TestPrefix::new();
    let a = store_at(&prefix).await;
    let b = store_at(&prefix).await;
    a.put("seller:A1", "v1:k1:s", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(b.get("seller:A1").await.unwrap().unwrap().0, "v1:k1:s");
    let lock = a
        .try_lock("seller:A1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lock.is_some());
    assert!(b
        .try_lock("seller:A1", Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn of_fifty_concurrent_try_locks_exactly_one_succeeds() {
    let (store, _prefix) = fresh().await;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.try_lock("seller:A1", Duration::from_secs(10)).await })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        if let Some(token) = task.await.unwrap().unwrap() {
            taken.push(token);
        }
    }
    assert_eq!(taken.len(), 1);
    assert!(taken[0].len() >= 16, "a random lock token");
    // Other subjects are not locked.
    assert!(store
        .try_lock("seller:A2", Duration::from_secs(10))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn unlocking_with_a_wrong_token_keeps_the_lock() {
    let (store, _prefix) = fresh().await;
    let ttl = Duration::from_secs(10);
    let token = store.try_lock("seller:A1", ttl).await.unwrap().unwrap();
    store.unlock("seller:A1", "not-the-token").await.unwrap();
    assert!(store.try_lock("seller:A1", ttl).await.unwrap().is_none());
    store.unlock("seller:A1", &token).await.unwrap();
    let again = store.try_lock("seller:A1", ttl).await.unwrap().unwrap();
    assert_ne!(again, token, "each lock gets a fresh token");
    // The old holder's late unlock does not release the new holder's lock.
    store.unlock("seller:A1", &token).await.unwrap();
    assert!(store.try_lock("seller:A1", ttl).await.unwrap().is_none());
}

#[tokio::test]
async fn a_lock_expires_after_its_ttl() {
    let (store, _prefix) = fresh().await;
    let ttl = Duration::from_millis(100);
    assert!(store.try_lock("seller:A1", ttl).await.unwrap().is_some());
    assert!(store.try_lock("seller:A1", ttl).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.try_lock("seller:A1", ttl).await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreachable_redis_fails_promptly() {
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        RedisStore::connect("redis://127.0.0.1:1/", "spgate-test:"),
    )
    .await
    .expect("connect must not hang");
    assert!(
        matches!(result, Err(StoreError::Redis { op: "connect", .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < super::CONNECT_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    // Accepts connections and never writes a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        RedisStore::connect(&format!("redis://{addr}/"), "spgate-test:"),
    )
    .await
    .expect("connect must not hang");
    assert!(
        matches!(result, Err(StoreError::Redis { op: "connect", .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < super::CONNECT_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn errors_never_repeat_the_url_or_its_password() {
    let err = RedisStore::connect("redis://:hunter2@127.0.0.1:1/", "spgate-test:")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = RedisStore::connect("http://:hunter2@127.0.0.1/", "spgate-test:")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::RedisUrl(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // TLS is compiled in: a `rediss://` URL is a connection attempt like any other.
    let err = RedisStore::connect("rediss://:hunter2@127.0.0.1:1/", "spgate-test:")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Redis { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_store_does_not_print_its_connection_details() {
    let (store, _prefix) = fresh().await;
    let printed = format!("{store:?}");
    assert!(printed.contains(store.key_prefix()), "{printed}");
    assert!(!printed.contains("6379"), "{printed}");
}
