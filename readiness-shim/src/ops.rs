//! How the shim performs each [`Op`]: one non-blocking attempt for ops that
//! wait on readiness, or a blocking call on a pool thread for file ops. One
//! arm per op, so "how does the shim do X" is answered here.

use ringport_core::op::{FileStat, Offset, Op};
use std::io;

/// What a non-blocking attempt came to.
pub(crate) enum Attempt {
    /// Finished with this result.
    Done(io::Result<usize>),
    /// Would block: retry when the fd is ready in the op's direction.
    WouldBlock,
}

fn last() -> io::Error {
    io::Error::last_os_error()
}

/// Runs `f` until it does not fail with EINTR; a negative result becomes the
/// OS error. On a pool worker told to stop, `EINTR` ends the loop (the
/// driver interrupts the syscall to stop the job).
fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = last();
        if e.raw_os_error() != Some(libc::EINTR) || crate::pool::stopping() {
            return Err(e);
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS)
    )
}

/// Maps a result to an attempt: `EAGAIN` means wait.
fn attempt_of(r: io::Result<usize>) -> Attempt {
    match r {
        Err(e) if would_block(&e) => Attempt::WouldBlock,
        r => Attempt::Done(r),
    }
}

/// Whether this OS has `preadv2(RWF_NOWAIT)` for the inline file-read attempt.
pub(crate) const NOWAIT_READS: bool = cfg!(target_os = "linux");

/// The outcome of an inline file-read attempt.
pub(crate) enum Nowait {
    /// Every byte came from the page cache: the read is done with this count.
    Done(usize),
    /// Not (all) cached, or not a read at an explicit offset: use the pool.
    Pool,
    /// The kernel or file system refuses `RWF_NOWAIT`: stop trying.
    Unsupported,
}

/// Tries a file read at an explicit offset without blocking: with
/// `RWF_NOWAIT` the kernel reads only from the page cache and says `EAGAIN`
/// otherwise. Only a complete read counts; a short one is redone by the pool
/// (the pool overwrites the same bytes, and the offset is explicit, so nothing
/// is lost or moved).
pub(crate) fn read_nowait(op: &mut Op) -> Nowait {
    #[cfg(target_os = "linux")]
    if let Op::Read { fd, offset, buf } = op {
        let Offset::At(at) = *offset else {
            return Nowait::Pool;
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.capacity(),
        };
        // SAFETY: the iovec points at the op's buffer, `capacity` writable
        // bytes the op owns for the length of this call.
        let r = unsafe { libc::preadv2(*fd, &iov, 1, at as libc::off_t, libc::RWF_NOWAIT) };
        if r >= 0 && r as usize == iov.iov_len {
            // SAFETY: the kernel wrote all r bytes at the buffer's start.
            unsafe { buf.set_init(r as usize) };
            return Nowait::Done(r as usize);
        }
        if r < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            if matches!(e, Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)) {
                return Nowait::Unsupported;
            }
        }
        return Nowait::Pool;
    }
    let _ = op;
    Nowait::Pool
}

