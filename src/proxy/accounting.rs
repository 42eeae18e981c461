//! Every request in the audit log, however it ends.
//!
//! - [`Call`]: the request's context and a drop guard. `Gateway::handle` records the request
//!   when it produces a response; if the future is dropped first (the client went away, the
//!   shutdown drain cut it) or unwinds (a panic), the guard records it on drop with the outcome
//!   `client_closed`, `shutdown` or `panic`, and whether the upstream was called.
//! - [`Drain`]: the requests in flight, and the signal that cuts them when the shutdown drain
//!   times out (each answers 503 and is recorded as `shutdown` before the audit log closes).
//! - [`DocumentBody`]: a report document's response body, recorded as `documents.download`
//!   when the stream ends, is cut or is dropped: document id, the PII categories the redactor
//!   emitted with the action applied, bytes sent (handed to the connection) and whether the
//!   stream completed. It counts as in flight until then. Two cuts end it from outside, so that
//!   a client that stopped reading (its connection blocked on a full socket: hyper polls no
//!   body then) cannot keep it in flight, unrecorded, or hold the document host's connection:
//!   the drain's (outcome `shutdown`, so its record is written
//!   before the audit log closes) and its deadline, `[outbound] document_timeout_seconds` after
//!   the download began (outcome `timeout`). A cut records the download with the bytes sent so
//!   far and drops the document's stream at once; the body ends with an error when polled.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

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
            download.cut(Outcome::Shutdown);
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
        let ctx = Ctx {
            request_id: request_id.clone(),
            ..Ctx::default()
        };
        Call {
            gateway,
            request_id,
            method,
            started: std::time::Instant::now(),
            ctx,
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

/// What a document download emitted, shared between the redactor and the body, and until when
/// it may stream.
pub(crate) struct Emitted {
    categories: Mutex<Vec<(Category, Action)>>,
    /// `[outbound] document_timeout_seconds` after the download began: the whole stream ends
    /// there, whether or not its client still reads.
    deadline: tokio::time::Instant,
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
    /// Notes what `inner` emits for a download that may stream until `deadline`.
    pub(crate) fn new(
        inner: Arc<dyn crate::documents::Redactor>,
        deadline: tokio::time::Instant,
    ) -> (Arc<Noting>, Arc<Emitted>) {
        let emitted = Arc::new(Emitted {
            categories: Mutex::new(Vec::new()),
            deadline,
        });
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

/// How a download ended, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The whole document went out.
    Completed,
    /// The document host or the redaction failed mid-stream.
    Failed,
    /// The body was dropped before its end: the client went away (or, while unwinding, a
    /// panic).
    Dropped,
    /// Cut by the gateway: the shutdown drain (`Shutdown`) or the download's deadline
    /// (`Timeout`).
    Cut(Outcome),
}

/// A document download's record, finished exactly once: by the end of the stream, by a cut
/// (the drain's, or the deadline's), or when the body is dropped.
struct Download {
    record: Mutex<Option<Record>>,
    /// Bytes handed to the connection so far.
    bytes: AtomicU64,
    emitted: Arc<Emitted>,
    auditor: Auditor,
    in_flight: Mutex<Option<InFlight>>,
    /// The document's stream until the download ends or is cut. A cut drops it at once (the
    /// document host's connection closes even if the client never reads again) and the body
    /// ends with an error when it is polled next.
    inner: Mutex<Option<Body>>,
    /// Why the stream was cut, for the error it ends with.
    cut: Mutex<Option<Outcome>>,
    /// The task polling the body, woken by a cut.
    waker: Mutex<Option<Waker>>,
}

impl Download {
    fn finish(&self, end: End) {
        let Some(mut r) = lock(&self.record).take() else {
            return;
        };
        r.bytes = Some(self.bytes.load(Ordering::Acquire));
        r.completed = Some(end == End::Completed);
        if end != End::Completed && r.outcome == Some(Outcome::Answered) {
            r.outcome = Some(match end {
                End::Cut(outcome) => outcome,
                _ if std::thread::panicking() => Outcome::Panic,
                _ if self.auditor.draining() => Outcome::Shutdown,
                // Past the deadline the document host's own deadline may fail the stream first.
                End::Failed if tokio::time::Instant::now() >= self.emitted.deadline => {
                    Outcome::Timeout
                }
                End::Failed => {
                    r.reason = Some(crate::audit::Reason::from_static("document_stream_failed"));
                    Outcome::Answered
                }
                End::Completed | End::Dropped => Outcome::ClientClosed,
            });
        }
        r.pii = lock(&self.emitted.categories)
            .iter()
            .map(|(category, action)| ar::PiiUse {
                category: *category,
                action: *action,
            })
            .collect();
        // Written at once, not at the end of the write window.
        self.auditor.record_urgent(r);
        // Recorded: no longer holds the drain.
        lock(&self.in_flight).take();
    }

    /// Ends the download now (`outcome`: `shutdown` or `timeout`): records it with the bytes
    /// sent so far and drops the document's stream, whether or not the body is polled again.
    fn cut(&self, outcome: Outcome) {
        lock(&self.cut).get_or_insert(outcome);
        let stream = lock(&self.inner).take();
        self.finish(End::Cut(outcome));
        drop(stream);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

/// A document's response body that records the download when it ends, is cut or is dropped;
/// in flight until then. At its deadline it is cut (recorded `timeout`) even if its client has
/// stopped reading and nothing polls it.
pub(crate) struct DocumentBody {
    download: Arc<Download>,
    /// The error after a cut has been returned: the stream is over.
    ended: bool,
    /// The deadline's timer task, stopped when the body goes.
    timer: Option<tokio::task::AbortHandle>,
}

/// The error a document stream ends with when its deadline cuts it.
#[derive(Debug, thiserror::Error)]
#[error("the document download ran past its deadline and was cut")]
pub(crate) struct StreamTimedOut;

impl DocumentBody {
    /// Wraps `inner`; `record` is the request's record (status, tool, seller, document id).
    /// Call within the runtime (the deadline's timer is a task).
    pub(crate) fn new(
        inner: Body,
        record: Record,
        emitted: Arc<Emitted>,
        auditor: Auditor,
        drain: &Drain,
    ) -> DocumentBody {
        let deadline = emitted.deadline;
        let download = Arc::new(Download {
            record: Mutex::new(Some(record)),
            bytes: AtomicU64::new(0),
            emitted,
            auditor,
            in_flight: Mutex::new(Some(drain.enter())),
            inner: Mutex::new(Some(inner)),
            cut: Mutex::new(None),
            waker: Mutex::new(None),
        });
        drain.register(&download);
        if drain.is_cut() {
            // Answered as the drain cut: this stream ends before its first byte.
            download.cut(Outcome::Shutdown);
        }
        let timer = {
            let download = Arc::downgrade(&download);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(download) = download.upgrade() {
                    if lock(&download.record).is_some() {
                        tracing::warn!(
                            "A document download ran past document_timeout_seconds and was cut."
                        );
                    }
                    download.cut(Outcome::Timeout);
                }
            })
            .abort_handle()
        };
        DocumentBody {
            download,
            ended: false,
            timer: Some(timer),
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
        let this = &mut *self;
        let download = &*this.download;
        *lock(&download.waker) = Some(cx.waker().clone());
        let mut inner = lock(&download.inner);
        let Some(stream) = inner.as_mut() else {
            drop(inner);
            if std::mem::replace(&mut this.ended, true) {
                return Poll::Ready(None);
            }
            // Cut: the client sees an aborted transfer, never a complete-looking document.
            let err: BoxError = match *lock(&download.cut) {
                Some(Outcome::Timeout) => Box::new(StreamTimedOut),
                _ => Box::new(StreamCut),
            };
            return Poll::Ready(Some(Err(err)));
        };
        let polled = Pin::new(stream).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    download
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::AcqRel);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                inner.take();
                this.ended = true;
                drop(inner);
                download.finish(End::Failed);
            }
            Poll::Ready(None) => {
                inner.take();
                this.ended = true;
                drop(inner);
                download.finish(End::Completed);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match lock(&self.download.inner).as_ref() {
            Some(stream) => stream.is_end_stream(),
            None => self.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.download.inner)
            .as_ref()
            .map(|s| s.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for DocumentBody {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.download.finish(End::Dropped);
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
        r.reason = reason.or_else(|| ctx.note.clone());
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
        r.shared_from = ctx.shared_from.as_deref().map(Id::lossy);
        Some(r)
    }
}

/// Whether the response may carry buyer PII the caller receives (any category not dropped):
/// a success's fields, or Amazon's error text passed to a role that passes every category (see
/// `note_free_text` in `policy.rs`). Such an answer is sent only once its record is written.
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
        ProxyError::RateLimited(crate::ratelimit::RateLimitError::Deferred { .. }) => {
            Reason::RATE_LIMITED_DEFERRED
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
        ProxyError::ReplayBudget => Reason::from_static("replay_buffer_full"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    /// A document stream: a first chunk, then what `then` does on every later poll.
    struct Stream {
        first: Option<bytes::Bytes>,
        then: Then,
    }

    #[derive(Clone, Copy)]
    enum Then {
        Panic,
        Fail,
        Stall,
    }

    impl HttpBody for Stream {
        type Data = bytes::Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
            if let Some(chunk) = self.first.take() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match self.then {
                Then::Panic => panic!("the redactor panicked (test)"),
                Then::Fail => Poll::Ready(Some(Err("the document host failed (test)".into()))),
                Then::Stall => Poll::Pending,
            }
        }
    }

    /// An auditor on a fresh directory, a drain, and a download body of `then` with `deadline`.
    fn download(
        then: Then,
        deadline: Duration,
    ) -> (tempfile::TempDir, Auditor, Arc<Drain>, DocumentBody) {
        let dir = tempfile::tempdir().unwrap();
        let auditor = Auditor::start(&crate::audit::AuditConfig {
            dir: dir.path().to_path_buf(),
            instance: "docs".into(),
            key: crate::secret::Secret::new(b"synthetic-audit-key-0123456789abcdef".to_vec()),
            retain_days: 365,
            fsync: crate::audit::FsyncPolicy::Never,
            queue_capacity: 1024,
            write_delay: Duration::from_millis(50),
            full_wait: Duration::from_millis(100),
            stall_timeout: Duration::from_secs(10),
            on_failure: crate::audit::OnFailure::Refuse,
            alerts: crate::audit::AlertRules::default(),
        })
        .unwrap();
        let drain = Arc::new(Drain::new());
        let emitted = Arc::new(Emitted {
            categories: Mutex::new(vec![(Category::Address, Action::Mask)]),
            deadline: tokio::time::Instant::now() + deadline,
        });
        let inner = BodyExt::boxed(Stream {
            first: Some(bytes::Bytes::from_static(b"order-id\tship-address\n")),
            then,
        });
        let mut record = Record::request("req-doc").with_status(200);
        record.outcome = Some(Outcome::Answered);
        let body = DocumentBody::new(inner, record, emitted, auditor.clone(), &drain);
        (dir, auditor, drain, body)
    }

    /// The download's record, once written.
    async fn record(dir: &std::path::Path, auditor: &Auditor) -> serde_json::Value {
        for _ in 0..200 {
            auditor.flush().await;
            let found = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .flat_map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap()
                        .lines()
                        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                        .collect::<Vec<_>>()
                })
                .find(|r| r["request_id"] == "req-doc");
            if let Some(r) = found {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the download was never recorded");
    }

    fn check(record: &serde_json::Value, outcome: &str, reason: Option<&str>) {
        assert_eq!(record["outcome"], outcome, "{record:#}");
        assert_eq!(record["completed"], false, "{record:#}");
        assert_eq!(record["bytes"], 22, "{record:#}");
        assert_eq!(record["reason"].as_str(), reason, "{record:#}");
        assert_eq!(record["pii"][0]["category"], "address", "{record:#}");
    }

    #[tokio::test]
    async fn a_panic_inside_a_download_body_is_recorded_as_a_panic() {
        let (dir, auditor, drain, mut body) = download(Then::Panic, Duration::from_secs(600));
        // Polled by a connection task, as hyper does: the panic unwinds it and drops the body.
        let task = tokio::spawn(async move { while body.frame().await.is_some() {} });
        assert!(task.await.unwrap_err().is_panic());
        check(&record(dir.path(), &auditor).await, "panic", None);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_document_stream_that_fails_is_recorded_as_failed_not_as_the_client_leaving() {
        let (dir, auditor, drain, mut body) = download(Then::Fail, Duration::from_secs(600));
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
        check(
            &record(dir.path(), &auditor).await,
            "answered",
            Some("document_stream_failed"),
        );
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_download_nobody_reads_is_cut_at_its_deadline_and_recorded_as_a_timeout() {
        let (dir, auditor, drain, mut body) = download(Then::Stall, Duration::from_millis(200));
        // The client read the first chunk, then stopped reading: nothing polls the body.
        assert!(body.frame().await.unwrap().is_ok());
        assert_eq!(drain.in_flight(), 1);
        check(&record(dir.path(), &auditor).await, "timeout", None);
        assert_eq!(drain.in_flight(), 0);
        // The document's stream is gone; polled again, the body ends with the cut's error.
        assert!(lock(&body.download.inner).is_none());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<StreamTimedOut>(), "{err}");
        assert!(body.frame().await.is_none());
    }
}
