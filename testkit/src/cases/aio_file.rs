//! A-cases: the file path's lifecycle at its edges — a close pending on a
//! file, ids of ops handed on to another driver, fds a driver creates, fd
//! numbers reused after a close, and dropping a driver with a file op still
//! running. They were found on the aio backend (which routes files to glibc
//! aio and everything else to a delegate) but hold on every backend.

use crate::harness::{run_child, Counted, Drv, Pipe, TempFile};
use crate::Target;
use ringport::{AnyBuf, AnyBufMut, CancelTarget, Offset, Op};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Runs `test` (a `child!` of this backend) in a child process with `var`
/// set, and fails with its output unless it passed.
fn in_child(b: Target, test: &str, var: &str) {
    let out = run_child(&format!("{}::{test}", b.name()), &[(var, "1".into())]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {test} failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child {test} did not run:\n{text}"
    );
}

/// The fd number's open file, or `None` once it is closed.
fn fd_target(fd: RawFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// How many fds this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Once a close is submitted for a file, no new op on it is accepted while
/// the close is pending (each is refused at submit, and the op comes back);
/// the op already accepted still completes, and the close completes after
/// it. A backend may also end the close at once (cancelling the write
/// first): then the fd is gone, and the late ops name a free number, which
/// they may report in their completions instead. (In a child process, so
/// such a free number is not some parallel test's fd.)
pub fn a1_no_op_starts_on_a_closing_file(b: Target) {
    in_child(b, "a1_child", "RINGPORT_A1_CHILD");
}

pub fn a1_child(b: Target) {
    if std::env::var("RINGPORT_A1_CHILD").is_err() {
        return;
    }
    const BIG: usize = 4 << 20;
    let f = TempFile::with(b"0123456789");
    let fd = f.raw_fd().into_raw_fd(); // the driver's close owns it now
    let mut d = Drv::new(b);
    d.submit(
        Op::Write {
            fd,
            offset: Offset::At(0),
            buf: AnyBuf::new(vec![7u8; BIG]),
        },
        1,
    );
    // Let the write start (a write: no backend finishes it inside submit),
    // so the close below waits for it.
    d.d.wait(&mut d.done, 0, Some(Duration::ZERO))
        .expect("wait");
    d.submit(Op::Close { fd }, 2);
    let pending = fd_target(fd).is_some();
    let late = [
        Op::Read {
            fd,
            offset: Offset::At(0),
            buf: AnyBufMut::new(Vec::with_capacity(4)),
        },
        Op::Write {
            fd,
            offset: Offset::At(4),
            buf: AnyBuf::new(b"cd".to_vec()),
        },
        Op::Fsync {
            fd,
            data_only: false,
        },
        Op::Read {
            fd,
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(4)),
        },
    ];
    let want = ringport::drv::fd_closing(fd).to_string();
    let mut accepted = Vec::new();
    for (i, op) in late.into_iter().enumerate() {
        let kind = op.kind();
        let token = 10 + i as u64;
        match d.d.submit(op, token, None) {
            Ok(_) if pending => {
                panic!("{kind:?} on fd {fd} was accepted while its close is pending")
            }
            Ok(_) => accepted.push(token),
            Err(e) => {
                assert_eq!(
                    e.error.to_string(),
                    want,
                    "{kind:?} refused with its reason"
                );
                assert_eq!(e.op.kind(), kind, "the refused op comes back");
            }
        }
    }
    for t in accepted {
        let c = d.wait_token(t, WAIT);
        let e = c.result.expect_err("an op on a closed fd");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }
    let all = d.collect(2, WAIT);
    let w = all
        .iter()
        .position(|c| c.token == 1)
        .expect("the write completes");
    let c = all
        .iter()
        .position(|c| c.token == 2)
        .expect("the close completes");
    match &all[w].result {
        Ok(n) => assert_eq!(*n, BIG),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}"),
    }
    assert_eq!(all[c].result.as_ref().unwrap(), &0, "the close succeeds");
    assert!(w < c, "the write completes before the close");
    assert_eq!(fd_target(fd), None, "the close closed the fd");
    assert_eq!(d.d.in_flight(), 0);
}

