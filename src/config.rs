//! Configuration: parse first ([`RawConfig`], every field optional, no I/O), then resolve
//! ([`Config`], validated and typed, secrets wrapped in [`Secret`]).
//!
//! **Invariant:** this is the only module that reads environment variables or secret files, and it
//! reads them only through [`Env`], so tests inject a map instead of mutating the process
//! environment. Secrets never appear in the config file itself: a secret field is a reference,
//! `{ env = "NAME" }` or `{ file = "/path" }`. Unknown keys are errors. [`check`] reports every
//! problem it finds, each with its key path, instead of stopping at the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::crypto::MasterKey;
use crate::pii::{Action, Category, Role, Roles};
use crate::ratelimit::config::{RateLimitSettings, RawRateLimit};
use crate::secret::Secret;
use crate::store::Region;

/// Where environment variables and secret files come from.
pub trait Env {
    /// An environment variable's value.
    fn var(&self, name: &str) -> Option<String>;
    /// A file's contents (for secrets stored in files).
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
}

/// The real process environment and file system.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// An in-memory [`Env`] for tests and for `spgate demo`.
#[derive(Default)]
pub struct MapEnv {
    /// Variables.
    pub vars: BTreeMap<String, String>,
    /// Files by path.
    pub files: BTreeMap<PathBuf, String>,
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

/// One problem in a config file, with the key path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `upstream.connect_timeout_ms`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found while loading a config.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n{}", .0.len(), render(.0))]
pub struct ConfigError(pub Vec<ConfigIssue>);

fn render(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            if i.path.is_empty() {
                format!("  - {}", i.message)
            } else {
                format!("  - {}: {}", i.path, i.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Raw: exactly what the file says.

/// A secret reference as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    /// `{ env = "NAME" }` or `{ file = "/path" }`.
    Ref(RawSecretRef),
    /// A literal string: always rejected, secrets must not live in the config file.
    Literal(String),
}

/// The reference form of a secret.
#[derive(Debug, Clone, Deserialize)]
pub struct RawSecretRef {
    /// Read from this environment variable.
    pub env: Option<String>,
    /// Read from this file (trailing newline trimmed).
    pub file: Option<PathBuf>,
}

/// `[server]`: the proxy listener.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Connections beyond this wait in the accept queue.
    pub max_connections: Option<usize>,
    /// Largest total of header names and values accepted (431 above).
    pub max_header_bytes: Option<usize>,
    /// Largest request body forwarded (413 above).
    pub max_request_body_bytes: Option<u64>,
    /// How long a client may take to send its request headers.
    pub header_read_timeout_ms: Option<u64>,
    /// How long in-flight requests may run after SIGTERM before the process exits.
    pub drain_timeout_seconds: Option<u64>,
    /// A connection whose client accepts no bytes of an answer for this long is closed (a
    /// client that stopped reading a download). Default 30 s.
    pub write_timeout_ms: Option<u64>,
    /// How long a client may take to send the body of a request the gateway reads itself (the
    /// drop-in token endpoint, reveal, admin routes); 408 after it. Default 10 s.
    pub body_read_timeout_ms: Option<u64>,
    /// Bytes of request bodies (each at most 256 KiB, with `Content-Length`) the gateway holds
    /// at once to send them again after a token refusal; past it, 503. Default 64 MiB.
    pub replay_buffer_bytes: Option<usize>,
    /// Connections one client address may hold at once; further ones are closed at accept, so
    /// one address cannot take all of `max_connections`. Default 1024.
    pub max_connections_per_address: Option<usize>,
    /// Requests a second one address may make without credentials (no `Authorization` or
    /// `x-amz-access-token`) or that the gateway refuses (401 bad key, 408 slow body, 413, 431).
    /// Past it, the address gets 429 for every request until it slows down. Default 20.
    pub unauthenticated_rate_per_second: Option<u32>,
    /// How many such requests one address may make in a burst. Default 100.
    pub unauthenticated_burst: Option<u32>,
    /// `[server.tls]`: serve HTTPS (HTTP/2 and HTTP/1.1 over ALPN) instead of plain HTTP.
    pub tls: Option<RawTls>,
    /// The gateway's URL as tools reach it (scheme and host, e.g. `https://spgate.example`):
    /// the base of the document links it hands out, never taken from a request's Host. Without
    /// it, responses with document links are refused.
    pub public_url: Option<String>,
}

/// `[server.tls]` / `[admin.tls]`: the listener's certificate, reloaded when the files change.
#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (readable by the gateway only).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates client certificates must chain to (enables mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse connections without a client certificate (default false:
    /// tools' `client_cert_spki_sha256` pins decide per tool).
    pub require_client_cert: Option<bool>,
    /// How often the files are checked for new contents (SIGHUP reloads at once too).
    pub reload_interval_seconds: Option<u64>,
}

/// `[upstream]`: the connection to SP-API.
#[derive(Debug, Default, Deserialize)]
pub struct RawUpstream {
    /// Per-region SP-API endpoints.
    pub endpoints: Option<RawEndpoints>,
    /// TCP + TLS connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Time until the upstream's response headers arrive.
    pub header_timeout_ms: Option<u64>,
    /// Time until the whole response body has been relayed.
    pub total_timeout_ms: Option<u64>,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout_seconds: Option<u64>,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: Option<usize>,
    /// Optional AWS SigV4 signing of upstream requests.
    pub sigv4: Option<RawSigV4>,
}

/// `[upstream.sigv4]`: Amazon stopped requiring SigV4 in October 2023 and ignores signatures;
/// kept for applications whose policies still want it.
#[derive(Debug, Default, Deserialize)]
pub struct RawSigV4 {
    /// Sign requests.
    pub enabled: Option<bool>,
    /// The IAM access key id (a reference).
    pub access_key_id: Option<RawSecret>,
    /// The IAM secret access key (a reference).
    pub secret_access_key: Option<RawSecret>,
}

/// `[upstream.endpoints]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawEndpoints {
    /// North America.
    pub na: Option<String>,
    /// Europe.
    pub eu: Option<String>,
    /// Far East.
    pub fe: Option<String>,
}

