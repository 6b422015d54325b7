//! Sockets and pipes: each I/O call is one op; buffers go in and come back.

use super::op::submit;
use super::{current, Remote};
use crate::buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut};
use crate::op::{Offset, Op, ShutdownHow, SockAddr};
use std::io;
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// An fd owned by a runtime type (`File`, `TcpStream`, ...).
///
/// The fd belongs to the driver of the runtime that first uses it (or that
/// was running when it was made), and is always closed through that driver,
/// which first lets the fd's ops end and releases its per-fd state:
/// - dropped on the runtime's own thread while it runs: an `Op::Close` is
///   submitted at once;
/// - dropped anywhere else (outside `block_on`, on another thread, under
///   another runtime) while that runtime exists: the fd is queued for the
///   runtime, which closes it through its driver at its next turn (or when
///   the runtime is dropped);
/// - dropped after that runtime is gone (its driver, and the driver's state
///   for the fd, went with it), or never used with one: `close(2)`.
#[derive(Debug)]
pub(crate) struct Fd {
    fd: RawFd,
    owner: OnceLock<Arc<Remote>>,
}

impl Fd {
    pub(crate) fn new(fd: RawFd) -> Fd {
        let owner = OnceLock::new();
        if let Some(core) = current() {
            let _ = owner.set(core.remote.clone());
        }
        Fd { fd, owner }
    }
    /// The fd number, for an op: binds the fd to the running runtime if no
    /// runtime owns it yet.
    pub(crate) fn raw(&self) -> RawFd {
        if self.owner.get().is_none() {
            if let Some(core) = current() {
                let _ = self.owner.set(core.remote.clone());
            }
        }
        self.fd
    }
    pub(crate) fn into_raw(self) -> RawFd {
        let fd = self.fd;
        // The owner link is dropped; the fd is the caller's now.
        let mut this = mem::ManuallyDrop::new(self);
        drop(this.owner.take());
        fd
    }
    /// Closes through the driver and waits for it.
    pub(crate) async fn close(self) -> io::Result<()> {
        let fd = self.raw();
        let _ = self.into_raw();
        submit(Op::Close { fd }, None).await.0.map(|_| ())
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        let fd = self.fd;
        let owner = self.owner.take();
        if let Some(core) = current() {
            let mine = owner.as_ref().is_none_or(|o| Arc::ptr_eq(o, &core.remote));
            if mine && core.submit_detached(Op::Close { fd }).is_ok() {
                return;
            }
        }
        if let Some(owner) = owner {
            if owner.defer_close(fd) {
                return;
            }
        }
        // SAFETY: we own the fd, and no driver holds state for it: its
        // runtime is gone (or it never had one), so nothing uses it any more.
        unsafe { libc::close(fd) };
    }
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether fds made now should be non-blocking: what the running backend
/// needs, or blocking outside a runtime (readiness backends switch an fd to
/// non-blocking themselves on first use).
pub(crate) fn want_nonblocking() -> bool {
    current().is_some_and(|c| c.capabilities().needs_nonblocking)
}

/// A socket of `domain`/`ty`, close-on-exec, non-blocking if the backend needs it.
pub(crate) fn new_socket(domain: i32, ty: i32) -> io::Result<Fd> {
    let mut flags = ty | libc::SOCK_CLOEXEC;
    if want_nonblocking() {
        flags |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain syscall with valid constant arguments.
    let fd = cvt(unsafe { libc::socket(domain, flags, 0) })?;
    Ok(Fd::new(fd))
}

pub(crate) fn family_of(addr: &SocketAddr) -> i32 {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

pub(crate) fn set_opt(fd: RawFd, level: i32, name: i32, val: i32) -> io::Result<()> {
    // SAFETY: val lives for the call; the length matches its type.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

pub(crate) fn bind_raw(fd: RawFd, addr: &SockAddr) -> io::Result<()> {
    addr.validate()?;
    // SAFETY: addr points at a validated sockaddr of addr.len() bytes.
    cvt(unsafe { libc::bind(fd, addr.as_ptr(), addr.len()) }).map(|_| ())
}

pub(crate) fn sock_name(fd: RawFd, peer: bool) -> io::Result<SockAddr> {
    let mut a = SockAddr::empty();
    // SAFETY: the storage and its length describe a writable buffer.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, a.as_mut_ptr(), a.len_mut())
        } else {
            libc::getsockname(fd, a.as_mut_ptr(), a.len_mut())
        }
    };
    cvt(r)?;
    Ok(a)
}

pub(crate) fn ip_of(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"))
}

fn how(h: Shutdown) -> ShutdownHow {
    match h {
        Shutdown::Read => ShutdownHow::Read,
        Shutdown::Write => ShutdownHow::Write,
        Shutdown::Both => ShutdownHow::Both,
    }
}

pub(crate) fn back_mut<B: IoBufMut>(op: Op) -> B {
    op.into_buf_mut()
        .and_then(|b| b.downcast().ok())
        .expect("ringport driver broke its contract: the op came back changed")
}

pub(crate) fn back<B: IoBuf>(op: Op) -> B {
    op.into_buf()
        .and_then(|b| b.downcast().ok())
        .expect("ringport driver broke its contract: the op came back changed")
}

/// The op of one read on a stream fd: recv on a socket, read at the current
/// position on a pipe.
pub(crate) fn stream_read_op(fd: RawFd, buf: AnyBufMut, socket: bool) -> Op {
    if socket {
        Op::Recv { fd, buf, flags: 0 }
    } else {
        Op::Read {
            fd,
            offset: Offset::Current,
            buf,
        }
    }
}

/// The op of one whole write on a stream fd: send on a socket, write at the
/// current position on a pipe.
pub(crate) fn stream_write_op(fd: RawFd, buf: AnyBuf, socket: bool) -> Op {
    if socket {
        Op::Send { fd, buf, flags: 0 }
    } else {
        Op::Write {
            fd,
            offset: Offset::Current,
            buf,
        }
    }
}

/// One read on a stream fd (recv on sockets, read on pipes).
pub(crate) async fn read_stream<B: IoBufMut>(
    fd: RawFd,
    buf: B,
    socket: bool,
    deadline: Option<Instant>,
) -> (io::Result<usize>, B) {
    let op = stream_read_op(fd, AnyBufMut::new(buf), socket);
    let (res, op) = submit(op, deadline).await;
    (res, back_mut(op))
}

/// One whole write on a stream fd: completes when every byte is written.
pub(crate) async fn write_stream<B: IoBuf>(
    fd: RawFd,
    buf: B,
    socket: bool,
    deadline: Option<Instant>,
) -> (io::Result<usize>, B) {
    let op = stream_write_op(fd, AnyBuf::new(buf), socket);
    let (res, op) = submit(op, deadline).await;
    (res, back(op))
}

/// Longest pause between accepts while the process is out of fds.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepts one connection. When the process or system is out of file
/// descriptors (or socket memory), it backs off — 1 ms doubling to 100 ms,
/// logged — and tries again, so a server recovers by itself once fds are free
/// and never spins. Other errors are returned.
async fn accept_raw(fd: RawFd) -> io::Result<(Fd, SockAddr)> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let (res, op) = submit(
            Op::Accept {
                fd,
                addr: Box::new(SockAddr::empty()),
            },
            None,
        )
        .await;
        match res {
            Ok(newfd) => {
                let addr = match op {
                    Op::Accept { addr, .. } => *addr,
                    _ => SockAddr::empty(),
                };
                return Ok((Fd::new(newfd as RawFd), addr));
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                log::warn!("accept on fd {fd}: {e}; backing off {pause:?}");
                super::sleep(pause).await?;
                pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) async fn connect_raw(fd: &Fd, addr: SockAddr) -> io::Result<()> {
    submit(
        Op::Connect {
            fd: fd.raw(),
            addr: Box::new(addr),
        },
        None,
    )
    .await
    .0
    .map(|_| ())
}

async fn shutdown_raw(fd: RawFd, h: Shutdown) -> io::Result<()> {
    submit(Op::Shutdown { fd, how: how(h) }, None)
        .await
        .0
        .map(|_| ())
}

macro_rules! stream_io {
    ($ty:ident, $socket:expr) => {
        impl $ty {
            /// Reads once into `buf` (from its start); `Ok(0)` is end of stream.
            pub async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
                read_stream(self.fd.raw(), buf, $socket, None).await
            }
            /// Like `read`, but gives up at `deadline` with `TimedOut`,
            /// handing the buffer back.
            pub async fn read_deadline<B: IoBufMut>(
                &self,
                buf: B,
                deadline: Instant,
            ) -> (io::Result<usize>, B) {
                read_stream(self.fd.raw(), buf, $socket, Some(deadline)).await
            }
            /// Writes `buf`'s initialised bytes. As with IOCP's `WSASend`, a
            /// stream write completes only when every byte is written (or on
            /// error), so this is the same as [`Self::write_all`].
            pub async fn write<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
                write_stream(self.fd.raw(), buf, $socket, None).await
            }
            /// Writes all of `buf`'s initialised bytes; completes when every
            /// byte is written, or on error.
            pub async fn write_all<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
                write_stream(self.fd.raw(), buf, $socket, None).await
            }
            /// Like `write_all`, but gives up at `deadline`. If some bytes
            /// went out by then, the result is `Ok(n)` with `n` short of the
            /// buffer's length (the stream holds exactly those `n` bytes);
            /// if none did, `TimedOut`.
            pub async fn write_all_deadline<B: IoBuf>(
                &self,
                buf: B,
                deadline: Instant,
            ) -> (io::Result<usize>, B) {
                write_stream(self.fd.raw(), buf, $socket, Some(deadline)).await
            }
            /// Closes through the driver: the fd's ops are cancelled and
            /// waited for first, then the fd is closed.
            pub async fn close(self) -> io::Result<()> {
                self.fd.close().await
            }
        }

        impl AsRawFd for $ty {
            fn as_raw_fd(&self) -> RawFd {
                self.fd.raw()
            }
        }

        impl IntoRawFd for $ty {
            fn into_raw_fd(self) -> RawFd {
                self.fd.into_raw()
            }
        }
    };
}

