//! `BufferEvent`: a socket with an input and an output [`EvBuffer`], read
//! and write events, watermarks and timeouts (libevent's
//! `bufferevent_sock.c`), plus what libevent lacks:
//!
//! - **close when flushed**: stop handing input to the owner, write every
//!   pending byte, then close, lingering until the peer has everything
//!   (`linger.rs`). Freeing a libevent bufferevent drops unsent output;
//!   ours never loses a byte on a normal close.
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
//! State is one byte of flags (`State`); read interest is decided in one
//! place (`sync_read`), write interest in another (`sync_write`).
//!
//! Ownership: [`Bev`] is an `Rc<RefCell<BufferEvent<C>>>`; the base's
//! events each hold one clone until [`BufferEvent::free`]. The socket is an
//! `OwnedFd` held until `free` (which closes it) or until the last handle
//! is dropped. Callbacks are plain `fn` pointers and the per-connection
//! state is the context `C` stored inside.
//!
//! Memory: an idle bufferevent is small. Its callbacks, watermarks and
//! timeouts live in a [`BevSetup`] that bufferevents set up alike share
//! (`setup.rs`); its buffers, write event, deferred-callback event, last
//! error and lingering deadline live in an `IoState` taken from a
//! per-thread pool when there is something to do and given back when the
//! bufferevent holds nothing again (`iostate.rs`). An idle connection is
//! then its socket, its read event (with the idle timeout) and this
//! struct: see BENCHMARKS.md for where each byte goes.

use super::base::EventBase;
use super::evbuffer::EvBuffer;
use super::event::{EventFlags, EventId, Handler};
use crate::sys;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

mod callbacks;
mod iostate;
mod linger;
mod ring;
mod setup;
use iostate::IoState;
pub use iostate::{IO_POOL_MAX, pooled_io_states, trim_io_pool};
pub use linger::DEFAULT_LINGER;
use linger::LINGER_TICK_MS;
pub use setup::BevSetup;

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

/// A buffered socket.
pub struct BufferEvent<C: 'static> {
    /// The socket, until freed.
    fd: Option<OwnedFd>,
    enabled: EventFlags,
    suspend: Suspend,
    state: State,
    deferred: Deferred,
    deferred_events: BevEvent,
    read_ev: EventId,
    /// Reads and writes go through the backend's data path (io_uring
    /// receives and sends, `ring.rs`), chosen at creation.
    ring: bool,
    /// Buffers, write and deferred events, error, lingering: only while
    /// there is something to do (`iostate.rs`).
    io: Option<Box<IoState>>,
    /// Callbacks, watermarks, timeouts, options: shared with bufferevents
    /// set up alike (`setup.rs`).
    setup: Rc<BevSetup<C>>,
    /// The owner's per-connection state.
    pub ctx: C,
}

flag_set! {
    /// What a bufferevent is doing, one byte for what would be eight bools.
    struct State(u8) {
        /// The read event is registered.
        const READ_ADDED = 0x01;
        /// The write event is registered.
        const WRITE_ADDED = 0x02;
        /// A close-when-flushed is under way.
        const CLOSING = 0x04;
        /// Closing, output written, write side shut: waiting for the peer's EOF.
        const LINGERING = 0x08;
        /// Input was thrown away since the last lingering tick.
        const LINGER_BUSY = 0x10;
        /// The peer's EOF was read.
        const READ_EOF = 0x20;
        /// Freed: events released, socket closed.
        const FREED = 0x40;
        /// An outgoing connect is in progress.
        const CONNECTING = 0x80;
    }
}

flag_set! {
    /// User callbacks waiting for the deferred-callback event.
    struct Deferred(u8) {
        /// The read callback.
        const READ = 0x01;
        /// The write callback.
        const WRITE = 0x02;
    }
}

