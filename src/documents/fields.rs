//! Which column, JSON field or XML element of a report document holds buyer PII.
//!
//! Report documents do not say which report type they are, so the gateway decides by name: a
//! flat file's header row, a JSON document's keys, an XML document's element and attribute
//! names. Names are normalised first (`Ship Address 1`, `ship_address_1`, `ship-address-1`,
//! `ShipAddress1` and `shipAddress1` all become the tokens `ship address 1`), then matched
//! against rules distilled from Amazon's report columns:
//!
//! - order reports (`GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING`, `GET_FLAT_FILE_ORDER_REPORT_DATA_*`,
//!   `GET_FLAT_FILE_ALL_ORDERS_DATA_*` when requested with PII): `buyer-email`, `buyer-name`,
//!   `buyer-phone-number`, `recipient-name`, `ship-address-1..3`, `ship-city`, `ship-state`,
//!   `ship-postal-code`, `ship-country`, `ship-phone-number`, `bill-address-1..3`, `bill-city`,
//!   `bill-state`, `bill-postal-code`, `bill-country`, `buyer-company-name`,
//!   `buyer-tax-registration-id`, `buyer-vat-number`, `buyer-cst-number`, `gift-message-text`,
//!   `customized-url`, `customized-page`, `delivery-Instructions`;
//! - Amazon Fulfilled Shipments (`GET_AMAZON_FULFILLED_SHIPMENTS_DATA_GENERAL`, `..._INVOICING`,
//!   `..._TAX`): the same buyer, recipient, ship- and bill- columns;
//! - tax and VAT reports (`SC_VAT_TAX_REPORT`, `GET_VAT_TRANSACTION_DATA`, GST MTR): `Buyer Name`,
//!   `BUYER_VAT_NUMBER`, `Customer Bill To Gstid`, `Ship To City`, `ARRIVAL_POST_CODE`, ...;
//! - XML order reports (`GET_ORDER_REPORT_DATA_SHIPPING`): `<BuyerEmailAddress>`, `<BuyerName>`,
//!   `<BuyerPhoneNumber>`, and `<Name>`, `<AddressFieldOne>`, `<City>`, `<PostalCode>`,
//!   `<PhoneNumber>` inside `<Address>` of `<BillingData>` / `<FulfillmentData>`;
//! - JSON documents: the field names of the SP-API models (`BuyerEmail`, `ShippingAddress.Name`,
//!   `buyer.buyerName`, `recipient.deliveryAddress.addressLine1`, ...).
//!
//! The rules lean towards redacting: an unfamiliar column whose name says e-mail, phone, address
//! or postal code is treated as PII, while names that say seller, ship-from, return, warehouse
//! or vendor are not buyer PII. Generic names (`Name`, `City`) count only inside a buyer context
//! (a name prefix or an enclosing element such as `ShippingAddress`, `Buyer`, `BillToParty`).

use crate::pii::Category;

/// What a column, field or element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Buyer PII of this category.
    Pii(Category),
    /// The Amazon order id (`order-id`, `amazon-order-id`, `AmazonOrderID`), passed to the
    /// redactor with every PII value of the same record.
    OrderId,
}

/// Classifies a flat-file column header.
pub fn classify_header(header: &str) -> Option<Field> {
    classify(header, &[])
}

/// Classifies a JSON key or XML element/attribute name; `ancestors` are the names of the
/// enclosing objects or elements, nearest first (only the nearest two are used).
pub fn classify(name: &str, ancestors: &[&str]) -> Option<Field> {
    let own = tokens(name);
    if own.is_empty() {
        return None;
    }
    let context: Vec<Vec<String>> = ancestors.iter().take(2).map(|a| tokens(a)).collect();
    classify_tokens(&own, &context)
}

/// Memoised [`classify`] for the tokenizers, which see the same few names again and again.
#[derive(Default)]
pub(crate) struct Cache {
    map: std::collections::HashMap<String, (std::sync::Arc<str>, Option<Field>), Fnv>,
    key: String,
}

/// A fast word-at-a-time hash (as rustc's FxHash): the keys are short names from the
/// document, and the table is bounded, so flooding it costs an attacker nothing but time.
type Fnv = std::hash::BuildHasherDefault<FxHasher>;

/// The word-at-a-time hasher.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.add(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(a) ^ ((rest.len() as u64) << 56));
    }
}

// === impl Cache ===

impl Cache {
    /// Most distinct (name, ancestors) combinations kept; the cache starts over when full.
    const MAX_ENTRIES: usize = 4096;

