//! Synthetic orders: a deterministic order book per seller, served in the Orders v0 and Orders
//! 2026-01-01 shapes.
//!
//! Every seller has [`ORDER_COUNT`] orders with ids `999-NNNNNNN-NNNNNNN` derived from the
//! seller id (so one seller cannot read another's). Dates count back from midnight UTC of the day
//! the sandbox was created: the newest orders are unshipped, a few are shipped and in transit,
//! some are canceled, and the rest were delivered between about 5 and 55 days ago (useful for
//! retention tests). Buyer PII is synthetic and obviously so: names like "Ada Synthetic",
//! e-mails at `example.com` or `.invalid`, phones in the fictional 555-01xx range, and
//! "1 Synthetic Way".
//!
//! PII gating follows Amazon:
//! - Orders v0 `getOrders`, `getOrder`, `getOrderItems` include `BuyerInfo`, `ShippingAddress`
//!   and `BuyerTaxInformation` only as granted by the RDT's `dataElements`.
//! - `getOrderAddress`, `getOrderBuyerInfo`, `getOrderItemsBuyerInfo` always return PII (the
//!   token check happens before, in the sandbox's authorization).
//! - Orders 2026-01-01 include `buyer` / `recipient` only when `includedData` asks for `BUYER` /
//!   `RECIPIENT`; gift messages and customization URLs (buyer PII) come with `BUYER` too.

use base64::Engine as _;
use http::StatusCode;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, Time};

use super::Reply;

/// How many orders each seller has.
pub(super) const ORDER_COUNT: u32 = 40;

/// Default and maximum page size for order searches.
const MAX_PAGE: usize = 100;

/// Buyer PII an RDT grants (its resources' `dataElements`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PiiGrants {
    /// `buyerInfo`: `BuyerInfo` on orders and order items.
    pub(super) buyer_info: bool,
    /// `shippingAddress`: `ShippingAddress` on orders.
    pub(super) shipping_address: bool,
    /// `buyerTaxInformation`: `BuyerTaxInformation` on orders.
    pub(super) buyer_tax_information: bool,
}

impl PiiGrants {
    /// Everything either grants.
    pub(super) fn union(self, other: PiiGrants) -> PiiGrants {
        PiiGrants {
            buyer_info: self.buyer_info || other.buyer_info,
            shipping_address: self.shipping_address || other.shipping_address,
            buyer_tax_information: self.buyer_tax_information || other.buyer_tax_information,
        }
    }
}

/// What the order handlers need from a request.
#[derive(Debug)]
pub(super) struct OrdersRequest<'a> {
    /// The seller whose order book to use.
    pub(super) seller: &'a str,
    /// Midnight UTC of the day the sandbox was created.
    pub(super) anchor: OffsetDateTime,
    /// Decoded path parameters.
    pub(super) params: &'a [(&'a str, String)],
    /// Decoded query pairs.
    pub(super) query: &'a [(String, String)],
    /// PII the caller's RDT grants.
    pub(super) grants: PiiGrants,
}

impl OrdersRequest<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a list parameter (comma-separated and/or repeated); `None` when absent.
    fn list(&self, name: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .query
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        (!values.is_empty()).then_some(values)
    }

    fn single(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers a synthetic-orders operation; `None` for operations this module does not serve.
pub(super) fn handle(op_key: &str, req: &OrdersRequest<'_>) -> Option<Reply> {
    let reply = match op_key {
        "ordersV0.getOrders" => v0_get_orders(req),
        "ordersV0.getOrder" => with_order(req, |o| json!({ "payload": v0_order(o, req.grants) })),
        "ordersV0.getOrderAddress" => with_order(req, |o| json!({ "payload": v0_address(o) })),
        "ordersV0.getOrderBuyerInfo" => with_order(req, |o| json!({ "payload": v0_buyer_info(o) })),
        "ordersV0.getOrderItems" => with_order(req, |o| {
            json!({ "payload": {
                "AmazonOrderId": o.id,
                "OrderItems": o.items.iter().map(|i| v0_item(o, i, req.grants)).collect::<Vec<_>>(),
            }})
        }),
        "ordersV0.getOrderItemsBuyerInfo" => with_order(req, |o| {
            json!({ "payload": {
                "AmazonOrderId": o.id,
                "OrderItems": o.items.iter().map(v0_item_buyer_info).collect::<Vec<_>>(),
            }})
        }),
        "orders_2026-01-01.searchOrders" => v2026_search(req),
        "orders_2026-01-01.getOrder" => match included(req) {
            Ok(inc) => with_order(req, |o| json!({ "order": v2026_order(o, inc) })),
            Err(reply) => reply,
        },
        _ => return None,
    };
    Some(reply)
}

fn with_order(req: &OrdersRequest<'_>, render: impl FnOnce(&Order) -> Value) -> Reply {
    let id = req.param("orderId").unwrap_or_default();
    match book(req.seller, req.anchor)
        .into_iter()
        .find(|o| o.id == id)
    {
        Some(order) => Reply::json(StatusCode::OK, &render(&order)),
        None => Reply::error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The requested order was not found.",
        ),
    }
}

