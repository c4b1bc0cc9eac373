//! The one configuration model (SPEC §3): the TOML file's sections as typed
//! serde structures, each key declared once with its type, its meaning and
//! its default.
//!
//! A key is a field here and nothing else: its default is the section's
//! `Default`, its type gives the parse (`SocketAddr`, durations in whole
//! seconds or milliseconds, enums), [`Config::validate`] holds the rules
//! that a type cannot say (ranges, names the reactor knows, keys that must
//! agree), a command-line option that overrides it is one row of
//! [`OVERRIDES`](super::settings::OVERRIDES), and
//! [`Settings`](super::settings::Settings) carries the validated `Config`
//! itself plus the few values derived from the host (`workers = auto`, the
//! connection cap from the fd limit, the resolved user). Adding a key is
//! adding a field (and its line in `config/rot13d.toml`, which a test
//! checks equals [`Config::default()`]).
//!
//! [`ConfigFile`] keeps, besides the parsed [`Config`], the line of every key
//! so that a validation error can say where the bad value is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::error::ConfigError;
use super::proxy;

/// Backend names, as in logs, `--backend`, `[reactor] backend` and `avoid`:
/// the reactor's, in its preference order (written once, there).
pub const BACKENDS: [&str; 4] = {
    let k = crate::reactor::BackendKind::PREFERENCE;
    [k[0].name(), k[1].name(), k[2].name(), k[3].name()]
};

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

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: sockets, processes, per-connection limits.
    pub server: Server,
    /// `[reactor]`: the event_base settings.
    pub reactor: Reactor,
    /// `[lanes]`: how connections map to priority lanes.
    pub lanes: Lanes,
    /// `[admin]`: the metrics and health endpoint.
    pub admin: Admin,
    /// `[log]`: level, format and destination of the log.
    pub log: Log,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Addresses to listen on: `IP:PORT`, IPv6 in brackets; port 0 = any.
    /// Default `["0.0.0.0:40713"]`.
    #[serde(deserialize_with = "addresses")]
    pub listen: Vec<SocketAddr>,
    /// Worker processes: a number (0 = serve in the master) or `"auto"`
    /// (the CPUs this process may run on). Default `"auto"`.
    pub workers: Workers,
    /// Connections served at once per serving process; at the limit the
    /// process stops accepting. Default: derived from the fd limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `listen(2)` backlog. Default 1024.
    pub backlog: u32,
    /// Longest line in bytes (LF excluded) before it is split. Default 16384.
    pub max_line: usize,
    /// Without input (and no output pending) this long, a connection is
    /// closed; 0 = never. Seconds, default 300.
    #[serde(with = "seconds")]
    pub idle_timeout: Duration,
    /// Pending output that makes no progress this long closes the
    /// connection; 0 = never. Seconds, default 60.
    #[serde(with = "seconds")]
    pub write_timeout: Duration,
    /// Pending output in bytes above which reading stops. Default 262144.
    pub write_high_watermark: usize,
    /// Pending output in bytes below which reading resumes. Default 65536.
    pub write_low_watermark: usize,
    /// How long a graceful stop or a retiring generation waits for
    /// connections; 0 = at once. Seconds, default 30.
    #[serde(with = "seconds")]
    pub shutdown_grace: Duration,
    /// Liveness of forked workers: the master pings each one on its
    /// channel every quarter of this; a worker whose loop has not answered
    /// for half of it counts as not serving (`/healthz` 503,
    /// `rot13d_workers_unresponsive`), and for all of it is killed
    /// (SIGKILL) and replaced (`rot13d_worker_restarts_total{reason=
    /// "unresponsive"}`). 0 = never checked. With `workers = 0` the loop is
    /// the master's own (systemd's watchdog watches it). A reload applies
    /// it once the new generation serves. Seconds, default 10.
    #[serde(with = "seconds")]
    pub worker_timeout: Duration,
    /// User (name or numeric uid) to run as after binding. Default:
    /// unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group (name or numeric gid) to run as after binding. Default: the
    /// user's group, or unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The PROXY protocol header every connection on the rot13 listeners
    /// must begin with: `off`, `v1`, `v2` or `any`. Default `off`.
    pub proxy_protocol: proxy::Mode,
    /// A `[::]` listener serves IPv6 only (true) or IPv4 too, as
    /// v4-mapped addresses (false: dual stack). Default true.
    pub ipv6_only: bool,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 40713))],
            workers: Workers::Auto,
            max_connections: None,
            backlog: 1024,
            max_line: 16384,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(60),
            write_high_watermark: 256 * 1024,
            write_low_watermark: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            worker_timeout: Duration::from_secs(10),
            user: None,
            group: None,
            proxy_protocol: proxy::Mode::Off,
            ipv6_only: true,
        }
    }
}

