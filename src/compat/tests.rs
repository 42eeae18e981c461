//! Unit tests of the translator. The acceptance tests against the sandbox's synthetic orders
//! live in `src/sandbox/orders_compat_tests.rs`; the Python SDK run in `tests/sdk_python.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::map::{self, Conversion, FieldMap, Report, Rule, Scope};
use super::request::{self, Caller, Kind};
use super::{token, Compat, CompatConfig, CompatError, Mode, RawCompat, Switched, REMOVAL_UNIX};
use crate::crypto::MasterKey;
use crate::pii::{Action, Category, Role};
use crate::secret::Secret;
use crate::store::Region;

fn key() -> MasterKey {
    MasterKey::from_base64(
        "k1",
        &Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
    )
    .expect("key")
}

fn the_map() -> FieldMap {
    FieldMap::parse(map::MAP_TSV).expect("the map parses")
}

fn pass_all() -> Role {
    Role::new(Category::ALL.map(|c| (c, Action::Pass)))
}

fn plan(
    kind: Kind,
    order_id: Option<&str>,
    query: &str,
    role: &Role,
) -> Result<request::Plan, CompatError> {
    let caller = Caller {
        tool: "tool-a",
        seller: "A1SELLER",
        role,
        now: 1_800_000_000,
    };
    request::plan(kind, order_id, Some(query), &caller, &the_map(), &key())
}

// --- The map against Amazon's models ---

/// `../shared/spapi-models/orders-api-model`, or `None` (skip) outside CI.
fn models() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spapi-models/orders-api-model");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have ../shared/spapi-models beside the repository"
    );
    None
}

fn load(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).expect("model")).expect("model JSON")
}

/// Every leaf path (`a.b[].c`) under a definition, stopping at `stop` definitions (which are
/// their own scopes); `$ref`, `allOf` and arrays are followed.
fn leaves(
    model: &Value,
    schema: &Value,
    prefix: &str,
    stop: &[&str],
    seen: &mut Vec<String>,
    out: &mut BTreeSet<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        if stop.contains(&name) && !prefix.is_empty() || seen.iter().any(|s| s == name) {
            return;
        }
        seen.push(name.to_string());
        leaves(model, &model["definitions"][name], prefix, stop, seen, out);
        seen.pop();
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            leaves(model, s, prefix, stop, seen, out);
        }
        return;
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        leaves(
            model,
            &schema["items"],
            &format!("{prefix}[]"),
            stop,
            seen,
            out,
        );
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            leaves(model, v, &p, stop, seen, out);
        }
        return;
    }
    out.insert(prefix.to_string());
}

/// The scopes' v0 definitions, which bound each scope's walk.
const V0_SCOPES: [&str; 9] = [
    "Order",
    "OrderItem",
    "OrderAddress",
    "OrderBuyerInfo",
    "OrderItemBuyerInfo",
    "OrdersList",
    "OrderItemsList",
    "OrderItemsBuyerInfoList",
    "ErrorList",
];

