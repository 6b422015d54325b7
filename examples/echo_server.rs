//! A TCP echo server on ringport.
//!
//! `cargo run --release --example echo_server -- --addr 127.0.0.1:7000 [--backend X] [--threads N]
//! [--buffer BYTES] [--pool-bufs N] [--no-pool] [--drain-secs S]`
//!
//! Reads are pooled by default: each runtime has a `BufPool`, and a
//! connection takes a buffer only when bytes arrive (io_uring picks it from a
//! provided-buffer ring), writes it back, and returns it — an idle connection
//! holds no buffer. When the pool is empty at that moment, that one read goes
//! through a buffer of its own instead. `--no-pool` gives every connection
//! its own buffer for its whole life (the old path, for comparison). A client
//! that sends and never reads stalls only its own connection (the write
//! waits), so memory stays bounded. On end of stream the server shuts
//! down its side too (half-close); a reset just ends the connection.
//! `--threads N` runs N single-threaded runtimes, each with its own listener
//! on the same port (SO_REUSEPORT): thread-per-core.
//!
//! On SIGTERM or SIGINT it stops accepting, lets every connection finish
//! (the client closes when its exchange is done), and exits 0; after
//! `--drain-secs` (default 5) it closes the connections left and exits 0.

use clap::Parser;
use ringport::bufpool::is_pool_exhausted;
use ringport::signal::SignalKind;
use ringport::{Backend, BufPool, Runtime, TcpListener, TcpStream};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A TCP echo server on ringport.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// Runtimes (threads) sharing the port.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Bytes per buffer (a pool buffer, or a connection's own with --no-pool).
    #[arg(long, default_value_t = 16 * 1024)]
    buffer: usize,
    /// Buffers in each runtime's pool.
    #[arg(long, default_value_t = 256)]
    pool_bufs: usize,
    /// Give every connection its own buffer instead of reading from a pool.
    #[arg(long)]
    no_pool: bool,
    /// Seconds connections may take to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let n = args.threads.max(1);
    // The first runtime binds (resolving port 0); the others join its port.
    // Each says when it listens for signals; the address is printed once
    // all do, so a signal sent after that line reaches every runtime.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    let mut port = None;
    for i in 0..n {
        let args = args.clone();
        let (port_tx, ready_tx) = (port_tx.clone(), ready_tx.clone());
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            let res = serve(&args, port, &port_tx, &ready_tx);
            if let Err(e) = &res {
                // Tells main, if it still waits for this runtime's port or
                // for it to be ready.
                let _ = port_tx.send(Err(e.to_string()));
                let _ = ready_tx.send(Err(e.to_string()));
            }
            res
        }));
        if i == 0 {
            match port_rx.recv() {
                Ok(Ok(a)) => port = Some(a),
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Err(_) => break,
            }
        }
    }
    drop(ready_tx);
    let mut backend = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(b)) => backend = Some(b),
            Ok(Err(e)) => return Err(io::Error::other(e)),
            Err(_) => break,
        }
    }
    if let (Some(addr), Some(b)) = (port, backend) {
        println!("listening on {addr} ({b} backend)");
    }
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("a server thread panicked"))??;
    }
    Ok(())
}

/// One runtime: its listener, its signal listeners, its connections, and
/// its drain.
fn serve(
    args: &Args,
    port: Option<SocketAddr>,
    port_tx: &std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    ready_tx: &std::sync::mpsc::Sender<Result<Backend, String>>,
) -> io::Result<()> {
    let rt = match args.backend {
        Some(b) => Runtime::with_backend(b)?,
        None => Runtime::new()?,
    };
    let listener = TcpListener::bind_reuse_port(port.unwrap_or(args.addr))?;
    let _ = port_tx.send(Ok(listener.local_addr()?));
    let token = rt.shutdown_token();
    let backend = rt.backend();
    let pool = if args.no_pool {
        None
    } else {
        Some(
            BufPool::new(args.pool_bufs, args.buffer)
                .map_err(|e| io::Error::new(e.kind(), format!("--pool-bufs/--buffer: {e}")))?,
        )
    };
    rt.block_on(async {
        token.trigger_on(&[SignalKind::terminate(), SignalKind::interrupt()])?;
        let _ = ready_tx.send(Ok(backend));
        while let Some((conn, _)) = listener.accept_until(&token).await? {
            let size = args.buffer;
            let pool = pool.clone();
            ringport::spawn(async move {
                let r = match pool {
                    Some(p) => echo_pooled(conn, &p, size).await,
                    None => echo(conn, size).await,
                };
                if let Err(e) = r {
                    log_conn_error(&e);
                }
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

/// A connection error worth telling a person about (a peer's reset is not).
fn log_conn_error(e: &io::Error) {
    if !matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        eprintln!("connection: {e}");
    }
}

/// Echoes through the pool: a buffer only while bytes are on their way back.
async fn echo_pooled(conn: TcpStream, pool: &BufPool, size: usize) -> io::Result<()> {
    loop {
        match conn.recv_pooled(pool).await {
            Ok(Some(buf)) => {
                let (r, _back_to_the_pool) = conn.write_all(buf).await;
                r?;
            }
            Ok(None) => break,
            Err(e) if is_pool_exhausted(&e) => {
                // Every pool buffer is in use: this read gets its own.
                let (r, b) = conn.read(Vec::with_capacity(size)).await;
                match r {
                    Ok(0) => break,
                    Ok(_) => {
                        let (r, _) = conn.write_all(b).await;
                        r?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    conn.shutdown(Shutdown::Write).await
}

/// Echoes through one buffer the connection owns (`--no-pool`).
async fn echo(conn: TcpStream, size: usize) -> io::Result<()> {
    let mut buf = Vec::with_capacity(size);
    loop {
        let (r, b) = conn.read(buf).await;
        match r {
            Ok(0) => break,
            Ok(_) => {
                let (r, b) = conn.write_all(b).await;
                r?;
                buf = b;
            }
            Err(e) => return Err(e),
        }
    }
    conn.shutdown(Shutdown::Write).await
}
