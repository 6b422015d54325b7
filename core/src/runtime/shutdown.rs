//! Graceful shutdown: a token tasks watch, and the runtime's drain.
//!
//! A server stops accepting when its runtime's token fires (see
//! [`TcpListener::accept_until`](super::TcpListener::accept_until)), lets
//! the exchanges already started finish, and then
//! [`Runtime::shutdown_timeout`](super::Runtime::shutdown_timeout) waits a
//! bounded time for the tasks to end before dropping what is left.

use super::signal::{signal, Signal, SignalKind};
use slab::Slab;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A one-way switch that tasks watch: once triggered it stays triggered and
/// every waiter wakes. Cheap to clone; `Send + Sync`, so any thread may
/// trigger it. Each runtime has one ([`shutdown_token`]), which
/// `Runtime::shutdown_timeout` triggers; more can be made with
/// [`ShutdownToken::new`].
#[derive(Clone, Default)]
pub struct ShutdownToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    waiters: Mutex<Slab<Waker>>,
}

impl std::fmt::Debug for ShutdownToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownToken")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl ShutdownToken {
    /// A token not yet triggered.
    pub fn new() -> ShutdownToken {
        ShutdownToken::default()
    }

    /// Triggers the token: every [`ShutdownToken::triggered`] future
    /// resolves. Triggering again does nothing.
    pub fn trigger(&self) {
        if self.inner.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiters: Vec<Waker> = {
            let mut w = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.drain().collect()
        };
        for w in waiters {
            w.wake();
        }
    }

    /// Whether the token was triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// Resolves once the token is triggered.
    pub fn triggered(&self) -> Triggered {
        Triggered {
            token: self.clone(),
            key: None,
        }
    }

    /// Runs `future` until it ends (`Some(output)`) or the token is
    /// triggered (`None`; the future is dropped, its op cancelled). The
    /// future is polled first, so an output that is already there wins
    /// over the token.
    pub async fn run_until<F: Future>(&self, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut fired = self.triggered();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            match Pin::new(&mut fired).poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Triggers the token when any of `kinds` arrives (say SIGTERM and
    /// SIGINT): listens now, on the running runtime, from a task of its own.
    pub fn trigger_on(&self, kinds: &[SignalKind]) -> io::Result<()> {
        let mut sigs: Vec<Signal> = kinds
            .iter()
            .map(|k| signal(*k))
            .collect::<io::Result<_>>()?;
        let token = self.clone();
        super::spawn(async move {
            let mut waits: Vec<Pin<Box<dyn Future<Output = io::Result<()>> + '_>>> =
                sigs.iter_mut().map(|s| Box::pin(s.recv()) as _).collect();
            let got = std::future::poll_fn(|cx| {
                for w in waits.iter_mut() {
                    if let Poll::Ready(r) = w.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                }
                Poll::Pending
            });
            first_of(got, token.triggered()).await;
            token.trigger();
        });
        Ok(())
    }
}

/// Waits for whichever of `a` and `b` ends first.
async fn first_of<A: Future, B: Future>(a: A, b: B) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The future of [`ShutdownToken::triggered`].
pub struct Triggered {
    token: ShutdownToken,
    key: Option<usize>,
}

impl Future for Triggered {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_triggered() {
            return Poll::Ready(());
        }
        let inner = self.token.inner.clone();
        let mut w = inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: `trigger` drains the waiters under it.
        if inner.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match self.key {
            Some(k) if w.contains(k) => {
                if !w[k].will_wake(cx.waker()) {
                    w[k] = cx.waker().clone();
                }
            }
            _ => self.key = Some(w.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Triggered {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut w = self
                .token
                .inner
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !self.token.is_triggered() && w.contains(k) {
                w.remove(k);
            }
        }
    }
}

/// The shutdown token of the runtime running on this thread.
///
/// # Panics
///
/// If no runtime is running on this thread.
pub fn shutdown_token() -> ShutdownToken {
    super::current()
        .expect("ringport::shutdown_token called outside a running runtime")
        .shutdown
        .clone()
}
