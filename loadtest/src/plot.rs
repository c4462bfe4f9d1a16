//! Draws the JSON `curves` writes as PNG charts, one per curve: the sidecar and its
//! baseline as two lines, so where the sidecar stays flat and where it bends shows
//! at a glance. Text is drawn with a TrueType font read at run time (Debian's
//! `fonts-dejavu-core`), so no fontconfig or freetype is needed to build or run.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

use crate::curves::Sweep;

/// Where Debian's `fonts-dejavu-core` puts its sans-serif face.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Width and height of a one-chart PNG; a throughput PNG stacks two charts.
pub const CHART_SIZE: (u32, u32) = (1000, 560);

/// The few figures a chart needs from each report in the curves' JSON.
#[derive(Debug, Deserialize)]
struct Figures {
    committed_mb_per_sec: f64,
    committed_messages_per_sec: f64,
    latency: Option<P99>,
    peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct P99 {
    p99_ms: f64,
}

#[derive(Debug, Deserialize)]
struct Point {
    x: f64,
    sidecar: Figures,
    baseline: Option<Figures>,
}

#[derive(Debug, Deserialize)]
struct Curve {
    sweep: Sweep,
    budget_bytes: Option<u64>,
    points: Vec<Point>,
}

#[derive(Debug, Deserialize)]
struct Curves {
    curves: Vec<Curve>,
}

/// One line of a chart.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// Whether each point is marked: measured points are, a limit's line is not.
    marked: bool,
}

const SIDECAR: RGBColor = RGBColor(200, 40, 40);
const BASELINE: RGBColor = RGBColor(40, 80, 200);

/// The sidecar's and the baseline's value of `figure` at each point.
fn lines(curve: &Curve, baseline: &'static str, figure: fn(&Figures) -> Option<f64>) -> Vec<Line> {
    let of = |pick: fn(&Point) -> Option<&Figures>| -> Vec<(f64, f64)> {
        curve.points.iter().filter_map(|p| Some((p.x, figure(pick(p)?)?))).collect()
    };
    vec![
        Line { name: "spout-sidecar".into(), color: SIDECAR, points: of(|p| Some(&p.sidecar)), marked: true },
        Line { name: baseline.into(), color: BASELINE, points: of(|p| p.baseline.as_ref()), marked: true },
    ]
}

fn mb_per_sec(f: &Figures) -> Option<f64> {
    Some(f.committed_mb_per_sec)
}

fn messages_per_sec(f: &Figures) -> Option<f64> {
    Some(f.committed_messages_per_sec)
}

fn p99_ms(f: &Figures) -> Option<f64> {
    f.latency.as_ref().map(|l| l.p99_ms)
}

fn peak_rss_mib(f: &Figures) -> Option<f64> {
    f.peak_rss_bytes.map(|b| b as f64 / 1048576.0)
}

/// Registers the font every chart's text is drawn with (once per process).
fn load_font(path: &Path) -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!("reading the font {}: {e} (Debian: apt-get install fonts-dejavu-core)", path.display())
        })?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{} is not a TrueType font", path.display()))
    });
    loaded.clone().map_err(anyhow::Error::msg)
}

/// Draws every curve in the JSON file `curves` as PNGs in `out`; returns their paths.
pub fn plot(curves: &Path, out: &Path, font: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read(curves).with_context(|| format!("reading {}", curves.display()))?;
    let curves: Curves = serde_json::from_slice(&text).with_context(|| format!("parsing {}", curves.display()))?;
    load_font(font)?;
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for curve in &curves.curves {
        if curve.points.is_empty() {
            continue;
        }
        written.extend(match curve.sweep {
            Sweep::Size => log_pair(curve, out, "size", "message size", bytes_label)?,
            Sweep::Connections => log_pair(curve, out, "connections", "connections", count_label)?,
            Sweep::Backlog => vec![backlog(curve, out)?],
        });
    }
    if written.is_empty() {
        bail!("no curve with points to draw");
    }
    Ok(written)
}

