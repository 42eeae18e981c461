//! Test harness: a gateway on 127.0.0.1:0 in front of an in-process sandbox, on a fresh data
//! directory, with one seller and one tool key.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(unreachable_pub)] // a test helper module is private to each test crate by construction

pub mod cut;
pub mod pg;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spgate::auth::caller;
use spgate::config::{Config, MapEnv};
use spgate::crypto::MasterKey;
use spgate::proxy::body::Body;
use spgate::sandbox::{QuotaMode, Sandbox, SandboxConfig};
use spgate::secret::Secret;
use spgate::store::{Region, SellerRecord, SellerStatus, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const CLIENT_ID: &str = "amzn1.application-oa2-client.test";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const SELLER: &str = "A1TESTSELLER01";
/// The audit key tests may use (`key = { env = "AUDIT_KEY" }`): base64 of 36 bytes.
pub const AUDIT_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr";
pub const REFRESH_TOKEN: &str = "Atzr|test-refresh-token-synthetic";

/// Knobs for one test gateway.
pub struct Options {
    pub quotas: QuotaMode,
    pub token_ttl: Duration,
    pub require_rdt: bool,
    /// Extra TOML appended to the generated config (sections must not repeat).
    pub server_toml: String,
    pub upstream_toml: String,
    pub lwa_toml: String,
    /// Sellers the tool key may act for.
    pub key_sellers: Vec<String>,
    /// Endpoint of the EU region (the test seller's) instead of the sandbox.
    pub eu_endpoint: Option<String>,
    /// The LWA client secret the gateway uses (default: one the sandbox accepts).
    pub gateway_lwa_secret: String,
    /// The previous LWA client secret configured on the gateway.
    pub gateway_previous_lwa_secret: Option<String>,
    /// Client secrets the sandbox's LWA accepts.
    pub sandbox_lwa_secrets: Vec<String>,
    /// The tool key's role.
    pub role: String,
    /// Turn the PII cache on (off by default: most tests count upstream calls).
    pub pii_cache: bool,
    /// `[roles...]` tables appended to the config (the default role `orders` receives everything).
    pub roles_toml: String,
    /// Other sections appended to the config.
    pub extra_toml: String,
    /// Use this running sandbox (and its URL) instead of starting one.
    pub shared_sandbox: Option<(Sandbox, String)>,
    /// The `[store]` section (default: embedded under the test's temporary directory).
    pub store_toml: Option<String>,
    /// The master key (instances sharing a Redis store must share it).
    pub master_key: Option<Secret<String>>,
    /// Opt the sandbox's address in to document downloads over loopback (`[outbound]`).
    pub sandbox_documents: bool,
    /// Classify operations by these lists instead of the built-in ones (a catalog/data mismatch).
    pub classifier: Option<&'static spgate::pii::Classifier>,
    /// Leave `server.public_url` unset (by default it is the test gateway's own URL).
    pub no_public_url: bool,
    /// Files the config names (e.g. `[forward_proxy]`'s CA), read into the gateway's `MapEnv`.
    pub files: Vec<std::path::PathBuf>,
}

/// A `[store]` section for the shared Redis on 127.0.0.1:6379 under a fresh key prefix.
pub fn redis_store_toml() -> String {
    let prefix = format!(
        "spgate-test-{}:",
        spgate::crypto::random_token::<9>().unwrap()
    );
    format!(
        "[store]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
    )
}

/// A role that receives every PII category in clear.
pub fn all_pass_role(name: &str) -> String {
    let cats = spgate::pii::Category::ALL
        .iter()
        .map(|c| format!("{c} = \"pass\""))
        .collect::<Vec<_>>()
        .join("\n");
    format!("[roles.{name}.pii]\n{cats}\n")
}

/// A sandbox script answering `status` with `body`, at once, every time.
pub fn scripted(status: http::StatusCode, body: String) -> spgate::sandbox::Script {
    spgate::sandbox::Script {
        status,
        headers: vec![],
        body: spgate::sandbox::ScriptBody::Bytes(Bytes::from(body)),
        header_delay: Duration::ZERO,
        times: None,
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quotas: QuotaMode::Off,
            token_ttl: Duration::from_secs(3600),
            require_rdt: false,
            server_toml: String::new(),
            upstream_toml: String::new(),
            lwa_toml: String::new(),
            key_sellers: vec![SELLER.to_string()],
            eu_endpoint: None,
            gateway_lwa_secret: CLIENT_SECRET.into(),
            gateway_previous_lwa_secret: None,
            sandbox_lwa_secrets: vec![CLIENT_SECRET.into()],
            role: "orders".into(),
            pii_cache: false,
            roles_toml: all_pass_role("orders"),
            extra_toml: String::new(),
            shared_sandbox: None,
            store_toml: None,
            master_key: None,
            sandbox_documents: true,
            classifier: None,
            no_public_url: false,
            files: Vec::new(),
        }
    }
}

