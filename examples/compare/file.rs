//! `file-randread` and `file-write`: the test files, the plain-syscall
//! baselines, ringport (driver and runtime) on every backend, and fio.

use crate::measure::{run_loop, Measured, Rng, Shared};
use ringport::{Backend, Completion, Driver, Op, PollerKind, ShimDriver};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The block size of `file-randread`.
pub const BLOCK: usize = 4096;
/// The write size of `file-write`.
pub const WBLOCK: usize = 128 * 1024;

/// A file in the page cache, removed on drop, and a random permutation of
/// its 4 KiB blocks (so the reads cover the whole file, each block once per
/// pass).
pub struct TestFile {
    pub path: PathBuf,
    pub size: u64,
    pub offsets: Arc<Vec<u64>>,
}

impl TestFile {
    /// Writes `size` bytes of pseudo-random data, fsyncs (so no writeback
    /// runs during the measurements) and reads it back once (so it is in the
    /// page cache).
    pub fn create(dir: &Path, name: &str, size: u64) -> io::Result<TestFile> {
        let path = dir.join(format!(
            "ringport-compare-{}-{name}.dat",
            std::process::id()
        ));
        let tf = TestFile {
            path,
            size,
            offsets: Arc::new(Vec::new()),
        };
        let f = std::fs::File::create(&tf.path)?;
        let mut rng = Rng::new(0x5eed ^ size);
        let mut chunk = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < size {
            for w in chunk.chunks_exact_mut(8) {
                w.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let n = (size - off).min(chunk.len() as u64) as usize;
            f.write_all_at(&chunk[..n], off)?;
            off += n as u64;
        }
        f.sync_all()?;
        drop(f);
        let f = std::fs::File::open(&tf.path)?;
        let mut off = 0u64;
        while off < size {
            let n = f.read_at(&mut chunk, off)?;
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        let blocks = size / BLOCK as u64;
        let mut perm: Vec<u64> = (0..blocks).map(|b| b * BLOCK as u64).collect();
        for i in (1..perm.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        let mut tf = tf;
        tf.offsets = Arc::new(perm);
        Ok(tf)
    }

    /// A fresh cursor over the permutation for one measurement.
    pub fn shared(&self) -> Arc<Shared> {
        Shared::new(self.offsets.clone())
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn short_read(n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short read: {n} of {BLOCK} bytes"),
    )
}

/// The baseline: `pread` in a loop on one thread, over the same offsets.
pub fn pread_loop(tf: &TestFile, warmup: Duration, dur: Duration) -> io::Result<Measured> {
    let f = std::fs::File::open(&tf.path)?;
    let mut buf = vec![0u8; BLOCK];
    let offs = tf.offsets.clone();
    let mut i = 0usize;
    run_loop(warmup, dur, |sample, lat| {
        for k in 0..64 {
            let off = offs[i % offs.len()];
            i += 1;
            let t = (sample && k == 0).then(Instant::now);
            let n = f.read_at(&mut buf, off)?;
            if n != BLOCK {
                return Err(short_read(n));
            }
            if let Some(t) = t {
                lat.record(t.elapsed());
            }
        }
        Ok(64)
    })
}

/// Through a ringport `Driver`: keep `qd` reads in flight; each completion
/// resubmits its buffer at the next offset.
/// A driver for `b`; with `pool_only`, a shim whose file reads all go to its
/// thread pool (no inline `RWF_NOWAIT` attempt), to measure that model.
fn open_driver(b: Backend, pool_only: bool) -> io::Result<Box<dyn Driver>> {
    if !pool_only {
        return ringport::driver(b);
    }
    let kind = match b {
        Backend::Epoll => PollerKind::Epoll,
        Backend::Poll => PollerKind::Poll,
        Backend::Select => PollerKind::Select,
        Backend::Sigio => PollerKind::Sigio,
        _ => {
            return Err(io::Error::other(format!(
                "{b} has no thread pool to measure alone"
            )))
        }
    };
    let d = ShimDriver::builder(kind).nowait_reads(false).build()?;
    Ok(Box::new(d))
}

pub fn driver_randread(
    b: Backend,
    pool_only: bool,
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    driver_randread_with(open_driver(b, pool_only)?, false, tf, qd, warmup, dur)
}

/// [`driver_randread`] with registered buffers: `Op::ReadFixed` from one
/// `FixedBufRegistry` of `qd` blocks (READ_FIXED on io_uring, a plain read
/// elsewhere). On io_uring, `registered` says whether the ring registers
/// the buffers (off: the same ops go as plain reads, the comparison's other
/// half) and `files` whether it registers the file too (IOSQE_FIXED_FILE).
pub fn driver_randread_fixed(
    b: Backend,
    (registered, files): (bool, bool),
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let d: Box<dyn Driver> = match b {
        #[cfg(target_os = "linux")]
        Backend::Uring => Box::new(
            ringport::UringDriver::builder()
                .fixed_buffers(registered)
                .register_files(files)
                .build()?,
        ),
        _ => {
            let _ = (registered, files);
            ringport::driver(b)?
        }
    };
    driver_randread_with(d, true, tf, qd, warmup, dur)
}

fn driver_randread_with(
    mut d: Box<dyn Driver>,
    fixed: bool,
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let f = std::fs::File::open(&tf.path)?;
    let fd = f.as_raw_fd();
    let offs = tf.offsets.clone();
    let mut i = 0usize;
    let mut next = || {
        i += 1;
        ringport::Offset::At(offs[(i - 1) % offs.len()])
    };
    let reg = ringport::FixedBufRegistry::new(qd, BLOCK)?;
    let mut started: Vec<Option<Instant>> = vec![None; qd];
    for tok in 0..qd {
        let op = if fixed {
            Op::ReadFixed {
                fd,
                offset: next(),
                buf: reg.take()?,
            }
        } else {
            Op::Read {
                fd,
                offset: next(),
                buf: ringport::AnyBufMut::new(vec![0u8; BLOCK]),
            }
        };
        d.submit(op, tok as u64, None).map_err(|e| e.error)?;
    }
    let mut out: Vec<Completion> = Vec::with_capacity(qd);
    let res = run_loop(warmup, dur, |sample, lat| {
        let mut ops = 0u64;
        let mut sample = sample;
        while ops < 64 {
            d.wait(&mut out, 1, Some(Duration::from_secs(5)))?;
            if out.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no completion in 5 s",
                ));
            }
            for c in out.drain(..) {
                let tok = c.token as usize;
                match c.result {
                    Ok(BLOCK) => {}
                    Ok(n) => return Err(short_read(n)),
                    Err(e) => return Err(e),
                }
                if let Some(t) = started[tok].take() {
                    lat.record(t.elapsed());
                }
                if sample {
                    started[tok] = Some(Instant::now());
                    sample = false;
                }
                // The same buffer goes again, at the next offset.
                let op = match c.op {
                    Op::Read { buf, .. } => Op::Read {
                        fd,
                        offset: next(),
                        buf,
                    },
                    Op::ReadFixed { buf, .. } => Op::ReadFixed {
                        fd,
                        offset: next(),
                        buf,
                    },
                    _ => return Err(io::Error::other("the driver returned another op")),
                };
                d.submit(op, tok as u64, None).map_err(|e| e.error)?;
                ops += 1;
            }
        }
        Ok(ops)
    });
    // Collect what is still in flight before the buffers' owner goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.in_flight() > 0 && Instant::now() < deadline {
        d.wait(&mut out, 1, Some(Duration::from_millis(100)))?;
        out.clear();
    }
    drop(d);
    drop(f);
    res
}

