//! The runtime features a server needs, on every backend: caught task
//! panics and aborts, blocking work, signals, graceful shutdown, timers,
//! socket options, IPv6, Unix datagrams, many-core runtimes; and the
//! examples' drain on SIGTERM.
//!
//! A backend that cannot start here is skipped by name, or fails when
//! `RINGPORT_REQUIRE_BACKENDS` lists it.

use ringport::{Backend, Runtime, TcpListener, TcpStream, UnhandledPanic};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Whether `b` can run here (see the module doc).
fn available(b: Backend, case: &str) -> bool {
    match ringport::driver(b) {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("RINGPORT_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|r| r.trim() == b.name()) {
                panic!("backend {b} is required but cannot run: {e}");
            }
            eprintln!("SKIPPED {b}::{case}: backend unavailable: {e}");
            false
        }
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Echoes every connection of `l` until the peer closes.
async fn echo_server(l: TcpListener) {
    loop {
        let Ok((c, _)) = l.accept().await else { return };
        ringport::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                let (r, b) = c.read(buf).await;
                match r {
                    Ok(n) if n > 0 => {
                        let (r, b) = c.write_all(b).await;
                        if r.is_err() {
                            return;
                        }
                        buf = b;
                        buf.clear();
                    }
                    _ => return,
                }
            }
        });
    }
}

/// One request/answer on an echo connection.
async fn echo_once(c: &TcpStream, msg: &[u8]) -> Vec<u8> {
    let (r, _) = c.write_all(msg.to_vec()).await;
    r.unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let (r, b) = c.read(Vec::with_capacity(4096)).await;
        let n = r.unwrap();
        assert!(n > 0, "the echo ended early");
        got.extend_from_slice(&b);
    }
    got
}

fn panicking_task_leaves_echo_running(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        ringport::spawn(echo_server(l));
        let c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo_once(&c, b"before").await, b"before");
        let bad = ringport::spawn(async {
            ringport::sleep(Duration::from_millis(5)).await.unwrap();
            if true {
                panic!("boom in a task");
            }
            7
        });
        // The echo goes on while (and after) the task panics.
        for i in 0..50 {
            let msg = format!("message {i}");
            assert_eq!(echo_once(&c, msg.as_bytes()).await, msg.as_bytes());
        }
        let err = bad
            .await
            .expect_err("a panicking task's handle is an error");
        assert!(err.is_panic() && !err.is_cancelled(), "{err}");
        assert!(err.to_string().contains("boom in a task"), "{err}");
        let payload = err.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in a task"));
        assert_eq!(echo_once(&c, b"after").await, b"after");
    });
}

fn abort_cancels_a_task(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        struct Guard(Rc<Cell<bool>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let dropped = Rc::new(Cell::new(false));
        let g = Guard(dropped.clone());
        let h = ringport::spawn(async move {
            let _g = g;
            ringport::sleep(Duration::from_secs(30)).await.unwrap();
            1
        });
        ringport::sleep(Duration::from_millis(5)).await.unwrap();
        assert!(!h.is_finished());
        h.abort();
        let t0 = Instant::now();
        let err = h.await.expect_err("an aborted task has no output");
        assert!(err.is_cancelled() && !err.is_panic(), "{err}");
        assert!(dropped.get(), "the aborted task's future was dropped");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A finished task keeps its output when aborted late.
        let done = ringport::spawn(async { 5 });
        ringport::yield_now().await;
        ringport::yield_now().await;
        done.abort();
        assert_eq!(done.await.unwrap(), 5);
    });
}

