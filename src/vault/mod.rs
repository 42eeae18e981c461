//! The vault: per-order data keys, retention records, the PII cache, the deletion scheduler
//! and data-subject requests. Buyer PII is kept no longer than 30 days after delivery.
//!
//! **Invariant:** every order whose PII the gateway caches or hands out encrypted has a
//! retention record with a due date, and its PII exists only as ciphertext under the order's
//! own data key, which the store keeps only wrapped by the master key. At the due date the
//! scheduler ([`spawn_scheduler`], one pass is [`Vault::run_due`]) deletes the cached PII and
//! the data key together (crypto-shredding: every `encrypt`ed copy a tool still holds becomes
//! unreadable), then makes the deletion physical ([`Store::compact`]).
//!
//! # When an order is due
//! `due = delivered_at + max_days` once delivery is known (a delivery event, order data, or
//! ops input; the earliest wins); until then `latest delivery estimate + max_days` (the estimate
//! may move either way); with neither, `first seen + max_days`, an upper bound until delivery
//! information arrives. A cancelled order is due `cancelled_grace` after the cancellation is
//! seen, if that is earlier. A legal hold (reason, until, who) postpones deletion to its end.
//!
//! # Several instances
//! There is no lease: every write is one conditional, atomic store operation on a versioned
//! record (see [`Store`]), so any number of instances may run passes at once; exactly one of
//! them shreds a given order and emits its [`VaultEvent::Deleted`].
//!
//! # Audit
//! Deletions, holds, erasures, exports and delivery events are reported to the [`AuditSink`]
//! given at construction. Events never carry PII values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::crypto::{self, CryptoError, DataKey, MasterKey};
use crate::store::{
    DeletionReason, DeliverySource, KeyCreation, LegalHold, OrderKey, RetentionRecord,
    RetentionState, Store, StoreError,
};

pub mod config;
mod links;
mod scheduler;

pub use config::{RawRetention, RetentionConfig};
pub use scheduler::spawn_scheduler;

/// Records shredded per store query in a pass.
const BATCH: usize = 100;

/// Retries of a read-modify-write when another writer changed the record in between.
const RETRIES: usize = 16;

/// Records listed under "next due" in a report.
const REPORT_NEXT: usize = 10;

/// Why a vault operation failed. Messages name the failure, never a PII value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing, opening or (un)wrapping a key failed.
    #[error("vault crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The gateway holds no retention record for this order.
    #[error("no retention record for this order")]
    UnknownOrder,
    /// The order's PII is already deleted.
    #[error("the order's PII is already deleted")]
    AlreadyDeleted,
    /// The order is under legal hold: it cannot be erased until the hold is released or ends.
    #[error("the order is under legal hold")]
    Held,
    /// A legal hold needs a reason and an end in the future.
    #[error("invalid legal hold: {0}")]
    InvalidHold(&'static str),
    /// Other writers kept changing the record; try again.
    #[error("the retention record kept changing under concurrent writers")]
    Contention,
}

/// What the pipeline learned about an order from a response (or an event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFacts {
    /// Amazon's order id.
    pub order_id: String,
    /// The order status as Amazon spells it (`Shipped`, `Canceled`, ...).
    pub status: Option<String>,
    /// The latest delivery estimate (`LatestDeliveryDate`).
    pub latest_delivery: Option<OffsetDateTime>,
    /// When the order was delivered, if the data says so.
    pub delivered_at: Option<OffsetDateTime>,
}

/// The order a data key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRef {
    /// The seller.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
}

/// Why an operator erases an order now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseReason {
    /// A data-subject (erasure) request.
    DataSubjectRequest,
    /// An operator's decision.
    Operator,
}

/// One order whose PII was deleted (by the scheduler or an erasure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erased {
    /// The seller.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
    /// The destroyed data key's id, if the order had one.
    pub key_id: Option<String>,
    /// Why.
    pub reason: DeletionReason,
    /// The due date the deletion honoured (RFC 3339).
    pub due: String,
    /// When it was deleted (RFC 3339).
    pub at: String,
    /// Cached responses deleted.
    pub cache_entries: u64,
    /// Buyer pseudonym links deleted.
    pub pseudonyms: u64,
}

