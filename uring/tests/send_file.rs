//! send_file on io_uring reuses its driver's pipe: twenty send_files one
//! after another all go through the same pipe (the same pipe inode stays
//! open between them: no pipe made or closed per op), every byte arrives
//! once and in order, and the pipe closes with the driver. (Its own test
//! binary: it looks at the process's open fds, which other tests would move.)

use ringport_core::{Completion, Driver, Op};
use ringport_uring::UringDriver;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::Duration;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The pipes this process has open, by inode (`pipe:[N]`), one entry per
/// pipe.
fn pipes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("pipe:"))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn twenty_send_files_share_one_pipe() {
    const LEN: usize = 256 << 10;
    const ROUNDS: usize = 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let path = std::env::temp_dir().join(format!("ringport-uring-sendfile-{}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let (s, _) = l.accept().unwrap();
    let fd = s.into_raw_fd();
    let base = open_fds();
    let base_pipes = pipes();
    let ours = || -> Vec<String> {
        pipes()
            .into_iter()
            .filter(|p| !base_pipes.contains(p))
            .collect()
    };
    let mut d = UringDriver::new().unwrap();
    let before = open_fds();
    let mut pipe: Option<Vec<String>> = None;
    let mut done: Vec<Completion> = Vec::new();
    for round in 0..ROUNDS {
        let op = Op::SendFile {
            fd,
            file: file.as_raw_fd(),
            offset: 0,
            len: LEN as u64,
        };
        d.submit(op, round as u64, None)
            .map_err(|e| e.error)
            .unwrap();
        while done.is_empty() {
            d.wait(&mut done, 1, Some(Duration::from_secs(10))).unwrap();
        }
        let c = done.pop().unwrap();
        assert_eq!(c.result.unwrap(), LEN, "round {round}");
        let grown = open_fds().saturating_sub(before);
        assert!(
            grown <= 2,
            "round {round}: {grown} more fds open than before"
        );
        let now = ours();
        assert_eq!(
            now.len(),
            1,
            "round {round}: the driver keeps one spare pipe"
        );
        match &pipe {
            None => pipe = Some(now),
            Some(p) => assert_eq!(p, &now, "round {round} used another pipe"),
        }
    }
    d.submit(Op::Close { fd }, 99, None)
        .map_err(|e| e.error)
        .unwrap();
    while done.is_empty() {
        d.wait(&mut done, 1, Some(Duration::from_secs(10))).unwrap();
    }
    done.pop().unwrap().result.unwrap();
    drop(d);
    // The socket is closed, and the ring and the spare pipe closed with
    // the driver.
    assert_eq!(open_fds(), base - 1, "fds outlived the driver");
    assert!(ours().is_empty(), "the spare pipe outlived its driver");
    let got = reader.join().unwrap();
    assert_eq!(got.len(), LEN * ROUNDS);
    for (i, chunk) in got.chunks(LEN).enumerate() {
        assert!(chunk == &data[..], "round {i}'s bytes differ");
    }
    let _ = std::fs::remove_file(&path);
}
