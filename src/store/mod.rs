//! The storage trait: every piece of durable state goes through [`Store`].
//!
//! Three backends implement it: [`embedded`] (SQLite in WAL mode under a data directory, the
//! default, for one machine) and, when state must be shared by several gateway instances,
//! [`postgres`] (durable, the recommended shared store) or Redis.
//! Secrets never reach a backend in clear: refresh tokens arrive sealed by
//! [`crate::crypto::MasterKey`], API keys arrive as SHA-256 hashes.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod cache;
pub mod copy;
pub mod embedded;
pub mod postgres;
pub mod redis;
pub mod retention;
pub mod token_cache;

pub use retention::{
    CacheEntry, DeletionReason, DeliverySource, KeyCreation, LegalHold, OrderKey, RetentionRecord,
    RetentionState, RetentionStats, Shredded,
};

/// Why a store operation failed. Messages never carry secrets or PII.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created or opened.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored row holds a value this version does not understand.
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// Which record kind.
        what: &'static str,
        /// What is wrong (never the value itself).
        detail: String,
    },
    /// A record with the same identity already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// A blocking task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// Redis failed, timed out or could not be reached. The reason names the failure (an I/O
    /// error, a server error code, a type error), never a key, a value or the URL.
    #[error("redis store, {op}: {reason}")]
    Redis {
        /// The operation that failed, e.g. `connect` or `insert_client`.
        op: &'static str,
        /// What went wrong, without values.
        reason: String,
    },
    /// The Redis URL could not be used. The URL itself is not repeated: it may hold a password.
    #[error("the Redis URL is invalid: {0}")]
    RedisUrl(String),
    /// No random lock token could be generated for the shared token cache.
    #[error("no lock token: {0}")]
    LockToken(crate::crypto::CryptoError),
    /// PostgreSQL failed, timed out or could not be reached. The reason names the failure (a
    /// SQLSTATE code, a driver error), never a value or the URL.
    #[error("postgres store, {op}: {reason}")]
    Postgres {
        /// The operation that failed, e.g. `connect` or `insert_client`.
        op: &'static str,
        /// Whether it is the server being unreachable, restarting or overloaded (503) rather
        /// than a defect (500).
        unavailable: bool,
        /// What went wrong, without values.
        reason: String,
    },
    /// The PostgreSQL settings cannot be used (URL, schema name, CA). The URL is not repeated.
    #[error("postgres store settings: {0}")]
    PostgresConfig(String),
    /// The database's schema was written by a newer spgate: this binary refuses to touch it.
    #[error("the PostgreSQL schema is at version {found}, newer than this binary's {known}: run the newer spgate (or restore a backup taken before the upgrade)")]
    SchemaTooNew {
        /// The version found.
        found: usize,
        /// The newest version this binary knows.
        known: usize,
    },
}

impl StoreError {
    /// Whether the store is unreachable or overloaded right now (Redis down or timing out, the
    /// SQLite file busy, locked or unreadable), as opposed to a defect or bad data. The first
    /// kind is answered 503 with `Retry-After` and makes the gateway unready; the second is a 500.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Redis { .. } | StoreError::DataDir { .. } | StoreError::Task(_) => true,
            StoreError::Postgres { unavailable, .. } => *unavailable,
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    C::DatabaseBusy
                        | C::DatabaseLocked
                        | C::CannotOpen
                        | C::SystemIoFailure
                        | C::DiskFull
                        | C::ReadOnly
                )
            ),
            StoreError::Corrupt { .. }
            | StoreError::Conflict(_)
            | StoreError::RedisUrl(_)
            | StoreError::PostgresConfig(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::LockToken(_) => false,
        }
    }
}

/// An SP-API region: each has its own endpoint and LWA-authorized sellers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// North America (CA, US, MX, BR).
    Na,
    /// Europe, Middle East, India, Africa.
    Eu,
    /// Far East (SG, AU, JP).
    Fe,
}

/// Whether a seller's authorization is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SellerStatus {
    /// The refresh token works.
    Active,
    /// LWA answered `invalid_grant`: ops must have the seller re-authorize.
    Deauthorized,
}

/// A seller who authorized our application.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SellerRecord {
    /// Amazon's selling partner id, e.g. `A3EXAMPLE`.
    pub selling_partner_id: String,
    /// The region the authorization belongs to; decides the upstream endpoint.
    pub region: Region,
    /// Marketplace ids the seller sells in (informational).
    pub marketplaces: Vec<String>,
    /// The LWA refresh token, sealed by the master key with AAD `refresh_token:<id>`.
    pub refresh_token_sealed: String,
    /// When the seller authorized (unix seconds).
    pub authorized_at: i64,
    /// When the seller must re-authorize (unix seconds; Amazon: yearly).
    pub reauthorize_by: i64,
    /// Whether the authorization is usable.
    pub status: SellerStatus,
}