/// A white PNG of `size` at `path`, drawn by `draw`.
fn png(
    path: PathBuf,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    {
        let root = BitMapBackend::new(&path, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present().with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Throughput (MB/s above msg/s) and p99 against a swept value, both axes log.
fn log_pair(
    curve: &Curve,
    out: &Path,
    file: &str,
    x_name: &str,
    x_label: fn(f64) -> String,
) -> anyhow::Result<Vec<PathBuf>> {
    let xs = log_range(curve.points.iter().map(|p| p.x));
    let ticks: Vec<f64> = curve.points.iter().map(|p| p.x).collect();
    let x_desc = format!("{x_name} (log scale)");
    let log_chart = |area: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str, y_desc: &str, figure| {
        let lines = lines(curve, "bare hyper server", figure);
        let ys = log_range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
        let title = format!("{title} against {x_name}");
        chart(
            area,
            &title,
            (&x_desc, x_label),
            (y_desc, si_label),
            xs.clone().log_scale().with_key_points(ticks.clone()),
            ys.log_scale(),
            &lines,
        )
    };
    let (w, h) = CHART_SIZE;
    let throughput = png(out.join(format!("throughput-vs-{file}.png")), (w, 2 * h), |root| {
        let (top, bottom) = root.split_vertically(h);
        log_chart(&top, "payload throughput", "MB/s committed (log scale)", mb_per_sec)?;
        log_chart(&bottom, "message throughput", "messages/s committed (log scale)", messages_per_sec)
    })?;
    let p99 = png(out.join(format!("p99-vs-{file}.png")), CHART_SIZE, |root| {
        log_chart(root, "p99 latency", "p99 latency, ms (log scale)", p99_ms)
    })?;
    Ok(vec![throughput, p99])
}

/// Peak RSS against how long the reader stalled, beside the memory budget.
fn backlog(curve: &Curve, out: &Path) -> anyhow::Result<PathBuf> {
    let mut lines = lines(curve, "", peak_rss_mib);
    lines.truncate(1);
    let last = curve.points.iter().map(|p| p.x).fold(0.0, f64::max).max(1.0);
    if let Some(budget) = curve.budget_bytes {
        let mib = budget as f64 / 1048576.0;
        let name = format!("--max-buffer-bytes {}", bytes_label(budget as f64));
        lines.push(Line { name, color: BASELINE, points: vec![(0.0, mib), (last, mib)], marked: false });
    }
    let top = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.15;
    png(out.join("rss-vs-backlog.png"), CHART_SIZE, |root| {
        let x: Axis<'_> = ("reader stalled, s", count_label);
        let title = "peak RSS against a stalled reader's backlog";
        chart(root, title, x, ("peak RSS, MiB", si_label), 0.0..last * 1.05, 0.0..top.max(1.0), &lines)
    })
}

/// An axis: its description and how its tick values are written.
type Axis<'a> = (&'a str, fn(f64) -> String);

fn chart<X, Y>(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    x_range: X,
    y_range: Y,
    lines: &[Line],
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)?;
    let (x_format, y_format) = (|v: &f64| (x.1)(*v), |v: &f64| (y.1)(*v));
    chart
        .configure_mesh()
        .x_desc(x.0)
        .y_desc(y.0)
        .y_labels(12)
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    for line in lines.iter().filter(|l| !l.points.is_empty()) {
        let style = line.color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        if line.marked {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, line.color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

/// A log axis's range around positive `values`, with some room at each end.
fn log_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.filter(|v| *v > 0.0).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.1..10.0;
    }
    lo / 1.5..hi * 1.5
}

fn bytes_label(v: f64) -> String {
    let (n, unit) = match v {
        v if v >= 1048576.0 => (v / 1048576.0, "MiB"),
        v if v >= 1024.0 => (v / 1024.0, "KiB"),
        v => (v, "B"),
    };
    format!("{} {unit}", trim(n))
}

fn count_label(v: f64) -> String {
    format!("{}", v.round())
}

fn si_label(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(v / 1e6)),
        a if a >= 1e3 => format!("{}k", trim(v / 1e3)),
        _ => trim(v),
    }
}

