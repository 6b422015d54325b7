//! The main demo: on every backend this machine has, read a file and echo a
//! message over TCP on loopback, and print what happened.
//!
//! `cargo run --example demo`

use ringport::{Backend, File, Runtime, TcpListener, TcpStream};
use std::io::Write;
use std::time::Instant;

fn main() {
    let path = std::env::temp_dir().join(format!("ringport-demo-{}.txt", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"hello from a file, read through ringport\n"))
        .expect("create the demo file");
    let mut ran = 0;
    for b in Backend::ALL {
        let rt = match Runtime::with_backend(b) {
            Ok(rt) => rt,
            Err(e) => {
                println!("{:<7} skipped: {e}", b.name());
                continue;
            }
        };
        let start = Instant::now();
        match rt.block_on(run(&path)) {
            Ok((file_text, echoed)) => {
                ran += 1;
                println!(
                    "{:<7} file read {:?}; TCP echo returned {:?} ({:.1} ms)",
                    b.name(),
                    file_text.trim_end(),
                    echoed,
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => println!("{:<7} FAILED: {e}", b.name()),
        }
    }
    let _ = std::fs::remove_file(&path);
    println!("{ran} backend(s) ran");
}

async fn run(path: &std::path::Path) -> std::io::Result<(String, String)> {
    let file = File::open(path).await?;
    let (res, buf) = file.read_at(Vec::with_capacity(256), 0).await;
    res?;
    file.close().await?;
    let file_text = String::from_utf8_lossy(&buf).into_owned();

    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
    let addr = listener.local_addr()?;
    let server = ringport::spawn(async move {
        let (conn, _) = listener.accept().await?;
        let (res, buf) = conn.read(Vec::with_capacity(64)).await;
        res?;
        let (res, _) = conn.write_all(buf).await;
        res.map(|_| ())
    });
    let client = TcpStream::connect(addr).await?;
    let (res, _) = client.write_all(&b"ping over loopback"[..]).await;
    res?;
    let (res, buf) = client.read(Vec::with_capacity(64)).await;
    res?;
    server.await??;
    Ok((file_text, String::from_utf8_lossy(&buf).into_owned()))
}
