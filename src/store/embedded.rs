//! The embedded backend: SQLite in WAL mode with `secure_delete`, under the data directory.
//!
//! Reads run on the calling task: a primary-key lookup on a warm page cache takes microseconds,
//! less than handing it to a blocking thread would. Writes, which may wait for fsync, run on the
//! blocking pool. WAL lets readers proceed while a write commits, so readers and the writer hold
//! separate connections. Another process (the `spgate clients` CLI) may write the same file; its
//! commits are visible to the next read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    CacheEntry, ClientRecord, DropInRecord, GatewayToken, Invite, KeyCreation, OAuthState,
    OrderKey, RetentionRecord, RetentionStats, SellerRecord, SellerStatus, Shredded, Store,
    StoreError,
};

#[path = "embedded_retention.rs"]
mod retention;

/// The database file name inside the data directory.
pub const DB_FILE: &str = "spgate.db";

/// Number of reader connections; a reader is picked by trying each in turn.
const READERS: usize = 4;

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// A connection that never writes, for `PRAGMA data_version` (it changes with every
    /// commit of any other connection or process), and the last access version it read with
    /// the data version at that moment.
    watcher: Mutex<(Connection, Option<(i64, u64)>)>,
    /// The one writer connection. A std Mutex: it is never held across an await.
    writer: Mutex<Connection>,
    /// Reader connections.
    readers: Vec<Mutex<Connection>>,
}

