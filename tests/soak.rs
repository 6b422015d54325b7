//! Soak: 10,000 concurrent TCP connections on loopback for 60 s, random
//! message sizes, every byte checked, per backend. Ignored by default; run:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture --skip clients_child
//! ```
//!
//! `RINGPORT_SOAK_CONNS` (default 10000) and `RINGPORT_SOAK_SECS` (default 60)
//! scale it; `RINGPORT_SOAK_PAUSE_MS` (default 200) is the longest random pause
//! a client takes between messages (0 turns the soak into an echo benchmark).
//! The server reports its throughput and CPU time. The clients run in a child process (this binary again), since one
//! process holds at most 20,000 fds here.

use ringport_testkit::harness;

use harness::Rng;
use ringport::{Backend, TcpListener, TcpStream};
use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

macro_rules! soak {
    ($b:expr, $name:ident, $child:ident) => {
        #[test]
        #[ignore = "soak: 60 s and 10,000 connections; run with --ignored"]
        fn $name() {
            if ringport_testkit::harness::available($b, stringify!($name)) {
                crate::server($b, stringify!($child))
            }
        }
        #[test]
        #[ignore = "runs only as a child process of its soak test"]
        fn $child() {
            crate::clients($b)
        }
    };
}

#[cfg(target_os = "linux")]
mod uring {
    soak!(ringport::Backend::Uring, soak, clients_child);
}

mod aio {
    soak!(ringport::Backend::Aio, soak, clients_child);
}

mod epoll {
    soak!(ringport::Backend::Epoll, soak, clients_child);
}

mod poll {
    soak!(ringport::Backend::Poll, soak, clients_child);
}

mod select {
    soak!(ringport::Backend::Select, soak, clients_child);
}

mod sigio {
    soak!(ringport::Backend::Sigio, soak, clients_child);
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises the soft fd limit to the hard one; says so when that is not enough.
fn raise_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= need,
        "RLIMIT_NOFILE hard limit {} is below the {need} fds this soak needs; \
         lower RINGPORT_SOAK_CONNS or raise the hard limit",
        lim.rlim_cur
    );
}

fn server(b: Backend, child_test: &str) {
    let conns = env_or("RINGPORT_SOAK_CONNS", 10_000);
    let secs = env_or("RINGPORT_SOAK_SECS", 60);
    raise_nofile(conns + 100);
    let rt = harness::rt(b);
    let echoed = Rc::new(Cell::new(0u64));
    let served = echoed.clone();
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            &format!("{}::{child_test}", b.name()),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGPORT_SOAK_ADDR", addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(secs + 60);
        let mut accepted = 0;
        while accepted < conns {
            let r = ringport::timeout(
                deadline.saturating_duration_since(Instant::now()),
                listener.accept(),
            )
            .await;
            let (s, _) = r.expect("clients stopped connecting").unwrap();
            accepted += 1;
            let served = served.clone();
            ringport::spawn(async move {
                let mut buf = Vec::with_capacity(16 * 1024);
                loop {
                    let (r, b) = s.read(buf).await;
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let (r, b) = s.write_all(b).await;
                            if r.is_err() {
                                break;
                            }
                            served.set(served.get() + n as u64);
                            buf = b;
                        }
                    }
                }
            });
        }
        println!("{b}: holding {accepted} connections");
        // Serve until the clients are done.
        while !child_done(&mut child) {
            ringport::sleep(Duration::from_millis(100)).await.unwrap();
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "client process failed: {status:?}");
    });
    let cpu = process_cpu();
    let lines = reader.join().unwrap();
    let report = lines
        .iter()
        .find(|l| l.contains("SOAK OK"))
        .unwrap_or_else(|| panic!("clients did not finish: {lines:?}"));
    println!(
        "{b}: server echoed {} bytes ({:.1} MB/s over {secs} s), server CPU {:.2} s; clients: {report}",
        echoed.get(),
        echoed.get() as f64 / secs as f64 / 1e6,
        cpu.as_secs_f64()
    );
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn child_done(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// The client side: `conns` connections, each sending messages of random
/// size (1 B .. 16 KiB) and checking every byte that comes back.
fn clients(b: Backend) {
    let Ok(addr) = std::env::var("RINGPORT_SOAK_ADDR") else {
        panic!("clients_child is started by its soak test, not run on its own (use --skip clients_child)");
    };
    let addr = addr.parse().unwrap();
    let conns = env_or("RINGPORT_SOAK_CONNS", 10_000);
    let secs = env_or("RINGPORT_SOAK_SECS", 60);
    let pause_ms = env_or("RINGPORT_SOAK_PAUSE_MS", 200);
    raise_nofile(conns + 100);
    let rt = harness::rt(b);
    let checked = Rc::new(Cell::new(0u64));
    let held = Rc::new(Cell::new(0u64));
    let total = checked.clone();
    let max_held = held.clone();
    rt.block_on(async move {
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for i in 0..conns {
            let checked = checked.clone();
            let held = held.clone();
            tasks.push(ringport::spawn(async move {
                let s = TcpStream::connect(addr).await.expect("connect");
                held.set(held.get() + 1);
                let mut rng = Rng::new(i + 1);
                let mut rbuf = Vec::with_capacity(16 * 1024);
                while Instant::now() < end {
                    let n = 1 + rng.below(16 * 1024) as usize;
                    let seed = rng.next() as u8;
                    let msg: Vec<u8> = (0..n).map(|k| seed.wrapping_add(k as u8)).collect();
                    let (r, msg) = s.write_all(msg).await;
                    r.expect("send");
                    let mut got = 0;
                    while got < n {
                        let (r, b) = s.read(rbuf).await;
                        let k = r.expect("recv");
                        assert!(k > 0, "server closed early");
                        assert_eq!(&b[..k], &msg[got..got + k], "bytes corrupted");
                        got += k;
                        rbuf = b;
                    }
                    checked.set(checked.get() + n as u64);
                    // Pause a little, so 10,000 connections stay open at once
                    // rather than racing each other.
                    if pause_ms > 0 {
                        ringport::sleep(Duration::from_millis(rng.below(pause_ms)))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    println!(
        "SOAK OK {b}: {} connections held, {} bytes checked",
        max_held.get(),
        total.get()
    );
}
