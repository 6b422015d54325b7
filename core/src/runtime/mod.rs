//! A single-threaded async runtime over any [`Driver`].
//!
//! One runtime per thread (thread-per-core): it owns its driver, runs local
//! tasks, and turns each I/O call into one submitted [`Op`] whose completion
//! wakes the task. Scale out by running one runtime per core, e.g. with
//! `SO_REUSEPORT` listeners.
//!
//! **Cancellation.** Dropping an I/O future while its op is in flight asks the
//! driver to cancel the op, and the driver keeps the op's buffer until the
//! kernel is done with it; the buffer is then dropped exactly once. What the op
//! did is not undone: a read that had already consumed bytes from a socket or
//! pipe before it was cancelled has consumed them, and those bytes are lost to
//! the caller (the completion that carried them is discarded with the buffer).
//! A caller who cannot afford that must not drop reads on streams mid-flight,
//! or should use a per-op deadline (`*_deadline` methods), which returns the
//! buffer and the real result instead.

mod fs;
mod net;
mod op;
mod time;

pub use fs::{File, OpenOptions};
pub use net::{
    pipe, PipeReader, PipeWriter, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream,
};
pub use op::{submit, OpFuture};
pub use time::{sleep, sleep_until, timeout, Elapsed};

use crate::driver::{Capabilities, Completion, Driver, DriverWaker, SubmitError};
use crate::op::{Op, OpId};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

/// Task id of the future given to `block_on`.
const MAIN: usize = usize::MAX;
/// How many tasks run between two looks at the driver.
const TASK_BUDGET: usize = 128;

/// The state of one op the runtime submitted.
enum OpSlot {
    /// In flight; wake this task on completion.
    Waiting { id: OpId, waker: Option<Waker> },
    /// Completed; the future has not collected it yet.
    Done(Completion),
    /// The future was dropped: discard the completion (and its buffer) on arrival.
    Orphaned,
}

/// What other threads share with the runtime: the queue of tasks they woke,
/// and the fds dropped away from the runtime's thread that its driver must
/// close.
pub(crate) struct Remote {
    queue: Mutex<Vec<usize>>,
    closes: Mutex<Closes>,
    driver: DriverWaker,
}

/// Fds waiting to be closed through the driver, and whether the runtime is
/// still there to do it.
struct Closes {
    fds: Vec<RawFd>,
    open: bool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

impl Remote {
    /// Queues `fd` to be closed through the runtime's driver and wakes it.
    /// False when the runtime is gone (the caller closes the fd itself).
    pub(crate) fn defer_close(&self, fd: RawFd) -> bool {
        let mut c = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        if !c.open {
            return false;
        }
        c.fds.push(fd);
        drop(c);
        self.driver.wake();
        true
    }
}

/// A task's waker: pushes the task id on the runtime's run queue.
struct TaskWake {
    task: usize,
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let local = CURRENT
            .try_with(|c| {
                if let Some(core) = c.borrow().as_ref() {
                    if Arc::ptr_eq(&core.remote, &self.remote) {
                        core.run_queue.borrow_mut().push_back(self.task);
                        return true;
                    }
                }
                false
            })
            .unwrap_or(false);
        if !local {
            self.remote
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.task);
            self.remote.driver.wake();
        }
    }
}

struct Task {
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    wake: Arc<TaskWake>,
}

