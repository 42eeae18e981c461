//! What may be shared, and how writes group: the `[shared_calls]` section, the operations whose
//! answers may be cached (unrestricted, free of buyer PII, acting for a seller), the invalidation
//! families, and how a request takes part ([`part`]: a write, a read that may be shared, or
//! alone).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{Catalog, Operation};
use crate::config::ConfigIssue;
use crate::pii::Classification;

use super::{Event, RedisLink};

/// POSTs that only read (fee estimates, price batches): they do not invalidate cached answers.
pub(super) const READ_ONLY_POSTS: [&str; 7] = [
    "productFeesV0.getMyFeesEstimateForSKU",
    "productFeesV0.getMyFeesEstimateForASIN",
    "productFeesV0.getMyFeesEstimates",
    "productPricingV0.getItemOffersBatch",
    "productPricingV0.getListingOffersBatch",
    "productPricing_2022-05-01.getCompetitiveSummary",
    "productPricing_2022-05-01.getFeaturedOfferExpectedPriceBatch",
];

/// The APIs whose answers one listing change can alter: one invalidation family.
const LISTINGS_FAMILY: [&str; 6] = [
    "listings-items",
    "catalog-items",
    "listings-restrictions",
    "product-fees",
    "product-pricing",
    "feeds",
];

/// Default most answers kept.
const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Default most bytes of answers kept (an estimate: body, headers and key of each).
const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The least `max_bytes` accepted: below it, hardly an answer would be kept.
const MIN_MAX_BYTES: usize = 1024 * 1024;

/// Default seconds after a write during which reads of its family are not cached.
const DEFAULT_SETTLE_SECONDS: u64 = 5;

/// The longest settle window accepted (longer: lower the TTLs instead).
const MAX_SETTLE_SECONDS: u64 = 3600;

/// `[shared_calls]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawSharedCalls {
    /// Identical concurrent GETs of unrestricted operations without buyer PII make one upstream
    /// call (default false).
    pub coalesce: Option<bool>,
    /// Seconds a 200 answer is cached, per operation key; an operation not listed is not
    /// cached. Only unrestricted GET operations (and [`READ_ONLY_POSTS`]) declared free of
    /// buyer PII may be listed.
    pub ttl_seconds: Option<BTreeMap<String, u64>>,
    /// Most answers cached at once (default 10,000); past it, expired ones are dropped, then
    /// the ones closest to expiry.
    pub max_entries: Option<usize>,
    /// Most bytes of answers cached at once (default 64 MiB, at least 1 MiB), counting each
    /// answer's body, headers and key; past it, as past `max_entries`.
    pub max_bytes: Option<usize>,
    /// Seconds after a write (its start and its end) during which reads of its family are
    /// answered but not cached, as Amazon may not show the write yet (default 5; 0: off).
    pub settle_seconds: Option<u64>,
}

/// See [`RawSharedCalls`].
#[derive(Debug, Clone)]
pub struct SharedCallsConfig {
    /// Coalesce identical concurrent GETs.
    pub coalesce: bool,
    /// Cache lifetime per operation key.
    pub ttls: HashMap<&'static str, Duration>,
    /// Most answers cached.
    pub max_entries: usize,
    /// Most bytes of answers cached.
    pub max_bytes: usize,
    /// How long after a write reads of its family are not cached.
    pub settle: Duration,
    /// The Redis shared with the other instances, for the invalidation channel (set from the
    /// store and rate-limit sections, [`RedisLink::of`]).
    pub redis: Option<RedisLink>,
}

// === impl SharedCallsConfig ===

