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
//! refused (SP-API's error shape, the connection closed, counted, aggregated in the audit log's
//! pre-auth noise records, a strike against the address) when it names a host outside
//! `allowed_hosts`, anything but `host:443` (a port, user information), arrives on an HTTP/2
//! stream (405) or inside a tunnel (400). An accepted CONNECT leaves an audit record (`tunnel`,
//! the host and the address). Requests inside a tunnel carry the outer connection's client
//! certificate (a pinned tool tunnelling over the TLS listener with its certificate is served)
//! and the [`Tunnel`] extension. The host a tool named never selects the upstream: the seller's
//! record does (see README "Forward-proxy mode" for why a region or sandbox mismatch is served,
//! not refused).

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

/// Every Amazon host a tunnel may ever name: SP-API's three regions, their sandboxes, and Login
/// with Amazon's token host. The CA `spgate ca init` makes is constrained to these.
pub const AMAZON_HOSTS: [&str; 7] = [
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
    "sandbox.sellingpartnerapi-na.amazon.com",
    "sandbox.sellingpartnerapi-eu.amazon.com",
    "sandbox.sellingpartnerapi-fe.amazon.com",
    "api.amazon.com",
];

/// The hosts a tool may tunnel to by default: SP-API's three regions and Login with Amazon's
/// token host. Not the `sandbox.` hosts: the seller's record, not the host, picks where a
/// request goes, so a tool's sandbox run through a production gateway would meet live data
/// (writes included); an operator who wants them lists them in `allowed_hosts`.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = [
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
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
    /// Hosts whose minted certificate is kept (default 64; at least as many as `allowed_hosts`).
    pub certificate_cache_size: Option<usize>,
}

/// See [`RawForwardProxy`]; present only when enabled. Read at start: a reload that changes it
/// is refused (see [`Forward::reload_check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `user:password@host:443`: a tunnel target carries no credentials.
    #[error("CONNECT refused: the target carries user information")]
    UserInfo,
    /// A CONNECT on an HTTP/2 stream: tunnels are served on HTTP/1.1 connections only.
    #[error("CONNECT refused: not served on HTTP/2")]
    Http2,
    /// A CONNECT inside a tunnel: a tunnel carries SP-API requests, never another tunnel.
    #[error("CONNECT refused: CONNECT inside a tunnel")]
    Nested,
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
    /// No certificate could be minted for an allowed host (the CA expired, or rcgen failed).
    #[error("CONNECT failed: no certificate for {host}: {source}")]
    Mint {
        /// The allowed host.
        host: String,
        /// Why (names the CA file: for the log, not the client).
        source: MintError,
    },
}

/// On every request inside a tunnel (a request extension): the allowed host the client tunnelled
/// to, e.g. `sellingpartnerapi-na.amazon.com`. Such a client reaches only Amazon's hosts, so a
/// URL handed back to it (a document link) works only on `https://<this host>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel(pub Arc<str>);

/// The forward proxy of one listener: its configuration, the minter and its counters.
#[derive(Debug)]
pub struct Forward {
    config: ForwardProxyConfig,
    minter: Minter,
    stats: ForwardStats,
}

/// Counters of one forward proxy (exposed for metrics and tests).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// CONNECTs answered 200.
    pub tunnels: AtomicU64,
    /// CONNECTs refused (host, port, user information, HTTP/2, nested).
    pub refused: AtomicU64,
    /// TLS handshakes inside a tunnel that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// CONNECTs answered 500 because no leaf could be minted (the CA expired).
    pub mint_failures: AtomicU64,
}

/// CONNECTs refused on listeners without a forward proxy (no [`Forward`] to count them).
static REFUSED_WITHOUT_PROXY: AtomicU64 = AtomicU64::new(0);