    /// Longest name cached and kept as an ancestor name; longer ones are cut (the cache then
    /// holds at most `MAX_ENTRIES` keys of three such names).
    const MAX_NAME_BYTES: usize = 256;

    pub(crate) fn classify(&mut self, name: &str, ancestors: &[&str]) -> Option<Field> {
        self.classify_shared(name, ancestors).1
    }

    /// Like [`Cache::classify`], also handing out a shared copy of `name` (names repeat, so
    /// the tokenizers keep them without allocating each time).
    pub(crate) fn classify_shared(
        &mut self,
        name: &str,
        ancestors: &[&str],
    ) -> (std::sync::Arc<str>, Option<Field>) {
        if name.len() > Self::MAX_NAME_BYTES {
            // Not a real field name: classified, but neither cached nor kept whole (a deep
            // document of huge keys would otherwise hold them all).
            let field = classify(name, ancestors);
            let mut cut = Self::MAX_NAME_BYTES;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            return (name[..cut].into(), field);
        }
        self.key.clear();
        self.key.push_str(name);
        for a in ancestors.iter().take(2) {
            self.key.push('\0');
            self.key.push_str(a);
        }
        if let Some((shared, field)) = self.map.get(&self.key) {
            return (shared.clone(), *field);
        }
        let field = classify(name, ancestors);
        if self.map.len() >= Self::MAX_ENTRIES {
            self.map.clear();
        }
        let shared: std::sync::Arc<str> = name.into();
        self.map.insert(self.key.clone(), (shared.clone(), field));
        (shared, field)
    }
}

