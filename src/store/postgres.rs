//! The PostgreSQL backend: durable state shared by several gateway instances, in a database the
//! operator already runs, backs up and monitors.
//!
//! Every table lives in one schema (`[store] schema`, default `spgate`), so one database can
//! hold several deployments, and each test its own. The schema is versioned: [`MIGRATIONS`] are
//! applied at start under an advisory lock (several instances starting at once migrate once),
//! and a schema newer than this binary is refused rather than written by code that does not
//! know it.
//!
//! Each logical change is one statement or one transaction; conditional writes (a retention
//! record's version, a live data key, an unused invite) are `UPDATE ... WHERE` or
//! `INSERT ... ON CONFLICT` so N instances racing on a row get one winner. `shred_order` locks
//! the record's row (`SELECT ... FOR UPDATE`) and checks its version, so each order is shredded
//! by exactly one instance. Triggers count every change to tools and sellers in
//! `access_version` (a revocation applies at the next request everywhere).
//!
//! Connections come from a pool (`deadpool-postgres`); a connection broken by a server restart
//! is dropped and a new one made at the next request, so the gateway recovers without a
//! restart. While the server is down every operation fails fast (pool wait and connect
//! timeouts) as [`StoreError::Postgres`] with `unavailable` set: 503 with `Retry-After`, and
//! `/readyz` 503.
//!
//! Values reach this module already sealed or hashed; error messages carry SQLSTATE codes and
//! driver errors, never values, and never the URL (which may hold a password).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::token_cache::SharedTokenCache;
use super::{
    CacheEntry, ClientRecord, DropInRecord, GatewayToken, Invite, KeyCreation, OAuthState,
    OrderKey, RetentionRecord, RetentionStats, SellerRecord, SellerStatus, Shredded, Store,
    StoreError,
};

#[path = "postgres_retention.rs"]
mod retention;

/// How long a request waits for a pooled connection, or for a new one to be made, before the
/// store answers unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=...]`; `sslmode=verify-full`
    /// is accepted and means TLS with the certificate chained to `ca_pem` (or webpki's roots)
    /// and the host name checked.
    pub url: String,
    /// The schema holding every table (an identifier: `[a-z_][a-z0-9_]*`).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The server cancels any statement running longer (`statement_timeout`).
    pub statement_timeout: Duration,
    /// PEM CA certificate(s) the server's certificate must chain to; setting it requires TLS.
    pub ca_pem: Option<String>,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &"**REDACTED**")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// PostgreSQL-backed [`Store`] and [`SharedTokenCache`]. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    schema: Arc<str>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A pooled connection.
type Conn = deadpool_postgres::Object;

// === impl PostgresStore ===

