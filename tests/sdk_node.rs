//! Real node SP-API SDKs from npm (amz-tools `amazon-sp-api`, bizon `@sp-api-sdk/*`), unmodified,
//! drive the gateway through its forward proxy: `HTTPS_PROXY` names the gateway,
//! `NODE_EXTRA_CA_CERTS` its CA (made by `spgate ca init`'s code), and the credentials are the
//! gateway's drop-in LWA credentials. Each SDK runs getOrders, getOrderAddress, its own RDT flow
//! (createRestrictedDataToken answered with a gateway RDT, used on getOrderAddress and getOrder,
//! refused on another resource and, for bizon, another seller), createReport -> getReport ->
//! getReportDocument -> download of the presigned-style link, and a 429 it backs off from
//! (`tests/sdk/node/*` print each step's outcome). The tool's role passes names, addresses and
//! phones and drops e-mails, so what the RDT flow returns shows the role's policy.
//!
//! `.ci/run` installs the pinned packages with `npm ci` in `tests/sdk/node`. Without them a
//! developer gets a skip notice; under CI it is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use spgate::auth::drop_in;

const MARKETPLACE: &str = "ATVPDKIKX0DER";
/// A seller the tool's gateway RDT was not issued for.
const OTHER_SELLER: &str = "A2OTHERSELLER02";
/// The tool's role: buyer names, addresses and phones, no e-mails.
const ROLE: &str =
    "[roles.shipping.pii]\nname = \"pass\"\naddress = \"pass\"\npostal_code = \"pass\"\n\
                    coarse_location = \"pass\"\nphone = \"pass\"\n";
