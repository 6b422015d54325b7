//! How a finished aio request tells its driver: the one seam to replace for
//! another notification scheme (FreeBSD's `SIGEV_KEVENT`, say).
//!
//! Scheme: a request that is armed (every request with
//! `AioBuilder::signal_per_request`, otherwise only those a blocking wait
//! armed; see `driver.rs`) has `SIGEV_SIGNAL` and a real-time signal whose
//! value packs (driver index, slot, generation). The signal handler — which
//! may run on any thread — counts only glibc's notifications (`si_code ==
//! SI_ASYNCIO`; a stray `kill` or `sigqueue` is ignored), keeps the `errno`
//! of the code it interrupted, reads the value with libc's accessor, and
//! touches only static memory: it
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
//! The handler is installed when the first driver is built, and checked
//! again for every later one: if the application has a handler of its own
//! for the signal, building the driver fails with an error naming the signal
//! (the application's handler stays).
//!
//! This module must never allocate, lock or call anything but `write(2)` and
//! atomics inside the handler.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    // The handler may interrupt any code on any thread: whatever it does
    // must leave that code's errno as it was.
    // SAFETY: __errno_location is the calling thread's errno; reading and
    // writing it is async-signal-safe.
    let saved = unsafe { *libc::__errno_location() };
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
        let info = unsafe { &*info };
        if info.si_code == libc::SI_ASYNCIO {
            // SAFETY: for SI_ASYNCIO (glibc's aio notification) the siginfo
            // carries the request's sigval; libc's accessor reads it.
            let value = unsafe { info.si_value() }.sival_ptr as usize as u64;
            push(value);
        }
        // Anything else (a stray `kill`, `sigqueue` from some process, a
        // timer) is not ours and is ignored.
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Queues a signalled value on its driver's queue and wakes the driver.
fn push(value: u64) {
    let index = (value >> 56) as usize;
    // Value 0 marks an empty queue slot and generation 0 is never issued:
    // such a value is not a request's.
    if index >= MAX_DRIVERS || value as u32 == 0 {
        return;
    }
    let q = &QUEUES[index];
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

/// Installs the handler for the driver's signal, unless the application
/// has one of its own there: that is refused (never silently replaced).
fn install() -> io::Result<()> {
    let sig = signal();
    // SAFETY: reads the current disposition into a zeroed struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ours = on_signal as *const () as usize;
    if old.sa_sigaction == ours {
        return Ok(());
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "the aio backend needs signal SIGRTMIN+{SIGNAL_OFFSET} (signal {sig}) for its \
                 completions, but the application already handles it; the backend will \
                 not replace that handler"
            ),
        ));
    }
    // SAFETY: installs a SA_SIGINFO handler that is async-signal-safe (see
    // on_signal); the sigaction struct is fully initialised.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ours;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        install()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A siginfo as the kernel builds it for `code` and `value` (built
    /// through glibc's layout, checked with libc's accessors).
    fn siginfo(code: i32, value: u64) -> libc::siginfo_t {
        #[repr(C)]
        struct Raw {
            signo: i32,
            errno: i32,
            code: i32,
            pad: i32,
            pid: i32,
            uid: u32,
            value: u64,
            rest: [u64; 12],
        }
        const _: () = assert!(std::mem::size_of::<Raw>() == std::mem::size_of::<libc::siginfo_t>());
        let raw = Raw {
            signo: signal(),
            errno: 0,
            code,
            pad: 0,
            pid: 0,
            uid: 0,
            value,
            rest: [0; 12],
        };
        // SAFETY: same size, and every bit pattern is a valid siginfo_t.
        let info: libc::siginfo_t = unsafe { std::mem::transmute(raw) };
        assert_eq!(info.si_code, code);
        // SAFETY: reads the union the way the handler does.
        assert_eq!(unsafe { info.si_value() }.sival_ptr as usize as u64, value);
        info
    }

    fn errno() -> i32 {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    fn set_errno(v: i32) {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = v };
    }

    /// The handler leaves the interrupted code's errno as it was, also when
    /// its own write fails (here: the queue's eventfd is a closed number).
    #[test]
    fn handler_keeps_errno() {
        let index = MAX_DRIVERS - 1;
        let q = &QUEUES[index];
        q.efd.store(i32::MAX, Ordering::SeqCst);
        let mut info = siginfo(libc::SI_ASYNCIO, pack(index, 3, 7));
        set_errno(4242);
        on_signal(signal(), &mut info, std::ptr::null_mut());
        let after = errno();
        q.efd.store(-1, Ordering::SeqCst);
        let mut got = Vec::new();
        let mut n = Notifier { index, head: 0 };
        let overflow = n.drain(&mut got);
        std::mem::forget(n);
        assert_eq!(after, 4242, "the handler changed errno");
        assert!(!overflow);
        assert_eq!(got, vec![(3, 7)], "the aio signal was queued");
    }

    /// Only glibc's aio notifications count: a signal of the same number
    /// from `kill` or `sigqueue`, or one whose value no request carries,
    /// queues nothing.
    #[test]
    fn handler_ignores_signals_not_from_aio() {
        let index = MAX_DRIVERS - 2;
        let q = &QUEUES[index];
        let tail = q.tail.load(Ordering::SeqCst);
        for (code, value) in [
            (libc::SI_USER, pack(index, 1, 1)),
            (libc::SI_QUEUE, pack(index, 1, 1)),
            (libc::SI_ASYNCIO, pack(index, 1, 0)),
            (libc::SI_ASYNCIO, 0),
        ] {
            let mut info = siginfo(code, value);
            on_signal(signal(), &mut info, std::ptr::null_mut());
        }
        assert_eq!(q.tail.load(Ordering::SeqCst), tail, "a slot was taken");
        assert!(q.slots.iter().all(|s| s.load(Ordering::SeqCst) == 0));
    }
}
