//! The CompletionPort (IOCP model), on every backend: W2, W3, the
//! concurrency limit, LIFO wake order, cancel-all on an fd, close with
//! waiters and ops in flight, a real socket round trip; running slots
//! (exit packets reach every worker, a panicking worker, `release_slot` and
//! `blocking`); close without losing accepted sockets (`close`,
//! `close_and_drain`); accept with a first receive; `send_file`; opens and
//! fd-less ops; port timers; and `iocp_echo` serving 200 clients and
//! shutting down on SIGINT. Two cases use a fake driver, not a backend:
//! `close` bounded when ops never complete, and a ring thread that dies.

use ringport_testkit::harness;

use harness::Counted;
use ringport::{Backend, CompletionPort, GetError};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

macro_rules! case {
    ($b:expr, $name:ident) => {
        #[test]
        fn $name() {
            if ringport_testkit::harness::available($b, stringify!($name)) {
                crate::$name($b)
            }
        }
    };
}

macro_rules! port_tests {
    ($b:expr) => {
        case!($b, w2_post_from_another_thread);
        case!($b, w3_four_waiters_each_completion_once);
        case!($b, concurrency_one_never_two_at_once);
        case!($b, waiters_wake_last_in_first_out);
        case!($b, cancel_all_on_an_fd);
        case!($b, close_with_waiters_and_ops_in_flight);
        case!($b, socket_round_trip);
        case!($b, exit_packets_reach_2x_cpu_workers);
        case!($b, exit_packets_reach_4_workers_at_concurrency_1);
        case!($b, panicking_worker_keeps_concurrency);
        case!($b, close_closes_queued_accepts);
        case!($b, iocp_echo_sigint_shutdown);
        case!($b, release_slot_and_blocking_let_another_run);
        case!($b, waiting_on_another_port_gives_the_slot_back);
        case!($b, close_and_drain_hands_over_every_entry);
        case!($b, accept_with_data_one_entry);
        case!($b, send_file_1mib_head_and_tail);
        case!($b, send_file_ranges_and_short_file);
        case!($b, send_file_to_a_gone_peer_fails);
        case!($b, open_and_read_without_association);
        case!($b, periodic_timer_fires_10_times);
        case!($b, one_shot_timer_fires_once);
        #[test]
        #[ignore = "run by close_closes_queued_accepts in a child process"]
        fn close_accepts_child() {
            crate::close_accepts_child($b)
        }
    };
}

#[cfg(target_os = "linux")]
mod uring {
    port_tests!(ringport::Backend::Uring);
    case!(ringport::Backend::Uring, iocp_echo_serves_200_clients);
}

mod aio {
    port_tests!(ringport::Backend::Aio);
}

/// Not a backend property: the port's own bound on `close`, with a driver
/// whose ops never complete, not even when cancelled.
#[test]
fn close_is_bounded_when_ops_never_complete() {
    crate::close_bounded_with_a_stuck_driver()
}

/// A ring thread that dies (its driver panics) does not leave workers
/// waiting forever, and `close` still returns at once.
#[test]
fn a_dead_ring_thread_releases_waiters_and_close() {
    let p = Arc::new(crate::stuck_port(true));
    let q = p.clone();
    let waiter = std::thread::spawn(move || q.get(Some(Duration::from_secs(10))));
    std::thread::sleep(Duration::from_millis(20));
    p.post(0, 0, 0).ok();
    let t0 = Instant::now();
    // The first op makes the driver panic in its next wait.
    p.start_keyed(ringport::Op::Nop, 0, 1).unwrap();
    let got = waiter.join().unwrap();
    // The posted entry may have reached the waiter first; then wait again.
    match got {
        Ok(_) => assert_eq!(
            p.get(Some(Duration::from_secs(10))).unwrap_err(),
            GetError::Closed
        ),
        Err(e) => assert_eq!(e, GetError::Closed),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "waiters stranded");
    let t1 = Instant::now();
    p.close();
    assert!(t1.elapsed() < Duration::from_secs(1), "close hung");
    assert!(p.start_keyed(ringport::Op::Nop, 0, 2).is_err());
}

mod epoll {
    port_tests!(ringport::Backend::Epoll);
    case!(ringport::Backend::Epoll, iocp_echo_serves_200_clients);
}

mod poll {
    port_tests!(ringport::Backend::Poll);
}

mod select {
    port_tests!(ringport::Backend::Select);
}

