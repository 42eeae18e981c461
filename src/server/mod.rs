//! The accept loop: connection limit, HTTP/1.1 with header limits, graceful drain on shutdown;
//! with [`tls::TlsListener`], TLS first and HTTP/2 when the client picks it over ALPN.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind port 0 and stop the
//! server whenever they like (mini-redis `server::run`).

pub mod framing;
pub mod h2;
pub mod peers;
pub mod tls;

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

use crate::net::body::Body;

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
    /// Per-address connection cap and unauthenticated rate limit.
    pub peers: peers::PeerLimits,
}

/// Something that answers requests: the gateway, the sandbox, the admin router.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
    ) -> impl Future<Output = http::Response<Body>> + Send;

    /// Answers a request the per-address limits refused before it was handled (the gateway
    /// counts it in its audit log's aggregates).
    fn refused(&self, _ip: std::net::IpAddr, err: &peers::PeerError) -> http::Response<Body> {
        crate::proxy::rescue::peer_refused(err)
    }
}

impl Handler for crate::proxy::Gateway {
    async fn call(self: Arc<Self>, req: http::Request<Incoming>) -> http::Response<Body> {
        self.handle(req).await
    }

    fn refused(&self, ip: std::net::IpAddr, err: &peers::PeerError) -> http::Response<Body> {
        if self.auditor().enabled() {
            self.auditor().noise().count(ip, "address_limited");
        }
        crate::proxy::rescue::peer_refused(err)
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
    serve_with_tls(listener, handler, limits, None, shutdown).await
}

/// [`serve`], with TLS when `tls` is given: each connection's handshake runs in its own task
/// (bounded by the header read timeout) with the certificate current at that moment.
pub async fn serve_with_tls<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    tls: Option<Arc<tls::TlsListener>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = peers::Peers::new(limits.peers);
    let graceful = GracefulShutdown::new();
    // HTTP/2 connections close themselves when idle, so they watch this instead of `graceful`.
    let (stop_h2, h2_stop) = tokio::sync::watch::channel(());
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
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, addr) = stream;
        // Past the address's share the connection is closed at once, freeing its permit.
        let Ok(slot) = peers.connect(addr.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = Client {
            handler: handler.clone(),
            peers: peers.clone(),
            addr,
        };
        let Some(tls) = tls.clone() else {
            let conn = graceful.watch(serve_http1(&http, stream, client, None));
            tokio::spawn(async move {
                log_end(conn.await);
                drop((slot, permit));
            });
            continue;
        };
        let (http, watcher, h2_stop) = (http.clone(), graceful.watcher(), h2_stop.clone());
        tokio::spawn(async move {
            match tls.accept(stream, limits.header_read_timeout).await {
                Ok(a) if a.h2 => {
                    let svc = service(client, None, Some(a.peer));
                    log_end(h2::serve(a.stream, svc, limits, h2_stop).await);
                    drop(watcher);
                }
                Ok(a) => log_end(
                    watcher
                        .watch(serve_http1(&http, a.stream, client, Some(a.peer)))
                        .await,
                ),
                Err(e) => {
                    client.peers.handshake_failed(client.addr.ip());
                    tracing::debug!(error = %e, "TLS handshake failed.");
                }
            }
            drop((slot, permit));
        });
    }
    drop((listener, h2_stop));
    let _ = stop_h2.send(());
    let drained = async {
        tokio::join!(graceful.shutdown(), stop_h2.closed());
    };
    tokio::select! {
        () = drained => tracing::info!("All connections drained."),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "Drain timed out; closing remaining connections.");
        }
    }
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection ended with an error.");
    }
}

/// One HTTP/1.1 connection, its request heads watched for ambiguous framing.
fn serve_http1<H: Handler, S>(
    http: &hyper::server::conn::http1::Builder,
    stream: S,
    client: Client<H>,
    peer: Option<tls::PeerCert>,
) -> impl hyper_util::server::graceful::GracefulConnection<Output = Result<(), hyper::Error>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (stream, conflict) = framing::Inspect::new(stream);
    http.serve_connection(TokioIo::new(stream), service(client, Some(conflict), peer))
}

/// Who a connection serves: the handler, and the client address its requests are counted
/// against (per-address limits).
struct Client<H> {
    handler: Arc<H>,
    peers: Arc<peers::Peers>,
    addr: std::net::SocketAddr,
}

/// The per-connection service: tags each request with what the connection knows.
fn service<H: Handler>(
    client: Client<H>,
    conflict: Option<Arc<framing::ConflictAt>>,
    peer: Option<tls::PeerCert>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |mut req: http::Request<Incoming>| {
        if conflict
            .as_ref()
            .is_some_and(|c| c.next_request_conflicts())
        {
            req.extensions_mut().insert(framing::Conflict);
        }
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        req.extensions_mut().insert(PeerAddr(client.addr));
        let (h, p, ip) = (
            client.handler.clone(),
            client.peers.clone(),
            client.addr.ip(),
        );
        async move { Ok::<_, Infallible>(peers::call(&p, ip, h, req).await) }
    })
}
