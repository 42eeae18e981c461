//! Three `spgate serve` processes sharing one Redis (store and rate-limit buckets) in front of
//! one `spgate sandbox` process that enforces Amazon's usage plans: together they never let
//! more through than the plan allows, so the sandbox never answers 429.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

use common::process::{free_port, spawn_ready, Reaper, BIN};

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn spawn(args: &[&str], ready: &str) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "spgate-demo-client-secret")
        .env("SPGATE_MASTER_KEY", MASTER);
    spawn_ready(cmd, ready)
}

/// A gateway config on `port` in front of `sandbox`; `shared` is `Some(prefix)` for the shared
/// Redis store and limiter, `None` for an embedded store under `dir`; `lwa` adds `[lwa]` keys.
fn config(
    dir: &Path,
    port: u16,
    sandbox: &str,
    shared: Option<&str>,
    lwa: &str,
) -> std::path::PathBuf {
    let store = match shared {
        Some(prefix) => format!(
            "[store]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n[ratelimit.redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
        ),
        None => format!(
            "[store]\ntype = \"embedded\"\ndata_dir = {:?}\n",
            dir.join("data").display().to_string()
        ),
    };
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
{lwa}
{store}
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[ratelimit]
default_max_wait_ms = 2500
[roles.orders.pii]
address = "pass"
name = "pass"
[log]
format = "json"
level = "info"
"#
    );
    let path = dir.join(format!("spgate-{port}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs a one-shot `spgate` command, which must succeed; its standard output.
fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "spgate-demo-client-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records seller `A1MULTI` and a tool for it through the CLI; the tool's API key.
fn enroll(dir: &Path, config: &Path) -> String {
    let token_file = dir.join("rt");
    std::fs::write(&token_file, "Atzr|multi-process-synthetic").unwrap();
    let cfg = config.to_str().unwrap();
    run(&[
        "sellers",
        "--config",
        cfg,
        "add",
        "--id",
        "A1MULTI",
        "--region",
        "na",
        "--refresh-token-file",
        token_file.to_str().unwrap(),
    ]);
    let added = run(&[
        "clients", "--config", cfg, "add", "--tool", "t", "--role", "orders", "--seller", "A1MULTI",
    ]);
    added
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .unwrap()
        .trim()
        .to_string()
}

/// A read through the gateway on `port` (answered by the sandbox's static example; not one the
/// PII cache would answer).
async fn get_participations(port: u16, key: &str) -> http::StatusCode {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!(
        "http://127.0.0.1:{port}/sellers/v1/marketplaceParticipations"
    ))
    .header("authorization", format!("Bearer {key}"))
    .header("x-spgate-seller", "A1MULTI")
    .body(http_body_util::Empty::new())
    .unwrap();
    client.request(req).await.unwrap().status()
}

/// The `[lwa]` keys of the restart test: heal tokens older than a second.
const HEAL_AFTER_A_SECOND: &str = "token_loss_min_age_seconds = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_heals_at_once_after_the_sandbox_restarts_with_new_token_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox_port = free_port();
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let start_sandbox = || {
        spawn(
            &["sandbox", "--listen", &format!("127.0.0.1:{sandbox_port}")],
            "sandbox SP-API",
        )
    };
    let mut reaper = Reaper(vec![start_sandbox()]);
    let port = free_port();
    let cfg = config(dir.path(), port, &sandbox, None, HEAL_AFTER_A_SECOND);
    let key = enroll(dir.path(), &cfg);
    reaper.0.push(spawn(
        &["serve", "--config", cfg.to_str().unwrap()],
        "spgate is serving",
    ));
    assert_eq!(get_participations(port, &key).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // A new sandbox process on the same port knows none of the tokens the gateway holds:
    // Amazon's bare 403, healed by the first request.
    let mut old = reaper.0.remove(0);
    old.kill().unwrap();
    old.wait().unwrap();
    reaper.0.push(start_sandbox());
    let restarted = Instant::now();
    assert_eq!(get_participations(port, &key).await, 200);
    eprintln!(
        "answered 200 {:?} after the sandbox restarted",
        restarted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateway_processes_sharing_redis_keep_the_usage_plan_together() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "spgate-mp-{}:",
        spgate::crypto::random_token::<9>().unwrap()
    );
    let sandbox_port = free_port();
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

    // One seller and one tool, recorded once in the shared Redis store.
    let ports = [free_port(), free_port(), free_port()];
    let configs: Vec<_> = ports
        .iter()
        .map(|p| config(dir.path(), *p, &sandbox, Some(&prefix), ""))
        .collect();
    let key = enroll(dir.path(), &configs[0]);

    for cfg in &configs {
        reaper.0.push(spawn(
            &["serve", "--config", cfg.to_str().unwrap()],
            "spgate is serving",
        ));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (client, key) = (client.clone(), key.clone());
        let url = format!(
            "http://127.0.0.1:{}/orders/v0/orders/TEST_CASE_200/address",
            ports[i % 3]
        );
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer {key}"))
                .header("x-spgate-seller", "A1MULTI")
                .body(http_body_util::Empty::new())
                .unwrap();
            client.request(req).await.unwrap().status()
        }));
    }
    let started = Instant::now();
    let mut ok = 0u64;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 200 || status == 429, "{status}");
        ok += u64::from(status == 200);
    }
    let elapsed = started.elapsed().as_secs_f64();

    let stats: serde_json::Value = {
        let req = http::Request::get(format!("{sandbox}/_sandbox/stats"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    };
    assert_eq!(
        stats["throttled_total"], 0,
        "the sandbox never had to refuse: {stats}"
    );
    let arrived = stats["by_operation"]["ordersV0.getOrderAddress"]
        .as_u64()
        .unwrap();
    assert_eq!(
        arrived, ok,
        "every admitted request reached the sandbox once"
    );
    assert!(ok >= 30, "the burst is used: {ok}");
    assert!(
        arrived as f64 <= 30.0 + 0.5 * elapsed + 1.0,
        "{arrived} arrivals in {elapsed:.1} s"
    );

    // Clean the shared Redis.
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
