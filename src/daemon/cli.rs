//! The command line (SPEC §2), one flag for one documented option.
//!
//! Options that are also configuration keys are `Option`s here: `None`
//! means "not given, the file or the default decides"
//! ([`settings`](super::settings) merges them). A value that does not parse
//! as its type (`--workers many`, `--listen nowhere`, `--max-line x`,
//! `--log-level loud`) is a usage error, exit 64; a value that parses but is
//! not acceptable (`--max-line 0`, `--backend kqueue`) is a configuration
//! error, exit 78, reported by [`Settings`](super::settings::Settings).
//! Which option overrides which key is one table,
//! [`OVERRIDES`](super::settings::OVERRIDES).
//!
//! clap's own `Error::exit()` would exit 2 for usage errors; `main` maps
//! instead:
//!
//! ```no_run
//! use rot13d::daemon::cli;
//! # fn main() -> std::process::ExitCode {
//! let args = match cli::parse_args() {
//!     Ok(args) => args,
//!     Err(e) => {
//!         // Help and version go to stdout and exit 0; errors go to stderr
//!         // with the usage line and exit 64.
//!         let _ = e.print();
//!         return std::process::ExitCode::from(cli::exit_code(&e));
//!     }
//! };
//! # let _ = args; std::process::ExitCode::SUCCESS }
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};

use super::config::{LogFormat, LogLevel, Workers};
use super::error::EX_USAGE;

/// Shown after `--help`.
const AFTER_LONG_HELP: &str = "\
Exit status:
  0   normal or graceful stop; --help, --version, --check-config success
  64  usage error: unknown option, missing or unparsable value,
      --daemon without --pid-file
  71  OS error at start: address in use (also by another rot13d,
      whatever the worker count), permission denied, pid file locked
  78  configuration error: invalid TOML, unknown key, wrong type,
      unacceptable value, unavailable backend (file, line and key named)

Signals (to the master process):
  SIGTERM, SIGINT  graceful stop (new clients refused, open ones drained
                   for up to [server].shutdown_grace seconds)
  SIGHUP           reload the configuration file (a new generation of
                   workers; the old one retires once the new one serves)
  SIGUSR1          reopen [log].file (logged and ignored with stderr)
  SIGUSR2          logged and ignored
  SIGQUIT          immediate stop

Environment:
  RUST_LOG         log filter (tracing EnvFilter syntax); wins over --log-level
  EVENT_NOEPOLL, EVENT_NOPOLL, EVENT_NOSELECT
                   disable a backend (unless [reactor].ignore_env = true)
  EVENT_EPOLL_USE_CHANGELIST
                   turn the epoll changelist on
  NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
                   systemd notification, watchdog and socket activation (a
                   passed socket named admin is the admin endpoint)";

