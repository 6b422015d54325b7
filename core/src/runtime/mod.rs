//! A single-threaded async runtime over any [`Driver`].
//!
//! One runtime per thread (thread-per-core): it owns its driver, runs local
//! tasks, and turns each I/O call into one submitted [`Op`] whose completion
//! wakes the task. Scale out by running one runtime per core: a [`Builder`]
//! starts them, a [`Handle`] spawns onto one from any thread, and
//! [`Runtimes::serve_reuse_port`] gives each its own `SO_REUSEPORT` listener.
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

mod blocking;
mod builder;
mod fixed;
mod fs;
mod multishot;
pub(crate) mod net;
mod op;
mod pooled;
mod shutdown;
pub mod signal;
mod socket;
mod task;
mod time;
mod zerocopy;

pub use blocking::{spawn_blocking, DEFAULT_MAX_BLOCKING_THREADS};
pub use builder::{Builder, Handle, Runtimes};
pub use fs::{File, OpenOptions};
pub use multishot::{Incoming, RecvStream};
pub use net::{
    pipe, PipeReader, PipeWriter, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream,
};
pub use op::{submit, OpFuture};
pub use shutdown::{shutdown_token, ShutdownToken, Triggered};
pub use socket::{TcpSocket, UnixDatagram};
pub use task::{JoinError, JoinHandle};

pub use time::{
    interval, interval_at, sleep, sleep_until, timeout, Elapsed, Interval, MissedTickBehavior,
    Sleep,
};

use crate::driver::{Capabilities, Completion, Driver, DriverWaker, Ready, SubmitError};
use crate::op::{Op, OpId};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Instant;
use task::{TaskExit, TaskFuture};

/// Task id of the future given to `block_on`.
const MAIN: usize = usize::MAX;
/// How many tasks run between two looks at the driver.
const TASK_BUDGET: usize = 128;

/// The token of an op nobody awaits (a close from `Drop`): its completion
/// is discarded.
const DETACHED: u64 = u64::MAX - 1;
/// The token of an op whose waiter is in the runtime's redirect map (a
/// foreign waker).
const FOREIGN: u64 = u64::MAX - 2;

/// What polling a multishot op gave.
pub(crate) enum ShotPoll {
    /// One result.
    Shot(crate::driver::Shot),
    /// The op ended (every result was taken before).
    Ended(Completion),
    /// Nothing yet.
    Pending,
}

/// Where the completion of an op goes when it is not simply "wake the task
/// whose id is its token": rare cases, kept in a small map by op id.
enum Redirect {
    /// Wake this waker (a foreign executor's, or a task other than the one
    /// that submitted the op).
    Wake(Waker),
    /// The op's future was dropped: discard the completion (and its buffer).
    Orphan,
}

/// What other threads share with the runtime: the queue of tasks they woke,
/// and the fds dropped away from the runtime's thread that its driver must
/// close.
pub(crate) struct Remote {
    queue: Mutex<Vec<usize>>,
    closes: Mutex<Closes>,
    driver: DriverWaker,
}

/// Fds waiting to be closed through the driver, ops whose futures were
/// dropped on another thread, tasks spawned from other threads (through a
/// [`Handle`]), and whether the runtime is still there to deal with them.
struct Closes {
    fds: Vec<RawFd>,
    dropped_ops: Vec<OpId>,
    spawns: Vec<RemoteSpawn>,
    open: bool,
}

/// A task handed over from another thread: inserted into the task table
/// on the runtime's thread. Dropped unrun (the runtime is gone), its
/// handle resolves to a cancel.
pub(crate) type RemoteSpawn = Box<dyn FnOnce(&Rc<Core>) + Send + 'static>;

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

impl Remote {
    /// Queues `fd` to be closed through the runtime's driver and wakes it.
    /// False when the runtime is gone (the caller closes the fd itself).
    /// Queues op `id`, whose future was dropped away from the runtime's
    /// thread, to be cancelled and orphaned there. Nothing to do when the
    /// runtime is gone (it dropped every op it had).
    pub(crate) fn defer_drop_op(&self, id: OpId) {
        let mut c = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        if c.open {
            c.dropped_ops.push(id);
            drop(c);
            self.driver.wake();
        }
    }

