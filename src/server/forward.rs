//! Forward-proxy mode: SDKs that hard-code Amazon's hosts reach the gateway through
//! `HTTPS_PROXY`.
//!
//! With `[forward_proxy] enabled = true`, a client that trusts the operator's CA sends
//! `CONNECT sellingpartnerapi-na.amazon.com:443`; the gateway answers 200, terminates TLS with a
//! leaf certificate for that host minted from the CA ([`super::mint`]) and serves the requests
//! inside through the same per-connection service as the listener: the same handler (token
//! endpoint, SP-API paths, RDTs, documents), per-address limits, header deadline and framing
//! checks, holding the same connection slot and permit until the tunnel closes.
//!
//! **Invariants:** nothing is ever tunnelled: a CONNECT is answered by the gateway itself or
//! refused (403 in SP-API's shape, counted, aggregated in the audit log's pre-auth noise
//! records, a strike against the address) when it names a host outside `allowed_hosts` or a
//! port other than 443. The host a tool named never selects the upstream: the seller's record
//! does (see README "Forward-proxy mode" for why a region or sandbox mismatch is served, not
//! refused).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::mint::{MintError, Minter};
use super::{Client, Handler};
use crate::config::{ConfigIssue, Env};
use crate::proxy::body::Body;

/// The hosts a tool may tunnel to by default: SP-API's three regions, their sandboxes, and
/// Login with Amazon's token host.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 7] = [
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
    "sandbox.sellingpartnerapi-na.amazon.com",
    "sandbox.sellingpartnerapi-eu.amazon.com",
    "sandbox.sellingpartnerapi-fe.amazon.com",
    "api.amazon.com",
];

/// The only port a tunnel may name.
const HTTPS_PORT: u16 = 443;

/// `[forward_proxy]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawForwardProxy {
    /// Answer CONNECT for Amazon's hosts (default false: CONNECT is refused).
    pub enabled: Option<bool>,
    /// PEM certificate of the CA the tools trust (`spgate ca init` writes one).
    pub ca_cert_file: Option<PathBuf>,
    /// PEM private key of that CA (readable by the gateway only).
    pub ca_key_file: Option<PathBuf>,
    /// Hosts a CONNECT may name (port 443 only); default [`DEFAULT_ALLOWED_HOSTS`].
    pub allowed_hosts: Option<Vec<String>>,
    /// Hosts whose minted certificate is kept (default 64).
    pub certificate_cache_size: Option<usize>,
}

/// See [`RawForwardProxy`]; present only when enabled.
#[derive(Debug, Clone)]
pub struct ForwardProxyConfig {
    /// CA certificate file.
    pub ca_cert_file: PathBuf,
    /// CA key file.
    pub ca_key_file: PathBuf,
    /// Hosts, lower case.
    pub allowed_hosts: Vec<String>,
    /// Minted certificates kept.
    pub certificate_cache_size: usize,
}

/// Why a CONNECT was refused.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The listener has no forward proxy.
    #[error("CONNECT refused: the gateway's forward proxy is not enabled")]
    Disabled,
    /// Not `host:port`.
    #[error("CONNECT refused: the target is not host:port")]
    Malformed,
    /// A host outside `allowed_hosts`.
    #[error("CONNECT refused: {host} is not an allowed host")]
    HostNotAllowed {
        /// The host named (a parsed authority: DNS characters only).
        host: String,
    },
    /// A port other than 443.
    #[error("CONNECT refused: port {port} is not 443")]
    PortNotAllowed {
        /// The port named.
        port: u16,
    },
    /// No certificate could be minted for an allowed host.
    #[error("CONNECT failed: {0}")]
    Mint(#[from] MintError),
}

/// On every request inside a tunnel (a request extension): the allowed host the client tunnelled
/// to, e.g. `sellingpartnerapi-na.amazon.com`. Such a client reaches only Amazon's hosts, so a
/// URL handed back to it (a document link) works only on `https://<this host>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel(pub Arc<str>);

/// The forward proxy of one listener: the allowed hosts and the minter.
#[derive(Debug)]
pub struct Forward {
    hosts: Vec<String>,
    minter: Minter,
}

/// Process-wide counters (one Prometheus series each).
static TUNNELS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
static MINTED: AtomicU64 = AtomicU64::new(0);

// === impl RawForwardProxy ===

