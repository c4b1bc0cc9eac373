//! Safe `epoll(7)`: create, ctl, wait.

use super::{owned, syscall};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
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
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        syscall!(epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev))?;
        Ok(())
    }

    /// `epoll_wait` with a timeout in ms (-1 = forever); EINTR gives `Ok(0)`.
    /// Calls `f` for each ready record.
    pub fn wait(&mut self, timeout_ms: i32, mut f: impl FnMut(EpollEvent)) -> io::Result<usize> {
        let cap = self.buf.len() as libc::c_int;
        // SAFETY: `buf` holds `cap` writable epoll_event records.
        let n = match syscall!(epoll_wait(self.fd.as_raw_fd(), self.buf.as_mut_ptr(), cap, timeout_ms)) {
            Ok(n) => n as usize,
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
