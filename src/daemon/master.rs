//! The master process: owns the listeners and the workers.
//!
//! See `LIFECYCLE.md` beside this file. Signals become [`Intent`]s once,
//! in signal events of the master's base; the loop breaks out to act on
//! them, so every `fork()` happens outside a callback, with the base idle
//! and every signal blocked (a child must not run the master's handlers).

use super::Startup;
use super::error::Error;
use super::listener::{self, Kind, Listener};
use super::metrics::Metrics;
use super::settings::Settings;
use super::worker::WorkerParams;
use crate::reactor::{EventBase, EventFlags, LoopFlags};
use crate::sys::{self, process};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a signal (or a timer) asks of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// SIGTERM/SIGINT (graceful) or SIGQUIT (immediate).
    Stop {
        /// Drain connections first.
        graceful: bool,
    },
    /// SIGHUP.
    Reload,
    /// SIGCHLD: reap.
    Reap,
    /// Start the worker of this index (after a death, or a failed fork).
    Spawn(usize),
    /// The stop deadline passed: kill what is left.
    Deadline,
    /// A worker reported that it serves.
    Ready,
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

#[derive(Debug)]
struct WorkerProc {
    pid: i32,
    index: usize,
    slot: usize,
    generation: u32,
    retiring: bool,
}

/// The master's state.
pub struct Master {
    startup: Startup,
    settings: Settings,
    base: EventBase,
    /// The `[reactor]` the master's base was built with (a reload may ask
    /// for another: the workers then build their own).
    base_reactor: super::settings::ReactorSettings,
    listeners: Vec<Listener>,
    metrics: Rc<Metrics>,
    workers: Vec<WorkerProc>,
    slots_used: Vec<bool>,
    generation: u32,
    intents: Rc<RefCell<VecDeque<Intent>>>,
    deaths: VecDeque<Instant>,
    backoff: Duration,
    stopping: bool,
    pid: i32,
    admin: Option<Rc<super::admin::Admin>>,
    /// Workers write their pid here once they serve.
    ready_read: Option<std::os::fd::OwnedFd>,
    ready_write: Option<std::os::fd::OwnedFd>,
    /// Pids that reported ready.
    ready: Rc<RefCell<Vec<i32>>>,
    /// READY=1 is owed to systemd once every current worker serves.
    ready_owed: bool,
}

impl Master {
    /// Builds the master on a bound set of listeners.
    pub fn new(
        startup: Startup,
        settings: Settings,
        base: EventBase,
        listeners: Vec<Listener>,
    ) -> Result<Master, Error> {
        let slots = settings.workers.max(1) * 4;
        let metrics = Rc::new(Metrics::new(slots).map_err(|e| Error::os("map the shared counters", e))?);
        let (ready_read, ready_write) = sys::pipe().map_err(|e| Error::os("create the readiness pipe", e))?;
        Ok(Master {
            startup,
            base_reactor: settings.reactor.clone(),
            settings,
            base,
            listeners,
            metrics,
            workers: Vec::new(),
            slots_used: vec![false; slots],
            generation: 1,
            intents: Rc::new(RefCell::new(VecDeque::new())),
            deaths: VecDeque::new(),
            backoff: Duration::ZERO,
            stopping: false,
            pid: process::getpid(),
            admin: None,
            ready_read: Some(ready_read),
            ready_write: Some(ready_write),
            ready: Rc::new(RefCell::new(Vec::new())),
            ready_owed: true,
        })
    }

    fn push(intents: &Rc<RefCell<VecDeque<Intent>>>, base: &mut EventBase, i: Intent) {
        intents.borrow_mut().push_back(i);
        base.loopbreak();
    }

    fn watch_signals(&mut self) -> Result<(), Error> {
        let table = [
            (libc::SIGTERM, Intent::Stop { graceful: true }),
            (libc::SIGINT, Intent::Stop { graceful: true }),
            (libc::SIGQUIT, Intent::Stop { graceful: false }),
            (libc::SIGHUP, Intent::Reload),
            (libc::SIGCHLD, Intent::Reap),
        ];
        for (sig, intent) in table {
            let q = self.intents.clone();
            let id = self.base.new_signal(sig, move |base, _, _| Master::push(&q, base, intent));
            self.base.add(id, None).map_err(|e| Error::os("install signal handlers", e))?;
        }
        Ok(())
    }

    /// (Re)starts the admin endpoint on the current admin listener.
    fn restart_admin(&mut self) {
        let fd = self.listeners.iter().find(|l| l.kind == Kind::Admin).map(|l| l.raw());
        if self.admin.as_ref().map(|a| a.fd()) == fd {
            return;
        }
        if let Some(a) = self.admin.take() {
            a.stop(&mut self.base);
        }
        if let Some(fd) = fd {
            match super::admin::Admin::start(&mut self.base, fd, self.metrics.clone()) {
                Ok(a) => self.admin = Some(a),
                Err(e) => tracing::error!(target: "rot13d", error = %e, "cannot serve the admin endpoint"),
            }
        }
    }

