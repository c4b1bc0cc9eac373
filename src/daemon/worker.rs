//! A serving process: accepts on the inherited listeners, runs connections,
//! drains gracefully.
//!
//! After `fork()` the worker calls `reinit()` on the base it inherited from
//! the master, frees the master's events, installs its own signal events
//! and serves until its connections are gone after a drain (`on_done`).
//! With `workers = 0` the master runs the same [`Shared`] on its own base,
//! as its in-process worker.

use super::config::never_if_zero;
use super::connection::{self, Addr, Conn, ConnBev, End, Meta};
use super::listener::ListenFd;
use super::metrics::{Counter, Slot};
use super::proxy;
use super::settings::Settings;
use crate::protocol::Framer;
use crate::reactor::{Bev, BevOptions, BevSetup, BufferEvent, EventBase, EventFlags, EventId};
use crate::sys;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Priority lanes: control (listeners, signals, admin) runs first.
pub const LANE_CONTROL: usize = 0;
/// Interactive connections.
pub const LANE_INTERACTIVE: usize = 1;
/// Bulk connections.
pub const LANE_BULK: usize = 2;
/// Number of priorities a serving base uses.
pub const LANES: usize = 3;

/// A retiring worker closes a connection once it has been quiet this long.
pub const RETIRE_QUIET: Duration = Duration::from_secs(1);

/// How many connections one listener wake-up accepts at most, so one busy
/// listener cannot starve the connections already open.
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE.
const FD_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "fd table full" warning per this interval.
const FD_WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections closed since the last trim before the worker returns free
/// memory to the kernel (see [`should_trim`]).
const TRIM_RELEASED: usize = 1024;
/// A peak below this is never worth a trim when the worker empties.
const TRIM_EMPTIED: usize = 64;

/// Whether the worker gives free memory back to the kernel now, with
/// `open` connections left of `peak` since the last time: when at least
/// [`TRIM_RELEASED`] have closed and at most half remain, or when none
/// remain after at least [`TRIM_EMPTIED`]. A burst of connections that ends
/// (10,000 idle clients closed at their timeout) then leaves the worker's
/// resident memory where it was before, at the cost of one `malloc_trim`
/// per halving.
pub fn should_trim(peak: usize, open: usize) -> bool {
    (peak >= open + TRIM_RELEASED && open <= peak / 2) || (open == 0 && peak >= TRIM_EMPTIED)
}

const PAUSE_LIMIT: u8 = 0x01;
const PAUSE_FDS: u8 = 0x02;
const PAUSE_DRAIN: u8 = 0x04;

/// What a serving process needs to know (from the settings of its
/// generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerParams {
    /// Longest line before it is cut.
    pub max_line: usize,
    /// Idle timeout (None = never).
    pub idle_timeout: Option<Duration>,
    /// Write timeout (None = never).
    pub write_timeout: Option<Duration>,
    /// Pending output above which reading pauses.
    pub write_high_watermark: usize,
    /// Pending output at or below which reading resumes.
    pub write_low_watermark: usize,
    /// Connections per process.
    pub max_connections: usize,
    /// How long a drain waits for busy connections.
    pub shutdown_grace: Duration,
    /// How connections are classed into lanes.
    pub lanes: LaneParams,
    /// The PROXY protocol header connections must begin with.
    pub proxy: proxy::Mode,
    /// Log an access record per closed connection.
    pub access: bool,
}

/// When a connection changes lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneParams {
    /// Whether a lane is a priority (false: classes only, one priority).
    pub enabled: bool,
    /// Bytes within one window that make a connection bulk.
    pub bulk_after_bytes: u32,
    /// The window, ms.
    pub window_ms: u32,
    /// Time below the threshold before a bulk connection is interactive again, ms.
    pub quiet_ms: u32,
}

