//! The web console in a real browser: a `spgate sandbox` process and a `spgate serve` process
//! (embedded store, audit log, admin listener with an ops and a security token) serve sandbox
//! traffic, then `tests/console/console.mjs` (playwright-core driving Debian's
//! `/usr/bin/chromium`) signs in with each token, renders every page with that data, creates
//! and revokes a key from the UI (then refused on the proxy), sets a legal hold, and checks that
//! each role is refused the other's pages and actions and that CSRF-less and cross-origin posts
//! are refused. Screenshots of each page land in `target/console-screenshots/`.
//!
//! `.ci/run` installs `chromium` and runs `npm ci` in `tests/console`. Without them a developer
//! gets a skip notice; under CI it is a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spgate");
const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const AUDIT_KEY: &str = "c3BnYXRlLWNvbnNvbGUtdGVzdC1hdWRpdC1rZXktMzI=";
const OPS_TOKEN: &str = "console-test-ops-token-0123456789abcdef";
const SECURITY_TOKEN: &str = "console-test-security-token-0123456789ab";
const SELLER: &str = "A1CONSOLE";
const REFRESH_TOKEN: &str = "Atzr|console-synthetic";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child processes when the test ends, however it ends.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "spgate-demo-client-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .env("SPGATE_AUDIT_KEY", AUDIT_KEY)
        .env("CONSOLE_OPS_TOKEN", OPS_TOKEN)
        .env("CONSOLE_SECURITY_TOKEN", SECURITY_TOKEN);
    cmd
}

fn spawn(args: &[&str], ready: &str) -> Child {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx2.send(l)))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains(ready) {
                return child;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{args:?} did not start");
}

fn run(args: &[&str]) -> String {
    let out = command(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(dir: &Path, port: u16, admin: u16, sandbox: &str) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[upstream.endpoints]
na = "{sandbox}"
eu = "{sandbox}"
fe = "{sandbox}"
[lwa]
token_url = "{sandbox}/auth/o2/token"
client_id = "amzn1.application-oa2-client.spgate-demo"
client_secret = {{ env = "SPGATE_LWA_CLIENT_SECRET" }}
[store]
type = "embedded"
data_dir = {data:?}
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[audit]
dir = {audit:?}
instance = "console"
key = {{ env = "SPGATE_AUDIT_KEY" }}
[admin]
listen = "127.0.0.1:{admin}"
[[admin.tokens]]
name = "console-ops"
role = "ops"
token = {{ env = "CONSOLE_OPS_TOKEN" }}
[[admin.tokens]]
name = "console-security"
role = "security"
token = {{ env = "CONSOLE_SECURITY_TOKEN" }}
[onboarding]
application_id = "amzn1.sp.solution.console-test"
public_url = "https://spgate.example.test"
[roles.orders.pii]
name = "pass"
address = "encrypt"
postal_code = "mask"
phone = "mask"
[log]
format = "json"
level = "info"
"#,
        data = dir.join("data").display().to_string(),
        audit = dir.join("audit").display().to_string(),
    );
    let path = dir.join("spgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The browser test's prerequisites: node, the npm packages and Chromium.
fn browser_ready(project: &Path) -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    let ok = Path::new(&chromium).exists()
        && project.join("node_modules/playwright-core").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide node, chromium and `npm ci` in tests/console"
        );
        eprintln!("skipping: node, {chromium} or tests/console/node_modules is missing (apt-get install chromium; npm ci in tests/console)");
    }
    ok
}

