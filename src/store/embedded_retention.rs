//! The vault's tables in the embedded store: `order_keys`, `retention`, `pii_cache` and
//! `pseudonyms` (schema in `embedded::MIGRATIONS`).
//!
//! `secure_delete` zeroes deleted rows in the database file; [`compact`] then truncates the
//! WAL, whose older page images would otherwise still hold the deleted bytes.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::retention::{record_from, record_json};
use crate::store::{
    CacheEntry, KeyCreation, OrderKey, RetentionRecord, RetentionState, RetentionStats, Shredded,
    StoreError,
};

/// How often a busy WAL checkpoint is retried, and the pause between tries.
const CHECKPOINT_TRIES: u32 = 100;
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) fn order_key(
    c: &Connection,
    seller: &str,
    order_id: &str,
) -> Result<Option<OrderKey>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT key_id, seller, order_id, wrapped, created_at FROM order_keys
         WHERE seller = ?1 AND order_id = ?2",
    )?;
    Ok(stmt
        .query_row(params![seller, order_id], key_row)
        .optional()?)
}

pub(super) fn order_key_by_id(
    c: &Connection,
    key_id: &str,
) -> Result<Option<OrderKey>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT key_id, seller, order_id, wrapped, created_at FROM order_keys WHERE key_id = ?1",
    )?;
    Ok(stmt.query_row([key_id], key_row).optional()?)
}

pub(super) fn create_order_key(
    c: &mut Connection,
    key: &OrderKey,
    record: &RetentionRecord,
) -> Result<KeyCreation, StoreError> {
    let tx = c.transaction()?;
    if let Some(existing) = order_key(&tx, &key.seller, &key.order_id)? {
        return Ok(KeyCreation::Exists(existing));
    }
    if !write_record(&tx, record)? {
        return Ok(KeyCreation::Conflict);
    }
    tx.execute(
        "INSERT INTO order_keys (key_id, seller, order_id, wrapped, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            key.key_id,
            key.seller,
            key.order_id,
            key.wrapped,
            key.created_at
        ],
    )?;
    tx.commit()?;
    Ok(KeyCreation::Created)
}

pub(super) fn retention(
    c: &Connection,
    seller: &str,
    order_id: &str,
) -> Result<Option<RetentionRecord>, StoreError> {
    let mut stmt =
        c.prepare_cached("SELECT record FROM retention WHERE seller = ?1 AND order_id = ?2")?;
    stmt.query_row(params![seller, order_id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|j| record_from(&j))
        .transpose()
}

pub(super) fn retention_by_order(
    c: &Connection,
    order_id: &str,
) -> Result<Vec<RetentionRecord>, StoreError> {
    let mut stmt =
        c.prepare_cached("SELECT record FROM retention WHERE order_id = ?1 ORDER BY seller")?;
    let rows = stmt.query_map([order_id], |r| r.get::<_, String>(0))?;
    rows.map(|j| record_from(&j?)).collect()
}

pub(super) fn put_retention(
    c: &mut Connection,
    record: &RetentionRecord,
) -> Result<bool, StoreError> {
    if record.state == RetentionState::Deleted {
        return Err(deleted_by_put());
    }
    let tx = c.transaction()?;
    let written = write_record(&tx, record)?;
    tx.commit()?;
    Ok(written)
}

pub(super) fn due(
    c: &Connection,
    now: i64,
    limit: usize,
) -> Result<Vec<RetentionRecord>, StoreError> {
    // Matches the partial index `retention_due`.
    let mut stmt = c.prepare_cached(
        "SELECT record FROM retention WHERE state <> 'deleted' AND purge_at <= ?1
         ORDER BY purge_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit as i64], |r| r.get::<_, String>(0))?;
    rows.map(|j| record_from(&j?)).collect()
}

pub(super) fn shred_order(
    c: &mut Connection,
    tombstone: &RetentionRecord,
) -> Result<Option<Shredded>, StoreError> {
    let tx = c.transaction()?;
    let (seller, order) = (&tombstone.seller, &tombstone.order_id);
    if stored_version(&tx, seller, order)? != tombstone.version {
        return Ok(None);
    }
    let key_id: Option<String> = tx
        .query_row(
            "DELETE FROM order_keys WHERE seller = ?1 AND order_id = ?2 RETURNING key_id",
            params![seller, order],
            |r| r.get(0),
        )
        .optional()?;
    let cache_entries = tx.execute(
        "DELETE FROM pii_cache WHERE seller = ?1 AND order_id = ?2",
        params![seller, order],
    )? as u64;
    let pseudonyms = tx.execute(
        "DELETE FROM pseudonyms WHERE seller = ?1 AND order_id = ?2",
        params![seller, order],
    )? as u64;
    let mut stored = tombstone.clone();
    stored.version += 1;
    stored.state = RetentionState::Deleted;
    tx.execute(
        "UPDATE retention SET version = ?3, state = 'deleted', purge_at = ?4, record = ?5
         WHERE seller = ?1 AND order_id = ?2",
        params![
            seller,
            order,
            stored.version as i64,
            stored.purge_at(),
            record_json(&stored)?
        ],
    )?;
    tx.commit()?;
    Ok(Some(Shredded {
        key_id,
        cache_entries,
        pseudonyms,
    }))
}

