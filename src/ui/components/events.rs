//! Events: T changes and refusals, fleet changes, the ramp, errors, backend fallback — newest
//! at the bottom, problems (by their kind, not their wording) in the warning colour.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{panel, View};
use crate::telemetry::EventKind;
use crate::ui::state::UiState;

pub fn draw(f: &mut Frame, area: Rect, s: &UiState, v: &View) {
    let t = v.theme;
    let room = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = s.events[s.events.len().saturating_sub(room)..]
        .iter()
        .map(|e| {
            let style = match e.kind {
                EventKind::Problem => Style::default().fg(t.warn),
                EventKind::Info => Style::default().fg(t.foreground),
            };
            Line::from(vec![Span::styled(format!("{:>6.0}s ", e.t_s), t.muted()), Span::styled(e.text.clone(), style)])
        })
        .collect();
    // No wrapping: one event per line keeps the newest ones visible in a short panel.
    f.render_widget(Paragraph::new(lines).block(panel(t, " events ")), area);
}
