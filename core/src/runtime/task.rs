//! What a spawned task leaves behind: its [`JoinHandle`], the
//! [`JoinError`] of a task that panicked or was cancelled, and the wrapper
//! that runs the task's future under `catch_unwind`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Why a task ended without an output: it panicked, or it was cancelled
/// (aborted, or dropped with its runtime). The shape of tokio's `JoinError`.
pub struct JoinError {
    repr: Repr,
}

enum Repr {
    Cancelled,
    // The Mutex makes the error Sync (the payload is only Send), so that it
    // converts into an `io::Error`.
    Panic(Mutex<Box<dyn Any + Send + 'static>>, String),
}

impl JoinError {
    pub(crate) fn cancelled() -> JoinError {
        JoinError {
            repr: Repr::Cancelled,
        }
    }

    pub(crate) fn panic(payload: Box<dyn Any + Send + 'static>) -> JoinError {
        let msg = panic_message(&*payload);
        JoinError {
            repr: Repr::Panic(Mutex::new(payload), msg),
        }
    }

    /// Whether the task was cancelled (aborted, or dropped with its runtime).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled)
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panic(..))
    }

    /// The panic's payload, to inspect it or to resume the panic with
    /// `std::panic::resume_unwind`.
    ///
    /// # Panics
    ///
    /// If the task did not panic (see [`JoinError::try_into_panic`]).
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .expect("JoinError::into_panic on a task that was cancelled, not panicked")
    }

    /// The panic's payload, or the error itself when the task was cancelled.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self.repr {
            Repr::Panic(p, _) => Ok(p.into_inner().unwrap_or_else(|e| e.into_inner())),
            Repr::Cancelled => Err(self),
        }
    }
}

/// The text of a panic payload (`panic!` makes a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled => f.write_str("the task was cancelled"),
            Repr::Panic(_, msg) => write!(f, "the task panicked: {msg}"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled => f.write_str("JoinError::Cancelled"),
            Repr::Panic(_, msg) => write!(f, "JoinError::Panic({msg:?})"),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for io::Error {
    fn from(e: JoinError) -> io::Error {
        io::Error::other(e)
    }
}

/// What a task's handle and its runner share.
pub(crate) struct Shared<T> {
    state: Mutex<JoinState<T>>,
    aborted: AtomicBool,
    finished: AtomicBool,
}

struct JoinState<T> {
    output: Option<Result<T, JoinError>>,
    /// Who awaits the handle.
    joiner: Option<Waker>,
    /// Wakes the task itself (so that an abort is seen at once).
    task: Option<Waker>,
    taken: bool,
}

impl<T> Shared<T> {
    pub(crate) fn new(task: Option<Waker>) -> Arc<Shared<T>> {
        Arc::new(Shared {
            state: Mutex::new(JoinState {
                output: None,
                joiner: None,
                task,
                taken: false,
            }),
            aborted: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, JoinState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_task_waker(&self, w: Waker) {
        let mut s = self.lock();
        if !self.finished.load(Ordering::Acquire) {
            s.task = Some(w);
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Records the task's end (only the first one counts) and wakes the joiner.
    pub(crate) fn complete(&self, out: Result<T, JoinError>) {
        let joiner = {
            let mut s = self.lock();
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            s.output = Some(out);
            s.task = None;
            self.finished.store(true, Ordering::Release);
            s.joiner.take()
        };
        if let Some(w) = joiner {
            w.wake();
        }
    }
}

/// Awaits a spawned task: `Ok(output)`, or a [`JoinError`] if the task
/// panicked or was cancelled. Dropping the handle detaches the task (it
/// runs on); [`JoinHandle::abort`] cancels it.
pub struct JoinHandle<T> {
    shared: Arc<Shared<T>>,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>) -> JoinHandle<T> {
        JoinHandle { shared }
    }

    /// Whether the task has ended (with an output, a panic or a cancel).
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// Cancels the task: its future is dropped on its runtime's thread at
    /// the runtime's next turn (a blocking job that has not started yet is
    /// never run; one that is running runs to its end), and the handle
    /// resolves to a cancelled [`JoinError`]. A task that already ended
    /// keeps its result. May be called from any thread.
    pub fn abort(&self) {
        self.shared.aborted.store(true, Ordering::Release);
        let task = self.shared.lock().task.clone();
        if let Some(w) = task {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.shared.lock();
        match s.output.take() {
            Some(v) => {
                s.taken = true;
                Poll::Ready(v)
            }
            None => {
                assert!(!s.taken, "JoinHandle polled after it resolved");
                match &s.joiner {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.joiner = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

/// How a task's poll ended, for the runtime.
pub(crate) enum TaskExit {
    /// The task ended (with an output, or cancelled).
    Done,
    /// The task panicked; the message is for the runtime's panic policy.
    Panicked(String),
}

/// A spawned future with its handle's shared state: polls the future under
/// `catch_unwind`, honours aborts, and reports a drop before the end (the
/// runtime went away) as a cancel.
pub(crate) struct TaskFuture<F: Future> {
    fut: Option<F>,
    shared: Arc<Shared<F::Output>>,
}

impl<F: Future> TaskFuture<F> {
    pub(crate) fn new(fut: F, shared: Arc<Shared<F::Output>>) -> TaskFuture<F> {
        TaskFuture {
            fut: Some(fut),
            shared,
        }
    }

    pub(crate) fn shared(&self) -> &Shared<F::Output> {
        &self.shared
    }
}

/// Drops `v`, swallowing a panic of its destructor (the task's panic, if
/// any, is what gets reported).
fn drop_quietly<V>(v: V) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(v)));
}

impl<F: Future> Future for TaskFuture<F> {
    type Output = TaskExit;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskExit> {
        // SAFETY: `fut` is never moved out while it is Some: it is polled in
        // place and dropped in place (`Option::take` is used only after the
        // future ended, or to drop it, never to move a live future
        // elsewhere and poll it); `shared` is not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if this.fut.is_none() {
            return Poll::Ready(TaskExit::Done);
        }
        if this.shared.is_aborted() {
            drop_quietly(this.fut.take());
            this.shared.complete(Err(JoinError::cancelled()));
            return Poll::Ready(TaskExit::Done);
        }
        let res = catch_unwind(AssertUnwindSafe(|| {
            let fut = this.fut.as_mut().expect("checked above");
            // SAFETY: see above: the future stays where it is until dropped.
            unsafe { Pin::new_unchecked(fut) }.poll(cx)
        }));
        match res {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                drop_quietly(this.fut.take());
                this.shared.complete(Ok(v));
                Poll::Ready(TaskExit::Done)
            }
            Err(payload) => {
                drop_quietly(this.fut.take());
                let msg = panic_message(&*payload);
                this.shared.complete(Err(JoinError::panic(payload)));
                Poll::Ready(TaskExit::Panicked(msg))
            }
        }
    }
}

impl<F: Future> Drop for TaskFuture<F> {
    fn drop(&mut self) {
        if self.fut.is_some() {
            drop_quietly(self.fut.take());
            self.shared.complete(Err(JoinError::cancelled()));
        }
    }
}
