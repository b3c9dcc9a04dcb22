//! A lean HTTP/2 connection to one storage node, below tonic and hyper.
//!
//! The read fast path (see `fast`) sends an already framed gRPC request on it and
//! hands the node's response (headers, body and trailers) to the client untouched.
//! Going straight to `h2` queues the request's HEADERS and its one DATA frame before
//! the connection task flushes, so a call costs one write to the node instead of two
//! (and one wake-up of the node instead of two), and no `Buffer` task or codec sits in
//! between (docs/decisions.md, "Router read lane"). Everything that needs tonic's
//! stream handling — writes, client-streaming calls, compressed requests — keeps
//! using the storage's tonic channel.
//!
//! A lane keeps one connection per serving thread ([`crate::serve::slot`]), opened
//! by that thread's first call and driven by its runtime, so a fast-path read never
//! leaves the thread its client connection is served on. A connection is reopened on
//! the next call after it closes; a call that cannot get a connection fails with Unavailable, which the
//! caller may replay on another replica (a read has no side effects). An idle
//! connection is pinged every 20 s and dropped when a ping goes unanswered for 10 s,
//! so a vanished node is noticed without waiting for TCP.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gitcluster_proto::auth::BearerToken;
use h2::RecvStream;
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::debug;

/// How long opening the TCP connection and the HTTP/2 handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keep-alive ping period, and how long a ping may go unanswered.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection to one storage node that presents the internal token.
#[derive(Debug)]
pub struct Lane {
    name: String,
    authority: Authority,
    authorization: Option<HeaderValue>,
    /// The open connection of each serving thread, by [`crate::serve::slot`].
    senders: Mutex<Vec<Option<Connection>>>,
    /// Numbers the connections this lane opens.
    opened: AtomicU64,
}

/// One open lane connection and its number, so that a call whose connection failed
/// forgets that connection only, never a fresh one another call has opened since.
#[derive(Debug, Clone)]
struct Connection {
    id: u64,
    sender: SendRequest<Bytes>,
}

