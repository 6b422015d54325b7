//! C1–C7: completions and buffers.

use crate::harness::{pattern_vec, Drv, Rng, TempFile};
use crate::Target;
use ringport::{AnyBuf, AnyBufMut, CancelTarget, IoBuf, Op, OpId};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

pub fn c1_nop_completes_with_token(b: Target) {
    let mut d = Drv::new(b);
    let id = d.submit(Op::Nop, 42);
    let c = d.collect(1, WAIT);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].token, 42);
    assert_eq!(c[0].id, id);
    assert_eq!(c[0].result.as_ref().ok(), Some(&0));
    assert!(matches!(c[0].op, Op::Nop));
}

pub fn c2_one_completion_per_submission(b: Target) {
    const N: u64 = 10_000;
    let f = TempFile::with(&pattern_vec(64 * 1024));
    let file = f.raw_fd();
    let fd = file.as_raw_fd();
    let mut d = Drv::new(b);
    let mut rng = Rng::new(2);
    let mut ids: Vec<OpId> = Vec::new();
    for token in 0..N {
        let op = match rng.below(5) {
            0 => Op::Read {
                fd,
                offset: ringport::Offset::At(rng.below(64 * 1024)),
                buf: AnyBufMut::new(Vec::with_capacity(128)),
            },
            1 => Op::Write {
                fd,
                offset: ringport::Offset::At(64 * 1024 + rng.below(4096)),
                buf: AnyBuf::new(vec![7u8; 64]),
            },
            2 => Op::Nop,
            3 => Op::Timeout {
                deadline: Instant::now() + Duration::from_micros(rng.below(2000)),
            },
            _ => match ids.last() {
                Some(&target) => Op::Cancel {
                    target: CancelTarget::Op(target),
                },
                None => Op::Nop,
            },
        };
        ids.push(d.submit(op, token));
        if token % 512 == 511 {
            // Reap some along the way, as a real program would.
            d.d.wait(&mut d.done, 0, Some(Duration::ZERO)).unwrap();
        }
    }
    let all = d.collect(N as usize, Duration::from_secs(60));
    // Give any duplicate a chance to show up.
    d.idle(Duration::from_millis(50));
    assert!(
        d.done.is_empty(),
        "{} completions beyond one per op",
        d.done.len()
    );
    assert_eq!(all.len(), N as usize, "one completion per submission");
    let tokens: HashSet<u64> = all.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N as usize, "a token completed twice");
    let got_ids: HashSet<OpId> = all.iter().map(|c| c.id).collect();
    assert_eq!(got_ids, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(d.d.in_flight(), 0);
}

pub fn c3_buffer_comes_back(b: Target) {
    let f = TempFile::with(b"0123456789");
    let file = f.raw_fd();
    let mut d = Drv::new(b);
    let v: Vec<u8> = Vec::with_capacity(100);
    let (ptr, cap) = (v.as_ptr(), v.capacity());
    d.submit(
        Op::Read {
            fd: file.as_raw_fd(),
            offset: ringport::Offset::At(0),
            buf: AnyBufMut::new(v),
        },
        1,
    );
    let c = d.collect(1, WAIT).pop().unwrap();
    assert_eq!(c.result.unwrap(), 10);
    let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!(v.as_ptr(), ptr, "same allocation");
    assert_eq!(v.capacity(), cap, "same capacity");
    assert_eq!(v.len(), 10, "initialised length = bytes read");
    assert_eq!(&v, b"0123456789");
}

