//! Buffer pools: reads whose buffer is chosen when data arrives.
//!
//! A [`BufPool`] holds `count` buffers of `size` bytes in one allocation. A
//! pooled read ([`Op::RecvPooled`](crate::op::Op::RecvPooled),
//! [`Op::ReadPooled`](crate::op::Op::ReadPooled)) names a pool instead of
//! carrying a buffer: the backend picks a free buffer only when there are
//! bytes to put in it (io_uring: a provided-buffer ring the kernel picks from;
//! the shim: at readiness; aio: its shim), so a connection that waits for
//! data holds no buffer at all. The data comes back as a [`PooledBuf`], which
//! returns its buffer to the pool when dropped, from any thread.
//!
//! **Exhaustion** is the same on every backend: a pooled read that finds no
//! free buffer when its data arrives fails with `ENOBUFS`
//! ([`is_pool_exhausted`] tells); it does not wait. Size the pool for the
//! reads that hold a buffer at once, not for the connections.
//!
//! **Ownership.** Each buffer index is owned by exactly one of: the free
//! list, the kernel (a provided-buffer ring it may pick from and write into),
//! or one `PooledBuf`. Only the owner touches that buffer's bytes; the memory
//! itself lives as long as any `BufPool`, `PooledBuf` or backend holds the
//! shared state. Nothing here ever forms a reference to the whole allocation.

use crate::buf::IoBuf;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where buffers go back to once a backend has taken the pool over (the
/// io_uring driver gives them to its provided-buffer ring).
pub trait BufSink: Send + Sync {
    /// Buffer `index` (of `len` bytes at `addr`) is free again.
    fn give_back(&self, index: u16, addr: *mut u8, len: usize);
}

struct Free {
    /// Free buffer indices (used while no sink has taken the pool over).
    list: Vec<u16>,
    /// The backend that owns the free buffers now, if one took them.
    sink: Option<Arc<dyn BufSink>>,
}

/// The memory and free list a pool's handles share.
pub struct PoolShared {
    id: u64,
    size: usize,
    count: u16,
    base: *mut u8,
    free: Mutex<Free>,
}

// SAFETY: the memory is reached only through raw pointers, one buffer per
// owner (see the module doc); the free list is behind a mutex.
unsafe impl Send for PoolShared {}
// SAFETY: as above.
unsafe impl Sync for PoolShared {}

impl Drop for PoolShared {
    fn drop(&mut self) {
        let total = self.size * self.count as usize;
        // SAFETY: made from a Vec of exactly `total` bytes in `BufPool::new`;
        // this is the last handle, so no buffer is in use.
        drop(unsafe { Vec::from_raw_parts(self.base, total, total) });
    }
}

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// A pool of equal buffers for pooled reads (see the module doc). Cloning
/// it makes another handle to the same pool.
#[derive(Clone)]
pub struct BufPool(Arc<PoolShared>);

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("count", &self.0.count)
            .field("size", &self.0.size)
            .finish()
    }
}

impl BufPool {
    /// `count` buffers (1 to 32,768) of `size` bytes each (at least 1).
    pub fn new(count: usize, size: usize) -> io::Result<BufPool> {
        if count == 0 || count > 32_768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer pool needs 1 to 32768 buffers of 1 byte to 4 GiB; asked for {count} of {size} bytes"
                ),
            ));
        }
        let total = count.checked_mul(size).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "buffer pool size overflows")
        })?;
        let mut mem = std::mem::ManuallyDrop::new(vec![0u8; total]);
        let base = mem.as_mut_ptr();
        Ok(BufPool(Arc::new(PoolShared {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            size,
            count: count as u16,
            base,
            free: Mutex::new(Free {
                list: (0..count as u16).rev().collect(),
                sink: None,
            }),
        })))
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.0.size
    }

    /// How many buffers the pool has.
    pub fn count(&self) -> usize {
        self.0.count as usize
    }

    /// A number that tells pools apart (for a backend's registry).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The start of buffer `index`.
    pub fn addr(&self, index: u16) -> *mut u8 {
        self.0.addr(index)
    }

    /// Takes a free buffer, if there is one (a backend choosing at readiness).
    pub fn try_take(&self) -> Option<u16> {
        let mut f = self.0.lock();
        if f.sink.is_some() {
            return None;
        }
        f.list.pop()
    }

    /// Puts a buffer taken with [`BufPool::try_take`] back unused.
    pub fn put_back(&self, index: u16) {
        self.0.give_back(index);
    }

    /// Wraps buffer `index`, whose first `len` bytes a read filled, as the
    /// caller's [`PooledBuf`].
    ///
    /// # Safety
    /// The caller owns `index` (took it from this pool and has not given it
    /// back), the read that filled it is over, and `len <= buf_size()`.
    pub unsafe fn filled(&self, index: u16, len: usize) -> PooledBuf {
        debug_assert!(len <= self.0.size && index < self.0.count);
        PooledBuf {
            pool: self.0.clone(),
            index,
            len,
        }
    }

    /// Hands the free buffers to `sink` (a backend that keeps them, such as
    /// an io_uring provided-buffer ring): returns their indices, which the
    /// sink now owns, and from now on returned buffers go to the sink. Fails
    /// if another backend took the pool already: a pool serves one driver.
    pub fn attach(&self, sink: Arc<dyn BufSink>) -> io::Result<Vec<u16>> {
        let mut f = self.0.lock();
        if f.sink.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this buffer pool already serves another driver (a pool serves one driver)",
            ));
        }
        f.sink = Some(sink);
        Ok(std::mem::take(&mut f.list))
    }

    /// Takes the pool back from its sink (the backend is going away); the
    /// buffers the sink held are free again: `held` lists them (it runs with
    /// the pool locked, so no buffer comes back meanwhile).
    pub fn detach(&self, held: impl FnOnce() -> Vec<u16>) {
        let mut f = self.0.lock();
        f.sink = None;
        let h = held();
        f.list.extend(h);
    }
}

