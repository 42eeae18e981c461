//! Redacts a synthetic orders flat file of >= 1 GiB, generated on the fly, through
//! `spgate::documents::redact`, and prints throughput and peak RSS (VmHWM).
//!
//! Run (release, one core for the redaction; nothing is written to disk):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/tgt-docs cargo run --release --example redact_rss -- plain 1024
//! CARGO_TARGET_DIR=/work/tgt-docs cargo run --release --example redact_rss -- gzip 1024
//! ```
//!
//! The first argument is `plain` or `gzip`, the second the document size in MiB (default 1024).
//! The document is a 4 MiB block of distinct rows (Amazon's order report columns, synthetic PII)
//! repeated; the gzip variant is the same block compressed once and repeated as gzip members
//! (a multi-member gzip file), so generating it costs nothing while it is measured. The input
//! arrives in 64 KiB chunks, like a network body.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use spgate::documents::{redact, Decision, Limits, Redactor};
use spgate::pii::{Action, Category};

const HEADER: &str = "order-id\torder-item-id\tpurchase-date\tpayments-date\tbuyer-email\tbuyer-name\tbuyer-phone-number\tsku\tproduct-name\tquantity-purchased\tcurrency\titem-price\titem-tax\tshipping-price\tshipping-tax\tship-service-level\trecipient-name\tship-address-1\tship-address-2\tship-address-3\tship-city\tship-state\tship-postal-code\tship-country\tship-phone-number\tdelivery-Instructions\tis-business-order\tpurchase-order-number\tprice-designation\n";

/// Rows `from..` until the block holds `bytes` bytes.
fn rows(from: u64, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 1024);
    let mut i = from;
    while out.len() < bytes {
        writeln!(
            out,
            "111-{a:07}-{b:07}\t{i:014}\t2026-01-02T03:04:05+00:00\t2026-01-02T03:04:05+00:00\tbuyer{i}@example.invalid\tJane Example {i}\t+1 206 555 {p:04}\tSKU-{s}\tSynthetic Product {s} Blue Ceramic Mug 350 ml\t1\tUSD\t{s}.99\t1.20\t4.99\t0.00\tStandard\tJane Example {i}\t{n} Example Street\tApt {a2}\t\tSeattle\tWA\t981{z:02}\tUS\t+1 206 555 {p:04}\tLeave at the front door\tfalse\t\t",
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

/// A support role: names masked, e-mail pseudonymized, postal code masked, coarse location
/// passed, addresses, phones and delivery instructions dropped.
struct SupportRole;

impl Redactor for SupportRole {
    fn redact(&self, category: Category, value: &str, _order_id: Option<&str>) -> Decision {
        match category {
            Category::Name => value
                .chars()
                .next()
                .map_or(Decision::Drop, |c| Decision::Replace(format!("{c}***"))),
            Category::Email => Decision::Replace(format!("{:016x}@pseudonym.invalid", fnv(value))),
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

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// A line of /proc/self/status in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; index 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gzip = args.get(1).map(String::as_str) == Some("gzip");
    let mib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024);

    const BLOCK: usize = 4 << 20;
    let first = [HEADER.as_bytes(), &rows(0, BLOCK - HEADER.len())].concat();
    let block = rows(1_000_000, BLOCK);
    let compress = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("in memory");
        Bytes::from(enc.finish().expect("in memory"))
    };
    let (first, block) = if gzip {
        (compress(&first), compress(&block))
    } else {
        (Bytes::from(first), Bytes::from(block))
    };
    let blocks = mib.div_ceil(4);
    let plain_bytes = (blocks * BLOCK) as f64;
    let input_bytes = first.len() + (blocks - 1) * block.len();

    // 64 KiB chunks of the first block, then of the repeated block.
    let chunks = |b: Bytes| {
        (0..b.len().div_ceil(64 << 10)).map(move |i| {
            let end = ((i + 1) * (64 << 10)).min(b.len());
            Ok::<Bytes, std::convert::Infallible>(b.slice(i * (64 << 10)..end))
        })
    };
    let input = futures_util::stream::iter(
        chunks(first).chain((1..blocks).flat_map(move |_| chunks(block.clone()))),
    );

    let rss_before = status_kb("VmHWM:");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let (out_bytes, leaked) = rt.block_on(async {
        let mut out = 0usize;
        let mut leaked = 0usize;
        let finder = memchr::memmem::Finder::new("Example Street");
        let mut stream = std::pin::pin!(redact(
            input,
            gzip,
            Arc::new(SupportRole),
            Limits::default()
        ));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("redacts");
            out += chunk.len();
            leaked += finder.find_iter(&chunk).count();
        }
        (out, leaked)
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    println!(
        "{}: {:.0} MiB document ({:.0} MiB input), {:.0} MiB out in {:.2} s wall, {:.2} s CPU",
        if gzip { "gzip" } else { "plain" },
        plain_bytes / 1048576.0,
        input_bytes as f64 / 1048576.0,
        out_bytes as f64 / 1048576.0,
        secs,
        cpu
    );
    println!(
        "throughput: {:.0} MB/s of document per wall second, {:.0} MB/s per CPU second",
        plain_bytes / 1e6 / secs,
        plain_bytes / 1e6 / cpu.max(0.01)
    );
    println!(
        "peak RSS (VmHWM): {} MiB before redacting (generator blocks), {} MiB at the end",
        rss_before / 1024,
        status_kb("VmHWM:") / 1024
    );
    assert_eq!(leaked, 0, "an address leaked");
}
