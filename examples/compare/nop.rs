//! `nop`: op round-trips, through the raw io-uring crate (the physical limit),
//! the ringport driver, and the async runtime.

use crate::measure::{cpu_self, machine_cpu, other_load_note, run_loop, Lat, Measured};
use ringport::{Backend, Completion, Driver, Op};
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Batches per round of the timed loops (the clock is read once a round).
const ROUND: usize = 64;

/// The raw `io-uring` crate loop: push `batch` nops, submit-and-wait for all,
/// drain. A default ring (no setup flags), as a program using the crate
/// directly would have it.
pub fn raw_uring(batch: usize, warmup: Duration, dur: Duration) -> io::Result<Measured> {
    let mut ring = io_uring::IoUring::new(256)?;
    let nop = io_uring::opcode::Nop::new().build();
    run_loop(warmup, dur, |sample, lat| {
        let mut ops = 0u64;
        for k in 0..ROUND {
            let t = (sample && k == 0).then(Instant::now);
            {
                let mut sq = ring.submission();
                for i in 0..batch {
                    // SAFETY: a nop references no memory.
                    unsafe { sq.push(&nop.clone().user_data(i as u64)) }
                        .map_err(|_| io::Error::other("submission queue full"))?;
                }
            }
            let mut got = 0;
            while got < batch {
                ring.submit_and_wait(batch - got)?;
                got += ring.completion().count();
            }
            if let Some(t) = t {
                lat.record(t.elapsed());
            }
            ops += got as u64;
        }
        Ok(ops)
    })
}

/// Through a ringport `Driver`: submit `batch` nops, wait for all.
pub fn driver(b: Backend, batch: usize, warmup: Duration, dur: Duration) -> io::Result<Measured> {
    let mut d = ringport::driver(b)?;
    run_driver(&mut *d, batch, warmup, dur)
}

pub fn run_driver(
    d: &mut dyn Driver,
    batch: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let mut out: Vec<Completion> = Vec::with_capacity(batch);
    run_loop(warmup, dur, |sample, lat| {
        let mut ops = 0u64;
        for k in 0..ROUND {
            let t = (sample && k == 0).then(Instant::now);
            for i in 0..batch {
                d.submit(Op::Nop, i as u64, None).map_err(|e| e.error)?;
            }
            while out.len() < batch {
                let missing = batch - out.len();
                d.wait(&mut out, missing, Some(Duration::from_secs(5)))?;
            }
            if let Some(t) = t {
                lat.record(t.elapsed());
            }
            ops += out.len() as u64;
            out.clear();
        }
        Ok(ops)
    })
}

/// Through the async runtime: `tasks` tasks each awaiting one nop at a time.
pub fn runtime(b: Backend, tasks: usize, warmup: Duration, dur: Duration) -> io::Result<Measured> {
    let rt = ringport::Runtime::with_backend(b)?;
    rt.block_on(async move {
        let stop = Rc::new(Cell::new(false));
        let count = Rc::new(Cell::new(0u64));
        let lat = Rc::new(RefCell::new(Lat::new()));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (stop, count, lat) = (stop.clone(), count.clone(), lat.clone());
            handles.push(ringport::spawn(async move {
                let mut n = 0u64;
                while !stop.get() {
                    let t = (n % ROUND as u64 == 0).then(Instant::now);
                    let (r, _) = ringport::submit(Op::Nop, None).await;
                    r?;
                    if let Some(t) = t {
                        lat.borrow_mut().record(t.elapsed());
                    }
                    n += 1;
                    count.set(count.get() + 1);
                }
                Ok::<_, io::Error>(())
            }));
        }
        ringport::sleep(warmup).await?;
        lat.borrow_mut().reset();
        let probe = crate::usage::Probe::start();
        let (c0, cpu0, t0) = (count.get(), cpu_self(), Instant::now());
        let m0 = machine_cpu();
        ringport::sleep(dur).await?;
        let (c1, cpu1, secs) = (count.get(), cpu_self(), t0.elapsed().as_secs_f64());
        stop.set(true);
        for h in handles {
            h.await??;
        }
        let lat = lat.borrow();
        let mut m = Measured::from_parts(c1 - c0, secs, Some(cpu1 - cpu0), &lat);
        m.note = other_load_note(m0, machine_cpu(), cpu1 - cpu0, secs);
        probe.finish(c1 - c0, &mut m);
        Ok(m)
    })
}
