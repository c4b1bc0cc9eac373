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

pub mod backend;
mod base;
pub mod bufferevent;
pub mod config;
pub mod evbuffer;
pub mod event;
mod evmap;
mod signal;
mod timer;

pub use backend::{BackendInfo, Features};
pub use base::{BaseError, BaseHandle, EventBase, LoopExit, LoopFlags};
pub use bufferevent::{Bev, BevEvent, BevOptions, BufferEvent, Suspend};
pub use config::{BaseFlags, EventConfig};
pub use evbuffer::EvBuffer;
pub use event::{Callback, EventFlags, EventId, Handler};
