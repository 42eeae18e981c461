//! The request path, written once: every SP-API request goes through [`Gateway::handle`].
//!
//! Phases, in order (each is one line of [`Gateway::pipeline`]):
//! 1. accept: header and body limits, unambiguous framing;
//! 2. caller: the API key names the tool, its role and its sellers;
//! 3. route: method + path -> the catalogued SP-API operation (404 otherwise);
//! 4. authorize: the tool may act for the named seller, which is onboarded and authorized;
//! 5. credentials: the seller's LWA access token, a grantless token, or a Restricted Data
//!    Token asking only for what the role may receive (cached, single-flight);
//! 6. rate limit: a token of Amazon's bucket for (seller, operation) and of the tool's plan,
//!    waiting up to the deadline, else 429 `QuotaExceeded` with `Retry-After`; taken last so
//!    nothing slow sits between the decision and the arrival at Amazon;
//! 7. upstream: the seller's region endpoint, streamed both ways, under timeouts; Amazon's
//!    `x-amzn-RateLimit-Limit` and 429s feed back into the limiter; bodiless requests are
//!    retried once after 401/403 and, if idempotent, after 429/5xx within the deadline;
//! 8. respond: the PII policy, then the header allowlist (Amazon's request id and rate limit
//!    pass back, see [`headers`]); the gateway's own headers are added after it.
//!
//! Errors from every phase meet in [`rescue::rescue`], the only error-to-response map.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Uri};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;

use crate::auth::caller::{self, Caller};
use crate::auth::drop_in;
use crate::auth::lwa::{Grant, Lwa, LwaError, Subject};
use crate::auth::onboarding::{self, Onboarding, OnboardingError};
use crate::auth::rdt::{self, Need, RdtError, RdtKey, Rdts};
use crate::catalog::{Catalog, Operation};
use crate::config::Endpoints;
use crate::config::OnboardingConfig;
use crate::crypto::MasterKey;
use crate::pii::Role;
use crate::pii::Roles;
use crate::ratelimit::config::Plans;
use crate::ratelimit::{Acquire, Limiter, Priority};
use crate::secret::Secret;
use crate::store::{SellerRecord, SellerStatus, Store};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

mod accounting;
pub mod body;
pub mod documents;
pub mod error_body;
pub mod headers;
pub mod outbound;
pub mod pii_gate;
pub mod rescue;
pub mod reveal;
pub mod sigv4;
pub mod upstream;

use body::{Body, BoxError, Limited};
use rescue::ProxyError;
use upstream::{Upstream, UpstreamError};

/// Request limits applied in the accept phase.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest total of header names and values.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_request_body_bytes: u64,
    /// Deadline for a body the gateway reads itself (token, reveal, admin routes).
    pub body_read_timeout: std::time::Duration,
}

/// Everything the pipeline needs, built once at startup.
pub struct Gateway {
    limiter: Limiter,
    tool_plans: std::sync::RwLock<Arc<BTreeMap<String, String>>>,
    client_pins: std::sync::RwLock<Arc<crate::server::tls::ClientPins>>,
    retry: RetryPolicy,
    signer: Option<sigv4::Signer>,
    onboarding: Option<OnboardingConfig>,
    roles: Roles,
    rdts: Rdts,
    catalog: &'static Catalog,
    store: Arc<dyn Store>,
    master_key: Arc<MasterKey>,
    lwa: Lwa,
    upstream: Upstream,
    endpoints: Endpoints,
    limits: Limits,
    request_ids: RequestIds,
    pii: crate::config::PiiSettings,
    vault: crate::vault::Vault,
    auditor: crate::audit::Auditor,
    outbound: outbound::Fetcher,
    header_drops: headers::Dropped,
    drain: accounting::Drain,
    pii_gate: pii_gate::Gate,
}

/// The parts of a gateway, for [`Gateway::new`].
pub struct GatewayParts {
    /// Where clients and sellers live.
    pub store: Arc<dyn Store>,
    /// Opens sealed refresh tokens.
    pub master_key: Arc<MasterKey>,
    /// LWA token client.
    pub lwa: Lwa,
    /// SP-API client.
    pub upstream: Upstream,
    /// Endpoint per region.
    pub endpoints: Endpoints,
    /// Request limits.
    pub limits: Limits,
    /// Tool roles (what buyer PII each may receive).
    pub roles: Roles,
    /// Restricted Data Token client.
    pub rdts: Rdts,
    /// The seller authorization workflow, if configured.
    pub onboarding: Option<OnboardingConfig>,
    /// SigV4 credentials, when signing is enabled.
    pub sigv4: Option<crate::config::SigV4Config>,
    /// The rate limiter.
    pub limiter: Limiter,
    /// Rate plan per tool name.
    pub tool_plans: BTreeMap<String, String>,
    /// Client-certificate pins per tool (`client_cert_spki_sha256`).
    pub client_pins: crate::server::tls::ClientPins,
    /// Retries of idempotent requests.
    pub retry: RetryPolicy,
    /// Handling of responses with buyer PII.
    pub pii: crate::config::PiiSettings,
    /// Per-order data keys, PII cache and retention.
    pub vault: crate::vault::Vault,
    /// The audit log.
    pub auditor: crate::audit::Auditor,
    /// Document downloads under the outbound policy.
    pub outbound: outbound::Fetcher,
}

/// The token a request is sent upstream with, and where it came from (to forget it if Amazon
/// rejects it).
enum Credential {
    /// An LWA access token (seller or grantless).
    Access(Subject, Secret<String>),
    /// A Restricted Data Token, and the access token it was obtained with.
    Rdt(RdtKey, Secret<String>, Subject, Secret<String>),
}

impl Credential {
    fn token(&self) -> &Secret<String> {
        match self {
            Credential::Access(_, t) | Credential::Rdt(_, t, _, _) => t,
        }
    }

    fn kind(&self) -> TokenKind {
        match self {
            Credential::Access(Subject::Grantless(_), _) => TokenKind::Grantless,
            Credential::Access(Subject::Seller(_), _) => TokenKind::Lwa,
            Credential::Rdt(..) => TokenKind::Rdt,
        }
    }
}

/// A routed operation and its path parameters.
type Route = (&'static Operation, Vec<(&'static str, String)>);

/// Per-request facts gathered by the phases, for the response and the audit record. Holds
/// names and ids only, never a PII value, token or secret.
#[derive(Default)]
struct Ctx {
    operation: Option<&'static Operation>,
    /// The calling tool and its role.
    tool: Option<String>,
    role: Option<String>,
    /// The seller acted for.
    seller: Option<String>,
    /// The limiter's decision for the (last) attempt.
    admission: Option<crate::ratelimit::Admission>,
    /// The kind of token the request went upstream with.
    token: Option<TokenKind>,
    /// Amazon's `x-amzn-RequestId`.
    upstream_request_id: Option<String>,
    /// Whether the response came from the PII cache.
    cache_hit: bool,
    /// The PII cache entry this response belongs to: (order id, cache key).
    cache: Option<(String, String)>,
    /// The gateway's own base URL as the caller reached it (for links it hands out).
    public_base: Option<String>,
    /// What the PII policy did (categories returned and their actions, safety-net hits).
    pii: Option<crate::pii::transform::Report>,
    /// Whether the request was sent upstream (besides `token`, set right before SP-API calls).
    upstream_called: bool,
    /// A report document being streamed: its id and what the redactor emits.
    document: Option<(String, Arc<accounting::Emitted>)>,
}

/// The kind of token a request was sent upstream with (audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The seller's LWA access token.
    Lwa,
    /// A Restricted Data Token.
    Rdt,
    /// An application (grantless) token.
    Grantless,
}

// === impl Gateway ===

