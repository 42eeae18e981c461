//! Detects requests whose head carries both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 section 6.3 for such a request: it drops `Content-Length`, reads the
//! body as chunked and closes the connection afterwards, so no second request can be smuggled.
//! We go one step further and refuse it with 400, which hyper offers no hook for: this wrapper
//! watches the bytes hyper reads, follows message framing to find each request head, and records
//! the ordinal of the first conflicting one. The server tags that request with [`Conflict`] and
//! the pipeline's accept phase answers 400. Scanning stops at the first conflict (hyper closes
//! the connection after it), at anything unparsable (hyper rejects that itself), and at a
//! CONNECT: what follows it is a tunnel's bytes (TLS) or nothing (a refused CONNECT closes the
//! connection), never another request head of this connection, so it is neither buffered nor
//! inspected.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Marker extension on a request whose head had both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct Conflict;

/// Shared between the reader and the service: the ordinal of the first conflicting request.
#[derive(Debug)]
pub struct ConflictAt {
    /// Ordinal of the conflicting request; `usize::MAX` while there is none.
    at: AtomicUsize,
    /// Requests handed to the service so far on this connection.
    served: AtomicUsize,
}

impl ConflictAt {
    fn new() -> ConflictAt {
        ConflictAt {
            at: AtomicUsize::new(usize::MAX),
            served: AtomicUsize::new(0),
        }
    }

    /// Whether request number `index` (0-based, on this connection) is the conflicting one.
    pub fn is(&self, index: usize) -> bool {
        self.at.load(Ordering::Acquire) == index
    }

    /// Counts the next request handed to the service and says whether it is the conflicting one.
    /// Requests on one HTTP/1.1 connection are served in order, so the count names each one.
    pub fn next_request_conflicts(&self) -> bool {
        self.is(self.served.fetch_add(1, Ordering::AcqRel))
    }
}

/// Largest head the scanner buffers; beyond it hyper answers 431 and the scan stops.
const MAX_HEAD: usize = 1024 * 1024;

enum Scan {
    Head { buf: Vec<u8> },
    Fixed { left: u64 },
    ChunkSize { line: Vec<u8> },
    ChunkData { left: u64 },
    ChunkEnd { left: u8 },
    Trailers { line: Vec<u8> },
    Done,
}

/// An I/O stream that scans request framing as it is read.
pub struct Inspect<T> {
    inner: T,
    scan: Scan,
    index: usize,
    conflict: Arc<ConflictAt>,
}

