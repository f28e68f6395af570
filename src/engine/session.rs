//! One loaded model: an `ort` session plus what it takes to feed it and read its scores.

use std::borrow::Cow;
use std::cmp::Ordering;

use anyhow::{anyhow, bail, Context, Result};
use ort::memory::Allocator;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use crate::models::{Layout, ModelSpec, OutputKind};

pub struct ModelSession {
    session: Session,
    input_name: String,
    shape: [i64; 4],
    output: OutputKind,
    /// Run options with the first output preallocated, when its shape is static. Besides saving
    /// an allocation per run, this avoids a leak in ort 2.0.0-rc.14: an output the session
    /// allocates itself goes through `Value::from_session_output_ptr`, which never releases the
    /// `OrtTypeInfo` it queries (~330 bytes per run on ONNX Runtime; see tests/ort_run_memory.rs).
    preallocated: Option<RunOptions<HasSelectedOutputs>>,
}

impl ModelSession {
    /// Loads the model file; a missing or corrupt file is an error that names it.
    pub fn load(spec: &ModelSpec, intra_threads: usize) -> Result<Self> {
        let env = super::backend::environment().ok_or_else(|| anyhow!("inference backend not initialised"))?;
        let file = spec.path.display();
        let session = Session::builder(env)
            .and_then(|b| b.with_intra_threads(intra_threads).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&spec.path))
            .map_err(|e| anyhow!("cannot load model {:?} from {file}: {e}", spec.name))?;
        let input_name = spec.input.name.clone();
        if !session.inputs().iter().any(|i| i.name() == input_name) {
            let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            bail!("model file {file} has no input {input_name:?} (it has {names:?}); fix `input` in the manifest");
        }
        let s = spec.input.size as i64;
        let shape = match spec.input.layout {
            Layout::Nchw => [1, 3, s, s],
            Layout::Nhwc => [1, s, s, 3],
        };
        // Only ONNX Runtime writes into preallocated outputs (ort-tract leaves them untouched),
        // and only its path had the leak.
        let on_ort = super::backend::current().is_some_and(|b| b.name == super::backend::BackendKind::Onnxruntime);
        let preallocated = if on_ort {
            preallocate_output(&session).map_err(|e| anyhow!("model file {file}: cannot preallocate its output: {e}"))?
        } else {
            None
        };
        Ok(Self { session, input_name, shape, output: spec.output, preallocated })
    }

    /// Number of f32 values the input tensor holds.
    pub fn input_len(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }

    /// Runs one image tensor and returns the class scores (probabilities).
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        if input.len() != self.input_len() {
            bail!("input tensor has {} values, the model takes {}", input.len(), self.input_len());
        }
        let tensor = TensorRef::from_array_view((self.shape, input)).context("cannot wrap input tensor")?;
        let inputs: Vec<(Cow<str>, ort::session::SessionInputValue)> = vec![(Cow::Borrowed(self.input_name.as_str()), tensor.into())];
        let outputs = match &self.preallocated {
            Some(options) => self.session.run_with_options(inputs, options),
            None => self.session.run(inputs),
        }
        .map_err(|e| anyhow!("inference failed: {e}"))?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>().map_err(|e| anyhow!("model output is not f32: {e}"))?;
        let mut scores = scores.to_vec();
        if self.output == OutputKind::Logits {
            softmax(&mut scores);
        }
        Ok(scores)
    }
}

/// Run options that preallocate the first output, if it is an f32 tensor whose shape is static
/// except, possibly, a leading batch dimension (taken as 1, the batch edgeinfer runs).
fn preallocate_output(session: &Session) -> ort::Result<Option<RunOptions<HasSelectedOutputs>>> {
    let Some(out) = session.outputs().first() else { return Ok(None) };
    let ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } = out.dtype() else { return Ok(None) };
    let dims: Vec<i64> = shape.iter().enumerate().map(|(i, &d)| if i == 0 && d < 0 { 1 } else { d }).collect();
    if dims.iter().any(|&d| d < 0) {
        return Ok(None);
    }
    let tensor = Tensor::<f32>::new(&Allocator::default(), dims)?;
    Ok(Some(RunOptions::new()?.with_outputs(OutputSelector::default().preallocate(out.name(), tensor))))
}

pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        v.iter_mut().for_each(|x| *x /= sum);
    }
}

/// Indices and scores of the `k` highest scores, best first; among equal scores the lower index
/// first. NaNs sort last.
///
/// One pass that keeps the best `k` so far in order: a score under the k-th best costs one
/// comparison, so 1,000 classes and k = 5 are ~1,000 comparisons and no allocation beyond the
/// answer (the index-and-partition form this replaced collected all 1,000 pairs first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    // `v` ranks above `than`: higher, and any number above NaN.
    let above = |v: f32, than: f32| v > than || (than.is_nan() && !v.is_nan());
    if k > 32 {
        // Insertion is quadratic in k: a client asking for hundreds of classes (the OIP
        // classification extension takes any K) gets a sort instead. Stable: ties in index order.
        let mut all: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
        all.sort_by(|a, b| {
            if above(a.1, b.1) {
                Ordering::Less
            } else if above(b.1, a.1) {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        });
        all.truncate(k);
        return all;
    }
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k.min(scores.len()) + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in scores.iter().enumerate() {
        if best.len() == k && !above(v, best[k - 1].1) {
            continue;
        }
        let at = best.iter().position(|&(_, b)| above(v, b)).unwrap_or(best.len());
        best.insert(at, (i, v));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_truncates() {
        let s = [0.1, 0.5, 0.05, 0.3, 0.05];
        assert_eq!(top_k(&s, 2), vec![(1, 0.5), (3, 0.3)]);
        assert_eq!(top_k(&s, 10).len(), 5);
        assert!(top_k(&s, 0).is_empty());
        assert_eq!(top_k(&[f32::NAN, 1.0], 1), vec![(1, 1.0)]);
        // NaNs last, kept only when there are fewer than k numbers; ties in index order.
        let t = top_k(&[f32::NAN, 0.2, 0.7, f32::NAN, 0.2], 4);
        assert_eq!(t[..3], [(2, 0.7), (1, 0.2), (4, 0.2)]);
        assert!(t[3].0 == 0 && t[3].1.is_nan());
        // 1,000 classes, as a model answers: the same as sorting all of them.
        let scores: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        let mut sorted: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(top_k(&scores, 5), sorted[..5]);
        // A large k takes the sorting path, with the same order.
        let t = top_k(&[f32::NAN, 0.2, 0.7, f32::NAN, 0.2], 40);
        assert_eq!(t[..3], [(2, 0.7), (1, 0.2), (4, 0.2)]);
        assert!(t.len() == 5 && t[3].0 == 0 && t[4].0 == 3 && t[3].1.is_nan());
        assert_eq!(top_k(&scores, 33), sorted[..33]);
        assert_eq!(top_k(&scores, usize::MAX), sorted);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0, 1000.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[3] > 0.99);
    }
}