/// `[lwa]`: Login with Amazon.
#[derive(Debug, Default, Deserialize)]
pub struct RawLwa {
    /// LWA token endpoint.
    pub token_url: Option<String>,
    /// The application's LWA client id.
    pub client_id: Option<String>,
    /// The application's LWA client secret (a reference).
    pub client_secret: Option<RawSecret>,
    /// The previous client secret during Amazon's 180-day rotation (a reference): used only
    /// when LWA answers `invalid_client` to the current one.
    pub previous_client_secret: Option<RawSecret>,
    /// Access tokens are refreshed this long before they expire.
    pub refresh_margin_seconds: Option<u64>,
    /// Timeout for one call to the token endpoint.
    pub timeout_ms: Option<u64>,
    /// A 403 `Unauthorized` with empty details on a token at least this old is taken as a token
    /// Amazon lost: the token is refreshed and the request retried once (default 10).
    pub token_loss_min_age_seconds: Option<u64>,
    /// At most this many such refreshes per seller (or grantless scope) per minute; 0 turns
    /// the healing off (default 1).
    pub token_loss_refreshes_per_minute: Option<u32>,
    /// At most this many such refreshes per minute for all subjects together, per instance
    /// (default 10; 0: no bound beyond the per-subject one). A bare 403 is also what Amazon
    /// answers an operation the application has no role for, which a tool can call for every
    /// seller: this keeps such calls from driving LWA into throttling for everyone.
    pub token_loss_refreshes_per_minute_total: Option<u32>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawStore {
    /// Backend: `embedded`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Data directory of the embedded backend.
    pub data_dir: Option<PathBuf>,
    /// Redis URL of the redis backend (`redis://[:password@]host:port/db`), a reference when it
    /// holds a password, else a plain string.
    pub url: Option<RawSecret>,
    /// Prefix of every Redis key (several deployments may share one Redis).
    pub key_prefix: Option<String>,
    /// PEM CA certificate(s) a `rediss://` server's certificate must chain to (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// ACL user (a reference or a plain name).
    pub username: Option<RawSecret>,
    /// ACL password (a reference).
    pub password: Option<RawSecret>,
    /// Schema of the postgres backend (default `spgate`).
    pub schema: Option<String>,
    /// Connections in the postgres backend's pool (default 16).
    pub pool_size: Option<usize>,
    /// The postgres server cancels a statement running longer (default 5000).
    pub statement_timeout_ms: Option<u64>,
}

/// `[keys]`: the master key that seals secrets at rest.
#[derive(Debug, Default, Deserialize)]
pub struct RawKeys {
    /// Id of the current master key (recorded in every sealed value).
    pub master_key_id: Option<String>,
    /// The current master key: 32 bytes, base64 (a reference).
    pub master_key: Option<RawSecret>,
    /// Older keys still needed to open values sealed before a rotation.
    pub previous: Option<Vec<RawPreviousKey>>,
}

/// `[[keys.previous]]`.
#[derive(Debug, Deserialize)]
pub struct RawPreviousKey {
    /// Its id.
    pub id: Option<String>,
    /// The key (a reference).
    pub key: Option<RawSecret>,
}

/// `[log]`: operational logs.
#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    /// `json` or `pretty`.
    pub format: Option<String>,
    /// A tracing filter, e.g. `info` or `spgate=debug,info`.
    pub level: Option<String>,
}

/// `[onboarding]`: the website authorization workflow for sellers.
#[derive(Debug, Default, Deserialize)]
pub struct RawOnboarding {
    /// The SP-API application id (`amzn1.sp.solution...`), sent to Seller Central.
    pub application_id: Option<String>,
    /// Whether the application is still a draft (adds `version=beta` to the consent URL).
    pub draft: Option<bool>,
    /// The gateway's public base URL; invites and the redirect URI are built from it.
    pub public_url: Option<String>,
    /// How long an invite link works.
    pub invite_ttl_hours: Option<u64>,
    /// Seller Central base URL per region (where sellers give consent).
    pub consent_urls: Option<RawEndpoints>,
}

/// `[roles.<name>]`: what a tool with this role receives of each buyer-PII category.
#[derive(Debug, Default, Deserialize)]
pub struct RawRole {
    /// Category name -> action (`pass`, `mask`, `pseudonymize`, `encrypt`, `drop`).
    pub pii: Option<BTreeMap<String, String>>,
    /// Categories whose `encrypt`ed values tools of this role may reveal
    /// (`POST /v1/pii/reveal`), while the order's retention lasts.
    pub reveal: Option<Vec<String>>,
}

/// `[pii]`: how restricted responses are handled before any role's policy applies.
#[derive(Debug, Default, Deserialize)]
pub struct RawPii {
    /// Largest response of an operation with buyer PII that is buffered and transformed;
    /// larger ones are refused (502), never passed through.
    pub max_response_bytes: Option<usize>,
    /// Action for e-mail addresses and phone numbers found outside the field map
    /// (`drop`, the default, `mask`, `pseudonymize` or `encrypt`; never `pass`).
    pub safety_net: Option<String>,
}

/// The whole file, sections parsed independently so one bad section does not hide another.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// `[server]`.
    pub server: RawServer,
    /// `[upstream]`.
    pub upstream: RawUpstream,
    /// `[lwa]`.
    pub lwa: RawLwa,
    /// `[store]`.
    pub store: RawStore,
    /// `[keys]`.
    pub keys: RawKeys,
    /// `[log]`.
    pub log: RawLog,
    /// `[roles.<name>]`.
    pub roles: BTreeMap<String, RawRole>,
    /// `[onboarding]`, absent when sellers are only imported.
    pub onboarding: Option<RawOnboarding>,
    /// `[ratelimit]`.
    pub ratelimit: RawRateLimit,
    /// `[tools.<name>]`: per-tool settings (its rate plan).
    pub tools: BTreeMap<String, RawTool>,
    /// `[admin]`.
    pub admin: Option<RawAdmin>,
    /// `[pii]`.
    pub pii: RawPii,
    /// `[audit]`, absent when no audit log is kept (a warning at startup).
    pub audit: Option<crate::audit::RawAudit>,
    /// `[retention]`.
    pub retention: crate::vault::RawRetention,
    /// `[outbound]`: where document downloads may go.
    pub outbound: crate::proxy::outbound::RawOutbound,
    /// `[forward_proxy]`: CONNECT to Amazon's hosts answered by the gateway.
    pub forward_proxy: crate::server::forward::RawForwardProxy,
    /// `[compat]`: Orders v0 translated to Orders 2026-01-01.
    pub compat: crate::compat::RawCompat,
    /// `[shared_calls]`: coalesced and cached answers of operations without buyer PII.
    pub shared_calls: crate::proxy::RawSharedCalls,
}

/// `[tools.<name>]`: settings of one seller tool, by the tool name its API keys carry.
#[derive(Debug, Default, Deserialize)]
pub struct RawTool {
    /// The rate plan (`[ratelimit.plans.<plan>]`) the tool's requests use.
    pub plan: Option<String>,
    /// Client certificates the tool must present besides its API key: base64 SHA-256 of each
    /// certificate's SubjectPublicKeyInfo (needs `[server.tls] client_ca_file`).
    pub client_cert_spki_sha256: Option<Vec<String>>,
    /// This tool's Orders v0 handling, overriding `[compat] orders_v0`.
    pub orders_v0: Option<String>,
}

