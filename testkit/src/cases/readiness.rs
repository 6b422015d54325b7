//! R-cases: the contract where the readiness shim emulates it — ops run on a
//! worker pool, readiness that must be armed before the first try, wakes
//! after drop, and fd numbers that come back. They run on every backend.

use crate::harness::{rt, Drv, Pipe, TempFile};
use crate::Target;
use ringport::{AnyBuf, AnyBufMut, CancelTarget, Offset, Op};
use std::ffi::CString;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A FIFO in the temp dir, removed when dropped.
struct Fifo {
    path: PathBuf,
}

impl Fifo {
    fn new() -> Fifo {
        let f = TempFile::with(b"");
        let path = f.path.with_extension("fifo");
        drop(f);
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a NUL-terminated path.
        let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(r, 0, "mkfifo: {}", std::io::Error::last_os_error());
        Fifo { path }
    }
    fn cpath(&self) -> CString {
        CString::new(self.path.as_os_str().as_bytes()).unwrap()
    }
    /// Opens it with raw flags; `Err` with the errno.
    fn open(&self, flags: i32) -> std::io::Result<OwnedFd> {
        let c = self.cpath();
        // SAFETY: c is a NUL-terminated path; the fd is checked and owned.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    /// Whether anyone (an open fd, or an `open` blocked waiting for a
    /// writer) has the FIFO open for reading: a non-blocking open for
    /// writing fails with `ENXIO` only when nobody does.
    fn has_reader(&self) -> bool {
        match self.open(libc::O_WRONLY | libc::O_NONBLOCK) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => false,
            Err(e) => panic!("open fifo for writing: {e}"),
        }
    }
    /// Waits up to `within` for the FIFO to have no reader.
    fn readers_gone_within(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if !self.has_reader() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open_op(path: &Path, flags: i32) -> Op {
    Op::OpenAt {
        dir: libc::AT_FDCWD,
        path: CString::new(path.as_os_str().as_bytes()).unwrap(),
        flags,
        mode: 0,
    }
}

/// The fds of this process that are open on `path`.
fn fds_open_on(path: &Path) -> Vec<RawFd> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            if target == path {
                if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                    v.push(n);
                }
            }
        }
    }
    v
}

/// Current-position writes to a regular file land in submission order (one
/// per fd and direction at a time, like a stream), however many workers the
/// backend has.
pub fn r1_current_position_file_writes_in_order(b: Target) {
    const N: usize = 200;
    const LEN: usize = 4096;
    let f = TempFile::with(b"");
    let file = f.raw_fd();
    let mut d = Drv::new(b);
    for i in 0..N {
        d.submit(
            Op::Write {
                fd: file.as_raw_fd(),
                offset: Offset::Current,
                buf: AnyBuf::new(vec![(i % 251) as u8; LEN]),
            },
            i as u64,
        );
    }
    for c in d.collect(N, WAIT) {
        assert_eq!(c.result.unwrap(), LEN, "write {}", c.token);
    }
    let data = std::fs::read(&f.path).unwrap();
    assert_eq!(data.len(), N * LEN);
    for (i, chunk) in data.chunks(LEN).enumerate() {
        assert!(
            chunk.iter().all(|&x| x == (i % 251) as u8),
            "chunk {i} holds bytes of write {} (writes landed out of order)",
            chunk[0]
        );
    }
}

/// A per-op deadline ends an op that is already running (an `open` of a
/// FIFO with no writer blocks in the kernel) with `TimedOut`, and whatever
/// ran it really stops: nobody holds the FIFO open afterwards.
///
/// io_uring's own open of a FIFO does not block (the kernel tries it
/// non-blocking first, and a read-only FIFO open succeeds that way): there
/// the op completes at once with an fd, which is checked and closed, and
/// the deadline part does not apply.
pub fn r2_deadline_ends_running_op(b: Target) {
    let fifo = Fifo::new();
    let mut d = Drv::new(b);
    let start = Instant::now();
    d.d.submit(
        open_op(&fifo.path, libc::O_RDONLY),
        1,
        Some(start + Duration::from_millis(200)),
    )
    .unwrap_or_else(|e| panic!("submit refused: {:?}", e.error));
    let c = d.wait_token(1, WAIT);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "deadline honoured late: {took:?}"
    );
    match c.result {
        Ok(fd) => {
            assert!(
                took < Duration::from_millis(150),
                "an open that did not block took {took:?}"
            );
            close_opened(fd, &fifo.path);
            eprintln!("r2 on {b}: the FIFO open did not block; the deadline part does not apply");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::TimedOut, "got {e}"),
    }
    assert!(
        fifo.readers_gone_within(Duration::from_secs(1)),
        "the open still waits in the kernel after its deadline"
    );
}