impl PoolShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn addr(&self, index: u16) -> *mut u8 {
        assert!(index < self.count, "buffer index {index} out of range");
        // SAFETY: index < count, so the offset stays inside the allocation.
        unsafe { self.base.add(index as usize * self.size) }
    }

    fn give_back(&self, index: u16) {
        let mut f = self.lock();
        // The sink is called with the pool's lock held (lock order: pool,
        // then sink), so a detach never misses a buffer on its way back.
        match &f.sink {
            Some(sink) => sink.give_back(index, self.addr(index), self.size),
            None => f.list.push(index),
        }
    }
}

/// Bytes a pooled read put in one of its pool's buffers. Dropping it
/// returns the buffer to the pool (from any thread).
pub struct PooledBuf {
    pool: Arc<PoolShared>,
    index: u16,
    len: usize,
}

impl PooledBuf {
    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this handle owns buffer `index`; its first `len` bytes were
        // written by the read that made it, and nothing writes them now.
        unsafe { std::slice::from_raw_parts(self.pool.addr(self.index), self.len) }
    }

    /// How many bytes were read (0 at end of stream).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read (end of stream).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's index in its pool.
    pub fn index(&self) -> u16 {
        self.index
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

// SAFETY: the bytes live in the pool's allocation, which does not move and
// outlives this handle (it holds the pool); `len` bytes are initialised.
unsafe impl IoBuf for PooledBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.pool.addr(self.index)
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
}

/// Whether `e` is a pooled read that found no free buffer (`ENOBUFS`).
pub fn is_pool_exhausted(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS)
}

/// The error a pooled read gets when its pool has no free buffer.
pub fn pool_exhausted() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOBUFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bufpool_hands_out_each_buffer_once_and_takes_it_back_on_drop() {
        let p = BufPool::new(2, 8).unwrap();
        let a = p.try_take().unwrap();
        let b = p.try_take().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.try_take(), None, "two buffers only");
        // SAFETY: the test writes buffer `a`, which it owns.
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p.addr(a), 5) };
        // SAFETY: `a` is ours and filled with 5 bytes.
        let got = unsafe { p.filled(a, 5) };
        assert_eq!(&*got, b"hello");
        drop(got);
        assert_eq!(p.try_take(), Some(a), "the dropped buffer is free again");
        p.put_back(b);
        p.put_back(a);
    }

    #[test]
    fn bufpool_outlives_its_handles_buffers() {
        let p = BufPool::new(1, 4).unwrap();
        let i = p.try_take().unwrap();
        // SAFETY: `i` is ours; no bytes are claimed.
        let got = unsafe { p.filled(i, 0) };
        drop(p);
        assert!(got.is_empty());
        drop(got); // frees the memory: Miri checks nothing leaks or dangles
    }

    #[test]
    fn bufpool_refuses_bad_sizes() {
        assert!(BufPool::new(0, 8).is_err());
        assert!(BufPool::new(8, 0).is_err());
        assert!(BufPool::new(40_000, 8).is_err());
    }
}
