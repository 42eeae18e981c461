//! The body of the `transform` fuzz target, shared with `tests/pii_transform.rs` so CI runs the
//! same checks over a corpus of mutated sandbox responses.
//!
//! Input: one selector byte (operation, role, safety-net action) and the response body. Checks:
//! no panic; an error only for a body that is not JSON, too large or too deep; the output is JSON; under
//! `drop` and `encrypt`, no string found at a mapped PII path comes out as a string value in
//! clear (unless the same string also sits somewhere the role may see it); applying the all-drop
//! role twice changes nothing the second time.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use spgate::crypto::DataKey;
use spgate::pii::map::FieldMap;
use spgate::pii::{
    apply, apply_bytes, Action, Category, Keys, OrderKeys, PiiError, Policy, PseudonymKey, Role,
};

/// The largest body the fuzz target accepts before the size limit applies.
pub const MAX_BYTES: usize = 256 << 10;

/// A data key for every order, so `encrypt` really encrypts.
struct AnyOrder(DataKey);

impl OrderKeys for AnyOrder {
    fn key(&self, _order_id: &str) -> Option<&DataKey> {
        Some(&self.0)
    }
}

fn roles() -> Vec<Role> {
    let every = |a: Action| Role::new(Category::ALL.map(|c| (c, a)));
    let mixed = Role::new(Category::ALL.iter().enumerate().map(|(i, c)| {
        let actions = [
            Action::Pass,
            Action::Mask,
            Action::Pseudonymize,
            Action::Encrypt,
            Action::Drop,
        ];
        (*c, actions[i % actions.len()])
    }));
    vec![
        every(Action::Drop),
        every(Action::Pass),
        every(Action::Mask),
        every(Action::Pseudonymize),
        every(Action::Encrypt),
        mixed,
        Role::default(),
    ]
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ops = FieldMap::builtin().keys();
    let roles = roles();
    let op = ops[usize::from(selector) % ops.len()];
    let role = &roles[(usize::from(selector) / ops.len()) % roles.len()];
    let policy = Policy {
        max_bytes: MAX_BYTES,
        safety_net: if selector % 2 == 0 {
            Action::Drop
        } else {
            Action::Mask
        },
    };
    check(op, role, body, &policy);
}

/// Checks the transform of one body for one operation and role.
pub fn check(op: &str, role: &Role, body: &[u8], policy: &Policy) {
    let pseudonym = PseudonymKey::from_bytes(&[9; 32]);
    let data_key = DataKey::from_parts("kfuzz", &[5; 32]).expect("a valid key");
    let orders = AnyOrder(data_key);
    let keys = Keys {
        pseudonym: &pseudonym,
        orders: &orders,
    };
    let params = [("orderId", "902-1234567-1234567"), ("shipmentId", "S1")];
    match apply_bytes(op, role, body, &params, &keys, policy) {
        Err(PiiError::TooLarge { size, limit }) => {
            assert!(size > limit && body.len() == size);
        }
        Err(PiiError::NotJson { .. }) => {
            assert!(serde_json::from_slice::<Value>(body).is_err());
        }
        // Deep nesting is refused by policy (fail closed), whatever serde_json would say.
        Err(PiiError::TooDeep) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok((out, _report)) => {
            let input: Value = serde_json::from_slice(body).expect("accepted input is JSON");
            let output: Value = serde_json::from_slice(&out).expect("output is JSON");
            no_hidden_value_in_clear(op, role, &input, &output);
            if *role == Role::default() && policy.safety_net == Action::Drop {
                let mut again = output.clone();
                apply(op, role, &mut again, &params, &keys, policy).expect("output re-applies");
                assert_eq!(again, output, "dropping is idempotent");
            }
        }
    }
}

/// Under `drop` and `encrypt`, strings at mapped paths never come out as string values.
fn no_hidden_value_in_clear(op: &str, role: &Role, input: &Value, output: &Value) {
    let Some(map) = FieldMap::builtin().get(op) else {
        return;
    };
    let mut hidden: HashMap<&str, usize> = HashMap::new();
    for field in &map.fields {
        if !matches!(role.action(field.category), Action::Drop | Action::Encrypt) {
            continue;
        }
        let mut at = Vec::new();
        select(input, field.path, &mut at);
        for value in at {
            strings(value, &mut |s| *hidden.entry(s).or_default() += 1);
        }
    }
    if hidden.is_empty() {
        return;
    }
    let mut everywhere: HashMap<&str, usize> = HashMap::new();
    strings(input, &mut |s| *everywhere.entry(s).or_default() += 1);
    let mut out = BTreeSet::new();
    strings(output, &mut |s| {
        out.insert(s);
    });
    for (value, n) in hidden {
        // A value the transform itself can produce ("", masks, pseudonyms, envelopes), or one
        // that also sits elsewhere in the input, may legitimately appear.
        let produced = value.is_empty()
            || value.contains("***")
            || value.starts_with("psn_")
            || value.starts_with("spgate:v1:")
            || value.chars().all(|c| c == '*' || !c.is_alphanumeric());
        if produced || everywhere.get(value).copied().unwrap_or(0) > n {
            continue;
        }
        assert!(
            !out.contains(value),
            "{op}: a hidden value came out in clear"
        );
    }
}

/// Every value at `path` (`[]` expands arrays), strictly as the model shapes it.
fn select<'v>(value: &'v Value, path: &str, out: &mut Vec<&'v Value>) {
    if path.is_empty() {
        out.push(value);
        return;
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let (name, items) = match head.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (head, false),
    };
    match (value.get(name), items) {
        (Some(Value::Array(elements)), true) => {
            for element in elements {
                select(element, rest, out);
            }
        }
        (Some(child), false) => select(child, rest, out),
        _ => {}
    }
}

/// Calls `f` with every string value below `value`.
fn strings<'v>(value: &'v Value, f: &mut dyn FnMut(&'v str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, f)),
        Value::Object(map) => map.values().for_each(|v| strings(v, f)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
