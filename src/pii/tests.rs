//! Tests of roles and of the response transform (fixture JSON in, transformed JSON out).

use super::*;

#[test]
fn unknown_roles_and_ungranted_categories_get_nothing() {
    let roles = Roles::new(BTreeMap::from([(
        "labels".to_string(),
        Role::new([
            (Category::Address, Action::Pass),
            (Category::Phone, Action::Drop),
        ]),
    )]));
    let labels = roles.get("labels");
    assert!(labels.receives(Category::Address));
    assert!(!labels.receives(Category::Phone));
    assert!(!labels.receives(Category::Email));
    assert!(Category::ALL
        .iter()
        .all(|c| !roles.get("nobody").receives(*c)));
}

#[test]
fn categories_and_actions_parse_from_their_config_names() {
    for c in Category::ALL {
        assert_eq!(c.as_str().parse::<Category>(), Ok(c));
    }
    assert!("postcode".parse::<Category>().is_err());
    assert_eq!("encrypt".parse::<Action>(), Ok(Action::Encrypt));
    assert!("hide".parse::<Action>().is_err());
    for a in [
        Action::Pass,
        Action::Mask,
        Action::Pseudonymize,
        Action::Encrypt,
        Action::Drop,
    ] {
        assert_eq!(a.as_str().parse::<Action>(), Ok(a));
    }
}

// === the response transform ===

use serde_json::{json, Value};

use crate::crypto::DataKey;

const ORDER: &str = "902-1234567-1234567";

fn role(grants: &[(Category, Action)]) -> Role {
    Role::new(grants.iter().copied())
}

fn all(action: Action) -> Role {
    Role::new(Category::ALL.map(|c| (c, action)))
}

fn pseudonym_key() -> PseudonymKey {
    PseudonymKey::from_bytes(&[42; 32])
}

/// Runs the transform and compares the output with `expect`.
fn check(op: &str, role: &Role, input: Value, params: &[(&str, &str)], expect: Value) -> Report {
    let pk = pseudonym_key();
    let keys = Keys {
        pseudonym: &pk,
        orders: &NoOrderKeys,
    };
    let mut body = input;
    let report = apply(op, role, &mut body, params, &keys, &Policy::default()).unwrap();
    assert_eq!(body, expect, "{op}");
    report
}

fn v0_order() -> Value {
    json!({ "payload": {
        "AmazonOrderId": ORDER,
        "OrderStatus": "Shipped",
        "PurchaseDate": "2024-01-02T03:04:05Z",
        "LatestDeliveryDate": "2024-01-09T23:59:59Z",
        "EarliestDeliveryDate": "2024-01-05T00:00:00Z",
        "OrderTotal": { "CurrencyCode": "USD", "Amount": "12345678.90" },
        "BuyerInfo": {
            "BuyerEmail": "jane@example.invalid",
            "BuyerName": "Jane Example",
            "BuyerTaxInfo": { "TaxClassifications": [{ "Name": "VAT", "Value": "DE123456789" }] }
        },
        "ShippingAddress": {
            "Name": "Jane Example",
            "AddressLine1": "123 Example Street",
            "City": "Seattle",
            "StateOrRegion": "WA",
            "PostalCode": "98101",
            "CountryCode": "US",
            "Phone": "+1 206-555-0100",
            "ExtendedFields": { "GeoCoordinates": { "Latitude": 47.6, "Longitude": -122.3 } }
        }
    }})
}

#[test]
fn pass_keeps_every_value_and_ordinary_data_survives() {
    let report = check(
        "ordersV0.getOrder",
        &all(Action::Pass),
        v0_order(),
        &[],
        v0_order(),
    );
    assert_eq!(report.net_hits, NetHits::default());
    assert_eq!(report.fallbacks, 0);
    assert!(report.mapped);
    // Present categories only: no gift message in this response.
    assert_eq!(
        report.returned.keys().copied().collect::<Vec<_>>(),
        vec![
            Category::Name,
            Category::Email,
            Category::Phone,
            Category::Address,
            Category::PostalCode,
            Category::CoarseLocation,
            Category::TaxId
        ]
    );
    assert!(report.returned.values().all(|a| *a == Action::Pass));
    assert_eq!(report.fields, 12);
}

