//! `nop`: op round-trips, through the raw io-uring crate (the physical limit),
//! the ringport driver, and the async runtime.

use ringport::{Backend, Completion, Driver, Op};
use std::time::{Duration, Instant};

/// Ops per second of the raw `io-uring` crate loop: push `batch` nops,
/// submit-and-wait for all, drain.
pub fn raw_uring(batch: usize, dur: Duration) -> std::io::Result<f64> {
    let mut ring = io_uring::IoUring::new(256)?;
    let nop = io_uring::opcode::Nop::new().build();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            {
                let mut sq = ring.submission();
                for i in 0..batch {
                    // SAFETY: a nop references no memory.
                    unsafe { sq.push(&nop.clone().user_data(i as u64)) }.expect("sq room");
                }
            }
            ring.submit_and_wait(batch)?;
            let n = ring.completion().count();
            ops += n as u64;
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Ops per second through a ringport `Driver`: submit `batch` nops, wait for all.
pub fn driver(b: Backend, batch: usize, dur: Duration) -> std::io::Result<f64> {
    let mut d = ringport::driver(b)?;
    run_driver(&mut *d, batch, dur)
}

pub fn run_driver(d: &mut dyn Driver, batch: usize, dur: Duration) -> std::io::Result<f64> {
    let mut out: Vec<Completion> = Vec::with_capacity(batch);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            for i in 0..batch {
                d.submit(Op::Nop, i as u64, None).map_err(|e| e.error)?;
            }
            while out.len() < batch {
                let missing = batch - out.len();
                d.wait(&mut out, missing, None)?;
            }
            ops += out.len() as u64;
            out.clear();
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Ops per second through the async runtime: `batch` tasks each awaiting nops.
pub fn runtime(b: Backend, batch: usize, dur: Duration) -> std::io::Result<f64> {
    let rt = ringport::Runtime::with_backend(b)?;
    rt.block_on(async move {
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..batch {
            handles.push(ringport::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < dur {
                    for _ in 0..64 {
                        let (r, _) = ringport::submit(Op::Nop, None).await;
                        r.expect("nop");
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut ops = 0;
        for h in handles {
            ops += h.await;
        }
        Ok(ops as f64 / start.elapsed().as_secs_f64())
    })
}
