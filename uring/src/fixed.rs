//! Registered buffers: how a [`FixedBufRegistry`] serves fixed reads and
//! writes on io_uring.
//!
//! The ring gets a sparse buffer table the first time a fixed op comes
//! (`IORING_REGISTER_BUFFERS2` with the sparse flag). Each registry the ring
//! sees takes one entry: its whole allocation as one iovec (so a registry of
//! any count costs one entry and one pinning), and its ops name that entry
//! in `READ_FIXED`/`WRITE_FIXED`. All of this happens in `issue`, on the
//! ring's own thread, as `SINGLE_ISSUER` needs.
//!
//! **Fallback, per op.** If the kernel lacks the opcodes, the sparse table,
//! or refuses one registry (`ENOMEM` under `RLIMIT_MEMLOCK`, a full table),
//! the op becomes a plain `READ`/`WRITE` of the same memory, and so do the
//! later ops of that registry (it is not tried again).
//!
//! **Ownership.** The table holds a handle to each registry it registered,
//! so the memory cannot be freed while the kernel's entry points at it. An
//! entry is removed (and its handle dropped) only when the table's handle
//! is the last one: then no `FixedBuf` exists, so no op of this ring (nor
//! any other) is using the memory. The kernel keeps its own reference to an
//! entry's pages while an op that named it runs, so removing an entry, or
//! the whole table at the driver's drop, is safe with ops in flight; the
//! memory itself stays alive through the ops' `FixedBuf`s, which a driver
//! that gives up on its ops leaks.

use io_uring::IoUring;
use ringport_core::fixedbuf::RegistryShared;
use std::sync::Arc;

/// Entries in a ring's buffer table: registries one ring can have registered
/// at once (each further one is served by plain reads and writes).
const TABLE_ENTRIES: u32 = 64;

enum Table {
    /// No fixed op has come yet.
    Untried,
    /// The sparse table exists: entry `i` holds the registry registered there.
    Ready(Vec<Option<Arc<RegistryShared>>>),
    /// The kernel has no usable table (or fixed buffers are turned off).
    Unavailable,
}

/// One ring's registered buffers.
pub(crate) struct FixedTable {
    table: Table,
    /// Registries the kernel refused: served by plain ops, not tried again.
    refused: Vec<Arc<RegistryShared>>,
    read_fixed: bool,
    write_fixed: bool,
}

impl FixedTable {
    /// A table for a ring whose probe said whether `READ_FIXED` and
    /// `WRITE_FIXED` exist; `enabled: false` makes every fixed op plain.
    pub(crate) fn new(enabled: bool, read_fixed: bool, write_fixed: bool) -> FixedTable {
        FixedTable {
            table: if enabled && (read_fixed || write_fixed) {
                Table::Untried
            } else {
                Table::Unavailable
            },
            refused: Vec::new(),
            read_fixed,
            write_fixed,
        }
    }

    /// The table entry a fixed op on `reg`'s memory names, registering the
    /// registry on first use; `None` for a plain read or write instead.
    pub(crate) fn entry_for(
        &mut self,
        ring: &IoUring,
        reg: &Arc<RegistryShared>,
        write: bool,
    ) -> Option<u16> {
        if (write && !self.write_fixed) || (!write && !self.read_fixed) {
            return None;
        }
        if let Table::Untried = self.table {
            self.table = match ring.submitter().register_buffers_sparse(TABLE_ENTRIES) {
                Ok(()) => Table::Ready(vec![None; TABLE_ENTRIES as usize]),
                // An old kernel (before 5.13) or no memory: every fixed op
                // of this ring is plain.
                Err(_) => Table::Unavailable,
            };
        }
        let Table::Ready(slots) = &mut self.table else {
            return None;
        };
        let id = reg.id();
        if let Some(i) = slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|r| r.id() == id))
        {
            return Some(i as u16);
        }
        if self.refused.iter().any(|r| r.id() == id) {
            return None;
        }
        sweep(ring, slots, &mut self.refused);
        let Some(free) = slots.iter().position(Option::is_none) else {
            self.refused.push(reg.clone());
            return None;
        };
        let iov = libc::iovec {
            iov_base: reg.base().cast(),
            iov_len: reg.total_len(),
        };
        // SAFETY: the iovec covers the registry's allocation, which stays
        // alive while this table holds `reg` (removed only in `sweep` and
        // `unregister`, once no other handle exists).
        match unsafe {
            ring.submitter()
                .register_buffers_update(free as u32, &[iov], None)
        } {
            Ok(()) => {
                slots[free] = Some(reg.clone());
                Some(free as u16)
            }
            // `ENOMEM` under `RLIMIT_MEMLOCK`, say: this registry is plain.
            Err(_) => {
                self.refused.push(reg.clone());
                None
            }
        }
    }

    /// How many registries the ring has registered now.
    pub(crate) fn registered(&self) -> usize {
        match &self.table {
            Table::Ready(slots) => slots.iter().filter(|s| s.is_some()).count(),
            _ => 0,
        }
    }

    /// Removes the table (the driver is going away cleanly: no op of its
    /// own is in flight); the registries' handles drop.
    pub(crate) fn unregister(&mut self, ring: &IoUring) {
        if let Table::Ready(_) = self.table {
            let _ = ring.submitter().unregister_buffers();
        }
        self.table = Table::Unavailable;
        self.refused.clear();
    }
}

