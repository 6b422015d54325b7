//! S1–S12: sockets.

use crate::harness::{
    closed_port, pattern, pattern_vec, rt, run_child, thread_cpu, Drv, Rng, Target,
};
use ringport::{spawn, AnyBufMut, Op, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn s1_tcp_accept_connect(b: Target) {
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let acc = spawn(async move { l.accept().await });
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, peer) = acc.await.unwrap().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        assert_eq!(c.peer_addr().unwrap(), addr);
    });
}

pub fn s2_echo_one_mib(b: Target) {
    const TOTAL: usize = 1 << 20;
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let (r, b) = s.read(buf).await;
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                let (r, b) = s.write_all(b).await;
                assert_eq!(r.unwrap(), n);
                buf = b;
            }
            s.shutdown(Shutdown::Write).await.unwrap();
        });
        let c = std::rc::Rc::new(TcpStream::connect(addr).await.unwrap());
        let writer = c.clone();
        let w = spawn(async move {
            let data = pattern_vec(TOTAL);
            let mut rng = Rng::new(22);
            let mut off = 0;
            while off < TOTAL {
                let n = (1 + rng.below(64 * 1024) as usize).min(TOTAL - off);
                let (r, _) = writer.write_all(data[off..off + n].to_vec()).await;
                assert_eq!(r.unwrap(), n);
                off += n;
            }
            writer.shutdown(Shutdown::Write).await.unwrap();
        });
        let mut got = Vec::with_capacity(TOTAL);
        let mut buf = Vec::with_capacity(32 * 1024);
        loop {
            let (r, b) = c.read(buf).await;
            let n = r.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b);
            buf = b;
        }
        w.await.unwrap();
        assert_eq!(got.len(), TOTAL);
        assert!(
            got.iter().enumerate().all(|(i, &x)| x == pattern(i)),
            "bytes intact and in order"
        );
    });
}

pub fn s3_recv_after_peer_close(b: Target) {
    rt(b).block_on(async {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().unwrap();
        drop(s);
        let (r, _) = c.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0);
    });
}

fn reset(s: std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a valid option value of the given size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0);
    drop(s);
}

pub fn s4_recv_after_reset(b: Target) {
    rt(b).block_on(async {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().unwrap();
        reset(s);
        let (r, _) = c.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
    });
}

pub fn s5_connect_refused(b: Target) {
    rt(b).block_on(async {
        let e = TcpStream::connect(closed_port()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    });
}

pub fn s6_send_to_gone_peer(b: Target) {
    crate::harness::expect_child_ok(b, "s6_child", "RINGPORT_S6_CHILD", "S6 OK");
}

/// Child of S6: SIGPIPE at its default action, then send to a dead peer.
pub fn s6_child(b: Target) {
    if std::env::var("RINGPORT_S6_CHILD").is_err() {
        return;
    }
    // SAFETY: restoring the default action of SIGPIPE in this process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    rt(b).block_on(async {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().unwrap();
        reset(s);
        let mut last = None;
        for _ in 0..10 {
            let (r, _) = c.write_all(vec![1u8; 64 * 1024]).await;
            if let Err(e) = r {
                last = Some(e);
                break;
            }
        }
        let e = last.expect("sending to a reset peer never failed");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)),
            "got {e}"
        );
    });
    println!("S6 OK");
}

pub fn s7_stream_order(b: Target) {
    const N: usize = 1 << 20;
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let (s, _) = l.accept().await.unwrap();
        // Two writes submitted back to back, both in flight at once.
        let a = s.write_all(vec![b'A'; N]);
        let bb = s.write_all(vec![b'B'; N]);
        let ((ra, _), (rb, _)) = join(a, bb).await;
        assert_eq!((ra.unwrap(), rb.unwrap()), (N, N));
        s.shutdown(Shutdown::Write).await.unwrap();
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 2 * N);
        assert!(all[..N].iter().all(|&x| x == b'A'), "first write first");
        assert!(all[N..].iter().all(|&x| x == b'B'), "second write second");
    });
    // Two reads submitted back to back consume the data in order.
    let mut d = Drv::new(b);
    let l = std::net::TcpListener::bind(loopback()).unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(d.nonblocking()).unwrap();
    for token in 0..2 {
        d.submit(
            Op::Recv {
                fd: s.as_raw_fd(),
                buf: AnyBufMut::new(Vec::with_capacity(600)),
                flags: 0,
            },
            token,
        );
    }
    d.idle(Duration::from_millis(10));
    c.write_all(&pattern_vec(1000)).unwrap();
    let mut all = d.collect(2, Duration::from_secs(10));
    all.sort_by_key(|c| c.token);
    let first: Vec<u8> = all.remove(0).op.into_buf_mut().unwrap().downcast().unwrap();
    let second: Vec<u8> = all.remove(0).op.into_buf_mut().unwrap().downcast().unwrap();
    let joined: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
    assert!(!first.is_empty() && !second.is_empty());
    assert_eq!(
        joined,
        pattern_vec(joined.len()),
        "the first read got the first bytes"
    );
}

