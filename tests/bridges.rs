//! The ecosystem bridges (feature `full`): tokio and futures-io traits over
//! ringport streams on every backend, hyper, and TLS.
//!
//! Every case runs on each backend; a backend that cannot start here is
//! skipped by name, or fails when `RINGPORT_REQUIRE_BACKENDS` lists it.

use futures_util::{SinkExt, StreamExt};
use ringport::{Backend, Runtime, TcpListener, TcpStream};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

/// Whether `b` can run here (see the module doc).
fn available(b: Backend, case: &str) -> bool {
    match ringport::driver(b) {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("RINGPORT_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|r| r.trim() == b.name()) {
                panic!("backend {b} is required but cannot run: {e}");
            }
            eprintln!("SKIPPED {b}::{case}: backend unavailable: {e}");
            false
        }
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A connected pair: (client, server side).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    let c = ringport::spawn(TcpStream::connect(addr));
    let (s, _) = l.accept().await.unwrap();
    (c.await.unwrap().unwrap(), s)
}

/// How many lines the codec cases echo (`RINGPORT_BRIDGE_LINES`, default 1,000,000).
fn line_count() -> usize {
    std::env::var("RINGPORT_BRIDGE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn line(i: usize) -> String {
    format!("line {i} of the bridge test")
}

/// Echoes `n` lines through `Framed*<_, LinesCodec>` over split halves (the
/// writer and the echo server are tasks of their own) and checks each line
/// comes back once, in order. With `timeouts`, every read is wrapped in a
/// 1 ms timeout and the writer pauses now and then, so timeouts fire while
/// a read is in flight; returns how many fired.
fn lines_echo(b: Backend, n: usize, timeouts: bool) -> usize {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async move {
        let (client, server) = tcp_pair().await;
        let echo = ringport::spawn(async move {
            let (r, w) = server.into_split();
            FramedRead::new(r, LinesCodec::new())
                .forward(FramedWrite::new(w, LinesCodec::new()))
                .await
        });
        let (r, w) = client.into_split();
        let writer = ringport::spawn(async move {
            let mut sink = FramedWrite::new(w, LinesCodec::new());
            for i in 0..n {
                sink.feed(line(i)).await?;
                if i % 1000 == 999 {
                    SinkExt::<String>::flush(&mut sink).await?;
                }
                if timeouts && i % (n / 8).max(1) == 0 {
                    SinkExt::<String>::flush(&mut sink).await?;
                    ringport::sleep(Duration::from_millis(5)).await?;
                }
            }
            SinkExt::<String>::close(&mut sink).await
        });
        let mut lines = FramedRead::new(r, LinesCodec::new());
        let mut fired = 0;
        for i in 0..=n {
            let got = if timeouts {
                loop {
                    match ringport::timeout(Duration::from_millis(1), lines.next()).await {
                        Ok(v) => break v,
                        Err(_) => fired += 1,
                    }
                }
            } else {
                lines.next().await
            };
            if i == n {
                assert!(got.is_none(), "a line after the last one: {got:?}");
            } else {
                assert_eq!(got.unwrap().unwrap(), line(i), "line {i}");
            }
        }
        writer.await.unwrap().unwrap();
        echo.await.unwrap().unwrap();
        fired
    })
}

/// A read polled once, then left alone while its bytes arrive, then dropped
/// unpolled, keeps its op: the adapter received those bytes into its own
/// buffer and the next read lends them out, none lost. (An adapter whose op
/// lives in the read future, as tokio-uring's hyper adapter had, loses them.)
fn abandoned_read_loses_nothing(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tcp_pair().await;
        let mut buf = [0u8; 64];
        {
            let mut first = pin!(AsyncReadExt::read(&mut server, &mut buf));
            let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "nothing was sent yet: {polled:?}");
            // Something else: the bytes arrive and the op completes meanwhile.
            AsyncWriteExt::write_all(&mut client, b"hello, bridge")
                .await
                .unwrap();
            ringport::sleep(Duration::from_millis(20)).await.unwrap();
        } // the read future is dropped here without another poll
        let mut got = [0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, bridge");
    });
}

