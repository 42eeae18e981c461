//! Retention with the real binary: the admin order routes, `spgate vault export|erase|report`,
//! and a gateway killed with SIGKILL before an order's due date deleting it on its next start.
//! PII is planted through the library on the same data directory; all of it is synthetic.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use spgate::crypto::MasterKey;
use spgate::secret::Secret;
use spgate::store::embedded::EmbeddedStore;
use spgate::store::{DeliverySource, Store};
use spgate::vault::{RetentionConfig, SystemClock, Vault};
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_spgate");
const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const OPS: &str = "ops-token-0123456789abcdef0123456789";
const SEC: &str = "sec-token-0123456789abcdef0123456789";
const O1: &str = "902-1111111-0000001";
const O2: &str = "902-1111111-0000002";
const PII: &str = "{\"BuyerName\":\"Jane Example\",\"Phone\":\"+1 206 555 0100\",\"AddressLine1\":\"123 Example Street\"}";
const DAY: Duration = Duration::from_secs(86_400);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example config on a fresh data directory and free ports, with ops and security tokens.
fn write_config(dir: &Path) -> (PathBuf, u16) {
    let admin_port = free_port();
    let text = include_str!("../config/spgate.example.toml")
        .replace(
            "data_dir = \"data\"",
            &format!("data_dir = {:?}", dir.join("data").display().to_string()),
        )
        .replace(
            "dir = \"data/audit\"",
            &format!("dir = {:?}", dir.join("audit").display().to_string()),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
        )
        .replace(
            "listen = \"127.0.0.1:9090\"",
            &format!("listen = \"127.0.0.1:{admin_port}\""),
        )
        + "\n[[admin.tokens]]\nname = \"ops-oncall\"\nrole = \"ops\"\ntoken = { env = \"SPGATE_TEST_OPS\" }\n\
           [[admin.tokens]]\nname = \"dpo\"\nrole = \"security\"\ntoken = { env = \"SPGATE_TEST_SEC\" }\n";
    let path = dir.join("spgate.toml");
    std::fs::write(&path, text).unwrap();
    (path, admin_port)
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .env(
            "SPGATE_AUDIT_KEY",
            "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr",
        )
        .env("SPGATE_TEST_OPS", OPS)
        .env("SPGATE_TEST_SEC", SEC);
    c
}

fn spgate(args: &[&str]) -> std::process::Output {
    command(args).output().expect("spgate runs")
}

fn report(cfg: &Path) -> serde_json::Value {
    let out = spgate(&[
        "vault",
        "--config",
        cfg.to_str().unwrap(),
        "report",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A vault on the data directory, as the gateway opens it.
fn vault(dir: &Path) -> (Vault, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.join("data")).unwrap());
    let master = MasterKey::from_base64("k1", &Secret::new(MASTER.into())).unwrap();
    let vault = Vault::new(
        store.clone(),
        Arc::new(master),
        RetentionConfig::defaults(),
        Arc::new(SystemClock),
        Arc::new(|_| {}),
    );
    (vault, store)
}

/// Occurrences of `needle` in the database file and its WAL.
fn on_disk(dir: &Path, needle: &[u8]) -> usize {
    ["spgate.db", "spgate.db-wal"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join("data").join(name)).unwrap_or_default();
            bytes.windows(needle.len()).filter(|w| *w == needle).count()
        })
        .sum()
}

