//! What every workload measures: throughput, a latency histogram, CPU time;
//! and the helpers around it (CPU pinning, sampling, timed loops).

use hdrhistogram::Histogram;
use std::io;
use std::time::{Duration, Instant};

/// One latency sample is taken every `SAMPLE_EVERY` ops (or rounds) in the
/// in-process hot loops: reading the clock twice per op would cost a visible
/// share of a 100 ns op. The same rate is used for every variant.
pub const SAMPLE_EVERY: u64 = 8;

/// A latency histogram in nanoseconds (1 ns .. 100 s, 3 significant digits).
pub struct Lat(Histogram<u64>);

impl Lat {
    pub fn new() -> Lat {
        Lat(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds"))
    }
    pub fn record(&mut self, d: Duration) {
        self.record_ns(d.as_nanos() as u64);
    }
    pub fn record_ns(&mut self, ns: u64) {
        let _ = self.0.record(ns.clamp(1, 100_000_000_000));
    }
    pub fn reset(&mut self) {
        self.0.reset();
    }
    /// The `q` quantile (0..1) in microseconds; None without samples.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            None
        } else {
            Some(self.0.value_at_quantile(q) as f64 / 1000.0)
        }
    }
}

/// The outcome of one measured run.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub ops_per_sec: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// CPU seconds (user + system) of the process doing the I/O, per
    /// million ops.
    pub cpu_s_per_mop: Option<f64>,
    /// Extra information for the table (e.g. MB/s, errors).
    pub note: String,
    /// Where the time went, per op (CPU, context switches, syscalls).
    pub per_op: Option<crate::usage::PerOp>,
}

impl Measured {
    pub fn from_parts(ops: u64, secs: f64, cpu_s: Option<f64>, lat: &Lat) -> Measured {
        let ops_per_sec = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        Measured {
            ops_per_sec,
            p50_us: lat.quantile_us(0.50),
            p99_us: lat.quantile_us(0.99),
            p999_us: lat.quantile_us(0.999),
            cpu_s_per_mop: cpu_s.filter(|_| ops > 0).map(|c| c / ops as f64 * 1e6),
            note: String::new(),
            per_op: None,
        }
    }
}

/// User + system CPU time of this whole process (every thread, the
/// kernel's io_uring workers included: they belong to the process).
pub fn cpu_self() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    let r = unsafe { libc::getrusage(who, &mut ru) };
    if r != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The whole machine's task CPU time (user + nice + system, every CPU) and
/// the time the hypervisor stole, in seconds, from `/proc/stat`.
pub fn machine_cpu() -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
    (get(0) + get(1) + get(2), get(7))
}

/// CPU used on this machine by anything but this run (`own` CPU seconds of
/// the processes measured), between two [`machine_cpu`] readings, as a
/// share of one CPU over `secs`; a note when it is large enough to matter.
pub fn other_load_note(before: (f64, f64), after: (f64, f64), own: f64, secs: f64) -> String {
    let others = ((after.0 - before.0) - own).max(0.0) / secs;
    let steal = (after.1 - before.1).max(0.0) / secs;
    let mut v = Vec::new();
    if others >= 0.10 {
        v.push(format!("other load {:.0}%", others * 100.0));
    }
    if steal >= 0.05 {
        v.push(format!("steal {:.0}%", steal * 100.0));
    }
    v.join(", ")
}

