//! `wait` skips the poller's syscall when enough completions are ready and
//! no fd waits for readiness, and never skips it while one does (so an op
//! waiting on a socket is not starved by ops that complete at submit).
#![cfg(target_os = "linux")]

use ringport_core::{AnyBufMut, Completion, Driver, Op};
use ringport_shim::{PollerKind, ShimDriver};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

const KINDS: [PollerKind; 4] = [
    PollerKind::Epoll,
    PollerKind::Poll,
    PollerKind::Select,
    PollerKind::Sigio,
];

#[test]
fn ready_nops_need_no_poller_call() {
    for kind in KINDS {
        let mut d = ShimDriver::new(kind).unwrap();
        let mut out: Vec<Completion> = Vec::new();
        for round in 0..100u64 {
            for i in 0..4 {
                d.submit(Op::Nop, round * 4 + i, None)
                    .map_err(|e| e.error)
                    .unwrap();
            }
            d.wait(&mut out, 4, Some(Duration::from_secs(5))).unwrap();
        }
        assert_eq!(out.len(), 400, "{kind:?}");
        assert!(out.iter().all(|c| c.result.as_ref().is_ok()));
        assert_eq!(
            d.poller_waits(),
            0,
            "{kind:?}: nothing waited for readiness"
        );
    }
}

#[test]
fn a_waiting_socket_read_is_looked_at_even_when_enough_is_ready() {
    for kind in KINDS {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut d = ShimDriver::new(kind).unwrap();
        let recv = Op::Recv {
            fd: server.as_raw_fd(),
            buf: AnyBufMut::new(Vec::with_capacity(64)),
            flags: 0,
        };
        d.submit(recv, 1, None).map_err(|e| e.error).unwrap();
        let mut out: Vec<Completion> = Vec::new();
        d.wait(&mut out, 0, Some(Duration::ZERO)).unwrap();
        assert!(out.is_empty(), "{kind:?}: nothing to read yet");
        client.write_all(b"ping").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // A nop makes the wait's minimum; the poller is still asked, and the
        // read comes back in the same wait.
        let before = d.poller_waits();
        d.submit(Op::Nop, 2, None).map_err(|e| e.error).unwrap();
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
        assert!(d.poller_waits() > before, "{kind:?}");
        let mut tokens: Vec<u64> = out.iter().map(|c| c.token).collect();
        tokens.sort();
        assert_eq!(tokens, [1, 2], "{kind:?}: the read was not starved");
        let c = out.into_iter().find(|c| c.token == 1).unwrap();
        assert_eq!(c.result.unwrap(), 4);
        // With the read done nothing waits: ready nops skip the poller again.
        let before = d.poller_waits();
        d.submit(Op::Nop, 3, None).map_err(|e| e.error).unwrap();
        let mut out = Vec::new();
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(d.poller_waits(), before, "{kind:?}");
    }
}
