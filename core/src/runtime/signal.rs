//! Unix signals as streams: [`ctrl_c`], and [`signal`] for any catchable
//! signal, on every backend.
//!
//! One process-wide handler per signal writes a byte into a pipe per
//! listener (a self-pipe each); a listener reads its pipe with the
//! runtime's own read op, so it works wherever pipes do. Several listeners
//! of one signal (in one runtime or several) each get every delivery.
//! Deliveries that arrive while one is pending may coalesce into one item,
//! as signals do.
//!
//! The signals the backends use themselves are refused: `SIGIO` and
//! `SIGRTMIN+5` (the sigio backend), `SIGRTMIN+6` (the shim's pool),
//! `SIGRTMIN+7` (aio); so are those that cannot or must not be caught
//! (`SIGKILL`, `SIGSTOP`, `SIGILL`, `SIGFPE`, `SIGSEGV`, `SIGBUS`).
//!
//! Once a signal has had a listener, the handler stays installed: later
//! deliveries with no listener are swallowed rather than running the
//! default action (so a `SIGINT` no longer ends the process). A handler the
//! application had installed before runs first, then ours (chained).

use super::net::{pipe, PipeReader};
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A signal number, by name or raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalKind(i32);

impl SignalKind {
    /// `SIGINT` (Ctrl-C).
    pub const fn interrupt() -> SignalKind {
        SignalKind(libc::SIGINT)
    }
    /// `SIGTERM` (the polite "please stop").
    pub const fn terminate() -> SignalKind {
        SignalKind(libc::SIGTERM)
    }
    /// `SIGHUP`.
    pub const fn hangup() -> SignalKind {
        SignalKind(libc::SIGHUP)
    }
    /// `SIGQUIT`.
    pub const fn quit() -> SignalKind {
        SignalKind(libc::SIGQUIT)
    }
    /// `SIGUSR1`.
    pub const fn user_defined1() -> SignalKind {
        SignalKind(libc::SIGUSR1)
    }
    /// `SIGUSR2`.
    pub const fn user_defined2() -> SignalKind {
        SignalKind(libc::SIGUSR2)
    }
    /// `SIGCHLD`.
    pub const fn child() -> SignalKind {
        SignalKind(libc::SIGCHLD)
    }
    /// `SIGWINCH`.
    pub const fn window_change() -> SignalKind {
        SignalKind(libc::SIGWINCH)
    }
    /// `SIGPIPE`.
    pub const fn pipe() -> SignalKind {
        SignalKind(libc::SIGPIPE)
    }
    /// Any signal by number (checked when listened to).
    pub const fn from_raw(signum: i32) -> SignalKind {
        SignalKind(signum)
    }
    /// The signal's number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }
}

/// Signal numbers 1..MAX_SIGNAL are tracked (Linux has 64).
const MAX_SIGNAL: usize = 65;
/// Listeners the whole process may have at once.
const SLOTS: usize = 256;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicU64 = AtomicU64::new(0);
/// Each listener: `signal << 32 | write fd`, or 0 when free.
static LISTENERS: [AtomicU64; SLOTS] = [EMPTY; SLOTS];
/// Handlers running right now (a listener's write fd is closed only when
/// no handler can be writing to it).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NOT_INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALLED: [AtomicBool; MAX_SIGNAL] = [NOT_INSTALLED; MAX_SIGNAL];
#[allow(clippy::declare_interior_mutable_const)]
const NO_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// The handler the application had before ours (0: none to chain).
static PREV_HANDLER: [AtomicUsize; MAX_SIGNAL] = [NO_HANDLER; MAX_SIGNAL];
#[allow(clippy::declare_interior_mutable_const)]
const NO_FLAGS: AtomicI32 = AtomicI32::new(0);
static PREV_FLAGS: [AtomicI32; MAX_SIGNAL] = [NO_FLAGS; MAX_SIGNAL];
/// Serialises installing handlers.
static INSTALL: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work here: atomics, write(2), and the
    // previous handler. errno is saved and restored around it all.
    // SAFETY: __errno_location gives this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    // The application's earlier handler runs first, so that a listener
    // woken by this delivery sees what that handler did.
    let idx = sig as usize;
    if idx < MAX_SIGNAL {
        let prev = PREV_HANDLER[idx].load(Ordering::SeqCst);
        if prev != 0 {
            let flags = PREV_FLAGS[idx].load(Ordering::SeqCst);
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the application installed this as an SA_SIGINFO
                // handler: that is its type.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler installed by the application.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev) };
                f(sig);
            }
        }
    }
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let byte = sig as u8;
    for slot in LISTENERS.iter() {
        let v = slot.load(Ordering::SeqCst);
        if v != 0 && (v >> 32) as i32 == sig {
            let fd = v as u32 as RawFd;
            // SAFETY: fd is a listener's non-blocking pipe write end, kept
            // open while it is in a slot or a handler runs (IN_HANDLER).
            // A full pipe (EAGAIN) means deliveries are pending anyway.
            unsafe { libc::write(fd, &byte as *const u8 as *const libc::c_void, 1) };
        }
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Why `sig` cannot be listened to, if it cannot.
fn refused(sig: i32) -> Option<&'static str> {
    let rt = libc::SIGRTMIN();
    if sig <= 0 || sig as usize >= MAX_SIGNAL || sig > libc::SIGRTMAX() {
        Some("not a signal number")
    } else if matches!(sig, libc::SIGKILL | libc::SIGSTOP) {
        Some("it cannot be caught")
    } else if matches!(
        sig,
        libc::SIGILL | libc::SIGFPE | libc::SIGSEGV | libc::SIGBUS
    ) {
        Some("it reports a fault that must not be swallowed")
    } else if sig == libc::SIGIO || sig == rt + 5 {
        Some("the sigio backend uses it")
    } else if sig == rt + 6 {
        Some("the readiness shim's worker pool uses it")
    } else if sig == rt + 7 {
        Some("the aio backend uses it")
    } else {
        None
    }
}

