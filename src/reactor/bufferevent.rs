//! `BufferEvent`: a socket with an input and an output [`EvBuffer`], read
//! and write events, watermarks and timeouts (libevent's
//! `bufferevent_sock.c`), plus what libevent lacks:
//!
//! - **close when flushed**: stop handing input to the owner, write every
//!   pending byte, then close. Freeing a libevent bufferevent drops unsent
//!   output; ours never loses a byte on a normal close. The close lingers
//!   (as nginx's `lingering_close`): input is read and thrown away while the
//!   output drains, then the write side is shut down and the socket kept
//!   until the peer's EOF, [`DEFAULT_LINGER`], or a quiet peer has
//!   acknowledged every byte. Closing a TCP socket
//!   with unread input makes the kernel send RST and drop what it still
//!   had to send, so a peer still sending (a pipelined request) would lose
//!   the end of its answer.
//! - **output backpressure**: when pending output passes a high mark,
//!   reading from the same socket pauses until it drains below a low mark.
//! - **write-through**: output added by a callback is written at once; the
//!   write event is registered only when the socket is full. A busy echo
//!   connection costs one read and one write per turn and no `epoll_ctl`.
//!
//! Reading is paused by taking read interest out of the backend, never by
//! ignoring a firing event (libevent issue #891: a level-triggered read
//! event left registered at the watermark spins). Pause reasons form a
//! bitset ([`Suspend`]); reading resumes when it is empty.
//!
//! Ownership: [`Bev`] is an `Rc<RefCell<BufferEvent<C>>>`; the base's two
//! events each hold one clone until [`BufferEvent::free`]. Callbacks are
//! plain `fn` pointers and the per-connection state is the context `C`
//! stored inside, so a connection costs one allocation plus its events.

use super::base::EventBase;
use super::evbuffer::EvBuffer;
use super::event::{EventFlags, EventId, Handler};
use crate::sys;
use std::cell::RefCell;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

flag_set! {
    /// What happened, for the event callback (libevent's `BEV_EVENT_*`).
    pub struct BevEvent(u8) {
        /// While reading.
        const READING = 0x01;
        /// While writing.
        const WRITING = 0x02;
        /// End of file from the peer.
        const EOF = 0x10;
        /// An error; see [`BufferEvent::last_error`].
        const ERROR = 0x20;
        /// A read or write timeout expired.
        const TIMEOUT = 0x40;
        /// An outgoing connect finished.
        const CONNECTED = 0x80;
    }
}

flag_set! {
    /// Why reading is paused (libevent's `bufferevent_suspend_flags`).
    pub struct Suspend(u8) {
        /// Input reached the read high watermark.
        const WATERMARK = 0x01;
        /// Output passed the backpressure high mark.
        const BACKPRESSURE = 0x02;
        /// The owner paused it (e.g. a connection limit or a drain).
        const USER = 0x04;
    }
}

flag_set! {
    /// Options at creation (libevent's `BEV_OPT_*`).
    pub struct BevOptions(u8) {
        /// Close the fd when the bufferevent is freed.
        const CLOSE_ON_FREE = 0x01;
        /// Run the user callbacks from a separate event of the loop instead
        /// of from inside the I/O callback.
        const DEFER_CALLBACKS = 0x04;
    }
}

/// Read or write callback.
pub type DataCb<C> = fn(&mut EventBase, &mut BufferEvent<C>);
/// Event callback.
pub type EventCb<C> = fn(&mut EventBase, &mut BufferEvent<C>, BevEvent);

/// How long a close waits, once every byte is written and the write side
/// shut down, for the peer's EOF (reading and discarding what it sends).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);

/// While lingering, how often a quiet peer is checked for having received
/// everything (see [`BufferEvent::close_when_flushed`]).
const LINGER_TICK_MS: u32 = 50;

/// Called once when the bufferevent is freed (closed), from `free`.
pub type CloseCb<C> = fn(&mut EventBase, &mut BufferEvent<C>);

/// A shared handle to a bufferevent.
pub struct Bev<C: 'static>(Rc<RefCell<BufferEvent<C>>>);

impl<C: 'static> Clone for Bev<C> {
    fn clone(&self) -> Self {
        Bev(self.0.clone())
    }
}

