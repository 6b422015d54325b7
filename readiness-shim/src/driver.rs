//! The shim's [`Driver`]: submit (validate, try at once or queue), wait
//! (poller, pool results, timers), cancel, and drop.

use crate::ops::{self, Attempt, Nowait};
use crate::poller::{Event, Poller};
use crate::pool::{self, close_result_fd, Job, Pool};
use crate::{PollerKind, ShimBuilder};
use ringport_core::driver::{
    admit, cancelled, deadline_passed, Capabilities, Completion, Driver, DriverWaker, SubmitError,
    Support, Wake,
};
use ringport_core::op::{Direction, Op, OpId};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum State {
    /// In its fd's queue for this direction (0 read, 1 write; 2 both, a
    /// poll for either).
    Queued(usize),
    /// A current-position file op in its fd's pool FIFO for this
    /// direction, behind the one the pool runs.
    FileQueued(usize),
    /// With the thread pool (the op is in the job).
    Pool,
    /// A timer.
    Timer,
    /// A close waiting for the fd's pool jobs to finish.
    CloseWaiting,
}

pub(crate) struct Slot {
    pub(crate) generation: u32,
    token: u64,
    /// `None` while a pool job holds it.
    pub(crate) op: Option<Op>,
    /// The op's fd (kept here too, since a pool job holds the op).
    fd: Option<RawFd>,
    pub(crate) state: State,
    pub(crate) progress: usize,
    /// Why a running pool job was told to stop (cancel, deadline): its
    /// completion carries this unless the job finished anyway.
    ending: Option<io::Error>,
}

#[derive(Copy, Clone, PartialEq, Eq, Default)]
enum FdKind {
    #[default]
    Unknown,
    /// Regular file or block device: the pool.
    File,
    /// Socket, pipe, FIFO, terminal: readiness.
    Stream,
}

#[derive(Default)]
pub(crate) struct FdState {
    kind: FdKind,
    queue: [VecDeque<usize>; 2],
    /// Current-position file ops per direction, run by the pool one at a
    /// time in this order (the front one is with the pool).
    fileq: [VecDeque<usize>; 2],
    interest: (bool, bool),
    pub(crate) pool_ops: u32,
    pub(crate) closing: Option<usize>,
}

struct PipeWaker {
    /// The read end lives as long as any waker, so a wake after the driver
    /// is gone writes to a pipe that has a reader (no `SIGPIPE`, no
    /// `EPIPE`); it fills and then ignores further wakes.
    r: OwnedFd,
    w: OwnedFd,
    /// Set by a caller's wake (the pool writes the same pipe without it), so
    /// only a real wake ends a wait early.
    woken: AtomicBool,
}

impl Wake for PipeWaker {
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        let one = 1u8;
        // SAFETY: one byte to our non-blocking pipe; a full pipe already
        // holds a pending wake.
        unsafe {
            libc::write(
                self.w.as_raw_fd(),
                &one as *const u8 as *const libc::c_void,
                1,
            )
        };
    }
}

/// The readiness-shim [`Driver`].
pub struct ShimDriver {
    name: &'static str,
    poller: Box<dyn Poller>,
    pub(crate) slots: Slab<Slot>,
    next_generation: u32,
    fds: Vec<FdState>,
    ready: Vec<Completion>,
    pub(crate) timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    // Field order matters: the pool must stop before the pipe closes.
    pool: Pool,
    waker: Arc<PipeWaker>,
    waker_registered: bool,
    /// A pool job was told to stop and its worker has not reported back:
    /// the wait interrupts it again every few milliseconds until it does.
    interrupting: bool,
    events: Vec<Event>,
    done: Vec<pool::Done>,
    caps: Capabilities,
    /// Try page-cached file reads inline first (see `ShimBuilder::nowait_reads`).
    nowait_reads: bool,
    /// Jobs handed to the pool so far.
    pool_jobs: u64,
    /// How many fds have interest with the poller (ops waiting for readiness).
    watched: usize,
    /// Calls into the poller so far.
    poller_waits: u64,
}

impl ShimDriver {
    /// A driver over `kind` with default settings.
    pub fn new(kind: PollerKind) -> io::Result<ShimDriver> {
        Self::builder(kind).build()
    }

