//! The `Driver` trait: the one contract every backend keeps.
//!
//! A driver takes [`Op`]s with a caller token, performs them (natively or by
//! emulation), and hands back exactly one [`Completion`] per accepted
//! submission, carrying the same `Op` (and so the same buffers). It holds each
//! op in its in-flight table until the kernel or worker is done with it, so no
//! buffer is freed or reused while something may still touch it.

use crate::op::{Op, OpId, OpKind};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The end of one operation: its token, its result and the op itself, with
/// its buffers and outputs.
#[derive(Debug)]
pub struct Completion {
    /// The id `submit` returned.
    pub id: OpId,
    /// The token the caller gave at submit.
    pub token: u64,
    /// The count of bytes (or the new fd, or the events), or the OS error.
    pub result: io::Result<usize>,
    /// The operation, given back.
    pub op: Op,
}

/// The announcement that an op finished: its id and token. The op and its
/// result stay in the driver until [`Driver::take`] moves them out once, so
/// a runtime needs no table of its own and a completion is this small record.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Ready {
    /// The id `submit` returned.
    pub id: OpId,
    /// The token the caller gave at submit.
    pub token: u64,
}

/// One result of a multishot op ([`Op::is_multishot`]): a connection's fd,
/// or a count of bytes with the pool buffer that holds them.
#[derive(Debug)]
pub struct Shot {
    /// The fd (accept) or the count of bytes (recv), or the error.
    pub result: io::Result<usize>,
    /// The bytes, for a multishot recv.
    pub buf: Option<crate::bufpool::PooledBuf>,
}

/// Drops a result of multishot `op` nobody will take: an fd it made is
/// closed (no driver has seen it), a buffer goes back to its pool.
pub fn drop_shot(op: &Op, s: Shot) {
    if let Some(fd) = op.shot_made_fd(&s.result) {
        // SAFETY: the fd was made for this result and never handed out.
        unsafe { libc::close(fd) };
    }
}

/// An op refused at submit, handed back with the reason.
pub struct SubmitError {
    /// Why it was refused (`Unsupported`, `InvalidInput`, `WouldBlock` for a
    /// full queue, ...).
    pub error: io::Error,
    /// The op, with its buffers.
    pub op: Op,
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .field("op", &self.op.kind())
            .finish()
    }
}

impl SubmitError {
    /// The op is not something `backend` can do.
    pub fn unsupported(op: Op, backend: &str) -> SubmitError {
        let error = unsupported_error(op.kind(), backend);
        SubmitError { error, op }
    }
}

/// The error for an op a backend cannot do, naming both.
pub fn unsupported_error(kind: OpKind, backend: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "the {backend} backend does not support the `{}` operation",
            kind.name()
        ),
    )
}

/// How a backend performs one kind of op.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Support {
    /// The kernel delivers its completion.
    Native,
    /// The backend produces the completion itself (readiness + syscall, or a
    /// worker thread).
    Emulated,
    /// Refused at submit with `Unsupported`.
    Unsupported,
}

/// What a backend can do.
#[derive(Clone, Debug)]
pub struct Capabilities {
    support: [Support; OpKind::ALL.len()],
    /// Whether fds used with this backend must be in non-blocking mode
    /// (readiness backends). The runtime creates its fds accordingly.
    pub needs_nonblocking: bool,
    /// Whether a per-op deadline is enforced by the backend.
    pub per_op_deadline: bool,
    /// The highest fd number the backend can watch, if it has one
    /// (`select`: `FD_SETSIZE - 1`).
    pub max_fd: Option<RawFd>,
}

