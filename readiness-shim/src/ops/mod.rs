//! How the shim performs each [`Op`]: one non-blocking attempt for ops that
//! wait on readiness, or a blocking call on a pool thread for file ops. One
//! group file per kind of op (rw, net, fs, ctl), so "how does the shim do
//! X" is answered in one file; this one dispatches and holds the helpers.

use ringport_core::driver::Capabilities;
use ringport_core::op::Op;
use std::io;

mod ctl;
mod fs;
mod net;
mod rw;
mod sendfile;

pub(crate) use ctl::poll_queue;
pub(crate) use rw::{read_nowait, Nowait, NOWAIT_READS};

/// What a non-blocking attempt came to.
pub(crate) enum Attempt {
    /// Finished with this result.
    Done(io::Result<usize>),
    /// Would block: retry when the fd is ready in the op's direction.
    WouldBlock,
    /// One result of a multishot op, which goes on (try it again).
    Shot(io::Result<usize>, Option<ringport_core::PooledBuf>),
}

pub(crate) fn last() -> io::Error {
    io::Error::last_os_error()
}

/// Runs `f` until it does not fail with EINTR; a negative result becomes the
/// OS error. On a pool worker told to stop, `EINTR` ends the loop (the
/// driver interrupts the syscall to stop the job).
pub(crate) fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = last();
        if e.raw_os_error() != Some(libc::EINTR) || crate::pool::stopping() {
            return Err(e);
        }
    }
}

pub(crate) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS)
    )
}

/// Maps a result to an attempt: `EAGAIN` means wait.
pub(crate) fn attempt_of(r: io::Result<usize>) -> Attempt {
    match r {
        Err(e) if would_block(&e) => Attempt::WouldBlock,
        r => Attempt::Done(r),
    }
}

/// One non-blocking attempt at a readiness op. `progress` carries state
/// between attempts: bytes of a stream write already sent, or 1 once a
/// connect is under way.
pub(crate) fn attempt(op: &mut Op, progress: &mut usize) -> Attempt {
    match op {
        Op::Nop => Attempt::Done(Ok(0)),
        Op::Read { .. }
        | Op::Write { .. }
        | Op::Readv { .. }
        | Op::Writev { .. }
        | Op::ReadPooled { .. }
        | Op::ReadFixed { .. }
        | Op::WriteFixed { .. } => rw::attempt(op, progress),
        Op::Recv { .. }
        | Op::RecvPooled { .. }
        | Op::Send { .. }
        | Op::SendZc { .. }
        | Op::RecvFrom { .. }
        | Op::SendTo { .. }
        | Op::Accept { .. }
        | Op::AcceptMulti { .. }
        | Op::RecvMulti { .. }
        | Op::Connect { .. }
        | Op::Shutdown { .. } => net::attempt(op, progress),
        Op::Poll { .. } => ctl::attempt(op),
        Op::SendFile { .. } => sendfile::attempt(op, progress),
        // File ops, timers, close and cancel are handled by the driver.
        _ => Attempt::Done(perform_blocking(op)),
    }
}

/// Writes until all `len` bytes are out (tracked in `progress`), or would block.
pub(crate) fn write_all(
    progress: &mut usize,
    len: usize,
    mut write: impl FnMut(usize) -> isize,
) -> Attempt {
    if len == 0 {
        return Attempt::Done(Ok(0));
    }
    while *progress < len {
        let done = *progress;
        match retry(|| write(done)) {
            Ok(0) => {
                return Attempt::Done(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write returned 0",
                )))
            }
            Ok(n) => *progress += n,
            Err(e) if would_block(&e) => return Attempt::WouldBlock,
            Err(e) => return Attempt::Done(Err(e)),
        }
    }
    Attempt::Done(Ok(*progress))
}

/// Performs a file op with blocking syscalls (on a pool thread).
pub(crate) fn perform_blocking(op: &mut Op) -> io::Result<usize> {
    match op {
        Op::Read { .. }
        | Op::Write { .. }
        | Op::Readv { .. }
        | Op::Writev { .. }
        | Op::ReadPooled { .. }
        | Op::ReadFixed { .. }
        | Op::WriteFixed { .. } => rw::perform_blocking(op),
        Op::Fsync { .. }
        | Op::OpenAt { .. }
        | Op::Stat { .. }
        | Op::OpenAt2 { .. }
        | Op::StatAt { .. }
        | Op::RenameAt { .. }
        | Op::UnlinkAt { .. }
        | Op::MkdirAt { .. }
        | Op::SymlinkAt { .. }
        | Op::LinkAt { .. }
        | Op::Fallocate { .. }
        | Op::Ftruncate { .. } => fs::perform_blocking(op),
        Op::Nop => Ok(0),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Ops on an fd that go to the pool whatever the fd is (they never report
/// readiness): fsync, stat, fallocate, ftruncate, and an open beneath a
/// directory fd.
pub(crate) fn on_pool(op: &Op) -> bool {
    matches!(
        op,
        Op::Fsync { .. }
            | Op::Stat { .. }
            | Op::Fallocate { .. }
            | Op::Ftruncate { .. }
            | Op::OpenAt2 { .. }
    )
}

/// What this OS cannot do at all, marked unsupported in `caps` (every other
/// kind is emulated).
pub(crate) fn limit_caps(caps: &mut Capabilities) {
    #[cfg(not(target_os = "linux"))]
    caps.set(
        ringport_core::op::OpKind::OpenAt2,
        ringport_core::driver::Support::Unsupported,
    );
    let _ = caps;
}