impl WorkerParams {
    /// The parameters of a generation with settings `s`.
    pub fn new(s: &Settings) -> WorkerParams {
        let (server, lanes) = (&s.config.server, &s.config.lanes);
        WorkerParams {
            max_line: server.max_line,
            idle_timeout: never_if_zero(server.idle_timeout),
            write_timeout: never_if_zero(server.write_timeout),
            write_high_watermark: server.write_high_watermark,
            write_low_watermark: server.write_low_watermark,
            max_connections: s.max_connections,
            shutdown_grace: server.shutdown_grace,
            lanes: LaneParams {
                enabled: lanes.enabled,
                bulk_after_bytes: lanes.bulk_after_bytes.min(u32::MAX as u64) as u32,
                window_ms: lanes.bulk_window.as_millis().clamp(1, u32::MAX as u128) as u32,
                quiet_ms: lanes.quiet.as_millis().min(u32::MAX as u128) as u32,
            },
            proxy: server.proxy_protocol,
            access: s.config.log.access,
        }
    }
}

struct Listening {
    fd: ListenFd,
    ev: EventId,
}

/// Run once when a drain has ended (no connection left): a forked worker
/// leaves its loop, the in-process worker tells the master.
pub type OnDone = Box<dyn Fn(&mut EventBase)>;

/// State shared by the worker's callbacks and its connections.
pub struct Shared {
    slot: Slot,
    on_done: OnDone,
    params: RefCell<WorkerParams>,
    /// How new connections' bufferevents are set up (from `params`): one
    /// setup shared by all of them.
    setup: RefCell<Rc<BevSetup<Conn>>>,
    /// The same with the PROXY header's deadline as the read timeout: the
    /// setup connections start with while they wait for a header, shared
    /// too, until they go over to `setup`.
    header_setup: RefCell<Rc<BevSetup<Conn>>>,
    conns: RefCell<Vec<Option<Bev<Conn>>>>,
    /// The [`Meta`] of each connection that has one, by id; empty while no
    /// connection needs one.
    metas: RefCell<Vec<Option<Box<Meta>>>>,
    /// Whether `metas` ever held one: the one test a callback pays while
    /// none does.
    any_meta: Cell<bool>,
    free_ids: RefCell<Vec<u32>>,
    open: Cell<usize>,
    /// The most connections open at once since memory was last trimmed.
    peak: Cell<usize>,
    listeners: RefCell<Vec<Listening>>,
    listening: Cell<bool>,
    pause: Cell<u8>,
    resume_timer: Cell<EventId>,
    draining: Cell<bool>,
    last_fd_warn: Cell<Option<Instant>>,
    fd_errors_quiet: Cell<u64>,
    /// Bytes bulk connections read since the loop last had to poll.
    bulk_bytes: Cell<u64>,
}

impl Shared {
    /// A bulk connection read `n` bytes: past
    /// [`BULK_BYTES_PER_POLL`](connection::BULK_BYTES_PER_POLL) since the
    /// last forced poll (lanes on), the turn ends and the loop polls again.
    pub fn bulk_read(&self, base: &mut EventBase, n: u64) {
        let lanes = self.params.borrow().lanes;
        if !lanes.enabled {
            return;
        }
        let total = self.bulk_bytes.get() + n;
        if total >= connection::BULK_BYTES_PER_POLL {
            self.bulk_bytes.set(0);
            base.loopcontinue();
        } else {
            self.bulk_bytes.set(total);
        }
    }

    /// Adds to one of this process's counters.
    pub fn count(&self, c: Counter, n: u64) {
        self.slot.add(c, n);
    }

    /// Counts a duration in one of this process's histograms.
    pub fn observe(&self, c: Counter, ns: u64) {
        self.slot.observe(c, ns);
    }

    /// Whether a drain has begun.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// The lane parameters of new reads.
    pub fn lanes(&self) -> LaneParams {
        self.params.borrow().lanes
    }

    /// Connections open in this process.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// The setup of new connections once past the header phase.
    pub(crate) fn conn_setup(&self) -> Rc<BevSetup<Conn>> {
        self.setup.borrow().clone()
    }

    /// Runs `f` on the [`Meta`] of connection `id`, if it has one.
    pub(crate) fn with_meta<R>(&self, id: u32, f: impl FnOnce(&mut Meta) -> R) -> Option<R> {
        if !self.any_meta.get() {
            return None;
        }
        let mut metas = self.metas.try_borrow_mut().ok()?;
        metas.get_mut(id as usize)?.as_deref_mut().map(f)
    }

