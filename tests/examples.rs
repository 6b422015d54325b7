//! The examples, started as real programs on loopback and driven by real
//! clients (`curl` for the HTTP server, a Rust client for echo), on every
//! backend this machine has. A backend that cannot start is skipped by name,
//! unless `RINGPORT_REQUIRE_BACKENDS` lists it.
//!
//! The example binaries are the ones `cargo test` builds next to this test
//! (`target/<profile>/examples/`); a missing one is built with cargo.

use ringport::Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn backends() -> Vec<Backend> {
    let required = std::env::var("RINGPORT_REQUIRE_BACKENDS").unwrap_or_default();
    Backend::ALL
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

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// A running example, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(example(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start example");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("{name} did not say where it listens: {line:?}"))
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

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

/// `curl -w` of one URL: the status code and the body.
fn get(url: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let mut args = vec!["-o", "-", "-w", "\n%{http_code}", "--path-as-is"];
    args.extend_from_slice(extra);
    args.push(url);
    let (_, out) = curl(&args);
    let at = out.iter().rposition(|&c| c == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&out[at + 1..]).into_owned();
    (code, out[..at].to_vec())
}

fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn www() -> (PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("ringport-www-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("4k.bin"), &data).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>ringport</h1>\n").unwrap();
    std::fs::write(dir.join("sub/a.txt"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
    (dir, data)
}

#[test]
fn http_server_serves_curl_on_every_backend() {
    let (root, data) = www();
    for b in backends() {
        let s = Server::start(
            "http_server",
            &[
                "--addr",
                "127.0.0.1:0",
                "--root",
                root.to_str().unwrap(),
                "--backend",
                b.name(),
                "--idle-secs",
                "1",
            ],
        );
        let base = format!("http://{}", s.addr);
        let (code, body) = get(&format!("{base}/4k.bin"), &[]);
        assert_eq!(
            (code.as_str(), body.as_slice()),
            ("200", data.as_slice()),
            "{b}: GET"
        );
        let (code, body) = get(&format!("{base}/"), &[]);
        assert_eq!(code, "200", "{b}: index");
        assert_eq!(body, b"<h1>ringport</h1>\n");
        // HEAD: the headers, no body.
        let (_, head) = curl(&["-I", &format!("{base}/4k.bin")]);
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{b}: HEAD {head}");
        assert!(head.contains("content-length: 4096"), "{b}: {head}");
        assert!(
            head.contains("content-type: application/octet-stream"),
            "{b}: {head}"
        );
        // Ranges.
        let (code, body) = get(&format!("{base}/4k.bin"), &["-H", "Range: bytes=100-199"]);
        assert_eq!(
            (code.as_str(), body.as_slice()),
            ("206", &data[100..200]),
            "{b}: range"
        );
        let (code, body) = get(&format!("{base}/4k.bin"), &["-H", "Range: bytes=-10"]);
        assert_eq!(
            (code.as_str(), body.as_slice()),
            ("206", &data[4086..]),
            "{b}: suffix range"
        );
        let (code, _) = get(&format!("{base}/4k.bin"), &["-H", "Range: bytes=9999-"]);
        assert_eq!(code, "416", "{b}: unsatisfiable range");
        // Never outside the root.
        for p in [
            "/../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/out/passwd",
            "/sub/../../etc/passwd",
        ] {
            let (code, body) = get(&format!("{base}{p}"), &[]);
            assert!(
                code == "403" || code == "400" || code == "404",
                "{b}: {p} gave {code}"
            );
            assert!(
                !String::from_utf8_lossy(&body).contains("root:"),
                "{b}: {p} leaked a file"
            );
        }
        let (code, _) = get(&format!("{base}/nope"), &[]);
        assert_eq!(code, "404", "{b}");
        let (code, _) = get(&format!("{base}/4k.bin"), &["-X", "POST"]);
        assert_eq!(code, "405", "{b}");
        // Keep-alive: several requests, one connection.
        let (_, out) = curl(&[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}:%{num_connects} ",
            &format!("{base}/4k.bin"),
            &format!("{base}/sub/a.txt"),
            &format!("{base}/"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            "200:1 200:0 200:0",
            "{b}: keep-alive"
        );
        // Pipelining and bad input through a raw socket.
        let two = raw(
            &s.addr,
            b"GET /sub/a.txt HTTP/1.1\r\n\r\nGET /sub/a.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            two.matches("HTTP/1.1 200 OK").count(),
            2,
            "{b}: pipelined: {two}"
        );
        assert_eq!(two.matches("hello\n").count(), 2, "{b}");
        assert!(
            raw(&s.addr, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"),
            "{b}: malformed"
        );
        assert!(
            raw(&s.addr, b"GET /a\0b HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"),
            "{b}: NUL"
        );
        assert!(
            raw(&s.addr, b"GET /\xff\xfe HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 4"),
            "{b}: bad UTF-8"
        );
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(
            raw(&s.addr, &big).starts_with("HTTP/1.1 431"),
            "{b}: 100 KiB header"
        );
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 20 * 1024));
        assert!(
            raw(&s.addr, &long).starts_with("HTTP/1.1 414"),
            "{b}: long request line"
        );
        // A slow client (slowloris) is cut off after the head deadline.
        let mut slow = TcpStream::connect(&s.addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        let _ = slow.read_to_end(&mut out);
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{b}: slow client not cut off"
        );
        assert!(
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
            "{b}: slowloris"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn echo_server_echoes_on_every_backend() {
    for b in backends() {
        let s = Server::start(
            "echo_server",
            &[
                "--addr",
                "127.0.0.1:0",
                "--backend",
                b.name(),
                "--threads",
                "2",
            ],
        );
        let mut clients: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(&s.addr).unwrap())
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg: Vec<u8> = (0..(i * 997 + 1)).map(|k| (k + i) as u8).collect();
            c.write_all(&msg).unwrap();
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg, "{b}: client {i}");
        }
        // Half-close: the rest is echoed, then the server closes its side.
        let c = &mut clients[0];
        c.write_all(b"last words").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"last words", "{b}: half-close");
    }
}

#[test]
fn cp_copies_64_mib_exactly_on_every_backend() {
    let dir = std::env::temp_dir();
    let src = dir.join(format!("ringport-cp-src-{}", std::process::id()));
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    for b in backends() {
        let dst = dir.join(format!(
            "ringport-cp-dst-{}-{}",
            std::process::id(),
            b.name()
        ));
        let out = Command::new(example("cp"))
            .args([
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
                "--backend",
                b.name(),
                "--depth",
                "16",
                "--block",
                "128K",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{b}: cp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("MiB/s"),
            "{b}: no report"
        );
        let copied = std::fs::read(&dst).unwrap();
        assert!(copied == data, "{b}: the copy differs");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dst).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640, "{b}: mode kept");
        std::fs::remove_file(&dst).unwrap();
    }
    std::fs::remove_file(&src).unwrap();
}
