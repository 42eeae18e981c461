//! Report-document downloads in the audit log: one `documents.download` record per download,
//! with the document id, the PII categories the redactor emitted, the bytes sent and whether
//! the stream completed; `spgate audit query --pii address` finds it.

mod common;

use common::*;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;

const DOC_PATH: &str = "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING";

/// A gateway writing its audit log into a fresh directory.
async fn audited_gateway() -> (tempfile::TempDir, TestGateway) {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"docs\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            audit.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    (audit, gw)
}

#[tokio::test]
async fn a_document_download_is_recorded_with_categories_bytes_and_completion() {
    let (audit, gw) = audited_gateway().await;
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
        .filter(|r| r["operation"] == "documents.download" && r["completed"].is_boolean())
        .collect();
    assert_eq!(downloads.len(), 1, "{records:#?}");
    // Made durable before the first byte went out (a start record, without categories yet).
    let all = std::process::Command::new(env!("CARGO_BIN_EXE_spgate"))
        .args(["audit", "query"])
        .arg(audit.path())
        .args(["--operation", "documents.download", "--json"])
        .output()
        .unwrap();
    let all: Vec<serde_json::Value> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["operation"] == "documents.download" && r["reason"] == "download_started")
        .collect();
    assert_eq!(started.len(), 1, "{all:#?}");
    assert_eq!(started[0]["document_id"], "SPGATE-SANDBOX-ORDERS-SHIPPING");
    assert!(started[0]["seq"].as_u64() < downloads[0]["seq"].as_u64());
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

/// A document host that sends a head and the first rows, then never sends more (a slow
/// download).
async fn stalling_document_host() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = fetched.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let rows = "amazon-order-id\tbuyer-name\nTEST-1\tJane Synthetic\n";
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            let chunk = format!("{:x}\r\n{rows}\r\n", rows.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(chunk.as_bytes()).await;
            held.push(s);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, fetched, task)
}

#[tokio::test]
async fn the_drain_cut_ends_a_slow_download_and_records_it_as_shutdown() {
    let audit = tempfile::tempdir().unwrap();
    let (host, fetched, _host_task) = stalling_document_host().await;
    let gw = start_gateway(Options {
        sandbox_documents: false,
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"docs\"\nkey = {{ env = \"AUDIT_KEY\" }}\n\
             [outbound]\nallow_loopback = [\"{host}\"]\n",
            audit.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "reports_2021-06-30.getReportDocument",
        spgate::sandbox::Script::json(
            StatusCode::OK,
            serde_json::json!({
                "reportDocumentId": "SPGATE-SANDBOX-ORDERS-SHIPPING",
                "url": format!("http://{host}/doc"),
            }),
        ),
    );
    let reply = gw.get(DOC_PATH).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let url = reply.json()["url"].as_str().unwrap().to_string();
    let resp = gw
        .send(
            gw.request(http::Method::GET, &url[gw.url.len()..])
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1);
    let reading = tokio::spawn(async move { resp.into_body().collect().await.is_ok() });

    // The download counts as in flight until the cut ends it and it is recorded.
    assert_eq!(gw.gateway.cut_in_flight(Duration::from_secs(10)).await, 0);
    gw.gateway.auditor().flush().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spgate"))
        .args(["audit", "query"])
        .arg(audit.path())
        .args(["--operation", "documents.download", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["completed"].is_boolean())
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    let d = &records[0];
    assert_eq!(d["document_id"], "SPGATE-SANDBOX-ORDERS-SHIPPING", "{d}");
    assert_eq!(d["outcome"], "shutdown", "{d}");
    assert_eq!(d["completed"], false, "{d}");
    // The client sees an aborted transfer, never a complete-looking document.
    assert!(!reading.await.unwrap());
}

/// A plain GET of `url` with no header at all, as an SDK downloads a presigned URL.
async fn bare_get(gw: &TestGateway, url: &str) -> Reply {
    gw.call(http::Request::get(url).body(empty()).unwrap())
        .await
}

#[tokio::test]
async fn a_document_link_is_its_own_credential_on_the_public_url_and_bad_links_are_refused_and_audited(
) {
    let (audit, gw) = audited_gateway().await;
    // The link is built on server.public_url, whatever Host the SDK sent.
    let req = gw
        .request(http::Method::GET, DOC_PATH)
        .header("host", "sellingpartnerapi-na.amazon.com")
        .body(empty())
        .unwrap();
    let reply = gw.call(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let url = reply.json()["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/v1/documents/", gw.url)),
        "{url}"
    );

    // No header needed: the link is the credential.
    let got = bare_get(&gw, &url).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert!(got.body.len() > 1000);

    // A tampered link, a link sealed under another key, and an expired one: Amazon-shaped 403s.
    let mut tampered = url.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |expires_at| spgate::documents::link::LinkClaims {
        url: "https://tortuga-prod-na.s3.amazonaws.com/doc".into(),
        compression: None,
        seller_id: SELLER.into(),
        tool: "test-tool".into(),
        client_id: String::new(),
        role: "full".into(),
        document_id: "OTHER-DOC".into(),
        opaque: false,
        expires_at,
    };
    let other_key = spgate::crypto::MasterKey::from_base64(
        "k1",
        &spgate::crypto::MasterKey::generate_base64().unwrap(),
    )
    .unwrap();
    let foreign = spgate::documents::link::issue(&other_key, &claims(now + 60), now).unwrap();
    let ours = spgate::crypto::MasterKey::from_base64("k1", &gw.master_key_b64).unwrap();
    let expiring = spgate::documents::link::issue(&ours, &claims(now + 1), now).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for bad in [
        tampered,
        format!("{}/v1/documents/{foreign}", gw.url),
        format!("{}/v1/documents/{expiring}", gw.url),
        format!("{}/v1/documents/not-a-link", gw.url),
    ] {
        let reply = bare_get(&gw, &bad).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(reply.error_code(), "Unauthorized");
        assert!(reply.headers.contains_key("x-amzn-requestid"));
    }

    let records = audit_records(&gw, audit.path()).await;
    let reasons: Vec<&str> = records
        .iter()
        .filter(|r| r["operation"] == "documents.download")
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "document_link_invalid")
            .count(),
        3,
        "{records:#?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "document_link_expired")
            .count(),
        1,
        "{records:#?}"
    );

    // Once its tool is revoked, a link it was given opens nothing.
    let reply = gw.get(DOC_PATH).await;
    let url = reply.json()["url"].as_str().unwrap().to_string();
    let client = gw.store.clients().await.unwrap().remove(0);
    gw.store.revoke_client(&client.id, now).await.unwrap();
    let reply = bare_get(&gw, &url).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_public_url_document_links_are_refused_never_built_on_host() {
    let gw = start_gateway(Options {
        no_public_url: true,
        ..Options::default()
    })
    .await;
    let reply = gw.get(DOC_PATH).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error_code(), "InternalFailure");
    assert!(!String::from_utf8_lossy(&reply.body).contains("amazonaws"));
}
