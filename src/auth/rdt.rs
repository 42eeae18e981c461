//! Restricted Data Tokens, obtained by the gateway so callers never need to know they exist, and
//! asking Amazon only for the restricted data the caller's role may receive.
//!
//! For a restricted operation the gateway decides, from the role, whether it needs an RDT at
//! all ([`need`]): Orders v0 getOrders/getOrder/getOrderItems accept `dataElements`, so a role
//! that may receive none of them is served with the plain access token (Amazon then returns no
//! buyer PII); every other restricted operation needs an RDT, or is refused if the role may
//! receive nothing it returns. RDTs are cached per (seller, method, path, elements) until
//! `expiresIn` - 60 s, single-flight. getReportDocument needs the specific path; other operations
//! use the generic template. Failing to get an RDT fails closed: restricted data is never
//! fetched with a plain token. Orders 2026-01-01 needs no RDT; [`reduce_included_data`] drops
//! the `includedData` sets that bring no buyer PII the role may receive (what each set brings:
//! [`PII_DATASETS`] over the PII map, [`pii_categories`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{header, Method, StatusCode, Uri};
use serde::Deserialize;
use tokio::time::Instant;

use super::slots::Slots;
use crate::catalog::Operation;
use crate::pii::{Category, Role};
use crate::secret::Secret;

/// The createRestrictedDataToken path.
pub const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";
/// The catalog key of createRestrictedDataToken (its usage plan limits RDT fetches).
pub const RDT_OPERATION: &str = "tokens_2021-03-01.createRestrictedDataToken";
/// An RDT is used until this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// What a restricted call needs for this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The plain access token: the role may receive none of the optional restricted data.
    Plain,
    /// An RDT, with these `dataElements` (empty for operations that take none).
    Rdt(Vec<&'static str>),
    /// The role may receive nothing this operation returns.
    Refused,
}

/// Why no RDT could be had. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RdtError {
    /// Amazon refused (e.g. the application lacks the restricted role).
    #[error("Amazon refused a Restricted Data Token ({0})")]
    Refused(StatusCode),
    /// Amazon did not answer, answered 5xx or 429, or timed out.
    #[error("createRestrictedDataToken is unavailable: {0}")]
    Unavailable(String),
    /// Amazon answered something we do not understand.
    #[error("createRestrictedDataToken answered unexpectedly: {0}")]
    Protocol(String),
    /// An `includedData` value names no dataset of Orders 2026-01-01 (refused with 400: the
    /// gateway does not send up what it does not know).
    #[error("includedData names an unknown dataset")]
    UnknownIncludedData,
}

/// The buyer-PII categories an operation's responses may carry (the field map's summary).
pub fn categories(op: &Operation) -> &'static [Category] {
    use Category::*;
    const ADDRESS: &[Category] = &[
        Name,
        Address,
        PostalCode,
        CoarseLocation,
        Phone,
        Company,
        DeliveryInstructions,
    ];
    const BUYER: &[Category] = &[Name, Email, Company, TaxId, CoarseLocation];
    const ITEMS: &[Category] = &[GiftMessage, CustomizationUrl];
    const ORDER: &[Category] = &[
        Name,
        Email,
        Phone,
        Address,
        PostalCode,
        CoarseLocation,
        Company,
        TaxId,
    ];
    const SHIPMENT: &[Category] = &[
        Name,
        Email,
        Phone,
        Address,
        PostalCode,
        CoarseLocation,
        Document,
    ];
    const INVOICE: &[Category] = &[
        Name,
        Address,
        PostalCode,
        CoarseLocation,
        Phone,
        TaxId,
        Company,
    ];
    const VENDOR_ORDER: &[Category] = &[
        Name,
        Address,
        PostalCode,
        CoarseLocation,
        Phone,
        TaxId,
        Company,
        GiftMessage,
        CustomizationUrl,
    ];
    const DOCUMENT: &[Category] = &[Document];
    match (op.model, op.operation_id) {
        ("ordersV0", "getOrders" | "getOrder") => ORDER,
        ("ordersV0", "getOrderItems" | "getOrderItemsBuyerInfo") => ITEMS,
        ("ordersV0", "getOrderAddress") => ADDRESS,
        ("ordersV0", "getOrderBuyerInfo") => BUYER,
        ("ordersV0", "getOrderRegulatedInfo") => &[RegulatedInfo],
        ("merchantFulfillmentV0", _) => SHIPMENT,
        ("shipmentInvoicingV0", _) => INVOICE,
        ("easyShip_2022-03-23", _) => DOCUMENT,
        ("vendorDirectFulfillmentOrdersV1" | "vendorDirectFulfillmentOrders_2021-12-28", _) => {
            VENDOR_ORDER
        }
        (m, _) if m.starts_with("vendorDirectFulfillmentShipping") => DOCUMENT,
        // A report document may hold any buyer column, depending on the report type.
        ("reports_2021-06-30", "getReportDocument") => &Category::ALL,
        _ => &Category::ALL,
    }
}