    fn watch_readiness(&mut self) -> Result<(), Error> {
        use std::os::fd::AsRawFd;
        let Some(fd) = self.ready_read.as_ref().map(|f| f.as_raw_fd()) else { return Ok(()) };
        let ready = self.ready.clone();
        let q = self.intents.clone();
        let id = self.base.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |base, _, _| {
            let mut buf = [0u8; 4 * 64];
            while let Ok(n) = sys::read(fd, &mut buf) {
                if n == 0 {
                    break;
                }
                for c in buf[..n].chunks_exact(4) {
                    ready.borrow_mut().push(i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                }
                if n < buf.len() {
                    break;
                }
            }
            Master::push(&q, base, Intent::Ready);
        });
        self.base.add(id, None).map_err(|e| Error::os("watch worker readiness", e))?;
        if let Some(every) = super::sdnotify::watchdog_interval() {
            let wd = self.base.new_event(-1, EventFlags::PERSIST, |_, _, _| super::sdnotify::notify("WATCHDOG=1"));
            self.base.add(wd, Some(every)).map_err(|e| Error::os("start the watchdog timer", e))?;
        }
        Ok(())
    }

    /// READY=1 once every worker of the current generation serves (at
    /// start and after a reload).
    fn check_ready(&mut self) {
        let ready = self.ready.borrow();
        let current: Vec<&WorkerProc> = self.workers.iter().filter(|w| !w.retiring).collect();
        let all = current.len() >= self.settings.workers && current.iter().all(|w| ready.contains(&w.pid));
        drop(ready);
        if all && self.ready_owed && !self.stopping {
            self.ready_owed = false;
            tracing::info!(target: "rot13d", workers = current.len(), generation = self.generation, "ready");
            super::sdnotify::notify("READY=1");
        }
        let alive: Vec<i32> = self.workers.iter().map(|w| w.pid).collect();
        self.ready.borrow_mut().retain(|p| alive.contains(p));
    }

    /// Runs until stopped; returns when every worker is gone.
    pub fn run(mut self) -> Result<(), Error> {
        self.watch_signals()?;
        self.watch_readiness()?;
        self.restart_admin();
        for index in 0..self.settings.workers {
            self.spawn(index)?;
        }
        tracing::info!(target: "rot13d", workers = self.settings.workers, pid = self.pid, "master running");
        loop {
            self.base.run(LoopFlags::NO_EXIT_ON_EMPTY).map_err(Error::Reactor)?;
            loop {
                let next = self.intents.borrow_mut().pop_front();
                let Some(intent) = next else { break };
                self.handle(intent)?;
            }
            if self.stopping && self.workers.is_empty() {
                tracing::info!(target: "rot13d", "stopped");
                return Ok(());
            }
        }
    }

    fn handle(&mut self, intent: Intent) -> Result<(), Error> {
        match intent {
            Intent::Stop { graceful: true } => self.stop_graceful(),
            Intent::Stop { graceful: false } => self.stop_now(),
            Intent::Reload => {
                if !self.stopping {
                    self.reload();
                }
            }
            Intent::Reap => self.reap(),
            Intent::Ready => self.check_ready(),
            Intent::Spawn(index) => {
                if !self.stopping
                    && !self.workers.iter().any(|w| w.index == index && !w.retiring)
                    && let Err(e) = self.spawn(index)
                {
                    tracing::error!(target: "rot13d", error = %e, index, "cannot start a worker");
                    self.schedule_spawn(index, self.backoff.max(BACKOFF_MIN));
                }
            }
            Intent::Deadline => {
                for w in &self.workers {
                    tracing::warn!(target: "rot13d", pid = w.pid, "worker still running after the grace period: killing");
                    let _ = sys::signal::kill(w.pid, libc::SIGKILL);
                }
            }
        }
        Ok(())
    }

    fn params(settings: &Settings) -> WorkerParams {
        super::worker_params(settings)
    }

    fn spawn(&mut self, index: usize) -> Result<(), Error> {
        let slot = match self.slots_used.iter().position(|u| !u) {
            Some(s) => s,
            None => index % self.slots_used.len(),
        };
        let params = Master::params(&self.settings);
        let n = self.settings.workers;
        let rot13: Vec<i32> =
            self.listeners.iter().filter(|l| l.kind == Kind::Rot13).flat_map(|l| l.fds_for(index, n)).collect();
        let generation = self.generation;
        let mask = sys::signal::block_all();
        let forked = process::fork();
        match forked {
            Ok(process::Fork::Child) => {
                let code = self.worker_main(&rot13, params, slot, generation);
                process::exit_now(code);
            }
            Ok(process::Fork::Parent(pid)) => {
                sys::signal::restore_mask(mask);
                self.slots_used[slot] = true;
                self.workers.push(WorkerProc { pid, index, slot, generation, retiring: false });
                tracing::debug!(target: "rot13d", pid, index, generation, "worker started");
                Ok(())
            }
            Err(e) => {
                sys::signal::restore_mask(mask);
                Err(Error::os("fork a worker", e))
            }
        }
    }

