//! Event handles, event flags and the callback type.

use super::base::EventBase;

flag_set! {
    /// What an event watches, and what happened to it (libevent's `EV_*`).
    pub struct EventFlags(pub(crate) u8) {
        /// The event's timeout expired (`EV_TIMEOUT`).
        const TIMEOUT = 0x01;
        /// The fd is readable (`EV_READ`).
        const READ = 0x02;
        /// The fd is writable (`EV_WRITE`).
        const WRITE = 0x04;
        /// A signal event; the fd is the signal number (`EV_SIGNAL`).
        const SIGNAL = 0x08;
        /// Stays pending after it fires (`EV_PERSIST`).
        const PERSIST = 0x10;
        /// Edge-triggered, where the backend supports it (`EV_ET`).
        const ET = 0x20;
        /// In a callback's result only: the backend could not watch the
        /// event's fd (a deferred registration failed, or the fd was found
        /// closed). The base deleted the event (it is no longer pending) and
        /// tells it once, with the io bits it watched;
        /// [`EventBase::take_fd_error`] has the error. (The bit of
        /// libevent's `EV_FINALIZE`, which has no use here.)
        const ERROR = 0x40;
        /// The peer closed its side, detected early (`EV_CLOSED`).
        const CLOSED = 0x80;
    }
}

impl EventFlags {
    /// No bits.
    pub const NONE: EventFlags = EventFlags(0);
    /// The I/O interest bits.
    pub const IO: EventFlags = EventFlags(0x02 | 0x04 | 0x80);

    /// The raw bits (libevent's values; all fit in a byte, which keeps an
    /// event slot small).
    pub const fn bits(self) -> u16 {
        self.0 as u16
    }
    /// Builds flags from libevent's raw values (every `EV_*` flag fits in
    /// a byte; higher bits are dropped).
    pub const fn from_bits(bits: u16) -> EventFlags {
        EventFlags(bits as u8)
    }
}

/// A handle to an event of one [`EventBase`]: a slot and a generation, so a
/// handle kept after the event was freed never reaches the slot's next user.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EventId {
    pub(crate) idx: u32,
    pub(crate) generation: u32,
}

impl EventId {
    /// A handle that never names a live event.
    pub const INVALID: EventId = EventId { idx: u32::MAX, generation: 0 };
}

/// An event callback: gets the base, its own id and what happened.
pub type Callback = Box<dyn FnMut(&mut EventBase, EventId, EventFlags)>;

/// A shared handler: one object that serves several events (a
/// bufferevent's read and write events), told apart by the [`EventId`],
/// with no boxed closure per event.
pub trait Handler {
    /// Event `id` fired with `what`.
    fn handle(&self, base: &mut EventBase, id: EventId, what: EventFlags);
}

/// What a slot calls.
pub(crate) enum Cb {
    Boxed(Callback),
    Shared(std::rc::Rc<dyn Handler>),
}
