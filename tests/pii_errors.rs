//! Error answers of operations with buyer PII (issue 11 item 6), through the sandbox: the
//! error's `code` always passes; its `message` and `details` (free text that may echo a buyer's
//! name or address) only for a role that passes every category of the operation; other roles
//! get a generic message for the code and no details. Synthetic PII only.

mod common;

use common::*;
use http::StatusCode;
use spgate::proxy::error_body::{message_for, FALLBACK_MESSAGE};
use spgate::sandbox::{Script, ScriptBody};

const NAME: &str = "Jane Planted-Example";
const STREET: &str = "12 Synthetic Way";
const OPERATION: &str = "ordersV0.getOrderAddress";

/// A role that passes every category of getOrderAddress but one (the address lines).
const ALL_BUT_ADDRESS: &str = r#"
[roles.mixed.pii]
name = "pass"
email = "pass"
phone = "pass"
address = "drop"
postal_code = "pass"
coarse_location = "pass"
company = "pass"
delivery_instructions = "pass"
"#;

fn error_script(status: StatusCode, body: String) -> Script {
    Script {
        status,
        headers: vec![],
        body: ScriptBody::Bytes(bytes::Bytes::from(body)),
        header_delay: std::time::Duration::ZERO,
        times: None,
    }
}

async fn get_as(gw: &TestGateway, key: &str, path: &str) -> Reply {
    let req = http::Request::get(format!("{}{path}", gw.url))
        .header("authorization", format!("Bearer {key}"))
        .header("x-spgate-seller", SELLER)
        .body(empty())
        .unwrap();
    gw.call(req).await
}

/// A gateway whose own key passes everything, and the key of a tool with the mixed role.
async fn gateway_with_mixed_tool() -> (TestGateway, String) {
    let gw = start_gateway(Options {
        roles_toml: format!("{}\n{ALL_BUT_ADDRESS}", all_pass_role("orders")),
        ..Options::default()
    })
    .await;
    let mixed = spgate::auth::caller::create_client(
        &*gw.store,
        "mixed-tool",
        "mixed",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let key = mixed.key.expose().clone();
    (gw, key)
}

#[tokio::test]
async fn error_messages_and_details_reach_only_roles_that_pass_every_category_of_the_operation() {
    let (gw, mixed_key) = gateway_with_mixed_tool().await;
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let path = format!("/orders/v0/orders/{order}/address");

    let cases = [
        (
            StatusCode::BAD_REQUEST,
            format!(
                r#"{{"errors":[{{"code":"InvalidInput","message":"Cannot ship to {NAME}, {STREET}","details":"ShipTo: {NAME}, {STREET}, Testville"}}]}}"#
            ),
            vec![("InvalidInput", message_for("InvalidInput"))],
        ),
        (
            StatusCode::NOT_FOUND,
            format!(
                r#"{{"errors":[{{"code":"NotFound","message":"No order for {NAME}"}},{{"code":"Vendor.Specific","message":"{STREET}","details":"{NAME}"}}]}}"#
            ),
            vec![
                ("NotFound", message_for("NotFound")),
                ("Vendor.Specific", FALLBACK_MESSAGE),
            ],
        ),
        (
            // A code that is free text itself: replaced by the status's code.
            StatusCode::BAD_REQUEST,
            format!(r#"{{"errors":[{{"code":"{NAME} at {STREET}","message":"x"}}]}}"#),
            vec![("InvalidInput", message_for("InvalidInput"))],
        ),
        (
            // No errors array at all: the status's code.
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"message":"{NAME}","payload":{{"AddressLine1":"{STREET}"}}}}"#),
            vec![("ServiceUnavailable", message_for("ServiceUnavailable"))],
        ),
    ];
    for (status, body, expect) in &cases {
        gw.sandbox
            .script(OPERATION, error_script(*status, body.clone()));

        // A role missing one category: codes only, generic messages, no details.
        let reply = get_as(&gw, &mixed_key, &path).await;
        assert_eq!(reply.status, *status, "{body}");
        let text = String::from_utf8_lossy(&reply.body).to_string();
        assert!(
            !text.contains("Planted") && !text.contains("Synthetic"),
            "{text}"
        );
        let errors = reply.json()["errors"].as_array().unwrap().clone();
        let got: Vec<(String, String, String)> = errors
            .iter()
            .map(|e| {
                (
                    e["code"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                    e["details"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = expect
            .iter()
            .map(|(c, m)| (c.to_string(), m.to_string(), String::new()))
            .collect();
        assert_eq!(got, want, "{body}");
    }

    // The role that passes every category reads Amazon's message and details.
    gw.sandbox
        .script(OPERATION, error_script(cases[0].0, cases[0].1.clone()));
    let reply = get_as(&gw, &gw.key, &path).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "InvalidInput");
    let first = reply.json()["errors"][0].clone();
    assert_eq!(
        first["message"],
        format!("Cannot ship to {NAME}, {STREET}").as_str()
    );
    assert!(first["details"].as_str().unwrap().contains(NAME), "{first}");

    // Not JSON: withheld from both.
    gw.sandbox.script(
        OPERATION,
        error_script(StatusCode::BAD_REQUEST, format!("<p>{NAME}</p>")),
    );
    for key in [&mixed_key, &gw.key] {
        let reply = get_as(&gw, key, &path).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(!String::from_utf8_lossy(&reply.body).contains("Planted"));
    }
}

#[tokio::test]
async fn error_messages_of_operations_without_buyer_pii_pass_through_the_safety_net() {
    let (gw, key) = gateway_with_mixed_tool().await;
    let body = r#"{"errors":[{"code":"InvalidInput","message":"Invalid asin B0SYNTH001","details":"includedData"},{"code":"InvalidInput","message":"contact planted.buyer@example.com"}]}"#;
    gw.sandbox.script(
        "catalogItems_2022-04-01.getCatalogItem",
        error_script(StatusCode::BAD_REQUEST, body.to_string()),
    );
    let reply = get_as(
        &gw,
        &key,
        "/catalog/2022-04-01/items/B0SYNTH001?marketplaceIds=ATVPDKIKX0DER",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let errors = reply.json()["errors"].clone();
    // Amazon's own words reach the tool (an SDK shows them), the details too...
    assert_eq!(errors[0]["code"], "InvalidInput");
    assert_eq!(errors[0]["message"], "Invalid asin B0SYNTH001");
    assert_eq!(errors[0]["details"], "includedData");
    // ...but a value holding an e-mail address is withheld by the safety net.
    assert_eq!(errors[1]["code"], "InvalidInput");
    assert!(!errors.to_string().contains("planted.buyer"), "{errors}");
}
