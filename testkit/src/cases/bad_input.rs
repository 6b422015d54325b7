//! B1–B4: bad input.

use crate::harness::{Drv, Pipe};
use crate::Target;
use ringport::{AnyBuf, AnyBufMut, Offset, Op, OpKind, SockAddr, Support};
use std::io::ErrorKind;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A path under a directory that does not exist.
const MISSING: &str = "/ringport-missing-dir/x";

fn cpath(p: &str) -> std::ffi::CString {
    std::ffi::CString::new(p).unwrap()
}

/// One op of `kind`, on fds of `p` (a pipe) and `f` (a regular file).
fn sample_op(kind: OpKind, p: &Pipe, file: i32) -> Op {
    use ringport::{CancelTarget, ShutdownHow};
    let addr = || Box::new(SockAddr::from(crate::harness::closed_port()));
    // Exhaustive: a new kind must say how it is sampled here.
    match kind {
        OpKind::Nop => Op::Nop,
        OpKind::Read => Op::Read {
            fd: file,
            offset: Offset::At(0),
            buf: AnyBufMut::new(Vec::with_capacity(8)),
        },
        OpKind::Write => Op::Write {
            fd: p.wfd(),
            offset: Offset::Current,
            buf: AnyBuf::new(vec![1u8; 4]),
        },
        OpKind::Readv => Op::Readv {
            fd: file,
            offset: Offset::At(0),
            bufs: vec![AnyBufMut::new(Vec::with_capacity(4))],
        },
        OpKind::Writev => Op::Writev {
            fd: p.wfd(),
            offset: Offset::Current,
            bufs: vec![AnyBuf::new(vec![2u8; 4])],
        },
        OpKind::Recv => Op::Recv {
            fd: p.rfd(),
            buf: AnyBufMut::new(Vec::with_capacity(8)),
            flags: 0,
        },
        OpKind::RecvPooled => Op::RecvPooled {
            fd: p.rfd(),
            pool: ringport::BufPool::new(1, 8).expect("pool"),
            flags: 0,
            got: None,
        },
        OpKind::ReadPooled => Op::ReadPooled {
            fd: file,
            offset: Offset::At(0),
            pool: ringport::BufPool::new(1, 8).expect("pool"),
            got: None,
        },
        OpKind::Send => Op::Send {
            fd: p.wfd(),
            buf: AnyBuf::new(vec![3u8; 4]),
            flags: 0,
        },
        OpKind::SendZc => Op::SendZc {
            fd: p.wfd(),
            buf: AnyBuf::new(vec![3u8; 4]),
            flags: 0,
        },
        OpKind::RecvFrom => Op::RecvFrom {
            fd: p.rfd(),
            buf: AnyBufMut::new(Vec::with_capacity(8)),
            addr: Box::new(SockAddr::empty()),
        },
        OpKind::SendTo => Op::SendTo {
            fd: p.wfd(),
            buf: AnyBuf::new(vec![4u8; 4]),
            addr: addr(),
        },
        OpKind::Accept => Op::Accept {
            fd: p.rfd(),
            addr: Box::new(SockAddr::empty()),
        },
        OpKind::AcceptMulti => Op::AcceptMulti { fd: p.rfd() },
        OpKind::RecvMulti => Op::RecvMulti {
            fd: p.rfd(),
            pool: ringport::BufPool::new(1, 8).expect("pool"),
        },
        OpKind::Connect => Op::Connect {
            fd: p.rfd(),
            addr: addr(),
        },
        OpKind::Shutdown => Op::Shutdown {
            fd: p.rfd(),
            how: ShutdownHow::Write,
        },
        OpKind::Close => {
            // SAFETY: duplicates our own fd; the close consumes the copy.
            let fd = unsafe { libc::fcntl(file, libc::F_DUPFD_CLOEXEC, 0) };
            Op::Close { fd }
        }
        OpKind::Fsync => Op::Fsync {
            fd: file,
            data_only: false,
        },
        OpKind::OpenAt => Op::OpenAt {
            dir: libc::AT_FDCWD,
            path: std::ffi::CString::new("/dev/null").unwrap(),
            flags: libc::O_RDONLY,
            mode: 0,
        },
        OpKind::Stat => Op::Stat {
            fd: file,
            stat: Box::default(),
        },
        OpKind::Timeout => Op::Timeout {
            deadline: std::time::Instant::now() + Duration::from_millis(1),
        },
        OpKind::Cancel => Op::Cancel {
            target: CancelTarget::Fd(p.rfd()),
        },
        OpKind::Poll => Op::Poll {
            fd: p.wfd(),
            events: libc::POLLOUT,
        },
        OpKind::OpenAt2 => Op::OpenAt2 {
            dir: libc::AT_FDCWD,
            path: cpath("/dev/null"),
            flags: libc::O_RDONLY,
            mode: 0,
            resolve: 0,
        },
        OpKind::StatAt => Op::StatAt {
            dir: libc::AT_FDCWD,
            path: cpath("/dev/null"),
            follow: true,
            stat: Box::default(),
        },
        // The path ops aim at a directory that does not exist: ENOENT.
        OpKind::RenameAt => Op::RenameAt {
            from_dir: libc::AT_FDCWD,
            from: cpath(MISSING),
            to_dir: libc::AT_FDCWD,
            to: cpath(MISSING),
            flags: 0,
        },
        OpKind::UnlinkAt => Op::UnlinkAt {
            dir: libc::AT_FDCWD,
            path: cpath(MISSING),
            flags: 0,
        },
        OpKind::MkdirAt => Op::MkdirAt {
            dir: libc::AT_FDCWD,
            path: cpath(MISSING),
            mode: 0o700,
        },
        OpKind::SymlinkAt => Op::SymlinkAt {
            target: cpath("x"),
            dir: libc::AT_FDCWD,
            path: cpath(MISSING),
        },
        OpKind::LinkAt => Op::LinkAt {
            from_dir: libc::AT_FDCWD,
            from: cpath(MISSING),
            to_dir: libc::AT_FDCWD,
            to: cpath(MISSING),
            flags: 0,
        },
        OpKind::Fallocate => Op::Fallocate {
            fd: file,
            mode: 0,
            offset: 0,
            len: 10,
        },
        OpKind::Ftruncate => Op::Ftruncate { fd: file, len: 10 },
        OpKind::SendFile => Op::SendFile {
            fd: p.wfd(),
            file,
            offset: 0,
            len: 4,
        },
        OpKind::ReadFixed => Op::ReadFixed {
            fd: file,
            offset: Offset::At(0),
            buf: fixed_buf(0),
        },
        OpKind::WriteFixed => Op::WriteFixed {
            fd: p.wfd(),
            offset: Offset::Current,
            buf: fixed_buf(4),
        },
    }
}

