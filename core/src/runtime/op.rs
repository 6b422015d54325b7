//! The future of one submitted op.

use super::{current_or_err, Core};
use crate::op::Op;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

enum State {
    /// Not yet submitted (submission happens at the first poll).
    Idle(Op, Option<Instant>),
    /// In flight under this key of the runtime's op table.
    Submitted(Rc<Core>, usize),
    /// The output was taken.
    Finished,
}

/// Resolves to the op's result and the op itself (with its buffers).
///
/// Dropping it while the op is in flight cancels the op; the runtime keeps the
/// op's buffers until the kernel is done, then drops them once.
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
                    Ok(key) => {
                        this.state = State::Submitted(core, key);
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready((Err(e.error), e.op)),
                }
            }
            State::Submitted(core, key) => match core.poll_op(key, cx.waker()) {
                Some(c) => Poll::Ready((c.result, c.op)),
                None => {
                    this.state = State::Submitted(core, key);
                    Poll::Pending
                }
            },
            State::Finished => panic!("OpFuture polled after completion"),
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if let State::Submitted(core, key) = &self.state {
            core.drop_op(*key);
        }
    }
}
