//! Many cores: a [`Builder`] that starts one runtime per thread, and the
//! [`Handle`] that spawns onto a runtime from any thread.
//!
//! Each runtime stays single-threaded (its ops never take a lock); other
//! threads reach it only through its cross-thread queue, which a spawn
//! from a [`Handle`] locks once.

use super::blocking::BlockingPool;
use super::shutdown::ShutdownToken;
use super::task::{JoinHandle, Shared, TaskFuture};
use super::{insert_task, Remote, Runtime, UnhandledPanic, DEFAULT_MAX_BLOCKING_THREADS};
use crate::driver::Driver;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A handle to one runtime: `Send + Sync + Clone`, it spawns onto that
/// runtime from any thread. Made by [`Runtime::handle`] or a [`Builder`].
#[derive(Clone)]
pub struct Handle {
    pub(crate) remote: Arc<Remote>,
    pub(crate) blocking: Arc<BlockingPool>,
    pub(crate) shutdown: ShutdownToken,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handle")
    }
}

impl Handle {
    /// Starts `future` as a task on this handle's runtime. It starts at
    /// the runtime's next turn; if the runtime is gone, the handle
    /// resolves to a cancelled [`JoinError`](super::JoinError).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_with(move || future)
    }

    /// Runs `make` on the runtime's thread and starts the future it
    /// returns there: the future itself need not be `Send` (it may hold
    /// `Rc`s, or I/O types made on that thread).
    pub fn spawn_with<M, F>(&self, make: M) -> JoinHandle<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let shared = Shared::new(None);
        let sh = shared.clone();
        // Dropped unrun, the guard reports a cancel through the handle.
        let guard = CancelOnDrop(Some(shared.clone()));
        self.remote.defer_spawn(Box::new(move |core| {
            let mut guard = guard;
            guard.0 = None;
            insert_task(core, TaskFuture::new(make(), sh));
        }));
        JoinHandle::new(shared)
    }

    /// Runs `f` on the runtime's blocking pool.
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.blocking.spawn(f)
    }

    /// The runtime's shutdown token.
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.shutdown.clone()
    }
}

/// Reports a cancel through a handle's state unless disarmed.
struct CancelOnDrop<T>(Option<Arc<Shared<T>>>);

impl<T> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.complete(Err(super::JoinError::cancelled()));
        }
    }
}

/// Makes a driver for runtime number `i`.
pub type DriverFactory = dyn Fn(usize) -> io::Result<Box<dyn Driver>> + Send + Sync;

/// Settings for runtimes: one single-threaded runtime per thread, each on
/// a driver of its own, sharing one blocking pool.
#[derive(Debug, Clone)]
pub struct Builder {
    threads: usize,
    pin: bool,
    on_panic: UnhandledPanic,
    max_blocking: usize,
    drain: Duration,
    name: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// One thread per CPU, not pinned, panics caught, 64 blocking threads,
    /// 5 s to drain on shutdown.
    pub fn new() -> Builder {
        Builder {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            on_panic: UnhandledPanic::Ignore,
            max_blocking: DEFAULT_MAX_BLOCKING_THREADS,
            drain: Duration::from_secs(5),
            name: "ringport-rt".into(),
        }
    }
    /// How many runtimes (threads) to start (at least one).
    pub fn threads(mut self, n: usize) -> Builder {
        self.threads = n.max(1);
        self
    }
    /// Pins runtime `i` to CPU `i` (modulo the CPUs this process may use).
    pub fn pin_cpus(mut self, on: bool) -> Builder {
        self.pin = on;
        self
    }
    /// What a task panic does (see [`UnhandledPanic`]).
    pub fn unhandled_panic(mut self, p: UnhandledPanic) -> Builder {
        self.on_panic = p;
        self
    }
    /// The bound of the blocking pool the runtimes share.
    pub fn max_blocking_threads(mut self, n: usize) -> Builder {
        self.max_blocking = n.max(1);
        self
    }
    /// How long runtimes drain their tasks when their shutdown token fires
    /// (by [`Runtimes::shutdown_timeout`], a signal, or a task).
    pub fn drain_timeout(mut self, d: Duration) -> Builder {
        self.drain = d;
        self
    }
    /// The threads' name prefix (`NAME-0`, `NAME-1`, ...).
    pub fn thread_name(mut self, name: impl Into<String>) -> Builder {
        self.name = name.into();
        self
    }

    /// One runtime on this thread over `driver`, with these settings
    /// (`threads` and `pin_cpus` do not apply).
    pub fn build_local(&self, driver: Box<dyn Driver>) -> Runtime {
        let rt = Runtime::with_pool(driver, BlockingPool::new(self.max_blocking));
        rt.set_unhandled_panic(self.on_panic);
        rt
    }