    /// The child side of `spawn`: never returns to the master's code.
    fn worker_main(&mut self, rot13: &[i32], params: WorkerParams, slot: usize, generation: u32) -> i32 {
        // A worker must not outlive its master.
        let _ = process::set_parent_death_signal(libc::SIGTERM);
        if process::getppid() != self.pid {
            return 0;
        }
        if let Err(e) = self.base.reinit() {
            tracing::error!(target: "rot13d", error = %e, "worker cannot reinit its event base");
            return 71;
        }
        // Nothing of the master's runs here: its signal, timer and admin
        // events (listener and connections in flight) all go, before their
        // fds are closed below.
        self.base.free_all();
        // A reload changed [reactor]: this generation gets a base of its own
        // (the master's, cleaned above, is dropped: after reinit it shares
        // nothing with the master's any more).
        if self.settings.reactor != self.base_reactor {
            match super::build_base(&self.settings) {
                Ok(fresh) => drop(std::mem::replace(&mut self.base, fresh)),
                Err(e) => {
                    tracing::error!(target: "rot13d", error = %e, "worker cannot build its event base");
                    return 71;
                }
            }
        }
        let base = &mut self.base;
        // SIGHUP is for the master; a terminal hangup must not kill workers.
        sys::signal::ignore(libc::SIGHUP);
        // Close every listening socket this worker does not accept on; the
        // worker owns the others from here on.
        use std::os::fd::AsRawFd;
        let mut own = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            for fd in std::iter::once(l.fd).chain(l.group) {
                if rot13.contains(&fd.as_raw_fd()) {
                    own.push(fd);
                }
            }
        }
        if let Err(e) = super::drop_privileges(&self.settings) {
            tracing::error!(target: "rot13d", error = %e, "worker cannot drop privileges");
            return 71;
        }
        drop(self.ready_read.take());
        let ready = self.ready_write.take();
        let args = super::ServeArgs {
            listeners: own,
            params,
            metrics: self.metrics.clone(),
            slot,
            generation,
            ready,
            on_stop: None,
        };
        let code = super::serve(base, args, None);
        match code {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(target: "rot13d", error = %e, "worker failed");
                e.exit_code() as i32
            }
        }
    }

    fn schedule_spawn(&mut self, index: usize, after: Duration) {
        let q = self.intents.clone();
        let _ = self.base.once(-1, EventFlags::NONE, Some(after), move |base, _| {
            Master::push(&q, base, Intent::Spawn(index));
        });
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
            let Some(pos) = self.workers.iter().position(|w| w.pid == pid) else { continue };
            let w = self.workers.swap_remove(pos);
            self.slots_used[w.slot] = false;
            self.metrics.set(w.slot, super::metrics::Counter::Open, 0);
            if w.retiring || self.stopping {
                tracing::info!(target: "rot13d", pid, %status, generation = w.generation, "worker exited");
                continue;
            }
            tracing::warn!(target: "rot13d", pid, %status, index = w.index, "worker died");
            if status == process::ExitStatus::Code(0) {
                // A clean exit the master did not ask for: the worker was
                // told to stop, most likely by a SIGTERM sent to the whole
                // control group, which reaches the master next. Replace it
                // after a moment unless that stop arrives.
                self.schedule_spawn(w.index, CLEAN_EXIT_RESPAWN);
                continue;
            }
            let now = Instant::now();
            self.deaths.push_back(now);
            while self.deaths.front().is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW) {
                self.deaths.pop_front();
            }
            if self.deaths.len() > DEATHS_BEFORE_BACKOFF {
                self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                tracing::warn!(target: "rot13d", backoff_s = self.backoff.as_secs(), "workers keep dying: backing off");
                self.schedule_spawn(w.index, self.backoff);
            } else {
                self.backoff = Duration::ZERO;
                if let Err(e) = self.spawn(w.index) {
                    tracing::error!(target: "rot13d", error = %e, "cannot replace a worker");
                    self.schedule_spawn(w.index, BACKOFF_MIN);
                }
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
        super::sdnotify::notify("STOPPING=1");
        if let Some(a) = self.admin.take() {
            a.stop(&mut self.base);
        }
        // New clients are refused once every copy of the listeners is
        // closed: ours now, the workers' as they begin to drain.
        self.listeners.clear();
        for w in &self.workers {
            let _ = sys::signal::kill(w.pid, libc::SIGTERM);
        }
        let q = self.intents.clone();
        let after = self.settings.shutdown_grace + STOP_SLACK;
        let _ = self.base.once(-1, EventFlags::NONE, Some(after), move |base, _| {
            Master::push(&q, base, Intent::Deadline);
        });
    }

    fn stop_now(&mut self) {
        tracing::info!(target: "rot13d", workers = self.workers.len(), "immediate stop");
        super::sdnotify::notify("STOPPING=1");
        self.stopping = true;
        self.listeners.clear();
        for w in &self.workers {
            let _ = sys::signal::kill(w.pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_millis(800);
        while !self.workers.is_empty() && Instant::now() < deadline {
            match process::try_wait_any() {
                Ok(Some((pid, _))) => self.workers.retain(|w| w.pid != pid),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        self.workers.clear();
    }

    /// SIGHUP: a valid new configuration starts a new generation of
    /// workers, then the old one retires gracefully; listeners for
    /// unchanged addresses stay open throughout.
    fn reload(&mut self) {
        let rot13_now = self.listeners.iter().filter(|l| l.kind == Kind::Rot13).map(|l| l.requested);
        let Some(new) = self.startup.reload_settings(&self.settings, rot13_now) else {
            super::sdnotify::notify("READY=1");
            return;
        };
        // A new [reactor] applies to the new generation: each of its workers
        // builds a base of its own. Check now that one can be built.
        if new.reactor != self.settings.reactor
            && let Err(e) = super::build_base(&new)
        {
            tracing::error!(target: "rot13d", error = %e, "reload failed: keeping the running configuration");
            super::sdnotify::notify("READY=1");
            return;
        }
        if new.workers == 0 {
            tracing::warn!(target: "rot13d", "workers = 0 needs a restart; keeping {} workers", self.settings.workers);
        }
        // Listeners: keep unchanged addresses, bind new ones, drop removed.
        let mut next: Vec<Listener> = Vec::new();
        let mut old = std::mem::take(&mut self.listeners);
        let wanted = super::wanted_listeners(&new);
        for (addr, kind) in wanted {
            let group = if kind == Kind::Rot13 { new.workers.max(self.settings.workers) } else { 1 };
            if let Some(pos) = old.iter().position(|l| l.requested == addr && l.kind == kind) {
                let mut l = old.swap_remove(pos);
                if let Err(e) = l.grow(group) {
                    tracing::error!(target: "rot13d", error = %e, "reload: cannot grow a listener group");
                }
                next.push(l);
                continue;
            }
            match listener::bind(addr, new.backlog, kind, group) {
                Ok(l) => {
                    tracing::info!(target: "rot13d", addr = %l.local, kind = %kind.as_str(), "listening");
                    next.push(l);
                }
                Err(e) => {
                    tracing::error!(target: "rot13d", error = %e, "reload failed: keeping the running configuration");
                    old.extend(next);
                    self.listeners = old;
                    super::sdnotify::notify("READY=1");
                    return;
                }
            }
        }
        for l in &old {
            tracing::info!(target: "rot13d", addr = %l.local, kind = %l.kind.as_str(), "listener closed");
        }
        // The admin endpoint stops with its listener (an address removed).
        let stale = self.admin.as_ref().is_some_and(|a| old.iter().any(|l| l.raw() == a.fd()));
        if stale && let Some(a) = self.admin.take() {
            a.stop(&mut self.base);
        }
        drop(old);
        self.listeners = next;
        self.restart_admin();
        let mut settings = new;
        settings.user = self.settings.user.clone();
        settings.group = self.settings.group.clone();
        if settings.workers == 0 {
            settings.workers = self.settings.workers;
        }
        self.settings = settings;
        self.generation += 1;
        let old_pids: Vec<i32> = self.workers.iter().filter(|w| !w.retiring).map(|w| w.pid).collect();
        for index in 0..self.settings.workers {
            if let Err(e) = self.spawn(index) {
                tracing::error!(target: "rot13d", error = %e, index, "cannot start a worker of the new generation");
                self.schedule_spawn(index, BACKOFF_MIN);
            }
        }
        for w in self.workers.iter_mut().filter(|w| old_pids.contains(&w.pid)) {
            w.retiring = true;
            // SIGUSR1 = retire: drain without cutting clients that have just
            // connected (the new generation serves the listeners).
            let _ = sys::signal::kill(w.pid, libc::SIGUSR1);
        }
        tracing::info!(target: "rot13d", generation = self.generation, workers = self.settings.workers, "reloaded");
        self.ready_owed = true;
        self.check_ready();
    }
}