/// Cancelling a close (which may be waiting for the fd's ops) never cancels
/// some other op: an id the driver keeps for an op it handed on is that op's
/// real id, never a made-up one that names another op.
pub fn a2_cancel_of_a_close_touches_no_other_op(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    // The first op this driver (or its delegate) ever sees.
    d.submit(
        Op::Read {
            fd: p.rfd(),
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        1,
    );
    let f = TempFile::with(b"0123456789");
    let fd = f.raw_fd().into_raw_fd(); // the driver's close owns it now
    d.submit(
        Op::Write {
            fd,
            offset: Offset::At(0),
            buf: AnyBuf::new(vec![7u8; 4 << 20]),
        },
        2,
    );
    // Let the write start, so the close waits for it.
    d.d.wait(&mut d.done, 0, Some(Duration::ZERO))
        .expect("wait");
    let close = d.submit(Op::Close { fd }, 3);
    let cancel = d.d.submit(
        Op::Cancel {
            target: CancelTarget::Op(close),
        },
        4,
        None,
    );
    let cancel_accepted = cancel.is_ok();
    // Whatever cancelling a close means on this backend, it ends, and so do
    // the write and the close.
    let mut need = vec![2, 3];
    if cancel_accepted {
        need.push(4);
    }
    for t in need {
        let c = d.wait_token(t, WAIT);
        if t == 3 {
            match &c.result {
                Ok(n) => assert_eq!(*n, 0),
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                    // The close itself was cancelled: the fd is still ours.
                    // SAFETY: the driver handed the fd back without closing it.
                    unsafe { libc::close(fd) };
                }
                Err(e) => panic!("close: {e}"),
            }
        }
    }
    d.idle(Duration::from_millis(50));
    assert!(
        d.done.iter().all(|c| c.token != 1),
        "the pipe read was ended by a cancel aimed at a close: {:?}",
        d.done
            .iter()
            .find(|c| c.token == 1)
            .map(|c| c.result.as_ref().map_err(|e| e.to_string()))
    );
    p.put(b"still here");
    let c = d.wait_token(1, WAIT);
    assert_eq!(c.result.unwrap(), 10, "the pipe read ends with the data");
    let buf: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!(buf, b"still here");
    assert_eq!(d.d.in_flight(), 0);
}

/// Dropping drivers and runtimes closes every fd they created: after many
/// were alive at once and dropped, the process has no more fds open than
/// before. (In a child process, so no parallel test's fds are counted.)
pub fn a3_dropped_drivers_close_their_fds(b: Target) {
    in_child(b, "a3_child", "RINGPORT_A3_CHILD");
}

pub fn a3_child(b: Target) {
    if std::env::var("RINGPORT_A3_CHILD").is_err() {
        return;
    }
    let f = TempFile::with(b"0123456789");
    let round = |n: usize| {
        let mut drivers = Vec::new();
        for i in 0..n {
            let mut d = Drv::new(b);
            // A file op and a wait, so whatever the driver sets up lazily
            // for files and for waiting exists.
            let file = f.raw_fd();
            d.submit(
                Op::Read {
                    fd: file.as_raw_fd(),
                    offset: Offset::At(0),
                    buf: AnyBufMut::new(Vec::with_capacity(4)),
                },
                i as u64,
            );
            let c = d.wait_token(i as u64, WAIT);
            assert_eq!(c.result.unwrap(), 4);
            drivers.push(d);
        }
        drop(drivers);
        for _ in 0..n {
            let rt = crate::harness::rt(b);
            rt.block_on(async {
                let file = ringport::File::open(&f.path).await.unwrap();
                let (r, _) = file.read_at(Vec::with_capacity(4), 0).await;
                assert_eq!(r.unwrap(), 4);
            });
        }
    };
    // Warm up: whatever a process sets up once (not per driver) exists now.
    round(1);
    let before = open_fds();
    round(20);
    round(20);
    let after = open_fds();
    assert_eq!(
        after, before,
        "fds open before and after creating and dropping 40 drivers and 40 runtimes"
    );
}

/// A file closed through the driver, then a pipe given the same fd number:
/// the pipe is routed and read as a pipe (the driver's state for the file
/// did not outlive the file). In a child process, where the number is
/// known to be free for the pipe.
pub fn a4_reused_fd_number_is_routed_by_its_kind(b: Target) {
    in_child(b, "a4_child", "RINGPORT_A4_CHILD");
}

