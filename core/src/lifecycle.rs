//! The one op lifecycle every backend keeps: [`InFlight`].
//!
//! It holds what the contract is about, once for every driver:
//! - the in-flight table: generation-checked [`OpId`]s, the caller's token,
//!   the op (with its buffers) until its completion, progress, why an op was
//!   asked to end;
//! - per fd: a FIFO per direction with one op running (stream order), the
//!   count of the fd's ops, and the close protocol: a close refuses new ops on
//!   its fd at once, cancels the fd's ops, and runs after the last one ends;
//! - cancellation: a queued op completes at once; a running one is handed to
//!   the backend to stop in the kernel or worker, and completes when that is
//!   done. A stream write that ends early (cancel, deadline) reports the
//!   bytes that went out, as IOCP does;
//! - deadlines, for backends that have no native ones: one heap;
//! - what drop must do: unstarted ops go at once, parked closes are
//!   performed by the backend after its running ops end, undelivered
//!   completions that made an fd get it closed.
//!
//! A backend supplies only the mechanism: start an op, turn a kernel or
//! syscall result into an outcome, stop a running op. The table never calls
//! the backend; it leaves work in two lists (`next_start`, `next_cancel`)
//! that the backend's `pump` loop takes in turn, so nothing recurses and every
//! borrow stays short.
//!
//! It must never: free or hand back an op a backend reports as running (its
//! buffers may still be in use), start an op behind a running one of the same
//! direction on the same fd, or let state keyed by an fd number outlive that
//! fd's close.

use crate::bufpool::PooledBuf;
use crate::driver::{
    admit, cancelled, deadline_passed, drop_shot, drop_undelivered, not_in_flight, Capabilities,
    Completion, Ready, Shot, SubmitError,
};
use crate::op::{CancelTarget, Direction, Op, OpId};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// Where an op is in its lifecycle, as the table sees it.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Stage {
    /// Behind the running op of its direction on its fd; not started.
    Queued,
    /// Started: the backend (kernel, poller or worker) has it.
    Running,
    /// A close waiting for its fd's other ops to end.
    Parked,
    /// Finished: the op and its result wait in place for their owner
    /// ([`InFlight::take`]).
    Done,
}

/// Why an op was asked to end early.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Ending {
    /// The caller cancelled it (or a close of its fd did).
    Cancelled,
    /// Its per-op deadline passed.
    DeadlinePassed,
}

impl Ending {
    /// The error an op ended this way completes with.
    pub fn error(self) -> io::Error {
        match self {
            Ending::Cancelled => cancelled(),
            Ending::DeadlinePassed => deadline_passed(),
        }
    }
}

/// One op in flight, with the backend's own per-op state `X`.
pub struct Slot<X> {
    generation: u32,
    token: u64,
    /// The op; `None` only while a worker thread holds it (the backend puts
    /// it back before the op finishes).
    pub op: Option<Op>,
    /// The op's fd, or [`NO_FD`] (kept as a plain number so the slot stays
    /// small; [`Slot::fd`] gives the `Option`).
    fd: RawFd,
    dir: Option<Direction>,
    is_close: bool,
    stage: Stage,
    has_deadline: bool,
    ending: Option<Ending>,
    /// The result, once finished.
    outcome: Option<io::Result<usize>>,
    /// Results of a multishot op not yet taken. Boxed (8 bytes, not the 32
    /// of a `VecDeque`): every slot carries it, few ops use it.
    #[allow(clippy::box_collection)]
    shots: Option<Box<VecDeque<Shot>>>,
    /// Bytes of a stream write already out (a write resubmitted until all
    /// are), or any other count the backend keeps between attempts.
    pub progress: usize,
    /// The backend's per-op state.
    pub extra: X,
}