/// A registered buffer of 8 bytes holding `len` of them.
fn fixed_buf(len: usize) -> ringport::FixedBuf {
    let mut b = ringport::FixedBufRegistry::new(1, 8)
        .and_then(|r| r.take())
        .expect("a fixed buffer");
    b.set_len(len);
    b
}

/// Capabilities tell the truth: every kind the backend reports as
/// unsupported is refused at submit with `Unsupported` naming the op and the
/// backend, and every kind it reports as native or emulated is accepted and
/// completes without `Unsupported` (other errors, such as `ENOTSOCK` for an
/// accept on a pipe, are the kernel's answer and fine).
pub fn b1_unsupported_op(b: Target) {
    let mut d = Drv::new(b);
    let caps = d.d.capabilities().clone();
    let p = Pipe::new(d.nonblocking());
    let f = crate::harness::TempFile::with(b"0123456789");
    let file = f.raw_fd();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut accepted = Vec::new();
    for (i, kind) in OpKind::ALL.into_iter().enumerate() {
        let op = sample_op(kind, &p, fd);
        assert_eq!(op.kind(), kind);
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        match d.try_submit(op, i as u64, Some(deadline)) {
            Err(e) if caps.get(kind) == Support::Unsupported => {
                assert_eq!(
                    e.error.kind(),
                    ErrorKind::Unsupported,
                    "{kind:?}: {}",
                    e.error
                );
                let msg = e.error.to_string();
                assert!(
                    msg.contains(kind.name()) && msg.contains(d.d.name()),
                    "{msg}"
                );
            }
            Err(e) => assert_ne!(
                e.error.kind(),
                ErrorKind::Unsupported,
                "{kind:?} is refused as unsupported, but capabilities say {:?}",
                caps.get(kind)
            ),
            Ok(_) => {
                assert_ne!(
                    caps.get(kind),
                    Support::Unsupported,
                    "{kind:?} was accepted, but capabilities say unsupported"
                );
                accepted.push((i as u64, kind));
            }
        }
    }
    for (token, kind) in accepted {
        let c = d.wait_token(token, WAIT);
        if let Err(e) = &c.result {
            assert_ne!(
                e.kind(),
                ErrorKind::Unsupported,
                "{kind:?} completed with {e}"
            );
        }
    }
    assert_eq!(d.d.in_flight(), 0, "every accepted op completed");
}

