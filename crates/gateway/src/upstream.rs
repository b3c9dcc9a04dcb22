//! The gRPC side: clients of the upstream `gitcluster.v1` endpoint, and how its
//! statuses become HTTP responses.

use std::time::Duration;

use anyhow::Context as _;
use axum::response::{IntoResponse as _, Response};
use futures::Stream;
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::smart_http_service_client::SmartHttpServiceClient;
use http::StatusCode;
use http::uri::PathAndQuery;
use tonic::GrpcMethod;
use tonic::codec::{CompressionEncoding, Streaming};

use gitcluster_proto::abortable::{AbortableCodec, Outbound};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Channel with the upstream bearer token added to every call.
pub type AuthChannel = InterceptedService<Connections, BearerToken>;
/// Client of `SmartHTTPService` upstream.
pub type SmartHttpClient = SmartHttpServiceClient<AuthChannel>;
/// Client of `RepositoryService` upstream.
pub type RepositoryClient = RepositoryServiceClient<AuthChannel>;
/// Client of `RefService` upstream.
pub type RefClient = RefServiceClient<AuthChannel>;

/// Clients sharing one lazily connected channel (one or more HTTP/2 connections) to the
/// upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Smart HTTP over gRPC (advertisements).
    pub smart_http: SmartHttpClient,
    /// Repository lifecycle (push-to-create).
    pub repository: RepositoryClient,
    /// References (the default branch after a first push).
    pub refs: RefClient,
    /// Raw client for the `Post*` calls, whose request streams must be abortable
    /// (see `crate::abortable`).
    pub grpc: tonic::client::Grpc<AuthChannel>,
}

impl Upstream {
    /// Builds the clients without connecting: a down upstream makes requests fail with
    /// Unavailable (503) instead of failing start-up, and the channel reconnects by
    /// itself.
    ///
    /// The calls are spread round-robin over `connections` HTTP/2 connections (see
    /// [`Connections`]).
    pub fn connect_lazy(
        url: &str,
        token: Option<&str>,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .context("parse upstream URL")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true);
        // Each lazily connected channel is its own HTTP/2 connection.
        let channel = Connections::new(
            (0..connections.max(1))
                .map(|_| endpoint.clone().connect_lazy())
                .collect(),
        );
        let token = BearerToken::new(token).context("build upstream token interceptor")?;
        let max = gitcluster_proto::MAX_MESSAGE_BYTES;
        let smart_http = SmartHttpServiceClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip);
        let repository = RepositoryServiceClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip);
        let refs = RefServiceClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip);
        let grpc = tonic::client::Grpc::new(InterceptedService::new(channel, token))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip);
        Ok(Upstream {
            smart_http,
            repository,
            refs,
            grpc,
        })
    }

    /// Starts the bidi `SmartHTTPService/<method>` call (`PostUploadPack` or
    /// `PostReceivePack`) with an abortable request stream.
    pub async fn post_stream<M, R>(
        &self,
        method: &'static str,
        messages: impl Stream<Item = Outbound<M>> + Send + 'static,
    ) -> Result<tonic::Response<Streaming<R>>, tonic::Status>
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        const SERVICE: &str = "gitcluster.v1.SmartHTTPService";
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}"))
            .map_err(|e| tonic::Status::internal(format!("bad method path: {e}")))?;
        let mut request = tonic::Request::new(messages);
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, method));
        grpc.streaming(request, path, AbortableCodec::<M, R>::default())
            .await
    }
}

/// Several HTTP/2 connections to the upstream, one call after the other round-robin.
///
/// One connection for every call made a single GOAWAY (h2's flood guard answering a
/// burst of small DATA frames, a router restarting its listener) fail every call in
/// flight at once. With several, a connection torn down fails only the calls it carried;
/// tonic reconnects it by itself on its next call (each attempt bounded by the 5 s
/// connect timeout), while the others keep serving. tonic's `balance_list` is not used:
/// it keys connections by URI, so one URL listed N times is still one connection.
#[derive(Clone)]
pub struct Connections {
    channels: std::sync::Arc<[Channel]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Connections {
    fn new(channels: Vec<Channel>) -> Self {
        Connections {
            channels: channels.into(),
            next: Default::default(),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Connections {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Readiness is awaited on the chosen connection in `call`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.channels.len();
        let channel = self.channels[i].clone();
        Box::pin(tower::ServiceExt::oneshot(channel, request))
    }
}

/// The HTTP status for an upstream gRPC status code.
///
/// PermissionDenied and Unauthenticated are 502: the git client's credentials were
/// already checked here, so an upstream refusal means our own token is wrong.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::BAD_GATEWAY,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A plain-text response of one line.
pub fn plain(status: StatusCode, message: &str) -> Response {
    // One line, whatever the upstream put in its message.
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", line.trim()),
    )
        .into_response()
}

/// Logs an upstream failure at the level it deserves and turns it into a response.
pub fn error_response(status: &tonic::Status, rpc: &'static str, repo: &str) -> Response {
    let http = http_status(status.code());
    let code = status.code();
    let message = status.message();
    match code {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => tracing::error!(
            rpc,
            repo,
            ?code,
            message,
            "upstream rejected the gateway's token; check GITCLUSTER_GATEWAY_UPSTREAM_TOKEN"
        ),
        _ if http.is_server_error() => {
            tracing::warn!(rpc, repo, ?code, message, "upstream call failed")
        }
        _ => tracing::debug!(rpc, repo, ?code, message, "upstream refused the request"),
    }
    let message = if message.is_empty() {
        code.description()
    } else {
        message
    };
    plain(http, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 409),
            (Code::PermissionDenied, 502),
            (Code::Unauthenticated, 502),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::Cancelled, 500),
            (Code::Aborted, 500),
            (Code::DataLoss, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[tokio::test]
    async fn error_body_is_one_line_of_the_status_message() {
        let resp = error_response(
            &tonic::Status::not_found("repository\nnot found"),
            "PostUploadPack",
            "default/p.git",
        );
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body");
        assert_eq!(&body.to_bytes()[..], b"repository not found\n");
    }
}
