//! [`WriteDeadline`]: a connection whose client accepts no bytes for `server.write_timeout_ms`
//! is closed.
//!
//! A client that stops reading (a document download it no longer wants, or a slow-loris on the
//! answer side) leaves hyper's writes pending on a full socket: without a bound it keeps its
//! connection, its slot and the download in flight until it reads again or goes away. This
//! wrapper around the connection's IO starts a timer when a write (or flush) cannot proceed, and
//! fails the write with `TimedOut` when the socket accepted nothing until the timer ran out;
//! hyper then closes the connection and drops the response body (a download is recorded with
//! the bytes sent and outcome `client_closed`).
//!
//! Cheap on the request path: a write that proceeds costs one branch; the timer exists only once
//! a write had to wait, and is reused after that.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection's IO with a write-progress deadline.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// The timer, created the first time a write waited.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A write is waiting: the timer runs.
    armed: bool,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`: a write that makes no progress for `timeout` fails.
    pub fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// Watches one write-side poll: progress disarms the timer; waiting arms it (once) and
    /// fails when it runs out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        if sleep.as_mut().poll(cx).is_ready() {
            self.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no bytes within server.write_timeout_ms",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_millis(200);

    /// A peer that never reads: once the pipe is full, the write fails after the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_timeout() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(ours, TIMEOUT);
        let started = Instant::now();
        let err = loop {
            if let Err(e) = io.write_all(&[b'x'; 4096]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Paused time: the timeout passed while the write waited (no more than a timer tick).
        let waited = started.elapsed();
        assert!(waited >= TIMEOUT && waited < TIMEOUT * 2, "{waited:?}");
    }

    /// A peer that reads slowly, but within the timeout each time, is never cut: the timer
    /// restarts at every write that proceeds.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_reading_is_never_cut() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            loop {
                tokio::time::sleep(TIMEOUT / 2).await;
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        let mut io = WriteDeadline::new(ours, TIMEOUT);
        // 32 KiB through a 1 KiB pipe read 512 bytes per half-timeout: far longer than the
        // timeout in all.
        io.write_all(&[b'x'; 32 * 1024]).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), 32 * 1024);
    }
}
