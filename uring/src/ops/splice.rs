//! `sendfile` as IORING_OP_SPLICE through a pipe: file → pipe, then pipe →
//! socket until the pipe is empty, again until `len` bytes are out or the
//! file ends. One op, one completion with the total; the state between the
//! steps lives in the slot's scratch. The pipe is one of the driver's spares
//! ([`Pipes`]), given back empty at the op's end, and the socket is made
//! non-blocking once per fd (a mark in the driver's fd table), so a send_file
//! makes no syscall of its own besides the ring's.
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
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// The pipe's size asked for (the kernel's default is 64 KiB; the
/// unprivileged ceiling, `/proc/sys/fs/pipe-max-size`, is 1 MiB by default).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// One pipe: read end, write end, and its size.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: u32,
}

impl Pipe {
    /// A new pipe, as large as the kernel lets it be (up to [`PIPE_SIZE`]),
    /// or the errno of making it.
    fn new() -> Result<Pipe, i32> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two fds pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE));
        }
        // SAFETY: two fresh fds that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on our own pipe; on failure the default size stays.
        let mut n = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        if n <= 0 {
            // SAFETY: as above.
            n = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        let size = if n > 0 { n as u32 } else { 1 << 16 };
        Ok(Pipe { r, w, size })
    }
}

/// A driver's spare pipes: a send_file takes one (or makes one) at its
/// start and gives it back at its end if it is empty, so a server sending
/// files makes no pipe, and closes none, per request. Shared (`Rc`) between
/// the driver and its send_files' states, which all live inside the driver.
pub(crate) struct Pipes {
    free: RefCell<Vec<Pipe>>,
    /// How many it keeps (`UringBuilder::send_file_pipes`); beyond it,
    /// pipes are made and closed per op.
    keep: usize,
}

impl Pipes {
    /// A pool that keeps up to `keep` empty pipes (two fds each).
    pub(crate) fn new(keep: usize) -> Pipes {
        Pipes {
            free: RefCell::new(Vec::new()),
            keep,
        }
    }
}

/// Makes `fd` non-blocking (a failure leaves it blocking: deadlines then
/// end a send_file only between its steps).
pub(crate) fn make_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on the op's fd, which the driver admitted.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// The state of one `sendfile` between its steps.
pub(crate) struct SpliceState {
    /// The pipe, or the errno of making it.
    pipe: Result<Pipe, i32>,
    /// Where the pipe goes back to at the end.
    home: Rc<Pipes>,
    /// Bytes in the pipe, not yet sent.
    in_pipe: Cell<u32>,
    /// Bytes taken from the file so far.
    taken: Cell<u64>,
    /// Whether the step in flight is pipe → socket.
    to_socket: Cell<bool>,
}

impl SpliceState {
    /// The state of a new op, with a pipe from `home` (or a new one).
    pub(crate) fn new(home: &Rc<Pipes>) -> SpliceState {
        let spare = home.free.borrow_mut().pop();
        SpliceState {
            pipe: spare.map_or_else(Pipe::new, Ok),
            home: home.clone(),
            in_pipe: Cell::new(0),
            taken: Cell::new(0),
            to_socket: Cell::new(false),
        }
    }
}

impl Drop for SpliceState {
    /// The op is over (its last step's CQE is in): an empty pipe goes back
    /// to the driver's spares; one still holding bytes (the op ended early)
    /// is closed, so no later op sends them.
    fn drop(&mut self) {
        if self.in_pipe.get() != 0 {
            return;
        }
        if let Ok(p) = std::mem::replace(&mut self.pipe, Err(0)) {
            // The count is exact (every step's result is applied before the
            // op ends); test builds check it against the kernel's.
            #[cfg(debug_assertions)]
            {
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD on our own pipe writes one int we own.
                let r = unsafe { libc::ioctl(p.r.as_raw_fd(), libc::FIONREAD, &mut queued) };
                debug_assert!(
                    r < 0 || queued == 0,
                    "a pipe with {queued} bytes left was counted empty"
                );
            }
            let mut free = self.home.free.borrow_mut();
            if free.len() < self.home.keep {
                free.push(p);
            }
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
        // The driver sets the state up before the first step (`start`);
        // without it the op still works, with a pipe of its own.
        make_nonblocking(fd);
        *s = Scratch::Splice(Box::new(SpliceState::new(&Rc::new(Pipes::new(0)))));
    }
    let Scratch::Splice(st) = s else {
        unreachable!()
    };
    let Ok(Pipe { r, w, size }) = &st.pipe else {
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
        left.min(*size as u64) as u32,
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
    // Counted first, also when the op is to end now: bytes left in the pipe
    // keep it from going back to the spares (its Drop closes it).
    st.taken.set(st.taken.get() + n as u64);
    st.in_pipe.set(st.in_pipe.get() + n as u32);
    if n == 0 || cancel_requested {
        return Step::Done(*progress);
    }
    Step::Again
}
