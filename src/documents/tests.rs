//! Tests of report-document redaction and document links. Fixtures hold synthetic PII only.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;

use super::*;
use crate::crypto::MasterKey;
use crate::pii::{Action, Category};

/// A role for tests: an action per category (drop otherwise). Mask shows the value's length,
/// pseudonymize and encrypt show the order id they were given. Records every call.
struct TestRedactor {
    actions: BTreeMap<Category, Action>,
    calls: Mutex<Vec<(Category, String, Option<String>)>>,
}

impl TestRedactor {
    fn new(actions: &[(Category, Action)]) -> Arc<TestRedactor> {
        Arc::new(TestRedactor {
            actions: actions.iter().copied().collect(),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<(Category, String, Option<String>)> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

impl Redactor for TestRedactor {
    fn redact(&self, category: Category, value: &str, order_id: Option<&str>) -> Decision {
        self.calls.lock().expect("not poisoned").push((
            category,
            value.to_string(),
            order_id.map(str::to_string),
        ));
        match self.action(category) {
            Action::Pass => Decision::Unchanged,
            Action::Drop => Decision::Drop,
            Action::Mask => Decision::Replace(format!("m{}", value.chars().count())),
            Action::Pseudonymize => Decision::Replace(format!("p-{category}")),
            Action::Encrypt => Decision::Replace(format!("e-{}", order_id.unwrap_or("none"))),
        }
    }

    fn action(&self, category: Category) -> Action {
        self.actions.get(&category).copied().unwrap_or(Action::Drop)
    }
}

/// Name masked, phone pseudonymized, address encrypted, postal code and coarse location passed,
/// everything else dropped.
fn mixed_role() -> Arc<TestRedactor> {
    TestRedactor::new(&[
        (Category::Name, Action::Mask),
        (Category::Phone, Action::Pseudonymize),
        (Category::Address, Action::Encrypt),
        (Category::PostalCode, Action::Pass),
        (Category::CoarseLocation, Action::Pass),
    ])
}

fn pass_all() -> Arc<TestRedactor> {
    TestRedactor::new(&Category::ALL.map(|c| (c, Action::Pass)))
}

fn small_limits() -> Limits {
    Limits {
        max_record_bytes: 4096,
        max_depth: 32,
        chunk_bytes: 64 * 1024,
    }
}

/// Runs the synchronous core over `chunks`.
fn run_chunks(
    chunks: &[&[u8]],
    redactor: Arc<dyn Redactor>,
    limits: Limits,
) -> Result<Vec<u8>, DocumentError> {
    let mut core = Redaction::new(false, redactor, limits);
    let mut out = Vec::new();
    for c in chunks {
        core.push(c, &mut out)?;
    }
    core.finish(&mut out)?;
    Ok(out)
}

fn run(doc: &[u8], redactor: Arc<dyn Redactor>) -> Result<Vec<u8>, DocumentError> {
    run_chunks(&[doc], redactor, small_limits())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn gzip(doc: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(doc).expect("in memory");
    enc.finish().expect("in memory")
}

/// An order report (Amazon's column names) with planted synthetic PII, shared with the sandbox
/// (`fixtures/documents/`, as are the CSV, JSON and XML documents below).
const TSV: &[u8] = include_bytes!("../../fixtures/documents/orders.tsv");

/// What [`mixed_role`] makes of [`TSV`].
const TSV_REDACTED: &str = include_str!("../../fixtures/documents/redacted/orders.tsv");

#[test]
fn tsv_pii_columns_follow_the_role_and_other_columns_stay_byte_identical() {
    let role = mixed_role();
    let out = run(TSV, role.clone()).expect("redacts");
    assert_eq!(text(&out), TSV_REDACTED);
    // Dropped and passed categories never reach the redactor; empty values neither.
    let calls = role.calls();
    assert!(calls
        .iter()
        .all(|(c, _, _)| matches!(c, Category::Name | Category::Phone | Category::Address)));
    assert!(calls.iter().all(|(_, v, _)| !v.is_empty()));
    assert!(calls.contains(&(
        Category::Address,
        "123 Example Street".to_string(),
        Some("111-0000001-0000001".to_string())
    )));
}

#[test]
fn a_document_without_pii_headers_passes_byte_identical() {
    let mut doc = b"sku\tasin\tproduct-name\tprice\n".to_vec();
    for i in 0..200 {
        // Windows-1252 bytes and stray quotes are copied as they are.
        doc.extend_from_slice(format!("SKU-{i}\tB000{i}\tCaf\u{e9} \"x\"\t").as_bytes());
        doc.extend_from_slice(b"9\xe9.99\t\t\n");
    }
    let role = mixed_role();
    assert_eq!(run(&doc, role.clone()).expect("passes"), doc);
    assert!(role.calls().is_empty());
}

#[test]
fn a_role_that_passes_every_pii_column_gets_the_bytes_unchanged() {
    let role = pass_all();
    assert_eq!(run(TSV, role.clone()).expect("passes"), TSV);
    assert!(role.calls().is_empty());
}

/// A redactor that asks to see every value and hands each back as it is, as the audit log's
/// noting redactor does for a role that passes everything.
struct Unchanged;

impl Redactor for Unchanged {
    fn redact(&self, _: Category, _: &str, _: Option<&str>) -> Decision {
        Decision::Unchanged
    }
    fn action(&self, _: Category) -> Action {
        Action::Mask
    }
}

#[test]
fn a_value_handed_back_unchanged_keeps_its_original_bytes_in_every_format() {
    // A JSON number stays a number and escapes stay escapes, CDATA and entities stay, CSV
    // quoting stays, Windows-1252 bytes are not re-encoded.
    let latin1 = b"order-id\tbuyer-name\n1\tJos\xe9 Ex\x80mple\n";
    for doc in [
        TSV,
        CSV,
        JSON_DOC.as_bytes(),
        XML_DOC.as_bytes(),
        &latin1[..],
    ] {
        assert_eq!(
            text(&run(doc, Arc::new(Unchanged)).expect("redacts")),
            text(doc)
        );
    }
}

#[test]
fn windows_1252_values_reach_the_redactor_decoded() {
    let doc = b"order-id\tbuyer-name\n1\tJos\xe9 Ex\x80mple\n";
    let role = mixed_role();
    let out = run(doc, role.clone()).expect("redacts");
    assert_eq!(out, b"order-id\tbuyer-name\n1\tm12\n");
    assert_eq!(role.calls()[0].1, "Jos\u{e9} Ex\u{20ac}mple");
}

#[test]
fn redacted_tsv_values_cannot_break_the_row() {
    struct Evil;
    impl Redactor for Evil {
        fn redact(&self, _: Category, _: &str, _: Option<&str>) -> Decision {
            Decision::Replace("a\tb\nc\rd".to_string())
        }
        fn action(&self, _: Category) -> Action {
            Action::Mask
        }
    }
    let out = run(b"buyer-name\tsku\nJane Example\tS1\n", Arc::new(Evil)).expect("redacts");
    assert_eq!(out, b"buyer-name\tsku\na b c d\tS1\n");
}

/// A CSV report with a byte-order mark, quoted fields, an escaped quote and a line break
/// inside a field.
const CSV: &[u8] = include_bytes!("../../fixtures/documents/orders.csv");

/// What [`mixed_role`] makes of [`CSV`].
const CSV_REDACTED: &str = include_str!("../../fixtures/documents/redacted/orders.csv");

#[test]
fn csv_with_quotes_is_redacted_field_by_field() {
    let out = run(CSV, mixed_role()).expect("redacts");
    assert_eq!(text(&out), CSV_REDACTED);
}

#[test]
fn csv_values_with_delimiters_are_quoted_on_output() {
    struct Comma;
    impl Redactor for Comma {
        fn redact(&self, _: Category, _: &str, _: Option<&str>) -> Decision {
            Decision::Replace("x, \"y\"".to_string())
        }
        fn action(&self, _: Category) -> Action {
            Action::Mask
        }
    }
    let out = run(b"buyer-name,sku\nJane Example,S1\n", Arc::new(Comma)).expect("redacts");
    assert_eq!(text(&out), "buyer-name,sku\n\"x, \"\"y\"\"\",S1\n");
}

#[test]
fn a_header_after_title_and_blank_lines_still_decides() {
    let doc = b"\"Includes Amazon Marketplace, Fulfillment by Amazon (FBA), and Amazon Webstore transactions\"\r\n\r\n\"date/time\",\"order id\",\"order city\",\"order postal\",\"buyer name\"\r\n\"Jan 1, 2026\",\"111-1\",\"Seattle\",\"98101\",\"Jane Example\"\r\n";
    let role = TestRedactor::new(&[(Category::Name, Action::Mask)]);
    let out = run(doc, role).expect("redacts");
    let want = "\"Includes Amazon Marketplace, Fulfillment by Amazon (FBA), and Amazon Webstore transactions\"\r\n\r\n\"date/time\",\"order id\",\"order city\",\"order postal\",\"buyer name\"\r\n\"Jan 1, 2026\",\"111-1\",\"\",\"\",\"m12\"\r\n";
    assert_eq!(text(&out), want);
    // A one-column file whose header names PII is redacted too.
    let out = run(b"buyer-email\njane@example.invalid\n", mixed_role()).expect("redacts");
    assert_eq!(out, b"buyer-email\n\n");
}

#[test]
fn values_nested_under_a_pii_name_inherit_its_category() {
    let json = br#"{"BuyerName": {"first": "Jane", "last": "Example"}, "note": "kept"}"#;
    assert_eq!(
        text(&run(json, mixed_role()).expect("redacts")),
        r#"{"BuyerName": {"first": "m4", "last": "m7"}, "note": "kept"}"#
    );
    let xml = b"<r><BuyerName><First>Jane</First></BuyerName><Note>kept</Note></r>";
    assert_eq!(
        text(&run(xml, mixed_role()).expect("redacts")),
        "<r><BuyerName><First>m4</First></BuyerName><Note>kept</Note></r>"
    );
}

#[test]
fn a_row_with_more_fields_than_the_header_fails() {
    let doc = b"order-id\tbuyer-name\n1\tJane Example\textra\n";
    let err = run(doc, mixed_role()).expect_err("ragged");
    assert!(matches!(
        err,
        DocumentError::RaggedRow {
            line: 2,
            fields: 3,
            columns: 2
        }
    ));
}

#[tokio::test]
async fn an_overlong_row_fails_the_stream_without_emitting_it() {
    // Enough good rows to get past the format sniffer's first kilobyte.
    let mut doc = b"order-id\tbuyer-name\tsku\n".to_vec();
    let mut want = doc.clone();
    for i in 0..80 {
        doc.extend_from_slice(format!("{i}\tJane Example\tS1\n").as_bytes());
        want.extend_from_slice(format!("{i}\tm12\tS1\n").as_bytes());
    }
    doc.extend_from_slice(b"2\t");
    doc.extend(std::iter::repeat_n(b'Z', 300));
    doc.extend_from_slice(b"\tS2\n3\tJohn Sample\tS3\n");
    let limits = Limits {
        max_record_bytes: 100,
        max_depth: 8,
        chunk_bytes: 16,
    };
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = doc
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let items: Vec<_> = redact(
        futures_util::stream::iter(chunks),
        false,
        mixed_role(),
        limits,
    )
    .collect()
    .await;
    let last = items.last().expect("items");
    assert!(matches!(
        last,
        Err(DocumentError::RecordTooLong { limit: 100, .. })
    ));
    let emitted: Vec<u8> = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect();
    // Whole redacted rows only, up to the overlong one at most.
    assert!(
        !emitted.is_empty() && want.starts_with(&emitted),
        "{}",
        text(&emitted)
    );
    assert!(emitted.ends_with(b"\n"));
    assert!(!emitted.contains(&b'Z'));
}

#[test]
fn gzip_input_is_detected_by_its_magic_bytes_and_decompressed() {
    let gz = gzip(TSV);
    // The flag is only a hint: both give the same result.
    for hint in [true, false] {
        let mut core = Redaction::new(hint, mixed_role(), small_limits());
        let mut out = Vec::new();
        core.push(&gz, &mut out).expect("push");
        core.finish(&mut out).expect("finish");
        assert_eq!(text(&out), TSV_REDACTED);
    }
    // Concatenated members are one document.
    let (a, b) = TSV.split_at(200);
    let mut two = gzip(a);
    two.extend_from_slice(&gzip(b));
    assert_eq!(
        text(&run(&two, mixed_role()).expect("redacts")),
        TSV_REDACTED
    );
}

#[test]
fn corrupt_or_truncated_gzip_fails() {
    let gz = gzip(TSV);
    let truncated = &gz[..gz.len() - 5];
    assert!(matches!(
        run(truncated, mixed_role()),
        Err(DocumentError::Gzip)
    ));
    let mut flipped = gz.clone();
    let at = flipped.len() - 6; // inside the CRC
    flipped[at] ^= 0xff;
    assert!(matches!(
        run(&flipped, mixed_role()),
        Err(DocumentError::Gzip)
    ));
}

/// Orders as JSON lines (two top-level values), with escapes and a number where a phone is.
const JSON_DOC: &str = include_str!("../../fixtures/documents/orders.json");

/// What [`mixed_role`] makes of [`JSON_DOC`].
const JSON_REDACTED: &str = include_str!("../../fixtures/documents/redacted/orders.json");

/// (`AddressType` names no PII itself but sits in `ShippingAddress`, so it is redacted as an
/// address: fail closed.)
#[test]
fn json_pii_fields_follow_the_role_and_everything_else_stays() {
    let role = mixed_role();
    let out = run(JSON_DOC.as_bytes(), role.clone()).expect("redacts");
    assert_eq!(text(&out), JSON_REDACTED);
    // The escaped value reached the redactor unescaped.
    assert!(role
        .calls()
        .iter()
        .any(|(_, v, _)| v == "Jane \"J\" Example"));
    assert!(role
        .calls()
        .iter()
        .any(|(_, v, _)| v == "9 Sample Road\u{e9}"));
}

#[test]
fn malformed_or_too_deep_json_fails() {
    for bad in [
        &b"{\"a\": }"[..],
        b"{\"buyerName\": \"Jane",
        b"[1, 2",
        b"{\"a\" 1}",
    ] {
        assert!(run(bad, mixed_role()).is_err(), "{}", text(bad));
    }
    let deep = "[".repeat(40) + &"]".repeat(40);
    assert!(matches!(
        run(deep.as_bytes(), mixed_role()),
        Err(DocumentError::TooDeep { .. })
    ));
}

/// An XML order report: PII in elements, in CDATA, behind an entity and in an attribute.
const XML_DOC: &str = include_str!("../../fixtures/documents/orders.xml");

/// What [`mixed_role`] makes of [`XML_DOC`].
const XML_REDACTED: &str = include_str!("../../fixtures/documents/redacted/orders.xml");

#[test]
fn xml_pii_elements_and_attributes_follow_the_role() {
    let role = mixed_role();
    let out = run(XML_DOC.as_bytes(), role.clone()).expect("redacts");
    assert_eq!(text(&out), XML_REDACTED);
    assert!(role.calls().iter().any(|(_, v, _)| v == "Jane & Example"));
}

#[test]
fn malformed_xml_and_internal_dtd_subsets_fail() {
    for bad in [
        "<a><BuyerName>Jane</a></BuyerName>",
        "<a><BuyerName>Jane",
        "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>",
        "<a><BuyerName>Jane &bogus; Example</BuyerName></a>",
        "<a><b x=unquoted/></a>",
    ] {
        assert!(run(bad.as_bytes(), mixed_role()).is_err(), "{bad}");
    }
}

#[test]
fn every_chunking_gives_the_same_output() {
    let docs: Vec<Vec<u8>> = vec![
        TSV.to_vec(),
        gzip(TSV),
        b"Order ID,Buyer Name,Notes\n\"1\",\"Example, Jane\",\"a\r\nb\"\n2,John,x\n".to_vec(),
        CSV.to_vec(),
        JSON_DOC.as_bytes().to_vec(),
        XML_DOC.as_bytes().to_vec(),
        b"sku\tprice\nS1\t1\n".to_vec(),
    ];
    for doc in &docs {
        let whole = run(doc, mixed_role()).expect("redacts");
        let bytes: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(
            run_chunks(&bytes, mixed_role(), small_limits()).expect("1-byte chunks"),
            whole
        );
        for at in 0..=doc.len() {
            let (a, b) = doc.split_at(at);
            assert_eq!(
                run_chunks(&[a, b], mixed_role(), small_limits()).expect("split"),
                whole,
                "split at {at}"
            );
        }
    }
}

#[tokio::test]
async fn the_stream_gives_the_same_output_for_one_byte_chunks() {
    let want = run(XML_DOC.as_bytes(), mixed_role()).expect("redacts");
    let gz = gzip(XML_DOC.as_bytes());
    let chunks: Vec<Result<Bytes, std::io::Error>> = gz
        .chunks(1)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let limits = Limits {
        chunk_bytes: 3,
        ..small_limits()
    };
    let mut got = Vec::new();
    let mut stream = std::pin::pin!(redact(
        futures_util::stream::iter(chunks),
        true,
        mixed_role(),
        limits
    ));
    while let Some(item) = stream.next().await {
        got.extend_from_slice(&item.expect("ok"));
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_upstream_error_ends_the_stream_with_an_error() {
    let chunks: Vec<Result<Bytes, &str>> = vec![
        Ok(Bytes::from_static(b"buyer-name\n")),
        Err("connection reset by https://bucket.example/secret"),
    ];
    let items: Vec<_> = redact(
        futures_util::stream::iter(chunks),
        false,
        mixed_role(),
        small_limits(),
    )
    .collect()
    .await;
    let err = items.last().expect("items").as_ref().expect_err("error");
    assert!(matches!(err, DocumentError::Upstream));
    assert!(!err.to_string().contains("bucket"));
}

#[test]
fn opaque_documents_pass_only_to_roles_that_receive_documents() {
    let pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\x00endobj\n";
    assert!(matches!(
        run(pdf, mixed_role()),
        Err(DocumentError::Unrecognized)
    ));
    let docs = TestRedactor::new(&[(Category::Document, Action::Pass)]);
    assert_eq!(run(pdf, docs).expect("passes"), pdf);
    // An empty document is empty.
    assert_eq!(run(b"", mixed_role()).expect("empty"), b"");
}

#[test]
fn errors_name_no_values() {
    let doc = b"buyer-name\tx\nJane Example\t1\tsurplus\n";
    let err = run(doc, mixed_role()).expect_err("ragged");
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains("Jane"), "{msg}");
}

fn key() -> MasterKey {
    MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("random")).expect("key")
}

fn claims(now: i64) -> link::LinkClaims {
    link::LinkClaims {
        url: "https://bucket.example/doc?X-Amz-Signature=abc".to_string(),
        compression: Some("GZIP".to_string()),
        seller_id: "A1SELLER".to_string(),
        tool: "crm".to_string(),
        client_id: "client-1".into(),
        role: "support".to_string(),
        document_id: "amzn1.spdoc.1".to_string(),
        opaque: false,
        expires_at: now + link::DEFAULT_TTL_SECONDS,
    }
}

#[test]
fn a_document_link_round_trips_and_hides_its_claims() {
    let key = key();
    let now = 1_800_000_000;
    let token = link::issue(&key, &claims(now), now).expect("issue");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
    assert!(!token.contains("bucket") && !token.contains("A1SELLER"));
    assert_eq!(
        link::open(&key, &token, now + 10).expect("open"),
        claims(now)
    );
    assert!(!format!("{:?}", claims(now)).contains("bucket"));
}

#[test]
fn expired_tampered_and_foreign_links_are_rejected() {
    let key = key();
    let now = 1_800_000_000;
    let token = link::issue(&key, &claims(now), now).expect("issue");
    assert!(matches!(
        link::open(&key, &token, now + link::DEFAULT_TTL_SECONDS),
        Err(DocumentError::LinkExpired)
    ));
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert!(matches!(
        link::open(&key, &tampered, now),
        Err(DocumentError::LinkInvalid)
    ));
    assert!(matches!(
        link::open(&self::key(), &token, now),
        Err(DocumentError::LinkInvalid)
    ));
    for junk in ["", "v1.k1", "../etc/passwd", "v1:k1:abc"] {
        assert!(link::open(&key, junk, now).is_err(), "{junk}");
    }
    // A value sealed for another purpose under the same key is no link.
    let other = key
        .seal(b"{}", b"refresh_token")
        .expect("seal")
        .replacen(':', ".", 2);
    assert!(matches!(
        link::open(&key, &other, now),
        Err(DocumentError::LinkInvalid)
    ));
}

#[test]
fn links_must_expire_soon() {
    let key = key();
    let now = 1_800_000_000;
    for expires_at in [now, now - 1, now + link::MAX_TTL_SECONDS + 1] {
        let c = link::LinkClaims {
            expires_at,
            ..claims(now)
        };
        assert!(matches!(
            link::issue(&key, &c, now),
            Err(DocumentError::BadExpiry { .. })
        ));
    }
}

#[test]
fn rewrite_replaces_the_url_and_drops_the_compression() {
    let body = br#"{"reportDocumentId":"amzn1.spdoc.1","url":"https://bucket.example/doc","compressionAlgorithm":"GZIP"}"#;
    let mut seen = None;
    let out = rewrite_report_document(body, "https://gw.example/v1/documents/", |url, c| {
        seen = Some((url.to_string(), c.map(str::to_string)));
        Ok("TOKEN".to_string())
    })
    .expect("rewrites");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"reportDocumentId": "amzn1.spdoc.1", "url": "https://gw.example/v1/documents/TOKEN"})
    );
    assert_eq!(
        seen,
        Some((
            "https://bucket.example/doc".to_string(),
            Some("GZIP".to_string())
        ))
    );
    for bad in [
        &b"not json"[..],
        br#"{"reportDocumentId":"x"}"#,
        br#"{"url": 5}"#,
        br#"["url"]"#,
    ] {
        assert!(matches!(
            rewrite_report_document(bad, "https://gw/", |_, _| Ok("T".into())),
            Err(DocumentError::NotAReportDocument)
        ));
    }
}

#[test]
fn mutated_and_randomly_chunked_documents_never_panic() {
    // xorshift64*: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let fixtures: Vec<Vec<u8>> = vec![
        TSV.to_vec(),
        gzip(TSV),
        JSON_DOC.as_bytes().to_vec(),
        XML_DOC.as_bytes().to_vec(),
        b"\"a\",\"buyer name\"\n\"1\",\"x\"\"y\"\n".to_vec(),
    ];
    let limits = Limits {
        max_record_bytes: 256,
        max_depth: 8,
        chunk_bytes: 64,
    };
    for fixture in &fixtures {
        for _ in 0..300 {
            let mut doc = fixture.clone();
            for _ in 0..(next() % 4) {
                let at = (next() % doc.len() as u64) as usize;
                doc[at] = next() as u8;
            }
            let keep = doc.len() - (next() % 8) as usize;
            doc.truncate(keep);
            let mut chunks = Vec::new();
            let mut rest = &doc[..];
            while !rest.is_empty() {
                let n = 1 + (next() % 40) as usize;
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            // Ok or Err, never a panic.
            let _ = run_chunks(&chunks, mixed_role(), limits);
        }
    }
}

#[test]
fn page_and_label_descriptions_and_unknown_text_are_opaque() {
    let docs: [&[u8]; 7] = [
        b"%PDF-1.7\n1 0 obj << /Title (Jane Example, 12 Synthetic Way) >>\n",
        b"\r\n  ~CT~~CD,~CC^~CT~\n^XA^FDJane Example, 12 Synthetic Way^FS^XZ\n",
        b"^FXcomment, with a comma\n^XA^FDJane Example^FS^XZ\n",
        b"N\r\nA50,0,0,1,1,1,N,\"Jane Example\"\r\nP1\r\n",
        b"^XA^FO50,50^FDJane Example^FS^FO50,100^FD12 Synthetic Way^FS^XZ\n",
        b"%!PS-Adobe-3.0\n(Jane Example) show\n",
        b"Dear Jane Example; your parcel to 12 Synthetic Way is on its way.\nThanks!\n",
    ];
    for doc in docs {
        // Not redactable field by field: refused for a role that does not pass documents...
        assert!(
            matches!(run(doc, mixed_role()), Err(DocumentError::Unrecognized)),
            "{}",
            String::from_utf8_lossy(doc)
        );
        // ...and passed whole to one that does.
        let role = TestRedactor::new(&[(Category::Document, Action::Pass)]);
        assert_eq!(run(doc, role).expect("passes"), doc);
    }
}

#[test]
fn a_bare_word_that_is_no_json_literal_fails_the_document() {
    // Under a PII key the role masks or drops, and under any other key: a bare value is
    // `true`, `false`, `null` or a number, nothing else, and nothing of it is emitted.
    let role = mixed_role();
    for doc in [
        r#"{"BuyerName": nJaneDoe}"#,
        r#"{"BuyerName": tJane-Doe}"#,
        r#"{"BuyerName": fJane}"#,
        r#"{"BuyerName": nulll}"#,
        r#"{"sku": nope}"#,
        r#"{"PostalCode": 98101abc}"#,
        r#"{"PostalCode": 01}"#,
        r#"{"PostalCode": 1.}"#,
        r#"{"PostalCode": -}"#,
        r#"{"PostalCode": 1e}"#,
        r#"{"PostalCode": +1}"#,
        r#"{"BuyerName": true"#,
        "[nJane",
    ] {
        let mut core = Redaction::new(false, role.clone(), small_limits());
        let mut out = Vec::new();
        let result = core
            .push(doc.as_bytes(), &mut out)
            .and_then(|()| core.finish(&mut out));
        assert!(
            matches!(result, Err(DocumentError::Malformed { .. })),
            "{doc}: {result:?}"
        );
        for word in ["Jane", "nope", "98101", "nulll"] {
            assert!(!text(&out).contains(word), "{doc}: {}", text(&out));
        }
    }
    assert!(role.calls().is_empty(), "{:?}", role.calls().len());
}

#[test]
fn json_literals_and_numbers_stay_as_they_are() {
    let doc = r#"{"BuyerName": null, "x": [true, false, null, 0, -1, 1.5, 2e10, -0.25E-3, 7E+2]}"#;
    let out = run(doc.as_bytes(), mixed_role()).expect("redacts");
    assert_eq!(text(&out), doc);
}

#[test]
fn xml_comments_and_instructions_inside_pii_are_dropped_and_split_text_is_one_value() {
    let role = TestRedactor::new(&[(Category::Name, Action::Mask)]);
    let doc = "<r><!-- kept --><BuyerName>J<!---->a<!-- Jane Doe -->n<?pi Jane?>e</BuyerName><?keep this?></r>";
    let out = run(doc.as_bytes(), role.clone()).expect("redacts");
    assert_eq!(
        text(&out),
        "<r><!-- kept --><BuyerName>m4</BuyerName><?keep this?></r>"
    );
    assert_eq!(role.calls().len(), 1);
    assert_eq!(role.calls()[0].1, "Jane");

    // Text and CDATA sections are one value; entities are resolved across the pieces.
    let role = TestRedactor::new(&[(Category::Name, Action::Mask)]);
    let doc = "<BuyerName>Ja<![CDATA[ne &]]><!-- x -->&amp; Jo<![CDATA[hn]]></BuyerName>";
    let out = run(doc.as_bytes(), role.clone()).expect("redacts");
    assert_eq!(text(&out), "<BuyerName>m12</BuyerName>");
    assert_eq!(role.calls()[0].1, "Jane && John");

    // Split in every chunk size, the value is still seen whole.
    let doc = b"<r><BuyerName>Ja<!-- c -->ne<![CDATA[ E]]>x</BuyerName></r>";
    for size in 1..doc.len() {
        let role = TestRedactor::new(&[(Category::Name, Action::Mask)]);
        let chunks: Vec<&[u8]> = doc.chunks(size).collect();
        let out = run_chunks(&chunks, role.clone(), small_limits()).expect("redacts");
        assert_eq!(text(&out), "<r><BuyerName>m7</BuyerName></r>", "{size}");
        assert_eq!(role.calls()[0].1, "Jane Ex", "{size}");
    }

    // A role passing the category keeps the markup, comments included; one dropping it
    // empties the element.
    let pass = TestRedactor::new(&[(Category::Name, Action::Pass)]);
    let doc = "<BuyerName>J<!-- c -->a<![CDATA[ne]]></BuyerName>";
    assert_eq!(text(&run(doc.as_bytes(), pass).expect("redacts")), doc);
    let drop = TestRedactor::new(&[]);
    assert_eq!(
        text(&run(doc.as_bytes(), drop).expect("redacts")),
        "<BuyerName></BuyerName>"
    );
}

#[test]
fn a_pii_element_with_a_child_is_redacted_up_to_the_child() {
    let role = TestRedactor::new(&[(Category::Name, Action::Mask)]);
    let doc = "<BuyerName>Ja<!-- c -->ne<First>Jo</First>Doe</BuyerName>";
    let out = run(doc.as_bytes(), role.clone()).expect("redacts");
    assert_eq!(text(&out), "<BuyerName>m4<First>m2</First>m3</BuyerName>");
}

/// The gateway's own role policy: the masks of a restricting role.
fn restricting_role(actions: &[(Category, Action)]) -> Arc<dyn Redactor> {
    let master = MasterKey::from_base64(
        "k1",
        &crate::secret::Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
    )
    .expect("key");
    crate::proxy::endpoints::documents::RolePolicy::new(
        crate::pii::Role::new(actions.iter().copied()),
        &master,
        "A1SELLER",
    )
}

fn masking_role() -> Arc<dyn Redactor> {
    restricting_role(&[
        (Category::Name, Action::Mask),
        (Category::CoarseLocation, Action::Mask),
        (Category::PostalCode, Action::Mask),
    ])
}

/// A Windows-1252 flat file: one row of raw values, one already masked (mask fixpoints).
const CP1252_TSV: &[u8] = include_bytes!("../../fixtures/documents/orders-cp1252.tsv");

#[test]
fn a_mask_that_returns_the_value_is_written_out_not_the_original_bytes() {
    // A masked value equal to what came in (`É***`, `Sé`, `80***`) is the redactor's output,
    // written as UTF-8: never the original Windows-1252 bytes.
    let out = run(CP1252_TSV, masking_role()).expect("redacts");
    assert_eq!(
        out,
        b"order-id\tbuyer-name\tship-city\tship-state\tship-postal-code\tsku\r\n\
          111-0000003-0000001\tJ*** E***\tM***\tBY\t80***\tSKU-\xe9\r\n\
          111-0000003-0000002\t\xc3\x89***\tS\xc3\xa9\tQ\xc3\xa9\t80***\tSKU-3\r\n"
            .to_vec()
    );

    // The same in the other formats: escapes, entities, CDATA and Windows-1252 bytes are not
    // kept for a replaced value, even one equal to the value they stand for.
    let cases: [(&str, &str); 2] = [
        (
            r#"{"AmazonOrderId": "111-1", "BuyerName": "\u00c9***", "ShippingAddress": {"City": "S\u00e9", "StateOrRegion": "W\u0041", "PostalCode": "98***"}}"#,
            r#"{"AmazonOrderId": "111-1", "BuyerName": "É***", "ShippingAddress": {"City": "Sé", "StateOrRegion": "WA", "PostalCode": "98***"}}"#,
        ),
        (
            "<OrderReport><BuyerName>&#201;***</BuyerName><Address><City><![CDATA[WA]]></City><PostalCode>98&#42;**</PostalCode></Address></OrderReport>",
            "<OrderReport><BuyerName>\u{c9}***</BuyerName><Address><City>WA</City><PostalCode>98***</PostalCode></Address></OrderReport>",
        ),
    ];
    for (doc, expected) in cases {
        let out = run(doc.as_bytes(), masking_role()).expect("redacts");
        assert_eq!(text(&out), expected);
    }
    let csv = b"buyer-name,ship-city,ship-postal-code\r\n\"\xc9***\",S\xe9,98***\r\n";
    let out = run(csv, masking_role()).expect("redacts");
    assert_eq!(
        out,
        b"buyer-name,ship-city,ship-postal-code\r\n\"\xc3\x89***\",S\xc3\xa9,98***\r\n".to_vec()
    );
}

/// Asks the inner redactor about every category it passes, as the audit log's noting
/// redactor (`proxy::accounting::Noting`) does.
struct AskAboutPassed(Arc<dyn Redactor>);

impl Redactor for AskAboutPassed {
    fn redact(&self, category: Category, value: &str, order_id: Option<&str>) -> Decision {
        self.0.redact(category, value, order_id)
    }
    fn action(&self, category: Category) -> Action {
        match self.0.action(category) {
            Action::Pass => Action::Mask,
            a => a,
        }
    }
}

#[test]
fn a_passing_role_asked_about_every_value_keeps_original_bytes() {
    // The role answers `Unchanged` for what it passes, so the Windows-1252 bytes, escapes,
    // CDATA and JSON numbers stay as they were.
    let pass = restricting_role(&Category::ALL.map(|c| (c, Action::Pass)));
    for doc in [
        CP1252_TSV,
        TSV,
        CSV,
        JSON_DOC.as_bytes(),
        XML_DOC.as_bytes(),
    ] {
        let out = run(doc, Arc::new(AskAboutPassed(pass.clone()))).expect("redacts");
        assert_eq!(out, doc.to_vec());
    }
}