/// `[admin]`: the admin listener (health, metrics, rate-limit status, reload).
#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    /// Address of the admin listener (separate from the proxy listener).
    pub listen: Option<String>,
    /// Bearer tokens for admin routes.
    pub tokens: Option<Vec<RawAdminToken>>,
    /// `[admin.tls]`: HTTPS on the admin listener.
    pub tls: Option<RawTls>,
}

/// `[[admin.tokens]]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawAdminToken {
    /// Who holds it (recorded with admin actions).
    pub name: Option<String>,
    /// `ops` or `security`.
    pub role: Option<String>,
    /// The token (a reference).
    pub token: Option<RawSecret>,
}

// ---------------------------------------------------------------------------------------------
// Resolved: typed, validated.

/// The validated configuration. Built only by [`Config::resolve`].
#[derive(Debug)]
pub struct Config {
    /// The proxy listener.
    pub server: ServerConfig,
    /// The SP-API connection.
    pub upstream: UpstreamConfig,
    /// Login with Amazon.
    pub lwa: LwaConfig,
    /// Where state lives.
    pub store: StoreConfig,
    /// The master key.
    pub master_key: MasterKey,
    /// Operational logs.
    pub log: LogConfig,
    /// Roles: what each tool role receives of buyer PII.
    pub roles: Roles,
    /// The seller authorization workflow, if configured.
    pub onboarding: Option<OnboardingConfig>,
    /// Rate limiting: Amazon's usage plans and the tools' rate plans.
    pub ratelimit: RateLimitSettings,
    /// Rate plan per tool name.
    pub tool_plans: BTreeMap<String, String>,
    /// Client-certificate pins per tool name (checked on the TLS proxy listener).
    pub tool_client_certs: crate::server::tls::ClientPins,
    /// The admin listener, if configured.
    pub admin: Option<AdminConfig>,
    /// Handling of responses with buyer PII.
    pub pii: PiiSettings,
    /// The audit log, if configured.
    pub audit: Option<crate::audit::AuditConfig>,
    /// Retention of buyer PII (the vault).
    pub retention: crate::vault::RetentionConfig,
    /// Where document downloads may go.
    pub outbound: crate::proxy::outbound::OutboundConfig,
    /// Forward-proxy mode, when enabled.
    pub forward_proxy: Option<crate::server::forward::ForwardProxyConfig>,
    /// Orders v0 handling per tool.
    pub compat: crate::compat::CompatConfig,
    /// Answers shared between callers.
    pub shared_calls: crate::proxy::SharedCallsConfig,
}

/// See [`RawPii`].
#[derive(Debug, Clone, Copy)]
pub struct PiiSettings {
    /// Largest response with buyer PII the gateway transforms (larger: 502).
    pub max_response_bytes: usize,
    /// Action for e-mail addresses and phone numbers outside the field map.
    pub safety_net: Action,
}

impl Default for PiiSettings {
    fn default() -> Self {
        PiiSettings {
            max_response_bytes: 8 * 1024 * 1024,
            safety_net: Action::Drop,
        }
    }
}

/// See [`RawAdmin`].
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Accepted tokens.
    pub tokens: Vec<AdminToken>,
    /// HTTPS, when configured.
    pub tls: Option<crate::server::tls::TlsConfig>,
}

/// One admin bearer token.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// Holder.
    pub name: String,
    /// Role.
    pub role: AdminRole,
    /// The token.
    pub token: Secret<String>,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Sellers, clients, rate plans, reload.
    Ops,
    /// Audit, reveal approvals, vault export and erase.
    Security,
}

/// See [`RawServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest total header size.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_request_body_bytes: u64,
    /// Request header read timeout.
    pub header_read_timeout: Duration,
    /// Drain bound on shutdown.
    pub drain_timeout: Duration,
    /// No bytes accepted by the client's socket for this long closes the connection.
    pub write_timeout: Duration,
    /// Body read deadline of the endpoints the gateway answers itself.
    pub body_read_timeout: Duration,
    /// Bytes of request bodies held for sending again, all requests together.
    pub replay_buffer_bytes: usize,
    /// Per-address connection cap and unauthenticated rate limit.
    pub peers: crate::server::peers::PeerLimits,
    /// HTTPS, when configured.
    pub tls: Option<crate::server::tls::TlsConfig>,
    /// `server.public_url` without a trailing slash: the base of document links.
    pub public_url: Option<String>,
}

/// See [`RawUpstream`].
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URI per region (scheme + authority, no path).
    pub endpoints: Endpoints,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Header timeout.
    pub header_timeout: Duration,
    /// Total timeout.
    pub total_timeout: Duration,
    /// Pool idle timeout.
    pub pool_idle_timeout: Duration,
    /// Pool size per host.
    pub pool_max_idle_per_host: usize,
    /// SigV4 credentials, when signing is enabled.
    pub sigv4: Option<SigV4Config>,
}

/// AWS credentials for SigV4 signing.
#[derive(Debug, Clone)]
pub struct SigV4Config {
    /// Access key id.
    pub access_key_id: Secret<String>,
    /// Secret access key.
    pub secret_access_key: Secret<String>,
}

/// SP-API base URIs per region.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// North America.
    pub na: Uri,
    /// Europe.
    pub eu: Uri,
    /// Far East.
    pub fe: Uri,
}

impl Endpoints {
    /// The base URI for a region.
    pub fn for_region(&self, region: Region) -> &Uri {
        match region {
            Region::Na => &self.na,
            Region::Eu => &self.eu,
            Region::Fe => &self.fe,
        }
    }
}

/// See [`RawLwa`].
#[derive(Debug, Clone)]
pub struct LwaConfig {
    /// Token endpoint.
    pub token_url: Uri,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret<String>,
    /// Previous client secret, tried on `invalid_client`.
    pub previous_client_secret: Option<Secret<String>>,
    /// Refresh margin before expiry.
    pub refresh_margin: Duration,
    /// Timeout per token call.
    pub timeout: Duration,
    /// Healing of tokens Amazon lost (a 403 with empty details on an old token).
    pub token_loss: TokenLossConfig,
}

