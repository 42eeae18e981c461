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
//!    `x-amzn-RateLimit-Limit` and 429s feed back into the limiter; replayable requests
//!    (bodiless, or a small body read whole) are retried once after Amazon rejected the token
//!    (401, a 403 naming it, or a bare 403 on an old token: `send::rejection`) and, if
//!    idempotent, after 429/5xx within the deadline;
//! 8. respond: the PII policy, then the header allowlist (Amazon's request id and rate limit
//!    pass back, see [`headers`]); the gateway's own headers are added after it.
//!
//! Errors from every phase meet in [`rescue::rescue`], the only error-to-response map.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::auth::caller::{self, Caller};
use crate::auth::drop_in;
use crate::auth::lwa::Lwa;
use crate::auth::onboarding;
use crate::auth::rdt::{self, Rdts};
use crate::catalog::{Catalog, Operation};
use crate::config::Endpoints;
use crate::config::OnboardingConfig;
use crate::crypto::MasterKey;
use crate::pii::Roles;
use crate::ratelimit::config::Plans;
use crate::ratelimit::Limiter;
use crate::store::{SellerRecord, SellerStatus, Store};

mod accounting;
mod cache;
mod compat;
mod credentials;
pub mod endpoints;
pub mod error_body;
pub mod headers;
mod limit;
pub mod outbound;
pub mod pii_gate;
mod policy;
pub mod rescue;
mod send;
mod shared_calls;
pub mod sigv4;

// Where these lived before the split; kept so callers' paths stay valid.
pub use crate::net::{body, upstream};
pub use cache::CACHE_HEADER;
pub use endpoints::{documents, reveal};
pub use send::{ReplayBudget, RetryBudget, RetryPolicy};
pub use shared_calls::{
    ChannelEvent as SharedChannelEvent, Event as SharedEvent, InvalidationError, RawSharedCalls,
    RedisLink as SharedCallsRedis, SharedCalls, SharedCallsConfig,
};

use accounting::{audit_reason, carries_pii, RequestIds};
use body::{Body, BoxError};
use limit::Wants;
use rescue::ProxyError;
use send::Replay;
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
    /// Bytes of request bodies held for sending again, all requests together.
    pub replay_buffer_bytes: usize,
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
    compat: Arc<crate::compat::Compat>,
    public_url: Option<String>,
    shared_calls: Arc<SharedCalls>,
    replay_budget: send::ReplayBudget,
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
    /// Orders v0 answered from Orders 2026-01-01 (`[compat]`).
    pub compat: Arc<crate::compat::Compat>,
    /// `server.public_url`: the base of the document links the gateway hands out.
    pub public_url: Option<String>,
    /// Answers shared between callers (`[shared_calls]`).
    pub shared_calls: SharedCallsConfig,
}

/// A routed operation and its path parameters.
type Route = (&'static Operation, Vec<(&'static str, String)>);

/// Per-request facts gathered by the phases, for the response and the audit record. Holds
/// names and ids only, never a PII value, token or secret.
#[derive(Default)]
struct Ctx {
    operation: Option<&'static Operation>,
    /// The calling tool (its client id and name) and its role.
    client_id: Option<String>,
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
    /// What the PII policy did (categories returned and their actions, safety-net hits).
    pii: Option<crate::pii::transform::Report>,
    /// Whether the request was sent upstream (besides `token`, set right before SP-API calls).
    upstream_called: bool,
    /// A document link was presented (`/v1/documents/{token}`), valid or not.
    document_link: bool,
    /// A report document being streamed: its id and what the redactor emits.
    document: Option<(String, Arc<accounting::Emitted>)>,
    /// The Orders 2026-01-01 operation a v0 call was translated to (compat).
    translated_to: Option<&'static Operation>,
    /// A gateway Restricted Data Token was issued, or presented (never the token itself).
    gateway_rdt: bool,
    /// Inside a forward-proxy tunnel: the Amazon host the tool tunnelled to (document links
    /// are built on it, the only host such a tool reaches).
    tunnel: Option<crate::server::forward::Tunnel>,
    /// Fields of the translated answer left out because their 2026 value could not be
    /// converted (compat; `None` when nothing was translated).
    unconverted: Option<u32>,
    /// The audit reason of a request answered without an error that still has one to tell
    /// (its token was healed and the request retried, see `send::heal_reason`).
    note: Option<crate::audit::Reason>,
    /// The answer was fetched upstream for the response cache (`x-spgate-cache: miss`).
    shared_miss: bool,
    /// The gateway's request id of this request.
    request_id: String,
    /// A shared answer's leader (its request id): the request that fetched it from Amazon.
    shared_from: Option<String>,
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
            compat: parts.compat,
            public_url: parts.public_url,
            shared_calls: SharedCalls::new(parts.shared_calls),
            replay_budget: send::ReplayBudget::new(parts.limits.replay_buffer_bytes),
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

