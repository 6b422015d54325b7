//! Nop, timeout, cancel, poll: the driver's own bookkeeping (a timer, the
//! table's cancel) and poll's readiness check. A close is the table's
//! protocol; the driver performs it when the table starts it.

use super::{last, Attempt};
use crate::driver::{How, ShimDriver};
use ringport_core::op::Op;
use std::io;

impl ShimDriver {
    /// Starts a nop, timeout or cancel in slot `key`: a nop ends at once, a
    /// timeout waits in the table's deadline heap, a cancel is the table's.
    pub(crate) fn start_ctl(&mut self, key: usize) {
        let slot = self.life.slot_mut(key);
        match *slot.op_mut() {
            Op::Nop => self.complete(key, Ok(0)),
            Op::Timeout { deadline } => {
                slot.extra = How::Timer;
                self.life.watch_deadline(key, deadline);
            }
            Op::Cancel { target } => self.life.run_cancel_op(key, target),
            _ => self.complete(key, Err(io::Error::from_raw_os_error(libc::EINVAL))),
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
