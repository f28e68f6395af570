//! Framing: a 4-byte big-endian length, then the body. The length is checked against the
//! configured maximum as soon as the 4 bytes arrive, so an oversized frame is refused before any
//! of its body is buffered.

use tokio_util::codec::LengthDelimitedCodec;

pub fn frame_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).big_endian().max_frame_length(max_frame_bytes).new_codec()
}

/// True when a codec error means "the peer announced a frame over the limit"
/// (tokio-util reports it as `InvalidData` wrapping `LengthDelimitedCodecError`).
pub fn is_frame_too_large(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<tokio_util::codec::LengthDelimitedCodecError>())
}
