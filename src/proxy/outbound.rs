//! Outbound fetches to URLs that upstream answers name (report, invoice and label document
//! downloads): only over https to Amazon's document hosts, never to a private address.
//!
//! A URL an upstream answer names is not trusted: the gateway would otherwise fetch whatever
//! it is told to, including its own admin listener or a cloud metadata service (SSRF). A fetch
//! goes ahead only when
//! - the URL, parsed once by the parser the client fetches with (`reqwest::Url`; the fetch is
//!   handed that parsed URL), has the scheme `https`, the default port, no user info, and a
//!   host that is a name (an IP address in any spelling is refused) matching one of
//!   `[outbound] document_hosts` (patterns like `*.s3.amazonaws.com`, where `*` stands for one
//!   DNS label or part of one, never a dot);
//! - every address the host resolves to is public ([`is_public`]: outside every block of
//!   IANA's special-purpose registries, IPv6 only in 2000::/3, nor an IPv6 address embedding a
//!   non-public IPv4 one). The check runs inside the client's resolver ([`CheckedResolver`], reqwest's
//!   `dns::Resolve`), and the connection goes to exactly the addresses checked, so a DNS answer
//!   cannot change between check and connect (DNS rebinding);
//! - the answer is not a redirect (redirects are never followed), and no proxy is used (not
//!   even one named by `HTTPS_PROXY`: a proxy would resolve the name itself, past the check;
//!   the client starts from `auth::control_plane::builder`).
//!
//! The client is reqwest (the control plane's HTTP client, as for LWA and RDTs): rustls with
//! ring and the webpki roots, TLS 1.2+, HTTP/1.1, no decompression (the redactor detects gzip
//! itself); the body streams as it arrives, never buffered.
//!
//! The one exception is `[outbound] allow_loopback`: loopback socket addresses (the sandbox's,
//! in the demo and the tests) that may be fetched over plain http. Nothing else on loopback is.
//!
//! A refusal is an [`OutboundError`] (a 502 in SP-API's error shape from `rescue`), an audit
//! reason code ([`OutboundError::reason`]) and a metric (`spgate_outbound_refused_total`; a
//! document host that fails counts in `spgate_outbound_failed_total`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use serde::Deserialize;

use crate::config::{ConfigIssue, UpstreamConfig};
use crate::net::body;

/// Amazon's hosts for documents named in SP-API answers, from the models' examples:
/// presigned S3 URLs (reports, invoices, labels, service job attachments, in every S3 host
/// form), Amazon's report CDN (reports, feeds, Data Kiosk) and amazon.com hosts (Easy Ship
/// documents, customization data).
pub const DEFAULT_DOCUMENT_HOSTS: [&str; 8] = [
    "s3.amazonaws.com",
    "*.s3.amazonaws.com",
    "s3.*.amazonaws.com",
    "*.s3.*.amazonaws.com",
    "s3-*.amazonaws.com",
    "*.s3-*.amazonaws.com",
    "d34o8swod1owfl.cloudfront.net",
    "*.amazon.com",
];

/// `[outbound]`: where document downloads may go.
#[derive(Debug, Default, Deserialize)]
pub struct RawOutbound {
    /// Host patterns documents may be downloaded from over https (default: Amazon's S3 hosts,
    /// its report CDN and `*.amazon.com`). `*` stands for one DNS label or part of one.
    pub document_hosts: Option<Vec<String>>,
    /// Loopback socket addresses (`127.0.0.1:8900`) that may be fetched over http: only for
    /// the sandbox (demo and tests). Empty by default.
    pub allow_loopback: Option<Vec<String>>,
    /// Total deadline for a document download, head and body, in seconds (default 600).
    pub document_timeout_seconds: Option<u64>,
}

/// How long a document download may take in all, unless `[outbound]` says otherwise.
pub const DEFAULT_DOCUMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// The validated `[outbound]` section.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Host patterns, lower case.
    pub document_hosts: Vec<HostPattern>,
    /// Loopback socket addresses the sandbox serves documents from.
    pub allow_loopback: Vec<SocketAddr>,
    /// Total deadline of a download, body included: the stream fails cleanly when it passes.
    pub document_timeout: Duration,
}

/// A host pattern: labels that are literal, `*`, or literal text around one `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