/// `[reactor]`: the event_base settings of the design notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reactor {
    /// Backend to use (one of [`BACKENDS`]). Default: the fastest available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Backends never to use. Default empty.
    pub avoid: Vec<String>,
    /// Features the backend must have (of [`FEATURES`]). Default empty.
    pub require_features: Vec<String>,
    /// Batch epoll changes until the next dispatch. Default false.
    pub epoll_changelist: bool,
    /// Use a precise (not coarse) monotonic clock. Default false.
    pub precise_timer: bool,
    /// Read the clock at every use instead of once a loop turn.
    /// Default false.
    pub no_cache_time: bool,
    /// Ignore the `EVENT_NO*` and `EVENT_EPOLL_USE_CHANGELIST` environment
    /// variables. Default false.
    pub ignore_env: bool,
    /// Number of priority queues, 1..=256. Default 3.
    pub priorities: usize,
    /// Check for higher-priority events at least this often (milliseconds).
    /// Default: no limit.
    #[serde(rename = "max_dispatch_interval_ms", with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub max_dispatch_interval: Option<Duration>,
    /// Check for higher-priority events after this many callbacks.
    /// Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_callbacks: Option<u32>,
    /// The two limits above apply to priorities from this one (0 = highest)
    /// down. Default 0.
    pub min_priority: usize,
}

impl Default for Reactor {
    fn default() -> Reactor {
        Reactor {
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
        }
    }
}

/// `[lanes]`: interactive connections are served before bulk ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lanes {
    /// Run the lanes at their own priorities (false: connections are still
    /// classed, for the metrics, but all run at one priority). Default true.
    pub enabled: bool,
    /// A connection that moved this many bytes within the last
    /// `bulk_window_ms` (a sliding window) becomes bulk. Default 1048576.
    pub bulk_after_bytes: u64,
    /// The window of `bulk_after_bytes` (milliseconds). Default 1000.
    #[serde(rename = "bulk_window_ms", with = "millis")]
    pub bulk_window: Duration,
    /// A bulk connection becomes interactive again this long after its last
    /// read above the threshold (milliseconds). Default 1000.
    #[serde(rename = "quiet_ms", with = "millis")]
    pub quiet: Duration,
}

impl Default for Lanes {
    fn default() -> Lanes {
        Lanes {
            enabled: true,
            bulk_after_bytes: 1024 * 1024,
            bulk_window: Duration::from_secs(1),
            quiet: Duration::from_secs(1),
        }
    }
}

/// `[admin]`: HTTP `GET /metrics` and `GET /healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin endpoint, `IP:PORT`. Default: absent (off).
    #[serde(deserialize_with = "opt_address", skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Least severe level logged. Default `info`. `RUST_LOG` wins when set.
    pub level: LogLevel,
    /// Line format. Default `text`.
    pub format: LogFormat,
    /// File to append the log to, reopened on SIGUSR1 (log rotation).
    /// Default: absent = stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// One INFO record per closed connection (client and local address,
    /// duration, bytes in and out, lines, why it ended). Default false.
    pub access: bool,
}

/// `[server] workers`: a count, or `auto` for one per usable CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workers {
    /// As many as the CPUs this process may run on, at least 1.
    #[default]
    Auto,
    /// Exactly this many; 0 = serve in the master process.
    Count(usize),
}

