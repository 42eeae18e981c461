//! `spgate audit verify | query | report` on a generated directory with two instances: the real
//! binary, its exit codes and its output.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use spgate::audit::chain::ChainWriter;
use spgate::audit::record::{Kind, PiiUse, Record};
use spgate::pii::{Action, Category};
use time::macros::datetime;

const KEY: &[u8] = b"synthetic-audit-key-0123456789abcdef";
const TOOLS: [&str; 3] = ["labels", "crm", "repricer"];

/// What the generator wrote, counted independently of the code under test.
#[derive(Default, Debug)]
struct Expect {
    requests: BTreeMap<&'static str, u64>,
    denials: BTreeMap<&'static str, u64>,
    throttled: BTreeMap<&'static str, u64>,
    reveals: BTreeMap<&'static str, u64>,
}

/// 40 records, alternating between instances gw1 and gw2, 30 s apart from 23:50 UTC (so each
/// chain spans two daily files).
fn generate(dir: &Path) -> Expect {
    let mut e = Expect::default();
    let mut writers = [
        ChainWriter::open(dir, "gw1", KEY).unwrap(),
        ChainWriter::open(dir, "gw2", KEY).unwrap(),
    ];
    let t0 = datetime!(2026-03-01 23:50 UTC);
    for i in 0..40u16 {
        let tool = TOOLS[usize::from(i) % 3];
        let at = t0 + time::Duration::seconds(30 * i64::from(i));
        let r = if i == 10 || i == 13 {
            *e.reveals.entry(tool).or_default() += 1;
            let mut r = Record::new(Kind::Reveal).with_tool(tool);
            r.pii = vec![PiiUse {
                category: Category::Phone,
                action: Action::Pass,
            }];
            r
        } else {
            let status = if i % 5 == 0 {
                403
            } else if i % 7 == 0 {
                429
            } else {
                200
            };
            *e.requests.entry(tool).or_default() += 1;
            match status {
                403 => *e.denials.entry(tool).or_default() += 1,
                429 => *e.throttled.entry(tool).or_default() += 1,
                _ => {}
            }
            let mut r = Record::request(&format!("req-{i}"))
                .with_tool(tool)
                .with_role(tool)
                .with_seller(if i % 2 == 0 {
                    "A1SELLERONE"
                } else {
                    "A2SELLERTWO"
                })
                .with_status(status);
            r.operation = Some(spgate::audit::record::Id::new("ordersV0.getOrder").unwrap());
            r.latency_us = Some(1500);
            if tool == "labels" {
                r.pii = vec![
                    PiiUse {
                        category: Category::Address,
                        action: Action::Pass,
                    },
                    PiiUse {
                        category: Category::Email,
                        action: Action::Drop,
                    },
                ];
            }
            r
        };
        writers[usize::from(i) % 2].append(at, &r).unwrap();
    }
    for w in &mut writers {
        w.flush().unwrap();
    }
    e
}

/// Ends both chains as a writer that stops cleanly does (`audit_stopped`), so `verify` sees no
/// abrupt stop.
fn close(dir: &Path) {
    for instance in ["gw1", "gw2"] {
        let mut w = ChainWriter::open(dir, instance, KEY).unwrap();
        w.append(
            datetime!(2026-03-02 00:30 UTC),
            &Record::new(Kind::AuditStopped),
        )
        .unwrap();
        w.flush().unwrap();
    }
}

fn spgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spgate"))
        .args(args)
        .env(
            "SPGATE_AUDIT_KEY",
            base64::engine::general_purpose::STANDARD.encode(KEY),
        )
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn verify_passes_an_untouched_directory_and_takes_the_key_from_a_file_too() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    close(dir.path());
    let d = dir.path().to_str().unwrap();
    let o = spgate(&["audit", "verify", d]);
    assert!(o.status.success(), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("gw1: OK, 21 records in 2 files"), "{text}");
    assert!(text.contains("gw2: OK, 21 records in 2 files"), "{text}");
    assert!(!text.contains("GAP"), "{text}");

    let key_file = dir.path().join("key.b64");
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode(b"another-synthetic-key-0123456789abcdef"),
    )
    .unwrap();
    let o = spgate(&[
        "audit",
        "verify",
        d,
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "the wrong key fails");
    assert!(stdout(&o).contains("MAC mismatch"), "{}", stdout(&o));
}

