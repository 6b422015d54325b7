//! The select(2) poller: level-triggered, for fds below `FD_SETSIZE` only;
//! the shim refuses ops on higher fds with an error naming the limit.

use crate::poller::{Event, Poller};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// select(2).
#[derive(Default)]
pub struct Select {
    interest: BTreeMap<RawFd, (bool, bool)>,
}

impl Select {
    /// A new, empty select set.
    pub fn new() -> Select {
        Select::default()
    }
}

/// `FD_SETSIZE`: select cannot watch fds at or above this.
pub const FD_SETSIZE: RawFd = libc::FD_SETSIZE as RawFd;

impl Poller for Select {
    fn name(&self) -> &'static str {
        "select"
    }

    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        if fd >= FD_SETSIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is at or above select's FD_SETSIZE limit ({FD_SETSIZE})"),
            ));
        }
        if read || write {
            self.interest.insert(fd, (read, write));
        } else {
            self.interest.remove(&fd);
        }
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) {
        self.interest.remove(&fd);
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        // SAFETY: fd_set is plain data; FD_ZERO/FD_SET/FD_ISSET get fds
        // below FD_SETSIZE only (set() refuses others).
        let (mut rs, mut ws, mut es): (libc::fd_set, libc::fd_set, libc::fd_set) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        let mut maxfd = -1;
        for (&fd, &(r, w)) in &self.interest {
            // SAFETY: fd < FD_SETSIZE.
            unsafe {
                if r {
                    libc::FD_SET(fd, &mut rs);
                }
                if w {
                    libc::FD_SET(fd, &mut ws);
                }
                libc::FD_SET(fd, &mut es);
            }
            maxfd = maxfd.max(fd);
        }
        let mut tv = timeout.map(|d| libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            // Round up so the wait never ends before its deadline.
            tv_usec: d.subsec_micros() as libc::suseconds_t
                + (d.subsec_nanos() % 1000 != 0) as libc::suseconds_t,
        });
        let tvp = tv
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t as *mut libc::timeval);
        // SAFETY: the sets and timeval are valid for the call.
        let n = unsafe { libc::select(maxfd + 1, &mut rs, &mut ws, &mut es, tvp) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        for &fd in self.interest.keys() {
            // SAFETY: fd < FD_SETSIZE.
            let (r, w, e) = unsafe {
                (
                    libc::FD_ISSET(fd, &rs),
                    libc::FD_ISSET(fd, &ws),
                    libc::FD_ISSET(fd, &es),
                )
            };
            if r || w || e {
                out.push(Event {
                    fd,
                    readable: r || e,
                    writable: w || e,
                });
            }
        }
        Ok(())
    }

    fn max_fd(&self) -> Option<RawFd> {
        Some(FD_SETSIZE - 1)
    }
}
