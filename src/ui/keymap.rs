//! The configurable key map: `[ui.keys]` action name → key names, parsed into a lookup table.
//! Pure, so the bindings are unit-tested without a terminal.

use std::collections::{BTreeMap, HashMap};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::action::{self, Action};

/// A key as the map matches it. Shift is folded into the character ('A' vs 'a', '+'), since
/// terminals disagree on whether they report it for symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
    pub alt: bool,
}

impl Key {
    pub fn from_event(e: &KeyEvent) -> Key {
        let ctrl = e.modifiers.contains(KeyModifiers::CONTROL);
        let code = match e.code {
            // Ctrl-letters arrive lowercase or uppercase depending on the terminal.
            KeyCode::Char(c) if ctrl => KeyCode::Char(c.to_ascii_lowercase()),
            c => c,
        };
        Key { code, ctrl, alt: e.modifiers.contains(KeyModifiers::ALT) }
    }

    /// Parses "q", "A", "+", "Up", "PageDown", "F1", "Space", "Ctrl-c", "Alt-x".
    pub fn parse(s: &str) -> Result<Key, String> {
        let (mut ctrl, mut alt, mut rest) = (false, false, s);
        loop {
            if let Some(r) = rest.strip_prefix("Ctrl-").or_else(|| rest.strip_prefix("ctrl-")) {
                (ctrl, rest) = (true, r);
            } else if let Some(r) = rest.strip_prefix("Alt-").or_else(|| rest.strip_prefix("alt-")) {
                (alt, rest) = (true, r);
            } else {
                break;
            }
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(c), None) => KeyCode::Char(if ctrl { c.to_ascii_lowercase() } else { c }),
            _ => match rest.to_ascii_lowercase().as_str() {
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "pageup" => KeyCode::PageUp,
                "pagedown" => KeyCode::PageDown,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "enter" => KeyCode::Enter,
                "esc" => KeyCode::Esc,
                "tab" => KeyCode::Tab,
                "backspace" => KeyCode::Backspace,
                "space" => KeyCode::Char(' '),
                f if f.starts_with('f') && f[1..].parse::<u8>().is_ok_and(|n| (1..=12).contains(&n)) => KeyCode::F(f[1..].parse().unwrap_or(1)),
                _ => return Err(format!("unknown key {s:?} (use e.g. \"q\", \"+\", \"Up\", \"PageDown\", \"F1\", \"Ctrl-c\")")),
            },
        };
        Ok(Key { code, ctrl, alt })
    }

    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::Char(' ') => "Space".into(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::F(n) => format!("F{n}"),
            other => format!("{other:?}"),
        };
        format!("{}{}{base}", if self.ctrl { "Ctrl-" } else { "" }, if self.alt { "Alt-" } else { "" })
    }
}

/// The built-in bindings, as config strings (also what `config.toml` documents).
pub fn default_bindings() -> BTreeMap<String, Vec<String>> {
    let keys: &[(&str, &[&str])] = &[
        ("t_up", &["Up", "+", "="]),
        ("t_down", &["Down", "-"]),
        ("add_1", &["a"]),
        ("add_10", &["A"]),
        ("remove_1", &["x"]),
        ("remove_10", &["X"]),
        ("ramp", &["r"]),
        ("pause", &["p"]),
        ("theme", &["t"]),
        ("help", &["?", "F1"]),
        ("scroll_up", &["PageUp", "k"]),
        ("scroll_down", &["PageDown", "j"]),
        ("quit", &["q", "Ctrl-c"]),
    ];
    keys.iter().map(|(a, k)| (a.to_string(), k.iter().map(|s| s.to_string()).collect())).collect()
}

#[derive(Debug, Clone)]
pub struct KeyMap {
    map: HashMap<Key, Action>,
}

impl KeyMap {
    /// The defaults with every action named in `cfg` rebound to exactly the keys given there.
    /// Unknown action names, unknown keys and one key bound to two actions are errors.
    pub fn from_config(cfg: &BTreeMap<String, Vec<String>>) -> Result<KeyMap, String> {
        let mut bindings = default_bindings();
        for (name, keys) in cfg {
            if Action::by_name(name).is_none() {
                let known: Vec<&str> = action::ALL.iter().map(|(n, _, _)| *n).collect();
                return Err(format!("unknown action {name:?}; known: {}", known.join(", ")));
            }
            bindings.insert(name.clone(), keys.clone());
        }
        let mut map = HashMap::new();
        for (name, keys) in &bindings {
            let action = Action::by_name(name).ok_or_else(|| format!("unknown action {name:?}"))?;
            for k in keys {
                let key = Key::parse(k).map_err(|e| format!("{name}: {e}"))?;
                if let Some(other) = map.insert(key, action).filter(|a| *a != action) {
                    return Err(format!("key {k:?} is bound to both {other:?} and {name}"));
                }
            }
        }
        Ok(KeyMap { map })
    }

