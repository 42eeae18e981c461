//! The PII transform on real shapes: synthetic sandbox responses, property tests over generated
//! JSON trees with planted PII for every mapped operation and every role, and the fuzz target's
//! checks over a corpus of mutated sandbox responses.

#[path = "../fixtures/pii_fixtures.rs"]
mod pii_fixtures;
// The fuzz crate's module; its `pub` items are for the fuzz target.
#[allow(unreachable_pub)]
#[path = "../fuzz/src/transform.rs"]
mod fuzz_transform;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use pii_fixtures::Fixture;
use proptest::prelude::*;
use serde_json::{json, Value};
use spgate::crypto::DataKey;
use spgate::pii::map::{parse_path, FieldMap, IdSource, OpMap, Segment};
use spgate::pii::net;
use spgate::pii::{
    apply, apply_bytes, order_ids, Action, Category, Keys, NoOrderKeys, Policy, PseudonymKey, Role,
};

static FIXTURES: LazyLock<Vec<Fixture>> = LazyLock::new(pii_fixtures::sandbox_fixtures);

const ACTIONS: [Action; 5] = [
    Action::Pass,
    Action::Mask,
    Action::Pseudonymize,
    Action::Encrypt,
    Action::Drop,
];

fn every(action: Action) -> Role {
    Role::new(Category::ALL.map(|c| (c, action)))
}

fn pseudonym_key() -> PseudonymKey {
    PseudonymKey::from_bytes(&[1; 32])
}

/// Every value at `path` (`[]` expands arrays).
fn select<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut out = vec![value];
    for segment in parse_path(path).expect("a valid path") {
        out = out
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match segment {
                    Segment::Member(name) => v.get(name).into_iter().collect(),
                    Segment::Items => v.as_array().map(|a| a.iter().collect()).unwrap_or_default(),
                }
            })
            .collect();
    }
    out
}

fn strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The PII strings at the mapped paths of a response, by category.
fn mapped_strings<'v>(op: &OpMap, body: &'v Value) -> Vec<(Category, &'v str)> {
    let mut out = Vec::new();
    for field in &op.fields {
        for value in select(body, field.path) {
            let mut found = Vec::new();
            strings(value, &mut found);
            out.extend(found.into_iter().map(|s| (field.category, s)));
        }
    }
    out
}

#[test]
fn the_sandbox_fixtures_hold_buyer_pii_at_mapped_paths() {
    let map = FieldMap::builtin();
    let mut categories = BTreeSet::new();
    let mut ops_with_pii = BTreeSet::new();
    let ops: BTreeSet<&str> = FIXTURES.iter().map(|f| f.op).collect();
    for fixture in FIXTURES.iter() {
        let body = fixture.json();
        let found = mapped_strings(map.get(fixture.op).unwrap(), &body);
        if !found.is_empty() {
            ops_with_pii.insert(fixture.op);
        }
        categories.extend(found.iter().map(|(c, _)| *c));
    }
    assert_eq!(ops_with_pii, ops, "every operation has a fixture with PII");
    assert_eq!(ops.len(), 8);
    for c in [
        Category::Name,
        Category::Email,
        Category::Phone,
        Category::Address,
        Category::PostalCode,
        Category::GiftMessage,
        Category::CustomizationUrl,
        Category::DeliveryInstructions,
    ] {
        assert!(categories.contains(&c), "no fixture has {c}");
    }
}

#[test]
fn pass_changes_nothing_in_sandbox_responses_and_the_net_finds_nothing_there() {
    let keys = Keys {
        pseudonym: &pseudonym_key(),
        orders: &NoOrderKeys,
    };
    for fixture in FIXTURES.iter() {
        let (out, report) = apply_bytes(
            fixture.op,
            &every(Action::Pass),
            &fixture.body,
            &fixture.params(),
            &keys,
            &Policy::default(),
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out, fixture.json(), "{}", fixture.op);
        assert_eq!(
            report.net_hits.email + report.net_hits.phone,
            0,
            "{}",
            fixture.op
        );
        assert_eq!(report.fallbacks, 0, "{}", fixture.op);
    }
}