/// A TCP listening socket.
#[derive(Debug)]
pub struct TcpListener {
    pub(crate) fd: Fd,
}

impl TcpListener {
    /// Binds and listens on `addr` (with `SO_REUSEADDR`).
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, false)
    }

    /// Binds with `SO_REUSEPORT` as well, so that several runtimes (one per
    /// thread) can each own a listener on the same port.
    pub fn bind_reuse_port(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, true)
    }

    fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let fd = new_socket(family_of(&addr), libc::SOCK_STREAM)?;
        set_opt(fd.raw(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if reuse_port {
            set_opt(fd.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        bind_raw(fd.raw(), &SockAddr::from(addr))?;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::listen(fd.raw(), 1024) })?;
        Ok(TcpListener { fd })
    }

    /// Takes over a listening `std::net::TcpListener` (made non-blocking if
    /// the running backend needs it).
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(want_nonblocking())?;
        Ok(TcpListener {
            fd: Fd::new(l.into_raw_fd()),
        })
    }

    /// Waits for a connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = accept_raw(self.fd.raw()).await?;
        let peer = ip_of(addr)?;
        Ok((
            TcpStream {
                io: Default::default(),
                fd,
            },
            peer,
        ))
    }

    /// Waits for a connection, or for `token` to be triggered (`Ok(None)`:
    /// stop accepting). The accept in flight is cancelled then; a
    /// connection it had already taken is closed through the driver.
    pub async fn accept_until(
        &self,
        token: &super::ShutdownToken,
    ) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        token.run_until(self.accept()).await.transpose()
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_of(sock_name(self.fd.raw(), false)?)
    }

    /// Closes through the driver, after its pending accepts end.
    pub async fn close(self) -> io::Result<()> {
        self.fd.close().await
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

/// A TCP connection.
#[derive(Debug)]
pub struct TcpStream {
    /// The trait adapter's buffers and ops (`crate::compat`); declared
    /// first so that its ops are cancelled before the fd closes.
    pub(crate) io: crate::compat::IoState,
    pub(crate) fd: Fd,
}

stream_io!(TcpStream, true);

impl TcpStream {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let fd = new_socket(family_of(&addr), libc::SOCK_STREAM)?;
        connect_raw(&fd, SockAddr::from(addr)).await?;
        Ok(TcpStream {
            io: Default::default(),
            fd,
        })
    }

    /// Takes over a connected socket (made non-blocking if the backend needs it).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(want_nonblocking())?;
        Ok(TcpStream {
            io: Default::default(),
            fd: Fd::new(s.into_raw_fd()),
        })
    }

    /// Shuts down one or both directions.
    pub async fn shutdown(&self, h: Shutdown) -> io::Result<()> {
        shutdown_raw(self.fd.raw(), h).await
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            on as i32,
        )
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        ip_of(sock_name(self.fd.raw(), true)?)
    }

    /// This side's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_of(sock_name(self.fd.raw(), false)?)
    }
}

