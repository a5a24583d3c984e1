//! Feeds arbitrary bytes to a `FrameDecoder` in chunks and checks every message it yields
//! survives encoding and decoding again.
//!
//! The first input byte picks the chunk size (0: the whole stream at once); the rest is the
//! stream. Decoding must never panic, abort or allocate without bound, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nexa_runtime::wire::{FrameDecoder, LENGTH_BYTES, Message, decode_body, encode};

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
            match decoder.next_message() {
                Ok(Some(message)) => check_round_trip(&message),
                Ok(None) => break,
                // After an error the stream is out of step; a real peer closes it.
                Err(_) => break 'feed,
            }
        }
    }
    assert!(decoder.buffered() <= stream.len());
});

/// Encoding a decoded message and decoding it again gives the same message.
fn check_round_trip(message: &Message) {
    let frame = encode(message, usize::MAX).expect("a decoded message encodes");
    let len = u32::from_be_bytes(frame[..LENGTH_BYTES].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - LENGTH_BYTES, "length prefix");
    let again = decode_body(&frame[LENGTH_BYTES..]).expect("an encoded message decodes");
    if again != *message {
        // A float decoded from arbitrary bits may be NaN, which is not equal to itself; then
        // the two must still be the same bytes.
        assert!(
            format!("{message:?}").contains("NaN"),
            "round trip changed the message:\n{message:?}\n{again:?}"
        );
        assert_eq!(
            encode(&again, usize::MAX).expect("re-encodes"),
            frame,
            "round trip changed the bytes"
        );
    }
}
