//! The select backend, with fd sets sized to the largest fd (libevent
//! `select.c`): it serves fds at and above FD_SETSIZE, which libc's fixed
//! `fd_set` cannot.
//!
//! One fd closed while still in the sets makes select fail with EBADF for
//! all of them (libevent's select then ends the loop). Here the closed fds
//! are found (`fcntl(F_GETFD)` on each fd of the sets), reported in
//! [`Ready::failed`] and dropped, and the next turn selects on the rest.

use super::{Backend, Kind, Ready, next_random};
use crate::reactor::event::EventFlags;
use crate::sys;
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
    /// The highest fd in either set; -1 when both are empty.
    max_fd: RawFd,
    rng: u32,
}

impl SelectBackend {
    /// Finds the closed fds of the sets, drops them and reports them.
    fn drop_closed(&mut self, failed: &mut Vec<(RawFd, io::Error)>) {
        for fd in 0..=self.max_fd {
            if (self.read.contains(fd) || self.write.contains(fd)) && !sys::is_open(fd) {
                self.set(fd, EventFlags::NONE);
                failed.push((fd, io::Error::from_raw_os_error(libc::EBADF)));
            }
        }
    }

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
        if want.intersects(EventFlags::READ | EventFlags::WRITE) {
            self.max_fd = self.max_fd.max(fd);
        } else if fd == self.max_fd {
            // The highest fd left: the top set bit of either set, found from
            // the top word down.
            let (r, w) = (self.read.words(), self.write.words());
            self.max_fd = (0..r.len().max(w.len()))
                .rev()
                .find_map(|i| {
                    let bits = r.get(i).copied().unwrap_or(0) | w.get(i).copied().unwrap_or(0);
                    (bits != 0).then(|| (i * 64) as RawFd + 63 - bits.leading_zeros() as RawFd)
                })
                .unwrap_or(-1);
        }
    }
}

impl Backend for SelectBackend {
    fn kind(&self) -> Kind {
        Kind::Select
    }
    fn change(&mut self, fd: RawFd, _old: EventFlags, new: EventFlags) -> io::Result<()> {
        self.set(fd, new);
        Ok(())
    }
    fn dispatch(&mut self, timeout: Option<Duration>, out: &mut Ready) -> io::Result<()> {
        let ready = &mut out.events;
        let nfds = (self.max_fd + 1) as usize;
        self.read_out.copy_from(&self.read, nfds);
        self.write_out.copy_from(&self.write, nfds);
        // select's timeval has µs resolution: round a sub-µs rest up.
        let timeout = timeout.map(|t| {
            let us = t.as_nanos().div_ceil(1000);
            Duration::from_micros(us.min(u64::MAX as u128) as u64)
        });
        let n = match select(nfds, &mut self.read_out, &mut self.write_out, timeout) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                self.drop_closed(&mut out.failed);
                return Ok(());
            }
            r => r?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fd_follows_the_highest_watched_fd() {
        let mut b = SelectBackend::new();
        let (r, w) = (EventFlags::READ, EventFlags::WRITE);
        b.set(5, r);
        b.set(1500, w);
        b.set(70, r | w);
        assert_eq!(b.max_fd, 1500);
        b.set(1500, EventFlags::NONE);
        assert_eq!(b.max_fd, 70);
        b.set(70, w);
        assert_eq!(b.max_fd, 70, "still watched for writing");
        b.set(5, EventFlags::NONE);
        assert_eq!(b.max_fd, 70, "a lower fd removed");
        b.set(70, EventFlags::NONE);
        assert_eq!(b.max_fd, -1);
        b.set(63, r);
        b.set(64, r);
        b.set(64, EventFlags::NONE);
        assert_eq!(b.max_fd, 63, "across a word boundary");
    }
}
