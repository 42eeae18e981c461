//! Records of the vault (per-order data keys, retention records, the PII cache) as the
//! [`Store`](super::Store) keeps them.
//!
//! **Invariant:** nothing here holds buyer PII in clear. Data keys are stored wrapped by the
//! master key, cached responses sealed under their order's data key, buyer e-mails only as
//! pseudonyms. Times are unix seconds on the caller's clock, so tests can move time.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One order's data key, wrapped by the master key ([`crate::crypto::DataKey::wrap`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderKey {
    /// The key id (`k` + 16 hex digits); appears in field envelopes, not secret.
    pub key_id: String,
    /// The seller the order belongs to.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
    /// The key sealed by the master key with AAD `data_key:<key id>`.
    pub wrapped: String,
    /// Creation time.
    pub created_at: i64,
}

/// Where a delivery date came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverySource {
    /// A delivery event (`POST /admin/orders/{orderId}/delivered`, a carrier integration).
    Event,
    /// Order data seen through the gateway (e.g. an order status of delivered).
    OrderData,
    /// An operator's input.
    Ops,
}

/// Where a retention record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionState {
    /// PII may be held; it is deleted at the due date.
    Active,
    /// Under legal hold: deleted no earlier than the hold's end.
    Held,
    /// The order's data key and cached PII are gone; the record stays as evidence.
    Deleted,
}

/// Why an order's PII was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionReason {
    /// The retention period ended (delivery + the configured days, or the default bound).
    RetentionDue,
    /// The order was cancelled (due at once, or after the configured grace).
    Cancelled,
    /// A legal hold ended after the order was already due.
    HoldExpired,
    /// A data-subject request (`spgate vault erase`).
    DataSubjectRequest,
    /// An operator erased it.
    Operator,
}

/// A legal hold: the order's PII is kept until `until` despite its due date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    /// Why (free text, required; never buyer PII).
    pub reason: String,
    /// End of the hold.
    pub until: i64,
    /// Who set it (admin token holder).
    pub by: String,
    /// When it was set.
    pub at: i64,
}

/// The retention record of one (seller, order): every order whose PII the gateway caches or
/// hands out encrypted has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRecord {
    /// The seller.
    pub seller: String,
    /// Amazon's order id.
    pub order_id: String,
    /// Optimistic-concurrency version: a write names the version it read (0: none) and the
    /// store bumps it; a stale write changes nothing.
    pub version: u64,
    /// Where the record stands.
    pub state: RetentionState,
    /// The order's data key id (kept after deletion, as evidence of which key was destroyed).
    pub key_id: Option<String>,
    /// When the gateway first held PII of the order.
    pub first_seen: i64,
    /// The last order status seen (e.g. `Shipped`, `Canceled`).
    pub status: Option<String>,
    /// The latest delivery estimate seen (e.g. `LatestDeliveryDate`).
    pub latest_delivery: Option<i64>,
    /// When the order was delivered, once known.
    pub delivered_at: Option<i64>,
    /// Where [`RetentionRecord::delivered_at`] came from.
    pub delivery_source: Option<DeliverySource>,
    /// When the order was first seen cancelled.
    pub cancelled_at: Option<i64>,
    /// When the PII must be gone (without a hold).
    pub due_at: i64,
    /// A legal hold, if set.
    pub hold: Option<LegalHold>,
    /// When the PII was deleted.
    pub deleted_at: Option<i64>,
    /// Why it was deleted.
    pub deletion_reason: Option<DeletionReason>,
}

/// A cached restricted response, sealed under its order's data key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The seller.
    pub seller: String,
    /// Opaque id of the request (a hash of the cache key: request URLs may carry PII).
    pub cache_id: String,
    /// The order the response belongs to.
    pub order_id: String,
    /// The data key it is sealed under; a put fails once that key is destroyed.
    pub key_id: String,
    /// `DataKey::seal` output (nonce, ciphertext, tag).
    pub sealed: Vec<u8>,
    /// When it was stored.
    pub stored_at: i64,
    /// When it stops being served.
    pub expires_at: i64,
}

