//! The master process: the one control plane, with or without worker
//! processes. It owns the listeners, the admin endpoint, the counters and
//! the worker table; `workers = 0` is a master whose one worker runs in its
//! own process (see `LIFECYCLE.md` beside this file).
//!
//! Signals become [`Intent`]s once, in signal events of the master's base
//! on the control lane; the loop breaks out to act on them, so every
//! `fork()` happens outside a callback, with the base idle and every signal
//! blocked (a child must not run the master's handlers).
//!
//! What the master decides is in pure functions at the end of this file
//! (unit-tested without forking): when a dead worker is replaced
//! ([`Backoff`]), whether a scheduled start is still wanted
//! ([`spawn_wanted`]), what a reload carries over and which listeners it
//! binds and closes ([`ReloadPlan`], [`listener_diff`]), when a generation
//! serves ([`generation_serves`]), what `/healthz` says ([`health`]) and
//! why a worker ended ([`exit_reason`]). The master's own metrics (workers
//! wanted and serving, restarts, reloads) are its [`Stats`], published for
//! the admin endpoint with its processes and listeners ([`Status`]).

use super::Startup;
use super::admin::{Admin, Health};
use super::config::Reactor;
use super::error::Error;
use super::listener::{self, Kind, ListenFd, Listener};
use super::metrics::{ExitReason, Metrics, ReloadResult, Slot, Stat, Stats};
use super::sample::{SharedStatus, Status};
use super::sdnotify;
use super::settings::Settings;
use super::worker::{self, LANE_CONTROL, WorkerParams};
use crate::reactor::{EventBase, EventFlags, EventId, LoopFlags};
use crate::sys::{self, process};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a signal, a timer or a worker asks of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// SIGTERM/SIGINT (graceful) or SIGQUIT (immediate).
    Stop {
        /// Drain connections first.
        graceful: bool,
    },
    /// SIGHUP.
    Reload,
    /// SIGUSR1: reopen the log file.
    ReopenLog,
    /// A signal that is logged and otherwise ignored (SIGUSR2).
    Ignore(i32),
    /// SIGCHLD: reap.
    Reap,
    /// Start worker `index` of `generation` (a replacement after a death).
    Spawn {
        /// The generation it belongs to.
        generation: u32,
        /// Its index.
        index: usize,
    },
    /// A worker reported that it serves.
    Ready(WorkerId),
    /// The in-process worker's drain ended.
    Done(WorkerId),
    /// A new generation's start-up bound passed.
    StartTimeout(u32),
    /// The stop deadline passed: kill what is left.
    Deadline,
    /// Time for the liveness check of the forked workers.
    Liveness,
}

/// Commands of the master to a worker over its channel.
pub mod command {
    /// Retire: drain as at a graceful stop (the master's reload).
    pub const RETIRE: u8 = b'R';
    /// The log file was reopened: the new one comes with the message.
    pub const LOG_FILE: u8 = b'L';
    /// From a worker: it serves.
    pub const READY: u8 = b'Y';
    /// Liveness check: a worker answers [`ALIVE`] from its loop.
    pub const PING: u8 = b'P';
    /// From a worker: the answer to [`PING`].
    pub const ALIVE: u8 = b'A';
}

/// A worker's handle (never reused, unlike pids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet serving.
    Starting,
    /// Serving its generation's listeners.
    Serving,
    /// Draining: told to retire (or stop); exits when its connections end.
    Retiring,
}

/// The decision-relevant part of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    /// Its generation.
    pub generation: u32,
    /// Its index in the generation (which reuseport sockets it serves).
    pub index: usize,
    /// Its phase.
    pub phase: Phase,
    /// Its loop has not answered the liveness check for half of
    /// `worker_timeout`: it does not count as serving ([`liveness`]).
    pub late: bool,
}

/// How many deaths within [`DEATH_WINDOW`] start the backoff.
const DEATHS_BEFORE_BACKOFF: usize = 5;
const DEATH_WINDOW: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that exited 0 on its own is replaced after this long.
const CLEAN_EXIT_RESPAWN: Duration = Duration::from_millis(200);
/// Extra time after shutdown_grace before left-over workers are killed.
const STOP_SLACK: Duration = Duration::from_secs(5);
/// A new generation must serve within this long, or it is stopped and the
/// old one kept.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How a worker runs.
enum Proc {
    /// A child process, with the master's end of its channel.
    Forked { pid: i32, channel: Rc<OwnedFd>, ev: EventId },
    /// In the master's process (`workers = 0`).
    Local { shared: Rc<worker::Shared> },
}

struct Worker {
    id: WorkerId,
    role: Role,
    slot: Slot,
    proc: Proc,
    /// When its loop last said something on its channel (its start, READY,
    /// an answer to a liveness ping).
    seen: Rc<std::cell::Cell<Instant>>,
    /// When the last liveness ping was sent, and how many in a row went
    /// unanswered until the next one.
    pinged: Option<Instant>,
    missed: u32,
    /// Killed for not answering: its death is counted as `unresponsive`.
    unresponsive: bool,
}

impl Worker {
    /// A worker just started: not pinged yet.
    fn new(id: WorkerId, role: Role, slot: Slot, proc: Proc, seen: Rc<std::cell::Cell<Instant>>) -> Worker {
        Worker { id, role, slot, proc, seen, pinged: None, missed: 0, unresponsive: false }
    }
}

/// A generation: the settings its workers run with.
#[derive(Clone, Debug)]
struct Generation {
    id: u32,
    settings: Settings,
    /// The event backend its workers use.
    backend: &'static str,
}

impl Generation {
    /// Worker indices it wants: 0 = one in-process worker.
    fn wanted(&self) -> usize {
        self.settings.workers.max(1)
    }

    fn in_process(&self) -> bool {
        self.settings.workers == 0
    }
}

/// The master's state.
pub struct Master {
    startup: Startup,
    base: EventBase,
    /// The `[reactor]` the master's base was built with (a new generation
    /// that asks for another builds a base of its own in each worker).
    base_reactor: Reactor,
    listeners: Vec<Listener>,
    admin: Option<Rc<Admin>>,
    health: Health,
    metrics: Rc<Metrics>,
    /// The master's own metrics.
    stats: Stats,
    /// What the admin endpoint shows of the master (see `sample.rs`).
    status: SharedStatus,
    workers: Vec<Worker>,
    current: Generation,
    /// A reload's new generation while it starts.
    pending: Option<Generation>,
    next_generation: u32,
    next_worker: u64,
    intents: Rc<RefCell<VecDeque<Intent>>>,
    backoff: Backoff,
    /// The liveness timer and the period it runs at (none: off).
    liveness: Option<(EventId, Duration)>,
    stopping: bool,
    pid: i32,
    /// READY=1 has been sent for the first generation.
    started: bool,
}