impl<X> Slot<X> {
    /// The op's id.
    pub fn generation(&self) -> u32 {
        self.generation
    }
    /// The op's fd, if it has one.
    pub fn fd(&self) -> Option<RawFd> {
        (self.fd != NO_FD).then_some(self.fd)
    }
    /// The op's stream direction, if it is ordered with others on its fd.
    pub fn direction(&self) -> Option<Direction> {
        self.dir
    }
    /// Where the op is.
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// Why it was asked to end early, if it was.
    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }
    /// Whether it was submitted with a deadline.
    pub fn has_deadline(&self) -> bool {
        self.has_deadline
    }
    /// The op; panics if a worker holds it (a backend bug).
    pub fn op_mut(&mut self) -> &mut Op {
        self.op.as_mut().expect("the op is with a worker")
    }
}

/// `Slot::fd` of an op without an fd (validated fds are never negative).
const NO_FD: RawFd = -1;

#[derive(Default)]
struct FdState {
    /// Ops on this fd not yet completed (a pending close not counted),
    /// those that hold it as their second fd ([`Op::pinned_fd`]) included.
    ops: u32,
    running: [bool; 2],
    queue: [VecDeque<usize>; 2],
    closing: Option<usize>,
    /// The backend's marks on the fd ([`InFlight::mark_fd`]).
    marks: u8,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

/// What [`InFlight::submit`] made of an accepted op.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Admitted {
    /// Start it now.
    Start,
    /// Queued behind its fd's running op of the same direction; it comes
    /// back from `next_start` when its turn comes.
    Queued,
    /// A close parked behind its fd's ops (which were asked to end); it
    /// comes back from `next_start` when the last one has.
    Parked,
}

/// The in-flight table and the rules of the op lifecycle (see the module
/// doc). `X` is the backend's per-op state.
pub struct InFlight<X> {
    slots: Slab<Slot<X>>,
    next_generation: u32,
    fds: Vec<FdState>,
    /// Finished ops not yet announced, in the order they finished.
    ready: Vec<Ready>,
    /// How many slots hold a finished op.
    done: usize,
    starts: Vec<(usize, u32)>,
    cancels: Vec<(usize, u32)>,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl<X> Default for InFlight<X> {
    fn default() -> Self {
        InFlight::with_capacity(64)
    }
}

impl<X> InFlight<X> {
    /// An empty table with room for `n` ops.
    pub fn with_capacity(n: usize) -> InFlight<X> {
        InFlight {
            slots: Slab::with_capacity(n),
            next_generation: 1,
            fds: Vec::new(),
            ready: Vec::with_capacity(n.min(256)),
            done: 0,
            starts: Vec::new(),
            cancels: Vec::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// The generation the next op will get (never 0).
    pub fn next_generation(&self) -> u32 {
        self.next_generation
    }

    /// Makes the next op's generation `g` (0 becomes 1): for a backend whose
    /// ids must not repeat those of a driver before it (aio's signals carry
    /// them).
    pub fn set_next_generation(&mut self, g: u32) {
        self.next_generation = g.max(1);
    }

    /// Whether a close of `fd` is pending (new ops on it are refused).
    pub fn is_closing(&self, fd: RawFd) -> bool {
        self.fds
            .get(fd as usize)
            .is_some_and(|s| s.closing.is_some())
    }

    /// Sets the backend's mark `bit` on `fd` (for example "made
    /// non-blocking") and says whether it was set already. The marks last
    /// until a close of `fd` through this table completes, or until an op
    /// of this table (an accept, an open) gets the same number from the
    /// kernel, so none outlives the file it was made for when fds are
    /// closed through the driver. An fd closed behind the driver's back and
    /// its number reused by a file made elsewhere (not by one of this
    /// table's ops) keeps the old marks. `fd` must be one an admitted op
    /// names.
    pub fn mark_fd(&mut self, fd: RawFd, bit: u8) -> bool {
        let st = self.fd_state(fd);
        let was = st.marks & bit != 0;
        st.marks |= bit;
        was
    }

    /// The kernel just handed out `fd` (an accept, an open): whatever the
    /// table marked on that number belonged to a file closed without it.
    fn fresh_fd(&mut self, fd: RawFd) {
        if let Some(st) = self.fds.get_mut(fd as usize) {
            st.marks = 0;
        }
    }

    fn fd_state(&mut self, fd: RawFd) -> &mut FdState {
        // Only fds of ops that passed `Op::validate` get here: never
        // negative, never beyond the hard open-file limit.
        debug_assert!(fd >= 0, "fd_state of an unvalidated fd {fd}");
        let i = fd as usize;
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdState::default);
        }
        &mut self.fds[i]
    }