/// Removes the entries of registries nobody else holds any more (no
/// `FixedBuf` of theirs exists, so no op uses their memory).
fn sweep(
    ring: &IoUring,
    slots: &mut [Option<Arc<RegistryShared>>],
    refused: &mut Vec<Arc<RegistryShared>>,
) {
    for (i, s) in slots.iter_mut().enumerate() {
        if s.as_ref().is_some_and(|r| Arc::strong_count(r) == 1) {
            let empty = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            // SAFETY: an empty iovec clears the entry; the kernel keeps no
            // pointer from it.
            if unsafe {
                ring.submitter()
                    .register_buffers_update(i as u32, &[empty], None)
            }
            .is_ok()
            {
                *s = None;
            }
        }
    }
    refused.retain(|r| Arc::strong_count(r) > 1);
}

/// A ring's registered files (with `UringBuilder::register_files`): a
/// sparse file table, and for each fd the slot its file has there.
///
/// A positional read or write (the hot file ops) registers its fd on first
/// use and from then on names the slot (`IOSQE_FIXED_FILE`), which skips the
/// kernel's fd lookup and reference count per op. The slot is released when
/// the fd's close starts (the lifecycle starts a close only once the fd's
/// ops have ended, so no op still names the slot), before the fd number can
/// be reused. So the fd ownership contract matters more here: an fd closed
/// by hand, not through the driver, leaves its file in the table, and a new
/// file that gets the same number would be read through the old slot.
pub(crate) struct FileTable {
    state: FileState,
    /// The slot of each registered fd, indexed by fd.
    by_fd: Vec<Option<u32>>,
    /// Slots released, to reuse.
    free: Vec<u32>,
    /// The next slot never used.
    next: u32,
    size: u32,
}

#[derive(PartialEq)]
enum FileState {
    Untried,
    Ready,
    Off,
}

impl FileTable {
    /// A table that registers files (`on`) or never does.
    pub(crate) fn new(on: bool) -> FileTable {
        FileTable {
            state: if on {
                FileState::Untried
            } else {
                FileState::Off
            },
            by_fd: Vec::new(),
            free: Vec::new(),
            next: 0,
            size: 0,
        }
    }

    /// The slot of `fd`, registering it on first use; `None`: use the fd.
    pub(crate) fn slot_for(&mut self, ring: &IoUring, fd: i32) -> Option<u32> {
        if self.state == FileState::Off || fd < 0 {
            return None;
        }
        if let Some(Some(s)) = self.by_fd.get(fd as usize) {
            return Some(*s);
        }
        if self.state == FileState::Untried {
            // The kernel caps a file table at the open-file limit.
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one plain struct we own.
            let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
                rl.rlim_cur.min(4096) as u32
            } else {
                256
            };
            match ring.submitter().register_files_sparse(limit) {
                Ok(()) => {
                    self.state = FileState::Ready;
                    self.size = limit;
                }
                // An old kernel (before 5.19): no registered files.
                Err(_) => {
                    self.state = FileState::Off;
                    return None;
                }
            }
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.next < self.size => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        if ring.submitter().register_files_update(slot, &[fd]).is_err() {
            self.free.push(slot);
            return None;
        }
        let i = fd as usize;
        if i >= self.by_fd.len() {
            self.by_fd.resize(i + 1, None);
        }
        self.by_fd[i] = Some(slot);
        Some(slot)
    }

    /// `fd` is about to be closed: its slot (if any) is emptied and free.
    pub(crate) fn release(&mut self, ring: &IoUring, fd: i32) {
        let Some(s) = self
            .by_fd
            .get_mut(fd.max(0) as usize)
            .and_then(Option::take)
        else {
            return;
        };
        // Emptying a slot cannot fail for a slot we filled; if it did, the
        // slot stays out of use (never handed out again).
        if ring.submitter().register_files_update(s, &[-1]).is_ok() {
            self.free.push(s);
        }
    }

    /// How many fds are registered now.
    pub(crate) fn registered(&self) -> usize {
        self.by_fd.iter().filter(|s| s.is_some()).count()
    }

    /// Removes the whole table (the driver is going away): the kernel puts
    /// each file once no op that named its slot is left.
    pub(crate) fn unregister(&mut self, ring: &IoUring) {
        if self.state == FileState::Ready {
            let _ = ring.submitter().unregister_files();
        }
        self.state = FileState::Off;
        self.by_fd.clear();
    }
}
