//! [`TcpStream::send_file`]: a file's bytes to a socket in one op
//! ([`Op::SendFile`]), without passing through a user buffer.

use crate::op::Op;
use crate::runtime::{submit, File, TcpStream};
use std::io;
use std::os::fd::AsRawFd;

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
        // No duplicate of the file's fd: the op holds it as its second fd,
        // so if this future is dropped and `file` closed, the close (which
        // goes through the driver) asks the op to end and waits for it.
        let op = Op::SendFile {
            fd: self.fd.raw(),
            file: file.as_raw_fd(),
            offset,
            len,
        };
        submit(op, None).await.0.map(|n| n as u64)
    }
}
