//! A classic IOCP worker-pool TCP echo server, written the way a Windows
//! developer would: one completion port, N worker threads looping on
//! `get` (GetQueuedCompletionStatus), the completion key naming the
//! connection, the "overlapped" naming the operation.
//!
//! `cargo run --release --example iocp_echo -- --threads 4 --addr 127.0.0.1:7100 [--backend X]`

use clap::Parser;
use ringport::{Backend, CompletionPort, GetError, PortEntry};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;

/// A classic IOCP worker-pool TCP echo server.
#[derive(Parser, Debug)]
struct Args {
    /// Worker threads calling GetQueuedCompletionStatus.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7100")]
    addr: SocketAddr,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
}

/// The completion key of the listening socket; connections use their fd.
const LISTEN_KEY: usize = usize::MAX;
/// What each "overlapped" operation was.
const OP_ACCEPT: usize = 1;
const OP_RECV: usize = 2;
const OP_SEND: usize = 3;
/// Accepts kept posted at once (like a pool of AcceptEx calls).
const ACCEPTS: usize = 16;
const BUFFER: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let args = Args::parse();
    // CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, threads)
    let port = Arc::new(match args.backend {
        Some(b) => CompletionPort::with_backend(args.threads, b)?,
        None => CompletionPort::new(args.threads)?,
    });
    let listener = std::net::TcpListener::bind(args.addr)?;
    let local = listener.local_addr()?;
    let lfd = listener.into_raw_fd();
    // CreateIoCompletionPort(listener, port, LISTEN_KEY, 0)
    port.associate(lfd, LISTEN_KEY)?;
    for _ in 0..ACCEPTS {
        port.accept(lfd, OP_ACCEPT)?; // AcceptEx
    }
    println!(
        "listening on {local} ({} backend, {} workers)",
        port.backend(),
        args.threads
    );
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let port = port.clone();
            std::thread::spawn(move || worker(&port, lfd))
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

/// The worker loop: GetQueuedCompletionStatus, then act on what finished.
fn worker(port: &CompletionPort, lfd: RawFd) -> io::Result<()> {
    loop {
        let entry = match port.get(None) {
            Ok(e) => e,
            Err(GetError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = on_completion(port, lfd, entry) {
            eprintln!("iocp_echo: {e}");
        }
    }
}

fn on_completion(port: &CompletionPort, lfd: RawFd, mut e: PortEntry) -> io::Result<()> {
    match (e.key, e.overlapped) {
        (LISTEN_KEY, OP_ACCEPT) => {
            // Post the next AcceptEx first, then start reading the new client.
            port.accept(lfd, OP_ACCEPT)?;
            let fd = e.status? as RawFd;
            port.associate(fd, fd as usize)?;
            port.recv(fd, Vec::with_capacity(BUFFER), OP_RECV) // WSARecv
        }
        (key, OP_RECV) => {
            let fd = key as RawFd;
            match e.status {
                Ok(n) if n > 0 => {
                    let buf: Vec<u8> = e.take_read_buf().unwrap_or_default();
                    port.send(fd, buf, OP_SEND) // WSASend: completes when all is sent
                }
                // 0 bytes: the client closed; an error: it is gone.
                _ => close(port, fd),
            }
        }
        (key, OP_SEND) => {
            let fd = key as RawFd;
            match e.status {
                Ok(_) => {
                    let mut buf: Vec<u8> = e.take_write_buf().unwrap_or_default();
                    buf.clear();
                    port.recv(fd, buf, OP_RECV)
                }
                Err(_) => close(port, fd),
            }
        }
        _ => Ok(()),
    }
}

/// closesocket, through the port (which cancels anything left on the fd).
fn close(port: &CompletionPort, fd: RawFd) -> io::Result<()> {
    port.close_fd(fd)
}
