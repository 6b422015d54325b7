//! Fixed reads and writes on the runtime's types: the buffer is a
//! [`FixedBuf`] of a [`FixedBufRegistry`](crate::fixedbuf::FixedBufRegistry),
//! which io_uring registers with its ring (see [`crate::fixedbuf`]).
//!
//! Files only: on a socket or pipe a plain write (what WRITE_FIXED is)
//! raises `SIGPIPE` when the peer is gone, where the streams' own sends use
//! `MSG_NOSIGNAL`. The ops themselves take any fd.
//!
//! Each moves the buffer into the op and gives it back with the result, as
//! the other reads and writes do; the buffer returns to its registry when
//! the caller drops it. On a backend whose capabilities refuse the fixed ops
//! (a driver of someone else's), the same buffer goes through a plain read
//! or write instead, so the call works on every driver.

use super::fs::File;
use super::op::submit;
use crate::buf::{AnyBuf, AnyBufMut};
use crate::driver::Support;
use crate::fixedbuf::FixedBuf;
use crate::op::{Offset, Op, OpKind};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

fn refused(kind: OpKind) -> bool {
    crate::runtime::current().is_some_and(|c| c.capabilities().get(kind) == Support::Unsupported)
}

fn changed() -> ! {
    panic!("ringport driver broke its contract: the op came back changed")
}

/// A fixed read of `fd` at `offset` into `buf` (from its start).
async fn read_fixed(fd: RawFd, offset: Offset, buf: FixedBuf) -> (io::Result<usize>, FixedBuf) {
    if refused(OpKind::ReadFixed) {
        let op = Op::Read {
            fd,
            offset,
            buf: AnyBufMut::new(buf),
        };
        let (r, op) = submit(op, None).await;
        let buf = op.into_buf_mut().and_then(|b| b.downcast().ok());
        return (r, buf.unwrap_or_else(|| changed()));
    }
    let (r, op) = submit(Op::ReadFixed { fd, offset, buf }, None).await;
    (r, op.into_fixed_buf().unwrap_or_else(|| changed()))
}

/// A fixed write of `buf`'s bytes to `fd` at `offset`.
async fn write_fixed(fd: RawFd, offset: Offset, buf: FixedBuf) -> (io::Result<usize>, FixedBuf) {
    if refused(OpKind::WriteFixed) {
        let op = Op::Write {
            fd,
            offset,
            buf: AnyBuf::new(buf),
        };
        let (r, op) = submit(op, None).await;
        let buf = op.into_buf().and_then(|b| b.downcast().ok());
        return (r, buf.unwrap_or_else(|| changed()));
    }
    let (r, op) = submit(Op::WriteFixed { fd, offset, buf }, None).await;
    (r, op.into_fixed_buf().unwrap_or_else(|| changed()))
}

impl File {
    /// Reads at `pos` into `buf` (from its start, up to its capacity); the
    /// count read (0 at end of file), which is also `buf`'s new length.
    pub async fn read_fixed_at(&self, buf: FixedBuf, pos: u64) -> (io::Result<usize>, FixedBuf) {
        read_fixed(self.as_raw_fd(), Offset::At(pos), buf).await
    }

    /// Writes `buf`'s bytes (its length) at `pos`; the count written (may
    /// be short, like [`File::write_at`]).
    pub async fn write_fixed_at(&self, buf: FixedBuf, pos: u64) -> (io::Result<usize>, FixedBuf) {
        write_fixed(self.as_raw_fd(), Offset::At(pos), buf).await
    }
}
