//! Small helpers for server-streaming responses.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A response stream fed by a task through a bounded channel.
pub type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// A bounded channel and the response stream reading from it (backpressure: the
/// producer waits while the client is slow).
pub fn channel<T>() -> (mpsc::Sender<Result<T, Status>>, ResponseStream<T>) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ReceiverStream::new(rx))
}