/// What a call to the restricted operation `op` needs for `role`.
pub fn need(op: &Operation, role: &Role) -> Need {
    use Category::*;
    match (op.model, op.operation_id) {
        ("ordersV0", "getOrders" | "getOrder") => {
            let mut elements = Vec::new();
            if role.receives_any(&[Name, Email, Company, TaxId]) {
                elements.push("buyerInfo");
            }
            // ShippingAddress holds the recipient's company name too.
            if role.receives_any(&[Name, Address, PostalCode, CoarseLocation, Phone, Company]) {
                elements.push("shippingAddress");
            }
            if role.receives_any(&[TaxId, Company]) {
                elements.push("buyerTaxInformation");
            }
            if elements.is_empty() {
                Need::Plain
            } else {
                Need::Rdt(elements)
            }
        }
        ("ordersV0", "getOrderItems") => {
            if role.receives_any(&[GiftMessage, CustomizationUrl]) {
                Need::Rdt(vec!["buyerInfo"])
            } else {
                Need::Plain
            }
        }
        _ if role.receives_any(categories(op)) => Need::Rdt(Vec::new()),
        _ => Need::Refused,
    }
}

/// Which `includedData` dataset brings each piece of buyer PII of Orders 2026-01-01, by path
/// prefix relative to an `Order` (`[]`: every element). Amazon's migration guide: the buyer,
/// and an item's gift message and customization (v0's `getOrderItemsBuyerInfo`), come with
/// `BUYER`; the delivery address and preferences with `RECIPIENT`; tax registrations with `TAX`.
/// `tests` check that every buyer-PII path of the 2026 operations' PII map has one.
pub const PII_DATASETS: [(&str, &str); 5] = [
    ("buyer", "BUYER"),
    ("recipient", "RECIPIENT"),
    ("tax", "TAX"),
    (
        "orderItems[].fulfillment.packing.giftOption.giftMessage",
        "BUYER",
    ),
    ("orderItems[].product.customization", "BUYER"),
];

/// Which dataset brings the other parts of an Orders 2026-01-01 `Order` (no buyer PII of their
/// own), by path prefix as in [`PII_DATASETS`]; a part no prefix names comes always.
pub const PART_DATASETS: [(&str, &str); 14] = [
    ("proceeds", "PROCEEDS"),
    ("payment", "PAYMENT"),
    ("fulfillment", "FULFILLMENT"),
    ("packages", "PACKAGES"),
    ("fulfillmentOrders", "FULFILLMENT_ORDERS"),
    ("buyer", "BUYER"),
    ("recipient", "RECIPIENT"),
    ("tax", "TAX"),
    ("orderItems[].proceeds", "PROCEEDS"),
    ("orderItems[].expense", "EXPENSE"),
    ("orderItems[].promotion", "PROMOTION"),
    ("orderItems[].cancellation", "CANCELLATION"),
    ("orderItems[].fulfillment", "FULFILLMENT"),
    ("orderItems[].tax", "TAX"),
];

