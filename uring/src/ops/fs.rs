//! File-system ops: `openat` and `openat2` (always `O_CLOEXEC`), `stat` (as
//! `statx` on the fd) and `statat` (`statx` by path), `fsync` / `fdatasync`,
//! the path ops (`renameat`, `unlinkat`, `mkdirat`, `symlinkat`, `linkat`),
//! `fallocate` and `ftruncate`: each one SQE, the kernel's own opcode.

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

/// `openat2`: `openat` with resolve rules; the `open_how` lives in the
/// slot's scratch until the kernel has read it.
pub(super) fn openat2(
    dir: RawFd,
    path: &CString,
    flags: i32,
    mode: u32,
    resolve: u64,
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let s = scratch(extra);
    *s = Scratch::OpenHow(
        types::OpenHow::new()
            .flags((flags | libc::O_CLOEXEC) as u32 as u64)
            .mode(mode as u64)
            .resolve(resolve),
    );
    let Scratch::OpenHow(how) = s else {
        unreachable!()
    };
    opcode::OpenAt2::new(types::Fd(dir), path.as_ptr(), how as *const types::OpenHow).build()
}

/// `statx` by path: the final symlink followed or described itself.
pub(super) fn stat_at(
    dir: RawFd,
    path: &CString,
    follow: bool,
    extra: &mut Option<Box<Extra>>,
) -> squeue::Entry {
    let s = scratch(extra);
    // SAFETY: statx is plain data; zero is a valid start.
    *s = Scratch::Statx(unsafe { std::mem::zeroed() });
    let Scratch::Statx(st) = s else {
        unreachable!()
    };
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    opcode::Statx::new(
        types::Fd(dir),
        path.as_ptr(),
        (st as *mut libc::statx).cast(),
    )
    .flags(flags)
    .mask(libc::STATX_BASIC_STATS)
    .build()
}

pub(super) fn rename_at(
    from_dir: RawFd,
    from: &CString,
    to_dir: RawFd,
    to: &CString,
    flags: u32,
) -> squeue::Entry {
    opcode::RenameAt::new(
        types::Fd(from_dir),
        from.as_ptr(),
        types::Fd(to_dir),
        to.as_ptr(),
    )
    .flags(flags)
    .build()
}

pub(super) fn unlink_at(dir: RawFd, path: &CString, flags: i32) -> squeue::Entry {
    opcode::UnlinkAt::new(types::Fd(dir), path.as_ptr())
        .flags(flags)
        .build()
}

pub(super) fn mkdir_at(dir: RawFd, path: &CString, mode: u32) -> squeue::Entry {
    opcode::MkDirAt::new(types::Fd(dir), path.as_ptr())
        .mode(mode as libc::mode_t)
        .build()
}

pub(super) fn symlink_at(target: &CString, dir: RawFd, path: &CString) -> squeue::Entry {
    opcode::SymlinkAt::new(types::Fd(dir), target.as_ptr(), path.as_ptr()).build()
}

pub(super) fn link_at(
    from_dir: RawFd,
    from: &CString,
    to_dir: RawFd,
    to: &CString,
    flags: i32,
) -> squeue::Entry {
    opcode::LinkAt::new(
        types::Fd(from_dir),
        from.as_ptr(),
        types::Fd(to_dir),
        to.as_ptr(),
    )
    .flags(flags)
    .build()
}

pub(super) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> squeue::Entry {
    opcode::Fallocate::new(types::Fd(fd), len)
        .offset(offset)
        .mode(mode)
        .build()
}

pub(super) fn ftruncate(fd: RawFd, len: u64) -> squeue::Entry {
    opcode::Ftruncate::new(types::Fd(fd), len).build()
}
