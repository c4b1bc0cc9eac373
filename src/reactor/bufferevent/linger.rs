//! The lingering close of a bufferevent (as nginx's `lingering_close`).
//!
//! [`close_when_flushed`](BufferEvent::close_when_flushed) stops handing
//! input to the owner, writes every pending byte, then closes, never
//! losing a byte on a normal close (freeing a libevent bufferevent drops
//! unsent output). Input is read and thrown away while the output drains;
//! then the write side is shut down and the socket kept until the peer's
//! EOF, the lingering bound ([`DEFAULT_LINGER`]), or a quiet peer has
//! acknowledged every byte. Closing a TCP socket with unread input makes
//! the kernel send RST and drop what it still had to send, so a peer still
//! sending (a pipelined request) would lose the end of its answer.

use super::{BevEvent, BufferEvent, State};
use crate::reactor::base::EventBase;
use crate::reactor::event::EventFlags;
use crate::sys;
use std::io;
use std::time::Duration;

/// How long a close waits, once every byte is written and the write side
/// shut down, for the peer's EOF (reading and discarding what it sends).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);

/// While lingering, how often a quiet peer is checked for having received
/// everything (see [`BufferEvent::close_when_flushed`]).
pub(super) const LINGER_TICK_MS: u32 = 50;

impl<C: 'static> BufferEvent<C> {
    /// Whether a close-when-flushed has written everything and now waits
    /// for the peer's EOF.
    pub fn is_lingering(&self) -> bool {
        self.is(State::LINGERING)
    }

    /// How long [`close_when_flushed`](Self::close_when_flushed) waits for
    /// the peer's EOF once everything is written (default
    /// [`DEFAULT_LINGER`], at most 65 s; zero closes at once, as a plain free
    /// would).
    pub fn set_linger(&mut self, linger: Duration) {
        let s = self.setup_mut();
        *s = s.linger(linger);
    }

    /// Stops handing input to the owner, writes every pending byte, then
    /// frees (and closes) the bufferevent, lingering first: see the module
    /// documentation. The lingering ends at the peer's EOF, at the bound
    /// ([`set_linger`](Self::set_linger)), or as soon as a quiet peer (nothing
    /// read from it for a tick of 50 ms, nothing unread) has acknowledged
    /// every byte: closing then neither resets nor loses anything. The event callback still gets ERROR or TIMEOUT if the
    /// peer goes away or stops reading before the output is written; once
    /// it is, the bufferevent frees itself without another callback.
    pub fn close_when_flushed(&mut self, base: &mut EventBase) {
        if self.is(State::FREED) || self.is(State::CLOSING) {
            return;
        }
        self.state.set(State::CLOSING, true);
        self.enabled |= EventFlags::WRITE;
        // A socket that already failed cannot flush: free now. (Retrying
        // the write from the event callback of its error would report the
        // error again, and that callback recurse without end.)
        if self.error_code() != 0 {
            self.free(base);
            return;
        }
        // Read on, to discard, without the owner's read timeout.
        let _ = self.rearm_read(base);
        if self.pending_output() == 0 {
            self.linger(base);
        } else {
            self.try_write(base);
        }
    }

    /// Milliseconds left of the lingering; 0 once its bound has passed.
    pub(super) fn linger_left_ms(&self, base: &EventBase) -> u32 {
        let until = self.io.as_deref().map_or(0, |io| io.linger_until);
        let left = until.wrapping_sub(base.now().as_millis() as u32);
        if left > u32::MAX / 2 { 0 } else { left }
    }

    /// Registers or removes the read event as [`sync_read`](Self::sync_read)
    /// decides, and gives a registered one the timeout that applies now
    /// (re-adding a pending event only replaces its timeout).
    pub(super) fn rearm_read(&mut self, base: &mut EventBase) -> io::Result<()> {
        let was = self.is(State::READ_ADDED);
        self.sync_read(base)?;
        if was && self.is(State::READ_ADDED) {
            base.add(self.read_ev, self.read_timeout_now(base))?;
        }
        Ok(())
    }

    /// Everything of a close is written: shut the write side (the peer reads
    /// the rest, then EOF) and wait for the peer's EOF, reading and
    /// discarding, for at most the lingering bound.
    pub(super) fn linger(&mut self, base: &mut EventBase) {
        if self.is(State::LINGERING) || self.is(State::FREED) {
            return;
        }
        // Nothing can come any more, or nobody to wait for: close now.
        if self.is(State::READ_EOF) || self.error_code() != 0 || self.setup.linger_ms == 0 || self.is(State::CONNECTING)
        {
            self.free(base);
            return;
        }
        // Not a socket (a pipe), or not connected any more: plain close.
        if sys::shutdown_write(self.raw()).is_err() {
            self.free(base);
            return;
        }
        self.state.set(State::LINGERING, true);
        let until = (base.now().as_millis() as u32).wrapping_add(self.setup.linger_ms as u32);
        self.io_mut().linger_until = until;
        // The read event now times the lingering.
        if self.rearm_read(base).is_err() {
            self.free(base);
        }
    }

    /// The read event of a closing bufferevent: throw input away; EOF (or
    /// the end of the lingering) completes the close.
    pub(super) fn discard_input(&mut self, base: &mut EventBase, what: EventFlags) {
        if what == EventFlags::TIMEOUT {
            // A lingering tick (only the lingering arms a timeout here).
            // Done at the bound (what the peer sends from now on may be
            // answered with RST; everything of ours was written long ago),
            // or once a quiet peer has acknowledged every byte of ours.
            let quiet = !self.take_state(State::LINGER_BUSY)
                && sys::outq(self.raw()).is_ok_and(|n| n == 0)
                && sys::inq(self.raw()).is_ok_and(|n| n == 0);
            if quiet || self.linger_left_ms(base) == 0 {
                self.free(base);
            } else {
                let _ = self.rearm_read(base);
            }
            return;
        }
        self.state.set(State::LINGER_BUSY, true);
        let mut buf = [0u8; 16 * 1024];
        // A few reads per turn: a peer that floods cannot hold the loop.
        for _ in 0..4 {
            let r = if self.ring { super::ring::discard(base, self.raw()) } else { sys::read(self.raw(), &mut buf) };
            match r {
                Ok(0) => {
                    self.state.set(State::READ_EOF, true);
                    if self.is(State::LINGERING) {
                        self.free(base);
                    } else {
                        // The output still drains; nothing left to read.
                        let _ = self.sync_read(base);
                    }
                    return;
                }
                Ok(n) if n == buf.len() => continue,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => {
                    self.set_error(&e);
                    self.state.set(State::READ_EOF, true);
                    let _ = self.sync_read(base);
                    if self.is(State::LINGERING) {
                        self.free(base);
                    } else {
                        // The peer is gone before the output was written.
                        self.report(base, BevEvent::READING | BevEvent::ERROR);
                    }
                    return;
                }
            }
        }
        if self.is(State::LINGERING) {
            // A persistent event's timeout restarts on each wake-up: check
            // the bound here too, so a trickle cannot keep the socket for
            // ever.
            if self.linger_left_ms(base) == 0 {
                self.free(base);
            }
        }
    }
}
