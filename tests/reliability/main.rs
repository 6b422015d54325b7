//! Reliability under faults, on every backend this build has: fd exhaustion
//! on accept, fds closed under in-flight ops, peers resetting mid-read.
//! (Completion-queue overflow on uring is in `uring/tests/overflow.rs`.)

use ringport_testkit::harness;

use harness::{rt, thread_cpu, Drv, Pipe};
use ringport::{AnyBufMut, Backend, Offset, Op, TcpListener};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::process::{Command, Stdio};
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

mod aio {
    reliability!(ringport::Backend::Aio);
}

mod epoll {
    reliability!(ringport::Backend::Epoll);
}

mod poll {
    reliability!(ringport::Backend::Poll);
}

mod select {
    reliability!(ringport::Backend::Select);
}

mod sigio {
    reliability!(ringport::Backend::Sigio);
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
        // Let the backend set itself up (some do on first use), then use up
        // every fd.
        ringport::sleep(Duration::from_millis(1)).await.unwrap();
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
            .unwrap()
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
            offset: Offset::Current,
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
            offset: Offset::Current,
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

/// io_uring forbidden by a seccomp filter (in a child process): `Auto` falls
/// back to a readiness backend and says why.
#[test]
fn auto_falls_back_when_io_uring_is_forbidden() {
    let out = harness::run_child("fallback_child", &[("RINGPORT_FALLBACK_CHILD", "1".into())]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("FALLBACK OK"), "child output:\n{text}");
}

#[test]
#[ignore = "runs only as a child process of its test"]
fn fallback_child() {
    if std::env::var("RINGPORT_FALLBACK_CHILD").is_err() {
        return;
    }
    forbid_io_uring_setup();
    std::env::remove_var("RINGPORT_BACKEND");
    let err = ringport::driver(Backend::Uring)
        .err()
        .expect("io_uring must now fail");
    assert!(err.to_string().contains("EPERM"), "{err}");
    let rt = ringport::Runtime::new().expect("Auto falls back");
    assert_ne!(rt.backend(), Backend::Uring);
    let why = rt.fallback_reason().expect("a reason is given");
    assert!(
        why.contains("io_uring_setup") && why.contains("EPERM"),
        "{why}"
    );
    // The fallback really works.
    rt.block_on(async {
        ringport::sleep(Duration::from_millis(1)).await.unwrap();
    });
    println!("FALLBACK OK via {}: {why}", rt.backend());
}

/// Installs a seccomp filter that fails `io_uring_setup` with EPERM.
fn forbid_io_uring_setup() {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let filter = [
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        }, // arch
        SockFilter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        }, // syscall number
        SockFilter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = SockFprog {
        len: filter.len() as u16,
        filter: filter.as_ptr(),
    };
    // SAFETY: standard seccomp installation on this (child) process; prog
    // points at a valid filter for the duration of the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const SockFprog,
        );
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
