//! What a `Post*` call's parts share — its request stream (`crate::request_body`),
//! its driver and its response (`crate::smart_http`) — and the gateway's metric names.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::StatusCode;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Counter of answered requests, labelled `service` and `code` (HTTP status).
pub const REQUESTS_METRIC: &str = "gitcluster_gateway_requests_total";
/// Counter of git payload bytes, labelled `direction` (`in`: client to upstream,
/// `out`: upstream to client).
pub const BYTES_METRIC: &str = "gitcluster_gateway_request_bytes_total";
/// Counter of request-body messages sent upstream (each one or more HTTP/2 DATA
/// frames): with `BYTES_METRIC{direction="in"}` it shows the mean message size.
pub const MESSAGES_METRIC: &str = "gitcluster_gateway_upstream_messages_total";

/// Signals shared by a `Post*` call's request stream, its driver and the response.
#[derive(Clone, Default)]
pub(crate) struct CallSignals {
    /// Set by the driver: the request stream must abort now.
    pub(crate) abort: CancellationToken,
    /// Set by the request stream once it has ended cleanly or begun aborting.
    pub(crate) request_over: CancellationToken,
    /// Set when the HTTP side went away before the response was complete.
    pub(crate) client_gone: CancellationToken,
    /// Set when the whole response was handed to the client connection.
    pub(crate) delivered: CancellationToken,
    /// The client's request body could not be read completely.
    pub(crate) body_failed: Arc<AtomicBool>,
    /// Why the client's request body failed, when it did (set before `body_failed`).
    pub(crate) body_error: Arc<std::sync::OnceLock<BodyError>>,
    /// Whether the client asked for side-band output, once its first pkt-line is read.
    pub(crate) sideband: Arc<std::sync::OnceLock<bool>>,
}

/// A request body the gateway refused: the client's fault, answered with `status`.
#[derive(Debug)]
pub(crate) struct BodyError {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

impl BodyError {
    pub(crate) fn new(status: StatusCode, reason: String) -> Self {
        BodyError { status, reason }
    }

    /// The body could not be read to its end (connection dropped, bad chunking, ...).
    pub(crate) fn incomplete(detail: String) -> Self {
        debug!(detail, "request body incomplete");
        BodyError::new(
            StatusCode::BAD_REQUEST,
            "request body incomplete or unreadable".to_owned(),
        )
    }
}
