//! The operation vocabulary, defined once for every backend.
//!
//! Each [`Op`] variant owns what it needs: its buffers, its address, its path.
//! Submitting moves the `Op` into the driver; its completion moves it back, so
//! a read's buffer returns inside `Op::Read`. Output fields (a peer address, a
//! file's metadata) are filled in by the driver before the completion is
//! delivered. Anything the kernel reads or writes after submission lives on the
//! heap (a buffer, a `Box`), never inline, so the `Op` itself may move.

use crate::buf::{AnyBuf, AnyBufMut};
use crate::bufpool::{BufPool, PooledBuf};
use crate::fixedbuf::FixedBuf;
use std::ffi::CString;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Where a read or write happens in its fd.
///
/// `Current` is a stream read or write (pipes, sockets, terminals, or a file's
/// own position): such ops are performed in submission order per fd and
/// direction. `At(n)` is positional (`pread`/`pwrite`); `n` above
/// `i64::MAX` (the largest `off_t`) is refused at submit with `InvalidInput`.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Offset {
    /// At this byte offset, leaving the fd's position alone.
    At(u64),
    /// At the fd's current position, advancing it.
    Current,
}

impl Offset {
    /// The largest offset a file can have (`off_t` is signed).
    pub const MAX: u64 = i64::MAX as u64;

    /// The offset as the kernel's io_uring and `preadv2` take it: `-1` (all
    /// ones) for the current position.
    pub fn to_raw(self) -> u64 {
        match self {
            Offset::At(n) => n,
            Offset::Current => u64::MAX,
        }
    }

    /// The explicit offset, if there is one.
    pub fn at(self) -> Option<u64> {
        match self {
            Offset::At(n) => Some(n),
            Offset::Current => None,
        }
    }

    /// `n` bytes further on (the current position stays the current position).
    pub fn advanced(self, n: usize) -> Offset {
        match self {
            Offset::At(o) => Offset::At(o.saturating_add(n as u64)),
            Offset::Current => Offset::Current,
        }
    }

