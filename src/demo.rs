//! `spgate demo` and `spgate sandbox`: the gateway against the built-in sandbox, with no Amazon
//! account, no Redis and no config file.
//!
//! The demo's config goes through the same parse-and-resolve path as a real one
//! ([`Config::from_toml`]), with its secrets (a fresh master key, the sandbox's LWA client secret)
//! handed over in memory through [`MapEnv`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::caller;
use crate::config::{Config, ConfigError, MapEnv};
use crate::crypto::{self, CryptoError, MasterKey};
use crate::sandbox::{QuotaMode, Sandbox, SandboxConfig};
use crate::secret::Secret;
use crate::store::{Region, SellerRecord, SellerStatus, StoreError};

/// The LWA client id the demo sandbox accepts.
pub const DEMO_CLIENT_ID: &str = "amzn1.application-oa2-client.spgate-demo";
/// The LWA client secret the demo sandbox accepts (not a secret: the sandbox is fake).
pub const DEMO_CLIENT_SECRET: &str = "spgate-demo-client-secret";
/// The demo seller.
pub const DEMO_SELLER: &str = "A1SPGATEDEMO01";

/// Sandbox quota modes on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QuotaArg {
    /// Each operation's published usage plan.
    Catalog,
    /// Amazon's sandbox plan: 5 requests/s, burst 15, for every operation.
    Sandbox,
    /// No quotas (for benchmarks).
    Off,
}

/// `spgate demo` arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address of the gateway (the URL seller tools use).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (health, metrics and the web console at /console).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Address of the in-process sandbox (fake SP-API and LWA).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub sandbox_listen: SocketAddr,
    /// Use a sandbox already running at this URL (`spgate sandbox`) instead of an in-process one.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Data directory (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Usage plans the in-process sandbox enforces.
    #[arg(long, value_enum, default_value = "catalog")]
    pub quotas: QuotaArg,
    /// Keep no audit log (to measure what the audit log costs; never in production).
    #[arg(long)]
    pub no_audit: bool,
    /// Answer CONNECT for Amazon's hosts (forward-proxy mode) with the CA in this directory,
    /// made there by `spgate ca init` if it holds none yet.
    #[arg(long, value_name = "DIR")]
    pub forward_proxy_ca: Option<PathBuf>,
}

/// `spgate sandbox` arguments.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8900")]
    pub listen: SocketAddr,
    /// Usage plans to enforce.
    #[arg(long, value_enum, default_value = "catalog")]
    pub quotas: QuotaArg,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_seconds: u64,
    /// Demand Restricted Data Tokens for restricted operations, as Amazon does.
    #[arg(long)]
    pub require_rdt: bool,
    /// Act as if Amazon had granted this application a higher rate (requests per second) for
    /// every operation with a usage plan: answers report it in `x-amzn-RateLimit-Limit`, which
    /// the gateway adopts, and `--quotas catalog` enforces it (bursts stay as published). For
    /// benchmarks of operations whose published plans are a few requests per second.
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    pub granted_rate: Option<f64>,
}

