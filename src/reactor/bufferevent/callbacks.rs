//! A bufferevent's user callbacks: run at once from the I/O callback, or
//! later from the deferred-callback event (DEFER_CALLBACKS, at the
//! bufferevent's priority); and the [`Handler`] that dispatches its events.

use super::{BevEvent, BevOptions, BufferEvent, Deferred, State};
use crate::reactor::base::EventBase;
use crate::reactor::event::{EventFlags, EventId, Handler};
use std::cell::RefCell;

impl<C: 'static> BufferEvent<C> {
    pub(super) fn call_read(&mut self, base: &mut EventBase) {
        if self.setup.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred.insert(Deferred::READ);
            let ev = self.defer_ev(base);
            base.active(ev, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.setup.readcb {
            cb(base, self);
        }
        self.after_callback(base);
    }

    pub(super) fn call_write(&mut self, base: &mut EventBase) {
        if self.setup.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred.insert(Deferred::WRITE);
            let ev = self.defer_ev(base);
            base.active(ev, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.setup.writecb {
            cb(base, self);
        }
    }

    pub(super) fn report(&mut self, base: &mut EventBase, ev: BevEvent) {
        if self.setup.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred_events |= ev;
            let d = self.defer_ev(base);
            base.active(d, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.setup.eventcb {
            cb(base, self, ev);
            self.arm_write(base);
        } else if ev.contains(BevEvent::ERROR) || ev.contains(BevEvent::EOF) {
            // Nobody listens: a dead socket must not spin.
            self.free(base);
        }
    }

    fn run_deferred(&mut self, base: &mut EventBase) {
        let d = std::mem::take(&mut self.deferred);
        let ev = std::mem::take(&mut self.deferred_events);
        if d.contains(Deferred::READ)
            && !self.is(State::FREED)
            && let Some(cb) = self.setup.readcb
        {
            cb(base, self);
            self.after_callback(base);
        }
        if d.contains(Deferred::WRITE)
            && !self.is(State::FREED)
            && let Some(cb) = self.setup.writecb
        {
            cb(base, self);
        }
        if ev != BevEvent::default() && !self.is(State::FREED) {
            if let Some(cb) = self.setup.eventcb {
                cb(base, self, ev);
            } else if ev.contains(BevEvent::ERROR) || ev.contains(BevEvent::EOF) {
                // As in `report`: nobody listens, a dead socket must go.
                self.free(base);
            }
        }
        self.arm_write(base);
    }

    /// After the read callback: write what it produced, re-check the input
    /// watermark (it may have consumed input).
    fn after_callback(&mut self, base: &mut EventBase) {
        if self.is(State::FREED) {
            return;
        }
        if !self.output().is_empty() {
            self.try_write(base);
        }
        if !self.is(State::FREED) {
            // try_write applies backpressure only when it may write: with
            // WRITE disabled (or still connecting) the output cannot drain,
            // and reading must pause all the same.
            self.check_backpressure(base);
            self.check_read_watermark(base);
        }
    }
}

impl<C: 'static> Handler for RefCell<BufferEvent<C>> {
    fn handle(&self, base: &mut EventBase, id: EventId, what: EventFlags) {
        // A nested borrow cannot happen in the single-threaded loop; if it
        // did, skipping the event is safer than a panic.
        let Ok(mut b) = self.try_borrow_mut() else { return };
        if id == b.read_ev {
            b.on_read(base, what);
        } else if let Some(io) = b.io.as_deref() {
            if id == io.write_ev {
                b.on_write(base, what);
            } else if id == io.defer_ev {
                b.run_deferred(base);
            }
        }
        b.settle(base);
    }
}
