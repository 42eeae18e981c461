//! Retention evidence is consistent across processes, on every backend (embedded SQLite,
//! Redis, PostgreSQL): a `spgate vault report --json` or `vault export` run from another process
//! right after a real `spgate serve` finished a deletion pass counts that pass (the order
//! deleted, nothing overdue). PII is planted through the library; all of it is synthetic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::pg::Schema;
use common::process::{free_port, output_ok, sandbox_and_ops_toml, Logged, BIN};
use http_body_util::{BodyExt, Full};
use spgate::config::{Config, MapEnv};
use spgate::vault::{SystemClock, Vault};
use time::OffsetDateTime;

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const OPS: &str = "ops-token-0123456789abcdef0123456789";
const SELLER: &str = "A1EVIDENCE";
const DUE: &str = "902-3333333-0000001";
const KEPT: &str = "902-3333333-0000002";
const PII: &str = "{\"BuyerName\":\"Jane Example\",\"AddressLine1\":\"123 Example Street\"}";

/// The environment every process of the test gets (and the in-process config).
const ENV: &[(&str, &str)] = &[
    ("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret"),
    ("SPGATE_MASTER_KEY", MASTER),
    ("SPGATE_TEST_OPS", OPS),
];

/// A config on `store` (a `[store]` section) with an ops admin token; the scheduler's regular
/// wake-up is an hour away, so only the pass the test causes deletes anything.
fn write_config(dir: &Path, store: &str) -> (PathBuf, u16) {
    let (path, admin, _) =
        write_config_on(dir, store, &format!("http://127.0.0.1:{}", free_port()));
    (path, admin)
}

/// [`write_config`] with `upstream` as SP-API and LWA, and a role `enc` that receives buyer
/// addresses encrypted under the order's data key.
fn write_config_on(dir: &Path, store: &str, nowhere: &str) -> (PathBuf, u16, u16) {
    let (admin, port) = (free_port(), free_port());
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
{sandbox}
{store}
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[retention]
scan_interval_seconds = 3600
[roles.enc.pii]
address = "encrypt"
name = "encrypt"
[log]
level = "info"
"#,
        sandbox = sandbox_and_ops_toml(admin, nowhere, "amzn1.application-oa2-client.evidence"),
    );
    let path = dir.join("spgate.toml");
    std::fs::write(&path, &text).unwrap();
    (path, admin, port)
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in ENV {
        cmd.env(k, v);
    }
    cmd
}

/// The vault on the config's store, opened in this process as the gateway opens it.
async fn vault(config: &Path) -> Vault {
    let mut env = MapEnv::default();
    for (k, v) in ENV {
        env.vars.insert((*k).into(), (*v).into());
    }
    let config = Config::from_toml(&std::fs::read_to_string(config).unwrap(), &env).unwrap();
    let store = spgate::open_store(&config).await.unwrap().store;
    Vault::new(
        store,
        Arc::new(config.master_key),
        config.retention.clone(),
        Arc::new(SystemClock),
        Arc::new(|_| {}),
    )
}

fn report(config: &Path) -> serde_json::Value {
    let out = output_ok(command(&[
        "vault",
        "--config",
        config.to_str().unwrap(),
        "report",
        "--json",
    ]));
    serde_json::from_str(&out).unwrap()
}

fn export(config: &Path, order: &str) -> serde_json::Value {
    let out = output_ok(command(&[
        "vault",
        "--config",
        config.to_str().unwrap(),
        "export",
        "--order",
        order,
    ]));
    serde_json::from_str(&out).unwrap()
}