/// Cancelling a running op (the same blocked `open`) ends it with
/// `ECANCELED` promptly and stops it. (Where the open does not block, as on
/// io_uring, it completes with an fd, which is checked and closed.)
pub fn r3_cancel_running_op(b: Target) {
    let fifo = Fifo::new();
    let mut d = Drv::new(b);
    let id = d.submit(open_op(&fifo.path, libc::O_RDONLY), 1);
    // Let it start blocking.
    d.idle(Duration::from_millis(100));
    if let Some(c) = d.done.pop() {
        let fd = c.result.expect("an open that did not block succeeds");
        close_opened(fd, &fifo.path);
        eprintln!("r3 on {b}: the FIFO open did not block; the cancel part does not apply");
        assert!(fifo.readers_gone_within(Duration::from_secs(1)));
        return;
    }
    let start = Instant::now();
    d.d.cancel(id).unwrap();
    let c = d.wait_token(1, WAIT);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        start.elapsed()
    );
    let e = c
        .result
        .expect_err("open of a FIFO without writer succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "got {e}");
    assert!(
        fifo.readers_gone_within(Duration::from_secs(1)),
        "the open still waits in the kernel after its cancel"
    );
}

/// Checks that `fd` (from an open that completed) is open on `path`, then
/// closes it.
fn close_opened(fd: usize, path: &Path) {
    let fd = fd as RawFd;
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert_eq!(target, std::fs::canonicalize(path).unwrap());
    // SAFETY: the open made this fd for us and nobody else has it.
    unsafe { libc::close(fd) };
}