pub fn a4_child(b: Target) {
    if std::env::var("RINGPORT_A4_CHILD").is_err() {
        return;
    }
    let f = TempFile::with(b"0123456789");
    let mut d = Drv::new(b);
    let fd = f.raw_fd().into_raw_fd(); // the driver's close owns it now
    d.submit(
        Op::Read {
            fd,
            offset: Offset::At(0),
            buf: AnyBufMut::new(Vec::with_capacity(4)),
        },
        1,
    );
    assert_eq!(d.wait_token(1, WAIT).result.unwrap(), 4);
    d.submit(Op::Close { fd }, 2);
    let mut close_seen = false;
    if fd_target(fd).is_some() {
        // This backend closes later: wait for it.
        assert_eq!(d.wait_token(2, WAIT).result.unwrap(), 0);
        close_seen = true;
    }
    assert!(fd_target(fd).is_none(), "fd {fd} is closed");
    let Pipe { r, w } = Pipe::new(d.nonblocking());
    let p = Pipe {
        r: std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
        w,
    };
    let r = r.into_raw_fd();
    if r != fd {
        // SAFETY: fd is a free number in this single-threaded child; the
        // pipe's read end moves onto it.
        let got = unsafe { libc::dup2(r, fd) };
        assert_eq!(got, fd, "dup2: {}", std::io::Error::last_os_error());
        // SAFETY: r is ours and now duplicated.
        unsafe { libc::close(r) };
    }
    if d.nonblocking() {
        // SAFETY: sets a flag on our own fd.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    }
    // A positional read of the empty pipe: a pipe is not routed as a file
    // (glibc aio would park a worker in it that no cancel can stop), so a
    // cancel ends it at once — or it fails at once, if this backend refuses
    // an offset on a pipe.
    let id = d.submit(
        Op::Read {
            fd,
            offset: Offset::At(0),
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        3,
    );
    d.idle(Duration::from_millis(30));
    if d.done.iter().all(|c| c.token != 3) {
        let _ = d.d.cancel(id);
    }
    let end = Instant::now() + Duration::from_secs(2);
    while d.done.iter().all(|c| c.token != 3) && Instant::now() < end {
        d.d.wait(&mut d.done, 1, Some(Duration::from_millis(50)))
            .expect("wait");
    }
    let Some(i) = d.done.iter().position(|c| c.token == 3) else {
        p.put(b"free the worker");
        panic!("a cancelled read of an empty pipe on fd {fd} did not end (routed as a file?)");
    };
    let c = d.done.remove(i);
    let e = c.result.expect_err("the pipe was empty");
    assert!(
        matches!(e.raw_os_error(), Some(libc::ECANCELED) | Some(libc::ESPIPE)),
        "the read of the pipe on fd {fd}: {e}"
    );
    // And the pipe reads as a pipe.
    p.put(b"pipe");
    d.submit(
        Op::Read {
            fd,
            offset: Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        5,
    );
    let c = d.wait_token(5, WAIT);
    let n = c
        .result
        .unwrap_or_else(|e| panic!("the read of the pipe on fd {fd}: {e}"));
    let buf: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!((n, &buf[..]), (4, &b"pipe"[..]));
    if !close_seen {
        assert_eq!(d.wait_token(2, WAIT).result.unwrap(), 0);
    }
    d.submit(Op::Close { fd }, 4);
    assert_eq!(d.wait_token(4, WAIT).result.unwrap(), 0);
    assert_eq!(d.d.in_flight(), 0);
}

/// Opens `/proc/kmsg` so that a read of it blocks (its pending messages
/// drained first), or says why it cannot (needs root). The drained
/// messages stay readable with `dmesg`, which reads the log buffer itself.
fn blocking_file() -> Option<std::fs::File> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/proc/kmsg")
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("SKIPPED: no regular file whose read blocks (/proc/kmsg: {e})");
            return None;
        }
    };
    let mut sink = vec![0u8; 1 << 16];
    while f.read(&mut sink).is_ok_and(|n| n > 0) {}
    // SAFETY: clears O_NONBLOCK on our own fd.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
    Some(f)
}

/// Whether a thread of this process is blocked in a read of `/proc/kmsg`.
fn kmsg_read_running() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "syslog_print")
    })
}

/// Dropping a driver while a file read blocks (a read of a quiet
/// `/proc/kmsg`) with a close of that fd parked behind it: the drop ends
/// within a bound, the fd is closed, and the buffer of the read is not
/// freed while a thread is still blocked in it. (In a child process: the
/// fd number is checked after the close, where no parallel test can have
/// reused it.)
pub fn a5_drop_with_a_blocked_file_read_closes_the_fd(b: Target) {
    in_child(b, "a5_child", "RINGPORT_A5_CHILD");
}

