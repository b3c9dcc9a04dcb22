//! The client's request body on its way upstream: read, checked and cut into the
//! messages of a `Post*` call.
//!
//! * **Framing.** A git request body is pkt-lines (4 hex digits of length, then the
//!   payload; `0000` flush, `0001` delimiter). upload-pack bodies are pkt-lines to the
//!   end; a receive-pack body is pkt-lines up to its first flush, then raw pack data
//!   (push options, if any, are not checked). A bad length prefix is the client's
//!   mistake: the call is aborted and the client gets 400 with the reason, instead of
//!   git's "protocol error" coming back as a 500.
//! * **Message sizes.** Body bytes are coalesced into messages of up to
//!   `STREAM_CHUNK_BYTES`, sent when full, when a pkt-line flush has been read (git
//!   waits for the server after it), at the end of the body, or after [`LINGER`] without
//!   new bytes so a slow steady upload is not held back. Forwarding hyper's chunks as
//!   they come (one DATA frame each, down to one byte) lets one client's tiny chunks
//!   become a burst of small frames that h2's flood guard answers with `GOAWAY
//!   ENHANCE_YOUR_CALM`, killing every call on the upstream connection.
//! * **Idle bound.** A body that sends nothing for the configured idle timeout fails the
//!   request with 408 (and the connection is closed); its upstream call is aborted, so
//!   the node's git process ends.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _, stream};
use gitcluster_proto::STREAM_CHUNK_BYTES;
use http::{HeaderMap, StatusCode, header};
use tracing::{debug, info};

use crate::call::{BYTES_METRIC, BodyError, CallSignals, MESSAGES_METRIC};
use crate::route::GitService;

/// How long buffered body bytes wait for more before they are sent anyway.
pub(crate) const LINGER: Duration = Duration::from_millis(10);

/// Content-Length of an uncompressed request body: checked again at the end of the body,
/// in case a connection ever ends without hyper reporting the shortfall.
pub(crate) fn expected_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return None;
    }
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) enum Chunk {
    Data(Bytes),
    Abort,
}

/// A pkt-line reader that only checks framing, fed the body piece by piece.
#[derive(Debug)]
pub(crate) struct PktCheck {
    /// Stop checking after the first flush (receive-pack: the pack follows).
    stop_at_flush: bool,
    /// Checking is over: the rest of the body is not pkt-lines.
    done: bool,
    /// Length prefix bytes read so far of the current pkt-line.
    prefix: [u8; 4],
    prefix_len: usize,
    /// Payload bytes still to skip in the current pkt-line.
    remaining: usize,
    /// Body bytes seen.
    offset: u64,
    /// Payload of the first pkt-line (its capabilities), up to `FIRST_LINE_MAX`.
    first_line: Vec<u8>,
    first_line_done: bool,
}

const FIRST_LINE_MAX: usize = 4096;
/// Largest pkt-line git sends or accepts (`LARGE_PACKET_MAX`).
const PKT_MAX: usize = 65520;

impl PktCheck {
    /// A checker for a request body of `service`.
    pub(crate) fn new(service: GitService) -> Self {
        PktCheck {
            stop_at_flush: service == GitService::ReceivePack,
            done: false,
            prefix: [0; 4],
            prefix_len: 0,
            remaining: 0,
            offset: 0,
            first_line: Vec::new(),
            first_line_done: false,
        }
    }

