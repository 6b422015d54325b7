//! Registered ("fixed") buffers: memory a backend may register with the
//! kernel once, so each read or write into it skips the per-op page pinning.
//!
//! A [`FixedBufRegistry`] holds `count` buffers of `size` bytes in one
//! page-aligned allocation. [`FixedBufRegistry::take`] checks a buffer out
//! as a [`FixedBuf`]; a fixed read or write
//! ([`Op::ReadFixed`](crate::op::Op::ReadFixed),
//! [`Op::WriteFixed`](crate::op::Op::WriteFixed)) moves the `FixedBuf` into
//! the op and gives it back with the result. Dropping a `FixedBuf` returns
//! its buffer to the registry, from any thread.
//!
//! **Backends.** io_uring registers the whole allocation as one entry of its
//! ring's buffer table the first time an op of that ring uses the registry
//! (so on the ring's own thread, as `SINGLE_ISSUER` needs) and uses
//! `READ_FIXED`/`WRITE_FIXED`; if the kernel lacks them or refuses the
//! registration (an old kernel, `RLIMIT_MEMLOCK`), that op and the later ones
//! are plain reads and writes of the same memory. Every other backend does
//! plain reads and writes. The result is the same everywhere.
//!
//! **Exhaustion.** `take` with every buffer checked out fails with `ENOBUFS`
//! ([`is_registry_exhausted`]); it does not wait. Size the registry for the
//! ops that hold a buffer at once.
//!
//! **Ownership.** Each buffer index is owned by exactly one of: the free
//! list, or one `FixedBuf` (which an op in flight owns until its
//! completion). Only the owner touches that buffer's bytes. The allocation is
//! freed when the last handle goes: the registry handles, every `FixedBuf`,
//! and each driver that registered it (which lets go only once it has
//! removed the entry from its table and no op of its own holds a buffer), so
//! no kernel write can land in freed memory. A driver that is dropped while
//! the kernel may still write (its grace ran out) leaks its ops, their
//! `FixedBuf`s and so the allocation with them. The bytes are always
//! initialised (zeroed at creation, then only ever written), so a
//! `FixedBuf`'s length may be set freely within its capacity.

use crate::buf::{IoBuf, IoBufMut};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most memory one registry may hold: io_uring's limit for one
/// registered buffer (1 GiB), the same on every backend.
pub const MAX_REGISTRY_BYTES: usize = 1 << 30;

/// The most buffers one registry may hold.
pub const MAX_REGISTRY_BUFS: usize = 1 << 16;

/// The memory and free list the handles of one registry share.
pub struct RegistryShared {
    id: u64,
    size: usize,
    count: usize,
    base: *mut u8,
    layout: Layout,
    free: Mutex<Vec<u32>>,
}

// SAFETY: the memory is reached only through raw pointers, one buffer per
// owner (see the module doc); the free list is behind a mutex.
unsafe impl Send for RegistryShared {}
// SAFETY: as above.
unsafe impl Sync for RegistryShared {}

impl Drop for RegistryShared {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `FixedBufRegistry::new`; this
        // is the last handle (no buffer is checked out, no driver holds it).
        unsafe { dealloc(self.base, self.layout) };
    }
}

impl RegistryShared {
    fn addr(&self, index: u32) -> *mut u8 {
        assert!((index as usize) < self.count, "buffer index out of range");
        // SAFETY: index < count, so the offset stays inside the allocation.
        unsafe { self.base.add(index as usize * self.size) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number that tells registries apart (for a backend's table).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The start of the whole allocation.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The size of the whole allocation (`count × size`).
    pub fn total_len(&self) -> usize {
        self.size * self.count
    }
}

static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

/// A set of equal buffers for fixed reads and writes (see the module doc).
/// Cloning it makes another handle to the same buffers.
#[derive(Clone)]
pub struct FixedBufRegistry(Arc<RegistryShared>);

impl fmt::Debug for FixedBufRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedBufRegistry")
            .field("count", &self.0.count)
            .field("size", &self.0.size)
            .finish()
    }
}

impl FixedBufRegistry {
    /// `count` buffers (1 to 65,536) of `size` bytes each (at least 1), at
    /// most 1 GiB in all ([`MAX_REGISTRY_BYTES`]). Each buffer starts at a
    /// multiple of `size` from a page-aligned base, so with `size` a multiple
    /// of 4096 every buffer is page-aligned (what `O_DIRECT` needs).
    pub fn new(count: usize, size: usize) -> io::Result<FixedBufRegistry> {
        let total = count.saturating_mul(size);
        if count == 0 || count > MAX_REGISTRY_BUFS || size == 0 || total > MAX_REGISTRY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a fixed-buffer registry needs 1 to {MAX_REGISTRY_BUFS} buffers of at least 1 byte, \
                     {MAX_REGISTRY_BYTES} bytes in all; asked for {count} of {size} bytes"
                ),
            ));
        }
        let layout = Layout::from_size_align(total, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: the layout has a non-zero size (count and size are > 0).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("no memory for a fixed-buffer registry of {total} bytes"),
            ));
        }
        Ok(FixedBufRegistry(Arc::new(RegistryShared {
            id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            size,
            count,
            base,
            layout,
            free: Mutex::new((0..count as u32).rev().collect()),
        })))
    }

    /// Checks a free buffer out, empty (length 0). With every buffer
    /// checked out: `ENOBUFS` ([`is_registry_exhausted`]), at once.
    pub fn take(&self) -> io::Result<FixedBuf> {
        let index = self.0.lock().pop().ok_or_else(registry_exhausted)?;
        Ok(FixedBuf {
            reg: self.0.clone(),
            index,
            len: 0,
        })
    }

    /// How many buffers are free (not checked out) now.
    pub fn available(&self) -> usize {
        self.0.lock().len()
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.0.size
    }

    /// How many buffers the registry has.
    pub fn count(&self) -> usize {
        self.0.count
    }

    /// A number that tells registries apart.
    pub fn id(&self) -> u64 {
        self.0.id
    }
}

