//! Timers: each is one `Timeout` op on the driver.

use super::op::submit;
use crate::op::Op;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Waits for `duration`. A duration too long for the clock to express (such
/// as `Duration::MAX`) waits forever, without holding a timer. The
/// [`Sleep`] can be moved to another deadline with [`Sleep::reset`].
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now().checked_add(duration),
        op: None,
        done: false,
    }
}

/// Waits until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline: Some(deadline),
        op: None,
        done: false,
    }
}

/// The future of [`sleep`] and [`sleep_until`]: one `Timeout` op on the
/// driver, submitted at the first poll, which [`Sleep::reset`] replaces.
pub struct Sleep {
    /// None: forever.
    deadline: Option<Instant>,
    op: Option<super::OpFuture>,
    done: bool,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish()
    }
}

impl Sleep {
    /// When it ends (None: never).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether it has ended.
    pub fn is_elapsed(&self) -> bool {
        self.done
    }

    /// Moves the deadline (earlier or later, even after it ended): the
    /// timer in flight is cancelled and a new one starts at the next poll.
    pub fn reset(&mut self, deadline: Instant) {
        self.op = None;
        self.deadline = Some(deadline);
        self.done = false;
    }
}

impl Future for Sleep {
    type Output = io::Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Ok(()));
        }
        let Some(deadline) = this.deadline else {
            return Poll::Pending; // forever: nothing will wake it
        };
        let op = this
            .op
            .get_or_insert_with(|| submit(Op::Timeout { deadline }, None));
        let (res, _op) = std::task::ready!(Pin::new(op).poll(cx));
        this.op = None;
        match res {
            Err(e) if e.raw_os_error() != Some(libc::ETIME) => Poll::Ready(Err(e)),
            _ => {
                this.done = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// What an [`Interval`] does about ticks it missed (the task was busy past
/// a tick's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTickBehavior {
    /// Fire the missed ticks at once, then keep the original schedule.
    #[default]
    Burst,
    /// Fire one tick now and count the period from now on.
    Delay,
    /// Fire one tick now and go on with the next tick of the original
    /// schedule that is still ahead.
    Skip,
}

/// Ticks every `period`; the first tick is at once. See [`Interval::tick`].
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// Ticks every `period`, the first tick at `start`.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    Interval {
        period,
        next: start,
        sleep: sleep_until(start),
        missed: MissedTickBehavior::default(),
    }
}

/// A periodic timer: [`interval`].
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    next: Instant,
    sleep: Sleep,
    missed: MissedTickBehavior,
}

impl Interval {
    /// Waits for the next tick and returns the time it was due. A zero
    /// period is an `InvalidInput` error. Cancel-safe: dropping the future
    /// loses no tick.
    pub async fn tick(&mut self) -> io::Result<Instant> {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Polls for the next tick (see [`Interval::tick`]).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Instant>> {
        if self.period.is_zero() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an interval's period must not be zero",
            )));
        }
        if self.sleep.deadline() != Some(self.next) {
            self.sleep.reset(self.next);
        }
        std::task::ready!(Pin::new(&mut self.sleep).poll(cx))?;
        let due = self.next;
        let now = Instant::now();
        self.next = match self.missed {
            MissedTickBehavior::Burst => due + self.period,
            MissedTickBehavior::Delay if now > due + self.period => now + self.period,
            MissedTickBehavior::Delay => due + self.period,
            MissedTickBehavior::Skip => {
                let mut next = due + self.period;
                if next <= now {
                    let behind = (now - due).as_nanos() / self.period.as_nanos();
                    let k = u32::try_from(behind + 1).unwrap_or(u32::MAX);
                    next = due + self.period.saturating_mul(k);
                }
                next
            }
        };
        Poll::Ready(Ok(due))
    }

    /// Sets what happens to missed ticks.
    pub fn set_missed_tick_behavior(&mut self, b: MissedTickBehavior) {
        self.missed = b;
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Starts the schedule again: the next tick is one period from now.
    pub fn reset(&mut self) {
        self.next = Instant::now() + self.period;
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
    let mut timer = sleep_until(deadline);
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut timer).poll(cx) {
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
    let mut timer = sleep(duration);
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
