//! Socket options before bind, listen or connect ([`TcpSocket`]), and
//! Unix-domain datagrams ([`UnixDatagram`]).

use super::net::{
    back, back_mut, bind_raw, connect_raw, cvt, ip_of, new_socket, read_stream, set_opt, sock_name,
    want_nonblocking, write_stream, Fd,
};
use super::{TcpListener, TcpStream};
use crate::buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut};
use crate::op::{Op, SockAddr};
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn get_opt<T: Copy>(fd: RawFd, level: i32, name: i32) -> io::Result<T> {
    // SAFETY: T is a plain C value (int or linger) fully written by the
    // kernel, whose length we pass.
    unsafe {
        let mut v: T = mem::zeroed();
        let mut len = mem::size_of::<T>() as libc::socklen_t;
        cvt(libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut T as *mut libc::c_void,
            &mut len,
        ))?;
        Ok(v)
    }
}

fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    get_opt::<libc::c_int>(fd, level, name)
}

fn secs(what: &str, d: Duration) -> io::Result<i32> {
    let s = d.as_secs();
    if s == 0 || s > i32::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} must be between 1 s and {} s, not {d:?}", i32::MAX),
        ));
    }
    Ok(s as i32)
}

fn size_arg(what: &str, n: usize) -> io::Result<i32> {
    i32::try_from(n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {n} bytes is too large"),
        )
    })
}

/// A TCP socket not yet listening or connected, to set options on first:
/// `TcpSocket::new_v4()?`, setters, then [`TcpSocket::listen`] or
/// [`TcpSocket::connect`] (after an optional [`TcpSocket::bind`]).
#[derive(Debug)]
pub struct TcpSocket {
    fd: Fd,
}

impl TcpSocket {
    /// An IPv4 TCP socket.
    pub fn new_v4() -> io::Result<TcpSocket> {
        Ok(TcpSocket {
            fd: new_socket(libc::AF_INET, libc::SOCK_STREAM)?,
        })
    }

    /// An IPv6 TCP socket.
    pub fn new_v6() -> io::Result<TcpSocket> {
        Ok(TcpSocket {
            fd: new_socket(libc::AF_INET6, libc::SOCK_STREAM)?,
        })
    }

    /// A TCP socket of `addr`'s family.
    pub fn new_for(addr: &SocketAddr) -> io::Result<TcpSocket> {
        match addr {
            SocketAddr::V4(_) => Self::new_v4(),
            SocketAddr::V6(_) => Self::new_v6(),
        }
    }

    fn flag(&self, level: i32, name: i32) -> io::Result<bool> {
        get_int(self.fd.raw(), level, name).map(|v| v != 0)
    }