impl PostgresStore {
    /// Connects, checks that the server answers within [`CONNECT_TIMEOUT`], and brings the schema
    /// to this binary's version (refusing a newer one).
    pub async fn connect(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        if !valid_identifier(&options.schema) {
            return Err(StoreError::PostgresConfig(format!(
                "schema {:?} is not a plain identifier ([a-z_][a-z0-9_]*, at most 63 bytes)",
                options.schema
            )));
        }
        let (url, verify_full) = split_sslmode(&options.url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::PostgresConfig(
                "the PostgreSQL URL is invalid (expected postgres://user@host:port/database)"
                    .into(),
            )
        })?;
        let timeout_ms = options.statement_timeout.as_millis().max(1);
        config.options(format!(
            "-c search_path={} -c statement_timeout={timeout_ms}",
            options.schema
        ));
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("spgate");
        // TLS when asked for (`sslmode=require`, `verify-full`, `verify-ca`, or a CA file), and
        // then always verified; without either, plain TCP (the driver's default `prefer` would
        // try TLS and fail on a server's self-signed certificate rather than fall back).
        let tls = verify_full || options.ca_pem.is_some() || url.contains("sslmode=require");
        config.ssl_mode(if tls {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if tls {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                options.ca_pem.as_deref(),
            )?);
            Manager::from_config(config, tls, manager_config)
        } else {
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::PostgresConfig(format!("connection pool: {e}")))?;
        let store = PostgresStore {
            pool,
            schema: options.schema.as_str().into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn conn(&self, op: &'static str) -> Result<Conn, StoreError> {
        self.pool.get().await.map_err(|e| pool_failed(op, &e))
    }

    /// Applies the migrations this database lacks, in one transaction under an advisory lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        const OP: &str = "migrate";
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('spgate-migrate:' || $1::text))",
            &[&&*self.schema],
        )
        .await
        .map_err(failed(OP))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_version (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             );
             INSERT INTO {schema}.schema_version (id, version) VALUES (1, 0)
                 ON CONFLICT DO NOTHING;",
            schema = self.schema
        ))
        .await
        .map_err(failed(OP))?;
        let row = tx
            .query_one(
                &format!("SELECT version FROM {}.schema_version", self.schema),
                &[],
            )
            .await
            .map_err(failed(OP))?;
        let version: i32 = row.get(0);
        let known = MIGRATIONS.len();
        let version = usize::try_from(version).map_err(|_| StoreError::Corrupt {
            what: "schema version",
            detail: format!("negative version {version}"),
        })?;
        if version > known {
            // Ended here, not on drop: a dropped transaction rolls back only once the
            // connection's task runs again.
            tx.rollback().await.map_err(failed(OP))?;
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(&format!("SET LOCAL search_path = {}; {sql}", self.schema))
                .await
                .map_err(failed(OP))?;
            tx.execute(
                &format!("UPDATE {}.schema_version SET version = $1", self.schema),
                &[&((i + 1) as i32)],
            )
            .await
            .map_err(failed(OP))?;
        }
        tx.commit().await.map_err(failed(OP))
    }

    /// Copies `dump` in (one transaction: all or nothing), leaving rows already there as they
    /// are, then counts every source row in the target by identity (`spgate store copy`).
    pub async fn import(
        &self,
        dump: &super::copy::Dump,
    ) -> Result<super::copy::CopyReport, StoreError> {
        const OP: &str = "import";
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        let mut report = super::copy::CopyReport::default();
        let strings = |f: &dyn Fn(usize) -> String, n: usize| (0..n).map(f).collect::<Vec<_>>();

        let s = &dump.sellers;
        let ids = strings(&|i| s[i].selling_partner_id.clone(), s.len());
        ImportKind {
            name: "sellers",
            rows: s.len(),
            insert: "INSERT INTO sellers (selling_partner_id, region, marketplaces, refresh_token,
                     authorized_at, reauthorize_by, status)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                     $6::int8[], $7::text[]) ON CONFLICT DO NOTHING",
            found_in: "sellers WHERE selling_partner_id = ANY($1)",
        }
        .run(
            &tx,
            &mut report,
            &[
                &ids,
                &strings(&|i| s[i].region.as_str().to_string(), s.len()),
                &strings(&|i| list_value(&s[i].marketplaces), s.len()),
                &strings(&|i| s[i].refresh_token_sealed.clone(), s.len()),
                &s.iter().map(|x| x.authorized_at).collect::<Vec<_>>(),
                &s.iter().map(|x| x.reauthorize_by).collect::<Vec<_>>(),
                &strings(&|i| s[i].status.as_str().to_string(), s.len()),
            ],
            &[&ids],
        )
        .await?;

        let c = &dump.clients;
        let ids = strings(&|i| c[i].id.clone(), c.len());
        ImportKind {
            name: "clients",
            rows: c.len(),
            insert: &format!(
                "INSERT INTO clients ({CLIENT_COLUMNS})
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::text[], $6::text[], $7::int8[], $8::int8[]) ON CONFLICT DO NOTHING"
            ),
            found_in: "clients WHERE id = ANY($1)",
        }
        .run(
            &tx,
            &mut report,
            &[
                &ids,
                &strings(&|i| c[i].tool.clone(), c.len()),
                &strings(&|i| c[i].role.clone(), c.len()),
                &strings(&|i| list_value(&c[i].sellers), c.len()),
                &strings(&|i| c[i].key_hash.clone(), c.len()),
                &strings(&|i| c[i].key_prefix.clone(), c.len()),
                &c.iter().map(|x| x.created_at).collect::<Vec<_>>(),
                &c.iter().map(|x| x.revoked_at).collect::<Vec<_>>(),
            ],
            &[&ids],
        )
        .await?;

        let d = &dump.drop_ins;
        let ids = strings(&|i| d[i].lwa_client_id.clone(), d.len());
        ImportKind {
            name: "drop_ins",
            rows: d.len(),
            insert:
                "INSERT INTO drop_in (lwa_client_id, secret_hash, refresh_hash, client_id, seller)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                 ON CONFLICT DO NOTHING",
            found_in: "drop_in WHERE lwa_client_id = ANY($1)",
        }
        .run(
            &tx,
            &mut report,
            &[
                &ids,
                &strings(&|i| d[i].secret_hash.clone(), d.len()),
                &strings(&|i| d[i].refresh_hash.clone(), d.len()),
                &strings(&|i| d[i].client_id.clone(), d.len()),
                &strings(&|i| d[i].seller.clone(), d.len()),
            ],
            &[&ids],
        )
        .await?;

        let v = &dump.invites;
        let ids = strings(&|i| v[i].id.clone(), v.len());
        ImportKind {
            name: "invites",
            rows: v.len(),
            insert: "INSERT INTO invites (id, region, created_at, expires_at, used_at, seller)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                     $6::text[]) ON CONFLICT DO NOTHING",
            found_in: "invites WHERE id = ANY($1)",
        }
        .run(
            &tx,
            &mut report,
            &[
                &ids,
                &strings(&|i| v[i].region.as_str().to_string(), v.len()),
                &v.iter().map(|x| x.created_at).collect::<Vec<_>>(),
                &v.iter().map(|x| x.expires_at).collect::<Vec<_>>(),
                &v.iter().map(|x| x.used_at).collect::<Vec<_>>(),
                &v.iter().map(|x| x.seller.clone()).collect::<Vec<_>>(),
            ],
            &[&ids],
        )
        .await?;

        retention::import_vault(&tx, dump, &mut report).await?;
        tx.commit().await.map_err(failed(OP))?;
        Ok(report)
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(failed(op))?;
        conn.query_opt(&stmt, params).await.map_err(failed(op))
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(failed(op))?;
        conn.query(&stmt, params).await.map_err(failed(op))
    }

    async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(failed(op))?;
        conn.execute(&stmt, params).await.map_err(failed(op))
    }

    /// An insert whose unique violation means "already exists".
    async fn insert(
        &self,
        op: &'static str,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(failed(op))?;
        match conn.execute(&stmt, params).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::Conflict(what.to_string()))
            }
            Err(e) => Err(failed(op)(e)),
        }
    }

    async fn write_seller(&self, s: &SellerRecord, replace: bool) -> Result<(), StoreError> {
        let op = if replace {
            "put_seller"
        } else {
            "insert_seller"
        };
        let sql = if replace {
            "INSERT INTO sellers (selling_partner_id, region, marketplaces, refresh_token,
                 authorized_at, reauthorize_by, status) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (selling_partner_id) DO UPDATE SET region = excluded.region,
                 marketplaces = excluded.marketplaces, refresh_token = excluded.refresh_token,
                 authorized_at = excluded.authorized_at, reauthorize_by = excluded.reauthorize_by,
                 status = excluded.status"
        } else {
            "INSERT INTO sellers (selling_partner_id, region, marketplaces, refresh_token,
                 authorized_at, reauthorize_by, status) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        };
        self.insert(
            op,
            &format!("seller {}", s.selling_partner_id),
            sql,
            &[
                &s.selling_partner_id,
                &s.region.as_str(),
                &list_value(&s.marketplaces),
                &s.refresh_token_sealed,
                &s.authorized_at,
                &s.reauthorize_by,
                &s.status.as_str(),
            ],
        )
        .await
    }
}

