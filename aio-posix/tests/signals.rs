//! The aio driver and signals from outside glibc's aio: a stray signal of
//! the driver's number, and an application's own handler for it. Each runs
//! in a child process (the signals and handlers are process-wide).

use ringport_aio::AioDriver;
use ringport_core::{AnyBufMut, Driver, Offset, Op};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The signal the driver uses for completions.
fn aio_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// Runs the ignored test `name` of this binary as a child with `var` set;
/// fails with its output unless it passed and printed `marker`.
fn in_child(name: &str, var: &str, marker: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--ignored", "--nocapture"])
        .env(var, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child {name} failed:\n{text}");
    assert!(text.contains(marker), "child {name} did not run:\n{text}");
}

fn temp(tag: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("ringport-aio-sig-{}-{tag}", std::process::id()));
    std::fs::write(&p, vec![7u8; 64 * 1024]).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    (p, f)
}

/// `n` reads of 64 bytes, one after the other (each waits for the last);
/// how long they took.
fn sequential_reads(d: &mut dyn Driver, fd: i32, n: usize) -> Duration {
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..n {
        d.submit(
            Op::Read {
                fd,
                offset: Offset::At((i * 64) as u64),
                buf: AnyBufMut::new(Vec::with_capacity(64)),
            },
            i as u64,
            None,
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while out.is_empty() {
            assert!(Instant::now() < end, "read {i} did not complete in 5 s");
            d.wait(&mut out, 1, Some(Duration::from_secs(1))).unwrap();
        }
        let c = out.pop().unwrap();
        assert_eq!(c.result.unwrap(), 64, "read {i}");
    }
    start.elapsed()
}

/// After a stray `kill(getpid(), SIGRTMIN+7)` (not from glibc's aio, value
/// 0), 100 sequential reads finish in under 100 ms: the signal leaves no
/// hole in the driver's completion queue.
#[test]
fn stray_signal_leaves_no_hole() {
    in_child("stray_signal_child", "RINGPORT_AIO_STRAY", "STRAY OK");
}

#[test]
#[ignore = "runs only as a child process of stray_signal_leaves_no_hole"]
fn stray_signal_child() {
    if std::env::var("RINGPORT_AIO_STRAY").is_err() {
        return;
    }
    let (p, f) = temp("stray");
    for per_request in [false, true] {
        let mut d = AioDriver::builder()
            .signal_per_request(per_request)
            .build_with_epoll()
            .unwrap();
        sequential_reads(&mut d, f.as_raw_fd(), 10);
        // SAFETY: sends our own process the driver's signal, whose handler
        // the driver installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), aio_signal()) }, 0);
        std::thread::sleep(Duration::from_millis(5));
        let took = sequential_reads(&mut d, f.as_raw_fd(), 100);
        assert!(
            took < Duration::from_millis(100),
            "100 reads after a stray signal took {took:?} (signal per request: {per_request})"
        );
        println!("STRAY OK: 100 reads in {took:?} (signal per request: {per_request})");
    }
    let _ = std::fs::remove_file(p);
}

static APP_HITS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn app_handler(_sig: libc::c_int) {
    APP_HITS.fetch_add(1, Ordering::SeqCst);
}

/// The handler installed for `sig` now.
fn current_handler(sig: i32) -> usize {
    // SAFETY: reads the disposition into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

/// An application that handles SIGRTMIN+7 itself keeps its handler: the
/// driver refuses to start, with an error naming the signal, instead of
/// replacing it.
#[test]
fn application_handler_is_not_replaced() {
    in_child("app_handler_child", "RINGPORT_AIO_APP", "APP HANDLER OK");
}

#[test]
#[ignore = "runs only as a child process of application_handler_is_not_replaced"]
fn app_handler_child() {
    if std::env::var("RINGPORT_AIO_APP").is_err() {
        return;
    }
    let sig = aio_signal();
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = app_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
    let err = match AioDriver::new() {
        Ok(_) => panic!("the driver started over the application's handler"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("SIGRTMIN+7"),
        "the error names the signal: {msg}"
    );
    assert_eq!(
        current_handler(sig),
        app_handler as *const () as usize,
        "the application's handler was replaced"
    );
    // SAFETY: our own process, a signal we handle.
    assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
    let end = Instant::now() + Duration::from_secs(2);
    while APP_HITS.load(Ordering::SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        APP_HITS.load(Ordering::SeqCst),
        1,
        "the application's handler ran"
    );
    println!("APP HANDLER OK: {msg}");
}