/// futures-io's `AsyncReadExt`/`AsyncWriteExt` move bytes both ways, a
/// vectored write arrives whole, and close (shutdown for writing) is the
/// peer's end of stream; the same over a pipe.
fn futures_io_round_trip(b: Backend) {
    use futures_util::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tcp_pair().await;
        AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let parts = [std::io::IoSlice::new(b"po"), std::io::IoSlice::new(b"ng")];
        let n = server.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 4);
        AsyncWriteExt::close(&mut server).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"pong");

        let (mut rd, mut wr) = ringport::pipe().unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let expect = payload.clone();
        let w = ringport::spawn(async move {
            AsyncWriteExt::write_all(&mut wr, &payload).await.unwrap();
            // dropping the writer closes the pipe: the reader's end of stream
        });
        let mut all = Vec::new();
        rd.read_to_end(&mut all).await.unwrap();
        w.await.unwrap();
        assert_eq!(all, expect);
    });
}

/// tokio's `shutdown` ends the write direction: the peer reads to the end.
fn tokio_shutdown_is_end_of_stream(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tcp_pair().await;
        AsyncWriteExt::write_all(&mut client, b"last words")
            .await
            .unwrap();
        AsyncWriteExt::shutdown(&mut client).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    });
}

/// The self-signed identity the TLS cases share, and a client trusting it.
fn tls_pair() -> (ringport::tls::TlsAcceptor, ringport::tls::TlsConnector) {
    use ringport::tls;
    let id = tls::self_signed(&["localhost"]).unwrap();
    let roots = id.certs.clone();
    let acceptor = tls::TlsAcceptor::from(tls::server_config(id, &tls::HTTP_ALPN).unwrap());
    let connector = tls::TlsConnector::from(tls::client_config(&roots, &[b"h2"]).unwrap());
    (acceptor, connector)
}

/// A TLS echo server task: each connection gets `deadline` for its
/// handshake, then echoes until end of stream. Returns its address and a
/// count of handshakes that failed.
fn tls_echo_server(
    acceptor: ringport::tls::TlsAcceptor,
    deadline: Duration,
) -> (SocketAddr, std::rc::Rc<std::cell::Cell<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    let failed = std::rc::Rc::new(std::cell::Cell::new(0));
    let f = failed.clone();
    ringport::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (acceptor, f) = (acceptor.clone(), f.clone());
            ringport::spawn(async move {
                match ringport::tls::accept(&acceptor, s, deadline).await {
                    Ok(mut t) => {
                        let mut buf = [0u8; 1024];
                        while let Ok(n @ 1..) = t.read(&mut buf).await {
                            if t.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = t.shutdown().await;
                    }
                    Err(_) => f.set(f.get() + 1),
                }
            });
        }
    });
    (addr, failed)
}

/// One TLS client: handshake, echo `msg` through the tokio traits and again
/// through futures-io's, check both, close. Returns the ALPN
/// protocol the server chose.
async fn tls_client_echo(
    connector: &ringport::tls::TlsConnector,
    addr: SocketAddr,
    msg: &[u8],
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TcpStream::connect(addr).await.unwrap();
    let name = ringport::tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut t = connector.connect(name, s).await.unwrap();
    t.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(got, msg);
    let alpn = t.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    // The same stream through futures-io's traits.
    let mut f = ringport::tls::compat(t);
    futures_util::io::AsyncWriteExt::write_all(&mut f, msg)
        .await
        .unwrap();
    futures_util::io::AsyncReadExt::read_exact(&mut f, &mut got)
        .await
        .unwrap();
    assert_eq!(got, msg);
    futures_util::io::AsyncWriteExt::close(&mut f)
        .await
        .unwrap();
    alpn
}

/// How many TLS handshakes in a row (`RINGPORT_BRIDGE_HANDSHAKES`, default 1,000).
fn handshake_count() -> usize {
    std::env::var("RINGPORT_BRIDGE_HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Handshakes in a row with a rustls client all succeed, each echoing a
/// message, and ALPN picks h2.
fn tls_handshakes_in_a_row(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (acceptor, connector) = tls_pair();
        let (addr, failed) = tls_echo_server(acceptor, Duration::from_secs(5));
        for i in 0..handshake_count() {
            let msg = format!("handshake {i}");
            let alpn = tls_client_echo(&connector, addr, msg.as_bytes()).await;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "handshake {i}");
        }
        assert_eq!(failed.get(), 0, "server-side handshakes failed");
    });
}

