//! Runs a fixed number of nops in batches of 32 through one path — the raw
//! `io-uring` crate, a ringport driver, or the runtime (32 tasks) — so that a
//! run under `valgrind --tool=callgrind` counts instructions per op. Two
//! counts (say 20,000 and 120,000 nops) differenced and divided by the
//! difference give the per-op cost without the set-up:
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/opcount --path runtime --backend uring --ops 20000
//! ```

use clap::{Parser, ValueEnum};
use ringport::{Backend, Completion, Op};
use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

#[derive(Copy, Clone, ValueEnum, Debug)]
enum Path {
    /// The raw io-uring crate: push 32 nops, submit and wait, drain.
    Raw,
    /// A ringport driver: submit 32 nops, wait for all.
    Driver,
    /// The runtime: 32 tasks, each awaiting one nop at a time.
    Runtime,
}

#[derive(Parser, Debug)]
#[command(about = "Runs N nops through one path, for instruction counting")]
struct Args {
    /// Which path the nops take.
    #[arg(long, value_enum, default_value = "runtime")]
    path: Path,
    /// The backend, for the driver and runtime paths.
    #[arg(long, default_value = "uring")]
    backend: Backend,
    /// How many nops (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
}

const BATCH: u64 = 32;

fn raw(ops: u64) -> std::io::Result<u64> {
    let mut ring = io_uring::IoUring::new(256)?;
    let nop = io_uring::opcode::Nop::new().build();
    let mut done = 0;
    while done < ops {
        {
            let mut sq = ring.submission();
            for i in 0..BATCH {
                // SAFETY: a nop references no memory.
                unsafe { sq.push(&nop.clone().user_data(i)) }
                    .map_err(|_| std::io::Error::other("submission queue full"))?;
            }
        }
        let mut got = 0;
        while got < BATCH {
            ring.submit_and_wait((BATCH - got) as usize)?;
            got += ring.completion().count() as u64;
        }
        done += got;
    }
    Ok(done)
}

fn driver(b: Backend, ops: u64) -> std::io::Result<u64> {
    let mut d = ringport::driver(b)?;
    let mut out: Vec<Completion> = Vec::with_capacity(BATCH as usize);
    let mut done = 0;
    while done < ops {
        for i in 0..BATCH {
            d.submit(Op::Nop, i, None).map_err(|e| e.error)?;
        }
        while (out.len() as u64) < BATCH {
            let missing = BATCH as usize - out.len();
            d.wait(&mut out, missing, Some(Duration::from_secs(5)))?;
        }
        done += out.len() as u64;
        out.clear();
    }
    Ok(done)
}

fn runtime(b: Backend, ops: u64) -> std::io::Result<u64> {
    let rt = ringport::Runtime::with_backend(b)?;
    rt.block_on(async move {
        let count = Rc::new(Cell::new(0u64));
        let per_task = ops.div_ceil(BATCH);
        let mut handles = Vec::new();
        for _ in 0..BATCH {
            let count = count.clone();
            handles.push(ringport::spawn(async move {
                for _ in 0..per_task {
                    ringport::submit(Op::Nop, None).await.0?;
                    count.set(count.get() + 1);
                }
                Ok::<_, std::io::Error>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        Ok(count.get())
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    let r = match a.path {
        Path::Raw => raw(a.ops),
        Path::Driver => driver(a.backend, a.ops),
        Path::Runtime => runtime(a.backend, a.ops),
    };
    match r {
        Ok(n) => {
            println!("{n} nops through {:?} ({})", a.path, a.backend);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("opcount: {e}");
            ExitCode::FAILURE
        }
    }
}