async fn post(port: u16, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {OPS}"))
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

/// Two orders with cached PII; the gateway learns that one was delivered 40 days ago, its pass
/// deletes it, and a report and an export from another process at once show it deleted.
async fn check(store_toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, admin) = write_config(dir.path(), store_toml);
    let v = vault(&cfg).await;
    for order in [DUE, KEPT] {
        v.cache_put(
            SELLER,
            order,
            &format!("GET /orders/{order}/address"),
            PII.as_bytes(),
        )
        .await
        .unwrap();
    }
    drop(v);
    let before = report(&cfg);
    assert_eq!(
        (before["active"].as_u64(), before["overdue"].as_u64()),
        (Some(2), Some(0)),
        "{before}"
    );

    let serve = Logged::spawn(
        command(&["serve", "--config", cfg.to_str().unwrap()]),
        "spgate is serving",
    );
    let delivered = OffsetDateTime::now_utc() - Duration::from_secs(40 * 86_400);
    let (status, answer) = post(
        admin,
        &format!("/admin/orders/{DUE}/delivered"),
        serde_json::json!({
            "seller": SELLER,
            "delivered_at": rfc3339(delivered),
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    serve.wait_for("Retention pass deleted", Duration::from_secs(30));

    // At once, from other processes.
    let after = report(&cfg);
    assert_eq!(after["overdue"], 0, "the pass is counted: {after}");
    assert_eq!(
        (
            after["deleted"].as_u64(),
            after["active"].as_u64(),
            after["live_keys"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{after}"
    );
    let exported = export(&cfg, DUE);
    assert_eq!(exported["orders"][0]["state"], "deleted", "{exported}");
    assert_eq!(
        exported["orders"][0]["cached_responses"],
        serde_json::json!([]),
        "{exported}"
    );
    let kept = export(&cfg, KEPT);
    assert_eq!(kept["orders"][0]["state"], "active", "{kept}");
    assert_eq!(
        kept["orders"][0]["cached_responses"][0]["BuyerName"],
        "Jane Example"
    );
    assert_eq!(serve.count("Retention pass deleted"), 1);
}

/// A tool reads an order's address (encrypted for its role: the order gets a data key), the
/// gateway learns it was delivered 40 days ago and deletes it; the tool reads the order again
/// (a fresh key, the record past due at once): the gateway deletes it again at once, so a report
/// from another process does not count it overdue until the scheduler's next regular wake-up
/// (an hour here).
async fn seen_again(store_toml: &str) {
    let sandbox = spgate::sandbox::Sandbox::new(spgate::sandbox::SandboxConfig {
        lwa_clients: vec![(
            "amzn1.application-oa2-client.evidence".into(),
            "synthetic-secret".into(),
        )],
        access_token_ttl: Duration::from_secs(3600),
        quotas: spgate::sandbox::QuotaMode::Off,
        require_rdt: false,
        open_enrollment: false,
    });
    sandbox.add_seller(SELLER, "Atzr|evidence-synthetic");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sandbox.serve(listener, async {
        let _ = stopped.await;
    }));

    let dir = tempfile::tempdir().unwrap();
    let (cfg, admin, port) = write_config_on(dir.path(), store_toml, &upstream);
    let cfg_s = cfg.to_str().unwrap();
    let token = dir.path().join("rt");
    std::fs::write(&token, "Atzr|evidence-synthetic").unwrap();
    output_ok(command(&[
        "sellers",
        "--config",
        cfg_s,
        "add",
        "--id",
        SELLER,
        "--region",
        "na",
        "--refresh-token-file",
        token.to_str().unwrap(),
    ]));
    let added = output_ok(command(&[
        "clients", "--config", cfg_s, "add", "--tool", "t", "--role", "enc", "--seller", SELLER,
    ]));
    let key = added
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .unwrap()
        .trim()
        .to_string();
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let read_address = || {
        let req = http::Request::get(format!(
            "http://127.0.0.1:{port}/orders/v0/orders/{order}/address"
        ))
        .header("authorization", format!("Bearer {key}"))
        .header("x-spgate-seller", SELLER)
        .body(Full::new(Bytes::new()))
        .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };

    let serve = Logged::spawn(command(&["serve", "--config", cfg_s]), "spgate is serving");
    let (status, body) = read_address().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(report(&cfg)["active"], 1, "the order has a data key");

    let delivered = OffsetDateTime::now_utc() - Duration::from_secs(40 * 86_400);
    let (status, answer) = post(
        admin,
        &format!("/admin/orders/{order}/delivered"),
        serde_json::json!({"seller": SELLER, "delivered_at": rfc3339(delivered)}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    serve.wait_for("Retention pass deleted", Duration::from_secs(30));
    let after = report(&cfg);
    assert_eq!(
        (after["deleted"].as_u64(), after["overdue"].as_u64()),
        (Some(1), Some(0)),
        "{after}"
    );

    // Seen again: a fresh key for an order already past due.
    let (status, body) = read_address().await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while serve.count("Retention pass deleted") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the order seen again past due waits for the next regular pass: {}",
            report(&cfg)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = report(&cfg);
    assert_eq!(again["overdue"], 0, "{again}");
    assert_eq!(
        (
            again["deleted"].as_u64(),
            again["active"].as_u64(),
            again["live_keys"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{again}"
    );
}

/// A store of each backend, alive while this is: its `[store]` section and what holds it (a
/// directory, a private Redis, a schema of the shared PostgreSQL server).
enum Backend {
    Embedded(tempfile::TempDir),
    Redis(common::pg::PrivateRedis),
    Postgres(Schema),
}

impl Backend {
    fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    fn redis() -> Backend {
        Backend::Redis(common::pg::PrivateRedis::start())
    }

    fn postgres() -> Backend {
        Backend::Postgres(Schema::new("evidence"))
    }

    fn toml(&self) -> String {
        match self {
            Backend::Embedded(dir) => format!(
                "[store]\ntype = \"embedded\"\ndata_dir = {:?}",
                dir.path().join("data").display().to_string()
            ),
            Backend::Redis(redis) => format!(
                "[store]\ntype = \"redis\"\nurl = \"{}\"\nkey_prefix = \"evidence:\"",
                redis.url()
            ),
            Backend::Postgres(schema) => format!(
                "[store]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"",
                common::pg::SHARED_URL,
                schema.0
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_another_process_counts_the_pass_just_made_on_the_embedded_store() {
    let backend = Backend::embedded();
    check(&backend.toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_another_process_counts_the_pass_just_made_on_redis() {
    let backend = Backend::redis();
    check(&backend.toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_another_process_counts_the_pass_just_made_on_postgres() {
    let backend = Backend::postgres();
    check(&backend.toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_seen_again_past_due_is_deleted_again_at_once_on_the_embedded_store() {
    let backend = Backend::embedded();
    seen_again(&backend.toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_seen_again_past_due_is_deleted_again_at_once_on_redis() {
    let backend = Backend::redis();
    seen_again(&backend.toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_seen_again_past_due_is_deleted_again_at_once_on_postgres() {
    let backend = Backend::postgres();
    seen_again(&backend.toml()).await;
}
