//! Line charts as SVG, for the figures where a curve says more than a table (writes/s
//! against the number of nodes, latency percentiles). Plain SVG text, no dependency: axes
//! with round ticks, one line per series, and where a point is the median of several runs,
//! its min–max range as a bar.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const WIDTH: f64 = 840.0;
const HEIGHT: f64 = 470.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 84.0;
const BOTTOM: f64 = 56.0;
/// One colour per series, in order; told apart by more than hue alone (markers differ).
const COLOURS: [&str; 4] = ["#1f5fa8", "#c0392b", "#2e8540", "#7d4ea8"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10: for figures that span decades, such as latency tails.
    Log,
}

/// An axis: its label, scale, bounds and the ticks to draw (value, label).
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    pub min: f64,
    pub max: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from 0 to a round value at or above `max`, with about five ticks
    /// labelled by `label_of`.
    pub fn linear_from_zero(label: &str, max: f64, label_of: impl Fn(f64) -> String) -> Axis {
        let step = round_step(max.max(f64::MIN_POSITIVE) / 5.0);
        let top = (max / step).ceil().max(1.0) * step;
        let ticks = (0..)
            .map(|i| f64::from(i) * step)
            .take_while(|v| *v <= top * (1.0 + 1e-9))
            .map(|v| (v, label_of(v)))
            .collect();
        Axis {
            label: label.to_string(),
            scale: Scale::Linear,
            min: 0.0,
            max: top,
            ticks,
        }
    }

    /// A log axis spanning `min..=max` out to the nearest 1, 2 or 5 × 10ⁿ, ticked at each.
    pub fn log(label: &str, min: f64, max: f64, label_of: impl Fn(f64) -> String) -> Axis {
        let steps = one_two_five(min, max);
        let lo = steps
            .iter()
            .copied()
            .filter(|v| *v <= min)
            .fold(steps[0], f64::max);
        let hi = steps
            .iter()
            .copied()
            .find(|v| *v >= max)
            .unwrap_or(steps[steps.len() - 1]);
        Axis {
            label: label.to_string(),
            scale: Scale::Log,
            min: lo,
            max: hi,
            ticks: steps
                .into_iter()
                .filter(|v| *v >= lo && *v <= hi)
                .map(|v| (v, label_of(v)))
                .collect(),
        }
    }

    /// Where `v` falls between the bounds, 0 to 1.
    fn fraction(&self, v: f64) -> f64 {
        let t = |x: f64| match self.scale {
            Scale::Linear => x,
            Scale::Log => x.max(f64::MIN_POSITIVE).log10(),
        };
        let span = t(self.max) - t(self.min);
        if span <= 0.0 {
            return 0.5;
        }
        ((t(v) - t(self.min)) / span).clamp(0.0, 1.0)
    }
}

/// A round step (1, 2 or 5 × 10ⁿ) at or above `raw`.
fn round_step(raw: f64) -> f64 {
    let decade = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * decade)
}

/// Every 1, 2 or 5 × 10ⁿ from the one below `min` to the one above `max`.
fn one_two_five(min: f64, max: f64) -> Vec<f64> {
    let first = min.max(f64::MIN_POSITIVE).log10().floor() as i32;
    let last = max.max(min).max(f64::MIN_POSITIVE).log10().ceil() as i32;
    let mut out = Vec::new();
    for e in first..=last.max(first + 1) {
        for m in [1.0, 2.0, 5.0] {
            out.push(m * 10f64.powi(e));
        }
    }
    out
}

/// One measured point; `range` is the (min, max) of the runs whose median `y` is.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub range: Option<(f64, f64)>,
}

pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

pub struct Chart {
    pub title: String,
    /// Lines under the title: what was measured, and on what machine.
    pub subtitle: Vec<String>,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn render(&self) -> String {
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |x: f64| LEFT + self.x.fraction(x) * plot_w;
        let py = |y: f64| TOP + (1.0 - self.y.fraction(y)) * plot_h;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        for (i, line) in self.subtitle.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="{LEFT}" y="{}" fill="#555555" font-size="11">{}</text>"##,
                42.0 + 14.0 * i as f64,
                escape(line)
            );
        }
        for (v, label) in &self.y.ticks {
            let y = py(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333333">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                escape(label)
            );
        }
        for (v, label) in &self.x.ticks {
            let x = px(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#333333">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 18.0,
                escape(label)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999999"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 14.0,
            escape(&self.x.label)
        );
        let (ly_x, ly_y) = (22.0, TOP + plot_h / 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{ly_x}" y="{ly_y:.1}" text-anchor="middle" transform="rotate(-90 {ly_x} {ly_y:.1})">{}</text>"#,
            escape(&self.y.label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            for p in &series.points {
                if let Some((lo, hi)) = p.range {
                    // Side by side, so that the ranges of series at one x stay apart.
                    let beside = (i as f64 - (self.series.len() as f64 - 1.0) / 2.0) * 7.0;
                    let (x, y0, y1) = (px(p.x) + beside, py(lo), py(hi));
                    let _ = writeln!(
                        s,
                        r#"<path d="M{x:.1} {y0:.1}V{y1:.1}M{:.1} {y0:.1}h8M{:.1} {y1:.1}h8" stroke="{colour}" stroke-opacity="0.6" fill="none"/>"#,
                        x - 4.0,
                        x - 4.0
                    );
                }
            }
            let path: Vec<String> = series
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            if series.points.len() <= 24 {
                for p in &series.points {
                    let _ = writeln!(s, "{}", marker(i, px(p.x), py(p.y), colour));
                }
            }
            let (lx, ly) = (LEFT + plot_w + 16.0, TOP + 10.0 + 22.0 * i as f64);
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/>{}<text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                marker(i, lx + 12.0, ly, colour),
                lx + 30.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes the chart as `dir/name.svg` (making `dir` if need be) and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.svg"));
        std::fs::write(&path, self.render())?;
        Ok(path)
    }
}

/// A point's marker: a circle, square, triangle or diamond, by series.
fn marker(series: usize, x: f64, y: f64, colour: &str) -> String {
    match series % 4 {
        0 => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{colour}"/>"#),
        1 => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{colour}"/>"#,
            x - 4.0,
            y - 4.0
        ),
        2 => format!(
            r#"<path d="M{x:.1} {:.1}l5 9h-10z" fill="{colour}"/>"#,
            y - 5.0
        ),
        _ => format!(
            r#"<path d="M{x:.1} {:.1}l5 5l-5 5l-5 -5z" fill="{colour}"/>"#,
            y - 5.0
        ),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
