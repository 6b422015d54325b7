//! Backend choice: the one place that knows which backends exist here.

use ringport_core::driver::Driver;
use std::fmt;
use std::io;
use std::str::FromStr;

/// The environment variable that names a backend (`uring`, `aio`, `epoll`,
/// `poll`, `select`, `sigio`, `auto`). An explicit choice in code or on a
/// command line wins over it.
pub const BACKEND_ENV: &str = "RINGPORT_BACKEND";

/// Which completion backend to run on.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub enum Backend {
    /// io_uring when it can be set up and probed, else the best readiness shim.
    Auto,
    /// Linux io_uring: native completions.
    Uring,
    /// POSIX aio for files, epoll for the rest.
    Aio,
    /// Readiness shim over epoll.
    Epoll,
    /// Readiness shim over poll(2).
    Poll,
    /// Readiness shim over select(2) (fds below `FD_SETSIZE` only).
    Select,
    /// Readiness shim over signal-driven I/O (`O_ASYNC` + real-time signals).
    Sigio,
    /// Readiness shim over kqueue (BSD, macOS).
    Kqueue,
}

impl Backend {
    /// Every concrete backend, in the order the comparison lists them.
    pub const ALL: [Backend; 7] = [
        Backend::Uring,
        Backend::Aio,
        Backend::Epoll,
        Backend::Poll,
        Backend::Select,
        Backend::Sigio,
        Backend::Kqueue,
    ];

    /// The name used by `RINGPORT_BACKEND` and `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Aio => "aio",
            Backend::Epoll => "epoll",
            Backend::Poll => "poll",
            Backend::Select => "select",
            Backend::Sigio => "sigio",
            Backend::Kqueue => "kqueue",
        }
    }

    /// The backend named by `RINGPORT_BACKEND`, if set; an unknown name is an error.
    pub fn from_env() -> io::Result<Option<Backend>> {
        match std::env::var(BACKEND_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Backend> {
        let s = s.trim().to_ascii_lowercase();
        std::iter::once(Backend::Auto)
            .chain(Backend::ALL)
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown backend {s:?} (expected auto, uring, aio, epoll, poll, select, sigio or kqueue)"),
                )
            })
    }
}

/// A driver for one concrete backend (no environment, no fallback).
pub fn driver(backend: Backend) -> io::Result<Box<dyn Driver>> {
    let unavailable = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("backend {backend}: {why}"),
        ))
    };
    match backend {
        #[cfg(target_os = "linux")]
        Backend::Uring => ringport_uring::UringDriver::new()
            .map(|d| Box::new(d) as Box<dyn Driver>)
            .map_err(|e| io::Error::new(e.kind(), format!("backend uring: {e}"))),
        #[cfg(not(target_os = "linux"))]
        Backend::Uring => unavailable("io_uring exists only on Linux"),
        Backend::Auto => unavailable("auto is not a concrete backend"),
        #[cfg(target_os = "linux")]
        Backend::Aio => ringport_aio::AioDriver::new()
            .map(|d| Box::new(d) as Box<dyn Driver>)
            .map_err(|e| io::Error::new(e.kind(), format!("backend aio: {e}"))),
        #[cfg(not(target_os = "linux"))]
        Backend::Aio => unavailable("POSIX aio is built for Linux/glibc only so far"),
        // Which pollers this OS has is decided in one place, the shim: a
        // poller it does not have (kqueue on Linux, epoll elsewhere) is an
        // `Unsupported` error naming it.
        Backend::Epoll | Backend::Poll | Backend::Select | Backend::Sigio | Backend::Kqueue => {
            let kind = match backend {
                Backend::Epoll => ringport_shim::PollerKind::Epoll,
                Backend::Poll => ringport_shim::PollerKind::Poll,
                Backend::Select => ringport_shim::PollerKind::Select,
                Backend::Kqueue => ringport_shim::PollerKind::Kqueue,
                _ => ringport_shim::PollerKind::Sigio,
            };
            ringport_shim::ShimDriver::new(kind)
                .map(|d| Box::new(d) as Box<dyn Driver>)
                .map_err(|e| io::Error::new(e.kind(), format!("backend {backend}: {e}")))
        }
    }
}

/// Opens `backend`, resolving `Auto`: returns the driver, the backend it is,
/// and why io_uring was not used when `Auto` fell back.
pub(crate) fn open(backend: Backend) -> io::Result<(Box<dyn Driver>, Backend, Option<String>)> {
    if backend != Backend::Auto {
        return driver(backend).map(|d| (d, backend, None));
    }
    let uring_err = match driver(Backend::Uring) {
        Ok(d) => return Ok((d, Backend::Uring, None)),
        Err(e) => e,
    };
    let reason = format!("io_uring unavailable ({uring_err}); falling back");
    let mut errors = vec![uring_err.to_string()];
    for b in [Backend::Epoll, Backend::Kqueue, Backend::Poll] {
        match driver(b) {
            Ok(d) => {
                log::warn!("ringport: {reason} to {b}");
                return Ok((d, b, Some(format!("{reason} to {b}"))));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("no backend could start: {}", errors.join("; ")),
    ))
}