mod sigio {
    port_tests!(ringport::Backend::Sigio);
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn port(b: Backend, concurrency: usize) -> Arc<CompletionPort> {
    Arc::new(CompletionPort::with_backend(concurrency, b).expect("port"))
}

fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn w2_post_from_another_thread(b: Backend) {
    let p = port(b, 0);
    let q = p.clone();
    std::thread::spawn(move || q.post(123, 7, 99).unwrap())
        .join()
        .unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped, e.bytes), (7, 99, 123));
    assert_eq!(e.status.unwrap(), 123);
    assert!(e.op.is_none());
}

fn w3_four_waiters_each_completion_once(b: Backend) {
    const N: usize = 10_000;
    const READS: usize = 500;
    let p = port(b, 4);
    let seen = Arc::new(Mutex::new(Vec::with_capacity(N)));
    let total = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (p, seen, total) = (p.clone(), seen.clone(), total.clone());
        threads.push(std::thread::spawn(move || {
            let mut mine = 0usize;
            loop {
                match p.get(Some(Duration::from_millis(200))) {
                    Ok(e) => {
                        assert!(e.status.is_ok(), "{:?}", e.status);
                        seen.lock().unwrap().push(e.overlapped);
                        mine += 1;
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(GetError::Timeout) if total.load(Ordering::SeqCst) >= N => return mine,
                    Err(GetError::Timeout) => {}
                    Err(GetError::Closed) => return mine,
                }
            }
        }));
    }
    // Real completions (file reads) and posted ones, 10,000 in all.
    let f = harness::TempFile::with(&vec![5u8; 4096]);
    let file = f.raw_fd();
    p.associate(file.as_raw_fd(), 1).unwrap();
    for i in 0..READS {
        p.read(
            file.as_raw_fd(),
            (i % 16) as u64 * 256,
            Vec::with_capacity(256),
            i,
        )
        .unwrap();
    }
    for i in READS..N {
        p.post(0, 2, i).unwrap();
    }
    let per_thread: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), N, "every completion delivered");
    let unique: HashSet<usize> = seen.iter().copied().collect();
    assert_eq!(unique.len(), N, "each to exactly one thread");
    assert_eq!(per_thread.iter().sum::<usize>(), N);
}

fn concurrency_one_never_two_at_once(b: Backend) {
    const N: usize = 200;
    let p = port(b, 1);
    let inside = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (p, inside, max, done) = (p.clone(), inside.clone(), max.clone(), done.clone());
        threads.push(std::thread::spawn(move || loop {
            match p.get(Some(Duration::from_millis(300))) {
                Ok(_) => {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(200));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) if done.load(Ordering::SeqCst) >= N => return,
                Err(_) => {}
            }
        }));
    }
    for i in 0..N {
        p.post(1, 0, i).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), N);
    assert_eq!(
        max.load(Ordering::SeqCst),
        1,
        "two entries were processed at once"
    );
}

fn waiters_wake_last_in_first_out(b: Backend) {
    let p = port(b, 8);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for id in 0..3 {
        let (q, tx) = (p.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let e = q.get(WAIT).unwrap();
            tx.send((id, e.overlapped)).unwrap();
        }));
        // Let this one park before the next starts waiting (a fixed sleep
        // lost the order on a loaded machine).
        let t = Instant::now();
        while p.waiting() < id + 1 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.waiting(), id + 1, "waiter {id} parked");
    }
    let mut order = Vec::new();
    for n in 0..3 {
        p.post(0, 0, n).unwrap();
        order.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        order,
        vec![(2, 0), (1, 1), (0, 2)],
        "the last waiter wakes first"
    );
}

