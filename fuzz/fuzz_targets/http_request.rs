//! Fuzzes the static file server's request handling: any bytes as a request
//! head, then path resolution under a real root and range parsing. A crash,
//! a panic, or a path resolved outside the root is a failure.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join("ringport-fuzz-root");
        let _ = std::fs::create_dir_all(dir.join("sub"));
        let _ = std::fs::write(dir.join("index.html"), b"<h1>hi</h1>");
        let _ = std::fs::write(dir.join("sub/a.txt"), b"a");
        let _ = std::os::unix::fs::symlink("/etc", dir.join("out"));
        dir.canonicalize().expect("fuzz root")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = ringport_http::parse_request(data) {
        assert!(req.head_len <= data.len());
        if let Ok(path) = ringport_http::resolve(root(), &req.target) {
            assert!(path.starts_with(root()), "escaped the root: {}", path.display());
        }
        let size = data.len() as u64;
        if let ringport_http::RangeSpec::Part { start, end } =
            ringport_http::parse_range(req.range.as_deref(), size)
        {
            assert!(start <= end && end < size);
        }
    }
    // Also feed the raw bytes as a target and a range, as a client could.
    let text = String::from_utf8_lossy(data);
    if let Ok(path) = ringport_http::resolve(root(), &text) {
        assert!(path.starts_with(root()));
    }
    let _ = ringport_http::parse_range(Some(&text), 1000);
});