    /// Queues a task for the runtime and wakes it; when the runtime is
    /// gone, the task is dropped here (its handle reports a cancel).
    pub(crate) fn defer_spawn(&self, spawn: RemoteSpawn) {
        let mut c = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        if !c.open {
            drop(c);
            drop(spawn);
            return;
        }
        c.spawns.push(spawn);
        drop(c);
        self.driver.wake();
    }

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

/// The vtable of task wakers: `Waker`s whose data is an `Arc<TaskWake>`
/// (made by `Arc::into_raw`). Having our own lets the runtime recognise its
/// own wakers (`TaskWake::local_task`) and make a borrowed one for a poll.
static TASK_WAKER: RawWakerVTable = RawWakerVTable::new(
    task_waker_clone,
    task_waker_wake,
    task_waker_wake_by_ref,
    task_waker_drop,
);

unsafe fn task_waker_clone(data: *const ()) -> RawWaker {
    // SAFETY: data came from Arc::into_raw of an Arc<TaskWake> that is alive
    // (the waker being cloned holds, or borrows, one count).
    unsafe { Arc::increment_strong_count(data as *const TaskWake) };
    RawWaker::new(data, &TASK_WAKER)
}

unsafe fn task_waker_wake(data: *const ()) {
    // SAFETY: the waker owns one count, which this takes over and drops.
    let w = unsafe { Arc::from_raw(data as *const TaskWake) };
    w.wake_by_ref();
}

unsafe fn task_waker_wake_by_ref(data: *const ()) {
    // SAFETY: the waker holds (or borrows) a count for the call's length.
    let w = unsafe { &*(data as *const TaskWake) };
    w.wake_by_ref();
}

unsafe fn task_waker_drop(data: *const ()) {
    // SAFETY: the waker owns one count, which this drops.
    drop(unsafe { Arc::from_raw(data as *const TaskWake) });
}

impl TaskWake {
    /// An owning waker for this task.
    fn waker(self: Arc<Self>) -> Waker {
        let data = Arc::into_raw(self) as *const ();
        // SAFETY: the vtable's functions treat data as the Arc just leaked
        // into it, and keep its count balanced.
        unsafe { Waker::from_raw(RawWaker::new(data, &TASK_WAKER)) }
    }

    /// A waker for this task that borrows `self` instead of holding a count:
    /// no reference-count traffic per poll. It must not outlive `self`;
    /// clones of it are owning wakers as usual.
    fn borrowed_waker(&self) -> std::mem::ManuallyDrop<Waker> {
        // `self` is the pointee of an Arc (tasks are always made in one), so
        // its address is what `Arc::into_raw` would give.
        let data = self as *const TaskWake as *const ();
        // SAFETY: as for `waker`, except that this waker owns no count, so it
        // is wrapped in ManuallyDrop (its drop would release a count it does
        // not have); the caller keeps `self` alive while it is used.
        std::mem::ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(data, &TASK_WAKER)) })
    }

    /// The task `waker` wakes, if it is a task waker of the runtime `remote`
    /// belongs to.
    fn local_task(waker: &Waker, remote: &Arc<Remote>) -> Option<usize> {
        if !std::ptr::eq(waker.vtable(), &TASK_WAKER) {
            return None;
        }
        // SAFETY: a waker with our vtable has an Arc<TaskWake> as data, alive
        // for as long as `waker` is.
        let w = unsafe { &*(waker.data() as *const TaskWake) };
        Arc::ptr_eq(&w.remote, remote).then_some(w.task)
    }

    fn wake_by_ref(&self) {
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
    future: Option<Pin<Box<dyn Future<Output = TaskExit>>>>,
    wake: Arc<TaskWake>,
}

/// What the runtime does when a spawned task panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnhandledPanic {
    /// The panic is caught, the task's [`JoinHandle`] resolves to a
    /// [`JoinError`] carrying it, and the runtime and its other tasks go on.
    #[default]
    Ignore,
    /// The panic is caught and reported through the handle as with
    /// `Ignore`, and then the runtime shuts down: the running `block_on`
    /// ends (`try_block_on` with an error naming the panic, `block_on` by
    /// panicking with it).
    ShutdownRuntime,
}