/// Something the audit log must record. Never carries PII values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultEvent {
    /// The scheduler deleted an order's cached PII and destroyed its data key.
    Deleted {
        /// The seller.
        seller: String,
        /// Amazon's order id.
        order_id: String,
        /// The destroyed key's id.
        key_id: Option<String>,
        /// Why (retention due, cancelled, hold expired).
        reason: DeletionReason,
        /// The due date honoured.
        due: OffsetDateTime,
        /// Cached responses deleted.
        cache_entries: u64,
    },
    /// A legal hold was set.
    Held {
        /// The seller.
        seller: String,
        /// Amazon's order id.
        order_id: String,
        /// Why.
        reason: String,
        /// Until when.
        until: OffsetDateTime,
        /// Who set it.
        by: String,
    },
    /// A legal hold was released.
    Released {
        /// The seller.
        seller: String,
        /// Amazon's order id.
        order_id: String,
        /// Who released it.
        by: String,
    },
    /// An order was erased on request.
    Erased {
        /// The seller.
        seller: String,
        /// Amazon's order id.
        order_id: String,
        /// The destroyed key's id.
        key_id: Option<String>,
        /// Why.
        reason: EraseReason,
        /// Cached responses deleted.
        cache_entries: u64,
        /// Who erased it (an admin token's holder, or `cli`).
        by: String,
    },
    /// What the gateway holds on a buyer was exported (decrypted) for the controller.
    Exported {
        /// The (seller, order) pairs exported.
        orders: Vec<OrderRef>,
        /// Whether the request named a buyer pseudonym (`true`) or an order id.
        by_pseudonym: bool,
        /// Who exported it (an admin token's holder, or `cli`).
        by: String,
    },
    /// An order's delivery became known.
    Delivered {
        /// The seller.
        seller: String,
        /// Amazon's order id.
        order_id: String,
        /// When it was delivered.
        at: OffsetDateTime,
        /// Where the date came from.
        source: DeliverySource,
        /// The new due date.
        due: OffsetDateTime,
    },
}

/// Receives [`VaultEvent`]s (the audit log, once wired).
pub type AuditSink = Arc<dyn Fn(VaultEvent) + Send + Sync>;

/// Where time comes from (tests move it by hand).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// A clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

/// Everything the gateway holds on one (seller, order), decrypted, for the controller.
#[derive(Clone, Serialize)]
pub struct OrderExport {
    /// The seller.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
    /// active, held or deleted.
    pub state: RetentionState,
    /// When the PII is (or was) due for deletion (RFC 3339).
    pub due: String,
    /// When the order was delivered, if known (RFC 3339).
    pub delivered_at: Option<String>,
    /// The legal hold, if any.
    pub legal_hold: Option<LegalHold>,
    /// Buyer e-mail pseudonyms linked to the order.
    pub pseudonyms: Vec<String>,
    /// Cached responses, decrypted (JSON where they parse, else text).
    pub cached_responses: Vec<serde_json::Value>,
}

/// The answer to a data-subject access request.
#[derive(Clone, Serialize)]
pub struct Export {
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// Every order of the subject.
    pub orders: Vec<OrderExport>,
}

/// One upcoming deletion in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueEntry {
    /// The seller.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
    /// active or held.
    pub state: RetentionState,
    /// When the scheduler deletes it (RFC 3339): the due date, or a hold's end.
    pub purge_at: String,
    /// What the due date rests on: `delivered`, `delivery_estimate`, `first_seen`, `cancelled`.
    pub basis: &'static str,
}

/// Retention evidence for auditors (`spgate vault report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// The configured retention after delivery, in days (at most 30).
    pub max_days: u32,
    /// Records whose PII may be held.
    pub active: u64,
    /// Records under legal hold.
    pub held: u64,
    /// Records whose PII is deleted (kept as evidence).
    pub deleted: u64,
    /// Records past their deletion time and not yet deleted: 0 when the scheduler keeps up.
    pub overdue: u64,
    /// Live data keys.
    pub live_keys: u64,
    /// The next deletions, earliest first.
    pub next_due: Vec<DueEntry>,
}

/// The vault. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    config: RetentionConfig,
    clock: Arc<dyn Clock>,
    audit: AuditSink,
    /// Wakes the scheduler when a due date moved earlier.
    wake: tokio::sync::Notify,
    /// A deletion happened but [`Store::compact`] failed: retry on the next pass.
    compact_pending: AtomicBool,
    /// Pseudonym links already written by this process.
    links: links::Links,
}

// === impl Vault ===

impl Vault {
    /// A vault over `store`; keys are wrapped by `master`; events go to `audit`.
    pub fn new(
        store: Arc<dyn Store>,
        master: Arc<MasterKey>,
        config: RetentionConfig,
        clock: Arc<dyn Clock>,
        audit: AuditSink,
    ) -> Vault {
        Vault {
            inner: Arc::new(Inner {
                store,
                master,
                config,
                clock,
                audit,
                wake: tokio::sync::Notify::new(),
                compact_pending: AtomicBool::new(false),
                links: links::Links::default(),
            }),
        }
    }

