//! End-to-end tests of the PII policy: what each role receives of planted synthetic buyer PII,
//! and that a response the policy cannot read is withheld (fail closed).

mod common;

use common::*;
use http::StatusCode;
use spgate::sandbox::{Script, ScriptBody};

/// A synthetic value planted in upstream responses; it must never reach a caller it is withheld
/// from.
const PLANTED: &str = "Jane Planted-Example";

fn bytes_script(status: StatusCode, headers: Vec<(&str, &str)>, body: &str) -> Script {
    Script {
        status,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        body: ScriptBody::Bytes(bytes::Bytes::from(body.to_string())),
        header_delay: std::time::Duration::ZERO,
        times: None,
    }
}

#[tokio::test]
async fn restricted_responses_the_policy_cannot_read_are_withheld_with_502() {
    let gw = start_gateway(Options::default()).await;
    let path = "/orders/v0/orders/902-0000000-0000001/address";
    let cases = [
        (
            "not JSON",
            bytes_script(
                StatusCode::OK,
                vec![("content-type", "application/json")],
                &format!("Name: {PLANTED}"),
            ),
        ),
        (
            "truncated JSON",
            bytes_script(
                StatusCode::OK,
                vec![],
                &format!(r#"{{"payload":{{"ShippingAddress":{{"Name":"{PLANTED}""#),
            ),
        ),
        (
            "encoded",
            bytes_script(
                StatusCode::OK,
                vec![("content-encoding", "gzip")],
                &format!(r#"{{"payload":{{"BuyerCompanyName":"{PLANTED}"}}}}"#),
            ),
        ),
        (
            "too large",
            bytes_script(
                StatusCode::OK,
                vec![],
                &format!(
                    r#"{{"payload":{{"BuyerCompanyName":"{PLANTED}","pad":"{}"}}}}"#,
                    "x".repeat(9 * 1024 * 1024)
                ),
            ),
        ),
    ];
    for (what, script) in cases {
        gw.sandbox.script("ordersV0.getOrderAddress", script);
        let reply = gw.get(path).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{what}");
        assert_eq!(reply.error_code(), "InternalFailure", "{what}");
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("Planted"), "{what}: {text}");
    }
    // An error answer carries no buyer data and passes as Amazon sent it.
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        bytes_script(
            StatusCode::NOT_FOUND,
            vec![],
            r#"{"errors":[{"code":"NotFound","message":"Order not found"}]}"#,
        ),
    );
    let reply = gw.get(path).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "NotFound");
}

#[tokio::test]
async fn a_restricted_response_cut_by_the_total_timeout_is_withheld() {
    let gw = start_gateway(Options {
        upstream_toml: "header_timeout_ms = 500\ntotal_timeout_ms = 600".into(),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![],
            body: ScriptBody::Stall { first_bytes: 100 },
            header_delay: std::time::Duration::ZERO,
            times: None,
        },
    );
    let reply = gw
        .get("/orders/v0/orders/902-0000000-0000001/address")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "InternalFailure");
}
