//! The blocking thread pool for what never reports readiness: regular-file
//! reads and writes, fsync, open, stat.
//!
//! A job owns its op (and so its buffer) while a worker runs it, and hands it
//! back through the results queue; the driver is woken through its waker
//! pipe. Ownership makes the buffer safe by construction: nothing can free it
//! while a worker holds it, even when the driver is dropped mid-job (the
//! shared state outlives the driver until the last worker is done).
//!
//! A running job can be stopped (a cancel, a deadline, the driver's drop):
//! its worker's stop flag is set and the worker is sent [`interrupt_signal`],
//! whose handler does nothing and is installed without `SA_RESTART`, so the
//! blocked syscall returns `EINTR`; the syscall loop sees the flag and gives
//! up instead of retrying. A signal that lands just before the syscall starts
//! is lost, so the driver sends it again until the worker reports back.

use ringport_core::op::Op;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The signal offset from `SIGRTMIN` that interrupts a pool worker's
/// blocked syscall (sigio uses +5, aio +7).
pub const INTERRUPT_OFFSET: i32 = 6;

/// The signal that interrupts a pool worker's blocked syscall.
pub fn interrupt_signal() -> i32 {
    libc::SIGRTMIN() + INTERRUPT_OFFSET
}

extern "C" fn on_interrupt(_: libc::c_int) {}

/// Installs the do-nothing handler once per process (without `SA_RESTART`,
/// so blocked syscalls return `EINTR`).
fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set a handler that does
        // nothing (async-signal-safe) and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(interrupt_signal(), &sa, std::ptr::null_mut());
        }
    });
}

thread_local! {
    /// This worker's stop flag (unset on every other thread).
    static STOP: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Whether the job running on this thread has been told to stop (always
/// false off the pool). The syscall loops check it after `EINTR`.
pub(crate) fn stopping() -> bool {
    STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
    })
}

/// A job for the pool.
pub(crate) struct Job {
    pub(crate) key: usize,
    pub(crate) generation: u32,
    pub(crate) op: Op,
}

/// A finished job.
pub(crate) struct Done {
    pub(crate) key: usize,
    pub(crate) generation: u32,
    pub(crate) result: io::Result<usize>,
    pub(crate) op: Op,
}

/// A job a worker is running.
struct Running {
    key: usize,
    generation: u32,
    thread: libc::pthread_t,
    stop: Arc<AtomicBool>,
}

struct Queue {
    jobs: VecDeque<Job>,
    done: Vec<Done>,
    running: Vec<Running>,
    shutdown: bool,
}

pub(crate) struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
    /// Write end of the driver's waker pipe.
    wake_fd: i32,
}

/// A fixed set of worker threads.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    size: usize,
}

