//! The daemon: command line, configuration, logging, and the processes that
//! serve. [`run`] is the start-up sequence; `main.rs` maps its error to an
//! exit code.

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod cpus;
pub mod error;
pub mod listener;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod sample;
pub mod sdnotify;
pub mod settings;
pub mod worker;

pub use error::Error;

use crate::reactor::{BaseError, EventBase, LoopFlags};
use crate::sys::{self, process};
use cli::Args;
use error::ConfigError;
use listener::{Kind, ListenFd};
use metrics::Slot;
use settings::{Pinned, Settings, System};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use worker::{LANES, WorkerParams};

/// What the start-up knows beyond the settings, kept for reloads.
pub struct Startup {
    /// The parsed command line.
    pub args: Args,
    /// The host as it was at start (after the fd limit was raised): every
    /// reload derives `workers = auto` and the connection cap from it.
    pub host: System,
    /// What socket activation passed: it replaces the configured addresses
    /// of its kind, at start and at every reload.
    pub pinned: Pinned,
}

/// Runs rot13d as the command line says.
pub fn run(mut args: Args) -> Result<(), Error> {
    if args.list_backends {
        for b in EventBase::supported_backends() {
            println!("{} {}", b.name, b.features.names());
        }
        // A backend this build has but this host cannot use is absent from
        // the list; stderr says why (stdout stays one backend a line).
        for k in crate::reactor::BackendKind::PREFERENCE {
            if let Err(why) = k.available() {
                eprintln!("rot13d: {k} is not available: {why}");
            }
        }
        return Ok(());
    }
    if args.daemon && args.pid_file.is_none() {
        return Err(error::UsageError::DaemonWithoutPidFile.into());
    }
    // A reload re-reads the file after --daemon changed the cwd to /:
    // absolute paths keep the pid file and config findable regardless.
    args.make_paths_absolute().map_err(|e| Error::os("resolve the paths of the command line", e))?;
    // The connection cap is derived from the limit the daemon runs with.
    let raised = sys::raise_nofile_limit();
    let host = System::now();
    // Sockets systemd passed replace the configured addresses of their
    // kind before the configuration is checked: it is checked as used.
    let passed = listener::activated()?;
    let pinned = passed.as_deref().map(pinned_by).unwrap_or_default();
    let settings = Settings::load(&args, &host, &pinned)?;
    if args.check_config {
        build_base(&settings)?;
        if let Some(file) = &settings.config.log.file {
            logging::check_file(file)?;
        }
        println!("configuration ok");
        return Ok(());
    }
    if args.print_config {
        print!("{}", settings.to_toml()?);
        return Ok(());
    }
    let log = &settings.config.log;
    logging::init(log.level, log.format, log.file.as_deref())?;
    match raised {
        Ok((old, new)) => tracing::info!(target: "rot13d", soft = old, limit = new, "open file limit"),
        Err(e) => tracing::warn!(target: "rot13d", error = %e, "cannot raise the open file limit"),
    }
    let mut launcher = if args.daemon { Some(daemonize()?) } else { None };
    let result = start(Startup { args, host, pinned }, settings, passed, &mut launcher);
    if let Err(e) = &result {
        report(&mut launcher, e.exit_code());
    }
    result
}

/// What the passed sockets replace: the addresses of each kind passed.
fn pinned_by(passed: &[listener::Listener]) -> Pinned {
    let of = |kind| passed.iter().filter(move |l| l.kind == kind).map(|l| l.requested);
    Pinned { rot13: Some(of(Kind::Rot13).collect::<Vec<_>>()).filter(|v| !v.is_empty()), admin: of(Kind::Admin).next() }
}