impl Master {
    /// Builds the master on a bound set of listeners.
    pub fn new(
        startup: Startup,
        settings: Settings,
        base: EventBase,
        listeners: Vec<Listener>,
    ) -> Result<Master, Error> {
        let metrics = Rc::new(Metrics::new().map_err(|e| Error::os("map the shared counters", e))?);
        let mut stats = Stats::default();
        // The configuration in use was loaded now.
        stats.set(Stat::ReloadSuccessTime, epoch_seconds());
        stats.set(Stat::ReloadSuccessful, 1.0);
        Ok(Master {
            startup,
            base_reactor: settings.config.reactor.clone(),
            current: Generation { id: 1, settings, backend: base.backend_name() },
            base,
            listeners,
            admin: None,
            health: Rc::new(RefCell::new(Some("starting".to_string()))),
            metrics,
            stats,
            status: SharedStatus::default(),
            workers: Vec::new(),
            pending: None,
            next_generation: 2,
            next_worker: 1,
            intents: Rc::new(RefCell::new(VecDeque::new())),
            backoff: Backoff::default(),
            liveness: None,
            stopping: false,
            pid: process::getpid(),
            started: false,
        })
    }

    fn push(intents: &Rc<RefCell<VecDeque<Intent>>>, base: &mut EventBase, i: Intent) {
        intents.borrow_mut().push_back(i);
        base.loopbreak();
    }

    /// A timer on the control lane that queues `intent` after `after`.
    fn after(&mut self, after: Duration, intent: Intent) {
        let q = self.intents.clone();
        match self.base.once(-1, EventFlags::NONE, Some(after), move |base, _| Master::push(&q, base, intent)) {
            Ok(id) => {
                let _ = self.base.set_priority(id, LANE_CONTROL);
            }
            Err(e) => tracing::error!(target: "rot13d", error = %e, ?intent, "cannot arm a timer"),
        }
    }

    fn watch_signals(&mut self) -> Result<(), Error> {
        let table = [
            (libc::SIGTERM, Intent::Stop { graceful: true }),
            (libc::SIGINT, Intent::Stop { graceful: true }),
            (libc::SIGQUIT, Intent::Stop { graceful: false }),
            (libc::SIGHUP, Intent::Reload),
            (libc::SIGCHLD, Intent::Reap),
            (libc::SIGUSR1, Intent::ReopenLog),
            (libc::SIGUSR2, Intent::Ignore(libc::SIGUSR2)),
        ];
        for (sig, intent) in table {
            let q = self.intents.clone();
            let id = self.base.new_signal(sig, move |base, _, _| Master::push(&q, base, intent));
            self.base.set_priority(id, LANE_CONTROL).map_err(Error::Reactor)?;
            self.base.add(id, None).map_err(|e| Error::os("install signal handlers", e))?;
        }
        if let Some(every) = sdnotify::watchdog_interval() {
            let wd = self.base.new_event(-1, EventFlags::PERSIST, |_, _, _| sdnotify::notify("WATCHDOG=1"));
            self.base.set_priority(wd, LANE_CONTROL).map_err(Error::Reactor)?;
            self.base.add(wd, Some(every)).map_err(|e| Error::os("start the watchdog timer", e))?;
        }
        Ok(())
    }

