//! The benchmark report. Each bench writes its part under `target/bench/` (`<name>.json`: its
//! method, tables and raw numbers; SVG figures drawn with plotters); `cargo xtask bench` puts the
//! parts of a run together into `report.md` and `report.json`.

use std::path::PathBuf;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// The `p`th percentile (0-100) of `samples`, by nearest rank; they need not be sorted.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// One bench's share of the report.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Part {
    /// The file stem (`datapath`, `cni`, `ipam`, ...).
    pub name: String,
    pub title: String,
    /// How the figures were measured, in a sentence or two.
    pub method: String,
    pub tables: Vec<Table>,
    /// SVG files beside the JSON, with their captions.
    pub figures: Vec<(String, String)>,
    /// The raw numbers behind the tables and figures.
    pub data: serde_json::Value,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Where the parts go: `target/bench/` of the workspace (`ENIFLOW_BENCH_DIR` overrides).
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("ENIFLOW_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::agent::workspace().join("target/bench"));
    std::fs::create_dir_all(&dir).expect("the bench report directory");
    dir
}

impl Part {
    /// Writes `<dir>/<name>.json` and says where.
    pub fn write(&self) {
        let path = dir().join(format!("{}.json", self.name));
        let text = serde_json::to_string_pretty(self).expect("a report part is JSON");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("report part: {}", path.display());
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A line chart of `series` (points marked too), with `marks` drawn as crosses on the x axis
/// (events such as EC2 calls). Written as `<dir>/<file>`; returns the file name.
pub fn line_chart(
    file: &str,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    marks: &[(f64, String)],
) -> String {
    let path = dir().join(file);
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (1.0f64, 1.0f64);
    let mut x_min = f64::MAX;
    for (x, y) in points {
        x_max = x_max.max(*x);
        x_min = x_min.min(*x);
        y_max = y_max.max(*y);
    }
    if x_min == f64::MAX || x_min >= x_max {
        x_min = 0.0;
    }
    let root = SVGBackend::new(&path, (800, 480)).into_drawing_area();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_min..x_max * 1.02, 0.0..y_max * 1.1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart.draw_series(
                s.points
                    .iter()
                    .map(|(x, y)| Circle::new((*x, *y), 3, color.filled())),
            )?;
        }
        if !marks.is_empty() {
            chart
                .draw_series(
                    marks
                        .iter()
                        .map(|(x, _)| Cross::new((*x, 0.0), 4, BLACK.stroke_width(1))),
                )?
                .label("EC2 call")
                .legend(|(x, y)| Cross::new((x + 8, y), 4, BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        panic!("draw {}: {e}", path.display());
    }
    file.to_owned()
}

/// The cumulative distribution of `samples` as chart points (value, fraction ≤ value).
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, (i + 1) as f64 / n))
        .collect()
}
