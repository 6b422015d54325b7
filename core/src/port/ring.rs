//! The port's ring thread: submits what workers start, turns completions
//! into entries, runs the composite operations (accept with a first
//! receive, send of a file) one driver op at a time, fires the timers, and
//! shuts down without losing what an op made.

use super::{deliver, lock, Cmd, Job, Made, PortEntry, SendFile, Shared, SHUTDOWN_LIMIT};
use crate::buf::{AnyBuf, AnyBufMut};
use crate::driver::{cancelled, Completion, Driver};
use crate::op::{Offset, Op, OpId, SockAddr};
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the ring thread remembers of each op in flight.
struct InFlight {
    id: OpId,
    /// The fd `cancel` matches: the op's own, the listener of an accept
    /// with data, the socket of a send_file.
    fd: RawFd,
    key: usize,
    overlapped: usize,
    what: What,
}

enum What {
    /// One op, one entry.
    Plain,
    /// The port's own close: no entry.
    Internal,
    /// An accept with data, accepting (the buffer waits here).
    Accepting { buf: AnyBufMut },
    /// An accept with data, receiving its first bytes on `fd`.
    FirstRecv { fd: RawFd, peer: Option<SocketAddr> },
    /// A send_file at one of its steps.
    SendFile(Box<FileSend>),
}

/// A send_file in progress. The body is a read of the file into the port's
/// buffer, then a send of it, repeated; a splice op can later replace that
/// pair without changing the entry the caller sees.
struct FileSend {
    sock: RawFd,
    file: RawFd,
    /// The next file offset to read.
    next: u64,
    /// Bytes of the file still to send (`None`: up to the end of the file).
    left: Option<u64>,
    tail: Option<AnyBuf>,
    chunk: usize,
    /// Bytes sent so far (head, body and tail).
    total: usize,
    step: Step,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Step {
    Head,
    Read,
    Body,
    Tail,
}

enum Shutdown {
    Running,
    /// Cancelled everything; drains until the table is empty or `until`.
    Draining {
        drain: mpsc::Sender<PortEntry>,
        until: Instant,
    },
}

struct Ring<'a> {
    s: &'a Shared,
    driver: &'a mut dyn Driver,
    table: Slab<InFlight>,
    shutdown: Shutdown,
    /// Entries that found the port closed before the shutdown command came.
    orphans: Vec<PortEntry>,
    /// Composite ops in the table (a close of their fd looks for them).
    composites: usize,
}

/// Runs the ring thread until the port shuts down; returns the fds that
/// ops still out at the shutdown limit had made (the caller closes them
/// once the driver is gone).
pub(super) fn run(s: &Shared, driver: &mut dyn Driver) -> Vec<RawFd> {
    let mut r = Ring {
        s,
        driver,
        table: Slab::new(),
        shutdown: Shutdown::Running,
        orphans: Vec::new(),
        composites: 0,
    };
    let mut out: Vec<Completion> = Vec::new();
    loop {
        let cmds = std::mem::take(&mut lock(&s.cmds).list);
        for cmd in cmds {
            r.command(cmd);
        }
        let next_timer = r.fire_timers();
        let timeout = match &r.shutdown {
            Shutdown::Running => next_timer.map(|t| t.saturating_duration_since(Instant::now())),
            Shutdown::Draining { until, .. } => {
                if r.table.is_empty() || Instant::now() >= *until {
                    return r.stranded();
                }
                Some(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                )
            }
        };
        if r.driver.wait(&mut out, 1, timeout).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        for c in out.drain(..) {
            let Some(f) = r.table.try_remove(c.token as usize) else {
                continue;
            };
            if f.what.is_composite() {
                r.composites -= 1;
            }
            if let Some(e) = r.advance(f, c) {
                r.hand_over(e);
            }
        }
    }
}

impl What {
    /// A composite op, whose current step may be on another fd than the
    /// one `cancel` and `close_fd` name.
    fn is_composite(&self) -> bool {
        matches!(self, What::FirstRecv { .. } | What::SendFile(_))
    }
}

