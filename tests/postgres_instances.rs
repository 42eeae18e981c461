//! Three real `spgate serve` processes on one PostgreSQL schema (the machine's server, reached
//! through a TCP proxy this test can cut) and one private Redis for limits and the token cache,
//! in front of an in-process sandbox: a seller onboarded through one instance is served by the
//! others; a deletion pass racing on all three deletes and audits each order once; SIGKILL of
//! an instance and a database outage mid-traffic lose no seller, key or retention record,
//! requests during the outage are answered 503 with `Retry-After`, and the gateways recover
//! without a restart; a Redis FLUSHALL loses nothing and costs one LWA refresh per seller.
//! All data is synthetic.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pg::{PrivateRedis, Proxy, Schema};
use common::process::{free_port, output_ok, sandbox_and_ops_toml, Logged, BIN};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use spgate::config::{Config, MapEnv};
use spgate::sandbox::{QuotaMode, Sandbox, SandboxConfig};
use spgate::vault::{Clock, RetentionConfig, Vault};
use time::OffsetDateTime;
use tokio::sync::oneshot;

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const OPS: &str = "ops-token-0123456789abcdef0123456789";
const LWA_ID: &str = "amzn1.application-oa2-client.fleet";
const LWA_SECRET: &str = "fleet-client-secret";
const S1: &str = "A1PGFLEET01";
const S2: &str = "A2PGFLEET02";
const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";

/// The environment of every process (and of the in-process config).
const ENV: &[(&str, &str)] = &[
    ("SPGATE_LWA_CLIENT_SECRET", LWA_SECRET),
    ("SPGATE_MASTER_KEY", MASTER),
    ("SPGATE_TEST_OPS", OPS),
    ("SPGATE_AUDIT_KEY", common::AUDIT_KEY),
];

/// Three gateways on one schema and one Redis, in front of one sandbox.
struct Fleet {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    _sandbox_stop: oneshot::Sender<()>,
    schema: Schema,
    proxy: Proxy,
    redis: PrivateRedis,
    configs: Vec<PathBuf>,
    ports: Vec<u16>,
    admin_ports: Vec<u16>,
    serves: Vec<Option<Logged>>,
    /// A tool key allowed every seller.
    key: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// What a request needs: the client, the instances' ports and the tool key (cloned into tasks).
#[derive(Clone)]
struct Target {
    client: Client<HttpConnector, Empty<Bytes>>,
    ports: Vec<u16>,
    key: String,
}

/// One answer.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    location: Option<String>,
    body: String,
}

// === impl Target ===

impl Target {
    /// A GET on instance `i` as the fleet's tool, for `seller`.
    async fn get(&self, i: usize, path: &str, seller: &str) -> Result<Answer, String> {
        let req = http::Request::get(format!("http://127.0.0.1:{}{path}", self.ports[i]))
            .header("authorization", format!("Bearer {}", self.key))
            .header("x-spgate-seller", seller)
            .body(Empty::new())
            .unwrap();
        self.send(req).await
    }

    /// A GET without credentials.
    async fn open(&self, url: String) -> Result<Answer, String> {
        self.send(http::Request::get(url).body(Empty::new()).unwrap())
            .await
    }

    async fn send(&self, req: http::Request<Empty<Bytes>>) -> Result<Answer, String> {
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .map_err(|_| "no answer within 60 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (retry_after, location) = (header("retry-after"), header("location"));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            retry_after,
            location,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    }
}

impl Fleet {
    /// Sandbox, schema, proxy, Redis, the configs, seller `S1` added and a tool key made with
    /// the CLI; no gateway running yet.
    async fn new(tag: &str) -> Fleet {
        Fleet::with_quotas(tag, QuotaMode::Off).await
    }