#[test]
fn drop_and_encrypt_leave_no_sandbox_pii_in_clear() {
    let map = FieldMap::builtin();
    let pk = pseudonym_key();
    for fixture in FIXTURES.iter() {
        let body = fixture.json();
        let params = fixture.params();
        let op = map.get(fixture.op).unwrap();
        let secrets: Vec<&str> = mapped_strings(op, &body)
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.len() >= 4)
            .collect();
        let ids = order_ids(fixture.op, &body, &params);
        assert!(!ids.is_empty(), "{}", fixture.op);
        let data_keys: Vec<(String, DataKey)> = ids
            .iter()
            .map(|id| (id.clone(), DataKey::generate().unwrap()))
            .collect();
        let keys = Keys {
            pseudonym: &pk,
            orders: &data_keys,
        };
        for action in [Action::Drop, Action::Encrypt] {
            let (out, report) = apply_bytes(
                fixture.op,
                &every(action),
                &fixture.body,
                &params,
                &keys,
                &Policy::default(),
            )
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            // Envelopes are random base64: a short value could appear in one by chance.
            let outside: String = text
                .split('"')
                .filter(|part| !part.starts_with("spgate:v1:"))
                .collect::<Vec<_>>()
                .join("\"");
            for secret in &secrets {
                assert!(
                    !outside.contains(secret),
                    "{} {action}: a PII value is in clear",
                    fixture.op
                );
            }
            assert_eq!(report.fallbacks, 0, "{} {action}", fixture.op);
            if action == Action::Encrypt {
                // Every mapped string is an envelope that opens to the original.
                let out: Value = serde_json::from_str(&text).unwrap();
                let before = mapped_strings(op, &body);
                let after = mapped_strings(op, &out);
                assert_eq!(before.len(), after.len(), "{}", fixture.op);
                let id = &ids[0];
                let key = &data_keys[0].1;
                if ids.len() == 1 {
                    for ((_, clear), (_, sealed)) in before.iter().zip(&after) {
                        assert_eq!(
                            spgate::pii::keys::open_value(key, id, sealed)
                                .unwrap()
                                .1
                                .expose(),
                            clear
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn order_facts_feed_retention_from_v0_and_2026_order_lists() {
    let keys = Keys {
        pseudonym: &pseudonym_key(),
        orders: &NoOrderKeys,
    };
    for op in ["ordersV0.getOrders", "orders_2026-01-01.searchOrders"] {
        let fixture = pii_fixtures::first(&FIXTURES, op);
        let (_, report) = apply_bytes(
            op,
            &Role::default(),
            &fixture.body,
            &[],
            &keys,
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(report.orders.len(), 40, "{op}");
        assert!(report.orders.iter().all(|o| o.status.is_some()), "{op}");
        assert!(
            report.orders.iter().any(|o| o.latest_delivery.is_some()),
            "{op}"
        );
        let ids: BTreeSet<_> = report.orders.iter().map(|o| &o.order_id).collect();
        assert_eq!(ids.len(), 40, "{op}");
    }
    let fixture = pii_fixtures::first(&FIXTURES, "orders_2026-01-01.searchOrders");
    let (_, report) = apply_bytes(
        fixture.op,
        &Role::default(),
        &fixture.body,
        &[],
        &keys,
        &Policy::default(),
    )
    .unwrap();
    assert!(report.orders.iter().any(|o| o.delivered));
    assert!(report.orders.iter().any(|o| !o.delivered));
}

// === the fuzz target's checks over mutated sandbox responses ===

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutates a JSON value in place: PII in odd places, wrong types, duplicated subtrees.
fn mutate_json(value: &mut Value, rng: &mut Rng) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            match rng.below(6) {
                0 => {
                    map.insert(
                        key.clone(),
                        json!({ "nested": "jane@example.invalid", "n": 1 }),
                    );
                }
                1 => {
                    map.insert(key.clone(), json!(2_065_550_100u64));
                }
                2 => {
                    map.insert("unexpectedContact".into(), json!("+1 206 555 0100"));
                }
                3 => {
                    let child = map[key].clone();
                    map.insert(key.clone(), json!([child.clone(), child]));
                }
                _ => mutate_json(map.get_mut(key).expect("present"), rng),
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            mutate_json(&mut items[i], rng);
        }
        other => *other = json!("Jane Example, jane@example.invalid"),
    }
}

/// Mutates raw bytes: truncation, byte flips, splices.
fn mutate_bytes(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = body.to_vec();
    match rng.below(4) {
        0 => out.truncate(rng.below(out.len())),
        1 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let i = rng.below(out.len());
            out.splice(i..i, br#"{"x":"jane@example.invalid"}"#.iter().copied());
        }
        _ => {
            let (a, b) = (rng.below(out.len()), rng.below(out.len()));
            let (a, b) = (a.min(b), a.max(b));
            let piece = out[a..b].to_vec();
            out.extend_from_slice(&piece);
        }
    }
    out
}

#[test]
fn the_fuzz_checks_hold_on_a_corpus_of_mutated_sandbox_responses() {
    let mut rng = Rng(0x5eed_cafe_f00d_beef);
    let roles: Vec<Role> = ACTIONS.iter().map(|a| every(*a)).collect();
    let policy = Policy {
        max_bytes: fuzz_transform::MAX_BYTES,
        safety_net: Action::Drop,
    };
    let mut inputs = 0;
    for fixture in FIXTURES.iter() {
        for _ in 0..8 {
            let mut value = fixture.json();
            for _ in 0..=rng.below(3) {
                mutate_json(&mut value, &mut rng);
            }
            let body = serde_json::to_vec(&value).unwrap();
            for role in &roles {
                fuzz_transform::check(fixture.op, role, &body, &policy);
            }
            fuzz_transform::check(fixture.op, &Role::default(), &body, &policy);
            let raw = mutate_bytes(&fixture.body, &mut rng);
            let selector = u8::try_from(rng.below(256)).unwrap();
            let mut data = vec![selector];
            data.extend_from_slice(&raw);
            fuzz_transform::run(&data);
            fuzz_transform::check(fixture.op, &Role::default(), &raw, &policy);
            inputs += 2;
        }
    }
    assert!(inputs >= 400, "{inputs}");
}

// === property tests: generated trees with planted PII ===

/// The shape of an operation's responses, from the field map.
#[derive(Default, Debug)]
struct Shape {
    members: BTreeMap<&'static str, Shape>,
    items: Option<Box<Shape>>,
    leaf: Option<(Category, bool)>,
    id: bool,
}

impl Shape {
    fn of(op: &OpMap) -> Shape {
        let mut root = Shape::default();
        for field in &op.fields {
            root.descend(field.path).leaf = Some((field.category, field.required));
        }
        for record in &op.records {
            for id in &record.id {
                if let IdSource::Field(rel) = id {
                    let path = if record.root == "." {
                        (*rel).to_string()
                    } else {
                        format!("{}.{rel}", record.root)
                    };
                    let path: &'static str = Box::leak(path.into_boxed_str());
                    root.descend(path).id = true;
                }
            }
        }
        root
    }

    fn descend(&mut self, path: &'static str) -> &mut Shape {
        let mut node = self;
        for segment in parse_path(path).unwrap() {
            node = match segment {
                Segment::Member(name) => node.members.entry(name).or_default(),
                Segment::Items => node.items.get_or_insert_with(Box::default),
            };
        }
        node
    }
}

/// Builds one response: planted markers at PII paths, junk everywhere else.
struct Planter<'a> {
    rng: Rng,
    junk: &'a [String],
    /// (marker, category) of every planted PII string.
    planted: Vec<(String, Category)>,
    /// Non-null values at PII paths.
    leaf_values: usize,
    /// Categories with a non-null value.
    categories: BTreeSet<Category>,
    /// Junk strings outside PII paths.
    outside: Vec<String>,
}

impl Planter<'_> {
    fn marker(&mut self, category: Category) -> String {
        let m = format!("Mk{}q{}Zz", self.planted.len(), self.rng.below(1000));
        self.planted.push((m.clone(), category));
        m
    }

    fn junk_string(&mut self) -> String {
        self.junk[self.rng.below(self.junk.len())].clone()
    }

    fn junk(&mut self, depth: usize) -> Value {
        match self.rng.below(if depth > 2 { 4 } else { 6 }) {
            0 => Value::from(self.rng.below(100_000)),
            1 => Value::Bool(self.rng.below(2) == 0),
            2 => Value::Null,
            3 => {
                let s = self.junk_string();
                self.outside.push(s.clone());
                Value::String(s)
            }
            4 => json!({ "x_inner": self.junk(depth + 1) }),
            _ => json!([self.junk(depth + 1), self.junk(depth + 1)]),
        }
    }

    fn leaf(&mut self, category: Category) -> Value {
        let value = match self.rng.below(20) {
            0 => return Value::Null,
            1 => Value::from(12345),
            2 => json!({ "x_a": self.marker(category), "x_n": 7 }),
            3 => json!([self.marker(category), self.marker(category)]),
            _ => Value::String(self.marker(category)),
        };
        self.leaf_values += 1;
        self.categories.insert(category);
        value
    }

    fn value(&mut self, shape: &Shape, depth: usize) -> Value {
        if let Some((category, _)) = shape.leaf {
            return self.leaf(category);
        }
        if shape.id {
            return Value::String(format!("ID-{}", self.rng.below(5)));
        }
        if let (Some(items), true) = (&shape.items, shape.members.is_empty()) {
            let n = self.rng.below(3);
            return Value::Array((0..n).map(|_| self.value(items, depth + 1)).collect());
        }
        let mut map = serde_json::Map::new();
        for (name, child) in &shape.members {
            let required = child.leaf.is_some_and(|(_, r)| r);
            if required || self.rng.below(8) != 0 {
                map.insert((*name).to_string(), self.value(child, depth + 1));
            }
        }
        for k in 0..self.rng.below(3) {
            map.insert(format!("x_{k}"), self.junk(depth));
        }
        Value::Object(map)
    }
}

/// Replaces every field envelope (random nonces) by a placeholder.
fn without_envelopes(mut value: Value) -> Value {
    fn visit(v: &mut Value) {
        match v {
            Value::String(s) if s.starts_with("spgate:v1:") => *s = "<envelope>".into(),
            Value::Array(items) => items.iter_mut().for_each(visit),
            Value::Object(map) => map.values_mut().for_each(visit),
            _ => {}
        }
    }
    visit(&mut value);
    value
}

fn junk_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("say \"hi\" \\ back\u{1}\ttab".to_string()),
        Just("Zoë ☃ 😀 jane@example.invalid".to_string()),
        "[a-zA-Z0-9 @.+()_:-]{0,24}",
        Just("jane@example.invalid".to_string()),
        Just("+1 206 555 0100".to_string()),
        Just("Call (206) 555-0100".to_string()),
        Just("902-1234567-1234567".to_string()),
        Just("2024-01-02T03:04:05Z".to_string()),
        Just("B07XJ8C8F5".to_string()),
        Just("12345678.90".to_string()),
        Just("1Z999AA10123456784".to_string()),
    ]
}

/// Every (parent, present) pair for the members named by required paths.
fn required_keys(op: &OpMap, body: &Value) -> Vec<(&'static str, usize)> {
    op.fields
        .iter()
        .filter(|f| f.required)
        .map(|f| {
            let (parent, name) = f.path.rsplit_once('.').unwrap_or((".", f.path));
            let parents = if parent == "." {
                vec![body]
            } else {
                select(body, parent)
            };
            let present = parents.iter().filter(|p| p.get(name).is_some()).count();
            (f.path, present)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn planted_pii_is_passed_or_hidden_exactly_as_the_role_says(
        op_index in 0usize..64,
        actions in proptest::collection::vec(0usize..5, 13),
        net_action in 0usize..3,
        seed in any::<u64>(),
        junk in proptest::collection::vec(junk_strategy(), 1..8),
    ) {
        let map = FieldMap::builtin();
        let keys_list = map.keys();
        let op_key = keys_list[op_index % keys_list.len()];
        let op = map.get(op_key).unwrap();
        let role = Role::new(Category::ALL.iter().zip(&actions).map(|(c, a)| (*c, ACTIONS[*a])));
        let mut planter = Planter {
            rng: Rng(seed | 1),
            junk: &junk,
            planted: Vec::new(),
            leaf_values: 0,
            categories: BTreeSet::new(),
            outside: Vec::new(),
        };
        let input = planter.value(&Shape::of(op), 0);
        let body = serde_json::to_vec(&input).unwrap();
        let pk = pseudonym_key();
        let data_keys: HashMap<String, DataKey> = (0..3)
            .map(|i| (format!("ID-{i}"), DataKey::generate().unwrap()))
            .collect();
        let keys = Keys { pseudonym: &pk, orders: &data_keys };
        let policy = Policy {
            safety_net: [Action::Drop, Action::Mask, Action::Pseudonymize][net_action],
            ..Policy::default()
        };
        let params = [("orderId", "ID-9"), ("purchaseOrderNumber", "ID-1"), ("shipmentId", "ID-2")];
        let (out, report) = apply_bytes(op_key, &role, &body, &params, &keys, &policy).unwrap();
        let text = String::from_utf8(out).unwrap();
        let output: Value = serde_json::from_str(&text).unwrap();

        // Pass keeps the value; every other action hides it.
        for (marker, category) in &planter.planted {
            let shown = text.contains(marker.as_str());
            if role.action(*category) == Action::Pass {
                prop_assert!(shown, "{op_key}: {category} passed but missing");
            } else {
                prop_assert!(!shown, "{op_key}: {category} {} but in clear", role.action(*category));
            }
        }
        // Required fields keep their keys.
        prop_assert_eq!(required_keys(op, &input), required_keys(op, &output));
        // Junk outside the map survives unless it holds an e-mail or phone number.
        let mut out_strings = Vec::new();
        strings(&output, &mut out_strings);
        let out_strings: BTreeSet<&str> = out_strings.into_iter().collect();
        for s in &planter.outside {
            let hit = net::scan(s).is_some();
            prop_assert_eq!(out_strings.contains(s.as_str()), !hit, "{}: {:?}", op_key, s);
        }
        prop_assert_eq!(report.fields, planter.leaf_values);
        let returned: BTreeSet<Category> = report.returned.keys().copied().collect();
        prop_assert_eq!(returned, planter.categories);
        for (category, action) in &report.returned {
            prop_assert_eq!(*action, role.action(*category));
        }

        // The walk over a parsed Value gives the same JSON and the same report.
        let mut walked = input.clone();
        let walked_report = apply(op_key, &role, &mut walked, &params, &keys, &policy).unwrap();
        prop_assert_eq!(without_envelopes(walked), without_envelopes(output));
        prop_assert_eq!(walked_report, report);
    }
}
