//! `rot13d`: parse the command line, run the daemon (or `rot13d probe`), map
//! its error to a sysexits code (64 usage, 71 OS, 78 configuration).

use rot13d::daemon::{self, cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::parse_args() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(cli::exit_code(&e));
        }
    };
    if let Some(cli::Command::Probe(probe)) = &args.command {
        return ExitCode::from(daemon::probe::run(probe));
    }
    match daemon::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rot13d: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
