//! The testkit runs against a driver that is not one of this repository's
//! backends: `Wrapped` is a `Driver` written here, as a user would write one
//! outside the repository (it forwards to the epoll shim under its own
//! name), and the whole conformance suite runs on it through
//! `ringport_testkit::conformance!`. It hands out whole completions from its
//! `wait` and serves `wait_ready`/`take` through core's `Parking`, as a
//! driver with its own completion list would.

use ringport::{
    Capabilities, Completion, Driver, DriverWaker, Op, OpId, OpKind, Parking, Ready, SubmitError,
    Support,
};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A driver of "someone else's": the epoll shim behind a name of its own.
/// It delivers whole completions, so multishot results (taken with
/// `take_shot`) are out of its reach: it refuses those ops.
struct Wrapped(Box<dyn Driver>, Parking, Capabilities);

impl Wrapped {
    fn new(inner: Box<dyn Driver>) -> Wrapped {
        let mut caps = inner.capabilities().clone();
        caps.set(OpKind::AcceptMulti, Support::Unsupported);
        caps.set(OpKind::RecvMulti, Support::Unsupported);
        Wrapped(inner, Parking::default(), caps)
    }
}

impl Driver for Wrapped {
    fn name(&self) -> &'static str {
        "wrapped"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.2
    }
    fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        if self.2.get(op.kind()) == Support::Unsupported {
            return Err(SubmitError::unsupported(op, "wrapped"));
        }
        self.0.submit(op, token, deadline)
    }
    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.0.wait(out, min, timeout)
    }
    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let inner = &mut self.0;
        self.1.wait_ready(out, |got| inner.wait(got, min, timeout))
    }
    fn take(&mut self, id: OpId) -> Option<Completion> {
        self.1.take(id)
    }
    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        self.0.cancel(id)
    }
    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        self.0.cancel_fd(fd)
    }
    fn waker(&self) -> DriverWaker {
        self.0.waker()
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight() + self.1.len()
    }
}

mod wrapped {
    ringport_testkit::conformance!(ringport_testkit::Target::new("wrapped", || {
        let inner = ringport::driver(ringport::Backend::Epoll)?;
        Ok(Box::new(super::Wrapped::new(inner)) as Box<dyn ringport::Driver>)
    }));
}
