//! The response policy: a pure function of (operation, role, JSON, keys). No I/O, no async, no
//! panic on any input.
//!
//! One walk over the response follows the operation's field map ([`super::map`]):
//! - At a **record root** it reads the record's order id (the associated data of `encrypt` and
//!   the retention key) and its [`OrderFacts`].
//! - At a **PII path** it applies the role's action for the path's category to everything there:
//!   `pass` keeps it, `drop` removes it, `mask`, `pseudonymize` and `encrypt` rewrite each string
//!   in place (objects and arrays keep their shape). A dropped field that the model marks
//!   `required` keeps its key with the empty value of its JSON type (`""`, `0`, `false`, `[]`,
//!   `{}`), because SDKs reject responses that lack required fields. Numbers and booleans cannot
//!   be masked, pseudonymized or encrypted in place: under those actions they are dropped too.
//!   `encrypt` without an order id or without that order's data key also drops (fail closed).
//!   Every such fallback is counted in [`Report::fallbacks`].
//! - **Everywhere else** the safety net scans string values for e-mail addresses and phone
//!   numbers ([`super::net`]) and applies [`Policy::safety_net`] to the whole string (default
//!   `drop`, which keeps the key with `""`: outside the map we cannot know whether the field is
//!   required). Hits are counted in [`Report::net_hits`], never logged. A string where the map
//!   expects an object or array holding PII (a shape the model does not allow) is emptied too.
//!
//! A response that is not JSON, is larger than [`Policy::max_bytes`] or nests too deeply is an
//! error: the caller must not pass anything of it on.
//!
//! Two entry points share these rules: [`apply_bytes`] streams over the raw body (member order,
//! number formatting and untouched escapes preserved; the fast path for the proxy), [`apply`]
//! walks a parsed `serde_json::Value` (re-serialization then sorts members and writes numbers
//! beyond `u64`/`i64` as `f64`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::keys::Keys;
use super::map::{FieldMap, IdSource, Leaf, Node, OpMap, RecordSpec};
use super::net::{self, Hit};
use super::stream::apply_stream;
use super::{mask, Action, Category, Role};

/// How deep a response may nest (serde_json's parser stops at 128 already).
pub const MAX_DEPTH: usize = 256;

/// The default size limit of a restricted response (16 MiB).
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// Limits and the safety-net action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The largest response body accepted, in bytes; larger ones are an error.
    pub max_bytes: usize,
    /// What happens to an e-mail address or phone number found outside the field map.
    pub safety_net: Action,
}

/// Why a restricted response cannot be passed on. Never carries any of the response's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiiError {
    /// The body is not valid JSON.
    #[error("restricted response is not valid JSON (line {line}, column {column})")]
    NotJson {
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column of the syntax error.
        column: usize,
    },
    /// The body is larger than [`Policy::max_bytes`].
    #[error("restricted response is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The JSON nests deeper than the limit ([`super::stream::MAX_NESTING`] for bytes,
    /// [`MAX_DEPTH`] for a `Value`).
    #[error("restricted response nests too deeply")]
    TooDeep,
    /// The transformed JSON could not be written (cannot happen for a `serde_json::Value`).
    #[error("transformed response could not be serialized")]
    Serialize,
}

/// What to do with one value.
#[derive(Clone, PartialEq, Eq)]
pub enum FieldOut {
    /// Keep it as it is.
    Keep,
    /// Replace it (masked, pseudonym or envelope).
    Replace(String),
    /// Remove it.
    Drop,
}

/// How many e-mail addresses and phone numbers the safety net found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHits {
    /// Values holding an e-mail address.
    pub email: usize,
    /// Values holding a phone number (and no e-mail address).
    pub phone: usize,
}

/// What a record says about its order, for the retention scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFacts {
    /// The order id (Amazon order id, purchase order number, fulfillment order id, shipment id
    /// or service job id, as the field map says for the operation).
    pub order_id: String,
    /// Order status (Orders v0 `OrderStatus`, Orders 2026 `fulfillment.fulfillmentStatus`).
    pub status: Option<String>,
    /// Earliest promised delivery date (ISO 8601, as sent).
    pub earliest_delivery: Option<String>,
    /// Latest promised delivery date (ISO 8601, as sent).
    pub latest_delivery: Option<String>,
    /// Whether the response says the order was delivered (Orders 2026: every package
    /// `DELIVERED`; Orders v0: `EasyShipShipmentStatus` `Delivered`).
    pub delivered: bool,
}