fn cancel_all_on_an_fd(b: Backend) {
    let p = port(b, 0);
    let (_c, s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    let fd = s.as_raw_fd();
    p.associate(fd, 42).unwrap();
    for i in 0..3 {
        p.recv(fd, Vec::with_capacity(16), i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(p.cancel(fd, None).unwrap(), 3);
    let mut got = HashSet::new();
    for _ in 0..3 {
        let e = p.get(WAIT).unwrap();
        assert_eq!(e.key, 42);
        assert_eq!(
            e.status.as_ref().unwrap_err().raw_os_error(),
            Some(libc::ECANCELED)
        );
        got.insert(e.overlapped);
    }
    assert_eq!(got, HashSet::from([0, 1, 2]));
    let e = p.cancel(fd, None).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "nothing matched");
    assert_eq!(
        p.get(Some(Duration::from_millis(50))).unwrap_err(),
        GetError::Timeout
    );
}

fn close_with_waiters_and_ops_in_flight(b: Backend) {
    let p = port(b, 0);
    let (_c, s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    let fd = s.as_raw_fd();
    p.associate(fd, 1).unwrap();
    let mut drops = Vec::new();
    for i in 0..2 {
        let (buf, d) = Counted::new(32);
        drops.push(d);
        p.recv(fd, buf, i).unwrap();
    }
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || p.get(None))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    p.close();
    for w in waiters {
        assert_eq!(w.join().unwrap().unwrap_err(), GetError::Closed);
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "close hung");
    for d in &drops {
        assert_eq!(
            d.load(Ordering::SeqCst),
            1,
            "each buffer dropped exactly once"
        );
    }
    assert_eq!(p.get(Some(Duration::ZERO)).unwrap_err(), GetError::Closed);
    assert!(p.post(0, 0, 0).is_err());
}

fn socket_round_trip(b: Backend) {
    let p = port(b, 0);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    p.associate(l.as_raw_fd(), 100).unwrap();
    p.accept(l.as_raw_fd(), 1).unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped), (100, 1));
    assert_eq!(e.peer_addr(), Some(c.local_addr().unwrap()), "the peer");
    let fd = *e.status.as_ref().unwrap() as i32;
    assert_eq!(e.accepted_fd(), Some(fd));
    p.associate(fd, 200).unwrap();
    p.recv(fd, Vec::with_capacity(64), 2).unwrap();
    c.write_all(b"hello port").unwrap();
    let mut e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped, e.bytes), (200, 2, 10));
    let buf: Vec<u8> = e.take_read_buf().unwrap();
    assert_eq!(buf, b"hello port");
    p.send(fd, buf, 3).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.overlapped, e.bytes), (3, 10));
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello port");
    p.close_fd(fd).unwrap();
}

/// The `iocp_echo` binary next to this test, built now (a no-op when it is
/// up to date; a stale binary would test old code), as tests/examples.rs
/// finds the examples.
fn iocp_echo_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/iocp_echo");
    {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "iocp_echo"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cargo build --example iocp_echo failed");
    }
    bin
}

/// A started example, killed if the test ends before it does.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_iocp_echo(b: Backend) -> (Kill, std::io::BufReader<std::process::ChildStdout>, String) {
    let mut child = std::process::Command::new(iocp_echo_bin())
        .args([
            "--threads",
            "4",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            b.name(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("iocp_echo said {line:?}"))
        .to_string();
    (Kill(child), out, addr)
}

/// `iocp_echo --threads 4` with 200 connected clients gets SIGINT: it
/// exits 0 within 1 s, every client sees its connection closed, and the
/// fd count it reports at exit is the one it had at start.
fn iocp_echo_sigint_shutdown(b: Backend) {
    let (mut child, mut out, addr) = start_iocp_echo(b);
    let mut clients = Vec::new();
    for i in 0..200u32 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = i.to_le_bytes();
        c.write_all(&msg).unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg, "client {i}: echo");
        clients.push(c);
    }
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: sends a signal to our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "iocp_echo did not exit within 1 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = t0.elapsed();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "iocp_echo exited with {status}: {rest}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    let fds = rest
        .lines()
        .find_map(|l| l.split_once("open fds "))
        .map(|(_, f)| f.to_string())
        .unwrap_or_else(|| panic!("iocp_echo reported no fd counts: {rest:?}"));
    let nums: Vec<usize> = fds
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "fd counts in {fds:?}");
    assert_eq!(nums[0], nums[1], "fds at start vs at exit: {fds}");
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("client {i}: its connection was not closed: {other:?}"),
        }
    }
}

/// `iocp_echo` as a real program, 200 clients, random-sized messages.
fn iocp_echo_serves_200_clients(b: Backend) {
    let (_guard, _out, addr) = start_iocp_echo(b);
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut rng = harness::Rng::new(i + 1);
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut total = 0;
                for _ in 0..5 {
                    let n = 1 + rng.below(20_000) as usize;
                    let msg: Vec<u8> = (0..n).map(|k| (k as u64 ^ i) as u8).collect();
                    c.write_all(&msg).unwrap();
                    let mut got = vec![0u8; n];
                    c.read_exact(&mut got).unwrap();
                    assert_eq!(got, msg, "client {i}: bytes differ");
                    total += n;
                }
                total
            })
        })
        .collect();
    let bytes: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(bytes > 200 * 5);
}

