//! HTTP/2 connections on the TLS listener: bounded streams, keep-alive pings, and a connection
//! with no open stream for `header_read_timeout` is closed (GOAWAY), so a client that finishes
//! the handshake and then sends nothing (or a header block it never ends) cannot hold its
//! connection permit and per-address slot forever.
//!
//! A request counts as in flight until its response body has ended (or been dropped), not just
//! until the response head is sent: a connection that is only streaming a long body (a report
//! download) is busy, not idle.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
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

/// A response body that keeps its request in flight until the body ends, fails or is dropped
/// (the client reset the stream, the connection closed).
struct TrackedBody {
    inner: Body,
    guard: Option<InFlight>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = crate::net::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
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
                let resp = fut.await?;
                Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    guard: Some(guard),
                }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::peers::PeerLimits;
    use http_body_util::{BodyExt, StreamBody};

    /// A body sending `chunks` chunks of `size` bytes, one every `every`.
    fn slow_body(chunks: usize, size: usize, every: Duration) -> Body {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::net::body::BoxError>>(1);
        tokio::spawn(async move {
            for i in 0..chunks {
                tokio::time::sleep(every).await;
                let chunk = Bytes::from(vec![b'a' + (i % 26) as u8; size]);
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        StreamBody::new(stream).boxed()
    }

    #[tokio::test]
    async fn a_connection_streaming_a_long_body_is_not_closed_as_idle() {
        let limits = ServerLimits {
            max_connections: 10,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_millis(200),
            drain_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_secs(30),
            peers: PeerLimits {
                max_connections_per_address: 10,
                unauthenticated_rate_per_second: 100,
                unauthenticated_burst: 100,
            },
        };
        // Longer than the idle timeout plus the connection drain (0.1 s + 2 s grace).
        let (chunks, size, every) = (35, 1000, Duration::from_millis(100));
        assert!(every * chunks as u32 > limits.header_read_timeout + limits.connection_drain());
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let svc = service_fn(move |_req: http::Request<Incoming>| async move {
            Ok::<_, Infallible>(http::Response::new(slow_body(chunks, size, every)))
        });
        let (_stop_tx, stop) = watch::channel(());
        let server = tokio::spawn(serve(server_io, svc, limits, stop));

        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("http://gateway/reports/2021-06-30/documents/doc")
            .body(crate::net::body::empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the download was cut")
            .to_bytes();
        assert_eq!(body.len(), chunks * size, "the download was truncated");
        assert!(body
            .chunks(size)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == b'a' + (i % 26) as u8)));

        // Once the body has ended the connection is idle again and closed in time.
        drop(send);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the idle connection stayed open")
            .unwrap()
            .unwrap();
    }
}
