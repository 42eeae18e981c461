//! Writes a large synthetic audit directory for timing `spgate audit query` and `report`:
//! `cargo run --release --example audit_gen -- DIR N [INSTANCES]` writes N request records
//! spread over INSTANCES chains (default 2) and 30 days, ten tools, key = 36 bytes of `k`
//! (`SPGATE_AUDIT_KEY=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr` verifies it).

use spgate::audit::chain::ChainWriter;
use spgate::audit::record::{Decision, Id, Limiter, PiiUse, TokenKind};
use spgate::audit::Record;
use spgate::pii::{Action, Category};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: audit_gen DIR N [INSTANCES]")?);
    let n: u64 = args
        .get(2)
        .ok_or("usage: audit_gen DIR N [INSTANCES]")?
        .parse()?;
    let instances: u64 = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let key = [b'k'; 36];
    let mut writers = (0..instances)
        .map(|i| ChainWriter::open(&dir, &format!("gw{i}"), &key))
        .collect::<Result<Vec<_>, _>>()?;
    let start = time::macros::datetime!(2026-01-01 00:00 UTC);
    let span_ms = 30 * 86_400_000i64;
    let tools: Vec<String> = (0..10).map(|t| format!("tool-{t}")).collect();
    for i in 0..n {
        let at = start + time::Duration::milliseconds(span_ms * i as i64 / n as i64);
        let tool = &tools[(i % 10) as usize];
        let mut r = Record::request(&format!("3f9a1c2b7d4e-{i:010x}"))
            .with_tool(tool)
            .with_role("shipping")
            .with_seller(if i % 3 == 0 {
                "A1SELLERONE"
            } else {
                "A2SELLERTWO"
            })
            .with_status(match i % 50 {
                0 => 403,
                1 => 429,
                _ => 200,
            });
        r.operation = Some(Id::lossy("ordersV0.getOrderAddress"));
        r.latency_us = Some(800 + i % 400);
        r.limiter = Some(Limiter {
            decision: Decision::Admitted,
            wait_ms: 0,
        });
        r.token = Some(TokenKind::Rdt);
        r.pii = vec![PiiUse {
            category: Category::Address,
            action: Action::Pass,
        }];
        let w = &mut writers[(i % instances) as usize];
        w.append(at, &r)?;
        if i % 65_536 == 0 {
            w.flush()?;
        }
    }
    for w in &mut writers {
        w.flush()?;
    }
    Ok(())
}
