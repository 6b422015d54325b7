//! Registered buffers on io_uring: a fixed op registers its registry in the
//! ring's buffer table (one entry per registry) and the kernel's answer is
//! the same as a plain read's; with the table full, or fixed buffers turned
//! off, ops fall back to plain reads; a registry nobody holds any more
//! gives its entry back. With registered files, a positional read names
//! its fd's file-table slot, which its close releases before the number can
//! be reused.

use ringport_core::fixedbuf::FixedBufRegistry;
use ringport_core::{Completion, Driver, Offset, Op};
use ringport_uring::UringDriver;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Held by every test here: the file-table test needs the fd number it
/// closed to be the next one opened, which another test's open would take.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _s = serial();
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
    let _s = serial();
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
    let _s = serial();
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

/// Waits for the completion of token `tok`.
fn wait_token(d: &mut UringDriver, tok: u64) -> Completion {
    let mut out: Vec<Completion> = Vec::new();
    loop {
        if let Some(i) = out.iter().position(|c| c.token == tok) {
            return out.remove(i);
        }
        d.wait(&mut out, 1, Some(Duration::from_secs(5))).unwrap();
    }
}

fn plain_read(d: &mut UringDriver, fd: i32, at: u64) -> Vec<u8> {
    let op = Op::Read {
        fd,
        offset: Offset::At(at),
        buf: ringport_core::AnyBufMut::new(Vec::with_capacity(8)),
    };
    d.submit(op, 3, None).expect("submit");
    let c = wait_token(d, 3);
    c.result.expect("the read");
    c.op.into_buf_mut().unwrap().downcast::<Vec<u8>>().unwrap()
}

#[test]
fn registered_files_are_released_at_close_before_the_number_is_reused() {
    use std::os::fd::IntoRawFd;
    let _s = serial();
    let (pa, fa) = temp_file(b"file A: first");
    let mut d = UringDriver::builder().register_files(true).build().unwrap();
    let fd = fa.into_raw_fd();
    assert_eq!(plain_read(&mut d, fd, 0), b"file A: ");
    assert_eq!(
        d.registered_files(),
        1,
        "the positional read registered its fd"
    );
    let reg = FixedBufRegistry::new(1, 8).unwrap();
    assert_eq!(read_fixed(&mut d, fd, &reg, 5), (8, b"A: first".to_vec()));
    assert_eq!(d.registered_files(), 1, "one slot per fd");
    d.submit(Op::Close { fd }, 9, None).unwrap();
    wait_token(&mut d, 9).result.expect("close");
    assert_eq!(d.registered_files(), 0, "the close released the slot");
    let _ = std::fs::remove_file(&pa);
    // A new file gets the lowest free number: the one just closed.
    let pb = std::env::temp_dir().join(format!("ringport-uring-fixed-b-{}", std::process::id()));
    std::fs::write(&pb, b"file B!!").unwrap();
    let fb = std::fs::File::open(&pb).unwrap().into_raw_fd();
    assert_eq!(fb, fd, "the number was reused (the test needs it to be)");
    assert_eq!(
        plain_read(&mut d, fb, 0),
        b"file B!!",
        "the new file, not the old slot's"
    );
    d.submit(Op::Close { fd: fb }, 10, None).unwrap();
    wait_token(&mut d, 10).result.expect("close");
    let _ = std::fs::remove_file(&pb);
}

/// The driver's drop lets go of the files in its table at once: a FIFO
/// whose only reader was registered (by a positional read, which io_uring
/// runs on a FIFO ignoring the offset) has no reader once the driver is
/// dropped and the fd closed (without the explicit unregister, the ring's
/// table kept it open past the drop; found by ST5 with the option on).
#[test]
fn a_dropped_driver_leaves_no_registered_file_open() {
    use std::os::fd::IntoRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let _s = serial();
    let path = std::env::temp_dir().join(format!("ringport-uring-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap()
        .into_raw_fd();
    let probe = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    // SAFETY: writes 3 bytes from a static slice into our FIFO.
    unsafe { libc::write(probe.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
    let mut d = UringDriver::builder().register_files(true).build().unwrap();
    assert_eq!(plain_read(&mut d, reader, 0), b"abc");
    assert_eq!(d.registered_files(), 1);
    drop(d);
    // SAFETY: our own fd, used by nothing any more.
    unsafe { libc::close(reader) };
    let mut pfd = libc::pollfd {
        fd: probe.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 100) };
    assert!(
        pfd.revents & libc::POLLERR != 0,
        "the FIFO still has a reader after the driver dropped"
    );
}
