//! ST-cases: stream order and op lifecycles at their edges — a cancelled
//! queued write, a cancel that meets a partial send, ops after a close, and
//! fds a dropped driver or runtime still owed a close.

use crate::harness::{rt, Drv, Pipe};
use crate::Target;
use ringport::{AnyBuf, AnyBufMut, File, Offset, Op, TcpListener, TcpStream};
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
/// Big enough that a peer that does not read leaves the write in the kernel.
const BIG: usize = 8 << 20;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A connected loopback TCP pair as std sockets (`ours` non-blocking if the
/// driver needs it); the peer's receive buffer is kept small.
fn tcp_pair(nonblocking: bool) -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind(loopback()).unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(nonblocking).unwrap();
    (ours, peer)
}

/// Whether the peer sees end of stream (or a reset) within `within`, reading
/// and discarding whatever data comes first.
fn peer_sees_eof(peer: &mut std::net::TcpStream, within: Duration) -> Result<(), String> {
    let end = Instant::now() + within;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no EOF at the peer within {within:?}"));
        }
        peer.set_read_timeout(Some(left)).unwrap();
        match peer.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no EOF at the peer within {within:?}"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("peer read failed: {e}")),
        }
    }
}

/// A write queued behind a running 8 MiB write and cancelled (by `timeout`)
/// leaves the running one alone: the next write waits for the first to end.
/// The peer reads the first write intact, then (at most) a prefix of the
/// cancelled one (the bytes that went out), then the third write.
pub fn st1_cancelled_queued_write_keeps_stream_order(b: Target) {
    const THIRD: usize = 64 * 1024;
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // Not reading yet: the first write stays in the kernel.
            go_rx.recv().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let (s, _) = l.accept().await.unwrap();
        let s = Rc::new(s);
        let s1 = s.clone();
        let first = ringport::spawn(async move { s1.write_all(vec![b'A'; BIG]).await.0 });
        ringport::yield_now().await; // the first write is submitted
        let r = ringport::timeout(Duration::from_millis(10), s.write_all(vec![b'B'; BIG])).await;
        assert!(
            r.is_err(),
            "the second write cannot finish while the peer is not reading"
        );
        let s3 = s.clone();
        let third = ringport::spawn(async move { s3.write_all(vec![b'C'; THIRD]).await.0 });
        ringport::yield_now().await; // the third write is submitted
        go.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), BIG);
        assert_eq!(third.await.unwrap().unwrap(), THIRD);
        s.shutdown(Shutdown::Write).await.unwrap();
        let all = reader.join().unwrap();
        assert!(all.len() >= BIG + THIRD, "got {} bytes", all.len());
        if let Some(i) = all[..BIG].iter().position(|&x| x != b'A') {
            panic!(
                "the first write was broken at byte {i} by a {:?}",
                all[i] as char
            );
        }
        let middle = &all[BIG..all.len() - THIRD];
        assert!(
            middle.iter().all(|&x| x == b'B'),
            "only a prefix of the cancelled write may sit between the first and the third"
        );
        assert!(
            all[all.len() - THIRD..].iter().all(|&x| x == b'C'),
            "the third write comes last, intact"
        );
    });
}

/// A cancel asked for while a partial send's result waits to be reaped still
/// ends the send: it completes (`ECANCELED`, or `Ok` with the bytes that went
/// out) with the peer not reading, and is not resubmitted to run on.
/// Many nops after the send make io_uring flush its queue (and run the send)
/// inside `submit`, so the short result is already there when the cancel goes in.
pub fn st2_cancel_ends_a_partial_send(b: Target) {
    let mut d = Drv::new(b);
    let (ours, mut peer) = tcp_pair(d.nonblocking());
    let id = d.submit(
        Op::Send {
            fd: ours.as_raw_fd(),
            buf: AnyBuf::new(vec![7u8; BIG]),
            flags: 0,
        },
        1,
    );
    for t in 0..600 {
        d.submit(Op::Nop, 100 + t);
    }
    // NotFound only if it already completed, which it cannot with the peer idle.
    d.d.cancel(id).expect("cancel the send");
    let c = d.wait_token(1, Duration::from_secs(3));
    match c.result {
        Ok(n) => assert!(
            n < BIG,
            "a cancelled send reports the bytes that went out: {n}"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}"),
    }
    d.collect(600, WAIT);
    assert_eq!(d.d.in_flight(), 0);
    // The connection still works: a later send goes out after what did.
    d.submit(
        Op::Send {
            fd: ours.as_raw_fd(),
            buf: AnyBuf::new(b"end".to_vec()),
            flags: 0,
        },
        2,
    );
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while !v.ends_with(b"end") {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "EOF before the last send");
            v.extend_from_slice(&buf[..n]);
        }
        v
    });
    assert_eq!(d.wait_token(2, WAIT).result.unwrap(), 3);
    let v = reader.join().unwrap();
    assert!(v[..v.len() - 3].iter().all(|&x| x == 7));
}