/// The outcome of [`Store::create_order_key`](super::Store::create_order_key).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyCreation {
    /// The key and the record were written.
    Created,
    /// Another writer created the order's key first: use this one.
    Exists(OrderKey),
    /// The record changed since it was read: read again and retry.
    Conflict,
}

/// What [`Store::shred_order`](super::Store::shred_order) removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shredded {
    /// The destroyed data key's id, if the order had one.
    pub key_id: Option<String>,
    /// Cached responses deleted.
    pub cache_entries: u64,
    /// Buyer pseudonym links deleted.
    pub pseudonyms: u64,
}

/// Counts for `spgate vault report`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionStats {
    /// Records in state active.
    pub active: u64,
    /// Records in state held.
    pub held: u64,
    /// Records in state deleted (tombstones).
    pub deleted: u64,
    /// Records not deleted whose deletion time ([`RetentionRecord::purge_at`]) has passed.
    pub overdue: u64,
    /// Live (not yet destroyed) data keys.
    pub keys: u64,
    /// The records that are deleted next, earliest first.
    pub next: Vec<RetentionRecord>,
}

// === impl RetentionStats ===

impl RetentionStats {
    /// Sets the count of records in `state` (its stored name) from a `GROUP BY state` row; a
    /// state this version does not know is a corrupt store.
    pub(crate) fn set_state_count(&mut self, state: &str, n: u64) -> Result<(), StoreError> {
        match state {
            "active" => self.active = n,
            "held" => self.held = n,
            "deleted" => self.deleted = n,
            other => {
                return Err(StoreError::Corrupt {
                    what: "retention record",
                    detail: format!("unknown state {other:?}"),
                })
            }
        }
        Ok(())
    }
}

// === impl OrderKey ===

impl std::fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderKey")
            .field("key_id", &self.key_id)
            .field("seller", &self.seller)
            .field("order_id", &self.order_id)
            .field("wrapped", &"**REDACTED**")
            .field("created_at", &self.created_at)
            .finish()
    }
}

// === impl CacheEntry ===

impl std::fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheEntry")
            .field("seller", &self.seller)
            .field("cache_id", &self.cache_id)
            .field("order_id", &self.order_id)
            .field("key_id", &self.key_id)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("stored_at", &self.stored_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

// === impl RetentionState ===

impl RetentionState {
    /// Lowercase name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionState::Active => "active",
            RetentionState::Held => "held",
            RetentionState::Deleted => "deleted",
        }
    }
}

// === impl DeletionReason ===

impl DeletionReason {
    /// snake_case name, as in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            DeletionReason::RetentionDue => "retention_due",
            DeletionReason::Cancelled => "cancelled",
            DeletionReason::HoldExpired => "hold_expired",
            DeletionReason::DataSubjectRequest => "data_subject_request",
            DeletionReason::Operator => "operator",
        }
    }
}

// === impl DeliverySource ===

impl DeliverySource {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliverySource::Event => "event",
            DeliverySource::OrderData => "order_data",
            DeliverySource::Ops => "ops",
        }
    }
}

impl std::str::FromStr for DeliverySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "event" => Ok(DeliverySource::Event),
            "order_data" => Ok(DeliverySource::OrderData),
            "ops" => Ok(DeliverySource::Ops),
            other => Err(format!(
                "unknown delivery source {other:?} (expected event, order_data or ops)"
            )),
        }
    }
}

// === impl RetentionRecord ===

impl RetentionRecord {
    /// When the scheduler deletes the order's PII: the due date, or a legal hold's end if later.
    pub fn purge_at(&self) -> i64 {
        match &self.hold {
            Some(h) => self.due_at.max(h.until),
            None => self.due_at,
        }
    }
}

/// A record as stored (JSON), by every backend.
pub(crate) fn record_json(r: &RetentionRecord) -> Result<String, StoreError> {
    serde_json::to_string(r).map_err(|e| StoreError::Corrupt {
        what: "retention record",
        detail: e.to_string(),
    })
}

/// A stored record read back.
pub(crate) fn record_from(json: &str) -> Result<RetentionRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what: "retention record",
        detail: e.to_string(),
    })
}
