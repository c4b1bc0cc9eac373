//! Errors of the daemon and their exit codes.
//!
//! One `thiserror` enum per subsystem (`ConfigError`, `UsageError`), wrapped
//! by [`Error`]; [`Error::exit_code`] maps each to the sysexits code of
//! SPEC §2 and is meant to be used in `main.rs` only. Messages name what an
//! operator needs to fix: the file, line and key of a configuration problem,
//! the address and OS error of a failed bind.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Exit code for a command-line usage error (`EX_USAGE`, sysexits.h).
pub const EX_USAGE: u8 = 64;
/// Exit code for an OS failure at start, e.g. address in use (`EX_OSERR`).
pub const EX_OSERR: u8 = 71;
/// Exit code for an unacceptable configuration (`EX_CONFIG`).
pub const EX_CONFIG: u8 = 78;

/// A configuration that cannot be used: exit code 78.
///
/// The message names the file, the line and the key whenever they are known;
/// values given on the command line are named by their option (`--max-line`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {source}", .path.display())]
    Io {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the
    /// wrong type.
    #[error("{}:{line}:{col}: {}{message}", .path.display(), KeyPrefix(.key))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        col: usize,
        /// The key concerned as `section.key`, when the problem is about one.
        key: Option<String>,
        /// What is wrong, as the TOML parser says it.
        message: String,
    },
    /// A value that parses but is not acceptable (`max_line = 0`, an
    /// unknown backend name, a low watermark above the high one, ...).
    #[error("{}invalid value for {key}: {message}", Location(.path, .line))]
    Invalid {
        /// `section.key` for a file or default value, the option (such as
        /// `--max-line`) for a command-line value.
        key: String,
        /// Why the value is refused.
        message: String,
        /// The file the value came from; `None` for the command line.
        path: Option<PathBuf>,
        /// The 1-based line of the key in `path`, when known.
        line: Option<usize>,
    },
    /// Several problems at once, in file order; `--check-config` prints them
    /// all. Each is on its own line.
    #[error("{}", Lines(.0))]
    Many(Vec<ConfigError>),
    /// The effective configuration could not be rendered as TOML (for
    /// `--print-config`).
    #[error("cannot render the configuration as TOML: {0}")]
    Render(#[from] toml::ser::Error),
}

impl ConfigError {
    /// The individual problems: the members of `Many`, or `self` alone.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many(all) => all.iter().flat_map(|e| e.problems()).collect(),
            other => vec![other],
        }
    }

    /// Folds a list of problems into one error: `None` if empty, the problem
    /// itself if alone, `Many` otherwise.
    pub fn from_problems(mut problems: Vec<ConfigError>) -> Option<ConfigError> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(ConfigError::Many(problems)),
        }
    }
}

/// `key: ` before a parse message, or nothing.
struct KeyPrefix<'a>(&'a Option<String>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
}

/// `path:line: `, `path: ` or nothing.
struct Location<'a>(&'a Option<PathBuf>, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(path), Some(line)) => write!(f, "{}:{line}: ", path.display()),
            (Some(path), None) => write!(f, "{}: ", path.display()),
            (None, _) => Ok(()),
        }
    }
}

/// One error per line.
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A command-line problem found after clap parsed the arguments: exit 64.
///
/// Errors of clap itself are best printed by clap (`clap::Error::print`,
/// with colours and the usage line) and mapped with
/// [`cli::exit_code`](crate::daemon::cli::exit_code); `Cli` carries one
/// when it has to travel through [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// clap refused the command line.
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// `--daemon` was given without `--pid-file`.
    #[error("--daemon needs --pid-file")]
    DaemonWithoutPidFile,
    /// Options that cannot be used together, or another usage problem.
    #[error("{0}")]
    Other(String),
}

