//! [`Record`] as the JSON object the chain writes, without serde: the writer thread encodes
//! every record, and serde's general path (escaping each key and value byte by byte, a
//! serializer call per field) was about a fifth of its CPU per record.
//!
//! The output is byte for byte what `serde_json::to_vec(&record)` gives (same fields, same
//! order, same number and string forms): the tests compare the two for records with every
//! field set and with none, and a record type with a field this encoder does not know fails
//! to compile in them. Keys are literals; text values are escaped only when they hold a byte
//! JSON must escape (an identifier's alphabet never does, so this is a check, not a copy).

use std::fmt::Write as _;

use super::line::push_u64;
use super::record::{action_str, Decision, Limiter, Outcome, Record, TokenKind};

/// Appends `record` as one JSON object.
pub(super) fn record(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(r.kind.as_str().as_bytes());
    out.push(b'"');
    text(out, "request_id", r.request_id.as_ref().map(|v| v.as_str()));
    text(out, "tool", r.tool.as_ref().map(|v| v.as_str()));
    text(out, "actor", r.actor.as_ref().map(|v| v.as_str()));
    text(out, "role", r.role.as_ref().map(|v| v.as_str()));
    text(out, "seller", r.seller.as_ref().map(|v| v.as_str()));
    text(out, "operation", r.operation.as_ref().map(|v| v.as_str()));
    text(out, "method", r.method.as_ref().map(|v| v.as_str()));
    text(out, "path", r.path.as_ref().map(|v| v.as_str()));
    text(
        out,
        "translated_to",
        r.translated_to.as_ref().map(|v| v.as_str()),
    );
    number(out, "unconverted", r.unconverted.map(u64::from));
    number(out, "status", r.status.map(u64::from));
    number(out, "latency_us", r.latency_us);
    if let Some(l) = &r.limiter {
        limiter(out, l);
    }
    text(out, "token", r.token.map(token_str));
    boolean(out, "gateway_rdt", r.gateway_rdt);
    if !r.pii.is_empty() {
        out.extend_from_slice(b",\"pii\":[");
        for (i, p) in r.pii.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"category\":");
            string(out, p.category.as_str());
            out.extend_from_slice(b",\"action\":");
            string(out, action_str(p.action));
            out.push(b'}');
        }
        out.push(b']');
    }
    number(out, "safety_net_hits", r.safety_net_hits.map(u64::from));
    text(
        out,
        "upstream_request_id",
        r.upstream_request_id.as_ref().map(|v| v.as_str()),
    );
    text(
        out,
        "shared_from",
        r.shared_from.as_ref().map(|v| v.as_str()),
    );
    text(out, "reason", r.reason.as_ref().map(|v| v.as_str()));
    text(out, "order_id", r.order_id.as_ref().map(|v| v.as_str()));
    text(out, "client_id", r.client_id.as_ref().map(|v| v.as_str()));
    number(out, "count", r.count);
    number(out, "window_secs", r.window_secs);
    text(out, "outcome", r.outcome.map(outcome_str));
    boolean(out, "upstream_called", r.upstream_called);
    text(
        out,
        "document_id",
        r.document_id.as_ref().map(|v| v.as_str()),
    );
    number(out, "bytes", r.bytes);
    boolean(out, "completed", r.completed);
    if let Some(ip) = &r.source {
        out.extend_from_slice(b",\"source\":\"");
        // An address's text never needs escaping.
        let mut s = String::with_capacity(40);
        let _ = write!(s, "{ip}");
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
    text(out, "gap_from", r.gap_from.as_ref().map(|v| v.as_str()));
    text(out, "gap_to", r.gap_to.as_ref().map(|v| v.as_str()));
    text(out, "host", r.host.as_ref().map(|v| v.as_str()));
    out.push(b'}');
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn text(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        key(out, name);
        string(out, v);
    }
}

fn number(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        key(out, name);
        push_u64(out, v);
    }
}

fn boolean(out: &mut Vec<u8>, name: &str, value: Option<bool>) {
    if let Some(v) = value {
        key(out, name);
        out.extend_from_slice(if v { b"true" } else { b"false" });
    }
}

fn limiter(out: &mut Vec<u8>, l: &Limiter) {
    out.extend_from_slice(b",\"limiter\":{\"decision\":");
    string(out, decision_str(l.decision));
    out.extend_from_slice(b",\"wait_ms\":");
    push_u64(out, l.wait_ms);
    out.push(b'}');
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Branch-free over every byte (no early exit), so the check runs on whole vectors.
    let plain = !s.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(s.as_bytes());
    } else {
        escape(out, s);
    }
    out.push(b'"');
}

fn escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
}

fn token_str(t: TokenKind) -> &'static str {
    t.as_str()
}

