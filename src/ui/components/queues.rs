//! Queues: one row per model in ladder order — the dispatcher's view of the node. Rows in use
//! (a backlog, or requests served in the last interval) stand out.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use super::{panel, View};
use crate::ui::state::UiState;

/// `depth` as a bar of up to `width` cells, scaled to the deepest queue (at least 10 deep).
fn bar(depth: usize, scale: usize, width: usize) -> String {
    let n = (depth * width).div_ceil(scale.max(1)).min(width);
    "█".repeat(n) + &"·".repeat(width - n)
}

/// Ladder names differ at the end ("…_1.0_224" vs "…_0.5_224"), so a name too long keeps its tail.
fn fit_tail(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width || width == 0 {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

pub fn draw(f: &mut Frame, area: Rect, s: &UiState, v: &View) {
    let t = v.theme;
    let scale = s.queues.iter().map(|q| q.depth).max().unwrap_or(0).max(10);
    let bar_w: u16 = if area.width < 60 { 6 } else { 10 };
    // Fixed columns (acc, q, bar, ms, share), the 5 gaps between 6 columns and the borders.
    let name_w = area.width.saturating_sub(4 + 3 + bar_w + 6 + 4 + 5 + 2).max(6);
    let rows = s.queues.iter().map(|q| {
        let style = if q.in_use { Style::default().fg(t.in_use).add_modifier(Modifier::BOLD) } else { Style::default().fg(t.foreground) };
        Row::new(vec![
            Cell::from(fit_tail(&q.name, name_w as usize)),
            Cell::from(format!("{:.1}", q.accuracy)),
            Cell::from(format!("{:>3}", q.depth)),
            Cell::from(bar(q.depth, scale, bar_w as usize)).style(Style::default().fg(t.bar)),
            Cell::from(format!("{:>6.2}", q.ewma_ms)),
            Cell::from(format!("{:>3.0}%", q.share * 100.0)),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(name_w),
        Constraint::Length(4),
        Constraint::Length(3),
        Constraint::Length(bar_w),
        Constraint::Length(6),
        Constraint::Length(4),
    ];
    let header = Row::new(["model", "acc%", "  q", "queue", "ms", "shr"]).style(t.muted());
    let table = Table::new(rows, widths).header(header).column_spacing(1).block(panel(t, " queues (ladder order) "));
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_scales_to_the_deepest_queue() {
        assert_eq!(bar(0, 10, 10), "··········");
        assert_eq!(bar(5, 10, 10), "█████·····");
        assert_eq!(bar(40, 20, 10), "██████████");
        assert_eq!(bar(1, 20, 6), "█·····");
    }

    #[test]
    fn long_names_keep_their_tail() {
        assert_eq!(fit_tail("mobilenet_v1_1.0_224", 10), "…1_1.0_224");
        assert_eq!(fit_tail("short", 10), "short");
    }
}
