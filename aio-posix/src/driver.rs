//! The [`Driver`] impl: submit (routing files to aio and everything else to
//! the delegate), wait, cancel, close, and drop.
//!
//! This module must never free or reuse an `aiocb` (or its buffer) before
//! glibc is done with it: not before its signal arrived or a sweep saw it
//! finished under glibc's lock. `Drop` leaks what it cannot prove finished.

use crate::notify::{self, Notifier};
use crate::ops::{self, set_error_code, AioReq, AioState, NOT_QUEUED};
use crate::AioBuilder;
use ringport_core::driver::{
    admit, cancelled, deadline_passed, Capabilities, Completion, Driver, DriverWaker, Parking,
    Ready, SubmitError, Support,
};
use ringport_core::op::{CancelTarget, Offset, Op, OpId, OpKind};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token of the delegate's poll on our eventfd (told apart by its id).
const POLL_TOKEN: u64 = u64::MAX;
/// The bit that marks an id as the delegate's own: an op handed straight
/// on keeps the delegate's id (with this bit) and the caller's token, and
/// no entry here. (Slab keys never reach it.)
const PASSED: u32 = 1 << 31;

/// The id the caller sees for an op handed straight to the delegate.
fn passed_id(inner: OpId) -> OpId {
    OpId::new(inner.slot() as u32 | PASSED, inner.generation())
}

/// The delegate's id of an op handed straight on, if `id` is one.
fn delegate_id(id: OpId) -> Option<OpId> {
    let slot = id.slot() as u32;
    (slot & PASSED != 0).then(|| OpId::new(slot & !PASSED, id.generation()))
}
/// How often in-flight requests are swept while any is outstanding.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How soon the next sweep comes after one that found lost notifications
/// (the signal queue is full, so more are likely).
const SWEEP_SOON: Duration = Duration::from_millis(5);
/// Above this many fds with requests out, a blocking wait arms every
/// request instead of the first per fd.
const MAX_ARMED_FDS: usize = 16;
/// How many finished request records are kept for reuse.
const SPARES: usize = 256;
/// How long `Drop` waits for outstanding requests before leaking them.
const DROP_GRACE: Duration = Duration::from_secs(2);

enum Route {
    /// Performed here through aio.
    Aio(Box<AioReq>),
    /// Handed to the delegate, which gave it this id (always a real one: an
    /// entry gets this route only once the delegate accepted the op).
    Delegate(OpId),
    /// A cancel-by-fd handed to the delegate (its id there), plus the aio
    /// ops it reached here.
    CancelFd(OpId, usize),
    /// Kept here: a close waiting for the fd's aio requests to end, or an op
    /// whose completion is made here.
    Held(Op),
    /// Being handed to the delegate (only inside `forward`).
    Forwarding,
}

struct Entry {
    generation: u32,
    token: u64,
    route: Route,
}

#[derive(Copy, Clone, PartialEq, Eq, Default)]
enum FdKind {
    #[default]
    Unknown,
    File,
    Other,
}

/// What the driver keeps per fd number. It never outlives the fd: a close
/// resets it once the close is handed on, and it is indexed only by fds
/// `Op::validate` accepted (below the open-file limit).
#[derive(Copy, Clone, Default)]
struct FdState {
    /// How to route ops: found with `fstat` once per fd.
    kind: FdKind,
    /// aio requests on the fd that glibc holds.
    aio: u32,
    /// A close is parked here until the fd's aio requests end: new ops on
    /// the fd are refused.
    close_parked: bool,
    /// Closes of this number handed to the delegate and not yet completed:
    /// whether the fd is still the old one is known to the delegate only, so
    /// every op on it goes there (never to aio) until they complete.
    closes_forwarded: u32,
}

/// The POSIX aio [`Driver`].
pub struct AioDriver {
    delegate: Box<dyn Driver>,
    entries: Slab<Entry>,
    next_generation: u32,
    notifier: Notifier,
    /// Per-fd state, indexed by fd (see [`FdState`]).
    fds: Vec<FdState>,
    batch: Vec<usize>,
    waiting: VecDeque<usize>,
    /// The requests glibc holds (state `InFlight`); each knows its place.
    out: Vec<usize>,
    /// How many of `out` glibc completes silently (no signal).
    silent: usize,
    /// Requests found finished by polling, about to be collected.
    finished: Vec<usize>,
    /// Scratch for `flush`: one `lio_listio` list and its keys.
    list: Vec<*mut libc::aiocb>,
    list_keys: Vec<usize>,
    /// aio requests with a deadline (`expire_deadlines` runs only then).
    aio_deadlines: usize,
    in_glibc: usize,
    max_in_flight: usize,
    ready: Vec<Completion>,
    /// Completions announced by `wait_ready`, until taken.
    parking: Parking,
    delegate_out: Vec<Completion>,
    signalled: Vec<(usize, u32)>,
    poll_armed: bool,
    /// The delegate's id of the eventfd poll while it is armed.
    poll_id: Option<OpId>,
    /// Ops handed straight to the delegate (no entry) and not yet complete.
    passed: usize,
    /// The delegate's ids of ops that have an entry here (forwarded closes,
    /// cancels by fd, cancels of those), with the entry's key.
    delegated: Vec<(OpId, usize)>,
    last_sweep: Instant,
    caps: Capabilities,
    /// Requests whose notification glibc could not send, issued again.
    reissued: u64,
    /// The interval until the next sweep.
    sweep_interval: Duration,
    /// Every request signals its completion (see [`AioBuilder::signal_per_request`]).
    signal_per_request: bool,
    /// Set by this driver's wakers; ends the current or next wait.
    woken: Arc<AtomicBool>,
    /// A finished aiocb that `glibc_barrier` hands to `aio_cancel`.
    barrier_cb: Box<libc::aiocb>,
    /// Records of requests seen finished whose aiocbs glibc's notify step
    /// may still read: kept until glibc's lock is next taken (by a
    /// `lio_listio`, an `aio_fsync` or `glibc_barrier`), then spares.
    #[allow(clippy::vec_box)] // boxed: glibc may still read an aiocb, which must not move
    quarantine: Vec<Box<AioReq>>,
    /// Request records to reuse (their ops are `Nop`).
    #[allow(clippy::vec_box)] // boxed: reused as they are, by the next requests
    spare: Vec<Box<AioReq>>,
    /// How long a wait polls for a completion before it blocks.
    spin: Duration,
    /// The `seq` of the next request to go to glibc.
    next_seq: u64,
    /// Scratch for `arm_signals`: the first request out per fd.
    firsts: Vec<(RawFd, u64, usize)>,
    /// Test hook: the next `lio_listio` queues only this many requests.
    #[cfg(test)]
    test_listio_queues: Option<usize>,
}

