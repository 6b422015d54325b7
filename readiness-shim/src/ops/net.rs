//! Recv, send, recvfrom, sendto, accept, connect, shutdown: one
//! non-blocking attempt each; the driver retries on readiness.

use super::{attempt_of, last, retry, would_block, write_all, Attempt};
use crate::driver::ShimDriver;
use ringport_core::op::Op;
use std::io;

impl ShimDriver {
    /// Performs a shutdown in slot `key` at once (it never waits).
    pub(crate) fn start_shutdown(&mut self, key: usize) {
        let mut p = 0;
        let r = match attempt(self.life.slot_mut(key).op_mut(), &mut p) {
            Attempt::Done(r) | Attempt::Shot(r, _) => r,
            Attempt::WouldBlock => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        };
        self.complete(key, r);
    }
}

/// One non-blocking attempt at a socket op.
pub(super) fn attempt(op: &mut Op, progress: &mut usize) -> Attempt {
    match op {
        Op::RecvPooled {
            fd,
            pool,
            flags,
            got,
        } => {
            let (f, fl) = (*fd, *flags);
            super::rw::pooled(f, pool, got, |p, n| {
                // SAFETY: p points at n writable bytes of a pool buffer this
                // attempt owns.
                unsafe { libc::recv(f, p.cast(), n, fl | libc::MSG_DONTWAIT) }
            })
        }
        Op::Recv { fd, buf, flags } => {
            let (f, p, n, fl) = (*fd, buf.as_mut_ptr(), buf.capacity(), *flags);
            // SAFETY: p points at n writable bytes owned by the op.
            let r = retry(|| unsafe { libc::recv(f, p.cast(), n, fl | libc::MSG_DONTWAIT) });
            if let Ok(n) = r {
                // SAFETY: the kernel wrote n bytes at the start.
                unsafe { buf.set_init(n) };
            }
            attempt_of(r)
        }
        // No zero-copy send at readiness: a plain send.
        Op::Send { fd, buf, flags } | Op::SendZc { fd, buf, flags } => {
            let (f, base, len, fl) = (*fd, buf.as_ptr(), buf.len(), *flags);
            // SAFETY: base + progress stays within the len bytes of the buffer.
            write_all(progress, len, |done| unsafe {
                libc::send(
                    f,
                    base.add(done).cast(),
                    len - done,
                    fl | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            })
        }
        Op::RecvFrom { fd, buf, addr } => {
            addr.reset_len();
            let (f, p, n) = (*fd, buf.as_mut_ptr(), buf.capacity());
            let (ap, lp) = (addr.as_mut_ptr(), addr.len_mut() as *mut libc::socklen_t);
            // SAFETY: buffer and address storage are owned by the op and valid.
            let r = retry(|| unsafe { libc::recvfrom(f, p.cast(), n, libc::MSG_DONTWAIT, ap, lp) });
            if let Ok(n) = r {
                // SAFETY: the kernel wrote n bytes at the start.
                unsafe { buf.set_init(n) };
            }
            attempt_of(r)
        }
        Op::SendTo { fd, buf, addr } => {
            let (f, p, n) = (*fd, buf.as_ptr(), buf.len());
            let (ap, al) = (addr.as_ptr(), addr.len());
            // SAFETY: buffer and address are owned by the op and valid.
            attempt_of(retry(|| unsafe {
                libc::sendto(
                    f,
                    p.cast(),
                    n,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    ap,
                    al,
                )
            }))
        }
        Op::Accept { fd, addr } => {
            addr.reset_len();
            let f = *fd;
            let (ap, lp) = (addr.as_mut_ptr(), addr.len_mut() as *mut libc::socklen_t);
            // SAFETY: the address storage is owned by the op and valid.
            attempt_of(retry(|| unsafe {
                libc::accept4(f, ap, lp, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as isize
            }))
        }
        Op::AcceptMulti { fd } => {
            let f = *fd;
            // SAFETY: no address is asked for.
            match attempt_of(retry(|| unsafe {
                libc::accept4(
                    f,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                ) as isize
            })) {
                // One connection; the op goes on accepting.
                Attempt::Done(Ok(fd)) => Attempt::Shot(Ok(fd), None),
                other => other,
            }
        }
        Op::RecvMulti { fd, pool } => {
            let f = *fd;
            let mut got = None;
            let a = super::rw::pooled(f, pool, &mut got, |p, n| {
                // SAFETY: p points at n writable bytes of a pool buffer this
                // attempt owns.
                unsafe { libc::recv(f, p.cast(), n, libc::MSG_DONTWAIT) }
            });
            match a {
                // Bytes; the op goes on receiving. End of stream (0) and
                // errors (ENOBUFS included) end it.
                Attempt::Done(Ok(n)) if n > 0 => Attempt::Shot(Ok(n), got),
                other => other,
            }
        }
        Op::Connect { fd, addr } => {
            if *progress == 0 {
                *progress = 1;
                // SAFETY: the address is owned by the op and was validated.
                let r = unsafe { libc::connect(*fd, addr.as_ptr(), addr.len()) };
                if r == 0 {
                    return Attempt::Done(Ok(0));
                }
                let e = last();
                return if would_block(&e) || e.raw_os_error() == Some(libc::EINTR) {
                    Attempt::WouldBlock
                } else {
                    Attempt::Done(Err(e))
                };
            }
            // Writable after EINPROGRESS: the outcome is in SO_ERROR.
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: err and len are valid for getsockopt.
            let r = unsafe {
                libc::getsockopt(
                    *fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut libc::c_int as *mut libc::c_void,
                    &mut len,
                )
            };
            if r < 0 {
                Attempt::Done(Err(last()))
            } else if err == 0 {
                Attempt::Done(Ok(0))
            } else if err == libc::EINPROGRESS || err == libc::EAGAIN {
                Attempt::WouldBlock
            } else {
                Attempt::Done(Err(io::Error::from_raw_os_error(err)))
            }
        }
        Op::Shutdown { fd, how } => {
            // SAFETY: plain syscall on the op's fd.
            let r = unsafe { libc::shutdown(*fd, how.to_raw()) };
            Attempt::Done(if r < 0 { Err(last()) } else { Ok(0) })
        }
        _ => Attempt::Done(Err(io::Error::from_raw_os_error(libc::EINVAL))),
    }
}
