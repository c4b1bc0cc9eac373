//! rot13d-bench: load generator and verifier for the ROT13 line protocol
//! (SPEC.md §1), built to never be the bottleneck: one thread, epoll,
//! non-blocking sockets, pre-generated data, and a `memcmp` of every byte
//! that comes back against the expected rot13 image at the same offset (any
//! difference fails the run with exit code 1).
//!
//! Scenarios: `tput` (pipelined bulk), `lat` (closed loop round trips),
//! `mixed` (bulk plus interactive lanes), `conns` (many idle connections
//! over several processes and source addresses), `slow` (clients that do
//! not read), `oneshot` (one connection, N lines, half-close: for callgrind
//! and strace runs), `selftest`, and `summarize` (medians of JSON result
//! lines as markdown tables, for scripts/bench.sh).
//!
//! With `--server-pid PID` every scenario reports the server's CPU time
//! (summed over PID and its descendants: a master and its workers) and RSS.
//! Rates count answered data: `lines_per_s` whole lines, `mb_per_s` bytes
//! of one direction in 10^6 B/s; latencies run from just before the line's
//! `send` to the read that completes its answer.

#[path = "rot13d-bench/conns.rs"]
mod conns;
#[path = "rot13d-bench/engine.rs"]
mod engine;
#[path = "rot13d-bench/pattern.rs"]
mod pattern;
#[path = "rot13d-bench/procstat.rs"]
mod procstat;
#[path = "rot13d-bench/report.rs"]
mod report;
#[path = "rot13d-bench/scenarios.rs"]
mod scenarios;
#[path = "rot13d-bench/selftest.rs"]
mod selftest;
#[path = "rot13d-bench/summarize.rs"]
mod summarize;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Why a run failed: a wrong answer (exit 1) or anything else (exit 2).
#[derive(Debug)]
pub struct Fail {
    /// Process exit code.
    pub code: u8,
    /// What happened.
    pub msg: String,
}

impl Fail {
    /// The server's answer was wrong.
    pub fn mismatch(msg: String) -> Fail {
        Fail { code: 1, msg: format!("verification failed: {msg}") }
    }

    /// An I/O or setup error.
    pub fn io(msg: String) -> Fail {
        Fail { code: 2, msg }
    }
}

/// Options every load scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:40713")]
    pub addr: SocketAddr,
    /// Connections (default depends on the scenario).
    #[arg(long)]
    pub conns: Option<usize>,
    /// Bytes per line, LF included.
    #[arg(long)]
    pub line_len: Option<usize>,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Send this many lines in all instead of running for a duration.
    #[arg(long)]
    pub lines: Option<u64>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// One JSON object per result line.
    #[arg(long)]
    pub json: bool,
    /// Server pid: report its CPU time and RSS (with its descendants).
    #[arg(long)]
    pub server_pid: Option<i32>,
    /// Bytes a bulk connection may have in flight (default per scenario).
    #[arg(long)]
    pub window: Option<u64>,
    /// The server's max_line: longer lines would be cut, so they are refused.
    #[arg(long, default_value_t = 16384)]
    pub max_line: usize,
    /// Varies the generated text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bulk connections count the answers without reading or checking them
    /// (`MSG_TRUNC`: the kernel drops them uncopied), so one generator core
    /// can load a server core (`tput`, the bulk side of `mixed`).
    #[arg(long)]
    pub discard: bool,
    /// Free-form server name written into results (e.g. `ceiling`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Free-form case name written into results (default: the scenario).
    #[arg(long, default_value = "")]
    pub case: String,
}

#[derive(Parser, Debug)]
#[command(name = "rot13d-bench", version, about = "Load generator and verifier for rot13d and its peers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pipelined throughput: C connections stream lines (default 64 × 64 B).
    Tput(Common),
    /// Closed-loop latency: C connections each send a line and wait (default 1 × 64 B).
    Lat(Common),
    /// Bulk connections streaming while interactive ones do round trips.
    Mixed(scenarios::MixedArgs),
    /// K connections held open over several processes and source addresses.
    Conns(conns::ConnsArgs),
    /// N clients send M MiB each and do not read for a while.
    Slow(scenarios::SlowArgs),
    /// One connection, N lines, read all back, half-close, expect EOF.
    Oneshot(scenarios::OneshotArgs),
    /// Checks the verifier and the engine against an in-process server.
    Selftest,
    /// Medians of JSON result lines as markdown tables.
    Summarize(summarize::SummarizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Tput(c) => scenarios::tput(&c),
        Cmd::Lat(c) => scenarios::lat(&c),
        Cmd::Mixed(a) => scenarios::mixed(&a),
        Cmd::Conns(a) => conns::run(&a),
        Cmd::Slow(a) => scenarios::slow(&a),
        Cmd::Oneshot(a) => scenarios::oneshot(&a),
        Cmd::Selftest => selftest::run(),
        Cmd::Summarize(a) => summarize::run(&a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("rot13d-bench: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}