pub struct TestGateway {
    pub url: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    pub store: Arc<dyn Store>,
    pub key: String,
    pub master_key_b64: Secret<String>,
    pub client: Client<HttpConnector, Body>,
    pub lwa_calls: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub gateway: Arc<spgate::proxy::Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    sandbox_shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub dir: tempfile::TempDir,
}

pub async fn start_gateway(opts: Options) -> TestGateway {
    let (sandbox, sandbox_url, stx) = match opts.shared_sandbox.clone() {
        Some((sandbox, url)) => (sandbox, url, None),
        None => {
            let sandbox = Sandbox::new(SandboxConfig {
                lwa_clients: opts
                    .sandbox_lwa_secrets
                    .iter()
                    .map(|s| (CLIENT_ID.to_string(), s.clone()))
                    .collect(),
                access_token_ttl: opts.token_ttl,
                quotas: opts.quotas,
                require_rdt: opts.require_rdt,
                open_enrollment: false,
            });
            sandbox.add_seller(SELLER, REFRESH_TOKEN);
            let sl = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", sl.local_addr().unwrap());
            let (stx, srx) = oneshot::channel::<()>();
            tokio::spawn(sandbox.clone().serve(sl, async {
                let _ = srx.await;
            }));
            (sandbox, url, Some(stx))
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let master = opts
        .master_key
        .clone()
        .unwrap_or_else(|| MasterKey::generate_base64().unwrap());
    let previous = match opts.gateway_previous_lwa_secret {
        Some(_) => "previous_client_secret = { env = \"LWA_PREVIOUS_SECRET\" }",
        None => "",
    };
    // Bound first: document links are built on the gateway's URL (`server.public_url`).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let public_url = if opts.no_public_url {
        String::new()
    } else {
        format!("public_url = \"{url}\"")
    };
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout_seconds = 5
{public_url}
{server}
[upstream]
connect_timeout_ms = 1000
{upstream}
[upstream.endpoints]
na = "{sandbox_url}"
eu = "{eu}"
fe = "{sandbox_url}"
[lwa]
token_url = "{sandbox_url}/auth/o2/token"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "LWA_SECRET" }}
timeout_ms = 2000
{previous}
{lwa}
{store}
[keys]
master_key = {{ env = "MASTER" }}
{roles}
[retention]
cache = {cache}
{outbound}
{extra}
"#,
        cache = opts.pii_cache,
        roles = opts.roles_toml,
        store = opts.store_toml.clone().unwrap_or_else(|| format!(
            "[store]\ntype = \"embedded\"\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        )),
        extra = opts.extra_toml,
        outbound = if opts.sandbox_documents {
            format!(
                "[outbound]\nallow_loopback = [\"{}\"]\n",
                sandbox_url.trim_start_matches("http://")
            )
        } else {
            String::new()
        },
        server = opts.server_toml,
        upstream = opts.upstream_toml,
        lwa = opts.lwa_toml,
        eu = opts
            .eu_endpoint
            .clone()
            .unwrap_or_else(|| sandbox_url.clone()),
    );
    let mut env = MapEnv::default();
    env.vars
        .insert("LWA_SECRET".into(), opts.gateway_lwa_secret.clone());
    if let Some(p) = &opts.gateway_previous_lwa_secret {
        env.vars.insert("LWA_PREVIOUS_SECRET".into(), p.clone());
    }
    env.vars.insert("MASTER".into(), master.expose().clone());
    // For tests that configure `[audit] key = { env = "AUDIT_KEY" }`.
    env.vars.insert("AUDIT_KEY".into(), AUDIT_KEY.into());
    for f in &opts.files {
        env.files
            .insert(f.clone(), std::fs::read_to_string(f).unwrap());
    }
    let config = Config::from_toml(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
    // `[forward_proxy]` in `extra_toml`: the listener answers CONNECT as `spgate serve` does.
    let forward = config
        .forward_proxy
        .as_ref()
        .map(|f| Arc::new(spgate::server::forward::Forward::load(f, &env).unwrap()));
    let opened = spgate::open_store(&config).await.unwrap();
    let store = opened.store.clone();
    put_seller(
        &*store,
        &config.master_key,
        SELLER,
        REFRESH_TOKEN,
        Region::Eu,
        "A1PA6795UKMFR9",
    )
    .await;
    let key = caller::create_client(
        &*store,
        "test-tool",
        &opts.role,
        opts.key_sellers.clone(),
        1_700_000_000,
    )
    .await
    .unwrap();

    let (gateway, limits) = spgate::build_gateway(config, opened).await.unwrap();
    let gateway = match opts.classifier {
        Some(classifier) => gateway.with_classifier(classifier),
        None => gateway,
    };
    let gateway = Arc::new(gateway);
    let gateway_handle = gateway.clone();
    let g = gateway.clone();
    let lwa_calls: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(move || g.lwa().calls());
    let (tx, rx) = oneshot::channel::<()>();
    let extras = spgate::server::Extras { tls: None, forward };
    let server = tokio::spawn(spgate::server::serve_with(
        listener,
        gateway,
        limits,
        extras,
        async {
            let _ = rx.await;
        },
    ));
    TestGateway {
        url,
        sandbox,
        sandbox_url,
        store,
        key: key.key.expose().clone(),
        master_key_b64: master,
        client: Client::builder(TokioExecutor::new()).build_http(),
        lwa_calls,
        gateway: gateway_handle,
        shutdown: Some(tx),
        sandbox_shutdown: stx,
        server: Some(server),
        dir,
    }
}

/// Amazon's models in `../shared/spapi-models` beside the repository; without them a developer
/// gets a skip notice (`None`), and CI (`CI` set) fails.
pub fn models_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spapi-models");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have ../shared/spapi-models beside the repository"
    );
    eprintln!("skipping: {} not found", dir.display());
    None
}