/// A socket pair, non-blocking, close-on-exec.
fn socket_pair(kind: i32) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fills `fd`'s send buffer until it would block; returns the bytes sent.
fn fill(fd: RawFd) -> usize {
    let chunk = [7u8; 65536];
    let mut total = 0;
    loop {
        // SAFETY: chunk is a valid buffer for the call.
        let n = unsafe {
            libc::send(
                fd,
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

/// Drains `fd` (non-blocking) of up to `max` bytes; returns how many.
fn drain(fd: RawFd, max: usize) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut total = 0;
    while total < max {
        // SAFETY: buf is a valid buffer for the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    total
}

/// `Poll { POLLIN | POLLOUT }` completes when either is ready, with the
/// events that are: here a full socket becomes writable and stays unreadable.
pub fn r4_poll_either_direction(b: Target) {
    let (a, peer) = socket_pair(libc::SOCK_STREAM);
    let sent = fill(a.as_raw_fd());
    assert!(sent > 0);
    let mut d = Drv::new(b);
    d.submit(
        Op::Poll {
            fd: a.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
        },
        1,
    );
    d.idle(Duration::from_millis(50));
    assert!(
        d.done.is_empty(),
        "poll completed while neither readable nor writable: {:?}",
        d.done[0].result
    );
    assert_eq!(drain(peer.as_raw_fd(), usize::MAX), sent);
    let c = d.wait_token(1, Duration::from_secs(3));
    let ev = c.result.unwrap() as i16;
    assert!(ev & libc::POLLOUT != 0, "events {ev:#x} lack POLLOUT");
    assert!(ev & libc::POLLIN == 0, "events {ev:#x} say readable");
}

/// A send on a Unix stream socket that fills the socket buffer resumes when
/// the peer reads: the whole 4 MiB goes out.
pub fn r5_unix_stream_send_resumes(b: Target) {
    const N: usize = 4 << 20;
    let (a, peer) = socket_pair(libc::SOCK_STREAM);
    let data: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    let mut d = Drv::new(b);
    d.submit(
        Op::Send {
            fd: a.as_raw_fd(),
            buf: AnyBuf::new(data.clone()),
            flags: 0,
        },
        1,
    );
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(N);
        let end = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        while got.len() < N && Instant::now() < end {
            // SAFETY: buf is a valid buffer for the call.
            let n = unsafe {
                libc::recv(
                    peer.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                got.extend_from_slice(&buf[..n as usize]);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    });
    let c = d.wait_token(1, WAIT);
    assert_eq!(c.result.unwrap(), N);
    let got = reader.join().unwrap();
    assert!(
        got == data,
        "the peer got {} of {N} bytes, or them out of order",
        got.len()
    );
}

/// A wake after the driver is gone is harmless, even to a process that keeps
/// SIGPIPE at its default action (which a write to a pipe without reader
/// would raise).
pub fn r6_wake_after_drop_is_harmless(b: Target) {
    crate::harness::expect_child_ok(b, "r6_child", "RINGPORT_R6_CHILD", "R6 OK");
}

/// Child of R6: SIGPIPE at its default action, then wakes after drop.
pub fn r6_child(b: Target) {
    if std::env::var("RINGPORT_R6_CHILD").is_err() {
        return;
    }
    // SAFETY: restoring the default action of SIGPIPE in this process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut d = Drv::new(b);
    // Use the driver first, so whatever it wakes through is set up.
    d.submit(Op::Nop, 1);
    d.wait_n(1, WAIT);
    let w = d.d.waker();
    w.wake();
    drop(d);
    for _ in 0..100 {
        w.wake();
    }
    let t = std::thread::spawn(move || w.wake());
    t.join().unwrap();
    println!("R6 OK");
}

/// A blocking pipe whose read end has the number `want` (the lowest free
/// number, so the next fd made), or `None` if a parallel test took it.
fn pipe_with_read_fd(want: RawFd) -> Option<Pipe> {
    let p = Pipe::new(false);
    (p.rfd() == want).then_some(p)
}

/// Reads on `fd` through `d`, after a write from another thread 100 ms
/// later; asserts the submit did not block and the read completes promptly.
fn read_completes(d: &mut Drv, fd: RawFd, w: OwnedFd, what: &str) {
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: a valid 3-byte buffer.
        let n = unsafe { libc::write(w.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
        assert_eq!(n, 3);
        w
    });
    let start = Instant::now();
    d.submit(
        Op::Read {
            fd,
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        42,
    );
    assert!(
        start.elapsed() < Duration::from_millis(80),
        "{what}: submit blocked for {:?} (fd left blocking)",
        start.elapsed()
    );
    let c = d.wait_token(42, Duration::from_secs(2));
    assert_eq!(c.result.unwrap(), 3, "{what}");
    drop(writer.join().unwrap());
}

/// After an fd is closed through the driver, a new fd with the same number
/// is a new fd to the driver: registered with the poller, made non-blocking
/// where the backend needs it, its read completes promptly.
pub fn r7_reused_fd_number_is_new(b: Target) {
    let mut d = Drv::new(b);
    let close = |d: &mut Drv, fd: OwnedFd| {
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        d.submit(Op::Close { fd: raw }, 7);
        d.wait_token(7, WAIT).result.unwrap();
    };
    // Parallel tests may take the number first: try until one reuse of a
    // pipe's number and one of a socket's number were seen.
    let (mut pipe_done, mut socket_done) = (false, false);
    for _ in 0..50 {
        if !pipe_done {
            // A pipe, used (a read that waits for readiness, then
            // completes), closed through the driver; then a blocking pipe
            // gets its number.
            let p = Pipe::new(d.nonblocking());
            let num = p.rfd();
            let (r, w) = (p.r, p.w);
            read_completes(&mut d, num, w, "first pipe");
            close(&mut d, r);
            if let Some(p2) = pipe_with_read_fd(num) {
                let (r2, w2) = (p2.r, p2.w);
                read_completes(&mut d, num, w2, "pipe with a reused number");
                close(&mut d, r2);
                pipe_done = true;
            }
        }
        if !socket_done {
            // A socket's read end that waited, closed, then its number
            // reused by a pipe (a different kind of fd).
            let (sa, sb) = socket_pair(libc::SOCK_STREAM);
            let snum = sa.as_raw_fd();
            read_completes(&mut d, snum, sb, "socket");
            close(&mut d, sa);
            if let Some(p3) = pipe_with_read_fd(snum) {
                let (r3, w3) = (p3.r, p3.w);
                read_completes(&mut d, snum, w3, "pipe on a socket's reused number");
                close(&mut d, r3);
                socket_done = true;
            }
        }
        if pipe_done && socket_done {
            return;
        }
    }
    panic!("no fd number came back in 50 tries (pipe {pipe_done}, socket {socket_done})");
}

/// Dropping the runtime while a file op blocks (an `open` of a FIFO with no
/// writer, and a read on a FIFO opened as a `File`) does not hang, and
/// nothing is left holding the FIFO within well under a second.
pub fn r8_drop_with_blocked_file_ops(b: Target) {
    // The blocked open.
    let fifo = Fifo::new();
    let rtm = rt(b);
    let p = fifo.path.clone();
    rtm.spawn(async move {
        let _ = ringport::File::open(&p).await;
    });
    rtm.block_on(ringport::sleep(Duration::from_millis(100)))
        .unwrap();
    // Where the open does not block (io_uring), it completed and its File
    // was dropped already; elsewhere it is under way.
    let start = Instant::now();
    drop(rtm);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        start.elapsed()
    );
    assert!(
        fifo.readers_gone_within(Duration::from_millis(500)),
        "the FIFO is still held open (or being opened) after the runtime's drop"
    );

    // The blocked read.
    let fifo = Fifo::new();
    let holder = fifo.open(libc::O_RDONLY | libc::O_NONBLOCK).unwrap();
    let writer = fifo.open(libc::O_WRONLY).unwrap();
    let rtm = rt(b);
    let file = rtm.block_on(ringport::File::open(&fifo.path)).unwrap();
    drop(holder);
    rtm.spawn(async move {
        let fd = file.as_raw_fd();
        let _ = ringport::submit(
            Op::Read {
                fd,
                offset: Offset::Current,
                buf: AnyBufMut::new(Vec::with_capacity(16)),
            },
            None,
        )
        .await;
        drop(file);
    });
    rtm.block_on(ringport::sleep(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    drop(rtm);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        start.elapsed()
    );
    // With no reader left, the write end reports POLLERR.
    let end = Instant::now() + Duration::from_millis(500);
    loop {
        let mut pfd = libc::pollfd {
            fd: writer.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        if pfd.revents & libc::POLLERR != 0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the FIFO's read end is still open 500 ms after the runtime's drop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A driver dropped with an `open` that completed but was never delivered
/// closes the fd it opened.
pub fn r9_drop_closes_undelivered_open(b: Target) {
    let f = TempFile::with(b"x");
    let path = std::fs::canonicalize(&f.path).unwrap();
    let mut d = Drv::new(b);
    for i in 0..4 {
        d.submit(open_op(&path, libc::O_RDONLY), i);
    }
    // The opens finish in the kernel or a worker; nobody collects them.
    std::thread::sleep(Duration::from_millis(200));
    drop(d);
    let end = Instant::now() + Duration::from_millis(500);
    loop {
        let open = fds_open_on(&path);
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "fds {open:?} opened by undelivered opens are still open after the driver's drop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Cancelling by an fd number nobody could have (far beyond the open-file
/// limit) reaches nothing and grows no table.
pub fn r10_cancel_of_huge_fd_reaches_nothing(b: Target) {
    let mut d = Drv::new(b);
    for fd in [i32::MAX, 1 << 30] {
        assert_eq!(d.d.cancel_fd(fd).unwrap(), 0);
        d.submit(
            Op::Cancel {
                target: CancelTarget::Fd(fd),
            },
            1,
        );
        let c = d.wait_token(1, WAIT);
        assert_eq!(c.result.unwrap_err().kind(), ErrorKind::NotFound);
    }
}

/// `open`s abandoned by `timeout` (cancelled while queued, running, or
/// already done) leave no fd open once the runtime is gone: a finished
/// open's fd reaches the runtime, which closes it.
pub fn r11_open_abandoned_by_timeout_leaks_nothing(b: Target) {
    let f = TempFile::with(b"x");
    let path = std::fs::canonicalize(&f.path).unwrap();
    let rtm = rt(b);
    rtm.block_on(async {
        for i in 0..200u64 {
            let t = Duration::from_micros(i % 50);
            let _ = ringport::timeout(t, ringport::File::open(&path)).await;
        }
        // Whatever was still under way finishes.
        ringport::sleep(Duration::from_millis(100)).await.unwrap();
    });
    drop(rtm);
    let open = fds_open_on(&path);
    assert!(
        open.is_empty(),
        "fds {open:?} of abandoned opens are still open"
    );
}