fn install(sig: i32) -> io::Result<()> {
    let idx = sig as usize;
    let _g = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if INSTALLED[idx].load(Ordering::SeqCst) {
        return Ok(());
    }
    // SAFETY: sigaction structs are plain data; zeroed is a valid start,
    // and each call gets valid pointers.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) < 0 {
            return Err(io::Error::last_os_error());
        }
        let ours = on_signal as *const () as usize;
        if old.sa_sigaction != libc::SIG_DFL
            && old.sa_sigaction != libc::SIG_IGN
            && old.sa_sigaction != ours
        {
            PREV_FLAGS[idx].store(old.sa_flags, Ordering::SeqCst);
            PREV_HANDLER[idx].store(old.sa_sigaction, Ordering::SeqCst);
        }
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = ours;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        if libc::sigaction(sig, &new, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    INSTALLED[idx].store(true, Ordering::SeqCst);
    Ok(())
}

/// A stream of one signal's deliveries (see the module doc). Made with
/// [`signal`]; read with [`Signal::recv`] on the runtime it was made on.
#[derive(Debug)]
pub struct Signal {
    reader: PipeReader,
    write_fd: RawFd,
    slot: usize,
    kind: SignalKind,
}

/// Listens for `kind` from now on, on the running runtime.
///
/// Fails for a signal a backend uses, one that cannot be caught, outside a
/// runtime, or when the process has too many listeners (256).
pub fn signal(kind: SignalKind) -> io::Result<Signal> {
    let sig = kind.0;
    if let Some(why) = refused(sig) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot listen for signal {sig}: {why}"),
        ));
    }
    super::current_or_err()?;
    let (reader, writer) = pipe()?;
    let write_fd = writer.into_raw_fd();
    let fail = |e: io::Error| {
        // SAFETY: the write end is ours and in no slot.
        unsafe { libc::close(write_fd) };
        e
    };
    // SAFETY: plain fcntl on an fd we own: the handler must never block.
    let r = unsafe {
        let fl = libc::fcntl(write_fd, libc::F_GETFL);
        libc::fcntl(write_fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
    };
    if r < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    let packed = (sig as u64) << 32 | write_fd as u32 as u64;
    let slot = LISTENERS
        .iter()
        .position(|s| {
            s.compare_exchange(0, packed, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
        .ok_or_else(|| {
            fail(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot listen for signal {sig}: the process has {SLOTS} signal listeners already"),
            ))
        })?;
    let this = Signal {
        reader,
        write_fd,
        slot,
        kind,
    };
    install(sig)?; // on failure, `this` drops and frees its slot
    Ok(this)
}

impl Signal {
    /// Waits for the next delivery (deliveries since the last call that
    /// were not yet taken count as one or more items).
    pub async fn recv(&mut self) -> io::Result<()> {
        let (r, _) = self.reader.read(Vec::with_capacity(64)).await;
        match r? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the signal pipe closed",
            )),
            _ => Ok(()),
        }
    }

    /// Which signal this listens for.
    pub fn kind(&self) -> SignalKind {
        self.kind
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        LISTENERS[self.slot].store(0, Ordering::SeqCst);
        // A handler that loaded the slot before it was cleared may still
        // write to the fd: wait until none runs (they are short).
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SAFETY: the write end is ours, no slot names it and no handler
        // is writing to it; it was never given to a driver.
        unsafe { libc::close(self.write_fd) };
    }
}

/// Waits for the next Ctrl-C (`SIGINT`).
pub async fn ctrl_c() -> io::Result<()> {
    signal(SignalKind::interrupt())?.recv().await
}
