//! Small helpers for server-streaming responses, and the coalescer that turns git's
//! many small writes into sensibly sized messages.
//!
//! git writes its output pkt-line by pkt-line (one `write(2)` per ref of an
//! advertisement), and forwarding each read as its own gRPC message sent one small
//! HTTP/2 DATA frame per line: 92 messages for the advertisement of 2000 refs.
//! h2's flood guard answers bursts of small DATA frames with `GOAWAY
//! ENHANCE_YOUR_CALM "too_many_data_frames"`, which kills every call on the
//! connection. [`Coalesced`] gathers output into messages of up to
//! [`STREAM_CHUNK_BYTES`], but never holds back what the other side waits for:
//! a message goes out at once after a pkt-line flush (`0000`), delimiter (`0001`)
//! or response-end (`0002`) packet (the points where git stops and waits for an
//! answer, or is done), at end of output, and otherwise at most [`LINGER`] after
//! its first byte arrived, so progress lines and an ACK that git follows with no
//! flush still travel promptly.
//!
//! The pkt-line boundaries are found by following the packet lengths from the
//! first byte; output that stops looking like pkt-lines (a raw pack after `NAK`
//! without side-band, stderr text) is passed on by size and linger alone.

use std::time::Duration;

use gitcluster_proto::STREAM_CHUNK_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A response stream fed by a task through a bounded channel.
pub type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// A bounded channel and the response stream reading from it (backpressure: the
/// producer waits while the client is slow).
pub fn channel<T>() -> (mpsc::Sender<Result<T, Status>>, ResponseStream<T>) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ReceiverStream::new(rx))
}

/// The longest a byte waits in [`Coalesced`] for company: short against a network
/// round trip and git's own progress interval (1 s), long enough that a burst of
/// writes git makes back to back lands in one message.
pub const LINGER: Duration = Duration::from_millis(3);

/// Where the pkt-line scanner is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// `have` bytes of a 4-byte packet header are in `header`.
    Header { header: [u8; 4], have: usize },
    /// Inside a packet's payload, this many bytes to go.
    Payload(usize),
    /// Not pkt-lines (or no longer): no boundaries are looked for.
    Raw,
}

/// An output pipe read as coalesced messages (see the module doc). Reading is
/// cancel-safe: a [`Coalesced::read`] dropped before it completes loses nothing.
#[derive(Debug)]
pub struct Coalesced<R> {
    inner: R,
    /// Bytes read but not yet handed out; `pending[..scanned]` has been scanned.
    pending: Vec<u8>,
    scanned: usize,
    /// End of the first packet boundary found in `pending`, if any.
    boundary: Option<usize>,
    scan: Scan,
    /// When the oldest pending byte must be handed out.
    deadline: Option<Instant>,
    eof: bool,
    /// A read error, returned once the bytes read before it have gone out.
    failed: Option<std::io::Error>,
    scratch: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> Coalesced<R> {
    /// Coalesces pkt-line output (git's stdout).
    pub fn new(inner: R) -> Self {
        Coalesced {
            inner,
            pending: Vec::with_capacity(STREAM_CHUNK_BYTES),
            scanned: 0,
            boundary: None,
            scan: Scan::Header {
                header: [0; 4],
                have: 0,
            },
            deadline: None,
            eof: false,
            failed: None,
            scratch: vec![0u8; STREAM_CHUNK_BYTES].into_boxed_slice(),
        }
    }

    /// Coalesces output that is not pkt-lines (git's stderr): by size and linger.
    pub fn raw(inner: R) -> Self {
        let mut c = Coalesced::new(inner);
        c.scan = Scan::Raw;
        c
    }

    /// Reads the next message into `out` (at most `out.len()` and at most
    /// [`STREAM_CHUNK_BYTES`] bytes) and returns its length; 0 at end of output.
    /// Called like `AsyncReadExt::read`, so a read loop swaps one for the other.
    pub async fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let cap = out.len().min(STREAM_CHUNK_BYTES);
        if cap == 0 {
            return Ok(0);
        }
        loop {
            if self.pending.is_empty()
                && let Some(e) = self.failed.take()
            {
                return Err(e);
            }
            self.scan_pending();
            let ready = match self.boundary {
                Some(end) => Some(end.min(cap)),
                None if self.pending.len() >= cap => Some(cap),
                None if self.eof || self.failed.is_some() => Some(self.pending.len()),
                None if self.deadline.is_some_and(|d| d <= Instant::now()) => {
                    Some(self.pending.len())
                }
                None => None,
            };
            if let Some(n) = ready {
                return Ok(self.hand_out(out, n));
            }
            let room = cap - self.pending.len();
            let read = match self.deadline {
                Some(deadline) => tokio::select! {
                    biased;
                    r = self.inner.read(&mut self.scratch[..room]) => Some(r),
                    () = tokio::time::sleep_until(deadline) => None,
                },
                None => Some(self.inner.read(&mut self.scratch[..room]).await),
            };
            match read {
                // The deadline passed: the loop hands out what is pending.
                None => {}
                Some(Ok(0)) => self.eof = true,
                Some(Ok(n)) => {
                    if self.pending.is_empty() {
                        self.deadline = Some(Instant::now() + LINGER);
                    }
                    self.pending.extend_from_slice(&self.scratch[..n]);
                }
                // Bytes already read still go out first; the error comes after.
                Some(Err(e)) if self.pending.is_empty() => return Err(e),
                Some(Err(e)) => self.failed = Some(e),
            }
        }
    }

