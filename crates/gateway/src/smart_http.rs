//! Git smart HTTP, carried over gRPC to the upstream.
//!
//! * `GET info/refs` becomes a server-streaming `InfoRefs*` call whose chunks already form
//!   the complete advertisement (the storage node adds the `# service=` prefix).
//! * `POST git-upload-pack` / `git-receive-pack` become bidi `Post*` calls: the first
//!   message names the repository, then the request body follows in chunks of at most
//!   `STREAM_CHUNK_BYTES`; the response messages are the HTTP response body. Nothing is
//!   buffered whole: HTTP/1 and HTTP/2 flow control push back on both sides.
//! * Before the HTTP status is chosen the gateway waits for the first upstream message,
//!   so an upstream refusal (NotFound, ...) becomes a proper status code. Once the
//!   response has started, an upstream failure can only cut the body short.
//!
//! **Truncated request bodies.** If reading the client's body fails (connection dropped,
//! short Content-Length, unterminated chunked encoding, corrupt gzip), the upstream call
//! is *aborted*: its HTTP/2 stream is reset with `INTERNAL_ERROR` and the request stream
//! never ends cleanly. A clean end-of-stream would tell the storage node that the
//! truncated input is the whole push, and `git receive-pack` could act on it. Note that
//! a plain cancel (`CANCEL`, what dropping a tonic call sends) is *not* enough: tonic
//! servers read it as a clean end. See `crate::abortable` and `CallDriver`.
//!
//! **Push-to-create.** A push to a missing repository creates it first, unless the
//! body starts with a flush packet: git's 4-byte probe POST (`0000`, sent before a
//! push bigger than `http.postBuffer`) and any other push without commands is
//! answered with git's empty answer and creates nothing. If this request created
//! the repository and the push then did not complete (the upstream failed, or the
//! client went away before the upstream answered), the gateway asks the router for a
//! *conditional* removal (`only_if_empty`): the router removes the repository only
//! while it is still exactly as created — no write recorded, no ref and no write in
//! flight on the primary. A push another client made meanwhile keeps it, and so does
//! this request's own push once the upstream answered OK (recorded), whether or not
//! the client read the last byte of the answer.
//!
//! **Default branch.** After a push completes, a HEAD left unborn is pointed at a
//! branch (see `crate::default_branch`) before the response ends, so a clone right
//! after the push checks something out.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _, stream};
use gitcluster_proto::abortable::Outbound;
use gitcluster_proto::v1::{
    InfoRefsRequest, InfoRefsResponse, PostReceivePackRequest, PostReceivePackResponse,
    PostUploadPackRequest, PostUploadPackResponse,
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::codec::Streaming;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::{debug, warn};

use crate::call::{BYTES_METRIC, CallSignals, REQUESTS_METRIC};
use crate::client_auth::{self, AuthOutcome, ClientAuth};
use crate::git_error::{self, Answer, Sideband};
use crate::push_to_create::{CreatedRepository, Ensured, ensure_repository};
use crate::request_body::{Chunk, expected_length, request_chunks};
use crate::route::{self, Endpoint, GitService, RepoPath, display};
use crate::upstream::{self, RefClient, Upstream, plain};

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) upstream: Upstream,
    pub(crate) auth: Option<ClientAuth>,
    pub(crate) push_to_create: bool,
    /// Longest silence of a request body (see `crate::request_body`).
    pub(crate) body_idle_timeout: Duration,
}