// === impl EmbeddedStore ===

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, which is created with mode 0700.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let writer = open_conn(&path)?;
        migrate(&writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_conn(&path)?));
        }
        let watcher = open_conn(&path)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                watcher: Mutex::new((watcher, None)),
                path,
                writer: Mutex::new(writer),
                readers,
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Everything durable, read in one transaction (one consistent snapshot), for
    /// `spgate store copy`.
    pub fn dump(&self) -> Result<super::copy::Dump, StoreError> {
        let mut conn = self
            .inner
            .writer
            .lock()
            .map_err(|_| StoreError::Task("writer lock poisoned".into()))?;
        let tx = conn.transaction()?;
        let mut dump = super::copy::Dump::default();
        let mut stmt = tx.prepare(
            "SELECT selling_partner_id, region, marketplaces, refresh_token, authorized_at,
                    reauthorize_by, status FROM sellers ORDER BY selling_partner_id",
        )?;
        dump.sellers = stmt
            .query_map([], seller_row)?
            .map(|r| r?)
            .collect::<Result<_, StoreError>>()?;
        let mut stmt = tx.prepare(
            "SELECT id, tool, role, sellers, key_hash, key_prefix, created_at, revoked_at
             FROM clients ORDER BY created_at, id",
        )?;
        dump.clients = stmt.query_map([], client_row)?.collect::<Result<_, _>>()?;
        let mut stmt = tx.prepare(
            "SELECT lwa_client_id, secret_hash, refresh_hash, client_id, seller FROM drop_in
             ORDER BY lwa_client_id",
        )?;
        dump.drop_ins = stmt
            .query_map([], |row| {
                Ok(DropInRecord {
                    lwa_client_id: row.get(0)?,
                    secret_hash: row.get(1)?,
                    refresh_hash: row.get(2)?,
                    client_id: row.get(3)?,
                    seller: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = tx.prepare(
            "SELECT id, region, created_at, expires_at, used_at, seller FROM invites ORDER BY id",
        )?;
        let invites = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<String>>(5)?,
            ))
        })?;
        for invite in invites {
            let (id, region, created_at, expires_at, used_at, seller) = invite?;
            dump.invites.push(Invite {
                id,
                region: region.parse().map_err(|detail| StoreError::Corrupt {
                    what: "invite",
                    detail,
                })?,
                created_at,
                expires_at,
                used_at,
                seller,
            });
        }
        drop(stmt);
        retention::dump_vault(&tx, &mut dump)?;
        Ok(dump)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for slot in &self.inner.readers {
            if let Ok(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let conn = self.inner.readers[0]
            .lock()
            .map_err(|_| StoreError::Task("reader lock poisoned".into()))?;
        f(&conn)
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Task("writer lock poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        let s = seller.clone();
        self.write(move |c| write_seller(c, &s, true)).await
    }

    async fn insert_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        let s = seller.clone();
        self.write(move |c| write_seller(c, &s, false)).await
    }

    async fn seller(&self, selling_partner_id: &str) -> Result<Option<SellerRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT selling_partner_id, region, marketplaces, refresh_token, authorized_at,
                        reauthorize_by, status FROM sellers WHERE selling_partner_id = ?1",
            )?;
            stmt.query_row([selling_partner_id], seller_row)
                .optional()?
                .transpose()
        })
    }

    async fn sellers(&self) -> Result<Vec<SellerRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT selling_partner_id, region, marketplaces, refresh_token, authorized_at,
                        reauthorize_by, status FROM sellers ORDER BY selling_partner_id",
            )?;
            let rows = stmt.query_map([], seller_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
    }

    async fn remove_seller(&self, selling_partner_id: &str) -> Result<bool, StoreError> {
        let id = selling_partner_id.to_string();
        self.write(move |c| {
            Ok(c.execute("DELETE FROM sellers WHERE selling_partner_id = ?1", [id])? > 0)
        })
        .await
    }

    async fn set_seller_status(
        &self,
        selling_partner_id: &str,
        status: SellerStatus,
    ) -> Result<bool, StoreError> {
        let id = selling_partner_id.to_string();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE sellers SET status = ?2 WHERE selling_partner_id = ?1",
                params![id, status.as_str()],
            )? > 0)
        })
        .await
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let cl = client.clone();
        self.write(move |c| {
            let res = c.execute(
                "INSERT INTO clients (id, tool, role, sellers, key_hash, key_prefix, created_at,
                     revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    cl.id,
                    cl.tool,
                    cl.role,
                    cl.sellers.join(","),
                    cl.key_hash,
                    cl.key_prefix,
                    cl.created_at,
                    cl.revoked_at
                ],
            );
            res.map(|_| ())
                .map_err(|e| conflict_or(e, &format!("client {}", cl.id)))
        })
        .await
    }

    async fn client_by_key_hash(&self, key_hash: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tool, role, sellers, key_hash, key_prefix, created_at, revoked_at
                 FROM clients WHERE key_hash = ?1",
            )?;
            Ok(stmt.query_row([key_hash], client_row).optional()?)
        })
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tool, role, sellers, key_hash, key_prefix, created_at, revoked_at
                 FROM clients ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], client_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tool, role, sellers, key_hash, key_prefix, created_at, revoked_at
                 FROM clients WHERE id = ?1",
            )?;
            Ok(stmt.query_row([id], client_row).optional()?)
        })
    }

    async fn insert_drop_in(&self, record: &DropInRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO drop_in (lwa_client_id, secret_hash, refresh_hash, client_id, seller)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.lwa_client_id,
                    r.secret_hash,
                    r.refresh_hash,
                    r.client_id,
                    r.seller
                ],
            )
            .map_err(|e| conflict_or(e, &format!("drop-in client {}", r.lwa_client_id)))?;
            Ok(())
        })
        .await
    }

    async fn drop_in(&self, lwa_client_id: &str) -> Result<Option<DropInRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT lwa_client_id, secret_hash, refresh_hash, client_id, seller
                 FROM drop_in WHERE lwa_client_id = ?1",
            )?;
            Ok(stmt
                .query_row([lwa_client_id], |row| {
                    Ok(DropInRecord {
                        lwa_client_id: row.get(0)?,
                        secret_hash: row.get(1)?,
                        refresh_hash: row.get(2)?,
                        client_id: row.get(3)?,
                        seller: row.get(4)?,
                    })
                })
                .optional()?)
        })
    }

    async fn insert_gateway_token(&self, token: &GatewayToken, now: i64) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM gateway_tokens WHERE expires_at <= ?1", [now])?;
            tx.execute(
                "INSERT INTO gateway_tokens (token_hash, client_id, seller, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![t.token_hash, t.client_id, t.seller, t.expires_at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn gateway_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<GatewayToken>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT token_hash, client_id, seller, expires_at FROM gateway_tokens
                 WHERE token_hash = ?1 AND expires_at > ?2",
            )?;
            Ok(stmt
                .query_row(params![token_hash, now], |row| {
                    Ok(GatewayToken {
                        token_hash: row.get(0)?,
                        client_id: row.get(1)?,
                        seller: row.get(2)?,
                        expires_at: row.get(3)?,
                    })
                })
                .optional()?)
        })
    }

    async fn insert_invite(&self, invite: &Invite) -> Result<(), StoreError> {
        let i = invite.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO invites (id, region, created_at, expires_at, used_at, seller)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    i.id,
                    i.region.as_str(),
                    i.created_at,
                    i.expires_at,
                    i.used_at,
                    i.seller
                ],
            )
            .map_err(|e| conflict_or(e, "invite"))?;
            Ok(())
        })
        .await
    }

    async fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                                "SELECT id, region, created_at, expires_at, used_at, seller FROM invites WHERE id = ?1",
            )?;
            let row = stmt
                .query_row([id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                                                row.get::<_, Option<i64>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                    ))
                })
                .optional()?;
                        row.map(|(id, region, created_at, expires_at, used_at, seller)| {
                Ok(Invite {
                    id,
                    region: region.parse().map_err(|detail| StoreError::Corrupt {
                        what: "invite",
                        detail,
                    })?,
                    created_at,
                                        expires_at,
                    used_at,
                    seller,
                })
            })
            .transpose()
        })
    }

    async fn use_invite(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE invites SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL",
                params![id, at],
            )? > 0)
        })
        .await
    }

    async fn insert_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let s = state.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO oauth_states (state_hash, invite_id, expires_at) VALUES (?1, ?2, ?3)",
                params![s.state_hash, s.invite_id, s.expires_at],
            )
            .map_err(|e| conflict_or(e, "oauth state"))?;
            Ok(())
        })
        .await
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError> {
        let hash = state_hash.to_string();
        self.write(move |c| {
            // Deleting is the single use: a replay finds nothing.
            let taken = c
                .query_row(
                    "DELETE FROM oauth_states WHERE state_hash = ?1
                     RETURNING state_hash, invite_id, expires_at",
                    [hash],
                    |row| {
                        Ok(OAuthState {
                            state_hash: row.get(0)?,
                            invite_id: row.get(1)?,
                            expires_at: row.get(2)?,
                        })
                    },
                )
                .optional()?;
            c.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
            Ok(taken.filter(|s| s.expires_at > now))
        })
        .await
    }

    async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE clients SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )? > 0)
        })
        .await
    }

    async fn order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        self.read(|c| retention::order_key(c, seller, order_id))
    }

    async fn order_key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, StoreError> {
        self.read(|c| retention::order_key_by_id(c, key_id))
    }

    async fn create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        let (k, r) = (key.clone(), record.clone());
        self.write(move |c| retention::create_order_key(c, &k, &r))
            .await
    }

    async fn retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        self.read(|c| retention::retention(c, seller, order_id))
    }

    async fn retention_by_order(&self, order_id: &str) -> Result<Vec<RetentionRecord>, StoreError> {
        self.read(|c| retention::retention_by_order(c, order_id))
    }

    async fn put_retention(&self, record: &RetentionRecord) -> Result<bool, StoreError> {
        let r = record.clone();
        self.write(move |c| retention::put_retention(c, &r)).await
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<RetentionRecord>, StoreError> {
        self.read(|c| retention::due(c, now, limit))
    }

    async fn shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        let t = tombstone.clone();
        self.write(move |c| retention::shred_order(c, &t)).await
    }

    async fn retention_stats(&self, now: i64, next: usize) -> Result<RetentionStats, StoreError> {
        self.read(|c| retention::retention_stats(c, now, next))
    }

    async fn put_cached(&self, entry: &CacheEntry) -> Result<bool, StoreError> {
        let e = entry.clone();
        self.write(move |c| retention::put_cached(c, &e)).await
    }

    async fn cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        self.read(|c| retention::cached(c, seller, cache_id, now))
    }

    async fn cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        self.read(|c| retention::cached_by_order(c, seller, order_id))
    }

    async fn purge_expired_cache(&self, now: i64) -> Result<u64, StoreError> {
        self.write(move |c| retention::purge_expired_cache(c, now))
            .await
    }

    async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        let (s, o, p) = (
            seller.to_string(),
            order_id.to_string(),
            pseudonym.to_string(),
        );
        self.write(move |c| retention::link_pseudonym(c, &s, &o, &p))
            .await
    }

    async fn orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| retention::orders_by_pseudonym(c, pseudonym))
    }

    async fn pseudonyms_of(&self, seller: &str, order_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| retention::pseudonyms_of(c, seller, order_id))
    }

    async fn access_version(&self) -> Result<u64, StoreError> {
        // Every cache hit asks, so the common case is one `PRAGMA data_version` (no table
        // read): the table is read only when something was committed since the last read.
        let mut watcher = self
            .inner
            .watcher
            .lock()
            .map_err(|_| StoreError::Task("version watcher lock poisoned".into()))?;
        let (conn, last) = &mut *watcher;
        // Cached statement: `pragma_query_value` prepares it anew at every call.
        let data_version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if let Some((seen, version)) = *last {
            if seen == data_version {
                return Ok(version);
            }
        }
        let version = conn
            .prepare_cached("SELECT value FROM access_version")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64;
        // Taken before the read: a commit in between changes the data version again.
        *last = Some((data_version, version));
        Ok(version)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT count(*) FROM access_version", [], |_| Ok(()))?))?;
        // The write lock too: a database that reads but cannot be written (read-only file,
        // locked by another writer) is unready.
        self.write(|c| {
            c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
        .await
    }

    async fn compact(&self) -> Result<(), StoreError> {
        self.write(retention::compact).await
    }
}

/// Inserts a seller; `replace` upserts, otherwise an existing seller is a conflict.
fn write_seller(c: &Connection, s: &SellerRecord, replace: bool) -> Result<(), StoreError> {
    let upsert = if replace {
        " ON CONFLICT(selling_partner_id) DO UPDATE SET region = excluded.region,
             marketplaces = excluded.marketplaces, refresh_token = excluded.refresh_token,
             authorized_at = excluded.authorized_at,
             reauthorize_by = excluded.reauthorize_by, status = excluded.status"
    } else {
        ""
    };
    c.execute(
        &format!(
            "INSERT INTO sellers (selling_partner_id, region, marketplaces, refresh_token,
                 authorized_at, reauthorize_by, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7){upsert}"
        ),
        params![
            s.selling_partner_id,
            s.region.as_str(),
            s.marketplaces.join(","),
            s.refresh_token_sealed,
            s.authorized_at,
            s.reauthorize_by,
            s.status.as_str()
        ],
    )
    .map_err(|e| conflict_or(e, &format!("seller {}", s.selling_partner_id)))?;
    Ok(())
}

