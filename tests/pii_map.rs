//! The buyer-PII field map (`data/pii-fields.tsv`) agrees with Amazon's models and with
//! `pii-fields.md`.
//!
//! Every field path, record root and record-relative path is walked through the operation's
//! 200/201 response schema (resolving `$ref` and `allOf`, entering arrays at `[]`); a path the
//! model does not have fails, and so does a `required` flag that differs from the model's.
//!
//! The models live in `../shared/spapi-models` beside the repository. A developer without them
//! gets a skip notice; under CI (`CI` set) their absence is a failure.

mod common;

use common::models_dir;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;
use spgate::catalog::Catalog;
use spgate::pii::map::{parse_path, FieldMap, IdSource, Segment};

/// One model file, with `$ref` resolution.
struct Model {
    root: Value,
}

impl Model {
    fn load(path: &Path) -> Model {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Model {
            root: serde_json::from_slice(&bytes).unwrap(),
        }
    }

    /// Follows `$ref`s (JSON pointers into this file) until a schema without one.
    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..64 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                return schema;
            };
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {reference}"));
            schema = self
                .root
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        panic!("$ref cycle");
    }

    /// Properties and required names of an object schema, merging `allOf`.
    fn properties<'a>(
        &'a self,
        schema: &'a Value,
    ) -> (BTreeMap<&'a str, &'a Value>, BTreeSet<&'a str>) {
        let schema = self.resolve(schema);
        let mut props = BTreeMap::new();
        let mut required = BTreeSet::new();
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (p, r) = self.properties(part);
            props.extend(p);
            required.extend(r);
        }
        for (name, prop) in schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            props.insert(name.as_str(), prop);
        }
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            required.insert(name.as_str().unwrap());
        }
        (props, required)
    }

    /// The 200 (or 201) response schema of an operation.
    fn response_schema(&self, method: &str, path: &str) -> &Value {
        let op = &self.root["paths"][path][method.to_lowercase()];
        let responses = &op["responses"];
        let response = ["200", "201"]
            .iter()
            .find_map(|code| responses.get(*code))
            .unwrap_or_else(|| panic!("{method} {path} has no 200/201 response"));
        let response = self.resolve(response);
        response
            .get("schema")
            .or_else(|| response.pointer("/content/application~1json/schema"))
            .unwrap_or_else(|| panic!("{method} {path}: response without a schema"))
    }

    /// Walks `path` from `schema`: the schema reached and whether the last member is required
    /// in its parent (`None` for the root itself).
    fn walk<'a>(
        &'a self,
        schema: &'a Value,
        path: &str,
    ) -> Result<(&'a Value, Option<bool>), String> {
        let segments = parse_path(path).ok_or_else(|| format!("unparsable path {path}"))?;
        let mut schema = self.resolve(schema);
        let mut required = None;
        for segment in segments {
            match segment {
                Segment::Member(name) => {
                    let (props, req) = self.properties(schema);
                    let prop = props
                        .get(name)
                        .ok_or_else(|| format!("{path}: no member {name:?}"))?;
                    required = Some(req.contains(name));
                    schema = self.resolve(prop);
                }
                Segment::Items => {
                    let items = schema
                        .get("items")
                        .ok_or_else(|| format!("{path}: not an array before []"))?;
                    schema = self.resolve(items);
                }
            }
        }
        Ok((schema, required))
    }
}

fn join(root: &str, rel: &str) -> String {
    if root == "." {
        rel.to_string()
    } else {
        format!("{root}.{rel}")
    }
}

