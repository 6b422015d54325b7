//! `echo` and `accept`: one server thread in this process (pinned to the
//! first CPU), the load client in a child process (this binary, hidden
//! subcommand `load-client`, pinned to the second CPU). The client is the
//! same for every server: raw io_uring, one request in flight per
//! connection, latency measured at the client, CPU measured on the server's
//! process.

use crate::measure::{
    add_note, allowed_cpus, cpu_self, machine_cpu, other_load_note, pin_thread, Lat, Measured,
};
use io_uring::{opcode, types, IoUring};
use std::io::{self, BufRead, BufReader};
use std::mem::ManuallyDrop;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{IntoRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What the server does with a connection.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Echo every byte back until the peer closes.
    Echo,
    /// Close it at once (the accept storm).
    Accept,
    /// HTTP/1.1 keep-alive (`http-hello`): served by the hyper servers of
    /// `http.rs`; the other servers close such a connection.
    Http,
}

impl Mode {
    /// The name on the load client's command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Accept => "accept",
            Mode::Http => "http",
        }
    }
    /// What a connection sends each round.
    pub fn request(self, size: usize) -> Vec<u8> {
        match self {
            Mode::Http => crate::http::REQUEST.to_vec(),
            _ => (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        }
    }
    /// The receive buffer a round needs.
    pub fn reply_room(self, size: usize) -> usize {
        match self {
            Mode::Http => crate::http::RESPONSE_ROOM,
            _ => size.max(1),
        }
    }
    /// Whether the bytes received this round (`got`) are its whole reply:
    /// Ok(false) when more must come, Err when they are wrong.
    pub fn reply_done(self, size: usize, got: &[u8]) -> Result<bool, String> {
        match self {
            Mode::Http => match crate::http::reply(got) {
                crate::http::Reply::More => Ok(false),
                crate::http::Reply::Done => Ok(true),
                crate::http::Reply::Bad(why) => Err(why),
            },
            _ => Ok(got.len() >= size),
        }
    }
}

/// What a server implementation is handed.
pub struct ServerCtx {
    pub mode: Mode,
    /// Set when the server must stop; a connection is then made to wake its
    /// accept.
    pub stop: Arc<AtomicBool>,
    port_tx: mpsc::Sender<u16>,
}

impl ServerCtx {
    /// Tells the runner which port the server listens on.
    pub fn ready(&self, port: u16) {
        let _ = self.port_tx.send(port);
    }
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A server: runs on its own (pinned) thread until `ctx.stop` is set.
pub type ServeFn = Box<dyn FnOnce(&ServerCtx) -> io::Result<()> + Send>;

/// A std listener on a loopback port with a deep accept queue (4,096, as
/// `somaxconn` allows): the scale curve's client opens 10,000 connections
/// one after another, and a full queue drops SYNs that come back only after
/// a second.
pub fn std_listener() -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: listen on our own listening socket; a second listen only
    // changes its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

/// How long the load client may take to open `n` connections (the slowest
/// servers at 10,000 accept one per scan of every descriptor).
pub fn connect_time(n: usize) -> Duration {
    Duration::from_secs(10 + n as u64 / 1000)
}

/// Whether an accept error is transient (the loop goes on).
pub fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EPROTO)
    )
}

/// Which load client drives a network row.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Client {
    /// Raw io_uring: one send/recv SQE per step, one `io_uring_enter` per batch.
    Uring,
    /// Plain libc epoll (level-triggered) with `send`/`read`.
    Epoll,
}

