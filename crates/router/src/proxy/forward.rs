//! Forwarding one call to one storage node, streaming both ways without buffering.
//!
//! The request stream is abortable (`gitcluster_proto::abortable`): when the
//! client's inbound stream fails, or the client goes away mid-call, the upstream call
//! is reset with `INTERNAL_ERROR`, never ended cleanly, so a storage node cannot take
//! a truncated push for a whole one.
//!
//! Responses are pumped by a spawned task into the client-facing stream. The task
//! owns the upstream call until it is over: it is never dropped while its request
//! stream may still be open (dropping sends `CANCEL`, which a tonic server reads as a
//! clean end). When the upstream ends OK the task runs the call's finalizer (the
//! generation bump of a write) *before* the client sees OK — and before the client
//! sees the write's answer, which is held back until then — and runs it even if the
//! client has gone: a write the primary applied is always recorded.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt as _, stream};
use gitcluster_proto::abortable::{Abortable, Outbound};
use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use crate::codec::BytesCodec;
use crate::topology::Storage;

/// What the proxy answers a client with.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Runs after the upstream ended OK, given whether the node said the call changed
/// anything (see [`changed_anything`]); its error replaces the OK.
pub type Finalizer = Box<dyn FnOnce(bool) -> BoxFuture<'static, Result<(), Status>> + Send>;

/// How much of a finalized call's answer is held back until its finalizer succeeded.
/// A write's answer (git's report, a unary reply) is far smaller; past this the oldest
/// messages go on, and only the rest waits.
const HOLD_BYTES: usize = 1024 * 1024;

/// False only when the node said, in the answer's headers or trailers, that the call
/// changed no reference and no HEAD (`REFS_CHANGED_TRAILER` = "0"). A node that did
/// not say is taken to have changed something: a write is never left unrecorded
/// because the flag was missing.
pub fn changed_anything(headers: &MetadataMap, trailers: Option<&MetadataMap>) -> bool {
    let said = |m: &MetadataMap| {
        m.get(gitcluster_proto::REFS_CHANGED_TRAILER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let flag = trailers.and_then(said).or_else(|| said(headers));
    flag.as_deref() != Some("0")
}

/// Longest wait for an aborted upstream call to end after the client went away.
const ABORT_GRACE: Duration = Duration::from_secs(30);

/// Request headers that describe the client's own connection or credentials and
/// must not reach a storage node (tonic sets its own encoding headers, and the
/// internal token replaces the client's).
const HOP_HEADERS: [&str; 7] = [
    "authorization",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-type",
    "te",
    "user-agent",
    "content-length",
];

/// `metadata` without the headers that belong to one hop.
pub fn sanitize(mut metadata: MetadataMap) -> MetadataMap {
    for h in HOP_HEADERS {
        metadata.remove(h);
    }
    metadata
}

/// The client's remaining request messages, parked until an upstream call first asks
/// for them. While still parked after a failed call, nothing but the first message
/// was sent, so the call can be replayed on another replica.
pub type Rest = Arc<Mutex<Option<Streaming<Bytes>>>>;

/// Parks the client's remaining messages (if the call is client-streaming).
pub fn park(rest: Option<Streaming<Bytes>>) -> Option<Rest> {
    rest.map(|r| Arc::new(Mutex::new(Some(r))))
}

/// True when no upstream call has taken the parked messages yet.
pub fn still_parked(rest: &Option<Rest>) -> bool {
    rest.as_ref()
        .is_none_or(|r| r.lock().map(|slot| slot.is_some()).unwrap_or(false))
}

/// The request stream: `first`, then the client's remaining messages (when the call
/// is client-streaming), aborting instead of ending when the client's stream fails or
/// `abort` fires.
pub fn outbound(
    first: Bytes,
    rest: Option<Rest>,
    abort: CancellationToken,
) -> impl Stream<Item = Outbound<Bytes>> + Send + 'static {
    let head = stream::once(async move { Outbound::Message(first) });
    let tail = stream::unfold(
        (rest, None::<Streaming<Bytes>>, abort, false),
        |(rest, mut taken, abort, aborted)| async move {
            if aborted {
                // After an abort the stream must never end cleanly; the reset drops it.
                std::future::pending::<()>().await;
            }
            if taken.is_none() {
                taken = rest.as_ref()?.lock().ok()?.take();
            }
            let inbound = taken.as_mut()?;
            tokio::select! {
                biased;
                () = abort.cancelled() => Some((Outbound::Abort, (rest, taken, abort, true))),
                next = inbound.message() => match next {
                    Ok(Some(m)) => Some((Outbound::Message(m), (rest, taken, abort, false))),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "client request stream failed; aborting upstream call");
                        Some((Outbound::Abort, (rest, taken, abort, true)))
                    }
                },
            }
        },
    );
    head.chain(tail)
}