#[test]
fn every_v0_response_field_is_produced_from_a_2026_field_or_listed_as_unavailable() {
    let Some(dir) = models() else { return };
    let v0 = load(dir.join("ordersV0.json"));
    let v2026 = load(dir.join("orders_2026-01-01.json"));
    let map = FieldMap::parse(map::MAP_TSV).expect("the map parses");
    // The six operations' answers are made of exactly these scopes.
    for op in [
        "getOrders",
        "getOrder",
        "getOrderBuyerInfo",
        "getOrderAddress",
        "getOrderItems",
        "getOrderItemsBuyerInfo",
    ] {
        let schema = v0["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
            .filter_map(|m| m.get("get"))
            .find(|g| g["operationId"] == op)
            .map(|g| g["responses"]["200"]["schema"].clone())
            .expect("operation");
        let name = schema["$ref"]
            .as_str()
            .and_then(|r| r.rsplit('/').next())
            .expect("ref");
        for (prop, sub) in v0["definitions"][name]["properties"]
            .as_object()
            .expect("props")
        {
            let inner = sub["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .expect("ref");
            assert!(
                V0_SCOPES.contains(&inner),
                "{op}.{prop} is {inner}, which has no scope"
            );
        }
    }
    let mut missing = Vec::new();
    let mut listed: BTreeMap<Scope, BTreeSet<String>> = BTreeMap::new();
    for row in &map.rows {
        listed
            .entry(row.scope)
            .or_default()
            .insert(row.field.clone());
    }
    for scope in Scope::ALL {
        let mut fields = BTreeSet::new();
        leaves(
            &v0,
            &json!({ "$ref": format!("#/definitions/{}", scope.v0_definition()) }),
            "",
            &V0_SCOPES,
            &mut Vec::new(),
            &mut fields,
        );
        let have = listed.remove(&scope).unwrap_or_default();
        for f in &fields {
            if !have.contains(f) {
                missing.push(format!("{}\t{f}", scope.name()));
            }
        }
        for f in have.difference(&fields) {
            missing.push(format!("{}\t{f} is not in the v0 model", scope.name()));
        }
        // Every produced field's source exists in the 2026 model, under the scope's source.
        let mut sources = BTreeSet::new();
        leaves(
            &v2026,
            &json!({ "$ref": format!("#/definitions/{}", scope.source_definition()) }),
            "",
            &[],
            &mut Vec::new(),
            &mut sources,
        );
        for row in map.scope(scope) {
            if let Rule::Produced { source, conversion } = &row.rule {
                // Filters name elements of a list: `a[k=V].b` is the model's `a[].b`, and the
                // filter key must be a field of the element.
                let steps = map::parse_path(source).expect("path");
                let mut plain = String::new();
                for step in steps {
                    if !plain.is_empty() {
                        plain.push('.');
                    }
                    match step {
                        map::Step::Key(k) => plain.push_str(k),
                        map::Step::Each(k) => plain.push_str(&format!("{k}[]")),
                        map::Step::Filter { list, key, .. } => {
                            let filter_key = format!("{plain}{list}[].{key}");
                            assert!(
                                sources.contains(&filter_key),
                                "{}: filter key {filter_key}",
                                row.field
                            );
                            plain.push_str(&format!("{list}[]"));
                        }
                    }
                }
                let exists = sources.contains(&plain)
                    || sources.iter().any(|s| {
                        s.starts_with(&format!("{plain}.")) || s.starts_with(&format!("{plain}[]"))
                    });
                assert!(
                    exists,
                    "{} {}: source {source} is not in the 2026 model",
                    scope.name(),
                    row.field
                );
                if matches!(
                    conversion,
                    Conversion::Copy
                        | Conversion::Date
                        | Conversion::Enum(_)
                        | Conversion::Sum
                        | Conversion::Token
                ) {
                    assert!(
                        sources.contains(&plain),
                        "{} {}: {source} is not a leaf of the 2026 model",
                        scope.name(),
                        row.field
                    );
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "v0 fields neither produced nor listed as unavailable:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_map_rejects_a_malformed_line() {
    for bad in [
        "order\tX\tsource\tcopy\textra\tmore",
        "nowhere\tX\tsource\tcopy",
        "order\tX\t-\tcopy",
        "order\tX\tsource\tunavailable\twhy",
        "order\tX\t-\tunavailable",
        "order\tX\tsource\tmystery",
        "order\tX\ta[k=]\tcopy",
        "order\tX\tsource\tcopy\norder\tX\tsource\tcopy",
    ] {
        assert!(FieldMap::parse(bad).is_err(), "{bad:?}");
    }
    assert!(FieldMap::parse("# comment\n\norder\tX\ta.b[].c[k=V].d\tcopy\n").is_ok());
}

// --- The engine ---

#[test]
fn resolve_follows_keys_lists_and_filters() {
    let v = json!({ "a": [{ "k": "X", "v": 1 }, { "k": "Y", "v": 2 }, { "k": "X", "v": 3 }], "b": { "c": "d" } });
    assert_eq!(
        map::resolve(&v, "a[].v"),
        vec![&json!(1), &json!(2), &json!(3)]
    );
    assert_eq!(map::resolve(&v, "a[k=X].v"), vec![&json!(1), &json!(3)]);
    assert_eq!(map::resolve(&v, "a[k=Z].v"), Vec::<&Value>::new());
    assert_eq!(map::resolve(&v, "b.c"), vec![&json!("d")]);
    assert!(map::resolve(&v, "b.missing").is_empty());
}

#[test]
fn conversions_produce_v0_values_and_report_what_they_cannot_convert() {
    let map = FieldMap::parse(
        "order\tStatus\tf.s\tenum:order_status\norder\tWhen\tt\tdate\norder\tPrime\tp[]\thas:PRIME\norder\tBiz\tp[]\thas:AMAZON_BUSINESS\norder\tGift\tg\tpresent-string\norder\tReq\tg\tpresent\norder\tCancel\tc\tpresent-true\norder\tN\ti[].q\tsum\norder\tL[]\ti[].q\tcopy\norder\tM.Amount\tm.amount\tcopy\norder\tNext\tn\ttoken\n",
    )
    .expect("map");
    let source = json!({
        "f": { "s": "CANCELLED" }, "t": "2026-01-02T03:04:05Z", "p": ["PRIME"], "g": {},
        "i": [{ "q": 2 }, { "q": 3 }], "m": { "amount": "1.50" }, "n": "amazon-token",
    });
    let mut wrap = |t: &str| Ok(format!("wrapped:{t}"));
    let mut report = Report::default();
    let out = map::build(&map, Scope::Order, &source, &mut wrap, &mut report).expect("builds");
    assert_eq!(
        Value::Object(out),
        json!({
            "Status": "Canceled", "When": "2026-01-02T03:04:05Z", "Prime": true, "Biz": false,
            "Gift": "true", "Req": true, "N": 5, "L": [2, 3], "M": { "Amount": "1.50" },
            "Next": "wrapped:amazon-token",
        })
    );
    assert!(report.unconverted.is_empty());
    let odd = json!({ "f": { "s": "TELEPORTED" }, "t": "yesterday", "i": [{ "q": "two" }] });
    let out = map::build(&map, Scope::Order, &odd, &mut wrap, &mut report).expect("builds");
    assert_eq!(
        Value::Object(out),
        json!({ "Prime": false, "Biz": false, "Gift": "false", "Req": false, "L": ["two"] })
    );
    let fields: Vec<&str> = report.unconverted.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(fields, ["Status", "When", "N"]);
}

#[test]
fn copy_carries_only_leaves_so_no_unmapped_field_passes() {
    let map = FieldMap::parse(
        "order\tName\tb.name\tcopy\norder\tIds[]\tp[].id\tcopy\norder\tTags[]\ttags\tcopy\n",
    )
    .expect("map");
    let mut wrap = |t: &str| Ok(t.to_string());
    // The model's shape: leaves (and a list of leaves) are copied.
    let mut report = Report::default();
    let fine =
        json!({ "b": { "name": "Ada" }, "p": [{ "id": "1" }, { "id": 2 }], "tags": ["a", "b"] });
    let out = map::build(&map, Scope::Order, &fine, &mut wrap, &mut report).expect("builds");
    assert_eq!(
        Value::Object(out),
        json!({ "Name": "Ada", "Ids": ["1", 2], "Tags": ["a", "b"] })
    );
    assert!(report.unconverted.is_empty());
    // An object or a list of objects where the map names a leaf: its unmapped members
    // (here `secret`) never pass; the field fails and is reported.
    let odd = json!({
        "b": { "name": { "first": "Ada", "secret": "s3cr3t" } },
        "p": [{ "id": { "secret": "s3cr3t" } }],
        "tags": [{ "secret": "s3cr3t" }],
    });
    let out = map::build(&map, Scope::Order, &odd, &mut wrap, &mut report).expect("builds");
    assert_eq!(Value::Object(out), json!({}));
    let fields: Vec<&str> = report.unconverted.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(fields, ["Name", "Ids[]", "Tags[]"]);
    // A null is no value.
    let mut report = Report::default();
    let out = map::build(
        &map,
        Scope::Order,
        &json!({ "b": { "name": null } }),
        &mut wrap,
        &mut report,
    )
    .expect("builds");
    assert_eq!(Value::Object(out), json!({}));
    assert!(report.unconverted.is_empty());
}

#[test]
fn enum_tables_round_trip_and_cover_the_models_values() {
    use map::EnumTable;
    for (table, v0) in [
        (
            EnumTable::OrderStatus,
            vec![
                "Pending",
                "Unshipped",
                "PartiallyShipped",
                "Shipped",
                "Canceled",
                "Unfulfillable",
                "PendingAvailability",
            ],
        ),
        (EnumTable::FulfillmentChannel, vec!["AFN", "MFN"]),
    ] {
        for value in v0 {
            let new = table.to_2026(value).expect("mapped");
            assert_eq!(table.to_v0(new), Some(value));
        }
    }
    assert_eq!(EnumTable::OrderStatus.to_2026("InvoiceUnconfirmed"), None);
}

// --- Requests ---

#[test]
fn get_orders_parameters_are_mapped() {
    let p = plan(
        Kind::Orders,
        None,
        "MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2026-01-01T00:00:00Z&CreatedBefore=2026-02-01T00:00:00Z&LastUpdatedAfter=2026-01-02T00:00:00Z&LastUpdatedBefore=2026-01-03T00:00:00Z&OrderStatuses=Unshipped,PartiallyShipped&FulfillmentChannels=MFN&MaxResultsPerPage=50",
        &pass_all(),
    )
    .expect("translates");
    assert_eq!(p.target, "orders_2026-01-01.searchOrders");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(
        p.path_and_query
            .split_once('?')
            .expect("query")
            .1
            .as_bytes(),
    )
    .map(|(k, v)| (k.into_owned(), v.into_owned()))
    .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert!(p.path_and_query.starts_with("/orders/2026-01-01/orders?"));
    assert_eq!(get("marketplaceIds"), Some("ATVPDKIKX0DER"));
    assert_eq!(get("createdAfter"), Some("2026-01-01T00:00:00Z"));
    assert_eq!(get("createdBefore"), Some("2026-02-01T00:00:00Z"));
    assert_eq!(get("lastUpdatedAfter"), Some("2026-01-02T00:00:00Z"));
    assert_eq!(get("lastUpdatedBefore"), Some("2026-01-03T00:00:00Z"));
    assert_eq!(
        get("fulfillmentStatuses"),
        Some("UNSHIPPED,PARTIALLY_SHIPPED")
    );
    assert_eq!(get("fulfilledBy"), Some("MERCHANT"));
    assert_eq!(get("maxResultsPerPage"), Some("50"));
    assert_eq!(
        get("includedData"),
        Some("FULFILLMENT,PROCEEDS,BUYER,RECIPIENT")
    );
    assert_eq!(pairs.len(), 9);
}

#[test]
fn every_untranslatable_or_invalid_parameter_is_refused_by_name() {
    let base = "MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2026-01-01T00:00:00Z";
    for (extra, param) in [
        ("PaymentMethods=COD", "PaymentMethods"),
        ("BuyerEmail=x%40example.com", "BuyerEmail"),
        ("SellerOrderId=1", "SellerOrderId"),
        (
            "EasyShipShipmentStatuses=Delivered",
            "EasyShipShipmentStatuses",
        ),
        (
            "ElectronicInvoiceStatuses=Accepted",
            "ElectronicInvoiceStatuses",
        ),
        ("AmazonOrderIds=902-1-1", "AmazonOrderIds"),
        (
            "ActualFulfillmentSupplySourceId=x",
            "ActualFulfillmentSupplySourceId",
        ),
        ("IsISPU=true", "IsISPU"),
        ("StoreChainStoreId=x", "StoreChainStoreId"),
        (
            "EarliestDeliveryDateBefore=2026-01-01",
            "EarliestDeliveryDateBefore",
        ),
        (
            "EarliestDeliveryDateAfter=2026-01-01",
            "EarliestDeliveryDateAfter",
        ),
        (
            "LatestDeliveryDateBefore=2026-01-01",
            "LatestDeliveryDateBefore",
        ),
        (
            "LatestDeliveryDateAfter=2026-01-01",
            "LatestDeliveryDateAfter",
        ),
        ("OrderStatuses=InvoiceUnconfirmed", "OrderStatuses"),
    ] {
        match plan(Kind::Orders, None, &format!("{base}&{extra}"), &pass_all()) {
            Err(CompatError::Untranslatable(p)) => assert_eq!(p, param),
            other => panic!("{extra}: {other:?}"),
        }
    }
    for (query, param) in [
        (format!("{base}&OrderStatuses=Lost"), "OrderStatuses"),
        (
            format!("{base}&FulfillmentChannels=SELF"),
            "FulfillmentChannels",
        ),
        (format!("{base}&Surprise=1"), "an unknown query parameter"),
        (
            "CreatedAfter=2026-01-01T00:00:00Z".to_string(),
            "MarketplaceIds",
        ),
    ] {
        match plan(Kind::Orders, None, &query, &pass_all()) {
            Err(CompatError::BadParameter(p)) => assert_eq!(p, param),
            other => panic!("{query}: {other:?}"),
        }
    }
}

#[test]
fn single_order_calls_become_get_order_with_the_datasets_their_answer_needs() {
    for (kind, included) in [
        (Kind::Order, "FULFILLMENT,PROCEEDS,BUYER,RECIPIENT"),
        (Kind::BuyerInfo, "BUYER"),
        (Kind::Address, "RECIPIENT"),
        (
            Kind::Items,
            "FULFILLMENT,PROCEEDS,EXPENSE,PROMOTION,CANCELLATION,BUYER",
        ),
        (Kind::ItemsBuyerInfo, "FULFILLMENT,PROCEEDS,BUYER"),
    ] {
        let p = plan(kind, Some("902-3159896-1390916"), "", &pass_all()).expect("translates");
        assert_eq!(p.target, "orders_2026-01-01.getOrder");
        assert_eq!(
            p.path_and_query,
            format!(
                "/orders/2026-01-01/orders/902-3159896-1390916?includedData={}",
                included.replace(',', "%2C")
            )
        );
    }
    // An order id that could leave its path segment is refused, never sent.
    for id in ["", "../reports", "a/b", "a?b", "x%2F"] {
        assert!(
            matches!(
                plan(Kind::Order, Some(id), "", &pass_all()),
                Err(CompatError::BadParameter("orderId"))
            ),
            "{id}"
        );
    }
    // The marketplace parameters SDKs add to every GET are skipped, as Amazon's v0 skips them.
    let p = plan(
        Kind::Address,
        Some("902-1-1"),
        "MarketplaceId=A&MarketplaceIds=A&marketplace_ids=A&marketplaceIds=A",
        &pass_all(),
    )
    .expect("translates");
    assert_eq!(
        p.path_and_query,
        "/orders/2026-01-01/orders/902-1-1?includedData=RECIPIENT"
    );
    // The items operations never get a gateway NextToken, so any is refused.
    assert!(matches!(
        plan(Kind::Items, Some("902-1-1"), "NextToken=abc", &pass_all()),
        Err(CompatError::TokenInvalid)
    ));
    assert!(matches!(
        plan(
            Kind::Order,
            Some("902-1-1"),
            "includedData=TAX",
            &pass_all()
        ),
        Err(CompatError::BadParameter(_))
    ));
}

#[test]
fn included_data_asks_only_for_what_the_role_may_receive() {
    use Category::*;
    // (operation, the categories the role receives, the includedData sent)
    let cases: &[(Kind, &[Category], &str)] = &[
        (
            Kind::Order,
            &[Address, PostalCode],
            "FULFILLMENT,PROCEEDS,RECIPIENT",
        ),
        (Kind::Orders, &[], "FULFILLMENT,PROCEEDS"),
        // Data the role may receive comes: a gift message or customization (BUYER), the
        // recipient's company (RECIPIENT).
        (
            Kind::Items,
            &[GiftMessage],
            "FULFILLMENT,PROCEEDS,EXPENSE,PROMOTION,CANCELLATION,BUYER",
        ),
        (
            Kind::ItemsBuyerInfo,
            &[CustomizationUrl],
            "FULFILLMENT,PROCEEDS,BUYER",
        ),
        (Kind::Address, &[Company], "RECIPIENT"),
        (
            Kind::Order,
            &[Company],
            "FULFILLMENT,PROCEEDS,BUYER,RECIPIENT",
        ),
        // And nothing for fields the v0 answer does not hold: getOrderItems has no buyer name
        // or e-mail, getOrder no delivery instructions, getOrderBuyerInfo no county.
        (
            Kind::Items,
            &[Name, Email],
            "FULFILLMENT,PROCEEDS,EXPENSE,PROMOTION,CANCELLATION",
        ),
        (Kind::Order, &[DeliveryInstructions], "FULFILLMENT,PROCEEDS"),
        (Kind::BuyerInfo, &[CoarseLocation], ""),
        (Kind::Order, &[GiftMessage], "FULFILLMENT,PROCEEDS"),
        (Kind::Address, &[DeliveryInstructions], "RECIPIENT"),
        (
            Kind::ItemsBuyerInfo,
            &[Name, Email, Company],
            "FULFILLMENT,PROCEEDS",
        ),
    ];
    let the_map = the_map();
    for (kind, cats, expect) in cases {
        let role = Role::new(cats.iter().map(|c| (*c, Action::Mask)));
        assert_eq!(
            request::included_data(&the_map, *kind, &role).join(","),
            *expect,
            "{} {cats:?}",
            kind.v0_key()
        );
    }
    // The plan sends exactly that, and no includedData at all when nothing is needed.
    let p = plan(
        Kind::BuyerInfo,
        Some("902-1-1"),
        "",
        &Role::new([(CoarseLocation, Action::Pass)]),
    )
    .expect("translates");
    assert_eq!(p.path_and_query, "/orders/2026-01-01/orders/902-1-1");
    let p = plan(
        Kind::Items,
        Some("902-1-1"),
        "",
        &Role::new([(GiftMessage, Action::Pass)]),
    )
    .expect("translates");
    assert_eq!(
        p.path_and_query,
        "/orders/2026-01-01/orders/902-1-1?includedData=FULFILLMENT%2CPROCEEDS%2CEXPENSE%2CPROMOTION%2CCANCELLATION%2CBUYER"
    );
}

#[test]
fn a_produced_field_has_the_same_pii_category_in_the_v0_and_the_2026_map() {
    // The datasets are chosen by both categories; they must agree, or the v0 policy would
    // judge a carried-over value by another category than the 2026 map gives it.
    let the_map = the_map();
    let mut checked = 0;
    for kind in Kind::ALL {
        for (scope, v0_prefix) in kind.scopes() {
            let base = match scope {
                Scope::Item | Scope::ItemBuyer => "orderItems[].",
                Scope::Orders | Scope::Errors => continue,
                _ => "",
            };
            for row in the_map.scope(*scope) {
                let Rule::Produced { source, conversion } = &row.rule else {
                    continue;
                };
                if !conversion.carries_value() {
                    continue;
                }
                let plain: Vec<String> = source
                    .split('.')
                    .map(|p| {
                        p.split_once('[')
                            .map_or(p.to_string(), |(n, _)| format!("{n}[]"))
                    })
                    .collect();
                let v0 = request::category_at(kind.v0_key(), &format!("{v0_prefix}{}", row.field));
                let new = request::category_at(
                    request::GET_ORDER,
                    &format!("order.{base}{}", plain.join(".")),
                );
                assert_eq!(v0, new, "{} {}", kind.v0_key(), row.field);
                checked += usize::from(v0.is_some());
            }
        }
    }
    assert!(checked > 40, "{checked}");
}

// --- NextToken ---

#[test]
fn next_tokens_wrap_the_2026_token_and_the_query_and_expire_with_it() {
    let k = key();
    let wrapped = token::wrap(
        &k,
        "tool-a",
        "A1SELLER",
        "amazon-2026-token",
        "marketplaceIds=A",
        1_000,
    )
    .expect("seals");
    assert!(wrapped.starts_with(token::PREFIX));
    assert!(!wrapped.contains("amazon-2026-token"));
    let claims = token::unwrap(
        &k,
        "tool-a",
        "A1SELLER",
        &wrapped,
        1_000 + token::LIFETIME_SECONDS - 1,
    )
    .expect("opens");
    assert_eq!(claims.token.expose(), "amazon-2026-token");
    assert_eq!(claims.query, "marketplaceIds=A");
    assert!(!format!("{claims:?}").contains("amazon-2026-token"));
    assert!(matches!(
        token::unwrap(
            &k,
            "tool-a",
            "A1SELLER",
            &wrapped,
            1_000 + token::LIFETIME_SECONDS
        ),
        Err(CompatError::TokenExpired)
    ));
    for (tool, seller, token) in [
        ("tool-b", "A1SELLER", wrapped.as_str()),
        ("tool-a", "A2OTHER", wrapped.as_str()),
        ("tool-a", "A1SELLER", "amazon-2026-token"),
        ("tool-a", "A1SELLER", &wrapped[..wrapped.len() - 2]),
    ] {
        assert!(
            matches!(
                token::unwrap(&k, tool, seller, token, 1_000),
                Err(CompatError::TokenInvalid)
            ),
            "{tool} {seller}"
        );
    }
    // A later page of a translated search: the first page's query with Amazon's token.
    let caller = Caller {
        tool: "tool-a",
        seller: "A1SELLER",
        role: &pass_all(),
        now: 1_000,
    };
    let p = request::plan(
        Kind::Orders,
        None,
        Some(&format!(
            "NextToken={}",
            form_urlencoded::byte_serialize(wrapped.as_bytes()).collect::<String>()
        )),
        &caller,
        &the_map(),
        &k,
    )
    .expect("translates");
    assert_eq!(
        p.path_and_query,
        "/orders/2026-01-01/orders?marketplaceIds=A&paginationToken=amazon-2026-token&includedData=FULFILLMENT%2CPROCEEDS%2CBUYER%2CRECIPIENT"
    );
    assert_eq!(p.search_query, "marketplaceIds=A");
}

#[test]
fn filters_sent_with_a_next_token_must_be_the_first_pages_never_ignored() {
    let k = key();
    let first = "createdAfter=2026-01-01T00%3A00%3A00Z&marketplaceIds=A%2CB&fulfillmentStatuses=UNSHIPPED%2CSHIPPED&maxResultsPerPage=9";
    let wrapped =
        token::wrap(&k, "tool-a", "A1SELLER", "amazon-2026-token", first, 1_000).expect("seals");
    let next = form_urlencoded::byte_serialize(wrapped.as_bytes()).collect::<String>();
    let role = pass_all();
    let caller = Caller {
        tool: "tool-a",
        seller: "A1SELLER",
        role: &role,
        now: 1_000,
    };
    let page = |extra: &str| {
        request::plan(
            Kind::Orders,
            None,
            Some(&format!("NextToken={next}{extra}")),
            &caller,
            &the_map(),
            &k,
        )
    };
    let alone = page("").expect("the token alone").path_and_query;
    // The first page's filters again (as python-amazon-sp-api sends them), lists in any
    // order, a subset of its marketplaces (an SDK's default one), SDK marketplace keys.
    for same in [
        "&CreatedAfter=2026-01-01T00:00:00Z&MarketplaceIds=A,B&OrderStatuses=Unshipped,Shipped&MaxResultsPerPage=9",
        "&OrderStatuses=Shipped,Unshipped&MarketplaceIds=B,A",
        "&MarketplaceIds=A&MarketplaceId=A&marketplace_ids=A&marketplaceIds=A",
        "&MaxResultsPerPage=9",
    ] {
        assert_eq!(page(same).expect(same).path_and_query, alone, "{same}");
    }
    // A filter that differs from (or was not in) the first page's: refused by its v0 name.
    for (other, name) in [
        ("&CreatedAfter=2025-01-01T00:00:00Z", "CreatedAfter"),
        ("&MarketplaceIds=C", "MarketplaceIds"),
        ("&MarketplaceIds=A,C", "MarketplaceIds"),
        ("&OrderStatuses=Unshipped", "OrderStatuses"),
        ("&MaxResultsPerPage=10", "MaxResultsPerPage"),
        ("&LastUpdatedAfter=2026-01-01T00:00:00Z", "LastUpdatedAfter"),
        ("&FulfillmentChannels=AFN", "FulfillmentChannels"),
    ] {
        match page(other) {
            Err(CompatError::NextTokenFilter(n)) => assert_eq!(n, name, "{other}"),
            r => panic!("{other}: {r:?}"),
        }
    }
    // What could not be translated on a first page is not taken with a token either.
    assert!(matches!(
        page("&BuyerEmail=x%40example.com"),
        Err(CompatError::Untranslatable("BuyerEmail"))
    ));
    assert!(matches!(
        page("&Whatever=1"),
        Err(CompatError::BadParameter("an unknown query parameter"))
    ));
}

// --- Modes ---

#[test]
fn modes_follow_the_config_and_the_removal_date() {
    let raw = RawCompat {
        orders_v0: Some("passthrough".into()),
        auto_removal_sellers: None,
    };
    let tools: Vec<(String, Option<String>)> = vec![
        ("translator".into(), Some("translate".into())),
        ("waiter".into(), Some("auto".into())),
        ("plain".into(), None),
    ];
    let config = raw
        .resolve(tools.iter().map(|(t, m)| (t, m.as_ref())))
        .expect("valid");
    assert_eq!(config.mode_for("plain"), Mode::Passthrough);
    assert_eq!(config.mode_for("translator"), Mode::Translate);
    assert_eq!(config.removal_sellers, 3);
    let compat = Compat::new(config).expect("compat");
    let before = REMOVAL_UNIX - 1;
    let na = Region::Na;
    // (operation, tool, now, translated as)
    let cases: &[(&str, &str, i64, Option<Kind>)] = &[
        ("ordersV0.getOrders", "plain", before, None),
        ("ordersV0.getOrders", "plain", REMOVAL_UNIX + 1, None),
        ("ordersV0.getOrder", "translator", before, Some(Kind::Order)),
        ("ordersV0.getOrderMetrics", "translator", before, None),
        ("ordersV0.getOrders", "waiter", before, None),
        (
            "ordersV0.getOrders",
            "waiter",
            REMOVAL_UNIX,
            Some(Kind::Orders),
        ),
    ];
    for (op, tool, now, expect) in cases {
        assert_eq!(
            compat.translates(op, tool, na, *now),
            *expect,
            "{op} {tool} {now}"
        );
    }
}

#[test]
fn auto_switches_a_region_only_after_enough_different_sellers_are_answered_as_removed() {
    use http::StatusCode as S;
    let compat = Compat::new(CompatConfig::defaults()).expect("compat"); // auto, 3 sellers
    let before = REMOVAL_UNIX - 1;
    let on = |r: Region| {
        compat
            .translates("ordersV0.getOrders", "t", r, before)
            .is_some()
    };
    // A 404 for one order or a 403 says nothing about v0.
    assert_eq!(
        compat.observe_v0(Kind::Order, S::NOT_FOUND, (Region::Eu, "S1"), 10),
        None
    );
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::FORBIDDEN, (Region::Eu, "S1"), 10),
        None
    );
    // One seller's removed answers, however many, never switch anyone.
    for _ in 0..5 {
        assert_eq!(
            compat.observe_v0(Kind::Orders, S::NOT_FOUND, (Region::Eu, "S1"), 10),
            None
        );
    }
    assert!(!on(Region::Eu));
    assert_eq!(
        compat.observe_v0(Kind::Order, S::GONE, (Region::Eu, "S2"), 11),
        None
    );
    assert!(!on(Region::Eu));
    // A successful v0 answer in the region: v0 is there; the sellers counted are forgotten.
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::OK, (Region::Eu, "S4"), 12),
        None
    );
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::NOT_FOUND, (Region::Eu, "S3"), 13),
        None
    );
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::NOT_FOUND, (Region::Eu, "S1"), 14),
        None
    );
    assert!(!on(Region::Eu));
    // Another region's answers count for that region only.
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::NOT_FOUND, (Region::Na, "S9"), 15),
        None
    );
    // The third different seller of the region switches it, once.
    assert_eq!(
        compat.observe_v0(Kind::Items, S::GONE, (Region::Eu, "S2"), 16),
        Some(Switched {
            region: Region::Eu,
            sellers: 3
        })
    );
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::NOT_FOUND, (Region::Eu, "S5"), 17),
        None
    );
    assert!(on(Region::Eu) && !on(Region::Na) && !on(Region::Fe));
    // A success after the switch does not undo it; only a reset does.
    assert_eq!(
        compat.observe_v0(Kind::Orders, S::OK, (Region::Eu, "S4"), 18),
        None
    );
    assert!(on(Region::Eu));
    let status = compat.status();
    assert_eq!(
        status
            .iter()
            .map(|s| (s.region, s.translating, s.since, s.sellers_answered_removed))
            .collect::<Vec<_>>(),
        [
            (Region::Na, false, None, 1),
            (Region::Eu, true, Some(16), 3),
            (Region::Fe, false, None, 0)
        ]
    );
    let mut metrics = String::new();
    compat.render_metrics(&mut metrics);
    for line in [
        "\nspgate_compat_orders_v0_removed_answers_total 11\n",
        "\nspgate_compat_orders_v0_auto_translating{region=\"eu\"} 1\n",
        "\nspgate_compat_orders_v0_auto_translating{region=\"na\"} 0\n",
        "\nspgate_compat_orders_v0_removed_sellers{region=\"na\"} 1\n",
        "\nspgate_compat_lock_poisoned_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_eq!(compat.reset_removal(Some(Region::Na)), []);
    assert!(on(Region::Eu));
    assert_eq!(compat.reset_removal(None), [Region::Eu]);
    assert!(!on(Region::Eu));
    assert_eq!(compat.status()[1].sellers_answered_removed, 0);
}

