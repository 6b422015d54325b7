//! One connection of the static file server: requests in order, each
//! answered from an open file found through the cache or opened beneath the
//! root, every write under a deadline.

use super::Args;
use ringport::fs::Dir;
use ringport::{BufPool, File, IoBuf, OpenOptions, ShutdownToken, TcpStream};
use ringport_http::{
    content_type, error_response, etag, http_date, not_modified, parse_range, parse_request,
    request_path, response_head, FileCache, Method, RangeSpec, Request, Status,
};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// A body up to this size is read into the head's buffer and goes out in
/// one send; a larger one goes with `send_file`.
const SMALL_BODY: u64 = 32 * 1024;
/// `send_file` moves at most this much per op, so a client that stops
/// reading is noticed within one write deadline.
const SEND_CHUNK: u64 = 1 << 20;
/// Open files the cache keeps per thread.
const CACHE_ENTRIES: usize = 1024;
/// Receive buffers per thread (taken only while data is copied out).
const POOL_BUFS: usize = 256;
const POOL_BUF_SIZE: usize = 8 * 1024;
/// Response buffers kept for reuse per thread.
const SPARE_BUFS: usize = 64;
/// The access log is written out when this much is buffered, or each second.
const LOG_FLUSH: usize = 32 * 1024;

/// One of the `--max-conns` places; given back when dropped.
pub struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    /// A place if fewer than `max` connections are open.
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<ConnSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(count.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open regular file with what a response needs to know about it.
struct Cached {
    file: File,
    size: u64,
    mtime_sec: i64,
    etag: String,
    last_modified: String,
    ctype: &'static str,
}

/// What one runtime thread shares among its connections.
pub struct Ctx {
    dir: Dir,
    cache: RefCell<FileCache<Cached>>,
    idle: Duration,
    pool: BufPool,
    spare: RefCell<Vec<Vec<u8>>>,
    date: RefCell<(i64, String)>,
    log: Option<Rc<AccessLog>>,
    watches: Rc<RefCell<Vec<Weak<Watch>>>>,
    /// Fires on SIGTERM or SIGINT: requests begun are answered with
    /// `Connection: close`, idle connections close, the helper tasks end.
    shutdown: ShutdownToken,
}

/// The receive deadline of one connection, kept by the thread's sweeper
/// rather than by a timer per connection (a timer op and its future cost
/// an idle connection more memory than everything else it holds). When a
/// waiting receive passes its deadline, the sweeper marks it expired and
/// wakes its task, which drops the receive (the runtime cancels the op).
struct Watch {
    deadline: Cell<Instant>,
    armed: Cell<bool>,
    expired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Every `every`, ends the waiting receives whose deadline has passed.
async fn sweep(watches: Rc<RefCell<Vec<Weak<Watch>>>>, every: Duration) {
    loop {
        if ringport::sleep(every).await.is_err() {
            return;
        }
        let now = Instant::now();
        watches.borrow_mut().retain(|w| {
            let Some(w) = w.upgrade() else {
                return false;
            };
            if w.armed.get() && !w.expired.get() && now >= w.deadline.get() {
                w.expired.set(true);
                if let Some(waker) = w.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            true
        });
    }
}

impl Ctx {
    /// Opens the root directory (and the access log) on this thread's runtime.
    pub async fn open(root: &Path, args: &Args, shutdown: ShutdownToken) -> io::Result<Ctx> {
        let dir = Dir::open(root)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", root.display())))?;
        let log = match &args.access_log {
            Some(path) => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("--access-log {}: {e}", path.display()))
                    })?;
                let log = Rc::new(AccessLog {
                    file,
                    buf: RefCell::new(Vec::new()),
                    flushing: Cell::new(false),
                });
                let ticker = log.clone();
                let stop = shutdown.clone();
                ringport::spawn(async move {
                    let every_second = async {
                        loop {
                            if ringport::sleep(Duration::from_secs(1)).await.is_err() {
                                break;
                            }
                            ticker.clone().flush().await;
                        }
                    };
                    let _ = stop.run_until(every_second).await;
                    // What the last requests logged goes out before the exit.
                    ticker.flush().await;
                });
                Some(log)
            }
            None => None,
        };
        let idle = Duration::from_secs(args.idle_secs);
        let watches = Rc::new(RefCell::new(Vec::new()));
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let (w, stop) = (watches.clone(), shutdown.clone());
        ringport::spawn(async move {
            let _ = stop.run_until(sweep(w, every)).await;
        });
        Ok(Ctx {
            dir,
            watches,
            cache: RefCell::new(FileCache::new(
                CACHE_ENTRIES,
                Duration::from_millis(args.cache_ms),
            )),
            idle,
            pool: BufPool::new(POOL_BUFS, POOL_BUF_SIZE)?,
            spare: RefCell::new(Vec::new()),
            date: RefCell::new((i64::MIN, String::new())),
            log,
            shutdown,
        })
    }

    /// The `Date` value, formatted once a second.
    fn date(&self) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut d = self.date.borrow_mut();
        if d.0 != now {
            *d = (now, http_date(now));
        }
        d.1.clone()
    }

    fn take_buf(&self) -> Vec<u8> {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SMALL_BODY as usize + 1024))
    }

    fn put_buf(&self, mut b: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BUFS && b.capacity() <= SMALL_BODY as usize + 4096 {
            b.clear();
            spare.push(b);
        }
    }

    /// The open file for `rel`: from the cache while fresh, else opened
    /// beneath the root and checked (a directory means its index.html).
    async fn file(&self, rel: &Path) -> Result<Rc<Cached>, Status> {
        let now = Instant::now();
        if let Some(c) = self.cache.borrow().get(rel, now) {
            return Ok(c);
        }
        match self.open_fresh(rel).await {
            Ok(c) => {
                let c = Rc::new(c);
                self.cache
                    .borrow_mut()
                    .insert(rel.to_path_buf(), c.clone(), now);
                Ok(c)
            }
            Err(s) => {
                self.cache.borrow_mut().remove(rel);
                Err(s)
            }
        }
    }

    async fn open_fresh(&self, rel: &Path) -> Result<Cached, Status> {
        let (mut file, mut st) = self.open_beneath(rel).await?;
        let mut name = rel.to_path_buf();
        if st.mode & libc::S_IFMT == libc::S_IFDIR {
            drop(file);
            name = rel.join("index.html");
            (file, st) = self.open_beneath(&name).await.map_err(|s| match s {
                Status::NotFound => Status::Forbidden,
                s => s,
            })?;
        }
        // Only regular files: a FIFO, device or socket under the root (or a
        // directory as index.html) gets 403.
        if st.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Status::Forbidden);
        }
        Ok(Cached {
            file,
            size: st.size,
            mtime_sec: st.mtime_sec,
            etag: etag(st.size, st.mtime_sec, st.mtime_nsec, st.ino),
            last_modified: http_date(st.mtime_sec),
            ctype: content_type(&name),
        })
    }

    /// `openat2` beneath the root, non-blocking (opening a FIFO must not
    /// wait for a writer), then `fstat` of the opened fd.
    async fn open_beneath(&self, rel: &Path) -> Result<(File, ringport::FileStat), Status> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open_at(
                &self.dir,
                rel,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
            )
            .await
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => {
                    Status::NotFound
                }
                // EXDEV (leaves the root), ELOOP (magic link), EACCES, ...
                _ => Status::Forbidden,
            })?;
        let st = file.metadata().await.map_err(|_| Status::Forbidden)?;
        Ok((file, st))
    }
}

