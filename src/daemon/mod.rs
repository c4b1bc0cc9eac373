//! The daemon: command line, configuration, logging, and the processes that
//! serve. [`run`] is the start-up sequence; `main.rs` maps its error to an
//! exit code.

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod error;
pub mod listener;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod proxy;
pub mod sdnotify;
pub mod settings;
pub mod worker;

pub use error::Error;

use crate::reactor::{BaseError, BaseFlags, EventBase, EventConfig, Features, LoopFlags};
use crate::sys::{self, process};
use cli::Args;
use error::ConfigError;
use listener::{Kind, Listener};
use metrics::Metrics;
use settings::Settings;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use worker::{LANES, WorkerParams};

/// fds kept back from the limit for listeners, pipes, the epoll fd and logs
/// when `max_connections` is derived from it.
const FD_RESERVE: u64 = 64;

/// Bulk callbacks per loop turn when lanes are on and no limit is set.
const BULK_TURN_CALLBACKS: usize = 8;
/// After this many turns without bulk callbacks, bulk gets one bounded pass.
const BULK_STARVE_TURNS: usize = 2;
/// Longest run of bulk callbacks per loop turn in that case.
const BULK_TURN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// What the start-up knows beyond the settings (the command line, for
/// reloads).
pub struct Startup {
    /// The parsed command line.
    pub args: Args,
    /// The rot13 listeners came from systemd (socket activation): they
    /// replace `[server].listen`, at start and at every reload.
    pub activated: bool,
}

impl Startup {
    /// The first half of a reload, with or without workers: log it, tell
    /// systemd (RELOADING=1), read the file again (`None`, its problems
    /// logged, when it is invalid), keep the activated listen set
    /// (`rot13_now`) with socket activation whatever the file says, and warn
    /// about user/group changes, which need a restart.
    pub(crate) fn reload_settings(
        &self,
        current: &Settings,
        rot13_now: impl Iterator<Item = SocketAddr>,
    ) -> Option<Settings> {
        tracing::info!(target: "rot13d", "reload requested");
        sdnotify::notify("RELOADING=1");
        let mut new = match Settings::load(&self.args) {
            Ok(s) => s,
            Err(e) => {
                for p in e.problems() {
                    tracing::error!(target: "rot13d", problem = %p, "reload failed: configuration invalid; keeping the running one");
                }
                return None;
            }
        };
        if self.activated {
            new.listen = rot13_now.collect();
        }
        if new.user != current.user || new.group != current.group {
            tracing::warn!(target: "rot13d", "user/group changes need a restart; keeping the current ones");
        }
        Some(new)
    }
}

/// Runs rot13d as the command line says.
pub fn run(mut args: Args) -> Result<(), Error> {
    if args.list_backends {
        for b in EventBase::supported_backends() {
            println!("{} {}", b.name, b.features.names());
        }
        return Ok(());
    }
    if args.daemon && args.pid_file.is_none() {
        return Err(error::UsageError::DaemonWithoutPidFile.into());
    }
    // A reload re-reads the file after --daemon changed nothing of the cwd,
    // but absolute paths keep the pid file and config findable regardless.
    args.make_paths_absolute().map_err(|e| Error::os("resolve the paths of the command line", e))?;
    let settings = Settings::load(&args)?;
    // A [reactor] no backend satisfies is a configuration error, found
    // before anything starts (or detaches).
    reactor_config(&settings)?;
    if args.check_config {
        build_base(&settings)?;
        println!("configuration ok");
        return Ok(());
    }
    if args.print_config {
        print!("{}", settings.to_toml()?);
        return Ok(());
    }
    logging::init(settings.log.level, settings.log.format)?;
    let reporter = if args.daemon { Some(daemonize()?) } else { None };
    let result = start(args, settings, reporter.as_ref());
    if let (Some(r), Err(e)) = (&reporter, &result) {
        report(r, e.exit_code());
    }
    result
}