impl Lane {
    /// A lane to the storage `name` at `address` (`http://host:port`) presenting
    /// `token`. `None` for addresses the lane cannot serve (anything but plain
    /// `http`): such storages are reached through tonic only.
    pub fn new(name: &str, address: &str, token: &BearerToken) -> Option<Lane> {
        let uri: Uri = address.parse().ok()?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        Some(Lane {
            name: name.to_owned(),
            authority: uri.authority()?.clone(),
            authorization: token.header_value(),
            senders: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// Sends one complete gRPC request (`framed`: the length-prefixed message) to
    /// `path` with `headers` (already stripped of the client's hop headers) and waits
    /// for the response headers. Unavailable when the node cannot be reached.
    pub async fn send(
        &self,
        path: &str,
        mut headers: HeaderMap,
        framed: Bytes,
    ) -> Result<Response<LaneBody>, Status> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(
                PathAndQuery::try_from(path)
                    .map_err(|e| Status::internal(format!("bad method path: {e}")))?,
            )
            .build()
            .map_err(|e| Status::internal(format!("bad upstream uri: {e}")))?;
        if let Some(a) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, a.clone());
        }
        let request = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            *request.version_mut() = Version::HTTP_2;
            *request.headers_mut() = headers.clone();
            request
        };
        // A connection that died while idle is only noticed on use: then one retry on
        // a fresh connection (a read may be sent twice; it has no side effects).
        let mut retried = false;
        loop {
            let Connection { id, sender } = self.connection().await?;
            match exchange(sender, request(), framed.clone()).await {
                Ok(response) => {
                    return Ok(response.map(|stream| LaneBody {
                        stream,
                        data_done: false,
                    }));
                }
                // A reset concerns this call only; anything else may be the connection.
                Err(e) if !e.is_reset() && !retried => {
                    self.forget(id, &e);
                    retried = true;
                }
                Err(e) => {
                    if !e.is_reset() {
                        self.forget(id, &e);
                    }
                    return Err(Status::unavailable(format!(
                        "storage {} is unreachable: {e}",
                        self.name
                    )));
                }
            }
        }
    }

    /// This thread's open connection, or a new one.
    async fn connection(&self) -> Result<Connection, Status> {
        let slot = crate::serve::slot();
        if let Some(c) = self.senders().get(slot).and_then(Option::as_ref) {
            return Ok(c.clone());
        }
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "storage {} is unreachable: connect timed out after {CONNECT_TIMEOUT:?}",
                    self.name
                ))
            })?
            .map_err(|e| {
                Status::unavailable(format!("storage {} is unreachable: {e}", self.name))
            })?;
        let connection = Connection {
            id: self.opened.fetch_add(1, Ordering::Relaxed),
            sender,
        };
        // Two calls racing here both connect; the later one's connection is kept and
        // the earlier one's closes when its last call ends.
        let mut senders = self.senders();
        if senders.len() <= slot {
            senders.resize(slot + 1, None);
        }
        senders[slot] = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, Box<dyn std::error::Error>> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_str()).await?;
        // Small gRPC frames must not wait for delayed ACKs.
        stream.set_nodelay(true)?;
        let (sender, mut connection) = h2::client::Builder::new()
            // Reads can stream large replies: generous fixed windows (adaptive ones
            // would cost every small call BDP pings).
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(stream)
            .await?;
        let name = self.name.clone();
        let pings = connection.ping_pong();
        let dead = CancellationToken::new();
        let closing = dead.clone();
        tokio::spawn(async move {
            tokio::select! {
                outcome = connection => if let Err(error) = outcome {
                    debug!(storage = %name, %error, "read lane connection ended");
                },
                () = closing.cancelled() => {
                    debug!(storage = %name, "read lane keep-alive ping unanswered; connection closed");
                }
            }
        });
        if let Some(pings) = pings {
            tokio::spawn(keep_alive(pings, dead));
        }
        Ok(sender)
    }

    /// Empties this thread's slot after connection `id` failed, so the next call
    /// reconnects; a newer connection in the slot is kept.
    fn forget(&self, id: u64, error: &h2::Error) {
        debug!(storage = %self.name, %error, "read lane connection failed; reconnecting on next use");
        if let Some(slot) = self.senders().get_mut(crate::serve::slot())
            && slot.as_ref().is_some_and(|c| c.id == id)
        {
            *slot = None;
        }
    }

    fn senders(&self) -> std::sync::MutexGuard<'_, Vec<Option<Connection>>> {
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request/response exchange on `sender`: HEADERS and the single DATA frame
/// are queued together, so they leave in one write.
async fn exchange(
    sender: SendRequest<Bytes>,
    request: Request<()>,
    framed: Bytes,
) -> Result<Response<RecvStream>, h2::Error> {
    let mut sender = sender.ready().await?;
    let (response, mut body) = sender.send_request(request, false)?;
    body.send_data(framed, true)?;
    response.await
}

/// Pings the node every [`PING_INTERVAL`]; cancels `dead` (which closes the
/// connection) when a ping goes unanswered for [`PING_TIMEOUT`]. Ends with the
/// connection.
async fn keep_alive(mut pings: h2::PingPong, dead: CancellationToken) {
    let mut interval = tokio::time::interval(PING_INTERVAL);
    interval.reset();
    loop {
        tokio::select! {
            () = dead.cancelled() => return,
            _ = interval.tick() => {}
        }
        match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is gone.
            Ok(Err(_)) => return,
            Err(_) => {
                dead.cancel();
                return;
            }
        }
    }
}

/// A node's response body on a lane: its DATA frames, then its trailers. Received
/// bytes are released to flow control as soon as they are handed on.
pub struct LaneBody {
    stream: RecvStream,
    data_done: bool,
}

impl Body for LaneBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}
