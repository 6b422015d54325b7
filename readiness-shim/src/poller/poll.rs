//! The poll(2) poller: level-triggered, one `pollfd` per fd with interest,
//! rebuilt only when interest changes.

use crate::poller::{timeout_ms, Event, Poller};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// poll(2).
#[derive(Default)]
pub struct Poll {
    /// Index of each fd's entry in `fds`.
    index: HashMap<RawFd, usize>,
    fds: Vec<libc::pollfd>,
}

impl Poll {
    /// A new, empty poll set.
    pub fn new() -> Poll {
        Poll::default()
    }
}

impl Poller for Poll {
    fn name(&self) -> &'static str {
        "poll"
    }

    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        let events =
            (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 });
        match (self.index.get(&fd).copied(), events) {
            (Some(_), 0) => self.remove(fd),
            (Some(i), ev) => self.fds[i].events = ev,
            (None, 0) => {}
            (None, ev) => {
                self.index.insert(fd, self.fds.len());
                self.fds.push(libc::pollfd {
                    fd,
                    events: ev,
                    revents: 0,
                });
            }
        }
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) {
        if let Some(i) = self.index.remove(&fd) {
            self.fds.swap_remove(i);
            if let Some(moved) = self.fds.get(i) {
                self.index.insert(moved.fd, i);
            }
        }
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
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
        let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
        for p in &self.fds {
            if p.revents != 0 {
                out.push(Event {
                    fd: p.fd,
                    readable: p.revents & (libc::POLLIN | libc::POLLRDHUP | bad) != 0,
                    writable: p.revents & (libc::POLLOUT | bad) != 0,
                });
            }
        }
        Ok(())
    }
}
