//! A classic IOCP worker-pool TCP echo server, written the way a Windows
//! developer would: one completion port, N worker threads looping on
//! `get` (GetQueuedCompletionStatus), the completion key naming the
//! connection, the "overlapped" naming the operation.
//!
//! On SIGINT or SIGTERM it shuts down the way an IOCP server does: one
//! posted exit packet per worker (each worker leaves when it takes one),
//! then the listener is closed (cancelling the posted accepts), every
//! connection is closed (cancelling its receive or send), the port is
//! drained of the cancelled operations' completions for at most
//! `--drain-secs`, and the port is closed. It then reports its open fds at
//! start and at the end, which match when nothing leaked.
//!
//! `cargo run --release --example iocp_echo -- --threads 4 --addr 127.0.0.1:7100 [--backend X] [--drain-secs 5]`

use clap::Parser;
use ringport::{Backend, CompletionPort, GetError, PortEntry};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A classic IOCP worker-pool TCP echo server.
#[derive(Parser, Debug)]
struct Args {
    /// Worker threads calling GetQueuedCompletionStatus.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7100")]
    addr: SocketAddr,
    /// auto, uring, aio, epoll, poll, select or sigio (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<Backend>,
    /// At shutdown, how long to wait for the cancelled operations to come
    /// back through the port before closing it, in seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
}

/// The completion key of the listening socket.
const LISTEN_KEY: usize = usize::MAX;
/// The completion key of the posted exit packets.
const EXIT_KEY: usize = usize::MAX - 1;
/// What each "overlapped" operation was.
const OP_ACCEPT: usize = 1;
const OP_RECV: usize = 2;
const OP_SEND: usize = 3;
/// Accepts kept posted at once (like a pool of AcceptEx calls).
const ACCEPTS: usize = 16;
const BUFFER: usize = 16 * 1024;

/// What the workers share: the port, and the per-connection table (the
/// completion key is a connection id, never reused, so a late completion
/// of a closed connection cannot be taken for a new one that got its fd
/// number).
struct Server {
    port: CompletionPort,
    listener: RawFd,
    conns: Mutex<HashMap<usize, RawFd>>,
    next_id: AtomicUsize,
    /// Operations started whose entry has not been taken yet.
    outstanding: AtomicUsize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("iocp_echo: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    // Block the shutdown signals before any thread starts, so every thread
    // inherits the mask and only `sigwait` below receives them.
    let signals = shutdown_signals()?;
    let fds_at_start = open_fds();
    let workers = args.threads.max(1);
    // CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, threads)
    let port = match args.backend {
        Some(b) => CompletionPort::with_backend(workers, b)?,
        None => CompletionPort::new(workers)?,
    };
    let listener = std::net::TcpListener::bind(args.addr)?;
    let local = listener.local_addr()?;
    let lfd = listener.into_raw_fd();
    let backend = port.backend();
    let server = Arc::new(Server {
        port,
        listener: lfd,
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicUsize::new(1),
        outstanding: AtomicUsize::new(0),
    });
    // CreateIoCompletionPort(listener, port, LISTEN_KEY, 0)
    server.port.associate(lfd, LISTEN_KEY)?;
    for _ in 0..ACCEPTS {
        server.accept()?; // AcceptEx
    }
    println!("listening on {local} ({backend} backend, {workers} workers)");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || server.worker())
        })
        .collect();

    let sig = wait_for(&signals)?;
    let t0 = Instant::now();
    println!("iocp_echo: {sig}: shutting down");
    // 1. One exit packet per worker; each leaves when it takes one.
    for _ in 0..workers {
        server.port.post(0, EXIT_KEY, 0)?;
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("iocp_echo: a worker stopped with an error: {e}"),
            Err(_) => eprintln!("iocp_echo: a worker panicked"),
        }
    }
    // 2. Close the listener: its posted accepts come back cancelled.
    server.port.close_fd(lfd)?;
    // 3. Close every connection: its receive or send comes back cancelled.
    let conns: Vec<RawFd> = server
        .conns
        .lock()
        .unwrap()
        .drain()
        .map(|(_, fd)| fd)
        .collect();
    for &fd in &conns {
        server.port.close_fd(fd)?;
    }
    // 4. Drain: take the cancelled operations' entries; an accept that
    // completed before its cancel made a socket, which is closed here.
    let deadline = t0 + Duration::from_secs_f64(args.drain_secs.max(0.0));
    while server.outstanding.load(Ordering::SeqCst) > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match server.port.get(Some(left)) {
            Ok(e) => {
                server.outstanding.fetch_sub(1, Ordering::SeqCst);
                if let Some(fd) = e.accepted_fd() {
                    server.port.close_fd(fd)?;
                }
            }
            Err(GetError::Timeout) | Err(GetError::Closed) => break,
        }
    }
    let undrained = server.outstanding.load(Ordering::SeqCst);
    // 5. Close the port (anything still out is cancelled, and any socket it
    // made is closed); this also stops its ring thread.
    server.port.close();
    let fds_at_end = open_fds();
    let fds = match (fds_at_start, fds_at_end) {
        (Some(a), Some(b)) => format!("open fds {a} at start, {b} at exit"),
        _ => "open fds not known on this system".to_string(),
    };
    println!(
        "iocp_echo: stopped in {} ms: closed {} connections; {undrained} operations not drained; {fds}",
        t0.elapsed().as_millis(),
        conns.len()
    );
    Ok(())
}

