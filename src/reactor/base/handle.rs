//! [`BaseHandle`]: the one way into a base from another thread (an eventfd
//! to wake it and a small command queue behind a mutex); a NOLOCK base has
//! none.
//!
//! The queue is bounded: an activation of an event already queued merges
//! into its entry (as `event_active` on an active event merges its
//! results), break/exit/wake are flags, and at most [`MAX_QUEUED`] distinct
//! events wait; beyond that `activate` is refused until the loop catches up.
//!
//! After `fork()` a handle names the base of the process that made it: in
//! the child, a handle cloned before the fork (and any clone of it) is
//! inert, since its eventfd is the parent's eventfd too: calls do nothing
//! and `activate` reports an error. The child's base, once
//! [`reinit`](EventBase::reinit), hands out new handles. The child never
//! takes the old queue's lock (a thread of the parent may have held it at
//! the fork, and that thread does not exist in the child).

use super::EventBase;
use crate::reactor::config::BaseFlags;
use crate::reactor::event::{Cb, EventFlags, EventId};
use crate::sys;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// Most distinct events with an activation from other threads waiting for
/// the loop.
pub const MAX_QUEUED: usize = 4096;

/// What other threads asked of the loop since it last looked.
#[derive(Debug, Default)]
struct Commands {
    activate: Vec<(EventId, EventFlags)>,
    brk: bool,
    exit: bool,
}

struct Shared {
    waker: sys::Waker,
    /// `None` only while dropping in a forked child (see `Drop`).
    cmds: Option<Mutex<Commands>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // In a forked child the queue may have been half-way through a
        // change by a thread of the parent: leak it rather than drop it.
        if !self.waker.is_local() {
            std::mem::forget(self.cmds.take());
        }
    }
}

/// The base's side of its handles.
pub(super) struct Wake {
    shared: Arc<Shared>,
}

impl Wake {
    fn new() -> io::Result<Wake> {
        let shared = Shared { waker: sys::Waker::new()?, cmds: Some(Mutex::new(Commands::default())) };
        Ok(Wake { shared: Arc::new(shared) })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.shared.waker.fd()
    }

    /// Whether it belongs to this process (false in a forked child).
    pub(super) fn is_local(&self) -> bool {
        self.shared.waker.is_local()
    }
}

/// A `Send + Sync` handle that other threads use to reach a base: wake it,
/// activate an event, break or exit its loop (an eventfd under it). See the
/// module documentation for what it means after `fork()`.
#[derive(Clone)]
pub struct BaseHandle {
    shared: Arc<Shared>,
}

impl BaseHandle {
    /// Changes the queue with `f` and wakes the loop; false when the
    /// handle is inert (another process's) or the queue refused.
    fn push(&self, f: impl FnOnce(&mut Commands) -> bool) -> bool {
        if !self.shared.waker.is_local() {
            return false;
        }
        let Some(Ok(mut q)) = self.shared.cmds.as_ref().map(|m| m.lock()) else { return false };
        let ok = f(&mut q);
        drop(q);
        self.shared.waker.wake();
        ok
    }

    /// Wakes the loop out of its wait.
    pub fn wake(&self) {
        self.push(|_| true);
    }

    /// Activates `id` with `res`, as [`EventBase::active`] does. Refused
    /// (`WouldBlock`) when [`MAX_QUEUED`] other events already wait for the
    /// loop, and (`NotConnected`) by a handle from before a fork, in the
    /// child.
    pub fn activate(&self, id: EventId, res: EventFlags) -> io::Result<()> {
        if !self.shared.waker.is_local() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "a handle of another process's event base"));
        }
        let ok = self.push(|q| {
            if let Some(e) = q.activate.iter_mut().rev().find(|e| e.0 == id) {
                e.1 |= res;
                true
            } else if q.activate.len() < MAX_QUEUED {
                q.activate.push((id, res));
                true
            } else {
                false
            }
        });
        if ok {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WouldBlock, "too many activations wait for the event loop"))
        }
    }

    /// Breaks the loop, as [`EventBase::loopbreak`] does.
    pub fn loopbreak(&self) {
        self.push(|q| {
            q.brk = true;
            true
        });
    }

    /// Makes the loop exit after this turn, as [`EventBase::loopexit`].
    pub fn loopexit(&self) {
        self.push(|q| {
            q.exit = true;
            true
        });
    }

    /// How many distinct events have an activation waiting (tests).
    pub fn queued(&self) -> usize {
        if !self.shared.waker.is_local() {
            return 0;
        }
        self.shared.cmds.as_ref().and_then(|m| m.lock().ok()).map_or(0, |q| q.activate.len())
    }
}

