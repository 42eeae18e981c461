//! A v0 request translated into its 2026-01-01 call: which operation, which path and query.
//!
//! Every v0 query parameter is either mapped or refused ([`CompatError::Untranslatable`],
//! [`CompatError::BadParameter`]); `includedData` names only what the operation's v0 answer
//! can hold, reduced to what the tool's role may receive.

use super::token;
use super::CompatError;
use crate::auth::rdt;
use crate::crypto::MasterKey;
use crate::pii::Role;

use super::map::EnumTable;

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

    /// The datasets the v0 answer's fields come from (before the role's reduction).
    pub fn included_data(self) -> &'static [&'static str] {
        match self {
            Kind::Orders | Kind::Order => &["FULFILLMENT", "PROCEEDS", "BUYER", "RECIPIENT"],
            Kind::BuyerInfo => &["BUYER"],
            Kind::Address => &["RECIPIENT"],
            Kind::Items => &[
                "FULFILLMENT",
                "PROCEEDS",
                "EXPENSE",
                "PROMOTION",
                "CANCELLATION",
                "BUYER",
            ],
            Kind::ItemsBuyerInfo => &["FULFILLMENT", "PROCEEDS", "BUYER"],
        }
    }
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
    target: &crate::catalog::Operation,
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
    out.append_pair("includedData", &kind.included_data().join(","));
    let full = format!("{path}?{}", out.finish());
    let path_and_query = rdt::reduce_included_data(target, caller.role, &full)
        .map_err(|_| CompatError::Internal("includedData names an unknown dataset"))?
        .unwrap_or(full);
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
        // A later page: v0 takes the token alone; 2026 wants the first page's parameters again,
        // which the gateway token carries.
        let claims = token::unwrap(key, caller.tool, caller.seller, wrapped, caller.now)?;
        return Ok((claims.query, Some(claims.token.expose().clone())));
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
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
            out.append_pair(new, value);
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
                out.append_pair("fulfillmentStatuses", &mapped.join(","));
            }
            "FulfillmentChannels" => {
                let mapped = list(value)
                    .map(|v| {
                        EnumTable::FulfillmentChannel
                            .to_2026(v)
                            .ok_or(CompatError::BadParameter("FulfillmentChannels"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.append_pair("fulfilledBy", &mapped.join(","));
            }
            other => return Err(CompatError::BadParameter(known_name(other))),
        }
    }
    if !marketplaces {
        return Err(CompatError::BadParameter("MarketplaceIds"));
    }
    Ok((out.finish(), None))
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