    /// Takes the [`Meta`] of connection `id` (it closed).
    pub(crate) fn take_meta(&self, id: u32) -> Option<Box<Meta>> {
        if !self.any_meta.get() {
            return None;
        }
        self.metas.try_borrow_mut().ok()?.get_mut(id as usize)?.take()
    }

    fn put_meta(&self, id: u32, meta: Box<Meta>) {
        let mut metas = self.metas.borrow_mut();
        if metas.len() <= id as usize {
            metas.resize_with(id as usize + 1, || None);
        }
        metas[id as usize] = Some(meta);
        self.any_meta.set(true);
    }

    fn sync_listeners(&self, base: &mut EventBase) {
        let want = self.pause.get() == 0;
        if want == self.listening.get() {
            return;
        }
        self.listening.set(want);
        for l in self.listeners.borrow().iter() {
            let r = if want { base.add(l.ev, None) } else { base.del(l.ev) };
            if let Err(e) = r {
                tracing::warn!(target: "rot13d", error = %e, "cannot change listener interest");
            }
        }
    }

    fn set_pause(&self, base: &mut EventBase, bit: u8, on: bool) {
        let p = self.pause.get();
        self.pause.set(if on { p | bit } else { p & !bit });
        self.sync_listeners(base);
    }

    pub(crate) fn connection_closed(&self, base: &mut EventBase, id: u32) {
        let gone = self.conns.borrow_mut().get_mut(id as usize).and_then(Option::take);
        if gone.is_some() {
            // A reused id never finds another connection's Meta.
            drop(self.take_meta(id));
            self.free_ids.borrow_mut().push(id);
            self.open.set(self.open.get().saturating_sub(1));
            self.slot.set(Counter::Open, self.open.get() as u64);
        }
        drop(gone);
        if should_trim(self.peak.get(), self.open.get()) {
            self.release_memory();
        }
        if self.pause.get() & PAUSE_LIMIT != 0 && self.open.get() < self.params.borrow().max_connections {
            self.set_pause(base, PAUSE_LIMIT, false);
        }
        if self.draining.get() && self.open.get() == 0 {
            (self.on_done)(base);
        }
    }

    /// Gives back what closed connections left: the connection table when
    /// it is empty, and the allocator's free memory.
    fn release_memory(&self) {
        let open = self.open.get();
        if open == 0 {
            *self.conns.borrow_mut() = Vec::new();
            *self.metas.borrow_mut() = Vec::new();
            *self.free_ids.borrow_mut() = Vec::new();
        }
        sys::trim_heap();
        tracing::debug!(target: "rot13d", peak = self.peak.get(), open, "free memory returned");
        self.peak.set(open);
    }

