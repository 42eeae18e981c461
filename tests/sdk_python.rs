//! A real SP-API SDK from PyPI (python-amazon-sp-api) drives the gateway in drop-in mode:
//! getOrders, getOrder and getOrderAddress, with nothing changed but two URLs.
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
