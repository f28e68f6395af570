//! Requests pinned to one rung ([`Engine::submit_to`](super::Engine::submit_to)): what both
//! executors do for them instead of asking the policy. They enter by the same door and are
//! counted the same way; only the choice of model is the requester's.

use super::preprocess::{ImageError, Preprocessor};
use crate::models::ModelSpec;

/// Fills `out` with the rung's input: the requester's tensor as sent (its length was checked
/// against the rung's input at the front end), or `image` decoded and resized for the rung.
pub fn prepare(
    pre: &mut Preprocessor,
    image: &[u8],
    tensor: Option<Vec<f32>>,
    spec: &ModelSpec,
    max_pixels: u64,
    out: &mut Vec<f32>,
) -> Result<(), ImageError> {
    match tensor {
        Some(t) => *out = t,
        None => {
            pre.decode(image, max_pixels, spec.input.size)?;
            pre.tensor_into(&spec.input, spec.resize, out);
        }
    }
    Ok(())
}
