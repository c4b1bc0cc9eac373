//! The epoll backend: level-triggered by default, edge-triggered per fd on
//! request, EPOLLRDHUP for `CLOSED`, and an optional changelist.
//!
//! The changelist (libevent `epoll.c`, `changelist-internal.h`) exists
//! because a bufferevent toggles its write interest on and off within one
//! loop turn: coalescing per fd until the next dispatch turns those pairs into
//! no syscall at all. A kept change that fails at the flush (EBADF for an fd
//! closed meanwhile, EPERM for a number a regular file took, ENOSPC past
//! `max_user_watches`, ENOMEM) is that fd's failure, reported in
//! [`Ready::failed`]; the other changes and the wait go on.
//!
//! With PRECISE_TIMER the wait takes a timespec (`epoll_pwait2`, Linux 5.11)
//! so sub-millisecond timers are not rounded up to a whole millisecond;
//! libevent 2.1 arms a timerfd for the same purpose. On an older kernel the
//! wait falls back to milliseconds.

use super::{Backend, Kind, Ready, timeout_ms};
use crate::reactor::event::EventFlags;
use crate::sys::epoll::{self, Epoll, Op};
use crate::sys::poll as sp;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

const INITIAL_EVENTS: usize = 32;
const MAX_EVENTS: usize = 4096;

/// A change kept by the changelist until the next dispatch.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The interest registered in the kernel.
    orig: EventFlags,
    /// The interest wanted now.
    want: EventFlags,
    /// Whether the interest went empty in between (deleted and re-added:
    /// the kernel may have forgotten the fd since).
    emptied: bool,
}

/// epoll(7).
#[derive(Debug)]
pub struct EpollBackend {
    ep: Epoll,
    changelist: bool,
    precise: bool,
    /// fd -> its kept change; used only with the changelist.
    pending: Vec<Option<Pending>>,
    changed: Vec<RawFd>,
}

fn to_epoll(f: EventFlags) -> u32 {
    let mut e = 0u32;
    if f.contains(EventFlags::READ) {
        e |= epoll::EPOLLIN as u32;
    }
    if f.contains(EventFlags::WRITE) {
        e |= epoll::EPOLLOUT as u32;
    }
    if f.contains(EventFlags::CLOSED) {
        e |= epoll::EPOLLRDHUP as u32;
    }
    if f.contains(EventFlags::ET) {
        e |= epoll::EPOLLET as u32;
    }
    e
}

/// What a readiness record means. EPOLLERR wakes both directions (libevent);
/// EPOLLHUP does too and also means the read side is closed, which is the
/// only news a pipe's reader gets of its writer's end (no EPOLLRDHUP): mio
/// reads it as read-closed, and so does an event waiting for CLOSED.
fn from_epoll(e: u32) -> EventFlags {
    // The readiness bits epoll reports are poll(2)'s, bit for bit (the ones
    // above 16, such as EPOLLET, are never reported): one translation serves
    // poll, io_uring's polls and epoll.
    const _: () = assert!(
        epoll::EPOLLIN == sp::POLLIN as i32
            && epoll::EPOLLOUT == sp::POLLOUT as i32
            && epoll::EPOLLERR == sp::POLLERR as i32
            && epoll::EPOLLHUP == sp::POLLHUP as i32
            && epoll::EPOLLRDHUP == sp::POLLRDHUP as i32
    );
    super::poll::from_poll(e as u16 as i16)
}

impl EpollBackend {
    /// A fresh epoll instance.
    pub fn new(capacity: usize, changelist: bool, precise: bool) -> io::Result<EpollBackend> {
        let n = capacity.clamp(INITIAL_EVENTS, MAX_EVENTS);
        Ok(EpollBackend { ep: Epoll::new(n)?, changelist, precise, pending: Vec::new(), changed: Vec::new() })
    }

    /// Moves the kernel's interest for `fd` from `old` to `new`. On failure
    /// the fd is deleted from the instance (best effort), so that nothing is
    /// left registered that the base no longer believes in.
    fn apply(&self, fd: RawFd, old: EventFlags, new: EventFlags) -> io::Result<()> {
        let old_io = old & EventFlags::IO;
        let new_io = new & EventFlags::IO;
        if old_io == new_io && (old & EventFlags::ET) == (new & EventFlags::ET) {
            return Ok(());
        }
        let data = fd as u64;
        if new_io.is_empty() {
            return self.forget(fd);
        }
        let ev = to_epoll(new);
        let r = if old_io.is_empty() {
            match self.ep.ctl(Op::Add, fd, ev, data) {
                // A dup'd or reused fd still known to the kernel.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.ep.ctl(Op::Mod, fd, ev, data),
                r => r,
            }
        } else {
            match self.ep.ctl(Op::Mod, fd, ev, data) {
                // The fd was closed and reopened behind our back.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.ep.ctl(Op::Add, fd, ev, data),
                r => r,
            }
        };
        r.inspect_err(|_| {
            let _ = self.forget(fd);
        })
    }

