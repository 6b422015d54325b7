//! Where the time goes: per op, the user and system CPU, the voluntary and
//! involuntary context switches (`getrusage(RUSAGE_SELF)`: the whole
//! process, every thread) and the syscalls by kind, counted with the
//! kernel's syscall tracepoints through `perf_event_open` on every thread
//! of this process (the process doing the I/O: the load client is another
//! one). The counters are opened when a measured window starts, so threads
//! that start later are not counted; every workload starts its threads
//! before its window.

use crate::measure::Measured;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether syscalls are counted (off with `--no-syscalls`).
pub static COUNT_SYSCALLS: AtomicBool = AtomicBool::new(true);

/// The syscalls counted by kind (any other is only in the total).
/// The most telling first: with many threads only a prefix is counted.
const KINDS: [&str; 24] = [
    "read",
    "write",
    "recvfrom",
    "sendto",
    "writev",
    "futex",
    "sched_yield",
    "io_uring_enter",
    "epoll_wait",
    "pread64",
    "pwrite64",
    "preadv2",
    "recvmsg",
    "sendmsg",
    "epoll_pwait",
    "epoll_ctl",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "rt_sigtimedwait",
    "accept4",
    "close",
    "io_submit",
];

/// Counters kept open for the whole run (see `Probe::open`).
static ANCHORS: std::sync::OnceLock<Vec<File>> = std::sync::OnceLock::new();

/// At most this many counters (fds) per window: with more threads than
/// fit, only the total is counted.
const MAX_COUNTERS: usize = 6000;

/// What one op cost, from a measured window.
#[derive(Clone, Debug, Default)]
pub struct PerOp {
    pub user_us: f64,
    pub sys_us: f64,
    pub vcsw: f64,
    pub ivcsw: f64,
    /// Every syscall of the process, when the tracepoints could be read.
    pub syscalls: Option<f64>,
    /// The counted kinds with a non-zero count, largest first.
    pub by_kind: Vec<(&'static str, f64)>,
    /// Why syscalls are missing or partial; empty when complete.
    pub syscalls_note: String,
}

#[derive(Clone, Copy, Default)]
struct Ru {
    user: f64,
    sys: f64,
    vcsw: f64,
    ivcsw: f64,
}

fn ru_self() -> Ru {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Ru::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ru {
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        vcsw: ru.ru_nvcsw as f64,
        ivcsw: ru.ru_nivcsw as f64,
    }
}

/// The tracepoint id of `events/<group>/<name>`, if tracefs is readable.
fn tracepoint_id(group: &str, name: &str) -> Option<u64> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{group}/{name}/id")).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// `struct perf_event_attr`, as far as it is used here (the rest zero).
#[repr(C)]
struct PerfAttr {
    kind: u32,
    size: u32,
    config: u64,
    rest: [u64; 14],
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// A counter of tracepoint `id` on thread `tid`.
fn open_counter(id: u64, tid: i32) -> io::Result<File> {
    let attr = PerfAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfAttr>() as u32,
        config: id,
        rest: [0; 14],
    };
    // SAFETY: attr is a valid perf_event_attr of the size it states (the
    // fields after `config` zero); the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfAttr,
            tid,
            -1i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

fn read_counter(f: &mut File) -> u64 {
    let mut b = [0u8; 8];
    match f.read_exact(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => 0,
    }
}

fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A measured window's start: the rusage then, and the syscall counters.
pub struct Probe {
    ru: Ru,
    total_id: Option<u64>,
    kinds: Vec<(usize, u64)>,
    tids: Vec<i32>,
    /// (kind index or None for the total, counter, value at the start,
    /// whether it counts this thread)
    counters: Vec<(Option<usize>, File, u64, bool)>,
    note: String,
}

impl Probe {
    /// Opens the counters on every current thread and starts the window.
    pub fn start() -> Probe {
        let mut p = Probe::open();
        p.begin();
        p
    }

