//! A TLS echo server on ringport: rustls (tokio-rustls) over the
//! tokio-trait adapter. Each connection's handshake has a deadline, so a
//! client that sends garbage or stalls is cut off while others are served.
//!
//! `cargo run --example tls_echo --features full -- --addr 127.0.0.1:7443 [--backend X] [--tls-cert FILE --tls-key FILE]`
//!
//! Without certificate files it generates a self-signed one for
//! `localhost`, `127.0.0.1` and `::1`. Try it with
//! `openssl s_client -connect 127.0.0.1:7443 -quiet`.

use clap::Parser;
use ringport::tls::{self, TlsAcceptor};
use ringport::{Backend, Runtime, TcpListener};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS echo server on ringport.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    addr: SocketAddr,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// PEM certificate chain.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Milliseconds a client may take to finish its handshake.
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let id = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => tls::load_pem(c, k)?,
        _ => tls::self_signed(&["localhost", "127.0.0.1", "::1"])?,
    };
    let acceptor = TlsAcceptor::from(tls::server_config(id, &[])?);
    let backend = match args.backend {
        Some(b) => b,
        None => Backend::from_env()?.unwrap_or(Backend::Auto),
    };
    let deadline = Duration::from_millis(args.handshake_timeout_ms);
    let rt = Runtime::with_backend(backend)?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr))
        })?;
        println!(
            "listening on {} ({})",
            listener.local_addr()?,
            rt_name(backend)
        );
        loop {
            let (stream, peer) = listener.accept().await?;
            let acceptor = acceptor.clone();
            ringport::spawn(async move {
                if let Err(e) = echo(&acceptor, stream, deadline).await {
                    eprintln!("tls_echo: {peer}: {e}");
                }
            });
        }
    })
}

fn rt_name(b: Backend) -> String {
    format!("backend {b}")
}

async fn echo(
    acceptor: &TlsAcceptor,
    stream: ringport::TcpStream,
    deadline: Duration,
) -> io::Result<()> {
    let mut tls = tls::accept(acceptor, stream, deadline).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return tls.shutdown().await;
        }
        tls.write_all(&buf[..n]).await?;
        tls.flush().await?;
    }
}
