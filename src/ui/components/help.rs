//! Help overlay: every key as currently bound (so a remapped console documents itself), the
//! themes and where the log file is.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::{panel, View};
use crate::ui::action;

pub fn draw(f: &mut Frame, area: Rect, v: &View) {
    let t = v.theme;
    let mut lines: Vec<Line> = action::ALL
        .iter()
        .map(|(_, a, what)| {
            let what = what.replace("ui.t_step_ms", &format!("{} ms", v.t_step_ms));
            Line::from(vec![Span::styled(format!("{:<18}", v.keymap.keys_for(*a).join(" ")), t.title()), Span::raw(what)])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::from(vec![Span::styled("themes   ", t.muted()), Span::raw(v.themes.join(", "))]));
    let log = v.log_path.map_or("(stderr)".to_string(), |p| p.display().to_string());
    lines.push(Line::from(vec![Span::styled("log file ", t.muted()), Span::raw(log)]));
    lines.push(Line::styled("Keys are set in [ui.keys] of config.toml.", t.muted()));
    f.render_widget(Clear, area);
    let p = Paragraph::new(lines).wrap(Wrap { trim: false }).style(Style::default().fg(t.foreground)).block(panel(t, " help · Esc closes "));
    f.render_widget(p, area);
}