/// Polls two futures together until both finish.
pub async fn join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

pub fn s8_udp(b: Target) {
    rt(b).block_on(async {
        let a = UdpSocket::bind(loopback()).unwrap();
        let bsock = UdpSocket::bind(loopback()).unwrap();
        let (r, _) = a
            .send_to(&b"datagram"[..], bsock.local_addr().unwrap())
            .await;
        assert_eq!(r.unwrap(), 8);
        let (r, buf) = bsock.recv_from(Vec::with_capacity(64)).await;
        let (n, from) = r.unwrap();
        assert_eq!(n, 8);
        assert_eq!(buf, b"datagram");
        assert_eq!(from, a.local_addr().unwrap(), "the peer address comes back");
    });
}

pub fn s9_unix_stream_echo(b: Target) {
    let path = std::env::temp_dir().join(format!(
        "ringport-s9-{}-{}.sock",
        std::process::id(),
        b.name()
    ));
    let _ = std::fs::remove_file(&path);
    rt(b).block_on(async {
        let l = UnixListener::bind(&path).unwrap();
        spawn(async move {
            let s = l.accept().await.unwrap();
            let (r, buf) = s.read(Vec::with_capacity(64)).await;
            r.unwrap();
            let (r, _) = s.write_all(buf).await;
            r.unwrap();
        });
        let c = UnixStream::connect(&path).await.unwrap();
        let (r, _) = c.write_all(&b"over a unix socket"[..]).await;
        assert_eq!(r.unwrap(), 18);
        let (r, buf) = c.read(Vec::with_capacity(64)).await;
        assert_eq!(r.unwrap(), 18);
        assert_eq!(buf, b"over a unix socket");
    });
    let _ = std::fs::remove_file(&path);
}

pub fn s10_shutdown_write(b: Target) {
    rt(b).block_on(async {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.shutdown(Shutdown::Write).await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "the peer reads end of stream");
        s.write_all(b"still open").unwrap();
        let (r, buf) = c.read(Vec::with_capacity(32)).await;
        assert_eq!(r.unwrap(), 10, "this side can still read");
        assert_eq!(buf, b"still open");
    });
}

pub fn s11_many_connections(b: Target) {
    // A backend with an fd cap (select's FD_SETSIZE) gets fewer clients.
    let capped = Drv::new(b).d.capabilities().max_fd.is_some();
    let n: usize = if capped { 400 } else { 1000 };
    let rt = rt(b);
    rt.block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        let child = std::thread::spawn(move || {
            run_child(
                &format!("{}::s11_client_child", b.name()),
                &[
                    ("RINGPORT_S11_ADDR", addr.to_string()),
                    ("RINGPORT_S11_N", n.to_string()),
                ],
            )
        });
        let served = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let mut handles = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().await.unwrap();
            let served = served.clone();
            handles.push(spawn(async move {
                let (r, buf) = s.read(Vec::with_capacity(256)).await;
                let n = r.unwrap();
                assert!(n > 0);
                let (r, _) = s.write_all(buf).await;
                assert_eq!(r.unwrap(), n);
                served.set(served.get() + 1);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(served.get(), n);
        let out = child.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "client child failed:\n{text}");
        assert!(
            text.contains(&format!("S11 OK {n}")),
            "client child:\n{text}"
        );
    });
}

/// Child of S11: `n` concurrent clients, each sends a message and checks the echo.
pub fn s11_client_child(_b: Target) {
    let (Ok(addr), Ok(n)) = (
        std::env::var("RINGPORT_S11_ADDR"),
        std::env::var("RINGPORT_S11_N"),
    ) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let n: usize = n.parse().unwrap();
    // The client side uses plain blocking sockets: connect all first (so the
    // server holds n connections at once), then echo on each.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(std::net::TcpStream::connect(addr).expect("connect"));
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = format!("hello from client {i:05}");
        c.write_all(msg.as_bytes()).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = format!("hello from client {i:05}");
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    println!("S11 OK {n}");
}

pub fn s12_pending_accept_is_idle(b: Target) {
    rt(b).block_on(async {
        let l = TcpListener::bind(loopback()).unwrap();
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let r = ringport::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(r.is_err(), "nobody connected");
        let wall = t0.elapsed();
        let cpu = thread_cpu() - cpu0;
        assert!(wall >= Duration::from_millis(200));
        assert!(
            cpu < Duration::from_millis(20),
            "waiting burned {cpu:?} of CPU in {wall:?}"
        );
    });
}
