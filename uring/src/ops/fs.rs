//! File-system ops: `openat` (always `O_CLOEXEC`), `stat` (as `statx` on the
//! fd), `fsync` / `fdatasync`.

use super::{scratch, Extra, Scratch};
use io_uring::{opcode, squeue, types};
use ringport_core::op::FileStat;
use std::ffi::CString;
use std::os::fd::RawFd;

pub(super) fn openat(dir: RawFd, path: &CString, flags: i32, mode: u32) -> squeue::Entry {
    opcode::OpenAt::new(types::Fd(dir), path.as_ptr())
        .flags(flags | libc::O_CLOEXEC)
        .mode(mode)
        .build()
}

pub(super) fn stat(fd: RawFd, extra: &mut Option<Box<Extra>>) -> squeue::Entry {
    let s = scratch(extra);
    // SAFETY: statx is plain data; zero is a valid start.
    *s = Scratch::Statx(unsafe { std::mem::zeroed() });
    let Scratch::Statx(st) = s else {
        unreachable!()
    };
    opcode::Statx::new(types::Fd(fd), c"".as_ptr(), (st as *mut libc::statx).cast())
        .flags(libc::AT_EMPTY_PATH)
        .mask(libc::STATX_BASIC_STATS)
        .build()
}

pub(super) fn fsync(fd: RawFd, data_only: bool) -> squeue::Entry {
    let flags = if data_only {
        types::FsyncFlags::DATASYNC
    } else {
        types::FsyncFlags::empty()
    };
    opcode::Fsync::new(types::Fd(fd)).flags(flags).build()
}

/// A finished `statx`: its fields into the op's [`FileStat`].
pub(super) fn stat_done(stat: &mut FileStat, extra: Option<&Extra>) {
    if let Some(Scratch::Statx(st)) = extra.map(|e| &e.scratch) {
        *stat = FileStat {
            size: st.stx_size,
            mode: st.stx_mode as u32,
            nlink: st.stx_nlink as u64,
            uid: st.stx_uid,
            gid: st.stx_gid,
            ino: st.stx_ino,
            blocks: st.stx_blocks,
            mtime_sec: st.stx_mtime.tv_sec,
            mtime_nsec: st.stx_mtime.tv_nsec,
        };
    }
}