/// When a 403 `Unauthorized` with empty details is taken as a lost token (see
/// `auth::lwa::Lwa::heal`): Amazon answers a token it no longer knows and a genuine permission
/// refusal alike, so the token's age and a per-subject bound keep the second cheap.
#[derive(Debug, Clone, Copy)]
pub struct TokenLossConfig {
    /// Tokens younger than this are not refreshed (a fresh token's 403 is a permission 403).
    pub min_age: Duration,
    /// Refreshes per seller (or grantless scope) per minute; 0: never.
    pub refreshes_per_minute: u32,
    /// Refreshes per minute for all subjects together (per instance); 0: no such bound.
    pub refreshes_per_minute_total: u32,
}

/// See [`RawOnboarding`].
#[derive(Debug, Clone)]
pub struct OnboardingConfig {
    /// The SP-API application id.
    pub application_id: String,
    /// Draft application: consent URLs carry `version=beta`.
    pub draft: bool,
    /// The gateway's public base URL, without a trailing slash.
    pub public_url: String,
    /// `<public_url>/oauth/callback`: must be the redirect URI registered for the application.
    pub redirect_uri: String,
    /// How long an invite works.
    pub invite_ttl: Duration,
    /// Seller Central base URL per region.
    pub consent_urls: Endpoints,
}

/// See [`RawStore`].
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// SQLite under a data directory.
    Embedded {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// Redis, shared by several gateway instances.
    Redis {
        /// Connection URL (may hold a password).
        url: Secret<String>,
        /// Key prefix.
        key_prefix: String,
        /// TLS roots and ACL credentials.
        access: RedisAccess,
    },
    /// PostgreSQL, durable and shared by several gateway instances.
    Postgres(crate::store::postgres::PostgresOptions),
}

/// How to reach a Redis server beyond its URL: the CA for `rediss://` and the ACL user. Used by
/// the store (`[store]`) and the limiter (`[ratelimit.redis]`).
#[derive(Debug, Clone, Default)]
pub struct RedisAccess {
    /// PEM CA certificate(s) the server's certificate must chain to (`None`: system roots).
    pub ca_pem: Option<String>,
    /// ACL user name (`None`: the URL's, else `default`).
    pub username: Option<Secret<String>>,
    /// ACL password (`None`: the URL's, if any).
    pub password: Option<Secret<String>>,
}

// === impl RedisAccess ===

impl RedisAccess {
    /// A client for `url` with these settings. A CA makes sense only with `rediss://`.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo;
        let mut info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user.expose());
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        match &self.ca_pem {
            None => redis::Client::open(info),
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone().into_bytes()),
                },
            ),
        }
    }
}

/// Whether a `postgres://user:password@host/db` URL carries a password (in its user info).
fn postgres_url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || url.contains("password=")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// See [`RawLog`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
}

// === impl RawConfig ===

impl RawConfig {
    /// Parses TOML text. Reports syntax errors, unknown keys and type errors, each with its path.
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        let (raw, issues) = RawConfig::parse_lenient(text)?;
        if issues.is_empty() {
            Ok(raw)
        } else {
            Err(ConfigError(issues))
        }
    }

    /// Parses TOML text, keeping going past unknown keys and bad sections (left at their
    /// defaults) so that resolution can report its own problems too. Fails only on bad syntax.
    pub fn parse_lenient(text: &str) -> Result<(RawConfig, Vec<ConfigIssue>), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError(vec![ConfigIssue {
                path: String::new(),
                message: format!("invalid TOML: {}", e.message()),
            }])
        })?;
        let mut issues = Vec::new();
        let mut raw = RawConfig::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => section(&key, value, &mut raw.server, &mut issues),
                "upstream" => section(&key, value, &mut raw.upstream, &mut issues),
                "lwa" => section(&key, value, &mut raw.lwa, &mut issues),
                "store" => section(&key, value, &mut raw.store, &mut issues),
                "keys" => section(&key, value, &mut raw.keys, &mut issues),
                "log" => section(&key, value, &mut raw.log, &mut issues),
                "roles" => section(&key, value, &mut raw.roles, &mut issues),
                "onboarding" => section(&key, value, &mut raw.onboarding, &mut issues),
                "tools" => section(&key, value, &mut raw.tools, &mut issues),
                "admin" => section(&key, value, &mut raw.admin, &mut issues),
                "pii" => section(&key, value, &mut raw.pii, &mut issues),
                "ratelimit" => {
                    let (parsed, more) = crate::ratelimit::config::parse_section(value);
                    raw.ratelimit = parsed;
                    issues.extend(more);
                }
                "audit" => {
                    let (parsed, more) = crate::audit::config::parse_section(value);
                    raw.audit = Some(parsed);
                    issues.extend(more);
                }
                "retention" => section(&key, value, &mut raw.retention, &mut issues),
                "outbound" => section(&key, value, &mut raw.outbound, &mut issues),
                "forward_proxy" => section(&key, value, &mut raw.forward_proxy, &mut issues),
                "compat" => section(&key, value, &mut raw.compat, &mut issues),
                "shared_calls" => section(&key, value, &mut raw.shared_calls, &mut issues),
                _ => issues.push(ConfigIssue {
                    path: key.clone(),
                    message: "unknown key".into(),
                }),
            }
        }
        Ok((raw, issues))
    }
}

/// Parses one top-level section into `out`, reporting unknown keys and type errors with their
/// key paths; on a type error `out` keeps its default so the rest can still be checked.
pub(crate) fn section<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    out: &mut T,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut unknown = Vec::new();
    // serde_ignored writes `?` for each Option level; key paths in messages leave them out.
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        let p = path.to_string();
        unknown.push(
            p.split('.')
                .filter(|s| *s != "?")
                .collect::<Vec<_>>()
                .join("."),
        );
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => *out = v,
        Err(e) => {
            let inner = e.path().to_string();
            issues.push(ConfigIssue {
                path: join_path(name, &inner),
                message: e.into_inner().to_string(),
            });
        }
    }
    for p in unknown {
        issues.push(ConfigIssue {
            path: join_path(name, &p),
            message: "unknown key".into(),
        });
    }
}

fn join_path(section: &str, inner: &str) -> String {
    if inner.is_empty() || inner == "." {
        section.to_string()
    } else {
        format!("{section}.{inner}")
    }
}

// === impl Config ===

