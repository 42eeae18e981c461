//! The accept loop: connection limit, HTTP/1.1 with header limits, a write-progress deadline
//! ([`write_deadline`]), graceful drain on shutdown;
//! with [`tls::TlsListener`], TLS first and HTTP/2 when the client picks it over ALPN.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind port 0 and stop the
//! server whenever they like (mini-redis `server::run`).

pub mod forward;
pub mod framing;
pub mod h2;
pub mod mint;
pub mod peers;
pub mod tls;
pub mod write_deadline;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

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
    /// A connection whose client accepts no bytes for this long is closed
    /// ([`write_deadline`]).
    pub write_timeout: Duration,
    /// Per-address connection cap and unauthenticated rate limit.
    pub peers: peers::PeerLimits,
}

impl ServerLimits {
    /// How long a connection stays open after shutdown begins: the drain, then [`CUT_GRACE`]
    /// for the answers of requests the drain cut (503, recorded `shutdown`) to be written.
    pub fn connection_drain(&self) -> Duration {
        self.drain_timeout + CUT_GRACE
    }
}

/// After the drain times out, the handler cuts what is still in flight (the gateway answers
/// 503 and records `shutdown`); connections stay open this much longer so those answers reach
/// their clients instead of a reset.
pub const CUT_GRACE: Duration = Duration::from_secs(2);

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

    /// Counts a request refused before authentication in the handler's aggregates (the
    /// gateway's audit log), e.g. a CONNECT to a host the forward proxy does not serve.
    fn noise(&self, _ip: std::net::IpAddr, _reason: &'static str) {}

    /// Records a forward-proxy tunnel accepted for `host` (the gateway's audit log).
    fn tunnel_opened(&self, _ip: std::net::IpAddr, _host: &str) {}
}

impl Handler for crate::proxy::Gateway {
    async fn call(self: Arc<Self>, req: http::Request<Incoming>) -> http::Response<Body> {
        // With a forward proxy the server answers CONNECT before this; here there is none.
        if let Some(refused) = forward::disabled(&req) {
            if let Some(crate::server::PeerAddr(addr)) = req.extensions().get().copied() {
                self.noise(addr.ip(), "connect_refused");
            }
            return refused;
        }
        self.handle(req).await
    }

    fn noise(&self, ip: std::net::IpAddr, reason: &'static str) {
        if self.auditor().enabled() {
            self.auditor().noise().count(ip, reason);
        }
    }

    fn refused(&self, ip: std::net::IpAddr, err: &peers::PeerError) -> http::Response<Body> {
        if self.auditor().enabled() {
            self.auditor().noise().count(ip, "address_limited");
        }
        crate::proxy::rescue::peer_refused(err)
    }

    fn tunnel_opened(&self, ip: std::net::IpAddr, host: &str) {
        if self.auditor().enabled() {
            self.auditor()
                .record(crate::audit::Record::tunnel(ip, host));
        }
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
    serve_with(listener, handler, limits, Extras::default(), shutdown).await
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
    let extras = Extras { tls, forward: None };
    serve_with(listener, handler, limits, extras, shutdown).await
}

/// What a listener adds to plain HTTP/1.1.
#[derive(Default)]
pub struct Extras {
    /// TLS (and HTTP/2 over ALPN).
    pub tls: Option<Arc<tls::TlsListener>>,
    /// Forward-proxy mode: CONNECT to Amazon's hosts answered by the gateway itself.
    pub forward: Option<Arc<forward::Forward>>,
}

/// [`serve`] with [`Extras`].
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let Extras { tls, forward } = extras;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = peers::Peers::new(limits.peers);
    // Every connection (and tunnel) holds a receiver: a change closes it gracefully, and the
    // drain waits until all receivers are gone.
    let (stop_tx, stop_rx) = watch::channel(());
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
            forward: forward.clone(),
            http: http.clone(),
            limits,
            stop: stop_rx.clone(),
            held: Arc::new((slot, permit)),
            tunnel: None,
            http2: false,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let conn = serve_http1(&client.http.clone(), stream, client.clone(), None);
                log_end(until_stopped(conn, client.stop, limits).await);
                return;
            };
            match tls.accept(stream, limits.header_read_timeout).await {
                Ok(a) if a.h2 => {
                    let stop = client.stop.clone();
                    let client = Client {
                        http2: true,
                        ..client
                    };
                    let svc = service(client, None, Some(a.peer));
                    let stream = write_deadline::WriteDeadline::new(a.stream, limits.write_timeout);
                    log_end(h2::serve(stream, svc, limits, stop).await);
                }
                Ok(a) => {
                    let conn =
                        serve_http1(&client.http.clone(), a.stream, client.clone(), Some(a.peer));
                    log_end(until_stopped(conn, client.stop, limits).await);
                }
                Err(e) => {
                    client.peers.handshake_failed(client.addr.ip());
                    tracing::debug!(error = %e, "TLS handshake failed.");
                }
            }
        });
    }
    drop((listener, stop_rx));
    let _ = stop_tx.send(());
    tokio::select! {
        () = stop_tx.closed() => tracing::info!("All connections drained."),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "Drain timed out; closing remaining connections.");
        }
    }
    Ok(())
}

