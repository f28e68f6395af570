//! Header: where the node listens, what it runs on, T and the client thresholds, and the live
//! figures an operator watches (requests/s, accuracy, SLO attainment, latency), plus uptime.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{panel, View};
use crate::telemetry::fmt_opt as opt;
use crate::ui::state::UiState;

fn uptime(s: f64) -> String {
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub fn draw(f: &mut Frame, area: Rect, s: &UiState, v: &View) {
    let t = v.theme;
    let key = t.muted();
    let val = Style::default().fg(t.foreground).add_modifier(Modifier::BOLD);
    let pair = |k: &'static str, value: String| [Span::styled(k, key), Span::styled(value, val), Span::raw("  ")];
    let mut l1 = vec![Span::styled(s.node.addr.clone(), val), Span::raw("  ")];
    l1.extend(pair("backend ", s.node.backend.clone()));
    if s.node.fallback {
        l1.push(Span::styled("(fallback)  ", Style::default().fg(t.warn)));
    }
    if s.node.synthetic {
        l1.push(Span::styled("synthetic weights  ", Style::default().fg(t.warn)));
    } else {
        l1.push(Span::styled("pretrained weights  ", Style::default().fg(t.good)));
    }
    let mut l2 = Vec::new();
    l2.extend(pair("T ", format!("{:.1} ms", s.bound_ms)));
    match &s.fleet {
        Some(fl) => {
            l2.extend(pair("TC_lower ", format!("{:.1}", fl.tc_lower_ms)));
            l2.extend(pair("TC_upper ", format!("{:.1} ms", fl.tc_upper_ms)));
            l2.extend(pair("clients ", fl.clients.len().to_string()));
            if fl.paused {
                l2.push(Span::styled("PAUSED  ", Style::default().fg(t.warn)));
            }
            if fl.ramp.is_some_and(|r| r.running) {
                l2.push(Span::styled("RAMP  ", Style::default().fg(t.good)));
            }
        }
        None => {
            l2.extend(pair("TC_lower/TC_upper ", "-".into()));
            l2.extend(pair("clients ", "- (no fleet)".into()));
        }
    }
    l2.extend(pair("up ", uptime(s.uptime_s)));
    let slo_style = match s.slo_attainment {
        Some(x) if x < 0.9 => Style::default().fg(t.bad),
        Some(x) if x < 0.99 => Style::default().fg(t.warn),
        Some(_) => Style::default().fg(t.good),
        None => val,
    };
    let mut l3 = Vec::new();
    l3.extend(pair("req/s ", opt(s.rps, 1)));
    l3.extend(pair("accuracy ", opt(s.accuracy, 2)));
    l3.push(Span::styled("SLO ", key));
    let slo = s.slo_attainment.map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
    l3.push(Span::styled(slo, slo_style.add_modifier(Modifier::BOLD)));
    l3.push(Span::raw("  "));
    l3.extend(pair("p50 ", opt(s.p50_ms, 1)));
    l3.extend(pair("p99 ", format!("{} ms", opt(s.p99_ms, 1))));
    l3.extend(pair("errors ", s.errors.to_string()));
    let block = panel(t, " edgeinfer console · ? help ");
    f.render_widget(Paragraph::new(vec![Line::from(l1), Line::from(l2), Line::from(l3)]).block(block), area);
}
