//! The epoll poller: each fd registered once, edge-triggered, for both
//! directions; the shim retries queued ops on every edge until `EAGAIN`.

use crate::poller::{timeout_ms, Event, Poller};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// epoll(7), edge-triggered.
pub struct Epoll {
    epfd: OwnedFd,
    registered: HashSet<RawFd>,
    buf: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: a fresh fd we own.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            registered: HashSet::new(),
            buf: Vec::with_capacity(256),
        })
    }
}

impl Epoll {
    /// Adds `fd` for both directions, edge-triggered. An fd number the
    /// kernel still has in the set (`EEXIST`) gets its registration replaced
    /// (`MOD`), so a reused number is always watched as itself.
    fn add(&mut self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        let epfd = self.epfd.as_raw_fd();
        // SAFETY: ev is a valid epoll_event for the call.
        let r = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
            // SAFETY: as above.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.registered.insert(fd);
        Ok(())
    }
}

impl Poller for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        if !(read || write) || self.registered.contains(&fd) {
            return Ok(());
        }
        self.add(fd)
    }

    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        // Once per fd the driver meets: always to the kernel, so a number
        // whose old fd left a stale entry is registered as the new fd.
        self.add(fd)
    }

    fn remove(&mut self, fd: RawFd) {
        if self.registered.remove(&fd) {
            // SAFETY: removes fd from our epoll set; errors are harmless here.
            unsafe {
                libc::epoll_ctl(
                    self.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.buf.clear();
        let cap = self.buf.capacity() as i32;
        // SAFETY: the buffer has room for `cap` events; the kernel writes n.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                cap,
                timeout_ms(timeout),
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
        // SAFETY: the kernel initialised the first n entries.
        unsafe { self.buf.set_len(n as usize) };
        let bad = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        for ev in &self.buf {
            let e = ev.events;
            out.push(Event {
                fd: ev.u64 as RawFd,
                readable: e & (libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32 | bad) != 0,
                writable: e & (libc::EPOLLOUT as u32 | bad) != 0,
            });
        }
        Ok(())
    }
}