/// Whether `path` is `prefix` or lies below it (`prefix.x`, `prefix[]...`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with("[]"))
}

/// The dataset that brings the buyer PII at `path` (relative to an Orders 2026-01-01 `Order`,
/// `[]` for every element), if the path is under one of [`PII_DATASETS`].
pub fn pii_dataset_of(path: &str) -> Option<&'static str> {
    PII_DATASETS
        .iter()
        .find(|(prefix, _)| under(path, prefix))
        .map(|(_, set)| *set)
}

/// Every dataset a value at `path` needs to be in an Orders 2026-01-01 answer: the datasets of
/// the parts it lies in and, for buyer PII, the dataset that brings it.
pub fn datasets_of(path: &str) -> Vec<&'static str> {
    let mut sets: Vec<&'static str> = PART_DATASETS
        .iter()
        .filter(|(prefix, _)| under(path, prefix))
        .map(|(_, set)| *set)
        .collect();
    sets.extend(pii_dataset_of(path));
    sets.sort_unstable();
    sets.dedup();
    sets
}

/// The buyer-PII categories each dataset brings, from the PII map of Orders 2026-01-01
/// `getOrder` (every field under the dataset's prefixes), so a field added to the map moves
/// with its dataset. Datasets without buyer PII are absent.
static PII_DATASET_CATEGORIES: std::sync::LazyLock<Vec<(&'static str, Vec<Category>)>> =
    std::sync::LazyLock::new(|| {
        let mut out: Vec<(&'static str, Vec<Category>)> = Vec::new();
        let fields = crate::pii::map::FieldMap::builtin()
            .get(GET_ORDER_2026)
            .map(|m| m.fields.as_slice())
            .unwrap_or_default();
        for field in fields {
            let Some(path) = field.path.strip_prefix("order.") else {
                continue;
            };
            let Some(set) = pii_dataset_of(path) else {
                continue;
            };
            match out.iter_mut().find(|(s, _)| *s == set) {
                Some((_, cats)) if !cats.contains(&field.category) => cats.push(field.category),
                Some(_) => {}
                None => out.push((set, vec![field.category])),
            }
        }
        out
    });

/// The catalog key of Orders 2026-01-01 `getOrder`, whose PII map decides what each dataset
/// brings.
const GET_ORDER_2026: &str = "orders_2026-01-01.getOrder";

/// The buyer-PII categories the dataset `set` brings (`None`: it brings none).
pub fn pii_categories(set: &str) -> Option<&'static [Category]> {
    PII_DATASET_CATEGORIES
        .iter()
        .find(|(s, _)| set.eq_ignore_ascii_case(s))
        .map(|(_, cats)| cats.as_slice())
}

/// Every dataset `includedData` of Orders 2026-01-01 `searchOrders` and `getOrder` names in
/// Amazon's model.
pub const KNOWN_INCLUDED_DATA: [&str; 11] = [
    "BUYER",
    "RECIPIENT",
    "PROCEEDS",
    "EXPENSE",
    "PROMOTION",
    "CANCELLATION",
    "FULFILLMENT",
    "PACKAGES",
    "TAX",
    "PAYMENT",
    "FULFILLMENT_ORDERS",
];

/// For Orders 2026-01-01, removes the `includedData` values whose data the role may not receive.
/// The key is matched as Amazon matches it: case-insensitively, repeated, and in the bracketed
/// forms `includedData[]` and `includedData[0]`; values are comma lists, case-insensitive.
/// Every form is sent up as plain `includedData`. Returns the new path-and-query when something
/// was removed or rewritten; a value that is not one of Amazon's datasets is
/// [`RdtError::UnknownIncludedData`].
pub fn reduce_included_data(
    op: &Operation,
    role: &Role,
    path_and_query: &str,
) -> Result<Option<String>, RdtError> {
    if op.model != "orders_2026-01-01" {
        return Ok(None);
    }
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Ok(None);
    };
    let mut removed = false;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !is_included_data_key(&k) {
            out.append_pair(&k, &v);
            continue;
        }
        removed |= k != "includedData";
        let sets: Vec<&str> = v.split(',').map(str::trim).collect();
        if !sets.iter().all(|set| {
            KNOWN_INCLUDED_DATA
                .iter()
                .any(|k| set.eq_ignore_ascii_case(k))
        }) {
            return Err(RdtError::UnknownIncludedData);
        }
        let kept: Vec<&str> = sets
            .into_iter()
            .filter(|set| {
                let allowed = pii_categories(set).is_none_or(|cats| role.receives_any(cats));
                removed |= !allowed;
                allowed
            })
            .collect();
        if !kept.is_empty() {
            out.append_pair("includedData", &kept.join(","));
        }
    }
    Ok(removed.then(|| {
        let q = out.finish();
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{q}")
        }
    }))
}