/// The standard IOCP shutdown: `workers` threads loop on `get`; one exit
/// packet is posted per worker; every worker must have left within 1 s.
fn exit_packets_reach_every_worker(b: Backend, concurrency: usize, workers: usize) {
    const EXIT: usize = usize::MAX;
    let p = port(b, concurrency);
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let (p, tx) = (p.clone(), tx.clone());
            std::thread::spawn(move || loop {
                match p.get(WAIT) {
                    Ok(e) if e.key == EXIT => {
                        tx.send(i).unwrap();
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            })
        })
        .collect();
    // Let every worker park in `get` first.
    let t = Instant::now();
    while p.waiting() < workers && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(p.waiting(), workers, "the workers did not all park");
    let t0 = Instant::now();
    for _ in 0..workers {
        p.post(0, EXIT, 0).unwrap();
    }
    let mut left = HashSet::new();
    while left.len() < workers {
        let rest = Duration::from_secs(1).saturating_sub(t0.elapsed());
        match rx.recv_timeout(rest) {
            Ok(i) => {
                left.insert(i);
            }
            Err(_) => break,
        }
    }
    let n = left.len();
    p.close(); // releases any stranded worker, so the test ends either way
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        n, workers,
        "only {n} of {workers} workers (concurrency {concurrency}) got their exit packet within 1 s"
    );
}

fn exit_packets_reach_2x_cpu_workers(b: Backend) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    exit_packets_reach_every_worker(b, cpus, 2 * cpus);
}

fn exit_packets_reach_4_workers_at_concurrency_1(b: Backend) {
    exit_packets_reach_every_worker(b, 1, 4);
}

/// A worker that panics while it holds an entry gives its slot back: two
/// workers at concurrency 2 can still hold an entry each at the same time.
fn panicking_worker_keeps_concurrency(b: Backend) {
    const PANIC: usize = 1;
    const MEET: usize = 2;
    let p = port(b, 2);
    let holding = Arc::new(AtomicUsize::new(0));
    let spawn = |p: Arc<CompletionPort>, holding: Arc<AtomicUsize>| {
        std::thread::spawn(move || -> bool {
            let Ok(e) = p.get(Some(Duration::from_secs(3))) else {
                return false; // no entry: its slot is still taken
            };
            if e.overlapped == PANIC {
                panic!("worker panics inside its processing (expected by the test)");
            }
            // Hold this entry until the other worker holds one too.
            holding.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while holding.load(Ordering::SeqCst) < 2 {
                if t.elapsed() > Duration::from_secs(2) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            true
        })
    };
    let victim = spawn(p.clone(), holding.clone());
    p.post(0, 0, PANIC).unwrap();
    assert!(victim.join().is_err(), "the worker panicked");
    let a = spawn(p.clone(), holding.clone());
    let c = spawn(p.clone(), holding.clone());
    p.post(0, 0, MEET).unwrap();
    p.post(0, 0, MEET).unwrap();
    let (a, c) = (a.join().unwrap(), c.join().unwrap());
    assert!(
        a && c,
        "after a worker panicked, two workers could not run at once at concurrency 2"
    );
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs in a child process (its fd count is its own): 8 accepts complete
/// and stay queued; `close()` must close the 8 accepted sockets.
fn close_accepts_child(b: Backend) {
    if std::env::var_os("RINGPORT_PORT_CLOSE_CHILD").is_none() {
        return;
    }
    let baseline = fd_count();
    {
        let p = port(b, 0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        p.associate(l.as_raw_fd(), 1).unwrap();
        for i in 0..8 {
            p.accept(l.as_raw_fd(), i).unwrap();
        }
        let clients: Vec<_> = (0..8)
            .map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        let t = Instant::now();
        while p.queued() < 8 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.queued(), 8, "8 accepts completed and queued");
        p.close();
        // Each client sees its server side closed (end of stream), not a leak.
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap(), 0, "the accepted socket was closed");
        }
    }
    assert_eq!(fd_count(), baseline, "fds leaked by close()");
    println!("CLOSE OK");
}

fn close_closes_queued_accepts(b: Backend) {
    harness::expect_child_ok(
        b.into(),
        "close_accepts_child",
        "RINGPORT_PORT_CLOSE_CHILD",
        "CLOSE OK",
    );
}

