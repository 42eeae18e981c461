//! Audit records for the vault's events (deletions, holds, erasures, exports, deliveries).
//! Only ids and fixed reason codes: the vault's events carry no PII, and the free-text parts of a
//! legal hold (its reason, who set it) are not copied into the log beyond the actor's name.
//! Exports and erasures name who asked (`actor`: the admin token's holder in the console, `cli`
//! on the command line); an erasure's reason code says whether it answered a data-subject
//! request (`data_subject_request`) or was an operator's decision (`operator_decision`).

use super::record::{Id, Kind, Reason, Record, SellerId};
use crate::vault::{EraseReason, VaultEvent};

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
            reason,
            by,
            ..
        } => {
            let mut r = order(Kind::Erase, seller, order_id)
                .with_actor(by)
                .with_reason(Reason::from_static(match reason {
                    EraseReason::DataSubjectRequest => "data_subject_request",
                    EraseReason::Operator => "operator_decision",
                }));
            r.count = Some(*cache_entries);
            r
        }
        VaultEvent::Exported {
            orders,
            by_pseudonym,
            by,
        } => {
            let mut r = Record::new(Kind::Export)
                .with_actor(by)
                .with_reason(if *by_pseudonym {
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

/// The audit record of a seller invite link created by `actor` (the console's admin, or `cli`):
/// the region as its reason code, the seller when the invite re-authorizes one; never the link,
/// which is a credential until used.
pub fn invite_record(region: crate::store::Region, seller: Option<&str>, actor: &str) -> Record {
    use crate::store::Region;
    let mut r = Record::new(Kind::InviteCreated)
        .with_actor(actor)
        .with_reason(Reason::from_static(match region {
            Region::Na => "region_na",
            Region::Eu => "region_eu",
            Region::Fe => "region_fe",
        }));
    r.seller = seller.map(SellerId::lossy);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::OrderRef;

    #[test]
    fn exports_and_erasures_name_who_asked_and_why() {
        let erased = |reason| VaultEvent::Erased {
            seller: "A1SELLER".into(),
            order_id: "111-2222222-3333333".into(),
            key_id: None,
            reason,
            cache_entries: 2,
            by: "console-security".into(),
        };
        for (reason, code) in [
            (EraseReason::DataSubjectRequest, "data_subject_request"),
            (EraseReason::Operator, "operator_decision"),
        ] {
            let r = vault_record(&erased(reason));
            assert_eq!(r.kind, Kind::Erase);
            assert_eq!(
                r.actor.as_ref().map(|a| a.as_str()),
                Some("console-security")
            );
            assert_eq!(r.reason.as_ref().map(Reason::as_str), Some(code));
            assert_eq!(r.count, Some(2));
        }
        let r = vault_record(&VaultEvent::Exported {
            orders: vec![OrderRef {
                seller: "A1SELLER".into(),
                order_id: "111-2222222-3333333".into(),
            }],
            by_pseudonym: false,
            by: "cli".into(),
        });
        assert_eq!(r.kind, Kind::Export);
        assert_eq!(r.actor.as_ref().map(|a| a.as_str()), Some("cli"));
        assert_eq!(r.reason.as_ref().map(Reason::as_str), Some("by_order"));
        assert_eq!(
            r.order_id.as_ref().map(|o| o.as_str()),
            Some("111-2222222-3333333")
        );
    }
}