impl<T> Inspect<T> {
    /// Wraps a connection; the returned handle tells which request conflicted.
    pub fn new(inner: T) -> (Inspect<T>, Arc<ConflictAt>) {
        let conflict = Arc::new(ConflictAt::new());
        (
            Inspect {
                inner,
                scan: Scan::Head { buf: Vec::new() },
                index: 0,
                conflict: conflict.clone(),
            },
            conflict,
        )
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let consumed = match &mut self.scan {
                Scan::Done => return,
                Scan::Head { buf } if buf.is_empty() => {
                    // The common case: the whole head arrived in this read and is inspected
                    // where it lies, without a copy.
                    let take = data.len().min(MAX_HEAD + 1);
                    match memchr::memmem::find(&data[..take], b"\r\n\r\n") {
                        Some(pos) => {
                            self.scan = self.after_head(&data[..pos + 4]);
                            pos + 4
                        }
                        None => {
                            buf.extend_from_slice(&data[..take]);
                            if buf.len() > MAX_HEAD {
                                self.scan = Scan::Done;
                                return;
                            }
                            take
                        }
                    }
                }
                Scan::Head { buf } => {
                    let start = buf.len().saturating_sub(3);
                    let take = data.len().min(MAX_HEAD.saturating_sub(buf.len()) + 1);
                    buf.extend_from_slice(&data[..take]);
                    match memchr::memmem::find(&buf[start..], b"\r\n\r\n") {
                        Some(pos) => {
                            let end = start + pos + 4;
                            let rest = buf.len() - end;
                            let head = std::mem::take(buf);
                            self.scan = self.after_head(&head[..end]);
                            take - rest
                        }
                        None if buf.len() > MAX_HEAD => {
                            self.scan = Scan::Done;
                            return;
                        }
                        None => take,
                    }
                }
                Scan::Fixed { left } => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.next_head();
                    }
                    n as usize
                }
                Scan::ChunkSize { line } | Scan::Trailers { line } => {
                    match data.iter().position(|b| *b == b'\n') {
                        Some(pos) => {
                            line.extend_from_slice(&data[..pos]);
                            let text = std::mem::take(line);
                            let trailers = matches!(self.scan, Scan::Trailers { .. });
                            self.after_line(&text, trailers);
                            pos + 1
                        }
                        None => {
                            line.extend_from_slice(data);
                            if line.len() > 64 * 1024 {
                                self.scan = Scan::Done;
                            }
                            data.len()
                        }
                    }
                }
                Scan::ChunkData { left } => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.scan = Scan::ChunkEnd { left: 2 };
                    }
                    n as usize
                }
                Scan::ChunkEnd { left } => {
                    let n = (*left as usize).min(data.len());
                    *left -= n as u8;
                    if *left == 0 {
                        self.scan = Scan::ChunkSize { line: Vec::new() };
                    }
                    n
                }
            };
            data = &data[consumed..];
        }
    }

    fn next_head(&mut self) {
        self.index += 1;
        self.scan = Scan::Head { buf: Vec::new() };
    }

    /// Decides the body framing of a complete request head.
    fn after_head(&mut self, head: &[u8]) -> Scan {
        if head.starts_with(b"CONNECT ") {
            return Scan::Done;
        }
        let mut content_length: Option<Option<u64>> = None;
        let mut chunked: Option<bool> = None;
        for line in head.split(|b| *b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = Some(std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()));
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        }
        match (content_length, chunked) {
            (Some(_), Some(_)) => {
                self.conflict.at.store(self.index, Ordering::Release);
                Scan::Done
            }
            (None, Some(true)) => Scan::ChunkSize { line: Vec::new() },
            (Some(Some(0)), None) | (None, None) => {
                self.index += 1;
                Scan::Head { buf: Vec::new() }
            }
            (Some(Some(n)), None) => Scan::Fixed { left: n },
            // A bad Content-Length or a non-chunked final coding: hyper answers 400 itself.
            (Some(None), None) | (None, Some(false)) => Scan::Done,
        }
    }

    fn after_line(&mut self, line: &[u8], trailers: bool) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if trailers {
            if line.is_empty() {
                self.next_head();
            } else {
                self.scan = Scan::Trailers { line: Vec::new() };
            }
            return;
        }
        let size = line
            .split(|b| *b == b';')
            .next()
            .map(trim)
            .unwrap_or_default();
        match std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        {
            Some(0) => self.scan = Scan::Trailers { line: Vec::new() },
            Some(n) => self.scan = Scan::ChunkData { left: n },
            None => self.scan = Scan::Done,
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

impl<T: AsyncRead + Unpin> AsyncRead for Inspect<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.feed(&buf.filled()[before..]);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inspect<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns the conflicting request's ordinal.
    fn check(input: &str, step: usize, expect: Option<usize>) {
        let (mut io, conflict) = Inspect::new(tokio::io::empty());
        for piece in input.as_bytes().chunks(step) {
            io.feed(piece);
        }
        let got = (0..16).find(|i| conflict.is(*i));
        assert_eq!(got, expect, "step {step}: {input:?}");
    }

    #[test]
    fn nothing_after_a_connect_is_buffered_or_inspected() {
        // The tunnel's bytes may look like anything, a conflicting head included.
        let input = "CONNECT sellingpartnerapi-na.amazon.com:443 HTTP/1.1\r\nhost: x\r\n\r\n\
                     POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        for step in [1, 7, 1000] {
            check(input, step, None);
            let (mut io, _) = Inspect::new(tokio::io::empty());
            for piece in input.as_bytes().chunks(step) {
                io.feed(piece);
            }
            assert!(matches!(io.scan, Scan::Done), "step {step}: still scanning");
        }
    }

    #[test]
    fn the_conflicting_request_is_found_after_any_framing_and_split() {
        let cases: &[(&str, Option<usize>)] = &[
            ("GET / HTTP/1.1\r\nhost: a\r\n\r\n", None),
            ("POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", Some(0)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Some(0)),
            ("GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", Some(2)),
            ("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nGET / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n", Some(1)),
            // A body that merely contains header-like text is not a head.
            ("POST / HTTP/1.1\r\ncontent-length: 52\r\n\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", None),
        ];
        for (input, expect) in cases {
            for step in [1, 2, 7, 1000] {
                check(input, step, *expect);
            }
        }
    }
}