/// Concurrency 1: a worker that gives its slot back (`release_slot`, or
/// inside `blocking`) lets a second worker take an entry meanwhile.
fn release_slot_and_blocking_let_another_run(b: Backend) {
    let p = port(b, 1);
    for use_blocking in [false, true] {
        let other = Arc::new(AtomicUsize::new(0));
        let (p1, o1) = (p.clone(), other.clone());
        let (got_tx, got_rx) = mpsc::channel();
        let first = std::thread::spawn(move || {
            let _e = p1.get(WAIT).expect("first entry");
            got_tx.send(()).unwrap();
            let wait_for_other = || {
                let t = Instant::now();
                while o1.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                o1.load(Ordering::SeqCst) == 1
            };
            let ran = if use_blocking {
                p1.blocking(wait_for_other)
            } else {
                assert!(p1.release_slot(), "the thread held a slot");
                wait_for_other()
            };
            let running = p1.running();
            (ran, running)
        });
        p.post(0, 0, 1).unwrap();
        got_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let (p2, o2) = (p.clone(), other.clone());
        let second = std::thread::spawn(move || {
            let e = p2.get(Some(Duration::from_secs(3)));
            o2.store(1, Ordering::SeqCst);
            e.is_ok()
        });
        p.post(0, 0, 2).unwrap();
        let (ran, running) = first.join().unwrap();
        assert!(second.join().unwrap(), "the second worker got no entry");
        assert!(
            ran,
            "blocking={use_blocking}: the second worker did not run meanwhile"
        );
        if use_blocking {
            // Back from `blocking`, the first counts again, over the limit
            // for a moment, as on Windows (the second still holds its slot
            // until its thread ended, which it may have by now).
            assert!(running >= 1, "running {running}");
        }
        // Both threads have ended: every slot is back.
        let t = Instant::now();
        while p.running() != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.running(), 0, "slots given back when the threads ended");
    }
}

/// `close_and_drain` hands the caller every entry nobody took: 3 queued
/// accepts (with their sockets) and the cancelled receive in flight.
fn close_and_drain_hands_over_every_entry(b: Backend) {
    let p = port(b, 0);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    p.associate(l.as_raw_fd(), 1).unwrap();
    for i in 0..3 {
        p.accept(l.as_raw_fd(), i).unwrap();
    }
    let clients: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    let (_c, s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    p.associate(s.as_raw_fd(), 2).unwrap();
    let (buf, dropped) = Counted::new(16);
    p.recv(s.as_raw_fd(), buf, 9).unwrap();
    let t = Instant::now();
    while p.queued() < 3 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(p.queued(), 3);
    let mut accepted = Vec::new();
    let mut cancelled = Vec::new();
    let t0 = Instant::now();
    p.close_and_drain(|mut e| {
        if let Some(fd) = e.accepted_fd() {
            accepted.push(fd);
            p.close_fd(fd).unwrap();
        } else {
            let err = e.status.as_ref().unwrap_err().raw_os_error();
            cancelled.push((e.key, e.overlapped, err));
            drop(e.op.take());
        }
    });
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "close_and_drain hung"
    );
    assert_eq!(accepted.len(), 3, "the 3 queued accepts, each with its fd");
    assert_eq!(cancelled, vec![(2, 9, Some(libc::ECANCELED))]);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the recv buffer came back"
    );
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "the accepted socket was closed");
    }
}

/// AcceptEx with a receive length: no entry for the bare connection, then
/// one entry with the new fd, the peer address and the first bytes; a peer
/// that closes without sending gives 0 bytes and still its fd.
fn accept_with_data_one_entry(b: Backend) {
    let p = port(b, 0);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    p.associate(l.as_raw_fd(), 100).unwrap();
    p.accept_with_data(l.as_raw_fd(), Vec::with_capacity(64), 5)
        .unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    assert_eq!(
        p.get(Some(Duration::from_millis(100))).unwrap_err(),
        GetError::Timeout,
        "no entry before the first bytes"
    );
    c.write_all(b"first bytes").unwrap();
    let mut e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped, e.bytes), (100, 5, 11));
    assert_eq!(e.status.as_ref().unwrap(), &11);
    let fd = e.accepted_fd().expect("the accepted fd");
    assert_eq!(e.new_fd(), Some(fd));
    assert_eq!(e.peer_addr(), Some(c.local_addr().unwrap()), "the peer");
    let buf: Vec<u8> = e.take_read_buf().unwrap();
    assert_eq!(buf, b"first bytes");
    // The fd is a working connection.
    p.associate(fd, 200).unwrap();
    p.send(fd, buf, 6).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped, e.bytes), (200, 6, 11));
    let mut back = [0u8; 11];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"first bytes");
    p.close_fd(fd).unwrap();
    // A peer that connects and closes without a byte.
    p.accept_with_data(l.as_raw_fd(), Vec::with_capacity(64), 7)
        .unwrap();
    drop(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.overlapped, e.bytes), (7, 0));
    assert!(e.status.is_ok(), "{:?}", e.status);
    let fd = e.accepted_fd().expect("the fd, even with no data");
    p.close_fd(fd).unwrap();
    // Cancelled (on the listener) while it waits for the first bytes: the
    // entry still carries the accepted socket. Then the same through
    // `close_fd` of the listener.
    let lfd = l.into_raw_fd();
    for (round, ov) in [(0, 8), (1, 9)] {
        p.accept_with_data(lfd, Vec::with_capacity(64), ov).unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50)); // accepted, now receiving
        if round == 0 {
            assert_eq!(p.cancel(lfd, Some(ov)).unwrap(), 1);
        } else {
            p.close_fd(lfd).unwrap();
        }
        let e = p.get(WAIT).unwrap();
        assert_eq!(e.overlapped, ov);
        let err = e.status.as_ref().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECANCELED), "{err}");
        let fd = e
            .accepted_fd()
            .expect("the accepted socket, though cancelled");
        assert_eq!(e.peer_addr(), Some(c.local_addr().unwrap()));
        p.close_fd(fd).unwrap();
    }
}

