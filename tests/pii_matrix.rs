//! The role matrix, generated from the field map: for every operation with buyer PII, a scripted
//! upstream answer shaped like the map (a synthetic canary at every mapped path, a fake presigned
//! URL at every document link) goes through one real gateway for six roles (pass-all, drop-all,
//! mask, pseudonymize, encrypt, `tax_id` only). No canary may reach a role that does not pass its
//! category, no presigned URL may reach anyone, and the response keeps its shape. Each canary has
//! the type Amazon's model gives its path: an object or array field (`templateAttributes`,
//! `taxRegistrationAttributes`, `copyEmails`, `geocodes`) gets an object or array with canaries
//! inside, so rewriting inside containers is tested.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use spgate::catalog::Catalog;
use spgate::pii::map::{parse_path, FieldMap, IdSource, Segment};
use spgate::pii::{Action, Category};
use spgate::sandbox::Script;

/// The roles of the matrix and what each does with every category.
const ROLES: [(&str, Option<&str>); 6] = [
    ("pass_all", Some("pass")),
    ("drop_all", Some("drop")),
    ("mask_all", Some("mask")),
    ("pseudo_all", Some("pseudonymize")),
    ("encrypt_all", Some("encrypt")),
    ("tax_only", None),
];

fn roles_toml() -> String {
    let mut out = String::new();
    for (name, action) in ROLES {
        out.push_str(&format!("[roles.{name}.pii]\n"));
        match action {
            Some(action) => {
                for c in Category::ALL {
                    out.push_str(&format!("{c} = \"{action}\"\n"));
                }
            }
            None => out.push_str("tax_id = \"pass\"\n"),
        }
    }
    out
}

fn action_of(role: &str, category: Category) -> Action {
    match ROLES.iter().find(|(n, _)| *n == role).unwrap().1 {
        Some(a) => a.parse().unwrap(),
        None if category == Category::TaxId => Action::Pass,
        None => Action::Drop,
    }
}

/// Sets `value` at `path` (creating objects, and one-element arrays at `[]`).
fn plant(doc: &mut Value, path: &str, value: Value) {
    let segments = parse_path(path).unwrap();
    let mut node = doc;
    for segment in segments {
        node = match segment {
            Segment::Member(name) => {
                if !node.is_object() {
                    *node = json!({});
                }
                node.as_object_mut()
                    .unwrap()
                    .entry(name)
                    .or_insert(Value::Null)
            }
            Segment::Items => {
                if !node.is_array() {
                    *node = json!([Value::Null]);
                }
                &mut node.as_array_mut().unwrap()[0]
            }
        };
    }
    *node = value;
}

/// The value at `path` of a response (first array element at `[]`).
fn at<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    let mut node = doc;
    for segment in parse_path(path).unwrap() {
        node = match segment {
            Segment::Member(name) => node.get(name)?,
            Segment::Items => node.get(0)?,
        };
    }
    Some(node)
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('.').map(|(p, _)| p.trim_end_matches("[]"))
}

const ORDER_ID: &str = "902-0000000-0000001";

/// The schema Amazon's model gives `path` in `op`'s 2xx responses (`$ref`, `allOf`/`oneOf`/
/// `anyOf` resolved), if the model is at hand and names it.
fn schema_at<'m>(
    model: &'m Value,
    op: &spgate::catalog::Operation,
    path: &str,
) -> Option<&'m Value> {
    let responses =
        model["paths"][op.path][op.method.as_str().to_lowercase()]["responses"].as_object()?;
    let segments = parse_path(path)?;
    responses
        .iter()
        .filter(|(code, _)| code.starts_with('2'))
        .filter_map(|(_, r)| {
            let r = resolve(model, r);
            r.get("schema")
                .or_else(|| r.pointer("/content/application~1json/schema"))
        })
        .find_map(|schema| {
            segments
                .iter()
                .try_fold(schema, |node, segment| match segment {
                    Segment::Member(name) => member(model, node, name),
                    Segment::Items => resolve(model, node).get("items"),
                })
        })
        .map(|s| resolve(model, s))
}

