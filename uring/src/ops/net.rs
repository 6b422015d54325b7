//! Socket ops: `recv`, `send`, `recvfrom` and `sendto` (as `recvmsg` and
//! `sendmsg`), `accept`, `connect`, `shutdown`. A send is a stream write:
//! resubmitted from where it stopped until every byte is out. Sends always
//! carry `MSG_NOSIGNAL` (a dead peer is `EPIPE`, never `SIGPIPE`).

use super::{clamp, scratch, stream_write_step, Extra, Scratch, Step};
use io_uring::{opcode, squeue, types};
use ringport_core::buf::{AnyBuf, AnyBufMut};
use ringport_core::bufpool::{BufPool, PooledBuf};
use ringport_core::op::{Op, ShutdownHow, SockAddr};
use std::io;
use std::os::fd::RawFd;

#[inline]
pub(super) fn recv(fd: RawFd, buf: &mut AnyBufMut, flags: i32) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), clamp(buf.capacity()))
        .flags(flags)
        .build()
}

/// A recv whose buffer the kernel picks from group `bgid` when data comes.
pub(super) fn recv_pooled(fd: RawFd, pool: &BufPool, flags: i32, bgid: u16) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), clamp(pool.buf_size()))
        .flags(flags)
        .buf_group(bgid)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
}

/// `progress` bytes of the send are already done.
#[inline]
pub(super) fn send(fd: RawFd, buf: &AnyBuf, flags: i32, progress: usize) -> squeue::Entry {
    let done = progress.min(buf.len());
    // SAFETY: done <= len, so the pointer stays inside the buffer.
    let ptr = unsafe { buf.as_ptr().add(done) };
    opcode::Send::new(types::Fd(fd), ptr, clamp(buf.len() - done))
        .flags(flags | libc::MSG_NOSIGNAL)
        .build()
}

pub(super) fn recvfrom(
    fd: RawFd,
    buf: &mut AnyBufMut,
    addr: &mut SockAddr,
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    addr.reset_len();
    let s = scratch(extra);
    // SAFETY: msghdr and iovec are plain data; zero is a valid start.
    *s = unsafe { Scratch::Msg(std::mem::zeroed(), std::mem::zeroed()) };
    let Scratch::Msg(hdr, iov) = s else {
        unreachable!()
    };
    *iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.capacity(),
    };
    hdr.msg_name = addr.as_mut_ptr().cast();
    hdr.msg_namelen = addr.len();
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    opcode::RecvMsg::new(types::Fd(fd), hdr).build()
}

pub(super) fn sendto(
    fd: RawFd,
    buf: &AnyBuf,
    addr: &SockAddr,
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let s = scratch(extra);
    // SAFETY: msghdr and iovec are plain data; zero is a valid start.
    *s = unsafe { Scratch::Msg(std::mem::zeroed(), std::mem::zeroed()) };
    let Scratch::Msg(hdr, iov) = s else {
        unreachable!()
    };
    *iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
    hdr.msg_namelen = addr.len();
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    opcode::SendMsg::new(types::Fd(fd), hdr)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
}

pub(super) fn accept(fd: RawFd, addr: &mut SockAddr) -> squeue::Entry {
    addr.reset_len();
    opcode::Accept::new(types::Fd(fd), addr.as_mut_ptr(), addr.len_mut())
        .flags(libc::SOCK_CLOEXEC)
        .build()
}

/// A multishot accept: a CQE per connection, with MORE while it goes on.
pub(super) fn accept_multi(fd: RawFd) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
}

/// A multishot recv into buffers of group `bgid`.
pub(super) fn recv_multi(fd: RawFd, bgid: u16) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), bgid).build()
}

/// One result of a multishot op: the fd or count, and a recv's buffer.
pub(crate) type MultiShot = (io::Result<usize>, Option<PooledBuf>);

/// What one CQE of a multishot op (accept or recv) means: a result to hand
/// out, and whether (and how) the op ends with it. The kernel marks every
/// CQE but the last with MORE; the last may carry a result too, or the
/// error (or end of stream) that stopped it.
pub(crate) fn multishot_cqe(
    op: &Op,
    res: i32,
    flags: u32,
) -> (Option<MultiShot>, Option<io::Result<usize>>) {
    let more = io_uring::cqueue::more(flags);
    let buf = match op {
        Op::RecvMulti { pool, .. } => io_uring::cqueue::buffer_select(flags).map(|bid| {
            // SAFETY: the kernel handed buffer `bid` of this pool's group to
            // this recv and wrote `res` bytes into it (0 on error or EOF).
            unsafe { pool.filled(bid, (res.max(0) as usize).min(pool.buf_size())) }
        }),
        _ => None,
    };
    let is_recv = matches!(op, Op::RecvMulti { .. });
    let shot = if res < 0 {
        // An error that does not stop the op (say, an accept aborted by its
        // peer) is a result of its own.
        more.then(|| (Err(super::os_error(res)), None))
    } else if is_recv && res == 0 {
        None // end of stream (a buffer it may name goes back)
    } else {
        Some((Ok(res as usize), buf))
    };
    let end = if more {
        None
    } else if res < 0 {
        Some(Err(super::os_error(res)))
    } else {
        Some(Ok(0))
    };
    (shot, end)
}

pub(super) fn connect(fd: RawFd, addr: &SockAddr) -> squeue::Entry {
    opcode::Connect::new(types::Fd(fd), addr.as_ptr(), addr.len()).build()
}

pub(super) fn shutdown(fd: RawFd, how: ShutdownHow) -> squeue::Entry {
    opcode::Shutdown::new(types::Fd(fd), how.to_raw()).build()
}

/// A recv of `n` bytes: they are initialised now.
#[inline]
pub(super) fn recv_done(buf: &mut AnyBufMut, n: usize) {
    // SAFETY: the kernel reported n bytes written at the buffer's start.
    unsafe { buf.set_init(n) }
}

/// A send without a copy (`progress` bytes already done): its first CQE
/// says how many bytes went, a second (the notification) that the kernel
/// no longer reads the buffer — the driver waits for both.
#[inline]
pub(super) fn send_zc(fd: RawFd, buf: &AnyBuf, flags: i32, progress: usize) -> squeue::Entry {
    let done = progress.min(buf.len());
    // SAFETY: done <= len, so the pointer stays inside the buffer.
    let ptr = unsafe { buf.as_ptr().add(done) };
    opcode::SendZc::new(types::Fd(fd), ptr, clamp(buf.len() - done))
        .flags(flags | libc::MSG_NOSIGNAL)
        .build()
}

/// A recvmsg of `n` bytes: they are initialised, and the peer's address
/// length is what the kernel wrote into the header.
pub(super) fn recvfrom_done(
    buf: &mut AnyBufMut,
    addr: &mut SockAddr,
    extra: Option<&Extra>,
    n: usize,
) {
    // SAFETY: the kernel reported n bytes written at the buffer's start.
    unsafe { buf.set_init(n) };
    if let Some(Scratch::Msg(hdr, _)) = extra.map(|e| &e.scratch) {
        *addr.len_mut() = hdr.msg_namelen;
    }
}

/// A send of `n` more bytes goes again until every byte is out.
#[inline]
pub(super) fn send_done(
    buf: &AnyBuf,
    progress: &mut usize,
    n: usize,
    cancel_requested: bool,
) -> Step {
    stream_write_step(buf.len(), progress, n, cancel_requested)
}