impl Workers {
    /// The count on a host with `cpus` usable CPUs.
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            Workers::Auto => cpus.clamp(1, MAX_WORKERS),
            Workers::Count(n) => n.min(MAX_WORKERS),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Workers, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        s.parse::<usize>()
            .map(Workers::Count)
            .map_err(|_| format!("expected a number of workers or `auto`, found `{s}`"))
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Workers, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of workers (0 or more) or \"auto\"")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                usize::try_from(n).map(Workers::Count).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Workers, E> {
                if s.eq_ignore_ascii_case("auto") {
                    Ok(Workers::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An `IP:PORT` address, parsed inside the value's own visitor so that a
/// bad one is reported at its own line (an array element's too), with a
/// message that shows the expected form.
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address IP:PORT")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Addr, E> {
                text.trim().parse::<SocketAddr>().map(Addr).map_err(|_| {
                    E::custom(format!(
                        "`{text}` is not an address: expected IP:PORT such as 0.0.0.0:40713 or [::]:40713"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `listen = ["IP:PORT", ...]`.
fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<Addr>::deserialize(d)?.into_iter().map(|a| a.0).collect())
}

/// `listen = "IP:PORT"` (optional).
fn opt_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Addr::deserialize(d).map(|a| Some(a.0))
}

/// A duration written as whole seconds.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A duration written as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An optional duration written as whole milliseconds.
mod opt_millis {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::millis::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::millis::deserialize(d).map(Some)
    }
}

/// `Some(d)`, or `None` for zero (`idle_timeout = 0` means never).
pub fn never_if_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Whether sockets listening on `a` and on `b` at once would conflict:
/// the same port (not 0), and one address covers the other: a wildcard
/// (`0.0.0.0`, `[::]`) covers its own family, and `[::]` covers IPv4 too
/// in dual stack (`ipv6_only = false`). The kernel refuses the second bind
/// then (EADDRINUSE), so this is a configuration problem, found before
/// binding.
pub fn overlap(a: SocketAddr, b: SocketAddr, ipv6_only: bool) -> bool {
    let covers = |w: SocketAddr, x: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv4() == x.is_ipv4() || (w.is_ipv6() && !ipv6_only))
    };
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Why `a` cannot be listened on beside `b` ([`overlap`]).
fn overlap_message(a: SocketAddr, b: SocketAddr, ipv6_only: bool) -> String {
    let dual = !ipv6_only && (a.is_ipv4() != b.is_ipv4());
    let why = if dual { " ([::] takes IPv4 too with server.ipv6_only = false)" } else { "" };
    format!("{a} overlaps {b} on the same port{why}")
}

/// Problems found while checking a configuration, each located at the
/// command-line option or the file line that set the key.
pub struct Problems<'a> {
    file: Option<&'a ConfigFile>,
    /// `(key, option)` of every key a command-line option set.
    options: &'a [(&'static str, &'static str)],
    list: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    /// An empty list for values from `file` with `options` applied.
    pub fn new(file: Option<&'a ConfigFile>, options: &'a [(&'static str, &'static str)]) -> Problems<'a> {
        Problems { file, options, list: Vec::new() }
    }

    /// Records that the value of `keys[0]` is wrong. When the problem is
    /// between keys (low > high watermark), the first one the operator set
    /// is named: an option, else a key of the file, else `keys[0]`.
    pub fn fail(&mut self, keys: &[&str], message: impl Into<String>) {
        let message = message.into();
        // `section.key[i]` is an array element: named as its key, located
        // at its own line.
        let base = |key: &'_ str| key.split_once('[').map_or(key, |(b, _)| b).to_string();
        for key in keys {
            if let Some((_, option)) = self.options.iter().find(|(k, _)| *k == base(key)) {
                self.list.push(ConfigError::Invalid { key: option.to_string(), message, path: None, line: None });
                return;
            }
            if let Some(file) = self.file
                && let Some(line) = file.line_of(key).or_else(|| file.line_of(&base(key)))
            {
                let path = Some(file.path.clone());
                self.list.push(ConfigError::Invalid { key: base(key), message, path, line: Some(line) });
                return;
            }
        }
        let first = keys.first().copied().unwrap_or("?");
        let path = self.file.map(|f| f.path.clone());
        self.list.push(ConfigError::Invalid { key: base(first), message, path, line: None });
    }

    /// The problems, options first, then the file's in line order.
    pub fn into_error(mut self) -> Option<ConfigError> {
        self.list.sort_by_key(|p| match p {
            ConfigError::Invalid { path, line, .. } => (path.is_some(), line.unwrap_or(usize::MAX)),
            _ => (true, usize::MAX),
        });
        ConfigError::from_problems(self.list)
    }
}

impl Config {
    /// Checks what the types cannot: ranges, names, keys that must agree.
    pub fn validate(&self, p: &mut Problems<'_>) {
        self.server.validate(p);
        self.reactor.validate(p);
        self.lanes.validate(p);
        if let Some(a) = self.admin.listen
            && a.port() != 0
        {
            if self.server.listen.contains(&a) {
                p.fail(&["admin.listen"], format!("{a} is also in server.listen"));
            } else if let Some(b) = self.server.listen.iter().find(|b| overlap(**b, a, self.server.ipv6_only)) {
                p.fail(&["admin.listen"], overlap_message(a, *b, self.server.ipv6_only));
            }
        }
        if self.log.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            p.fail(&["log.file"], "must be a path (or absent: stderr)");
        }
    }
}