impl Gateway {
    /// Builds the gateway.
    pub fn new(parts: GatewayParts) -> Gateway {
        Gateway {
            catalog: Catalog::builtin(),
            store: parts.store,
            master_key: parts.master_key,
            lwa: parts.lwa,
            upstream: parts.upstream,
            endpoints: parts.endpoints,
            limits: parts.limits,
            roles: parts.roles,
            rdts: parts.rdts,
            onboarding: parts.onboarding,
            signer: parts.sigv4.as_ref().map(sigv4::Signer::new),
            limiter: parts.limiter,
            tool_plans: std::sync::RwLock::new(Arc::new(parts.tool_plans)),
            client_pins: std::sync::RwLock::new(Arc::new(parts.client_pins)),
            retry: parts.retry,
            request_ids: RequestIds::new(),
            pii: parts.pii,
            vault: parts.vault,
            auditor: parts.auditor,
            outbound: parts.outbound,
            header_drops: headers::Dropped::default(),
            drain: accounting::Drain::new(),
            pii_gate: pii_gate::Gate::new(crate::pii::Classifier::builtin()),
        }
    }

    /// The gateway refusing by `classifier` instead of the built-in lists (tests plant a
    /// catalog/data mismatch this way).
    pub fn with_classifier(mut self, classifier: &'static crate::pii::Classifier) -> Gateway {
        self.pii_gate = pii_gate::Gate::new(classifier);
        self
    }

    /// The refusal of unclassified operations (its counter, for metrics).
    pub fn pii_gate(&self) -> &pii_gate::Gate {
        &self.pii_gate
    }

    /// Document downloads (refusal counters for metrics).
    pub fn outbound(&self) -> &outbound::Fetcher {
        &self.outbound
    }

    /// Headers dropped by the allowlists, per direction (metrics).
    pub fn header_drops(&self) -> &headers::Dropped {
        &self.header_drops
    }

    /// Cuts the requests still in flight when the shutdown drain times out and waits (up to
    /// `wait`) until each has been recorded (outcome `shutdown`): call before shutting the
    /// audit log down. Returns how many were still unrecorded after `wait`.
    pub async fn cut_in_flight(&self, wait: Duration) -> usize {
        self.auditor.begin_drain_cut();
        self.drain.cut();
        let until = Instant::now() + wait;
        while self.drain.in_flight() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.drain.in_flight()
    }

    /// The vault (per-order keys, PII cache, retention).
    pub fn vault(&self) -> &crate::vault::Vault {
        &self.vault
    }

    /// The audit log.
    pub fn auditor(&self) -> &crate::audit::Auditor {
        &self.auditor
    }

    /// The LWA client (its call counter is useful to tests and metrics).
    pub fn lwa(&self) -> &Lwa {
        &self.lwa
    }

    /// The deadline for a body the gateway reads itself (`server.body_read_timeout_ms`).
    pub fn body_read_timeout(&self) -> Duration {
        self.limits.body_read_timeout
    }

    /// The RDT client (its call counter is useful to tests and metrics).
    pub fn rdts(&self) -> &Rdts {
        &self.rdts
    }

