//! Line charts (PNG and SVG) drawn from JSON results, with an embedded font so that plots
//! render the same on any machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of a chart, with an optional shaded band around it (e.g. the spread over seeds).
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points in order.
    pub points: Vec<(f64, f64)>,
    /// `(x, low, high)` of the band, in order; empty for none.
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A line without a band.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { label: label.into(), points, band: Vec::new() }
    }
}

/// A grid of values drawn as coloured cells with the value written in each (lower is darker).
pub struct Heatmap {
    /// Title above the map.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The column labels, left to right.
    pub columns: Vec<String>,
    /// The row labels, bottom to top.
    pub rows: Vec<String>,
    /// `values[row][column]`; `None` for a missing cell (e.g. a diverged run).
    pub values: Vec<Vec<Option<f64>>>,
}

/// One panel of a figure.
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub reason: String,
}

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans, from the `dejavu` crate: no system fonts needed.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draw `panels` side by side into `stem.png` and `stem.svg`.
pub fn draw(stem: &Path, panels: &[Panel]) -> Result<(), PlotError> {
    register_font();
    let width = 560 * panels.len().max(1) as u32;
    let png = stem.with_extension("png");
    draw_on(BitMapBackend::new(&png, (width, 420)).into_drawing_area(), panels).map_err(|reason| PlotError { path: png.clone(), reason })?;
    let svg = stem.with_extension("svg");
    draw_on(SVGBackend::new(&svg, (width, 420)).into_drawing_area(), panels).map_err(|reason| PlotError { path: svg.clone(), reason })
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, panels: &[Panel]) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    // One colour per label across the figure, so a series keeps its colour in every panel.
    let mut labels: Vec<&str> = Vec::new();
    for series in panels.iter().flat_map(|p| &p.series) {
        if !labels.contains(&series.label.as_str()) {
            labels.push(&series.label);
        }
    }
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let points = || panel.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let band_edges = panel.series.iter().flat_map(|s| s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])).filter(|(x, y)| x.is_finite() && y.is_finite());
        for (x, y) in points().copied().chain(band_edges) {
            if panel.log_y && y <= 0.0 {
                continue;
            }
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.1, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        let mut chart = ChartBuilder::on(area);
        chart.caption(&panel.title, (FONT, 18)).margin(12).x_label_area_size(36).y_label_area_size(64);
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
        ];
        macro_rules! lines {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart.configure_mesh().x_desc(&panel.x_label).y_desc(&panel.y_label).label_style((FONT, 13)).draw().map_err(err)?;
                for series in &panel.series {
                    let i = labels.iter().position(|&l| l == series.label).unwrap_or(0);
                    let color = colors[i % colors.len()];
                    let band: Vec<(f64, f64, f64)> =
                        series.band.iter().copied().filter(|&(x, lo, hi)| x.is_finite() && lo.is_finite() && hi.is_finite() && (!panel.log_y || lo > 0.0)).collect();
                    if band.len() > 1 {
                        let outline: Vec<(f64, f64)> = band.iter().map(|&(x, lo, _)| (x, lo)).chain(band.iter().rev().map(|&(x, _, hi)| (x, hi))).collect();
                        chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.2).filled()))).map_err(err)?;
                    }
                    let points: Vec<(f64, f64)> = series.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0)).collect();
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(2)))
                        .map_err(err)?
                        .label(series.label.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                }
                if panel.series.len() > 1 {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font((FONT, 13))
                        .position(SeriesLabelPosition::UpperRight)
                        .draw()
                        .map_err(err)?;
                }
            }};
        }
        if panel.log_y {
            lines!(chart.build_cartesian_2d(x0..x1, ((y0 * 0.9)..(y1 * 1.1)).log_scale()).map_err(err)?);
        } else {
            lines!(chart.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(err)?);
        }
    }
    root.present().map_err(err)
}

/// Draw `map` into `stem.png` and `stem.svg`.
pub fn draw_heatmap(stem: &Path, map: &Heatmap) -> Result<(), PlotError> {
    register_font();
    let size = (140 + 110 * map.columns.len().max(1) as u32, 120 + 56 * map.rows.len().max(1) as u32);
    let png = stem.with_extension("png");
    heatmap_on(BitMapBackend::new(&png, size).into_drawing_area(), map).map_err(|reason| PlotError { path: png.clone(), reason })?;
    let svg = stem.with_extension("svg");
    heatmap_on(SVGBackend::new(&svg, size).into_drawing_area(), map).map_err(|reason| PlotError { path: svg.clone(), reason })
}

fn heatmap_on<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, map: &Heatmap) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let (columns, rows) = (map.columns.len().max(1), map.rows.len().max(1));
    let finite = || map.values.iter().flatten().flatten().copied().filter(|v| v.is_finite());
    let (low, high) = (finite().fold(f64::INFINITY, f64::min), finite().fold(f64::NEG_INFINITY, f64::max));
    let mut chart = ChartBuilder::on(&root)
        .caption(&map.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..columns as f64, 0.0..rows as f64)
        .map_err(err)?;
    let label = |labels: &[String], at: f64| {
        let index = at.floor() as usize;
        if (at - index as f64 - 0.5).abs() < 1e-6 { labels.get(index).cloned().unwrap_or_default() } else { String::new() }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&map.x_label)
        .y_desc(&map.y_label)
        .x_labels(2 * columns + 1)
        .y_labels(2 * rows + 1)
        .x_label_formatter(&|x| label(&map.columns, *x))
        .y_label_formatter(&|y| label(&map.rows, *y))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    // Light for the worst value, dark blue for the best.
    let shade = |v: f64| {
        let t = if high > low { (v - low) / (high - low) } else { 0.0 };
        let mix = |dark: f64, light: f64| (dark + (light - dark) * t).round() as u8;
        RGBColor(mix(8.0, 255.0), mix(48.0, 247.0), mix(107.0, 188.0))
    };
    for (r, row) in map.values.iter().enumerate() {
        for (c, value) in row.iter().enumerate() {
            let (x, y) = (c as f64, r as f64);
            let (fill, text) = match value {
                Some(v) if v.is_finite() => (shade(*v), format!("{v:.3}")),
                _ => (RGBColor(220, 220, 220), "-".to_string()),
            };
            chart.draw_series(std::iter::once(Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled()))).map_err(err)?;
            let dark = value.is_some_and(|v| v.is_finite() && high > low && (v - low) / (high - low) < 0.5);
            let style = TextStyle::from((FONT, 14).into_font()).color(if dark { &WHITE } else { &BLACK }).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(text, (x + 0.5, y + 0.5), style))).map_err(err)?;
        }
    }
    root.present().map_err(err)
}