/// Checks `secs` of `key` against [`MAX_SECONDS`].
fn check_seconds(p: &mut Problems<'_>, key: &str, d: Duration) {
    if d.as_secs() > MAX_SECONDS {
        p.fail(&[key], format!("{} seconds is more than the most, {MAX_SECONDS}", d.as_secs()));
    }
}

/// Checks a window in milliseconds: at least 1, at most [`MAX_SECONDS`].
fn check_positive_millis(p: &mut Problems<'_>, key: &str, d: Duration) {
    let ms = d.as_millis();
    if ms == 0 {
        p.fail(&[key], "must be at least 1 (milliseconds)");
    } else if ms > u128::from(MAX_SECONDS) * 1000 {
        p.fail(&[key], format!("{ms} ms is more than the most, {}", MAX_SECONDS * 1000));
    }
}

/// Checks that `name` of `key` is one of `known`.
fn check_name(p: &mut Problems<'_>, key: &str, what: &str, name: &str, known: &[&str]) -> bool {
    if known.contains(&name) {
        return true;
    }
    p.fail(&[key], format!("unknown {what} `{name}`: expected one of {}", known.join(", ")));
    false
}

impl Server {
    fn validate(&self, p: &mut Problems<'_>) {
        for (i, a) in self.listen.iter().enumerate() {
            if a.port() != 0 && self.listen[..i].contains(a) {
                p.fail(&[&format!("server.listen[{i}]")], format!("{a} is listed twice"));
            } else if let Some(b) = self.listen[..i].iter().find(|b| overlap(**b, *a, self.ipv6_only)) {
                p.fail(&[&format!("server.listen[{i}]")], overlap_message(*a, *b, self.ipv6_only));
            }
        }
        if self.listen.is_empty() {
            p.fail(&["server.listen"], "needs at least one address");
        }
        if let Workers::Count(n) = self.workers
            && n > MAX_WORKERS
        {
            p.fail(&["server.workers"], format!("{n} is more than the most, {MAX_WORKERS}"));
        }
        if self.max_connections == Some(0) {
            p.fail(&["server.max_connections"], "must be at least 1 (or absent: from the fd limit)");
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            p.fail(&["server.backlog"], format!("must be between 1 and {}", i32::MAX));
        }
        if self.max_line == 0 {
            p.fail(&["server.max_line"], "must be at least 1");
        } else if self.max_line > MAX_BUFFER {
            p.fail(&["server.max_line"], format!("{} is more than the most, {MAX_BUFFER}", self.max_line));
        }
        let (high, low) = (self.write_high_watermark, self.write_low_watermark);
        if high == 0 {
            p.fail(&["server.write_high_watermark"], "must be at least 1");
        } else if high > MAX_BUFFER {
            p.fail(&["server.write_high_watermark"], format!("{high} is more than the most, {MAX_BUFFER}"));
        } else if low > high {
            p.fail(
                &["server.write_low_watermark", "server.write_high_watermark"],
                format!("write_low_watermark ({low}) is above write_high_watermark ({high})"),
            );
        }
        check_seconds(p, "server.idle_timeout", self.idle_timeout);
        check_seconds(p, "server.write_timeout", self.write_timeout);
        check_seconds(p, "server.shutdown_grace", self.shutdown_grace);
        check_seconds(p, "server.worker_timeout", self.worker_timeout);
        for (key, v) in [("server.user", &self.user), ("server.group", &self.group)] {
            if let Some(name) = v
                && (name.is_empty() || name.contains('\0'))
            {
                p.fail(&[key], "must be a user or group name");
            }
        }
    }
}

impl Reactor {
    fn validate(&self, p: &mut Problems<'_>) {
        if let Some(b) = &self.backend
            && check_name(p, "reactor.backend", "backend", b, &BACKENDS)
            && self.avoid.contains(b)
        {
            p.fail(&["reactor.backend", "reactor.avoid"], format!("`{b}` is also in reactor.avoid"));
        }
        for (i, b) in self.avoid.iter().enumerate() {
            check_name(p, &format!("reactor.avoid[{i}]"), "backend", b, &BACKENDS);
        }
        if !self.avoid.is_empty() && BACKENDS.iter().all(|b| self.avoid.iter().any(|a| a == b)) {
            p.fail(&["reactor.avoid"], "avoids every backend");
        }
        for (i, f) in self.require_features.iter().enumerate() {
            check_name(p, &format!("reactor.require_features[{i}]"), "feature", f, &FEATURES);
        }
        if !(1..=256).contains(&self.priorities) {
            p.fail(&["reactor.priorities"], format!("{} is not between 1 and 256", self.priorities));
        } else if self.min_priority >= self.priorities {
            p.fail(
                &["reactor.min_priority", "reactor.priorities"],
                format!("min_priority ({}) must be below priorities ({})", self.min_priority, self.priorities),
            );
        }
        if self.max_callbacks == Some(0) {
            p.fail(&["reactor.max_callbacks"], "must be at least 1 (or absent: no limit)");
        }
        if let Some(d) = self.max_dispatch_interval
            && d.as_millis() > u128::from(MAX_SECONDS) * 1000
        {
            p.fail(
                &["reactor.max_dispatch_interval_ms"],
                format!("{} ms is more than the most, {}", d.as_millis(), MAX_SECONDS * 1000),
            );
        }
    }
}