impl Capabilities {
    /// Every op with the same support.
    pub fn all(support: Support) -> Capabilities {
        Capabilities {
            support: [support; OpKind::ALL.len()],
            needs_nonblocking: false,
            per_op_deadline: true,
            max_fd: None,
        }
    }
    /// Sets the support of one kind.
    pub fn set(&mut self, kind: OpKind, support: Support) -> &mut Self {
        self.support[kind as usize] = support;
        self
    }
    /// The support of one kind.
    pub fn get(&self, kind: OpKind) -> Support {
        self.support[kind as usize]
    }
    /// Whether every op is supported (natively or emulated).
    pub fn supports_all(&self) -> bool {
        self.support.iter().all(|s| *s != Support::Unsupported)
    }
}

/// Something that interrupts a driver's blocking wait from another thread.
pub trait Wake: Send + Sync {
    /// Ends the driver's current (or next) wait soon.
    fn wake(&self);
}

/// A thread-safe handle that ends a driver's blocking wait.
#[derive(Clone)]
pub struct DriverWaker(Arc<dyn Wake>);

impl DriverWaker {
    /// Wraps a waking mechanism.
    pub fn new(w: Arc<dyn Wake>) -> DriverWaker {
        DriverWaker(w)
    }
    /// Ends the driver's current (or next) wait soon.
    pub fn wake(&self) {
        self.0.wake()
    }
}

impl fmt::Debug for DriverWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DriverWaker")
    }
}

/// A completion backend.
///
/// Contract (every backend, checked by the conformance suite):
/// - every accepted `submit` yields exactly one `Completion`, cancelled ops
///   included (`ECANCELED`, or their real result if they had finished);
/// - an op refused at submit comes back in `SubmitError` and yields nothing;
/// - the op's buffers stay owned by the driver until its completion;
/// - stream ops on one fd are performed in submission order per direction,
///   one send in flight, and a stream send completes only when all bytes are
///   sent or on error;
/// - dropping the driver with ops in flight does not hang; buffers of ops that
///   could not be finished are leaked, never freed while in use.
///
/// An fd used with a driver must be closed through it (`Op::Close`, which the
/// runtime's types and the completion port use): drivers keep per-fd state
/// (queues, poller registration, the fd's kind) that a bare `close(2)` would
/// leave behind for the next fd that gets the same number.
pub trait Driver: Send {
    /// The backend's name (`uring`, `epoll`, ...).
    fn name(&self) -> &'static str;

    /// Which ops it performs natively, emulates, or refuses.
    fn capabilities(&self) -> &Capabilities;

    /// Queues `op`; it starts no later than the next `wait`. `token` comes
    /// back in the completion. With a `deadline`, the op ends with `TimedOut`
    /// if it has not completed by then (its buffer still comes back).
    fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError>;

    /// Starts queued ops and appends completions to `out`, waiting until at
    /// least `min` have arrived, `timeout` passes, or a wake comes. Returns how
    /// many it appended. `min = 0` never blocks.
    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize>;

    /// Like [`Driver::wait`], but announces finished ops instead of handing
    /// them out: each stays in the driver (buffers and result) until
    /// [`Driver::take`]. An op taken before it was announced is not announced.
    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize>;

    /// Moves a finished op out of the driver: its completion, once. `None`
    /// if it has not finished yet, or was taken already.
    fn take(&mut self, id: OpId) -> Option<Completion>;

    /// Takes the next result of multishot op `id` ([`Op::is_multishot`]),
    /// in the order they came: each is announced by [`Driver::wait_ready`]
    /// like a completion, and the op's own completion ([`Driver::take`])
    /// comes after its last result. `None` if no result waits. A driver that
    /// supports no multishot op keeps this default.
    fn take_shot(&mut self, id: OpId) -> Option<Shot> {
        let _ = id;
        None
    }

    /// Asks for one op to end early. The op still completes on its own (with
    /// `ECANCELED` or its real result). `NotFound` if it already completed.
    fn cancel(&mut self, id: OpId) -> io::Result<()>;

    /// Asks for every op on `fd` to end early; returns how many were in flight.
    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize>;

    /// A handle that ends a blocking `wait` from any thread.
    fn waker(&self) -> DriverWaker;

