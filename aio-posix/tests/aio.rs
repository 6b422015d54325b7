//! The aio driver's own tests: file requests through glibc aio with real
//! files; streams through the delegate. (The conformance suite in the
//! workspace's `tests/` runs every case on the facade's aio backend too.)

use ringport_aio::AioDriver;
use ringport_core::{AnyBuf, AnyBufMut, Completion, Driver, Offset, Op};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn delegate() -> Box<dyn Driver> {
    Box::new(ringport_shim::ShimDriver::new(ringport_shim::PollerKind::Epoll).expect("epoll shim"))
}

fn temp(contents: &[u8], tag: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("ringport-aio-{}-{tag}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    (p, f)
}

fn collect(d: &mut dyn Driver, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            Instant::now() < end,
            "only {} of {n} completions",
            out.len()
        );
        d.wait(&mut out, 1, Some(Duration::from_secs(1))).unwrap();
    }
    out
}

fn pattern(i: usize) -> u8 {
    (i * 7 + i / 4096) as u8
}

#[test]
fn read_write_fsync_through_aio() {
    let (p, f) = temp(b"0123456789", "rw");
    let mut d = AioDriver::builder().build(delegate()).unwrap();
    let fd = f.as_raw_fd();
    d.submit(
        Op::Write {
            fd,
            offset: ringport_core::Offset::At(10),
            buf: AnyBuf::new(b"abc".to_vec()),
        },
        1,
        None,
    )
    .unwrap();
    d.submit(
        Op::Fsync {
            fd,
            data_only: false,
        },
        2,
        None,
    )
    .unwrap();
    d.submit(
        Op::Fsync {
            fd,
            data_only: true,
        },
        3,
        None,
    )
    .unwrap();
    let all = collect(&mut d, 3);
    for c in &all {
        assert!(c.result.is_ok(), "{:?}", c.result);
    }
    d.submit(
        Op::Read {
            fd,
            offset: ringport_core::Offset::At(2),
            buf: AnyBufMut::new(Vec::with_capacity(64)),
        },
        4,
        None,
    )
    .unwrap();
    let c = collect(&mut d, 1).pop().unwrap();
    assert_eq!(c.result.unwrap(), 11);
    let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!(v, b"23456789abc");
    std::fs::remove_file(p).unwrap();
}

#[test]
fn ten_thousand_requests_in_flight() {
    const N: usize = 10_000;
    const SIZE: usize = 4 << 20;
    let data: Vec<u8> = (0..SIZE).map(pattern).collect();
    let (p, f) = temp(&data, "10k");
    let mut d = AioDriver::builder()
        .max_in_flight(N)
        .signal_per_request(true)
        .build(delegate())
        .unwrap();
    let fd = f.as_raw_fd();
    let mut offsets = Vec::new();
    for i in 0..N {
        let off = (i * 4099) % (SIZE - 256);
        offsets.push(off);
        d.submit(
            Op::Read {
                fd,
                offset: ringport_core::Offset::At(off as u64),
                buf: AnyBufMut::new(Vec::with_capacity(256)),
            },
            i as u64,
            None,
        )
        .unwrap();
    }
    let all = collect(&mut d, N);
    assert_eq!(all.len(), N);
    let tokens: HashSet<u64> = all.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N, "one completion each");
    for c in all {
        assert_eq!(c.result.as_ref().unwrap(), &256);
        let off = offsets[c.token as usize];
        let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
        assert!(
            v.iter().enumerate().all(|(i, &b)| b == pattern(off + i)),
            "bytes at {off}"
        );
    }
    assert_eq!(d.in_flight(), 0);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn pipes_go_to_the_delegate() {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let mut d = AioDriver::builder().build(delegate()).unwrap();
    d.submit(
        Op::Read {
            fd: fds[0],
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(8)),
        },
        1,
        None,
    )
    .unwrap();
    d.submit(
        Op::Write {
            fd: fds[1],
            offset: Offset::Current,
            buf: AnyBuf::new(b"hi".to_vec()),
        },
        2,
        None,
    )
    .unwrap();
    let all = collect(&mut d, 2);
    let r = all.iter().find(|c| c.token == 1).unwrap();
    assert_eq!(r.result.as_ref().unwrap(), &2);
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