/// Why an outbound fetch was refused or failed. Never holds the URL (a presigned URL is a
/// credential): only its host, an address or a status.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL could not be parsed, has user info, or has no host.
    #[error("the document URL is not a plain absolute URL")]
    Invalid,
    /// Not https (plain http only to an opted-in loopback address).
    #[error("the document URL's scheme is not https")]
    Scheme,
    /// The host is not one of `[outbound] document_hosts`.
    #[error("the document host {0} is not allowed")]
    Host(String),
    /// An explicit port other than 443.
    #[error("the document URL names port {0}; only the default https port is allowed")]
    Port(u16),
    /// The host resolved to an address that is not public.
    #[error("the document host {host} resolved to {ip}, which is not a public address")]
    Address {
        /// The host name.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
    /// The document host answered with a redirect, which is never followed.
    #[error("the document host answered with a redirect ({0}), which is not followed")]
    Redirect(u16),
    /// The document host answered with an error status.
    #[error("the document host answered {0}")]
    Status(u16),
    /// No answer within the timeout.
    #[error("the document host did not answer within {0:?}")]
    Timeout(Duration),
    /// DNS, TCP or TLS failed (a transport description, no URL).
    #[error("the document could not be fetched: {0}")]
    Transport(String),
    /// The HTTP client could not be set up (at start, never per request).
    #[error("the document client could not be set up: {0}")]
    Setup(String),
}

/// Downloads documents under the policy. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: Arc<OutboundConfig>,
    /// (refused by the policy?, reason label) -> count.
    counters: Arc<Mutex<BTreeMap<(bool, &'static str), u64>>>,
}

/// A document's body under the download's total deadline: past it, the stream ends with an
/// error (and the failure is counted), never silently.
pub struct DocumentBody {
    inner: body::Deadline<reqwest::Body>,
    counters: Arc<Mutex<BTreeMap<(bool, &'static str), u64>>>,
}

impl http_body::Body for DocumentBody {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, body::BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            if e.is::<body::TotalTimeout>() {
                bump(&self.counters, false, "body_timeout");
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn bump(
    counters: &Mutex<BTreeMap<(bool, &'static str), u64>>,
    refusal: bool,
    reason: &'static str,
) {
    let mut counters = counters.lock().unwrap_or_else(|p| p.into_inner());
    *counters.entry((refusal, reason)).or_default() += 1;
}

/// A DNS resolver that refuses every name with a non-public address among its answers: the
/// document client's `reqwest::dns::Resolve`.
#[derive(Clone, Debug, Default)]
pub struct CheckedResolver {
    lookup: Lookup,
}

/// Where names are looked up.
#[derive(Clone, Debug, Default)]
enum Lookup {
    /// The system's resolver (`getaddrinfo`).
    #[default]
    System,
    /// Fixed answers (the tests' DNS, to make a name resolve to any address).
    #[cfg(test)]
    Fixed(Arc<BTreeMap<String, Vec<IpAddr>>>),
}

// === impl RawOutbound ===

impl RawOutbound {
    /// Validates the section; every problem comes with its key path.
    pub fn resolve(&self) -> Result<OutboundConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut document_hosts = Vec::new();
        let defaults = DEFAULT_DOCUMENT_HOSTS.map(String::from);
        let hosts = self.document_hosts.as_deref().unwrap_or(&defaults);
        for (i, h) in hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Some(p) => document_hosts.push(p),
                None => issues.push(ConfigIssue {
                    path: format!("outbound.document_hosts[{i}]"),
                    message: format!("{h:?} is not a host pattern (DNS labels, each literal or with one `*`, at least two labels after the last `*`)"),
                }),
            }
        }
        let mut allow_loopback = Vec::new();
        for (i, a) in self.allow_loopback.iter().flatten().enumerate() {
            match a.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => allow_loopback.push(addr),
                _ => issues.push(ConfigIssue {
                    path: format!("outbound.allow_loopback[{i}]"),
                    message: format!(
                        "{a:?} is not a loopback address with a port, like 127.0.0.1:8900"
                    ),
                }),
            }
        }
        let document_timeout = match self.document_timeout_seconds {
            None => DEFAULT_DOCUMENT_TIMEOUT,
            Some(0) => {
                issues.push(ConfigIssue {
                    path: "outbound.document_timeout_seconds".into(),
                    message: "must be at least 1 second".into(),
                });
                DEFAULT_DOCUMENT_TIMEOUT
            }
            Some(n) => Duration::from_secs(n),
        };
        if issues.is_empty() {
            Ok(OutboundConfig {
                document_hosts,
                allow_loopback,
                document_timeout,
            })
        } else {
            Err(issues)
        }
    }
}

// === impl OutboundConfig ===

