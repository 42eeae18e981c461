//! spgate: a gateway between seller tools and Amazon's Selling Partner API.
//!
//! # Layout
//! - [`auth`]: caller API keys, LWA access tokens (cached, single-flight).
//! - [`catalog`]: every SP-API operation (path template, usage plan, restricted?, PII map).
//! - [`config`]: the config file: parse, validate, resolve secrets (the only env/file reader).
//! - [`crypto`]: randomness, hashing and sealing secrets at rest (ring).
//! - [`proxy`]: the request pipeline, written once; `rescue` maps every error to a response.
//! - [`ratelimit`]: Amazon's token buckets per seller and operation (local or Redis), fair shares per tool.
//! - [`sandbox`]: a fake SP-API + LWA (static examples, synthetic orders, quotas, token expiry).
//! - [`secret`]: `Secret<T>`, which never prints its value.
//! - [`server`]: accept loop, connection limit, graceful drain.
//! - [`spapi`]: SP-API wire shapes shared by the gateway and the sandbox.
//! - [`store`]: the storage trait and its embedded (SQLite) backend.
pub mod auth;
pub mod catalog;
pub mod config;
pub mod crypto;
pub mod proxy;
pub mod ratelimit;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod spapi;
pub mod store;

pub mod demo;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::lwa::Lwa;
use crate::config::{Config, StoreConfig};
use crate::proxy::upstream::{build_client, Upstream};
use crate::proxy::{Gateway, GatewayParts, Limits};
use crate::server::ServerLimits;
use crate::store::embedded::EmbeddedStore;
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
}

/// Opens the store the config names.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.store {
        StoreConfig::Embedded { data_dir } => Ok(Arc::new(EmbeddedStore::open(data_dir)?)),
    }
}

/// Builds the gateway from a config and an opened store.
pub fn build_gateway(config: Config, store: Arc<dyn Store>) -> (Gateway, ServerLimits) {
    let client = build_client(&config.upstream);
    let lwa = Lwa::new(client.clone(), &config.lwa);
    let upstream = Upstream::new(client, &config.upstream);
    let server_limits = ServerLimits {
        max_connections: config.server.max_connections,
        max_header_bytes: config.server.max_header_bytes,
        header_read_timeout: config.server.header_read_timeout,
        drain_timeout: config.server.drain_timeout,
    };
    let gateway = Gateway::new(GatewayParts {
        store,
        master_key: Arc::new(config.master_key),
        lwa,
        upstream,
        endpoints: config.upstream.endpoints,
        limits: Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_request_body_bytes: config.server.max_request_body_bytes,
        },
    });
    (gateway, server_limits)
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let store = open_store(&config)?;
    let (gateway, limits) = build_gateway(config, store);
    server::serve(listener, Arc::new(gateway), limits, shutdown).await?;
    Ok(())
}
