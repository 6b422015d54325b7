//! [`TcpStream::send_file`]: a file's bytes to a socket in one op
//! ([`Op::SendFile`]), without passing through a user buffer.

use crate::op::Op;
use crate::runtime::{submit, File, TcpStream};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

impl TcpStream {
    /// Sends `len` bytes of `file`, starting at `offset`, and completes once
    /// with the count sent: `len`, or fewer if the file ends first (0 at or
    /// past its end). Like Windows' `TransmitFile`: splice through a pipe on
    /// io_uring, `sendfile(2)` at readiness elsewhere; the bytes never pass
    /// through a user buffer. It is a stream write, in order with the
    /// stream's other writes; `file`'s position is left alone. `file` must be
    /// a regular file (anything else fails with the kernel's error, `ESPIPE`
    /// or `EINVAL`). On io_uring the socket is made non-blocking, as the
    /// readiness backends make every socket. On a peer that
    /// is gone it fails with `EPIPE` or `ECONNRESET`; the kernel cannot be
    /// told not to raise `SIGPIPE` here, which Rust programs ignore.
    pub async fn send_file(&self, file: &File, offset: u64, len: u64) -> io::Result<u64> {
        // The op's own handle on the file: it stays open while the kernel
        // reads it, even if this future is dropped and `file` closed.
        // SAFETY: `file` is open for the length of this borrow.
        let file = unsafe { BorrowedFd::borrow_raw(file.as_raw_fd()) }.try_clone_to_owned()?;
        let op = Op::SendFile {
            fd: self.fd.raw(),
            file,
            offset,
            len,
        };
        submit(op, None).await.0.map(|n| n as u64)
    }
}
