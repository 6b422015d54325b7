//! The `send-file` workload: a 1 GiB page-cached file sent to one
//! connection, twice, by `TcpStream::send_file` (splice through a pipe on
//! io_uring, `sendfile(2)` on the shim) and by the read + write path (256 KiB
//! `read_at` into a buffer, then `write_all`), on ringport/uring and
//! ringport/epoll. The server runs on a thread of this process pinned to the
//! first CPU; the sink is this binary re-executed (hidden `sink-client`),
//! pinned to the second, reading and discarding. The figure that matters is
//! the server process's CPU per GB (`getrusage`, io_uring's kernel workers
//! included), in the note; ops are MiB, so ops/s is MiB/s.

use super::Plan;
use crate::measure::{add_note, allowed_cpus, cpu_self, pin_thread, Lat, Measured};
use ringport::Backend;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workload's name.
pub const WORKLOAD: &str = "send-file";
/// The row the others are compared with.
pub const BASELINE: &str = "ringport/uring read + write";

const FILE_LEN: u64 = 1 << 30;
const ROUNDS: u64 = 2;
const CHUNK: usize = 256 << 10;
const VARIANT: &str = "1 GiB × 2, 1 conn";

#[derive(Copy, Clone, PartialEq, Eq)]
enum Path {
    SendFile,
    ReadWrite,
}

/// Adds the rows: send_file and read + write on each of uring and epoll
/// that opens here.
pub fn plan(p: &mut Plan, avail: &[(Backend, Result<(), String>)]) {
    for b in [Backend::Uring, Backend::Epoll] {
        if !avail.iter().any(|(x, ok)| *x == b && ok.is_ok()) {
            continue;
        }
        let model = super::net_model_of(b);
        for (path, what) in [
            (Path::ReadWrite, "read + write"),
            (Path::SendFile, "send_file"),
        ] {
            p.job(
                WORKLOAD,
                VARIANT,
                &format!("ringport/{b} {what}"),
                model,
                move |_| run(b, path),
            );
        }
    }
}

/// The test file, written once per process (and then in the page cache).
fn test_file() -> io::Result<PathBuf> {
    static FILE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = file_path();
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            for _ in 0..FILE_LEN >> 20 {
                f.write_all(&block)?;
            }
            f.sync_all()
        };
        write()
            .map(|()| path.clone())
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .clone()
    .map_err(io::Error::other)
}

/// Where this process keeps its test file.
fn file_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "ringport-compare-send-file-{}.bin",
        std::process::id()
    ))
}

/// Removes the test file, if this run made one.
pub fn cleanup() {
    let _ = std::fs::remove_file(file_path());
}

fn run(b: Backend, path: Path) -> io::Result<Measured> {
    let file = test_file()?;
    let cpus = allowed_cpus();
    let (server_cpu, client_cpu) = match cpus.as_slice() {
        [a, c, ..] => (Some(*a), Some(*c)),
        _ => (None, None),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let total = FILE_LEN * ROUNDS;
    let server = std::thread::Builder::new()
        .name("compare-send-file".into())
        .spawn(move || -> io::Result<u64> {
            if let Some(c) = server_cpu {
                let _ = pin_thread(c);
            }
            let rt = ringport::Runtime::with_backend(b)?;
            rt.block_on(async move {
                let l = ringport::TcpListener::from_std(listener)?;
                let (s, _) = l.accept().await?;
                let f = ringport::File::open(&file).await?;
                let mut sent = 0u64;
                for _ in 0..ROUNDS {
                    sent += match path {
                        Path::SendFile => s.send_file(&f, 0, FILE_LEN).await?,
                        Path::ReadWrite => read_write(&s, &f).await?,
                    };
                }
                Ok(sent)
            })
        })?;
    let cpu0 = cpu_self();
    let started = Instant::now();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["sink-client", "--port", &port.to_string()])
        .args(["--bytes", &total.to_string()]);
    if let Some(c) = client_cpu {
        cmd.args(["--cpu", &c.to_string()]);
    }
    let out = match cmd.stderr(Stdio::inherit()).output() {
        Ok(o) => o,
        Err(e) => {
            // Let the server's accept end (its send then fails) before
            // giving up, so its thread is not left behind.
            let _ = std::net::TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
            let _ = server.join();
            return Err(e);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_self() - cpu0;
    let sent = server
        .join()
        .map_err(|_| io::Error::other("the server panicked"))??;
    if !out.status.success() {
        return Err(io::Error::other("sink-client failed"));
    }
    let got: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::other("sink-client printed no byte count"))?;
    if sent != total || got != total {
        return Err(io::Error::other(format!(
            "sent {sent} bytes, the sink got {got}, {total} expected"
        )));
    }
    let mib = total >> 20;
    let mut m = Measured::from_parts(mib, secs, Some(cpu), &Lat::new());
    let gb = total as f64 / 1e9;
    add_note(
        &mut m.note,
        &format!(
            "server CPU {:.3} s/GB; {:.2} GB/s",
            cpu / gb,
            gb / secs.max(1e-9)
        ),
    );
    Ok(m)
}

/// The file through a user buffer: read a chunk, write it, until the end.
async fn read_write(s: &ringport::TcpStream, f: &ringport::File) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut off = 0u64;
    while off < FILE_LEN {
        buf.clear();
        let (r, b) = f.read_at(buf, off).await;
        let n = r?;
        if n == 0 {
            break;
        }
        let (r, b) = s.write_all(b).await;
        r?;
        buf = b;
        off += n as u64;
    }
    Ok(off)
}

/// The sink: connects, reads and discards until `bytes` have come (or the
/// server closes), prints the count.
pub fn sink_main(port: u16, bytes: u64, cpu: Option<usize>) -> io::Result<()> {
    if let Some(c) = cpu {
        let _ = pin_thread(c);
    }
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut s = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < bytes {
        match s.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    println!("{got}");
    Ok(())
}
