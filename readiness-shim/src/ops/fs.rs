//! Openat, stat, fsync: blocking calls on a pool thread.

use super::{last, retry};
use crate::driver::ShimDriver;
use ringport_core::op::{FileStat, Op};
use std::io;

impl ShimDriver {
    /// Starts an open in slot `key`: always on the pool. Its completion
    /// carries the new fd, also when the op was cancelled after the open
    /// succeeded (the owner closes an fd it no longer wants).
    pub(crate) fn start_open(&mut self, key: usize) -> io::Result<()> {
        self.send_to_pool(key)
    }
}

/// An open, stat or sync with blocking syscalls (on a pool thread).
pub(super) fn perform_blocking(op: &mut Op) -> io::Result<usize> {
    match op {
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
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}