const SELLER_COLUMNS: &str =
    "selling_partner_id, region, marketplaces, refresh_token, authorized_at, reauthorize_by, status";
const CLIENT_COLUMNS: &str =
    "id, tool, role, sellers, key_hash, key_prefix, created_at, revoked_at";

#[async_trait]
impl Store for PostgresStore {
    async fn put_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        self.write_seller(seller, true).await
    }

    async fn insert_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        self.write_seller(seller, false).await
    }

    async fn seller(&self, selling_partner_id: &str) -> Result<Option<SellerRecord>, StoreError> {
        self.query_opt(
            "seller",
            &format!("SELECT {SELLER_COLUMNS} FROM sellers WHERE selling_partner_id = $1"),
            &[&selling_partner_id],
        )
        .await?
        .map(|r| seller_row(&r))
        .transpose()
    }

    async fn sellers(&self) -> Result<Vec<SellerRecord>, StoreError> {
        self.query(
            "sellers",
            &format!(
                "SELECT {SELLER_COLUMNS} FROM sellers ORDER BY selling_partner_id COLLATE \"C\""
            ),
            &[],
        )
        .await?
        .iter()
        .map(seller_row)
        .collect()
    }

    async fn remove_seller(&self, selling_partner_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "remove_seller",
                "DELETE FROM sellers WHERE selling_partner_id = $1",
                &[&selling_partner_id],
            )
            .await?
            > 0)
    }

    async fn set_seller_status(
        &self,
        selling_partner_id: &str,
        status: SellerStatus,
    ) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "set_seller_status",
                "UPDATE sellers SET status = $2 WHERE selling_partner_id = $1",
                &[&selling_partner_id, &status.as_str()],
            )
            .await?
            > 0)
    }

    async fn insert_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        self.insert(
            "insert_client",
            &format!("client {} or its key", c.id),
            &format!(
                "INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &c.id,
                &c.tool,
                &c.role,
                &list_value(&c.sellers),
                &c.key_hash,
                &c.key_prefix,
                &c.created_at,
                &c.revoked_at,
            ],
        )
        .await
    }

    async fn client_by_key_hash(&self, key_hash: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.query_opt(
            "client_by_key_hash",
            &format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE key_hash = $1"),
            &[&key_hash],
        )
        .await?
        .map(|r| client_row(&r))
        .transpose()
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.query(
            "clients",
            &format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY created_at, id COLLATE \"C\""),
            &[],
        )
        .await?
        .iter()
        .map(client_row)
        .collect()
    }

    async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "revoke_client",
                "UPDATE clients SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at],
            )
            .await?
            > 0)
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.query_opt(
            "client",
            &format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| client_row(&r))
        .transpose()
    }

    async fn insert_drop_in(&self, r: &DropInRecord) -> Result<(), StoreError> {
        let conn = self.conn("insert_drop_in").await?;
        let stmt = conn
            .prepare_cached(
                "INSERT INTO drop_in (lwa_client_id, secret_hash, refresh_hash, client_id, seller)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(failed("insert_drop_in"))?;
        match conn
            .execute(
                &stmt,
                &[
                    &r.lwa_client_id,
                    &r.secret_hash,
                    &r.refresh_hash,
                    &r.client_id,
                    &r.seller,
                ],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::Conflict(
                format!("drop-in client {}", r.lwa_client_id),
            )),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(
                StoreError::Conflict(format!("drop-in for unknown client {}", r.client_id)),
            ),
            Err(e) => Err(failed("insert_drop_in")(e)),
        }
    }

    async fn drop_in(&self, lwa_client_id: &str) -> Result<Option<DropInRecord>, StoreError> {
        Ok(self
            .query_opt(
                "drop_in",
                "SELECT lwa_client_id, secret_hash, refresh_hash, client_id, seller
                 FROM drop_in WHERE lwa_client_id = $1",
                &[&lwa_client_id],
            )
            .await?
            .map(|r| DropInRecord {
                lwa_client_id: r.get(0),
                secret_hash: r.get(1),
                refresh_hash: r.get(2),
                client_id: r.get(3),
                seller: r.get(4),
            }))
    }

    async fn insert_gateway_token(&self, t: &GatewayToken, now: i64) -> Result<(), StoreError> {
        const OP: &str = "insert_gateway_token";
        let mut conn = self.conn(OP).await?;
        let tx = conn.transaction().await.map_err(failed(OP))?;
        let purge = tx
            .prepare_cached("DELETE FROM gateway_tokens WHERE expires_at <= $1")
            .await
            .map_err(failed(OP))?;
        tx.execute(&purge, &[&now]).await.map_err(failed(OP))?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO gateway_tokens (token_hash, client_id, seller, expires_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(failed(OP))?;
        match tx
            .execute(
                &insert,
                &[&t.token_hash, &t.client_id, &t.seller, &t.expires_at],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::Conflict(
                    "a gateway token with this hash".into(),
                ))
            }
            Err(e) => return Err(failed(OP)(e)),
        }
        tx.commit().await.map_err(failed(OP))
    }

    async fn gateway_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<GatewayToken>, StoreError> {
        Ok(self
            .query_opt(
                "gateway_token",
                "SELECT token_hash, client_id, seller, expires_at FROM gateway_tokens
                 WHERE token_hash = $1 AND expires_at > $2",
                &[&token_hash, &now],
            )
            .await?
            .map(|r| GatewayToken {
                token_hash: r.get(0),
                client_id: r.get(1),
                seller: r.get(2),
                expires_at: r.get(3),
            }))
    }

    async fn insert_invite(&self, i: &Invite) -> Result<(), StoreError> {
        self.insert(
            "insert_invite",
            "invite",
            "INSERT INTO invites (id, region, created_at, expires_at, used_at, seller)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &i.id,
                &i.region.as_str(),
                &i.created_at,
                &i.expires_at,
                &i.used_at,
                &i.seller,
            ],
        )
        .await
    }

    async fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError> {
        self.query_opt(
            "invite",
            "SELECT id, region, created_at, expires_at, used_at, seller FROM invites WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| {
            Ok(Invite {
                id: r.get(0),
                region: r
                    .get::<_, String>(1)
                    .parse()
                    .map_err(|detail| StoreError::Corrupt {
                        what: "invite",
                        detail,
                    })?,
                created_at: r.get(2),
                expires_at: r.get(3),
                used_at: r.get(4),
                seller: r.get(5),
            })
        })
        .transpose()
    }

    async fn use_invite(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "use_invite",
                "UPDATE invites SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
                &[&id, &at],
            )
            .await?
            > 0)
    }

    async fn insert_oauth_state(&self, s: &OAuthState) -> Result<(), StoreError> {
        self.insert(
            "insert_oauth_state",
            "oauth state",
            "INSERT INTO oauth_states (state_hash, invite_id, expires_at) VALUES ($1, $2, $3)",
            &[&s.state_hash, &s.invite_id, &s.expires_at],
        )
        .await
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError> {
        // Deleting is the single use: of concurrent callbacks with one state, one gets the row.
        let taken = self
            .query_opt(
                "take_oauth_state",
                "DELETE FROM oauth_states WHERE state_hash = $1
                 RETURNING state_hash, invite_id, expires_at",
                &[&state_hash],
            )
            .await?
            .map(|r| OAuthState {
                state_hash: r.get(0),
                invite_id: r.get(1),
                expires_at: r.get(2),
            });
        self.execute(
            "take_oauth_state",
            "DELETE FROM oauth_states WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        Ok(taken.filter(|s| s.expires_at > now))
    }

    async fn order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        self.v_order_key(seller, order_id).await
    }

    async fn order_key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, StoreError> {
        self.v_order_key_by_id(key_id).await
    }

    async fn create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        self.v_create_order_key(key, record).await
    }

    async fn retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        self.v_retention(seller, order_id).await
    }

    async fn retention_by_order(&self, order_id: &str) -> Result<Vec<RetentionRecord>, StoreError> {
        self.v_retention_by_order(order_id).await
    }

    async fn put_retention(&self, record: &RetentionRecord) -> Result<bool, StoreError> {
        self.v_put_retention(record).await
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<RetentionRecord>, StoreError> {
        self.v_due(now, limit).await
    }

    async fn shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        self.v_shred_order(tombstone).await
    }

    async fn retention_stats(&self, now: i64, next: usize) -> Result<RetentionStats, StoreError> {
        self.v_retention_stats(now, next).await
    }

    async fn put_cached(&self, entry: &CacheEntry) -> Result<bool, StoreError> {
        self.v_put_cached(entry).await
    }

    async fn cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        self.v_cached(seller, cache_id, now).await
    }

    async fn cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        self.v_cached_by_order(seller, order_id).await
    }

    async fn purge_expired_cache(&self, now: i64) -> Result<u64, StoreError> {
        self.execute(
            "purge_expired_cache",
            "DELETE FROM pii_cache WHERE expires_at <= $1",
            &[&now],
        )
        .await
    }

    async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        self.v_link_pseudonym(seller, order_id, pseudonym).await
    }

    async fn orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.v_orders_by_pseudonym(pseudonym).await
    }

    async fn pseudonyms_of(&self, seller: &str, order_id: &str) -> Result<Vec<String>, StoreError> {
        self.v_pseudonyms_of(seller, order_id).await
    }

    async fn compact(&self) -> Result<(), StoreError> {
        self.v_compact().await
    }

    async fn access_version(&self) -> Result<u64, StoreError> {
        let row = self
            .query_opt(
                "access_version",
                "SELECT value FROM access_version WHERE id = 1",
                &[],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write (rolled back by nothing: it changes no row), so a read-only replica or a
        // server refusing writes is unready too.
        self.execute(
            "ping",
            "UPDATE access_version SET value = value WHERE id = 0",
            &[],
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl SharedTokenCache for PostgresStore {
    async fn get(&self, subject_key: &str) -> Result<Option<(String, Duration)>, StoreError> {
        // Remaining lifetime on the server's clock, so every instance agrees.
        let row = self
            .query_opt(
                "token_cache.get",
                "SELECT sealed, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
                 FROM lwa_tokens WHERE subject = $1 AND expires_at > clock_timestamp()",
                &[&subject_key],
            )
            .await?;
        Ok(row.and_then(|r| {
            let ms: i64 = r.get(1);
            u64::try_from(ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| (r.get(0), Duration::from_millis(ms)))
        }))
    }

    async fn put(&self, subject_key: &str, sealed: &str, ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl_millis(ttl);
        if ms == 0 {
            // Nothing left to cache; an older token must not outlive this call either.
            self.execute(
                "token_cache.put",
                "DELETE FROM lwa_tokens WHERE subject = $1",
                &[&subject_key],
            )
            .await?;
            return Ok(());
        }
        self.execute(
            "token_cache.put",
            "INSERT INTO lwa_tokens (subject, sealed, expires_at)
             VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (subject) DO UPDATE SET sealed = excluded.sealed,
                 expires_at = excluded.expires_at",
            &[&subject_key, &sealed, &ms],
        )
        .await
        .map(|_| ())
    }

    async fn try_lock(
        &self,
        subject_key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let token = crate::crypto::random_token::<18>().map_err(StoreError::LockToken)?;
        // Taken if there is no lock or the one there expired; one statement, so two instances
        // racing get one winner.
        let taken = self
            .query_opt(
                "token_cache.try_lock",
                "INSERT INTO lwa_locks (subject, token, expires_at)
                 VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (subject) DO UPDATE SET token = excluded.token,
                     expires_at = excluded.expires_at
                 WHERE lwa_locks.expires_at <= clock_timestamp()
                 RETURNING token",
                &[&subject_key, &token, &ttl_millis(ttl).max(1)],
            )
            .await?;
        Ok(taken.map(|_| token))
    }

    async fn unlock(&self, subject_key: &str, lock_token: &str) -> Result<(), StoreError> {
        self.execute(
            "token_cache.unlock",
            "DELETE FROM lwa_locks WHERE subject = $1 AND token = $2",
            &[&subject_key, &lock_token],
        )
        .await
        .map(|_| ())
    }
}

/// Schema versions, applied in order; `schema_version.version` records how many ran. Never
/// edit one that shipped: add the next.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE sellers (
        selling_partner_id TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        marketplaces TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        authorized_at BIGINT NOT NULL,
        reauthorize_by BIGINT NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        tool TEXT NOT NULL,
        role TEXT NOT NULL,
        sellers TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        key_prefix TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
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
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX gateway_tokens_expiry ON gateway_tokens (expires_at);
    CREATE TABLE invites (
        id TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        seller TEXT
    );
    CREATE TABLE oauth_states (
        state_hash TEXT PRIMARY KEY,
        invite_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE access_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value BIGINT NOT NULL
    );
    INSERT INTO access_version (id, value) VALUES (1, 0);
    CREATE FUNCTION bump_access_version() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN
            UPDATE access_version SET value = value + 1 WHERE id = 1;
            RETURN NULL;
        END $$;
    CREATE TRIGGER clients_access_version AFTER INSERT OR UPDATE OR DELETE ON clients
        FOR EACH STATEMENT EXECUTE FUNCTION bump_access_version();
    CREATE TRIGGER sellers_access_version AFTER INSERT OR UPDATE OR DELETE ON sellers
        FOR EACH STATEMENT EXECUTE FUNCTION bump_access_version();
    CREATE TABLE lwa_tokens (
        subject TEXT PRIMARY KEY,
        sealed TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE lwa_locks (
        subject TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE order_keys (
        key_id TEXT PRIMARY KEY,
        seller TEXT NOT NULL,
        order_id TEXT NOT NULL,
        wrapped TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (seller, order_id)
    );
    CREATE TABLE retention (
        seller TEXT NOT NULL,
        order_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        state TEXT NOT NULL,
        purge_at BIGINT NOT NULL,
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
        sealed BYTEA NOT NULL,
        stored_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
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
"];

/// One kind of rows of [`PostgresStore::import`].
struct ImportKind<'a> {
    /// Its name in the report.
    name: &'static str,
    /// Rows in the source.
    rows: usize,
    /// The insert (`ON CONFLICT DO NOTHING`: rows already there stay as they are).
    insert: &'a str,
    /// Where the source's rows are counted in the target: `table WHERE condition on the keys`.
    found_in: &'a str,
}

impl ImportKind<'_> {
    /// Inserts `values`, counts the source's rows (`keys`) in the target, and adds the kind's
    /// line to `report`.
    async fn run(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        report: &mut super::copy::CopyReport,
        values: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        keys: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let inserted = tx
            .execute(self.insert, values)
            .await
            .map_err(failed("import"))?;
        let found = tx
            .query_one(&format!("SELECT count(*) FROM {}", self.found_in), keys)
            .await
            .map_err(failed("import"))?
            .get::<_, i64>(0) as u64;
        report.kinds.push((
            self.name,
            super::copy::Counted {
                source: self.rows as u64,
                inserted,
                found,
            },
        ));
        Ok(())
    }
}

fn seller_row(r: &Row) -> Result<SellerRecord, StoreError> {
    const WHAT: &str = "seller";
    Ok(SellerRecord {
        selling_partner_id: r.get(0),
        region: r.get::<_, String>(1).parse().map_err(corrupt(WHAT))?,
        marketplaces: list(&r.get::<_, String>(2), WHAT)?,
        refresh_token_sealed: r.get(3),
        authorized_at: r.get(4),
        reauthorize_by: r.get(5),
        status: r.get::<_, String>(6).parse().map_err(corrupt(WHAT))?,
    })
}

fn client_row(r: &Row) -> Result<ClientRecord, StoreError> {
    Ok(ClientRecord {
        id: r.get(0),
        tool: r.get(1),
        role: r.get(2),
        sellers: list(&r.get::<_, String>(3), "client")?,
        key_hash: r.get(4),
        key_prefix: r.get(5),
        created_at: r.get(6),
        revoked_at: r.get(7),
    })
}

/// Lists are stored as JSON arrays of strings, so any character may appear in an element.
fn list_value(items: &[String]) -> String {
    serde_json::Value::from(items).to_string()
}

fn list(json: &str, what: &'static str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|_| StoreError::Corrupt {
        what,
        detail: "a list is not a JSON list of strings".into(),
    })
}

fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |detail| StoreError::Corrupt { what, detail }
}

/// A duration in whole milliseconds, as the server's interval arithmetic takes it.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// Removes `sslmode=verify-full` / `verify-ca` (libpq's names, which the driver does not parse)
/// from the URL and says whether it was there: the rustls connector always checks the chain and
/// the host name, so both mean "TLS, verified".
fn split_sslmode(url: &str) -> (String, bool) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), false);
    };
    let mut verify = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let strict = *p == "sslmode=verify-full" || *p == "sslmode=verify-ca";
            verify |= strict;
            !strict
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), verify)
    } else {
        (format!("{base}?{}", kept.join("&")), verify)
    }
}

