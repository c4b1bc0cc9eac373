//! A bufferevent's user callbacks: run at once from the I/O callback, or
//! later from the deferred-callback event (DEFER_CALLBACKS, at the
//! bufferevent's priority); and the [`Handler`] that dispatches its events.

use super::{BevEvent, BevOptions, BufferEvent, Deferred, State};
use crate::reactor::base::EventBase;
use crate::reactor::event::{EventFlags, EventId, Handler};
use std::cell::RefCell;

impl<C: 'static> BufferEvent<C> {
    pub(super) fn call_read(&mut self, base: &mut EventBase) {
        if self.deferring(base) {
            self.deferred.insert(Deferred::READ);
            return;
        }
        if let Some(cb) = self.setup.readcb {
            cb(base, self);
        }
        self.after_callback(base);
    }

    pub(super) fn call_write(&mut self, base: &mut EventBase) {
        if self.deferring(base) {
            self.deferred.insert(Deferred::WRITE);
            return;
        }
        if let Some(cb) = self.setup.writecb {
            cb(base, self);
        }
    }

    pub(super) fn report(&mut self, base: &mut EventBase, ev: BevEvent) {
        if self.deferring(base) {
            self.deferred_events |= ev;
            return;
        }
        if self.call_event(base, ev) {
            self.arm_write(base);
        }
    }

    /// With DEFER_CALLBACKS: activates the deferred-callback event and
    /// says so (the caller then records which callback is owed). Inline:
    /// it runs on every read and drained write, and without the option it
    /// is one test of a flag, not a call (BENCHMARKS.md, closed-loop
    /// latency: a call with its register saves costs ~20 instructions each).
    #[inline(always)]
    fn deferring(&mut self, base: &mut EventBase) -> bool {
        if !self.setup.options.contains(BevOptions::DEFER_CALLBACKS) {
            return false;
        }
        self.defer(base);
        true
    }

    #[cold]
    #[inline(never)]
    fn defer(&mut self, base: &mut EventBase) {
        let ev = self.defer_ev(base);
        base.active(ev, EventFlags::NONE);
    }

    /// Runs the event callback; whether there was one. With none, an error
    /// or EOF frees the bufferevent: nobody listens, and a dead socket must
    /// not spin.
    fn call_event(&mut self, base: &mut EventBase, ev: BevEvent) -> bool {
        if let Some(cb) = self.setup.eventcb {
            cb(base, self, ev);
            return true;
        }
        if ev.contains(BevEvent::ERROR) || ev.contains(BevEvent::EOF) {
            self.free(base);
        }
        false
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
            self.call_event(base, ev);
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
