//! How io_uring performs each [`Op`]: the SQE it becomes, and what its CQE
//! result means. One function each way, one arm per op, so "how does uring do
//! X" is answered here.

use io_uring::{opcode, squeue, types};
use ringport_core::op::{CancelTarget, FileStat, Op, OpKind, CURRENT_POSITION};
use std::io;

/// Memory the kernel reads or writes after submission that the `Op` does not
/// hold itself. Boxed in the slot, so it never moves while the op is in flight.
pub(crate) enum Scratch {
    None,
    Iovecs(Vec<libc::iovec>),
    Msg(Box<(libc::msghdr, libc::iovec)>),
    Statx(Box<libc::statx>),
    Time(Box<types::Timespec>),
}

// SAFETY: the raw pointers inside point into the op's own heap memory (its
// buffers and boxes), which travels with it.
unsafe impl Send for Scratch {}

/// The SQE for `op`, with `progress` bytes of a stream write already done.
///
/// Unknown-to-uring ops never get here: `submit` refuses them first.
pub(crate) fn prepare(op: &mut Op, scratch: &mut Scratch, progress: usize) -> squeue::Entry {
    let fd = |fd| types::Fd(fd);
    match op {
        Op::Nop => opcode::Nop::new().build(),
        Op::Read { fd: f, offset, buf } => {
            opcode::Read::new(fd(*f), buf.as_mut_ptr(), clamp(buf.capacity()))
                .offset(*offset)
                .build()
        }
        Op::Write { fd: f, offset, buf } => {
            let done = progress.min(buf.len());
            // SAFETY: done <= len, so the pointer stays inside the buffer.
            let ptr = unsafe { buf.as_ptr().add(done) };
            let off = if *offset == CURRENT_POSITION {
                CURRENT_POSITION
            } else {
                *offset + done as u64
            };
            opcode::Write::new(fd(*f), ptr, clamp(buf.len() - done))
                .offset(off)
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
            *scratch = Scratch::Iovecs(iov);
            let Scratch::Iovecs(iov) = scratch else {
                unreachable!()
            };
            opcode::Readv::new(fd(*f), iov.as_ptr(), iov.len() as u32)
                .offset(*offset)
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
            *scratch = Scratch::Iovecs(iov);
            let Scratch::Iovecs(iov) = scratch else {
                unreachable!()
            };
            opcode::Writev::new(fd(*f), iov.as_ptr(), iov.len() as u32)
                .offset(*offset)
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
            // SAFETY: msghdr and iovec are plain data; zero is a valid start.
            let mut m: Box<(libc::msghdr, libc::iovec)> = Box::new(unsafe { std::mem::zeroed() });
            m.1 = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.capacity(),
            };
            m.0.msg_name = addr.as_mut_ptr().cast();
            m.0.msg_namelen = addr.len();
            m.0.msg_iov = &mut m.1;
            m.0.msg_iovlen = 1;
            *scratch = Scratch::Msg(m);
            let Scratch::Msg(m) = scratch else {
                unreachable!()
            };
            opcode::RecvMsg::new(fd(*f), &mut m.0).build()
        }
        Op::SendTo { fd: f, buf, addr } => {
            // SAFETY: msghdr and iovec are plain data; zero is a valid start.
            let mut m: Box<(libc::msghdr, libc::iovec)> = Box::new(unsafe { std::mem::zeroed() });
            m.1 = libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            m.0.msg_name = addr.as_ptr() as *mut libc::c_void;
            m.0.msg_namelen = addr.len();
            m.0.msg_iov = &mut m.1;
            m.0.msg_iovlen = 1;
            *scratch = Scratch::Msg(m);
            let Scratch::Msg(m) = scratch else {
                unreachable!()
            };
            opcode::SendMsg::new(fd(*f), &m.0)
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
            // SAFETY: statx is plain data; zero is a valid start.
            *scratch = Scratch::Statx(Box::new(unsafe { std::mem::zeroed() }));
            let Scratch::Statx(st) = scratch else {
                unreachable!()
            };
            opcode::Statx::new(fd(*f), c"".as_ptr(), (&mut **st as *mut libc::statx).cast())
                .flags(libc::AT_EMPTY_PATH)
                .mask(libc::STATX_BASIC_STATS)
                .build()
        }
        Op::Timeout { deadline } => {
            *scratch = Scratch::Time(Box::new(crate::abs_timespec(*deadline)));
            let Scratch::Time(ts) = scratch else {
                unreachable!()
            };
            opcode::Timeout::new(&**ts)
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
pub(crate) fn complete(op: &mut Op, scratch: &Scratch, n: usize) {
    match op {
        Op::Read { buf, .. } | Op::Recv { buf, .. } => {
            // SAFETY: the kernel reported n bytes written at the buffer's start.
            unsafe { buf.set_init(n) }
        }
        Op::RecvFrom { buf, addr, .. } => {
            // SAFETY: as above.
            unsafe { buf.set_init(n) };
            if let Scratch::Msg(m) = scratch {
                *addr.len_mut() = m.0.msg_namelen;
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