impl<C: 'static> Bev<C> {
    /// Runs `f` on the bufferevent (panics never: a nested borrow, which
    /// the single-threaded loop cannot produce, gives `None`).
    pub fn with<R>(&self, f: impl FnOnce(&mut BufferEvent<C>) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut b| f(&mut b))
    }
}

/// An optional timeout in 8 bytes (nanoseconds; MAX = none), where
/// `Option<Duration>` takes 16: it is stored twice per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timeout(u64);

impl Timeout {
    const NONE: Timeout = Timeout(u64::MAX);
    fn new(d: Option<Duration>) -> Timeout {
        d.map_or(Timeout::NONE, |d| Timeout(d.as_nanos().min(u64::MAX as u128 - 1) as u64))
    }
    fn get(self) -> Option<Duration> {
        (self != Timeout::NONE).then(|| Duration::from_nanos(self.0))
    }
}

const DEFER_READ: u8 = 0x01;
const DEFER_WRITE: u8 = 0x02;

/// A buffered socket.
pub struct BufferEvent<C: 'static> {
    fd: RawFd,
    read_ev: EventId,
    write_ev: EventId,
    defer_ev: EventId,
    /// Bytes read from the socket, not yet consumed.
    pub input: EvBuffer,
    /// Bytes to send.
    pub output: EvBuffer,
    /// The owner's per-connection state.
    pub ctx: C,
    readcb: Option<DataCb<C>>,
    writecb: Option<DataCb<C>>,
    eventcb: Option<EventCb<C>>,
    closecb: Option<CloseCb<C>>,
    enabled: EventFlags,
    suspend: Suspend,
    read_low: u32,
    read_high: u32,
    write_low: u32,
    bp_high: u32,
    bp_low: u32,
    read_timeout: Timeout,
    write_timeout: Timeout,
    options: BevOptions,
    /// State bits (`F_*`), one byte for what would be eight bools.
    flags: u8,
    deferred: u8,
    deferred_events: BevEvent,
    last_error: i32,
    /// When the lingering ends (the base's clock in ms, wrapping), and its
    /// bound in ms (at most a minute).
    linger_until: u32,
    linger_ms: u16,
}

// State bits of a bufferevent.
/// The read event is registered.
const F_READ_ADDED: u8 = 0x01;
/// The write event is registered.
const F_WRITE_ADDED: u8 = 0x02;
/// A close-when-flushed is under way.
const F_CLOSING: u8 = 0x04;
/// Closing, output written, write side shut: waiting for the peer's EOF.
const F_LINGERING: u8 = 0x08;
/// Input was thrown away since the last lingering tick.
const F_LINGER_BUSY: u8 = 0x10;
/// The peer's EOF was read.
const F_READ_EOF: u8 = 0x20;
/// Freed: events released, socket closed.
const F_FREED: u8 = 0x40;
/// An outgoing connect is in progress.
const F_CONNECTING: u8 = 0x80;

