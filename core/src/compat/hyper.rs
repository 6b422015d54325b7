//! hyper 1.x over ringport (feature `hyper`): `hyper::rt::Read`/`Write` for
//! the streams and split halves, [`LocalExec`] to run hyper's background
//! tasks (HTTP/2 streams) as local tasks, and [`RingportTimer`] to give hyper
//! timeouts (header read timeout, HTTP/2 keep-alive) over ringport's timers.

use super::{gather, gather_len, ReadHalf, ReadSide, WriteHalf, WriteSide};
use crate::op::Op;
use crate::runtime::{submit, OpFuture, PipeReader, PipeWriter, TcpStream, UnixStream};
use ::hyper::rt::{Executor, Read, ReadBufCursor, Sleep, Timer, Write};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

fn poll_read<T: ReadSide>(
    this: &mut T,
    cx: &mut Context<'_>,
    mut buf: ReadBufCursor<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let (fd, socket, state) = this.read_side();
    state
        .poll_read_with(fd, socket, cx, |src| {
            let n = src.len().min(buf.remaining());
            buf.put_slice(&src[..n]);
            n
        })
        .map_ok(|_| ())
}

macro_rules! hyper_read {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> Read for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                poll_read(self.get_mut(), cx, buf)
            }
        }
    )*};
}

macro_rules! hyper_write {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> Write for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_write_with(fd, socket, cx, buf.len(), |out| out.extend_from_slice(buf))
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_write_with(fd, socket, cx, gather_len(bufs), |out| gather(bufs, out))
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.get_mut().write_side().2.poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_shutdown(fd, socket, cx)
            }
        }
    )*};
}

hyper_read!(
    [] TcpStream;
    [] UnixStream;
    [] PipeReader;
    [S: AsRawFd] ReadHalf<S>;
);
hyper_write!(
    [] TcpStream;
    [] UnixStream;
    [] PipeWriter;
    [S: AsRawFd] WriteHalf<S>;
);

/// A `hyper::rt::Executor` that spawns each future as a local task on the
/// ringport runtime of the calling thread (the futures need not be `Send`).
/// Called where no runtime runs, it logs an error and drops the future.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        if crate::runtime::current().is_none() {
            log::error!("hyper asked to spawn a task where no ringport runtime runs; dropped");
            return;
        }
        drop(crate::runtime::spawn(async move {
            fut.await;
        }));
    }
}

/// A `hyper::rt::Timer` over ringport's timers (each sleep is one `Timeout`
/// op on the runtime of the thread that polls it).
#[derive(Clone, Copy, Debug, Default)]
pub struct RingportTimer;

impl Timer for RingportTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(TimerSleep::new(Instant::now().checked_add(duration)))
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(TimerSleep::new(Some(deadline)))
    }
}

/// One hyper sleep. hyper demands `Send + Sync`; the op inside is neither
/// (it refers to its thread's runtime), so the sleep remembers the thread
/// that made it and touches the op only there.
struct TimerSleep {
    /// `None`: too far away for the clock, so never.
    deadline: Option<Instant>,
    owner: ThreadId,
    op: Option<OpFuture>,
    fired: bool,
}

// SAFETY: the only non-Send/Sync part is `op` (an Rc to the runtime and the
// op's state). It is created, polled and dropped only on `owner`'s thread:
// `poll` checks the thread before touching it, and `Drop` on another thread
// leaks it instead of dropping it. `&TimerSleep` gives no access to `op`.
unsafe impl Send for TimerSleep {}
// SAFETY: as above; no method taking `&self` touches `op`.
unsafe impl Sync for TimerSleep {}

impl TimerSleep {
    fn new(deadline: Option<Instant>) -> TimerSleep {
        TimerSleep {
            deadline,
            owner: thread::current().id(),
            op: None,
            fired: false,
        }
    }
}

impl Future for TimerSleep {
    type Output = ();

    /// # Panics
    ///
    /// If polled on a thread other than the one that created it (hyper on a
    /// ringport runtime never moves its timers).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        assert!(
            thread::current().id() == self.owner,
            "a ringport hyper timer was polled on another thread than its runtime's"
        );
        if self.fired {
            return Poll::Ready(());
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let op = self
            .op
            .get_or_insert_with(|| submit(Op::Timeout { deadline }, None));
        match Pin::new(op).poll(cx) {
            Poll::Ready((res, _)) => {
                self.op = None;
                self.fired = true;
                if let Err(e) = res {
                    if e.raw_os_error() != Some(libc::ETIME) {
                        log::error!("hyper timer: the timeout op failed ({e}); firing now");
                    }
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sleep for TimerSleep {}

impl Drop for TimerSleep {
    fn drop(&mut self) {
        if thread::current().id() != self.owner {
            // Dropping the op here would touch its runtime from a foreign
            // thread; leaking it is the safe choice (see the Send argument).
            std::mem::forget(self.op.take());
        }
    }
}
