//! The vault's tables in the PostgreSQL store: `order_keys`, `retention`, `pii_cache` and
//! `pseudonyms` (schema in `postgres::MIGRATIONS`, the same layout as the embedded store's).
//!
//! Every conditional write is one transaction. A record's version is checked under the row's
//! lock (`UPDATE ... WHERE version = $n`, or `SELECT ... FOR UPDATE` in `shred_order`), so N
//! instances racing on one order have one winner; the others see a stale version.
//!
//! Deleted rows stay in the table's pages until VACUUM reclaims them, and a plain VACUUM may
//! leave the bytes of a dead tuple in the page's free space. [`PostgresStore::v_compact`] (run
//! after every deletion pass) therefore rewrites the tables that held keys, cached PII and
//! pseudonyms (`VACUUM FULL`): the old files are truncated and unlinked, the new ones hold live
//! rows only.

use tokio_postgres::Row;

use super::{failed, ImportKind, PostgresStore};
use crate::store::retention::{record_from, record_json};
use crate::store::{
    CacheEntry, KeyCreation, OrderKey, RetentionRecord, RetentionState, RetentionStats, Shredded,
    StoreError,
};

/// The tables a deletion touches, rewritten by [`PostgresStore::v_compact`].
pub(crate) const SHREDDED_TABLES: &[&str] = &["order_keys", "pii_cache", "pseudonyms"];

const KEY_COLUMNS: &str = "key_id, seller, order_id, wrapped, created_at";
const CACHE_COLUMNS: &str = "seller, cache_id, order_id, key_id, sealed, stored_at, expires_at";

// === impl PostgresStore ===

