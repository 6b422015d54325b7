//! L-cases: the lifecycle rules at their edges — buffers, caller input, and
//! fd ownership (see `docs/conformance.md`).

use crate::harness::{rt, Drv, Target, TempFile};
use ringport::{AnyBuf, AnyBufMut, File, IoBuf, Offset, Op, OpenOptions};
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A read into a view that starts past the buffer's initialised bytes leaves
/// no uninitialised (or stale) bytes between them: the gap reads as zeros.
pub fn l1_slice_read_past_init_zeroes_the_gap(b: Target) {
    let f = TempFile::with(&[b'x'; 100]);
    rt(b).block_on(async {
        let file = File::open(&f.path).await.unwrap();
        // Stale bytes behind the length: the gap must not expose them.
        let mut v = vec![0xAAu8; 64];
        v.clear();
        let (r, view) = file.read_at(v.slice(16..32), 0).await;
        assert_eq!(r.unwrap(), 16);
        let v = view.into_inner();
        assert_eq!(v.len(), 32, "the length covers the view's end");
        assert!(v[..16].iter().all(|&x| x == 0), "the gap reads as zeros");
        assert!(v[16..].iter().all(|&x| x == b'x'), "the view was filled");
    });
}

/// An offset beyond the largest file offset is `InvalidInput` at submit; it
/// never means "the current position", so nothing is written.
pub fn l2_offset_out_of_range_is_invalid_input(b: Target) {
    let f = TempFile::with(b"0123456789");
    rt(b).block_on(async {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .await
            .unwrap();
        for off in [u64::MAX, i64::MAX as u64 + 1] {
            let (r, _) = file.write_at(&b"XX"[..], off).await;
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "write_at {off}: {e}");
            let (r, _) = file.read_at(Vec::with_capacity(4), off).await;
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "read_at {off}: {e}");
        }
    });
    assert_eq!(std::fs::read(&f.path).unwrap(), b"0123456789");
    // The same through the driver, and the buffer comes back.
    let file = f.raw_fd();
    let mut d = Drv::new(b);
    let e =
        d.d.submit(
            Op::Write {
                fd: file.as_raw_fd(),
                offset: Offset::At(u64::MAX),
                buf: AnyBuf::new(vec![1u8; 3]),
            },
            1,
            None,
        )
        .unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::InvalidInput);
    let buf: Vec<u8> = e.op.into_buf().unwrap().downcast().unwrap();
    assert_eq!(buf, vec![1u8; 3]);
}

/// An fd number far beyond the open-file limit gets `EBADF`, without the
/// driver sizing a table by it (which aborted the process).
pub fn l3_huge_fd_is_ebadf(b: Target) {
    let mut d = Drv::new(b);
    for (i, fd) in [i32::MAX, i32::MAX - 1, 1 << 30].into_iter().enumerate() {
        let ops = [
            Op::Read {
                fd,
                offset: Offset::Current,
                buf: AnyBufMut::new(Vec::with_capacity(8)),
            },
            Op::Read {
                fd,
                offset: Offset::At(0),
                buf: AnyBufMut::new(Vec::with_capacity(8)),
            },
            Op::Close { fd },
        ];
        for (j, op) in ops.into_iter().enumerate() {
            let token = (i * 10 + j) as u64;
            match d.d.submit(op, token, None) {
                Err(e) => assert_eq!(e.error.raw_os_error(), Some(libc::EBADF), "{}", e.error),
                Ok(_) => {
                    let c = d.wait_token(token, WAIT);
                    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EBADF));
                }
            }
        }
    }
    assert_eq!(d.d.in_flight(), 0);
}

/// `sleep` and `timeout` with `Duration::MAX` mean "never": no panic, and the
/// timed future still runs to its end.
pub fn l4_duration_max_means_never(b: Target) {
    rt(b).block_on(async {
        let r = ringport::timeout(Duration::MAX, async { 5 }).await;
        assert_eq!(r.unwrap(), 5);
        let r = ringport::timeout(Duration::from_millis(20), ringport::sleep(Duration::MAX)).await;
        assert!(r.is_err(), "a sleep of Duration::MAX does not end");
    });
}

/// How many of this process's fds refer to `path` (exact, so parallel tests
/// opening other files do not disturb the count).
fn fds_open_on(path: &std::path::Path) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
        .count()
}

/// A pipe whose reader the driver has state for (a read waited on it).
async fn used_pipe() -> (ringport::PipeReader, ringport::PipeWriter) {
    let (r, w) = ringport::pipe().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(30);
    let (res, _) = r.read_deadline(Vec::with_capacity(8), deadline).await;
    assert_eq!(res.unwrap_err().kind(), ErrorKind::TimedOut);
    (r, w)
}