pub fn a5_child(b: Target) {
    if std::env::var("RINGPORT_A5_CHILD").is_err() {
        return;
    }
    let Some(k) = blocking_file() else {
        return;
    };
    let fd = k.into_raw_fd(); // the driver's close owns it now
    let mut d = Drv::new(b);
    let (buf, drops) = Counted::new(256);
    d.submit(
        Op::Read {
            fd,
            offset: Offset::At(0),
            buf: AnyBufMut::new(buf),
        },
        1,
    );
    d.idle(Duration::from_millis(100));
    if !d.done.is_empty() {
        eprintln!(
            "SKIPPED: the kernel log was not quiet: {:?}",
            d.done[0].result
        );
        return;
    }
    match d.d.submit(Op::Close { fd }, 2, None) {
        Ok(_) => {}
        Err(e) => panic!("close refused: {}", e.error),
    }
    d.idle(Duration::from_millis(50));
    let start = Instant::now();
    drop(d);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "the drop took {took:?}");
    assert_eq!(fd_target(fd), None, "fd {fd} is still open after the drop");
    // While some thread of this process (a glibc aio worker, an io-wq
    // worker, a pool thread) still sits in the read, the read may still
    // write the buffer: it must not have been freed. (A backend that could
    // cancel the read in the kernel may free it.)
    if kmsg_read_running() {
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the buffer of a read still running was freed"
        );
    }
}

/// The same through the runtime: a task blocked reading a quiet
/// `/proc/kmsg` through a `File`; dropping the runtime ends within a bound
/// and the file's fd is closed. (In a child process, for the fd check.)
pub fn a6_runtime_drop_with_a_blocked_file_read_closes_the_fd(b: Target) {
    in_child(b, "a6_child", "RINGPORT_A6_CHILD");
}

pub fn a6_child(b: Target) {
    if std::env::var("RINGPORT_A6_CHILD").is_err() {
        return;
    }
    let Some(k) = blocking_file() else {
        return;
    };
    let fd = k.as_raw_fd();
    let rt = crate::harness::rt(b);
    rt.block_on(async {
        let file = ringport::File::from_std(k);
        ringport::spawn(async move {
            let _ = file.read_at(Vec::with_capacity(256), 0).await;
        });
        ringport::sleep(Duration::from_millis(100))
            .await
            .expect("sleep");
    });
    let start = Instant::now();
    drop(rt);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "the drop took {took:?}");
    assert_eq!(fd_target(fd), None, "fd {fd} is still open after the drop");
}

/// A future that ends once `flag` is set, from any thread, through the
/// waker it left there.
struct Flag {
    state: std::sync::Mutex<(bool, Option<std::task::Waker>)>,
}

impl Flag {
    fn set(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        if let Some(w) = st.1.take() {
            w.wake();
        }
    }
}

struct FlagWait(std::sync::Arc<Flag>);

impl std::future::Future for FlagWait {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut st = self.0.state.lock().unwrap();
        if st.0 {
            return std::task::Poll::Ready(());
        }
        st.1 = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

/// While a file read is stuck (a read of a quiet `/proc/kmsg`), a task
/// woken from another thread runs within 50 ms of its wake: a wait that
/// has requests out still ends on a wake, not only at a timeout. (In a
/// child process: the stuck read outlives the runtime.)
pub fn a7_wake_runs_its_task_while_a_file_read_is_stuck(b: Target) {
    in_child(b, "a7_child", "RINGPORT_A7_CHILD");
}

pub fn a7_child(b: Target) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    if std::env::var("RINGPORT_A7_CHILD").is_err() {
        return;
    }
    let Some(k) = blocking_file() else {
        return;
    };
    // A lost wake would leave the task waiting forever: fail instead.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("the woken task did not run within 10 s");
        std::process::exit(1);
    });
    let rt = crate::harness::rt(b);
    let read_ended = Arc::new(AtomicBool::new(false));
    let ended = read_ended.clone();
    let late = rt.block_on(async move {
        let file = ringport::File::from_std(k);
        ringport::spawn(async move {
            let _ = file.read_at(Vec::with_capacity(256), 0).await;
            ended.store(true, Ordering::SeqCst);
        });
        ringport::sleep(Duration::from_millis(100))
            .await
            .expect("sleep");
        if read_ended.load(Ordering::SeqCst) {
            return None;
        }
        let flag = Arc::new(Flag {
            state: Mutex::new((false, None)),
        });
        let sent = Arc::new(Mutex::new(None::<Instant>));
        let (f2, s2) = (flag.clone(), sent.clone());
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            *s2.lock().unwrap() = Some(Instant::now());
            f2.set();
        });
        FlagWait(flag).await;
        let ran = Instant::now();
        th.join().unwrap();
        let sent = sent.lock().unwrap().expect("the wake was sent");
        Some(ran - sent)
    });
    let Some(late) = late else {
        eprintln!("SKIPPED: the kernel log was not quiet (the read of /proc/kmsg ended)");
        return;
    };
    assert!(
        late < Duration::from_millis(50),
        "the woken task ran {late:?} after its wake"
    );
    drop(rt);
}
