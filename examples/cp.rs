//! Copies a file with many reads and writes in flight.
//!
//! `cargo run --release --example cp -- SRC DST [--backend X] [--depth 32] [--block 128K]`
//!
//! `depth` tasks each copy every `depth`-th block: read it at its offset,
//! write it at the same offset. The destination keeps the source's mode and
//! is fsynced before the program reports bytes and MiB/s. A progress bar is
//! drawn only on a terminal.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ringport::{Backend, File, OpenOptions, Runtime};
use std::cell::Cell;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

/// Copies a file with many reads and writes in flight.
#[derive(Parser, Debug)]
struct Args {
    /// Source file.
    src: PathBuf,
    /// Destination file (created or truncated).
    dst: PathBuf,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// Operations in flight.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Block size, e.g. 128K, 1M, 4096.
    #[arg(long, default_value = "128K", value_parser = parse_size)]
    block: usize,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1024),
        Some('M' | 'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    match num.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * mult),
        _ => Err(format!("not a block size: {s:?} (e.g. 128K)")),
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = match args.backend {
        Some(b) => Runtime::with_backend(b)?,
        None => Runtime::new()?,
    };
    let meta = std::fs::metadata(&args.src)?;
    let size = meta.len();
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
    let bar = if io::stdout().is_terminal() {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                .map_err(io::Error::other)?,
        );
        Some(b)
    } else {
        None
    };
    let start = Instant::now();
    let backend = rt.backend();
    rt.block_on(async {
        let src = Rc::new(File::open(&args.src).await?);
        let dst = Rc::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&args.dst)
                .await?,
        );
        let done = Rc::new(Cell::new(0u64));
        let blocks = size.div_ceil(args.block as u64);
        let depth = (args.depth.max(1) as u64).min(blocks.max(1));
        let mut tasks = Vec::new();
        for lane in 0..depth {
            let (src, dst, done, bar) = (src.clone(), dst.clone(), done.clone(), bar.clone());
            let block = args.block;
            tasks.push(ringport::spawn(async move {
                let mut buf = Vec::with_capacity(block);
                let mut i = lane;
                while i < blocks {
                    let pos = i * block as u64;
                    buf.clear();
                    let (r, b) = src.read_at(buf, pos).await;
                    let n = r?;
                    let (r, b) = dst.write_all_at(b, pos).await;
                    r?;
                    buf = b;
                    done.set(done.get() + n as u64);
                    if let Some(bar) = &bar {
                        bar.set_position(done.get());
                    }
                    i += depth;
                }
                Ok::<(), io::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        dst.sync_all().await?;
        // The mode given at open is masked by the umask: set it exactly.
        std::fs::set_permissions(
            &args.dst,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )?;
        Ok::<(), io::Error>(())
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "copied {size} bytes in {secs:.3} s ({:.1} MiB/s) on {backend}",
        size as f64 / secs / (1024.0 * 1024.0)
    );
    Ok(())
}