#[test]
fn every_mapped_path_exists_in_the_model_with_the_same_required_flag() {
    let Some(dir) = models_dir() else { return };
    let map = FieldMap::builtin();
    let catalog = Catalog::builtin();
    let mut models: HashMap<&str, Model> = HashMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for key in map.keys() {
        let op = catalog
            .by_key(key)
            .unwrap_or_else(|| panic!("{key} is not in the catalog"));
        let model = models
            .entry(op.model_file)
            .or_insert_with(|| Model::load(&dir.join(op.model_file)));
        let response = model.response_schema(op.method.as_str(), op.path);
        let op_map = map.get(key).unwrap();
        for field in &op_map.fields {
            checked += 1;
            match model.walk(response, field.path) {
                Ok((_, Some(required))) if required == field.required => {}
                Ok((_, required)) => problems.push(format!(
                    "{key} {}: required is {required:?} in the model, {} in the map",
                    field.path, field.required
                )),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        for link in &op_map.links {
            checked += 1;
            match model.walk(response, link.path) {
                Ok((schema, _)) if schema.get("type").and_then(Value::as_str) == Some("string") => {
                }
                Ok(_) => problems.push(format!("{key} {}: a link is not a string", link.path)),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
        for record in &op_map.records {
            let mut rel = Vec::new();
            for id in &record.id {
                match id {
                    IdSource::Field(p) => rel.push(*p),
                    IdSource::Param(name) => {
                        if !op.path.contains(&format!("{{{name}}}")) {
                            problems.push(format!("{key}: no path parameter {{{name}}}"));
                        }
                    }
                }
            }
            rel.extend(record.status);
            rel.extend(record.earliest_delivery);
            rel.extend(record.latest_delivery);
            rel.extend(record.delivered.map(|(p, _)| p));
            if let Err(e) = model.walk(response, record.root) {
                problems.push(format!("{key} record: {e}"));
            }
            for p in rel {
                if let Err(e) = model.walk(response, &join(record.root, p)) {
                    problems.push(format!("{key} record: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 600, "{checked}");
}

#[test]
fn a_misspelled_path_or_wrong_required_flag_is_caught() {
    let Some(dir) = models_dir() else { return };
    let model = Model::load(&dir.join("orders-api-model/ordersV0.json"));
    let response = model.response_schema("GET", "/orders/v0/orders/{orderId}");
    assert!(model.walk(response, "payload.BuyerInfo.BuyerEmail").is_ok());
    assert!(model
        .walk(response, "payload.BuyerInfo.BuyerEMail")
        .is_err());
    assert!(model
        .walk(response, "payload.BuyerInfo[].BuyerEmail")
        .is_err());
    assert_eq!(
        model.walk(response, "payload.AmazonOrderId").unwrap().1,
        Some(true)
    );
    assert_eq!(
        model
            .walk(response, "payload.BuyerInfo.BuyerName")
            .unwrap()
            .1,
        Some(false)
    );
}

#[test]
fn the_map_covers_exactly_the_catalogs_pii_operations() {
    let map: BTreeSet<&str> = FieldMap::builtin().keys().into_iter().collect();
    let catalog: BTreeSet<&str> = Catalog::builtin()
        .operations()
        .iter()
        .filter_map(|o| {
            assert!(o.pii_map.is_none_or(|m| m == o.key), "{}", o.key);
            o.pii_map
        })
        .collect();
    assert_eq!(map, catalog);
    assert_eq!(map.len(), 63);
}

/// The operations `pii-fields.md` section 3 names, as catalog keys.
fn operations_in_section_3(doc: &str) -> BTreeSet<String> {
    let section = doc
        .split("## 3.")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("pii-fields.md has a section 3");
    let mut ops = BTreeSet::new();
    let mut model = String::new();
    for line in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| model"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, names, paths) = (cells[1], cells[2], cells[3]);
        // `shipping-api-model/shipping.json (v1)`: the model is the word ending in `.json`.
        if let Some(file) = file.split_whitespace().find(|w| w.ends_with(".json")) {
            let stem = file.rsplit('/').next().unwrap().trim_end_matches(".json");
            model = stem.to_string();
        }
        // Drop the `(...)` notes on wrappers, then split the list.
        let mut plain = String::new();
        let mut depth = 0;
        for c in names.chars() {
            match c {
                '(' if !plain.ends_with(|c: char| c.is_alphanumeric()) => depth += 1,
                ')' if depth > 0 => depth -= 1,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        let mut names: Vec<String> = Vec::new();
        for name in plain.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.strip_suffix("(s)") {
                Some(stem) => {
                    names.push(stem.to_string());
                    names.push(format!("{stem}s"));
                }
                None => names.push(name.to_string()),
            }
        }
        // The external-fulfillment row names its invoice operations in the paths column.
        if let Some(rest) = paths.split("(generateInvoice/").nth(1) {
            names.push("generateInvoice".into());
            names.push(rest.split(')').next().unwrap().to_string());
        }
        for name in names {
            ops.insert(format!("{model}.{name}"));
        }
    }
    ops
}

#[test]
fn every_operation_in_pii_fields_md_section_3_is_mapped() {
    let Some(dir) = models_dir() else { return };
    let doc = std::fs::read_to_string(dir.join("pii-fields.md")).unwrap();
    let listed = operations_in_section_3(&doc);
    assert!(listed.len() >= 45, "{listed:?}");
    assert!(listed.contains("vendorDirectFulfillmentShippingV1.getPackingSlips"));
    assert!(listed.contains("externalFulfillmentShipments_2024-09-11.retrieveInvoice"));
    let map = FieldMap::builtin();
    let missing: Vec<_> = listed.iter().filter(|k| map.get(k).is_none()).collect();
    assert!(
        missing.is_empty(),
        "not in data/pii-fields.tsv: {missing:?}"
    );
}
