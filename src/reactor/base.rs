//! `EventBase`: the event loop (libevent `event.c`, redis `ae.c`).
//!
//! Events live in a slab of slots addressed by [`EventId`] (slot +
//! generation). One active queue per priority; each loop turn waits in the
//! backend, turns ready fds and expired timers into activations, then runs
//! the most urgent non-empty queue, bounded by the max-dispatch settings
//! from `min_priority` on, and goes back to the backend.

use super::backend::{self, Backend, BackendInfo, Features};
use super::config::{BaseFlags, EventConfig};
use super::event::{Cb, EventFlags, EventId, Handler};
use super::evmap::{self, EvMap};
use super::signal::SignalPipe;
use super::timer::Timers;
use crate::sys::{self, Clock};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ALLOCATED: u8 = 0x01;
const INSERTED: u8 = 0x02;
const ACTIVE: u8 = 0x04;
const INTERNAL: u8 = 0x10;
const ONESHOT: u8 = 0x20;

const NO_TIMEOUT: u64 = u64::MAX;

struct Slot {
    generation: u32,
    fd: RawFd,
    flags: EventFlags,
    res: EventFlags,
    pri: u8,
    state: u8,
    timeout: u64,
    /// Activation number: a queue entry with another number is stale (the
    /// event was deleted while active, and maybe activated again since).
    qseq: u32,
    cb: Option<Cb>,
}

/// One priority's active events in activation order: (slot, activation
/// number, when it became ready: see [`EventBase::dispatch_delay`]). A
/// `Vec` read from `head`, emptied when read to the end (the
/// usual case: a turn runs every callback it queued), compacted when most
/// of it has been read; cheaper per entry than a ring buffer.
#[derive(Debug, Default)]
struct ActiveQueue {
    items: Vec<(u32, u32, u64)>,
    head: usize,
}

impl ActiveQueue {
    fn push_back(&mut self, e: (u32, u32, u64)) {
        if self.head >= 1024 && self.head * 2 >= self.items.len() {
            self.items.drain(..self.head);
            self.head = 0;
        }
        self.items.push(e);
    }
    fn front(&self) -> Option<&(u32, u32, u64)> {
        self.items.get(self.head)
    }
    fn pop_front(&mut self) -> Option<(u32, u32, u64)> {
        let e = *self.items.get(self.head)?;
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        }
        Some(e)
    }
    fn len(&self) -> usize {
        self.items.len() - self.head
    }
}

flag_set! {
    /// Flags of one loop run (libevent's `EVLOOP_*`).
    pub struct LoopFlags(u8) {
        /// Block until something is active, run it, return.
        const ONCE = 0x01;
        /// Do not block: run what is ready now, return.
        const NONBLOCK = 0x02;
        /// Keep running with no events pending, until loopexit/loopbreak.
        const NO_EXIT_ON_EMPTY = 0x04;
    }
}

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopExit {
    /// Exit or break was asked, or ONCE/NONBLOCK finished.
    Done,
    /// No event was pending or active (libevent returns 1).
    NoEvents,
}

/// A base that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// No backend satisfies the configuration.
    #[error(
        "no event backend satisfies the configuration (required features: {required}; avoided: {avoided}; disabled by environment: {env})"
    )]
    NoBackend {
        /// Features that were required.
        required: String,
        /// Backends that were avoided by name.
        avoided: String,
        /// Backends that the environment disabled.
        env: String,
    },
    /// The OS refused.
    #[error("creating the event backend: {0}")]
    Io(#[from] io::Error),
}

impl From<BaseError> for io::Error {
    fn from(e: BaseError) -> io::Error {
        match e {
            BaseError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::Unsupported, other.to_string()),
        }
    }
}

enum Command {
    Activate(EventId, EventFlags),
    Break,
    Exit,
    Wake,
}

struct WakeShared {
    fd: OwnedFd,
    cmds: Mutex<Vec<Command>>,
}

/// A `Send + Sync` handle that other threads use to reach a base: wake it,
/// activate an event, break or exit its loop (an eventfd under it).
#[derive(Clone)]
pub struct BaseHandle {
    shared: Arc<WakeShared>,
}

impl BaseHandle {
    fn push(&self, c: Command) {
        if let Ok(mut q) = self.shared.cmds.lock() {
            q.push(c);
        }
        // A full counter (EAGAIN) still means "wake up".
        let _ = sys::write(self.shared.fd.as_raw_fd(), &1u64.to_ne_bytes());
    }
    /// Wakes the loop out of its wait.
    pub fn wake(&self) {
        self.push(Command::Wake);
    }
    /// Activates `id` with `res`, as [`EventBase::active`] does.
    pub fn activate(&self, id: EventId, res: EventFlags) {
        self.push(Command::Activate(id, res));
    }
    /// Breaks the loop, as [`EventBase::loopbreak`] does.
    pub fn loopbreak(&self) {
        self.push(Command::Break);
    }
    /// Makes the loop exit after this turn, as [`EventBase::loopexit`].
    pub fn loopexit(&self) {
        self.push(Command::Exit);
    }
}

