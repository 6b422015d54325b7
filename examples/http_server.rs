//! A static file server on ringport.
//!
//! `cargo run --release --example http_server -- --addr 127.0.0.1:8080 --root DIR [--backend X] [--threads N]`
//!
//! HTTP/1.1 keep-alive and pipelining, GET and HEAD, single byte ranges,
//! Content-Type by extension, an index.html for directories (403 without),
//! 400/404/405/414/431 answers, a deadline for an idle connection and for a
//! request head that trickles in. Files stream in 64 KiB chunks through one
//! buffer per connection, so memory stays bounded whatever the file size.
//! The request handling itself lives in the `ringport-http` crate.
//!
//! On SIGTERM or SIGINT it stops accepting, answers every request already
//! begun (with `Connection: close`), closes idle connections, and exits 0;
//! after `--drain-secs` (default 5) it closes what is left and exits 0.

use clap::Parser;
use ringport::signal::SignalKind;
use ringport::{Backend, File, IoBuf, Runtime, ShutdownToken, TcpListener, TcpStream};
use ringport_http::{
    content_type, error_response, parse_range, parse_request, resolve, Method, RangeSpec, Request,
    Status, MAX_HEAD,
};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A static file server on ringport.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory to serve.
    #[arg(long)]
    root: PathBuf,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// Runtimes (threads) sharing the port through SO_REUSEPORT.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds an idle keep-alive connection may stay open, and a request
    /// head may take to arrive.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Seconds requests in flight may take to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

const CHUNK: usize = 64 * 1024;

fn main() -> io::Result<()> {
    let args = Args::parse();
    let root = args
        .root
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", args.root.display())))?;
    // Bind the first listener here so port 0 resolves once for all threads.
    let first = bind_reuse_port(args.addr)?;
    let addr = first.local_addr()?;
    let mut threads = Vec::new();
    let mut first = Some(first);
    // Each runtime says when it listens for signals; the address is printed
    // once all do, so a signal sent after that line reaches every runtime.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let n = args.threads.max(1);
    for _ in 0..n {
        let (args, root, ready) = (args.clone(), root.clone(), ready_tx.clone());
        let listener = match first.take() {
            Some(l) => l,
            None => bind_reuse_port(addr)?,
        };
        let fd = std::os::fd::IntoRawFd::into_raw_fd(listener);
        threads.push(std::thread::spawn(move || {
            let res = run(args, root, fd, &ready);
            if let Err(e) = &res {
                // Tells main, if it still waits for this runtime to be ready.
                let _ = ready.send(Err(e.to_string()));
            }
            res
        }));
    }
    drop(ready_tx);
    for r in ready_rx.iter().take(n) {
        r.map_err(io::Error::other)?;
    }
    println!("listening on {addr}");
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("a server thread panicked"))??;
    }
    Ok(())
}

/// A listening socket with SO_REUSEPORT, handed to a runtime on its thread.
fn bind_reuse_port(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on an fd we own; every result is checked.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let l = std::net::TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let sa = ringport::SockAddr::from(addr);
        if libc::bind(fd, sa.as_ptr(), sa.len()) < 0 || libc::listen(fd, 1024) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(l)
    }
}

