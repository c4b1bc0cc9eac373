//! The effective configuration: defaults, file and command line merged and
//! validated into typed values.
//!
//! Precedence, lowest first: built-in defaults, the `--config` file, the
//! command-line options. `--listen` replaces the whole `[server].listen`
//! list. Every problem found is reported (`ConfigError::Many` when there are
//! several), each naming the file, line and key, or the option, so that
//! `--check-config` can list them all; all of them exit 78.
//!
//! Whether a backend is *available* on this system is the reactor's call:
//! here the names are only checked against [`BACKENDS`] and [`FEATURES`].
//!
//! A reload (SIGHUP) is [`Settings::load`] again with the same [`Args`]: the
//! file is re-read and the command-line options still win.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::cli::Args;
use super::config::{
    AdminConfig, Config, ConfigFile, LanesConfig, LogConfig, LogFormat, LogLevel, ReactorConfig, ServerConfig, Workers,
};
use super::error::ConfigError;

/// Backend names, as in logs, `--backend`, `[reactor] backend` and `avoid`.
pub const BACKENDS: [&str; 3] = ["epoll", "poll", "select"];

/// Feature names accepted by `[reactor] require_features`.
pub const FEATURES: [&str; 4] = ["et", "o1", "fds", "early_close"];

/// Most worker processes accepted: more is a typo, not a plan.
pub const MAX_WORKERS: usize = 1024;

/// Largest `max_line` and watermark: 1 GiB. A connection holds up to
/// `max_line` + the high watermark; more than this is a mistake.
pub const MAX_BUFFER: usize = 1 << 30;

/// Largest timeout in seconds (about 100 years), so that deadlines never
/// overflow the clock.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Everything the daemon needs to run, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Addresses to listen on, in order, without duplicates.
    pub listen: Vec<SocketAddr>,
    /// Worker processes (`auto` resolved); 0 = serve in the master.
    pub workers: usize,
    /// Connections per serving process; `None` = derive from the fd limit.
    pub max_connections: Option<usize>,
    /// `listen(2)` backlog.
    pub backlog: u32,
    /// Longest line before it is split, at least 1.
    pub max_line: usize,
    /// Idle connections close after this; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Stalled output closes the connection after this; `None` = never.
    pub write_timeout: Option<Duration>,
    /// Pending output above which reading stops.
    pub write_high_watermark: usize,
    /// Pending output below which reading resumes; at most the high one.
    pub write_low_watermark: usize,
    /// How long a graceful stop waits; zero = close at once.
    pub shutdown_grace: Duration,
    /// User to switch to after binding.
    pub user: Option<String>,
    /// Group to switch to after binding.
    pub group: Option<String>,
    /// Event loop settings.
    pub reactor: ReactorSettings,
    /// Priority lanes.
    pub lanes: LaneSettings,
    /// Admin endpoint (`/metrics`, `/healthz`); `None` = off.
    pub admin_listen: Option<SocketAddr>,
    /// Log level and format.
    pub log: LogSettings,
    /// The configuration file these settings came from, if any (to re-read
    /// on SIGHUP).
    pub config_path: Option<PathBuf>,
}

/// `[reactor]`, checked: the event_base settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactorSettings {
    /// The backend asked for (one of [`BACKENDS`]); `None` = fastest
    /// available.
    pub backend: Option<String>,
    /// Backends never to use (each one of [`BACKENDS`]).
    pub avoid: Vec<String>,
    /// Features the backend must have (each one of [`FEATURES`]).
    pub require_features: Vec<String>,
    /// Batch epoll changes until the next dispatch.
    pub epoll_changelist: bool,
    /// Use a precise monotonic clock.
    pub precise_timer: bool,
    /// Read the clock at every use.
    pub no_cache_time: bool,
    /// Ignore `EVENT_NO*` and `EVENT_EPOLL_USE_CHANGELIST`.
    pub ignore_env: bool,
    /// Number of priority queues, 1..=256.
    pub priorities: usize,
    /// Look for higher-priority events at least this often; `None` = no
    /// limit.
    pub max_dispatch_interval: Option<Duration>,
    /// Look for higher-priority events after this many callbacks; `None` =
    /// no limit.
    pub max_callbacks: Option<u32>,
    /// The limits apply from this priority down; below `priorities`.
    pub min_priority: usize,
}

/// `[lanes]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSettings {
    /// Whether connections are sorted into lanes at all.
    pub enabled: bool,
    /// Bytes within `bulk_window` that make a connection bulk; at least 1.
    pub bulk_after_bytes: u64,
    /// The measuring window; not zero.
    pub bulk_window: Duration,
    /// Time below the threshold after which a bulk connection is
    /// interactive again; not zero.
    pub quiet: Duration,
}

/// `[log]`, with the command line applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Least severe level logged (`RUST_LOG` wins when set).
    pub level: LogLevel,
    /// Line format.
    pub format: LogFormat,
}