impl OutboundConfig {
    /// The defaults: Amazon's document hosts, no loopback.
    pub fn defaults() -> OutboundConfig {
        OutboundConfig {
            document_hosts: DEFAULT_DOCUMENT_HOSTS
                .iter()
                .filter_map(|h| HostPattern::parse(h))
                .collect(),
            allow_loopback: Vec::new(),
            document_timeout: DEFAULT_DOCUMENT_TIMEOUT,
        }
    }

    /// Checks a URL before anything is sent: scheme, user info, port and host (addresses are
    /// checked when the host is resolved). The URL is parsed once, by the parser the client
    /// fetches with (`reqwest::Url`, WHATWG rules), and the fetch is handed that parsed URL: what
    /// was checked is what is fetched (no second parser to read `0x7f.1` or a backslash
    /// differently). A host that is an IP address is refused whatever its form (document hosts
    /// are names, resolved through [`CheckedResolver`]), except the socket addresses
    /// `allow_loopback` lists.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, OutboundError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| OutboundError::Invalid)?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(OutboundError::Invalid);
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(OutboundError::Invalid)?
            .to_ascii_lowercase();
        // The parser has already normalised every IPv4 form (`0x7f.1`, `2130706433`) to
        // dotted decimal, and IPv6 hosts keep their brackets.
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host)
            .parse::<IpAddr>();
        if let Ok(ip) = literal {
            // Amazon's document URLs name hosts; an address is only ever the sandbox's.
            let port = parsed.port_or_known_default();
            let opted_in = matches!(parsed.scheme(), "http" | "https")
                && port.is_some_and(|p| self.allow_loopback.contains(&SocketAddr::new(ip, p)));
            return if opted_in {
                Ok(parsed)
            } else {
                Err(OutboundError::Host(host))
            };
        }
        if parsed.scheme() != "https" {
            return Err(OutboundError::Scheme);
        }
        // `port()` is `None` for the scheme's default port, written or not.
        if let Some(port) = parsed.port() {
            return Err(OutboundError::Port(port));
        }
        if !self.document_hosts.iter().any(|p| p.matches(&host)) {
            return Err(OutboundError::Host(host));
        }
        Ok(parsed)
    }
}

// === impl HostPattern ===

impl HostPattern {
    /// Parses a pattern: DNS labels of `[a-z0-9-]`, each optionally with one `*`; in a pattern
    /// with a `*`, the last two labels are literal (no `*.com`). The last label begins with a
    /// letter, as top-level domains do: a pattern that could be an IPv4 address in any form
    /// (`10.0.0.1`, `0x7f.1`) would never match, since addresses are refused as hosts.
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().to_ascii_lowercase();
        let labels: Vec<&str> = s.split('.').collect();
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.matches('*').count() <= 1
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        };
        let literal_tail = !s.contains('*')
            || (labels.len() >= 2 && labels[labels.len() - 2..].iter().all(|l| !l.contains('*')));
        let named = labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
        (labels.iter().all(|l| ok_label(l)) && literal_tail && named).then_some(HostPattern(s))
    }

    /// Whether a (lower-case) host matches, label by label.
    pub fn matches(&self, host: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let labels: Vec<&str> = host.split('.').collect();
        pattern.len() == labels.len()
            && pattern
                .iter()
                .zip(&labels)
                .all(|(p, l)| match p.split_once('*') {
                    None => p == l,
                    Some((pre, post)) => {
                        !l.is_empty()
                            && l.len() > pre.len() + post.len()
                            && l.starts_with(pre)
                            && l.ends_with(post)
                    }
                })
    }

    /// The pattern as written (lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// === impl OutboundError ===

impl OutboundError {
    /// The audit reason code and metric label (fixed codes, never the error's text).
    pub fn reason(&self) -> crate::audit::Reason {
        crate::audit::Reason::from_static(match self {
            OutboundError::Invalid => "document_url_invalid",
            OutboundError::Scheme => "document_url_not_https",
            OutboundError::Host(_) => "document_host_not_allowed",
            OutboundError::Port(_) => "document_port_not_allowed",
            OutboundError::Address { .. } => "document_address_not_public",
            OutboundError::Redirect(_) => "document_redirect_refused",
            OutboundError::Status(_) => "document_upstream_status",
            OutboundError::Timeout(_) => "document_upstream_timeout",
            OutboundError::Transport(_) => "document_upstream_unreachable",
            OutboundError::Setup(_) => "document_client_unavailable",
        })
    }

