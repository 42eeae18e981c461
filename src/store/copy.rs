//! `spgate store copy`: moves an installation's durable state from the embedded store into
//! PostgreSQL, so a single-machine deployment grows into several instances without sellers
//! authorizing again.
//!
//! What is copied: sellers (with their sealed refresh tokens), tools and keys (hashes, revoked
//! ones too), drop-in credentials, invites, per-order data keys, retention records (with their
//! versions and states, tombstones included), the sealed PII cache and pseudonym links. What is
//! not: gateway-issued access tokens, OAuth states and LWA access tokens (short-lived: callers
//! fetch new ones).
//!
//! Idempotent: a row already in the target (same identity) is left as it is, so a copy cut short
//! is run again, and a gateway already serving from the target is not overwritten. Afterwards
//! every source row is looked up in the target by identity and counted; a shortfall fails the
//! command. Values stay sealed: the target must be opened with the same master key (checked by
//! the caller through the key id).

use super::{
    CacheEntry, ClientRecord, DropInRecord, Invite, OrderKey, RetentionRecord, SellerRecord,
};

/// Everything durable one store holds (what [`super::postgres::PostgresStore::import`] takes).
#[derive(Default)]
pub struct Dump {
    /// Sellers.
    pub sellers: Vec<SellerRecord>,
    /// Tools and keys.
    pub clients: Vec<ClientRecord>,
    /// Drop-in credentials.
    pub drop_ins: Vec<DropInRecord>,
    /// Invites.
    pub invites: Vec<Invite>,
    /// Per-order data keys.
    pub order_keys: Vec<OrderKey>,
    /// Retention records, tombstones included.
    pub retention: Vec<RetentionRecord>,
    /// Sealed cached responses.
    pub cache: Vec<CacheEntry>,
    /// (pseudonym, seller, order id) links.
    pub pseudonyms: Vec<(String, String, String)>,
}

/// Per kind of record: how many the source holds, how many the copy inserted, and how many the
/// target holds afterwards (by the source rows' identities).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Rows in the source.
    pub source: u64,
    /// Rows inserted now (the rest were there already).
    pub inserted: u64,
    /// Source rows found in the target after the copy.
    pub found: u64,
}

/// The outcome of a copy, one line per kind of record.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// (kind, counts), in copy order.
    pub kinds: Vec<(&'static str, Counted)>,
}

impl CopyReport {
    /// Whether every source row is in the target.
    pub fn complete(&self) -> bool {
        self.kinds.iter().all(|(_, c)| c.found == c.source)
    }
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<12} {:>8} {:>9} {:>9}",
            "kind", "source", "inserted", "in target"
        )?;
        for (kind, c) in &self.kinds {
            writeln!(
                f,
                "{kind:<12} {:>8} {:>9} {:>9}",
                c.source, c.inserted, c.found
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Dump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: the records hold sealed secrets.
        f.debug_struct("Dump")
            .field("sellers", &self.sellers.len())
            .field("clients", &self.clients.len())
            .field("drop_ins", &self.drop_ins.len())
            .field("invites", &self.invites.len())
            .field("order_keys", &self.order_keys.len())
            .field("retention", &self.retention.len())
            .field("cache", &self.cache.len())
            .field("pseudonyms", &self.pseudonyms.len())
            .finish()
    }
}

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] super::StoreError),
    /// This pair of backends is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// The two configs seal with different master keys: the copied values would be unreadable.
    #[error("the master keys differ (source {from:?}, target {to:?}): both configs must use the same [keys]")]
    MasterKey {
        /// The source's key id.
        from: String,
        /// The target's key id.
        to: String,
    },
    /// After the copy, source rows are missing from the target.
    #[error("the target lacks rows of the source after the copy (a row with the same identity but other content, e.g. a newer data key):\n{0}")]
    Incomplete(CopyReport),
}

/// Copies the store of `from` into the PostgreSQL store of `to` (migrating its schema first),
/// then verifies the counts. Embedded sources only (a Redis source is refused, and said so).
pub async fn run(
    from: &crate::config::Config,
    to: &crate::config::Config,
) -> Result<CopyReport, CopyError> {
    use crate::config::StoreConfig;
    let (from_key, to_key) = (from.master_key.current_id(), to.master_key.current_id());
    if from_key != to_key {
        return Err(CopyError::MasterKey {
            from: from_key.to_string(),
            to: to_key.to_string(),
        });
    }
    let StoreConfig::Postgres(target) = &to.store else {
        return Err(CopyError::Unsupported(
            "the target config's [store] must be type = \"postgres\"".into(),
        ));
    };
    let dump = match &from.store {
        StoreConfig::Embedded { data_dir } => {
            let source = super::embedded::EmbeddedStore::open(data_dir)?;
            tokio::task::spawn_blocking(move || source.dump())
                .await
                .map_err(|e| super::StoreError::Task(e.to_string()))??
        }
        StoreConfig::Redis { .. } => {
            return Err(CopyError::Unsupported(
                "copying from a Redis store is not supported by this version: only an embedded store can be copied".into(),
            ))
        }
        StoreConfig::Postgres(_) => {
            return Err(CopyError::Unsupported(
                "the source is already PostgreSQL (use pg_dump to move a database)".into(),
            ))
        }
    };
    let target = super::postgres::PostgresStore::connect(target).await?;
    let report = target.import(&dump).await?;
    if !report.complete() {
        return Err(CopyError::Incomplete(report));
    }
    Ok(report)
}
