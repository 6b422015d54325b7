//! The charts, drawn with plotters: PNG or SVG by the file's extension.
//!
//! - `write_bars`: one panel per (workload, variant, client), a horizontal
//!   bar per backend or peer (ops/s, each panel its own scale), coloured by
//!   I/O model, with the ratio to the panel's baseline.
//! - `write_scale`: the scale curve (`echo-scale`): throughput and CPU per op
//!   against connections, log x axis, one line per backend or model row.
//!
//! Text is drawn with a font compiled into the binary (Ubuntu Light from the
//! `epaint_default_fonts` crate), so no system font is needed.

use crate::report::{Model, Record};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::io;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only fails on bytes that are not a font; these are one.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn model_color(m: Model) -> RGBColor {
    match m {
        Model::Blocking => RGBColor(0x7f, 0x7f, 0x7f),
        Model::Nonblocking => RGBColor(0xb2, 0x18, 0x2b),
        Model::Multiplexing => RGBColor(0xe0, 0x82, 0x14),
        Model::SignalDriven => RGBColor(0x80, 0x73, 0xac),
        Model::AsyncAio => RGBColor(0x5a, 0xae, 0x61),
        Model::AsyncUring => RGBColor(0x2b, 0x7b, 0xba),
        Model::Iocp => RGBColor(0x1b, 0x78, 0x37),
    }
}

/// Distinct line colours for the scale curves.
const LINE_COLORS: [RGBColor; 12] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0x99, 0x66, 0x00),
];

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> io::Error + '_ {
    move |e| io::Error::other(format!("drawing {}: {e}", path.display()))
}

enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> io::Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: a chart is written as .png or .svg (by the file's extension)",
                path.display()
            ),
        )),
    }
}

/// Draws `$body` (on the area `$a`) into a PNG or an SVG of `$size` at
/// `$path`, by its extension.
macro_rules! render {
    ($path:expr, $size:expr, |$a:ident| $body:expr) => {{
        register_font();
        let path: &Path = $path;
        match format_of(path)? {
            Format::Png => {
                let $a = BitMapBackend::new(path, $size).into_drawing_area();
                $body.map_err(err(path))?;
                $a.present().map_err(err(path))
            }
            Format::Svg => {
                let $a = SVGBackend::new(path, $size).into_drawing_area();
                $body.map_err(err(path))?;
                $a.present().map_err(err(path))
            }
        }
    }};
}

fn fmt_ops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// One panel of the bar chart: its title and its rows.
struct Panel<'a> {
    key: String,
    rows: Vec<&'a Record>,
}

fn bar_panels(recs: &[Record]) -> Vec<Panel<'_>> {
    let mut panels: Vec<Panel> = Vec::new();
    for r in recs
        .iter()
        .filter(|r| r.result.is_some() && r.workload != "echo-scale")
    {
        let key = if r.client == "-" {
            format!("{} — {}", r.workload, r.variant)
        } else {
            format!("{} — {} — {} client", r.workload, r.variant, r.client)
        };
        match panels.iter_mut().find(|p| p.key == key) {
            Some(p) => p.rows.push(r),
            None => panels.push(Panel { key, rows: vec![r] }),
        }
    }
    // A panel without its baseline (the pread loop runs at qd1 only) shows
    // the workload's baseline row as a reference bar.
    for p in panels.iter_mut() {
        if p.rows.iter().any(|r| r.is_baseline) {
            continue;
        }
        let w = p.rows[0].workload;
        if let Some(b) = recs
            .iter()
            .find(|r| r.workload == w && r.is_baseline && r.result.is_some())
        {
            p.rows.push(b);
        }
    }
    panels
}

const BAR_W: u32 = 760;
const ROW_H: u32 = 17;
const HEAD_H: u32 = 74;

fn panel_h(p: &Panel) -> u32 {
    48 + p.rows.len() as u32 * ROW_H
}

/// Where each panel goes (x, y) in two columns, and the image's size.
fn layout(panels: &[Panel]) -> (Vec<(i32, i32)>, (u32, u32)) {
    let mut col_y = [HEAD_H; 2];
    let mut at = Vec::new();
    for p in panels {
        let c = if col_y[0] <= col_y[1] { 0 } else { 1 };
        at.push((c as i32 * BAR_W as i32, col_y[c] as i32));
        col_y[c] += panel_h(p) + 8;
    }
    (at, (2 * BAR_W, col_y[0].max(col_y[1]) + 4))
}

