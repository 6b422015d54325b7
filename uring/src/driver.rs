//! The [`UringDriver`] and its [`Driver`] impl: submit, wait, cancel and
//! drop; the in-flight table (slots with generations), the per-fd FIFO
//! queues (one op running per direction) and the close protocol (a close
//! marks its fd closing at submit, cancels the fd's ops and runs after them).
//! How each op becomes an SQE and what its result means is in `ops/`; the
//! ring itself (push, enter, reap) in `ring.rs`.

use crate::ops::{self, Extra};
use crate::ring::{abs_timespec, errno_name, ignore_intr, setup, DEFER};
use crate::UringBuilder;
use io_uring::{opcode, types, IoUring};
use ringport_core::driver::{
    admit, cancelled, deadline_passed, drop_undelivered, Capabilities, Completion, Driver,
    DriverWaker, SubmitError, Support, Wake,
};
use ringport_core::op::{CancelTarget, Direction, Op, OpId, OpKind};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `user_data` of CQEs nobody waits for (link timeouts, internal cancels).
pub(crate) const UD_IGNORE: u64 = u32::MAX as u64;
/// `user_data` of the waker's eventfd read.
pub(crate) const UD_WAKER: u64 = (1 << 32) | u32::MAX as u64;
/// How long `Drop` waits for cancelled ops before leaking their buffers.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// Where an op is.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum State {
    /// In its fd's queue, not yet given to the kernel.
    Queued,
    /// Its SQE is in the ring (or its CQE not yet reaped).
    InKernel,
    /// Waiting for readiness after the kernel said `EAGAIN` (a non-blocking fd).
    Polling,
    /// A `close` waiting for the fd's other ops to finish.
    Closing,
}

struct Slot {
    generation: u32,
    token: u64,
    op: Op,
    /// Scratch memory, the deadline and counters that only some ops need.
    extra: Option<Box<Extra>>,
    state: State,
    /// Bytes of a stream write already done (resubmitted until all are);
    /// for a cancel by fd, how many queued ops it ended itself.
    progress: usize,
    /// The caller asked to cancel it (so `ECANCELED` is not a deadline).
    cancel_requested: bool,
}

impl Slot {
    fn deadline_ptr(&self) -> Option<*const types::Timespec> {
        let e = self.extra.as_deref()?;
        e.deadline.as_ref().map(|t| t as *const types::Timespec)
    }
}

#[derive(Default)]
struct FdState {
    /// Ops on this fd not yet completed (a pending close not counted).
    ops: u32,
    busy: [bool; 2],
    queue: [VecDeque<usize>; 2],
    closing: Option<usize>,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
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
    slots: Slab<Slot>,
    next_generation: u32,
    fds: Vec<FdState>,
    /// Completions made without the kernel or reaped early, delivered by `wait`.
    ready: Vec<Completion>,
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
    /// Reused buffer of (user_data, result) pairs copied out of the CQ.
    pub(crate) cqe_batch: Vec<(u64, i32)>,
}

