//! A TCP echo server on ringport.
//!
//! `cargo run --release --example echo_server -- --addr 127.0.0.1:7000 [--backend X] [--threads N]`
//!
//! Each connection owns one buffer: read into it, write it all back, repeat.
//! A client that sends and never reads stalls only its own connection (the
//! write waits), so memory stays bounded. On end of stream the server shuts
//! down its side too (half-close); a reset just ends the connection.
//! `--threads N` runs N single-threaded runtimes, each with its own listener
//! on the same port (SO_REUSEPORT): thread-per-core.

use clap::Parser;
use ringport::{Backend, Runtime, TcpListener, TcpStream};
use std::io;
use std::net::{Shutdown, SocketAddr};

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
    /// Bytes per connection buffer.
    #[arg(long, default_value_t = 16 * 1024)]
    buffer: usize,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    // The first runtime binds (resolving port 0); the others join its port.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..args.threads.max(1) {
        let args = args.clone();
        let tx = tx.clone();
        let port = if i == 0 {
            None
        } else {
            Some(rx.recv().map_err(io::Error::other)?)
        };
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            let rt = match args.backend {
                Some(b) => Runtime::with_backend(b)?,
                None => Runtime::new()?,
            };
            let addr = port.unwrap_or(args.addr);
            let listener = TcpListener::bind_reuse_port(addr)?;
            let local = listener.local_addr()?;
            if port.is_none() {
                println!("listening on {local} ({} backend)", rt.backend());
                for _ in 1..args.threads.max(1) {
                    let _ = tx.send(local);
                }
            }
            rt.block_on(async move {
                loop {
                    let (conn, _) = listener.accept().await?;
                    let size = args.buffer;
                    ringport::spawn(async move {
                        let _ = echo(conn, size).await;
                    });
                }
            })
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("a server thread panicked"))??;
    }
    Ok(())
}

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
