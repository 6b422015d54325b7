//! ringport-http: the request handling of ringport's static file server
//! (`examples/http_server.rs`), as a library so it can be tested and fuzzed
//! on its own: parsing a request head (with `httparse`) under size limits,
//! turning its target into a relative path for `openat2` beneath the root,
//! single byte ranges, content types, validators (`ETag`, HTTP dates,
//! 304 decisions), response heads, and a bounded open-file cache.
//!
//! Nothing here performs I/O (the server opens files with `openat2`
//! `RESOLVE_BENEATH`, so the kernel, not a check here, keeps it under the
//! root); nothing here panics on any input.
#![warn(missing_docs)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

mod cache;
mod date;
pub use cache::FileCache;
pub use date::{http_date, parse_http_date};

/// The largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers accepted.
pub const MAX_HEADERS: usize = 64;

/// A response status.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200
    Ok,
    /// 206
    PartialContent,
    /// 304
    NotModified,
    /// 400
    BadRequest,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408
    RequestTimeout,
    /// 414
    UriTooLong,
    /// 416
    RangeNotSatisfiable,
    /// 431
    HeadersTooLarge,
    /// 500
    InternalError,
    /// 505
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::UriTooLong => 414,
            Status::RangeNotSatisfiable => 416,
            Status::HeadersTooLarge => 431,
            Status::InternalError => 500,
            Status::VersionNotSupported => 505,
        }
    }
    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::PartialContent => "Partial Content",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::UriTooLong => "URI Too Long",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::InternalError => "Internal Server Error",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// The methods the server serves; anything else gets 405.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// Any other method.
    Other,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target as sent (`/a/b?c`).
    pub target: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
    /// The `If-Modified-Since` header, if any.
    pub if_modified_since: Option<String>,
    /// How many bytes of the input the head took (the next request starts there).
    pub head_len: usize,
}

/// Parses one request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Err(status)`: answer with that status
/// and close (400 malformed, 414 request line too long, 431 head too large,
/// 505 unknown version).
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Status> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Status::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(Status::VersionNotSupported),
        Err(_) => return Err(Status::BadRequest),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if buf.len() >= MAX_HEAD {
                // Still no end of head: which part is too long?
                let line_done = buf.windows(2).any(|w| w == b"\r\n");
                return Err(if line_done {
                    Status::HeadersTooLarge
                } else {
                    Status::UriTooLong
                });
            }
            return Ok(None);
        }
    };
    if head_len > MAX_HEAD {
        return Err(Status::HeadersTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some(_) => Method::Other,
        None => return Err(Status::BadRequest),
    };
    let target = match req.path {
        Some(p) => p.to_string(),
        None => return Err(Status::BadRequest),
    };
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version >= 1;
    let mut range = None;
    let mut if_none_match = None;
    let mut if_modified_since = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("range") {
            range = Some(String::from_utf8_lossy(h.value).into_owned());
        } else if h.name.eq_ignore_ascii_case("if-none-match") {
            if_none_match = Some(String::from_utf8_lossy(h.value).into_owned());
        } else if h.name.eq_ignore_ascii_case("if-modified-since") {
            if_modified_since = Some(String::from_utf8_lossy(h.value).into_owned());
        } else if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            // GET and HEAD carry no body here; a body would desynchronise
            // the pipeline, so refuse it.
            let v = String::from_utf8_lossy(h.value);
            if v.trim() != "0" {
                return Err(Status::BadRequest);
            }
        }
    }
    Ok(Some(Request {
        method,
        target,
        keep_alive,
        range,
        if_none_match,
        if_modified_since,
        head_len,
    }))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape or a NUL byte.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            b[i - 1]
        };
        if c == 0 {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// Turns a request target into a path relative to the served root, for
/// `openat2(RESOLVE_BENEATH)` from the root's directory fd: query and
/// fragment dropped, `%XX` decoded, empty and `.` segments skipped. A `..`
/// segment (also when escaped) is refused with 403 before the kernel sees
/// it, a target that is not an absolute path with 400. The root itself is
/// `"."`. No file system access: the kernel refuses whatever would leave the
/// root (an absolute symlink, a symlink through `..`, a magic link).
pub fn request_path(target: &str) -> Result<PathBuf, Status> {
    use std::os::unix::ffi::OsStrExt;
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(Status::BadRequest);
    }
    let decoded = percent_decode(path).ok_or(Status::BadRequest)?;
    let mut rel = PathBuf::new();
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(Status::Forbidden),
            s => rel.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    Ok(rel)
}

/// A strong entity tag for a file version: size, modification time (to the
/// nanosecond) and inode, in hex, quoted.
pub fn etag(size: u64, mtime_sec: i64, mtime_nsec: u32, ino: u64) -> String {
    format!("\"{size:x}-{mtime_sec:x}.{mtime_nsec:x}-{ino:x}\"")
}

/// Whether a GET or HEAD for a file with `etag` and modification second
/// `mtime_sec` gets 304 Not Modified (RFC 9110 13.2.2): `If-None-Match`
/// decides when present (`*` or any listed tag, weak comparison);
/// otherwise `If-Modified-Since`, when it is a valid date no earlier than
/// the modification time. An unparsable date is ignored.
pub fn not_modified(req: &Request, etag: &str, mtime_sec: i64) -> bool {
    if let Some(inm) = &req.if_none_match {
        let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let mine = bare(etag);
        return inm.split(',').any(|t| t.trim() == "*" || bare(t) == mine);
    }
    if let Some(ims) = &req.if_modified_since {
        if let Some(t) = parse_http_date(ims) {
            return mtime_sec <= t;
        }
    }
    false
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve the whole file (no range, or one we do not honour, like several).
    Full,
    /// Serve `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416.
    Unsatisfiable,
}

