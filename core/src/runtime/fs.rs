//! Files: positional reads and writes, each one op with an owned buffer.

use super::net::Fd;
use super::op::submit;
use crate::buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut};
use crate::fs::{c_path, run_or_helper, Dir};
use crate::op::{FileStat, Offset, Op};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How to open a file (like `std::fs::OpenOptions`).
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    mode: u32,
    custom_flags: i32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Nothing set; mode 0o666 (before the umask).
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            mode: 0o666,
            custom_flags: 0,
        }
    }
    /// Open for reading.
    pub fn read(&mut self, v: bool) -> &mut Self {
        self.read = v;
        self
    }
    /// Open for writing.
    pub fn write(&mut self, v: bool) -> &mut Self {
        self.write = v;
        self
    }
    /// Writes go to the end.
    pub fn append(&mut self, v: bool) -> &mut Self {
        self.append = v;
        self
    }
    /// Truncate to 0 bytes.
    pub fn truncate(&mut self, v: bool) -> &mut Self {
        self.truncate = v;
        self
    }
    /// Create if missing.
    pub fn create(&mut self, v: bool) -> &mut Self {
        self.create = v;
        self
    }
    /// Create, failing with `AlreadyExists` if the path exists.
    pub fn create_new(&mut self, v: bool) -> &mut Self {
        self.create_new = v;
        self
    }
    /// Permission bits of a created file.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }
    /// Extra `O_*` flags (e.g. `O_DIRECT`).
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom_flags = flags;
        self
    }

    fn flags(&self) -> io::Result<i32> {
        let mut f = match (self.read, self.write || self.append) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "open: neither read nor write access was asked for",
                ))
            }
        };
        if self.append {
            f |= libc::O_APPEND;
        }
        if self.truncate {
            f |= libc::O_TRUNC;
        }
        if self.create_new {
            f |= libc::O_CREAT | libc::O_EXCL;
        } else if self.create {
            f |= libc::O_CREAT;
        }
        Ok(f | self.custom_flags | libc::O_CLOEXEC)
    }

    /// Opens `path` through the driver.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let flags = self.flags()?;
        let path = CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let op = Op::OpenAt {
            dir: libc::AT_FDCWD,
            path,
            flags,
            mode: self.mode,
        };
        let fd = submit(op, None).await.0? as RawFd;
        Ok(File { fd: Fd::new(fd) })
    }

    /// Opens `path` relative to `dir` with `openat2`, under the `resolve`
    /// rules (`libc::RESOLVE_BENEATH`, `RESOLVE_NO_SYMLINKS`,
    /// `RESOLVE_NO_MAGICLINKS`, `RESOLVE_IN_ROOT`, ...). A path the rules
    /// refuse fails with the kernel's error: `EXDEV` for one that leaves
    /// `dir` (`..`, an absolute path or symlink), `ELOOP` for a symlink under
    /// `RESOLVE_NO_SYMLINKS`. Linux only (`Unsupported` elsewhere).
    pub async fn open_at(
        &self,
        dir: &Dir,
        path: impl AsRef<Path>,
        resolve: u64,
    ) -> io::Result<File> {
        let flags = self.flags()?;
        // openat2 refuses a mode without O_CREAT (or O_TMPFILE).
        let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) != 0;
        let op = Op::OpenAt2 {
            dir: dir.as_raw_fd(),
            path: c_path(path.as_ref())?,
            flags,
            mode: if creates { self.mode } else { 0 },
            resolve,
        };
        let fd = submit(op, None).await.0? as RawFd;
        Ok(File { fd: Fd::new(fd) })
    }
}

/// An open file. Reads and writes are positional and may run concurrently.
#[derive(Debug)]
pub struct File {
    fd: Fd,
}

impl File {
    /// Opens `path` for reading.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Creates (or truncates) `path` for writing.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Opens `path` for reading, refusing any path that resolves outside
    /// `dir`: `..` above it, an absolute path, or a symlink leading out
    /// (`EXDEV`), and magic links such as `/proc/self/fd/N` (`ELOOP`).
    /// Symlinks that stay inside `dir` are followed. This is `openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`; see [`OpenOptions::open_at`]
    /// for other rules.
    pub async fn open_beneath(dir: &Dir, path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .open_at(
                dir,
                path,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
            )
            .await
    }

