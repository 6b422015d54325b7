//! The [`Driver`] impl: submit (regular-file reads, writes and fsyncs to
//! aio, everything else to the delegate), wait, cancel, close, and drop.
//!
//! The ops kept here live in one [`InFlight`] table, by the lifecycle's
//! rules (close protocol, cancellation, deadlines, drop); this file supplies
//! only the mechanism: an `aiocb` per request, batched into `lio_listio`,
//! found finished by polling or by a signal. Ops aio does not perform go
//! straight to the delegate and live in its table; their ids carry a mark
//! ([`passed_id`]) and `take` reaches them there. Every close goes through
//! this table, so an fd's aio requests end before the delegate closes it and
//! no op is routed by a kind cached for an fd number that was closed.
//!
//! This module must never free or reuse an `aiocb` before glibc is done
//! with it: not before its status was seen final and glibc's lock was taken
//! since (the quarantine). `Drop` leaks what it cannot prove finished.

use crate::notify::{self, Notifier};
use crate::ops::{self, set_error_code, AioReq, AioState, NOT_QUEUED};
use crate::AioBuilder;
use ringport_core::driver::{
    admit, cancelled, Capabilities, Completion, Driver, DriverWaker, Ready, Shot, SubmitError,
    Support,
};
use ringport_core::lifecycle::{Admitted, Ending, InFlight};
use ringport_core::op::{CancelTarget, Offset, Op, OpId, OpKind};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bit that marks an id as the delegate's own: an op handed straight
/// on keeps the delegate's id (with this bit) and the caller's token, and
/// no slot here. (Table keys stay below 2^24: see `max_in_flight`.)
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
/// Token of the delegate's poll on our eventfd (told apart by its id).
const POLL_TOKEN: u64 = u64::MAX;

/// The backend's state of an op in this driver's table.
pub(crate) enum Req {
    /// Admitted, not started yet.
    Starting,
    /// An aio request.
    Aio(Box<AioReq>),
    /// A close or a cancel-by-fd handed to the delegate (its id there is in
    /// `AioDriver::delegated`); `here` counts the aio requests a
    /// cancel-by-fd reached.
    Forwarded { here: usize },
    /// Finished (an aio request's record went to the quarantine).
    Over,
}

/// How ops on an fd are routed: found with `fstat` once per fd, forgotten
/// when a close of the fd completes.
#[derive(Copy, Clone, PartialEq, Eq, Default)]
enum FdKind {
    #[default]
    Unknown,
    File,
    Other,
}