fn start(args: Args, mut settings: Settings, reporter: Option<&OwnedFd>) -> Result<(), Error> {
    sys::signal::ignore_sigpipe();
    match sys::raise_nofile_limit() {
        Ok((old, new)) => tracing::info!(target: "rot13d", soft = old, limit = new, "open file limit"),
        Err(e) => tracing::warn!(target: "rot13d", error = %e, "cannot raise the open file limit"),
    }
    if settings.max_connections.is_none() {
        let (soft, _) = sys::nofile_limit().unwrap_or((1024, 1024));
        settings.max_connections = Some(soft.saturating_sub(FD_RESERVE).max(1) as usize);
    }
    let base = build_base(&settings)?;
    let activated = listener::activated()?;
    let socket_activated = activated.is_some();
    let listeners = match activated {
        Some(mut l) => {
            tracing::info!(target: "rot13d", count = l.len(), "using socket-activated listeners");
            // They replace [server].listen; the admin endpoint is still ours.
            if let Some(a) = settings.admin_listen {
                l.push(listener::bind(a, settings.backlog, Kind::Admin, 1)?);
            }
            l
        }
        None => {
            let mut v = Vec::new();
            for (addr, kind) in wanted_listeners(&settings) {
                let group = if kind == Kind::Rot13 { settings.workers } else { 1 };
                v.push(listener::bind(addr, settings.backlog, kind, group)?);
            }
            v
        }
    };
    for l in &listeners {
        tracing::info!(target: "rot13d", addr = %l.local, kind = %l.kind.as_str(), "listening");
    }
    let _pid_file = match &args.pid_file {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
    if let Some(r) = reporter {
        report(r, 0);
    }
    let startup = Startup { args, activated: socket_activated };
    if settings.workers == 0 {
        drop_privileges(&settings)?;
        serve_standalone(startup, settings, base, listeners)
    } else {
        let m = master::Master::new(startup, settings, base, listeners)?;
        m.run()
    }
}

/// An event base as the settings' `[reactor]` asks, with the lanes'
/// priorities.
pub(crate) fn build_base(s: &Settings) -> Result<EventBase, Error> {
    let mut base = EventBase::with_config(&reactor_config(s)?).map_err(|e| base_error(e, s))?;
    base.priority_init(s.reactor.priorities.max(LANES)).map_err(Error::Reactor)?;
    Ok(base)
}

/// The typed parameters of a serving process.
pub(crate) fn worker_params(s: &Settings) -> WorkerParams {
    WorkerParams {
        max_line: s.max_line,
        idle_timeout: s.idle_timeout,
        write_timeout: s.write_timeout,
        write_high_watermark: s.write_high_watermark,
        write_low_watermark: s.write_low_watermark,
        max_connections: s.max_connections.unwrap_or(1024),
        shutdown_grace: s.shutdown_grace,
        lanes: s.lanes.enabled.then(|| worker::LaneParams {
            bulk_after_bytes: s.lanes.bulk_after_bytes.min(u32::MAX as u64) as u32,
            window_ms: s.lanes.bulk_window.as_millis().clamp(1, u32::MAX as u128) as u32,
            quiet_ms: s.lanes.quiet.as_millis().min(u32::MAX as u128) as u32,
        }),
    }
}

/// The listeners a configuration asks for.
pub(crate) fn wanted_listeners(s: &Settings) -> Vec<(SocketAddr, Kind)> {
    let mut v: Vec<(SocketAddr, Kind)> = s.listen.iter().map(|a| (*a, Kind::Rot13)).collect();
    if let Some(a) = s.admin_listen {
        v.push((a, Kind::Admin));
    }
    v
}

/// The reactor part of the settings as an [`EventConfig`].
pub fn reactor_config(s: &Settings) -> Result<EventConfig, Error> {
    let r = &s.reactor;
    let mut cfg = EventConfig::new();
    if let Some(b) = &r.backend {
        for other in EventBase::supported_backends() {
            if other.name != b {
                cfg.avoid(other.name);
            }
        }
    }
    for a in &r.avoid {
        cfg.avoid(a);
    }
    let mut req = Features::empty();
    for f in &r.require_features {
        match Features::from_name(f) {
            Some(x) => req |= x,
            None => {
                return Err(ConfigError::Invalid {
                    key: "reactor.require_features".into(),
                    message: format!("unknown feature {f:?} (et, o1, fds, early_close)"),
                    path: s.config_path.clone(),
                    line: None,
                }
                .into());
            }
        }
    }
    cfg.require_features(req);
    if r.epoll_changelist {
        cfg.set_flag(BaseFlags::EPOLL_USE_CHANGELIST);
    }
    if r.precise_timer {
        cfg.set_flag(BaseFlags::PRECISE_TIMER);
    }
    if r.no_cache_time {
        cfg.set_flag(BaseFlags::NO_CACHE_TIME);
    }
    if r.ignore_env {
        cfg.set_flag(BaseFlags::IGNORE_ENV);
    }
    cfg.set_flag(BaseFlags::NOLOCK);
    if s.lanes.enabled && r.max_dispatch_interval.is_none() && r.max_callbacks.is_none() {
        // Lanes without explicit limits: a turn runs at most this many bulk
        // callbacks (each up to one 64 KiB read) before interactive
        // connections are looked at again.
        cfg.set_max_dispatch_interval(Some(BULK_TURN_INTERVAL), Some(BULK_TURN_CALLBACKS), worker::LANE_BULK);
        // ...and interactive traffic that never pauses cannot starve bulk.
        cfg.set_starvation_limit(Some(BULK_STARVE_TURNS));
    } else {
        cfg.set_max_dispatch_interval(r.max_dispatch_interval, r.max_callbacks.map(|n| n as usize), r.min_priority);
    }
    Ok(cfg)
}

fn base_error(e: BaseError, s: &Settings) -> Error {
    match e {
        BaseError::NoBackend { .. } => {
            // Name the key that decided it, with its line when the file set it.
            let candidates = ["reactor.backend", "reactor.require_features", "reactor.avoid"];
            let file = s.config_path.as_deref().and_then(|p| config::ConfigFile::load(p).ok());
            let line_of = |k: &str| file.as_ref().and_then(|f| f.line_of(k));
            let key = candidates
                .iter()
                .copied()
                .find(|k| line_of(k).is_some())
                .unwrap_or(if s.reactor.backend.is_some() { "reactor.backend" } else { "reactor.require_features" });
            ConfigError::Invalid {
                key: key.into(),
                message: e.to_string(),
                path: s.config_path.clone(),
                line: line_of(key),
            }
            .into()
        }
        BaseError::Io(e) => Error::os("create the event base", e),
    }
}

/// Drops to `user`/`group` if configured (after binding).
pub(crate) fn drop_privileges(s: &Settings) -> Result<(), Error> {
    if s.user.is_none() && s.group.is_none() {
        return Ok(());
    }
    let mut uid = None;
    let mut gid = None;
    if let Some(u) = &s.user {
        match process::lookup_user(u) {
            Ok(Some((id, primary))) => {
                uid = Some(id);
                gid = Some(primary);
            }
            Ok(None) => return Err(Error::os(format!("find user {u}"), std::io::Error::other("no such user"))),
            Err(e) => return Err(Error::os(format!("look up user {u}"), e)),
        }
    }
    if let Some(g) = &s.group {
        match process::lookup_group(g) {
            Ok(Some(id)) => gid = Some(id),
            Ok(None) => return Err(Error::os(format!("find group {g}"), std::io::Error::other("no such group"))),
            Err(e) => return Err(Error::os(format!("look up group {g}"), e)),
        }
    }
    process::drop_privileges(uid, gid).map_err(|e| Error::os("drop privileges", e))?;
    tracing::info!(target: "rot13d", ?uid, ?gid, "privileges dropped");
    Ok(())
}

/// Runs `cb` on every delivery of `sig`, on the control lane (before any
/// connection).
fn watch_signal(base: &mut EventBase, sig: i32, mut cb: impl FnMut(&mut EventBase) + 'static) -> Result<(), Error> {
    let id = base.new_signal(sig, move |base, _, _| cb(base));
    base.set_priority(id, worker::LANE_CONTROL).map_err(Error::Reactor)?;
    base.add(id, None).map_err(Error::Reactor)
}

/// What a reload of a process serving alone changes.
pub(crate) struct Reloaded {
    /// Parameters for new connections.
    pub params: WorkerParams,
    /// Newly bound listening sockets to accept on.
    pub add: Vec<RawFd>,
    /// Listening sockets to stop accepting on and close.
    pub remove: Vec<RawFd>,
}

/// A hook run once when a graceful stop begins.
pub(crate) type OnStop = Box<dyn Fn(&mut EventBase)>;

/// A reload of a process serving alone: re-reads the settings (SIGHUP).
pub(crate) type Reload<'r> = &'r mut dyn FnMut(&mut EventBase) -> Option<Reloaded>;

/// What a serving process is given.
pub(crate) struct ServeArgs<'a> {
    /// Listening sockets to accept on.
    pub listeners: &'a [RawFd],
    /// Its generation's parameters.
    pub params: WorkerParams,
    /// The shared counters.
    pub metrics: Rc<Metrics>,
    /// Its slot in the counters.
    pub slot: usize,
    /// Its generation (for logs).
    pub generation: u32,
    /// Where to report "serving" (a worker's readiness pipe).
    pub ready: Option<RawFd>,
    /// Run when a graceful stop begins (serving alone: stop the admin
    /// endpoint, as the master does).
    pub on_stop: Option<OnStop>,
}