#[test]
fn verify_exits_non_zero_naming_the_first_bad_record_for_each_kind_of_tampering() {
    type Tamper = fn(&Path);
    let gw1_day1 = "audit-gw1-2026-03-01.jsonl";
    let gw2_day2 = "audit-gw2-2026-03-02.jsonl";
    let cases: [(&str, Tamper, &str, &str); 5] = [
        (
            "edited",
            |d| {
                let p = d.join("audit-gw1-2026-03-01.jsonl");
                let mut l = lines(&p);
                l[2] = l[2].replace("\"status\":200", "\"status\":500");
                put(&p, &l);
            },
            "audit-gw1-2026-03-01.jsonl line 3, record 3: MAC mismatch",
            gw1_day1,
        ),
        (
            "removed",
            |d| {
                let p = d.join("audit-gw1-2026-03-01.jsonl");
                let mut l = lines(&p);
                l.remove(3);
                put(&p, &l);
            },
            "audit-gw1-2026-03-01.jsonl line 4, record 5: sequence 5, expected 4",
            gw1_day1,
        ),
        (
            "inserted",
            |d| {
                let p = d.join("audit-gw1-2026-03-01.jsonl");
                let mut l = lines(&p);
                let copy = l[1].clone();
                l.insert(4, copy);
                put(&p, &l);
            },
            "audit-gw1-2026-03-01.jsonl line 5, record 2: sequence 2, expected 5",
            gw1_day1,
        ),
        (
            "reordered",
            |d| {
                let p = d.join("audit-gw2-2026-03-02.jsonl");
                let mut l = lines(&p);
                l.swap(1, 2);
                put(&p, &l);
            },
            "audit-gw2-2026-03-02.jsonl line 2, record 13: sequence 13, expected 12",
            gw2_day2,
        ),
        (
            "cut tail",
            |d| {
                let p = d.join("audit-gw2-2026-03-02.jsonl");
                let mut l = lines(&p);
                l.truncate(l.len() - 2);
                put(&p, &l);
            },
            "audit-gw2-2026-03-02.jsonl (end of chain): the chain ends at record 19 but its head names record 21",
            gw2_day2,
        ),
    ];
    for (what, tamper, expect, file) in cases {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path());
        close(dir.path());
        tamper(dir.path());
        let o = spgate(&["audit", "verify", dir.path().to_str().unwrap()]);
        let text = stdout(&o);
        assert!(!o.status.success(), "{what}: {text}");
        assert!(text.contains(expect), "{what}: {text}");
        assert!(text.contains(file));
        // The other instance is still reported intact.
        let other = if file.contains("gw1") {
            "gw2: OK"
        } else {
            "gw1: OK"
        };
        assert!(text.contains(other), "{what}: {text}");
    }
}

/// A tail cut after the head file's last move: a live writer's unflushed tail is fine, a dead
/// writer's cut tail is an abrupt stop (a gap: non-zero unless `--allow-gaps`), a cut before
/// the head is tampering (non-zero whatever the flags).
#[test]
fn verify_tells_a_live_writers_tail_from_a_dead_writers_cut_tail_and_from_tampering() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    close(dir.path());
    let d = dir.path().to_str().unwrap();
    // A writer resumes gw2 and writes three records without moving its head (as the gateway
    // does between head moves), the third one half written.
    let mut w = ChainWriter::open(dir.path(), "gw2", KEY).unwrap();
    for i in 0..2 {
        w.append(
            datetime!(2026-03-02 00:40 UTC),
            &Record::request(&format!("late-{i}")),
        )
        .unwrap();
    }
    w.write_through().unwrap();
    let newest = dir.path().join("audit-gw2-2026-03-02.jsonl");
    let mut text = std::fs::read_to_string(&newest).unwrap();
    text.push_str("{\"seq\":24,\"time\":\"2026-03-02T00:4");
    std::fs::write(&newest, &text).unwrap();

    // Live (this process holds the lock): not tampering, not a gap.
    let o = spgate(&["audit", "verify", d]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("gw2: note: 2 verified record(s) past the head file and 33 byte(s)"),
        "{out}"
    );
    assert!(out.contains("the live writer's unflushed tail"), "{out}");

    // The writer dies (no audit_stopped) and someone cuts its last record: a gap, not OK.
    drop(w);
    let mut l = lines(&newest);
    l.pop(); // the unfinished line
    l.pop(); // late-1
    put(&newest, &l);
    let o = spgate(&["audit", "verify", d]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("gw2: GAP after record 22: the writer stopped abruptly"),
        "{out}"
    );
    assert!(
        out.contains("records after 2026-03-02T00:40:00.000Z may be lost"),
        "{out}"
    );
    assert!(!out.contains("TAMPERED"), "{out}");
    let o = spgate(&["audit", "verify", d, "--allow-gaps"]);
    assert!(o.status.success(), "{}", stdout(&o));

    // Cut into what the head covers: tampering, even with --allow-gaps.
    l.truncate(l.len() - 2);
    put(&newest, &l);
    let o = spgate(&["audit", "verify", d, "--allow-gaps"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("gw2: TAMPERED"), "{out}");
    assert!(out.contains("records were cut from the end"), "{out}");
}