fn panic_can_shut_the_runtime_down(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.set_unhandled_panic(UnhandledPanic::ShutdownRuntime);
    let t0 = Instant::now();
    let res = rt.try_block_on(async {
        ringport::spawn(async {
            ringport::sleep(Duration::from_millis(5)).await.unwrap();
            panic!("fatal in a task");
        });
        ringport::sleep(Duration::from_secs(30)).await.unwrap();
    });
    let err = res.expect_err("the runtime shuts down on the task's panic");
    assert!(err.to_string().contains("fatal in a task"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

fn spawn_blocking_results_arrive(b: Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        ringport::spawn(echo_server(l));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let jobs: Vec<_> = (0..200u64)
            .map(|i| {
                let (running, most) = (running.clone(), most.clone());
                ringport::spawn_blocking(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    running.fetch_sub(1, Ordering::SeqCst);
                    (i * 3, std::thread::current().name().map(String::from))
                })
            })
            .collect();
        // The runtime's thread stays free meanwhile: an echo goes through.
        let c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo_once(&c, b"while blocking").await, b"while blocking");
        let mut sum = 0;
        for (i, h) in jobs.into_iter().enumerate() {
            let (v, name) = h.await.unwrap();
            assert_eq!(v, i as u64 * 3);
            assert_eq!(name.as_deref(), Some("ringport-blocking"));
            sum += v;
        }
        assert_eq!(sum, 3 * 199 * 200 / 2);
        let most = most.load(Ordering::SeqCst);
        assert!(
            (2..=ringport::DEFAULT_MAX_BLOCKING_THREADS).contains(&most),
            "jobs ran {most} at a time; the pool is bounded by {}",
            ringport::DEFAULT_MAX_BLOCKING_THREADS
        );
        // 200 jobs of 10 ms on one thread would take 2 s.
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let err = ringport::spawn_blocking(|| -> u32 { panic!("blocking boom") })
            .await
            .expect_err("a panicking job is an error");
        assert!(err.is_panic() && err.to_string().contains("blocking boom"));
    });
    // A pool of one thread: jobs run one at a time, and one aborted before
    // it started never runs.
    let rt = ringport::Builder::new()
        .backend(b)
        .max_blocking_threads(1)
        .build_local()
        .unwrap();
    rt.block_on(async {
        let ran = Arc::new(AtomicUsize::new(0));
        let first = ringport::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)));
        let r = ran.clone();
        let second = ringport::spawn_blocking(move || r.fetch_add(1, Ordering::SeqCst));
        second.abort();
        first.await.unwrap();
        let err = second.await.expect_err("an aborted job has no result");
        assert!(err.is_cancelled(), "{err}");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the aborted job ran");
        let t0 = Instant::now();
        let jobs: Vec<_> = (0..4)
            .map(|_| ringport::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20))))
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(80),
            "4 × 20 ms on one thread"
        );
    });
}

fn interval_ticks_and_sleep_resets(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let period = Duration::from_millis(15);
        let t0 = Instant::now();
        let mut iv = ringport::interval(period);
        let first = iv.tick().await.unwrap();
        assert!(
            first.duration_since(t0) < Duration::from_millis(10),
            "the first tick is at once"
        );
        for k in 1..=4u32 {
            let due = iv.tick().await.unwrap();
            assert_eq!(due, first + period * k, "ticks keep their schedule");
            assert!(Instant::now() >= due, "a tick came early");
        }
        assert!(t0.elapsed() >= period * 4);
        // A missed tick under Skip: one tick now, then the schedule ahead.
        iv.set_missed_tick_behavior(ringport::MissedTickBehavior::Skip);
        std::thread::sleep(period * 3);
        let late = iv.tick().await.unwrap();
        let next = iv.tick().await.unwrap();
        assert_eq!(late, first + period * 5, "the missed tick fires, late");
        assert!(next - late >= period * 2, "Skip skipped no tick");
        assert_eq!(
            (next - late).as_nanos() % period.as_nanos(),
            0,
            "off schedule"
        );
        // A zero period is an error, not a panic.
        let mut zero = ringport::interval(Duration::ZERO);
        assert_eq!(
            zero.tick().await.unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );

        // A long sleep reset to a short deadline ends at the new one ...
        let t0 = Instant::now();
        let mut s = ringport::sleep(Duration::from_secs(30));
        assert!(
            ringport::timeout(Duration::from_millis(20), &mut s)
                .await
                .is_err(),
            "the 30 s sleep ended early"
        );
        s.reset(Instant::now() + Duration::from_millis(20));
        (&mut s).await.unwrap();
        assert!(s.is_elapsed());
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // ... and a short one reset to a later deadline waits for it.
        let t0 = Instant::now();
        let mut s = ringport::sleep(Duration::from_millis(5));
        s.reset(t0 + Duration::from_millis(60));
        s.await.unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t0.elapsed()
        );
    });
}

