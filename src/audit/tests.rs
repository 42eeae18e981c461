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
    // A MAC edited.
    check(
        |dir, names| {
            let p = dir.join(&names[1]);
            let mut l = lines(&p);
            let at = l[0].len() - 3;
            let digit = if &l[0][at..at + 1] == "0" { "1" } else { "0" };
            l[0].replace_range(at..at + 1, digit);
            put(&p, &l);
        },
        KEY,
        Some((1, 1, "MAC mismatch")),
    );
    // A v2 record passed off as v1 (its version removed).
    check(
        |dir, names| {
            let p = dir.join(&names[0]);
            let mut l = lines(&p);
            l[2] = l[2].replace(",\"v\":2", "");
            put(&p, &l);
        },
        KEY,
        Some((0, 3, "MAC mismatch")),
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
    w.flush().unwrap();
    drop(w);
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

/// Writes one record a day for `days` days from 2026-01-01 and returns the file names.
fn write_days(dir: &std::path::Path, days: i64) -> Vec<String> {
    let mut w = ChainWriter::open(dir, "gw1", KEY).unwrap();
    for d in 0..days {
        let at = datetime!(2026-01-01 12:00 UTC) + time::Duration::days(d);
        w.append(at, &json!({"kind": "request", "day": d})).unwrap();
        w.append(at, &json!({"kind": "request", "day": d})).unwrap();
    }
    w.flush().unwrap();
    let mut names: Vec<_> = list_chains(dir).unwrap()["gw1"]
        .iter()
        .map(|f| f.name.clone())
        .collect();
    names.sort();
    names
}

fn first_bad(dir: &std::path::Path) -> Option<BadRecord> {
    let reports = verify(dir, KEY).unwrap();
    assert_eq!(reports.len(), 1);
    reports[0].first_bad.clone()
}

/// Format v2: `prev` is the SHA-256 of the previous line up to `,"mac"`, and `mac` the
/// HMAC-SHA256 of `spgate-audit-v2\n` and that digest (computed here independently).
#[test]
fn lines_are_written_in_format_v2() {
    let dir = tempfile::tempdir().unwrap();
    let names = write_chain(dir.path());
    let l = lines(&dir.path().join(&names[0]));
    let prefix = |line: &str| line[..line.rfind(",\"mac\":\"").unwrap()].to_string();
    let digest = |line: &str| ring::digest::digest(&ring::digest::SHA256, prefix(line).as_bytes());
    let second: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(
        second["prev"],
        crate::crypto::hex(digest(&l[0]).as_ref()).as_str()
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);
    for line in &l {
        let mut input = b"spgate-audit-v2\n".to_vec();
        input.extend_from_slice(digest(line).as_ref());
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["mac"],
            crate::crypto::hex(ring::hmac::sign(&key, &input).as_ref()).as_str()
        );
        assert_eq!(v["v"], 2);
    }
    let first: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["time"], "2026-11-20T23:58:00.000Z");
    assert!(l[0].starts_with("{\"seq\":1,\"v\":2,\"time\":"), "{}", l[0]);
    assert!(l[0].ends_with("\"}"), "the MAC closes the line");
}

