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
    /// Watched fds, for the scan and to find the highest one.
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
        if n == 0 || self.watched.is_empty() {
            return Ok(());
        }
        let len = self.watched.len();
        let start = next_random(&mut self.rng) as usize % len;
        for k in 0..len {
            let fd = self.watched[(start + k) % len];
            let mut what = EventFlags::NONE;
            if self.read_out.contains(fd) {
                what |= EventFlags::READ;
            }
            if self.write_out.contains(fd) {
                what |= EventFlags::WRITE;
            }
            if !what.is_empty() {
                ready.push((fd, what));
            }
        }
        Ok(())
    }
}