/// Through the ringport runtime: `qd` tasks, each awaiting `File::read_at`.
pub fn runtime_randread(
    b: Backend,
    pool_only: bool,
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let rt = ringport::Runtime::from_driver(open_driver(b, pool_only)?)?;
    let sh = tf.shared();
    let path = tf.path.clone();
    rt.block_on(async move {
        let file = std::rc::Rc::new(ringport::File::open(&path).await?);
        let mut tasks = Vec::new();
        for _ in 0..qd {
            let (sh, file) = (sh.clone(), file.clone());
            tasks.push(ringport::spawn(async move {
                let mut buf = vec![0u8; BLOCK];
                let mut n = 0;
                while !sh.stopped() {
                    let t = sh.start(n);
                    let (r, b) = file.read_at(buf, sh.next_offset()).await;
                    buf = b;
                    match r? {
                        BLOCK => sh.done(t),
                        k => return Err(short_read(k)),
                    }
                    n += 1;
                }
                Ok::<_, io::Error>(())
            }));
        }
        ringport::sleep(warmup).await?;
        let w = sh.begin();
        ringport::sleep(dur).await?;
        let m = sh.end(w);
        for t in tasks {
            t.await??;
        }
        Ok(m)
    })
}

/// The `file-write` baseline: std `write_all_at` of 128 KiB blocks from
/// offset 0 to `size`, then `fsync`, again and again.
pub fn std_write(path: &Path, size: u64, warmup: Duration, dur: Duration) -> io::Result<Measured> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let buf = write_block();
    run_loop(warmup, dur, |_sample, lat| {
        let mut off = 0;
        let mut ops = 0;
        while off < size {
            let t = Instant::now();
            f.write_all_at(&buf, off)?;
            lat.record(t.elapsed());
            off += WBLOCK as u64;
            ops += 1;
        }
        f.sync_all()?;
        Ok(ops)
    })
}