/// The runtime's state, shared (on its thread) by every future it runs.
pub(crate) struct Core {
    driver: RefCell<Box<dyn Driver>>,
    caps: Capabilities,
    ops: RefCell<Slab<OpSlot>>,
    tasks: RefCell<Slab<Task>>,
    run_queue: RefCell<VecDeque<usize>>,
    remote: Arc<Remote>,
    main_wake: Arc<TaskWake>,
    completions: RefCell<Vec<Completion>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

impl Core {
    /// Submits `op`; on success the runtime tracks it in its op table.
    pub(crate) fn submit(
        &self,
        op: Op,
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> Result<usize, SubmitError> {
        let mut ops = self.ops.borrow_mut();
        let entry = ops.vacant_entry();
        let key = entry.key();
        let id = self.driver.borrow_mut().submit(op, key as u64, deadline)?;
        entry.insert(OpSlot::Waiting {
            id,
            waker: Some(waker.clone()),
        });
        Ok(key)
    }

    /// Submits `op` whose result nobody awaits (a close from `Drop`).
    pub(crate) fn submit_detached(&self, op: Op) -> Result<(), SubmitError> {
        let mut ops = self.ops.borrow_mut();
        let entry = ops.vacant_entry();
        let key = entry.key();
        self.driver.borrow_mut().submit(op, key as u64, None)?;
        entry.insert(OpSlot::Orphaned);
        Ok(())
    }

    /// Collects the completion of op `key` if it has arrived, else records
    /// the waker to call when it does.
    pub(crate) fn poll_op(&self, key: usize, waker: &Waker) -> Option<Completion> {
        let mut ops = self.ops.borrow_mut();
        match ops.get_mut(key) {
            Some(OpSlot::Waiting { waker: w, .. }) => {
                match w {
                    Some(old) if old.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                None
            }
            Some(OpSlot::Done(_)) => match ops.remove(key) {
                OpSlot::Done(c) => Some(c),
                _ => None,
            },
            _ => None,
        }
    }

    /// The future of op `key` was dropped: cancel the op if it is in flight;
    /// its completion (and buffer) is discarded when it arrives.
    pub(crate) fn drop_op(&self, key: usize) {
        let id = {
            let mut ops = self.ops.borrow_mut();
            match ops.get_mut(key) {
                Some(slot @ OpSlot::Waiting { .. }) => {
                    let OpSlot::Waiting { id, .. } = std::mem::replace(slot, OpSlot::Orphaned)
                    else {
                        return;
                    };
                    id
                }
                Some(OpSlot::Done(_)) => {
                    if let OpSlot::Done(c) = ops.remove(key) {
                        drop(ops);
                        self.discard(c);
                    }
                    return;
                }
                _ => return,
            }
        };
        // NotFound only means it completed meanwhile; the slot is reaped then.
        let _ = self.driver.borrow_mut().cancel(id);
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn dispatch(&self) {
        let mut comps = self.completions.borrow_mut();
        for c in comps.drain(..) {
            let key = c.token as usize;
            let waker = {
                let mut ops = self.ops.borrow_mut();
                match ops.get_mut(key) {
                    Some(OpSlot::Waiting { .. }) => {
                        match std::mem::replace(&mut ops[key], OpSlot::Done(c)) {
                            OpSlot::Waiting { waker, .. } => waker,
                            _ => None,
                        }
                    }
                    Some(OpSlot::Orphaned) => {
                        ops.remove(key);
                        drop(ops);
                        self.discard(c);
                        None
                    }
                    _ => None,
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    fn poll_task(self: &Rc<Self>, id: usize) {
        let (mut fut, wake) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(task) = tasks.get_mut(id) else {
                return;
            };
            let Some(fut) = task.future.take() else {
                return;
            };
            (fut, task.wake.clone())
        };
        wake.queued.store(false, Ordering::Release);
        let waker = Waker::from(wake);
        let mut cx = Context::from_waker(&waker);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                self.tasks.borrow_mut().remove(id);
            }
            Poll::Pending => {
                if let Some(task) = self.tasks.borrow_mut().get_mut(id) {
                    task.future = Some(fut);
                }
            }
        }
    }

    fn drain_remote(&self) {
        let mut q = self.remote.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !q.is_empty() {
            self.run_queue.borrow_mut().extend(q.drain(..));
        }
        drop(q);
        self.close_deferred(false);
    }

    /// Closes, through the driver, the fds dropped away from this thread.
    /// With `last`, no more are accepted afterwards (the runtime is going).
    fn close_deferred(&self, last: bool) {
        let fds = {
            let mut c = self.remote.closes.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                c.open = false;
            }
            if c.fds.is_empty() {
                return;
            }
            std::mem::take(&mut c.fds)
        };
        for fd in fds {
            if self.submit_detached(Op::Close { fd }).is_err() {
                // The driver refused the close (say, a full queue at drop):
                // close it plainly rather than leak it.
                // SAFETY: the fd was handed over by its dropped owner.
                unsafe { libc::close(fd) };
            }
        }
    }

    /// Drops a completion nobody will collect. An fd it made (an accept or
    /// open whose future was dropped) is closed through the driver, so it
    /// is neither leaked nor closed behind the driver's back.
    fn discard(&self, c: Completion) {
        let made_fd = matches!(c.op, Op::Accept { .. } | Op::OpenAt { .. });
        if let (true, Ok(fd)) = (made_fd, &c.result) {
            let fd = *fd as RawFd;
            if self.submit_detached(Op::Close { fd }).is_err() {
                // SAFETY: the fd was made for this op and nobody else has it.
                unsafe { libc::close(fd) };
            }
        }
        drop(c); // the kernel is done: the buffer may go now
    }

    /// Waits for I/O: blocks only when no task is ready to run.
    fn turn_driver(&self, block: bool) -> io::Result<()> {
        let mut comps = self.completions.borrow_mut();
        let (min, timeout) = if block {
            (1, None)
        } else {
            (0, Some(std::time::Duration::ZERO))
        };
        self.driver.borrow_mut().wait(&mut comps, min, timeout)?;
        drop(comps);
        self.dispatch();
        Ok(())
    }
}

/// A single-threaded runtime: one driver, local tasks, `block_on`.
///
/// It is `!Send`: it runs on the thread that made it (io_uring rings set up
/// for a single issuer demand exactly that).
pub struct Runtime {
    core: Rc<Core>,
    main_running: Cell<bool>,
}

impl Runtime {
    /// A runtime over `driver`.
    pub fn from_driver(driver: Box<dyn Driver>) -> Runtime {
        let caps = driver.capabilities().clone();
        let remote = Arc::new(Remote {
            queue: Mutex::new(Vec::new()),
            closes: Mutex::new(Closes {
                fds: Vec::new(),
                open: true,
            }),
            driver: driver.waker(),
        });
        let main_wake = Arc::new(TaskWake {
            task: MAIN,
            queued: AtomicBool::new(true),
            remote: remote.clone(),
        });
        Runtime {
            core: Rc::new(Core {
                driver: RefCell::new(driver),
                caps,
                ops: RefCell::new(Slab::with_capacity(64)),
                tasks: RefCell::new(Slab::new()),
                run_queue: RefCell::new(VecDeque::new()),
                remote,
                main_wake,
                completions: RefCell::new(Vec::with_capacity(256)),
            }),
            main_running: Cell::new(false),
        }
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.core.driver.borrow().name()
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.core.caps
    }

    /// Runs `future` to completion on this thread, running spawned tasks and
    /// I/O meanwhile. Fails only if the driver's wait fails.
    ///
    /// # Panics
    ///
    /// If called from inside another `block_on` on this thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.try_block_on(future)
            .unwrap_or_else(|e| panic!("ringport runtime: the driver failed: {e}"))
    }

    /// Like [`Runtime::block_on`], but a failing driver is returned as an
    /// error instead of a panic.
    pub fn try_block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        assert!(
            !self.main_running.replace(true),
            "Runtime::block_on called while it is already running"
        );
        let _guard = Enter::new(self.core.clone(), &self.main_running);
        let core = &self.core;
        let mut future = std::pin::pin!(future);
        let main_waker = Waker::from(core.main_wake.clone());
        core.main_wake.queued.store(true, Ordering::Release);
        loop {
            if core.main_wake.queued.swap(false, Ordering::AcqRel) {
                let mut cx = Context::from_waker(&main_waker);
                if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                    return Ok(v);
                }
            }
            for _ in 0..TASK_BUDGET {
                let next = core.run_queue.borrow_mut().pop_front();
                match next {
                    Some(MAIN) => core.main_wake.queued.store(true, Ordering::Release),
                    Some(id) => core.poll_task(id),
                    None => break,
                }
            }
            core.drain_remote();
            let idle = core.run_queue.borrow().is_empty()
                && !core.main_wake.queued.load(Ordering::Acquire);
            core.turn_driver(idle)?;
            core.drain_remote();
        }
    }

