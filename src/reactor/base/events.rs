//! The event API: create, add, delete, activate and query events; their
//! priorities; common timeouts.

use super::slab::{ACTIVE, INSERTED, ONESHOT};
use super::{EventBase, MAX_PRIORITIES, NO_TIMEOUT, dur_ns};
use crate::reactor::event::{Cb, EventFlags, EventId, Handler};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

impl EventBase {
    // ----- creation ----------------------------------------------------------

    /// Creates an event on `fd` (a signal number with SIGNAL, -1 for a pure
    /// timer). It is not pending until [`add`](Self::add).
    #[doc(alias = "event_new")]
    pub fn new_event(
        &mut self,
        fd: RawFd,
        flags: EventFlags,
        cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static,
    ) -> EventId {
        self.alloc(fd, flags, Cb::Boxed(Box::new(cb)), 0)
    }

    /// Creates an event served by a shared [`Handler`] (no allocation per
    /// event: a bufferevent's two events share one handler).
    pub fn new_event_with(&mut self, fd: RawFd, flags: EventFlags, handler: std::rc::Rc<dyn Handler>) -> EventId {
        self.alloc(fd, flags, Cb::Shared(handler), 0)
    }

    /// Creates an event on `fd` served by the shared [`Handler`] of event
    /// `like`, at `like`'s priority: how a bufferevent adds its write event
    /// only when a socket is full, from inside its read callback. Fails if
    /// `like` is gone or has no shared handler.
    pub fn new_event_sharing(&mut self, like: EventId, fd: RawFd, flags: EventFlags) -> io::Result<EventId> {
        let s = self.slot(like).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such event"))?;
        let Some(Cb::Shared(h)) = &s.cb else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the event has no shared handler"));
        };
        let (h, pri) = (h.clone(), s.pri);
        let id = self.alloc(fd, flags, Cb::Shared(h), 0);
        self.slots[id.idx as usize].pri = pri;
        Ok(id)
    }

    /// A timer event (`evtimer_new`).
    #[doc(alias = "evtimer_new")]
    pub fn new_timer(&mut self, cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static) -> EventId {
        self.alloc(-1, EventFlags::NONE, Cb::Boxed(Box::new(cb)), 0)
    }

    /// A persistent signal event (`evsignal_new`).
    #[doc(alias = "evsignal_new")]
    pub fn new_signal(&mut self, sig: i32, cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static) -> EventId {
        self.alloc(sig, EventFlags::SIGNAL | EventFlags::PERSIST, Cb::Boxed(Box::new(cb)), 0)
    }

    /// Runs `cb` once when `fd` is ready for `flags` or after `timeout`
    /// (`event_base_once`); its slot is freed after the call.
    #[doc(alias = "event_base_once")]
    pub fn once(
        &mut self,
        fd: RawFd,
        flags: EventFlags,
        timeout: Option<Duration>,
        cb: impl FnOnce(&mut EventBase, EventFlags) + 'static,
    ) -> io::Result<EventId> {
        if flags.intersects(EventFlags::SIGNAL | EventFlags::PERSIST) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "once takes no SIGNAL or PERSIST"));
        }
        let mut cb = Some(cb);
        let id = self.alloc(
            fd,
            flags,
            Cb::Boxed(Box::new(move |b: &mut EventBase, _, res| {
                if let Some(f) = cb.take() {
                    f(b, res)
                }
            })),
            ONESHOT,
        );
        let timeout = if flags.intersects(EventFlags::IO) { timeout } else { Some(timeout.unwrap_or_default()) };
        if let Err(e) = self.add(id, timeout) {
            self.free(id);
            return Err(e);
        }
        Ok(id)
    }

    // ----- add / del ---------------------------------------------------------

    /// Makes an event pending, with an optional timeout (re-arming it if
    /// already pending). A timeout equal to a common timeout of this base
    /// goes to that O(1) queue.
    #[doc(alias = "event_add")]
    pub fn add(&mut self, id: EventId, timeout: Option<Duration>) -> io::Result<()> {
        let s = self.slot_mut(id)?;
        let (fd, flags, inserted) = (s.fd, s.flags, s.state & INSERTED != 0);
        let idx = id.idx;
        let was = self.is_pending_idx(idx);
        if !inserted && flags.intersects(EventFlags::IO | EventFlags::SIGNAL) {
            if flags.contains(EventFlags::SIGNAL) {
                self.add_signal(fd, idx)?;
            } else {
                self.add_io(fd, idx, flags)?;
            }
            self.slots[idx as usize].state |= INSERTED;
        }
        match timeout {
            Some(t) => {
                let t = dur_ns(t);
                let s = &mut self.slots[idx as usize];
                s.timeout = t;
                // Re-armed before its callback ran: an event active because
                // its timeout fired (with or without io results beside it)
                // leaves the active queue and waits again (libevent's
                // event_add tests `ev_res & EV_TIMEOUT`); a signal event
                // owes no more calls.
                if s.state & ACTIVE != 0 && s.res.contains(EventFlags::TIMEOUT) {
                    self.deactivate(idx);
                }
                let now = self.now_ns();
                self.timers.schedule(idx, now, t);
            }
            None => {
                // event_add with no timeout clears a previous timeout.
                self.slots[idx as usize].timeout = NO_TIMEOUT;
                self.timers.cancel(idx);
            }
        }
        self.recount(idx, was);
        Ok(())
    }

    fn add_io(&mut self, fd: RawFd, idx: u32, flags: EventFlags) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "io event without an fd"));
        }
        // One fd has one mode in epoll: mixing would silently change the
        // mode of the events already there (libevent refuses too).
        if self.evmap.get(fd).and_then(|e| e.edge_triggered()).is_some_and(|et| et != flags.contains(EventFlags::ET)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "edge-triggered and level-triggered events cannot share an fd",
            ));
        }
        let (old, new) = self.evmap.add(fd, idx, flags)?;
        if old != new
            && let Err(e) = self.backend.change(fd, old, new)
        {
            // The caller hears of it; the backend forgot the fd, so the
            // other events on it are told too.
            self.evmap.del(fd, idx, flags);
            tracing::debug!(target: "rot13d::reactor", fd, error = %e, "registering an fd failed");
            self.fail_fd(fd, &e);
            return Err(e);
        }
        if !self.fd_errors.is_empty() {
            self.fd_errors.retain(|e| e.0 != fd);
        }
        Ok(())
    }

    /// Makes an event non-pending and non-active.
    #[doc(alias = "event_del")]
    pub fn del(&mut self, id: EventId) -> io::Result<()> {
        self.slot_mut(id)?;
        self.del_idx(id.idx, true)
    }

    pub(super) fn del_idx(&mut self, idx: u32, and_active: bool) -> io::Result<()> {
        let was = self.is_pending_idx(idx);
        self.timers.cancel(idx);
        if and_active && self.slots[idx as usize].state & ACTIVE != 0 {
            self.deactivate(idx);
        }
        let s = &mut self.slots[idx as usize];
        let mut result = Ok(());
        if s.state & INSERTED != 0 {
            s.state &= !INSERTED;
            let (fd, flags) = (s.fd, s.flags);
            if flags.contains(EventFlags::SIGNAL) {
                if let Some(sig) = self.signals.as_mut() {
                    result = sig.del(fd, idx);
                }
            } else {
                let (old, new) = self.evmap.del(fd, idx, flags);
                if old != new
                    && let Err(e) = self.backend.change(fd, old, new)
                {
                    // The backend forgot the fd: the events left on it are
                    // no longer watched.
                    self.fail_fd(fd, &e);
                    result = Err(e);
                } else if (new & EventFlags::IO).is_empty() && !(old & EventFlags::IO).is_empty() {
                    // The fd is no longer watched: the caller may close it
                    // now and expect it closed (a listener refusing, a peer
                    // seeing EOF). A backend whose registration holds the
                    // file (io_uring) lets go of it at once; the others do
                    // nothing here.
                    result = self.backend.flush();
                }
            }
        }
        self.recount(idx, was);
        result
    }

    /// Takes active event `idx` off the active list without running it: it
    /// owes no results and no signal deliveries; its queue entry is stale.
    fn deactivate(&mut self, idx: u32) {
        let s = &mut self.slots[idx as usize];
        s.state &= !ACTIVE;
        s.res = EventFlags::NONE;
        self.n_active -= 1;
        if let Some(sig) = self.signals.as_mut() {
            sig.forget_calls(idx);
        }
        self.left_active();
    }

    // ----- activation and queries ------------------------------------------

    /// Makes `id` active with `res` now, whether pending or not
    /// (`event_active`).
    #[doc(alias = "event_active")]
    pub fn active(&mut self, id: EventId, res: EventFlags) {
        if self.slot(id).is_some() {
            self.activate(id.idx, res);
        }
    }

    /// What `id` is pending or active for, among `what`; with TIMEOUT, also
    /// its remaining time (`event_pending`).
    #[doc(alias = "event_pending")]
    pub fn pending(&self, id: EventId, what: EventFlags) -> (EventFlags, Option<Duration>) {
        let Some(s) = self.slot(id) else { return (EventFlags::NONE, None) };
        let mut f = EventFlags::NONE;
        if s.state & INSERTED != 0 {
            f |= s.flags & (EventFlags::IO | EventFlags::SIGNAL);
        }
        if s.state & ACTIVE != 0 {
            f |= s.res;
        }
        let deadline = self.timers.deadline(id.idx);
        if deadline.is_some() {
            f |= EventFlags::TIMEOUT;
        }
        let left = deadline.map(|d| Duration::from_nanos(d.saturating_sub(self.now_ns())));
        (f & what, left)
    }

    /// The fd (or signal number) of an event.
    pub fn event_fd(&self, id: EventId) -> Option<RawFd> {
        self.slot(id).map(|s| s.fd)
    }

    // ----- priorities --------------------------------------------------------

    /// Sets the number of priorities, 1 to [`MAX_PRIORITIES`] (255); only
    /// while no event is active. New events get priority `n / 2`.
    #[doc(alias = "event_base_priority_init")]
    pub fn priority_init(&mut self, n: usize) -> io::Result<()> {
        if !(1..=MAX_PRIORITIES).contains(&n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("priorities must be between 1 and {MAX_PRIORITIES}"),
            ));
        }
        if self.n_active > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "priorities cannot change while events are active",
            ));
        }
        // No event is active: whatever the queues hold is stale.
        for q in &mut self.queues {
            *q = Default::default();
        }
        self.stale = 0;
        self.queues.resize_with(n, Default::default);
        self.queues.truncate(n);
        for s in &mut self.slots {
            s.pri = s.pri.min((n - 1) as u8);
        }
        Ok(())
    }

    /// Sets the priority of an event that is not active.
    #[doc(alias = "event_priority_set")]
    pub fn set_priority(&mut self, id: EventId, pri: usize) -> io::Result<()> {
        let n = self.queues.len();
        let s = self.slot_mut(id)?;
        if s.state & ACTIVE != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "event is active"));
        }
        if pri >= n {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "priority out of range"));
        }
        s.pri = pri as u8;
        Ok(())
    }

    /// The priority of an event.
    pub fn priority(&self, id: EventId) -> Option<usize> {
        self.slot(id).map(|s| s.pri as usize)
    }

    // ----- common timeouts ---------------------------------------------------

    /// Registers `d` as a common timeout: later `add`s with exactly `d`
    /// re-arm in O(1) (libevent's `event_base_init_common_timeout`).
    #[doc(alias = "event_base_init_common_timeout")]
    pub fn init_common_timeout(&mut self, d: Duration) -> io::Result<()> {
        if self.timers.add_common(dur_ns(d)) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::OutOfMemory, "too many common timeouts"))
        }
    }

    /// Whether `d` is a common timeout of this base.
    pub fn is_common_timeout(&self, d: Duration) -> bool {
        self.timers.is_common(dur_ns(d))
    }
}
