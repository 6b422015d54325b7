//! Timers: each is one `Timeout` op on the driver.

use super::op::submit;
use crate::op::Op;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Waits for `duration`. A duration too long for the clock to express (such
/// as `Duration::MAX`) waits forever, without holding a timer.
pub async fn sleep(duration: Duration) -> io::Result<()> {
    match Instant::now().checked_add(duration) {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Waits until `deadline`.
pub async fn sleep_until(deadline: Instant) -> io::Result<()> {
    let (res, _op) = submit(Op::Timeout { deadline }, None).await;
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// The error of [`timeout`] when the time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(_: Elapsed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, Elapsed)
    }
}

/// Runs `future` until `deadline` at most (see [`timeout`]).
pub(crate) async fn timeout_at<F: Future>(
    deadline: Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep_until(deadline));
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Runs `future` for at most `duration`. When time runs out the future is
/// dropped (its op cancelled, its buffer freed once the kernel is done);
/// to get a buffer back on timeout, use an op's own deadline instead.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep(duration));
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut timer).as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