/// What a transform did. Holds counts, categories and order facts, never a PII value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The categories present in the response and the action the role applied to them.
    pub returned: BTreeMap<Category, Action>,
    /// E-mail addresses and phone numbers found outside the field map.
    pub net_hits: NetHits,
    /// One entry per record with an order id, in response order.
    pub orders: Vec<OrderFacts>,
    /// How many mapped PII values (non-null) the response held.
    pub fields: usize,
    /// Values dropped because their action could not be applied (`encrypt` without an order
    /// id or data key, a number or boolean under `mask`/`pseudonymize`/`encrypt`, a string
    /// where the map expects an object).
    pub fallbacks: usize,
    /// Whether the operation has a field map (without one, only the safety net ran).
    pub mapped: bool,
}

// === impl Policy ===

impl Default for Policy {
    /// 16 MiB, safety net `drop`.
    fn default() -> Policy {
        Policy {
            max_bytes: DEFAULT_MAX_BYTES,
            safety_net: Action::Drop,
        }
    }
}

// === impl FieldOut ===

impl std::fmt::Debug for FieldOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldOut::Keep => f.write_str("Keep"),
            FieldOut::Replace(v) => write!(f, "Replace(<{} bytes>)", v.len()),
            FieldOut::Drop => f.write_str("Drop"),
        }
    }
}

/// Parses a restricted response, failing closed: too large or not JSON is an error.
pub fn parse(body: &[u8], policy: &Policy) -> Result<Value, PiiError> {
    if body.len() > policy.max_bytes {
        return Err(PiiError::TooLarge {
            size: body.len(),
            limit: policy.max_bytes,
        });
    }
    serde_json::from_slice(body).map_err(|e| PiiError::NotJson {
        line: e.line(),
        column: e.column(),
    })
}

/// Writes a transformed response.
pub fn serialize(value: &Value) -> Result<Vec<u8>, PiiError> {
    serde_json::to_vec(value).map_err(|_| PiiError::Serialize)
}

/// Validates the body (fail closed), applies the role to every mapped field and the safety net
/// everywhere else, in one pass over the bytes ([`super::stream`]): what the policy leaves alone
/// is copied verbatim. Same result as [`parse`] + [`apply`] + [`serialize`], several times faster.
pub fn apply_bytes(
    op_key: &str,
    role: &Role,
    body: &[u8],
    path_params: &[(&str, &str)],
    keys: &Keys<'_>,
    policy: &Policy,
) -> Result<(Vec<u8>, Report), PiiError> {
    apply_stream(
        FieldMap::builtin().get(op_key),
        role,
        body,
        path_params,
        keys,
        policy,
    )
}

/// Applies the role to a parsed response in place (see the module docs).
pub fn apply(
    op_key: &str,
    role: &Role,
    body: &mut Value,
    path_params: &[(&str, &str)],
    keys: &Keys<'_>,
    policy: &Policy,
) -> Result<Report, PiiError> {
    apply_map(
        FieldMap::builtin().get(op_key),
        role,
        body,
        path_params,
        keys,
        policy,
    )
}

/// [`apply`] with an explicit operation map (`None`: only the safety net runs).
pub fn apply_map(
    op: Option<&OpMap>,
    role: &Role,
    body: &mut Value,
    path_params: &[(&str, &str)],
    keys: &Keys<'_>,
    policy: &Policy,
) -> Result<Report, PiiError> {
    let mut walker = Walker {
        role,
        keys,
        net_action: policy.safety_net,
        records: op.map_or(&[], |o| o.records.as_slice()),
        params: path_params,
        report: Report {
            mapped: op.is_some(),
            ..Report::default()
        },
    };
    walker.walk(body, op.map(|o| &o.tree), None, 0)?;
    Ok(walker.report)
}

/// The order ids a response holds (each record's id, which may come from a path parameter when
/// the field map says so), without duplicates, in response order: the caller fetches or
/// creates these orders' data keys before calling [`apply`].
pub fn order_ids(op_key: &str, body: &Value, path_params: &[(&str, &str)]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for facts in orders(op_key, body, path_params) {
        if !ids.contains(&facts.order_id) {
            ids.push(facts.order_id);
        }
    }
    ids
}

/// The [`OrderFacts`] of every record in a response (read only; [`apply`] reports the same).
pub fn orders(op_key: &str, body: &Value, path_params: &[(&str, &str)]) -> Vec<OrderFacts> {
    let mut out = Vec::new();
    let Some(op) = FieldMap::builtin().get(op_key) else {
        return out;
    };
    for spec in &op.records {
        select(body, spec.root, &mut |record| {
            if let Some(facts) = record_facts(spec, record, path_params) {
                out.push(facts);
            }
        });
    }
    out
}

/// The action applied to one string, for code outside the JSON walk (report documents, flat
/// files). An empty string has nothing to hide and is kept by every action but `drop`.
/// `encrypt` needs the order id and that order's data key; without either it drops.
pub fn apply_value(
    category: Category,
    action: Action,
    value: &str,
    order_id: Option<&str>,
    keys: &Keys<'_>,
) -> FieldOut {
    apply_value_counted(category, action, value, order_id, keys).0
}