    /// The action for a key press; releases and repeats-as-release are ignored.
    pub fn action(&self, e: &KeyEvent) -> Option<Action> {
        if e.kind == KeyEventKind::Release {
            return None;
        }
        self.map.get(&Key::from_event(e)).copied()
    }

    /// Key labels bound to `action`, sorted, for the help overlay.
    pub fn keys_for(&self, action: Action) -> Vec<String> {
        let mut v: Vec<String> = self.map.iter().filter(|(_, a)| **a == action).map(|(k, _)| k.label()).collect();
        v.sort();
        v
    }
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::from_config(&BTreeMap::new()).expect("built-in key map is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, m: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, m)
    }

    #[test]
    fn default_keys_map_to_the_issue_actions() {
        let k = KeyMap::default();
        let none = KeyModifiers::NONE;
        assert_eq!(k.action(&press(KeyCode::Up, none)), Some(Action::BoundUp));
        assert_eq!(k.action(&press(KeyCode::Char('+'), KeyModifiers::SHIFT)), Some(Action::BoundUp));
        assert_eq!(k.action(&press(KeyCode::Char('-'), none)), Some(Action::BoundDown));
        assert_eq!(k.action(&press(KeyCode::Down, none)), Some(Action::BoundDown));
        assert_eq!(k.action(&press(KeyCode::Char('a'), none)), Some(Action::AddClients(1)));
        assert_eq!(k.action(&press(KeyCode::Char('A'), KeyModifiers::SHIFT)), Some(Action::AddClients(10)));
        assert_eq!(k.action(&press(KeyCode::Char('x'), none)), Some(Action::RemoveClients(1)));
        assert_eq!(k.action(&press(KeyCode::Char('X'), none)), Some(Action::RemoveClients(10)));
        assert_eq!(k.action(&press(KeyCode::Char('r'), none)), Some(Action::ToggleRamp));
        assert_eq!(k.action(&press(KeyCode::Char('p'), none)), Some(Action::TogglePause));
        assert_eq!(k.action(&press(KeyCode::Char('t'), none)), Some(Action::CycleTheme));
        assert_eq!(k.action(&press(KeyCode::Char('?'), none)), Some(Action::ToggleHelp));
        assert_eq!(k.action(&press(KeyCode::Char('q'), none)), Some(Action::Quit));
        assert_eq!(k.action(&press(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
        assert_eq!(k.action(&press(KeyCode::Char('C'), KeyModifiers::CONTROL | KeyModifiers::SHIFT)), Some(Action::Quit));
        assert_eq!(k.action(&press(KeyCode::Char('c'), none)), None);
        let mut release = press(KeyCode::Char('q'), none);
        release.kind = KeyEventKind::Release;
        assert_eq!(k.action(&release), None);
    }

    #[test]
    fn config_rebinds_only_the_named_actions() {
        let cfg = BTreeMap::from([("quit".to_string(), vec!["Esc".to_string(), "Ctrl-d".to_string()])]);
        let k = KeyMap::from_config(&cfg).unwrap();
        assert_eq!(k.action(&press(KeyCode::Esc, KeyModifiers::NONE)), Some(Action::Quit));
        assert_eq!(k.action(&press(KeyCode::Char('d'), KeyModifiers::CONTROL)), Some(Action::Quit));
        assert_eq!(k.action(&press(KeyCode::Char('q'), KeyModifiers::NONE)), None);
        assert_eq!(k.action(&press(KeyCode::Char('a'), KeyModifiers::NONE)), Some(Action::AddClients(1)));
        assert_eq!(k.keys_for(Action::Quit), vec!["Ctrl-d".to_string(), "Esc".to_string()]);
    }

    #[test]
    fn bad_bindings_are_refused_with_reasons() {
        let one = |a: &str, k: &str| BTreeMap::from([(a.to_string(), vec![k.to_string()])]);
        assert!(KeyMap::from_config(&one("fly", "f")).unwrap_err().contains("unknown action"));
        assert!(KeyMap::from_config(&one("quit", "Hyper-q")).unwrap_err().contains("unknown key"));
        assert!(KeyMap::from_config(&one("quit", "a")).unwrap_err().contains("bound to both"));
        assert_eq!(Key::parse("F5").unwrap().code, KeyCode::F(5));
        assert_eq!(Key::parse("Space").unwrap().code, KeyCode::Char(' '));
    }
}
