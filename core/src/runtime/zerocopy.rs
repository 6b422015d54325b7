//! Sends without a copy: `TcpStream::send_zc`. On io_uring the kernel reads
//! the caller's buffer in place (SEND_ZC) and the buffer comes back only
//! after the kernel's notification that it is done with it; elsewhere it is
//! a plain send. Worth it for large buffers; for small ones a copy is
//! cheaper than the notification.

use super::net::TcpStream;
use super::op::submit;
use crate::buf::{AnyBuf, IoBuf};
use crate::op::Op;
use std::io;
use std::os::fd::AsRawFd;

impl TcpStream {
    /// Sends all of `buf` without copying it (see the module doc); gives
    /// back the count and the buffer. Keeps its order with other sends.
    pub async fn send_zc<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        let op = Op::SendZc {
            fd: self.as_raw_fd(),
            buf: AnyBuf::new(buf),
            flags: 0,
        };
        let (r, op) = submit(op, None).await;
        let buf = op
            .into_buf()
            .and_then(|b| b.downcast().ok())
            .expect("ringport driver broke its contract: the op came back changed");
        (r, buf)
    }
}
