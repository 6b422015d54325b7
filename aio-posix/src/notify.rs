//! How a finished aio request tells its driver: the one seam to replace for
//! another notification scheme (FreeBSD's `SIGEV_KEVENT`, say).
//!
//! Scheme: every request is submitted with `SIGEV_SIGNAL` and a real-time
//! signal whose value packs (driver index, slot, generation). The signal
//! handler — which may run on any thread — touches only static memory: it
//! pushes that value on its driver's lock-free queue and writes the driver's
//! eventfd. It never dereferences a pointer, so a late signal for a request
//! the driver already reclaimed (by a sweep) is harmless: its generation no
//! longer matches — also for the next driver that takes the same index,
//! since generations continue per index where the previous owner stopped.
//! A full queue sets an overflow flag that makes the driver sweep.
//!
//! Each driver's eventfd is closed when the driver drops. A late signal can
//! never write into that fd number once it is closed and reused: the handler
//! marks itself active before it loads the fd, and the closer takes the fd
//! out of the queue, waits until no handler is active, then closes it.
//!
//! This module must never allocate, lock or call anything but `write(2)` and
//! atomics inside the handler.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// How many aio drivers may live at once in one process.
pub(crate) const MAX_DRIVERS: usize = 64;
/// Queue entries per driver; more finished requests between two drains
/// overflow into a sweep.
const QUEUE: usize = 4096;

/// The signal offset from `SIGRTMIN` used for aio completions.
pub(crate) const SIGNAL_OFFSET: i32 = 7;

struct Queue {
    slots: [AtomicU64; QUEUE],
    /// Next slot a producer takes.
    tail: AtomicUsize,
    /// Set when a producer found its slot still full.
    overflow: AtomicBool,
    efd: AtomicI32,
    /// Handlers between loading `efd` and finishing their write to it.
    writers: AtomicUsize,
    /// The generation the next owner of this index starts from.
    next_generation: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_QUEUE: Queue = Queue {
    slots: [EMPTY_SLOT; QUEUE],
    tail: AtomicUsize::new(0),
    overflow: AtomicBool::new(false),
    efd: AtomicI32::new(-1),
    writers: AtomicUsize::new(0),
    next_generation: AtomicU32::new(1),
};

static QUEUES: [Queue; MAX_DRIVERS] = [EMPTY_QUEUE; MAX_DRIVERS];
/// Which driver indexes are taken.
static TAKEN: Mutex<[bool; MAX_DRIVERS]> = Mutex::new([false; MAX_DRIVERS]);
static INSTALL: Once = Once::new();

/// The signal number aio requests are sent with.
pub(crate) fn signal() -> i32 {
    libc::SIGRTMIN() + SIGNAL_OFFSET
}

/// Packs what a signal carries. Slot and generation must fit 24 and 32 bits.
pub(crate) fn pack(index: usize, slot: usize, generation: u32) -> u64 {
    ((index as u64) << 56) | ((slot as u64 & 0xff_ffff) << 32) | generation as u64
}

/// The (slot, generation) a signal value carries.
pub(crate) fn unpack(v: u64) -> (usize, u32) {
    (((v >> 32) & 0xff_ffff) as usize, v as u32)
}

extern "C" fn on_signal(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: for a queued real-time signal the kernel's siginfo carries the
    // sigval at byte offset 24 on 64-bit Linux (si_signo, si_errno, si_code,
    // padding, then _rt { si_pid, si_uid, si_sigval }).
    let value = unsafe { *((info as *const u8).add(24) as *const u64) };
    let index = (value >> 56) as usize;
    if index >= MAX_DRIVERS {
        return;
    }
    let q = &QUEUES[index];
    // Value 0 marks an empty queue slot; a packed value is never 0 because
    // generations start at 1.
    let at = q.tail.fetch_add(1, Ordering::AcqRel) % QUEUE;
    if q.slots[at]
        .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        q.overflow.store(true, Ordering::Release);
    }
    // Active before the load: the closer (Notifier::drop) waits for this
    // count to fall to 0 after taking the fd out, so the fd loaded here
    // stays open until the write below is done.
    q.writers.fetch_add(1, Ordering::SeqCst);
    let efd = q.efd.load(Ordering::SeqCst);
    if efd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; efd is this index's eventfd,
        // kept open while `writers` counts this handler.
        unsafe { libc::write(efd, &one as *const u64 as *const libc::c_void, 8) };
    }
    q.writers.fetch_sub(1, Ordering::SeqCst);
}