    /// The retention settings.
    pub fn config(&self) -> &RetentionConfig {
        &self.inner.config
    }

    /// The vault's clock's time.
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    /// Wakes the scheduler if `purge_at` comes before its next regular wake-up.
    fn nudge(&self, purge_at: i64) {
        let horizon =
            self.now().unix_timestamp() + self.inner.config.scan_interval.as_secs() as i64;
        if purge_at <= horizon {
            self.inner.wake.notify_one();
        }
    }

    fn emit(&self, event: VaultEvent) {
        (self.inner.audit)(event);
    }

    /// The order's data key, creating it and the order's retention record if needed (the
    /// first writer wins a race; every caller gets the same key). A new record's due date is
    /// `now + max_days` until delivery information arrives through [`Vault::observe`] or
    /// [`Vault::delivered`]. An order deleted before and seen again gets a fresh key; if its
    /// known delivery puts it past due, the next pass deletes it again.
    pub async fn order_key(&self, seller: &str, order_id: &str) -> Result<DataKey, VaultError> {
        for _ in 0..RETRIES {
            if let Some(k) = self.store().order_key(seller, order_id).await? {
                return self.unwrap(&k);
            }
            let now = self.now().unix_timestamp();
            let mut rec = match self.store().retention(seller, order_id).await? {
                Some(r) => r,
                None => self.fresh_record(seller, order_id, now),
            };
            if rec.state == RetentionState::Deleted {
                rec.first_seen = now;
                rec.deleted_at = None;
                rec.deletion_reason = None;
            }
            let key = DataKey::generate()?;
            rec.key_id = Some(key.id().to_string());
            rec.state = state_of(&rec);
            rec.due_at = self.due_of(&rec);
            let stored = OrderKey {
                key_id: key.id().to_string(),
                seller: seller.to_string(),
                order_id: order_id.to_string(),
                wrapped: key.wrap(&self.inner.master)?,
                created_at: now,
            };
            match self.store().create_order_key(&stored, &rec).await? {
                KeyCreation::Created => {
                    // An order seen again after its deletion, whose known delivery already puts
                    // it past due, is deleted by the pass this wakes, not at the scheduler's next
                    // regular wake-up (until then reports would count it overdue).
                    self.nudge(rec.purge_at());
                    return Ok(key);
                }
                KeyCreation::Exists(winner) => return self.unwrap(&winner),
                KeyCreation::Conflict => continue,
            }
        }
        Err(VaultError::Contention)
    }