/// Whether a query key names `includedData` in any form Amazon accepts.
fn is_included_data_key(key: &str) -> bool {
    if !key
        .get(..12)
        .is_some_and(|k| k.eq_ignore_ascii_case("includedData"))
    {
        return false;
    }
    match &key[12..] {
        "" | "[]" => true,
        bracket => bracket
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix(']'))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// Identifies one cached RDT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RdtKey {
    /// The seller.
    pub seller: String,
    /// HTTP method of the restricted call.
    pub method: Method,
    /// The resource path: the template, or the specific path where Amazon requires it.
    pub path: String,
    /// The data elements asked for.
    pub elements: Vec<&'static str>,
}

impl RdtKey {
    /// The key for a call to `op` at `request_path`.
    pub fn new(
        seller: &str,
        op: &Operation,
        request_path: &str,
        elements: Vec<&'static str>,
    ) -> RdtKey {
        // getReportDocument's RDT must name the document; the others accept the template.
        let path = if op.operation_id == "getReportDocument" {
            request_path.to_string()
        } else {
            op.path.to_string()
        };
        RdtKey {
            seller: seller.to_string(),
            method: op.method.clone(),
            path,
            elements,
        }
    }
}

#[derive(Deserialize)]
struct RdtResponse {
    #[serde(rename = "restrictedDataToken")]
    restricted_data_token: String,
    #[serde(rename = "expiresIn")]
    expires_in: u64,
}

/// Gets and caches RDTs.
pub struct Rdts {
    /// The control-plane HTTP client.
    http: reqwest::Client,
    tokens: Slots<RdtKey, Secret<String>, RdtError>,
    calls: AtomicU64,
}

impl Rdts {
    /// An RDT client whose calls end within `timeout`.
    pub fn new(timeout: Duration) -> Result<Rdts, RdtError> {
        let http = super::control_plane::client(timeout)
            .map_err(|e| RdtError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Rdts {
            http,
            tokens: Slots::new(),
            calls: AtomicU64::new(0),
        })
    }

    /// How many createRestrictedDataToken calls were made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The RDT for `key`, from the cache or from `endpoint` using the seller's access token.
    /// `admit` runs only when Amazon must be asked: it takes a token of the
    /// createRestrictedDataToken usage plan, so these calls are rate limited like any other.
    pub async fn token<A>(
        &self,
        key: &RdtKey,
        endpoint: &Uri,
        access_token: &Secret<String>,
        admit: A,
    ) -> Result<Secret<String>, RdtError>
    where
        A: std::future::Future<Output = Result<(), RdtError>>,
    {
        self.tokens
            .get_or_fetch(key, || async {
                admit.await?;
                self.fetch(key, endpoint, access_token).await
            })
            .await
    }

    /// Forgets an RDT that Amazon rejected.
    pub async fn invalidate(&self, key: &RdtKey, token: &Secret<String>) {
        self.tokens.invalidate_if(key, |t| t == token).await;
    }

