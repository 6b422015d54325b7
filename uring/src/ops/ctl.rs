//! Control ops: `nop`, `timeout` (an absolute `CLOCK_MONOTONIC` time),
//! `cancel` (by op or by fd, and what its result means), `poll`, `close`.

use super::{scratch, Extra, Scratch};
use crate::ring::abs_timespec;
use io_uring::{opcode, squeue, types};
use ringport_core::op::CancelTarget;
use std::os::fd::RawFd;
use std::time::Instant;

#[inline]
pub(super) fn nop() -> squeue::Entry {
    opcode::Nop::new().build()
}

pub(super) fn timeout(deadline: Instant, extra: &mut Option<Box<Extra>>) -> squeue::Entry {
    let s = scratch(extra);
    *s = Scratch::Time(abs_timespec(deadline));
    let Scratch::Time(ts) = s else { unreachable!() };
    opcode::Timeout::new(ts)
        .flags(types::TimeoutFlags::ABS)
        .build()
}

pub(super) fn cancel(target: CancelTarget) -> squeue::Entry {
    let b = match target {
        CancelTarget::Op(id) => types::CancelBuilder::user_data(id.to_u64()),
        CancelTarget::Fd(f) => types::CancelBuilder::fd(types::Fd(f)).all(),
    };
    opcode::AsyncCancel2::new(b).build()
}

pub(super) fn poll(fd: RawFd, events: i16) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), events as u16 as u32).build()
}

pub(super) fn close(fd: RawFd) -> squeue::Entry {
    opcode::Close::new(types::Fd(fd)).build()
}
