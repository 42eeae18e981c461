//! Tests of the PostgreSQL backend against the real server at 127.0.0.1:5432 (CI starts one).
//! Each test works in its own random schema, dropped when the test ends (passing or failing),
//! so tests run in parallel without seeing each other.

use std::time::Duration;

use super::{PostgresOptions, PostgresStore, MIGRATIONS};
use crate::store::tests::{client, contract, record, seller};
use crate::store::token_cache::SharedTokenCache;
use crate::store::{
    DeletionReason, KeyCreation, OrderKey, RetentionState, SellerStatus, Store, StoreError,
};

/// The machine's server, trust authentication.
pub(crate) const URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh schema, dropped (with everything in it) when this is dropped.
pub(crate) struct TestSchema(pub(crate) String);

impl TestSchema {
    pub(crate) fn new() -> TestSchema {
        let token = crate::crypto::random_token::<9>().expect("random schema name");
        let suffix: String = token
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        TestSchema(format!("spgate_test_{suffix}"))
    }

    pub(crate) fn options(&self) -> PostgresOptions {
        PostgresOptions {
            url: URL.into(),
            schema: self.0.clone(),
            pool_size: 4,
            statement_timeout: Duration::from_secs(10),
            ca_pem: None,
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // A blocking psql is fine here: one local round trip at the end of a test.
        let _ = std::process::Command::new("psql")
            .args([
                URL,
                "-qAtc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

async fn fresh() -> (PostgresStore, TestSchema) {
    let schema = TestSchema::new();
    let store = PostgresStore::connect(&schema.options())
        .await
        .expect("PostgreSQL must run at 127.0.0.1:5432 for these tests");
    (store, schema)
}

/// A plain client, to look behind the store's back.
async fn raw() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn the_postgres_store_keeps_the_store_contract() {
    let (store, schema) = fresh().await;
    contract(&store).await;
    let tables: i64 = raw()
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.0],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        tables >= 10,
        "the tables live in the test's schema: {tables}"
    );
}

#[tokio::test]
async fn the_postgres_store_behind_the_cache_keeps_the_store_contract() {
    let (store, _schema) = fresh().await;
    let cached =
        crate::store::cache::CachedStore::new(std::sync::Arc::new(store), Duration::from_secs(60));
    contract(&cached).await;
}

#[tokio::test]
async fn two_instances_on_one_schema_see_each_others_writes_and_revocations() {
    let schema = TestSchema::new();
    let a = PostgresStore::connect(&schema.options()).await.unwrap();
    let b = PostgresStore::connect(&schema.options()).await.unwrap();
    let before = b.access_version().await.unwrap();
    a.insert_client(&client("c1", "h1")).await.unwrap();
    assert!(b.access_version().await.unwrap() > before);
    assert_eq!(
        b.client_by_key_hash("h1").await.unwrap(),
        Some(client("c1", "h1"))
    );
    let v = a.access_version().await.unwrap();
    assert!(b.revoke_client("c1", 5).await.unwrap());
    assert!(a.access_version().await.unwrap() > v, "a revocation counts");
    b.put_seller(&seller("A1")).await.unwrap();
    let v = b.access_version().await.unwrap();
    a.set_seller_status("A1", SellerStatus::Deauthorized)
        .await
        .unwrap();
    assert!(
        b.access_version().await.unwrap() > v,
        "a deauthorization counts"
    );
    assert!(matches!(
        b.insert_client(&client("c1", "h2")).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn the_schema_is_migrated_once_and_a_newer_schema_is_refused() {
    let schema = TestSchema::new();
    // Ten instances starting at once: the advisory lock lets one migrate.
    let starts: Vec<_> = (0..10)
        .map(|_| {
            let options = schema.options();
            tokio::spawn(async move { PostgresStore::connect(&options).await.map(|_| ()) })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let db = raw().await;
    let version: i32 = db
        .query_one(
            &format!("SELECT version FROM {}.schema_version", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version as usize, MIGRATIONS.len());
    db.execute(
        &format!(
            "UPDATE {}.schema_version SET version = version + 1",
            schema.0
        ),
        &[],
    )
    .await
    .unwrap();
    let refused = PostgresStore::connect(&schema.options()).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::SchemaTooNew { found, known } if found == known + 1),
        "{refused}"
    );
    assert!(!refused.is_unavailable());
}

#[tokio::test]
async fn of_twenty_concurrent_shreds_of_one_order_exactly_one_deletes() {
    let (store, _schema) = fresh().await;
    let mut rec = record("A1", "902-1", 10);
    rec.key_id = Some("k1".into());
    let key = OrderKey {
        key_id: "k1".into(),
        seller: "A1".into(),
        order_id: "902-1".into(),
        wrapped: "v1:k1:wrapped".into(),
        created_at: 1,
    };
    assert_eq!(
        store.create_order_key(&key, &rec).await.unwrap(),
        KeyCreation::Created
    );
    let current = store.retention("A1", "902-1").await.unwrap().unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let mut tomb = current.clone();
            tomb.deleted_at = Some(20);
            tomb.deletion_reason = Some(DeletionReason::RetentionDue);
            tokio::spawn(async move { store.shred_order(&tomb).await })
        })
        .collect();
    let mut deleted = 0;
    for task in tasks {
        if task.await.unwrap().unwrap().is_some() {
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1);
    let gone = store.retention("A1", "902-1").await.unwrap().unwrap();
    assert_eq!(gone.state, RetentionState::Deleted);
    assert_eq!(gone.version, current.version + 1);
}

#[tokio::test]
async fn of_twenty_concurrent_key_creations_one_wins_and_the_others_learn_its_key() {
    let (store, _schema) = fresh().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = OrderKey {
                    key_id: format!("k{i}"),
                    seller: "A1".into(),
                    order_id: "902-1".into(),
                    wrapped: format!("v1:k1:wrapped-{i}"),
                    created_at: 1,
                };
                let mut rec = record("A1", "902-1", 10);
                rec.key_id = Some(key.key_id.clone());
                store.create_order_key(&key, &rec).await
            })
        })
        .collect();
    let mut created = 0;
    let mut seen = Vec::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            KeyCreation::Created => created += 1,
            KeyCreation::Exists(k) => seen.push(k.key_id),
            KeyCreation::Conflict => {}
        }
    }
    assert_eq!(created, 1);
    let winner = store.order_key("A1", "902-1").await.unwrap().unwrap();
    assert!(seen.iter().all(|k| *k == winner.key_id), "{seen:?}");
    assert_eq!(store.retention_stats(0, 0).await.unwrap().keys, 1);
}

