//! The blocking thread pool for what never reports readiness: regular-file
//! reads and writes, fsync, open, stat.
//!
//! A job owns its op (and so its buffer) while a worker runs it, and hands it
//! back through the results queue; the driver is woken through its waker
//! pipe. Ownership makes the buffer safe by construction: nothing can free it
//! while a worker holds it, even when the driver is dropped mid-job (the
//! shared state outlives the driver until the last worker is done).

use ringport_core::op::Op;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

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

struct Queue {
    jobs: VecDeque<Job>,
    done: Vec<Done>,
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

    /// Moves finished jobs into `out`.
    pub(crate) fn drain(&self, out: &mut Vec<Done>) {
        let mut q = self.lock();
        out.append(&mut q.done);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut q = self.lock();
            q.shutdown = true;
            q.jobs.clear(); // never started: safe to drop here
        }
        self.shared.cv.notify_all();
        // Workers finish the job in hand and exit; a job's op stays owned by
        // its worker until then, and results left over die with `Shared`.
        // Detach rather than join, so dropping never hangs on a slow disk.
        self.threads.clear();
    }
}

fn worker(shared: Arc<Shared>) {
    loop {
        let job = {
            let mut q = shared.q.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
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
        if q.shutdown {
            return; // the driver is gone; the op drops here, after its work
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
