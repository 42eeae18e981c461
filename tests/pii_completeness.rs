//! Every operation is classified for buyer PII, and no property of Amazon's models that looks
//! like personal data is left undecided.
//!
//! The walk covers every 2xx response schema of every catalog operation, resolving `$ref`,
//! `allOf`/`oneOf`/`anyOf`, entering arrays at `[]` and `additionalProperties` maps at `{}`.
//! A property whose name or description suggests personal data ([`suspect`]; any name containing
//! "name") must be covered by the field map (the path itself, or a mapped path above it) or listed
//! in `data/pii-exceptions.tsv` with the reason it is not buyer PII. A suspect container is
//! decided by every leaf under it: one mapped member does not cover the rest. A new model version with a new
//! personal field fails here until someone decides.
//!
//! The models live in `../shared/spapi-models` beside the repository. A developer without them
//! gets a skip notice; under CI (`CI` set) their absence is a failure. The classification checks
//! that need no models always run.

mod common;

use common::models_dir;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;
use spgate::catalog::Catalog;
use spgate::pii::classify::{Classification, Classifier, Exceptions};
use spgate::pii::map::FieldMap;

/// One suspect property found by the walk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    path: String,
    why: &'static str,
}

/// Walks one model's schemas.
struct Walker<'m> {
    root: &'m Value,
    /// Whether the operation's API carries buyer PII somewhere (then every label, document, file,
    /// url and content field is suspect too).
    pii_api: bool,
    hits: BTreeSet<Hit>,
    /// Every path the walk entered (to find the leaves under a suspect container).
    paths: BTreeSet<String>,
    /// `$ref`s on the current path (recursive schemas are walked once per path).
    stack: Vec<&'m str>,
}

impl<'m> Walker<'m> {
    fn resolve(&mut self, mut schema: &'m Value) -> (&'m Value, usize) {
        let mut pushed = 0;
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            schema = self.root.pointer(pointer).expect("dangling $ref");
            self.stack.push(reference);
            pushed += 1;
        }
        (schema, pushed)
    }

    fn walk(&mut self, schema: &'m Value, path: &str, depth: usize) {
        if depth > 40 {
            return;
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            if self.stack.contains(&reference) {
                return;
            }
        }
        if !path.is_empty() {
            self.paths.insert(path.to_string());
        }
        let (schema, pushed) = self.resolve(schema);
        for key in ["allOf", "oneOf", "anyOf"] {
            for part in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.walk(part, path, depth + 1);
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let description = self.description(prop);
                if let Some(why) = suspect(name, &description, self.pii_api) {
                    self.hits.insert(Hit {
                        path: child.clone(),
                        why,
                    });
                }
                self.walk(prop, &child, depth + 1);
            }
        }
        if let Some(items) = schema.get("items") {
            let child = if path.is_empty() {
                "[]".to_string()
            } else {
                format!("{path}[]")
            };
            self.walk(items, &child, depth + 1);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            let child = if path.is_empty() {
                "{}".to_string()
            } else {
                format!("{path}.{{}}")
            };
            self.walk(values, &child, depth + 1);
        }
        for _ in 0..pushed {
            self.stack.pop();
        }
    }

    /// The paths to decide: each suspect leaf, and every leaf under a suspect container (a
    /// container is decided by its leaves, not by one mapped member), with why it is suspect
    /// and the suspect path it lies in.
    fn leaves_to_decide(&self) -> BTreeSet<(String, &'static str, String)> {
        let mut out = BTreeSet::new();
        for hit in &self.hits {
            let under: Vec<&String> = self.descendants(&hit.path).collect();
            if under.is_empty() {
                out.insert((hit.path.clone(), hit.why, hit.path.clone()));
            }
            for leaf in under
                .into_iter()
                .filter(|d| self.descendants(d).next().is_none())
            {
                out.insert((leaf.clone(), hit.why, hit.path.clone()));
            }
        }
        out
    }

    /// The walked paths strictly below `path`.
    fn descendants<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.paths
            .range::<str, _>((std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded))
            .take_while(move |p| p.starts_with(path))
            .filter(move |p| is_below(p, path))
    }

    /// A property's description, or its referenced schema's.
    fn description(&self, prop: &'m Value) -> String {
        let mut schema = prop;
        for _ in 0..8 {
            if let Some(d) = schema.get("description").and_then(Value::as_str) {
                return d.to_lowercase();
            }
            match schema.get("$ref").and_then(Value::as_str) {
                Some(r) => match self.root.pointer(r.trim_start_matches('#')) {
                    Some(s) => schema = s,
                    None => break,
                },
                None => break,
            }
        }
        String::new()
    }
}