    /// Checks the next piece of the body. `Ok(true)` when a flush-pkt was in it.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<bool, String> {
        let mut flushed = false;
        while !data.is_empty() && !self.done {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                if !self.first_line_done {
                    let room = FIRST_LINE_MAX.saturating_sub(self.first_line.len());
                    self.first_line.extend_from_slice(&data[..n.min(room)]);
                    if n == self.remaining {
                        self.first_line_done = true;
                    }
                }
                self.remaining -= n;
                self.offset += n as u64;
                data = &data[n..];
                continue;
            }
            self.prefix[self.prefix_len] = data[0];
            self.prefix_len += 1;
            self.offset += 1;
            data = &data[1..];
            if self.prefix_len < 4 {
                continue;
            }
            self.prefix_len = 0;
            let at = self.offset - 4;
            let len = std::str::from_utf8(&self.prefix)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|t| usize::from_str_radix(t, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "request body is not pkt-line data: bad length prefix {:?} at byte {at}",
                        String::from_utf8_lossy(&self.prefix)
                    )
                })?;
            match len {
                0 => {
                    flushed = true;
                    self.first_line_done = true;
                    if self.stop_at_flush {
                        self.done = true;
                    }
                }
                1 | 2 => {}
                3 => {
                    return Err(format!(
                        "request body has an invalid pkt-line length 3 at byte {at}"
                    ));
                }
                n if n > PKT_MAX + 4 => {
                    return Err(format!(
                        "request body has a pkt-line of {n} bytes at byte {at} (at most {} allowed)",
                        PKT_MAX + 4
                    ));
                }
                n => self.remaining = n - 4,
            }
        }
        Ok(flushed)
    }

    /// At the end of the body: it must not stop inside a pkt-line.
    pub(crate) fn finish(&self) -> Result<(), String> {
        if self.done || (self.prefix_len == 0 && self.remaining == 0) {
            Ok(())
        } else {
            Err(format!(
                "request body ends inside a pkt-line at byte {}",
                self.offset
            ))
        }
    }

    /// Whether the client asked for side-band output (in its first pkt-line's
    /// capabilities); `None` before the first pkt-line was read.
    pub(crate) fn sideband(&self) -> Option<bool> {
        if !self.first_line_done {
            return None;
        }
        let line = String::from_utf8_lossy(&self.first_line);
        let caps = line.split_once('\0').map_or(line.as_ref(), |(_, c)| c);
        Some(
            caps.split_ascii_whitespace()
                .any(|c| c == "side-band-64k" || c == "side-band"),
        )
    }
}