    /// Starts `future` as a task on this runtime. It runs while `block_on`
    /// runs; the handle awaits its output.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        spawn_on(&self.core, future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Drop the tasks first (their in-flight ops are cancelled and
        // orphaned), with the runtime current so their drops can reach it.
        let tasks: Vec<Task> = self.core.tasks.borrow_mut().drain().collect();
        let _guard = Enter::new(self.core.clone(), &self.main_running);
        drop(tasks);
        // Completions nobody collected may hold fds (an accept or open
        // whose future was dropped without being polled again).
        let done: Vec<Completion> = {
            let mut ops = self.core.ops.borrow_mut();
            let keys: Vec<usize> = ops
                .iter()
                .filter(|(_, s)| matches!(s, OpSlot::Done(_)))
                .map(|(k, _)| k)
                .collect();
            keys.into_iter()
                .filter_map(|k| match ops.remove(k) {
                    OpSlot::Done(c) => Some(c),
                    _ => None,
                })
                .collect()
        };
        for c in done {
            self.core.discard(c);
        }
        // Fds dropped elsewhere are closed through the driver; from now on
        // their owners close them plainly.
        self.core.close_deferred(true);
        // The driver's own Drop cancels what is left, waits a bounded time for
        // the kernel, and leaks only buffers the kernel may still touch.
    }
}

