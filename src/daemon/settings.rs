//! The effective configuration: the one [`Config`] model with the command
//! line applied and validated, plus the values derived from the host.
//!
//! Precedence, lowest first: built-in defaults (each section's `Default`),
//! the `--config` file, the command-line options ([`OVERRIDES`], one row per
//! option). `--listen` replaces the whole `[server].listen` list. Every
//! problem found is reported (`ConfigError::Many` when there are several),
//! each naming the file, line and key, or the option, so that
//! `--check-config` can list them all; all of them exit 78.
//!
//! [`Settings`] does not list the keys again: it holds the validated
//! [`Config`] and only what is derived from the [`Host`]: `workers = auto`
//! resolved, the per-process connection cap derived from the fd limit when
//! `max_connections` is absent, and the resolved user and group. A reload
//! (SIGHUP) is [`Settings::load`] again with the same [`Args`] and the same
//! host snapshot taken at start, so whatever start-up derived, a reload
//! derives the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::cli::Args;
use super::config::{Config, ConfigFile, Problems, Workers};
use super::error::ConfigError;
use crate::reactor::{BaseFlags, EventConfig, Features};
use crate::sys::process::{self, Identity};

/// The listeners socket activation passed: they replace the configured
/// addresses of their kind (`[server] listen`, `[admin] listen`, over the
/// file and the command line) at start and at every reload, before the
/// configuration is checked; a kind none was passed for comes from the
/// configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    /// The passed rot13 listeners' addresses, if any was passed.
    pub rot13: Option<Vec<SocketAddr>>,
    /// The passed admin socket's address (the socket named `admin`).
    pub admin: Option<SocketAddr>,
}

impl Pinned {
    /// Replaces the configured addresses of every kind passed.
    pub fn apply(&self, c: &mut Config) {
        if let Some(addrs) = &self.rot13 {
            c.server.listen = addrs.clone();
        }
        if let Some(addr) = self.admin {
            c.admin.listen = Some(addr);
        }
    }
}

/// fds kept back from the limit for listeners, pipes, the epoll fd and logs
/// when `max_connections` is derived from it.
pub const FD_RESERVE: u64 = 64;

/// With lanes on and no dispatch limit set, a less urgent lane passed over
/// this many turns in a row gets a pass: 1 = every turn runs every lane,
/// most urgent first (the bulk pass itself is bounded by
/// `connection::BULK_BYTES_PER_POLL`).
const LANE_STARVE_TURNS: usize = 1;

/// A command-line option that overrides a configuration key: the one table
/// of them (SPEC §2). `apply` sets the key from the option when it was
/// given and says whether it was.
pub struct Override {
    /// `section.key`.
    pub key: &'static str,
    /// The option, as problems name it.
    pub option: &'static str,
    /// Applies the option to the configuration; whether it was given.
    pub apply: fn(&Args, &mut Config) -> bool,
}

/// Sets `slot` from `given` when it is `Some`.
fn set<T: Clone>(given: &Option<T>, slot: &mut T) -> bool {
    given.as_ref().map(|v| *slot = v.clone()).is_some()
}

/// Every command-line option that is also a configuration key.
pub const OVERRIDES: &[Override] = &[
    Override {
        key: "server.listen",
        option: "--listen",
        apply: |a, c| {
            let given = !a.listen.is_empty();
            if given {
                c.server.listen = a.listen.clone();
            }
            given
        },
    },
    Override { key: "server.workers", option: "--workers", apply: |a, c| set(&a.workers, &mut c.server.workers) },
    Override { key: "server.max_line", option: "--max-line", apply: |a, c| set(&a.max_line, &mut c.server.max_line) },
    Override {
        key: "reactor.backend",
        option: "--backend",
        apply: |a, c| set(&a.backend.clone().map(Some), &mut c.reactor.backend),
    },
    Override { key: "log.level", option: "--log-level", apply: |a, c| set(&a.log_level, &mut c.log.level) },
    Override { key: "log.format", option: "--log-format", apply: |a, c| set(&a.log_format, &mut c.log.format) },
];

