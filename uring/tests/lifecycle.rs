//! Op lifecycles on both ring set-ups (`DEFER_TASKRUN` and `COOP_TASKRUN`):
//! a cancel that meets a partial send's unreaped result still ends the send.

use ringport_core::buf::AnyBuf;
use ringport_core::{Driver, Op};
use ringport_uring::UringDriver;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BIG: usize = 8 << 20;

fn cancel_meets_partial_send(defer_taskrun: bool) {
    let mut d = UringDriver::builder()
        .entries(4)
        .defer_taskrun(defer_taskrun)
        .build()
        .expect("ring");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    let id = d
        .submit(
            Op::Send {
                fd: ours.as_raw_fd(),
                buf: AnyBuf::new(vec![7u8; BIG]),
                flags: 0,
            },
            1,
            None,
        )
        .expect("submit send");
    // A full submission queue makes `submit` enter the kernel, which runs the
    // send: its short result (the socket buffer's worth) waits in the CQ.
    for t in 0..16 {
        d.submit(Op::Nop, 100 + t, None).expect("submit nop");
    }
    d.cancel(id).expect("cancel the send");
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    let send = loop {
        if let Some(i) = out
            .iter()
            .position(|c: &ringport_core::Completion| c.token == 1)
        {
            break out.remove(i);
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the cancelled send did not complete (setup {})",
            d.setup_flags()
        );
        d.wait(&mut out, 1, Some(left)).unwrap();
    };
    let sent = match send.result {
        Ok(n) => {
            assert!(n < BIG, "a cancelled send reports the bytes that went out");
            n
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
            0
        }
    };
    while out.len() < 16 {
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
    }
    assert_eq!(d.in_flight(), 0);
    // Nothing more goes out after the send's completion: the peer gets
    // exactly the bytes reported (when a count was reported).
    drop(d);
    drop(ours);
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    if sent > 0 {
        assert_eq!(got.len(), sent, "the peer got what the send reported");
    }
}

#[test]
fn cancel_meets_partial_send_defer_taskrun() {
    cancel_meets_partial_send(true);
}

#[test]
fn cancel_meets_partial_send_coop_taskrun() {
    cancel_meets_partial_send(false);
}

/// No fd number reaches the per-fd table unvalidated: cancels by a negative
/// or huge fd (through `cancel_fd` and through `Op::Cancel`) end with an
/// error instead of sizing a table by the number.
#[test]
fn cancel_by_bad_fd_sizes_no_table() {
    use ringport_core::CancelTarget;
    let mut d = UringDriver::new().expect("ring");
    for fd in [-1, i32::MAX, 1 << 30] {
        assert_eq!(
            d.cancel_fd(fd).unwrap_or(0),
            0,
            "cancel_fd({fd}) finds nothing"
        );
        match d.submit(
            Op::Cancel {
                target: CancelTarget::Fd(fd),
            },
            7,
            None,
        ) {
            Err(e) => assert_ne!(
                e.error.kind(),
                std::io::ErrorKind::WouldBlock,
                "{}",
                e.error
            ),
            Ok(_) => {
                let mut out = Vec::new();
                while out.is_empty() {
                    d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
                }
                assert!(
                    out[0].result.is_err(),
                    "a cancel of fd {fd} reaches nothing"
                );
            }
        }
    }
    assert_eq!(d.in_flight(), 0);
}
