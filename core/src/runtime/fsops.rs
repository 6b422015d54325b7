//! File-system operations by path, as in `std::fs`, each one [`Op`] through
//! the runtime's driver: [`metadata`] and [`symlink_metadata`], [`rename`],
//! [`remove_file`], [`create_dir`], [`remove_dir`], [`symlink`],
//! [`hard_link`]; [`Dir`], a directory handle for [`File::open_beneath`](crate::runtime::File::open_beneath) and
//! for syncing a directory; [`read_dir`].
//!
//! Every path is copied into the op (a `CString` it owns), so the kernel or a
//! worker never reads memory the caller may free. Errors are the system's
//! (`NotFound`, `AlreadyExists`, `ENOTEMPTY`, ...), as `std::fs` gives them.
//!
//! [`read_dir`] has no kernel op on any backend (io_uring has no `getdents`):
//! it runs `std::fs::read_dir` on a helper thread and wakes the task when
//! the listing is done. The same helper runs the calls whose op the backend
//! refuses: io_uring before Linux 5.15 has no `mkdirat`, `symlinkat` or
//! `linkat`, and before 6.9 no `ftruncate` (its capabilities say so).

use crate::driver::Support;
use crate::op::{FileStat, Op};
use crate::runtime::net::Fd;
use crate::runtime::submit;
use std::ffi::{CString, OsString};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// `path` as the NUL-terminated string an op owns; `InvalidInput` if it
/// holds a NUL byte.
pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

async fn run(op: Op) -> io::Result<usize> {
    submit(op, None).await.0
}

/// Runs `op`, or, if the current runtime's backend refuses its kind, the same
/// syscall on a helper thread (`fd`: the op's own duplicate of its fd, for
/// an op on an fd, so a dropped future leaves no thread on a closed number).
pub(crate) async fn run_or_helper(op: Op, fd: Option<&Fd>) -> io::Result<usize> {
    let refused = crate::runtime::current()
        .is_some_and(|c| c.capabilities().get(op.kind()) == Support::Unsupported);
    if !refused {
        return run(op).await;
    }
    let dup = match fd {
        // SAFETY: `fd` is open for the length of this borrow.
        Some(fd) => Some(unsafe { BorrowedFd::borrow_raw(fd.raw()) }.try_clone_to_owned()?),
        None => None,
    };
    Blocking::spawn(move || perform(&op, dup.as_ref().map(|d| d.as_raw_fd())))?.await
}

/// `op` as one blocking syscall (on a helper thread), on `fd` for an op on
/// an fd: the ops [`run_or_helper`] may need to run without the driver.
fn perform(op: &Op, fd: Option<RawFd>) -> io::Result<usize> {
    let fd = fd.unwrap_or(-1);
    // SAFETY: every path is a NUL-terminated string owned by `op`, which
    // lives for the call; `fd` is the caller's duplicate, open until it
    // drops after this call.
    let r = unsafe {
        match op {
            Op::MkdirAt { dir, path, mode } => {
                libc::mkdirat(*dir, path.as_ptr(), *mode as libc::mode_t)
            }
            Op::SymlinkAt { target, dir, path } => {
                libc::symlinkat(target.as_ptr(), *dir, path.as_ptr())
            }
            Op::LinkAt {
                from_dir,
                from,
                to_dir,
                to,
                flags,
            } => libc::linkat(*from_dir, from.as_ptr(), *to_dir, to.as_ptr(), *flags),
            Op::Ftruncate { len, .. } => libc::ftruncate(fd, *len as libc::off_t),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the `{}` operation has no helper-thread form",
                        op.kind().name()
                    ),
                ))
            }
        }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

async fn stat_at(path: &Path, follow: bool) -> io::Result<FileStat> {
    let op = Op::StatAt {
        dir: libc::AT_FDCWD,
        path: c_path(path)?,
        follow,
        stat: Box::default(),
    };
    let (res, op) = submit(op, None).await;
    res?;
    match op {
        Op::StatAt { stat, .. } => Ok(*stat),
        _ => panic!("ringport driver broke its contract: the op came back changed"),
    }
}

/// The metadata of what `path` names, following symlinks
/// (`std::fs::metadata`).
pub async fn metadata(path: impl AsRef<Path>) -> io::Result<FileStat> {
    stat_at(path.as_ref(), true).await
}

/// The metadata of `path` itself: a symlink is described, not followed
/// (`std::fs::symlink_metadata`).
pub async fn symlink_metadata(path: impl AsRef<Path>) -> io::Result<FileStat> {
    stat_at(path.as_ref(), false).await
}

/// Renames `from` to `to`, replacing `to` if it exists (atomically, on one
/// file system), like `std::fs::rename`.
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    run(Op::RenameAt {
        from_dir: libc::AT_FDCWD,
        from: c_path(from.as_ref())?,
        to_dir: libc::AT_FDCWD,
        to: c_path(to.as_ref())?,
        flags: 0,
    })
    .await
    .map(drop)
}

