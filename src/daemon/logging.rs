//! The log: tracing events to stderr, or to `[log] file`, as text or JSON
//! lines.
//!
//! stderr because journald and `docker logs` read it there (SPEC §2). A
//! log file is opened for appending by the master (before it drops
//! privileges or forks) and reopened on SIGUSR1, so that logrotate can
//! rename it and signal: the master opens the path anew and hands the new
//! file to every worker over its channel ([`use_file`]), so a worker that
//! runs as another user needs no right to open it. Every process appends
//! whole lines (one `write` each, `O_APPEND`). The
//! writer is synchronous, with no background thread, because the master
//! forks after logging starts and a fork only copies the calling thread.
//! `RUST_LOG`, when set and valid, replaces the level of `[log]` and
//! `--log-level`; an invalid one is reported at WARN and ignored.
//!
//! Events of the daemon use the target [`TARGET`] (`rot13d`), not their
//! module path, so that a text line reads
//!
//! ```text
//! 2026-11-28T01:00:00.000000Z  INFO rot13d: listening addr=127.0.0.1:40713 kind=rot13
//! ```
//!
//! whichever module logged it. Log with an explicit target, the message as
//! lowercase words and the data as fields:
//!
//! ```
//! # let addr: std::net::SocketAddr = "127.0.0.1:40713".parse().unwrap();
//! use rot13d::daemon::logging::TARGET;
//! tracing::info!(target: TARGET, addr = %addr, kind = "rot13", "listening");
//! tracing::info!(target: TARGET, backend = "epoll", "reactor");
//! ```
//!
//! (`target: "rot13d"` as a literal works the same.) The JSON format puts
//! the message and the fields at the top level of each object:
//! `{"timestamp":"…","level":"INFO","message":"listening","addr":"127.0.0.1:40713","kind":"rot13","target":"rot13d"}`.

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing::Dispatch;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

use super::config::{LogFormat, LogLevel};
use super::error::Error;

/// The target of the daemon's events: what the text format prints before
/// the message.
pub const TARGET: &str = "rot13d";

/// The log file, when `[log] file` is set (else the log goes to stderr).
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// Where every event goes: the log file if one is open, else stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = FILE.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_ref() {
            Some(mut f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        Sink
    }
}

/// Opens `path` for appending (created `0640` if missing).
pub fn open_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

/// `--check-config`: fails as [`init`] would on `path`, without creating
/// it: an existing file is opened for appending, a missing one needs a
/// directory this process may create it in.
pub fn check_file(path: &Path) -> Result<(), Error> {
    let opened = match std::fs::OpenOptions::new().append(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
                .map_err(io::Error::from)
        }
        other => other.map(drop),
    };
    opened.map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, e: io::Error) -> Error {
    Error::os(format!("open the log file {}", path.display()), e)
}

/// From now on the log goes to `f` (the previous file is closed).
pub fn use_file(f: File) {
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

/// SIGUSR1: opens `path` anew and logs there from now on; returns the new
/// file (for the workers). On failure the old file stays in use.
pub fn reopen(path: &Path) -> io::Result<File> {
    let f = open_file(path)?;
    let copy = f.try_clone()?;
    use_file(f);
    Ok(copy)
}

/// Installs the process-wide subscriber: `format` lines on stderr, or
/// appended to `file`, at `level` or as `RUST_LOG` says. Colours only when
/// writing to a terminal and `NO_COLOR` is unset. Call once, before forking.
///
/// Fails (as [`Error::Os`]) if the file cannot be opened or a subscriber is
/// already installed.
pub fn init(level: LogLevel, format: LogFormat, file: Option<&Path>) -> Result<(), Error> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = file.is_none() && io::stderr().is_terminal() && !no_color;
    if let Some(path) = file {
        let f = open_file(path).map_err(|e| open_error(path, e))?;
        use_file(f);
    }
    let (dispatch, bad_rust_log) = dispatch(level, format, rust_log.as_deref(), ansi, Sink);
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|e| Error::os("install the log subscriber", io::Error::other(e)))?;
    if let Some((value, error)) = bad_rust_log {
        tracing::warn!(target: TARGET, rust_log = %value, %error, level = %level, "ignoring invalid RUST_LOG");
    }
    Ok(())
}

/// The filter: `RUST_LOG` when set, non-empty and valid, else `level` for
/// every target. The second value is `(RUST_LOG, why it was refused)`.
pub fn filter(level: LogLevel, rust_log: Option<&str>) -> (EnvFilter, Option<(String, String)>) {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => (EnvFilter::new(level.as_str()), None),
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(level.as_str()), Some((spec.to_string(), e.to_string()))),
        },
    }
}