    fn validate(self) -> io::Result<()> {
        match self {
            Offset::At(n) if n > Offset::MAX => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "file offset {n} is beyond the largest file offset ({})",
                    Offset::MAX
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl From<u64> for Offset {
    fn from(n: u64) -> Offset {
        Offset::At(n)
    }
}

/// Identifies one submitted operation within one driver. It carries a
/// generation, so an id whose op has completed never matches a later op.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct OpId(u64);

impl OpId {
    /// Builds an id from a table slot and a generation number.
    pub fn new(slot: u32, generation: u32) -> OpId {
        OpId(((generation as u64) << 32) | slot as u64)
    }
    /// The table slot.
    pub fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    /// The generation number.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as one number (what io_uring echoes as `user_data`).
    pub fn to_u64(self) -> u64 {
        self.0
    }
    /// The id from one number made by [`OpId::to_u64`].
    pub fn from_u64(v: u64) -> OpId {
        OpId(v)
    }
}

/// Which side(s) of a socket `shutdown` closes.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum ShutdownHow {
    /// No more receives.
    Read,
    /// No more sends; the peer reads end-of-stream.
    Write,
    /// Both.
    Both,
}

impl ShutdownHow {
    /// The `how` argument of `shutdown(2)`.
    pub fn to_raw(self) -> i32 {
        match self {
            ShutdownHow::Read => libc::SHUT_RD,
            ShutdownHow::Write => libc::SHUT_WR,
            ShutdownHow::Both => libc::SHUT_RDWR,
        }
    }
}

/// What a cancel operation aims at.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum CancelTarget {
    /// One operation.
    Op(OpId),
    /// Every operation on this fd (CancelIoEx with no OVERLAPPED).
    Fd(RawFd),
}

/// A socket address in the kernel's layout, with room for any family.
#[derive(Clone)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    /// An empty address with room for any family (an output of accept or
    /// recvfrom).
    pub fn empty() -> SockAddr {
        SockAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            storage: unsafe { mem::zeroed() },
            len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The address of a Unix-domain socket at `path`.
    pub fn unix(path: &std::path::Path) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let mut a = SockAddr::empty();
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let un = unsafe { &mut *(&mut a.storage as *mut _ as *mut libc::sockaddr_un) };
        if bytes.len() >= un.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unix socket path is {} bytes; the limit is {}",
                    bytes.len(),
                    un.sun_path.len() - 1
                ),
            ));
        }
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in un.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        a.len = (mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(a)
    }

    /// Builds an address from raw parts, as a caller porting C code might.
    /// It is checked when an operation using it is submitted.
    pub fn from_raw(storage: libc::sockaddr_storage, len: libc::socklen_t) -> SockAddr {
        SockAddr { storage, len }
    }

    /// The address family (`AF_INET`, `AF_INET6`, `AF_UNIX`, ...).
    pub fn family(&self) -> i32 {
        self.storage.ss_family as i32
    }
    /// Pointer to the address, for syscalls.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }
    /// Mutable pointer to the address, for syscalls that fill it.
    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        &mut self.storage as *mut _ as *mut libc::sockaddr
    }
    /// The address length in bytes.
    pub fn len(&self) -> libc::socklen_t {
        self.len
    }
    /// Whether the length is zero (no address).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Mutable length, for syscalls that fill the address.
    pub fn len_mut(&mut self) -> &mut libc::socklen_t {
        &mut self.len
    }
    /// Resets the length to the whole storage, before a syscall fills it.
    pub fn reset_len(&mut self) {
        self.len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }

    /// Checks that the family is one ringport knows and that the length fits
    /// it; otherwise `InvalidInput` naming what is wrong.
    pub fn validate(&self) -> io::Result<()> {
        let need = match self.family() {
            libc::AF_INET => mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => mem::size_of::<libc::sockaddr_in6>(),
            libc::AF_UNIX => mem::size_of::<libc::sa_family_t>(),
            f => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "socket address family {f} is not supported (AF_INET, AF_INET6 or AF_UNIX)"
                    ),
                ))
            }
        };
        let len = self.len as usize;
        if len < need || len > mem::size_of::<libc::sockaddr_storage>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket address length {len} is wrong for family {} (needs {need}..={})",
                    self.family(),
                    mem::size_of::<libc::sockaddr_storage>()
                ),
            ));
        }
        Ok(())
    }

    /// The address as an IP socket address, if it is one.
    pub fn as_socket(&self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: family and length say this is a sockaddr_in.
                let a = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: family and length say this is a sockaddr_in6.
                let a = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        let mut a = SockAddr::empty();
        match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                let s = unsafe { &mut *(a.as_mut_ptr() as *mut libc::sockaddr_in) };
                s.sin_family = libc::AF_INET as libc::sa_family_t;
                s.sin_port = v4.port().to_be();
                s.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                a.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                let s = unsafe { &mut *(a.as_mut_ptr() as *mut libc::sockaddr_in6) };
                s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                s.sin6_port = v6.port().to_be();
                s.sin6_addr.s6_addr = v6.ip().octets();
                s.sin6_flowinfo = v6.flowinfo();
                s.sin6_scope_id = v6.scope_id();
                a.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        a
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.as_socket() {
            Some(s) => write!(f, "{s}"),
            None => write!(f, "SockAddr(family {}, len {})", self.family(), self.len),
        }
    }
}

/// File metadata, as `statx`/`fstat` report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Inode number.
    pub ino: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last modification, seconds since the epoch.
    pub mtime_sec: i64,
    /// Last modification, nanoseconds part.
    pub mtime_nsec: u32,
}

// The casts differ in need between platforms (mode_t is u16 on macOS).
#[allow(clippy::unnecessary_cast)]
impl FileStat {
    /// Fills a `FileStat` from `fstat(2)`'s result.
    pub fn from_stat(st: &libc::stat) -> FileStat {
        FileStat {
            size: st.st_size as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid,
            gid: st.st_gid,
            ino: st.st_ino as u64,
            blocks: st.st_blocks as u64,
            mtime_sec: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
        }
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT as u32 == libc::S_IFREG as u32
    }
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT as u32 == libc::S_IFDIR as u32
    }
}

