//! After a short read on a byte stream the shim waits for the poller before
//! reading that fd again (no first try that would say `EAGAIN`), where that is
//! safe: epoll, poll and select. The data that arrives later is still read,
//! an end-of-stream the poller already reported is not waited for, and
//! datagram sockets, where a short read says nothing, are never skipped.
#![cfg(target_os = "linux")]

use ringport_core::{AnyBufMut, Completion, Driver, Op, OpId};
use ringport_shim::{PollerKind, ShimDriver};
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const WAITING_KINDS: [PollerKind; 3] = [PollerKind::Epoll, PollerKind::Poll, PollerKind::Select];

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server)
}

fn recv_op(fd: RawFd, cap: usize) -> Op {
    Op::Recv {
        fd,
        buf: AnyBufMut::new(Vec::with_capacity(cap)),
        flags: 0,
    }
}

fn submit(d: &mut ShimDriver, op: Op) -> OpId {
    d.submit(op, 1, None).map_err(|e| e.error).unwrap()
}

/// Waits up to `secs` for one completion; `None` if none came.
fn next(d: &mut ShimDriver, secs: f64) -> Option<Completion> {
    let mut out = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while out.is_empty() {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        d.wait(&mut out, 1, Some(left)).unwrap();
    }
    assert_eq!(out.len(), 1);
    out.pop()
}

fn bytes(c: Completion) -> Vec<u8> {
    let n = c.result.unwrap();
    let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!(v.len(), n);
    v
}

#[test]
fn tcp_read_after_a_short_read_waits_for_the_poller_and_gets_the_data() {
    for kind in WAITING_KINDS {
        let (mut client, server) = tcp_pair();
        let mut d = ShimDriver::new(kind).unwrap();
        client.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        submit(&mut d, recv_op(server.as_raw_fd(), 4096));
        let c = next(&mut d, 5.0).expect("first read completes");
        assert_eq!(bytes(c), b"hello", "{kind:?}");
        // Short read: the next one goes straight to the poller.
        submit(&mut d, recv_op(server.as_raw_fd(), 4096));
        assert_eq!(
            d.skipped_tries(),
            1,
            "{kind:?}: the second read skipped its try"
        );
        assert!(
            next(&mut d, 0.05).is_none(),
            "{kind:?}: nothing to read yet"
        );
        client.write_all(b"world!").unwrap();
        let c = next(&mut d, 5.0).expect("second read completes once data arrives");
        assert_eq!(bytes(c), b"world!", "{kind:?}");
    }
}

#[test]
fn a_full_read_does_not_mark_the_socket_drained() {
    for kind in WAITING_KINDS {
        let (mut client, server) = tcp_pair();
        let mut d = ShimDriver::new(kind).unwrap();
        client.write_all(b"abcdefgh").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        submit(&mut d, recv_op(server.as_raw_fd(), 4));
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"abcd");
        submit(&mut d, recv_op(server.as_raw_fd(), 4));
        assert_eq!(d.skipped_tries(), 0, "{kind:?}: a full read may leave more");
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"efgh", "{kind:?}");
    }
}

#[test]
fn end_of_stream_already_reported_is_not_waited_for() {
    for kind in WAITING_KINDS {
        let (mut client, server) = tcp_pair();
        let fd = server.as_raw_fd();
        let mut d = ShimDriver::new(kind).unwrap();
        // A read that waits, so the fd is watched.
        submit(&mut d, recv_op(fd, 4096));
        assert!(next(&mut d, 0.05).is_none());
        client.write_all(b"0123456789").unwrap();
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"0123456789");
        // More data and the end of the stream arrive while no read waits;
        // a wait sees them (the edge is used up for epoll).
        client.write_all(b"tail").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut out = Vec::new();
        d.wait(&mut out, 0, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(out.is_empty());
        // A short read of the rest, then end-of-stream at once.
        submit(&mut d, recv_op(fd, 4096));
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"tail", "{kind:?}");
        submit(&mut d, recv_op(fd, 4096));
        let c = next(&mut d, 2.0).unwrap_or_else(|| panic!("{kind:?}: end-of-stream read hung"));
        assert_eq!(c.result.unwrap(), 0, "{kind:?}");
    }
}

#[test]
fn datagram_reads_are_never_skipped() {
    for kind in WAITING_KINDS {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        a.send_to(b"one", b.local_addr().unwrap()).unwrap();
        a.send_to(b"two", b.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut d = ShimDriver::new(kind).unwrap();
        submit(&mut d, recv_op(b.as_raw_fd(), 1500));
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"one");
        submit(&mut d, recv_op(b.as_raw_fd(), 1500));
        assert_eq!(d.skipped_tries(), 0, "{kind:?}");
        let c = next(&mut d, 2.0).unwrap_or_else(|| panic!("{kind:?}: second datagram hung"));
        assert_eq!(bytes(c), b"two");
    }
}

#[test]
fn pipe_read_after_a_short_read_waits_and_gets_the_data() {
    for kind in WAITING_KINDS {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut w = std::fs::File::from(w);
        let mut d = ShimDriver::new(kind).unwrap();
        let read = |fd| Op::Read {
            fd,
            offset: ringport_core::CURRENT_POSITION,
            buf: AnyBufMut::new(Vec::with_capacity(64)),
        };
        w.write_all(b"abc").unwrap();
        submit(&mut d, read(r.as_raw_fd()));
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"abc");
        submit(&mut d, read(r.as_raw_fd()));
        assert_eq!(d.skipped_tries(), 1, "{kind:?}");
        w.write_all(b"defg").unwrap();
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"defg", "{kind:?}");
        drop(w);
        submit(&mut d, read(r.as_raw_fd()));
        assert_eq!(next(&mut d, 2.0).unwrap().result.unwrap(), 0, "{kind:?}");
    }
}

#[test]
fn off_by_choice_and_on_sigio() {
    let kinds = [
        (
            ShimDriver::builder(PollerKind::Epoll).short_read_waits(false),
            "epoll, off",
        ),
        (ShimDriver::builder(PollerKind::Sigio), "sigio"),
    ];
    for (b, what) in kinds {
        let (mut client, server) = tcp_pair();
        let mut d = b.build().unwrap();
        client.write_all(b"hi").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        submit(&mut d, recv_op(server.as_raw_fd(), 4096));
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"hi");
        submit(&mut d, recv_op(server.as_raw_fd(), 4096));
        assert_eq!(d.skipped_tries(), 0, "{what}: every read tries first");
        client.write_all(b"there").unwrap();
        assert_eq!(bytes(next(&mut d, 5.0).unwrap()), b"there", "{what}");
    }
}
