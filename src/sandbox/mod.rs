//! A fake SP-API and LWA token endpoint for `spgate demo` and the tests.
//!
//! [`Sandbox`] answers the way Amazon does where it matters to a gateway:
//!
//! - `POST /auth/o2/token` is a Login-with-Amazon token endpoint (refresh-token, client-credentials
//!   and authorization-code grants, LWA's error shape, outages on demand).
//! - Every other path is routed with [`Catalog::builtin`]. Calls need an access token, grantless
//!   token or Restricted Data Token the sandbox issued, and are throttled per usage plan.
//! - Responses come from, in order: a [`Script`] set by a test, the static `x-amzn-api-sandbox`
//!   examples from Amazon's models (`fixtures/sandbox-examples.json`), the dynamic handlers
//!   (`createRestrictedDataToken`, a synthetic order book per seller, and the report documents
//!   of `fixtures/documents/` listed in [`FIXTURE_DOCUMENTS`]), else `400 InvalidInput`.
//! - `GET /_sandbox/stats` returns [`Stats`] as JSON for out-of-process users;
//!   `POST /_sandbox/rotate-token-secrets` forgets every token issued
//!   ([`Sandbox::rotate_token_secrets`]).
//!
//! Every clock is [`tokio::time::Instant`], so tests can pause and advance time.
//!
//! The sandbox never logs tokens, secrets, query strings or bodies, and the `Debug` output of its
//! types redacts tokens and secrets.

mod body;
mod examples;
mod fixtures;
mod lwa;
mod orders;
mod quota;
mod rdt;
mod script;
mod seller_scope;
mod tokens;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::catalog::{Catalog, Operation, UsagePlan};
use crate::spapi::{self, ErrorBody};

pub use body::{BodyError, BoxBody};
pub use fixtures::{FixtureDocument, FIXTURE_DOCUMENTS};
pub use script::{Script, ScriptBody};
pub use tokens::TokenKind;

use body::ReadBody;
use tokens::{Lookup, TokenStore};

/// How many requests [`Sandbox::received`] keeps per operation (the most recent ones).
pub const RECEIVED_PER_OPERATION: usize = 10_000;

/// The LWA token endpoint's path.
const LWA_PATH: &str = "/auth/o2/token";
/// The stats endpoint's path.
const STATS_PATH: &str = "/_sandbox/stats";
/// `POST` here is [`Sandbox::rotate_token_secrets`], for a sandbox in another process.
pub const ROTATE_TOKENS_PATH: &str = "/_sandbox/rotate-token-secrets";
/// Where report documents download from (`<prefix><seller>`), standing in for S3.
const DOCUMENTS_PATH: &str = "/_sandbox/documents/";
/// A synthetic shipping label (an opaque PDF with a synthetic buyer's address), served like a
/// presigned URL: for tests of buyer-document links.
pub const LABEL_PATH: &str = "/_sandbox/files/label.pdf";
/// The synthetic buyer name printed on [`LABEL_PATH`]'s label.
pub const LABEL_BUYER: &str = "Jane Label-Synthetic";
/// How long [`Sandbox::serve`] waits for open connections after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The usage plan Amazon's sandbox applies to every operation.
const AMAZON_SANDBOX_PLAN: UsagePlan = UsagePlan {
    rate_per_second: 5.0,
    burst: 15,
};

/// How the sandbox is set up.
#[derive(Clone)]
pub struct SandboxConfig {
    /// LWA client (client_id, client_secret) pairs the fake LWA accepts; several allowed (secret rotation).
    pub lwa_clients: Vec<(String, String)>,
    /// Lifetime of access tokens, grantless tokens and RDTs it issues (`expires_in` / `expiresIn`).
    pub access_token_ttl: Duration,
    /// Usage-plan enforcement.
    pub quotas: QuotaMode,
    /// When true, restricted operations (op.restricted) reject plain access tokens with 403 and require an RDT.
    pub require_rdt: bool,
    /// When true, the LWA accepts any refresh token starting with "Atzr|" (seller id derived from
    /// it: "A" + 12 uppercase hex chars of its SHA-256); for `spgate sandbox` standalone and benchmarks.
    pub open_enrollment: bool,
}

impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client_ids: Vec<&str> = self.lwa_clients.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SandboxConfig")
            .field("lwa_client_ids", &client_ids)
            .field("lwa_client_secrets", &"<redacted>")
            .field("access_token_ttl", &self.access_token_ttl)
            .field("quotas", &self.quotas)
            .field("require_rdt", &self.require_rdt)
            .field("open_enrollment", &self.open_enrollment)
            .finish()
    }
}

/// Which bucket a throttled request found empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    /// The seller's (or the client's, for grantless calls).
    Seller,
    /// The application-wide one.
    Application,
}

/// Usage-plan enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// Each operation's published usage plan; operations without a plan are unlimited.
    Catalog,
    /// Amazon's sandbox limit for every operation: 5 requests per second, burst 15.
    AmazonSandbox,
    /// No throttling.
    Off,
}

/// Counters since the sandbox was created. Also served as JSON at `GET /_sandbox/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// SP-API requests (everything except the LWA endpoint and `/_sandbox/*`), including ones
    /// that were rejected or matched no operation.
    pub requests_total: u64,
    /// SP-API requests per operation key, counted once routed (before authorization).
    pub by_operation: BTreeMap<String, u64>,
    /// Requests answered with `429 QuotaExceeded`.
    pub throttled_total: u64,
    /// Of those, requests that found the application-wide bucket (all sellers) empty.
    #[serde(default)]
    pub app_throttled_total: u64,
    /// Requests answered with `403 Unauthorized` because of their token.
    pub unauthorized_total: u64,
    /// Successful `refresh_token` grants.
    pub lwa_refresh_grants: u64,
    /// Successful `client_credentials` (grantless) grants.
    pub lwa_client_credentials_grants: u64,
    /// Successful `authorization_code` grants.
    pub lwa_authorization_code_grants: u64,
    /// LWA requests answered with an error (including outages).
    pub lwa_errors: u64,
    /// Restricted Data Tokens issued by the dynamic `createRestrictedDataToken` handler.
    pub rdts_issued: u64,
}

/// One authorized SP-API request as the sandbox received it (recorded before quota checks, so
/// throttled attempts are included).
#[derive(Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: Method,
    /// Path and query string exactly as sent.
    pub path_and_query: String,
    /// Request headers, including the token header (redacted in `Debug`).
    pub headers: HeaderMap,
    /// Request body size in bytes (bodies are counted, never kept).
    pub body_bytes: u64,
    /// Which kind of token authorized it.
    pub token_kind: TokenKind,
    /// The selling partner the token belongs to; `None` for grantless tokens.
    pub seller: Option<String>,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if is_sensitive_header(name) {
                    "<redacted>"
                } else {
                    value.to_str().unwrap_or("<binary>")
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("Received")
            .field("at", &self.at)
            .field("method", &self.method)
            .field("path", &self.path_and_query.split('?').next().unwrap_or(""))
            .field("headers", &headers)
            .field("body_bytes", &self.body_bytes)
            .field("token_kind", &self.token_kind)
            .field("seller", &self.seller)
            .finish()
    }
}

/// Headers whose values are never shown in `Debug` output.
fn is_sensitive_header(name: &HeaderName) -> bool {
    name == spapi::ACCESS_TOKEN
        || name == http::header::AUTHORIZATION
        || name == http::header::COOKIE
        || name.as_str() == "x-amz-security-token"
}

/// A fake SP-API and LWA. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

/// The shared state behind [`Sandbox`]. Each lock is held only for short, non-async sections.
struct Inner {
    config: SandboxConfig,
    lwa_down: AtomicBool,
    lwa: Mutex<LwaState>,
    tokens: Mutex<TokenStore>,
    quotas: Mutex<quota::Quotas>,
    scripts: Mutex<HashMap<String, Script>>,
    received: Mutex<HashMap<String, VecDeque<Received>>>,
    stats: Mutex<Stats>,
    /// Midnight (UTC) of the day the sandbox was created; synthetic order dates count back from it.
    order_anchor: time::OffsetDateTime,
    /// The rate Amazon granted this application (see [`Sandbox::grant_rate`]), as f64 bits; 0 for
    /// the published plans.
    granted_rate: AtomicU64,
}

