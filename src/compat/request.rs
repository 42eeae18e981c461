//! A v0 request translated into its 2026-01-01 call: which operation, which path and query.
//!
//! Every v0 query parameter is either mapped or refused ([`CompatError::Untranslatable`],
//! [`CompatError::BadParameter`]); `includedData` names only the datasets of fields the v0
//! answer produces that the tool's role may receive ([`included_data`]).

use super::token;
use super::CompatError;
use crate::auth::rdt;
use crate::crypto::MasterKey;
use crate::pii::Role;

use super::map::{EnumTable, FieldMap, Rule, Scope};
use crate::pii::Category;

/// The six v0 operations the gateway translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `getOrders` -> `searchOrders`.
    Orders,
    /// `getOrder` -> `getOrder`.
    Order,
    /// `getOrderBuyerInfo` -> `getOrder` with `BUYER`.
    BuyerInfo,
    /// `getOrderAddress` -> `getOrder` with `RECIPIENT`.
    Address,
    /// `getOrderItems` -> `getOrder`.
    Items,
    /// `getOrderItemsBuyerInfo` -> `getOrder` with `BUYER`.
    ItemsBuyerInfo,
}

/// The 2026 search operation's catalog key.
pub const SEARCH_ORDERS: &str = "orders_2026-01-01.searchOrders";
/// The 2026 single-order operation's catalog key.
pub const GET_ORDER: &str = "orders_2026-01-01.getOrder";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Orders,
        Kind::Order,
        Kind::BuyerInfo,
        Kind::Address,
        Kind::Items,
        Kind::ItemsBuyerInfo,
    ];

    /// The kind of a v0 operation (catalog key); `None` for any other operation.
    pub fn of(op_key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.v0_key() == op_key)
    }

    /// The v0 operation's catalog key.
    pub fn v0_key(self) -> &'static str {
        match self {
            Kind::Orders => "ordersV0.getOrders",
            Kind::Order => "ordersV0.getOrder",
            Kind::BuyerInfo => "ordersV0.getOrderBuyerInfo",
            Kind::Address => "ordersV0.getOrderAddress",
            Kind::Items => "ordersV0.getOrderItems",
            Kind::ItemsBuyerInfo => "ordersV0.getOrderItemsBuyerInfo",
        }
    }

    /// The 2026 operation's catalog key.
    pub fn target_key(self) -> &'static str {
        match self {
            Kind::Orders => SEARCH_ORDERS,
            _ => GET_ORDER,
        }
    }

    /// The map scopes the v0 answer is built from, each with the path of its fields in the
    /// v0 answer (as the v0 operation's PII map writes them).
    pub fn scopes(self) -> &'static [(Scope, &'static str)] {
        match self {
            Kind::Orders => &[
                (Scope::Orders, "payload."),
                (Scope::Order, "payload.Orders[]."),
            ],
            Kind::Order => &[(Scope::Order, "payload.")],
            Kind::BuyerInfo => &[(Scope::Buyer, "payload.")],
            Kind::Address => &[(Scope::Address, "payload.")],
            Kind::Items => &[
                (Scope::Items, "payload."),
                (Scope::Item, "payload.OrderItems[]."),
            ],
            Kind::ItemsBuyerInfo => &[
                (Scope::ItemsBuyer, "payload."),
                (Scope::ItemBuyer, "payload.OrderItems[]."),
            ],
        }
    }
}

/// The order in which `includedData` names its datasets.
const DATASET_ORDER: [&str; 11] = [
    "FULFILLMENT",
    "PROCEEDS",
    "EXPENSE",
    "PROMOTION",
    "CANCELLATION",
    "BUYER",
    "RECIPIENT",
    "PACKAGES",
    "TAX",
    "PAYMENT",
    "FULFILLMENT_ORDERS",
];

/// The `includedData` of the 2026 call answering `kind` for `role`, chosen field by field: a
/// dataset is asked for only when the v0 answer produces (per the field map) at least one field
/// from it that the role may receive, judged by the field's categories in both PII maps (the
/// v0 field's, and the 2026 source's when its value is carried over). So a gift message comes
/// for a role that receives gift messages only, and no buyer data comes for `getOrderItems`.
pub fn included_data(map: &FieldMap, kind: Kind, role: &Role) -> Vec<&'static str> {
    let mut wanted: Vec<&'static str> = Vec::new();
    for (scope, v0_prefix) in kind.scopes() {
        // Where the scope's sources sit in a 2026 Order (a search's own fields need no dataset).
        let base = match scope {
            Scope::Item | Scope::ItemBuyer => "orderItems[].",
            Scope::Orders | Scope::Errors => continue,
            _ => "",
        };
        for row in map.scope(*scope) {
            let Rule::Produced { source, conversion } = &row.rule else {
                continue;
            };
            let path = format!("{base}{}", plain_path(source));
            let mut categories = Vec::new();
            categories.extend(category_at(
                kind.v0_key(),
                &format!("{v0_prefix}{}", row.field),
            ));
            if conversion.carries_value() {
                categories.extend(category_at(GET_ORDER, &format!("order.{path}")));
            }
            if categories.iter().all(|c| role.receives(*c)) {
                wanted.extend(rdt::datasets_of(&path));
            }
        }
    }
    DATASET_ORDER
        .into_iter()
        .filter(|set| wanted.contains(set))
        .collect()
}