/// Serves on `base` until a graceful drain ends (worker, or workers = 0).
/// `reload`, for the master serving alone, re-reads the settings on SIGHUP.
pub(crate) fn serve(base: &mut EventBase, w: ServeArgs<'_>, mut reload: Option<Reload<'_>>) -> Result<(), Error> {
    let ServeArgs { listeners, params, metrics, slot, generation, ready, on_stop } = w;
    let on_stop = Rc::new(on_stop);
    let shared = worker::start(base, listeners, params, metrics, slot).map_err(Error::Reactor)?;
    let want_reload = Rc::new(Cell::new(false));
    // Serving alone (workers = 0): this process talks to systemd.
    let standalone = reload.is_some();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let s = shared.clone();
        let on_stop = on_stop.clone();
        watch_signal(base, sig, move |base| {
            if standalone {
                sdnotify::notify("STOPPING=1");
            }
            if let Some(f) = on_stop.as_ref() {
                f(base);
            }
            s.begin_drain(base, false)
        })?;
    }
    // SIGUSR1: the master retires this worker (a reload).
    let s = shared.clone();
    watch_signal(base, libc::SIGUSR1, move |base| s.begin_drain(base, true))?;
    watch_signal(base, libc::SIGQUIT, move |_| {
        if standalone {
            sdnotify::notify("STOPPING=1");
        }
        process::exit_now(0)
    })?;
    if standalone {
        let w = want_reload.clone();
        watch_signal(base, libc::SIGHUP, move |base| {
            w.set(true);
            base.loopbreak();
        })?;
    }
    tracing::info!(target: "rot13d", backend = %base.backend_name(), pid = process::getpid(), generation, "reactor");
    if let Some(fd) = ready {
        // Tell the master this worker serves: its pid, one atomic write.
        let _ = sys::write(fd, &process::getpid().to_ne_bytes());
        sys::close(fd);
    }
    sys::signal::unblock_all();
    loop {
        base.run(LoopFlags::NO_EXIT_ON_EMPTY).map_err(Error::Reactor)?;
        if base.got_exit() {
            return Ok(());
        }
        if want_reload.replace(false)
            && let Some(r) = reload.as_mut()
            && let Some(p) = r(base)
        {
            shared.set_params(base, p.params);
            for fd in p.remove {
                shared.remove_listener(base, fd);
            }
            for fd in p.add {
                if let Err(e) = shared.add_listener(base, fd) {
                    tracing::error!(target: "rot13d", error = %e, "cannot accept on a new listener");
                }
            }
        }
    }
}