impl RawForwardProxy {
    /// Validates the section (and that the CA loads); `None` when not enabled.
    pub fn resolve(&self, env: &dyn Env) -> Result<Option<ForwardProxyConfig>, Vec<ConfigIssue>> {
        if self.enabled != Some(true) {
            return Ok(None);
        }
        let mut issues = Vec::new();
        let mut issue = |key: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("forward_proxy.{key}"),
                message,
            })
        };
        let hosts_given = self
            .allowed_hosts
            .as_ref()
            .map_or(DEFAULT_ALLOWED_HOSTS.len(), Vec::len);
        let defaults = DEFAULT_ALLOWED_HOSTS.map(String::from);
        let mut allowed_hosts = Vec::new();
        for (i, h) in self
            .allowed_hosts
            .as_deref()
            .unwrap_or(&defaults)
            .iter()
            .enumerate()
        {
            let h = h.to_ascii_lowercase();
            let valid = !h.is_empty()
                && h.len() <= 253
                && h.split('.').count() >= 2
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                allowed_hosts.push(h);
            } else {
                issue(
                    &format!("allowed_hosts[{i}]"),
                    format!("{h:?} is not a DNS host name (no wildcards, no port)"),
                );
            }
        }
        if hosts_given == 0 {
            issue("allowed_hosts", "must name at least one host".into());
        }
        let certificate_cache_size = self.certificate_cache_size.unwrap_or(64);
        if certificate_cache_size == 0 {
            issue("certificate_cache_size", "must be at least 1".into());
        }
        let (Some(ca_cert_file), Some(ca_key_file)) = (&self.ca_cert_file, &self.ca_key_file)
        else {
            for (key, given) in [
                ("ca_cert_file", &self.ca_cert_file),
                ("ca_key_file", &self.ca_key_file),
            ] {
                if given.is_none() {
                    issue(
                        key,
                        "required with enabled = true: a PEM file (`spgate ca init` writes one)"
                            .into(),
                    );
                }
            }
            return Err(issues);
        };
        let config = ForwardProxyConfig {
            ca_cert_file: ca_cert_file.clone(),
            ca_key_file: ca_key_file.clone(),
            allowed_hosts,
            certificate_cache_size: certificate_cache_size.max(1),
        };
        if let Err(e) = Forward::load(&config, env) {
            issue("ca_cert_file", e.to_string());
        }
        if issues.is_empty() {
            Ok(Some(config))
        } else {
            Err(issues)
        }
    }
}

// === impl Forward ===

impl Forward {
    /// Loads the CA.
    pub fn load(config: &ForwardProxyConfig, env: &dyn Env) -> Result<Forward, MintError> {
        Ok(Forward {
            hosts: config.allowed_hosts.clone(),
            minter: Minter::load(
                &config.ca_cert_file,
                &config.ca_key_file,
                config.certificate_cache_size,
                env,
            )?,
        })
    }

