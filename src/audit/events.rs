//! Audit records for the vault's events (deletions, holds, erasures, exports, deliveries).
//! Only ids and fixed reason codes: the vault's events carry no PII, and the free-text parts of a
//! legal hold (its reason, who set it) are not copied into the log beyond the actor's name.

use super::record::{Id, Kind, Reason, Record, SellerId};
use crate::vault::VaultEvent;

/// The audit record for a vault event.
pub fn vault_record(event: &VaultEvent) -> Record {
    let order = |kind: Kind, seller: &str, order_id: &str| {
        let mut r = Record::new(kind).with_seller(seller);
        r.order_id = Some(Id::lossy(order_id));
        r
    };
    match event {
        VaultEvent::Deleted {
            seller,
            order_id,
            cache_entries,
            ..
        } => {
            let mut r = order(Kind::DeletionRun, seller, order_id)
                .with_reason(Reason::from_static("retention_due"));
            r.count = Some(*cache_entries);
            r
        }
        VaultEvent::Held {
            seller,
            order_id,
            by,
            ..
        } => order(Kind::LegalHold, seller, order_id)
            .with_actor(by)
            .with_reason(Reason::from_static("hold_set")),
        VaultEvent::Released {
            seller,
            order_id,
            by,
        } => order(Kind::LegalHold, seller, order_id)
            .with_actor(by)
            .with_reason(Reason::from_static("hold_released")),
        VaultEvent::Erased {
            seller,
            order_id,
            cache_entries,
            ..
        } => {
            let mut r = order(Kind::Erase, seller, order_id)
                .with_reason(Reason::from_static("erased_on_request"));
            r.count = Some(*cache_entries);
            r
        }
        VaultEvent::Exported {
            orders,
            by_pseudonym,
        } => {
            let mut r = Record::new(Kind::Export).with_reason(if *by_pseudonym {
                Reason::from_static("by_pseudonym")
            } else {
                Reason::from_static("by_order")
            });
            if let [one] = orders.as_slice() {
                r.seller = Some(SellerId::lossy(&one.seller));
                r.order_id = Some(Id::lossy(&one.order_id));
            }
            r.count = Some(orders.len() as u64);
            r
        }
        VaultEvent::Delivered {
            seller, order_id, ..
        } => order(Kind::Delivery, seller, order_id),
    }
}
