//! Request metrics: `gitcluster_storage_requests_total{method,code}` and
//! `gitcluster_storage_request_duration_seconds{method}`, recorded by a tower layer
//! around the whole gRPC server.
//!
//! The code is taken from `grpc-status` in the response headers (where tonic puts
//! it for calls that fail before streaming) or, failing that, from the trailers
//! when the response body ends, so streaming calls that fail midway are counted
//! with their real code. Duration runs until the body ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::BodyExt as _;

/// Counter of finished requests by method and gRPC code.
pub const REQUESTS_TOTAL: &str = "gitcluster_storage_requests_total";
/// Histogram of request durations in seconds by method.
pub const REQUEST_DURATION: &str = "gitcluster_storage_request_duration_seconds";

/// Gauge of requests waiting for a git process slot, by `class` (client,
/// replication, peer; see [`crate::slots`]).
pub const GIT_SLOTS_WAITING: &str = "gitcluster_storage_git_slot_waiting";
/// Counter of requests refused a git process slot after the wait bound, by `class`
/// and `limit` (`node`: the pool was full; `repository`: the per-repository limit).
pub const GIT_SLOTS_REFUSED: &str = "gitcluster_storage_git_slot_refused_total";
/// Gauge of running git processes by `class`.
pub const GIT_PROCESSES: &str = "gitcluster_storage_git_processes";

/// Layer recording request metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMetricsLayer;

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner }
    }
}

/// Service recording request metrics (see module doc).
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let mut record = Record {
            method: req.uri().path().to_owned(),
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let header_code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(code) = header_code {
                record.finish(&code);
            }
            Ok(response.map(move |body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    if let Some(trailers) = frame.trailers_ref() {
                        let code = trailers
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0");
                        record.finish(code);
                    }
                    frame
                }))
            }))
        })
    }
}

/// One request's metrics, recorded exactly once: from the status, or as Cancelled
/// when the body is dropped before its trailers (the client went away).
#[derive(Debug)]
struct Record {
    method: String,
    start: Instant,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = code
            .parse::<i32>()
            .map(|c| format!("{:?}", tonic::Code::from(c)))
            .unwrap_or_else(|_| "Unknown".into());
        metrics::counter!(REQUESTS_TOTAL, "method" => self.method.clone(), "code" => code)
            .increment(1);
        metrics::histogram!(REQUEST_DURATION, "method" => self.method.clone())
            .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish("1");
    }
}