pub fn b2_fd_above_fd_setsize(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    // SAFETY: duplicates our own fd to a number at or above 1100.
    let high = unsafe { libc::fcntl(p.rfd(), libc::F_DUPFD_CLOEXEC, 1100) };
    assert!(high >= 1024, "F_DUPFD: {}", std::io::Error::last_os_error());
    p.put(b"x");
    let r = d.try_submit(
        Op::Read {
            fd: high,
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(8)),
        },
        1,
        None,
    );
    let high_result = match r {
        Err(e) => Err(e.error),
        Ok(_) => d.wait_token(1, WAIT).result,
    };
    let p2 = Pipe::new(d.nonblocking());
    p2.put(b"ok");
    d.submit(
        Op::Read {
            fd: p2.rfd(),
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(8)),
        },
        2,
    );
    let other = d.wait_token(2, WAIT);
    assert_eq!(other.result.unwrap(), 2, "other ops are unaffected");
    match d.d.capabilities().max_fd {
        Some(max) if high > max => {
            let e = high_result.unwrap_err();
            assert!(e.to_string().contains("FD_SETSIZE"), "a clear error: {e}");
        }
        _ => assert_eq!(high_result.unwrap(), 1, "the op works on a high fd"),
    }
    // SAFETY: closing the duplicate we made; nothing else uses it.
    unsafe { libc::close(high) };
}

pub fn b3_zero_length_ops(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    d.submit(
        Op::Write {
            fd: p.wfd(),
            offset: Offset::Current,
            buf: AnyBuf::new(Vec::new()),
        },
        1,
    );
    assert_eq!(d.wait_token(1, WAIT).result.unwrap(), 0);
    let f = crate::harness::TempFile::with(b"abc");
    let file = f.raw_fd();
    use std::os::fd::AsRawFd;
    d.submit(
        Op::Read {
            fd: file.as_raw_fd(),
            offset: ringport::Offset::At(0),
            buf: AnyBufMut::new(Vec::new()),
        },
        2,
    );
    assert_eq!(d.wait_token(2, WAIT).result.unwrap(), 0);
}

pub fn b4_bad_sockaddr(b: Target) {
    let mut d = Drv::new(b);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    use std::os::fd::AsRawFd;
    let mut addr = SockAddr::empty();
    // SAFETY: writing the family field of plain data.
    unsafe { (*addr.as_mut_ptr()).sa_family = 0x7777 };
    let r = d.d.submit(
        Op::Connect {
            fd: s.as_raw_fd(),
            addr: Box::new(addr),
        },
        1,
        None,
    );
    let e = match r {
        Err(e) => e.error,
        Ok(_) => d.wait_token(1, WAIT).result.unwrap_err(),
    };
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let mut addr = SockAddr::from("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap());
    *addr.len_mut() = 5;
    let e =
        d.d.submit(
            Op::SendTo {
                fd: s.as_raw_fd(),
                buf: AnyBuf::new(vec![1u8]),
                addr: Box::new(addr),
            },
            2,
            None,
        )
        .map(|_| ())
        .map_err(|e| e.error);
    let e = match e {
        Err(e) => e,
        Ok(()) => d.wait_token(2, WAIT).result.unwrap_err(),
    };
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
