//! ringport-uring: the [`Driver`](ringport_core::Driver) over Linux io_uring.
//!
//! One ring per driver, driven by one thread. Ops wait in a `slab` keyed by
//! the `user_data` the kernel echoes (slot and generation), so an op and its
//! buffers stay put until its CQE arrives. Stream ops (recv/send, reads and
//! writes at the current position) go through per-fd FIFO queues, one in
//! flight per direction, because io_uring does not order two outstanding
//! sends or recvs on one socket; a stream write is resubmitted until every
//! byte is out.
//!
//! Set-up prefers `SINGLE_ISSUER | DEFER_TASKRUN` (created disabled, enabled by
//! the first thread that uses it), then `COOP_TASKRUN`, then a plain ring.
//! This crate must never free or move an op's memory while its SQE may still
//! be read or its CQE is outstanding.
//!
//! Layout (shared by every backend):
//! - `lib.rs`: this documentation, [`UringBuilder`], re-exports;
//! - `driver.rs`: the [`UringDriver`] and its `Driver` impl — submit, wait,
//!   cancel, drop; the in-flight table, per-fd queues and the close protocol;
//! - `ring.rs`: the io_uring mechanism — set-up, SQ push, enter, CQ reap;
//! - `ops/`: what each op is on io_uring (its SQE, its result mapping, a
//!   partial send's resubmission), grouped as `rw`, `net`, `fs`, `ctl`.
#![warn(missing_docs)]

mod bufring;
mod driver;
mod fixed;
mod ops;
mod ring;

pub use driver::UringDriver;

use std::io;

/// How to build a [`UringDriver`].
#[derive(Clone, Debug)]
pub struct UringBuilder {
    pub(crate) entries: u32,
    pub(crate) cq_entries: Option<u32>,
    pub(crate) defer_taskrun: bool,
    pub(crate) fixed_buffers: bool,
    pub(crate) register_files: bool,
    pub(crate) spare_pipes: usize,
}

impl Default for UringBuilder {
    fn default() -> Self {
        UringBuilder {
            entries: 256,
            cq_entries: None,
            defer_taskrun: true,
            fixed_buffers: true,
            register_files: false,
            spare_pipes: 64,
        }
    }
}

impl UringBuilder {
    /// Submission queue size (rounded up to a power of two by the kernel).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n.max(2);
        self
    }
    /// Completion queue size (default: twice the submission queue).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n);
        self
    }
    /// Whether to try `SINGLE_ISSUER | DEFER_TASKRUN` (default: yes).
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.defer_taskrun = on;
        self
    }
    /// Whether fixed reads and writes use registered buffers
    /// (`READ_FIXED`/`WRITE_FIXED`; default: yes, where the kernel has
    /// them). Off, they are plain reads and writes of the same memory.
    pub fn fixed_buffers(mut self, on: bool) -> Self {
        self.fixed_buffers = on;
        self
    }
    /// Whether positional reads and writes register their fd in the ring's
    /// file table on first use and then name its slot (`IOSQE_FIXED_FILE`),
    /// which saves the kernel's fd lookup per op (default: no). The slot is
    /// released when the fd is closed through the driver, as every fd must
    /// be: with this on, an fd closed by hand leaves its file in the table,
    /// and a later file given the same number would be read through the old
    /// slot.
    pub fn register_files(mut self, on: bool) -> Self {
        self.register_files = on;
        self
    }
    /// How many empty pipes the driver keeps for `send_file` (default 64):
    /// with at least as many send_files at once as this, none makes or
    /// closes a pipe. Each is sized to 1 MiB when made, which counts
    /// against the user's pipe quota (`/proc/sys/fs/pipe-user-pages-soft`,
    /// 64 MiB by default, for every process of the user) while it is kept;
    /// past that quota new pipes are small and large send_files slow down.
    /// Lower it for many rings in one unprivileged process; 0 keeps none.
    pub fn send_file_pipes(mut self, n: usize) -> Self {
        self.spare_pipes = n;
        self
    }
    /// Sets up the ring and probes it.
    pub fn build(self) -> io::Result<UringDriver> {
        UringDriver::with_builder(self)
    }
}