    /// How many times the poller's event source overflowed and every fd was
    /// rescanned (signal-driven I/O; 0 for the others).
    pub fn rescans(&self) -> u64 {
        self.poller.rescans()
    }

    /// How many ops this driver has handed to its thread pool (file ops that
    /// were not completed inline from the page cache, opens, syncs, stats).
    pub fn pool_jobs(&self) -> u64 {
        self.pool_jobs
    }

    /// How many times `wait` has called into the poller (`epoll_wait`,
    /// `poll`, ...). A wait that finds enough completions ready while no fd
    /// waits for readiness returns without calling it.
    pub fn poller_waits(&self) -> u64 {
        self.poller_waits
    }

    /// A builder for `kind`: the pool size and the inline-read policy.
    pub fn builder(kind: PollerKind) -> ShimBuilder {
        ShimBuilder {
            kind,
            threads: 4,
            nowait_reads: ops::NOWAIT_READS,
        }
    }

    pub(crate) fn with(b: ShimBuilder) -> io::Result<ShimDriver> {
        let poller = b.kind.open()?;
        let mut fds = [0; 2];
        // SAFETY: fds has room for two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut caps = Capabilities::all(Support::Emulated);
        caps.needs_nonblocking = true;
        caps.max_fd = poller.max_fd();
        Ok(ShimDriver {
            name: poller.name(),
            poller,
            slots: Slab::with_capacity(64),
            next_generation: 0,
            fds: Vec::new(),
            ready: Vec::new(),
            timers: BinaryHeap::new(),
            pool: Pool::new(b.threads, w.as_raw_fd()),
            waker: Arc::new(PipeWaker {
                r,
                w,
                woken: AtomicBool::new(false),
            }),
            waker_registered: false,
            interrupting: false,
            events: Vec::with_capacity(256),
            done: Vec::new(),
            caps,
            nowait_reads: b.nowait_reads && ops::NOWAIT_READS,
            pool_jobs: 0,
            watched: 0,
            poller_waits: 0,
        })
    }

    /// Registers the waker pipe on first use (sigio binds to that thread).
    fn ensure_waker(&mut self) -> io::Result<()> {
        if !self.waker_registered {
            self.poller.set(self.waker.r.as_raw_fd(), true, false)?;
            self.waker_registered = true;
        }
        Ok(())
    }