/// A source path with its filters (`a[k=V]`) written as lists (`a[]`), as the PII map writes
/// paths.
fn plain_path(source: &str) -> String {
    source
        .split('.')
        .map(|part| match part.split_once('[') {
            Some((name, _)) => format!("{name}[]"),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The buyer-PII category of the value at `path` in an answer of `op_key`: the PII map's leaf
/// at the path or above it (a leaf covers everything below).
pub fn category_at(op_key: &str, path: &str) -> Option<Category> {
    let map = crate::pii::map::FieldMap::builtin().get(op_key)?;
    map.fields
        .iter()
        .find(|f| {
            path.strip_prefix(f.path).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with("[]")
            })
        })
        .map(|f| f.category)
}

/// The translated call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which v0 operation was asked.
    pub kind: Kind,
    /// The 2026 operation's catalog key.
    pub target: &'static str,
    /// The 2026 path and query to send.
    pub path_and_query: String,
    /// The translated search query without `paginationToken` and `includedData` (what a
    /// gateway `NextToken` carries); empty for single-order calls.
    pub search_query: String,
}

/// Who is asking (binds `NextToken`s) and when.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The tool.
    pub tool: &'a str,
    /// The seller acted for.
    pub seller: &'a str,
    /// Its role (reduces `includedData`).
    pub role: &'a Role,
    /// Unix time now.
    pub now: i64,
}

/// `getOrders` parameters with no 2026 counterpart.
const UNTRANSLATABLE: [&str; 13] = [
    "PaymentMethods",
    "BuyerEmail",
    "SellerOrderId",
    "EasyShipShipmentStatuses",
    "ElectronicInvoiceStatuses",
    "AmazonOrderIds",
    "ActualFulfillmentSupplySourceId",
    "IsISPU",
    "StoreChainStoreId",
    "EarliestDeliveryDateBefore",
    "EarliestDeliveryDateAfter",
    "LatestDeliveryDateBefore",
    "LatestDeliveryDateAfter",
];

/// `getOrders` parameters copied under their 2026 name.
const RENAMED: [(&str, &str); 6] = [
    ("CreatedAfter", "createdAfter"),
    ("CreatedBefore", "createdBefore"),
    ("LastUpdatedAfter", "lastUpdatedAfter"),
    ("LastUpdatedBefore", "lastUpdatedBefore"),
    ("MarketplaceIds", "marketplaceIds"),
    ("MaxResultsPerPage", "maxResultsPerPage"),
];

/// Marketplace parameters SDKs add to every GET (python-amazon-sp-api sends all four) that
/// Amazon's v0 ignores where it does not define them: skipped, as Amazon skips them.
const SDK_MARKETPLACE_KEYS: [&str; 4] = [
    "MarketplaceId",
    "MarketplaceIds",
    "marketplace_ids",
    "marketplaceIds",
];

/// Translates a v0 request. `order_id` is the decoded `{orderId}` of single-order calls;
/// `query` the raw v0 query string.
pub fn plan(
    kind: Kind,
    order_id: Option<&str>,
    query: Option<&str>,
    caller: &Caller<'_>,
    map: &FieldMap,
    key: &MasterKey,
) -> Result<Plan, CompatError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (path, search_query, token) = match kind {
        Kind::Orders => {
            let (search_query, token) = search(&pairs, caller, key)?;
            ("/orders/2026-01-01/orders".to_string(), search_query, token)
        }
        _ => {
            let mut extra = pairs
                .iter()
                .filter(|(k, _)| !SDK_MARKETPLACE_KEYS.contains(&k.as_str()));
            if let Some((name, _)) = extra.next() {
                return Err(if name == "NextToken" {
                    // The gateway never hands out a NextToken for order items: 2026 getOrder
                    // answers every item at once.
                    CompatError::TokenInvalid
                } else {
                    CompatError::BadParameter(known_name(name))
                });
            }
            let id = order_id.unwrap_or_default();
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(CompatError::BadParameter("orderId"));
            }
            (
                format!("/orders/2026-01-01/orders/{id}"),
                String::new(),
                None,
            )
        }
    };
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(search_query.as_bytes()) {
        out.append_pair(&k, &v);
    }
    if let Some(token) = &token {
        out.append_pair("paginationToken", token);
    }
    let sets = included_data(map, kind, caller.role);
    if !sets.is_empty() {
        out.append_pair("includedData", &sets.join(","));
    }
    let query = out.finish();
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    Ok(Plan {
        kind,
        target: kind.target_key(),
        path_and_query,
        search_query,
    })
}