/// Reads `msg` through a fresh pipe: works whatever fd numbers it gets,
/// including ones a dropped stream had.
async fn fresh_pipe_reads() -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    let (r, w) = ringport::pipe().unwrap();
    let num = r.as_raw_fd();
    // The read waits for readiness first (the data comes later), so the
    // driver must really watch this fd number.
    let reader = ringport::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        r.read_deadline(Vec::with_capacity(8), deadline).await
    });
    ringport::sleep(Duration::from_millis(20)).await.unwrap();
    let (res, _) = w.write_all(&b"hello"[..]).await;
    res.unwrap();
    let (res, buf) = reader.await.unwrap();
    assert_eq!(res.expect("a read on a reused fd number completes"), 5);
    assert_eq!(buf, b"hello");
    num
}

/// A stream dropped outside `block_on` is closed through its runtime's
/// driver, so the driver's state for that fd number is released and the next
/// fd with the number works (a bare close left it unregistered on epoll and
/// sigio: the read stalled until its deadline).
pub fn l5_fd_dropped_outside_block_on_is_closed_through_the_driver(b: Target) {
    use std::os::fd::AsRawFd;
    let rt = rt(b);
    let (r, w) = rt.block_on(used_pipe());
    let num = r.as_raw_fd();
    drop(r); // outside block_on
    drop(w);
    let reused = rt.block_on(async {
        // The deferred closes run at the runtime's next turn.
        ringport::sleep(Duration::from_millis(1)).await.unwrap();
        fresh_pipe_reads().await
    });
    eprintln!("fd {num} dropped, the fresh pipe's reader is fd {reused}");
}

/// The same for a stream dropped on another thread: the runtime closes it,
/// and a peer sees the end of the stream.
pub fn l6_fd_dropped_on_another_thread_is_closed_through_the_driver(b: Target) {
    let rt = rt(b);
    let (r, w) = rt.block_on(used_pipe());
    std::thread::spawn(move || drop(r)).join().unwrap();
    rt.block_on(async {
        ringport::sleep(Duration::from_millis(1)).await.unwrap();
        fresh_pipe_reads().await;
        // The reader is closed: a write to the pipe now fails (EPIPE).
        let (res, _) = w.write_all(&b"x"[..]).await;
        assert_eq!(res.unwrap_err().kind(), ErrorKind::BrokenPipe);
    });
}

/// A stream that outlives its runtime is closed plainly when dropped (no
/// driver is left to hold state for it), and is not leaked.
pub fn l7_fd_dropped_after_its_runtime_is_closed(b: Target) {
    let f = TempFile::with(b"abc");
    let file = {
        let rt = rt(b);
        rt.block_on(async {
            let file = File::open(&f.path).await.unwrap();
            let (r, _) = file.read_at(Vec::with_capacity(4), 0).await;
            assert_eq!(r.unwrap(), 3);
            file
        })
    };
    assert_eq!(fds_open_on(&f.path), 1);
    drop(file);
    assert_eq!(fds_open_on(&f.path), 0, "the fd was closed");
}

/// An open abandoned by `timeout` (its future dropped, the open still
/// completing) does not leak the fd it opened: the runtime closes it.
pub fn l8_abandoned_open_does_not_leak_its_fd(b: Target) {
    let f = TempFile::with(b"abc");
    {
        let rt = rt(b);
        rt.block_on(async {
            for i in 0..200u64 {
                let t = Duration::from_micros(i % 20 * 5);
                if let Ok(file) = ringport::timeout(t, File::open(&f.path)).await {
                    drop(file.unwrap());
                }
            }
            // Let every abandoned open complete and be closed.
            ringport::sleep(Duration::from_millis(50)).await.unwrap();
        });
    }
    assert_eq!(
        fds_open_on(&f.path),
        0,
        "fds of abandoned opens were leaked"
    );
}

/// An op future moved to another thread and dropped there hands its cancel
/// to its runtime: the read is cancelled before data arrives, so a later
/// read gets all of it.
pub fn l9_op_future_dropped_on_another_thread_is_cancelled(b: Target) {
    rt(b).block_on(async {
        let (r, w) = ringport::pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let mut fut = Box::pin(ringport::submit(
            Op::Read {
                fd,
                offset: Offset::Current,
                buf: AnyBufMut::new(Vec::with_capacity(8)),
            },
            None,
        ));
        // Submitted, and pending on the silent pipe.
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_pending()))
                .await;
        assert!(pending, "a read of a silent pipe is pending");
        std::thread::spawn(move || drop(fut)).join().unwrap();
        ringport::sleep(Duration::from_millis(20)).await.unwrap();
        let (res, _) = w.write_all(&b"hello"[..]).await;
        res.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let (res, buf) = r.read_deadline(Vec::with_capacity(8), deadline).await;
        assert_eq!(res.unwrap(), 5, "the dropped read took none of the data");
        assert_eq!(buf, b"hello");
    });
}
