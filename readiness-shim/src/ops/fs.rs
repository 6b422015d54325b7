//! File-system ops, each a blocking call on a pool thread: openat and
//! openat2, stat (of an fd) and statat (by path, with `fstatat`), fsync, the
//! path ops (renameat, unlinkat, mkdirat, symlinkat, linkat), fallocate and
//! ftruncate.

use super::{last, retry};
use crate::driver::ShimDriver;
use ringport_core::op::{FileStat, Op};
use std::ffi::CString;
use std::io;

impl ShimDriver {
    /// Starts a path op (an open, a stat by path, a rename, ...) in slot
    /// `key`: always on the pool. An open's completion carries the new fd,
    /// also when the op was cancelled after the open succeeded (the owner
    /// closes an fd it no longer wants).
    pub(crate) fn start_open(&mut self, key: usize) -> io::Result<()> {
        self.send_to_pool(key)
    }
}

/// A file-system op with blocking syscalls (on a pool thread).
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
        Op::OpenAt2 {
            dir,
            path,
            flags,
            mode,
            resolve,
        } => openat2(*dir, path, *flags, *mode, *resolve),
        Op::StatAt {
            dir,
            path,
            follow,
            stat,
        } => {
            let flags = if *follow {
                0
            } else {
                libc::AT_SYMLINK_NOFOLLOW
            };
            // SAFETY: fstatat writes one stat struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let (d, p) = (*dir, path.as_ptr());
            // SAFETY: path is NUL-terminated and owned by the op; st is ours.
            retry(|| unsafe { libc::fstatat(d, p, &mut st, flags) as isize })?;
            **stat = FileStat::from_stat(&st);
            Ok(0)
        }
        Op::RenameAt {
            from_dir,
            from,
            to_dir,
            to,
            flags,
        } => rename(*from_dir, from, *to_dir, to, *flags),
        Op::UnlinkAt { dir, path, flags } => {
            let (d, p, f) = (*dir, path.as_ptr(), *flags);
            // SAFETY: path is NUL-terminated and owned by the op.
            retry(|| unsafe { libc::unlinkat(d, p, f) as isize })
        }
        Op::MkdirAt { dir, path, mode } => {
            let (d, p, m) = (*dir, path.as_ptr(), *mode as libc::mode_t);
            // SAFETY: path is NUL-terminated and owned by the op.
            retry(|| unsafe { libc::mkdirat(d, p, m) as isize })
        }
        Op::SymlinkAt { target, dir, path } => {
            let (t, d, p) = (target.as_ptr(), *dir, path.as_ptr());
            // SAFETY: both paths are NUL-terminated and owned by the op.
            retry(|| unsafe { libc::symlinkat(t, d, p) as isize })
        }
        Op::LinkAt {
            from_dir,
            from,
            to_dir,
            to,
            flags,
        } => {
            let (fd, f, td, t, fl) = (*from_dir, from.as_ptr(), *to_dir, to.as_ptr(), *flags);
            // SAFETY: both paths are NUL-terminated and owned by the op.
            retry(|| unsafe { libc::linkat(fd, f, td, t, fl) as isize })
        }
        Op::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => fallocate(*fd, *mode, *offset, *len),
        Op::Ftruncate { fd, len } => {
            let (f, l) = (*fd, *len as libc::off_t);
            // SAFETY: plain syscall on the op's fd.
            retry(|| unsafe { libc::ftruncate(f, l) as isize })
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

#[cfg(target_os = "linux")]
fn openat2(
    dir: libc::c_int,
    path: &CString,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<usize> {
    // SAFETY: open_how is plain data; zero is a valid start.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u32 as u64;
    how.mode = mode as u64;
    how.resolve = resolve;
    let p = path.as_ptr();
    // SAFETY: path is NUL-terminated and owned by the op; `how` lives for
    // the call and its size is passed with it.
    retry(|| unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            p,
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        ) as isize
    })
}

#[cfg(not(target_os = "linux"))]
fn openat2(_: libc::c_int, _: &CString, _: i32, _: u32, _: u64) -> io::Result<usize> {
    // Marked unsupported in the capabilities, so never submitted.
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

fn rename(
    from_dir: libc::c_int,
    from: &CString,
    to_dir: libc::c_int,
    to: &CString,
    flags: u32,
) -> io::Result<usize> {
    let (f, t) = (from.as_ptr(), to.as_ptr());
    #[cfg(target_os = "linux")]
    if flags != 0 {
        // SAFETY: both paths are NUL-terminated and owned by the op.
        return retry(|| unsafe { libc::renameat2(from_dir, f, to_dir, t, flags) as isize });
    }
    #[cfg(not(target_os = "linux"))]
    if flags != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "rename flags (RENAME_*) exist only on Linux",
        ));
    }
    // SAFETY: both paths are NUL-terminated and owned by the op.
    retry(|| unsafe { libc::renameat(from_dir, f, to_dir, t) as isize })
}

#[cfg(target_os = "linux")]
fn fallocate(fd: libc::c_int, mode: i32, offset: u64, len: u64) -> io::Result<usize> {
    let (o, l) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: plain syscall on the op's fd.
    retry(|| unsafe { libc::fallocate(fd, mode, o, l) as isize })
}

#[cfg(not(target_os = "linux"))]
fn fallocate(fd: libc::c_int, mode: i32, offset: u64, len: u64) -> io::Result<usize> {
    if mode != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fallocate modes (FALLOC_FL_*) exist only on Linux",
        ));
    }
    // posix_fallocate returns the error number rather than setting errno.
    loop {
        // SAFETY: plain call on the op's fd.
        let r = unsafe { libc::posix_fallocate(fd, offset as libc::off_t, len as libc::off_t) };
        match r {
            0 => return Ok(0),
            libc::EINTR if !crate::pool::stopping() => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}