fn run(
    args: Args,
    root: PathBuf,
    fd: i32,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> io::Result<()> {
    // SAFETY: fd is the listening socket bound in main, owned by this thread now.
    let std_listener =
        unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let rt = match args.backend {
        Some(b) => Runtime::with_backend(b)?,
        None => Runtime::new()?,
    };
    let idle = Duration::from_secs(args.idle_secs);
    let token = rt.shutdown_token();
    rt.block_on(async {
        let listener = TcpListener::from_std(std_listener)?;
        token.trigger_on(&[SignalKind::terminate(), SignalKind::interrupt()])?;
        let _ = ready.send(Ok(()));
        let root = Rc::new(root);
        while let Some((conn, _)) = listener.accept_until(&token).await? {
            // Responses are written whole; do not let Nagle hold the last part.
            conn.set_nodelay(true)?;
            let (root, token) = (root.clone(), token.clone());
            ringport::spawn(async move {
                let _ = serve(conn, &root, idle, &token).await;
            });
        }
        // Stop accepting: the listener closes, the connections go on.
        listener.close().await
    })?;
    let left = rt.shutdown_timeout(Duration::from_secs(args.drain_secs))?;
    if left > 0 {
        eprintln!("closed {left} connections still open after the drain time");
    }
    Ok(())
}

/// Serves one connection: requests in order (pipelined ones included) until
/// the client closes, asks to close, errs, or stays idle too long. Once
/// `token` fires, a request already begun is answered with
/// `Connection: close`, and an idle connection is closed.
async fn serve(
    conn: TcpStream,
    root: &Path,
    idle: Duration,
    token: &ShutdownToken,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_HEAD);
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut head_started: Option<Instant> = None;
    let mut last_activity = Instant::now();
    // Set once a shutdown found a request begun: it is read to its end.
    let mut last_request = false;
    loop {
        match parse_request(&pending) {
            Ok(Some(req)) => {
                pending.drain(..req.head_len);
                head_started = None;
                let keep = req.keep_alive && !token.is_triggered();
                let (keep, c) = respond(&conn, root, &req, keep, chunk).await?;
                chunk = c;
                if !keep {
                    break;
                }
                last_activity = Instant::now();
                continue;
            }
            Ok(None) => {}
            Err(status) => {
                let (r, _) = conn.write_all(error_response(status, false)).await;
                r?;
                break;
            }
        }
        // A new request's head must arrive within `idle` of its first byte;
        // a quiet keep-alive connection closes after `idle`.
        let deadline = match head_started {
            Some(t) => t + idle,
            None => last_activity + idle,
        };
        chunk.clear();
        let (r, c) = if pending.is_empty() && !last_request {
            // Between requests: a shutdown ends the wait, unless the next
            // request has begun (its bytes wait in the socket): that one
            // is still answered, with Connection: close.
            match token.run_until(conn.read_deadline(chunk, deadline)).await {
                Some(rc) => rc,
                None if bytes_waiting(&conn) => {
                    last_request = true;
                    chunk = Vec::with_capacity(CHUNK);
                    continue;
                }
                None => break,
            }
        } else {
            conn.read_deadline(chunk, deadline).await
        };
        chunk = c;
        match r {
            Ok(0) => break,
            Ok(n) => {
                if pending.is_empty() {
                    head_started = Some(Instant::now());
                }
                pending.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if !pending.is_empty() {
                    let (r, _) = conn
                        .write_all(error_response(Status::RequestTimeout, false))
                        .await;
                    r?;
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write).await;
    // Read what the client still sends until it closes (briefly): closing
    // with unread bytes would reset the connection under the last answer.
    let linger = Instant::now() + Duration::from_secs(1);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let (r, b) = conn.read_deadline(buf, linger).await;
        buf = b;
        if !matches!(r, Ok(n) if n > 0) {
            break;
        }
    }
    Ok(())
}

/// Whether bytes the server has not read yet wait in the socket.
fn bytes_waiting(conn: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a local; MSG_DONTWAIT never blocks and
    // MSG_PEEK leaves the byte in the socket for the next read.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            &mut b as *mut u8 as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Answers one request; returns whether to keep the connection, and the
/// chunk buffer back.
async fn respond(
    conn: &TcpStream,
    root: &Path,
    req: &Request,
    keep: bool,
    chunk: Vec<u8>,
) -> io::Result<(bool, Vec<u8>)> {
    if req.method == Method::Other {
        let resp = ringport_http::response_head(
            Status::MethodNotAllowed,
            0,
            keep,
            &[("Allow", "GET, HEAD")],
        );
        let (r, _) = conn.write_all(resp).await;
        r?;
        return Ok((keep, chunk));
    }
    let path = match resolve(root, &req.target) {
        Ok(p) => p,
        Err(status) => {
            let (r, _) = conn.write_all(error_response(status, keep)).await;
            r?;
            return Ok((keep, chunk));
        }
    };
    let file = match File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let status = if e.kind() == io::ErrorKind::NotFound {
                Status::NotFound
            } else {
                Status::Forbidden
            };
            let (r, _) = conn.write_all(error_response(status, keep)).await;
            r?;
            return Ok((keep, chunk));
        }
    };
    let size = file.metadata().await?.size;
    let ctype = content_type(&path);
    let (status, start, len, range_hdr) = match parse_range(req.range.as_deref(), size) {
        RangeSpec::Full => (Status::Ok, 0, size, None),
        RangeSpec::Part { start, end } => (
            Status::PartialContent,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        RangeSpec::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            let head = ringport_http::response_head(
                Status::RangeNotSatisfiable,
                0,
                keep,
                &[("Content-Range", &cr)],
            );
            let (r, _) = conn.write_all(head).await;
            r?;
            return Ok((keep, chunk));
        }
    };
    let mut extra = vec![("Content-Type", ctype), ("Accept-Ranges", "bytes")];
    if let Some(cr) = &range_hdr {
        extra.push(("Content-Range", cr));
    }
    let head = ringport_http::response_head(status, len, keep, &extra);
    let mut chunk = chunk;
    chunk.clear();
    chunk.extend_from_slice(&head);
    if req.method == Method::Get {
        // The head goes out with the first chunk of the file: one write for
        // a small file.
        let mut pos = start;
        let end = start + len;
        loop {
            let at = chunk.len();
            let want = ((end - pos) as usize).min(CHUNK.saturating_sub(at).max(1));
            if pos < end {
                let (r, c) = file.read_at(chunk.slice(at..at + want), pos).await;
                chunk = c.into_inner();
                let n = r?;
                if n == 0 {
                    // The file shrank under us: the promised length cannot
                    // be kept, so the connection must end.
                    return Ok((false, chunk));
                }
                pos += n as u64;
            }
            let (r, c) = conn.write_all(chunk).await;
            chunk = c;
            r?;
            chunk.clear();
            if pos >= end {
                break;
            }
        }
    } else {
        let (r, c) = conn.write_all(chunk).await;
        chunk = c;
        r?;
    }
    file.close().await?;
    Ok((keep, chunk))
}
