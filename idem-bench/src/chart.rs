//! The results chart: ops/s against concurrent tasks, one panel per store and workload, one
//! line per side. The ops/s axis is logarithmic, so equal ratios look equally far apart.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Results, Row};

const COLOURS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws the chart as SVG at `path`.
pub(crate) fn draw(results: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let rows = results.rows();
    let mut panels: Vec<(&str, &str)> = Vec::new();
    for row in &rows {
        let panel = (row.cell.suite, row.cell.workload.name());
        if !panels.contains(&panel) {
            panels.push(panel);
        }
    }
    let columns = 2;
    let lines = panels.len().div_ceil(columns).max(1);
    let root = SVGBackend::new(path, (1000, 380 * lines as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((lines, columns));
    for ((suite, workload), area) in panels.iter().zip(areas) {
        let in_panel: Vec<&Row> = rows
            .iter()
            .filter(|row| row.cell.suite == *suite && row.cell.workload.name() == *workload)
            .collect();
        let mut tasks: Vec<u64> = in_panel.iter().map(|row| row.cell.tasks).collect();
        tasks.sort_unstable();
        tasks.dedup();
        let top = in_panel
            .iter()
            .map(|row| row.ops_per_sec)
            .fold(1.0, f64::max)
            * 2.0;
        let bottom = in_panel
            .iter()
            .map(|row| row.ops_per_sec)
            .fold(top, f64::min)
            .max(1.0)
            / 2.0;
        let position = |t: u64| tasks.iter().position(|&x| x == t).unwrap_or(0) as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{suite}: {workload}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(
                -0.2f64..(tasks.len() as f64 - 0.8).max(0.2),
                (bottom..top).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("concurrent tasks")
            .y_desc("ops/s (log scale)")
            .x_labels(tasks.len().max(1))
            .x_label_formatter(&|x| {
                let index = x.round();
                if (x - index).abs() < 0.01 && index >= 0.0 {
                    tasks
                        .get(index as usize)
                        .map(u64::to_string)
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                if *y >= 1e6 {
                    format!("{:.1}M", y / 1e6)
                } else {
                    format!("{:.0}k", y / 1e3)
                }
            })
            .draw()?;
        let mut sides: Vec<&str> = Vec::new();
        for row in &in_panel {
            if !sides.contains(&row.cell.side) {
                sides.push(row.cell.side);
            }
        }
        for (index, side) in sides.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let points: Vec<(f64, f64)> = in_panel
                .iter()
                .filter(|row| row.cell.side == *side)
                .map(|row| (position(row.cell.tasks), row.ops_per_sec))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(*side)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|point| Circle::new(point, 3, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