fn read_all(mut c: std::net::TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        v
    })
}

/// TransmitFile: head, 1 MiB of file, tail, as one entry whose count is the
/// total, byte-exact at the peer; the file is not associated.
fn send_file_1mib_head_and_tail(b: Backend) {
    const MIB: usize = 1 << 20;
    let p = port(b, 0);
    let data = harness::pattern_vec(MIB);
    let f = harness::TempFile::with(&data);
    let file = f.raw_fd();
    let (c, s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    p.associate(s.as_raw_fd(), 9).unwrap();
    let reader = read_all(c);
    let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    let tail = b"--end--".to_vec();
    let spec = ringport::SendFile::new(file.as_raw_fd(), 0, Some(MIB as u64))
        .head(head.clone())
        .tail(tail.clone());
    p.send_file(s.as_raw_fd(), spec, 77).unwrap();
    let e = p.get(WAIT).unwrap();
    let total = head.len() + MIB + tail.len();
    assert_eq!((e.key, e.overlapped), (9, 77));
    assert_eq!(e.status.as_ref().unwrap(), &total, "{:?}", e.status);
    assert_eq!(e.bytes, total);
    assert!(
        p.get(Some(Duration::from_millis(20))).is_err(),
        "one entry for the whole transfer"
    );
    drop(s);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), total);
    let mut want = head;
    want.extend_from_slice(&data);
    want.extend_from_slice(&tail);
    assert!(got == want, "bytes differ");
}

/// A range in the middle, a range to the end of the file (`len` None), and
/// a range longer than the file (`UnexpectedEof`, with what was sent).
fn send_file_ranges_and_short_file(b: Backend) {
    let p = port(b, 0);
    let data = harness::pattern_vec(100_000);
    let f = harness::TempFile::with(&data);
    let file = f.raw_fd();
    let (c, s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    p.associate(s.as_raw_fd(), 1).unwrap();
    let reader = read_all(c);
    let fd = file.as_raw_fd();
    let mid = ringport::SendFile::new(fd, 1000, Some(5000)).chunk_size(4096);
    p.send_file(s.as_raw_fd(), mid, 1).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!(e.status.as_ref().unwrap(), &5000);
    let to_end = ringport::SendFile::new(fd, 90_000, None).tail(b"!".to_vec());
    p.send_file(s.as_raw_fd(), to_end, 2).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!(e.status.as_ref().unwrap(), &10_001);
    let short = ringport::SendFile::new(fd, 99_000, Some(5000))
        .head(b"H".to_vec())
        .tail(b"never".to_vec());
    p.send_file(s.as_raw_fd(), short, 3).unwrap();
    let e = p.get(WAIT).unwrap();
    let err = e.status.as_ref().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(
        e.bytes,
        1 + 1000,
        "head and the file's last 1000 bytes were sent"
    );
    drop(s);
    let got = reader.join().unwrap();
    let mut want = data[1000..6000].to_vec();
    want.extend_from_slice(&data[90_000..]);
    want.push(b'!');
    want.push(b'H');
    want.extend_from_slice(&data[99_000..]);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ");
}

/// An open through the port (no fd, so no association), then a read of the
/// new fd with an explicit key, also without association.
fn open_and_read_without_association(b: Backend) {
    let p = port(b, 0);
    let f = harness::TempFile::with(b"opened through the port");
    p.open(&f.path, libc::O_RDONLY, 0, 3, 4).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped), (3, 4));
    let fd = e.new_fd().expect("the opened fd");
    assert_eq!(e.bytes, fd as usize);
    assert_eq!(e.accepted_fd(), None, "not an accept");
    let op = ringport::Op::Read {
        fd,
        offset: ringport::Offset::At(0),
        buf: ringport::AnyBufMut::new(Vec::with_capacity(64)),
    };
    p.start_keyed(op, 8, 5).unwrap();
    let mut e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped), (8, 5));
    let buf: Vec<u8> = e.take_read_buf().unwrap();
    assert_eq!(buf, b"opened through the port");
    // `start` takes an fd-less op too (key 0).
    let path = std::ffi::CString::new(f.path.as_os_str().as_encoded_bytes()).unwrap();
    let op = ringport::Op::OpenAt {
        dir: libc::AT_FDCWD,
        path,
        flags: libc::O_RDONLY,
        mode: 0,
    };
    p.start(op, 6).unwrap();
    let e = p.get(WAIT).unwrap();
    assert_eq!((e.key, e.overlapped), (0, 6));
    let fd2 = e.new_fd().expect("the opened fd");
    p.close_fd(fd).unwrap();
    p.close_fd(fd2).unwrap();
}