/// A UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    fd: Fd,
}

impl UdpSocket {
    /// Binds to `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let fd = new_socket(family_of(&addr), libc::SOCK_DGRAM)?;
        bind_raw(fd.raw(), &SockAddr::from(addr))?;
        Ok(UdpSocket { fd })
    }

    /// Sets the default peer (for `send` / `recv`).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        let a = SockAddr::from(addr);
        // SAFETY: a is a valid sockaddr of a.len() bytes.
        cvt(unsafe { libc::connect(self.fd.raw(), a.as_ptr(), a.len()) }).map(|_| ())
    }

    /// Sends one datagram to `addr`.
    pub async fn send_to<B: IoBuf>(&self, buf: B, addr: SocketAddr) -> (io::Result<usize>, B) {
        let op = Op::SendTo {
            fd: self.fd.raw(),
            buf: AnyBuf::new(buf),
            addr: Box::new(SockAddr::from(addr)),
        };
        let (res, op) = submit(op, None).await;
        (res, back(op))
    }

    /// Receives one datagram and the address it came from.
    pub async fn recv_from<B: IoBufMut>(&self, buf: B) -> (io::Result<(usize, SocketAddr)>, B) {
        let op = Op::RecvFrom {
            fd: self.fd.raw(),
            buf: AnyBufMut::new(buf),
            addr: Box::new(SockAddr::empty()),
        };
        let (res, op) = submit(op, None).await;
        let addr = match &op {
            Op::RecvFrom { addr, .. } => addr.as_socket(),
            _ => None,
        };
        let res = res.and_then(|n| {
            addr.map(|a| (n, a))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no sender address"))
        });
        (res, back_mut(op))
    }

    /// Sends one datagram to the connected peer.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        write_stream(self.fd.raw(), buf, true, None).await
    }

    /// Receives one datagram from the connected peer.
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        read_stream(self.fd.raw(), buf, true, None).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_of(sock_name(self.fd.raw(), false)?)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

