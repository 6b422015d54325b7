//! How io_uring performs each [`Op`]: the SQE it becomes, and what its CQE
//! result means. One function each way, one arm per op, so "how does uring do
//! X" is answered here.

use io_uring::{opcode, squeue, types};
use ringport_core::op::{CancelTarget, FileStat, Op, OpKind};
use std::io;

/// Memory the kernel reads or writes after submission that the `Op` does not
/// hold itself. It lives in the slot's boxed [`Extra`], so it never moves while
/// the op is in flight.
#[derive(Default)]
pub(crate) enum Scratch {
    #[default]
    None,
    Iovecs(Vec<libc::iovec>),
    Msg(libc::msghdr, libc::iovec),
    Statx(libc::statx),
    Time(types::Timespec),
}

/// What only some ops need, boxed so the common slot stays small.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) scratch: Scratch,
    /// The per-op deadline (an absolute CLOCK_MONOTONIC time) for a linked timeout.
    pub(crate) deadline: Option<types::Timespec>,
    /// For a cancel by fd: how many ops it reached in all.
    pub(crate) reached: usize,
}

// SAFETY: the raw pointers inside point into the op's own heap memory (its
// buffers and boxes) or into this box, which travel with the op.
unsafe impl Send for Extra {}

fn scratch(extra: &mut Option<Box<Extra>>) -> &mut Scratch {
    &mut extra.get_or_insert_with(Box::default).scratch
}

