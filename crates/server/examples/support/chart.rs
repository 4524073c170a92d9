//! What the benchmark charts share: log-log axes on an SVG area, the line colours, the
//! legend.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::prelude::*;

/// A chart with logarithmic axes whose x ticks sit at the measured points.
pub(crate) type LogLogChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<WithKeyPoints<LogCoord<f64>>, LogCoord<f64>>>;

/// What the axes show.
pub(crate) struct Axes<'s> {
    pub(crate) caption: String,
    /// The measured x values, sorted; at least one.
    pub(crate) x_points: Vec<f64>,
    /// The smallest and largest y value to show, both positive.
    pub(crate) y_extent: (f64, f64),
    pub(crate) x_desc: &'s str,
    pub(crate) y_desc: &'s str,
    pub(crate) y_label: &'s dyn Fn(&f64) -> String,
}

/// Draws the caption, axes and mesh on `area`, with room around the points.
pub(crate) fn log_log<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    axes: &Axes<'_>,
) -> Result<LogLogChart<'a, 'b>> {
    let (first, last) = (axes.x_points[0], axes.x_points[axes.x_points.len() - 1]);
    let (low, high) = axes.y_extent;
    let mut chart = ChartBuilder::on(area)
        .caption(&axes.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            ((first / 1.5)..(last * 1.5))
                .log_scale()
                .with_key_points(axes.x_points.clone()),
            ((low / 2.0)..(high * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(axes.y_label)
        .draw()?;
    Ok(chart)
}

/// The legend of the labelled series, where it hides the fewest points.
pub(crate) fn legend<'a, 'b: 'a>(
    chart: &mut LogLogChart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Line colours, one per series (matplotlib's first six: readable on white).
pub(crate) const LINE_COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