impl Lanes {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.bulk_after_bytes == 0 {
            p.fail(&["lanes.bulk_after_bytes"], "must be at least 1");
        }
        check_positive_millis(p, "lanes.bulk_window_ms", self.bulk_window);
        check_positive_millis(p, "lanes.quiet_ms", self.quiet);
    }
}

/// `[log] level` and `--log-level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default: start, stop, reloads, worker deaths.
    #[default]
    Info,
    /// Per-connection events.
    Debug,
    /// Everything, reactor internals included.
    Trace,
}

impl LogLevel {
    /// The name as written in the file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[log] format` and `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME LEVEL TARGET: MESSAGE key=value ...`, one event a line.
    #[default]
    Text,
    /// One JSON object a line, fields at the top level.
    Json,
}

impl LogFormat {
    /// The name as written in the file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration file read and parsed, with the line of each key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// The file, as named on the command line.
    pub path: PathBuf,
    /// Its content; keys it does not set hold their defaults.
    pub config: Config,
    /// `section.key` (or `section` alone) -> 1-based line.
    lines: BTreeMap<String, usize>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        ConfigFile::parse(&text, path)
    }

    /// Parses `text` as the content of `path` (which is only used in
    /// messages).
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        let lines = key_spans(text).into_iter().map(|(key, name, _)| (key, line_col(text, name.start).0)).collect();
        Ok(ConfigFile { path: path.to_path_buf(), config, lines })
    }

    /// The 1-based line where `key` (`section.key`, or a section name) is
    /// set, if the file sets it.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }
}

/// Every key of `text` (`section`, `section.key`, and `section.key[i]` for
/// array elements) with the span of its name (of the element for array
/// elements) and of its value. Best effort: empty where the TOML does not
/// parse.
fn key_spans(text: &str) -> Vec<(String, Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    if let Ok(top) = toml::from_str::<Entries>(text) {
        walk("", &top, &mut out);
    }
    out
}

/// Keys of a table, with spans.
type Entries = BTreeMap<Spanned<String>, Spanned<Shape>>;

/// Appends the keys of `entries`, prefixed with `prefix`, to `out`.
fn walk(prefix: &str, entries: &Entries, out: &mut Vec<(String, Range<usize>, Range<usize>)>) {
    for (name, value) in entries {
        let key = if prefix.is_empty() { name.get_ref().clone() } else { format!("{prefix}.{}", name.get_ref()) };
        out.push((key.clone(), name.span(), value.span()));
        match value.get_ref() {
            Shape::Table(inner) => walk(&key, inner, out),
            Shape::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    out.push((format!("{key}[{i}]"), item.span(), item.span()));
                }
            }
            Shape::Scalar => {}
        }
    }
}

/// The shape of a TOML value, kept only to find where keys are.
#[derive(Debug)]
enum Shape {
    Table(Entries),
    Array(Vec<Spanned<Shape>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut entries = Entries::new();
                while let Some((k, v)) = map.next_entry()? {
                    entries.insert(k, v);
                }
                Ok(Shape::Table(entries))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Shape::Array(items))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// The key whose name or value covers byte `offset` of `text`, innermost
/// (`section.key` before `section`).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let covers = |span: &Range<usize>| span.start <= offset && offset < span.end.max(span.start + 1);
    key_spans(text)
        .into_iter()
        .filter(|(_, name, value)| covers(name) || covers(value))
        .max_by_key(|(key, _, _)| key.matches(['.', '[']).count())
        .map(|(key, _, _)| key)
}