    /// Moves the first `n` pending bytes to `out`.
    fn hand_out(&mut self, out: &mut [u8], n: usize) -> usize {
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.scanned = self.scanned.saturating_sub(n);
        self.boundary = self
            .boundary
            .and_then(|b| b.checked_sub(n))
            .filter(|b| *b > 0);
        self.deadline = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now() + LINGER)
        };
        n
    }

    /// Follows packet lengths over the unscanned bytes, stopping at the first
    /// boundary (the rest is scanned once that message has gone).
    fn scan_pending(&mut self) {
        while self.boundary.is_none() && self.scanned < self.pending.len() {
            match &mut self.scan {
                Scan::Raw => self.scanned = self.pending.len(),
                Scan::Payload(left) => {
                    let take = (*left).min(self.pending.len() - self.scanned);
                    *left -= take;
                    self.scanned += take;
                    if *left == 0 {
                        self.scan = Scan::Header {
                            header: [0; 4],
                            have: 0,
                        };
                    }
                }
                Scan::Header { header, have } => {
                    header[*have] = self.pending[self.scanned];
                    *have += 1;
                    self.scanned += 1;
                    if *have < 4 {
                        continue;
                    }
                    let len = std::str::from_utf8(&header[..])
                        .ok()
                        .and_then(|h| usize::from_str_radix(h, 16).ok());
                    self.scan = match len {
                        // flush, delim, response-end: the other side may now wait.
                        Some(0..=2) => {
                            self.boundary = Some(self.scanned);
                            Scan::Header {
                                header: [0; 4],
                                have: 0,
                            }
                        }
                        Some(4) => Scan::Header {
                            header: [0; 4],
                            have: 0,
                        },
                        Some(n) if n > 4 => Scan::Payload(n - 4),
                        _ => Scan::Raw,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn pkt(payload: &str) -> Vec<u8> {
        format!("{:04x}{payload}", payload.len() + 4).into_bytes()
    }

    /// Every message of `c` until end of output.
    async fn messages<R: AsyncRead + Unpin>(mut c: Coalesced<R>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        loop {
            let n = c.read(&mut buf).await.expect("read");
            if n == 0 {
                return out;
            }
            out.push(buf[..n].to_vec());
        }
    }

    #[tokio::test]
    async fn many_small_writes_become_one_message_ending_at_the_flush() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut expected = Vec::new();
        for i in 0..2000 {
            let line = pkt(&format!("{i:040} refs/heads/b{i}\n"));
            w.write_all(&line).await.expect("write");
            expected.extend_from_slice(&line);
        }
        w.write_all(b"0000").await.expect("flush");
        expected.extend_from_slice(b"0000");
        w.write_all(&pkt("after\n")).await.expect("write");
        drop(w);
        let msgs = messages(Coalesced::new(r)).await;
        let joined: Vec<u8> = msgs.concat();
        assert_eq!(&joined[..expected.len()], &expected[..]);
        // ~120 KB: full messages, then the rest up to and including the flush, then
        // what came after it.
        let want = expected.len().div_ceil(STREAM_CHUNK_BYTES) + 1;
        let sizes: Vec<usize> = msgs.iter().map(Vec::len).collect();
        assert_eq!(msgs.len(), want, "{sizes:?}");
        assert_eq!(sizes[0], STREAM_CHUNK_BYTES);
        assert!(msgs[want - 2].ends_with(b"0000"));
        assert_eq!(msgs[want - 1], pkt("after\n"));
    }

    #[tokio::test]
    async fn a_flush_sends_at_once_even_while_git_keeps_the_pipe_open() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut c = Coalesced::new(r);
        let mut first = pkt("# service=git-upload-pack\n");
        first.extend_from_slice(b"0000");
        w.write_all(&first).await.expect("write");
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        // The writer stays open: only the boundary can end this message.
        let n = c.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &first[..]);
        // Delim and response-end packets are boundaries too.
        let mut second = pkt("a\n");
        second.extend_from_slice(b"0001");
        second.extend_from_slice(&pkt("b\n"));
        second.extend_from_slice(b"0002");
        w.write_all(&second).await.expect("write");
        let n = c.read(&mut buf).await.expect("read");
        let cut = pkt("a\n").len() + 4;
        assert_eq!(&buf[..n], &second[..cut]);
        let n = c.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &second[cut..]);
    }

    #[tokio::test]
    async fn output_without_a_boundary_still_goes_out_while_git_waits() {
        // An ACK line that git follows with no flush, then silence: the message
        // must leave without more input and without end of output.
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut c = Coalesced::new(r);
        let ack = pkt("ACK 0123456789012345678901234567890123456789 common\n");
        w.write_all(&ack).await.expect("write");
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        let n = c.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &ack[..]);
        drop(w);
        assert_eq!(c.read(&mut buf).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn raw_data_is_passed_on_by_size_and_never_split_by_lookalike_flushes() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut data = b"0008NAK\n".to_vec();
        data.extend_from_slice(b"PACK");
        // "0000" inside a raw pack is data, not a flush.
        data.extend(std::iter::repeat_n(b'0', 100_000));
        w.write_all(&data).await.expect("write");
        drop(w);
        let msgs = messages(Coalesced::new(r)).await;
        assert_eq!(msgs.concat(), data);
        assert_eq!(
            msgs.len(),
            2,
            "{:?}",
            msgs.iter().map(Vec::len).collect::<Vec<_>>()
        );

        let (mut w, r) = tokio::io::duplex(1 << 16);
        w.write_all(b"0000remote: text").await.expect("write");
        drop(w);
        let msgs = messages(Coalesced::raw(r)).await;
        assert_eq!(msgs, vec![b"0000remote: text".to_vec()]);
    }

    #[tokio::test]
    async fn a_small_buffer_gets_messages_of_its_size() {
        let (mut w, r) = tokio::io::duplex(1 << 16);
        w.write_all(&pkt("hello world\n")).await.expect("write");
        drop(w);
        let mut c = Coalesced::new(r);
        let mut buf = [0u8; 5];
        let mut got = Vec::new();
        loop {
            let n = c.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, pkt("hello world\n"));
    }
}