    /// Sets the file's size (`ftruncate`): cut, or extended with zeroes,
    /// like `std::fs::File::set_len` (on a helper thread where the backend
    /// has no such op: io_uring before Linux 6.9).
    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        let op = Op::Ftruncate {
            fd: self.fd.raw(),
            len,
        };
        run_or_helper(op, Some(&self.fd)).await.map(|_| ())
    }

    /// Allocates disk space for `offset..offset + len` (`fallocate` with
    /// mode 0), extending the file's size if the range ends past it, so
    /// later writes there cannot fail for lack of space. `InvalidInput` for
    /// `len` 0; `EOPNOTSUPP` on a file system that cannot.
    pub async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let op = Op::Fallocate {
            fd: self.fd.raw(),
            mode: 0,
            offset,
            len,
        };
        submit(op, None).await.0.map(|_| ())
    }

    /// Takes over an open `std::fs::File`.
    pub fn from_std(f: std::fs::File) -> File {
        File {
            fd: Fd::new(f.into_raw_fd()),
        }
    }

    /// Reads at `pos` into `buf` (from its start); the count read, 0 at end of file.
    pub async fn read_at<B: IoBufMut>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        let op = Op::Read {
            fd: self.fd.raw(),
            offset: Offset::At(pos),
            buf: AnyBufMut::new(buf),
        };
        let (res, op) = submit(op, None).await;
        let buf = op
            .into_buf_mut()
            .and_then(|b| b.downcast().ok())
            .expect("ringport driver broke its contract: the op came back changed");
        (res, buf)
    }

    /// Writes `buf`'s initialised bytes at `pos`; the count written (may be short).
    pub async fn write_at<B: IoBuf>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        let op = Op::Write {
            fd: self.fd.raw(),
            offset: Offset::At(pos),
            buf: AnyBuf::new(buf),
        };
        let (res, op) = submit(op, None).await;
        let buf = op
            .into_buf()
            .and_then(|b| b.downcast().ok())
            .expect("ringport driver broke its contract: the op came back changed");
        (res, buf)
    }

    /// Writes all of `buf` at `pos`, looping over short writes.
    pub async fn write_all_at<B: IoBuf>(&self, buf: B, pos: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        let mut slice = buf.slice(..total);
        while done < total {
            let (res, s) = self.write_at(slice, pos + done as u64).await;
            slice = s;
            match res {
                Ok(0) => {
                    return (
                        Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                        slice.into_inner(),
                    )
                }
                Ok(n) => {
                    done += n;
                    let inner = slice.into_inner();
                    slice = inner.slice(done..total);
                }
                Err(e) => return (Err(e), slice.into_inner()),
            }
        }
        (Ok(()), slice.into_inner())
    }

    /// Reads at `pos` into several buffers, filled in order.
    pub async fn readv_at<B: IoBufMut>(
        &self,
        bufs: Vec<B>,
        pos: u64,
    ) -> (io::Result<usize>, Vec<B>) {
        let op = Op::Readv {
            fd: self.fd.raw(),
            offset: Offset::At(pos),
            bufs: bufs.into_iter().map(AnyBufMut::new).collect(),
        };
        let (res, op) = submit(op, None).await;
        let bufs = match op {
            Op::Readv { bufs, .. } => bufs
                .into_iter()
                .map(|b| {
                    b.downcast()
                        .unwrap_or_else(|_| panic!("ringport driver changed a buffer"))
                })
                .collect(),
            _ => panic!("ringport driver broke its contract: the op came back changed"),
        };
        (res, bufs)
    }

    /// Writes several buffers at `pos`, in order.
    pub async fn writev_at<B: IoBuf>(&self, bufs: Vec<B>, pos: u64) -> (io::Result<usize>, Vec<B>) {
        let op = Op::Writev {
            fd: self.fd.raw(),
            offset: Offset::At(pos),
            bufs: bufs.into_iter().map(AnyBuf::new).collect(),
        };
        let (res, op) = submit(op, None).await;
        let bufs = match op {
            Op::Writev { bufs, .. } => bufs
                .into_iter()
                .map(|b| {
                    b.downcast()
                        .unwrap_or_else(|_| panic!("ringport driver changed a buffer"))
                })
                .collect(),
            _ => panic!("ringport driver broke its contract: the op came back changed"),
        };
        (res, bufs)
    }

    /// `fsync`: data and metadata reach the disk.
    pub async fn sync_all(&self) -> io::Result<()> {
        let op = Op::Fsync {
            fd: self.fd.raw(),
            data_only: false,
        };
        submit(op, None).await.0.map(|_| ())
    }

    /// `fdatasync`: data reaches the disk.
    pub async fn sync_data(&self) -> io::Result<()> {
        let op = Op::Fsync {
            fd: self.fd.raw(),
            data_only: true,
        };
        submit(op, None).await.0.map(|_| ())
    }

    /// Size, mode and times.
    pub async fn metadata(&self) -> io::Result<FileStat> {
        let op = Op::Stat {
            fd: self.fd.raw(),
            stat: Box::default(),
        };
        let (res, op) = submit(op, None).await;
        res?;
        match op {
            Op::Stat { stat, .. } => Ok(*stat),
            _ => panic!("ringport driver broke its contract: the op came back changed"),
        }
    }

    /// Closes through the driver: the fd's ops are cancelled and waited for
    /// first; the handle is consumed, so nothing can reach a reused fd number.
    pub async fn close(self) -> io::Result<()> {
        self.fd.close().await
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl IntoRawFd for File {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw()
    }
}
