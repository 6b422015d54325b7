//! Bridges to the poll-based I/O traits of the ecosystem: tokio's and
//! futures-io's `AsyncRead`/`AsyncWrite` (features `tokio-io`, `futures-io`)
//! and hyper 1.x's `rt` traits (feature `hyper`).
//!
//! Those traits lend a buffer for one poll; a completion-based op needs a
//! buffer it owns until the kernel is done. The adapter here therefore owns
//! its buffers and **keeps its op in flight across polls**: a poll that finds
//! the op unfinished returns `Pending` and leaves the op alone, so a caller
//! that gives up on a read (a timeout, a `select!`) loses nothing — the bytes
//! arrive in the adapter's buffer and the next poll lends them out.
//!
//! - **Reads** go into a 16 KiB buffer the adapter owns; a poll copies from
//!   it into the caller's buffer (one `memcpy`, the adapter's cost).
//! - **Writes** copy the caller's bytes (all slices of a vectored write) into
//!   an owned buffer and submit one send, then return `Pending` until it
//!   completes; the poll that finds it complete reports its length. Callers
//!   retry a `Pending` write with the same bytes first (as `write_all`, hyper
//!   and tokio-rustls do), so `Ok(n)` always names a prefix of what they pass.
//!   `Ok(n)` means the bytes are with the kernel: dropping the stream after a
//!   write loses nothing, and `poll_flush` has nothing to do unless a write
//!   was abandoned mid-flight (a timeout around `write_all`): such a write
//!   still goes out whole; the next `poll_write` reports it (so retry with
//!   the same bytes first), or `poll_flush` waits for it.
//! - `poll_shutdown` waits for an in-flight write, then shuts down writing.
//!
//! This module never drops an op it submitted except when its owner is
//! dropped (which cancels the op; the runtime frees the buffer once the
//! kernel is done). Mixing the native `read`/`write` methods with the trait
//! methods on the same stream is allowed but bytes the adapter has buffered
//! are only seen through the trait.
//!
//! The streams' own methods (`read`, `write_all`, `shutdown`, `close`) win
//! over trait methods of the same name in method-call syntax: call the
//! trait's by path (`AsyncReadExt::read(&mut s, &mut buf)`), or split the
//! stream (`into_split()`), whose halves have only the trait methods.

// Without a trait feature nothing drives the adapter (the streams still carry
// its empty state).
#![cfg_attr(
    not(any(feature = "tokio-io", feature = "futures-io", feature = "hyper")),
    allow(dead_code)
)]

#[cfg(feature = "futures-io")]
mod futures;
#[cfg(feature = "hyper")]
pub mod hyper;
#[cfg(feature = "tokio-io")]
mod tokio;

use crate::buf::{AnyBuf, AnyBufMut};
use crate::op::{Op, ShutdownHow};
use crate::runtime::net::{stream_read_op, stream_write_op};
use crate::runtime::{submit, OpFuture, PipeReader, PipeWriter, TcpStream, UnixStream};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

/// Capacity of the adapter's read buffer.
const READ_BUF: usize = 16 * 1024;
/// Most bytes one vectored write copies and submits.
const WRITE_MAX: usize = 256 * 1024;

fn changed_buffer() -> io::Error {
    io::Error::other("ringport driver broke its contract: the op came back with another buffer")
}

/// The read side of the adapter: an owned buffer and the read op filling it.
#[derive(Default)]
pub(crate) struct ReadState {
    /// Bytes received and not yet lent out start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// The read in flight, if any; it lives until it completes.
    inflight: Option<OpFuture>,
}

impl fmt::Debug for ReadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadState")
            .field("buffered", &(self.buf.len() - self.pos))
            .field("in_flight", &self.inflight.is_some())
            .finish()
    }
}