/// Minted certificates kept by default.
const DEFAULT_CACHE_SIZE: usize = 64;

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
        let certificate_cache_size = self
            .certificate_cache_size
            .unwrap_or(DEFAULT_CACHE_SIZE.max(allowed_hosts.len()));
        if certificate_cache_size < allowed_hosts.len().max(1) {
            // Fewer would mint (a key pair and a signature) on every tunnel as hosts alternate.
            issue(
                "certificate_cache_size",
                format!(
                    "must be at least the number of allowed_hosts ({})",
                    allowed_hosts.len().max(1)
                ),
            );
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
    /// Loads the CA and checks that it may issue for every allowed host.
    pub fn load(config: &ForwardProxyConfig, env: &dyn Env) -> Result<Forward, MintError> {
        Ok(Forward {
            config: config.clone(),
            minter: Minter::load(
                &config.ca_cert_file,
                &config.ca_key_file,
                config.certificate_cache_size,
                &config.allowed_hosts,
                env,
            )?,
            stats: ForwardStats::default(),
        })
    }

    /// Whether a reloaded configuration's `[forward_proxy]` may be accepted: only unchanged.
    /// The listener's forward proxy (its CA, hosts and certificates) is fixed at start, so a
    /// change would be silently ignored; the reload is refused instead, with this message.
    pub fn reload_check(
        running: Option<&ForwardProxyConfig>,
        new: Option<&ForwardProxyConfig>,
    ) -> Result<(), ConfigIssue> {
        if running == new {
            return Ok(());
        }
        Err(ConfigIssue {
            path: "forward_proxy".into(),
            message: "changed, but the forward proxy (enabled, its CA files, allowed_hosts, \
                      certificate_cache_size) is set up at start only: restore the running \
                      section, or restart the gateway to apply it"
                .into(),
        })
    }

    /// The configuration it was loaded from.
    pub fn config(&self) -> &ForwardProxyConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ForwardStats {
        &self.stats
    }

    /// The host a CONNECT may open a tunnel to, or why not. The target must be exactly
    /// `host:443` (RFC 9110 authority-form): no user information, no other spelling of the port.
    fn target(&self, req: &Request<Incoming>) -> Result<String, ForwardError> {
        let authority = req.uri().authority().ok_or(ForwardError::Malformed)?;
        if req.uri().scheme().is_some() || req.uri().path_and_query().is_some_and(|p| p != "/") {
            return Err(ForwardError::Malformed);
        }
        if authority.as_str().contains('@') {
            return Err(ForwardError::UserInfo);
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().ok_or(ForwardError::Malformed)?;
        if !self.config.allowed_hosts.contains(&host) {
            return Err(ForwardError::HostNotAllowed { host });
        }
        if port != HTTPS_PORT
            || !authority
                .as_str()
                .eq_ignore_ascii_case(&format!("{host}:443"))
        {
            return Err(ForwardError::PortNotAllowed { port });
        }
        Ok(host)
    }
}

/// Answers a CONNECT: 200 and a tunnel served by the gateway, or a refusal. `peer` is the
/// outer connection's client certificate (TLS listener), carried into the tunnel.
pub(super) fn connect<H: Handler>(
    client: Client<H>,
    mut req: Request<Incoming>,
    peer: Option<super::tls::PeerCert>,
) -> Response<Body> {
    let ip = client.addr.ip();
    // A CONNECT carries no credential: it spends the address's unauthenticated allowance
    // whatever headers it sends (an Authorization header on a CONNECT authenticates nothing).
    if let Err(e) = client.peers.admit(ip, "", &http::HeaderMap::new()) {
        return client.handler.refused(ip, &e);
    }
    if client.tunnel.is_some() {
        return refuse(&client, &ForwardError::Nested);
    }
    if client.http2 {
        return refuse(&client, &ForwardError::Http2);
    }
    let Some(forward) = client.forward.clone() else {
        return refuse(&client, &ForwardError::Disabled);
    };
    let host = match forward.target(&req) {
        Ok(host) => host,
        Err(e) => return refuse(&client, &e),
    };
    let config = match forward.minter.server_config(&host) {
        Ok(c) => c,
        Err(source) => {
            // The operator's fault, not the client's; still a strike: each attempt costs a key
            // pair and a signature, and the per-address limit bounds that work.
            forward.stats.mint_failures.fetch_add(1, Ordering::Relaxed);
            client.peers.handshake_failed(ip);
            client.handler.noise(ip, "connect_mint_failed");
            let err = ForwardError::Mint { host, source };
            if let Some(repeats) = crate::proxy::rescue::log_limit::admit("forward mint") {
                tracing::error!(error = %err, repeats, "No certificate for a tunnel: CONNECT answered 500.");
            }
            return crate::proxy::rescue::forward_refused(&err);
        }
    };
    forward.stats.tunnels.fetch_add(1, Ordering::Relaxed);
    client.handler.tunnel_opened(ip, &host);
    tracing::debug!(host = %host, "Tunnel accepted.");
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
        let accepted =
            tokio::time::timeout(deadline, acceptor.accept(TokioIo::new(upgraded))).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            failed => {
                // The address's slot and the server's permit are freed before the failure
                // is counted: whoever sees the count can connect again.
                let peers = Arc::clone(&client.peers);
                drop(client);
                peers.handshake_failed(ip);
                forward
                    .stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(Err(e)) = failed {
                    tracing::debug!(error = %e, "TLS handshake inside a tunnel failed.");
                }
                return;
            }
        };
        super::serve_tunnel(client, stream, peer, Tunnel(host.into())).await;
    });
    let mut resp = Response::new(crate::proxy::body::empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// A refused CONNECT: counted, a strike against the address, aggregated in the audit log.
fn refuse<H: Handler>(client: &Client<H>, err: &ForwardError) -> Response<Body> {
    let ip = client.addr.ip();
    match &client.forward {
        Some(f) => f.stats.refused.fetch_add(1, Ordering::Relaxed),
        None => REFUSED_WITHOUT_PROXY.fetch_add(1, Ordering::Relaxed),
    };
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
        REFUSED_WITHOUT_PROXY.fetch_add(1, Ordering::Relaxed);
        crate::proxy::rescue::forward_refused(&ForwardError::Disabled)
    })
}