pub(super) fn retention_stats(
    c: &Connection,
    now: i64,
    next: usize,
) -> Result<RetentionStats, StoreError> {
    let mut stats = RetentionStats::default();
    let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM retention GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (state, n) = row?;
        stats.set_state_count(&state, n as u64)?;
    }
    stats.overdue = c.query_row(
        "SELECT COUNT(*) FROM retention WHERE state <> 'deleted' AND purge_at <= ?1",
        [now],
        |r| r.get::<_, i64>(0),
    )? as u64;
    stats.keys = c.query_row("SELECT COUNT(*) FROM order_keys", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    let mut stmt = c.prepare_cached(
        "SELECT record FROM retention WHERE state <> 'deleted' ORDER BY purge_at LIMIT ?1",
    )?;
    let rows = stmt.query_map([next as i64], |r| r.get::<_, String>(0))?;
    stats.next = rows
        .map(|j| record_from(&j?))
        .collect::<Result<_, StoreError>>()?;
    Ok(stats)
}

pub(super) fn put_cached(c: &mut Connection, e: &CacheEntry) -> Result<bool, StoreError> {
    let tx = c.transaction()?;
    let live: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM order_keys WHERE seller = ?1 AND order_id = ?2 AND key_id = ?3",
            params![e.seller, e.order_id, e.key_id],
            |r| r.get(0),
        )
        .optional()?;
    if live.is_none() {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO pii_cache (seller, cache_id, order_id, key_id, sealed, stored_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(seller, cache_id) DO UPDATE SET order_id = excluded.order_id,
             key_id = excluded.key_id, sealed = excluded.sealed,
             stored_at = excluded.stored_at, expires_at = excluded.expires_at",
        params![
            e.seller,
            e.cache_id,
            e.order_id,
            e.key_id,
            e.sealed,
            e.stored_at,
            e.expires_at
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

pub(super) fn cached(
    c: &Connection,
    seller: &str,
    cache_id: &str,
    now: i64,
) -> Result<Option<CacheEntry>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seller, cache_id, order_id, key_id, sealed, stored_at, expires_at FROM pii_cache
         WHERE seller = ?1 AND cache_id = ?2 AND expires_at > ?3",
    )?;
    Ok(stmt
        .query_row(params![seller, cache_id, now], cache_row)
        .optional()?)
}

pub(super) fn cached_by_order(
    c: &Connection,
    seller: &str,
    order_id: &str,
) -> Result<Vec<CacheEntry>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seller, cache_id, order_id, key_id, sealed, stored_at, expires_at FROM pii_cache
         WHERE seller = ?1 AND order_id = ?2 ORDER BY cache_id",
    )?;
    let rows = stmt.query_map(params![seller, order_id], cache_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn purge_expired_cache(c: &mut Connection, now: i64) -> Result<u64, StoreError> {
    Ok(c.execute("DELETE FROM pii_cache WHERE expires_at <= ?1", [now])? as u64)
}

pub(super) fn link_pseudonym(
    c: &mut Connection,
    seller: &str,
    order_id: &str,
    pseudonym: &str,
) -> Result<bool, StoreError> {
    let tx = c.transaction()?;
    if order_key(&tx, seller, order_id)?.is_none() {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO pseudonyms (pseudonym, seller, order_id) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![pseudonym, seller, order_id],
    )?;
    tx.commit()?;
    Ok(true)
}

pub(super) fn orders_by_pseudonym(
    c: &Connection,
    pseudonym: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seller, order_id FROM pseudonyms WHERE pseudonym = ?1 ORDER BY seller, order_id",
    )?;
    let rows = stmt.query_map([pseudonym], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn pseudonyms_of(
    c: &Connection,
    seller: &str,
    order_id: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT pseudonym FROM pseudonyms WHERE seller = ?1 AND order_id = ?2 ORDER BY pseudonym",
    )?;
    let rows = stmt.query_map(params![seller, order_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The vault's tables, whole, for `spgate store copy`.
pub(super) fn dump_vault(
    c: &Connection,
    dump: &mut crate::store::copy::Dump,
) -> Result<(), StoreError> {
    let mut stmt = c.prepare(
        "SELECT key_id, seller, order_id, wrapped, created_at FROM order_keys ORDER BY key_id",
    )?;
    dump.order_keys = stmt.query_map([], key_row)?.collect::<Result<_, _>>()?;
    let mut stmt = c.prepare("SELECT record FROM retention ORDER BY seller, order_id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    dump.retention = rows
        .map(|j| record_from(&j?))
        .collect::<Result<_, StoreError>>()?;
    let mut stmt = c.prepare(
        "SELECT seller, cache_id, order_id, key_id, sealed, stored_at, expires_at FROM pii_cache
         ORDER BY seller, cache_id",
    )?;
    dump.cache = stmt.query_map([], cache_row)?.collect::<Result<_, _>>()?;
    let mut stmt = c.prepare(
        "SELECT pseudonym, seller, order_id FROM pseudonyms ORDER BY pseudonym, seller, order_id",
    )?;
    dump.pseudonyms = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(())
}

/// Checkpoints the WAL into the database file and truncates it to zero bytes, retrying while a
/// reader (possibly another process) still needs older frames.
pub(super) fn compact(c: &mut Connection) -> Result<(), StoreError> {
    for _ in 0..CHECKPOINT_TRIES {
        let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(CHECKPOINT_PAUSE);
    }
    Err(StoreError::Task(
        "the WAL checkpoint stayed busy: a reader holds old frames".into(),
    ))
}

/// The vault's schema (one migration).
pub(super) const MIGRATION: &str = "
    CREATE TABLE order_keys (
        key_id TEXT PRIMARY KEY,
        seller TEXT NOT NULL,
        order_id TEXT NOT NULL,
        wrapped TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (seller, order_id)
    );
    CREATE TABLE retention (
        seller TEXT NOT NULL,
        order_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        purge_at INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (seller, order_id)
    );
    CREATE INDEX retention_due ON retention (purge_at) WHERE state <> 'deleted';
    CREATE INDEX retention_order ON retention (order_id);
    CREATE TABLE pii_cache (
        seller TEXT NOT NULL,
        cache_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BLOB NOT NULL,
        stored_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (seller, cache_id)
    );
    CREATE INDEX pii_cache_order ON pii_cache (seller, order_id);
    CREATE INDEX pii_cache_expiry ON pii_cache (expires_at);
    CREATE TABLE pseudonyms (
        pseudonym TEXT NOT NULL,
        seller TEXT NOT NULL,
        order_id TEXT NOT NULL,
        PRIMARY KEY (pseudonym, seller, order_id)
    );
    CREATE INDEX pseudonyms_order ON pseudonyms (seller, order_id);
";

/// Writes `record` if the stored version is `record.version` (0: no row), storing version + 1.
fn write_record(tx: &Connection, record: &RetentionRecord) -> Result<bool, StoreError> {
    let mut stored = record.clone();
    stored.version = record.version + 1;
    let json = record_json(&stored)?;
    let changed = if record.version == 0 {
        tx.execute(
            "INSERT INTO retention (seller, order_id, version, state, purge_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            params![
                stored.seller,
                stored.order_id,
                stored.version as i64,
                stored.state.as_str(),
                stored.purge_at(),
                json
            ],
        )?
    } else {
        tx.execute(
            "UPDATE retention SET version = ?3, state = ?4, purge_at = ?5, record = ?6
             WHERE seller = ?1 AND order_id = ?2 AND version = ?7",
            params![
                stored.seller,
                stored.order_id,
                stored.version as i64,
                stored.state.as_str(),
                stored.purge_at(),
                json,
                record.version as i64
            ],
        )?
    };
    Ok(changed == 1)
}

fn stored_version(c: &Connection, seller: &str, order_id: &str) -> Result<u64, StoreError> {
    Ok(c.query_row(
        "SELECT version FROM retention WHERE seller = ?1 AND order_id = ?2",
        params![seller, order_id],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

pub(super) fn deleted_by_put() -> StoreError {
    StoreError::Corrupt {
        what: "retention record",
        detail: "put_retention cannot delete; use shred_order".into(),
    }
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrderKey> {
    Ok(OrderKey {
        key_id: r.get(0)?,
        seller: r.get(1)?,
        order_id: r.get(2)?,
        wrapped: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn cache_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
    Ok(CacheEntry {
        seller: r.get(0)?,
        cache_id: r.get(1)?,
        order_id: r.get(2)?,
        key_id: r.get(3)?,
        sealed: r.get(4)?,
        stored_at: r.get(5)?,
        expires_at: r.get(6)?,
    })
}