/// A periodic port timer posts its key and overlapped 10 times, at its
/// period, and nothing once cancelled.
fn periodic_timer_fires_10_times(b: Backend) {
    let p = port(b, 0);
    let period = Duration::from_millis(20);
    let t0 = Instant::now();
    let id = p.set_timer(period, Some(period), 31, 32).unwrap();
    let mut periods = 0;
    for _ in 0..10 {
        let e = p.get(WAIT).unwrap();
        assert_eq!((e.key, e.overlapped), (31, 32));
        assert!(e.op.is_none());
        assert!(e.bytes >= 1);
        periods += e.bytes;
    }
    let took = t0.elapsed();
    assert!(
        took >= period * periods as u32,
        "{periods} periods of {period:?} in {took:?}"
    );
    assert!(p.cancel_timer(id), "the timer was set");
    assert!(!p.cancel_timer(id));
    // At most one more that fired before the cancel.
    let _ = p.get(Some(Duration::from_millis(5)));
    assert_eq!(
        p.get(Some(Duration::from_millis(100))).unwrap_err(),
        GetError::Timeout,
        "a cancelled timer fired"
    );
    assert!(
        p.set_timer(period, Some(Duration::ZERO), 0, 0).is_err(),
        "a zero period is refused"
    );
}

fn one_shot_timer_fires_once(b: Backend) {
    let p = port(b, 0);
    let t0 = Instant::now();
    let id = p.set_timer(Duration::from_millis(30), None, 5, 6).unwrap();
    let late = p.set_timer(Duration::from_secs(60), None, 7, 8).unwrap();
    let e = p.get(WAIT).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert_eq!((e.key, e.overlapped, e.bytes), (5, 6, 1));
    assert_eq!(
        p.get(Some(Duration::from_millis(80))).unwrap_err(),
        GetError::Timeout,
        "a one-shot timer fires once"
    );
    assert!(!p.cancel_timer(id), "a fired one-shot timer is gone");
    assert!(p.cancel_timer(late));
}

/// The peer resets the connection: send_file ends with the OS error (no
/// hang, one entry), `bytes` what went out before it.
fn send_file_to_a_gone_peer_fails(b: Backend) {
    let p = port(b, 0);
    let data = harness::pattern_vec(1 << 20);
    let f = harness::TempFile::with(&data);
    let file = f.raw_fd();
    let (c, s) = tcp_pair();
    // Close with a reset (linger 0) so the sender's next send fails.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: c is an open socket; the option is one plain struct.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(c);
    s.set_nonblocking(true).unwrap();
    p.associate(s.as_raw_fd(), 4).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let spec = ringport::SendFile::new(file.as_raw_fd(), 0, None);
    p.send_file(s.as_raw_fd(), spec, 1).unwrap();
    let e = p.get(WAIT).unwrap();
    let err = e.status.as_ref().unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EPIPE) | Some(libc::ECONNRESET)
        ),
        "{err}"
    );
    assert!(e.bytes < data.len(), "bytes {}", e.bytes);
    assert!(p.get(Some(Duration::from_millis(20))).is_err(), "one entry");
}