/// The `service` label of a response, for the requests metric.
#[derive(Clone, Copy)]
struct ServiceLabel(&'static str);

/// The gateway's HTTP application.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(dispatch)
        .with_state(state)
        // git gzips large negotiation bodies (`Content-Encoding: gzip`).
        .layer(RequestDecompressionLayer::new())
        .layer(middleware::from_fn(count_request))
        // 5xx answers are logged where they are handled, at the level they deserve; the
        // trace layer's default ERROR for every 5xx would page humans for a down node.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

async fn count_request(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let service = response
        .extensions()
        .get::<ServiceLabel>()
        .map_or("none", |s| s.0);
    metrics::counter!(
        REQUESTS_METRIC,
        "service" => service,
        "code" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Routes every request that is not `/healthz`: auth, then URL, then method.
async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(auth) = &state.auth {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let outcome = auth.check(header);
        if outcome != AuthOutcome::Accepted {
            debug!(
                ?outcome,
                path = parts.uri.path(),
                "client authentication failed"
            );
            let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(client_auth::CHALLENGE),
            );
            return response;
        }
    }
    let Some((prefix, endpoint)) = route::split_endpoint(parts.uri.path()) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if parts.method != endpoint.method() {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = HeaderValue::from_static(endpoint.allow());
        response.headers_mut().insert(header::ALLOW, allow);
        return response;
    }
    let repo = match route::parse_repo(prefix) {
        Ok(repo) => repo,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, reason),
    };
    let git_protocol = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (label, mut response) = match endpoint {
        Endpoint::InfoRefs => match route::parse_service(parts.uri.query()) {
            Err(reason) => ("none", plain(StatusCode::BAD_REQUEST, reason)),
            Ok(GitService::UploadPack) => (
                "info_refs_upload_pack",
                info_refs(&state, &repo, GitService::UploadPack, git_protocol).await,
            ),
            Ok(GitService::ReceivePack) => (
                "info_refs_receive_pack",
                info_refs(&state, &repo, GitService::ReceivePack, git_protocol).await,
            ),
        },
        Endpoint::UploadPack => (
            "upload_pack",
            post_rpc(
                &state,
                &repo,
                GitService::UploadPack,
                git_protocol,
                &parts.headers,
                body,
            )
            .await,
        ),
        Endpoint::ReceivePack => (
            "receive_pack",
            post_rpc(
                &state,
                &repo,
                GitService::ReceivePack,
                git_protocol,
                &parts.headers,
                body,
            )
            .await,
        ),
    };
    if git_error::is_git(&parts.headers) {
        let answer = match endpoint {
            Endpoint::InfoRefs => route::parse_service(parts.uri.query())
                .ok()
                .map(|service| (service, Answer::Advertisement)),
            Endpoint::UploadPack | Endpoint::ReceivePack => {
                let service = if endpoint == Endpoint::UploadPack {
                    GitService::UploadPack
                } else {
                    GitService::ReceivePack
                };
                let sideband = response.extensions().get::<Sideband>().is_some_and(|s| s.0);
                let answer = if sideband {
                    Answer::SidebandResult
                } else {
                    Answer::Result
                };
                Some((service, answer))
            }
        };
        if let Some((service, answer)) = answer {
            response = git_error::for_git(response, service, answer).await;
        }
    }
    response.extensions_mut().insert(ServiceLabel(label));
    response
}

async fn info_refs(
    state: &AppState,
    repo: &RepoPath,
    service: GitService,
    git_protocol: String,
) -> Response {
    let request = InfoRefsRequest {
        repository: Some(repo.to_proto()),
        git_protocol,
        advertise_empty_if_missing: service == GitService::ReceivePack && state.push_to_create,
    };
    let mut client = state.upstream.smart_http.clone();
    let (rpc, call) = match service {
        GitService::UploadPack => (
            "InfoRefsUploadPack",
            client.info_refs_upload_pack(request).await,
        ),
        GitService::ReceivePack => (
            "InfoRefsReceivePack",
            client.info_refs_receive_pack(request).await,
        ),
    };
    let content_type = format!("application/x-{}-advertisement", service.name());
    relay_advertisement(call, rpc, display(repo), &content_type).await
}

async fn post_rpc(
    state: &AppState,
    repo: &RepoPath,
    service: GitService,
    git_protocol: String,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let (created, body) = match service {
        GitService::UploadPack => (None, body),
        GitService::ReceivePack => match ensure_repository(
            state.upstream.repository.clone(),
            state.push_to_create,
            repo,
            body,
        )
        .await
        {
            Ok(Ensured::Ready(created, body)) => (created, body),
            Ok(Ensured::NothingToDo) => {
                let content_type = format!("application/x-{}-result", service.name());
                return with_git_headers(Response::new(Body::empty()), &content_type);
            }
            Err(response) => return response,
        },
    };
    let name = display(repo);
    let signals = CallSignals::default();
    let chunks = request_chunks(
        body,
        expected_length(headers),
        service,
        state.body_idle_timeout,
        signals.clone(),
        name.clone(),
    );
    let (start_tx, start_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(2);
    let rpc = match service {
        GitService::UploadPack => "PostUploadPack",
        GitService::ReceivePack => "PostReceivePack",
    };
    let after_push = match service {
        GitService::UploadPack => None,
        GitService::ReceivePack => Some((state.upstream.refs.clone(), repo.clone())),
    };
    let driver = CallDriver {
        signals: signals.clone(),
        created,
        repo: name.clone(),
        rpc,
        after_push,
    };
    let repository = Some(repo.to_proto());
    let upstream = state.upstream.clone();
    // The call runs in its own task: it must outlive this handler when the client goes
    // away, until its request stream has been aborted (see `CallDriver`).
    match service {
        GitService::UploadPack => spawn_post(
            upstream,
            driver,
            PostUploadPackRequest {
                repository,
                data: Vec::new(),
                git_protocol,
            },
            chunks,
            |data| PostUploadPackRequest {
                data,
                ..Default::default()
            },
            |m: PostUploadPackResponse| m.data,
            start_tx,
            body_tx,
        ),
        GitService::ReceivePack => spawn_post(
            upstream,
            driver,
            PostReceivePackRequest {
                repository,
                data: Vec::new(),
                git_protocol,
            },
            chunks,
            |data| PostReceivePackRequest {
                data,
                ..Default::default()
            },
            |m: PostReceivePackResponse| m.data,
            start_tx,
            body_tx,
        ),
    }
    // Dropping this handler or the response body before the end marks the client gone.
    let gone = signals.client_gone.clone().drop_guard();
    match start_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            drop(gone);
            let mut response = call_failed(&signals, &status, rpc, &name);
            // For git, the error answer's framing depends on what the client asked for.
            if let Some(&sideband) = signals.sideband.get() {
                response.extensions_mut().insert(Sideband(sideband));
            }
            return response;
        }
        Err(_) => {
            warn!(rpc, repo = %name, "upstream call task ended without an answer");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    }
    let reader = ResponseReader {
        rx: body_rx,
        gone: Some(gone),
        delivered: signals.delivered.clone(),
    };
    let body = stream::unfold(reader, |mut r| async move {
        match r.rx.recv().await {
            Some(Ok(bytes)) => {
                metrics::counter!(BYTES_METRIC, "direction" => "out").increment(bytes.len() as u64);
                Some((Ok(bytes), r))
            }
            // An error (not a clean end) so that the client sees a truncated response.
            Some(Err(status)) => Some((Err(status), r)),
            None => {
                r.delivered.cancel();
                if let Some(gone) = r.gone.take() {
                    gone.disarm();
                }
                None
            }
        }
    });
    let content_type = format!("application/x-{}-result", service.name());
    with_git_headers(Response::new(Body::from_stream(body)), &content_type)
}