/// At most three significant digits, without trailing zeros.
fn trim(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mb: f64, msgs: f64, p99: f64, rss_mib: u64) -> serde_json::Value {
        serde_json::json!({
            "name": "point", "scenario": {"size": {"min": 100, "max": 100}},
            "committed_mb_per_sec": mb, "committed_messages_per_sec": msgs,
            "latency": {"p50_ms": p99 / 3.0, "p99_ms": p99, "p999_ms": p99 * 2.0, "max_ms": p99 * 3.0},
            "peak_rss_bytes": rss_mib << 20, "ok": true
        })
    }

    fn fixture() -> serde_json::Value {
        let swept = |xs: &[f64]| -> Vec<serde_json::Value> {
            xs.iter()
                .enumerate()
                .map(|(i, &x)| {
                    let k = i as f64 + 1.0;
                    serde_json::json!({
                        "x": x,
                        "sidecar": report(5.0 * k, 40_000.0 / k, 1.5 * k, 30),
                        "baseline": report(9.0 * k, 80_000.0 / k, 0.8 * k, 10),
                    })
                })
                .collect()
        };
        let backlog: Vec<_> =
            [0.0, 5.0, 15.0].iter().map(|&x| serde_json::json!({"x": x, "sidecar": report(50.0, 800.0, 900.0, 40 + x as u64), "baseline": null})).collect();
        serde_json::json!({
            "machine": {"cores": 2, "cpu": "test"},
            "curves": [
                {"sweep": "size", "budget_bytes": null, "points": swept(&[100.0, 65536.0, 4194304.0])},
                {"sweep": "connections", "budget_bytes": null, "points": swept(&[1.0, 16.0, 1024.0])},
                {"sweep": "backlog", "budget_bytes": 67108864, "points": backlog},
            ],
            "failures": []
        })
    }

    fn dimensions(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let reader = decoder.read_info().unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
        let info = reader.info();
        (info.width, info.height)
    }

    #[test]
    fn draws_each_curve_as_a_png_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("curves.json");
        std::fs::write(&json, serde_json::to_vec(&fixture()).unwrap()).unwrap();
        let out = dir.path().join("png");
        let written = plot(&json, &out, Path::new(DEFAULT_FONT)).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "throughput-vs-size.png",
                "p99-vs-size.png",
                "throughput-vs-connections.png",
                "p99-vs-connections.png",
                "rss-vs-backlog.png"
            ]
        );
        let (w, h) = CHART_SIZE;
        for path in &written {
            let stacked = path.file_name().unwrap().to_string_lossy().starts_with("throughput");
            assert_eq!(dimensions(path), if stacked { (w, 2 * h) } else { (w, h) }, "{}", path.display());
        }
    }

    #[test]
    fn a_json_without_points_draws_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("curves.json");
        std::fs::write(&json, r#"{"curves": [{"sweep": "size", "budget_bytes": null, "points": []}]}"#).unwrap();
        let error = plot(&json, &dir.path().join("png"), Path::new(DEFAULT_FONT)).unwrap_err();
        assert!(error.to_string().contains("no curve"), "{error:#}");
    }

    #[test]
    fn tick_labels_read_as_people_write_them() {
        assert_eq!(
            (bytes_label(100.0), bytes_label(65536.0), bytes_label(4194304.0)),
            ("100 B".into(), "64 KiB".into(), "4 MiB".into())
        );
        assert_eq!(
            (si_label(0.25), si_label(12.5), si_label(1500.0), si_label(2_000_000.0)),
            ("0.25".into(), "12.5".into(), "1.5k".into(), "2M".into())
        );
    }
}