impl RawSharedCalls {
    /// Validates the section: every operation with a TTL is catalogued, a GET, unrestricted,
    /// acts for a seller and is declared free of buyer PII.
    pub fn resolve(&self) -> Result<SharedCallsConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut ttls = HashMap::new();
        for (key, seconds) in self.ttl_seconds.iter().flatten() {
            let path = format!("shared_calls.ttl_seconds.{key}");
            let Some(op) = Catalog::builtin().by_key(key) else {
                issues.push(ConfigIssue {
                    path,
                    message: "no such operation (see `spgate catalog`)".into(),
                });
                continue;
            };
            if let Err(why) = shareable(op) {
                issues.push(ConfigIssue {
                    path,
                    message: format!("may not be cached: {why}"),
                });
                continue;
            }
            if *seconds == 0 {
                issues.push(ConfigIssue {
                    path,
                    message: "must be at least 1 (leave the operation out to cache nothing)".into(),
                });
                continue;
            }
            ttls.insert(op.key, Duration::from_secs(*seconds));
        }
        let max_entries = self.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if max_entries == 0 {
            issues.push(ConfigIssue {
                path: "shared_calls.max_entries".into(),
                message: "must be at least 1".into(),
            });
        }
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < MIN_MAX_BYTES {
            issues.push(ConfigIssue {
                path: "shared_calls.max_bytes".into(),
                message: format!("must be at least {MIN_MAX_BYTES} (1 MiB)"),
            });
        }
        let settle = self.settle_seconds.unwrap_or(DEFAULT_SETTLE_SECONDS);
        if settle > MAX_SETTLE_SECONDS {
            issues.push(ConfigIssue {
                path: "shared_calls.settle_seconds".into(),
                message: format!("must be at most {MAX_SETTLE_SECONDS}"),
            });
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(SharedCallsConfig {
            coalesce: self.coalesce.unwrap_or(false),
            ttls,
            max_entries,
            max_bytes,
            settle: Duration::from_secs(settle),
            redis: None,
        })
    }
}

impl SharedCallsConfig {
    /// Nothing shared, nothing cached.
    pub fn off() -> SharedCallsConfig {
        SharedCallsConfig {
            coalesce: false,
            ttls: HashMap::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            settle: Duration::from_secs(DEFAULT_SETTLE_SECONDS),
            redis: None,
        }
    }

    /// These settings with the Redis shared with other instances (if any).
    pub fn with_redis(mut self, redis: Option<RedisLink>) -> SharedCallsConfig {
        self.redis = redis;
        self
    }
}

/// Why an operation's answers may not be shared, if they may not.
pub(super) fn shareable(op: &Operation) -> Result<(), &'static str> {
    if op.method != http::Method::GET && !READ_ONLY_POSTS.contains(&op.key) {
        return Err(
            "only GET operations and the POSTs that only read (fee estimates, price batches)",
        );
    }
    if op.restricted {
        return Err("a restricted operation (its answer depends on the RDT)");
    }
    if op.grantless_scope.is_some() {
        return Err("a grantless operation (answers are kept per seller)");
    }
    match op.pii_class() {
        Classification::NoPii(_) => Ok(()),
        Classification::Mapped(_) => Err("the operation may carry buyer PII"),
        Classification::Unclassified => Err("the operation has no buyer-PII classification"),
    }
}

/// The invalidation family of an operation: [`LISTINGS_FAMILY`] as one, else its API.
pub(super) fn family(op: &Operation) -> &'static str {
    if LISTINGS_FAMILY.contains(&op.api) {
        "listings"
    } else {
        op.api
    }
}

/// How a request takes part in shared answers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// A write: drops the seller's cached answers of these families.
    Write(Vec<&'static str>),
    /// A read that may be shared.
    Read,
    /// Not shared (and the event, when it is worth counting).
    Alone(Option<Event>),
}

