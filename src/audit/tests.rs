//! The audit chain detects every kind of tampering and names the first bad record.

use super::*;
use serde_json::json;
use time::macros::datetime;

const KEY: &[u8] = b"synthetic-audit-key-0123456789abcdef";

/// Writes five records: three on one day, two on the next (so the chain spans two files).
fn write_chain(dir: &std::path::Path) -> Vec<String> {
    let mut w = ChainWriter::open(dir, "gw1", KEY).unwrap();
    let days = [
        datetime!(2026-11-20 23:58 UTC),
        datetime!(2026-11-20 23:59 UTC),
        datetime!(2026-11-20 23:59:30 UTC),
        datetime!(2026-11-21 00:01 UTC),
        datetime!(2026-11-21 00:02 UTC),
    ];
    for (i, at) in days.iter().enumerate() {
        w.append(
            *at,
            &json!({"event": "request", "tool": "t", "status": 200 + i}),
        )
        .unwrap();
    }
    w.flush().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(path: &std::path::Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// Applies `tamper` to a fresh chain and checks the verdict: `None` for a clean chain, else the
/// (file index, line, reason fragment) of the first bad record.
fn check(
    tamper: impl FnOnce(&std::path::Path, &[String]),
    key: &[u8],
    expect: Option<(usize, usize, &str)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let names = write_chain(dir.path());
    assert_eq!(names.len(), 2, "rotated daily");
    tamper(dir.path(), &names);
    let reports = verify(dir.path(), key).unwrap();
    assert_eq!(reports.len(), 1);
    match (expect, &reports[0].first_bad) {
        (None, None) => assert_eq!(reports[0].records, 5),
        (Some((file, line, reason)), Some(bad)) => {
            assert_eq!(bad.file, names[file], "{bad:?}");
            assert_eq!(bad.line, line, "{bad:?}");
            assert!(bad.reason.contains(reason), "{bad:?} lacks {reason:?}");
        }
        (expect, got) => panic!("expected {expect:?}, got {got:?}"),
    }
}

#[test]
fn an_untouched_chain_verifies_across_daily_files() {
    check(|_, _| {}, KEY, None);
}

#[test]
fn every_kind_of_tampering_is_detected_at_the_first_bad_record() {
    // An edited field.
    check(
        |dir, names| {
            let p = dir.join(&names[0]);
            let mut l = lines(&p);
            l[1] = l[1].replace("\"status\":201", "\"status\":500");
            put(&p, &l);
        },
        KEY,
        Some((0, 2, "MAC mismatch")),
    );
    // A removed record.
    check(
        |dir, names| {
            let p = dir.join(&names[0]);
            let mut l = lines(&p);
            l.remove(1);
            put(&p, &l);
        },
        KEY,
        Some((0, 2, "sequence")),
    );
    // An inserted (duplicated) record.
    check(
        |dir, names| {
            let p = dir.join(&names[0]);
            let mut l = lines(&p);
            let copy = l[0].clone();
            l.insert(1, copy);
            put(&p, &l);
        },
        KEY,
        Some((0, 2, "sequence")),
    );
    // Two records swapped.
    check(
        |dir, names| {
            let p = dir.join(&names[1]);
            let mut l = lines(&p);
            l.swap(0, 1);
            put(&p, &l);
        },
        KEY,
        Some((1, 1, "sequence")),
    );
    // A record re-numbered to hide a removal still fails its MAC.
    check(
        |dir, names| {
            let p = dir.join(&names[0]);
            let mut l = lines(&p);
            l.remove(1);
            l[1] = l[1].replace("\"seq\":3", "\"seq\":2");
            put(&p, &l);
        },
        KEY,
        Some((0, 2, "does not link")),
    );
    // The tail cut off.
    check(
        |dir, names| {
            let p = dir.join(&names[1]);
            let mut l = lines(&p);
            l.pop();
            put(&p, &l);
        },
        KEY,
        Some((1, 0, "cut from the end")),
    );
    // The last day's file deleted.
    check(
        |dir, names| std::fs::remove_file(dir.join(&names[1])).unwrap(),
        KEY,
        Some((0, 0, "cut from the end")),
    );
    // A chain written (or rewritten) with another key.
    check(
        |_, _| {},
        b"another-key-entirely",
        Some((0, 1, "MAC mismatch")),
    );
    // The head file forged.
    check(
        |dir, _| {
            std::fs::write(
                dir.join("audit-gw1.head"),
                r#"{"seq":5,"mac":"x","head_mac":"y"}"#,
            )
            .unwrap()
        },
        KEY,
        Some((1, 0, "head file is corrupt")),
    );
}

#[test]
fn a_reopened_writer_continues_the_chain_and_refuses_a_forged_head() {
    let dir = tempfile::tempdir().unwrap();
    write_chain(dir.path());
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    w.append(
        time::macros::datetime!(2026-11-21 09:00 UTC),
        &json!({"event": "reload"}),
    )
    .unwrap();
    w.flush().unwrap();
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(
        (reports[0].records, reports[0].first_bad.clone()),
        (6, None)
    );
    std::fs::write(
        dir.path().join("audit-gw1.head"),
        r#"{"seq":1,"mac":"genesis","head_mac":"0"}"#,
    )
    .unwrap();
    assert!(matches!(
        ChainWriter::open(dir.path(), "gw1", KEY),
        Err(ChainError::BadHead(_))
    ));
    assert!(matches!(
        ChainWriter::open(dir.path(), "../x", KEY),
        Err(ChainError::BadInstance)
    ));
}

#[test]
fn each_instance_has_its_own_chain() {
    let dir = tempfile::tempdir().unwrap();
    for instance in ["a", "b"] {
        let mut w = ChainWriter::open(dir.path(), instance, KEY).unwrap();
        w.append(
            time::macros::datetime!(2026-11-21 09:00 UTC),
            &json!({"event": "request"}),
        )
        .unwrap();
        w.flush().unwrap();
    }
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(
        reports
            .iter()
            .all(|r| r.records == 1 && r.first_bad.is_none()),
        "{reports:?}"
    );
    assert!(ChainWriter::open(dir.path(), "a", KEY)
        .unwrap()
        .append(time::macros::datetime!(2026-11-21 09:00 UTC), &json!([1]))
        .is_err());
}