    /// [`Fleet::new`] with a sandbox that enforces `quotas`.
    async fn with_quotas(tag: &str, quotas: QuotaMode) -> Fleet {
        let sandbox = Sandbox::new(SandboxConfig {
            lwa_clients: vec![(LWA_ID.into(), LWA_SECRET.into())],
            access_token_ttl: Duration::from_secs(3600),
            quotas,
            require_rdt: false,
            open_enrollment: false,
        });
        sandbox.add_seller(S1, "Atzr|fleet-seller-one");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sandbox.clone().serve(listener, async {
            let _ = stopped.await;
        }));

        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new(tag);
        let proxy = Proxy::start("127.0.0.1:5432");
        let redis = PrivateRedis::start();
        let mut fleet = Fleet {
            sandbox,
            _sandbox_stop: stop,
            proxy,
            redis,
            configs: Vec::new(),
            ports: Vec::new(),
            admin_ports: Vec::new(),
            serves: Vec::new(),
            key: String::new(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            schema,
            dir,
        };
        for i in 0..3 {
            let (port, admin) = (free_port(), free_port());
            let path = fleet.write_config(i, port, admin, &sandbox_url);
            fleet.configs.push(path);
            fleet.ports.push(port);
            fleet.admin_ports.push(admin);
            fleet.serves.push(None);
        }
        let token = fleet.dir.path().join("rt1");
        std::fs::write(&token, "Atzr|fleet-seller-one").unwrap();
        fleet.cli(&[
            "sellers",
            "add",
            "--id",
            S1,
            "--region",
            "na",
            "--refresh-token-file",
            token.to_str().unwrap(),
        ]);
        let added = fleet.cli(&[
            "clients", "add", "--tool", "fleet", "--role", "orders", "--seller", "*",
        ]);
        fleet.key = added
            .lines()
            .find_map(|l| l.strip_prefix("api key:"))
            .unwrap()
            .trim()
            .to_string();
        fleet
    }

    fn write_config(&self, i: usize, port: u16, admin: u16, sandbox: &str) -> PathBuf {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
drain_timeout_seconds = 2
{sandbox}
[store]
type = "postgres"
url = "postgres://postgres@127.0.0.1:{proxy}/postgres"
schema = "{schema}"
pool_size = 4
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[ratelimit]
default_max_wait_ms = 20000
[ratelimit.redis]
url = "{redis}"
key_prefix = "fleet:"
[onboarding]
application_id = "amzn1.sp.solution.fleet"
public_url = "https://spgate.example.test"
[audit]
dir = {audit:?}
instance = "gw{i}"
key = {{ env = "SPGATE_AUDIT_KEY" }}
[retention]
scan_interval_seconds = 1
# Every request reaches the sandbox (a cached response would need no token).
cache = false
[roles.orders.pii]
address = "pass"
name = "pass"
[log]
level = "info"
"#,
            sandbox = sandbox_and_ops_toml(admin, sandbox, LWA_ID),
            proxy = self.proxy.port,
            schema = self.schema.0,
            redis = self.redis.url(),
            audit = self.audit_dir().display().to_string(),
        );
        let path = self.dir.path().join(format!("gw{i}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        for (k, v) in ENV {
            cmd.env(k, v);
        }
        cmd
    }

    /// `spgate <area> --config gw0.toml <rest...>`, which must succeed.
    fn cli(&self, args: &[&str]) -> String {
        let mut full = vec![args[0], "--config", self.configs[0].to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        output_ok(self.command(&full))
    }

    fn start(&mut self, i: usize) {
        let cmd = self.command(&["serve", "--config", self.configs[i].to_str().unwrap()]);
        self.serves[i] = Some(Logged::spawn(cmd, "spgate is serving"));
    }

    fn start_all(&mut self) {
        for i in 0..3 {
            self.start(i);
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut serve) = self.serves[i].take() {
            serve.kill();
        }
    }

    fn target(&self) -> Target {
        Target {
            client: self.client.clone(),
            ports: self.ports.clone(),
            key: self.key.clone(),
        }
    }

    async fn get(&self, i: usize, path: &str, seller: &str) -> Result<Answer, String> {
        self.target().get(i, path, seller).await
    }

    /// `GET /readyz` on instance `i`'s admin listener.
    async fn ready(&self, i: usize) -> u16 {
        self.target()
            .open(format!("http://127.0.0.1:{}/readyz", self.admin_ports[i]))
            .await
            .map(|a| a.status)
            .unwrap_or(0)
    }

    /// Rows per table of what must never be lost.
    fn counts(&self) -> BTreeMap<&'static str, String> {
        ["sellers", "clients", "retention", "order_keys"]
            .into_iter()
            .map(|t| (t, self.schema.psql(&format!("SELECT count(*) FROM {t}"))))
            .collect()
    }