    /// Starts the runtimes, each on a thread of its own over the driver
    /// `make_driver(i)` makes on that thread. Each runs until its shutdown
    /// token fires, then drains for the drain timeout.
    pub fn build_with(
        &self,
        make_driver: impl Fn(usize) -> io::Result<Box<dyn Driver>> + Send + Sync + 'static,
    ) -> io::Result<Runtimes> {
        let make: Arc<DriverFactory> = Arc::new(make_driver);
        let pool = BlockingPool::new(self.max_blocking);
        let drain = Arc::new(Mutex::new(self.drain));
        let cpus = allowed_cpus();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let mut failed = None;
        for i in 0..self.threads {
            let (tx, rx) = std::sync::mpsc::channel();
            let (make, pool, b) = (make.clone(), pool.clone(), self.clone());
            let drain = drain.clone();
            let cpu = (self.pin && !cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || -> io::Result<()> {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    }
                    let rt = match make(i) {
                        Ok(d) => Runtime::with_pool(d, pool),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    rt.set_unhandled_panic(b.on_panic);
                    let token = rt.shutdown_token();
                    let _ = tx.send(Ok(rt.handle()));
                    drop(tx);
                    rt.try_block_on(token.triggered())?;
                    let d = *drain.lock().unwrap_or_else(|e| e.into_inner());
                    rt.shutdown_timeout(d).map(|_| ())
                })?;
            threads.push(t);
            match rx.recv() {
                Ok(Ok(h)) => handles.push(h),
                Ok(Err(e)) => {
                    failed = Some(io::Error::new(e.kind(), format!("runtime {i}: {e}")));
                    break;
                }
                Err(_) => {
                    failed = Some(io::Error::other(format!("runtime {i} did not start")));
                    break;
                }
            }
        }
        let rts = Runtimes {
            handles,
            threads,
            next: AtomicUsize::new(0),
            drain,
        };
        match failed {
            Some(e) => {
                let _ = rts.shutdown_timeout(Duration::ZERO);
                Err(e)
            }
            None => Ok(rts),
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the set names one allowed CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("pinning to CPU {cpu}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Runtimes started by a [`Builder`], one per thread.
#[derive(Debug)]
pub struct Runtimes {
    handles: Vec<Handle>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    next: AtomicUsize,
    drain: Arc<Mutex<Duration>>,
}

impl Runtimes {
    /// One handle per runtime, in thread order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Runtime `i`'s handle.
    ///
    /// # Panics
    ///
    /// If `i` is not below the number of runtimes.
    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i]
    }

    /// Spawns `future` on the runtimes in turn (round robin).
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(future)
    }

    /// The thread-per-core server: binds one `SO_REUSEPORT` listener per
    /// runtime on `addr` (port 0 is resolved by the first, and the others
    /// join that port), and runs `serve(listener, i)` on runtime `i`.
    /// Returns the address bound and the serving tasks' handles.
    pub fn serve_reuse_port<S, F>(
        &self,
        addr: SocketAddr,
        serve: S,
    ) -> io::Result<(SocketAddr, Vec<JoinHandle<io::Result<()>>>)>
    where
        S: Fn(super::TcpListener, usize) -> F + Send + Sync + 'static,
        F: Future<Output = io::Result<()>> + 'static,
    {
        let serve = Arc::new(serve);
        let bound: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        for (i, h) in self.handles.iter().enumerate() {
            let at = bound
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(addr);
            let (tx, rx) = std::sync::mpsc::channel();
            let serve = serve.clone();
            tasks.push(h.spawn_with(move || {
                let listener = super::TcpListener::bind_reuse_port(at);
                let addr = match &listener {
                    Ok(l) => l.local_addr(),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let _ = tx.send(addr);
                async move { serve(listener?, i).await }
            }));
            match rx.recv() {
                Ok(Ok(a)) => *bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(a),
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("runtime {i}: a SO_REUSEPORT listener on {at}: {e}"),
                    ))
                }
                Err(_) => return Err(io::Error::other(format!("runtime {i} is gone"))),
            }
        }
        let a = bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(addr);
        Ok((a, tasks))
    }

    /// Triggers every runtime's shutdown token, lets each drain its tasks
    /// for at most `timeout` (instead of the builder's drain timeout), and
    /// waits for the threads.
    pub fn shutdown_timeout(self, timeout: Duration) -> io::Result<()> {
        *self.drain.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        for h in &self.handles {
            h.shutdown.trigger();
        }
        self.wait()
    }

    /// Waits until every runtime has ended (each ends when its shutdown
    /// token fires, say from a signal task, and it has drained).
    pub fn wait(self) -> io::Result<()> {
        let mut first = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a runtime thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
