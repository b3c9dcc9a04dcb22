//! The gateway's HTTP accept loop.
//!
//! Its own rather than `axum::serve` for one knob: hyper's `header_read_timeout`. A
//! client that sends its request line and headers slowly (one byte a second), an
//! HTTP/0.9 request line hyper keeps waiting on, or a connection that opens and says
//! nothing would otherwise hold its socket and task forever. With the bound, hyper closes
//! the connection when a request's head is not complete in time (idle keep-alive
//! connections included: git simply opens a new one).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::framing::Sniffed;

/// Serves `app` on `listener` until `stop_accepting` resolves, then waits for the open
/// connections to finish their requests (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    stop_accepting: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop_accepting);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop_accepting => break,
        };
        // Git's small negotiation packets must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let (tcp, ambiguous) = Sniffed::new(tcp);
        let app = app.clone();
        // Shared: hyper's adapter clones the service for every request.
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let n = requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ambiguous = ambiguous.contains(n);
            let app = app.clone();
            async move {
                if ambiguous {
                    drain(request.into_body()).await;
                    return Ok::<_, std::convert::Infallible>(refuse_ambiguous());
                }
                tower::ServiceExt::oneshot(app, request).await
            }
        });
        let service = TowerToHyperService::new(service);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The answer to a request with both Content-Length and Transfer-Encoding (see
/// `crate::framing`): 400, and the connection is closed after it.
fn refuse_ambiguous() -> axum::response::Response {
    debug!("refusing a request with both content-length and transfer-encoding");
    let mut response = crate::upstream::plain(
        http::StatusCode::BAD_REQUEST,
        "request has both Content-Length and Transfer-Encoding",
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Reads (and drops) up to 64 KiB of a refused request's body for at most a second.
///
/// Closing a socket with unread input makes the kernel send RST instead of FIN, and a
/// client still writing its body may then lose the 400 before reading it.
async fn drain(body: hyper::body::Incoming) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut read = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while read < 64 * 1024 {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    })
    .await;
}