impl Client {
    /// Both clients, in the order the table shows them.
    pub const ALL: [Client; 2] = [Client::Uring, Client::Epoll];
    /// The name on the command line and in the table's `client` column.
    pub fn name(self) -> &'static str {
        match self {
            Client::Uring => "uring",
            Client::Epoll => "epoll",
        }
    }
    /// The client named `s`, if any.
    pub fn parse(s: &str) -> Option<Client> {
        Client::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// The load client's parameters.
#[derive(Clone, Debug)]
pub struct Load {
    pub mode: Mode,
    pub client: Client,
    /// Connections opened and left idle (the scale curve's idle + active).
    pub idle: usize,
    pub conns: usize,
    pub size: usize,
    pub warmup: Duration,
    pub dur: Duration,
}

/// Kills and reaps the child when dropped, whatever happened.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `serve` on a pinned thread, the load client in a child process, and
/// returns what the client measured with the server process's CPU time.
pub fn run(serve: ServeFn, load: &Load) -> io::Result<Measured> {
    let fds_before = open_fds();
    let mut m = run_inner(serve, load)?;
    // A server that leaves sockets open after its runtime is gone would
    // starve the rows after it of descriptors: say so in its row.
    if let (Some(a), Some(b)) = (fds_before, open_fds()) {
        if b > a + 8 {
            add_note(
                &mut m.note,
                &format!("left {} fds open after it stopped", b - a),
            );
        }
    }
    Ok(m)
}

/// How many fds this process has open (`/proc/self/fd`).
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

fn run_inner(serve: ServeFn, load: &Load) -> io::Result<Measured> {
    let cpus = allowed_cpus();
    let (server_cpu, client_cpu) = match cpus.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<io::Result<()>>();
    let ctx = ServerCtx {
        mode: load.mode,
        stop: stop.clone(),
        port_tx,
    };
    let server = std::thread::Builder::new()
        .name("compare-server".into())
        .spawn(move || {
            if let Some(c) = server_cpu {
                let _ = pin_thread(c);
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&ctx)))
                .unwrap_or_else(|_| Err(io::Error::other("the server panicked")));
            let _ = done_tx.send(r);
        })?;
    let stop_server = |port: Option<u16>| -> io::Result<()> {
        stop.store(true, Ordering::Relaxed);
        if let Some(port) = port {
            // Wake the accept so the loop sees the flag.
            let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        match done_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the server did not stop within 10 s")),
        }
    };
    let port = match port_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(p) => p,
        Err(_) => {
            // The server failed before listening: its error says why.
            let r = stop_server(None);
            let _ = server.join();
            return Err(r
                .err()
                .unwrap_or_else(|| io::Error::other("the server did not start")));
        }
    };
    let res = drive_client(port, load, client_cpu);
    let stopped = stop_server(Some(port));
    if stopped.is_ok() {
        let _ = server.join();
    }
    match (res, stopped) {
        (Ok(m), Ok(())) => Ok(m),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        // The server's own failure usually explains the client's.
        (Err(c), Err(s)) => Err(io::Error::other(format!("{c}; the server: {s}"))),
    }
}

