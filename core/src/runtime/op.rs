//! The future of one submitted op.

use super::{current, current_or_err, Remote};
use crate::op::{Op, OpId};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

enum State {
    /// Not yet submitted (submission happens at the first poll).
    Idle(Op, Option<Instant>),
    /// In flight under this id in the driver of the runtime that `Remote`
    /// belongs to, with the waiter recorded for it (a task id, or
    /// "redirected"). (An identity, not the runtime itself, so that the
    /// future is `Send`: a future moved to another thread and dropped there
    /// hands its id back to its runtime through the `Remote`.)
    Submitted(Arc<Remote>, OpId, u64),
    /// The output was taken.
    Finished,
}

/// Resolves to the op's result and the op itself (with its buffers).
///
/// Dropping it while the op is in flight cancels the op; the runtime keeps the
/// op's buffers until the kernel is done, then drops them once. It is `Send`
/// (so are the types that hold one), but it must be polled on the thread of
/// the runtime that submitted its op; dropped elsewhere, its cancel is handed
/// to that runtime.
pub struct OpFuture {
    state: State,
}

/// Submits `op` on the current runtime when first polled; `deadline` bounds
/// the op (it then ends with `TimedOut` and hands its buffer back).
pub fn submit(op: Op, deadline: Option<Instant>) -> OpFuture {
    OpFuture {
        state: State::Idle(op, deadline),
    }
}

impl Future for OpFuture {
    type Output = (io::Result<usize>, Op);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match std::mem::replace(&mut this.state, State::Finished) {
            State::Idle(op, deadline) => {
                let core = match current_or_err() {
                    Ok(c) => c,
                    Err(e) => return Poll::Ready((Err(e), op)),
                };
                let res = core.submit(op, deadline, cx.waker());
                match res {
                    Ok((id, waiter)) => {
                        this.state = State::Submitted(core.remote.clone(), id, waiter);
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready((Err(e.error), e.op)),
                }
            }
            State::Submitted(remote, id, mut waiter) => {
                let core = current().filter(|c| Arc::ptr_eq(&c.remote, &remote));
                let Some(core) = core else {
                    panic!(
                        "a ringport I/O future was polled away from the runtime that \
                         started its op (another thread, or outside its block_on)"
                    )
                };
                match core.poll_op(id, &mut waiter, cx.waker()) {
                    Some(c) => Poll::Ready((c.result, c.op)),
                    None => {
                        this.state = State::Submitted(remote, id, waiter);
                        Poll::Pending
                    }
                }
            }
            State::Finished => panic!("OpFuture polled after completion"),
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if let State::Submitted(remote, id, _) = &self.state {
            match current().filter(|c| Arc::ptr_eq(&c.remote, remote)) {
                Some(core) => core.drop_op(*id),
                // Elsewhere: its runtime cancels it at its next turn (or
                // has already dropped everything, if it is gone).
                None => remote.defer_drop_op(*id),
            }
        }
    }
}