fn decision_str(d: Decision) -> &'static str {
    d.as_str()
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Answered => "answered",
        Outcome::ClientClosed => "client_closed",
        Outcome::Shutdown => "shutdown",
        Outcome::Timeout => "timeout",
        Outcome::Panic => "panic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{Id, Kind, Name, PiiUse, Reason, SellerId, Stamp, Template};
    use crate::pii::{Action, Category};

    const KINDS: [Kind; 22] = [
        Kind::Request,
        Kind::KeyCreated,
        Kind::KeyRevoked,
        Kind::SellerAuthorized,
        Kind::SellerDeauthorized,
        Kind::Reload,
        Kind::Reveal,
        Kind::Export,
        Kind::Erase,
        Kind::DeletionRun,
        Kind::LegalHold,
        Kind::Delivery,
        Kind::Alert,
        Kind::AuditStarted,
        Kind::AuditStopped,
        Kind::AuditRetention,
        Kind::Gap,
        Kind::Unauthenticated,
        Kind::Tunnel,
        Kind::CompatSwitch,
        Kind::InviteCreated,
        Kind::SignIn,
    ];

    /// Every kind: the match has no wildcard, so a new kind fails to compile until listed.
    fn listed(k: Kind) -> bool {
        match k {
            Kind::Request
            | Kind::KeyCreated
            | Kind::KeyRevoked
            | Kind::SellerAuthorized
            | Kind::SellerDeauthorized
            | Kind::Reload
            | Kind::Reveal
            | Kind::Export
            | Kind::Erase
            | Kind::DeletionRun
            | Kind::LegalHold
            | Kind::Delivery
            | Kind::Alert
            | Kind::AuditStarted
            | Kind::AuditStopped
            | Kind::AuditRetention
            | Kind::Gap
            | Kind::Unauthenticated
            | Kind::Tunnel
            | Kind::CompatSwitch
            | Kind::InviteCreated
            | Kind::SignIn => true,
        }
    }

    fn encoded(r: &Record) -> String {
        let mut out = Vec::new();
        record(&mut out, r);
        String::from_utf8(out).unwrap()
    }

    /// Every field set. A struct literal without `..`: a new field of `Record` fails to
    /// compile here until the encoder (and this test) know it.
    fn full(kind: Kind, outcome: Outcome, source: std::net::IpAddr) -> Record {
        Record {
            kind,
            request_id: Some(Id::lossy("3f9a1c2b7d4e-000000002a")),
            tool: Some(Name::lossy("label-printer")),
            actor: Some(Name::lossy("ops.alice")),
            role: Some(Name::lossy("shipping")),
            seller: Some(SellerId::lossy("A1BENCHSELLER")),
            operation: Some(Id::lossy("ordersV0.getOrderAddress")),
            method: Some(Name::lossy("GET")),
            path: Some(Template::lossy("/orders/v0/orders/{orderId}/address")),
            translated_to: Some(Id::lossy("orders_2026-01-01.getOrder")),
            unconverted: Some(u32::MAX),
            status: Some(200),
            latency_us: Some(u64::MAX),
            limiter: Some(Limiter {
                decision: Decision::Waited,
                wait_ms: 12,
            }),
            token: Some(TokenKind::Rdt),
            gateway_rdt: Some(true),
            pii: vec![
                PiiUse {
                    category: Category::Address,
                    action: Action::Pass,
                },
                PiiUse {
                    category: Category::Name,
                    action: Action::Pseudonymize,
                },
            ],
            safety_net_hits: Some(3),
            upstream_request_id: Some(Id::lossy("8b1c4e2a-0f4e-4c1b-9a53-2f1d2b9e7c10")),
            shared_from: Some(Id::lossy("3f9a1c2b7d4e-0000000029")),
            reason: Some(Reason::from_static("quote\"back\\slash\nline\u{1}")),
            order_id: Some(Id::lossy("123-1234567-1234567")),
            client_id: Some(Id::lossy("cli_abc")),
            count: Some(0),
            window_secs: Some(3600),
            outcome: Some(outcome),
            upstream_called: Some(false),
            document_id: Some(Id::lossy("amzn1.tortuga.4.na.T1")),
            bytes: Some(22),
            completed: Some(false),
            source: Some(source),
            gap_from: Some(Stamp::lossy("2026-11-20T23:58:00.123Z")),
            gap_to: Some(Stamp::lossy("2026-11-20T23:59:00.000Z")),
            host: Some(Id::lossy("sellingpartnerapi-na.amazon.com")),
        }
    }

    #[test]
    fn the_encoding_is_serdes_byte_for_byte() {
        let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mut records = vec![
            full(Kind::Request, Outcome::ClientClosed, v6),
            full(Kind::Gap, Outcome::Answered, v4),
            Record::new(Kind::AuditStarted),
            Record::request("r1").with_tool("t").with_status(503),
        ];
        for (i, outcome) in [
            Outcome::Answered,
            Outcome::ClientClosed,
            Outcome::Shutdown,
            Outcome::Timeout,
            Outcome::Panic,
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = Record::new(Kind::Request);
            r.outcome = Some(outcome);
            r.token = Some([TokenKind::Lwa, TokenKind::Rdt, TokenKind::Grantless][i % 3]);
            r.limiter = Some(Limiter {
                decision: [Decision::Admitted, Decision::Waited, Decision::Rejected][i % 3],
                wait_ms: i as u64,
            });
            r.gateway_rdt = Some(i % 2 == 0);
            r.pii = Category::ALL
                .iter()
                .map(|c| PiiUse {
                    category: *c,
                    action: [
                        Action::Pass,
                        Action::Mask,
                        Action::Pseudonymize,
                        Action::Encrypt,
                        Action::Drop,
                    ][i],
                })
                .collect();
            records.push(r);
        }
        for kind in KINDS {
            assert!(listed(kind));
            records.push(Record::new(kind));
        }
        for r in &records {
            assert_eq!(encoded(r), serde_json::to_string(r).unwrap());
        }
    }
}
