//! Blocking work off the runtime's thread: a bounded pool of threads that
//! runs closures and hands their results back through a [`JoinHandle`].

use super::task::{JoinError, JoinHandle, Shared};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Threads a pool starts at most, unless told otherwise.
pub const DEFAULT_MAX_BLOCKING_THREADS: usize = 64;
/// How long an idle pool thread waits for work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of at most `max` threads; jobs beyond that wait in its queue.
pub(crate) struct BlockingPool {
    state: Mutex<PoolState>,
    work: Condvar,
    max: usize,
}

struct PoolState {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

/// Completes the job's handle as cancelled if the job is dropped unrun.
struct Completer<T>(Arc<Shared<T>>);

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.0.complete(Err(JoinError::cancelled()));
    }
}

impl BlockingPool {
    /// A pool of at most `max` threads (at least one), started on demand.
    pub(crate) fn new(max: usize) -> Arc<BlockingPool> {
        Arc::new(BlockingPool {
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                threads: 0,
                idle: 0,
            }),
            work: Condvar::new(),
            max: max.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `f`; a thread runs it, under `catch_unwind`.
    pub(crate) fn spawn<F, T>(self: &Arc<Self>, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let shared = Shared::new(None);
        let done = Completer(shared.clone());
        let job: Job = Box::new(move || {
            if done.0.is_aborted() {
                return; // the Completer reports the cancel
            }
            match catch_unwind(AssertUnwindSafe(f)) {
                Ok(v) => done.0.complete(Ok(v)),
                Err(p) => done.0.complete(Err(JoinError::panic(p))),
            }
        });
        let start_thread = {
            let mut s = self.lock();
            s.queue.push_back(job);
            if s.idle > 0 {
                self.work.notify_one();
                false
            } else if s.threads < self.max {
                s.threads += 1;
                true
            } else {
                false
            }
        };
        if start_thread {
            let pool = self.clone();
            let started = std::thread::Builder::new()
                .name("ringport-blocking".into())
                .spawn(move || pool.worker());
            if let Err(e) = started {
                // The queued job waits for a running thread; if there is
                // none, it is dropped, and its handle reports a cancel.
                log::error!("ringport: cannot start a blocking-pool thread: {e}");
                let mut s = self.lock();
                s.threads -= 1;
                if s.threads == 0 {
                    let jobs: Vec<Job> = s.queue.drain(..).collect();
                    drop(s);
                    drop(jobs);
                }
            }
        }
        JoinHandle::new(shared)
    }

    fn worker(&self) {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.queue.pop_front() {
                drop(s);
                job();
                s = self.lock();
                continue;
            }
            s.idle += 1;
            let (guard, timeout) = self
                .work
                .wait_timeout(s, KEEP_ALIVE)
                .unwrap_or_else(|e| e.into_inner());
            s = guard;
            s.idle -= 1;
            if timeout.timed_out() && s.queue.is_empty() {
                break;
            }
        }
        s.threads -= 1;
    }
}

/// Runs `f` on the running runtime's blocking pool (a bounded set of
/// threads, 64 unless the runtime was built with another bound) and
/// resolves to its result, or to a [`JoinError`] if it panicked. Use it for
/// work that would stall the runtime's thread: a blocking syscall, a C
/// library call, heavy computation.
///
/// # Panics
///
/// If no runtime is running on this thread.
pub fn spawn_blocking<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let core = super::current().expect("ringport::spawn_blocking called outside a running runtime");
    core.blocking.spawn(f)
}