/// Interprets a single `bytes=` range.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeSpec {
    let Some(h) = header else {
        return RangeSpec::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeSpec::Unsatisfiable,
        (true, false) => match parse(b) {
            Some(0) | None => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeSpec::Unsatisfiable;
            };
            if start >= size {
                return RangeSpec::Unsatisfiable;
            }
            let end = if b.is_empty() {
                size - 1
            } else {
                match parse(b) {
                    Some(e) if e >= start => e.min(size - 1),
                    _ => return RangeSpec::Unsatisfiable,
                }
            };
            RangeSpec::Part { start, end }
        }
    }
}

/// The `Content-Type` for a file name.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html") | Some("htm") => "text/html; charset=utf-8",
        Some("css") => "text/css",
        Some("js") | Some("mjs") => "text/javascript",
        Some("json") => "application/json",
        Some("txt") | Some("md") | Some("rs") | Some("toml") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("pdf") => "application/pdf",
        Some("xml") => "application/xml",
        _ => "application/octet-stream",
    }
}

/// A response head: status line, the given headers, `Content-Length`
/// (left out for 304, which has no body), `Connection`, and the blank line.
pub fn response_head(
    status: Status,
    content_length: u64,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "HTTP/1.1 {} {}\r\n", status.code(), status.reason());
    s.push_str("Server: ringport\r\n");
    for (k, v) in extra {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    if status != Status::NotModified {
        let _ = write!(s, "Content-Length: {content_length}\r\n");
    }
    s.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    s.into_bytes()
}

/// A complete error response with a short text body.
pub fn error_response(status: Status, keep_alive: bool) -> Vec<u8> {
    let body = format!("{} {}\n", status.code(), status.reason());
    let mut out = response_head(
        status,
        body.len() as u64,
        keep_alive,
        &[("Content-Type", "text/plain; charset=utf-8")],
    );
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pipelined_get() {
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n";
        let r = parse_request(two).unwrap().unwrap();
        assert_eq!(
            (r.method, r.target.as_str(), r.keep_alive),
            (Method::Get, "/a", true)
        );
        let r2 = parse_request(&two[r.head_len..]).unwrap().unwrap();
        assert_eq!((r2.method, r2.target.as_str()), (Method::Head, "/b"));
    }

    #[test]
    fn incomplete_then_too_large() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        let long_line = vec![b'a'; MAX_HEAD];
        let mut req = b"GET /".to_vec();
        req.extend_from_slice(&long_line);
        assert_eq!(parse_request(&req), Err(Status::UriTooLong));
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend_from_slice(&long_line);
        assert_eq!(parse_request(&req), Err(Status::HeadersTooLarge));
    }

    #[test]
    fn malformed_is_bad_request() {
        assert_eq!(
            parse_request(b"GET\0/ HTTP/1.1\r\n\r\n"),
            Err(Status::BadRequest)
        );
        assert_eq!(parse_request(b"\x01\x02\r\n\r\n"), Err(Status::BadRequest));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            RangeSpec::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            RangeSpec::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            RangeSpec::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=5-2"), 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeSpec::Full);
        assert_eq!(parse_range(None, 100), RangeSpec::Full);
    }

    #[test]
    fn request_paths_stay_relative() {
        let p = |t: &str| request_path(t).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(p("/sub/a.txt?x=1"), Ok("sub/a.txt".into()));
        assert_eq!(p("/sub/%61.txt"), Ok("sub/a.txt".into()));
        assert_eq!(p("/"), Ok(".".into()));
        assert_eq!(p("//./sub//"), Ok("sub".into()));
        assert_eq!(p("/../etc/passwd"), Err(Status::Forbidden));
        assert_eq!(p("/%2e%2e/%2e%2e/etc/passwd"), Err(Status::Forbidden));
        assert_eq!(p("/sub/%00"), Err(Status::BadRequest));
        assert_eq!(p("http://x/etc/passwd"), Err(Status::BadRequest));
        assert_eq!(
            p("/%2fetc/passwd"),
            Ok("etc/passwd".into()),
            "never absolute"
        );
    }

    #[test]
    fn conditional_requests() {
        let tag = etag(4096, 1_700_000_000, 5, 42);
        let mut r = parse_request(b"GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(!not_modified(&r, &tag, 1_700_000_000));
        r.if_none_match = Some(format!("\"x\", {tag}"));
        assert!(not_modified(&r, &tag, 1_700_000_000));
        r.if_none_match = Some(format!("W/{tag}"));
        assert!(not_modified(&r, &tag, 1_700_000_000));
        r.if_none_match = Some("\"other\"".into());
        r.if_modified_since = Some(http_date(1_800_000_000));
        assert!(
            !not_modified(&r, &tag, 1_700_000_000),
            "If-None-Match decides"
        );
        r.if_none_match = None;
        assert!(not_modified(&r, &tag, 1_700_000_000));
        r.if_modified_since = Some(http_date(1_600_000_000));
        assert!(!not_modified(&r, &tag, 1_700_000_000));
        r.if_modified_since = Some("yesterday".into());
        assert!(!not_modified(&r, &tag, 1_700_000_000));
    }
}