/// Everything that stops the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An unacceptable configuration (exit 78).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line usage error (exit 64).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A listening socket could not be set up (exit 71).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said (address in use, permission denied, ...).
        #[source]
        source: io::Error,
    },
    /// Another OS call failed at start (exit 71).
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being done, as a verb phrase: `write the pid file
        /// /run/rot13d.pid`, `fork a worker`.
        what: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The reactor failed. `InvalidInput` and `Unsupported` errors mean no
    /// backend satisfies the configuration (an unavailable backend,
    /// unsatisfiable `require_features`) and exit 78; any other exits 71.
    #[error("reactor: {0}")]
    Reactor(#[source] io::Error),
}

impl Error {
    /// The sysexits code for this error: 64 usage, 78 configuration, 71 OS.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EX_CONFIG,
            Error::Usage(_) => EX_USAGE,
            Error::Listen { .. } | Error::Os { .. } => EX_OSERR,
            Error::Reactor(e) => match e.kind() {
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported => EX_CONFIG,
                _ => EX_OSERR,
            },
        }
    }

    /// An [`Error::Os`] for `what` failing with `source`.
    pub fn os(what: impl Into<String>, source: io::Error) -> Error {
        Error::Os { what: what.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_sysexits() {
        let config = Error::from(ConfigError::Invalid {
            key: "server.max_line".into(),
            message: "must be at least 1".into(),
            path: None,
            line: None,
        });
        assert_eq!(config.exit_code(), 78);
        assert_eq!(Error::from(UsageError::DaemonWithoutPidFile).exit_code(), 64);
        let listen = Error::Listen {
            addr: "127.0.0.1:40713".parse().expect("literal address"),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(listen.exit_code(), 71);
        assert_eq!(Error::os("fork a worker", io::Error::other("x")).exit_code(), 71);
        let unavailable = io::Error::new(io::ErrorKind::Unsupported, "no backend");
        assert_eq!(Error::Reactor(unavailable).exit_code(), 78);
        assert_eq!(Error::Reactor(io::Error::other("epoll_create")).exit_code(), 71);
        assert_eq!((EX_USAGE, EX_OSERR, EX_CONFIG), (64, 71, 78));
    }

    #[test]
    fn listen_error_names_address_and_os_error() {
        let e = Error::Listen {
            addr: "127.0.0.1:40713".parse().expect("literal address"),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:40713"), "{text}");
        assert!(text.to_lowercase().contains("address already in use"), "{text}");
    }

    #[test]
    fn invalid_names_file_line_and_key() {
        let e = ConfigError::Invalid {
            key: "server.max_line".into(),
            message: "must be at least 1".into(),
            path: Some(PathBuf::from("/etc/rot13d.toml")),
            line: Some(7),
        };
        assert_eq!(e.to_string(), "/etc/rot13d.toml:7: invalid value for server.max_line: must be at least 1");
        let cli = ConfigError::Invalid {
            key: "--max-line".into(),
            message: "must be at least 1".into(),
            path: None,
            line: None,
        };
        assert_eq!(cli.to_string(), "invalid value for --max-line: must be at least 1");
    }

    #[test]
    fn parse_error_display() {
        let e = ConfigError::Parse {
            path: PathBuf::from("a.toml"),
            line: 3,
            col: 1,
            key: Some("server.bogus".into()),
            message: "unknown field `bogus`".into(),
        };
        assert_eq!(e.to_string(), "a.toml:3:1: server.bogus: unknown field `bogus`");
    }

    #[test]
    fn many_prints_one_problem_a_line() {
        let one = |k: &str| ConfigError::Invalid { key: k.into(), message: "bad".into(), path: None, line: None };
        assert!(ConfigError::from_problems(Vec::new()).is_none());
        let single = ConfigError::from_problems(vec![one("a")]);
        assert!(matches!(single, Some(ConfigError::Invalid { .. })));
        let many = ConfigError::from_problems(vec![one("a"), one("b")]).expect("two problems");
        assert_eq!(many.to_string(), "invalid value for a: bad\ninvalid value for b: bad");
        assert_eq!(many.problems().len(), 2);
    }
}