/// Whether `a` lies strictly below `b` (`b.x`, `b[]`).
fn is_below(a: &str, b: &str) -> bool {
    a.strip_prefix(b)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Why a property looks like personal data, if it does.
fn suspect(name: &str, description: &str, pii_api: bool) -> Option<&'static str> {
    let n = name.to_lowercase();
    const PERSON_NAMES: &[&str] = &[
        "name",
        "buyername",
        "recipientname",
        "contactname",
        "fullname",
        "firstname",
        "lastname",
        "attention",
        "receivedby",
        "signedforby",
        "companyname",
        "buyercompanyname",
        "buyerlegalcompanyname",
        "companylegalname",
    ];
    const NAME_PARTS: &[(&str, &str)] = &[
        ("address", "address"),
        ("phone", "phone"),
        ("email", "e-mail"),
        ("postal", "postal code"),
        ("zip", "postal code"),
        ("street", "address"),
        ("city", "location"),
        ("county", "location"),
        ("district", "location"),
        ("taxregistration", "tax registration"),
        ("taxinfo", "tax registration"),
        ("vatnumber", "tax registration"),
        ("gift", "gift message"),
        ("deliverynote", "delivery notes"),
        ("deliveryinstruction", "delivery notes"),
        ("dropoff", "delivery notes"),
        ("buyer", "buyer data"),
        ("customization", "customization"),
        ("recipient", "recipient"),
    ];
    const DOCUMENT_PARTS: &[&str] = &[
        "label", "document", "file", "url", "content", "stream", "base64", "photo", "image",
    ];
    if PERSON_NAMES.contains(&n.as_str()) || n.contains("name") {
        return Some("name");
    }
    if let Some((_, why)) = NAME_PARTS.iter().find(|(part, _)| n.contains(part)) {
        return Some(why);
    }
    if pii_api && DOCUMENT_PARTS.iter().any(|part| n.contains(part)) {
        return Some("document");
    }
    const DESCRIPTION_PARTS: &[&str] = &[
        "buyer's",
        "customer's",
        "recipient's",
        "email address",
        "phone number",
        "personal",
    ];
    if DESCRIPTION_PARTS
        .iter()
        .any(|part| description.contains(part))
    {
        return Some("description");
    }
    None
}

/// The 2xx response schemas of an operation.
fn response_schemas<'m>(model: &'m Value, method: &str, path: &str) -> Vec<&'m Value> {
    let op = &model["paths"][path][method.to_lowercase()];
    let mut out = Vec::new();
    for (code, response) in op["responses"].as_object().into_iter().flatten() {
        if !code.starts_with('2') {
            continue;
        }
        let mut response = response;
        while let Some(r) = response.get("$ref").and_then(Value::as_str) {
            response = model.pointer(r.trim_start_matches('#')).expect("$ref");
        }
        if let Some(schema) = response
            .get("schema")
            .or_else(|| response.pointer("/content/application~1json/schema"))
        {
            out.push(schema);
        }
    }
    out
}

/// Whether `path` is a mapped field or link, or lies below one (a mapped record).
fn covered(op_key: &str, path: &str) -> bool {
    let Some(op) = FieldMap::builtin().get(op_key) else {
        return false;
    };
    op.fields
        .iter()
        .map(|f| f.path)
        .chain(op.links.iter().map(|l| l.path))
        .any(|p| path == p || is_below(path, p))
}

