//! Line charts (PNG and SVG) drawn from JSON results, with an embedded font so that plots
//! render the same on any machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

/// One line of a chart.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points in order.
    pub points: Vec<(f64, f64)>,
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
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let points = || panel.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points() {
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
        let colors = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(227, 119, 194)];
        macro_rules! lines {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(&panel.x_label)
                    .y_desc(&panel.y_label)
                    .label_style((FONT, 13))
                    .draw()
                    .map_err(err)?;
                for (i, series) in panel.series.iter().enumerate() {
                    let color = colors[i % colors.len()];
                    let points: Vec<(f64, f64)> = series
                        .points
                        .iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
                        .collect();
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