    /// Answers shared between callers (counters for metrics).
    pub fn shared_calls(&self) -> &SharedCalls {
        &self.shared_calls
    }

    /// Request bodies held to be sent again (metrics).
    pub fn replay_budget(&self) -> &send::ReplayBudget {
        &self.replay_budget
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
                // Boxed: the pipeline's future is the request path's largest state (~10 KB),
                // and unboxed it was copied whole at every hand-over up to hyper (issue 16).
                // In its own store cache scope: one access version check per request.
                r = tracing::Instrument::instrument(Box::pin(crate::store::cache::request_scope(self.pipeline(req, &mut call.ctx))), span.clone()) => r,
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
            // Amazon's answer, or the caller's request body, did not arrive in time.
            Err(
                ProxyError::Upstream(UpstreamError::HeaderTimeout(_))
                | ProxyError::BodyRead(crate::server::peers::BodyReadError::Timeout(_)),
            ) => crate::audit::Outcome::Timeout,
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
        // Any answer that may carry buyer PII (an error's words too) goes out only once recorded.
        let durable = (served && reveal_path) || carries_pii(&call.ctx);
        // From here the record is in hand: dropping the future no longer loses it.
        call.recorded();
        match record {
            None => {}
            Some(r) if served && call.ctx.document.is_some() => {
                // Durable before the first byte goes out (a start record), and recorded
                // again when the stream ends: bytes, completion, categories emitted.
                let start = r
                    .clone()
                    .with_reason(crate::audit::Reason::DOWNLOAD_STARTED);
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
            // Awaits room in a full audit queue (bounded) without holding the thread.
            Some(r) => self.auditor.record_async(r).await,
        }
        if let Ok(v) = HeaderValue::from_str(&call.request_id) {
            // Amazon's id passes back on what Amazon answered; what the gateway answers itself
            // (refusals, 429s, the token endpoint, documents) carries the gateway's, so SDKs
            // report a request id either way.
            if !resp.headers().contains_key(crate::spapi::REQUEST_ID) {
                resp.headers_mut()
                    .insert(crate::spapi::REQUEST_ID, v.clone());
            }
            resp.headers_mut().insert(headers::REQUEST_ID, v);
        }
        resp
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
        ctx.tunnel = req.extensions().get().cloned();
        let limit_tripped = self.accept(&req)?; // 1. limits and framing
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
        let (caller, gateway_rdt) = self.caller(&req, ctx).await?; // 2. caller
        let (op, params) = self.route(&req)?; // 3. route
        self.retry.budget.earn();
        ctx.operation = Some(op);
        // A gateway RDT is good only for the resources it names.
        let grant = gateway_rdt
            .map(|t| t.covering(op, req.uri().path()))
            .transpose()?;
        if GATEWAY_OWN.contains(&op.key) {
            // Rotating the client secret would lock the gateway out.
            return Err(ProxyError::GatewayOwned);
        }
        self.pii_gate.check(op)?; // what the gateway does not know, it refuses
        let seller = self.authorize(&caller, op, req.headers()).await?; // 4. authorize
        ctx.seller = seller.as_ref().map(|s| s.selling_partner_id.clone());
        if op.key == rdt::RDT_OPERATION {
            // Answered with the gateway's own token: an Amazon RDT in a tool's hands would read
            // restricted data past the policy, the limiter and the audit log.
            return self
                .create_restricted_data_token(req, &caller, seller.as_ref(), ctx)
                .await;
        }
        // Under a gateway RDT, the role receives only what the token's dataElements cover.
        let narrowed = grant
            .as_ref()
            .map(|g| g.narrow(op, self.roles.get(&caller.client.role)));
        let role = narrowed
            .as_ref()
            .unwrap_or_else(|| self.roles.get(&caller.client.role));
        let within = grant.as_ref().and_then(|g| g.elements());
        // Compat: a v0 Orders call the tool's mode translates goes out as its 2026-01-01 call;
        // `wire` is the operation sent (credentials, rate limit, upstream), `op` the one answered.
        let (req, translation) =
            self.translate(req, (op, &params), &caller, seller.as_ref(), role)?;
        let wire = translation.as_ref().map_or(op, |t| t.target);
        let (req, replay) =
            Replay::capture(req, self.limits.body_read_timeout, &self.replay_budget).await?; // kept to send again
        let seller = seller.as_ref();
        let path = req.uri().path().to_string();
        let bucket = seller.map_or(APPLICATION_BUCKET, |s| s.selling_partner_id.as_str());
        let wants = Wants::from_request(&req)?;
        let deadline = Instant::now() + wants.max_wait.unwrap_or(self.retry.default_deadline);
        // The PII cache: a repeat read of one order's restricted data within the TTL spends no
        // Amazon quota; the role's policy still applies to the cached response.
        let plan = (&caller, &wants);
        if let Some(resp) = self
            .cached(op, role, seller, &req, &params, plan, ctx)
            .await?
        {
            return Ok(resp);
        }
        // Shared answers: a cached or coalesced answer spends no Amazon quota (plan and policy still apply).
        let body = replay.as_ref().map(Replay::body_bytes);
        let asking = shared_calls::Asking {
            op,
            wire,
            seller,
            caller: &caller,
            role,
            params: &params,
            wants: &wants,
            deadline,
            body,
        };
        let mut lead = match self.join_shared(asking, &req, ctx).await? {
            shared_calls::Joined::Answered(resp) => return Ok(resp),
            shared_calls::Joined::Lead(lead) => lead,
        };
        ctx.translated_to = translation.as_ref().map(|t| t.target); // compat: the 2026 call goes out
        let cred = self
            .credentials(wire, seller, role, &path, &caller.client.tool, within)
            .await?; // 5. credentials
                     // Taken last, right before sending, so that a slow credential fetch (a cold LWA or RDT
                     // call) never sits between the limiter's decision and the arrival at Amazon.
        ctx.admission = Some(self.admit(&caller, wire, bucket, &wants).await?); // 6. rate limit
        ctx.token = Some(cred.kind());
        lead.admitted(); // a write invalidates shared answers once it goes upstream
        let sent = async {
            let upstream_req =
                self.upstream_request(req, wire, seller, role, &cred, limit_tripped.clone())?;
            let resp = self.send(upstream_req, &limit_tripped).await?; // 7. upstream
            self.observe(bucket, wire, &resp);
            // Retries, only for requests that can be replayed (no body), within the caller's deadline.
            let resend = send::Resend {
                replay,
                op: wire,
                seller,
                role,
                path: &path,
                within,
                caller: &caller,
                bucket,
                wants,
                deadline,
                limit_tripped: &limit_tripped,
            };
            self.retries(resp, cred, resend, ctx).await
        };
        let resp = match sent.await {
            Ok(resp) => resp,
            Err(e) => {
                lead.failed().await; // a write's end announced before its error goes back
                return Err(e);
            }
        };
        let resp = lead.publish(resp, self.pii.max_response_bytes).await?; // to followers and the cache
        ctx.upstream_request_id = resp
            .headers()
            .get(crate::spapi::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string);
        let resp = self
            .translated_answer(resp, (op, translation.as_ref()), &caller, seller, role, ctx)
            .await?; // compat: the 2026 answer in v0's shape
        let resp = self.minimise(resp, op, role, seller, &params, ctx).await?; // 8. respond: the PII policy
        let mut resp = self.respond(resp); // the header allowlist, before the gateway's own headers
        if ctx.cache.is_some() || ctx.shared_miss {
            resp.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        }
        Ok(resp)
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

    /// Phase 2: who is calling: an API key, a drop-in gateway token, or a gateway Restricted
    /// Data Token (returned too: which resources it covers is checked after route).
    async fn caller<B>(
        &self,
        req: &Request<B>,
        ctx: &mut Ctx,
    ) -> Result<(Caller, Option<endpoints::rdt::Presented>), ProxyError> {
        let (caller, presented) = match endpoints::rdt::presented(req) {
            Some(token) => {
                let (caller, presented) = self.rdt_caller(req, token, ctx).await?;
                (caller, Some(presented))
            }
            None => (
                caller::authenticate_request(&*self.store, &self.client_pins(), req, unix_now())
                    .await?,
                None,
            ),
        };
        ctx.client_id = Some(caller.client.id.clone());
        ctx.tool = Some(caller.client.tool.clone());
        ctx.role = Some(caller.client.role.clone());
        Ok((caller, presented))
    }

    /// Phase 3: the operation for this method and path, and the path parameters.
    fn route<B>(&self, req: &Request<B>) -> Result<Route, ProxyError> {
        let catalog: &'static Catalog = self.catalog;
        catalog
            .route(req.method(), req.uri().path())
            .map(|r| (r.operation, r.params))
            .ok_or(ProxyError::NotFound)
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

    /// Phase 7: the response as the caller will see it.
    fn respond(&self, resp: Response<Body>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        headers::for_caller(&mut parts.headers, parts.status, &self.header_drops);
        Response::from_parts(parts, body)
    }
}

/// Operations only the gateway itself calls; tools are refused. (createRestrictedDataToken is
/// answered by the gateway itself, with its own token: [`endpoints::rdt`].)
pub const GATEWAY_OWN: [&str; 1] = ["application_2023-11-30.rotateApplicationClientSecret"];

/// The bucket grantless (application-wide) operations use instead of a seller's.
const APPLICATION_BUCKET: &str = "application";

/// Wall-clock time in unix seconds (token expiry, records).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
