//! A gRPC request stream that a client can abort in a way the server cannot mistake
//! for the end of the input.
//!
//! tonic's own `CancellationHandle` (and dropping a call) resets the HTTP/2 stream with
//! `CANCEL`, and hyper hands a `CANCEL` on a request body to a tonic *server* as a clean
//! end-of-stream (`Streaming::message()` returns `Ok(None)`). A storage node would then
//! take a truncated push for a complete one. Instead, the request stream yields
//! [`Outbound::Abort`]; the codec fails to encode it, tonic fails the request body, and
//! hyper resets the stream with `INTERNAL_ERROR`, which the server sees as an error.
//!
//! [`Abortable`] wraps any codec (the gateway wraps prost messages, the router raw
//! bytes). A stream that yielded `Abort` should never end afterwards: stay pending
//! until the reset has dropped it.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstCodec;

/// One item of an abortable request stream.
pub enum Outbound<M> {
    /// A message to send.
    Message(M),
    /// Fail the request stream: the call is reset, never ended cleanly.
    Abort,
}

/// A codec whose encoder turns [`Outbound::Abort`] into a stream failure and encodes
/// [`Outbound::Message`] with the inner codec `C`.
#[derive(Debug, Default, Clone)]
pub struct Abortable<C>(pub C);

/// Protobuf codec with an abortable request stream.
pub type AbortableCodec<M, R> = Abortable<ProstCodec<M, R>>;

impl<C> Codec for Abortable<C>
where
    C: Codec,
    C::Encoder: Encoder<Error = Status>,
{
    type Encode = Outbound<C::Encode>;
    type Decode = C::Decode;
    type Encoder = AbortableEncoder<C::Encoder>;
    type Decoder = C::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        AbortableEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

/// Encoder of [`Abortable`].
#[derive(Debug)]
pub struct AbortableEncoder<E>(E);

impl<E: Encoder<Error = Status>> Encoder for AbortableEncoder<E> {
    type Item = Outbound<E::Item>;
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
