//! Signal-driven I/O when the kernel's signal queue overflows: the kernel
//! sends plain SIGIO instead of the queued real-time signals, and the poller
//! must rescan every fd and lose nothing. Runs in a child process whose
//! `RLIMIT_SIGPENDING` is lowered, so the overflow really happens.

use ringport_core::{AnyBufMut, Driver, Offset, Op};
use ringport_shim::{PollerKind, ShimDriver};
use std::time::{Duration, Instant};

const PIPES: usize = 128;

#[test]
fn overflow_rescans_and_loses_nothing() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["overflow_child", "--exact", "--ignored", "--nocapture"])
        .env("RINGPORT_SIGIO_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("SIGIO OVERFLOW OK"), "child output:\n{text}");
}

#[test]
#[ignore = "runs only as a child process of overflow_rescans_and_loses_nothing"]
fn overflow_child() {
    if std::env::var("RINGPORT_SIGIO_CHILD").is_err() {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: 2,
        rlim_max: 2,
    };
    // SAFETY: lowers this child's own pending-signal limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_SIGPENDING, &lim) }, 0);
    let mut d = ShimDriver::new(PollerKind::Sigio).unwrap();
    let mut pipes = Vec::new();
    for token in 0..PIPES {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two fds.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        d.submit(
            Op::Read {
                fd: fds[0],
                offset: Offset::Current,
                buf: AnyBufMut::new(Vec::with_capacity(8)),
            },
            token as u64,
            None,
        )
        .unwrap();
        pipes.push(fds);
    }
    let mut out = Vec::new();
    d.wait(&mut out, 0, Some(Duration::ZERO)).unwrap();
    assert!(out.is_empty(), "nothing was written yet");
    // Every pipe becomes readable at once: far more signals than may queue.
    for p in &pipes {
        // SAFETY: one byte to our own pipe.
        assert_eq!(unsafe { libc::write(p[1], b"x".as_ptr().cast(), 1) }, 1);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while out.len() < PIPES && Instant::now() < end {
        d.wait(&mut out, 1, Some(Duration::from_millis(200)))
            .unwrap();
    }
    assert_eq!(out.len(), PIPES, "every read completed");
    assert!(out.iter().all(|c| c.result.as_ref().ok() == Some(&1)));
    assert!(
        d.rescans() > 0,
        "the signal queue never overflowed; the test did not test"
    );
    println!(
        "SIGIO OVERFLOW OK: {} reads, {} rescans",
        out.len(),
        d.rescans()
    );
}
