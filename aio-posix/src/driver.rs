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

// The request mechanism (glibc's side) is a child of this module, kept in
// its own file beside it as the other backends keep theirs (`ring.rs`,
// `poller/`).
#[path = "requests.rs"]
mod requests;

use crate::notify::Notifier;
use crate::ops::{set_error_code, AioReq, AioState};
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
