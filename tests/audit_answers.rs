//! How answers are recorded.
//!
//! Answers whose body may carry buyer PII are durable and name their categories, success or
//! error: Amazon's error message and details (free text that may echo a buyer's name or
//! address) reach a role that passes every category of the operation, so such an error answer,
//! and a success carrying `errors` with their words, are recorded before they are sent, with the
//! operation's categories. A role that gets only codes and generic messages receives no PII, and
//! its record says none. Synthetic PII only.
//!
//! A request whose body does not arrive in time is answered 408 and recorded `timeout`.

mod common;

use common::*;
use http::StatusCode;

const NAME: &str = "Jane Planted-Example";
const STREET: &str = "12 Synthetic Way";
const OPERATION: &str = "ordersV0.getOrderAddress";

/// A gateway writing its audit log into a fresh directory; its own key passes everything, and
/// the key of a tool whose role does not.
async fn audited_gateway() -> (tempfile::TempDir, TestGateway, String) {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        server_toml: "body_read_timeout_ms = 300\n".into(),
        // `mixed` passes every category but the address lines.
        roles_toml: format!(
            "{}\n{}",
            all_pass_role("orders"),
            all_pass_role("mixed").replace("address = \"pass\"", "address = \"drop\"")
        ),
        extra_toml: format!(
            // Ordinary records wait up to a second: only a durable record is on disk when its
            // answer arrives.
            "[audit]\ndir = {:?}\ninstance = \"answers\"\nkey = {{ env = \"AUDIT_KEY\" }}\nwrite_delay_ms = 1000\n",
            audit.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    let key = gw.tool_key("mixed-tool", "mixed").await;
    (audit, gw, key)
}

/// Every record on disk right now.
fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The request's record as it is on disk right now (no flush: a durable record is there before
/// its answer is sent).
fn record_on_disk(dir: &std::path::Path, reply: &Reply) -> Option<serde_json::Value> {
    let id = reply.headers["x-spgate-request-id"].to_str().unwrap();
    records(dir).into_iter().find(|r| r["request_id"] == id)
}

fn categories(record: &serde_json::Value) -> Vec<(String, String)> {
    record["pii"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["category"].as_str().unwrap().to_string(),
                        p["action"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn answers_carrying_amazons_error_text_are_durable_and_name_the_operations_categories() {
    let (audit, gw, mixed_key) = audited_gateway().await;
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let path = format!("/orders/v0/orders/{order}/address");
    let words = format!(
        r#"{{"code":"InvalidInput","message":"Cannot ship to {NAME}","details":"{STREET}"}}"#
    );
    let cases = [
        // An error answer.
        (
            StatusCode::BAD_REQUEST,
            format!(r#"{{"errors":[{words}]}}"#),
        ),
        // A partial answer: no PII field in the payload, the errors' words only.
        (
            StatusCode::OK,
            format!(r#"{{"payload":{{"AmazonOrderId":"{order}"}},"errors":[{words}]}}"#),
        ),
    ];
    for (status, body) in &cases {
        gw.sandbox
            .script(OPERATION, scripted(*status, body.clone()));

        // The role that passes everything reads Amazon's words: recorded before it is sent,
        // with every category of the operation.
        let reply = gw.get_as(&gw.key, &path).await;
        assert_eq!(reply.status, *status, "{body}");
        assert!(String::from_utf8_lossy(&reply.body).contains(NAME));
        let record = record_on_disk(audit.path(), &reply)
            .unwrap_or_else(|| panic!("no record on disk when the answer arrived: {body}"));
        let got = categories(&record);
        for c in ["name", "address", "postal_code"] {
            assert!(
                got.contains(&(c.to_string(), "pass".to_string())),
                "{c} missing from {got:?} ({body})"
            );
        }

        // A role missing one category gets codes and generic messages: no PII, none recorded;
        // the same on a second read (the PII cache is on: an answer with errors is not cached,
        // so a hit never skips the judgement of the errors' words).
        for read in ["first", "second"] {
            let reply = gw.get_as(&mixed_key, &path).await;
            assert_eq!(reply.status, *status, "{body}");
            assert!(
                !String::from_utf8_lossy(&reply.body).contains("Planted"),
                "{read} read: {body}"
            );
            gw.gateway.auditor().flush().await;
            let record = record_on_disk(audit.path(), &reply).expect("recorded");
            let got = categories(&record);
            assert!(
                got.iter().all(|(_, action)| action == "drop"),
                "{read} read: {got:?} ({body})"
            );
        }
        // The role that passes everything, again: still recorded with every category.
        let reply = gw.get_as(&gw.key, &path).await;
        assert!(String::from_utf8_lossy(&reply.body).contains(NAME));
        let record = record_on_disk(audit.path(), &reply)
            .unwrap_or_else(|| panic!("no record on disk at the second read: {body}"));
        assert!(
            categories(&record).contains(&("name".to_string(), "pass".to_string())),
            "second read ({body})"
        );
    }
}

#[tokio::test]
async fn a_request_body_that_does_not_arrive_in_time_is_recorded_as_a_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (audit, gw, _) = audited_gateway().await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Ten bytes of the hundred announced, then nothing.
    let head = format!(
        "POST /v1/pii/reveal HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"values\":",
        gw.key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    gw.gateway.auditor().flush().await;
    let records: Vec<serde_json::Value> = records(audit.path())
        .into_iter()
        .filter(|r| r["status"] == 408)
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["outcome"], "timeout", "{:#}", records[0]);
    assert_eq!(records[0]["tool"], "test-tool");
}
