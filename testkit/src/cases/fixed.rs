//! FX-cases: registered (fixed) buffers. A `FixedBuf` checked out of a
//! `FixedBufRegistry` is moved into a fixed read or write, comes back with
//! the result, and returns to its registry when dropped; `take` from an
//! exhausted registry is `ENOBUFS` at once. io_uring uses READ_FIXED and
//! WRITE_FIXED, every other backend plain reads and writes: the bytes and
//! results are the same.

use crate::harness::{pattern_vec, rt, Drv, Pipe, TempFile};
use crate::Target;
use ringport::fixedbuf::is_registry_exhausted;
use ringport::{CancelTarget, File, FixedBufRegistry, Offset, Op};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// FX1: fixed writes at offsets, read back with `std`, and fixed reads at
/// offsets (whole, short at the end of the file, 0 past it) compared with
/// `std`'s `read_at` on the same file: byte-exact, counts equal.
pub fn fx1_fixed_reads_and_writes_match_std(b: Target) {
    let data = pattern_vec(3 * 4096 + 100);
    let t = TempFile::with(&[]);
    let rt = rt(b);
    rt.block_on(async {
        let reg = FixedBufRegistry::new(4, 4096).unwrap();
        let f = ringport::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&t.path)
            .await
            .unwrap();
        // Written in chunks, out of order, each from a registered buffer.
        for &at in &[2 * 4096, 0, 3 * 4096, 4096] {
            let end = (at + 4096).min(data.len());
            let mut buf = reg.take().unwrap();
            buf.copy_from(&data[at..end]);
            let (r, buf) = f.write_fixed_at(buf, at as u64).await;
            assert_eq!(r.unwrap(), end - at, "a whole write at {at}");
            assert_eq!(&*buf, &data[at..end], "the buffer comes back unchanged");
        }
        assert_eq!(
            std::fs::read(&t.path).unwrap(),
            data,
            "std reads the same bytes"
        );
        let sf = std::fs::File::open(&t.path).unwrap();
        for &at in &[
            0u64,
            100,
            4096,
            3 * 4096,
            3 * 4096 + 50,
            data.len() as u64,
            1 << 20,
        ] {
            let (r, buf) = f.read_fixed_at(reg.take().unwrap(), at).await;
            let mut want = vec![0u8; 4096];
            let n = sf.read_at(&mut want, at).unwrap();
            assert_eq!(r.unwrap(), n, "the count at {at} is std's");
            assert_eq!(buf.len(), n, "the buffer's length is the count");
            assert_eq!(&*buf, &want[..n], "the bytes at {at} are std's");
        }
        assert_eq!(reg.available(), 4, "every buffer went back on drop");
    });
}

/// FX2: the buffer is the op's until its completion (the registry does not
/// have it meanwhile), comes back with the result, and goes back to the
/// registry when dropped; a dropped registry handle does not end ops or
/// buffers still out.
pub fn fx2_the_buffer_returns_to_the_registry_on_drop(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    let reg = FixedBufRegistry::new(2, 64).unwrap();
    let buf = reg.take().unwrap();
    let index = buf.index();
    d.submit(
        Op::ReadFixed {
            fd: p.rfd(),
            offset: Offset::Current,
            buf,
        },
        1,
    );
    d.idle(Duration::from_millis(20));
    assert!(d.done.is_empty(), "the read waits on an empty pipe");
    assert_eq!(reg.available(), 1, "the op owns its buffer while in flight");
    drop(reg.clone());
    p.put(b"fixed!");
    let c = d.wait_token(1, WAIT);
    assert_eq!(c.result.unwrap(), 6);
    let buf = c.op.into_fixed_buf().expect("the fixed buffer comes back");
    assert_eq!((buf.index(), &*buf), (index, &b"fixed!"[..]));
    assert_eq!(reg.available(), 1, "the caller holds it now");
    drop(buf);
    assert_eq!(reg.available(), 2, "dropped, it is free again");
    let again = reg.take().unwrap();
    assert!(again.is_empty(), "a buffer checked out again starts empty");
}

/// FX3: exhaustion. With every buffer checked out (in ops or held), `take`
/// fails at once with `ENOBUFS`; one buffer dropped makes `take` work
/// again. Ops already holding buffers are not affected.
pub fn fx3_an_exhausted_registry_is_enobufs_at_once(b: Target) {
    let t = TempFile::with(b"0123456789");
    let rt = rt(b);
    rt.block_on(async {
        let reg = FixedBufRegistry::new(2, 8).unwrap();
        let f = File::open(&t.path).await.unwrap();
        let (r, held) = f.read_fixed_at(reg.take().unwrap(), 0).await;
        assert_eq!(r.unwrap(), 8);
        let other = reg.take().unwrap();
        let e = reg.take().expect_err("both buffers are out");
        assert!(is_registry_exhausted(&e), "ENOBUFS, got {e}");
        assert_eq!(reg.available(), 0);
        let (r, other) = f.read_fixed_at(other, 8).await;
        assert_eq!(
            (r.unwrap(), &*other),
            (2, &b"89"[..]),
            "held buffers still work"
        );
        drop(held);
        let third = reg.take().expect("a dropped buffer makes take work again");
        let (r, third) = f.read_fixed_at(third, 2).await;
        assert_eq!((r.unwrap(), &*third), (8, &b"23456789"[..]));
    });
}