    /// The retention record of (seller, order), deleted ones included.
    pub async fn record(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, VaultError> {
        Ok(self.store().retention(seller, order_id).await?)
    }

    /// A data key by id with its order, for reveal; `None` once the order is shredded.
    pub async fn key_by_id(&self, key_id: &str) -> Result<Option<(OrderRef, DataKey)>, VaultError> {
        let Some(k) = self.store().order_key_by_id(key_id).await? else {
            return Ok(None);
        };
        let key = self.unwrap(&k)?;
        Ok(Some((
            OrderRef {
                seller: k.seller,
                order_id: k.order_id,
            },
            key,
        )))
    }

    /// Applies what a response said about an order (status, delivery estimate, delivery) to
    /// its retention record and recomputes the due date. Orders without a record (no PII held)
    /// and deleted ones are left alone: call it after [`Vault::order_key`].
    pub async fn observe(&self, seller: &str, facts: &OrderFacts) -> Result<(), VaultError> {
        for _ in 0..RETRIES {
            let Some(mut rec) = self.store().retention(seller, &facts.order_id).await? else {
                return Ok(());
            };
            if rec.state == RetentionState::Deleted {
                return Ok(());
            }
            let before = rec.clone();
            let now = self.now().unix_timestamp();
            if let Some(status) = &facts.status {
                if is_cancelled(status) && rec.cancelled_at.is_none() {
                    rec.cancelled_at = Some(now);
                }
                rec.status = Some(status.clone());
            }
            if let Some(estimate) = facts.latest_delivery {
                rec.latest_delivery = Some(estimate.unix_timestamp());
            }
            if let Some(at) = facts.delivered_at {
                set_delivered(
                    &mut rec,
                    at.unix_timestamp().min(now),
                    DeliverySource::OrderData,
                );
            }
            rec.due_at = self.due_of(&rec);
            if rec == before {
                return Ok(());
            }
            if self.store().put_retention(&rec).await? {
                if rec.purge_at() < before.purge_at() {
                    self.nudge(rec.purge_at());
                }
                return Ok(());
            }
        }
        Err(VaultError::Contention)
    }

    /// Records an order's delivery (`POST /admin/orders/{orderId}/delivered`, ops input). A
    /// date in the future counts as now; an earlier known delivery wins. Creates the record if
    /// the order has none yet, so PII cached later gets the right due date.
    pub async fn delivered(
        &self,
        seller: &str,
        order_id: &str,
        at: OffsetDateTime,
        source: DeliverySource,
    ) -> Result<(), VaultError> {
        for _ in 0..RETRIES {
            let now = self.now().unix_timestamp();
            let mut rec = match self.store().retention(seller, order_id).await? {
                Some(r) if r.state == RetentionState::Deleted => {
                    return Err(VaultError::AlreadyDeleted)
                }
                Some(r) => r,
                None => self.fresh_record(seller, order_id, now),
            };
            set_delivered(&mut rec, at.unix_timestamp().min(now), source);
            rec.due_at = self.due_of(&rec);
            if self.store().put_retention(&rec).await? {
                self.nudge(rec.purge_at());
                self.emit(VaultEvent::Delivered {
                    seller: seller.to_string(),
                    order_id: order_id.to_string(),
                    at: datetime(rec.delivered_at.unwrap_or(now)),
                    source: rec.delivery_source.unwrap_or(source),
                    due: datetime(rec.due_at),
                });
                return Ok(());
            }
        }
        Err(VaultError::Contention)
    }

    /// A cached response, decrypted: `None` on a miss, when the cache is off, once expired,
    /// or once the order's key is destroyed.
    pub async fn cache_get(
        &self,
        seller: &str,
        cache_key: &str,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        if !self.inner.config.cache_enabled {
            return Ok(None);
        }
        let id = cache_id(cache_key);
        let now = self.now().unix_timestamp();
        let Some(entry) = self.store().cached(seller, &id, now).await? else {
            return Ok(None);
        };
        let Some(k) = self.store().order_key(seller, &entry.order_id).await? else {
            return Ok(None);
        };
        if k.key_id != entry.key_id {
            return Ok(None);
        }
        let key = self.unwrap(&k)?;
        match key.open(
            &entry.sealed,
            cache_aad(seller, &entry.order_id, &id).as_bytes(),
        ) {
            Ok(body) => Ok(Some(body.expose().clone())),
            Err(e) => {
                tracing::warn!(error = %e, "A cached response did not open; treated as a miss.");
                Ok(None)
            }
        }
    }

    /// Caches a response of one order, sealed under the order's data key, for `cache_ttl`
    /// but never past the order's due date. Nothing is cached when the cache is off or the
    /// order is already due.
    pub async fn cache_put(
        &self,
        seller: &str,
        order_id: &str,
        cache_key: &str,
        body: &[u8],
    ) -> Result<(), VaultError> {
        if !self.inner.config.cache_enabled {
            return Ok(());
        }
        let key = self.order_key(seller, order_id).await?;
        let now = self.now().unix_timestamp();
        let Some(rec) = self.store().retention(seller, order_id).await? else {
            return Ok(());
        };
        let expires_at = (now + self.inner.config.cache_ttl.as_secs() as i64).min(rec.due_at);
        if expires_at <= now || rec.state == RetentionState::Deleted {
            return Ok(());
        }
        let id = cache_id(cache_key);
        let sealed = key.seal(body, cache_aad(seller, order_id, &id).as_bytes())?;
        let entry = crate::store::CacheEntry {
            seller: seller.to_string(),
            cache_id: id,
            order_id: order_id.to_string(),
            key_id: key.id().to_string(),
            sealed,
            stored_at: now,
            expires_at,
        };
        // `false`: the key was destroyed meanwhile; nothing is stored, which is right.
        self.store().put_cached(&entry).await?;
        Ok(())
    }

    /// Links a buyer e-mail pseudonym to an order, for data-subject requests by pseudonym.
    /// Creates the order's key and record if needed, so the link has a deletion date. `key`: the
    /// order's key as the caller just read it ([`Vault::order_key`]), if it has it. A link this
    /// process already wrote under the order's current key is not written again.
    pub async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
        key: Option<&DataKey>,
    ) -> Result<(), VaultError> {
        let links = &self.inner.links;
        let mut known = key.map(|k| k.id().to_string());
        for _ in 0..RETRIES {
            let key_id = match known.take() {
                Some(id) => id,
                None => self.order_key(seller, order_id).await?.id().to_string(),
            };
            if links.written(seller, order_id, pseudonym, &key_id) {
                return Ok(());
            }
            if self
                .store()
                .link_pseudonym(seller, order_id, pseudonym)
                .await?
            {
                links.note(seller, order_id, pseudonym, &key_id);
                return Ok(());
            }
        }
        Err(VaultError::Contention)
    }

