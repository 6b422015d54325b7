//! A static file server on ringport.
//!
//! `cargo run --release --example http_server -- --addr 127.0.0.1:8080 --root DIR [--backend X]
//! [--threads N] [--idle-secs S] [--max-conns N] [--cache-ms MS] [--access-log FILE]
//! [--drain-secs S]`
//!
//! HTTP/1.1 keep-alive and pipelining, GET and HEAD, single byte ranges,
//! Content-Type by extension, an index.html for directories (403 without),
//! `ETag`, `Last-Modified`, `Date`, 304 for `If-None-Match` /
//! `If-Modified-Since`, 400/403/404/405/414/431 answers.
//!
//! Every request is served by ops through the driver, none blocking the
//! runtime thread: the path opens with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from the root's directory fd (the kernel keeps it
//! under the root, with no check-then-open race), non-blocking so a FIFO
//! cannot stall anything; only a regular file (checked on the opened fd) is
//! served, anything else gets 403. Open files are cached (fd, size, mtime,
//! ETag) and revalidated at most every `--cache-ms`. A small body goes out
//! with its head in one send; a large one with `send_file` (splice on
//! io_uring). Bounds: a request head, an idle connection and every write
//! (a client that stops reading) get `--idle-secs`; beyond `--max-conns` a
//! new connection is closed at once; a waiting receive holds no buffer (a
//! pooled receive) and no timer (one sweeper per thread ends the receives
//! whose deadline passed). The request handling itself lives in
//! `ringport-http`; the connection logic in `http_server/serve.rs`.
//!
//! On SIGTERM or SIGINT it stops accepting, answers every request already
//! begun (with `Connection: close`), closes idle connections, and exits 0;
//! after `--drain-secs` (default 5) it closes what is left and exits 0.

use clap::Parser;
use ringport::signal::SignalKind;
use ringport::{Backend, Runtime, TcpListener};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

#[path = "http_server/serve.rs"]
mod serve;
use serve::{ConnSlot, Ctx};

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
    /// Seconds an idle keep-alive connection may stay open, a request head
    /// may take to arrive, and a write may wait for a client that does not
    /// read.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Open connections at most (all threads together); beyond it a new
    /// connection is closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_conns: usize,
    /// Milliseconds an open file is served from the cache before its path
    /// is opened and checked again (0: no cache).
    #[arg(long, default_value_t = 1000)]
    cache_ms: u64,
    /// Append an access log line per request to FILE (buffered; off by default).
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Seconds requests in flight may take to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

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
    let conns = Arc::new(AtomicUsize::new(0));
    // Each runtime says when it listens for signals; the address is printed
    // once all do, so a signal sent after that line reaches every runtime.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let n = args.threads.max(1);
    for _ in 0..n {
        let (args, root, conns, ready) =
            (args.clone(), root.clone(), conns.clone(), ready_tx.clone());
        let listener = match first.take() {
            Some(l) => l,
            None => bind_reuse_port(addr)?,
        };
        let fd = std::os::fd::IntoRawFd::into_raw_fd(listener);
        threads.push(std::thread::spawn(move || {
            let res = run(args, root, fd, conns, &ready);
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
    conns: Arc<AtomicUsize>,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> io::Result<()> {
    // SAFETY: fd is the listening socket bound in main, owned by this thread now.
    let std_listener =
        unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let rt = match args.backend {
        Some(b) => Runtime::with_backend(b)?,
        None => Runtime::new()?,
    };
    let token = rt.shutdown_token();
    rt.block_on(async {
        let listener = TcpListener::from_std(std_listener)?;
        let ctx = Rc::new(Ctx::open(&root, &args, token.clone()).await?);
        token.trigger_on(&[SignalKind::terminate(), SignalKind::interrupt()])?;
        let _ = ready.send(Ok(()));
        while let Some((conn, peer)) = listener.accept_until(&token).await? {
            // Beyond --max-conns the connection is dropped (closed) at once.
            let Some(slot) = ConnSlot::take(&conns, args.max_conns) else {
                drop(conn);
                continue;
            };
            // Responses are written whole; do not let Nagle hold the last part.
            conn.set_nodelay(true)?;
            let ctx = ctx.clone();
            ringport::spawn(async move {
                let _ = serve::serve(conn, peer, &ctx).await;
                drop(slot);
            });
        }
        // Stop accepting: the listener closes, the connections go on.
        listener.close().await
    })?;
    let left = rt.shutdown_timeout(std::time::Duration::from_secs(args.drain_secs))?;
    if left > 0 {
        eprintln!("closed {left} connections still open after the drain time");
    }
    Ok(())
}