/// A seller tool's API key and what it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Stable id, `cli_...`.
    pub id: String,
    /// The tool's name, e.g. `label-printer`.
    pub tool: String,
    /// The role that decides which operations and which PII it gets.
    pub role: String,
    /// Sellers it may act for; `*` means every onboarded seller.
    pub sellers: Vec<String>,
    /// SHA-256 (hex) of the API key. The key itself is never stored.
    pub key_hash: String,
    /// The key's first characters, to tell keys apart in listings.
    pub key_prefix: String,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// Revocation time (unix seconds), if revoked.
    pub revoked_at: Option<i64>,
}

/// Drop-in LWA credentials: a gateway-issued client id, client secret and refresh token that
/// stand for one (tool, seller), so an unmodified SP-API SDK can talk to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropInRecord {
    /// The gateway-issued LWA client id (public).
    pub lwa_client_id: String,
    /// SHA-256 (hex) of the gateway-issued client secret.
    pub secret_hash: String,
    /// SHA-256 (hex) of the gateway-issued refresh token.
    pub refresh_hash: String,
    /// The [`ClientRecord`] (tool) these credentials act as.
    pub client_id: String,
    /// The one seller they act for.
    pub seller: String,
}

/// A gateway-issued access token (drop-in mode); only its hash is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayToken {
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    /// The [`ClientRecord`] (tool) it authenticates.
    pub client_id: String,
    /// The seller it acts for.
    pub seller: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

/// A one-time link inviting a seller to authorize the application (website workflow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    /// Random id (the link carries it with a signature).
    pub id: String,
    /// The region the seller will authorize in.
    pub region: Region,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// The link stops working at this time (unix seconds).
    pub expires_at: i64,
    /// When a seller completed authorization with it; a used invite never works again.
    pub used_at: Option<i64>,
    /// For a re-authorization: the seller who must come back. `None`: a new seller only.
    #[serde(default)]
    pub seller: Option<String>,
}

/// The OAuth `state` of one authorization attempt; only its hash is stored, and it is single-use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthState {
    /// SHA-256 (hex) of the state value.
    pub state_hash: String,
    /// The invite the attempt belongs to.
    pub invite_id: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