    /// Sets a legal hold: the order's PII stays until `until` even past its due date.
    pub async fn hold(
        &self,
        seller: &str,
        order_id: &str,
        reason: &str,
        until: OffsetDateTime,
        by: &str,
    ) -> Result<RetentionRecord, VaultError> {
        if reason.trim().is_empty() {
            return Err(VaultError::InvalidHold("a reason is required"));
        }
        for _ in 0..RETRIES {
            let now = self.now().unix_timestamp();
            if until.unix_timestamp() <= now {
                return Err(VaultError::InvalidHold("until must be in the future"));
            }
            let mut rec = self.record_for_change(seller, order_id).await?;
            rec.hold = Some(LegalHold {
                reason: reason.trim().to_string(),
                until: until.unix_timestamp(),
                by: by.to_string(),
                at: now,
            });
            rec.state = RetentionState::Held;
            if self.store().put_retention(&rec).await? {
                self.emit(VaultEvent::Held {
                    seller: seller.to_string(),
                    order_id: order_id.to_string(),
                    reason: reason.trim().to_string(),
                    until,
                    by: by.to_string(),
                });
                rec.version += 1;
                return Ok(rec);
            }
        }
        Err(VaultError::Contention)
    }

    /// Releases a legal hold; the order is deleted at the next pass if it is due.
    pub async fn release(
        &self,
        seller: &str,
        order_id: &str,
        by: &str,
    ) -> Result<RetentionRecord, VaultError> {
        for _ in 0..RETRIES {
            let mut rec = self.record_for_change(seller, order_id).await?;
            if rec.hold.is_none() {
                return Ok(rec);
            }
            rec.hold = None;
            rec.state = RetentionState::Active;
            if self.store().put_retention(&rec).await? {
                self.nudge(rec.purge_at());
                self.emit(VaultEvent::Released {
                    seller: seller.to_string(),
                    order_id: order_id.to_string(),
                    by: by.to_string(),
                });
                rec.version += 1;
                return Ok(rec);
            }
        }
        Err(VaultError::Contention)
    }

    /// Erases an order's PII now (data key, cached responses, pseudonym links), for one seller
    /// or every seller holding that order id. Refused, erasing nothing, while a legal hold
    /// runs. Already deleted orders are skipped; an order the gateway never held is
    /// [`VaultError::UnknownOrder`]. `by` (who asked) is recorded with each erasure.
    pub async fn erase(
        &self,
        seller: Option<&str>,
        order_id: &str,
        reason: EraseReason,
        by: &str,
    ) -> Result<Vec<Erased>, VaultError> {
        let records: Vec<RetentionRecord> = match seller {
            Some(s) => self
                .store()
                .retention(s, order_id)
                .await?
                .into_iter()
                .collect(),
            None => self.store().retention_by_order(order_id).await?,
        };
        self.erase_records(records, reason, by).await
    }

    /// Erases every order linked to a buyer e-mail pseudonym (nothing if one is under hold).
    pub async fn erase_pseudonym(
        &self,
        pseudonym: &str,
        reason: EraseReason,
        by: &str,
    ) -> Result<Vec<Erased>, VaultError> {
        let mut records = Vec::new();
        for (seller, order_id) in self.store().orders_by_pseudonym(pseudonym).await? {
            records.extend(self.store().retention(&seller, &order_id).await?);
        }
        self.erase_records(records, reason, by).await
    }

    async fn erase_records(
        &self,
        records: Vec<RetentionRecord>,
        reason: EraseReason,
        by: &str,
    ) -> Result<Vec<Erased>, VaultError> {
        if records.is_empty() {
            return Err(VaultError::UnknownOrder);
        }
        let now = self.now().unix_timestamp();
        if records.iter().any(|r| {
            r.state != RetentionState::Deleted && r.hold.as_ref().is_some_and(|h| h.until > now)
        }) {
            return Err(VaultError::Held);
        }
        let why = match reason {
            EraseReason::DataSubjectRequest => DeletionReason::DataSubjectRequest,
            EraseReason::Operator => DeletionReason::Operator,
        };
        let mut out = Vec::new();
        for rec in records {
            if let Some(erased) = self.shred_current(rec, why, now).await? {
                self.emit(VaultEvent::Erased {
                    seller: erased.seller.clone(),
                    order_id: erased.order_id.clone(),
                    key_id: erased.key_id.clone(),
                    reason,
                    cache_entries: erased.cache_entries,
                    by: by.to_string(),
                });
                out.push(erased);
            }
        }
        self.compact().await;
        Ok(out)
    }