impl EventBase {
    /// A handle for other threads; an error on a NOLOCK base.
    pub fn handle(&mut self) -> io::Result<BaseHandle> {
        if self.flags.contains(BaseFlags::NOLOCK) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a NOLOCK base has no thread handle"));
        }
        if self.wake.is_none() {
            self.install_wake(Wake::new()?)?;
        }
        let shared = self.wake.as_ref().map(|w| w.shared.clone()).ok_or_else(|| io::Error::other("no wake handle"))?;
        Ok(BaseHandle { shared })
    }

    /// Makes `w` the base's wake-up, read by an internal event of the most
    /// urgent priority (re-used when there is one already).
    pub(super) fn install_wake(&mut self, w: Wake) -> io::Result<()> {
        let fd = w.fd();
        self.wake = Some(w);
        if self.is_valid(self.wake_ev) {
            self.slots[self.wake_ev.idx as usize].fd = fd;
        } else {
            let id = self.alloc(
                fd,
                EventFlags::READ | EventFlags::PERSIST,
                Cb::Boxed(Box::new(|b, _, _| b.run_commands())),
                super::slab::INTERNAL,
            );
            self.slots[id.idx as usize].pri = 0;
            self.wake_ev = id;
        }
        self.add(self.wake_ev, None)
    }

    /// A fresh wake-up for a forked child (reinit): the inherited one is
    /// the parent's, and is dropped without touching its queue.
    pub(super) fn renew_wake(&mut self) -> io::Result<()> {
        let Some(old) = self.wake.take() else { return Ok(()) };
        let local = old.is_local();
        self.del_idx(self.wake_ev.idx, false)?;
        // In the same process (reinit without a fork) the handles stay
        // good: only the backend changed.
        let w = if local { old } else { Wake::new()? };
        self.install_wake(w)
    }

    fn run_commands(&mut self) {
        let Some(w) = self.wake.as_ref() else { return };
        w.shared.waker.drain();
        let Some(Ok(mut q)) = w.shared.cmds.as_ref().map(|m| m.lock()) else { return };
        let cmds = std::mem::take(&mut *q);
        drop(q);
        for (id, res) in cmds.activate {
            self.active(id, res);
        }
        if cmds.brk {
            self.loopbreak();
        }
        if cmds.exit {
            self.exit_flag = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::EventConfig;

    #[test]
    fn repeated_calls_do_not_pile_up() {
        // Other threads may call a handle much faster than the loop runs
        // (or while it does not run at all): repeated calls must not pile
        // up (before: one queue entry per call, 300,000 here).
        let mut cfg = EventConfig::new();
        cfg.set_flag(BaseFlags::IGNORE_ENV);
        let mut b = EventBase::with_config(&cfg).expect("base");
        let h = b.handle().expect("handle");
        let ev = b.new_timer(|_, _, _| {});
        for _ in 0..100_000 {
            h.activate(ev, EventFlags::TIMEOUT).expect("activate");
            h.wake();
            h.loopexit();
        }
        assert_eq!(h.queued(), 1);
        // Distinct events are bounded too.
        let many: Vec<EventId> = (0..MAX_QUEUED).map(|_| b.new_timer(|_, _, _| {})).collect();
        let refused = many.iter().filter(|id| h.activate(**id, EventFlags::TIMEOUT).is_err()).count();
        assert_eq!((h.queued(), refused), (MAX_QUEUED, 1));
    }
}
