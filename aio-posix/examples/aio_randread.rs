//! A small profiling aid for the aio driver: random 4 KiB reads of a
//! page-cached file at a queue depth, through `AioDriver` alone.
//!
//! `cargo run --release -p ringport-aio --example aio_randread -- QD SECONDS [signal|SPIN_µs]`
//! prints reads per second and the median latency. (`compare` is the
//! benchmark; this is for `perf` and `strace` runs of the driver alone.)

use ringport_aio::AioDriver;
use ringport_core::{AnyBufMut, Driver, Offset, Op};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
const SIZE: usize = 64 << 20;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let qd: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let signal = args.get(3).is_some_and(|s| s == "signal");
    let spin: Option<u64> = args.get(3).and_then(|s| s.parse().ok());
    let path = std::env::temp_dir().join(format!("ringport-aio-randread-{}", std::process::id()));
    std::fs::write(&path, vec![1u8; SIZE])?;
    let f = std::fs::File::open(&path)?;
    let fd = f.as_raw_fd();
    let mut b = AioDriver::builder().signal_per_request(signal);
    if let Some(us) = spin {
        b = b.spin(Duration::from_micros(us));
    }
    let mut d = b.build_with_epoll()?;
    let blocks = (SIZE / BLOCK) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * BLOCK as u64
    };
    let mut started = vec![Instant::now(); qd];
    for (t, at) in started.iter_mut().enumerate() {
        let op = Op::Read {
            fd,
            offset: Offset::At(next()),
            buf: AnyBufMut::new(vec![0u8; BLOCK]),
        };
        d.submit(op, t as u64, None).map_err(|e| e.error)?;
        *at = Instant::now();
    }
    let mut lat = Vec::new();
    let mut out = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        d.wait(&mut out, 1, Some(Duration::from_secs(5)))?;
        for c in out.drain(..) {
            let t = c.token as usize;
            c.result?;
            if n.is_multiple_of(16) {
                lat.push(started[t].elapsed());
            }
            n += 1;
            let Op::Read { buf, .. } = c.op else {
                unreachable!("a read comes back as a read");
            };
            let op = Op::Read {
                fd,
                offset: Offset::At(next()),
                buf,
            };
            started[t] = Instant::now();
            d.submit(op, t as u64, None).map_err(|e| e.error)?;
        }
    }
    let took = start.elapsed().as_secs_f64();
    while d.in_flight() > 0 {
        d.wait(&mut out, 1, Some(Duration::from_secs(1)))?;
        out.clear();
    }
    lat.sort();
    println!(
        "qd {qd} signal_per_request {signal} spin {spin:?}: {:.1}k reads/s, p50 {:.1} µs",
        n as f64 / took / 1e3,
        lat.get(lat.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    );
    drop(d);
    let _ = std::fs::remove_file(path);
    Ok(())
}
