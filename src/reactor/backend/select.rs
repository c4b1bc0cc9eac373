//! The select backend, with fd sets sized to the largest fd (libevent
//! `select.c`): it serves fds at and above FD_SETSIZE, which libc's fixed
//! `fd_set` cannot.

use super::{Backend, Features, next_random};
use crate::reactor::event::EventFlags;
use crate::sys::select::{FdSet, select};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// select(2).
#[derive(Debug, Default)]
pub struct SelectBackend {
    read: FdSet,
    write: FdSet,
    read_out: FdSet,
    write_out: FdSet,
    /// Watched fds, to find the highest one.
    watched: Vec<RawFd>,
    pos: Vec<u32>,
    max_fd: RawFd,
    rng: u32,
}

const NONE: u32 = u32::MAX;

impl SelectBackend {
    /// Empty sets.
    pub fn new() -> SelectBackend {
        SelectBackend { max_fd: -1, rng: 0x2545_f491, ..Default::default() }
    }

    fn set(&mut self, fd: RawFd, want: EventFlags) {
        if want.contains(EventFlags::READ) {
            self.read.insert(fd);
        } else {
            self.read.remove(fd);
        }
        if want.contains(EventFlags::WRITE) {
            self.write.insert(fd);
        } else {
            self.write.remove(fd);
        }
        let i = fd as usize;
        if self.pos.len() <= i {
            self.pos.resize(i + 1, NONE);
        }
        let on = want.intersects(EventFlags::READ | EventFlags::WRITE);
        let p = self.pos[i];
        if on && p == NONE {
            self.pos[i] = self.watched.len() as u32;
            self.watched.push(fd);
            self.max_fd = self.max_fd.max(fd);
        } else if !on && p != NONE {
            self.watched.swap_remove(p as usize);
            if let Some(&moved) = self.watched.get(p as usize) {
                self.pos[moved as usize] = p;
            }
            self.pos[i] = NONE;
            if fd == self.max_fd {
                self.max_fd = self.watched.iter().copied().max().unwrap_or(-1);
            }
        }
    }
}

impl Backend for SelectBackend {
    fn name(&self) -> &'static str {
        "select"
    }
    fn features(&self) -> Features {
        Features::FDS
    }
    fn need_reinit(&self) -> bool {
        false
    }
    fn add(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        self.set(fd, old | delta);
        Ok(())
    }
    fn del(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        self.set(fd, old & !delta);
        Ok(())
    }
    fn dispatch(&mut self, timeout: Option<Duration>, ready: &mut Vec<(RawFd, EventFlags)>) -> io::Result<()> {
        let nfds = (self.max_fd + 1) as usize;
        self.read_out.copy_from(&self.read, nfds);
        self.write_out.copy_from(&self.write, nfds);
        // select's timeval has µs resolution: round a sub-µs rest up.
        let timeout = timeout.map(|t| {
            let us = t.as_nanos().div_ceil(1000);
            Duration::from_micros(us.min(u64::MAX as u128) as u64)
        });
        let n = select(nfds, &mut self.read_out, &mut self.write_out, timeout)?;
        if n == 0 {
            return Ok(());
        }
        // Walk the result sets a word (64 fds) at a time, from a random word
        // so that low fds are not always served first; stop once the `n`
        // bits select counted are found.
        let (r, w) = (self.read_out.words(), self.write_out.words());
        let nwords = nfds.div_ceil(64).min(r.len().max(w.len()));
        if nwords == 0 {
            return Ok(());
        }
        let start = next_random(&mut self.rng) as usize % nwords;
        let mut left = n;
        for i in (start..nwords).chain(0..start) {
            let (rw, ww) = (r.get(i).copied().unwrap_or(0), w.get(i).copied().unwrap_or(0));
            let mut bits = rw | ww;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let mut what = EventFlags::NONE;
                if rw >> b & 1 != 0 {
                    what |= EventFlags::READ;
                    left = left.saturating_sub(1);
                }
                if ww >> b & 1 != 0 {
                    what |= EventFlags::WRITE;
                    left = left.saturating_sub(1);
                }
                ready.push(((i * 64) as RawFd + b as RawFd, what));
            }
            if left == 0 {
                break;
            }
        }
        Ok(())
    }
}
