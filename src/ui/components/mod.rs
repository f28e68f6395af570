//! The panels, one file each, and the layout that places them. Everything draws from a
//! [`UiState`] and a [`View`], never from the live node.

pub mod chart;
pub mod clients;
pub mod events;
pub mod header;
pub mod help;
pub mod queues;

use std::path::Path;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Block, BorderType, Borders};
use ratatui::Frame;

use super::keymap::KeyMap;
use super::state::UiState;
use super::theme::Theme;

/// How to draw, as opposed to what (which is the [`UiState`]).
pub struct View<'a> {
    pub theme: &'a Theme,
    pub keymap: &'a KeyMap,
    pub help: bool,
    /// First row shown in the client table.
    pub scroll: usize,
    pub t_step_ms: f64,
    pub chart_window_s: usize,
    pub log_path: Option<&'a Path>,
    pub themes: &'a [String],
}

/// A bordered panel in the theme's colours.
pub fn panel<'b>(theme: &Theme, title: impl Into<ratatui::text::Line<'b>>) -> Block<'b> {
    Block::default()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(theme.border())
        .title(title)
        .title_style(theme.title())
        .style(theme.base())
}

pub fn draw(f: &mut Frame, s: &UiState, v: &View) {
    let area = f.area();
    f.render_widget(Block::default().style(v.theme.base()), area);
    let [head, top, bottom] = Layout::vertical([Constraint::Length(5), Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    header::draw(f, head, s, v);
    let [queues_area, chart_area] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
    queues::draw(f, queues_area, s, v);
    chart::draw(f, chart_area, s, v);
    let [clients_area, events_area] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    clients::draw(f, clients_area, s, v);
    events::draw(f, events_area, s, v);
    if v.help {
        help::draw(f, centered(area, 64, 24), v);
    }
}

/// A `w`×`h` rectangle in the middle of `area`, shrunk to fit.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}