    /// The vault on the fleet's schema (directly, not through the proxy) on `clock`.
    async fn vault(&self, clock: Arc<dyn Clock>) -> Vault {
        let mut env = MapEnv::default();
        for (k, v) in ENV {
            env.vars.insert((*k).into(), (*v).into());
        }
        let text = std::fs::read_to_string(&self.configs[0])
            .unwrap()
            .replace(&format!(":{}/", self.proxy.port), ":5432/");
        let config = Config::from_toml(&text, &env).unwrap();
        let store = spgate::open_store(&config).await.unwrap().store;
        Vault::new(
            store,
            Arc::new(config.master_key),
            RetentionConfig::defaults(),
            clock,
            Arc::new(|_| {}),
        )
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["vault", "report", "--json"])).unwrap()
    }

    /// Every audit record of every chain in the shared audit directory.
    fn audit_records(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.audit_dir()) else {
            return out;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "jsonl") {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    if let Ok(v) = serde_json::from_str(line) {
                        out.push(v);
                    }
                }
            }
        }
        out
    }
}

/// A clock stopped at one instant.
struct Stopped(OffsetDateTime);

impl Clock for Stopped {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

fn ok(answer: &Result<Answer, String>) -> bool {
    matches!(answer, Ok(a) if a.status == 200)
}

fn show(answer: &Result<Answer, String>) -> String {
    match answer {
        Ok(a) => format!("{} {}", a.status, a.body),
        Err(e) => e.clone(),
    }
}

/// The `state` of the consent redirect `/oauth/start` answers with.
fn state_of(location: &str) -> String {
    let query = location.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_onboarded_through_one_instance_is_served_by_the_others_and_a_racing_deletion_pass_deletes_each_order_once(
) {
    let mut fleet = Fleet::new("onboard").await;
    fleet.start_all();

    // The seller added with the CLI is served by every instance.
    for i in 0..3 {
        let a = fleet.get(i, ADDRESS, S1).await;
        assert!(ok(&a), "gw{i}: {}", show(&a));
    }

    // Onboarding: the invite made with the CLI is opened on gw0, the consent comes back to
    // gw1, and the new seller is served by gw2 at once.
    let link = fleet.cli(&["sellers", "invite", "--region", "na"]);
    let path = link
        .lines()
        .next()
        .unwrap()
        .strip_prefix("https://spgate.example.test")
        .unwrap()
        .to_string();
    let started = fleet
        .target()
        .open(format!("http://127.0.0.1:{}{path}", fleet.ports[0]))
        .await
        .unwrap();
    assert_eq!(started.status, 302, "{}", started.body);
    let location = started.location.unwrap();
    fleet
        .sandbox
        .add_authorization_code("fleet-code", S2, "Atzr|fleet-seller-two");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("state", &state_of(&location))
        .append_pair("selling_partner_id", S2)
        .append_pair("spapi_oauth_code", "fleet-code")
        .finish();
    let callback = fleet
        .target()
        .open(format!(
            "http://127.0.0.1:{}/oauth/callback?{query}",
            fleet.ports[1]
        ))
        .await
        .unwrap();
    assert_eq!(callback.status, 200, "{}", callback.body);
    let a = fleet.get(2, ADDRESS, S2).await;
    assert!(
        ok(&a),
        "gw2 serves the seller onboarded on gw1: {}",
        show(&a)
    );
    let listed = fleet.cli(&["sellers", "list"]);
    assert!(listed.contains(S1) && listed.contains(S2), "{listed}");

    // 120 orders with data keys, all falling due at the same second a few seconds from now:
    // the three schedulers (1 s scan interval) race on them.
    const ORDERS: usize = 120;
    let due_in = Duration::from_secs(8);
    let planted_at = OffsetDateTime::now_utc() - Duration::from_secs(30 * 86_400) + due_in;
    let vault = fleet.vault(Arc::new(Stopped(planted_at))).await;
    for n in 0..ORDERS {
        let seller = [S1, S2][n % 2];
        vault
            .order_key(seller, &format!("903-{n:07}-0000001"))
            .await
            .unwrap();
    }
    drop(vault);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let report = fleet.report();
        if report["deleted"].as_u64() == Some(ORDERS as u64) {
            assert_eq!(report["overdue"], 0, "{report}");
            assert_eq!(
                fleet
                    .schema
                    .psql("SELECT count(*) FROM order_keys WHERE order_id LIKE '903-%'"),
                "0",
                "every planted key destroyed"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not all deleted: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each deletion is audited once, by whichever instance made it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (per_order, per_instance) = loop {
        let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
        for r in fleet.audit_records() {
            if r["kind"] == "deletion_run" {
                *per_order
                    .entry(r["order_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
                *per_instance
                    .entry(r["instance"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
        }
        if per_order.values().sum::<usize>() >= ORDERS || Instant::now() > deadline {
            break (per_order, per_instance);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        per_order.len(),
        ORDERS,
        "every order audited: {per_instance:?}"
    );
    assert!(
        per_order.values().all(|n| *n == 1),
        "each order deleted and audited exactly once: {:?} (by instance {per_instance:?})",
        per_order
            .iter()
            .filter(|(_, n)| **n != 1)
            .collect::<Vec<_>>()
    );
    for (i, serve) in fleet.serves.iter().enumerate() {
        let serve = serve.as_ref().unwrap();
        assert_eq!(serve.count("Retention pass failed"), 0, "gw{i}");
    }
    eprintln!("deletions by instance: {per_instance:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_a_postgres_outage_mid_traffic_lose_nothing_and_the_gateways_recover_without_a_restart(
) {
    let mut fleet = Fleet::new("outage").await;
    let vault = fleet.vault(Arc::new(spgate::vault::SystemClock)).await;
    for n in 0..50 {
        vault
            .order_key(S1, &format!("904-{n:07}-0000001"))
            .await
            .unwrap();
    }
    drop(vault);
    fleet.start_all();
    let before = fleet.counts();

    // Traffic on all three; gw2 is killed with SIGKILL while requests are in flight.
    let target = fleet.target();
    let mut tasks = Vec::new();
    // 24 requests: within the seller's burst of getOrderAddress (30), so none waits for a token.
    for n in 0..24 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let i = n % 3;
            (i, target.get(i, ADDRESS, S1).await)
        }));
        if n == 12 {
            fleet.kill(2);
        }
    }
    for t in tasks {
        let (i, a) = t.await.unwrap();
        if i != 2 {
            assert!(ok(&a), "gw{i}: {}", show(&a));
        }
    }

    // The database goes away: every request is refused 503 with Retry-After, none is a 500,
    // and readiness says so.
    fleet.proxy.cut();
    let cut_at = Instant::now();
    let mut refused = 0;
    while cut_at.elapsed() < Duration::from_secs(4) {
        for i in 0..2 {
            let a = fleet.get(i, ADDRESS, S1).await;
            match &a {
                Ok(a) if a.status == 503 => {
                    assert!(a.retry_after.is_some(), "gw{i}: 503 without Retry-After");
                    assert!(a.body.contains("ServiceUnavailable"), "{}", a.body);
                    refused += 1;
                }
                other => panic!("gw{i} during the outage: {}", show(other)),
            }
        }
    }
    assert!(refused >= 4, "{refused}");
    assert_eq!(fleet.ready(0).await, 503);

    // Back: the running gateways serve again by themselves; the killed one starts.
    fleet.proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..2 {
        loop {
            let a = fleet.get(i, ADDRESS, S1).await;
            if ok(&a) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gw{i} did not recover: {}",
                show(&a)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(fleet.ready(1).await, 200);
    fleet.start(2);
    let a = fleet.get(2, ADDRESS, S1).await;
    assert!(ok(&a), "restarted gw2: {}", show(&a));

    assert_eq!(fleet.counts(), before, "nothing lost");
    let report = fleet.report();
    assert_eq!(
        (
            report["active"].to_string(),
            report["live_keys"].to_string(),
            report["overdue"].as_u64()
        ),
        (
            before["retention"].clone(),
            before["order_keys"].clone(),
            Some(0)
        ),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_flushall_under_three_instances_loses_no_seller_or_key_and_costs_one_refresh_per_seller(
) {
    let mut fleet = Fleet::new("flush").await;
    fleet.sandbox.add_seller(S2, "Atzr|fleet-seller-two");
    let token = fleet.dir.path().join("rt2");
    std::fs::write(&token, "Atzr|fleet-seller-two").unwrap();
    fleet.cli(&[
        "sellers",
        "add",
        "--id",
        S2,
        "--region",
        "na",
        "--refresh-token-file",
        token.to_str().unwrap(),
    ]);
    fleet.start_all();
    let before = fleet.counts();

    for (i, seller, call) in round(&fleet) {
        let a = call.await;
        assert!(ok(&a), "gw{i} {seller}: {}", show(&a));
    }
    let grants = fleet.sandbox.stats().lwa_refresh_grants;
    assert_eq!(grants, 2, "one LWA refresh per seller across the instances");

    // Redis loses everything, and Amazon's access tokens expire at the same moment.
    assert_eq!(fleet.redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    fleet.sandbox.expire_access_tokens();
    let answers = join(round(&fleet)).await;
    for (i, seller, a) in &answers {
        assert!(ok(a), "gw{i} {seller} after FLUSHALL: {}", show(a));
    }
    assert_eq!(
        fleet.sandbox.stats().lwa_refresh_grants - grants,
        2,
        "tokens re-fetched once per seller, not once per instance"
    );
    assert_eq!(fleet.counts(), before, "no seller or key lost");
}

/// A request on each instance for each seller.
fn round(
    fleet: &Fleet,
) -> Vec<(
    usize,
    &'static str,
    impl std::future::Future<Output = Result<Answer, String>> + '_,
)> {
    let mut calls = Vec::new();
    for seller in [S1, S2] {
        for i in 0..3 {
            calls.push((i, seller, fleet.get(i, ADDRESS, seller)));
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_keep_the_usage_plan_together_through_one_redis() {
    // The sandbox enforces Amazon's plans: getOrderAddress 0.5 req/s, burst 30, per seller.
    let mut fleet = Fleet::with_quotas("limits", QuotaMode::Catalog).await;
    fleet.start_all();
    let target = fleet.target();
    let started = Instant::now();
    // 36 at once, spread over the three: the burst, then one every 2 s (within the tools'
    // 20 s wait), whichever instance each arrives at.
    let calls = (0..36)
        .map(|n| {
            let target = target.clone();
            async move { (n % 3, target.get(n % 3, ADDRESS, S1).await) }
        })
        .collect::<Vec<_>>();
    let mut served = 0u64;
    for (i, a) in futures_util::future::join_all(calls).await {
        match &a {
            Ok(a) if a.status == 200 => served += 1,
            // The gateway's own refusal when a token would come past the wait.
            Ok(a) if a.status == 429 => {}
            other => panic!("gw{i}: {}", show(other)),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = fleet.sandbox.stats();
    assert_eq!(stats.throttled_total, 0, "the sandbox never had to refuse");
    let arrived = stats.by_operation["ordersV0.getOrderAddress"];
    assert_eq!(
        arrived, served,
        "every admitted request reached the sandbox once"
    );
    assert!(served >= 30, "the burst is used: {served}");
    assert!(
        arrived as f64 <= 30.0 + 0.5 * elapsed + 1.0,
        "{arrived} arrivals in {elapsed:.1} s"
    );
}

/// Runs the calls concurrently.
async fn join<F>(
    calls: Vec<(usize, &'static str, F)>,
) -> Vec<(usize, &'static str, Result<Answer, String>)>
where
    F: std::future::Future<Output = Result<Answer, String>>,
{
    let (meta, futs): (Vec<_>, Vec<_>) = calls.into_iter().map(|(i, s, f)| ((i, s), f)).unzip();
    let results = futures_util::future::join_all(futs).await;
    meta.into_iter()
        .zip(results)
        .map(|((i, s), r)| (i, s, r))
        .collect()
}