/// What the fake LWA knows about sellers and their grants.
#[derive(Default)]
struct LwaState {
    /// Refresh token -> selling partner id.
    sellers: HashMap<String, String>,
    /// Refresh tokens that were revoked (checked before open enrollment).
    revoked: HashSet<String>,
    /// Authorization code -> (selling partner id, refresh token); removed when used.
    codes: HashMap<String, (String, String)>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the sandbox's state
/// stays consistent between statements, so the data is still usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .field("lwa_down", &self.inner.lwa_down.load(Ordering::Relaxed))
            .field("tokens_issued", &lock(&self.inner.tokens).len())
            .finish_non_exhaustive()
    }
}

// === impl Sandbox ===

impl Sandbox {
    /// A sandbox with no sellers, no scripts and full quota buckets.
    pub fn new(config: SandboxConfig) -> Sandbox {
        let now = time::OffsetDateTime::now_utc();
        let order_anchor = now.replace_time(time::Time::MIDNIGHT);
        Sandbox {
            inner: Arc::new(Inner {
                config,
                lwa_down: AtomicBool::new(false),
                lwa: Mutex::new(LwaState::default()),
                tokens: Mutex::new(TokenStore::default()),
                quotas: Mutex::new(quota::Quotas::default()),
                scripts: Mutex::new(HashMap::new()),
                received: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
                order_anchor,
                granted_rate: AtomicU64::new(0),
            }),
        }
    }

    /// Acts as if Amazon had raised every usage plan's rate to `rate_per_second` for this
    /// application (Amazon grants higher plans on request and reports them in
    /// `x-amzn-RateLimit-Limit`): answers report it, and `QuotaMode::Catalog` enforces it (bursts
    /// stay as published). Ignored unless positive and finite.
    pub fn grant_rate(&self, rate_per_second: f64) {
        if rate_per_second.is_finite() && rate_per_second > 0.0 {
            self.inner
                .granted_rate
                .store(rate_per_second.to_bits(), Ordering::Relaxed);
        }
    }

    /// The ids of a seller's synthetic orders, newest first (the same for every sandbox).
    pub fn synthetic_order_ids(selling_partner_id: &str) -> Vec<String> {
        orders::order_ids(selling_partner_id)
    }

    /// The seller id open enrollment gives a refresh token (`A` + 12 hex digits of its SHA-256).
    pub fn open_enrollment_seller(refresh_token: &str) -> String {
        lwa::open_enrollment_seller(refresh_token)
    }

    /// Registers a seller: the `refresh_token` grant with this refresh token yields access tokens
    /// for `selling_partner_id`. Re-adding a revoked refresh token makes it valid again.
    pub fn add_seller(&self, selling_partner_id: &str, refresh_token: &str) {
        let mut lwa = lock(&self.inner.lwa);
        lwa.revoked.remove(refresh_token);
        lwa.sellers
            .insert(refresh_token.to_owned(), selling_partner_id.to_owned());
    }

    /// Revokes a refresh token: later `refresh_token` grants with it fail with `400 invalid_grant`.
    /// Access tokens already issued stay valid until they expire, as with Amazon.
    pub fn revoke_refresh_token(&self, refresh_token: &str) {
        let mut lwa = lock(&self.inner.lwa);
        lwa.sellers.remove(refresh_token);
        lwa.revoked.insert(refresh_token.to_owned());
    }

    /// Registers a single-use authorization code (`spapi_oauth_code`). The `authorization_code`
    /// grant with it returns `refresh_token` and registers the seller.
    pub fn add_authorization_code(
        &self,
        code: &str,
        selling_partner_id: &str,
        refresh_token: &str,
    ) {
        lock(&self.inner.lwa).codes.insert(
            code.to_owned(),
            (selling_partner_id.to_owned(), refresh_token.to_owned()),
        );
    }

    /// While `down` is true, the LWA endpoint answers `503`.
    pub fn set_lwa_down(&self, down: bool) {
        self.inner.lwa_down.store(down, Ordering::SeqCst);
    }

    /// Makes every access token, grantless token and RDT issued so far expire now.
    pub fn expire_access_tokens(&self) {
        lock(&self.inner.tokens).expire_all(Instant::now());
    }

    /// Forgets every access token, grantless token and RDT issued so far, as a sandbox
    /// restarted with new token secrets would (and as Amazon does when it loses tokens): a
    /// request with one gets 403 `Unauthorized` with empty details, not "expired". Refresh
    /// tokens stay valid, so LWA issues new access tokens as before.
    pub fn rotate_token_secrets(&self) {
        lock(&self.inner.tokens).forget_all();
    }