    /// Serves the admin endpoint on the current admin listener (none: off).
    fn sync_admin(&mut self) {
        let fd = self.listeners.iter().find(|l| l.kind == Kind::Admin).and_then(|l| l.socks.first().cloned());
        let same = match (&self.admin, &fd) {
            (Some(a), Some(f)) => Rc::ptr_eq(a.fd(), f),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(a) = self.admin.take() {
            a.stop(&mut self.base);
        }
        if let Some(fd) = fd {
            match Admin::start(&mut self.base, fd, self.metrics.clone(), self.status.clone(), self.health.clone()) {
                Ok(a) => self.admin = Some(a),
                Err(e) => tracing::error!(target: "rot13d", error = %e, "cannot serve the admin endpoint"),
            }
        }
    }

    /// Runs until stopped; returns when every worker is gone.
    pub fn run(mut self) -> Result<(), Error> {
        self.watch_signals()?;
        self.sync_admin();
        self.arm_liveness();
        let first = self.current.clone();
        for index in 0..first.wanted() {
            self.start_worker(&first, index)?;
        }
        tracing::info!(target: "rot13d", workers = self.current.settings.workers, pid = self.pid, "master running");
        loop {
            // Intents queued outside a callback (the in-process worker's
            // readiness) are handled before the loop waits.
            loop {
                let next = self.intents.borrow_mut().pop_front();
                let Some(intent) = next else { break };
                self.handle(intent);
            }
            self.update_health();
            if self.stopping && self.workers.is_empty() {
                tracing::info!(target: "rot13d", "stopped");
                return Ok(());
            }
            self.base.run(LoopFlags::NO_EXIT_ON_EMPTY).map_err(Error::Reactor)?;
        }
    }

    /// Publishes what `/healthz` and `/metrics` say (after every intent).
    fn update_health(&mut self) {
        let roles: Vec<Role> = self.workers.iter().map(|w| w.role).collect();
        let pending = self.pending.as_ref().map(|g| g.id);
        let wanted = self.current.wanted();
        *self.health.borrow_mut() = health(self.stopping, self.current.id, wanted, pending, &roles);
        self.stats.set(Stat::WorkersWanted, wanted as f64);
        self.stats.set(Stat::WorkersUnresponsive, roles.iter().filter(|r| r.late).count() as f64);
        self.stats.set(Stat::WorkersServing, serving(self.current.id, wanted, &roles) as f64);
        let mut status = self.status.borrow_mut();
        *status = Status {
            stats: self.stats,
            backend: self.current.backend,
            processes: std::iter::once(("master", self.pid))
                .chain(self.workers.iter().filter_map(|w| match w.proc {
                    Proc::Forked { pid, .. } => Some(("worker", pid)),
                    Proc::Local { .. } => None,
                }))
                .collect(),
            listeners: self
                .listeners
                .iter()
                .filter(|l| l.kind == Kind::Rot13)
                .flat_map(|l| l.socks.iter().map(Rc::downgrade))
                .collect(),
        };
    }

    fn handle(&mut self, intent: Intent) {
        match intent {
            Intent::Stop { graceful: true } => self.stop_graceful(),
            Intent::Stop { graceful: false } => self.stop_now(),
            Intent::Reload if !self.stopping => self.reload(),
            Intent::Reload => {}
            Intent::ReopenLog => self.reopen_log(),
            Intent::Ignore(sig) => {
                tracing::info!(target: "rot13d", signal = process::signal_name(sig), "signal ignored");
            }
            Intent::Reap => self.reap(),
            Intent::Ready(id) => self.ready(id),
            Intent::Done(id) => self.exited(id, None),
            Intent::Spawn { generation, index } => {
                let roles: Vec<Role> = self.workers.iter().map(|w| w.role).collect();
                let gens = [Some(&self.current), self.pending.as_ref()];
                let Some(cohort) = gens.into_iter().flatten().find(|g| g.id == generation).cloned() else { return };
                if !self.stopping
                    && spawn_wanted(generation, index, cohort.wanted(), &roles)
                    && let Err(e) = self.start_worker(&cohort, index)
                {
                    self.start_failed(&e, generation, index);
                }
            }
            Intent::StartTimeout(g) => self.start_timed_out(g),
            Intent::Liveness => self.check_liveness(),
            Intent::Deadline => {
                for w in &self.workers {
                    if let Proc::Forked { pid, .. } = w.proc {
                        tracing::warn!(target: "rot13d", pid, "worker still running after the grace period: killing");
                        let _ = sys::signal::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Runs the liveness check every quarter of the current generation's
    /// `worker_timeout` (none with 0, or with the in-process worker, whose
    /// loop is the master's own); re-armed when a reload changes it.
    fn arm_liveness(&mut self) {
        let timeout = self.current.settings.config.server.worker_timeout;
        let every = (!timeout.is_zero() && !self.current.in_process()).then(|| liveness_period(timeout));
        if self.liveness.map(|(_, p)| p) == every {
            return;
        }
        if let Some((ev, _)) = self.liveness.take() {
            self.base.free(ev);
        }
        // The count of unanswered pings starts again at the new period.
        for w in &mut self.workers {
            (w.pinged, w.missed) = (None, 0);
        }
        let Some(every) = every else { return };
        let q = self.intents.clone();
        let ev =
            self.base.new_event(-1, EventFlags::PERSIST, move |base, _, _| Master::push(&q, base, Intent::Liveness));
        let _ = self.base.set_priority(ev, LANE_CONTROL);
        match self.base.add(ev, Some(every)) {
            Ok(()) => self.liveness = Some((ev, every)),
            Err(e) => {
                tracing::error!(target: "rot13d", error = %e, "cannot start the liveness check of the workers");
                self.base.free(ev);
            }
        }
    }

    /// The liveness check: every forked worker is judged by how many
    /// pings in a row its loop left unanswered ([`liveness`]), then pinged
    /// again: a late one stops counting as serving, a dead one is killed
    /// (SIGKILL) and, reaped, replaced as any worker that died.
    fn check_liveness(&mut self) {
        let timeout = self.current.settings.config.server.worker_timeout;
        let now = Instant::now();
        for w in &mut self.workers {
            let Proc::Forked { pid, channel, .. } = &w.proc else { continue };
            if w.unresponsive {
                continue;
            }
            if let Some(at) = w.pinged {
                w.missed = if w.seen.get() >= at { 0 } else { w.missed + 1 };
            }
            let silent = now.saturating_duration_since(w.seen.get());
            match liveness(w.missed) {
                Liveness::Alive => w.role.late = false,
                Liveness::Late => {
                    if !w.role.late {
                        tracing::warn!(target: "rot13d", pid, silent_ms = silent.as_millis() as u64,
                            "worker not responding: no longer counted as serving");
                    }
                    w.role.late = true;
                }
                Liveness::Dead => {
                    tracing::error!(target: "rot13d", pid, silent_ms = silent.as_millis() as u64,
                        timeout_s = timeout.as_secs_f64(), "worker not responding: killing it");
                    w.role.late = true;
                    w.unresponsive = true;
                    let _ = sys::signal::kill(*pid, libc::SIGKILL);
                    continue;
                }
            }
            // A full or failed channel is the worker's silence to judge,
            // not an error of the master's.
            let _ = process::send_command(channel.as_fd(), command::PING, None);
            w.pinged = Some(now);
        }
    }

    fn schedule_spawn(&mut self, generation: u32, index: usize, after: Duration) {
        self.after(after, Intent::Spawn { generation, index });
    }

    /// Worker `index` of `generation` could not be started: logged with
    /// the reason, retried after a delay that grows while starts keep
    /// failing.
    fn start_failed(&mut self, e: &Error, generation: u32, index: usize) {
        let retry = self.backoff.on_start_failure();
        tracing::error!(target: "rot13d", error = %e, index, generation, retry_s = retry.as_secs(),
            "cannot start a worker");
        self.schedule_spawn(generation, index, retry);
    }

    /// Starts worker `index` of generation `cohort` and records the outcome
    /// in the backoff: a start that succeeds, forked or in-process, ends a
    /// run of failed ones (a failure is recorded by [`Master::start_failed`]
    /// where it is retried; the first generation's is fatal).
    fn start_worker(&mut self, cohort: &Generation, index: usize) -> Result<(), Error> {
        let started = self.launch(cohort, index);
        if started.is_ok() {
            self.backoff.on_started();
        }
        started
    }

    /// The start itself: a child process, or the in-process worker with
    /// `workers = 0`.
    fn launch(&mut self, cohort: &Generation, index: usize) -> Result<(), Error> {
        let slot = self.metrics.acquire().map_err(|e| Error::os("map the shared counters", e))?;
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let role = Role { generation: cohort.id, index, phase: Phase::Starting, late: false };
        let seen = Rc::new(std::cell::Cell::new(Instant::now()));
        let params = WorkerParams::new(&cohort.settings);
        let fds: Vec<ListenFd> = self
            .listeners
            .iter()
            .filter(|l| l.kind == Kind::Rot13 && cohort.settings.config.server.listen.contains(&l.requested))
            .flat_map(|l| l.fds_for(index, cohort.settings.workers))
            .collect();
        if cohort.in_process() {
            let q = self.intents.clone();
            let on_done: worker::OnDone = Box::new(move |base| Master::push(&q, base, Intent::Done(id)));
            let shared = match worker::start(&mut self.base, fds, params, slot.clone(), on_done) {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.release(&slot);
                    return Err(Error::Reactor(e));
                }
            };
            worker::log_reactor(&self.base, self.pid, cohort.id);
            let proc = Proc::Local { shared };
            self.workers.push(Worker::new(id, role, slot, proc, seen));
            Master::push(&self.intents, &mut self.base, Intent::Ready(id));
            return Ok(());
        }
        let (ours, theirs) = channel().map_err(|e| Error::os("create a worker channel", e))?;
        let mask = sys::signal::block_all();
        let forked = process::fork();
        match forked {
            Ok(process::Fork::Child) => {
                drop(ours);
                let code = self.worker_main(cohort, fds, params, slot, theirs);
                process::exit_now(code);
            }
            Ok(process::Fork::Parent(pid)) => {
                sys::signal::restore_mask(mask);
                drop(theirs);
                let ours = Rc::new(ours);
                let ev = self.watch_channel(&ours, id, seen.clone());
                let proc = Proc::Forked { pid, channel: ours, ev };
                self.workers.push(Worker::new(id, role, slot, proc, seen));
                tracing::debug!(target: "rot13d", pid, index, generation = cohort.id, "worker started");
                Ok(())
            }
            Err(e) => {
                sys::signal::restore_mask(mask);
                self.metrics.release(&slot);
                Err(Error::os("fork a worker", e))
            }
        }
    }

    /// Reads a worker's reports (READY, answers to liveness pings) on the
    /// control lane; whatever it says shows its loop turns (`seen`).
    fn watch_channel(&mut self, ch: &Rc<OwnedFd>, id: WorkerId, seen: Rc<std::cell::Cell<Instant>>) -> EventId {
        let q = self.intents.clone();
        let ch = ch.clone();
        let fd = ch.as_raw_fd();
        let ev = self.base.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |base, ev, _| {
            loop {
                match process::recv_command(ch.as_fd()) {
                    Ok(Some((command::READY, _))) => {
                        seen.set(Instant::now());
                        Master::push(&q, base, Intent::Ready(id));
                    }
                    Ok(Some(_)) => seen.set(Instant::now()),
                    // Gone (SIGCHLD tells the rest), or a failed channel:
                    // stop watching it, it would only spin.
                    Ok(None) => {
                        let _ = base.del(ev);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        let _ = base.del(ev);
                        break;
                    }
                }
            }
        });
        let _ = self.base.set_priority(ev, LANE_CONTROL);
        if let Err(e) = self.base.add(ev, None) {
            tracing::warn!(target: "rot13d", error = %e, "cannot watch a worker's channel");
        }
        ev
    }

    /// The child side of `start_worker`: never returns to the master's
    /// code. Everything of the master's that the worker does not use is
    /// dropped here, so that the worker holds no copy of another worker's
    /// channel, of a listener it does not serve, or of an admin socket.
    fn worker_main(
        &mut self,
        cohort: &Generation,
        fds: Vec<ListenFd>,
        params: WorkerParams,
        slot: Slot,
        channel: OwnedFd,
    ) -> i32 {
        if let Err(e) = self.base.reinit() {
            tracing::error!(target: "rot13d", error = %e, "worker cannot reinit its event base");
            return 71;
        }
        // Nothing of the master's runs here: its signal, timer, channel and
        // admin events all go, before their fds are closed below.
        self.base.free_all();
        self.admin = None;
        self.listeners.clear();
        self.workers.clear();
        // A generation with another [reactor] gets a base of its own (the
        // master's, cleaned above, shares nothing with it after reinit).
        if cohort.settings.config.reactor != self.base_reactor {
            match super::build_base(&cohort.settings) {
                Ok(fresh) => drop(std::mem::replace(&mut self.base, fresh)),
                Err(e) => {
                    tracing::error!(target: "rot13d", error = %e, "worker cannot build its event base");
                    return 71;
                }
            }
        }
        // SIGHUP is for the master; a terminal hangup must not kill workers.
        sys::signal::ignore(libc::SIGHUP);
        if let Err(e) = super::drop_privileges(&cohort.settings) {
            tracing::error!(target: "rot13d", error = %e, "worker cannot drop privileges");
            return 71;
        }
        // A worker must not outlive its master. Changing identity clears
        // the parent-death signal, so it is set after, and the parent
        // checked after that (it may have died in between).
        if let Err(e) = process::set_parent_death_signal(libc::SIGTERM) {
            tracing::error!(target: "rot13d", error = %e, "worker cannot watch its master");
            return 71;
        }
        if process::getppid() != self.pid {
            return 0;
        }
        match super::serve_forked(&mut self.base, fds, params, slot, cohort.id, channel) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(target: "rot13d", error = %e, "worker failed");
                e.exit_code() as i32
            }
        }
    }

    fn ready(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == id)
            && w.role.phase == Phase::Starting
        {
            w.role.phase = Phase::Serving;
        }
        self.check_generations();
    }

    /// Promotes a pending generation that serves; READY=1 for the first.
    fn check_generations(&mut self) {
        if self.stopping {
            return;
        }
        let roles: Vec<Role> = self.workers.iter().map(|w| w.role).collect();
        if let Some(p) = &self.pending
            && generation_serves(p.id, p.wanted(), &roles)
        {
            let new = self.pending.take().unwrap_or_else(|| self.current.clone());
            self.promote(new);
            return;
        }
        if !self.started && generation_serves(self.current.id, self.current.wanted(), &roles) {
            self.started = true;
            let n = roles.iter().filter(|r| r.generation == self.current.id).count();
            tracing::info!(target: "rot13d", workers = n, generation = self.current.id, "ready");
            sdnotify::notify("READY=1");
        }
    }

    /// The new generation serves: the old one retires, listeners it alone
    /// used close, the admin endpoint moves if asked.
    fn promote(&mut self, new: Generation) {
        let old = std::mem::replace(&mut self.current, new);
        for i in 0..self.workers.len() {
            if self.workers[i].role.generation != self.current.id {
                self.retire(i);
            }
        }
        self.prune_listeners();
        self.sync_admin();
        self.arm_liveness();
        self.started = true;
        let n = self.workers.iter().filter(|w| w.role.generation == self.current.id).count();
        tracing::info!(target: "rot13d", workers = n, generation = self.current.id, "ready");
        tracing::info!(target: "rot13d", generation = self.current.id, previous = old.id,
            workers = self.current.settings.workers, "reloaded");
        self.stats.reloaded(ReloadResult::Ok, epoch_seconds());
        sdnotify::notify("READY=1");
    }

    /// Tells worker `i` to drain (a reload retires it).
    fn retire(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.role.phase == Phase::Retiring {
            return;
        }
        w.role.phase = Phase::Retiring;
        match &w.proc {
            Proc::Forked { pid, channel, .. } => {
                if let Err(e) = process::send_command(channel.as_fd(), command::RETIRE, None) {
                    tracing::warn!(target: "rot13d", pid, error = %e, "cannot tell a worker to retire: stopping it");
                    let _ = sys::signal::kill(*pid, libc::SIGTERM);
                }
            }
            Proc::Local { shared } => shared.clone().begin_drain(&mut self.base, true),
        }
    }

    /// Closes the listeners no live generation wants (their last serving
    /// workers hold their own copies until they drain).
    fn prune_listeners(&mut self) {
        let mut want = super::wanted_listeners(&self.current.settings);
        if let Some(p) = &self.pending {
            want.extend(super::wanted_listeners(&p.settings));
        }
        let mut kept = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            if want.contains(&(l.requested, l.kind)) {
                kept.push(l);
            } else {
                tracing::info!(target: "rot13d", addr = %l.local, kind = %l.kind.as_str(), "listener closed");
                for w in &self.workers {
                    if let Proc::Local { shared } = &w.proc {
                        for s in &l.socks {
                            shared.remove_listener(&mut self.base, s.as_raw_fd());
                        }
                    }
                }
            }
        }
        self.listeners = kept;
    }

