//! HTTP/2 connections on the TLS listener: bounded streams, keep-alive pings, and a connection
//! with no open stream for `header_read_timeout` is closed (GOAWAY), so a client that finishes
//! the handshake and then sends nothing (or a header block it never ends) cannot hold its
//! connection permit and per-address slot forever.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use super::ServerLimits;
use crate::net::body::Body;

/// Streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may open and reset before the server has accepted them.
const MAX_PENDING_RESETS: usize = 20;
/// How often an idle connection is pinged, and how long the answer may take.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight on one connection and when the last one started or ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// True when no request is in flight and none started or ended within `timeout`.
    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed()
                >= timeout
    }
}

/// One request in flight; ending it (drop) counts as activity.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Serves one HTTP/2 connection until it ends, the server stops (`stop` changes) or it stays
/// idle for `limits.header_read_timeout`; the last two close it gracefully (GOAWAY, open streams
/// finish) within `limits.drain_timeout`.
pub async fn serve<S, Svc, F>(
    stream: S,
    svc: Svc,
    limits: ServerLimits,
    mut stop: watch::Receiver<()>,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Svc: Service<
            http::Request<Incoming>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = F,
        > + Clone
        + Send
        + 'static,
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let tracked = {
        let activity = activity.clone();
        service_fn(move |req| {
            let guard = activity.begin();
            let fut = svc.call(req);
            async move {
                let resp = fut.await;
                drop(guard);
                resp
            }
        })
    };
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size((limits.max_header_bytes * 2) as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let conn = h2.serve_connection(TokioIo::new(stream), tracked);
    tokio::pin!(conn);
    let timeout = limits.header_read_timeout;
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = stop.changed() => {
                tracing::debug!("Closing an HTTP/2 connection: shutting down.");
                break;
            }
            _ = tick.tick() => {
                if activity.idle_for(timeout) {
                    tracing::debug!(?timeout, "Closing an idle HTTP/2 connection.");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.connection_drain(), conn).await {
        Ok(result) => result,
        Err(_) => {
            tracing::debug!("An HTTP/2 connection did not close in time; dropped.");
            Ok(())
        }
    }
}
