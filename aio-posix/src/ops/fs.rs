//! fsync and fdatasync: one `aio_fsync` per request (`lio_listio` has no
//! opcode for them).

use ringport_core::op::Op;
use std::io;

/// Fills `cb` for an fsync.
pub(crate) fn fill(cb: &mut libc::aiocb, op: &mut Op) {
    if let Op::Fsync { fd, .. } = op {
        cb.aio_fildes = *fd;
        cb.aio_lio_opcode = libc::LIO_NOP;
    }
}

/// Hands the fsync in `cb` to glibc.
///
/// # Safety
/// `cb` is boxed in the driver's in-flight table and stays there until its
/// completion is collected.
pub(crate) unsafe fn submit(cb: &mut libc::aiocb, op: &Op) -> io::Result<()> {
    let mode = match op {
        Op::Fsync {
            data_only: true, ..
        } => libc::O_DSYNC,
        _ => libc::O_SYNC,
    };
    // SAFETY: the caller's promise.
    if unsafe { libc::aio_fsync(mode, cb) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
