//! The client's request body on its way upstream: read, checked and cut into the
//! messages of a `Post*` call.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::{Body, BodyDataStream};
use bytes::Bytes;
use futures::{Stream, StreamExt as _, stream};
use gitcluster_proto::STREAM_CHUNK_BYTES;
use http::{HeaderMap, header};
use tracing::{debug, info};

use crate::smart_http::{BYTES_METRIC, CallSignals};

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

/// The client's request body as chunks of at most `STREAM_CHUNK_BYTES`.
///
/// The stream ends only when the body ended cleanly (and, with a Content-Length, had
/// every byte). When reading the body fails, or the driver asks for an abort, it yields
/// [`Chunk::Abort`] (which resets the upstream call, see `crate::abortable`) and then
/// stays pending forever: it never ends cleanly after a failure.
pub(crate) fn request_chunks(
    body: Body,
    expected: Option<u64>,
    signals: CallSignals,
    repo: String,
) -> impl Stream<Item = Chunk> + Send + 'static {
    struct Reader {
        body: BodyDataStream,
        pending: Bytes,
        received: u64,
        expected: Option<u64>,
        signals: CallSignals,
        repo: String,
        aborted: bool,
    }
    let reader = Reader {
        body: body.into_data_stream(),
        pending: Bytes::new(),
        received: 0,
        expected,
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
            if !r.pending.is_empty() {
                let chunk = r.pending.split_to(r.pending.len().min(STREAM_CHUNK_BYTES));
                metrics::counter!(BYTES_METRIC, "direction" => "in").increment(chunk.len() as u64);
                return Some((Chunk::Data(chunk), r));
            }
            let next = tokio::select! {
                biased;
                () = r.signals.abort.cancelled() => None,
                next = r.body.next() => Some(next),
            };
            let failure = match next {
                Some(Some(Ok(data))) => {
                    r.received += data.len() as u64;
                    r.pending = data;
                    continue;
                }
                Some(None) => match r.expected {
                    Some(expected) if expected != r.received => {
                        format!("body ended after {} of {expected} bytes", r.received)
                    }
                    // The body is complete: now, and only now, end the request stream.
                    _ => {
                        r.signals.request_over.cancel();
                        return None;
                    }
                },
                Some(Some(Err(e))) => e.to_string(),
                None => {
                    debug!(repo = %r.repo, "aborting upstream request stream");
                    r.aborted = true;
                    r.signals.request_over.cancel();
                    return Some((Chunk::Abort, r));
                }
            };
            info!(repo = %r.repo, error = %failure, received = r.received,
                "client request body failed, aborting upstream call");
            r.signals.body_failed.store(true, Ordering::SeqCst);
            r.aborted = true;
            r.signals.request_over.cancel();
            return Some((Chunk::Abort, r));
        }
    })
}