/// The subscriber of [`init`], writing to `writer`; also returns the
/// refused `RUST_LOG`, if any. Exposed for tests that capture the output.
pub fn dispatch<W>(
    level: LogLevel,
    format: LogFormat,
    rust_log: Option<&str>,
    ansi: bool,
    writer: W,
) -> (Dispatch, Option<(String, String)>)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, bad) = filter(level, rust_log);
    let builder =
        tracing_subscriber::fmt().with_writer(writer).with_ansi(ansi).with_target(true).with_env_filter(filter);
    let dispatch = match format {
        LogFormat::Text => Dispatch::new(builder.fmt_fields(TextFields).finish()),
        LogFormat::Json => {
            Dispatch::new(builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish())
        }
    };
    (dispatch, bad)
}

/// The fields of a text line, logfmt style: `message key=value ...`.
///
/// A string value is written bare when it is a single word (`kind=rot13`,
/// as SPEC §2 shows it) and quoted otherwise (`error="Address already in
/// use (os error 98)"`); `%x` values are written with `Display`, `?x` with
/// `Debug`, as tracing's default does.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes one event's fields for [`TextFields`].
struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    fn pair(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{sep}{name}={value}")
        };
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let bare = field.name() == "message"
            || (!value.is_empty()
                && !value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '='));
        if bare {
            self.pair(field, format_args!("{value}"));
        } else {
            self.pair(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = value.to_string();
        self.record_str(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn run(level: LogLevel, format: LogFormat, rust_log: Option<&str>, f: impl FnOnce()) -> String {
        let out = Capture::default();
        let (dispatch, _) = dispatch(level, format, rust_log, false, out.clone());
        tracing::dispatcher::with_default(&dispatch, f);
        out.text()
    }

    fn listening() {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 40713).into();
        tracing::info!(target: TARGET, addr = %addr, kind = "rot13", "listening");
    }

    #[test]
    fn text_line_has_level_target_message_fields() {
        let out = run(LogLevel::Info, LogFormat::Text, None, listening);
        assert!(out.contains(" INFO rot13d: listening addr=127.0.0.1:40713 kind=rot13\n"), "{out:?}");
        assert!(!out.contains('\u{1b}'), "no ANSI escapes: {out:?}");
    }

    #[test]
    fn text_strings_are_bare_when_one_word() {
        let out = run(LogLevel::Info, LogFormat::Text, None, || {
            let err = io::Error::from_raw_os_error(libc::EADDRINUSE);
            tracing::warn!(
                target: TARGET,
                kind = "admin",
                empty = "",
                spaced = "two words",
                error = &err as &(dyn std::error::Error + 'static),
                n = 3,
                flag = true,
                shown = ?Some(1),
                "bind failed"
            );
        });
        assert!(
            out.contains(
                "WARN rot13d: bind failed kind=admin empty=\"\" spaced=\"two words\" \
                 error=\"Address already in use (os error 98)\" n=3 flag=true shown=Some(1)\n"
            ),
            "{out:?}"
        );
    }

    #[test]
    fn level_filters() {
        let out = run(LogLevel::Warn, LogFormat::Text, None, || {
            tracing::info!(target: TARGET, "hidden");
            tracing::warn!(target: TARGET, pid = 7, "worker died");
        });
        assert!(!out.contains("hidden"), "{out}");
        assert!(out.contains("WARN rot13d: worker died pid=7"), "{out}");
        let out = run(LogLevel::Trace, LogFormat::Text, None, || {
            tracing::trace!(target: TARGET, "deep");
        });
        assert!(out.contains("TRACE rot13d: deep"), "{out}");
    }

    #[test]
    fn rust_log_wins_over_level() {
        let out = run(LogLevel::Error, LogFormat::Text, Some("debug"), || {
            tracing::debug!(target: TARGET, "shown");
        });
        assert!(out.contains("DEBUG rot13d: shown"), "{out}");
        let out = run(LogLevel::Trace, LogFormat::Text, Some("rot13d=warn"), listening);
        assert!(out.is_empty(), "{out}");
        // Empty RUST_LOG counts as unset.
        let out = run(LogLevel::Info, LogFormat::Text, Some(""), listening);
        assert!(out.contains("listening"), "{out}");
    }

    #[test]
    fn invalid_rust_log_falls_back_to_level() {
        let (_, bad) = filter(LogLevel::Info, Some("rot13d=loudest"));
        let (value, _) = bad.expect("refused");
        assert_eq!(value, "rot13d=loudest");
        let out = run(LogLevel::Info, LogFormat::Text, Some("rot13d=loudest"), listening);
        assert!(out.contains("listening"), "{out}");
        assert!(filter(LogLevel::Info, Some("info,rot13d=trace")).1.is_none());
    }

    #[test]
    fn json_line_is_flat() {
        let out = run(LogLevel::Info, LogFormat::Json, None, listening);
        let line = out.lines().next().unwrap_or_default();
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        for pair in [
            r#""level":"INFO""#,
            r#""target":"rot13d""#,
            r#""message":"listening""#,
            r#""addr":"127.0.0.1:40713""#,
            r#""kind":"rot13""#,
        ] {
            assert!(line.contains(pair), "{pair} not in {line}");
        }
        assert!(!line.contains(r#""fields""#), "{line}");
    }
}