    /// Checks `op` ([`admit`]: its input, the backend's support, no close
    /// pending on its fd), takes it into the table and says what to do with
    /// it. A close of an fd with ops marks the fd closing, asks each of its
    /// ops to end and parks. `deadline` is only recorded (see
    /// [`InFlight::watch_deadline`] for backends without native deadlines).
    #[inline]
    pub fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
        extra: X,
        caps: &Capabilities,
        backend: &str,
    ) -> Result<(OpId, usize, Admitted), SubmitError> {
        let fds = &self.fds;
        let closing = |fd: RawFd| fds.get(fd as usize).is_some_and(|s| s.closing.is_some());
        if let Err(error) = admit(&op, caps, backend, closing) {
            return Err(SubmitError { error, op });
        }
        let fd = op.fd();
        let pinned = op.pinned_fd();
        let dir = if fd.is_some() { op.direction() } else { None };
        let is_close = matches!(op, Op::Close { .. });
        let generation = self.next_generation;
        // Generation 0 is never issued (a backend may use it as "empty").
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let key = self.slots.insert(Slot {
            generation,
            token,
            op: Some(op),
            fd: fd.unwrap_or(NO_FD),
            dir,
            is_close,
            stage: Stage::Running,
            has_deadline: deadline.is_some(),
            ending: None,
            outcome: None,
            shots: None,
            progress: 0,
            extra,
        });
        let id = OpId::new(key as u32, generation);
        if let Some(p) = pinned {
            // A close of the second fd waits for this op as for its own.
            self.fd_state(p).ops += 1;
        }
        let Some(fd) = fd else {
            return Ok((id, key, Admitted::Start));
        };
        let st = self.fd_state(fd);
        if is_close {
            st.closing = Some(key);
            if st.ops == 0 {
                return Ok((id, key, Admitted::Start));
            }
            self.slots[key].stage = Stage::Parked;
            self.cancel_fd(fd);
            // Queued ops ended at once; if nothing was running the close
            // may already be due (it is then in the start list).
            return Ok((id, key, Admitted::Parked));
        }
        st.ops += 1;
        if let Some(d) = dir {
            let i = dir_index(d);
            if st.running[i] {
                st.queue[i].push_back(key);
                self.slots[key].stage = Stage::Queued;
                return Ok((id, key, Admitted::Queued));
            }
            st.running[i] = true;
        }
        Ok((id, key, Admitted::Start))
    }

    /// Takes back an op just admitted with [`Admitted::Start`] that the
    /// backend refused before it ran (it is then as if never submitted).
    pub fn retract(&mut self, key: usize) -> Op {
        let slot = self.slots.remove(key);
        if let Some(p) = slot.op.as_ref().and_then(Op::pinned_fd) {
            let st = self.fd_state(p);
            st.ops = st.ops.saturating_sub(1);
        }
        if let Some(fd) = slot.fd() {
            let st = self.fd_state(fd);
            if slot.is_close {
                st.closing = None;
            } else {
                st.ops = st.ops.saturating_sub(1);
                if let Some(d) = slot.dir {
                    st.running[dir_index(d)] = false;
                }
            }
        }
        slot.op.expect("a refused op is in its slot")
    }

    /// The slot of an op not yet finished, by id.
    #[inline]
    pub fn lookup(&self, id: OpId) -> Option<usize> {
        match self.slots.get(id.slot()) {
            Some(s) if s.generation == id.generation() && s.stage != Stage::Done => Some(id.slot()),
            _ => None,
        }
    }

    /// Takes a finished op back, with its result: the one move out of the
    /// table. `None` if it has not finished (or was taken already).
    #[inline]
    pub fn take(&mut self, id: OpId) -> Option<Completion> {
        match self.slots.get(id.slot()) {
            Some(s) if s.generation == id.generation() && s.stage == Stage::Done => {}
            _ => return None,
        }
        let mut slot = self.slots.remove(id.slot());
        self.done -= 1;
        let op = slot
            .op
            .take()
            .expect("a finished op is back from its worker");
        // Results nobody took go now (their fds are closed).
        if let Some(q) = slot.shots.take() {
            for s in *q {
                drop_shot(&op, s);
            }
        }
        Some(Completion {
            id,
            token: slot.token,
            result: slot.outcome.expect("a finished op has its result"),
            op,
        })
    }