/// Durable state behind one interface, whatever the backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces a seller.
    async fn put_seller(&self, seller: &SellerRecord) -> Result<(), StoreError>;
    /// Inserts a seller that does not exist yet; [`StoreError::Conflict`] if it does.
    async fn insert_seller(&self, seller: &SellerRecord) -> Result<(), StoreError>;
    /// A seller by selling partner id.
    async fn seller(&self, selling_partner_id: &str) -> Result<Option<SellerRecord>, StoreError>;
    /// All sellers, ordered by id.
    async fn sellers(&self) -> Result<Vec<SellerRecord>, StoreError>;
    /// Removes a seller; `false` if there was none.
    async fn remove_seller(&self, selling_partner_id: &str) -> Result<bool, StoreError>;
    /// Sets a seller's status; `false` if there was none.
    async fn set_seller_status(
        &self,
        selling_partner_id: &str,
        status: SellerStatus,
    ) -> Result<bool, StoreError>;
    /// Inserts a new client; fails with [`StoreError::Conflict`] if the id or key hash exists.
    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError>;
    /// The client whose key hashes to `key_hash`, revoked or not.
    async fn client_by_key_hash(&self, key_hash: &str) -> Result<Option<ClientRecord>, StoreError>;
    /// All clients, ordered by creation.
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// Revokes a client by id; `false` if there was none or it was already revoked.
    async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// A client by id.
    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;
    /// Stores drop-in credentials.
    async fn insert_drop_in(&self, record: &DropInRecord) -> Result<(), StoreError>;
    /// Drop-in credentials by their LWA client id.
    async fn drop_in(&self, lwa_client_id: &str) -> Result<Option<DropInRecord>, StoreError>;
    /// Stores a gateway-issued access token and removes expired ones.
    async fn insert_gateway_token(&self, token: &GatewayToken, now: i64) -> Result<(), StoreError>;
    /// Stores an invite.
    async fn insert_invite(&self, invite: &Invite) -> Result<(), StoreError>;
    /// An invite by id.
    async fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError>;
    /// Marks an invite used; `false` if it was already used or does not exist.
    async fn use_invite(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Stores an OAuth state.
    async fn insert_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError>;
    /// Takes a state: returns it once, if it exists and has not expired at `now`; it is gone
    /// afterwards either way (single use, atomically).
    async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError>;
    /// A gateway-issued access token by hash, if it has not expired at `now`.
    async fn gateway_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<GatewayToken>, StoreError>;

    // --- The vault: per-order data keys, retention records, the PII cache. ---
    //
    // Concurrency: no lease. Every write that could race another instance is one atomic,
    // conditional operation (a SQLite transaction or a Redis Lua script): records carry a
    // version, a write names the version it read and changes nothing if the record moved on.
    // Deletion (`shred_order`) is such a write too, so N instances may run the scheduler at
    // once: each order is shredded by exactly one of them, the others see a stale version.

    /// The data key of (seller, order), if it exists (it is gone once the order is shredded).
    async fn order_key(&self, seller: &str, order_id: &str)
        -> Result<Option<OrderKey>, StoreError>;
    /// A data key by its id.
    async fn order_key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, StoreError>;
    /// Atomically creates the order's data key and writes its retention record (whose
    /// `version` is the version read, 0 for none; it is stored bumped), unless the order
    /// already has a key ([`KeyCreation::Exists`], the winner of a race) or the record moved
    /// on ([`KeyCreation::Conflict`]).
    async fn create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError>;
    /// The retention record of (seller, order), deleted ones included.
    async fn retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError>;
    /// The retention records of an order id, for every seller, ordered by seller.
    async fn retention_by_order(&self, order_id: &str) -> Result<Vec<RetentionRecord>, StoreError>;
    /// Writes a record whose `version` is the version read (0: none yet) and bumps it; `false`
    /// (nothing written) if the stored version differs. The state must not be `Deleted`: only
    /// [`Store::shred_order`] deletes.
    async fn put_retention(&self, record: &RetentionRecord) -> Result<bool, StoreError>;
    /// Records not deleted whose [`RetentionRecord::purge_at`] is at or before `now`,
    /// earliest first, at most `limit` (an index range scan in both backends).
    async fn due(&self, now: i64, limit: usize) -> Result<Vec<RetentionRecord>, StoreError>;
    /// Deletes the order's data key, cached responses and pseudonym links, and writes
    /// `tombstone` (state `Deleted`; its `version` is the version read), all atomically and
    /// only if the stored version is still that version: `None` otherwise (another writer or
    /// instance got there first, or the record changed: read again).
    async fn shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError>;
    /// Counts by state, overdue at `now`, live keys, and the `next` records due earliest.
    async fn retention_stats(&self, now: i64, next: usize) -> Result<RetentionStats, StoreError>;
    /// Caches a sealed response, replacing one with the same (seller, cache id); `false`
    /// (nothing stored) if the order's data key is no longer `entry.key_id` (shredded).
    async fn put_cached(&self, entry: &CacheEntry) -> Result<bool, StoreError>;
    /// A cached response, if present and not expired at `now`.
    async fn cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError>;
    /// Every cached response of (seller, order), expired or not.
    async fn cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError>;
    /// Deletes cached responses expired at `now` (Redis expires them by TTL: returns 0).
    async fn purge_expired_cache(&self, now: i64) -> Result<u64, StoreError>;
    /// Links a buyer e-mail pseudonym to (seller, order), for data-subject requests; `false`
    /// (nothing linked) if the order has no live data key (never cached, or shredded): a link
    /// is deleted with the order's key, so it must not outlive it.
    async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError>;
    /// The (seller, order id) pairs linked to a pseudonym, ordered.
    async fn orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// The pseudonyms linked to (seller, order), ordered.
    async fn pseudonyms_of(&self, seller: &str, order_id: &str) -> Result<Vec<String>, StoreError>;
    /// Makes deletions physical: SQLite checkpoints and truncates its WAL (old page images
    /// would otherwise keep deleted bytes); Redis has nothing to do.
    async fn compact(&self) -> Result<(), StoreError>;
    /// A number that changes with every write to tools or sellers, by any process or
    /// instance. Caches compare it before serving an entry, so a revocation applies at the next
    /// request everywhere.
    async fn access_version(&self) -> Result<u64, StoreError>;
    /// Asks the backend whether it answers (readiness); never served from a cache.
    async fn ping(&self) -> Result<(), StoreError>;
}

// === impl Region ===

impl Region {
    /// Lowercase name as used in config and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Na => "na",
            Region::Eu => "eu",
            Region::Fe => "fe",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "na" => Ok(Region::Na),
            "eu" => Ok(Region::Eu),
            "fe" => Ok(Region::Fe),
            other => Err(format!("unknown region {other:?} (expected na, eu or fe)")),
        }
    }
}

// === impl SellerStatus ===

impl SellerStatus {
    /// Lowercase name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SellerStatus::Active => "active",
            SellerStatus::Deauthorized => "deauthorized",
        }
    }
}

impl FromStr for SellerStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(SellerStatus::Active),
            "deauthorized" => Ok(SellerStatus::Deauthorized),
            other => Err(format!("unknown seller status {other:?}")),
        }
    }
}

// === impl SellerRecord ===

impl fmt::Debug for SellerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The sealed token is ciphertext, but there is no reason to print it either.
        f.debug_struct("SellerRecord")
            .field("selling_partner_id", &self.selling_partner_id)
            .field("region", &self.region)
            .field("marketplaces", &self.marketplaces)
            .field("refresh_token_sealed", &"**REDACTED**")
            .field("authorized_at", &self.authorized_at)
            .field("reauthorize_by", &self.reauthorize_by)
            .field("status", &self.status)
            .finish()
    }
}

// === impl ClientRecord ===

impl ClientRecord {
    /// Whether this client may act for `selling_partner_id`.
    pub fn allows_seller(&self, selling_partner_id: &str) -> bool {
        self.sellers
            .iter()
            .any(|s| s == "*" || s == selling_partner_id)
    }

    /// Whether this client may act for every seller (needed for application-wide operations).
    pub fn allows_all_sellers(&self) -> bool {
        self.sellers.iter().any(|s| s == "*")
    }
}

#[cfg(test)]
pub(crate) mod tests;