    /// Everything the gateway holds on an order (for every seller), decrypted. `by` (who
    /// asked) is recorded with the export.
    pub async fn export(&self, order_id: &str, by: &str) -> Result<Export, VaultError> {
        let records = self.store().retention_by_order(order_id).await?;
        if records.is_empty() {
            return Err(VaultError::UnknownOrder);
        }
        self.export_records(records, false, by).await
    }

    /// Everything the gateway holds on the orders linked to a buyer e-mail pseudonym.
    pub async fn export_pseudonym(&self, pseudonym: &str, by: &str) -> Result<Export, VaultError> {
        let mut records = Vec::new();
        for (seller, order_id) in self.store().orders_by_pseudonym(pseudonym).await? {
            records.extend(self.store().retention(&seller, &order_id).await?);
        }
        if records.is_empty() {
            return Err(VaultError::UnknownOrder);
        }
        self.export_records(records, true, by).await
    }

    /// Retention evidence: counts by state, overdue, the next deletions.
    pub async fn report(&self) -> Result<Report, VaultError> {
        let now = self.now();
        let stats = self
            .store()
            .retention_stats(now.unix_timestamp(), REPORT_NEXT)
            .await?;
        Ok(Report {
            generated_at: rfc3339(now.unix_timestamp()),
            max_days: self.inner.config.max_days,
            active: stats.active,
            held: stats.held,
            deleted: stats.deleted,
            overdue: stats.overdue,
            live_keys: stats.keys,
            next_due: stats
                .next
                .iter()
                .map(|r| DueEntry {
                    seller: r.seller.clone(),
                    order_id: r.order_id.clone(),
                    state: r.state,
                    purge_at: rfc3339(r.purge_at()),
                    basis: self.basis_of(r),
                })
                .collect(),
        })
    }

    /// One scheduler pass at `now`: shreds every order whose deletion time has come, purges
    /// expired cache entries, then makes the deletions physical. Idempotent; safe to run on
    /// several instances at once (each order is shredded once, by one of them).
    pub async fn run_due(&self, now: OffsetDateTime) -> Result<Vec<Erased>, VaultError> {
        let ts = now.unix_timestamp();
        let mut out = Vec::new();
        loop {
            let batch = self.store().due(ts, BATCH).await?;
            let full = batch.len() == BATCH;
            let mut progressed = false;
            for rec in batch {
                let reason = self.deletion_reason(&rec);
                if let Some(erased) = self.shred_if_due(rec, reason, ts).await? {
                    self.emit(VaultEvent::Deleted {
                        seller: erased.seller.clone(),
                        order_id: erased.order_id.clone(),
                        key_id: erased.key_id.clone(),
                        reason,
                        due: parse_rfc3339(&erased.due).unwrap_or(now),
                        cache_entries: erased.cache_entries,
                    });
                    out.push(erased);
                    progressed = true;
                }
            }
            if !(full && progressed) {
                break;
            }
        }
        let purged = self.store().purge_expired_cache(ts).await?;
        if !out.is_empty() || purged > 0 || self.inner.compact_pending.load(Ordering::Relaxed) {
            self.compact().await;
        }
        Ok(out)
    }

    /// When the scheduler should look again: the earliest deletion time still pending.
    pub async fn next_due(&self) -> Result<Option<OffsetDateTime>, VaultError> {
        Ok(self
            .store()
            .due(i64::MAX / 2, 1)
            .await?
            .first()
            .map(|r| datetime(r.purge_at())))
    }

    /// Completes when a due date may have moved earlier (the scheduler waits on it).
    pub async fn changed(&self) {
        self.inner.wake.notified().await;
    }

