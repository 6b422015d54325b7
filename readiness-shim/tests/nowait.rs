//! The shim's inline file read (`preadv2(RWF_NOWAIT)`): a page-cached read
//! completes without the pool, an uncached or short one is redone by the pool,
//! and either way the caller gets the file's bytes.
#![cfg(target_os = "linux")]

use ringport_core::{AnyBufMut, Completion, Driver, Op};
use ringport_shim::{PollerKind, ShimDriver};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

const LEN: usize = 256 * 1024;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// A temp file of `LEN` patterned bytes, synced.
fn make_file(name: &str) -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!("ringport-nowait-{}-{name}", std::process::id()));
    let mut f = File::create(&path).unwrap();
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let f = File::open(&path).unwrap();
    (path, f)
}

/// Reads `len` bytes at `offset` through the driver; returns (result, bytes).
fn read(d: &mut ShimDriver, fd: i32, offset: u64, len: usize) -> (usize, Vec<u8>) {
    let op = Op::Read {
        fd,
        offset: ringport_core::Offset::At(offset),
        buf: AnyBufMut::new(Vec::with_capacity(len)),
    };
    d.submit(op, 7, None).map_err(|e| e.error).unwrap();
    let mut out: Vec<Completion> = Vec::new();
    while out.is_empty() {
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
    }
    let c = out.pop().unwrap();
    assert_eq!(c.token, 7);
    let n = c.result.unwrap();
    let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
    assert_eq!(v.len(), n, "the buffer's length is the byte count");
    (n, v)
}

fn check(offset: u64, v: &[u8]) {
    for (i, b) in v.iter().enumerate() {
        assert_eq!(*b, pattern(offset as usize + i), "byte {} of the read", i);
    }
}

/// Whether every page of `[offset, offset + len)` of `f` is in the page cache.
fn resident(f: &File, offset: usize, len: usize) -> bool {
    let page = 4096;
    let start = offset / page * page;
    let span = offset + len - start;
    // SAFETY: a private read-only mapping of a file we hold open, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as libc::off_t,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let mut vec = vec![0u8; span.div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(p, span, vec.as_mut_ptr()) };
    // SAFETY: p/span is the mapping made above.
    unsafe { libc::munmap(p, span) };
    assert_eq!(r, 0);
    vec.iter().all(|b| b & 1 == 1)
}

#[test]
fn cached_read_completes_without_the_pool() {
    let (path, f) = make_file("cached");
    // Bring the range into the page cache.
    let mut warm = vec![0u8; 8192];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut warm, 8192).unwrap();
    assert!(resident(&f, 8192, 8192));
    let mut d = ShimDriver::builder(PollerKind::Epoll).build().unwrap();
    let (n, v) = read(&mut d, f.as_raw_fd(), 8192, 8192);
    assert_eq!(n, 8192);
    check(8192, &v);
    assert_eq!(d.pool_jobs(), 0, "a cached read must not go to the pool");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn with_nowait_off_every_read_goes_to_the_pool() {
    let (path, f) = make_file("off");
    let mut d = ShimDriver::builder(PollerKind::Poll)
        .nowait_reads(false)
        .build()
        .unwrap();
    for k in 0..4u64 {
        let (n, v) = read(&mut d, f.as_raw_fd(), k * 4096, 4096);
        assert_eq!(n, 4096);
        check(k * 4096, &v);
    }
    assert_eq!(d.pool_jobs(), 4);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn short_read_at_end_of_file_is_redone_by_the_pool() {
    let (path, f) = make_file("short");
    let off = (LEN - 100) as u64;
    let mut d = ShimDriver::builder(PollerKind::Epoll).build().unwrap();
    let (n, v) = read(&mut d, f.as_raw_fd(), off, 4096);
    assert_eq!(n, 100);
    check(off, &v);
    assert_eq!(
        d.pool_jobs(),
        1,
        "a short inline read is handed to the pool"
    );
    let (n, _) = read(&mut d, f.as_raw_fd(), LEN as u64, 4096);
    assert_eq!(n, 0, "a read at the end of the file reads nothing");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn evicted_read_goes_to_the_pool_and_returns_the_bytes() {
    let (path, f) = make_file("evicted");
    let off = 128 * 1024;
    // The page cache can change between the residency check and the read
    // (seen on a loaded machine): a route that does not match what was
    // cached is tried again, and must match within a few tries.
    let mut seen = Vec::new();
    for _ in 0..5 {
        // Clean pages (the file is synced) are dropped by DONTNEED.
        // SAFETY: plain syscall on a file we hold open.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
        let was_resident = resident(&f, off, 4096);
        let mut d = ShimDriver::builder(PollerKind::Epoll).build().unwrap();
        let (n, v) = read(&mut d, f.as_raw_fd(), off as u64, 4096);
        assert_eq!(n, 4096);
        check(off as u64, &v);
        // Whatever the kernel kept, the route must match what was cached.
        let expect = if was_resident { 0 } else { 1 };
        // An inline read that found every page cached although the check
        // before it did not is consistent if the pages are cached now (an
        // RWF_NOWAIT read never brings pages in; the kernel did, between).
        let filled_between = d.pool_jobs() == 0 && !was_resident && resident(&f, off, 4096);
        if d.pool_jobs() == expect || filled_between {
            std::fs::remove_file(path).unwrap();
            return;
        }
        seen.push((was_resident, d.pool_jobs()));
    }
    panic!("the route never matched the page cache: (resident, pool jobs) {seen:?}");
}
