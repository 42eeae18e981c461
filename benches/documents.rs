//! Report-document redaction throughput on a ~10 MB synthetic orders flat file (Amazon's order
//! report columns, synthetic PII): redacted plain, redacted from gzip, and passed through (no
//! PII header); plus ~10 MB of Orders-shaped JSON Lines and an XML order report. Target: >= 200 MB/s per core. The 1 GiB run with peak RSS is
//! `examples/redact_rss.rs`.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/tgt-docs cargo bench --bench documents
//! ```

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spgate::documents::{Decision, Limits, Redaction, Redactor};
use spgate::pii::{Action, Category};

const HEADER: &str = "order-id\torder-item-id\tpurchase-date\tbuyer-email\tbuyer-name\tbuyer-phone-number\tsku\tproduct-name\tquantity-purchased\tcurrency\titem-price\tship-service-level\trecipient-name\tship-address-1\tship-address-2\tship-city\tship-state\tship-postal-code\tship-country\n";

/// A ~`bytes` orders flat file with synthetic PII.
fn orders(bytes: usize, header: &str) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    let mut i = 0u64;
    while out.len() < bytes {
        writeln!(
            out,
            "111-{a:07}-{b:07}\t{i:014}\t2026-01-02T03:04:05+00:00\tbuyer{i}@example.invalid\tJane Example {i}\t+1 206 555 {p:04}\tSKU-{s}\tSynthetic Product {s} Blue Ceramic Mug 350 ml\t1\tUSD\t{s}.99\tStandard\tJane Example {i}\t{n} Example Street\tApt {a2}\tSeattle\tWA\t981{z:02}\tUS",
            a = i % 10_000_000,
            b = (i * 7919) % 10_000_000,
            p = i % 10_000,
            s = i % 1000,
            n = i % 9999 + 1,
            a2 = i % 100,
            z = i % 100,
        )
        .expect("in memory");
        i += 1;
    }
    out
}

/// ~`bytes` of Orders-API-shaped JSON Lines with synthetic PII.
fn json_orders(bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < bytes {
        writeln!(
            out,
            r#"{{"AmazonOrderId": "111-{i:07}-0000001", "PurchaseDate": "2026-01-02T03:04:05Z", "OrderStatus": "Unshipped", "BuyerInfo": {{"BuyerEmail": "buyer{i}@example.invalid", "BuyerName": "Jane Example {i}"}}, "ShippingAddress": {{"Name": "Jane Example {i}", "AddressLine1": "{i} Example Street", "City": "Seattle", "StateOrRegion": "WA", "PostalCode": "98101", "CountryCode": "US", "Phone": "+1 206 555 0100"}}, "OrderTotal": {{"CurrencyCode": "USD", "Amount": "12.99"}}, "Items": [{{"SKU": "SKU-{i}", "Title": "Synthetic Product Blue Ceramic Mug", "Quantity": 1}}]}}"#
        )
        .expect("in memory");
        i += 1;
    }
    out
}

/// ~`bytes` of an XML order report with synthetic PII.
fn xml_orders(bytes: usize) -> Vec<u8> {
    let mut out = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AmazonEnvelope>\n".to_vec();
    let mut i = 0u64;
    while out.len() < bytes {
        writeln!(
            out,
            "<Message><OrderReport><AmazonOrderID>111-{i:07}-0000001</AmazonOrderID><BillingData><BuyerEmailAddress>buyer{i}@example.invalid</BuyerEmailAddress><BuyerName>Jane Example {i}</BuyerName><BuyerPhoneNumber>+1 206 555 0100</BuyerPhoneNumber></BillingData><FulfillmentData><FulfillmentMethod>Ship</FulfillmentMethod><Address><Name>Jane Example {i}</Name><AddressFieldOne>{i} Example Street</AddressFieldOne><City>Seattle</City><StateOrRegion>WA</StateOrRegion><PostalCode>98101</PostalCode><CountryCode>US</CountryCode></Address></FulfillmentData><Item><SKU>SKU-{i}</SKU><Title>Synthetic Product Blue Ceramic Mug</Title><Quantity>1</Quantity></Item></OrderReport></Message>"
        )
        .expect("in memory");
        i += 1;
    }
    out.extend_from_slice(b"</AmazonEnvelope>\n");
    out
}

/// Names and postal codes masked, e-mail pseudonymized, coarse location passed, the rest
/// dropped.
struct SupportRole;

impl Redactor for SupportRole {
    fn redact(&self, category: Category, value: &str, _order_id: Option<&str>) -> Decision {
        match category {
            Category::Name => value
                .chars()
                .next()
                .map_or(Decision::Drop, |c| Decision::Replace(format!("{c}***"))),
            Category::Email => Decision::Replace(format!("{:016x}@pseudonym.invalid", value.len())),
            Category::PostalCode => {
                Decision::Replace(format!("{}***", value.get(..2).unwrap_or("")))
            }
            _ => Decision::Unchanged,
        }
    }

    fn action(&self, category: Category) -> Action {
        match category {
            Category::Name | Category::PostalCode => Action::Mask,
            Category::Email => Action::Pseudonymize,
            Category::CoarseLocation => Action::Pass,
            _ => Action::Drop,
        }
    }
}

fn redact_all(doc: &[u8]) -> usize {
    let mut core = Redaction::new(false, Arc::new(SupportRole), Limits::default());
    let mut out = Vec::with_capacity(80 << 10);
    let mut total = 0;
    for chunk in doc.chunks(64 << 10) {
        core.push(chunk, &mut out).expect("redacts");
        total += out.len();
        out.clear();
    }
    core.finish(&mut out).expect("finishes");
    total + out.len()
}

fn bench(c: &mut Criterion) {
    let doc = orders(10 << 20, HEADER);
    let columns = HEADER.split('\t').count();
    let plain_header = (0..columns)
        .map(|i| format!("column-{i}"))
        .collect::<Vec<_>>()
        .join("\t")
        + "\n";
    let no_pii = orders(10 << 20, &plain_header);
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&doc).expect("in memory");
        enc.finish().expect("in memory")
    };

    let mut group = c.benchmark_group("documents");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(doc.len() as u64));
    group.bench_function("tsv_redact_10MB", |b| {
        b.iter(|| redact_all(black_box(&doc)))
    });
    group.bench_function("tsv_gzip_redact_10MB", |b| {
        b.iter(|| redact_all(black_box(&gz)))
    });
    group.throughput(Throughput::Bytes(no_pii.len() as u64));
    group.bench_function("tsv_no_pii_passthrough_10MB", |b| {
        b.iter(|| redact_all(black_box(&no_pii)))
    });
    let json = json_orders(10 << 20);
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("json_redact_10MB", |b| {
        b.iter(|| redact_all(black_box(&json)))
    });
    let xml = xml_orders(10 << 20);
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function("xml_redact_10MB", |b| {
        b.iter(|| redact_all(black_box(&xml)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