/// A rate given on the command line: a positive, finite number.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of requests per second"
        )),
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source} (choose another with --listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The generated config was rejected (a bug, or a bad --upstream URL).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Key generation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating the demo client failed.
    #[error(transparent)]
    Client(#[from] caller::CreateClientError),
    /// Creating the demo drop-in credentials failed.
    #[error(transparent)]
    DropIn(#[from] crate::auth::drop_in::TokenError),
    /// The gateway could not be built.
    #[error(transparent)]
    Run(#[from] crate::RunError),
    /// The forward proxy's CA could not be made or loaded.
    #[error("forward proxy: {0}")]
    Forward(#[from] crate::server::mint::MintError),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds a listener, naming the address when it cannot.
async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })
}

impl From<QuotaArg> for QuotaMode {
    fn from(q: QuotaArg) -> QuotaMode {
        match q {
            QuotaArg::Catalog => QuotaMode::Catalog,
            QuotaArg::Sandbox => QuotaMode::AmazonSandbox,
            QuotaArg::Off => QuotaMode::Off,
        }
    }
}

/// Runs the sandbox alone until `shutdown`.
pub async fn run_sandbox(
    args: SandboxArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let listener = bind(args.listen).await?;
    let sandbox = Sandbox::new(SandboxConfig {
        lwa_clients: vec![(DEMO_CLIENT_ID.into(), DEMO_CLIENT_SECRET.into())],
        access_token_ttl: Duration::from_secs(args.token_ttl_seconds),
        quotas: args.quotas.into(),
        require_rdt: args.require_rdt,
        open_enrollment: true,
    });
    if let Some(rate) = args.granted_rate {
        sandbox.grant_rate(rate);
    }
    let url = format!("http://{}", listener.local_addr()?);
    println!("sandbox SP-API:   {url}");
    println!("sandbox LWA:      {url}/auth/o2/token");
    println!("LWA client id:    {DEMO_CLIENT_ID}");
    println!("LWA client secret: {DEMO_CLIENT_SECRET}");
    println!("Any refresh token starting with Atzr| is accepted. Stats: {url}/_sandbox/stats");
    sandbox.serve(listener, shutdown).await?;
    Ok(())
}

/// Runs the gateway against the sandbox until `shutdown`, printing how to call it.
pub async fn run_demo(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let refresh_token = Secret::new(format!(
        "Atzr|spgate-demo-{}",
        crypto::random_token::<24>()?
    ));

    let upstream_url = match &args.upstream {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let listener = bind(args.sandbox_listen).await?;
            let sandbox = Sandbox::new(SandboxConfig {
                lwa_clients: vec![(DEMO_CLIENT_ID.into(), DEMO_CLIENT_SECRET.into())],
                access_token_ttl: Duration::from_secs(3600),
                quotas: args.quotas.into(),
                require_rdt: false,
                open_enrollment: false,
            });
            sandbox.add_seller(DEMO_SELLER, refresh_token.expose());
            let url = format!("http://{}", listener.local_addr()?);
            tokio::spawn(sandbox.serve(listener, stopped(stop_rx.clone())));
            url
        }
    };

    let (data_dir, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("spgate-demo-{}", crypto::random_token::<6>()?)),
            true,
        ),
    };
    let master = MasterKey::generate_base64()?;
    // The console's sign-in tokens, fresh for each run.
    let admin_tokens = (
        Secret::new(format!("ops-{}", crypto::random_token::<24>()?)),
        Secret::new(format!("sec-{}", crypto::random_token::<24>()?)),
    );
    let mut config = demo_config(
        args.listen,
        args.admin_listen,
        &upstream_url,
        &data_dir,
        &master,
        &admin_tokens,
    )?;
    if args.no_audit {
        config.audit = None;
    }
    let forward = match &args.forward_proxy_ca {
        Some(dir) => Some(demo_forward_proxy(dir, &mut config)?),
        None => None,
    };
    let opened = crate::open_store(&config).await?;
    let store = opened.store.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sealed = config.master_key.seal_str(
        &refresh_token,
        format!("refresh_token:{DEMO_SELLER}").as_bytes(),
    )?;
    store
        .put_seller(&SellerRecord {
            selling_partner_id: DEMO_SELLER.into(),
            region: Region::Na,
            marketplaces: vec!["ATVPDKIKX0DER".into()],
            refresh_token_sealed: sealed,
            authorized_at: now,
            reauthorize_by: now + 365 * 86_400,
            status: SellerStatus::Active,
        })
        .await?;
    let key =
        caller::create_client(&*store, "demo-tool", "demo", vec![DEMO_SELLER.into()], now).await?;
    let drop_in = crate::auth::drop_in::create(&*store, &key.client.id, DEMO_SELLER).await?;
    // A second tool whose role minimises: names and phones masked, e-mails pseudonymized,
    // addresses encrypted.
    let minimal = caller::create_client(
        &*store,
        "demo-minimal",
        "minimal",
        vec![DEMO_SELLER.into()],
        now,
    )
    .await?;

    let listener = bind(config.server.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    // Document links point at the demo's own address (`server.public_url`).
    config.server.public_url = Some(url.clone());
    // The sandbox knows the seller by the id it was registered under, or, for an external
    // open-enrollment sandbox, by the id it derives from the refresh token.
    let sandbox_seller = match args.upstream {
        Some(_) => Sandbox::open_enrollment_seller(refresh_token.expose()),
        None => DEMO_SELLER.to_string(),
    };
    let order = Sandbox::synthetic_order_ids(&sandbox_seller)
        .into_iter()
        .nth(8)
        .unwrap_or_default();
    print_instructions(&url, key.key.expose(), &upstream_url, &data_dir, &order);
    println!(
        "# Drop-in mode for an unmodified SP-API SDK: LWA token URL $SPGATE_URL/auth/o2/token,"
    );
    println!("# SP-API endpoint $SPGATE_URL, and these LWA credentials (they stand for demo-tool + the demo seller):");
    println!(
        "export SPGATE_LWA_CLIENT_ID={} SPGATE_LWA_CLIENT_SECRET={} SPGATE_REFRESH_TOKEN={}\n",
        drop_in.lwa_client_id,
        drop_in.client_secret.expose(),
        drop_in.refresh_token.expose()
    );
    println!("# The same order as a tool with a minimising role sees it (names and phones masked,");
    println!("# e-mails pseudonymized, the address encrypted):");
    println!("export SPGATE_MINIMAL_KEY={}", minimal.key.expose());
    println!("curl -s -H \"Authorization: Bearer $SPGATE_MINIMAL_KEY\" -H \"x-spgate-seller: $SPGATE_SELLER\" \"$SPGATE_URL/orders/v0/orders/{order}/address\"\n");

    let admin_listener = bind(args.admin_listen).await?;
    println!(
        "# The web console (sign in with either admin token): http://{}/console",
        admin_listener.local_addr()?
    );
    println!("#   ops token:      {}", admin_tokens.0.expose());
    println!("#   security token: {}\n", admin_tokens.1.expose());
    if let Some((_, cert)) = &forward {
        println!("# Forward-proxy mode, for SDKs that hard-code Amazon's hosts (same credentials; region na):");
        println!(
            "export HTTPS_PROXY={url} NODE_EXTRA_CA_CERTS={} REQUESTS_CA_BUNDLE={}\n",
            cert.display(),
            cert.display()
        );
    }
    println!("Serving until Ctrl-C.");

    let admin_tokens = config
        .admin
        .as_ref()
        .map(|a| a.tokens.clone())
        .unwrap_or_default();
    let (audit, plans, tool_plans) = (
        config.audit.clone(),
        config.ratelimit.limiter.plans.clone(),
        config.tool_plans.clone(),
    );
    let (gateway, limits) = crate::build_gateway(config, opened).await?;
    let gateway = Arc::new(gateway);
    let admin = crate::admin::Admin::new(
        gateway.clone(),
        &admin_tokens,
        None,
        Arc::new(MapEnv::default()),
    )
    .with_vault(gateway.vault().clone())
    .with_audit(audit)
    .with_plans(&plans, &tool_plans)
    .with_forward(forward.as_ref().map(|(f, _)| f.clone()));
    let admin_task = tokio::spawn(crate::server::serve(
        admin_listener,
        Arc::new(admin),
        limits,
        stopped(stop_rx.clone()),
    ));
    let scheduler =
        crate::vault::spawn_scheduler(gateway.vault().clone(), stopped(stop_rx.clone()));
    let extras = crate::server::Extras {
        tls: None,
        forward: forward.map(|(f, _)| f),
    };
    let result = crate::server::serve_with(listener, gateway, limits, extras, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = admin_task.await;
    let _ = scheduler.await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result?;
    Ok(())
}

fn demo_config(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstream: &str,
    data_dir: &std::path::Path,
    master: &Secret<String>,
    admin_tokens: &(Secret<String>, Secret<String>),
) -> Result<Config, ConfigError> {
    let toml = format!(
        r#"
[server]
listen = "{listen}"
drain_timeout_seconds = 5
[upstream.endpoints]
na = "{upstream}"
eu = "{upstream}"
fe = "{upstream}"
[lwa]
token_url = "{upstream}/auth/o2/token"
client_id = "{DEMO_CLIENT_ID}"
client_secret = {{ env = "DEMO_LWA_SECRET" }}
[store]
type = "embedded"
data_dir = {data_dir:?}
[keys]
master_key_id = "demo"
master_key = {{ env = "DEMO_MASTER_KEY" }}
[audit]
dir = {audit_dir:?}
instance = "demo"
key = {{ env = "DEMO_AUDIT_KEY" }}
{outbound}
[log]
format = "pretty"
level = "warn"
[admin]
listen = "{admin_listen}"
[[admin.tokens]]
name = "demo-ops"
role = "ops"
token = {{ env = "DEMO_OPS_TOKEN" }}
[[admin.tokens]]
name = "demo-security"
role = "security"
token = {{ env = "DEMO_SECURITY_TOKEN" }}
[roles.minimal.pii]
name = "mask"
email = "pseudonymize"
phone = "mask"
address = "encrypt"
postal_code = "mask"
coarse_location = "pass"
[roles.demo.pii]
name = "pass"
email = "pass"
phone = "pass"
address = "pass"
postal_code = "pass"
coarse_location = "pass"
company = "pass"
gift_message = "pass"
customization_url = "pass"
delivery_instructions = "pass"
"#,
        data_dir = data_dir.display().to_string(),
        outbound = sandbox_outbound(upstream),
        audit_dir = data_dir.join("audit").display().to_string(),
    );
    let mut env = MapEnv::default();
    // Derived from the demo's master key, so a kept data directory reopens its audit chain.
    let audit_key = {
        use base64::Engine;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("spgate-demo-audit:{}", master.expose()).as_bytes(),
        );
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    };
    env.vars.insert("DEMO_AUDIT_KEY".into(), audit_key);
    env.vars
        .insert("DEMO_LWA_SECRET".into(), DEMO_CLIENT_SECRET.into());
    env.vars
        .insert("DEMO_MASTER_KEY".into(), master.expose().clone());
    env.vars
        .insert("DEMO_OPS_TOKEN".into(), admin_tokens.0.expose().clone());
    env.vars.insert(
        "DEMO_SECURITY_TOKEN".into(),
        admin_tokens.1.expose().clone(),
    );
    Config::from_toml(&toml, &env)
}

