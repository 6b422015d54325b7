//! The models that have no ringport backend of their own: blocking (one
//! thread per connection; a pool of blocking `pread`s), nonblocking polling
//! (one thread looping over non-blocking sockets with no poller) and IOCP
//! (ringport's `CompletionPort` with worker threads), for `echo`, `accept`
//! and `file-randread`.

use crate::file::{TestFile, BLOCK};
use crate::measure::{run_loop, Measured};
use crate::net::{transient, Mode, ServeFn, ServerCtx};
use ringport::{Backend, CompletionPort, GetError};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stack of a connection thread: enough for a read/write loop, small enough
/// that a thousand of them stay cheap.
const CONN_STACK: usize = 64 * 1024;
/// The echo buffer of the servers here.
const ECHO_BUF: usize = 16 * 1024;

fn echo_blocking(s: Arc<TcpStream>) {
    let _ = s.set_nodelay(true);
    let mut s: &TcpStream = &s;
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Blocking: `accept` on the server thread, one thread per connection doing
/// `read` then `write_all` (threads inherit the server's CPU).
pub fn blocking_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        let l = crate::net::std_listener()?;
        ctx.ready(l.local_addr()?.port());
        // The server keeps a handle on each connection (one fd, shared with
        // its thread) to shut it down at the end.
        let mut conns: Vec<(Arc<TcpStream>, std::thread::JoinHandle<()>)> = Vec::new();
        let res = loop {
            let s = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if transient(&e) => continue,
                Err(e) => break Err(e),
            };
            if ctx.stopped() {
                break Ok(());
            }
            match ctx.mode {
                Mode::Accept | Mode::Http => drop(s),
                Mode::Echo => {
                    let s = Arc::new(s);
                    let keep = s.clone();
                    let t = std::thread::Builder::new()
                        .stack_size(CONN_STACK)
                        .spawn(move || echo_blocking(s))?;
                    conns.push((keep, t));
                }
            }
        };
        // The client has exited by now; shut down whatever is left so every
        // thread's read returns, then join them.
        for (s, _) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
        res
    })
}

/// One connection of the polling server: bytes read but not yet echoed.
struct PollConn {
    s: TcpStream,
    buf: Vec<u8>,
    /// `buf[sent..len]` is still to be written.
    sent: usize,
    len: usize,
}

/// Nonblocking polling: one thread tries `accept`, then every connection's
/// `read` or pending `write`, in a loop, with no poller; a pass where nothing
/// was ready ends in `sched_yield`.
pub fn nonblocking_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        let l = crate::net::std_listener()?;
        l.set_nonblocking(true)?;
        ctx.ready(l.local_addr()?.port());
        let mut conns: Vec<PollConn> = Vec::new();
        while !ctx.stopped() {
            let mut progress = false;
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        progress = true;
                        if ctx.mode != Mode::Echo {
                            continue;
                        }
                        s.set_nonblocking(true)?;
                        let _ = s.set_nodelay(true);
                        conns.push(PollConn {
                            s,
                            buf: vec![0u8; ECHO_BUF],
                            sent: 0,
                            len: 0,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if transient(&e) => break,
                    Err(e) => return Err(e),
                }
            }
            conns.retain_mut(|c| loop {
                if c.sent < c.len {
                    match c.s.write(&c.buf[c.sent..c.len]) {
                        Ok(n) => {
                            progress = true;
                            c.sent += n;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(_) => return false,
                    }
                }
                match c.s.read(&mut c.buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        progress = true;
                        c.sent = 0;
                        c.len = n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            });
            if !progress {
                std::thread::yield_now();
            }
        }
        Ok(())
    })
}

/// The completion key of the listening socket; connections use their fd.
const LISTEN_KEY: usize = usize::MAX;
const OP_ACCEPT: usize = 1;
const OP_RECV: usize = 2;
const OP_SEND: usize = 3;
/// Accepts kept posted (like a pool of AcceptEx calls).
const ACCEPTS: usize = 16;