/// The POSIX aio [`Driver`].
pub struct AioDriver {
    delegate: Box<dyn Driver>,
    /// The ops kept here: aio requests, closes, cancels.
    life: InFlight<Req>,
    notifier: Notifier,
    /// Per-fd routing, indexed by fds `Op::validate` accepted (below the
    /// open-file limit); reset when a close of the fd completes.
    kinds: Vec<FdKind>,
    /// Requests accepted since the last flush.
    batch: Vec<usize>,
    /// Requests waiting for room under `max_in_flight`.
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
    /// Scratch for deadlines that passed.
    expired: Vec<usize>,
    max_in_flight: usize,
    /// Finished ops not yet announced, in the order they finished: the
    /// delegate's (handed straight on, their ids marked) and this table's
    /// (moved here from the table before each of the delegate's is added).
    ready: Vec<Ready>,
    /// What the delegate announced, being sorted out.
    delegate_ready: Vec<Ready>,
    /// Scratch for `Driver::wait`.
    scratch: Vec<Ready>,
    signalled: Vec<(usize, u32)>,
    poll_armed: bool,
    /// The delegate's id of the eventfd poll while it is armed.
    poll_id: Option<OpId>,
    /// The delegate's ids of ops forwarded from this table, with their keys.
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
    /// Request records to reuse.
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

// SAFETY: the aiocbs hold raw pointers into buffers owned by ops in the same
// table; everything moves together with the driver.
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
        for k in [OpKind::Read, OpKind::Write, OpKind::Fsync] {
            caps.set(k, Support::Native);
        }
        let mut life = InFlight::with_capacity(256);
        // Generations continue where the index's previous owner stopped, so
        // a late signal of its requests never matches one of ours.
        life.set_next_generation(notifier.first_generation());
        Ok(AioDriver {
            delegate,
            life,
            notifier,
            kinds: Vec::new(),
            batch: Vec::new(),
            waiting: VecDeque::new(),
            out: Vec::new(),
            silent: 0,
            finished: Vec::new(),
            list: Vec::new(),
            list_keys: Vec::new(),
            expired: Vec::new(),
            max_in_flight,
            ready: Vec::new(),
            delegate_ready: Vec::new(),
            scratch: Vec::new(),
            signalled: Vec::new(),
            poll_armed: false,
            poll_id: None,
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

    /// How ops on `fd` (which `Op::validate` accepted) are routed.
    fn fd_kind(&mut self, fd: RawFd) -> FdKind {
        let i = fd as usize;
        if i >= self.kinds.len() {
            self.kinds.resize(i + 1, FdKind::Unknown);
        }
        if self.kinds[i] == FdKind::Unknown {
            // SAFETY: fstat writes one stat struct; a bad fd just fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                // Unknown fd: the delegate reports its error in the completion.
                return FdKind::Other;
            }
            let t = st.st_mode & libc::S_IFMT;
            self.kinds[i] = if t == libc::S_IFREG || t == libc::S_IFBLK {
                FdKind::File
            } else {
                FdKind::Other
            };
        }
        self.kinds[i]
    }

    /// Whether `op` (valid) is kept in this driver's table: a positional
    /// read or write, or an fsync, of a regular file (aio's ops), any close
    /// and any cancel not aimed at an op of the delegate's.
    fn is_kept_here(&mut self, op: &Op) -> bool {
        match *op {
            Op::Read { fd, offset, .. } | Op::Write { fd, offset, .. } => {
                offset != Offset::Current && self.fd_kind(fd) == FdKind::File
            }
            Op::Fsync { fd, .. } => self.fd_kind(fd) == FdKind::File,
            Op::Close { .. } | Op::Cancel { .. } => true,
            _ => false,
        }
    }

    /// Starts op `key` (admitted, or its turn came).
    fn start(&mut self, key: usize) {
        let op = self.life.slot(key).op.as_ref().expect("a starting op");
        match *op {
            Op::Close { .. } => self.forward(key, 0),
            Op::Cancel {
                target: CancelTarget::Fd(fd),
            } => {
                // This table's ops on the fd end here; the delegate's there.
                let here = self.life.cancel_fd(fd);
                self.forward(key, here);
            }
            Op::Cancel { target } => self.life.run_cancel_op(key, target),
            _ => {
                let req = AioReq {
                    // SAFETY: aiocb is plain data; filled in at flush.
                    cb: unsafe { std::mem::zeroed() },
                    state: AioState::Batched,
                    cancel_requested: false,
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
                self.life.slot_mut(key).extra = Req::Aio(boxed);
                self.batch.push(key);
            }
        }
    }

    /// Stops op `key`, which the table asked to end (a cancel, a deadline,
    /// a close of its fd): a request glibc does not have yet ends now; one
    /// it has is cancelled there and ends with its own result.
    fn stop(&mut self, key: usize) {
        let why = self.life.slot(key).ending().unwrap_or(Ending::Cancelled);
        match &mut self.life.slot_mut(key).extra {
            Req::Aio(req) => match req.state {
                AioState::Batched | AioState::Waiting => {
                    self.batch.retain(|&k| k != key);
                    self.waiting.retain(|&k| k != key);
                    self.complete(key, Err(why.error()));
                }
                AioState::InFlight => {
                    req.cancel_requested = true;
                    // SAFETY: the aiocb is with glibc and boxed in our table.
                    // The result (CANCELED / NOTCANCELED / ALLDONE) needs no
                    // action: each path ends in the request's own
                    // notification.
                    unsafe { libc::aio_cancel(req.cb.aio_fildes, &mut req.cb) };
                }
            },
            // A close is never cancelled; a cancel-by-fd ends on its own.
            Req::Forwarded { .. } | Req::Starting | Req::Over => {}
        }
    }

    /// Does what the table left to do: starts ops whose turn came and stops
    /// ops asked to end, until neither is left.
    fn pump(&mut self) {
        while self.life.has_work() {
            if let Some(k) = self.life.next_start() {
                self.start(k);
            } else if let Some(k) = self.life.next_cancel() {
                self.stop(k);
            }
        }
    }

    /// Ends op `key` with `result`: an aio request's record goes to the
    /// quarantine, a close makes its fd's routing unknown again.
    fn complete(&mut self, key: usize, result: io::Result<usize>) {
        let slot = self.life.slot_mut(key);
        if let Req::Aio(req) = std::mem::replace(&mut slot.extra, Req::Over) {
            debug_assert!(req.state != AioState::InFlight);
            self.quarantine.push(req);
        }
        if let Some(Op::Close { fd }) = slot.op {
            if let Some(k) = self.kinds.get_mut(fd as usize) {
                // The number may now name any new file.
                *k = FdKind::Unknown;
            }
        }
        self.life.finish(key, result);
    }

    /// Hands op `key` (a close, or a cancel-by-fd that reached `here` ops of
    /// this table) to the delegate; it completes when the delegate's does.
    fn forward(&mut self, key: usize, here: usize) {
        let op = self.life.slot_mut(key).op.take().expect("a starting op");
        match self.delegate.submit(op, key as u64, None) {
            Ok(inner) => {
                self.life.slot_mut(key).extra = Req::Forwarded { here };
                match self.delegate.take(inner) {
                    Some(c) => {
                        // Done at once (a close of an fd without ops there):
                        // what the delegate finished before it is announced
                        // first (the fd's ops end before its close), and the
                        // fd is free for new ops right away.
                        self.delegate
                            .wait_ready(&mut self.delegate_ready, 0, Some(Duration::ZERO))
                            .ok();
                        self.take_delegate_completions();
                        self.end_forwarded(key, c);
                    }
                    None => self.delegated.push((inner, key)),
                }
            }
            Err(e) => {
                self.life.slot_mut(key).op = Some(e.op);
                let r = match here {
                    0 => Err(e.error),
                    n => Ok(n),
                };
                self.complete(key, r);
            }
        }
    }

    /// Hands `op` straight to the delegate: no slot here; the caller gets
    /// the delegate's id (marked) and its completion as the delegate made it.
    fn pass(&mut self, op: Op, token: u64, deadline: Option<Instant>) -> Result<OpId, SubmitError> {
        let life = &self.life;
        if let Err(error) = admit(&op, &self.caps, "aio", |fd| life.is_closing(fd)) {
            return Err(SubmitError { error, op });
        }
        let inner = self.delegate.submit(op, token, deadline)?;
        Ok(passed_id(inner))
    }

    /// Sorts out what the delegate announced: our eventfd poll, ops this
    /// table forwarded (they complete here), and ops handed straight on
    /// (announced to the caller with their ids marked).
    fn take_delegate_completions(&mut self) {
        let mut ready = std::mem::take(&mut self.delegate_ready);
        for r in ready.drain(..) {
            if self.poll_id == Some(r.id) {
                let _ = self.delegate.take(r.id);
                self.poll_armed = false;
                self.poll_id = None;
                self.notifier.clear_eventfd();
                continue;
            }
            let Some(at) = self.delegated.iter().position(|d| d.0 == r.id) else {
                self.announce_table();
                self.ready.push(Ready {
                    id: passed_id(r.id),
                    token: r.token,
                });
                continue;
            };
            let Some(c) = self.delegate.take(r.id) else {
                continue;
            };
            let (_, key) = self.delegated.swap_remove(at);
            self.end_forwarded(key, c);
        }
        self.delegate_ready = ready;
        self.pump();
    }

    /// Ends forwarded op `key` with the delegate's completion `c` (a
    /// cancel-by-fd adds the ops it reached here).
    fn end_forwarded(&mut self, key: usize, c: Completion) {
        let here = match self.life.slot(key).extra {
            Req::Forwarded { here } => here,
            _ => 0,
        };
        let result = match c.result {
            Ok(n) => Ok(n + here),
            Err(e) if e.kind() == io::ErrorKind::NotFound && here > 0 => Ok(here),
            Err(e) => Err(e),
        };
        let slot = self.life.slot_mut(key);
        slot.op = Some(c.op);
        slot.extra = Req::Over;
        self.complete(key, result);
    }

    /// Moves this table's finished ops into the announcement list (before a
    /// later one of the delegate's).
    fn announce_table(&mut self) {
        if self.life.ready_len() > 0 {
            self.life.deliver_ready(&mut self.ready);
        }
    }

    /// Finished ops not yet announced.
    fn ready_count(&self) -> usize {
        self.life.ready_len() + self.ready.len()
    }
    /// Fills the aiocb of request `key` for its op. The signal's number and
    /// value are always set; whether glibc sends it (`sigev_notify`) depends
    /// on the mode, and a silent request can be switched over later (see
    /// `arm_signals`).
    fn prepare(&mut self, key: usize) {
        let value = notify::pack(self.notifier.index(), key, self.life.slot(key).generation());
        let signals = self.signal_per_request;
        let slot = self.life.slot_mut(key);
        let Req::Aio(req) = &mut slot.extra else {
            return;
        };
        let op = slot.op.as_mut().expect("a request's op is in its slot");
        // SAFETY: aiocb is plain data; all-zero is its documented initial state.
        req.cb = unsafe { std::mem::zeroed() };
        req.signals = signals;
        req.armed = signals;
        let cb = &mut req.cb;
        ops::fill(cb, op);
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
            if req_of(&mut self.life, key).is_none() {
                continue;
            }
            self.waiting.push_back(key);
            if let Some(req) = req_of(&mut self.life, key) {
                req.state = AioState::Waiting;
            }
        }
        self.batch = batch;
        self.batch.clear();
        let mut list = std::mem::take(&mut self.list);
        let mut keys = std::mem::take(&mut self.list_keys);
        list.clear();
        keys.clear();
        while self.out.len() + list.len() < self.max_in_flight {
            let Some(key) = self.waiting.pop_front() else {
                break;
            };
            if req_of(&mut self.life, key).is_none() {
                continue;
            }
            self.prepare(key);
            let slot = self.life.slot_mut(key);
            let Req::Aio(req) = &mut slot.extra else {
                continue;
            };
            if let Some(op @ Op::Fsync { .. }) = &slot.op {
                // SAFETY: the aiocb is boxed in the in-flight table and stays
                // there until its completion is collected.
                match unsafe { ops::fs::submit(&mut req.cb, op) } {
                    Ok(()) => self.mark_out(key),
                    Err(e) => self.complete(key, Err(e)),
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
        // Requests that failed here may let a parked close start.
        self.pump();
    }

    /// Request `key` is now with glibc.
    fn mark_out(&mut self, key: usize) {
        let pos = self.out.len();
        let Some(req) = req_of(&mut self.life, key) else {
            return;
        };
        req.state = AioState::InFlight;
        req.pos = pos;
        req.seq = self.next_seq;
        self.next_seq += 1;
        if !req.armed {
            self.silent += 1;
        }
        self.out.push(key);
    }

    /// Request `key` is no longer with glibc (finished, or never queued);
    /// it is left `Waiting` for the caller to finish or issue again.
    fn mark_back(&mut self, key: usize) {
        let Some(req) = req_of(&mut self.life, key) else {
            return;
        };
        if req.state != AioState::InFlight {
            return;
        }
        req.state = AioState::Waiting;
        let (pos, armed) = (req.pos, req.armed);
        self.out.swap_remove(pos);
        if let Some(&moved) = self.out.get(pos) {
            if let Some(r) = req_of(&mut self.life, moved) {
                r.pos = pos;
            }
        }
        if !armed {
            self.silent -= 1;
        }
    }

    /// After a failed `lio_listio`: the requests glibc never queued (their
    /// status is still `NOT_QUEUED`) go back to the front of the queue, to
    /// be issued again at the next flush (the wait loop's next turn, after
    /// it blocked for a completion); if none of ours is with glibc, no
    /// completion would come to make room, so they fail with `error`.
    fn requeue_unqueued(&mut self, keys: &[usize], error: io::Error) {
        let mut unqueued = Vec::new();
        for &k in keys {
            let Some(req) = req_of(&mut self.life, k) else {
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
        if self.out.is_empty() {
            let kind = error.kind();
            let raw = error.raw_os_error();
            for k in unqueued {
                let e = match raw {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(kind, error.to_string()),
                };
                self.complete(k, Err(e));
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
        let slot = self.life.slot_mut(key);
        let Req::Aio(req) = &mut slot.extra else {
            return;
        };
        // SAFETY: the aiocb belongs to a request glibc reported finished.
        let err = unsafe { libc::aio_error(&req.cb) };
        if err == libc::EINPROGRESS {
            return;
        }
        // SAFETY: as above; called once, then the request leaves the table.
        let ret = unsafe { libc::aio_return(&mut req.cb) };
        // (`ECANCELED` becomes the error of why the op was asked to end:
        // the table knows.)
        let result = if ret < 0 {
            Err(io::Error::from_raw_os_error(err))
        } else {
            let op = slot.op.as_mut().expect("a request's op is in its slot");
            Ok(ops::complete(op, ret as usize))
        };
        self.mark_back(key);
        self.complete(key, result);
    }

    /// Safety net: collects requests that finished without a notification we
    /// saw. `aio_cancel` first takes glibc's lock, so its notify step for the
    /// request is over before we read the result; a result of -1/EAGAIN there
    /// means the signal could not be queued, and the request is issued again.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let reissued_before = self.reissued;
        let keys = self.out.clone();
        for key in keys {
            let Some(req) = req_of(&mut self.life, key) else {
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
        self.pump();
    }

    /// Request `key` lost its notification: glibc could not queue the
    /// signal and overwrote the result with -1/`EAGAIN`. It is issued again.
    fn reissue(&mut self, key: usize) {
        self.reissued += 1;
        if let Some(req) = req_of(&mut self.life, key) {
            // SAFETY: consume the failed status once before reuse.
            unsafe { libc::aio_return(&mut req.cb) };
        }
        self.mark_back(key);
        if let Some(req) = req_of(&mut self.life, key) {
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
            if !self.life.is_live(slot, generation) {
                continue;
            }
            if let Req::Aio(r) = &self.life.slot(slot).extra {
                if r.state == AioState::InFlight {
                    self.collect_aio(slot);
                }
            }
        }
        self.signalled = sig;
        self.pump();
        if !self.signal_per_request {
            self.poll_out();
        }
        if overflow || (!self.out.is_empty() && self.last_sweep.elapsed() >= self.sweep_interval) {
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
            if let Some(req) = req_of(&mut self.life, k) {
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
            let Some(req) = req_of(&mut self.life, k) else {
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
        // A request that ended may let a parked close start.
        self.pump();
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
            let Some(req) = req_of(&mut self.life, k) else {
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
        let Some(req) = req_of(&mut self.life, key) else {
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

    /// Asks the ops whose deadline passed to end; the next deadline.
    fn expire_deadlines(&mut self) -> Option<Instant> {
        let mut expired = std::mem::take(&mut self.expired);
        let next = self.life.expire(Instant::now(), &mut expired);
        for k in expired.drain(..) {
            self.life.cancel(k, Ending::DeadlinePassed);
        }
        self.expired = expired;
        self.pump();
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
                    .wait_ready(&mut self.delegate_ready, 0, Some(Duration::ZERO))?;
                if !self.delegate_ready.is_empty() {
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
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let start = out.len();
        let timeout = if self.woken.swap(false, Ordering::AcqRel) {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.delegate.wait_ready(out, min, timeout)?;
        self.woken.store(false, Ordering::Release);
        for r in &mut out[start..] {
            r.id = passed_id(r.id);
        }
        Ok(out.len() - start)
    }

    /// A wait with no aio request out or waiting: the delegate's wait (which
    /// our wake ends too), with what is still needed.
    fn wait_delegate_only(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        let have = self.ready_count();
        if have >= min || self.woken.swap(false, Ordering::AcqRel) {
            return self.wait_done();
        }
        self.delegate
            .wait_ready(&mut self.delegate_ready, min - have, timeout)?;
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
                .wait_ready(&mut self.delegate_ready, 0, Some(Duration::ZERO))?;
            self.take_delegate_completions();
        }
        Ok(())
    }

    fn wait_inner(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.flush();
        if self.out.is_empty() && self.waiting.is_empty() && self.life.next_deadline().is_none() {
            return self.wait_delegate_only(min, timeout);
        }
        let mut end: Option<Option<Instant>> = None;
        loop {
            self.drain_notifications();
            let next_deadline = if self.life.next_deadline().is_some() {
                self.expire_deadlines()
            } else {
                None
            };
            self.flush();
            if self.ready_count() >= min
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
            if !self.out.is_empty() {
                // The safety net: a sweep within a bounded time.
                let s = self.sweep_interval;
                t = Some(t.map_or(s, |x| x.min(s)));
            }
            if let Some(d) = next_deadline {
                let dl = d.saturating_duration_since(now);
                t = Some(t.map_or(dl, |x| x.min(dl)));
            }
            let r = self.delegate.wait_ready(&mut self.delegate_ready, 1, t);
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

/// Request `key`'s record, if it is an aio request.
fn req_of(life: &mut InFlight<Req>, key: usize) -> Option<&mut AioReq> {
    match &mut life.slot_mut(key).extra {
        Req::Aio(r) => Some(r),
        _ => None,
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
        if let Op::Cancel {
            target: CancelTarget::Op(t),
        } = op
        {
            if let Some(inner) = delegate_id(t) {
                // A cancel of the delegate's op is the delegate's.
                let op = Op::Cancel {
                    target: CancelTarget::Op(inner),
                };
                return self.pass(op, token, deadline);
            }
        }
        // Routing looks at the fd (fstat once): only once it is known valid.
        if op.validate().is_err() || !self.is_kept_here(&op) {
            return self.pass(op, token, deadline);
        }
        let (id, key, admitted) =
            self.life
                .submit(op, token, deadline, Req::Starting, &self.caps, "aio")?;
        match admitted {
            Admitted::Start => {
                if let Some(d) = deadline {
                    self.life.watch_deadline(key, d);
                }
                self.start(key);
            }
            Admitted::Parked => {
                // A close behind the fd's aio requests (asked to end by the
                // table): the delegate's ops on the fd end now too.
                if let Some(fd) = self.life.slot(key).fd() {
                    let _ = self.delegate.cancel_fd(fd);
                }
            }
            // aio's ops are positional: never queued behind one another.
            Admitted::Queued => {}
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
        let mut ready = std::mem::take(&mut self.scratch);
        ready.clear();
        let r = self.wait_ready(&mut ready, min, timeout);
        let n = out.len();
        for rd in ready.drain(..) {
            if let Some(c) = self.take(rd.id) {
                out.push(c);
            }
        }
        self.scratch = ready;
        r.map(|_| out.len() - n)
    }

    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if self.life.live() == 0
            && self.life.ready_len() == 0
            && self.ready.is_empty()
            && !self.poll_armed
        {
            // Nothing of this table's is out: the delegate's wait as it is.
            return self.wait_passed_only(out, min, timeout);
        }
        let r = self.wait_inner(min, timeout);
        let n = out.len();
        self.announce_table();
        out.append(&mut self.ready);
        r.map(|_| out.len() - n)
    }

    fn take(&mut self, id: OpId) -> Option<Completion> {
        match delegate_id(id) {
            Some(inner) => self.delegate.take(inner).map(|c| Completion { id, ..c }),
            None => self.life.take(id),
        }
    }

    fn take_shot(&mut self, id: OpId) -> Option<Shot> {
        // Multishot ops are the delegate's (this table keeps none).
        self.delegate.take_shot(delegate_id(id)?)
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        if let Some(inner) = delegate_id(id) {
            return self.delegate.cancel(inner);
        }
        self.life.cancel_id(id)?;
        self.pump();
        Ok(())
    }

    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        let here = self.life.cancel_fd(fd);
        self.pump();
        Ok(here + self.delegate.cancel_fd(fd).unwrap_or(0))
    }

    fn waker(&self) -> DriverWaker {
        DriverWaker::new(Arc::new(AioWake {
            woken: self.woken.clone(),
            delegate: self.delegate.waker(),
        }))
    }

    fn in_flight(&self) -> usize {
        // The delegate's own ops, without our eventfd poll and the ops this
        // table forwarded (counted here).
        let delegate_own = self
            .delegate
            .in_flight()
            .saturating_sub(usize::from(self.poll_armed) + self.delegated.len());
        self.life.len() + delegate_own
    }
}

impl Drop for AioDriver {
    /// Never hangs, closes what it was asked to close, and frees no aiocb or
    /// buffer glibc may still touch: requests glibc never saw end at once;
    /// the rest are cancelled and waited for up to `DROP_GRACE` (a request
    /// glibc cannot cancel, a read blocked in a worker, is leaked with its
    /// buffer). Every parked close is then carried out by the delegate: a
    /// worker still blocked on that fd holds the kernel's file reference, and
    /// glibc starts nothing new on the fd (the requests queued behind it were
    /// cancelled).
    fn drop(&mut self) {
        // Requests glibc never saw end now (closes behind them may start).
        let local: Vec<usize> = self
            .life
            .iter()
            .filter(|(_, s)| matches!(&s.extra, Req::Aio(r) if r.state != AioState::InFlight))
            .map(|(k, _)| k)
            .collect();
        self.batch.clear();
        self.waiting.clear();
        for k in local {
            self.complete(k, Err(cancelled()));
        }
        self.pump();
        let start = Instant::now();
        while !self.out.is_empty() && start.elapsed() < DROP_GRACE {
            for k in self.out.clone() {
                if let Some(req) = req_of(&mut self.life, k) {
                    req.cancel_requested = true;
                    // SAFETY: the aiocb is with glibc and boxed in our table.
                    unsafe { libc::aio_cancel(req.cb.aio_fildes, &mut req.cb) };
                }
            }
            std::thread::sleep(Duration::from_millis(2));
            self.drain_notifications();
            self.sweep();
            self.pump();
        }
        // Closes still parked behind a request glibc keeps: carried out now
        // by the delegate. Ops that never started and finished ops nobody
        // took go (fds the latter made are closed).
        for fd in self.life.drain_unstarted() {
            if let Ok(inner) = self.delegate.submit(Op::Close { fd }, 0, None) {
                self.delegated.push((inner, usize::MAX));
            }
        }
        // Let the delegate finish the closes handed to it (bounded). What
        // else it announces stays in its table, for its own drop.
        let end = Instant::now() + Duration::from_millis(500);
        while !self.delegated.is_empty() && Instant::now() < end {
            let mut ready = std::mem::take(&mut self.delegate_ready);
            let r = self
                .delegate
                .wait_ready(&mut ready, 1, Some(Duration::from_millis(10)));
            for rd in ready.drain(..) {
                if let Some(at) = self.delegated.iter().position(|d| d.0 == rd.id) {
                    self.delegated.swap_remove(at);
                    let _ = self.delegate.take(rd.id);
                }
            }
            self.delegate_ready = ready;
            if r.is_err() {
                break;
            }
        }
        self.notifier
            .set_next_generation(self.life.next_generation());
        // The records of finished requests go once glibc's lock was taken
        // after they were seen finished.
        self.glibc_barrier();
        self.spare.clear();
        // Whatever is left is with glibc (or a close with the delegate):
        // leaked, never freed early.
        self.life.leak_all();
    }
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