/// What the settings derive from the machine they run on.
pub trait Host {
    /// CPUs this process may run on (`workers = auto`): the affinity mask,
    /// capped by the cgroup CPU quota.
    fn cpus(&self) -> usize;
    /// The soft open-file limit (the connection cap when `max_connections`
    /// is absent).
    fn fd_limit(&self) -> u64;
    /// The user and group to run as, looked up; `Err((key, why))`.
    fn identity(&self, user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, (&'static str, String)>;
}

/// The real machine, as it was when the snapshot was taken (at start,
/// after the fd limit was raised: a reload derives from the same figures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct System {
    /// The soft open-file limit.
    pub fd_limit: u64,
    /// Usable CPUs.
    pub cpus: usize,
}

impl System {
    /// The machine now.
    pub fn now() -> System {
        let (soft, _) = crate::sys::nofile_limit().unwrap_or((1024, 1024));
        System { fd_limit: soft, cpus: super::cpus::available() }
    }
}

impl Host for System {
    fn cpus(&self) -> usize {
        self.cpus
    }

    fn fd_limit(&self) -> u64 {
        self.fd_limit
    }

    fn identity(&self, user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, (&'static str, String)> {
        process::resolve_identity(user, group)
    }
}

/// Everything the daemon needs to run, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The effective configuration, validated, as configured (`workers`
    /// may still be `auto`): what `--print-config` prints.
    pub config: Config,
    /// The configuration file, if any (re-read on SIGHUP).
    pub path: Option<PathBuf>,
    /// `[server] workers` resolved on this host; 0 = serve in the master.
    pub workers: usize,
    /// Connections per serving process: `max_connections`, or derived
    /// from the fd limit.
    pub max_connections: usize,
    /// The user and group to drop to, resolved (`None`: keep ours).
    pub identity: Option<Identity>,
}

impl Settings {
    /// Reads the file named by `args.config` (if any), then merges and
    /// validates it with `args` on `host`. Start and every reload call this.
    pub fn load(args: &Args, host: &dyn Host, pinned: &Pinned) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(ConfigFile::load(path)?),
            None => None,
        };
        Settings::resolve(file.as_ref(), args, host, pinned)
    }

    /// Merges an already parsed file (if any) with `args` and the sockets
    /// systemd passed (`pinned`), then validates: what is checked (an
    /// admin address overlapping a listen address, say) is what will be
    /// used.
    pub fn resolve(
        file: Option<&ConfigFile>,
        args: &Args,
        host: &dyn Host,
        pinned: &Pinned,
    ) -> Result<Settings, ConfigError> {
        let mut config = file.map(|f| f.config.clone()).unwrap_or_default();
        let options: Vec<(&'static str, &'static str)> =
            OVERRIDES.iter().filter(|o| (o.apply)(args, &mut config)).map(|o| (o.key, o.option)).collect();
        pinned.apply(&mut config);
        let mut problems = Problems::new(file, &options);
        config.validate(&mut problems);
        let (user, group) = (config.server.user.as_deref(), config.server.group.as_deref());
        let named = |n: Option<&str>| n.is_none_or(|n| !n.is_empty() && !n.contains('\0'));
        let identity = if named(user) && named(group) {
            host.identity(user, group).unwrap_or_else(|(key, why)| {
                problems.fail(&[key], why);
                None
            })
        } else {
            None
        };
        if let Some(err) = problems.into_error() {
            return Err(err);
        }
        let workers = config.server.workers.resolve(host.cpus());
        let derived = host.fd_limit().saturating_sub(FD_RESERVE).max(1);
        let max_connections = config.server.max_connections.unwrap_or(usize::try_from(derived).unwrap_or(usize::MAX));
        Ok(Settings { path: file.map(|f| f.path.clone()), config, workers, max_connections, identity })
    }

    /// The effective configuration as TOML, for `--print-config`: loading
    /// it back (as a file, with no options) gives the same configuration.
    /// Values keep their configured form (`workers = "auto"` stays auto,
    /// an absent `max_connections` stays absent); comments say what they
    /// come to on this machine.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(&self.config)?;
        let source = match &self.path {
            Some(p) => format!("{} and the command line", p.display()),
            None => "the command line".to_string(),
        };
        let mut head =
            format!("# Effective configuration of rot13d {}: defaults, {source} merged.\n", env!("CARGO_PKG_VERSION"));
        if self.config.server.workers == Workers::Auto {
            head.push_str(&format!("# workers = \"auto\" is {} on this machine.\n", self.workers));
        }
        if self.config.server.max_connections.is_none() {
            head.push_str(&format!(
                "# max_connections is absent: {} here, from the open-file limit.\n",
                self.max_connections
            ));
        }
        Ok(format!("{head}\n{body}"))
    }

    /// The `[reactor]` section as an [`EventConfig`], with the lanes'
    /// default dispatch limits.
    pub fn event_config(&self) -> EventConfig {
        let r = &self.config.reactor;
        let mut cfg = EventConfig::new();
        if let Some(b) = &r.backend {
            for other in crate::reactor::BackendKind::PREFERENCE {
                if other.name() != b {
                    cfg.avoid_backend(other);
                }
            }
        }
        for a in &r.avoid {
            cfg.avoid(a);
        }
        let req =
            r.require_features.iter().filter_map(|f| Features::from_name(f)).fold(Features::empty(), |a, f| a | f);
        cfg.require_features(req);
        for (on, flag) in [
            (r.epoll_changelist, BaseFlags::EPOLL_USE_CHANGELIST),
            (r.precise_timer, BaseFlags::PRECISE_TIMER),
            (r.no_cache_time, BaseFlags::NO_CACHE_TIME),
            (r.ignore_env, BaseFlags::IGNORE_ENV),
            (true, BaseFlags::NOLOCK),
        ] {
            if on {
                cfg.set_flag(flag);
            }
        }
        if self.config.lanes.enabled && r.max_dispatch_interval.is_none() && r.max_callbacks.is_none() {
            // Lanes without explicit limits: each turn runs the interactive
            // lane, then the bulk lane (never starved), whose reads the
            // connections bound by bytes between two polls.
            cfg.set_starvation_limit(Some(LANE_STARVE_TURNS));
        } else {
            cfg.set_max_dispatch_interval(r.max_dispatch_interval, r.max_callbacks.map(|n| n as usize), r.min_priority);
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::cli::parse_from;
    use crate::daemon::config::{BACKENDS, LogFormat, LogLevel, MAX_WORKERS, never_if_zero};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    const PATH: &str = "/etc/rot13d/test.toml";

    /// A host with 4 CPUs, an fd limit of 1024 and every user existing.
    struct Fake {
        cpus: usize,
    }

    impl Host for Fake {
        fn cpus(&self) -> usize {
            self.cpus
        }
        fn fd_limit(&self) -> u64 {
            1024
        }
        fn identity(
            &self,
            user: Option<&str>,
            group: Option<&str>,
        ) -> Result<Option<Identity>, (&'static str, String)> {
            match (user, group) {
                (Some("ghost"), _) => Err(("server.user", "no such user `ghost`".into())),
                (None, None) => Ok(None),
                _ => Ok(Some(Identity { uid: Some(65534), gid: Some(65534), name: None })),
            }
        }
    }

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

    fn resolve_on(text: Option<&str>, cli: &[&str], cpus: usize) -> Result<Settings, ConfigError> {
        let f = text.map(file);
        Settings::resolve(f.as_ref(), &args(cli), &Fake { cpus }, &Pinned::default())
    }

    fn resolve(text: Option<&str>, cli: &[&str]) -> Result<Settings, ConfigError> {
        resolve_on(text, cli, 4)
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
    fn overlapping_listeners_are_a_configuration_problem() {
        let text = "[server]\nipv6_only = false\nlisten = [\n\"0.0.0.0:7\",\n\"[::]:7\"]\n";
        let (key, line, message) = problem(Some(text), &[]);
        assert_eq!((key.as_str(), line), ("server.listen", Some(5)), "{message}");
        assert!(message.contains("[::]:7 overlaps 0.0.0.0:7") && message.contains("ipv6_only = false"), "{message}");
        assert!(resolve(Some(&text.replace("false", "true")), &[]).is_ok(), "IPv6 only: no overlap");
        let (key, _, message) = problem(None, &["--listen", "0.0.0.0:7", "--listen", "127.0.0.1:7"]);
        assert_eq!(key, "--listen", "{message}");
        let (key, _, message) = problem(Some("[admin]\nlisten = \"127.0.0.1:40713\"\n"), &[]);
        assert_eq!(key, "admin.listen", "{message}");
        assert!(message.contains("overlaps 0.0.0.0:40713"), "{message}");
    }

    #[test]
    fn defaults() {
        let s = resolve(None, &[]).expect("defaults are valid");
        assert_eq!(s.config, Config::default());
        assert_eq!(s.workers, 4, "auto on 4 CPUs");
        assert_eq!(s.max_connections, 1024 - FD_RESERVE as usize, "from the fd limit");
        assert_eq!((s.identity.as_ref(), s.path.as_ref()), (None, None));
    }

    #[test]
    fn system_host_resolves_auto_on_this_machine() {
        let s = Settings::load(&Args::default(), &System::now(), &Pinned::default()).expect("defaults are valid");
        assert_eq!(s.workers, crate::daemon::cpus::available().max(1), "affinity capped by the cgroup CPU quota");
        assert_eq!(s.config.server.workers, Workers::Auto, "kept as configured");
    }

    #[test]
    fn annotated_file_gives_the_defaults() {
        let text = include_str!("../../config/rot13d.toml");
        let from_file = resolve(Some(text), &[]).expect("annotated file is valid");
        let none = resolve(None, &[]).expect("defaults are valid");
        assert_eq!(from_file, Settings { path: Some(PATH.into()), ..none });
    }

    #[test]
    fn workers_auto_and_counts() {
        let f = |t: &str, cpus| resolve_on(Some(t), &[], cpus).map(|s| s.workers);
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
    fn max_connections_is_derived_once_from_the_host() {
        let s = resolve(Some("[server]\nmax_connections = 7\n"), &[]).expect("valid");
        assert_eq!(s.max_connections, 7);
        let s = resolve(None, &["-w", "1"]).expect("valid");
        assert_eq!(s.max_connections, 960, "1024 - 64, whatever the worker count");
        assert_eq!(s.config.server.max_connections, None, "printed as configured");
    }

    #[test]
    fn cli_overrides_file() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nworkers = 2\n\
                    max_line = 10\nbacklog = 7\n[reactor]\nbackend = \"select\"\n\
                    [log]\nlevel = \"warn\"\nformat = \"json\"\n";
        let cli = [
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
        ];
        let s = resolve(Some(text), &cli).expect("valid");
        let c = &s.config;
        assert_eq!(c.server.listen, vec![addr("127.0.0.1:9")]);
        assert_eq!((s.workers, c.server.workers), (0, Workers::Count(0)));
        assert_eq!(c.server.max_line, 20);
        assert_eq!(c.server.backlog, 7, "not overridden: from the file");
        assert_eq!(c.reactor.backend.as_deref(), Some("poll"));
        assert_eq!((c.log.level, c.log.format), (LogLevel::Trace, LogFormat::Text));
        assert_eq!(s.path.as_deref(), Some(Path::new(PATH)));

        let s = resolve(Some(text), &[]).expect("valid");
        let c = &s.config;
        assert_eq!(c.server.listen, vec![addr("127.0.0.1:1"), addr("127.0.0.1:2")]);
        assert_eq!((s.workers, c.server.max_line), (2, 10));
        assert_eq!(c.reactor.backend.as_deref(), Some("select"));
        assert_eq!((c.log.level, c.log.format), (LogLevel::Warn, LogFormat::Json));
    }

    #[test]
    fn every_override_names_a_key_of_the_model() {
        let known = toml::Value::try_from(Config::default()).expect("renders");
        for o in OVERRIDES {
            let (section, key) = o.key.split_once('.').expect("section.key");
            let optional = ["backend"].contains(&key);
            assert!(optional || known.get(section).and_then(|s| s.get(key)).is_some(), "{}", o.key);
            assert!(o.option.starts_with("--"), "{}", o.option);
            assert!(!(o.apply)(&Args::default(), &mut Config::default()), "{} given by default", o.option);
        }
    }

    #[test]
    fn listen_is_repeatable_and_replaces_the_list() {
        let s = resolve(None, &["-l", "127.0.0.1:0", "-l", "[::1]:0", "-l", "127.0.0.1:5"]).expect("valid");
        assert_eq!(s.config.server.listen, vec![addr("127.0.0.1:0"), addr("[::1]:0"), addr("127.0.0.1:5")]);
    }

    #[test]
    fn zero_timeouts_mean_never() {
        let s =
            resolve(Some("[server]\nidle_timeout = 0\nwrite_timeout = 0\nshutdown_grace = 0\n"), &[]).expect("valid");
        let c = &s.config.server;
        assert_eq!((never_if_zero(c.idle_timeout), never_if_zero(c.write_timeout)), (None, None));
        assert_eq!(c.shutdown_grace, Duration::ZERO);
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

    /// `padded` with `want` (section.key) set on its line: the line number.
    fn line_of_key(padded: &str, want: &str) -> usize {
        let name = want.split('.').nth(1).unwrap_or(want);
        2 + padded.lines().skip(2).position(|l| l.starts_with(name)).unwrap_or(0) + 1
    }

    #[test]
    fn every_validation_error_names_key_and_line() {
        let cases: &[(&str, &str)] = &[
            ("[server]\nmax_line = 0\n", "server.max_line"),
            ("[server]\nmax_line = 2000000000\n", "server.max_line"),
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
            ("[server]\nuser = \"ghost\"\n", "server.user"),
            ("[reactor]\nbackend = \"kqueue\"\n", "reactor.backend"),
            ("[reactor]\navoid = [\"iocp\"]\n", "reactor.avoid"),
            ("[reactor]\navoid = [\"epoll\", \"poll\", \"select\", \"uring\"]\n", "reactor.avoid"),
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
            ("[admin]\nlisten = \"0.0.0.0:40713\"\n", "admin.listen"),
            ("[log]\nfile = \"\"\n", "log.file"),
        ];
        for (text, want) in cases {
            // Two lines of padding so that the line number is not 1 or 2 by luck.
            let padded = format!("# test\n\n{text}");
            let want_line = line_of_key(&padded, want);
            let (key, line, message) = problem(Some(&padded), &[]);
            assert_eq!(&key, want, "{text:?}: {message}");
            assert_eq!(line, Some(want_line), "{text:?}: {message}");
            let full = resolve(Some(&padded), &[]).expect_err("invalid").to_string();
            assert!(full.starts_with(&format!("{PATH}:{want_line}: ")), "{full}");
            assert!(full.contains(want), "{full}");
        }
        // Values of the wrong form are refused by their type, at their line.
        let typed: &[(&str, &str)] = &[
            ("[server]\nlisten = [\"nowhere:1\"]\n", "server.listen"),
            ("[server]\nlisten = [\"127.0.0.1\"]\n", "server.listen"),
            ("[admin]\nlisten = \"localhost\"\n", "admin.listen"),
        ];
        for (text, want) in typed {
            let padded = format!("# test\n\n{text}");
            let want_line = line_of_key(&padded, want);
            let full = ConfigFile::parse(&padded, Path::new(PATH)).expect_err("invalid").to_string();
            assert!(full.starts_with(&format!("{PATH}:{want_line}:")), "{full}");
            assert!(full.contains(want) && full.contains("is not an address"), "{full}");
        }
    }

    #[test]
    fn array_element_problems_have_the_element_line() {
        let text = "[server]\nlisten = [\n  \"127.0.0.1:1\",\n  \"127.0.0.1:1\",\n]\n\
                    [reactor]\nrequire_features = [\"et\",\n  \"fast\"]\n";
        let err = resolve(Some(text), &[]).expect_err("two problems");
        let message = err.to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(lines[0].starts_with(&format!("{PATH}:4: invalid value for server.listen: 127.0.0.1:1")), "{message}");
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
        .expect("valid");
        let r = &s.config.reactor;
        assert_eq!(r.backend.as_deref(), Some("epoll"));
        assert_eq!(r.avoid, vec!["select"]);
        assert_eq!(r.require_features, vec!["et", "o1", "fds", "early_close"]);
        assert!(r.epoll_changelist && r.precise_timer && r.no_cache_time && r.ignore_env);
        assert_eq!(r.priorities, 256);
        assert_eq!(r.max_dispatch_interval, Some(Duration::from_millis(5)));
        assert_eq!(r.max_callbacks, Some(10));
        assert_eq!(r.min_priority, 255);
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
    fn user_and_group_are_resolved() {
        let s = resolve(Some("[server]\nuser = \"nobody\"\n"), &[]).expect("valid");
        assert_eq!(s.identity.and_then(|i| i.uid), Some(65534));
        let (key, line, message) = problem(Some("\n[server]\nuser = \"ghost\"\n"), &[]);
        assert_eq!((key.as_str(), line), ("server.user", Some(3)), "{message}");
        assert!(message.contains("ghost"), "{message}");
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
                     [log]\nlevel = \"error\"\nformat = \"json\"\nfile = \"/var/log/r.log\"\n",
                ),
                &["--log-level", "debug"],
            ),
        ];
        for (text, cli) in cases {
            let s = resolve(*text, cli).expect("valid");
            let printed = s.to_toml().expect("renders");
            let back_file = ConfigFile::parse(&printed, Path::new("printed.toml"))
                .unwrap_or_else(|e| panic!("--print-config output does not parse: {e}\n{printed}"));
            let back = Settings::resolve(Some(&back_file), &Args::default(), &Fake { cpus: 4 }, &Pinned::default())
                .unwrap_or_else(|e| panic!("--print-config output is invalid: {e}\n{printed}"));
            assert_eq!(back, Settings { path: Some("printed.toml".into()), ..s.clone() }, "{printed}");
            assert!(printed.starts_with("# Effective configuration of rot13d"), "{printed}");
        }
    }

    #[test]
    fn print_config_keeps_auto() {
        let printed = resolve(None, &[]).expect("valid").to_toml().expect("renders");
        for section in ["[server]", "[reactor]", "[lanes]", "[log]"] {
            assert!(printed.contains(section), "{printed}");
        }
        assert!(printed.contains("\nworkers = \"auto\"\n"), "{printed}");
        assert!(printed.contains("# workers = \"auto\" is 4 on this machine."), "{printed}");
        assert!(!printed.contains("\nmax_connections ="), "{printed}");
        assert!(printed.contains("listen = [\"0.0.0.0:40713\"]"), "{printed}");
        let pinned = resolve(None, &["-w", "3"]).expect("valid").to_toml().expect("renders");
        assert!(pinned.contains("\nworkers = 3\n") && !pinned.contains("auto"), "{pinned}");
    }

    /// Passed sockets replace the configured addresses of their kind, and
    /// the overlap check runs on the result: a file whose addresses would
    /// clash is fine when both are replaced, and a passed address that
    /// clashes with a configured one is refused.
    #[test]
    fn passed_sockets_replace_addresses_before_the_check() {
        let a = |s: &str| -> SocketAddr { s.parse().expect("literal") };
        let clash = "[server]\nlisten = [\"127.0.0.1:7\"]\n[admin]\nlisten = \"0.0.0.0:7\"\n";
        let resolve_pinned =
            |pinned: &Pinned| Settings::resolve(Some(&file(clash)), &args(&[]), &Fake { cpus: 1 }, pinned);
        let err = resolve_pinned(&Pinned::default()).expect_err("overlap");
        assert!(err.to_string().contains("admin.listen") && err.to_string().contains("overlaps"), "{err}");

        let both = Pinned { rot13: Some(vec![a("127.0.0.1:8")]), admin: Some(a("127.0.0.1:9")) };
        let s = resolve_pinned(&both).expect("both replaced: no overlap");
        assert_eq!(s.config.server.listen, vec![a("127.0.0.1:8")]);
        assert_eq!(s.config.admin.listen, Some(a("127.0.0.1:9")));

        let admin_only = Pinned { rot13: None, admin: Some(a("127.0.0.1:9")) };
        let s = resolve_pinned(&admin_only).expect("admin replaced: no overlap");
        assert_eq!(s.config.server.listen, vec![a("127.0.0.1:7")], "no rot13 passed: the file's");

        let rot13_only = Pinned { rot13: Some(vec![a("127.0.0.1:8")]), admin: None };
        let s = resolve_pinned(&rot13_only).expect("rot13 replaced: no overlap");
        assert_eq!(s.config.admin.listen, Some(a("0.0.0.0:7")), "no admin passed: the file's");
        let on_admin_port = Pinned { rot13: Some(vec![a("127.0.0.1:7")]), admin: None };
        assert!(
            resolve_pinned(&Pinned { rot13: Some(vec![a("127.0.0.2:7")]), ..on_admin_port }).is_err(),
            "passed 127.0.0.2:7 under 0.0.0.0:7"
        );
        // --listen is replaced too.
        let cli =
            Settings::resolve(None, &args(&["--listen", "127.0.0.1:5"]), &Fake { cpus: 1 }, &both).expect("valid");
        assert_eq!(cli.config.server.listen, vec![a("127.0.0.1:8")]);
    }

    #[test]
    fn load_reads_the_config_option() {
        let path = std::env::temp_dir().join(format!("rot13d-settings-{}.toml", std::process::id()));
        let written = std::fs::write(&path, "[server]\nmax_line = 77\n");
        let host = Fake { cpus: 1 };
        let loaded =
            written.map(|()| Settings::load(&args(&["-c", &path.display().to_string()]), &host, &Pinned::default()));
        let _ = std::fs::remove_file(&path);
        let s = loaded.expect("temp file written").expect("valid");
        assert_eq!(s.config.server.max_line, 77);
        assert_eq!(s.path.as_deref(), Some(path.as_path()));

        let missing = path.with_extension("absent");
        let err = Settings::load(&args(&["-c", &missing.display().to_string()]), &host, &Pinned::default())
            .expect_err("missing file");
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn lanes_run_every_lane_every_turn_unless_limits_are_set() {
        // Lanes on, no limits: the bulk lane gets a pass every turn (its
        // reads are bounded in bytes by the connections), no callback limit.
        let c = resolve(None, &[]).expect("valid").event_config();
        assert_eq!((c.starve_limit, c.max_callbacks, c.max_dispatch_interval), (Some(1), None, None));
        // Lanes off: libevent's rule, no limits.
        let c = resolve(Some("[lanes]\nenabled = false\n"), &[]).expect("valid").event_config();
        assert_eq!((c.starve_limit, c.max_callbacks, c.max_dispatch_interval), (None, None, None));
        // Explicit limits replace the lanes' defaults.
        let c = resolve(Some("[reactor]\nmax_callbacks = 4\nmin_priority = 1\n"), &[]).expect("valid").event_config();
        assert_eq!((c.starve_limit, c.max_callbacks, c.min_priority), (None, Some(4), 1));
    }
}
