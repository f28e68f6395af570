//! Accuracy over time — the paper's Figure 3 as it happens: mean declared accuracy of the
//! requests served each second, with the client count and p99 latency on the same time axis.
//! The y axis is accuracy; the other two series are scaled into it, their ranges in the legend.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, LegendPosition};
use ratatui::Frame;

use super::{panel, View};
use crate::ui::state::UiState;

pub fn draw(f: &mut Frame, area: Rect, s: &UiState, v: &View) {
    let t = v.theme;
    let accs = s.node.models.iter().map(|(_, a)| *a as f64);
    let lo = (accs.clone().fold(f64::INFINITY, f64::min) - 2.0).floor().max(0.0);
    let hi = (accs.fold(f64::NEG_INFINITY, f64::max) + 2.0).ceil().min(100.0);
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 100.0) };
    let now = s.series.last().map_or(0.0, |p| p.t_s);
    let x0 = now - v.chart_window_s as f64;
    let max_clients = s.series.iter().map(|p| p.clients).max().unwrap_or(0).max(1) as f64;
    let max_p99 = s.series.iter().filter_map(|p| p.p99_ms).fold(s.bound_ms, f64::max);
    let scaled = |x: f64, max: f64| lo + (x / max).clamp(0.0, 1.0) * (hi - lo);
    let acc: Vec<(f64, f64)> = s.series.iter().filter_map(|p| p.accuracy.map(|a| (p.t_s, a.clamp(lo, hi)))).collect();
    let clients: Vec<(f64, f64)> = s.series.iter().map(|p| (p.t_s, scaled(p.clients as f64, max_clients))).collect();
    let p99: Vec<(f64, f64)> = s.series.iter().filter_map(|p| p.p99_ms.map(|l| (p.t_s, scaled(l, max_p99)))).collect();
    let line = |name: String, color, data| {
        Dataset::default().name(name).marker(Marker::Braille).graph_type(GraphType::Line).style(Style::default().fg(color)).data(data)
    };
    let datasets = vec![
        line("accuracy %".into(), t.accuracy, &acc),
        line(format!("clients 0–{max_clients:.0}"), t.clients, &clients),
        line(format!("p99 0–{max_p99:.0} ms"), t.p99, &p99),
    ];
    let label = |s: String| Span::styled(s, t.muted());
    let chart = Chart::new(datasets)
        .block(panel(t, " accuracy over time "))
        .legend_position(Some(LegendPosition::TopLeft))
        .hidden_legend_constraints((ratatui::layout::Constraint::Percentage(60), ratatui::layout::Constraint::Percentage(60)))
        .x_axis(
            Axis::default()
                .bounds([x0, now.max(x0 + 1.0)])
                .style(t.muted())
                .labels([label(format!("-{}s", v.chart_window_s)), label("now".into())]),
        )
        .y_axis(Axis::default().bounds([lo, hi]).style(t.muted()).labels([label(format!("{lo:.0}")), label(format!("{hi:.0}"))]));
    f.render_widget(chart, area);
}
