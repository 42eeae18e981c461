//! What the gateway does not know, it refuses (issue 11 item 2): with classification lists that
//! miss an operation (a catalog/data mismatch), a call to it answers 403 in SP-API shape before
//! anything is sent upstream, is audited with reason `operation_unclassified` and counted on
//! `/metrics`; classified operations still pass.

mod common;

use std::path::Path;

use common::*;
use http::StatusCode;
use spgate::pii::{Classifier, FieldMap};

const UNCLASSIFIED: &str = "sellers.getMarketplaceParticipations";
const CLASSIFIED: &str = "sellers.getAccount";

/// The built-in lists without `UNCLASSIFIED`'s line in `data/pii-none.tsv`.
fn partial_classifier() -> &'static Classifier {
    let none = include_str!("../data/pii-none.tsv");
    let prefix = format!("{UNCLASSIFIED}\t");
    assert!(
        none.lines().any(|l| l.starts_with(&prefix)),
        "{UNCLASSIFIED} is declared"
    );
    let kept: String = none
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    let classifier =
        Classifier::new(FieldMap::builtin(), Box::leak(kept.into_boxed_str())).unwrap();
    Box::leak(Box::new(classifier))
}

/// The audit reasons of the requests for `operation`.
async fn reasons(gw: &TestGateway, dir: &Path, operation: &str) -> Vec<String> {
    audit_records(gw, dir)
        .await
        .into_iter()
        .filter(|r| r["kind"] == "request" && r["operation"] == operation)
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn an_unclassified_operation_is_refused_before_it_is_sent() {
    let audit = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        classifier: Some(partial_classifier()),
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"test\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            audit.path().display().to_string(),
        ),
        ..Options::default()
    })
    .await;

    let refused = gw.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    let body = refused.json();
    let errors = body["errors"].as_array().expect("SP-API error shape");
    assert_eq!(errors.len(), 1, "{body}");
    assert!(errors[0]["code"].is_string(), "{body}");
    assert!(errors[0]["message"].is_string(), "{body}");
    assert_eq!(
        gw.sandbox.received(UNCLASSIFIED).len(),
        0,
        "nothing was sent upstream"
    );
    assert_eq!(gw.gateway.pii_gate().refused(), 1);
    let mut metrics = String::new();
    gw.gateway.pii_gate().render_metrics(&mut metrics);
    assert!(
        metrics.contains("\nspgate_pii_unclassified_refused_total 1\n"),
        "{metrics}"
    );

    // A classified operation of the same API still passes.
    let passed = gw.get("/sellers/v1/account").await;
    assert_eq!(passed.status, StatusCode::OK, "{:?}", passed.body);
    assert_eq!(gw.sandbox.received(CLASSIFIED).len(), 1);

    assert_eq!(
        reasons(&gw, audit.path(), UNCLASSIFIED).await,
        vec!["operation_unclassified".to_string()]
    );
    assert_eq!(gw.gateway.pii_gate().refused(), 1);
}