    fn start_timed_out(&mut self, g: u32) {
        if self.pending.as_ref().is_none_or(|p| p.id != g) {
            return;
        }
        self.pending = None;
        tracing::error!(target: "rot13d", generation = g, keeping = self.current.id, timeout_s = START_TIMEOUT.as_secs(),
            "reload failed: the new generation did not serve in time; keeping the running one");
        self.stats.reloaded(ReloadResult::Timeout, epoch_seconds());
        for i in 0..self.workers.len() {
            if self.workers[i].role.generation == g {
                self.retire(i);
            }
        }
        self.prune_listeners();
        sdnotify::notify("READY=1");
    }

    fn reopen_log(&mut self) {
        let Some(path) = self.current.settings.config.log.file.clone() else {
            tracing::info!(target: "rot13d", signal = "SIGUSR1", "signal ignored: the log goes to stderr");
            return;
        };
        match super::logging::reopen(&path) {
            Ok(file) => {
                for w in &self.workers {
                    if let Proc::Forked { pid, channel, .. } = &w.proc
                        && let Err(e) = process::send_command(channel.as_fd(), command::LOG_FILE, Some(file.as_fd()))
                    {
                        tracing::warn!(target: "rot13d", pid, error = %e, "cannot hand the new log file to a worker");
                    }
                }
                tracing::info!(target: "rot13d", file = %path.display(), "log file reopened");
            }
            Err(e) => {
                tracing::error!(target: "rot13d", file = %path.display(), error = %e, "cannot reopen the log file")
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let (pid, status) = match process::try_wait_any() {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "rot13d", error = %e, "waitpid failed");
                    break;
                }
            };
            let Some(id) =
                self.workers.iter().find(|w| matches!(w.proc, Proc::Forked { pid: p, .. } if p == pid)).map(|w| w.id)
            else {
                continue;
            };
            self.exited(id, Some((pid, status)));
        }
    }

    /// Worker `id` is gone (reaped, or the in-process drain ended).
    fn exited(&mut self, id: WorkerId, how: Option<(i32, process::ExitStatus)>) {
        let Some(pos) = self.workers.iter().position(|w| w.id == id) else { return };
        let w = self.workers.swap_remove(pos);
        self.metrics.release(&w.slot);
        if let Proc::Forked { ev, .. } = w.proc {
            self.base.free(ev);
        }
        let (pid, status) = how.unwrap_or((self.pid, process::ExitStatus::Code(0)));
        let role = w.role;
        if role.phase == Phase::Retiring || self.stopping {
            tracing::info!(target: "rot13d", pid, %status, generation = role.generation, "worker exited");
        } else {
            tracing::warn!(target: "rot13d", pid, %status, index = role.index, generation = role.generation, "worker died");
            let reason = if w.unresponsive { ExitReason::Unresponsive } else { exit_reason(status) };
            self.stats.add(Stat::restart(reason), 1.0);
            let clean = status == process::ExitStatus::Code(0);
            let delay = self.backoff.on_death(Instant::now(), clean);
            if self.backoff.backing_off() && !clean {
                tracing::warn!(target: "rot13d", backoff_s = delay.as_secs(), "workers keep dying: backing off");
            }
            if delay.is_zero() {
                Master::push(
                    &self.intents,
                    &mut self.base,
                    Intent::Spawn { generation: role.generation, index: role.index },
                );
            } else {
                self.schedule_spawn(role.generation, role.index, delay);
            }
        }
        if self.stopping && self.workers.is_empty() {
            self.base.loopbreak();
        }
    }

    fn stop_graceful(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(target: "rot13d", workers = self.workers.len(), "graceful stop");
        sdnotify::notify("STOPPING=1");
        // New clients are refused once every copy of the listeners is
        // closed: ours now, the workers' as they begin to drain. The admin
        // endpoint keeps answering until the master exits: `/healthz` says
        // 503 `stopping` (SPEC §3) and `/metrics` shows the drain.
        self.listeners.clear();
        for w in &self.workers {
            match &w.proc {
                Proc::Forked { pid, .. } => {
                    let _ = sys::signal::kill(*pid, libc::SIGTERM);
                }
                Proc::Local { shared } => shared.clone().begin_drain(&mut self.base, false),
            }
        }
        let after = self.current.settings.config.server.shutdown_grace + STOP_SLACK;
        self.after(after, Intent::Deadline);
        if self.workers.is_empty() {
            self.base.loopbreak();
        }
    }

    fn stop_now(&mut self) {
        tracing::info!(target: "rot13d", workers = self.workers.len(), "immediate stop");
        sdnotify::notify("STOPPING=1");
        self.stopping = true;
        self.listeners.clear();
        let mut left: Vec<i32> = Vec::new();
        for w in &self.workers {
            if let Proc::Forked { pid, .. } = w.proc {
                let _ = sys::signal::kill(pid, libc::SIGKILL);
                left.push(pid);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(800);
        while !left.is_empty() && Instant::now() < deadline {
            match process::try_wait_any() {
                Ok(Some((pid, _))) => left.retain(|p| *p != pid),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        // In-process connections close with the process, unflushed.
        self.workers.clear();
        self.base.loopbreak();
    }

    /// SIGHUP: one reload path for every worker count. A valid new
    /// configuration is planned against the running one (what carries over,
    /// which listeners to bind); the new generation starts beside the old,
    /// which retires only once every new worker serves, or keeps serving if
    /// the new one does not within [`START_TIMEOUT`]. The in-process worker
    /// is updated in place (see LIFECYCLE.md).
    fn reload(&mut self) {
        tracing::info!(target: "rot13d", "reload requested");
        sdnotify::notify("RELOADING=1");
        if let Some(p) = self.pending.take() {
            tracing::warn!(target: "rot13d", generation = p.id, "a newer reload supersedes the one still starting");
            self.stats.reloaded(ReloadResult::Superseded, epoch_seconds());
            for i in 0..self.workers.len() {
                if self.workers[i].role.generation == p.id {
                    self.retire(i);
                }
            }
        }
        let new = match Settings::load(&self.startup.args, &self.startup.host, &self.startup.pinned) {
            Ok(s) => s,
            Err(e) => {
                for p in e.problems() {
                    tracing::error!(target: "rot13d", problem = %p, "reload failed: configuration invalid; keeping the running one");
                }
                self.stats.reloaded(ReloadResult::Invalid, epoch_seconds());
                self.prune_listeners();
                sdnotify::notify("READY=1");
                return;
            }
        };
        let plan = ReloadPlan::new(&self.current.settings, new);
        for w in &plan.warnings {
            tracing::warn!(target: "rot13d", "{w}");
        }
        if let Err(e) = self.apply(plan) {
            tracing::error!(target: "rot13d", error = %e, "reload failed: keeping the running configuration");
            self.stats.reloaded(ReloadResult::Failed, epoch_seconds());
            self.prune_listeners();
            sdnotify::notify("READY=1");
        }
    }

    fn apply(&mut self, plan: ReloadPlan) -> Result<(), Error> {
        let settings = plan.settings;
        // A new [reactor] applies to the new generation: each of its workers
        // builds a base of its own. Check now that one can be built.
        let backend = if settings.config.reactor != self.base_reactor {
            super::build_base(&settings)?.backend_name()
        } else {
            self.base.backend_name()
        };
        // Listeners: bind what is new, grow groups to the new worker count.
        let have: Vec<(SocketAddr, Kind)> = self.listeners.iter().map(|l| (l.requested, l.kind)).collect();
        let want = super::wanted_listeners(&settings);
        let (bind, _) = listener_diff(&have, &want);
        let group = settings.workers.max(1);
        for l in self.listeners.iter_mut().filter(|l| l.kind == Kind::Rot13) {
            l.grow(group)?;
        }
        for (addr, kind) in bind {
            let server = &settings.config.server;
            let l = listener::bind(addr, server.backlog, kind, group, server.ipv6_only)?;
            tracing::info!(target: "rot13d", addr = %l.local, kind = %kind.as_str(), "listening");
            self.listeners.push(l);
        }
        let cohort = Generation { id: self.next_generation, settings, backend };
        self.next_generation += 1;
        if cohort.in_process() {
            // The one in-process worker takes the new settings for new
            // connections and the new listener set.
            let local: Vec<Rc<worker::Shared>> = self
                .workers
                .iter_mut()
                .filter_map(|w| match &w.proc {
                    Proc::Local { shared } if w.role.phase != Phase::Retiring => {
                        w.role.generation = cohort.id;
                        Some(shared.clone())
                    }
                    _ => None,
                })
                .collect();
            for shared in local {
                shared.set_params(&mut self.base, WorkerParams::new(&cohort.settings));
                let serving = shared.listener_fds();
                let fds: Vec<ListenFd> = self
                    .listeners
                    .iter()
                    .filter(|l| l.kind == Kind::Rot13 && cohort.settings.config.server.listen.contains(&l.requested))
                    .flat_map(|l| l.socks.iter().cloned())
                    .filter(|f| !serving.contains(&f.as_raw_fd()))
                    .collect();
                for fd in fds {
                    if let Err(e) = shared.add_listener(&mut self.base, fd) {
                        tracing::error!(target: "rot13d", error = %e, "cannot accept on a new listener");
                    }
                }
            }
            self.pending = Some(cohort);
            self.check_generations();
            return Ok(());
        }
        for index in 0..cohort.wanted() {
            if let Err(e) = self.start_worker(&cohort, index) {
                self.start_failed(&e, cohort.id, index);
            }
        }
        self.after(START_TIMEOUT, Intent::StartTimeout(cohort.id));
        self.pending = Some(cohort);
        Ok(())
    }
}

/// A connected, non-blocking, close-on-exec pair of sequenced-packet
/// sockets: the master's end and the worker's.
fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    Ok(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC)?)
}

// ---------------------------------------------------------------------------
// Decisions, pure.

/// When a dead worker is replaced: at once, unless more than
/// [`DEATHS_BEFORE_BACKOFF`] died within [`DEATH_WINDOW`]; then after a
/// delay doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`]. A worker that
/// exited 0 on its own (a SIGTERM to the whole control group, which the
/// master is about to get too) is replaced after [`CLEAN_EXIT_RESPAWN`],
/// not counted as a crash.
///
/// A worker that cannot even be started (fork, its channel or its counters
/// failed: a process or fd limit, memory) is retried after [`BACKOFF_MIN`],
/// doubled for each further failure in a row, up to [`BACKOFF_MAX`]; a
/// start that succeeds ends the run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    deaths: VecDeque<Instant>,
    delay: Duration,
    /// The delay after the last failed start; zero once one succeeds.
    start_delay: Duration,
}