/// [`apply_value`], also saying whether the action fell back to `drop`.
pub(crate) fn apply_value_counted(
    category: Category,
    action: Action,
    value: &str,
    order_id: Option<&str>,
    keys: &Keys<'_>,
) -> (FieldOut, bool) {
    match action {
        Action::Drop => (FieldOut::Drop, false),
        Action::Pass => (FieldOut::Keep, false),
        _ if value.is_empty() => (FieldOut::Keep, false),
        Action::Mask => (FieldOut::Replace(mask::mask(category, value)), false),
        Action::Pseudonymize => (
            FieldOut::Replace(keys.pseudonym.pseudonymize(category, value)),
            false,
        ),
        Action::Encrypt => {
            let sealed = order_id.and_then(|id| {
                let key = keys.orders.key(id)?;
                super::keys::seal_value(key, id, category, value).ok()
            });
            match sealed {
                Some(envelope) => (FieldOut::Replace(envelope), false),
                None => (FieldOut::Drop, true),
            }
        }
    }
}

/// The JSON type's empty value: what a dropped required field keeps.
fn empty_like(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Bool(_) => Value::Bool(false),
        Value::Number(_) => Value::from(0),
        Value::String(_) => Value::String(String::new()),
        Value::Array(_) => Value::Array(Vec::new()),
        Value::Object(_) => Value::Object(serde_json::Map::new()),
    }
}

/// Calls `f` with every value at `path` (`.` = `value` itself; `[]` expands arrays).
fn select<'v>(value: &'v Value, path: &str, f: &mut dyn FnMut(&'v Value)) {
    if path == "." || path.is_empty() {
        f(value);
        return;
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let (name, items) = match head.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (head, false),
    };
    let Some(child) = value.get(name) else {
        return;
    };
    match (items, child) {
        (true, Value::Array(elements)) => {
            for element in elements {
                select(element, rest, f);
            }
        }
        (true, _) => {}
        (false, child) => select(child, rest, f),
    }
}

/// The buyer e-mail addresses of each record with an order id: `(order id, e-mail)` pairs, for
/// the vault's pseudonym index (data-subject requests by e-mail pseudonym). Read only.
pub fn order_emails(
    op_key: &str,
    body: &Value,
    path_params: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(op) = FieldMap::builtin().get(op_key) else {
        return out;
    };
    for spec in &op.records {
        let prefix = if spec.root == "." {
            String::new()
        } else {
            format!("{}.", spec.root)
        };
        let emails: Vec<&str> = op
            .fields
            .iter()
            .filter(|f| f.category == Category::Email)
            .filter_map(|f| {
                if prefix.is_empty() {
                    Some(f.path)
                } else {
                    f.path.strip_prefix(prefix.as_str())
                }
            })
            .collect();
        if emails.is_empty() {
            continue;
        }
        select(body, spec.root, &mut |record| {
            let Some(facts) = record_facts(spec, record, path_params) else {
                return;
            };
            for path in &emails {
                select(record, path, &mut |v| {
                    if let Some(email) = v.as_str().filter(|e| e.contains('@')) {
                        out.push((facts.order_id.clone(), email.to_string()));
                    }
                });
            }
        });
    }
    out
}

/// The first string (or number) at `path` below `value`, if non-empty.
fn scalar_at(value: &Value, path: &str) -> Option<String> {
    let mut found = None;
    select(value, path, &mut |v| {
        if found.is_none() {
            found = match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
        }
    });
    found
}

/// A record's facts; `None` when it has no order id.
fn record_facts(spec: &RecordSpec, record: &Value, params: &[(&str, &str)]) -> Option<OrderFacts> {
    if !record.is_object() {
        return None;
    }
    let order_id = spec.id.iter().find_map(|source| match source {
        IdSource::Field(path) => scalar_at(record, path),
        IdSource::Param(name) => params
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| (*v).to_string()),
    })?;
    let delivered = spec.delivered.is_some_and(|(path, expected)| {
        let mut any = false;
        let mut all = true;
        select(record, path, &mut |v| {
            any = true;
            all &= v.as_str() == Some(expected);
        });
        any && all
    });
    Some(OrderFacts {
        order_id,
        status: spec.status.and_then(|p| scalar_at(record, p)),
        earliest_delivery: spec.earliest_delivery.and_then(|p| scalar_at(record, p)),
        latest_delivery: spec.latest_delivery.and_then(|p| scalar_at(record, p)),
        delivered,
    })
}

/// One transform's state.
struct Walker<'a> {
    role: &'a Role,
    keys: &'a Keys<'a>,
    net_action: Action,
    records: &'a [RecordSpec],
    params: &'a [(&'a str, &'a str)],
    report: Report,
}

// === impl Walker ===