    /// EPOLL_CTL_DEL; an fd that is closed or was never added is already
    /// forgotten.
    fn forget(&self, fd: RawFd) -> io::Result<()> {
        match self.ep.ctl(Op::Del, fd, 0, fd as u64) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EBADF | libc::EPERM)) => Ok(()),
            r => r,
        }
    }

    /// Registers `fd` for `want` after a delete and an add in one batch,
    /// whether or not the kernel still knows it: the fd may have been closed
    /// and reopened in between (a connection freed, accept() handing out its
    /// number), and closing the last reference dropped the registration.
    ///
    /// ADD tells the two apart cheaply: EEXIST means the file now at `fd` is
    /// still registered, with the interest `orig` it had (nothing was sent
    /// since), and only then can an unchanged level-triggered interest skip
    /// the MOD, which re-polls the file (touching every socket of a batch).
    /// An edge-triggered one is always MODified: a re-add reports a file
    /// that is ready now, as a fresh ADD would.
    fn reregister(&self, fd: RawFd, orig: EventFlags, want: EventFlags) -> io::Result<()> {
        let ev = to_epoll(want);
        let r = match self.ep.ctl(Op::Add, fd, ev, fd as u64) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if to_epoll(orig) == ev && !want.contains(EventFlags::ET) {
                    Ok(())
                } else {
                    self.ep.ctl(Op::Mod, fd, ev, fd as u64)
                }
            }
            r => r,
        };
        r.inspect_err(|_| {
            let _ = self.forget(fd);
        })
    }

    /// Sends the kept changes to the kernel; a failed one goes to `failed`.
    fn flush_changes(&mut self, failed: &mut Vec<(RawFd, io::Error)>) {
        for fd in std::mem::take(&mut self.changed) {
            let Some(Pending { orig, want, emptied }) = self.pending[fd as usize].take() else { continue };
            // Deleted and added again in one batch: even when the interest
            // looks unchanged, the kernel may have forgotten the fd.
            let r = if emptied && !(orig & EventFlags::IO).is_empty() && !(want & EventFlags::IO).is_empty() {
                self.reregister(fd, orig, want)
            } else {
                self.apply(fd, orig, want)
            };
            if let Err(e) = r {
                failed.push((fd, e));
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<(RawFd, EventFlags)>) -> io::Result<usize> {
        let mut push = |ev: epoll::EpollEvent| ready.push((ev.data as RawFd, from_epoll(ev.events)));
        if self.precise {
            match self.ep.wait_precise(timeout, &mut push) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.precise = false,
                r => return r,
            }
        }
        self.ep.wait(timeout_ms(timeout), push)
    }
}

impl Backend for EpollBackend {
    fn kind(&self) -> Kind {
        Kind::Epoll
    }
    fn method(&self) -> &'static str {
        if self.changelist { "epoll (with changelist)" } else { "epoll" }
    }
    fn fd_closed(&mut self, fd: RawFd) {
        if let Some(Some(p)) = self.pending.get_mut(fd as usize) {
            p.orig = EventFlags::NONE;
        }
    }
    fn change(&mut self, fd: RawFd, old: EventFlags, new: EventFlags) -> io::Result<()> {
        if !self.changelist {
            return self.apply(fd, old, new);
        }
        let i = fd as usize;
        if self.pending.len() <= i {
            self.pending.resize(i + 1, None);
        }
        let emptied_now = (new & EventFlags::IO).is_empty();
        match &mut self.pending[i] {
            Some(p) => {
                p.want = new;
                p.emptied |= emptied_now;
            }
            slot @ None => {
                *slot = Some(Pending { orig: old, want: new, emptied: emptied_now });
                self.changed.push(fd);
            }
        }
        Ok(())
    }
    fn dispatch(&mut self, timeout: Option<Duration>, out: &mut Ready) -> io::Result<()> {
        if self.changelist && !self.changed.is_empty() {
            self.flush_changes(&mut out.failed);
        }
        // Events of failed fds are about to be told: no waiting for them.
        let timeout = if out.failed.is_empty() { timeout } else { Some(Duration::ZERO) };
        let n = self.wait(timeout, &mut out.events)?;
        if n == self.ep.capacity() && n < MAX_EVENTS {
            self.ep.grow(n * 2);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangup_and_error_wake_both_directions_and_hangup_closes() {
        let rw = EventFlags::READ | EventFlags::WRITE;
        assert_eq!(from_epoll(epoll::EPOLLERR as u32), rw);
        assert_eq!(from_epoll(epoll::EPOLLHUP as u32), rw | EventFlags::CLOSED);
        assert_eq!(from_epoll((epoll::EPOLLIN | epoll::EPOLLRDHUP) as u32), EventFlags::READ | EventFlags::CLOSED);
        assert_eq!(from_epoll(epoll::EPOLLOUT as u32), EventFlags::WRITE);
    }
}
