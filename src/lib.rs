//! spgate: a gateway between seller tools and Amazon's Selling Partner API.
//!
//! # Layout
//! - [`admin`]: the admin listener: health, metrics, rate-limit status, reload (ops/security tokens).
//! - [`audit`]: the audit log: records, the hash-chained writer, alerts, verify/query/report.
//! - [`auth`]: caller API keys, LWA access tokens (cached, single-flight).
//! - [`catalog`]: every SP-API operation (path template, usage plan, restricted?, PII map).
//! - [`compat`]: Orders v0 calls answered from Orders 2026-01-01 (issue 18): request and field map.
//! - [`config`]: the config file: parse, validate, resolve secrets (the only env/file reader).
//! - [`crypto`]: randomness, hashing and sealing secrets at rest (ring); per-order data keys.
//! - [`documents`]: report documents redacted while streaming, and their signed links.
//! - [`net`]: the SP-API HTTP client and streaming body wrappers (below `proxy` and `auth`).
//! - [`pii`]: buyer-PII categories, roles, the field map and the response transform.
//! - [`proxy`]: the request pipeline, written once; `rescue` maps every error to a response.
//! - [`ratelimit`]: Amazon's token buckets per seller and operation (local or Redis), fair shares per tool.
//! - [`sandbox`]: a fake SP-API + LWA (static examples, synthetic orders, quotas, token expiry).
//! - [`secret`]: `Secret<T>`, which never prints its value.
//! - [`server`]: accept loop, connection limit, graceful drain; TLS; the forward proxy (CONNECT to Amazon's hosts answered with minted certificates).
//! - [`spapi`]: SP-API wire shapes shared by the gateway and the sandbox.
//! - [`store`]: the storage trait and its embedded (SQLite) backend.
//! - [`vault`]: per-order data keys, retention records, the PII cache, the deletion scheduler.
pub mod admin;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod compat;
pub mod config;
pub mod crypto;
pub mod documents;
pub mod net;
pub mod pii;
pub mod proxy;
pub mod ratelimit;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod spapi;
pub mod store;
pub mod vault;

