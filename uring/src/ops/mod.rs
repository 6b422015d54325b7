//! How io_uring performs each [`Op`]: the SQE it becomes, and what its CQE
//! result means. `prepare` and `complete` dispatch by op to the group files
//! (`rw`, `net`, `fs`, `ctl`, `splice`), which hold everything specific to one op; this
//! file holds what they share: the scratch memory an SQE points at, the
//! stream-write rule, the probe list.

mod ctl;
mod fs;
mod net;
mod rw;
pub(crate) mod splice;

pub(crate) use net::multishot_cqe;

use io_uring::{opcode, squeue, types};
use ringport_core::op::{Op, OpKind};
use std::io;

/// Memory the kernel reads or writes after submission that the `Op` does not
/// hold itself. It lives in the slot's boxed [`Extra`], so it never moves while
/// the op is in flight.
#[derive(Default)]
pub(crate) enum Scratch {
    #[default]
    None,
    Iovecs(Vec<libc::iovec>),
    Msg(libc::msghdr, libc::iovec),
    Statx(libc::statx),
    Time(types::Timespec),
    OpenHow(types::OpenHow),
    Splice(Box<splice::SpliceState>),
}

/// What only some ops need, boxed so the common slot stays small.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) scratch: Scratch,
    /// The per-op deadline (an absolute CLOCK_MONOTONIC time) for a linked timeout.
    pub(crate) deadline: Option<types::Timespec>,
    /// A zero-copy send's count, kept until its notification comes.
    pub(crate) zc_sent: Option<i32>,
}

// SAFETY: the raw pointers inside point into the op's own heap memory (its
// buffers and boxes) or into this box, which travel with the op. A
// send_file's state holds an `Rc` of its driver's spare pipes: an `Extra`
// lives only in its driver's slots (never in a completion), so every clone
// of that `Rc` moves with the driver.
unsafe impl Send for Extra {}

pub(super) fn scratch(extra: &mut Option<Box<Extra>>) -> &mut Scratch {
    &mut extra.get_or_insert_with(Box::default).scratch
}

/// What a successful result means for the op.
pub(crate) enum Step {
    /// It is done, with this result.
    Done(usize),
    /// A stream write with bytes left, or the next step of a multi-step op:
    /// issue it again (from `progress`).
    Again,
    /// The op failed in a step of its own (not in the kernel's result).
    Fail(io::Error),
}

/// What the driver registered with the ring for one op, before its SQE is
/// made: each field matters only to the ops that name it.
#[derive(Copy, Clone, Default)]
pub(crate) struct Registered {
    /// The provided-buffer group of a pooled read.
    pub(crate) bgid: u16,
    /// The buffer-table entry of a fixed read or write (`None`: plain).
    pub(crate) buf_entry: Option<u16>,
    /// The file-table slot of a positional read or write's fd (`None`:
    /// the fd itself).
    pub(crate) file_slot: Option<u32>,
}