#[tokio::test]
async fn the_shared_token_cache_elects_one_refresher_and_expires_on_the_servers_clock() {
    let (store, _schema) = fresh().await;
    assert!(SharedTokenCache::get(&store, "s1").await.unwrap().is_none());
    let ttl = Duration::from_secs(5);
    let first = store.try_lock("s1", ttl).await.unwrap().expect("free");
    assert!(store.try_lock("s1", ttl).await.unwrap().is_none(), "held");
    store
        .put("s1", "v1:k1:sealed-token", Duration::from_secs(60))
        .await
        .unwrap();
    let (sealed, left) = SharedTokenCache::get(&store, "s1").await.unwrap().unwrap();
    assert_eq!(sealed, "v1:k1:sealed-token");
    assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60));
    store.unlock("s1", "not-the-token").await.unwrap();
    assert!(
        store.try_lock("s1", ttl).await.unwrap().is_none(),
        "a stranger cannot unlock"
    );
    store.unlock("s1", &first).await.unwrap();
    let second = store
        .try_lock("s1", Duration::from_millis(50))
        .await
        .unwrap()
        .expect("free again");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        store.try_lock("s1", ttl).await.unwrap().is_some(),
        "an expired lock is taken over"
    );
    store.unlock("s1", &second).await.unwrap();
    store.put("s1", "x", Duration::ZERO).await.unwrap();
    assert!(SharedTokenCache::get(&store, "s1").await.unwrap().is_none());
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_not_a_defect() {
    let schema = TestSchema::new();
    let mut options = schema.options();
    // Nothing listens on port 1.
    options.url = "postgres://postgres@127.0.0.1:1/postgres".into();
    let started = std::time::Instant::now();
    let e = PostgresStore::connect(&options).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let printed = format!("{e} {e:?}");
    assert!(!printed.contains("127.0.0.1:1/postgres"), "{printed}");
}