/// `--forward-proxy-ca DIR`: the CA in `dir` (made now when absent), as `[forward_proxy]` with
/// the default hosts. Returns the loaded proxy and the CA certificate's path.
fn demo_forward_proxy(
    dir: &std::path::Path,
    config: &mut Config,
) -> Result<(Arc<crate::server::forward::Forward>, PathBuf), DemoError> {
    use crate::server::{forward, mint};
    let (cert, key) = (dir.join(mint::CA_CERT_FILE), dir.join(mint::CA_KEY_FILE));
    if !cert.exists() && !key.exists() {
        mint::ca_init(dir)?;
    }
    let raw = forward::RawForwardProxy {
        enabled: Some(true),
        ca_cert_file: Some(cert.clone()),
        ca_key_file: Some(key),
        ..forward::RawForwardProxy::default()
    };
    let env = crate::config::ProcessEnv;
    let resolved = raw.resolve(&env).map_err(ConfigError)?.ok_or_else(|| {
        ConfigError(vec![crate::config::ConfigIssue {
            path: "forward_proxy.enabled".into(),
            message: "the demo's forward proxy did not resolve".into(),
        }])
    })?;
    let loaded = Arc::new(forward::Forward::load(&resolved, &env)?);
    config.forward_proxy = Some(resolved);
    Ok((loaded, cert))
}