/// The time text is cached per second: records in the same second and the next one get their
/// own milliseconds.
#[test]
fn record_times_keep_their_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    for at in [
        datetime!(2026-11-20 23:59:59.004 UTC),
        datetime!(2026-11-20 23:59:59.098 UTC),
        datetime!(2026-11-20 23:59:59.999 UTC),
        datetime!(2026-11-21 00:00:00.5 UTC),
    ] {
        w.append(at, &json!({"kind": "reload"})).unwrap();
    }
    w.flush().unwrap();
    let mut times = Vec::new();
    for f in &list_chains(dir.path()).unwrap()["gw1"] {
        for l in lines(&f.path) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            times.push(v["time"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        times,
        [
            "2026-11-20T23:59:59.004Z",
            "2026-11-20T23:59:59.098Z",
            "2026-11-20T23:59:59.999Z",
            "2026-11-21T00:00:00.500Z"
        ]
    );
}

#[test]
fn retention_deletes_old_files_behind_an_anchor_and_verify_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let names = write_days(dir.path(), 10);
    assert_eq!(names.len(), 10);
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    // Today 2026-01-10, keep 5 days: days before 2026-01-05 go (4 files, 8 records).
    let expired = w.expire(time::macros::date!(2026 - 01 - 10), 5).unwrap();
    assert_eq!(
        expired,
        Expired {
            files: 4,
            through_seq: Some(8)
        }
    );
    assert!(!dir.path().join(&names[3]).exists());
    assert!(dir.path().join(&names[4]).exists());
    w.append(datetime!(2026-01-10 13:00 UTC), &json!({"kind": "reload"}))
        .unwrap();
    w.flush().unwrap();
    // Nothing more to delete on a second pass the same day.
    assert_eq!(
        w.expire(time::macros::date!(2026 - 01 - 10), 5).unwrap(),
        Expired::default()
    );
    drop(w);
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None, "{reports:?}");
    assert_eq!(
        (
            reports[0].records,
            reports[0].first_seq,
            reports[0].last_seq
        ),
        (13, Some(9), Some(21))
    );
    assert_eq!(reports[0].expired_before.as_deref(), Some("2026-01-05"));
}

#[test]
fn removing_a_kept_file_or_the_anchor_is_still_detected_after_retention() {
    let setup = || {
        let dir = tempfile::tempdir().unwrap();
        let names = write_days(dir.path(), 6);
        let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
        w.expire(time::macros::date!(2026 - 01 - 06), 3).unwrap();
        (dir, names)
    };
    // The oldest kept file removed: the next one does not continue from the anchor.
    let (dir, names) = setup();
    std::fs::remove_file(dir.path().join(&names[2])).unwrap();
    let bad = first_bad(dir.path()).unwrap();
    assert_eq!((bad.file.as_str(), bad.line), (names[3].as_str(), 1));
    assert!(bad.reason.contains("sequence 7, expected 5"), "{bad:?}");
    // A middle file removed.
    let (dir, names) = setup();
    std::fs::remove_file(dir.path().join(&names[3])).unwrap();
    let bad = first_bad(dir.path()).unwrap();
    assert_eq!((bad.file.as_str(), bad.line), (names[4].as_str(), 1));
    // The newest file removed.
    let (dir, names) = setup();
    std::fs::remove_file(dir.path().join(&names[5])).unwrap();
    let bad = first_bad(dir.path()).unwrap();
    assert_eq!((bad.file.as_str(), bad.line), (names[4].as_str(), 0));
    assert!(bad.reason.contains("cut from the end"), "{bad:?}");
    // The anchor removed: the oldest kept record no longer starts the chain.
    let (dir, names) = setup();
    std::fs::remove_file(dir.path().join("audit-gw1.anchor")).unwrap();
    let bad = first_bad(dir.path()).unwrap();
    assert_eq!((bad.file.as_str(), bad.line), (names[2].as_str(), 1));
    // The anchor forged to hide the removal of the oldest kept file.
    let (dir, names) = setup();
    std::fs::remove_file(dir.path().join(&names[2])).unwrap();
    let anchor = std::fs::read_to_string(dir.path().join("audit-gw1.anchor")).unwrap();
    std::fs::write(
        dir.path().join("audit-gw1.anchor"),
        anchor
            .replace("\"seq\":4", "\"seq\":6")
            .replace("2026-01-03", "2026-01-04"),
    )
    .unwrap();
    let bad = first_bad(dir.path()).unwrap();
    assert!(bad.reason.contains("anchor"), "{bad:?}");
    assert_eq!(bad.file, names[3]);
}

#[test]
fn a_second_writer_of_the_same_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    assert!(matches!(
        ChainWriter::open(dir.path(), "gw1", KEY),
        Err(ChainError::InUse(_))
    ));
    assert!(ChainWriter::open(dir.path(), "gw2", KEY).is_ok());
}

