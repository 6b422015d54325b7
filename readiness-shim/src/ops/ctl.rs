//! Nop, timeout, cancel, poll, close: the driver's own bookkeeping (a
//! timer, a lookup, the close protocol) and poll's readiness check.

use super::{last, Attempt};
use crate::driver::{ShimDriver, State};
use ringport_core::driver::cancelled;
use ringport_core::op::{CancelTarget, Op};
use std::cmp::Reverse;
use std::io;
use std::os::fd::RawFd;

impl ShimDriver {
    /// Starts a nop, timeout or cancel in slot `key`.
    pub(crate) fn start_ctl(&mut self, key: usize, op: Op) {
        match op {
            Op::Nop => {
                self.slots[key].op = Some(op);
                self.complete(key, Ok(0));
            }
            Op::Timeout { deadline } => {
                let generation = self.slots[key].generation;
                self.slots[key].op = Some(op);
                self.slots[key].state = State::Timer;
                self.timers.push(Reverse((deadline, key, generation)));
            }
            Op::Cancel { target } => {
                self.slots[key].op = Some(op);
                let r = match target {
                    CancelTarget::Op(t) => match self.lookup(t) {
                        Some(k) if k != key => {
                            self.abort(k, cancelled());
                            Ok(1)
                        }
                        _ => Err(ringport_core::driver::not_in_flight()),
                    },
                    CancelTarget::Fd(f) => match self.cancel_all_on(f, Some(key)) {
                        0 => Err(ringport_core::driver::not_in_flight()),
                        n => Ok(n),
                    },
                };
                self.complete(key, r);
            }
            other => {
                self.slots[key].op = Some(other);
                self.complete(key, Err(io::Error::from_raw_os_error(libc::EINVAL)));
            }
        }
    }

    /// Starts a close of `fd` in slot `key`: every op on the fd is
    /// cancelled; the fd is closed at once, or when its running pool jobs
    /// have handed their ops back.
    pub(crate) fn start_close(&mut self, key: usize, op: Op, fd: RawFd) {
        self.slots[key].op = Some(op);
        self.cancel_all_on(fd, Some(key));
        let st = self.fd_state(fd);
        if st.pool_ops > 0 {
            st.closing = Some(key);
            self.slots[key].state = State::CloseWaiting;
        } else {
            let r = self.close_now(fd);
            self.complete(key, r);
        }
    }
}

/// Which of its fd's queues a poll waits in: 0 read, 1 write, 2 both (it
/// completes when either direction is ready).
pub(crate) fn poll_queue(events: i16) -> usize {
    match (events & libc::POLLIN != 0, events & libc::POLLOUT != 0) {
        (true, true) => 2,
        (true, false) => 0,
        _ => 1,
    }
}

/// One non-blocking look at a poll's fd.
pub(super) fn attempt(op: &mut Op) -> Attempt {
    match op {
        Op::Poll { fd, events } => {
            let mut p = libc::pollfd {
                fd: *fd,
                events: *events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            match unsafe { libc::poll(&mut p, 1, 0) } {
                n if n < 0 => Attempt::Done(Err(last())),
                0 => Attempt::WouldBlock,
                _ if p.revents & libc::POLLNVAL != 0 => {
                    Attempt::Done(Err(io::Error::from_raw_os_error(libc::EBADF)))
                }
                _ => Attempt::Done(Ok(p.revents as u16 as usize)),
            }
        }
        _ => Attempt::Done(Err(io::Error::from_raw_os_error(libc::EINVAL))),
    }
}
