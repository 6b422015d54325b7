//! Signal-driven I/O: each fd gets `O_ASYNC`, a real-time signal (`F_SETSIG`)
//! and this poller's thread as owner (`F_SETOWN_EX` / `F_OWNER_TID`). The
//! signals are blocked on that thread and read through a `signalfd`, so no
//! other thread of the program is ever interrupted. If the kernel's signal
//! queue overflows it sends plain `SIGIO` instead (also blocked and read
//! here), and the poller rescans every fd with `poll(2)`, losing nothing.
//!
//! `O_ASYNC` signals only changes of readiness, so arming an fd also checks
//! (with a zero-timeout poll) whether it is ready already, and so does new
//! interest in an armed fd. Fds are armed when the driver first meets them,
//! before their first syscall: a Unix stream socket signals write space only
//! if a send found it lacking while `O_ASYNC` was on. For the same reason
//! fds waiting to write (a poll for `POLLOUT` never sends) are also polled
//! every 10 ms.
//!
//! The poller binds to the thread that first uses it. It must not be used
//! from another thread afterwards (the signals would go to the first one).

use crate::poller::{timeout_ms, Event, Poller};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The signal offset from `SIGRTMIN` used for readiness (aio uses +7).
pub const SIGNAL_OFFSET: i32 = 5;

/// How often fds waiting to write are polled (see `Sigio::wait`).
const WRITE_RECHECK: Duration = Duration::from_millis(10);

// fcntl commands and owner type from <fcntl.h> (not in the libc crate for glibc).
const F_SETSIG: i32 = 10;
const F_SETOWN_EX: i32 = 15;
const F_OWNER_TID: i32 = 0;

#[repr(C)]
struct FOwnerEx {
    kind: i32,
    pid: libc::pid_t,
}

/// Signal-driven readiness.
pub struct Sigio {
    sfd: Option<OwnedFd>,
    tid: libc::pid_t,
    /// Interest per armed fd.
    armed: HashMap<RawFd, (bool, bool)>,
    /// Readiness found when arming, reported at the next wait.
    found: Vec<Event>,
    infos: Vec<libc::signalfd_siginfo>,
    rescans: u64,
}

impl Sigio {
    /// A new sigio poller (bound to a thread on first use).
    pub fn new() -> io::Result<Sigio> {
        Ok(Sigio {
            sfd: None,
            tid: 0,
            armed: HashMap::new(),
            found: Vec::new(),
            // SAFETY: signalfd_siginfo is plain data; zero is valid.
            infos: vec![unsafe { std::mem::zeroed() }; 64],
            rescans: 0,
        })
    }

    fn signal() -> i32 {
        libc::SIGRTMIN() + SIGNAL_OFFSET
    }

    /// Blocks our signals on this thread and opens the signalfd.
    fn bind(&mut self) -> io::Result<RawFd> {
        if let Some(fd) = &self.sfd {
            return Ok(fd.as_raw_fd());
        }
        // SAFETY: builds a signal set and blocks it on the calling thread;
        // signalfd gets a valid set. All results are checked.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, Self::signal());
            libc::sigaddset(&mut set, libc::SIGIO);
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            self.tid = libc::gettid();
            self.sfd = Some(OwnedFd::from_raw_fd(fd));
            Ok(fd)
        }
    }

    fn arm(&mut self, fd: RawFd) -> io::Result<()> {
        let owner = FOwnerEx {
            kind: F_OWNER_TID,
            pid: self.tid,
        };
        // SAFETY: fcntl on an fd the caller owns, with valid arguments.
        unsafe {
            if libc::fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx) < 0
                || libc::fcntl(fd, F_SETSIG, Self::signal()) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Readiness that already exists raises no signal: look now.
        self.look(fd);
        Ok(())
    }

    /// Reports `fd`'s readiness at the next wait if it has any now.
    fn look(&mut self, fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&mut p, 1, 0) } > 0 {
            self.found.push(event_of(fd, p.revents));
        }
    }

    fn disarm(fd: RawFd) {
        // SAFETY: clears O_ASYNC on an fd we armed; errors (a closed fd) are harmless.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_ASYNC);
            }
        }
    }

    /// Reports the fds waiting to write that can write now.
    fn recheck_writers(&mut self, out: &mut Vec<Event>) {
        let mut fds: Vec<libc::pollfd> = self
            .armed
            .iter()
            .filter(|(_, &(_, w))| w)
            .map(|(&fd, _)| libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid pollfd array, zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n > 0 {
            out.extend(
                fds.iter()
                    .filter(|p| p.revents != 0)
                    .map(|p| event_of(p.fd, p.revents)),
            );
        }
    }

    /// After an overflow: every armed fd's current readiness.
    fn rescan(&mut self, out: &mut Vec<Event>) {
        let mut fds: Vec<libc::pollfd> = self
            .armed
            .keys()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid pollfd array, zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n > 0 {
            out.extend(
                fds.iter()
                    .filter(|p| p.revents != 0)
                    .map(|p| event_of(p.fd, p.revents)),
            );
        }
    }
}

