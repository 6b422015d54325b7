//! The second load client: plain libc epoll (level-triggered), one request
//! in flight per connection, in its own process pinned to the other CPU,
//! like the io_uring client. An echo round sends the payload with `write`
//! (a short write waits for `EPOLLOUT`) and reads it back with `read` when
//! `EPOLLIN` says so; the accept storm connects non-blocking, waits for
//! `EPOLLOUT` (connected), then for `EPOLLIN` (the server's close).

use crate::measure::Lat;
use crate::net::{connect_all, ClientOut, Load, Phases};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::time::Instant;

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall with a constant flag.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: ev is a valid epoll_event; fd is a socket we own.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    /// Waits at most 100 ms; the ready (token, events) pairs go to `out`.
    fn wait(&self, evs: &mut [libc::epoll_event], out: &mut Vec<(usize, u32)>) -> io::Result<()> {
        // SAFETY: evs is a valid, writable array of evs.len() events.
        let n = unsafe { libc::epoll_wait(self.0, evs.as_mut_ptr(), evs.len() as i32, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(evs[..n as usize].iter().map(|e| (e.u64 as usize, e.events)));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our epoll fd, closed once.
        unsafe { libc::close(self.0) };
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on our own fd with integer arguments.
    let r = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) | Some(libc::EINTR)
    )
}

struct EConn {
    fd: RawFd,
    sending: bool,
    done: usize,
    started: Instant,
    buf: Vec<u8>,
    dead: bool,
}

/// The echo client over epoll.
pub fn echo_client(addr: SocketAddrV4, load: &Load) -> io::Result<ClientOut> {
    let fds = connect_all(addr, load.conns)?;
    // Never used, closed when the process exits.
    let _idle = connect_all(addr, load.idle)?;
    crate::net::ready_wait();
    let ep = Epoll::new()?;
    let payload: Vec<u8> = load.mode.request(load.size);
    let room = load.mode.reply_room(load.size);
    let now = Instant::now();
    let mut conns: Vec<EConn> = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        set_nonblocking(fd)?;
        ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, i)?;
        conns.push(EConn {
            fd,
            sending: true,
            done: 0,
            started: now,
            buf: vec![0u8; room],
            dead: false,
        });
    }
    let mut phases = Phases::new(load);
    let (mut ops, mut errors, mut lat) = (0u64, 0u64, Lat::new());
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len().clamp(64, 4096)];
    let mut ready: Vec<(usize, u32)> = Vec::new();
    loop {
        ep.wait(&mut evs, &mut ready)?;
        for (i, _) in ready.drain(..) {
            let c = &mut conns[i];
            if c.dead {
                continue;
            }
            // Go as far as the socket allows: send the rest, then read.
            let r: io::Result<()> = loop {
                if c.sending {
                    let rest = &payload[c.done..];
                    // SAFETY: rest is a valid slice; c.fd is our socket.
                    let n = unsafe {
                        libc::send(c.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if would_block(&e) {
                            break ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLOUT as u32, i);
                        }
                        break Err(e);
                    }
                    c.done += n as usize;
                    if c.done == payload.len() {
                        c.sending = false;
                        c.done = 0;
                        // Level-triggered EPOLLIN from now on (one epoll_ctl
                        // after the first send, or after a short one).
                        if let Err(e) = ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLIN as u32, i) {
                            break Err(e);
                        }
                    }
                    continue;
                }
                let want = c.buf.len() - c.done;
                // SAFETY: buf has room for `want` bytes past c.done.
                let n = unsafe { libc::read(c.fd, c.buf[c.done..].as_mut_ptr().cast(), want) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if would_block(&e) {
                        break Ok(());
                    }
                    break Err(e);
                }
                if n == 0 {
                    break Err(io::Error::other("the server closed"));
                }
                c.done += n as usize;
                match load.mode.reply_done(load.size, &c.buf[..c.done]) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(why) => break Err(io::Error::other(format!("a bad reply: {why}"))),
                }
                let t = Instant::now();
                if phases.measuring {
                    ops += 1;
                    lat.record(t - c.started);
                }
                c.started = t;
                c.done = 0;
                c.sending = true;
                // Send the next round at once: it usually fits, and EPOLLIN
                // stays registered for the reply.
                let rest = &payload[..];
                // SAFETY: rest is a valid slice; c.fd is our socket.
                let n = unsafe {
                    libc::send(c.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if would_block(&e) {
                        break ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLOUT as u32, i);
                    }
                    break Err(e);
                }
                if n as usize == rest.len() {
                    c.sending = false;
                    // Nothing to read yet: wait for EPOLLIN.
                    break Ok(());
                }
                c.done = n as usize;
                break ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLOUT as u32, i);
            };
            if r.is_err() {
                errors += 1;
                c.dead = true;
                let _ = ep.ctl(libc::EPOLL_CTL_DEL, c.fd, 0, i);
            }
        }
        if phases.tick(Instant::now(), &mut ops, &mut lat, &mut errors) {
            break;
        }
        if conns.iter().all(|c| c.dead) {
            return Err(io::Error::other("every connection failed"));
        }
    }
    for c in &conns {
        // SAFETY: our sockets, closed once.
        unsafe { libc::close(c.fd) };
    }
    Ok((ops, phases.secs(), lat, errors, phases.cpu))
}