pub mod demo;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::lwa::Lwa;
use crate::config::{Config, StoreConfig};
use crate::net::upstream::{build_client, Upstream};
use crate::proxy::{Gateway, GatewayParts, Limits};
use crate::server::ServerLimits;
use crate::store::cache::CachedStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::token_cache::SharedTokenCache;
use crate::store::{Store, StoreError};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The LWA client could not be set up.
    #[error(transparent)]
    Lwa(#[from] crate::auth::lwa::LwaError),
    /// The RDT client could not be set up.
    #[error(transparent)]
    Rdt(#[from] crate::auth::rdt::RdtError),
    /// The rate limiter could not be set up.
    #[error(transparent)]
    RateLimit(#[from] crate::ratelimit::RateLimitError),
    /// Audit records were lost and no gap record says so (the log could not be written at
    /// shutdown).
    #[error("{0} audit record(s) could not be written before exit")]
    AuditIncomplete(u64),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A listener's certificate could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    /// The Orders v0 translator could not be set up (its field map).
    #[error(transparent)]
    Compat(#[from] crate::compat::CompatError),
    /// The forward proxy's CA could not be loaded.
    #[error("forward proxy: {0}")]
    Forward(#[from] crate::server::mint::MintError),
    /// The document download client could not be set up.
    #[error(transparent)]
    Outbound(#[from] crate::proxy::outbound::OutboundError),
}

/// How long startup waits for the shared-answer invalidation channel to be live.
const SHARED_CALLS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long per-request store lookups are cached (other processes' writes apply within it).
pub const STORE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// An opened store: the backend behind the per-request lookup cache, and, for Redis, the
/// access-token cache shared by every instance.
pub struct OpenStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The shared access-token cache (Redis, or Postgres with the limiter's Redis or itself).
    pub shared_tokens: Option<Arc<dyn SharedTokenCache>>,
}

/// Opens the store the config names.
pub async fn open_store(config: &Config) -> Result<OpenStore, StoreError> {
    let (inner, shared_tokens): (Arc<dyn Store>, Option<Arc<dyn SharedTokenCache>>) = match &config
        .store
    {
        StoreConfig::Embedded { data_dir } => (Arc::new(EmbeddedStore::open(data_dir)?), None),
        StoreConfig::Redis {
            url,
            key_prefix,
            access,
        } => {
            let redis = Arc::new(RedisStore::connect_with(url.expose(), access, key_prefix).await?);
            (redis.clone(), Some(redis))
        }
        StoreConfig::Postgres(options) => {
            let postgres = Arc::new(store::postgres::PostgresStore::connect(options).await?);
            (
                postgres.clone(),
                Some(postgres_token_cache(config, postgres).await),
            )
        }
    };
    Ok(OpenStore {
        store: Arc::new(CachedStore::new(inner, STORE_CACHE_TTL)),
        shared_tokens,
    })
}

/// With the postgres store, the access-token cache and refresh locks (rebuildable state) live in
/// the limiter's Redis when one is configured, else in Postgres. A Redis that does not answer at
/// start is reported and Postgres used: losing the cache costs one LWA refresh per seller.
async fn postgres_token_cache(
    config: &Config,
    postgres: Arc<store::postgres::PostgresStore>,
) -> Arc<dyn SharedTokenCache> {
    let Some(redis) = &config.ratelimit.redis else {
        return postgres;
    };
    match RedisStore::connect_with(redis.url.expose(), &redis.access, &redis.key_prefix).await {
        Ok(cache) => Arc::new(cache),
        Err(e) => {
            tracing::error!(error = %e, "The limiter's Redis does not answer: access tokens are shared through PostgreSQL instead.");
            postgres
        }
    }
}

/// Builds the gateway from a config and an opened store.
pub async fn build_gateway(
    config: Config,
    opened: OpenStore,
) -> Result<(Gateway, ServerLimits), RunError> {
    let shared_redis = crate::proxy::SharedCallsRedis::of(&config);
    let limiter = match &config.ratelimit.redis {
        None => {
            let limiter = crate::ratelimit::Limiter::local(config.ratelimit.limiter.clone());
            // A restart never hands out a burst the previous run spent (ratelimit/restart.rs).
            if let StoreConfig::Embedded { data_dir } = &config.store {
                limiter.guard_restarts(data_dir)?;
            }
            limiter
        }
        Some(redis) => {
            crate::ratelimit::Limiter::redis(config.ratelimit.limiter.clone(), redis.clone())
                .await?
        }
    };
    let store = opened.store;
    let master_key = Arc::new(config.master_key);
    let auditor = match &config.audit {
        Some(cfg) => crate::audit::Auditor::start(cfg)?,
        None => {
            tracing::warn!("No [audit] section: no audit log is kept. Configure one in production (Amazon's DPP requires access logs).");
            crate::audit::Auditor::disabled()
        }
    };
    let sink_auditor = auditor.clone();
    let vault = vault::Vault::new(
        store.clone(),
        master_key.clone(),
        config.retention.clone(),
        Arc::new(vault::SystemClock),
        Arc::new(move |event: vault::VaultEvent| {
            sink_auditor.record(crate::audit::events::vault_record(&event));
        }),
    );
    let client = build_client(&config.upstream);
    let shared = opened.shared_tokens.map(|cache| crate::auth::lwa::Shared {
        cache,
        key: master_key.clone(),
    });
    let lwa = Lwa::new(&config.lwa, shared)?;
    let rdts = crate::auth::rdt::Rdts::new(config.lwa.timeout)?;
    let upstream = Upstream::new(client, &config.upstream);
    let outbound = crate::proxy::outbound::Fetcher::new(config.outbound, &config.upstream)?;
    let server_limits = ServerLimits {
        max_connections: config.server.max_connections,
        max_header_bytes: config.server.max_header_bytes,
        header_read_timeout: config.server.header_read_timeout,
        drain_timeout: config.server.drain_timeout,
        write_timeout: config.server.write_timeout,
        peers: config.server.peers,
    };
    let compat = std::sync::Arc::new(crate::compat::Compat::new(config.compat.clone())?);
    let gateway = Gateway::new(GatewayParts {
        store,
        master_key,
        lwa,
        upstream,
        endpoints: config.upstream.endpoints,
        public_url: config.server.public_url.clone(),
        limits: Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_request_body_bytes: config.server.max_request_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            replay_buffer_bytes: config.server.replay_buffer_bytes,
        },
        roles: config.roles,
        pii: config.pii,
        vault,
        auditor,
        outbound,
        rdts,
        onboarding: config.onboarding,
        sigv4: config.upstream.sigv4.clone(),
        limiter,
        tool_plans: config.tool_plans,
        client_pins: config.tool_client_certs.clone(),
        retry: crate::proxy::RetryPolicy {
            max_retries: 2,
            base_delay: std::time::Duration::from_millis(200),
            default_deadline: config.ratelimit.limiter.default_max_wait,
            budget: crate::proxy::RetryBudget::new(),
        },
        compat,
        shared_calls: config.shared_calls.with_redis(shared_redis),
    });
    // Other instances' writes reach the shared-answer cache before it serves (it stays closed,
    // and says so, while they cannot).
    gateway.shared_calls().wait_live(SHARED_CALLS_WAIT).await;
    Ok((gateway, server_limits))
}

/// The bound sockets the gateway serves.
pub struct Listeners {
    /// The proxy listener (SP-API paths, the drop-in token endpoint, seller authorization).
    pub proxy: TcpListener,
    /// The admin listener, when `[admin]` is configured.
    pub admin: Option<TcpListener>,
}

/// Runs the gateway until `shutdown` completes, then drains. `config_path` is re-read on
/// SIGHUP and `POST /admin/reload` (rate plans and their assignment to tools).
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let tokens = config
        .admin
        .as_ref()
        .map(|a| a.tokens.clone())
        .unwrap_or_default();
    let env: Arc<dyn config::Env + Send + Sync> = Arc::new(config::ProcessEnv);
    let tls = listener_tls(&config, &env)?;
    let forward = match &config.forward_proxy {
        Some(f) => Some(Arc::new(server::forward::Forward::load(f, &*env)?)),
        None => None,
    };
    let opened = open_store(&config).await?;
    // What the console shows of the audit log and the plans in force.
    let (audit, plans, tool_plans) = (
        config.audit.clone(),
        config.ratelimit.limiter.plans.clone(),
        config.tool_plans.clone(),
    );
    let (invite_key, onboarding) = (
        Arc::new(config.master_key.clone()),
        config.onboarding.clone(),
    );
    let (gateway, limits) = build_gateway(config, opened).await?;
    let gateway = Arc::new(gateway);
    // The vault (per-order keys, PII cache, retention) and its deletion scheduler.
    let vault = gateway.vault().clone();
    let admin = Arc::new(
        admin::Admin::new(gateway.clone(), &tokens, config_path, env)
            .with_vault(vault.clone())
            .with_tls(tls.iter().flatten().cloned().collect())
            .with_audit(audit)
            .with_plans(&plans, &tool_plans)
            .with_onboarding(invite_key, onboarding)
            .with_forward(forward.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    for listener in tls.iter().flatten() {
        drop(listener.spawn_watcher(stopped()));
    }
    #[cfg(unix)]
    {
        let admin = admin.clone();
        let tls = tls.clone();
        let stop = stopped();
        // A file size limit (RLIMIT_FSIZE) makes a write fail with EFBIG instead of ending the
        // process: the audit writer reports it, refuses by audit.on_failure and recovers.
        let mut xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))?;
        tokio::spawn(async move {
            while xfsz.recv().await.is_some() {
                tracing::warn!("File size limit reached (SIGXFSZ): the write failed.");
            }
        });
        // Registered before the listeners serve: SIGHUP's default action would end the process.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        match admin.reload(None) {
                            Ok(()) => tracing::info!("Configuration reloaded on SIGHUP."),
                            Err(e) => tracing::error!(error = %e, "Reload on SIGHUP refused; the running configuration stays."),
                        }
                        for listener in tls.iter().flatten() {
                            listener.reload_logged("SIGHUP");
                        }
                    },
                    () = &mut stop => break,
                }
            }
        });
    }
    // Runs a pass at once (catching up on what fell due while the gateway was down).
    let scheduler = vault::spawn_scheduler(vault, stopped());
    if let Some(admin) = listeners.admin.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(admin = %admin, "The admin listener is serving.");
    }
    let [proxy_tls, admin_tls] = tls;
    let admin_task = listeners.admin.map(|l| {
        tokio::spawn(server::serve_with_tls(
            l,
            admin.clone(),
            limits,
            admin_tls,
            stopped(),
        ))
    });
    tracing::info!(listen = %listeners.proxy.local_addr()?, "spgate is serving.");
    let auditor = gateway.auditor().clone();
    let proxy = server::serve_with(
        listeners.proxy,
        gateway.clone(),
        limits,
        server::Extras {
            tls: proxy_tls,
            forward,
        },
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
    );
    proxy.await?;
    // Requests the drain did not finish are cut and recorded (`shutdown`) before the log closes.
    let uncut = gateway
        .cut_in_flight(std::time::Duration::from_secs(2))
        .await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let _ = scheduler.await;
    let unrecorded = auditor.shutdown().await + uncut as u64;
    if unrecorded > 0 {
        tracing::error!(
            records = unrecorded,
            "Audit records could not be written before exit."
        );
        return Err(RunError::AuditIncomplete(unrecorded));
    }
    Ok(())
}

/// Loads the proxy and admin listeners' certificates, when `[server.tls]` / `[admin.tls]` are set.
fn listener_tls(
    config: &Config,
    env: &Arc<dyn config::Env + Send + Sync>,
) -> Result<[Option<Arc<server::tls::TlsListener>>; 2], RunError> {
    let proxy = match &config.server.tls {
        Some(tls) => Some(server::tls::TlsListener::load(
            "proxy",
            tls.clone(),
            config.tool_client_certs.clone(),
            env.clone(),
        )?),
        None => None,
    };
    let admin = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(tls) => Some(server::tls::TlsListener::load(
            "admin",
            tls.clone(),
            server::tls::ClientPins::new(),
            env.clone(),
        )?),
        None => None,
    };
    Ok([proxy, admin])
}
