//! fd -> the events watching it, with per-direction counts (libevent
//! `evmap.c`). Adding or removing an event yields the fd's interest before
//! the change and the bits that changed, which is all a backend needs.

use super::event::EventFlags;
use std::os::fd::RawFd;

pub(crate) const NONE: u32 = u32::MAX;

/// The events on one fd. Two inline slots cover a socket's read and write
/// events without a heap allocation.
#[derive(Clone, Debug)]
pub(crate) struct FdEntry {
    inline: [u32; 2],
    more: Vec<u32>,
    nread: u16,
    nwrite: u16,
    nclose: u16,
    net: u16,
}

impl Default for FdEntry {
    fn default() -> FdEntry {
        FdEntry { inline: [NONE; 2], more: Vec::new(), nread: 0, nwrite: 0, nclose: 0, net: 0 }
    }
}

impl FdEntry {
    /// The interest this fd has in the backend.
    pub fn interest(&self) -> EventFlags {
        let mut f = EventFlags::NONE;
        if self.nread > 0 {
            f |= EventFlags::READ;
        }
        if self.nwrite > 0 {
            f |= EventFlags::WRITE;
        }
        if self.nclose > 0 {
            f |= EventFlags::CLOSED;
        }
        if self.net > 0 && !f.is_empty() {
            f |= EventFlags::ET;
        }
        f
    }

    /// Whether the events on this fd are edge-triggered; `None` when there
    /// are none.
    /// The events of the fd when they all fit inline (the common case: no
    /// more than two), `NONE` marking empty places; `None` otherwise.
    #[inline]
    pub fn inline_events(&self) -> Option<[u32; 2]> {
        self.more.is_empty().then_some(self.inline)
    }

    pub fn edge_triggered(&self) -> Option<bool> {
        if self.events().next().is_none() { None } else { Some(self.net > 0) }
    }

    /// The event slots on this fd.
    pub fn events(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline.iter().copied().filter(|&i| i != NONE).chain(self.more.iter().copied())
    }

    fn push(&mut self, idx: u32) {
        if let Some(s) = self.inline.iter_mut().find(|s| **s == NONE) {
            *s = idx;
        } else {
            self.more.push(idx);
        }
    }

    fn remove(&mut self, idx: u32) {
        if let Some(s) = self.inline.iter_mut().find(|s| **s == idx) {
            *s = NONE;
            if let Some(m) = self.more.pop() {
                *s = m;
            }
        } else if let Some(p) = self.more.iter().position(|&m| m == idx) {
            self.more.swap_remove(p);
        }
        if self.more.is_empty() && self.more.capacity() > 0 {
            self.more = Vec::new();
        }
    }

    fn count(&mut self, flags: EventFlags, up: bool) {
        let step = |c: &mut u16| {
            if up { *c += 1 } else { *c = c.saturating_sub(1) }
        };
        if flags.contains(EventFlags::READ) {
            step(&mut self.nread);
        }
        if flags.contains(EventFlags::WRITE) {
            step(&mut self.nwrite);
        }
        if flags.contains(EventFlags::CLOSED) {
            step(&mut self.nclose);
        }
        if flags.contains(EventFlags::ET) {
            step(&mut self.net);
        }
    }
}

/// The io map of a base.
#[derive(Debug, Default)]
pub(crate) struct EvMap {
    fds: Vec<FdEntry>,
}

impl EvMap {
    /// Records event `idx` watching `fd` for `flags`; returns the fd's
    /// interest before, and the bits it gains.
    pub fn add(&mut self, fd: RawFd, idx: u32, flags: EventFlags) -> (EventFlags, EventFlags) {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, FdEntry::default);
        }
        let e = &mut self.fds[i];
        let old = e.interest();
        e.push(idx);
        e.count(flags & (EventFlags::IO | EventFlags::ET), true);
        let new = e.interest();
        (old, delta(old, new))
    }

    /// Forgets event `idx` on `fd`; returns the interest before and the bits
    /// it loses.
    pub fn del(&mut self, fd: RawFd, idx: u32, flags: EventFlags) -> (EventFlags, EventFlags) {
        let Some(e) = self.fds.get_mut(fd as usize) else { return (EventFlags::NONE, EventFlags::NONE) };
        let old = e.interest();
        e.remove(idx);
        e.count(flags & (EventFlags::IO | EventFlags::ET), false);
        let new = e.interest();
        (old, delta(old, new))
    }

    /// The entry of `fd`.
    pub fn get(&self, fd: RawFd) -> Option<&FdEntry> {
        self.fds.get(fd as usize)
    }

    /// Every fd with a non-empty interest (for reinit).
    pub fn watched(&self) -> impl Iterator<Item = (RawFd, EventFlags)> + '_ {
        self.fds.iter().enumerate().filter_map(|(fd, e)| {
            let f = e.interest();
            if f.is_empty() { None } else { Some((fd as RawFd, f)) }
        })
    }
}

/// The bits that differ between two interests (the ET bit counts as changed
/// when the io bits change so that the backend re-registers with it).
fn delta(old: EventFlags, new: EventFlags) -> EventFlags {
    let d = EventFlags((old.0 ^ new.0) & EventFlags::IO.0);
    if d.is_empty() { d } else { d | (new & EventFlags::ET) }
}

#[cfg(test)]
mod tests {
    use super::*;
    const R: EventFlags = EventFlags::READ;
    const W: EventFlags = EventFlags::WRITE;

    #[test]
    fn all_old_delta_pairs() {
        let mut m = EvMap::default();
        // nothing -> read
        assert_eq!(m.add(5, 1, R), (EventFlags::NONE, R));
        // read -> read+write
        assert_eq!(m.add(5, 2, W), (R, W));
        // a second reader changes nothing
        assert_eq!(m.add(5, 3, R), (R | W, EventFlags::NONE));
        assert_eq!(m.del(5, 3, R), (R | W, EventFlags::NONE));
        // read+write -> write
        assert_eq!(m.del(5, 1, R), (R | W, R));
        // write -> nothing
        assert_eq!(m.del(5, 2, W), (W, W));
        assert!(m.get(5).is_some_and(|e| e.events().next().is_none()));
        // edge-triggered rides along
        assert_eq!(m.add(6, 4, R | EventFlags::ET), (EventFlags::NONE, R | EventFlags::ET));
        assert_eq!(m.add(6, 5, EventFlags::CLOSED), (R | EventFlags::ET, EventFlags::CLOSED | EventFlags::ET));
        assert_eq!(m.watched().count(), 1);
    }

    #[test]
    fn many_events_on_one_fd() {
        let mut m = EvMap::default();
        for i in 0..5 {
            m.add(3, i, R);
        }
        assert_eq!(m.get(3).map(|e| e.events().count()), Some(5));
        for i in 0..5 {
            m.del(3, i, R);
        }
        assert_eq!(m.get(3).map(|e| e.interest()), Some(EventFlags::NONE));
    }
}
