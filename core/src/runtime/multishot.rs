//! Streams of results from one submission: `TcpListener::incoming()` (a
//! connection per result) and `TcpStream::recv_stream(&pool)` (a pool buffer
//! per arrival). Native multishot accept and recv on io_uring, repeated
//! attempts at readiness on the shim (aio hands them to its shim); refused
//! (`Unsupported`) by a backend whose capabilities say so.
//!
//! The op is submitted at the first `next()`; dropping the stream cancels
//! it, and results nobody took are discarded (accepted sockets closed
//! through the driver, buffers back to their pool).

use super::net::{Fd, TcpListener, TcpStream};
use super::{current, no_runtime, Remote, ShotPoll};
use crate::bufpool::{BufPool, PooledBuf};
use crate::op::{Op, OpId};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};

/// One result: a count or fd, and the pool buffer of a recv.
type ShotOf = (usize, Option<PooledBuf>);

enum State {
    Idle(Op),
    Running(Arc<Remote>, OpId, u64),
    Ended,
}

/// One multishot op and the results it has left.
struct Multi {
    state: State,
}

impl Multi {
    fn new(op: Op) -> Multi {
        Multi {
            state: State::Idle(op),
        }
    }

    /// The next result; `None` once the op has ended.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<ShotOf>>> {
        let Some(core) = current() else {
            self.state = State::Ended;
            return Poll::Ready(Some(Err(no_runtime())));
        };
        loop {
            match &mut self.state {
                State::Ended => return Poll::Ready(None),
                State::Idle(_) => {
                    let State::Idle(op) = std::mem::replace(&mut self.state, State::Ended) else {
                        unreachable!()
                    };
                    match core.submit(op, None, cx.waker()) {
                        Ok((id, waiter)) => {
                            self.state = State::Running(core.remote.clone(), id, waiter)
                        }
                        Err(e) => return Poll::Ready(Some(Err(e.error))),
                    }
                }
                State::Running(remote, id, waiter) => {
                    assert!(
                        Arc::ptr_eq(remote, &core.remote),
                        "a ringport stream was polled away from the runtime that started it"
                    );
                    return match core.poll_shot(*id, waiter, cx.waker()) {
                        ShotPoll::Shot(s) => Poll::Ready(Some(s.result.map(|n| (n, s.buf)))),
                        ShotPoll::Ended(c) => {
                            self.state = State::Ended;
                            match c.result {
                                // Ended by its peer, or by a cancel: the end.
                                Ok(_) => Poll::Ready(None),
                                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                                    Poll::Ready(None)
                                }
                                Err(e) => Poll::Ready(Some(Err(e))),
                            }
                        }
                        ShotPoll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl Drop for Multi {
    fn drop(&mut self) {
        if let State::Running(remote, id, _) = &self.state {
            match current().filter(|c| Arc::ptr_eq(&c.remote, remote)) {
                Some(core) => core.drop_op(*id),
                None => remote.defer_drop_op(*id),
            }
        }
    }
}

/// The connections of a listener, from one multishot accept
/// ([`TcpListener::incoming`]).
pub struct Incoming<'a> {
    _listener: &'a TcpListener,
    multi: Multi,
}

impl Incoming<'_> {
    /// The next connection; `None` once the accept has ended (cancelled).
    /// An error ends the stream after it is returned.
    pub async fn next(&mut self) -> Option<io::Result<TcpStream>> {
        let r = poll_fn(|cx| self.multi.poll_next(cx)).await?;
        Some(r.map(|(fd, _)| TcpStream {
            io: Default::default(),
            fd: Fd::new(fd as RawFd),
        }))
    }
}

/// The bytes arriving on a stream, in pool buffers, from one multishot recv
/// ([`TcpStream::recv_stream`]).
pub struct RecvStream<'a> {
    _stream: &'a TcpStream,
    multi: Multi,
}

impl RecvStream<'_> {
    /// The next arrival; `None` at end of stream (or once cancelled). An
    /// error (`ENOBUFS` when the pool ran dry) ends the stream after it is
    /// returned.
    pub async fn next(&mut self) -> Option<io::Result<PooledBuf>> {
        let r = poll_fn(|cx| self.multi.poll_next(cx)).await?;
        Some(r.and_then(|(_, buf)| {
            buf.ok_or_else(|| io::Error::other("a multishot recv result came without its buffer"))
        }))
    }
}

impl TcpListener {
    /// The listener's connections as a stream, from one multishot accept.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            _listener: self,
            multi: Multi::new(Op::AcceptMulti {
                fd: self.as_raw_fd(),
            }),
        }
    }
}

impl TcpStream {
    /// The bytes arriving on this stream, each arrival in a buffer of
    /// `pool`, from one multishot recv. While it runs it is the stream's
    /// reader: other reads wait behind it.
    pub fn recv_stream(&self, pool: &BufPool) -> RecvStream<'_> {
        RecvStream {
            _stream: self,
            multi: Multi::new(Op::RecvMulti {
                fd: self.as_raw_fd(),
                pool: pool.clone(),
            }),
        }
    }
}
