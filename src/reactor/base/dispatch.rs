//! One priority queue of active events per priority; what makes an event
//! active (a ready fd, an expired timer, a delivered signal, an fd the
//! backend gave up, `active()`); and running the callbacks of a turn.

use super::slab::{ACTIVE, INSERTED, INTERNAL, ONESHOT};
use super::{EventBase, NO_TIMEOUT, dur_ns};
use crate::reactor::event::{Cb, EventFlags, EventId};
use crate::reactor::evmap;
use crate::reactor::signal::Signals;
use crate::sys::{self, Clock};
use std::io;
use std::os::fd::RawFd;

/// The queues may hold this many stale entries beyond the number of active
/// events before they are compacted.
const STALE_SLACK: usize = 64;

/// One priority's active events in activation order: (slot, activation
/// number, when it became ready: see [`EventBase::dispatch_delay`]). A
/// `Vec` read from `head`, emptied when read to the end (the
/// usual case: a turn runs every callback it queued), compacted when most
/// of it has been read; cheaper per entry than a ring buffer.
#[derive(Debug, Default)]
pub(super) struct ActiveQueue {
    items: Vec<(u32, u32, u64)>,
    head: usize,
}

impl ActiveQueue {
    fn push_back(&mut self, e: (u32, u32, u64)) {
        if self.head >= 1024 && self.head * 2 >= self.items.len() {
            self.items.drain(..self.head);
            self.head = 0;
        }
        self.items.push(e);
    }
    fn front(&self) -> Option<&(u32, u32, u64)> {
        self.items.get(self.head)
    }
    fn pop_front(&mut self) -> Option<(u32, u32, u64)> {
        let e = *self.items.get(self.head)?;
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        }
        Some(e)
    }
    pub(super) fn len(&self) -> usize {
        self.items.len() - self.head
    }
    /// Keeps the entries `live` accepts, in order.
    fn retain(&mut self, live: impl Fn(&(u32, u32, u64)) -> bool) {
        self.items.drain(..self.head);
        self.head = 0;
        self.items.retain(live);
    }
}

impl EventBase {
    /// Activates every event on `fd` for what of `what` it watches.
    pub(super) fn activate_fd(&mut self, fd: RawFd, what: EventFlags) {
        let Some(e) = self.evmap.get(fd) else { return };
        // Copied out, as activating needs `&mut self`. One or two events
        // (the common case) sit inline in the fd's entry: no list to build.
        if let Some(inline) = e.inline_events() {
            for idx in inline {
                self.activate_io(idx, what);
            }
        } else {
            let many: Vec<u32> = e.events().collect();
            for idx in many {
                self.activate_io(idx, what);
            }
        }
    }

    /// Activates event `idx` (`evmap::NONE`: none) for what of `what` it
    /// watches.
    #[inline]
    fn activate_io(&mut self, idx: u32, what: EventFlags) {
        if idx != evmap::NONE {
            let res = self.slots[idx as usize].flags & what & EventFlags::IO;
            if !res.is_empty() {
                self.activate(idx, res);
            }
        }
    }

    /// The backend gave `fd` up (a failed registration, the fd found
    /// closed): it is that fd's problem only. Every event on it is deleted
    /// (so nothing believes the fd watched any more, and the number is free
    /// for a new socket) and told once, with ERROR and what it watched; the
    /// error is kept for [`take_fd_error`](Self::take_fd_error).
    pub(super) fn fail_fd(&mut self, fd: RawFd, err: &io::Error) {
        let events = self.evmap.take(fd);
        if events.is_empty() {
            return;
        }
        tracing::warn!(target: "rot13d::reactor", fd, error = %err, events = events.len(), "the event backend cannot watch this fd; its events are told and deleted");
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        match self.fd_errors.iter_mut().find(|e| e.0 == fd) {
            Some(e) => e.1 = errno,
            None => self.fd_errors.push((fd, errno)),
        }
        for idx in events {
            let was = self.is_pending_idx(idx);
            self.timers.cancel(idx);
            let s = &mut self.slots[idx as usize];
            s.state &= !INSERTED;
            let res = (s.flags & EventFlags::IO) | EventFlags::ERROR;
            self.recount(idx, was);
            self.activate(idx, res);
        }
    }