/// The 2026 search query of a v0 `getOrders` (and the 2026 token of a later page).
fn search(
    pairs: &[(String, String)],
    caller: &Caller<'_>,
    key: &MasterKey,
) -> Result<(String, Option<String>), CompatError> {
    if let Some((_, wrapped)) = pairs.iter().find(|(k, _)| k == "NextToken") {
        // A later page: 2026 wants the first page's parameters again, which the gateway token
        // carries. Amazon's v0 applies the filters sent with a NextToken ("NextToken doesn't
        // affect any filters that you include in your request"), and SDKs send the first
        // page's again; the 2026 token continues only the first page's search, so a filter
        // that differs from it is refused by name, never ignored.
        let claims = token::unwrap(key, caller.tool, caller.seller, wrapped, caller.now)?;
        let others: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "NextToken")
            .cloned()
            .collect();
        let (again, _) = filters(&others)?;
        same_as_first_page(&again, &claims.query)?;
        return Ok((claims.query, Some(claims.token.expose().clone())));
    }
    let (translated, marketplaces) = filters(pairs)?;
    if !marketplaces {
        return Err(CompatError::BadParameter("MarketplaceIds"));
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &translated {
        out.append_pair(k, v);
    }
    Ok((out.finish(), None))
}

/// 2026 search parameters: (name, value).
type Filters = Vec<(&'static str, String)>;

/// The v0 `getOrders` filters as 2026 (name, value) pairs, and whether `MarketplaceIds` was
/// among them.
fn filters(pairs: &[(String, String)]) -> Result<(Filters, bool), CompatError> {
    let mut out = Vec::new();
    let mut marketplaces = false;
    for (name, value) in pairs {
        let name = name.as_str();
        if name != "MarketplaceIds" && SDK_MARKETPLACE_KEYS.contains(&name) {
            continue;
        }
        if let Some(param) = UNTRANSLATABLE.iter().find(|p| **p == name) {
            return Err(CompatError::Untranslatable(param));
        }
        if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == name) {
            marketplaces |= name == "MarketplaceIds";
            out.push((*new, value.clone()));
            continue;
        }
        match name {
            "OrderStatuses" => {
                let mapped = list(value)
                    .map(|v| {
                        if v == "InvoiceUnconfirmed" {
                            return Err(CompatError::Untranslatable("OrderStatuses"));
                        }
                        EnumTable::OrderStatus
                            .to_2026(v)
                            .ok_or(CompatError::BadParameter("OrderStatuses"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(("fulfillmentStatuses", mapped.join(",")));
            }
            "FulfillmentChannels" => {
                let mapped = list(value)
                    .map(|v| {
                        EnumTable::FulfillmentChannel
                            .to_2026(v)
                            .ok_or(CompatError::BadParameter("FulfillmentChannels"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(("fulfilledBy", mapped.join(",")));
            }
            other => return Err(CompatError::BadParameter(known_name(other))),
        }
    }
    Ok((out, marketplaces))
}

/// Checks the filters sent with a `NextToken` against the first page's 2026 query: each must
/// have the first page's value (lists in any order), except `MarketplaceIds`, which may name
/// any of the first page's marketplaces (the v0 model requires the parameter on every call,
/// and SDKs fill in their default marketplace). Refused: [`CompatError::NextTokenFilter`] with
/// the v0 name.
fn same_as_first_page(
    again: &[(&'static str, String)],
    first_query: &str,
) -> Result<(), CompatError> {
    let first: Vec<(String, String)> = form_urlencoded::parse(first_query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let first_of = |name: &str| {
        first
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let set =
        |v: &str| -> std::collections::BTreeSet<String> { list(v).map(str::to_string).collect() };
    for (name, value) in again {
        let same = match (*name, first_of(name)) {
            ("marketplaceIds", Some(f)) => set(value).is_subset(&set(f)) && !set(value).is_empty(),
            ("fulfillmentStatuses" | "fulfilledBy", Some(f)) => set(value) == set(f),
            (_, Some(f)) => value == f,
            (_, None) => false,
        };
        if !same {
            return Err(CompatError::NextTokenFilter(v0_name(name)));
        }
    }
    Ok(())
}

/// The v0 name of a 2026 search parameter the translation writes.
fn v0_name(name: &str) -> &'static str {
    match name {
        "fulfillmentStatuses" => "OrderStatuses",
        "fulfilledBy" => "FulfillmentChannels",
        other => RENAMED
            .iter()
            .find(|(_, new)| *new == other)
            .map_or("an unknown query parameter", |(old, _)| *old),
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// A parameter name for an error message: one of v0's names, or a fixed word (the caller's own
/// text is never echoed).
fn known_name(name: &str) -> &'static str {
    const NAMES: [&str; 4] = [
        "NextToken",
        "OrderStatuses",
        "FulfillmentChannels",
        "orderId",
    ];
    NAMES
        .iter()
        .chain(UNTRANSLATABLE.iter())
        .chain(RENAMED.iter().map(|(old, _)| old))
        .find(|n| **n == name)
        .copied()
        .unwrap_or("an unknown query parameter")
}
