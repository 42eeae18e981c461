//! A real SP-API SDK from PyPI (python-amazon-sp-api) drives the gateway in drop-in mode:
//! getOrders, getOrder and getOrderAddress, with nothing changed but two URLs.
//!
//! `.ci/run` installs the SDK into a virtualenv and names its interpreter in
//! `SPGATE_SDK_PYTHON`. Without it a developer gets a skip notice; under CI it is a failure.

mod common;

use std::process::Command;

use common::*;
use spgate::auth::drop_in;

fn python() -> Option<String> {
    let python = std::env::var("SPGATE_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import sp_api"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide python-amazon-sp-api (SPGATE_SDK_PYTHON)"
    );
    eprintln!("skipping: python-amazon-sp-api is not installed for {python}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_amazon_sp_api_works_unmodified_through_the_drop_in_endpoint() {
    let Some(python) = python() else { return };
    let gw = start_gateway(Options::default()).await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/dropin.py");
    let (url, id, secret, refresh) = (
        gw.url.clone(),
        creds.lwa_client_id.clone(),
        creds.client_secret.expose().clone(),
        creds.refresh_token.expose().clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SPGATE_URL", url)
            .env("SPGATE_LWA_CLIENT_ID", id)
            .env("SPGATE_LWA_CLIENT_SECRET", secret)
            .env("SPGATE_REFRESH_TOKEN", refresh)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["orders"].as_u64().unwrap() > 0);
    assert_eq!(v["order_id"], v["get_order_id"]);
    assert!(
        v["order_id"].as_str().unwrap().starts_with("999-"),
        "a synthetic order"
    );
    assert!(
        v["address"]["ShippingAddress"]["AddressLine1"].is_string(),
        "{v}"
    );
    assert!(
        v["access_token"].as_str().unwrap().starts_with("spgat_"),
        "the SDK only ever held a gateway token"
    );
    assert!(!stdout.contains("Atza|"));
    let stats = gw.sandbox.stats();
    for op in [
        "ordersV0.getOrders",
        "ordersV0.getOrder",
        "ordersV0.getOrderAddress",
    ] {
        assert_eq!(stats.by_operation.get(op), Some(&1), "{op}");
    }
}