/// The answer to a `Post*` call that failed before its response started.
fn call_failed(
    signals: &CallSignals,
    status: &tonic::Status,
    rpc: &'static str,
    name: &str,
) -> Response {
    if signals.body_failed.load(Ordering::SeqCst) {
        // The upstream error is our own abort of a body the client got wrong.
        // The rest of that body is never read: the connection cannot be reused.
        let (status, reason) = match signals.body_error.get() {
            Some(e) => (e.status, e.reason.as_str()),
            None => (
                StatusCode::BAD_REQUEST,
                "request body incomplete or unreadable",
            ),
        };
        let mut response = plain(status, reason);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    upstream::error_response(status, rpc, name)
}

/// The response side of a `Post*` call, as handed to hyper.
struct ResponseReader {
    rx: mpsc::Receiver<Result<Bytes, tonic::Status>>,
    gone: Option<DropGuard>,
    delivered: CancellationToken,
}

/// One item of the request stream: body bytes, or the order to abort.
/// Starts a streaming POST call in its own task: `first` (repository and protocol),
/// then each body chunk wrapped by `wrap`, or an abort when the body fails.
#[allow(clippy::too_many_arguments)] // one call site per git service; a struct adds nothing
fn spawn_post<M, R>(
    upstream: Upstream,
    driver: CallDriver,
    first: M,
    chunks: impl Stream<Item = Chunk> + Send + 'static,
    wrap: fn(Vec<u8>) -> M,
    data: fn(R) -> Vec<u8>,
    start_tx: oneshot::Sender<Result<(), tonic::Status>>,
    body_tx: mpsc::Sender<Result<Bytes, tonic::Status>>,
) where
    M: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let messages =
        stream::once(async { Outbound::Message(first) }).chain(chunks.map(move |c| match c {
            Chunk::Data(bytes) => Outbound::Message(wrap(bytes.into())),
            Chunk::Abort => Outbound::Abort,
        }));
    let rpc = driver.rpc;
    tokio::spawn(async move {
        let call = upstream.post_stream(rpc, messages);
        driver.run(call, data, start_tx, body_tx).await;
    });
}

/// How a `Post*` call's response relay ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The upstream answered completely.
    Completed,
    /// The upstream failed (before or after the response started).
    Failed,
    /// The HTTP side stopped listening.
    ClientGone,
}

/// Owns one `Post*` call from start to cleanup.
///
/// The one rule it exists for: the call is never dropped while its request stream may
/// still be open. Dropping a call resets it with `CANCEL`, which a tonic server reads as
/// a clean end of input (see `crate::abortable`). So when the client goes away, the
/// driver first makes the request stream abort, waits (bounded) until it has, and only
/// then lets go of the call. Afterwards it removes a repository this request created
/// unless the push completed and its whole response reached the client.
struct CallDriver {
    signals: CallSignals,
    created: Option<Box<CreatedRepository>>,
    repo: String,
    rpc: &'static str,
    /// For a push: where to settle the default branch once the upstream answered OK.
    after_push: Option<(RefClient, RepoPath)>,
}