    /// Overrides responses for an operation (by catalog key) until [`Sandbox::clear_scripts`],
    /// or for the next `n` requests with `times: Some(n)`. Scripts apply after authorization and
    /// quota checks. A later script for the same operation replaces an earlier one.
    pub fn script(&self, op_key: &str, script: Script) {
        lock(&self.inner.scripts).insert(op_key.to_owned(), script);
    }

    /// Removes every script.
    pub fn clear_scripts(&self) {
        lock(&self.inner.scripts).clear();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
    }

    /// The most recent [`RECEIVED_PER_OPERATION`] authorized requests for an operation, oldest first.
    pub fn received(&self, op_key: &str) -> Vec<Received> {
        lock(&self.inner.received)
            .get(op_key)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers one request, without a socket. The request body is streamed and counted; at most
    /// 1 MiB of it is kept (for body matching), the rest is drained.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let read = match body::read(body).await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(%error, "sandbox: request body could not be read");
                return spapi_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    "The request body could not be read.",
                );
            }
        };
        let path = parts.uri.path();
        if path == LWA_PATH && parts.method == Method::POST {
            return lwa::handle(&self.inner, &parts.headers, &read);
        }
        if path == STATS_PATH && parts.method == Method::GET {
            let stats = serde_json::to_vec(&self.stats()).unwrap_or_default();
            return json_response(StatusCode::OK, body::full(stats), None);
        }
        if path == ROTATE_TOKENS_PATH && parts.method == Method::POST {
            self.rotate_token_secrets();
            return json_response(StatusCode::OK, body::full("{}"), None);
        }
        if path == LABEL_PATH && parts.method == Method::GET {
            let pdf = format!("%PDF-1.7\n% Ship to: {LABEL_BUYER}, 1 Synthetic Way\n%%EOF\n");
            let mut resp = Response::new(body::full(pdf));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/pdf"));
            return resp;
        }
        if let (Some(seller), &Method::GET) = (path.strip_prefix(DOCUMENTS_PATH), &parts.method) {
            // Like an S3 presigned URL: no SP-API token, the URL itself is the credential.
            return self.inner.orders_document(seller);
        }
        if let (Some(id), &Method::GET) =
            (path.strip_prefix(fixtures::FIXTURES_PATH), &parts.method)
        {
            return match fixtures::by_id(id) {
                Some(doc) if doc.gzip => gzipped(doc.bytes, doc.content_type),
                Some(doc) => {
                    let mut resp = Response::new(body::full(doc.bytes));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(doc.content_type));
                    resp
                }
                None => spapi_error(StatusCode::NOT_FOUND, "NotFound", "No such document."),
            };
        }
        self.inner.spapi(&parts, read).await
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until `shutdown` completes, then stops
    /// accepting, lets open requests finish (up to 5 s) and closes the remaining connections.
    ///
    /// There is deliberately no header-read or idle timeout: under a paused tokio clock such a
    /// timer fires as soon as the runtime idles, closing keep-alive connections under clients.
    ///
    /// Accept errors (e.g. too many open files) are logged and retried, so this returns `Ok`
    /// once shut down.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut connections = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, "sandbox: could not set TCP_NODELAY");
                        }
                        let sandbox = self.clone();
                        let service = hyper::service::service_fn(move |req| {
                            let sandbox = sandbox.clone();
                            async move { Ok::<_, Infallible>(sandbox.handle(req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service);
                        let watched = graceful.watch(conn);
                        connections.spawn(async move {
                            if let Err(error) = watched.await {
                                tracing::debug!(%error, "sandbox: connection ended with an error");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sandbox: accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
            // Reap finished connection tasks so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("sandbox: connections still open after the grace period; closing");
        }
        connections.shutdown().await;
        Ok(())
    }
}

/// Who a token belongs to and what it grants, once it has been accepted for a request.
struct Caller {
    kind: TokenKind,
    seller: Option<String>,
    client_id: String,
    /// For RDTs: the union of `dataElements` of the resources covering this request.
    grants: orders::PiiGrants,
}

/// Why a request's token was refused.
enum Denied {
    /// No token, an unknown one, or one not valid for this operation.
    Unauthorized,
    /// A token the sandbox issued that has expired.
    Expired,
}

// === impl Inner ===

impl Inner {
    /// The rate set by [`Sandbox::grant_rate`], if any.
    fn granted_rate(&self) -> Option<f64> {
        let bits = self.granted_rate.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    fn stat(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    async fn spapi(&self, parts: &http::request::Parts, read: ReadBody) -> Response<BoxBody> {
        self.stat(|s| s.requests_total += 1);
        let catalog = Catalog::builtin();
        let path = parts.uri.path();
        let (op, params) = match catalog.route(&parts.method, path) {
            Some(route) => (route.operation, route.params),
            None => match examples::extra_route(&parts.method, path) {
                Some(found) => found,
                None => {
                    return spapi_error(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "The requested resource was not found.",
                    )
                }
            },
        };
        self.stat(|s| match s.by_operation.get_mut(op.key) {
            Some(count) => *count += 1,
            None => {
                s.by_operation.insert(op.key.to_owned(), 1);
            }
        });

        let caller = match self.authorize(op, &parts.method, path, &parts.headers) {
            Ok(caller) => caller,
            Err(denied) => {
                self.stat(|s| s.unauthorized_total += 1);
                tracing::debug!(op = op.key, "sandbox: unauthorized");
                let details = match denied {
                    Denied::Unauthorized => "",
                    Denied::Expired => "The access token you provided has expired.",
                };
                return spapi_error_details(
                    StatusCode::FORBIDDEN,
                    "Unauthorized",
                    "Access to requested resource is denied.",
                    details,
                );
            }
        };
        self.record(op, parts, &read, &caller);
        if let Some(resp) = seller_scope::answer(self, op, &params, caller.seller.as_deref()) {
            return resp;
        }

        if let Err(quota) = self.take_quota(op, &caller, parts.uri.query()) {
            self.stat(|s| {
                s.throttled_total += 1;
                if quota == Quota::Application {
                    s.app_throttled_total += 1;
                }
            });
            tracing::debug!(op = op.key, "sandbox: throttled");
            return spapi_error(
                StatusCode::TOO_MANY_REQUESTS,
                "QuotaExceeded",
                "You exceeded your quota for the requested resource.",
            );
        }

        if let Some(script) = self.take_script(op.key) {
            if !script.header_delay.is_zero() {
                tokio::time::sleep(script.header_delay).await;
            }
            return script::respond(&script, op);
        }

        let query = parse_query(parts.uri.query());
        let body_json = read.json();
        let request = examples::RequestView {
            params: &params,
            query: &query,
            body: body_json.as_ref(),
        };
        if let Some(example) = examples::find(op.key, &request) {
            tracing::debug!(
                op = op.key,
                example = example.index,
                "sandbox: static example"
            );
            return json_response(
                example.status,
                body::full(example.response.clone()),
                Some(op),
            );
        }

        let reply = match op.key {
            rdt::OPERATION => Some(self.create_rdt(&caller, body_json.as_ref())),
            "reports_2021-06-30.getReportDocument" => {
                let id = params
                    .iter()
                    .find(|(k, _)| *k == "reportDocumentId")
                    .map(|(_, v)| v.as_str());
                match (
                    id,
                    caller.seller.as_deref(),
                    parts.headers.get(http::header::HOST),
                ) {
                    (Some(orders::ORDERS_DOCUMENT_ID), Some(seller), Some(host)) => {
                        let host = host.to_str().unwrap_or("localhost");
                        Some(Reply::json(
                            StatusCode::OK,
                            &serde_json::json!({
                                "reportDocumentId": orders::ORDERS_DOCUMENT_ID,
                                "url": format!("http://{host}{DOCUMENTS_PATH}{seller}"),
                                "compressionAlgorithm": "GZIP",
                            }),
                        ))
                    }
                    (Some(id), Some(_), Some(host)) => fixtures::by_id(id).map(|doc| {
                        let host = host.to_str().unwrap_or("localhost");
                        let mut answer = serde_json::json!({
                            "reportDocumentId": doc.id,
                            "url": format!("http://{host}{}{}", fixtures::FIXTURES_PATH, doc.id),
                        });
                        if doc.gzip {
                            answer["compressionAlgorithm"] = "GZIP".into();
                        }
                        Reply::json(StatusCode::OK, &answer)
                    }),
                    _ => None,
                }
            }
            _ => caller.seller.as_deref().and_then(|seller| {
                orders::handle(
                    op.key,
                    &orders::OrdersRequest {
                        seller,
                        anchor: self.order_anchor,
                        params: &params,
                        query: &query,
                        grants: caller.grants,
                    },
                )
            }),
        };
        match reply {
            Some(reply) => {
                let mut response = json_response(reply.status, body::full(reply.body), Some(op));
                if let Some(rate) = self.granted_rate() {
                    if let Some(limit) = response.headers_mut().get_mut(spapi::RATE_LIMIT_LIMIT) {
                        if let Ok(value) = HeaderValue::from_str(&rate.to_string()) {
                            *limit = value;
                        }
                    }
                }
                response
            }
            None => spapi_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "No sandbox example matches this request.",
            ),
        }
    }

    /// Checks the request's token against the operation (grantless scope, RDT coverage).
    fn authorize(
        &self,
        op: &Operation,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, Denied> {
        let token = headers
            .get(spapi::ACCESS_TOKEN)
            .and_then(|v| v.to_str().ok())
            .ok_or(Denied::Unauthorized)?;
        let tokens = lock(&self.tokens);
        let record = match tokens.lookup(token, Instant::now()) {
            Lookup::Valid(record) => record,
            Lookup::Expired => return Err(Denied::Expired),
            Lookup::Unknown => return Err(Denied::Unauthorized),
        };
        let mut grants = orders::PiiGrants::default();
        match (op.grantless_scope, record.kind) {
            (Some(scope), TokenKind::Grantless) => {
                if record.scope.as_deref() != Some(scope) {
                    return Err(Denied::Unauthorized);
                }
            }
            (Some(_), TokenKind::Access | TokenKind::Rdt) | (None, TokenKind::Grantless) => {
                return Err(Denied::Unauthorized)
            }
            (None, TokenKind::Access) => {
                // Like Amazon, the operations that take `dataElements` answer a plain token
                // too, just without buyer PII; the other restricted ones demand an RDT.
                let pii_optional = op.model == "ordersV0"
                    && matches!(op.operation_id, "getOrders" | "getOrder" | "getOrderItems");
                if op.restricted && self.config.require_rdt && !pii_optional {
                    return Err(Denied::Unauthorized);
                }
            }
            (None, TokenKind::Rdt) => {
                let mut covered = false;
                for resource in record.resources.iter().filter(|r| r.covers(method, path)) {
                    covered = true;
                    grants = grants.union(resource.grants);
                }
                if !covered {
                    return Err(Denied::Unauthorized);
                }
            }
        }
        Ok(Caller {
            kind: record.kind,
            seller: record.seller.clone(),
            client_id: record.client_id.clone(),
            grants,
        })
    }

    fn record(
        &self,
        op: &Operation,
        parts: &http::request::Parts,
        read: &ReadBody,
        caller: &Caller,
    ) {
        let received = Received {
            at: Instant::now(),
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_else(|| parts.uri.path().to_owned()),
            headers: parts.headers.clone(),
            body_bytes: read.total,
            token_kind: caller.kind,
            seller: caller.seller.clone(),
        };
        let mut all = lock(&self.received);
        let queue = all.entry(op.key.to_owned()).or_default();
        if queue.len() >= RECEIVED_PER_OPERATION {
            queue.pop_front();
        }
        queue.push_back(received);
    }

    /// Takes one token from the caller's bucket for this operation and, where Amazon has one,
    /// from the application-wide bucket (and the sub-limit of the call's kind); none when one
    /// of them is empty.
    fn take_quota(
        &self,
        op: &Operation,
        caller: &Caller,
        query: Option<&str>,
    ) -> Result<(), Quota> {
        let plan = match self.config.quotas {
            QuotaMode::Off => None,
            QuotaMode::Catalog => op.usage_plan.map(|plan| match self.granted_rate() {
                Some(rate) => UsagePlan {
                    rate_per_second: rate,
                    ..plan
                },
                None => plan,
            }),
            QuotaMode::AmazonSandbox => Some(AMAZON_SANDBOX_PLAN),
        };
        let Some(plan) = plan else {
            return Ok(());
        };
        let subject = match (&caller.seller, caller.kind) {
            (Some(seller), TokenKind::Access | TokenKind::Rdt) => quota::Subject::Seller(seller),
            _ => quota::Subject::Client(&caller.client_id),
        };
        let mut buckets = vec![(subject, op.key, plan)];
        if self.config.quotas == QuotaMode::Catalog {
            let app = quota::Subject::Application(&caller.client_id, None);
            buckets.extend(op.app_plan.map(|p| (app, op.key, p)));
            if let Some(kind) = crate::catalog::kind_from_query(query) {
                let sub = quota::Subject::Application(&caller.client_id, Some(kind));
                buckets.extend(op.app_sub_limit(kind).map(|p| (sub, op.key, p)));
            }
        }
        match lock(&self.quotas).take_all(&buckets, Instant::now()) {
            None => Ok(()),
            Some(0) => Err(Quota::Seller),
            Some(_) => Err(Quota::Application),
        }
    }

    /// The active script for an operation, counting down `times`.
    fn take_script(&self, op_key: &str) -> Option<Script> {
        let mut scripts = lock(&self.scripts);
        let script = scripts.get_mut(op_key)?;
        match script.times {
            None => Some(script.clone()),
            Some(0) => {
                scripts.remove(op_key);
                None
            }
            Some(n) => {
                script.times = Some(n - 1);
                let out = script.clone();
                if n == 1 {
                    scripts.remove(op_key);
                }
                Some(out)
            }
        }
    }

    /// The gzip-compressed synthetic orders flat file of a seller.
    fn orders_document(&self, seller: &str) -> Response<BoxBody> {
        let text = orders::orders_document(seller, self.order_anchor);
        gzipped(text.as_bytes(), "application/octet-stream")
    }

    fn create_rdt(&self, caller: &Caller, body: Option<&serde_json::Value>) -> Reply {
        let resources = match rdt::parse_request(body) {
            Ok(resources) => resources,
            Err(message) => return Reply::error(StatusCode::BAD_REQUEST, "InvalidInput", message),
        };
        let ttl = self.config.access_token_ttl;
        let issued = lock(&self.tokens).issue(tokens::TokenRecord {
            kind: TokenKind::Rdt,
            seller: caller.seller.clone(),
            client_id: caller.client_id.clone(),
            scope: None,
            expires_at: Instant::now() + ttl,
            resources,
        });
        match issued {
            Ok(token) => {
                self.stat(|s| s.rdts_issued += 1);
                Reply::json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "restrictedDataToken": token,
                        "expiresIn": ttl.as_secs(),
                    }),
                )
            }
            Err(_) => Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "The sandbox could not generate a token.",
            ),
        }
    }
}

/// A status and JSON body from a dynamic handler.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    fn error(status: StatusCode, code: &str, message: &str) -> Reply {
        Reply {
            status,
            body: ErrorBody::one(code, message, "").to_bytes(),
        }
    }
}