async fn get(client: &reqwest::Client, url: &str, key: &str) -> reqwest::StatusCode {
    client
        .get(url)
        .bearer_auth(key)
        .header("x-spgate-seller", SELLER)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_serves_both_roles_and_refuses_what_they_may_not_do() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    if !browser_ready(&project) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (sandbox_port, port, admin_port) = (free_port(), free_port(), free_port());
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let mut reaper = Reaper(vec![spawn(
        &[
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{sandbox_port}"),
            "--quotas",
            "catalog",
        ],
        "sandbox SP-API",
    )]);
    let cfg = config(dir.path(), port, admin_port, &sandbox);
    let cfg = cfg.to_str().unwrap();
    let token_file = dir.path().join("rt");
    std::fs::write(&token_file, REFRESH_TOKEN).unwrap();
    run(&[
        "sellers",
        "--config",
        cfg,
        "add",
        "--id",
        SELLER,
        "--region",
        "na",
        "--refresh-token-file",
        token_file.to_str().unwrap(),
        "--marketplace",
        "ATVPDKIKX0DER",
    ]);
    let added = run(&[
        "clients",
        "--config",
        cfg,
        "add",
        "--tool",
        "orders-app",
        "--role",
        "orders",
        "--seller",
        SELLER,
    ]);
    let key = added
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .unwrap()
        .trim()
        .to_string();
    reaper
        .0
        .push(spawn(&["serve", "--config", cfg], "spgate is serving"));

    // Sandbox traffic: order lists, order addresses (restricted, the address encrypted: each
    // order gets a retention record), marketplaces, and refused requests.
    let proxy = format!("http://127.0.0.1:{port}");
    let orders = spgate::sandbox::Sandbox::synthetic_order_ids(
        &spgate::sandbox::Sandbox::open_enrollment_seller(REFRESH_TOKEN),
    );
    let client = spgate::auth::control_plane::builder()
        .build()
        .expect("a client");
    let list = format!(
        "{proxy}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2026-01-01T00:00:00Z"
    );
    for _ in 0..3 {
        assert_eq!(get(&client, &list, &key).await, 200);
    }
    for order in orders.iter().take(4) {
        let url = format!("{proxy}/orders/v0/orders/{order}/address");
        assert_eq!(get(&client, &url, &key).await, 200, "{url}");
    }
    let marketplaces = format!("{proxy}/sellers/v1/marketplaceParticipations");
    assert_eq!(get(&client, &marketplaces, &key).await, 200);
    assert_eq!(get(&client, &marketplaces, "spg_not-a-key").await, 401);

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    // Screenshots of an earlier run must not pass for this run's.
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg("console.mjs")
        .current_dir(&project)
        .env("CONSOLE_URL", format!("http://127.0.0.1:{admin_port}"))
        .env("PROXY_URL", &proxy)
        .env("OPS_TOKEN", OPS_TOKEN)
        .env("SECURITY_TOKEN", SECURITY_TOKEN)
        .env("SELLER", SELLER)
        .env("ORDER_ID", &orders[0])
        .env("ORDER_ID_2", &orders[1])
        .env("SCREENSHOTS", &shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed");
    for page in [
        "overview",
        "ratelimits",
        "sellers",
        "audit",
        "retention",
        "overview-phone",
    ] {
        let shot = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
            "{} was not saved",
            shot.display()
        );
    }

    // The refusals are counted in /metrics.
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, at_least) in [
        ("bad_token", 1),
        ("forbidden", 6),
        ("csrf", 3),
        ("cross_origin", 2),
    ] {
        let count: u64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "spgate_console_refused_total{{reason=\"{reason}\"}} "
                ))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(count >= at_least, "{reason}: {count} in {metrics}");
    }

    // Every console action is in the audit log, with the admin's name; a refused sign-in with
    // the client's address, and no token anywhere.
    let mut actions = Vec::new();
    let mut refused_sign_ins = 0;
    let mut log_text = String::new();
    spgate::audit::query::query(
        &dir.path().join("audit"),
        &spgate::audit::query::Filters::default(),
        |line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            log_text.push_str(line);
            if v["kind"] == "sign_in" && v["reason"] == "unknown_token" {
                assert_eq!(v["source"], "127.0.0.1", "{line}");
                refused_sign_ins += 1;
            }
            if v["actor"].is_string() {
                actions.push(format!(
                    "{} {} {}",
                    v["kind"].as_str().unwrap_or(""),
                    v["actor"].as_str().unwrap_or(""),
                    v["reason"].as_str().unwrap_or("")
                ));
            }
            Ok(())
        },
    )
    .unwrap();
    for expected in [
        "sign_in console-ops signed_in",
        "reload console-ops applied",
        "invite_created console-ops region_eu",
        "key_created console-ops ",
        "key_revoked console-ops ",
        "sign_in console-ops signed_out",
        "sign_in console-security signed_in",
        "legal_hold console-security hold_set",
        "export console-security by_order",
        "erase console-security data_subject_request",
        "sign_in console-security signed_out",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "no {expected:?} in {actions:?}"
        );
    }
    assert!(refused_sign_ins >= 1, "the refused sign-in is audited");
    for secret in [OPS_TOKEN, SECURITY_TOKEN, "not-an-admin-token"] {
        assert!(!log_text.contains(secret), "a token in the audit log");
    }
}