/// An event loop.
pub struct EventBase {
    backend: Box<dyn Backend>,
    changelist: bool,
    flags: BaseFlags,
    clock: Clock,
    slots: Vec<Slot>,
    free: Vec<u32>,
    evmap: EvMap,
    timers: Timers,
    /// Per priority: (slot, activation number) in activation order.
    queues: Vec<ActiveQueue>,
    n_active: usize,
    n_pending_user: usize,
    cached_now: Option<u64>,
    /// Precise-clock ns when this turn's backend wait returned: the
    /// readiness time of what it activates.
    turn_ready: u64,
    /// The readiness time of the event whose callback runs (0: none).
    running_ready: u64,
    max_interval: Option<Duration>,
    max_callbacks: Option<usize>,
    min_priority: usize,
    starve_limit: Option<usize>,
    /// Per priority: turns in a row it had live events but did not run.
    skipped: Vec<usize>,
    /// Signal events activated, with how many deliveries they owe.
    sig_calls: Vec<(u32, u32)>,
    signals: Option<SignalPipe>,
    signal_ev: EventId,
    wake: Option<Arc<WakeShared>>,
    wake_ev: EventId,
    ready: Vec<(RawFd, EventFlags)>,
    expired: Vec<u32>,
    running: bool,
    break_flag: bool,
    exit_flag: bool,
    continue_flag: bool,
    got_break: bool,
    got_exit: bool,
}

impl std::fmt::Debug for EventBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBase")
            .field("backend", &self.backend.name())
            .field("events", &(self.slots.len() - self.free.len()))
            .field("active", &self.n_active)
            .finish()
    }
}

fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128 - 1) as u64
}

impl EventBase {
    /// A base on the fastest backend, honouring the `EVENT_*` environment.
    #[doc(alias = "event_base_new")]
    pub fn new() -> Result<EventBase, BaseError> {
        EventBase::with_config(&EventConfig::new())
    }

    /// A base built from `cfg` (libevent's `event_base_new_with_config`).
    #[doc(alias = "event_base_new_with_config")]
    pub fn with_config(cfg: &EventConfig) -> Result<EventBase, BaseError> {
        let use_env = !cfg.flags.contains(BaseFlags::IGNORE_ENV);
        let mut flags = cfg.flags;
        if use_env {
            if std::env::var_os("EVENT_EPOLL_USE_CHANGELIST").is_some() {
                flags |= BaseFlags::EPOLL_USE_CHANGELIST;
            }
            if std::env::var_os("EVENT_PRECISE_TIMER").is_some() {
                flags |= BaseFlags::PRECISE_TIMER;
            }
        }
        let mut env_off = Vec::new();
        let mut chosen: Option<BackendInfo> = None;
        for b in backend::PREFERENCE {
            if cfg.avoid.iter().any(|a| a == b.name) || !b.features.contains(cfg.require) {
                continue;
            }
            if use_env && backend::disabled_by_env(b.name) {
                env_off.push(b.name);
                continue;
            }
            chosen = Some(b);
            break;
        }
        let Some(info) = chosen else {
            return Err(BaseError::NoBackend {
                required: cfg.require.names(),
                avoided: if cfg.avoid.is_empty() { "-".into() } else { cfg.avoid.join(",") },
                env: if env_off.is_empty() { "-".into() } else { env_off.join(",") },
            });
        };
        let changelist = flags.contains(BaseFlags::EPOLL_USE_CHANGELIST);
        let be = backend::create(info.name, cfg.capacity_hint, changelist)?;
        // The coarse clock only when it ticks at least every millisecond
        // (libevent's rule); PRECISE_TIMER always takes the precise one.
        let clock = if !flags.contains(BaseFlags::PRECISE_TIMER)
            && sys::clock_resolution(Clock::Coarse) <= Duration::from_millis(1)
        {
            Clock::Coarse
        } else {
            Clock::Precise
        };
        if use_env && std::env::var_os("EVENT_SHOW_METHOD").is_some() {
            tracing::info!(target: "rot13d::reactor", backend = %info.name, "event base using backend");
        }
        tracing::debug!(target: "rot13d::reactor", backend = %info.name, ?flags, "event base created");
        Ok(EventBase {
            backend: be,
            changelist,
            flags,
            clock,
            slots: Vec::new(),
            free: Vec::new(),
            evmap: EvMap::default(),
            timers: Timers::default(),
            queues: vec![ActiveQueue::default()],
            n_active: 0,
            n_pending_user: 0,
            cached_now: None,
            turn_ready: 0,
            running_ready: 0,
            max_interval: cfg.max_dispatch_interval,
            max_callbacks: cfg.max_callbacks,
            min_priority: cfg.min_priority,
            starve_limit: cfg.starve_limit.filter(|&n| n > 0),
            skipped: Vec::new(),
            sig_calls: Vec::new(),
            signals: None,
            signal_ev: EventId::INVALID,
            wake: None,
            wake_ev: EventId::INVALID,
            ready: Vec::new(),
            expired: Vec::new(),
            running: false,
            break_flag: false,
            exit_flag: false,
            continue_flag: false,
            got_break: false,
            got_exit: false,
        })
    }

    // ----- queries ---------------------------------------------------------

    /// The backend in use (`epoll`, `poll`, `select`).
    #[doc(alias = "event_base_get_method")]
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's features.
    #[doc(alias = "event_base_get_features")]
    pub fn features(&self) -> Features {
        self.backend.features()
    }

    /// Whether the epoll changelist is on.
    pub fn uses_changelist(&self) -> bool {
        self.changelist && self.backend.name() == "epoll"
    }