/// Every suspect path of every operation that neither the map nor an exception covers.
fn undecided(dir: &Path) -> (Vec<String>, usize) {
    let catalog = Catalog::builtin();
    let map = FieldMap::builtin();
    let exceptions = Exceptions::builtin();
    let pii_apis: BTreeSet<&str> = catalog
        .operations()
        .iter()
        .filter(|o| map.get(o.key).is_some())
        .map(|o| o.api)
        .collect();
    let mut models: HashMap<&str, Value> = HashMap::new();
    let mut out = Vec::new();
    let mut hits_seen = 0;
    for op in catalog.operations() {
        let model = models.entry(op.model_file).or_insert_with(|| {
            let bytes = std::fs::read(dir.join(op.model_file)).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        let mut walker = Walker {
            root: model,
            pii_api: pii_apis.contains(op.api),
            hits: BTreeSet::new(),
            paths: BTreeSet::new(),
            stack: Vec::new(),
        };
        for schema in response_schemas(model, op.method.as_str(), op.path) {
            walker.walk(schema, "", 0);
        }
        for (leaf, why, container) in walker.leaves_to_decide() {
            hits_seen += 1;
            let excepted = |p: &str| exceptions.reason(op, p).is_some();
            if covered(op.key, &leaf) || excepted(&leaf) || excepted(&container) {
                continue;
            }
            out.push(format!("{}\t{}\t{}\t(in {})", op.key, leaf, why, container));
        }
    }
    (out, hits_seen)
}

#[test]
fn every_personal_looking_property_of_every_response_is_mapped_or_excepted_with_a_reason() {
    let Some(dir) = models_dir() else { return };
    let (missing, hits) = undecided(&dir);
    assert!(hits > 1000, "the walk found only {hits} suspect properties");
    assert!(
        missing.is_empty(),
        "{} suspect properties are neither in data/pii-fields.tsv nor in \
         data/pii-exceptions.tsv:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn the_walk_finds_a_new_personal_field_and_an_unmapped_one_in_a_known_schema() {
    // A model with a new buyer field under an otherwise harmless schema.
    let model: Value = serde_json::json!({
        "definitions": {
            "Thing": {"type": "object", "properties": {
                "sku": {"type": "string"},
                "buyerNickname": {"type": "string"},
                "pickup": {"$ref": "#/definitions/Place"},
                "extra": {"type": "object", "additionalProperties": {"$ref": "#/definitions/Place"}},
                "next": {"$ref": "#/definitions/Thing"},
                "recipient": {"type": "object", "properties": {
                    "deliveryHours": {"type": "array", "items": {"type": "string"}}
                }}
            }},
            "Place": {"allOf": [{"type": "object", "properties": {
                "note": {"type": "string", "description": "The customer's note."},
                "labelUrl": {"type": "string"}
            }}]}
        }
    });
    let start = serde_json::json!({"$ref": "#/definitions/Thing"});
    let mut walker = Walker {
        root: &model,
        pii_api: true,
        hits: BTreeSet::new(),
        paths: BTreeSet::new(),
        stack: Vec::new(),
    };
    walker.walk(&start, "", 0);
    let paths: BTreeSet<&str> = walker.hits.iter().map(|h| h.path.as_str()).collect();
    for expected in [
        "buyerNickname",
        "pickup.note",
        "pickup.labelUrl",
        "extra.{}.note",
    ] {
        assert!(paths.contains(expected), "{expected} not in {paths:?}");
    }
    assert!(!paths.contains("sku"));
    // A recursive schema is walked once per path, its members found at their first occurrence.
    assert!(!paths.contains("next.buyerNickname"));
    // Every leaf under a suspect container is decided on its own, suspect or not.
    let leaves: BTreeSet<String> = walker
        .leaves_to_decide()
        .into_iter()
        .map(|(leaf, _, _)| leaf)
        .collect();
    for expected in ["recipient.deliveryHours[]", "pickup.note", "buyerNickname"] {
        assert!(leaves.contains(expected), "{expected} not in {leaves:?}");
    }
    assert!(
        !leaves.contains("recipient"),
        "a container is decided by its leaves"
    );
    // Any property whose name contains "name" is suspect.
    for name in [
        "customerName",
        "shipToName",
        "legalName",
        "accountHolderName",
    ] {
        assert_eq!(suspect(name, "", false), Some("name"), "{name}");
    }
    // A container is not covered by one mapped member.
    assert!(!covered("ordersV0.getOrder", "payload"));
    // Without a PII-bearing API, a URL alone is not suspect.
    assert_eq!(suspect("labelUrl", "", false), None);
    assert_eq!(suspect("labelUrl", "", true), Some("document"));
    // An exception needs its reason; an unmapped path of a mapped operation is caught.
    assert!(!covered(
        "ordersV0.getOrder",
        "payload.BuyerInfo.BuyerNickname"
    ));
    assert!(covered("ordersV0.getOrder", "payload.BuyerInfo.BuyerEmail"));
    assert!(covered("ordersV0.getOrder", "payload.ShippingAddress.Name"));
}

#[test]
fn every_catalog_operation_is_classified_exactly_once() {
    let catalog = Catalog::builtin();
    let classifier = Classifier::builtin();
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    for op in catalog.operations() {
        let class = classifier.classify(op.key);
        let name = match class {
            Classification::Mapped(_) => "mapped",
            Classification::NoPii(reason) => {
                assert!(reason.len() > 10, "{}: reason too short", op.key);
                "none"
            }
            Classification::Unclassified => panic!("{} is not classified", op.key),
        };
        *by_class.entry(name).or_default() += 1;
        assert_eq!(
            op.pii_map.is_some(),
            matches!(class, Classification::Mapped(_)),
            "{}: the catalog's pii_map column disagrees with the field map",
            op.key
        );
    }
    // Both lists name only catalog operations, and none is in both (checked on load).
    for key in classifier.keys() {
        assert!(catalog.by_key(key).is_some(), "{key} is not in the catalog");
    }
    assert_eq!(classifier.keys().len(), catalog.operations().len());
    assert!(by_class["mapped"] >= 55, "{by_class:?}");
    // Exceptions name catalog operations or APIs only.
    for scope in Exceptions::builtin().scopes() {
        let known = match scope.strip_prefix("api:") {
            Some(api) => catalog.operations().iter().any(|o| o.api == api),
            None => catalog.by_key(scope).is_some(),
        };
        assert!(known, "pii-exceptions.tsv names unknown scope {scope}");
    }
}