fn invalid(message: &str) -> Reply {
    Reply::error(StatusCode::BAD_REQUEST, "InvalidInput", message)
}

// --- The order book ---

/// An order's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Unshipped,
    Shipped,
    Canceled,
    /// A valid status no synthetic order has (e.g. `Pending`).
    Other,
}

/// A marketplace the synthetic orders come from.
#[derive(Debug)]
struct Marketplace {
    id: &'static str,
    sales_channel: &'static str,
    currency: &'static str,
    country: &'static str,
    state: &'static str,
    postal_code: &'static str,
}

const US: Marketplace = Marketplace {
    id: "ATVPDKIKX0DER",
    sales_channel: "Amazon.com",
    currency: "USD",
    country: "US",
    state: "WA",
    postal_code: "98101",
};

const CA: Marketplace = Marketplace {
    id: "A2EUQ1WTGCTBG2",
    sales_channel: "Amazon.ca",
    currency: "CAD",
    country: "CA",
    state: "BC",
    postal_code: "V5K 0A1",
};

/// (first name, last name) of synthetic buyers.
const BUYERS: [(&str, &str); 8] = [
    ("Ada", "Synthetic"),
    ("Grace", "Fictional"),
    ("Alan", "Placeholder"),
    ("Edsger", "Example"),
    ("Barbara", "Testcase"),
    ("Donald", "Dummy"),
    ("Frances", "Sample"),
    ("Ken", "Mockingbird"),
];

/// (ASIN, SKU, title, unit price in cents) of synthetic products.
const PRODUCTS: [(&str, &str, &str, u64); 5] = [
    ("B0SYNTH001", "SYN-MUG-01", "Synthetic Ceramic Mug", 1299),
    (
        "B0SYNTH002",
        "SYN-TEE-02",
        "Placeholder Cotton T-Shirt",
        1850,
    ),
    ("B0SYNTH003", "SYN-LAMP-03", "Example Desk Lamp", 3499),
    (
        "B0SYNTH004",
        "SYN-BOOK-04",
        "Fictional Notebook, 3-Pack",
        899,
    ),
    ("B0SYNTH005", "SYN-CABLE-05", "Sample USB-C Cable", 1099),
];

const BUSINESS_NAME: &str = "Synthetic Widgets LLC";

#[derive(Debug)]
struct Order {
    id: String,
    index: u32,
    market: &'static Marketplace,
    status: Status,
    delivered: bool,
    purchased: OffsetDateTime,
    last_update: OffsetDateTime,
    shipped: Option<OffsetDateTime>,
    latest_ship: OffsetDateTime,
    earliest_delivery: OffsetDateTime,
    latest_delivery: OffsetDateTime,
    business: bool,
    prime: bool,
    /// Fulfilled by Amazon (AFN) rather than the seller (MFN).
    afn: bool,
    /// Has regulated items (v0 `HasRegulatedItems`; 2026 has no such field).
    regulated: bool,
    items: Vec<Item>,
}

#[derive(Debug)]
struct Item {
    id: String,
    asin: &'static str,
    sku: &'static str,
    title: &'static str,
    quantity: u32,
    unit_cents: u64,
    gift_message: Option<&'static str>,
    customized_url: Option<String>,
}

