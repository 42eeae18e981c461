//! The accept loop: connection limit, HTTP/1.1 with header limits, graceful drain on shutdown.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind port 0 and stop the
//! server whenever they like (mini-redis `server::run`).

pub mod framing;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::body::Body;

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Header bytes accepted (hyper's read buffer is sized from it).
    pub max_header_bytes: usize,
    /// How long a client may take to send its headers.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may finish after shutdown begins.
    pub drain_timeout: Duration,
}

/// Something that answers requests: the gateway, the sandbox, the admin router.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
    ) -> impl Future<Output = http::Response<Body>> + Send;
}

impl Handler for crate::proxy::Gateway {
    async fn call(self: Arc<Self>, req: http::Request<Incoming>) -> http::Response<Body> {
        self.handle(req).await
    }
}

/// The client's address, in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Serves `handler` on `listener` until `shutdown` completes, then drains in-flight requests for
/// at most `limits.drain_timeout`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Hyper refuses (431) anything past its buffer; our own check answers in SP-API's
        // shape below that, so the buffer leaves room above the configured limit.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok().map(PeerAddr);
        let (stream, conflict) = framing::Inspect::new(stream);
        let h = handler.clone();
        let svc = service_fn(move |mut req: http::Request<Incoming>| {
            if conflict.next_request_conflicts() {
                req.extensions_mut().insert(framing::Conflict);
            }
            if let Some(peer) = peer {
                req.extensions_mut().insert(peer);
            }
            let h = h.clone();
            async move { Ok::<_, Infallible>(h.call(req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("All connections drained."),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "Drain timed out; closing remaining connections.");
        }
    }
    Ok(())
}
