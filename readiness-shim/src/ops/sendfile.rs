//! `sendfile` at readiness: a stream write on the socket, tried when the
//! socket is writable, sending from `offset + progress` until `len` bytes
//! are out or the file ends. The file's bytes are read inside the call, on
//! the runtime's thread: from the page cache at once, from the disk with a
//! wait there. `sendfile(2)` on Linux; elsewhere a positional
//! read into a bounce buffer and a send (bytes read but not taken by the
//! socket are read again next time: the offset is explicit).

use super::{retry, would_block, Attempt};
use ringport_core::op::Op;
use std::io;

/// One non-blocking attempt; `progress` counts the bytes sent so far.
pub(super) fn attempt(op: &mut Op, progress: &mut usize) -> Attempt {
    let Op::SendFile {
        fd,
        file,
        offset,
        len,
    } = op
    else {
        return Attempt::Done(Err(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let (fd, file, offset, len) = (*fd, *file, *offset, *len);
    loop {
        let done = *progress as u64;
        if done >= len {
            return Attempt::Done(Ok(*progress));
        }
        // One call moves at most 1 GiB (Linux stops at 2 GiB - 4 KiB anyway).
        let want = (len - done).min(1 << 30) as usize;
        match retry(|| send_some(fd, file, offset + done, want)) {
            Ok(0) => return Attempt::Done(Ok(*progress)),
            Ok(n) => *progress += n,
            Err(e) if would_block(&e) => return Attempt::WouldBlock,
            Err(e) => return Attempt::Done(Err(e)),
        }
    }
}

#[cfg(target_os = "linux")]
fn send_some(fd: i32, file: i32, at: u64, want: usize) -> isize {
    let mut off = at as libc::off_t;
    // SAFETY: plain syscall on the op's fds; `off` is a local the kernel
    // updates (the file's own position is left alone).
    unsafe { libc::sendfile(fd, file, &mut off, want) }
}

#[cfg(not(target_os = "linux"))]
fn send_some(fd: i32, file: i32, at: u64, want: usize) -> isize {
    let mut buf = vec![0u8; want.min(1 << 16)];
    // SAFETY: buf has buf.len() writable bytes for the length of this call.
    let r = unsafe { libc::pread(file, buf.as_mut_ptr().cast(), buf.len(), at as libc::off_t) };
    if r <= 0 {
        return r;
    }
    // SAFETY: the first r bytes of buf are initialised by the read.
    unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            r as usize,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    }
}