#[test]
fn records_written_after_the_last_head_are_adopted_and_a_torn_line_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let names = write_chain(dir.path());
    let head = std::fs::read(dir.path().join("audit-gw1.head")).unwrap();
    // Two more records reach the file but the process dies before the head moves, in the
    // middle of writing a third.
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    for _ in 0..2 {
        w.append(datetime!(2026-11-21 00:03 UTC), &json!({"kind": "reload"}))
            .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    std::fs::write(dir.path().join("audit-gw1.head"), head).unwrap();
    let newest = dir.path().join(&names[1]);
    let mut text = std::fs::read_to_string(&newest).unwrap();
    text.push_str("{\"seq\":8,\"time\":\"2026-11-");
    std::fs::write(&newest, text).unwrap();
    // A live writer's records past its head and its unfinished last line are its unflushed
    // tail: not tampering, not a gap.
    let live = hold_lock(dir.path());
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None);
    assert_eq!((reports[0].records, reports[0].beyond_head), (7, 2));
    assert_eq!(reports[0].unflushed_tail, 25);
    assert!(reports[0].writer_live);
    assert_eq!(reports[0].abrupt_stop, None);
    // The same files with the writer gone: an abrupt stop (not tampering).
    drop(live);
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(reports[0].first_bad, None);
    assert!(!reports[0].writer_live);
    assert_eq!(
        reports[0]
            .abrupt_stop
            .as_ref()
            .map(|s| (s.after_seq, s.beyond_head, s.unflushed_tail)),
        Some((7, 2, 25))
    );

    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    assert_eq!((w.recovered(), w.seq()), (2, 7));
    w.append(datetime!(2026-11-21 00:04 UTC), &json!({"kind": "reload"}))
        .unwrap();
    w.flush().unwrap();
    drop(w);
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(
        (reports[0].records, reports[0].first_bad.clone()),
        (8, None)
    );
}

/// Holds an instance's lock as a live writer process does.
fn hold_lock(dir: &std::path::Path) -> std::fs::File {
    let lock = std::fs::File::open(dir.join("audit-gw1.lock")).unwrap();
    lock.try_lock().unwrap();
    lock
}

/// The chain of [`write_chain`], ended as a writer that stops cleanly ends it.
fn stopped_chain(dir: &std::path::Path) -> Vec<String> {
    let names = write_chain(dir);
    let mut w = ChainWriter::open(dir, "gw1", KEY).unwrap();
    w.append(
        datetime!(2026-11-21 00:03 UTC),
        &json!({"kind": "audit_stopped"}),
    )
    .unwrap();
    w.flush().unwrap();
    names
}

/// A chain that ends with `audit_stopped`, then a live writer that appended two records past
/// its head.
fn stopped_then_live(dir: &std::path::Path) -> (ChainWriter, String) {
    let names = stopped_chain(dir);
    let mut w = ChainWriter::open(dir, "gw1", KEY).unwrap();
    for _ in 0..2 {
        w.append(datetime!(2026-11-21 00:04 UTC), &json!({"kind": "reload"}))
            .unwrap();
    }
    w.write_through().unwrap();
    (w, names[1].clone())
}

/// Cuts the last `n` lines of a chain file.
fn cut_tail(path: &std::path::Path, n: usize) {
    let all = lines(path);
    put(path, &all[..all.len() - n]);
}

