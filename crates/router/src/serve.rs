//! The gRPC listener and its serving threads.
//!
//! A forwarded call crosses the router as a chain of small tasks: the client
//! connection's, the call's, and the storage connection's (the read lane). On a
//! work-stealing runtime each wake-up of one of them can hand it to another worker
//! thread, so a single call paid several cross-thread wake-ups; on a 2-vCPU machine
//! that was about a third of the router's added latency (docs/decisions.md, "Serving
//! threads"). So the router serves on `--serve-threads` threads, each with its own
//! single-threaded runtime: one accept loop hands every new client connection to one
//! thread (round robin), and everything that connection's calls do — the HTTP/2
//! connection, the calls, their read lanes ([`slot`]) — stays on that thread.
//!
//! One listening socket (no `SO_REUSEPORT`), so a second router started on the same
//! port fails to bind instead of silently sharing the traffic. The general path's
//! tonic channels, the health probes, the LISTEN connection, the publisher and the
//! database pool's connections stay on the main runtime; a call reaches them with an
//! ordinary cross-thread wake-up.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{info, warn};

/// Gauge: client connections open on each serving thread (`thread` = its index), so
/// an operator can see how connections are spread.
pub const CONNECTIONS_METRIC: &str = "gitcluster_router_client_connections";

thread_local! {
    /// 1 + the index of the serving thread running here; 0 elsewhere.
    static SLOT: Cell<usize> = const { Cell::new(0) };
    /// Tasks a call leaves behind that must finish before this thread's runtime is
    /// dropped (see [`spawn_tracked`]).
    static LEFT_BEHIND: TaskTracker = TaskTracker::new();
}

/// Longest wait, at shutdown, for the tasks calls left behind on a serving thread.
const LEFT_BEHIND_GRACE: Duration = Duration::from_secs(120);

/// Spawns `task` on the current runtime, and on a serving thread keeps that thread's
/// runtime alive until it ends. A call's relay task outlives its client (it aborts
/// the upstream call and still records a write the primary applied); dropping the
/// runtime at shutdown, once the clients are gone, would cancel it half-way.
pub fn spawn_tracked<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    LEFT_BEHIND.with(|tracker| {
        tracker.spawn(task);
    });
}

/// Per-thread state index of the current thread: `1..=n` on the serving threads, `0`
/// on any other thread. Lanes keep one connection per slot, so a call's storage
/// connection is driven by the thread the call runs on.
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// How long to wait before accepting again after `accept` failed (for example when
/// the process is out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The serving threads, started and waiting for connections.
pub struct Workers {
    connections: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    finished: Vec<oneshot::Receiver<anyhow::Result<()>>>,
    /// Stops the threads: the process's shutdown, or a thread failing.
    stop: CancellationToken,
}

