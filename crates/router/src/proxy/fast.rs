//! The read fast path: unary and server-streaming reads of an existing repository,
//! forwarded at the HTTP/2 level.
//!
//! Such a call's whole request is one message, so the router reads it, rewrites the
//! repository exactly as the general path does, sends it on the chosen replica's
//! [`Lane`](super::Lane) and relays the node's response — headers, body and trailers —
//! unchanged. Nothing is decoded on the way back and no task sits between the two
//! connections. The rules are the general path's: the same candidates, the same
//! distribution metric, one replay on another replica when the first cannot be
//! reached (safe: a read has no side effects).
//!
//! Anything else is handed back untouched in meaning (the buffered body is put back)
//! to the general path, which also produces every error a client can cause: an
//! unknown virtual storage, a missing repository, an undecodable message. So the two
//! paths cannot disagree on an answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Limited};
use prost_reflect::DynamicMessage;
use rand::seq::SliceRandom as _;
use tonic::Status;
use tracing::warn;

use super::forward::CallCount;
use super::intercepted::Lifecycle;
use super::message::{repository_at, rewrite};
use super::{Coordinator, INTERNAL_SERVICE, count_request, virtual_storage};
use crate::lane::LaneBody;
use gitcluster_proto::registry::{MethodInfo, Operation, Scope};
use gitcluster_proto::relative_path::check_client_path;
use gitcluster_proto::{MAX_MESSAGE_BYTES, registry};

/// The client's request, given back when the fast path does not take it.
pub type Declined = http::Request<axum::body::Body>;

/// What the router answers with.
pub type Reply = http::Response<tonic::body::Body>;

/// Request headers that belong to the client's hop: its credentials (replaced by the
/// internal token) and framing details hyper sets itself.
const HOP_HEADERS: [http::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::header::CONTENT_LENGTH,
    http::header::HOST,
];

/// True for calls the fast path may serve, judged on the method and headers alone.
fn eligible(path: &str, info: &MethodInfo, headers: &HeaderMap) -> bool {
    info.operation == Operation::Accessor
        && !info.client_streaming
        && info.scope == Scope::Repository
        && info.additional_repository.is_none()
        && !path.starts_with(INTERNAL_SERVICE)
        // Answered from, or recorded in, the metadata by the general path.
        && Lifecycle::of(path).is_none()
        // A compressed request would have to be inflated to be rewritten.
        && headers
            .get("grpc-encoding")
            .is_none_or(|v| v.as_bytes() == b"identity")
}

/// The single message of a gRPC request body, when the body is exactly one
/// uncompressed, length-prefixed message.
fn single_message(body: &Bytes) -> Option<Bytes> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (flag == 0 && rest.len() == 4 + len).then(|| body.slice(5..))
}

/// `message` with gRPC's length prefix.
fn framed(message: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(message.len()).ok()?;
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(len);
    out.put_slice(message);
    Some(out.freeze())
}

