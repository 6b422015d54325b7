//! What every case shares: the target under test and whether it can run
//! here (skip or fail), a driver wrapper that collects completions, temp
//! files, pipes, a drop-counting buffer, and child processes.

use ringport::{Completion, Driver, IoBuf, IoBufMut, Op, OpId, SubmitError};
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The variable listing backends whose absence fails the suite (comma-separated).
pub const REQUIRE_ENV: &str = "RINGPORT_REQUIRE_BACKENDS";

/// What the cases run against: a named factory of drivers. Every case makes
/// the drivers (and runtimes) it needs from it.
#[derive(Copy, Clone)]
pub struct Target {
    name: &'static str,
    make: fn() -> io::Result<Box<dyn Driver>>,
}

impl Target {
    /// A target called `name` whose drivers `make` builds. `name` must be the
    /// name of the module the [`conformance!`](crate::conformance) macro is
    /// expanded in: the cases that run in a child process find their child
    /// test as `<name>::<child>`.
    pub const fn new(name: &'static str, make: fn() -> io::Result<Box<dyn Driver>>) -> Target {
        Target { name, make }
    }
    /// The target's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// A new driver.
    pub fn driver(&self) -> io::Result<Box<dyn Driver>> {
        (self.make)()
    }
}

/// The target of one of this repository's backends.
impl From<ringport::Backend> for Target {
    fn from(b: ringport::Backend) -> Target {
        use ringport::Backend as B;
        // Each arm's closure captures nothing, so it is a plain `fn`.
        match b {
            B::Auto => Target::new("auto", || ringport::driver(B::Auto)),
            B::Uring => Target::new("uring", || ringport::driver(B::Uring)),
            B::Aio => Target::new("aio", || ringport::driver(B::Aio)),
            B::Epoll => Target::new("epoll", || ringport::driver(B::Epoll)),
            B::Poll => Target::new("poll", || ringport::driver(B::Poll)),
            B::Select => Target::new("select", || ringport::driver(B::Select)),
            B::Sigio => Target::new("sigio", || ringport::driver(B::Sigio)),
            B::Kqueue => Target::new("kqueue", || ringport::driver(B::Kqueue)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Whether `b` can run here. When it cannot, the case is reported as skipped
/// by name on stderr, or fails if `RINGPORT_REQUIRE_BACKENDS` lists `b`.
pub fn available(b: impl Into<Target>, case: &str) -> bool {
    let b: Target = b.into();
    match b.driver() {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var(REQUIRE_ENV).unwrap_or_default();
            if required.split(',').any(|r| r.trim() == b.name()) {
                panic!("{b} is required by {REQUIRE_ENV} but cannot run: {e}");
            }
            eprintln!("SKIPPED {b}::{case}: unavailable: {e}");
            false
        }
    }
}

/// A runtime over a new driver of `b` (the caller checked availability).
pub fn rt(b: impl Into<Target>) -> ringport_core::Runtime {
    ringport_core::Runtime::from_driver(b.into().driver().expect("driver"))
}

/// A driver plus the completions it has handed back and nobody took yet.
pub struct Drv {
    pub d: Box<dyn Driver>,
    pub done: Vec<Completion>,
}

impl Drv {
    pub fn new(b: impl Into<Target>) -> Drv {
        Drv {
            d: b.into().driver().expect("driver"),
            done: Vec::new(),
        }
    }

    pub fn nonblocking(&self) -> bool {
        self.d.capabilities().needs_nonblocking
    }

    /// Submits, riding out back-pressure (a full queue) by reaping.
    pub fn try_submit(
        &mut self,
        mut op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        let start = Instant::now();
        loop {
            match self.d.submit(op, token, deadline) {
                Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "back-pressure never eased"
                    );
                    op = e.op;
                    self.d
                        .wait(&mut self.done, 1, Some(Duration::from_millis(10)))
                        .expect("wait");
                }
                r => return r,
            }
        }
    }

    pub fn submit(&mut self, op: Op, token: u64) -> OpId {
        self.try_submit(op, token, None)
            .unwrap_or_else(|e| panic!("submit refused: {:?}", e.error))
    }

    /// Waits until at least `n` completions are held; panics after `within`.
    pub fn wait_n(&mut self, n: usize, within: Duration) {
        let end = Instant::now() + within;
        while self.done.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} completions within {within:?}",
                self.done.len()
            );
            self.d.wait(&mut self.done, 1, Some(left)).expect("wait");
        }
    }

    /// Takes every held completion after waiting for `n`.
    pub fn collect(&mut self, n: usize, within: Duration) -> Vec<Completion> {
        self.wait_n(n, within);
        std::mem::take(&mut self.done)
    }

    /// Waits for the completion with `token` and takes it.
    pub fn wait_token(&mut self, token: u64, within: Duration) -> Completion {
        let end = Instant::now() + within;
        loop {
            if let Some(i) = self.done.iter().position(|c| c.token == token) {
                return self.done.remove(i);
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no completion for token {token} within {within:?}"
            );
            self.d.wait(&mut self.done, 1, Some(left)).expect("wait");
        }
    }

    /// Lets the driver run for `dur`, collecting whatever completes.
    pub fn idle(&mut self, dur: Duration) {
        let end = Instant::now() + dur;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.d.wait(&mut self.done, 1, Some(left)).expect("wait");
        }
    }
}