    fn accept_ready(self: &Rc<Self>, base: &mut EventBase, lfd: RawFd) {
        for _ in 0..ACCEPT_BATCH {
            if self.open.get() >= self.params.borrow().max_connections {
                self.set_pause(base, PAUSE_LIMIT, true);
                return;
            }
            match sys::accept(lfd) {
                Ok((fd, peer)) => {
                    let peer = peer.map(connection::canonical);
                    if let Err(e) = self.start_connection(base, fd, peer) {
                        tracing::warn!(target: "rot13d", error = %e, peer = %Addr(peer), "cannot set up a connection");
                    } else {
                        tracing::debug!(target: "rot13d", peer = %Addr(peer), "connection accepted");
                    }
                }
                Err(e) => {
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => return,
                        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => self.fd_exhausted(base, &e),
                        _ => tracing::warn!(target: "rot13d", error = %e, "accept failed"),
                    }
                    return;
                }
            }
        }
    }

    /// EMFILE/ENFILE: pause accepting for a moment instead of spinning on
    /// a listener that stays readable (libevent #71, tokio #3529).
    fn fd_exhausted(&self, base: &mut EventBase, e: &std::io::Error) {
        self.count(Counter::AcceptErrors, 1);
        let now = Instant::now();
        let due = self.last_fd_warn.get().is_none_or(|t| now.duration_since(t) >= FD_WARN_EVERY);
        if due {
            tracing::warn!(target: "rot13d", error = %e, open = self.open.get(),
                suppressed = self.fd_errors_quiet.get(), backoff_ms = FD_BACKOFF.as_millis() as u64,
                "file descriptor table full: accepting paused");
            self.last_fd_warn.set(Some(now));
            self.fd_errors_quiet.set(0);
        } else {
            self.fd_errors_quiet.set(self.fd_errors_quiet.get() + 1);
        }
        self.set_pause(base, PAUSE_FDS, true);
        let _ = base.add(self.resume_timer.get(), Some(FD_BACKOFF));
    }

    fn start_connection(
        self: &Rc<Self>,
        base: &mut EventBase,
        fd: OwnedFd,
        peer: Option<std::net::SocketAddr>,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let _ = sys::set_nodelay(fd.as_raw_fd());
        let (max_line, phase, access, write_timeout) = {
            let p = self.params.borrow();
            (p.max_line, p.proxy.phase(), p.access, p.write_timeout)
        };
        let meta = Meta::wanted(phase.is_some(), access).then(|| {
            // The local address only for the access record: one
            // getsockname more per connection, and only then.
            let local = access.then(|| socket2::SockRef::from(&fd).local_addr().ok()).flatten();
            Box::new(Meta {
                client: peer,
                peer,
                local: local.and_then(|a| a.as_socket()).map(connection::canonical),
                accepted: base.now(),
                setup: self.conn_setup(),
                write_timeout,
                bytes_in: 0,
                bytes_out: 0,
                lines: 0,
                end: End::Reset,
                access,
            })
        });
        let id = self.free_ids.borrow_mut().pop().unwrap_or_else(|| {
            let mut c = self.conns.borrow_mut();
            c.push(None);
            (c.len() - 1) as u32
        });
        let now_ms = base.now().as_millis() as u32;
        let conn = Conn {
            framer: Framer::new(max_line),
            shared: self.clone(),
            id,
            carried: 0,
            window_bytes: 0,
            window_start: now_ms,
            prev_share: 0,
            last_heavy: 0,
            lane: LANE_INTERACTIVE as u8,
            proxy: phase,
            last_read: now_ms,
            unsent: 0,
        };
        // With a header to wait for, the read timeout is its deadline until
        // it is complete.
        let setup = if phase.is_some() { &self.header_setup } else { &self.setup };
        let bev = match BufferEvent::socket_with(base, fd, &setup.borrow(), conn) {
            Ok(bev) => bev,
            Err(e) => {
                self.free_ids.borrow_mut().push(id);
                return Err(e);
            }
        };
        if let Some(m) = meta {
            self.put_meta(id, m);
        }
        let setup = bev.with(|b: &mut ConnBev| -> std::io::Result<()> {
            b.set_priority(base, LANE_INTERACTIVE)?;
            b.enable(base, EventFlags::READ | EventFlags::WRITE)
        });
        {
            // The table may have been emptied (release_memory) since the
            // id was taken.
            let mut c = self.conns.borrow_mut();
            if c.len() <= id as usize {
                c.resize_with(id as usize + 1, || None);
            }
            c[id as usize] = Some(bev.clone());
        }
        self.open.set(self.open.get() + 1);
        self.peak.set(self.peak.get().max(self.open.get()));
        self.count(Counter::Accepted, 1);
        self.slot.set(Counter::Open, self.open.get() as u64);
        match setup {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                bev.with(|b| b.free(base));
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Whether a connection can be closed now without cutting anything:
    /// nothing buffered either way, nothing unread in the kernel (closing
    /// then would send RST and lose it), nothing of the answer still in the
    /// kernel's send queue (a client that has stopped reading for a while:
    /// its next line would reach a closed socket, and the reset it causes
    /// drops what is queued) and, when `quiet` (retiring, or behind the
    /// PROXY protocol), quiet for [`RETIRE_QUIET`] (a client that has just
    /// connected is about to send).
    fn closable(b: &ConnBev, now_ms: u32, quiet: bool) -> bool {
        b.input().is_empty()
            && b.pending_output() == 0
            && sys::inq(b.fd()).is_ok_and(|n| n == 0)
            && sys::outq(b.fd()).is_ok_and(|n| n == 0)
            && (!quiet || now_ms.wrapping_sub(b.ctx.last_read) >= RETIRE_QUIET.as_millis() as u32)
    }

    /// Closes every connection that is [`closable`](Self::closable) now;
    /// returns how many stay open.
    fn close_idle(&self, base: &mut EventBase, retiring: bool) -> usize {
        let now = base.now().as_millis() as u32;
        // Behind a load balancer a connection is a client session the
        // balancer has already placed: cut before its first line (its
        // header just read) or between two lines, it cannot be sent
        // elsewhere. So a stop spares recent ones, as a reload does.
        let quiet = retiring || self.params.borrow().proxy != proxy::Mode::Off;
        let conns: Vec<Bev<Conn>> = self.conns.borrow().iter().flatten().cloned().collect();
        let mut busy = 0;
        for c in conns {
            c.with(|b| {
                if b.is_freed() || b.is_closing() {
                    return;
                }
                if Self::closable(b, now, quiet) {
                    connection::drop_unsent(b);
                    b.ctx.set_end(End::Shutdown);
                    b.free(base);
                } else {
                    busy += 1;
                }
            });
        }
        busy
    }

    /// Graceful stop (SIGTERM): listeners closed at once; idle connections
    /// closed at once; busy ones served until their client finishes, for at
    /// most the grace period. Behind the PROXY protocol an idle connection
    /// is closed only once it has been quiet for [`RETIRE_QUIET`] (at once
    /// if it has been, else when it has been: [`close_when_quiet`](Self::close_when_quiet)).
    ///
    /// Retiring (the master's retire command, a reload): the same, except that an idle
    /// connection is closed at once only if it has been quiet for
    /// [`RETIRE_QUIET`]: the listeners stay open in the new generation, so
    /// a client that connected just before the reload must not see its
    /// connection cut before its first line. Like every busy connection it
    /// is then served until its client finishes, or the grace period ends.
    pub fn begin_drain(self: &Rc<Self>, base: &mut EventBase, retiring: bool) {
        if self.draining.replace(true) {
            return;
        }
        self.set_pause(base, PAUSE_DRAIN, true);
        // Our copies of the listeners close (the master's and the new
        // generation's stay open).
        for l in self.listeners.borrow_mut().drain(..) {
            base.free(l.ev);
        }
        base.free(self.resume_timer.get());
        let busy = self.close_idle(base, retiring);
        let grace = self.params.borrow().shutdown_grace;
        let accepted = self.slot.get(Counter::Accepted);
        tracing::info!(target: "rot13d", busy, accepted, retiring, grace_s = grace.as_secs_f64(), "draining");
        if self.open.get() == 0 {
            (self.on_done)(base);
            return;
        }
        let me = self.clone();
        if grace.is_zero() {
            me.force_close_all(base);
        } else {
            let _ = base.once(-1, EventFlags::NONE, Some(grace), move |base, _| me.force_close_all(base));
            if !retiring && self.params.borrow().proxy != proxy::Mode::Off {
                self.clone().close_when_quiet(base);
            }
        }
    }

    /// A stop behind the PROXY protocol keeps looking, every half
    /// [`RETIRE_QUIET`]: a connection it spared for being recent is closed
    /// once it has been idle for that long, not kept to the grace's end.
    fn close_when_quiet(self: Rc<Self>, base: &mut EventBase) {
        let _ = base.once(-1, EventFlags::NONE, Some(RETIRE_QUIET / 2), move |base, _| {
            if self.open.get() > 0 {
                self.close_idle(base, false);
            }
            if self.open.get() > 0 {
                self.close_when_quiet(base);
            }
        });
    }

    /// End of the grace period: answer partial lines, write what the
    /// sockets take without waiting, close.
    fn force_close_all(&self, base: &mut EventBase) {
        let conns: Vec<Bev<Conn>> = self.conns.borrow().iter().flatten().cloned().collect();
        if !conns.is_empty() {
            tracing::info!(target: "rot13d", connections = conns.len(), "grace period over: closing");
        }
        for c in conns {
            c.with(|b| {
                if b.is_freed() {
                    return;
                }
                if !b.is_closing() {
                    connection::answer_tail(b);
                }
                let _ = b.enable(base, EventFlags::WRITE);
                b.flush(base);
                connection::drop_unsent(b);
                b.ctx.set_end(End::Shutdown);
                b.free(base);
            });
        }
        if self.open.get() == 0 {
            (self.on_done)(base);
        }
    }

    /// Starts accepting on another listening socket (a reload).
    pub fn add_listener(self: &Rc<Self>, base: &mut EventBase, fd: ListenFd) -> std::io::Result<()> {
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        let s = self.clone();
        let ev =
            base.new_event(raw, EventFlags::READ | EventFlags::PERSIST, move |base, _, _| s.accept_ready(base, raw));
        base.set_priority(ev, LANE_CONTROL)?;
        if self.listening.get() {
            base.add(ev, None)?;
        }
        self.listeners.borrow_mut().push(Listening { fd, ev });
        Ok(())
    }

    /// Stops accepting on a listening socket and lets go of it (a reload);
    /// it closes once nobody else holds it.
    pub fn remove_listener(&self, base: &mut EventBase, fd: RawFd) {
        let mut ls = self.listeners.borrow_mut();
        if let Some(pos) = ls.iter().position(|l| l.fd.as_raw_fd() == fd) {
            let l = ls.swap_remove(pos);
            base.free(l.ev);
        }
    }

    /// The listening sockets it accepts on.
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.listeners.borrow().iter().map(|l| l.fd.as_raw_fd()).collect()
    }

    /// New settings for connections accepted from now on (a reload of the
    /// in-process worker: connections open keep theirs).
    pub fn set_params(&self, base: &mut EventBase, p: WorkerParams) {
        if let Err(e) = register_timeouts(base, &p) {
            tracing::warn!(target: "rot13d", error = %e, "new timeouts use the timer heap");
        }
        let (setup, header_setup) = bev_setups(&p);
        *self.setup.borrow_mut() = setup;
        *self.header_setup.borrow_mut() = header_setup;
        *self.params.borrow_mut() = p;
    }
}

