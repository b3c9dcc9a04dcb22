//! Finds HTTP/1 requests that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper reads such a body as chunked and drops the Content-Length before the
//! application sees the request, so the conflict cannot be seen in a handler. A proxy in
//! front of the gateway may have framed the same bytes by their Content-Length: the two
//! would disagree on where this request ends and the next begins (request smuggling,
//! RFC 9112 §6.1). [`Sniffed`] wraps a connection's socket and follows the request
//! framing in the bytes hyper reads (heads, Content-Length bodies, chunked bodies), and
//! records the position of every ambiguous request; the service answers that request
//! 400 and closes the connection. Anything it cannot follow (HTTP/2, a head over 64 KiB,
//! a malformed chunk size) makes it stop looking: hyper refuses those itself.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head followed; hyper's own limit is lower.
const MAX_HEAD: usize = 64 * 1024;

/// Positions (0-based, per connection) of requests with ambiguous framing.
#[derive(Clone, Default)]
pub(crate) struct Ambiguous(Arc<Mutex<Vec<u64>>>);

impl Ambiguous {
    /// Whether request number `n` on this connection had ambiguous framing.
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.0.lock().map(|v| v.contains(&n)).unwrap_or(false)
    }
}

enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    GaveUp,
}

/// A socket whose inbound bytes are followed request by request (see module doc).
pub(crate) struct Sniffed<T> {
    inner: T,
    state: State,
    request: u64,
    ambiguous: Ambiguous,
}

impl<T> Sniffed<T> {
    pub(crate) fn new(inner: T) -> (Self, Ambiguous) {
        let ambiguous = Ambiguous::default();
        let sniffed = Sniffed {
            inner,
            state: State::Head(Vec::new()),
            request: 0,
            ambiguous: ambiguous.clone(),
        };
        (sniffed, ambiguous)
    }

    fn follow(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::GaveUp => return,
                State::Head(head) => {
                    let Some(end) = find_end(head, data, b"\r\n\r\n") else {
                        head.extend_from_slice(data);
                        if head.len() > MAX_HEAD || head.starts_with(b"PRI * HTTP/2") {
                            self.state = State::GaveUp;
                        }
                        return;
                    };
                    head.extend_from_slice(&data[..end]);
                    data = &data[end..];
                    let head = std::mem::take(head);
                    self.state = self.after_head(&head);
                }
                State::Fixed(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.next_request();
                    }
                }
                State::ChunkSize(line) => {
                    let Some(end) = find_end(line, data, b"\n") else {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.state = State::GaveUp;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..end]);
                    data = &data[end..];
                    let text = String::from_utf8_lossy(line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    self.state = match u64::from_str_radix(size, 16) {
                        Ok(0) => State::Trailers(Vec::new()),
                        Ok(n) => State::ChunkData(n),
                        Err(_) => State::GaveUp,
                    };
                }
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    *left -= 1;
                    data = &data[1..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(seen) => {
                    // Ends with an empty line: CRLF right away, or after trailer fields.
                    seen.push(data[0]);
                    data = &data[1..];
                    if seen.as_slice() == b"\r\n" || seen.ends_with(b"\r\n\r\n") {
                        self.next_request();
                    } else if seen.len() > MAX_HEAD {
                        self.state = State::GaveUp;
                    }
                }
            }
        }
    }

    fn next_request(&mut self) {
        self.request += 1;
        self.state = State::Head(Vec::new());
    }

    /// The state after a complete head, by hyper's rule: Transfer-Encoding wins.
    fn after_head(&mut self, head: &[u8]) -> State {
        let text = String::from_utf8_lossy(head);
        let mut length = None;
        let mut chunked = false;
        for line in text.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok().or(Some(u64::MAX));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        if chunked && length.is_some() {
            if let Ok(mut v) = self.ambiguous.0.lock() {
                v.push(self.request);
            }
            // hyper closes such a connection after its answer: nothing more to follow.
            return State::GaveUp;
        }
        match (chunked, length) {
            (true, _) => State::ChunkSize(Vec::new()),
            (false, Some(u64::MAX)) => State::GaveUp,
            (false, Some(0)) | (false, None) => {
                self.request += 1;
                State::Head(Vec::new())
            }
            (false, Some(n)) => State::Fixed(n),
        }
    }
}

/// Where `needle` ends in `prefix ++ data`, as an offset into `data`.
fn find_end(prefix: &[u8], data: &[u8], needle: &[u8]) -> Option<usize> {
    let keep = prefix.len().min(needle.len() - 1);
    let mut joined = prefix[prefix.len() - keep..].to_vec();
    joined.extend_from_slice(data);
    joined
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + needle.len() - keep)
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let fresh = buf.filled()[before..].to_vec();
            self.follow(&fresh);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(stream: &[u8], pieces: usize) -> Vec<u64> {
        let (mut s, ambiguous) = Sniffed::new(());
        let step = stream.len().div_ceil(pieces);
        for piece in stream.chunks(step) {
            s.follow(piece);
        }
        ambiguous.0.lock().expect("lock").clone()
    }

    #[test]
    fn finds_the_ambiguous_request_after_bodies_of_every_framing() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            POST /d HTTP/1.1\r\ncontent-length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for pieces in [1, 2, 3, 7, 50, stream.len()] {
            assert_eq!(flagged(stream, pieces), vec![3], "{pieces} pieces");
        }
        let body_lookalike = b"POST /b HTTP/1.1\r\nContent-Length: 40\r\n\r\n\
            Content-Length: 1\r\nTransfer-Encoding: x";
        assert!(flagged(body_lookalike, 1).is_empty());
    }
}
