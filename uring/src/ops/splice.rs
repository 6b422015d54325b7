//! `sendfile` as IORING_OP_SPLICE through a pipe the op owns: file → pipe,
//! then pipe → socket until the pipe is empty, again until `len` bytes are
//! out or the file ends. One op, one completion with the total; the state
//! between the steps lives in the slot's scratch, and the pipe closes with it.
//!
//! The kernel runs each splice on an io-wq worker, where a linked timeout
//! does not fire while the splice is blocked (measured on 6.18: a splice
//! into a socket whose peer stops reading never ended by its 200 ms link
//! timeout; an async cancel did end it). So the socket is made non-blocking
//! (as the readiness backends make every socket): a full socket answers
//! `EAGAIN`, the driver waits for `POLLOUT` with the op's deadline, and no
//! worker sits blocked behind a slow reader. The file → pipe step may still
//! wait for the disk.
//!
//! Splicing into a socket cannot carry `MSG_NOSIGNAL`: a peer that is gone
//! raises `SIGPIPE` (Rust programs ignore it; the op ends with `EPIPE`).

use super::{scratch, Extra, Scratch, Step};
use io_uring::{opcode, squeue, types};
use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The pipe's size asked for (the kernel's default is 64 KiB; the
/// unprivileged ceiling, `/proc/sys/fs/pipe-max-size`, is 1 MiB by default).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The state of one `sendfile` between its steps.
pub(crate) struct SpliceState {
    /// The pipe (read end, write end), or the errno of making it.
    pipe: Result<(OwnedFd, OwnedFd), i32>,
    /// How much one file → pipe step moves at most (the pipe's size).
    chunk: u32,
    /// Bytes in the pipe, not yet sent.
    in_pipe: Cell<u32>,
    /// Bytes taken from the file so far.
    taken: Cell<u64>,
    /// Whether the step in flight is pipe → socket.
    to_socket: Cell<bool>,
}

impl SpliceState {
    /// The state of a new op that sends to `fd`, which is made non-blocking.
    fn new(fd: RawFd) -> SpliceState {
        // SAFETY: fcntl on the op's fd, which the driver admitted; a failure
        // leaves it blocking (deadlines then end the op only between steps).
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two fds pipe2 writes.
        let pipe = if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE))
        } else {
            // SAFETY: two fresh fds that nothing else owns.
            Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
        };
        let chunk = match &pipe {
            Ok((_, w)) => {
                // SAFETY: fcntl on our own pipe; on failure the default size stays.
                let n = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
                // SAFETY: as above.
                let n = if n > 0 {
                    n
                } else {
                    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
                };
                if n > 0 {
                    n as u32
                } else {
                    1 << 16
                }
            }
            Err(_) => 0,
        };
        SpliceState {
            pipe,
            chunk,
            in_pipe: Cell::new(0),
            taken: Cell::new(0),
            to_socket: Cell::new(false),
        }
    }
}

/// The next step's SQE: the pipe's bytes to the socket if it holds any,
/// else the next part of the file into the pipe (a nop when nothing is
/// left to take, or when the pipe could not be made).
pub(super) fn send_file(
    fd: RawFd,
    file: RawFd,
    offset: u64,
    len: u64,
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let s = scratch(extra);
    if !matches!(s, Scratch::Splice(_)) {
        *s = Scratch::Splice(Box::new(SpliceState::new(fd)));
    }
    let Scratch::Splice(st) = s else {
        unreachable!()
    };
    let Ok((r, w)) = &st.pipe else {
        return opcode::Nop::new().build();
    };
    let in_pipe = st.in_pipe.get();
    if in_pipe > 0 {
        st.to_socket.set(true);
        return opcode::Splice::new(types::Fd(r.as_raw_fd()), -1, types::Fd(fd), -1, in_pipe)
            .build();
    }
    st.to_socket.set(false);
    let left = len - st.taken.get();
    if left == 0 {
        return opcode::Nop::new().build();
    }
    let at = offset + st.taken.get();
    opcode::Splice::new(
        types::Fd(file),
        at as i64,
        types::Fd(w.as_raw_fd()),
        -1,
        left.min(st.chunk as u64) as u32,
    )
    .flags(libc::SPLICE_F_MOVE)
    .build()
}

/// A step moved `n` bytes: `progress` counts those that reached the socket.
/// Done when `len` bytes are out, the file ended (a step from the file
/// moved nothing), the socket took nothing, or a cancel was asked for.
pub(super) fn send_file_done(
    len: u64,
    extra: Option<&Extra>,
    progress: &mut usize,
    n: usize,
    cancel_requested: bool,
) -> Step {
    let Some(Scratch::Splice(st)) = extra.map(|e| &e.scratch) else {
        return Step::Done(n);
    };
    if let Err(errno) = st.pipe {
        return Step::Fail(std::io::Error::from_raw_os_error(errno));
    }
    if st.to_socket.get() {
        *progress += n;
        st.in_pipe.set(st.in_pipe.get() - n as u32);
        if n == 0 || cancel_requested {
            return Step::Done(*progress);
        }
        if st.in_pipe.get() == 0 && st.taken.get() >= len {
            return Step::Done(*progress);
        }
        return Step::Again;
    }
    if n == 0 || cancel_requested {
        return Step::Done(*progress);
    }
    st.taken.set(st.taken.get() + n as u64);
    st.in_pipe.set(st.in_pipe.get() + n as u32);
    Step::Again
}
