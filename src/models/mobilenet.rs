//! Synthetic MobileNet-v1 (Howard et al. 2017) ONNX models with seeded random
//! weights.
//!
//! Pretrained weights cannot be fetched in every environment we run in, yet
//! the server's scheduling decisions depend on the *cost* of real models. The
//! models built here have exactly MobileNet-v1's architecture, tensor shapes,
//! parameter count and multiply-adds (batch norm folded into the convolution
//! weights and biases, as an inference export would have it); only the weight
//! values are random, so predictions are meaningless.

use super::onnx::{Attr, Graph, Model};
use crate::rng::SplitMix64;

/// Base channel count of the stem convolution, before the width multiplier.
const STEM_CHANNELS: usize = 32;

/// The 13 depthwise-separable blocks: (depthwise stride, pointwise output
/// channels before the width multiplier). Table 1 of the paper.
const SEPARABLE_BLOCKS: [(i64, usize); 13] =
    [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024)];

/// TF-slim's `min_depth`: thin models never drop below 8 channels per layer.
const MIN_CHANNELS: usize = 8;

/// Total spatial downsampling of the network (five stride-2 layers).
const OUTPUT_STRIDE: u32 = 32;

/// Weight variance of every convolution, times its fan-in. Filters are
/// zero-sum (see [`centered_filters`]), so each layer sees only the *variance*
/// of its ReLU6 inputs, which is `(1/2 - 1/2π) ≈ 0.34` of the pre-activation
/// variance; a gain of 1 / 0.34 ≈ 3 keeps the activation scale steady over the
/// 27 layers (measured RMS 0.65–1.0, about half the units zero, well under
/// 0.1% clipped at 6).
const CONV_GAIN: f32 = 3.0;

/// Classifier weight variance, times its fan-in. Global average pooling
/// leaves features that differ only by ~0.1 between channels, so the usual
/// gain of 1 would give logits within ±0.2 of each other: a flat softmax. This
/// gain spreads them over a few units (standard deviation 2.5–3.5), so the top
/// class typically gets 15–35% of the probability mass.
const LOGITS_GAIN: f32 = 300.0;

/// Half-width of the uniform bias distribution. Biases stay small so that the
/// input, not the bias pattern, decides which units fire.
const BIAS_BOUND: f32 = 0.01;

const INPUT_NAME: &str = "input";
const OUTPUT_NAME: &str = "probabilities";
const RELU6_MIN: &str = "relu6_min";
const RELU6_MAX: &str = "relu6_max";

const DOC: &str = "edgeinfer synthetic MobileNet-v1 (random weights; predictions are meaningless, compute cost is real)";

/// Specification of a MobileNet-v1 variant.
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV1 {
    /// Width multiplier α (published variants: 1.0, 0.75, 0.5, 0.25).
    pub width: f32,
    /// Input height and width in pixels; a positive multiple of 32
    /// (published variants: 224, 192, 160, 128).
    pub resolution: u32,
    /// Size of the classifier output (1000 for ImageNet).
    pub num_classes: usize,
    /// Seed of the random weights; the same spec always yields the same bytes.
    pub seed: u64,
}

/// One convolution of the network, in graph order.
struct ConvLayer {
    name: String,
    in_channels: usize,
    out_channels: usize,
    kernel: i64,
    stride: i64,
    /// Number of channel groups: 1 for dense convolutions, `in_channels` for
    /// depthwise ones.
    group: usize,
}

impl ConvLayer {
    /// Inputs each output unit sees; the initial weight scale depends on it.
    fn fan_in(&self) -> usize {
        self.in_channels / self.group * (self.kernel * self.kernel) as usize
    }

    fn weight_count(&self) -> usize {
        self.out_channels * self.fan_in()
    }
}