/// This process's resident memory (the server's threads, stacks, buffers).
fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn drive_client(port: u16, load: &Load, cpu: Option<usize>) -> io::Result<Measured> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("load-client")
        .arg(format!("--port={port}"))
        .arg(format!("--mode={}", load.mode.name()))
        .arg(format!("--client={}", load.client.name()))
        .arg(format!("--idle={}", load.idle))
        .arg(format!("--conns={}", load.conns))
        .arg(format!("--size={}", load.size))
        .arg(format!("--warmup-ms={}", load.warmup.as_millis()))
        .arg(format!("--duration-ms={}", load.dur.as_millis()));
    if let Some(c) = cpu {
        cmd.arg(format!("--cpu={c}"));
    }
    let mut child = ChildGuard(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut stdin = child.0.stdin.take().expect("piped stdin");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let limit = Instant::now()
        + load.warmup
        + load.dur
        + Duration::from_secs(10)
        + connect_time(load.conns + load.idle);
    let next = |what: &str| -> io::Result<String> {
        loop {
            let left = limit.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with(what) => return Ok(l),
                Ok(_) => continue,
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "the load client gave no {what} line (it failed or timed out)"
                    )))
                }
            }
        }
    };
    let outcome = (|| {
        // The counters are opened once the client has connected (before
        // its warm-up ends), the window starts at START.
        next("READY")?;
        let mut probe = crate::usage::Probe::open();
        std::io::Write::write_all(&mut stdin, b"GO\n")?;
        next("START")?;
        probe.begin();
        let (cpu0, m0) = (cpu_self(), machine_cpu());
        next("STOP")?;
        let (cpu1, m1) = (cpu_self(), machine_cpu());
        let probe = probe.stop();
        let rss = rss_mib();
        let mut usage = Measured::default();
        let result = next("RESULT")?;
        let ops: f64 = result
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        probe.finish(ops as u64, &mut usage);
        Ok::<_, io::Error>((result, cpu1 - cpu0, (m0, m1), usage.per_op, rss))
    })();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Say why: the client's exit status and its last error line.
            let status = match child.0.try_wait() {
                Ok(Some(s)) => format!("; it exited with {s}"),
                _ => String::new(),
            };
            let _ = child.0.kill();
            let mut text = String::new();
            if let Some(mut err) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut text);
            }
            drop(child);
            let _ = reader.join();
            let last = text.lines().last().unwrap_or("").trim();
            let said = if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            };
            return Err(io::Error::other(format!("{e}{status}{said}")));
        }
    };
    // Reap the client (bounded: it exits right after RESULT).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = None;
    while Instant::now() < deadline {
        if let Some(s) = child.0.try_wait()? {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut err_text = String::new();
    if status.map(|s| s.success()) != Some(true) {
        if let Some(mut e) = child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err_text);
        }
    }
    drop(child);
    let _ = reader.join();
    let (line, cpu, (m0, m1), per_op, rss) = outcome;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let [ops, secs, p50, p99, p999, errors, client_cpu] = f[..] else {
        return Err(io::Error::other(format!("bad client line: {line}")));
    };
    if ops == 0.0 {
        return Err(io::Error::other(format!(
            "the client completed nothing ({errors} errors) {err_text}"
        )));
    }
    let us = |ns: f64| (ns > 0.0).then_some(ns / 1000.0);
    Ok(Measured {
        ops_per_sec: ops / secs,
        p50_us: us(p50),
        p99_us: us(p99),
        p999_us: us(p999),
        cpu_s_per_mop: Some(cpu / ops * 1e6),
        per_op,
        // How busy the server's and the client's cores were: the one near
        // 100% set the pace.
        note: {
            let mut n = format!(
                "CPU server {:.0}%, client {:.0}%",
                cpu / secs * 100.0,
                client_cpu / secs * 100.0
            );
            if let Some(r) = rss {
                add_note(&mut n, &format!("server process RSS {r:.0} MiB"));
            }
            if errors > 0.0 {
                add_note(&mut n, &format!("{errors} client errors"));
            }
            add_note(&mut n, &other_load_note(m0, m1, cpu + client_cpu, secs));
            n
        },
    })
}

// ---------------------------------------------------------------- client --

/// The hidden `load-client` subcommand: prints `READY` (connected),
/// `START`, `STOP`, then
/// `RESULT ops secs p50_ns p99_ns p999_ns errors`, and exits.
pub fn client_main(port: u16, load: &Load, cpu: Option<usize>) -> io::Result<()> {
    if let Some(c) = cpu {
        let _ = pin_thread(c);
    }
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    if load.mode == Mode::Http {
        crate::http::validate(addr)?;
    }
    let (ops, secs, lat, errors, cpu) = match (load.client, load.mode) {
        (Client::Uring, Mode::Echo | Mode::Http) => echo_client(addr, load)?,
        (Client::Uring, Mode::Accept) => accept_client(addr, load)?,
        (Client::Epoll, Mode::Echo | Mode::Http) => crate::epoll_client::echo_client(addr, load)?,
        (Client::Epoll, Mode::Accept) => crate::epoll_client::accept_client(addr, load)?,
    };
    let q = |x: f64| lat.quantile_us(x).map(|u| u * 1000.0).unwrap_or(0.0);
    println!(
        "RESULT {ops} {secs:.6} {:.0} {:.0} {:.0} {errors} {cpu:.6}",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    Ok(())
}

/// Prints `READY` (connected) and waits for the harness's go-ahead on stdin
/// (it opens its syscall counters meanwhile); the warm-up starts after it.
/// Without a harness (stdin closed) it goes on at once.
pub fn ready_wait() {
    println!("READY");
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
}

fn new_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
}

