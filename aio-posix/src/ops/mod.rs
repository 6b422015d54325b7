//! The ops aio performs, each through an `aiocb`: what is common to all of
//! them here (the request record, the aiocb's status field), then one file
//! per group — [`rw`] (read and write, batched through `lio_listio`) and
//! [`fs`] (fsync, one `aio_fsync` each).

pub(crate) mod fs;
pub(crate) mod rw;

use ringport_core::op::Op;

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum AioState {
    /// Accepted; goes to glibc at the next flush.
    Batched,
    /// Waiting for room under `max_in_flight`.
    Waiting,
    /// With glibc; finishes with a signal (or a sweep).
    InFlight,
}

/// One aio request: the `aiocb` glibc holds and what the driver knows of
/// it. Boxed, so the aiocb never moves; the op itself (and its buffer,
/// whose memory does not move either) stays in the driver's in-flight table.
pub(crate) struct AioReq {
    pub(crate) cb: libc::aiocb,
    pub(crate) state: AioState,
    /// Whether `aio_cancel` was called for it (a lost notification is then
    /// not issued again).
    pub(crate) cancel_requested: bool,
    /// Whether glibc may send this request's completion as a signal: set
    /// at submit in signal-per-request mode, or once the driver armed the
    /// request before it blocked (and never cleared). Only such a request
    /// can lose its notification, and have its result overwritten with
    /// -1/`EAGAIN` by glibc's notify step.
    pub(crate) signals: bool,
    /// Whether its `sigev_notify` says `SIGEV_SIGNAL` right now.
    pub(crate) armed: bool,
    /// When it went to glibc (the driver's count): glibc performs the
    /// requests on one fd one at a time, in this order.
    pub(crate) seq: u64,
    /// Where the request sits in the driver's list of requests with glibc
    /// (meaningful while `state` is `InFlight`).
    pub(crate) pos: usize,
}

/// The status a request shows until glibc queues it: glibc sets its status
/// (`EINPROGRESS`) only when it queues a request, so after a failed
/// `lio_listio` this tells the requests it never queued from those that
/// finished (errno values are never negative).
pub(crate) const NOT_QUEUED: libc::c_int = -1;

/// glibc's `struct aiocb` up to the status fields the libc crate keeps
/// private; checked against libc's layout below.
#[repr(C)]
struct GlibcAiocbHead {
    aio_fildes: libc::c_int,
    aio_lio_opcode: libc::c_int,
    aio_reqprio: libc::c_int,
    aio_buf: *mut libc::c_void,
    aio_nbytes: libc::size_t,
    aio_sigevent: libc::sigevent,
    next_prio: *mut libc::aiocb,
    abs_prio: libc::c_int,
    policy: libc::c_int,
    error_code: libc::c_int,
    return_value: libc::ssize_t,
    aio_offset: libc::off_t,
}

const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(GlibcAiocbHead, aio_sigevent) == offset_of!(libc::aiocb, aio_sigevent));
    assert!(offset_of!(GlibcAiocbHead, aio_offset) == offset_of!(libc::aiocb, aio_offset));
    assert!(std::mem::size_of::<GlibcAiocbHead>() <= std::mem::size_of::<libc::aiocb>());
};

/// Sets the status `aio_error` reads (glibc's `__error_code`), before the
/// request goes to glibc.
pub(crate) fn set_error_code(cb: &mut libc::aiocb, code: libc::c_int) {
    let head = (cb as *mut libc::aiocb).cast::<GlibcAiocbHead>();
    // SAFETY: GlibcAiocbHead mirrors the start of glibc's aiocb (offsets
    // checked at compile time against libc's definition) and is no larger;
    // the aiocb is ours and not with glibc, so nothing else writes it.
    unsafe { std::ptr::addr_of_mut!((*head).error_code).write(code) };
}

/// Fills `cb` (all-zero) for `op`: the fields of the op's group. Ops that
/// are not aio's leave it as it is.
pub(crate) fn fill(cb: &mut libc::aiocb, op: &mut Op) {
    match op {
        Op::Read { .. } | Op::Write { .. } => rw::fill(cb, op),
        Op::Fsync { .. } => fs::fill(cb, op),
        _ => {}
    }
}

/// Turns a finished request's byte count into the op's result (a read's
/// buffer learns how much glibc wrote).
pub(crate) fn complete(op: &mut Op, n: usize) -> usize {
    if let Op::Read { .. } = op {
        rw::complete_read(op, n);
    }
    n
}
