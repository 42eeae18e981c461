//! The access log loses nothing, under faults, with the real binary: `spgate serve` processes in
//! front of an in-process sandbox (scripted to be slow where needed), Redis as the store.
//!
//! - Client-abandoned requests are recorded `client_closed`.
//! - SIGTERM with requests in flight and a short drain: each is recorded `shutdown`, exit 0.
//! - Repeated SIGKILL mid-traffic: no answered PII response lacks its record; the chain verifies;
//!   the abrupt stops are reported as gaps (verify exits non-zero without `--allow-gaps`).
//! - A file size limit (RLIMIT_FSIZE through `prlimit`, unprivileged) makes audit writes fail
//!   like a full disk: no PII response is served without its record, readiness says 503, a gap
//!   record appears after recovery and verify exits non-zero on it.
//! - 20,000 unauthenticated requests make a handful of records.
//! - SIGTERM while a client has stopped reading a large document download: the drain cuts the
//!   download, records it `shutdown` with the bytes sent so far, and the process exits in time.
//! - A client that stops reading a download loses its connection after `write_timeout_ms`, over
//!   plain TCP and over TLS, and the download is recorded `client_closed`.

mod common;
mod pki;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{free_port, output_ok, spawn_ready, BIN};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use spgate::sandbox::{QuotaMode, Sandbox, SandboxConfig, Script};

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const AUDIT_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr";
const CLIENT_ID: &str = "amzn1.application-oa2-client.audit-faults";
const CLIENT_SECRET: &str = "audit-faults-client-secret";
const SELLER: &str = "A1AUDITFAULTS";
const REFRESH: &str = "Atzr|audit-faults-synthetic";
const PII_PATH: &str = "/orders/v0/orders/TEST_CASE_200/address";
const PII_OP: &str = "ordersV0.getOrderAddress";

/// A gateway process (killed when dropped).
struct Gw {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gw {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the gateway did not exit within {within:?}");
    }
}

/// The test's world: a sandbox, a Redis prefix, an audit directory, a seller and a tool key.
struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    sandbox_url: String,
    prefix: String,
    key: String,
    _sandbox_stop: tokio::sync::oneshot::Sender<()>,
}