/// One driver's end of the notification scheme.
pub(crate) struct Notifier {
    index: usize,
    /// Next queue slot the driver reads.
    head: usize,
}

impl Notifier {
    /// Takes a free driver index and installs the handler once per process.
    pub(crate) fn new() -> io::Result<Notifier> {
        let mut err = None;
        INSTALL.call_once(|| {
            // SAFETY: installs a SA_SIGINFO handler that is async-signal-safe
            // (see on_signal); the sigaction struct is fully initialised.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
                    err = Some(io::Error::last_os_error());
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let index = taken.iter().position(|t| !*t).ok_or_else(|| {
            io::Error::other(format!(
                "too many aio drivers at once (the limit is {MAX_DRIVERS} per process)"
            ))
        })?;
        let q = &QUEUES[index];
        // SAFETY: plain syscall; the fd is closed by this Notifier's Drop.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        q.efd.store(efd, Ordering::SeqCst);
        taken[index] = true;
        // Start from a clean queue: drop what late signals of a previous
        // owner left (they carry generations this driver never issues).
        for s in &q.slots {
            s.store(0, Ordering::Relaxed);
        }
        q.overflow.store(false, Ordering::Relaxed);
        let head = q.tail.load(Ordering::Acquire);
        Ok(Notifier { index, head })
    }

    /// The first generation this driver may issue: where the previous owner
    /// of the index stopped, so a late signal of its requests never matches.
    pub(crate) fn first_generation(&self) -> u32 {
        QUEUES[self.index].next_generation.load(Ordering::Acquire)
    }

    /// Records where this driver's generations stopped, for the next owner.
    pub(crate) fn set_next_generation(&self, generation: u32) {
        QUEUES[self.index]
            .next_generation
            .store(generation.max(1), Ordering::Release);
    }

    /// This driver's index (goes into every request's signal value).
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The eventfd that becomes readable when a request finishes.
    pub(crate) fn eventfd(&self) -> RawFd {
        QUEUES[self.index].efd.load(Ordering::Acquire)
    }

    /// Clears the eventfd's counter.
    pub(crate) fn clear_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into v from our non-blocking eventfd.
        unsafe { libc::read(self.eventfd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
    }

    /// Takes every (slot, generation) signalled so far, in order, stopping at
    /// a slot a producer has claimed but not yet filled (its eventfd write
    /// follows, so it is picked up next time). Returns whether the queue
    /// overflowed: some values were lost, and the caller must sweep.
    pub(crate) fn drain(&mut self, out: &mut Vec<(usize, u32)>) -> bool {
        let q = &QUEUES[self.index];
        if q.overflow.swap(false, Ordering::AcqRel) {
            // Positions are no longer in step with slots: take whatever any
            // slot holds and resynchronise on the producers' position.
            self.head = q.tail.load(Ordering::Acquire);
            for s in &q.slots {
                let v = s.swap(0, Ordering::AcqRel);
                if v != 0 {
                    out.push(unpack(v));
                }
            }
            return true;
        }
        loop {
            let v = q.slots[self.head % QUEUE].swap(0, Ordering::AcqRel);
            if v == 0 {
                return false;
            }
            out.push(unpack(v));
            self.head = self.head.wrapping_add(1);
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let q = &QUEUES[self.index];
        let efd = q.efd.swap(-1, Ordering::SeqCst);
        // A handler that loaded the fd before the swap counted itself first;
        // it finishes one write(2) (a handler never waits, so this ends even
        // if one interrupted this very thread: it ran to its end already).
        while q.writers.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if efd >= 0 {
            // SAFETY: our eventfd; no handler can write to it any more.
            unsafe { libc::close(efd) };
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        taken[self.index] = false;
    }
}