impl Config {
    /// Reads and resolves a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![ConfigIssue {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::from_toml(&text, env)
    }

    /// Parses and resolves TOML text, reporting the problems of both steps together.
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let (raw, mut issues) = RawConfig::parse_lenient(text)?;
        match Config::resolve(raw, env) {
            Ok(config) if issues.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError(issues)),
            Err(ConfigError(more)) => {
                issues.extend(more);
                Err(ConfigError(issues))
            }
        }
    }

    /// Validates a parsed config and reads its secrets. Collects every problem.
    pub fn resolve(raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut v = Validator {
            issues: Vec::new(),
            env,
        };
        let s = &raw.server;
        let server = ServerConfig {
            listen: v.addr(
                "server.listen",
                s.listen.as_deref().unwrap_or("127.0.0.1:8080"),
            ),
            max_connections: v.positive(
                "server.max_connections",
                s.max_connections.unwrap_or(10_000),
            ),
            max_header_bytes: v.range(
                "server.max_header_bytes",
                s.max_header_bytes.unwrap_or(32 * 1024),
                1024,
                1024 * 1024,
            ),
            max_request_body_bytes: s.max_request_body_bytes.unwrap_or(10 * 1024 * 1024),
            header_read_timeout: v.millis(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms.unwrap_or(10_000),
            ),
            drain_timeout: Duration::from_secs(s.drain_timeout_seconds.unwrap_or(30)),
            write_timeout: v.millis(
                "server.write_timeout_ms",
                s.write_timeout_ms.unwrap_or(30_000),
            ),
            body_read_timeout: v.millis(
                "server.body_read_timeout_ms",
                s.body_read_timeout_ms.unwrap_or(10_000),
            ),
            replay_buffer_bytes: v.range(
                "server.replay_buffer_bytes",
                s.replay_buffer_bytes.unwrap_or(64 * 1024 * 1024),
                256 * 1024,
                1 << 40,
            ),
            peers: crate::server::peers::PeerLimits {
                max_connections_per_address: v.positive(
                    "server.max_connections_per_address",
                    s.max_connections_per_address.unwrap_or(1024),
                ),
                unauthenticated_rate_per_second: v.positive(
                    "server.unauthenticated_rate_per_second",
                    s.unauthenticated_rate_per_second.unwrap_or(20) as usize,
                ) as u32,
                unauthenticated_burst: v.positive(
                    "server.unauthenticated_burst",
                    s.unauthenticated_burst.unwrap_or(100) as usize,
                ) as u32,
            },
            tls: s.tls.as_ref().and_then(|t| v.tls("server.tls", t)),
            public_url: s
                .public_url
                .as_deref()
                .map(|u| v.public_url("server.public_url", u)),
        };
        let u = &raw.upstream;
        let ep = u.endpoints.as_ref();
        let endpoints = Endpoints {
            na: v.base_uri(
                "upstream.endpoints.na",
                ep.and_then(|e| e.na.as_deref())
                    .unwrap_or("https://sellingpartnerapi-na.amazon.com"),
            ),
            eu: v.base_uri(
                "upstream.endpoints.eu",
                ep.and_then(|e| e.eu.as_deref())
                    .unwrap_or("https://sellingpartnerapi-eu.amazon.com"),
            ),
            fe: v.base_uri(
                "upstream.endpoints.fe",
                ep.and_then(|e| e.fe.as_deref())
                    .unwrap_or("https://sellingpartnerapi-fe.amazon.com"),
            ),
        };
        let upstream = UpstreamConfig {
            endpoints,
            connect_timeout: v.millis(
                "upstream.connect_timeout_ms",
                u.connect_timeout_ms.unwrap_or(3_000),
            ),
            header_timeout: v.millis(
                "upstream.header_timeout_ms",
                u.header_timeout_ms.unwrap_or(30_000),
            ),
            total_timeout: v.millis(
                "upstream.total_timeout_ms",
                u.total_timeout_ms.unwrap_or(120_000),
            ),
            pool_idle_timeout: Duration::from_secs(u.pool_idle_timeout_seconds.unwrap_or(90)),
            pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(64),
            sigv4: match &u.sigv4 {
                Some(s) if s.enabled.unwrap_or(false) => Some(SigV4Config {
                    access_key_id: v
                        .secret("upstream.sigv4.access_key_id", s.access_key_id.as_ref()),
                    secret_access_key: v.secret(
                        "upstream.sigv4.secret_access_key",
                        s.secret_access_key.as_ref(),
                    ),
                }),
                _ => None,
            },
        };
        if upstream.header_timeout > upstream.total_timeout {
            v.issue(
                "upstream.header_timeout_ms",
                "must not exceed upstream.total_timeout_ms",
            );
        }
        let l = &raw.lwa;
        let lwa = LwaConfig {
            token_url: v.uri(
                "lwa.token_url",
                l.token_url
                    .as_deref()
                    .unwrap_or("https://api.amazon.com/auth/o2/token"),
            ),
            client_id: match &l.client_id {
                Some(id) if !id.trim().is_empty() => id.clone(),
                _ => {
                    v.issue("lwa.client_id", "required: the application's LWA client id");
                    String::new()
                }
            },
            client_secret: v.secret("lwa.client_secret", l.client_secret.as_ref()),
            previous_client_secret: l
                .previous_client_secret
                .as_ref()
                .map(|raw| v.secret("lwa.previous_client_secret", Some(raw))),
            refresh_margin: Duration::from_secs(l.refresh_margin_seconds.unwrap_or(300)),
            timeout: v.millis("lwa.timeout_ms", l.timeout_ms.unwrap_or(10_000)),
            token_loss: TokenLossConfig {
                min_age: Duration::from_secs(l.token_loss_min_age_seconds.unwrap_or(10)),
                refreshes_per_minute: l.token_loss_refreshes_per_minute.unwrap_or(1),
                refreshes_per_minute_total: l.token_loss_refreshes_per_minute_total.unwrap_or(10),
            },
        };
        let store = match raw.store.kind.as_deref().unwrap_or("embedded") {
            "embedded" => StoreConfig::Embedded {
                data_dir: raw
                    .store
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("data")),
            },
            "redis" => StoreConfig::Redis {
                url: match &raw.store.url {
                    // A URL without a password is not a secret and may be written inline.
                    Some(RawSecret::Literal(u)) if !u.contains('@') => Secret::new(u.clone()),
                    Some(RawSecret::Literal(_)) => {
                        v.issue("store.url", "a URL with a password is a secret: use { env = \"NAME\" } or { file = \"/path\" }");
                        Secret::new(String::new())
                    }
                    other => v.secret("store.url", other.as_ref()),
                },
                key_prefix: raw
                    .store
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "spgate:".into()),
                access: v.redis_access(
                    "store",
                    raw.store.ca_file.as_deref(),
                    raw.store.username.as_ref(),
                    raw.store.password.as_ref(),
                ),
            },
            "postgres" => StoreConfig::Postgres(v.postgres_store(&raw.store)),
            other => {
                v.issue(
                    "store.type",
                    &format!("unknown backend {other:?} (expected \"embedded\", \"redis\" or \"postgres\")"),
                );
                StoreConfig::Embedded {
                    data_dir: PathBuf::new(),
                }
            }
        };
        let master_key = v.master_key(&raw.keys);
        let log = LogConfig {
            format: match raw.log.format.as_deref().unwrap_or("json") {
                "json" => LogFormat::Json,
                "pretty" => LogFormat::Pretty,
                other => {
                    v.issue(
                        "log.format",
                        &format!("unknown format {other:?} (expected \"json\" or \"pretty\")"),
                    );
                    LogFormat::Json
                }
            },
            level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
        };
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            v.issue(
                "log.level",
                "not a valid filter (e.g. \"info\" or \"spgate=debug,info\")",
            );
        }
        if let StoreConfig::Redis { url, .. } = &store {
            let secured = raw.store.ca_file.is_some() || raw.store.password.is_some();
            v.redis_tls_required("store", url, secured);
        }
        let roles = v.roles(&raw.roles);
        let onboarding = raw.onboarding.as_ref().map(|o| v.onboarding(o));
        let ratelimit = match raw.ratelimit.resolve(crate::catalog::Catalog::builtin()) {
            Ok(mut settings) => {
                // The limiter's Redis URL given by reference is read here, like every secret.
                let url_ref = raw.ratelimit.redis.as_ref().and_then(|r| r.url.as_ref());
                if let (Some(redis), Some(raw_url @ RawSecret::Ref(_))) =
                    (settings.redis.as_mut(), url_ref)
                {
                    redis.url = v.secret("ratelimit.redis.url", Some(raw_url));
                }
                if let (Some(redis), Some(r)) = (settings.redis.as_mut(), &raw.ratelimit.redis) {
                    redis.access = v.redis_access(
                        "ratelimit.redis",
                        r.ca_file.as_deref(),
                        r.username.as_ref(),
                        r.password.as_ref(),
                    );
                    let secured = r.ca_file.is_some() || r.password.is_some();
                    v.redis_tls_required("ratelimit.redis", &redis.url, secured);
                }
                Some(settings)
            }
            Err(issues) => {
                v.issues.extend(issues);
                None
            }
        };
        let mut tool_plans = BTreeMap::new();
        let mut tool_client_certs = BTreeMap::new();
        for (tool, settings) in &raw.tools {
            if let Some(pins) = &settings.client_cert_spki_sha256 {
                let path = format!("tools.{tool}.client_cert_spki_sha256");
                if server
                    .tls
                    .as_ref()
                    .is_none_or(|t| t.client_ca_file.is_none())
                {
                    v.issue(&path, "needs [server.tls] client_ca_file (client certificates are verified there)");
                }
                if pins.is_empty() {
                    v.issue(&path, "give at least one pin, or leave the key out");
                }
                let mut parsed = Vec::new();
                for (i, pin) in pins.iter().enumerate() {
                    match crate::server::tls::parse_pin(pin) {
                        Some(p) => parsed.push(p),
                        None => v.issue(&format!("{path}[{i}]"), "not a base64 SHA-256 (44 characters, e.g. from `openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`)"),
                    }
                }
                tool_client_certs.insert(tool.clone(), parsed);
            }
            if let Some(plan) = &settings.plan {
                let known = ratelimit
                    .as_ref()
                    .is_some_and(|r| r.limiter.plans.plans.contains_key(plan));
                if !known {
                    v.issue(
                        &format!("tools.{tool}.plan"),
                        &format!("no rate plan {plan:?} in [ratelimit.plans]"),
                    );
                }
                tool_plans.insert(tool.clone(), plan.clone());
            }
        }
        let admin = raw.admin.as_ref().map(|a| v.admin(a));
        let pii = v.pii(&raw.pii);
        let audit = raw.audit.as_ref().and_then(|a| {
            let key = v.secret("audit.key", a.key.as_ref());
            a.key.as_ref()?; // a missing key is reported once, as required
            let webhook = a
                .alerts
                .as_ref()
                .and_then(|al| al.webhook.as_ref())
                .map(|w| v.secret("audit.alerts.webhook", Some(w)));
            match a.resolve(&key, webhook, v.env) {
                Ok(c) => Some(c),
                Err(issues) => {
                    v.issues.extend(issues);
                    None
                }
            }
        });
        let retention = match raw.retention.resolve() {
            Ok(r) => r,
            Err(issues) => {
                v.issues.extend(issues);
                crate::vault::RetentionConfig::defaults()
            }
        };
        let outbound = match raw.outbound.resolve() {
            Ok(o) => o,
            Err(issues) => {
                v.issues.extend(issues);
                crate::proxy::outbound::OutboundConfig::defaults()
            }
        };
        let forward_proxy = match raw.forward_proxy.resolve(v.env) {
            Ok(f) => f,
            Err(issues) => {
                v.issues.extend(issues);
                None
            }
        };
        let compat = match raw
            .compat
            .resolve(raw.tools.iter().map(|(t, s)| (t, s.orders_v0.as_ref())))
        {
            Ok(c) => c,
            Err(issues) => {
                v.issues.extend(issues);
                crate::compat::CompatConfig::defaults()
            }
        };
        let shared_calls = raw.shared_calls.resolve().unwrap_or_else(|issues| {
            v.issues.extend(issues);
            crate::proxy::SharedCallsConfig::off()
        });
        match (v.issues.is_empty(), master_key, ratelimit) {
            (true, Some(master_key), Some(ratelimit)) => Ok(Config {
                server,
                upstream,
                lwa,
                store,
                master_key,
                log,
                roles,
                onboarding,
                ratelimit,
                tool_plans,
                tool_client_certs,
                admin,
                pii,
                audit,
                retention,
                outbound,
                forward_proxy,
                compat,
                shared_calls,
            }),
            _ => Err(ConfigError(v.issues)),
        }
    }
}

