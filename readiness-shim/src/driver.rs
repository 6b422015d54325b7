//! The shim's [`Driver`]. The op lifecycle (the in-flight table, per-fd
//! order, the close protocol, deadlines, what a cancel makes of a result) is
//! core's [`InFlight`]; this file supplies the readiness mechanism: start an
//! op (an optimistic attempt, else a wait for readiness; a file op on the
//! pool; a timer), run an fd's wait lists when the poller reports it ready,
//! and stop a running op (take it off its wait list, out of the pool's
//! queue, or interrupt its worker).

use crate::ops::{self, Attempt, Nowait};
use crate::poller::{Event, Poller};
use crate::pool::{self, close_result_fd, Job, Pool};
use crate::{PollerKind, ShimBuilder};
use ringport_core::driver::{
    cancelled, Capabilities, Completion, Driver, DriverWaker, Ready, Shot, SubmitError, Support,
    Wake,
};
use ringport_core::lifecycle::{Admitted, Ending, InFlight};
use ringport_core::op::{Direction, Op, OpId};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the shim performs a running op.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default)]
pub(crate) enum How {
    /// Not placed yet (being started).
    #[default]
    Starting,
    /// On its fd's wait list for this direction (0 read, 1 write; 2 both, a
    /// poll for either), tried again at readiness.
    Waiting(usize),
    /// With the thread pool (the op is in the job).
    Pool,
    /// A timer waiting for its time.
    Timer,
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
struct FdState {
    kind: FdKind,
    /// Running ops waiting for readiness, per direction.
    queue: [VecDeque<usize>; 2],
    interest: (bool, bool),
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
    /// Every op in flight, and the rules it is kept by.
    pub(crate) life: InFlight<How>,
    /// The poller's per-fd state (kind, readiness wait lists, interest).
    fds: Vec<FdState>,
    /// Scratch list of ops whose deadline passed.
    expired: Vec<usize>,
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
        ops::limit_caps(&mut caps);
        Ok(ShimDriver {
            name: poller.name(),
            poller,
            life: InFlight::with_capacity(64),
            fds: Vec::new(),
            expired: Vec::new(),
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

    fn fd_state(&mut self, fd: RawFd) -> &mut FdState {
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

    /// Ends slot `key` with `result` (the table applies the lifecycle's
    /// rules and queues what may start next).
    #[inline]
    pub(crate) fn complete(&mut self, key: usize, result: io::Result<usize>) {
        self.life.finish(key, result);
    }

    /// Closes `fd` now (its ops have all ended): the poller and this
    /// driver forget it first, since the number may be reused at once.
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

    /// Updates the poller's interest in `fd` from its wait lists.
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

    /// Tries `fd`'s wait list for direction `d` front to back until one
    /// would block.
    fn run_queue(&mut self, fd: RawFd, d: usize) {
        let mut other = false;
        while let Some(&key) = self.fd_state(fd).queue[d].front() {
            let slot = self.life.slot_mut(key);
            let both = slot.extra == How::Waiting(2);
            let op = slot.op.as_mut().expect("a waiting op is in its slot");
            match ops::attempt(op, &mut slot.progress) {
                Attempt::WouldBlock => break,
                Attempt::Shot(r, buf) => self.life.shot(key, r, buf),
                Attempt::Done(r) => {
                    self.fd_state(fd).queue[d].pop_front();
                    if both {
                        // A poll for either direction waits in both lists.
                        self.fd_state(fd).queue[1 - d].retain(|&k| k != key);
                        other = true;
                    }
                    self.complete(key, r);
                }
            }
        }
        let _ = self.sync_interest(fd);
        if other {
            // What waited behind that poll in the other list may run now.
            self.run_queue(fd, 1 - d);
        }
    }

    /// Stops running slot `key` (the table asked: a cancel, a deadline, a
    /// close of its fd). It ends now, unless a worker runs it: then the
    /// worker is interrupted and it ends when the worker hands it back.
    fn stop(&mut self, key: usize) {
        let slot = self.life.slot(key);
        match slot.extra {
            How::Waiting(d) => {
                let fd = slot.fd().unwrap_or(-1);
                let st = self.fd_state(fd);
                for q in if d == 2 { 0..2 } else { d..d + 1 } {
                    st.queue[q].retain(|&k| k != key);
                }
                self.complete(key, Err(cancelled()));
                let _ = self.sync_interest(fd);
            }
            How::Pool => {
                let generation = slot.generation();
                match self.pool.take_queued(key, generation) {
                    Some(job) => {
                        self.life.slot_mut(key).op = Some(job.op);
                        self.complete(key, Err(cancelled()));
                    }
                    // Running: its worker is interrupted and the op ends
                    // when the worker hands it back (its buffer is the
                    // worker's until then).
                    None if self.pool.interrupt(key, generation) => self.interrupting = true,
                    // Finished: its result is on the way.
                    None => {}
                }
            }
            How::Timer => self.complete(key, Err(cancelled())),
            How::Starting => {}
        }
    }

    /// Does what the table left to do: starts ops whose turn came and stops
    /// ops asked to end, until neither is left.
    #[inline]
    fn pump(&mut self) {
        while self.life.has_work() {
            if let Some(k) = self.life.next_start() {
                if let Err(e) = self.start(k) {
                    self.complete(k, Err(e));
                }
            } else if let Some(k) = self.life.next_cancel() {
                self.stop(k);
            }
        }
    }

    pub(crate) fn send_to_pool(&mut self, key: usize) -> io::Result<()> {
        self.pool_jobs += 1;
        let slot = self.life.slot_mut(key);
        let op = slot.op.take().expect("op present");
        slot.extra = How::Pool;
        let generation = slot.generation();
        match self.pool.push(Job {
            key,
            generation,
            op,
        }) {
            Ok(()) => Ok(()),
            Err((e, job)) => {
                let slot = self.life.slot_mut(key);
                slot.op = Some(job.op);
                slot.extra = How::Starting;
                Err(e)
            }
        }
    }

    /// Ends timers whose time came and asks ops whose deadline passed to
    /// end; returns the next deadline ahead.
    fn fire_timers(&mut self) -> Option<Instant> {
        self.life.next_deadline()?;
        let now = Instant::now();
        let mut expired = std::mem::take(&mut self.expired);
        let next = self.life.expire(now, &mut expired);
        for key in expired.drain(..) {
            if !self.life.is_live(key, self.life.slot(key).generation()) {
                continue;
            }
            let slot = self.life.slot(key);
            match (&slot.op, slot.extra) {
                (Some(Op::Timeout { deadline }), How::Timer) if *deadline <= now => {
                    self.complete(key, Err(io::Error::from_raw_os_error(libc::ETIME)))
                }
                _ => self.life.cancel(key, Ending::DeadlinePassed),
            }
        }
        self.expired = expired;
        self.pump();
        next
    }

    fn take_pool_results(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        self.pool.drain(&mut done);
        for d in done.drain(..) {
            if self.life.is_live(d.key, d.generation) {
                let slot = self.life.slot_mut(d.key);
                slot.op = Some(d.op);
                // A job stopped by a cancel or deadline reports that, unless
                // it finished anyway (an open's fd must reach its owner).
                let r = match (slot.ending(), d.result) {
                    (Some(_), Err(_)) => Err(cancelled()),
                    (_, r) => r,
                };
                self.complete(d.key, r);
            } else {
                close_result_fd(&d.op, &d.result);
            }
        }
        self.done = done;
        self.pump();
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
            if self.life.ready_len() >= min && self.watched == 0 {
                // Enough is ready and no fd waits for readiness: the poller
                // could add nothing (a wake would end this wait anyway), so
                // its syscall is skipped. Ops waiting on an fd always get
                // their look, so they are never starved.
                return Ok(());
            }
            let now = Instant::now();
            let end = *end_at.get_or_insert_with(|| timeout.map(|t| now + t));
            let left = end.map(|e| e.saturating_duration_since(now));
            let done = self.life.ready_len() >= min;
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
                self.pump();
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
            if self.life.ready_len() >= min || left == Some(Duration::ZERO) || woken || done {
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
        if let Err(error) = self.ensure_waker() {
            return Err(SubmitError { error, op });
        }
        let (id, key, admitted) =
            self.life
                .submit(op, token, deadline, How::Starting, &self.caps, self.name)?;
        if let Some(d) = deadline {
            self.life.watch_deadline(key, d);
        }
        if admitted == Admitted::Start {
            if let Err(error) = self.start(key) {
                // Refused before anything ran: hand the op back.
                let op = self.life.retract(key);
                return Err(SubmitError { error, op });
            }
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

impl ShimDriver {
    /// Starts the op in slot `key` (its turn came). `Err` refuses it: at
    /// submit the op goes back to the caller, later it completes with the
    /// error.
    fn start(&mut self, key: usize) -> io::Result<()> {
        let slot = self.life.slot(key);
        let op = slot.op.as_ref().expect("a starting op is in its slot");
        match op {
            Op::Nop | Op::Timeout { .. } | Op::Cancel { .. } => {
                self.start_ctl(key);
                return Ok(());
            }
            // Path ops (open, stat by path, rename, ...) name no fd: the pool.
            _ if slot.fd().is_none() => return self.start_open(key),
            _ => {}
        }
        let fd = slot.fd().unwrap_or(-1);
        let kind = match self.kind_of(fd) {
            Ok(k) => k,
            Err(e) => {
                // A bad fd is reported in the completion, with the buffer.
                self.complete(key, Err(e));
                return Ok(());
            }
        };
        let op = self.life.slot_mut(key).op_mut();
        if let Op::Close { .. } = op {
            // The table starts a close only once its fd's ops have ended.
            let r = self.close_now(fd);
            self.complete(key, r);
            return Ok(());
        }
        let file_op = matches!(
            op,
            Op::Read { .. }
                | Op::Write { .. }
                | Op::Readv { .. }
                | Op::Writev { .. }
                | Op::ReadPooled { .. }
                | Op::ReadFixed { .. }
                | Op::WriteFixed { .. }
                | Op::Fsync { .. }
                | Op::Stat { .. }
        );
        if (kind == FdKind::File && file_op) || ops::on_pool(op) {
            if self.nowait_reads {
                match ops::read_nowait(op) {
                    Nowait::Done(n) => {
                        self.complete(key, Ok(n));
                        return Ok(());
                    }
                    Nowait::Unsupported => self.nowait_reads = false,
                    Nowait::Pool => {}
                }
            }
            // Ops at the file's position run one at a time per direction,
            // in submission order: the table starts each after the one before.
            return self.send_to_pool(key);
        }
        if let Some(max) = self.caps.max_fd {
            if fd > max {
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
        let d = match &*op {
            Op::Poll { events, .. } => ops::poll_queue(*events),
            Op::Connect { .. } => 1,
            Op::Accept { .. } => 0,
            Op::Shutdown { .. } => {
                self.start_shutdown(key);
                return Ok(());
            }
            o => match o.direction() {
                Some(Direction::Read) => 0,
                Some(Direction::Write) => 1,
                None => 0,
            },
        };
        let slot = self.life.slot_mut(key);
        slot.extra = How::Waiting(d);
        // A poll changes nothing, so it may always look first.
        if d == 2 || self.fd_state(fd).queue[d].is_empty() {
            // Optimistic first try, only when nothing waits before it.
            loop {
                let slot = self.life.slot_mut(key);
                let op = slot.op.as_mut().expect("op present");
                match ops::attempt(op, &mut slot.progress) {
                    Attempt::Done(r) => {
                        self.complete(key, r);
                        return Ok(());
                    }
                    Attempt::Shot(r, buf) => self.life.shot(key, r, buf),
                    Attempt::WouldBlock => break,
                }
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
        // Closes parked until the fd's ops ended are done now: the jobs were
        // stopped above, and a stopped worker never retries a syscall, so it
        // cannot reach a reused fd number. Ops that never started go with
        // their buffers; undelivered completions close the fds they made.
        for fd in self.life.drain_unstarted() {
            let _ = self.close_now(fd);
        }
    }
}
