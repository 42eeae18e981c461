//! Chains written in format v1 (by the writer before format v2) still verify, resume and
//! expire, alone and continued in v2 (mid-file); tampering is detected on both sides.
//!
//! `fixtures/audit/v1/` was written by the v1 `ChainWriter` (commit 4898286) with this key:
//! four records (three on 2026-11-20, one on 2026-11-21, the events of `tests::write_chain`),
//! flushed after each, so the head names record 4; `audit-gw1.head-at-3` is the head as it was
//! after record 3.

use super::*;
use serde_json::json;
use time::macros::{date, datetime};

const KEY: &[u8] = b"synthetic-audit-key-0123456789abcdef";

const DAY1: &str = "audit-gw1-2026-11-20.jsonl";
const DAY2: &str = "audit-gw1-2026-11-21.jsonl";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audit/v1")
}

/// The v1 fixture chain, copied into `dir`.
fn v1_chain(dir: &Path) {
    for name in [DAY1, DAY2, "audit-gw1.head"] {
        fs::copy(fixture().join(name), dir.join(name)).unwrap();
    }
}

/// The v1 chain continued by this writer: record 5 (v2) after record 4 (v1) in the same file.
fn mixed_chain(dir: &Path) {
    v1_chain(dir);
    let mut w = ChainWriter::open(dir, "gw1", KEY).unwrap();
    assert_eq!((w.seq(), w.recovered()), (4, 0));
    w.append(
        datetime!(2026-11-21 00:02 UTC),
        &json!({"event": "request", "tool": "t", "status": 204}),
    )
    .unwrap();
    w.flush().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// Edits one line of one file.
fn edit(dir: &Path, file: &str, line: usize, f: impl FnOnce(&str) -> String) {
    let p = dir.join(file);
    let mut l = lines(&p);
    l[line] = f(&l[line]);
    put(&p, &l);
}

/// Flips the last hex digit of a line's MAC.
fn flip_mac(line: &str) -> String {
    let mut bytes = line.as_bytes().to_vec();
    let i = bytes.len() - 3;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap()
}

/// Builds a chain with `build`, applies `tamper`, and checks verify's verdict: `None` for a
/// clean chain of `records`, else the (file, line, reason fragment) of the first bad record.
fn check(
    build: fn(&Path),
    tamper: impl FnOnce(&Path),
    records: u64,
    expect: Option<(&str, usize, &str)>,
) {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    tamper(dir.path());
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(reports.len(), 1);
    match (expect, &reports[0].first_bad) {
        (None, None) => assert_eq!(reports[0].records, records),
        (Some((file, line, reason)), Some(bad)) => {
            assert_eq!(bad.file, file, "{bad:?}");
            assert_eq!(bad.line, line, "{bad:?}");
            assert!(bad.reason.contains(reason), "{bad:?} lacks {reason:?}");
        }
        (expect, got) => panic!("expected {expect:?}, got {got:?}"),
    }
}

#[test]
fn a_v1_chain_from_the_old_writer_verifies() {
    check(v1_chain, |_| {}, 4, None);
    let l = lines(&fixture().join(DAY2));
    assert!(!l[0].contains("\"v\":"), "the fixture is v1");
}

#[test]
fn a_v1_chain_continued_in_v2_mid_file_verifies() {
    check(mixed_chain, |_| {}, 5, None);
    let dir = tempfile::tempdir().unwrap();
    mixed_chain(dir.path());
    let l = lines(&dir.path().join(DAY2));
    assert_eq!(l.len(), 2, "the switch is inside one file");
    assert!(!l[0].contains("\"v\":"));
    assert!(l[1].starts_with("{\"seq\":5,\"v\":2,\"time\":"), "{}", l[1]);
    // The first v2 record names its v1 predecessor by the SHA-256 of its whole line.
    let v: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(v["prev"], crypto::sha256_hex(l[0].as_bytes()).as_str());
}

#[test]
fn tampering_is_detected_in_the_v1_part_and_in_the_v2_part() {
    // A field edited, in a v1 record and in a v2 record.
    check(
        mixed_chain,
        |d| {
            edit(d, DAY1, 1, |l| {
                l.replace("\"status\":201", "\"status\":500")
            })
        },
        5,
        Some((DAY1, 2, "MAC mismatch")),
    );
    check(
        mixed_chain,
        |d| {
            edit(d, DAY2, 1, |l| {
                l.replace("\"status\":204", "\"status\":500")
            })
        },
        5,
        Some((DAY2, 2, "MAC mismatch")),
    );
    // A MAC edited, in each format.
    check(
        mixed_chain,
        |d| edit(d, DAY1, 0, flip_mac),
        5,
        Some((DAY1, 1, "MAC mismatch")),
    );
    check(
        mixed_chain,
        |d| edit(d, DAY2, 1, flip_mac),
        5,
        Some((DAY2, 2, "MAC mismatch")),
    );
    // A v2 record passed off as v1, and a v1 record as v2.
    check(
        mixed_chain,
        |d| edit(d, DAY2, 1, |l| l.replace(",\"v\":2", "")),
        5,
        Some((DAY2, 2, "MAC mismatch")),
    );
    check(
        mixed_chain,
        |d| {
            edit(d, DAY2, 0, |l| {
                l.replacen(",\"time\"", ",\"v\":2,\"time\"", 1)
            })
        },
        5,
        Some((DAY2, 1, "MAC mismatch")),
    );
    // A version this code does not know is refused, not guessed.
    check(
        mixed_chain,
        |d| edit(d, DAY2, 1, |l| l.replace("\"v\":2", "\"v\":3")),
        5,
        Some((DAY2, 2, "unknown chain format")),
    );
    // A v1 record removed.
    check(
        mixed_chain,
        |d| {
            let p = d.join(DAY1);
            let mut l = lines(&p);
            l.remove(1);
            put(&p, &l);
        },
        5,
        Some((DAY1, 2, "sequence")),
    );
    // The v1 and the v2 record swapped.
    check(
        mixed_chain,
        |d| {
            let p = d.join(DAY2);
            let mut l = lines(&p);
            l.swap(0, 1);
            put(&p, &l);
        },
        5,
        Some((DAY2, 1, "sequence")),
    );
    // The last v1 record removed and the v2 record re-numbered to hide it: it no longer
    // links (its MAC would fail next).
    check(
        mixed_chain,
        |d| {
            let p = d.join(DAY2);
            let mut l = lines(&p);
            l.remove(0);
            l[0] = l[0].replace("\"seq\":5", "\"seq\":4");
            put(&p, &l);
        },
        5,
        Some((DAY2, 1, "does not link")),
    );
    // The v2 tail cut off.
    check(
        mixed_chain,
        |d| {
            let p = d.join(DAY2);
            let mut l = lines(&p);
            l.pop();
            put(&p, &l);
        },
        5,
        Some((DAY2, 0, "cut from the end")),
    );
    // The v1 tail of a v1-only chain cut off.
    check(
        v1_chain,
        |d| {
            let p = d.join(DAY2);
            put(&p, &[]);
        },
        4,
        Some((DAY2, 0, "cut from the end")),
    );
}

#[test]
fn a_v1_writers_records_past_its_head_are_adopted_and_its_torn_line_cut() {
    let dir = tempfile::tempdir().unwrap();
    v1_chain(dir.path());
    // The v1 writer crashed after writing record 4 but before moving its head past record 3,
    // in the middle of writing record 5.
    fs::copy(
        fixture().join("audit-gw1.head-at-3"),
        dir.path().join("audit-gw1.head"),
    )
    .unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join(DAY2))
        .unwrap();
    f.write_all(b"{\"seq\":5,\"time\":\"2026-11-21T00:0")
        .unwrap();
    drop(f);
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    assert_eq!((w.recovered(), w.seq()), (1, 4));
    w.append(datetime!(2026-11-21 00:02 UTC), &json!({"event": "reload"}))
        .unwrap();
    w.flush().unwrap();
    drop(w);
    let r = &verify(dir.path(), KEY).unwrap()[0];
    assert_eq!((r.records, r.first_bad.clone()), (5, None));
    assert_eq!(r.unflushed_tail, 0, "the torn line was cut");
}

#[test]
fn retention_anchors_on_a_v1_record_and_the_v2_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    mixed_chain(dir.path());
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    // Keep one day on 2026-11-22: the first file (v1 records 1-3) goes.
    let expired = w.expire(date!(2026 - 11 - 22), 1).unwrap();
    assert_eq!(
        expired,
        Expired {
            files: 1,
            through_seq: Some(3)
        }
    );
    drop(w);
    let r = &verify(dir.path(), KEY).unwrap()[0];
    assert_eq!(r.first_bad, None);
    assert_eq!((r.records, r.first_seq), (2, Some(4)));
}