/// The command line of `rot13d`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(
    name = "rot13d",
    version,
    about = "A ROT13 line-protocol TCP daemon",
    long_about = "A ROT13 line-protocol TCP daemon.\n\n\
        Every line a client sends (up to LF) comes back ROT13-encoded. With no options it\n\
        serves on 0.0.0.0:40713 with one worker process per usable CPU. Options given here\n\
        override the configuration file (see config/rot13d.toml for every key).",
    after_long_help = AFTER_LONG_HELP,
    disable_help_subcommand = true
)]
pub struct Args {
    /// TOML configuration file (none: built-in defaults)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen addresses (`-l`/`--listen`, repeatable); replace `[server] listen`.
    #[arg(
        short = 'l',
        long = "listen",
        help = "Listen address, repeatable; replaces [server].listen",
        value_name = "ADDR",
        action = ArgAction::Append,
        long_help = "Listen address, repeatable; replaces the whole [server].listen list.\n\
            IPv4 `0.0.0.0:40713`, IPv6 `[::]:40713`; port 0 = any free port\n\
            (the bound port is logged)."
    )]
    pub listen: Vec<SocketAddr>,

    /// Worker processes: a number, 0 = serve in the master, or auto
    #[arg(
        short = 'w',
        long = "workers",
        value_name = "N|auto",
        long_help = "Worker processes. 0 = serve in the master process;\n\
            auto = the CPUs this process may run on (affinity mask, capped by\n\
            a cgroup CPU quota), at least 1 [default: auto]"
    )]
    pub workers: Option<Workers>,

    /// Event backend: epoll | poll | select | uring (default: fastest available; uring only where io_uring works, never by default)
    #[arg(long = "backend", value_name = "NAME")]
    pub backend: Option<String>,

    /// Longest line in bytes before it is split [default: 16384]
    #[arg(long = "max-line", value_name = "BYTES")]
    pub max_line: Option<usize>,

    /// Detach (double fork, setsid); needs --pid-file
    #[arg(long = "daemon", requires = "pid_file")]
    pub daemon: bool,

    /// Write the master's pid to FILE
    #[arg(long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Validate the configuration, print problems, exit
    #[arg(skip)]
    pub check_config: bool,

    /// `--check-config [FILE]` as given: FILE is the same as `--config FILE`
    /// (read into `check_config` and `config` by [`check_config_file`]).
    #[arg(
        long = "check-config",
        id = "check_config",
        value_name = "FILE",
        num_args = 0..=1,
        help = "Validate the configuration (FILE, or --config), print problems, exit",
        help_heading = "Modes",
        conflicts_with_all = ["print_config", "list_backends", "daemon"]
    )]
    pub check_config_arg: Option<Option<PathBuf>>,

    /// Print the effective configuration as TOML, exit
    #[arg(
        long = "print-config",
        help_heading = "Modes",
        conflicts_with_all = ["list_backends", "daemon"],
        long_help = "Print the effective configuration (defaults, file and options merged)\n\
            as TOML that --check-config accepts, exit"
    )]
    pub print_config: bool,

    /// Print the supported backends, fastest first, exit
    #[arg(
        long = "list-backends",
        help_heading = "Modes",
        conflicts_with = "daemon",
        long_help = "Print the supported backends, fastest first, one a line: `NAME FEATURES`,\n\
            FEATURES comma-separated from et, o1, fds, early_close, or `-`\n\
            (e.g. `epoll et,o1,early_close`), exit"
    )]
    pub list_backends: bool,

    /// Log level (RUST_LOG wins) [default: info]
    #[arg(long = "log-level", value_name = "LEVEL", help_heading = "Logging")]
    pub log_level: Option<LogLevel>,

    /// Log line format [default: text]
    #[arg(long = "log-format", value_name = "FMT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,

    /// A subcommand instead of serving (`rot13d probe ADDR`); none = serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands: jobs other than serving, each alone on its command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Health probe: send one line to ADDR, check its ROT13 answer, exit 0 (healthy) or 1
    Probe(super::probe::ProbeArgs),
}

/// Parses the process's command line. See the module doc for how `main`
/// turns an error into output and an exit code.
pub fn parse_args() -> Result<Args, clap::Error> {
    parse_from(std::env::args_os())
}

/// Parses `args` (the first item is the program name), as [`parse_args`].
pub fn parse_from<I, T>(args: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Args::try_parse_from(args).and_then(subcommand_alone).and_then(check_config_file)
}

/// `--check-config FILE` checks FILE, as `--config FILE --check-config`
/// does (the form `nginx -t -c FILE` users type); with `--config` as well,
/// both must name the same file.
fn check_config_file(mut args: Args) -> Result<Args, clap::Error> {
    let Some(file) = args.check_config_arg.take() else { return Ok(args) };
    args.check_config = true;
    if let Some(f) = file {
        if let Some(c) = args.config.as_ref().filter(|c| **c != f) {
            return Err(<Args as clap::CommandFactory>::command().error(
                ErrorKind::ArgumentConflict,
                format!("--check-config {} and --config {} name two files", f.display(), c.display()),
            ));
        }
        args.config = Some(f);
    }
    Ok(args)
}

/// A subcommand takes none of the serving options: `rot13d -w 2 probe ADDR`
/// is a mistake to report, not a probe. (clap's
/// `args_conflicts_with_subcommands` would do it, but then reads a stray
/// word as a subcommand: `rot13d --check-config FILE` became "the subcommand
/// 'FILE' cannot be used with '--check-config'".)
fn subcommand_alone(args: Args) -> Result<Args, clap::Error> {
    match &args.command {
        Some(_) if Args { command: None, ..args.clone() } != Args::default() => {
            Err(<Args as clap::CommandFactory>::command()
                .error(ErrorKind::ArgumentConflict, "a subcommand takes none of the serving options"))
        }
        _ => Ok(args),
    }
}

