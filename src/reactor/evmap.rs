//! fd -> the events watching it, with per-direction counts (libevent
//! `evmap.c`). Adding or removing an event yields the fd's interest before
//! and after the change, `(old, new)`, which is all a backend needs: it
//! compares the two to pick add, modify or delete.
//!
//! An interest is the io bits some event on the fd wants (READ, WRITE,
//! CLOSED), plus ET while the fd's events are edge-triggered (they all are
//! or none is: the base refuses to mix). The counts are 16 bits, as in
//! libevent, which refuses a 65536th reader, writer or closed-watcher on
//! one fd; so does [`EvMap::add`].

use super::event::EventFlags;
use std::io;
use std::os::fd::RawFd;

pub(crate) const NONE: u32 = u32::MAX;

/// The events on one fd. Two inline slots cover a socket's read and write
/// events without a heap allocation; a third and further events go to a
/// boxed list, so that the entry of every fd (one per connection) takes 24
/// bytes rather than 40 with an inline `Vec`.
#[derive(Clone, Debug)]
pub(crate) struct FdEntry {
    inline: [u32; 2],
    // Boxed on purpose: a thin pointer (8 bytes) in every fd's entry,
    // where a `Vec` takes 24; the list exists only past two events.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u32>>>,
    nread: u16,
    nwrite: u16,
    nclose: u16,
    net: u16,
}

