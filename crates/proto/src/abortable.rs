//! A gRPC request stream that the gateway can abort in a way the server cannot mistake
//! for the end of the input.
//!
//! tonic's own `CancellationHandle` (and dropping a call) resets the HTTP/2 stream with
//! `CANCEL`, and hyper hands a `CANCEL` on a request body to a tonic *server* as a clean
//! end-of-stream (`Streaming::message()` returns `Ok(None)`). A storage node would then
//! take a truncated push for a complete one. Instead, the request stream yields
//! [`Outbound::Abort`]; the codec fails to encode it, tonic fails the request body, and
//! hyper resets the stream with `INTERNAL_ERROR`, which the server sees as an error.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// One item of an abortable request stream.
pub enum Outbound<M> {
    /// A message to send.
    Message(M),
    /// Fail the request stream: the call is reset, never ended cleanly.
    Abort,
}

/// Protobuf codec whose encoder turns [`Outbound::Abort`] into a stream failure.
pub struct AbortableCodec<M, R> {
    inner: ProstCodec<M, R>,
    _marker: PhantomData<fn() -> (M, R)>,
}

impl<M, R> Default for AbortableCodec<M, R> {
    fn default() -> Self {
        AbortableCodec {
            inner: ProstCodec::default(),
            _marker: PhantomData,
        }
    }
}

impl<M, R> Codec for AbortableCodec<M, R>
where
    M: prost::Message + Send + 'static,
    R: prost::Message + Default + Send + 'static,
{
    type Encode = Outbound<M>;
    type Decode = R;
    type Encoder = AbortableEncoder<M>;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> Self::Encoder {
        AbortableEncoder(self.inner.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.inner.decoder()
    }
}

/// Encoder of [`AbortableCodec`].
pub struct AbortableEncoder<M>(ProstEncoder<M>);

impl<M: prost::Message> Encoder for AbortableEncoder<M> {
    type Item = Outbound<M>;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outbound::Message(m) => self.0.encode(m, dst),
            Outbound::Abort => Err(Status::aborted("client request body incomplete")),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