/// A running `spgate serve` whose log lines can be awaited.
struct Serve {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far: a line logged before the one awaited first (the start-up
    /// retention pass may finish before "spgate is serving") is still found.
    seen: std::cell::RefCell<Vec<String>>,
}

impl Serve {
    fn start(cfg: &Path) -> Serve {
        let mut child = command(&["serve", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let serve = Serve {
            child,
            lines,
            seen: std::cell::RefCell::new(Vec::new()),
        };
        serve.wait_for("spgate is serving");
        serve
    }

    fn wait_for(&self, needle: &str) {
        if self.seen.borrow().iter().any(|l| l.contains(needle)) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                assert!(!line.contains("Jane"), "PII reached the log: {line}");
                let found = line.contains(needle);
                self.seen.borrow_mut().push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no log line containing {needle:?}");
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "spgate did not exit after {sig}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn admin(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn a_gateway_killed_with_sigkill_before_the_due_date_deletes_on_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, admin_port) = write_config(dir.path());
    let mut first = Serve::start(&cfg);

    // PII cached for two orders, encrypted under their keys; a field handed out encrypted.
    let (v, store) = vault(dir.path());
    v.cache_put("A1", O1, "GET /orders/v0/orders/1/address", PII.as_bytes())
        .await
        .unwrap();
    v.cache_put("A1", O2, "GET /orders/v0/orders/2/address", PII.as_bytes())
        .await
        .unwrap();
    let key = v.order_key("A1", O1).await.unwrap();
    let envelope = key.seal_field(O1, "Jane Example").unwrap();
    let wrapped = store.order_key("A1", O1).await.unwrap().unwrap().wrapped;
    let sealed = store.cached_by_order("A1", O1).await.unwrap()[0]
        .sealed
        .clone();
    drop((v, store));

    // Ops records the delivery ten days ago: due in twenty days.
    let now = OffsetDateTime::now_utc();
    let body = serde_json::json!({"seller": "A1", "delivered_at": rfc3339(now - 10 * DAY)});
    let path = format!("/admin/orders/{O1}/delivered");
    let (status, _) = admin(admin_port, "POST", &path, SEC, body.clone()).await;
    assert_eq!(status, 403, "the security role does not record deliveries");
    let (status, answer) = admin(admin_port, "POST", &path, OPS, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivery_source"], "event");
    let due = spgate::vault::parse_rfc3339(answer["due"].as_str().unwrap()).unwrap();
    assert!(
        (due - (now + 20 * DAY)).whole_seconds().abs() <= 2,
        "{answer}"
    );

    // A legal hold on the other order (security only), then released.
    let hold = format!("/admin/orders/{O2}/hold");
    let body = serde_json::json!({"seller": "A1", "reason": "litigation 2025-17",
        "until": rfc3339(now + 90 * DAY)});
    assert_eq!(
        admin(admin_port, "POST", &hold, OPS, body.clone()).await.0,
        403
    );
    let (status, answer) = admin(admin_port, "POST", &hold, SEC, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "held");
    assert_eq!(answer["legal_hold"]["by"], "dpo");
    let bad = serde_json::json!({"seller": "A1", "reason": "", "until": rfc3339(now + DAY)});
    assert_eq!(admin(admin_port, "POST", &hold, SEC, bad).await.0, 400);
    let unknown = "/admin/orders/902-0000000-9999999/hold";
    let body = serde_json::json!({"seller": "A1", "reason": "x", "until": rfc3339(now + DAY)});
    assert_eq!(admin(admin_port, "POST", unknown, SEC, body).await.0, 404);
    let (status, answer) = admin(
        admin_port,
        "DELETE",
        &format!("{hold}?seller=A1"),
        SEC,
        serde_json::Value::Null,
    )
    .await;
    assert_eq!((status, answer["state"].as_str()), (200, Some("active")));

    let before = report(&cfg);
    assert_eq!(before["overdue"], 0, "{before}");
    assert_eq!(before["active"], 2, "{before}");
    first.signal("-KILL");

    // While it is down, the delivery turns out to be forty days ago: O1 falls due.
    let (v, _) = vault(dir.path());
    v.delivered("A1", O1, now - 40 * DAY, DeliverySource::Ops)
        .await
        .unwrap();
    drop(v);
    let down = report(&cfg);
    assert_eq!(down["overdue"], 1, "{down}");
    assert!(
        on_disk(dir.path(), wrapped.as_bytes()) > 0,
        "the scan sees the key"
    );
    assert!(
        on_disk(dir.path(), &sealed[..24]) > 0,
        "the scan sees the ciphertext"
    );
    assert_eq!(
        on_disk(dir.path(), b"Jane Example"),
        0,
        "PII only as ciphertext"
    );

    let mut second = Serve::start(&cfg);
    second.wait_for("Retention pass deleted");
    let after = report(&cfg);
    assert_eq!(after["overdue"], 0, "{after}");
    assert_eq!(
        (after["deleted"].as_u64(), after["active"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        on_disk(dir.path(), wrapped.as_bytes()),
        0,
        "the data key is gone"
    );
    assert_eq!(
        on_disk(dir.path(), &sealed[..24]),
        0,
        "the cached PII is gone"
    );
    assert_eq!(on_disk(dir.path(), key.expose_bytes()), 0);
    let (v, _) = vault(dir.path());
    let (kid, _) = spgate::crypto::parse_field(&envelope).unwrap();
    assert!(
        v.key_by_id(kid).await.unwrap().is_none(),
        "the encrypted copy can no longer be revealed"
    );
    assert!(v
        .cache_get("A1", "GET /orders/v0/orders/2/address")
        .await
        .unwrap()
        .is_some());
    second.signal("-TERM");
}

#[tokio::test]
async fn vault_export_and_erase_answer_data_subject_requests_by_order_and_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = write_config(dir.path());
    let cfg_s = cfg.to_str().unwrap();
    let (v, store) = vault(dir.path());
    v.cache_put("A1", O1, "address", PII.as_bytes())
        .await
        .unwrap();
    v.link_pseudonym("A1", O1, "psn_jane0example", None)
        .await
        .unwrap();
    v.link_pseudonym("A1", O2, "psn_jane0example", None)
        .await
        .unwrap();
    v.cache_put("A1", O2, "address-2", PII.as_bytes())
        .await
        .unwrap();
    let wrapped = store.order_key("A1", O1).await.unwrap().unwrap().wrapped;
    v.hold(
        "A1",
        O2,
        "tax audit",
        OffsetDateTime::now_utc() + DAY,
        "dpo",
    )
    .await
    .unwrap();
    drop((v, store));

    let file = dir.path().join("export.json");
    let out = spgate(&[
        "vault",
        "--config",
        cfg_s,
        "export",
        "--order",
        O1,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let export: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        export["orders"][0]["cached_responses"][0]["BuyerName"],
        "Jane Example"
    );
    assert_eq!(export["orders"][0]["pseudonyms"][0], "psn_jane0example");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Jane"),
        "no PII in the log"
    );
    let out = spgate(&[
        "vault",
        "--config",
        cfg_s,
        "export",
        "--pseudonym",
        "psn_jane0example",
    ]);
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(export["orders"].as_array().unwrap().len(), 2);

    let out = spgate(&[
        "vault",
        "--config",
        cfg_s,
        "erase",
        "--pseudonym",
        "psn_jane0example",
    ]);
    assert!(!out.status.success(), "one order is under legal hold");
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    let out = spgate(&["vault", "--config", cfg_s, "erase", "--order", O1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("erased A1 {O1}")), "{printed}");
    // Audited in the command line's own chain.
    let audit_dir = dir.path().join("audit");
    let log = spgate(&["audit", "query", audit_dir.to_str().unwrap(), "--json"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.lines().any(|l| l.contains("\"kind\":\"erase\"")
            && l.contains(O1)
            && l.contains("\"actor\":\"cli\"")
            && l.contains("\"reason\":\"data_subject_request\"")),
        "audited: {log}"
    );
    assert_eq!(on_disk(dir.path(), wrapped.as_bytes()), 0);
    let out = spgate(&["vault", "--config", cfg_s, "export", "--order", O1]);
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(export["orders"][0]["state"], "deleted");
    assert_eq!(
        export["orders"][0]["cached_responses"],
        serde_json::json!([])
    );
    let out = spgate(&["vault", "--config", cfg_s, "report"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("overdue: 0") && text.contains("held:       1"),
        "{text}"
    );
    assert!(
        !spgate(&["vault", "--config", cfg_s, "export", "--order", "902-none"])
            .status
            .success()
    );
}