#[tokio::test]
async fn a_bad_schema_name_or_url_is_refused_without_echoing_the_url() {
    let schema = TestSchema::new();
    let mut options = schema.options();
    options.schema = "x; DROP TABLE y".into();
    assert!(matches!(
        PostgresStore::connect(&options).await,
        Err(StoreError::PostgresConfig(_))
    ));
    let mut options = schema.options();
    options.url = "postgres://u:hunter2@host:notaport/db".into();
    let e = PostgresStore::connect(&options).await.unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn libpq_strict_sslmodes_are_taken_out_of_the_url_and_remembered() {
    assert_eq!(
        super::split_sslmode("postgres://h/db?sslmode=verify-full"),
        ("postgres://h/db".to_string(), true)
    );
    assert_eq!(
        super::split_sslmode("postgres://h/db?application_name=x&sslmode=verify-ca"),
        ("postgres://h/db?application_name=x".to_string(), true)
    );
    assert_eq!(
        super::split_sslmode("postgres://h/db?sslmode=require"),
        ("postgres://h/db?sslmode=require".to_string(), false)
    );
}

/// The bytes of a table's files (main fork, every segment), read behind the server's back.
async fn table_files(db: &tokio_postgres::Client, schema: &str, table: &str) -> Vec<u8> {
    db.batch_execute("CHECKPOINT").await.unwrap();
    let dir: String = db
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let rel: String = db
        .query_one(
            "SELECT pg_relation_filepath($1::text::regclass)",
            &[&format!("{schema}.{table}")],
        )
        .await
        .unwrap()
        .get(0);
    let base = std::path::Path::new(&dir).join(rel);
    let mut bytes =
        std::fs::read(&base).expect("the test runs as a user who can read the data directory");
    for segment in 1.. {
        match std::fs::read(format!("{}.{segment}", base.display())) {
            Ok(more) => bytes.extend(more),
            Err(_) => break,
        }
    }
    bytes
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_shredded_key_and_cached_response_leave_no_bytes_in_the_table_files_after_compact() {
    let (store, schema) = fresh().await;
    let db = raw().await;
    let wrapped = "v1:k1:WRAPPED-KEY-MARKER-7f3a9c";
    let sealed = b"SEALED-PII-MARKER-5b2e71".to_vec();
    let key = OrderKey {
        key_id: "k1".into(),
        seller: "A1".into(),
        order_id: "902-1".into(),
        wrapped: wrapped.into(),
        created_at: 1,
    };
    let mut rec = record("A1", "902-1", 10);
    rec.key_id = Some("k1".into());
    store.create_order_key(&key, &rec).await.unwrap();
    let entry = crate::store::CacheEntry {
        seller: "A1".into(),
        cache_id: "c1".into(),
        order_id: "902-1".into(),
        key_id: "k1".into(),
        sealed: sealed.clone(),
        stored_at: 1,
        expires_at: i64::MAX / 2,
    };
    assert!(store.put_cached(&entry).await.unwrap());
    assert!(store
        .link_pseudonym("A1", "902-1", "psn_MARKER_d41c")
        .await
        .unwrap());
    // The scan can see them while they live (else the test could not fail).
    assert!(holds(
        &table_files(&db, &schema.0, "order_keys").await,
        wrapped.as_bytes()
    ));
    assert!(holds(
        &table_files(&db, &schema.0, "pii_cache").await,
        &sealed
    ));
    assert!(holds(
        &table_files(&db, &schema.0, "pseudonyms").await,
        b"psn_MARKER_d41c"
    ));

    let mut tomb = store.retention("A1", "902-1").await.unwrap().unwrap();
    tomb.deleted_at = Some(20);
    tomb.deletion_reason = Some(DeletionReason::RetentionDue);
    store.shred_order(&tomb).await.unwrap().expect("shredded");
    // A deleted row is only marked dead: its bytes stay in the page until the table is rewritten.
    assert!(
        holds(
            &table_files(&db, &schema.0, "order_keys").await,
            wrapped.as_bytes()
        ),
        "before compact the dead tuple is still on disk"
    );
    store.compact().await.unwrap();
    assert!(!holds(
        &table_files(&db, &schema.0, "order_keys").await,
        wrapped.as_bytes()
    ));
    assert!(!holds(
        &table_files(&db, &schema.0, "pii_cache").await,
        &sealed
    ));
    assert!(!holds(
        &table_files(&db, &schema.0, "pseudonyms").await,
        b"psn_MARKER_d41c"
    ));
}