    /// Whether the policy refused the fetch (as opposed to the document host failing).
    pub fn is_refusal(&self) -> bool {
        match self {
            OutboundError::Invalid
            | OutboundError::Scheme
            | OutboundError::Host(_)
            | OutboundError::Port(_)
            | OutboundError::Address { .. }
            | OutboundError::Redirect(_) => true,
            OutboundError::Status(_)
            | OutboundError::Timeout(_)
            | OutboundError::Transport(_)
            | OutboundError::Setup(_) => false,
        }
    }
}

// === impl Fetcher ===

impl Fetcher {
    /// A client of its own (TLS 1.2+, webpki roots, the checked resolver, no proxy, no
    /// redirects), with the upstream connect timeout.
    pub fn new(
        config: OutboundConfig,
        upstream: &UpstreamConfig,
    ) -> Result<Fetcher, OutboundError> {
        Fetcher::with_timeouts(
            config,
            CheckedResolver::default(),
            upstream.connect_timeout,
            upstream.pool_idle_timeout,
        )
    }

    fn with_timeouts(
        config: OutboundConfig,
        resolver: CheckedResolver,
        connect: Duration,
        pool_idle: Duration,
    ) -> Result<Fetcher, OutboundError> {
        // No proxy and no redirects come with the shared builder.
        let client = crate::auth::control_plane::builder()
            .use_preconfigured_tls(crate::net::upstream::tls_config())
            .dns_resolver(Arc::new(resolver))
            .http1_only()
            .connect_timeout(connect)
            .pool_idle_timeout(pool_idle)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| OutboundError::Setup(crate::auth::control_plane::describe(&e)))?;
        Ok(Fetcher {
            client,
            config: Arc::new(config),
            counters: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// GETs `url` if the policy allows it, waiting up to `timeout` for the response head. A
    /// redirect or error status is an error; the body streams until `[outbound]
    /// document_timeout_seconds` after the request started, then fails (counted as
    /// `body_timeout` in `spgate_outbound_failed_total`).
    pub async fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<Response<DocumentBody>, OutboundError> {
        let deadline = tokio::time::Instant::now() + self.config.document_timeout;
        let result = self.fetch(url, timeout).await;
        match result {
            Ok(resp) => Ok(resp.map(|inner| DocumentBody {
                inner: body::Deadline::new(inner, deadline),
                counters: self.counters.clone(),
            })),
            Err(e) => {
                self.count(e.is_refusal(), label(&e));
                Err(e)
            }
        }
    }

    /// How long a download may take, body included (`document_timeout_seconds`).
    pub fn document_timeout(&self) -> Duration {
        self.config.document_timeout
    }

    fn count(&self, refusal: bool, reason: &'static str) {
        bump(&self.counters, refusal, reason);
    }

    async fn fetch(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<Response<reqwest::Body>, OutboundError> {
        let url = self.config.check_url(url)?;
        let resp = tokio::time::timeout(timeout, self.client.get(url).send())
            .await
            .map_err(|_| OutboundError::Timeout(timeout))?
            .map_err(|e| match refusal_in(&e) {
                Some(refused) => refused,
                // Without the URL: a presigned URL is a credential.
                None => {
                    OutboundError::Transport(crate::net::upstream::error_chain(&e.without_url()))
                }
            })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(OutboundError::Redirect(status.as_u16()));
        }
        if !status.is_success() {
            return Err(OutboundError::Status(status.as_u16()));
        }
        Ok(resp.into())
    }

    /// Counts of refused and failed fetches, by reason, in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, help, refusals) in [
            (
                "spgate_outbound_refused_total",
                "Document fetches the outbound policy refused, by reason.",
                true,
            ),
            (
                "spgate_outbound_failed_total",
                "Document fetches that failed at the document host, by reason.",
                false,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((refusal, reason), n) in &counters {
                if *refusal == refusals {
                    let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
                }
            }
        }
    }

    /// The number of refused or failed fetches with this reason label.
    pub fn refused(&self, reason: &str) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((_, r), _)| *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// The metric label of an error (the audit reason code without its `document_` prefix).
fn label(e: &OutboundError) -> &'static str {
    match e {
        OutboundError::Invalid => "url_invalid",
        OutboundError::Scheme => "url_not_https",
        OutboundError::Host(_) => "host_not_allowed",
        OutboundError::Port(_) => "port_not_allowed",
        OutboundError::Address { .. } => "address_not_public",
        OutboundError::Redirect(_) => "redirect_refused",
        OutboundError::Status(_) => "upstream_status",
        OutboundError::Timeout(_) => "upstream_timeout",
        OutboundError::Transport(_) => "upstream_unreachable",
        OutboundError::Setup(_) => "client_setup",
    }
}

/// The resolver's refusal inside a client error, if that is what failed.
fn refusal_in(err: &(dyn std::error::Error + 'static)) -> Option<OutboundError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(OutboundError::Address { host, ip }) = e.downcast_ref::<OutboundError>() {
            return Some(OutboundError::Address {
                host: host.clone(),
                ip: *ip,
            });
        }
        source = e.source();
    }
    None
}