/// Removes a file (or a symlink), like `std::fs::remove_file`.
pub async fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    run(Op::UnlinkAt {
        dir: libc::AT_FDCWD,
        path: c_path(path.as_ref())?,
        flags: 0,
    })
    .await
    .map(drop)
}

/// Creates a directory (mode 0o777 before the umask), like
/// `std::fs::create_dir`.
pub async fn create_dir(path: impl AsRef<Path>) -> io::Result<()> {
    let op = Op::MkdirAt {
        dir: libc::AT_FDCWD,
        path: c_path(path.as_ref())?,
        mode: 0o777,
    };
    run_or_helper(op, None).await.map(drop)
}

/// Removes an empty directory, like `std::fs::remove_dir`.
pub async fn remove_dir(path: impl AsRef<Path>) -> io::Result<()> {
    run(Op::UnlinkAt {
        dir: libc::AT_FDCWD,
        path: c_path(path.as_ref())?,
        flags: libc::AT_REMOVEDIR,
    })
    .await
    .map(drop)
}

/// Creates `link`, a symlink to `original` (which need not exist), like
/// `std::os::unix::fs::symlink`.
pub async fn symlink(original: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    let op = Op::SymlinkAt {
        target: c_path(original.as_ref())?,
        dir: libc::AT_FDCWD,
        path: c_path(link.as_ref())?,
    };
    run_or_helper(op, None).await.map(drop)
}

/// Creates `link`, a new name for the file `original`, like
/// `std::fs::hard_link` (a symlink `original` is linked itself, not followed).
pub async fn hard_link(original: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    let op = Op::LinkAt {
        from_dir: libc::AT_FDCWD,
        from: c_path(original.as_ref())?,
        to_dir: libc::AT_FDCWD,
        to: c_path(link.as_ref())?,
        flags: 0,
    };
    run_or_helper(op, None).await.map(drop)
}

/// An open directory: the root of [`File::open_beneath`](crate::runtime::File::open_beneath), and what
/// [`Dir::sync_all`] makes durable (a rename inside it, say).
#[derive(Debug)]
pub struct Dir {
    fd: Fd,
}

impl Dir {
    /// Opens the directory `path` (`O_RDONLY | O_DIRECTORY`); `ENOTDIR` if it
    /// is something else.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Dir> {
        let op = Op::OpenAt {
            dir: libc::AT_FDCWD,
            path: c_path(path.as_ref())?,
            flags: libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            mode: 0,
        };
        let fd = run(op).await? as RawFd;
        Ok(Dir { fd: Fd::new(fd) })
    }

    /// `fsync` of the directory: the names in it (created, renamed,
    /// removed) reach the disk.
    pub async fn sync_all(&self) -> io::Result<()> {
        run(Op::Fsync {
            fd: self.fd.raw(),
            data_only: false,
        })
        .await
        .map(drop)
    }

    /// Closes through the driver (see [`File::close`](crate::runtime::File::close)).
    pub async fn close(self) -> io::Result<()> {
        self.fd.close().await
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl IntoRawFd for Dir {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw()
    }
}

/// One entry of a [`read_dir`] listing (`.` and `..` are left out).
#[derive(Debug, Clone)]
pub struct DirEntry {
    path: PathBuf,
    file_type: std::fs::FileType,
}

impl DirEntry {
    /// The directory's path joined with the entry's name.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The entry's name.
    pub fn file_name(&self) -> OsString {
        self.path
            .file_name()
            .map(OsString::from)
            .unwrap_or_default()
    }
    /// Its type (a symlink is reported as a symlink, not followed).
    pub fn file_type(&self) -> std::fs::FileType {
        self.file_type
    }
}

/// The entries of the directory `path`, in the order the file system gives
/// them, like `std::fs::read_dir` collected. It runs on a helper thread (no
/// backend has a kernel op for it); the error of the first entry that fails
/// ends the listing.
pub async fn read_dir(path: impl AsRef<Path>) -> io::Result<Vec<DirEntry>> {
    let path = path.as_ref().to_path_buf();
    Blocking::spawn(move || {
        std::fs::read_dir(&path)?
            .map(|e| {
                let e = e?;
                Ok(DirEntry {
                    path: e.path(),
                    file_type: e.file_type()?,
                })
            })
            .collect()
    })?
    .await
}

/// A closure's result from a helper thread, and the waker to call once it
/// is there.
struct Shared<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// A future for a closure run on its own thread.
struct Blocking<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

impl<T: Send + 'static> Blocking<T> {
    fn spawn(f: impl FnOnce() -> T + Send + 'static) -> io::Result<Blocking<T>> {
        let shared = Arc::new(Mutex::new(Shared {
            result: None,
            waker: None,
        }));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("ringport-read-dir".into())
            .spawn(move || {
                let r = f();
                let waker = {
                    let mut s = theirs.lock().unwrap_or_else(|p| p.into_inner());
                    s.result = Some(r);
                    s.waker.take()
                };
                if let Some(w) = waker {
                    w.wake();
                }
            })?;
        Ok(Blocking { shared })
    }
}

impl<T> Future for Blocking<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
