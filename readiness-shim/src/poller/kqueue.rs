//! The kqueue poller (BSD, macOS): the same shape as `epoll.rs` — each fd
//! registered once, edge-triggered (`EV_CLEAR`), for both directions.
//!
//! Not compiled or tested on this project's Linux machines: kept small and
//! parallel to epoll so that a reader can check it line by line.

use crate::poller::{Event, Poller};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// kqueue(2), edge-triggered.
pub struct Kqueue {
    kq: OwnedFd,
    registered: HashSet<RawFd>,
    buf: Vec<libc::kevent>,
}

impl Kqueue {
    /// A new kqueue.
    pub fn new() -> io::Result<Kqueue> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::kqueue() };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Kqueue {
            // SAFETY: a fresh fd we own.
            kq: unsafe { OwnedFd::from_raw_fd(fd) },
            registered: HashSet::new(),
            // SAFETY: kevent is plain data; zero is valid.
            buf: vec![unsafe { std::mem::zeroed() }; 256],
        })
    }

    fn change(&self, fd: RawFd, flags: u16) -> io::Result<()> {
        // SAFETY: kevent is plain data; zero is valid.
        let mut ch: [libc::kevent; 2] = unsafe { std::mem::zeroed() };
        for (c, filter) in ch.iter_mut().zip([libc::EVFILT_READ, libc::EVFILT_WRITE]) {
            c.ident = fd as _;
            c.filter = filter;
            c.flags = flags;
        }
        // SAFETY: two valid changes, no event buffer.
        let r = unsafe {
            libc::kevent(
                self.kq.as_raw_fd(),
                ch.as_ptr(),
                2,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Poller for Kqueue {
    fn name(&self) -> &'static str {
        "kqueue"
    }

    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        if !(read || write) || self.registered.contains(&fd) {
            return Ok(());
        }
        self.change(fd, (libc::EV_ADD | libc::EV_CLEAR) as u16)?;
        self.registered.insert(fd);
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) {
        if self.registered.remove(&fd) {
            let _ = self.change(fd, libc::EV_DELETE as u16);
        }
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as _,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the buffer holds buf.len() events; the kernel fills n.
        let n = unsafe {
            libc::kevent(
                self.kq.as_raw_fd(),
                std::ptr::null(),
                0,
                self.buf.as_mut_ptr(),
                self.buf.len() as _,
                tsp,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &self.buf[..n as usize] {
            let bad = ev.flags & (libc::EV_EOF | libc::EV_ERROR) as u16 != 0;
            out.push(Event {
                fd: ev.ident as RawFd,
                readable: ev.filter == libc::EVFILT_READ || bad,
                writable: ev.filter == libc::EVFILT_WRITE || bad,
            });
        }
        Ok(())
    }
}
