//! The reactor: libevent's core re-created in Rust.
//!
//! - [`EventBase`] is the loop. Events are slots in a slab, named by
//!   [`EventId`] (slot + generation). `add`/`del` go through the evmap, which
//!   reduces several events on one fd to per-fd interest transitions, and
//!   then to a [`Backend`](backend::Backend) (`epoll`, `poll`, `select`,
//!   one file each; the epoll changelist is a mode of epoll).
//! - A loop turn: compute the wait from the timers (a min-heap plus O(1)
//!   common-timeout queues), wait in the backend, activate the events of
//!   ready fds and expired timers, then run the most urgent non-empty
//!   priority queue. From `min_priority` on, `max_callbacks` and
//!   `max_dispatch_interval` bound a turn so urgent events are looked at
//!   again soon (the lanes of rot13d stand on this).
//! - Callbacks get `&mut EventBase`: the callback is moved out of its slot
//!   while it runs, so it may add, delete or free any event, its own
//!   included.
//! - Signals arrive through a per-base self-pipe written by an
//!   async-signal-safe handler; other threads reach a base through a
//!   [`BaseHandle`] (an eventfd and a command queue), unless NOLOCK.
//! - After `fork()`, [`EventBase::reinit`] gives the child its own backend
//!   state, signal pipe and eventfd.
//! - [`EvBuffer`](evbuffer::EvBuffer) and
//!   [`BufferEvent`](bufferevent::BufferEvent) are the buffered I/O layer.
//!
//! The reactor never imports the daemon and logs at debug/trace only.

/// A set of bit flags in a `u8` newtype: the named single-bit flags as
/// constants, set operations, and a `Debug` that lists the set flags'
/// names (`READ | WRITE`, `NONE` when empty). Composite constants go in an
/// ordinary `impl` beside it.
macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($fvis:vis u8) {
            $( $(#[$fmeta:meta])* const $flag:ident = $value:expr; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        $vis struct $name($fvis u8);

        #[allow(dead_code)]
        impl $name {
            $( $(#[$fmeta])* pub const $flag: $name = $name($value); )+

            /// No flag set.
            pub const fn empty() -> $name {
                $name(0)
            }
            /// Whether every flag of `o` is set.
            pub const fn contains(self, o: $name) -> bool {
                self.0 & o.0 == o.0
            }
            /// Whether any flag of `o` is set.
            pub const fn intersects(self, o: $name) -> bool {
                self.0 & o.0 != 0
            }
            /// Whether no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            /// Sets every flag of `o`.
            #[inline]
            pub fn insert(&mut self, o: $name) {
                self.0 |= o.0;
            }
            /// Clears every flag of `o`.
            #[inline]
            pub fn remove(&mut self, o: $name) {
                self.0 &= !o.0;
            }
            /// Sets or clears every flag of `o`.
            #[inline]
            pub fn set(&mut self, o: $name, on: bool) {
                if on { self.insert(o) } else { self.remove(o) }
            }
        }

        impl ::std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, r: $name) -> $name {
                $name(self.0 | r.0)
            }
        }
        impl ::std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, r: $name) {
                self.0 |= r.0;
            }
        }
        impl ::std::ops::BitAnd for $name {
            type Output = $name;
            fn bitand(self, r: $name) -> $name {
                $name(self.0 & r.0)
            }
        }
        impl ::std::ops::BitAndAssign for $name {
            fn bitand_assign(&mut self, r: $name) {
                self.0 &= r.0;
            }
        }
        impl ::std::ops::Not for $name {
            type Output = $name;
            fn not(self) -> $name {
                $name(!self.0)
            }
        }
        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut first = true;
                $(
                    if self.contains($name::$flag) {
                        if !first {
                            f.write_str(" | ")?;
                        }
                        f.write_str(stringify!($flag))?;
                        first = false;
                    }
                )+
                if first {
                    f.write_str("NONE")?;
                }
                Ok(())
            }
        }
    };
}

pub mod backend;
mod base;
pub mod bufferevent;
pub mod config;
pub mod evbuffer;
pub mod event;
mod evmap;
mod signal;
mod timer;

pub use backend::{BackendInfo, Features, Kind as BackendKind};
pub use base::{BaseError, BaseHandle, EventBase, LoopExit, LoopFlags, MAX_PRIORITIES, MAX_QUEUED_ACTIVATIONS};
pub use bufferevent::{Bev, BevEvent, BevOptions, BufferEvent, Suspend};
pub use config::{BaseFlags, EventConfig};
pub use evbuffer::EvBuffer;
pub use event::{Callback, EventFlags, EventId, Handler};