// SAFETY: the aiocbs hold raw pointers into buffers owned by the same boxed
// request; everything moves together with the driver.
unsafe impl Send for AioDriver {}

impl AioDriver {
    /// An aio driver with the epoll shim for what aio cannot do.
    pub fn new() -> io::Result<AioDriver> {
        Self::builder().build_with_epoll()
    }

    /// How many requests were issued again because glibc could not queue
    /// their completion signal (a full signal queue).
    pub fn reissued(&self) -> u64 {
        self.reissued
    }

    /// A builder (thread count, in-flight limit).
    pub fn builder() -> AioBuilder {
        AioBuilder::default()
    }

    pub(crate) fn with(
        max_in_flight: usize,
        signal_per_request: bool,
        spin: Duration,
        delegate: Box<dyn Driver>,
    ) -> io::Result<AioDriver> {
        let notifier = Notifier::new()?;
        // SAFETY: aiocb is plain data; all-zero is its initial state.
        let mut barrier_cb: Box<libc::aiocb> = Box::new(unsafe { std::mem::zeroed() });
        barrier_cb.aio_fildes = notifier.eventfd();
        // Status 0: finished, so aio_cancel only takes glibc's lock for it.
        set_error_code(&mut barrier_cb, 0);
        let mut caps = delegate.capabilities().clone();
        // Multishot results come from the delegate's own table, which this
        // driver's completion list does not reach: refused here.
        caps.set(OpKind::AcceptMulti, Support::Unsupported);
        caps.set(OpKind::RecvMulti, Support::Unsupported);
        for k in [OpKind::Read, OpKind::Write, OpKind::Fsync] {
            caps.set(k, Support::Native);
        }
        Ok(AioDriver {
            delegate,
            entries: Slab::with_capacity(256),
            next_generation: notifier.first_generation(),
            notifier,
            fds: Vec::new(),
            batch: Vec::new(),
            waiting: VecDeque::new(),
            out: Vec::new(),
            silent: 0,
            finished: Vec::new(),
            list: Vec::new(),
            list_keys: Vec::new(),
            aio_deadlines: 0,
            in_glibc: 0,
            max_in_flight,
            ready: Vec::new(),
            parking: Parking::default(),
            delegate_out: Vec::new(),
            signalled: Vec::new(),
            poll_armed: false,
            poll_id: None,
            passed: 0,
            delegated: Vec::new(),
            last_sweep: Instant::now(),
            caps,
            reissued: 0,
            sweep_interval: SWEEP_EVERY,
            signal_per_request,
            woken: Arc::new(AtomicBool::new(false)),
            barrier_cb,
            quarantine: Vec::new(),
            spare: Vec::new(),
            spin,
            next_seq: 0,
            firsts: Vec::new(),
            #[cfg(test)]
            test_listio_queues: None,
        })
    }

    fn next_gen(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        g
    }

    /// The state of `fd`, which `Op::validate` accepted (so the table is
    /// bounded by the open-file limit).
    fn fd_state(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if i >= self.fds.len() {
            self.fds.resize(i + 1, FdState::default());
        }
        &mut self.fds[i]
    }

