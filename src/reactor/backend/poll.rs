//! The poll backend: a `Vec<pollfd>` plus an fd -> index map; removal swaps
//! the last entry in (smol-rs/polling `poll.rs`).
//!
//! An fd closed while still in the set comes back as POLLNVAL on every call:
//! it is reported once in [`Ready::failed`] and dropped from the set
//! (libevent's poll only stops the spin by waking both directions).
//! With PRECISE_TIMER the wait is a `ppoll` with a timespec, so a
//! sub-millisecond timer is not rounded up to a millisecond.

use super::{Backend, Kind, Ready, next_random, timeout_ms};
use crate::reactor::event::EventFlags;
use crate::sys::poll::{self as sp, PollFd};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// poll(2).
#[derive(Debug)]
pub struct PollBackend {
    fds: Vec<PollFd>,
    index: Vec<u32>,
    rng: u32,
    precise: bool,
}

const NONE: u32 = u32::MAX;

fn to_poll(f: EventFlags) -> i16 {
    let mut e = 0i16;
    if f.contains(EventFlags::READ) {
        e |= sp::POLLIN;
    }
    if f.contains(EventFlags::WRITE) {
        e |= sp::POLLOUT;
    }
    if f.contains(EventFlags::CLOSED) {
        e |= sp::POLLRDHUP;
    }
    e
}

/// What `revents` (or a completed io_uring poll's mask, the same bits)
/// means; as epoll's EPOLLHUP, POLLHUP also closes the read side (a pipe's
/// reader never gets POLLRDHUP).
#[inline]
pub(super) fn from_poll(r: i16) -> EventFlags {
    let mut what = EventFlags::NONE;
    if r & sp::POLLERR != 0 {
        what |= EventFlags::READ | EventFlags::WRITE;
    }
    if r & sp::POLLHUP != 0 {
        what |= EventFlags::READ | EventFlags::WRITE | EventFlags::CLOSED;
    }
    if r & sp::POLLIN != 0 {
        what |= EventFlags::READ;
    }
    if r & sp::POLLOUT != 0 {
        what |= EventFlags::WRITE;
    }
    if r & sp::POLLRDHUP != 0 {
        what |= EventFlags::CLOSED;
    }
    what
}

impl PollBackend {
    /// An empty set.
    pub fn new(capacity: usize, precise: bool) -> PollBackend {
        PollBackend { fds: Vec::with_capacity(capacity.min(1024)), index: Vec::new(), rng: 0x9e37_79b9, precise }
    }

    fn set(&mut self, fd: RawFd, want: EventFlags) {
        let i = fd as usize;
        if self.index.len() <= i {
            self.index.resize(i + 1, NONE);
        }
        let events = to_poll(want);
        let pos = self.index[i];
        if events == 0 {
            if pos != NONE {
                let pos = pos as usize;
                self.fds.swap_remove(pos);
                if let Some(moved) = self.fds.get(pos) {
                    self.index[moved.fd as usize] = pos as u32;
                }
                self.index[i] = NONE;
            }
        } else if pos == NONE {
            self.index[i] = self.fds.len() as u32;
            self.fds.push(sp::pollfd(fd, events));
        } else {
            self.fds[pos as usize].events = events;
        }
    }
}

impl Backend for PollBackend {
    fn kind(&self) -> Kind {
        Kind::Poll
    }
    fn change(&mut self, fd: RawFd, _old: EventFlags, new: EventFlags) -> io::Result<()> {
        self.set(fd, new & EventFlags::IO);
        Ok(())
    }
    fn dispatch(&mut self, timeout: Option<Duration>, out: &mut Ready) -> io::Result<()> {
        let n = if self.precise {
            sp::ppoll(&mut self.fds, timeout)?
        } else {
            sp::poll(&mut self.fds, timeout_ms(timeout))?
        };
        if n == 0 || self.fds.is_empty() {
            return Ok(());
        }
        // From a random entry, so that low fds are not always served first;
        // stop once the `n` entries poll counted are found.
        let start = next_random(&mut self.rng) as usize % self.fds.len();
        let (tail, head) = self.fds.split_at(start);
        let mut found = 0;
        for p in head.iter().chain(tail) {
            let r = p.revents;
            if r == 0 {
                continue;
            }
            if r & sp::POLLNVAL != 0 {
                out.failed.push((p.fd, io::Error::from_raw_os_error(libc::EBADF)));
            } else {
                out.events.push((p.fd, from_poll(r)));
            }
            found += 1;
            if found == n {
                break;
            }
        }
        for i in 0..out.failed.len() {
            self.set(out.failed[i].0, EventFlags::NONE);
        }
        Ok(())
    }
}