/// One operation and everything it owns.
#[derive(Debug)]
pub enum Op {
    /// Does nothing; completes with 0.
    Nop,
    /// `pread` (or `read` at [`Offset::Current`]) into `buf`.
    Read {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// Filled from its start; its initialised length becomes the count read.
        buf: AnyBufMut,
    },
    /// `pwrite` (or `write` at [`Offset::Current`]) of `buf`'s initialised bytes.
    /// A stream write completes only when every byte is written, or on error.
    Write {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// The bytes to write.
        buf: AnyBuf,
    },
    /// `preadv` into several buffers, filled in order.
    Readv {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// The buffers.
        bufs: Vec<AnyBufMut>,
    },
    /// `pwritev` of several buffers, in order.
    Writev {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// The buffers.
        bufs: Vec<AnyBuf>,
    },
    /// `recv` on a socket.
    Recv {
        /// The socket.
        fd: RawFd,
        /// Filled from its start.
        buf: AnyBufMut,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `recv` into a buffer of `pool`, chosen only when data arrives (see
    /// [`crate::bufpool`]); `ENOBUFS` if none is free then.
    RecvPooled {
        /// The socket.
        fd: RawFd,
        /// Where the buffer comes from.
        pool: BufPool,
        /// `MSG_*` flags.
        flags: i32,
        /// Output: the bytes received, in a buffer of the pool.
        got: Option<PooledBuf>,
    },
    /// `pread` (or `read` at [`Offset::Current`]) into a buffer of `pool`,
    /// chosen only when data is there (see [`crate::bufpool`]).
    ReadPooled {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// Where the buffer comes from.
        pool: BufPool,
        /// Output: the bytes read, in a buffer of the pool.
        got: Option<PooledBuf>,
    },
    /// `pread` (or `read` at [`Offset::Current`]) into a registered buffer
    /// (see [`crate::fixedbuf`]): io_uring's READ_FIXED where the buffer's
    /// registry is registered with the ring, a plain read elsewhere. The
    /// buffer is filled from its start; its length becomes the count read.
    ReadFixed {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// The buffer, owned by the op until its completion.
        buf: FixedBuf,
    },
    /// `pwrite` (or `write` at [`Offset::Current`]) of a registered
    /// buffer's bytes (its length): io_uring's WRITE_FIXED where its registry
    /// is registered with the ring, a plain write elsewhere. At the current
    /// position a stream write (it completes when every byte is written).
    WriteFixed {
        /// The fd.
        fd: RawFd,
        /// Where in the fd.
        offset: Offset,
        /// The bytes to write, owned by the op until its completion.
        buf: FixedBuf,
    },
    /// `send` on a socket (always with `MSG_NOSIGNAL`). On a stream socket it
    /// completes only when every byte is sent, or on error.
    Send {
        /// The socket.
        fd: RawFd,
        /// The bytes to send.
        buf: AnyBuf,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `send` without a copy: io_uring's SEND_ZC, which holds the buffer until
    /// the kernel says it is done with it (its notification); a plain
    /// [`Op::Send`] on other backends. A stream write, like `Send`.
    SendZc {
        /// The socket.
        fd: RawFd,
        /// The bytes to send.
        buf: AnyBuf,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `recvfrom`: a datagram and the address it came from.
    RecvFrom {
        /// The socket.
        fd: RawFd,
        /// Filled from its start.
        buf: AnyBufMut,
        /// Output: the sender's address.
        addr: Box<SockAddr>,
    },
    /// `sendto` a given address.
    SendTo {
        /// The socket.
        fd: RawFd,
        /// The bytes to send.
        buf: AnyBuf,
        /// The destination.
        addr: Box<SockAddr>,
    },
    /// `accept`: the result is the new socket's fd (close-on-exec; non-blocking
    /// where the backend needs it).
    Accept {
        /// The listening socket.
        fd: RawFd,
        /// Output: the peer's address.
        addr: Box<SockAddr>,
    },
    /// Accepts connections until cancelled or an error: one submission, a
    /// result (a new socket's fd) per connection, each taken with
    /// [`Driver::take_shot`](crate::driver::Driver::take_shot); the op
    /// itself completes once, at its end. Native multishot accept on
    /// io_uring, repeated accepts at readiness on the shim.
    AcceptMulti {
        /// The listening socket.
        fd: RawFd,
    },
    /// Receives into buffers of `pool` until the peer closes, the pool runs
    /// dry (`ENOBUFS`), an error, or a cancel: a result with a
    /// [`PooledBuf`] per arrival, each taken with
    /// [`Driver::take_shot`](crate::driver::Driver::take_shot); the op
    /// completes once, at its end. Native multishot recv on io_uring.
    RecvMulti {
        /// The socket.
        fd: RawFd,
        /// Where the buffers come from.
        pool: BufPool,
    },
    /// `connect` a socket to `addr`.
    Connect {
        /// The socket.
        fd: RawFd,
        /// Where to.
        addr: Box<SockAddr>,
    },
    /// `shutdown` one or both directions of a socket.
    Shutdown {
        /// The socket.
        fd: RawFd,
        /// Which direction(s).
        how: ShutdownHow,
    },
    /// Cancels every op on `fd`, waits for their completions, then closes it.
    Close {
        /// The fd.
        fd: RawFd,
    },
    /// `fsync` or `fdatasync`.
    Fsync {
        /// The fd.
        fd: RawFd,
        /// `fdatasync` instead of `fsync`.
        data_only: bool,
    },
    /// `openat`: the result is the new fd (close-on-exec is always added).
    OpenAt {
        /// Directory fd (open until the op completes), or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The path.
        path: CString,
        /// `O_*` flags.
        flags: i32,
        /// Permission bits for a created file.
        mode: u32,
    },
    /// `statx`/`fstat` of an open fd.
    Stat {
        /// The fd.
        fd: RawFd,
        /// Output: the metadata.
        stat: Box<FileStat>,
    },
    /// Completes with `TimedOut` (ETIME) at `deadline`.
    Timeout {
        /// When.
        deadline: Instant,
    },
    /// Asks for other ops to end early. Result: how many ops it reached
    /// (1 for [`CancelTarget::Op`]); `NotFound` when none was in flight.
    /// The cancelled ops still complete, each on its own.
    Cancel {
        /// What to cancel.
        target: CancelTarget,
    },
    /// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`, ...);
    /// the result is the ready events.
    Poll {
        /// The fd.
        fd: RawFd,
        /// `POLL*` bits.
        events: i16,
    },
    /// `openat2`: `openat` with rules for how the path may be resolved
    /// (`RESOLVE_BENEATH`, `RESOLVE_NO_SYMLINKS`, `RESOLVE_NO_MAGICLINKS`,
    /// ...). The result is the new fd (close-on-exec is always added). `dir`
    /// is the op's fd: its close waits for the open.
    OpenAt2 {
        /// Directory fd the path is resolved from, or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The path.
        path: CString,
        /// `O_*` flags.
        flags: i32,
        /// Permission bits for a created file (only with `O_CREAT` or
        /// `O_TMPFILE`; otherwise it must be 0).
        mode: u32,
        /// `RESOLVE_*` bits.
        resolve: u64,
    },
    /// Metadata by path (`statx`/`fstatat`), following a final symlink or not.
    StatAt {
        /// Directory fd (open until the op completes), or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The path.
        path: CString,
        /// Follow a symlink at the end of the path (`std::fs::metadata`), or
        /// describe the link itself (`std::fs::symlink_metadata`).
        follow: bool,
        /// Output: the metadata.
        stat: Box<FileStat>,
    },
    /// `renameat2`: moves `from` to `to`, replacing `to` atomically.
    RenameAt {
        /// Directory fd of `from` (open until the op completes), or `libc::AT_FDCWD`.
        from_dir: RawFd,
        /// The old path.
        from: CString,
        /// Directory fd of `to` (open until the op completes), or `libc::AT_FDCWD`.
        to_dir: RawFd,
        /// The new path.
        to: CString,
        /// `RENAME_*` flags (0 for a plain `rename`; other values only on Linux).
        flags: u32,
    },
    /// `unlinkat`: removes a file, or an empty directory with
    /// `libc::AT_REMOVEDIR`.
    UnlinkAt {
        /// Directory fd (open until the op completes), or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The path.
        path: CString,
        /// 0 or `libc::AT_REMOVEDIR`.
        flags: i32,
    },
    /// `mkdirat`: creates a directory.
    MkdirAt {
        /// Directory fd (open until the op completes), or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The path.
        path: CString,
        /// Permission bits (before the umask).
        mode: u32,
    },
    /// `symlinkat`: creates `path`, a symlink whose contents are `target`.
    SymlinkAt {
        /// What the link points at (not resolved now).
        target: CString,
        /// Directory fd of `path` (open until the op completes), or `libc::AT_FDCWD`.
        dir: RawFd,
        /// The link to create.
        path: CString,
    },
    /// `linkat`: a new name `to` for the file at `from`.
    LinkAt {
        /// Directory fd of `from` (open until the op completes), or `libc::AT_FDCWD`.
        from_dir: RawFd,
        /// The existing path.
        from: CString,
        /// Directory fd of `to` (open until the op completes), or `libc::AT_FDCWD`.
        to_dir: RawFd,
        /// The new name.
        to: CString,
        /// 0 or `libc::AT_SYMLINK_FOLLOW`.
        flags: i32,
    },
    /// `fallocate`: allocates (or with `mode` bits, punches or zeroes) the
    /// byte range `offset..offset + len` of a file.
    Fallocate {
        /// The file.
        fd: RawFd,
        /// `FALLOC_FL_*` bits; 0 allocates and extends the size if needed
        /// (the only mode outside Linux).
        mode: i32,
        /// Start of the range.
        offset: u64,
        /// Length of the range (more than 0).
        len: u64,
    },
    /// `ftruncate`: sets a file's size to `len`, cutting or zero-extending it.
    Ftruncate {
        /// The file.
        fd: RawFd,
        /// The new size.
        len: u64,
    },
    /// Sends `len` bytes of `file` from `offset` on the stream socket `fd`
    /// (Windows' `TransmitFile`). It completes once, with the count sent: all
    /// `len` bytes, fewer if the file ends first, or an error. A stream write
    /// (ordered with the socket's sends). `file`'s position is left alone.
    SendFile {
        /// The socket.
        fd: RawFd,
        /// The file the bytes come from, a regular file. The op holds it as
        /// its second fd ([`Op::pinned_fd`]): a close of `file` through
        /// the driver asks the op to end and waits for it, so the number
        /// is never reused under the kernel's reads. Whoever closes `file`
        /// without the driver must wait for the completion first.
        file: RawFd,
        /// Where in the file to start.
        offset: u64,
        /// How many bytes to send at most.
        len: u64,
    },
}

/// Defines [`OpKind`], its `ALL` list and its names from one table, so the
/// three can never disagree.
macro_rules! op_kinds {
    ($($kind:ident => $name:literal: $doc:literal,)*) => {
        /// The kind of an [`Op`], for capability tables and error messages.
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
        pub enum OpKind {
            $(#[doc = $doc] $kind,)*
        }

        impl OpKind {
            /// Every kind, in declaration order.
            pub const ALL: [OpKind; [$(OpKind::$kind),*].len()] = [$(OpKind::$kind),*];

            /// The name used in messages (`read`, `sendto`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(OpKind::$kind => $name,)*
                }
            }
        }

        impl Op {
            /// The kind of this op.
            pub fn kind(&self) -> OpKind {
                match self {
                    $(Op::$kind { .. } => OpKind::$kind,)*
                }
            }
        }
    };
}

op_kinds! {
    Nop => "nop": "[`Op::Nop`]",
    Read => "read": "[`Op::Read`]",
    Write => "write": "[`Op::Write`]",
    Readv => "readv": "[`Op::Readv`]",
    Writev => "writev": "[`Op::Writev`]",
    Recv => "recv": "[`Op::Recv`]",
    RecvPooled => "recv_pooled": "[`Op::RecvPooled`]",
    ReadPooled => "read_pooled": "[`Op::ReadPooled`]",
    Send => "send": "[`Op::Send`]",
    SendZc => "send_zc": "[`Op::SendZc`]",
    RecvFrom => "recvfrom": "[`Op::RecvFrom`]",
    SendTo => "sendto": "[`Op::SendTo`]",
    Accept => "accept": "[`Op::Accept`]",
    AcceptMulti => "accept_multi": "[`Op::AcceptMulti`]",
    RecvMulti => "recv_multi": "[`Op::RecvMulti`]",
    Connect => "connect": "[`Op::Connect`]",
    Shutdown => "shutdown": "[`Op::Shutdown`]",
    Close => "close": "[`Op::Close`]",
    Fsync => "fsync": "[`Op::Fsync`]",
    OpenAt => "openat": "[`Op::OpenAt`]",
    Stat => "stat": "[`Op::Stat`]",
    Timeout => "timeout": "[`Op::Timeout`]",
    Cancel => "cancel": "[`Op::Cancel`]",
    Poll => "poll": "[`Op::Poll`]",
    OpenAt2 => "openat2": "[`Op::OpenAt2`]",
    StatAt => "statat": "[`Op::StatAt`]",
    RenameAt => "renameat": "[`Op::RenameAt`]",
    UnlinkAt => "unlinkat": "[`Op::UnlinkAt`]",
    MkdirAt => "mkdirat": "[`Op::MkdirAt`]",
    SymlinkAt => "symlinkat": "[`Op::SymlinkAt`]",
    LinkAt => "linkat": "[`Op::LinkAt`]",
    Fallocate => "fallocate": "[`Op::Fallocate`]",
    Ftruncate => "ftruncate": "[`Op::Ftruncate`]",
    SendFile => "sendfile": "[`Op::SendFile`]",
    ReadFixed => "read_fixed": "[`Op::ReadFixed`]",
    WriteFixed => "write_fixed": "[`Op::WriteFixed`]",
}

impl Op {
    /// The fd the op works on, if any.
    pub fn fd(&self) -> Option<RawFd> {
        match *self {
            Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Readv { fd, .. }
            | Op::Writev { fd, .. }
            | Op::Recv { fd, .. }
            | Op::RecvPooled { fd, .. }
            | Op::ReadPooled { fd, .. }
            | Op::Send { fd, .. }
            | Op::SendZc { fd, .. }
            | Op::RecvFrom { fd, .. }
            | Op::SendTo { fd, .. }
            | Op::Accept { fd, .. }
            | Op::AcceptMulti { fd }
            | Op::RecvMulti { fd, .. }
            | Op::Connect { fd, .. }
            | Op::Shutdown { fd, .. }
            | Op::Close { fd }
            | Op::Fsync { fd, .. }
            | Op::Stat { fd, .. }
            | Op::Poll { fd, .. }
            | Op::Fallocate { fd, .. }
            | Op::Ftruncate { fd, .. }
            | Op::SendFile { fd, .. }
            | Op::ReadFixed { fd, .. }
            | Op::WriteFixed { fd, .. } => Some(fd),
            // An open beneath a directory works on it: a close of the
            // directory waits for the open, so the number is never reused
            // (and the rules applied to another directory) under it.
            Op::OpenAt2 { dir, .. } if dir != libc::AT_FDCWD => Some(dir),
            // Other path ops name a directory, not an fd they work on.
            Op::Nop
            | Op::OpenAt { .. }
            | Op::OpenAt2 { .. }
            | Op::StatAt { .. }
            | Op::RenameAt { .. }
            | Op::UnlinkAt { .. }
            | Op::MkdirAt { .. }
            | Op::SymlinkAt { .. }
            | Op::LinkAt { .. }
            | Op::Timeout { .. }
            | Op::Cancel { .. } => None,
        }
    }

    /// Which per-fd queue the op must wait in to keep submission order, if any:
    /// reads and writes at [`Offset::Current`], and recv/send, are ordered per
    /// fd and direction.
    pub fn direction(&self) -> Option<Direction> {
        match self {
            Op::Read { offset, .. }
            | Op::Readv { offset, .. }
            | Op::ReadPooled { offset, .. }
            | Op::ReadFixed { offset, .. }
                if *offset == Offset::Current =>
            {
                Some(Direction::Read)
            }
            Op::Write { offset, .. }
            | Op::Writev { offset, .. }
            | Op::WriteFixed { offset, .. }
                if *offset == Offset::Current =>
            {
                Some(Direction::Write)
            }
            Op::Recv { .. }
            | Op::RecvFrom { .. }
            | Op::RecvPooled { .. }
            | Op::RecvMulti { .. } => Some(Direction::Read),
            Op::Send { .. } | Op::SendZc { .. } | Op::SendTo { .. } | Op::SendFile { .. } => {
                Some(Direction::Write)
            }
            _ => None,
        }
    }

    /// The fd this op made, if it is one that makes an fd (accept, open) and
    /// it succeeded with `result`. A completion that will never be delivered
    /// must have this fd closed, or it leaks.
    #[inline]
    pub fn made_fd(&self, result: &io::Result<usize>) -> Option<RawFd> {
        match (self, result) {
            (Op::OpenAt { .. } | Op::OpenAt2 { .. } | Op::Accept { .. }, Ok(fd)) => {
                Some(*fd as RawFd)
            }
            _ => None,
        }
    }

    /// Whether the op has a result per event before its one completion
    /// (multishot accept and recv): those are taken with
    /// [`Driver::take_shot`](crate::driver::Driver::take_shot).
    pub fn is_multishot(&self) -> bool {
        matches!(self, Op::AcceptMulti { .. } | Op::RecvMulti { .. })
    }

    /// The fd one result of a multishot op made (an accepted connection):
    /// a result nobody will take must have it closed.
    pub fn shot_made_fd(&self, result: &io::Result<usize>) -> Option<RawFd> {
        match (self, result) {
            (Op::AcceptMulti { .. }, Ok(fd)) => Some(*fd as RawFd),
            _ => None,
        }
    }

    /// The op's second fd, besides [`Op::fd`]: one it reads while it runs
    /// but is not queued on (a send_file's file). A close of it waits for
    /// the op, as a close of the op's own fd does, and asks it to end.
    #[inline]
    pub fn pinned_fd(&self) -> Option<RawFd> {
        match self {
            Op::SendFile { file, .. } => Some(*file),
            _ => None,
        }
    }

    /// The read buffer the op carries (read, recv, recvfrom), given back.
    pub fn into_buf_mut(self) -> Option<AnyBufMut> {
        match self {
            Op::Read { buf, .. } | Op::Recv { buf, .. } | Op::RecvFrom { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// The write buffer the op carries (write, send, sendto), given back.
    pub fn into_buf(self) -> Option<AnyBuf> {
        match self {
            Op::Write { buf, .. }
            | Op::Send { buf, .. }
            | Op::SendZc { buf, .. }
            | Op::SendTo { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// The registered buffer the op carries (a fixed read or write), given
    /// back.
    pub fn into_fixed_buf(self) -> Option<FixedBuf> {
        match self {
            Op::ReadFixed { buf, .. } | Op::WriteFixed { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// Checks what can be checked before any syscall: socket addresses, the
    /// fd not being negative, the iovec count. Every backend calls this at
    /// submit, so bad input gets the same error everywhere.
    pub fn validate(&self) -> io::Result<()> {
        if let Some(fd) = self.fd() {
            check_fd(fd)?;
        }
        if let Some(fd) = self.pinned_fd() {
            check_fd(fd)?;
        }
        if let Op::Read { offset, .. }
        | Op::Write { offset, .. }
        | Op::Readv { offset, .. }
        | Op::Writev { offset, .. }
        | Op::ReadPooled { offset, .. }
        | Op::ReadFixed { offset, .. }
        | Op::WriteFixed { offset, .. } = self
        {
            offset.validate()?;
        }
        match self {
            Op::OpenAt2 { dir, .. }
            | Op::StatAt { dir, .. }
            | Op::UnlinkAt { dir, .. }
            | Op::MkdirAt { dir, .. }
            | Op::SymlinkAt { dir, .. } => check_dir(*dir),
            Op::RenameAt {
                from_dir, to_dir, ..
            }
            | Op::LinkAt {
                from_dir, to_dir, ..
            } => check_dir(*from_dir).and_then(|_| check_dir(*to_dir)),
            Op::Fallocate { offset, len, .. } => {
                if *len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "fallocate of 0 bytes (the length must be more than 0)",
                    ));
                }
                check_end(*offset, *len, "fallocate")
            }
            Op::Ftruncate { len, .. } => check_end(0, *len, "ftruncate"),
            // Any length: the op ends at the end of the file.
            Op::SendFile { offset, .. } => check_end(*offset, 0, "sendfile"),
            Op::SendTo { addr, .. } | Op::Connect { addr, .. } => addr.validate(),
            Op::Readv { bufs, .. } if bufs.len() > 1024 => Err(too_many_iovecs(bufs.len())),
            Op::Writev { bufs, .. } if bufs.len() > 1024 => Err(too_many_iovecs(bufs.len())),
            _ => Ok(()),
        }
    }
}

/// The highest number of open files this process may have (the hard
/// `RLIMIT_NOFILE`), read once and read again when an fd is at or above it
/// (the limit may have been raised since).
static FD_LIMIT: AtomicU64 = AtomicU64::new(0);

fn fd_limit(refresh: bool) -> u64 {
    let cached = FD_LIMIT.load(Ordering::Relaxed);
    if cached != 0 && !refresh {
        return cached;
    }
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one plain struct we own.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let limit = if r == 0 {
        rl.rlim_max.max(rl.rlim_cur)
    } else {
        // Without a limit to read, trust the kernel's own ceiling.
        1 << 20
    };
    let limit = limit.min(i32::MAX as u64 + 1);
    FD_LIMIT.store(limit, Ordering::Relaxed);
    limit
}

/// Whether `fd` can name an open file of this process: not negative, and
/// below the hard open-file limit. Per-fd tables index by fd number, so a
/// number far outside that range must be refused before it sizes a table.
/// An fd that passes may still be closed; the syscall then says `EBADF`.
pub fn check_fd(fd: RawFd) -> io::Result<()> {
    if fd < 0 || (fd as u64 >= fd_limit(false) && fd as u64 >= fd_limit(true)) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(())
}

/// A directory fd of a path op: `AT_FDCWD`, or an fd [`check_fd`] accepts.
fn check_dir(dir: RawFd) -> io::Result<()> {
    if dir == libc::AT_FDCWD {
        Ok(())
    } else {
        check_fd(dir)
    }
}

/// A byte range `offset..offset + len` of a file must end at or before the
/// largest file offset.
fn check_end(offset: u64, len: u64, what: &str) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= Offset::MAX => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what}: offset {offset} + length {len} is beyond the largest file offset ({})",
                Offset::MAX
            ),
        )),
    }
}

fn too_many_iovecs(n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{n} buffers in one vectored op; the limit is 1024 (IOV_MAX)"),
    )
}

/// The two per-fd queues of a stream: reads and writes.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Direction {
    /// recv, and read at the current position.
    Read,
    /// send, and write at the current position.
    Write,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_id_round_trips() {
        let id = OpId::new(7, 3);
        assert_eq!((id.slot(), id.generation()), (7, 3));
        assert_eq!(OpId::from_u64(id.to_u64()), id);
    }

    #[test]
    fn sockaddr_round_trips_ip() {
        for s in ["127.0.0.1:80", "[::1]:8080"] {
            let a: SocketAddr = s.parse().unwrap();
            let sa = SockAddr::from(a);
            sa.validate().unwrap();
            assert_eq!(sa.as_socket(), Some(a));
        }
    }

    #[test]
    fn bad_sockaddr_is_invalid_input() {
        let mut sa = SockAddr::from("127.0.0.1:1".parse::<SocketAddr>().unwrap());
        *sa.len_mut() = 3;
        assert_eq!(
            sa.validate().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut sa = SockAddr::empty();
        // SAFETY: writing the family field of plain data.
        unsafe { (*sa.as_mut_ptr()).sa_family = 12345 };
        assert_eq!(
            sa.validate().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