#[test]
fn verify_tells_a_live_tail_from_a_dead_writers_cut_tail_and_from_tampering() {
    // A live writer's records past the head: OK, even when its tail is cut (only the writer
    // could tell; it still holds the lock).
    let dir = tempfile::tempdir().unwrap();
    let (live, newest) = stopped_then_live(dir.path());
    let r = &verify(dir.path(), KEY).unwrap()[0];
    assert_eq!((r.records, r.beyond_head, r.writer_live), (8, 2, true));
    assert_eq!((r.first_bad.clone(), r.abrupt_stop.clone()), (None, None));

    // The writer gone (SIGKILL: no audit_stopped, head behind) and its tail cut: the chain still
    // links, but it is reported as an abrupt stop after the last record left.
    drop(live);
    cut_tail(&dir.path().join(&newest), 1);
    let r = &verify(dir.path(), KEY).unwrap()[0];
    assert_eq!(r.first_bad, None);
    assert!(!r.writer_live);
    let stop = r.abrupt_stop.clone().expect("an abrupt stop");
    assert_eq!((stop.after_seq, stop.beyond_head), (7, 1));
    assert_eq!(stop.after_time, "2026-11-21T00:04:00.000Z");

    // Cut to before the head (which names record 6, audit_stopped): tampering.
    cut_tail(&dir.path().join(&newest), 2);
    let r = &verify(dir.path(), KEY).unwrap()[0];
    let bad = r.first_bad.clone().expect("tampering");
    assert!(
        bad.reason.contains("records were cut from the end"),
        "{bad:?}"
    );

    // A cleanly stopped chain with no live writer: no gap.
    let dir = tempfile::tempdir().unwrap();
    stopped_chain(dir.path());
    let r = &verify(dir.path(), KEY).unwrap()[0];
    assert_eq!((r.first_bad.clone(), r.abrupt_stop.clone()), (None, None));
    assert!(!r.writer_live);
}

/// A writer opening a chain while `verify` looks at its lock waits for it instead of failing.
#[test]
fn a_writer_opening_while_verify_holds_the_lock_for_a_moment_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    write_chain(dir.path());
    let lock = std::fs::File::open(dir.path().join("audit-gw1.lock")).unwrap();
    lock.try_lock_shared().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(lock);
    });
    assert!(ChainWriter::open(dir.path(), "gw1", KEY).is_ok());
    release.join().unwrap();
}

#[test]
fn a_missing_head_with_files_present_refuses_to_fork_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    write_chain(dir.path());
    std::fs::remove_file(dir.path().join("audit-gw1.head")).unwrap();
    assert!(matches!(
        ChainWriter::open(dir.path(), "gw1", KEY),
        Err(ChainError::MissingHead(_))
    ));
}

/// An audit directory made by an earlier version (0755) is made owner-only when opened.
#[cfg(unix)]
#[test]
fn an_existing_directory_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    crate::audit::chain::private_dir(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// A process killed just after UTC midnight, with records past the head in both the old day's
/// file and the new one: the head moved when the day changed, so the reopened writer adopts the
/// new day's records and the chain continues unbroken.
#[test]
fn a_writer_killed_just_after_midnight_resumes_the_chain_without_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    for at in [
        datetime!(2026-11-20 23:58 UTC),
        datetime!(2026-11-20 23:59 UTC),
    ] {
        w.append(at, &json!({"kind": "request"})).unwrap();
    }
    w.sync().unwrap();
    // Written through (in the kernel's hands) but the head not moved: the hot path.
    for at in [
        datetime!(2026-11-20 23:59:30 UTC),
        datetime!(2026-11-20 23:59:59 UTC),
    ] {
        w.append(at, &json!({"kind": "request"})).unwrap();
    }
    w.write_through().unwrap();
    for at in [
        datetime!(2026-11-21 00:00:01 UTC),
        datetime!(2026-11-21 00:00:02 UTC),
    ] {
        w.append(at, &json!({"kind": "request"})).unwrap();
    }
    w.write_through().unwrap();
    // SIGKILL: no flush, no sync, no `audit_stopped`.
    drop(w);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "the records span midnight: {names:?}");

    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    assert_eq!(
        (w.recovered(), w.seq()),
        (2, 6),
        "the new day's records adopted"
    );
    let next = w
        .append(datetime!(2026-11-21 00:01 UTC), &json!({"kind": "reload"}))
        .unwrap();
    assert_eq!(next, 7);
    w.flush().unwrap();
    drop(w);
    let reports = verify(dir.path(), KEY).unwrap();
    assert_eq!(
        (reports[0].records, reports[0].first_bad.clone()),
        (7, None)
    );
    let newest = lines(&dir.path().join(&names[1]));
    let seqs: Vec<u64> = newest
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [5, 6, 7], "one chain, no restart at the old head");
}