/// The admin endpoint of a process serving alone, with its listener.
#[derive(Default)]
struct AdminSlot {
    listener: Option<Listener>,
    admin: Option<Rc<admin::Admin>>,
}

impl AdminSlot {
    /// Stops serving and closes the listener.
    fn stop(&mut self, base: &mut EventBase) {
        if let Some(a) = self.admin.take() {
            a.stop(base);
        }
        self.listener = None;
    }

    /// Serves on `l` from now on (none: no admin endpoint).
    fn replace(&mut self, base: &mut EventBase, l: Option<Listener>, metrics: &Rc<Metrics>) -> std::io::Result<()> {
        self.stop(base);
        if let Some(l) = l {
            self.admin = Some(admin::Admin::start(base, l.raw(), metrics.clone())?);
            self.listener = Some(l);
        }
        Ok(())
    }
}

fn serve_standalone(
    startup: Startup,
    settings: Settings,
    mut base: EventBase,
    listeners: Vec<Listener>,
) -> Result<(), Error> {
    let metrics = Rc::new(Metrics::new(1).map_err(|e| Error::os("map the shared counters", e))?);
    // The worker closes the rot13 listeners when it drains or drops one;
    // the admin listener is this function's, stopped when a stop begins.
    let mut rot13: Vec<(SocketAddr, RawFd)> = Vec::new();
    let admin = Rc::new(RefCell::new(AdminSlot::default()));
    for l in listeners {
        if l.kind == Kind::Rot13 {
            rot13.push((l.requested, l.fd.into_raw_fd()));
        } else {
            admin.borrow_mut().replace(&mut base, Some(l), &metrics).map_err(Error::Reactor)?;
        }
    }
    let fds: Vec<RawFd> = rot13.iter().map(|(_, fd)| *fd).collect();
    let params = worker_params(&settings);
    let mut current = settings;
    let admin_at_reload = admin.clone();
    let metrics_at_reload = metrics.clone();
    let mut reload = move |base: &mut EventBase| -> Option<Reloaded> {
        // READY=1 follows whatever the outcome: the process keeps serving.
        struct ReadyAgain;
        impl Drop for ReadyAgain {
            fn drop(&mut self) {
                sdnotify::notify("READY=1");
            }
        }
        let _ready = ReadyAgain;
        let mut s = startup.reload_settings(&current, rot13.iter().map(|(a, _)| *a))?;
        if s.reactor != current.reactor {
            tracing::warn!(target: "rot13d", "reactor changes need a restart with workers = 0; keeping the current event base");
        }
        // Bind what is new first: a failure leaves everything as it was
        // (what was bound is closed again when `added` and `new_admin` drop).
        let mut added = Vec::new();
        let new_rot13 = s.listen.iter().filter(|a| !rot13.iter().any(|(r, _)| r == *a));
        let new_admin = (s.admin_listen != current.admin_listen).then_some(s.admin_listen);
        let to_bind = new_rot13.map(|a| (*a, Kind::Rot13)).chain(new_admin.flatten().map(|a| (a, Kind::Admin)));
        for (addr, kind) in to_bind {
            match listener::bind(addr, s.backlog, kind, 1) {
                Ok(l) => added.push(l),
                Err(e) => {
                    tracing::error!(target: "rot13d", error = %e, "reload failed: keeping the running configuration");
                    return None;
                }
            }
        }
        for l in &added {
            tracing::info!(target: "rot13d", addr = %l.local, kind = %l.kind.as_str(), "listening");
        }
        let mut remove = Vec::new();
        rot13.retain(|(a, fd)| {
            let keep = s.listen.contains(a);
            if !keep {
                tracing::info!(target: "rot13d", addr = %a, kind = %Kind::Rot13.as_str(), "listener closed");
                remove.push(*fd);
            }
            keep
        });
        let mut add = Vec::new();
        let mut admin_listener = None;
        for l in added {
            if l.kind == Kind::Admin {
                admin_listener = Some(l);
            } else {
                let fd = l.fd.into_raw_fd();
                rot13.push((l.requested, fd));
                add.push(fd);
            }
        }
        if new_admin.is_some() {
            let mut slot = admin_at_reload.borrow_mut();
            if let Some(old) = slot.listener.as_ref() {
                tracing::info!(target: "rot13d", addr = %old.local, kind = %Kind::Admin.as_str(), "listener closed");
            }
            if let Err(e) = slot.replace(base, admin_listener, &metrics_at_reload) {
                tracing::error!(target: "rot13d", error = %e, "cannot serve the admin endpoint");
            }
        }
        s.max_connections = s.max_connections.or(current.max_connections);
        s.reactor = current.reactor.clone();
        s.user = current.user.clone();
        s.group = current.group.clone();
        current = s;
        tracing::info!(target: "rot13d", "reloaded: new connections use the new settings");
        Some(Reloaded { params: worker_params(&current), add, remove })
    };
    sdnotify::notify("READY=1");
    let on_stop: OnStop = Box::new(move |base| admin.borrow_mut().stop(base));
    serve(
        &mut base,
        ServeArgs { listeners: &fds, params, metrics, slot: 0, generation: 1, ready: None, on_stop: Some(on_stop) },
        Some(&mut reload),
    )
}

