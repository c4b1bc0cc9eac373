//! `reinit()`: what a forked child must rebuild (libevent `event_reinit`).
//!
//! `fork()` copies the base into the child, but some of its state is kernel
//! state that parent and child then share:
//!
//! - the epoll instance: an `epoll_ctl` in the child changes the parent's
//!   interest list. reinit forgets it without a single DEL (that would reach
//!   the parent's) and registers every watched fd on a fresh instance.
//!   poll and select keep their sets in our memory, which fork copied.
//! - the signal self-pipe: the child gets a new pipe, registered for the
//!   signals its events watch. Registrations made by the parent (for this
//!   base or any other) are tagged with the parent's pid and ignored by the
//!   child's handler, so a signal caught in the child never reaches a pipe
//!   the parent reads.
//! - the wake-up eventfd of [`BaseHandle`](super::BaseHandle)s: the child's
//!   base gets a new one; handles from before the fork stay the parent's
//!   and are inert in the child (see `handle.rs`).
//!
//! - the io_uring data path (`backend/uring/data.rs`): the new backend
//!   takes over the attached fds, with what was received for them and the
//!   sends in flight, given back unsent.
//!
//! reinit keeps every event: the child may serve the same ones (the parent
//! then deletes its copies, or not). A child that serves on its own frees
//! the inherited events with [`free_all`](EventBase::free_all) after
//! reinit.

use super::EventBase;
use crate::reactor::event::EventFlags;
use std::io;
use std::os::fd::RawFd;

impl EventBase {
    /// Rebuilds kernel state after `fork()` so parent and child each see only
    /// their own events: a fresh backend where its state is shared (no DEL
    /// on the shared one), every registered fd re-added, a new signal pipe
    /// and wake eventfd. See the module documentation.
    #[doc(alias = "event_reinit")]
    pub fn reinit(&mut self) -> io::Result<()> {
        let kind = self.backend.kind();
        let need = kind.need_reinit();
        if need {
            let mut old = std::mem::replace(&mut self.backend, kind.create(64, self.flags)?);
            // Bufferevents on the io_uring data path keep it: the new ring
            // takes over their fds, and what the old one had received for
            // them or had in flight (sends given back unsent: the child's
            // copy of the bytes is sent again on its own ring).
            if let (Some(from), Some(to)) = (old.data_path(), self.backend.data_path()) {
                from.move_to(to);
            }
        }
        if self.signals.is_some() {
            let id = self.signal_ev;
            self.del_idx(id.idx, false)?;
            if let Some(sig) = self.signals.as_mut() {
                sig.reinit()?;
                self.slots[id.idx as usize].fd = sig.read_fd();
            }
            self.add(id, None)?;
        }
        self.renew_wake()?;
        if need {
            let watched: Vec<(RawFd, EventFlags)> = self.evmap.watched().collect();
            for (fd, interest) in watched {
                if let Err(e) = self.backend.change(fd, EventFlags::NONE, interest) {
                    // An inherited fd that cannot be watched any more: its
                    // problem, not the child's.
                    self.fail_fd(fd, &e);
                }
            }
        }
        Ok(())
    }
}