/// Decoded query pairs in request order (repeated keys kept).
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh `x-amzn-RequestId` value.
fn request_id_header() -> HeaderValue {
    HeaderValue::from_str(&tokens::request_id())
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000"))
}

/// An SP-API response: JSON content type, a fresh request id, and for 2xx answers to operations
/// with a usage plan, `x-amzn-RateLimit-Limit`.
fn json_response(status: StatusCode, body: BoxBody, op: Option<&Operation>) -> Response<BoxBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        HeaderName::from_static(spapi::REQUEST_ID),
        request_id_header(),
    );
    if status.is_success() {
        if let Some(plan) = op.and_then(|op| op.usage_plan) {
            if let Ok(value) = HeaderValue::from_str(&plan.rate_per_second.to_string()) {
                headers.insert(HeaderName::from_static(spapi::RATE_LIMIT_LIMIT), value);
            }
        }
    }
    response
}

/// An SP-API error response (`{"errors":[...]}`) with an empty `details`.
/// A download of `bytes` gzip-compressed, as S3 serves a report whose document says
/// `compressionAlgorithm: GZIP`.
fn gzipped(bytes: &[u8], content_type: &'static str) -> Response<BoxBody> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    match gz.write_all(bytes).and_then(|_| gz.finish()) {
        Ok(zipped) => {
            let mut resp = Response::new(body::full(zipped));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        Err(_) => spapi_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The sandbox could not compress the document.",
        ),
    }
}

fn spapi_error(status: StatusCode, code: &str, message: &str) -> Response<BoxBody> {
    spapi_error_details(status, code, message, "")
}

/// An SP-API error response with `details`.
fn spapi_error_details(
    status: StatusCode,
    code: &str,
    message: &str,
    details: &str,
) -> Response<BoxBody> {
    let body = ErrorBody::one(code, message, details).to_bytes();
    json_response(status, body::full(body), None)
}