/// rustls with the ring provider, trusting `ca_pem` (or webpki's roots without one).
fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|_| {
                    StoreError::PostgresConfig("the CA file holds an unreadable certificate".into())
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::PostgresConfig(format!("the CA certificate is refused: {e}"))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::PostgresConfig(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether a driver error means "the database cannot serve now" (down, restarting, overloaded,
/// a statement cancelled by its timeout, a serialization failure) rather than a defect.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // No SQLSTATE: the connection broke, timed out or could not be made, unless the driver
        // itself refused a value (a defect, not an outage).
        None => {
            let text = e.to_string();
            !(text.starts_with("error serializing")
                || text.starts_with("error deserializing")
                || tls_refusal(e).is_some())
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention: shutdown, cancel, cannot connect
                || c.starts_with("40") // serialization failure, deadlock
                || c == "25006" // read-only transaction (a standby)
        }
    }
}

/// What went wrong, without values: a server error is named by its SQLSTATE and constraint (a
/// message may quote a value), a driver error by its own text (no values).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.constraint() {
            Some(constraint) => format!(
                "server answered {} (constraint {constraint})",
                db.code().code()
            ),
            None => format!("server answered {}", db.code().code()),
        },
        None => match tls_refusal(e) {
            // The driver's own text says only "error performing TLS handshake".
            Some(why) => format!(
                "{e}: the server's certificate was refused ({why}): check [store] ca_file (the CA \
                 that issued it) and that the URL's host is a name the certificate carries"
            ),
            None => e.to_string(),
        },
    }
}

