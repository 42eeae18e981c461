//! The `spgate` binary: demo, SIGTERM drain, check, catalog, clients and sellers.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spgate");
const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn spgate(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .env(
            "SPGATE_AUDIT_KEY",
            "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr",
        )
        .output()
        .expect("spgate runs")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("spgate.toml");
    let text = include_str!("../config/spgate.example.toml")
        .replace(
            "data_dir = \"data\"",
            &format!("data_dir = {:?}", dir.join("data").display().to_string()),
        )
        .replace(
            "dir = \"data/audit\"",
            &format!("dir = {:?}", dir.join("audit").display().to_string()),
        );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn catalog_lists_all_370_operations_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = spgate(&["catalog", "--json"], dir.path());
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 370);
    let addr = rows
        .iter()
        .find(|r| r["key"] == "ordersV0.getOrderAddress")
        .unwrap();
    assert_eq!(addr["restricted"], true);
    assert_eq!(addr["burst"], 30);
    assert!(addr["application"].is_null());
    let patch = rows
        .iter()
        .find(|r| r["key"] == "listingsItems_2021-08-01.patchListingsItem")
        .unwrap();
    assert_eq!(patch["rate_per_second"], 5.0);
    assert_eq!(patch["application"]["rate_per_second"], 500.0);
    assert_eq!(
        patch["application"]["sub_limits"]["validation_preview"]["rate_per_second"],
        20.0
    );
    let table = stdout(&spgate(&["catalog"], dir.path()));
    assert!(table.contains("370 operations"));
}

#[test]
fn check_accepts_the_example_and_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path());
    let out = spgate(&["check", "--config", good.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\nbogus = 1\n[lwa]\nclient_secret = \"inline\"\n",
    )
    .unwrap();
    let out = spgate(&["check", "--config", bad.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let text = stdout(&out);
    for path in [
        "server.listen",
        "server.bogus",
        "lwa.client_id",
        "lwa.client_secret",
        "keys.master_key",
    ] {
        assert!(
            text.contains(&format!(": {path}: ")),
            "{path} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains("inline"),
        "a secret written in the file is never echoed"
    );
}

#[test]
fn clients_add_shows_the_key_once_list_hides_it_and_revoke_works() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let out = spgate(
        &[
            "clients",
            "--config",
            cfg,
            "add",
            "--tool",
            "label-printer",
            "--role",
            "labels",
            "--seller",
            "A1",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .unwrap()
        .trim()
        .to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("client id:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(key.starts_with("spg_") && key.len() > 40);
    let list = stdout(&spgate(&["clients", "--config", cfg, "list"], dir.path()));
    assert!(list.contains("label-printer") && list.contains(&id) && list.contains("active"));
    assert!(!list.contains(&key), "the key is never shown again");
    let db = std::fs::read(dir.path().join("data/spgate.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(&key),
        "only the key's hash is stored"
    );
    assert!(
        spgate(&["clients", "--config", cfg, "revoke", &id], dir.path())
            .status
            .success()
    );
    assert!(stdout(&spgate(&["clients", "--config", cfg, "list"], dir.path())).contains("revoked"));
    assert!(
        !spgate(&["clients", "--config", cfg, "revoke", &id], dir.path())
            .status
            .success()
    );
}

#[test]
fn sellers_add_seals_the_refresh_token_and_list_and_remove_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let token_file = dir.path().join("rt");
    std::fs::write(&token_file, "Atzr|synthetic-refresh-token-for-tests\n").unwrap();
    let out = spgate(
        &[
            "sellers",
            "--config",
            cfg,
            "add",
            "--id",
            "A2SELLER",
            "--region",
            "eu",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = stdout(&spgate(&["sellers", "--config", cfg, "list"], dir.path()));
    assert!(
        list.contains("A2SELLER") && list.contains("eu") && list.contains("active"),
        "{list}"
    );
    let db = std::fs::read(dir.path().join("data/spgate.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains("synthetic-refresh-token"),
        "the refresh token is sealed at rest"
    );
    std::fs::write(&token_file, "not-a-token").unwrap();
    assert!(!spgate(
        &[
            "sellers",
            "--config",
            cfg,
            "add",
            "--id",
            "A3",
            "--region",
            "eu",
            "--refresh-token-file",
            token_file.to_str().unwrap()
        ],
        dir.path()
    )
    .status
    .success());
    assert!(spgate(
        &["sellers", "--config", cfg, "remove", "A2SELLER"],
        dir.path()
    )
    .status
    .success());
    assert!(
        !stdout(&spgate(&["sellers", "--config", cfg, "list"], dir.path())).contains("A2SELLER")
    );
}

/// Reads the demo's stdout until it says it is serving; returns the printed lines.
fn demo_lines(child: &mut std::process::Child) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let done = line.contains("Serving until Ctrl-C");
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
    panic!("demo did not start: {lines:?}");
}

#[tokio::test]
async fn the_demo_serves_its_printed_curl_commands_and_exits_0_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = demo_lines(&mut child);
    let minimal_key = lines
        .iter()
        .find_map(|l| l.strip_prefix("export SPGATE_MINIMAL_KEY="))
        .expect("the minimising tool's key")
        .to_string();
    assert!(
        lines.iter().any(|l| l.contains("/console")),
        "the console's URL is printed"
    );
    let export = lines
        .iter()
        .find(|l| l.starts_with("export SPGATE_URL="))
        .expect("export line");
    let vars: std::collections::HashMap<&str, &str> = export
        .trim_start_matches("export ")
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let (url, key, seller) = (
        vars["SPGATE_URL"],
        vars["SPGATE_KEY"],
        vars["SPGATE_SELLER"],
    );
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 4, "four ready-to-paste curl commands");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut seen = std::collections::HashMap::new();
    for curl in curls {
        let target = curl
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_matches('"')
            .replace("$SPGATE_URL", url);
        let key = if curl.contains("$SPGATE_MINIMAL_KEY") {
            minimal_key.as_str()
        } else {
            key
        };
        let req = http::Request::get(&target)
            .header("authorization", format!("Bearer {key}"))
            .header("x-spgate-seller", seller)
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{target}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if key == minimal_key {
            // The same order as the first key saw it, minimised: the address encrypted.
            assert!(body.contains("\"AddressLine1\":\"spgate:v1:"), "{body}");
            assert!(seen.get(&target).is_some_and(|full| *full != body));
        }
        seen.insert(target, body);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_reloads_plans_on_sighup_refuses_a_bad_file_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let (port, admin_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "listen = \"127.0.0.1:9090\"",
            &format!("listen = \"127.0.0.1:{admin_port}\""),
        );
    std::fs::write(&cfg, &text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .env(
            "SPGATE_AUDIT_KEY",
            "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                assert!(
                    !line.contains("synthetic-secret"),
                    "a secret reached the log: {line}"
                );
                if line.contains(needle) {
                    return;
                }
            }
        }
        panic!("no log line containing {needle:?}");
    };
    wait_for("spgate is serving");
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };

    std::fs::write(
        &cfg,
        text.replace("default = { share = 0.3 }", "default = { share = 3 }"),
    )
    .unwrap();
    signal("-HUP");
    wait_for("Reload on SIGHUP refused");
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad file does not stop the gateway"
    );
    std::fs::write(&cfg, &text).unwrap();
    signal("-HUP");
    wait_for("Configuration reloaded on SIGHUP");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok(),
        "the admin listener is up"
    );

    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
