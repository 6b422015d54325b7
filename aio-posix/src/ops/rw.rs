//! Read and write at an offset: `LIO_READ` / `LIO_WRITE` aiocbs, several
//! at once through one `lio_listio(LIO_NOWAIT)`.

use ringport_core::op::Op;

/// Fills `cb` for a read or a write.
pub(crate) fn fill(cb: &mut libc::aiocb, op: &mut Op) {
    match op {
        Op::Read { fd, offset, buf } => {
            cb.aio_fildes = *fd;
            cb.aio_offset = offset.to_raw() as libc::off_t;
            cb.aio_buf = buf.as_mut_ptr().cast();
            cb.aio_nbytes = buf.capacity();
            cb.aio_lio_opcode = libc::LIO_READ;
        }
        Op::Write { fd, offset, buf } => {
            cb.aio_fildes = *fd;
            cb.aio_offset = offset.to_raw() as libc::off_t;
            cb.aio_buf = buf.as_ptr() as *mut libc::c_void;
            cb.aio_nbytes = buf.len();
            cb.aio_lio_opcode = libc::LIO_WRITE;
        }
        _ => {}
    }
}

/// Hands `list` to glibc in one `lio_listio(LIO_NOWAIT)`; its return value.
///
/// # Safety
/// Every pointer is an aiocb boxed in the driver's in-flight table, valid
/// until its completion is collected.
pub(crate) unsafe fn submit_list(list: &[*mut libc::aiocb]) -> libc::c_int {
    // SAFETY: the caller's promise.
    unsafe {
        libc::lio_listio(
            libc::LIO_NOWAIT,
            list.as_ptr(),
            list.len() as libc::c_int,
            std::ptr::null_mut(),
        )
    }
}

/// A read glibc finished with `n` bytes.
pub(crate) fn complete_read(op: &mut Op, n: usize) {
    if let Op::Read { buf, .. } = op {
        // SAFETY: glibc's pread wrote n bytes at the buffer's start.
        unsafe { buf.set_init(n) };
    }
}