impl<C: 'static> BufferEvent<C> {
    #[inline]
    fn flag(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    #[inline]
    fn set_flag(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }
    /// Clears `f`; whether it was set.
    #[inline]
    fn take_flag(&mut self, f: u8) -> bool {
        let was = self.flag(f);
        self.flags &= !f;
        was
    }

    /// Wraps a connected non-blocking socket (`bufferevent_socket_new`).
    /// Neither reading nor writing is enabled yet.
    #[doc(alias = "bufferevent_socket_new")]
    pub fn socket_new(base: &mut EventBase, fd: OwnedFd, options: BevOptions, ctx: C) -> io::Result<Bev<C>> {
        let raw = fd.into_raw_fd();
        let bev = Rc::new(RefCell::new(BufferEvent {
            fd: raw,
            read_ev: EventId::INVALID,
            write_ev: EventId::INVALID,
            defer_ev: EventId::INVALID,
            input: EvBuffer::new(),
            output: EvBuffer::new(),
            ctx,
            readcb: None,
            writecb: None,
            eventcb: None,
            closecb: None,
            enabled: EventFlags::NONE,
            suspend: Suspend::default(),
            read_low: 0,
            read_high: 0,
            write_low: 0,
            bp_high: 0,
            bp_low: 0,
            read_timeout: Timeout::NONE,
            write_timeout: Timeout::NONE,
            options: options | BevOptions::CLOSE_ON_FREE,
            flags: 0,
            deferred: 0,
            deferred_events: BevEvent::default(),
            last_error: 0,
            linger_until: 0,
            linger_ms: DEFAULT_LINGER.as_millis() as u16,
        }));
        // One shared handler for both events: no closure allocation each.
        let handler: Rc<dyn Handler> = bev.clone();
        let read_ev = base.new_event_with(raw, EventFlags::READ | EventFlags::PERSIST, handler.clone());
        let write_ev = base.new_event_with(raw, EventFlags::WRITE | EventFlags::PERSIST, handler.clone());
        let defer_ev = if options.contains(BevOptions::DEFER_CALLBACKS) {
            base.new_event_with(-1, EventFlags::NONE, handler)
        } else {
            EventId::INVALID
        };
        {
            let mut b = bev.borrow_mut();
            b.read_ev = read_ev;
            b.write_ev = write_ev;
            b.defer_ev = defer_ev;
        }
        Ok(Bev(bev))
    }

    /// Starts a non-blocking connect to `addr` (tests, load generators);
    /// the event callback gets CONNECTED or ERROR.
    pub fn connect(base: &mut EventBase, addr: std::net::SocketAddr, ctx: C) -> io::Result<Bev<C>> {
        let domain = socket2::Domain::for_address(addr);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
        let pending = match sock.connect(&addr.into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let bev = BufferEvent::socket_new(base, OwnedFd::from(sock), BevOptions::CLOSE_ON_FREE, ctx)?;
        if let Some(r) = bev.with(|b| {
            b.set_flag(F_CONNECTING, pending);
            if pending {
                b.set_flag(F_WRITE_ADDED, true);
                base.add(b.write_ev, b.write_timeout.get())
            } else {
                Ok(())
            }
        }) {
            r?;
        }
        Ok(bev)
    }

    /// Sets the callbacks (`bufferevent_setcb`).
    #[doc(alias = "bufferevent_setcb")]
    pub fn setcb(&mut self, readcb: Option<DataCb<C>>, writecb: Option<DataCb<C>>, eventcb: Option<EventCb<C>>) {
        self.readcb = readcb;
        self.writecb = writecb;
        self.eventcb = eventcb;
    }

    /// Sets the callback run once when the bufferevent is freed.
    pub fn set_closecb(&mut self, cb: Option<CloseCb<C>>) {
        self.closecb = cb;
    }

    /// Sets the priority of its read and write events.
    #[doc(alias = "bufferevent_priority_set")]
    pub fn set_priority(&mut self, base: &mut EventBase, pri: usize) -> io::Result<()> {
        // Deferred callbacks run at the bufferevent's priority (as in
        // libevent), not at the base's default one. All or nothing: the
        // base refuses to move an active event (say the write event, from
        // the read callback of the same turn); undo what moved before it.
        let ids = [self.read_ev, self.write_ev, self.defer_ev];
        let old = ids.map(|id| base.priority(id));
        for (i, &id) in ids.iter().enumerate() {
            if id == EventId::INVALID {
                continue;
            }
            if let Err(e) = base.set_priority(id, pri) {
                for (&done, &was) in ids[..i].iter().zip(&old[..i]) {
                    if let Some(p) = was {
                        let _ = base.set_priority(done, p);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The priority of its events.
    pub fn priority(&self, base: &EventBase) -> Option<usize> {
        base.priority(self.read_ev)
    }

    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The last OS error seen (with an ERROR event).
    pub fn last_error(&self) -> Option<io::Error> {
        (self.last_error != 0).then(|| io::Error::from_raw_os_error(self.last_error))
    }

    /// What is enabled.
    pub fn enabled(&self) -> EventFlags {
        self.enabled
    }

    /// Why reading is paused.
    pub fn suspended(&self) -> Suspend {
        self.suspend
    }

    /// Whether the read event is registered with the backend (tests).
    pub fn is_reading(&self) -> bool {
        self.flag(F_READ_ADDED)
    }

    /// Whether it was freed.
    pub fn is_freed(&self) -> bool {
        self.flag(F_FREED)
    }

    /// Whether a close-when-flushed is under way.
    pub fn is_closing(&self) -> bool {
        self.flag(F_CLOSING)
    }

    /// Whether a close-when-flushed has written everything and now waits
    /// for the peer's EOF.
    pub fn is_lingering(&self) -> bool {
        self.flag(F_LINGERING)
    }

    /// How long [`close_when_flushed`](Self::close_when_flushed) waits for
    /// the peer's EOF once everything is written (default
    /// [`DEFAULT_LINGER`], at most 65 s; zero closes at once, as a plain free
    /// would).
    pub fn set_linger(&mut self, linger: Duration) {
        self.linger_ms = linger.as_millis().min(u16::MAX as u128) as u16;
    }

    /// Enables READ and/or WRITE (`bufferevent_enable`).
    #[doc(alias = "bufferevent_enable")]
    pub fn enable(&mut self, base: &mut EventBase, what: EventFlags) -> io::Result<()> {
        self.enabled |= what & (EventFlags::READ | EventFlags::WRITE);
        self.sync_read(base)?;
        if what.contains(EventFlags::WRITE) && !self.output.is_empty() {
            self.try_write(base);
        }
        Ok(())
    }

    /// Disables READ and/or WRITE (`bufferevent_disable`).
    #[doc(alias = "bufferevent_disable")]
    pub fn disable(&mut self, base: &mut EventBase, what: EventFlags) -> io::Result<()> {
        self.enabled &= !(what & (EventFlags::READ | EventFlags::WRITE));
        self.sync_read(base)?;
        if what.contains(EventFlags::WRITE) && self.flag(F_WRITE_ADDED) && !self.flag(F_CONNECTING) {
            self.set_flag(F_WRITE_ADDED, false);
            base.del(self.write_ev)?;
        }
        Ok(())
    }

    /// Pauses reading for `why` (`bufferevent_suspend_read_`).
    pub fn suspend_read(&mut self, base: &mut EventBase, why: Suspend) {
        self.suspend.0 |= why.0;
        let _ = self.sync_read(base);
    }

    /// Lifts pause reason `why`; reading resumes when no reason is left.
    pub fn unsuspend_read(&mut self, base: &mut EventBase, why: Suspend) {
        self.suspend.0 &= !why.0;
        let _ = self.sync_read(base);
    }

    /// Registers or removes the read event to match `enabled` and
    /// `suspend`. The only place that touches read interest.
    fn sync_read(&mut self, base: &mut EventBase) -> io::Result<()> {
        // Not while connecting: a refused socket reads as EOF or as the
        // connect's error, which the write side must report. While closing,
        // input is read (and thrown away) until EOF whatever the owner
        // enabled: unread input would turn the close into a reset.
        let want = !self.flag(F_FREED)
            && !self.flag(F_CONNECTING)
            && if self.flag(F_CLOSING) {
                !self.flag(F_READ_EOF)
            } else {
                self.enabled.contains(EventFlags::READ) && self.suspend.is_empty()
            };
        if want && !self.flag(F_READ_ADDED) {
            self.set_flag(F_READ_ADDED, true);
            base.add(self.read_ev, self.read_timeout_now(base))?;
        } else if !want && self.flag(F_READ_ADDED) {
            self.set_flag(F_READ_ADDED, false);
            base.del(self.read_ev)?;
        }
        Ok(())
    }

    /// Sets watermarks (`bufferevent_setwatermark`): READ low = the read
    /// callback waits for this much input; READ high = reading pauses while
    /// input holds this much (0 = unlimited); WRITE low = the write callback
    /// runs when output drains to this.
    #[doc(alias = "bufferevent_setwatermark")]
    pub fn set_watermark(&mut self, base: &mut EventBase, what: EventFlags, low: usize, high: usize) {
        if what.contains(EventFlags::READ) {
            self.read_low = low.min(u32::MAX as usize) as u32;
            self.read_high = high.min(u32::MAX as usize) as u32;
            self.check_read_watermark(base);
        }
        if what.contains(EventFlags::WRITE) {
            self.write_low = low.min(u32::MAX as usize) as u32;
        }
    }

    /// Output backpressure: reading pauses once pending output passes
    /// `high` and resumes when it drains to `low` or below (0 = off).
    pub fn set_backpressure(&mut self, base: &mut EventBase, high: usize, low: usize) {
        self.bp_high = high.min(u32::MAX as usize) as u32;
        self.bp_low = low.min(high).min(u32::MAX as usize) as u32;
        self.check_backpressure(base);
    }

    /// Read and write timeouts (`bufferevent_set_timeouts`). Registering a
    /// duration as a common timeout of the base first makes re-arming O(1).
    #[doc(alias = "bufferevent_set_timeouts")]
    pub fn set_timeouts(&mut self, base: &mut EventBase, read: Option<Duration>, write: Option<Duration>) {
        self.read_timeout = Timeout::new(read);
        self.write_timeout = Timeout::new(write);
        if self.flag(F_READ_ADDED) {
            let _ = base.add(self.read_ev, self.read_timeout_now(base));
        }
        if self.flag(F_WRITE_ADDED) {
            let _ = base.add(self.write_ev, write);
        }
    }

    fn check_read_watermark(&mut self, base: &mut EventBase) {
        if self.read_high > 0 && self.input.len() >= self.read_high as usize {
            self.suspend_read(base, Suspend::WATERMARK);
        } else if self.suspend.intersects(Suspend::WATERMARK) {
            self.unsuspend_read(base, Suspend::WATERMARK);
        }
    }

    fn check_backpressure(&mut self, base: &mut EventBase) {
        if self.bp_high == 0 {
            if self.suspend.intersects(Suspend::BACKPRESSURE) {
                self.unsuspend_read(base, Suspend::BACKPRESSURE);
            }
            return;
        }
        let len = self.output.len();
        if len > self.bp_high as usize {
            if !self.suspend.intersects(Suspend::BACKPRESSURE) {
                self.pause_for_backpressure(base);
            }
        } else if len <= self.bp_low as usize && self.suspend.intersects(Suspend::BACKPRESSURE) {
            tracing::trace!(target: "rot13d::reactor::bufferevent", fd = self.fd, pending = len, low = self.bp_low,
                "reading resumed: output at the low watermark");
            self.unsuspend_read(base, Suspend::BACKPRESSURE);
        }
    }

    /// Output passed the high mark: reading pauses. Out of line, as it runs
    /// once per pause and `check_backpressure` runs on every write.
    #[cold]
    #[inline(never)]
    fn pause_for_backpressure(&mut self, base: &mut EventBase) {
        self.suspend_read(base, Suspend::BACKPRESSURE);
        // Neither buffer grows while paused, so their memory is bounded
        // from here on by what they hold now: the partial line leaves its
        // read-sized block, and the output is packed into full blocks (what
        // reads, cut lines and partial writes left free in them would
        // otherwise stay allocated for as long as the peer does not read:
        // SPEC §1 bounds the memory, not only the bytes).
        self.input.shrink();
        self.output.compact();
        tracing::trace!(target: "rot13d::reactor::bufferevent", fd = self.fd, pending = self.output.len(),
            high = self.bp_high, input = self.input.len(), heap = self.input.heap_size() + self.output.heap_size(),
            "reading paused: output above the high watermark");
    }

    /// Tells the bufferevent that the owner consumed input outside a read
    /// callback, so a watermark pause can lift.
    pub fn input_consumed(&mut self, base: &mut EventBase) {
        self.check_read_watermark(base);
    }

    /// Writes pending output now, as far as the socket takes it; registers
    /// the write event for the rest. Call after adding output outside a
    /// callback of this bufferevent.
    #[doc(alias = "bufferevent_flush")]
    pub fn flush(&mut self, base: &mut EventBase) {
        self.try_write(base);
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
        if self.flag(F_FREED) || self.flag(F_CLOSING) {
            return;
        }
        self.set_flag(F_CLOSING, true);
        self.enabled |= EventFlags::WRITE;
        // A socket that already failed cannot flush: free now. (Retrying
        // the write from the event callback of its error would report the
        // error again, and that callback recurse without end.)
        if self.last_error != 0 {
            self.free(base);
            return;
        }
        // Read on, to discard, without the owner's read timeout.
        let _ = self.rearm_read(base);
        if self.output.is_empty() {
            self.linger(base);
        } else {
            self.try_write(base);
        }
    }

    /// The read event's timeout now: the owner's, none while the output of
    /// a close drains (the write timeout watches that), and what is left of
    /// the lingering.
    fn read_timeout_now(&self, base: &EventBase) -> Option<Duration> {
        if !self.flag(F_CLOSING) {
            return self.read_timeout.get();
        }
        if !self.flag(F_LINGERING) {
            return None;
        }
        Some(Duration::from_millis(self.linger_left_ms(base).min(LINGER_TICK_MS) as u64))
    }

    /// Milliseconds left of the lingering; 0 once its bound has passed.
    fn linger_left_ms(&self, base: &EventBase) -> u32 {
        let left = self.linger_until.wrapping_sub(base.now().as_millis() as u32);
        if left > u32::MAX / 2 { 0 } else { left }
    }

    /// Registers or removes the read event as [`sync_read`](Self::sync_read)
    /// decides, and gives a registered one the timeout that applies now
    /// (re-adding a pending event only replaces its timeout).
    fn rearm_read(&mut self, base: &mut EventBase) -> io::Result<()> {
        let was = self.flag(F_READ_ADDED);
        self.sync_read(base)?;
        if was && self.flag(F_READ_ADDED) {
            base.add(self.read_ev, self.read_timeout_now(base))?;
        }
        Ok(())
    }

    /// Everything of a close is written: shut the write side (the peer reads
    /// the rest, then EOF) and wait for the peer's EOF, reading and
    /// discarding, for at most the lingering bound.
    fn linger(&mut self, base: &mut EventBase) {
        if self.flag(F_LINGERING) || self.flag(F_FREED) {
            return;
        }
        // Nothing can come any more, or nobody to wait for: close now.
        if self.flag(F_READ_EOF) || self.last_error != 0 || self.linger_ms == 0 || self.flag(F_CONNECTING) {
            self.free(base);
            return;
        }
        // Not a socket (a pipe), or not connected any more: plain close.
        if sys::shutdown_write(self.fd).is_err() {
            self.free(base);
            return;
        }
        self.set_flag(F_LINGERING, true);
        self.linger_until = (base.now().as_millis() as u32).wrapping_add(self.linger_ms as u32);
        // The read event now times the lingering.
        if self.rearm_read(base).is_err() {
            self.free(base);
        }
    }

    /// The read event of a closing bufferevent: throw input away; EOF (or
    /// the end of the lingering) completes the close.
    fn discard_input(&mut self, base: &mut EventBase, what: EventFlags) {
        if what == EventFlags::TIMEOUT {
            // A lingering tick (only the lingering arms a timeout here).
            // Done at the bound (what the peer sends from now on may be
            // answered with RST; everything of ours was written long ago),
            // or once a quiet peer has acknowledged every byte of ours.
            let quiet = !self.take_flag(F_LINGER_BUSY)
                && sys::outq(self.fd).is_ok_and(|n| n == 0)
                && sys::inq(self.fd).is_ok_and(|n| n == 0);
            if quiet || self.linger_left_ms(base) == 0 {
                self.free(base);
            } else {
                let _ = self.rearm_read(base);
            }
            return;
        }
        self.set_flag(F_LINGER_BUSY, true);
        let mut buf = [0u8; 16 * 1024];
        // A few reads per turn: a peer that floods cannot hold the loop.
        for _ in 0..4 {
            match sys::read(self.fd, &mut buf) {
                Ok(0) => {
                    self.set_flag(F_READ_EOF, true);
                    if self.flag(F_LINGERING) {
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
                    self.last_error = e.raw_os_error().unwrap_or(libc::EIO);
                    self.set_flag(F_READ_EOF, true);
                    let _ = self.sync_read(base);
                    if self.flag(F_LINGERING) {
                        self.free(base);
                    } else {
                        // The peer is gone before the output was written.
                        self.report(base, BevEvent::READING | BevEvent::ERROR);
                    }
                    return;
                }
            }
        }
        if self.flag(F_LINGERING) {
            // A persistent event's timeout restarts on each wake-up: check
            // the bound here too, so a trickle cannot keep the socket for
            // ever.
            if self.linger_left_ms(base) == 0 {
                self.free(base);
            }
        }
    }

    /// Releases the events and, with CLOSE_ON_FREE, closes the socket.
    /// Unsent output is dropped: use [`close_when_flushed`](Self::close_when_flushed)
    /// to keep it. Safe to call from any callback of this bufferevent.
    #[doc(alias = "bufferevent_free")]
    pub fn free(&mut self, base: &mut EventBase) {
        if self.flag(F_FREED) {
            return;
        }
        self.set_flag(F_FREED, true);
        base.free(self.read_ev);
        base.free(self.write_ev);
        base.free(self.defer_ev);
        self.set_flag(F_READ_ADDED, false);
        self.set_flag(F_WRITE_ADDED, false);
        if self.options.contains(BevOptions::CLOSE_ON_FREE) && self.fd >= 0 {
            base.fd_closed(self.fd);
            sys::close(self.fd);
        }
        self.fd = -1;
        // Hand the buffers' memory back now: the handle may outlive us.
        self.input = EvBuffer::new();
        self.output = EvBuffer::new();
        if let Some(cb) = self.closecb.take() {
            cb(base, self);
        }
    }

    // ----- I/O --------------------------------------------------------------

    fn on_read(&mut self, base: &mut EventBase, what: EventFlags) {
        if self.flag(F_FREED) {
            return;
        }
        if self.flag(F_CLOSING) {
            self.discard_input(base, what);
            return;
        }
        if what == EventFlags::TIMEOUT {
            // libevent disables reading on a read timeout.
            self.enabled &= !EventFlags::READ;
            let _ = self.sync_read(base);
            self.report(base, BevEvent::READING | BevEvent::TIMEOUT);
            return;
        }
        let mut max = usize::MAX;
        if self.read_high > 0 {
            max = (self.read_high as usize).saturating_sub(self.input.len());
            if max == 0 {
                self.suspend_read(base, Suspend::WATERMARK);
                return;
            }
        }
        match self.input.read_from(self.fd, max) {
            Ok(0) => {
                self.set_flag(F_READ_EOF, true);
                self.enabled &= !EventFlags::READ;
                let _ = self.sync_read(base);
                self.report(base, BevEvent::READING | BevEvent::EOF);
            }
            Ok(n) => {
                self.check_read_watermark(base);
                if self.input.len() >= self.read_low as usize {
                    self.call_read(base);
                }
                // A short read drained the socket: the connection may stay
                // quiet now, so what is left of the input (a partial line)
                // moves out of its read-size chunk into an exact allocation.
                if n < max.min(self.input.read_size()) && !self.flag(F_FREED) {
                    self.input.shrink();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.last_error = e.raw_os_error().unwrap_or(libc::EIO);
                // Like libevent: a failed direction is disabled before the
                // report, or an owner that frees later sees the loop spin
                // and the error (then EOF) reported again.
                self.enabled &= !EventFlags::READ;
                let _ = self.sync_read(base);
                self.report(base, BevEvent::READING | BevEvent::ERROR);
            }
        }
    }

    fn on_write(&mut self, base: &mut EventBase, what: EventFlags) {
        if self.flag(F_FREED) {
            return;
        }
        if self.flag(F_CONNECTING) {
            if what == EventFlags::TIMEOUT {
                self.report(base, BevEvent::WRITING | BevEvent::TIMEOUT);
                return;
            }
            self.set_flag(F_CONNECTING, false);
            let err = sys::borrow(self.fd).and_then(|fd| socket2::SockRef::from(&fd).take_error().ok().flatten());
            if let Some(e) = err {
                self.last_error = e.raw_os_error().unwrap_or(libc::EIO);
                // The dead socket polls ready for ever: take it out of the
                // loop (as libevent does) or the loop spins until freed.
                self.enabled = EventFlags::NONE;
                if self.flag(F_WRITE_ADDED) {
                    self.set_flag(F_WRITE_ADDED, false);
                    let _ = base.del(self.write_ev);
                }
                self.report(base, BevEvent::ERROR);
                return;
            }
            let _ = self.sync_read(base);
            if self.output.is_empty() && self.flag(F_WRITE_ADDED) {
                self.set_flag(F_WRITE_ADDED, false);
                let _ = base.del(self.write_ev);
            }
            self.report(base, BevEvent::CONNECTED);
            if !self.flag(F_FREED) && !self.output.is_empty() {
                self.try_write(base);
            }
            return;
        }
        if what == EventFlags::TIMEOUT {
            self.set_flag(F_WRITE_ADDED, false);
            let _ = base.del(self.write_ev);
            self.enabled &= !EventFlags::WRITE;
            self.report(base, BevEvent::WRITING | BevEvent::TIMEOUT);
            return;
        }
        self.try_write(base);
    }

    /// Writes what the socket takes; keeps the write event registered only
    /// while output remains; applies backpressure and the write callback.
    fn try_write(&mut self, base: &mut EventBase) {
        if self.flag(F_FREED) || self.flag(F_CONNECTING) || !self.enabled.contains(EventFlags::WRITE) {
            return;
        }
        let mut progressed = false;
        while !self.output.is_empty() {
            match self.output.write_to(self.fd) {
                Ok(0) => break,
                Ok(_) => progressed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.last_error = e.raw_os_error().unwrap_or(libc::EIO);
                    // Disabled before the report (see on_read).
                    self.enabled &= !EventFlags::WRITE;
                    if self.flag(F_WRITE_ADDED) {
                        self.set_flag(F_WRITE_ADDED, false);
                        let _ = base.del(self.write_ev);
                    }
                    self.report(base, BevEvent::WRITING | BevEvent::ERROR);
                    return;
                }
            }
        }
        if self.output.is_empty() {
            if self.flag(F_WRITE_ADDED) {
                self.set_flag(F_WRITE_ADDED, false);
                let _ = base.del(self.write_ev);
            }
            self.output.shrink();
        } else if !self.flag(F_WRITE_ADDED) || progressed {
            // (Re-)arm: the write timeout counts from the last progress.
            self.set_flag(F_WRITE_ADDED, true);
            let _ = base.add(self.write_ev, self.write_timeout.get());
        }
        self.check_backpressure(base);
        if self.flag(F_CLOSING) && self.output.is_empty() {
            self.linger(base);
            return;
        }
        if progressed && self.output.len() <= self.write_low as usize {
            self.call_write(base);
            self.arm_write(base);
        }
    }

    /// Registers the write event if a callback left output that nothing
    /// will send: the write callback refilling a drained output, the event
    /// callback answering. (Not written at once: a producer refilling from
    /// its write callback would recurse, or starve the loop.)
    fn arm_write(&mut self, base: &mut EventBase) {
        if !self.flag(F_FREED)
            && !self.flag(F_CONNECTING)
            && !self.flag(F_WRITE_ADDED)
            && !self.output.is_empty()
            && self.enabled.contains(EventFlags::WRITE)
        {
            self.set_flag(F_WRITE_ADDED, true);
            let _ = base.add(self.write_ev, self.write_timeout.get());
        }
    }

    // ----- callbacks --------------------------------------------------------

    fn call_read(&mut self, base: &mut EventBase) {
        if self.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred |= DEFER_READ;
            base.active(self.defer_ev, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.readcb {
            cb(base, self);
        }
        self.after_callback(base);
    }

    fn call_write(&mut self, base: &mut EventBase) {
        if self.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred |= DEFER_WRITE;
            base.active(self.defer_ev, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.writecb {
            cb(base, self);
        }
    }

    fn report(&mut self, base: &mut EventBase, ev: BevEvent) {
        if self.options.contains(BevOptions::DEFER_CALLBACKS) {
            self.deferred_events |= ev;
            base.active(self.defer_ev, EventFlags::NONE);
            return;
        }
        if let Some(cb) = self.eventcb {
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
        if d & DEFER_READ != 0
            && !self.flag(F_FREED)
            && let Some(cb) = self.readcb
        {
            cb(base, self);
            self.after_callback(base);
        }
        if d & DEFER_WRITE != 0
            && !self.flag(F_FREED)
            && let Some(cb) = self.writecb
        {
            cb(base, self);
        }
        if ev != BevEvent::default() && !self.flag(F_FREED) {
            if let Some(cb) = self.eventcb {
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
        if self.flag(F_FREED) {
            return;
        }
        if !self.output.is_empty() {
            self.try_write(base);
        }
        if !self.flag(F_FREED) {
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
        } else if id == b.write_ev {
            b.on_write(base, what);
        } else if id == b.defer_ev {
            b.run_deferred(base);
        }
    }
}

impl<C: 'static> Drop for BufferEvent<C> {
    fn drop(&mut self) {
        // Reached only when the owner dropped every handle without free()
        // (the events hold handles until then), so the fd is still ours.
        if !self.flag(F_FREED) && self.options.contains(BevOptions::CLOSE_ON_FREE) && self.fd >= 0 {
            sys::close(self.fd);
        }
    }
}