    /// Records one result of multishot op `key` (which goes on running) and
    /// announces it.
    pub fn shot(&mut self, key: usize, result: io::Result<usize>, buf: Option<PooledBuf>) {
        let made = self.slots[key]
            .op
            .as_ref()
            .and_then(|op| op.shot_made_fd(&result));
        if let Some(fd) = made {
            self.fresh_fd(fd);
        }
        let slot = &mut self.slots[key];
        slot.shots
            .get_or_insert_with(Default::default)
            .push_back(Shot { result, buf });
        let id = OpId::new(key as u32, slot.generation);
        self.ready.push(Ready {
            id,
            token: slot.token,
        });
    }

    /// The next result of multishot op `id` not yet taken.
    pub fn take_shot(&mut self, id: OpId) -> Option<Shot> {
        match self.slots.get_mut(id.slot()) {
            Some(s) if s.generation == id.generation() => s.shots.as_mut()?.pop_front(),
            _ => None,
        }
    }

    /// Whether `ready` still names a finished op nobody took.
    fn is_waiting(&self, r: &Ready) -> bool {
        matches!(self.slots.get(r.id.slot()),
            Some(s) if s.generation == r.id.generation()
                && (s.stage == Stage::Done || s.shots.as_ref().is_some_and(|q| !q.is_empty())))
    }

    /// The id of the op in slot `key`.
    pub fn id_of(&self, key: usize) -> OpId {
        OpId::new(key as u32, self.slots[key].generation)
    }

    /// Whether `key` holds the op of generation `generation`.
    pub fn is_live(&self, key: usize, generation: u32) -> bool {
        matches!(self.slots.get(key), Some(s) if s.generation == generation)
    }

    /// The slot `key` (which must be live).
    #[inline]
    pub fn slot(&self, key: usize) -> &Slot<X> {
        &self.slots[key]
    }

    /// The slot `key` (which must be live), to change.
    #[inline]
    pub fn slot_mut(&mut self, key: usize) -> &mut Slot<X> {
        &mut self.slots[key]
    }