/// A number derived from the seller, a label and an index (deterministic, well spread).
fn derive(seller: &str, label: &str, index: u32) -> u64 {
    let input = format!("{seller}\u{0}{label}\u{0}{index}");
    let hash = digest::digest(&digest::SHA256, input.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The seller's order book, newest first.
fn book(seller: &str, anchor: OffsetDateTime) -> Vec<Order> {
    (0..ORDER_COUNT).map(|i| order(seller, anchor, i)).collect()
}

/// The id of the seller's `i`-th synthetic order.
fn order_id(seller: &str, i: u32) -> String {
    let n = derive(seller, "order", i) % 100_000_000_000_000;
    format!("999-{:07}-{:07}", n / 10_000_000, n % 10_000_000)
}

/// The ids of every synthetic order of a seller, newest first.
pub(super) fn order_ids(seller: &str) -> Vec<String> {
    (0..ORDER_COUNT).map(|i| order_id(seller, i)).collect()
}

fn order(seller: &str, anchor: OffsetDateTime, i: u32) -> Order {
    let id = order_id(seller, i);
    let purchased =
        anchor - Duration::hours(i64::from(i) * 36 + 6) + Duration::minutes(i64::from(i % 7) * 7);
    let status = if i < 3 {
        Status::Unshipped
    } else if i % 9 == 4 {
        Status::Canceled
    } else {
        Status::Shipped
    };
    let delivered = status == Status::Shipped && i >= 6;
    let shipped = (status == Status::Shipped).then(|| purchased + Duration::days(1));
    let last_update = match status {
        Status::Unshipped | Status::Other => purchased + Duration::minutes(10),
        Status::Canceled => purchased + Duration::hours(2),
        Status::Shipped if delivered => purchased + Duration::days(4),
        Status::Shipped => purchased + Duration::days(1),
    };
    let items = (0..1 + i % 3)
        .map(|k| {
            let (asin, sku, title, unit_cents) = PRODUCTS[((i + k) % 5) as usize];
            let item_id = format!(
                "{:014}",
                derive(seller, "item", i * 8 + k) % 100_000_000_000_000
            );
            Item {
                customized_url: (k == 0 && i % 5 == 2)
                    .then(|| format!("https://customization.synthetic.invalid/{id}/{item_id}.zip")),
                id: item_id,
                asin,
                sku,
                title,
                quantity: 1 + (i + k) % 2,
                unit_cents,
                gift_message: (k == 0 && i % 4 == 1)
                    .then_some("Happy birthday! From your synthetic friend."),
            }
        })
        .collect();
    Order {
        id,
        index: i,
        market: if i % 5 == 4 { &CA } else { &US },
        status,
        delivered,
        purchased,
        last_update,
        shipped,
        latest_ship: purchased + Duration::days(2),
        earliest_delivery: purchased + Duration::days(3),
        latest_delivery: purchased + Duration::days(10),
        business: i % 6 == 5,
        prime: i.is_multiple_of(2),
        afn: i % 7 == 6,
        regulated: i % 8 == 3,
        items,
    }
}

impl Order {
    fn buyer_name(&self) -> String {
        let (first, last) = BUYERS[self.index as usize % BUYERS.len()];
        format!("{first} {last}")
    }

    fn buyer_email(&self) -> String {
        let (first, last) = BUYERS[self.index as usize % BUYERS.len()];
        if self.index.is_multiple_of(2) {
            format!(
                "{}.{}+{}@example.com",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase(),
                self.index
            )
        } else {
            format!("buyer-{}@synthetic.invalid", self.index)
        }
    }

    fn phone(&self) -> String {
        format!("+1 206-555-01{:02}", self.index % 100)
    }

    fn total_cents(&self) -> u64 {
        self.items
            .iter()
            .map(|i| i.unit_cents * u64::from(i.quantity))
            .sum()
    }

    fn money_v0(&self, cents: u64) -> Value {
        json!({ "CurrencyCode": self.market.currency, "Amount": amount(cents) })
    }

    fn money_2026(&self, cents: u64) -> Value {
        json!({ "amount": amount(cents), "currencyCode": self.market.currency })
    }

    fn shipped_quantity(&self, item: &Item) -> u32 {
        if self.status == Status::Shipped {
            item.quantity
        } else {
            0
        }
    }
}

fn amount(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn ts(t: OffsetDateTime) -> String {
    // RFC 3339 formatting of a UTC time cannot fail for dates in this range.
    t.format(&Rfc3339).unwrap_or_default()
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Value) {
    map.insert(key.to_owned(), value);
}

// --- Report documents ---

/// The report document id whose download is the seller's synthetic orders as a
/// `GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING`-style flat file (tab-separated, with buyer PII).
pub(super) const ORDERS_DOCUMENT_ID: &str = "SPGATE-SANDBOX-ORDERS-SHIPPING";

/// The header of the synthetic orders flat file.
const ORDERS_DOCUMENT_COLUMNS: [&str; 18] = [
    "order-id",
    "order-item-id",
    "purchase-date",
    "buyer-email",
    "buyer-name",
    "buyer-phone-number",
    "sku",
    "product-name",
    "quantity-purchased",
    "recipient-name",
    "ship-address-1",
    "ship-address-2",
    "ship-city",
    "ship-state",
    "ship-postal-code",
    "ship-country",
    "ship-phone-number",
    "is-business-order",
];

/// The seller's synthetic orders as a flat file, one row per order item.
pub(super) fn orders_document(seller: &str, anchor: OffsetDateTime) -> String {
    let mut out = ORDERS_DOCUMENT_COLUMNS.join("\t");
    out.push('\n');
    for o in book(seller, anchor) {
        for item in &o.items {
            let row = [
                o.id.clone(),
                item.id.clone(),
                ts(o.purchased),
                o.buyer_email(),
                o.buyer_name(),
                o.phone(),
                item.sku.to_string(),
                item.title.to_string(),
                item.quantity.to_string(),
                o.buyer_name(),
                "1 Synthetic Way".to_string(),
                format!("Suite {}", 100 + o.index),
                "Testville".to_string(),
                o.market.state.to_string(),
                o.market.postal_code.to_string(),
                o.market.country.to_string(),
                o.phone(),
                o.business.to_string(),
            ];
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
    }
    out
}

// --- Orders v0 ---

fn v0_status(status: Status) -> &'static str {
    match status {
        Status::Unshipped => "Unshipped",
        Status::Shipped => "Shipped",
        Status::Canceled => "Canceled",
        Status::Other => "Pending",
    }
}

fn v0_address(o: &Order) -> Value {
    let mut payload = Map::new();
    insert(&mut payload, "AmazonOrderId", o.id.clone().into());
    if o.business {
        insert(&mut payload, "BuyerCompanyName", BUSINESS_NAME.into());
    }
    insert(&mut payload, "ShippingAddress", v0_shipping_address(o));
    insert(
        &mut payload,
        "DeliveryPreferences",
        json!({
            "DropOffLocation": "Front door",
            "AddressInstructions": "Synthetic instructions: ring the fictional bell.",
        }),
    );
    Value::Object(payload)
}

fn v0_shipping_address(o: &Order) -> Value {
    let mut address = json!({
        "Name": o.buyer_name(),
        "AddressLine1": "1 Synthetic Way",
        "AddressLine2": format!("Suite {}", 100 + o.index),
        "City": "Testville",
        "StateOrRegion": o.market.state,
        "PostalCode": o.market.postal_code,
        "CountryCode": o.market.country,
        "Phone": o.phone(),
        "AddressType": if o.business { "Commercial" } else { "Residential" },
    });
    if let (true, Some(map)) = (o.business, address.as_object_mut()) {
        insert(map, "CompanyName", BUSINESS_NAME.into());
    }
    address
}

fn v0_buyer_tax_info() -> Value {
    json!({
        "CompanyLegalName": BUSINESS_NAME,
        "TaxingRegion": "WA",
        "TaxClassifications": [{ "Name": "VATNumber", "Value": "XX000000000" }],
    })
}

fn v0_buyer_info(o: &Order) -> Value {
    let mut info = Map::new();
    insert(&mut info, "AmazonOrderId", o.id.clone().into());
    v0_buyer_fields(o, &mut info);
    Value::Object(info)
}

fn v0_buyer_fields(o: &Order, info: &mut Map<String, Value>) {
    insert(info, "BuyerEmail", o.buyer_email().into());
    insert(info, "BuyerName", o.buyer_name().into());
    if o.business {
        insert(info, "BuyerTaxInfo", v0_buyer_tax_info());
        insert(
            info,
            "PurchaseOrderNumber",
            format!("PO-SYNTH-{:04}", o.index).into(),
        );
    }
}

fn v0_order(o: &Order, grants: PiiGrants) -> Value {
    let shipped_items: u32 = o.items.iter().map(|i| o.shipped_quantity(i)).sum();
    let all_items: u32 = o.items.iter().map(|i| i.quantity).sum();
    let unshipped_items = if o.status == Status::Unshipped {
        all_items
    } else {
        0
    };
    let mut order = json!({
        "AmazonOrderId": o.id,
        "SellerOrderId": format!("SYNTH-{:04}", o.index),
        "PurchaseDate": ts(o.purchased),
        "LastUpdateDate": ts(o.last_update),
        "OrderStatus": v0_status(o.status),
        "FulfillmentChannel": if o.afn { "AFN" } else { "MFN" },
        "SalesChannel": o.market.sales_channel,
        "ShipServiceLevel": "Std Dom",
        "NumberOfItemsShipped": shipped_items,
        "NumberOfItemsUnshipped": unshipped_items,
        "PaymentMethod": "Other",
        "PaymentMethodDetails": ["Standard"],
        "MarketplaceId": o.market.id,
        "ShipmentServiceLevelCategory": "Standard",
        "OrderType": "StandardOrder",
        "EarliestShipDate": ts(o.purchased),
        "LatestShipDate": ts(o.latest_ship),
        "EarliestDeliveryDate": ts(o.earliest_delivery),
        "LatestDeliveryDate": ts(o.latest_delivery),
        "IsBusinessOrder": o.business,
        "IsPrime": o.prime,
        "IsPremiumOrder": false,
        "IsGlobalExpressEnabled": false,
        "IsReplacementOrder": false,
        "IsSoldByAB": false,
        "IsIBA": false,
        "IsISPU": false,
        "IsAccessPointOrder": false,
        "HasRegulatedItems": o.regulated,
    });
    let Some(map) = order.as_object_mut() else {
        return order;
    };
    if o.status != Status::Canceled {
        insert(map, "OrderTotal", o.money_v0(o.total_cents()));
    }
    if grants.buyer_info {
        let mut info = Map::new();
        v0_buyer_fields(o, &mut info);
        insert(map, "BuyerInfo", Value::Object(info));
    }
    if grants.shipping_address {
        insert(map, "ShippingAddress", v0_shipping_address(o));
    }
    if grants.buyer_tax_information && o.business {
        insert(
            map,
            "BuyerTaxInformation",
            json!({
                "BuyerLegalCompanyName": BUSINESS_NAME,
                "BuyerBusinessAddress": "1 Synthetic Way, Testville",
                "BuyerTaxRegistrationId": format!("SYNTH-TAX-{:04}", o.index),
                "BuyerTaxOffice": "Synthetic Tax Office",
            }),
        );
    }
    order
}

fn v0_item_buyer_fields(item: &Item, map: &mut Map<String, Value>) {
    if let Some(message) = item.gift_message {
        insert(map, "GiftMessageText", message.into());
        insert(map, "GiftWrapLevel", "Classic".into());
    }
    if let Some(url) = &item.customized_url {
        insert(map, "BuyerCustomizedInfo", json!({ "CustomizedURL": url }));
    }
}

fn v0_item(o: &Order, item: &Item, grants: PiiGrants) -> Value {
    let mut value = json!({
        "ASIN": item.asin,
        "SellerSKU": item.sku,
        "OrderItemId": item.id,
        "Title": item.title,
        "QuantityOrdered": item.quantity,
        "QuantityShipped": o.shipped_quantity(item),
        "ProductInfo": { "NumberOfItems": "1" },
        "ItemPrice": o.money_v0(item.unit_cents * u64::from(item.quantity)),
        "ItemTax": o.money_v0(0),
        "ShippingPrice": o.money_v0(0),
        "PromotionDiscount": o.money_v0(0),
        "IsGift": if item.gift_message.is_some() { "true" } else { "false" },
        "ConditionId": "New",
        "ConditionSubtypeId": "New",
        "IsTransparency": false,
        "SerialNumberRequired": false,
    });
    if grants.buyer_info && (item.gift_message.is_some() || item.customized_url.is_some()) {
        let mut info = Map::new();
        v0_item_buyer_fields(item, &mut info);
        if let Some(map) = value.as_object_mut() {
            insert(map, "BuyerInfo", Value::Object(info));
        }
    }
    value
}

fn v0_item_buyer_info(item: &Item) -> Value {
    let mut map = Map::new();
    insert(&mut map, "OrderItemId", item.id.clone().into());
    v0_item_buyer_fields(item, &mut map);
    Value::Object(map)
}

// --- Searching ---

/// Filters of an order search; carried inside page tokens so later pages use the same ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Filter {
    marketplaces: Option<Vec<String>>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    updated_after: Option<i64>,
    updated_before: Option<i64>,
    statuses: Option<Vec<Status>>,
    ids: Option<Vec<String>>,
    /// Fulfillment channels kept (true: AFN, false: MFN); `None`: all.
    channels: Option<Vec<bool>>,
    page_size: usize,
}

impl Filter {
    fn keeps(&self, o: &Order) -> bool {
        let after =
            |bound: Option<i64>, t: OffsetDateTime| bound.is_none_or(|b| t.unix_timestamp() >= b);
        let before =
            |bound: Option<i64>, t: OffsetDateTime| bound.is_none_or(|b| t.unix_timestamp() < b);
        self.channels.as_ref().is_none_or(|c| c.contains(&o.afn))
            && self
                .marketplaces
                .as_ref()
                .is_none_or(|m| m.iter().any(|id| id == o.market.id))
            && self.statuses.as_ref().is_none_or(|s| s.contains(&o.status))
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&o.id))
            && after(self.created_after, o.purchased)
            && before(self.created_before, o.purchased)
            && after(self.updated_after, o.last_update)
            && before(self.updated_before, o.last_update)
    }
}