/// A Unix-domain listening socket.
#[derive(Debug)]
pub struct UnixListener {
    fd: Fd,
}

impl UnixListener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let fd = new_socket(libc::AF_UNIX, libc::SOCK_STREAM)?;
        bind_raw(fd.raw(), &SockAddr::unix(path.as_ref())?)?;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::listen(fd.raw(), 1024) })?;
        Ok(UnixListener { fd })
    }

    /// Waits for a connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let (fd, _addr) = accept_raw(self.fd.raw()).await?;
        Ok(UnixStream {
            io: Default::default(),
            fd,
        })
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

/// A Unix-domain stream connection.
#[derive(Debug)]
pub struct UnixStream {
    /// The trait adapter's buffers and ops (`crate::compat`); declared
    /// first so that its ops are cancelled before the fd closes.
    pub(crate) io: crate::compat::IoState,
    pub(crate) fd: Fd,
}

stream_io!(UnixStream, true);

impl UnixStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let fd = new_socket(libc::AF_UNIX, libc::SOCK_STREAM)?;
        connect_raw(&fd, SockAddr::unix(path.as_ref())?).await?;
        Ok(UnixStream {
            io: Default::default(),
            fd,
        })
    }

    /// Shuts down one or both directions.
    pub async fn shutdown(&self, h: Shutdown) -> io::Result<()> {
        shutdown_raw(self.fd.raw(), h).await
    }
}

/// The reading end of a pipe.
#[derive(Debug)]
pub struct PipeReader {
    /// The trait adapter's buffers and ops (`crate::compat`); declared
    /// first so that its ops are cancelled before the fd closes.
    pub(crate) io: crate::compat::IoState,
    pub(crate) fd: Fd,
}

stream_io!(PipeReader, false);

/// The writing end of a pipe.
#[derive(Debug)]
pub struct PipeWriter {
    /// The trait adapter's buffers and ops (`crate::compat`); declared
    /// first so that its ops are cancelled before the fd closes.
    pub(crate) io: crate::compat::IoState,
    pub(crate) fd: Fd,
}

stream_io!(PipeWriter, false);

/// A new pipe (close-on-exec; non-blocking if the backend needs it).
pub fn pipe() -> io::Result<(PipeReader, PipeWriter)> {
    let mut flags = libc::O_CLOEXEC;
    if want_nonblocking() {
        flags |= libc::O_NONBLOCK;
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    Ok((
        PipeReader {
            io: Default::default(),
            fd: Fd::new(fds[0]),
        },
        PipeWriter {
            io: Default::default(),
            fd: Fd::new(fds[1]),
        },
    ))
}
