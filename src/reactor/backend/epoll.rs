//! The epoll backend: level-triggered by default, edge-triggered per fd on
//! request, EPOLLRDHUP for `CLOSED`, and an optional changelist.
//!
//! The changelist (libevent `epoll.c`, `changelist-internal.h`) exists
//! because a bufferevent toggles its write interest on and off within one
//! loop turn: coalescing per fd until the next dispatch turns those pairs into
//! no syscall at all.

use super::{Backend, Features, timeout_ms};
use crate::reactor::event::EventFlags;
use crate::sys::epoll::{self, Epoll, Op};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

const INITIAL_EVENTS: usize = 32;
const MAX_EVENTS: usize = 4096;

/// epoll(7).
#[derive(Debug)]
pub struct EpollBackend {
    ep: Epoll,
    changelist: bool,
    /// fd -> (interest registered in the kernel, interest wanted, whether
    /// the interest went empty in between); used only with the changelist.
    pending: Vec<Option<(EventFlags, EventFlags, bool)>>,
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

impl EpollBackend {
    /// A fresh epoll instance.
    pub fn new(capacity: usize, changelist: bool) -> io::Result<EpollBackend> {
        let n = capacity.clamp(INITIAL_EVENTS, MAX_EVENTS);
        Ok(EpollBackend { ep: Epoll::new(n)?, changelist, pending: Vec::new(), changed: Vec::new() })
    }

    /// Moves the kernel's interest for `fd` from `old` to `new`.
    fn apply(&self, fd: RawFd, old: EventFlags, new: EventFlags) -> io::Result<()> {
        let old_io = old & EventFlags::IO;
        let new_io = new & EventFlags::IO;
        if old_io == new_io && (old & EventFlags::ET) == (new & EventFlags::ET) {
            return Ok(());
        }
        let data = fd as u64;
        if new_io.is_empty() {
            return match self.ep.ctl(Op::Del, fd, 0, data) {
                // Closed or never added: the kernel already forgot it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EBADF | libc::EPERM)) => Ok(()),
                r => r,
            };
        }
        let ev = to_epoll(new);
        if old_io.is_empty() {
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
        match self.ep.ctl(Op::Add, fd, ev, fd as u64) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if to_epoll(orig) == ev && !want.contains(EventFlags::ET) {
                    Ok(())
                } else {
                    self.ep.ctl(Op::Mod, fd, ev, fd as u64)
                }
            }
            r => r,
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
            Some((_, want, emptied)) => {
                *want = new;
                *emptied |= emptied_now;
            }
            slot @ None => {
                *slot = Some((old, new, emptied_now));
                self.changed.push(fd);
            }
        }
        Ok(())
    }

    fn flush_changes(&mut self) -> io::Result<()> {
        let mut first_err = None;
        for fd in std::mem::take(&mut self.changed) {
            let Some((orig, want, emptied)) = self.pending[fd as usize].take() else { continue };
            // Deleted and added again in one batch: even when the interest
            // looks unchanged, the kernel may have forgotten the fd.
            let r = if emptied && !(orig & EventFlags::IO).is_empty() && !(want & EventFlags::IO).is_empty() {
                self.reregister(fd, orig, want)
            } else {
                self.apply(fd, orig, want)
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }
    fn features(&self) -> Features {
        Features::ET | Features::O1 | Features::EARLY_CLOSE
    }
    fn need_reinit(&self) -> bool {
        true
    }
    fn fd_closed(&mut self, fd: RawFd) {
        if let Some(Some((orig, _, _))) = self.pending.get_mut(fd as usize) {
            *orig = EventFlags::NONE;
        }
    }
    fn add(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        self.change(fd, old, old | delta)
    }
    fn del(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()> {
        // The evmap sets ET in `delta` exactly when the remaining interest is
        // still edge-triggered: once the last ET event on the fd is gone the
        // others are level-triggered again.
        let mut new = (old & EventFlags::IO & !(delta & EventFlags::IO)) | (delta & EventFlags::ET);
        if (new & EventFlags::IO).is_empty() {
            new = EventFlags::NONE;
        }
        self.change(fd, old, new)
    }
    fn dispatch(&mut self, timeout: Option<Duration>, ready: &mut Vec<(RawFd, EventFlags)>) -> io::Result<()> {
        // A failed change is reported once the wait has run, so the fds that
        // are ready are still served; the wait does not block then, so the
        // error is not held back until something happens.
        let flushed = if self.changelist { self.flush_changes() } else { Ok(()) };
        let timeout = if flushed.is_err() { Some(Duration::ZERO) } else { timeout };
        let n = self.ep.wait(timeout_ms(timeout), |ev| {
            let e = ev.events;
            let mut what = EventFlags::NONE;
            if e & (epoll::EPOLLERR | epoll::EPOLLHUP) as u32 != 0 {
                what |= EventFlags::READ | EventFlags::WRITE;
            }
            if e & epoll::EPOLLIN as u32 != 0 {
                what |= EventFlags::READ;
            }
            if e & epoll::EPOLLOUT as u32 != 0 {
                what |= EventFlags::WRITE;
            }
            if e & epoll::EPOLLRDHUP as u32 != 0 {
                what |= EventFlags::CLOSED;
            }
            ready.push((ev.data as RawFd, what));
        })?;
        if n == self.ep.capacity() && n < MAX_EVENTS {
            self.ep.grow(n * 2);
        }
        flushed
    }
}
