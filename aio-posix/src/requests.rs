//! The mechanism of the aio driver: requests handed to glibc (batched into
//! `lio_listio`, fsyncs one by one, held back over the in-flight limit),
//! found finished by polling their status or by a signal, collected exactly
//! once, swept when a notification may have been lost, and armed to signal
//! only while a wait blocks. The lifecycle (what runs, what is cancelled,
//! when a close may start) is the table's, in `driver.rs`.
//!
//! Never frees or reuses an `aiocb` before glibc is done with it: a record
//! seen finished waits in the quarantine until glibc's lock was taken.

use super::{req_of, AioDriver, Req, MAX_ARMED_FDS, POLL_TOKEN, SPARES, SWEEP_EVERY, SWEEP_SOON};
use crate::notify;
use crate::ops::{self, set_error_code, AioReq, AioState, NOT_QUEUED};
use ringport_core::op::Op;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl AioDriver {
    /// Fills the aiocb of request `key` for its op. The signal's number and
    /// value are always set; whether glibc sends it (`sigev_notify`) depends
    /// on the mode, and a silent request can be switched over later (see
    /// `arm_signals`).
    pub(super) fn prepare(&mut self, key: usize) {
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
    pub(super) fn flush(&mut self) {
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
    pub(super) fn mark_out(&mut self, key: usize) {
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
    pub(super) fn mark_back(&mut self, key: usize) {
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
    pub(super) fn requeue_unqueued(&mut self, keys: &[usize], error: io::Error) {
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
    pub(super) unsafe fn lio_listio(&mut self, list: &[*mut libc::aiocb]) -> libc::c_int {
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
    pub(super) fn collect_aio(&mut self, key: usize) {
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
    pub(super) fn sweep(&mut self) {
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
    pub(super) fn reissue(&mut self, key: usize) {
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
    pub(super) fn drain_notifications(&mut self) {
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
    pub(super) fn poll_out(&mut self) -> usize {
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
    pub(super) fn glibc_barrier(&mut self) {
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
    pub(super) fn release(&mut self, mut held: Vec<Box<AioReq>>) {
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
    pub(super) fn arm_signals(&mut self) -> bool {
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
    pub(super) fn arm(&mut self, key: usize, on: bool) -> bool {
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
    pub(super) fn set_armed(&mut self, on: bool) {
        for i in 0..self.out.len() {
            let k = self.out[i];
            self.arm(k, on);
        }
    }

    pub(super) fn arm_poll(&mut self) -> io::Result<()> {
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
    pub(super) fn spin_for(&mut self, left: Option<Duration>) -> io::Result<bool> {
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
}