/// A buffered response.
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The first SP-API error code, asserting the body has SP-API's error shape (Amazon's own
    /// examples sometimes leave out `details`; the gateway's errors always carry it).
    pub fn error_code(&self) -> String {
        let v = self.json();
        let first = &v["errors"][0];
        assert!(
            first["code"].is_string() && first["message"].is_string(),
            "not SP-API's error shape: {v}"
        );
        assert!(
            first.get("details").is_none_or(|d| d.is_string()),
            "details must be a string: {v}"
        );
        if self.headers.get("x-amzn-requestid").is_none() {
            assert!(
                first["details"].is_string(),
                "a gateway error carries details: {v}"
            );
        }
        first["code"].as_str().unwrap().to_string()
    }
}

impl TestGateway {
    /// A request to the gateway with this test's key and seller.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.url, path))
            .header("authorization", format!("Bearer {}", self.key))
            .header("x-spgate-seller", SELLER)
    }

    pub async fn send(&self, req: Request<Body>) -> Response<hyper::body::Incoming> {
        self.client.request(req).await.expect("gateway answers")
    }

    pub async fn call(&self, req: Request<Body>) -> Reply {
        let resp = self.send(req).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A GET with this test's key for `seller`.
    pub async fn get_for(&self, seller: &str, path: &str) -> Reply {
        self.call(
            Request::get(format!("{}{path}", self.url))
                .header("authorization", format!("Bearer {}", self.key))
                .header("x-spgate-seller", seller)
                .body(empty())
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(self.request(Method::GET, path).body(empty()).unwrap())
            .await
    }

    /// A GET for the test seller as the tool whose API key is `key`.
    pub async fn get_as(&self, key: &str, path: &str) -> Reply {
        let req = Request::get(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {key}"))
            .header("x-spgate-seller", SELLER)
            .body(empty())
            .unwrap();
        self.call(req).await
    }

    /// The API key of a new tool `tool` with `role`, for the test seller.
    pub async fn tool_key(&self, tool: &str, role: &str) -> String {
        let created =
            caller::create_client(&*self.store, tool, role, vec![SELLER.into()], 1_700_000_000)
                .await
                .unwrap();
        created.key.expose().clone()
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.sandbox_shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn empty() -> Body {
    spgate::proxy::body::empty()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Adds a seller of `region` to the gateway's store and the sandbox (the sandbox answers every
/// region).
pub async fn add_seller(gw: &TestGateway, seller: &str, region: Region) {
    let master = MasterKey::from_base64("k1", &gw.master_key_b64).unwrap();
    let refresh = format!("Atzr|synthetic-{seller}");
    gw.sandbox.add_seller(seller, &refresh);
    put_seller(
        &*gw.store,
        &master,
        seller,
        &refresh,
        region,
        "ATVPDKIKX0DER",
    )
    .await;
}

/// Stores an active seller with its refresh token sealed under `master`.
async fn put_seller(
    store: &dyn Store,
    master: &MasterKey,
    seller: &str,
    refresh: &str,
    region: Region,
    marketplace: &str,
) {
    let sealed = master
        .seal_str(
            &Secret::new(refresh.to_string()),
            format!("refresh_token:{seller}").as_bytes(),
        )
        .unwrap();
    store
        .put_seller(&SellerRecord {
            selling_partner_id: seller.into(),
            region,
            marketplaces: vec![marketplace.into()],
            refresh_token_sealed: sealed,
            authorized_at: 1_700_000_000,
            reauthorize_by: 1_900_000_000,
            status: SellerStatus::Active,
        })
        .await
        .unwrap();
}

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    process::free_port()
}

/// Deletes every Redis key under a store section's prefix.
pub async fn clean_redis(store_toml: &str) {
    let prefix = store_toml
        .split("key_prefix = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
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

/// Every audit record the gateway wrote under `dir` (after a flush), in file order.
pub async fn audit_records(gw: &TestGateway, dir: &std::path::Path) -> Vec<serde_json::Value> {
    gw.gateway.auditor().flush().await;
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                records.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    records
}

/// The interpreter with python-amazon-sp-api (`SPGATE_SDK_PYTHON`, else `python3`). Without
/// the SDK a developer gets a skip notice (`None`); under CI it is a failure.
pub fn sdk_python() -> Option<String> {
    let python = std::env::var("SPGATE_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import sp_api"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide python-amazon-sp-api (SPGATE_SDK_PYTHON)"
    );
    eprintln!("skipping: python-amazon-sp-api is not installed for {python}");
    None
}

/// Runs `tests/sdk/<script>` with `python` against `gw` in drop-in mode (fresh drop-in
/// credentials for the test tool); fails the test unless it succeeds, and returns its output.
pub async fn run_sdk_script(gw: &TestGateway, python: String, script: &str) -> String {
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = spgate::auth::drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let (url, id, secret, refresh) = (
        gw.url.clone(),
        creds.lwa_client_id.clone(),
        creds.client_secret.expose().clone(),
        creds.refresh_token.expose().clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("SPGATE_URL", url)
            .env("SPGATE_LWA_CLIENT_ID", id)
            .env("SPGATE_LWA_CLIENT_SECRET", secret)
            .env("SPGATE_REFRESH_TOKEN", refresh)
            // The sandbox's synthetic gzip report (Amazon's example names a document on its CDN).
            .env("SPGATE_REPORT_DOCUMENT", "SPGATE-SANDBOX-ORDERS-SHIPPING")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "SDK failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `/readyz` of `admin`: its status and body.
pub async fn readyz(admin: &spgate::admin::Admin) -> (http::StatusCode, String) {
    let req = Request::get("/readyz")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = admin.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The admin router of `gw` (no tokens: `/readyz` needs none).
pub fn admin_of(gw: &TestGateway) -> spgate::admin::Admin {
    spgate::admin::Admin::new(
        gw.gateway.clone(),
        &[],
        None,
        Arc::new(spgate::config::MapEnv::default()),
    )
}

/// Polls `/readyz` until it answers `want`, for up to `within`; returns its last body.
pub async fn readyz_until(
    admin: &spgate::admin::Admin,
    want: http::StatusCode,
    within: Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, body) = readyz(admin).await;
        if status == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts `reply` is the answer to a dependency outage: 503 `ServiceUnavailable` in SP-API's
/// shape with a `Retry-After` of at least a second (never a 500).
pub fn assert_unavailable(reply: &Reply) {
    assert_eq!(
        reply.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
}