impl Default for FdEntry {
    fn default() -> FdEntry {
        FdEntry { inline: [NONE; 2], more: None, nread: 0, nwrite: 0, nclose: 0, net: 0 }
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

    /// The events of the fd when they all fit inline (the common case: no
    /// more than two), `NONE` marking empty places; `None` otherwise.
    #[inline]
    pub fn inline_events(&self) -> Option<[u32; 2]> {
        self.more.is_none().then_some(self.inline)
    }

    /// Whether the events on this fd are edge-triggered; `None` when there
    /// are none.
    pub fn edge_triggered(&self) -> Option<bool> {
        if self.events().next().is_none() { None } else { Some(self.net > 0) }
    }

    /// The event slots on this fd.
    pub fn events(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline.iter().copied().filter(|&i| i != NONE).chain(self.more.iter().flat_map(|m| m.iter().copied()))
    }

    fn push(&mut self, idx: u32) {
        if let Some(s) = self.inline.iter_mut().find(|s| **s == NONE) {
            *s = idx;
        } else {
            self.more.get_or_insert_with(Default::default).push(idx);
        }
    }

    fn remove(&mut self, idx: u32) {
        if let Some(s) = self.inline.iter_mut().find(|s| **s == idx) {
            *s = NONE;
            if let Some(m) = self.more.as_mut().and_then(|m| m.pop()) {
                *s = m;
            }
        } else if let Some(more) = self.more.as_mut()
            && let Some(p) = more.iter().position(|&m| m == idx)
        {
            more.swap_remove(p);
        }
        if self.more.as_ref().is_some_and(|m| m.is_empty()) {
            self.more = None;
        }
    }

    /// Whether adding an event watching `flags` would pass a count's 0xffff.
    #[inline]
    fn full(&self, flags: EventFlags) -> bool {
        // A count reaches 0xffff only with as many events on the fd, all
        // but two of them in `more`: one test in the common case.
        if self.more.as_ref().map_or(0, |m| m.len()) + 2 < u16::MAX as usize {
            return false;
        }
        (flags.contains(EventFlags::READ) && self.nread == u16::MAX)
            || (flags.contains(EventFlags::WRITE) && self.nwrite == u16::MAX)
            || (flags.contains(EventFlags::CLOSED) && self.nclose == u16::MAX)
            || (flags.contains(EventFlags::ET) && self.net == u16::MAX)
    }

    /// Counts an event watching `flags` in (`up`) or out.
    #[inline]
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
    /// interest before and after. Refused, with nothing recorded, when a
    /// count of the fd would pass 0xffff.
    pub fn add(&mut self, fd: RawFd, idx: u32, flags: EventFlags) -> io::Result<(EventFlags, EventFlags)> {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, FdEntry::default);
        }
        let e = &mut self.fds[i];
        let flags = flags & (EventFlags::IO | EventFlags::ET);
        if e.full(flags) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("too many events reading or writing on fd {fd} (at most 65535 per direction)"),
            ));
        }
        let old = e.interest();
        e.push(idx);
        e.count(flags, true);
        Ok((old, e.interest()))
    }

    /// Forgets event `idx` on `fd`; returns the interest before and after.
    pub fn del(&mut self, fd: RawFd, idx: u32, flags: EventFlags) -> (EventFlags, EventFlags) {
        let Some(e) = self.fds.get_mut(fd as usize) else { return (EventFlags::NONE, EventFlags::NONE) };
        let old = e.interest();
        e.remove(idx);
        e.count(flags & (EventFlags::IO | EventFlags::ET), false);
        (old, e.interest())
    }

    /// Forgets every event on `fd` (the backend could not watch it);
    /// returns them.
    pub fn take(&mut self, fd: RawFd) -> Vec<u32> {
        match self.fds.get_mut(fd as usize) {
            Some(e) => {
                let events = e.events().collect();
                *e = FdEntry::default();
                events
            }
            None => Vec::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    const R: EventFlags = EventFlags::READ;
    const W: EventFlags = EventFlags::WRITE;
    const C: EventFlags = EventFlags::CLOSED;
    const ET: EventFlags = EventFlags::ET;
    const NO: EventFlags = EventFlags::NONE;

    #[test]
    fn an_fd_entry_takes_24_bytes() {
        // One per connection: part of the idle-connection budget (BENCHMARKS.md).
        assert_eq!(std::mem::size_of::<FdEntry>(), 24);
    }

    #[test]
    fn all_old_new_pairs() {
        let mut m = EvMap::default();
        // nothing -> read
        assert_eq!(m.add(5, 1, R).unwrap(), (NO, R));
        // read -> read+write
        assert_eq!(m.add(5, 2, W).unwrap(), (R, R | W));
        // a second reader changes nothing
        assert_eq!(m.add(5, 3, R).unwrap(), (R | W, R | W));
        assert_eq!(m.del(5, 3, R), (R | W, R | W));
        // read+write -> write
        assert_eq!(m.del(5, 1, R), (R | W, W));
        // write -> write+closed -> closed -> nothing
        assert_eq!(m.add(5, 4, C).unwrap(), (W, W | C));
        assert_eq!(m.del(5, 2, W), (W | C, C));
        assert_eq!(m.del(5, 4, C), (C, NO));
        assert!(m.get(5).is_some_and(|e| e.events().next().is_none()));
        // edge-triggered rides along while an ET event is there...
        assert_eq!(m.add(6, 4, R | ET).unwrap(), (NO, R | ET));
        assert_eq!(m.add(6, 5, C | ET).unwrap(), (R | ET, R | C | ET));
        assert_eq!(m.del(6, 4, R | ET), (R | C | ET, C | ET));
        // ...and goes with the last one.
        assert_eq!(m.del(6, 5, C | ET), (C | ET, NO));
        assert_eq!(m.add(6, 6, R).unwrap(), (NO, R));
        assert_eq!(m.watched().collect::<Vec<_>>(), [(6, R)]);
    }

    #[test]
    fn many_events_on_one_fd() {
        let mut m = EvMap::default();
        for i in 0..5 {
            m.add(3, i, R).unwrap();
        }
        assert_eq!(m.get(3).map(|e| e.events().count()), Some(5));
        for i in 0..5 {
            m.del(3, i, R);
        }
        assert_eq!(m.get(3).map(|e| e.interest()), Some(NO));
    }

    #[test]
    fn counts_are_bounded_like_libevents() {
        let mut m = EvMap::default();
        for i in 0..0xffff {
            m.add(3, i, R).unwrap();
        }
        assert!(m.add(3, 0xffff, R).is_err());
        assert!(m.add(3, 0xffff, R | W).is_err(), "all or nothing");
        assert_eq!(m.get(3).map(|e| (e.nread, e.nwrite)), Some((0xffff, 0)));
        assert_eq!(m.add(3, 0xffff, W).unwrap(), (R, R | W));
        m.del(3, 0, R);
        assert!(m.add(3, 0x10000, R).is_ok());
    }

    #[test]
    fn take_forgets_the_fd() {
        let mut m = EvMap::default();
        m.add(4, 1, R).unwrap();
        m.add(4, 2, W | ET).unwrap();
        let mut got = m.take(4);
        got.sort();
        assert_eq!(got, [1, 2]);
        assert_eq!(m.get(4).map(|e| e.interest()), Some(NO));
        assert_eq!(m.add(4, 3, R).unwrap(), (NO, R), "a fresh start");
        assert!(m.take(99).is_empty());
    }
}