impl Default for Settings {
    /// The settings of `rot13d` with no file and no options, `auto` workers
    /// resolved on this machine.
    fn default() -> Settings {
        // The defaults pass validation (a test checks); the fallback only
        // keeps this function total.
        Settings::resolve(None, &Args::default()).unwrap_or_else(|_| Settings::fallback())
    }
}

impl Settings {
    /// Reads the file named by `args.config` (if any), then merges and
    /// validates it with `args`. This is what `main` and a SIGHUP reload
    /// call.
    pub fn load(args: &Args) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(ConfigFile::load(path)?),
            None => None,
        };
        Settings::resolve(file.as_ref(), args)
    }

    /// Merges an already parsed file (if any) with `args` and validates,
    /// resolving `workers = auto` with [`cpus::available`](super::cpus::available)
    /// (the affinity mask capped by the cgroup CPU quota).
    pub fn resolve(file: Option<&ConfigFile>, args: &Args) -> Result<Settings, ConfigError> {
        Settings::resolve_with_cpus(file, args, super::cpus::available())
    }

    /// As [`resolve`](Settings::resolve), with `auto` meaning `cpus`
    /// workers (at least 1).
    pub fn resolve_with_cpus(file: Option<&ConfigFile>, args: &Args, cpus: usize) -> Result<Settings, ConfigError> {
        let config = merge(file.map(|f| &f.config), args);
        let mut check = Check { file, args, problems: Vec::new() };
        let settings = check.settings(&config, cpus);
        // Options first, then the file's problems in line order.
        check.problems.sort_by_key(|p| match p {
            ConfigError::Invalid { path, line, .. } => (path.is_some(), line.unwrap_or(usize::MAX)),
            _ => (true, usize::MAX),
        });
        match ConfigError::from_problems(check.problems) {
            Some(err) => Err(err),
            None => Ok(Settings { config_path: file.map(|f| f.path.clone()), ..settings }),
        }
    }

    /// The settings as a [`Config`], the shape of the file: what
    /// `--print-config` prints. Durations become whole seconds or
    /// milliseconds, `None` timeouts 0, addresses strings.
    pub fn to_config(&self) -> Config {
        let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs());
        Config {
            server: ServerConfig {
                listen: self.listen.iter().map(|a| a.to_string()).collect(),
                workers: Workers::Count(self.workers),
                max_connections: self.max_connections,
                backlog: self.backlog,
                max_line: self.max_line,
                idle_timeout: secs(self.idle_timeout),
                write_timeout: secs(self.write_timeout),
                write_high_watermark: self.write_high_watermark,
                write_low_watermark: self.write_low_watermark,
                shutdown_grace: self.shutdown_grace.as_secs(),
                user: self.user.clone(),
                group: self.group.clone(),
            },
            reactor: ReactorConfig {
                backend: self.reactor.backend.clone(),
                avoid: self.reactor.avoid.clone(),
                require_features: self.reactor.require_features.clone(),
                epoll_changelist: self.reactor.epoll_changelist,
                precise_timer: self.reactor.precise_timer,
                no_cache_time: self.reactor.no_cache_time,
                ignore_env: self.reactor.ignore_env,
                priorities: self.reactor.priorities,
                max_dispatch_interval_ms: self.reactor.max_dispatch_interval.map(millis),
                max_callbacks: self.reactor.max_callbacks,
                min_priority: self.reactor.min_priority,
            },
            lanes: LanesConfig {
                enabled: self.lanes.enabled,
                bulk_after_bytes: self.lanes.bulk_after_bytes,
                bulk_window_ms: millis(self.lanes.bulk_window),
                quiet_ms: millis(self.lanes.quiet),
            },
            admin: AdminConfig { listen: self.admin_listen.map(|a| a.to_string()) },
            log: LogConfig { level: self.log.level, format: self.log.format },
        }
    }

    /// The effective configuration as TOML, for `--print-config`: loading
    /// it back (as a file, with no options) gives these same settings.
    /// `workers` is printed resolved (a number, not `auto`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(&self.to_config())?;
        let source = match &self.config_path {
            Some(p) => format!("{} and the command line", p.display()),
            None => "the command line".to_string(),
        };
        Ok(format!(
            "# Effective configuration of rot13d {}: defaults, {source} merged.\n\n{body}",
            env!("CARGO_PKG_VERSION")
        ))
    }

    /// The defaults without going through validation.
    fn fallback() -> Settings {
        Settings {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 40713))],
            workers: 1,
            max_connections: None,
            backlog: 1024,
            max_line: 16384,
            idle_timeout: Some(Duration::from_secs(300)),
            write_timeout: Some(Duration::from_secs(60)),
            write_high_watermark: 256 * 1024,
            write_low_watermark: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            user: None,
            group: None,
            reactor: ReactorSettings {
                backend: None,
                avoid: Vec::new(),
                require_features: Vec::new(),
                epoll_changelist: false,
                precise_timer: false,
                no_cache_time: false,
                ignore_env: false,
                priorities: 3,
                max_dispatch_interval: None,
                max_callbacks: None,
                min_priority: 0,
            },
            lanes: LaneSettings {
                enabled: true,
                bulk_after_bytes: 1024 * 1024,
                bulk_window: Duration::from_secs(1),
                quiet: Duration::from_secs(1),
            },
            admin_listen: None,
            log: LogSettings { level: LogLevel::Info, format: LogFormat::Text },
            config_path: None,
        }
    }
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The file's config (or the defaults) with the command-line options
/// applied.
fn merge(file: Option<&Config>, args: &Args) -> Config {
    let mut c = file.cloned().unwrap_or_default();
    if !args.listen.is_empty() {
        c.server.listen = args.listen.iter().map(|a| a.to_string()).collect();
    }
    if let Some(w) = args.workers {
        c.server.workers = w;
    }
    if let Some(n) = args.max_line {
        c.server.max_line = n;
    }
    if let Some(b) = &args.backend {
        c.reactor.backend = Some(b.clone());
    }
    if let Some(l) = args.log_level {
        c.log.level = l;
    }
    if let Some(f) = args.log_format {
        c.log.format = f;
    }
    c
}