/// Starts a call on `storage` and waits for its response headers.
pub async fn start(
    storage: &Storage,
    path: &str,
    metadata: MetadataMap,
    request: impl Stream<Item = Outbound<Bytes>> + Send + 'static,
) -> Result<tonic::Response<Streaming<Bytes>>, Status> {
    let mut grpc = storage.grpc();
    grpc.ready().await.map_err(|e| {
        Status::unavailable(format!("storage {} is unreachable: {e}", storage.name))
    })?;
    let path = PathAndQuery::try_from(path)
        .map_err(|e| Status::internal(format!("bad method path: {e}")))?;
    let mut request = tonic::Request::new(request);
    *request.metadata_mut() = sanitize(metadata);
    grpc.streaming(request, path, Abortable(BytesCodec)).await
}

/// A unary-style call: sends one message, collects every response message. Used for
/// fan-outs whose answers are small (creation, maintenance).
pub async fn call_collect(
    storage: &Storage,
    path: &str,
    metadata: MetadataMap,
    message: Bytes,
) -> Result<Vec<Bytes>, Status> {
    let request = outbound(message, None, CancellationToken::new());
    let mut response = start(storage, path, metadata, request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = response.message().await? {
        out.push(m);
    }
    Ok(out)
}

enum Frame {
    Message(Bytes),
    End(Result<(), Status>),
}

/// The upstream's response stream as the client's, with no task in between. Only for
/// calls whose whole request was already sent and that need no finalizer (reads that
/// are not client-streaming): dropping such a call cannot truncate anything, so the
/// pump's guarantees are not needed and its extra task hop per message is saved.
pub fn pass_through(response: tonic::Response<Streaming<Bytes>>) -> tonic::Response<ReplyStream> {
    let (metadata, upstream, _) = response.into_parts();
    let stream: ReplyStream = Box::pin(upstream);
    tonic::Response::from_parts(sanitize(metadata), stream, Default::default())
}

/// Relays a started call to the client (see the module doc).
pub fn relay(
    response: tonic::Response<Streaming<Bytes>>,
    abort: CancellationToken,
    finalizer: Option<Finalizer>,
) -> tonic::Response<ReplyStream> {
    let (metadata, upstream, _) = response.into_parts();
    let (tx, rx) = mpsc::channel(4);
    let finalizer = finalizer.map(|f| (f, metadata.clone()));
    crate::serve::spawn_tracked(pump(upstream, tx, abort, finalizer));
    let stream: ReplyStream = Box::pin(Relay { rx, done: false });
    tonic::Response::from_parts(sanitize(metadata), stream, Default::default())
}

/// A reply of messages the router made itself.
pub fn local(messages: Vec<Bytes>) -> tonic::Response<ReplyStream> {
    let stream: ReplyStream = Box::pin(stream::iter(messages.into_iter().map(Ok)));
    tonic::Response::new(stream)
}

/// Pumps the upstream's answer into `tx`. With a finalizer (a write) the answer is
/// held back (up to [`HOLD_BYTES`]) until the finalizer has recorded the write, so a
/// client never learns of a success the cluster does not know about: git prints its
/// ref update lines and exits 0 only once the record committed, and a failed record
/// reaches the client as an error in place of the held answer.
async fn pump(
    mut upstream: Streaming<Bytes>,
    tx: mpsc::Sender<Frame>,
    abort: CancellationToken,
    finalizer: Option<(Finalizer, MetadataMap)>,
) {
    let holding = finalizer.is_some();
    let mut held: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    let mut held_bytes = 0usize;
    let mut gone_deadline: Option<tokio::time::Instant> = None;
    let outcome = loop {
        let next = match gone_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, upstream.message()).await {
                Ok(next) => next,
                Err(_) => break Err(Status::cancelled("client went away")),
            },
            None => tokio::select! {
                next = upstream.message() => next,
                () = tx.closed() => {
                    abort.cancel();
                    gone_deadline = Some(tokio::time::Instant::now() + ABORT_GRACE);
                    continue;
                }
            },
        };
        match next {
            Ok(Some(m)) => {
                let mut out = Some(m);
                if holding {
                    held_bytes += out.as_ref().map_or(0, Bytes::len);
                    held.extend(out.take());
                    if held_bytes > HOLD_BYTES && held.len() > 1 {
                        out = held.pop_front();
                        held_bytes -= out.as_ref().map_or(0, Bytes::len);
                    }
                }
                if let Some(m) = out
                    && gone_deadline.is_none()
                    && tx.send(Frame::Message(m)).await.is_err()
                {
                    abort.cancel();
                    gone_deadline = Some(tokio::time::Instant::now() + ABORT_GRACE);
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let outcome = match (outcome, finalizer) {
        (Ok(()), Some((finalize, headers))) => {
            let trailers = upstream.trailers().await.ok().flatten();
            finalize(changed_anything(&headers, trailers.as_ref())).await
        }
        (outcome, _) => outcome,
    };
    if outcome.is_ok() {
        for m in held {
            if tx.send(Frame::Message(m)).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Frame::End(outcome)).await;
}

/// The client-facing side of [`pump`]. It ends cleanly only on an explicit OK from
/// the pump, so a pump that died for any reason can never look like success.
struct Relay {
    rx: mpsc::Receiver<Frame>,
    done: bool,
}

impl Stream for Relay {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Frame::Message(m))) => Poll::Ready(Some(Ok(m))),
            Poll::Ready(Some(Frame::End(Ok(())))) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Frame::End(Err(status)))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::internal("router lost the upstream call"))))
            }
        }
    }
}