/// FX4: dropping the driver with a fixed read in flight does not hang,
/// gives the buffer back to the registry (the op is dropped once the kernel
/// is done, not leaked and not freed early), and leaves no read behind:
/// bytes written to the pipe afterwards are still there. Run under
/// valgrind, this case is clean (docs/conformance.md).
pub fn fx4_driver_drop_with_a_fixed_read_in_flight(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    let reg = FixedBufRegistry::new(1, 64).unwrap();
    d.submit(
        Op::ReadFixed {
            fd: p.rfd(),
            offset: Offset::Current,
            buf: reg.take().unwrap(),
        },
        1,
    );
    d.idle(Duration::from_millis(20));
    assert_eq!(reg.available(), 0, "in flight");
    let start = std::time::Instant::now();
    drop(d);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the drop does not hang"
    );
    assert_eq!(reg.available(), 1, "the buffer went back to the registry");
    p.put(b"later");
    let mut got = [0u8; 16];
    // SAFETY: reads into a stack buffer of 16 bytes.
    let n = unsafe { libc::read(p.rfd(), got.as_mut_ptr().cast(), got.len()) };
    assert_eq!(&got[..n as usize], b"later", "no read outlived the driver");
}

/// FX5: the same with a runtime: its drop with a task's fixed read pending.
pub fn fx5_runtime_drop_with_a_fixed_read_in_flight(b: Target) {
    let reg = FixedBufRegistry::new(1, 64).unwrap();
    let (r, w) = {
        let rt = rt(b);
        let (r, w) = rt.block_on(async { ringport::pipe().unwrap() });
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let buf = reg.take().unwrap();
        rt.spawn(async move {
            let op = Op::ReadFixed {
                fd,
                offset: Offset::Current,
                buf,
            };
            let _ = ringport::submit(op, None).await;
        });
        rt.block_on(async {
            let _ = ringport::sleep(Duration::from_millis(20)).await;
        });
        assert_eq!(reg.available(), 0, "in flight");
        (r, w)
        // The runtime drops here, the read still pending.
    };
    assert_eq!(reg.available(), 1, "the buffer went back to the registry");
    drop((r, w));
}

/// FX6: cancelling a fixed read mid-wait ends it with `ECANCELED` and the
/// buffer back (length 0); the bytes that arrive afterwards go to the next
/// read, none lost to the cancelled one.
pub fn fx6_cancel_mid_read(b: Target) {
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    let reg = FixedBufRegistry::new(2, 64).unwrap();
    let id = d.submit(
        Op::ReadFixed {
            fd: p.rfd(),
            offset: Offset::Current,
            buf: reg.take().unwrap(),
        },
        1,
    );
    d.idle(Duration::from_millis(20));
    d.submit(
        Op::Cancel {
            target: CancelTarget::Op(id),
        },
        2,
    );
    let c = d.wait_token(1, WAIT);
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    let buf = c.op.into_fixed_buf().expect("the buffer comes back");
    assert!(buf.is_empty(), "nothing was read into it");
    d.wait_token(2, WAIT);
    p.put(b"after the cancel");
    d.submit(
        Op::ReadFixed {
            fd: p.rfd(),
            offset: Offset::Current,
            buf,
        },
        3,
    );
    let c = d.wait_token(3, WAIT);
    assert_eq!(c.result.unwrap(), 16);
    assert_eq!(&*c.op.into_fixed_buf().unwrap(), b"after the cancel");
    assert_eq!(reg.available(), 2);
}

/// FX7: a fixed write at the current position is a stream write: 256 KiB
/// into a pipe (four times its buffer) with a slow reader completes once,
/// with every byte, in order.
pub fn fx7_fixed_stream_write_completes_whole(b: Target) {
    const N: usize = 256 * 1024;
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    let reg = FixedBufRegistry::new(1, N).unwrap();
    let mut buf = reg.take().unwrap();
    let data = pattern_vec(N);
    buf.copy_from(&data);
    let rfd = p.r.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::from(rfd);
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 8192];
        while got.len() < N {
            std::thread::sleep(Duration::from_millis(1));
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reader: {e}"),
            }
        }
        got
    });
    d.submit(
        Op::WriteFixed {
            fd: p.wfd(),
            offset: Offset::Current,
            buf,
        },
        1,
    );
    let c = d.wait_token(1, Duration::from_secs(30));
    assert_eq!(c.result.unwrap(), N, "one completion with every byte");
    assert!(d.done.is_empty());
    assert_eq!(reader.join().unwrap(), data, "in order, byte-exact");
}

/// FX8: more registries than an io_uring buffer table holds at once (70
/// held, then 100 made and dropped one by one) all read byte-exact: a
/// registry the ring cannot register falls back to plain reads, and a
/// dropped one's entry is reused.
pub fn fx8_many_registries_each_read_byte_exact(b: Target) {
    let data = pattern_vec(512);
    let t = TempFile::with(&data);
    let rt = rt(b);
    rt.block_on(async {
        let f = File::open(&t.path).await.unwrap();
        let mut held = Vec::new();
        for i in 0..70usize {
            let reg = FixedBufRegistry::new(1, 16).unwrap();
            let (r, buf) = f.read_fixed_at(reg.take().unwrap(), i as u64).await;
            assert_eq!(r.unwrap(), 16);
            assert_eq!(&*buf, &data[i..i + 16], "registry {i} of those held");
            held.push(reg);
        }
        drop(held);
        for i in 0..100usize {
            let reg = FixedBufRegistry::new(2, 32).unwrap();
            let (r, buf) = f.read_fixed_at(reg.take().unwrap(), 3 * i as u64).await;
            assert_eq!(r.unwrap(), 32);
            assert_eq!(
                &*buf,
                &data[3 * i..3 * i + 32],
                "registry {i} made and dropped"
            );
        }
    });
}
