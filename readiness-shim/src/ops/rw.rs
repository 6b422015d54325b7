//! Read, write, readv, writev, and the fixed (registered-buffer) read and
//! write, which here are a plain read and write of the buffer: on streams one non-blocking attempt each; on
//! regular files a blocking call on a pool thread, or a read tried inline
//! from the page cache first.

use super::{attempt_of, retry, write_all, Attempt};
use ringport_core::bufpool::{BufPool, PooledBuf};
use ringport_core::op::{Offset, Op};
use std::io;
use std::os::fd::RawFd;

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
    if let Op::Read { fd, offset, .. } | Op::ReadFixed { fd, offset, .. } = op {
        let (fd, offset) = (*fd, *offset);
        let Offset::At(at) = offset else {
            return Nowait::Pool;
        };
        let iov = match op {
            Op::Read { buf, .. } => libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.capacity(),
            },
            Op::ReadFixed { buf, .. } => libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.capacity(),
            },
            _ => unreachable!("matched above"),
        };
        // SAFETY: the iovec points at the op's buffer, `capacity` writable
        // bytes the op owns for the length of this call.
        let r = unsafe { libc::preadv2(fd, &iov, 1, at as libc::off_t, libc::RWF_NOWAIT) };
        if r >= 0 && r as usize == iov.iov_len {
            match op {
                // SAFETY: the kernel wrote all r bytes at the buffer's start.
                Op::Read { buf, .. } => unsafe { buf.set_init(r as usize) },
                Op::ReadFixed { buf, .. } => buf.filled(r as usize),
                _ => {}
            }
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

/// One non-blocking attempt at a read or write.
pub(super) fn attempt(op: &mut Op, progress: &mut usize) -> Attempt {
    match op {
        Op::ReadPooled {
            fd,
            offset,
            pool,
            got,
        } => {
            let (f, at) = (*fd, *offset);
            pooled(f, pool, got, |p, n| {
                // SAFETY: p points at n writable bytes of a pool buffer this
                // attempt owns.
                unsafe {
                    match at {
                        Offset::Current => libc::read(f, p.cast(), n),
                        Offset::At(at) => libc::pread(f, p.cast(), n, at as libc::off_t),
                    }
                }
            })
        }
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
        Op::ReadFixed { fd, offset, buf } => {
            let (f, at, p, n) = (*fd, *offset, buf.as_mut_ptr(), buf.capacity());
            let r = retry(|| {
                // SAFETY: p points at the n bytes of the registered buffer
                // the op owns.
                unsafe {
                    match at {
                        Offset::Current => libc::read(f, p.cast(), n),
                        Offset::At(at) => libc::pread(f, p.cast(), n, at as libc::off_t),
                    }
                }
            });
            if let Ok(n) = r {
                buf.filled(n);
            }
            attempt_of(r)
        }
        Op::WriteFixed { fd, offset, buf } if *offset == Offset::Current => {
            let (f, base, len) = (*fd, buf.as_ptr(), buf.len());
            // SAFETY: base + progress stays within the len bytes of the buffer.
            write_all(progress, len, |done| unsafe {
                libc::write(f, base.add(done).cast(), len - done)
            })
        }
        Op::WriteFixed { fd, offset, buf } => {
            let (f, p, n, off) = (*fd, buf.as_ptr(), buf.len(), offset.to_raw());
            // SAFETY: p points at the n bytes of the registered buffer the
            // op owns.
            attempt_of(retry(|| unsafe {
                libc::pwrite(f, p.cast(), n, off as libc::off_t)
            }))
        }
        Op::Readv { .. } | Op::Writev { .. } => attempt_of(perform_vectored(op)),
        _ => Attempt::Done(Err(io::Error::from_raw_os_error(libc::EINVAL))),
    }
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

/// A read or write with blocking syscalls (on a pool thread).
pub(super) fn perform_blocking(op: &mut Op) -> io::Result<usize> {
    match op {
        Op::Read { .. }
        | Op::Write { .. }
        | Op::ReadPooled { .. }
        | Op::ReadFixed { .. }
        | Op::WriteFixed { .. } => {
            let mut progress = 0;
            match attempt(op, &mut progress) {
                // Not a multishot op: no `Shot` comes from it.
                Attempt::Done(r) | Attempt::Shot(r, _) => r,
                Attempt::WouldBlock => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            }
        }
        _ => perform_vectored(op),
    }
}

/// One pooled read attempt: a buffer is taken from `pool` only when there is
/// something to read (a stream with nothing waiting would block without one),
/// filled by `read`, and becomes the op's output; an empty pool when bytes are
/// waiting is `ENOBUFS`, as on every backend.
pub(crate) fn pooled(
    fd: RawFd,
    pool: &BufPool,
    got: &mut Option<PooledBuf>,
    mut read: impl FnMut(*mut u8, usize) -> isize,
) -> Attempt {
    let Some(idx) = pool.try_take() else {
        // No buffer: fail only if bytes (or the end) are there to read.
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        return if n == 0 {
            Attempt::WouldBlock
        } else {
            Attempt::Done(Err(ringport_core::bufpool::pool_exhausted()))
        };
    };
    let r = retry(|| read(pool.addr(idx), pool.buf_size()));
    match r {
        Ok(n) if n > 0 => {
            // SAFETY: we took `idx` from the pool and the read wrote n bytes.
            *got = Some(unsafe { pool.filled(idx, n) });
            Attempt::Done(Ok(n))
        }
        r => {
            pool.put_back(idx);
            attempt_of(r)
        }
    }
}