impl PostgresStore {
    pub(super) async fn v_order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        Ok(self
            .query_opt(
                "order_key",
                &format!(
                    "SELECT {KEY_COLUMNS} FROM order_keys WHERE seller = $1 AND order_id = $2"
                ),
                &[&seller, &order_id],
            )
            .await?
            .map(|r| key_row(&r)))
    }

    pub(super) async fn v_order_key_by_id(
        &self,
        key_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        Ok(self
            .query_opt(
                "order_key_by_id",
                &format!("SELECT {KEY_COLUMNS} FROM order_keys WHERE key_id = $1"),
                &[&key_id],
            )
            .await?
            .map(|r| key_row(&r)))
    }

    pub(super) async fn v_create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        const OP: &str = "create_order_key";
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        // The key first: a racing creator blocks on the unique (seller, order) until the winner
        // commits, then inserts nothing and reads the winner's key.
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO order_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &key.key_id,
                    &key.seller,
                    &key.order_id,
                    &key.wrapped,
                    &key.created_at,
                ],
            )
            .await
            .map_err(failed(OP))?;
        if inserted == 0 {
            let existing = tx
                .query_opt(
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM order_keys WHERE seller = $1 AND order_id = $2"
                    ),
                    &[&key.seller, &key.order_id],
                )
                .await
                .map_err(failed(OP))?;
            return Ok(match existing {
                Some(r) => KeyCreation::Exists(key_row(&r)),
                // The conflict was on the key id (a collision) or the winner was shredded in
                // between: the caller reads again.
                None => KeyCreation::Conflict,
            });
        }
        if !write_record(&tx, record).await? {
            // Dropping the transaction rolls the key back.
            return Ok(KeyCreation::Conflict);
        }
        tx.commit().await.map_err(failed(OP))?;
        Ok(KeyCreation::Created)
    }

    pub(super) async fn v_retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        self.query_opt(
            "retention",
            "SELECT record FROM retention WHERE seller = $1 AND order_id = $2",
            &[&seller, &order_id],
        )
        .await?
        .map(|r| record_from(r.get(0)))
        .transpose()
    }

    pub(super) async fn v_retention_by_order(
        &self,
        order_id: &str,
    ) -> Result<Vec<RetentionRecord>, StoreError> {
        records(
            self.query(
                "retention_by_order",
                "SELECT record FROM retention WHERE order_id = $1 ORDER BY seller COLLATE \"C\"",
                &[&order_id],
            )
            .await?,
        )
    }

    pub(super) async fn v_put_retention(
        &self,
        record: &RetentionRecord,
    ) -> Result<bool, StoreError> {
        const OP: &str = "put_retention";
        if record.state == RetentionState::Deleted {
            return Err(StoreError::Corrupt {
                what: "retention record",
                detail: "put_retention cannot delete; use shred_order".into(),
            });
        }
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        let written = write_record(&tx, record).await?;
        tx.commit().await.map_err(failed(OP))?;
        Ok(written)
    }

    pub(super) async fn v_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<RetentionRecord>, StoreError> {
        // Matches the partial index `retention_due`.
        records(
            self.query(
                "due",
                "SELECT record FROM retention WHERE state <> 'deleted' AND purge_at <= $1
                 ORDER BY purge_at, seller, order_id LIMIT $2",
                &[&now, &(limit as i64)],
            )
            .await?,
        )
    }

    pub(super) async fn v_shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        const OP: &str = "shred_order";
        let (seller, order) = (&tombstone.seller, &tombstone.order_id);
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        // The row lock makes a racing shred wait, then see the new version and do nothing.
        let version: Option<i64> = tx
            .query_opt(
                "SELECT version FROM retention WHERE seller = $1 AND order_id = $2 FOR UPDATE",
                &[seller, order],
            )
            .await
            .map_err(failed(OP))?
            .map(|r| r.get(0));
        if version.unwrap_or(0) as u64 != tombstone.version {
            return Ok(None);
        }
        let key_id: Option<String> = tx
            .query_opt(
                "DELETE FROM order_keys WHERE seller = $1 AND order_id = $2 RETURNING key_id",
                &[seller, order],
            )
            .await
            .map_err(failed(OP))?
            .map(|r| r.get(0));
        let cache_entries = tx
            .execute(
                "DELETE FROM pii_cache WHERE seller = $1 AND order_id = $2",
                &[seller, order],
            )
            .await
            .map_err(failed(OP))?;
        let pseudonyms = tx
            .execute(
                "DELETE FROM pseudonyms WHERE seller = $1 AND order_id = $2",
                &[seller, order],
            )
            .await
            .map_err(failed(OP))?;
        let mut stored = tombstone.clone();
        stored.version += 1;
        stored.state = RetentionState::Deleted;
        tx.execute(
            "INSERT INTO retention (seller, order_id, version, state, purge_at, record)
             VALUES ($1, $2, $3, 'deleted', $4, $5)
             ON CONFLICT (seller, order_id) DO UPDATE SET version = excluded.version,
                 state = excluded.state, purge_at = excluded.purge_at, record = excluded.record",
            &[
                seller,
                order,
                &(stored.version as i64),
                &stored.purge_at(),
                &record_json(&stored)?,
            ],
        )
        .await
        .map_err(failed(OP))?;
        tx.commit().await.map_err(failed(OP))?;
        Ok(Some(Shredded {
            key_id,
            cache_entries,
            pseudonyms,
        }))
    }

    pub(super) async fn v_retention_stats(
        &self,
        now: i64,
        next: usize,
    ) -> Result<RetentionStats, StoreError> {
        const OP: &str = "retention_stats";
        let mut conn = self.conn(OP).await?;
        // One snapshot for every count: a pass committing meanwhile is counted whole or not.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(failed(OP))?;
        let mut stats = RetentionStats::default();
        for row in tx
            .query("SELECT state, COUNT(*) FROM retention GROUP BY state", &[])
            .await
            .map_err(failed(OP))?
        {
            stats.set_state_count(row.get::<_, &str>(0), row.get::<_, i64>(1) as u64)?;
        }
        stats.overdue = tx
            .query_one(
                "SELECT COUNT(*) FROM retention WHERE state <> 'deleted' AND purge_at <= $1",
                &[&now],
            )
            .await
            .map_err(failed(OP))?
            .get::<_, i64>(0) as u64;
        stats.keys = tx
            .query_one("SELECT COUNT(*) FROM order_keys", &[])
            .await
            .map_err(failed(OP))?
            .get::<_, i64>(0) as u64;
        stats.next = records(
            tx.query(
                "SELECT record FROM retention WHERE state <> 'deleted'
                 ORDER BY purge_at, seller, order_id LIMIT $1",
                &[&(next as i64)],
            )
            .await
            .map_err(failed(OP))?,
        )?;
        tx.commit().await.map_err(failed(OP))?;
        Ok(stats)
    }

    pub(super) async fn v_put_cached(&self, e: &CacheEntry) -> Result<bool, StoreError> {
        // One statement: the row is written only while the order's key is `key_id`; the key's
        // row is locked (FOR SHARE) so a shred cannot commit between the check and the write.
        let stored = self
            .execute(
                "put_cached",
                &format!(
                    "WITH live AS (
                         SELECT 1 FROM order_keys
                         WHERE seller = $1 AND order_id = $3 AND key_id = $4 FOR SHARE
                     )
                     INSERT INTO pii_cache ({CACHE_COLUMNS})
                     SELECT $1, $2, $3, $4, $5, $6, $7 FROM live
                     ON CONFLICT (seller, cache_id) DO UPDATE SET order_id = excluded.order_id,
                         key_id = excluded.key_id, sealed = excluded.sealed,
                         stored_at = excluded.stored_at, expires_at = excluded.expires_at"
                ),
                &[
                    &e.seller,
                    &e.cache_id,
                    &e.order_id,
                    &e.key_id,
                    &e.sealed,
                    &e.stored_at,
                    &e.expires_at,
                ],
            )
            .await?;
        Ok(stored == 1)
    }

    pub(super) async fn v_cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        Ok(self
            .query_opt(
                "cached",
                &format!(
                    "SELECT {CACHE_COLUMNS} FROM pii_cache
                     WHERE seller = $1 AND cache_id = $2 AND expires_at > $3"
                ),
                &[&seller, &cache_id, &now],
            )
            .await?
            .map(|r| cache_row(&r)))
    }

    pub(super) async fn v_cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        Ok(self
            .query(
                "cached_by_order",
                &format!(
                    "SELECT {CACHE_COLUMNS} FROM pii_cache WHERE seller = $1 AND order_id = $2
                     ORDER BY cache_id COLLATE \"C\""
                ),
                &[&seller, &order_id],
            )
            .await?
            .iter()
            .map(cache_row)
            .collect())
    }

    pub(super) async fn v_link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        // Linked only while the order has a live key (locked against a concurrent shred).
        let live = self
            .query_opt(
                "link_pseudonym",
                "WITH live AS (
                     SELECT 1 FROM order_keys WHERE seller = $2 AND order_id = $3 FOR SHARE
                 ), linked AS (
                     INSERT INTO pseudonyms (pseudonym, seller, order_id)
                     SELECT $1, $2, $3 FROM live ON CONFLICT DO NOTHING
                 )
                 SELECT 1 FROM live",
                &[&pseudonym, &seller, &order_id],
            )
            .await?;
        Ok(live.is_some())
    }

    pub(super) async fn v_orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .query(
                "orders_by_pseudonym",
                "SELECT seller, order_id FROM pseudonyms WHERE pseudonym = $1
                 ORDER BY seller COLLATE \"C\", order_id COLLATE \"C\"",
                &[&pseudonym],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub(super) async fn v_pseudonyms_of(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "pseudonyms_of",
                "SELECT pseudonym FROM pseudonyms WHERE seller = $1 AND order_id = $2
                 ORDER BY pseudonym COLLATE \"C\"",
                &[&seller, &order_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Rewrites the tables a deletion touches, so no dead tuple of a destroyed key, a cached
    /// response or a pseudonym link stays in the table's files (see the module docs).
    pub(super) async fn v_compact(&self) -> Result<(), StoreError> {
        const OP: &str = "compact";
        let conn = self.conn(OP).await?;
        conn.batch_execute(&format!("VACUUM FULL {}", SHREDDED_TABLES.join(", ")))
            .await
            .map_err(failed(OP))
    }
}

/// The vault's part of [`PostgresStore::import`]: keys, records (versions and states as they
/// are), the sealed cache and pseudonym links.
pub(super) async fn import_vault(
    tx: &deadpool_postgres::Transaction<'_>,
    dump: &crate::store::copy::Dump,
    report: &mut crate::store::copy::CopyReport,
) -> Result<(), StoreError> {
    let text = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<String>>();

    let k = &dump.order_keys;
    let ids = text(k.iter().map(|x| x.key_id.as_str()).collect());
    ImportKind {
        name: "order_keys",
        rows: k.len(),
        insert: &format!(
            "INSERT INTO order_keys ({KEY_COLUMNS}) SELECT * FROM unnest($1::text[],
                 $2::text[], $3::text[], $4::text[], $5::int8[]) ON CONFLICT DO NOTHING"
        ),
        found_in: "order_keys WHERE key_id = ANY($1)",
    }
    .run(
        tx,
        report,
        &[
            &ids,
            &text(k.iter().map(|x| x.seller.as_str()).collect()),
            &text(k.iter().map(|x| x.order_id.as_str()).collect()),
            &text(k.iter().map(|x| x.wrapped.as_str()).collect()),
            &k.iter().map(|x| x.created_at).collect::<Vec<_>>(),
        ],
        &[&ids],
    )
    .await?;

    let r = &dump.retention;
    let sellers = text(r.iter().map(|x| x.seller.as_str()).collect());
    let orders = text(r.iter().map(|x| x.order_id.as_str()).collect());
    let json = r.iter().map(record_json).collect::<Result<Vec<_>, _>>()?;
    ImportKind {
        name: "retention",
        rows: r.len(),
        insert: "INSERT INTO retention (seller, order_id, version, state, purge_at, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[],
                 $6::text[]) ON CONFLICT DO NOTHING",
        found_in: "retention WHERE (seller, order_id) IN
             (SELECT * FROM unnest($1::text[], $2::text[]))",
    }
    .run(
        tx,
        report,
        &[
            &sellers,
            &orders,
            &r.iter().map(|x| x.version as i64).collect::<Vec<_>>(),
            &text(r.iter().map(|x| x.state.as_str()).collect()),
            &r.iter().map(RetentionRecord::purge_at).collect::<Vec<_>>(),
            &json,
        ],
        &[&sellers, &orders],
    )
    .await?;

    let c = &dump.cache;
    let sellers = text(c.iter().map(|x| x.seller.as_str()).collect());
    let ids = text(c.iter().map(|x| x.cache_id.as_str()).collect());
    ImportKind {
        name: "pii_cache",
        rows: c.len(),
        insert: &format!(
            "INSERT INTO pii_cache ({CACHE_COLUMNS}) SELECT * FROM unnest($1::text[],
                 $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::int8[])
             ON CONFLICT DO NOTHING"
        ),
        found_in: "pii_cache WHERE (seller, cache_id) IN
             (SELECT * FROM unnest($1::text[], $2::text[]))",
    }
    .run(
        tx,
        report,
        &[
            &sellers,
            &ids,
            &text(c.iter().map(|x| x.order_id.as_str()).collect()),
            &text(c.iter().map(|x| x.key_id.as_str()).collect()),
            &c.iter().map(|x| x.sealed.clone()).collect::<Vec<_>>(),
            &c.iter().map(|x| x.stored_at).collect::<Vec<_>>(),
            &c.iter().map(|x| x.expires_at).collect::<Vec<_>>(),
        ],
        &[&sellers, &ids],
    )
    .await?;

    let p = &dump.pseudonyms;
    let psns = text(p.iter().map(|x| x.0.as_str()).collect());
    let sellers = text(p.iter().map(|x| x.1.as_str()).collect());
    let orders = text(p.iter().map(|x| x.2.as_str()).collect());
    ImportKind {
        name: "pseudonyms",
        rows: p.len(),
        insert: "INSERT INTO pseudonyms (pseudonym, seller, order_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        found_in: "pseudonyms WHERE (pseudonym, seller, order_id) IN
             (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
    }
    .run(
        tx,
        report,
        &[&psns, &sellers, &orders],
        &[&psns, &sellers, &orders],
    )
    .await?;
    Ok(())
}

