//! The vault on a manual clock: due dates, the cache, holds, erasure, export, and deletion that
//! leaves no byte behind, on the embedded store and on Redis.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::macros::datetime;
use time::OffsetDateTime;

use super::*;
use crate::store::embedded::EmbeddedStore;

const O1: &str = "902-0000000-0000001";
const O2: &str = "902-0000000-0000002";
const PII: &str = "{\"BuyerName\":\"Jane Example\",\"AddressLine1\":\"123 Example Street\"}";
const T0: OffsetDateTime = datetime!(2025-03-01 12:00 UTC);
const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    vault: Vault,
    clock: Arc<ManualClock>,
    events: Arc<Mutex<Vec<VaultEvent>>>,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

fn master() -> Arc<MasterKey> {
    Arc::new(
        MasterKey::from_base64(
            "k1",
            &crate::secret::Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        )
        .unwrap(),
    )
}

fn vault_on(
    store: Arc<dyn Store>,
    config: RetentionConfig,
    clock: Arc<ManualClock>,
) -> (Vault, Arc<Mutex<Vec<VaultEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let vault = Vault::new(
        store,
        master(),
        config,
        clock,
        Arc::new(move |e| sink.lock().unwrap().push(e)),
    );
    (vault, events)
}

fn embedded(config: RetentionConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let (vault, events) = vault_on(store.clone(), config, clock.clone());
    Fixture {
        vault,
        clock,
        events,
        store,
        _dir: Some(dir),
    }
}

fn deleted(events: &Mutex<Vec<VaultEvent>>) -> Vec<(String, DeletionReason)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            VaultEvent::Deleted {
                order_id, reason, ..
            } => Some((order_id.clone(), *reason)),
            _ => None,
        })
        .collect()
}

async fn due_of(f: &Fixture, order: &str) -> OffsetDateTime {
    let rec = f.store.retention("A1", order).await.unwrap().unwrap();
    OffsetDateTime::from_unix_timestamp(rec.due_at).unwrap()
}

