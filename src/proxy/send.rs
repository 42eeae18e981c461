//! Phase 7, upstream: the request as SP-API sees it (region from the seller's record, header
//! allowlist, token, optional SigV4), sent; and the bounded retries of requests that can be
//! replayed (bodiless, or a small body read whole first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::auth::caller::Caller;
use crate::auth::lwa::{Heal, LwaError};
use crate::auth::rdt;
use crate::catalog::Operation;
use crate::net::body::{self, Body, BoxError, Limited};
use crate::net::upstream::UpstreamError;
use crate::pii::Role;
use crate::spapi::{mentions_access_token, ErrorBody};
use crate::store::SellerRecord;

use super::credentials::Credential;
use super::limit::Wants;
use super::rescue::ProxyError;
use super::{headers, Ctx, Gateway};

/// What a retry needs to send a request again.
pub(super) struct Resend<'a> {
    /// The request, if it can be replayed.
    pub(super) replay: Option<Replay>,
    pub(super) op: &'static Operation,
    pub(super) seller: Option<&'a SellerRecord>,
    pub(super) role: &'a Role,
    pub(super) path: &'a str,
    /// The `dataElements` a gateway RDT allows the real RDT to ask for.
    pub(super) within: Option<&'a [&'static str]>,
    pub(super) caller: &'a Caller,
    pub(super) bucket: &'a str,
    pub(super) wants: Wants,
    /// The caller's deadline.
    pub(super) deadline: Instant,
    pub(super) limit_tripped: &'a Arc<AtomicBool>,
}

impl Gateway {
    /// Phase 6 (preparation): the request as SP-API will see it.
    pub(super) fn upstream_request<B>(
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

    pub(super) async fn send(
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

    /// Retries, only for requests that can be replayed (bodiless, or with a small body read
    /// whole, see [`Replay::capture`]), within the caller's deadline and with a fresh
    /// rate-limit token each time:
    /// - once with fresh credentials after Amazon rejected the token: a 401 or a 403 naming
    ///   the access token (forgotten), or a bare 403 (`Unauthorized`, empty details) that
    ///   [`Lwa::heal`](crate::auth::lwa::Lwa::heal) takes as a token Amazon lost. Amazon
    ///   refuses these before acting, so even a POST is sent again;
    /// - for idempotent requests after 429/5xx with backoff and jitter, within the retry budget.
    ///
    /// Credentials are forgotten (or healed) whether or not the request can be sent again, so
    /// the next request goes with a new token.
    pub(super) async fn retries(
        &self,
        mut resp: Response<Body>,
        mut cred: Credential,
        r: Resend<'_>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        let mut attempt = 0u32;
        // A healed token's resend: recorded as `token_lost_retried` only once it goes out.
        let mut heal_resend = false;
        loop {
            let status = resp.status();
            let fresh_token = match (attempt, rejection(&mut resp).await) {
                (_, Rejection::None) => false,
                (_, Rejection::Token) => {
                    self.forget(&cred).await;
                    attempt == 0
                }
                (0, Rejection::Bare) => {
                    let heal = self.heal(&cred).await;
                    // As if not sent again, until it is (a deadline or the limiter may stop it).
                    ctx.note = heal_reason(heal, false);
                    heal_resend = heal.retries() && r.replay.is_some();
                    heal.retries()
                }
                // Refreshed once already: a second bare 403 is Amazon's answer.
                (_, Rejection::Bare) => false,
            };
            let Some(replay) = &r.replay else { break };
            let pause = if fresh_token {
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
            if Instant::now() + pause >= r.deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            let remaining = r.deadline.saturating_duration_since(Instant::now());
            let again = Wants {
                max_wait: Some(remaining),
                ..r.wants
            };
            attempt += 1;
            cred = self
                .credentials(
                    r.op,
                    r.seller,
                    r.role,
                    r.path,
                    &r.caller.client.tool,
                    r.within,
                )
                .await?;
            match self.admit(r.caller, r.op, r.bucket, &again).await {
                Ok(admission) => ctx.admission = Some(admission),
                Err(_) => break, // no token in time: answer with what Amazon said
            }
            ctx.token = Some(cred.kind());
            if std::mem::take(&mut heal_resend) {
                ctx.note = heal_reason(Heal::Refreshed, true);
                self.lwa.healed_retry();
            }
            let req = self.upstream_request(
                replay.request(),
                r.op,
                r.seller,
                r.role,
                &cred,
                r.limit_tripped.clone(),
            )?;
            resp = self.send(req, r.limit_tripped).await?;
            self.observe(r.bucket, r.op, &resp);
        }
        Ok(resp)
    }
}

/// The audit reason of a request whose token met a bare 403 (none when the 403 was taken as a
/// permission refusal).
fn heal_reason(heal: Heal, resent: bool) -> Option<crate::audit::Reason> {
    use crate::audit::Reason;
    match heal {
        Heal::Refreshed | Heal::Replaced if resent => {
            Some(Reason::from_static("token_lost_retried"))
        }
        Heal::Refreshed => Some(Reason::from_static("token_lost_refreshed")),
        Heal::Bounded | Heal::BoundedTotal => Some(Reason::from_static("token_lost_bounded")),
        Heal::Replaced | Heal::Young | Heal::Off => None,
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
    pub(super) fn earn(&self) {
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

/// What a response says about the token it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    /// Nothing: the token was accepted (or the answer is not about it).
    None,
    /// SP-API rejected the token itself: any 401, or a 403 whose error body names the access
    /// token ("...has expired", "...is revoked, malformed or invalid").
    Token,
    /// A bare 403: every error `Unauthorized` with empty details. Amazon answers a token it no
    /// longer knows and a call the application may not make alike; [`Lwa::heal`] decides.
    ///
    /// [`Lwa::heal`]: crate::auth::lwa::Lwa::heal
    Bare,
}

/// Reads what a response says about its token. Other 403s (a named permission problem) keep
/// the token: evicting it would cost an LWA and RDT call per such request. A 403 body is small;
/// it is read (within the response's total deadline) and put back.
async fn rejection(resp: &mut Response<Body>) -> Rejection {
    match resp.status() {
        http::StatusCode::UNAUTHORIZED => Rejection::Token,
        http::StatusCode::FORBIDDEN => {
            let taken = std::mem::replace(resp.body_mut(), body::empty());
            match taken.collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    let found = if mentions_access_token(&bytes) {
                        Rejection::Token
                    } else if is_bare_refusal(&bytes) {
                        Rejection::Bare
                    } else {
                        Rejection::None
                    };
                    *resp.body_mut() = body::full(bytes);
                    found
                }
                Err(_) => Rejection::None,
            }
        }
        _ => Rejection::None,
    }
}

/// Whether a 403 body is Amazon's bare refusal: at least one error, each `Unauthorized` with
/// empty (or no) details.
fn is_bare_refusal(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|b| {
        !b.errors.is_empty()
            && b.errors
                .iter()
                .all(|e| e.code == "Unauthorized" && e.details.trim().is_empty())
    })
}

/// The largest request body kept for sending again (read whole before the request goes out);
/// larger bodies, and bodies without `Content-Length`, stream once and are never replayed.
pub(super) const REPLAY_BODY_MAX_BYTES: u64 = 256 * 1024;

/// The bytes of request bodies held for sending again, all requests together
/// (`[server] replay_buffer_bytes`): bodies are read whole before the limiter, so without a
/// bound many slow or waiting requests could hold `REPLAY_BODY_MAX_BYTES` each. Past it, a
/// request with a body is refused with 503 (`ServiceUnavailable`, `Retry-After`), counted.
pub struct ReplayBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    total: usize,
    refused: std::sync::atomic::AtomicU64,
}

impl ReplayBudget {
    /// A budget of `total` bytes (at least [`REPLAY_BODY_MAX_BYTES`], see the config).
    pub fn new(total: usize) -> ReplayBudget {
        let total = total.min(tokio::sync::Semaphore::MAX_PERMITS);
        ReplayBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Holds `n` bytes until the permit drops, or refuses at once.
    fn take(&self, n: u64) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
        u32::try_from(n)
            .ok()
            .and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                ProxyError::ReplayBudget
            })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// Requests refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP spgate_replay_buffer_bytes Bytes of request bodies held to be sent again (bounded by server.replay_buffer_bytes).
# TYPE spgate_replay_buffer_bytes gauge
spgate_replay_buffer_bytes {}", self.held());
        let _ = writeln!(out, "# HELP spgate_replay_buffer_refused_total Requests refused with 503 because server.replay_buffer_bytes was held by other requests.
# TYPE spgate_replay_buffer_refused_total counter
spgate_replay_buffer_refused_total {}", self.refused());
    }
}

