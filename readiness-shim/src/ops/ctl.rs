//! Nop, timeout, cancel, poll, close. Nop, timeout, cancel and close are
//! the driver's own bookkeeping (see `driver.rs`, `ShimDriver::start`); the
//! one syscall here is poll's readiness check.

use super::{last, Attempt};
use ringport_core::op::Op;
use std::io;

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