fn seller_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SellerRecord, StoreError>> {
    let region: String = row.get(1)?;
    let status: String = row.get(6)?;
    let marketplaces: String = row.get(2)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "seller",
        detail,
    };
    Ok((|| {
        Ok(SellerRecord {
            selling_partner_id: row.get(0)?,
            region: region.parse().map_err(corrupt)?,
            marketplaces: split_list(&marketplaces),
            refresh_token_sealed: row.get(3)?,
            authorized_at: row.get(4)?,
            reauthorize_by: row.get(5)?,
            status: status.parse().map_err(corrupt)?,
        })
    })())
}

fn client_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    let sellers: String = row.get(3)?;
    Ok(ClientRecord {
        id: row.get(0)?,
        tool: row.get(1)?,
        role: row.get(2)?,
        sellers: split_list(&sellers),
        key_hash: row.get(4)?,
        key_prefix: row.get(5)?,
        created_at: row.get(6)?,
        revoked_at: row.get(7)?,
    })
}

/// A uniqueness violation becomes [`StoreError::Conflict`]; anything else stays a SQLite error.
fn conflict_or(e: rusqlite::Error, what: &str) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what.to_string())
        }
        e => e.into(),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL: readers never block the writer. secure_delete: deleted rows are overwritten, not
    // left in free pages. synchronous=FULL: a committed write survives power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE sellers (
        selling_partner_id TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        marketplaces TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        authorized_at INTEGER NOT NULL,
        reauthorize_by INTEGER NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        tool TEXT NOT NULL,
        role TEXT NOT NULL,
        sellers TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        key_prefix TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