impl Coordinator {
    /// Serves `request` on the fast path, or gives it back (see the module doc).
    pub(super) async fn fast_read(self: &Arc<Self>, request: Declined) -> Result<Reply, Declined> {
        let path = request.uri().path().to_owned();
        let Some(info) = registry().get(&path) else {
            return Err(request);
        };
        if !eligible(&path, info, request.headers()) {
            return Err(request);
        }
        if let Err(status) = self.auth.check_headers(request.headers()) {
            count_request(&path, status.code());
            return Ok(status.into_http());
        }
        let (parts, body) = request.into_parts();
        // One message plus its prefix; a longer body is refused like tonic would.
        let body = match Limited::new(body, MAX_MESSAGE_BYTES + 5).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    Status::resource_exhausted(format!(
                        "request message larger than {MAX_MESSAGE_BYTES} bytes"
                    ))
                } else {
                    Status::cancelled(format!("client request stream failed: {e}"))
                };
                count_request(&path, status.code());
                return Ok(status.into_http());
            }
        };
        match self.forward_read(&path, info, &parts.headers, &body).await {
            Some(reply) => Ok(reply),
            None => Err(http::Request::from_parts(parts, body.into())),
        }
    }

    /// Routes and forwards one read; `None` when the general path must answer.
    async fn forward_read(
        self: &Arc<Self>,
        path: &str,
        info: &'static MethodInfo,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Reply> {
        let message = DynamicMessage::decode(info.input.clone(), single_message(body)?).ok()?;
        let (vs_name, relative_path) = repository_at(&message, info.target_repository.as_ref()?)?;
        // A path the rules refuse is declined: the general path answers it.
        check_client_path(&relative_path).ok()?;
        let topology = self.topology.get();
        let vs = virtual_storage(&topology, &vs_name).ok()?;
        let meta = self.cache.get(&vs.name, &relative_path).await.ok()??;
        let mut candidates = self.read_candidates(path, headers, vs, &meta).ok()?;
        candidates.shuffle(&mut rand::rng());

        let mut upstream_headers = headers.clone();
        for h in &HOP_HEADERS {
            upstream_headers.remove(h);
        }
        let mut last = None;
        for storage_name in candidates.iter().take(2) {
            let storage = &vs.storages[storage_name];
            let lane = storage.lane.as_ref()?;
            storage.reads.increment(1);
            let rewritten = rewrite(&message, info, storage_name, &meta.replica_path, None).ok()?;
            match lane
                .send(path, upstream_headers.clone(), framed(&rewritten)?)
                .await
            {
                Ok(response) => return Some(counted(response, path)),
                Err(status) => {
                    warn!(storage = %storage_name, method = %path, error = %status.message(),
                        "replica unavailable for a read");
                    last = Some(status);
                }
            }
        }
        let status = last?;
        count_request(path, status.code());
        Some(status.into_http())
    }
}

/// The node's response as the client's, counted in the request metric when it ends.
fn counted(response: http::Response<LaneBody>, path: &str) -> Reply {
    let (parts, body) = response.into_parts();
    // A trailers-only response (an error before any message) carries its status in
    // the headers; otherwise the status comes in the trailers.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        count_request(path, status.code());
        return http::Response::from_parts(parts, tonic::body::Body::new(body));
    }
    let body = CountedBody {
        inner: body,
        count: CallCount::new(path.to_owned()),
    };
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// A response body that records its gRPC status from the trailers, `Unknown` when
/// the stream ends without one and `Cancelled` when dropped before its end.
struct CountedBody {
    inner: LaneBody,
    count: CallCount,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let next = Pin::new(&mut self.inner).poll_frame(cx);
        match &next {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = Status::from_header_map(trailers)
                        .map_or(tonic::Code::Unknown, |s| s.code());
                    self.count.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count.record(tonic::Code::Unavailable),
            Poll::Ready(None) => self.count.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_rpcs_are_left_to_the_general_path() {
        let headers = HeaderMap::new();
        let mut intercepted = Vec::new();
        for info in registry().methods() {
            if Lifecycle::of(&info.path).is_some() {
                intercepted.push(info.path.as_str());
                assert!(
                    !eligible(&info.path, info, &headers),
                    "{} must be answered from metadata",
                    info.path
                );
            }
        }
        intercepted.sort_unstable();
        assert_eq!(
            intercepted,
            [
                "/gitcluster.v1.RepositoryService/CreateRepository",
                "/gitcluster.v1.RepositoryService/RemoveRepository",
                "/gitcluster.v1.RepositoryService/RenameRepository",
                "/gitcluster.v1.RepositoryService/RepositoryExists",
            ]
        );
        // An ordinary read of a repository stays eligible.
        let size = "/gitcluster.v1.RepositoryService/RepositorySize";
        let info = registry().get(size).expect("registered");
        assert!(eligible(size, info, &headers));
    }

    #[test]
    fn single_message_takes_exactly_one_uncompressed_frame() {
        let one = framed(b"hello").expect("frame");
        assert_eq!(single_message(&one), Some(Bytes::from_static(b"hello")));
        let empty = framed(b"").expect("frame");
        assert_eq!(single_message(&empty), Some(Bytes::new()));

        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        assert_eq!(single_message(&two.freeze()), None, "two messages");
        assert_eq!(single_message(&one.slice(..7)), None, "truncated");
        assert_eq!(
            single_message(&Bytes::from_static(b"\0\0")),
            None,
            "short prefix"
        );
        let mut compressed = BytesMut::from(&one[..]);
        compressed[0] = 1;
        assert_eq!(single_message(&compressed.freeze()), None, "compressed");
    }
}