/// Why rustls refused the server's certificate (an unknown issuer, another host name, expired),
/// if that is what made the connection fail: a setting to fix, not an outage to wait out.
fn tls_refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        // The TLS connector hands rustls's error over inside an `io::Error`.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(err, |i| i as &(dyn std::error::Error + 'static));
        if let Some(rustls::Error::InvalidCertificate(why)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(format!("{why:?}"));
        }
        next = err.source();
    }
    None
}

/// Maps a driver error to [`StoreError::Postgres`] for operation `op`.
fn failed(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres {
        op,
        unavailable: is_transient(&e),
        reason: describe(&e),
    }
}

fn pool_failed(op: &'static str, e: &deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError as P;
    let reason = match e {
        P::Timeout(kind) => format!("no connection within {CONNECT_TIMEOUT:?} ({kind:?})"),
        P::Backend(e) => describe(e),
        P::Closed => "the pool is closed".into(),
        P::NoRuntimeSpecified => "no runtime for the pool's timeouts".into(),
        P::PostCreateHook(_) => "a new connection was refused".into(),
    };
    StoreError::Postgres {
        op,
        // A connection refused for a reason that waiting does not cure (a certificate, a
        // password) is a defect of the settings, not an outage.
        unavailable: !matches!(e, P::Backend(e) if !is_transient(e)),
        reason,
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
