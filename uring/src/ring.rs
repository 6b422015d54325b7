//! The io_uring mechanism: ring set-up, pushing SQEs (flushing a full
//! queue), `io_uring_enter` (with a registered ring fd and a timeout), and
//! reaping the CQ into the driver. Nothing here knows what an op means.

use crate::driver::{UringDriver, UD_IGNORE, UD_WAKER};
use crate::UringBuilder;
use io_uring::{opcode, squeue, types, IoUring};
use ringport_core::op::OpId;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Set-up name of a ring made with `SINGLE_ISSUER | DEFER_TASKRUN` (created disabled).
pub(crate) const DEFER: &str = "single_issuer+defer_taskrun";

/// `io_uring_enter` flags and the `IORING_REGISTER_RING_FDS` opcode, from
/// the kernel's uapi header (the crate keeps its own copies private).
const ENTER_GETEVENTS: u32 = 1;
const ENTER_EXT_ARG: u32 = 8;
const ENTER_REGISTERED_RING: u32 = 16;
const REGISTER_RING_FDS: u32 = 20;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

impl UringDriver {
    /// Registers the ring's own fd with the ring, so each `io_uring_enter`
    /// skips the kernel's fd lookup (Linux 5.18+; without it, the plain fd).
    pub(crate) fn register_ring_fd(&mut self) {
        let mut up = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: self.ring.as_raw_fd() as u64,
        };
        // SAFETY: passes one valid io_uring_rsrc_update the kernel fills in.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
                REGISTER_RING_FDS,
                &mut up as *mut RsrcUpdate,
                1,
            )
        };
        if r == 1 {
            self.enter_fd = up.offset as i32;
            self.enter_flags = ENTER_REGISTERED_RING;
        }
    }

    /// Submits what is queued and waits for `min` completions (at most
    /// `timeout`); runs deferred task work whenever it waits or is asked to.
    pub(crate) fn enter(
        &mut self,
        min: u32,
        getevents: bool,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = self.enter_flags;
        if min > 0 || getevents {
            flags |= ENTER_GETEVENTS;
        }
        let ts;
        let arg;
        let (argp, argsz) = match timeout {
            Some(t) => {
                ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                arg = GeteventsArg {
                    sigmask: 0,
                    sigmask_sz: 8,
                    min_wait_usec: 0,
                    ts: &ts as *const libc::timespec as u64,
                };
                flags |= ENTER_EXT_ARG;
                (
                    &arg as *const GeteventsArg as *const libc::c_void,
                    std::mem::size_of::<GeteventsArg>(),
                )
            }
            None => (std::ptr::null(), 0),
        };
        // SAFETY: the ring fd (or its registered index) is ours; `arg` and
        // `ts` outlive the call; the SQEs submitted point at memory held by
        // their slots.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.enter_fd,
                to_submit,
                min,
                flags,
                argp,
                argsz,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Whether deferred task work or overflowed completions wait in the kernel.
    pub(crate) fn kernel_has_work(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// Pushes one SQE (and its link timeout), flushing the ring when full.
    #[inline]
    pub(crate) fn push(
        &mut self,
        e: squeue::Entry,
        deadline: Option<*const types::Timespec>,
    ) -> io::Result<()> {
        if deadline.is_none() {
            // SAFETY: the SQE points only at heap memory owned by the op's slot
            // (or the driver), which stays put until its CQE is reaped.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
        }
        self.push_slow(e, deadline)
    }

    /// `push` when the ring is full or a link timeout comes along.
    #[inline(never)]
    pub(crate) fn push_slow(
        &mut self,
        e: squeue::Entry,
        deadline: Option<*const types::Timespec>,
    ) -> io::Result<()> {
        let need = if deadline.is_some() { 2 } else { 1 };
        loop {
            {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= need {
                    match deadline {
                        None => {
                            // SAFETY: the SQE points only at heap memory owned by
                            // the op's slot (or the driver), which stays put until
                            // its CQE is reaped.
                            unsafe { sq.push(&e) }.map_err(|_| sq_full())?;
                        }
                        Some(ts) => {
                            let lt = opcode::LinkTimeout::new(ts)
                                .flags(types::TimeoutFlags::ABS)
                                .build()
                                .user_data(UD_IGNORE);
                            let e = e.flags(squeue::Flags::IO_LINK);
                            // SAFETY: as above; the timespec is boxed in the slot.
                            unsafe { sq.push_multiple(&[e, lt]) }.map_err(|_| sq_full())?;
                        }
                    }
                    return Ok(());
                }
            }
            // Full: hand what is queued to the kernel and try again.
            match self.enter(0, false, None) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    self.reap();
                    self.enter(1, true, None).or_else(ignore_intr)?;
                    self.reap();
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reaps every CQE in the ring, handing each to its slot (completions
    /// go to the driver's `ready`).
    pub(crate) fn reap(&mut self) {
        loop {
            // Copy the CQEs out first (one head update per batch), then handle
            // them, since handling may push SQEs or even reap recursively.
            let mut batch = std::mem::take(&mut self.cqe_batch);
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if batch.is_empty() {
                self.cqe_batch = batch;
                return;
            }
            for &(ud, res, flags) in &batch {
                if ud == UD_IGNORE {
                    continue;
                }
                if ud == UD_WAKER {
                    self.waker_armed = false;
                    continue;
                }
                if let Some(key) = self.lookup(OpId::from_u64(ud)) {
                    self.on_cqe(key, res, flags);
                }
            }
            self.cqe_batch = batch;
        }
    }
}

/// Builds the ring: `SINGLE_ISSUER | DEFER_TASKRUN` (created disabled) if
/// asked and possible, else `COOP_TASKRUN`, else a plain ring; with its name.
pub(crate) fn setup(b: &UringBuilder) -> io::Result<(IoUring, &'static str)> {
    let cq = b.cq_entries.unwrap_or(b.entries * 2).max(b.entries);
    if b.defer_taskrun {
        let r = IoUring::builder()
            .setup_cqsize(cq)
            .setup_submit_all()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .build(b.entries);
        if let Ok(ring) = r {
            return Ok((ring, DEFER));
        }
    }
    let r = IoUring::builder()
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(b.entries);
    if let Ok(ring) = r {
        return Ok((ring, "coop_taskrun"));
    }
    let ring = IoUring::builder().setup_cqsize(cq).build(b.entries)?;
    Ok((ring, "plain"))
}

/// `deadline` as an absolute `CLOCK_MONOTONIC` time (the clock `Instant` uses
/// on Linux and io_uring timeouts use by default).
pub(crate) fn abs_timespec(deadline: Instant) -> types::Timespec {
    let now = Instant::now();
    // SAFETY: timespec is plain data; zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let base = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let at = base + deadline.saturating_duration_since(now);
    types::Timespec::new()
        .sec(at.as_secs())
        .nsec(at.subsec_nanos())
}

pub(crate) fn sq_full() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "io_uring submission queue full")
}

pub(crate) fn ignore_intr(e: io::Error) -> io::Result<usize> {
    match e.raw_os_error() {
        Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(0),
        _ => Err(e),
    }
}

pub(crate) fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM (io_uring is disabled or forbidden here)".into(),
        Some(libc::ENOSYS) => "ENOSYS (the kernel has no io_uring)".into(),
        Some(libc::ENOMEM) => "ENOMEM (locked-memory limit too low?)".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        _ => e.to_string(),
    }
}
