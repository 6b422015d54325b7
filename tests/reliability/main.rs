//! Reliability under faults, on every backend this build has: fd exhaustion
//! on accept, fds closed under in-flight ops, peers resetting mid-read.
//! (Completion-queue overflow on uring is in `uring/tests/overflow.rs`.)

#[path = "../conformance/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{rt, thread_cpu, Drv, Pipe};
use ringport::{AnyBufMut, Backend, Op, TcpListener, CURRENT_POSITION};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

macro_rules! case {
    ($b:expr, $name:ident) => {
        #[test]
        fn $name() {
            if crate::harness::available($b, stringify!($name)) {
                crate::$name($b)
            }
        }
    };
}

macro_rules! child {
    ($b:expr, $name:ident) => {
        #[test]
        #[ignore = "runs only as a child process of its case"]
        fn $name() {
            crate::$name($b)
        }
    };
}

macro_rules! reliability {
    ($b:expr) => {
        case!($b, accept_backs_off_on_emfile_and_recovers);
        child!($b, emfile_child);
        case!($b, close_under_in_flight_read_never_reaches_reused_fd);
        case!($b, reset_while_read_in_flight);
    };
}

#[cfg(target_os = "linux")]
mod uring {
    reliability!(ringport::Backend::Uring);
}

/// Child: out of fds while a client waits in the backlog; accept must back
/// off without spinning, then succeed once fds are freed.
fn accept_backs_off_on_emfile_and_recovers(b: Backend) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            &format!("{}::emfile_child", b.name()),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGPORT_EMFILE_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("child ended before listening: {seen:?}\n{err}");
        };
        let line = line.unwrap();
        seen.push(line.clone());
        // libtest may print "test NAME ... " on the same line first.
        if let Some(at) = line.find("LISTENING ") {
            break line[at + "LISTENING ".len()..].trim().to_string();
        }
    };
    let mut c = std::net::TcpStream::connect(addr.as_str()).unwrap();
    c.write_all(b"hello after emfile").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "child failed: {rest:?}\n{err}");
    assert!(
        rest.iter().any(|l| l.contains("EMFILE OK")),
        "child output: {rest:?}\n{err}"
    );
}

fn emfile_child(b: Backend) {
    if std::env::var("RINGPORT_EMFILE_CHILD").is_err() {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: lowers this child process's own fd limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let rt = rt(b);
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Use up every fd.
        let mut hog = Vec::new();
        loop {
            // SAFETY: dup of an fd we own; failure (EMFILE) ends the loop.
            let fd = unsafe { libc::dup(l.as_raw_fd()) };
            if fd < 0 {
                break;
            }
            hog.push(fd);
        }
        println!("LISTENING {}", l.local_addr().unwrap());
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let accepted = ringport::spawn(async move { l.accept().await });
        ringport::sleep(Duration::from_millis(300)).await.unwrap();
        assert!(
            !accepted.is_finished(),
            "accept cannot succeed without an fd"
        );
        let cpu = thread_cpu() - cpu0;
        assert!(
            cpu < Duration::from_millis(60),
            "backing off burned {cpu:?}"
        );
        for fd in hog.drain(..) {
            // SAFETY: closing the duplicates made above.
            unsafe { libc::close(fd) };
        }
        let (s, _) = ringport::timeout(Duration::from_secs(5), accepted)
            .await
            .expect("accept recovers once fds are free")
            .expect("accept");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        let (r, buf) = s.read(Vec::with_capacity(64)).await;
        r.unwrap();
        assert_eq!(buf, b"hello after emfile");
    });
    println!("EMFILE OK");
}

/// A close through the driver cancels the read pending on the fd; a new fd
/// that reuses the number never sees the old read complete with its data.
fn close_under_in_flight_read_never_reaches_reused_fd(b: Backend) {
    let mut d = Drv::new(b);
    let old = Pipe::new(d.nonblocking());
    let Pipe { r, w } = old;
    let rfd = r.into_raw_fd();
    d.submit(
        Op::Read {
            fd: rfd,
            offset: CURRENT_POSITION,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        1,
    );
    d.idle(Duration::from_millis(10));
    d.submit(Op::Close { fd: rfd }, 2);
    let done = d.collect(2, Duration::from_secs(5));
    let read = done.iter().find(|c| c.token == 1).unwrap();
    assert_eq!(
        read.result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
    drop(w);
    // Likely reuses the number just closed.
    let fresh = Pipe::new(d.nonblocking());
    fresh.put(b"new data");
    d.idle(Duration::from_millis(30));
    assert!(
        d.done.is_empty(),
        "a completion arrived after close: {:?}",
        d.done.iter().map(|c| c.token).collect::<Vec<_>>()
    );
    d.submit(
        Op::Read {
            fd: fresh.rfd(),
            offset: CURRENT_POSITION,
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        3,
    );
    let c = d.wait_token(3, Duration::from_secs(5));
    assert_eq!(
        c.result.unwrap(),
        8,
        "the new fd's data goes to the new read"
    );
}

fn reset_while_read_in_flight(b: Backend) {
    rt(b).block_on(async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = ringport::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid option value and size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            drop(s);
        });
        let (r, _) = c.read(Vec::with_capacity(64)).await;
        killer.join().unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
    });
}