/// The client's request body as messages of at most `STREAM_CHUNK_BYTES` (see the
/// module doc for when a message is sent).
///
/// The stream ends only when the body ended cleanly (and, with a Content-Length, had
/// every byte, and did not stop inside a pkt-line). When reading the body fails, its
/// framing is wrong, it stays silent for `idle`, or the driver asks for an abort, it
/// yields [`Chunk::Abort`] (which resets the upstream call, see `crate::abortable`) and
/// then stays pending forever: it never ends cleanly after a failure.
pub(crate) fn request_chunks(
    body: Body,
    expected: Option<u64>,
    service: GitService,
    idle: Duration,
    signals: CallSignals,
    repo: String,
) -> impl Stream<Item = Chunk> + Send + 'static {
    struct Reader {
        body: BodyDataStream,
        buf: BytesMut,
        flush_now: bool,
        ended: bool,
        received: u64,
        expected: Option<u64>,
        check: PktCheck,
        idle: Duration,
        signals: CallSignals,
        repo: String,
        aborted: bool,
    }
    impl Reader {
        fn emit(&mut self, n: usize) -> Chunk {
            let chunk = self.buf.split_to(n).freeze();
            metrics::counter!(BYTES_METRIC, "direction" => "in").increment(chunk.len() as u64);
            metrics::counter!(MESSAGES_METRIC).increment(1);
            Chunk::Data(chunk)
        }
    }
    let reader = Reader {
        body: body.into_data_stream(),
        buf: BytesMut::new(),
        flush_now: false,
        ended: false,
        received: 0,
        expected,
        check: PktCheck::new(service),
        idle,
        signals,
        repo,
        aborted: false,
    };
    stream::unfold(reader, |mut r| async move {
        loop {
            if r.aborted {
                let never: Infallible = std::future::pending().await;
                match never {}
            }
            if r.buf.len() >= STREAM_CHUNK_BYTES {
                let chunk = r.emit(STREAM_CHUNK_BYTES);
                return Some((chunk, r));
            }
            if (r.flush_now || r.ended) && !r.buf.is_empty() {
                r.flush_now = false;
                let chunk = r.emit(r.buf.len());
                return Some((chunk, r));
            }
            if r.ended {
                // The body is complete: now, and only now, end the request stream.
                r.signals.request_over.cancel();
                return None;
            }
            let wait = if r.buf.is_empty() {
                r.idle
            } else {
                LINGER.min(r.idle)
            };
            let next = tokio::select! {
                biased;
                () = r.signals.abort.cancelled() => None,
                next = tokio::time::timeout(wait, r.body.next()) => Some(next),
            };
            let failure = match next {
                Some(Ok(Some(Ok(data)))) => {
                    r.received += data.len() as u64;
                    let checked = r.check.feed(&data);
                    if let Some(sideband) = r.check.sideband() {
                        let _ = r.signals.sideband.set(sideband);
                    }
                    match checked {
                        Ok(flushed) => {
                            r.flush_now |= flushed;
                            r.buf.extend_from_slice(&data);
                            continue;
                        }
                        Err(reason) => BodyError::new(StatusCode::BAD_REQUEST, reason),
                    }
                }
                // Nothing new for a while: send what is buffered.
                Some(Err(_)) if !r.buf.is_empty() => {
                    r.flush_now = true;
                    continue;
                }
                Some(Err(_)) => BodyError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body sent nothing for {} s", r.idle.as_secs_f64()),
                ),
                Some(Ok(None)) => match r.expected {
                    Some(expected) if expected != r.received => BodyError::incomplete(format!(
                        "body ended after {} of {expected} bytes",
                        r.received
                    )),
                    _ => match r.check.finish() {
                        Ok(()) => {
                            r.ended = true;
                            continue;
                        }
                        Err(reason) => BodyError::new(StatusCode::BAD_REQUEST, reason),
                    },
                },
                Some(Ok(Some(Err(e)))) => BodyError::incomplete(e.to_string()),
                None => {
                    debug!(repo = %r.repo, "aborting upstream request stream");
                    r.aborted = true;
                    r.signals.request_over.cancel();
                    return Some((Chunk::Abort, r));
                }
            };
            info!(repo = %r.repo, error = %failure.reason, received = r.received,
                "client request body failed, aborting upstream call");
            let _ = r.signals.body_error.set(failure);
            r.signals.body_failed.store(true, Ordering::SeqCst);
            r.aborted = true;
            r.signals.request_over.cancel();
            return Some((Chunk::Abort, r));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(payload: &str) -> String {
        format!("{:04x}{payload}", payload.len() + 4)
    }

    #[test]
    fn framing_is_checked_across_piece_boundaries() {
        let body = format!(
            "{}{}0000{}0009done\n",
            pkt("want abc side-band-64k\n"),
            pkt("x"),
            pkt("have 1\n")
        );
        for split in 0..body.len() {
            let mut check = PktCheck::new(GitService::UploadPack);
            let (a, b) = body.as_bytes().split_at(split);
            let flushed = check.feed(a).expect("valid") | check.feed(b).expect("valid");
            assert!(flushed, "split at {split}");
            check.finish().expect("complete");
            assert_eq!(check.sideband(), Some(true));
        }
    }

    #[test]
    fn receive_pack_stops_checking_at_the_first_flush() {
        let mut check = PktCheck::new(GitService::ReceivePack);
        let commands = pkt("0000 1111 refs/heads/main\0report-status ofs-delta\n");
        assert!(
            check
                .feed(format!("{commands}0000").as_bytes())
                .expect("valid")
        );
        check
            .feed(b"PACK\0\0\0\x02 raw bytes that are no pkt-lines")
            .expect("pack is not checked");
        check.finish().expect("complete");
        assert_eq!(check.sideband(), Some(false));
    }

    #[test]
    fn bad_prefixes_lengths_and_truncation_are_refused() {
        for bad in ["zzzz", "0003", "fff5", "00g1"] {
            let err = PktCheck::new(GitService::UploadPack).feed(bad.as_bytes());
            assert!(err.is_err(), "{bad}");
        }
        let mut check = PktCheck::new(GitService::UploadPack);
        check.feed(b"0010abc").expect("a valid start");
        assert!(check.finish().is_err());
        let mut check = PktCheck::new(GitService::UploadPack);
        check.feed(b"00").expect("a valid start");
        assert!(check.finish().is_err());
        assert_eq!(PktCheck::new(GitService::UploadPack).sideband(), None);
    }
}