/// An int socket option, read with getsockopt(2) itself.
fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len describe a writable int.
    let r = unsafe { libc::getsockopt(fd, level, name, &mut v as *mut _ as *mut _, &mut len) };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

fn socket_options_read_back(b: Backend) {
    use std::os::fd::AsRawFd;
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let s = ringport::TcpSocket::new_v6().unwrap();
        s.set_reuseaddr(true).unwrap();
        s.set_reuseport(true).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_keepalive_params(Duration::from_secs(7), Duration::from_secs(3), 4)
            .unwrap();
        s.set_linger(Some(Duration::from_secs(2))).unwrap();
        s.set_send_buffer_size(64 * 1024).unwrap();
        s.set_recv_buffer_size(96 * 1024).unwrap();
        s.set_only_v6(true).unwrap();
        let fd = s.as_raw_fd();
        let (sol, tcp) = (libc::SOL_SOCKET, libc::IPPROTO_TCP);
        assert_eq!(getsockopt_int(fd, sol, libc::SO_REUSEADDR), 1);
        assert_eq!(getsockopt_int(fd, sol, libc::SO_REUSEPORT), 1);
        assert_eq!(getsockopt_int(fd, tcp, libc::TCP_NODELAY), 1);
        assert_eq!(getsockopt_int(fd, sol, libc::SO_KEEPALIVE), 1);
        assert_eq!(getsockopt_int(fd, tcp, libc::TCP_KEEPIDLE), 7);
        assert_eq!(getsockopt_int(fd, tcp, libc::TCP_KEEPINTVL), 3);
        assert_eq!(getsockopt_int(fd, tcp, libc::TCP_KEEPCNT), 4);
        // Linux doubles the buffer sizes it is given.
        assert_eq!(getsockopt_int(fd, sol, libc::SO_SNDBUF), 2 * 64 * 1024);
        assert_eq!(getsockopt_int(fd, sol, libc::SO_RCVBUF), 2 * 96 * 1024);
        assert_eq!(getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 1);
        let mut l = libc::linger {
            l_onoff: 0,
            l_linger: 0,
        };
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        // SAFETY: l and len describe a writable linger.
        let r = unsafe {
            libc::getsockopt(
                fd,
                sol,
                libc::SO_LINGER,
                &mut l as *mut _ as *mut _,
                &mut len,
            )
        };
        assert_eq!((r, l.l_onoff, l.l_linger), (0, 1, 2));
        // The socket's own getters agree.
        assert!(s.reuseaddr().unwrap() && s.reuseport().unwrap() && s.nodelay().unwrap());
        assert!(s.keepalive().unwrap() && s.only_v6().unwrap());
        assert_eq!(
            s.keepalive_params().unwrap(),
            (Duration::from_secs(7), Duration::from_secs(3), 4)
        );
        assert_eq!(s.linger().unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(s.send_buffer_size().unwrap(), 2 * 64 * 1024);
        // Bad input is an error naming it.
        let e = s.set_keepalive_params(Duration::ZERO, Duration::from_secs(1), 1);
        assert!(e.unwrap_err().to_string().contains("idle"));
        // The backlog: Linux reports a listener's in tcpi_sacked.
        s.bind("[::1]:0".parse().unwrap()).unwrap();
        let l = s.listen(37).unwrap();
        // SAFETY: tcp_info is plain data; all-zero is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: info and len describe a writable tcp_info.
        let r = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                tcp,
                libc::TCP_INFO,
                &mut info as *mut _ as *mut _,
                &mut len,
            )
        };
        assert_eq!((r, info.tcpi_sacked), (0, 37), "the listen backlog");
        // Bind before connect: the connection leaves from the bound port.
        let addr = l.local_addr().unwrap();
        let c = ringport::TcpSocket::new_v6().unwrap();
        c.bind("[::1]:0".parse().unwrap()).unwrap();
        let from = c.local_addr().unwrap();
        let acc = ringport::spawn(async move { l.accept().await.map(|(_, peer)| peer) });
        let stream = c.connect(addr).await.unwrap();
        assert_eq!(stream.local_addr().unwrap(), from);
        assert_eq!(acc.await.unwrap().unwrap(), from);
    });
}

