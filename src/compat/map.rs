//! The field map (`data/orders-v0-map.tsv`) and the engine that builds v0 objects from 2026 ones.
//!
//! Each row names a v0 response field (by scope and path) and either the 2026 field it is made
//! from with a named conversion, or `unavailable` with the reason. The engine is a pure function
//! of (rows, 2026 JSON): no I/O, no PII in anything it reports.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::CompatError;

/// The map's text, embedded at build time.
pub const MAP_TSV: &str = include_str!("../../data/orders-v0-map.tsv");

/// Where a row's v0 field sits (a v0 model definition) and what its 2026 source is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// v0 `Order`, from a 2026 `Order`.
    Order,
    /// v0 `OrderItem`, from a 2026 `OrderItem`.
    Item,
    /// v0 `OrderAddress`, from a 2026 `Order`.
    Address,
    /// v0 `OrderBuyerInfo`, from a 2026 `Order`.
    Buyer,
    /// v0 `OrderItemBuyerInfo`, from a 2026 `OrderItem`.
    ItemBuyer,
    /// v0 `OrdersList` (besides `Orders`), from a 2026 `SearchOrdersResponse`.
    Orders,
    /// v0 `OrderItemsList` (besides `OrderItems`), from a 2026 `Order`.
    Items,
    /// v0 `OrderItemsBuyerInfoList` (besides `OrderItems`), from a 2026 `Order`.
    ItemsBuyer,
    /// v0 `ErrorList`, from a 2026 `ErrorList` (same shape: error answers pass unchanged).
    Errors,
}

impl Scope {
    /// Every scope, in map order.
    pub const ALL: [Scope; 9] = [
        Scope::Order,
        Scope::Item,
        Scope::Address,
        Scope::Buyer,
        Scope::ItemBuyer,
        Scope::Orders,
        Scope::Items,
        Scope::ItemsBuyer,
        Scope::Errors,
    ];

    /// The scope's name in the map.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Order => "order",
            Scope::Item => "item",
            Scope::Address => "address",
            Scope::Buyer => "buyer",
            Scope::ItemBuyer => "itembuyer",
            Scope::Orders => "orders",
            Scope::Items => "items",
            Scope::ItemsBuyer => "itemsbuyer",
            Scope::Errors => "errors",
        }
    }

    /// The v0 model definition the scope's fields are relative to.
    pub fn v0_definition(self) -> &'static str {
        match self {
            Scope::Order => "Order",
            Scope::Item => "OrderItem",
            Scope::Address => "OrderAddress",
            Scope::Buyer => "OrderBuyerInfo",
            Scope::ItemBuyer => "OrderItemBuyerInfo",
            Scope::Orders => "OrdersList",
            Scope::Items => "OrderItemsList",
            Scope::ItemsBuyer => "OrderItemsBuyerInfoList",
            Scope::Errors => "ErrorList",
        }
    }

    /// The 2026 model definition the scope's sources are relative to.
    pub fn source_definition(self) -> &'static str {
        match self {
            Scope::Order | Scope::Address | Scope::Buyer | Scope::Items | Scope::ItemsBuyer => {
                "Order"
            }
            Scope::Item | Scope::ItemBuyer => "OrderItem",
            Scope::Orders => "SearchOrdersResponse",
            Scope::Errors => "ErrorList",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// An enum conversion table (2026 value -> v0 value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnumTable {
    /// `fulfillmentStatus` -> `OrderStatus`.
    OrderStatus,
    /// `fulfilledBy` -> `FulfillmentChannel`.
    FulfillmentChannel,
    /// `fulfillmentServiceLevel` -> `ShipmentServiceLevelCategory`.
    ServiceLevel,
    /// `addressType` -> `AddressType`.
    AddressType,
    /// `conditionType` -> `ConditionId`.
    Condition,
    /// `conditionSubtype` -> `ConditionSubtypeId`.
    ConditionSubtype,
    /// `substitutionType` -> `SubstitutionType`.
    SubstitutionType,
}

impl EnumTable {
    fn parse(name: &str) -> Option<EnumTable> {
        Some(match name {
            "order_status" => EnumTable::OrderStatus,
            "fulfillment_channel" => EnumTable::FulfillmentChannel,
            "service_level" => EnumTable::ServiceLevel,
            "address_type" => EnumTable::AddressType,
            "condition" => EnumTable::Condition,
            "condition_subtype" => EnumTable::ConditionSubtype,
            "substitution_type" => EnumTable::SubstitutionType,
            _ => return None,
        })
    }