    /// The flags in force (config plus environment).
    pub fn flags(&self) -> BaseFlags {
        self.flags
    }

    /// The backends this build supports, fastest first.
    #[doc(alias = "event_get_supported_methods")]
    pub fn supported_backends() -> Vec<BackendInfo> {
        backend::supported()
    }

    /// The reactor's version (the crate version).
    #[doc(alias = "event_get_version")]
    pub fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Number of priorities.
    #[doc(alias = "event_base_get_npriorities")]
    pub fn npriorities(&self) -> usize {
        self.queues.len()
    }

    /// Number of events allocated (pending or not, internal included).
    pub fn num_events(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Number of active events.
    pub fn num_active(&self) -> usize {
        self.n_active
    }

    /// Whether the last loop ended through loopexit.
    #[doc(alias = "event_base_got_exit")]
    pub fn got_exit(&self) -> bool {
        self.got_exit
    }

    /// Whether the last loop ended through loopbreak.
    #[doc(alias = "event_base_got_break")]
    pub fn got_break(&self) -> bool {
        self.got_break
    }

    /// The monotonic time, cached for the current loop turn unless
    /// NO_CACHE_TIME (libevent's `event_base_gettimeofday_cached`).
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }

    fn now_ns(&self) -> u64 {
        match self.cached_now {
            Some(t) => t,
            None => dur_ns(sys::monotonic(self.clock)),
        }
    }

    /// How long the event whose callback is running waited to run: from
    /// when it became ready (the backend's wait returned with its fd ready,
    /// its timer expired, or it was activated; the first time, if that
    /// happened again before it ran) to now, on the precise clock, read
    /// here. Zero outside a callback. One clock read per call and one per
    /// loop turn (none when the cached clock is the precise one): the cost
    /// of measuring dispatch delay per priority.
    pub fn dispatch_delay(&self) -> Duration {
        if self.running_ready == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(dur_ns(sys::monotonic(Clock::Precise)).saturating_sub(self.running_ready))
    }

    /// Refreshes the cached time (libevent's `event_base_update_cache_time`).
    #[doc(alias = "event_base_update_cache_time")]
    pub fn update_cache_time(&mut self) {
        if self.cached_now.is_some() {
            self.cached_now = Some(dur_ns(sys::monotonic(self.clock)));
        }
    }

    // ----- priorities --------------------------------------------------------