    /// Every live slot.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Slot<X>)> {
        self.slots.iter()
    }

    /// Every live slot, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Slot<X>)> {
        self.slots.iter_mut()
    }

    /// Ops in the table: in flight, or finished and not yet taken.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is in flight and nothing waits to be handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ops not yet finished.
    pub fn live(&self) -> usize {
        self.slots.len() - self.done
    }

    /// Finished ops not yet announced.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether a start or a cancel waits for the backend's pump.
    #[inline]
    pub fn has_work(&self) -> bool {
        !self.starts.is_empty() || !self.cancels.is_empty()
    }

    /// The next op due to start (its turn on its fd came, or a parked
    /// close's fd has no more ops). The backend starts it and later calls
    /// [`InFlight::finish`].
    #[inline]
    pub fn next_start(&mut self) -> Option<usize> {
        while let Some((k, g)) = self.starts.pop() {
            if self.is_live(k, g) && self.slots[k].stage == Stage::Running {
                return Some(k);
            }
        }
        None
    }

    /// The next running op asked to end early ([`Slot::ending`] says why):
    /// the backend stops it in the kernel or worker, and it finishes when
    /// that is done (or it finishes at once if the backend can end it
    /// itself).
    #[inline]
    pub fn next_cancel(&mut self) -> Option<usize> {
        while let Some((k, g)) = self.cancels.pop() {
            if self.is_live(k, g) && self.slots[k].stage == Stage::Running {
                return Some(k);
            }
        }
        None
    }

    /// Ends slot `key` with the backend's `result` and queues what may start
    /// now on its fd. The lifecycle's rules are applied here: an op asked to
    /// end that reports `ECANCELED` gets the error of why it was asked (a
    /// deadline is `TimedOut`); a stream write that ended early with bytes
    /// out completes with their count.
    #[inline]
    pub fn finish(&mut self, key: usize, result: io::Result<usize>) {
        let slot = &mut self.slots[key];
        debug_assert!(slot.stage != Stage::Done, "an op finished twice");
        debug_assert!(slot.op.is_some(), "a finished op is back from its worker");
        let id = OpId::new(key as u32, slot.generation);
        let result = match result {
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                let why = match slot.ending {
                    Some(w) => w,
                    // A cancel nobody asked for is the kernel's own deadline.
                    None if slot.has_deadline => Ending::DeadlinePassed,
                    None => Ending::Cancelled,
                };
                early_end(slot, why)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && slot.ending.is_some() => {
                early_end(slot, Ending::DeadlinePassed)
            }
            r => r,
        };
        // The fds besides the op's own that its end concerns: one it made,
        // one it held (a send_file's file). Both are rare; one look.
        let (made, pinned) = match &slot.op {
            Some(op) => (op.made_fd(&result), op.pinned_fd()),
            None => (None, None),
        };
        let was = slot.stage;
        slot.stage = Stage::Done;
        slot.outcome = Some(result);
        let (fd, dir, is_close) = (slot.fd(), slot.dir, slot.is_close);
        self.ready.push(Ready {
            id,
            token: slot.token,
        });
        self.done += 1;
        if let Some(fd) = made {
            self.fresh_fd(fd);
        }
        if let Some(p) = pinned {
            let st = self.fd_state(p);
            st.ops = st.ops.saturating_sub(1);
            self.close_if_due(p);
        }
        let Some(fd) = fd else { return };
        if is_close {
            // The fd's number may now name another file: forget it all.
            if let Some(st) = self.fds.get_mut(fd as usize) {
                *st = FdState::default();
            }
            return;
        }
        let st = self.fd_state(fd);
        st.ops = st.ops.saturating_sub(1);
        if let Some(d) = dir {
            let i = dir_index(d);
            if was == Stage::Running {
                match st.queue[i].pop_front() {
                    Some(next) => {
                        self.slots[next].stage = Stage::Running;
                        let g = self.slots[next].generation;
                        self.starts.push((next, g));
                    }
                    None => st.running[i] = false,
                }
            } else {
                st.queue[i].retain(|&k| k != key);
            }
        }
        self.close_if_due(fd);
    }

    /// Starts `fd`'s parked close once no op holds the fd any more.
    fn close_if_due(&mut self, fd: RawFd) {
        let st = self.fd_state(fd);
        if st.ops == 0 {
            if let Some(c) = st.closing {
                if self.slots.get(c).is_some_and(|s| s.stage == Stage::Parked) {
                    self.slots[c].stage = Stage::Running;
                    let g = self.slots[c].generation;
                    self.starts.push((c, g));
                }
            }
        }
    }

    /// Asks slot `key` to end early. A queued op (or a parked close's
    /// neighbour that never started) completes now; a running one is put in
    /// the cancel list for the backend. A parked close is not cancelled.
    pub fn cancel(&mut self, key: usize, why: Ending) {
        let slot = &mut self.slots[key];
        match slot.stage {
            Stage::Queued => {
                slot.ending = Some(why);
                self.finish(key, Err(why.error()));
            }
            Stage::Running => {
                if slot.ending.is_none() {
                    slot.ending = Some(why);
                }
                let g = slot.generation;
                self.cancels.push((key, g));
            }
            Stage::Parked | Stage::Done => {}
        }
    }

    /// `Driver::cancel` for a table-based driver: asks op `id` to end
    /// (`NotFound` if it is not in flight); the caller then pumps.
    pub fn cancel_id(&mut self, id: OpId) -> io::Result<()> {
        let key = self.lookup(id).ok_or_else(not_in_flight)?;
        self.cancel(key, Ending::Cancelled);
        Ok(())
    }

    /// Asks every op on `fd` (not a pending close), and every op holding it
    /// as its second fd, to end; returns how many.
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        if fd < 0 {
            // No op has a negative fd (ops without one are kept as NO_FD).
            return 0;
        }
        let on_fd = |s: &Slot<X>| s.fd == fd || s.op.as_ref().and_then(Op::pinned_fd) == Some(fd);
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| on_fd(s) && !s.is_close && s.stage != Stage::Done)
            .map(|(k, _)| k)
            .collect();
        for &k in &keys {
            if self.slots.contains(k) {
                self.cancel(k, Ending::Cancelled);
            }
        }
        keys.len()
    }

    /// Performs `Op::Cancel` in slot `key`: asks its target(s) to end and
    /// completes it with how many were asked (`NotFound` for none).
    pub fn run_cancel_op(&mut self, key: usize, target: CancelTarget) {
        let r = match target {
            CancelTarget::Op(t) => match self.lookup(t) {
                Some(k) if k != key && self.slots[k].stage != Stage::Parked => {
                    self.cancel(k, Ending::Cancelled);
                    Ok(1)
                }
                _ => Err(not_in_flight()),
            },
            CancelTarget::Fd(fd) => match self.cancel_fd(fd) {
                0 => Err(not_in_flight()),
                n => Ok(n),
            },
        };
        self.finish(key, r);
    }

    /// Watches slot `key`'s deadline in the table's heap (for backends that
    /// have no native per-op deadline).
    pub fn watch_deadline(&mut self, key: usize, at: Instant) {
        let g = self.slots[key].generation;
        self.deadlines.push(Reverse((at, key, g)));
    }

    /// Asks every op whose watched deadline has passed by `now` to end, and
    /// returns the next deadline still ahead. Returns the expired ops' keys
    /// through `expired` (a timer op, say, may be ended by the backend with
    /// its own result instead).
    pub fn expire(&mut self, now: Instant, expired: &mut Vec<usize>) -> Option<Instant> {
        while let Some(&Reverse((at, key, g))) = self.deadlines.peek() {
            if at > now {
                return Some(at);
            }
            self.deadlines.pop();
            if self.is_live(key, g) && self.slots[key].stage != Stage::Done {
                expired.push(key);
            }
        }
        None
    }

    /// The earliest watched deadline, if any (stale ones included: waking
    /// early is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Announces the finished ops to `out` (their ops stay in place until
    /// taken); returns how many. Ops taken before they were announced are
    /// left out.
    #[inline]
    pub fn deliver_ready(&mut self, out: &mut Vec<Ready>) -> usize {
        let n = out.len();
        if self.done == self.ready.len() && out.is_empty() {
            // Nothing was taken early (the usual case): hand the list over.
            std::mem::swap(out, &mut self.ready);
        } else {
            let mut ready = std::mem::take(&mut self.ready);
            out.extend(ready.drain(..).filter(|r| self.is_waiting(r)));
            self.ready = ready;
        }
        out.len() - n
    }

    /// Takes every finished op out, as completions, into `out`; returns how
    /// many.
    pub fn deliver(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = out.len();
        out.reserve(self.ready.len());
        for i in 0..self.ready.len() {
            let id = self.ready[i].id;
            if let Some(c) = self.take(id) {
                out.push(c);
            }
        }
        self.ready.clear();
        out.len() - n
    }

    /// For a driver's drop: removes every op that never started (queued ones,
    /// dropped with their buffers) and every parked close (the fds are
    /// returned: the backend closes them once its running ops have ended),
    /// drops the undelivered completions (closing fds they made) and forgets
    /// the per-fd state. What is left is running in the backend.
    pub fn drain_unstarted(&mut self) -> Vec<RawFd> {
        let mut parked = Vec::new();
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.stage, Stage::Queued | Stage::Parked))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            let s = self.slots.remove(k);
            if s.stage == Stage::Parked {
                parked.extend(s.fd());
            }
        }
        // A close that was due but not started yet is parked too.
        while let Some(k) = self.next_start() {
            let s = self.slots.remove(k);
            if s.is_close {
                parked.extend(s.fd());
            }
        }
        self.cancels.clear();
        self.fds.clear();
        self.drop_ready();
        parked
    }

    /// Drops the finished ops nobody will take (closing fds they made).
    pub fn drop_ready(&mut self) {
        self.ready.clear();
        let keys: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.stage == Stage::Done)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            let id = self.id_of(k);
            if let Some(c) = self.take(id) {
                drop_undelivered(c);
            }
        }
    }

    /// Removes a running op without a completion: only for a driver's drop,
    /// once the kernel or worker is done with it.
    pub fn forget(&mut self, key: usize) -> Slot<X> {
        self.slots.remove(key)
    }

    /// Leaks every op still in the table: for a driver's drop when the
    /// kernel or a worker may still touch their buffers.
    pub fn leak_all(&mut self) {
        for s in self.slots.drain() {
            std::mem::forget(s);
        }
    }
}