/// IOCP: a `CompletionPort` on the best backend (`auto`), `workers` threads
/// looping on `get` (GetQueuedCompletionStatus), the completion key naming
/// the connection, the "overlapped" naming the operation — the shape of
/// examples/iocp_echo.rs.
pub fn iocp_server(workers: usize) -> ServeFn {
    Box::new(move |ctx: &ServerCtx| {
        let port = Arc::new(CompletionPort::with_backend(workers, Backend::Auto)?);
        let l = crate::net::std_listener()?;
        let lport = l.local_addr()?.port();
        let lfd = l.into_raw_fd();
        let open: Arc<Mutex<HashSet<RawFd>>> = Arc::default();
        let started = (|| {
            port.associate(lfd, LISTEN_KEY)?;
            for _ in 0..ACCEPTS {
                port.accept(lfd, OP_ACCEPT)?;
            }
            Ok::<_, io::Error>(())
        })();
        let mut res = started.map(|()| {
            ctx.ready(lport);
            (0..workers.max(1))
                .map(|_| {
                    let (port, stop, open) = (port.clone(), ctx.stop.clone(), open.clone());
                    let mode = ctx.mode;
                    std::thread::spawn(move || iocp_worker(&port, lfd, mode, &stop, &open))
                })
                .collect::<Vec<_>>()
        });
        if let Ok(ts) = &mut res {
            while !ctx.stopped() {
                std::thread::sleep(Duration::from_millis(5));
            }
            port.close();
            for t in ts.drain(..) {
                if let Ok(Err(e)) = t.join() {
                    return Err(e);
                }
            }
        }
        port.close();
        drop(port);
        for fd in lock(&open).drain() {
            // SAFETY: a connection fd the port gave us; the port is gone, so
            // nothing else uses it.
            unsafe { libc::close(fd) };
        }
        // SAFETY: the listener's fd, owned here (into_raw_fd above).
        unsafe { libc::close(lfd) };
        res.map(drop)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn iocp_worker(
    port: &CompletionPort,
    lfd: RawFd,
    mode: Mode,
    stop: &std::sync::atomic::AtomicBool,
    open: &Mutex<HashSet<RawFd>>,
) -> io::Result<()> {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut e = match port.get(Some(Duration::from_millis(50))) {
            Ok(e) => e,
            Err(GetError::Closed) => return Ok(()),
            Err(GetError::Timeout) => continue,
        };
        let r = match (e.key, e.overlapped) {
            (LISTEN_KEY, OP_ACCEPT) => {
                let Ok(fd) = e.status else {
                    let _ = port.accept(lfd, OP_ACCEPT);
                    continue;
                };
                let fd = fd as RawFd;
                let _ = port.accept(lfd, OP_ACCEPT);
                if mode != Mode::Echo {
                    // SAFETY: the accepted socket is ours and not associated.
                    unsafe { libc::close(fd) };
                    continue;
                }
                // SAFETY: fd is a socket just accepted; the option is an int.
                unsafe {
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        &one as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                lock(open).insert(fd);
                port.associate(fd, fd as usize)
                    .and_then(|()| port.recv(fd, Vec::with_capacity(ECHO_BUF), OP_RECV))
            }
            (key, OP_RECV) => {
                let fd = key as RawFd;
                match e.status {
                    Ok(n) if n > 0 => {
                        let buf: Vec<u8> = e.take_read_buf().unwrap_or_default();
                        port.send(fd, buf, OP_SEND)
                    }
                    _ => iocp_close(port, fd, open),
                }
            }
            (key, OP_SEND) => {
                let fd = key as RawFd;
                match e.status {
                    Ok(_) => {
                        let mut buf: Vec<u8> = e.take_write_buf().unwrap_or_default();
                        buf.clear();
                        port.recv(fd, buf, OP_RECV)
                    }
                    Err(_) => iocp_close(port, fd, open),
                }
            }
            _ => Ok(()),
        };
        // A connection whose next op could not start is dropped (a closed
        // port ends the loop at its next `get`).
        drop(r);
    }
    Ok(())
}

fn iocp_close(port: &CompletionPort, fd: RawFd, open: &Mutex<HashSet<RawFd>>) -> io::Result<()> {
    lock(open).remove(&fd);
    port.close_fd(fd)
}

/// `file-randread` through the port: `qd` reads in flight, this thread the
/// one worker calling `get`; each completion resubmits its buffer at the
/// next offset.
pub fn iocp_randread(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let port = CompletionPort::with_backend(1, Backend::Auto)?;
    let f = std::fs::File::open(&tf.path)?;
    let fd = f.as_raw_fd();
    port.associate(fd, 0)?;
    let offs = tf.offsets.clone();
    let mut next = 0usize;
    let mut started = vec![Instant::now(); qd];
    for (slot, t) in started.iter_mut().enumerate() {
        *t = Instant::now();
        port.read(fd, offs[next % offs.len()], Vec::with_capacity(BLOCK), slot)?;
        next += 1;
    }
    let m = run_loop(warmup, dur, |sample, lat| {
        let mut e = port
            .get(Some(Duration::from_secs(5)))
            .map_err(io::Error::from)?;
        let n = std::mem::replace(&mut e.status, Ok(0))?;
        if n != BLOCK {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read: {n} of {BLOCK} bytes"),
            ));
        }
        let slot = e.overlapped;
        if sample {
            lat.record(started[slot].elapsed());
        }
        let mut buf: Vec<u8> = e
            .take_read_buf()
            .ok_or_else(|| io::Error::other("the port gave no buffer back"))?;
        buf.clear();
        started[slot] = Instant::now();
        port.read(fd, offs[next % offs.len()], buf, slot)?;
        next += 1;
        Ok(1)
    });
    port.close();
    drop(port);
    drop(f);
    m
}

/// A pool of `qd` threads, each blocked in its own `pread` loop over the
/// shared offsets (the thread-pool way to keep `qd` reads in flight).
pub fn pread_pool(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let f = Arc::new(std::fs::File::open(&tf.path)?);
    let sh = tf.shared();
    let threads: Vec<_> = (0..qd)
        .map(|_| {
            let (f, sh) = (f.clone(), sh.clone());
            std::thread::Builder::new()
                .stack_size(CONN_STACK)
                .spawn(move || {
                    let mut buf = vec![0u8; BLOCK];
                    let mut n = 0u64;
                    while !sh.stopped() {
                        let t = sh.start(n);
                        match f.read_at(&mut buf, sh.next_offset())? {
                            BLOCK => sh.done(t),
                            k => {
                                sh.stop();
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!("short read: {k} of {BLOCK} bytes"),
                                ));
                            }
                        }
                        n += 1;
                    }
                    Ok::<_, io::Error>(())
                })
        })
        .collect::<io::Result<_>>()?;
    std::thread::sleep(warmup);
    let w = sh.begin();
    std::thread::sleep(dur);
    let m = sh.end(w);
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("a pread thread panicked"))??;
    }
    Ok(m)
}