    async fn fetch(
        &self,
        key: &RdtKey,
        endpoint: &Uri,
        access_token: &Secret<String>,
    ) -> Result<(Secret<String>, Instant), RdtError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut resource = serde_json::json!({ "method": key.method.as_str(), "path": key.path });
        if !key.elements.is_empty() {
            resource["dataElements"] = serde_json::json!(key.elements);
        }
        let body = serde_json::json!({ "restrictedResources": [resource] }).to_string();
        let uri = Uri::builder()
            .scheme(endpoint.scheme_str().unwrap_or("https"))
            .authority(endpoint.authority().map(|a| a.as_str()).unwrap_or_default())
            .path_and_query(RDT_PATH)
            .build()
            .map_err(|e| RdtError::Protocol(e.to_string()))?;
        let mut token_header = http::HeaderValue::from_str(access_token.expose())
            .map_err(|_| RdtError::Protocol("access token is not a header value".into()))?;
        token_header.set_sensitive(true);
        let req = self
            .http
            .post(uri.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(crate::spapi::ACCESS_TOKEN, token_header)
            .body(body);
        let started = Instant::now();
        let exchange = async {
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        };
        let (status, bytes) = exchange
            .await
            .map_err(|e| RdtError::Unavailable(super::control_plane::describe(&e)))?;
        match status {
            s if s.is_success() => {
                let r: RdtResponse = serde_json::from_slice(&bytes)
                    .map_err(|e| RdtError::Protocol(format!("response: {e}")))?;
                let lifetime = Duration::from_secs(r.expires_in);
                let margin = EXPIRY_MARGIN.min(lifetime / 2);
                Ok((
                    Secret::new(r.restricted_data_token),
                    started + lifetime - margin,
                ))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(RdtError::Unavailable(format!("answered {s}")))
            }
            // A 403 about the access token itself is a token problem, reported as 401 so that
            // the caller forgets that token; any other refusal is about the application.
            s if s == StatusCode::FORBIDDEN && crate::spapi::mentions_access_token(&bytes) => {
                Err(RdtError::Refused(StatusCode::UNAUTHORIZED))
            }
            s => Err(RdtError::Refused(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::pii::Action;

    fn role(cats: &[Category]) -> Role {
        Role::new(cats.iter().map(|c| (*c, Action::Pass)))
    }

    fn op(key: &str) -> &'static Operation {
        Catalog::builtin().by_key(key).expect(key)
    }

    #[test]
    fn rdts_ask_only_for_the_data_elements_the_role_may_receive() {
        use Category::*;
        let cases: &[(&str, &[Category], Need)] = &[
            ("ordersV0.getOrder", &[], Need::Plain),
            (
                "ordersV0.getOrder",
                &[Address],
                Need::Rdt(vec!["shippingAddress"]),
            ),
            ("ordersV0.getOrders", &[Email], Need::Rdt(vec!["buyerInfo"])),
            (
                "ordersV0.getOrder",
                &[Company],
                Need::Rdt(vec!["buyerInfo", "shippingAddress", "buyerTaxInformation"]),
            ),
            (
                "ordersV0.getOrders",
                &[TaxId],
                Need::Rdt(vec!["buyerInfo", "buyerTaxInformation"]),
            ),
            (
                "ordersV0.getOrder",
                &[Name],
                Need::Rdt(vec!["buyerInfo", "shippingAddress"]),
            ),
            ("ordersV0.getOrderItems", &[Address], Need::Plain),
            (
                "ordersV0.getOrderItems",
                &[GiftMessage],
                Need::Rdt(vec!["buyerInfo"]),
            ),
            ("ordersV0.getOrderAddress", &[Address], Need::Rdt(vec![])),
            ("ordersV0.getOrderAddress", &[Email], Need::Refused),
            (
                "ordersV0.getOrderRegulatedInfo",
                &[Name, Address],
                Need::Refused,
            ),
            (
                "ordersV0.getOrderRegulatedInfo",
                &[RegulatedInfo],
                Need::Rdt(vec![]),
            ),
            (
                "reports_2021-06-30.getReportDocument",
                &[Email],
                Need::Rdt(vec![]),
            ),
            ("reports_2021-06-30.getReportDocument", &[], Need::Refused),
            (
                "vendorDirectFulfillmentShippingV1.getShippingLabel",
                &[Address],
                Need::Refused,
            ),
            (
                "vendorDirectFulfillmentShippingV1.getShippingLabel",
                &[Document],
                Need::Rdt(vec![]),
            ),
        ];
        for (key, cats, expect) in cases {
            assert_eq!(&need(op(key), &role(cats)), expect, "{key} {cats:?}");
        }
    }

    #[test]
    fn report_documents_are_keyed_by_their_specific_path_and_others_by_template() {
        let report = RdtKey::new(
            "A1",
            op("reports_2021-06-30.getReportDocument"),
            "/reports/2021-06-30/documents/DOC-1",
            vec![],
        );
        assert_eq!(report.path, "/reports/2021-06-30/documents/DOC-1");
        let address = RdtKey::new(
            "A1",
            op("ordersV0.getOrderAddress"),
            "/orders/v0/orders/1-2-3/address",
            vec![],
        );
        assert_eq!(address.path, "/orders/v0/orders/{orderId}/address");
    }

    #[test]
    fn included_data_keeps_only_what_the_role_may_receive() {
        use Category::*;
        let search = op("orders_2026-01-01.searchOrders");
        let cases: &[(&[Category], &str, Option<&str>)] = &[
            (
                &[Address],
                "/orders/2026-01-01/orders?includedData=BUYER,RECIPIENT,PROCEEDS&x=1",
                Some("/orders/2026-01-01/orders?includedData=RECIPIENT%2CPROCEEDS&x=1"),
            ),
            (
                &[],
                "/orders/2026-01-01/orders?includedData=BUYER&includedData=TAX",
                Some("/orders/2026-01-01/orders"),
            ),
            (
                &[Email, TaxId],
                "/orders/2026-01-01/orders?includedData=BUYER,TAX",
                None,
            ),
            (&[], "/orders/2026-01-01/orders?includedData=PROCEEDS", None),
            (&[], "/orders/2026-01-01/orders", None),
            // Amazon's other spellings of the key are reduced the same way.
            (
                &[],
                "/orders/2026-01-01/orders?IncludedData=buyer&x=1",
                Some("/orders/2026-01-01/orders?x=1"),
            ),
            (
                &[Address],
                "/orders/2026-01-01/orders?includedData%5B%5D=BUYER&includedData[]=Recipient&INCLUDEDDATA[0]=tax",
                Some("/orders/2026-01-01/orders?includedData=Recipient"),
            ),
            (
                &[Email, TaxId],
                "/orders/2026-01-01/orders?includeddata=BUYER%2C%20TAX",
                Some("/orders/2026-01-01/orders?includedData=BUYER%2CTAX"),
            ),
            // Not the key: passes as it is.
            (
                &[],
                "/orders/2026-01-01/orders?includedDataX=BUYER",
                None,
            ),
        ];
        for (cats, pq, expect) in cases {
            assert_eq!(
                reduce_included_data(search, &role(cats), pq)
                    .unwrap()
                    .as_deref(),
                *expect,
                "{cats:?} {pq}"
            );
        }
        assert_eq!(
            reduce_included_data(
                op("ordersV0.getOrders"),
                &role(&[]),
                "/orders/v0/orders?includedData=BUYER"
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn every_buyer_pii_field_of_orders_2026_has_the_dataset_that_brings_it() {
        let map = crate::pii::map::FieldMap::builtin();
        let mut checked = 0;
        for (key, prefix) in [
            ("orders_2026-01-01.getOrder", "order."),
            ("orders_2026-01-01.searchOrders", "orders[]."),
        ] {
            for field in &map.get(key).expect(key).fields {
                let path = field.path.strip_prefix(prefix).expect(field.path);
                let set = pii_dataset_of(path);
                assert!(set.is_some(), "{key} {path}: no dataset brings it");
                assert!(
                    pii_categories(set.unwrap_or_default())
                        .is_some_and(|cats| cats.contains(&field.category)),
                    "{key} {path}"
                );
                checked += 1;
            }
        }
        assert!(checked > 80, "{checked}");
        for (_, set) in PII_DATASETS.iter().chain(PART_DATASETS.iter()) {
            assert!(KNOWN_INCLUDED_DATA.contains(set), "{set}");
        }
    }

    #[test]
    fn a_dataset_is_kept_for_every_category_of_buyer_pii_it_brings() {
        use Category::*;
        // Each of these lost its dataset when the datasets' categories were written by hand:
        // gift messages and customizations come with BUYER, the recipient's company with
        // RECIPIENT, a tax registration's legal name with TAX.
        let cases: &[(Category, &str)] = &[
            (GiftMessage, "BUYER"),
            (CustomizationUrl, "BUYER"),
            (Company, "BUYER"),
            (Company, "RECIPIENT"),
            (DeliveryInstructions, "RECIPIENT"),
            (Name, "TAX"),
            (TaxId, "TAX"),
        ];
        let search = op("orders_2026-01-01.searchOrders");
        for (cat, set) in cases {
            let pq = format!("/orders/2026-01-01/orders?includedData={set}");
            assert_eq!(
                reduce_included_data(search, &role(&[*cat]), &pq).unwrap(),
                None,
                "{cat:?} keeps {set}"
            );
        }
        // And only for those: a category a dataset does not bring does not keep it.
        let cases: &[(Category, &str)] = &[
            (GiftMessage, "RECIPIENT"),
            (Address, "BUYER"),
            (Email, "TAX"),
            (DeliveryInstructions, "BUYER"),
        ];
        for (cat, set) in cases {
            let pq = format!("/orders/2026-01-01/orders?includedData={set}");
            assert_eq!(
                reduce_included_data(search, &role(&[*cat]), &pq)
                    .unwrap()
                    .as_deref(),
                Some("/orders/2026-01-01/orders"),
                "{cat:?} does not keep {set}"
            );
        }
    }

    #[test]
    fn an_unknown_included_data_value_is_refused() {
        use Category::*;
        for pq in [
            "/orders/2026-01-01/orders?includedData=BUYER,SECRETS",
            "/orders/2026-01-01/orders?includedData=buyerx",
            "/orders/2026-01-01/orders?includedData[]=RECIPIENT&IncludedData=PROCEEDS,",
            "/orders/2026-01-01/orders/1?includedData=",
        ] {
            for cats in [&[][..], &[Name, Email, Company, TaxId, Address][..]] {
                assert!(
                    matches!(
                        reduce_included_data(op("orders_2026-01-01.searchOrders"), &role(cats), pq),
                        Err(RdtError::UnknownIncludedData)
                    ),
                    "{pq}"
                );
            }
        }
        // Every dataset of the model is known, in any case.
        let all = KNOWN_INCLUDED_DATA.join(",").to_lowercase();
        let pq = format!("/orders/2026-01-01/orders?includedData={all}");
        assert!(reduce_included_data(op("orders_2026-01-01.getOrder"), &role(&[]), &pq).is_ok());
    }

    #[test]
    fn the_known_datasets_are_the_models() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spapi-models");
        let Some(file) = crate::catalog::Catalog::builtin()
            .by_key("orders_2026-01-01.searchOrders")
            .map(|o| dir.join(o.model_file))
            .filter(|f| f.is_file())
        else {
            assert!(std::env::var_os("CI").is_none(), "CI must have the models");
            return;
        };
        let model: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for path in [
            "/orders/2026-01-01/orders",
            "/orders/2026-01-01/orders/{orderId}",
        ] {
            let params = model["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap();
            let included = params.iter().find(|p| p["name"] == "includedData").unwrap();
            let datasets: Vec<&str> = included["items"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(datasets, KNOWN_INCLUDED_DATA, "{path}");
        }
    }
}
