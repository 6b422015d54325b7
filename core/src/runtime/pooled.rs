//! Pooled reads on the runtime's types: the buffer comes from a
//! [`BufPool`] only when data arrives, so a connection waiting for data
//! holds no buffer (see [`crate::bufpool`]).
//!
//! Each resolves to `Ok(Some(buf))` with the bytes, `Ok(None)` at end of
//! stream, or the error; a pool with no free buffer when data arrives gives
//! `ENOBUFS` ([`crate::bufpool::is_pool_exhausted`]).

use super::fs::File;
use super::net::{PipeReader, TcpStream, UnixStream};
use super::op::submit;
use crate::bufpool::{BufPool, PooledBuf};
use crate::op::{Offset, Op};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

async fn pooled(op: Op) -> io::Result<Option<PooledBuf>> {
    let (r, op) = submit(op, None).await;
    r?;
    match op {
        Op::RecvPooled { got, .. } | Op::ReadPooled { got, .. } => Ok(got),
        _ => unreachable!("ringport driver broke its contract: the op came back changed"),
    }
}

fn recv_op(fd: RawFd, pool: &BufPool) -> Op {
    Op::RecvPooled {
        fd,
        pool: pool.clone(),
        flags: 0,
        got: None,
    }
}

fn read_op(fd: RawFd, pool: &BufPool, offset: Offset) -> Op {
    Op::ReadPooled {
        fd,
        offset,
        pool: pool.clone(),
        got: None,
    }
}

impl TcpStream {
    /// Receives into a buffer of `pool`, taken only when data arrives.
    pub async fn recv_pooled(&self, pool: &BufPool) -> io::Result<Option<PooledBuf>> {
        pooled(recv_op(self.as_raw_fd(), pool)).await
    }
}

impl UnixStream {
    /// Receives into a buffer of `pool`, taken only when data arrives.
    pub async fn recv_pooled(&self, pool: &BufPool) -> io::Result<Option<PooledBuf>> {
        pooled(recv_op(self.as_raw_fd(), pool)).await
    }
}

impl PipeReader {
    /// Reads into a buffer of `pool`, taken only when data arrives.
    pub async fn read_pooled(&self, pool: &BufPool) -> io::Result<Option<PooledBuf>> {
        pooled(read_op(self.as_raw_fd(), pool, Offset::Current)).await
    }
}

impl File {
    /// Reads at `offset` into a buffer of `pool`.
    pub async fn read_pooled_at(
        &self,
        pool: &BufPool,
        offset: u64,
    ) -> io::Result<Option<PooledBuf>> {
        pooled(read_op(self.as_raw_fd(), pool, Offset::At(offset))).await
    }
}