pub fn c4_slice_read_stays_inside_view(b: Target) {
    let f = TempFile::with(&[b'x'; 100]);
    let file = f.raw_fd();
    let mut d = Drv::new(b);
    let view = vec![0xAAu8; 64].slice(16..32);
    d.submit(
        Op::Read {
            fd: file.as_raw_fd(),
            offset: ringport::Offset::At(0),
            buf: AnyBufMut::new(view),
        },
        1,
    );
    let c = d.collect(1, WAIT).pop().unwrap();
    assert_eq!(c.result.unwrap(), 16);
    let view: ringport::Slice<Vec<u8>> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    let v = view.into_inner();
    assert_eq!(v.len(), 64);
    assert!(
        v[..16].iter().all(|&x| x == 0xAA),
        "bytes before the view untouched"
    );
    assert!(v[16..32].iter().all(|&x| x == b'x'), "the view was filled");
    assert!(
        v[32..].iter().all(|&x| x == 0xAA),
        "bytes after the view untouched"
    );
}

pub fn c5_buffer_types_round_trip(b: Target) {
    let f = TempFile::with(&[]);
    let rt = crate::harness::rt(b);
    rt.block_on(async {
        let file = ringport::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .await
            .unwrap();
        // Writes of every write-capable type.
        let (r, v) = file.write_at(b"vec-".to_vec(), 0).await;
        assert_eq!((r.unwrap(), v.as_slice()), (4, &b"vec-"[..]));
        let (r, bx) = file.write_at(b"box-".to_vec().into_boxed_slice(), 4).await;
        assert_eq!((r.unwrap(), &bx[..]), (4, &b"box-"[..]));
        let (r, bm) = file.write_at(bytes::BytesMut::from(&b"bmut-"[..]), 8).await;
        assert_eq!((r.unwrap(), &bm[..]), (5, &b"bmut-"[..]));
        let (r, by) = file
            .write_at(bytes::Bytes::from_static(b"bytes-"), 13)
            .await;
        assert_eq!((r.unwrap(), &by[..]), (6, &b"bytes-"[..]));
        let st: &'static [u8] = b"static";
        let (r, s) = file.write_at(st, 19).await;
        assert_eq!((r.unwrap(), s), (6, st));
        let want = b"vec-box-bmut-bytes-static";
        // Reads into every read-capable type.
        let (r, v) = file.read_at(Vec::with_capacity(64), 0).await;
        assert_eq!((r.unwrap(), v.as_slice()), (25, &want[..]));
        let (r, bx) = file.read_at(vec![0u8; 8].into_boxed_slice(), 4).await;
        assert_eq!((r.unwrap(), &bx[..]), (8, &want[4..12]));
        let (r, bm) = file.read_at(bytes::BytesMut::with_capacity(64), 8).await;
        assert_eq!((r.unwrap(), &bm[..]), (17, &want[8..]));
    });
}

pub fn c6_submission_back_pressure(b: Target) {
    // io_uring's SQ here is 256 entries; the shim's and aio's limits are
    // smaller than this too. Half the ops stay pending (timers) so the
    // backend cannot simply finish each before the next arrives.
    const N: u64 = 4 * 1024;
    let mut d = Drv::new(b);
    let deadline = Instant::now() + Duration::from_millis(100);
    for token in 0..N {
        let op = if token % 2 == 0 {
            Op::Timeout { deadline }
        } else {
            Op::Nop
        };
        d.submit(op, token);
    }
    let all = d.collect(N as usize, Duration::from_secs(30));
    assert_eq!(all.len(), N as usize);
    let tokens: HashSet<u64> = all.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N as usize);
}

pub fn c7_completion_queue_pressure(b: Target) {
    // More completions than the CQ holds (512 by default on uring), with
    // nobody reaping for a while.
    const N: u64 = 3000;
    let mut d = Drv::new(b);
    let deadline = Instant::now() + Duration::from_millis(20);
    for token in 0..N {
        d.submit(Op::Timeout { deadline }, token);
    }
    // One wait submits; then nobody reaps while all of them fire.
    d.d.wait(&mut d.done, 0, Some(Duration::ZERO)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let all = d.collect(N as usize, Duration::from_secs(30));
    assert_eq!(all.len(), N as usize);
    let tokens: HashSet<u64> = all.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N as usize);
}