#[test]
fn drop_removes_optional_fields_and_empties_required_ones() {
    check(
        "ordersV0.getOrder",
        &all(Action::Drop),
        v0_order(),
        &[],
        json!({ "payload": {
            "AmazonOrderId": ORDER,
            "OrderStatus": "Shipped",
            "PurchaseDate": "2024-01-02T03:04:05Z",
            "LatestDeliveryDate": "2024-01-09T23:59:59Z",
            "EarliestDeliveryDate": "2024-01-05T00:00:00Z",
            "OrderTotal": { "CurrencyCode": "USD", "Amount": "12345678.90" },
            "BuyerInfo": { "BuyerTaxInfo": { "TaxClassifications": [{}] } },
            "ShippingAddress": { "ExtendedFields": {} }
        }}),
    );
    // Merchant Fulfillment marks the ship-to fields required: keys stay, values go.
    check(
        "merchantFulfillmentV0.getShipment",
        &Role::default(),
        json!({ "payload": {
            "ShipmentId": "S1", "AmazonOrderId": ORDER,
            "ShipToAddress": { "Name": "Jane Example", "AddressLine1": "123 Example Street",
                "AddressLine2": "Apt 1", "Email": "jane@example.invalid", "City": "Seattle",
                "PostalCode": "98101", "CountryCode": "US", "Phone": "+1 206 555 0100" },
            "Label": { "FileContents": { "Contents": "SkFORSBFWEFNUExF", "FileType": "application/pdf", "Checksum": "abc" } }
        }}),
        &[],
        json!({ "payload": {
            "ShipmentId": "S1", "AmazonOrderId": ORDER,
            "ShipToAddress": { "Name": "", "AddressLine1": "", "Email": "", "City": "",
                "PostalCode": "", "CountryCode": "", "Phone": "" },
            "Label": { "FileContents": { "Contents": "", "FileType": "application/pdf", "Checksum": "abc" } }
        }}),
    );
}

#[test]
fn mask_and_pseudonymize_rewrite_values_in_place() {
    let pk = pseudonym_key();
    let mixed = role(&[
        (Category::Name, Action::Mask),
        (Category::Email, Action::Pseudonymize),
        (Category::Phone, Action::Mask),
        (Category::PostalCode, Action::Mask),
        (Category::CoarseLocation, Action::Pass),
        (Category::TaxId, Action::Mask),
        (Category::Address, Action::Mask),
    ]);
    let report = check(
        "ordersV0.getOrder",
        &mixed,
        v0_order(),
        &[],
        json!({ "payload": {
            "AmazonOrderId": ORDER,
            "OrderStatus": "Shipped",
            "PurchaseDate": "2024-01-02T03:04:05Z",
            "LatestDeliveryDate": "2024-01-09T23:59:59Z",
            "EarliestDeliveryDate": "2024-01-05T00:00:00Z",
            "OrderTotal": { "CurrencyCode": "USD", "Amount": "12345678.90" },
            "BuyerInfo": {
                "BuyerEmail": pk.pseudonymize(Category::Email, "jane@example.invalid"),
                "BuyerName": "J*** E***",
                "BuyerTaxInfo": { "TaxClassifications": [{ "Name": "***", "Value": "*********89" }] }
            },
            "ShippingAddress": {
                "Name": "J*** E***",
                "AddressLine1": "***",
                "City": "Seattle",
                "StateOrRegion": "WA",
                "PostalCode": "98***",
                "CountryCode": "US",
                "Phone": "+* ***-***-**00",
                // Numbers cannot be masked: the members stay, zeroed.
                "ExtendedFields": { "GeoCoordinates": { "Latitude": 0, "Longitude": 0 } }
            }
        }}),
    );
    assert_eq!(report.fallbacks, 2);
    assert_eq!(report.returned[&Category::Email], Action::Pseudonymize);
}