fn query_json(dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "query", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = spgate(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn query_merges_both_instances_in_time_order_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let all = query_json(dir.path(), &[]);
    assert_eq!(all.len(), 40);
    let times: Vec<&str> = all.iter().map(|v| v["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "time order across instances and days");
    let instances: Vec<&str> = all
        .iter()
        .take(4)
        .map(|v| v["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["gw1", "gw2", "gw1", "gw2"]);

    let labels = query_json(dir.path(), &["--tool", "labels"]);
    assert_eq!(labels.len(), 14);
    assert!(labels.iter().all(|v| v["tool"] == "labels"));

    let denied = query_json(dir.path(), &["--status", "4xx", "--seller", "A1SELLERONE"]);
    assert!(!denied.is_empty());
    assert!(denied
        .iter()
        .all(|v| v["seller"] == "A1SELLERONE" && v["status"].as_u64().unwrap() / 100 == 4));

    // Address went out (pass); email never did (drop), so it matches nothing.
    assert_eq!(query_json(dir.path(), &["--pii", "address"]).len(), 14);
    assert_eq!(query_json(dir.path(), &["--pii", "email"]).len(), 0);
    assert_eq!(query_json(dir.path(), &["--kind", "reveal"]).len(), 2);

    let window = query_json(
        dir.path(),
        &[
            "--since",
            "2026-03-02T00:00:00Z",
            "--until",
            "2026-03-02T00:02:00Z",
        ],
    );
    let w: Vec<&str> = window.iter().map(|v| v["time"].as_str().unwrap()).collect();
    assert_eq!(
        w,
        [
            "2026-03-02T00:00:00.000Z",
            "2026-03-02T00:00:30.000Z",
            "2026-03-02T00:01:00.000Z",
            "2026-03-02T00:01:30.000Z"
        ]
    );

    // The default table: a header, aligned rows, a count.
    let o = spgate(&[
        "audit",
        "query",
        dir.path().to_str().unwrap(),
        "--tool",
        "crm",
    ]);
    let text = stdout(&o);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("time"), "{text}");
    assert!(
        rows[1].starts_with("2026-03-01T23:50:30.000Z gw2"),
        "{text}"
    );
    assert!(text.contains("(13 records;"), "{text}");
    let bad = spgate(&[
        "audit",
        "query",
        dir.path().to_str().unwrap(),
        "--status",
        "abc",
    ]);
    assert!(!bad.status.success());
}

#[test]
fn report_counts_requests_denials_429s_pii_and_reveals_per_tool() {
    let dir = tempfile::tempdir().unwrap();
    let e = generate(dir.path());
    let o = spgate(&["audit", "report", dir.path().to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for tool in TOOLS {
        let get = |m: &BTreeMap<&str, u64>| m.get(tool).copied().unwrap_or(0);
        assert_eq!(r[tool]["requests"], get(&e.requests), "{tool}");
        assert_eq!(r[tool]["denials"], get(&e.denials), "{tool}");
        assert_eq!(r[tool]["throttled"], get(&e.throttled), "{tool}");
        assert_eq!(r[tool]["reveals"], get(&e.reveals), "{tool}");
    }
    assert_eq!(r["labels"]["pii"], serde_json::json!({"address": 14}));
    assert_eq!(r["crm"]["pii"], serde_json::json!({}));
    // --since narrows it: only the second day's records.
    let o = spgate(&[
        "audit",
        "report",
        dir.path().to_str().unwrap(),
        "--since",
        "2026-03-02",
    ]);
    let text = stdout(&o);
    assert!(
        text.contains("audit report 2026-03-02T00:00:00.000Z"),
        "{text}"
    );
    let total: u64 = text
        .lines()
        .skip(2)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols[1].parse::<u64>().unwrap() + cols[4].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, 20, "{text}");
}

#[test]
fn report_counts_a_document_download_once_though_it_has_a_start_and_an_end_record_or_only_a_start()
{
    let dir = tempfile::tempdir().unwrap();
    let mut w = ChainWriter::open(dir.path(), "gw1", KEY).unwrap();
    let mut end = Record::request("req-doc")
        .with_tool("labels")
        .with_role("labels")
        .with_seller("A1SELLERONE")
        .with_status(200);
    end.operation = Some(spgate::audit::record::Id::new("documents.download").unwrap());
    let start = end
        .clone()
        .with_reason(spgate::audit::Reason::DOWNLOAD_STARTED);
    end.completed = Some(true);
    end.pii = vec![PiiUse {
        category: Category::Address,
        action: Action::Pass,
    }];
    let t0 = datetime!(2026-03-01 10:00 UTC);
    w.append(t0, &start).unwrap();
    w.append(t0 + time::Duration::seconds(1), &end).unwrap();
    // A second download whose end record was lost (a SIGKILL mid-stream): still counted.
    let mut cut = start.clone();
    cut.request_id = Some(spgate::audit::record::Id::new("req-doc-cut").unwrap());
    w.append(t0 + time::Duration::seconds(2), &cut).unwrap();
    w.flush().unwrap();
    drop(w);
    let o = spgate(&["audit", "report", dir.path().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["labels"]["requests"], 2, "{r}");
    assert_eq!(r["labels"]["pii"], serde_json::json!({"address": 1}));
}
