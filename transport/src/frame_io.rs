//! One frame in each direction of a QUIC stream.

use nexa_runtime::wire::{self, DecodeError, LENGTH_BYTES, Message};
use quinn::{ReadExactError, RecvStream, SendStream};

use crate::error::RequestError;

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The bytes are not a valid frame.
    Decode(DecodeError),
    /// The stream or connection failed, or ended early.
    Stream(String),
}

impl From<ReadFailure> for RequestError {
    fn from(f: ReadFailure) -> Self {
        match f {
            ReadFailure::Decode(e) => RequestError::Decode(e),
            ReadFailure::Stream(s) => RequestError::Stream(s),
        }
    }
}

fn stream_failure(e: ReadExactError) -> ReadFailure {
    match e {
        ReadExactError::FinishedEarly(n) => {
            ReadFailure::Stream(format!("the stream ended after {n} bytes of a frame"))
        }
        ReadExactError::ReadError(e) => ReadFailure::Stream(e.to_string()),
    }
}

/// Reads one frame, refusing one longer than `max_frame` before reading its body.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max_frame: usize,
) -> Result<Message, ReadFailure> {
    let mut prefix = [0u8; LENGTH_BYTES];
    recv.read_exact(&mut prefix).await.map_err(stream_failure)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame {
        return Err(ReadFailure::Decode(DecodeError::TooLarge {
            len,
            max: max_frame,
        }));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(stream_failure)?;
    let message = wire::decode_body(&body).map_err(ReadFailure::Decode)?;
    // Read up to the stream's end, which the sender marks right after the frame: dropping a
    // stream that is not read to its end makes quinn send STOP_SENDING, a packet per request.
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => Ok(message),
        Ok(Some(_)) => Err(ReadFailure::Decode(DecodeError::Malformed(
            "bytes after the frame on its stream".into(),
        ))),
        Err(e) => Err(ReadFailure::Stream(e.to_string())),
    }
}

/// Writes one frame and finishes the stream.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    message: &Message,
    max_frame: usize,
) -> Result<(), RequestError> {
    let bytes = wire::encode(message, max_frame)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| RequestError::Stream(e.to_string()))?;
    send.finish()
        .map_err(|e| RequestError::Stream(e.to_string()))
}