fn ipv6_echo_on_loopback(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let l = TcpListener::bind("[::1]:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        assert!(addr.is_ipv6());
        ringport::spawn(echo_server(l));
        let c = TcpStream::connect(addr).await.unwrap();
        assert!(c.peer_addr().unwrap().is_ipv6());
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(echo_once(&c, &msg).await, msg);
        // UDP over ::1 too.
        let a = ringport::UdpSocket::bind("[::1]:0".parse().unwrap()).unwrap();
        let bsock = ringport::UdpSocket::bind("[::1]:0".parse().unwrap()).unwrap();
        let (r, _) = a
            .send_to(b"v6 datagram".to_vec(), bsock.local_addr().unwrap())
            .await;
        r.unwrap();
        let (r, got) = bsock.recv_from(Vec::with_capacity(64)).await;
        let (n, from) = r.unwrap();
        assert_eq!(
            (&got[..n], from),
            (&b"v6 datagram"[..], a.local_addr().unwrap())
        );
    });
}

fn unix_datagram_round_trip(b: Backend) {
    let rt = Runtime::with_backend(b).unwrap();
    let dir = std::env::temp_dir().join(format!("ringport-udg-{}-{b}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    rt.block_on(async {
        let (pa, pb) = (dir.join("a.sock"), dir.join("b.sock"));
        let a = ringport::UnixDatagram::bind(&pa).unwrap();
        let bs = ringport::UnixDatagram::bind(&pb).unwrap();
        assert_eq!(a.local_path().unwrap().as_deref(), Some(pa.as_path()));
        let (r, _) = a.send_to(b"ping".to_vec(), &pb).await;
        assert_eq!(r.unwrap(), 4);
        let (r, got) = bs.recv_from(Vec::with_capacity(64)).await;
        let (n, from) = r.unwrap();
        assert_eq!(&got[..n], b"ping");
        assert_eq!(from.as_deref(), Some(pa.as_path()), "the sender's path");
        let (r, _) = bs.send_to(b"pong".to_vec(), from.unwrap()).await;
        r.unwrap();
        let (r, got) = a.recv(Vec::with_capacity(64)).await;
        assert_eq!(&got[..r.unwrap()], b"pong");
        // Datagram boundaries hold; a connected pair works with send/recv.
        let (x, y) = ringport::UnixDatagram::pair().unwrap();
        for m in [&b"one"[..], b"two two", b"3"] {
            let (r, _) = x.send(m.to_vec()).await;
            r.unwrap();
        }
        for m in [&b"one"[..], b"two two", b"3"] {
            let (r, got) = y.recv(Vec::with_capacity(64)).await;
            assert_eq!(&got[..r.unwrap()], m);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn spawns_from_many_threads_all_run(b: Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let rts = ringport::Builder::new()
        .threads(2)
        .backend(b)
        .pin_cpus(true)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let on_second = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let spawners: Vec<_> = (0..8)
        .map(|t| {
            let handles = rts.handles().to_vec();
            let (ran, on_second, tx) = (ran.clone(), on_second.clone(), tx.clone());
            std::thread::spawn(move || {
                let joins: Vec<_> = (0..1250usize)
                    .map(|k| {
                        let (ran, on_second) = (ran.clone(), on_second.clone());
                        handles[k % 2].spawn(async move {
                            ringport::yield_now().await;
                            ran.fetch_add(1, Ordering::Relaxed);
                            let name = std::thread::current().name().map(String::from);
                            if name.as_deref() == Some("ringport-rt-1") {
                                on_second.fetch_add(1, Ordering::Relaxed);
                            }
                            t * 10_000 + k
                        })
                    })
                    .collect();
                // The handles are Send: await them on a runtime and report.
                handles[t % 2].spawn(async move {
                    let mut sum = 0;
                    for (k, j) in joins.into_iter().enumerate() {
                        let v = j.await.unwrap();
                        assert_eq!(v, t * 10_000 + k);
                        sum += 1;
                    }
                    tx.send(sum).unwrap();
                });
            })
        })
        .collect();
    for s in spawners {
        s.join().unwrap();
    }
    let mut total = 0;
    for _ in 0..8 {
        total += rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a spawner's tasks did not all finish");
    }
    assert_eq!(total, 10_000);
    assert_eq!(ran.load(Ordering::Relaxed), 10_000);
    assert_eq!(
        on_second.load(Ordering::Relaxed),
        5_000,
        "half ran on runtime 1"
    );
    // The thread-per-core server: one SO_REUSEPORT listener per runtime.
    let (addr, _tasks) = rts
        .serve_reuse_port(loopback(), |l, _i| async move {
            echo_server(l).await;
            Ok(())
        })
        .unwrap();
    for i in 0..8 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // An abort from another thread reaches a task on a runtime.
    let h = rts.spawn(async {
        ringport::sleep(Duration::from_secs(30)).await.unwrap();
    });
    let h = std::thread::spawn(move || {
        h.abort();
        h
    })
    .join()
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rts.spawn(async move {
        tx.send(h.await.map_err(|e| e.is_cancelled())).unwrap();
    });
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the aborted task's handle resolves");
    assert_eq!(
        got,
        Err(true),
        "an abort from another thread cancels the task"
    );
    let handle = rts.handle(0).clone();
    rts.shutdown_timeout(Duration::from_millis(200)).unwrap();
    // Spawning onto a runtime that is gone is a cancel, not a hang.
    let late = handle.spawn(async { 1 });
    assert!(late.is_finished());
}

fn shutdown_token_and_timeout(b: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rt = Runtime::with_backend(b).unwrap();
    let token = rt.shutdown_token();
    let (finished, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    rt.block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let t = token.clone();
        let acceptor = ringport::spawn(async move {
            let mut n = 0;
            while let Some(_conn) = l.accept_until(&t).await.unwrap() {
                n += 1;
            }
            n
        });
        let _c = TcpStream::connect(addr).await.unwrap();
        // A task that ends when told to, and one that never does.
        let (t, f) = (token.clone(), finished.clone());
        ringport::spawn(async move {
            t.triggered().await;
            ringport::sleep(Duration::from_millis(10)).await.unwrap();
            f.store(true, Ordering::SeqCst);
        });
        let guard = SetOnDrop(dropped.clone());
        ringport::spawn(async move {
            let _g = guard;
            std::future::pending::<()>().await;
        });
        ringport::sleep(Duration::from_millis(20)).await.unwrap();
        // Another thread may trigger it; the accept loop stops.
        let t = token.clone();
        std::thread::spawn(move || t.trigger()).join().unwrap();
        assert_eq!(
            acceptor.await.unwrap(),
            1,
            "one connection, then no more accepting"
        );
        assert!(token
            .run_until(std::future::pending::<()>())
            .await
            .is_none());
    });
    let t0 = Instant::now();
    let left = rt.shutdown_timeout(Duration::from_millis(200)).unwrap();
    let took = t0.elapsed();
    assert_eq!(left, 1, "the task that never ends is dropped");
    assert!(
        finished.load(Ordering::SeqCst),
        "the task that drains ran to its end"
    );
    assert!(dropped.load(Ordering::SeqCst));
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

static APP_HANDLER_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn app_handler(_: libc::c_int) {
    APP_HANDLER_RAN.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The env var that makes the signal case's child run its listening side.
const SIGNAL_CHILD: &str = "RINGPORT_SERVER_RUNTIME_SIGNAL_CHILD";

/// The listening side, in a child process: two runtimes (this thread and
/// another) listen for SIGUSR1, then Ctrl-C, then SIGTERM, and say so on
/// stdout line by line.
fn signal_child(b: Backend) {
    use ringport::signal::{self, SignalKind};
    use std::io::Write;
    let say = |s: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "signal-child: {s}").unwrap();
        out.flush().unwrap();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let rt = Runtime::with_backend(b).unwrap();
        rt.block_on(async {
            let mut usr1 = signal::signal(SignalKind::user_defined1()).unwrap();
            tx.send(()).unwrap();
            usr1.recv().await.unwrap();
        });
    });
    rx.recv().unwrap();
    let rt = Runtime::with_backend(b).unwrap();
    rt.block_on(async {
        let mut usr1 = signal::signal(SignalKind::user_defined1()).unwrap();
        let mut usr1b = signal::signal(SignalKind::user_defined1()).unwrap();
        let mut term = signal::signal(SignalKind::terminate()).unwrap();
        // The backends' own signals are refused, by name.
        let rt5 = SignalKind::from_raw(libc::SIGRTMIN() + 5);
        let e = signal::signal(rt5).unwrap_err();
        assert!(e.to_string().contains("sigio"), "{e}");
        assert!(signal::signal(SignalKind::from_raw(libc::SIGKILL)).is_err());
        say("ready");
        usr1.recv().await.unwrap();
        usr1b.recv().await.unwrap();
        other.join().unwrap();
        say("usr1 x3");
        let int = ringport::spawn(signal::ctrl_c());
        ringport::yield_now().await; // the listener is registered
        say("ready for int");
        int.await.unwrap().unwrap();
        say("int");
        // A handler the application installed first is chained, not lost.
        // SAFETY: installing a plain handler that only stores an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = app_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
        let mut usr2 = signal::signal(SignalKind::user_defined2()).unwrap();
        say("ready for usr2");
        usr2.recv().await.unwrap();
        assert!(APP_HANDLER_RAN.load(std::sync::atomic::Ordering::SeqCst));
        say("usr2 chained");
        term.recv().await.unwrap();
        say("term");
    });
}

fn signals_arrive_as_stream_items(b: Backend) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let me = std::env::current_exe().unwrap();
    let name = format!("{}::signals_arrive_as_stream_items", b.name());
    let mut child = Command::new(me)
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SIGNAL_CHILD, b.name())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let watchdog = Watchdog::new(pid, Duration::from_secs(30));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = |want: &str| loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{b}: the child ended before {want:?}"))
            .unwrap();
        // (libtest may print "test NAME ... " on the same line first.)
        if let Some(at) = line.find("signal-child: ") {
            assert_eq!(&line[at + 14..], want, "{b}");
            return;
        }
    };
    let kill = |sig| {
        // SAFETY: plain kill(2) to our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    expect("ready");
    kill(libc::SIGUSR1);
    expect("usr1 x3");
    expect("ready for int");
    kill(libc::SIGINT);
    expect("int");
    expect("ready for usr2");
    kill(libc::SIGUSR2);
    expect("usr2 chained");
    kill(libc::SIGTERM);
    expect("term");
    let status = child.wait().unwrap();
    drop(watchdog);
    assert!(status.success(), "{b}: the child exited with {status}");
}

