//! The facade's `CompletionPort`: the core port on a backend chosen here.

use crate::backend::{self, Backend};
use std::io;
use std::ops::Deref;

/// The IOCP-style completion port (see [`ringport_core::port`]), on a
/// backend chosen like [`crate::Runtime`]'s: `RINGPORT_BACKEND`, else Auto;
/// or an explicit one, which wins.
#[derive(Debug)]
pub struct CompletionPort {
    inner: ringport_core::CompletionPort,
    backend: Backend,
}

impl CompletionPort {
    /// CreateIoCompletionPort: a port releasing at most `concurrency` threads
    /// at once (0 = the number of CPUs), on the backend named by
    /// `RINGPORT_BACKEND`, else the best this machine has.
    pub fn new(concurrency: usize) -> io::Result<CompletionPort> {
        let b = Backend::from_env()?.unwrap_or(Backend::Auto);
        Self::with_backend(concurrency, b)
    }

    /// A port on `backend`, whatever `RINGPORT_BACKEND` says.
    pub fn with_backend(concurrency: usize, backend: Backend) -> io::Result<CompletionPort> {
        // Resolve Auto here (the driver itself is built on the ring thread).
        let chosen = match backend {
            Backend::Auto => backend::open(Backend::Auto)?.1,
            b => b,
        };
        let inner =
            ringport_core::CompletionPort::with_driver(concurrency, move || crate::driver(chosen))?;
        Ok(CompletionPort {
            inner,
            backend: chosen,
        })
    }

    /// The backend the port runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Deref for CompletionPort {
    type Target = ringport_core::CompletionPort;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}