fn draw_legend<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, y: i32) -> Result<(), String> {
    let mut x = 12;
    for m in Model::ALL {
        root.draw(&Rectangle::new(
            [(x, y), (x + 12, y + 12)],
            model_color(m).filled(),
        ))
        .map_err(s)?;
        root.draw(&Text::new(m.name(), (x + 16, y), (FONT, 13).into_font()))
            .map_err(s)?;
        x += 34 + 7 * m.name().chars().count() as i32;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    at: &[(i32, i32)],
    title: &str,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(s)?;
    root.draw(&Text::new(title, (12, 8), (FONT, 18).into_font()))
        .map_err(s)?;
    draw_legend(root, 34)?;
    root.draw(&Text::new(
        "bars: ops/s (each panel its own scale), ratio to the panel's baseline (outlined)",
        (12, 52),
        (FONT, 13).into_font().color(&RGBColor(0x44, 0x44, 0x44)),
    ))
    .map_err(s)?;
    for (p, &(x, y)) in panels.iter().zip(at) {
        let area = root.clone().shrink((x, y), (BAR_W - 8, panel_h(p)));
        let n = p.rows.len();
        // The y axis counts upwards: the panel's first row goes on top.
        let rows: Vec<&Record> = p.rows.iter().rev().copied().collect();
        let max = p
            .rows
            .iter()
            .filter_map(|r| r.ops())
            .fold(0.0f64, f64::max)
            .max(1.0);
        let names: Vec<String> = p
            .rows
            .iter()
            .map(|r| {
                if r.variant != rows[n - 1].variant {
                    format!("{} ({})", r.backend, r.variant)
                } else {
                    r.backend.clone()
                }
            })
            .collect();
        let mut chart = ChartBuilder::on(&area)
            .caption(&p.key, (FONT, 14))
            .margin_right(12)
            .x_label_area_size(18)
            .y_label_area_size(250)
            .build_cartesian_2d(0f64..max * 1.3, (0..n).into_segmented())
            .map_err(s)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .x_labels(5)
            .label_style((FONT, 11))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    names.get(*i).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_label_formatter(&|v| fmt_ops(*v))
            .draw()
            .map_err(s)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (r.ops().unwrap_or(0.0), SegmentValue::Exact(i + 1)),
                    ],
                    model_color(r.model).filled(),
                );
                bar.set_margin(2, 2, 0, 0);
                bar
            }))
            .map_err(s)?;
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_baseline)
                    .map(|(i, r)| {
                        let mut bar = Rectangle::new(
                            [
                                (0.0, SegmentValue::Exact(i)),
                                (r.ops().unwrap_or(0.0), SegmentValue::Exact(i + 1)),
                            ],
                            BLACK.stroke_width(2),
                        );
                        bar.set_margin(2, 2, 0, 0);
                        bar
                    }),
            )
            .map_err(s)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let ops = r.ops().unwrap_or(0.0);
                let ratio = r.ratio.map(|x| format!(" ({x:.2}×)")).unwrap_or_default();
                Text::new(
                    format!(" {}{ratio}", fmt_ops(ops)),
                    (ops, SegmentValue::CenterOf(i)),
                    TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(s)?;
    }
    Ok(())
}

/// The bar chart of every measured row but the scale curve's.
pub fn write_bars(path: &Path, recs: &[Record], title: &str) -> io::Result<()> {
    let panels = bar_panels(recs);
    if panels.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no measured row to draw",
            path.display()
        )));
    }
    let (at, size) = layout(&panels);
    render!(path, size, |a| draw_bars(&a, &panels, &at, title))
}

/// A line of the scale curve: (connections, ops/s, CPU µs per op) per
/// point, and the point with idle connections, if measured.
struct Line {
    name: String,
    points: Vec<(f64, f64, Option<f64>)>,
    idle: Option<(f64, f64, Option<f64>)>,
}

/// The active connections and idle ones of an echo-scale variant
/// (`c100`, `c50 + 1000 idle`).
fn parse_scale_variant(v: &str) -> Option<(usize, usize)> {
    let v = v.strip_prefix('c')?;
    match v.split_once(" + ") {
        Some((a, rest)) => Some((a.parse().ok()?, rest.strip_suffix(" idle")?.parse().ok()?)),
        None => Some((v.parse().ok()?, 0)),
    }
}

