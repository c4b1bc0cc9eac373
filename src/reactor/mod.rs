//! The reactor: libevent's core re-created in Rust.
//!
//! - [`EventBase`](crate::reactor::EventBase) is the loop (`base/`: the struct and the loop in
//!   `mod.rs`, slots in `slab.rs`, the event API in `events.rs`, activation
//!   and callbacks in `dispatch.rs`, [`BaseHandle`](crate::reactor::BaseHandle) in `handle.rs`, reinit
//!   in `fork.rs`). Events are slots in a slab, named by [`EventId`](crate::reactor::EventId) (slot +
//!   generation). `add`/`del` go through the evmap (`evmap.rs`), which
//!   reduces several events on one fd to the fd's interest before and after,
//!   `(old, new)`, and hands that to a [`Backend`](crate::reactor::backend::Backend)
//!   (`epoll`, `poll`, `select`, one file each under `backend/`; the epoll
//!   changelist is a mode of epoll). [`backend::choose`](crate::reactor::backend::choose) picks the first of
//!   [`BackendKind::PREFERENCE`](crate::reactor::BackendKind::PREFERENCE) that the configuration allows and that
//!   initialises.
//! - A loop turn: compute the wait from the timers (`timer.rs`: a min-heap
//!   plus O(1) common-timeout queues), wait in the backend, activate the
//!   events of ready fds and expired timers, then run the most urgent
//!   non-empty priority queue. From `min_priority` on, `max_callbacks` and
//!   `max_dispatch_interval` bound a turn so urgent events are looked at
//!   again soon (the lanes of rot13d stand on this).
//! - No single fd can end a loop: an fd the backend cannot watch (a deferred
//!   registration that fails, an fd select or poll finds closed) is that
//!   fd's problem. Its events are deleted and told once with
//!   [`EventFlags::ERROR`](crate::reactor::EventFlags::ERROR), a WARN is logged, and the loop goes on; only a
//!   failure of the backend itself is an error of `run`.
//! - Callbacks get `&mut EventBase`: the callback is moved out of its slot
//!   while it runs, so it may add, delete or free any event, its own
//!   included.
//! - Time is CLOCK_MONOTONIC_COARSE, read once per turn, unless
//!   PRECISE_TIMER (libevent's rule); with PRECISE_TIMER the waits take
//!   nanoseconds too (epoll_pwait2, ppoll).
//! - Signals arrive through a per-base self-pipe (`signal.rs`) written by an
//!   async-signal-safe handler (`sys::signal`); other threads reach a base
//!   through a [`BaseHandle`](crate::reactor::BaseHandle) (an eventfd and a bounded command queue),
//!   unless NOLOCK.
//! - After `fork()`, [`EventBase::reinit`](crate::reactor::EventBase::reinit) gives the child its own backend
//!   state, signal pipe and eventfd. What the parent registered stays the
//!   parent's: signals caught in the child never reach its pipes, and
//!   handles from before the fork are inert in the child.
//! - [`EvBuffer`](crate::reactor::evbuffer::EvBuffer) and
//!   [`BufferEvent`](crate::reactor::bufferevent::BufferEvent) are the buffered I/O layer
//!   (`bufferevent/`: the socket, `linger.rs` the lingering close,
//!   `callbacks.rs` the user callbacks).
//!
//! The reactor never imports the daemon and logs at debug/trace only, but
//! for the WARN of an fd it gives up. It holds file descriptors as
//! `OwnedFd` (a bufferevent's socket) or borrows them; every system call is
//! in `sys`.

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
pub use bufferevent::{Bev, BevEvent, BevOptions, BevSetup, BufferEvent, Suspend};
pub use config::{BaseFlags, EventConfig};
pub use evbuffer::EvBuffer;
pub use event::{Callback, EventFlags, EventId, Handler};