// === impl CheckedResolver ===

impl CheckedResolver {
    /// The addresses of `host`, if every one of them is public.
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>, OutboundError> {
        let addrs: Vec<SocketAddr> = match &self.lookup {
            Lookup::System => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| OutboundError::Transport(format!("cannot resolve {host}: {e}")))?
                .collect(),
            #[cfg(test)]
            Lookup::Fixed(answers) => answers
                .get(host)
                .into_iter()
                .flatten()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect(),
        };
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(OutboundError::Address {
                host: host.to_string(),
                ip: bad.ip(),
            });
        }
        if addrs.is_empty() {
            return Err(OutboundError::Transport(format!("{host} has no address")));
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (resolver, host) = (self.clone(), name.as_str().to_string());
        Box::pin(async move {
            let addrs = resolver.resolve_checked(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether an address may be a document host's: global unicast outside every block of IANA's
/// IPv4 and IPv6 special-purpose address registries. Refused are loopback, private (10/8,
/// 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, fe80::/10), shared (100.64/10),
/// multicast, unspecified, broadcast, documentation (192.0.2/24, 198.51.100/24, 203.0.113/24,
/// 2001:db8::/32, 3fff::/20), benchmarking (198.18/15, 2001:2::/48), reserved (0/8, 240/4),
/// IETF protocol assignments (192.0.0/24, 2001::/23: Teredo, ORCHID, ORCHIDv2, AMT, AS112,
/// anycast), the deprecated 6to4 relay anycast (192.88.99/24), AS112 and AMT (192.31.196/24,
/// 192.52.193/24, 192.175.48/24, 2620:4f:8000::/48), local-use NAT64 (64:ff9b:1::/48), and
/// every IPv6 address outside 2000::/3, the global unicast space (site-local, the discard-only
/// 100::/64 and dummy 100:0:0:1::/64 prefixes, SRv6 SIDs 5f00::/16, and what IANA has not
/// allocated). Even the blocks IANA marks globally reachable are refused: they are network
/// infrastructure, never an S3 bucket or a CDN, and what the gateway does not know it refuses.
/// IPv6 forms that embed an IPv4 address (mapped, the well-known NAT64 prefix, 6to4) are
/// judged by that address; the deprecated IPv4-compatible form (`::a.b.c.d`) is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || (a, b, c) == (192, 0, 0) // IETF protocol assignments
        || (a, b, c) == (192, 31, 196) // AS112
        || (a, b, c) == (192, 52, 193) // AMT
        || (a, b, c) == (192, 88, 99) // 6to4 relay anycast (deprecated)
        || (a, b, c) == (192, 175, 48)) // AS112 direct delegation
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // NAT64 (64:ff9b::/96). (IPv4-compatible ::a.b.c.d, deprecated since 2006, is outside
    // 2000::/3 and refused below.)
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(seg[6], seg[7]));
    }
    // 6to4 (2002::/16) carries the IPv4 address in the next 32 bits.
    if seg[0] == 0x2002 {
        return is_public_v4(embedded(seg[1], seg[2]));
    }
    // Only 2000::/3 holds global unicast: outside it are loopback, unspecified, multicast,
    // unique-local, link- and site-local, 100::/64 (discard-only), 100:0:0:1::/64 (dummy),
    // 5f00::/16 (SRv6 SIDs), local-use NAT64 64:ff9b:1::/48, and unallocated space.
    let global_unicast = (seg[0] & 0xe000) == 0x2000;
    // IETF protocol assignments (2001::/23: Teredo, ORCHID, ORCHIDv2, DETs, AMT, AS112,
    // anycast, benchmarking).
    let ietf = seg[0] == 0x2001 && seg[1] < 0x0200;
    // Documentation: 2001:db8::/32 and 3fff::/20.
    let documentation =
        (seg[0] == 0x2001 && seg[1] == 0x0db8) || (seg[0] == 0x3fff && seg[1] < 0x1000);
    // AS112 direct delegation (2620:4f:8000::/48).
    let as112 = seg[..3] == [0x2620, 0x004f, 0x8000];
    global_unicast && !ietf && !documentation && !as112
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str, public: bool) {
        let parsed: IpAddr = ip.parse().unwrap();
        assert_eq!(is_public(parsed), public, "{ip}");
    }

    #[test]
    fn loopback_private_link_local_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
        ] {
            check(ip, false);
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "52.216.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2600:1f18::1",
            "::ffff:52.216.1.1",
            "64:ff9b::3434:1010",
            "2002:3434:1010::1",
        ] {
            check(ip, true);
        }
    }

    fn config(loopback: &[&str]) -> OutboundConfig {
        RawOutbound {
            document_hosts: None,
            allow_loopback: Some(loopback.iter().map(|s| s.to_string()).collect()),
            document_timeout_seconds: None,
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn teredo_local_nat64_and_benchmarking_v6_are_not_public() {
        for ip in [
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::1",
            "2001:2::1",
            "2001:2:0:ffff::1",
        ] {
            check(ip, false);
        }
    }

    #[test]
    fn every_special_purpose_v6_block_is_refused_and_its_neighbours_pass() {
        // (refused, a public neighbour just outside the block)
        for (refused, neighbour) in [
            // Documentation (RFC 9637).
            ("3fff::1", "3ffe:ffff::1"),
            ("3fff:fff:ffff::1", "3fff:1000::1"),
            // SRv6 SIDs (RFC 9602): outside 2000::/3.
            ("5f00::1", "2600:1f18::1"),
            ("5f00:ffff::1", "2a05:d000::1"),
            // ORCHID (deprecated), ORCHIDv2, DETs, AMT, AS112, anycast: IETF's 2001::/23.
            ("2001:10::1", "2001:200::1"),
            ("2001:1f:ffff::1", "2001:4860::8888"),
            ("2001:20::1", "2001:1200::1"),
            ("2001:30::1", "2001:470::1"),
            ("2001:3::1", "2001:67c::1"),
            ("2001:4:112::1", "2001:500:88::1"),
            ("2001:1::1", "2001:2000::1"),
            ("2001:1ff:ffff::1", "2001:201::1"),
            // The dummy prefix (RFC 9780) and the discard-only prefix.
            ("100:0:0:1::1", "2400:cb00::1"),
            ("100::1", "2406:da00::1"),
            // AS112 direct delegation.
            ("2620:4f:8000::1", "2620:4f:8001::1"),
            // Site-local (deprecated) and unallocated space outside 2000::/3.
            ("fec0::1", "2c0f:f248::1"),
            ("4000::1", "2003::1"),
            ("8000::1", "2001:db9::1"),
        ] {
            check(refused, false);
            check(neighbour, true);
        }
    }

    #[test]
    fn every_special_purpose_v4_block_is_refused_and_its_neighbours_pass() {
        for (refused, neighbour) in [
            ("192.88.99.1", "192.88.100.1"),
            ("192.31.196.1", "192.31.197.1"),
            ("192.52.193.1", "192.52.192.1"),
            ("192.175.48.1", "192.175.49.1"),
            ("192.0.0.9", "192.0.1.1"),
            ("198.51.100.7", "198.51.101.7"),
            ("203.0.113.7", "203.0.114.7"),
            ("198.19.255.255", "198.20.0.1"),
            ("100.127.255.255", "100.63.255.255"),
        ] {
            check(refused, false);
            check(neighbour, true);
        }
        // The same blocks embedded in IPv6 forms.
        for ip in [
            "::ffff:192.88.99.1",
            "64:ff9b::c058:6301",
            "2002:c058:6301::1",
        ] {
            check(ip, false);
        }
        // The deprecated IPv4-compatible form is refused whatever it embeds.
        check("::8.8.8.8", false);
        check("::ffff:8.8.8.8", true);
    }

    #[test]
    fn the_document_timeout_defaults_to_ten_minutes_and_is_configurable() {
        assert_eq!(config(&[]).document_timeout, DEFAULT_DOCUMENT_TIMEOUT);
        let raw = |n| RawOutbound {
            document_timeout_seconds: Some(n),
            ..RawOutbound::default()
        };
        assert_eq!(
            raw(30).resolve().unwrap().document_timeout,
            Duration::from_secs(30)
        );
        let issues = raw(0).resolve().unwrap_err();
        assert_eq!(issues[0].path, "outbound.document_timeout_seconds");
    }

    #[tokio::test]
    async fn a_document_body_past_the_total_deadline_fails_and_is_counted() {
        use http_body_util::BodyExt;
        // A document host on loopback that sends the head and one chunk, then stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
                .await
                .unwrap();
            // Hold the connection open, never finishing the body.
            let _ = sock.read(&mut buf).await;
        });
        let mut cfg = config(&[&addr.to_string()]);
        cfg.document_timeout = Duration::from_millis(300);
        let fetcher = Fetcher::with_timeouts(
            cfg,
            CheckedResolver::default(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let resp = fetcher
            .get(&format!("http://{addr}/doc"), Duration::from_secs(30))
            .await
            .unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert!(err.is::<body::TotalTimeout>(), "{err}");
        assert_eq!(fetcher.refused("body_timeout"), 1);
        let mut metrics = String::new();
        fetcher.render_metrics(&mut metrics);
        assert!(
            metrics.contains("spgate_outbound_failed_total{reason=\"body_timeout\"} 1"),
            "{metrics}"
        );
        server.abort();
    }

    #[test]
    fn only_https_urls_to_amazons_document_hosts_pass_the_url_check() {
        let c = config(&[]);
        for ok in [
            "https://tortuga-prod-na.s3-external-1.amazonaws.com/%2FNinetyDays/amzn1.tortuga.4?X-Amz-Signature=abc",
            "https://invoicesdocumentbucket.s3.eu-east-1.amazonaws.com/x.xml?X-Amz-Expires=300",
            "https://s3.amazonaws.com/bucket/key",
            "https://d34o8swod1owfl.cloudfront.net/Report_47700.txt",
            "https://www.amazon.com/documents.zip",
            "https://ZME-CAPS.amazon.com:443/t/x",
        ] {
            assert!(c.check_url(ok).is_ok(), "{ok}");
        }
        let refused = |url: &str| c.check_url(url).unwrap_err();
        assert!(matches!(
            refused("http://s3.amazonaws.com/bucket/key"),
            OutboundError::Scheme
        ));
        assert!(matches!(
            refused("https://evil.example.com/x"),
            OutboundError::Host(_)
        ));
        assert!(matches!(
            refused("https://amazon.com.evil.example/x"),
            OutboundError::Host(_)
        ));
        assert!(matches!(
            refused("https://a.b.amazon.com/x"),
            OutboundError::Host(_)
        ));
        assert!(matches!(
            refused("https://s3.amazonaws.com:8443/x"),
            OutboundError::Port(8443)
        ));
        assert!(matches!(
            refused("https://user:pw@s3.amazonaws.com/x"),
            OutboundError::Invalid
        ));
        assert!(matches!(refused("/relative/path"), OutboundError::Invalid));
        for literal in [
            "http://127.0.0.1:9090/metrics",
            "https://127.0.0.1/",
            "https://10.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:169.254.169.254]/",
            "http://169.254.169.254/latest/meta-data/",
            "https://52.216.1.1/",
        ] {
            assert!(
                matches!(refused(literal), OutboundError::Host(_)),
                "{literal}"
            );
        }
    }

    #[test]
    fn loopback_is_allowed_only_for_the_opted_in_socket_addresses() {
        let c = config(&["127.0.0.1:8900"]);
        assert!(c
            .check_url("http://127.0.0.1:8900/_sandbox/documents/A1")
            .is_ok());
        for url in [
            "http://127.0.0.1:9090/metrics",
            "http://127.0.0.2:8900/",
            "http://[::1]:8900/",
            "http://127.0.0.1/",
        ] {
            assert!(
                matches!(c.check_url(url), Err(OutboundError::Host(_))),
                "{url}"
            );
        }
        let bad = RawOutbound {
            document_hosts: Some(vec!["*.com".into(), "ok.example.com".into()]),
            allow_loopback: Some(vec!["10.0.0.1:80".into(), "localhost:8900".into()]),
            document_timeout_seconds: None,
        }
        .resolve()
        .unwrap_err();
        let paths: Vec<&str> = bad.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "outbound.document_hosts[0]",
                "outbound.allow_loopback[0]",
                "outbound.allow_loopback[1]"
            ]
        );
    }

    #[test]
    fn host_patterns_match_whole_labels() {
        let p = HostPattern::parse("*.s3-*.amazonaws.com").unwrap();
        assert!(p.matches("tortuga-devo.s3-us-west-2.amazonaws.com"));
        assert!(!p.matches("s3-us-west-2.amazonaws.com"));
        assert!(!p.matches("a.b.s3-us-west-2.amazonaws.com"));
        assert!(!p.matches("x.s3-.amazonaws.com"));
        assert!(HostPattern::parse("*.*").is_none());
        assert!(HostPattern::parse("a..b.com").is_none());
        assert!(HostPattern::parse("**.amazon.com").is_none());
        for address in ["10.0.0.1", "127.*.0.1", "0x7f.1", "s3.amazonaws.1"] {
            assert!(HostPattern::parse(address).is_none(), "{address}");
        }
    }

    #[test]
    fn the_url_is_checked_as_the_client_parses_it_and_addresses_in_any_form_are_refused() {
        let c = config(&["127.0.0.1:8900"]);
        // What the check returns is what is fetched: normalised once, by the client's parser.
        let url = c
            .check_url("https://Bucket.S3.AMAZONAWS.com:443/k?X-Amz-Signature=s")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=s"
        );
        let url = c.check_url("https://%73%33.amazonaws.com/k").unwrap();
        assert_eq!(url.host_str(), Some("s3.amazonaws.com"));
        // IPv4 in the forms the WHATWG parser reads as addresses (hex, octal, one number,
        // fewer parts), IPv6 in brackets, mapped or not: refused as hosts, the sandbox's
        // listed socket address included when written another way on another port.
        for literal in [
            "https://0x7f.1/x",
            "https://2130706433/x",
            "https://0177.0.0.1/x",
            "https://127.1/x",
            "https://0x34.0xd8.1.1/x",
            "https://[::ffff:7f00:1]/x",
            "https://[2600:1f18::1]/x",
            "http://0x7f.0.0.1:8901/",
        ] {
            assert!(
                matches!(c.check_url(literal), Err(OutboundError::Host(_))),
                "{literal}"
            );
        }
        // The listed loopback socket address, in another spelling, is that address.
        assert!(c.check_url("http://0x7f.0.0.1:8900/doc").is_ok());
        // A backslash is a path separator to the parser: the host is the one before it.
        assert!(matches!(
            c.check_url("https://evil.example\\@bucket.s3.amazonaws.com/x"),
            Err(OutboundError::Host(h)) if h == "evil.example"
        ));
        // A trailing dot is another name; other schemes have no host to allow.
        for (url, refused) in [
            ("https://s3.amazonaws.com./x", "host"),
            ("ftp://s3.amazonaws.com/x", "scheme"),
            ("file:///etc/passwd", "invalid"),
        ] {
            let got = match c.check_url(url) {
                Err(OutboundError::Host(_)) => "host",
                Err(OutboundError::Scheme) => "scheme",
                Err(OutboundError::Invalid) => "invalid",
                other => panic!("{url}: {other:?}"),
            };
            assert_eq!(got, refused, "{url}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match CheckedResolver::default().resolve(name).await {
            Ok(addrs) => panic!("resolved: {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let err = err.downcast::<OutboundError>().unwrap();
        assert!(
            matches!(*err, OutboundError::Address { ref host, ip } if host == "localhost" && ip.is_loopback()),
            "{err}"
        );
    }

    /// Fetches a presigned document URL with a fetcher whose DNS answers `name` with `ips`.
    async fn fetch_resolving(name: &str, ips: &[&str]) -> (Fetcher, OutboundError) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let resolver = CheckedResolver {
            lookup: Lookup::Fixed(Arc::new(BTreeMap::from([(name.to_string(), ips)]))),
        };
        let fetcher = Fetcher::with_timeouts(
            config(&[]),
            resolver,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let url = "https://bucket.s3.amazonaws.com/report?X-Amz-Signature=secret";
        let err = fetcher
            .get(url, Duration::from_secs(5))
            .await
            .map(|_| "fetched")
            .unwrap_err();
        (fetcher, err)
    }

    #[tokio::test]
    async fn reqwest_refuses_a_document_host_whose_name_resolves_to_a_private_address() {
        // An allowed host name whose DNS answer is private (one of several, or the only one):
        // reqwest never connects, and the refusal is the resolver's, with the address.
        for ips in [
            &["10.1.2.3"][..],
            &["52.216.1.1", "192.168.7.7"],
            &["fd00::7"],
        ] {
            let (fetcher, err) = fetch_resolving("bucket.s3.amazonaws.com", ips).await;
            let refused: IpAddr = ips.last().unwrap().parse().unwrap();
            assert!(
                matches!(err, OutboundError::Address { ref host, ip } if host == "bucket.s3.amazonaws.com" && ip == refused),
                "{ips:?}: {err}"
            );
            assert!(err.is_refusal());
            assert_eq!(fetcher.refused("address_not_public"), 1);
        }
        // A name with no answer is a transport failure, not a refusal, and names no URL.
        let (_, err) = fetch_resolving("other.example", &["10.0.0.1"]).await;
        assert!(matches!(err, OutboundError::Transport(_)), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