/// The key a line sets, read as text (`name = ...` under the last
/// `[section]` above it): the fallback where the file does not parse, so
/// that a syntax error in a value still names its key.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if i + 1 == line {
            let (name, _) = t.split_once('=')?;
            let name = name.trim().trim_matches('"');
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                return None;
            }
            return Some(if section.is_empty() { name.to_string() } else { format!("{section}.{name}") });
        }
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
            section = h.trim().to_string();
        }
    }
    None
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// A toml error as a [`ConfigError::Parse`] naming file, line, column and,
/// when the problem is about a key, the key.
fn parse_error(text: &str, path: &Path, err: &toml::de::Error) -> ConfigError {
    let (line, col, key) = match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            (line, col, key_at(text, span.start).or_else(|| key_on_line(text, line)))
        }
        None => (1, 1, None),
    };
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        col,
        key,
        // One line: toml puts what it expected on a line of its own.
        message: err.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANNOTATED: &str = include_str!("../../config/rot13d.toml");

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(text, Path::new("test.toml"))
    }

    fn parse_err(text: &str) -> (usize, usize, Option<String>, String) {
        match parse(text) {
            Err(ConfigError::Parse { line, col, key, message, .. }) => (line, col, key, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.server.listen, vec![SocketAddr::from(([0, 0, 0, 0], 40713))]);
        assert_eq!(c.server.workers, Workers::Auto);
        assert_eq!(c.server.max_connections, None);
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.max_line, 16384);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.server.write_timeout, Duration::from_secs(60));
        assert_eq!(c.server.write_high_watermark, 262144);
        assert_eq!(c.server.write_low_watermark, 65536);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!((c.server.user.as_deref(), c.server.group.as_deref()), (None, None));
        assert_eq!(c.reactor.backend, None);
        assert!(c.reactor.avoid.is_empty() && c.reactor.require_features.is_empty());
        assert!(!c.reactor.epoll_changelist && !c.reactor.precise_timer);
        assert!(!c.reactor.no_cache_time && !c.reactor.ignore_env);
        assert_eq!(c.reactor.priorities, 3);
        assert_eq!(c.reactor.max_dispatch_interval, None);
        assert_eq!(c.reactor.max_callbacks, None);
        assert_eq!(c.reactor.min_priority, 0);
        assert!(c.lanes.enabled);
        assert_eq!(c.lanes.bulk_after_bytes, 1048576);
        assert_eq!(c.lanes.bulk_window, Duration::from_millis(1000));
        assert_eq!(c.lanes.quiet, Duration::from_millis(1000));
        assert_eq!(c.admin.listen, None);
        assert_eq!(c.log.level, LogLevel::Info);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.file, None);
        assert_eq!(c.server.proxy_protocol, proxy::Mode::Off);
        assert!(c.server.ipv6_only);
        assert!(!c.log.access);
    }

    #[test]
    fn proxy_protocol_ipv6_only_and_access_are_read() {
        let f = parse("[server]\nproxy_protocol = \"v2\"\nipv6_only = false\n[log]\naccess = true\n").expect("valid");
        assert_eq!(f.config.server.proxy_protocol, proxy::Mode::V2);
        assert!(!f.config.server.ipv6_only);
        assert!(f.config.log.access);
        let (line, _, key, message) = parse_err("[server]\nproxy_protocol = \"v3\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("server.proxy_protocol")), "{message}");
        let (line, _, key, _) = parse_err("[server]\nproxy_protocol = true\n");
        assert_eq!((line, key.as_deref()), (2, Some("server.proxy_protocol")));
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        // Dual stack: [::] takes IPv4 too.
        assert!(overlap(a("[::]:5"), a("0.0.0.0:5"), false));
        assert!(overlap(a("127.0.0.1:5"), a("[::]:5"), false));
        assert!(!overlap(a("[::]:5"), a("0.0.0.0:5"), true));
        assert!(!overlap(a("[::1]:5"), a("127.0.0.1:5"), false));
        // A wildcard covers its own family; specific addresses do not overlap.
        assert!(overlap(a("0.0.0.0:5"), a("127.0.0.1:5"), true));
        assert!(overlap(a("[::1]:5"), a("[::]:5"), true));
        assert!(!overlap(a("127.0.0.1:5"), a("127.0.0.2:5"), true));
        assert!(!overlap(a("0.0.0.0:5"), a("0.0.0.0:6"), true));
        // Port 0 is a port of its own each time.
        assert!(!overlap(a("0.0.0.0:0"), a("[::]:0"), false));
        assert!(overlap(a("127.0.0.1:5"), a("127.0.0.1:5"), true));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").map(|f| f.config).ok(), Some(Config::default()));
        assert_eq!(parse("# nothing\n[server]\n").map(|f| f.config).ok(), Some(Config::default()));
    }

    #[test]
    fn annotated_default_file_is_the_default() {
        let file = parse(ANNOTATED).expect("config/rot13d.toml parses");
        assert_eq!(file.config, Config::default());
    }

    #[test]
    fn annotated_default_file_mentions_every_key() {
        let value = toml::Value::try_from(Config::default()).expect("defaults render");
        let mut keys: Vec<String> = Vec::new();
        if let toml::Value::Table(top) = value {
            for (section, v) in top {
                keys.push(format!("[{section}]"));
                if let toml::Value::Table(t) = v {
                    keys.extend(t.keys().map(|k| format!("{k} =")));
                }
            }
        }
        for optional in ["max_connections", "user", "group", "backend", "file"] {
            keys.push(format!("{optional} ="));
        }
        keys.push("max_dispatch_interval_ms =".into());
        keys.push("max_callbacks =".into());
        for key in keys {
            assert!(ANNOTATED.contains(&key), "config/rot13d.toml lacks {key}");
        }
        assert!(ANNOTATED.contains("[admin]") && ANNOTATED.contains("listen ="));
    }

    #[test]
    fn values_are_read() {
        let f = parse(
            "[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\nworkers = 4\nmax_line = 10\n\
             user = \"nobody\"\n[reactor]\nbackend = \"poll\"\navoid = [\"select\"]\n\
             [lanes]\nenabled = false\n[admin]\nlisten = \"127.0.0.1:9\"\n\
             [log]\nlevel = \"debug\"\nformat = \"json\"\n",
        )
        .expect("valid file");
        let c = f.config.clone();
        let want: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        assert_eq!(c.server.listen, want);
        assert_eq!(c.server.workers, Workers::Count(4));
        assert_eq!(c.server.max_line, 10);
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.user.as_deref(), Some("nobody"));
        assert_eq!(c.reactor.backend.as_deref(), Some("poll"));
        assert_eq!(c.reactor.avoid, vec!["select"]);
        assert!(!c.lanes.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:9".parse().ok());
        assert_eq!((c.log.level, c.log.format), (LogLevel::Debug, LogFormat::Json));
        assert_eq!(f.line_of("server.workers"), Some(3));
        assert_eq!(f.line_of("log.format"), Some(15));
        assert_eq!(f.line_of("server"), Some(1));
        assert_eq!(f.line_of("server.backlog"), None);
        assert_eq!(f.line_of("server.listen[1]"), Some(2));
        let (line, _, key, _) = parse_err("[server]\nlisten = [\n\"127.0.0.1:1\",\n5]\n");
        assert_eq!((line, key.as_deref()), (4, Some("server.listen[1]")));
    }

    #[test]
    fn workers_accepts_number_or_auto() {
        let w = |t: &str| parse(&format!("[server]\nworkers = {t}\n")).map(|f| f.config.server.workers);
        assert_eq!(w("\"auto\"").ok(), Some(Workers::Auto));
        assert_eq!(w("0").ok(), Some(Workers::Count(0)));
        assert_eq!(w("12").ok(), Some(Workers::Count(12)));
        for bad in ["\"many\"", "-1", "1.5", "true"] {
            let (line, _, key, message) = parse_err(&format!("[server]\nworkers = {bad}\n"));
            assert_eq!(line, 2, "{bad}");
            assert_eq!(key.as_deref(), Some("server.workers"), "{bad}: {message}");
        }
        assert_eq!("auto".parse::<Workers>(), Ok(Workers::Auto));
        assert_eq!("3".parse::<Workers>(), Ok(Workers::Count(3)));
        assert!("x".parse::<Workers>().is_err());
        assert_eq!(Workers::Count(3).to_string(), "3");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let (line, col, key, message) = parse_err("[server]\nmax_line = 5\nmax_lines = 6\n");
        assert_eq!((line, col), (3, 1));
        assert_eq!(key.as_deref(), Some("server.max_lines"));
        assert!(message.contains("max_lines"), "{message}");
        let err = parse("[server]\nmax_line = 5\nmax_lines = 6\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.starts_with("test.toml:3:1: server.max_lines: "), "{text}");
    }

    #[test]
    fn unknown_section_is_named() {
        let (line, _, key, message) = parse_err("[log]\nlevel = \"warn\"\n\n[sever]\nlisten = []\n");
        assert_eq!(line, 4, "{message}");
        assert_eq!(key.as_deref(), Some("sever"), "{message}");
        assert!(message.contains("sever"), "{message}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let (line, _, key, message) = parse_err("\n[server]\nbacklog = 5\nmax_line = \"big\"\n");
        assert_eq!(line, 4);
        assert_eq!(key.as_deref(), Some("server.max_line"), "{message}");
        let (line, _, key, _) = parse_err("[lanes]\nenabled = 1\n");
        assert_eq!((line, key.as_deref()), (2, Some("lanes.enabled")));
        let (line, _, key, _) = parse_err("[server]\nmax_line = -1\n");
        assert_eq!((line, key.as_deref()), (2, Some("server.max_line")));
        let (line, _, key, _) = parse_err("server = 5\n");
        assert_eq!((line, key.as_deref()), (1, Some("server")));
    }

    #[test]
    fn bad_log_names_are_refused() {
        let (line, _, key, message) = parse_err("[log]\nlevel = \"info\"\nformat = \"xml\"\n");
        assert_eq!((line, key.as_deref()), (3, Some("log.format")), "{message}");
        let (line, _, key, _) = parse_err("[log]\nlevel = \"loud\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("log.level")));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let (line, col, _, message) = parse_err("[server]\nbacklog = 1\nmax_line = = 3\n");
        assert_eq!(line, 3, "{message}");
        assert!(!message.contains('\n'), "one line: {message:?}");
        let (line, _, _, message) = parse_err("[server\nmax_line = 3\n");
        assert_eq!(line, 1);
        assert!(!message.contains('\n'), "one line: {message:?}");
        assert!(col > 1, "{col}");
        let (line, _, _, _) = parse_err("[server]\nbacklog = 1\nbacklog = 2\n");
        assert_eq!(line, 3);
    }

    #[test]
    fn missing_file_names_the_file() {
        let path = std::env::temp_dir().join(format!("rot13d-missing-{}.toml", std::process::id()));
        let err = ConfigFile::load(&path).expect_err("no such file");
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn load_reads_a_real_file() {
        let path = std::env::temp_dir().join(format!("rot13d-load-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\nmax_line = 99\n").expect("write temp file");
        let file = ConfigFile::load(&path);
        let _ = std::fs::remove_file(&path);
        let file = file.expect("valid file");
        assert_eq!(file.config.server.max_line, 99);
        assert_eq!(file.path, path);
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1", 2), (1, 2));
        assert_eq!(line_col("é = 1", 1), (1, 1), "inside a character");
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn config_round_trips_through_toml() {
        let mut c = Config::default();
        c.server.max_connections = Some(10);
        c.server.workers = Workers::Count(2);
        c.reactor.max_callbacks = Some(5);
        c.admin.listen = "127.0.0.1:9".parse().ok();
        c.server.idle_timeout = Duration::ZERO;
        c.reactor.max_dispatch_interval = Some(Duration::from_millis(7));
        c.log.file = Some("/var/log/rot13d.log".into());
        let text = toml::to_string(&c).expect("renders");
        assert_eq!(parse(&text).map(|f| f.config).ok(), Some(c));
    }

    #[test]
    fn bad_address_is_a_parse_error_at_its_element() {
        let (line, _, key, message) = parse_err("[server]\nlisten = [\n\"127.0.0.1:1\",\n\"nowhere\"]\n");
        assert_eq!((line, key.as_deref()), (4, Some("server.listen[1]")), "{message}");
        assert!(message.contains("`nowhere` is not an address: expected IP:PORT"), "{message}");
        let (line, _, key, message) = parse_err("\n[admin]\nlisten = \"localhost\"\n");
        assert_eq!((line, key.as_deref()), (3, Some("admin.listen")), "{message}");
    }

    #[test]
    fn durations_are_whole_units() {
        let f = parse("[server]\nidle_timeout = 0\nshutdown_grace = 2\n[lanes]\nquiet_ms = 5\n").expect("valid");
        assert_eq!(f.config.server.idle_timeout, Duration::ZERO);
        assert_eq!(never_if_zero(f.config.server.idle_timeout), None);
        assert_eq!(f.config.server.shutdown_grace, Duration::from_secs(2));
        assert_eq!(f.config.lanes.quiet, Duration::from_millis(5));
        let (line, _, key, _) = parse_err("[server]\nidle_timeout = 1.5\n");
        assert_eq!((line, key.as_deref()), (2, Some("server.idle_timeout")));
        let (line, _, key, _) = parse_err("[reactor]\nmax_dispatch_interval_ms = -1\n");
        assert_eq!((line, key.as_deref()), (2, Some("reactor.max_dispatch_interval_ms")));
    }
}
