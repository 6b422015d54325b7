//! ringport-shim: a [`Driver`](ringport_core::driver::Driver) that emulates completions over a readiness
//! [`Poller`] — epoll, poll, select, signal-driven I/O, kqueue.
//!
//! The emulation is the same for every poller:
//! - try the syscall at submit (as IOCP skips the port on success), but only
//!   when that fd's queue for that direction is empty, so a new op never
//!   overtakes a queued one;
//! - on `EAGAIN` queue the op on its fd (one FIFO per direction) and declare
//!   interest; on readiness perform queued ops in order until `EAGAIN`;
//! - a stream write completes only when every byte is out (one in flight per
//!   fd, since the queue runs front to back);
//! - regular files never report readiness: their ops (and open, stat, fsync)
//!   run on a small thread pool whose results come back through the same
//!   completion queue, waking the poller through a pipe;
//! - timers (and per-op deadlines) live in the driver's own heap, which sets
//!   the poller's timeout.
//!
//! - current-position file ops go through a per-fd per-direction FIFO with
//!   one op at a time in the pool, so they land in submission order;
//! - a running pool job is stopped (cancel, deadline, drop) by sending its
//!   worker `SIGRTMIN + 6`, whose handler does nothing and is installed
//!   without `SA_RESTART`: the blocked syscall returns `EINTR` and is not
//!   retried. A host must leave that signal to ringport.
//!
//! Nothing here may free or move an op's buffer while a syscall or a worker
//! may touch it: readiness syscalls run on the driver's thread and finish
//! before it moves on; pool jobs own their op until they hand it back.
#![warn(missing_docs)]

mod driver;
mod ops;
mod poller;
mod pool;

pub use driver::ShimDriver;
pub use poller::{Event, Poller, PollerKind};

use std::io;

/// How to build a [`ShimDriver`].
#[derive(Clone, Debug)]
pub struct ShimBuilder {
    pub(crate) kind: PollerKind,
    pub(crate) threads: usize,
    pub(crate) nowait_reads: bool,
}

impl ShimBuilder {
    /// Threads in the file-op pool (default 4).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }
    /// Whether a file read at an explicit offset is first tried on the
    /// calling thread with `preadv2(RWF_NOWAIT)` (Linux), which succeeds
    /// only when every byte is in the page cache; otherwise (and always when
    /// off) the read goes to the pool. Default on where the OS has it.
    pub fn nowait_reads(mut self, on: bool) -> Self {
        self.nowait_reads = on;
        self
    }
    /// Builds the driver.
    pub fn build(self) -> io::Result<ShimDriver> {
        ShimDriver::with(self)
    }
}
