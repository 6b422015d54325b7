//! `CompletionPort`: the Windows IOCP programming model, for code ported from
//! Windows — one port, any number of worker threads calling `get`.
//!
//! **Design.** One dedicated ring thread owns the [`Driver`]: io_uring rings
//! set up for a single issuer reject every other thread, and even where they
//! would not, one thread driving one ring is what the kernel is built for.
//! Threads that start operations push them on a submission queue and wake the
//! ring thread through the driver's waker; the ring thread submits them,
//! waits in the kernel, and hands each completion to a waiting worker. No
//! lock is held while the kernel works: the hand-off itself is a short
//! critical section (push an entry, or give it to the most recently parked
//! waiter), and each waiter sleeps on its own condition variable, so a
//! completion wakes exactly one thread — the last one that started waiting
//! (LIFO, as IOCP does, which keeps hot threads hot). A leader/follower
//! scheme was rejected because it makes every waiting thread a potential
//! ring driver, which `SINGLE_ISSUER` forbids.
//!
//! **Semantics.** Every started op yields exactly one entry (errors found
//! when the ring thread submits it arrive as entries, too). At most
//! `concurrency` threads are released at once: a thread counts as running
//! from the moment `get` hands it an entry until it calls `get` again on the
//! same port. A stream send completes only when every byte is sent (the
//! drivers guarantee it), as with `WSASend`. `close` releases every waiter
//! with [`GetError::Closed`], cancels what is in flight, and drops those
//! buffers once the kernel is done with them.

use crate::buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut};
use crate::driver::{Completion, Driver, DriverWaker};
use crate::op::{Offset, Op, OpId, SockAddr};
use slab::Slab;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One completion, as `GetQueuedCompletionStatus` returns it.
#[derive(Debug)]
pub struct PortEntry {
    /// The completion key of the fd (from [`CompletionPort::associate`]) or of
    /// the post.
    pub key: usize,
    /// The caller's token for this operation (the OVERLAPPED).
    pub overlapped: usize,
    /// Bytes transferred (0 on error); for accept, the new socket's fd.
    pub bytes: usize,
    /// The result, with the OS error on failure (`ECANCELED` when cancelled).
    pub status: io::Result<usize>,
    /// The operation with its buffer, given back (`None` for posted entries).
    pub op: Option<Op>,
}

impl PortEntry {
    /// The read buffer, as the caller's type (read and recv).
    pub fn take_read_buf<B: IoBufMut>(&mut self) -> Option<B> {
        let op = self.op.take()?;
        op.into_buf_mut()?.downcast().ok()
    }
    /// The write buffer, as the caller's type (write and send).
    pub fn take_write_buf<B: IoBuf>(&mut self) -> Option<B> {
        let op = self.op.take()?;
        op.into_buf()?.downcast().ok()
    }
}

/// Why `get` returned no entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GetError {
    /// The timeout passed (`WAIT_TIMEOUT`).
    Timeout,
    /// The port was closed (`ERROR_ABANDONED_WAIT_0`).
    Closed,
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GetError::Timeout => "completion port: timed out waiting for a completion",
            GetError::Closed => "completion port: closed",
        })
    }
}

impl std::error::Error for GetError {}

