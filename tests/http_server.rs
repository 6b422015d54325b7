//! The static file server (`examples/http_server`) against its resource and
//! safety promises, on io_uring and on the epoll shim: conditional requests
//! (304), the write deadline for a client that stops reading, many such
//! clients not starving a fresh one, a path component swapped between a
//! directory and a symlink to `/` never leaking a byte from outside the
//! root, a FIFO answered with 403 at once, and the open-file cache seeing a
//! file rewritten in place within `--cache-ms`.
//!
//! The example is built with cargo once per test run (so the binary is
//! never stale), then started as a real program on loopback; the clients
//! are plain `std::net` HTTP/1.1 clients and curl.

use ringport::Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn backends() -> Vec<Backend> {
    let required = std::env::var("RINGPORT_REQUIRE_BACKENDS").unwrap_or_default();
    [Backend::Uring, Backend::Epoll]
        .into_iter()
        .filter(|b| match ringport::driver(*b) {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    !required.split(',').any(|r| r.trim() == b.name()),
                    "backend {b} is required but cannot run: {e}"
                );
                eprintln!("SKIPPED {b}: {e}");
                false
            }
        })
        .collect()
}

/// The example binary, built by cargo the first time a test asks (cargo
/// does nothing if it is up to date, and rebuilds it if it is not).
fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/<test>
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", "http_server", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example http_server failed");
        let path = profile_dir.join("examples/http_server");
        assert!(path.exists(), "{} not found", path.display());
        path
    })
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(root: &Path, backend: Backend, extra: &[&str]) -> Server {
        let mut child = Command::new(server_binary())
            .args(["--addr", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(["--backend", backend.name()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start http_server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("http_server did not say where it listens: {line:?}"))
            .to_string();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, head (lower-cased names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s),
        }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        Response {
            status,
            headers,
            body,
        }
    }
}

/// A fresh served root (mode 0755) with a few files.
fn www(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringport-hs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small.txt"), b"small file\n").unwrap();
    dir
}

fn curl_code(url: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn not_modified_for_a_matching_etag_and_an_unmodified_date() {
    let root = www("304");
    for b in backends() {
        let s = Server::start(&root, b, &[]);
        let mut c = Client::connect(&s.addr);
        let first = c.get("/small.txt", &[]);
        assert_eq!(first.status, 200, "{b}");
        assert_eq!(first.body, b"small file\n", "{b}");
        assert!(first.header("date").is_some(), "{b}: no Date");
        let tag = first.header("etag").expect("ETag").to_string();
        let lm = first
            .header("last-modified")
            .expect("Last-Modified")
            .to_string();
        let r = c.get("/small.txt", &[("If-None-Match", &tag)]);
        assert_eq!((r.status, r.body.len()), (304, 0), "{b}: If-None-Match");
        assert_eq!(r.header("etag"), Some(tag.as_str()), "{b}");
        let r = c.get("/small.txt", &[("If-Modified-Since", &lm)]);
        assert_eq!((r.status, r.body.len()), (304, 0), "{b}: If-Modified-Since");
        // Not a match: the body again.
        let r = c.get("/small.txt", &[("If-None-Match", "\"other\"")]);
        assert_eq!(r.status, 200, "{b}: other tag");
        let r = c.get(
            "/small.txt",
            &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        );
        assert_eq!((r.status, r.body.len()), (200, 11), "{b}: old date");
        // curl agrees (its own parsing of a 304 without a body).
        let url = format!("http://{}/small.txt", s.addr);
        assert_eq!(
            curl_code(&url, &["-H", &format!("If-None-Match: {tag}")]),
            "304"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

const BIG: usize = 64 << 20;

fn big_root(name: &str) -> PathBuf {
    let root = www(name);
    let f = std::fs::File::create(root.join("big.bin")).unwrap();
    f.set_len(BIG as u64).unwrap();
    root
}

/// Connects, asks for the 64 MiB body and reads one byte of it; a small
/// receive buffer (`small`) keeps a thousand of these cheap.
fn stalled_client(addr: &str, small: bool) -> TcpStream {
    use std::os::fd::AsRawFd;
    let s = TcpStream::connect(addr).unwrap();
    let size: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    if small {
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut one = [0u8; 1];
    (&s).read_exact(&mut one).unwrap();
    s
}

/// How many sockets process `pid` has open.
fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_idle_secs() {
    let root = big_root("stall");
    for b in backends() {
        let s = Server::start(&root, b, &["--idle-secs", "1"]);
        let t0 = Instant::now();
        let mut c = stalled_client(&s.addr, false);
        // The server's own view: its socket fds (the listener and ours)
        // until it lets go of ours. Nothing more is read meanwhile.
        let pid = s.child.id();
        assert_eq!(socket_fds(pid), 2, "{b}: listener and the stalled client");
        let cut = loop {
            if socket_fds(pid) == 1 {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{b}: still connected after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("{b}: cut off after {cut:?} (--idle-secs 1)");
        assert!(
            cut <= Duration::from_secs(2),
            "{b}: cut off after {cut:?}, more than --idle-secs + 1"
        );
        // The client's view: what the server had buffered arrives, then the
        // end, well short of the whole body.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(e) => panic!("{b}: {e} after {got} bytes"),
            }
        };
        assert!(ended, "{b}");
        assert!(
            got + 1 < BIG,
            "{b}: the whole body arrived after the server let go"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_thousand_stalled_clients_do_not_stop_a_fresh_one() {
    let root = big_root("many");
    for b in backends() {
        let s = Server::start(&root, b, &["--idle-secs", "30"]);
        let stalled: Vec<TcpStream> = (0..1000).map(|_| stalled_client(&s.addr, true)).collect();
        let t0 = Instant::now();
        let mut c = Client::connect(&s.addr);
        let r = c.get("/small.txt", &[]);
        let took = t0.elapsed();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"small file\n"[..]),
            "{b}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{b}: a fresh client waited {took:?} behind 1,000 stalled ones"
        );
        drop(stalled);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_component_swapped_with_a_symlink_to_root_never_leaks() {
    use std::os::unix::ffi::OsStrExt;
    let root = www("swap");
    // "sw" is a directory with an etc/passwd of our own; "alt" a symlink
    // to "/". A thread exchanges the two names atomically, over and over.
    std::fs::create_dir_all(root.join("sw/etc")).unwrap();
    std::fs::write(root.join("sw/etc/passwd"), b"INSIDE\n").unwrap();
    std::os::unix::fs::symlink("/", root.join("alt")).unwrap();
    assert!(std::fs::read("/etc/passwd").unwrap().starts_with(b"root:"));
    for b in backends() {
        let s = Server::start(&root, b, &["--cache-ms", "0"]);
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let a = std::ffi::CString::new(root.join("sw").as_os_str().as_bytes()).unwrap();
            let z = std::ffi::CString::new(root.join("alt").as_os_str().as_bytes()).unwrap();
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: two valid NUL-terminated paths.
                    let r = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            z.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
                    swaps += 1;
                }
                swaps
            })
        };
        let mut c = Client::connect(&s.addr);
        let (mut inside, mut refused) = (0, 0);
        for i in 0..10_000 {
            let r = c.get("/sw/etc/passwd", &[]);
            assert!(
                !r.body.windows(5).any(|w| w == b"root:"),
                "{b}: request {i} returned /etc/passwd from outside the root"
            );
            match r.status {
                200 => {
                    assert_eq!(r.body, b"INSIDE\n", "{b}");
                    inside += 1;
                }
                403 | 404 => refused += 1,
                other => panic!("{b}: status {other}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        // An even number of exchanges leaves "sw" the directory again.
        if swaps % 2 == 1 {
            let a = root.join("sw");
            let z = root.join("alt");
            let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
            let z = std::ffi::CString::new(z.as_os_str().as_bytes()).unwrap();
            // SAFETY: two valid NUL-terminated paths.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    z.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            assert_eq!(r, 0);
        }
        eprintln!("{b}: {inside} served inside, {refused} refused, {swaps} swaps");
        assert!(
            inside > 0 && refused > 0,
            "{b}: the race was not exercised ({inside} inside, {refused} refused)"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_fifo_under_the_root_gets_403_at_once() {
    let root = www("fifo");
    let fifo = std::ffi::CString::new(root.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    for b in backends() {
        // One thread: a FIFO that blocked the server would block everything.
        let s = Server::start(&root, b, &[]);
        let mut c = Client::connect(&s.addr);
        for _ in 0..20 {
            let t0 = Instant::now();
            let r = c.get("/pipe", &[]);
            assert_eq!(r.status, 403, "{b}");
            assert!(
                t0.elapsed() < Duration::from_millis(500),
                "{b}: the FIFO took {:?}",
                t0.elapsed()
            );
        }
        let r = Client::connect(&s.addr).get("/small.txt", &[]);
        assert_eq!(r.status, 200, "{b}: still serving after the FIFO");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_cache_sees_a_file_rewritten_in_place_within_cache_ms() {
    use std::os::unix::fs::FileExt;
    let root = www("cache");
    let path = root.join("c.txt");
    std::fs::write(&path, b"AAAA").unwrap();
    const CACHE_MS: u64 = 300;
    for b in backends() {
        std::fs::write(&path, b"AAAA").unwrap();
        let s = Server::start(&root, b, &["--cache-ms", &CACHE_MS.to_string()]);
        let mut c = Client::connect(&s.addr);
        let first = c.get("/c.txt", &[]);
        assert_eq!(first.body, b"AAAA", "{b}");
        let old_tag = first.header("etag").unwrap().to_string();
        // In place: same inode, longer, no truncation.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"BBBBBBBB", 0).unwrap();
        drop(f);
        let t0 = Instant::now();
        let seen = loop {
            let r = c.get("/c.txt", &[]);
            if r.body == b"BBBBBBBB" && r.header("etag") != Some(old_tag.as_str()) {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{b}: the rewrite never showed"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // The cache may trust an entry for CACHE_MS; allow a little for
        // the request itself on a busy machine.
        assert!(
            seen <= Duration::from_millis(CACHE_MS + 100),
            "{b}: the rewrite showed after {seen:?}, --cache-ms {CACHE_MS}"
        );
        eprintln!("{b}: the rewrite showed after {seen:?}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn beyond_max_conns_a_new_connection_is_closed_at_once() {
    let root = www("maxconns");
    for b in backends() {
        let s = Server::start(&root, b, &["--max-conns", "2"]);
        let mut a = Client::connect(&s.addr);
        let mut c = Client::connect(&s.addr);
        assert_eq!(a.get("/small.txt", &[]).status, 200, "{b}");
        assert_eq!(c.get("/small.txt", &[]).status, 200, "{b}");
        // The third: closed without an answer.
        let mut third = TcpStream::connect(&s.addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let t0 = Instant::now();
        let _ = third.write_all(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut out = Vec::new();
        match third.read_to_end(&mut out) {
            Ok(_) => assert!(out.is_empty(), "{b}: the third got an answer"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{b}: {e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{b}: not at once");
        // A place comes free when a connection ends.
        drop(a);
        let t0 = Instant::now();
        loop {
            let mut s2 = TcpStream::connect(&s.addr).unwrap();
            s2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s2.write_all(b"GET /small.txt HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut out = Vec::new();
            let _ = s2.read_to_end(&mut out);
            if out.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{b}: no place came free"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            c.get("/small.txt", &[]).status,
            200,
            "{b}: the second still served"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_access_log_gets_a_line_per_request() {
    let root = www("log");
    for b in backends() {
        let log = root.join(format!("access-{}.log", b.name()));
        let s = Server::start(&root, b, &["--access-log", log.to_str().unwrap()]);
        let mut c = Client::connect(&s.addr);
        assert_eq!(c.get("/small.txt", &[]).status, 200);
        assert_eq!(c.get("/nope", &[]).status, 404);
        assert_eq!(c.get("/small.txt?q=1", &[]).status, 200);
        // Buffered: written out within a second or so.
        let t0 = Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 3 || t0.elapsed() > Duration::from_secs(3) {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{b}: {text}");
        assert!(
            lines[0].contains("\"GET /small.txt\" 200 11"),
            "{b}: {}",
            lines[0]
        );
        assert!(
            lines[1].contains("\"GET /nope\" 404 0"),
            "{b}: {}",
            lines[1]
        );
        assert!(
            lines[2].contains("\"GET /small.txt?q=1\" 200 11"),
            "{b}: {}",
            lines[2]
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
