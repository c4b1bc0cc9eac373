//! The TOML configuration file, as written by the operator (SPEC §3).
//!
//! These types mirror the file one to one: sections `[server]`,
//! `[reactor]`, `[lanes]`, `[admin]`, `[log]`, every key optional with the
//! documented default, unknown keys refused (`deny_unknown_fields`). Values
//! stay as the operator wrote them (addresses are strings, times are seconds
//! or milliseconds); [`settings`](super::settings) merges them with the
//! command line and validates them into typed values.
//!
//! [`ConfigFile`] keeps, besides the parsed [`Config`], the line of every key
//! so that a later validation error can say where the bad value is.
//! `config/rot13d.toml` is the annotated default configuration; a test checks
//! that it parses to exactly [`Config::default()`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::error::ConfigError;

/// The default listen address (SPEC §1: TCP port 40713 on every IPv4
/// address).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:40713";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: sockets, processes, per-connection limits.
    pub server: ServerConfig,
    /// `[reactor]`: the event_base settings.
    pub reactor: ReactorConfig,
    /// `[lanes]`: how connections map to priority lanes.
    pub lanes: LanesConfig,
    /// `[admin]`: the metrics and health endpoint.
    pub admin: AdminConfig,
    /// `[log]`: level and format of the log on stderr.
    pub log: LogConfig,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on: `IP:PORT`, IPv6 in brackets; port 0 = any.
    /// Default `["0.0.0.0:40713"]`.
    pub listen: Vec<String>,
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
    /// Seconds without input (and no output pending) before a connection is
    /// closed; 0 = never. Default 300.
    pub idle_timeout: u64,
    /// Seconds pending output may make no progress before the connection is
    /// closed; 0 = never. Default 60.
    pub write_timeout: u64,
    /// Pending output in bytes above which reading stops. Default 262144.
    pub write_high_watermark: usize,
    /// Pending output in bytes below which reading resumes. Default 65536.
    pub write_low_watermark: usize,
    /// Seconds a graceful stop waits for connections; 0 = at once.
    /// Default 30.
    pub shutdown_grace: u64,
    /// User to run as after binding. Default: unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group to run as after binding. Default: the user's group, or
    /// unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: vec![DEFAULT_LISTEN.to_string()],
            workers: Workers::Auto,
            max_connections: None,
            backlog: 1024,
            max_line: 16384,
            idle_timeout: 300,
            write_timeout: 60,
            write_high_watermark: 256 * 1024,
            write_low_watermark: 64 * 1024,
            shutdown_grace: 30,
            user: None,
            group: None,
        }
    }
}

/// `[reactor]`: the event_base settings of the design notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactorConfig {
    /// Backend to use: `epoll`, `poll` or `select`. Default: the fastest
    /// available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Backends never to use. Default empty.
    pub avoid: Vec<String>,
    /// Features the backend must have: `et`, `o1`, `fds`, `early_close`.
    /// Default empty.
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
    /// Check for higher-priority events at least this often, in
    /// milliseconds. Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dispatch_interval_ms: Option<u64>,
    /// Check for higher-priority events after this many callbacks.
    /// Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_callbacks: Option<u32>,
    /// The two limits above apply to priorities from this one (0 = highest)
    /// down. Default 0.
    pub min_priority: usize,
}

impl Default for ReactorConfig {
    fn default() -> ReactorConfig {
        ReactorConfig {
            backend: None,
            avoid: Vec::new(),
            require_features: Vec::new(),
            epoll_changelist: false,
            precise_timer: false,
            no_cache_time: false,
            ignore_env: false,
            priorities: 3,
            max_dispatch_interval_ms: None,
            max_callbacks: None,
            min_priority: 0,
        }
    }
}

/// `[lanes]`: interactive connections are served before bulk ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanesConfig {
    /// Use priority lanes at all. Default true.
    pub enabled: bool,
    /// A connection that moved this many bytes within `bulk_window_ms`
    /// becomes bulk. Default 1048576.
    pub bulk_after_bytes: u64,
    /// The window of `bulk_after_bytes`, in milliseconds. Default 1000.
    pub bulk_window_ms: u64,
    /// A bulk connection becomes interactive again after this many
    /// milliseconds below the threshold. Default 1000.
    pub quiet_ms: u64,
}

impl Default for LanesConfig {
    fn default() -> LanesConfig {
        LanesConfig { enabled: true, bulk_after_bytes: 1024 * 1024, bulk_window_ms: 1000, quiet_ms: 1000 }
    }
}

/// `[admin]`: HTTP `GET /metrics` and `GET /healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin endpoint, `IP:PORT`. Default: absent (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Least severe level logged. Default `info`. `RUST_LOG` wins when set.
    pub level: LogLevel,
    /// Line format. Default `text`.
    pub format: LogFormat,
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
        assert_eq!(c.server.listen, vec!["0.0.0.0:40713".to_string()]);
        assert_eq!(c.server.workers, Workers::Auto);
        assert_eq!(c.server.max_connections, None);
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.max_line, 16384);
        assert_eq!(c.server.idle_timeout, 300);
        assert_eq!(c.server.write_timeout, 60);
        assert_eq!(c.server.write_high_watermark, 262144);
        assert_eq!(c.server.write_low_watermark, 65536);
        assert_eq!(c.server.shutdown_grace, 30);
        assert_eq!((c.server.user.as_deref(), c.server.group.as_deref()), (None, None));
        assert_eq!(c.reactor.backend, None);
        assert!(c.reactor.avoid.is_empty() && c.reactor.require_features.is_empty());
        assert!(!c.reactor.epoll_changelist && !c.reactor.precise_timer);
        assert!(!c.reactor.no_cache_time && !c.reactor.ignore_env);
        assert_eq!(c.reactor.priorities, 3);
        assert_eq!(c.reactor.max_dispatch_interval_ms, None);
        assert_eq!(c.reactor.max_callbacks, None);
        assert_eq!(c.reactor.min_priority, 0);
        assert!(c.lanes.enabled);
        assert_eq!(c.lanes.bulk_after_bytes, 1048576);
        assert_eq!(c.lanes.bulk_window_ms, 1000);
        assert_eq!(c.lanes.quiet_ms, 1000);
        assert_eq!(c.admin.listen, None);
        assert_eq!(c.log.level, LogLevel::Info);
        assert_eq!(c.log.format, LogFormat::Text);
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
        for optional in ["max_connections", "user", "group", "backend"] {
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
        assert_eq!(c.server.listen, vec!["127.0.0.1:1", "[::1]:2"]);
        assert_eq!(c.server.workers, Workers::Count(4));
        assert_eq!(c.server.max_line, 10);
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.user.as_deref(), Some("nobody"));
        assert_eq!(c.reactor.backend.as_deref(), Some("poll"));
        assert_eq!(c.reactor.avoid, vec!["select"]);
        assert!(!c.lanes.enabled);
        assert_eq!(c.admin.listen.as_deref(), Some("127.0.0.1:9"));
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
        c.admin.listen = Some("127.0.0.1:9".into());
        let text = toml::to_string(&c).expect("renders");
        assert_eq!(parse(&text).map(|f| f.config).ok(), Some(c));
    }
}