/// Document links are built on a host the SDKs reach through the forward proxy (amz-tools
/// downloads over https only).
const PUBLIC_URL: &str = "https://sellingpartnerapi-eu.amazon.com";
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
async fn run_sdk(script: &str) -> Option<(TestGateway, serde_json::Value, Vec<serde_json::Value>)> {
    let dir = node_dir()?;
    let ca_dir = tempfile::tempdir().unwrap();
    let audit = tempfile::tempdir().unwrap();
    let (cert, key) = spgate::server::mint::ca_init(ca_dir.path()).unwrap();
    let gw = start_gateway(Options {
        files: vec![cert.clone(), key.clone()],
        no_public_url: true,
        server_toml: format!("public_url = \"{PUBLIC_URL}\""),
        role: "shipping".into(),
        roles_toml: ROLE.into(),
        extra_toml: format!(
            "[forward_proxy]\nenabled = true\nca_cert_file = {:?}\nca_key_file = {:?}\n\
             [ratelimit.plans.sdk]\nmax_wait_ms = 100\n\
             operations.\"ordersV0.getOrders\" = {{ rate_per_second = 0.5, burst = 1 }}\n\
             [tools.test-tool]\nplan = \"sdk\"\n\
             [audit]\ndir = {:?}\ninstance = \"sdk\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            cert.display().to_string(),
            key.display().to_string(),
            audit.path().display().to_string(),
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
        .env("SPGATE_REPORT_DOCUMENT", SANDBOX_REPORT_DOCUMENT)
        .env("SPGATE_OTHER_SELLER", OTHER_SELLER);
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
        !stdout.contains("Atza|") && !stdout.contains("Atz.sprdt|"),
        "an Amazon token reached the tool"
    );
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let records = audit_records(&gw, audit.path()).await;
    drop(ca_dir);
    Some((gw, v, records))
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
    // The SDK's own RDT flow: the gateway's token, used on both resources it names; the role's
    // policy applies (the address passes, the e-mail is dropped).
    let rdt = &v["rdt"];
    assert_eq!(rdt["ok"], true, "{v}");
    assert_eq!(rdt["tokenPrefix"], "spgrdt_", "{v}");
    assert_eq!(rdt["expiresIn"], 3600, "{v}");
    assert!(rdt["addressLine1"].is_string(), "{v}");
    assert!(rdt["order"]["addressLine1"].is_string(), "{v}");
    assert_eq!(
        rdt["order"]["buyerEmail"], false,
        "the role drops e-mails: {v}"
    );
    assert_eq!(
        rdt["order"]["buyerName"], true,
        "the role passes names: {v}"
    );
    // On a resource it does not name: refused before Amazon.
    assert_eq!(v["rdtOtherResource"]["ok"], false, "{v}");
    assert_eq!(v["rdtOtherResource"]["code"], "Unauthorized", "{v}");
    assert_eq!(
        v["rdtOtherResource"]["message"], "Access to requested resource is denied.",
        "{v}"
    );
    assert_eq!(
        stats.by_operation.get("ordersV0.getOrderItems"),
        None,
        "{v}"
    );
    assert_eq!(stats.by_operation.get("ordersV0.getOrder"), Some(&1), "{v}");
    // createReport -> getReport -> getReportDocument -> a plain download of the presigned-style
    // link on `server.public_url`, through the forward proxy, decompressed by the gateway.
    let report = &v["report"];
    assert_eq!(report["ok"], true, "{v}");
    assert_eq!(report["stage"], "download", "{v}");
    assert!(
        report["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{PUBLIC_URL}/v1/documents/")),
        "{v}"
    );
    assert!(
        report["compressionAlgorithm"].is_null(),
        "served decompressed: {v}"
    );
    assert!(
        report["firstLine"]
            .as_str()
            .unwrap()
            .starts_with("order-id\torder-item-id\t"),
        "{v}"
    );
}

/// The audit log: the token issued and each use recorded as a gateway RDT's, the refusal with its
/// reason, and never the token itself.
fn check_audit(records: &[serde_json::Value]) {
    let text = serde_json::to_string(records).unwrap();
    assert!(!text.contains("spgrdt_"), "a gateway RDT in the audit log");
    let op = |r: &serde_json::Value, key: &str| r["operation"] == key;
    let issued = records
        .iter()
        .find(|r| op(r, "tokens_2021-03-01.createRestrictedDataToken"))
        .expect("createRestrictedDataToken recorded");
    assert_eq!(issued["status"], 200, "{issued}");
    assert_eq!(issued["gateway_rdt"], true, "{issued}");
    assert_eq!(issued["upstream_called"], false, "{issued}");
    let used: Vec<_> = records
        .iter()
        .filter(|r| r["gateway_rdt"] == true && r["status"] == 200)
        .filter(|r| op(r, "ordersV0.getOrderAddress") || op(r, "ordersV0.getOrder"))
        .collect();
    assert_eq!(used.len(), 2, "{text}");
    assert!(used.iter().all(|r| r["token"] == "rdt"), "{text}");
    let refused = records
        .iter()
        .find(|r| op(r, "ordersV0.getOrderItems"))
        .expect("the refusal recorded");
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["reason"], "gateway_rdt_wrong_resource", "{refused}");
    assert_eq!(refused["tool"], "test-tool", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amz_tools_amazon_sp_api_works_unmodified_through_the_forward_proxy() {
    let Some((gw, v, records)) = run_sdk("amz-tools.cjs").await else {
        return;
    };
    check_common(&gw, &v);
    check_audit(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bizon_sp_api_sdk_works_unmodified_through_the_forward_proxy() {
    let Some((gw, v, records)) = run_sdk("bizon.mjs").await else {
        return;
    };
    check_common(&gw, &v);
    check_audit(&records);
    assert_eq!(v["rdtOtherResource"]["status"], 403, "{v}");
    // For another seller: refused too, and recorded with its reason.
    let other = &v["rdtOtherSeller"];
    assert_eq!(other["ok"], false, "{v}");
    assert_eq!(other["status"], 403, "{v}");
    assert_eq!(other["code"], "Unauthorized", "{v}");
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "gateway_rdt_wrong_seller" && r["status"] == 403),
        "{records:?}"
    );
    let retries = v["retries"].as_array().unwrap();
    assert!(
        retries.iter().any(|r| r["rateLimit"] == 0.5),
        "axios-retry backed off by the gateway's x-amzn-RateLimit-Limit: {v}"
    );
}