/// Kills process `pid` with SIGKILL if it is still there after `limit`
/// (so that a stuck child fails the test instead of hanging it).
struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn new(pid: libc::pid_t, limit: Duration) -> Watchdog {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(limit).is_err() {
                eprintln!("watchdog: killing {pid} after {limit:?}");
                // SAFETY: plain kill(2) of a child we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Watchdog { stop }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}

/// An example binary built next to this test (built with cargo if missing).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// A running example: its address, killed if still there when dropped.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Server {
    fn start(name: &str, args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(example(name))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start example");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{name} did not say where it listens: {line:?}"));
        Server { child, addr }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) of our child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Waits for the exit, at most `limit`; its status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, t0.elapsed());
            }
            assert!(
                t0.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DRAIN: Duration = Duration::from_secs(5);
const CLIENTS: usize = 200;

/// Runs `CLIENTS` client threads against `addr`: each does `before`, all
/// wait while the test sends `sig` to the server (and checks that it no
/// longer accepts), then each does `after`. Returns each client's error.
fn clients_across_signal(
    server: &mut Server,
    sig: i32,
    before: fn(usize, &mut std::net::TcpStream) -> Result<(), String>,
    after: fn(usize, &mut std::net::TcpStream) -> Result<(), String>,
) -> (Vec<String>, std::process::ExitStatus, Duration) {
    use std::sync::{Arc, Barrier};
    let addr = server.addr;
    let started = Arc::new(Barrier::new(CLIENTS + 1));
    let signalled = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (started, signalled) = (started.clone(), signalled.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"));
                let r = match &mut c {
                    Ok(c) => {
                        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        before(i, c)
                    }
                    Err(e) => Err(e.clone()),
                };
                started.wait();
                signalled.wait();
                r?;
                after(i, c.as_mut().unwrap())
            })
        })
        .collect();
    started.wait();
    server.signal(sig);
    // The signal is taken at once: new connections are refused soon.
    let t0 = Instant::now();
    loop {
        if std::net::TcpStream::connect(addr).is_err() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the server still accepts after the signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signalled.wait();
    let errors: Vec<String> = clients
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| h.join().unwrap().err().map(|e| format!("client {i}: {e}")))
        .collect();
    let (status, _) = server.wait_exit(DRAIN + Duration::from_secs(5));
    (errors, status, t0.elapsed())
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e} ({:?})", e.kind())
}