/// Appends the forward proxy's counters in Prometheus' text format (the admin `/metrics`);
/// `forward` is the proxy listener's, if it has one.
pub fn render_metrics(forward: Option<&Forward>, out: &mut String) {
    use std::fmt::Write;
    let stats = forward.map(Forward::stats);
    let get =
        |f: fn(&ForwardStats) -> &AtomicU64| stats.map_or(0, |s| f(s).load(Ordering::Relaxed));
    for (name, help, value) in [
        (
            "spgate_forward_tunnels_total",
            "CONNECT tunnels accepted (answered 200; TLS terminated with a minted certificate).",
            get(|s| &s.tunnels),
        ),
        (
            "spgate_forward_connect_refused_total",
            "CONNECT requests refused (host, port or user information not allowed, HTTP/2, inside a tunnel, or no forward proxy).",
            get(|s| &s.refused) + REFUSED_WITHOUT_PROXY.load(Ordering::Relaxed),
        ),
        (
            "spgate_forward_handshake_failures_total",
            "TLS handshakes inside a tunnel that failed or timed out.",
            get(|s| &s.handshake_failures),
        ),
        (
            "spgate_forward_certificates_minted_total",
            "Leaf certificates minted from the forward-proxy CA.",
            forward.map_or(0, |f| f.minter.minted()),
        ),
        (
            "spgate_forward_mint_failures_total",
            "CONNECTs answered 500 because no leaf certificate could be minted (the CA expired).",
            get(|s| &s.mint_failures),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    if let Some(f) = forward {
        let name = "spgate_forward_ca_expiry_timestamp_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} When the forward-proxy CA certificate expires (alert well before: tools must be given the new one).\n# TYPE {name} gauge\n{name} {}",
            f.minter.ca_expires_at()
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
        // A sandbox run through a production gateway would meet live data: not by default.
        assert!(!ok.allowed_hosts.iter().any(|h| h.starts_with("sandbox.")));
        let sandbox = with(
            Some(vec!["sandbox.sellingpartnerapi-na.amazon.com".into()]),
            None,
        )
        .resolve(&ProcessEnv)
        .unwrap()
        .unwrap();
        assert_eq!(
            sandbox.allowed_hosts,
            ["sandbox.sellingpartnerapi-na.amazon.com"],
            "listed, they are allowed (the CA covers them)"
        );
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
        // Fewer cached certificates than hosts would mint on every tunnel as hosts alternate.
        let small = issues(with(None, Some(DEFAULT_ALLOWED_HOSTS.len() - 1)));
        assert!(
            small.iter().any(|i| i.starts_with(
                "forward_proxy.certificate_cache_size: must be at least the number of allowed_hosts (4)"
            )),
            "{small:?}"
        );
        let two = with(Some(vec!["api.amazon.com".into()]), None)
            .resolve(&ProcessEnv)
            .unwrap()
            .unwrap();
        assert_eq!(two.certificate_cache_size, DEFAULT_CACHE_SIZE);
        // `spgate ca init`'s CA may issue for Amazon's hosts only.
        let outside = issues(with(Some(vec!["example.com".into()]), None));
        assert!(
            outside
                .iter()
                .any(|i| i.starts_with("forward_proxy.ca_cert_file:")
                    && i.contains("do not permit example.com")),
            "{outside:?}"
        );
    }

    #[test]
    fn a_reload_may_not_change_the_forward_proxy() {
        let config = |hosts: &[&str]| ForwardProxyConfig {
            ca_cert_file: "ca.pem".into(),
            ca_key_file: "ca.key".into(),
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            certificate_cache_size: 64,
        };
        let running = config(&["api.amazon.com"]);
        assert!(Forward::reload_check(Some(&running), Some(&running.clone())).is_ok());
        assert!(Forward::reload_check(None, None).is_ok());
        for new in [
            None,
            Some(config(&[
                "api.amazon.com",
                "sellingpartnerapi-na.amazon.com",
            ])),
        ] {
            let issue = Forward::reload_check(Some(&running), new.as_ref()).unwrap_err();
            assert_eq!(issue.path, "forward_proxy");
            assert!(issue.message.contains("restart"), "{}", issue.message);
        }
        assert!(Forward::reload_check(None, Some(&running)).is_err());
    }
}
