//! Event handles, event flags and the callback type.

use super::base::EventBase;
use std::fmt;

/// What an event watches, and what happened to it (libevent's `EV_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventFlags(pub(crate) u8);

impl EventFlags {
    /// No bits.
    pub const NONE: EventFlags = EventFlags(0);
    /// The event's timeout expired (`EV_TIMEOUT`).
    pub const TIMEOUT: EventFlags = EventFlags(0x01);
    /// The fd is readable (`EV_READ`).
    pub const READ: EventFlags = EventFlags(0x02);
    /// The fd is writable (`EV_WRITE`).
    pub const WRITE: EventFlags = EventFlags(0x04);
    /// A signal event; the fd is the signal number (`EV_SIGNAL`).
    pub const SIGNAL: EventFlags = EventFlags(0x08);
    /// Stays pending after it fires (`EV_PERSIST`).
    pub const PERSIST: EventFlags = EventFlags(0x10);
    /// Edge-triggered, where the backend supports it (`EV_ET`).
    pub const ET: EventFlags = EventFlags(0x20);
    /// The peer closed its side, detected early (`EV_CLOSED`).
    pub const CLOSED: EventFlags = EventFlags(0x80);

    /// The I/O interest bits.
    pub const IO: EventFlags = EventFlags(0x02 | 0x04 | 0x80);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: EventFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether any bit of `other` is set.
    pub const fn intersects(self, other: EventFlags) -> bool {
        self.0 & other.0 != 0
    }
    /// No bit set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
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

impl std::ops::BitOr for EventFlags {
    type Output = EventFlags;
    fn bitor(self, rhs: EventFlags) -> EventFlags {
        EventFlags(self.0 | rhs.0)
    }
}
impl std::ops::BitOrAssign for EventFlags {
    fn bitor_assign(&mut self, rhs: EventFlags) {
        self.0 |= rhs.0;
    }
}
impl std::ops::BitAnd for EventFlags {
    type Output = EventFlags;
    fn bitand(self, rhs: EventFlags) -> EventFlags {
        EventFlags(self.0 & rhs.0)
    }
}
impl std::ops::BitAndAssign for EventFlags {
    fn bitand_assign(&mut self, rhs: EventFlags) {
        self.0 &= rhs.0;
    }
}
impl std::ops::Not for EventFlags {
    type Output = EventFlags;
    fn not(self) -> EventFlags {
        EventFlags(!self.0)
    }
}

impl fmt::Debug for EventFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(EventFlags, &str); 7] = [
            (EventFlags::TIMEOUT, "TIMEOUT"),
            (EventFlags::READ, "READ"),
            (EventFlags::WRITE, "WRITE"),
            (EventFlags::SIGNAL, "SIGNAL"),
            (EventFlags::PERSIST, "PERSIST"),
            (EventFlags::ET, "ET"),
            (EventFlags::CLOSED, "CLOSED"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
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