    /// Handles one request from a seller tool. Never fails: errors become SP-API-shaped responses.
    ///
    /// Every request is recorded, however it ends (see [`accounting`]). While the audit log
    /// cannot be written, requests are refused by `audit.on_failure`; a response that carries
    /// buyer PII (and a reveal) is sent only once its record has been handed to the kernel.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut call = accounting::Call::new(self, self.request_ids.next(), req.method().clone());
        let span = tracing::info_span!("request", request_id = %call.request_id, method = %req.method(), operation = tracing::field::Empty);
        let reveal_path = req.uri().path() == reveal::PATH;
        let peer = req
            .extensions()
            .get::<crate::server::PeerAddr>()
            .map(|p| p.0.ip())
            .filter(|_| self.auditor.enabled());
        let result = if self.audit_refuses(&req) {
            Err(ProxyError::AuditUnavailable)
        } else {
            tokio::select! {
                r = tracing::Instrument::instrument(self.pipeline(req, &mut call.ctx), span.clone()) => r,
                () = self.drain.cut_signal() => Err(ProxyError::ShuttingDown),
            }
        };
        let ctx = &call.ctx;
        if let Some(op) = ctx.operation {
            span.record("operation", op.key);
        }
        if let Some(report) = &ctx.pii {
            let hits = report.net_hits.email + report.net_hits.phone;
            if hits > 0 {
                // Counted, never with the value.
                span.in_scope(|| {
                    tracing::info!(
                        email = report.net_hits.email,
                        phone = report.net_hits.phone,
                        "PII safety net: values outside the field map were withheld."
                    )
                });
            }
        }
        let reason = result.as_ref().err().map(audit_reason);
        if let (Some(ip), Some(r), None) = (peer, &reason, &ctx.tool) {
            if *r == crate::audit::Reason::UNAUTHENTICATED {
                // Aggregated per address and minute instead of one record each.
                self.auditor.noise().count(ip, "unauthenticated");
                call.recorded();
            }
        }
        let ctx = &call.ctx;
        let outcome = match &result {
            Err(ProxyError::ShuttingDown) => crate::audit::Outcome::Shutdown,
            Err(ProxyError::Upstream(UpstreamError::HeaderTimeout(_))) => {
                crate::audit::Outcome::Timeout
            }
            _ => crate::audit::Outcome::Answered,
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => span.in_scope(|| rescue::rescue(&err)),
        };
        let record = if call.is_recorded() {
            None
        } else {
            self.audit_request(
                &call.request_id,
                &call.method,
                ctx,
                reason,
                Some(resp.status()),
                call.started,
                outcome,
            )
        };
        let served = resp.status().is_success();
        let durable = served && (reveal_path || carries_pii(&call.ctx));
        // From here the record is in hand: dropping the future no longer loses it.
        call.recorded();
        match record {
            None => {}
            Some(r) if served && call.ctx.document.is_some() => {
                // Durable before the first byte goes out (a start record), and recorded
                // again when the stream ends: bytes, completion, categories emitted.
                let start = r
                    .clone()
                    .with_reason(crate::audit::Reason::from_static("download_started"));
                if self.auditor.record_durable(start).await.is_err() {
                    call.ctx.document = None;
                    return span.in_scope(|| rescue::rescue(&ProxyError::AuditUnavailable));
                }
                if let Some((_, emitted)) = call.ctx.document.take() {
                    resp = resp.map(|b| {
                        BodyExt::boxed(accounting::DocumentBody::new(
                            b,
                            r,
                            emitted,
                            self.auditor.clone(),
                            &self.drain,
                        ))
                    });
                }
            }
            // Not sent without its record.
            Some(r) if durable => match self.auditor.record_durable(r).await {
                Ok(()) => {}
                Err(_) => resp = span.in_scope(|| rescue::rescue(&ProxyError::AuditUnavailable)),
            },
            Some(r) => self.auditor.record(r),
        }
        if let Ok(v) = HeaderValue::from_str(&call.request_id) {
            resp.headers_mut().insert(headers::REQUEST_ID, v);
        }
        resp
    }

    /// Whether the request may return buyer PII: a catalogued operation with a PII map, a
    /// reveal or a document download (routing only, no authentication).
    fn may_carry_pii<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        path == reveal::PATH
            || path.starts_with(documents::PREFIX)
            || self
                .catalog
                .route(req.method(), path)
                .is_some_and(|r| r.operation.pii_map.is_some())
    }

    /// Whether the request is refused because the audit log cannot be written.
    fn audit_refuses<B>(&self, req: &Request<B>) -> bool {
        if !self.auditor.enabled() || self.auditor.available() {
            return false;
        }
        match self.auditor.on_failure() {
            crate::audit::OnFailure::Refuse => true,
            crate::audit::OnFailure::ServeNonPii => self.may_carry_pii(req),
        }
    }

    /// The audit record of one proxied request: who, for which seller, what, the outcome, and
    /// which PII categories left with which action. Ids and names only, never a value. `None`
    /// when the audit log is off.
    #[allow(clippy::too_many_arguments)]
    fn audit_request(
        &self,
        request_id: &str,
        method: &http::Method,
        ctx: &Ctx,
        reason: Option<crate::audit::Reason>,
        status: Option<http::StatusCode>,
        started: std::time::Instant,
        outcome: crate::audit::Outcome,
    ) -> Option<crate::audit::Record> {
        use crate::audit::record::{self as ar, Id, Name, Record, Template};
        if !self.auditor.enabled() {
            return None;
        }
        let mut r = Record::request(request_id);
        if let Some(op) = ctx.operation {
            r = r.with_operation(op);
        } else if let Some((id, _)) = &ctx.document {
            r.operation = Some(Id::lossy("documents.download"));
            r.method = Some(Name::lossy(method.as_str()));
            r.path = Some(Template::lossy("/v1/documents/{token}"));
            r.document_id = Some(Id::lossy(id));
        } else {
            r.method = Some(Name::lossy(method.as_str()));
        }
        if let Some(tool) = &ctx.tool {
            r = r.with_tool(tool);
        }
        if let Some(role) = &ctx.role {
            r = r.with_role(role);
        }
        if let Some(seller) = &ctx.seller {
            r = r.with_seller(seller);
        }
        r.status = status.map(|s| s.as_u16());
        r.outcome = Some(outcome);
        r.upstream_called = Some(ctx.upstream_called || ctx.token.is_some());
        r.latency_us = Some(started.elapsed().as_micros() as u64);
        r.reason = reason;
        r.limiter = match (&ctx.admission, status) {
            (Some(a), _) => Some(ar::Limiter {
                decision: match a.decision {
                    crate::ratelimit::Decision::Immediate => ar::Decision::Admitted,
                    crate::ratelimit::Decision::Waited => ar::Decision::Waited,
                },
                wait_ms: a.waited.as_millis() as u64,
            }),
            (None, Some(http::StatusCode::TOO_MANY_REQUESTS)) => Some(ar::Limiter {
                decision: ar::Decision::Rejected,
                wait_ms: 0,
            }),
            _ => None,
        };
        r.token = ctx.token.map(|t| match t {
            TokenKind::Lwa => ar::TokenKind::Lwa,
            TokenKind::Rdt => ar::TokenKind::Rdt,
            TokenKind::Grantless => ar::TokenKind::Grantless,
        });
        if let Some(report) = &ctx.pii {
            r.pii = report
                .returned
                .iter()
                .map(|(c, a)| ar::PiiUse {
                    category: *c,
                    action: *a,
                })
                .collect();
            let hits = report.net_hits.email + report.net_hits.phone;
            if hits > 0 {
                r.safety_net_hits = Some(hits as u32);
            }
        }
        r.upstream_request_id = ctx.upstream_request_id.as_deref().map(Id::lossy);
        Some(r)
    }

    async fn pipeline<B>(
        &self,
        req: Request<B>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let limit_tripped = self.accept(&req)?; // 1. limits and framing
        ctx.public_base = public_base(&req);
        match req.uri().path() {
            // Not SP-API calls: the drop-in LWA endpoint and the seller authorization workflow.
            drop_in::TOKEN_PATH => return self.drop_in_token(req).await,
            reveal::PATH => return self.reveal(req, ctx).await,
            p if p.starts_with(documents::PREFIX) => return self.document(req, ctx).await,
            onboarding::START_PATH | onboarding::CALLBACK_PATH => {
                return self.onboarding(&req).await
            }
            _ => {}
        }
        let caller =
            caller::authenticate_request(&*self.store, &self.client_pins(), &req, unix_now())
                .await?; // 2. caller
        ctx.tool = Some(caller.client.tool.clone());
        ctx.role = Some(caller.client.role.clone());
        let (op, params) = self.route(&req)?; // 3. route
        self.retry.budget.earn();
        ctx.operation = Some(op);
        if GATEWAY_OWN.contains(&op.key) {
            // A tool holding an RDT would read restricted data past the policy, the limiter and
            // the audit log; rotating the client secret would lock the gateway out.
            return Err(ProxyError::GatewayOwned);
        }
        self.pii_gate.check(op)?; // what the gateway does not know, it refuses
        let seller = self.authorize(&caller, op, req.headers()).await?; // 4. authorize
        ctx.seller = seller.as_ref().map(|s| s.selling_partner_id.clone());
        let role = self.roles.get(&caller.client.role);
        let replay = Replay::capture(&req);
        let seller = seller.as_ref();
        let path = req.uri().path().to_string();
        let bucket = seller.map_or(APPLICATION_BUCKET, |s| s.selling_partner_id.as_str());
        let wants = Wants::from_headers(req.headers())?;
        let deadline = Instant::now() + wants.max_wait.unwrap_or(self.retry.default_deadline);
        // The PII cache: a repeat read of one order's restricted data within the TTL spends no
        // Amazon quota; the role's policy still applies to the cached response.
        if let (Some(seller), Some(key)) = (seller, self.cache_key(op, role, &req, &params)) {
            if let Some(cached) = self
                .vault
                .cache_get(&seller.selling_partner_id, &key.1)
                .await?
            {
                ctx.cache_hit = true;
                let out = self
                    .apply_policy(&cached, op, role, Some(seller), &params, ctx)
                    .await?;
                let mut resp = Response::new(body::full(out));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp.headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
                return Ok(resp);
            }
            ctx.cache = Some(key);
        }
        let mut cred = self
            .credentials(op, seller, role, &path, &caller.client.tool)
            .await?; // 5. credentials
                     // Taken last, right before sending, so that a slow credential fetch (a cold LWA or RDT
                     // call) never sits between the limiter's decision and the arrival at Amazon.
        ctx.admission = Some(self.admit(&caller, op, bucket, &wants).await?); // 6. rate limit
        ctx.token = Some(cred.kind());
        let upstream_req =
            self.upstream_request(req, op, seller, role, &cred, limit_tripped.clone())?;
        let mut resp = self.send(upstream_req, &limit_tripped).await?; // 7. upstream
        self.observe(bucket, op, &resp);
        // Retries, only for requests that can be replayed (no body): once with fresh credentials
        // after 401/403 (a token revoked early or expired in flight), and for idempotent
        // requests after 429/5xx with backoff and jitter, within the caller's deadline, the
        // retry budget, and a fresh rate-limit token each time.
        let mut attempt = 0u32;
        while let Some(replay) = &replay {
            let status = resp.status();
            let pause = if attempt == 0 && token_rejected(&mut resp).await {
                self.forget(&cred).await;
                Duration::ZERO
            } else if (status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && replay.idempotent()
                && attempt < self.retry.max_retries
                && self.retry.budget.try_take()
            {
                backoff(attempt, self.retry.base_delay)
            } else {
                break;
            };
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let again = Wants {
                max_wait: Some(remaining),
                ..wants
            };
            attempt += 1;
            cred = self
                .credentials(op, seller, role, &path, &caller.client.tool)
                .await?;
            match self.admit(&caller, op, bucket, &again).await {
                Ok(admission) => ctx.admission = Some(admission),
                Err(_) => break, // no token in time: answer with what Amazon said
            }
            ctx.token = Some(cred.kind());
            let req = self.upstream_request(
                replay.request(),
                op,
                seller,
                role,
                &cred,
                limit_tripped.clone(),
            )?;
            resp = self.send(req, &limit_tripped).await?;
            self.observe(bucket, op, &resp);
        }
        if token_rejected(&mut resp).await {
            self.forget(&cred).await;
        }
        ctx.upstream_request_id = resp
            .headers()
            .get(crate::spapi::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string);
        let resp = self.minimise(resp, op, role, seller, &params, ctx).await?; // 8. respond: the PII policy
        let mut resp = self.respond(resp); // the header allowlist, before the gateway's own headers
        if ctx.cache.is_some() {
            resp.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        }
        Ok(resp)
    }

    /// Phase 8 (PII): a response of an operation that may carry buyer PII is buffered (up to
    /// `pii.max_response_bytes`) and parsed before anything reaches the caller. A body that is
    /// too large, cannot be read in full, is encoded, or is not JSON is refused with 502:
    /// restricted data fails closed, never open. Every other JSON response (success or error)
    /// goes through the safety net the same way; only non-JSON answers (and empty bodies) of
    /// operations declared to carry no buyer PII pass untouched. Error answers of PII
    /// operations go through the role's policy ([`Self::minimise_error`]).
    async fn minimise(
        &self,
        resp: Response<Body>,
        op: &'static Operation,
        role: &Role,
        seller: Option<&SellerRecord>,
        params: &[(&'static str, String)],
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        let mapped = match op.pii_class() {
            crate::pii::Classification::Mapped(_) => true,
            crate::pii::Classification::NoPii(_) => false,
            crate::pii::Classification::Unclassified => return Err(ProxyError::Unclassified),
        };
        if !mapped && !declares_json(resp.headers()) {
            return Ok(resp);
        }
        if !resp.status().is_success() {
            return self.minimise_error(resp, op, role).await;
        }
        let (parts, body) = resp.into_parts();
        if parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(ProxyError::UnsafeResponse("encoded"));
        }
        let bytes = read_capped(body, self.pii.max_response_bytes).await?;
        if !mapped && bytes.is_empty() {
            return Ok(Response::from_parts(parts, body::empty()));
        }
        let mut out = self
            .apply_policy(&bytes, op, role, seller, params, ctx)
            .await?;
        // Errors inside a successful answer (partial results) are free text like an error
        // answer's: their codes pass, their words only to a role that passes everything.
        if mapped
            && !passes_every_category(op, role)
            && memchr::memmem::find(&out, b"\"errors\"").is_some()
        {
            if let Some(generic) = error_body::generic_errors_in(&out) {
                out = generic;
            }
        }
        if let (Some((order_id, key)), Some(seller)) = (&ctx.cache, seller) {
            // Only a response the policy could read is cached (sealed under the order's key).
            self.vault
                .cache_put(&seller.selling_partner_id, order_id, key, &bytes)
                .await?;
        }
        Ok(with_body(parts, out))
    }

    /// A JSON error answer (any operation) or an error answer of an operation with buyer PII:
    /// Amazon's errors may echo what was sent or found. Each error's `code` passes; `message` and `details` only for a role that passes
    /// every category of the operation, and then through the role's policy and the safety net
    /// like a success (no keys: nothing is encrypted). Other roles get a generic message for
    /// the code and no details ([`error_body::generic`]). Not JSON: withheld (502).
    async fn minimise_error(
        &self,
        resp: Response<Body>,
        op: &'static Operation,
        role: &Role,
    ) -> Result<Response<Body>, ProxyError> {
        use crate::pii::{keys, transform};
        let (parts, body) = resp.into_parts();
        let bytes = read_capped(body, self.pii.max_response_bytes).await?;
        if bytes.is_empty() {
            return Ok(Response::from_parts(parts, body::empty()));
        }
        if !passes_every_category(op, role) {
            let out = error_body::generic(parts.status, &bytes)
                .ok_or(ProxyError::UnsafeResponse("error body not JSON"))?;
            return Ok(with_body(parts, out));
        }
        let pseudonym = keys::PseudonymKey::derive(&self.master_key, "error-bodies");
        let keys = keys::Keys {
            pseudonym: &pseudonym,
            orders: &keys::NoOrderKeys,
        };
        let (out, _) = transform::apply_bytes(op.key, role, &bytes, &[], &keys, &self.pii_policy())
            .map_err(|_| ProxyError::UnsafeResponse("error body not JSON"))?;
        Ok(with_body(parts, out))
    }

    /// The transform's limits and safety-net action, from `[pii]`.
    fn pii_policy(&self) -> crate::pii::transform::Policy {
        crate::pii::transform::Policy {
            max_bytes: self.pii.max_response_bytes,
            safety_net: self.pii.safety_net,
        }
    }

    /// The role's PII policy over a whole response: the orders it holds get their data keys
    /// (for `encrypt`) and retention facts first (I/O), then the pure transform runs.
    async fn apply_policy(
        &self,
        bytes: &[u8],
        op: &'static Operation,
        role: &Role,
        seller: Option<&SellerRecord>,
        params: &[(&'static str, String)],
        ctx: &mut Ctx,
    ) -> Result<Vec<u8>, ProxyError> {
        use crate::pii::{keys, transform};
        let policy = self.pii_policy();
        let seller_id = seller.map_or(APPLICATION_BUCKET, |s| s.selling_partner_id.as_str());
        let pseudonym = keys::PseudonymKey::derive(&self.master_key, seller_id);
        let op_map = match op.pii_class() {
            crate::pii::Classification::Mapped(map) => map,
            // No buyer PII by declaration: only the safety net runs.
            _ => {
                let keys = keys::Keys {
                    pseudonym: &pseudonym,
                    orders: &keys::NoOrderKeys,
                };
                let (out, report) =
                    transform::apply_bytes(op.key, role, bytes, &[], &keys, &policy)
                        .map_err(|_| ProxyError::UnsafeResponse("not JSON"))?;
                ctx.pii = Some(report);
                return Ok(out);
            }
        };
        // Document URLs become the gateway's signed links first, so the presigned URLs (bearer
        // credentials) never meet the transform and never leave.
        let linked;
        let bytes = if op_map.links.is_empty() {
            bytes
        } else {
            linked = self.link_documents(bytes, op_map, seller_id, params, ctx)?;
            &linked[..]
        };
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let encrypts = crate::pii::Category::ALL
            .iter()
            .any(|c| role.action(*c) == crate::pii::Action::Encrypt);
        // Facts and pseudonyms of a cached response were recorded when it was fetched.
        let fresh = !ctx.cache_hit;
        // The parsed tree is only needed for the vault's work (order keys, facts, pseudonyms);
        // the transform itself runs over the bytes.
        let value = if seller.is_some() && (encrypts || fresh) && !op_map.records.is_empty() {
            transform::parse(bytes, &policy).map_err(|_| ProxyError::UnsafeResponse("not JSON"))?
        } else {
            serde_json::Value::Null
        };
        let mut order_keys: Vec<(String, crate::crypto::DataKey)> = Vec::new();
        if encrypts && seller.is_some() {
            for id in transform::order_ids(op.key, &value, &params) {
                let key = self.vault.order_key(seller_id, &id).await?;
                order_keys.push((id, key));
            }
        }
        if seller.is_some() && fresh {
            for facts in transform::orders(op.key, &value, &params) {
                let facts = crate::vault::OrderFacts {
                    latest_delivery: facts
                        .latest_delivery
                        .as_deref()
                        .and_then(crate::vault::parse_rfc3339),
                    delivered_at: facts.delivered.then(|| self.vault.now()),
                    status: facts.status,
                    order_id: facts.order_id,
                };
                self.vault.observe(seller_id, &facts).await?;
            }
        }
        if seller.is_some() && fresh && (encrypts || ctx.cache.is_some()) {
            // Orders the vault holds PII of are found again by the buyer's e-mail pseudonym
            // (data-subject requests).
            for (order_id, email) in transform::order_emails(op.key, &value, &params) {
                let psn = pseudonym.pseudonymize(crate::pii::Category::Email, &email);
                self.vault
                    .link_pseudonym(seller_id, &order_id, &psn)
                    .await?;
            }
        }
        let keys = keys::Keys {
            pseudonym: &pseudonym,
            orders: &order_keys,
        };
        let (out, report) = transform::apply_bytes(op.key, role, bytes, &params, &keys, &policy)
            .map_err(|_| ProxyError::UnsafeResponse("not JSON"))?;
        ctx.pii = Some(report);
        Ok(out)
    }

    /// The document URLs of a response (the map's `link`s) replaced by the gateway's signed
    /// links, each good for this tool, seller and role for 5 minutes.
    fn link_documents(
        &self,
        bytes: &[u8],
        op_map: &crate::pii::OpMap,
        seller_id: &str,
        params: &[(&'static str, String)],
        ctx: &Ctx,
    ) -> Result<Vec<u8>, ProxyError> {
        let base = ctx.public_base.clone().ok_or(ProxyError::BadHeader(
            "a Host header is needed to hand out a document link",
        ))?;
        let now = unix_now();
        // The document's id: the request's path parameters (e.g. the report document id).
        let document_id = params
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join("/");
        let (tool, role_name) = (
            ctx.tool.clone().unwrap_or_default(),
            ctx.role.clone().unwrap_or_default(),
        );
        documents::rewrite_links(bytes, &op_map.links, &base, |url, compression, opaque| {
            let claims = crate::documents::link::LinkClaims {
                opaque,
                url: url.to_string(),
                compression: compression.map(str::to_string),
                seller_id: seller_id.to_string(),
                tool: tool.clone(),
                role: role_name.clone(),
                document_id: document_id.clone(),
                expires_at: now + crate::documents::link::DEFAULT_TTL_SECONDS,
            };
            crate::documents::link::issue(&self.master_key, &claims, now)
        })
        .map_err(|_| ProxyError::UnsafeResponse("document links not in the model's shape"))
    }

    /// The PII cache key of a request, when its response may be cached: a GET of one order's
    /// restricted data (an `orderId` path parameter), while the cache is on. The key names the
    /// operation, the path and query, and the categories the role receives (which decide the
    /// Restricted Data Token, hence what Amazon answered).
    fn cache_key<B>(
        &self,
        op: &Operation,
        role: &Role,
        req: &Request<B>,
        params: &[(&'static str, String)],
    ) -> Option<(String, String)> {
        let links = match op.pii_class() {
            crate::pii::Classification::Mapped(map) => !map.links.is_empty(),
            _ => return None,
        };
        // A response with document links is never cached: its links expire in minutes.
        if !self.vault.config().cache_enabled
            || links
            || op.method != http::Method::GET
            || !role.receives_any(rdt::categories(op))
        {
            return None;
        }
        let order_id = params.iter().find(|(k, _)| *k == "orderId")?.1.clone();
        let receives: Vec<&str> = crate::pii::Category::ALL
            .iter()
            .filter(|c| role.receives(**c))
            .map(|c| c.as_str())
            .collect();
        let pq = req.uri().path_and_query().map_or("", |pq| pq.as_str());
        Some((order_id, format!("{}|{pq}|{}", op.key, receives.join(","))))
    }

    /// Phase 5: a token from Amazon's bucket for (seller, operation) and from the tool's plan,
    /// waiting up to the deadline; otherwise 429 with Retry-After.
    async fn admit(
        &self,
        caller: &Caller,
        op: &'static Operation,
        bucket: &str,
        wants: &Wants,
    ) -> Result<crate::ratelimit::Admission, ProxyError> {
        let plans = self
            .tool_plans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let plan = plans.get(&caller.client.tool).map(String::as_str);
        Ok(self
            .limiter
            .acquire(Acquire {
                seller: bucket,
                operation: op,
                tool: &caller.client.tool,
                plan,
                priority: wants.priority,
                max_wait: wants.max_wait,
            })
            .await?)
    }

    /// A token of the seller's createRestrictedDataToken bucket (1/s, burst 10), taken only
    /// when an RDT must be fetched; refused, the request fails closed with 503.
    async fn admit_rdt(&self, seller: &str, tool: &str) -> Result<(), RdtError> {
        let op = self.catalog.by_key(rdt::RDT_OPERATION).ok_or_else(|| {
            RdtError::Protocol("createRestrictedDataToken is not catalogued".into())
        })?;
        self.limiter
            .acquire(Acquire {
                seller,
                operation: op,
                tool,
                plan: None,
                priority: Priority::Normal,
                max_wait: Some(RDT_MAX_WAIT),
            })
            .await
            .map(|_| ())
            .map_err(|e| RdtError::Unavailable(format!("no createRestrictedDataToken quota: {e}")))
    }

    /// Feeds Amazon's answer back into the limiter: its stated rate, and its 429s.
    fn observe(&self, bucket: &str, op: &Operation, resp: &Response<Body>) {
        if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
            self.limiter.observe_throttled(bucket, op);
        } else if let Some(rate) = resp
            .headers()
            .get(crate::spapi::RATE_LIMIT_LIMIT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            self.limiter.observe_rate(bucket, op, rate);
        }
    }

    /// The store (readiness checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The limiter (status and metrics for the admin listener).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Replaces the tools' rate plans (reload): plans first, then who uses which.
    pub fn reload_plans(&self, plans: Plans, tool_plans: BTreeMap<String, String>) {
        self.limiter.reload_plans(plans);
        *self.tool_plans.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tool_plans);
    }

    /// The tools' client-certificate pins: a pinned tool is served only on a TLS connection
    /// that presented one of them.
    pub fn client_pins(&self) -> Arc<crate::server::tls::ClientPins> {
        self.client_pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the tools' client-certificate pins (reload).
    pub fn set_client_pins(&self, pins: crate::server::tls::ClientPins) {
        *self.client_pins.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pins);
    }

    async fn send(
        &self,
        req: Request<Body>,
        limit_tripped: &AtomicBool,
    ) -> Result<Response<Body>, ProxyError> {
        match self.upstream.send(req).await {
            Ok(resp) => Ok(resp),
            Err(UpstreamError::Transport(_)) if limit_tripped.load(Ordering::Relaxed) => {
                Err(ProxyError::BodyTooLarge {
                    limit: self.limits.max_request_body_bytes,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn forget(&self, cred: &Credential) {
        match cred {
            Credential::Access(subject, token) => self.lwa.invalidate(subject, token).await,
            Credential::Rdt(key, token, subject, access) => {
                self.rdts.invalidate(key, token).await;
                self.lwa.invalidate(subject, access).await;
            }
        }
    }

    /// Phase 1: header size, body size and framing.
    fn accept<B: HttpBody>(&self, req: &Request<B>) -> Result<Arc<AtomicBool>, ProxyError> {
        if req
            .extensions()
            .get::<crate::server::framing::Conflict>()
            .is_some()
        {
            return Err(ProxyError::BadFraming(
                "Content-Length with Transfer-Encoding",
            ));
        }
        let h = req.headers();
        if headers::total_size(h) > self.limits.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                limit: self.limits.max_header_bytes,
            });
        }
        let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
        if !lengths.is_empty() && h.contains_key(header::TRANSFER_ENCODING) {
            return Err(ProxyError::BadFraming(
                "Content-Length with Transfer-Encoding",
            ));
        }
        if lengths.len() > 1 {
            return Err(ProxyError::BadFraming("several Content-Length headers"));
        }
        if let Some(len) = lengths.first() {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyError::BadFraming("Content-Length is not a number"))?;
            if len > self.limits.max_request_body_bytes {
                return Err(ProxyError::BodyTooLarge {
                    limit: self.limits.max_request_body_bytes,
                });
            }
        }
        Ok(Arc::new(AtomicBool::new(false)))
    }

    /// Phase 3: the operation for this method and path, and the path parameters.
    fn route<B>(&self, req: &Request<B>) -> Result<Route, ProxyError> {
        let catalog: &'static Catalog = self.catalog;
        catalog
            .route(req.method(), req.uri().path())
            .map(|r| (r.operation, r.params))
            .ok_or(ProxyError::NotFound)
    }

    /// The drop-in token endpoint: LWA's refresh_token grant, answered with a gateway token.
    async fn drop_in_token<B>(&self, req: Request<B>) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if req.method() != http::Method::POST {
            return Err(ProxyError::NotFound);
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = crate::server::peers::read_body(
            req.into_body(),
            drop_in::MAX_TOKEN_REQUEST_BYTES,
            self.limits.body_read_timeout,
        )
        .await?;
        let token =
            drop_in::issue(&*self.store, content_type.as_deref(), &body, unix_now()).await?;
        let json = serde_json::to_vec(&token)
            .map_err(|_| drop_in::TokenError::InvalidRequest("unserializable"))?;
        let mut resp = Response::new(body::full(json));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    /// `POST /v1/pii/reveal`: decrypts envelopes for a role allowed to, while the order's key
    /// lives; every value asked about is audited (outcome, category, order; never the value).
    async fn reveal<B>(&self, req: Request<B>, ctx: &mut Ctx) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use crate::audit::record::{Id, Kind, PiiUse, Reason, Record};
        if req.method() != http::Method::POST {
            return Err(ProxyError::NotFound);
        }
        let caller =
            caller::authenticate_request(&*self.store, &self.client_pins(), &req, unix_now())
                .await?;
        ctx.tool = Some(caller.client.tool.clone());
        ctx.role = Some(caller.client.role.clone());
        let body = crate::server::peers::read_body(
            req.into_body(),
            reveal::MAX_BODY_BYTES,
            self.limits.body_read_timeout,
        )
        .await?;
        let role = self.roles.get(&caller.client.role);
        let mut answers = reveal::reveal(&body, &caller, role, &self.vault).await?;
        // Only for sellers still connected: a removed or deauthorized seller's data stays sealed.
        for a in answers.iter_mut() {
            if let (reveal::Outcome::Revealed, Some(seller)) = (a.outcome, &a.seller) {
                let active = self
                    .store
                    .seller(seller)
                    .await?
                    .is_some_and(|s| s.status != SellerStatus::Deauthorized);
                if !active {
                    a.outcome = reveal::Outcome::Forbidden;
                    a.value = None;
                }
            }
        }
        let mut records = Vec::with_capacity(answers.len());
        for a in &answers {
            let mut r = Record::new(Kind::Reveal)
                .with_tool(&caller.client.tool)
                .with_role(&caller.client.role)
                .with_reason(match a.outcome {
                    reveal::Outcome::Revealed => Reason::from_static("revealed"),
                    reveal::Outcome::Forbidden => Reason::from_static("forbidden"),
                    reveal::Outcome::Expired => Reason::from_static("expired"),
                    reveal::Outcome::Invalid => Reason::from_static("invalid"),
                });
            if let Some(seller) = &a.seller {
                r = r.with_seller(seller);
            }
            r.order_id = a.order_id.as_deref().map(Id::lossy);
            if let (Some(category), reveal::Outcome::Revealed) = (a.category, a.outcome) {
                r.pii = vec![PiiUse {
                    category,
                    action: crate::pii::Action::Pass,
                }];
            }
            records.push(self.auditor.record_durable(r));
        }
        // No value goes out before every record of the reveal is written (one group commit).
        if futures_util::future::join_all(records)
            .await
            .iter()
            .any(Result::is_err)
        {
            return Err(ProxyError::AuditUnavailable);
        }
        let json = serde_json::to_vec(&reveal::response_body(&answers))
            .map_err(|_| ProxyError::UnsafeResponse("unserializable"))?;
        let mut resp = Response::new(body::full(json));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    /// `GET /v1/documents/{token}`: the report document behind a link this gateway issued,
    /// downloaded and streamed through the caller's role policy.
    async fn document<B>(
        &self,
        req: Request<B>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use futures_util::StreamExt;
        if req.method() != http::Method::GET {
            return Err(ProxyError::NotFound);
        }
        let caller =
            caller::authenticate_request(&*self.store, &self.client_pins(), &req, unix_now())
                .await?;
        ctx.tool = Some(caller.client.tool.clone());
        ctx.role = Some(caller.client.role.clone());
        let token = &req.uri().path()[documents::PREFIX.len()..];
        let claims = crate::documents::link::open(&self.master_key, token, unix_now())?;
        ctx.seller = Some(claims.seller_id.clone());
        let same_tool = claims.tool == caller.client.tool;
        let seller_ok = caller.client.allows_seller(&claims.seller_id)
            && caller
                .token_seller
                .as_deref()
                .is_none_or(|s| s == claims.seller_id);
        if !same_tool || !seller_ok {
            return Err(caller::CallerError::SellerNotAllowed.into());
        }
        match self.store.seller(&claims.seller_id).await? {
            None => return Err(ProxyError::UnknownSeller),
            Some(s) if s.status == SellerStatus::Deauthorized => {
                return Err(ProxyError::SellerDeauthorized)
            }
            Some(_) => {}
        }
        if claims.opaque && !documents::passes_opaque(self.roles.get(&caller.client.role)) {
            return Err(ProxyError::DocumentNotForRole);
        }
        let role = self.roles.get(&caller.client.role).clone();
        let policy = documents::RolePolicy::new(role, &self.master_key, &claims.seller_id);
        // Audited by `handle` when the stream ends: the categories the redactor emitted. Set
        // before the fetch, so that a record of a download cut short names it too.
        let (policy, emitted) = accounting::Noting::new(policy);
        ctx.upstream_called = true;
        ctx.document = Some((claims.document_id.clone(), emitted));
        // Only https to Amazon's document hosts, public addresses, no redirects.
        let resp = self
            .outbound
            .get(&claims.url, DOCUMENT_HEADER_TIMEOUT)
            .await?;
        let input = resp.into_body().into_data_stream();
        let redacted = crate::documents::redact(
            input,
            claims.compression.is_some(),
            policy,
            crate::documents::Limits::default(),
        )
        .map(|chunk| {
            chunk
                .map(http_body::Frame::data)
                .map_err(|e| Box::new(e) as BoxError)
        });
        let mut out = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(redacted)));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        out.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(out)
    }

    /// `/oauth/start` and `/oauth/callback`: the website authorization workflow.
    async fn onboarding<B>(&self, req: &Request<B>) -> Result<Response<Body>, ProxyError> {
        let cfg = self
            .onboarding
            .as_ref()
            .ok_or(OnboardingError::NotConfigured)?;
        if req.method() != http::Method::GET {
            return Err(ProxyError::NotFound);
        }
        let flow = Onboarding {
            cfg,
            store: &*self.store,
            key: &self.master_key,
            lwa: &self.lwa,
            client: self.upstream.client(),
            endpoints: &self.endpoints,
        };
        let query = req.uri().query();
        let resp = match req.uri().path() {
            onboarding::START_PATH => flow.start(query, unix_now()).await?,
            _ => match flow.callback(query, unix_now()).await {
                // An attempt to squat or rebind a seller id: alerted in the audit log too.
                Err(e @ OnboardingError::SellerNotConfirmed { .. }) => {
                    if let OnboardingError::SellerNotConfirmed {
                        claimed, rebind, ..
                    } = &e
                    {
                        self.auditor.record(
                            crate::audit::Record::new(crate::audit::Kind::Alert)
                                .with_seller(claimed)
                                .with_reason(crate::audit::Reason::from_static(if *rebind {
                                    "onboarding_rebind_refused"
                                } else {
                                    "onboarding_seller_not_confirmed"
                                })),
                        );
                    }
                    return Err(e.into());
                }
                // A re-authorization link answered with another seller's id.
                Err(e @ OnboardingError::WrongSeller { .. }) => {
                    if let OnboardingError::WrongSeller { expected } = &e {
                        self.auditor.record(
                            crate::audit::Record::new(crate::audit::Kind::Alert)
                                .with_seller(expected)
                                .with_reason(crate::audit::Reason::from_static(
                                    "onboarding_wrong_seller",
                                )),
                        );
                    }
                    return Err(e.into());
                }
                other => other?,
            },
        };
        if let Some(onboarding::Authorized(seller)) = resp.extensions().get() {
            // A security action: not confirmed before its record is written.
            self.auditor
                .record_durable(
                    crate::audit::Record::new(crate::audit::Kind::SellerAuthorized)
                        .with_seller(seller)
                        .with_reason(crate::audit::Reason::from_static("website_authorization")),
                )
                .await
                .map_err(|_| ProxyError::AuditUnavailable)?;
        }
        Ok(resp)
    }

    /// Phase 4: the seller this request acts for (none for grantless operations).
    async fn authorize(
        &self,
        caller: &Caller,
        op: &Operation,
        headers: &http::HeaderMap,
    ) -> Result<Option<SellerRecord>, ProxyError> {
        if op.grantless_scope.is_some() {
            // Application-wide: only an API key of a tool allowed for every seller; a drop-in
            // token stands for one seller and never reaches these.
            if caller.token_seller.is_some() || !caller.client.allows_all_sellers() {
                return Err(caller::CallerError::ApplicationWide.into());
            }
            return Ok(None);
        }
        let id = caller::seller(caller, headers)?;
        let seller = self
            .store
            .seller(id)
            .await?
            .ok_or(ProxyError::UnknownSeller)?;
        if seller.status == SellerStatus::Deauthorized {
            return Err(ProxyError::SellerDeauthorized);
        }
        Ok(Some(seller))
    }

    /// Phase 5: the token for `x-amz-access-token`: the seller's (or a grantless) access token,
    /// or for restricted operations a Restricted Data Token asking only for what the role may
    /// receive. Failing to get an RDT fails the request: restricted data is never fetched with
    /// a plain token.
    async fn credentials(
        &self,
        op: &Operation,
        seller: Option<&SellerRecord>,
        role: &Role,
        path: &str,
        tool: &str,
    ) -> Result<Credential, ProxyError> {
        let (subject, access) = self.access_token(op, seller).await?;
        let (true, Some(seller)) = (op.restricted, seller) else {
            return Ok(Credential::Access(subject, access));
        };
        match rdt::need(op, role) {
            Need::Plain => Ok(Credential::Access(subject, access)),
            Need::Refused => Err(ProxyError::RoleMayNotReceive),
            Need::Rdt(elements) => {
                let key = RdtKey::new(&seller.selling_partner_id, op, path, elements);
                let endpoint = self.endpoints.for_region(seller.region);
                let admit = self.admit_rdt(&seller.selling_partner_id, tool);
                match self.rdts.token(&key, endpoint, &access, admit).await {
                    Ok(token) => Ok(Credential::Rdt(key, token, subject, access)),
                    Err(e) => {
                        if matches!(e, RdtError::Refused(s) if s == http::StatusCode::UNAUTHORIZED)
                        {
                            self.lwa.invalidate(&subject, &access).await;
                        }
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// The LWA access token for the seller, or the grantless token for the operation's scope.
    async fn access_token(
        &self,
        op: &Operation,
        seller: Option<&SellerRecord>,
    ) -> Result<(Subject, Secret<String>), ProxyError> {
        match (op.grantless_scope, seller) {
            (Some(scope), _) => {
                let subject = Subject::Grantless(scope);
                let token = self
                    .lwa
                    .token(&subject, || Ok(Grant::ClientCredentials(scope)))
                    .await?;
                Ok((subject, token))
            }
            (None, Some(seller)) => {
                let subject = Subject::Seller(seller.selling_partner_id.clone());
                let result = self
                    .lwa
                    .token(&subject, || {
                        let aad = format!("refresh_token:{}", seller.selling_partner_id);
                        self.master_key
                            .open_str(&seller.refresh_token_sealed, aad.as_bytes())
                            .map(Grant::RefreshToken)
                            .map_err(|e| LwaError::RefreshToken(e.to_string()))
                    })
                    .await;
                match result {
                    Ok(token) => Ok((subject, token)),
                    Err(LwaError::InvalidGrant) => {
                        self.store
                            .set_seller_status(
                                &seller.selling_partner_id,
                                SellerStatus::Deauthorized,
                            )
                            .await?;
                        tracing::warn!(seller = %seller.selling_partner_id, "Seller deauthorized: LWA answered invalid_grant.");
                        self.auditor.record(
                            crate::audit::Record::new(crate::audit::Kind::SellerDeauthorized)
                                .with_seller(&seller.selling_partner_id)
                                .with_reason(crate::audit::Reason::from_static(
                                    "lwa_invalid_grant",
                                )),
                        );
                        Err(ProxyError::SellerDeauthorized)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (None, None) => Err(ProxyError::UnknownSeller),
        }
    }

    /// Phase 6 (preparation): the request as SP-API will see it.
    fn upstream_request<B>(
        &self,
        req: Request<B>,
        op: &Operation,
        seller: Option<&SellerRecord>,
        role: &Role,
        cred: &Credential,
        limit_tripped: Arc<AtomicBool>,
    ) -> Result<Request<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        // The region comes from the seller's record, never from the Host header. Grantless calls
        // use the North America endpoint unless the application is configured elsewhere.
        let region = seller.map(|s| s.region).unwrap_or(crate::store::Region::Na);
        let base = self.endpoints.for_region(region);
        let mut uri = Uri::builder();
        if let Some(scheme) = base.scheme() {
            uri = uri.scheme(scheme.clone());
        }
        if let Some(authority) = base.authority() {
            uri = uri.authority(authority.clone());
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        // Orders 2026-01-01: ask only for the datasets the role may receive.
        let reduced = rdt::reduce_included_data(op, role, pq)?;
        let pq = reduced.as_deref().unwrap_or(pq);
        parts.uri = uri
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::NotFound)?;
        parts.version = http::Version::HTTP_11;
        headers::for_upstream(&mut parts.headers, op.model, &self.header_drops);
        let value = HeaderValue::from_str(cred.token().expose()).map_err(|_| {
            ProxyError::Credentials(LwaError::Protocol(
                "token is not a valid header value".into(),
            ))
        })?;
        let mut value = value;
        value.set_sensitive(true);
        parts.headers.insert(crate::spapi::ACCESS_TOKEN, value);
        if let Some(signer) = &self.signer {
            // SigV4 signs the host; set it explicitly to the upstream's authority.
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
            let mut bare = Request::from_parts(parts, ());
            signer
                .sign(&mut bare, region)
                .map_err(|e| ProxyError::Credentials(LwaError::Protocol(e.to_string())))?;
            parts = bare.into_parts().0;
        }
        let body = Limited::new(body, self.limits.max_request_body_bytes, limit_tripped).boxed();
        Ok(Request::from_parts(parts, body))
    }

    /// Phase 7: the response as the caller will see it.
    fn respond(&self, resp: Response<Body>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        headers::for_caller(&mut parts.headers, parts.status, &self.header_drops);
        Response::from_parts(parts, body)
    }
}

/// Longest wait for a report document's response headers.
const DOCUMENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Operations only the gateway itself calls; tools are refused.
pub const GATEWAY_OWN: [&str; 2] = [
    rdt::RDT_OPERATION,
    "application_2023-11-30.rotateApplicationClientSecret",
];

/// `hit` when a response came from the PII cache, `miss` when it could have and did not.
pub const CACHE_HEADER: &str = "x-spgate-cache";

/// Longest wait for a createRestrictedDataToken token.
const RDT_MAX_WAIT: Duration = Duration::from_secs(5);

/// The bucket grantless (application-wide) operations use instead of a seller's.
const APPLICATION_BUCKET: &str = "application";

/// What the caller asked of the limiter in its headers.
#[derive(Debug, Clone, Copy)]
struct Wants {
    priority: Priority,
    max_wait: Option<Duration>,
}

impl Wants {
    /// Reads `x-spgate-priority` (high, normal, low) and `x-spgate-max-wait-ms`.
    fn from_headers(headers: &http::HeaderMap) -> Result<Wants, ProxyError> {
        let priority =
            match headers.get("x-spgate-priority") {
                None => Priority::Normal,
                Some(v) => v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(
                    ProxyError::BadHeader("x-spgate-priority must be high, normal or low"),
                )?,
            };
        let max_wait = match headers.get("x-spgate-max-wait-ms") {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(
                    ProxyError::BadHeader("x-spgate-max-wait-ms must be a number of milliseconds"),
                )?,
            )),
        };
        Ok(Wants { priority, max_wait })
    }
}

/// Retry policy for idempotent requests answered 429 or 5xx.
pub struct RetryPolicy {
    /// Retries per request at most.
    pub max_retries: u32,
    /// First backoff; doubled per attempt, with full jitter.
    pub base_delay: Duration,
    /// Deadline when the caller names none.
    pub default_deadline: Duration,
    /// Shared budget: retries may add at most a fraction of the traffic.
    pub budget: RetryBudget,
}

/// Retries allowed per request overall: a token bucket that earns 0.2 of a retry per request.
pub struct RetryBudget {
    tokens_milli: std::sync::atomic::AtomicI64,
}

impl RetryBudget {
    /// A budget starting with 10 retries in hand.
    pub fn new() -> RetryBudget {
        RetryBudget {
            tokens_milli: std::sync::atomic::AtomicI64::new(10_000),
        }
    }

    /// Each request earns a fifth of a retry (capped at 100 in hand).
    fn earn(&self) {
        let _ = self
            .tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + 200).min(100_000))
            });
    }

    fn try_take(&self) -> bool {
        self.tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

/// Exponential backoff with full jitter: uniform in [0, base * 2^attempt].
fn backoff(attempt: u32, base: Duration) -> Duration {
    let cap = base.saturating_mul(1 << attempt.min(6));
    let r = crate::crypto::random_bytes::<4>()
        .map(u32::from_le_bytes)
        .unwrap_or(u32::MAX / 2);
    cap.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

/// Whether SP-API rejected the token itself (so it should be forgotten and the call retried):
/// any 401, or a 403 whose error body names the access token ("...has expired", "...is
/// revoked, malformed or invalid"). Other 403s (the application lacks a role) keep the token:
/// evicting it would cost an LWA and RDT call per such request. A 403 body is small; it is
/// read (within the response's total deadline) and put back.
async fn token_rejected(resp: &mut Response<Body>) -> bool {
    match resp.status() {
        http::StatusCode::UNAUTHORIZED => true,
        http::StatusCode::FORBIDDEN => {
            let taken = std::mem::replace(resp.body_mut(), body::empty());
            match taken.collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    let hit = mentions_access_token(&bytes);
                    *resp.body_mut() = body::full(bytes);
                    hit
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// The gateway's base URL as the caller reached it: `Host` (or, over HTTP/2, the request's
/// `:authority`), and `https` when the request came over the gateway's own TLS listener (every
/// TLS connection attaches a [`crate::server::tls::PeerCert`]) or a TLS-terminating proxy in
/// front says so (`X-Forwarded-Proto`).
fn public_base<B>(req: &http::Request<B>) -> Option<String> {
    let headers = req.headers();
    let host = match headers.get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    let https = req
        .extensions()
        .get::<crate::server::tls::PeerCert>()
        .is_some()
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// Whether the response carries buyer PII the caller receives (any category not dropped).
fn carries_pii(ctx: &Ctx) -> bool {
    ctx.pii.as_ref().is_some_and(|r| {
        r.returned
            .iter()
            .any(|(_, a)| *a != crate::pii::Action::Drop)
    })
}

/// The audit reason code for an error (a fixed code, never the error's text).
fn audit_reason(err: &ProxyError) -> crate::audit::Reason {
    use crate::audit::Reason;
    use caller::CallerError as C;
    match err {
        ProxyError::Caller(C::SellerNotAllowed) | ProxyError::Caller(C::ApplicationWide) => {
            Reason::SELLER_NOT_ALLOWED
        }
        ProxyError::Caller(C::MissingKey | C::MalformedKey | C::UnknownKey) => {
            Reason::UNAUTHENTICATED
        }
        ProxyError::RoleMayNotReceive | ProxyError::GatewayOwned => Reason::OPERATION_NOT_ALLOWED,
        ProxyError::Unclassified => Reason::from_static("operation_unclassified"),
        ProxyError::DocumentNotForRole => Reason::from_static("document_not_for_role"),
        ProxyError::RateLimited(_) => Reason::RATE_LIMITED,
        ProxyError::NotFound => Reason::UNKNOWN_OPERATION,
        ProxyError::Upstream(_) => Reason::UPSTREAM_ERROR,
        ProxyError::UnsafeResponse(_) => Reason::from_static("response_withheld"),
        ProxyError::UnknownSeller | ProxyError::SellerDeauthorized => {
            Reason::from_static("seller_not_authorized")
        }
        ProxyError::Restricted(_) => Reason::from_static("restricted_data_unavailable"),
        ProxyError::Credentials(_) => Reason::from_static("credentials_unavailable"),
        ProxyError::Token(_) => Reason::UNAUTHENTICATED,
        ProxyError::Outbound(e) => e.reason(),
        _ => Reason::from_static("refused"),
    }
}

/// Whether a response says it is JSON (or says nothing, so it is checked as JSON): the safety
/// net reads every such body.
fn declares_json(headers: &http::HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => {
            // A type that is not even text is treated as JSON: the safety net decides.
            let Ok(v) = v.to_str() else { return true };
            let v = v.to_ascii_lowercase();
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.ends_with("/json") || essence.ends_with("+json")
        }
    }
}

/// Whether a role passes every category an operation's answers may carry: only such a role
/// reads Amazon's free text (error messages and details) about it. An operation declared free
/// of buyer PII has no category to withhold (its text still meets the safety net); one with
/// document links carries `document`; an unclassified one never passes.
fn passes_every_category(op: &Operation, role: &Role) -> bool {
    use crate::pii::{Action, Category, Classification};
    match op.pii_class() {
        Classification::Mapped(map) => {
            map.categories()
                .iter()
                .all(|c| role.action(*c) == Action::Pass)
                && (map.links.is_empty() || role.action(Category::Document) == Action::Pass)
        }
        Classification::NoPii(_) => true,
        Classification::Unclassified => false,
    }
}

/// The response with a new, complete body (and its length).
fn with_body(mut parts: http::response::Parts, out: Vec<u8>) -> Response<Body> {
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len() as u64));
    Response::from_parts(parts, body::full(out))
}

/// Reads a whole body of at most `max` bytes; more, or a broken body, is an unsafe response.
async fn read_capped(mut body: Body, max: usize) -> Result<bytes::Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::UnsafeResponse("unreadable"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ProxyError::UnsafeResponse("too large"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Whether an error body talks about the access token (case-insensitive).
pub(crate) fn mentions_access_token(body: &[u8]) -> bool {
    body.windows(12)
        .any(|w| w.eq_ignore_ascii_case(b"access token"))
}

/// What is needed to send a bodiless request a second time.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Replay {
    /// Captures the request if it has no body (only those can be replayed).
    fn capture<B: HttpBody>(req: &Request<B>) -> Option<Replay> {
        req.body().is_end_stream().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::new(body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// Whether sending it twice has the effect of sending it once.
    fn idempotent(&self) -> bool {
        matches!(
            self.method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE
        )
    }
}

/// Wall-clock time in unix seconds (token expiry, records).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Request ids: a random per-process prefix and a counter, unique without a syscall per request.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let prefix = crate::crypto::random_bytes::<6>()
            .map(|b| crate::crypto::hex(&b))
            .unwrap_or_else(|_| format!("{:012x}", std::process::id()));
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{:010x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}