impl World {
    async fn new() -> World {
        let sandbox = Sandbox::new(SandboxConfig {
            lwa_clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
            access_token_ttl: Duration::from_secs(3600),
            quotas: QuotaMode::Off,
            require_rdt: false,
            open_enrollment: false,
        });
        sandbox.add_seller(SELLER, REFRESH);
        let sl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_url = format!("http://{}", sl.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sandbox.clone().serve(sl, async {
            let _ = stopped.await;
        }));
        let prefix = format!(
            "spgate-af-{}:",
            spgate::crypto::random_token::<9>().unwrap()
        );
        let mut w = World {
            dir: tempfile::tempdir().unwrap(),
            sandbox,
            sandbox_url,
            prefix,
            key: String::new(),
            _sandbox_stop: stop,
        };
        let cfg = w.config(free_port(), free_port(), 5);
        let token_file = w.dir.path().join("rt");
        std::fs::write(&token_file, REFRESH).unwrap();
        let cfg = cfg.to_str().unwrap().to_string();
        run(&[
            "sellers",
            "--config",
            &cfg,
            "add",
            "--id",
            SELLER,
            "--region",
            "na",
            "--refresh-token-file",
            token_file.to_str().unwrap(),
        ]);
        let added = run(&[
            "clients", "--config", &cfg, "add", "--tool", "labels", "--role", "orders", "--seller",
            SELLER,
        ]);
        w.key = added
            .lines()
            .find_map(|l| l.strip_prefix("api key:"))
            .unwrap()
            .trim()
            .to_string();
        w
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn config(&self, port: u16, admin: u16, drain_secs: u64) -> PathBuf {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
drain_timeout_seconds = {drain_secs}
max_connections = 4096
[admin]
listen = "127.0.0.1:{admin}"
[upstream.endpoints]
na = "{sandbox}"
eu = "{sandbox}"
fe = "{sandbox}"
[lwa]
token_url = "{sandbox}/auth/o2/token"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "SPGATE_LWA_CLIENT_SECRET" }}
[store]
type = "redis"
url = "redis://127.0.0.1:6379"
key_prefix = "{prefix}"
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[ratelimit]
default_max_wait_ms = 600000
[roles.orders.pii]
address = "pass"
name = "pass"
[audit]
dir = {audit:?}
instance = "gw"
key = {{ env = "SPGATE_AUDIT_KEY" }}
[log]
format = "json"
level = "info"
"#,
            sandbox = self.sandbox_url,
            prefix = self.prefix,
            audit = self.audit_dir().display().to_string(),
        );
        let path = self.dir.path().join(format!("spgate-{port}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn serve(&self, drain_secs: u64) -> Gw {
        self.serve_with(drain_secs, "")
    }

    /// Serves with extra `[audit]` keys.
    fn serve_with(&self, drain_secs: u64, audit_keys: &str) -> Gw {
        self.serve_edited(drain_secs, |text, _| {
            text.replace(
                "instance = \"gw\"\n",
                &format!("instance = \"gw\"\n{audit_keys}\n"),
            )
        })
    }

    /// Serves with a config `edit` made of the default one (and the proxy port).
    fn serve_edited(&self, drain_secs: u64, edit: impl FnOnce(String, u16) -> String) -> Gw {
        let (port, admin) = (free_port(), free_port());
        let cfg = self.config(port, admin, drain_secs);
        let text = edit(std::fs::read_to_string(&cfg).unwrap(), port);
        std::fs::write(&cfg, text).unwrap();
        let child = spawn(
            &["serve", "--config", cfg.to_str().unwrap()],
            "spgate is serving",
        );
        Gw { child, port, admin }
    }

    /// The records of the chain, as JSON values.
    fn records(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(self.audit_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// `spgate audit verify`: (exit success, output).
    fn verify(&self, allow_gaps: bool) -> (bool, String) {
        let dir = self.audit_dir();
        let mut args = vec!["audit", "verify", dir.to_str().unwrap()];
        if allow_gaps {
            args.push("--allow-gaps");
        }
        let out = command(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", CLIENT_SECRET)
        .env("SPGATE_MASTER_KEY", MASTER)
        .env("SPGATE_AUDIT_KEY", AUDIT_KEY);
    c
}

fn run(args: &[&str]) -> String {
    output_ok(command(args))
}

fn spawn(args: &[&str], ready: &str) -> Child {
    spawn_ready(command(args), ready)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A PII request: (status, request id).
async fn get(client: &HttpClient, url: &str, key: &str) -> (u16, String) {
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {key}"))
        .header("x-spgate-seller", SELLER)
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-spgate-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let _ = resp.into_body().collect().await;
    (status, id)
}

fn slow(sandbox: &Sandbox, delay: Duration) {
    let mut s = Script::json(
        http::StatusCode::OK,
        serde_json::json!({"payload": {"AmazonOrderId": "TEST_CASE_200"}}),
    );
    s.header_delay = delay;
    sandbox.script(PII_OP, s);
}

fn with_outcome<'a>(records: &'a [serde_json::Value], outcome: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "request" && r["outcome"] == outcome)
        .collect()
}

/// Waits (bounded) until `check` holds on the chain's records.
async fn eventually(world: &World, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let records = world.records();
        if check(&records) {
            return;
        }
        assert!(Instant::now() < until, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_abandoned_requests_make_fifty_client_closed_records() {
    let world = World::new().await;
    slow(&world.sandbox, Duration::from_secs(30));
    let mut gw = world.serve(5);
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url, key) = (client.clone(), gw.url(PII_PATH), world.key.clone());
        tasks.push(tokio::spawn(async move {
            // The client gives up after 1.5 s: the connection closes mid-request.
            tokio::time::timeout(Duration::from_millis(1500), get(&client, &url, &key)).await
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(answer.is_err(), "no answer was expected: {answer:?}");
    }
    eventually(&world, "50 client_closed records", |r| {
        with_outcome(r, "client_closed").len() == 50
    })
    .await;
    let records = world.records();
    let closed = with_outcome(&records, "client_closed");
    assert!(closed
        .iter()
        .all(|r| r["tool"] == "labels" && r["operation"] == PII_OP && r.get("status").is_none()));
    assert!(
        closed.iter().any(|r| r["upstream_called"] == true),
        "some reached the (slow) upstream"
    );
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hundred_in_flight_records_a_hundred_shutdowns_and_exits_zero() {
    let world = World::new().await;
    slow(&world.sandbox, Duration::from_secs(60));
    let mut gw = world.serve(2);
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url, key) = (client.clone(), gw.url(PII_PATH), world.key.clone());
        tasks.push(tokio::spawn(async move { get(&client, &url, &key).await }));
    }
    // Every request is inside the gateway (waiting on the slow upstream or for a token).
    let until = Instant::now() + Duration::from_secs(15);
    while world.sandbox.stats().requests_total < 30 {
        assert!(Instant::now() < until, "requests did not reach the sandbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("-TERM");
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().0);
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let records = world.records();
    assert_eq!(with_outcome(&records, "shutdown").len(), 100);
    assert_eq!(
        records.last().map(|r| r["kind"].clone()),
        Some("audit_stopped".into())
    );
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_lose_no_answered_pii_response_and_the_gaps_are_reported() {
    let world = World::new().await;
    let client = client();
    let mut answered = Vec::new();
    for round in 0..20 {
        let mut gw = world.serve(5);
        let mut tasks = Vec::new();
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..40 {
            let (client, url, key) = (client.clone(), gw.url(PII_PATH), world.key.clone());
            let got = got.clone();
            tasks.push(tokio::spawn(async move {
                let req = http::Request::get(url)
                    .header("authorization", format!("Bearer {key}"))
                    .header("x-spgate-seller", SELLER)
                    .body(Empty::new())
                    .unwrap();
                let resp = client.request(req).await.ok()?;
                let status = resp.status();
                let id = resp
                    .headers()
                    .get("x-spgate-request-id")?
                    .to_str()
                    .ok()?
                    .to_string();
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                // An answer is a complete PII response.
                let answered = status == 200 && body.starts_with(b"{");
                if answered {
                    got.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                answered.then_some(id)
            }));
        }
        // Killed mid-traffic: once the first answers are out, at a point that varies by round.
        let until = Instant::now() + Duration::from_secs(10);
        while got.load(std::sync::atomic::Ordering::SeqCst) < 3 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(3 * round)).await;
        gw.signal("-KILL");
        gw.wait_exit(Duration::from_secs(10));
        for t in tasks {
            if let Some(id) = t.await.unwrap() {
                answered.push(id);
            }
        }
    }
    assert!(
        answered.len() > 50,
        "too few answers to mean anything: {}",
        answered.len()
    );
    assert!(answered.iter().all(|id| !id.is_empty()));
    let recorded: std::collections::HashSet<String> = world
        .records()
        .iter()
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered without a record",
        missing.len()
    );
    // The chain verifies; the abrupt stops are reported, never silent.
    // SIGTERM right after "spgate is serving": the handler is installed before serving.
    let mut gw = world.serve(5);
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let (ok, out) = world.verify(true);
    assert!(ok, "{out}");
    assert!(out.contains("GAP"), "{out}");
    let (ok, _) = world.verify(false);
    assert!(!ok, "verify exits non-zero on gaps without --allow-gaps");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_serves_no_pii_without_its_record_and_leaves_a_gap() {
    let world = World::new().await;
    let mut gw = world.serve(5);
    let client = client();
    let (status, first) = get(&client, &gw.url(PII_PATH), &world.key).await;
    assert_eq!(status, 200);
    let ready = |gw: &Gw| {
        let url = format!("http://127.0.0.1:{}/readyz", gw.admin);
        let client = client.clone();
        async move {
            let req = http::Request::get(url).body(Empty::new()).unwrap();
            client.request(req).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(ready(&gw).await, 200);
    // No byte more may be written to the gateway's chain past its current end (a full disk).
    // Its own file: the CLI's chain file (World::new) may be longer, and a limit at its size
    // would leave the gateway's file room for a short record (a gap record written between
    // two failures).
    let size = std::fs::read_dir(world.audit_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("audit-gw-") && name.ends_with(".jsonl")
        })
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap();
    let pid = gw.child.id().to_string();
    let limit = |value: String| {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={value}:")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit");
    };
    limit(size.to_string());
    let mut served = vec![first];
    let mut refused = 0;
    for _ in 0..20 {
        let (status, id) = get(&client, &gw.url(PII_PATH), &world.key).await;
        match status {
            200 => served.push(id),
            503 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        refused, 20,
        "no PII response while the log cannot be written"
    );
    assert_eq!(ready(&gw).await, 503);
    // Space again: recovery is automatic.
    limit("unlimited".into());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, id) = get(&client, &gw.url(PII_PATH), &world.key).await;
        if status == 200 {
            served.push(id);
            break;
        }
        assert!(Instant::now() < until, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready(&gw).await, 200);
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let records = world.records();
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert!(served.iter().all(|id| !id.is_empty()));
    let missing: Vec<&String> = served
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} of {served:?} not in {records:#?}"
    );
    let gaps: Vec<_> = records.iter().filter(|r| r["kind"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0]["count"].as_u64().unwrap() >= 1);
    let (ok, out) = world.verify(false);
    assert!(!ok, "verify exits non-zero on the gap: {out}");
    assert!(out.contains("GAP"), "{out}");
    let (ok, out) = world.verify(true);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_unauthenticated_requests_make_a_handful_of_records() {
    let world = World::new().await;
    let mut gw = world.serve(5);
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..20_000 {
        let (client, url, sem) = (client.clone(), gw.url(PII_PATH), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer spg_not-a-key-{i}"))
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 401 || s == 429, "{s}");
        refused += 1;
    }
    assert_eq!(refused, 20_000);
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let records = world.records();
    let noise: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "unauthenticated")
        .collect();
    assert!(records.len() <= 10, "{} records", records.len());
    let counted: u64 = noise.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 20_000, "every refusal is counted: {noise:?}");
    assert!(noise.iter().all(|r| r["source"] == "127.0.0.1"));
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_it_serves_drains_and_exits_zero() {
    let world = World::new().await;
    for _ in 0..5 {
        // No request first: the handler must be in place before "spgate is serving".
        let mut gw = world.serve(5);
        gw.signal("-TERM");
        assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    }
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_non_zero_when_records_could_not_be_written_at_shutdown() {
    let world = World::new().await;
    let mut gw = world.serve(5);
    let client = client();
    assert_eq!(get(&client, &gw.url(PII_PATH), &world.key).await.0, 200);
    let ok = Command::new("prlimit")
        .args(["--pid", &gw.child.id().to_string(), "--fsize=0:"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit");
    for _ in 0..5 {
        assert_eq!(get(&client, &gw.url(PII_PATH), &world.key).await.0, 503);
    }
    gw.signal("-TERM");
    let code = gw.wait_exit(Duration::from_secs(15));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_cli_commands_are_all_recorded_in_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new().await;
    let cfg = world.config(free_port(), free_port(), 5);
    let cfg = cfg.to_str().unwrap().to_string();
    let children: Vec<Child> = (0..6)
        .map(|i| {
            command(&[
                "clients",
                "--config",
                &cfg,
                "add",
                "--tool",
                &format!("parallel-{i}"),
                "--role",
                "orders",
                "--seller",
                SELLER,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let created = world
        .records()
        .iter()
        .filter(|r| r["kind"] == "key_created")
        .count();
    // One by World::new, six in parallel.
    assert_eq!(created, 7);
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&world.audit_dir()), 0o700);
    for e in std::fs::read_dir(world.audit_dir()).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_non_pii_keeps_serving_operations_without_pii_while_the_log_is_failing() {
    let world = World::new().await;
    let mut gw = world.serve_with(5, "on_failure = \"serve_non_pii\"");
    let client = client();
    let plain = "/supplySources/2020-07-01/supplySources";
    assert_eq!(get(&client, &gw.url(plain), &world.key).await.0, 200);
    assert_eq!(get(&client, &gw.url(PII_PATH), &world.key).await.0, 200);
    let pid = gw.child.id().to_string();
    let limit = |value: &str| {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={value}:")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit");
    };
    limit("0");
    // The first PII response finds the log failing and is withheld; so is every one after it.
    for _ in 0..3 {
        assert_eq!(get(&client, &gw.url(PII_PATH), &world.key).await.0, 503);
    }
    for _ in 0..3 {
        assert_eq!(get(&client, &gw.url(plain), &world.key).await.0, 200);
    }
    limit("unlimited");
    let until = Instant::now() + Duration::from_secs(10);
    while get(&client, &gw.url(PII_PATH), &world.key).await.0 != 200 {
        assert!(Instant::now() < until, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let records = world.records();
    let gaps: Vec<u64> = records
        .iter()
        .filter(|r| r["kind"] == "gap")
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    // The withheld PII response is in the gap; the records queued while the log was failing
    // are either written once it recovered or counted in the gap too: none is silent.
    assert_eq!(gaps.len(), 1);
    let refused = records.iter().filter(|r| r["status"] == 503).count() as u64;
    assert!(
        gaps[0] >= 1 && refused + gaps[0] >= 4,
        "{gaps:?}, {refused} refusals recorded"
    );
}

/// A document host on loopback whose every GET is answered with a flat-file report of synthetic
/// buyers, `rows` rows long, written as fast as the reader takes it.
async fn large_document_host(rows: usize) -> (std::net::SocketAddr, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HEADER: &str = "amazon-order-id\tbuyer-name\tship-address-1\n";
    let row = |i: usize| format!("{i:019}\tJane Synthetic\t1 Synthetic Street\n");
    let size = (HEADER.len() + rows * row(0).len()) as u64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {size}\r\n\r\n{HEADER}"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut chunk = String::new();
                for i in 0..rows {
                    chunk.push_str(&row(i));
                    if chunk.len() > 64 * 1024 || i + 1 == rows {
                        if s.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        chunk.clear();
                    }
                }
            });
        }
    });
    (addr, size)
}

/// A client's connection to the gateway: plain TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The gateway's proxy listener over TLS: the CA its certificate chains to.
struct Tls {
    ca: pki::Ca,
    server: pki::Issued,
}

impl Tls {
    fn new(world: &World) -> Tls {
        let ca = pki::Ca::new(world.dir.path(), "ca");
        let server = ca.server(world.dir.path(), "server");
        Tls { ca, server }
    }

    /// The `[server.tls]` section.
    fn section(&self) -> String {
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            self.server.cert_file, self.server.key_file
        )
    }
}

/// Connects to the gateway's proxy listener (through TLS when it speaks TLS).
async fn connect(gw: &Gw, tls: Option<&Tls>) -> Box<dyn Io> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let Some(tls) = tls else {
        return Box::new(tcp);
    };
    let config = pki::client_config(&tls.ca, &[b"http/1.1"], None);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Box::new(connector.connect(name, tcp).await.unwrap())
}

/// A gateway serving a large report document through `world`, and a client that read its head
/// and the first part of it, then stopped reading (with every buffer between them full).
/// `server_keys` go into `[server]`, `outbound_keys` into `[outbound]`; with `tls` the proxy
/// listener speaks TLS.
async fn stalled_download(
    world: &World,
    drain_secs: u64,
    server_keys: &str,
    outbound_keys: &str,
    tls: Option<&Tls>,
) -> (Gw, Box<dyn Io>, Vec<u8>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // About 150 MB: far more than the socket buffers between gateway and client hold.
    let (host, size) = large_document_host(2_000_000).await;
    world.sandbox.script(
        "reports_2021-06-30.getReportDocument",
        Script::json(
            http::StatusCode::OK,
            serde_json::json!({ "reportDocumentId": "DOC-STALLED", "url": format!("http://{host}/report") }),
        ),
    );
    let (scheme, tls_section) = match tls {
        Some(t) => ("https://localhost", t.section()),
        None => ("http://127.0.0.1", String::new()),
    };
    let gw = world.serve_edited(drain_secs, |text, port| {
        text.replace(
            "[server]\n",
            &format!("[server]\npublic_url = \"{scheme}:{port}\"\n{server_keys}\n"),
        ) + &format!("[outbound]\nallow_loopback = [\"{host}\"]\n{outbound_keys}\n{tls_section}")
    });
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        connect(&gw, tls).await,
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/reports/2021-06-30/documents/DOC-STALLED")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {}", world.key))
        .header("x-spgate-seller", SELLER)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let link: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let link = link["url"].as_str().unwrap();
    let path = link
        .strip_prefix(&format!("{scheme}:{}", gw.port))
        .expect("a link on the public URL")
        .to_string();

    // The client reads the head and the first part of the document, then stops reading.
    let mut sock = connect(&gw, tls).await;
    sock.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while received.len() < 256 * 1024 {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "the download ended early");
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
    (gw, sock, received, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_download_whose_client_stopped_reading_and_records_it_as_shutdown() {
    use tokio::io::AsyncReadExt;
    const DRAIN: Duration = Duration::from_secs(2);
    // The drain, then the grace for a cut request's answer; a little slack for a loaded machine.
    const BOUND: Duration = Duration::from_secs(2 + 2 + 1);
    let world = World::new().await;
    let (mut gw, mut sock, mut received, size) =
        stalled_download(&world, DRAIN.as_secs(), "", "", None).await;
    let mut buf = vec![0u8; 64 * 1024];
    // Long enough for every buffer between the gateway and the client to fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let term = Instant::now();
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let took = term.elapsed();
    assert!(took < BOUND, "exited {took:?} after SIGTERM");

    // The client got an aborted transfer: no terminating chunk.
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    assert!(!received.ends_with(b"0\r\n\r\n"), "the download was cut");
    assert!((received.len() as u64) < size);

    let records = world.records();
    let downloads: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["operation"] == "documents.download" && r["completed"].is_boolean())
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:#?}");
    let d = downloads[0];
    assert_eq!(d["outcome"], "shutdown", "{d}");
    assert_eq!(d["completed"], false, "{d}");
    assert_eq!(d["document_id"], "DOC-STALLED", "{d}");
    let sent = d["bytes"].as_u64().unwrap();
    assert!(sent > 0 && sent < size, "{sent} of {size} bytes");
    let categories: Vec<&str> = d["pii"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["category"].as_str().unwrap())
        .collect();
    assert!(categories.contains(&"name"), "{categories:?}");
    assert_eq!(
        records.last().map(|r| r["kind"].clone()),
        Some("audit_stopped".into())
    );
    let (ok, out) = world.verify(false);
    assert!(ok, "{out}");
}

/// A client that stops reading a download loses its connection after `write_timeout_ms` without
/// a byte accepted: the gateway closes it (no waiting for the download's own deadline) and
/// records the download with the bytes sent, not completed, outcome `client_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_disconnected_and_recorded() {
    client_stops_reading_a_download(None).await;
}

/// The same over TLS (review L2): the TLS layer buffers what hyper writes, and the deadline
/// must still see a client that accepts no bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_a_download_is_disconnected_and_recorded() {
    let world = World::new().await;
    let tls = Tls::new(&world);
    client_stops_reading_a_download_in(&world, Some(&tls)).await;
}

async fn client_stops_reading_a_download(tls: Option<&Tls>) {
    let world = World::new().await;
    client_stops_reading_a_download_in(&world, tls).await;
}

async fn client_stops_reading_a_download_in(world: &World, tls: Option<&Tls>) {
    use tokio::io::AsyncReadExt;
    let (mut gw, mut sock, mut received, size) = stalled_download(
        world,
        30,
        "write_timeout_ms = 1000",
        "document_timeout_seconds = 3600",
        tls,
    )
    .await;
    // The record of the download's end: written once the connection is closed.
    eventually(world, "the stalled download is recorded", |records| {
        records
            .iter()
            .any(|r| r["operation"] == "documents.download" && r["completed"].is_boolean())
    })
    .await;
    let records = world.records();
    let d = records
        .iter()
        .find(|r| r["operation"] == "documents.download" && r["completed"].is_boolean())
        .unwrap();
    assert_eq!(d["outcome"], "client_closed", "{d}");
    assert_eq!(d["completed"], false, "{d}");
    let sent = d["bytes"].as_u64().unwrap();
    assert!(sent > 0 && sent < size, "{sent} of {size} bytes");
    // The connection is closed: what was in the buffers, then the end.
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the gateway kept the connection open");
    assert!((received.len() as u64) < size);
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}