/// The runtime's state, shared (on its thread) by every future it runs.
pub(crate) struct Core {
    driver: RefCell<Box<dyn Driver>>,
    caps: Capabilities,
    /// Waiters that are not "the task whose id is the op's token".
    redirect: RefCell<HashMap<u64, Redirect>>,
    tasks: RefCell<Slab<Task>>,
    run_queue: RefCell<VecDeque<usize>>,
    remote: Arc<Remote>,
    main_wake: Arc<TaskWake>,
    /// Finished ops announced by the driver, to dispatch.
    records: RefCell<Vec<Ready>>,
    on_panic: Cell<UnhandledPanic>,
    /// The message of a task panic that shuts the runtime down.
    fatal_panic: RefCell<Option<String>>,
    blocking: Arc<blocking::BlockingPool>,
    shutdown: ShutdownToken,
    /// Woken when the last spawned task ends (for `shutdown_timeout`).
    no_tasks: RefCell<Option<Waker>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

impl Core {
    /// Submits `op`. The op stays in the driver's table until its future
    /// takes it back; the runtime keeps no table of its own. Returns the op's
    /// id and its waiter: the id of the task `waker` belongs to, or
    /// [`FOREIGN`] (then the waker is kept in the redirect map).
    #[inline]
    pub(crate) fn submit(
        &self,
        op: Op,
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> Result<(OpId, u64), SubmitError> {
        let waiter = match TaskWake::local_task(waker, &self.remote) {
            Some(t) => t as u64,
            None => FOREIGN,
        };
        let id = self.driver.borrow_mut().submit(op, waiter, deadline)?;
        if waiter == FOREIGN {
            self.redirect
                .borrow_mut()
                .insert(id.to_u64(), Redirect::Wake(waker.clone()));
        }
        Ok((id, waiter))
    }

    /// Submits `op` whose result nobody awaits (a close from `Drop`).
    pub(crate) fn submit_detached(&self, op: Op) -> Result<(), SubmitError> {
        self.driver.borrow_mut().submit(op, DETACHED, None)?;
        Ok(())
    }

    /// Takes the completion of op `id` if it has finished, else makes sure
    /// `waker` is what its completion wakes (`waiter` is what was recorded).
    #[inline]
    pub(crate) fn poll_op(&self, id: OpId, waiter: &mut u64, waker: &Waker) -> Option<Completion> {
        if let Some(c) = self.driver.borrow_mut().take(id) {
            if *waiter == FOREIGN {
                self.redirect.borrow_mut().remove(&id.to_u64());
            }
            return Some(c);
        }
        match TaskWake::local_task(waker, &self.remote) {
            Some(t) if t as u64 == *waiter => {}
            _ => {
                // Polled by another task or a foreign waker: its completion
                // goes there now.
                let mut r = self.redirect.borrow_mut();
                match r.get(&id.to_u64()) {
                    Some(Redirect::Wake(w)) if w.will_wake(waker) => {}
                    _ => {
                        r.insert(id.to_u64(), Redirect::Wake(waker.clone()));
                    }
                }
                *waiter = FOREIGN;
            }
        }
        None
    }

    /// Takes the next result of multishot op `id`, or its completion once
    /// it has ended and every result was taken; else makes sure `waker` is
    /// what its next announcement wakes.
    pub(crate) fn poll_shot(&self, id: OpId, waiter: &mut u64, waker: &Waker) -> ShotPoll {
        let shot = self.driver.borrow_mut().take_shot(id);
        if let Some(s) = shot {
            return ShotPoll::Shot(s);
        }
        match self.poll_op(id, waiter, waker) {
            Some(c) => ShotPoll::Ended(c),
            None => ShotPoll::Pending,
        }
    }

    /// The future of op `id` was dropped: a finished op is discarded now; one
    /// in flight is cancelled, and its completion (and buffer) is discarded
    /// when it arrives.
    pub(crate) fn drop_op(&self, id: OpId) {
        let taken = self.driver.borrow_mut().take(id);
        match taken {
            Some(c) => {
                self.redirect.borrow_mut().remove(&id.to_u64());
                self.discard(c);
            }
            None => {
                self.redirect
                    .borrow_mut()
                    .insert(id.to_u64(), Redirect::Orphan);
                // NotFound only means it finished meanwhile; its record
                // comes, and the redirect discards it then.
                let _ = self.driver.borrow_mut().cancel(id);
            }
        }
    }

    /// Takes op `id` out of the driver and discards it, with any results
    /// of a multishot op nobody took (an accepted fd is closed through the
    /// driver). False if the op has not ended yet.
    fn take_and_discard(&self, id: OpId) -> bool {
        loop {
            let shot = self.driver.borrow_mut().take_shot(id);
            let Some(s) = shot else { break };
            if let Ok(fd) = s.result {
                if s.buf.is_none() && self.submit_detached(Op::Close { fd: fd as RawFd }).is_err() {
                    // SAFETY: the fd was accepted for this op and nobody has it.
                    unsafe { libc::close(fd as RawFd) };
                }
            }
        }
        let taken = self.driver.borrow_mut().take(id);
        match taken {
            Some(c) => {
                self.discard(c);
                true
            }
            None => false,
        }
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Wakes the waiter of each op the driver announced.
    fn dispatch(&self) {
        let mut records = std::mem::take(&mut *self.records.borrow_mut());
        for r in records.drain(..) {
            let redirected = {
                let mut map = self.redirect.borrow_mut();
                if map.is_empty() {
                    None
                } else {
                    map.remove(&r.id.to_u64())
                }
            };
            match (redirected, r.token) {
                (Some(Redirect::Wake(w)), _) => w.wake(),
                (Some(Redirect::Orphan), _) => {
                    if !self.take_and_discard(r.id) {
                        // A multishot op still going: its end comes later.
                        self.redirect
                            .borrow_mut()
                            .insert(r.id.to_u64(), Redirect::Orphan);
                    }
                }
                (None, DETACHED) => {
                    self.take_and_discard(r.id);
                }
                (None, FOREIGN) => {}
                (None, task) => self.wake_local(task as usize),
            }
        }
        let mut mine = self.records.borrow_mut();
        if mine.is_empty() {
            // Keep the allocation for the next turn.
            *mine = records;
        }
    }

    /// Queues task `task` of this runtime to run (once, however often woken).
    fn wake_local(&self, task: usize) {
        let queued = if task == MAIN {
            &self.main_wake.queued
        } else {
            match self.tasks.try_borrow() {
                Ok(tasks) => match tasks.get(task) {
                    // Only this thread sets `queued` to false, so a plain
                    // load then store cannot lose a wake; at worst a remote
                    // wake races in and the task is queued twice, which
                    // costs one spurious poll.
                    Some(t) if t.wake.queued.load(Ordering::Acquire) => return,
                    Some(t) => {
                        t.wake.queued.store(true, Ordering::Release);
                        drop(tasks);
                        self.run_queue.borrow_mut().push_back(task);
                        return;
                    }
                    None => return,
                },
                Err(_) => {
                    // The task table is busy (a spawn in progress): the
                    // queue takes duplicates, so queue without the flag.
                    self.run_queue.borrow_mut().push_back(task);
                    return;
                }
            }
        };
        if !queued.load(Ordering::Acquire) {
            queued.store(true, Ordering::Release);
            self.run_queue.borrow_mut().push_back(task);
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
            (fut, Arc::as_ptr(&task.wake))
        };
        // SAFETY: the task's entry holds an Arc of this TaskWake and stays in
        // the table until this poll has returned: entries are removed only
        // below, after the poll, and by `Runtime::drop`, which never runs
        // during a poll. (A spawn during the poll may move the entry, not the
        // TaskWake it points at.)
        let wake = unsafe { &*wake };
        wake.queued.store(false, Ordering::Release);
        let waker = wake.borrowed_waker();
        let mut cx = Context::from_waker(&waker);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(exit) => {
                let (task, empty) = {
                    let mut tasks = self.tasks.borrow_mut();
                    let t = tasks.remove(id);
                    (t, tasks.is_empty())
                };
                drop(fut);
                drop(task);
                if empty {
                    if let Some(w) = self.no_tasks.borrow_mut().take() {
                        w.wake();
                    }
                }
                if let TaskExit::Panicked(msg) = exit {
                    if self.on_panic.get() == UnhandledPanic::ShutdownRuntime {
                        self.fatal_panic.borrow_mut().get_or_insert(msg);
                    }
                }
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

    /// Closes, through the driver, the fds dropped away from this thread,
    /// and takes in the tasks spawned from other threads.
    /// With `last`, no more are accepted afterwards (the runtime is going).
    fn close_deferred(&self, last: bool) {
        let (fds, dropped_ops, spawns) = {
            let mut c = self.remote.closes.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                c.open = false;
            }
            if c.fds.is_empty() && c.dropped_ops.is_empty() && c.spawns.is_empty() {
                return;
            }
            (
                std::mem::take(&mut c.fds),
                std::mem::take(&mut c.dropped_ops),
                std::mem::take(&mut c.spawns),
            )
        };
        if last {
            drop(spawns); // the runtime is going: their handles report a cancel
        } else if !spawns.is_empty() {
            let me = current().filter(|c| Arc::ptr_eq(&c.remote, &self.remote));
            match me {
                Some(core) => spawns.into_iter().for_each(|s| s(&core)),
                None => drop(spawns),
            }
        }
        for id in dropped_ops {
            self.drop_op(id);
        }
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
        if let Some(fd) = c.op.made_fd(&c.result) {
            if self.submit_detached(Op::Close { fd }).is_err() {
                // SAFETY: the fd was made for this op and nobody else has it.
                unsafe { libc::close(fd) };
            }
        }
        drop(c); // the kernel is done: the buffer may go now
    }

    /// Waits for I/O: blocks only when no task is ready to run.
    fn turn_driver(&self, block: bool) -> io::Result<()> {
        let mut records = self.records.borrow_mut();
        let (min, timeout) = if block {
            (1, None)
        } else {
            (0, Some(std::time::Duration::ZERO))
        };
        self.driver
            .borrow_mut()
            .wait_ready(&mut records, min, timeout)?;
        drop(records);
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
        Self::with_pool(
            driver,
            blocking::BlockingPool::new(DEFAULT_MAX_BLOCKING_THREADS),
        )
    }

    /// A handle to this runtime, to spawn onto it from any thread.
    pub fn handle(&self) -> Handle {
        Handle {
            remote: self.core.remote.clone(),
            blocking: self.core.blocking.clone(),
            shutdown: self.core.shutdown.clone(),
        }
    }

    fn with_pool(driver: Box<dyn Driver>, pool: Arc<blocking::BlockingPool>) -> Runtime {
        let caps = driver.capabilities().clone();
        let remote = Arc::new(Remote {
            queue: Mutex::new(Vec::new()),
            closes: Mutex::new(Closes {
                fds: Vec::new(),
                dropped_ops: Vec::new(),
                spawns: Vec::new(),
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
                redirect: RefCell::new(HashMap::new()),
                tasks: RefCell::new(Slab::new()),
                run_queue: RefCell::new(VecDeque::new()),
                remote,
                main_wake,
                records: RefCell::new(Vec::with_capacity(256)),
                on_panic: Cell::new(UnhandledPanic::Ignore),
                fatal_panic: RefCell::new(None),
                blocking: pool,
                shutdown: ShutdownToken::new(),
                no_tasks: RefCell::new(None),
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
    /// I/O meanwhile. A spawned task that panics is caught (its
    /// [`JoinHandle`] reports it) unless the runtime is set to shut down on
    /// task panics.
    ///
    /// # Panics
    ///
    /// If called from inside another `block_on` on this thread, if the
    /// driver's wait fails, or (under [`UnhandledPanic::ShutdownRuntime`])
    /// if a task panicked.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.try_block_on(future)
            .unwrap_or_else(|e| panic!("ringport runtime: {e}"))
    }

    /// Sets what a task panic does (by default, [`UnhandledPanic::Ignore`]).
    pub fn set_unhandled_panic(&self, policy: UnhandledPanic) {
        self.core.on_panic.set(policy);
    }

    /// Like [`Runtime::block_on`], but a failing driver (or a task panic
    /// under [`UnhandledPanic::ShutdownRuntime`]) is returned as an error
    /// instead of a panic.
    pub fn try_block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        assert!(
            !self.main_running.replace(true),
            "Runtime::block_on called while it is already running"
        );
        let _guard = Enter::new(self.core.clone(), &self.main_running);
        let core = &self.core;
        let mut future = std::pin::pin!(future);
        let main_waker = core.main_wake.clone().waker();
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
            if let Some(msg) = core.fatal_panic.borrow_mut().take() {
                return Err(io::Error::other(format!(
                    "a task panicked and the runtime shuts down on task panics: {msg}"
                )));
            }
            core.drain_remote();
            let idle = core.run_queue.borrow().is_empty()
                && !core.main_wake.queued.load(Ordering::Acquire);
            core.turn_driver(idle)?;
            core.drain_remote();
        }
    }

    /// This runtime's shutdown token (see [`ShutdownToken`]).
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.core.shutdown.clone()
    }

    /// Shuts the runtime down gracefully: triggers its shutdown token, runs
    /// its tasks until they have all ended or `timeout` has passed, then
    /// drops what is left (their ops cancelled, their fds closed through
    /// the driver). Returns how many tasks were still running and dropped.
    pub fn shutdown_timeout(self, timeout: std::time::Duration) -> io::Result<usize> {
        self.core.shutdown.trigger();
        let deadline = Instant::now().checked_add(timeout);
        let core = self.core.clone();
        self.try_block_on(async move {
            let all_ended = std::future::poll_fn(|cx| {
                if core.tasks.borrow().is_empty() {
                    Poll::Ready(())
                } else {
                    *core.no_tasks.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            match deadline {
                Some(d) => {
                    let _ = time::timeout_at(d, all_ended).await;
                }
                None => all_ended.await,
            }
        })?;
        Ok(self.core.tasks.borrow().len())
    }

    /// Runs `f` on this runtime's blocking pool (see [`spawn_blocking`]).
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.core.blocking.spawn(f)
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
        // Completions nobody will collect may hold fds (an accept or open
        // whose future was dropped): the ones already announced are
        // discarded now, through the driver.
        let records = std::mem::take(&mut *self.core.records.borrow_mut());
        for r in records {
            self.core.take_and_discard(r.id);
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

/// The error for an I/O call made with no runtime running on the thread.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::other("no ringport runtime is running on this thread (use Runtime::block_on)")
}

/// The runtime running on this thread, or an error saying there is none.
pub(crate) fn current_or_err() -> io::Result<Rc<Core>> {
    current().ok_or_else(no_runtime)
}

fn spawn_on<F>(core: &Rc<Core>, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let shared = task::Shared::new(None);
    insert_task(core, TaskFuture::new(future, shared.clone()));
    JoinHandle::new(shared)
}

/// Puts a task in the table and queues it.
fn insert_task<F>(core: &Rc<Core>, task: TaskFuture<F>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let mut tasks = core.tasks.borrow_mut();
    let entry = tasks.vacant_entry();
    let id = entry.key();
    let wake = Arc::new(TaskWake {
        task: id,
        queued: AtomicBool::new(true),
        remote: core.remote.clone(),
    });
    task.shared().set_task_waker(wake.clone().waker());
    entry.insert(Task {
        future: Some(Box::pin(task)),
        wake,
    });
    core.run_queue.borrow_mut().push_back(id);
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

#[cfg(test)]
mod send_checks {
    use super::*;

    fn is_send<T: Send>() {}

    /// The I/O types and the op future may move to (and be dropped on)
    /// another thread; their fds and ops go back to their runtime then.
    #[test]
    fn io_types_and_op_futures_are_send() {
        is_send::<File>();
        is_send::<TcpListener>();
        is_send::<TcpStream>();
        is_send::<UdpSocket>();
        is_send::<UnixListener>();
        is_send::<UnixStream>();
        is_send::<PipeReader>();
        is_send::<PipeWriter>();
        is_send::<OpFuture>();
        is_send::<TcpSocket>();
        is_send::<UnixDatagram>();
        is_send::<signal::Signal>();
    }

    fn is_send_sync_clone<T: Send + Sync + Clone>() {}

    /// A handle and a shutdown token go to any thread; a join handle of a
    /// `Send` output may be awaited on another thread.
    #[test]
    fn handles_cross_threads() {
        is_send_sync_clone::<Handle>();
        is_send_sync_clone::<ShutdownToken>();
        is_send::<JoinHandle<u32>>();
        is_send::<JoinError>();
        fn is_sync<T: Sync>() {}
        is_sync::<JoinError>();
    }
}