const PART: usize = 4096;

/// Client `i`'s message: 4 parts of `PART` bytes, its own pattern.
fn message(i: usize) -> Vec<u8> {
    (0..4 * PART)
        .map(|k| ((k * 31 + i * 7) % 251) as u8)
        .collect()
}

/// Sends part `p` of the message and reads its echo back whole.
fn echo_part(i: usize, p: usize, c: &mut std::net::TcpStream) -> Result<(), String> {
    use std::io::{Read, Write};
    let msg = message(i);
    let part = &msg[p * PART..(p + 1) * PART];
    c.write_all(part).map_err(io_err("write"))?;
    let mut back = vec![0u8; PART];
    c.read_exact(&mut back).map_err(io_err("read the echo"))?;
    if back != part {
        return Err(format!("part {p} came back changed"));
    }
    Ok(())
}

fn echo_server_drains_on_sigterm(b: Backend) {
    let mut server = Server::start(
        "echo_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--backend",
            b.name(),
            "--drain-secs",
            "5",
        ],
    );
    let (errors, status, took) = clients_across_signal(
        &mut server,
        libc::SIGTERM,
        // The message's first part goes (and comes back) before the signal,
        |i, c| echo_part(i, 0, c),
        // and the rest after it; then the client closes and sees the
        // server's end of stream, not a reset.
        |i, c| {
            use std::io::Read;
            for p in 1..4 {
                echo_part(i, p, c)?;
            }
            c.shutdown(std::net::Shutdown::Write)
                .map_err(io_err("shutdown"))?;
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).map_err(io_err("read the end"))?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the echo", rest.len()));
            }
            Ok(())
        },
    );
    assert!(
        errors.is_empty(),
        "{b}: {} clients failed: {errors:?}",
        errors.len()
    );
    assert!(status.success(), "{b}: echo_server exited with {status}");
    assert!(
        took < DRAIN,
        "{b}: exit took {took:?}, more than the drain time"
    );
}