#[test]
fn a_poisoned_lock_is_recovered_logged_and_counted_never_silently_ignored() {
    let compat = std::sync::Arc::new(Compat::new(CompatConfig::defaults()).expect("compat"));
    let poisoner = compat.clone();
    let panicked = std::thread::spawn(move || {
        let _config = poisoner.config.write();
        let _removal = poisoner.removal.lock();
        panic!("poison both locks");
    })
    .join();
    assert!(panicked.is_err());
    assert!(compat.config.is_poisoned() && compat.removal.is_poisoned());
    // The data under the locks is whole: the modes still apply and auto still counts.
    let mut config = CompatConfig::defaults();
    config.orders_v0 = Mode::Translate;
    compat.reload(config);
    assert_eq!(
        compat.translates("ordersV0.getOrders", "t", Region::Na, 0),
        Some(Kind::Orders)
    );
    assert_eq!(
        compat.observe_v0(Kind::Orders, http::StatusCode::GONE, (Region::Na, "S1"), 1),
        None
    );
    assert_eq!(compat.status()[0].sellers_answered_removed, 1);
    let mut metrics = String::new();
    compat.render_metrics(&mut metrics);
    let poisoned: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spgate_compat_lock_poisoned_total "))
        .and_then(|n| n.parse().ok())
        .expect("the counter");
    // Once per poisoning (then the poison is cleared), not once per use.
    assert_eq!(poisoned, 2);
    assert!(!compat.config.is_poisoned() && !compat.removal.is_poisoned());
}

