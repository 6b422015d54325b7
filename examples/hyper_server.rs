//! hyper 1.x on ringport: HTTP/1.1 and HTTP/2 (hyper-util's auto builder),
//! optionally over TLS (rustls, ALPN `h2` and `http/1.1`).
//!
//! `cargo run --example hyper_server --features full -- --addr 127.0.0.1:8080 [--backend X] [--threads N] [--root DIR] [--tls | --tls-cert FILE --tls-key FILE]`
//!
//! `/` answers a fixed 4 KiB body; `/file/PATH` serves the file PATH under
//! `--root`. With `--tls` and no files, a self-signed certificate for
//! `localhost`, `127.0.0.1` and `::1` is generated at start.

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use ringport::tls::{self, TlsAcceptor};
use ringport::{Backend, File, LocalExec, RingportTimer, Runtime, TcpListener};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

/// hyper on ringport, HTTP/1.1 and HTTP/2, with optional TLS.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// Runtimes (threads) sharing the port through SO_REUSEPORT.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Directory that /file/PATH serves from.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Serve HTTPS; without --tls-cert/--tls-key, with a self-signed certificate.
    #[arg(long)]
    tls: bool,
    /// PEM certificate chain (implies --tls).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (implies --tls).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Milliseconds a client may take to finish its TLS handshake.
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
}

/// The body of `/`.
static BODY: [u8; 4096] = [b'x'; 4096];

fn main() -> ExitCode {
    let args = Args::parse();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Args) -> io::Result<()> {
    let root = args
        .root
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", args.root.display())))?;
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::load_pem(c, k)?),
        _ if args.tls => Some(tls::self_signed(&["localhost", "127.0.0.1", "::1"])?),
        _ => None,
    }
    .map(|id| tls::server_config(id, &tls::HTTP_ALPN).map(TlsAcceptor::from))
    .transpose()?;
    let backend = args
        .backend
        .map(Ok)
        .unwrap_or_else(|| Backend::from_env().map(|b| b.unwrap_or(Backend::Auto)))?;

    // The first runtime binds (port 0 resolves there), the others join its
    // port; each reports its bound address (or why it could not bind).
    let handshake = Duration::from_millis(args.handshake_timeout_ms);
    let n = args.threads.max(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    let mut addr = args.addr;
    for i in 0..n {
        let (root, acc, tx) = (root.clone(), acceptor.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            run(backend, addr, root, acc, handshake, tx)
        }));
        addr = rx
            .recv()
            .map_err(|_| io::Error::other("a server thread stopped before binding"))??;
        if i == 0 {
            let scheme = if acceptor.is_some() { "https" } else { "http" };
            println!("listening on {addr} ({scheme}://{addr}/, {n} threads)");
        }
    }
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("a server thread panicked"))??;
    }
    Ok(())
}

/// One runtime: binds `addr` (SO_REUSEPORT), reports the bound address on
/// `tx`, then accepts forever.
fn run(
    backend: Backend,
    addr: SocketAddr,
    root: PathBuf,
    acceptor: Option<TlsAcceptor>,
    handshake: Duration,
    tx: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
) -> io::Result<()> {
    let rt = match Runtime::with_backend(backend) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind_reuse_port(addr) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {addr}: {e}");
                let _ = tx.send(Err(io::Error::new(e.kind(), msg.clone())));
                return Err(io::Error::new(e.kind(), msg));
            }
        };
        let _ = tx.send(listener.local_addr());
        drop(tx);
        let root = Rc::new(root);
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (root, acceptor) = (root.clone(), acceptor.clone());
            ringport::spawn(async move {
                let result = match acceptor {
                    None => serve_conn(stream, root).await,
                    Some(acc) => match tls::accept(&acc, stream, handshake).await {
                        Ok(s) => serve_conn(TokioIo::new(s), root).await,
                        Err(e) => Err(format!("TLS handshake: {e}")),
                    },
                };
                if let Err(e) = result {
                    eprintln!("hyper_server: connection from {peer}: {e}");
                }
            });
        }
    })
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (whatever the client speaks).
async fn serve_conn<I>(io: I, root: Rc<PathBuf>) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(RingportTimer)
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(RingportTimer);
    let service = hyper::service::service_fn(move |req| handle(req, root.clone()));
    builder
        .serve_connection(io, service)
        .await
        .map_err(|e| e.to_string())
}

async fn handle(
    req: Request<Incoming>,
    root: Rc<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let resp = if path == "/" {
        Response::new(Full::new(Bytes::from_static(&BODY)))
    } else if let Some(rest) = path.strip_prefix("/file/") {
        match ringport_http::request_path(&format!("/{rest}")) {
            Ok(rel) => match read_file(&root, &rel).await {
                Ok(data) => Response::new(Full::new(Bytes::from(data))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    status(StatusCode::NOT_FOUND, "not found")
                }
                // Outside the root (EXDEV), a symlink loop, not a file.
                Err(e) if e.raw_os_error().is_some() => {
                    status(StatusCode::FORBIDDEN, "cannot serve that path")
                }
                Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            Err(s) => status(
                StatusCode::from_u16(s.code()).unwrap_or(StatusCode::BAD_REQUEST),
                "cannot serve that path",
            ),
        }
    } else {
        status(StatusCode::NOT_FOUND, "not found")
    };
    Ok(resp)
}

fn status(code: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = code;
    r
}

/// The whole file, read through ringport.
/// Reads `rel` beneath `root` (openat2 with RESOLVE_BENEATH, through the
/// driver: nothing outside the root, no blocking call on the runtime
/// thread); only a regular file.
async fn read_file(root: &Path, rel: &Path) -> io::Result<Vec<u8>> {
    let dir = ringport::fs::Dir::open(root).await?;
    let f = File::open_beneath(&dir, rel).await?;
    let _ = dir.close().await;
    let meta = f.metadata().await?;
    if !meta.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let size = meta.size as usize;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        let rest = Vec::with_capacity(size - data.len());
        let (r, chunk) = f.read_at(rest, data.len() as u64).await;
        if r? == 0 {
            break;
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}