/// Makes a runtime current on this thread for the guard's life.
struct Enter<'a> {
    prev: Option<Rc<Core>>,
    running: &'a Cell<bool>,
}

impl<'a> Enter<'a> {
    fn new(core: Rc<Core>, running: &'a Cell<bool>) -> Enter<'a> {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(core));
        Enter { prev, running }
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = prev);
        self.running.set(false);
    }
}

/// The runtime running on this thread, if any.
pub(crate) fn current() -> Option<Rc<Core>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The runtime running on this thread, or an error saying there is none.
pub(crate) fn current_or_err() -> io::Result<Rc<Core>> {
    current().ok_or_else(|| {
        io::Error::other("no ringport runtime is running on this thread (use Runtime::block_on)")
    })
}

fn spawn_on<F>(core: &Rc<Core>, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        output: None,
        waker: None,
        finished: false,
    }));
    let st = state.clone();
    let wrapped = async move {
        let out = future.await;
        let waker = {
            let mut s = st.borrow_mut();
            s.output = Some(out);
            s.finished = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    };
    let mut tasks = core.tasks.borrow_mut();
    let entry = tasks.vacant_entry();
    let id = entry.key();
    let wake = Arc::new(TaskWake {
        task: id,
        queued: AtomicBool::new(true),
        remote: core.remote.clone(),
    });
    entry.insert(Task {
        future: Some(Box::pin(wrapped)),
        wake,
    });
    core.run_queue.borrow_mut().push_back(id);
    JoinHandle { state }
}

/// Starts `future` as a task on the runtime running on this thread.
///
/// # Panics
///
/// If no runtime is running on this thread.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let core = current().expect("ringport::spawn called outside a running runtime");
    spawn_on(&core, future)
}

struct JoinState<T> {
    output: Option<T>,
    waker: Option<Waker>,
    finished: bool,
}

/// Awaits a spawned task's output. Dropping it detaches the task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.output.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Yields once to the other tasks.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