    /// Makes deletions physical. A failure (a reader of another process held the WAL for
    /// seconds) is logged and retried at the next pass: the deletion itself is committed.
    async fn compact(&self) {
        match self.store().compact().await {
            Ok(()) => self.inner.compact_pending.store(false, Ordering::Relaxed),
            Err(e) => {
                self.inner.compact_pending.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, "Compacting the store after a deletion failed; retrying at the next pass.");
            }
        }
    }

    /// Shreds `rec` if it is still due at `now`, re-reading it when it changed meanwhile.
    async fn shred_if_due(
        &self,
        mut rec: RetentionRecord,
        reason: DeletionReason,
        now: i64,
    ) -> Result<Option<Erased>, VaultError> {
        for _ in 0..RETRIES {
            if rec.state == RetentionState::Deleted || rec.purge_at() > now {
                return Ok(None);
            }
            if let Some(done) = self.shred(&rec, reason, now).await? {
                return Ok(Some(done));
            }
            match self.store().retention(&rec.seller, &rec.order_id).await? {
                Some(r) => rec = r,
                None => return Ok(None),
            }
        }
        Err(VaultError::Contention)
    }

    /// Shreds `rec` whatever its due date (erasure), re-reading it when it changed meanwhile.
    async fn shred_current(
        &self,
        mut rec: RetentionRecord,
        reason: DeletionReason,
        now: i64,
    ) -> Result<Option<Erased>, VaultError> {
        for _ in 0..RETRIES {
            if rec.state == RetentionState::Deleted {
                return Ok(None);
            }
            if rec.hold.as_ref().is_some_and(|h| h.until > now) {
                return Err(VaultError::Held);
            }
            if let Some(done) = self.shred(&rec, reason, now).await? {
                return Ok(Some(done));
            }
            match self.store().retention(&rec.seller, &rec.order_id).await? {
                Some(r) => rec = r,
                None => return Ok(None),
            }
        }
        Err(VaultError::Contention)
    }

    async fn shred(
        &self,
        rec: &RetentionRecord,
        reason: DeletionReason,
        now: i64,
    ) -> Result<Option<Erased>, VaultError> {
        let mut tomb = rec.clone();
        tomb.state = RetentionState::Deleted;
        tomb.deleted_at = Some(now);
        tomb.deletion_reason = Some(reason);
        let Some(done) = self.store().shred_order(&tomb).await? else {
            return Ok(None);
        };
        self.inner.links.forget_order(&rec.seller, &rec.order_id);
        Ok(Some(Erased {
            seller: rec.seller.clone(),
            order_id: rec.order_id.clone(),
            key_id: done.key_id.or_else(|| rec.key_id.clone()),
            reason,
            due: rfc3339(rec.due_at),
            at: rfc3339(now),
            cache_entries: done.cache_entries,
            pseudonyms: done.pseudonyms,
        }))
    }

    async fn export_records(
        &self,
        records: Vec<RetentionRecord>,
        by_pseudonym: bool,
        by: &str,
    ) -> Result<Export, VaultError> {
        let mut orders = Vec::new();
        for rec in records {
            let mut cached_responses = Vec::new();
            if let Some(k) = self.store().order_key(&rec.seller, &rec.order_id).await? {
                let key = self.unwrap(&k)?;
                for entry in self
                    .store()
                    .cached_by_order(&rec.seller, &rec.order_id)
                    .await?
                {
                    if entry.key_id != k.key_id {
                        continue;
                    }
                    let aad = cache_aad(&rec.seller, &rec.order_id, &entry.cache_id);
                    let body = key.open(&entry.sealed, aad.as_bytes())?;
                    let body = body.expose();
                    cached_responses.push(serde_json::from_slice(body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
                    }));
                }
            }
            orders.push(OrderExport {
                pseudonyms: self
                    .store()
                    .pseudonyms_of(&rec.seller, &rec.order_id)
                    .await?,
                seller: rec.seller,
                order_id: rec.order_id,
                state: rec.state,
                due: rfc3339(rec.due_at),
                delivered_at: rec.delivered_at.map(rfc3339),
                legal_hold: rec.hold,
                cached_responses,
            });
        }
        self.emit(VaultEvent::Exported {
            orders: orders
                .iter()
                .map(|o| OrderRef {
                    seller: o.seller.clone(),
                    order_id: o.order_id.clone(),
                })
                .collect(),
            by_pseudonym,
            by: by.to_string(),
        });
        Ok(Export {
            generated_at: rfc3339(self.now().unix_timestamp()),
            orders,
        })
    }

    /// The current record of an order that may still change (not deleted).
    async fn record_for_change(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<RetentionRecord, VaultError> {
        match self.store().retention(seller, order_id).await? {
            None => Err(VaultError::UnknownOrder),
            Some(r) if r.state == RetentionState::Deleted => Err(VaultError::AlreadyDeleted),
            Some(r) => Ok(r),
        }
    }

    fn unwrap(&self, k: &OrderKey) -> Result<DataKey, VaultError> {
        Ok(DataKey::unwrap(&k.key_id, &k.wrapped, &self.inner.master)?)
    }

    fn fresh_record(&self, seller: &str, order_id: &str, now: i64) -> RetentionRecord {
        let mut rec = RetentionRecord {
            seller: seller.to_string(),
            order_id: order_id.to_string(),
            version: 0,
            state: RetentionState::Active,
            key_id: None,
            first_seen: now,
            status: None,
            latest_delivery: None,
            delivered_at: None,
            delivery_source: None,
            cancelled_at: None,
            due_at: now,
            hold: None,
            deleted_at: None,
            deletion_reason: None,
        };
        rec.due_at = self.due_of(&rec);
        rec
    }

    /// The due date the record's facts give (see the module docs).
    fn due_of(&self, rec: &RetentionRecord) -> i64 {
        let keep = i64::from(self.inner.config.max_days) * 86_400;
        let mut due = match (rec.delivered_at, rec.latest_delivery) {
            (Some(delivered), _) => delivered + keep,
            (None, Some(estimate)) => estimate + keep,
            (None, None) => rec.first_seen + keep,
        };
        if let Some(cancelled) = rec.cancelled_at {
            due = due.min(cancelled + self.inner.config.cancelled_grace.as_secs() as i64);
        }
        due
    }

    fn cancelled_first(&self, rec: &RetentionRecord) -> bool {
        rec.cancelled_at
            .is_some_and(|c| c + self.inner.config.cancelled_grace.as_secs() as i64 == rec.due_at)
    }

    fn basis_of(&self, rec: &RetentionRecord) -> &'static str {
        if self.cancelled_first(rec) {
            "cancelled"
        } else if rec.delivered_at.is_some() {
            "delivered"
        } else if rec.latest_delivery.is_some() {
            "delivery_estimate"
        } else {
            "first_seen"
        }
    }

    fn deletion_reason(&self, rec: &RetentionRecord) -> DeletionReason {
        if rec.hold.is_some() {
            DeletionReason::HoldExpired
        } else if self.cancelled_first(rec) {
            DeletionReason::Cancelled
        } else {
            DeletionReason::RetentionDue
        }
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

// === impl Clock ===

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: OffsetDateTime) -> ManualClock {
        ManualClock {
            now: Mutex::new(at),
        }
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl Export, OrderExport ===

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("generated_at", &self.generated_at)
            .field("orders", &self.orders)
            .finish()
    }
}