/// Splits a name into lowercase word tokens: separators (`-`, `_`, space, `.`, `/`) split, so do
/// camel-case humps and letter/digit boundaries; a namespace prefix (`ns:`) is dropped.
pub(crate) fn tokens(name: &str) -> Vec<String> {
    let name = name.trim().trim_start_matches('\u{feff}');
    let name = name.rsplit(':').next().unwrap_or(name);
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(&prev) = cur.chars().last().as_ref() {
            let next = chars.get(i + 1).copied();
            let boundary = (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_alphabetic() && c.is_numeric())
                || (prev.is_numeric() && c.is_alphabetic())
                // "IDNumber" -> "ID", "Number"; "URLs" stays.
                || (prev.is_uppercase()
                    && c.is_uppercase()
                    && next.is_some_and(|n| n.is_lowercase())
                    && cur.chars().count() > 1);
            if boundary {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    for t in &mut out {
        *t = t.to_lowercase();
    }
    out
}

/// Words that mark a seller's, Amazon's or a carrier's data: never buyer PII.
const NOT_BUYER: &[&str] = &[
    "seller",
    "selling",
    "sellers",
    "merchant",
    "vendor",
    "supplier",
    "from",
    "departure",
    "return",
    "warehouse",
    "facility",
    "fc",
    "carrier",
];

/// Words that make an ancestor an address or party container.
const CONTAINER: &[&str] = &["address", "party", "location", "contact", "info", "details"];

/// Words that put a generic name (`name`, `city`, `country`) in a buyer's context.
const BUYER_CONTEXT: &[&str] = &[
    "buyer",
    "buyers",
    "recipient",
    "customer",
    "ship",
    "shipping",
    "shipto",
    "bill",
    "billing",
    "billto",
    "to",
    "destination",
    "delivery",
    "deliver",
    "arrival",
    "address",
    "addresses",
    "party",
    "contact",
];

/// Words that make a "...name" column something other than a person's name.
const NOT_A_PERSON: &[&str] = &[
    "product",
    "item",
    "sku",
    "title",
    "service",
    "level",
    "program",
    "marketplace",
    "channel",
    "jurisdiction",
    "file",
    "brand",
    "company",
    "legal",
    "tax",
    "promotion",
    "method",
    "type",
];

fn classify_tokens(own: &[String], context: &[Vec<String>]) -> Option<Field> {
    let has = |w: &str| own.iter().any(|t| t == w);
    let has_any = |ws: &[&str]| own.iter().any(|t| ws.contains(&t.as_str()));
    let ctx_any = |ws: &[&str]| context.iter().flatten().any(|t| ws.contains(&t.as_str()));

    // The order id of the record.
    let joined = own.join("-");
    if matches!(
        joined.as_str(),
        "order-id" | "amazon-order-id" | "orderid" | "amazonorderid"
    ) {
        return Some(Field::OrderId);
    }
    // A seller's (ship-from, return-to, selling party) address container excludes what it
    // holds; any other ancestor with such a word (e.g. `<Return>`) does not.
    let seller_container = context.iter().any(|a| {
        a.iter().any(|t| NOT_BUYER.contains(&t.as_str()))
            && a.iter().any(|t| CONTAINER.contains(&t.as_str()))
    });
    if has_any(NOT_BUYER) || seller_container {
        return None;
    }
    // "order city" (date range reports) is the buyer's; an `<OrderReport>` ancestor says
    // nothing.
    let buyer_context = has_any(BUYER_CONTEXT) || has("order") || ctx_any(BUYER_CONTEXT);
    let pii = |c| Some(Field::Pii(c));

    if has("email") || has("emails") || (has("e") && has("mail")) {
        return pii(Category::Email);
    }
    if has_any(&["phone", "telephone", "mobile", "fax"]) {
        return pii(Category::Phone);
    }
    if has("gift") && (has("message") || has("note")) {
        return pii(Category::GiftMessage);
    }
    if has_any(&["customized", "customization"]) && has_any(&["url", "page", "link"]) {
        return pii(Category::CustomizationUrl);
    }
    if has_any(&["instructions", "instruction"]) || (has("drop") && has("off")) {
        return pii(Category::DeliveryInstructions);
    }
    let tax_id = has_any(&["gstid", "gstin", "cpf", "cnpj", "cst"])
        || (has("vat") && has_any(&["number", "id", "registration"]))
        || (has("tax") && has_any(&["id", "registration", "office", "number", "classifications"]))
        || has("taxid")
        || (has("identification") && has("number"));
    if tax_id && (buyer_context || own.len() <= 2) {
        return pii(Category::TaxId);
    }
    if context.first().is_some_and(|parent| {
        parent.iter().any(|t| t == "classifications") && parent.iter().any(|t| t == "tax")
    }) && has("value")
    {
        return pii(Category::TaxId);
    }
    if has("company") || (has("legal") && has("name")) {
        return if buyer_context {
            pii(Category::Company)
        } else {
            None
        };
    }
    if has_any(&[
        "address",
        "street",
        "complement",
        "neighborhood",
        "addressline",
    ]) && !has_any(&["type", "ip", "verified", "validated", "normalized"])
    {
        return pii(Category::Address);
    }
    if has_any(&["postal", "zip", "postcode", "zipcode", "pincode"])
        || (has("post") && has("code"))
        || (has("pin") && has("code"))
    {
        return pii(Category::PostalCode);
    }
    if has_any(&[
        "city",
        "county",
        "district",
        "state",
        "region",
        "country",
        "municipality",
        "province",
    ]) && buyer_context
        && !has_any(&["status", "tax", "currency"])
    {
        return pii(Category::CoarseLocation);
    }
    let person_word = has_any(&["name", "surname", "firstname", "lastname", "fullname"])
        || (has_any(&["first", "last", "given", "family", "full"]) && has("name"));
    if person_word && !has_any(NOT_A_PERSON) && buyer_context {
        return pii(Category::Name);
    }
    if own.len() == 1 && has_any(&["recipient", "attention", "addressee"]) {
        return pii(Category::Name);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pii(c: Category) -> Option<Field> {
        Some(Field::Pii(c))
    }

    #[test]
    fn names_split_into_the_same_tokens_whatever_their_style() {
        for name in [
            "ship-address-1",
            "ship_address_1",
            "Ship Address 1",
            "ShipAddress1",
            "shipAddress1",
            "SHIP_ADDRESS_1",
        ] {
            assert_eq!(tokens(name), ["ship", "address", "1"], "{name}");
        }
        assert_eq!(tokens("AmazonOrderID"), ["amazon", "order", "id"]);
        assert_eq!(tokens("ns:BuyerName"), ["buyer", "name"]);
        assert_eq!(tokens("\u{feff}order-id"), ["order", "id"]);
    }

    #[test]
    fn amazon_order_report_columns_map_to_their_categories() {
        let cases = [
            ("order-id", Some(Field::OrderId)),
            ("amazon-order-id", Some(Field::OrderId)),
            ("Order ID", Some(Field::OrderId)),
            ("buyer-email", pii(Category::Email)),
            ("buyer-name", pii(Category::Name)),
            ("buyer-phone-number", pii(Category::Phone)),
            ("recipient-name", pii(Category::Name)),
            ("ship-address-1", pii(Category::Address)),
            ("ship-address-2", pii(Category::Address)),
            ("ship-address-3", pii(Category::Address)),
            ("ship-city", pii(Category::CoarseLocation)),
            ("ship-state", pii(Category::CoarseLocation)),
            ("ship-postal-code", pii(Category::PostalCode)),
            ("ship-country", pii(Category::CoarseLocation)),
            ("ship-phone-number", pii(Category::Phone)),
            ("bill-address-1", pii(Category::Address)),
            ("bill-city", pii(Category::CoarseLocation)),
            ("bill-postal-code", pii(Category::PostalCode)),
            ("bill-country", pii(Category::CoarseLocation)),
            ("buyer-company-name", pii(Category::Company)),
            ("buyer-tax-registration-id", pii(Category::TaxId)),
            ("buyer-vat-number", pii(Category::TaxId)),
            ("buyer-cst-number", pii(Category::TaxId)),
            ("gift-message-text", pii(Category::GiftMessage)),
            ("customized-url", pii(Category::CustomizationUrl)),
            ("customized-page", pii(Category::CustomizationUrl)),
            ("delivery-Instructions", pii(Category::DeliveryInstructions)),
            // Tax and VAT reports.
            ("Buyer Name", pii(Category::Name)),
            ("BUYER_VAT_NUMBER", pii(Category::TaxId)),
            ("Customer Bill To Gstid", pii(Category::TaxId)),
            ("Ship To City", pii(Category::CoarseLocation)),
            ("ARRIVAL_POST_CODE", pii(Category::PostalCode)),
            ("ARRIVAL_CITY", pii(Category::CoarseLocation)),
            // Date range reports.
            ("order city", pii(Category::CoarseLocation)),
            ("order postal", pii(Category::PostalCode)),
        ];
        for (header, want) in cases {
            assert_eq!(classify_header(header), want, "{header}");
        }
    }

    #[test]
    fn ordinary_report_columns_and_seller_addresses_are_not_pii() {
        for header in [
            "order-item-id",
            "purchase-date",
            "payments-date",
            "sku",
            "product-name",
            "item-name",
            "quantity-purchased",
            "currency",
            "item-price",
            "item-tax",
            "shipping-price",
            "ship-service-level",
            "ship-promotion-discount",
            "sales-channel",
            "fulfillment-channel",
            "order-status",
            "is-business-order",
            "price-designation",
            "tracking-number",
            "estimated-arrival-date",
            "fulfillment-center-id",
            "asin",
            "ship-from-postal-code",
            "ship-from-city",
            "SELLER_VAT_NUMBER",
            "DEPARTURE_CITY",
            "return-address-1",
            "marketplace-country",
            "Tax Rate",
            "Jurisdiction name",
            "carrier-name",
        ] {
            assert_eq!(classify_header(header), None, "{header}");
        }
    }

    #[test]
    fn generic_json_and_xml_names_count_only_inside_a_buyer_context() {
        assert_eq!(classify("Name", &["ShippingAddress"]), pii(Category::Name));
        assert_eq!(
            classify("Name", &["Address", "FulfillmentData"]),
            pii(Category::Name)
        );
        assert_eq!(classify("name", &["buyer"]), pii(Category::Name));
        assert_eq!(
            classify("City", &["Address"]),
            pii(Category::CoarseLocation)
        );
        assert_eq!(
            classify("AddressFieldOne", &["Address"]),
            pii(Category::Address)
        );
        assert_eq!(
            classify("addressLine1", &["deliveryAddress", "recipient"]),
            pii(Category::Address)
        );
        assert_eq!(
            classify("BuyerEmailAddress", &["BillingData"]),
            pii(Category::Email)
        );
        assert_eq!(classify("PhoneNumber", &["Address"]), pii(Category::Phone));
        assert_eq!(
            classify("Value", &["TaxClassifications", "BuyerTaxInfo"]),
            pii(Category::TaxId)
        );
        assert_eq!(
            classify("AmazonOrderID", &["OrderReport"]),
            Some(Field::OrderId)
        );
        // Not a buyer's.
        assert_eq!(classify("Name", &["Item"]), None);
        assert_eq!(classify("name", &["productType"]), None);
        assert_eq!(classify("City", &["ShipFromAddress"]), None);
        assert_eq!(classify("Name", &["sellingParty", "orderDetails"]), None);
        assert_eq!(classify("ProductName", &["Item"]), None);
        assert_eq!(classify("Title", &["Item"]), None);
        assert_eq!(classify("AddressType", &["ShippingAddress"]), None);
        assert_eq!(classify("Name", &["address", "sellingParty"]), None);
        // A word like "return" on an ancestor that is not an address container does not hide
        // the buyer's data.
        assert_eq!(classify("BuyerName", &["Return"]), pii(Category::Name));
    }
}