impl Backoff {
    /// A start failed; the delay before the next attempt.
    pub fn on_start_failure(&mut self) -> Duration {
        self.start_delay = doubled(self.start_delay);
        self.start_delay
    }

    /// A worker was started.
    pub fn on_started(&mut self) {
        self.start_delay = Duration::ZERO;
    }

    /// Records a death at `now`; the delay before its replacement.
    pub fn on_death(&mut self, now: Instant, clean_exit: bool) -> Duration {
        if clean_exit {
            return CLEAN_EXIT_RESPAWN;
        }
        self.deaths.push_back(now);
        while self.deaths.front().is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW) {
            self.deaths.pop_front();
        }
        if self.deaths.len() > DEATHS_BEFORE_BACKOFF {
            self.delay = doubled(self.delay);
        } else {
            self.delay = Duration::ZERO;
        }
        self.delay
    }

    /// Whether replacements wait now.
    pub fn backing_off(&self) -> bool {
        !self.delay.is_zero()
    }
}

/// The next delay of a backoff run: twice `d`, from [`BACKOFF_MIN`] (when
/// `d` is zero) up to [`BACKOFF_MAX`].
fn doubled(d: Duration) -> Duration {
    (d * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// Whether a scheduled start of worker `index` of `generation` is still
/// wanted: the generation wants that many workers (a reload may have
/// shrunk it) and none of it holds that index yet.
pub fn spawn_wanted(generation: u32, index: usize, wanted: usize, roles: &[Role]) -> bool {
    index < wanted
        && !roles.iter().any(|r| r.generation == generation && r.index == index && r.phase != Phase::Retiring)
}

/// How often the liveness check runs: a quarter of `worker_timeout`, at
/// least every 10 ms.
pub fn liveness_period(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(10))
}

/// What the liveness check makes of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It answered the last ping.
    Alive,
    /// It left the last ping unanswered for a whole period: its loop has
    /// been silent for half of `worker_timeout` or more. Not counted as
    /// serving.
    Late,
    /// Three pings in a row unanswered: silent for the whole timeout.
    /// Killed and replaced.
    Dead,
}