/// Runs an HTTP/1.1 connection until it ends; once the server stops, it finishes the request in
/// flight and closes (within the drain bound plus the grace for a cut request's answer).
async fn until_stopped<C>(
    conn: C,
    mut stop: watch::Receiver<()>,
    limits: ServerLimits,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>> + Http1Graceful,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = stop.changed() => {}
    }
    conn.as_mut().begin_shutdown();
    match tokio::time::timeout(limits.connection_drain(), conn).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// hyper's HTTP/1.1 connection with upgrades (CONNECT), which hyper-util's graceful helper
/// does not cover.
trait Http1Graceful {
    fn begin_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Http1Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn begin_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Serves the requests inside a forward-proxy tunnel: HTTP/1.1 over the TLS stream, with the
/// connection's client, limits and slot (released when the tunnel closes), and the outer
/// connection's client certificate (`peer`, none on a plain listener).
async fn serve_tunnel<H: Handler, S>(
    mut client: Client<H>,
    stream: S,
    peer: Option<tls::PeerCert>,
    tunnel: forward::Tunnel,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    client.tunnel = Some(tunnel);
    let (stop, limits) = (client.stop.clone(), client.limits);
    let conn = serve_http1(&client.http.clone(), stream, client, peer);
    log_end(until_stopped(conn, stop, limits).await);
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection ended with an error.");
    }
}

/// One HTTP/1.1 connection, its request heads watched for ambiguous framing; upgrades (a
/// forward-proxy CONNECT) allowed.
fn serve_http1<H: Handler, S>(
    http: &hyper::server::conn::http1::Builder,
    stream: S,
    client: Client<H>,
    peer: Option<tls::PeerCert>,
) -> impl Future<Output = Result<(), hyper::Error>> + Http1Graceful
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = write_deadline::WriteDeadline::new(stream, client.limits.write_timeout);
    let (stream, conflict) = framing::Inspect::new(stream);
    http.serve_connection(TokioIo::new(stream), service(client, Some(conflict), peer))
        .with_upgrades()
}

/// Who a connection serves: the handler, the client address its requests are counted against
/// (per-address limits), and what a forward-proxy tunnel on it needs to serve its own
/// connection under the same limits.
struct Client<H> {
    handler: Arc<H>,
    peers: Arc<peers::Peers>,
    addr: std::net::SocketAddr,
    forward: Option<Arc<forward::Forward>>,
    http: hyper::server::conn::http1::Builder,
    limits: ServerLimits,
    /// Changes when the server stops.
    stop: watch::Receiver<()>,
    /// The address's connection slot and the server's permit, held by the connection and any
    /// tunnel opened on it.
    held: Arc<(peers::PeerConnection, OwnedSemaphorePermit)>,
    /// Inside a forward-proxy tunnel: the host the client tunnelled to.
    tunnel: Option<forward::Tunnel>,
    /// An HTTP/2 connection (where CONNECT is refused).
    http2: bool,
}

impl<H> Clone for Client<H> {
    fn clone(&self) -> Self {
        Client {
            handler: self.handler.clone(),
            peers: self.peers.clone(),
            addr: self.addr,
            forward: self.forward.clone(),
            http: self.http.clone(),
            limits: self.limits,
            stop: self.stop.clone(),
            held: self.held.clone(),
            tunnel: self.tunnel.clone(),
            http2: self.http2,
        }
    }
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
        if let Some(tunnel) = &client.tunnel {
            req.extensions_mut().insert(tunnel.clone());
        }
        // CONNECT on a listener with a forward proxy, on HTTP/2 or inside a tunnel is the
        // forward proxy's to answer or refuse; elsewhere the handler refuses it.
        let connect = (req.method() == http::Method::CONNECT
            && (client.forward.is_some() || client.http2 || client.tunnel.is_some()))
        .then(|| (client.clone(), peer.clone()));
        let (h, p, ip) = (
            client.handler.clone(),
            client.peers.clone(),
            client.addr.ip(),
        );
        async move {
            if let Some((client, peer)) = connect {
                return Ok::<_, Infallible>(forward::connect(client, req, peer));
            }
            // Boxed: hyper moves the service's future into place (a copy of all of it); the
            // request's state stays on the heap and only the pointer moves.
            Ok::<_, Infallible>(Box::pin(peers::call(&p, ip, h, req)).await)
        }
    })
}
