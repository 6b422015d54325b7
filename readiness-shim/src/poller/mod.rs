//! The readiness `Poller` trait: the one thing each readiness mechanism
//! (epoll, poll, select, signal-driven I/O, kqueue) provides. Everything
//! else — queues, the syscalls, timers, the thread pool — is shared.
//!
//! This is the one place that picks a poller by OS (the cfg lists for
//! kqueue live here and only here).

mod epoll;
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
mod kqueue;
mod poll;
mod select;
#[cfg(target_os = "linux")]
mod sigio;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Which readiness mechanism a [`ShimDriver`](crate::ShimDriver) runs on.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum PollerKind {
    /// epoll(7), edge-triggered (Linux).
    Epoll,
    /// poll(2).
    Poll,
    /// select(2): fds below `FD_SETSIZE` (1024) only.
    Select,
    /// Signal-driven I/O: `O_ASYNC` + a real-time signal read via signalfd (Linux).
    Sigio,
    /// kqueue (BSD, macOS).
    Kqueue,
}

impl PollerKind {
    /// Opens this poller; `Unsupported` where the OS has none.
    pub(crate) fn open(self) -> io::Result<Box<dyn Poller>> {
        match self {
            #[cfg(target_os = "linux")]
            PollerKind::Epoll => Ok(Box::new(epoll::Epoll::new()?)),
            PollerKind::Poll => Ok(Box::new(poll::Poll::new())),
            PollerKind::Select => Ok(Box::new(select::Select::new())),
            #[cfg(target_os = "linux")]
            PollerKind::Sigio => Ok(Box::new(sigio::Sigio::new()?)),
            #[cfg(any(
                target_os = "macos",
                target_os = "ios",
                target_os = "freebsd",
                target_os = "netbsd",
                target_os = "openbsd",
                target_os = "dragonfly"
            ))]
            PollerKind::Kqueue => Ok(Box::new(kqueue::Kqueue::new()?)),
            #[allow(unreachable_patterns)]
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the {other:?} poller does not exist on this OS"),
            )),
        }
    }
}

/// Readiness of one fd, as a poller reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The fd.
    pub fd: RawFd,
    /// Readable, or hung up / in error (a read will not block).
    pub readable: bool,
    /// Writable, or in error (a write will not block).
    pub writable: bool,
}

/// A readiness mechanism.
///
/// Interest is level-style from the shim's side: `set` says which directions
/// have queued operations. An edge-triggered poller (epoll here, sigio) may
/// report an fd whose interest it was not asked for; the shim simply finds
/// nothing to do. A poller must report readiness that arrives after `set`
/// even if it existed before (the shim tries the syscall itself first).
pub trait Poller: Send {
    /// `epoll`, `poll`, `select`, `sigio`, `kqueue`.
    fn name(&self) -> &'static str;

    /// Declares which directions of `fd` have operations waiting;
    /// `(false, false)` means none. Called only when the answer changes.
    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()>;

    /// Called once when the driver first meets a stream fd, before its first
    /// syscall: a poller that signals only changes of readiness arms the fd
    /// here (sigio sets `O_ASYNC`, since some sockets raise no signal for
    /// write space that a send without `O_ASYNC` found lacking). An error is
    /// not final: `set` reports it when an op must wait.
    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        let _ = fd;
        Ok(())
    }

    /// Forgets `fd` (before it is closed).
    fn remove(&mut self, fd: RawFd);

    /// Waits until an fd with interest is ready or `timeout` passes, and
    /// appends what is ready. `EINTR` is not an error: it returns early.
    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;

    /// The highest fd it can watch, if it has a limit.
    fn max_fd(&self) -> Option<RawFd> {
        None
    }

    /// How many times its event source overflowed and it rescanned every fd
    /// (signal-driven I/O only).
    fn rescans(&self) -> u64 {
        0
    }
}

/// A timeout in milliseconds for poll-style calls (rounded up, so a wait
/// never ends before its deadline), `-1` for none.
pub(crate) fn timeout_ms(t: Option<Duration>) -> i32 {
    match t {
        None => -1,
        Some(d) => {
            let ms = d.as_micros().div_ceil(1000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}