    pub(super) fn expire_timers(&mut self) {
        let now = self.now_ns();
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timers.pop_expired(now, &mut expired);
        for &idx in &expired {
            // The timer is gone: recount, or an expired pure timer stays
            // counted as pending and `dispatch` never returns NoEvents. A
            // non-persistent io event stays pending (inserted) until it runs.
            self.recount(idx, true);
            self.activate(idx, EventFlags::TIMEOUT);
        }
        self.expired = expired;
    }

    pub(super) fn activate(&mut self, idx: u32, res: EventFlags) {
        let s = &mut self.slots[idx as usize];
        s.res |= res;
        if s.state & ACTIVE != 0 {
            return;
        }
        s.state |= ACTIVE;
        self.n_active += 1;
        // A queue entry left by a delete while active is stale: it may sit
        // in another priority's queue (or one priority_init dropped), or
        // ahead of events activated since. Queue afresh; the old entry is
        // skipped by its activation number.
        s.qseq = s.qseq.wrapping_add(1);
        // The callback's state lives behind a pointer; start loading it now,
        // while the rest of the ready list is queued, rather than when it
        // runs (with thousands of events it is usually out of cache).
        match &s.cb {
            Some(Cb::Boxed(f)) => sys::prefetch(&**f),
            Some(Cb::Shared(h)) => sys::prefetch(std::rc::Rc::as_ptr(h)),
            None => {}
        }
        let q = (s.pri as usize).min(self.queues.len() - 1);
        self.queues[q].push_back((idx, s.qseq, self.turn_ready));
    }

    /// An active event left its queue without running (deleted, or re-armed
    /// by its timeout): its entry stays behind, stale. In a priority that
    /// does not run (strict priorities, a busy one above) nothing would
    /// ever pop them, so once they outnumber the active events (plus
    /// [`STALE_SLACK`]) every queue drops its stale entries: O(1) per stale
    /// entry amortised, and nothing on the activation path.
    pub(super) fn left_active(&mut self) {
        self.stale += 1;
        if self.stale > self.n_active + STALE_SLACK {
            self.drop_stale();
        }
    }

    #[cold]
    #[inline(never)]
    fn drop_stale(&mut self) {
        let slots = &self.slots;
        for q in &mut self.queues {
            q.retain(|&(i, seq, _)| slots[i as usize].queued_as(seq));
        }
        self.stale = 0;
    }

    /// Whether queue `p` holds a live entry (stale ones at its front are
    /// dropped on the way).
    fn queue_live(&mut self, p: usize) -> bool {
        while let Some(&(idx, seq, _)) = self.queues[p].front() {
            if self.slots[idx as usize].queued_as(seq) {
                return true;
            }
            self.queues[p].pop_front();
            self.stale = self.stale.saturating_sub(1);
        }
        false
    }

    pub(super) fn process_active(&mut self) -> usize {
        // The most urgent queue with a live entry: a queue holding only
        // stale entries must not use up the turn (NONBLOCK would run nothing).
        let Some(pri) = (0..self.queues.len()).find(|&p| self.queue_live(p)) else {
            return 0;
        };
        let mut ran = self.run_queue(pri);
        // Starvation limit: a less urgent queue passed over this many turns
        // in a row gets one bounded pass now, so a steady stream of urgent
        // events cannot stop it for good.
        if let Some(limit) = self.starve_limit {
            if self.skipped.len() < self.queues.len() {
                self.skipped.resize(self.queues.len(), 0);
            }
            self.skipped[pri] = 0;
            for p in pri + 1..self.queues.len() {
                if self.break_flag || self.continue_flag {
                    break;
                }
                if !self.queue_live(p) {
                    self.skipped[p] = 0;
                    continue;
                }
                self.skipped[p] += 1;
                if self.skipped[p] >= limit {
                    self.skipped[p] = 0;
                    ran += self.run_queue(p);
                }
            }
        }
        ran
    }