    /// (2026 value, v0 value) pairs.
    pub fn pairs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            EnumTable::OrderStatus => &[
                ("PENDING_AVAILABILITY", "PendingAvailability"),
                ("PENDING", "Pending"),
                ("UNSHIPPED", "Unshipped"),
                ("PARTIALLY_SHIPPED", "PartiallyShipped"),
                ("SHIPPED", "Shipped"),
                ("CANCELLED", "Canceled"),
                ("UNFULFILLABLE", "Unfulfillable"),
            ],
            EnumTable::FulfillmentChannel => &[("AMAZON", "AFN"), ("MERCHANT", "MFN")],
            EnumTable::ServiceLevel => &[
                ("EXPEDITED", "Expedited"),
                ("FREE_ECONOMY", "FreeEconomy"),
                ("NEXT_DAY", "NextDay"),
                ("PRIORITY", "Priority"),
                ("SAME_DAY", "SameDay"),
                ("SECOND_DAY", "SecondDay"),
                ("SCHEDULED", "Scheduled"),
                ("STANDARD", "Standard"),
            ],
            EnumTable::AddressType => {
                &[("RESIDENTIAL", "Residential"), ("COMMERCIAL", "Commercial")]
            }
            EnumTable::Condition => &[
                ("NEW", "New"),
                ("USED", "Used"),
                ("COLLECTIBLE", "Collectible"),
                ("REFURBISHED", "Refurbished"),
                ("PREORDER", "Preorder"),
                ("CLUB", "Club"),
            ],
            EnumTable::ConditionSubtype => &[
                ("NEW", "New"),
                ("MINT", "Mint"),
                ("VERY_GOOD", "Very Good"),
                ("GOOD", "Good"),
                ("ACCEPTABLE", "Acceptable"),
                ("POOR", "Poor"),
                ("CLUB", "Club"),
                ("OEM", "OEM"),
                ("WARRANTY", "Warranty"),
                ("REFURBISHED_WARRANTY", "Refurbished Warranty"),
                ("REFURBISHED", "Refurbished"),
                ("OPEN_BOX", "Open Box"),
                ("ANY", "Any"),
                ("OTHER", "Other"),
            ],
            EnumTable::SubstitutionType => &[
                ("CUSTOMER_PREFERENCE", "CUSTOMER_PREFERENCE"),
                ("AMAZON_RECOMMENDED", "AMAZON_RECOMMENDED"),
                ("DO_NOT_SUBSTITUTE", "DO_NOT_SUBSTITUTE"),
            ],
        }
    }

    /// The v0 value of a 2026 value.
    pub fn to_v0(self, value: &str) -> Option<&'static str> {
        self.pairs()
            .iter()
            .find(|(new, _)| *new == value)
            .map(|(_, old)| *old)
    }

    /// The 2026 value of a v0 value (request parameters).
    pub fn to_2026(self, value: &str) -> Option<&'static str> {
        self.pairs()
            .iter()
            .find(|(_, old)| *old == value)
            .map(|(new, _)| *new)
    }
}

/// How a v0 field is made from its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// The value as it is: a string, number or boolean, or a list of them; anything else
    /// (an object, a list of objects) fails, so no unmapped field is carried along.
    Copy,
    /// An ISO 8601 date-time, checked to parse.
    Date,
    /// A value looked up in an enum table.
    Enum(EnumTable),
    /// `true` when the source list contains the value, else `false` (always produced).
    Has(String),
    /// `true` when the source is present, else `false` (always produced).
    Present,
    /// `"true"` / `"false"` as a string (always produced).
    PresentString,
    /// `"true"` when the source is present, else nothing.
    PresentTrue,
    /// The sum of the integers the source names (absent when it names none).
    Sum,
    /// A pagination token, wrapped by the gateway.
    Token,
}

impl Conversion {
    /// Whether the v0 field carries the source's value (or a value made from it), rather than
    /// only whether the source is there.
    pub fn carries_value(&self) -> bool {
        match self {
            Conversion::Copy
            | Conversion::Date
            | Conversion::Enum(_)
            | Conversion::Sum
            | Conversion::Token => true,
            Conversion::Has(_)
            | Conversion::Present
            | Conversion::PresentString
            | Conversion::PresentTrue => false,
        }
    }

    fn parse(text: &str) -> Option<Conversion> {
        Some(match text {
            "copy" => Conversion::Copy,
            "date" => Conversion::Date,
            "present" => Conversion::Present,
            "present-string" => Conversion::PresentString,
            "present-true" => Conversion::PresentTrue,
            "sum" => Conversion::Sum,
            "token" => Conversion::Token,
            _ => {
                if let Some(table) = text.strip_prefix("enum:") {
                    Conversion::Enum(EnumTable::parse(table)?)
                } else if let Some(value) = text.strip_prefix("has:") {
                    if value.is_empty() {
                        return None;
                    }
                    Conversion::Has(value.to_string())
                } else {
                    return None;
                }
            }
        })
    }
}