/// One buffer of a [`FixedBufRegistry`], checked out. It has a length (the
/// bytes a write sends, or a read filled) within its capacity (the
/// registry's buffer size). Dropping it returns the buffer to the registry.
pub struct FixedBuf {
    reg: Arc<RegistryShared>,
    index: u32,
    len: usize,
}

impl FixedBuf {
    /// The buffer's bytes up to its length.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this handle owns buffer `index`; all its bytes are
        // initialised (module doc) and nothing else touches them now.
        unsafe { std::slice::from_raw_parts(self.reg.addr(self.index), self.len) }
    }

    /// The buffer's bytes up to its length, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.reg.addr(self.index), self.len) }
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many bytes it can hold (the registry's buffer size).
    pub fn capacity(&self) -> usize {
        self.reg.size
    }

    /// Sets the length to `len`. The bytes are whatever the buffer held (it
    /// starts zeroed; a buffer back from the registry keeps its last bytes).
    ///
    /// # Panics
    /// If `len` is more than [`FixedBuf::capacity`].
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "FixedBuf::set_len({len}) beyond its capacity of {}",
            self.capacity()
        );
        self.len = len;
    }

    /// Replaces the contents with as much of `src` as fits; returns how
    /// many bytes that was.
    pub fn copy_from(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.capacity());
        self.len = n;
        self.as_mut_slice().copy_from_slice(&src[..n]);
        n
    }

    /// The buffer's index in its registry.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The registry's shared state (for a backend: its id, base and size).
    pub fn registry(&self) -> &Arc<RegistryShared> {
        &self.reg
    }

    /// The start of this buffer's memory.
    pub fn as_ptr(&self) -> *const u8 {
        self.reg.addr(self.index)
    }

    /// The start of this buffer's memory, writable (a read's destination).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.reg.addr(self.index)
    }

    /// Records that a read wrote `n` bytes from the start: the length
    /// becomes `n` (clamped to the capacity).
    pub fn filled(&mut self, n: usize) {
        self.len = n.min(self.capacity());
    }
}

impl std::ops::Deref for FixedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for FixedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for FixedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for FixedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        self.reg.lock().push(self.index);
    }
}

// SAFETY: the bytes live in the registry's allocation, which does not move
// and outlives this handle (it holds the registry); all are initialised.
unsafe impl IoBuf for FixedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: the same memory, writable for `capacity` bytes by its one owner.
unsafe impl IoBufMut for FixedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, n: usize) {
        self.filled(n)
    }
}

/// Whether `e` is a `take` from a registry with every buffer checked out
/// (`ENOBUFS`).
pub fn is_registry_exhausted(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS)
}

fn registry_exhausted() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOBUFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hands_out_each_buffer_once_and_takes_it_back_on_drop() {
        let r = FixedBufRegistry::new(2, 8).unwrap();
        let mut a = r.take().unwrap();
        let b = r.take().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(is_registry_exhausted(&r.take().unwrap_err()));
        assert_eq!(a.copy_from(b"hello world"), 8, "capacity bounds the copy");
        assert_eq!(&*a, b"hello wo");
        let i = a.index();
        drop(a);
        assert_eq!(r.available(), 1);
        let again = r.take().unwrap();
        assert_eq!(again.index(), i, "the dropped buffer is free again");
        assert!(again.is_empty(), "a checked-out buffer starts empty");
        drop(b);
    }

    #[test]
    fn registry_memory_outlives_the_registry_handle() {
        let r = FixedBufRegistry::new(1, 4096).unwrap();
        let mut b = r.take().unwrap();
        assert_eq!(b.as_ptr() as usize % 4096, 0, "page-aligned");
        drop(r);
        b.copy_from(b"still here");
        assert_eq!(&*b, b"still here");
    }

    #[test]
    fn registry_refuses_bad_sizes() {
        assert!(FixedBufRegistry::new(0, 8).is_err());
        assert!(FixedBufRegistry::new(8, 0).is_err());
        assert!(FixedBufRegistry::new(MAX_REGISTRY_BUFS + 1, 1).is_err());
        assert!(FixedBufRegistry::new(2, MAX_REGISTRY_BYTES).is_err());
        assert!(FixedBufRegistry::new(usize::MAX, 2).is_err());
    }
}
