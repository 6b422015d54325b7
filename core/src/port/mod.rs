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
//! The ring thread also runs the port's composite operations (accept with a
//! first receive, send of a file with head and tail), each a short chain of
//! driver ops that ends in one entry, and the port's timers (a deadline
//! table it checks before every wait, so a timer costs no thread).
//!
//! **Semantics.** Every started op yields exactly one entry (errors found
//! when the ring thread submits it arrive as entries, too). At most
//! `concurrency` threads are released at once. A thread holds a *running
//! slot* from the moment `get` hands it an entry until it leaves the port:
//! it calls `get` again (on this port or another), it calls
//! [`CompletionPort::release_slot`] (or runs blocking work inside
//! [`CompletionPort::blocking`]), or it ends — by returning or by a panic
//! that unwinds it (its thread-local record gives the slot back). A stream send completes only when every byte is sent (the
//! drivers guarantee it), as with `WSASend`. `close` releases every waiter
//! with [`GetError::Closed`], cancels what is in flight, and hands every
//! entry nobody took to the drain callback (or closes the fd it made),
//! within [`SHUTDOWN_LIMIT`].

mod ring;

use crate::buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut};
use crate::driver::{Driver, DriverWaker};
use crate::op::{Offset, Op, SockAddr};
use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `close` waits, after cancelling everything in flight, for the
/// kernel to hand the operations back. Whatever is still out then is left to
/// the driver's drop (which never frees a buffer the kernel may touch), and
/// the fds those operations made are closed after it.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);

/// What made the fd an entry owns.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Made {
    Accept,
    Open,
}

/// One completion, as `GetQueuedCompletionStatus` returns it.
#[derive(Debug)]
pub struct PortEntry {
    /// The completion key of the fd (from [`CompletionPort::associate`]), of
    /// the post or timer, or the one given to [`CompletionPort::start_keyed`].
    pub key: usize,
    /// The caller's token for this operation (the OVERLAPPED).
    pub overlapped: usize,
    /// Bytes transferred (0 on error); for accept and open, the new fd; for
    /// [`CompletionPort::accept_with_data`], the bytes of the first receive;
    /// for a timer, how many periods passed since it last fired (1 unless
    /// the port fell behind).
    pub bytes: usize,
    /// The result, with the OS error on failure (`ECANCELED` when cancelled).
    pub status: io::Result<usize>,
    /// The operation with its buffer, given back (`None` for posted and timer
    /// entries and for [`CompletionPort::send_file`]).
    pub op: Option<Op>,
    made: Option<(RawFd, Made)>,
    peer: Option<SocketAddr>,
}

impl PortEntry {
    fn new(key: usize, overlapped: usize, status: io::Result<usize>, op: Option<Op>) -> PortEntry {
        let bytes = *status.as_ref().unwrap_or(&0);
        let made = op.as_ref().and_then(|o| {
            let kind = match o {
                Op::Accept { .. } => Made::Accept,
                _ => Made::Open,
            };
            o.made_fd(&status).map(|fd| (fd, kind))
        });
        let peer = match (&op, made) {
            (Some(Op::Accept { addr, .. }), Some(_)) => addr.as_socket(),
            _ => None,
        };
        PortEntry {
            key,
            overlapped,
            bytes,
            status,
            op,
            made,
            peer,
        }
    }

    /// The read buffer, as the caller's type (read, recv, and the first
    /// receive of [`CompletionPort::accept_with_data`]).
    pub fn take_read_buf<B: IoBufMut>(&mut self) -> Option<B> {
        let op = self.op.take()?;
        op.into_buf_mut()?.downcast().ok()
    }

    /// The write buffer, as the caller's type (write and send).
    pub fn take_write_buf<B: IoBuf>(&mut self) -> Option<B> {
        let op = self.op.take()?;
        op.into_buf()?.downcast().ok()
    }