impl Server {
    /// The worker loop: GetQueuedCompletionStatus, then act on what finished.
    fn worker(&self) -> io::Result<()> {
        loop {
            let entry = match self.port.get(None) {
                Ok(e) => e,
                Err(GetError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if entry.key == EXIT_KEY {
                return Ok(());
            }
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = self.on_completion(entry) {
                eprintln!("iocp_echo: {e}");
            }
        }
    }

    fn on_completion(&self, mut e: PortEntry) -> io::Result<()> {
        match (e.key, e.overlapped) {
            (LISTEN_KEY, OP_ACCEPT) => {
                let fd = match e.status {
                    Ok(_) => e.accepted_fd().expect("an accept makes an fd"),
                    // The listener was closed (shutdown) or the accept
                    // failed; do not post another.
                    Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => return Ok(()),
                    Err(err) => {
                        self.accept()?;
                        return Err(err);
                    }
                };
                // Post the next AcceptEx first, then start reading the new client.
                self.accept()?;
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.conns.lock().unwrap().insert(id, fd);
                self.port.associate(fd, id)?;
                self.start(|| self.port.recv(fd, Vec::with_capacity(BUFFER), OP_RECV))
                    .inspect_err(|_| self.close(id))
            }
            (id, OP_RECV) => {
                let Some(fd) = self.fd_of(id) else {
                    return Ok(()); // closed already
                };
                match e.status {
                    Ok(n) if n > 0 => {
                        let buf: Vec<u8> = e.take_read_buf().unwrap_or_default();
                        // WSASend: completes when all is sent.
                        self.start(|| self.port.send(fd, buf, OP_SEND))
                    }
                    // 0 bytes: the client closed; an error: it is gone.
                    _ => {
                        self.close(id);
                        Ok(())
                    }
                }
            }
            (id, OP_SEND) => {
                let Some(fd) = self.fd_of(id) else {
                    return Ok(());
                };
                match e.status {
                    Ok(_) => {
                        let mut buf: Vec<u8> = e.take_write_buf().unwrap_or_default();
                        buf.clear();
                        self.start(|| self.port.recv(fd, buf, OP_RECV))
                    }
                    Err(_) => {
                        self.close(id);
                        Ok(())
                    }
                }
            }
            _ => Ok(()),
        }
    }

    fn accept(&self) -> io::Result<()> {
        self.start(|| self.port.accept(self.listener, OP_ACCEPT))
    }

    /// Starts an operation, counting it as outstanding until its entry.
    fn start(&self, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        f().inspect_err(|_| {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        })
    }

    fn fd_of(&self, id: usize) -> Option<RawFd> {
        self.conns.lock().unwrap().get(&id).copied()
    }

    /// closesocket, through the port (which cancels anything left on the fd).
    fn close(&self, id: usize) {
        if let Some(fd) = self.conns.lock().unwrap().remove(&id) {
            if let Err(e) = self.port.close_fd(fd) {
                eprintln!("iocp_echo: closing a connection: {e}");
            }
        }
    }
}

/// SIGINT and SIGTERM, blocked in this thread (and so in every thread it
/// starts from now on).
fn shutdown_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it, and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Waits for one of the blocked shutdown signals; its name.
fn wait_for(set: &libc::sigset_t) -> io::Result<&'static str> {
    let mut sig = 0;
    // SAFETY: `set` was initialised by shutdown_signals; sigwait writes one int.
    let r = unsafe { libc::sigwait(set, &mut sig) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    })
}

/// How many fds this process has open (Linux: /proc/self/fd).
fn open_fds() -> Option<usize> {
    // The directory's own fd is counted both times, so the counts compare.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.filter(|e| e.is_ok()).count())
}