/// A client sending garbage instead of a ClientHello is disconnected at
/// once; one that stalls mid-handshake is cut off at the deadline; a fresh
/// client is served while the stalled one waits.
fn tls_garbage_and_stall_are_cut_off(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (acceptor, connector) = tls_pair();
        let deadline = Duration::from_millis(300);
        let (addr, failed) = tls_echo_server(acceptor, deadline);

        let mut garbage = TcpStream::connect(addr).await.unwrap();
        AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let closed = ringport::timeout(
            Duration::from_secs(5),
            AsyncReadExt::read_to_end(&mut garbage, &mut sink),
        )
        .await;
        assert!(closed.is_ok(), "the garbage client was not disconnected");

        // Stalled: a TLS record header promising a ClientHello that never comes.
        let started = std::time::Instant::now();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        let alpn = tls_client_echo(&connector, addr, b"fresh client").await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert!(
            started.elapsed() < deadline,
            "the fresh client had to wait for the stalled one"
        );
        let mut sink = Vec::new();
        let cut = ringport::timeout(
            Duration::from_secs(5),
            AsyncReadExt::read_to_end(&mut stalled, &mut sink),
        )
        .await;
        assert!(cut.is_ok(), "the stalled client was not cut off");
        assert!(started.elapsed() >= deadline, "cut off before the deadline");
        assert_eq!(
            failed.get(),
            2,
            "garbage and stall both count as failed handshakes"
        );
    });
}

macro_rules! on_every_backend {
    ($($name:ident => $b:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn framed_lines_echo_byte_exact() {
                if available($b, "framed_lines_echo_byte_exact") {
                    lines_echo($b, line_count(), false);
                }
            }

            #[test]
            fn framed_lines_echo_with_read_timeouts() {
                if available($b, "framed_lines_echo_with_read_timeouts") {
                    let fired = lines_echo($b, line_count(), true);
                    assert!(fired > 0, "no 1 ms timeout fired mid-read");
                }
            }

            #[test]
            fn abandoned_read_loses_nothing() {
                if available($b, "abandoned_read_loses_nothing") {
                    super::abandoned_read_loses_nothing($b);
                }
            }

            #[test]
            fn futures_io_round_trip() {
                if available($b, "futures_io_round_trip") {
                    super::futures_io_round_trip($b);
                }
            }

            #[test]
            fn tls_handshakes_in_a_row() {
                if available($b, "tls_handshakes_in_a_row") {
                    super::tls_handshakes_in_a_row($b);
                }
            }

            #[test]
            fn tls_garbage_and_stall_are_cut_off() {
                if available($b, "tls_garbage_and_stall_are_cut_off") {
                    super::tls_garbage_and_stall_are_cut_off($b);
                }
            }

            #[test]
            fn unix_stream_tokio_echo() {
                if available($b, "unix_stream_tokio_echo") {
                    super::unix_stream_tokio_echo($b);
                }
            }

            #[test]
            fn abandoned_write_goes_out_once() {
                if available($b, "abandoned_write_goes_out_once") {
                    super::abandoned_write_goes_out_once($b);
                }
            }

            #[test]
            fn tokio_shutdown_is_end_of_stream() {
                if available($b, "tokio_shutdown_is_end_of_stream") {
                    super::tokio_shutdown_is_end_of_stream($b);
                }
            }
        }
    )*};
}

on_every_backend!(
    uring => Backend::Uring,
    aio => Backend::Aio,
    epoll => Backend::Epoll,
    poll => Backend::Poll,
    select => Backend::Select,
    sigio => Backend::Sigio,
);

/// An example binary next to this test (built with `--features full` if missing).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--features", "full", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// A running example server, killed when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(name: &str, args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(example(name))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start example");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
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

/// curl's `http_code size_download http_version` for `url`, and the body.
fn curl(extra: &[&str], url: &str) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    let at = out.stdout.iter().rposition(|&c| c == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&out.stdout[at + 1..]).into_owned();
    (tail, out.stdout[..at].to_vec())
}

const BODY_LEN: usize = 4096;