/// The option that overrides `key`, when it was given.
fn cli_option(args: &Args, key: &str) -> Option<&'static str> {
    let given = match key {
        "server.listen" => !args.listen.is_empty(),
        "server.workers" => args.workers.is_some(),
        "server.max_line" => args.max_line.is_some(),
        "reactor.backend" => args.backend.is_some(),
        "log.level" => args.log_level.is_some(),
        "log.format" => args.log_format.is_some(),
        _ => false,
    };
    if !given {
        return None;
    }
    Some(match key {
        "server.listen" => "--listen",
        "server.workers" => "--workers",
        "server.max_line" => "--max-line",
        "reactor.backend" => "--backend",
        "log.level" => "--log-level",
        _ => "--log-format",
    })
}

/// Validation state: where values came from, and the problems so far.
struct Check<'a> {
    file: Option<&'a ConfigFile>,
    args: &'a Args,
    problems: Vec<ConfigError>,
}

impl Check<'_> {
    /// Records that the value of `keys[0]` is wrong. When the problem is
    /// between keys (low > high watermark), the first one the operator set
    /// is named: an option, else a key of the file, else `keys[0]`.
    fn fail(&mut self, keys: &[&str], message: impl Into<String>) {
        let message = message.into();
        // `section.key[i]` is an array element: named as its key, located
        // at its own line.
        let base = |key: &'_ str| key.split_once('[').map_or(key, |(b, _)| b).to_string();
        let first = keys.first().copied().unwrap_or("?");
        for key in keys {
            if let Some(option) = cli_option(self.args, &base(key)) {
                self.problems.push(ConfigError::Invalid { key: option.to_string(), message, path: None, line: None });
                return;
            }
            if let Some(file) = self.file
                && let Some(line) = file.line_of(key).or_else(|| file.line_of(&base(key)))
            {
                self.problems.push(ConfigError::Invalid {
                    key: base(key),
                    message,
                    path: Some(file.path.clone()),
                    line: Some(line),
                });
                return;
            }
        }
        self.problems.push(ConfigError::Invalid {
            key: base(first),
            message,
            path: self.file.map(|f| f.path.clone()),
            line: None,
        });
    }

    /// Seconds as a duration, checked against [`MAX_SECONDS`].
    fn seconds(&mut self, key: &str, secs: u64) -> Duration {
        if secs > MAX_SECONDS {
            self.fail(&[key], format!("{secs} seconds is more than the most, {MAX_SECONDS}"));
        }
        Duration::from_secs(secs.min(MAX_SECONDS))
    }

    /// Milliseconds as a duration, at least 1 ms.
    fn positive_millis(&mut self, key: &str, ms: u64) -> Duration {
        if ms == 0 {
            self.fail(&[key], "must be at least 1 (milliseconds)");
        } else if ms > MAX_SECONDS * 1000 {
            self.fail(&[key], format!("{ms} ms is more than the most, {}", MAX_SECONDS * 1000));
        }
        Duration::from_millis(ms.clamp(1, MAX_SECONDS * 1000))
    }

    /// An `IP:PORT` address.
    fn address(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    &[key],
                    format!(
                        "`{text}` is not an address: expected IP:PORT such as \
                         0.0.0.0:40713 or [::]:40713"
                    ),
                );
                None
            }
        }
    }

    /// A name out of `known`.
    fn name(&mut self, key: &str, what: &str, name: &str, known: &[&str]) -> bool {
        if known.contains(&name) {
            return true;
        }
        self.fail(&[key], format!("unknown {what} `{name}`: expected one of {}", known.join(", ")));
        false
    }

    /// Checks `c` and builds the settings (with placeholder values where a
    /// problem was recorded).
    fn settings(&mut self, c: &Config, cpus: usize) -> Settings {
        let s = &c.server;

        let mut listen = Vec::new();
        for (i, text) in s.listen.iter().enumerate() {
            let key = format!("server.listen[{i}]");
            if let Some(a) = self.address(&key, text) {
                if listen.contains(&a) && a.port() != 0 {
                    self.fail(&[&key], format!("{a} is listed twice"));
                } else {
                    listen.push(a);
                }
            }
        }
        if s.listen.is_empty() {
            self.fail(&["server.listen"], "needs at least one address");
        }

        let workers = match s.workers {
            Workers::Auto => cpus.clamp(1, MAX_WORKERS),
            Workers::Count(n) if n > MAX_WORKERS => {
                self.fail(&["server.workers"], format!("{n} is more than the most, {MAX_WORKERS}"));
                MAX_WORKERS
            }
            Workers::Count(n) => n,
        };

        if s.max_connections == Some(0) {
            self.fail(&["server.max_connections"], "must be at least 1 (or absent: from the fd limit)");
        }
        if s.backlog == 0 || s.backlog > i32::MAX as u32 {
            self.fail(&["server.backlog"], format!("must be between 1 and {}", i32::MAX));
        }
        if s.max_line == 0 {
            self.fail(&["server.max_line"], "must be at least 1");
        } else if s.max_line > MAX_BUFFER {
            self.fail(&["server.max_line"], format!("{} is more than the most, {MAX_BUFFER}", s.max_line));
        }
        if s.write_high_watermark == 0 {
            self.fail(&["server.write_high_watermark"], "must be at least 1");
        } else if s.write_high_watermark > MAX_BUFFER {
            self.fail(
                &["server.write_high_watermark"],
                format!("{} is more than the most, {MAX_BUFFER}", s.write_high_watermark),
            );
        } else if s.write_low_watermark > s.write_high_watermark {
            self.fail(
                &["server.write_low_watermark", "server.write_high_watermark"],
                format!(
                    "write_low_watermark ({}) is above write_high_watermark ({})",
                    s.write_low_watermark, s.write_high_watermark
                ),
            );
        }
        let idle = self.seconds("server.idle_timeout", s.idle_timeout);
        let write = self.seconds("server.write_timeout", s.write_timeout);
        let grace = self.seconds("server.shutdown_grace", s.shutdown_grace);
        for (key, v) in [("server.user", &s.user), ("server.group", &s.group)] {
            if let Some(name) = v
                && (name.is_empty() || name.contains('\0'))
            {
                self.fail(&[key], "must be a user or group name");
            }
        }

        let reactor = self.reactor(&c.reactor);
        let lanes = LaneSettings {
            enabled: c.lanes.enabled,
            bulk_after_bytes: c.lanes.bulk_after_bytes,
            bulk_window: self.positive_millis("lanes.bulk_window_ms", c.lanes.bulk_window_ms),
            quiet: self.positive_millis("lanes.quiet_ms", c.lanes.quiet_ms),
        };
        if c.lanes.bulk_after_bytes == 0 {
            self.fail(&["lanes.bulk_after_bytes"], "must be at least 1");
        }

        let admin_listen = match &c.admin.listen {
            Some(text) => self.address("admin.listen", text),
            None => None,
        };
        if let Some(a) = admin_listen
            && a.port() != 0
            && listen.contains(&a)
        {
            self.fail(&["admin.listen"], format!("{a} is also in server.listen"));
        }

        Settings {
            listen,
            workers,
            max_connections: s.max_connections,
            backlog: s.backlog,
            max_line: s.max_line,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            write_timeout: (!write.is_zero()).then_some(write),
            write_high_watermark: s.write_high_watermark,
            write_low_watermark: s.write_low_watermark,
            shutdown_grace: grace,
            user: s.user.clone(),
            group: s.group.clone(),
            reactor,
            lanes,
            admin_listen,
            log: LogSettings { level: c.log.level, format: c.log.format },
            config_path: None,
        }
    }

    /// Checks `[reactor]`.
    fn reactor(&mut self, r: &ReactorConfig) -> ReactorSettings {
        if let Some(b) = &r.backend
            && self.name("reactor.backend", "backend", b, &BACKENDS)
            && r.avoid.contains(b)
        {
            self.fail(&["reactor.backend", "reactor.avoid"], format!("`{b}` is also in reactor.avoid"));
        }
        for (i, b) in r.avoid.iter().enumerate() {
            self.name(&format!("reactor.avoid[{i}]"), "backend", b, &BACKENDS);
        }
        if !r.avoid.is_empty() && BACKENDS.iter().all(|b| r.avoid.iter().any(|a| a == b)) {
            self.fail(&["reactor.avoid"], "avoids every backend");
        }
        for (i, f) in r.require_features.iter().enumerate() {
            let key = format!("reactor.require_features[{i}]");
            self.name(&key, "feature", f, &FEATURES);
        }
        if !(1..=256).contains(&r.priorities) {
            self.fail(&["reactor.priorities"], format!("{} is not between 1 and 256", r.priorities));
        } else if r.min_priority >= r.priorities {
            self.fail(
                &["reactor.min_priority", "reactor.priorities"],
                format!("min_priority ({}) must be below priorities ({})", r.min_priority, r.priorities),
            );
        }
        if r.max_callbacks == Some(0) {
            self.fail(&["reactor.max_callbacks"], "must be at least 1 (or absent: no limit)");
        }
        let max_dispatch_interval = r.max_dispatch_interval_ms.map(|ms| {
            if ms > MAX_SECONDS * 1000 {
                self.fail(
                    &["reactor.max_dispatch_interval_ms"],
                    format!("{ms} ms is more than the most, {}", MAX_SECONDS * 1000),
                );
            }
            Duration::from_millis(ms.min(MAX_SECONDS * 1000))
        });
        ReactorSettings {
            backend: r.backend.clone(),
            avoid: r.avoid.clone(),
            require_features: r.require_features.clone(),
            epoll_changelist: r.epoll_changelist,
            precise_timer: r.precise_timer,
            no_cache_time: r.no_cache_time,
            ignore_env: r.ignore_env,
            priorities: r.priorities,
            max_dispatch_interval,
            max_callbacks: r.max_callbacks,
            min_priority: r.min_priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::cli::parse_from;
    use std::path::Path;

    const PATH: &str = "/etc/rot13d/test.toml";

    fn file(text: &str) -> ConfigFile {
        match ConfigFile::parse(text, Path::new(PATH)) {
            Ok(f) => f,
            Err(e) => panic!("test file does not parse: {e}"),
        }
    }

    fn args(list: &[&str]) -> Args {
        match parse_from(std::iter::once("rot13d").chain(list.iter().copied())) {
            Ok(a) => a,
            Err(e) => panic!("test args do not parse: {e}"),
        }
    }

    fn resolve(text: Option<&str>, cli: &[&str]) -> Result<Settings, ConfigError> {
        let f = text.map(file);
        Settings::resolve_with_cpus(f.as_ref(), &args(cli), 4)
    }

    /// The one problem of `text` + `cli`, as (key, line, message).
    fn problem(text: Option<&str>, cli: &[&str]) -> (String, Option<usize>, String) {
        match resolve(text, cli) {
            Err(ConfigError::Invalid { key, line, message, .. }) => (key, line, message),
            other => panic!("expected one invalid value, got {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn defaults() {
        let s = resolve(None, &[]).expect("defaults are valid");
        assert_eq!(s.listen, vec![addr("0.0.0.0:40713")]);
        assert_eq!(s.workers, 4);
        assert_eq!(s.max_connections, None);
        assert_eq!(s.backlog, 1024);
        assert_eq!(s.max_line, 16384);
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(s.write_timeout, Some(Duration::from_secs(60)));
        assert_eq!((s.write_high_watermark, s.write_low_watermark), (262144, 65536));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!((s.user.as_deref(), s.group.as_deref()), (None, None));
        assert_eq!(s.reactor.backend, None);
        assert_eq!(s.reactor.priorities, 3);
        assert_eq!(s.reactor.min_priority, 0);
        assert_eq!(s.reactor.max_dispatch_interval, None);
        assert!(s.lanes.enabled);
        assert_eq!(s.lanes.bulk_after_bytes, 1 << 20);
        assert_eq!(s.lanes.bulk_window, Duration::from_secs(1));
        assert_eq!(s.lanes.quiet, Duration::from_secs(1));
        assert_eq!(s.admin_listen, None);
        assert_eq!(s.log, LogSettings { level: LogLevel::Info, format: LogFormat::Text });
        assert_eq!(s.config_path, None);
        let fallback = Settings { workers: 4, ..Settings::fallback() };
        assert_eq!(s, fallback);
    }

    #[test]
    fn default_impl_resolves_auto_on_this_machine() {
        let s = Settings::default();
        assert_eq!(s.workers, crate::sys::available_cpus().max(1));
        assert!(s.workers >= 1);
    }

    #[test]
    fn annotated_file_gives_the_defaults() {
        let text = include_str!("../../config/rot13d.toml");
        let from_file = resolve(Some(text), &[]).expect("annotated file is valid");
        let none = resolve(None, &[]).expect("defaults are valid");
        assert_eq!(from_file, Settings { config_path: Some(PATH.into()), ..none });
    }

    #[test]
    fn workers_auto_and_counts() {
        let f = |t: &str, cpus| {
            let file = file(t);
            Settings::resolve_with_cpus(Some(&file), &Args::default(), cpus).map(|s| s.workers)
        };
        assert_eq!(f("[server]\nworkers = \"auto\"\n", 6).ok(), Some(6));
        assert_eq!(f("[server]\nworkers = \"auto\"\n", 0).ok(), Some(1));
        assert_eq!(f("[server]\nworkers = \"auto\"\n", 5000).ok(), Some(MAX_WORKERS));
        assert_eq!(f("[server]\nworkers = 0\n", 6).ok(), Some(0));
        assert_eq!(f("[server]\nworkers = 2\n", 6).ok(), Some(2));
        assert_eq!(resolve(None, &["-w", "auto"]).map(|s| s.workers).ok(), Some(4));
        let (key, line, _) = problem(Some("[server]\nworkers = 5000\n"), &[]);
        assert_eq!((key.as_str(), line), ("server.workers", Some(2)));
    }

    #[test]
    fn cli_overrides_file() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nworkers = 2\n\
                    max_line = 10\nbacklog = 7\n[reactor]\nbackend = \"select\"\n\
                    [log]\nlevel = \"warn\"\nformat = \"json\"\n";
        let s = resolve(
            Some(text),
            &[
                "-l",
                "127.0.0.1:9",
                "-w",
                "0",
                "--max-line",
                "20",
                "--backend",
                "poll",
                "--log-level",
                "trace",
                "--log-format",
                "text",
            ],
        )
        .expect("valid");
        assert_eq!(s.listen, vec![addr("127.0.0.1:9")]);
        assert_eq!(s.workers, 0);
        assert_eq!(s.max_line, 20);
        assert_eq!(s.backlog, 7, "not overridden: from the file");
        assert_eq!(s.reactor.backend.as_deref(), Some("poll"));
        assert_eq!(s.log, LogSettings { level: LogLevel::Trace, format: LogFormat::Text });
        assert_eq!(s.config_path.as_deref(), Some(Path::new(PATH)));

        let s = resolve(Some(text), &[]).expect("valid");
        assert_eq!(s.listen, vec![addr("127.0.0.1:1"), addr("127.0.0.1:2")]);
        assert_eq!((s.workers, s.max_line), (2, 10));
        assert_eq!(s.reactor.backend.as_deref(), Some("select"));
        assert_eq!(s.log, LogSettings { level: LogLevel::Warn, format: LogFormat::Json });
    }

    #[test]
    fn listen_is_repeatable_and_replaces_the_list() {
        let s = resolve(None, &["-l", "127.0.0.1:0", "-l", "[::1]:0", "-l", "127.0.0.1:5"]).expect("valid");
        assert_eq!(s.listen, vec![addr("127.0.0.1:0"), addr("[::1]:0"), addr("127.0.0.1:5")]);
    }

    #[test]
    fn zero_timeouts_mean_never() {
        let s =
            resolve(Some("[server]\nidle_timeout = 0\nwrite_timeout = 0\nshutdown_grace = 0\n"), &[]).expect("valid");
        assert_eq!((s.idle_timeout, s.write_timeout), (None, None));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn max_line_zero_in_file_names_file_line_key() {
        let err = resolve(Some("# rot13d\n[server]\nbacklog = 5\nmax_line = 0\n"), &[]).expect_err("max_line = 0");
        let text = err.to_string();
        assert!(text.contains(PATH), "{text}");
        assert!(text.contains(":4:"), "{text}");
        assert!(text.contains("server.max_line"), "{text}");
    }

    #[test]
    fn max_line_zero_on_command_line_names_the_option() {
        let (key, line, _) = problem(Some("[server]\nmax_line = 5\n"), &["--max-line", "0"]);
        assert_eq!((key.as_str(), line), ("--max-line", None));
        let err = resolve(None, &["--max-line", "0"]).expect_err("max_line = 0");
        assert_eq!(err.to_string(), "invalid value for --max-line: must be at least 1");
    }

    #[test]
    fn every_validation_error_names_key_and_line() {
        let cases: &[(&str, &str)] = &[
            ("[server]\nmax_line = 0\n", "server.max_line"),
            ("[server]\nmax_line = 2000000000\n", "server.max_line"),
            ("[server]\nlisten = [\"nowhere:1\"]\n", "server.listen"),
            ("[server]\nlisten = [\"127.0.0.1\"]\n", "server.listen"),
            ("[server]\nlisten = []\n", "server.listen"),
            ("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n", "server.listen"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[server]\nbacklog = 0\n", "server.backlog"),
            ("[server]\nbacklog = 4000000000\n", "server.backlog"),
            ("[server]\nwrite_high_watermark = 0\n", "server.write_high_watermark"),
            ("[server]\nwrite_low_watermark = 300000\n", "server.write_low_watermark"),
            ("[server]\nwrite_high_watermark = 1000\n", "server.write_high_watermark"),
            ("[server]\nidle_timeout = 99999999999\n", "server.idle_timeout"),
            ("[server]\nwrite_timeout = 99999999999\n", "server.write_timeout"),
            ("[server]\nshutdown_grace = 99999999999\n", "server.shutdown_grace"),
            ("[server]\nuser = \"\"\n", "server.user"),
            ("[server]\ngroup = \"\"\n", "server.group"),
            ("[reactor]\nbackend = \"kqueue\"\n", "reactor.backend"),
            ("[reactor]\navoid = [\"iocp\"]\n", "reactor.avoid"),
            ("[reactor]\navoid = [\"epoll\", \"poll\", \"select\"]\n", "reactor.avoid"),
            ("[reactor]\nbackend = \"poll\"\navoid = [\"poll\"]\n", "reactor.backend"),
            ("[reactor]\nrequire_features = [\"fast\"]\n", "reactor.require_features"),
            ("[reactor]\npriorities = 0\n", "reactor.priorities"),
            ("[reactor]\npriorities = 257\n", "reactor.priorities"),
            ("[reactor]\nmin_priority = 3\n", "reactor.min_priority"),
            ("[reactor]\npriorities = 2\nmin_priority = 2\n", "reactor.min_priority"),
            ("[reactor]\nmax_callbacks = 0\n", "reactor.max_callbacks"),
            ("[reactor]\nmax_dispatch_interval_ms = 99999999999999\n", "reactor.max_dispatch_interval_ms"),
            ("[lanes]\nbulk_after_bytes = 0\n", "lanes.bulk_after_bytes"),
            ("[lanes]\nbulk_window_ms = 0\n", "lanes.bulk_window_ms"),
            ("[lanes]\nquiet_ms = 0\n", "lanes.quiet_ms"),
            ("[admin]\nlisten = \"localhost\"\n", "admin.listen"),
            ("[admin]\nlisten = \"0.0.0.0:40713\"\n", "admin.listen"),
        ];
        for (text, want) in cases {
            // Two lines of padding so that the line number is not 1 or 2 by luck.
            let padded = format!("# test\n\n{text}");
            let want_line = 2
                + padded
                    .lines()
                    .skip(2)
                    .position(|l| l.starts_with(want.split('.').nth(1).unwrap_or(want)))
                    .unwrap_or(0)
                + 1;
            let (key, line, message) = problem(Some(&padded), &[]);
            assert_eq!(&key, want, "{text:?}: {message}");
            assert_eq!(line, Some(want_line), "{text:?}: {message}");
            let full = resolve(Some(&padded), &[]).expect_err("invalid").to_string();
            assert!(full.starts_with(&format!("{PATH}:{want_line}: ")), "{full}");
            assert!(full.contains(want), "{full}");
        }
    }

    #[test]
    fn array_element_problems_have_the_element_line() {
        let text = "[server]\nlisten = [\n  \"127.0.0.1:1\",\n  \"nowhere\",\n]\n\
                    [reactor]\nrequire_features = [\"et\",\n  \"fast\"]\n";
        let err = resolve(Some(text), &[]).expect_err("two problems");
        let message = err.to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(lines[0].starts_with(&format!("{PATH}:4: invalid value for server.listen: `nowhere`")), "{message}");
        assert!(lines[1].starts_with(&format!("{PATH}:8: invalid value for reactor.require_features")), "{message}");
        let dup = "[server]\nlisten = [\"127.0.0.1:1\",\n\"127.0.0.1:1\"]\n";
        let (key, line, message) = problem(Some(dup), &[]);
        assert_eq!((key.as_str(), line), ("server.listen", Some(3)), "{message}");
        // Port 0 twice is two sockets on two free ports: fine.
        assert!(resolve(Some("[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n"), &[]).is_ok());
    }

    #[test]
    fn all_problems_are_reported() {
        let text = "[server]\nbacklog = 0\nmax_line = 0\n[reactor]\npriorities = 0\n";
        let err = resolve(Some(text), &[]).expect_err("three problems");
        assert_eq!(err.problems().len(), 3, "{err}");
        let message = err.to_string();
        let lines: Vec<&str> = message.lines().collect();
        let want = [("server.backlog", 2), ("server.max_line", 3), ("reactor.priorities", 5)];
        assert_eq!(lines.len(), want.len(), "{message}");
        for (got, (key, line)) in lines.iter().zip(want) {
            let prefix = format!("{PATH}:{line}: invalid value for {key}");
            assert!(got.starts_with(&prefix), "in line order: {message}");
        }
        let mixed = resolve(Some("[server]\nbacklog = 0\n"), &["--max-line", "0"]).expect_err("two problems");
        let first = mixed.to_string();
        assert!(first.starts_with("invalid value for --max-line"), "options first: {first}");
    }

    #[test]
    fn backend_on_command_line_is_checked() {
        let (key, line, message) = problem(None, &["--backend", "kqueue"]);
        assert_eq!((key.as_str(), line), ("--backend", None));
        assert!(message.contains("epoll, poll, select"), "{message}");
        for b in BACKENDS {
            assert!(resolve(None, &["--backend", b]).is_ok(), "{b}");
        }
    }

    #[test]
    fn reactor_values_are_typed() {
        let s = resolve(
            Some(
                "[reactor]\nbackend = \"epoll\"\navoid = [\"select\"]\n\
                 require_features = [\"et\", \"o1\", \"fds\", \"early_close\"]\n\
                 epoll_changelist = true\nprecise_timer = true\nno_cache_time = true\n\
                 ignore_env = true\npriorities = 256\nmax_dispatch_interval_ms = 5\n\
                 max_callbacks = 10\nmin_priority = 255\n",
            ),
            &[],
        )
        .expect("valid")
        .reactor;
        assert_eq!(s.backend.as_deref(), Some("epoll"));
        assert_eq!(s.avoid, vec!["select"]);
        assert_eq!(s.require_features, vec!["et", "o1", "fds", "early_close"]);
        assert!(s.epoll_changelist && s.precise_timer && s.no_cache_time && s.ignore_env);
        assert_eq!(s.priorities, 256);
        assert_eq!(s.max_dispatch_interval, Some(Duration::from_millis(5)));
        assert_eq!(s.max_callbacks, Some(10));
        assert_eq!(s.min_priority, 255);
    }

    #[test]
    fn watermark_problem_names_the_key_the_operator_set() {
        // Only the high one is in the file: it is the one named.
        let (key, line, message) = problem(Some("\n[server]\nwrite_high_watermark = 100\n"), &[]);
        assert_eq!((key.as_str(), line), ("server.write_high_watermark", Some(3)));
        assert!(message.contains("65536") && message.contains("100"), "{message}");
        // Equal is fine.
        assert!(resolve(Some("[server]\nwrite_high_watermark = 5\nwrite_low_watermark = 5\n"), &[]).is_ok());
    }

    #[test]
    fn print_config_round_trips() {
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &[]),
            (None, &["-l", "127.0.0.1:0", "-l", "[::1]:7", "-w", "0", "--max-line", "3"]),
            (
                Some(
                    "[server]\nmax_connections = 100\nidle_timeout = 0\nwrite_timeout = 7\n\
                     shutdown_grace = 0\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
                     [reactor]\nbackend = \"select\"\navoid = [\"epoll\"]\n\
                     require_features = [\"fds\"]\nepoll_changelist = true\npriorities = 8\n\
                     max_dispatch_interval_ms = 0\nmax_callbacks = 3\nmin_priority = 2\n\
                     [lanes]\nenabled = false\nbulk_after_bytes = 5\nbulk_window_ms = 6\n\
                     quiet_ms = 7\n[admin]\nlisten = \"[::1]:9100\"\n\
                     [log]\nlevel = \"error\"\nformat = \"json\"\n",
                ),
                &["--log-level", "debug"],
            ),
        ];
        for (text, cli) in cases {
            let s = resolve(*text, cli).expect("valid");
            let printed = s.to_toml().expect("renders");
            let back_file = ConfigFile::parse(&printed, Path::new("printed.toml"))
                .unwrap_or_else(|e| panic!("--print-config output does not parse: {e}\n{printed}"));
            let back = Settings::resolve_with_cpus(Some(&back_file), &Args::default(), 1)
                .unwrap_or_else(|e| panic!("--print-config output is invalid: {e}\n{printed}"));
            assert_eq!(back, Settings { config_path: Some("printed.toml".into()), ..s.clone() }, "{printed}");
            assert!(printed.starts_with("# Effective configuration of rot13d"), "{printed}");
        }
    }

    #[test]
    fn print_config_of_defaults_shows_every_section() {
        let printed = resolve(None, &[]).expect("valid").to_toml().expect("renders");
        for section in ["[server]", "[reactor]", "[lanes]", "[log]"] {
            assert!(printed.contains(section), "{printed}");
        }
        assert!(printed.contains("workers = 4"), "{printed}");
        assert!(printed.contains("listen = [\"0.0.0.0:40713\"]"), "{printed}");
    }

    #[test]
    fn load_reads_the_config_option() {
        let path = std::env::temp_dir().join(format!("rot13d-settings-{}.toml", std::process::id()));
        let written = std::fs::write(&path, "[server]\nmax_line = 77\n");
        let loaded = written.map(|()| Settings::load(&args(&["-c", &path.display().to_string()])));
        let _ = std::fs::remove_file(&path);
        let s = loaded.expect("temp file written").expect("valid");
        assert_eq!(s.max_line, 77);
        assert_eq!(s.config_path.as_deref(), Some(path.as_path()));

        let missing = path.with_extension("absent");
        let err = Settings::load(&args(&["-c", &missing.display().to_string()])).expect_err("missing file");
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }
}