impl ReadState {
    /// Lends buffered bytes to `put` (which takes what fits and says how
    /// many), reading first if nothing is buffered. `Ok(0)` is end of stream.
    /// `put` must take at least one byte when given any.
    pub(crate) fn poll_read_with(
        &mut self,
        fd: RawFd,
        socket: bool,
        cx: &mut Context<'_>,
        put: impl FnOnce(&[u8]) -> usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.pos < self.buf.len() {
                let n = put(&self.buf[self.pos..]);
                self.pos += n;
                return Poll::Ready(Ok(n));
            }
            let fut = match &mut self.inflight {
                Some(fut) => fut,
                None => {
                    let mut b = std::mem::take(&mut self.buf);
                    b.clear();
                    b.reserve(READ_BUF);
                    self.pos = 0;
                    let op = stream_read_op(fd, AnyBufMut::new(b), socket);
                    self.inflight.insert(submit(op, None))
                }
            };
            let (res, op) = ready!(Pin::new(fut).poll(cx));
            self.inflight = None;
            self.pos = 0;
            match op.into_buf_mut().and_then(|b| b.downcast::<Vec<u8>>().ok()) {
                Some(b) => self.buf = b,
                None => return Poll::Ready(Err(changed_buffer())),
            }
            match res {
                Ok(0) => {
                    self.buf.clear();
                    return Poll::Ready(Ok(0));
                }
                Ok(_) => continue,
                Err(e) => {
                    self.buf.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// How many received bytes wait to be lent out.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// The write side of the adapter: at most one send in flight (one per stream
/// socket, as the drivers require), its buffer reused for the next.
#[derive(Default)]
pub(crate) struct WriteState {
    inflight: Option<OpFuture>,
    /// The result of the write in flight once it completed, until the
    /// `poll_write` retrying it (or a `poll_flush`) takes it.
    done: Option<io::Result<usize>>,
    spare: Vec<u8>,
    shutdown: Option<OpFuture>,
}

impl fmt::Debug for WriteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteState")
            .field("in_flight", &self.inflight.is_some())
            .finish()
    }
}

impl WriteState {
    /// Waits for the write in flight; its result goes to `done`.
    fn poll_inflight(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(fut) = &mut self.inflight else {
            return Poll::Ready(());
        };
        let (res, op) = ready!(Pin::new(fut).poll(cx));
        self.inflight = None;
        let res = match op.into_buf().and_then(|b| b.downcast::<Vec<u8>>().ok()) {
            Some(mut b) => {
                b.clear();
                self.spare = b;
                res
            }
            None => Err(changed_buffer()),
        };
        self.done = Some(res);
        Poll::Ready(())
    }

    /// Writes what `fill` appends to an empty buffer (at least one byte when
    /// `len > 0`): `Ok(n)` once the send of those bytes completed.
    pub(crate) fn poll_write_with(
        &mut self,
        fd: RawFd,
        socket: bool,
        cx: &mut Context<'_>,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Poll<io::Result<usize>> {
        if self.inflight.is_none() && self.done.is_none() {
            if len == 0 {
                return Poll::Ready(Ok(0));
            }
            let mut b = std::mem::take(&mut self.spare);
            b.clear();
            fill(&mut b);
            let op = stream_write_op(fd, AnyBuf::new(b), socket);
            self.inflight = Some(submit(op, None));
        }
        ready!(self.poll_inflight(cx));
        match self.done.take() {
            // The caller passed fewer bytes than the abandoned write it is
            // retrying: its bytes went out, but `n` cannot describe this call.
            Some(Ok(n)) if n > len => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "poll_write of {len} bytes after an abandoned write of {n} bytes, which was sent"
                ),
            ))),
            Some(r) => Poll::Ready(r),
            None => Poll::Ready(Ok(0)),
        }
    }

    /// Waits for a write abandoned mid-flight (its bytes go out whole) and
    /// reports its error, if any; nothing is buffered otherwise.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_inflight(cx));
        match self.done.take() {
            Some(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Flushes, then shuts down the writing direction of socket `fd`.
    /// Pipes have nothing to shut down: the reader sees end of stream when
    /// the writer is closed.
    pub(crate) fn poll_shutdown(
        &mut self,
        fd: RawFd,
        socket: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        if !socket {
            return Poll::Ready(Ok(()));
        }
        let fut = self.shutdown.get_or_insert_with(|| {
            submit(
                Op::Shutdown {
                    fd,
                    how: ShutdownHow::Write,
                },
                None,
            )
        });
        let (res, _op) = ready!(Pin::new(fut).poll(cx));
        self.shutdown = None;
        Poll::Ready(res.map(|_| ()))
    }
}

/// Copies the slices of a vectored write into `out`, at most [`WRITE_MAX`]
/// bytes (and always at least the first non-empty slice).
pub(crate) fn gather(bufs: &[io::IoSlice<'_>], out: &mut Vec<u8>) {
    for b in bufs {
        if !out.is_empty() && out.len() + b.len() > WRITE_MAX {
            break;
        }
        out.extend_from_slice(b);
    }
}

/// The total length [`gather`] copies.
pub(crate) fn gather_len(bufs: &[io::IoSlice<'_>]) -> usize {
    let mut n = 0;
    for b in bufs {
        if n != 0 && n + b.len() > WRITE_MAX {
            break;
        }
        n += b.len();
    }
    n
}

/// Both directions' adapter state.
#[derive(Debug, Default)]
pub(crate) struct Sides {
    pub(crate) read: ReadState,
    pub(crate) write: WriteState,
}

/// What every stream type carries for the adapter: nothing (one pointer)
/// until a trait method first runs, so the native API pays no memory for it.
#[derive(Debug, Default)]
pub(crate) struct IoState(Option<Box<Sides>>);

impl IoState {
    /// The state, made at first use.
    pub(crate) fn get(&mut self) -> &mut Sides {
        self.0.get_or_insert_with(Box::default)
    }
    /// Takes the state out, leaving none.
    fn take(&mut self) -> Sides {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
    fn buffered(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.read.buffered())
    }
}

/// Something the trait impls can read from: an fd and the read state.
pub(crate) trait ReadSide {
    /// The fd, whether it is a socket, and the read state.
    fn read_side(&mut self) -> (RawFd, bool, &mut ReadState);
}

/// Something the trait impls can write to: an fd and the write state.
pub(crate) trait WriteSide {
    /// The fd, whether it is a socket, and the write state.
    fn write_side(&mut self) -> (RawFd, bool, &mut WriteState);
}

macro_rules! sides {
    ($ty:ty, $socket:expr, read) => {
        impl ReadSide for $ty {
            fn read_side(&mut self) -> (RawFd, bool, &mut ReadState) {
                (self.fd.raw(), $socket, &mut self.io.get().read)
            }
        }
    };
    ($ty:ty, $socket:expr, write) => {
        impl WriteSide for $ty {
            fn write_side(&mut self) -> (RawFd, bool, &mut WriteState) {
                (self.fd.raw(), $socket, &mut self.io.get().write)
            }
        }
    };
}

sides!(TcpStream, true, read);
sides!(TcpStream, true, write);
sides!(UnixStream, true, read);
sides!(UnixStream, true, write);
sides!(PipeReader, false, read);
sides!(PipeWriter, false, write);

/// The reading half of a stream split with `into_split()`; it and its
/// [`WriteHalf`] may be used from two tasks at once (of the same runtime).
/// The stream is closed when both halves are dropped.
pub struct ReadHalf<S> {
    read: ReadState,
    stream: Rc<S>,
}

/// The writing half of a stream split with `into_split()`.
pub struct WriteHalf<S> {
    write: WriteState,
    stream: Rc<S>,
}

impl<S> ReadHalf<S> {
    /// The stream both halves share (for its address accessors and native
    /// methods).
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

impl<S> WriteHalf<S> {
    /// The stream both halves share.
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

impl<S: fmt::Debug> fmt::Debug for ReadHalf<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadHalf")
            .field("stream", &self.stream)
            .field("state", &self.read)
            .finish()
    }
}

impl<S: fmt::Debug> fmt::Debug for WriteHalf<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteHalf")
            .field("stream", &self.stream)
            .field("state", &self.write)
            .finish()
    }
}

impl<S: AsRawFd> ReadSide for ReadHalf<S> {
    fn read_side(&mut self) -> (RawFd, bool, &mut ReadState) {
        (self.stream.as_raw_fd(), true, &mut self.read)
    }
}

impl<S: AsRawFd> WriteSide for WriteHalf<S> {
    fn write_side(&mut self) -> (RawFd, bool, &mut WriteState) {
        (self.stream.as_raw_fd(), true, &mut self.write)
    }
}

macro_rules! split {
    ($ty:ident) => {
        impl $ty {
            /// Splits into owned halves that two tasks of this runtime can
            /// use at once through the `AsyncRead`/`AsyncWrite` traits. Bytes
            /// the adapter had buffered and an op it had in flight go with
            /// their half.
            pub fn into_split(mut self) -> (ReadHalf<$ty>, WriteHalf<$ty>) {
                let io = self.io.take();
                let stream = Rc::new(self);
                (
                    ReadHalf {
                        read: io.read,
                        stream: stream.clone(),
                    },
                    WriteHalf {
                        write: io.write,
                        stream,
                    },
                )
            }

            /// How many received bytes the trait adapter holds that no
            /// `poll_read` has taken yet.
            pub fn buffered(&self) -> usize {
                self.io.buffered()
            }
        }
    };
}

split!(TcpStream);
split!(UnixStream);