impl Walker<'_> {
    /// Walks a value that is not under a PII path. `node` is its place in the field map
    /// (`None`: outside the map); `order` the enclosing record's order id.
    fn walk(
        &mut self,
        value: &mut Value,
        node: Option<&Node>,
        order: Option<&str>,
        depth: usize,
    ) -> Result<(), PiiError> {
        if depth > MAX_DEPTH {
            return Err(PiiError::TooDeep);
        }
        // A single object where the map expects an array of them: walk it as an element.
        let node = match (node, &*value) {
            (Some(n), Value::Object(_)) if n.members.is_empty() && n.record.is_none() => {
                n.items.as_deref().or(Some(n))
            }
            _ => node,
        };
        let record_id;
        let mut order = order;
        if let Some(index) = node.and_then(|n| n.record) {
            let facts = self
                .records
                .get(index)
                .and_then(|spec| record_facts(spec, value, self.params));
            record_id = facts.as_ref().map(|f| f.order_id.clone());
            order = record_id.as_deref();
            self.report.orders.extend(facts);
        }
        match value {
            Value::Object(map) => {
                let mut result = Ok(());
                map.retain(|name, child| {
                    if result.is_err() {
                        return true;
                    }
                    let child_node = node.and_then(|n| n.member(name));
                    match child_node.and_then(|n| n.leaf) {
                        Some(leaf) => self.leaf(child, leaf, order, depth + 1),
                        None => {
                            result = self.walk(child, child_node, order, depth + 1);
                            true
                        }
                    }
                });
                result
            }
            Value::Array(elements) => {
                // Arrays where the map expects none are transparent.
                let element_node = node.map(|n| n.items.as_deref().unwrap_or(n));
                for element in elements {
                    self.walk(element, element_node, order, depth + 1)?;
                }
                Ok(())
            }
            Value::String(s) => {
                if node.is_some_and(|n| n.pii_below) {
                    // A string where the model has an object holding PII: drop it.
                    if !s.is_empty() {
                        s.clear();
                        self.report.fallbacks += 1;
                    }
                } else {
                    self.net(s, order);
                }
                Ok(())
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }

    /// Applies the role to a value at a PII path; returns whether its key stays.
    fn leaf(&mut self, value: &mut Value, leaf: Leaf, order: Option<&str>, depth: usize) -> bool {
        if value.is_null() {
            return true;
        }
        let action = self.role.action(leaf.category);
        self.report.returned.insert(leaf.category, action);
        self.report.fields += 1;
        let keep = match action {
            Action::Pass => true,
            Action::Drop => false,
            Action::Mask | Action::Pseudonymize | Action::Encrypt => {
                self.rewrite(value, leaf.category, action, order, depth)
            }
        };
        if !keep && leaf.required {
            *value = empty_like(value);
            return true;
        }
        keep
    }

    /// Rewrites every string in `value` (mask, pseudonymize, encrypt); returns false when the
    /// value itself must go. Containers keep their shape: a member or element that must go is
    /// replaced by its type's empty value.
    fn rewrite(
        &mut self,
        value: &mut Value,
        category: Category,
        action: Action,
        order: Option<&str>,
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            self.report.fallbacks += 1;
            return false;
        }
        match value {
            Value::Null => true,
            Value::String(s) => {
                let (out, fell_back) = apply_value_counted(category, action, s, order, self.keys);
                self.report.fallbacks += usize::from(fell_back);
                match out {
                    FieldOut::Keep => true,
                    FieldOut::Replace(new) => {
                        *s = new;
                        true
                    }
                    FieldOut::Drop => false,
                }
            }
            Value::Bool(_) | Value::Number(_) => {
                self.report.fallbacks += 1;
                false
            }
            Value::Array(elements) => {
                for element in elements {
                    if !self.rewrite(element, category, action, order, depth + 1) {
                        *element = empty_like(element);
                    }
                }
                true
            }
            Value::Object(map) => {
                for (_, member) in map.iter_mut() {
                    if !self.rewrite(member, category, action, order, depth + 1) {
                        *member = empty_like(member);
                    }
                }
                true
            }
        }
    }

    /// The safety net for one string outside the map.
    fn net(&mut self, s: &mut String, order: Option<&str>) {
        let Some(hit) = net::scan(s) else {
            return;
        };
        let category = match hit {
            Hit::Email => {
                self.report.net_hits.email += 1;
                Category::Email
            }
            Hit::Phone => {
                self.report.net_hits.phone += 1;
                Category::Phone
            }
        };
        let (out, fell_back) = apply_value_counted(category, self.net_action, s, order, self.keys);
        self.report.fallbacks += usize::from(fell_back);
        match out {
            FieldOut::Keep => {}
            FieldOut::Replace(new) => *s = new,
            FieldOut::Drop => s.clear(),
        }
    }
}
