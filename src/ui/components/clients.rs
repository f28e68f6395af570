//! Clients of the built-in fleet: how many sit at each resolution (the paper's client-side
//! adaptation) and a scrollable table of them. Says so plainly when no fleet is attached.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::widgets::{Bar, BarChart, BarGroup, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::{panel, View};
use crate::control::FleetSnapshot;
use crate::telemetry::fmt_opt as opt;
use crate::ui::state::UiState;

pub fn draw(f: &mut Frame, area: Rect, s: &UiState, v: &View) {
    let t = v.theme;
    let Some(fleet) = &s.fleet else {
        let text = format!("No built-in fleet attached.\nDevices connect to {} over TCP; their traffic shows in the other panels.", s.node.addr);
        f.render_widget(Paragraph::new(text).style(t.muted()).wrap(Wrap { trim: true }).block(panel(t, " clients ")), area);
        return;
    };
    let mut title = format!(" clients {} ", fleet.clients.len());
    if fleet.paused {
        title += "· paused ";
    }
    if let Some(r) = fleet.ramp.filter(|r| r.running) {
        title += &format!("· ramp +{} every {:.0}s to {} ", r.step, r.every_s, r.max);
    }
    let block = panel(t, title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [hist, table] = Layout::vertical([Constraint::Length(5.min(inner.height / 2)), Constraint::Min(0)]).areas(inner);
    histogram(f, hist, fleet, v);
    client_table(f, table, fleet, v);
}

fn histogram(f: &mut Frame, area: Rect, fleet: &FleetSnapshot, v: &View) {
    let t = v.theme;
    let n = fleet.resolutions.len().max(1) as u16;
    let bars: Vec<Bar> = fleet
        .resolutions
        .iter()
        .zip(&fleet.per_resolution)
        .map(|(r, c)| Bar::default().label(r.to_string().into()).value(*c as u64).text_value(c.to_string()))
        .collect();
    let width = (area.width.saturating_sub(n) / n).clamp(1, 8);
    let chart = BarChart::default()
        .data(BarGroup::default().bars(&bars))
        .bar_width(width)
        .bar_gap(1)
        .bar_style(Style::default().fg(t.bar))
        .value_style(Style::default().fg(t.background).bg(t.bar))
        .label_style(t.muted());
    f.render_widget(chart, area);
}

fn client_table(f: &mut Frame, area: Rect, fleet: &FleetSnapshot, v: &View) {
    let t = v.theme;
    let visible = area.height.saturating_sub(1) as usize;
    // Only the visible slice is turned into rows: the fleet may hold thousands.
    let first = v.scroll.min(fleet.clients.len().saturating_sub(visible));
    // With a labelled (pretrained) ladder, what each client was last told: a live demo with
    // real photos reads as "tabby cat", "espresso" rather than numbers.
    let labels = fleet.clients.iter().any(|c| c.last_label.is_some());
    let rows = fleet.clients.iter().skip(first).take(visible).map(|c| {
        let err = if c.errors > 0 { Style::default().fg(t.bad) } else { Style::default() };
        let mut cells = vec![
            Cell::from(c.id.to_string()),
            Cell::from(c.resolution.to_string()),
            Cell::from(opt(c.last_latency_ms, 1)),
            Cell::from(c.requests.to_string()),
            Cell::from(c.errors.to_string()).style(err),
        ];
        if labels {
            cells.push(Cell::from(c.last_label.as_deref().unwrap_or("-").to_string()));
        }
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(6), Constraint::Length(5), Constraint::Length(8), Constraint::Length(8), Constraint::Length(6)];
    let mut names = vec!["id", "res", "last ms", "requests", "errors"];
    if labels {
        widths.push(Constraint::Min(10));
        names.push("last top-1");
    }
    let header = Row::new(names).style(t.muted());
    f.render_widget(Table::new(rows, widths).header(header).style(Style::default().fg(t.foreground)), area);
}