    /// Sets the number of priorities, 1..=256; only while no event is
    /// active. New events get priority `n / 2`.
    #[doc(alias = "event_base_priority_init")]
    pub fn priority_init(&mut self, n: usize) -> io::Result<()> {
        if !(1..=256).contains(&n) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "priorities must be between 1 and 256"));
        }
        if self.n_active > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "priorities cannot change while events are active",
            ));
        }
        self.queues.resize_with(n, ActiveQueue::default);
        self.queues.truncate(n);
        for s in &mut self.slots {
            s.pri = s.pri.min((n - 1) as u8);
        }
        Ok(())
    }

    /// Sets the priority of an event that is not active.
    #[doc(alias = "event_priority_set")]
    pub fn set_priority(&mut self, id: EventId, pri: usize) -> io::Result<()> {
        let n = self.queues.len();
        let s = self.slot_mut(id)?;
        if s.state & ACTIVE != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "event is active"));
        }
        if pri >= n {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "priority out of range"));
        }
        s.pri = pri as u8;
        Ok(())
    }

    /// The priority of an event.
    pub fn priority(&self, id: EventId) -> Option<usize> {
        self.slot(id).map(|s| s.pri as usize)
    }

    // ----- events ------------------------------------------------------------

    /// Creates an event on `fd` (a signal number with SIGNAL, -1 for a pure
    /// timer). It is not pending until [`add`](Self::add).
    #[doc(alias = "event_new")]
    pub fn new_event(
        &mut self,
        fd: RawFd,
        flags: EventFlags,
        cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static,
    ) -> EventId {
        self.alloc(fd, flags, Cb::Boxed(Box::new(cb)), 0)
    }

    /// Creates an event served by a shared [`Handler`] (no allocation per
    /// event: a bufferevent's two events share one handler).
    pub fn new_event_with(&mut self, fd: RawFd, flags: EventFlags, handler: std::rc::Rc<dyn Handler>) -> EventId {
        self.alloc(fd, flags, Cb::Shared(handler), 0)
    }

    /// A timer event (`evtimer_new`).
    #[doc(alias = "evtimer_new")]
    pub fn new_timer(&mut self, cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static) -> EventId {
        self.alloc(-1, EventFlags::NONE, Cb::Boxed(Box::new(cb)), 0)
    }

    /// A persistent signal event (`evsignal_new`).
    #[doc(alias = "evsignal_new")]
    pub fn new_signal(&mut self, sig: i32, cb: impl FnMut(&mut EventBase, EventId, EventFlags) + 'static) -> EventId {
        self.alloc(sig, EventFlags::SIGNAL | EventFlags::PERSIST, Cb::Boxed(Box::new(cb)), 0)
    }

    /// Runs `cb` once when `fd` is ready for `flags` or after `timeout`
    /// (`event_base_once`); its slot is freed after the call.
    #[doc(alias = "event_base_once")]
    pub fn once(
        &mut self,
        fd: RawFd,
        flags: EventFlags,
        timeout: Option<Duration>,
        cb: impl FnOnce(&mut EventBase, EventFlags) + 'static,
    ) -> io::Result<EventId> {
        if flags.intersects(EventFlags::SIGNAL | EventFlags::PERSIST) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "once takes no SIGNAL or PERSIST"));
        }
        let mut cb = Some(cb);
        let id = self.alloc(
            fd,
            flags,
            Cb::Boxed(Box::new(move |b: &mut EventBase, _, res| {
                if let Some(f) = cb.take() {
                    f(b, res)
                }
            })),
            ONESHOT,
        );
        let timeout = if flags.intersects(EventFlags::IO) { timeout } else { Some(timeout.unwrap_or_default()) };
        if let Err(e) = self.add(id, timeout) {
            self.free(id);
            return Err(e);
        }
        Ok(id)
    }

    fn alloc(&mut self, fd: RawFd, flags: EventFlags, cb: Cb, extra: u8) -> EventId {
        let pri = (self.queues.len() / 2) as u8;
        if let Some(idx) = self.free.pop() {
            let s = &mut self.slots[idx as usize];
            s.fd = fd;
            s.flags = flags;
            s.res = EventFlags::NONE;
            s.pri = pri;
            s.state = ALLOCATED | extra;
            s.timeout = NO_TIMEOUT;
            s.cb = Some(cb);
            EventId { idx, generation: s.generation }
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                generation: 1,
                fd,
                flags,
                res: EventFlags::NONE,
                pri,
                state: ALLOCATED | extra,
                timeout: NO_TIMEOUT,
                qseq: 0,
                cb: Some(cb),
            });
            EventId { idx, generation: 1 }
        }
    }

    fn slot(&self, id: EventId) -> Option<&Slot> {
        self.slots.get(id.idx as usize).filter(|s| s.generation == id.generation && s.state & ALLOCATED != 0)
    }

    fn slot_mut(&mut self, id: EventId) -> io::Result<&mut Slot> {
        self.slots
            .get_mut(id.idx as usize)
            .filter(|s| s.generation == id.generation && s.state & ALLOCATED != 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such event"))
    }

    /// Whether `id` names a live event.
    pub fn is_valid(&self, id: EventId) -> bool {
        self.slot(id).is_some()
    }

    fn is_pending_idx(&self, idx: u32) -> bool {
        self.slots[idx as usize].state & INSERTED != 0 || self.timers.is_scheduled(idx)
    }

    fn recount(&mut self, idx: u32, was: bool) {
        if self.slots[idx as usize].state & INTERNAL != 0 {
            return;
        }
        let now = self.is_pending_idx(idx);
        if now && !was {
            self.n_pending_user += 1;
        } else if was && !now {
            self.n_pending_user -= 1;
        }
    }

    /// Makes an event pending, with an optional timeout (re-arming it if
    /// already pending). A timeout equal to a common timeout of this base
    /// goes to that O(1) queue.
    #[doc(alias = "event_add")]
    pub fn add(&mut self, id: EventId, timeout: Option<Duration>) -> io::Result<()> {
        let s = self.slot_mut(id)?;
        let (fd, flags, inserted) = (s.fd, s.flags, s.state & INSERTED != 0);
        let idx = id.idx;
        let was = self.is_pending_idx(idx);
        if !inserted && flags.intersects(EventFlags::IO | EventFlags::SIGNAL) {
            if flags.contains(EventFlags::SIGNAL) {
                self.ensure_signals()?;
                if let Some(sp) = self.signals.as_mut() {
                    sp.add(fd, idx)?;
                }
            } else {
                if fd < 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "io event without an fd"));
                }
                // One fd has one mode in epoll: mixing would silently change
                // the mode of the events already there (libevent refuses too).
                if self
                    .evmap
                    .get(fd)
                    .and_then(|e| e.edge_triggered())
                    .is_some_and(|et| et != flags.contains(EventFlags::ET))
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "edge-triggered and level-triggered events cannot share an fd",
                    ));
                }
                let (old, delta) = self.evmap.add(fd, idx, flags);
                if !delta.is_empty()
                    && let Err(e) = self.backend.add(fd, old, delta)
                {
                    self.evmap.del(fd, idx, flags);
                    return Err(e);
                }
            }
            self.slots[idx as usize].state |= INSERTED;
        }
        match timeout {
            Some(t) => {
                let t = dur_ns(t);
                self.slots[idx as usize].timeout = t;
                // Re-adding an active timer-only event with a new timeout
                // makes it wait again (libevent removes it from the active
                // queue when it was activated by its timeout).
                let s = &mut self.slots[idx as usize];
                if s.state & ACTIVE != 0 && s.res == EventFlags::TIMEOUT {
                    s.state &= !ACTIVE;
                    s.res = EventFlags::NONE;
                    self.n_active -= 1;
                }
                let now = self.now_ns();
                self.timers.schedule(idx, now, t);
            }
            None => {
                // event_add with no timeout clears a previous timeout.
                self.slots[idx as usize].timeout = NO_TIMEOUT;
                self.timers.cancel(idx);
            }
        }
        self.recount(idx, was);
        Ok(())
    }

    /// Makes an event non-pending and non-active.
    #[doc(alias = "event_del")]
    pub fn del(&mut self, id: EventId) -> io::Result<()> {
        self.slot_mut(id)?;
        self.del_idx(id.idx, true)
    }

    fn del_idx(&mut self, idx: u32, and_active: bool) -> io::Result<()> {
        let was = self.is_pending_idx(idx);
        self.timers.cancel(idx);
        let s = &mut self.slots[idx as usize];
        if and_active && s.state & ACTIVE != 0 {
            s.state &= !ACTIVE;
            s.res = EventFlags::NONE;
            self.n_active -= 1;
            self.sig_calls.retain(|(i, _)| *i != idx);
        }
        let s = &mut self.slots[idx as usize];
        let mut result = Ok(());
        if s.state & INSERTED != 0 {
            s.state &= !INSERTED;
            let (fd, flags) = (s.fd, s.flags);
            if flags.contains(EventFlags::SIGNAL) {
                if let Some(sp) = self.signals.as_mut() {
                    result = sp.del(fd, idx);
                }
            } else {
                let (old, delta) = self.evmap.del(fd, idx, flags);
                if !delta.is_empty() {
                    result = self.backend.del(fd, old, delta);
                }
            }
        }
        self.recount(idx, was);
        result
    }

    /// Deletes and releases an event; its id becomes invalid. Freeing an
    /// event from inside its own callback is allowed.
    #[doc(alias = "event_free")]
    pub fn free(&mut self, id: EventId) {
        if self.slot(id).is_none() {
            return;
        }
        let _ = self.del_idx(id.idx, true);
        let s = &mut self.slots[id.idx as usize];
        s.generation = s.generation.wrapping_add(1).max(1);
        s.state = 0;
        s.cb = None;
        s.fd = -1;
        self.free.push(id.idx);
    }

    /// Frees every event registered through the public API (the base's
    /// own signal and wake-up events stay). For a forked child that serves
    /// on its own after [`reinit`](Self::reinit): the parent's events there
    /// would watch fds the child closes, and an fd number the child reuses
    /// would then look already watched (its new socket never registered).
    /// Freeing drops the callbacks, and with them what they own (a
    /// bufferevent dropped this way closes its socket). Call it after
    /// `reinit`, never before: before, the deletes would reach the epoll
    /// instance the parent still uses.
    pub fn free_all(&mut self) {
        for idx in 0..self.slots.len() as u32 {
            let s = &self.slots[idx as usize];
            if s.state & ALLOCATED != 0 && s.state & INTERNAL == 0 {
                self.free(EventId { idx, generation: s.generation });
            }
        }
    }

    /// Makes `id` active with `res` now, whether pending or not
    /// (`event_active`).
    #[doc(alias = "event_active")]
    pub fn active(&mut self, id: EventId, res: EventFlags) {
        if self.slot(id).is_some() {
            self.activate(id.idx, res);
        }
    }

    fn activate(&mut self, idx: u32, res: EventFlags) {
        let s = &mut self.slots[idx as usize];
        s.res |= res;
        if s.state & ACTIVE != 0 {
            return;
        }
        s.state |= ACTIVE;
        self.n_active += 1;
        // A queue entry left by a delete while active is stale: it may sit
        // in another priority's queue (or one priority_init dropped), or
        // ahead of events activated since. Queue afresh; the old entry is
        // skipped by its activation number.
        s.qseq = s.qseq.wrapping_add(1);
        // The callback's state lives behind a pointer; start loading it now,
        // while the rest of the ready list is queued, rather than when it
        // runs (with thousands of events it is usually out of cache).
        match &s.cb {
            Some(Cb::Boxed(f)) => sys::prefetch(&**f),
            Some(Cb::Shared(h)) => sys::prefetch(std::rc::Rc::as_ptr(h)),
            None => {}
        }
        let q = (s.pri as usize).min(self.queues.len() - 1);
        self.queues[q].push_back((idx, s.qseq, self.turn_ready));
    }

    /// What `id` is pending or active for, among `what`; with TIMEOUT, also
    /// its remaining time (`event_pending`).
    #[doc(alias = "event_pending")]
    pub fn pending(&self, id: EventId, what: EventFlags) -> (EventFlags, Option<Duration>) {
        let Some(s) = self.slot(id) else { return (EventFlags::NONE, None) };
        let mut f = EventFlags::NONE;
        if s.state & INSERTED != 0 {
            f |= s.flags & (EventFlags::IO | EventFlags::SIGNAL);
        }
        if s.state & ACTIVE != 0 {
            f |= s.res;
        }
        let deadline = self.timers.deadline(id.idx);
        if deadline.is_some() {
            f |= EventFlags::TIMEOUT;
        }
        let left = deadline.map(|d| Duration::from_nanos(d.saturating_sub(self.now_ns())));
        (f & what, left)
    }

    /// The fd (or signal number) of an event.
    pub fn event_fd(&self, id: EventId) -> Option<RawFd> {
        self.slot(id).map(|s| s.fd)
    }

    /// Registers `d` as a common timeout: later `add`s with exactly `d`
    /// re-arm in O(1) (libevent's `event_base_init_common_timeout`).
    #[doc(alias = "event_base_init_common_timeout")]
    pub fn init_common_timeout(&mut self, d: Duration) -> io::Result<()> {
        if self.timers.add_common(dur_ns(d)) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::OutOfMemory, "too many common timeouts"))
        }
    }

    /// Whether `d` is a common timeout of this base.
    pub fn is_common_timeout(&self, d: Duration) -> bool {
        self.timers.is_common(dur_ns(d))
    }

    // ----- signals and the wake handle -----------------------------------

    fn ensure_signals(&mut self) -> io::Result<()> {
        if self.signals.is_some() {
            return Ok(());
        }
        let sp = SignalPipe::new()?;
        let fd = sp.read_fd();
        self.signals = Some(sp);
        let id = self.alloc(
            fd,
            EventFlags::READ | EventFlags::PERSIST,
            Cb::Boxed(Box::new(|b, _, _| b.deliver_signals())),
            INTERNAL,
        );
        self.slots[id.idx as usize].pri = 0;
        self.signal_ev = id;
        self.add(id, None)
    }

    fn deliver_signals(&mut self) {
        let mut counts = [0u32; sys::signal::NSIG];
        let Some(sp) = self.signals.as_ref() else { return };
        sp.drain(&mut counts);
        let mut fire = Vec::new();
        for (sig, &n) in counts.iter().enumerate() {
            if n > 0 {
                fire.extend(sp.events[sig].iter().map(|&idx| (idx, n)));
            }
        }
        for (idx, n) in fire {
            // The callback runs once per delivery (libevent's ncalls).
            match self.sig_calls.iter_mut().find(|(i, _)| *i == idx) {
                Some((_, c)) => *c = c.saturating_add(n),
                None => self.sig_calls.push((idx, n)),
            }
            self.activate(idx, EventFlags::SIGNAL);
        }
    }

    /// A handle for other threads; an error on a NOLOCK base.
    pub fn handle(&mut self) -> io::Result<BaseHandle> {
        if self.flags.contains(BaseFlags::NOLOCK) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a NOLOCK base has no thread handle"));
        }
        if self.wake.is_none() {
            let shared = Arc::new(WakeShared { fd: sys::eventfd()?, cmds: Mutex::new(Vec::new()) });
            let fd = shared.fd.as_raw_fd();
            self.wake = Some(shared);
            let id = self.alloc(
                fd,
                EventFlags::READ | EventFlags::PERSIST,
                Cb::Boxed(Box::new(|b, _, _| b.run_commands())),
                INTERNAL,
            );
            self.slots[id.idx as usize].pri = 0;
            self.wake_ev = id;
            self.add(id, None)?;
        }
        let shared = self.wake.clone().ok_or_else(|| io::Error::other("no wake handle"))?;
        Ok(BaseHandle { shared })
    }

    fn run_commands(&mut self) {
        let Some(w) = self.wake.clone() else { return };
        let mut buf = [0u8; 8];
        let _ = sys::read(w.fd.as_raw_fd(), &mut buf);
        let cmds = match w.cmds.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        for c in cmds {
            match c {
                Command::Activate(id, res) => self.active(id, res),
                Command::Break => self.loopbreak(),
                Command::Exit => self.exit_flag = true,
                Command::Wake => {}
            }
        }
    }

    // ----- loop control ----------------------------------------------------

    /// Exits the loop after the current turn (now: `None`) or after `delay`.
    #[doc(alias = "event_base_loopexit")]
    pub fn loopexit(&mut self, delay: Option<Duration>) -> io::Result<()> {
        self.once(-1, EventFlags::NONE, Some(delay.unwrap_or_default()), |b, _| {
            b.exit_flag = true;
        })?;
        Ok(())
    }

    /// Stops the loop after the running callback.
    #[doc(alias = "event_base_loopbreak")]
    pub fn loopbreak(&mut self) {
        self.break_flag = true;
    }

    /// Skips the rest of this turn's active callbacks and polls again.
    #[doc(alias = "event_base_loopcontinue")]
    pub fn loopcontinue(&mut self) {
        if self.running {
            self.continue_flag = true;
        }
    }

    /// Runs until no events are pending, or exit/break.
    #[doc(alias = "event_base_dispatch")]
    pub fn dispatch(&mut self) -> io::Result<LoopExit> {
        self.run(LoopFlags::default())
    }

    /// The loop (`event_base_loop`).
    #[doc(alias = "event_base_loop")]
    pub fn run(&mut self, flags: LoopFlags) -> io::Result<LoopExit> {
        if self.running {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "the loop is already running"));
        }
        self.running = true;
        // What is activated before the first wait is ready now.
        self.turn_ready = dur_ns(sys::monotonic(Clock::Precise));
        self.got_exit = false;
        self.got_break = false;
        self.break_flag = false;
        self.exit_flag = false;
        let r = self.run_inner(flags);
        self.running = false;
        self.cached_now = None;
        r
    }

    fn run_inner(&mut self, flags: LoopFlags) -> io::Result<LoopExit> {
        loop {
            self.continue_flag = false;
            if self.exit_flag {
                self.got_exit = true;
                return Ok(LoopExit::Done);
            }
            if self.break_flag {
                self.got_break = true;
                return Ok(LoopExit::Done);
            }
            if !flags.contains(LoopFlags::NO_EXIT_ON_EMPTY) && self.n_pending_user == 0 && self.n_active == 0 {
                return Ok(LoopExit::NoEvents);
            }
            self.cached_now = None;
            let timeout = if self.n_active > 0 || flags.contains(LoopFlags::NONBLOCK) {
                Some(Duration::ZERO)
            } else {
                self.timers.next_deadline().map(|d| Duration::from_nanos(d.saturating_sub(self.now_ns())))
            };
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            let r = self.backend.dispatch(timeout, &mut ready);
            if !self.flags.contains(BaseFlags::NO_CACHE_TIME) {
                self.cached_now = Some(dur_ns(sys::monotonic(self.clock)));
            }
            self.turn_ready = match self.cached_now {
                Some(t) if self.clock == Clock::Precise => t,
                _ => dur_ns(sys::monotonic(Clock::Precise)),
            };
            for &(fd, what) in &ready {
                self.activate_fd(fd, what);
            }
            self.ready = ready;
            r?;
            self.expire_timers();
            let ran = if self.n_active > 0 { self.process_active() } else { 0 };
            if flags.contains(LoopFlags::NONBLOCK) || (flags.contains(LoopFlags::ONCE) && self.n_active == 0 && ran > 0)
            {
                // ONCE: every callback that became active has run.
                if self.exit_flag {
                    self.got_exit = true;
                }
                if self.break_flag {
                    self.got_break = true;
                }
                return Ok(LoopExit::Done);
            }
        }
    }

    fn activate_fd(&mut self, fd: RawFd, what: EventFlags) {
        let Some(e) = self.evmap.get(fd) else { return };
        // Copied out, as activating needs `&mut self`. One or two events
        // (the common case) sit inline in the fd's entry: no list to build.
        if let Some(inline) = e.inline_events() {
            for idx in inline {
                self.activate_io(idx, what);
            }
        } else {
            let many: Vec<u32> = e.events().collect();
            for idx in many {
                self.activate_io(idx, what);
            }
        }
    }

    /// Activates event `idx` (`evmap::NONE`: none) for what of `what` it
    /// watches.
    #[inline]
    fn activate_io(&mut self, idx: u32, what: EventFlags) {
        if idx != evmap::NONE {
            let res = self.slots[idx as usize].flags & what & EventFlags::IO;
            if !res.is_empty() {
                self.activate(idx, res);
            }
        }
    }

    fn expire_timers(&mut self) {
        let now = self.now_ns();
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timers.pop_expired(now, &mut expired);
        for &idx in &expired {
            // The timer is gone: recount, or an expired pure timer stays
            // counted as pending and `dispatch` never returns NoEvents. A
            // non-persistent io event stays pending (inserted) until it runs.
            self.recount(idx, true);
            self.activate(idx, EventFlags::TIMEOUT);
        }
        self.expired = expired;
    }

    /// Whether queue `p` holds a live entry (stale ones at its front are
    /// dropped on the way).
    fn queue_live(&mut self, p: usize) -> bool {
        while let Some(&(idx, seq, _)) = self.queues[p].front() {
            let s = &self.slots[idx as usize];
            if s.qseq == seq && s.state & ACTIVE != 0 {
                return true;
            }
            self.queues[p].pop_front();
        }
        false
    }

    fn process_active(&mut self) -> usize {
        // The most urgent queue with a live entry: a queue holding only
        // stale entries must not use up the turn (NONBLOCK would run nothing).
        let Some(pri) = (0..self.queues.len()).find(|&p| self.queue_live(p)) else {
            return 0;
        };
        let mut ran = self.run_queue(pri);
        // Starvation limit: a less urgent queue passed over this many turns
        // in a row gets one bounded pass now, so a steady stream of urgent
        // events cannot stop it for good.
        if let Some(limit) = self.starve_limit {
            if self.skipped.len() < self.queues.len() {
                self.skipped.resize(self.queues.len(), 0);
            }
            self.skipped[pri] = 0;
            for p in pri + 1..self.queues.len() {
                if self.break_flag || self.continue_flag {
                    break;
                }
                if !self.queue_live(p) {
                    self.skipped[p] = 0;
                    continue;
                }
                self.skipped[p] += 1;
                if self.skipped[p] >= limit {
                    self.skipped[p] = 0;
                    ran += self.run_queue(p);
                }
            }
        }
        ran
    }

    /// One pass over priority `pri`'s queue: the entries queued when it
    /// starts, bounded by the max-dispatch settings from `min_priority` on.
    fn run_queue(&mut self, pri: usize) -> usize {
        let limited = pri >= self.min_priority;
        let max_cb = if limited { self.max_callbacks.unwrap_or(usize::MAX) } else { usize::MAX };
        let until = if limited {
            self.max_interval.map(|d| dur_ns(sys::monotonic(Clock::Precise)).saturating_add(dur_ns(d)))
        } else {
            None
        };
        let n = self.queues.get(pri).map_or(0, ActiveQueue::len);
        let mut ran = 0;
        for _ in 0..n {
            // A callback may have called priority_init and dropped this queue.
            let Some((idx, seq, ready)) = self.queues.get_mut(pri).and_then(|q| q.pop_front()) else { break };
            let s = &self.slots[idx as usize];
            if s.qseq != seq || s.state & ACTIVE == 0 {
                continue;
            }
            self.running_ready = ready;
            self.run_one(idx);
            self.running_ready = 0;
            ran += 1;
            if self.break_flag || self.continue_flag || ran >= max_cb {
                break;
            }
            if until.is_some_and(|u| dur_ns(sys::monotonic(Clock::Precise)) >= u) {
                break;
            }
        }
        ran
    }

    fn run_one(&mut self, idx: u32) {
        let s = &mut self.slots[idx as usize];
        s.state &= !ACTIVE;
        let res = std::mem::take(&mut s.res);
        let (generation, flags, timeout, oneshot) = (s.generation, s.flags, s.timeout, s.state & ONESHOT != 0);
        // Out of its slot while it runs: the callback may free the event,
        // or free it and allocate another one in the same slot.
        let cb = s.cb.take();
        self.n_active -= 1;
        if !flags.contains(EventFlags::PERSIST) {
            let _ = self.del_idx(idx, false);
        } else if timeout != NO_TIMEOUT {
            // A persistent event's timeout restarts each time it runs: from
            // its previous deadline when the timeout fired (a periodic timer
            // does not drift; libevent's event_persist_closure), from now
            // when io woke it or when whole periods were missed.
            let now = self.now_ns();
            let was = self.is_pending_idx(idx);
            let next = match self.timers.last_deadline(idx) {
                Some(prev) if res.contains(EventFlags::TIMEOUT) => prev.saturating_add(timeout),
                _ => now.saturating_add(timeout),
            };
            let next = if next < now { now.saturating_add(timeout) } else { next };
            self.timers.schedule_at(idx, next, timeout);
            self.recount(idx, was);
        }
        // A signal callback runs once per delivery since it last ran
        // (libevent's ncalls).
        let calls = if res.contains(EventFlags::SIGNAL) {
            match self.sig_calls.iter().position(|(i, _)| *i == idx) {
                Some(p) => self.sig_calls.swap_remove(p).1.max(1),
                None => 1,
            }
        } else {
            1
        };
        let Some(mut cb) = cb else { return };
        let id = EventId { idx, generation };
        let mut call = |base: &mut EventBase| match &mut cb {
            Cb::Boxed(f) => f(base, id, res),
            Cb::Shared(h) => h.handle(base, id, res),
        };
        call(self);
        for _ in 1..calls {
            // Stop repeating once the event is gone or the loop must stop.
            let s = &self.slots[idx as usize];
            if s.generation != generation || s.state & ALLOCATED == 0 || s.state & INSERTED == 0 || self.break_flag {
                break;
            }
            call(self);
        }
        let s = &mut self.slots[idx as usize];
        if s.generation == generation && s.state & ALLOCATED != 0 {
            if oneshot {
                self.free(id);
            } else if s.cb.is_none() {
                s.cb = Some(cb);
            }
        }
    }

    /// Tells the base that the owner closed `fd` (after deleting its
    /// events): a changelist then forgets what the kernel already forgot.
    pub fn fd_closed(&mut self, fd: RawFd) {
        self.backend.fd_closed(fd);
    }

    // ----- fork ------------------------------------------------------------

    /// Rebuilds kernel state after `fork()` so parent and child each see only
    /// their own events: a fresh backend (no DEL on the shared one), every
    /// registered fd re-added, a new signal pipe and wake eventfd.
    #[doc(alias = "event_reinit")]
    pub fn reinit(&mut self) -> io::Result<()> {
        let need = self.backend.need_reinit();
        if need {
            let name = self.backend.name();
            self.backend = backend::create(name, 64, self.changelist)?;
        }
        if self.signals.is_some() {
            let id = self.signal_ev;
            self.del_idx(id.idx, false)?;
            if let Some(sp) = self.signals.as_mut() {
                sp.reinit()?;
                self.slots[id.idx as usize].fd = sp.read_fd();
            }
            self.add(id, None)?;
        }
        if let Some(old) = self.wake.take() {
            let id = self.wake_ev;
            self.del_idx(id.idx, false)?;
            let shared = Arc::new(WakeShared { fd: sys::eventfd()?, cmds: Mutex::new(Vec::new()) });
            if let Ok(mut q) = old.cmds.lock() {
                q.clear();
            }
            self.slots[id.idx as usize].fd = shared.fd.as_raw_fd();
            self.wake = Some(shared);
            self.add(id, None)?;
        }
        if need {
            let watched: Vec<(RawFd, EventFlags)> = self.evmap.watched().collect();
            for (fd, interest) in watched {
                self.backend.add(fd, EventFlags::NONE, interest)?;
            }
        }
        Ok(())
    }
}

impl Drop for EventBase {
    fn drop(&mut self) {
        // Callbacks may own state whose Drop touches nothing of ours; drop
        // them before the signal pipe unregisters.
        for s in &mut self.slots {
            s.cb = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ActiveQueue;

    #[test]
    fn active_queue_is_fifo_across_compaction() {
        let mut q = ActiveQueue::default();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Never drained to empty: pushes outpace pops, so the read part is
        // compacted away again and again; the order must hold throughout.
        for round in 0..50 {
            for _ in 0..300 {
                q.push_back((next_in, round, 0));
                next_in += 1;
            }
            for _ in 0..250 {
                let (v, ..) = q.pop_front().expect("entry");
                assert_eq!(v, next_out);
                next_out += 1;
            }
            assert_eq!(q.len(), (next_in - next_out) as usize);
            assert!(q.items.len() <= 2 * q.len() + 1024 + 300, "not compacted: {} for {}", q.items.len(), q.len());
        }
        while let Some((v, ..)) = q.pop_front() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert_eq!((q.len(), q.items.len(), q.head), (0, 0, 0));
        assert!(q.front().is_none());
    }
}
