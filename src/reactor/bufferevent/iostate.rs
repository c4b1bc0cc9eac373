//! The part of a bufferevent that only a connection with something to do
//! needs: its two buffers, its write and deferred-callback events, its
//! last error and its lingering deadline ([`IoState`]). A bufferevent
//! takes one when bytes arrive (or output is added, a close or a connect
//! begins) and gives it back once it holds nothing again, so an idle
//! connection costs its fd, its read event and a small struct, not ~250
//! bytes of buffers and event slots (BENCHMARKS.md, memory per idle
//! connection).
//!
//! Given-back parts wait in a small per-thread pool (the reactor is
//! single-threaded: one base per process), with their buffers' small chunk
//! arrays kept: an interactive connection takes and gives back one per
//! request, and that must cost a pop and a push, not a `malloc` and a
//! `free` (it did: the chunk arrays were freed each time a buffer drained).

use crate::reactor::base::EventBase;
use crate::reactor::evbuffer::{DEFAULT_READ_SIZE, EvBuffer};
use crate::reactor::event::EventId;
use std::cell::RefCell;

/// Most parts the per-thread pool keeps: more than the connections that
/// are busy within one loop turn of a typical worker need (each takes and
/// gives back within its own callback), and a bound on what the pool holds
/// (a few hundred bytes each).
pub const IO_POOL_MAX: usize = 64;

/// A pooled buffer keeps its chunk array up to this many entries; a
/// larger one (after a burst of output) goes back to the allocator.
const KEEP_CHUNK_SLOTS: usize = 8;

/// The busy part of a bufferevent.
pub(super) struct IoState {
    /// Bytes read from the socket, not yet consumed.
    pub input: EvBuffer,
    /// Bytes to send.
    pub output: EvBuffer,
    /// The write event, created when the socket first fills up (or a
    /// connect waits); `EventId::INVALID` until then.
    pub write_ev: EventId,
    /// The deferred-callback event (DEFER_CALLBACKS), created at the first
    /// deferral.
    pub defer_ev: EventId,
    /// The last OS error seen (0: none).
    pub last_error: i32,
    /// When the lingering of a close ends (the base's clock in ms, wrapping).
    pub linger_until: u32,
    /// On the io_uring data path: the next send waits for room (the last
    /// one came back short).
    pub send_wait: bool,
    /// On the io_uring data path: bytes of output lent to the send in
    /// flight (`ring.rs`), still pending.
    pub lent: usize,
}

impl IoState {
    const fn new() -> IoState {
        IoState {
            input: EvBuffer::new(),
            output: EvBuffer::new(),
            write_ev: EventId::INVALID,
            defer_ev: EventId::INVALID,
            last_error: 0,
            linger_until: 0,
            send_wait: false,
            lent: 0,
        }
    }

    /// Whether it holds nothing that a fresh one would not: it can go back
    /// to the pool.
    pub fn is_spare(&self) -> bool {
        self.input.is_empty()
            && self.output.is_empty()
            && self.lent == 0
            && self.last_error == 0
            && self.input.read_size() == DEFAULT_READ_SIZE
            && self.output.read_size() == DEFAULT_READ_SIZE
    }

    /// Releases its events (a no-op for those never created: the usual
    /// case, tested inline).
    #[inline(always)]
    pub fn free_events(&mut self, base: &mut EventBase) {
        if self.write_ev != EventId::INVALID || self.defer_ev != EventId::INVALID {
            self.release_events(base);
        }
    }

    #[inline(never)]
    fn release_events(&mut self, base: &mut EventBase) {
        for ev in [&mut self.write_ev, &mut self.defer_ev] {
            if *ev != EventId::INVALID {
                base.free(std::mem::replace(ev, EventId::INVALID));
            }
        }
    }
}

/// An empty buffer for reading a bufferevent that has no busy part.
pub(super) static EMPTY: EvBuffer = EvBuffer::new();

thread_local! {
    // The boxes are what is pooled: a bufferevent holds its part boxed.
    #[allow(clippy::vec_box)]
    static POOL: RefCell<Vec<Box<IoState>>> = const { RefCell::new(Vec::new()) };
}

/// A fresh busy part: from the pool if it has one.
pub(super) fn take() -> Box<IoState> {
    POOL.try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new(IoState::new()))
}

/// Gives a busy part back, emptied (its events must be freed already).
pub(super) fn give(mut io: Box<IoState>) {
    if !io.input.is_empty() || !io.input.chunks_capacity_within(KEEP_CHUNK_SLOTS) {
        io.input = EvBuffer::new();
    }
    if !io.output.is_empty() || !io.output.chunks_capacity_within(KEEP_CHUNK_SLOTS) {
        io.output = EvBuffer::new();
    }
    for b in [&mut io.input, &mut io.output] {
        b.set_read_size(DEFAULT_READ_SIZE);
        b.forget_fd();
    }
    io.write_ev = EventId::INVALID;
    io.defer_ev = EventId::INVALID;
    io.last_error = 0;
    io.linger_until = 0;
    io.send_wait = false;
    io.lent = 0;
    // During thread teardown the pool may be gone: the part is then freed.
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && p.len() < IO_POOL_MAX
        {
            p.push(io);
        }
    });
}

/// Number of busy parts in this thread's pool (tests).
pub fn pooled_io_states() -> usize {
    POOL.try_with(|p| p.try_borrow().map_or(0, |p| p.len())).unwrap_or(0)
}

/// Frees every busy part of this thread's pool.
pub fn trim_io_pool() {
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            *p = Vec::new();
        }
    });
}