/// Appends `n` request records stamped a second apart from `from` and writes them through.
fn append_written(w: &mut ChainWriter, from: i64, n: i64) {
    let t0 = datetime!(2026-11-20 10:00 UTC);
    for i in from..from + n {
        w.append(
            t0 + time::Duration::seconds(i),
            &json!({"event": "request", "n": i}),
        )
        .unwrap();
    }
    w.write_through().unwrap();
}

/// Review M2 ("fsyncgate"): a failed fsync may have lost the pages written since the last good
/// one (Linux drops them and reports the error once, so the next fsync succeeds without them;
/// the fault hook zeroes them on disk). The writer writes those bytes again before it trusts a
/// sync: the chain on disk is whole, and nothing is reported unrepaired.
#[test]
fn bytes_written_before_a_failed_fsync_are_written_again_before_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    append_written(&mut w, 0, 3);
    w.sync_records().unwrap();
    append_written(&mut w, 3, 3);
    fault::fail_syncs(dir.path(), 1);
    assert!(w.sync_records().is_err());
    let file = dir.path().join("audit-gw1-2026-11-20.jsonl");
    assert!(
        std::fs::read(&file).unwrap().contains(&0),
        "the fault lost the pages"
    );
    append_written(&mut w, 6, 2);
    w.sync_records().unwrap();
    assert_eq!(w.take_unrepaired(), None);
    w.sync().unwrap();
    drop(w);
    assert!(!std::fs::read(&file).unwrap().contains(&0));
    let report = verify(dir.path(), KEY).unwrap();
    assert_eq!(report[0].first_bad, None);
    assert_eq!(report[0].records, 8);
}

/// M2, the fallback: bytes no longer kept (over the bound) cannot be written again; the first
/// successful fsync after a failed one reports their records (count and span) for a gap.
#[test]
fn records_no_longer_kept_at_a_failed_fsync_are_reported_unrepaired() {
    let dir = tempfile::tempdir().unwrap();
    fault::keep_at_most(dir.path(), 1);
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    append_written(&mut w, 0, 2);
    w.sync_records().unwrap();
    // Without a failed fsync, bytes let go are synced like any: nothing to report.
    append_written(&mut w, 2, 1);
    w.sync_records().unwrap();
    assert_eq!(w.take_unrepaired(), None);
    append_written(&mut w, 3, 3);
    fault::fail_syncs(dir.path(), 1);
    assert!(w.sync_records().is_err());
    // Written after the failed fsync: the next one makes it durable (not reported).
    append_written(&mut w, 6, 1);
    w.sync_records().unwrap();
    let t0 = datetime!(2026-11-20 10:00 UTC);
    assert_eq!(
        w.take_unrepaired(),
        Some(Unrepaired {
            count: 3,
            from: t0 + time::Duration::seconds(2),
            to: t0 + time::Duration::seconds(5),
        })
    );
    assert_eq!(w.take_unrepaired(), None, "reported once");
}

/// Review M-b: `audit report` applies a withheld-answer note to the record it follows (503, no
/// PII delivered) and does not count it as a request.
#[test]
fn report_applies_a_withheld_note_to_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    let t0 = datetime!(2026-11-20 10:00 UTC);
    let answered = |id: &str| {
        let mut r = crate::audit::Record::request(id)
            .with_status(200)
            .with_tool("t1");
        r.latency_us = Some(5);
        r.pii = vec![crate::audit::PiiUse {
            category: crate::pii::Category::Name,
            action: crate::pii::Action::Pass,
        }];
        r
    };
    w.append_record(t0, &answered("kept")).unwrap();
    let withheld = answered("withheld");
    w.append_record(t0, &withheld).unwrap();
    w.append_record(t0, &withheld.withheld_note()).unwrap();
    w.sync().unwrap();
    drop(w);
    let report = crate::audit::query::report(dir.path(), None, None).unwrap();
    let t1 = &report["t1"];
    assert_eq!(t1.requests, 2, "{t1:?}");
    assert_eq!(t1.pii.get("name"), Some(&1), "{t1:?}");
}
