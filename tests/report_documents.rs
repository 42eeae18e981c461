//! The report documents of `fixtures/documents/` (the files `src/documents/tests.rs` redacts,
//! served by the sandbox) download through the gateway's signed link in every format, plain and
//! gzip: whole, byte for byte, for a role that passes every category; without one buyer value
//! for a minimising role, every other value kept.

mod common;

use common::*;
use http::StatusCode;
use spgate::sandbox::FIXTURE_DOCUMENTS;

/// A minimising role: names masked, e-mails pseudonymized, every other category dropped. (A
/// role that receives nothing of a restricted operation's data may not call it at all.)
fn minimal_role(name: &str) -> String {
    let cats = spgate::pii::Category::ALL
        .iter()
        .map(|c| {
            let action = match c {
                spgate::pii::Category::Name => "mask",
                spgate::pii::Category::Email => "pseudonymize",
                _ => "drop",
            };
            format!("{c} = \"{action}\"")
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("[roles.{name}.pii]\n{cats}\n")
}

/// Every buyer value planted in the fixtures (names, e-mails, phones, addresses, cities, postal
/// codes, address types), in the spellings they take there.
const BUYER_VALUES: [&str; 16] = [
    "Jane",
    "John",
    "example.invalid",
    "555 01",
    "2065550100",
    "Example Street",
    "Sample Road",
    "Apt 4",
    "Example St",
    "Sample Rd",
    "Sample John",
    "98101",
    "98402",
    "Seattle",
    "Tacoma",
    "Residential",
];

/// What each fixture keeps for the minimising role: order ids and products.
fn kept(file: &str) -> &'static [&'static str] {
    match file {
        "orders.tsv" => &["111-0000001-0000001", "SKU-2", "Red \"Mug\", large"],
        "orders.csv" => &["\"111-1\"", "said \"\"hi\"\"\nsecond line"],
        "orders.json" | "orders.xml" => &["111-1", "Blue Mug", "not a person"],
        other => panic!("no expectation for {other}"),
    }
}

/// The document `id` through the gateway, as the tool with `key` downloads it.
async fn download(gw: &TestGateway, key: &str, id: &str) -> Vec<u8> {
    let get = |path: String| {
        gw.call(
            http::Request::get(format!("{}{path}", gw.url))
                .header("authorization", format!("Bearer {key}"))
                .header("x-spgate-seller", SELLER)
                .body(empty())
                .unwrap(),
        )
    };
    let reply = get(format!("/reports/2021-06-30/documents/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{id}: {:?}", reply.body);
    let doc = reply.json();
    let url = doc["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/v1/documents/", gw.url)),
        "{url}"
    );
    assert!(
        !url.contains("_sandbox"),
        "the upstream URL is sealed: {url}"
    );
    // The gateway hands documents out decompressed.
    assert!(doc.get("compressionAlgorithm").is_none(), "{doc}");
    let got = get(url[gw.url.len()..].to_string()).await;
    assert_eq!(got.status, StatusCode::OK, "{id}: {:?}", got.body);
    got.body.to_vec()
}

#[tokio::test]
async fn every_fixture_report_document_passes_whole_or_loses_every_buyer_value_by_role() {
    assert!(FIXTURE_DOCUMENTS.iter().any(|d| d.gzip));
    let gw = start_gateway(Options {
        roles_toml: format!("{}\n{}", all_pass_role("orders"), minimal_role("minimal")),
        ..Options::default()
    })
    .await;
    let minimal = spgate::auth::caller::create_client(
        &*gw.store,
        "minimal-tool",
        "minimal",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    for doc in &FIXTURE_DOCUMENTS {
        // The fixture does hold what the minimising role must not see.
        let fixture = String::from_utf8_lossy(doc.bytes).into_owned();
        assert!(
            BUYER_VALUES.iter().filter(|v| fixture.contains(*v)).count() >= 4,
            "{}",
            doc.file
        );

        let whole = download(&gw, &gw.key, doc.id).await;
        assert_eq!(
            String::from_utf8_lossy(&whole),
            fixture,
            "{}: a role passing every category gets the document as it is",
            doc.id
        );

        let minimised = download(&gw, minimal.key.expose(), doc.id).await;
        let minimised = String::from_utf8_lossy(&minimised).into_owned();
        for value in BUYER_VALUES {
            assert!(
                !minimised.contains(value),
                "{}: {value} in\n{minimised}",
                doc.id
            );
        }
        for value in kept(doc.file) {
            assert!(
                minimised.contains(value),
                "{}: {value} lost in\n{minimised}",
                doc.id
            );
        }
    }
}