/// The pid file: written after the listeners are bound, removed on exit.
struct PidFile {
    path: std::path::PathBuf,
    pid: i32,
}

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, Error> {
        let pid = process::getpid();
        std::fs::write(path, format!("{pid}\n"))
            .map_err(|e| Error::os(format!("write the pid file {}", path.display()), e))?;
        Ok(PidFile { path: path.to_path_buf(), pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only the process that wrote it removes it (never a worker).
        if process::getpid() == self.pid {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Detaches (fork, setsid, fork). The launcher waits on a pipe until the
/// detached process reports its start-up: 0 once the listeners are bound
/// and the pid file written, or the exit code of the error; the launcher
/// exits with it. Returns the write end in the detached process.
fn daemonize() -> Result<OwnedFd, Error> {
    let (r, w) = sys::pipe().map_err(|e| Error::os("create the start-up pipe", e))?;
    sys::set_nonblocking(r.as_raw_fd(), false).map_err(|e| Error::os("create the start-up pipe", e))?;
    sys::set_nonblocking(w.as_raw_fd(), false).map_err(|e| Error::os("create the start-up pipe", e))?;
    match process::fork().map_err(|e| Error::os("fork", e))? {
        process::Fork::Parent(child) => {
            drop(w);
            let mut b = [0u8; 1];
            let code = loop {
                match sys::read(r.as_raw_fd(), &mut b) {
                    Ok(1) => break b[0] as i32,
                    Ok(_) => break error::EX_OSERR as i32,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break error::EX_OSERR as i32,
                }
            };
            let _ = process::wait_pid(child);
            process::exit_now(code);
        }
        process::Fork::Child => {}
    }
    drop(r);
    process::setsid().map_err(|e| Error::os("setsid", e))?;
    match process::fork().map_err(|e| Error::os("fork", e))? {
        process::Fork::Parent(_) => process::exit_now(0),
        process::Fork::Child => {}
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = sys::dup2(null.as_raw_fd(), 0);
    }
    Ok(w)
}

fn report(w: &OwnedFd, code: u8) {
    let _ = sys::write(w.as_raw_fd(), &[code]);
}