fn event_of(fd: RawFd, revents: i16) -> Event {
    let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
    Event {
        fd,
        readable: revents & (libc::POLLIN | libc::POLLRDHUP | bad) != 0,
        writable: revents & (libc::POLLOUT | bad) != 0,
    }
}

impl Poller for Sigio {
    fn name(&self) -> &'static str {
        "sigio"
    }

    fn set(&mut self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        self.bind()?;
        if !(read || write) {
            // Stay armed: disarming and re-arming on every op costs three
            // fcntls; stray signals for an fd without interest are ignored.
            if let Some(i) = self.armed.get_mut(&fd) {
                *i = (false, false);
            }
            return Ok(());
        }
        if let Some(i) = self.armed.get_mut(&fd) {
            let was = *i;
            *i = (read, write);
            if (read && !was.0) || (write && !was.1) {
                // Interest that is new looks at the fd now: readiness that
                // came while nobody waited raised no signal we kept.
                self.look(fd);
            }
            return Ok(());
        }
        self.armed.insert(fd, (read, write));
        self.arm(fd)
    }

    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        // Once per fd the driver meets: always armed anew, so a number whose
        // old fd left a stale entry is armed as the new fd.
        self.bind()?;
        self.arm(fd)?;
        self.armed.entry(fd).or_insert((false, false));
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) {
        if self.armed.remove(&fd).is_some() {
            Self::disarm(fd);
        }
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let sfd = self.bind()?;
        let had = !self.found.is_empty();
        out.append(&mut self.found);
        let mut p = libc::pollfd {
            fd: sfd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut t = if had { Some(Duration::ZERO) } else { timeout };
        // Write space on a Unix stream socket is signalled only after a send
        // failed while O_ASYNC was on; a poll for POLLOUT never sends, so
        // fds waiting to write are also looked at every WRITE_RECHECK.
        let writers = self.armed.values().any(|&(_, w)| w);
        if writers {
            t = Some(t.map_or(WRITE_RECHECK, |x| x.min(WRITE_RECHECK)));
        }
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms(t)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        let mut overflow = false;
        loop {
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads whole siginfo records into our buffer.
            let r = unsafe {
                libc::read(
                    sfd,
                    self.infos.as_mut_ptr() as *mut libc::c_void,
                    size * self.infos.len(),
                )
            };
            if r <= 0 {
                break;
            }
            for info in &self.infos[..r as usize / size] {
                if info.ssi_signo as i32 == libc::SIGIO {
                    overflow = true;
                } else {
                    let fd = info.ssi_fd;
                    if self.armed.contains_key(&fd) {
                        out.push(event_of(fd, info.ssi_band as i16));
                    }
                }
            }
        }
        if overflow {
            self.rescans += 1;
            self.rescan(out);
        } else if writers {
            self.recheck_writers(out);
        }
        Ok(())
    }

    fn rescans(&self) -> u64 {
        self.rescans
    }
}

impl Drop for Sigio {
    fn drop(&mut self) {
        // A recycled thread id must never receive these signals.
        for &fd in self.armed.keys() {
            Self::disarm(fd);
        }
    }
}
