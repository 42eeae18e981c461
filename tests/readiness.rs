//! Readiness and errors tell the truth during a dependency outage: with the store and the
//! limiter (`fail_mode = "closed"`) on a Redis of the test's own, killing that Redis makes
//! `/readyz` answer 503, requests answer 503 `ServiceUnavailable` with `Retry-After` (never
//! 500), the log holds a line per interval rather than one ERROR line per refused request, and
//! everything recovers when Redis comes back. `tests/outages.rs` does the same for LWA and a
//! PostgreSQL store, and `tests/audit_faults.rs` for the audit log (a full disk).

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";

/// A redis-server of this test's own. Its append-only file (in `dir`) keeps the seller and the
/// tool across a kill, as a managed Redis keeps its data across a failover.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    fn start(port: u16, dir: &std::path::Path) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operational log of this test's thread, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A gateway whose store and limiter (`fail_mode = "closed"`) use the Redis on `port`, under
/// key prefixes starting with `prefix`, and its admin router.
async fn redis_gateway(port: u16, prefix: &str) -> (TestGateway, spgate::admin::Admin) {
    let url = format!("redis://127.0.0.1:{port}");
    let gw = start_gateway(Options {
        store_toml: Some(format!(
            "[store]\ntype = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}:\"\n"
        )),
        extra_toml: format!(
            "[ratelimit]\nfail_mode = \"closed\"\n[ratelimit.redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}-rl:\"\n"
        ),
        ..Options::default()
    })
    .await;
    let admin = admin_of(&gw);
    (gw, admin)
}

#[tokio::test]
async fn a_redis_outage_is_unready_and_answered_503_with_retry_after_then_recovers() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = OwnRedis::start(port, redis_dir.path());
    let (gw, admin) = redis_gateway(port, "readiness").await;
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));
    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);

    redis.kill();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    assert!(body.contains("rate limit store"), "{body}");

    let before = log.text().matches(" ERROR ").count();
    const REFUSED: usize = 12;
    for _ in 0..REFUSED {
        assert_unavailable(&gw.get(ADDRESS).await);
    }
    // One line per kind of failure per interval, not one per refused request.
    let errors = log.text().matches(" ERROR ").count() - before;
    // At least one: the outage is said, not silent.
    assert!(
        (1..=2).contains(&errors),
        "{errors} ERROR lines for {REFUSED} refusals:\n{}",
        log.text()
    );

    let _redis = OwnRedis::start(port, redis_dir.path());
    // The connections reconnect on their own; the first probes may still see the old ones fail.
    readyz_until(&admin, StatusCode::OK, Duration::from_secs(20)).await;
    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);
}

/// Runs `redis-cli` against the test's Redis.
fn redis_cli(port: u16, args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "OK",
        "{args:?}: {text}"
    );
}

#[tokio::test]
async fn a_redis_that_answers_but_refuses_writes_is_unready_and_a_failed_probe_refuses_nothing() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _redis = OwnRedis::start(port, redis_dir.path());
    let (gw, admin) = redis_gateway(port, "readonly").await;
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));

    // Reads still work, every write is refused (NOREPLICAS), as on a READONLY replica.
    redis_cli(port, &["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    assert!(body.contains("rate limit store"), "{body}");

    // The failed probes did not put the limiter into its back-off: once writes work again the
    // next request is served.
    redis_cli(port, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    let reply = gw.get(ADDRESS).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(readyz(&admin).await, (StatusCode::OK, "ready\n".into()));
}