    /// How many submitted ops have not yet been handed back.
    fn in_flight(&self) -> usize;
}

/// Keeps whole completions for a driver whose own table hands them out, so
/// it can also announce them ([`Driver::wait_ready`]) and hand each out once
/// ([`Driver::take`]). Drivers built on [`crate::lifecycle::InFlight`] need
/// none: their ops stay in place.
#[derive(Default)]
pub struct Parking {
    parked: std::collections::HashMap<u64, Completion>,
    scratch: Vec<Completion>,
}

impl Parking {
    /// Parks the completions `wait` (the driver's own) produces and
    /// announces them in `out`.
    pub fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        wait: impl FnOnce(&mut Vec<Completion>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut got = std::mem::take(&mut self.scratch);
        let r = wait(&mut got);
        let n = got.len();
        for c in got.drain(..) {
            out.push(Ready {
                id: c.id,
                token: c.token,
            });
            self.parked.insert(c.id.to_u64(), c);
        }
        self.scratch = got;
        r.map(|_| n)
    }

    /// The parked completion of `id`, once.
    pub fn take(&mut self, id: OpId) -> Option<Completion> {
        self.parked.remove(&id.to_u64())
    }

    /// How many are parked.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Whether none are parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.parked.drain().for_each(|(_, c)| drop_undelivered(c));
    }
}

/// Maps a kernel-style result (negative errno or a count) to `io::Result`.
pub fn result_from_raw(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// The `ECANCELED` error every backend reports for a cancelled op.
pub fn cancelled() -> io::Error {
    io::Error::from_raw_os_error(libc::ECANCELED)
}

/// The error an op gets when its per-op deadline passes.
pub fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the operation's deadline passed")
}

/// The error for an op, cancel or lookup whose target is no longer in flight.
pub fn not_in_flight() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such operation in flight (it has completed)",
    )
}

/// The error for an op submitted on an fd whose close is under way.
pub fn fd_closing(fd: RawFd) -> io::Error {
    io::Error::other(format!(
        "fd {fd} is being closed; no new operation may start on it"
    ))
}

/// The checks every driver makes before it accepts `op`, in the same order
/// everywhere: the op's own input ([`Op::validate`]: fd range, offsets,
/// addresses, iovec count), the backend's support for its kind, and no close
/// pending on its fd or its second fd ([`Op::pinned_fd`]; `closing` says whether one is, for a valid fd). The
/// caller hands the op back with the error in a `SubmitError`.
#[inline]
pub fn admit(
    op: &Op,
    caps: &Capabilities,
    backend: &str,
    closing: impl Fn(RawFd) -> bool,
) -> io::Result<()> {
    op.validate()?;
    if caps.get(op.kind()) == Support::Unsupported {
        return Err(unsupported_error(op.kind(), backend));
    }
    match op.fd() {
        Some(fd) if closing(fd) => return Err(fd_closing(fd)),
        _ => {}
    }
    match op.pinned_fd() {
        Some(fd) if closing(fd) => Err(fd_closing(fd)),
        _ => Ok(()),
    }
}

/// Drops a completion that will never be delivered (its driver is going
/// away): an fd its op made (an accept, an open) is closed, then the op and
/// its buffers are dropped. Only for completions whose kernel or worker side
/// is over.
pub fn drop_undelivered(c: Completion) {
    if let Some(fd) = c.op.made_fd(&c.result) {
        // SAFETY: the fd was made by this op and never handed to anyone; the
        // driver dropping it is the only owner.
        unsafe { libc::close(fd) };
    }
}

/// Hands a driver's finished completions to the caller's vector (a swap
/// when the caller's is empty, the usual case); returns how many.
pub fn deliver(out: &mut Vec<Completion>, ready: &mut Vec<Completion>) -> usize {
    let n = ready.len();
    if out.is_empty() {
        std::mem::swap(out, ready);
    } else {
        out.append(ready);
    }
    n
}
