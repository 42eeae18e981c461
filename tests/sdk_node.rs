//! Real node SP-API SDKs from npm (amz-tools `amazon-sp-api`, bizon `@sp-api-sdk/*`), unmodified,
//! drive the gateway through its forward proxy: `HTTPS_PROXY` names the gateway,
//! `NODE_EXTRA_CA_CERTS` its CA (made by `spgate ca init`'s code), and the credentials are the
//! gateway's drop-in LWA credentials. Each SDK runs getOrders, getOrderAddress, its own RDT flow,
//! createReport -> getReport -> getReportDocument -> download, and a 429 it backs off from
//! (`tests/sdk/node/*.cjs` print each step's outcome).
//!
//! `.ci/run` installs the pinned packages with `npm ci` in `tests/sdk/node`. Without them a
//! developer gets a skip notice; under CI it is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use spgate::auth::drop_in;

const MARKETPLACE: &str = "ATVPDKIKX0DER";
/// The sandbox's synthetic gzip report document (Amazon's static getReport example points at a
/// document on Amazon's CDN, which a test cannot reach).
const SANDBOX_REPORT_DOCUMENT: &str = "SPGATE-SANDBOX-ORDERS-SHIPPING";

fn node_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    let installed = [
        "amazon-sp-api",
        "@sp-api-sdk/orders-api-v0",
        "https-proxy-agent",
    ]
    .iter()
    .all(|p| dir.join("node_modules").join(p).is_dir());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed && node {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install the node SDKs (npm ci in tests/sdk/node)"
    );
    eprintln!("skipping: node or the SDKs in tests/sdk/node/node_modules are missing (npm ci)");
    None
}

/// Runs `script` against a fresh gateway with the forward proxy on, where the tool's plan lets
/// getOrders through at 0.5/s (burst 1, 100 ms wait), so back-to-back calls meet a 429.
async fn run_sdk(script: &str) -> Option<(TestGateway, serde_json::Value)> {
    let dir = node_dir()?;
    let ca_dir = tempfile::tempdir().unwrap();
    let (cert, key) = spgate::server::mint::ca_init(ca_dir.path()).unwrap();
    let gw = start_gateway(Options {
        files: vec![cert.clone(), key.clone()],
        extra_toml: format!(
            "[forward_proxy]\nenabled = true\nca_cert_file = {:?}\nca_key_file = {:?}\n\
             [ratelimit.plans.sdk]\nmax_wait_ms = 100\n\
             operations.\"ordersV0.getOrders\" = {{ rate_per_second = 0.5, burst = 1 }}\n\
             [tools.test-tool]\nplan = \"sdk\"\n",
            cert.display().to_string(),
            key.display().to_string(),
        ),
        ..Options::default()
    })
    .await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("HTTPS_PROXY", &gw.url)
        .env("NODE_EXTRA_CA_CERTS", &cert)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("SPGATE_LWA_CLIENT_ID", &creds.lwa_client_id)
        .env("SPGATE_LWA_CLIENT_SECRET", creds.client_secret.expose())
        .env("SPGATE_REFRESH_TOKEN", creds.refresh_token.expose())
        .env("SPGATE_MARKETPLACE", MARKETPLACE)
        .env("SPGATE_REGION", "eu")
        .env("SPGATE_REPORT_DOCUMENT", SANDBOX_REPORT_DOCUMENT);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("Atza|"),
        "an Amazon token reached the tool"
    );
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    drop(ca_dir);
    Some((gw, v))
}

/// What both SDKs must show, whatever their shape.
fn check_common(gw: &TestGateway, v: &serde_json::Value) {
    let orders = &v["getOrders"];
    assert_eq!(orders["ok"], true, "{v}");
    assert!(orders["orders"].as_u64().unwrap() > 0, "{v}");
    assert!(
        orders["orderId"].as_str().unwrap().starts_with("999-"),
        "a synthetic order: {v}"
    );
    assert_eq!(v["getOrderAddress"]["ok"], true, "{v}");
    assert!(v["getOrderAddress"]["addressLine1"].is_string(), "{v}");
    // The 429: the SDK backed off and its retry succeeded; the refused call never reached
    // Amazon (the sandbox saw the first flow's call and the two throttled-step calls only).
    let throttled = &v["throttled"];
    assert_eq!(throttled["ok"], true, "{v}");
    assert!(
        throttled["ms"].as_u64().unwrap() >= 1500,
        "waited for the plan's rate: {v}"
    );
    let stats = gw.sandbox.stats();
    assert_eq!(
        stats.by_operation.get("ordersV0.getOrders"),
        Some(&3),
        "{v}"
    );
    // The SDK's own RDT flow: createRestrictedDataToken is the gateway's own operation; until the
    // gateway answers it with its own token (issue 17 item 2), the SDK gets 403.
    assert_eq!(v["rdt"]["ok"], false, "{v}");
    // createReport -> getReport -> getReportDocument through the tunnel; the document link names
    // the tunnel's host, so the SDK fetches it back through the forward proxy. Until the link
    // itself is the credential (issue 17 item 1) that fetch, with no credentials, is refused.
    let report = &v["report"];
    assert_eq!(report["stage"], "download", "{v}");
    assert!(
        report["url"]
            .as_str()
            .unwrap()
            .starts_with("https://sellingpartnerapi-eu.amazon.com/v1/documents/"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amz_tools_amazon_sp_api_works_unmodified_through_the_forward_proxy() {
    let Some((gw, v)) = run_sdk("amz-tools.cjs").await else {
        return;
    };
    check_common(&gw, &v);
    assert_eq!(v["rdt"]["code"], "Unauthorized", "{v}");
    eprintln!("amz-tools: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bizon_sp_api_sdk_works_unmodified_through_the_forward_proxy() {
    let Some((gw, v)) = run_sdk("bizon.mjs").await else {
        return;
    };
    check_common(&gw, &v);
    assert_eq!(v["rdt"]["status"], 403, "{v}");
    assert_eq!(v["report"]["status"], 401, "{v}");
    let retries = v["retries"].as_array().unwrap();
    assert!(
        retries.iter().any(|r| r["rateLimit"] == 0.5),
        "axios-retry backed off by the gateway's x-amzn-RateLimit-Limit: {v}"
    );
    eprintln!("bizon: {v}");
}