    /// The host a CONNECT may open a tunnel to, or why not.
    fn target(&self, req: &Request<Incoming>) -> Result<String, ForwardError> {
        let authority = req.uri().authority().ok_or(ForwardError::Malformed)?;
        if req.uri().scheme().is_some() || req.uri().path_and_query().is_some_and(|p| p != "/") {
            return Err(ForwardError::Malformed);
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().ok_or(ForwardError::Malformed)?;
        if !self.hosts.contains(&host) {
            return Err(ForwardError::HostNotAllowed { host });
        }
        if port != HTTPS_PORT {
            return Err(ForwardError::PortNotAllowed { port });
        }
        Ok(host)
    }
}

/// Answers a CONNECT on a listener with a forward proxy: 200 and a tunnel served by the
/// gateway, or a refusal.
pub(super) fn connect<H: Handler>(
    forward: &Forward,
    client: Client<H>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let ip = client.addr.ip();
    // A CONNECT carries no credential: it spends the address's unauthenticated allowance.
    if let Err(e) = client.peers.admit(ip, "", req.headers()) {
        return client.handler.refused(ip, &e);
    }
    let host = match forward.target(&req) {
        Ok(host) => host,
        Err(e) => return refuse(&client, &e),
    };
    let config = match forward.minter.server_config(&host) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "No certificate for a tunnel.");
            return crate::proxy::rescue::forward_refused(&ForwardError::Mint(e));
        }
    };
    MINTED.store(forward.minter.minted(), Ordering::Relaxed);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let deadline = client.limits.header_read_timeout;
    tokio::spawn(async move {
        let upgraded = match tokio::time::timeout(deadline, on_upgrade).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "A CONNECT was not upgraded.");
                return;
            }
            Err(_) => return,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream =
            match tokio::time::timeout(deadline, acceptor.accept(TokioIo::new(upgraded))).await {
                Ok(Ok(s)) => s,
                failed => {
                    HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                    client.peers.handshake_failed(ip);
                    if let Ok(Err(e)) = failed {
                        tracing::debug!(error = %e, "TLS handshake inside a tunnel failed.");
                    }
                    return;
                }
            };
        TUNNELS.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(host = %host, "Tunnel open.");
        let tunnel = Tunnel(host.into());
        // Over TLS without a client certificate: a tool pinned to one is refused inside.
        let peer = super::tls::PeerCert {
            spki_sha256: None,
            pins: Arc::new(super::tls::ClientPins::new()),
        };
        super::serve_tunnel(client, stream, peer, tunnel).await;
    });
    let mut resp = Response::new(crate::proxy::body::empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// A refused CONNECT: counted, a strike against the address, aggregated in the audit log.
fn refuse<H: Handler>(client: &Client<H>, err: &ForwardError) -> Response<Body> {
    let ip = client.addr.ip();
    REFUSED.fetch_add(1, Ordering::Relaxed);
    client.peers.handshake_failed(ip);
    client.handler.noise(ip, "connect_refused");
    if let Some(repeats) = crate::proxy::rescue::log_limit::admit("connect refused") {
        tracing::warn!(error = %err, repeats, "CONNECT refused.");
    }
    crate::proxy::rescue::forward_refused(err)
}

/// A CONNECT on a listener without a forward proxy.
pub fn disabled<B>(req: &Request<B>) -> Option<Response<Body>> {
    (req.method() == Method::CONNECT).then(|| {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        crate::proxy::rescue::forward_refused(&ForwardError::Disabled)
    })
}

/// Appends the forward proxy's counters in Prometheus' text format (the admin `/metrics`).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    for (name, help, value) in [
        (
            "spgate_forward_tunnels_total",
            "CONNECT tunnels opened (TLS terminated with a minted certificate).",
            &TUNNELS,
        ),
        (
            "spgate_forward_connect_refused_total",
            "CONNECT requests refused (host or port not allowed, or no forward proxy).",
            &REFUSED,
        ),
        (
            "spgate_forward_handshake_failures_total",
            "TLS handshakes inside a tunnel that failed or timed out.",
            &HANDSHAKE_FAILURES,
        ),
        (
            "spgate_forward_certificates_minted_total",
            "Leaf certificates minted from the forward-proxy CA.",
            &MINTED,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessEnv;

    fn issues(raw: RawForwardProxy) -> Vec<String> {
        match raw.resolve(&ProcessEnv) {
            Ok(_) => Vec::new(),
            Err(issues) => issues
                .into_iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect(),
        }
    }

    #[test]
    fn the_section_is_checked_with_key_paths_and_off_unless_enabled() {
        let off = RawForwardProxy {
            allowed_hosts: Some(vec!["*.bad".into()]),
            ..RawForwardProxy::default()
        };
        assert!(off.resolve(&ProcessEnv).unwrap().is_none());
        let missing = issues(RawForwardProxy {
            enabled: Some(true),
            ..RawForwardProxy::default()
        });
        assert!(
            missing
                .iter()
                .any(|i| i.starts_with("forward_proxy.ca_cert_file: required")),
            "{missing:?}"
        );
        assert!(
            missing
                .iter()
                .any(|i| i.starts_with("forward_proxy.ca_key_file: required")),
            "{missing:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = super::super::mint::ca_init(dir.path()).unwrap();
        let with = |hosts: Option<Vec<String>>, cache: Option<usize>| RawForwardProxy {
            enabled: Some(true),
            ca_cert_file: Some(cert.clone()),
            ca_key_file: Some(key.clone()),
            allowed_hosts: hosts,
            certificate_cache_size: cache,
        };
        let ok = with(None, None).resolve(&ProcessEnv).unwrap().unwrap();
        assert_eq!(ok.allowed_hosts, DEFAULT_ALLOWED_HOSTS.map(String::from));
        assert_eq!(ok.certificate_cache_size, 64);
        let bad = issues(with(
            Some(vec![
                "*.amazon.com".into(),
                "api.amazon.com:443".into(),
                "localhost".into(),
            ]),
            Some(0),
        ));
        for path in [
            "allowed_hosts[0]",
            "allowed_hosts[1]",
            "allowed_hosts[2]",
            "certificate_cache_size",
        ] {
            assert!(
                bad.iter()
                    .any(|i| i.starts_with(&format!("forward_proxy.{path}:"))),
                "{path}: {bad:?}"
            );
        }
        let none = issues(with(Some(vec![]), None));
        assert!(
            none.iter().any(|i| i.contains("at least one host")),
            "{none:?}"
        );
        let upper = with(Some(vec!["API.Amazon.COM".into()]), None)
            .resolve(&ProcessEnv)
            .unwrap()
            .unwrap();
        assert_eq!(upper.allowed_hosts, ["api.amazon.com"]);
    }
}
