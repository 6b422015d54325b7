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
    (c.await.unwrap(), s)
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
        writer.await.unwrap();
        echo.await.unwrap();
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
        w.await;
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
