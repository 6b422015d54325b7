//! ringport-aio: a [`Driver`] over POSIX aio for files, with everything else
//! handed to a readiness driver inside the same `wait`.
//!
//! - Regular files and block devices (found by `fstat`, once per fd) get
//!   `aio_read` / `aio_write` / `aio_fsync`; several at once go through one
//!   `lio_listio(LIO_NOWAIT)`. The ops live in core's `InFlight` table
//!   (`driver.rs`: the lifecycle's close, cancel and deadline rules); each
//!   `aiocb` is boxed in its op's slot and stays there until `aio_return`
//!   has been called for it, exactly once (`requests.rs`).
//! - Everything else — sockets, pipes, FIFOs, terminals, accept, connect,
//!   timers, poll, open, stat, vectored I/O — goes to the delegate driver (the
//!   epoll shim): glibc would park a worker thread on an idle pipe and could
//!   not cancel it. Those ops live only in the delegate's table.
//! - Completion notification (`requests.rs` polls, `notify.rs` the signal):
//!   requests go to glibc silent (`SIGEV_NONE`) and `wait` polls the ones
//!   out with `aio_error`, and briefly spins before it blocks
//!   ([`AioBuilder::spin`]). Only a wait that blocks arms
//!   requests to signal — the first one out per fd, as glibc performs an
//!   fd's requests in order — and disarms them when it wakes. The signal
//!   (SIGRTMIN+7, counted only with `si_code == SI_ASYNCIO`) queues the
//!   request's id and wakes the delegate's wait through an eventfd; a
//!   [`DriverWaker`](ringport_core::driver::DriverWaker) ends any wait; a
//!   sweep every 250 ms while requests are out (`aio_error` after
//!   `aio_cancel` takes glibc's lock) is the safety net for queue overflow
//!   and for notifications glibc could not send. An application handler
//!   already installed for SIGRTMIN+7 makes building a driver fail: it is
//!   never replaced.
//! - glibc's aio pool is process-wide: the first driver sizes it with
//!   `aio_init` (see [`AioBuilder::build`]).
//!
//! This crate must never free or reuse an `aiocb` (or its buffer) before
//! glibc is done with it: a request's record is reused only after glibc's
//! request lock was taken since the request was seen finished (its notify
//! step, which reads the aiocb, runs under that lock), and a result that a
//! failed signal could overwrite is read only after that lock too. `Drop`
//! leaks what it cannot prove finished.
//!
//! Layout (the one every backend shares): `lib.rs` the builder;
//! `driver.rs` the [`Driver`] impl (submit, wait, cancel, close, drop, and
//! routing to the delegate); `notify.rs` how a finished request tells its
//! driver; `ops/` what is specific to each op, by group — `rw.rs` (read and
//! write, batched through `lio_listio`) and `fs.rs` (fsync).
#![warn(missing_docs)]

mod driver;
mod notify;
mod ops;

pub use driver::AioDriver;

use ringport_core::driver::Driver;
use std::io;

/// glibc's `struct aioinit` (see `aio_init(3)`).
#[repr(C)]
struct AioInit {
    aio_threads: libc::c_int,
    aio_num: libc::c_int,
    aio_locks: libc::c_int,
    aio_usedba: libc::c_int,
    aio_debug: libc::c_int,
    aio_numusers: libc::c_int,
    aio_idle_time: libc::c_int,
    aio_reserved: libc::c_int,
}

extern "C" {
    fn aio_init(init: *const AioInit);
}

/// How to build an [`AioDriver`].
#[derive(Debug, Clone)]
pub struct AioBuilder {
    threads: Option<usize>,
    max_in_flight: usize,
    signal_per_request: bool,
    spin: std::time::Duration,
}

impl Default for AioBuilder {
    fn default() -> Self {
        AioBuilder {
            threads: None,
            max_in_flight: 1024,
            signal_per_request: false,
            spin: std::time::Duration::from_micros(50),
        }
    }
}

impl AioBuilder {
    /// glibc's aio worker threads (`aio_init`'s `aio_threads`). This is
    /// process-wide and takes effect only for the first driver of the
    /// process, before glibc's pool first starts (see [`build`](Self::build)).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }
    /// How many aio requests may be with glibc at once; more wait in the
    /// driver's own queue (back-pressure, not loss). Keep it well below
    /// `RLIMIT_SIGPENDING`. Default 1024.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.clamp(1, 0xff_ffff);
        self
    }
    /// Sends every request's completion as a signal, also while the driver
    /// could find it by polling (see the crate's notification notes). Off by
    /// default; for tests and measurements.
    pub fn signal_per_request(mut self, on: bool) -> Self {
        self.signal_per_request = on;
        self
    }
    /// How long a wait polls the requests with glibc for a completion
    /// before it blocks (default 50 µs; zero blocks at once). Between polls
    /// it yields the core (`sched_yield`) and, when the delegate has ops of
    /// its own, asks it for completions without blocking. Polling costs
    /// CPU; blocking costs a signal and a wake-up per blocking wait.
    pub fn spin(mut self, d: std::time::Duration) -> Self {
        self.spin = d;
        self
    }
    /// Builds the driver over the epoll shim.
    pub fn build_with_epoll(self) -> io::Result<AioDriver> {
        let shim = ringport_shim::ShimDriver::new(ringport_shim::PollerKind::Epoll)?;
        self.build(Box::new(shim))
    }

    /// Builds the driver; `delegate` performs what aio cannot (normally the
    /// epoll shim; any driver works).
    ///
    /// The first driver built in a process sizes glibc's aio pool with
    /// `aio_init`: `aio_num` (request elements) from its `max_in_flight`,
    /// `aio_threads` from [`threads`](Self::threads) (default: the same
    /// bound, at most 64). That pool is process-wide: later drivers, and any
    /// other aio user in the process, share it, and glibc ignores the sizes
    /// if aio was used before.
    pub fn build(self, delegate: Box<dyn Driver>) -> io::Result<AioDriver> {
        static SIZED: std::sync::Once = std::sync::Once::new();
        SIZED.call_once(|| {
            let threads = self.threads.unwrap_or(self.max_in_flight.min(64));
            let init = AioInit {
                aio_threads: threads.min(libc::c_int::MAX as usize) as libc::c_int,
                aio_num: (self.max_in_flight as libc::c_int).max(32),
                aio_locks: 0,
                aio_usedba: 0,
                aio_debug: 0,
                aio_numusers: 0,
                aio_idle_time: 1,
                aio_reserved: 0,
            };
            // SAFETY: passes a fully initialised aioinit; glibc copies it.
            unsafe { aio_init(&init) };
        });
        AioDriver::with(
            self.max_in_flight,
            self.signal_per_request,
            self.spin,
            delegate,
        )
    }
}