/// The SQE for `op`, with `progress` bytes of a stream write already done,
/// using what the driver registered for it (`reg`).
///
/// Unknown-to-uring ops never get here: `submit` refuses them first.
#[inline]
pub(crate) fn prepare(
    op: &mut Op,
    extra: &mut Option<Box<Extra>>,
    progress: usize,
    reg: Registered,
) -> squeue::Entry {
    let (bgid, file) = (reg.bgid, reg.file_slot);
    match op {
        Op::Nop => ctl::nop(),
        Op::Read { fd, offset, buf } => rw::read(*fd, file, *offset, buf),
        Op::Write { fd, offset, buf } => rw::write(*fd, file, *offset, buf, progress),
        Op::Readv { fd, offset, bufs } => rw::readv(*fd, *offset, bufs, extra),
        Op::Writev { fd, offset, bufs } => rw::writev(*fd, *offset, bufs, extra),
        Op::Recv { fd, buf, flags } => net::recv(*fd, buf, *flags),
        Op::RecvPooled {
            fd, pool, flags, ..
        } => net::recv_pooled(*fd, pool, *flags, bgid),
        Op::ReadPooled {
            fd, offset, pool, ..
        } => rw::read_pooled(*fd, *offset, pool, bgid),
        Op::Send { fd, buf, flags } => net::send(*fd, buf, *flags, progress),
        Op::SendZc { fd, buf, flags } => net::send_zc(*fd, buf, *flags, progress),
        Op::RecvFrom { fd, buf, addr } => net::recvfrom(*fd, buf, addr, extra),
        Op::SendTo { fd, buf, addr } => net::sendto(*fd, buf, addr, extra),
        Op::Accept { fd, addr } => net::accept(*fd, addr),
        Op::AcceptMulti { fd } => net::accept_multi(*fd),
        Op::RecvMulti { fd, .. } => net::recv_multi(*fd, bgid),
        Op::Connect { fd, addr } => net::connect(*fd, addr),
        Op::Shutdown { fd, how } => net::shutdown(*fd, *how),
        Op::Close { fd } => ctl::close(*fd),
        Op::Fsync { fd, data_only } => fs::fsync(*fd, *data_only),
        Op::OpenAt {
            dir,
            path,
            flags,
            mode,
        } => fs::openat(*dir, path, *flags, *mode),
        Op::Stat { fd, .. } => fs::stat(*fd, extra),
        Op::Timeout { deadline } => ctl::timeout(*deadline, extra),
        Op::Cancel { target } => ctl::cancel(*target),
        Op::Poll { fd, events } => ctl::poll(*fd, *events),
        Op::OpenAt2 {
            dir,
            path,
            flags,
            mode,
            resolve,
        } => fs::openat2(*dir, path, *flags, *mode, *resolve, extra),
        Op::StatAt {
            dir, path, follow, ..
        } => fs::stat_at(*dir, path, *follow, extra),
        Op::RenameAt {
            from_dir,
            from,
            to_dir,
            to,
            flags,
        } => fs::rename_at(*from_dir, from, *to_dir, to, *flags),
        Op::UnlinkAt { dir, path, flags } => fs::unlink_at(*dir, path, *flags),
        Op::MkdirAt { dir, path, mode } => fs::mkdir_at(*dir, path, *mode),
        Op::SymlinkAt { target, dir, path } => fs::symlink_at(target, *dir, path),
        Op::LinkAt {
            from_dir,
            from,
            to_dir,
            to,
            flags,
        } => fs::link_at(*from_dir, from, *to_dir, to, *flags),
        Op::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => fs::fallocate(*fd, *mode, *offset, *len),
        Op::Ftruncate { fd, len } => fs::ftruncate(*fd, *len),
        Op::SendFile {
            fd,
            file,
            offset,
            len,
        } => splice::send_file(*fd, *file, *offset, *len, extra),
        Op::ReadFixed { fd, offset, buf } => rw::read_fixed(*fd, file, *offset, buf, reg.buf_entry),
        Op::WriteFixed { fd, offset, buf } => {
            rw::write_fixed(*fd, file, *offset, buf, progress, reg.buf_entry)
        }
    }
}

/// Applies a successful result of `n` to the op's outputs (a read's
/// initialised length, a peer address's length, metadata), or says that a
/// stream write goes again; `progress` counts a stream write's bytes out.
#[inline]
pub(crate) fn complete(
    op: &mut Op,
    extra: Option<&Extra>,
    progress: &mut usize,
    n: usize,
    cancel_requested: bool,
    cqe_flags: u32,
) -> Step {
    match op {
        Op::RecvPooled { pool, got, .. } | Op::ReadPooled { pool, got, .. } => {
            return rw::pooled_done(pool, got, n, cqe_flags);
        }
        Op::Read { buf, .. } => rw::read_done(buf, n),
        Op::ReadFixed { buf, .. } => buf.filled(n),
        Op::WriteFixed { offset, buf, .. } => {
            return rw::write_fixed_done(*offset, buf, progress, n, cancel_requested)
        }
        Op::Recv { buf, .. } => net::recv_done(buf, n),
        Op::RecvFrom { buf, addr, .. } => net::recvfrom_done(buf, addr, extra, n),
        Op::Readv { bufs, .. } => rw::readv_done(bufs, n),
        Op::Stat { stat, .. } | Op::StatAt { stat, .. } => fs::stat_done(stat, extra),
        Op::SendFile { len, .. } => {
            return splice::send_file_done(*len, extra, progress, n, cancel_requested)
        }
        Op::Write { offset, buf, .. } => {
            return rw::write_done(*offset, buf, progress, n, cancel_requested)
        }
        Op::Send { buf, .. } | Op::SendZc { buf, .. } => {
            return net::send_done(buf, progress, n, cancel_requested)
        }
        _ => {}
    }
    Step::Done(n)
}