// SAFETY: the ring and every slot move with the driver; `waker_buf` is owned
// by the driver alone. With SINGLE_ISSUER the ring is enabled on the first
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
        let caps = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => {
                let mut caps = Capabilities::all(Support::Native);
                for k in OpKind::ALL {
                    if !probe.is_supported(ops::opcode_of(k)) {
                        caps.set(k, Support::Unsupported);
                    }
                }
                caps
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
            slots: Slab::with_capacity(256),
            next_generation: 0,
            fds: Vec::new(),
            ready: Vec::with_capacity(64),
            caps,
            waker,
            waker_buf: Box::into_raw(Box::new(0u64)),
            waker_armed: false,
            enabled: false,
            defer: flags_used == DEFER,
            enter_fd: ring_fd,
            enter_flags: 0,
            cqe_batch: Vec::with_capacity(256),
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

    /// The per-fd state of `fd`, growing the table to reach it. Only fds of
    /// ops that passed [`Op::validate`] at submit get here: never negative,
    /// never beyond the hard open-file limit, so the table stays bounded.
    fn fd_state(&mut self, fd: RawFd) -> &mut FdState {
        debug_assert!(fd >= 0, "fd_state of an unvalidated fd {fd}");
        let i = fd as usize;
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdState::default);
        }
        &mut self.fds[i]
    }

    /// Gives slot `key`'s op to the kernel.
    fn issue(&mut self, key: usize) -> io::Result<()> {
        let ud = self.user_data(key);
        let slot = &mut self.slots[key];
        slot.state = State::InKernel;
        let e = ops::prepare(&mut slot.op, &mut slot.extra, slot.progress).user_data(ud);
        let ts = slot.deadline_ptr();
        self.push(e, ts)
    }

    /// Waits for readiness of slot `key`'s fd (after `EAGAIN`), then reissues.
    fn issue_poll(&mut self, key: usize, dir: Direction) -> io::Result<()> {
        let ud = self.user_data(key);
        let slot = &mut self.slots[key];
        slot.state = State::Polling;
        let fd = slot.op.fd().unwrap_or(-1);
        let ev = match dir {
            Direction::Read => libc::POLLIN,
            Direction::Write => libc::POLLOUT,
        };
        let e = opcode::PollAdd::new(types::Fd(fd), ev as u32)
            .build()
            .user_data(ud);
        let ts = slot.deadline_ptr();
        self.push(e, ts)
    }

    fn user_data(&self, key: usize) -> u64 {
        OpId::new(key as u32, self.slots[key].generation).to_u64()
    }

    #[inline]
    pub(crate) fn lookup(&self, id: OpId) -> Option<usize> {
        let key = id.slot();
        match self.slots.get(key) {
            Some(s) if s.generation == id.generation() => Some(key),
            _ => None,
        }
    }

    /// Ends slot `key` with `result`, frees its place in the fd's queue, and
    /// starts what waited behind it.
    #[inline]
    fn finish(&mut self, key: usize, result: io::Result<usize>) {
        let slot = self.slots.remove(key);
        let id = OpId::new(key as u32, slot.generation);
        // Only the op running in its direction frees the direction; a queued
        // op that ends (cancelled) leaves the running one where it is.
        let was_running = slot.state != State::Queued;
        let fd = slot.op.fd();
        let (dir, is_close) = match fd {
            Some(_) => (slot.op.direction(), matches!(slot.op, Op::Close { .. })),
            None => (None, false),
        };
        self.ready.push(Completion {
            id,
            token: slot.token,
            result,
            op: slot.op,
        });
        let Some(fd) = fd else { return };
        if is_close {
            *self.fd_state(fd) = FdState::default();
            return;
        }
        let st = self.fd_state(fd);
        st.ops = st.ops.saturating_sub(1);
        let mut next = None;
        if let Some(d) = dir {
            let i = dir_index(d);
            if was_running {
                next = st.queue[i].pop_front();
                st.busy[i] = next.is_some();
            }
        }
        // A close parked behind this fd's ops starts when the last one ends
        // (one already in the kernel stays recorded until its CQE).
        let close = if st.ops == 0 { st.closing } else { None };
        let close = close.filter(|&c| self.slots[c].state == State::Closing);
        if let Some(n) = next {
            if let Err(e) = self.issue(n) {
                self.finish(n, Err(e));
            }
        }
        if let Some(c) = close {
            if let Err(e) = self.issue(c) {
                self.finish(c, Err(e));
            }
        }
    }

    /// Handles one CQE of slot `key`: ends the op, or starts it again (a
    /// poll after `EAGAIN`, the rest of a stream write).
    pub(crate) fn on_cqe(&mut self, key: usize, res: i32) {
        let slot = &mut self.slots[key];
        match slot.state {
            State::Polling => {
                if res < 0 {
                    let err = self.error_for(key, res);
                    return self.finish(key, Err(err));
                }
                if slot.cancel_requested {
                    // The cancel may have missed the poll (it was already
                    // done): the op ends here rather than starting again.
                    return self.finish_cancelled(key);
                }
                if let Err(e) = self.issue(key) {
                    self.finish(key, Err(e));
                }
                return;
            }
            State::Queued | State::Closing => return,
            State::InKernel => {}
        }
        if let Op::Cancel { target } = slot.op {
            // Ops cancelled from our own queues (counted in `progress`) count too.
            let reached = slot.extra.as_ref().map_or(0, |e| e.reached);
            let result = ops::cancel_result(target, res, slot.progress, reached);
            return self.finish(key, result);
        }
        if res == -libc::EAGAIN {
            if let Some(d) = slot.op.direction() {
                if slot.cancel_requested {
                    return self.finish_cancelled(key);
                }
                if let Err(e) = self.issue_poll(key, d) {
                    self.finish(key, Err(e));
                }
                return;
            }
        }
        if res < 0 {
            if res == -libc::ECANCELED && slot.progress > 0 {
                // A stream write cancelled, or ended by its deadline, reports
                // the bytes that went out (only a resubmitted stream write
                // has progress).
                let done = slot.progress;
                return self.finish(key, Ok(done));
            }
            let err = self.error_for(key, res);
            return self.finish(key, Err(err));
        }
        let step = ops::complete(
            &mut slot.op,
            slot.extra.as_deref(),
            &mut slot.progress,
            res as usize,
            slot.cancel_requested,
        );
        match step {
            ops::Step::Done(n) => self.finish(key, Ok(n)),
            ops::Step::Again => {
                if let Err(e) = self.issue(key) {
                    self.finish(key, Err(e));
                }
            }
        }
    }

    /// Ends slot `key`, whose cancel was asked for, without starting it
    /// again: a stream write with bytes out reports them, anything else
    /// `ECANCELED`.
    fn finish_cancelled(&mut self, key: usize) {
        let slot = &self.slots[key];
        let r = if slot.progress > 0 && slot.op.direction() == Some(Direction::Write) {
            Ok(slot.progress)
        } else {
            Err(cancelled())
        };
        self.finish(key, r)
    }

    /// The error for a failed CQE: `ECANCELED` caused by the op's own deadline
    /// (and not by a cancel request) is reported as `TimedOut`.
    fn error_for(&self, key: usize, res: i32) -> io::Error {
        let slot = &self.slots[key];
        if res == -libc::ECANCELED && slot.deadline_ptr().is_some() && !slot.cancel_requested {
            deadline_passed()
        } else {
            ops::os_error(res)
        }
    }

    /// Cancels slot `key`: a queued op completes now with `ECANCELED`; one in
    /// the kernel gets an async cancel (its CQE follows).
    fn cancel_slot(&mut self, key: usize) -> io::Result<()> {
        let slot = &mut self.slots[key];
        slot.cancel_requested = true;
        match slot.state {
            State::Queued => {
                if let (Some(fd), Some(d)) = (slot.op.fd(), slot.op.direction()) {
                    let q = &mut self.fd_state(fd).queue[dir_index(d)];
                    q.retain(|&k| k != key);
                }
                self.finish(key, Err(cancelled()));
                Ok(())
            }
            State::Closing => Ok(()),
            State::InKernel | State::Polling => {
                let ud = self.user_data(key);
                let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ud))
                    .build()
                    .user_data(UD_IGNORE);
                self.push(e, None)
            }
        }
    }

    /// Cancels every op on `fd` (not a pending close); returns how many.
    fn cancel_all_on(&mut self, fd: RawFd) -> io::Result<usize> {
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.op.fd() == Some(fd) && s.state != State::Closing)
            .map(|(k, _)| k)
            .collect();
        for &k in &keys {
            self.cancel_slot(k)?;
        }
        Ok(keys.len())
    }

    fn wait_inner(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        // The clock is read only when the wait must block (not at all when
        // enough completions are already there).
        let mut deadline: Option<Instant> = None;
        loop {
            self.reap();
            let woken = !self.waker_armed;
            if woken {
                // A wake ends the wait; re-arm for the next one.
                self.ensure_enabled()?;
            }
            let enough = self.ready.len() >= min || woken;
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

    fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        let fds = &self.fds;
        let closing = |fd: RawFd| fds.get(fd as usize).is_some_and(|s| s.closing.is_some());
        if let Err(error) = admit(&op, &self.caps, "uring", closing) {
            return Err(SubmitError { error, op });
        }
        if let Err(error) = self.ensure_enabled() {
            return Err(SubmitError { error, op });
        }
        let kind = op.kind();
        let fd = op.fd();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let dir = op.direction();
        let is_close = kind == OpKind::Close;
        let cancel_target = match &op {
            Op::Cancel { target } => Some(*target),
            _ => None,
        };
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let id = OpId::new(key as u32, generation);
        if fd.is_none() && deadline.is_none() && cancel_target.is_none() {
            // Fast path (nop, timeout, openat): straight to the ring. The SQE
            // points only at heap memory the op owns, so the op may move into
            // the slab after it is prepared.
            let mut op = op;
            let mut extra = None;
            let e = ops::prepare(&mut op, &mut extra, 0).user_data(id.to_u64());
            entry.insert(Slot {
                generation,
                token,
                op,
                extra,
                state: State::InKernel,
                progress: 0,
                cancel_requested: false,
            });
            if let Err(error) = self.push(e, None) {
                self.finish(key, Err(error));
            }
            return Ok(id);
        }
        entry.insert(Slot {
            generation,
            token,
            op,
            extra: deadline.map(|d| {
                Box::new(Extra {
                    deadline: Some(abs_timespec(d)),
                    ..Extra::default()
                })
            }),
            state: State::Queued,
            progress: 0,
            cancel_requested: false,
        });

        let started = if let Some(target) = cancel_target {
            self.start_cancel(key, target)
        } else if let Some(fd) = fd {
            if is_close {
                // From now on the fd takes no new op (see the check above).
                let st = self.fd_state(fd);
                st.closing = Some(key);
                if st.ops > 0 {
                    self.slots[key].state = State::Closing;
                    self.cancel_all_on(fd).map(|_| ())
                } else {
                    self.issue(key)
                }
            } else {
                let st = self.fd_state(fd);
                st.ops += 1;
                match dir {
                    Some(d) if st.busy[dir_index(d)] => {
                        st.queue[dir_index(d)].push_back(key);
                        Ok(())
                    }
                    Some(d) => {
                        st.busy[dir_index(d)] = true;
                        self.issue(key)
                    }
                    None => self.issue(key),
                }
            }
        } else {
            self.issue(key)
        };
        match started {
            Ok(()) => Ok(id),
            Err(error) => {
                // Could not reach the kernel: the op completes with the error.
                if self.slots.contains(key) {
                    self.finish(key, Err(error));
                }
                Ok(id)
            }
        }
    }

    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.ensure_enabled()?;
        let r = self.wait_inner(min, timeout);
        let n = ringport_core::driver::deliver(out, &mut self.ready);
        r.map(|_| n)
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        match self.lookup(id) {
            Some(key) => self.cancel_slot(key),
            None => Err(ringport_core::driver::not_in_flight()),
        }
    }

    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        self.cancel_all_on(fd)
    }

    fn waker(&self) -> DriverWaker {
        DriverWaker::new(self.waker.clone())
    }

    fn in_flight(&self) -> usize {
        self.slots.len() + self.ready.len()
    }
}