/// The setup every connection of a generation shares (callbacks,
/// backpressure marks, idle and write timeouts), and the one of its header
/// phase (the same, with [`proxy::DEADLINE`] as the read timeout).
fn bev_setups(p: &WorkerParams) -> (Rc<BevSetup<Conn>>, Rc<BevSetup<Conn>>) {
    let setup = BevSetup::new(BevOptions::CLOSE_ON_FREE)
        .callbacks(Some(connection::on_read), Some(connection::on_write), Some(connection::on_event))
        .close_callback(Some(connection::on_close))
        .backpressure(p.write_high_watermark, p.write_low_watermark)
        .timeouts(p.idle_timeout, p.write_timeout);
    (Rc::new(setup), Rc::new(setup.timeouts(Some(proxy::DEADLINE), p.write_timeout)))
}

/// The `reactor` event of a serving process (SPEC §2): the backend, and the
/// base's flags as built (so that a configured `epoll_changelist`,
/// `precise_timer` or `no_cache_time` can be seen to have reached it).
pub fn log_reactor(base: &EventBase, pid: i32, generation: u32) {
    use crate::reactor::BaseFlags;
    let flags = base.flags();
    tracing::info!(target: "rot13d", backend = %base.backend_name(), changelist = base.uses_changelist(),
        precise_timer = flags.contains(BaseFlags::PRECISE_TIMER),
        cache_time = !flags.contains(BaseFlags::NO_CACHE_TIME), pid, generation, "reactor");
}