impl Pool {
    /// A pool of `size` threads (started lazily, on the first job).
    pub(crate) fn new(size: usize, wake_fd: i32) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                q: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    done: Vec::new(),
                    running: Vec::new(),
                    shutdown: false,
                }),
                cv: Condvar::new(),
                wake_fd,
            }),
            threads: Vec::new(),
            size: size.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; gives it back if no worker can run it.
    pub(crate) fn push(&mut self, job: Job) -> Result<(), (io::Error, Job)> {
        if self.threads.len() < self.size {
            install_handler();
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("ringport-shim-io".into())
                .spawn(move || worker(shared))
            {
                Ok(t) => self.threads.push(t),
                // With some workers running, the job can wait for them.
                Err(e) if self.threads.is_empty() => return Err((e, job)),
                Err(_) => {}
            }
        }
        self.lock().jobs.push_back(job);
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Takes back a job no worker has started; `None` if one has.
    pub(crate) fn take_queued(&self, key: usize, generation: u32) -> Option<Job> {
        let mut q = self.lock();
        let i = q
            .jobs
            .iter()
            .position(|j| j.key == key && j.generation == generation)?;
        q.jobs.remove(i)
    }

    /// Tells the worker running this job to stop and interrupts its syscall.
    /// Returns whether a worker is running it (else it has already finished).
    pub(crate) fn interrupt(&self, key: usize, generation: u32) -> bool {
        let q = self.lock();
        match q
            .running
            .iter()
            .find(|r| r.key == key && r.generation == generation)
        {
            Some(r) => {
                r.stop.store(true, Ordering::Release);
                kill(r.thread);
                true
            }
            None => false,
        }
    }

    /// Interrupts again every worker told to stop that has not reported
    /// back (its signal may have come just before its syscall started).
    /// Returns whether there are any.
    pub(crate) fn reinterrupt(&self) -> bool {
        let q = self.lock();
        let mut any = false;
        for r in q.running.iter().filter(|r| r.stop.load(Ordering::Acquire)) {
            kill(r.thread);
            any = true;
        }
        any
    }

    /// Moves finished jobs into `out`.
    pub(crate) fn drain(&self, out: &mut Vec<Done>) {
        let mut q = self.lock();
        out.append(&mut q.done);
    }

    /// Stops the pool for the driver's drop: no queued job starts, every
    /// running job is told to stop and interrupted, for up to `grace` until
    /// its worker reports back. Returns the finished jobs nobody collected.
    /// A worker still running after `grace` keeps its op (and buffer) until
    /// its syscall ends, then drops it.
    pub(crate) fn shut_down(&mut self, grace: Duration) -> Vec<Done> {
        let end = Instant::now() + grace;
        let mut q = self.lock();
        q.shutdown = true;
        q.jobs.clear(); // never started: safe to drop here
        for r in &q.running {
            r.stop.store(true, Ordering::Release);
        }
        self.shared.cv.notify_all();
        while !q.running.is_empty() && Instant::now() < end {
            for r in &q.running {
                kill(r.thread);
            }
            drop(q);
            std::thread::sleep(Duration::from_millis(1));
            q = self.lock();
        }
        let done = std::mem::take(&mut q.done);
        drop(q);
        // Detach rather than join, so dropping never hangs on a slow disk.
        self.threads.clear();
        done
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for d in self.shut_down(Duration::ZERO) {
            close_result_fd(&d.op, &d.result);
        }
    }
}

/// Closes the fd an open or accept produced that nobody will receive.
pub(crate) fn close_result_fd(op: &Op, result: &io::Result<usize>) {
    if let Some(fd) = op.made_fd(result) {
        // SAFETY: the fd was made by this op and never handed to anyone.
        unsafe { libc::close(fd) };
    }
}

fn kill(thread: libc::pthread_t) {
    // SAFETY: `thread` is a worker that is registered as running, and so
    // alive: it removes its entry under the same lock before it exits.
    unsafe { libc::pthread_kill(thread, interrupt_signal()) };
}

fn worker(shared: Arc<Shared>) {
    let stop = Arc::new(AtomicBool::new(false));
    STOP.with(|s| *s.borrow_mut() = Some(stop.clone()));
    // SAFETY: unblocks one signal on this thread (the spawning thread's mask
    // is inherited and may block it); the set is built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, interrupt_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    loop {
        let job = {
            let mut q = shared.q.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    stop.store(false, Ordering::Release);
                    q.running.push(Running {
                        key: j.key,
                        generation: j.generation,
                        thread: me,
                        stop: stop.clone(),
                    });
                    break j;
                }
                q = shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Job {
            key,
            generation,
            mut op,
        } = job;
        let result = crate::ops::perform_blocking(&mut op);
        let mut q = shared.q.lock().unwrap_or_else(|e| e.into_inner());
        q.running
            .retain(|r| !(r.key == key && r.generation == generation));
        if q.shutdown {
            // The driver is gone: the op drops here, after its work, and an
            // fd it made is closed.
            close_result_fd(&op, &result);
            return;
        }
        q.done.push(Done {
            key,
            generation,
            result,
            op,
        });
        let one = 1u8;
        // SAFETY: writes one byte to the driver's waker pipe (non-blocking;
        // a full pipe already means a wake is pending). Done under the lock:
        // the driver sets `shutdown` under it before closing the pipe, so
        // this never writes to a closed (and perhaps reused) fd number.
        unsafe { libc::write(shared.wake_fd, &one as *const u8 as *const libc::c_void, 1) };
        drop(q);
    }
}