/// The verdict on a worker that left the last `missed` pings (sent a
/// [`liveness_period`] apart) unanswered. Counting pings rather than
/// comparing times with the timeout leaves no verdict to the jitter of
/// the timer: its last answer came just after a ping, so its silence is
/// always a whole number of periods at a check.
pub fn liveness(missed: u32) -> Liveness {
    match missed {
        0 => Liveness::Alive,
        1 | 2 => Liveness::Late,
        _ => Liveness::Dead,
    }
}

/// Whether every wanted worker of `generation` serves.
pub fn generation_serves(generation: u32, wanted: usize, roles: &[Role]) -> bool {
    serving(generation, wanted, roles) == wanted
}

/// How many wanted workers of `generation` serve (one per index at most).
pub fn serving(generation: u32, wanted: usize, roles: &[Role]) -> usize {
    (0..wanted)
        .filter(|i| {
            roles.iter().any(|r| r.generation == generation && r.index == *i && r.phase == Phase::Serving && !r.late)
        })
        .count()
}

/// Why a worker that was not asked to stop ended.
pub fn exit_reason(status: process::ExitStatus) -> ExitReason {
    match status {
        process::ExitStatus::Signal(_) => ExitReason::Signal,
        process::ExitStatus::Code(0) => ExitReason::Exit,
        process::ExitStatus::Code(_) => ExitReason::Error,
    }
}