struct Validator<'e> {
    issues: Vec<ConfigIssue>,
    env: &'e dyn Env,
}

impl Validator<'_> {
    fn issue(&mut self, path: &str, message: &str) {
        self.issues.push(ConfigIssue {
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    fn addr(&mut self, path: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.issue(
                path,
                &format!("{s:?} is not an address like 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn positive(&mut self, path: &str, n: usize) -> usize {
        if n == 0 {
            self.issue(path, "must be at least 1");
        }
        n
    }

    fn range(&mut self, path: &str, n: usize, lo: usize, hi: usize) -> usize {
        if n < lo || n > hi {
            self.issue(path, &format!("must be between {lo} and {hi}"));
        }
        n
    }

    fn millis(&mut self, path: &str, ms: u64) -> Duration {
        if ms == 0 {
            self.issue(path, "must be at least 1 ms");
        }
        Duration::from_millis(ms)
    }

    fn uri(&mut self, path: &str, s: &str) -> Uri {
        match s.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                u
            }
            _ => {
                self.issue(path, &format!("{s:?} is not an http(s) URL"));
                Uri::from_static("http://invalid.invalid")
            }
        }
    }

    /// A URL tools can be sent to: http(s), a host, no path, query or credentials.
    fn public_url(&mut self, path: &str, s: &str) -> String {
        let u = self.base_uri(path, s);
        if u.query().is_some() || u.authority().is_some_and(|a| a.as_str().contains('@')) {
            self.issue(
                path,
                "must be scheme and host only, without a query or credentials",
            );
        }
        s.trim_end_matches('/').to_string()
    }

    fn base_uri(&mut self, path: &str, s: &str) -> Uri {
        let u = self.uri(path, s.trim_end_matches('/'));
        if u.path() != "/" && !u.path().is_empty() {
            self.issue(path, "must be scheme and host only, without a path");
        }
        u
    }

    fn secret(&mut self, path: &str, raw: Option<&RawSecret>) -> Secret<String> {
        match raw {
            None => {
                self.issue(path, "required: { env = \"NAME\" } or { file = \"/path\" }");
                Secret::new(String::new())
            }
            Some(RawSecret::Literal(_)) => {
                self.issue(path, "secrets must not be written in the config file: use { env = \"NAME\" } or { file = \"/path\" }");
                Secret::new(String::new())
            }
            Some(RawSecret::Ref(r)) => match (&r.env, &r.file) {
                (Some(name), None) => match self.env.var(name) {
                    Some(v) if !v.is_empty() => Secret::new(v),
                    _ => {
                        self.issue(path, &format!("environment variable {name} is not set"));
                        Secret::new(String::new())
                    }
                },
                (None, Some(file)) => match self.env.read_file(file) {
                    Ok(v) => Secret::new(v.trim_end_matches(['\n', '\r']).to_string()),
                    Err(e) => {
                        self.issue(path, &format!("cannot read {}: {e}", file.display()));
                        Secret::new(String::new())
                    }
                },
                _ => {
                    self.issue(path, "give exactly one of env or file");
                    Secret::new(String::new())
                }
            },
        }
    }

    fn tls(&mut self, path: &str, raw: &RawTls) -> Option<crate::server::tls::TlsConfig> {
        let (Some(cert_file), Some(key_file)) = (&raw.cert_file, &raw.key_file) else {
            for (key, given) in [("cert_file", &raw.cert_file), ("key_file", &raw.key_file)] {
                if given.is_none() {
                    self.issue(&format!("{path}.{key}"), "required: a PEM file");
                }
            }
            return None;
        };
        if raw.require_client_cert == Some(true) && raw.client_ca_file.is_none() {
            self.issue(
                &format!("{path}.require_client_cert"),
                "needs client_ca_file (the CA client certificates must chain to)",
            );
        }
        let config = crate::server::tls::TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: raw.client_ca_file.clone(),
            require_client_cert: raw.require_client_cert.unwrap_or(false),
            reload_interval: Duration::from_secs(raw.reload_interval_seconds.unwrap_or(5).max(1)),
        };
        if let Err(e) = crate::server::tls::check(&config, self.env) {
            self.issue(path, &e.to_string());
            return None;
        }
        Some(config)
    }

    /// A password or a CA (`secured`) needs a `rediss://` URL: over `redis://` the password
    /// would cross the network in clear text and the CA would check nothing.
    /// `[store] type = "postgres"`: the URL (a reference when it holds a password), schema,
    /// pool, statement timeout and TLS (`sslmode=verify-full` and/or `ca_file`).
    fn postgres_store(&mut self, raw: &RawStore) -> crate::store::postgres::PostgresOptions {
        let url = match &raw.url {
            // A URL without a password is not a secret and may be written inline.
            Some(RawSecret::Literal(u)) if !postgres_url_has_password(u) => u.clone(),
            Some(RawSecret::Literal(_)) => {
                self.issue("store.url", "a URL with a password is a secret: use { env = \"NAME\" } or { file = \"/path\" }");
                String::new()
            }
            other => self.secret("store.url", other.as_ref()).expose().clone(),
        };
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            self.issue("store.url", "expected postgres://user@host:port/database");
        }
        let schema = raw.schema.clone().unwrap_or_else(|| "spgate".into());
        let plain = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            self.issue(
                "store.schema",
                "a plain identifier: [a-z_][a-z0-9_]*, at most 63 bytes",
            );
        }
        let pool_size = raw.pool_size.unwrap_or(16);
        if pool_size == 0 || pool_size > 1000 {
            self.issue("store.pool_size", "between 1 and 1000");
        }
        let ca_pem = self
            .redis_access("store", raw.ca_file.as_deref(), None, None)
            .ca_pem;
        for (field, set) in [
            ("key_prefix", raw.key_prefix.is_some()),
            ("username", raw.username.is_some()),
            ("password", raw.password.is_some()),
            ("data_dir", raw.data_dir.is_some()),
        ] {
            if set {
                self.issue(
                    &format!("store.{field}"),
                    "not a setting of the postgres backend (user and password go in the URL)",
                );
            }
        }
        crate::store::postgres::PostgresOptions {
            url,
            schema,
            pool_size,
            statement_timeout: self.millis(
                "store.statement_timeout_ms",
                raw.statement_timeout_ms.unwrap_or(5_000),
            ),
            ca_pem,
        }
    }

    fn redis_tls_required(&mut self, path: &str, url: &Secret<String>, secured: bool) {
        let url = url.expose();
        if secured && !url.is_empty() && !url.starts_with("rediss://") {
            self.issue(
                &format!("{path}.url"),
                "password and ca_file need a rediss:// URL (TLS); over redis:// the password travels in clear text",
            );
        }
    }

    fn redis_access(
        &mut self,
        path: &str,
        ca_file: Option<&Path>,
        username: Option<&RawSecret>,
        password: Option<&RawSecret>,
    ) -> RedisAccess {
        let ca_pem = ca_file.and_then(|file| match self.env.read_file(file) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.issue(
                    &format!("{path}.ca_file"),
                    &format!("{}: no PEM certificate", file.display()),
                );
                None
            }
            Err(e) => {
                self.issue(
                    &format!("{path}.ca_file"),
                    &format!("cannot read {}: {e}", file.display()),
                );
                None
            }
        });
        let username = username.map(|u| match u {
            // A user name alone opens nothing; it may be written inline.
            RawSecret::Literal(name) => Secret::new(name.clone()),
            r @ RawSecret::Ref(_) => self.secret(&format!("{path}.username"), Some(r)),
        });
        let password = password.map(|p| self.secret(&format!("{path}.password"), Some(p)));
        RedisAccess {
            ca_pem,
            username,
            password,
        }
    }

    fn admin(&mut self, raw: &RawAdmin) -> AdminConfig {
        let listen = self.addr(
            "admin.listen",
            raw.listen.as_deref().unwrap_or("127.0.0.1:9090"),
        );
        let mut tokens = Vec::new();
        for (i, t) in raw.tokens.iter().flatten().enumerate() {
            let path = format!("admin.tokens[{i}]");
            let role = match t.role.as_deref() {
                Some("ops") => AdminRole::Ops,
                Some("security") => AdminRole::Security,
                _ => {
                    self.issue(&format!("{path}.role"), "must be \"ops\" or \"security\"");
                    AdminRole::Ops
                }
            };
            let name = t.name.clone().unwrap_or_else(|| {
                self.issue(&format!("{path}.name"), "required: who holds the token");
                String::new()
            });
            let token = self.secret(&format!("{path}.token"), t.token.as_ref());
            if !token.expose().is_empty() && token.expose().len() < 32 {
                self.issue(&format!("{path}.token"), "must be at least 32 characters");
            }
            tokens.push(AdminToken { name, role, token });
        }
        let tls = raw.tls.as_ref().and_then(|t| self.tls("admin.tls", t));
        AdminConfig {
            listen,
            tokens,
            tls,
        }
    }

    fn onboarding(&mut self, raw: &RawOnboarding) -> OnboardingConfig {
        let application_id = match &raw.application_id {
            Some(id) if !id.trim().is_empty() => id.clone(),
            _ => {
                self.issue(
                    "onboarding.application_id",
                    "required: the SP-API application id",
                );
                String::new()
            }
        };
        let public_url = match &raw.public_url {
            Some(u) => self.base_uri("onboarding.public_url", u),
            None => {
                self.issue(
                    "onboarding.public_url",
                    "required: the gateway's public base URL",
                );
                Uri::from_static("http://invalid.invalid")
            }
        };
        let c = raw.consent_urls.as_ref();
        let consent_urls = Endpoints {
            na: self.base_uri(
                "onboarding.consent_urls.na",
                c.and_then(|c| c.na.as_deref())
                    .unwrap_or("https://sellercentral.amazon.com"),
            ),
            eu: self.base_uri(
                "onboarding.consent_urls.eu",
                c.and_then(|c| c.eu.as_deref())
                    .unwrap_or("https://sellercentral-europe.amazon.com"),
            ),
            fe: self.base_uri(
                "onboarding.consent_urls.fe",
                c.and_then(|c| c.fe.as_deref())
                    .unwrap_or("https://sellercentral.amazon.co.jp"),
            ),
        };
        let base = public_url.to_string();
        OnboardingConfig {
            application_id,
            draft: raw.draft.unwrap_or(false),
            redirect_uri: format!("{}/oauth/callback", base.trim_end_matches('/')),
            public_url: base.trim_end_matches('/').to_string(),
            invite_ttl: Duration::from_secs(3600 * raw.invite_ttl_hours.unwrap_or(72)),
            consent_urls,
        }
    }

    fn pii(&mut self, raw: &RawPii) -> PiiSettings {
        let default = PiiSettings::default();
        let max_response_bytes = raw.max_response_bytes.unwrap_or(default.max_response_bytes);
        if !(1024..=256 * 1024 * 1024).contains(&max_response_bytes) {
            self.issue(
                "pii.max_response_bytes",
                "must be between 1024 and 268435456",
            );
        }
        let safety_net = match raw.safety_net.as_deref().map(str::parse::<Action>) {
            None => default.safety_net,
            Some(Ok(Action::Pass)) => {
                self.issue(
                    "pii.safety_net",
                    "pass would let unmapped e-mail addresses and phone numbers through; use drop, mask, pseudonymize or encrypt",
                );
                default.safety_net
            }
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                self.issue("pii.safety_net", &e);
                default.safety_net
            }
        };
        PiiSettings {
            max_response_bytes,
            safety_net,
        }
    }

    fn roles(&mut self, raw: &BTreeMap<String, RawRole>) -> Roles {
        let mut roles = BTreeMap::new();
        for (name, role) in raw {
            let mut grants = Vec::new();
            for (category, action) in role.pii.iter().flatten() {
                let path = format!("roles.{name}.pii.{category}");
                match (category.parse::<Category>(), action.parse::<Action>()) {
                    (Ok(c), Ok(a)) => grants.push((c, a)),
                    (Err(e), _) | (_, Err(e)) => self.issue(&path, &e),
                }
            }
            let mut reveal = Vec::new();
            for (i, category) in role.reveal.iter().flatten().enumerate() {
                match category.parse::<Category>() {
                    Ok(c) => reveal.push(c),
                    Err(e) => self.issue(&format!("roles.{name}.reveal[{i}]"), &e),
                }
            }
            roles.insert(name.clone(), Role::new(grants).with_reveal(reveal));
        }
        Roles::new(roles)
    }

    fn master_key(&mut self, raw: &RawKeys) -> Option<MasterKey> {
        let id = raw.master_key_id.clone().unwrap_or_else(|| "k1".into());
        let secret = self.secret("keys.master_key", raw.master_key.as_ref());
        if secret.expose().is_empty() {
            return None;
        }
        let mut key = match MasterKey::from_base64(&id, &secret) {
            Ok(k) => k,
            Err(e) => {
                self.issue("keys.master_key", &e.to_string());
                return None;
            }
        };
        for (i, prev) in raw.previous.iter().flatten().enumerate() {
            let path = format!("keys.previous[{i}]");
            let Some(pid) = prev.id.clone() else {
                self.issue(&format!("{path}.id"), "required");
                continue;
            };
            let secret = self.secret(&format!("{path}.key"), prev.key.as_ref());
            if secret.expose().is_empty() {
                continue;
            }
            key = match key.with_previous(&pid, &secret) {
                Ok(k) => k,
                Err(e) => {
                    self.issue(&format!("{path}.key"), &e.to_string());
                    return None;
                }
            };
        }
        Some(key)
    }
}

/// Checks a config file and returns every problem (empty when it is valid).
pub fn check(path: &Path, env: &dyn Env) -> Vec<ConfigIssue> {
    match Config::load(path, env) {
        Ok(_) => Vec::new(),
        Err(ConfigError(issues)) => issues,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