    fn fd_kind(&mut self, fd: RawFd) -> FdKind {
        let st = self.fd_state(fd);
        if st.closes_forwarded > 0 {
            // The delegate alone knows whether the fd is still the old one.
            return FdKind::Other;
        }
        if st.kind == FdKind::Unknown {
            // SAFETY: fstat writes one stat struct; a bad fd just fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let kind = if unsafe { libc::fstat(fd, &mut st) } == 0 {
                let t = st.st_mode & libc::S_IFMT;
                if t == libc::S_IFREG || t == libc::S_IFBLK {
                    FdKind::File
                } else {
                    FdKind::Other
                }
            } else {
                // Unknown fd: the delegate reports its error in the completion.
                return FdKind::Other;
            };
            self.fd_state(fd).kind = kind;
        }
        self.fd_state(fd).kind
    }

    fn fd_aio(&mut self, fd: RawFd) -> &mut u32 {
        &mut self.fd_state(fd).aio
    }

    /// Whether `op` goes to aio.
    fn is_aio(&mut self, op: &Op) -> bool {
        match *op {
            Op::Read { fd, offset, .. } | Op::Write { fd, offset, .. } => {
                offset != Offset::Current && self.fd_kind(fd) == FdKind::File
            }
            Op::Fsync { fd, .. } => self.fd_kind(fd) == FdKind::File,
            _ => false,
        }
    }

    fn id_of(&self, key: usize) -> OpId {
        OpId::new(key as u32, self.entries[key].generation)
    }

    fn lookup(&self, id: OpId) -> Option<usize> {
        match self.entries.get(id.slot()) {
            Some(e) if e.generation == id.generation() => Some(id.slot()),
            _ => None,
        }
    }

    /// Fills the aiocb of request `key` for its op. The signal's number and
    /// value are always set; whether glibc sends it (`sigev_notify`) depends
    /// on the mode, and a silent request can be switched over later (see
    /// `arm_signals`).
    fn prepare(&mut self, key: usize) {
        let generation = self.entries[key].generation;
        let value = notify::pack(self.notifier.index(), key, generation);
        let signals = self.signal_per_request;
        let Route::Aio(req) = &mut self.entries[key].route else {
            return;
        };
        // SAFETY: aiocb is plain data; all-zero is its documented initial state.
        req.cb = unsafe { std::mem::zeroed() };
        req.signals = signals;
        req.armed = signals;
        let cb = &mut req.cb;
        ops::fill(cb, &mut req.op);
        cb.aio_sigevent.sigev_notify = if signals {
            libc::SIGEV_SIGNAL
        } else {
            libc::SIGEV_NONE
        };
        cb.aio_sigevent.sigev_signo = notify::signal();
        cb.aio_sigevent.sigev_value = libc::sigval {
            sival_ptr: value as usize as *mut libc::c_void,
        };
        set_error_code(cb, NOT_QUEUED);
    }

    /// Hands batched requests to glibc: reads and writes in one `lio_listio`,
    /// fsyncs one by one. Requests over the in-flight limit wait.
    fn flush(&mut self) {
        if self.batch.is_empty() && self.waiting.is_empty() {
            return;
        }
        // Seen finished before the calls below, which take glibc's lock.
        let held = std::mem::take(&mut self.quarantine);
        let mut locked = false;
        let batch = std::mem::take(&mut self.batch);
        for &key in &batch {
            if !self.entries.contains(key) {
                continue;
            }
            self.waiting.push_back(key);
            if let Route::Aio(req) = &mut self.entries[key].route {
                req.state = AioState::Waiting;
            }
        }
        self.batch = batch;
        self.batch.clear();
        let mut list = std::mem::take(&mut self.list);
        let mut keys = std::mem::take(&mut self.list_keys);
        list.clear();
        keys.clear();
        while self.in_glibc + list.len() < self.max_in_flight {
            let Some(key) = self.waiting.pop_front() else {
                break;
            };
            if !self.entries.contains(key) {
                continue;
            }
            self.prepare(key);
            let Route::Aio(req) = &mut self.entries[key].route else {
                continue;
            };
            if matches!(req.op, Op::Fsync { .. }) {
                // SAFETY: the aiocb is boxed in the in-flight table and stays
                // there until its completion is collected.
                match unsafe { ops::fs::submit(&mut req.cb, &req.op) } {
                    Ok(()) => self.mark_out(key),
                    Err(e) => self.finish(key, Err(e)),
                }
                locked = true;
                continue;
            }
            list.push(&mut req.cb);
            keys.push(key);
        }
        if !list.is_empty() {
            for &k in &keys {
                self.mark_out(k);
            }
            // SAFETY: every pointer is an aiocb boxed in the in-flight table;
            // they stay valid until their completions are collected.
            let r = unsafe { self.lio_listio(&list) };
            locked = true;
            if r != 0 {
                let error = io::Error::last_os_error();
                self.requeue_unqueued(&keys, error);
                // Others may have run and lost their notification: the sweep
                // finds out, safely, under glibc's lock.
                self.sweep();
            }
        }
        self.list = list;
        self.list_keys = keys;
        if locked {
            self.release(held);
        } else {
            let mut held = held;
            held.append(&mut self.quarantine);
            self.quarantine = held;
        }
    }

    /// Request `key` is now with glibc.
    fn mark_out(&mut self, key: usize) {
        let pos = self.out.len();
        let Route::Aio(req) = &mut self.entries[key].route else {
            return;
        };
        req.state = AioState::InFlight;
        req.pos = pos;
        req.seq = self.next_seq;
        self.next_seq += 1;
        let fd = req.cb.aio_fildes;
        if !req.armed {
            self.silent += 1;
        }
        self.out.push(key);
        self.in_glibc += 1;
        *self.fd_aio(fd) += 1;
    }

    /// Request `key` is no longer with glibc (finished, or never queued);
    /// it is left `Waiting` for the caller to finish or issue again.
    fn mark_back(&mut self, key: usize) {
        let Route::Aio(req) = &mut self.entries[key].route else {
            return;
        };
        if req.state != AioState::InFlight {
            return;
        }
        req.state = AioState::Waiting;
        let (pos, fd, armed) = (req.pos, req.cb.aio_fildes, req.armed);
        self.out.swap_remove(pos);
        if let Some(&moved) = self.out.get(pos) {
            if let Route::Aio(r) = &mut self.entries[moved].route {
                r.pos = pos;
            }
        }
        if !armed {
            self.silent -= 1;
        }
        self.in_glibc -= 1;
        let c = self.fd_aio(fd);
        *c = c.saturating_sub(1);
    }

    /// After a failed `lio_listio`: the requests glibc never queued (their
    /// status is still `NOT_QUEUED`) go back to the front of the queue, to
    /// be issued again at the next flush (the wait loop's next turn, after
    /// it blocked for a completion); if none of ours is with glibc, no
    /// completion would come to make room, so they fail with `error`.
    fn requeue_unqueued(&mut self, keys: &[usize], error: io::Error) {
        let mut unqueued = Vec::new();
        for &k in keys {
            let Route::Aio(req) = &self.entries[k].route else {
                continue;
            };
            // SAFETY: reads the status of an aiocb we own; glibc does not
            // hold it (or, if it does, it set the status under its lock
            // before lio_listio returned).
            if unsafe { libc::aio_error(&req.cb) } != NOT_QUEUED {
                continue;
            }
            self.mark_back(k);
            unqueued.push(k);
        }
        if self.in_glibc == 0 {
            let kind = error.kind();
            let raw = error.raw_os_error();
            for k in unqueued {
                let e = match raw {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(kind, error.to_string()),
                };
                self.finish(k, Err(e));
            }
            return;
        }
        for k in unqueued.into_iter().rev() {
            self.waiting.push_front(k);
        }
    }

    /// `lio_listio(LIO_NOWAIT)` of `list` (in tests, optionally failing
    /// the way glibc does when it cannot queue all: it queues the first few,
    /// returns -1 with `EAGAIN`, and leaves the others' aiocbs as they were).
    ///
    /// # Safety
    /// Every pointer is an aiocb boxed in the in-flight table.
    unsafe fn lio_listio(&mut self, list: &[*mut libc::aiocb]) -> libc::c_int {
        #[cfg(test)]
        let n = match self.test_listio_queues.take() {
            // At least one, so that glibc's lock is taken as in real use.
            Some(k) => list.len().min(k.max(1)),
            None => list.len(),
        };
        #[cfg(not(test))]
        let n = list.len();
        let r = if n == 0 {
            0
        } else {
            // SAFETY: the caller's promise, for the first n entries.
            unsafe { ops::rw::submit_list(&list[..n]) }
        };
        if n < list.len() {
            // SAFETY: sets the calling thread's errno, as glibc does.
            unsafe { *libc::__errno_location() = libc::EAGAIN };
            return -1;
        }
        r
    }

    /// Collects request `key`: `aio_return` exactly once, then its completion.
    fn collect_aio(&mut self, key: usize) {
        let Route::Aio(req) = &mut self.entries[key].route else {
            return;
        };
        // SAFETY: the aiocb belongs to a request glibc reported finished.
        let err = unsafe { libc::aio_error(&req.cb) };
        if err == libc::EINPROGRESS {
            return;
        }
        // SAFETY: as above; called once, then the request leaves the table.
        let ret = unsafe { libc::aio_return(&mut req.cb) };
        let result = if ret < 0 {
            if err == libc::ECANCELED && req.timed_out {
                Err(deadline_passed())
            } else {
                Err(io::Error::from_raw_os_error(err))
            }
        } else {
            Ok(ops::complete(&mut req.op, ret as usize))
        };
        self.mark_back(key);
        self.finish(key, result);
    }

    /// Ends entry `key` with `result`.
    fn finish(&mut self, key: usize, result: io::Result<usize>) {
        let id = self.id_of(key);
        let entry = self.entries.remove(key);
        let op = match entry.route {
            Route::Aio(mut req) => {
                debug_assert!(req.state != AioState::InFlight);
                let fd = req.cb.aio_fildes;
                if req.deadline.is_some() {
                    self.aio_deadlines -= 1;
                }
                let op = std::mem::replace(&mut req.op, Op::Nop);
                self.quarantine.push(req);
                self.maybe_close(fd);
                op
            }
            Route::Held(op) => {
                if let Op::Close { fd } = op {
                    // A close that ends here was never handed on (the
                    // delegate refused it): the fd's state goes with it.
                    *self.fd_state(fd) = FdState::default();
                }
                op
            }
            Route::Delegate(_) | Route::CancelFd(..) | Route::Forwarding => return,
        };
        self.ready.push(Completion {
            id,
            token: entry.token,
            result,
            op,
        });
    }

    /// Starts a close parked on `fd` once its aio requests are done.
    fn maybe_close(&mut self, fd: RawFd) {
        if *self.fd_aio(fd) > 0 {
            return;
        }
        self.start_parked_close(fd);
    }

    /// Hands the close parked on `fd` (if any) to the delegate.
    fn start_parked_close(&mut self, fd: RawFd) {
        let parked = self.entries.iter().find_map(|(k, e)| match &e.route {
            Route::Held(Op::Close { fd: f }) if *f == fd => Some(k),
            _ => None,
        });
        if let Some(k) = parked {
            self.forward(k, None);
        }
    }

    /// Hands the op held by entry `key` to the delegate. A close handed on
    /// releases the fd's state here: from now on the delegate decides for
    /// that number until the close completes.
    fn forward(&mut self, key: usize, deadline: Option<Instant>) {
        let Route::Held(op) = std::mem::replace(&mut self.entries[key].route, Route::Forwarding)
        else {
            return;
        };
        if let Op::Close { fd } = op {
            let st = self.fd_state(fd);
            st.close_parked = false;
            st.kind = FdKind::Unknown;
            st.closes_forwarded += 1;
        }
        match self.delegate.submit(op, key as u64, deadline) {
            Ok(inner) => {
                self.entries[key].route = Route::Delegate(inner);
                self.delegated.push((inner, key));
            }
            Err(e) => {
                if let Op::Close { fd } = e.op {
                    let st = self.fd_state(fd);
                    st.closes_forwarded = st.closes_forwarded.saturating_sub(1);
                }
                self.entries[key].route = Route::Held(e.op);
                self.finish(key, Err(e.error));
            }
        }
    }

    /// Submits `op` to the delegate for a new entry; the entry exists only
    /// once the delegate accepted it, with the delegate's real id.
    fn submit_to_delegate(
        &mut self,
        op: Op,
        token: u64,
        generation: u32,
        deadline: Option<Instant>,
        route: impl FnOnce(OpId) -> Route,
    ) -> Result<OpId, SubmitError> {
        let key = self.entries.vacant_key();
        let close_fd = match op {
            Op::Close { fd } => Some(fd),
            _ => None,
        };
        let inner = self.delegate.submit(op, key as u64, deadline)?;
        if let Some(fd) = close_fd {
            let st = self.fd_state(fd);
            st.kind = FdKind::Unknown;
            st.closes_forwarded += 1;
        }
        let k = self.entries.insert(Entry {
            generation,
            token,
            route: route(inner),
        });
        debug_assert_eq!(k, key);
        self.delegated.push((inner, key));
        Ok(OpId::new(key as u32, generation))
    }

    /// Hands `op` straight to the delegate: no entry here; the caller gets
    /// the delegate's id (marked) and its completion as the delegate made it.
    fn pass(&mut self, op: Op, token: u64, deadline: Option<Instant>) -> Result<OpId, SubmitError> {
        let close_fd = match op {
            Op::Close { fd } => Some(fd),
            _ => None,
        };
        let inner = self.delegate.submit(op, token, deadline)?;
        if let Some(fd) = close_fd {
            let st = self.fd_state(fd);
            st.kind = FdKind::Unknown;
            st.closes_forwarded += 1;
        }
        self.passed += 1;
        Ok(passed_id(inner))
    }

    /// Asks glibc to cancel request `key` (it completes on its own), or ends
    /// it here if glibc does not have it yet.
    fn cancel_aio(&mut self, key: usize, timed_out: bool) {
        let Route::Aio(req) = &mut self.entries[key].route else {
            return;
        };
        req.cancel_requested = true;
        req.timed_out |= timed_out;
        match req.state {
            AioState::Batched | AioState::Waiting => {
                self.batch.retain(|&k| k != key);
                self.waiting.retain(|&k| k != key);
                let e = if timed_out {
                    deadline_passed()
                } else {
                    cancelled()
                };
                self.finish(key, Err(e));
            }
            AioState::InFlight => {
                // SAFETY: the aiocb is with glibc and boxed in our table. The
                // result (CANCELED / NOTCANCELED / ALLDONE) needs no action:
                // each path ends in the request's own notification.
                unsafe { libc::aio_cancel(req.cb.aio_fildes, &mut req.cb) };
            }
        }
    }

    /// Safety net: collects requests that finished without a notification we
    /// saw. `aio_cancel` first takes glibc's lock, so its notify step for the
    /// request is over before we read the result; a result of -1/EAGAIN there
    /// means the signal could not be queued, and the request is issued again.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let reissued_before = self.reissued;
        let keys: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.route, Route::Aio(r) if r.state == AioState::InFlight))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let Route::Aio(req) = &mut self.entries[key].route else {
                continue;
            };
            // SAFETY: reads the status of an aiocb we own and glibc holds.
            if unsafe { libc::aio_error(&req.cb) } == libc::EINPROGRESS {
                continue;
            }
            // SAFETY: as above; aio_cancel only takes the lock here, since the
            // request is finished.
            unsafe { libc::aio_cancel(req.cb.aio_fildes, &mut req.cb) };
            // SAFETY: as above.
            let err = unsafe { libc::aio_error(&req.cb) };
            if err == libc::EAGAIN && req.signals && !req.cancel_requested {
                self.reissue(key);
                continue;
            }
            self.collect_aio(key);
        }
        self.sweep_interval = if self.reissued > reissued_before {
            SWEEP_SOON
        } else {
            SWEEP_EVERY
        };
    }

    /// Request `key` lost its notification: glibc could not queue the
    /// signal and overwrote the result with -1/`EAGAIN`. It is issued again.
    fn reissue(&mut self, key: usize) {
        self.reissued += 1;
        if let Route::Aio(req) = &mut self.entries[key].route {
            // SAFETY: consume the failed status once before reuse.
            unsafe { libc::aio_return(&mut req.cb) };
        }
        self.mark_back(key);
        if let Route::Aio(req) = &mut self.entries[key].route {
            req.state = AioState::Batched;
        }
        self.batch.push(key);
    }

    /// Collects every request that finished: those whose signal arrived,
    /// and (unless every request signals) those polling finds done. Sweeps
    /// when the signal queue overflowed or the safety-net interval passed.
    fn drain_notifications(&mut self) {
        let mut sig = std::mem::take(&mut self.signalled);
        sig.clear();
        let overflow = self.notifier.drain(&mut sig);
        for &(slot, generation) in &sig {
            if let Some(e) = self.entries.get(slot) {
                if e.generation == generation {
                    if let Route::Aio(r) = &e.route {
                        if r.state == AioState::InFlight {
                            self.collect_aio(slot);
                        }
                    }
                }
            }
        }
        self.signalled = sig;
        if !self.signal_per_request {
            self.poll_out();
        }
        if overflow || (self.in_glibc > 0 && self.last_sweep.elapsed() >= self.sweep_interval) {
            self.sweep();
        }
    }

    /// Polls the requests with glibc (`aio_error`, a plain read of their
    /// status) and collects those that finished; returns how many.
    ///
    /// glibc sets a request's status, then runs its notify step, both under
    /// its request lock. The notify step reads the aiocb's `sigevent` and,
    /// if a signal cannot be queued, writes -1/`EAGAIN` into the aiocb. So
    /// (1) a finished aiocb's memory is not reused until glibc's lock was
    /// taken after its status was seen (see `quarantine`), and (2) the
    /// result of a request that may signal is read only after
    /// `glibc_barrier` took that lock: its notify step is then over, and
    /// the status and count are final (never half overwritten).
    fn poll_out(&mut self) -> usize {
        if self.out.is_empty() {
            return 0;
        }
        let mut done = std::mem::take(&mut self.finished);
        done.clear();
        let mut may_signal = false;
        for &k in &self.out {
            if let Route::Aio(req) = &self.entries[k].route {
                // SAFETY: reads the status of an aiocb we own and glibc holds.
                if unsafe { libc::aio_error(&req.cb) } != libc::EINPROGRESS {
                    done.push(k);
                    may_signal |= req.signals;
                }
            }
        }
        let n = done.len();
        if may_signal {
            self.glibc_barrier();
        }
        for &k in &done {
            let Route::Aio(req) = &self.entries[k].route else {
                continue;
            };
            // SAFETY: as above.
            let err = unsafe { libc::aio_error(&req.cb) };
            if err == libc::EAGAIN && req.signals && !req.cancel_requested {
                self.reissue(k);
            } else {
                self.collect_aio(k);
            }
        }
        self.finished = done;
        n
    }

    /// Takes and releases glibc's aio request lock: `aio_cancel` of an aiocb
    /// whose status says finished does only that (after an `fcntl` check
    /// of its fd, our eventfd).
    fn glibc_barrier(&mut self) {
        let held = std::mem::take(&mut self.quarantine);
        let fd = self.barrier_cb.aio_fildes;
        // SAFETY: the aiocb is ours, never submitted, with status 0
        // (finished), so glibc only looks at it under its lock.
        unsafe { libc::aio_cancel(fd, &mut *self.barrier_cb) };
        self.release(held);
    }

    /// Requests whose aiocbs glibc can no longer touch (its lock was taken
    /// since they were seen finished) become spares for new requests.
    #[allow(clippy::vec_box)] // the quarantine's boxes, which must not move
    fn release(&mut self, mut held: Vec<Box<AioReq>>) {
        let room = SPARES.saturating_sub(self.spare.len());
        held.truncate(room);
        self.spare.append(&mut held);
        // `held` keeps its allocation for the next quarantine.
        if self.quarantine.is_empty() {
            self.quarantine = held;
        }
    }

    /// Before blocking: arms the requests whose completion must end the
    /// blocking wait — on each fd, the first one out (glibc performs an
    /// fd's requests one at a time, in the order they came, so none of the
    /// fd's others can finish before it). Returns whether one finished
    /// meanwhile (the caller then does not block).
    ///
    /// glibc reads `sigev_notify` only in a request's notify step, under its
    /// request lock, right after it sets the status. The store here comes
    /// before `glibc_barrier`: a notify step after the barrier sees
    /// `SIGEV_SIGNAL`; one before it set its status first, which the poll
    /// after the barrier sees.
    fn arm_signals(&mut self) -> bool {
        if self.silent == 0 {
            return false;
        }
        let mut firsts = std::mem::take(&mut self.firsts);
        firsts.clear();
        let mut all = false;
        for &k in &self.out {
            let Route::Aio(req) = &self.entries[k].route else {
                continue;
            };
            let fd = req.cb.aio_fildes;
            let full = firsts.len() >= MAX_ARMED_FDS;
            match firsts.iter_mut().find(|f| f.0 == fd) {
                Some(f) if req.seq < f.1 => *f = (fd, req.seq, k),
                Some(_) => {}
                None if !full => firsts.push((fd, req.seq, k)),
                None => {
                    // Too many fds to pick from: arm them all.
                    all = true;
                    break;
                }
            }
        }
        let mut armed_any = false;
        if all {
            armed_any = self.silent > 0;
            self.set_armed(true);
        } else {
            for &(_, _, k) in &firsts {
                armed_any |= self.arm(k, true);
            }
        }
        self.firsts = firsts;
        if !armed_any {
            return false;
        }
        self.glibc_barrier();
        self.poll_out() > 0
    }

    /// Arms or disarms request `key`; whether that changed it. A disarmed
    /// request may still signal (its notify step may have read the field
    /// already): `signals` stays set.
    fn arm(&mut self, key: usize, on: bool) -> bool {
        let Route::Aio(req) = &mut self.entries[key].route else {
            return false;
        };
        if req.armed == on {
            return false;
        }
        req.armed = on;
        req.signals |= on;
        let notify = if on {
            libc::SIGEV_SIGNAL
        } else {
            libc::SIGEV_NONE
        };
        // SAFETY: a field of an aiocb we own; glibc reads it only in the
        // request's notify step (ordered by the barrier in `arm_signals`);
        // an aligned int store is not torn.
        unsafe { std::ptr::write_volatile(&mut req.cb.aio_sigevent.sigev_notify, notify) };
        if on {
            self.silent -= 1;
        } else {
            self.silent += 1;
        }
        true
    }

    /// Arms (or, after the blocking wait, disarms) every request with glibc.
    fn set_armed(&mut self, on: bool) {
        for i in 0..self.out.len() {
            let k = self.out[i];
            self.arm(k, on);
        }
    }

    /// Cancels aio requests whose deadline passed.
    fn expire_deadlines(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for (k, e) in self.entries.iter() {
            if let Route::Aio(r) = &e.route {
                if let Some(d) = r.deadline {
                    if r.timed_out {
                        continue;
                    }
                    if d <= now {
                        expired.push(k);
                    } else {
                        next = Some(next.map_or(d, |n: Instant| n.min(d)));
                    }
                }
            }
        }
        for k in expired {
            self.cancel_aio(k, true);
        }
        next
    }

    fn arm_poll(&mut self) -> io::Result<()> {
        if self.poll_armed {
            return Ok(());
        }
        let op = Op::Poll {
            fd: self.notifier.eventfd(),
            events: libc::POLLIN,
        };
        let id = self
            .delegate
            .submit(op, POLL_TOKEN, None)
            .map_err(|e| e.error)?;
        self.poll_armed = true;
        self.poll_id = Some(id);
        Ok(())
    }

    /// Maps the delegate's completions to ours.
    fn take_delegate_completions(&mut self) {
        let mut out = std::mem::take(&mut self.delegate_out);
        for c in out.drain(..) {
            if self.poll_id == Some(c.id) {
                self.poll_armed = false;
                self.poll_id = None;
                self.notifier.clear_eventfd();
                continue;
            }
            if let Op::Close { fd } = c.op {
                // The close is over: the number may now be any new fd.
                let st = self.fd_state(fd);
                st.closes_forwarded = st.closes_forwarded.saturating_sub(1);
                st.kind = FdKind::Unknown;
            }
            let Some(at) = self.delegated.iter().position(|d| d.0 == c.id) else {
                // Handed straight on: the delegate's completion is ours.
                self.passed = self.passed.saturating_sub(1);
                self.ready.push(Completion {
                    id: passed_id(c.id),
                    ..c
                });
                continue;
            };
            let (_, key) = self.delegated.swap_remove(at);
            let Some(entry) = self.entries.get(key) else {
                continue;
            };
            let (id, token) = (OpId::new(key as u32, entry.generation), entry.token);
            let result = match (&entry.route, c.result) {
                (Route::CancelFd(_, here), Ok(n)) => Ok(n + here),
                (Route::CancelFd(_, here), Err(e))
                    if e.kind() == io::ErrorKind::NotFound && *here > 0 =>
                {
                    Ok(*here)
                }
                (_, r) => r,
            };
            self.entries.remove(key);
            self.ready.push(Completion {
                id,
                token,
                result,
                op: c.op,
            });
        }
        self.delegate_out = out;
    }

    /// Polls the requests with glibc for up to `self.spin` (and no longer
    /// than `left`), yielding the core between polls; whether one finished,
    /// the delegate completed something (it is asked without blocking on
    /// each turn when it has ops of its own: a timer, a socket) or a wake
    /// came.
    fn spin_for(&mut self, left: Option<Duration>) -> io::Result<bool> {
        let budget = left.map_or(self.spin, |l| l.min(self.spin));
        if budget.is_zero() {
            return Ok(false);
        }
        let end = Instant::now() + budget;
        loop {
            if self.poll_out() > 0 || self.woken.load(Ordering::Acquire) {
                return Ok(true);
            }
            if self.delegate_busy() {
                self.delegate
                    .wait(&mut self.delegate_out, 0, Some(Duration::ZERO))?;
                if !self.delegate_out.is_empty() {
                    self.take_delegate_completions();
                    return Ok(true);
                }
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            // Gives the core to a runnable thread (glibc's worker, on a busy
            // machine) rather than burning it: measured much faster than a
            // plain spin at queue depth 32 with other load on 2 cores.
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }

    /// Whether the delegate has ops of its own (besides our eventfd poll).
    fn delegate_busy(&self) -> bool {
        self.delegate.in_flight() > usize::from(self.poll_armed)
    }

    /// A wait where every op out is one handed straight to the delegate: its
    /// wait, into the caller's vector (our wake ends it too); the ids get
    /// their mark.
    fn wait_passed_only(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let start = out.len();
        let timeout = if self.woken.swap(false, Ordering::AcqRel) {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.delegate.wait(out, min, timeout)?;
        self.woken.store(false, Ordering::Release);
        let n = out.len() - start;
        for c in &mut out[start..] {
            c.id = passed_id(c.id);
            if let Op::Close { fd } = c.op {
                // The close is over: the number may now be any new fd.
                let st = self.fd_state(fd);
                st.closes_forwarded = st.closes_forwarded.saturating_sub(1);
                st.kind = FdKind::Unknown;
            }
        }
        self.passed = self.passed.saturating_sub(n);
        Ok(n)
    }

    /// A wait with no aio request out or waiting: the delegate's wait (which
    /// our wake ends too), with what is still needed.
    fn wait_delegate_only(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        if self.ready.len() >= min || self.woken.swap(false, Ordering::AcqRel) {
            return self.wait_done();
        }
        let n = min - self.ready.len();
        self.delegate.wait(&mut self.delegate_out, n, timeout)?;
        self.take_delegate_completions();
        self.woken.store(false, Ordering::Release);
        Ok(())
    }

    /// Ends a wait that is not blocking: the delegate is asked for its
    /// completions only when it has ops of its own (our eventfd poll needs
    /// no answer: the signal queue is read directly).
    fn wait_done(&mut self) -> io::Result<()> {
        if self.delegate_busy() {
            self.delegate
                .wait(&mut self.delegate_out, 0, Some(Duration::ZERO))?;
            self.take_delegate_completions();
        }
        Ok(())
    }

    fn wait_inner(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.flush();
        if self.out.is_empty() && self.waiting.is_empty() && self.aio_deadlines == 0 {
            return self.wait_delegate_only(min, timeout);
        }
        let mut end: Option<Option<Instant>> = None;
        loop {
            self.drain_notifications();
            let next_deadline = if self.aio_deadlines > 0 {
                self.expire_deadlines()
            } else {
                None
            };
            self.flush();
            if self.ready.len() >= min
                || timeout == Some(Duration::ZERO)
                || self.woken.swap(false, Ordering::AcqRel)
            {
                return self.wait_done();
            }
            // About to block: the end of the wait, measured from its start.
            let now = Instant::now();
            let end = *end.get_or_insert_with(|| timeout.map(|t| now + t));
            let left = end.map(|e| e.saturating_duration_since(now));
            if left == Some(Duration::ZERO) {
                return self.wait_done();
            }
            // Poll a little before blocking (a file read in the page cache
            // takes microseconds; blocking costs a signal and a wake-up).
            if !self.signal_per_request && !self.out.is_empty() && self.spin_for(left)? {
                continue;
            }
            // A silent request that finishes from now on signals; one that
            // finished meanwhile is collected instead of blocking.
            if self.arm_signals() {
                continue;
            }
            if self.out.len() > self.silent {
                // Armed requests are out: their signals must end the wait.
                self.arm_poll()?;
            }
            let mut t = left;
            if self.in_glibc > 0 {
                // The safety net: a sweep within a bounded time.
                let s = self.sweep_interval;
                t = Some(t.map_or(s, |x| x.min(s)));
            }
            if let Some(d) = next_deadline {
                let dl = d.saturating_duration_since(now);
                t = Some(t.map_or(dl, |x| x.min(dl)));
            }
            let r = self.delegate.wait(&mut self.delegate_out, 1, t);
            if !self.signal_per_request {
                // Awake again: the requests still out go back to silent.
                self.set_armed(false);
            }
            r?;
            self.take_delegate_completions();
            if self.woken.swap(false, Ordering::AcqRel) {
                // A wake from another thread ends the wait, whatever else
                // is out (never mistaken for a timeout).
                self.drain_notifications();
                return Ok(());
            }
        }
    }
}

/// This driver's wake: a flag its wait checks, plus the delegate's wake
/// (which ends a wait blocked in the delegate).
struct AioWake {
    woken: Arc<AtomicBool>,
    delegate: DriverWaker,
}

impl ringport_core::driver::Wake for AioWake {
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.delegate.wake();
    }
}

impl Driver for AioDriver {
    fn name(&self) -> &'static str {
        "aio"
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
        let closing = |fd: RawFd| fds.get(fd as usize).is_some_and(|s| s.close_parked);
        if let Err(error) = admit(&op, &self.caps, "aio", closing) {
            return Err(SubmitError { error, op });
        }
        if !matches!(
            op.kind(),
            OpKind::Read | OpKind::Write | OpKind::Fsync | OpKind::Cancel | OpKind::Close
        ) {
            // Nothing aio does and no bookkeeping here: straight on.
            return self.pass(op, token, deadline);
        }
        let generation = self.next_gen();
        let key = self.entries.vacant_key();
        let id = OpId::new(key as u32, generation);
        if self.is_aio(&op) {
            let fd = op.fd().unwrap_or(-1);
            let req = AioReq {
                // SAFETY: aiocb is plain data; filled in at flush.
                cb: unsafe { std::mem::zeroed() },
                op,
                state: AioState::Batched,
                cancel_requested: false,
                deadline,
                timed_out: false,
                signals: false,
                armed: false,
                seq: 0,
                pos: 0,
            };
            let boxed = match self.spare.pop() {
                Some(mut b) => {
                    *b = req;
                    b
                }
                None => Box::new(req),
            };
            self.entries.insert(Entry {
                generation,
                token,
                route: Route::Aio(boxed),
            });
            if deadline.is_some() {
                self.aio_deadlines += 1;
            }
            if let Route::Aio(r) = &mut self.entries[key].route {
                r.cb.aio_fildes = fd;
            }
            self.batch.push(key);
            return Ok(id);
        }
        match op {
            Op::Cancel {
                target: CancelTarget::Op(t),
            } if delegate_id(t).is_some() => {
                let op = Op::Cancel {
                    target: CancelTarget::Op(delegate_id(t).unwrap_or(t)),
                };
                self.pass(op, token, deadline)
            }
            Op::Cancel {
                target: CancelTarget::Op(t),
            } => {
                let target = self.lookup(t).map(|k| match &self.entries[k].route {
                    Route::Aio(_) => Ok(k),
                    Route::Delegate(inner) | Route::CancelFd(inner, _) => Err(Some(*inner)),
                    Route::Held(_) | Route::Forwarding => Err(None),
                });
                match target {
                    Some(Err(Some(inner))) => {
                        let op = Op::Cancel {
                            target: CancelTarget::Op(inner),
                        };
                        self.submit_to_delegate(op, token, generation, deadline, Route::Delegate)
                    }
                    other => {
                        // The entry first: ending an aio request below frees
                        // its slot, which must not become this op's.
                        self.entries.insert(Entry {
                            generation,
                            token,
                            route: Route::Held(op),
                        });
                        let result = match other {
                            Some(Ok(k)) => {
                                self.cancel_aio(k, false);
                                Ok(1)
                            }
                            // A parked close: it ends once the fd's aio
                            // requests end, and is not cancelled.
                            Some(Err(_)) => Err(close_not_cancellable()),
                            None => Err(ringport_core::driver::not_in_flight()),
                        };
                        self.finish(key, result);
                        Ok(id)
                    }
                }
            }
            Op::Cancel {
                target: CancelTarget::Fd(fd),
            } => {
                let here = self.cancel_aio_on(fd);
                self.submit_to_delegate(op, token, generation, deadline, |inner| {
                    Route::CancelFd(inner, here)
                })
            }
            Op::Close { fd } if *self.fd_aio(fd) > 0 || self.has_aio_on(fd) => {
                // Parked first (ending a request frees its slot, which must
                // not become this op's); it starts once the last aio request
                // on the fd ends, which may be inside `cancel_aio_on`.
                self.fd_state(fd).close_parked = true;
                self.entries.insert(Entry {
                    generation,
                    token,
                    route: Route::Held(op),
                });
                self.cancel_aio_on(fd);
                self.maybe_close(fd);
                Ok(id)
            }
            op => self.pass(op, token, deadline),
        }
    }

    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if self.ready.is_empty()
            && self.batch.is_empty()
            && self.out.is_empty()
            && self.waiting.is_empty()
            && self.aio_deadlines == 0
            && !self.poll_armed
            && self.delegated.is_empty()
        {
            return self.wait_passed_only(out, min, timeout);
        }
        let r = self.wait_inner(min, timeout);
        let n = ringport_core::driver::deliver(out, &mut self.ready);
        r.map(|_| n)
    }

    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // This driver's table hands out whole completions; they are parked
        // until taken.
        let mut parking = std::mem::take(&mut self.parking);
        let r = parking.wait_ready(out, |got| self.wait(got, min, timeout));
        self.parking = parking;
        r
    }

    fn take(&mut self, id: OpId) -> Option<Completion> {
        self.parking.take(id)
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        if let Some(inner) = delegate_id(id) {
            return self.delegate.cancel(inner);
        }
        let key = self
            .lookup(id)
            .ok_or_else(ringport_core::driver::not_in_flight)?;
        match self.entries[key].route {
            Route::Aio(_) => {
                self.cancel_aio(key, false);
                Ok(())
            }
            Route::Delegate(inner) | Route::CancelFd(inner, _) => self.delegate.cancel(inner),
            // Held: a parked close (nothing else stays held).
            Route::Held(_) | Route::Forwarding => Err(close_not_cancellable()),
        }
    }

    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        let here = self.cancel_aio_on(fd);
        Ok(here + self.delegate.cancel_fd(fd).unwrap_or(0))
    }

    fn waker(&self) -> DriverWaker {
        DriverWaker::new(Arc::new(AioWake {
            woken: self.woken.clone(),
            delegate: self.delegate.waker(),
        }))
    }

    fn in_flight(&self) -> usize {
        self.entries.len() + self.passed + self.ready.len() + self.parking.len()
    }
}