/// One non-blocking attempt at a readiness op. `progress` carries state
/// between attempts: bytes of a stream write already sent, or 1 once a
/// connect is under way.
pub(crate) fn attempt(op: &mut Op, progress: &mut usize) -> Attempt {
    match op {
        Op::Nop => Attempt::Done(Ok(0)),
        Op::Read { fd, offset, buf } => {
            let (f, p, n) = (*fd, buf.as_mut_ptr(), buf.capacity());
            let r = retry(|| {
                // SAFETY: p points at n writable bytes owned by the op.
                unsafe {
                    match *offset {
                        Offset::Current => libc::read(f, p.cast(), n),
                        Offset::At(at) => libc::pread(f, p.cast(), n, at as libc::off_t),
                    }
                }
            });
            if let Ok(n) = r {
                // SAFETY: the kernel wrote n bytes at the start.
                unsafe { buf.set_init(n) };
            }
            attempt_of(r)
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
        Op::Write { fd, offset, buf } if *offset == Offset::Current => {
            let (f, base, len) = (*fd, buf.as_ptr(), buf.len());
            // SAFETY: base + progress stays within the len bytes of the buffer.
            write_all(progress, len, |done| unsafe {
                libc::write(f, base.add(done).cast(), len - done)
            })
        }
        Op::Write { fd, offset, buf } => {
            let (f, p, n, off) = (*fd, buf.as_ptr(), buf.len(), offset.to_raw());
            // SAFETY: p points at n initialised bytes owned by the op.
            attempt_of(retry(|| unsafe {
                libc::pwrite(f, p.cast(), n, off as libc::off_t)
            }))
        }
        Op::Send { fd, buf, flags } => {
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
        Op::Readv { .. } | Op::Writev { .. } => attempt_of(perform_vectored(op)),
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
        // File ops, timers, close and cancel are handled by the driver.
        _ => Attempt::Done(perform_blocking(op)),
    }
}

/// Writes until all `len` bytes are out (tracked in `progress`), or would block.
fn write_all(progress: &mut usize, len: usize, mut write: impl FnMut(usize) -> isize) -> Attempt {
    if len == 0 {
        return Attempt::Done(Ok(0));
    }
    while *progress < len {
        let done = *progress;
        match retry(|| write(done)) {
            Ok(0) => {
                return Attempt::Done(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write returned 0",
                )))
            }
            Ok(n) => *progress += n,
            Err(e) if would_block(&e) => return Attempt::WouldBlock,
            Err(e) => return Attempt::Done(Err(e)),
        }
    }
    Attempt::Done(Ok(*progress))
}

/// readv/writev (positional when an offset is given).
fn perform_vectored(op: &mut Op) -> io::Result<usize> {
    match op {
        Op::Readv { fd, offset, bufs } => {
            let iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.capacity(),
                })
                .collect();
            let (f, off) = (*fd, *offset);
            // SAFETY: each iovec points into a buffer owned by the op.
            let r = retry(|| unsafe {
                match off {
                    Offset::Current => libc::readv(f, iov.as_ptr(), iov.len() as i32),
                    Offset::At(at) => {
                        libc::preadv(f, iov.as_ptr(), iov.len() as i32, at as libc::off_t)
                    }
                }
            });
            if let Ok(n) = r {
                let mut left = n;
                for b in bufs.iter_mut() {
                    let k = left.min(b.capacity());
                    // SAFETY: readv fills buffers in order; k bytes of this one.
                    unsafe { b.set_init(k) };
                    left -= k;
                }
            }
            r
        }
        Op::Writev { fd, offset, bufs } => {
            let iov: Vec<libc::iovec> = bufs
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            let (f, off) = (*fd, *offset);
            // SAFETY: each iovec points into a buffer owned by the op.
            retry(|| unsafe {
                match off {
                    Offset::Current => libc::writev(f, iov.as_ptr(), iov.len() as i32),
                    Offset::At(at) => {
                        libc::pwritev(f, iov.as_ptr(), iov.len() as i32, at as libc::off_t)
                    }
                }
            })
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Performs a file op with blocking syscalls (on a pool thread).
pub(crate) fn perform_blocking(op: &mut Op) -> io::Result<usize> {
    match op {
        Op::Read { .. } | Op::Write { .. } => {
            let mut progress = 0;
            match attempt(op, &mut progress) {
                Attempt::Done(r) => r,
                Attempt::WouldBlock => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            }
        }
        Op::Readv { .. } | Op::Writev { .. } => perform_vectored(op),
        Op::Fsync { fd, data_only } => {
            let (f, d) = (*fd, *data_only);
            // SAFETY: plain syscall on the op's fd.
            retry(|| unsafe {
                (if d {
                    libc::fdatasync(f)
                } else {
                    libc::fsync(f)
                }) as isize
            })
        }
        Op::OpenAt {
            dir,
            path,
            flags,
            mode,
        } => {
            let (d, p, fl, m) = (*dir, path.as_ptr(), *flags | libc::O_CLOEXEC, *mode);
            // SAFETY: path is a NUL-terminated string owned by the op.
            retry(|| unsafe { libc::openat(d, p, fl, m as libc::c_uint) as isize })
        }
        Op::Stat { fd, stat } => {
            // SAFETY: fstat writes one stat struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::fstat(*fd, &mut st) } < 0 {
                return Err(last());
            }
            **stat = FileStat::from_stat(&st);
            Ok(0)
        }
        Op::Nop => Ok(0),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}
