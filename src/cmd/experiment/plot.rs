//! SVG figures with plotters (no font files needed: SVG text is laid out by the viewer).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = (hi - lo).abs().max(1e-9);
    (lo - span * 0.05)..(hi + span * 0.05)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Labelled points, e.g. accuracy against cost per model (the paper's Figure 1).
pub fn scatter(path: &Path, title: &str, x_label: &str, y_label: &str, points: &[(f64, f64, String)]) -> Result<()> {
    anyhow::ensure!(!points.is_empty(), "no points to plot in {}", path.display());
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(padded(x0, x1), padded(y0, y1))
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(points.iter().map(|(x, y, label)| {
            EmptyElement::at((*x, *y)) + Circle::new((0, 0), 4, COLORS[0].filled()) + Text::new(label.clone(), (6, -12), ("sans-serif", 11))
        }))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// One panel of a stacked time-series figure.
pub struct Panel<'a> {
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Panels stacked on one shared time axis (the paper's Figure 3: accuracy, load and latency).
pub fn stacked(path: &Path, title: &str, x_label: &str, panels: &[Panel]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 260 * panels.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| anyhow!("{e}"))?;
    let (t0, t1) = bounds(panels.iter().flat_map(|p| p.series.iter().flat_map(|s| s.1.iter().map(|q| q.0))));
    anyhow::ensure!(t0.is_finite(), "no data to plot in {}", path.display());
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let (y0, y1) = bounds(panel.series.iter().flat_map(|s| s.1.iter().map(|q| q.1)));
        if !y0.is_finite() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(padded(t0, t1), padded(y0.min(0.0).max(y0 - (y1 - y0)), y1))
            .map_err(|e| anyhow!("{e}"))?;
        chart.configure_mesh().x_desc(x_label).y_desc(panel.y_label).draw().map_err(|e| anyhow!("{e}"))?;
        for (i, (name, pts)) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