    /// Sets `SO_REUSEADDR`.
    pub fn set_reuseaddr(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            on as i32,
        )
    }
    /// `SO_REUSEADDR`.
    pub fn reuseaddr(&self) -> io::Result<bool> {
        self.flag(libc::SOL_SOCKET, libc::SO_REUSEADDR)
    }
    /// Sets `SO_REUSEPORT` (several sockets, one per runtime, may then
    /// listen on one port).
    pub fn set_reuseport(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            on as i32,
        )
    }
    /// `SO_REUSEPORT`.
    pub fn reuseport(&self) -> io::Result<bool> {
        self.flag(libc::SOL_SOCKET, libc::SO_REUSEPORT)
    }
    /// Sets `TCP_NODELAY` (inherited by accepted connections on Linux).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            on as i32,
        )
    }
    /// `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.flag(libc::IPPROTO_TCP, libc::TCP_NODELAY)
    }
    /// Sets `SO_KEEPALIVE`.
    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            on as i32,
        )
    }
    /// `SO_KEEPALIVE`.
    pub fn keepalive(&self) -> io::Result<bool> {
        self.flag(libc::SOL_SOCKET, libc::SO_KEEPALIVE)
    }
    /// Turns keepalive on with its timing: the first probe after `idle`
    /// without traffic (`TCP_KEEPIDLE`), then every `interval`
    /// (`TCP_KEEPINTVL`), giving up after `count` probes (`TCP_KEEPCNT`).
    /// Whole seconds, at least one.
    pub fn set_keepalive_params(
        &self,
        idle: Duration,
        interval: Duration,
        count: u32,
    ) -> io::Result<()> {
        let fd = self.fd.raw();
        let idle = secs("the keepalive idle time", idle)?;
        let interval = secs("the keepalive interval", interval)?;
        let count = i32::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the keepalive probe count must be positive, not {count}"),
                )
            })?;
        self.set_keepalive(true)?;
        set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
        set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
        set_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)
    }
    /// The keepalive timing: (idle, interval, probe count).
    pub fn keepalive_params(&self) -> io::Result<(Duration, Duration, u32)> {
        let fd = self.fd.raw();
        let idle = get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?;
        let intvl = get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)?;
        let cnt = get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT)?;
        Ok((
            Duration::from_secs(idle as u64),
            Duration::from_secs(intvl as u64),
            cnt as u32,
        ))
    }
    /// Sets `SO_LINGER`: `Some(t)` makes a close wait up to `t` (whole
    /// seconds) for unsent data (`Some(ZERO)` resets the connection on
    /// close); `None` is the default (close returns at once, the kernel
    /// sends the rest).
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        let l = libc::linger {
            l_onoff: linger.is_some() as i32,
            l_linger: linger.map_or(0, |d| d.as_secs().min(i32::MAX as u64) as i32),
        };
        // SAFETY: l lives for the call; the length matches its type.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.raw(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }
    /// `SO_LINGER`.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        let l: libc::linger = get_opt(self.fd.raw(), libc::SOL_SOCKET, libc::SO_LINGER)?;
        Ok((l.l_onoff != 0).then(|| Duration::from_secs(l.l_linger as u64)))
    }
    /// Sets `SO_SNDBUF` (the kernel doubles the value for its bookkeeping,
    /// and [`TcpSocket::send_buffer_size`] reads the doubled value back).
    pub fn set_send_buffer_size(&self, bytes: usize) -> io::Result<()> {
        let n = size_arg("a send buffer", bytes)?;
        set_opt(self.fd.raw(), libc::SOL_SOCKET, libc::SO_SNDBUF, n)
    }
    /// `SO_SNDBUF`, as the kernel reports it.
    pub fn send_buffer_size(&self) -> io::Result<usize> {
        get_int(self.fd.raw(), libc::SOL_SOCKET, libc::SO_SNDBUF).map(|v| v as usize)
    }
    /// Sets `SO_RCVBUF` (doubled by the kernel, as for the send buffer).
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        let n = size_arg("a receive buffer", bytes)?;
        set_opt(self.fd.raw(), libc::SOL_SOCKET, libc::SO_RCVBUF, n)
    }
    /// `SO_RCVBUF`, as the kernel reports it.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        get_int(self.fd.raw(), libc::SOL_SOCKET, libc::SO_RCVBUF).map(|v| v as usize)
    }
    /// Sets `IPV6_V6ONLY` (an IPv6 socket that refuses IPv4-mapped peers).
    pub fn set_only_v6(&self, on: bool) -> io::Result<()> {
        set_opt(
            self.fd.raw(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            on as i32,
        )
    }
    /// `IPV6_V6ONLY`.
    pub fn only_v6(&self) -> io::Result<bool> {
        self.flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
    }

    /// Binds to `addr` (before listening, or before connecting to pick the
    /// local address and port).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        bind_raw(self.fd.raw(), &SockAddr::from(addr))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_of(sock_name(self.fd.raw(), false)?)
    }

    /// Listens, with a queue of `backlog` connections not yet accepted
    /// (the kernel caps it at `net.core.somaxconn`).
    pub fn listen(self, backlog: u32) -> io::Result<TcpListener> {
        let backlog = backlog.min(i32::MAX as u32) as i32;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::listen(self.fd.raw(), backlog) })?;
        Ok(TcpListener { fd: self.fd })
    }

    /// Connects to `addr` (from the bound address, if bound).
    pub async fn connect(self, addr: SocketAddr) -> io::Result<TcpStream> {
        connect_raw(&self.fd, SockAddr::from(addr)).await?;
        Ok(TcpStream {
            io: Default::default(),
            fd: self.fd,
        })
    }
}

