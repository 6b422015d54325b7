//! A hyper 1.x HTTP client on ringport: fetches one URL, prints the status,
//! the headers and the body's length.
//!
//! `cargo run --example hyper_client --features full -- http://127.0.0.1:8080/ [--http2] [--backend X]`

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use ringport::{Backend, LocalExec, RingportTimer, Runtime, TcpStream};
use std::net::ToSocketAddrs;
use std::process::ExitCode;

/// Fetch one http:// URL with hyper over ringport.
#[derive(Parser, Debug)]
struct Args {
    /// The URL (http:// only).
    url: hyper::Uri,
    /// Speak HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match fetch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper_client: {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn fetch(args: &Args) -> Result<(), Error> {
    let url = &args.url;
    if url.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_u16().unwrap_or(80);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()?
        .next()
        .ok_or("the host has no address")?;
    let backend = match args.backend {
        Some(b) => b,
        None => Backend::from_env()?.unwrap_or(Backend::Auto),
    };
    let rt = Runtime::with_backend(backend)?;
    rt.block_on(async {
        let stream = TcpStream::connect(addr).await?;
        let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
        let resp = if args.http2 {
            let (mut send, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
                .timer(RingportTimer)
                .handshake(stream)
                .await?;
            ringport::spawn(conn);
            let req = Request::get(url.clone()).body(Empty::<Bytes>::new())?;
            send.send_request(req).await?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(stream).await?;
            ringport::spawn(conn);
            let req = Request::get(path)
                .header(hyper::header::HOST, authority)
                .body(Empty::<Bytes>::new())?;
            send.send_request(req).await?
        };
        println!("{:?} {}", resp.version(), resp.status());
        for (name, value) in resp.headers() {
            println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        let body = resp.into_body().collect().await?.to_bytes();
        println!("body: {} bytes", body.len());
        Ok::<_, Error>(())
    })
}
