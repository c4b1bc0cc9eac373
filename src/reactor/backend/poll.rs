//! The poll backend: a `Vec<pollfd>` plus an fd -> index map; removal swaps
//! the last entry in (smol-rs/polling `poll.rs`).

use super::{Backend, Features, next_random, timeout_ms};
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

impl PollBackend {
    /// An empty set.
    pub fn new(capacity: usize) -> PollBackend {
        PollBackend { fds: Vec::with_capacity(capacity.min(1024)), index: Vec::new(), rng: 0x9e37_79b9 }
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
    fn name(&self) -> &'static str {
        "poll"
    }
    fn features(&self) -> Features {
        Features::FDS | Features::EARLY_CLOSE
    }
    fn need_reinit(&self) -> bool {
        false
    }
    fn add(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        self.set(fd, (old | delta) & EventFlags::IO);
        Ok(())
    }
    fn del(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        self.set(fd, old & !delta & EventFlags::IO);
        Ok(())
    }
    fn dispatch(&mut self, timeout: Option<Duration>, ready: &mut Vec<(RawFd, EventFlags)>) -> io::Result<()> {
        let n = sp::poll(&mut self.fds, timeout_ms(timeout))?;
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
            let mut what = EventFlags::NONE;
            if r & (sp::POLLERR | sp::POLLHUP | sp::POLLNVAL) != 0 {
                what |= EventFlags::READ | EventFlags::WRITE;
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
            ready.push((p.fd, what));
            found += 1;
            if found == n {
                break;
            }
        }
        Ok(())
    }
}