/// Waits for at least one completion, at most 100 ms.
fn enter(ring: &IoUring) -> io::Result<()> {
    let ts = types::Timespec::new().nsec(100_000_000);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The measuring phases of a client, on its own clock.
pub struct Phases {
    warm_end: Instant,
    end: Instant,
    pub measuring: bool,
    t0: Instant,
    /// The client's own CPU time over the measured window.
    cpu0: f64,
    pub cpu: f64,
}

impl Phases {
    pub fn new(load: &Load) -> Phases {
        let start = Instant::now();
        Phases {
            warm_end: start + load.warmup,
            end: start + load.warmup + load.dur,
            measuring: false,
            t0: start,
            cpu0: 0.0,
            cpu: 0.0,
        }
    }
    /// Advances the phases; true when the run is over.
    pub fn tick(&mut self, now: Instant, ops: &mut u64, lat: &mut Lat, errors: &mut u64) -> bool {
        if !self.measuring && now >= self.warm_end {
            self.measuring = true;
            *ops = 0;
            *errors = 0;
            lat.reset();
            self.t0 = now;
            self.cpu0 = cpu_self();
            println!("START");
        }
        if now >= self.end {
            self.end = now;
            self.cpu = cpu_self() - self.cpu0;
            println!("STOP");
            return true;
        }
        false
    }
    /// The measured window's length, once the run is over.
    pub fn secs(&self) -> f64 {
        (self.end - self.t0).as_secs_f64().max(1e-9)
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Phase {
    Send,
    Recv,
    Dead,
}

struct Conn {
    fd: RawFd,
    phase: Phase,
    done: usize,
    started: Instant,
    buf: Vec<u8>,
}

pub fn connect_all(addr: SocketAddrV4, n: usize) -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::with_capacity(n);
    let deadline = Instant::now() + connect_time(n);
    while fds.len() < n {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                fds.push(s.into_raw_fd());
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fds)
}

/// Ops, seconds, latencies, errors, the client's CPU seconds.
pub type ClientOut = (u64, f64, Lat, u64, f64);

fn echo_client(addr: SocketAddrV4, load: &Load) -> io::Result<ClientOut> {
    let fds = connect_all(addr, load.conns)?;
    // Never used, closed when the process exits.
    let _idle = connect_all(addr, load.idle)?;
    ready_wait();
    let entries = (load.conns.next_power_of_two() as u32).clamp(64, 4096);
    let mut ring = new_ring(entries)?;
    // Never freed (ManuallyDrop): requests may be in flight on any exit.
    let payload: ManuallyDrop<Vec<u8>> = ManuallyDrop::new(load.mode.request(load.size));
    let room = load.mode.reply_room(load.size);
    let now = Instant::now();
    let mut conns: ManuallyDrop<Vec<Conn>> = ManuallyDrop::new(
        fds.iter()
            .map(|&fd| Conn {
                fd,
                phase: Phase::Send,
                done: 0,
                started: now,
                buf: vec![0u8; room],
            })
            .collect(),
    );
    let push_op = |ring: &mut IoUring, c: &mut Conn, i: usize| -> io::Result<()> {
        let e = match c.phase {
            Phase::Send => opcode::Send::new(
                types::Fd(c.fd),
                payload[c.done..].as_ptr(),
                (payload.len() - c.done) as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build(),
            Phase::Recv => opcode::Recv::new(
                types::Fd(c.fd),
                c.buf[c.done..].as_mut_ptr(),
                (c.buf.len() - c.done) as u32,
            )
            .build(),
            Phase::Dead => return Ok(()),
        };
        let e = e.user_data(i as u64);
        // SAFETY: the payload and the connection's buffer are never freed
        // (ManuallyDrop), so they outlive every request.
        if unsafe { ring.submission().push(&e) }.is_err() {
            // More connections than entries (10,000): submit what is queued.
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(&e) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        Ok(())
    };
    for (i, c) in conns.iter_mut().enumerate() {
        push_op(&mut ring, c, i)?;
    }
    let mut phases = Phases::new(load);
    let (mut ops, mut errors, mut lat) = (0u64, 0u64, Lat::new());
    let mut cqes: Vec<(usize, i32)> = Vec::with_capacity(entries as usize * 2);
    loop {
        enter(&ring)?;
        cqes.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        let now = Instant::now();
        for (i, res) in cqes.drain(..) {
            let c = &mut conns[i];
            if res <= 0 {
                if res < 0 && -res == libc::EINTR {
                    push_op(&mut ring, c, i)?;
                    continue;
                }
                errors += 1;
                c.phase = Phase::Dead;
                continue;
            }
            c.done += res as usize;
            let whole = match c.phase {
                Phase::Recv => match load.mode.reply_done(load.size, &c.buf[..c.done]) {
                    Ok(w) => w,
                    Err(why) => {
                        if errors == 0 {
                            eprintln!("load-client: a bad reply: {why}");
                        }
                        errors += 1;
                        c.phase = Phase::Dead;
                        continue;
                    }
                },
                _ => false,
            };
            match c.phase {
                Phase::Send if c.done < payload.len() => {}
                Phase::Send => {
                    c.phase = Phase::Recv;
                    c.done = 0;
                }
                Phase::Recv if !whole => {}
                Phase::Recv => {
                    if phases.measuring {
                        ops += 1;
                        lat.record(now - c.started);
                    }
                    c.started = now;
                    c.phase = Phase::Send;
                    c.done = 0;
                }
                Phase::Dead => continue,
            }
            push_op(&mut ring, c, i)?;
        }
        if phases.tick(Instant::now(), &mut ops, &mut lat, &mut errors) {
            break;
        }
        if conns.iter().all(|c| c.phase == Phase::Dead) {
            return Err(io::Error::other("every connection failed"));
        }
    }
    let secs = phases.secs();
    drop(ring);
    Ok((ops, secs, lat, errors, phases.cpu))
}

fn accept_client(addr: SocketAddrV4, load: &Load) -> io::Result<ClientOut> {
    ready_wait();
    let entries = (load.conns.next_power_of_two() as u32).clamp(64, 4096);
    let mut ring = new_ring(entries)?;
    // Never freed (ManuallyDrop): requests may be in flight on any exit.
    let sa = ManuallyDrop::new(Box::new(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }));
    let salen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let mut conns: ManuallyDrop<Vec<Conn>> = ManuallyDrop::new(
        (0..load.conns)
            .map(|_| Conn {
                fd: -1,
                phase: Phase::Send,
                done: 0,
                started: Instant::now(),
                buf: vec![0u8; 16],
            })
            .collect(),
    );
    // Phase::Send = connecting, Phase::Recv = waiting for the server's close.
    let start_one = |ring: &mut IoUring, c: &mut Conn, i: usize| -> io::Result<()> {
        // SAFETY: plain syscall with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        c.fd = fd;
        c.phase = Phase::Send;
        c.started = Instant::now();
        let e = opcode::Connect::new(
            types::Fd(fd),
            &**sa as *const libc::sockaddr_in as *const libc::sockaddr,
            salen,
        )
        .build()
        .user_data(i as u64);
        // SAFETY: the address is never freed (ManuallyDrop), so it outlives
        // every request.
        unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))
    };
    for (i, c) in conns.iter_mut().enumerate() {
        start_one(&mut ring, c, i)?;
    }
    let mut phases = Phases::new(load);
    let (mut ops, mut errors, mut lat) = (0u64, 0u64, Lat::new());
    let mut cqes: Vec<(usize, i32)> = Vec::with_capacity(entries as usize * 2);
    loop {
        enter(&ring)?;
        cqes.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        let now = Instant::now();
        for (i, res) in cqes.drain(..) {
            let c = &mut conns[i];
            match c.phase {
                Phase::Send if res < 0 => {
                    errors += 1;
                    // SAFETY: our socket; no request of the ring uses it now.
                    unsafe { libc::close(c.fd) };
                    start_one(&mut ring, c, i)?;
                }
                Phase::Send => {
                    c.phase = Phase::Recv;
                    let e = opcode::Recv::new(types::Fd(c.fd), c.buf.as_mut_ptr(), 16)
                        .build()
                        .user_data(i as u64);
                    // SAFETY: the buffer is never freed (ManuallyDrop), so it
                    // outlives every request.
                    unsafe { ring.submission().push(&e) }
                        .map_err(|_| io::Error::other("submission queue full"))?;
                }
                Phase::Recv => {
                    // EOF (0) or a reset: the server accepted and closed.
                    if res > 0 {
                        errors += 1;
                    } else if phases.measuring {
                        ops += 1;
                        lat.record(now - c.started);
                    }
                    // SAFETY: our socket; its only request just completed.
                    unsafe { libc::close(c.fd) };
                    start_one(&mut ring, c, i)?;
                }
                Phase::Dead => {}
            }
        }
        if phases.tick(Instant::now(), &mut ops, &mut lat, &mut errors) {
            break;
        }
    }
    let secs = phases.secs();
    drop(ring);
    Ok((ops, secs, lat, errors, phases.cpu))
}

// ------------------------------------------------------ ringport servers --

/// The ringport runtime server on backend `b`.
pub fn ringport_server(b: ringport::Backend) -> ServeFn {
    Box::new(move |ctx: &ServerCtx| {
        let rt = ringport::Runtime::with_backend(b)?;
        rt.block_on(async {
            let l = ringport::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                match ctx.mode {
                    Mode::Accept | Mode::Http => drop(s),
                    Mode::Echo => {
                        ringport::spawn(async move {
                            let _ = s.set_nodelay(true);
                            let mut buf = Vec::with_capacity(4096);
                            loop {
                                let (r, b) = s.read(buf).await;
                                buf = b;
                                match r {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                }
                                let (r, b) = s.write_all(buf).await;
                                buf = b;
                                if r.is_err() {
                                    break;
                                }
                                buf.clear();
                            }
                        });
                    }
                }
            }
        })
    })
}