/// One connection of the POSIX aio server. Boxed: the kernel-facing
/// `aiocb` and `buf` stay at one address while a request is in flight.
struct AioConn {
    cb: libc::aiocb,
    buf: Vec<u8>,
    s: TcpStream,
    /// Writing `buf[sent..len]` back; else reading.
    writing: bool,
    sent: usize,
    len: usize,
    /// A request of this connection is in flight (glibc owns `cb`, `buf`).
    busy: bool,
    dead: bool,
}

impl AioConn {
    /// Starts the connection's next request: the rest of the echo, or a read.
    fn submit(&mut self) -> io::Result<()> {
        // SAFETY: an all-zero aiocb is its documented initial state.
        self.cb = unsafe { std::mem::zeroed() };
        self.cb.aio_fildes = self.s.as_raw_fd();
        self.cb.aio_sigevent.sigev_notify = libc::SIGEV_NONE;
        let r = if self.writing {
            self.cb.aio_buf = self.buf[self.sent..].as_mut_ptr().cast();
            self.cb.aio_nbytes = self.len - self.sent;
            // SAFETY: cb and the bytes it points at live in this boxed
            // connection, which is not freed or moved while `busy`.
            unsafe { libc::aio_write(&mut self.cb) }
        } else {
            self.cb.aio_buf = self.buf.as_mut_ptr().cast();
            self.cb.aio_nbytes = self.buf.len();
            // SAFETY: as above.
            unsafe { libc::aio_read(&mut self.cb) }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.busy = true;
        Ok(())
    }
    /// Takes the result of a finished request and starts the next one; a
    /// request still running is left alone. Returns whether it finished.
    fn reap(&mut self) -> bool {
        // SAFETY: cb was submitted and is still owned by this connection.
        if unsafe { libc::aio_error(&self.cb) } == libc::EINPROGRESS {
            return false;
        }
        // SAFETY: the request finished; aio_return is called once for it.
        let n = unsafe { libc::aio_return(&mut self.cb) };
        self.busy = false;
        if n <= 0 || self.dead {
            self.dead = true;
            return true;
        }
        let n = n as usize;
        if self.writing {
            self.sent += n;
            if self.sent == self.len {
                self.writing = false;
            }
        } else {
            self.writing = true;
            self.sent = 0;
            self.len = n;
        }
        if self.submit().is_err() {
            self.dead = true;
        }
        true
    }
}

/// Waits (`aio_suspend`) at most `ms` for one of `conns`' requests.
fn aio_wait(conns: &[Box<AioConn>], list: &mut Vec<*const libc::aiocb>, ms: i64) {
    list.clear();
    list.extend(
        conns
            .iter()
            .filter(|c| c.busy)
            .map(|c| &c.cb as *const libc::aiocb),
    );
    if list.is_empty() {
        std::thread::sleep(Duration::from_millis(ms as u64));
        return;
    }
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: ms * 1_000_000,
    };
    // SAFETY: list holds pointers to submitted aiocbs that stay alive (their
    // connections are boxed and kept while busy) for the call.
    unsafe { libc::aio_suspend(list.as_ptr(), list.len() as i32, &ts) };
}