fn echo_server_closes_what_is_left_after_the_drain(b: Backend) {
    use std::io::{Read, Write};
    let mut server = Server::start(
        "echo_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--backend",
            b.name(),
            "--drain-secs",
            "1",
        ],
    );
    // A client that never ends its exchange.
    let mut c = std::net::TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    server.signal(libc::SIGINT);
    let (status, took) = server.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{b}: echo_server exited with {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{b}: the exit took {took:?} with a 1 s drain"
    );
    // The connection was closed, not left hanging.
    let mut rest = Vec::new();
    let r = c.read_to_end(&mut rest);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{b}: {r:?}"
    );
}

/// Reads one HTTP response: (head, body).
fn read_response(c: &mut std::net::TcpStream) -> Result<(String, Vec<u8>), String> {
    use std::io::Read;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = c.read(&mut buf).map_err(io_err("read a response"))?;
        if n == 0 {
            return Err(format!(
                "end of stream in a response head ({} bytes)",
                data.len()
            ));
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while data.len() < head_end + len {
        let n = c.read(&mut buf).map_err(io_err("read a body"))?;
        if n == 0 {
            return Err("end of stream in a body".into());
        }
        data.extend_from_slice(&buf[..n]);
    }
    Ok((head, data[head_end..head_end + len].to_vec()))
}

fn served_file() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn www(b: Backend) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringport-drain-www-{}-{b}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("4k.bin"), served_file()).unwrap();
    dir
}

