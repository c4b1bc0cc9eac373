//! Event slots: a `Vec` of [`Slot`] reused through a free list, named by
//! [`EventId`] (index + generation, so a handle kept after its event was
//! freed never reaches the slot's next user).

use super::{EventBase, NO_TIMEOUT};
use crate::reactor::event::{Cb, EventFlags, EventId};
use std::io;
use std::os::fd::RawFd;

// Slot states.
/// The slot holds an event.
pub(super) const ALLOCATED: u8 = 0x01;
/// Its io or signal part is registered (evmap or signal pipe).
pub(super) const INSERTED: u8 = 0x02;
/// It sits in an active queue.
pub(super) const ACTIVE: u8 = 0x04;
/// The base's own (signal pipe, wake-up): never counted as pending, never
/// freed by `free_all`.
pub(super) const INTERNAL: u8 = 0x10;
/// Freed after its first run (`once`).
pub(super) const ONESHOT: u8 = 0x20;

/// One event.
pub(super) struct Slot {
    pub generation: u32,
    pub fd: RawFd,
    pub flags: EventFlags,
    pub res: EventFlags,
    pub pri: u8,
    pub state: u8,
    /// Its timeout in ns, [`NO_TIMEOUT`] for none.
    pub timeout: u64,
    /// Activation number: a queue entry with another number is stale (the
    /// event was deleted while active, and maybe activated again since).
    pub qseq: u32,
    pub cb: Option<Cb>,
}

impl Slot {
    /// Whether it holds the event `id` names (allocated, same generation).
    #[inline]
    pub fn holds(&self, id: EventId) -> bool {
        self.generation == id.generation && self.state & ALLOCATED != 0
    }

    /// Whether an active-queue entry with activation number `seq` is this
    /// slot's live one (not left behind by a delete or a re-activation).
    #[inline]
    pub fn queued_as(&self, seq: u32) -> bool {
        self.qseq == seq && self.state & ACTIVE != 0
    }
}

impl EventBase {
    pub(super) fn alloc(&mut self, fd: RawFd, flags: EventFlags, cb: Cb, extra: u8) -> EventId {
        let pri = (self.queues.len() / 2) as u8;
        if let Some(idx) = self.free.pop() {
            let s = &mut self.slots[idx as usize];
            s.fd = fd;
            s.flags = flags;
            s.res = EventFlags::NONE;
            s.pri = pri;
            s.state = ALLOCATED | extra;
            s.timeout = NO_TIMEOUT;
            s.cb = Some(cb);
            EventId { idx, generation: s.generation }
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                generation: 1,
                fd,
                flags,
                res: EventFlags::NONE,
                pri,
                state: ALLOCATED | extra,
                timeout: NO_TIMEOUT,
                qseq: 0,
                cb: Some(cb),
            });
            EventId { idx, generation: 1 }
        }
    }

    pub(super) fn slot(&self, id: EventId) -> Option<&Slot> {
        self.slots.get(id.idx as usize).filter(|s| s.holds(id))
    }

    pub(super) fn slot_mut(&mut self, id: EventId) -> io::Result<&mut Slot> {
        self.slots
            .get_mut(id.idx as usize)
            .filter(|s| s.holds(id))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such event"))
    }

    /// Whether `id` names a live event.
    pub fn is_valid(&self, id: EventId) -> bool {
        self.slot(id).is_some()
    }

    pub(super) fn is_pending_idx(&self, idx: u32) -> bool {
        self.slots[idx as usize].state & INSERTED != 0 || self.timers.is_scheduled(idx)
    }

    /// Keeps the count of pending user events right after slot `idx`
    /// changed; `was` is whether it was pending before.
    pub(super) fn recount(&mut self, idx: u32, was: bool) {
        if self.slots[idx as usize].state & INTERNAL != 0 {
            return;
        }
        let now = self.is_pending_idx(idx);
        if now && !was {
            self.n_pending_user += 1;
        } else if was && !now {
            self.n_pending_user -= 1;
        }
    }

    /// Deletes and releases an event; its id becomes invalid. Freeing an
    /// event from inside its own callback is allowed.
    #[doc(alias = "event_free")]
    pub fn free(&mut self, id: EventId) {
        if self.slot(id).is_none() {
            return;
        }
        let _ = self.del_idx(id.idx, true);
        let s = &mut self.slots[id.idx as usize];
        s.generation = s.generation.wrapping_add(1).max(1);
        s.state = 0;
        s.cb = None;
        s.fd = -1;
        self.free.push(id.idx);
    }

    /// Frees every event registered through the public API (the base's
    /// own signal and wake-up events stay). For a forked child that serves
    /// on its own after [`reinit`](Self::reinit): the parent's events there
    /// would watch fds the child closes, and an fd number the child reuses
    /// would then look already watched (its new socket never registered).
    /// Freeing drops the callbacks, and with them what they own (a
    /// bufferevent dropped this way closes its socket). Call it after
    /// `reinit`, never before: before, the deletes would reach the epoll
    /// instance the parent still uses.
    pub fn free_all(&mut self) {
        for idx in 0..self.slots.len() as u32 {
            let s = &self.slots[idx as usize];
            if s.state & ALLOCATED != 0 && s.state & INTERNAL == 0 {
                self.free(EventId { idx, generation: s.generation });
            }
        }
    }
}