/// Asynchronous I/O with POSIX aio on sockets: one thread submits an
/// `aio_read` per connection and, when it completes, an `aio_write` of what
/// came; it waits in `aio_suspend` over every pending request (1 ms at most,
/// to see new connections on the non-blocking listener) and scans them with
/// `aio_error` (it looks for new connections once a millisecond). glibc serves each request on one of its worker threads with a
/// blocking `pread` (ESPIPE on a socket) and then `read` (or `pwrite`, then
/// `write`).
pub fn posix_aio_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        let l = crate::net::std_listener()?;
        l.set_nonblocking(true)?;
        ctx.ready(l.local_addr()?.port());
        let mut conns: Vec<Box<AioConn>> = Vec::new();
        let mut list: Vec<*const libc::aiocb> = Vec::new();
        let mut last_accept: Option<Instant> = None;
        let res = loop {
            if ctx.stopped() {
                break Ok(());
            }
            // New connections are looked for once a millisecond (the load
            // client connects before its warm-up), not on every wake-up.
            if last_accept.is_some_and(|t| t.elapsed() < Duration::from_millis(1)) {
                aio_wait(&conns, &mut list, 1);
                for c in conns.iter_mut().filter(|c| c.busy) {
                    c.reap();
                }
                conns.retain(|c| c.busy || !c.dead);
                continue;
            }
            last_accept = Some(Instant::now());
            let accepted = loop {
                match l.accept() {
                    Ok((s, _)) => {
                        if ctx.mode != Mode::Echo {
                            continue;
                        }
                        let _ = s.set_nodelay(true);
                        // The request's own read blocks a glibc thread, not us.
                        s.set_nonblocking(false)?;
                        let mut c = Box::new(AioConn {
                            // SAFETY: an all-zero aiocb is its initial state.
                            cb: unsafe { std::mem::zeroed() },
                            buf: vec![0u8; ECHO_BUF],
                            s,
                            writing: false,
                            sent: 0,
                            len: 0,
                            busy: false,
                            dead: false,
                        });
                        c.submit()?;
                        conns.push(c);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if transient(&e) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = accepted {
                break Err(e);
            }
            aio_wait(&conns, &mut list, 1);
            for c in conns.iter_mut().filter(|c| c.busy) {
                c.reap();
            }
            // Dead and idle: no request of glibc's refers to it any more.
            conns.retain(|c| c.busy || !c.dead);
        };
        // Every socket shut down, so every pending read returns; wait for
        // them (a bounded time) before their buffers are freed.
        for c in conns.iter_mut() {
            c.dead = true;
            let _ = c.s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns.iter().any(|c| c.busy) {
            if Instant::now() > deadline {
                // Never free what glibc may still write into.
                std::mem::forget(conns);
                return Err(io::Error::other(
                    "POSIX aio requests still pending 5 s after every socket was shut down",
                ));
            }
            aio_wait(&conns, &mut list, 10);
            for c in conns.iter_mut().filter(|c| c.busy) {
                c.reap();
            }
        }
        res
    })
}
