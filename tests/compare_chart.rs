//! The comparison's chart, drawn from a small JSON fixture (the format
//! `compare --json` writes) by `compare --chart-from`.

use std::path::PathBuf;
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
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "compare"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example compare failed");
    }
    path
}

#[test]
fn chart_from_fixture_has_a_bar_per_measured_row_and_every_model_in_the_legend() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/compare_small.json"
    );
    let out =
        std::env::temp_dir().join(format!("ringport-compare-chart-{}.svg", std::process::id()));
    let run = Command::new(compare_exe())
        .arg("--chart-from")
        .arg(fixture)
        .arg("--chart")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "compare --chart-from failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let svg = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    // The four measured rows each have a labelled bar; the n/a row has none.
    for name in [
        "ringport/epoll",
        "nonblocking polling loop",
        "ringport CompletionPort (2 workers)",
        "std pread loop",
    ] {
        assert!(
            svg.contains(&format!(">{name}</text>")),
            "no bar for {name}"
        );
    }
    assert!(!svg.contains("fio io_uring"), "the n/a row was drawn");
    // One panel per (workload, variant, client).
    for panel in [
        "echo — c50 128B — uring client",
        "echo — c50 128B — epoll client",
        "file-randread — qd1",
    ] {
        assert!(svg.contains(panel), "no panel {panel}");
    }
    for model in [
        "blocking",
        "nonblocking",
        "multiplexing",
        "signal-driven",
        "asynchronous",
        "IOCP",
    ] {
        assert!(
            svg.contains(&format!(">{model}</text>")),
            "legend lacks {model}"
        );
    }
}

#[test]
fn chart_from_a_file_that_is_not_json_fails_with_a_message() {
    let bad =
        std::env::temp_dir().join(format!("ringport-compare-bad-{}.json", std::process::id()));
    std::fs::write(&bad, "not json").unwrap();
    let out = std::env::temp_dir().join(format!("ringport-compare-bad-{}.svg", std::process::id()));
    let run = Command::new(compare_exe())
        .arg("--chart-from")
        .arg(&bad)
        .arg("--chart")
        .arg(&out)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not JSON"), "unexpected message: {err}");
    assert!(!out.exists());
}
