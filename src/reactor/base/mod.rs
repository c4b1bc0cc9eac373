//! `EventBase`: the event loop (libevent `event.c`, redis `ae.c`), by
//! concern:
//!
//! - here: the struct, construction, queries and the loop itself
//!   ([`EventBase::run`]);
//! - `slab.rs`: event slots, their allocation, lookup and release;
//! - `events.rs`: the event API (new, add, del, active, pending,
//!   priorities, common timeouts);
//! - `dispatch.rs`: the active queues, activation of ready fds, expired
//!   timers and failed fds, and running callbacks;
//! - `handle.rs`: [`BaseHandle`], the way in from other threads;
//! - `fork.rs`: [`EventBase::reinit`] and what survives a fork.
//!
//! Signal delivery lives in `reactor/signal.rs`, timers in
//! `reactor/timer.rs`, the fd map in `reactor/evmap.rs`.

mod dispatch;
mod events;
mod fork;
mod handle;
mod slab;

pub use handle::{BaseHandle, MAX_QUEUED as MAX_QUEUED_ACTIVATIONS};

use super::backend::{self, Backend, BackendInfo, Features, Kind, Ready};
use super::config::{BaseFlags, EventConfig};
use super::event::EventId;
use super::evmap::EvMap;
use super::signal::Signals;
use super::timer::Timers;
use crate::sys::{self, Clock};
use dispatch::ActiveQueue;
use handle::Wake;
use slab::Slot;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// A slot's timeout when it has none.
const NO_TIMEOUT: u64 = u64::MAX;

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
    /// The one backend that qualified cannot be used here (io_uring
    /// missing or forbidden), and why.
    #[error("the {backend} backend is not available: {reason}")]
    Unavailable {
        /// Its name.
        backend: &'static str,
        /// Why not.
        reason: String,
    },
    /// The OS refused (every backend that qualified failed to initialise;
    /// this is the last one's error).
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

/// Most priorities a base may have: libevent's `EVENT_MAX_PRIORITIES` is
/// 256, and `event_base_priority_init` requires fewer.
pub const MAX_PRIORITIES: usize = 255;

/// An event loop.
pub struct EventBase {
    backend: Box<dyn Backend>,
    flags: BaseFlags,
    clock: Clock,
    slots: Vec<Slot>,
    free: Vec<u32>,
    evmap: EvMap,
    timers: Timers,
    /// Per priority: (slot, activation number) in activation order.
    queues: Vec<ActiveQueue>,
    n_active: usize,
    /// Queue entries of events that left the active state without running.
    stale: usize,
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
    signals: Option<Signals>,
    signal_ev: EventId,
    wake: Option<Wake>,
    wake_ev: EventId,
    ready: Ready,
    expired: Vec<u32>,
    /// Fds the backend could not watch, with the errno, until an add on
    /// the fd succeeds or the owner takes it ([`EventBase::take_fd_error`]).
    fd_errors: Vec<(RawFd, i32)>,
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
            .field("backend", &self.backend.method())
            .field("events", &(self.slots.len() - self.free.len()))
            .field("active", &self.n_active)
            .finish()
    }
}

fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128 - 1) as u64
}