impl AioDriver {
    /// Whether a close handed to the delegate has not completed yet.
    fn closes_out(&self) -> bool {
        self.fds.iter().any(|st| st.closes_forwarded > 0)
    }

    fn has_aio_on(&self, fd: RawFd) -> bool {
        self.entries
            .iter()
            .any(|(_, e)| matches!(&e.route, Route::Aio(r) if r.cb.aio_fildes == fd))
    }

    /// Cancels every aio request on `fd`; returns how many it reached.
    fn cancel_aio_on(&mut self, fd: RawFd) -> usize {
        let keys: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.route, Route::Aio(r) if r.cb.aio_fildes == fd))
            .map(|(k, _)| k)
            .collect();
        for &k in &keys {
            self.cancel_aio(k, false);
        }
        keys.len()
    }
}

impl Drop for AioDriver {
    /// Never hangs, closes what it was asked to close, and frees no aiocb or
    /// buffer glibc may still touch: requests glibc never saw go at once;
    /// the rest are cancelled and waited for up to `DROP_GRACE` (a request
    /// glibc cannot cancel, a read blocked in a worker, is leaked with its
    /// buffer). Every parked close is then carried out by the delegate: a
    /// worker still blocked on that fd holds the kernel's file reference, and
    /// glibc starts nothing new on the fd (the requests queued behind it were
    /// cancelled).
    fn drop(&mut self) {
        // Requests glibc never saw can go at once.
        let local: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.route, Route::Aio(r) if r.state != AioState::InFlight))
            .map(|(k, _)| k)
            .collect();
        for k in local {
            let fd = match &self.entries[k].route {
                Route::Aio(r) => r.cb.aio_fildes,
                _ => continue,
            };
            self.batch.retain(|&b| b != k);
            self.waiting.retain(|&w| w != k);
            self.entries.remove(k);
            self.maybe_close(fd);
        }
        let start = Instant::now();
        while self.in_glibc > 0 && start.elapsed() < DROP_GRACE {
            let keys: Vec<usize> = self.entries.iter().map(|(k, _)| k).collect();
            for k in keys {
                if self.entries.contains(k) {
                    self.cancel_aio(k, false);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
            self.drain_notifications();
            self.sweep();
            self.ready.clear();
        }
        // Closes still parked behind a request glibc keeps: carried out now.
        let parked: Vec<RawFd> = self
            .entries
            .iter()
            .filter_map(|(_, e)| match &e.route {
                Route::Held(Op::Close { fd }) => Some(*fd),
                _ => None,
            })
            .collect();
        for fd in parked {
            self.start_parked_close(fd);
        }
        // Let the delegate finish the closes handed to it (bounded).
        let end = Instant::now() + Duration::from_millis(500);
        while self.closes_out() && Instant::now() < end {
            if self
                .delegate
                .wait(&mut self.delegate_out, 1, Some(Duration::from_millis(10)))
                .is_err()
            {
                break;
            }
            self.take_delegate_completions();
            self.ready.clear();
        }
        self.notifier.set_next_generation(self.next_generation);
        // The records of finished requests go once glibc's lock was taken
        // after they were seen finished.
        self.glibc_barrier();
        self.spare.clear();
        // Whatever glibc may still touch is leaked, never freed early.
        for e in self.entries.drain() {
            if matches!(e.route, Route::Aio(_)) {
                std::mem::forget(e);
            }
        }
    }
}

