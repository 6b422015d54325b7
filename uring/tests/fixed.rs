//! Registered buffers on io_uring: a fixed op registers its registry in the
//! ring's buffer table (one entry per registry) and the kernel's answer is
//! the same as a plain read's; with the table full, or fixed buffers turned
//! off, ops fall back to plain reads; a registry nobody holds any more
//! gives its entry back.

use ringport_core::fixedbuf::FixedBufRegistry;
use ringport_core::{Completion, Driver, Offset, Op};
use ringport_uring::UringDriver;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn temp_file(data: &[u8]) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!(
        "ringport-uring-fixed-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(data).unwrap();
    (path.clone(), std::fs::File::open(&path).unwrap())
}

/// One fixed read of 8 bytes at `at` into a buffer of `reg`; its result
/// and bytes.
fn read_fixed(d: &mut UringDriver, fd: i32, reg: &FixedBufRegistry, at: u64) -> (usize, Vec<u8>) {
    let op = Op::ReadFixed {
        fd,
        offset: Offset::At(at),
        buf: reg.take().unwrap(),
    };
    d.submit(op, 7, None).expect("submit");
    let mut out: Vec<Completion> = Vec::new();
    while out.is_empty() {
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
    }
    let c = out.pop().unwrap();
    let n = c.result.expect("the read");
    (n, c.op.into_fixed_buf().unwrap().to_vec())
}

#[test]
fn a_fixed_read_registers_its_registry_once() {
    let (path, f) = temp_file(b"registered bytes");
    let mut d = UringDriver::new().unwrap();
    let reg = FixedBufRegistry::new(4, 8).unwrap();
    assert_eq!(
        d.fixed_registries(),
        0,
        "nothing registered before a fixed op"
    );
    assert_eq!(
        read_fixed(&mut d, f.as_raw_fd(), &reg, 0),
        (8, b"register".to_vec())
    );
    assert_eq!(d.fixed_registries(), 1, "the registry took one table entry");
    assert_eq!(
        read_fixed(&mut d, f.as_raw_fd(), &reg, 8),
        (8, b"ed bytes".to_vec())
    );
    assert_eq!(d.fixed_registries(), 1, "and only one");
    let _ = std::fs::remove_file(path);
}

#[test]
fn turned_off_fixed_ops_are_plain_reads() {
    let (path, f) = temp_file(b"plain bytes here");
    let mut d = UringDriver::builder().fixed_buffers(false).build().unwrap();
    let reg = FixedBufRegistry::new(1, 8).unwrap();
    assert_eq!(
        read_fixed(&mut d, f.as_raw_fd(), &reg, 6),
        (8, b"bytes he".to_vec())
    );
    assert_eq!(d.fixed_registries(), 0, "nothing registered");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_full_table_falls_back_and_dropped_registries_give_their_entries_back() {
    let data: Vec<u8> = (0..200u8).collect();
    let (path, f) = temp_file(&data);
    let mut d = UringDriver::new().unwrap();
    let mut held = Vec::new();
    for i in 0..70u64 {
        let reg = FixedBufRegistry::new(1, 8).unwrap();
        let (n, got) = read_fixed(&mut d, f.as_raw_fd(), &reg, i);
        assert_eq!((n, &got[..]), (8, &data[i as usize..i as usize + 8]));
        held.push(reg);
    }
    assert_eq!(
        d.fixed_registries(),
        64,
        "the table holds 64; the rest read plainly"
    );
    held.truncate(10);
    let reg = FixedBufRegistry::new(1, 8).unwrap();
    let (n, got) = read_fixed(&mut d, f.as_raw_fd(), &reg, 100);
    assert_eq!((n, &got[..]), (8, &data[100..108]));
    assert_eq!(
        d.fixed_registries(),
        11,
        "the dropped registries' entries were cleared, the new one took one"
    );
    let _ = std::fs::remove_file(path);
}
