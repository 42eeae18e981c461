//! A real SP-API SDK from PyPI (python-amazon-sp-api) drives the gateway in drop-in mode:
//! getOrders, getOrder and getOrderAddress, then its own Restricted Data Token flows
//! (`RestrictedResources=`, and the Tokens API with `restricted_data_token=`) answered with
//! gateway RDTs, with nothing changed but two URLs; and the reports flow with the SDK's download
//! helper and a 429 its `throttle_retry` backs off from.
//!
//! `.ci/run` installs the SDK into a virtualenv and names its interpreter in
//! `SPGATE_SDK_PYTHON`. Without it a developer gets a skip notice; under CI it is a failure.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_amazon_sp_api_works_unmodified_through_the_drop_in_endpoint() {
    let Some(python) = sdk_python() else { return };
    let gw = start_gateway(Options::default()).await;
    let stdout = run_sdk_script(&gw, python, "dropin.py").await;
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
    assert!(!stdout.contains("Atza|") && !stdout.contains("Atz.sprdt|"));
    // `RestrictedResources=`: the SDK minted a gateway RDT for the order and read it with it
    // (the test role passes every category).
    let restricted = &v["restricted_order"];
    assert_eq!(restricted["order_id"], v["order_id"], "{v}");
    assert!(restricted["address_line1"].is_string(), "{v}");
    assert_eq!(restricted["buyer_email"], true, "{v}");
    // The Tokens API by hand: Amazon's shape, the gateway's token, used on its resource.
    assert_eq!(v["rdt"]["prefix"], "spgrdt_", "{v}");
    assert_eq!(v["rdt"]["expires_in"], 3600, "{v}");
    assert!(v["rdt"]["address_line1"].is_string(), "{v}");
    // ... and refused on another one with Amazon's 403.
    let other = &v["rdt_other_resource"];
    assert_eq!(other["ok"], false, "{v}");
    assert_eq!(other["status"], 403, "{v}");
    assert_eq!(other["error"][0]["code"], "Unauthorized", "{v}");
    let stats = gw.sandbox.stats();
    for (op, calls) in [
        ("ordersV0.getOrders", 1),
        ("ordersV0.getOrder", 2),
        ("ordersV0.getOrderAddress", 2),
    ] {
        assert_eq!(stats.by_operation.get(op), Some(&calls), "{op}");
    }
    assert_eq!(stats.by_operation.get("ordersV0.getOrderBuyerInfo"), None);
}

/// The reports flow with the SDK's own download helper, and a 429 its own `throttle_retry` backs
/// off from: the tool's plan lets getOrders through at 0.5/s (burst 1, 100 ms wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_amazon_sp_api_downloads_a_report_and_backs_off_from_a_429() {
    let Some(python) = sdk_python() else { return };
    let gw = start_gateway(Options {
        extra_toml: "[ratelimit.plans.sdk]\nmax_wait_ms = 100\n\
                     operations.\"ordersV0.getOrders\" = { rate_per_second = 0.5, burst = 1 }\n\
                     [tools.test-tool]\nplan = \"sdk\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let stdout = run_sdk_script(&gw, python, "reports_throttle.py").await;
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // createReport -> getReport -> getReportDocument -> the SDK's download of the link (no
    // credentials: the link is the credential), served decompressed.
    let report = &v["report"];
    assert!(
        report["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/v1/documents/", gw.url)),
        "{v}"
    );
    assert!(report["compression"].is_null(), "served decompressed: {v}");
    assert!(
        report["first_line"]
            .as_str()
            .unwrap()
            .starts_with("order-id\torder-item-id\t"),
        "{v}"
    );
    assert!(report["lines"].as_u64().unwrap() > 1, "{v}");
    // The second getOrders met the gateway's 429 (Amazon's shape), the SDK waited and retried.
    assert_eq!(
        v["throttled"],
        serde_json::json!([{ "code": "QuotaExceeded" }]),
        "{v}"
    );
    assert!(v["waited_ms"].as_u64().unwrap() >= 2000, "{v}");
    let stats = gw.sandbox.stats();
    assert_eq!(stats.throttled_total, 0, "Amazon never answered 429");
    assert_eq!(
        stats.by_operation.get("ordersV0.getOrders"),
        Some(&2),
        "the refused call never reached Amazon"
    );
    for op in [
        "reports_2021-06-30.createReport",
        "reports_2021-06-30.getReport",
    ] {
        assert_eq!(stats.by_operation.get(op), Some(&1), "{op}: {stats:?}");
    }
    // Not the link itself: it is a credential for five minutes.
    eprintln!(
        "python-amazon-sp-api: throttled {} waited {} ms, report lines {}",
        v["throttled"], v["waited_ms"], report["lines"]
    );
}
