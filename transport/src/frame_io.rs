//! Frames in and out of the one long-lived QUIC stream of a connection.

use std::future::Future;
use std::task::{Context, Poll};

use nexa_runtime::wire::{self, DecodeError, Envelope, FrameDecoder, Message};
use quinn::{RecvStream, SendStream};

use crate::error::{RequestError, close};

/// Why the next frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The bytes are not a valid frame.
    Decode(DecodeError),
    /// The peer ended the stream, which it keeps open for the whole connection.
    Ended,
    /// The stream or connection failed.
    Stream(String),
}

impl ReadFailure {
    /// The close code and reason this failure costs the peer its connection with; `None`
    /// when the stream failed because the connection is already gone. `us` names this end
    /// ("server", "worker") in the reason.
    pub(crate) fn refusal(&self, us: &str) -> Option<(u32, String)> {
        match self {
            ReadFailure::Decode(DecodeError::UnsupportedVersion { got, supported }) => Some((
                close::VERSION_MISMATCH,
                format!(
                    "protocol version {got} is not supported; this {us} speaks version {supported}"
                ),
            )),
            ReadFailure::Decode(e @ DecodeError::TooLarge { .. }) => {
                Some((close::FRAME_TOO_LARGE, e.to_string()))
            }
            ReadFailure::Decode(e) => Some((close::PROTOCOL_ERROR, e.to_string())),
            ReadFailure::Ended => Some((
                close::PROTOCOL_ERROR,
                "the peer ended the connection's stream".to_owned(),
            )),
            ReadFailure::Stream(_) => None,
        }
    }

    /// What to tell the application.
    pub(crate) fn describe(&self) -> String {
        match self {
            ReadFailure::Decode(e) => e.to_string(),
            ReadFailure::Ended => "the peer ended the connection's stream".to_owned(),
            ReadFailure::Stream(s) => s.clone(),
        }
    }
}

/// Reads envelopes off a stream that carries many, in whatever pieces they arrive.
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream, max_frame: usize) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// The next envelope. A frame over the limit is refused from its length prefix, before
    /// its body is buffered; after any error the stream is out of step and must be closed.
    pub(crate) async fn next(&mut self) -> Result<Envelope, ReadFailure> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`FrameReader::next`], polled: `Pending` leaves `cx`'s waker with quinn.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Envelope, ReadFailure>> {
        loop {
            match self.decoder.next_envelope() {
                Ok(Some(envelope)) => return Poll::Ready(Ok(envelope)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(ReadFailure::Decode(e))),
            }
            // Whatever has arrived, without a copy into a buffer of ours first. Reading a
            // chunk is cancel-safe, so polling it once and dropping it loses nothing.
            let read = std::pin::pin!(self.recv.read_chunk(usize::MAX, true)).poll(cx);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => self.decoder.extend(&chunk.bytes),
                Poll::Ready(Ok(None)) => return Poll::Ready(Err(ReadFailure::Ended)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadFailure::Stream(e.to_string()))),
            }
        }
    }
}

/// Writes one frame without finishing the stream: the handshake's hello and welcome, sent
/// before the connection's writer task starts.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    id: u64,
    message: &Message,
    max_frame: usize,
) -> Result<(), RequestError> {
    let bytes = wire::encode(id, message, max_frame)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))
}