impl UringDriver {
    /// Starts `Op::Cancel` in slot `key`.
    fn start_cancel(&mut self, key: usize, target: CancelTarget) -> io::Result<()> {
        match target {
            CancelTarget::Op(id) => match self.lookup(id) {
                Some(t) if self.slots[t].state == State::Queued => {
                    self.cancel_slot(t)?;
                    self.finish(key, Ok(1));
                    Ok(())
                }
                Some(t) => {
                    self.slots[t].cancel_requested = true;
                    self.issue(key)
                }
                None => {
                    self.finish(key, Err(ringport_core::driver::not_in_flight()));
                    Ok(())
                }
            },
            CancelTarget::Fd(fd) => {
                // Queued ops end here; the kernel's count for the rest comes in
                // the cancel's CQE, added to this one.
                let queued: Vec<usize> = self
                    .slots
                    .iter()
                    .filter(|(k, s)| *k != key && s.op.fd() == Some(fd) && s.state == State::Queued)
                    .map(|(k, _)| k)
                    .collect();
                let in_kernel: usize = self
                    .slots
                    .iter()
                    .filter(|(k, s)| {
                        *k != key
                            && s.op.fd() == Some(fd)
                            && matches!(s.state, State::InKernel | State::Polling)
                    })
                    .count();
                for &k in &queued {
                    self.cancel_slot(k)?;
                }
                for (k, s) in self.slots.iter_mut() {
                    if k != key && s.op.fd() == Some(fd) {
                        s.cancel_requested = true;
                    }
                }
                if in_kernel == 0 {
                    let r = if queued.is_empty() {
                        Err(ringport_core::driver::not_in_flight())
                    } else {
                        Ok(queued.len())
                    };
                    self.finish(key, r);
                    return Ok(());
                }
                self.slots[key].progress = queued.len();
                self.slots[key]
                    .extra
                    .get_or_insert_with(Box::default)
                    .reached = queued.len() + in_kernel;
                self.issue(key)
            }
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Closes parked behind their fd's ops: the fd is ours to close, after
        // those ops end (below), or the number would stay open for good.
        let mut parked_closes: Vec<RawFd> = Vec::new();
        // Ops still queued never reached the kernel: they can go now.
        let queued: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == State::Queued || s.state == State::Closing)
            .map(|(k, _)| k)
            .collect();
        for k in queued {
            let s = self.slots.remove(k);
            if let (State::Closing, Op::Close { fd }) = (s.state, &s.op) {
                parked_closes.push(*fd);
            }
        }
        // What still reaches the kernel ends when it comes back: a partial
        // send or a poll is not started again.
        for (_, s) in self.slots.iter_mut() {
            s.cancel_requested = true;
        }
        // Nothing may start any more: forget the per-fd queues.
        self.fds.clear();
        self.ready.drain(..).for_each(drop_undelivered);
        let mut cleanly = true;
        if self.enabled && (!self.slots.is_empty() || self.waker_armed) {
            // Cancel everything in the kernel and give it a moment.
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(UD_IGNORE);
            let start = Instant::now();
            if self.push(e, None).is_ok() {
                while (!self.slots.is_empty() || self.waker_armed) && start.elapsed() < DROP_GRACE {
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
                    for k in self
                        .slots
                        .iter()
                        .filter(|(_, s)| s.state == State::Queued)
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>()
                    {
                        drop(self.slots.remove(k));
                    }
                    // The kernel is done with these: buffers drop now, fds
                    // made by undelivered opens and accepts are closed.
                    self.ready.drain(..).for_each(drop_undelivered);
                }
            }
            cleanly = self.slots.is_empty() && !self.waker_armed;
        }
        // The fds' ops have ended (or the grace ran out: then the kernel keeps
        // its own reference to the file until they do), so the numbers go now.
        for fd in parked_closes {
            // SAFETY: the close was submitted to us, so the fd is ours; no op of
            // ours will start on it again.
            unsafe { libc::close(fd) };
        }
        if !cleanly {
            // The kernel may still write into these: leak them, never free early.
            for s in self.slots.drain() {
                std::mem::forget(s);
            }
        } else if !self.waker_buf.is_null() {
            // SAFETY: made by Box::into_raw in with_builder; no read is in flight.
            drop(unsafe { Box::from_raw(self.waker_buf) });
        }
    }
}