impl Ring<'_> {
    fn draining(&self) -> bool {
        matches!(self.shutdown, Shutdown::Draining { .. })
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start {
                job,
                key,
                overlapped,
            } => {
                if self.draining() {
                    // Started just before the close: never submitted.
                    let op = match job {
                        Job::Op(op) => Some(op),
                        _ => None,
                    };
                    self.hand_over(PortEntry::new(key, overlapped, Err(cancelled()), op));
                    return;
                }
                if let Some(e) = self.start(job, key, overlapped) {
                    self.hand_over(e);
                }
            }
            Cmd::Close { fd } => {
                let f = InFlight {
                    id: OpId::new(0, 0),
                    fd,
                    key: 0,
                    overlapped: 0,
                    what: What::Internal,
                };
                if self.submit(f, Op::Close { fd }).is_some() {
                    // The driver refused the close (say, one is already under
                    // way for this fd); nothing more the port can do.
                }
                // The driver cancels the ops on `fd`; a composite op named by
                // `fd` may be at a step on another fd (the first receive of
                // an accept with data, the file read of a send_file).
                if self.composites > 0 {
                    for (_, f) in self.table.iter() {
                        if f.fd == fd && f.what.is_composite() {
                            let _ = self.driver.cancel(f.id);
                        }
                    }
                }
            }
            Cmd::Cancel {
                fd,
                overlapped,
                reply,
            } => {
                let mut n = 0;
                for (_, f) in self.table.iter() {
                    if f.fd == fd
                        && !matches!(f.what, What::Internal)
                        && overlapped.is_none_or(|o| o == f.overlapped)
                        && self.driver.cancel(f.id).is_ok()
                    {
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            Cmd::Shutdown { drain } => {
                for (_, f) in self.table.iter() {
                    if !matches!(f.what, What::Internal) {
                        let _ = self.driver.cancel(f.id);
                    }
                }
                lock(&self.s.timers).by_id.clear();
                for e in self.orphans.drain(..) {
                    let _ = drain.send(e);
                }
                self.shutdown = Shutdown::Draining {
                    drain,
                    until: Instant::now() + SHUTDOWN_LIMIT,
                };
            }
        }
    }

    /// Submits `op` for `f`; the error entry if the driver refused it.
    fn submit(&mut self, mut f: InFlight, op: Op) -> Option<(InFlight, io::Error, Op)> {
        let slot = self.table.vacant_entry();
        match self.driver.submit(op, slot.key() as u64, None) {
            Ok(id) => {
                f.id = id;
                if f.what.is_composite() {
                    self.composites += 1;
                }
                slot.insert(f);
                None
            }
            Err(e) => Some((f, e.error, e.op)),
        }
    }

    fn start(&mut self, job: Job, key: usize, overlapped: usize) -> Option<PortEntry> {
        let mut f = InFlight {
            id: OpId::new(0, 0),
            fd: -1,
            key,
            overlapped,
            what: What::Plain,
        };
        match job {
            Job::Op(op) => {
                f.fd = op.fd().unwrap_or(-1);
                let (_, err, op) = self.submit(f, op)?;
                Some(PortEntry::new(key, overlapped, Err(err), Some(op)))
            }
            Job::AcceptWithData { listener, buf } => {
                f.fd = listener;
                f.what = What::Accepting { buf };
                let op = Op::Accept {
                    fd: listener,
                    addr: Box::new(SockAddr::empty()),
                };
                let (f, err, _) = self.submit(f, op)?;
                Some(self.accept_failed(f, err))
            }
            Job::SendFile { sock, spec } => {
                let SendFile {
                    file,
                    offset,
                    len,
                    head,
                    tail,
                    chunk,
                } = spec;
                f.fd = sock;
                let fs = FileSend {
                    sock,
                    file,
                    next: offset,
                    left: len,
                    tail,
                    chunk,
                    total: 0,
                    step: Step::Head,
                };
                f.what = What::SendFile(Box::new(fs));
                match head {
                    Some(h) if !h.is_empty() => self.send_file_submit(f, send_op(sock, h)),
                    _ => self.send_file_read(f),
                }
            }
        }
    }

    /// The entry of an accept with data whose accept failed: the buffer
    /// comes back in a receive op that never ran (its fd is the listener's).
    fn accept_failed(&self, f: InFlight, err: io::Error) -> PortEntry {
        let buf = match f.what {
            What::Accepting { buf } => buf,
            _ => unreachable!("only an accepting op fails this way"),
        };
        let op = Op::Recv {
            fd: f.fd,
            buf,
            flags: 0,
        };
        PortEntry::new(f.key, f.overlapped, Err(err), Some(op))
    }

    /// Turns a completion into its entry, or submits the next step of a
    /// composite op (`None` then, or if no entry is due).
    fn advance(&mut self, mut f: InFlight, c: Completion) -> Option<PortEntry> {
        match std::mem::replace(&mut f.what, What::Plain) {
            What::Plain => Some(PortEntry::new(f.key, f.overlapped, c.result, Some(c.op))),
            What::Internal => None,
            What::Accepting { buf } => {
                let (fd, peer) = match (&c.result, &c.op) {
                    (Ok(fd), Op::Accept { addr, .. }) => (*fd as RawFd, addr.as_socket()),
                    _ => {
                        f.what = What::Accepting { buf };
                        let err = c.result.err().unwrap_or_else(cancelled);
                        return Some(self.accept_failed(f, err));
                    }
                };
                let recv = Op::Recv { fd, buf, flags: 0 };
                f.what = What::FirstRecv { fd, peer };
                if self.draining() {
                    // Not worth starting: the port is closing.
                    return Some(first_recv_entry(f, Err(cancelled()), recv));
                }
                let (f, err, op) = self.submit(f, recv)?;
                Some(first_recv_entry(f, Err(err), op))
            }
            What::FirstRecv { fd, peer } => {
                f.what = What::FirstRecv { fd, peer };
                Some(first_recv_entry(f, c.result, c.op))
            }
            What::SendFile(fs) => {
                f.what = What::SendFile(fs);
                self.send_file_step(f, c)
            }
        }
    }

    fn send_file_step(&mut self, mut f: InFlight, c: Completion) -> Option<PortEntry> {
        let What::SendFile(fs) = &mut f.what else {
            unreachable!("a send_file step")
        };
        let n = match c.result {
            Ok(n) => n,
            Err(e) => return Some(send_file_done(f, Err(e))),
        };
        if self.draining() {
            if fs.step != Step::Read {
                fs.total += n;
            }
            return Some(send_file_done(f, Err(cancelled())));
        }
        match fs.step {
            Step::Head => {
                fs.total += n;
                self.send_file_read(f)
            }
            Step::Read => {
                let Some(Ok(mut v)) = c.op.into_buf_mut().map(|b| b.downcast::<Vec<u8>>()) else {
                    unreachable!("the port reads into its own Vec")
                };
                if n == 0 {
                    return match fs.left {
                        Some(left) if left > 0 => {
                            let err = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "send_file: the file ended {left} bytes before the end of \
                                     the range ({} bytes sent)",
                                    fs.total
                                ),
                            );
                            Some(send_file_done(f, Err(err)))
                        }
                        _ => self.send_file_tail(f),
                    };
                }
                let take = fs
                    .left
                    .map_or(n, |l| n.min(l.min(usize::MAX as u64) as usize));
                v.truncate(take);
                fs.next += take as u64;
                if let Some(l) = &mut fs.left {
                    *l -= take as u64;
                }
                fs.step = Step::Body;
                let op = send_op(fs.sock, AnyBuf::new(v));
                self.send_file_submit(f, op)
            }
            Step::Body => {
                fs.total += n;
                self.send_file_read(f)
            }
            Step::Tail => {
                fs.total += n;
                let total = fs.total;
                Some(send_file_done(f, Ok(total)))
            }
        }
    }

    /// Reads the next piece of the file, or goes on to the tail.
    fn send_file_read(&mut self, mut f: InFlight) -> Option<PortEntry> {
        let What::SendFile(fs) = &mut f.what else {
            unreachable!("a send_file step")
        };
        if fs.left == Some(0) {
            return self.send_file_tail(f);
        }
        let cap = fs.left.map_or(fs.chunk, |l| {
            fs.chunk.min(l.min(usize::MAX as u64) as usize)
        });
        fs.step = Step::Read;
        let op = Op::Read {
            fd: fs.file,
            offset: Offset::At(fs.next),
            buf: AnyBufMut::new(Vec::<u8>::with_capacity(cap)),
        };
        self.send_file_submit(f, op)
    }

    fn send_file_tail(&mut self, mut f: InFlight) -> Option<PortEntry> {
        let What::SendFile(fs) = &mut f.what else {
            unreachable!("a send_file step")
        };
        match fs.tail.take() {
            Some(t) if !t.is_empty() => {
                fs.step = Step::Tail;
                let op = send_op(fs.sock, t);
                self.send_file_submit(f, op)
            }
            _ => {
                let total = fs.total;
                Some(send_file_done(f, Ok(total)))
            }
        }
    }

    fn send_file_submit(&mut self, f: InFlight, op: Op) -> Option<PortEntry> {
        let (f, err, _) = self.submit(f, op)?;
        Some(send_file_done(f, Err(err)))
    }

    /// Gives an entry to the workers, or, once the port is closed, to the
    /// drain (the closer's callback, which owns what the entry made).
    fn hand_over(&mut self, e: PortEntry) {
        let e = match &self.shutdown {
            Shutdown::Running => match deliver(self.s, e) {
                None => return,
                Some(e) => e,
            },
            Shutdown::Draining { .. } => e,
        };
        match &self.shutdown {
            Shutdown::Draining { drain, .. } => {
                if let Err(mpsc::SendError(e)) = drain.send(e) {
                    self.close_made(&e);
                }
            }
            // The close has begun; its shutdown command is on its way.
            Shutdown::Running => self.orphans.push(e),
        }
    }

    /// Closes the fd an undeliverable entry made, through the driver.
    fn close_made(&mut self, e: &PortEntry) {
        if let Some(fd) = e.new_fd() {
            self.command(Cmd::Close { fd });
        }
    }

    /// Posts the entries of the timers that are due; the next deadline.
    fn fire_timers(&mut self) -> Option<Instant> {
        if self.draining() {
            return None;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut t = lock(&self.s.timers);
            while let Some(std::cmp::Reverse((at, id))) = t.heap.peek().copied() {
                if at > now {
                    break;
                }
                t.heap.pop();
                let Some(timer) = t.by_id.get_mut(&id) else {
                    continue; // cancelled
                };
                if timer.due != at {
                    continue; // stale
                }
                let (key, overlapped) = (timer.key, timer.overlapped);
                match timer.period {
                    Some(p) => {
                        let behind = now.duration_since(at).as_nanos() / p.as_nanos();
                        let n = (behind + 1).min(u32::MAX as u128) as u32;
                        timer.due = at + p * n;
                        let next = timer.due;
                        t.heap.push(std::cmp::Reverse((next, id)));
                        due.push((key, overlapped, n as usize));
                    }
                    None => {
                        t.by_id.remove(&id);
                        due.push((key, overlapped, 1));
                    }
                }
            }
            t.heap.peek().map(|r| r.0 .0)
        };
        for (key, overlapped, n) in due {
            self.hand_over(PortEntry::new(key, overlapped, Ok(n), None));
        }
        next
    }

    /// The fds made by ops still in flight at the shutdown limit.
    fn stranded(&mut self) -> Vec<RawFd> {
        self.table
            .drain()
            .filter_map(|f| match f.what {
                What::FirstRecv { fd, .. } => Some(fd),
                _ => None,
            })
            .collect()
    }
}

fn send_op(sock: RawFd, buf: AnyBuf) -> Op {
    Op::Send {
        fd: sock,
        buf,
        flags: 0,
    }
}

fn first_recv_entry(f: InFlight, status: io::Result<usize>, op: Op) -> PortEntry {
    let What::FirstRecv { fd, peer } = f.what else {
        unreachable!("a first receive")
    };
    let mut e = PortEntry::new(f.key, f.overlapped, status, Some(op));
    e.made = Some((fd, Made::Accept));
    e.peer = peer;
    e
}

fn send_file_done(f: InFlight, status: io::Result<usize>) -> PortEntry {
    let What::SendFile(fs) = f.what else {
        unreachable!("a send_file")
    };
    let mut e = PortEntry::new(f.key, f.overlapped, status, None);
    e.bytes = fs.total;
    e
}
