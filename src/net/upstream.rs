//! The pooled HTTPS client to SP-API and LWA: rustls with ring, TLS 1.2 and 1.3 only, keep-alive
//! pool, connect/header/total timeouts.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::body::{Body, BodyTooLarge, Deadline};
use crate::config::UpstreamConfig;

/// The shared HTTP client type (plain HTTP is allowed for local sandboxes and tests).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why a request to SP-API (or LWA) failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connection could not be established.
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    /// Response headers did not arrive within the header timeout.
    #[error("upstream did not answer within {0:?}")]
    HeaderTimeout(Duration),
    /// The caller's request body exceeded the limit while streaming.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// Any other transport failure (connection reset, protocol error, caller body aborted).
    #[error("upstream request failed: {0}")]
    Transport(String),
}

/// Builds the client: TLS 1.2+ with webpki roots, ring provider, keep-alive pool.
pub fn build_client(cfg: &UpstreamConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// TLS 1.2 and 1.3 with webpki roots and the ring provider (SP-API, LWA and document hosts).
pub fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends requests upstream under the configured timeouts.
#[derive(Clone)]
pub struct Upstream {
    client: HttpClient,
    header_timeout: Duration,
    total_timeout: Duration,
}

// === impl Upstream ===

impl Upstream {
    /// Wraps a client with the timeouts from config.
    pub fn new(client: HttpClient, cfg: &UpstreamConfig) -> Upstream {
        Upstream {
            client,
            header_timeout: cfg.header_timeout,
            total_timeout: cfg.total_timeout,
        }
    }

    /// The underlying client (shared with LWA calls).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Sends a request. The response body is streamed and fails if the total timeout passes.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let now = Instant::now();
        let deadline = now + self.total_timeout;
        let header_deadline = deadline.min(now + self.header_timeout);
        let resp = tokio::time::timeout_at(header_deadline, self.client.request(req))
            .await
            .map_err(|_| UpstreamError::HeaderTimeout(self.header_timeout.min(self.total_timeout)))?
            .map_err(classify)?;
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            Deadline::new(body, deadline).boxed(),
        ))
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> UpstreamError {
    if err.is_connect() {
        return UpstreamError::Connect(error_chain(&err));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(too_large) = e.downcast_ref::<BodyTooLarge>() {
            return UpstreamError::BodyTooLarge(too_large.limit);
        }
        source = e.source();
    }
    UpstreamError::Transport(error_chain(&err))
}

/// An error and its sources, joined, for logs (transport errors carry no secrets or PII).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Sends a small request (to LWA or a token endpoint) and reads its whole small answer within
/// `timeout`. The error is a transport description for logs (it never holds a token).
pub async fn exchange(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    let call = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| error_chain(&e))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
