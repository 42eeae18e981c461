//! Every request in the audit log, however it ends.
//!
//! - [`Call`]: the request's context and a drop guard. `Gateway::handle` records the request
//!   when it produces a response; if the future is dropped first (the client went away, the
//!   shutdown drain cut it) or unwinds (a panic), the guard records it on drop with the outcome
//!   `client_closed`, `shutdown` or `panic`, and whether the upstream was called.
//! - [`Drain`]: the requests in flight, and the signal that cuts them when the shutdown drain
//!   times out (each answers 503 and is recorded as `shutdown` before the audit log closes).
//! - [`DocumentBody`]: a report document's response body, recorded as `documents.download`
//!   when the stream ends or is dropped: document id, the PII categories the redactor emitted
//!   with the action applied, bytes sent (handed to the connection) and whether the stream
//!   completed. It counts as in flight until then, and the drain's cut ends it (outcome
//!   `shutdown`), so its record is written before the audit log closes. The cut records the
//!   download itself rather than waiting for the body to be polled: a client that stopped
//!   reading leaves its connection blocked on a full socket, and hyper polls no body then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};

use super::body::{Body, BoxError};
use super::rescue::ProxyError;
use super::{documents, reveal, Ctx, Gateway, TokenKind};
use crate::audit::record::{self as ar, Outcome, Record};
use crate::audit::Auditor;
use crate::auth::caller;
use crate::pii::{Action, Category};
use http::Request;

/// The requests in flight and the drain's cut signal.
pub(crate) struct Drain {
    cut: tokio::sync::watch::Sender<bool>,
    in_flight: Arc<AtomicUsize>,
    /// Document downloads still streaming. The cut records each itself: a download whose
    /// client stopped reading is never polled again, so it would not see the cut.
    downloads: Mutex<Vec<Weak<Download>>>,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            cut: tokio::sync::watch::channel(false).0,
            in_flight: Arc::new(AtomicUsize::new(0)),
            downloads: Mutex::new(Vec::new()),
        }
    }

    /// Completes when the drain cuts requests in flight.
    pub(crate) async fn cut_signal(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Cuts every request in flight (they answer 503 and are recorded as `shutdown`); document
    /// downloads still streaming are recorded `shutdown` at once, with the bytes sent so far,
    /// and their streams end with an error if they are polled again.
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
        let downloads = std::mem::take(&mut *lock(&self.downloads));
        for download in downloads.iter().filter_map(Weak::upgrade) {
            download.finish(false, true);
        }
    }

    /// Whether the drain has cut.
    fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Keeps `download` where the cut finds it (forgetting downloads that ended).
    fn register(&self, download: &Arc<Download>) {
        let mut downloads = lock(&self.downloads);
        downloads.retain(|d| d.strong_count() > 0);
        downloads.push(Arc::downgrade(download));
    }

    /// Requests in flight (handled, not yet recorded), document streams included.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one more in flight until the guard drops.
    fn enter(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.in_flight.clone())
    }

    /// A future that completes when the drain cuts (owned, for bodies that outlive `handle`).
    fn cut_future(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.cut.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|c| *c).await;
        })
    }
}

/// One unit in flight; released on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The error a document stream ends with when the drain cuts it (the client sees an
/// aborted transfer, never a complete-looking truncated document).
#[derive(Debug, thiserror::Error)]
#[error("the gateway is shutting down; the document stream was cut")]
pub(crate) struct StreamCut;

/// One request's context, recorded on drop if `handle` did not record it.
pub(crate) struct Call<'a> {
    gateway: &'a Gateway,
    pub(crate) request_id: String,
    pub(crate) method: http::Method,
    pub(crate) started: std::time::Instant,
    pub(crate) ctx: Ctx,
    recorded: bool,
}