/// The exit code for a clap error: 0 for `--help` and `--version` (clap
/// reports them as errors so that the caller prints and exits), 64
/// (`EX_USAGE`) for everything else. Print the error with
/// `clap::Error::print`, which sends help and version to stdout and errors
/// to stderr.
pub fn exit_code(err: &clap::Error) -> u8 {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => EX_USAGE,
    }
}

impl Args {
    /// Whether the process only reports and exits (`--check-config`,
    /// `--print-config`, `--list-backends`) instead of serving.
    pub fn is_one_shot(&self) -> bool {
        self.check_config || self.print_config || self.list_backends
    }

    /// Makes `--config` and `--pid-file` absolute against the current
    /// directory. Call before `--daemon` changes directory to `/`, so that a
    /// SIGHUP reload still finds the file and the pid file is removed where
    /// it was written.
    pub fn make_paths_absolute(&mut self) -> std::io::Result<()> {
        for path in [&mut self.config, &mut self.pid_file].into_iter().flatten() {
            *path = std::path::absolute(&*path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        parse_from(std::iter::once("rot13d").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match parse(args) {
            Err(e) => e,
            Ok(a) => panic!("{args:?} parsed as {a:?}"),
        }
    }

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn no_options_is_all_defaults() {
        assert_eq!(parse(&[]).ok(), Some(Args::default()));
    }

    #[test]
    fn every_option_parses() {
        let a = parse(&[
            "-c",
            "/etc/rot13d.toml",
            "-l",
            "127.0.0.1:1",
            "--listen",
            "[::1]:0",
            "-w",
            "3",
            "--backend",
            "poll",
            "--max-line",
            "100",
            "--daemon",
            "--pid-file",
            "/run/rot13d.pid",
            "--log-level",
            "debug",
            "--log-format",
            "json",
        ])
        .expect("valid command line");
        assert_eq!(a.config, Some(PathBuf::from("/etc/rot13d.toml")));
        assert_eq!(
            a.listen,
            vec![
                "127.0.0.1:1".parse::<SocketAddr>().expect("literal"),
                "[::1]:0".parse::<SocketAddr>().expect("literal"),
            ]
        );
        assert_eq!(a.workers, Some(Workers::Count(3)));
        assert_eq!(a.backend.as_deref(), Some("poll"));
        assert_eq!(a.max_line, Some(100));
        assert!(a.daemon);
        assert_eq!(a.pid_file, Some(PathBuf::from("/run/rot13d.pid")));
        assert_eq!(a.log_level, Some(LogLevel::Debug));
        assert_eq!(a.log_format, Some(LogFormat::Json));
        assert!(!a.is_one_shot());
    }

    #[test]
    fn listen_is_repeatable_and_ordered() {
        let a = parse(&["-l", "127.0.0.1:3", "-l", "127.0.0.1:1", "--listen=127.0.0.1:2"]).expect("valid");
        let ports: Vec<u16> = a.listen.iter().map(|s| s.port()).collect();
        assert_eq!(ports, vec![3, 1, 2]);
    }

    #[test]
    fn workers_auto_and_zero() {
        assert_eq!(parse(&["-w", "auto"]).ok().and_then(|a| a.workers), Some(Workers::Auto));
        assert_eq!(parse(&["--workers", "0"]).ok().and_then(|a| a.workers), Some(Workers::Count(0)));
    }

    #[test]
    fn paths_become_absolute() {
        let mut a = parse(&["-c", "rot13d.toml", "--pid-file", "/run/r.pid"]).expect("valid");
        a.make_paths_absolute().expect("current directory");
        let config = a.config.clone().unwrap_or_default();
        assert!(config.is_absolute() && config.ends_with("rot13d.toml"), "{config:?}");
        assert_eq!(a.pid_file, Some(PathBuf::from("/run/r.pid")));
        let mut none = Args::default();
        assert!(none.make_paths_absolute().is_ok());
        assert_eq!(none, Args::default());
    }

    #[test]
    fn check_config_takes_the_file_either_way() {
        let want = Some(PathBuf::from("/etc/rot13d/rot13d.toml"));
        for args in [
            &["--check-config", "/etc/rot13d/rot13d.toml"][..],
            &["-c", "/etc/rot13d/rot13d.toml", "--check-config"],
            &["--check-config", "-c", "/etc/rot13d/rot13d.toml"],
            &["--check-config", "/etc/rot13d/rot13d.toml", "-c", "/etc/rot13d/rot13d.toml"],
        ] {
            let a = parse(args).expect("valid");
            assert!(a.check_config && a.is_one_shot(), "{args:?}");
            assert_eq!(a.config, want, "{args:?}");
            assert_eq!(a.check_config_arg, None, "{args:?}");
        }
        let e = parse(&["--check-config", "a.toml", "-c", "b.toml"]).expect_err("two files");
        assert!(e.to_string().contains("name two files"), "{e}");
    }

    #[test]
    fn modes() {
        assert!(parse(&["--check-config"]).expect("valid").check_config);
        assert!(parse(&["--print-config"]).expect("valid").print_config);
        let a = parse(&["--list-backends"]).expect("valid");
        assert!(a.list_backends && a.is_one_shot());
    }

    #[test]
    fn usage_errors_exit_64() {
        for args in [
            &["--bogus"][..],
            &["-w", "many"],
            &["-w"],
            &["-w", "-1"],
            &["--listen", "nowhere"],
            &["--listen", "localhost:40713"],
            &["--max-line", "x"],
            &["--max-line", "-5"],
            &["--log-level", "loud"],
            &["--log-format", "xml"],
            &["--daemon"],
            &["--check-config", "--print-config"],
            &["--print-config", "--list-backends"],
            &["--check-config", "--daemon", "--pid-file", "p"],
            &["extra"],
        ] {
            let e = usage_error(args);
            assert_eq!(exit_code(&e), 64, "{args:?}: {e}");
        }
    }

    #[test]
    fn daemon_without_pid_file_names_pid_file() {
        let e = usage_error(&["--daemon"]);
        assert!(e.to_string().contains("--pid-file"), "{e}");
        assert!(parse(&["--daemon", "--pid-file", "/run/x.pid"]).is_ok());
    }

    #[test]
    fn help_and_version_exit_0() {
        for args in [&["--help"][..], &["-h"], &["--version"], &["-V"]] {
            let e = usage_error(args);
            assert_eq!(exit_code(&e), 0, "{args:?}");
        }
        let version = usage_error(&["-V"]).to_string();
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }

    #[test]
    fn probe_subcommand_beside_the_options() {
        use std::time::Duration;
        let probe = |args: &[&str]| match parse(args).map(|a| a.command) {
            Ok(Some(Command::Probe(p))) => Some((p.addr, p.timeout)),
            _ => None,
        };
        assert_eq!(probe(&["probe", "127.0.0.1:40713"]), Some(("127.0.0.1:40713".into(), Duration::from_secs(2))));
        assert_eq!(
            probe(&["probe", "localhost:1", "--timeout", "0.5"]),
            Some(("localhost:1".into(), Duration::from_millis(500)))
        );
        // The serving options stay as they were, with no subcommand.
        let a = parse(&["--workers", "2"]).expect("valid");
        assert_eq!(a, Args { workers: Some(Workers::Count(2)), ..Args::default() });
        for args in [
            &["probe"][..],
            &["probe", "127.0.0.1:1", "--timeout", "0"],
            &["probe", "127.0.0.1:1", "--timeout", "soon"],
            &["probe", "127.0.0.1:1", "extra"],
            &["--workers", "2", "probe", "127.0.0.1:1"],
            &["probe", "127.0.0.1:1", "--workers", "2"],
        ] {
            let e = usage_error(args);
            assert_eq!(exit_code(&e), 64, "{args:?}: {e}");
        }
        assert_eq!(exit_code(&usage_error(&["probe", "--help"])), 0);
        // A stray word is named as such, not as a subcommand in conflict.
        let e = usage_error(&["--print-config", "/etc/rot13d/rot13d.toml"]).to_string();
        assert!(e.contains("'/etc/rot13d/rot13d.toml'") && !e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn help_lists_every_option() {
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "-c, --config <FILE>",
            "-l, --listen <ADDR>",
            "-w, --workers <N|auto>",
            "--backend <NAME>",
            "--max-line <BYTES>",
            "--daemon",
            "--pid-file <FILE>",
            "--check-config",
            "--print-config",
            "--list-backends",
            "--log-level <LEVEL>",
            "--log-format <FMT>",
            "-V, --version",
            "-h, --help",
            "Exit status:",
            "- error:",
            "probe",
        ] {
            assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        }
        let short = Args::command().render_help().to_string();
        assert!(short.contains("[possible values: error, warn, info, debug, trace]"), "{short}");
        assert!(!short.contains("Exit status:"), "-h stays short: {short}");
    }
}