/// A temp file that is removed when dropped.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn with(contents: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringport-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }
    /// Opens it with `std` (read+write) and leaks the handle's fd to the caller.
    pub fn raw_fd(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("open temp file")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A deterministic byte for position `i` of test data.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

pub fn pattern_vec(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

/// A pipe as two owned fds, non-blocking when the driver needs it.
pub struct Pipe {
    pub r: std::os::fd::OwnedFd,
    pub w: std::os::fd::OwnedFd,
}

impl Pipe {
    pub fn new(nonblocking: bool) -> Pipe {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
        // SAFETY: fds has room for two fds.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), flags) };
        assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: fresh fds we own.
        unsafe {
            Pipe {
                r: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                w: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        }
    }
    pub fn rfd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.r.as_raw_fd()
    }
    pub fn wfd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.w.as_raw_fd()
    }
    /// Writes with a plain syscall (blocking until done for small writes).
    pub fn put(&self, data: &[u8]) {
        // SAFETY: data is a valid slice for the call.
        let n = unsafe { libc::write(self.wfd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n as usize, data.len(), "pipe write");
    }
}

/// A buffer that counts its drops, to prove a buffer is freed exactly once
/// and not before the kernel is done with it.
pub struct Counted {
    pub v: Vec<u8>,
    pub drops: Arc<AtomicUsize>,
}

impl Counted {
    pub fn new(cap: usize) -> (Counted, Arc<AtomicUsize>) {
        let drops = Arc::new(AtomicUsize::new(0));
        (
            Counted {
                v: vec![0; cap],
                drops: drops.clone(),
            },
            drops,
        )
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: delegates to the Vec, whose heap memory is stable while it lives.
unsafe impl IoBuf for Counted {
    fn stable_ptr(&self) -> *const u8 {
        self.v.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.v.len()
    }
    fn bytes_total(&self) -> usize {
        self.v.len()
    }
}

// SAFETY: as above; the Vec is zero-filled, so every byte is initialised.
unsafe impl IoBufMut for Counted {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.v.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

/// Runs this test binary again as a child running only `test` (an ignored
/// test), with `env` set; returns its exit status and output.
pub fn run_child(test: &str, env: &[(&str, String)]) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn child test process")
}

/// Runs child test `<target>::<child>` with `var=1` and checks that it
/// neither died of SIGPIPE nor failed, and that it ran (printed `marker`).
pub fn expect_child_ok(b: Target, child: &str, var: &str, marker: &str) {
    let out = run_child(&format!("{}::{child}", b.name()), &[(var, "1".into())]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "the child died of SIGPIPE:\n{text}"
    );
    assert!(
        out.status.success(),
        "child failed: {:?}\n{text}",
        out.status
    );
    assert!(
        text.contains(marker),
        "the child did not run the case:\n{text}"
    );
}

/// The thread's own CPU time.
pub fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A loopback port nobody listens on.
pub fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A tiny deterministic random generator (xorshift), so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    #[allow(clippy::should_implement_trait)] // a generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