/// Appends `extra` to a note, with a separator.
pub fn add_note(note: &mut String, extra: &str) {
    if extra.is_empty() {
        return;
    }
    if !note.is_empty() {
        note.push_str("; ");
    }
    note.push_str(extra);
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid cpu_set_t of the size we pass.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE, the set's capacity.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is a CPU number reported by sched_getaffinity (< CPU_SETSIZE).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `round` repeatedly: first for `warmup` (nothing recorded), then for
/// `dur`, measuring ops, wall time, process CPU and the latency samples
/// `round` records. `round(sample, lat)` does a chunk of work and returns how
/// many ops it did; when `sample` is true it should time one op (or batch)
/// into `lat`.
pub fn run_loop(
    warmup: Duration,
    dur: Duration,
    mut round: impl FnMut(bool, &mut Lat) -> io::Result<u64>,
) -> io::Result<Measured> {
    let mut lat = Lat::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < warmup {
        round(n % SAMPLE_EVERY == 0, &mut lat)?;
        n += 1;
    }
    lat.reset();
    let probe = crate::usage::Probe::start();
    let cpu0 = cpu_self();
    let m0 = machine_cpu();
    let start = Instant::now();
    let mut ops = 0u64;
    let mut n = 0u64;
    loop {
        ops += round(n % SAMPLE_EVERY == 0, &mut lat)?;
        n += 1;
        if start.elapsed() >= dur {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_self() - cpu0;
    let mut m = Measured::from_parts(ops, secs, Some(cpu), &lat);
    m.note = other_load_note(m0, machine_cpu(), cpu, secs);
    probe.finish(ops, &mut m);
    Ok(m)
}

/// A small deterministic PRNG (xorshift64*), for permutations and payloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// What the tasks of an async workload share: a stop flag, an op count, the
/// latency samples and a cursor into the offsets. Atomics and a mutex, so
/// the same type serves single-threaded runtimes and thread pools.
pub struct Shared {
    stop: std::sync::atomic::AtomicBool,
    count: std::sync::atomic::AtomicU64,
    cursor: std::sync::atomic::AtomicUsize,
    lat: std::sync::Mutex<Lat>,
    /// The offsets to read, in order (a permutation of the file's blocks).
    pub offsets: std::sync::Arc<Vec<u64>>,
}

/// The start of a measurement window.
pub struct Window {
    count: u64,
    cpu: f64,
    machine: (f64, f64),
    at: Instant,
    probe: crate::usage::Probe,
}

impl Shared {
    pub fn new(offsets: std::sync::Arc<Vec<u64>>) -> std::sync::Arc<Shared> {
        std::sync::Arc::new(Shared {
            stop: Default::default(),
            count: Default::default(),
            cursor: Default::default(),
            lat: std::sync::Mutex::new(Lat::new()),
            offsets,
        })
    }
    pub fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed)
    }
    /// The next offset (wrapping around the permutation).
    pub fn next_offset(&self) -> u64 {
        let i = self
            .cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.offsets[i % self.offsets.len()]
    }
    /// A start time when op number `n` of a task is to be sampled.
    pub fn start(&self, n: u64) -> Option<Instant> {
        (n % SAMPLE_EVERY == 0).then(Instant::now)
    }
    /// Counts one op and records its latency if it was sampled.
    pub fn done(&self, t: Option<Instant>) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = t {
            let d = t.elapsed();
            self.lat.lock().unwrap_or_else(|e| e.into_inner()).record(d);
        }
    }
    /// Starts the measured window (after the warm-up).
    pub fn begin(&self) -> Window {
        self.lat.lock().unwrap_or_else(|e| e.into_inner()).reset();
        let probe = crate::usage::Probe::start();
        Window {
            probe,
            count: self.count.load(std::sync::atomic::Ordering::Relaxed),
            cpu: cpu_self(),
            machine: machine_cpu(),
            at: Instant::now(),
        }
    }
    /// Ends the window and stops the tasks.
    pub fn end(&self, w: Window) -> Measured {
        let ops = self.count.load(std::sync::atomic::Ordering::Relaxed) - w.count;
        let cpu = cpu_self() - w.cpu;
        let secs = w.at.elapsed().as_secs_f64();
        self.stop();
        let lat = self.lat.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = Measured::from_parts(ops, secs, Some(cpu), &lat);
        m.note = other_load_note(w.machine, machine_cpu(), cpu, secs);
        w.probe.finish(ops, &mut m);
        m
    }
}
