//! L-cases: the lifecycle rules at their edges — buffers, caller input, and
//! fd ownership (see `docs/conformance.md`).

use crate::harness::{rt, Drv, TempFile};
use ringport::{AnyBuf, AnyBufMut, Backend, File, IoBuf, Offset, Op, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A read into a view that starts past the buffer's initialised bytes leaves
/// no uninitialised (or stale) bytes between them: the gap reads as zeros.
pub fn l1_slice_read_past_init_zeroes_the_gap(b: Backend) {
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
pub fn l2_offset_out_of_range_is_invalid_input(b: Backend) {
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
pub fn l3_huge_fd_is_ebadf(b: Backend) {
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
pub fn l4_duration_max_means_never(b: Backend) {
    rt(b).block_on(async {
        let r = ringport::timeout(Duration::MAX, async { 5 }).await;
        assert_eq!(r.unwrap(), 5);
        let r = ringport::timeout(Duration::from_millis(20), ringport::sleep(Duration::MAX)).await;
        assert!(r.is_err(), "a sleep of Duration::MAX does not end");
    });
}
