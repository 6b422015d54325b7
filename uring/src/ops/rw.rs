//! Reads and writes on an fd: `read`, `write`, `readv`, `writev`, at an
//! offset or at the current position. A write at the current position is a
//! stream write: resubmitted from where it stopped until every byte is out.

use super::{clamp, scratch, stream_write_step, Extra, Scratch, Step};
use io_uring::{opcode, squeue, types};
use ringport_core::buf::{AnyBuf, AnyBufMut};
use ringport_core::bufpool::{BufPool, PooledBuf};
use ringport_core::fixedbuf::FixedBuf;
use ringport_core::op::Offset;
use std::os::fd::RawFd;

/// Builds an SQE on `fd`, or on its registered file-table slot when it has
/// one (`IOSQE_FIXED_FILE`): `$make` is called with the target.
macro_rules! on_file {
    ($fd:expr, $slot:expr, |$t:ident| $make:expr) => {
        match $slot {
            Some(i) => {
                let $t = types::Fixed(i);
                $make
            }
            None => {
                let $t = types::Fd($fd);
                $make
            }
        }
    };
}

#[inline]
pub(super) fn read(
    fd: RawFd,
    file: Option<u32>,
    offset: Offset,
    buf: &mut AnyBufMut,
) -> squeue::Entry {
    let (ptr, len) = (buf.as_mut_ptr(), clamp(buf.capacity()));
    on_file!(fd, file, |t| opcode::Read::new(t, ptr, len)
        .offset(offset.to_raw())
        .build())
}

/// A read whose buffer the kernel picks from group `bgid` when data is there.
pub(super) fn read_pooled(fd: RawFd, offset: Offset, pool: &BufPool, bgid: u16) -> squeue::Entry {
    opcode::Read::new(types::Fd(fd), std::ptr::null_mut(), clamp(pool.buf_size()))
        .offset(offset.to_raw())
        .buf_group(bgid)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
}

/// `progress` bytes of the write are already done.
#[inline]
pub(super) fn write(
    fd: RawFd,
    file: Option<u32>,
    offset: Offset,
    buf: &AnyBuf,
    progress: usize,
) -> squeue::Entry {
    let done = progress.min(buf.len());
    // SAFETY: done <= len, so the pointer stays inside the buffer.
    let ptr = unsafe { buf.as_ptr().add(done) };
    let (len, at) = (clamp(buf.len() - done), offset.advanced(done).to_raw());
    on_file!(fd, file, |t| opcode::Write::new(t, ptr, len)
        .offset(at)
        .build())
}

pub(super) fn readv(
    fd: RawFd,
    offset: Offset,
    bufs: &mut [AnyBufMut],
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.capacity(),
        })
        .collect();
    let s = scratch(extra);
    *s = Scratch::Iovecs(iov);
    let Scratch::Iovecs(iov) = s else {
        unreachable!()
    };
    opcode::Readv::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32)
        .offset(offset.to_raw())
        .build()
}

pub(super) fn writev(
    fd: RawFd,
    offset: Offset,
    bufs: &[AnyBuf],
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let s = scratch(extra);
    *s = Scratch::Iovecs(iov);
    let Scratch::Iovecs(iov) = s else {
        unreachable!()
    };
    opcode::Writev::new(types::Fd(fd), iov.as_ptr(), iov.len() as u32)
        .offset(offset.to_raw())
        .build()
}

/// A read of `n` bytes: they are initialised now.
#[inline]
pub(super) fn read_done(buf: &mut AnyBufMut, n: usize) {
    // SAFETY: the kernel reported n bytes written at the buffer's start.
    unsafe { buf.set_init(n) }
}

/// A pooled read of `n` bytes: the buffer the kernel picked (named in the
/// CQE's flags) becomes the op's output; at end of stream it goes straight
/// back to the pool.
pub(super) fn pooled_done(
    pool: &BufPool,
    got: &mut Option<PooledBuf>,
    n: usize,
    cqe_flags: u32,
) -> Step {
    if let Some(bid) = io_uring::cqueue::buffer_select(cqe_flags) {
        // SAFETY: the kernel handed buffer `bid` of this pool's group to
        // this read and wrote `n` bytes into it; it is ours until dropped.
        let b = unsafe { pool.filled(bid, n.min(pool.buf_size())) };
        if n > 0 {
            *got = Some(b);
        }
    }
    Step::Done(n)
}

/// A read into a registered buffer: READ_FIXED naming table entry `entry`,
/// or a plain read of the same memory when the ring has no entry for it.
pub(super) fn read_fixed(
    fd: RawFd,
    file: Option<u32>,
    offset: Offset,
    buf: &mut FixedBuf,
    entry: Option<u16>,
) -> squeue::Entry {
    let (ptr, len, at) = (buf.as_mut_ptr(), clamp(buf.capacity()), offset.to_raw());
    match entry {
        Some(i) => on_file!(fd, file, |t| opcode::ReadFixed::new(t, ptr, len, i)
            .offset(at)
            .build()),
        None => on_file!(fd, file, |t| opcode::Read::new(t, ptr, len)
            .offset(at)
            .build()),
    }
}

/// A write of a registered buffer's bytes, `progress` of them already done:
/// WRITE_FIXED naming table entry `entry`, or a plain write.
pub(super) fn write_fixed(
    fd: RawFd,
    file: Option<u32>,
    offset: Offset,
    buf: &FixedBuf,
    progress: usize,
    entry: Option<u16>,
) -> squeue::Entry {
    let done = progress.min(buf.len());
    // SAFETY: done <= len, so the pointer stays inside the buffer.
    let ptr = unsafe { buf.as_ptr().add(done) };
    let (len, at) = (clamp(buf.len() - done), offset.advanced(done).to_raw());
    match entry {
        Some(i) => on_file!(fd, file, |t| opcode::WriteFixed::new(t, ptr, len, i)
            .offset(at)
            .build()),
        None => on_file!(fd, file, |t| opcode::Write::new(t, ptr, len)
            .offset(at)
            .build()),
    }
}

/// A fixed write of `n` more bytes: the same rule as [`write_done`].
pub(super) fn write_fixed_done(
    offset: Offset,
    buf: &FixedBuf,
    progress: &mut usize,
    n: usize,
    cancel_requested: bool,
) -> Step {
    if offset == Offset::Current {
        stream_write_step(buf.len(), progress, n, cancel_requested)
    } else {
        Step::Done(n)
    }
}

/// A readv of `n` bytes fills the buffers in order.
pub(super) fn readv_done(bufs: &mut [AnyBufMut], n: usize) {
    let mut left = n;
    for b in bufs {
        let k = left.min(b.capacity());
        // SAFETY: readv fills the buffers in order; k bytes of this one.
        unsafe { b.set_init(k) };
        left -= k;
    }
}

/// A write of `n` more bytes: at the current position (a stream write) it
/// goes again until every byte is out; at an offset it is done.
#[inline]
pub(super) fn write_done(
    offset: Offset,
    buf: &AnyBuf,
    progress: &mut usize,
    n: usize,
    cancel_requested: bool,
) -> Step {
    if offset == Offset::Current {
        stream_write_step(buf.len(), progress, n, cancel_requested)
    } else {
        Step::Done(n)
    }
}