/// The `[outbound]` opt-in for a sandbox on loopback: its report documents download from its
/// own address over http, which the gateway otherwise refuses.
fn sandbox_outbound(upstream: &str) -> String {
    let authority = upstream
        .strip_prefix("http://")
        .unwrap_or(upstream)
        .trim_end_matches('/');
    match authority.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => {
            format!("[outbound]\nallow_loopback = [\"{addr}\"]")
        }
        _ => String::new(),
    }
}

fn print_instructions(
    url: &str,
    key: &str,
    upstream: &str,
    data_dir: &std::path::Path,
    order: &str,
) {
    println!("spgate demo: the gateway at {url}, in front of the sandbox at {upstream}.");
    println!("Data directory: {}\n", data_dir.display());
    println!("export SPGATE_URL={url} SPGATE_KEY={key} SPGATE_SELLER={DEMO_SELLER}\n");
    println!("# Orders for the demo seller (synthetic orders, synthetic buyers):");
    println!("curl -s -H \"Authorization: Bearer $SPGATE_KEY\" -H \"x-spgate-seller: $SPGATE_SELLER\" \"$SPGATE_URL/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2026-01-01T00:00:00Z\"\n");
    println!("# One order's shipping address (restricted data, synthetic buyer):");
    println!("curl -s -H \"Authorization: Bearer $SPGATE_KEY\" -H \"x-spgate-seller: $SPGATE_SELLER\" \"$SPGATE_URL/orders/v0/orders/{order}/address\"\n");
    println!("# The seller's marketplaces:");
    println!("curl -s -H \"Authorization: Bearer $SPGATE_KEY\" -H \"x-spgate-seller: $SPGATE_SELLER\" \"$SPGATE_URL/sellers/v1/marketplaceParticipations\"\n");
}
