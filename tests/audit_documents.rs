//! Report-document downloads in the audit log: one `documents.download` record per download,
//! with the document id, the PII categories the redactor emitted, the bytes sent and whether
//! the stream completed; `spgate audit query --pii address` finds it.

mod common;

use common::*;
use http::StatusCode;

const DOC_PATH: &str = "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING";

#[tokio::test]
async fn a_document_download_is_recorded_with_categories_bytes_and_completion() {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"docs\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            audit.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    let reply = gw.get(DOC_PATH).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let url = reply.json()["url"].as_str().unwrap().to_string();
    let got = gw.get(&url[gw.url.len()..]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.len() > 1000);
    gw.gateway.auditor().flush().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spgate"))
        .args(["audit", "query"])
        .arg(audit.path())
        .args(["--pii", "address", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let downloads: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["operation"] == "documents.download")
        .collect();
    assert_eq!(downloads.len(), 1, "{records:#?}");
    let d = downloads[0];
    assert_eq!(d["document_id"], "SPGATE-SANDBOX-ORDERS-SHIPPING", "{d}");
    assert_eq!(d["bytes"].as_u64(), Some(got.body.len() as u64), "{d}");
    assert_eq!(d["completed"], true);
    assert_eq!(d["status"], 200);
    assert_eq!(d["tool"], "test-tool");
    assert_eq!(d["seller"], SELLER);
    assert_eq!(d["upstream_called"], true);
    let categories: Vec<&str> = d["pii"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["category"].as_str().unwrap())
        .collect();
    for c in ["address", "name", "email"] {
        assert!(categories.contains(&c), "{c} missing from {categories:?}");
    }
    // The same download is found by the other categories it emitted, and not as a request
    // without an operation.
    assert!(records
        .iter()
        .all(|r| r["operation"].is_string() || r["kind"] != "request"));
}
