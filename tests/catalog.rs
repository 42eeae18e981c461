//! The compiled-in catalog and sandbox examples agree with Amazon's models.
//!
//! The models live in `../shared/spapi-models` beside the repository (CI always has them). A
//! developer without them gets a skip notice; under CI (`CI` set) their absence is a failure.

mod common;

use common::models_dir;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use spgate::catalog::Catalog;

fn model_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for api in std::fs::read_dir(dir).unwrap() {
        let api = api.unwrap().path();
        if api.is_dir() {
            for f in std::fs::read_dir(&api).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "json") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_catalog_has_exactly_the_operations_in_amazons_models() {
    let Some(dir) = models_dir() else { return };
    let mut from_models = BTreeSet::new();
    let mut static_examples = 0usize;
    for file in model_files(&dir) {
        let model: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for (path, item) in model["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                let Some(op) = item.get(method) else { continue };
                let id = op["operationId"].as_str().unwrap().to_string();
                from_models.insert((method.to_uppercase(), path.clone(), id));
                for resp in op["responses"].as_object().unwrap().values() {
                    static_examples += resp["x-amzn-api-sandbox"]["static"]
                        .as_array()
                        .map_or(0, Vec::len);
                }
            }
        }
    }
    let catalog = Catalog::builtin();
    let ours: BTreeSet<_> = catalog
        .operations()
        .iter()
        .map(|o| {
            (
                o.method.to_string(),
                o.path.to_string(),
                o.operation_id.to_string(),
            )
        })
        .collect();
    assert_eq!(from_models.len(), 370);
    assert_eq!(ours, from_models);
    let examples: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../fixtures/sandbox-examples.json")).unwrap();
    assert_eq!(examples.len(), static_examples);
    assert_eq!(examples.len(), 913);
}

#[test]
fn usage_plans_match_amazons_published_table() {
    let Some(dir) = models_dir() else { return };
    let tsv = std::fs::read_to_string(dir.join("rate-limits.tsv")).unwrap();
    let mut plans = BTreeMap::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        plans.insert(
            (cols[1].to_string(), cols[2].to_string()),
            (cols[5].to_string(), cols[6].to_string()),
        );
    }
    let catalog = Catalog::builtin();
    let mut with_plan = 0;
    for op in catalog.operations() {
        let (rate, burst) = &plans[&(op.model_file.to_string(), op.operation_id.to_string())];
        match op.usage_plan {
            Some(p) => {
                with_plan += 1;
                assert_eq!(
                    p.rate_per_second,
                    rate.parse::<f64>().unwrap(),
                    "{}",
                    op.key
                );
                assert_eq!(p.burst, burst.parse::<u32>().unwrap(), "{}", op.key);
            }
            None => assert!(
                rate.is_empty() && burst.is_empty(),
                "{} has a plan in the table",
                op.key
            ),
        }
    }
    assert_eq!(
        with_plan, 300,
        "FACTS.md: 300 operations have a parsable usage plan"
    );
}

#[test]
fn restricted_and_pii_flags_match_the_pii_field_map() {
    let Some(dir) = models_dir() else { return };
    let map = std::fs::read_to_string(dir.join("pii-fields.md")).unwrap();
    let catalog = Catalog::builtin();
    // Every restricted operation's method and path template appears in section 1 of the map.
    let section1 = map.split("## 2.").next().unwrap();
    for op in catalog.operations().iter().filter(|o| o.restricted) {
        let short = op.path.rsplit('/').find(|s| !s.starts_with('{')).unwrap();
        // The map abbreviates plural pairs as e.g. getPackingSlip(s).
        let singular = op.operation_id.trim_end_matches('s');
        assert!(
            section1.contains(singular),
            "{} not in pii-fields.md section 1",
            op.key
        );
        assert!(
            section1.contains(short),
            "{} path part {short} not in section 1",
            op.key
        );
        assert!(
            op.pii_map.is_some(),
            "{} is restricted but has no PII map",
            op.key
        );
    }
    assert_eq!(
        catalog.operations().iter().filter(|o| o.restricted).count(),
        30
    );
}

#[test]
fn application_limits_match_amazons_published_table() {
    let Some(dir) = models_dir() else { return };
    let tsv = std::fs::read_to_string(dir.join("app-rate-limits.tsv")).unwrap();
    let catalog = Catalog::builtin();
    let mut rows = 0;
    for line in tsv.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (version, op_col, rate) = (cols[1].trim_start_matches('v'), cols[2], cols[4]);
        let (op_id, case) = match op_col.split_once(" [case: ") {
            Some((id, case)) => (id, Some(case.trim_end_matches(']'))),
            None => (op_col, None),
        };
        let op = catalog
            .operations()
            .iter()
            .find(|o| o.operation_id == op_id && o.model.ends_with(version))
            .unwrap_or_else(|| panic!("{op_col} {version} is catalogued"));
        let plan = match case {
            None => op.app_plan,
            Some(case) => {
                let kind = if case.starts_with("updates with variations") {
                    spgate::catalog::CallKind::Variations
                } else if case.starts_with("updates with product data") {
                    spgate::catalog::CallKind::ProductData
                } else {
                    assert_eq!(case, "validation previews");
                    spgate::catalog::CallKind::ValidationPreview
                };
                op.app_sub_limit(kind)
            }
        };
        let plan = plan.unwrap_or_else(|| panic!("{} has its application limit", op.key));
        assert_eq!(
            plan.rate_per_second,
            rate.parse::<f64>().unwrap(),
            "{}",
            op.key
        );
        rows += 1;
    }
    assert_eq!(rows, 18);
    let with_app = catalog.operations().iter().filter(|o| o.app_plan.is_some());
    assert_eq!(with_app.count(), 14);
}