/// The buffered access log of one thread.
struct AccessLog {
    file: File,
    buf: RefCell<Vec<u8>>,
    flushing: Cell<bool>,
}

impl AccessLog {
    fn line(self: &Rc<Self>, peer: SocketAddr, date: &str, req: &Request, status: u16, n: u64) {
        use std::io::Write as _;
        let method = match req.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Other => "-",
        };
        let full = {
            let mut b = self.buf.borrow_mut();
            let _ = writeln!(
                b,
                "{} [{date}] \"{method} {}\" {status} {n}",
                peer.ip(),
                req.target.escape_debug()
            );
            b.len() >= LOG_FLUSH
        };
        if full && !self.flushing.get() {
            ringport::spawn(self.clone().flush());
        }
    }

    /// Writes out what is buffered; one flush at a time keeps lines in order.
    async fn flush(self: Rc<Self>) {
        if self.flushing.replace(true) {
            return;
        }
        loop {
            let out = std::mem::take(&mut *self.buf.borrow_mut());
            if out.is_empty() {
                break;
            }
            // O_APPEND: the offset is ignored, every write goes at the end.
            let (r, _) = self.file.write_all_at(out, 0).await;
            if let Err(e) = r {
                eprintln!("http_server: access log write failed: {e}");
                break;
            }
        }
        self.flushing.set(false);
    }
}