    pub(crate) fn fd_state(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdState::default);
        }
        &mut self.fds[i]
    }

    /// File or stream, found once per fd with `fstat` (and a stream is made
    /// non-blocking then). `Err` for a bad fd.
    fn kind_of(&mut self, fd: RawFd) -> io::Result<FdKind> {
        // Per-fd state is indexed by number: only a number that can name an
        // open file may size the table (submit validated it already).
        ringport_core::op::check_fd(fd)?;
        let k = self.fd_state(fd).kind;
        if k != FdKind::Unknown {
            return Ok(k);
        }
        // SAFETY: fstat writes one stat struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let t = st.st_mode & libc::S_IFMT;
        let kind = if t == libc::S_IFREG || t == libc::S_IFBLK {
            FdKind::File
        } else {
            // SAFETY: fcntl on the caller's fd.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
                    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
            }
            // Registered (sigio: O_ASYNC armed) before the first try, so
            // readiness that changes after that try is signalled. A poller
            // that refuses the fd says so when an op must wait on it.
            let _ = self.poller.register(fd);
            FdKind::Stream
        };
        self.fd_state(fd).kind = kind;
        Ok(kind)
    }

    pub(crate) fn lookup(&self, id: OpId) -> Option<usize> {
        match self.slots.get(id.slot()) {
            Some(s) if s.generation == id.generation() => Some(id.slot()),
            _ => None,
        }
    }

    /// Ends slot `key`.
    pub(crate) fn complete(&mut self, key: usize, result: io::Result<usize>) {
        let slot = self.slots.remove(key);
        let id = OpId::new(key as u32, slot.generation);
        let Some(op) = slot.op else {
            return;
        };
        let fd = op.fd();
        let was_pool = slot.state == State::Pool;
        let file_dir = match slot.state {
            State::Pool | State::FileQueued(_) => op.direction().map(dir_index),
            _ => None,
        };
        self.ready.push(Completion {
            id,
            token: slot.token,
            result,
            op,
        });
        if let Some(fd) = fd {
            if was_pool {
                let st = self.fd_state(fd);
                st.pool_ops = st.pool_ops.saturating_sub(1);
            }
            if let Some(d) = file_dir {
                self.fd_state(fd).fileq[d].retain(|&k| k != key);
                if was_pool {
                    self.start_file_next(fd, d);
                }
            }
            self.maybe_close(fd);
        }
    }

    /// Hands the front of `fd`'s file FIFO for direction `d` to the pool
    /// (after the one before it ended).
    fn start_file_next(&mut self, fd: RawFd, d: usize) {
        while let Some(&next) = self.fd_state(fd).fileq[d].front() {
            if self.slots[next].state == State::Pool {
                return; // already running
            }
            match self.send_to_pool(next) {
                Ok(()) => return,
                Err(e) => {
                    self.fd_state(fd).fileq[d].pop_front();
                    self.complete(next, Err(e));
                }
            }
        }
    }

    /// Performs a close parked on `fd` once nothing of the fd is in flight.
    fn maybe_close(&mut self, fd: RawFd) {
        let st = self.fd_state(fd);
        if st.pool_ops > 0
            || st.queue.iter().any(|q| !q.is_empty())
            || st.fileq.iter().any(|q| !q.is_empty())
        {
            return;
        }
        if let Some(k) = st.closing.take() {
            let r = self.close_now(fd);
            self.complete(k, r);
        }
    }

    pub(crate) fn close_now(&mut self, fd: RawFd) -> io::Result<usize> {
        self.poller.remove(fd);
        self.set_interest(fd, (false, false));
        *self.fd_state(fd) = FdState::default();
        // SAFETY: the fd was handed to us to close; nothing of ours uses it now.
        if unsafe { libc::close(fd) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(0)
        }
    }

    /// Updates the poller's interest in `fd` from its queues.
    fn sync_interest(&mut self, fd: RawFd) -> io::Result<()> {
        let st = self.fd_state(fd);
        let want = (!st.queue[0].is_empty(), !st.queue[1].is_empty());
        if want != st.interest {
            self.set_interest(fd, want);
            self.poller.set(fd, want.0, want.1)?;
        }
        Ok(())
    }

    /// Records `fd`'s interest, keeping the count of watched fds.
    fn set_interest(&mut self, fd: RawFd, want: (bool, bool)) {
        let st = self.fd_state(fd);
        let was = st.interest.0 || st.interest.1;
        st.interest = want;
        let is = want.0 || want.1;
        match (was, is) {
            (false, true) => self.watched += 1,
            (true, false) => self.watched -= 1,
            _ => {}
        }
    }

    /// Runs `fd`'s queue for direction `d` front to back until one would block.
    fn run_queue(&mut self, fd: RawFd, d: usize) {
        let mut other = false;
        while let Some(&key) = self.fd_state(fd).queue[d].front() {
            let slot = &mut self.slots[key];
            let both = slot.state == State::Queued(2);
            let op = slot.op.as_mut().expect("queued op present");
            match ops::attempt(op, &mut slot.progress) {
                Attempt::WouldBlock => break,
                Attempt::Done(r) => {
                    self.fd_state(fd).queue[d].pop_front();
                    if both {
                        // A poll for either direction waits in both queues.
                        self.fd_state(fd).queue[1 - d].retain(|&k| k != key);
                        other = true;
                    }
                    self.complete(key, r);
                }
            }
        }
        let _ = self.sync_interest(fd);
        self.maybe_close(fd);
        if other {
            // What waited behind that poll in the other queue may run now.
            self.run_queue(fd, 1 - d);
        }
    }

    /// Takes slot `key` out of wherever it waits and ends it with `err`.
    /// Returns false if it cannot be taken back (a pool job is running).
    pub(crate) fn abort(&mut self, key: usize, err: io::Error) -> bool {
        let slot = &self.slots[key];
        match slot.state {
            State::Queued(d) => {
                let fd = slot.fd.unwrap_or(-1);
                // A stream write with bytes out reports them, whether it was
                // cancelled or its deadline passed: the stream holds them.
                let wrote = slot.progress > 0
                    && slot.op.as_ref().and_then(Op::direction) == Some(Direction::Write);
                let result = if wrote { Ok(slot.progress) } else { Err(err) };
                let st = self.fd_state(fd);
                for q in if d == 2 { 0..2 } else { d..d + 1 } {
                    st.queue[q].retain(|&k| k != key);
                }
                self.complete(key, result);
                let _ = self.sync_interest(fd);
                self.maybe_close(fd);
                true
            }
            State::FileQueued(_) => {
                // Not started: complete() takes it out of its FIFO.
                self.complete(key, Err(err));
                true
            }
            State::Pool => {
                let generation = slot.generation;
                match self.pool.take_queued(key, generation) {
                    Some(job) => {
                        self.slots[key].op = Some(job.op);
                        self.complete(key, Err(err));
                        true
                    }
                    // Running: its worker is interrupted and the op ends
                    // when the worker hands it back (its buffer is the
                    // worker's until then).
                    None if self.pool.interrupt(key, generation) => {
                        self.slots[key].ending.get_or_insert(err);
                        self.interrupting = true;
                        true
                    }
                    // Finished: its result is on the way.
                    None => false,
                }
            }
            State::Timer => {
                self.complete(key, Err(err));
                true
            }
            State::CloseWaiting => false,
        }
    }

    pub(crate) fn cancel_all_on(&mut self, fd: RawFd, except: Option<usize>) -> usize {
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(k, s)| {
                Some(*k) != except && s.state != State::CloseWaiting && s.fd == Some(fd)
            })
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in keys {
            if self.slots.contains(k) {
                self.abort(k, cancelled());
                n += 1;
            }
        }
        n
    }

    pub(crate) fn send_to_pool(&mut self, key: usize) -> io::Result<()> {
        self.pool_jobs += 1;
        let slot = &mut self.slots[key];
        let op = slot.op.take().expect("op present");
        slot.state = State::Pool;
        let generation = slot.generation;
        if let Some(fd) = op.fd() {
            self.fd_state(fd).pool_ops += 1;
        }
        match self.pool.push(Job {
            key,
            generation,
            op,
        }) {
            Ok(()) => Ok(()),
            Err((e, job)) => {
                if let Some(fd) = job.op.fd() {
                    let st = self.fd_state(fd);
                    st.pool_ops = st.pool_ops.saturating_sub(1);
                }
                let slot = &mut self.slots[key];
                slot.op = Some(job.op);
                slot.state = State::Timer;
                Err(e)
            }
        }
    }

    fn fire_timers(&mut self) -> Option<Instant> {
        if self.timers.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(&Reverse((at, key, generation))) = self.timers.peek() {
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            let live = matches!(self.slots.get(key), Some(s) if s.generation == generation);
            if !live {
                continue;
            }
            if self.slots[key].state == State::Timer {
                self.complete(key, Err(io::Error::from_raw_os_error(libc::ETIME)));
            } else {
                self.abort(key, deadline_passed());
            }
        }
        None
    }

    fn take_pool_results(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        self.pool.drain(&mut done);
        for d in done.drain(..) {
            let live = matches!(self.slots.get(d.key), Some(s) if s.generation == d.generation);
            if live {
                let slot = &mut self.slots[d.key];
                slot.op = Some(d.op);
                // A job stopped by a cancel or deadline reports that, unless
                // it finished anyway (an open's fd must reach its owner).
                let r = match (slot.ending.take(), d.result) {
                    (Some(e), Err(_)) => Err(e),
                    (_, r) => r,
                };
                self.complete(d.key, r);
            } else {
                close_result_fd(&d.op, &d.result);
            }
        }
        self.done = done;
    }

    fn drain_waker(&mut self) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a local buffer from our non-blocking pipe.
        while unsafe { libc::read(self.waker.r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
            > 0
        {}
    }

    fn wait_inner(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.ensure_waker()?;
        // The clock is read only once the wait goes past its first check.
        let mut end_at: Option<Option<Instant>> = None;
        let wake_fd = self.waker.r.as_raw_fd();
        loop {
            self.take_pool_results();
            let next_timer = self.fire_timers();
            if self.ready.len() >= min && self.watched == 0 {
                // Enough is ready and no fd waits for readiness: the poller
                // could add nothing (a wake would end this wait anyway), so
                // its syscall is skipped. Ops waiting on an fd always get
                // their look, so they are never starved.
                return Ok(());
            }
            let now = Instant::now();
            let end = *end_at.get_or_insert_with(|| timeout.map(|t| now + t));
            let left = end.map(|e| e.saturating_duration_since(now));
            let done = self.ready.len() >= min;
            // Block only when nothing is ready yet and time remains.
            let mut t = if done || left == Some(Duration::ZERO) {
                Some(Duration::ZERO)
            } else {
                left
            };
            if let Some(at) = next_timer {
                let d = at.saturating_duration_since(now);
                t = Some(t.map_or(d, |x| x.min(d)));
            }
            if self.interrupting {
                // A stop signal may have come just before the worker's
                // syscall began: send it again until the worker reports.
                self.interrupting = self.pool.reinterrupt();
                if self.interrupting {
                    let d = Duration::from_millis(2);
                    t = Some(t.map_or(d, |x| x.min(d)));
                }
            }
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            self.poller_waits += 1;
            self.poller.wait(&mut events, t)?;
            let mut woken = false;
            for ev in &events {
                if ev.fd == wake_fd {
                    woken = true;
                    continue;
                }
                if (ev.fd as usize) >= self.fds.len() {
                    continue;
                }
                if ev.readable {
                    self.run_queue(ev.fd, 0);
                }
                if ev.writable {
                    self.run_queue(ev.fd, 1);
                }
            }
            self.events = events;
            if woken {
                self.drain_waker();
                self.take_pool_results();
                // Pool results wake the poller too; only a caller's wake
                // ends the wait early.
                woken = self.waker.woken.swap(false, Ordering::AcqRel);
            }
            self.fire_timers();
            let left = end.map(|e| e.saturating_duration_since(Instant::now()));
            if self.ready.len() >= min || left == Some(Duration::ZERO) || woken || done {
                return Ok(());
            }
        }
    }
}