/// Now, in seconds since the epoch (the reload timestamps).
fn epoch_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What `/healthz` says: `None` = 200 `ok` (every wanted worker of the
/// current generation serves); else the one-line reason of the 503.
pub fn health(stopping: bool, current: u32, wanted: usize, pending: Option<u32>, roles: &[Role]) -> Option<String> {
    if stopping {
        return Some("stopping".into());
    }
    let serving = serving(current, wanted, roles);
    if serving == wanted {
        return None;
    }
    let starting = roles.iter().any(|r| r.generation == current && r.phase == Phase::Starting);
    let what = if pending.is_none() && serving == 0 && starting { "starting" } else { "degraded" };
    let late = roles.iter().filter(|r| r.generation == current && r.late).count();
    let why = if late > 0 { format!(", {late} not responding") } else { String::new() };
    Some(format!("{what}: {serving} of {wanted} workers of generation {current} serving{why}"))
}

/// What a reload does with a valid new configuration: the settings the
/// new generation runs with, after carrying over what needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The new generation's settings.
    pub settings: Settings,
    /// What was not applied, and why (logged at WARN).
    pub warnings: Vec<String>,
}

impl ReloadPlan {
    /// Plans a reload from `current` to `new` (loaded with the sockets
    /// systemd passed in place of the configured addresses of their kind,
    /// see [`super::settings::Pinned`]). The connection cap derived at start is derived
    /// again from the same host snapshot, so it carries over by
    /// construction.
    pub fn new(current: &Settings, mut new: Settings) -> ReloadPlan {
        let mut warnings = Vec::new();
        let (cur, next) = (&current.config.server, &mut new.config.server);
        if cur.user != next.user || cur.group != next.group {
            warnings.push("user/group changes need a restart; keeping the current ones".to_string());
            next.user = cur.user.clone();
            next.group = cur.group.clone();
            new.identity = current.identity.clone();
        }
        if (current.workers == 0) != (new.workers == 0) {
            warnings.push(format!(
                "changing between workers = 0 and worker processes needs a restart; keeping workers = {}",
                current.workers
            ));
            new.config.server.workers = current.config.server.workers;
            new.workers = current.workers;
        }
        // `access` is a connection's setting (new connections take it);
        // the rest of [log] is the subscriber's.
        let access = new.config.log.access;
        new.config.log.access = current.config.log.access;
        if new.config.log != current.config.log {
            // The subscriber is installed once, before any fork; SIGUSR1
            // reopens the file it was started with.
            warnings.push("[log] changes need a restart; keeping the current log".to_string());
            new.config.log = current.config.log.clone();
        }
        new.config.log.access = access;
        if new.config.server.ipv6_only != current.config.server.ipv6_only {
            // Listeners kept across the reload keep the option they were
            // bound with; new ones must agree with them.
            warnings.push(format!(
                "ipv6_only changes need a restart; keeping ipv6_only = {}",
                current.config.server.ipv6_only
            ));
            new.config.server.ipv6_only = current.config.server.ipv6_only;
        }
        if new.workers == 0 && new.config.reactor != current.config.reactor {
            warnings.push("reactor changes need a restart with workers = 0; keeping the current event base".into());
            new.config.reactor = current.config.reactor.clone();
        }
        ReloadPlan { settings: new, warnings }
    }
}

/// A listener's identity across reloads: the requested address and kind.
pub type ListenKey = (SocketAddr, Kind);