impl<'a> Call<'a> {
    pub(crate) fn new(gateway: &'a Gateway, request_id: String, method: http::Method) -> Call<'a> {
        gateway.drain.in_flight.fetch_add(1, Ordering::AcqRel);
        Call {
            gateway,
            request_id,
            method,
            started: std::time::Instant::now(),
            ctx: Ctx::default(),
            recorded: false,
        }
    }

    /// The request's record is in the auditor's hands (or deliberately replaced).
    pub(crate) fn recorded(&mut self) {
        self.recorded = true;
    }

    /// Whether it is.
    pub(crate) fn is_recorded(&self) -> bool {
        self.recorded
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let auditor = self.gateway.auditor();
            let outcome = if std::thread::panicking() {
                Outcome::Panic
            } else if auditor.draining() {
                Outcome::Shutdown
            } else {
                Outcome::ClientClosed
            };
            if let Some(r) = self.gateway.audit_request(
                &self.request_id,
                &self.method,
                &self.ctx,
                None,
                None,
                self.started,
                outcome,
            ) {
                auditor.record(r);
            }
        }
        self.gateway.drain.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a document download emitted, shared between the redactor and the body.
#[derive(Default)]
pub(crate) struct Emitted {
    categories: Mutex<Vec<(Category, Action)>>,
}

impl Emitted {
    fn note(&self, category: Category, action: Action) {
        let mut c = lock(&self.categories);
        if !c.iter().any(|(k, _)| *k == category) {
            c.push((category, action));
        }
    }
}

/// A redactor that notes which categories it emitted. Categories the role passes are routed
/// through `redact` too (which keeps them as they are), so they are noted as well.
pub(crate) struct Noting {
    inner: Arc<dyn crate::documents::Redactor>,
    emitted: Arc<Emitted>,
}

impl Noting {
    pub(crate) fn new(inner: Arc<dyn crate::documents::Redactor>) -> (Arc<Noting>, Arc<Emitted>) {
        let emitted = Arc::new(Emitted::default());
        (
            Arc::new(Noting {
                inner,
                emitted: emitted.clone(),
            }),
            emitted,
        )
    }
}

impl crate::documents::Redactor for Noting {
    fn redact(
        &self,
        category: Category,
        value: &str,
        order_id: Option<&str>,
    ) -> crate::documents::Decision {
        let out = self.inner.redact(category, value, order_id);
        if out != crate::documents::Decision::Drop {
            self.emitted.note(category, self.inner.action(category));
        }
        out
    }

    fn action(&self, category: Category) -> Action {
        match (category, self.inner.action(category)) {
            // Asked only when the document is opaque (a label, an image, a PDF): it passes
            // whole, and that is what the record notes.
            (Category::Document, Action::Pass) => {
                self.emitted.note(Category::Document, Action::Pass);
                Action::Pass
            }
            // Routed through `redact` (which keeps the value) so that it is noted.
            (_, Action::Pass) => Action::Mask,
            (_, a) => a,
        }
    }
}

/// A document download's record, finished exactly once: by the end of the stream, by the
/// drain's cut, or when the body is dropped.
struct Download {
    record: Mutex<Option<Record>>,
    /// Bytes handed to the connection so far.
    bytes: AtomicU64,
    emitted: Arc<Emitted>,
    auditor: Auditor,
    in_flight: Mutex<Option<InFlight>>,
}

impl Download {
    fn finish(&self, completed: bool, cut: bool) {
        let Some(mut r) = lock(&self.record).take() else {
            return;
        };
        r.bytes = Some(self.bytes.load(Ordering::Acquire));
        r.completed = Some(completed);
        if !completed && r.outcome == Some(Outcome::Answered) {
            r.outcome = Some(if cut || self.auditor.draining() {
                Outcome::Shutdown
            } else {
                Outcome::ClientClosed
            });
        }
        r.pii = lock(&self.emitted.categories)
            .iter()
            .map(|(category, action)| ar::PiiUse {
                category: *category,
                action: *action,
            })
            .collect();
        self.auditor.record(r);
        // Recorded: no longer holds the drain.
        lock(&self.in_flight).take();
    }
}

/// A document's response body that records the download when it ends, is cut by the drain
/// or is dropped; in flight until then.
pub(crate) struct DocumentBody {
    inner: Body,
    download: Arc<Download>,
    /// The drain's cut, until it fired (in a mutex only to be `Sync`; polled through
    /// `get_mut`).
    cut: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl DocumentBody {
    /// Wraps `inner`; `record` is the request's record (status, tool, seller, document id).
    pub(crate) fn new(
        inner: Body,
        record: Record,
        emitted: Arc<Emitted>,
        auditor: Auditor,
        drain: &Drain,
    ) -> DocumentBody {
        let download = Arc::new(Download {
            record: Mutex::new(Some(record)),
            bytes: AtomicU64::new(0),
            emitted,
            auditor,
            in_flight: Mutex::new(Some(drain.enter())),
        });
        drain.register(&download);
        if drain.is_cut() {
            // Answered as the drain cut: this stream ends before its first byte.
            download.finish(false, true);
        }
        DocumentBody {
            inner,
            download,
            cut: Mutex::new(Some(drain.cut_future())),
        }
    }
}

impl HttpBody for DocumentBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let cut = self.cut.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(signal) = cut.as_mut() else {
            // Cut before: the stream has ended with its error.
            return Poll::Ready(None);
        };
        if signal.as_mut().poll(cx).is_ready() {
            *cut = None;
            self.download.finish(false, true);
            return Poll::Ready(Some(Err(Box::new(StreamCut))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.download
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::AcqRel);
                }
            }
            Poll::Ready(Some(Err(_))) => self.download.finish(false, false),
            Poll::Ready(None) => self.download.finish(true, false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DocumentBody {
    fn drop(&mut self) {
        self.download.finish(false, false);
    }
}

/// A mutex's guard, whether or not a holder panicked (the data stays consistent: each holder
/// only takes or pushes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gateway {
    /// Whether the request may return buyer PII: a catalogued operation with a PII map, a
    /// reveal or a document download (routing only, no authentication).
    pub(super) fn may_carry_pii<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        path == reveal::PATH
            || path.starts_with(documents::PREFIX)
            || self
                .catalog
                .route(req.method(), path)
                .is_some_and(|r| r.operation.pii_map.is_some())
    }

    /// Whether the request is refused because the audit log cannot be written.
    pub(super) fn audit_refuses<B>(&self, req: &Request<B>) -> bool {
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
    pub(super) fn audit_request(
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
            r.translated_to = ctx.translated_to.map(|t| Id::lossy(t.key));
            r.unconverted = ctx.unconverted;
        } else if ctx.document_link {
            r.operation = Some(Id::lossy("documents.download"));
            r.method = Some(Name::lossy(method.as_str()));
            r.path = Some(Template::lossy("/v1/documents/{token}"));
            r.document_id = ctx.document.as_ref().map(|(id, _)| Id::lossy(id));
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
        r.gateway_rdt = ctx.gateway_rdt.then_some(true);
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
}

/// Whether the response carries buyer PII the caller receives (any category not dropped).
pub(super) fn carries_pii(ctx: &Ctx) -> bool {
    ctx.pii.as_ref().is_some_and(|r| {
        r.returned
            .iter()
            .any(|(_, a)| *a != crate::pii::Action::Drop)
    })
}

/// The audit reason code for an error (a fixed code, never the error's text).
pub(super) fn audit_reason(err: &ProxyError) -> crate::audit::Reason {
    use crate::audit::Reason;
    use caller::CallerError as C;
    match err {
        ProxyError::Caller(C::SellerNotAllowed) | ProxyError::Caller(C::ApplicationWide) => {
            Reason::SELLER_NOT_ALLOWED
        }
        ProxyError::Caller(
            C::MissingKey | C::MalformedKey | C::UnknownKey | C::TokenExpired | C::TokenInvalid,
        ) => Reason::UNAUTHENTICATED,
        ProxyError::RoleMayNotReceive | ProxyError::GatewayOwned => Reason::OPERATION_NOT_ALLOWED,
        ProxyError::Unclassified => Reason::from_static("operation_unclassified"),
        ProxyError::DocumentNotForRole => Reason::from_static("document_not_for_role"),
        ProxyError::Document(crate::documents::DocumentError::LinkExpired) => {
            Reason::from_static("document_link_expired")
        }
        ProxyError::Document(crate::documents::DocumentError::LinkInvalid) => {
            Reason::from_static("document_link_invalid")
        }
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
        ProxyError::GatewayRdt(e) => {
            use crate::proxy::endpoints::rdt::GatewayRdtError as R;
            match e {
                // As for a bad drop-in token; a forged one names nobody and is aggregated per
                // address, one of a revoked tool is recorded with its tool.
                R::Invalid => Reason::UNAUTHENTICATED,
                R::Expired => Reason::from_static("gateway_rdt_expired"),
                R::WrongResource => Reason::from_static("gateway_rdt_wrong_resource"),
                R::WrongSeller => Reason::from_static("gateway_rdt_wrong_seller"),
                R::WrongTool => Reason::from_static("gateway_rdt_wrong_tool"),
                R::Crypto(_) => Reason::from_static("gateway_rdt_unavailable"),
                R::Malformed
                | R::NoResources
                | R::TooManyResources
                | R::BadResource
                | R::BadDataElements
                | R::Delegation
                | R::NotRestricted => Reason::from_static("gateway_rdt_invalid_input"),
            }
        }
        ProxyError::Outbound(e) => e.reason(),
        _ => Reason::from_static("refused"),
    }
}

/// Request ids: a random per-process prefix and a counter, unique without a syscall per request.
pub(super) struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub(super) fn new() -> RequestIds {
        let prefix = crate::crypto::random_bytes::<6>()
            .map(|b| crate::crypto::hex(&b))
            .unwrap_or_else(|_| format!("{:012x}", std::process::id()));
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    pub(super) fn next(&self) -> String {
        format!(
            "{}-{:010x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}