impl Driver for ShimDriver {
    fn name(&self) -> &'static str {
        self.name
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
        if let Err(error) = admit(&op, &self.caps, self.name, closing) {
            return Err(SubmitError { error, op });
        }
        if let Err(error) = self.ensure_waker() {
            return Err(SubmitError { error, op });
        }
        let fd = op.fd();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = self.slots.insert(Slot {
            generation,
            token,
            op: None,
            fd,
            state: State::Timer,
            progress: 0,
            ending: None,
        });
        let id = OpId::new(key as u32, generation);
        if let Some(d) = deadline {
            self.timers.push(Reverse((d, key, generation)));
        }
        let r = self.start(key, op, fd);
        match r {
            Ok(()) => Ok(id),
            Err(e) => {
                // Refused before anything ran: hand the op back.
                let slot = self.slots.remove(key);
                Err(SubmitError {
                    error: e,
                    op: slot.op.expect("op present when refused"),
                })
            }
        }
    }

    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let r = self.wait_inner(min, timeout);
        let n = ringport_core::driver::deliver(out, &mut self.ready);
        r.map(|_| n)
    }

    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        let key = self
            .lookup(id)
            .ok_or_else(ringport_core::driver::not_in_flight)?;
        self.abort(key, cancelled());
        Ok(())
    }

    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        Ok(self.cancel_all_on(fd, None))
    }

    fn waker(&self) -> DriverWaker {
        DriverWaker::new(self.waker.clone())
    }

    fn in_flight(&self) -> usize {
        self.slots.len() + self.ready.len()
    }
}