/// The result of an op that ended early for `why`: a stream write with bytes
/// out reports them (the stream holds them); anything else the error.
fn early_end<X>(slot: &Slot<X>, why: Ending) -> io::Result<usize> {
    if slot.progress > 0 && slot.dir == Some(Direction::Write) {
        Ok(slot.progress)
    } else {
        Err(why.error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Support;
    use crate::op::Offset;
    use crate::AnyBuf;

    fn caps() -> Capabilities {
        Capabilities::all(Support::Native)
    }

    fn send(fd: RawFd) -> Op {
        Op::Write {
            fd,
            buf: AnyBuf::new(vec![1u8; 4]),
            offset: Offset::Current,
        }
    }

    #[test]
    fn one_op_runs_per_direction_and_the_next_starts_after_it() {
        let mut t: InFlight<()> = InFlight::default();
        let (_, a, s) = t.submit(send(3), 1, None, (), &caps(), "t").unwrap();
        assert_eq!(s, Admitted::Start);
        let (_, b, s) = t.submit(send(3), 2, None, (), &caps(), "t").unwrap();
        assert_eq!(s, Admitted::Queued);
        assert_eq!(t.next_start(), None);
        t.finish(a, Ok(4));
        assert_eq!(t.next_start(), Some(b));
    }

    #[test]
    fn cancelling_a_queued_op_leaves_the_running_one_in_place() {
        let mut t: InFlight<()> = InFlight::default();
        let (_, a, _) = t.submit(send(3), 1, None, (), &caps(), "t").unwrap();
        let (_, b, _) = t.submit(send(3), 2, None, (), &caps(), "t").unwrap();
        let (_, c, _) = t.submit(send(3), 3, None, (), &caps(), "t").unwrap();
        t.cancel(b, Ending::Cancelled);
        assert_eq!(t.ready_len(), 1);
        assert_eq!(t.next_start(), None, "a is still running");
        t.finish(a, Ok(4));
        assert_eq!(t.next_start(), Some(c));
    }

    #[test]
    fn a_close_parks_refuses_new_ops_and_starts_after_the_last_op() {
        let mut t: InFlight<()> = InFlight::default();
        let (_, a, _) = t.submit(send(3), 1, None, (), &caps(), "t").unwrap();
        let (_, c, s) = t
            .submit(Op::Close { fd: 3 }, 2, None, (), &caps(), "t")
            .unwrap();
        assert_eq!(s, Admitted::Parked);
        assert_eq!(t.next_cancel(), Some(a));
        assert!(t.submit(send(3), 3, None, (), &caps(), "t").is_err());
        t.slot_mut(a).progress = 2;
        t.finish(a, Err(cancelled()));
        assert_eq!(t.next_start(), Some(c));
        let mut out = Vec::new();
        t.deliver(&mut out);
        assert_eq!(out[0].result.as_ref().unwrap(), &2, "bytes out reported");
        t.finish(c, Ok(0));
        assert!(!t.is_closing(3));
    }

    #[test]
    fn an_unasked_kernel_cancel_of_an_op_with_a_deadline_is_timed_out() {
        let mut t: InFlight<()> = InFlight::default();
        let (_, a, _) = t
            .submit(Op::Nop, 1, Some(Instant::now()), (), &caps(), "t")
            .unwrap();
        t.finish(a, Err(cancelled()));
        let mut out = Vec::new();
        t.deliver(&mut out);
        assert_eq!(
            out[0].result.as_ref().unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }
}
