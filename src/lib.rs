//! ringport: completion-based I/O — the Windows IOCP model — on every Unix.
//!
//! Hand over an operation together with the buffer it owns; get back one
//! completion with the result and the same buffer. io_uring delivers
//! completions natively; other backends emulate them (see the README's
//! backends table).
//!
//! ```no_run
//! use ringport::{Runtime, TcpListener};
//!
//! let rt = Runtime::new()?;
//! rt.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:7000".parse().unwrap())?;
//!     let (stream, _peer) = listener.accept().await?;
//!     let (res, buf) = stream.read(Vec::with_capacity(4096)).await;
//!     let n = res?;
//!     let (res, _buf) = stream.write_all(buf).await;
//!     res?;
//!     println!("echoed {n} bytes");
//!     Ok::<_, std::io::Error>(())
//! })?;
//! # Ok::<_, std::io::Error>(())
//! ```
//!
//! The facade chooses the backend: [`Runtime::new`] honours
//! `RINGPORT_BACKEND` and otherwise probes io_uring and falls back;
//! [`Runtime::with_backend`] takes an explicit choice, which wins over the
//! environment.
#![warn(missing_docs)]

mod backend;
mod port;
#[cfg(feature = "tls")]
pub mod tls;

pub use backend::{driver, Backend, BACKEND_ENV};
pub use port::CompletionPort;
pub use ringport_core::buf::{self, AnyBuf, AnyBufMut, IoBuf, IoBufMut, Slice};
pub use ringport_core::bufpool::{self, BufPool, PooledBuf};
pub use ringport_core::driver::{
    self as drv, Capabilities, Completion, Driver, DriverWaker, Parking, Ready, SubmitError,
    Support,
};
pub use ringport_core::fixedbuf::{self, FixedBuf, FixedBufRegistry};
pub use ringport_core::fs;
pub use ringport_core::op::{
    self, CancelTarget, FileStat, Offset, Op, OpId, OpKind, ShutdownHow, SockAddr,
};
pub use ringport_core::port::{GetError, PortEntry, SendFile, TimerId};
pub use ringport_core::runtime::{
    interval, interval_at, shutdown_token, signal, Handle, Interval, MissedTickBehavior, Runtimes,
    ShutdownToken, Sleep, TcpSocket, Triggered, UnixDatagram,
};
pub use ringport_core::runtime::{
    pipe, sleep, sleep_until, spawn, spawn_blocking, submit, timeout, yield_now, Elapsed, File,
    JoinError, JoinHandle, OpenOptions, PipeReader, PipeWriter, TcpListener, TcpStream, UdpSocket,
    UnhandledPanic, UnixListener, UnixStream, DEFAULT_MAX_BLOCKING_THREADS,
};

#[cfg(feature = "hyper")]
pub use ringport_core::compat::hyper::{LocalExec, RingportTimer};
/// Bridges to tokio, futures-io and hyper (features `tokio-io`, `futures-io`,
/// `hyper`): see [`ringport_core::compat`].
pub use ringport_core::compat::{self, ReadHalf, WriteHalf};

pub use ringport_shim::{PollerKind, ShimBuilder, ShimDriver};
#[cfg(target_os = "linux")]
pub use ringport_uring::{UringBuilder, UringDriver};

use std::future::Future;
use std::io;

/// A single-threaded runtime on the chosen backend (see
/// [`ringport_core::Runtime`] for what it does).
pub struct Runtime {
    inner: ringport_core::Runtime,
    backend: Backend,
    fallback_reason: Option<String>,
}

impl Runtime {
    /// A runtime on the backend named by `RINGPORT_BACKEND`, or, when it is
    /// unset, on the best one this machine has (`Backend::Auto`).
    pub fn new() -> io::Result<Runtime> {
        let b = Backend::from_env()?.unwrap_or(Backend::Auto);
        Self::with_backend(b)
    }

    /// A runtime on `backend`, whatever `RINGPORT_BACKEND` says. A backend
    /// that cannot start is an error naming it and why.
    pub fn with_backend(backend: Backend) -> io::Result<Runtime> {
        let (driver, chosen, fallback_reason) = backend::open(backend)?;
        Ok(Runtime {
            inner: ringport_core::Runtime::from_driver(driver),
            backend: chosen,
            fallback_reason,
        })
    }

    /// A runtime over a driver built by hand (to set builder options such as
    /// [`UringBuilder::entries`] or [`ShimBuilder::nowait_reads`]). The
    /// driver's name must be a backend's name.
    pub fn from_driver(driver: Box<dyn Driver>) -> io::Result<Runtime> {
        let backend: Backend = driver.name().parse()?;
        Ok(Runtime {
            inner: ringport_core::Runtime::from_driver(driver),
            backend,
            fallback_reason: None,
        })
    }