/// The error for cancelling a close parked behind the fd's aio requests.
fn close_not_cancellable() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a close cannot be cancelled; it ends once the fd's operations end",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringport_core::AnyBufMut;
    use std::os::fd::AsRawFd;

    /// A `lio_listio` that queues only some of its requests (as glibc does
    /// when it runs out of request elements or threads): every request still
    /// completes with its real result — the ones glibc never queued are
    /// issued again — and none looks finished with a made-up 0 (EOF).
    #[test]
    fn partial_lio_listio_failure_gives_every_request_its_real_result() {
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("ringport-aio-lio-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut d = AioDriver::new().unwrap();
        d.test_listio_queues = Some(3);
        const N: usize = 16;
        for i in 0..N {
            d.submit(
                Op::Read {
                    fd: f.as_raw_fd(),
                    offset: Offset::At((i * 4096) as u64),
                    buf: AnyBufMut::new(Vec::with_capacity(4096)),
                },
                i as u64,
                None,
            )
            .unwrap();
        }
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while out.len() < N && Instant::now() < end {
            d.wait(&mut out, 1, Some(Duration::from_millis(100)))
                .unwrap();
        }
        assert_eq!(out.len(), N, "every request completes");
        for c in out {
            let i = c.token as usize;
            let n = c.result.unwrap_or_else(|e| panic!("read {i}: {e}"));
            assert_eq!(n, 4096, "read {i}: its real count, not a made-up EOF");
            let buf: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
            assert_eq!(
                &buf[..],
                &data[i * 4096..(i + 1) * 4096],
                "read {i}'s bytes"
            );
        }
        let _ = std::fs::remove_file(&path);
    }
}
