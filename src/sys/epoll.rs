//! Safe `epoll(7)`: create, ctl, wait.

use super::{cvt, owned};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub use libc::{EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLPRI, EPOLLRDHUP};

/// One readiness record: the registered `data` and the event bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpollEvent {
    /// Bits such as [`EPOLLIN`] that became ready.
    pub events: u32,
    /// The value given to [`Epoll::ctl`] (we store the fd).
    pub data: u64,
}

/// An owned epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    buf: Vec<libc::epoll_event>,
}

/// The `epoll_ctl` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `EPOLL_CTL_ADD`
    Add,
    /// `EPOLL_CTL_MOD`
    Mod,
    /// `EPOLL_CTL_DEL`
    Del,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)` with room for `max_events` per wait.
    pub fn new(max_events: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let buf = vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)];
        Ok(Epoll { fd: owned(fd), buf })
    }

    /// `epoll_ctl(op, fd, {events, data})`.
    pub fn ctl(&self, op: Op, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let op = match op {
            Op::Add => libc::EPOLL_CTL_ADD,
            Op::Mod => libc::EPOLL_CTL_MOD,
            Op::Del => libc::EPOLL_CTL_DEL,
        };
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // the kernel keeps no pointer to it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// `epoll_wait` with a timeout in ms (-1 = forever); EINTR gives `Ok(0)`.
    /// Calls `f` for each ready record.
    pub fn wait(&mut self, timeout_ms: i32, f: impl FnMut(EpollEvent)) -> io::Result<usize> {
        let cap = self.buf.len() as libc::c_int;
        // SAFETY: `buf` holds `cap` writable epoll_event records.
        let r = cvt(unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.buf.as_mut_ptr(), cap, timeout_ms) });
        self.report(r.map(|n| n as usize), f)
    }

    /// `epoll_pwait2`: the timeout as a timespec (nanoseconds; None =
    /// forever), no signal mask change; EINTR gives `Ok(0)`, a kernel older
    /// than 5.11 ENOSYS.
    pub fn wait_precise(&mut self, timeout: Option<Duration>, f: impl FnMut(EpollEvent)) -> io::Result<usize> {
        let ts = super::timespec(timeout);
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let cap = self.buf.len() as libc::c_int;
        let no_mask: *const libc::sigset_t = std::ptr::null();
        // SAFETY: `buf` holds `cap` writable epoll_event records, `tsp` is
        // null or points at a live timespec, and a null mask leaves the
        // signal mask alone (the syscall's documented arguments).
        let r = cvt(unsafe {
            libc::syscall(libc::SYS_epoll_pwait2, self.fd.as_raw_fd(), self.buf.as_mut_ptr(), cap, tsp, no_mask, 0usize)
        });
        self.report(r.map(|n| n as usize), f)
    }

    fn report(&self, r: io::Result<usize>, mut f: impl FnMut(EpollEvent)) -> io::Result<usize> {
        let n = match r {
            Ok(n) => n.min(self.buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for ev in &self.buf[..n] {
            f(EpollEvent { events: ev.events, data: ev.u64 });
        }
        Ok(n)
    }

    /// The size of the wait buffer.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Grows the wait buffer (when a wait filled it, like libevent's epoll).
    pub fn grow(&mut self, max_events: usize) {
        if max_events > self.buf.len() {
            self.buf.resize(max_events, libc::epoll_event { events: 0, u64: 0 });
        }
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
