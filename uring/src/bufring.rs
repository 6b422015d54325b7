//! Provided-buffer rings: how a [`BufPool`] serves pooled reads on io_uring.
//!
//! The first pooled read on a pool registers a ring of `io_uring_buf`
//! entries with the kernel under a buffer group id, filled with every free
//! buffer of the pool; the pool's free buffers then belong to the ring
//! (`BufPool::attach`). The kernel picks one only when a read has data and
//! says which in the CQE's flags. A `PooledBuf` dropped anywhere puts its
//! buffer back at the ring's tail (under a lock, then a release store of the
//! tail the kernel reads). At the driver's drop the rings are unregistered and
//! the buffers they still hold go back to the pool's free list.

use io_uring::IoUring;
use ringport_core::bufpool::{BufPool, BufSink};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// The kernel's `struct io_uring_buf`.
#[repr(C)]
struct Entry {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0 this is the ring's tail.
    resv: u16,
}

struct Producer {
    /// Our copy of the tail (the next entry to fill).
    tail: u16,
    /// Which buffers the ring holds (free for the kernel to pick).
    held: Vec<bool>,
}

/// One registered ring.
pub(crate) struct ProvidedRing {
    entries: *mut Entry,
    layout: Layout,
    mask: u16,
    bgid: u16,
    producer: Mutex<Producer>,
}

// SAFETY: the entries are written only under `producer`'s lock and read by
// the kernel; the tail is published with an atomic release store.
unsafe impl Send for ProvidedRing {}
// SAFETY: as above.
unsafe impl Sync for ProvidedRing {}

impl ProvidedRing {
    fn tail(&self) -> &AtomicU16 {
        // SAFETY: the tail overlays entry 0's `resv` (offset 14, 2-byte
        // aligned), inside the allocation, which lives as long as `self`.
        unsafe { &*((self.entries as *mut u8).add(14) as *const AtomicU16) }
    }

    /// Appends buffer `bid` for the kernel to pick (the lock is held).
    fn push(&self, p: &mut Producer, bid: u16, addr: *mut u8, len: usize) {
        let i = (p.tail & self.mask) as usize;
        // SAFETY: i <= mask < the number of entries; only the fields the
        // kernel reads for this entry are written (never entry 0's tail).
        unsafe {
            let e = self.entries.add(i);
            std::ptr::addr_of_mut!((*e).addr).write(addr as u64);
            std::ptr::addr_of_mut!((*e).len).write(len.min(u32::MAX as usize) as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        p.tail = p.tail.wrapping_add(1);
        p.held[bid as usize] = true;
        self.tail().store(p.tail, Ordering::Release);
    }

    /// The kernel handed buffer `bid` to a read: the ring no longer holds it.
    pub(crate) fn taken(&self, bid: u16) {
        let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = p.held.get_mut(bid as usize) {
            *h = false;
        }
    }

    /// The buffer group id reads name.
    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }
}

impl BufSink for ProvidedRing {
    fn give_back(&self, index: u16, addr: *mut u8, len: usize) {
        let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        self.push(&mut p, index, addr, len);
    }
}

impl Drop for ProvidedRing {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `register`; the ring is
        // unregistered (or leaked instead of dropped) before this runs.
        unsafe { dealloc(self.entries as *mut u8, self.layout) };
    }
}

/// A pool registered with one ring.
pub(crate) struct Registered {
    pub(crate) pool: BufPool,
    pub(crate) ring: Arc<ProvidedRing>,
}

/// Registers `pool` with `ring` under `bgid`: a ring of entries holding
/// every free buffer of the pool.
pub(crate) fn register(ring: &IoUring, pool: &BufPool, bgid: u16) -> io::Result<Registered> {
    let n = pool.count().next_power_of_two().max(1);
    let layout = Layout::from_size_align(n * std::mem::size_of::<Entry>(), 4096)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: the layout has a non-zero size.
    let entries = unsafe { alloc_zeroed(layout) } as *mut Entry;
    if entries.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "no memory for a provided-buffer ring",
        ));
    }
    let pr = Arc::new(ProvidedRing {
        entries,
        layout,
        mask: (n - 1) as u16,
        bgid,
        producer: Mutex::new(Producer {
            tail: 0,
            held: vec![false; pool.count()],
        }),
    });
    // SAFETY: the entries stay allocated until the ring is unregistered (the
    // driver keeps `pr` until then, or leaks it); n is a power of two.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(entries as u64, n as u16, bgid, 0)
    }
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring: registering a buffer pool: {e}"),
        )
    })?;
    let free = match pool.attach(pr.clone()) {
        Ok(f) => f,
        Err(e) => {
            let _ = ring.submitter().unregister_buf_ring(bgid);
            return Err(e);
        }
    };
    {
        let mut p = pr.producer.lock().unwrap_or_else(|e| e.into_inner());
        for bid in free {
            pr.push(&mut p, bid, pool.addr(bid), pool.buf_size());
        }
    }
    Ok(Registered {
        pool: pool.clone(),
        ring: pr,
    })
}

/// Unregisters `r` from `ring` and gives the buffers it held back to the
/// pool. Only once no read can pick from it any more.
pub(crate) fn unregister(ring: &IoUring, r: Registered) {
    let _ = ring.submitter().unregister_buf_ring(r.ring.bgid);
    let pr = r.ring.clone();
    r.pool.detach(move || {
        let p = pr.producer.lock().unwrap_or_else(|e| e.into_inner());
        p.held
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i as u16)
            .collect()
    });
}