/// `curl --http1.1` and `curl --http2-prior-knowledge` get `/`'s 4 KiB body
/// and a file under `--root` from hyper_server, on every backend.
#[test]
fn hyper_server_answers_curl_http1_and_http2() {
    let root = std::env::temp_dir().join(format!("ringport-bridges-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from a file\n").unwrap();
    for b in Backend::ALL {
        if !available(b, "hyper_server_answers_curl_http1_and_http2") {
            continue;
        }
        let root_arg = root.to_str().unwrap();
        let srv = Server::start(
            "hyper_server",
            &[
                "--addr",
                "127.0.0.1:0",
                "--backend",
                b.name(),
                "--root",
                root_arg,
            ],
        );
        let url = format!("http://{}/", srv.addr);
        let (tail, body) = curl(&["--http1.1"], &url);
        assert_eq!(
            (tail.as_str(), body.len()),
            ("200 1.1", BODY_LEN),
            "{b} http/1.1"
        );
        let (tail, body) = curl(&["--http2-prior-knowledge"], &url);
        assert_eq!((tail.as_str(), body.len()), ("200 2", BODY_LEN), "{b} h2");
        let (tail, body) = curl(
            &["--http2-prior-knowledge"],
            &format!("{url}file/hello.txt"),
        );
        assert_eq!(
            (tail.as_str(), &body[..]),
            ("200 2", &b"hello from a file\n"[..]),
            "{b} file"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// With `--tls` (a self-signed certificate), `curl -k --http2` gets the body
/// over h2 (ALPN) and `curl -k --http1.1` over HTTP/1.1, on every backend.
#[test]
fn hyper_server_tls_answers_curl() {
    for b in Backend::ALL {
        if !available(b, "hyper_server_tls_answers_curl") {
            continue;
        }
        let srv = Server::start(
            "hyper_server",
            &["--addr", "127.0.0.1:0", "--tls", "--backend", b.name()],
        );
        let url = format!("https://{}/", srv.addr);
        let (tail, body) = curl(&["-k", "--http2"], &url);
        assert_eq!((tail.as_str(), body.len()), ("200 2", BODY_LEN), "{b} h2");
        let (tail, body) = curl(&["-k", "--http1.1"], &url);
        assert_eq!(
            (tail.as_str(), body.len()),
            ("200 1.1", BODY_LEN),
            "{b} http/1.1"
        );
    }
}

/// `--tls-cert FILE --tls-key FILE` serves the given certificate: one made
/// by the openssl command line, which curl then trusts by `--cacert`.
#[test]
fn hyper_server_tls_from_pem_files() {
    let dir = std::env::temp_dir().join(format!("ringport-bridges-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let srv = Server::start(
        "hyper_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://{}/", srv.addr);
    let (tail, body) = curl(&["--cacert", cert.to_str().unwrap(), "--http2"], &url);
    assert_eq!((tail.as_str(), body.len()), ("200 2", BODY_LEN));
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// hyper_client fetches `/` from a local hyper_server, over HTTP/1.1 and
/// HTTP/2, and prints the status and the body's length.
#[test]
fn hyper_client_fetches_from_local_server() {
    let srv = Server::start("hyper_server", &["--addr", "127.0.0.1:0"]);
    let url = format!("http://{}/", srv.addr);
    for extra in [&[][..], &["--http2"][..]] {
        let out = std::process::Command::new(example("hyper_client"))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{extra:?}: {text}");
        assert!(text.contains(" 200 OK"), "{extra:?}: {text}");
        assert!(text.contains("content-length: 4096"), "{extra:?}: {text}");
        assert!(text.contains("body: 4096 bytes"), "{extra:?}: {text}");
    }
}

/// hyper's header limits hold on ringport: a request head of 1 MiB gets
/// 431 (or a closed connection), never a 200, and the server goes on
/// serving others.
#[test]
fn hyper_server_header_limit_holds() {
    use std::io::{Read, Write};
    let srv = Server::start("hyper_server", &["--addr", "127.0.0.1:0"]);
    let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.resize(req.len() + (1 << 20), b'a');
    req.extend_from_slice(b"\r\n\r\n");
    let _ = s.write_all(&req); // the server may close before it has read it all
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
    assert!(
        out.is_empty() || head.starts_with("HTTP/1.1 431"),
        "answer to a 1 MiB head: {head:?}"
    );
    let (tail, body) = curl(&["--http1.1"], &format!("http://{}/", srv.addr));
    assert_eq!((tail.as_str(), body.len()), ("200 1.1", BODY_LEN));
}

/// examples/tls_echo echoes through a rustls client.
#[test]
fn tls_echo_example_echoes() {
    let srv = Server::start("tls_echo", &["--addr", "127.0.0.1:0"]);
    let addr: SocketAddr = srv.addr.parse().unwrap();
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        use ringport::tls;
        // The example's certificate is its own: trust it for this test only.
        let cfg = tls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            tls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
        let connector = tls::TlsConnector::from(std::sync::Arc::new(cfg));
        tls_client_echo(&connector, addr, b"echo through tls_echo").await;
    });
}

/// A verifier that accepts any certificate (the example's self-signed one).
#[derive(Debug)]
struct AcceptAny;

impl ringport::tls::rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &ringport::tls::rustls::pki_types::CertificateDer<'_>,
        _: &[ringport::tls::rustls::pki_types::CertificateDer<'_>],
        _: &ringport::tls::rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: ringport::tls::rustls::pki_types::UnixTime,
    ) -> Result<
        ringport::tls::rustls::client::danger::ServerCertVerified,
        ringport::tls::rustls::Error,
    > {
        Ok(ringport::tls::rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &ringport::tls::rustls::pki_types::CertificateDer<'_>,
        _: &ringport::tls::rustls::DigitallySignedStruct,
    ) -> Result<
        ringport::tls::rustls::client::danger::HandshakeSignatureValid,
        ringport::tls::rustls::Error,
    > {
        Ok(ringport::tls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &ringport::tls::rustls::pki_types::CertificateDer<'_>,
        _: &ringport::tls::rustls::DigitallySignedStruct,
    ) -> Result<
        ringport::tls::rustls::client::danger::HandshakeSignatureValid,
        ringport::tls::rustls::Error,
    > {
        Ok(ringport::tls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<ringport::tls::rustls::SignatureScheme> {
        ringport::tls::rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio traits over a Unix-domain stream pair, split halves on both ends.
fn unix_stream_tokio_echo(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = std::env::temp_dir().join(format!(
        "ringport-bridges-{}-{}.sock",
        std::process::id(),
        b.name()
    ));
    let _ = std::fs::remove_file(&path);
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let l = ringport::UnixListener::bind(&path).unwrap();
        let p = path.clone();
        let client = ringport::spawn(async move { ringport::UnixStream::connect(p).await });
        let server = l.accept().await.unwrap();
        let client = client.await.unwrap().unwrap();
        let (mut sr, mut sw) = server.into_split();
        let echo = ringport::spawn(async move {
            let mut buf = [0u8; 1000];
            loop {
                match sr.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => sw.write_all(&buf[..n]).await.unwrap(),
                }
            }
            sw.shutdown().await.unwrap();
        });
        let (mut cr, mut cw) = client.into_split();
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let to_send = msg.clone();
        let writer = ringport::spawn(async move {
            cw.write_all(&to_send).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        echo.await.unwrap();
        assert_eq!(got, msg);
    });
    let _ = std::fs::remove_file(&path);
}

/// A write abandoned mid-flight (a timeout around `write_all` while the peer
/// does not read) still goes out whole, once: `flush` waits for it, and the
/// peer receives exactly those bytes followed by the next write's.
fn abandoned_write_goes_out_once(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tcp_pair().await;
        let big = vec![7u8; 8 << 20]; // more than the socket buffers hold
        let r = ringport::timeout(
            Duration::from_millis(20),
            AsyncWriteExt::write_all(&mut client, &big),
        )
        .await;
        assert!(
            r.is_err(),
            "8 MiB fit in the socket buffers; nothing was abandoned"
        );
        let reader = ringport::spawn(async move {
            let mut all = Vec::new();
            AsyncReadExt::read_to_end(&mut server, &mut all)
                .await
                .unwrap();
            all
        });
        AsyncWriteExt::flush(&mut client).await.unwrap();
        AsyncWriteExt::write_all(&mut client, b"tail")
            .await
            .unwrap();
        AsyncWriteExt::shutdown(&mut client).await.unwrap();
        let all = reader.await.unwrap();
        assert!(all.len() >= 4 && all.ends_with(b"tail"), "no tail");
        let head = &all[..all.len() - 4];
        // write_all's one poll_write took all 8 MiB as one send; the timeout
        // abandoned it; it went out whole and once.
        assert_eq!(head.len(), big.len(), "bytes lost or repeated");
        assert!(head.iter().all(|&c| c == 7));
    });
}