/// The clock of a base: libevent's rule (`evutil_configure_monotonic_time_`)
/// is CLOCK_MONOTONIC_COARSE unless PRECISE_TIMER, whatever its tick (1 to
/// 4 ms with HZ=1000 to 250). Deadlines are then taken on the coarse clock:
/// a timer can fire up to one tick early by a precise clock, and the loop
/// may wake a tick before it is due and wait once more.
fn clock_for(flags: BaseFlags) -> Clock {
    if flags.contains(BaseFlags::PRECISE_TIMER) { Clock::Precise } else { Clock::Coarse }
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
        let flags = cfg.flags_in_force();
        let be = backend::choose(cfg, flags, cfg.capacity_hint)?;
        if !flags.contains(BaseFlags::IGNORE_ENV) && std::env::var_os("EVENT_SHOW_METHOD").is_some() {
            tracing::info!(target: "rot13d::reactor", backend = %be.method(), "event base using backend");
        }
        tracing::debug!(target: "rot13d::reactor", backend = %be.method(), ?flags, "event base created");
        Ok(EventBase {
            backend: be,
            flags,
            clock: clock_for(flags),
            slots: Vec::new(),
            free: Vec::new(),
            evmap: EvMap::default(),
            timers: Timers::default(),
            queues: vec![ActiveQueue::default()],
            n_active: 0,
            stale: 0,
            n_pending_user: 0,
            cached_now: None,
            turn_ready: 0,
            running_ready: 0,
            max_interval: cfg.max_dispatch_interval,
            max_callbacks: cfg.max_callbacks,
            min_priority: cfg.min_priority,
            starve_limit: cfg.starve_limit.filter(|&n| n > 0),
            skipped: Vec::new(),
            signals: None,
            signal_ev: EventId::INVALID,
            wake: None,
            wake_ev: EventId::INVALID,
            ready: Ready::default(),
            expired: Vec::new(),
            fd_errors: Vec::new(),
            running: false,
            break_flag: false,
            exit_flag: false,
            continue_flag: false,
            got_break: false,
            got_exit: false,
        })
    }

    // ----- queries ---------------------------------------------------------

    /// The backend in use.
    pub fn backend(&self) -> Kind {
        self.backend.kind()
    }

    /// The backend's plain name (`epoll`, `poll`, `select`): the one used
    /// in logs, the CLI and `avoid`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.kind().name()
    }

    /// libevent's method name: the backend's name, or its mode's
    /// (`epoll (with changelist)`).
    #[doc(alias = "event_base_get_method")]
    pub fn method(&self) -> &'static str {
        self.backend.method()
    }

    /// The backend's features.
    #[doc(alias = "event_base_get_features")]
    pub fn features(&self) -> Features {
        self.backend.kind().features()
    }

    /// Whether the epoll changelist is on.
    pub fn uses_changelist(&self) -> bool {
        self.backend.kind() == Kind::Epoll && self.flags.contains(BaseFlags::EPOLL_USE_CHANGELIST)
    }

    /// The flags in force (config plus environment).
    pub fn flags(&self) -> BaseFlags {
        self.flags
    }

    /// The clock the base reads (coarse unless PRECISE_TIMER).
    pub fn clock(&self) -> Clock {
        self.clock
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

    /// [`now`](Self::now) in nanoseconds (a callback that wants
    /// milliseconds divides once instead of splitting a `Duration`).
    pub fn now_nanos(&self) -> u64 {
        self.now_ns()
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
        Duration::from_nanos(self.dispatch_delay_nanos())
    }

    /// [`dispatch_delay`](Self::dispatch_delay) in nanoseconds.
    pub fn dispatch_delay_nanos(&self) -> u64 {
        if self.running_ready == 0 {
            return 0;
        }
        dur_ns(sys::monotonic(Clock::Precise)).saturating_sub(self.running_ready)
    }

    /// Refreshes the cached time (libevent's `event_base_update_cache_time`).
    #[doc(alias = "event_base_update_cache_time")]
    pub fn update_cache_time(&mut self) {
        if self.cached_now.is_some() {
            self.cached_now = Some(dur_ns(sys::monotonic(self.clock)));
        }
    }

    /// The error that made the backend give up `fd` (its events were told
    /// with [`EventFlags::ERROR`](super::EventFlags::ERROR)), once: it is
    /// forgotten when taken, and when an event on `fd` is added again.
    pub fn take_fd_error(&mut self, fd: RawFd) -> Option<io::Error> {
        let p = self.fd_errors.iter().position(|e| e.0 == fd)?;
        Some(io::Error::from_raw_os_error(self.fd_errors.swap_remove(p).1))
    }

    /// Tells the base that the owner closed `fd` (after deleting its
    /// events): a changelist then forgets what the kernel already forgot,
    /// and a data path lets go of the fd before the number is reused.
    pub fn fd_closed(&mut self, fd: RawFd) {
        self.backend.fd_closed(fd);
    }

    /// The backend's completion data path, if it has one (io_uring): what
    /// bufferevents read and send through.
    pub(crate) fn data_path(&mut self) -> Option<&mut dyn backend::DataPath> {
        self.backend.data_path()
    }

    /// Outside the loop (a bufferevent's `flush`, `enable`): submits the
    /// data path's queued sends now and collects what completed, as a
    /// write-through would; whether it did. In the loop, its next wait does.
    pub(crate) fn submit_data(&mut self) -> bool {
        !self.running && self.backend.data_path().is_some_and(|d| d.submit())
    }

    // ----- loop control ----------------------------------------------------

    /// Exits the loop after the current turn (now: `None`) or after `delay`.
    #[doc(alias = "event_base_loopexit")]
    pub fn loopexit(&mut self, delay: Option<Duration>) -> io::Result<()> {
        self.once(-1, super::EventFlags::NONE, Some(delay.unwrap_or_default()), |b, _| {
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
        let mut r = self.run_inner(flags);
        self.running = false;
        // Deleted interest a backend still holds the file for is let go
        // before the caller goes on (a closed socket must close).
        if let Err(e) = self.backend.flush()
            && r.is_ok()
        {
            r = Err(e);
        }
        // Sends a turn queued on a data path go out now, not at the next
        // wait (the caller may look for them before running the loop again).
        if let Some(d) = self.backend.data_path() {
            d.submit();
        }
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
            for &(fd, what) in &ready.events {
                self.activate_fd(fd, what);
            }
            for (fd, e) in ready.failed.drain(..) {
                self.fail_fd(fd, &e);
            }
            self.ready = ready;
            // Only a failure of the backend itself (its own fd) gets here.
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