    /// The backend actually running (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why `Auto` did not get io_uring, if it fell back.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Runs `future` to completion (see [`ringport_core::Runtime::block_on`]).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.block_on(future)
    }

    /// Like [`Runtime::block_on`], but a failing driver, or a task panic
    /// under [`UnhandledPanic::ShutdownRuntime`], is an error.
    pub fn try_block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        self.inner.try_block_on(future)
    }

    /// A handle to spawn onto this runtime from any thread.
    pub fn handle(&self) -> Handle {
        self.inner.handle()
    }

    /// The runtime's shutdown token (see [`ShutdownToken`]).
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.inner.shutdown_token()
    }

    /// Triggers the shutdown token, runs the tasks until they end or
    /// `timeout` passes, drops what is left; returns how many were dropped
    /// (see [`ringport_core::Runtime::shutdown_timeout`]).
    pub fn shutdown_timeout(self, timeout: std::time::Duration) -> io::Result<usize> {
        self.inner.shutdown_timeout(timeout)
    }

    /// Runs `f` on the runtime's blocking pool (see [`spawn_blocking`]).
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.spawn_blocking(f)
    }

    /// Starts a local task.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn(future)
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    /// Sets what a task panic does (see [`UnhandledPanic`]).
    pub fn set_unhandled_panic(&self, policy: UnhandledPanic) {
        self.inner.set_unhandled_panic(policy)
    }
}

/// Many runtimes, one per thread, on a chosen backend: the facade's
/// [`ringport_core::runtime::Builder`] with a backend and a ring size.
///
/// ```no_run
/// let rts = ringport::Builder::new().threads(2).build()?;
/// let h = rts.spawn(async { 1 + 1 });
/// rts.shutdown_timeout(std::time::Duration::from_secs(1))?;
/// # drop(h);
/// # Ok::<_, std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    inner: ringport_core::runtime::Builder,
    backend: Option<Backend>,
    entries: Option<u32>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The core builder's defaults (one thread per CPU, ...), on the
    /// backend `RINGPORT_BACKEND` names, else `Auto`.
    pub fn new() -> Builder {
        Builder {
            inner: ringport_core::runtime::Builder::new(),
            backend: None,
            entries: None,
        }
    }
    /// The backend every runtime runs on (wins over `RINGPORT_BACKEND`).
    pub fn backend(mut self, b: Backend) -> Builder {
        self.backend = Some(b);
        self
    }
    /// The io_uring submission queue size of each runtime (io_uring only;
    /// ignored by the other backends).
    pub fn ring_entries(mut self, n: u32) -> Builder {
        self.entries = Some(n);
        self
    }
    /// How many runtimes (threads).
    pub fn threads(mut self, n: usize) -> Builder {
        self.inner = self.inner.threads(n);
        self
    }
    /// Pins runtime `i` to CPU `i`.
    pub fn pin_cpus(mut self, on: bool) -> Builder {
        self.inner = self.inner.pin_cpus(on);
        self
    }
    /// What a task panic does.
    pub fn unhandled_panic(mut self, p: UnhandledPanic) -> Builder {
        self.inner = self.inner.unhandled_panic(p);
        self
    }
    /// The bound of the shared blocking pool.
    pub fn max_blocking_threads(mut self, n: usize) -> Builder {
        self.inner = self.inner.max_blocking_threads(n);
        self
    }
    /// How long runtimes drain when their shutdown token fires.
    pub fn drain_timeout(mut self, d: std::time::Duration) -> Builder {
        self.inner = self.inner.drain_timeout(d);
        self
    }

    fn make_driver(backend: Backend, entries: Option<u32>) -> io::Result<Box<dyn Driver>> {
        #[cfg(target_os = "linux")]
        if let (Some(n), Backend::Uring | Backend::Auto) = (entries, backend) {
            match UringDriver::builder().entries(n).build() {
                Ok(d) => return Ok(Box::new(d)),
                Err(e) if backend == Backend::Uring => {
                    return Err(io::Error::new(e.kind(), format!("backend uring: {e}")))
                }
                Err(_) => {}
            }
        }
        let _ = entries;
        backend::open(backend).map(|(d, _, _)| d)
    }

    /// Starts the runtimes, each on its own thread and driver.
    pub fn build(&self) -> io::Result<Runtimes> {
        let backend = match self.backend {
            Some(b) => b,
            None => Backend::from_env()?.unwrap_or(Backend::Auto),
        };
        let entries = self.entries;
        self.inner
            .build_with(move |_| Self::make_driver(backend, entries))
    }

    /// One runtime on this thread with these settings (`threads` and
    /// `pin_cpus` do not apply).
    pub fn build_local(&self) -> io::Result<Runtime> {
        let backend = match self.backend {
            Some(b) => b,
            None => Backend::from_env()?.unwrap_or(Backend::Auto),
        };
        let driver = Self::make_driver(backend, self.entries)?;
        let chosen: Backend = driver.name().parse()?;
        Ok(Runtime {
            inner: self.inner.build_local(driver),
            backend: chosen,
            fallback_reason: None,
        })
    }
}

/// The README's example, compiled as a doctest so the README stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_driver_names_the_backend_and_runs() {
        let d = ShimDriver::builder(PollerKind::Poll)
            .nowait_reads(false)
            .threads(1)
            .build()
            .unwrap();
        let rt = Runtime::from_driver(Box::new(d)).unwrap();
        assert_eq!(rt.backend(), Backend::Poll);
        let path =
            std::env::temp_dir().join(format!("ringport-from-driver-{}", std::process::id()));
        std::fs::write(&path, b"hello from the pool").unwrap();
        let got = rt.block_on(async {
            let f = File::open(&path).await?;
            let (r, buf) = f.read_at(Vec::with_capacity(64), 6).await;
            r.map(|_| buf)
        });
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.unwrap(), b"from the pool");
    }
}