/// As on Windows, a thread that waits on a second port leaves the first:
/// its slot there goes back, so another worker of the first port runs.
fn waiting_on_another_port_gives_the_slot_back(b: Backend) {
    let a = port(b, 1);
    let other = port(b, 1);
    let (a1, o1) = (a.clone(), other.clone());
    let (tx, rx) = mpsc::channel();
    let first = std::thread::spawn(move || {
        let _e = a1.get(WAIT).expect("an entry of port a");
        tx.send(()).unwrap();
        // Now wait on the other port, holding a's entry.
        let _ = o1.get(Some(Duration::from_secs(3)));
    });
    a.post(0, 0, 1).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let a2 = a.clone();
    let second = std::thread::spawn(move || a2.get(Some(Duration::from_secs(2))).is_ok());
    a.post(0, 0, 2).unwrap();
    let ran = second.join().unwrap();
    other.post(0, 0, 0).unwrap(); // lets the first thread end
    first.join().unwrap();
    assert!(
        ran,
        "a thread waiting on another port kept its slot on port a"
    );
}

/// A driver that accepts every op and never completes any.
struct Stuck {
    /// Panic in `wait` instead (a driver bug that kills the ring thread).
    panic: bool,
    caps: ringport::Capabilities,
    wake: Arc<StuckWake>,
    ops: Vec<ringport::Op>,
}

#[derive(Default)]
struct StuckWake {
    woken: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl ringport_core::Wake for StuckWake {
    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl ringport::Driver for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }
    fn capabilities(&self) -> &ringport::Capabilities {
        &self.caps
    }
    fn submit(
        &mut self,
        op: ringport::Op,
        _token: u64,
        _deadline: Option<Instant>,
    ) -> Result<ringport::OpId, ringport::SubmitError> {
        self.ops.push(op);
        Ok(ringport::OpId::new(self.ops.len() as u32, 1))
    }
    fn wait(
        &mut self,
        _out: &mut Vec<ringport::Completion>,
        _min: usize,
        timeout: Option<Duration>,
    ) -> std::io::Result<usize> {
        if self.panic && !self.ops.is_empty() {
            panic!("the stuck driver panics in wait (expected by the test)");
        }
        let mut w = self.wake.woken.lock().unwrap();
        if !*w {
            let t = timeout.unwrap_or(Duration::from_secs(1));
            w = self.wake.cv.wait_timeout(w, t).unwrap().0;
        }
        *w = false;
        Ok(0)
    }
    fn wait_ready(
        &mut self,
        _out: &mut Vec<ringport::Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> std::io::Result<usize> {
        // Nothing ever finishes: wait as `wait` does, announce nothing.
        self.wait(&mut Vec::new(), min, timeout)
    }
    fn take(&mut self, _id: ringport::OpId) -> Option<ringport::Completion> {
        None
    }
    fn cancel(&mut self, _id: ringport::OpId) -> std::io::Result<()> {
        Ok(())
    }
    fn cancel_fd(&mut self, _fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        Ok(0)
    }
    fn waker(&self) -> ringport::DriverWaker {
        ringport::DriverWaker::new(self.wake.clone())
    }
    fn in_flight(&self) -> usize {
        self.ops.len()
    }
}

fn stuck_port(panic: bool) -> ringport_core::CompletionPort {
    ringport_core::CompletionPort::with_driver(0, move || {
        Ok(Box::new(Stuck {
            panic,
            caps: ringport::Capabilities::all(ringport::Support::Native),
            wake: Arc::default(),
            ops: Vec::new(),
        }))
    })
    .unwrap()
}

fn close_bounded_with_a_stuck_driver() {
    let p = stuck_port(false);
    let (_c, s) = tcp_pair();
    p.associate(s.as_raw_fd(), 1).unwrap();
    p.recv(s.as_raw_fd(), Vec::with_capacity(8), 1).unwrap();
    p.set_timer(Duration::from_secs(60), None, 0, 0).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    let mut drained = 0;
    p.close_and_drain(|_| drained += 1);
    let took = t0.elapsed();
    assert!(
        took < ringport_core::port::SHUTDOWN_LIMIT + Duration::from_secs(1),
        "close took {took:?}"
    );
    assert_eq!(drained, 0, "the stuck op never came back");
    assert_eq!(p.get(Some(Duration::ZERO)).unwrap_err(), GetError::Closed);
}