/// One row of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The v0 definition the field is in.
    pub scope: Scope,
    /// The v0 field's path inside the scope (`.` between properties, `[]` for a list).
    pub field: String,
    /// How it is produced, or why not.
    pub rule: Rule,
}

/// Whether and how a v0 field is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// From the 2026 source path, converted.
    Produced {
        /// The 2026 field, relative to the scope's source definition.
        source: String,
        /// The conversion.
        conversion: Conversion,
    },
    /// Not available in translated answers.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// The parsed map.
#[derive(Debug, Clone)]
pub struct FieldMap {
    /// Every row, in file order.
    pub rows: Vec<Row>,
}

impl FieldMap {
    /// Parses the map; a malformed line is an error naming its line number.
    pub fn parse(text: &str) -> Result<FieldMap, String> {
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let bad = |why: &str| format!("orders-v0-map.tsv line {line_no}: {why}");
            if cols.len() < 4 || cols.len() > 5 {
                return Err(bad("expected 4 or 5 tab-separated columns"));
            }
            let scope = Scope::parse(cols[0]).ok_or_else(|| bad("unknown scope"))?;
            let field = cols[1].to_string();
            if field.is_empty() {
                return Err(bad("empty field"));
            }
            let reason = cols.get(4).copied().unwrap_or("").trim();
            let rule = if cols[3] == "unavailable" {
                if cols[2] != "-" || reason.is_empty() {
                    return Err(bad("an unavailable field has source `-` and a reason"));
                }
                Rule::Unavailable {
                    reason: reason.to_string(),
                }
            } else {
                let conversion =
                    Conversion::parse(cols[3]).ok_or_else(|| bad("unknown conversion"))?;
                if cols[2] == "-" || cols[2].is_empty() {
                    return Err(bad("a produced field names its source"));
                }
                parse_path(cols[2]).ok_or_else(|| bad("malformed source path"))?;
                Rule::Produced {
                    source: cols[2].to_string(),
                    conversion,
                }
            };
            if rows
                .iter()
                .any(|r: &Row| r.scope == scope && r.field == field)
            {
                return Err(bad("field listed twice"));
            }
            rows.push(Row { scope, field, rule });
        }
        Ok(FieldMap { rows })
    }

    /// The rows of one scope.
    pub fn scope(&self, scope: Scope) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.scope == scope)
    }
}

/// One step of a source path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A property.
    Key(&'a str),
    /// A property that is a list: every element.
    Each(&'a str),
    /// A property that is a list: the elements whose `key` equals `value`.
    Filter {
        /// The list property.
        list: &'a str,
        /// The element's property compared.
        key: &'a str,
        /// The value it must have.
        value: &'a str,
    },
}

/// Parses a source path (`a.b[].c[k=V].d`); `None` when malformed.
pub fn parse_path(path: &str) -> Option<Vec<Step<'_>>> {
    path.split('.')
        .map(|part| {
            if let Some(name) = part.strip_suffix("[]") {
                (!name.is_empty()).then_some(Step::Each(name))
            } else if let Some((name, rest)) = part.split_once('[') {
                let (key, value) = rest.strip_suffix(']')?.split_once('=')?;
                (!name.is_empty() && !key.is_empty() && !value.is_empty()).then_some(Step::Filter {
                    list: name,
                    key,
                    value,
                })
            } else {
                (!part.is_empty() && !part.contains(']')).then_some(Step::Key(part))
            }
        })
        .collect()
}

