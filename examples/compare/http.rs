//! `http-hello`: hyper 1.x serving a fixed 4 KiB body over HTTP/1.1
//! keep-alive, on ringport (its hyper bridge: `hyper::rt::Read`/`Write` for
//! `ringport::TcpStream`, `RingportTimer`) with a chosen backend, and on
//! tokio current_thread (hyper-util's `TokioIo`, `TokioTimer`) as the
//! baseline. The same load clients as echo drive it (their HTTP mode: one
//! `GET /` in flight per connection, each response checked for status 200
//! and a 4,096-byte body); the server runs on the pinned server thread.

use crate::net::{transient, ServeFn, ServerCtx};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::time::Duration;

/// The body every request gets.
pub const BODY_LEN: usize = 4096;
static BODY: [u8; BODY_LEN] = [b'x'; BODY_LEN];

/// The request every connection sends, again and again.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Room for one response (headers and the body).
pub const RESPONSE_ROOM: usize = BODY_LEN + 1024;

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(&BODY))))
}

/// How far a response has come.
pub enum Reply {
    /// Not whole yet.
    More,
    /// A whole response: status 200, a `BODY_LEN`-byte body, nothing after.
    Done,
    /// Anything else, and why.
    Bad(String),
}

/// Checks the bytes of one response received so far.
pub fn reply(got: &[u8]) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(got) {
        Ok(httparse::Status::Partial) => {
            return if got.len() >= RESPONSE_ROOM {
                Reply::Bad("response headers longer than 1 KiB".into())
            } else {
                Reply::More
            }
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return Reply::Bad(format!("not an HTTP response: {e}")),
    };
    if r.code != Some(200) {
        return Reply::Bad(format!("status {:?}, not 200", r.code));
    }
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    match len {
        Some(BODY_LEN) => {}
        Some(n) => return Reply::Bad(format!("a body of {n} bytes, not {BODY_LEN}")),
        None => return Reply::Bad("no content-length".into()),
    }
    let total = head + BODY_LEN;
    match got.len() {
        n if n < total => Reply::More,
        n if n == total => Reply::Done,
        _ => Reply::Bad("more bytes than one response".into()),
    }
}

/// One request on a fresh blocking connection, before any timing: the
/// server must answer 200 with the whole body, or the row fails with why.
pub fn validate(addr: SocketAddrV4) -> io::Result<()> {
    let bad = |what: String| io::Error::other(format!("http-hello: the server's answer: {what}"));
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(REQUEST)?;
    let mut buf = vec![0u8; RESPONSE_ROOM];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            return Err(bad("the connection closed mid-response".into()));
        }
        got += n;
        match reply(&buf[..got]) {
            Reply::More => {}
            Reply::Done => break,
            Reply::Bad(why) => return Err(bad(why)),
        }
    }
    // Keep-alive: a second request on the same connection is answered too.
    s.write_all(REQUEST)?;
    got = 0;
    loop {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            return Err(bad(
                "the connection closed after one response (no keep-alive)".into(),
            ));
        }
        got += n;
        match reply(&buf[..got]) {
            Reply::More => {}
            Reply::Done => return Ok(()),
            Reply::Bad(why) => return Err(bad(why)),
        }
    }
}

/// hyper's HTTP/1.1 server on the ringport runtime with backend `b`, through
/// ringport's hyper bridge.
pub fn ringport_server(b: ringport::Backend) -> ServeFn {
    Box::new(move |ctx: &ServerCtx| {
        let rt = ringport::Runtime::with_backend(b)?;
        rt.block_on(async {
            let l = ringport::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                ringport::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let _ = http1::Builder::new()
                        .timer(ringport_core::compat::hyper::RingportTimer)
                        .serve_connection(s, service_fn(hello))
                        .await;
                });
            }
        })
    })
}

/// hyper's HTTP/1.1 server on tokio's current_thread runtime (the baseline).
pub fn tokio_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let _ = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service_fn(hello))
                        .await;
                });
            }
        })
    })
}
