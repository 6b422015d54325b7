//! The [`UringDriver`] and its [`Driver`] impl: submit, wait, cancel and
//! drop. The op lifecycle (the in-flight table, per-fd order, the close
//! protocol, what a cancel or deadline makes of a result) is core's
//! [`InFlight`]; this file supplies io_uring's part: start an op (its SQE,
//! with a linked timeout for a deadline), handle its CQE (again after
//! `EAGAIN` or a partial stream write), and cancel it in the kernel. How each
//! op becomes an SQE and what its result means is in `ops/`; the ring itself
//! (push, enter, reap) in `ring.rs`.

use crate::bufring;
use crate::fixed::{FileTable, FixedTable};
use crate::ops::{self, Extra};
use crate::ring::{abs_timespec, errno_name, ignore_intr, setup, DEFER};
use crate::UringBuilder;
use io_uring::{opcode, types, IoUring};
use ringport_core::driver::{
    cancelled, Capabilities, Completion, Driver, DriverWaker, Ready, Shot, SubmitError, Support,
    Wake,
};
use ringport_core::lifecycle::{Admitted, InFlight, Stage};
use ringport_core::op::{Direction, Op, OpId, OpKind};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `user_data` of CQEs nobody waits for (link timeouts, internal cancels).
pub(crate) const UD_IGNORE: u64 = u32::MAX as u64;
/// `user_data` of the waker's eventfd read.
pub(crate) const UD_WAKER: u64 = (1 << 32) | u32::MAX as u64;
/// How long `Drop` waits for cancelled ops before leaking their buffers.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// The backend's part of an op in flight: scratch memory and the deadline's
/// timespec (boxed: the kernel reads them), and whether the op waits for
/// readiness after `EAGAIN`.
#[derive(Default)]
pub(crate) struct InRing {
    extra: Option<Box<Extra>>,
    polling: bool,
}

impl InRing {
    fn deadline_ptr(&self) -> Option<*const types::Timespec> {
        let e = self.extra.as_deref()?;
        e.deadline.as_ref().map(|t| t as *const types::Timespec)
    }
}

struct EventfdWaker {
    fd: OwnedFd,
}

impl Wake for EventfdWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }
}

/// The io_uring [`Driver`].
pub struct UringDriver {
    pub(crate) ring: IoUring,
    /// Every op in flight, and the rules it is kept by.
    pub(crate) life: InFlight<InRing>,
    caps: Capabilities,
    waker: Arc<EventfdWaker>,
    /// The eventfd read's 8-byte target; leaked if the read is still in flight at drop.
    waker_buf: *mut u64,
    pub(crate) waker_armed: bool,
    enabled: bool,
    flags_used: &'static str,
    /// Set up with DEFER_TASKRUN: completions appear only when we enter
    /// with GETEVENTS.
    defer: bool,
    /// What `io_uring_enter` is called on: the ring fd, or its registered index.
    pub(crate) enter_fd: i32,
    pub(crate) enter_flags: u32,
    /// Reused buffer of (user_data, result, flags) copied out of the CQ.
    pub(crate) cqe_batch: Vec<(u64, i32, u32)>,
    /// Buffer pools registered as provided-buffer rings (by first use).
    pools: Vec<bufring::Registered>,
    /// Registries of fixed buffers registered in the ring's buffer table.
    fixed: FixedTable,
    /// Fds registered in the ring's file table (`UringBuilder::register_files`).
    files: FileTable,
    /// Spare pipes for send_file (shared with the send_files in flight).
    pipes: Rc<ops::splice::Pipes>,
}

/// The fd mark (`InFlight::mark_fd`) of a socket made non-blocking for
/// send_file.
const MARK_NONBLOCKING: u8 = 1;

// SAFETY: the ring and every slot move with the driver; `waker_buf` is owned
// by the driver alone. Every clone of `pipes` (an `Rc`) is in the driver or
// in one of its slots, so all of them move together. With SINGLE_ISSUER the ring is enabled on the first
// thread that uses it, so moving an unused driver to another thread is fine.
unsafe impl Send for UringDriver {}

impl UringDriver {
    /// A driver with the default set-up (256 entries).
    pub fn new() -> io::Result<UringDriver> {
        UringBuilder::default().build()
    }

    /// A builder for the ring's sizes and flags.
    pub fn builder() -> UringBuilder {
        UringBuilder::default()
    }