/// Every value a source path names in `root` (none when any step is missing).
pub fn resolve<'v>(root: &'v Value, path: &str) -> Vec<&'v Value> {
    let Some(steps) = parse_path(path) else {
        return Vec::new();
    };
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match step {
                Step::Key(k) => next.extend(value.get(k)),
                Step::Each(k) => {
                    if let Some(list) = value.get(k).and_then(Value::as_array) {
                        next.extend(list.iter());
                    }
                }
                Step::Filter {
                    list,
                    key,
                    value: wanted,
                } => {
                    if let Some(list) = value.get(list).and_then(Value::as_array) {
                        next.extend(
                            list.iter()
                                .filter(|e| e.get(key).and_then(Value::as_str) == Some(wanted)),
                        );
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// What a build noticed: v0 fields left out because the 2026 value could not be converted.
/// Names only (scope and field), never a value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (scope, v0 field) of every value that could not be converted.
    pub unconverted: Vec<(&'static str, String)>,
}

/// Wraps a 2026 pagination token into the gateway's own.
pub type WrapToken<'a> = dyn FnMut(&str) -> Result<String, CompatError> + 'a;

/// Builds the v0 object of `scope` from its 2026 source object.
pub fn build(
    map: &FieldMap,
    scope: Scope,
    source: &Value,
    wrap: &mut WrapToken<'_>,
    report: &mut Report,
) -> Result<Map<String, Value>, CompatError> {
    let mut out = Map::new();
    for row in map.scope(scope) {
        let Rule::Produced {
            source: path,
            conversion,
        } = &row.rule
        else {
            continue;
        };
        let found = resolve(source, path);
        let list = row.field.ends_with("[]");
        let value = match convert(conversion, &found, list, wrap)? {
            Converted::Value(v) => v,
            Converted::Absent => continue,
            Converted::Failed => {
                report.unconverted.push((scope.name(), row.field.clone()));
                continue;
            }
        };
        set(&mut out, &row.field, value);
    }
    Ok(out)
}

enum Converted {
    Value(Value),
    Absent,
    Failed,
}

fn convert(
    conversion: &Conversion,
    found: &[&Value],
    list: bool,
    wrap: &mut WrapToken<'_>,
) -> Result<Converted, CompatError> {
    let first = found.first().copied();
    Ok(match conversion {
        Conversion::Has(wanted) => Converted::Value(Value::Bool(
            found.iter().any(|v| v.as_str() == Some(wanted.as_str())),
        )),
        Conversion::Present => Converted::Value(Value::Bool(first.is_some())),
        Conversion::PresentString => Converted::Value(Value::String(first.is_some().to_string())),
        Conversion::PresentTrue => match first {
            Some(_) => Converted::Value(Value::String("true".into())),
            None => Converted::Absent,
        },
        _ if found.is_empty() => Converted::Absent,
        // Only leaves are copied: a value the model types as a string, number or boolean. An
        // object or list where the map names a leaf would carry fields nobody classified, so
        // it fails (fail closed: what is not classified never passes).
        Conversion::Copy if list => {
            let mut out = Vec::new();
            for v in found {
                match v {
                    Value::Array(items) if items.iter().all(is_leaf) => {
                        out.extend(items.iter().cloned());
                    }
                    one if is_leaf(one) => out.push((*one).clone()),
                    _ => return Ok(Converted::Failed),
                }
            }
            Converted::Value(Value::Array(out))
        }
        Conversion::Copy => match first {
            Some(Value::Null) | None => Converted::Absent,
            Some(one) if is_leaf(one) => Converted::Value(one.clone()),
            Some(_) => Converted::Failed,
        },
        Conversion::Date => match first.and_then(Value::as_str) {
            Some(text) if OffsetDateTime::parse(text, &Rfc3339).is_ok() => {
                Converted::Value(Value::String(text.to_string()))
            }
            _ => Converted::Failed,
        },
        Conversion::Enum(table) => match first.and_then(Value::as_str).and_then(|v| table.to_v0(v))
        {
            Some(v0) => Converted::Value(Value::String(v0.to_string())),
            None => Converted::Failed,
        },
        Conversion::Sum => {
            let mut total: u64 = 0;
            for v in found {
                match v.as_u64() {
                    Some(n) => total = total.saturating_add(n),
                    None => return Ok(Converted::Failed),
                }
            }
            Converted::Value(Value::from(total))
        }
        // A page token that is there but not a string: leaving it out would end the tool's
        // paging early without a word, so the whole answer is refused.
        Conversion::Token => match first.and_then(Value::as_str) {
            Some(token) => Converted::Value(Value::String(wrap(token)?)),
            None => return Err(CompatError::UpstreamShape("pagination token not a string")),
        },
    })
}

/// Whether a value is a leaf the map may copy: a string, number or boolean.
fn is_leaf(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Sets a v0 field (`a.b.c`, a final `x[]` sets a list) inside `out`, creating objects.
fn set(out: &mut Map<String, Value>, field: &str, value: Value) {
    let mut parts: Vec<&str> = field.split('.').collect();
    let Some(last) = parts.pop() else {
        return;
    };
    let mut here = out;
    for part in parts {
        let entry = here
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        here = next;
    }
    match last.strip_suffix("[]") {
        Some(name) => {
            let list = match value {
                Value::Array(list) => list,
                one => vec![one],
            };
            here.insert(name.to_string(), Value::Array(list));
        }
        None => {
            here.insert(last.to_string(), value);
        }
    }
}