impl ShimDriver {
    /// Starts op in slot `key`. `Err` refuses the submission (the op is put
    /// back in the slot for the caller to return).
    fn start(&mut self, key: usize, op: Op, fd: Option<RawFd>) -> io::Result<()> {
        match op {
            Op::Nop | Op::Timeout { .. } | Op::Cancel { .. } => {
                self.start_ctl(key, op);
                return Ok(());
            }
            Op::OpenAt { .. } => return self.start_open(key, op),
            _ => {}
        }
        let fd = fd.unwrap_or(-1);
        let kind = match self.kind_of(fd) {
            Ok(k) => k,
            Err(e) => {
                // A bad fd is reported in the completion, with the buffer.
                self.slots[key].op = Some(op);
                self.complete(key, Err(e));
                return Ok(());
            }
        };
        if let Op::Close { .. } = op {
            self.start_close(key, op, fd);
            return Ok(());
        }
        let file_op = matches!(
            op,
            Op::Read { .. }
                | Op::Write { .. }
                | Op::Readv { .. }
                | Op::Writev { .. }
                | Op::Fsync { .. }
                | Op::Stat { .. }
        );
        if (kind == FdKind::File && file_op) || matches!(op, Op::Fsync { .. } | Op::Stat { .. }) {
            let mut op = op;
            if self.nowait_reads {
                match ops::read_nowait(&mut op) {
                    Nowait::Done(n) => {
                        self.slots[key].op = Some(op);
                        self.complete(key, Ok(n));
                        return Ok(());
                    }
                    Nowait::Unsupported => self.nowait_reads = false,
                    Nowait::Pool => {}
                }
            }
            if let Some(d) = op.direction().map(dir_index) {
                // At the file's position: one at a time per direction, in
                // submission order.
                self.slots[key].op = Some(op);
                let q = &mut self.fd_state(fd).fileq[d];
                q.push_back(key);
                if q.len() > 1 {
                    self.slots[key].state = State::FileQueued(d);
                    return Ok(());
                }
                let r = self.send_to_pool(key);
                if r.is_err() {
                    self.fd_state(fd).fileq[d].pop_back();
                }
                return r;
            }
            self.slots[key].op = Some(op);
            return self.send_to_pool(key);
        }
        if let Some(max) = self.caps.max_fd {
            if fd > max {
                self.slots[key].op = Some(op);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "fd {fd} is above the {} backend's limit: FD_SETSIZE is {}",
                        self.name,
                        max + 1
                    ),
                ));
            }
        }
        let d = match &op {
            Op::Poll { events, .. } => ops::poll_queue(*events),
            Op::Connect { .. } => 1,
            Op::Accept { .. } => 0,
            Op::Shutdown { .. } => {
                self.start_shutdown(key, op);
                return Ok(());
            }
            o => match o.direction() {
                Some(Direction::Read) => 0,
                Some(Direction::Write) => 1,
                None => 0,
            },
        };
        self.slots[key].op = Some(op);
        self.slots[key].state = State::Queued(d);
        // A poll changes nothing, so it may always look first.
        if d == 2 || self.fd_state(fd).queue[d].is_empty() {
            // Optimistic first try, only when nothing waits before it.
            let slot = &mut self.slots[key];
            let op = slot.op.as_mut().expect("op present");
            if let Attempt::Done(r) = ops::attempt(op, &mut slot.progress) {
                self.complete(key, r);
                return Ok(());
            }
        }
        let qs = if d == 2 { 0..2 } else { d..d + 1 };
        for q in qs.clone() {
            self.fd_state(fd).queue[q].push_back(key);
        }
        if let Err(e) = self.sync_interest(fd) {
            // The poller cannot watch this fd: the op ends with that error.
            for q in qs {
                self.fd_state(fd).queue[q].retain(|&k| k != key);
            }
            self.set_interest(fd, (false, false));
            self.complete(key, Err(e));
        }
        Ok(())
    }
}

/// The index of a direction's queue.
fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl Drop for ShimDriver {
    fn drop(&mut self) {
        // Stop the pool: running jobs are interrupted and given a bounded
        // time to hand their ops back; one that does not keeps its op (and
        // buffer) until its syscall ends, and will not retry it.
        let left = self.pool.shut_down(Duration::from_millis(250));
        // Fds made by opens and accepts nobody will receive are closed.
        for d in &left {
            close_result_fd(&d.op, &d.result);
        }
        for c in &self.ready {
            close_result_fd(&c.op, &c.result);
        }
        // Closes parked until the fd's pool jobs ended are done now: the
        // jobs were stopped above, and a stopped worker never retries a
        // syscall, so it cannot reach a reused fd number.
        let parked: Vec<RawFd> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == State::CloseWaiting)
            .filter_map(|(_, s)| s.fd)
            .collect();
        for fd in parked {
            let _ = self.close_now(fd);
        }
    }
}