/// Once a close of an idle fd is submitted, new ops on that fd are refused
/// at submit (or, if accepted, complete); every accepted op completes.
/// The closed fd is a dup, so the pipe itself stays open; each op carries a
/// deadline so that, should the number be reused by a parallel test, an op
/// that reached it still ends.
pub fn st3_ops_after_close_refused_or_completed(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    // SAFETY: plain syscall; the result is checked.
    let fd: RawFd = unsafe { libc::fcntl(p.rfd(), libc::F_DUPFD_CLOEXEC, 0) };
    assert!(fd >= 0);
    d.submit(Op::Close { fd }, 1);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut accepted = Vec::new();
    for token in 2..6 {
        let op = Op::Read {
            fd,
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        };
        match d.d.submit(op, token, Some(deadline)) {
            Ok(_) => accepted.push(token),
            Err(e) => assert_ne!(
                e.error.kind(),
                ErrorKind::WouldBlock,
                "refused for the close: {}",
                e.error
            ),
        }
    }
    assert!(d.wait_token(1, WAIT).result.is_ok(), "the close succeeds");
    for token in accepted {
        d.wait_token(token, WAIT);
    }
    assert_eq!(d.d.in_flight(), 0, "every accepted op completed");
}

/// Dropping a driver with a recv in flight on a socket and its close parked
/// behind it closes the socket: the peer sees end of stream. The same for
/// a runtime dropped with a task reading a stream (the stream's close goes
/// through the driver).
pub fn st4_drop_with_ops_in_flight_closes_the_fd(b: Target) {
    // The driver.
    let mut d = Drv::new(b);
    let (ours, mut peer) = tcp_pair(d.nonblocking());
    let fd = ours.into_raw_fd();
    d.submit(
        Op::Recv {
            fd,
            buf: AnyBufMut::new(Vec::with_capacity(64)),
            flags: 0,
        },
        1,
    );
    d.idle(Duration::from_millis(10));
    assert!(d.done.is_empty(), "the recv waits on an idle socket");
    match d.d.submit(Op::Close { fd }, 2, None) {
        Ok(_) => {}
        Err(e) => panic!("close refused: {}", e.error),
    }
    let start = Instant::now();
    drop(d);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the drop is bounded"
    );
    peer_sees_eof(&mut peer, Duration::from_secs(1)).expect("driver drop closes the socket");

    // The runtime.
    let l = std::net::TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    let rt = rt(b);
    let mut peer = rt.block_on(async {
        let s = TcpStream::connect(addr).await.unwrap();
        let (peer, _) = l.accept().unwrap();
        ringport::spawn(async move {
            let (r, _) = s.read(Vec::with_capacity(64)).await;
            panic!("the read ended on an idle stream: {r:?}");
        });
        ringport::yield_now().await; // the read is submitted
        peer
    });
    drop(rt);
    peer_sees_eof(&mut peer, Duration::from_secs(1)).expect("runtime drop closes the stream");
}

/// A runtime dropped while a file read blocks (a FIFO opened as a `File`,
/// read at the current position) closes the file promptly: the FIFO has no reader left well under a second
/// later (a probe writer's `poll` reports `POLLERR`).
pub fn st5_runtime_drop_closes_a_blocked_file(b: Target) {
    let dir = std::env::temp_dir().join(format!(
        "ringport-fifo-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&dir);
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: path is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    // Read+write: the open does not wait for a writer, and the read never sees EOF.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dir)
        .unwrap();
    let probe = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&dir)
        .unwrap();
    let rt = rt(b);
    let ended = rt.block_on(async {
        let file = Rc::new(File::from_std(f));
        // A positional read too: io_uring ignores the offset on a FIFO and
        // blocks; pool and readiness backends end it with ESPIPE. Either way
        // the drop below must leave no reader.
        let f2 = file.clone();
        ringport::spawn(async move {
            let _ = f2.read_at(Vec::with_capacity(64), 0).await;
        });
        let task = ringport::spawn(async move {
            // At the current position: a FIFO has no offsets (`pread` says
            // ESPIPE), and this is the read that blocks on every backend.
            let op = Op::Read {
                fd: file.as_raw_fd(),
                offset: Offset::Current,
                buf: AnyBufMut::new(Vec::with_capacity(64)),
            };
            let r = ringport::submit(op, None).await.0;
            drop(file);
            r
        });
        // Let the read start (and block).
        let _ = ringport::timeout(Duration::from_millis(20), ringport::sleep(Duration::MAX)).await;
        if task.is_finished() {
            Some(task.await)
        } else {
            None
        }
    });
    assert!(
        ended.is_none(),
        "the read on an empty FIFO blocks: {ended:?}"
    );
    let start = Instant::now();
    drop(rt);
    let end = start + Duration::from_millis(500);
    loop {
        let mut pfd = libc::pollfd {
            fd: probe.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        if pfd.revents & libc::POLLERR != 0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the FIFO still has a reader {:?} after the runtime dropped",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A stream write whose deadline passes after part of it went out completes
/// with `Ok(n)`, `n` short of its length, and the peer reads exactly `n`
/// bytes: the caller knows where the stream stands (IOCP reports the bytes
/// transferred of an aborted op the same way).
pub fn st6_write_deadline_reports_bytes_out(b: Target) {
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            go_rx.recv().unwrap(); // not reading until the write has ended
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all.len()
        });
        let (s, _) = l.accept().await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        let (r, _) = s.write_all_deadline(vec![b'A'; BIG], deadline).await;
        let n = match r {
            Ok(n) => n,
            Err(e) => panic!("a write with bytes out reports them, not {e}"),
        };
        assert!(n > 0 && n < BIG, "a short count: {n}");
        drop(s);
        ringport::sleep(Duration::from_millis(1)).await.unwrap();
        go.send(()).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got, n, "the peer got exactly the bytes reported");
    });
}