fn scale_lines(recs: &[Record]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for r in recs.iter().filter(|r| r.workload == "echo-scale") {
        let (Some(m), Some((conns, idle))) = (&r.result, parse_scale_variant(&r.variant)) else {
            continue;
        };
        let name = if r.client == "-" {
            r.backend.clone()
        } else {
            format!("{} ({} client)", r.backend, r.client)
        };
        let i = match lines.iter().position(|l| l.name == name) {
            Some(i) => i,
            None => {
                lines.push(Line {
                    name,
                    points: Vec::new(),
                    idle: None,
                });
                lines.len() - 1
            }
        };
        let p = ((conns + idle) as f64, m.ops_per_sec, m.cpu_s_per_mop);
        if idle > 0 {
            lines[i].idle = Some(p);
        } else {
            lines[i].points.push(p);
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines.retain(|l| !l.points.is_empty() || l.idle.is_some());
    lines
}

fn draw_scale<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    lines: &[Line],
    title: &str,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(s)?;
    let root = root.titled(title, (FONT, 18)).map_err(s)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let xmax = lines
        .iter()
        .flat_map(|l| l.points.iter().chain(l.idle.iter()))
        .map(|p| p.0)
        .fold(10.0f64, f64::max)
        * 2.0;
    type Pick = fn(&(f64, f64, Option<f64>)) -> Option<f64>;
    let panels: [(&DrawingArea<DB, Shift>, &str, Pick); 2] = [
        (&left, "echo 128 B: ops/s", |p| Some(p.1)),
        (&right, "echo 128 B: CPU µs per op (server process)", |p| {
            p.2
        }),
    ];
    for (k, (area, caption, pick)) in panels.into_iter().enumerate() {
        let vals: Vec<f64> = lines
            .iter()
            .flat_map(|l| l.points.iter().chain(l.idle.iter()))
            .filter_map(pick)
            .filter(|v| *v > 0.0)
            .collect();
        let ymin = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let ymax = vals.iter().cloned().fold(0.0f64, f64::max);
        if vals.is_empty() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0.8f64..xmax).log_scale(),
                ((ymin / 1.5)..(ymax * 1.5)).log_scale(),
            )
            .map_err(s)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .x_desc("connections (log)")
            .y_desc(if k == 0 {
                "ops/s (log)"
            } else {
                "µs/op (log)"
            })
            .label_style((FONT, 12))
            .x_label_formatter(&|v| fmt_ops(*v))
            .y_label_formatter(&|v| {
                if k == 0 {
                    fmt_ops(*v)
                } else {
                    format!("{v:.1}")
                }
            })
            .draw()
            .map_err(s)?;
        for (i, l) in lines.iter().enumerate() {
            let color = LINE_COLORS[i % LINE_COLORS.len()];
            let pts: Vec<(f64, f64)> = l
                .points
                .iter()
                .filter_map(|p| pick(p).map(|y| (p.0, y)))
                .collect();
            let series = chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(s)?;
            if k == 1 {
                series.label(&l.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(s)?;
            if let Some(y) = l.idle.as_ref().and_then(|p| pick(p).map(|y| (p.0, y))) {
                chart
                    .draw_series([TriangleMarker::new(y, 6, color.stroke_width(2))])
                    .map_err(s)?;
            }
        }
        if k == 1 {
            chart
                .configure_series_labels()
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(s)?;
        }
    }
    Ok(())
}

/// Whether the records have a scale curve to draw.
pub fn has_scale(recs: &[Record]) -> bool {
    !scale_lines(recs).is_empty()
}

/// The scale curve: throughput and CPU per op against connections (log x),
/// a line per row; a triangle marks 50 active among 1,000 idle (at 1,050).
pub fn write_scale(path: &Path, recs: &[Record], title: &str) -> io::Result<()> {
    let lines = scale_lines(recs);
    if lines.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no echo-scale row to draw",
            path.display()
        )));
    }
    let title = format!("{title} — triangle: 50 active + 1,000 idle");
    render!(path, (1400, 620), |a| draw_scale(&a, &lines, &title))
}

/// The scale chart's path beside the bar chart's: `out.png` → `out-scale.png`.
pub fn scale_path(bars: &Path) -> std::path::PathBuf {
    let stem = bars
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = bars
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    bars.with_file_name(format!("{stem}-scale.{ext}"))
}
