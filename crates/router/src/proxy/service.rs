//! The router's catch-all tower service: every path not served by its own services
//! (health, reflection) is tried on the read lane, then handled by the coordinator
//! through tonic's codec.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use gitcluster_proto::MAX_MESSAGE_BYTES;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Streaming};

use super::Coordinator;
use crate::codec::BytesCodec;

/// The catch-all tower service: every path not served by the router's own services
/// (health, reflection) lands here.
#[derive(Clone)]
pub struct Proxy(pub Arc<Coordinator>);

impl tower::Service<http::Request<axum::body::Body>> for Proxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let coordinator = self.0.clone();
        Box::pin(async move {
            let req = match coordinator.fast_read(req).await {
                Ok(reply) => return Ok(reply),
                Err(declined) => declined,
            };
            let path = req.uri().path().to_owned();
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                // Accept gzip, never compress: payloads are mostly pack data, already
                // compressed; a client asking for gzip still gets it from the node.
                .accept_compressed(CompressionEncoding::Gzip);
            let handler = tower::service_fn(move |request: Request<Streaming<Bytes>>| {
                coordinator.clone().handle(path.clone(), request)
            });
            Ok(grpc.streaming(handler, req).await)
        })
    }
}
