//! The comparison's charts, drawn with plotters from a small JSON fixture
//! (the format `compare --json` writes) by `compare --chart-from`: a PNG and
//! an SVG of the bars, and of the scale curve beside each.

use std::path::{Path, PathBuf};
use std::process::Command;

fn compare_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("compare");
    // `cargo test --test compare_chart` alone does not build examples:
    // build it (a no-op when it is up to date) so the binary is current.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "compare"])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example compare failed");
    path
}

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/compare_small.json"
);

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringport-compare-{}-{name}", std::process::id()))
}

/// Runs `compare --chart-from FIXTURE --chart out` and returns stderr.
fn chart_from(from: &Path, out: &Path) -> std::process::Output {
    Command::new(compare_exe())
        .arg("--chart-from")
        .arg(from)
        .arg("--chart")
        .arg(out)
        .output()
        .unwrap()
}

/// The width and height of a PNG file, after checking its signature and
/// that its first chunk is IHDR.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 33 && bytes[..8] == *b"\x89PNG\r\n\x1a\n",
        "not a PNG"
    );
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is not IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn png_charts_from_the_fixture_are_pngs_of_a_sensible_size() {
    let out = tmp("bars.png");
    let scale = tmp("bars-scale.png");
    let run = chart_from(Path::new(FIXTURE), &out);
    let bars = std::fs::read(&out);
    let curve = std::fs::read(&scale);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&scale);
    assert!(
        run.status.success(),
        "compare --chart-from failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bars = bars.expect("no bar chart written");
    let (w, h) = png_size(&bars);
    // Two columns of panels; three panels (echo under two clients, the
    // pread loop) stacked at most two high.
    assert!((1000..=2000).contains(&w), "bar chart width {w}");
    assert!((150..=800).contains(&h), "bar chart height {h}");
    // A drawn chart compresses to more than a blank page would.
    assert!(bars.len() > 10_000, "bar chart only {} bytes", bars.len());
    let curve = curve.expect("no scale chart written beside the bars");
    assert_eq!(png_size(&curve), (1400, 620));
    assert!(
        curve.len() > 10_000,
        "scale chart only {} bytes",
        curve.len()
    );
}

#[test]
fn svg_charts_from_the_fixture_name_every_row_panel_model_and_line() {
    let out = tmp("bars.svg");
    let scale = tmp("bars-scale.svg");
    let run = chart_from(Path::new(FIXTURE), &out);
    let svg = std::fs::read_to_string(&out);
    let curve = std::fs::read_to_string(&scale);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&scale);
    assert!(
        run.status.success(),
        "compare --chart-from failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let svg = svg.expect("no bar chart written");
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    // plotters writes a text element's content on its own line.
    let text = |s: &str, t: &str| s.contains(&format!("\n{t}\n</text>"));
    // The four measured rows each have a labelled bar; the n/a row has none.
    for name in [
        "ringport/epoll",
        "nonblocking polling loop",
        "ringport CompletionPort (2 workers)",
        "std pread loop",
    ] {
        assert!(text(&svg, name), "no bar for {name}");
    }
    assert!(!svg.contains("fio io_uring"), "the n/a row was drawn");
    // One panel per (workload, variant, client); the scale rows are not bars.
    for panel in [
        "echo — c50 128B — uring client",
        "echo — c50 128B — epoll client",
        "file-randread — qd1",
    ] {
        assert!(text(&svg, panel), "no panel {panel}");
    }
    assert!(
        !svg.contains("echo-scale"),
        "a scale row was drawn as a bar"
    );
    for model in [
        "blocking",
        "nonblocking",
        "multiplexing",
        "signal-driven",
        "asynchronous (aio)",
        "asynchronous (io_uring)",
        "IOCP",
    ] {
        assert!(text(&svg, model), "legend lacks {model}");
    }
    // The value and ratio next to a bar.
    assert!(text(&svg, " 52.0k (1.30×)"), "no value label on a bar");

    let curve = curve.expect("no scale chart written beside the bars");
    assert!(curve.starts_with("<svg") && curve.trim_end().ends_with("</svg>"));
    for line in [
        "ringport/uring (uring client)",
        "std::net thread per connection (uring client)",
    ] {
        assert!(text(&curve, line), "scale legend lacks {line}");
    }
    // Two lines of three points (circles) in each of the two plots
    // (throughput, CPU per op); the idle point is a triangle, not a circle.
    assert_eq!(curve.matches("<circle").count(), 12, "points on the curves");
}

#[test]
fn chart_from_a_file_that_is_not_json_fails_with_a_message() {
    let bad = tmp("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = tmp("bad.svg");
    let run = chart_from(&bad, &out);
    let _ = std::fs::remove_file(&bad);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not JSON"), "unexpected message: {err}");
    assert!(!out.exists());
}

#[test]
fn chart_with_another_extension_is_refused_with_a_message() {
    let out = tmp("chart.gif");
    let run = chart_from(Path::new(FIXTURE), &out);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(".png or .svg"), "unexpected message: {err}");
    assert!(!out.exists());
}