/// The SQE for `op`, with `progress` bytes of a stream write already done.
///
/// Unknown-to-uring ops never get here: `submit` refuses them first.
#[inline]
pub(crate) fn prepare(
    op: &mut Op,
    extra: &mut Option<Box<Extra>>,
    progress: usize,
) -> squeue::Entry {
    let fd = |fd| types::Fd(fd);
    match op {
        Op::Nop => opcode::Nop::new().build(),
        Op::Read { fd: f, offset, buf } => {
            opcode::Read::new(fd(*f), buf.as_mut_ptr(), clamp(buf.capacity()))
                .offset(offset.to_raw())
                .build()
        }
        Op::Write { fd: f, offset, buf } => {
            let done = progress.min(buf.len());
            // SAFETY: done <= len, so the pointer stays inside the buffer.
            let ptr = unsafe { buf.as_ptr().add(done) };
            opcode::Write::new(fd(*f), ptr, clamp(buf.len() - done))
                .offset(offset.advanced(done).to_raw())
                .build()
        }
        Op::Readv {
            fd: f,
            offset,
            bufs,
        } => {
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
            opcode::Readv::new(fd(*f), iov.as_ptr(), iov.len() as u32)
                .offset(offset.to_raw())
                .build()
        }
        Op::Writev {
            fd: f,
            offset,
            bufs,
        } => {
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
            opcode::Writev::new(fd(*f), iov.as_ptr(), iov.len() as u32)
                .offset(offset.to_raw())
                .build()
        }
        Op::Recv { fd: f, buf, flags } => {
            opcode::Recv::new(fd(*f), buf.as_mut_ptr(), clamp(buf.capacity()))
                .flags(*flags)
                .build()
        }
        Op::Send { fd: f, buf, flags } => {
            let done = progress.min(buf.len());
            // SAFETY: done <= len, so the pointer stays inside the buffer.
            let ptr = unsafe { buf.as_ptr().add(done) };
            opcode::Send::new(fd(*f), ptr, clamp(buf.len() - done))
                .flags(*flags | libc::MSG_NOSIGNAL)
                .build()
        }
        Op::RecvFrom { fd: f, buf, addr } => {
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
            opcode::RecvMsg::new(fd(*f), hdr).build()
        }
        Op::SendTo { fd: f, buf, addr } => {
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
            opcode::SendMsg::new(fd(*f), hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        }
        Op::Accept { fd: f, addr } => {
            addr.reset_len();
            opcode::Accept::new(fd(*f), addr.as_mut_ptr(), addr.len_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        Op::Connect { fd: f, addr } => {
            opcode::Connect::new(fd(*f), addr.as_ptr(), addr.len()).build()
        }
        Op::Shutdown { fd: f, how } => opcode::Shutdown::new(fd(*f), how.to_raw()).build(),
        Op::Close { fd: f } => opcode::Close::new(fd(*f)).build(),
        Op::Fsync { fd: f, data_only } => {
            let flags = if *data_only {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            opcode::Fsync::new(fd(*f)).flags(flags).build()
        }
        Op::OpenAt {
            dir,
            path,
            flags,
            mode,
        } => opcode::OpenAt::new(fd(*dir), path.as_ptr())
            .flags(*flags | libc::O_CLOEXEC)
            .mode(*mode)
            .build(),
        Op::Stat { fd: f, .. } => {
            let s = scratch(extra);
            // SAFETY: statx is plain data; zero is a valid start.
            *s = Scratch::Statx(unsafe { std::mem::zeroed() });
            let Scratch::Statx(st) = s else {
                unreachable!()
            };
            opcode::Statx::new(fd(*f), c"".as_ptr(), (st as *mut libc::statx).cast())
                .flags(libc::AT_EMPTY_PATH)
                .mask(libc::STATX_BASIC_STATS)
                .build()
        }
        Op::Timeout { deadline } => {
            let s = scratch(extra);
            *s = Scratch::Time(crate::abs_timespec(*deadline));
            let Scratch::Time(ts) = s else { unreachable!() };
            opcode::Timeout::new(ts)
                .flags(types::TimeoutFlags::ABS)
                .build()
        }
        Op::Cancel { target } => {
            let b = match *target {
                CancelTarget::Op(id) => types::CancelBuilder::user_data(id.to_u64()),
                CancelTarget::Fd(f) => types::CancelBuilder::fd(fd(f)).all(),
            };
            opcode::AsyncCancel2::new(b).build()
        }
        Op::Poll { fd: f, events } => opcode::PollAdd::new(fd(*f), *events as u16 as u32).build(),
    }
}

/// Applies a successful result to the op's outputs (a read's initialised
/// length, a peer address's length, metadata).
#[inline]
pub(crate) fn complete(op: &mut Op, extra: Option<&Extra>, n: usize) {
    let scratch = extra.map(|e| &e.scratch).unwrap_or(&Scratch::None);
    match op {
        Op::Read { buf, .. } | Op::Recv { buf, .. } => {
            // SAFETY: the kernel reported n bytes written at the buffer's start.
            unsafe { buf.set_init(n) }
        }
        Op::RecvFrom { buf, addr, .. } => {
            // SAFETY: as above.
            unsafe { buf.set_init(n) };
            if let Scratch::Msg(hdr, _) = scratch {
                *addr.len_mut() = hdr.msg_namelen;
            }
        }
        Op::Readv { bufs, .. } => {
            let mut left = n;
            for b in bufs {
                let k = left.min(b.capacity());
                // SAFETY: readv fills the buffers in order; k bytes of this one.
                unsafe { b.set_init(k) };
                left -= k;
            }
        }
        Op::Stat { stat, .. } => {
            if let Scratch::Statx(st) = scratch {
                **stat = FileStat {
                    size: st.stx_size,
                    mode: st.stx_mode as u32,
                    nlink: st.stx_nlink as u64,
                    uid: st.stx_uid,
                    gid: st.stx_gid,
                    ino: st.stx_ino,
                    blocks: st.stx_blocks,
                    mtime_sec: st.stx_mtime.tv_sec,
                    mtime_nsec: st.stx_mtime.tv_nsec,
                };
            }
        }
        _ => {}
    }
}

/// The opcode each op kind needs, for the start-up probe.
pub(crate) fn opcode_of(kind: OpKind) -> u8 {
    match kind {
        OpKind::Nop => opcode::Nop::CODE,
        OpKind::Read => opcode::Read::CODE,
        OpKind::Write => opcode::Write::CODE,
        OpKind::Readv => opcode::Readv::CODE,
        OpKind::Writev => opcode::Writev::CODE,
        OpKind::Recv => opcode::Recv::CODE,
        OpKind::Send => opcode::Send::CODE,
        OpKind::RecvFrom => opcode::RecvMsg::CODE,
        OpKind::SendTo => opcode::SendMsg::CODE,
        OpKind::Accept => opcode::Accept::CODE,
        OpKind::Connect => opcode::Connect::CODE,
        OpKind::Shutdown => opcode::Shutdown::CODE,
        OpKind::Close => opcode::Close::CODE,
        OpKind::Fsync => opcode::Fsync::CODE,
        OpKind::OpenAt => opcode::OpenAt::CODE,
        OpKind::Stat => opcode::Statx::CODE,
        OpKind::Timeout => opcode::Timeout::CODE,
        OpKind::Cancel => opcode::AsyncCancel::CODE,
        OpKind::Poll => opcode::PollAdd::CODE,
    }
}

/// io_uring lengths are 32-bit; a larger buffer is used up to 4 GiB - 1.
fn clamp(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// The error of a result code, as `io::Error`.
pub(crate) fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}
