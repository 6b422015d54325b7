//! The io_uring driver makes a send_file's socket non-blocking once and
//! marks the fd; the mark must not outlive the socket. Here the socket is
//! closed behind the driver's back and its number comes back from the
//! driver's own accept, as a blocking socket: a send_file with a deadline
//! on it, to a peer that does not read, must still end by its deadline
//! (on a blocking socket the splice would block in a kernel worker, where
//! the deadline cannot reach it). Its own test binary: it needs the closed
//! number to be the next one the kernel hands out.

use ringport_core::op::SockAddr;
use ringport_core::{Completion, Driver, Op};
use ringport_uring::UringDriver;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::{Duration, Instant};

fn wait_one(d: &mut UringDriver, token: u64, within: Duration) -> Completion {
    let end = Instant::now() + within;
    let mut done = Vec::new();
    loop {
        if let Some(i) = done.iter().position(|c: &Completion| c.token == token) {
            return done.swap_remove(i);
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no completion for {token} within {within:?}"
        );
        d.wait(&mut done, 1, Some(left)).unwrap();
    }
}

fn set_buf(fd: i32, opt: libc::c_int, size: libc::c_int) {
    // SAFETY: setsockopt with a live int on our own socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[test]
fn a_reused_socket_number_is_made_non_blocking_again() {
    const LEN: usize = 4 << 20;
    let path = std::env::temp_dir().join(format!("ringport-uring-marks-{}", std::process::id()));
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut d = UringDriver::new().unwrap();

    // A send_file on a first connection: its socket is made non-blocking
    // and marked.
    let mut c1 = std::net::TcpStream::connect(addr).unwrap();
    let n = l.accept().unwrap().0.into_raw_fd();
    let op = Op::SendFile {
        fd: n,
        file: file.as_raw_fd(),
        offset: 0,
        len: 1000,
    };
    d.submit(op, 1, None).map_err(|e| e.error).unwrap();
    assert_eq!(
        wait_one(&mut d, 1, Duration::from_secs(10)).result.unwrap(),
        1000
    );
    let mut got = vec![0u8; 1000];
    std::io::Read::read_exact(&mut c1, &mut got).unwrap();

    // The second connection's own socket first (it would take the number).
    let c2 = std::net::TcpStream::connect(addr).unwrap();
    set_buf(c2.as_raw_fd(), libc::SO_RCVBUF, 64 << 10);
    // Closed behind the driver's back; the driver's accept gets the number.
    // SAFETY: our own fd, closed once; nothing of the driver's uses it now.
    unsafe { libc::close(n) };
    let op = Op::Accept {
        fd: l.as_raw_fd(),
        addr: Box::new(SockAddr::empty()),
    };
    d.submit(op, 2, None).map_err(|e| e.error).unwrap();
    let m = wait_one(&mut d, 2, Duration::from_secs(10)).result.unwrap() as i32;
    assert_eq!(m, n, "the accept did not get the closed number back");
    set_buf(m, libc::SO_SNDBUF, 64 << 10);

    // A send_file with a deadline to a peer that does not read ends by it.
    let started = Instant::now();
    let op = Op::SendFile {
        fd: m,
        file: file.as_raw_fd(),
        offset: 0,
        len: LEN as u64,
    };
    d.submit(op, 3, Some(started + Duration::from_millis(200)))
        .map_err(|e| e.error)
        .unwrap();
    let c = wait_one(&mut d, 3, Duration::from_secs(5));
    match c.result {
        Ok(sent) => assert!(
            sent < LEN,
            "all {sent} bytes went to a peer that reads nothing"
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    d.submit(Op::Close { fd: m }, 4, None)
        .map_err(|e| e.error)
        .unwrap();
    wait_one(&mut d, 4, Duration::from_secs(10)).result.unwrap();
    drop((c1, c2));
    let _ = std::fs::remove_file(&path);
}