/// How a request for `op`, sent upstream as `wire`, takes part: a key names what is answered,
/// so a read sent as another operation (the Orders v0 translation) is never shared; a write
/// drops both operations' families.
pub(super) fn part(op: &'static Operation, wire: &'static Operation) -> Part {
    let writes = |o: &Operation| o.method != http::Method::GET && !READ_ONLY_POSTS.contains(&o.key);
    if writes(op) || writes(wire) {
        let mut families = vec![family(op)];
        if family(wire) != family(op) {
            families.push(family(wire));
        }
        return Part::Write(families);
    }
    if shareable(op).is_err() && shareable(wire).is_err() {
        return Part::Alone(None);
    }
    if op.key != wire.key {
        return Part::Alone(Some(Event::Translated));
    }
    if shareable(op).is_err() {
        return Part::Alone(None);
    }
    Part::Read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ttl: &[(&str, u64)], expect: Result<usize, &str>) {
        let raw = RawSharedCalls {
            coalesce: None,
            ttl_seconds: Some(ttl.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            max_entries: None,
            max_bytes: None,
            settle_seconds: None,
        };
        match (raw.resolve(), expect) {
            (Ok(c), Ok(n)) => assert_eq!(c.ttls.len(), n, "{ttl:?}"),
            (Err(issues), Err(why)) => assert!(
                issues.iter().any(|i| i.message.contains(why)),
                "{ttl:?}: {issues:?}"
            ),
            (got, want) => panic!("{ttl:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn only_unrestricted_gets_without_buyer_pii_may_be_cached() {
        check(
            &[
                ("catalogItems_2022-04-01.getCatalogItem", 300),
                (
                    "definitionsProductTypes_2020-09-01.getDefinitionsProductType",
                    3600,
                ),
                (
                    "listingsRestrictions_2021-08-01.getListingsRestrictions",
                    60,
                ),
            ],
            Ok(3),
        );
        check(
            &[("fulfillmentOutbound_2020-07-01.getFulfillmentOrder", 60)],
            Err("buyer PII"),
        );
        check(&[("ordersV0.getOrderAddress", 60)], Err("restricted"));
        check(&[("productFeesV0.getMyFeesEstimateForSKU", 60)], Ok(1));
        check(&[("feeds_2021-06-30.createFeed", 60)], Err("only GET"));
        check(&[("notifications.getDestinations", 60)], Err("grantless"));
        check(&[("nosuch.operation", 60)], Err("no such operation"));
        check(
            &[("catalogItems_2022-04-01.getCatalogItem", 0)],
            Err("at least 1"),
        );
    }

    #[test]
    fn a_read_sent_upstream_as_another_operation_is_never_shared() {
        let op = |k: &str| Catalog::builtin().by_key(k).unwrap();
        let item = op("catalogItems_2022-04-01.getCatalogItem");
        let order = op("orders_2026-01-01.getOrder");
        assert_eq!(part(item, item), Part::Read);
        // A translation of a shareable read: its key would name a call that is not the one
        // sent, and its answer is rebuilt per tool.
        assert_eq!(part(item, order), Part::Alone(Some(Event::Translated)));
        assert_eq!(part(order, item), Part::Alone(Some(Event::Translated)));
        // Today's (Orders v0 to 2026-01-01) translate operations never shared anyway.
        assert_eq!(part(op("ordersV0.getOrder"), order), Part::Alone(None));
        // A write sent as another operation drops both families.
        let patch = op("listingsItems_2021-08-01.patchListingsItem");
        assert_eq!(part(patch, patch), Part::Write(vec!["listings"]));
        assert_eq!(
            part(patch, op("ordersV0.confirmShipment")),
            Part::Write(vec!["listings", "orders"])
        );
        assert_eq!(
            part(item, op("ordersV0.confirmShipment")),
            Part::Write(vec!["listings", "orders"]),
            "a read sent as a write is a write"
        );
        // Whatever the translator does, it is covered: every operation it may send.
        for kind in crate::compat::Kind::ALL {
            let wire = op(kind.target_key());
            for answered in Catalog::builtin().operations() {
                if answered.key != wire.key && part(answered, answered) == Part::Read {
                    assert_ne!(part(answered, wire), Part::Read, "{}", answered.key);
                }
            }
        }
    }

    #[test]
    fn one_listing_change_reaches_every_api_that_shows_it() {
        let op = |k: &str| Catalog::builtin().by_key(k).unwrap();
        let listings = family(op("listingsItems_2021-08-01.patchListingsItem"));
        assert_eq!(
            family(op("catalogItems_2022-04-01.getCatalogItem")),
            listings
        );
        assert_eq!(
            family(op("productFeesV0.getMyFeesEstimateForSKU")),
            listings
        );
        assert_ne!(family(op("sellers.getMarketplaceParticipations")), listings);
        for key in READ_ONLY_POSTS {
            assert_eq!(op(key).method, http::Method::POST, "{key}");
        }
    }
}
