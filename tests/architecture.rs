//! Keeps the structure honest: reads `src/` and fails when the top-level modules import each
//! other in a loop, or when an import runs back up the layers that `src/lib.rs` declares.
//!
//! An import is any `crate::NAME` path in a module's code (comments, strings and unit tests —
//! `#[cfg(test)]` items and the files they pull in — left out). The layers are the `//! - `
//! lines of `lib.rs`'s "Layers" list, top first; a module may use those on its own line and
//! below. Allowed, as issue #11 put it: at most one mutual pair, no larger loop, and at most one
//! import up the layers. `EDGEINFER_ARCH_SRC=DIR` checks another tree (e.g. an older commit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import: `from` uses `crate::to` at `place` (file:line).
#[derive(Debug, Clone)]
struct Import {
    from: String,
    to: String,
    place: String,
}

fn src_dir() -> PathBuf {
    std::env::var_os("EDGEINFER_ARCH_SRC").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file with comments, string and char literals blanked (lines kept), so that
/// only real paths are seen.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| out.extend(s.iter().map(|&c| if c == b'\n' { '\n' } else { ' ' }));
    while i < b.len() {
        let rest = &b[i..];
        let start = i;
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (rest.starts_with(b"r\"") || rest.starts_with(b"r#")) && (i == 0 || !is_ident(b[i - 1])) {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i = (i + close.len()).min(b.len());
        } else if rest[0] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else if rest[0] == b'\'' && (rest.get(2) == Some(&b'\'') || rest.get(1) == Some(&b'\\')) {
            // A char literal ('x' or an escape); a lifetime has no closing quote right after.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            // Copy one whole UTF-8 character.
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
            continue;
        }
        blank(&mut out, &b[start..i]);
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Blanks every `#[cfg(test)]` item; returns the names of `#[cfg(test)] mod NAME;` declarations
/// (their files are unit tests too).
fn strip_test_items(code: &mut String) -> Vec<String> {
    let mut test_mods = Vec::new();
    while let Some(at) = code.find("#[cfg(test)]") {
        let b = code.as_bytes();
        let mut i = at + "#[cfg(test)]".len();
        // The item ends at its first `;` outside braces, or where its first `{` block closes.
        let mut depth = 0usize;
        let end = loop {
            match b.get(i) {
                None => break b.len(),
                Some(b'{') => depth += 1,
                Some(b'}') => {
                    depth -= 1;
                    if depth == 0 {
                        break i + 1;
                    }
                }
                Some(b';') if depth == 0 => {
                    let item = &code[at + "#[cfg(test)]".len()..i];
                    if let Some(name) = item.split_whitespace().skip_while(|w| *w != "mod").nth(1) {
                        test_mods.push(name.to_string());
                    }
                    break i + 1;
                }
                _ => {}
            }
            i += 1;
        };
        let blanked: String = code[at..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        code.replace_range(at..end, &blanked);
    }
    test_mods
}

/// The `crate::NAME` paths in `code`, with their line numbers (groups `crate::{a, b::c}` too).
fn crate_paths(code: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(off) = code[from..].find("crate") {
        let at = from + off;
        from = at + 5;
        if (at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b'$')) || b.get(at + 5).is_some_and(|&c| is_ident(c)) {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let mut i = at + 5;
        let skip_ws = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        if !code[i..].starts_with("::") {
            continue;
        }
        i += 2;
        skip_ws(&mut i);
        let ident = |i: usize| code[i..].bytes().take_while(|&c| is_ident(c)).count();
        if b.get(i) == Some(&b'{') {
            // A group: every name directly inside the outer braces.
            let (mut depth, mut j, mut expect_name) = (0usize, i, true);
            while j < b.len() {
                match b[j] {
                    b'{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect_name = true,
                    c if is_ident(c) && expect_name && depth == 1 => {
                        let n = ident(j);
                        found.push((code[j..j + n].to_string(), code[..j].matches('\n').count() + 1));
                        expect_name = false;
                        j += n;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let n = ident(i);
            if n > 0 {
                found.push((code[i..i + n].to_string(), line));
            }
        }
    }
    found
}

/// Top-level module of a file under `src/` (`None` for the crate roots).
fn top_module(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

/// Folder whose files are a file's child modules: `a/mod.rs` → `a/`, `a/b.rs` → `a/b/`.
fn child_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap().to_path_buf();
    match file.file_stem().unwrap().to_str().unwrap() {
        "mod" | "lib" | "main" => parent,
        stem => parent.join(stem),
    }
}

/// Every cross-module import of the tree at `src`, and its top-level modules.
fn imports(src: &Path) -> (Vec<Import>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut codes = BTreeMap::new();
    let mut test_paths: Vec<PathBuf> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut code = code_only(&text);
        for m in strip_test_items(&mut code) {
            let dir = child_dir(f);
            test_paths.push(dir.join(format!("{m}.rs")));
            test_paths.push(dir.join(m));
        }
        codes.insert(f.clone(), code);
    }
    let mut modules = BTreeSet::new();
    let mut out = Vec::new();
    for (f, code) in &codes {
        let rel = f.strip_prefix(src).unwrap();
        let Some(from) = top_module(rel) else { continue };
        modules.insert(from.clone());
        if test_paths.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        for (to, line) in crate_paths(code) {
            if to != from {
                out.push(Import { from: from.clone(), to, place: format!("src/{}:{line}", rel.display()) });
            }
        }
    }
    (out, modules)
}

/// Strongly connected components (Tarjan), each sorted.
fn components(nodes: &BTreeSet<String>, edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    struct T<'a> {
        adj: BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.adj.get(v).cloned().unwrap_or_default() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            c.sort();
            t.out.push(c);
        }
    }
    let mut t =
        T { adj: BTreeMap::new(), index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for (a, b) in edges {
        t.adj.entry(a.as_str()).or_default().push(b.as_str());
    }
    for v in nodes {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// How many layers the import graph needs: the longest chain of imports, each loop counted as
/// one module.
fn depth(comps: &[Vec<String>], edges: &BTreeSet<(String, String)>) -> usize {
    let comp_of = |m: &String| comps.iter().position(|c| c.contains(m)).unwrap();
    let dag: BTreeSet<(usize, usize)> = edges.iter().map(|(a, b)| (comp_of(a), comp_of(b))).filter(|(a, b)| a != b).collect();
    // Tarjan emits components in reverse topological order: imports come before importers.
    let mut level = vec![1; comps.len()];
    for c in 0..comps.len() {
        for &(from, to) in &dag {
            if from == c {
                level[c] = level[c].max(level[to] + 1);
            }
        }
    }
    level.into_iter().max().unwrap_or(0)
}

/// The layers `lib.rs` declares, top first: the backticked names on each `//! - ` line of the
/// list that follows a line mentioning "Layers".
fn declared_layers(src: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let mut in_list = false;
    let mut layers = Vec::new();
    for line in text.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        if doc.contains("Layers") {
            in_list = true;
            continue;
        }
        let Some(item) = doc.trim_start().strip_prefix("- ").filter(|_| in_list) else {
            if in_list && !layers.is_empty() {
                break;
            }
            continue;
        };
        // Names before the description's dash.
        let names_part = item.split(" — ").next().unwrap_or("");
        let names: Vec<String> = names_part.split('`').skip(1).step_by(2).map(str::to_string).collect();
        layers.push(names);
    }
    layers
}

#[test]
fn top_level_modules_form_layers_without_loops() {
    let src = src_dir();
    let (imports, modules) = imports(&src);
    let edges: BTreeSet<(String, String)> = imports.iter().filter(|i| modules.contains(&i.to)).map(|i| (i.from.clone(), i.to.clone())).collect();
    let comps = components(&modules, &edges);
    let loops: Vec<&Vec<String>> = comps.iter().filter(|c| c.len() > 1).collect();
    eprintln!("{} top-level modules, {} module-to-module edges ({} import paths)", modules.len(), edges.len(), imports.len());
    eprintln!("loops (strongly connected groups of more than one module): {loops:?}");
    let in_loops = edges.iter().filter(|(a, b)| comps.iter().any(|c| c.len() > 1 && c.contains(a) && c.contains(b))).count();
    eprintln!("edges inside loops: {in_loops}; layers by longest import chain (loops as one): {}", depth(&comps, &edges));

    let layers = declared_layers(&src);
    let layer_of: BTreeMap<&str, usize> = layers.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i))).collect();
    let upward: Vec<&Import> =
        imports.iter().filter(|i| matches!((layer_of.get(i.from.as_str()), layer_of.get(i.to.as_str())), (Some(a), Some(b)) if b < a)).collect();
    let upward_edges: BTreeSet<(&str, &str)> = upward.iter().map(|i| (i.from.as_str(), i.to.as_str())).collect();
    eprintln!("{} declared layers; imports up the layers: {} ({} module pairs)", layers.len(), upward.len(), upward_edges.len());
    for i in &upward {
        eprintln!("  up: {} -> {} at {}", i.from, i.to, i.place);
    }

    if std::env::var_os("EDGEINFER_ARCH_SRC").is_some() {
        // Measuring another tree: report only.
        return;
    }
    let undeclared: Vec<&String> = modules.iter().filter(|m| !layer_of.contains_key(m.as_str())).collect();
    assert!(!layers.is_empty() && undeclared.is_empty(), "every top-level module must be on a layer in lib.rs's list; missing: {undeclared:?}");
    let where_ = |a: &str, b: &str| imports.iter().filter(|i| i.from == a && i.to == b).map(|i| i.place.clone()).collect::<Vec<_>>();
    let pairs = loops.iter().filter(|c| c.len() == 2).count();
    for c in &loops {
        let inside: Vec<String> =
            edges.iter().filter(|(a, b)| c.contains(a) && c.contains(b)).map(|(a, b)| format!("{a} -> {b} {:?}", where_(a, b))).collect();
        assert!(c.len() <= 2, "import loop among {c:?}:\n{}", inside.join("\n"));
    }
    assert!(pairs <= 1, "more than one mutual pair: {loops:?}");
    assert!(upward_edges.len() <= 1, "more than one import runs up the layers: {upward_edges:?}");
}

#[test]
fn the_checker_sees_paths_and_skips_comments_strings_and_tests() {
    let mut code = code_only(
        "use crate::a::X;\n// crate::b\nlet s = \"crate::c\";\nuse crate::{d::Y, e};\nlet c = '\"'; use crate::f;\n\
         #[cfg(test)]\nmod tests { use crate::g; }\n#[cfg(test)]\nmod more;\nfn h<'a>(x: &'a str) { crate::h::go(x) }\n",
    );
    let test_mods = strip_test_items(&mut code);
    let names: Vec<String> = crate_paths(&code).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "d", "e", "f", "h"]);
    assert_eq!(test_mods, ["more"]);
}