    /// One pass over priority `pri`'s queue: the entries queued when it
    /// starts, bounded by the max-dispatch settings from `min_priority` on.
    fn run_queue(&mut self, pri: usize) -> usize {
        let limited = pri >= self.min_priority;
        let max_cb = if limited { self.max_callbacks.unwrap_or(usize::MAX) } else { usize::MAX };
        let until = if limited {
            self.max_interval.map(|d| dur_ns(sys::monotonic(Clock::Precise)).saturating_add(dur_ns(d)))
        } else {
            None
        };
        let n = self.queues.get(pri).map_or(0, ActiveQueue::len);
        let mut ran = 0;
        for _ in 0..n {
            // A callback may have called priority_init and dropped this queue.
            let Some((idx, seq, ready)) = self.queues.get_mut(pri).and_then(|q| q.pop_front()) else { break };
            if !self.slots[idx as usize].queued_as(seq) {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            self.running_ready = ready;
            self.run_one(idx);
            self.running_ready = 0;
            ran += 1;
            if self.break_flag || self.continue_flag || ran >= max_cb {
                break;
            }
            if until.is_some_and(|u| dur_ns(sys::monotonic(Clock::Precise)) >= u) {
                break;
            }
        }
        ran
    }

    fn run_one(&mut self, idx: u32) {
        let s = &mut self.slots[idx as usize];
        s.state &= !ACTIVE;
        let res = std::mem::take(&mut s.res);
        let (generation, flags, timeout, oneshot) = (s.generation, s.flags, s.timeout, s.state & ONESHOT != 0);
        // Out of its slot while it runs: the callback may free the event,
        // or free it and allocate another one in the same slot. A shared
        // handler is cloned instead (an Rc count), so that it can be found
        // in its slot while it runs: a bufferevent's read callback creates
        // its write event sharing it (`new_event_sharing`).
        let cb = match &s.cb {
            Some(Cb::Shared(h)) => Some(Cb::Shared(h.clone())),
            _ => s.cb.take(),
        };
        self.n_active -= 1;
        if !flags.contains(EventFlags::PERSIST) {
            let _ = self.del_idx(idx, false);
        } else if timeout != NO_TIMEOUT && !res.contains(EventFlags::ERROR) {
            // A persistent event's timeout restarts each time it runs: from
            // its previous deadline when the timeout fired (a periodic timer
            // does not drift; libevent's event_persist_closure), from now
            // when io woke it or when whole periods were missed. (Not for an
            // event told of its fd's failure: the base deleted it.)
            self.rearm_persistent(idx, res, timeout);
        }
        // A signal callback runs once per delivery since it last ran
        // (libevent's ncalls).
        let calls =
            if res.contains(EventFlags::SIGNAL) { self.signals.as_mut().map_or(1, |s| s.take_calls(idx)) } else { 1 };
        let Some(mut cb) = cb else { return };
        let id = EventId { idx, generation };
        let mut call = |base: &mut EventBase| match &mut cb {
            Cb::Boxed(f) => f(base, id, res),
            Cb::Shared(h) => h.handle(base, id, res),
        };
        call(self);
        for _ in 1..calls {
            // Stop repeating once the event is gone or the loop must stop.
            let s = &self.slots[idx as usize];
            if !s.holds(id) || s.state & INSERTED == 0 || self.break_flag {
                break;
            }
            call(self);
        }
        let s = &mut self.slots[idx as usize];
        if s.holds(id) {
            if oneshot {
                self.free(id);
            } else if s.cb.is_none() {
                s.cb = Some(cb);
            }
        }
    }

    fn rearm_persistent(&mut self, idx: u32, res: EventFlags, timeout: u64) {
        let now = self.now_ns();
        if !res.contains(EventFlags::TIMEOUT) && self.slots[idx as usize].state & INSERTED != 0 {
            // Woken by io (a connection's read event at each read): from
            // now, and an inserted event stays pending whatever its timer
            // does, so there is nothing to recount.
            self.timers.schedule_at(idx, now.saturating_add(timeout), timeout);
            return;
        }
        let was = self.is_pending_idx(idx);
        let next = match self.timers.last_deadline(idx) {
            Some(prev) if res.contains(EventFlags::TIMEOUT) => prev.saturating_add(timeout),
            _ => now.saturating_add(timeout),
        };
        let next = if next < now { now.saturating_add(timeout) } else { next };
        self.timers.schedule_at(idx, next, timeout);
        self.recount(idx, was);
    }

    // ----- signals -------------------------------------------------------------

    /// Registers signal event `idx` for `sig`; the first one creates the
    /// base's self-pipe and its internal read event.
    pub(super) fn add_signal(&mut self, sig: i32, idx: u32) -> io::Result<()> {
        if self.signals.is_none() {
            let signals = Signals::new()?;
            let fd = signals.read_fd();
            self.signals = Some(signals);
            let id = self.alloc(
                fd,
                EventFlags::READ | EventFlags::PERSIST,
                Cb::Boxed(Box::new(|b, _, _| b.deliver_signals())),
                INTERNAL,
            );
            self.slots[id.idx as usize].pri = 0;
            self.signal_ev = id;
            self.add(id, None)?;
        }
        match self.signals.as_mut() {
            Some(s) => s.add(sig, idx),
            None => Ok(()),
        }
    }

    /// The self-pipe is readable: activate each signal event once, with the
    /// deliveries it owes counted.
    fn deliver_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else { return };
        for idx in signals.drain() {
            self.activate(idx, EventFlags::SIGNAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{BaseFlags, EventConfig, LoopFlags};

    /// An event's slot: 48 of the 232 bytes of an idle connection (its read
    /// event; BENCHMARKS.md, memory per idle connection).
    #[test]
    fn an_event_slot_takes_48_bytes() {
        assert_eq!(std::mem::size_of::<super::super::slab::Slot>(), 48);
    }

    #[test]
    fn active_queue_is_fifo_across_compaction() {
        let mut q = ActiveQueue::default();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Never drained to empty: pushes outpace pops, so the read part is
        // compacted away again and again; the order must hold throughout.
        for round in 0..50 {
            for _ in 0..300 {
                q.push_back((next_in, round, 0));
                next_in += 1;
            }
            for _ in 0..250 {
                let (v, ..) = q.pop_front().expect("entry");
                assert_eq!(v, next_out);
                next_out += 1;
            }
            assert_eq!(q.len(), (next_in - next_out) as usize);
            assert!(q.items.len() <= 2 * q.len() + 1024 + 300, "not compacted: {} for {}", q.items.len(), q.len());
        }
        while let Some((v, ..)) = q.pop_front() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert_eq!((q.len(), q.items.len(), q.head), (0, 0, 0));
        assert!(q.front().is_none());
    }

    #[test]
    fn stale_entries_of_a_starved_priority_are_bounded() {
        // Strict priorities (no starvation limit): priority 1 never runs
        // while priority 0 keeps itself busy. An event of priority 1 that is
        // activated and deleted again and again leaves a stale entry in its
        // queue each time; they must not pile up (before: 20,000 here).
        let mut cfg = EventConfig::new();
        cfg.set_flag(BaseFlags::IGNORE_ENV);
        let mut b = EventBase::with_config(&cfg).expect("base");
        b.priority_init(2).expect("priorities");
        let low = b.new_timer(|_, _, _| panic!("starved priority ran"));
        b.set_priority(low, 1).expect("priority");
        let urgent = b.new_event(-1, EventFlags::NONE, move |b, id, _| {
            for _ in 0..100 {
                b.active(low, EventFlags::TIMEOUT);
                b.del(low).expect("del");
            }
            b.active(id, EventFlags::TIMEOUT);
        });
        b.set_priority(urgent, 0).expect("priority");
        b.active(urgent, EventFlags::TIMEOUT);
        for _ in 0..200 {
            b.run(LoopFlags::NONBLOCK).expect("run");
        }
        let stale = b.queues[1].len();
        assert!(stale <= b.num_active() + STALE_SLACK + 1, "{stale} stale entries in the starved queue");
    }
}