    /// The socket an accept made (plain [`CompletionPort::accept`] or
    /// [`CompletionPort::accept_with_data`]). The entry's receiver owns it:
    /// associate it and use it, or close it with [`CompletionPort::close_fd`].
    /// With `accept_with_data` it is set whenever the accept itself
    /// succeeded — also when the first receive then failed (`status` holds
    /// that error), so the socket is never lost.
    pub fn accepted_fd(&self) -> Option<RawFd> {
        match self.made {
            Some((fd, Made::Accept)) => Some(fd),
            _ => None,
        }
    }

    /// The peer address of an accepted socket (IPv4 or IPv6; `None` for
    /// Unix-domain peers and for entries that are not accepts). This is what
    /// `GetAcceptExSockaddrs` extracts on Windows.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The fd this entry's operation made — an accepted socket or an opened
    /// file — which the receiver now owns. `None` if the op makes no fd or
    /// failed before making one.
    pub fn new_fd(&self) -> Option<RawFd> {
        self.made.map(|(fd, _)| fd)
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

/// The file part of [`CompletionPort::send_file`] (TransmitFile's file
/// handle, byte range and `TRANSMIT_FILE_BUFFERS`).
#[derive(Debug)]
pub struct SendFile {
    file: RawFd,
    offset: u64,
    len: Option<u64>,
    head: Option<AnyBuf>,
    tail: Option<AnyBuf>,
    chunk: usize,
}

impl SendFile {
    /// The default size of the buffer the port reads the file through.
    pub const CHUNK: usize = 64 * 1024;

    /// Sends `len` bytes of `file` from `offset` (`None`: up to the end of
    /// the file). `file` is read at explicit offsets, so its position does
    /// not move, and it need not be associated with the port.
    pub fn new(file: RawFd, offset: u64, len: Option<u64>) -> SendFile {
        SendFile {
            file,
            offset,
            len,
            head: None,
            tail: None,
            chunk: SendFile::CHUNK,
        }
    }
    /// Bytes sent before the file (an HTTP header, say).
    pub fn head<B: IoBuf>(mut self, buf: B) -> SendFile {
        self.head = Some(AnyBuf::new(buf));
        self
    }
    /// Bytes sent after the file.
    pub fn tail<B: IoBuf>(mut self, buf: B) -> SendFile {
        self.tail = Some(AnyBuf::new(buf));
        self
    }
    /// The size of the port's read buffer (at least 1; default [`SendFile::CHUNK`]).
    pub fn chunk_size(mut self, n: usize) -> SendFile {
        self.chunk = n.max(1);
        self
    }
}

/// A port timer, for [`CompletionPort::cancel_timer`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

/// A parked `get`: the entry handed to it, and its own wake-up.
struct Waiter {
    cv: Condvar,
    entry: Mutex<Option<PortEntry>>,
}

struct State {
    queue: VecDeque<PortEntry>,
    /// Parked getters, most recent last (woken last-in, first-out).
    waiters: Vec<Arc<Waiter>>,
    /// Threads holding a running slot.
    running: usize,
    closed: bool,
}

/// What a `start` asks the ring thread to run.
enum Job {
    Op(Op),
    AcceptWithData { listener: RawFd, buf: AnyBufMut },
    SendFile { sock: RawFd, spec: SendFile },
}

enum Cmd {
    Start {
        job: Job,
        key: usize,
        overlapped: usize,
    },
    /// Close an fd through the driver; no entry.
    Close { fd: RawFd },
    Cancel {
        fd: RawFd,
        overlapped: Option<usize>,
        reply: mpsc::Sender<usize>,
    },
    /// Cancel everything, send every entry nobody will take to `drain`, end.
    Shutdown { drain: mpsc::Sender<PortEntry> },
}

struct Cmds {
    list: Vec<Cmd>,
    /// The ring thread has ended and its driver is gone.
    done: bool,
    /// Ends the ring thread's wait; dropped (with the fd it may hold) when
    /// the ring thread ends, so a closed port holds no fd.
    waker: Option<DriverWaker>,
}

struct Timer {
    due: Instant,
    period: Option<Duration>,
    key: usize,
    overlapped: usize,
}

#[derive(Default)]
struct Timers {
    next_id: u64,
    by_id: HashMap<u64, Timer>,
    /// (due, id), earliest first; an item whose timer moved or went is stale.
    heap: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
}

struct Shared {
    id: u64,
    concurrency: usize,
    state: Mutex<State>,
    cmds: Mutex<Cmds>,
    keys: Mutex<HashMap<RawFd, usize>>,
    closed: AtomicBool,
    timers: Mutex<Timers>,
}

impl Shared {
    /// Gives one running slot back and lets a parked waiter take a queued
    /// entry with it.
    fn release_one(&self) {
        let mut st = lock(&self.state);
        st.running = st.running.saturating_sub(1);
        dispatch(&mut st, self.concurrency);
    }

    /// Queues a command for the ring thread; the command comes back when
    /// the ring thread has ended.
    fn push(&self, cmd: Cmd) -> Option<Cmd> {
        let waker = {
            let mut c = lock(&self.cmds);
            if c.done {
                return Some(cmd);
            }
            c.list.push(cmd);
            c.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
        None
    }

    /// Ends the ring thread's current wait (to look at the timers again).
    fn wake(&self) {
        let waker = lock(&self.cmds).waker.clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The ports on which this thread holds a running slot. Dropped when the
/// thread ends (returns or unwinds from a panic): each slot goes back then.
struct Held(RefCell<Vec<(u64, Weak<Shared>)>>);

impl Drop for Held {
    fn drop(&mut self) {
        for (_, port) in self.0.take() {
            if let Some(s) = port.upgrade() {
                s.release_one();
            }
        }
    }
}

thread_local! {
    static HELD: Held = const { Held(RefCell::new(Vec::new())) };
}

/// Records that this thread holds a slot of `s`; `false` if the thread is
/// ending and cannot keep a record (the caller then gives the slot back).
fn mark_held(s: &Arc<Shared>) -> bool {
    HELD.try_with(|h| {
        let mut h = h.0.borrow_mut();
        if !h.iter().any(|(id, _)| *id == s.id) {
            h.push((s.id, Arc::downgrade(s)));
        }
    })
    .is_ok()
}

/// Forgets this thread's slot of port `id`; whether it held one.
fn take_held(id: u64) -> bool {
    HELD.try_with(|h| {
        let mut h = h.0.borrow_mut();
        let before = h.len();
        h.retain(|(p, _)| *p != id);
        h.len() != before
    })
    .unwrap_or(false)
}

/// Gives back this thread's slots on every port but `id` (a thread waits
/// on one port at a time: waiting on this one leaves the others, as on
/// Windows). Called with no port's state locked.
fn leave_other_ports(id: u64) {
    let others: Vec<Weak<Shared>> = HELD
        .try_with(|h| {
            let mut h = h.0.borrow_mut();
            let mut gone = Vec::new();
            h.retain(|(p, w)| {
                if *p == id {
                    true
                } else {
                    gone.push(w.clone());
                    false
                }
            });
            gone
        })
        .unwrap_or_default();
    for port in others {
        if let Some(s) = port.upgrade() {
            s.release_one();
        }
    }
}

static NEXT_PORT: AtomicU64 = AtomicU64::new(1);

/// The end of the ring thread, run when it returns and when it unwinds from
/// a panic, so that a port whose ring thread died still closes: the driver
/// goes first (fds closed after it have no driver state left behind), then
/// the port stops taking commands — which drops the drain sender a `close`
/// waits on — and the fds nobody else will close are closed.
struct RingEnd {
    shared: Arc<Shared>,
    driver: Option<Box<dyn Driver>>,
    /// Fds made by ops still out when the ring thread gave up waiting.
    stranded: Vec<RawFd>,
}

impl Drop for RingEnd {
    fn drop(&mut self) {
        drop(self.driver.take());
        let late = {
            let mut c = lock(&self.shared.cmds);
            c.done = true;
            c.waker = None;
            std::mem::take(&mut c.list)
        };
        let late = late.into_iter().filter_map(|c| match c {
            Cmd::Close { fd } => Some(fd),
            _ => None,
        });
        for fd in self.stranded.drain(..).chain(late) {
            // SAFETY: the fd was made by an op of this port (or handed to
            // close_fd) and the driver that used it is gone; nothing else
            // closes it.
            unsafe { libc::close(fd) };
        }
        // A waiter must not wait for entries that will never come. (The
        // queue stays for `close`, which still hands it over.)
        let mut st = lock(&self.shared.state);
        st.closed = true;
        for w in st.waiters.drain(..) {
            w.cv.notify_one();
        }
    }
}

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
                let driver = match make() {
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
                    cmds: Mutex::new(Cmds {
                        list: Vec::new(),
                        done: false,
                        waker: Some(driver.waker()),
                    }),
                    keys: Mutex::new(HashMap::new()),
                    closed: AtomicBool::new(false),
                    timers: Mutex::new(Timers::default()),
                });
                let _ = tx.send(Ok(shared.clone()));
                let mut end = RingEnd {
                    shared,
                    driver: Some(driver),
                    stranded: Vec::new(),
                };
                if let Some(d) = end.driver.as_mut() {
                    end.stranded = ring::run(&end.shared, &mut **d);
                }
                // `end` drops here, or while a panic unwinds this thread.
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

    /// How many entries are queued, completed but not yet taken by `get`.
    pub fn queued(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// How many threads are parked in `get`.
    pub fn waiting(&self) -> usize {
        lock(&self.shared.state).waiters.len()
    }

    /// How many threads hold a running slot (at most `concurrency`, except
    /// while threads come back from [`CompletionPort::blocking`]).
    pub fn running(&self) -> usize {
        lock(&self.shared.state).running
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
    /// behind for the next fd with the same number. After the port has
    /// closed (its driver is gone) this closes `fd` directly.
    pub fn close_fd(&self, fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.disassociate(fd);
        if self.shared.push(Cmd::Close { fd }).is_some() {
            // SAFETY: the caller hands us `fd` to close; the driver that
            // used it is gone, so no driver state refers to it.
            if unsafe { libc::close(fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Starts `op`; its entry carries `overlapped` and the key of the op's fd
    /// (which must be associated), or key 0 for an op without an fd
    /// (`OpenAt`, `Timeout`, `Nop`; see [`CompletionPort::start_keyed`] to
    /// choose the key). Errors found now (unassociated fd, closed port, bad
    /// input) are returned with the op and no entry; errors found by the
    /// kernel come as the entry.
    pub fn start(&self, op: Op, overlapped: usize) -> Result<(), (io::Error, Op)> {
        let key = match op.fd() {
            Some(fd) => match self.key_of(fd) {
                Ok(k) => k,
                Err(e) => return Err((e, op)),
            },
            None => 0,
        };
        self.start_keyed(op, key, overlapped)
    }

    /// Starts `op` with an explicit completion key: for fd-less ops (an
    /// open), and for an fd that is not associated (a file read once, which
    /// Windows would make you associate first).
    pub fn start_keyed(
        &self,
        op: Op,
        key: usize,
        overlapped: usize,
    ) -> Result<(), (io::Error, Op)> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err((GetError::Closed.into(), op));
        }
        if let Err(e) = op.validate() {
            return Err((e, op));
        }
        match self.push_job(Job::Op(op), key, overlapped) {
            None => Ok(()),
            Some(Job::Op(op)) => Err((GetError::Closed.into(), op)),
            Some(_) => unreachable!("an op job comes back as itself"),
        }
    }

    /// Queues a job; the job comes back if the port has closed.
    fn push_job(&self, job: Job, key: usize, overlapped: usize) -> Option<Job> {
        match self.shared.push(Cmd::Start {
            job,
            key,
            overlapped,
        }) {
            None => None,
            Some(Cmd::Start { job, .. }) => Some(job),
            Some(_) => unreachable!("a start comes back as itself"),
        }
    }

    /// Queues a composite job, or says the port has closed.
    fn push_composite(&self, job: Job, key: usize, overlapped: usize) -> io::Result<()> {
        match self.push_job(job, key, overlapped) {
            None => Ok(()),
            Some(_) => Err(GetError::Closed.into()),
        }
    }

    fn key_of(&self, fd: RawFd) -> io::Result<usize> {
        lock(&self.shared.keys).get(&fd).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("completion port: fd {fd} is not associated with this port"),
            )
        })
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

    /// AcceptEx on a listening socket: the entry's `bytes` is the new fd,
    /// also given by [`PortEntry::accepted_fd`], with the peer in
    /// [`PortEntry::peer_addr`].
    pub fn accept(&self, listener: RawFd, overlapped: usize) -> io::Result<()> {
        let op = Op::Accept {
            fd: listener,
            addr: Box::new(SockAddr::empty()),
        };
        self.start(op, overlapped).map_err(|(e, _)| e)
    }

    /// AcceptEx with a receive length: accepts a connection, then receives
    /// its first bytes into `buf`, and delivers one entry for both (key of
    /// the listener): [`PortEntry::accepted_fd`] the new socket,
    /// [`PortEntry::peer_addr`] the peer, `bytes` how much the first receive
    /// got (0 if the peer closed without sending), the buffer through
    /// [`PortEntry::take_read_buf`]. If the accept fails, `status` is its
    /// error and there is no fd. If the receive fails, `status` is that error
    /// and `accepted_fd` is still set: close it. As on Windows, a peer that
    /// connects and sends nothing holds this accept until it sends or closes
    /// (or `cancel(listener, ..)`); keep enough accepts posted. The new
    /// socket is not associated: associate it before starting ops on it.
    pub fn accept_with_data<B: IoBufMut>(
        &self,
        listener: RawFd,
        buf: B,
        overlapped: usize,
    ) -> io::Result<()> {
        self.check_open()?;
        crate::op::check_fd(listener)?;
        let key = self.key_of(listener)?;
        let job = Job::AcceptWithData {
            listener,
            buf: AnyBufMut::new(buf),
        };
        self.push_composite(job, key, overlapped)
    }

    /// TransmitFile on a connected stream socket: sends `spec`'s head, then
    /// its file range, then its tail, in order, and delivers one entry (key
    /// of `sock`) whose `bytes` and `status` are the total sent. The port
    /// reads the file into a buffer it owns and sends each piece (a send
    /// completes only when all of it is sent), so nothing else may send on
    /// `sock` meanwhile, as with TransmitFile. If the file ends before a
    /// given `len`, the entry's status is `UnexpectedEof` and `bytes` says
    /// how much was sent (the tail is not); any other error ends it the same
    /// way, with the OS error. [`CompletionPort::cancel`] on `sock` reaches
    /// it. `op` is `None`: the head and tail buffers are dropped.
    pub fn send_file(&self, sock: RawFd, spec: SendFile, overlapped: usize) -> io::Result<()> {
        self.check_open()?;
        crate::op::check_fd(sock)?;
        crate::op::check_fd(spec.file)?;
        if spec.offset > Offset::MAX || spec.len.is_some_and(|l| l > Offset::MAX - spec.offset) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "completion port: send_file range goes beyond the largest file offset",
            ));
        }
        let key = self.key_of(sock)?;
        self.push_composite(Job::SendFile { sock, spec }, key, overlapped)
    }

    /// Opens `path` (`openat` from the working directory, close-on-exec
    /// added); the entry (with `key`) carries the new fd in `bytes` and
    /// [`PortEntry::new_fd`]. Associate it before using it through the port.
    pub fn open(
        &self,
        path: &std::path::Path,
        flags: i32,
        mode: u32,
        key: usize,
        overlapped: usize,
    ) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "completion port: the path contains a NUL byte",
            )
        })?;
        let op = Op::OpenAt {
            dir: libc::AT_FDCWD,
            path,
            flags,
            mode,
        };
        self.start_keyed(op, key, overlapped).map_err(|(e, _)| e)
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
        self.check_open()?;
        // A posted entry owns nothing: if the port closed meanwhile, it goes.
        let _ = deliver(
            &self.shared,
            PortEntry::new(key, overlapped, Ok(bytes), None),
        );
        Ok(())
    }

    /// A timer that posts an entry with `key` and `overlapped` after `due`,
    /// then every `period` if one is given (CreateTimerQueueTimer whose
    /// callback posts a packet, without the timer thread). The port's ring
    /// thread keeps the deadlines; a periodic timer that falls behind posts
    /// once with `bytes` = the periods that passed. Cancel it with
    /// [`CompletionPort::cancel_timer`]; `close` ends every timer.
    pub fn set_timer(
        &self,
        due: Duration,
        period: Option<Duration>,
        key: usize,
        overlapped: usize,
    ) -> io::Result<TimerId> {
        self.check_open()?;
        if period.is_some_and(|p| p.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "completion port: a periodic timer needs a period above zero",
            ));
        }
        let due = Instant::now()
            .checked_add(due)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let id = {
            let mut t = lock(&self.shared.timers);
            t.next_id += 1;
            let id = t.next_id;
            t.by_id.insert(
                id,
                Timer {
                    due,
                    period,
                    key,
                    overlapped,
                },
            );
            t.heap.push(std::cmp::Reverse((due, id)));
            id
        };
        self.shared.wake();
        Ok(TimerId(id))
    }

    /// Stops a timer; whether it was still set (a one-shot timer that fired
    /// is not). An entry it posted before is not taken back.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        lock(&self.shared.timers).by_id.remove(&id.0).is_some()
    }

    /// CancelIoEx: cancels the ops on `fd` (only the one with `overlapped`,
    /// if given). Each still delivers its entry (`ECANCELED`, or its real
    /// result if it had finished). Returns how many were reached; `NotFound`
    /// (ERROR_NOT_FOUND) when none was.
    pub fn cancel(&self, fd: RawFd, overlapped: Option<usize>) -> io::Result<usize> {
        let (tx, rx) = mpsc::channel();
        let n = match self.shared.push(Cmd::Cancel {
            fd,
            overlapped,
            reply: tx,
        }) {
            None => rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| io::Error::other("completion port: the ring thread did not answer"))?,
            Some(_) => 0,
        };
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
    /// (`None`: forever). A thread holding a running slot from an earlier
    /// `get` gives it back when it calls this again — on this port or, as
    /// on Windows, on another one.
    pub fn get(&self, timeout: Option<Duration>) -> Result<PortEntry, GetError> {
        let s = &self.shared;
        let end = timeout.map(|t| Instant::now().checked_add(t));
        leave_other_ports(s.id);
        let mut st = lock(&s.state);
        if take_held(s.id) {
            st.running = st.running.saturating_sub(1);
        }
        if st.running < s.concurrency {
            if let Some(e) = st.queue.pop_front() {
                st.running += 1;
                self.hold(&mut st);
                return Ok(e);
            }
        }
        // (Nothing queued is left for a parked waiter: with a free slot we
        // would have taken it ourselves.)
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
                self.hold(&mut st);
                return Ok(e);
            }
            if st.closed {
                st.waiters.retain(|w| !Arc::ptr_eq(w, &me));
                return Err(GetError::Closed);
            }
            let left = match end {
                Some(Some(e)) => {
                    let l = e.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        st.waiters.retain(|w| !Arc::ptr_eq(w, &me));
                        return Err(GetError::Timeout);
                    }
                    Some(l)
                }
                _ => None,
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

    /// Gives this thread's running slot back without waiting for an entry,
    /// so another worker may run (what Windows does by itself when a running
    /// thread blocks anywhere). Whether the thread held one. The slot is
    /// also given back when the thread calls `get` again or ends.
    pub fn release_slot(&self) -> bool {
        if take_held(self.shared.id) {
            self.shared.release_one();
            true
        } else {
            false
        }
    }

    /// Runs `f` (blocking work: a lock, a synchronous file read, a sleep)
    /// with this thread's running slot given back, so another worker may
    /// take an entry meanwhile; then counts the thread as running again,
    /// even if that exceeds `concurrency` for a while — as Windows does
    /// when a blocked worker wakes. If `f` panics, the slot stays given back.
    pub fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let held = self.release_slot();
        let r = f();
        if held {
            let mut st = lock(&self.shared.state);
            st.running += 1;
            self.hold(&mut st);
        }
        r
    }

    /// Closes the port: waiters return [`GetError::Closed`], in-flight ops
    /// are cancelled and their buffers dropped once the kernel is done, the
    /// timers end and the ring thread ends. Entries nobody took are dropped,
    /// and the fd each made (a completed accept or open) is closed, so a
    /// closed port leaks no socket. Bounded by [`SHUTDOWN_LIMIT`]. Idempotent.
    pub fn close(&self) {
        self.close_and_drain(|e| {
            if let Some(fd) = e.new_fd() {
                let _ = self.close_fd(fd);
            }
        });
    }

    /// Closes the port like [`CompletionPort::close`], but hands every entry
    /// nobody took to `f` (on this thread): the ones queued now, and those of
    /// the cancelled in-flight ops as they come back (within
    /// [`SHUTDOWN_LIMIT`]). `f` owns what each entry made
    /// ([`PortEntry::new_fd`]): keep it (hand the connection to a new port)
    /// or close it ([`CompletionPort::close_fd`] still works here). Only
    /// the first of several concurrent closes drains.
    pub fn close_and_drain(&self, mut f: impl FnMut(PortEntry)) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let queued = {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            for w in st.waiters.drain(..) {
                w.cv.notify_one();
            }
            std::mem::take(&mut st.queue)
        };
        let (tx, rx) = mpsc::channel();
        let _ = self.shared.push(Cmd::Shutdown { drain: tx });
        for e in queued {
            f(e);
        }
        // Ends when the ring thread drops its sender, at the latest after
        // SHUTDOWN_LIMIT.
        for e in rx {
            f(e);
        }
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn check_open(&self) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(GetError::Closed.into())
        } else {
            Ok(())
        }
    }

    /// Records this thread's slot (counted in `st.running` by the caller).
    fn hold(&self, st: &mut State) {
        if !mark_held(&self.shared) {
            // The thread is ending and keeps no record: the slot goes back now.
            st.running = st.running.saturating_sub(1);
        }
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

/// Hands queued entries to parked waiters (most recent first) while slots
/// are free.
fn dispatch(st: &mut State, concurrency: usize) {
    while st.running < concurrency && !st.queue.is_empty() {
        let Some(w) = st.waiters.pop() else { break };
        let e = st.queue.pop_front().expect("checked non-empty");
        st.running += 1;
        *lock(&w.entry) = Some(e);
        w.cv.notify_one();
    }
}

/// Queues `e` and wakes a waiter if a slot is free; the entry comes back if
/// the port is closed (the caller must not lose what it owns).
fn deliver(s: &Shared, e: PortEntry) -> Option<PortEntry> {
    let mut st = lock(&s.state);
    if st.closed {
        return Some(e);
    }
    st.queue.push_back(e);
    dispatch(&mut st, s.concurrency);
    None
}