/// A page token: where the next page starts, and the search's filters.
#[derive(Debug, Serialize, Deserialize)]
struct PageToken {
    offset: usize,
    filter: Filter,
}

fn encode_token(offset: usize, filter: &Filter) -> String {
    let json = serde_json::to_vec(&PageToken {
        offset,
        filter: filter.clone(),
    })
    .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_token(token: &str) -> Option<PageToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Parses an ISO 8601 timestamp: RFC 3339, `YYYY-MM-DDTHH:MM:SS` (UTC) or `YYYY-MM-DD`.
fn parse_time(value: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    if let Ok(t) = PrimitiveDateTime::parse(value, format) {
        return Some(t.assume_utc().unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(value, format).ok().map(|d| {
        PrimitiveDateTime::new(d, Time::MIDNIGHT)
            .assume_utc()
            .unix_timestamp()
    })
}

/// Reads a timestamp parameter; `Err` names the parameter when it does not parse.
fn time_param(req: &OrdersRequest<'_>, name: &str) -> Result<Option<i64>, Reply> {
    match req.single(name) {
        None => Ok(None),
        Some(value) => parse_time(value)
            .map(Some)
            .ok_or_else(|| invalid(&format!("{name} must be an ISO 8601 date-time."))),
    }
}

fn page_size(req: &OrdersRequest<'_>, name: &str) -> Result<usize, Reply> {
    match req.single(name) {
        None => Ok(MAX_PAGE),
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid(&format!("{name} must be between 1 and 100."))),
    }
}

/// Parses a status list with `names` mapping each accepted name to a status.
fn statuses(
    req: &OrdersRequest<'_>,
    name: &str,
    names: &[(&str, Status)],
) -> Result<Option<Vec<Status>>, Reply> {
    let Some(values) = req.list(name) else {
        return Ok(None);
    };
    values
        .iter()
        .map(|v| {
            names
                .iter()
                .find(|(n, _)| n == v)
                .map(|(_, s)| *s)
                .ok_or_else(|| invalid(&format!("{name} has an invalid value.")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// One page of the seller's orders that pass `filter`, starting at `offset`, and the offset of
/// the next page if there is one.
fn page(req: &OrdersRequest<'_>, filter: &Filter, offset: usize) -> (Vec<Order>, Option<usize>) {
    let matching: Vec<Order> = book(req.seller, req.anchor)
        .into_iter()
        .filter(|o| filter.keeps(o))
        .collect();
    let next = (offset + filter.page_size < matching.len()).then_some(offset + filter.page_size);
    let page = matching
        .into_iter()
        .skip(offset)
        .take(filter.page_size)
        .collect();
    (page, next)
}

fn v0_get_orders(req: &OrdersRequest<'_>) -> Reply {
    let (filter, offset) = match req.single("NextToken") {
        Some(token) => match decode_token(token) {
            Some(t) => (t.filter, t.offset),
            None => return invalid("Invalid NextToken."),
        },
        None => match v0_filter(req) {
            Ok(filter) => (filter, 0),
            Err(reply) => return reply,
        },
    };
    let (orders, next) = page(req, &filter, offset);
    let mut payload = Map::new();
    insert(
        &mut payload,
        "Orders",
        orders
            .iter()
            .map(|o| v0_order(o, req.grants))
            .collect::<Vec<_>>()
            .into(),
    );
    if let Some(next) = next {
        insert(
            &mut payload,
            "NextToken",
            encode_token(next, &filter).into(),
        );
    }
    let horizon = ts(OffsetDateTime::now_utc() - Duration::minutes(2));
    let key = if filter.updated_after.is_some() {
        "LastUpdatedBefore"
    } else {
        "CreatedBefore"
    };
    insert(&mut payload, key, horizon.into());
    Reply::json(StatusCode::OK, &json!({ "payload": payload }))
}

fn v0_filter(req: &OrdersRequest<'_>) -> Result<Filter, Reply> {
    const NAMES: [(&str, Status); 8] = [
        ("Unshipped", Status::Unshipped),
        ("Shipped", Status::Shipped),
        ("Canceled", Status::Canceled),
        ("Pending", Status::Other),
        ("PartiallyShipped", Status::Other),
        ("Unfulfillable", Status::Other),
        ("InvoiceUnconfirmed", Status::Other),
        ("PendingAvailability", Status::Other),
    ];
    Ok(Filter {
        marketplaces: req.list("MarketplaceIds"),
        created_after: time_param(req, "CreatedAfter")?,
        created_before: time_param(req, "CreatedBefore")?,
        updated_after: time_param(req, "LastUpdatedAfter")?,
        updated_before: time_param(req, "LastUpdatedBefore")?,
        statuses: statuses(req, "OrderStatuses", &NAMES)?,
        ids: req.list("AmazonOrderIds"),
        channels: channels(req, "FulfillmentChannels", ("AFN", "MFN"))?,
        page_size: page_size(req, "MaxResultsPerPage")?,
    })
}

// --- Orders 2026-01-01 ---

/// The `includedData` values the model allows (the gateway refuses any other).
use crate::auth::rdt::KNOWN_INCLUDED_DATA as INCLUDED_DATA;

/// Which optional blocks a 2026 response includes.
#[derive(Debug, Clone, Copy, Default)]
struct Included {
    buyer: bool,
    recipient: bool,
    proceeds: bool,
    fulfillment: bool,
    packages: bool,
}

fn included(req: &OrdersRequest<'_>) -> Result<Included, Reply> {
    let mut inc = Included::default();
    for value in req.list("includedData").unwrap_or_default() {
        if !INCLUDED_DATA.contains(&value.as_str()) {
            return Err(invalid("includedData has an invalid value."));
        }
        match value.as_str() {
            "BUYER" => inc.buyer = true,
            "RECIPIENT" => inc.recipient = true,
            "PROCEEDS" => inc.proceeds = true,
            "FULFILLMENT" => inc.fulfillment = true,
            "PACKAGES" => inc.packages = true,
            _ => {}
        }
    }
    Ok(inc)
}

fn v2026_status(status: Status) -> &'static str {
    match status {
        Status::Unshipped => "UNSHIPPED",
        Status::Shipped => "SHIPPED",
        Status::Canceled => "CANCELLED",
        Status::Other => "PENDING",
    }
}

fn v2026_order(o: &Order, inc: Included) -> Value {
    let items: Vec<Value> = o.items.iter().map(|i| v2026_item(o, i, inc)).collect();
    let mut order = Map::new();
    insert(&mut order, "orderId", o.id.clone().into());
    insert(
        &mut order,
        "orderAliases",
        json!([{ "aliasId": format!("SYNTH-{:04}", o.index), "aliasType": "SELLER_ORDER_ID" }]),
    );
    insert(&mut order, "createdTime", ts(o.purchased).into());
    insert(&mut order, "lastUpdatedTime", ts(o.last_update).into());
    let programs: Vec<&str> = [(o.prime, "PRIME"), (o.business, "AMAZON_BUSINESS")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    insert(&mut order, "programs", json!(programs));
    insert(
        &mut order,
        "salesChannel",
        json!({
            "channelName": "AMAZON",
            "marketplaceId": o.market.id,
            "marketplaceName": o.market.sales_channel,
        }),
    );
    if inc.buyer {
        let mut buyer = Map::new();
        insert(&mut buyer, "buyerName", o.buyer_name().into());
        insert(&mut buyer, "buyerEmail", o.buyer_email().into());
        if o.business {
            insert(&mut buyer, "buyerCompanyName", BUSINESS_NAME.into());
            insert(
                &mut buyer,
                "buyerPurchaseOrderNumber",
                format!("PO-SYNTH-{:04}", o.index).into(),
            );
        }
        insert(&mut order, "buyer", Value::Object(buyer));
    }
    if inc.recipient {
        let mut address = json!({
            "name": o.buyer_name(),
            "addressLine1": "1 Synthetic Way",
            "addressLine2": format!("Suite {}", 100 + o.index),
            "city": "Testville",
            "stateOrRegion": o.market.state,
            "postalCode": o.market.postal_code,
            "countryCode": o.market.country,
            "phone": o.phone(),
            "addressType": if o.business { "COMMERCIAL" } else { "RESIDENTIAL" },
        });
        if let (true, Some(map)) = (o.business, address.as_object_mut()) {
            insert(map, "companyName", BUSINESS_NAME.into());
        }
        insert(
            &mut order,
            "recipient",
            json!({
                "deliveryAddress": address,
                "deliveryPreference": {
                    "dropOffLocation": "Front door",
                    "addressInstruction": "Synthetic instructions: ring the fictional bell.",
                },
            }),
        );
    }
    if inc.proceeds && o.status != Status::Canceled {
        insert(
            &mut order,
            "proceeds",
            json!({ "grandTotal": o.money_2026(o.total_cents()) }),
        );
    }
    if inc.fulfillment {
        insert(
            &mut order,
            "fulfillment",
            json!({
                "fulfillmentStatus": v2026_status(o.status),
                "fulfilledBy": if o.afn { "AMAZON" } else { "MERCHANT" },
                "fulfillmentServiceLevel": "STANDARD",
                "shipByWindow": {
                    "earliestDateTime": ts(o.purchased),
                    "latestDateTime": ts(o.latest_ship),
                },
                "deliverByWindow": {
                    "earliestDateTime": ts(o.earliest_delivery),
                    "latestDateTime": ts(o.latest_delivery),
                },
            }),
        );
    }
    insert(&mut order, "orderItems", items.into());
    if let (true, Some(shipped)) = (inc.packages, o.shipped) {
        let tracking = derive(&o.id, "tracking", o.index) % 1_000_000_000_000;
        insert(
            &mut order,
            "packages",
            json!([{
                "packageReferenceId": "1",
                "createdTime": ts(shipped),
                "packageStatus": { "status": if o.delivered { "DELIVERED" } else { "IN_TRANSIT" } },
                "carrier": "Synthetic Parcel Service",
                "shipTime": ts(shipped),
                "shippingService": "Standard",
                "trackingNumber": format!("SYN{tracking:012}"),
                "packageItems": o.items.iter().map(|i| json!({
                    "orderItemId": i.id,
                    "quantity": i.quantity,
                })).collect::<Vec<_>>(),
            }]),
        );
    }
    Value::Object(order)
}

fn v2026_item(o: &Order, item: &Item, inc: Included) -> Value {
    let mut product = json!({
        "asin": item.asin,
        "title": item.title,
        "sellerSku": item.sku,
        "condition": { "conditionType": "NEW", "conditionSubtype": "NEW" },
        "price": { "unitPrice": o.money_2026(item.unit_cents) },
    });
    if let (true, Some(url), Some(map)) = (inc.buyer, &item.customized_url, product.as_object_mut())
    {
        insert(map, "customization", json!({ "customizedUrl": url }));
    }
    let mut value = Map::new();
    insert(&mut value, "orderItemId", item.id.clone().into());
    insert(&mut value, "quantityOrdered", item.quantity.into());
    insert(&mut value, "product", product);
    if inc.proceeds {
        let total = item.unit_cents * u64::from(item.quantity);
        let zero = |subtype: &str| json!({ "subtype": subtype, "value": o.money_2026(0) });
        let mut proceeds = json!({
            "breakdowns": [
                { "type": "ITEM", "subtotal": o.money_2026(total) },
                { "type": "SHIPPING", "subtotal": o.money_2026(0) },
                { "type": "TAX", "subtotal": o.money_2026(0), "detailedBreakdowns": [zero("ITEM")] },
                { "type": "DISCOUNT", "subtotal": o.money_2026(0), "detailedBreakdowns": [zero("ITEM")] },
            ],
        });
        if let (true, Some(map)) = (o.status != Status::Canceled, proceeds.as_object_mut()) {
            insert(map, "proceedsTotal", o.money_2026(total));
        }
        insert(&mut value, "proceeds", proceeds);
    }
    if inc.fulfillment {
        let shipped = o.shipped_quantity(item);
        let unfulfilled = if o.status == Status::Canceled {
            0
        } else {
            item.quantity - shipped
        };
        let mut fulfillment = json!({
            "quantityFulfilled": shipped,
            "quantityUnfulfilled": unfulfilled,
        });
        if let (Some(message), Some(map)) = (item.gift_message, fulfillment.as_object_mut()) {
            // The wrap level is no buyer PII; the message comes only with BUYER.
            let mut gift = json!({ "giftWrapLevel": "Classic" });
            if let (true, Some(g)) = (inc.buyer, gift.as_object_mut()) {
                insert(g, "giftMessage", message.into());
            }
            insert(map, "packing", json!({ "giftOption": gift }));
        }
        insert(&mut value, "fulfillment", fulfillment);
    }
    Value::Object(value)
}

fn v2026_search(req: &OrdersRequest<'_>) -> Reply {
    let inc = match included(req) {
        Ok(inc) => inc,
        Err(reply) => return reply,
    };
    let (filter, offset) = match req.single("paginationToken") {
        Some(token) => match decode_token(token) {
            Some(t) => (t.filter, t.offset),
            None => return invalid("Invalid paginationToken."),
        },
        None => match v2026_filter(req) {
            Ok(filter) => (filter, 0),
            Err(reply) => return reply,
        },
    };
    let (orders, next) = page(req, &filter, offset);
    let mut body = Map::new();
    insert(
        &mut body,
        "orders",
        orders
            .iter()
            .map(|o| v2026_order(o, inc))
            .collect::<Vec<_>>()
            .into(),
    );
    if let Some(next) = next {
        insert(
            &mut body,
            "pagination",
            json!({ "nextToken": encode_token(next, &filter) }),
        );
    }
    let horizon = ts(OffsetDateTime::now_utc() - Duration::minutes(2));
    let key = if filter.updated_after.is_some() {
        "lastUpdatedBefore"
    } else {
        "createdBefore"
    };
    insert(&mut body, key, horizon.into());
    Reply::json(StatusCode::OK, &Value::Object(body))
}

fn v2026_filter(req: &OrdersRequest<'_>) -> Result<Filter, Reply> {
    const NAMES: [(&str, Status); 7] = [
        ("UNSHIPPED", Status::Unshipped),
        ("SHIPPED", Status::Shipped),
        ("CANCELLED", Status::Canceled),
        ("PENDING_AVAILABILITY", Status::Other),
        ("PENDING", Status::Other),
        ("PARTIALLY_SHIPPED", Status::Other),
        ("UNFULFILLABLE", Status::Other),
    ];
    Ok(Filter {
        marketplaces: req.list("marketplaceIds"),
        created_after: time_param(req, "createdAfter")?,
        created_before: time_param(req, "createdBefore")?,
        updated_after: time_param(req, "lastUpdatedAfter")?,
        updated_before: time_param(req, "lastUpdatedBefore")?,
        statuses: statuses(req, "fulfillmentStatuses", &NAMES)?,
        ids: None,
        channels: channels(req, "fulfilledBy", ("AMAZON", "MERCHANT"))?,
        page_size: page_size(req, "maxResultsPerPage")?,
    })
}

/// Parses a fulfillment channel filter with the names (Amazon's, the seller's).
fn channels(
    req: &OrdersRequest<'_>,
    name: &str,
    (amazon, merchant): (&str, &str),
) -> Result<Option<Vec<bool>>, Reply> {
    let Some(values) = req.list(name) else {
        return Ok(None);
    };
    values
        .iter()
        .map(|v| match v.as_str() {
            v if v == amazon => Ok(true),
            v if v == merchant => Ok(false),
            _ => Err(invalid(&format!("{name} has an invalid value."))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

// --- Orders v0 removed ---

impl super::Sandbox {
    /// Switches Orders v0 off, as Amazon will after March 27, 2027: the six read operations
    /// answer `404 NotFound` until [`super::Sandbox::clear_scripts`].
    pub fn remove_orders_v0(&self) {
        for kind in crate::compat::Kind::ALL {
            self.script(
                kind.v0_key(),
                super::Script::json(
                    StatusCode::NOT_FOUND,
                    json!({ "errors": [{
                        "code": "NotFound",
                        "message": "Orders API v0 has been removed; use Orders API v2026-01-01.",
                        "details": "",
                    }]}),
                ),
            );
        }
    }
}

#[cfg(test)]
#[path = "orders_compat_tests.rs"]
mod compat_tests;

#[cfg(test)]
pub(super) mod testing {
    //! Access to the order book for tests.

    use super::*;

    /// (order id, v0 status, delivered, is business) of each of the seller's orders.
    pub(in crate::sandbox) fn summary(
        seller: &str,
        anchor: OffsetDateTime,
    ) -> Vec<(String, &'static str, bool, bool)> {
        book(seller, anchor)
            .into_iter()
            .map(|o| (o.id.clone(), v0_status(o.status), o.delivered, o.business))
            .collect()
    }

    /// Ids of orders with at least one gift message / customized item.
    pub(in crate::sandbox) fn with_item_pii(seller: &str, anchor: OffsetDateTime) -> Vec<String> {
        book(seller, anchor)
            .into_iter()
            .filter(|o| {
                o.items
                    .iter()
                    .any(|i| i.gift_message.is_some() || i.customized_url.is_some())
            })
            .map(|o| o.id)
            .collect()
    }
}