/// The block `file-write` writes.
pub fn write_block() -> Vec<u8> {
    let mut rng = Rng::new(42);
    (0..WBLOCK).map(|_| rng.next_u64() as u8).collect()
}

/// `file-write` through the ringport runtime: one task, sequential
/// `write_all_at` then `sync_all`.
pub fn runtime_write(
    b: Backend,
    path: &Path,
    size: u64,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let rt = ringport::Runtime::with_backend(b)?;
    let sh = Shared::new(Arc::new(vec![0]));
    let path = path.to_path_buf();
    rt.block_on(async move {
        let file = ringport::OpenOptions::new()
            .write(true)
            .create(true)
            .open(&path)
            .await?;
        let sh2 = sh.clone();
        let task = ringport::spawn(async move {
            let mut buf = write_block();
            let mut n = 0;
            while !sh2.stopped() {
                let mut off = 0;
                while off < size {
                    let t = sh2.start(n);
                    let (r, b) = file.write_all_at(buf, off).await;
                    buf = b;
                    r?;
                    sh2.done(t);
                    off += WBLOCK as u64;
                    n += 1;
                }
                file.sync_all().await?;
            }
            Ok::<_, io::Error>(())
        });
        ringport::sleep(warmup).await?;
        let w = sh.begin();
        ringport::sleep(dur).await?;
        let m = sh.end(w);
        task.await??;
        Ok(m)
    })
}

/// Whether `fio` is on PATH.
pub fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The fio engines the comparison runs: the native completion interface and
/// glibc's POSIX aio (the reference for the aio backend).
pub const FIO_ENGINES: [&str; 2] = ["io_uring", "posixaio"];

/// The model of a fio engine's row.
pub fn fio_model(engine: &str) -> crate::report::Model {
    if engine == "posixaio" {
        crate::report::Model::AsyncAio
    } else {
        crate::report::Model::AsyncUring
    }
}

/// Runs fio's `engine` on the same file (random 4 KiB reads, page cache,
/// `--invalidate=0`) and reads its JSON output: IOPS, the completion-latency
/// percentiles and its CPU share.
pub fn fio_randread(
    tf: &TestFile,
    engine: &str,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let out = Command::new("fio")
        .args([
            "--name=randread",
            &format!("--filename={}", tf.path.display()),
            &format!("--ioengine={engine}"),
            &format!("--iodepth={qd}"),
            "--invalidate=0",
            "--rw=randread",
            "--bs=4k",
            &format!("--size={}", tf.size),
            "--time_based",
            &format!("--runtime={}", ms(dur)),
            &format!("--ramp_time={}", ms(warmup)),
            "--output-format=json",
        ])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_fio_json(&String::from_utf8_lossy(&out.stdout))
}

/// The number after `"key" :` at or after `from`, and where it ends.
fn json_field(s: &str, from: usize, key: &str) -> Option<(f64, usize)> {
    let pat = format!("\"{key}\"");
    let at = from + s.get(from..)?.find(&pat)? + pat.len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))
        .unwrap_or(rest.len());
    let v = rest[..end].parse().ok()?;
    Some((v, s.len() - rest.len() + end))
}

/// Reads what the comparison needs from fio's JSON (its first job's read
/// side), without a JSON library.
fn parse_fio_json(s: &str) -> io::Result<Measured> {
    let bad = |what: &str| io::Error::other(format!("fio's JSON output has no {what}"));
    let read = s.find("\"read\"").ok_or_else(|| bad("read section"))?;
    let (iops, _) = json_field(s, read, "iops").ok_or_else(|| bad("iops"))?;
    let (ios, _) = json_field(s, read, "total_ios").ok_or_else(|| bad("total_ios"))?;
    let clat = read
        + s[read..]
            .find("\"clat_ns\"")
            .ok_or_else(|| bad("clat_ns"))?;
    let pct = |p: &str| json_field(s, clat, p).map(|(v, _)| v / 1000.0);
    let (usr, _) = json_field(s, 0, "usr_cpu").ok_or_else(|| bad("usr_cpu"))?;
    let (sys, _) = json_field(s, 0, "sys_cpu").ok_or_else(|| bad("sys_cpu"))?;
    let (runtime_ms, _) = json_field(s, read, "runtime").ok_or_else(|| bad("runtime"))?;
    let cpu_s = (usr + sys) / 100.0 * runtime_ms / 1000.0;
    Ok(Measured {
        ops_per_sec: iops,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p999_us: pct("99.900000"),
        cpu_s_per_mop: (ios > 0.0).then(|| cpu_s / ios * 1e6),
        note: "fio's clat (submit to reap) and CPU".into(),
        per_op: None,
    })
}