/// One call's entry in `gitcluster_router_requests_total`: recorded once, with the
/// first code given, or as `Cancelled` if dropped before any.
pub(crate) struct CallCount {
    /// `None` once recorded.
    method: Option<String>,
}

impl CallCount {
    /// A pending count for a call of `method`.
    pub(crate) fn new(method: String) -> Self {
        CallCount {
            method: Some(method),
        }
    }

    /// Records `code` unless a code was already recorded.
    pub(crate) fn record(&mut self, code: tonic::Code) {
        if let Some(method) = self.method.take() {
            crate::proxy::count_request(&method, code);
        }
    }
}

impl Drop for CallCount {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

/// Wraps a reply to count it in `gitcluster_router_requests_total` when it ends
/// (with its final code) or is dropped early (as `Cancelled`).
pub struct Counted {
    inner: ReplyStream,
    count: CallCount,
}

impl Counted {
    /// Counts `inner` under `method`.
    pub fn new(inner: ReplyStream, method: String) -> Self {
        Counted {
            inner,
            count: CallCount::new(method),
        }
    }
}

impl Stream for Counted {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(None) => self.count.record(tonic::Code::Ok),
            Poll::Ready(Some(Err(status))) => self.count.record(status.code()),
            _ => {}
        }
        next
    }
}