#[tokio::test]
async fn one_key_per_order_and_the_due_date_follows_what_is_known_about_delivery() {
    let f = embedded(RetentionConfig::defaults());
    let k = f.vault.order_key("A1", O1).await.unwrap();
    assert_eq!(f.vault.order_key("A1", O1).await.unwrap().id(), k.id());
    assert_ne!(
        f.vault.order_key("A2", O1).await.unwrap().id(),
        k.id(),
        "per seller"
    );
    let (order, again) = f.vault.key_by_id(k.id()).await.unwrap().unwrap();
    assert_eq!((order.seller.as_str(), order.order_id.as_str()), ("A1", O1));
    let env = k.seal_field(O1, "Jane Example").unwrap();
    assert_eq!(again.open_field(O1, &env).unwrap().expose(), "Jane Example");

    assert_eq!(
        due_of(&f, O1).await,
        T0 + 30 * DAY,
        "nothing known: an upper bound"
    );
    let facts = |status: &str, estimate, delivered| OrderFacts {
        order_id: O1.into(),
        status: Some(status.into()),
        latest_delivery: estimate,
        delivered_at: delivered,
    };
    let estimate = T0 + 3 * DAY;
    f.vault
        .observe("A1", &facts("Shipped", Some(estimate), None))
        .await
        .unwrap();
    assert_eq!(
        due_of(&f, O1).await,
        estimate + 30 * DAY,
        "follows the estimate"
    );
    f.vault
        .observe("A1", &facts("Shipped", Some(T0 + 5 * DAY), None))
        .await
        .unwrap();
    assert_eq!(due_of(&f, O1).await, T0 + 35 * DAY, "in both directions");
    f.clock.advance(2 * DAY);
    f.vault
        .delivered("A1", O1, T0 + DAY, DeliverySource::Event)
        .await
        .unwrap();
    assert_eq!(due_of(&f, O1).await, T0 + 31 * DAY, "delivery + 30 days");
    f.vault
        .observe(
            "A1",
            &facts("Shipped", Some(T0 + 9 * DAY), Some(T0 + 2 * DAY)),
        )
        .await
        .unwrap();
    assert_eq!(
        due_of(&f, O1).await,
        T0 + 31 * DAY,
        "the earliest delivery wins"
    );
    f.vault
        .delivered("A1", O2, T0 + 90 * DAY, DeliverySource::Ops)
        .await
        .unwrap();
    assert_eq!(
        due_of(&f, O2).await,
        f.clock.now() + 30 * DAY,
        "a delivery in the future counts as now, and creates the record"
    );
    f.vault
        .observe("A1", &facts("Canceled", None, None))
        .await
        .unwrap();
    assert_eq!(
        due_of(&f, O1).await,
        f.clock.now(),
        "cancelled: due at once"
    );
    f.vault
        .observe(
            "A1",
            &OrderFacts {
                order_id: "902-unknown".into(),
                status: Some("Canceled".into()),
                ..OrderFacts::default()
            },
        )
        .await
        .unwrap();
    assert!(f
        .store
        .retention("A1", "902-unknown")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_shorter_retention_and_a_cancellation_grace_are_honoured() {
    let mut config = RetentionConfig::defaults();
    config.max_days = 7;
    config.cancelled_grace = Duration::from_secs(3600);
    let f = embedded(config);
    f.vault.order_key("A1", O1).await.unwrap();
    f.vault
        .delivered("A1", O1, T0, DeliverySource::Ops)
        .await
        .unwrap();
    assert_eq!(due_of(&f, O1).await, T0 + 7 * DAY);
    f.vault
        .observe(
            "A1",
            &OrderFacts {
                order_id: O1.into(),
                status: Some("CANCELLED".into()),
                ..OrderFacts::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(due_of(&f, O1).await, T0 + Duration::from_secs(3600));
    let report = f.vault.report().await.unwrap();
    assert_eq!(report.next_due[0].basis, "cancelled");
}

#[tokio::test]
async fn the_cache_serves_within_its_ttl_never_past_due_and_can_be_switched_off() {
    let f = embedded(RetentionConfig::defaults());
    assert_eq!(
        f.vault
            .cache_get("A1", "GET /orders/v0/orders/1/address")
            .await
            .unwrap(),
        None
    );
    f.vault
        .cache_put("A1", O1, "GET /orders/v0/orders/1/address", PII.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        f.vault
            .cache_get("A1", "GET /orders/v0/orders/1/address")
            .await
            .unwrap()
            .as_deref(),
        Some(PII.as_bytes())
    );
    assert_eq!(
        f.vault
            .cache_get("A2", "GET /orders/v0/orders/1/address")
            .await
            .unwrap(),
        None,
        "per seller"
    );
    f.clock.advance(Duration::from_secs(300));
    assert_eq!(
        f.vault
            .cache_get("A1", "GET /orders/v0/orders/1/address")
            .await
            .unwrap(),
        None,
        "ttl"
    );

    // An order due in a minute is cached for a minute only; one already due is not cached.
    f.vault.order_key("A1", O2).await.unwrap();
    f.vault
        .delivered(
            "A1",
            O2,
            f.clock.now() - 30 * DAY + Duration::from_secs(60),
            DeliverySource::Ops,
        )
        .await
        .unwrap();
    f.vault
        .cache_put("A1", O2, "o2", PII.as_bytes())
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(59));
    assert!(f.vault.cache_get("A1", "o2").await.unwrap().is_some());
    f.clock.advance(Duration::from_secs(1));
    assert!(f.vault.cache_get("A1", "o2").await.unwrap().is_none());
    f.vault
        .cache_put("A1", O2, "o2", PII.as_bytes())
        .await
        .unwrap();
    assert!(f.store.cached_by_order("A1", O2).await.unwrap().len() <= 1);
    assert!(f.vault.cache_get("A1", "o2").await.unwrap().is_none());

    let mut off = RetentionConfig::defaults();
    off.cache_enabled = false;
    let g = embedded(off);
    g.vault
        .cache_put("A1", O1, "k", PII.as_bytes())
        .await
        .unwrap();
    assert_eq!(g.vault.cache_get("A1", "k").await.unwrap(), None);
    assert!(
        g.store.retention("A1", O1).await.unwrap().is_none(),
        "nothing held, no record"
    );
}

/// Every occurrence of `needle` in the database file and its WAL.
fn on_disk(dir: &std::path::Path, needle: &[u8]) -> usize {
    let mut n = 0;
    for name in ["spgate.db", "spgate.db-wal"] {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        n += bytes.windows(needle.len()).filter(|w| *w == needle).count();
    }
    n
}

#[tokio::test]
async fn after_the_due_date_no_byte_of_the_pii_or_its_key_remains_in_the_database_or_wal() {
    let f = embedded(long_cache());
    let dir = f._dir.as_ref().unwrap().path().to_path_buf();
    let key = f.vault.order_key("A1", O1).await.unwrap();
    let raw_key = *key.expose_bytes();
    let envelope = key.seal_field(O1, "Jane Example").unwrap();
    f.vault
        .cache_put("A1", O1, "address", PII.as_bytes())
        .await
        .unwrap();
    f.vault
        .link_pseudonym("A1", O1, "psn_0123456789abcdef", None)
        .await
        .unwrap();
    f.vault
        .delivered("A1", O1, T0, DeliverySource::Event)
        .await
        .unwrap();
    // A second order, not due, must survive the pass.
    f.vault.order_key("A1", O2).await.unwrap();
    f.vault
        .observe("A1", &estimate(O2, T0 + 10 * DAY))
        .await
        .unwrap();
    f.vault
        .cache_put("A1", O2, "other", b"{\"BuyerName\":\"John Example\"}")
        .await
        .unwrap();

    let wrapped = f.store.order_key("A1", O1).await.unwrap().unwrap().wrapped;
    let sealed = f.store.cached_by_order("A1", O1).await.unwrap()[0]
        .sealed
        .clone();
    assert!(
        on_disk(&dir, wrapped.as_bytes()) > 0,
        "the scan sees the wrapped key"
    );
    assert!(
        on_disk(&dir, &sealed[..24]) > 0,
        "the scan sees the ciphertext"
    );
    assert!(on_disk(&dir, b"psn_0123456789abcdef") > 0);
    assert_eq!(on_disk(&dir, b"Jane Example"), 0, "PII only as ciphertext");
    assert_eq!(on_disk(&dir, &raw_key), 0, "keys only wrapped");

    assert!(f
        .vault
        .run_due(T0 + 30 * DAY - Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(f.vault.report().await.unwrap().overdue, 0);
    f.clock.set(T0 + 30 * DAY);
    assert_eq!(
        f.vault.report().await.unwrap().overdue,
        1,
        "due, not yet deleted"
    );
    let erased = f.vault.run_due(f.clock.now()).await.unwrap();
    assert_eq!(erased.len(), 1);
    assert_eq!((erased[0].cache_entries, erased[0].pseudonyms), (1, 1));
    assert_eq!(erased[0].key_id.as_deref(), Some(key.id()));
    assert_eq!(
        deleted(&f.events),
        [(O1.to_string(), DeletionReason::RetentionDue)]
    );

    assert_eq!(
        on_disk(&dir, wrapped.as_bytes()),
        0,
        "the wrapped key is gone"
    );
    assert_eq!(on_disk(&dir, &sealed[..24]), 0, "the ciphertext is gone");
    assert_eq!(
        on_disk(&dir, b"psn_0123456789abcdef"),
        0,
        "the pseudonym link is gone"
    );
    assert_eq!(on_disk(&dir, &raw_key), 0);
    assert!(
        f.vault.key_by_id(key.id()).await.unwrap().is_none(),
        "encrypted copies are dead"
    );
    assert!(parse_envelope_key(&envelope) == key.id());
    assert!(f.vault.cache_get("A1", "address").await.unwrap().is_none());
    assert!(
        f.vault.cache_get("A1", "other").await.unwrap().is_some(),
        "not due: kept"
    );

    assert!(
        f.vault.run_due(f.clock.now()).await.unwrap().is_empty(),
        "idempotent"
    );
    let report = f.vault.report().await.unwrap();
    assert_eq!(
        (
            report.active,
            report.deleted,
            report.overdue,
            report.live_keys
        ),
        (1, 1, 0, 1)
    );
    let tomb = f.store.retention("A1", O1).await.unwrap().unwrap();
    assert_eq!(tomb.deletion_reason, Some(DeletionReason::RetentionDue));
}

/// Cache entries that live until their order is due, so the pass is what deletes them.
fn long_cache() -> RetentionConfig {
    let mut config = RetentionConfig::defaults();
    config.cache_ttl = 60 * DAY;
    config
}

fn estimate(order: &str, at: OffsetDateTime) -> OrderFacts {
    OrderFacts {
        order_id: order.into(),
        status: Some("Shipped".into()),
        latest_delivery: Some(at),
        delivered_at: None,
    }
}

fn parse_envelope_key(envelope: &str) -> &str {
    crate::crypto::parse_field(envelope).unwrap().0
}

#[tokio::test]
async fn a_legal_hold_postpones_deletion_until_it_ends_and_blocks_erasure() {
    let f = embedded(RetentionConfig::defaults());
    f.vault
        .cache_put("A1", O1, "c", PII.as_bytes())
        .await
        .unwrap();
    f.vault
        .delivered("A1", O1, T0, DeliverySource::Ops)
        .await
        .unwrap();
    assert!(matches!(
        f.vault.hold("A1", O1, " ", T0 + 60 * DAY, "sec").await,
        Err(VaultError::InvalidHold(_))
    ));
    assert!(matches!(
        f.vault.hold("A1", O1, "litigation", T0, "sec").await,
        Err(VaultError::InvalidHold(_))
    ));
    assert!(matches!(
        f.vault.hold("A1", O2, "litigation", T0 + DAY, "sec").await,
        Err(VaultError::UnknownOrder)
    ));
    let rec = f
        .vault
        .hold("A1", O1, "litigation 2025-17", T0 + 60 * DAY, "sec")
        .await
        .unwrap();
    assert_eq!(rec.state, RetentionState::Held);
    assert!(f.vault.run_due(T0 + 59 * DAY).await.unwrap().is_empty());
    assert!(matches!(
        f.vault
            .erase(None, O1, EraseReason::DataSubjectRequest, "sec")
            .await,
        Err(VaultError::Held)
    ));
    assert_eq!(f.vault.report().await.unwrap().held, 1);
    f.clock.set(T0 + 60 * DAY);
    assert_eq!(f.vault.run_due(f.clock.now()).await.unwrap().len(), 1);
    assert_eq!(
        deleted(&f.events),
        [(O1.to_string(), DeletionReason::HoldExpired)]
    );
    assert!(f
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, VaultEvent::Held { by, .. } if by == "sec")));

    // Released before its end: deleted at the next pass if due.
    f.vault
        .cache_put("A1", O2, "c2", PII.as_bytes())
        .await
        .unwrap();
    f.vault
        .delivered("A1", O2, f.clock.now() - 40 * DAY, DeliverySource::Ops)
        .await
        .unwrap();
    f.vault
        .hold("A1", O2, "audit", f.clock.now() + DAY, "sec")
        .await
        .unwrap();
    assert!(f.vault.run_due(f.clock.now()).await.unwrap().is_empty());
    f.vault.release("A1", O2, "sec").await.unwrap();
    assert_eq!(f.vault.run_due(f.clock.now()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn data_subject_requests_export_decrypted_data_and_erase_it_by_order_or_pseudonym() {
    let f = embedded(RetentionConfig::defaults());
    f.vault
        .cache_put("A1", O1, "addr", PII.as_bytes())
        .await
        .unwrap();
    f.vault
        .cache_put("A2", O1, "addr", b"not json")
        .await
        .unwrap();
    f.vault
        .link_pseudonym("A1", O1, "psn_jane", None)
        .await
        .unwrap();
    f.vault
        .link_pseudonym("A1", O2, "psn_jane", None)
        .await
        .unwrap();

    let export = f.vault.export(O1, "sec").await.unwrap();
    assert_eq!(export.orders.len(), 2, "every seller holding the order");
    assert_eq!(
        export.orders[0].cached_responses[0]["BuyerName"],
        "Jane Example"
    );
    assert_eq!(export.orders[0].pseudonyms, ["psn_jane"]);
    assert_eq!(export.orders[1].cached_responses[0], "not json");
    assert!(
        !format!("{export:?}").contains("Jane"),
        "Debug never prints PII"
    );
    let by_psn = f.vault.export_pseudonym("psn_jane", "sec").await.unwrap();
    let orders: Vec<_> = by_psn.orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(orders, [O1, O2]);
    assert!(matches!(
        f.vault.export("nope", "sec").await,
        Err(VaultError::UnknownOrder)
    ));

    let erased = f
        .vault
        .erase(Some("A2"), O1, EraseReason::Operator, "sec")
        .await
        .unwrap();
    assert_eq!(erased.len(), 1);
    assert!(f.vault.cache_get("A2", "addr").await.unwrap().is_none());
    assert!(f.vault.cache_get("A1", "addr").await.unwrap().is_some());
    let erased = f
        .vault
        .erase_pseudonym("psn_jane", EraseReason::DataSubjectRequest, "sec")
        .await
        .unwrap();
    assert_eq!(erased.len(), 2);
    assert!(f.vault.cache_get("A1", "addr").await.unwrap().is_none());
    assert!(
        matches!(
            f.vault
                .erase_pseudonym("psn_jane", EraseReason::DataSubjectRequest, "sec")
                .await,
            Err(VaultError::UnknownOrder)
        ),
        "the links died with the orders"
    );
    assert!(
        f.vault
            .erase(None, O1, EraseReason::Operator, "sec")
            .await
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    let events = f.events.lock().unwrap();
    let erasures = events
        .iter()
        .filter(|e| matches!(e, VaultEvent::Erased { .. }))
        .count();
    let exports = events
        .iter()
        .filter(|e| matches!(e, VaultEvent::Exported { .. }))
        .count();
    assert_eq!((erasures, exports), (3, 2));
    // Each names who asked.
    assert!(events.iter().all(|e| match e {
        VaultEvent::Erased { by, .. } | VaultEvent::Exported { by, .. } => by == "sec",
        _ => true,
    }));
    assert!(
        !format!("{events:?}").contains("Jane"),
        "events carry no PII"
    );
}

#[tokio::test]
async fn an_order_seen_again_after_deletion_gets_a_fresh_key() {
    let f = embedded(RetentionConfig::defaults());
    let old = f.vault.order_key("A1", O1).await.unwrap();
    f.vault
        .erase(None, O1, EraseReason::DataSubjectRequest, "sec")
        .await
        .unwrap();
    let new = f.vault.order_key("A1", O1).await.unwrap();
    assert_ne!(old.id(), new.id());
    assert!(f.vault.key_by_id(old.id()).await.unwrap().is_none());
    assert_eq!(
        f.store.retention("A1", O1).await.unwrap().unwrap().state,
        RetentionState::Active
    );
}

#[tokio::test]
async fn concurrent_key_creation_yields_one_key() {
    let f = embedded(RetentionConfig::defaults());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let v = f.vault.clone();
            tokio::spawn(async move { v.order_key("A1", O1).await.unwrap().id().to_string() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

mod redis {
    //! The same guarantees on Redis, with several instances at once.

    use super::*;
    use crate::store::redis::RedisStore;

    const URL: &str = "redis://127.0.0.1:6379/";

    /// Deletes its keys when dropped.
    struct Prefix(String);

    impl Drop for Prefix {
        fn drop(&mut self) {
            let Ok(mut conn) = ::redis::Client::open(URL).and_then(|c| c.get_connection()) else {
                return;
            };
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{}*", self.0))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = ::redis::cmd("DEL").arg(keys).exec(&mut conn);
            }
        }
    }

    /// Every value under `prefix` (strings, hash fields, set members) that contains `needle`.
    async fn values_containing(prefix: &str, needle: &[u8]) -> usize {
        let client = ::redis::Client::open(URL).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cursor = 0u64;
        let mut hits = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                let kind: String = ::redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let values: Vec<Vec<u8>> = match kind.as_str() {
                    "string" => vec![::redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap()],
                    "hash" => ::redis::cmd("HVALS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap(),
                    "set" => ::redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap(),
                    "zset" => ::redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                        .unwrap(),
                    _ => Vec::new(),
                };
                let mut all = values;
                all.push(key.into_bytes());
                hits += all
                    .iter()
                    .filter(|v| v.windows(needle.len()).any(|w| w == needle))
                    .count();
            }
            if next == 0 {
                return hits;
            }
            cursor = next;
        }
    }

    async fn count_keys(pattern: &str) -> usize {
        let client = ::redis::Client::open(URL).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.len()
    }

    #[tokio::test]
    async fn three_instances_on_redis_shred_each_due_order_exactly_once_leaving_no_value_behind() {
        let prefix = Prefix(format!(
            "spgate-test-{}:",
            crate::crypto::random_token::<9>().unwrap()
        ));
        let clock = Arc::new(ManualClock::new(T0));
        let mut instances = Vec::new();
        for _ in 0..3 {
            let store: Arc<dyn Store> =
                Arc::new(RedisStore::connect(URL, &prefix.0).await.unwrap());
            instances.push(vault_on(store, long_cache(), clock.clone()));
        }
        let (a, _) = &instances[0];
        let orders: Vec<String> = (0..20).map(|i| format!("902-0000000-{i:07}")).collect();
        let mut keys = Vec::new();
        for (i, order) in orders.iter().enumerate() {
            let (v, _) = &instances[i % 3];
            v.cache_put("A1", order, &format!("addr-{order}"), PII.as_bytes())
                .await
                .unwrap();
            v.link_pseudonym("A1", order, "psn_jane_redis", None)
                .await
                .unwrap();
            v.delivered("A1", order, T0, DeliverySource::Event)
                .await
                .unwrap();
            keys.push(a.order_key("A1", order).await.unwrap());
        }
        let survivor = "902-9999999-0000000";
        a.order_key("A1", survivor).await.unwrap();
        a.observe("A1", &estimate(survivor, T0 + 10 * DAY))
            .await
            .unwrap();
        a.cache_put("A1", survivor, "s", PII.as_bytes())
            .await
            .unwrap();
        let store = &instances[1].0.inner.store;
        let wrapped = store
            .order_key("A1", &orders[0])
            .await
            .unwrap()
            .unwrap()
            .wrapped;
        let sealed = store.cached_by_order("A1", &orders[0]).await.unwrap()[0]
            .sealed
            .clone();
        assert_eq!(values_containing(&prefix.0, wrapped.as_bytes()).await, 1);
        assert_eq!(values_containing(&prefix.0, &sealed[..24]).await, 1);
        assert_eq!(count_keys(&format!("{}vault:cache:*", prefix.0)).await, 21);
        assert_eq!(
            values_containing(&prefix.0, b"Jane Example").await,
            0,
            "only ciphertext"
        );
        assert_eq!(a.report().await.unwrap().overdue, 0);

        clock.set(T0 + 30 * DAY);
        assert_eq!(a.report().await.unwrap().overdue, 20);
        let passes: Vec<_> = instances
            .iter()
            .map(|(v, _)| {
                let v = v.clone();
                let now = clock.now();
                tokio::spawn(async move { v.run_due(now).await.unwrap().len() })
            })
            .collect();
        let mut total = 0;
        for p in passes {
            total += p.await.unwrap();
        }
        assert_eq!(total, 20, "each order shredded once across the instances");
        let events: usize = instances.iter().map(|(_, e)| deleted(e).len()).sum();
        assert_eq!(events, 20, "and audited once");
        for k in &keys {
            assert!(a.key_by_id(k.id()).await.unwrap().is_none());
        }
        assert_eq!(values_containing(&prefix.0, wrapped.as_bytes()).await, 0);
        assert_eq!(values_containing(&prefix.0, &sealed[..24]).await, 0);
        assert_eq!(
            count_keys(&format!("{}vault:cache:*", prefix.0)).await,
            1,
            "the survivor"
        );
        assert_eq!(count_keys(&format!("{}vault:key:*", prefix.0)).await, 1);
        assert_eq!(values_containing(&prefix.0, b"psn_jane_redis").await, 0);
        let report = a.report().await.unwrap();
        assert_eq!(
            (
                report.deleted,
                report.active,
                report.overdue,
                report.live_keys
            ),
            (20, 1, 0, 1)
        );
        assert!(a.cache_get("A1", "s").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn an_order_seen_again_past_its_due_date_wakes_the_scheduler_and_a_new_one_does_not() {
    let f = embedded(RetentionConfig::defaults());
    let woken = |v: &Vault| {
        let v = v.clone();
        async move {
            tokio::time::timeout(Duration::from_millis(50), v.changed())
                .await
                .is_ok()
        }
    };
    f.vault.order_key("A1", O1).await.unwrap();
    assert!(
        !woken(&f.vault).await,
        "due in 30 days: nothing to wake for"
    );

    // Delivered 40 days ago: the delivery wakes the scheduler, whose pass deletes the order.
    f.vault
        .delivered("A1", O1, T0 - 40 * DAY, DeliverySource::Ops)
        .await
        .unwrap();
    assert!(woken(&f.vault).await);
    assert_eq!(f.vault.run_due(T0).await.unwrap().len(), 1);

    // A tool fetches the order again: a fresh key, and the record is past due at once. The
    // scheduler is woken, so reports do not count it overdue until its next regular wake-up.
    f.clock.advance(Duration::from_secs(5));
    f.vault.order_key("A1", O1).await.unwrap();
    assert!(
        woken(&f.vault).await,
        "the re-seen order wakes the scheduler"
    );
    let stats = f
        .store
        .retention_stats(f.vault.now().unix_timestamp(), 0)
        .await
        .unwrap();
    assert_eq!((stats.active, stats.overdue), (1, 1));
    assert_eq!(f.vault.run_due(f.vault.now()).await.unwrap().len(), 1);
    let stats = f
        .store
        .retention_stats(f.vault.now().unix_timestamp(), 0)
        .await
        .unwrap();
    assert_eq!((stats.deleted, stats.overdue, stats.keys), (1, 0, 0));
}

/// A link this vault wrote is not written again while the order keeps its key, and is written
/// again once another process (another vault on the same store) shredded the order.
#[tokio::test]
async fn a_pseudonym_link_is_written_again_after_another_process_shredded_the_order() {
    let f = embedded(RetentionConfig::defaults());
    let (other, _) = vault_on(
        f.store.clone(),
        RetentionConfig::defaults(),
        f.clock.clone(),
    );
    let key = f.vault.order_key("A1", O1).await.unwrap();
    f.vault
        .link_pseudonym("A1", O1, "psn_jane", Some(&key))
        .await
        .unwrap();
    assert_eq!(
        f.store.orders_by_pseudonym("psn_jane").await.unwrap(),
        [("A1".to_string(), O1.to_string())]
    );
    let erased = other
        .erase(Some("A1"), O1, EraseReason::Operator, "sec")
        .await
        .unwrap();
    assert_eq!(erased.len(), 1);
    assert!(f
        .store
        .orders_by_pseudonym("psn_jane")
        .await
        .unwrap()
        .is_empty());
    // The buyer's order is fetched again: a new key, and the link is back.
    f.vault
        .link_pseudonym("A1", O1, "psn_jane", None)
        .await
        .unwrap();
    assert_eq!(
        f.store.orders_by_pseudonym("psn_jane").await.unwrap(),
        [("A1".to_string(), O1.to_string())]
    );
}