impl std::fmt::Debug for OrderExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Decrypted PII: counted, never printed.
        f.debug_struct("OrderExport")
            .field("seller", &self.seller)
            .field("order_id", &self.order_id)
            .field("state", &self.state)
            .field("cached_responses", &self.cached_responses.len())
            .finish_non_exhaustive()
    }
}

// === impl Report ===

impl Report {
    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "retention report at {}", self.generated_at);
        let _ = writeln!(out, "retention:  {} days after delivery", self.max_days);
        let _ = writeln!(out, "active:     {}", self.active);
        let _ = writeln!(out, "held:       {}", self.held);
        let _ = writeln!(out, "deleted:    {}", self.deleted);
        let _ = writeln!(out, "live keys:  {}", self.live_keys);
        let _ = writeln!(out, "overdue: {}", self.overdue);
        if !self.next_due.is_empty() {
            let _ = writeln!(out, "next due:");
            for d in &self.next_due {
                let _ = writeln!(
                    out,
                    "  {}  {:<20} {:<22} {:<8} {}",
                    d.purge_at,
                    d.seller,
                    d.order_id,
                    d.state.as_str(),
                    d.basis
                );
            }
        }
        out
    }
}

/// The opaque id a cache key is stored under: request URLs may carry PII (a buyer e-mail
/// filter), so only their hash reaches the store.
fn cache_id(cache_key: &str) -> String {
    crypto::sha256_hex(cache_key.as_bytes())
}

fn cache_aad(seller: &str, order_id: &str, cache_id: &str) -> String {
    format!("spgate-cache\0{seller}\0{order_id}\0{cache_id}")
}

fn state_of(rec: &RetentionRecord) -> RetentionState {
    if rec.hold.is_some() {
        RetentionState::Held
    } else {
        RetentionState::Active
    }
}

fn set_delivered(rec: &mut RetentionRecord, at: i64, source: DeliverySource) {
    if rec.delivered_at.is_none_or(|known| at < known) {
        rec.delivered_at = Some(at);
        rec.delivery_source = Some(source);
    }
}

fn is_cancelled(status: &str) -> bool {
    status.eq_ignore_ascii_case("canceled") || status.eq_ignore_ascii_case("cancelled")
}

fn datetime(ts: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(ts: i64) -> String {
    datetime(ts)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ts.to_string())
}

/// Parses an RFC 3339 date-time.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests;