/// The ringport runtime echo server on backend `b`, but reading and writing
/// through tokio's `AsyncRead`/`AsyncWrite` (the adapter of `ringport::compat`).
#[cfg(feature = "tokio-io")]
pub fn ringport_tokio_traits_server(b: ringport::Backend) -> ServeFn {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    Box::new(move |ctx: &ServerCtx| {
        let rt = ringport::Runtime::with_backend(b)?;
        rt.block_on(async {
            let l = ringport::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                ringport::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let (mut r, mut w) = s.into_split();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        })
    })
}

/// The ringport runtime server on backend `b` with the completion model's
/// own tools: connections from one multishot accept
/// (`TcpListener::incoming`), and for echo the bytes of each connection from
/// one multishot recv into a shared buffer pool (`TcpStream::recv_stream`).
/// Native multishot on io_uring; emulated at readiness on the shim.
pub fn ringport_multishot_server(b: ringport::Backend) -> ServeFn {
    Box::new(move |ctx: &ServerCtx| {
        let rt = ringport::Runtime::with_backend(b)?;
        rt.block_on(async {
            let l = ringport::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            ctx.ready(l.local_addr()?.port());
            // 1,024 × 4 KiB: a buffer is held only while its bytes are on
            // their way back, so 500 connections never hold more than 500.
            let pool = ringport::BufPool::new(1024, 4096)?;
            loop {
                let mut conns = l.incoming();
                while let Some(r) = conns.next().await {
                    let s = match r {
                        Ok(s) => s,
                        // An error ends the multishot accept: start another.
                        Err(e) if transient(&e) => break,
                        Err(e) => return Err(e),
                    };
                    if ctx.stopped() {
                        return Ok(());
                    }
                    match ctx.mode {
                        Mode::Accept | Mode::Http => drop(s),
                        Mode::Echo => {
                            let pool = pool.clone();
                            ringport::spawn(async move {
                                let _ = s.set_nodelay(true);
                                let _ = echo_multishot(&s, &pool).await;
                            });
                        }
                    }
                }
                if ctx.stopped() {
                    return Ok(());
                }
            }
        })
    })
}

/// Echoes a connection's arrivals from a multishot recv until end of
/// stream; a pool that ran dry ends the recv, and another is started.
async fn echo_multishot(s: &ringport::TcpStream, pool: &ringport::BufPool) -> io::Result<()> {
    loop {
        let mut rx = s.recv_stream(pool);
        loop {
            match rx.next().await {
                Some(Ok(buf)) => {
                    let (r, _back_to_the_pool) = s.write_all(buf).await;
                    r?;
                }
                None => return Ok(()),
                Some(Err(e)) if ringport::bufpool::is_pool_exhausted(&e) => break,
                Some(Err(e)) => return Err(e),
            }
        }
    }
}