impl<C: 'static> BufferEvent<C> {
    #[inline]
    fn is(&self, f: State) -> bool {
        self.state.contains(f)
    }
    /// Clears `f`; whether it was set.
    #[inline]
    fn take_state(&mut self, f: State) -> bool {
        let was = self.is(f);
        self.state.remove(f);
        was
    }
    /// The socket's number; -1 once closed.
    #[inline]
    fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// Wraps a connected non-blocking socket (`bufferevent_socket_new`).
    /// Neither reading nor writing is enabled yet.
    #[doc(alias = "bufferevent_socket_new")]
    pub fn socket_new(base: &mut EventBase, fd: OwnedFd, options: BevOptions, ctx: C) -> io::Result<Bev<C>> {
        BufferEvent::socket_with(base, fd, &Rc::new(BevSetup::new(options)), ctx)
    }

    /// Like [`socket_new`](Self::socket_new), set up as `setup` says, which
    /// it shares with every bufferevent made from it (one allocation for a
    /// server's connections). Reading and writing are not enabled yet.
    pub fn socket_with(base: &mut EventBase, fd: OwnedFd, setup: &Rc<BevSetup<C>>, ctx: C) -> io::Result<Bev<C>> {
        BufferEvent::make(base, fd, setup, ctx, true)
    }

    /// A bufferevent on `fd`; on the base's data path if it has one, the
    /// fd is a stream socket and `data_path` allows (not for a connect
    /// under way, which waits for writability).
    fn make(base: &mut EventBase, fd: OwnedFd, setup: &Rc<BevSetup<C>>, ctx: C, data_path: bool) -> io::Result<Bev<C>> {
        let raw = fd.as_raw_fd();
        let ring = data_path
            && base.data_path().is_some()
            && sys::is_stream_socket(fd.as_fd())
            && base.data_path().is_some_and(|d| d.attach(raw));
        let bev = Rc::new(RefCell::new(BufferEvent {
            fd: Some(fd),
            enabled: EventFlags::NONE,
            suspend: Suspend::default(),
            state: State::empty(),
            deferred: Deferred::empty(),
            deferred_events: BevEvent::default(),
            read_ev: EventId::INVALID,
            ring,
            io: None,
            setup: setup.clone(),
            ctx,
        }));
        // The read event holds the one shared handler; the write and
        // deferred-callback events, made when first needed, share it
        // (`EventBase::new_event_sharing`): no closure allocation each.
        let handler: Rc<dyn Handler> = bev.clone();
        let read_ev = base.new_event_with(raw, EventFlags::READ | EventFlags::PERSIST, handler);
        bev.borrow_mut().read_ev = read_ev;
        Ok(Bev(bev))
    }

    /// The busy part, taken from the pool if absent.
    #[inline]
    fn io_mut(&mut self) -> &mut IoState {
        self.io.get_or_insert_with(iostate::take)
    }

    /// The write event, made (sharing the read event's handler, at its
    /// priority) if it does not exist yet.
    fn write_ev(&mut self, base: &mut EventBase) -> io::Result<EventId> {
        let (raw, read_ev) = (self.raw(), self.read_ev);
        let io = self.io_mut();
        if io.write_ev == EventId::INVALID {
            io.write_ev = base.new_event_sharing(read_ev, raw, EventFlags::WRITE | EventFlags::PERSIST)?;
        }
        Ok(io.write_ev)
    }

    /// The deferred-callback event, made like the write event.
    fn defer_ev(&mut self, base: &mut EventBase) -> EventId {
        let read_ev = self.read_ev;
        let io = self.io_mut();
        if io.defer_ev == EventId::INVALID {
            io.defer_ev = base.new_event_sharing(read_ev, -1, EventFlags::NONE).unwrap_or(EventId::INVALID);
        }
        io.defer_ev
    }

    /// Gives the busy part back once it holds nothing that a fresh one
    /// would not: no byte either way, no write waiting, no deferred
    /// callback, no error, no close or connect under way. Called at the
    /// end of each of its events' callbacks and after `flush`.
    fn settle(&mut self, base: &mut EventBase) {
        let idle = self.io.as_deref().is_some_and(IoState::is_spare)
            && !self.state.intersects(State::WRITE_ADDED | State::CLOSING | State::CONNECTING | State::FREED)
            && self.deferred.is_empty()
            && self.deferred_events == BevEvent::default();
        if idle && let Some(mut io) = self.io.take() {
            io.free_events(base);
            iostate::give(io);
        }
    }

    /// The input (an empty buffer while the bufferevent holds none).
    pub fn input(&self) -> &EvBuffer {
        self.io.as_deref().map_or(&iostate::EMPTY, |io| &io.input)
    }

    /// The output (an empty buffer while the bufferevent holds none).
    pub fn output(&self) -> &EvBuffer {
        self.io.as_deref().map_or(&iostate::EMPTY, |io| &io.output)
    }

    /// The input, to consume it.
    pub fn input_mut(&mut self) -> &mut EvBuffer {
        &mut self.io_mut().input
    }

    /// The output, to add to it (written at once from a callback of this
    /// bufferevent; call [`flush`](Self::flush) otherwise).
    pub fn output_mut(&mut self) -> &mut EvBuffer {
        &mut self.io_mut().output
    }

    /// Input, output and context at once (a callback that moves bytes from
    /// one buffer to the other and keeps state).
    pub fn parts_mut(&mut self) -> (&mut EvBuffer, &mut EvBuffer, &mut C) {
        let io = self.io.get_or_insert_with(iostate::take);
        (&mut io.input, &mut io.output, &mut self.ctx)
    }

    /// Output the socket has not taken yet: what [`output`](Self::output)
    /// holds and, on the io_uring data path, what a send in flight has.
    #[inline]
    pub fn pending_output(&self) -> usize {
        match self.io.as_deref() {
            Some(io) => io.output.len() + io.lent,
            None => 0,
        }
    }

    /// Whether its reads and writes go through the io_uring data path.
    pub fn is_on_data_path(&self) -> bool {
        self.ring
    }

    /// Whether it holds a busy part now (tests, memory accounting).
    pub fn is_busy(&self) -> bool {
        self.io.is_some()
    }

    /// The setup it shares (callbacks, watermarks, timeouts, options).
    pub fn setup(&self) -> &Rc<BevSetup<C>> {
        &self.setup
    }

    /// The setup, to change it for this bufferevent alone.
    fn setup_mut(&mut self) -> &mut BevSetup<C> {
        Rc::make_mut(&mut self.setup)
    }

    fn set_error(&mut self, e: &io::Error) {
        self.io_mut().last_error = e.raw_os_error().unwrap_or(libc::EIO);
    }

    fn error_code(&self) -> i32 {
        self.io.as_deref().map_or(0, |io| io.last_error)
    }

    /// Starts a non-blocking connect to `addr` (tests, load generators);
    /// the event callback gets CONNECTED or ERROR.
    pub fn connect(base: &mut EventBase, addr: std::net::SocketAddr, ctx: C) -> io::Result<Bev<C>> {
        let (fd, pending) = sys::connect_nonblocking(addr)?;
        // A connect waits for writability: the readiness path.
        let bev = BufferEvent::make(base, fd, &Rc::new(BevSetup::new(BevOptions::CLOSE_ON_FREE)), ctx, false)?;
        if pending && let Some(r) = bev.with(|b| b.start_connect_wait(base)) {
            r?;
        }
        Ok(bev)
    }

    /// A connect is under way: the write event waits for its end, timed by
    /// the write timeout. The wait is the write event's only job until then
    /// ([`sync_write`](Self::sync_write) leaves it alone).
    fn start_connect_wait(&mut self, base: &mut EventBase) -> io::Result<()> {
        self.state.insert(State::CONNECTING);
        self.set_write(base, true, false)
    }

    /// Sets the callbacks (`bufferevent_setcb`).
    #[doc(alias = "bufferevent_setcb")]
    pub fn setcb(&mut self, readcb: Option<DataCb<C>>, writecb: Option<DataCb<C>>, eventcb: Option<EventCb<C>>) {
        let s = self.setup_mut();
        *s = s.callbacks(readcb, writecb, eventcb);
    }

    /// Sets the callback run once when the bufferevent is freed.
    pub fn set_closecb(&mut self, cb: Option<CloseCb<C>>) {
        let s = self.setup_mut();
        *s = s.close_callback(cb);
    }

    /// Sets the priority of its read and write events.
    #[doc(alias = "bufferevent_priority_set")]
    pub fn set_priority(&mut self, base: &mut EventBase, pri: usize) -> io::Result<()> {
        // Deferred callbacks run at the bufferevent's priority (as in
        // libevent), not at the base's default one. All or nothing: the
        // base refuses to move an active event (say the write event, from
        // the read callback of the same turn); undo what moved before it.
        let (w, d) = self.io.as_deref().map_or((EventId::INVALID, EventId::INVALID), |io| (io.write_ev, io.defer_ev));
        let ids = [self.read_ev, w, d];
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

    /// The socket's number (-1 once freed), for logs.
    pub fn fd(&self) -> RawFd {
        self.raw()
    }

    /// The socket, until freed.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// The last OS error seen (with an ERROR event).
    pub fn last_error(&self) -> Option<io::Error> {
        let e = self.error_code();
        (e != 0).then(|| io::Error::from_raw_os_error(e))
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
        self.is(State::READ_ADDED)
    }

    /// Whether it was freed.
    pub fn is_freed(&self) -> bool {
        self.is(State::FREED)
    }

    /// Whether a close-when-flushed is under way.
    pub fn is_closing(&self) -> bool {
        self.is(State::CLOSING)
    }

    /// Enables READ and/or WRITE (`bufferevent_enable`).
    #[doc(alias = "bufferevent_enable")]
    pub fn enable(&mut self, base: &mut EventBase, what: EventFlags) -> io::Result<()> {
        self.enabled |= what & (EventFlags::READ | EventFlags::WRITE);
        self.sync_read(base)?;
        if what.contains(EventFlags::WRITE) {
            if self.is(State::CONNECTING) && !self.is(State::WRITE_ADDED) && !self.is(State::FREED) {
                // The connect's wait timed out and the owner keeps waiting.
                self.set_write(base, true, false)?;
            } else if self.pending_output() > 0 {
                self.try_write(base);
            }
        }
        self.settle(base);
        Ok(())
    }

    /// Disables READ and/or WRITE (`bufferevent_disable`).
    #[doc(alias = "bufferevent_disable")]
    pub fn disable(&mut self, base: &mut EventBase, what: EventFlags) -> io::Result<()> {
        self.enabled &= !(what & (EventFlags::READ | EventFlags::WRITE));
        self.sync_read(base)?;
        self.sync_write(base, false)
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
        let want = !self.is(State::FREED)
            && !self.is(State::CONNECTING)
            && if self.is(State::CLOSING) {
                !self.is(State::READ_EOF)
            } else {
                self.enabled.contains(EventFlags::READ) && self.suspend.is_empty()
            };
        if want && !self.is(State::READ_ADDED) {
            self.state.insert(State::READ_ADDED);
            base.add(self.read_ev, self.read_timeout_now(base))?;
        } else if !want && self.is(State::READ_ADDED) {
            self.state.remove(State::READ_ADDED);
            base.del(self.read_ev)?;
            if self.ring {
                // A non-blocking send's completion came with the read
                // event: the write event takes it from now on.
                self.sync_write(base, false)?;
            }
        }
        Ok(())
    }

    /// Registers or removes the write event to match the output: wanted
    /// while writing is enabled and output is left that the socket did not
    /// take (write-through: output is written at once, the event only waits
    /// for room). `restart` re-arms a registered event so that its timeout
    /// counts from now (progress was made). With `sync_read`, the only place
    /// that decides write interest; during a connect the event waits for
    /// the connect instead, and this leaves it alone.
    fn sync_write(&mut self, base: &mut EventBase, restart: bool) -> io::Result<()> {
        if self.is(State::CONNECTING) {
            return Ok(());
        }
        let want = !self.is(State::FREED)
            && self.enabled.contains(EventFlags::WRITE)
            && self.pending_output() > 0
            && !(self.ring && self.is(State::READ_ADDED) && self.io.as_deref().is_some_and(ring::inline_only));
        self.set_write(base, want, restart)
    }

    /// Adds (or with `restart` re-adds) or deletes the write event. Inline
    /// for its usual outcome, nothing to do (output written whole, no
    /// write event registered): one test, not a call.
    #[inline(always)]
    fn set_write(&mut self, base: &mut EventBase, want: bool, restart: bool) -> io::Result<()> {
        if want == self.is(State::WRITE_ADDED) && !(want && restart) {
            return Ok(());
        }
        self.change_write(base, want, restart)
    }

    #[inline(never)]
    fn change_write(&mut self, base: &mut EventBase, want: bool, restart: bool) -> io::Result<()> {
        if want && (restart || !self.is(State::WRITE_ADDED)) {
            let ev = self.write_ev(base)?;
            self.state.insert(State::WRITE_ADDED);
            base.add(ev, self.setup.write_timeout.get())?;
        } else if !want && self.is(State::WRITE_ADDED) {
            self.state.remove(State::WRITE_ADDED);
            if let Some(io) = self.io.as_deref() {
                base.del(io.write_ev)?;
            }
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
            let s = self.setup_mut();
            *s = s.read_watermarks(low, high);
            self.check_read_watermark(base);
        }
        if what.contains(EventFlags::WRITE) {
            let s = self.setup_mut();
            *s = s.write_low_watermark(low);
        }
    }

    /// Output backpressure: reading pauses once pending output passes
    /// `high` and resumes when it drains to `low` or below (0 = off).
    pub fn set_backpressure(&mut self, base: &mut EventBase, high: usize, low: usize) {
        let s = self.setup_mut();
        *s = s.backpressure(high, low);
        self.check_backpressure(base);
    }

    /// Read and write timeouts (`bufferevent_set_timeouts`). Registering a
    /// duration as a common timeout of the base first makes re-arming O(1).
    #[doc(alias = "bufferevent_set_timeouts")]
    pub fn set_timeouts(&mut self, base: &mut EventBase, read: Option<Duration>, write: Option<Duration>) {
        let s = self.setup_mut();
        *s = s.timeouts(read, write);
        self.rearm_timeouts(base);
    }

    /// Shares `setup` from now on (a phase with a setup of its own is
    /// over): what a private copy made by a setter held is let go, and the
    /// timeouts and read suspensions follow the new setup at once.
    pub fn share_setup(&mut self, base: &mut EventBase, setup: &Rc<BevSetup<C>>) {
        self.setup = setup.clone();
        self.rearm_timeouts(base);
        self.check_read_watermark(base);
        self.check_backpressure(base);
    }

    /// Re-arms the added events with the setup's timeouts.
    fn rearm_timeouts(&mut self, base: &mut EventBase) {
        if self.is(State::READ_ADDED) {
            let _ = base.add(self.read_ev, self.read_timeout_now(base));
        }
        if self.is(State::WRITE_ADDED)
            && let Some(io) = self.io.as_deref()
        {
            let _ = base.add(io.write_ev, self.setup.write_timeout.get());
        }
    }

    /// Inline for the usual case, no read high watermark and no pause for
    /// one (run twice per read).
    #[inline(always)]
    fn check_read_watermark(&mut self, base: &mut EventBase) {
        if self.setup.read_high == 0 && !self.suspend.intersects(Suspend::WATERMARK) {
            return;
        }
        self.apply_read_watermark(base);
    }

    #[inline(never)]
    fn apply_read_watermark(&mut self, base: &mut EventBase) {
        let high = self.setup.read_high;
        if high > 0 && self.input().len() >= high as usize {
            self.suspend_read(base, Suspend::WATERMARK);
        } else if self.suspend.intersects(Suspend::WATERMARK) {
            self.unsuspend_read(base, Suspend::WATERMARK);
        }
    }

    /// Inline for the usual case, output below the high mark and no pause
    /// to lift (run twice per read).
    #[inline(always)]
    fn check_backpressure(&mut self, base: &mut EventBase) {
        let (high, low) = (self.setup.bp_high as usize, self.setup.bp_low as usize);
        let paused = self.suspend.intersects(Suspend::BACKPRESSURE);
        // Pending: on the io_uring data path, with what a send has lent.
        let len = self.pending_output();
        if if paused { high != 0 && len > low } else { high == 0 || len <= high } {
            return;
        }
        self.apply_backpressure(base);
    }

    #[inline(never)]
    fn apply_backpressure(&mut self, base: &mut EventBase) {
        let (high, low) = (self.setup.bp_high, self.setup.bp_low);
        if high == 0 {
            if self.suspend.intersects(Suspend::BACKPRESSURE) {
                self.unsuspend_read(base, Suspend::BACKPRESSURE);
            }
            return;
        }
        let len = self.pending_output();
        if len > high as usize {
            if !self.suspend.intersects(Suspend::BACKPRESSURE) {
                self.pause_for_backpressure(base);
            }
        } else if len <= low as usize && self.suspend.intersects(Suspend::BACKPRESSURE) {
            tracing::trace!(target: "rot13d::reactor::bufferevent", fd = self.raw(), pending = len, low,
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
        let (fd, high) = (self.raw(), self.setup.bp_high);
        let io = self.io_mut();
        io.input.shrink();
        io.output.compact();
        tracing::trace!(target: "rot13d::reactor::bufferevent", fd, pending = io.output.len(), high,
            input = io.input.len(), heap = io.input.heap_size() + io.output.heap_size(),
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
        self.settle(base);
    }

    /// The read event's timeout now: the owner's, none while the output of
    /// a close drains (the write timeout watches that), and what is left of
    /// the lingering.
    fn read_timeout_now(&self, base: &EventBase) -> Option<Duration> {
        if !self.is(State::CLOSING) {
            return self.setup.read_timeout.get();
        }
        if !self.is(State::LINGERING) {
            return None;
        }
        Some(Duration::from_millis(self.linger_left_ms(base).min(LINGER_TICK_MS) as u64))
    }

    /// Releases the events and, with CLOSE_ON_FREE, closes the socket.
    /// Unsent output is dropped: use [`close_when_flushed`](Self::close_when_flushed)
    /// to keep it. Safe to call from any callback of this bufferevent.
    #[doc(alias = "bufferevent_free")]
    pub fn free(&mut self, base: &mut EventBase) {
        if self.is(State::FREED) {
            return;
        }
        self.state.insert(State::FREED);
        base.free(self.read_ev);
        // The error stays readable from the close callback.
        let error = self.error_code();
        if let Some(mut io) = self.io.take() {
            io.free_events(base);
            // Hand the buffers' memory back now: the handle may outlive us.
            iostate::give(io);
        }
        self.state.remove(State::READ_ADDED | State::WRITE_ADDED);
        if let Some(fd) = self.fd.take() {
            base.fd_closed(fd.as_raw_fd());
            // Closed here (CLOSE_ON_FREE: the bufferevent was given the
            // socket as an OwnedFd, so it is ours to close).
            drop(fd);
        }
        // Called once: a second `free` returns at FREED above.
        if let Some(cb) = self.setup.closecb {
            if error != 0 {
                self.io_mut().last_error = error;
            }
            cb(base, self);
            if let Some(io) = self.io.take() {
                iostate::give(io);
            }
        }
    }

    // ----- I/O --------------------------------------------------------------

    fn on_read(&mut self, base: &mut EventBase, what: EventFlags) {
        if self.is(State::FREED) {
            return;
        }
        if what.contains(EventFlags::ERROR) {
            // The backend gave the socket up; the base deleted the event.
            self.state.remove(State::READ_ADDED);
            self.fail(base, BevEvent::READING);
            return;
        }
        if self.ring && self.io.as_deref().is_some_and(|io| io.lent > 0) {
            // On the data path a non-blocking send's completion comes with
            // the read event (no write event for it: `ring::inline_only`).
            self.try_write(base);
            if self.is(State::FREED) {
                return;
            }
        }
        if self.is(State::CLOSING) {
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
        let high = self.setup.read_high;
        if high > 0 {
            max = (high as usize).saturating_sub(self.input().len());
            if max == 0 {
                self.suspend_read(base, Suspend::WATERMARK);
                return;
            }
        }
        let raw = self.raw();
        let r = if self.ring {
            let io = self.io.get_or_insert_with(iostate::take);
            // One read's worth per turn, as a read(2) takes: the ring may
            // hold more (the rest waits in its mailbox), and a callback
            // must see backpressure before the next.
            let max = max.min(io.input.read_size());
            ring::recv(base, raw, &mut io.input, max)
        } else {
            self.io_mut().input.read_from(raw, max)
        };
        match r {
            Ok(0) => {
                self.state.set(State::READ_EOF, true);
                self.enabled &= !EventFlags::READ;
                let _ = self.sync_read(base);
                self.report(base, BevEvent::READING | BevEvent::EOF);
            }
            Ok(n) => {
                self.check_read_watermark(base);
                if self.input().len() >= self.setup.read_low as usize {
                    self.call_read(base);
                }
                // A short read drained the socket: the connection may stay
                // quiet now, so what is left of the input (a partial line)
                // moves out of its read-size chunk into an exact allocation.
                // (An empty input goes back to the pool with its part.)
                if let Some(io) = self.io.as_deref_mut()
                    && n < max.min(io.input.read_size())
                    && !io.input.is_empty()
                    && !self.state.contains(State::FREED)
                {
                    io.input.shrink();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.set_error(&e);
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
        if self.is(State::FREED) {
            return;
        }
        if what.contains(EventFlags::ERROR) {
            // The backend gave the socket up; the base deleted the event.
            self.state.remove(State::WRITE_ADDED | State::CONNECTING);
            self.fail(base, BevEvent::WRITING);
            return;
        }
        if self.is(State::CONNECTING) {
            self.on_connect(base, what);
            return;
        }
        if what == EventFlags::TIMEOUT {
            self.enabled &= !EventFlags::WRITE;
            let _ = self.sync_write(base, false);
            self.report(base, BevEvent::WRITING | BevEvent::TIMEOUT);
            return;
        }
        self.try_write(base);
    }

    /// The write event of a connect under way: it ended, or timed out.
    fn on_connect(&mut self, base: &mut EventBase, what: EventFlags) {
        if what == EventFlags::TIMEOUT {
            // Reported once: the wait stops (as writing is disabled on a
            // write timeout). Enabling WRITE again waits on.
            self.enabled &= !EventFlags::WRITE;
            let _ = self.set_write(base, false, false);
            self.report(base, BevEvent::WRITING | BevEvent::TIMEOUT);
            return;
        }
        self.state.remove(State::CONNECTING);
        let err = self.as_fd().and_then(|fd| sys::take_socket_error(fd).ok().flatten());
        if let Some(e) = err {
            self.set_error(&e);
            // The dead socket polls ready for ever: take it out of the
            // loop (as libevent does) or the loop spins until freed.
            self.enabled = EventFlags::NONE;
            let _ = self.sync_write(base, false);
            self.report(base, BevEvent::ERROR);
            return;
        }
        let _ = self.sync_read(base);
        if self.output().is_empty() {
            let _ = self.sync_write(base, false);
        }
        self.report(base, BevEvent::CONNECTED);
        if !self.is(State::FREED) && !self.output().is_empty() {
            self.try_write(base);
        }
    }

    /// The backend could not watch the socket (the base told the event with
    /// ERROR and deleted it): the socket is unusable, so both directions
    /// stop and the owner hears of an error (or, with nobody listening, the
    /// bufferevent frees itself).
    fn fail(&mut self, base: &mut EventBase, dir: BevEvent) {
        let e = base.take_fd_error(self.raw()).and_then(|e| e.raw_os_error());
        self.io_mut().last_error = e.unwrap_or(libc::EIO);
        self.enabled = EventFlags::NONE;
        self.state.insert(State::READ_EOF);
        let _ = self.sync_read(base);
        let _ = self.sync_write(base, false);
        if self.is(State::CLOSING) {
            self.free(base);
        } else {
            self.report(base, dir | BevEvent::ERROR);
        }
    }

    /// Writes what the socket takes; keeps the write event registered only
    /// while output remains; applies backpressure and the write callback.
    fn try_write(&mut self, base: &mut EventBase) {
        if self.is(State::FREED) || self.is(State::CONNECTING) || !self.enabled.contains(EventFlags::WRITE) {
            return;
        }
        let raw = self.raw();
        let Some(io) = self.io.as_deref_mut() else { return };
        let mut progressed = false;
        let mut failed = None;
        if self.ring {
            (progressed, failed) = ring::send(base, raw, io);
        } else {
            while !io.output.is_empty() {
                match io.output.write_to(raw) {
                    Ok(0) => break,
                    Ok(_) => progressed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failed {
            self.set_error(&e);
            // Disabled before the report (see on_read).
            self.enabled &= !EventFlags::WRITE;
            let _ = self.sync_write(base, false);
            self.report(base, BevEvent::WRITING | BevEvent::ERROR);
            return;
        }
        // Registered only while output is left; re-armed on progress, so
        // that the write timeout counts from the last progress.
        let _ = self.sync_write(base, progressed);
        // Drained: a part that keeps input (a partial line) compacts its
        // output; an empty one goes back to the pool whole (`settle`).
        if let Some(io) = self.io.as_deref_mut()
            && io.output.is_empty()
            && !io.input.is_empty()
        {
            io.output.shrink();
        }
        self.check_backpressure(base);
        if self.is(State::CLOSING) && self.pending_output() == 0 {
            self.linger(base);
            return;
        }
        if progressed && self.pending_output() <= self.setup.write_low as usize {
            self.call_write(base);
            self.arm_write(base);
        }
    }

    /// Registers the write event if a callback left output that nothing
    /// will send: the write callback refilling a drained output, the event
    /// callback answering. (Not written at once: a producer refilling from
    /// its write callback would recurse, or starve the loop.)
    fn arm_write(&mut self, base: &mut EventBase) {
        if self.ring {
            // On the data path the write event waits for a send, not for
            // room: start one (it completes in a later turn, so this
            // cannot recurse into the write callback).
            self.try_write(base);
            return;
        }
        let _ = self.sync_write(base, false);
    }
}
