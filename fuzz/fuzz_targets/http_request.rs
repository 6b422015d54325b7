//! Fuzzes the static file server's request handling: any bytes as a request
//! head, then the target as a path for `openat2` beneath the root, range
//! parsing, conditional headers and HTTP dates. A crash, a panic, or a path
//! that is absolute or climbs with `..` is a failure.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fn check_relative(p: &Path) {
    assert!(
        p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "not a plain relative path: {}",
        p.display()
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = ringport_http::parse_request(data) {
        assert!(req.head_len <= data.len());
        if let Ok(path) = ringport_http::request_path(&req.target) {
            check_relative(&path);
        }
        let size = data.len() as u64;
        if let ringport_http::RangeSpec::Part { start, end } =
            ringport_http::parse_range(req.range.as_deref(), size)
        {
            assert!(start <= end && end < size);
        }
        let _ = ringport_http::not_modified(&req, "\"1-2.3-4\"", 1_700_000_000);
    }
    // Also feed the raw bytes as a target, a range and a date, as a client could.
    let text = String::from_utf8_lossy(data);
    if let Ok(path) = ringport_http::request_path(&text) {
        check_relative(&path);
    }
    let _ = ringport_http::parse_range(Some(&text), 1000);
    if let Some(t) = ringport_http::parse_http_date(&text) {
        let _ = ringport_http::http_date(t);
    }
});