/// Waits for more of a request: a pooled receive (no buffer held while it
/// waits) until `deadline`, which the sweeper enforces. `Ok(false)` at end
/// of stream.
async fn receive(
    conn: &TcpStream,
    ctx: &Ctx,
    watch: &Watch,
    pending: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<bool> {
    loop {
        if watch.expired.get() || Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        watch.deadline.set(deadline);
        watch.armed.set(true);
        let mut rx = std::pin::pin!(conn.recv_pooled(&ctx.pool));
        let r = std::future::poll_fn(|cx| {
            if watch.expired.get() {
                return Poll::Ready(None);
            }
            let mut w = watch.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            drop(w);
            rx.as_mut().poll(cx).map(Some)
        })
        .await;
        watch.armed.set(false);
        // No waker kept past the wait (it would tie the task to itself).
        watch.waker.borrow_mut().take();
        let Some(r) = r else {
            // Dropping `rx` (on return) cancels the receive.
            return Err(io::ErrorKind::TimedOut.into());
        };
        match r {
            Ok(Some(buf)) => {
                pending.extend_from_slice(&buf);
                return Ok(true);
            }
            Ok(None) => return Ok(false),
            Err(e) if ringport::bufpool::is_pool_exhausted(&e) => {
                // Every buffer is being copied out right now: try again soon
                // (boxed: a timer is large, and this path is rare).
                Box::pin(ringport::sleep(Duration::from_millis(1))).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `buf` by `deadline`, or fails with `TimedOut`.
async fn send(conn: &TcpStream, ctx: &Ctx, buf: Vec<u8>) -> io::Result<()> {
    let len = buf.len();
    let (r, buf) = conn
        .write_all_deadline(buf, Instant::now() + ctx.idle)
        .await;
    ctx.put_buf(buf);
    match r {
        Ok(n) if n == len => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
        Err(e) => Err(e),
    }
}

/// Serves one connection: requests in order (pipelined ones included) until
/// the client closes, asks to close, errs, or stays idle too long.
pub async fn serve(conn: TcpStream, peer: SocketAddr, ctx: &Ctx) -> io::Result<()> {
    let watch = Rc::new(Watch {
        deadline: Cell::new(Instant::now()),
        armed: Cell::new(false),
        expired: Cell::new(false),
        waker: RefCell::new(None),
    });
    ctx.watches.borrow_mut().push(Rc::downgrade(&watch));
    let mut pending: Vec<u8> = Vec::new();
    let mut head_started: Option<Instant> = None;
    let mut last_activity = Instant::now();
    // Set once a shutdown found a request begun: it is read to its end.
    let mut last_request = false;
    loop {
        match parse_request(&pending) {
            Ok(Some(req)) => {
                pending.drain(..req.head_len);
                head_started = None;
                // Boxed: an idle connection's task then holds only what
                // waiting for the next request needs, not the state of
                // answering one.
                let (keep, status, n) = Box::pin(respond(&conn, ctx, &req)).await?;
                if let Some(log) = &ctx.log {
                    log.line(peer, &ctx.date(), &req, status, n);
                }
                if !keep {
                    break;
                }
                last_activity = Instant::now();
                continue;
            }
            Ok(None) => {}
            Err(status) => {
                let mut b = ctx.take_buf();
                b.extend_from_slice(&error_response(status, false));
                Box::pin(send(&conn, ctx, b)).await?;
                break;
            }
        }
        if pending.is_empty() {
            // Nothing buffered while the connection waits.
            pending = Vec::new();
        }
        // A new request's head must arrive within `idle` of its first byte;
        // a quiet keep-alive connection closes after `idle`.
        let deadline = match head_started {
            Some(t) => t + ctx.idle,
            None => last_activity + ctx.idle,
        };
        let was_empty = pending.is_empty();
        let got = if was_empty && !last_request {
            // Between requests: a shutdown ends the wait, unless the next
            // request has begun (its bytes wait in the socket): that one is
            // still answered, with Connection: close.
            // Boxed, as below: the task then holds a pointer to the wait,
            // not the wait twice over (a future handed to another by value
            // is laid out in both), which is most of an idle connection.
            match ctx
                .shutdown
                .run_until(Box::pin(receive(
                    &conn,
                    ctx,
                    &watch,
                    &mut pending,
                    deadline,
                )))
                .await
            {
                Some(r) => r,
                None if bytes_waiting(&conn) => {
                    last_request = true;
                    continue;
                }
                None => break,
            }
        } else {
            Box::pin(receive(&conn, ctx, &watch, &mut pending, deadline)).await
        };
        match got {
            Ok(false) => break,
            Ok(true) => {
                if was_empty {
                    head_started = Some(Instant::now());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if !pending.is_empty() {
                    let mut b = ctx.take_buf();
                    b.extend_from_slice(&error_response(Status::RequestTimeout, false));
                    Box::pin(send(&conn, ctx, b)).await?;
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write).await;
    if ctx.shutdown.is_triggered() {
        // Read what the client still sends until it closes (briefly):
        // closing with unread bytes would reset the connection under the
        // last answer.
        let linger = Instant::now() + Duration::from_secs(1);
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            let (r, b) = conn.read_deadline(buf, linger).await;
            buf = b;
            if !matches!(r, Ok(n) if n > 0) {
                break;
            }
        }
    }
    Ok(())
}

/// Whether bytes the server has not read yet wait in the socket.
fn bytes_waiting(conn: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a local; MSG_DONTWAIT never blocks and
    // MSG_PEEK leaves the byte in the socket for the next read.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            &mut b as *mut u8 as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Answers one request; returns whether to keep the connection, the status
/// and the body bytes sent.
async fn respond(conn: &TcpStream, ctx: &Ctx, req: &Request) -> io::Result<(bool, u16, u64)> {
    // Once shutting down, a request is answered and its connection closed.
    let keep = req.keep_alive && !ctx.shutdown.is_triggered();
    let date = ctx.date();
    let fail = |status: Status| async move {
        let mut b = ctx.take_buf();
        b.extend_from_slice(&error_response(status, keep));
        send(conn, ctx, b).await.map(|_| (keep, status.code(), 0))
    };
    if req.method == Method::Other {
        let mut b = ctx.take_buf();
        b.extend_from_slice(&response_head(
            Status::MethodNotAllowed,
            0,
            keep,
            &[("Date", &date), ("Allow", "GET, HEAD")],
        ));
        send(conn, ctx, b).await?;
        return Ok((keep, 405, 0));
    }
    let rel = match request_path(&req.target) {
        Ok(p) => p,
        Err(status) => return fail(status).await,
    };
    let f = match ctx.file(&rel).await {
        Ok(f) => f,
        Err(status) => return fail(status).await,
    };
    let validators = [
        ("Date", date.as_str()),
        ("ETag", f.etag.as_str()),
        ("Last-Modified", f.last_modified.as_str()),
    ];
    if not_modified(req, &f.etag, f.mtime_sec) {
        let mut b = ctx.take_buf();
        b.extend_from_slice(&response_head(Status::NotModified, 0, keep, &validators));
        send(conn, ctx, b).await?;
        return Ok((keep, 304, 0));
    }
    let size = f.size;
    let (status, start, len, range_hdr) = match parse_range(req.range.as_deref(), size) {
        RangeSpec::Full => (Status::Ok, 0, size, None),
        RangeSpec::Part { start, end } => (
            Status::PartialContent,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        RangeSpec::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            let mut b = ctx.take_buf();
            b.extend_from_slice(&response_head(
                Status::RangeNotSatisfiable,
                0,
                keep,
                &[("Date", &date), ("Content-Range", &cr)],
            ));
            send(conn, ctx, b).await?;
            return Ok((keep, 416, 0));
        }
    };
    let mut extra = validators.to_vec();
    extra.push(("Content-Type", f.ctype));
    extra.push(("Accept-Ranges", "bytes"));
    if let Some(cr) = &range_hdr {
        extra.push(("Content-Range", cr));
    }
    let mut b = ctx.take_buf();
    b.extend_from_slice(&response_head(status, len, keep, &extra));
    if req.method == Method::Head || len == 0 {
        send(conn, ctx, b).await?;
        return Ok((keep, status.code(), 0));
    }
    if len <= SMALL_BODY {
        // Head and body in one send.
        b.reserve(len as usize);
        let end = b.len() + len as usize;
        let mut pos = start;
        while b.len() < end {
            let at = b.len();
            let (r, s) = f.file.read_at(b.slice(at..end), pos).await;
            b = s.into_inner();
            match r {
                Ok(0) | Err(_) => {
                    // The file shrank or failed under us: the promised
                    // length cannot be kept, so the connection must end.
                    ctx.cache.borrow_mut().remove(&rel);
                    ctx.put_buf(b);
                    return Ok((false, status.code(), 0));
                }
                Ok(n) => pos += n as u64,
            }
        }
        send(conn, ctx, b).await?;
        return Ok((keep, status.code(), len));
    }
    send(conn, ctx, b).await?;
    let mut pos = start;
    let end = start + len;
    while pos < end {
        let n = (end - pos).min(SEND_CHUNK);
        let sent = match ringport::timeout(ctx.idle, conn.send_file(&f.file, pos, n)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                ))
            }
        };
        if sent == 0 {
            ctx.cache.borrow_mut().remove(&rel);
            return Ok((false, status.code(), pos - start));
        }
        pos += sent;
    }
    Ok((keep, status.code(), len))
}