fn start(
    startup: Startup,
    settings: Settings,
    passed: Option<Vec<listener::Listener>>,
    launcher: &mut Option<OwnedFd>,
) -> Result<(), Error> {
    sys::signal::ignore_sigpipe();
    // A [reactor] no backend satisfies fails here (78), before binding.
    let base = build_base(&settings)?;
    let mut listeners = Vec::new();
    if let Some(passed) = passed {
        // Passed sockets replace the configured addresses of their kind (a
        // kind none is passed for is bound from the configuration below).
        let count = |kind| passed.iter().filter(|l| l.kind == kind).count();
        tracing::info!(target: "rot13d", count = passed.len(), rot13 = count(Kind::Rot13),
            admin = count(Kind::Admin), "using socket-activated listeners");
        listeners = passed;
    }
    let have: Vec<(SocketAddr, Kind)> = listeners.iter().map(|l| (l.requested, l.kind)).collect();
    let (bind, _) = master::listener_diff(&have, &wanted_listeners(&settings));
    for (addr, kind) in bind {
        let server = &settings.config.server;
        listeners.push(listener::bind(addr, server.backlog, kind, settings.workers.max(1), server.ipv6_only)?);
    }
    for l in &listeners {
        tracing::info!(target: "rot13d", addr = %l.local, kind = %l.kind.as_str(), "listening");
    }
    let _pid_file = match &startup.args.pid_file {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };
    // Serving in this process: it runs as the configured user before the
    // launcher hears "started".
    if settings.workers == 0 {
        drop_privileges(&settings)?;
    }
    report(launcher, 0);
    let m = master::Master::new(startup, settings, base, listeners)?;
    m.run()
}

/// An event base as the settings' `[reactor]` asks, with the lanes'
/// priorities.
pub(crate) fn build_base(s: &Settings) -> Result<EventBase, Error> {
    let mut base = EventBase::with_config(&s.event_config()).map_err(|e| base_error(e, s))?;
    base.priority_init(s.config.reactor.priorities.max(LANES)).map_err(Error::Reactor)?;
    Ok(base)
}

/// The listeners a configuration asks for.
pub(crate) fn wanted_listeners(s: &Settings) -> Vec<(SocketAddr, Kind)> {
    let mut v: Vec<(SocketAddr, Kind)> = s.config.server.listen.iter().map(|a| (*a, Kind::Rot13)).collect();
    if let Some(a) = s.config.admin.listen {
        v.push((a, Kind::Admin));
    }
    v
}

fn base_error(e: BaseError, s: &Settings) -> Error {
    let decided_by = match e {
        BaseError::Io(e) => return Error::os("create the event base", e),
        // Name the key that decided it, with its line when the file set it.
        BaseError::NoBackend { .. } => None,
        // The backend asked for cannot work on this host (io_uring missing
        // or forbidden): the configuration asks what cannot be had (78).
        BaseError::Unavailable { .. } => Some("reactor.backend"),
    };
    let file = s.path.as_deref().and_then(|p| config::ConfigFile::load(p).ok());
    let line_of = |k: &str| file.as_ref().and_then(|f| f.line_of(k));
    let key = decided_by.unwrap_or_else(|| {
        let candidates = ["reactor.backend", "reactor.require_features", "reactor.avoid"];
        let unset = if s.config.reactor.backend.is_some() { "reactor.backend" } else { "reactor.require_features" };
        candidates.iter().copied().find(|k| line_of(k).is_some()).unwrap_or(unset)
    });
    ConfigError::Invalid { key: key.into(), message: e.to_string(), path: s.path.clone(), line: line_of(key) }.into()
}

/// Drops to the configured user and group, if any (after binding).
pub(crate) fn drop_privileges(s: &Settings) -> Result<(), Error> {
    let Some(id) = &s.identity else { return Ok(()) };
    process::drop_privileges(id).map_err(|e| Error::os("drop privileges", e))?;
    tracing::info!(target: "rot13d", uid = ?id.uid, gid = ?id.gid, "privileges dropped");
    Ok(())
}

/// Runs `cb` on every delivery of `sig`, on the control lane (before any
/// connection).
fn watch_signal(base: &mut EventBase, sig: i32, mut cb: impl FnMut(&mut EventBase) + 'static) -> Result<(), Error> {
    let id = base.new_signal(sig, move |base, _, _| cb(base));
    base.set_priority(id, worker::LANE_CONTROL).map_err(Error::Reactor)?;
    base.add(id, None).map_err(Error::Reactor)
}