#[test]
fn encrypted_fields_open_with_the_orders_data_key_and_nothing_else() {
    let key = DataKey::generate().unwrap();
    let keys_by_order = vec![(ORDER.to_string(), key.clone())];
    let pk = pseudonym_key();
    let keys = Keys {
        pseudonym: &pk,
        orders: &keys_by_order,
    };
    let mut body = v0_order();
    let ids = order_ids("ordersV0.getOrder", &body, &[]);
    assert_eq!(ids, vec![ORDER.to_string()]);
    let report = apply(
        "ordersV0.getOrder",
        &all(Action::Encrypt),
        &mut body,
        &[],
        &keys,
        &Policy::default(),
    )
    .unwrap();
    let email = body["payload"]["BuyerInfo"]["BuyerEmail"].as_str().unwrap();
    assert!(
        email.starts_with(&format!("spgate:v1:{}:", key.id())),
        "{email}"
    );
    assert_eq!(
        crate::pii::keys::open_value(&key, ORDER, email)
            .unwrap()
            .1
            .expose(),
        "jane@example.invalid"
    );
    assert!(crate::pii::keys::open_value(&key, "902-0000000-0000000", email).is_err());
    let text = body.to_string();
    for clear in [
        "jane@example.invalid",
        "Jane Example",
        "123 Example Street",
        "98101",
        "555",
    ] {
        assert!(!text.contains(clear), "{clear} leaked: {text}");
    }
    // The coordinates (numbers) cannot be encrypted in place.
    assert_eq!(report.fallbacks, 2);

    // Without the order's key (or without an order id), encrypt drops.
    let mut body = v0_order();
    let none = Keys {
        pseudonym: &pk,
        orders: &NoOrderKeys,
    };
    let report = apply(
        "ordersV0.getOrder",
        &all(Action::Encrypt),
        &mut body,
        &[],
        &none,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(
        body["payload"].get("BuyerInfo"),
        Some(&json!({ "BuyerTaxInfo": { "TaxClassifications": [{}] } }))
    );
    assert_eq!(body["payload"]["ShippingAddress"].get("Name"), None);
    assert_eq!(report.fallbacks, 13, "11 strings without a key, 2 numbers");
    assert!(!body.to_string().contains("Jane"));
}

#[test]
fn the_safety_net_catches_emails_and_phones_outside_the_map_only() {
    let input = json!({ "payload": {
        "AmazonOrderId": ORDER,
        "SellerOrderId": "my_sku_2065550100",
        "ShipServiceLevel": "Std",
        "Notes": ["call +44 20 7946 0018", "2024-01-02T03:04:05Z", "B07XJ8C8F5"],
        "Unexpected": { "contact": "Jane <jane@example.invalid>" },
        "BuyerInfo": { "BuyerEmail": "jane@example.invalid" }
    }});
    let grants = role(&[(Category::Email, Action::Pass)]);
    let report = check(
        "ordersV0.getOrder",
        &grants,
        input,
        &[],
        json!({ "payload": {
            "AmazonOrderId": ORDER,
            "SellerOrderId": "my_sku_2065550100",
            "ShipServiceLevel": "Std",
            "Notes": ["", "2024-01-02T03:04:05Z", "B07XJ8C8F5"],
            "Unexpected": { "contact": "" },
            "BuyerInfo": { "BuyerEmail": "jane@example.invalid" }
        }}),
    );
    assert_eq!(report.net_hits, NetHits { email: 1, phone: 1 });

    // Another net action: mask.
    let pk = pseudonym_key();
    let keys = Keys {
        pseudonym: &pk,
        orders: &NoOrderKeys,
    };
    let mut body = json!({ "payload": { "Note": "jane@example.invalid" } });
    let policy = Policy {
        safety_net: Action::Mask,
        ..Policy::default()
    };
    apply(
        "ordersV0.getOrder",
        &Role::default(),
        &mut body,
        &[],
        &keys,
        &policy,
    )
    .unwrap();
    assert_eq!(body, json!({ "payload": { "Note": "j***@e***" } }));
}

#[test]
fn unmapped_operations_get_the_safety_net_everywhere() {
    let report = check(
        "sellers.getMarketplaceParticipations",
        &all(Action::Pass),
        json!({ "payload": [{ "contact": "+1 206 555 0100", "name": "Example Store" }] }),
        &[],
        json!({ "payload": [{ "contact": "", "name": "Example Store" }] }),
    );
    assert!(!report.mapped);
    assert_eq!(report.net_hits.phone, 1);
    // getReportDocument is mapped without paths: the url stays for the lead to rewrite.
    let doc = json!({ "reportDocumentId": "amzn1.spdoc.1", "url": "https://example.invalid/doc?X-Amz-Date=20240102T030405Z" });
    check(
        "reports_2021-06-30.getReportDocument",
        &Role::default(),
        doc.clone(),
        &[],
        doc,
    );
}

#[test]
fn objects_and_numbers_under_pii_paths_never_leak() {
    // Upstream sends an object where a string is expected, and a number.
    let input = json!({ "payload": {
        "AmazonOrderId": ORDER,
        "BuyerEmail": { "primary": "jane@example.invalid", "n": 2065550100u64 },
        "BuyerName": 12345,
        "BuyerTaxInfo": { "TaxClassifications": "DE123456789" }
    }});
    check(
        "ordersV0.getOrderBuyerInfo",
        &Role::default(),
        input.clone(),
        &[],
        json!({ "payload": { "AmazonOrderId": ORDER, "BuyerTaxInfo": { "TaxClassifications": "" } } }),
    );
    check(
        "ordersV0.getOrderBuyerInfo",
        &all(Action::Mask),
        input,
        &[],
        json!({ "payload": {
            "AmazonOrderId": ORDER,
            "BuyerEmail": { "primary": "j***@e***", "n": 0 },
            "BuyerTaxInfo": { "TaxClassifications": "" }
        }}),
    );
}

#[test]
fn a_single_object_where_an_array_is_expected_is_still_covered() {
    check(
        "ordersV0.getOrders",
        &Role::default(),
        json!({ "payload": { "Orders": { "AmazonOrderId": ORDER, "BuyerInfo": { "BuyerName": "Jane Example" } } } }),
        &[],
        json!({ "payload": { "Orders": { "AmazonOrderId": ORDER, "BuyerInfo": {} } } }),
    );
}

#[test]
fn fail_closed_on_bodies_that_are_not_json_or_too_large() {
    let pk = pseudonym_key();
    let keys = Keys {
        pseudonym: &pk,
        orders: &NoOrderKeys,
    };
    let r = Role::default();
    let policy = Policy {
        max_bytes: 64,
        ..Policy::default()
    };
    let cases: &[(&[u8], PiiError)] = &[
        (
            b"{\"payload\": {\"BuyerName\": \"Jane",
            PiiError::NotJson {
                line: 1,
                column: 31,
            },
        ),
        (b"", PiiError::NotJson { line: 1, column: 0 }),
        (
            b"<html>Jane Example</html>",
            PiiError::NotJson { line: 1, column: 1 },
        ),
        (
            &[b' '; 65],
            PiiError::TooLarge {
                size: 65,
                limit: 64,
            },
        ),
    ];
    for (body, expected) in cases {
        let err = apply_bytes("ordersV0.getOrder", &r, body, &[], &keys, &policy).unwrap_err();
        assert_eq!(&err, expected);
        assert!(!err.to_string().contains("Jane"));
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        apply_bytes(
            "ordersV0.getOrder",
            &r,
            deep.as_bytes(),
            &[],
            &keys,
            &Policy::default()
        ),
        Err(PiiError::TooDeep)
    );
    assert!(matches!(
        parse(deep.as_bytes(), &Policy::default()),
        Err(PiiError::NotJson { .. })
    ));
    let (out, _) = apply_bytes(
        "ordersV0.getOrder",
        &r,
        br#"{"payload":{"AmazonOrderId":"1","BuyerInfo":{"BuyerName":"Jane"}}}"#,
        &[],
        &keys,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(out, br#"{"payload":{"AmazonOrderId":"1","BuyerInfo":{}}}"#);
}

#[test]
fn order_facts_come_from_orders_v0_and_2026_records() {
    let v0 = json!({ "payload": { "Orders": [
        { "AmazonOrderId": "A", "OrderStatus": "Shipped", "EarliestDeliveryDate": "2024-01-05T00:00:00Z",
          "LatestDeliveryDate": "2024-01-09T00:00:00Z", "EasyShipShipmentStatus": "Delivered" },
        { "AmazonOrderId": "B", "OrderStatus": "Unshipped" },
        { "OrderStatus": "no id" }
    ]}});
    let facts = orders("ordersV0.getOrders", &v0, &[]);
    assert_eq!(
        facts,
        vec![
            OrderFacts {
                order_id: "A".into(),
                status: Some("Shipped".into()),
                earliest_delivery: Some("2024-01-05T00:00:00Z".into()),
                latest_delivery: Some("2024-01-09T00:00:00Z".into()),
                delivered: true,
            },
            OrderFacts {
                order_id: "B".into(),
                status: Some("Unshipped".into()),
                ..OrderFacts::default()
            },
        ]
    );
    let v2026 = json!({ "order": {
        "orderId": "C",
        "fulfillment": { "fulfillmentStatus": "SHIPPED", "deliverByWindow": {
            "earliestDateTime": "2024-02-01T00:00:00Z", "latestDateTime": "2024-02-03T00:00:00Z" } },
        "packages": [ { "packageStatus": { "status": "DELIVERED" } }, { "packageStatus": { "status": "IN_TRANSIT" } } ]
    }});
    let facts = orders("orders_2026-01-01.getOrder", &v2026, &[]);
    assert_eq!(facts[0].status.as_deref(), Some("SHIPPED"));
    assert_eq!(
        facts[0].latest_delivery.as_deref(),
        Some("2024-02-03T00:00:00Z")
    );
    assert!(!facts[0].delivered, "one package is still in transit");
    // The same facts come out of apply.
    let report = check(
        "orders_2026-01-01.getOrder",
        &all(Action::Pass),
        v2026.clone(),
        &[],
        v2026,
    );
    assert_eq!(report.orders, facts);
    // A record without its id field falls back to the path parameter when the map says so.
    let body = json!({ "payload": { "BuyerName": "Jane Example" } });
    assert_eq!(
        order_ids("ordersV0.getOrderBuyerInfo", &body, &[("orderId", ORDER)]),
        vec![ORDER.to_string()]
    );
    assert!(order_ids("ordersV0.getOrderBuyerInfo", &body, &[]).is_empty());
    assert!(order_ids(
        "ordersV0.getOrderBuyerInfo",
        &json!({ "errors": [] }),
        &[("orderId", ORDER)]
    )
    .is_empty());
}

#[test]
fn apply_value_applies_one_action_to_one_string() {
    let pk = pseudonym_key();
    let key = DataKey::generate().unwrap();
    let by_order = vec![(ORDER.to_string(), key.clone())];
    let keys = Keys {
        pseudonym: &pk,
        orders: &by_order,
    };
    let v = "jane@example.invalid";
    assert_eq!(
        apply_value(Category::Email, Action::Pass, v, None, &keys),
        FieldOut::Keep
    );
    assert_eq!(
        apply_value(Category::Email, Action::Drop, v, None, &keys),
        FieldOut::Drop
    );
    assert_eq!(
        apply_value(Category::Email, Action::Mask, v, None, &keys),
        FieldOut::Replace("j***@e***".into())
    );
    assert_eq!(
        apply_value(Category::Email, Action::Pseudonymize, v, None, &keys),
        FieldOut::Replace(pk.pseudonymize(Category::Email, v))
    );
    assert_eq!(
        apply_value(Category::Email, Action::Encrypt, v, None, &keys),
        FieldOut::Drop
    );
    assert_eq!(
        apply_value(Category::Email, Action::Encrypt, v, Some("other"), &keys),
        FieldOut::Drop
    );
    let FieldOut::Replace(envelope) =
        apply_value(Category::Email, Action::Encrypt, v, Some(ORDER), &keys)
    else {
        panic!("encrypt with a key replaces the value");
    };
    assert_eq!(
        crate::pii::keys::open_value(&key, ORDER, &envelope)
            .unwrap()
            .1
            .expose(),
        v
    );
    let shown = format!("{:?}", FieldOut::Replace("j***@e***".into()));
    assert!(!shown.contains("j***"), "{shown}");
}

#[test]
fn escaped_pii_is_decoded_before_the_net_and_the_map_look_at_it() {
    let pk = pseudonym_key();
    let keys = Keys {
        pseudonym: &pk,
        orders: &NoOrderKeys,
    };
    // `\u0040` is `@`; the member name `Buyer\u0045mail` is `BuyerEmail`.
    let body = br#"{"payload":{"AmazonOrderId":"1","Note":"jane\u0040example.invalid","Buyer\u0045mail":"jane@example.invalid","Ok":"a\"b"}}"#;
    let (out, report) = apply_bytes(
        "ordersV0.getOrderBuyerInfo",
        &Role::default(),
        body,
        &[],
        &keys,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"payload":{"AmazonOrderId":"1","Note":"","Ok":"a\"b"}}"#
    );
    assert_eq!(report.net_hits.email, 1);
    assert_eq!(report.returned.get(&Category::Email), Some(&Action::Drop));
    // Invalid escapes, lone surrogates, bad numbers and trailing bytes are not JSON.
    let bad: &[&[u8]] = &[
        br#"{"a":"\ud800"}"#,
        br#"{"a":"\x"}"#,
        br#"{"a":01}"#,
        br#"{"a":1e999}"#,
        br#"{"a":1.}"#,
        br#"{"a":"b"} x"#,
        br#"{"a" "b"}"#,
        br#"{"a":"b",}"#,
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\xff\"}",
    ];
    for body in bad {
        let got = apply_bytes(
            "ordersV0.getOrder",
            &Role::default(),
            body,
            &[],
            &keys,
            &Policy::default(),
        );
        assert!(matches!(got, Err(PiiError::NotJson { .. })), "{got:?}");
        assert!(serde_json::from_slice::<Value>(body).is_err());
    }
}
