//! A revocation applies at the next request on every instance: two gateway instances share one
//! store (the embedded file, or Redis); a tool revoked through one instance, or by the
//! `spgate clients revoke` CLI in another process, is refused by the other at its next request,
//! although that instance had just served the tool from its cache.

mod common;

use std::process::Command;

use common::*;
use http::{Method, StatusCode};
use spgate::crypto::MasterKey;

const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";
const BIN: &str = env!("CARGO_BIN_EXE_spgate");

/// Two instances on one store, sharing the master key.
async fn two_instances(store_toml: &str) -> (TestGateway, TestGateway) {
    let master = MasterKey::generate_base64().unwrap();
    let options = || Options {
        store_toml: Some(store_toml.to_string()),
        master_key: Some(master.clone()),
        ..Options::default()
    };
    (
        start_gateway(options()).await,
        start_gateway(options()).await,
    )
}

/// `key` calls the instance `on`.
async fn status_with(on: &TestGateway, key: &str) -> StatusCode {
    let mut req = on.request(Method::GET, ADDRESS).body(empty()).unwrap();
    // `request` sets the instance's own key; the tool under test is `key`.
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    on.call(req).await.status
}

/// The id of the client holding `key`.
async fn client_id(gw: &TestGateway, key: &str) -> String {
    let hash = spgate::crypto::sha256_hex(key.as_bytes());
    gw.store
        .clients()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.key_hash == hash)
        .expect("the key's client")
        .id
}

/// Revokes `a`'s tool through `a`'s store handle and checks `b` refuses it at once.
async fn check_revocation_through_one_instance(store_toml: &str) {
    let (a, b) = two_instances(store_toml).await;
    // `b` serves `a`'s tool, twice: the second answer comes from b's cache.
    assert_eq!(status_with(&b, &a.key).await, StatusCode::OK);
    assert_eq!(status_with(&b, &a.key).await, StatusCode::OK);
    let id = client_id(&a, &a.key).await;
    assert!(a.store.revoke_client(&id, 1_800_000_000).await.unwrap());
    assert_eq!(status_with(&b, &a.key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with(&a, &a.key).await, StatusCode::UNAUTHORIZED);
    // `b`'s own tool is untouched.
    assert_eq!(status_with(&b, &b.key).await, StatusCode::OK);
}

#[tokio::test]
async fn a_revocation_through_one_instance_is_refused_at_the_next_request_on_the_other_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\ntype = \"embedded\"\ndata_dir = {:?}\n",
        dir.path().join("data").display().to_string()
    );
    check_revocation_through_one_instance(&store).await;
}

#[tokio::test]
async fn a_revocation_through_one_instance_is_refused_at_the_next_request_on_the_other_redis() {
    let store = redis_store_toml();
    check_revocation_through_one_instance(&store).await;
    clean_redis(&store).await;
}

#[tokio::test]
async fn a_revocation_by_the_cli_is_refused_at_the_next_request_on_both_instances() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let store = format!("[store]\ntype = \"embedded\"\ndata_dir = {data:?}\n");
    let (a, b) = two_instances(&store).await;
    assert_eq!(status_with(&a, &a.key).await, StatusCode::OK);
    assert_eq!(status_with(&b, &a.key).await, StatusCode::OK);
    assert_eq!(status_with(&b, &a.key).await, StatusCode::OK);

    let config = dir.path().join("spgate.toml");
    let text = include_str!("../config/spgate.example.toml")
        .replace("data_dir = \"data\"", &format!("data_dir = {data:?}"))
        .replace(
            "dir = \"data/audit\"",
            &format!("dir = {:?}", dir.path().join("audit").display().to_string()),
        );
    std::fs::write(&config, text).unwrap();
    let id = client_id(&a, &a.key).await;
    let out = Command::new(BIN)
        .args(["clients", "--config"])
        .arg(&config)
        .args(["revoke", &id])
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", a.master_key_b64.expose())
        .env("SPGATE_AUDIT_KEY", AUDIT_KEY)
        .output()
        .expect("spgate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status_with(&b, &a.key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with(&a, &a.key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with(&b, &b.key).await, StatusCode::OK);
}