/// A forked worker's loop: serves `fds` until a drain ends. SIGTERM and
/// SIGINT drain; SIGQUIT exits at once; SIGUSR1 and SIGUSR2 are logged and
/// ignored (the master hands over a reopened log file itself). On its
/// channel the master says RETIRE (a reload: drain) or hands a new log
/// file; the channel's end of stream means the master is gone: drain.
pub(crate) fn serve_forked(
    base: &mut EventBase,
    fds: Vec<ListenFd>,
    params: WorkerParams,
    slot: Slot,
    generation: u32,
    channel: OwnedFd,
) -> Result<(), Error> {
    let done: worker::OnDone = Box::new(|base| {
        let _ = base.loopexit(None);
    });
    let shared = worker::start(base, fds, params, slot, done).map_err(Error::Reactor)?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let s = shared.clone();
        watch_signal(base, sig, move |base| s.begin_drain(base, false))?;
    }
    watch_signal(base, libc::SIGQUIT, move |_| process::exit_now(0))?;
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        watch_signal(base, sig, move |_| {
            tracing::debug!(target: "rot13d", signal = process::signal_name(sig), "signal ignored by a worker");
        })?;
    }
    let channel = std::rc::Rc::new(channel);
    let fd = channel.as_raw_fd();
    let s = shared.clone();
    let ch = channel.clone();
    let ch = base.new_event(
        fd,
        crate::reactor::EventFlags::READ | crate::reactor::EventFlags::PERSIST,
        move |base, ev, _| {
            loop {
                match process::recv_command(ch.as_fd()) {
                    Ok(Some((master::command::RETIRE, _))) => s.begin_drain(base, true),
                    Ok(Some((master::command::LOG_FILE, Some(file)))) => logging::use_file(std::fs::File::from(file)),
                    // The loop turns: say so (the master's liveness check).
                    Ok(Some((master::command::PING, _))) => {
                        let _ = process::send_command(ch.as_fd(), master::command::ALIVE, None);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(target: "rot13d", "the master is gone: draining");
                        let _ = base.del(ev);
                        s.begin_drain(base, false);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        },
    );
    base.set_priority(ch, worker::LANE_CONTROL).map_err(Error::Reactor)?;
    base.add(ch, None).map_err(Error::Reactor)?;
    worker::log_reactor(base, process::getpid(), generation);
    // Tell the master this worker serves.
    if let Err(e) = process::send_command(channel.as_fd(), master::command::READY, None) {
        tracing::warn!(target: "rot13d", error = %e, "cannot tell the master this worker serves");
    }
    sys::signal::unblock_all();
    loop {
        base.run(LoopFlags::NO_EXIT_ON_EMPTY).map_err(Error::Reactor)?;
        if base.got_exit() {
            drop(channel);
            return Ok(());
        }
    }
}

/// The pid file: locked (flock) while the daemon runs, so that a second
/// instance with the same file is refused; written atomically (a
/// temporary file beside it, renamed over it), so that a reader never sees
/// it empty or half written; removed on exit by the process that wrote it.
struct PidFile {
    path: std::path::PathBuf,
    pid: i32,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl PidFile {
    fn create(path: &std::path::Path) -> Result<PidFile, Error> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let what = |w: &str| format!("{w} the pid file {}", path.display());
        if let Ok(f) = std::fs::File::open(path)
            && let Err((_, errno)) = Flock::lock(f, FlockArg::LockSharedNonblock)
        {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let e = std::io::Error::other(format!("locked by the running rot13d {} ({errno})", holder.trim()));
            return Err(Error::os(what("lock"), e));
        }
        let pid = process::getpid();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{pid}.tmp"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Error::os(what("write"), e))?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::os(what("lock"), std::io::Error::from(e)))?;
        let written = lock.write_all(format!("{pid}\n").as_bytes()).and_then(|()| lock.sync_all());
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::os(what("write"), e));
        }
        Ok(PidFile { path: path.to_path_buf(), pid, _lock: lock })
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
    process::detach_environment().map_err(|e| Error::os("detach (chdir /, umask)", e))?;
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = sys::redirect_stdio(null.as_fd(), sys::StdStream::Stdin);
    }
    Ok(w)
}

/// Tells the launcher the start-up's result, once: the pipe closes, so no
/// worker forked later holds it.
fn report(launcher: &mut Option<OwnedFd>, code: u8) {
    if let Some(w) = launcher.take() {
        let _ = sys::write(w.as_raw_fd(), &[code]);
    }
}