fn resolve<'m>(model: &'m Value, mut schema: &'m Value) -> &'m Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match model.pointer(r.trim_start_matches('#')) {
            Some(s) => schema = s,
            None => break,
        }
    }
    schema
}

/// The schema of property `name` of `schema`, looking into `allOf`/`oneOf`/`anyOf` parts.
fn member<'m>(model: &'m Value, schema: &'m Value, name: &str) -> Option<&'m Value> {
    let schema = resolve(model, schema);
    if let Some(p) = schema.get("properties").and_then(|p| p.get(name)) {
        return Some(p);
    }
    ["allOf", "oneOf", "anyOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
        .find_map(|part| member(model, part, name))
}

/// A value of `schema`'s type with the canary in every string (and `number` in every number)
/// inside it.
fn typed_canary(model: &Value, schema: &Value, canary: &str, number: u64, depth: usize) -> Value {
    let schema = resolve(model, schema);
    if depth > 4 {
        return json!(canary);
    }
    if let Some(items) = schema.get("items") {
        return json!([typed_canary(model, items, canary, number, depth + 1)]);
    }
    let mut props = serde_json::Map::new();
    collect_properties(model, schema, &mut props, canary, number, depth);
    if !props.is_empty() {
        return Value::Object(props);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        return json!({ "k": typed_canary(model, values, canary, number, depth + 1) });
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") => json!(number),
        Some("boolean") => json!(true),
        Some("object") => json!({ "k": canary }),
        _ => json!(canary),
    }
}

fn collect_properties(
    model: &Value,
    schema: &Value,
    out: &mut serde_json::Map<String, Value>,
    canary: &str,
    number: u64,
    depth: usize,
) {
    let schema = resolve(model, schema);
    for (name, prop) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        out.insert(
            name.clone(),
            typed_canary(model, prop, canary, number, depth + 1),
        );
    }
    for part in ["allOf", "oneOf", "anyOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
    {
        collect_properties(model, part, out, canary, number, depth);
    }
}

#[tokio::test]
async fn no_role_receives_a_canary_of_a_category_it_does_not_pass_and_shapes_are_kept() {
    let gw = start_gateway(Options {
        role: "pass_all".into(),
        roles_toml: roles_toml(),
        ..Options::default()
    })
    .await;
    let mut keys = vec![("pass_all", gw.key.clone())];
    for (name, _) in &ROLES[1..] {
        let client = spgate::auth::caller::create_client(
            &*gw.store,
            &format!("tool-{name}"),
            name,
            vec![SELLER.to_string()],
            1_700_000_000,
        )
        .await
        .unwrap();
        keys.push((name, client.key.expose().clone()));
    }
    let catalog = Catalog::builtin();
    let map = FieldMap::builtin();
    let mut problems = Vec::new();
    let mut checked_ops = 0;
    let mut canaries_seen = 0;
    let mut containers_planted = 0;
    let mut planted = 0;
    let models = models_dir();
    let mut loaded: std::collections::HashMap<&str, Value> = std::collections::HashMap::new();
    for key in map.keys() {
        let op_map = map.get(key).unwrap();
        let op = catalog.by_key(key).unwrap();
        let mut doc = json!({});
        for record in &op_map.records {
            for id in &record.id {
                if let IdSource::Field(rel) = id {
                    let path = match record.root {
                        "." => rel.to_string(),
                        root => format!("{root}.{rel}"),
                    };
                    plant(&mut doc, &path, json!(ORDER_ID));
                }
            }
        }
        let model = models.as_ref().map(|dir| {
            loaded.entry(op.model_file).or_insert_with(|| {
                serde_json::from_slice(&std::fs::read(dir.join(op.model_file)).unwrap()).unwrap()
            })
        });
        let mut canaries = Vec::new();
        // Containers first, so that a mapped path inside one keeps its own canary.
        let mut fields: Vec<_> = op_map.fields.iter().enumerate().collect();
        fields.sort_by_key(|(_, f)| f.path.len());
        for (n, field) in fields {
            let canary = format!("Zq{n:03}Canary{}", key.len());
            let number = 7_700_000_000 + (n as u64) * 1000 + key.len() as u64;
            let value = match model
                .as_deref()
                .and_then(|m| Some((m, schema_at(m, op, field.path)?)))
            {
                Some((m, schema)) => typed_canary(m, schema, &canary, number, 0),
                None => json!(canary),
            };
            if !value.is_string() {
                containers_planted += 1;
            }
            // What shows the value passed: its text canary, or its number when it holds none.
            let token = if value.to_string().contains(&canary) {
                canary
            } else {
                number.to_string()
            };
            plant(&mut doc, field.path, value);
            canaries.push((field, token));
        }
        planted += canaries.len();
        // A container planted over by a mapped path inside it may hold no canary of its own.
        let planted_text = doc.to_string();
        canaries.retain(|(_, token)| planted_text.contains(token.as_str()));
        for (n, link) in op_map.links.iter().enumerate() {
            plant(
                &mut doc,
                link.path,
                json!(format!(
                    "https://presigned.canary.example/doc{n}?X-Amz-Signature=abc"
                )),
            );
        }
        gw.sandbox.script(key, Script::json(StatusCode::OK, doc));
        let path = op.expand_path(
            &op.path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(|name| (name, ORDER_ID))
                .collect::<Vec<_>>(),
        );
        checked_ops += 1;
        for (role, api_key) in &keys {
            let mut req = gw.request(op.method.clone(), &path);
            req.headers_mut().unwrap().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {api_key}").parse().unwrap(),
            );
            let body = if op.method == Method::GET || op.method == Method::DELETE {
                empty()
            } else {
                req = req.header("content-type", "application/json");
                full("{}")
            };
            let reply = gw.call(req.body(body).unwrap()).await;
            let text = String::from_utf8_lossy(&reply.body).to_string();
            let receives_any = op_map
                .categories()
                .iter()
                .any(|c| action_of(role, *c) != Action::Drop);
            if reply.status == StatusCode::FORBIDDEN && op.restricted && !receives_any {
                // Refused before Amazon is asked: nothing to leak.
                continue;
            }
            if reply.status != StatusCode::OK {
                problems.push(format!("{key} {role}: {} {text}", reply.status));
                continue;
            }
            if text.contains("presigned.canary.example") {
                problems.push(format!("{key} {role}: a presigned URL passed"));
            }
            let out: Value = serde_json::from_str(&text).unwrap();
            for link in &op_map.links {
                match at(&out, link.path).and_then(Value::as_str) {
                    Some(v) if v.starts_with(&format!("{}/v1/documents/", gw.url)) => {}
                    other => {
                        problems.push(format!("{key} {role}: link {} is {other:?}", link.path))
                    }
                }
            }
            for (field, canary) in &canaries {
                let passes = action_of(role, field.category) == Action::Pass;
                let present = text.contains(canary.as_str());
                if present {
                    canaries_seen += 1;
                }
                if present != passes {
                    problems.push(format!(
                        "{key} {role}: {} ({}) present={present}",
                        field.path, field.category
                    ));
                }
                if let Some(p) = parent(field.path) {
                    if at(&out, p).is_none() {
                        problems.push(format!("{key} {role}: {p} is gone (shape)"));
                    }
                }
                if field.required && at(&out, field.path).is_none() {
                    problems.push(format!("{key} {role}: required {} is gone", field.path));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked_ops >= 60, "{checked_ops}");
    if models.is_some() {
        assert!(
            containers_planted >= 20,
            "only {containers_planted} typed containers"
        );
    }
    // Every canary reached the pass-all role at least: the planting itself worked.
    assert!(canaries_seen >= planted, "{canaries_seen} < {planted}");
}

#[tokio::test]
async fn an_operation_without_buyer_pii_still_goes_through_the_safety_net() {
    let gw = start_gateway(Options {
        role: "drop_all".into(),
        roles_toml: roles_toml(),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "sellers.getMarketplaceParticipations",
        Script::json(
            StatusCode::OK,
            json!({"payload": [{"marketplace": {"id": "A1PA6795UKMFR9", "name": "contact jane.canary@example.invalid"}}]}),
        ),
    );
    let reply = gw.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains("jane.canary@"), "{text}");
    assert!(text.contains("A1PA6795UKMFR9"), "{text}");
}

/// GET `path` with another tool's key.
async fn get_with(gw: &TestGateway, key: &str, path: &str) -> Reply {
    let mut req = gw.request(Method::GET, path);
    req.headers_mut().unwrap().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    gw.call(req.body(empty()).unwrap()).await
}

#[tokio::test]
async fn buyer_document_links_stream_through_the_roles_policy() {
    let gw = start_gateway(Options {
        role: "pass_all".into(),
        roles_toml: roles_toml(),
        ..Options::default()
    })
    .await;
    let dropper = spgate::auth::caller::create_client(
        &*gw.store,
        "tool-drop",
        "drop_all",
        vec![SELLER.to_string()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let dropper = dropper.key.expose().clone();
    // An FBA delivery photo (opaque): only a role passing `document` gets the file.
    let label_url = format!("{}{}", gw.sandbox_url, spgate::sandbox::LABEL_PATH);
    let mut order = json!({});
    plant(&mut order, "order.orderId", json!("FBA-ORDER-1"));
    plant(
        &mut order,
        "order.shipments[].packages[].tracking.proofOfDelivery.deliveryPhotoUrl",
        json!(label_url),
    );
    gw.sandbox.script(
        "fulfillmentOutbound_2026-07-04.getOrder",
        Script::json(StatusCode::OK, order),
    );
    let order_path = "/fulfillment/outbound/2026-07-04/orders/FBA-ORDER-1";
    for (key, passes) in [(gw.key.clone(), true), (dropper.clone(), false)] {
        let reply = get_with(&gw, &key, order_path).await;
        assert_eq!(reply.status, StatusCode::OK);
        let link = reply.json()["order"]["shipments"][0]["packages"][0]["tracking"]
            ["proofOfDelivery"]["deliveryPhotoUrl"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            link.starts_with(&format!("{}/v1/documents/", gw.url)),
            "{link}"
        );
        assert!(!link.contains("_sandbox"), "{link}");
        let file = get_with(&gw, &key, &link[gw.url.len()..]).await;
        let expected = if passes {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(file.status, expected);
        let text = String::from_utf8_lossy(&file.body);
        assert_eq!(
            text.contains(spgate::sandbox::LABEL_BUYER),
            passes,
            "{}: {text}",
            file.status
        );
    }
    // A Data Kiosk document (structured, gzip): every role gets it, field by field.
    let doc_url = format!("{}/_sandbox/documents/{SELLER}", gw.sandbox_url);
    gw.sandbox.script(
        "dataKiosk_2023-11-15.getDocument",
        Script::json(
            StatusCode::OK,
            json!({"documentId": "DOC-1", "documentUrl": doc_url}),
        ),
    );
    let reply = get_with(&gw, &dropper, "/dataKiosk/2023-11-15/documents/DOC-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    let link = reply.json()["documentUrl"].as_str().unwrap().to_string();
    let file = get_with(&gw, &dropper, &link[gw.url.len()..]).await;
    assert_eq!(file.status, StatusCode::OK);
    let text = String::from_utf8(file.body.to_vec()).unwrap();
    assert!(text.starts_with("order-id\t"), "{text}");
    assert!(
        !text.contains("@example.com") && !text.contains("Synthetic Way"),
        "{text}"
    );
}