    /// Opens the counters on every current thread (slow with many threads:
    /// do it before the window when the harness can).
    pub fn open() -> Probe {
        let mut p = Probe {
            ru: Ru::default(),
            total_id: None,
            kinds: Vec::new(),
            tids: Vec::new(),
            counters: Vec::new(),
            note: String::new(),
        };
        if !COUNT_SYSCALLS.load(Ordering::Relaxed) {
            p.note = "syscalls: not counted (--no-syscalls)".into();
            return p;
        }
        let Some(total) = tracepoint_id("raw_syscalls", "sys_enter") else {
            p.note = "syscalls: not readable here (no tracefs)".into();
            return p;
        };
        p.total_id = Some(total);
        p.kinds = KINDS
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((i, tracepoint_id("syscalls", &format!("sys_enter_{k}"))?)))
            .collect();
        // With many threads (thread per connection) only the kinds that fit
        // in the budget are counted, in KINDS' order.
        let n = threads().len().max(1);
        // Counters are switched at every context switch of their thread: a
        // thread per connection gets few, so counting perturbs it less.
        let fit = if n > 64 {
            4
        } else {
            (MAX_COUNTERS / n).saturating_sub(1)
        };
        if fit < p.kinds.len() {
            p.kinds.truncate(fit);
            p.note = format!(
                "syscalls by kind: only {} counted ({n} threads)",
                p.kinds
                    .iter()
                    .map(|(i, _)| KINDS[*i])
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // Enabling a tracepoint's first counter and disabling its last one
        // patch the kernel (hundreds of ms per window): counters opened
        // once on this thread and kept for the run hold them enabled.
        ANCHORS.get_or_init(|| {
            std::iter::once(total)
                .chain(p.kinds.iter().map(|k| k.1))
                .filter_map(|id| open_counter(id, 0).ok())
                .collect()
        });
        p.add_threads();
        p
    }

    /// Opens counters on the threads that have none yet.
    fn add_threads(&mut self) {
        let Some(total) = self.total_id else { return };
        // SAFETY: gettid has no arguments.
        let me = unsafe { libc::gettid() };
        for tid in threads() {
            if self.tids.contains(&tid) {
                continue;
            }
            match open_counter(total, tid) {
                Ok(f) => self.counters.push((None, f, 0, tid == me)),
                // The thread may have ended meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => {
                    self.counters.clear();
                    self.total_id = None;
                    self.note = format!("syscalls: not readable here ({e})");
                    return;
                }
            }
            self.tids.push(tid);
            for &(i, id) in &self.kinds {
                if let Ok(f) = open_counter(id, tid) {
                    self.counters.push((Some(i), f, 0, tid == me));
                }
            }
        }
    }

    /// Starts the window: counters on threads started since `open`, every
    /// counter's value and the rusage, now.
    pub fn begin(&mut self) {
        self.add_threads();
        // This thread's own counters last (and first in `stop`), so the
        // reads of the counters are not counted.
        for own in [false, true] {
            for (_, f, v0, mine) in &mut self.counters {
                if *mine == own {
                    *v0 = read_counter(f);
                }
            }
        }
        self.ru = ru_self();
    }

    /// Ends the window now (rusage and counters read) and fills `m.per_op`
    /// for `ops` ops.
    pub fn finish(self, ops: u64, m: &mut Measured) {
        self.stop().finish(ops, m)
    }

    /// Ends the window now; the op count may come later.
    pub fn stop(self) -> Stopped {
        let ru = ru_self();
        let mut total = 0u64;
        let mut kinds = [0u64; KINDS.len()];
        let have = !self.counters.is_empty();
        let mut counters = self.counters;
        counters.sort_by_key(|c| !c.3);
        for (k, mut f, v0, _) in counters {
            let v = read_counter(&mut f).saturating_sub(v0);
            match k {
                None => total += v,
                Some(i) => kinds[i] += v,
            }
        }
        Stopped {
            ru0: self.ru,
            ru,
            total: have.then_some(total),
            kinds,
            note: self.note,
        }
    }
}

/// A window's end, waiting for its op count.
pub struct Stopped {
    ru0: Ru,
    ru: Ru,
    total: Option<u64>,
    kinds: [u64; KINDS.len()],
    note: String,
}

impl Stopped {
    /// Fills `m.per_op` for `ops` ops.
    pub fn finish(self, ops: u64, m: &mut Measured) {
        if ops == 0 {
            return;
        }
        let n = ops as f64;
        let (ru, r0) = (self.ru, self.ru0);
        let mut by_kind: Vec<(&'static str, f64)> = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0)
            .map(|(i, &v)| (KINDS[i], v as f64 / n))
            .collect();
        by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
        m.per_op = Some(PerOp {
            user_us: (ru.user - r0.user) / n * 1e6,
            sys_us: (ru.sys - r0.sys) / n * 1e6,
            vcsw: (ru.vcsw - r0.vcsw) / n,
            ivcsw: (ru.ivcsw - r0.ivcsw) / n,
            syscalls: self.total.map(|t| t as f64 / n),
            by_kind,
            syscalls_note: self.note,
        });
    }
}