/// Longest wait for an aborted request stream to reset before the call is dropped.
const ABORT_GRACE: Duration = Duration::from_secs(30);

impl CallDriver {
    async fn run<R: Send + 'static>(
        self,
        call: impl Future<Output = Result<tonic::Response<Streaming<R>>, tonic::Status>>,
        data: fn(R) -> Vec<u8>,
        start_tx: oneshot::Sender<Result<(), tonic::Status>>,
        body_tx: mpsc::Sender<Result<Bytes, tonic::Status>>,
    ) {
        let mut relay = Box::pin(relay_call(
            call,
            data,
            start_tx,
            body_tx,
            self.rpc,
            &self.repo,
            self.after_push.clone(),
        ));

        let outcome = tokio::select! {
            outcome = &mut relay => Some(outcome),
            () = self.signals.client_gone.cancelled() => None,
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                self.signals.abort.cancel();
                let settle = async {
                    tokio::select! {
                        _ = &mut relay => {}
                        () = self.signals.request_over.cancelled() => {}
                    }
                };
                if tokio::time::timeout(ABORT_GRACE, settle).await.is_err() {
                    warn!(rpc = self.rpc, repo = %self.repo,
                        "request stream did not abort in time, dropping the upstream call");
                }
                Outcome::ClientGone
            }
        };
        drop(relay);
        let Some(created) = self.created else { return };
        // A push the upstream answered OK was recorded: it stays, read or not. In
        // every other case the router decides, atomically, whether the repository is
        // still exactly as created (see the module doc).
        if outcome != Outcome::Completed {
            created.remove_if_as_created().await;
        }
    }
}

/// Forwards a call's response: the first message (or failure) through `start_tx`, the
/// rest through `body_tx`.
async fn relay_call<R>(
    call: impl Future<Output = Result<tonic::Response<Streaming<R>>, tonic::Status>>,
    data: fn(R) -> Vec<u8>,
    start_tx: oneshot::Sender<Result<(), tonic::Status>>,
    body_tx: mpsc::Sender<Result<Bytes, tonic::Status>>,
    rpc: &'static str,
    repo: &str,
    after_push: Option<(RefClient, RepoPath)>,
) -> Outcome {
    let mut messages = match call.await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = start_tx.send(Err(status));
            return Outcome::Failed;
        }
    };
    // Wait for the first message so that an upstream refusal still becomes a status code.
    let mut next = match messages.message().await {
        Ok(first) => first,
        Err(status) => {
            let _ = start_tx.send(Err(status));
            return Outcome::Failed;
        }
    };
    if start_tx.send(Ok(())).is_err() {
        return Outcome::ClientGone;
    }
    loop {
        let Some(message) = next else {
            // Before the response ends, so a clone right after the push sees HEAD.
            if let Some((refs, repo)) = after_push {
                crate::default_branch::settle(refs, &repo).await;
            }
            return Outcome::Completed;
        };
        if body_tx.send(Ok(Bytes::from(data(message)))).await.is_err() {
            return Outcome::ClientGone;
        }
        next = match messages.message().await {
            Ok(next) => next,
            Err(status) => {
                warn!(rpc, repo, code = ?status.code(), message = status.message(),
                    "upstream failed after the response started");
                let _ = body_tx.send(Err(status)).await;
                return Outcome::Failed;
            }
        };
    }
}

/// Streams an advertisement's messages out as the HTTP response body.
async fn relay_advertisement(
    call: Result<tonic::Response<Streaming<InfoRefsResponse>>, tonic::Status>,
    rpc: &'static str,
    repo: String,
    content_type: &str,
) -> Response {
    let mut messages = match call {
        Ok(response) => response.into_inner(),
        Err(status) => return upstream::error_response(&status, rpc, &repo),
    };
    let first = match messages.message().await {
        Ok(first) => first,
        Err(status) => return upstream::error_response(&status, rpc, &repo),
    };
    let rest = stream::unfold(Some(messages), move |state| {
        let repo = repo.clone();
        async move {
            let mut messages = state?;
            match messages.message().await {
                Ok(Some(m)) => Some((Ok(Bytes::from(m.data)), Some(messages))),
                Ok(None) => None,
                Err(status) => {
                    warn!(rpc, repo = %repo, code = ?status.code(), message = status.message(),
                        "upstream failed after the response started");
                    Some((Err(status), None))
                }
            }
        }
    });
    let body = stream::iter(first.map(|m| Ok::<_, tonic::Status>(Bytes::from(m.data))))
        .chain(rest)
        .inspect_ok(|b| {
            metrics::counter!(BYTES_METRIC, "direction" => "out").increment(b.len() as u64)
        });
    with_git_headers(Response::new(Body::from_stream(body)), content_type)
}

pub(crate) fn with_git_headers(mut response: Response, content_type: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