    pub(crate) fn with_builder(b: UringBuilder) -> io::Result<UringDriver> {
        let (ring, flags_used) = setup(&b)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {}", errno_name(&e))))?;
        let params = ring.params();
        if !params.is_feature_ext_arg() || !params.is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring: the kernel lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (needs Linux 5.11+)",
            ));
        }
        let mut probe = io_uring::Probe::new();
        let (caps, fixed) = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => {
                let mut caps = Capabilities::all(Support::Native);
                for k in OpKind::ALL {
                    if !probe.is_supported(ops::opcode_of(k)) {
                        caps.set(k, Support::Unsupported);
                    }
                }
                let fixed = FixedTable::new(
                    b.fixed_buffers,
                    probe.is_supported(opcode::ReadFixed::CODE),
                    probe.is_supported(opcode::WriteFixed::CODE),
                );
                (caps, fixed)
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_uring_register(PROBE): {}", errno_name(&e)),
                ))
            }
        };
        // SAFETY: plain syscall; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh fd we own.
        let waker = Arc::new(EventfdWaker {
            fd: unsafe { OwnedFd::from_raw_fd(efd) },
        });
        let ring_fd = ring.as_raw_fd();
        Ok(UringDriver {
            ring,
            life: InFlight::with_capacity(256),
            caps,
            waker,
            waker_buf: Box::into_raw(Box::new(0u64)),
            waker_armed: false,
            enabled: false,
            defer: flags_used == DEFER,
            enter_fd: ring_fd,
            enter_flags: 0,
            cqe_batch: Vec::with_capacity(256),
            pools: Vec::new(),
            fixed,
            files: FileTable::new(b.register_files),
            pipes: Rc::new(ops::splice::Pipes::new(b.spare_pipes)),
            flags_used,
        })
    }

    /// Which set-up flags the ring got (`defer_taskrun`, `coop_taskrun`, `plain`).
    pub fn setup_flags(&self) -> &'static str {
        self.flags_used
    }

    /// Enables a ring created disabled, on the thread that first uses it,
    /// and keeps the waker's read armed.
    #[inline]
    fn ensure_enabled(&mut self) -> io::Result<()> {
        if self.enabled && self.waker_armed {
            return Ok(());
        }
        self.enable_slow()
    }

    fn enable_slow(&mut self) -> io::Result<()> {
        if !self.enabled {
            if self.flags_used == DEFER {
                self.ring.submitter().register_enable_rings()?;
            }
            self.register_ring_fd();
            self.enabled = true;
        }
        if !self.waker_armed {
            let e = opcode::Read::new(
                types::Fd(self.waker.fd.as_raw_fd()),
                self.waker_buf.cast(),
                8,
            )
            .build()
            .user_data(UD_WAKER);
            self.push(e, None)?;
            self.waker_armed = true;
        }
        Ok(())
    }

    /// Starts slot `key`'s op (its turn came): a cancel is performed by the
    /// table; anything else goes to the kernel.
    #[inline]
    fn start(&mut self, key: usize) {
        match self.life.slot(key).op {
            Some(Op::Cancel { target }) => return self.life.run_cancel_op(key, target),
            // The fd's ops have ended: its file-table slot goes before the
            // number can be reused.
            Some(Op::Close { fd }) => self.files.release(&self.ring, fd),
            _ => {}
        }
        if let Err(e) = self.issue(key) {
            self.life.finish(key, Err(e));
        }
    }

    /// The buffer group of `pool`, registering it as a provided-buffer
    /// ring on first use.
    fn pool_group(&mut self, pool: &ringport_core::BufPool) -> io::Result<u16> {
        if let Some(r) = self.pools.iter().find(|r| r.pool.id() == pool.id()) {
            return Ok(r.ring.bgid());
        }
        let bgid = u16::try_from(self.pools.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many buffer pools on one ring",
            )
        })?;
        let r = bufring::register(&self.ring, pool, bgid)?;
        self.pools.push(r);
        Ok(bgid)
    }

    /// How many fixed-buffer registries the ring has registered (each one
    /// entry of its buffer table; a registry the kernel refused is not
    /// counted: its ops are plain reads and writes).
    pub fn fixed_registries(&self) -> usize {
        self.fixed.registered()
    }

    /// How many fds are registered in the ring's file table now (with
    /// `UringBuilder::register_files`).
    pub fn registered_files(&self) -> usize {
        self.files.registered()
    }

    /// Gives slot `key`'s op to the kernel.
    #[inline]
    fn issue(&mut self, key: usize) -> io::Result<()> {
        let mut reg = ops::Registered::default();
        // One look at the op for everything registered for it (most ops,
        // a nop among them, need none).
        let mut pool = None;
        let mut send_file = None;
        match &self.life.slot(key).op {
            Some(Op::ReadFixed { fd, offset, buf } | Op::WriteFixed { fd, offset, buf }) => {
                let write = matches!(self.life.slot(key).op, Some(Op::WriteFixed { .. }));
                reg.buf_entry = self.fixed.entry_for(&self.ring, buf.registry(), write);
                if offset.at().is_some() {
                    reg.file_slot = self.files.slot_for(&self.ring, *fd);
                }
            }
            Some(Op::Read { fd, offset, .. } | Op::Write { fd, offset, .. })
                if offset.at().is_some() =>
            {
                reg.file_slot = self.files.slot_for(&self.ring, *fd);
            }
            Some(
                Op::RecvPooled { pool: p, .. }
                | Op::ReadPooled { pool: p, .. }
                | Op::RecvMulti { pool: p, .. },
            ) => pool = Some(p.clone()),
            Some(Op::SendFile { fd, .. }) => send_file = Some(*fd),
            _ => {}
        }
        if let Some(p) = pool {
            reg.bgid = self.pool_group(&p)?;
        }
        if let Some(fd) = send_file {
            self.start_send_file(key, fd);
        }
        let ud = self.life.id_of(key).to_u64();
        let slot = self.life.slot_mut(key);
        slot.extra.polling = false;
        let progress = slot.progress;
        let op = slot.op.as_mut().expect("a uring op never leaves its slot");
        let e = ops::prepare(op, &mut slot.extra.extra, progress, reg).user_data(ud);
        let ts = slot.extra.deadline_ptr();
        self.push(e, ts)
    }

    /// Waits for readiness of slot `key`'s fd (after `EAGAIN`), then reissues.
    fn issue_poll(&mut self, key: usize, dir: Direction) -> io::Result<()> {
        let ud = self.life.id_of(key).to_u64();
        let slot = self.life.slot_mut(key);
        slot.extra.polling = true;
        let fd = slot.fd().unwrap_or(-1);
        let ev = match dir {
            Direction::Read => libc::POLLIN,
            Direction::Write => libc::POLLOUT,
        };
        let e = opcode::PollAdd::new(types::Fd(fd), ev as u32)
            .build()
            .user_data(ud);
        let ts = slot.extra.deadline_ptr();
        self.push(e, ts)
    }

    /// Asks the kernel to stop slot `key`'s op; its CQE follows.
    fn cancel_in_kernel(&mut self, key: usize) {
        let ud = self.life.id_of(key).to_u64();
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ud))
            .build()
            .user_data(UD_IGNORE);
        // Only fails when the ring itself does; the op still ends on its own
        // then (its deadline, its peer, the driver's drop).
        let _ = self.push(e, None);
    }

    /// Does what the table left to do: starts ops whose turn came and
    /// cancels ops asked to end, until neither is left.
    #[inline]
    pub(crate) fn pump(&mut self) {
        while self.life.has_work() {
            if let Some(k) = self.life.next_start() {
                self.start(k);
            } else if let Some(k) = self.life.next_cancel() {
                self.cancel_in_kernel(k);
            }
        }
    }

    #[inline]
    pub(crate) fn lookup(&self, id: OpId) -> Option<usize> {
        self.life.lookup(id)
    }

    /// Handles one CQE of slot `key`: ends the op, or starts it again (a
    /// poll after `EAGAIN`, the rest of a stream write).
    pub(crate) fn on_cqe(&mut self, key: usize, res: i32, flags: u32) {
        let slot = self.life.slot_mut(key);
        if slot.stage() != Stage::Running {
            return;
        }
        if slot.op.as_ref().is_some_and(Op::is_multishot) {
            return self.on_multishot_cqe(key, res, flags);
        }
        let asked = slot.ending().is_some();
        let res = if let Some(Op::SendZc { .. }) = slot.op {
            // A zero-copy send ends with two CQEs: the count (with MORE if a
            // notification follows), then the notification, after which the
            // kernel no longer reads the buffer. Only then may it go on.
            let e = slot.extra.extra.get_or_insert_with(Box::default);
            if io_uring::cqueue::notif(flags) {
                e.zc_sent.take().unwrap_or(0)
            } else if io_uring::cqueue::more(flags) {
                e.zc_sent = Some(res);
                return;
            } else {
                res
            }
        } else {
            res
        };
        // The kernel's own restart codes (ERESTARTSYS and its kin, 512 to
        // 516) come through from a worker interrupted by a cancel (a
        // splice, seen on 6.18): they mean "interrupted", never a result.
        let res = if (-516..=-512).contains(&res) {
            if asked {
                -libc::ECANCELED
            } else {
                -libc::EINTR
            }
        } else {
            res
        };
        if slot.extra.polling {
            let r = if res < 0 {
                Err(ops::os_error(res))
            } else if asked {
                // The cancel may have missed the poll (it was already done):
                // the op ends here rather than starting again.
                Err(cancelled())
            } else {
                return self.reissue(key);
            };
            return self.life.finish(key, r);
        }
        if res == -libc::EAGAIN {
            if let Some(d) = slot.direction() {
                if asked {
                    return self.life.finish(key, Err(cancelled()));
                }
                if let Err(e) = self.issue_poll(key, d) {
                    self.life.finish(key, Err(e));
                }
                return;
            }
        }
        if res < 0 {
            return self.life.finish(key, Err(ops::os_error(res)));
        }
        if let (
            Some(bid),
            Some(
                Op::RecvPooled { pool, .. }
                | Op::ReadPooled { pool, .. }
                | Op::RecvMulti { pool, .. },
            ),
        ) = (io_uring::cqueue::buffer_select(flags), &slot.op)
        {
            // The ring no longer holds the buffer the kernel picked.
            if let Some(r) = self.pools.iter().find(|r| r.pool.id() == pool.id()) {
                r.ring.taken(bid);
            }
        }
        let slot = self.life.slot_mut(key);
        let op = slot.op.as_mut().expect("a uring op never leaves its slot");
        let step = ops::complete(
            op,
            slot.extra.extra.as_deref(),
            &mut slot.progress,
            res as usize,
            asked,
            flags,
        );
        match step {
            ops::Step::Done(n) => self.life.finish(key, Ok(n)),
            ops::Step::Fail(e) => self.life.finish(key, Err(e)),
            ops::Step::Again => self.reissue(key),
        }
    }

    /// Sets up send_file `key`'s state before its first step: a spare pipe,
    /// and its socket `fd` made non-blocking unless it was already.
    fn start_send_file(&mut self, key: usize, fd: RawFd) {
        let slot = self.life.slot(key);
        let started = slot
            .extra
            .extra
            .as_ref()
            .is_some_and(|e| matches!(e.scratch, ops::Scratch::Splice(_)));
        if started {
            return;
        }
        if !self.life.mark_fd(fd, MARK_NONBLOCKING) {
            ops::splice::make_nonblocking(fd);
        }
        let st = ops::splice::SpliceState::new(&self.pipes);
        let slot = self.life.slot_mut(key);
        let extra = slot.extra.extra.get_or_insert_with(Box::default);
        extra.scratch = ops::Scratch::Splice(Box::new(st));
    }

    /// Handles one CQE of multishot op `key`: a result to hand out, and the
    /// op's end after its last one.
    fn on_multishot_cqe(&mut self, key: usize, res: i32, flags: u32) {
        let op = self.life.slot(key).op.as_ref().expect("in its slot");
        if let (Some(bid), Op::RecvMulti { pool, .. }) =
            (io_uring::cqueue::buffer_select(flags), op)
        {
            // The ring no longer holds the buffer the kernel picked.
            if let Some(r) = self.pools.iter().find(|r| r.pool.id() == pool.id()) {
                r.ring.taken(bid);
            }
        }
        let (shot, end) = ops::multishot_cqe(op, res, flags);
        if let Some((r, buf)) = shot {
            self.life.shot(key, r, buf);
        }
        if let Some(r) = end {
            self.life.finish(key, r);
        }
    }

    fn reissue(&mut self, key: usize) {
        if let Err(e) = self.issue(key) {
            self.life.finish(key, Err(e));
        }
    }

    fn wait_inner(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        // The clock is read only when the wait must block (not at all when
        // enough completions are already there).
        let mut deadline: Option<Instant> = None;
        loop {
            self.reap();
            self.pump();
            let woken = !self.waker_armed;
            if woken {
                // A wake ends the wait; re-arm for the next one.
                self.ensure_enabled()?;
            }
            let enough = self.life.ready_len() >= min || woken;
            let left = match (enough, timeout, deadline) {
                (true, _, _) | (false, None, _) => timeout,
                (false, Some(t), None) => {
                    deadline = Some(Instant::now() + t);
                    Some(t)
                }
                (false, Some(_), Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            };
            if enough || left == Some(Duration::ZERO) {
                if !self.ring.submission().is_empty() || self.kernel_has_work() {
                    self.enter(0, self.defer, None).or_else(ignore_intr)?;
                    self.reap();
                    self.pump();
                }
                return Ok(());
            }
            // Wait for one completion at a time: a wake (eventfd) does not end
            // an io_uring_enter waiting for more than one (measured on 6.18:
            // with min 8 it returned only at its timeout).
            let res = match left {
                None => self.enter(1, true, None),
                Some(left) => self.enter(1, true, Some(left)),
            };
            res.or_else(ignore_intr)?;
        }
    }
}