/// More finished requests than the signal queue holds: glibc's notification
/// fails and overwrites results with -1/EAGAIN; the sweep must notice, issue
/// those requests again, and hand back right bytes for every one. Runs in a
/// child process with `RLIMIT_SIGPENDING` lowered.
#[test]
fn signal_queue_pressure_loses_nothing() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["sigpending_child", "--exact", "--ignored", "--nocapture"])
        .env("RINGPORT_AIO_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("AIO PRESSURE OK"), "child output:\n{text}");
}

#[test]
#[ignore = "runs only as a child process of signal_queue_pressure_loses_nothing"]
fn sigpending_child() {
    if std::env::var("RINGPORT_AIO_CHILD").is_err() {
        return;
    }
    const N: usize = 3000;
    const SIZE: usize = 1 << 20;
    let lim = libc::rlimit {
        rlim_cur: 4,
        rlim_max: 4,
    };
    // SAFETY: lowers this child's own pending-signal limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_SIGPENDING, &lim) }, 0);
    let data: Vec<u8> = (0..SIZE).map(pattern).collect();
    let (p, f) = temp(&data, "pressure");
    let mut d = AioDriver::builder()
        .max_in_flight(N)
        .signal_per_request(true)
        .build(delegate())
        .unwrap();
    let fd = f.as_raw_fd();
    let mut offsets = Vec::new();
    for i in 0..N {
        let off = (i * 331) % (SIZE - 128);
        offsets.push(off);
        d.submit(
            Op::Read {
                fd,
                offset: ringport_core::Offset::At(off as u64),
                buf: AnyBufMut::new(Vec::with_capacity(128)),
            },
            i as u64,
            None,
        )
        .unwrap();
    }
    let all = collect(&mut d, N);
    let tokens: HashSet<u64> = all.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N, "one completion each");
    for c in all {
        assert_eq!(c.result.as_ref().unwrap(), &128, "token {}", c.token);
        let off = offsets[c.token as usize];
        let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
        assert!(
            v.iter().enumerate().all(|(i, &b)| b == pattern(off + i)),
            "bytes at {off}"
        );
    }
    std::fs::remove_file(p).unwrap();
    assert!(
        d.reissued() > 0,
        "no notification was lost; the test did not test"
    );
    println!(
        "AIO PRESSURE OK: {N} reads, {} reissued after lost notifications",
        d.reissued()
    );
}

/// fds no op validated (negative, or far beyond the open-file limit) never
/// size a per-fd table: cancel-by-fd and every fd op on them end with an
/// error (or nothing to cancel) instead of growing a table to fd + 1.
#[test]
fn huge_fds_size_no_table() {
    let mut d = AioDriver::builder().build(delegate()).unwrap();
    for fd in [i32::MAX, i32::MAX - 1, 1 << 30, -1, i32::MIN] {
        assert_eq!(d.cancel_fd(fd).unwrap(), 0, "cancel_fd({fd})");
        let r = d.submit(
            Op::Cancel {
                target: ringport_core::CancelTarget::Fd(fd),
            },
            1,
            None,
        );
        if r.is_ok() {
            let c = collect(&mut d, 1).pop().unwrap();
            assert!(c.result.is_err(), "nothing to cancel on fd {fd}");
        }
        for op in [
            Op::Fsync {
                fd,
                data_only: false,
            },
            Op::Close { fd },
            Op::Write {
                fd,
                offset: ringport_core::Offset::At(0),
                buf: AnyBuf::new(b"x".to_vec()),
            },
        ] {
            let e = d.submit(op, 2, None).unwrap_err();
            assert_eq!(e.error.raw_os_error(), Some(libc::EBADF), "fd {fd}");
        }
    }
    assert_eq!(d.in_flight(), 0);
}