/// Reads a body to its end (or the deadline), keeping nothing.
async fn discard<B>(mut body: B, within: Duration)
where
    B: HttpBody<Data = bytes::Bytes> + Unpin,
{
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// What is needed to send a request a second time.
pub(super) struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: bytes::Bytes,
    /// The body's bytes in the [`ReplayBudget`], given back when the replay drops.
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Replay {
    /// Captures the request for sending again: bodiless, or with a `Content-Length` of at most
    /// [`REPLAY_BODY_MAX_BYTES`], whose body is read whole now (within `read_within`, its
    /// length held in `budget` first: 503 when the budget is spent). Other requests are passed
    /// on with their body still streaming, and no replay.
    pub(super) async fn capture<B>(
        req: Request<B>,
        read_within: Duration,
        budget: &ReplayBudget,
    ) -> Result<(Request<Body>, Option<Replay>), ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let small = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n <= REPLAY_BODY_MAX_BYTES);
        if !req.body().is_end_stream() && small.is_none() {
            return Ok((req.map(|b| b.map_err(Into::into).boxed()), None));
        }
        let (parts, body) = req.into_parts();
        let (bytes, held) = match small {
            Some(n) if n > 0 && !body.is_end_stream() => {
                let held = match budget.take(n) {
                    Ok(held) => held,
                    Err(refused) => {
                        // Read and dropped (frame by frame, at most `n` bytes, within the
                        // deadline), so the client gets its 503 on a connection it finished
                        // writing to instead of a reset.
                        discard(body, read_within).await;
                        return Err(refused);
                    }
                };
                let bytes = crate::server::peers::read_body(
                    body,
                    REPLAY_BODY_MAX_BYTES as usize,
                    read_within,
                )
                .await?;
                (bytes, Some(held))
            }
            _ if body.is_end_stream() => (bytes::Bytes::new(), None),
            // `Content-Length: 0` with a body still to come cannot be; read it as framed.
            _ => (
                crate::server::peers::read_body(body, 0, read_within).await?,
                None,
            ),
        };
        let replay = Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: bytes,
            _held: held,
        };
        Ok((Request::from_parts(parts, replay.body()), Some(replay)))
    }

    /// The body as read (empty for a bodiless request).
    pub(super) fn body_bytes(&self) -> &bytes::Bytes {
        &self.body
    }

    fn body(&self) -> Body {
        if self.body.is_empty() {
            body::empty()
        } else {
            body::full(self.body.clone())
        }
    }

    pub(super) fn request(&self) -> Request<Body> {
        let mut req = Request::new(self.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// Whether sending it twice has the effect of sending it once.
    pub(super) fn idempotent(&self) -> bool {
        matches!(
            self.method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE
        )
    }
}