/// Writes `record` if the stored version is `record.version` (0: no row), storing version + 1.
async fn write_record(
    tx: &deadpool_postgres::Transaction<'_>,
    record: &RetentionRecord,
) -> Result<bool, StoreError> {
    const OP: &str = "write_retention";
    let mut stored = record.clone();
    stored.version = record.version + 1;
    let json = record_json(&stored)?;
    let changed = if record.version == 0 {
        tx.execute(
            "INSERT INTO retention (seller, order_id, version, state, purge_at, record)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &stored.seller,
                &stored.order_id,
                &(stored.version as i64),
                &stored.state.as_str(),
                &stored.purge_at(),
                &json,
            ],
        )
        .await
    } else {
        tx.execute(
            "UPDATE retention SET version = $3, state = $4, purge_at = $5, record = $6
             WHERE seller = $1 AND order_id = $2 AND version = $7",
            &[
                &stored.seller,
                &stored.order_id,
                &(stored.version as i64),
                &stored.state.as_str(),
                &stored.purge_at(),
                &json,
                &(record.version as i64),
            ],
        )
        .await
    }
    .map_err(failed(OP))?;
    Ok(changed == 1)
}

fn records(rows: Vec<Row>) -> Result<Vec<RetentionRecord>, StoreError> {
    rows.iter().map(|r| record_from(r.get(0))).collect()
}

fn key_row(r: &Row) -> OrderKey {
    OrderKey {
        key_id: r.get(0),
        seller: r.get(1),
        order_id: r.get(2),
        wrapped: r.get(3),
        created_at: r.get(4),
    }
}

fn cache_row(r: &Row) -> CacheEntry {
    CacheEntry {
        seller: r.get(0),
        cache_id: r.get(1),
        order_id: r.get(2),
        key_id: r.get(3),
        sealed: r.get(4),
        stored_at: r.get(5),
        expires_at: r.get(6),
    }
}