impl MobileNetV1 {
    pub fn input_name() -> &'static str {
        INPUT_NAME
    }

    pub fn output_name() -> &'static str {
        OUTPUT_NAME
    }

    /// Learned parameters: convolution and classifier weights plus their
    /// (batch-norm-folded) biases. 4,221,032 for α = 1.0 with 1000 classes;
    /// independent of the resolution. The two ReLU6 clip bounds are constants
    /// of the graph, not parameters, and are not counted.
    pub fn parameter_count(&self) -> usize {
        let convs: usize = self.conv_layers().iter().map(|l| l.weight_count() + l.out_channels).sum();
        let features = self.feature_channels();
        convs + features * self.num_classes + self.num_classes
    }

    /// Builds the serialized ONNX model (IR 7, opset 13).
    ///
    /// Graph: input `[1, 3, R, R]` float32 NCHW → 27 Conv + ReLU6 layers →
    /// GlobalAveragePool → Flatten → Gemm → Softmax → output
    /// `[1, num_classes]`. ReLU6 is `Clip` with scalar initializer bounds.
    ///
    /// # Panics
    /// If the spec is invalid: non-positive or non-finite width, resolution not
    /// a positive multiple of 32, or zero classes.
    pub fn build_onnx(&self) -> Vec<u8> {
        self.validate();
        let resolution = i64::from(self.resolution);
        let classes = self.num_classes as i64;

        let mut graph = Graph::new(&format!("mobilenet_v1_{:.2}_{}", self.width, self.resolution));
        graph.add_input(INPUT_NAME, &[1, 3, resolution, resolution]);
        graph.add_initializer(RELU6_MIN, &[], [0.0]);
        graph.add_initializer(RELU6_MAX, &[], [6.0]);

        let layers = self.conv_layers();
        let mut activation = INPUT_NAME.to_owned();
        for (index, layer) in layers.iter().enumerate() {
            let weight = format!("{}.weight", layer.name);
            let bias = format!("{}.bias", layer.name);
            let conv_out = format!("{}.conv", layer.name);
            let relu_out = format!("{}.relu6", layer.name);
            let (out_ch, k) = (layer.out_channels as i64, layer.kernel);

            let mut rng = SplitMix64::for_stream(self.seed, index as u64);
            let weight_dims = [out_ch, (layer.in_channels / layer.group) as i64, k, k];
            let weights = centered_filters(&mut rng, layer.out_channels, layer.fan_in(), CONV_GAIN);
            graph.add_initializer(&weight, &weight_dims, weights);
            graph.add_initializer(&bias, &[out_ch], (0..layer.out_channels).map(|_| rng.uniform(BIAS_BOUND)));

            graph.add_node(
                "Conv",
                &layer.name,
                &[&activation, &weight, &bias],
                &[&conv_out],
                [
                    ("group", Attr::Int(layer.group as i64)),
                    ("kernel_shape", Attr::Ints(vec![k, k])),
                    // "Same" padding: pad 1 for 3x3 kernels, 0 for 1x1.
                    ("pads", Attr::Ints(vec![k / 2; 4])),
                    ("strides", Attr::Ints(vec![layer.stride; 2])),
                ],
            );
            graph.add_node("Clip", &relu_out, &[&conv_out, RELU6_MIN, RELU6_MAX], &[&relu_out], []);
            activation = relu_out;
        }

        let features = self.feature_channels();
        graph.add_node("GlobalAveragePool", "pool", &[&activation], &["pool"], []);
        graph.add_node("Flatten", "flatten", &["pool"], &["features"], [("axis", Attr::Int(1))]);

        // Classifier weights are in Gemm's transB layout [classes, features],
        // as exporters emit fully-connected layers.
        let mut rng = SplitMix64::for_stream(self.seed, layers.len() as u64);
        let weights = centered_filters(&mut rng, self.num_classes, features, LOGITS_GAIN);
        graph.add_initializer("logits.weight", &[classes, features as i64], weights);
        graph.add_initializer("logits.bias", &[classes], (0..self.num_classes).map(|_| rng.uniform(BIAS_BOUND)));
        graph.add_node("Gemm", "logits", &["features", "logits.weight", "logits.bias"], &["logits"], [("transB", Attr::Int(1))]);
        graph.add_node("Softmax", "softmax", &["logits"], &[OUTPUT_NAME], [("axis", Attr::Int(1))]);
        graph.add_output(OUTPUT_NAME, &[1, classes]);

        Model {
            ir_version: 7,
            opset_version: 13,
            producer_name: DOC.to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            doc_string: DOC.to_owned(),
            graph,
        }
        .encode()
    }

    fn validate(&self) {
        assert!(self.width.is_finite() && self.width > 0.0, "MobileNet-v1 width must be positive, got {}", self.width);
        assert!(
            self.resolution > 0 && self.resolution.is_multiple_of(OUTPUT_STRIDE),
            "MobileNet-v1 resolution must be a positive multiple of {OUTPUT_STRIDE}, got {}",
            self.resolution
        );
        assert!(self.num_classes > 0, "MobileNet-v1 needs at least one class");
    }

    /// Channel count after the width multiplier, rounded as TF-slim does
    /// (`max(int(c * α), 8)`) so shapes match the published checkpoints.
    fn channels(&self, base: usize) -> usize {
        ((base as f32 * self.width) as usize).max(MIN_CHANNELS)
    }

    /// Channels of the last convolution, i.e. of the pooled feature vector.
    fn feature_channels(&self) -> usize {
        self.channels(SEPARABLE_BLOCKS[SEPARABLE_BLOCKS.len() - 1].1)
    }

    /// The 27 convolutions, named after TF-slim's scopes.
    fn conv_layers(&self) -> Vec<ConvLayer> {
        let stem = self.channels(STEM_CHANNELS);
        let mut layers = vec![ConvLayer { name: "Conv2d_0".into(), in_channels: 3, out_channels: stem, kernel: 3, stride: 2, group: 1 }];
        let mut channels = stem;
        for (i, &(stride, base_out)) in SEPARABLE_BLOCKS.iter().enumerate() {
            let out = self.channels(base_out);
            layers.push(ConvLayer {
                name: format!("Conv2d_{}_depthwise", i + 1),
                in_channels: channels,
                out_channels: channels,
                kernel: 3,
                stride,
                group: channels,
            });
            layers.push(ConvLayer {
                name: format!("Conv2d_{}_pointwise", i + 1),
                in_channels: channels,
                out_channels: out,
                kernel: 1,
                stride: 1,
                group: 1,
            });
            channels = out;
        }
        layers
    }
}