const GET: &[u8] = b"GET /4k.bin HTTP/1.1\r\nHost: x\r\n\r\n";

fn http_server_drains_on_sigterm(b: Backend) {
    let root = www(b);
    let mut server = Server::start(
        "http_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--root",
            root.to_str().unwrap(),
            "--backend",
            b.name(),
            "--drain-secs",
            "5",
        ],
    );
    let (errors, status, took) = clients_across_signal(
        &mut server,
        libc::SIGTERM,
        // One whole request; then even clients begin a second one (part of
        // its head) before the signal, odd ones stay idle.
        |i, c| {
            use std::io::Write;
            c.write_all(GET).map_err(io_err("write"))?;
            let (head, body) = read_response(c)?;
            if !head.starts_with("http/1.1 200") || body != served_file() {
                return Err(format!("bad first response {head:?}"));
            }
            if i % 2 == 0 {
                c.write_all(&GET[..20]).map_err(io_err("write"))?;
            }
            Ok(())
        },
        // The request begun is answered whole, with Connection: close; then
        // (and at once for the idle ones) the server closes cleanly.
        |i, c| {
            use std::io::{Read, Write};
            if i % 2 == 0 {
                c.write_all(&GET[20..]).map_err(io_err("write"))?;
                let (head, body) = read_response(c)?;
                if !head.starts_with("http/1.1 200") || body != served_file() {
                    return Err(format!("bad response in flight {head:?}"));
                }
                if !head.contains("connection: close") {
                    return Err(format!("no Connection: close in {head:?}"));
                }
            }
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).map_err(io_err("read the end"))?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the last response", rest.len()));
            }
            Ok(())
        },
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        errors.is_empty(),
        "{b}: {} clients failed: {errors:?}",
        errors.len()
    );
    assert!(status.success(), "{b}: http_server exited with {status}");
    assert!(
        took < DRAIN,
        "{b}: exit took {took:?}, more than the drain time"
    );
}

macro_rules! backend_cases {
    ($m:ident, $b:expr, [$($case:ident),* $(,)?]) => {
        mod $m {
            $(
                #[test]
                fn $case() {
                    if let Ok(b) = std::env::var(super::SIGNAL_CHILD) {
                        if b == ringport::Backend::name($b) {
                            super::signal_child($b);
                        }
                        return;
                    }
                    if super::available($b, stringify!($case)) {
                        super::$case($b);
                    }
                }
            )*
        }
    };
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        backend_cases!(uring, ringport::Backend::Uring, [$($case),*]);
        backend_cases!(aio, ringport::Backend::Aio, [$($case),*]);
        backend_cases!(epoll, ringport::Backend::Epoll, [$($case),*]);
        backend_cases!(poll, ringport::Backend::Poll, [$($case),*]);
        backend_cases!(select, ringport::Backend::Select, [$($case),*]);
        backend_cases!(sigio, ringport::Backend::Sigio, [$($case),*]);
    };
}

on_every_backend!(
    panicking_task_leaves_echo_running,
    abort_cancels_a_task,
    panic_can_shut_the_runtime_down,
    spawn_blocking_results_arrive,
    shutdown_token_and_timeout,
    interval_ticks_and_sleep_resets,
    socket_options_read_back,
    spawns_from_many_threads_all_run,
    ipv6_echo_on_loopback,
    unix_datagram_round_trip,
    signals_arrive_as_stream_items,
    echo_server_drains_on_sigterm,
    echo_server_closes_what_is_left_after_the_drain,
    http_server_drains_on_sigterm,
);