/// Starts a non-blocking connect for slot `i` and registers it for EPOLLOUT.
fn start_connect(ep: &Epoll, sa: &libc::sockaddr_in, c: &mut EConn, i: usize) -> io::Result<()> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    c.fd = fd;
    c.sending = true;
    c.started = Instant::now();
    // SAFETY: sa is a valid sockaddr_in of the length passed.
    let r = unsafe {
        libc::connect(
            fd,
            (sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if !would_block(&e) {
            // SAFETY: the socket just made, unused elsewhere.
            unsafe { libc::close(fd) };
            return Err(e);
        }
    }
    ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, i)
}

/// The accept-storm client over epoll: connect, wait for the close, again.
pub fn accept_client(addr: SocketAddrV4, load: &Load) -> io::Result<ClientOut> {
    crate::net::ready_wait();
    let ep = Epoll::new()?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut conns: Vec<EConn> = (0..load.conns)
        .map(|_| EConn {
            fd: -1,
            sending: true,
            done: 0,
            started: Instant::now(),
            buf: vec![0u8; 16],
            dead: false,
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        start_connect(&ep, &sa, c, i)?;
    }
    let mut phases = Phases::new(load);
    let (mut ops, mut errors, mut lat) = (0u64, 0u64, Lat::new());
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len().clamp(64, 4096)];
    let mut ready: Vec<(usize, u32)> = Vec::new();
    loop {
        ep.wait(&mut evs, &mut ready)?;
        for (i, ev) in ready.drain(..) {
            let c = &mut conns[i];
            let restart = if c.sending {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: err/len are a valid int and its length.
                unsafe {
                    libc::getsockopt(
                        c.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if err != 0 {
                    errors += 1;
                    true
                } else {
                    c.sending = false;
                    ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLIN as u32, i)?;
                    false
                }
            } else {
                // SAFETY: buf is a valid, writable 16-byte buffer.
                let n = unsafe { libc::read(c.fd, c.buf.as_mut_ptr().cast(), c.buf.len()) };
                if n < 0
                    && would_block(&io::Error::last_os_error())
                    && ev & libc::EPOLLHUP as u32 == 0
                {
                    false
                } else {
                    if n > 0 {
                        errors += 1;
                    } else if phases.measuring {
                        ops += 1;
                        lat.record(c.started.elapsed());
                    }
                    true
                }
            };
            if restart {
                // SAFETY: our socket; closing also removes it from the epoll set.
                unsafe { libc::close(c.fd) };
                start_connect(&ep, &sa, c, i)?;
            }
        }
        if phases.tick(Instant::now(), &mut ops, &mut lat, &mut errors) {
            break;
        }
    }
    for c in &conns {
        // SAFETY: our sockets, closed once.
        unsafe { libc::close(c.fd) };
    }
    Ok((ops, phases.secs(), lat, errors, phases.cpu))
}