/// The stream-write rule (a write at the current position, a send): it
/// completes only when all `total` bytes are out — or when it made no
/// progress, or was cancelled meanwhile: then with the bytes that went out.
#[inline]
fn stream_write_step(total: usize, progress: &mut usize, n: usize, cancel_requested: bool) -> Step {
    *progress += n;
    if n > 0 && *progress < total && !cancel_requested {
        Step::Again
    } else {
        Step::Done(*progress)
    }
}

/// The opcode each op kind needs, for the start-up probe.
pub(crate) fn opcode_of(kind: OpKind) -> u8 {
    match kind {
        OpKind::Nop => opcode::Nop::CODE,
        OpKind::Read => opcode::Read::CODE,
        OpKind::Write => opcode::Write::CODE,
        OpKind::Readv => opcode::Readv::CODE,
        OpKind::Writev => opcode::Writev::CODE,
        OpKind::Recv => opcode::Recv::CODE,
        OpKind::RecvPooled => opcode::Recv::CODE,
        OpKind::ReadPooled => opcode::Read::CODE,
        OpKind::Send => opcode::Send::CODE,
        OpKind::SendZc => opcode::SendZc::CODE,
        OpKind::RecvFrom => opcode::RecvMsg::CODE,
        OpKind::SendTo => opcode::SendMsg::CODE,
        OpKind::Accept => opcode::Accept::CODE,
        OpKind::AcceptMulti => opcode::AcceptMulti::CODE,
        OpKind::RecvMulti => opcode::RecvMulti::CODE,
        OpKind::Connect => opcode::Connect::CODE,
        OpKind::Shutdown => opcode::Shutdown::CODE,
        OpKind::Close => opcode::Close::CODE,
        OpKind::Fsync => opcode::Fsync::CODE,
        OpKind::OpenAt => opcode::OpenAt::CODE,
        OpKind::Stat => opcode::Statx::CODE,
        OpKind::Timeout => opcode::Timeout::CODE,
        OpKind::Cancel => opcode::AsyncCancel::CODE,
        OpKind::Poll => opcode::PollAdd::CODE,
        OpKind::OpenAt2 => opcode::OpenAt2::CODE,
        OpKind::StatAt => opcode::Statx::CODE,
        OpKind::RenameAt => opcode::RenameAt::CODE,
        OpKind::UnlinkAt => opcode::UnlinkAt::CODE,
        OpKind::MkdirAt => opcode::MkDirAt::CODE,
        OpKind::SymlinkAt => opcode::SymlinkAt::CODE,
        OpKind::LinkAt => opcode::LinkAt::CODE,
        OpKind::Fallocate => opcode::Fallocate::CODE,
        OpKind::Ftruncate => opcode::Ftruncate::CODE,
        OpKind::SendFile => opcode::Splice::CODE,
        // A plain read or write is the fallback when READ_FIXED or
        // WRITE_FIXED is missing (probed on its own: `fixed.rs`).
        OpKind::ReadFixed => opcode::Read::CODE,
        OpKind::WriteFixed => opcode::Write::CODE,
    }
}

/// io_uring lengths are 32-bit; a larger buffer is used up to 4 GiB - 1.
fn clamp(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// The error of a result code, as `io::Error`.
pub(crate) fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}