impl From<GetError> for io::Error {
    fn from(e: GetError) -> io::Error {
        let kind = match e {
            GetError::Timeout => io::ErrorKind::TimedOut,
            GetError::Closed => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

/// A parked `get`: the entry handed to it, and its own wake-up.
struct Waiter {
    cv: Condvar,
    entry: Mutex<Option<PortEntry>>,
}

struct State {
    queue: VecDeque<PortEntry>,
    /// Parked getters, most recent last (woken last-in, first-out).
    waiters: Vec<Arc<Waiter>>,
    running: usize,
    closed: bool,
}

enum Cmd {
    Start {
        op: Op,
        key: usize,
        overlapped: usize,
    },
    /// Close an fd through the driver; no entry.
    Close {
        fd: RawFd,
    },
    Cancel {
        fd: RawFd,
        overlapped: Option<usize>,
        reply: mpsc::Sender<usize>,
    },
    Shutdown,
}

struct Shared {
    id: u64,
    concurrency: usize,
    state: Mutex<State>,
    cmds: Mutex<Vec<Cmd>>,
    waker: DriverWaker,
    keys: Mutex<HashMap<RawFd, usize>>,
    closed: AtomicBool,
}

thread_local! {
    /// The ports on which this thread holds a released entry.
    static RUNNING: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

static NEXT_PORT: AtomicU64 = AtomicU64::new(1);

/// The IOCP-style completion port. `Send + Sync`: share it (in an `Arc`, or
/// by reference in scoped threads) among any number of worker threads.
pub struct CompletionPort {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for CompletionPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort")
            .field("concurrency", &self.shared.concurrency)
            .finish()
    }
}

impl CompletionPort {
    /// A port whose driver `make` builds on the port's own ring thread.
    /// `concurrency` 0 means the number of CPUs.
    pub fn with_driver<F>(concurrency: usize, make: F) -> io::Result<CompletionPort>
    where
        F: FnOnce() -> io::Result<Box<dyn Driver>> + Send + 'static,
    {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            concurrency
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringport-port".into())
            .spawn(move || {
                let mut driver = match make() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(Shared {
                    id: NEXT_PORT.fetch_add(1, Ordering::Relaxed),
                    concurrency,
                    state: Mutex::new(State {
                        queue: VecDeque::new(),
                        waiters: Vec::new(),
                        running: 0,
                        closed: false,
                    }),
                    cmds: Mutex::new(Vec::new()),
                    waker: driver.waker(),
                    keys: Mutex::new(HashMap::new()),
                    closed: AtomicBool::new(false),
                });
                let _ = tx.send(Ok(shared.clone()));
                ring_thread(&shared, &mut *driver);
            })?;
        let shared = rx
            .recv()
            .map_err(|_| io::Error::other("the completion port's ring thread died"))??;
        Ok(CompletionPort {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// How many threads may be released at once.
    pub fn concurrency(&self) -> usize {
        self.shared.concurrency
    }

    /// Associates `fd` with `key` (CreateIoCompletionPort on a handle): every
    /// completion of an op on `fd` carries `key`.
    pub fn associate(&self, fd: RawFd, key: usize) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        lock(&self.shared.keys).insert(fd, key);
        Ok(())
    }

    /// Forgets `fd`'s association.
    pub fn disassociate(&self, fd: RawFd) {
        lock(&self.shared.keys).remove(&fd);
    }

    /// closesocket / CloseHandle: disassociates `fd` and closes it through
    /// the port's driver, which first cancels and waits for the fd's ops (their
    /// entries still come). Close fds used with the port this way, not with
    /// `close(2)`: the driver keeps per-fd state that a bare close would leave
    /// behind for the next fd with the same number.
    pub fn close_fd(&self, fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.disassociate(fd);
        lock(&self.shared.cmds).push(Cmd::Close { fd });
        self.shared.waker.wake();
        Ok(())
    }

    /// Starts `op` on an associated fd; its entry carries `overlapped`.
    /// Errors found now (unassociated fd, closed port, bad input) are
    /// returned with no entry; errors found by the kernel come as the entry.
    pub fn start(&self, op: Op, overlapped: usize) -> Result<(), (io::Error, Op)> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err((GetError::Closed.into(), op));
        }
        if let Err(e) = op.validate() {
            return Err((e, op));
        }
        let Some(fd) = op.fd() else {
            return Err((
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "completion port: the op has no fd",
                ),
                op,
            ));
        };
        let Some(key) = lock(&self.shared.keys).get(&fd).copied() else {
            return Err((
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("completion port: fd {fd} is not associated with this port"),
                ),
                op,
            ));
        };
        lock(&self.shared.cmds).push(Cmd::Start {
            op,
            key,
            overlapped,
        });
        self.shared.waker.wake();
        Ok(())
    }

    /// ReadFile at `offset` into `buf` (`Offset::Current` for a stream; a
    /// plain `u64` is an explicit offset).
    pub fn read<B: IoBufMut>(
        &self,
        fd: RawFd,
        offset: impl Into<Offset>,
        buf: B,
        overlapped: usize,
    ) -> io::Result<()> {
        let op = Op::Read {
            fd,
            offset: offset.into(),
            buf: AnyBufMut::new(buf),
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// WriteFile of `buf` at `offset` (`Offset::Current` for a stream; a
    /// plain `u64` is an explicit offset).
    pub fn write<B: IoBuf>(
        &self,
        fd: RawFd,
        offset: impl Into<Offset>,
        buf: B,
        overlapped: usize,
    ) -> io::Result<()> {
        let op = Op::Write {
            fd,
            offset: offset.into(),
            buf: AnyBuf::new(buf),
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// WSARecv into `buf`.
    pub fn recv<B: IoBufMut>(&self, fd: RawFd, buf: B, overlapped: usize) -> io::Result<()> {
        let op = Op::Recv {
            fd,
            buf: AnyBufMut::new(buf),
            flags: 0,
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// WSASend of `buf`: the entry comes when every byte is sent, or on error.
    pub fn send<B: IoBuf>(&self, fd: RawFd, buf: B, overlapped: usize) -> io::Result<()> {
        let op = Op::Send {
            fd,
            buf: AnyBuf::new(buf),
            flags: 0,
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// AcceptEx on a listening socket: the entry's `bytes` is the new fd.
    pub fn accept(&self, listener: RawFd, overlapped: usize) -> io::Result<()> {
        let op = Op::Accept {
            fd: listener,
            addr: Box::new(SockAddr::empty()),
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// ConnectEx of `fd` to `addr`.
    pub fn connect(
        &self,
        fd: RawFd,
        addr: std::net::SocketAddr,
        overlapped: usize,
    ) -> io::Result<()> {
        let op = Op::Connect {
            fd,
            addr: Box::new(SockAddr::from(addr)),
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// PostQueuedCompletionStatus: an entry delivered unchanged.
    pub fn post(&self, bytes: usize, key: usize, overlapped: usize) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(GetError::Closed.into());
        }
        deliver(
            &self.shared,
            PortEntry {
                key,
                overlapped,
                bytes,
                status: Ok(bytes),
                op: None,
            },
        );
        Ok(())
    }

    /// CancelIoEx: cancels the ops on `fd` (only the one with `overlapped`,
    /// if given). Each still delivers its entry (`ECANCELED`, or its real
    /// result if it had finished). Returns how many were reached; `NotFound`
    /// (ERROR_NOT_FOUND) when none was.
    pub fn cancel(&self, fd: RawFd, overlapped: Option<usize>) -> io::Result<usize> {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.cmds).push(Cmd::Cancel {
            fd,
            overlapped,
            reply: tx,
        });
        self.shared.waker.wake();
        let n = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("completion port: the ring thread did not answer"))?;
        if n == 0 {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "completion port: no operation matched (ERROR_NOT_FOUND)",
            ))
        } else {
            Ok(n)
        }
    }

    /// GetQueuedCompletionStatus: the next entry, waiting at most `timeout`
    /// (`None`: forever). A thread holding an entry from an earlier `get`
    /// stops counting as running when it calls this again.
    pub fn get(&self, timeout: Option<Duration>) -> Result<PortEntry, GetError> {
        let s = &self.shared;
        let end = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&s.state);
        self.release_this_thread(&mut st);
        if let Some(e) = self.take(&mut st) {
            return Ok(e);
        }
        if st.closed {
            return Err(GetError::Closed);
        }
        let me = Arc::new(Waiter {
            cv: Condvar::new(),
            entry: Mutex::new(None),
        });
        st.waiters.push(me.clone());
        loop {
            if let Some(e) = lock(&me.entry).take() {
                self.mark_running();
                return Ok(e);
            }
            if st.closed {
                st.waiters.retain(|w| !Arc::ptr_eq(w, &me));
                return Err(GetError::Closed);
            }
            let left = match end {
                Some(e) => {
                    let l = e.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        st.waiters.retain(|w| !Arc::ptr_eq(w, &me));
                        // An entry may have been handed over just now.
                        if let Some(e) = lock(&me.entry).take() {
                            self.mark_running();
                            return Ok(e);
                        }
                        return Err(GetError::Timeout);
                    }
                    Some(l)
                }
                None => None,
            };
            st = match left {
                Some(l) => {
                    me.cv
                        .wait_timeout(st, l)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => me.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// GetQueuedCompletionStatusEx: up to `max` entries into `out`, waiting
    /// at most `timeout` for the first. Counts as one running thread.
    pub fn get_many(
        &self,
        out: &mut Vec<PortEntry>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        let first = self.get(timeout)?;
        out.push(first);
        let mut st = lock(&self.shared.state);
        let mut n = 1;
        while n < max.max(1) {
            match st.queue.pop_front() {
                Some(e) => {
                    out.push(e);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Closes the port: waiters return [`GetError::Closed`], in-flight ops
    /// are cancelled and their buffers dropped once the kernel is done, and
    /// the ring thread ends. Idempotent.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            st.queue.clear();
            for w in st.waiters.drain(..) {
                w.cv.notify_one();
            }
        }
        lock(&self.shared.cmds).push(Cmd::Shutdown);
        self.shared.waker.wake();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn release_this_thread(&self, st: &mut State) {
        let id = self.shared.id;
        let was = RUNNING.with(|r| r.borrow_mut().remove(&id));
        if was {
            st.running = st.running.saturating_sub(1);
        }
    }

    fn mark_running(&self) {
        let id = self.shared.id;
        RUNNING.with(|r| {
            r.borrow_mut().insert(id);
        });
    }

    /// Takes a queued entry if the concurrency limit allows.
    fn take(&self, st: &mut State) -> Option<PortEntry> {
        if st.running >= self.shared.concurrency {
            return None;
        }
        let e = st.queue.pop_front()?;
        st.running += 1;
        self.mark_running();
        Some(e)
    }
}

impl Drop for CompletionPort {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives `e` to the most recently parked waiter if the limit allows, else queues it.
fn deliver(s: &Shared, e: PortEntry) {
    let mut st = lock(&s.state);
    if st.closed {
        return; // dropped here: its buffer goes once, the kernel being done
    }
    if st.running < s.concurrency {
        if let Some(w) = st.waiters.pop() {
            st.running += 1;
            *lock(&w.entry) = Some(e);
            w.cv.notify_one();
            return;
        }
    }
    st.queue.push_back(e);
}

/// What the ring thread remembers of each op in flight.
struct InFlight {
    id: OpId,
    fd: RawFd,
    key: usize,
    overlapped: usize,
    /// The port's own op (a close): no entry.
    internal: bool,
}

fn ring_thread(s: &Shared, driver: &mut dyn Driver) {
    let mut table: Slab<InFlight> = Slab::new();
    let mut out: Vec<Completion> = Vec::new();
    let mut shutting_down = false;
    loop {
        let cmds = std::mem::take(&mut *lock(&s.cmds));
        for cmd in cmds {
            match cmd {
                Cmd::Start {
                    op,
                    key,
                    overlapped,
                } if !shutting_down => {
                    let fd = op.fd().unwrap_or(-1);
                    let entry = table.vacant_entry();
                    let token = entry.key() as u64;
                    match driver.submit(op, token, None) {
                        Ok(id) => {
                            entry.insert(InFlight {
                                id,
                                fd,
                                key,
                                overlapped,
                                internal: false,
                            });
                        }
                        Err(e) => deliver(
                            s,
                            PortEntry {
                                key,
                                overlapped,
                                bytes: 0,
                                status: Err(e.error),
                                op: Some(e.op),
                            },
                        ),
                    }
                }
                Cmd::Start { .. } => {}
                Cmd::Close { fd } => {
                    let entry = table.vacant_entry();
                    let token = entry.key() as u64;
                    if let Ok(id) = driver.submit(Op::Close { fd }, token, None) {
                        entry.insert(InFlight {
                            id,
                            fd,
                            key: 0,
                            overlapped: 0,
                            internal: true,
                        });
                    }
                }
                Cmd::Cancel {
                    fd,
                    overlapped,
                    reply,
                } => {
                    let mut n = 0;
                    for (_, f) in table.iter() {
                        if f.fd == fd
                            && !f.internal
                            && overlapped.is_none_or(|o| o == f.overlapped)
                            && driver.cancel(f.id).is_ok()
                        {
                            n += 1;
                        }
                    }
                    let _ = reply.send(n);
                }
                Cmd::Shutdown => {
                    shutting_down = true;
                    for (_, f) in table.iter() {
                        let _ = driver.cancel(f.id);
                    }
                }
            }
        }
        if shutting_down && table.is_empty() {
            return;
        }
        let timeout = if shutting_down {
            Some(Duration::from_millis(50))
        } else {
            None
        };
        if driver.wait(&mut out, 1, timeout).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        for c in out.drain(..) {
            let Some(f) = table.try_remove(c.token as usize) else {
                continue;
            };
            if shutting_down || f.internal {
                continue; // the buffer drops here, once: the kernel is done
            }
            let bytes = *c.result.as_ref().unwrap_or(&0);
            deliver(
                s,
                PortEntry {
                    key: f.key,
                    overlapped: f.overlapped,
                    bytes,
                    status: c.result,
                    op: Some(c.op),
                },
            );
        }
    }
}