/// `filters` random rows of `fan_in` weights, each row shifted to sum to zero
/// and scaled to variance `gain / fan_in`.
///
/// Why zero-sum: ReLU6 outputs have a positive mean. With ordinary He
/// initialisation that mean flows through every layer as a component that
/// does not depend on the input, and after 27 layers and global pooling it
/// dominates: unrelated random inputs gave pooled features with correlation
/// 0.997 and the same top-1 class. Zero-sum filters cancel the mean (the job
/// batch norm's centring does in a trained network), so outputs follow the
/// input (feature correlation 0.35–0.45; 15–20 distinct top-1 classes in 20
/// random inputs).
///
/// `fan_in` must be at least 2; every layer here has at least 8.
fn centered_filters(rng: &mut SplitMix64, filters: usize, fan_in: usize, gain: f32) -> Vec<f32> {
    // Uniform(-b, b) has variance b²/3, and removing the row mean scales it by
    // (n - 1) / n; this bound makes the final variance exactly gain / n.
    let bound = (3.0 * gain / (fan_in - 1) as f32).sqrt();
    let mut weights: Vec<f32> = (0..filters * fan_in).map(|_| rng.uniform(bound)).collect();
    for filter in weights.chunks_exact_mut(fan_in) {
        let mean = filter.iter().sum::<f32>() / fan_in as f32;
        for w in filter {
            *w -= mean;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: f32, resolution: u32, seed: u64) -> MobileNetV1 {
        MobileNetV1 { width, resolution, num_classes: 1000, seed }
    }

    #[test]
    fn parameter_count_matches_hand_count() {
        // Stem: 3x3x3 conv to 32 channels, plus bias.
        let stem = 3 * 3 * 3 * 32 + 32;
        // Depthwise: 3x3 per channel plus bias, i.e. 10 per input channel.
        let dw_inputs = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024];
        let depthwise: usize = dw_inputs.iter().map(|c| 10 * c).sum();
        // Pointwise: cin x cout plus bias.
        let pw_outputs = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024];
        let pointwise: usize = dw_inputs.iter().zip(pw_outputs).map(|(cin, cout)| cin * cout + cout).sum();
        let classifier = 1024 * 1000 + 1000;
        let expected = stem + depthwise + pointwise + classifier;
        assert_eq!(expected, 4_221_032);
        // Keras' MobileNet reports 4,231,976 trainable parameters: ours plus the
        // one extra (unfolded) batch-norm parameter per conv output channel.
        let bn_channels = 32 + dw_inputs.iter().sum::<usize>() + pw_outputs.iter().sum::<usize>();
        assert_eq!(expected + bn_channels, 4_231_976);

        for resolution in [224, 128] {
            assert_eq!(spec(1.0, resolution, 0).parameter_count(), expected);
        }
    }

    #[test]
    fn thin_models_keep_min_depth() {
        // 32 * 0.1 = 3.2 would round down to 3 stem channels; TF-slim keeps 8.
        let thin = spec(0.1, 128, 0);
        assert_eq!(thin.channels(32), 8);
        assert_eq!(thin.channels(1024), 102);
        assert_eq!(spec(0.25, 128, 0).channels(32), 8);
        assert_eq!(spec(0.75, 128, 0).channels(1024), 768);
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let a = spec(0.25, 128, 7).build_onnx();
        assert_eq!(a, spec(0.25, 128, 7).build_onnx());
        assert_ne!(a, spec(0.25, 128, 8).build_onnx());
        // Only the weight values depend on the seed, not the layout.
        assert_eq!(a.len(), spec(0.25, 128, 8).build_onnx().len());
    }

    /// Pins the generator's output, so a model cached on disk by spec stays
    /// valid across releases and platforms. A deliberate change to the
    /// weights or graph must update the expected hash.
    ///
    /// Changed once without a change to the model: when the hand-written
    /// protobuf encoder gave way to tract-onnx's prost messages (issue #11),
    /// `dims` and `ints` became packed and the empty opset domain was left
    /// out. Decoded, the old and new files are the same `ModelProto` (checked
    /// on the test ladder's MobileNets and the three EfficientNet-Lite
    /// models), so files written before load as they did.
    #[test]
    fn output_is_pinned() {
        // FNV-1a, 64-bit.
        let hash = spec(0.25, 128, 7)
            .build_onnx()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        assert_eq!(hash, 0xcc64_d167_2e02_05de);
    }

    #[test]
    fn encoded_size_is_dominated_by_weights() {
        let model = spec(0.5, 160, 1);
        let bytes = model.build_onnx();
        let weight_bytes = 4 * model.parameter_count();
        assert!(bytes.len() >= weight_bytes);
        // Graph structure and metadata are a few kilobytes at most.
        assert!(bytes.len() < weight_bytes + 16 * 1024, "{} vs {weight_bytes}", bytes.len());
        let doc = DOC.as_bytes();
        assert!(bytes.windows(doc.len()).any(|w| w == doc));
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let mut rng = SplitMix64::for_stream(42, 0);
        let samples: Vec<f32> = (0..10_000).map(|_| rng.uniform(0.5)).collect();
        assert!(samples.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean = samples.iter().sum::<f32>() / samples.len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn filters_are_zero_sum_with_target_variance() {
        let mut rng = SplitMix64::for_stream(3, 0);
        let fan_in = 256;
        let weights = centered_filters(&mut rng, 64, fan_in, CONV_GAIN);
        assert_eq!(weights.len(), 64 * fan_in);
        for filter in weights.chunks_exact(fan_in) {
            assert!(filter.iter().sum::<f32>().abs() < 1e-4);
        }
        let variance = weights.iter().map(|w| w * w).sum::<f32>() / weights.len() as f32;
        let target = CONV_GAIN / fan_in as f32;
        assert!((variance / target - 1.0).abs() < 0.05, "variance {variance} vs {target}");
    }

    #[test]
    #[should_panic(expected = "multiple of 32")]
    fn rejects_bad_resolution() {
        spec(1.0, 100, 0).build_onnx();
    }
}
