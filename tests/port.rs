//! The CompletionPort (IOCP model), on every backend: W2, W3, the
//! concurrency limit, LIFO wake order, cancel-all on an fd, close with
//! waiters and ops in flight, a real socket round trip, and `iocp_echo`
//! serving 200 clients.

use ringport_testkit::harness;

use harness::Counted;
use ringport::{Backend, CompletionPort, GetError};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
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
        let (p, tx) = (p.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let e = p.get(WAIT).unwrap();
            tx.send((id, e.overlapped)).unwrap();
        }));
        // Let this one park before the next starts waiting.
        std::thread::sleep(Duration::from_millis(50));
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
    let fd = e.status.unwrap() as i32;
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

/// `iocp_echo` as a real program, 200 clients, random-sized messages.
fn iocp_echo_serves_200_clients(b: Backend) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/iocp_echo");
    if !bin.exists() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "iocp_echo"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cargo build --example iocp_echo failed");
    }
    let mut child = std::process::Command::new(&bin)
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
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _guard = Kill(child);
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("iocp_echo said {line:?}"))
        .to_string();
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
