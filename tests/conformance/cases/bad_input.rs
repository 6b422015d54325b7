//! B1–B4: bad input.

use crate::harness::{Drv, Pipe};
use ringport::{AnyBuf, AnyBufMut, Backend, Offset, Op, OpKind, SockAddr, Support};
use std::io::ErrorKind;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub fn b1_unsupported_op(b: Backend) {
    let mut d = Drv::new(b);
    let caps = d.d.capabilities().clone();
    let unsupported: Vec<OpKind> = OpKind::ALL
        .into_iter()
        .filter(|k| caps.get(*k) == Support::Unsupported)
        .collect();
    if unsupported.is_empty() {
        assert!(
            caps.supports_all(),
            "capabilities say every op is supported"
        );
        return;
    }
    // Submit the first unsupported kind we can build generically.
    let kind = unsupported[0];
    let op = match kind {
        OpKind::Poll => Op::Poll {
            fd: 0,
            events: libc::POLLIN,
        },
        OpKind::Stat => Op::Stat {
            fd: 0,
            stat: Box::default(),
        },
        _ => Op::Nop,
    };
    if op.kind() != kind {
        return;
    }
    let e = d.d.submit(op, 1, None).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Unsupported);
    let msg = e.error.to_string();
    assert!(
        msg.contains(kind.name()) && msg.contains(d.d.name()),
        "{msg}"
    );
}

pub fn b2_fd_above_fd_setsize(b: Backend) {
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

pub fn b3_zero_length_ops(b: Backend) {
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

pub fn b4_bad_sockaddr(b: Backend) {
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