impl Workers {
    /// Builds `threads` runtimes (at least one) and starts their threads, serving
    /// `routes` once connections arrive, until `shutdown`. Fails — before the router
    /// reports ready — when a runtime or a thread cannot be created.
    pub fn start(
        threads: usize,
        routes: &tonic::service::Routes,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Workers> {
        let stop = shutdown.child_token();
        let mut connections = Vec::new();
        let mut finished = Vec::new();
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build a serving thread's runtime")?;
            let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            let (done_tx, done_rx) = oneshot::channel();
            let routes = routes.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("router-serve-{index}"))
                .spawn(move || {
                    let _ = done_tx.send(serve_thread(runtime, index + 1, rx, routes, stop));
                })
                .context("start a serving thread")?;
            connections.push(tx);
            finished.push(done_rx);
        }
        Ok(Workers {
            connections,
            finished,
            stop,
        })
    }

    /// Hands the connections of `listener` to the threads in turn until shutdown, then
    /// waits for every thread to drain. Ends with an error, at once, when a thread
    /// stops before shutdown: the router can no longer serve that thread's share of
    /// connections, so it stops (the other threads are told to drain).
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        let Workers {
            connections,
            mut finished,
            stop,
        } = self;
        let accept = async {
            let mut next = 0;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Small gRPC frames must not wait for delayed ACKs (Nagle costs ~40 ms
                // a call).
                if let Err(error) = stream.set_nodelay(true) {
                    warn!(%error, "cannot set TCP_NODELAY on a client connection");
                }
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(error) => {
                        warn!(%error, "cannot hand a client connection to a serving thread");
                        continue;
                    }
                };
                // A thread that has ended has closed its queue: that thread's report
                // says why.
                if connections[next].send(stream).is_err() {
                    return next;
                }
                next = (next + 1) % connections.len();
            }
        };
        // Shutdown first: once it has fired, threads ending is their drain, not a
        // fault.
        let ended = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            index = accept => Some((index, None)),
            (report, index, _) = futures::future::select_all(finished.iter_mut()) => {
                Some((index, Some(report)))
            }
        };
        if let Some((index, report)) = ended {
            let unexpected = !stop.is_cancelled();
            stop.cancel();
            let report = match report {
                Some(report) => {
                    // Already received: not to be awaited again below.
                    finished.swap_remove(index);
                    report
                }
                None => finished.swap_remove(index).await,
            };
            thread_result(report)?;
            anyhow::ensure!(!unexpected, "a serving thread stopped unexpectedly");
        }
        // New connections are refused from here; the threads drain theirs.
        drop(listener);
        drop(connections);
        for done in finished {
            thread_result(done.await)?;
        }
        Ok(())
    }
}

/// A serving thread's report: its own outcome, or that it panicked before reporting.
fn thread_result(
    report: Result<anyhow::Result<()>, oneshot::error::RecvError>,
) -> anyhow::Result<()> {
    match report {
        Ok(result) => result.context("serving thread"),
        Err(_) => anyhow::bail!("a serving thread panicked"),
    }
}

/// One serving thread: a single-threaded runtime serving the connections it is
/// handed until `shutdown`, then draining them.
fn serve_thread(
    runtime: tokio::runtime::Runtime,
    slot: usize,
    incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    routes: tonic::service::Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    SLOT.with(|s| s.set(slot));
    let open = metrics::gauge!(CONNECTIONS_METRIC, "thread" => (slot - 1).to_string());
    open.set(0.0);
    runtime.block_on(async move {
        // A connection that cannot join this runtime is skipped (and closed).
        let incoming = futures::stream::unfold(incoming, move |mut incoming| {
            let open = open.clone();
            async move {
                let stream = incoming.recv().await?;
                let stream = TcpStream::from_std(stream)
                    .inspect_err(|error| {
                        warn!(%error, "cannot serve a client connection on this thread");
                    })
                    .map(|stream| ClientConnection::new(stream, open));
                Some((stream, incoming))
            }
        });
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .context("serve grpc");
        let left_behind = LEFT_BEHIND.with(TaskTracker::clone);
        left_behind.close();
        if !left_behind.is_empty() {
            info!(
                tasks = left_behind.len(),
                "waiting for calls whose clients have gone to finish"
            );
        }
        if tokio::time::timeout(LEFT_BEHIND_GRACE, left_behind.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = left_behind.len(),
                "calls still running after {LEFT_BEHIND_GRACE:?}; stopping anyway"
            );
        }
        served
    })
}

/// A client connection, counted in [`CONNECTIONS_METRIC`] while it is open.
struct ClientConnection {
    stream: TcpStream,
    open: metrics::Gauge,
}

impl ClientConnection {
    fn new(stream: TcpStream, open: metrics::Gauge) -> Self {
        open.increment(1.0);
        ClientConnection { stream, open }
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl Connected for ClientConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

// Every method is forwarded, vectored writes included: HTTP/2 writes a response's
// frames with one `writev`.
impl AsyncWrite for ClientConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