impl AsRawFd for TcpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

/// The path of a Unix-domain address (None when unnamed or abstract).
fn unix_path(a: &SockAddr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if a.family() != libc::AF_UNIX {
        return None;
    }
    // SAFETY: the storage holds a sockaddr_un (family checked), and is
    // larger than and aligned for it.
    let un = unsafe { &*(a.as_ptr() as *const libc::sockaddr_un) };
    let off = mem::size_of::<libc::sa_family_t>();
    let n = (a.len() as usize)
        .saturating_sub(off)
        .min(un.sun_path.len());
    let bytes: Vec<u8> = un.sun_path[..n].iter().map(|c| *c as u8).collect();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    (end > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..end])))
}

/// A Unix-domain datagram socket.
#[derive(Debug)]
pub struct UnixDatagram {
    fd: Fd,
}

impl UnixDatagram {
    /// A socket bound at `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        let fd = new_socket(libc::AF_UNIX, libc::SOCK_DGRAM)?;
        bind_raw(fd.raw(), &SockAddr::unix(path.as_ref())?)?;
        Ok(UnixDatagram { fd })
    }

    /// A socket bound to no path (it can send, and receive answers only if
    /// connected to a peer that knows it, as with [`UnixDatagram::pair`]).
    pub fn unbound() -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            fd: new_socket(libc::AF_UNIX, libc::SOCK_DGRAM)?,
        })
    }

    /// Two sockets connected to each other.
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let mut ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
        if want_nonblocking() {
            ty |= libc::SOCK_NONBLOCK;
        }
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two fds socketpair writes.
        cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
        Ok((
            UnixDatagram {
                fd: Fd::new(fds[0]),
            },
            UnixDatagram {
                fd: Fd::new(fds[1]),
            },
        ))
    }

    /// Sets the default peer (for `send` / `recv`).
    pub fn connect(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let a = SockAddr::unix(path.as_ref())?;
        // SAFETY: a is a valid sockaddr of a.len() bytes.
        cvt(unsafe { libc::connect(self.fd.raw(), a.as_ptr(), a.len()) }).map(|_| ())
    }

    /// Sends one datagram to the socket at `path`.
    pub async fn send_to<B: IoBuf>(
        &self,
        buf: B,
        path: impl AsRef<Path>,
    ) -> (io::Result<usize>, B) {
        let addr = match SockAddr::unix(path.as_ref()) {
            Ok(a) => a,
            Err(e) => return (Err(e), buf),
        };
        let op = Op::SendTo {
            fd: self.fd.raw(),
            buf: AnyBuf::new(buf),
            addr: Box::new(addr),
        };
        let (res, op) = super::submit(op, None).await;
        (res, back(op))
    }

    /// Receives one datagram and the sender's path (None for an unbound sender).
    pub async fn recv_from<B: IoBufMut>(
        &self,
        buf: B,
    ) -> (io::Result<(usize, Option<PathBuf>)>, B) {
        let op = Op::RecvFrom {
            fd: self.fd.raw(),
            buf: AnyBufMut::new(buf),
            addr: Box::new(SockAddr::empty()),
        };
        let (res, op) = super::submit(op, None).await;
        let from = match &op {
            Op::RecvFrom { addr, .. } => unix_path(addr),
            _ => None,
        };
        (res.map(|n| (n, from)), back_mut(op))
    }

    /// Sends one datagram to the connected peer.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        write_stream(self.fd.raw(), buf, true, None).await
    }

    /// Receives one datagram from the connected peer.
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        read_stream(self.fd.raw(), buf, true, None).await
    }

    /// The bound path, if any.
    pub fn local_path(&self) -> io::Result<Option<PathBuf>> {
        Ok(unix_path(&sock_name(self.fd.raw(), false)?))
    }
}

impl AsRawFd for UnixDatagram {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}