/// Makes the idle and write timeouts common timeouts of `base`, so that
/// re-arming them for each read or write is O(1).
fn register_timeouts(base: &mut EventBase, p: &WorkerParams) -> std::io::Result<()> {
    for d in [p.idle_timeout, p.write_timeout].into_iter().flatten() {
        base.init_common_timeout(d)?;
    }
    Ok(())
}

/// Registers the listeners on `base` and returns the shared worker state.
pub fn start(
    base: &mut EventBase,
    listeners: Vec<ListenFd>,
    params: WorkerParams,
    slot: Slot,
    on_done: OnDone,
) -> std::io::Result<Rc<Shared>> {
    register_timeouts(base, &params)?;
    slot.set(Counter::Open, 0);
    let (setup, header_setup) = bev_setups(&params);
    let shared = Rc::new(Shared {
        slot,
        on_done,
        setup: RefCell::new(setup),
        header_setup: RefCell::new(header_setup),
        params: RefCell::new(params),
        conns: RefCell::new(Vec::new()),
        metas: RefCell::new(Vec::new()),
        any_meta: Cell::new(false),
        free_ids: RefCell::new(Vec::new()),
        open: Cell::new(0),
        peak: Cell::new(0),
        listeners: RefCell::new(Vec::new()),
        listening: Cell::new(false),
        pause: Cell::new(0),
        resume_timer: Cell::new(EventId::INVALID),
        draining: Cell::new(false),
        last_fd_warn: Cell::new(None),
        fd_errors_quiet: Cell::new(0),
        bulk_bytes: Cell::new(0),
    });
    let s = shared.clone();
    let t = base.new_timer(move |base, _, _| s.set_pause(base, PAUSE_FDS, false));
    base.set_priority(t, LANE_CONTROL)?;
    shared.resume_timer.set(t);
    for fd in listeners {
        shared.add_listener(base, fd)?;
    }
    shared.sync_listeners(base);
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_phase_shares_a_setup_and_gives_it_back() {
        use crate::reactor::LoopFlags;
        use std::io::Write;
        let mut base = EventBase::new().expect("base");
        base.priority_init(LANES).expect("lanes");
        let params = WorkerParams {
            max_line: 1024,
            idle_timeout: Some(Duration::from_secs(60)),
            write_timeout: Some(Duration::from_secs(30)),
            write_high_watermark: 1 << 16,
            write_low_watermark: 1 << 14,
            max_connections: 8,
            shutdown_grace: Duration::from_secs(1),
            lanes: LaneParams { enabled: false, bulk_after_bytes: 1 << 20, window_ms: 1000, quiet_ms: 1000 },
            proxy: proxy::Mode::V1,
            access: false,
        };
        let metrics = super::super::metrics::Metrics::new().expect("maps");
        let shared =
            start(&mut base, Vec::new(), params, metrics.acquire().expect("slot"), Box::new(|_| {})).expect("worker");
        let (ours, theirs) = sys::socketpair().expect("socketpair");
        shared.start_connection(&mut base, ours, None).expect("connection");
        let bev = shared.conns.borrow().iter().flatten().next().cloned().expect("open");
        let on = |b: &ConnBev, s: &RefCell<Rc<BevSetup<Conn>>>| Rc::ptr_eq(b.setup(), &s.borrow());
        assert_eq!(bev.with(|b| on(b, &shared.header_setup)), Some(true), "no copy at the accept");
        let mut client = std::os::unix::net::UnixStream::from(theirs);
        client.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 40713\r\n").expect("write");
        for _ in 0..100 {
            if bev.with(|b| b.ctx.proxy.is_none()) == Some(true) {
                break;
            }
            base.run(LoopFlags::ONCE | LoopFlags::NONBLOCK).expect("loop");
        }
        assert_eq!(bev.with(|b| (b.ctx.proxy.is_none(), on(b, &shared.setup))), Some((true, true)));
    }

    #[test]
    fn memory_is_trimmed_after_a_burst_ends_and_never_per_connection() {
        // 10,000 connections closing one by one: a trim at each halving
        // that released 1,024 or more, and at 0; not at every close.
        let (mut peak, mut trims) = (10_000, Vec::new());
        for open in (0..10_000).rev() {
            if should_trim(peak, open) {
                trims.push(open);
                peak = open;
            }
        }
        assert_eq!(trims, vec![5_000, 2_500, 1_250, 226, 0]);
        assert!(!should_trim(1, 0), "one client coming and going");
        assert!(!should_trim(63, 0));
        assert!(should_trim(64, 0));
        assert!(!should_trim(3_000, 1_900), "1,100 closed but more than half remain");
    }
}
