//! Colour themes: `themes/NAME.toml` files of named colours. The three shipped themes are also
//! compiled in, so the console looks right from any working directory; a missing or broken theme
//! file falls back to the default with a message saying why.

use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

pub const DEFAULT: &str = "dark";

/// Shipped themes: name and file text.
const BUILT_IN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    background: String,
    foreground: String,
    muted: String,
    border: String,
    title: String,
    in_use: String,
    bar: String,
    good: String,
    warn: String,
    bad: String,
    accuracy: String,
    clients: String,
    p99: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub background: Color,
    pub foreground: Color,
    pub muted: Color,
    pub border: Color,
    pub title: Color,
    pub in_use: Color,
    pub bar: Color,
    pub good: Color,
    pub warn: Color,
    pub bad: Color,
    pub accuracy: Color,
    pub clients: Color,
    pub p99: Color,
}

impl Theme {
    pub fn parse(text: &str) -> Result<Theme, String> {
        let f: ThemeFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let c = |key: &str, v: &str| Color::from_str(v).map_err(|_| format!("`{key}`: {v:?} is not a colour"));
        Ok(Theme {
            background: c("background", &f.background)?,
            foreground: c("foreground", &f.foreground)?,
            muted: c("muted", &f.muted)?,
            border: c("border", &f.border)?,
            title: c("title", &f.title)?,
            in_use: c("in_use", &f.in_use)?,
            bar: c("bar", &f.bar)?,
            good: c("good", &f.good)?,
            warn: c("warn", &f.warn)?,
            bad: c("bad", &f.bad)?,
            accuracy: c("accuracy", &f.accuracy)?,
            clients: c("clients", &f.clients)?,
            p99: c("p99", &f.p99)?,
            name: f.name,
        })
    }

    /// `NAME` from `dir/NAME.toml`, else the compiled-in copy of a shipped theme. On failure the
    /// default theme and the reason, for the events panel.
    pub fn load(dir: &Path, name: &str) -> (Theme, Option<String>) {
        let path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) => match BUILT_IN.iter().find(|(n, _)| *n == name) {
                Some((_, t)) => t.to_string(),
                None => {
                    let why = format!("theme {name:?} not found ({} does not exist); using {DEFAULT}", path.display());
                    return (Theme::default(), Some(why));
                }
            },
        };
        match Theme::parse(&text) {
            Ok(t) => (t, None),
            Err(e) => (Theme::default(), Some(format!("theme file {} is invalid: {e}; using {DEFAULT}", path.display()))),
        }
    }

    /// Shipped themes plus any `*.toml` in `dir`, sorted, for cycling with the theme key.
    pub fn available(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                        names.push(stem.to_string());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn base(&self) -> Style {
        Style::default().fg(self.foreground).bg(self.background)
    }

    pub fn muted(&self) -> Style {
        Style::default().fg(self.muted)
    }

    pub fn title(&self) -> Style {
        Style::default().fg(self.title).add_modifier(Modifier::BOLD)
    }

    pub fn border(&self) -> Style {
        Style::default().fg(self.border)
    }
}

impl Default for Theme {
    fn default() -> Self {
        Theme::parse(BUILT_IN[0].1).expect("the built-in dark theme parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_themes_parse_and_match_their_names() {
        for (name, text) in BUILT_IN {
            assert_eq!(Theme::parse(text).unwrap().name, *name);
        }
        assert_eq!(Theme::default().name, DEFAULT);
    }

    #[test]
    fn missing_or_invalid_theme_falls_back_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let (t, why) = Theme::load(dir.path(), "neon");
        assert_eq!(t.name, DEFAULT);
        assert!(why.unwrap().contains("\"neon\" not found"));
        std::fs::write(dir.path().join("bad.toml"), BUILT_IN[0].1.replace("#d0d0d0", "sparkly")).unwrap();
        let (t, why) = Theme::load(dir.path(), "bad");
        assert_eq!(t.name, DEFAULT);
        let why = why.unwrap();
        assert!(why.contains("invalid") && why.contains("foreground"), "{why}");
        assert!(Theme::available(dir.path()).contains(&"bad".to_string()));
    }

    #[test]
    fn built_in_names_load_from_anywhere() {
        let (t, why) = Theme::load(Path::new("/nonexistent"), "high-contrast");
        assert_eq!((t.name.as_str(), why), ("high-contrast", None));
    }
}
