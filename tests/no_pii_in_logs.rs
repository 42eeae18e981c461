//! Every log a real deployment writes (the operational log at debug level on stdout and stderr,
//! and the audit chain) is searched for planted synthetic PII, tokens and secrets after a
//! session of restricted reads, a request body carrying buyer PII, a reveal and a report
//! document. None may appear.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::process::{free_port, output_ok, spawn_listening, Reaper, BIN};

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const AUDIT_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr";
const LWA_SECRET: &str = "spgate-demo-client-secret";
const REFRESH: &str = "Atzr|no-pii-in-logs-synthetic-refresh";
const SELLER: &str = "A1LOGSELLER";

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", LWA_SECRET)
        .env("SPGATE_MASTER_KEY", MASTER)
        .env("SPGATE_AUDIT_KEY", AUDIT_KEY);
    c
}

/// Starts a process whose stdout and stderr go to `out`; waits until `port` accepts.
fn spawn(args: &[&str], port: u16, out: &Path) -> Child {
    spawn_listening(command(args), port, out)
}

fn run(args: &[&str]) -> String {
    output_ok(command(args))
}

fn key_of(added: &str) -> String {
    added
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .unwrap()
        .trim()
        .to_string()
}

fn read_all(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push_str(&read_all(&p));
        } else {
            let mut b = Vec::new();
            std::fs::File::open(&p)
                .unwrap()
                .read_to_end(&mut b)
                .unwrap();
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_of_any_kind_holds_pii_tokens_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox_port, port) = (free_port(), free_port());
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let audit_dir = dir.path().join("audit");
    let cfg = dir.path().join("spgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
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
[outbound]
allow_loopback = ["127.0.0.1:{sandbox_port}"]
[audit]
dir = {audit:?}
instance = "logtest"
key = {{ env = "SPGATE_AUDIT_KEY" }}
[roles.mixed]
reveal = ["address"]
[roles.mixed.pii]
name = "mask"
email = "pseudonymize"
phone = "drop"
address = "encrypt"
postal_code = "mask"
coarse_location = "pass"
[roles.clear.pii]
name = "pass"
email = "pass"
phone = "pass"
address = "pass"
postal_code = "pass"
coarse_location = "pass"
company = "pass"
[log]
format = "json"
level = "debug"
"#,
            data = dir.path().join("data").display().to_string(),
            audit = audit_dir.display().to_string(),
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let token_file = dir.path().join("rt");
    std::fs::write(&token_file, REFRESH).unwrap();
    let sandbox_log = dir.path().join("sandbox.log");
    let serve_log = dir.path().join("serve.log");
    let mut reaper = Reaper(vec![spawn(
        &["sandbox", "--listen", &format!("127.0.0.1:{sandbox_port}")],
        sandbox_port,
        &sandbox_log,
    )]);
    run(&[
        "sellers",
        "--config",
        cfg_s,
        "add",
        "--id",
        SELLER,
        "--region",
        "na",
        "--refresh-token-file",
        token_file.to_str().unwrap(),
    ]);
    let mixed = key_of(&run(&[
        "clients", "--config", cfg_s, "add", "--tool", "crm", "--role", "mixed", "--seller", SELLER,
    ]));
    let clear = key_of(&run(&[
        "clients", "--config", cfg_s, "add", "--tool", "ops-tool", "--role", "clear", "--seller",
        SELLER,
    ]));
    reaper
        .0
        .push(spawn(&["serve", "--config", cfg_s], port, &serve_log));

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let call = |key: &str, method: &str, path: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("authorization", format!("Bearer {key}"))
            .header("x-spgate-seller", SELLER)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(
        &spgate::sandbox::Sandbox::open_enrollment_seller(REFRESH),
    )[2]
    .clone();
    let (status, clear_addr) = call(
        &clear,
        "GET",
        &format!("/orders/v0/orders/{order}/address"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{clear_addr}");
    let (_, clear_buyer) = call(
        &clear,
        "GET",
        &format!("/orders/v0/orders/{order}/buyerInfo"),
        "",
    )
    .await;
    let a = &clear_addr["payload"]["ShippingAddress"];
    let mut planted: Vec<String> = [
        &a["Name"],
        &a["AddressLine1"],
        &a["AddressLine2"],
        &a["Phone"],
        &clear_buyer["payload"]["BuyerEmail"],
        &clear_buyer["payload"]["BuyerName"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
    // The mixed tool reads, reveals, fetches a report document.
    let (_, mixed_addr) = call(
        &mixed,
        "GET",
        &format!("/orders/v0/orders/{order}/address"),
        "",
    )
    .await;
    let envelope = mixed_addr["payload"]["ShippingAddress"]["AddressLine1"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, revealed) = call(
        &mixed,
        "POST",
        "/v1/pii/reveal",
        &serde_json::json!({ "values": [envelope] }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(revealed["values"][0]["value"], a["AddressLine1"]);
    let (_, doc) = call(
        &mixed,
        "GET",
        "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING",
        "",
    )
    .await;
    let link = doc["url"].as_str().unwrap().to_string();
    let (status, _) = call(
        &mixed,
        "GET",
        &link[format!("http://127.0.0.1:{port}").len()..],
        "",
    )
    .await;
    assert_eq!(status, 200);
    // A request body with buyer PII passes through (the sandbox answers what it answers).
    let body_pii = "Planted Recipient-Of-Body";
    let body_mail = "planted.body@example.invalid";
    planted.push(body_pii.into());
    planted.push(body_mail.into());
    let _ = call(
        &mixed,
        "POST",
        "/fba/outbound/2020-07-01/fulfillmentOrders",
        &serde_json::json!({
            "sellerFulfillmentOrderId": "SFO-1",
            "displayableOrderId": "SFO-1",
            "displayableOrderDate": "2026-11-01T00:00:00Z",
            "displayableOrderComment": "synthetic",
            "shippingSpeedCategory": "Standard",
            "destinationAddress": {
                "name": body_pii, "addressLine1": "9 Planted Road", "city": "Testville",
                "stateOrRegion": "WA", "postalCode": "98101", "countryCode": "US",
                "phone": "+1 206-555-0199"
            },
            "notificationEmails": [body_mail],
            "items": []
        })
        .to_string(),
    )
    .await;
    planted.push(envelope);

    // Stop the gateway (SIGTERM: drains, flushes the audit log).
    let serve = reaper.0.pop().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut serve = serve;
    let deadline = Instant::now() + Duration::from_secs(20);
    while serve.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The chains verify (the gateway's and the command line's), and hold the CLI's actions.
    let audit_s = audit_dir.to_str().unwrap();
    let verified = command(&["audit", "verify", audit_s]).output().unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let all = run(&["audit", "query", audit_s, "--json"]);
    assert_eq!(all.matches("\"kind\":\"key_created\"").count(), 2, "{all}");
    assert_eq!(all.matches("\"kind\":\"seller_authorized\"").count(), 1);
    assert!(all.matches("\"kind\":\"request\"").count() >= 6);
    let logs = [
        std::fs::read_to_string(&serve_log).unwrap(),
        read_all(&audit_dir),
    ];
    assert!(logs[0].contains("request_id"), "operational log is there");
    assert!(
        logs[1].contains("\"kind\":\"reveal\""),
        "audit log is there"
    );
    let secrets = [
        mixed.as_str(),
        clear.as_str(),
        REFRESH,
        LWA_SECRET,
        MASTER,
        AUDIT_KEY,
        "Atza|",
    ];
    for (which, text) in ["operational log", "audit log"].iter().zip(&logs) {
        for value in planted.iter().map(String::as_str).chain(secrets) {
            assert!(
                !text.contains(value),
                "the {which} holds a planted value or secret"
            );
        }
    }
}