#[test]
fn the_removal_threshold_is_at_least_two_sellers() {
    for (value, ok) in [
        (None, true),
        (Some(2), true),
        (Some(1), false),
        (Some(0), false),
        (Some(1001), false),
    ] {
        let raw = RawCompat {
            orders_v0: None,
            auto_removal_sellers: value,
        };
        let got = raw.resolve(std::iter::empty());
        assert_eq!(got.is_ok(), ok, "{value:?}");
        if let Err(issues) = got {
            assert_eq!(issues[0].path, "compat.auto_removal_sellers");
        }
    }
}

#[test]
fn a_bad_mode_is_reported_with_its_key_path() {
    let raw = RawCompat {
        orders_v0: Some("sometimes".into()),
        auto_removal_sellers: None,
    };
    let tools: Vec<(String, Option<String>)> = vec![("t1".into(), Some("never".into()))];
    let issues = raw
        .resolve(tools.iter().map(|(t, m)| (t, m.as_ref())))
        .expect_err("invalid");
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["compat.orders_v0", "tools.t1.orders_v0"]);
}

#[test]
fn a_page_token_that_is_not_a_string_refuses_the_answer_rather_than_ending_paging() {
    let compat = Compat::new(CompatConfig::defaults()).expect("compat");
    let role = pass_all();
    let caller = Caller {
        tool: "t",
        seller: "s",
        role: &role,
        now: 0,
    };
    let p = plan(
        Kind::Orders,
        None,
        "MarketplaceIds=A&CreatedAfter=2026-01-01T00:00:00Z",
        &role,
    )
    .expect("plan");
    // A string token: the tool gets a gateway NextToken to page on.
    let (ok, _) = compat
        .answer(
            &p,
            br#"{"orders":[],"pagination":{"nextToken":"t-2"}}"#,
            &caller,
            &key(),
        )
        .expect("translates");
    assert!(String::from_utf8_lossy(&ok).contains("NextToken"));
    for token in ["17", "{\"a\":1}", "[\"t\"]", "true"] {
        let body = format!(r#"{{"orders":[],"pagination":{{"nextToken":{token}}}}}"#);
        assert!(
            matches!(
                compat.answer(&p, body.as_bytes(), &caller, &key()),
                Err(CompatError::UpstreamShape(_))
            ),
            "{token}"
        );
    }
}

#[test]
fn an_answer_without_the_models_shape_is_refused() {
    let compat = Compat::new(CompatConfig::defaults()).expect("compat");
    let role = pass_all();
    let caller = Caller {
        tool: "t",
        seller: "s",
        role: &role,
        now: 0,
    };
    let p = plan(Kind::Order, Some("902-1-1"), "", &role).expect("plan");
    for body in [&b"not json"[..], br#"{"orders":[]}"#, br#"{"order":"x"}"#] {
        assert!(matches!(
            compat.answer(&p, body, &caller, &key()),
            Err(CompatError::UpstreamShape(_))
        ));
    }
    let p = plan(Kind::Items, Some("902-1-1"), "", &role).expect("plan");
    assert!(matches!(
        compat.answer(&p, br#"{"order":{"orderId":"1"}}"#, &caller, &key()),
        Err(CompatError::UpstreamShape(_))
    ));
    let (out, unconverted) = compat
        .answer(&p, br#"{"order":{"orderId":"902-1-1","orderItems":[{"orderItemId":"7","quantityOrdered":1,"product":{"asin":"B0"}}]}}"#, &caller, &key())
        .expect("builds");
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v["payload"]["AmazonOrderId"], "902-1-1");
    assert_eq!(v["payload"]["OrderItems"][0]["ASIN"], "B0");
    assert_eq!(v["payload"]["OrderItems"][0]["IsGift"], "false");
    assert_eq!(unconverted, 0);
    // Values that cannot be converted are left out, counted for the audit record and the
    // metric (never silently).
    let (out, unconverted) = compat
        .answer(&p, br#"{"order":{"orderId":"902-1-1","orderItems":[{"orderItemId":"7","quantityOrdered":1,"product":{"asin":{"x":"y"},"condition":{"conditionType":"TELEPORTED"}}}]}}"#, &caller, &key())
        .expect("builds");
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert!(v["payload"]["OrderItems"][0].get("ASIN").is_none(), "{v}");
    assert!(
        v["payload"]["OrderItems"][0].get("ConditionId").is_none(),
        "{v}"
    );
    assert_eq!(unconverted, 2);
    let mut metrics = String::new();
    compat.render_metrics(&mut metrics);
    assert!(
        metrics.contains("\nspgate_compat_orders_v0_unconverted_total 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn translation_errors_are_answered_in_v0s_error_shape_naming_only_the_parameter() {
    use crate::proxy::rescue::{rescue, ProxyError};
    use http_body_util::BodyExt;
    for (err, status, code, details) in [
        (
            CompatError::Untranslatable("BuyerEmail"),
            400,
            "InvalidInput",
            "BuyerEmail",
        ),
        (
            CompatError::BadParameter("an unknown query parameter"),
            400,
            "InvalidInput",
            "an unknown query parameter",
        ),
        (CompatError::TokenInvalid, 400, "InvalidInput", ""),
        (CompatError::TokenExpired, 400, "InvalidInput", ""),
        (
            CompatError::UpstreamShape("not JSON"),
            502,
            "InternalFailure",
            "",
        ),
        (CompatError::TokenSeal, 500, "InternalFailure", ""),
    ] {
        let resp = rescue(&ProxyError::Compat(err));
        assert_eq!(resp.status().as_u16(), status);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        let errors = v["errors"].as_array().expect("v0 ErrorList");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["code"], code);
        assert_eq!(errors[0]["details"], details);
        assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
