//! Feeds arbitrary bytes to a `FrameDecoder` in chunks and checks every envelope it yields
//! (request id and message) survives encoding and decoding again.
//!
//! The first input byte picks the chunk size (0: the whole stream at once); the rest is the
//! stream. Decoding must never panic, abort or allocate without bound, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nexa_runtime::wire::{Envelope, FrameDecoder, LENGTH_BYTES, decode_body, encode};

/// Small, so that the limit itself is exercised.
const MAX_FRAME: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = if first == 0 {
        stream.len().max(1)
    } else {
        usize::from(first)
    };
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    'feed: for piece in stream.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.next_envelope() {
                Ok(Some(envelope)) => check_round_trip(&envelope),
                Ok(None) => break,
                // After an error the stream is out of step; a real peer closes it.
                Err(_) => break 'feed,
            }
        }
    }
    assert!(decoder.buffered() <= stream.len());
});

/// Encoding a decoded envelope and decoding it again gives the same envelope.
fn check_round_trip(envelope: &Envelope) {
    let frame =
        encode(envelope.id, &envelope.message, usize::MAX).expect("a decoded message encodes");
    let len = u32::from_be_bytes(frame[..LENGTH_BYTES].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - LENGTH_BYTES, "length prefix");
    let again = decode_body(&frame[LENGTH_BYTES..]).expect("an encoded message decodes");
    assert_eq!(again.id, envelope.id, "round trip changed the request id");
    let message = &envelope.message;
    let again = again.message;
    if again != *message {
        // A float decoded from arbitrary bits may be NaN, which is not equal to itself; then
        // the two must still be the same bytes.
        assert!(
            format!("{message:?}").contains("NaN"),
            "round trip changed the message:\n{message:?}\n{again:?}"
        );
        assert_eq!(
            encode(envelope.id, &again, usize::MAX).expect("re-encodes"),
            frame,
            "round trip changed the bytes"
        );
    }
}