",
    "
    CREATE TABLE drop_in (
        lwa_client_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        refresh_hash TEXT NOT NULL,
        client_id TEXT NOT NULL REFERENCES clients(id),
        seller TEXT NOT NULL
    );
    CREATE TABLE gateway_tokens (
        token_hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        seller TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
        CREATE INDEX gateway_tokens_expiry ON gateway_tokens (expires_at);
",
    "
    CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    );
        CREATE TABLE oauth_states (
        state_hash TEXT PRIMARY KEY,
        invite_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
",
    "
    ALTER TABLE invites ADD COLUMN seller TEXT;
",
    retention::MIGRATION,
    // Every change to tools or sellers counts, whoever writes it (the gateway, the CLI, another
    // instance on the same file): caches compare this number before serving an entry.
    "
    CREATE TABLE access_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO access_version (id, value) VALUES (1, 0);
    CREATE TRIGGER clients_insert_version AFTER INSERT ON clients
        BEGIN UPDATE access_version SET value = value + 1; END;
    CREATE TRIGGER clients_update_version AFTER UPDATE ON clients
        BEGIN UPDATE access_version SET value = value + 1; END;
    CREATE TRIGGER clients_delete_version AFTER DELETE ON clients
        BEGIN UPDATE access_version SET value = value + 1; END;
    CREATE TRIGGER sellers_insert_version AFTER INSERT ON sellers
        BEGIN UPDATE access_version SET value = value + 1; END;
    CREATE TRIGGER sellers_update_version AFTER UPDATE ON sellers
        BEGIN UPDATE access_version SET value = value + 1; END;
    CREATE TRIGGER sellers_delete_version AFTER DELETE ON sellers
        BEGIN UPDATE access_version SET value = value + 1; END;
",
];

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod version_tests {
    use super::*;

    /// Another process bumps the access version (a revocation) and leaves the WAL exactly as
    /// it found it: same size (checkpointed and truncated) and same modification time, as two
    /// commits in one mtime tick can. The next check still sees the change.
    #[tokio::test]
    async fn a_commit_that_leaves_the_wal_size_and_mtime_unchanged_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let other = Connection::open(store.path()).unwrap();
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let bump_and_truncate = || {
            other
                .execute_batch(
                    "UPDATE access_version SET value = value + 1;
                     PRAGMA wal_checkpoint(TRUNCATE);",
                )
                .unwrap();
        };
        bump_and_truncate();
        let before = store.access_version().await.unwrap();
        let mtime = std::fs::metadata(&wal).unwrap().modified().unwrap();
        bump_and_truncate();
        std::fs::File::options()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(store.access_version().await.unwrap(), before + 1);
    }
}