/// Listeners to bind (wanted, not held) and to close (held, not wanted).
pub fn listener_diff(have: &[ListenKey], want: &[ListenKey]) -> (Vec<ListenKey>, Vec<ListenKey>) {
    let bind = want.iter().filter(|w| !have.contains(w)).copied().collect();
    let close = have.iter().filter(|h| !want.contains(h)).copied().collect();
    (bind, close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Workers;

    fn role(generation: u32, index: usize, phase: Phase) -> Role {
        Role { generation, index, phase, late: false }
    }

    #[test]
    fn backoff_after_more_than_five_deaths_in_ten_seconds() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(b.on_death(t0 + Duration::from_millis(i * 100), false), Duration::ZERO, "death {i}");
        }
        let delays: Vec<u64> =
            (5..10).map(|i| b.on_death(t0 + Duration::from_millis(i * 100), false).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16]);
        assert_eq!(b.on_death(t0 + Duration::from_secs(1), false).as_secs(), 30);
        assert_eq!(b.on_death(t0 + Duration::from_secs(2), false).as_secs(), 30, "capped");
        assert!(b.backing_off());
        // Quiet for more than the window: replacements are immediate again.
        assert_eq!(b.on_death(t0 + Duration::from_secs(60), false), Duration::ZERO);
        assert!(!b.backing_off());
        // A clean exit is not a crash.
        assert_eq!(b.on_death(t0 + Duration::from_secs(61), true), CLEAN_EXIT_RESPAWN);
    }

    #[test]
    fn failed_starts_wait_longer_each_time_until_one_succeeds() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.on_start_failure().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        b.on_started();
        assert_eq!(b.on_start_failure(), BACKOFF_MIN, "a start in between ends the run");
        assert!(!b.backing_off(), "failed starts are not deaths");
    }

    #[test]
    fn a_pending_respawn_is_checked_against_the_new_worker_count() {
        let roles = [role(2, 0, Phase::Serving)];
        assert!(!spawn_wanted(2, 3, 2, &roles), "index 3 of a generation of 2");
        assert!(spawn_wanted(2, 1, 2, &roles));
        assert!(!spawn_wanted(2, 0, 2, &roles), "index 0 runs");
        assert!(spawn_wanted(2, 0, 2, &[role(2, 0, Phase::Retiring)]), "a retiring one does not count");
    }

    #[test]
    fn a_generation_serves_once_every_index_serves() {
        let mut roles = vec![role(1, 0, Phase::Serving), role(2, 0, Phase::Serving), role(2, 1, Phase::Starting)];
        assert!(generation_serves(1, 1, &roles));
        assert!(!generation_serves(2, 2, &roles));
        roles[2].phase = Phase::Serving;
        assert!(generation_serves(2, 2, &roles));
        assert!(!generation_serves(2, 3, &roles), "a third index is missing");
    }

    #[test]
    fn health_says_why_it_is_not_ok() {
        assert_eq!(health(false, 1, 2, None, &[role(1, 0, Phase::Serving), role(1, 1, Phase::Serving)]), None);
        let starting = health(false, 1, 2, None, &[role(1, 0, Phase::Starting), role(1, 1, Phase::Starting)]);
        assert_eq!(starting.as_deref(), Some("starting: 0 of 2 workers of generation 1 serving"));
        let down = health(false, 1, 2, None, &[role(1, 0, Phase::Serving)]);
        assert_eq!(down.as_deref(), Some("degraded: 1 of 2 workers of generation 1 serving"));
        let stopping = health(true, 1, 1, None, &[role(1, 0, Phase::Serving)]);
        assert_eq!(stopping.as_deref(), Some("stopping"));
        // During a reload the old generation still serves everything.
        let reloading = [role(1, 0, Phase::Serving), role(2, 0, Phase::Starting)];
        assert_eq!(health(false, 1, 1, Some(2), &reloading), None);
        let all_backing_off = health(false, 1, 1, None, &[]);
        assert_eq!(all_backing_off.as_deref(), Some("degraded: 0 of 1 workers of generation 1 serving"));
    }

    #[test]
    fn serving_counts_each_wanted_index_once() {
        let roles = [role(1, 0, Phase::Serving), role(1, 0, Phase::Retiring), role(1, 1, Phase::Starting)];
        assert_eq!(serving(1, 2, &roles), 1);
        let both = [role(1, 0, Phase::Serving), role(1, 1, Phase::Serving), role(2, 0, Phase::Serving)];
        assert_eq!(serving(1, 2, &both), 2);
        assert_eq!(serving(2, 2, &both), 1, "another generation's worker does not count");
        assert_eq!(serving(1, 1, &both), 1, "an index beyond the wanted ones does not count");
    }

    #[test]
    fn liveness_is_judged_by_the_pings_left_unanswered() {
        let verdicts: Vec<Liveness> = (0..5).map(liveness).collect();
        use Liveness::*;
        assert_eq!(verdicts, [Alive, Late, Late, Dead, Dead]);
        // Pings a quarter of the timeout apart: late once the loop has
        // been silent for half of it, dead for all of it.
        let t = Duration::from_secs(10);
        assert_eq!(liveness_period(t), Duration::from_millis(2500));
        assert_eq!(liveness_period(Duration::from_millis(1)), Duration::from_millis(10), "bounded");
    }

    #[test]
    fn a_late_worker_does_not_serve_and_health_says_so() {
        let late = Role { late: true, ..role(1, 1, Phase::Serving) };
        let roles = [role(1, 0, Phase::Serving), late];
        assert_eq!(serving(1, 2, &roles), 1);
        assert!(!generation_serves(1, 2, &roles));
        assert_eq!(
            health(false, 1, 2, None, &roles).as_deref(),
            Some("degraded: 1 of 2 workers of generation 1 serving, 1 not responding")
        );
    }

    #[test]
    fn exit_reasons() {
        use process::ExitStatus;
        assert_eq!(exit_reason(ExitStatus::Signal(libc::SIGKILL)), ExitReason::Signal);
        assert_eq!(exit_reason(ExitStatus::Signal(libc::SIGSEGV)), ExitReason::Signal);
        assert_eq!(exit_reason(ExitStatus::Code(71)), ExitReason::Error);
        assert_eq!(exit_reason(ExitStatus::Code(0)), ExitReason::Exit);
    }

    fn settings(workers: usize) -> Settings {
        let mut config = crate::daemon::config::Config::default();
        config.server.workers = Workers::Count(workers);
        Settings { config, path: None, workers, max_connections: 1960, identity: None }
    }

    /// Every successful start ends a run of failed ones, the in-process
    /// worker's as well as a fork's (the reset used to sit in the fork
    /// branch only).
    #[test]
    fn an_in_process_start_ends_a_run_of_failed_starts() {
        let l = listener::bind("127.0.0.1:0".parse().unwrap(), 16, Kind::Rot13, 1, true).expect("bind");
        let mut s = settings(0);
        s.config.server.listen = vec![l.requested];
        let base = crate::daemon::build_base(&s).expect("base");
        let startup = Startup {
            args: Default::default(),
            host: crate::daemon::settings::System::now(),
            pinned: crate::daemon::settings::Pinned::default(),
        };
        let mut m = Master::new(startup, s, base, vec![l]).expect("master");
        assert_eq!(m.backoff.on_start_failure(), BACKOFF_MIN, "a first failure");
        let cohort = m.current.clone();
        m.start_worker(&cohort, 0).expect("the in-process worker starts");
        assert_eq!(m.backoff.on_start_failure(), BACKOFF_MIN, "the start in between ended the run: no doubled delay");
    }

    #[test]
    fn reload_plan_carries_what_needs_a_restart() {
        let current = settings(1);
        let mut new = settings(3);
        new.config.server.user = Some("nobody".into());
        new.max_connections = 1960;
        let plan = ReloadPlan::new(&current, new.clone());
        assert_eq!(plan.settings.workers, 3, "the count applies");
        assert_eq!(plan.settings.config.server.user, None, "user kept");
        assert_eq!(plan.settings.max_connections, current.max_connections, "the derived cap carries over");
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);

        let to_zero = ReloadPlan::new(&current, settings(0));
        assert_eq!(to_zero.settings.workers, 1);
        assert_eq!(to_zero.warnings.len(), 1);

        let mut reactor = settings(0);
        reactor.config.reactor.backend = Some("poll".into());
        let in_process = ReloadPlan::new(&settings(0), reactor.clone());
        assert_eq!(in_process.settings.config.reactor.backend, None, "kept with workers = 0");
        let forked = ReloadPlan::new(&settings(2), Settings { workers: 2, ..reactor });
        assert_eq!(forked.settings.config.reactor.backend.as_deref(), Some("poll"), "applied by new workers");

        let mut log = settings(1);
        log.config.log.file = Some("/var/log/r.log".into());
        let kept = ReloadPlan::new(&current, log);
        assert_eq!((kept.settings.config.log.file, kept.warnings.len()), (None, 1));

        // `access` applies (to new connections), with the rest of [log] kept.
        let mut access = settings(1);
        access.config.log.access = true;
        access.config.log.level = crate::daemon::config::LogLevel::Debug;
        let plan = ReloadPlan::new(&current, access);
        assert!(plan.settings.config.log.access, "access applies");
        assert_eq!(plan.settings.config.log.level, current.config.log.level, "the level is kept");
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        let mut access_only = settings(1);
        access_only.config.log.access = true;
        let plan = ReloadPlan::new(&current, access_only);
        assert!(plan.settings.config.log.access && plan.warnings.is_empty(), "{:?}", plan.warnings);

        // Listeners kept across a reload keep their IPV6_V6ONLY.
        let mut dual = settings(1);
        dual.config.server.ipv6_only = false;
        dual.config.server.proxy_protocol = crate::daemon::proxy::Mode::V2;
        let plan = ReloadPlan::new(&current, dual);
        assert!(plan.settings.config.server.ipv6_only, "ipv6_only kept");
        assert_eq!(plan.settings.config.server.proxy_protocol, crate::daemon::proxy::Mode::V2, "applies");
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    }

    #[test]
    fn listener_diff_binds_new_and_closes_removed() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("literal");
        let have = [(a, Kind::Rot13), (b, Kind::Admin)];
        let want = [(a, Kind::Rot13), (b, Kind::Rot13)];
        let (bind, close) = listener_diff(&have, &want);
        assert_eq!(bind, vec![(b, Kind::Rot13)]);
        assert_eq!(close, vec![(b, Kind::Admin)]);
    }
}
