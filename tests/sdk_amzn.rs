//! Amazon's own Python SDK from PyPI (`amzn-sp-api`, pinned in `.ci/run`), unmodified, drives the
//! gateway with nothing changed but its two endpoint URLs (`SPAPIClient(config,
//! oauth_endpoint=..., endpoint=...)`) and the gateway's drop-in LWA credentials:
//! getOrders, getOrderAddress (the gateway obtains the RDT), a 429 backed off from (the SDK
//! has no retry of its own; urllib3 under it retries a GET answered 429 after `Retry-After`),
//! createReport -> getReport -> getReportDocument -> download (a plain GET of the link with no
//! credentials: the SDK has no download helper), and the SDK's RDT flow (its Tokens API mints
//! the gateway's RDT, its Orders API uses it). `tests/sdk/amzn/amzn.py` prints each step.
//!
//! `.ci/run` installs the SDK into `target/amzn-venv` and names its interpreter in
//! `SPGATE_AMZN_PYTHON`. Without it a developer gets a skip notice; under CI it is a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use spgate::auth::drop_in;

const MARKETPLACE: &str = "ATVPDKIKX0DER";
/// The sandbox's synthetic gzip report document (Amazon's static getReport example points at a
/// document on Amazon's CDN, which a test cannot reach).
const SANDBOX_REPORT_DOCUMENT: &str = "SPGATE-SANDBOX-ORDERS-SHIPPING";

/// The interpreter with amzn-sp-api: `SPGATE_AMZN_PYTHON`, else `target/amzn-venv`'s.
fn amzn_python() -> Option<String> {
    let python = std::env::var("SPGATE_AMZN_PYTHON").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/amzn-venv/bin/python")
            .display()
            .to_string()
    });
    let ok = Command::new(&python)
        .args(["-c", "import spapi"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide amzn-sp-api (SPGATE_AMZN_PYTHON)"
    );
    eprintln!("skipping: amzn-sp-api is not installed for {python}");
    None
}

/// Runs `amzn.py <mode>` against a fresh gateway whose tool plan lets getOrders through at
/// 0.25/s (burst 1, 100 ms wait), so calls less than 4 s apart meet a 429; document links are served
/// from the sandbox over loopback.
async fn run(mode: &str) -> Option<(TestGateway, serde_json::Value)> {
    let python = amzn_python()?;
    let gw = start_gateway(Options {
        sandbox_documents: true,
        extra_toml: "[ratelimit.plans.sdk]\nmax_wait_ms = 100\n\
                     operations.\"ordersV0.getOrders\" = { rate_per_second = 0.25, burst = 1 }\n\
                     [tools.test-tool]\nplan = \"sdk\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(format!(
        "{}/tests/sdk/amzn/amzn.py",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg(mode)
    .env("SPGATE_URL", &gw.url)
    .env("SPGATE_LWA_CLIENT_ID", &creds.lwa_client_id)
    .env("SPGATE_LWA_CLIENT_SECRET", creds.client_secret.expose())
    .env("SPGATE_REFRESH_TOKEN", creds.refresh_token.expose())
    .env("SPGATE_MARKETPLACE", MARKETPLACE)
    .env("SPGATE_REPORT_DOCUMENT", SANDBOX_REPORT_DOCUMENT)
    // The gateway is on loopback: no proxy from the environment.
    .env_remove("HTTPS_PROXY")
    .env_remove("HTTP_PROXY")
    .env_remove("https_proxy")
    .env_remove("http_proxy");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "amzn.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("Atza|"),
        "an Amazon token reached the tool"
    );
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    Some((gw, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amzn_sp_api_works_unmodified_with_endpoint_urls() {
    let Some((gw, v)) = run("flow").await else {
        return;
    };
    assert!(
        v["access_token"].as_str().unwrap().starts_with("spgat_"),
        "the SDK only ever held a gateway token: {v}"
    );
    let orders = &v["getOrders"];
    assert_eq!(orders["ok"], true, "{v}");
    assert!(orders["orders"].as_u64().unwrap() > 0, "{v}");
    assert!(
        orders["orderId"].as_str().unwrap().starts_with("999-"),
        "a synthetic order: {v}"
    );
    let address = &v["getOrderAddress"];
    assert_eq!(address["ok"], true, "{v}");
    assert!(address["addressLine1"].is_string(), "{v}");

    // The 429: the gateway's own, with Retry-After; urllib3 under the SDK slept that long and
    // its retry succeeded. The refused call never reached Amazon.
    let throttled = &v["throttled"];
    assert_eq!(throttled["ok"], true, "{v}");
    assert_eq!(throttled["statuses"], serde_json::json!([429]), "{v}");
    assert!(throttled["ms"].as_u64().unwrap() >= 1000, "{v}");
    let stats = gw.sandbox.stats();
    assert_eq!(
        stats.by_operation.get("ordersV0.getOrders"),
        Some(&2),
        "{v}"
    );

    // Reports: the document link is the gateway's, on server.public_url, fetched with no
    // credentials; the gateway hands out the document gunzipped.
    let report = &v["report"];
    assert_eq!(report["ok"], true, "{v}");
    assert_eq!(report["stage"], "done", "{v}");
    assert!(
        report["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/v1/documents/", gw.url)),
        "{v}"
    );
    assert!(report["compressionAlgorithm"].is_null(), "{v}");
    assert!(report["lines"].as_u64().unwrap() > 1, "{v}");
    assert!(
        report["header"].as_str().unwrap().contains("order-id"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amzn_sp_api_mints_a_gateway_rdt_and_uses_it_on_its_resource_only() {
    let Some((gw, v)) = run("rdt").await else {
        return;
    };
    let mint = &v["mint"];
    assert_eq!(mint["ok"], true, "createRestrictedDataToken: {v}");
    assert_eq!(mint["gatewayToken"], true, "{v}");
    assert!(mint["expiresIn"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["address"]["ok"], true, "{v}");
    assert!(v["address"]["addressLine1"].is_string(), "{v}");
    let other = &v["otherResource"];
    assert_eq!(other["ok"], false, "{v}");
    let status = other["status"].as_u64().unwrap();
    assert!(
        (400..500).contains(&status),
        "refused on another resource: {v}"
    );
    // The real RDT stayed with the gateway; Amazon saw the address call.
    let stats = gw.sandbox.stats();
    assert_eq!(
        stats.by_operation.get("ordersV0.getOrderAddress"),
        Some(&1),
        "{v}"
    );
}