impl Driver for UringDriver {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    #[inline]
    fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        if let Err(error) = self.ensure_enabled() {
            return Err(SubmitError { error, op });
        }
        let extra = InRing {
            extra: deadline.map(|d| {
                Box::new(Extra {
                    deadline: Some(abs_timespec(d)),
                    ..Extra::default()
                })
            }),
            polling: false,
        };
        let (id, key, admitted) = self
            .life
            .submit(op, token, deadline, extra, &self.caps, "uring")?;
        if admitted == Admitted::Start {
            self.start(key);
        }
        self.pump();
        Ok(id)
    }

    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.ensure_enabled()?;
        let r = self.wait_inner(min, timeout);
        let n = self.life.deliver(out);
        r.map(|_| n)
    }

    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.ensure_enabled()?;
        let r = self.wait_inner(min, timeout);
        let n = self.life.deliver_ready(out);
        r.map(|_| n)
    }

    #[inline]
    fn take(&mut self, id: OpId) -> Option<Completion> {
        self.life.take(id)
    }

    fn take_shot(&mut self, id: OpId) -> Option<Shot> {
        self.life.take_shot(id)
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        self.life.cancel_id(id)?;
        self.pump();
        Ok(())
    }

    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.life.cancel_fd(fd);
        self.pump();
        Ok(n)
    }

    fn waker(&self) -> DriverWaker {
        DriverWaker::new(self.waker.clone())
    }

    fn in_flight(&self) -> usize {
        self.life.len()
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Ops that never reached the kernel go now; closes parked behind
        // their fd's ops are performed below, after those ops end, or the
        // numbers would stay open for good.
        let parked_closes = self.life.drain_unstarted();
        // What still reaches the kernel ends when it comes back: a partial
        // send or a poll is not started again.
        let keys: Vec<usize> = self.life.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.life
                .cancel(k, ringport_core::lifecycle::Ending::Cancelled);
        }
        // The cancels are not sent one by one: one cancel-any below.
        while self.life.next_cancel().is_some() {}
        let mut cleanly = true;
        if self.enabled && (self.life.live() > 0 || self.waker_armed) {
            // Cancel everything in the kernel and give it a moment.
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(UD_IGNORE);
            let start = Instant::now();
            if self.push(e, None).is_ok() {
                while (self.life.live() > 0 || self.waker_armed) && start.elapsed() < DROP_GRACE {
                    match self.enter(1, true, Some(Duration::from_millis(50))) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                            ) => {}
                        Err(_) => break, // e.g. EEXIST: another thread owns the ring
                    }
                    self.reap();
                    // Whatever the reaped CQEs let start (the next op of a
                    // direction, a close) is not started now.
                    for fd in self.life.drain_unstarted() {
                        // SAFETY: the close was submitted to us, so the fd
                        // is ours; no op of ours will start on it again.
                        unsafe { libc::close(fd) };
                    }
                    // The kernel is done with these: buffers drop now, fds
                    // made by undelivered opens and accepts are closed.
                    self.life.drop_ready();
                }
            }
            cleanly = self.life.live() == 0 && !self.waker_armed;
        }
        self.life.drop_ready();
        // The file table lets go of its files now, not when the ring is
        // torn down (later, asynchronously, or not before the thread exits
        // while the ring fd is registered): a closed fd's file really closes.
        self.files.unregister(&self.ring);
        // The fds' ops have ended (or the grace ran out: then the kernel keeps
        // its own reference to the file until they do), so the numbers go now.
        for fd in parked_closes {
            // SAFETY: the close was submitted to us, so the fd is ours; no op of
            // ours will start on it again.
            unsafe { libc::close(fd) };
        }
        if cleanly {
            // No read can pick a buffer any more: the pools get their
            // buffers back.
            for r in std::mem::take(&mut self.pools) {
                bufring::unregister(&self.ring, r);
            }
            self.fixed.unregister(&self.ring);
        } else {
            // The kernel may still write into these: leak them, never free
            // early (the rings and their pools with them).
            self.life.leak_all();
            std::mem::forget(std::mem::take(&mut self.pools));
        }
        if cleanly && !self.waker_buf.is_null() {
            // SAFETY: made by Box::into_raw in with_builder; no read is in flight.
            drop(unsafe { Box::from_raw(self.waker_buf) });
        }
    }
}
