//! The metrics of rot13d, in one table ([`DESCRIPTIONS`]): every family
//! `/metrics` shows, with its type, help and where its values come from
//! ([`Source`]):
//!
//! - [`Source::Slot`]: the counters of the serving processes. One slot per
//!   serving process (or in-process generation), in shared memory mapped by
//!   the master before it forks, so the master (and the admin endpoint) can
//!   sum them without asking the workers.
//! - [`Source::Master`]: what the master knows of itself (workers wanted and
//!   serving, restarts, reloads), kept in its [`Stats`].
//! - [`Source::Sampled`]: read from the system at each scrape ([`Scrape`]):
//!   the build, the accept queues, and the `process_*` families of every
//!   live process (see [`Sample`]).
//!
//! Slots are handed out when a worker is started and given back when it is
//! reaped ([`SlotTable`], a pure allocator), so two live workers never share
//! one, whatever the generations alive. When every slot is taken the master
//! maps another chunk before it forks; a child sees every chunk mapped
//! before its fork, and only ever touches its own slot. A counter of a
//! reaped worker stays in its slot (the sums never go down); its gauge is
//! zeroed. Gauges are stored as absolute values by their one writer, never
//! incremented and decremented, so none can wrap.
//!
//! A new family is one row of [`DESCRIPTIONS`] per series, and a variant of
//! the enum its source reads (a [`Counter`], a [`Stat`] or a [`Sample`]):
//! a row's name may carry labels (`name{lane="bulk"}`); rows of one family
//! sit together and share its `# HELP` and `# TYPE`. A [`Kind::Histogram`]
//! slot series takes [`HISTOGRAM_CELLS`] cells of the slot (a count per
//! bucket of [`BUCKETS_NS`], then the sum in nanoseconds); the cell offsets
//! are computed from the table ([`OFFSETS`]).
//!
//! Every cell has one writer (the process owning the slot), so an update is
//! a relaxed load and store, not a locked read-modify-write: the data path
//! updates several counters per callback.

use super::proxy::{Refusal, Version};
use crate::sys::shm::SharedCounters;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of a serving process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Connections accepted.
    Accepted = 0,
    /// Connections open now (a gauge).
    Open,
    /// Lines (and max_line pieces) answered.
    Lines,
    /// Lines longer than max_line (answered in pieces).
    LinesCut,
    /// Bytes received from clients.
    BytesReceived,
    /// Bytes written to client sockets.
    BytesSent,
    /// Connections closed by the idle timeout.
    IdleClosed,
    /// Connections closed by the write timeout.
    WriteTimeouts,
    /// Connections closed by a reset or error.
    Errors,
    /// Times accepting paused on EMFILE/ENFILE.
    AcceptErrors,
    /// Read callbacks of interactive connections.
    CallbacksInteractive,
    /// Read callbacks of bulk connections.
    CallbacksBulk,
    /// Connections that moved to the interactive lane.
    MovesToInteractive,
    /// Connections that moved to the bulk lane.
    MovesToBulk,
    /// Dispatch delay of interactive connections (a histogram).
    DelayInteractive,
    /// Dispatch delay of bulk connections (a histogram).
    DelayBulk,
    /// PROXY headers accepted, v1.
    ProxyHeadersV1,
    /// PROXY headers accepted, v2.
    ProxyHeadersV2,
    /// PROXY headers without a client address (v2 LOCAL, v1 UNKNOWN).
    ProxyLocal,
    /// Connections refused in the PROXY header phase, one per [`Refusal`]
    /// in [`Refusal::ALL`] order.
    ProxyRefusedMissing,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedWrongVersion,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedMalformed,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTooLong,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedUnsupportedFamily,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTruncated,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTimeout,
}

impl Counter {
    /// The counter of headers of `version`.
    pub const fn proxy_header(version: Version) -> Counter {
        match version {
            Version::V1 => Counter::ProxyHeadersV1,
            Version::V2 => Counter::ProxyHeadersV2,
        }
    }

    /// The counter of connections refused for `why`.
    pub const fn proxy_refused(why: Refusal) -> Counter {
        match why {
            Refusal::Missing => Counter::ProxyRefusedMissing,
            Refusal::WrongVersion => Counter::ProxyRefusedWrongVersion,
            Refusal::Malformed => Counter::ProxyRefusedMalformed,
            Refusal::TooLong => Counter::ProxyRefusedTooLong,
            Refusal::UnsupportedFamily => Counter::ProxyRefusedUnsupportedFamily,
            Refusal::Truncated => Counter::ProxyRefusedTruncated,
            Refusal::Timeout => Counter::ProxyRefusedTimeout,
        }
    }
}

/// Slot series (the [`Counter`] variants).
pub const SLOT_SERIES: usize = Counter::ProxyRefusedTimeout as usize + 1;

/// A value the master keeps about itself, in its [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stat {
    /// Serving processes the current generation wants.
    WorkersWanted = 0,
    /// Of those, how many serve.
    WorkersServing,
    /// Forked workers whose loop has not answered the liveness check for
    /// half of `[server] worker_timeout` (not killed yet).
    WorkersUnresponsive,
    /// Workers replaced after a death, one per [`ExitReason`] in
    /// [`ExitReason::ALL`] order.
    RestartsSignal,
    /// See [`Stat::RestartsSignal`].
    RestartsError,
    /// See [`Stat::RestartsSignal`].
    RestartsExit,
    /// See [`Stat::RestartsSignal`].
    RestartsUnresponsive,
    /// Reloads, one per [`ReloadResult`] in [`ReloadResult::ALL`] order.
    ReloadsOk,
    /// See [`Stat::ReloadsOk`].
    ReloadsInvalid,
    /// See [`Stat::ReloadsOk`].
    ReloadsFailed,
    /// See [`Stat::ReloadsOk`].
    ReloadsTimeout,
    /// See [`Stat::ReloadsOk`].
    ReloadsSuperseded,
    /// When the configuration in use was loaded (start or reload), seconds
    /// since the epoch.
    ReloadSuccessTime,
    /// 1 if the last reload applied (or none was asked yet), 0 if it failed.
    ReloadSuccessful,
}

/// Master series (the [`Stat`] variants).
pub const STATS: usize = Stat::ReloadSuccessful as usize + 1;

/// Why a worker that was not asked to stop ended (the `reason` label of
/// `rot13d_worker_restarts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Killed by a signal (a crash, the OOM killer, `kill -9`).
    Signal,
    /// Exited with a non-zero status (a start-up error of the worker).
    Error,
    /// Exited 0 unasked (a stop signal that reached the worker alone).
    Exit,
    /// Killed by the master: its loop did not answer the liveness check
    /// within `[server] worker_timeout` (frozen, stuck or stopped).
    Unresponsive,
}

impl ExitReason {
    /// Every reason, in [`Stat`] order.
    pub const ALL: [ExitReason; 4] =
        [ExitReason::Signal, ExitReason::Error, ExitReason::Exit, ExitReason::Unresponsive];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExitReason::Signal => "signal",
            ExitReason::Error => "error",
            ExitReason::Exit => "exit",
            ExitReason::Unresponsive => "unresponsive",
        }
    }
}

/// How a reload (SIGHUP) ended (the `result` label of `rot13d_reloads_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new generation serves.
    Ok,
    /// The configuration file is invalid: nothing changed.
    Invalid,
    /// It could not be applied (a new address could not be bound, no event
    /// base as `[reactor]` asks): nothing changed.
    Failed,
    /// The new generation did not serve within the start timeout: the old
    /// one serves on.
    Timeout,
    /// A newer reload came while it was starting.
    Superseded,
}

impl ReloadResult {
    /// Every result, in [`Stat`] order.
    pub const ALL: [ReloadResult; 5] = [
        ReloadResult::Ok,
        ReloadResult::Invalid,
        ReloadResult::Failed,
        ReloadResult::Timeout,
        ReloadResult::Superseded,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Failed => "failed",
            ReloadResult::Timeout => "timeout",
            ReloadResult::Superseded => "superseded",
        }
    }
}

impl Stat {
    /// The restart counter of `reason`.
    pub const fn restart(reason: ExitReason) -> Stat {
        match reason {
            ExitReason::Signal => Stat::RestartsSignal,
            ExitReason::Error => Stat::RestartsError,
            ExitReason::Exit => Stat::RestartsExit,
            ExitReason::Unresponsive => Stat::RestartsUnresponsive,
        }
    }

    /// The reload counter of `result`.
    pub const fn reload(result: ReloadResult) -> Stat {
        match result {
            ReloadResult::Ok => Stat::ReloadsOk,
            ReloadResult::Invalid => Stat::ReloadsInvalid,
            ReloadResult::Failed => Stat::ReloadsFailed,
            ReloadResult::Timeout => Stat::ReloadsTimeout,
            ReloadResult::Superseded => Stat::ReloadsSuperseded,
        }
    }
}

/// The master's own values, by [`Stat`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats([f64; STATS]);

impl Stats {
    /// Sets `s` to `v`.
    pub fn set(&mut self, s: Stat, v: f64) {
        self.0[s as usize] = v;
    }

    /// Adds `n` to `s`.
    pub fn add(&mut self, s: Stat, n: f64) {
        self.0[s as usize] += n;
    }

    /// Reads `s`.
    pub fn get(&self, s: Stat) -> f64 {
        self.0[s as usize]
    }

    /// A reload ended with `result` at `now` (seconds since the epoch).
    pub fn reloaded(&mut self, result: ReloadResult, now: f64) {
        self.add(Stat::reload(result), 1.0);
        match result {
            ReloadResult::Ok => {
                self.set(Stat::ReloadSuccessTime, now);
                self.set(Stat::ReloadSuccessful, 1.0);
            }
            ReloadResult::Invalid | ReloadResult::Failed | ReloadResult::Timeout => {
                self.set(Stat::ReloadSuccessful, 0.0)
            }
            // The newer reload decides.
            ReloadResult::Superseded => {}
        }
    }
}

/// What is sampled at each scrape ([`Scrape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// 1, labelled with the version and the current generation's backend.
    BuildInfo,
    /// Connections in the accept queues of the rot13 listeners.
    Waiting,
    /// Per process: user and system CPU time.
    CpuSeconds,
    /// Per process: resident memory.
    ResidentMemory,
    /// Per process: open file descriptors.
    OpenFds,
    /// Per process: its soft RLIMIT_NOFILE.
    MaxFds,
    /// Per process: its start time.
    StartTime,
}

/// Where a series' values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A cell (or a histogram's cells) of every slot, summed.
    Slot(Counter),
    /// The master's [`Stats`].
    Master(Stat),
    /// The [`Scrape`].
    Sampled(Sample),
}

/// What a series is, as Prometheus says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value stored as it is.
    Gauge,
    /// Durations counted per bucket of [`BUCKETS_NS`], with their sum.
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// Cells of a slot one series of this kind takes.
    const fn cells(self) -> usize {
        match self {
            Kind::Histogram => HISTOGRAM_CELLS,
            Kind::Counter | Kind::Gauge => 1,
        }
    }
}

/// Upper bounds (`le`) of the histogram buckets in nanoseconds: 1, 1.5, 2,
/// 3, 5 and 7 per decade from 1 µs to 1 s, so that neighbours differ by at
/// most 5/3 (a p99 interpolated within one is closer); above 1 s, `+Inf`.
pub const BUCKETS_NS: [u64; 37] = {
    let steps = [10, 15, 20, 30, 50, 70];
    let mut b = [0u64; 37];
    let (mut i, mut decade) = (0, 100u64);
    while i < 36 {
        b[i] = steps[i % 6] * decade;
        i += 1;
        if i % 6 == 0 {
            decade *= 10;
        }
    }
    b[36] = 1_000_000_000;
    b
};

/// Cells of a histogram: the buckets, `+Inf`, the sum.
pub const HISTOGRAM_CELLS: usize = BUCKETS_NS.len() + 2;

/// Help of the labelled families (one text per family, its rows share it).
const CALLBACKS_HELP: &str = "Read callbacks of connections, by lane (with [lanes] enabled = false \
    connections are still classed by their traffic, but every lane runs at one priority).";
const MOVES_HELP: &str = "Connections moved to a lane by their traffic (bulk_after_bytes within \
    bulk_window_ms to bulk, quiet_ms below it back), by the lane moved to.";
const DELAY_HELP: &str = "Seconds from a connection's readiness (the backend's wait returning with \
    it ready) to its read callback, by lane.";
const PROXY_HEADERS_HELP: &str = "PROXY protocol headers accepted, by version.";
const PROXY_REFUSED_HELP: &str = "Connections closed unanswered for their PROXY protocol header, by reason.";
const RESTARTS_HELP: &str = "Workers replaced after they ended unasked, by why: signal (killed: a crash, \
    the OOM killer, kill -9), error (exited non-zero), exit (exited 0 unasked), unresponsive (killed by \
    the master: its loop did not answer the liveness ping within [server] worker_timeout).";
const RELOADS_HELP: &str = "Reloads (SIGHUP), by result: ok (the new generation serves), invalid \
    (configuration invalid), failed (could not be applied), timeout (the new generation did not serve \
    in time), superseded (a newer reload came first); on all but ok the running one serves on.";

/// Prometheus name (with labels), type, help and source of each series;
/// the rows of a family together, slot series in [`Counter`] order, master
/// series in [`Stat`] order (as tests check).
pub const DESCRIPTIONS: [(Source, &str, Kind, &str); 47] = {
    use Source::{Master, Sampled, Slot};
    [
        (Slot(Counter::Accepted), "rot13d_connections_accepted_total", Kind::Counter, "Connections accepted."),
        (Slot(Counter::Open), "rot13d_connections_open", Kind::Gauge, "Connections open now."),
        (Slot(Counter::Lines), "rot13d_lines_total", Kind::Counter, "Lines (and max_line pieces) answered."),
        (
            Slot(Counter::LinesCut),
            "rot13d_lines_cut_total",
            Kind::Counter,
            "Lines longer than max_line, answered in pieces of max_line bytes (each line counted once; \
             its pieces count in rot13d_lines_total).",
        ),
        (Slot(Counter::BytesReceived), "rot13d_bytes_received_total", Kind::Counter, "Bytes received from clients."),
        (Slot(Counter::BytesSent), "rot13d_bytes_sent_total", Kind::Counter, "Bytes written to client sockets."),
        (
            Slot(Counter::IdleClosed),
            "rot13d_idle_closed_total",
            Kind::Counter,
            "Connections closed by the idle timeout.",
        ),
        (
            Slot(Counter::WriteTimeouts),
            "rot13d_write_timeouts_total",
            Kind::Counter,
            "Connections closed by the write timeout.",
        ),
        (
            Slot(Counter::Errors),
            "rot13d_connection_errors_total",
            Kind::Counter,
            "Connections closed by a reset or error.",
        ),
        (
            Slot(Counter::AcceptErrors),
            "rot13d_accept_errors_total",
            Kind::Counter,
            "Times accepting paused on a full fd table.",
        ),
        (
            Slot(Counter::CallbacksInteractive),
            "rot13d_lane_callbacks_total{lane=\"interactive\"}",
            Kind::Counter,
            CALLBACKS_HELP,
        ),
        (Slot(Counter::CallbacksBulk), "rot13d_lane_callbacks_total{lane=\"bulk\"}", Kind::Counter, CALLBACKS_HELP),
        (Slot(Counter::MovesToInteractive), "rot13d_lane_moves_total{lane=\"interactive\"}", Kind::Counter, MOVES_HELP),
        (Slot(Counter::MovesToBulk), "rot13d_lane_moves_total{lane=\"bulk\"}", Kind::Counter, MOVES_HELP),
        (
            Slot(Counter::DelayInteractive),
            "rot13d_dispatch_delay_seconds{lane=\"interactive\"}",
            Kind::Histogram,
            DELAY_HELP,
        ),
        (Slot(Counter::DelayBulk), "rot13d_dispatch_delay_seconds{lane=\"bulk\"}", Kind::Histogram, DELAY_HELP),
        (
            Slot(Counter::ProxyHeadersV1),
            "rot13d_proxy_headers_total{version=\"v1\"}",
            Kind::Counter,
            PROXY_HEADERS_HELP,
        ),
        (
            Slot(Counter::ProxyHeadersV2),
            "rot13d_proxy_headers_total{version=\"v2\"}",
            Kind::Counter,
            PROXY_HEADERS_HELP,
        ),
        (
            Slot(Counter::ProxyLocal),
            "rot13d_proxy_local_headers_total",
            Kind::Counter,
            "PROXY headers without a client address (v2 LOCAL, v1 UNKNOWN): the socket's peer is the client.",
        ),
        (
            Slot(Counter::ProxyRefusedMissing),
            "rot13d_proxy_refused_total{reason=\"missing\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedWrongVersion),
            "rot13d_proxy_refused_total{reason=\"wrong_version\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedMalformed),
            "rot13d_proxy_refused_total{reason=\"malformed\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedTooLong),
            "rot13d_proxy_refused_total{reason=\"too_long\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedUnsupportedFamily),
            "rot13d_proxy_refused_total{reason=\"unsupported_family\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedTruncated),
            "rot13d_proxy_refused_total{reason=\"truncated\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Slot(Counter::ProxyRefusedTimeout),
            "rot13d_proxy_refused_total{reason=\"timeout\"}",
            Kind::Counter,
            PROXY_REFUSED_HELP,
        ),
        (
            Sampled(Sample::Waiting),
            "rot13d_connections_waiting",
            Kind::Gauge,
            "Connections the kernel has set up and no serving process has accepted yet: the accept queues \
             of the rot13 listeners at the scrape (where clients wait while every process is at \
             max_connections; a few in passing otherwise).",
        ),
        (
            Master(Stat::WorkersWanted),
            "rot13d_workers_wanted",
            Kind::Gauge,
            "Serving processes the current generation wants ([server] workers; 1 with workers = 0, the \
             master serving).",
        ),
        (
            Master(Stat::WorkersServing),
            "rot13d_workers_serving",
            Kind::Gauge,
            "Serving processes of the current generation that serve (below rot13d_workers_wanted while one \
             starts, is down or waits in the restart backoff: /healthz answers 503 then).",
        ),
        (
            Master(Stat::WorkersUnresponsive),
            "rot13d_workers_unresponsive",
            Kind::Gauge,
            "Worker processes whose event loop has not answered the master's liveness ping for half of \
             [server] worker_timeout (frozen, stuck or stopped); at the whole timeout each is killed and \
             replaced (rot13d_worker_restarts_total{reason=\"unresponsive\"}).",
        ),
        (Master(Stat::RestartsSignal), "rot13d_worker_restarts_total{reason=\"signal\"}", Kind::Counter, RESTARTS_HELP),
        (Master(Stat::RestartsError), "rot13d_worker_restarts_total{reason=\"error\"}", Kind::Counter, RESTARTS_HELP),
        (Master(Stat::RestartsExit), "rot13d_worker_restarts_total{reason=\"exit\"}", Kind::Counter, RESTARTS_HELP),
        (
            Master(Stat::RestartsUnresponsive),
            "rot13d_worker_restarts_total{reason=\"unresponsive\"}",
            Kind::Counter,
            RESTARTS_HELP,
        ),
        (Master(Stat::ReloadsOk), "rot13d_reloads_total{result=\"ok\"}", Kind::Counter, RELOADS_HELP),
        (Master(Stat::ReloadsInvalid), "rot13d_reloads_total{result=\"invalid\"}", Kind::Counter, RELOADS_HELP),
        (Master(Stat::ReloadsFailed), "rot13d_reloads_total{result=\"failed\"}", Kind::Counter, RELOADS_HELP),
        (Master(Stat::ReloadsTimeout), "rot13d_reloads_total{result=\"timeout\"}", Kind::Counter, RELOADS_HELP),
        (Master(Stat::ReloadsSuperseded), "rot13d_reloads_total{result=\"superseded\"}", Kind::Counter, RELOADS_HELP),
        (
            Master(Stat::ReloadSuccessTime),
            "rot13d_config_last_reload_success_timestamp_seconds",
            Kind::Gauge,
            "When the configuration in use was loaded (the start, or the last reload that applied), seconds \
             since the epoch.",
        ),
        (
            Master(Stat::ReloadSuccessful),
            "rot13d_config_last_reload_successful",
            Kind::Gauge,
            "1 if the last reload applied (or none was asked yet), 0 if it failed.",
        ),
        (
            Sampled(Sample::BuildInfo),
            "rot13d_build_info",
            Kind::Gauge,
            "1, labelled with the version of rot13d and the event backend of the current generation.",
        ),
        (
            Sampled(Sample::CpuSeconds),
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds; one series per live process, labelled role \
             (master, worker) and pid.",
        ),
        (
            Sampled(Sample::ResidentMemory),
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes (pages shared between the processes count in each); one series \
             per live process, labelled role (master, worker) and pid.",
        ),
        (
            Sampled(Sample::OpenFds),
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors; one series per live process, labelled role (master, worker) \
             and pid.",
        ),
        (
            Sampled(Sample::MaxFds),
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors (the soft limit); one series per live process, \
             labelled role (master, worker) and pid.",
        ),
        (
            Sampled(Sample::StartTime),
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds; one series per live process, labelled \
             role (master, worker) and pid.",
        ),
    ]
};
/// The row of each slot series, in [`Counter`] order (a counter without a
/// row fails to compile).
const SLOT_ROWS: [usize; SLOT_SERIES] = {
    let mut rows = [usize::MAX; SLOT_SERIES];
    let mut i = 0;
    while i < DESCRIPTIONS.len() {
        if let Source::Slot(c) = DESCRIPTIONS[i].0 {
            rows[c as usize] = i;
        }
        i += 1;
    }
    rows
};

/// Where each series starts in a slot, in [`Counter`] order.
pub const OFFSETS: [usize; SLOT_SERIES] = {
    let mut o = [0; SLOT_SERIES];
    let (mut c, mut at) = (0, 0);
    while c < SLOT_SERIES {
        o[c] = at;
        at += DESCRIPTIONS[SLOT_ROWS[c]].2.cells();
        c += 1;
    }
    o
};

/// Cells per slot.
pub const COUNTERS: usize = OFFSETS[SLOT_SERIES - 1] + DESCRIPTIONS[SLOT_ROWS[SLOT_SERIES - 1]].2.cells();

/// What a scrape adds to the slots: the master's values, and what was
/// sampled from the system for it.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// The master's values.
    pub stats: Stats,
    /// The current generation's event backend.
    pub backend: &'static str,
    /// Connections in the accept queues of the rot13 listeners (`None`: could
    /// not be read).
    pub waiting: Option<u64>,
    /// Every live process of the daemon, the master first.
    pub processes: Vec<ProcessSample>,
}

/// One process at a scrape; a value that could not be read is `None` and
/// left out of the exposition (Prometheus' client guidelines prefer no
/// sample to a bogus one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// `master` or `worker`.
    pub role: &'static str,
    /// Its pid.
    pub pid: i32,
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft RLIMIT_NOFILE.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the epoch.
    pub start_time: Option<f64>,
}

impl Scrape {
    /// The samples of `s`: (labels, value) pairs.
    fn samples(&self, s: Sample) -> Vec<(String, f64)> {
        let per_process = |f: &dyn Fn(&ProcessSample) -> Option<f64>| {
            self.processes
                .iter()
                .filter_map(|p| f(p).map(|v| (format!("role=\"{}\",pid=\"{}\"", p.role, p.pid), v)))
                .collect()
        };
        match s {
            Sample::BuildInfo => {
                vec![(format!("version=\"{}\",backend=\"{}\"", env!("CARGO_PKG_VERSION"), self.backend), 1.0)]
            }
            Sample::Waiting => self.waiting.map(|w| (String::new(), w as f64)).into_iter().collect(),
            Sample::CpuSeconds => per_process(&|p| p.cpu_seconds),
            Sample::ResidentMemory => per_process(&|p| p.resident_bytes.map(|v| v as f64)),
            Sample::OpenFds => per_process(&|p| p.open_fds.map(|v| v as f64)),
            Sample::MaxFds => per_process(&|p| p.max_fds.map(|v| v as f64)),
            Sample::StartTime => per_process(&|p| p.start_time),
        }
    }
}

/// The bucket of a duration of `ns` nanoseconds (`BUCKETS_NS.len()` is
/// `+Inf`).
pub fn bucket(ns: u64) -> usize {
    BUCKETS_NS.partition_point(|&b| b < ns)
}

/// Slots per mapped chunk.
pub const CHUNK: usize = 64;

/// Which slots are taken: the lowest free one is handed out first, and the
/// table grows when none is free. Pure, so that its decisions are tested
/// without memory maps or forks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotTable {
    used: Vec<bool>,
}

impl SlotTable {
    /// Takes the lowest free slot, growing the table when none is.
    pub fn take(&mut self) -> usize {
        match self.used.iter().position(|u| !u) {
            Some(i) => {
                self.used[i] = true;
                i
            }
            None => {
                self.used.push(true);
                self.used.len() - 1
            }
        }
    }

    /// Frees slot `i` (its worker was reaped).
    pub fn give_back(&mut self, i: usize) {
        if let Some(u) = self.used.get_mut(i) {
            *u = false;
        }
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }

    /// Slots ever needed at once (the table's size).
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no slot was ever taken.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// Every slot's counters, in chunks of shared memory.
#[derive(Debug)]
pub struct Metrics {
    chunks: RefCell<Vec<Rc<SharedCounters>>>,
    table: RefCell<SlotTable>,
}

/// One serving process's counters: its own slot, written only by it.
#[derive(Clone, Debug)]
pub struct Slot {
    chunk: Rc<SharedCounters>,
    base: usize,
    /// The slot's number (to give it back).
    pub id: usize,
}

impl Slot {
    fn cell(&self, c: Counter) -> &AtomicU64 {
        self.cell_at(c, 0)
    }

    fn cell_at(&self, c: Counter, i: usize) -> &AtomicU64 {
        &self.chunk.slots()[self.base + OFFSETS[c as usize] + i]
    }

    /// Adds `n` to counter `c`. The slot's process is its one writer: a
    /// load and a store, no locked instruction.
    pub fn add(&self, c: Counter, n: u64) {
        bump(self.cell(c), n);
    }

    /// Counts a duration of `ns` nanoseconds in histogram `c`.
    pub fn observe(&self, c: Counter, ns: u64) {
        bump(self.cell_at(c, bucket(ns)), 1);
        bump(self.cell_at(c, BUCKETS_NS.len() + 1), ns);
    }

    /// Sets gauge `c` to `v`.
    pub fn set(&self, c: Counter, v: u64) {
        self.cell(c).store(v, Ordering::Relaxed);
    }

    /// Reads counter `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.cell(c).load(Ordering::Relaxed)
    }
}

/// `cell += n` by its one writer (readers in other processes see either
/// value).
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Metrics {
    /// Maps the first chunk.
    pub fn new() -> io::Result<Metrics> {
        let m = Metrics { chunks: RefCell::new(Vec::new()), table: RefCell::new(SlotTable::default()) };
        m.map_chunk()?;
        Ok(m)
    }

    fn map_chunk(&self) -> io::Result<()> {
        let chunk = SharedCounters::new(CHUNK * COUNTERS)?;
        self.chunks.borrow_mut().push(Rc::new(chunk));
        Ok(())
    }

    /// A free slot for a worker about to start (call before its fork),
    /// mapping another chunk when every slot is taken.
    pub fn acquire(&self) -> io::Result<Slot> {
        let id = self.table.borrow_mut().take();
        while self.chunks.borrow().len() * CHUNK <= id {
            if let Err(e) = self.map_chunk() {
                self.table.borrow_mut().give_back(id);
                return Err(e);
            }
        }
        let chunk = self.chunks.borrow()[id / CHUNK].clone();
        let slot = Slot { chunk, base: (id % CHUNK) * COUNTERS, id };
        slot.set(Counter::Open, 0);
        Ok(slot)
    }

    /// Gives a reaped worker's slot back: its gauge goes to zero, its
    /// counters stay in the sums.
    pub fn release(&self, slot: &Slot) {
        slot.set(Counter::Open, 0);
        self.table.borrow_mut().give_back(slot.id);
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.table.borrow().in_use()
    }

    /// The sum over every slot (of a histogram: its count).
    pub fn total(&self, c: Counter) -> u64 {
        match DESCRIPTIONS[SLOT_ROWS[c as usize]].2 {
            Kind::Histogram => (0..=BUCKETS_NS.len()).map(|i| self.cell_total(c, i)).fold(0, u64::wrapping_add),
            Kind::Counter | Kind::Gauge => self.cell_total(c, 0),
        }
    }

    /// Cell `i` of series `c`, summed over every slot.
    fn cell_total(&self, c: Counter, i: usize) -> u64 {
        let chunks = self.chunks.borrow();
        let cells = chunks.iter().flat_map(|ch| ch.slots().chunks_exact(COUNTERS));
        cells.map(|s| s[OFFSETS[c as usize] + i].load(Ordering::Relaxed)).fold(0u64, u64::wrapping_add)
    }

    /// The Prometheus text exposition: the sums of the slots, the master's
    /// values and the samples of `scrape`.
    pub fn render(&self, scrape: &Scrape) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut family = "";
        for (source, series, kind, help) in DESCRIPTIONS {
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            if name != family {
                family = name;
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {}\n", kind.as_str());
            }
            let with = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
                (true, true) => String::new(),
                (true, false) => format!("{{{extra}}}"),
                (false, true) => format!("{{{labels}}}"),
                (false, false) => format!("{{{labels},{extra}}}"),
            };
            let c = match source {
                Source::Slot(c) => c,
                Source::Master(s) => {
                    let _ = writeln!(out, "{series} {}", scrape.stats.get(s));
                    continue;
                }
                Source::Sampled(s) => {
                    for (extra, v) in scrape.samples(s) {
                        let _ = writeln!(out, "{name}{} {v}", with(&extra));
                    }
                    continue;
                }
            };
            if kind != Kind::Histogram {
                let _ = writeln!(out, "{series} {}", self.total(c));
                continue;
            }
            let mut cumulative = 0u64;
            for (i, le) in BUCKETS_NS.iter().enumerate() {
                cumulative = cumulative.wrapping_add(self.cell_total(c, i));
                let le = format!("le=\"{}\"", *le as f64 / 1e9);
                let _ = writeln!(out, "{name}_bucket{} {cumulative}", with(&le));
            }
            cumulative = cumulative.wrapping_add(self.cell_total(c, BUCKETS_NS.len()));
            let _ = writeln!(out, "{name}_bucket{} {cumulative}", with("le=\"+Inf\""));
            let sum = self.cell_total(c, BUCKETS_NS.len() + 1) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{} {sum}", with(""));
            let _ = writeln!(out, "{name}_count{} {cumulative}", with(""));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_in_counter_and_stat_order() {
        let slots: Vec<usize> = DESCRIPTIONS
            .iter()
            .filter_map(|d| if let Source::Slot(c) = d.0 { Some(c as usize) } else { None })
            .collect();
        assert_eq!(slots, (0..SLOT_SERIES).collect::<Vec<_>>());
        let stats: Vec<usize> = DESCRIPTIONS
            .iter()
            .filter_map(|d| if let Source::Master(s) = d.0 { Some(s as usize) } else { None })
            .collect();
        assert_eq!(stats, (0..STATS).collect::<Vec<_>>());
    }

    #[test]
    fn a_family_is_one_run_of_rows_with_one_kind_and_help() {
        let family = |series: &'static str| series.split('{').next().unwrap_or("");
        for (i, (_, series, kind, help)) in DESCRIPTIONS.iter().enumerate() {
            let name = family(series);
            let rows: Vec<usize> = (0..DESCRIPTIONS.len()).filter(|j| family(DESCRIPTIONS[*j].1) == name).collect();
            assert_eq!(rows, (rows[0]..rows[0] + rows.len()).collect::<Vec<_>>(), "{name}: rows apart");
            for j in rows {
                assert_eq!((DESCRIPTIONS[j].2, DESCRIPTIONS[j].3), (*kind, *help), "{name}");
                assert!(j == i || DESCRIPTIONS[j].1 != *series, "{series}: two rows alike");
            }
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}: _total is for counters only");
        }
    }

    #[test]
    fn labels_are_the_names_of_their_enums() {
        for r in ExitReason::ALL {
            let series = DESCRIPTIONS.iter().find(|d| d.0 == Source::Master(Stat::restart(r))).map(|d| d.1);
            assert_eq!(series, Some(format!("rot13d_worker_restarts_total{{reason=\"{}\"}}", r.as_str()).as_str()));
        }
        for r in ReloadResult::ALL {
            let series = DESCRIPTIONS.iter().find(|d| d.0 == Source::Master(Stat::reload(r))).map(|d| d.1);
            assert_eq!(series, Some(format!("rot13d_reloads_total{{result=\"{}\"}}", r.as_str()).as_str()));
        }
    }

    #[test]
    fn proxy_series_are_labelled_with_the_names_of_the_logs() {
        let series = |c| DESCRIPTIONS.iter().find(|d| d.0 == Source::Slot(c)).map(|d| (d.1, d.2));
        for why in Refusal::ALL {
            let want = format!("rot13d_proxy_refused_total{{reason=\"{why}\"}}");
            assert_eq!(series(Counter::proxy_refused(why)), Some((want.as_str(), Kind::Counter)));
        }
        for v in [Version::V1, Version::V2] {
            let want = format!("rot13d_proxy_headers_total{{version=\"{}\"}}", v.as_str());
            assert_eq!(series(Counter::proxy_header(v)), Some((want.as_str(), Kind::Counter)));
        }
        let m = Metrics::new().expect("maps");
        let s = m.acquire().expect("slot");
        s.add(Counter::proxy_refused(Refusal::TooLong), 2);
        let text = m.render(&Scrape::default());
        assert_eq!(text.matches("# TYPE rot13d_proxy_refused_total counter\n").count(), 1, "{text}");
        assert!(text.contains("rot13d_proxy_refused_total{reason=\"too_long\"} 2\n"), "{text}");
        assert_eq!(text.matches("rot13d_proxy_refused_total{").count(), Refusal::ALL.len(), "{text}");
    }

    #[test]
    fn reload_results_move_the_counters_and_the_timestamp() {
        let mut s = Stats::default();
        s.reloaded(ReloadResult::Ok, 100.5);
        assert_eq!(
            (s.get(Stat::ReloadsOk), s.get(Stat::ReloadSuccessTime), s.get(Stat::ReloadSuccessful)),
            (1.0, 100.5, 1.0)
        );
        s.reloaded(ReloadResult::Invalid, 200.0);
        assert_eq!(
            (s.get(Stat::ReloadsInvalid), s.get(Stat::ReloadSuccessTime), s.get(Stat::ReloadSuccessful)),
            (1.0, 100.5, 0.0)
        );
        s.reloaded(ReloadResult::Superseded, 300.0);
        assert_eq!(
            (s.get(Stat::ReloadsSuperseded), s.get(Stat::ReloadSuccessful)),
            (1.0, 0.0),
            "the newer one decides"
        );
        s.reloaded(ReloadResult::Ok, 400.0);
        assert_eq!(
            (s.get(Stat::ReloadsOk), s.get(Stat::ReloadSuccessTime), s.get(Stat::ReloadSuccessful)),
            (2.0, 400.0, 1.0)
        );
    }

    #[test]
    fn the_master_values_and_the_samples_are_rendered() {
        let m = Metrics::new().expect("maps");
        let mut stats = Stats::default();
        stats.set(Stat::WorkersWanted, 2.0);
        stats.add(Stat::restart(ExitReason::Signal), 1.0);
        stats.set(Stat::ReloadSuccessTime, 1_700_000_000.25);
        let worker = ProcessSample {
            role: "worker",
            pid: 42,
            cpu_seconds: Some(0.5),
            resident_bytes: Some(4096),
            open_fds: None,
            max_fds: Some(1024),
            start_time: Some(1_700_000_001.0),
        };
        let scrape = Scrape { stats, backend: "poll", waiting: Some(3), processes: vec![worker] };
        let text = m.render(&scrape);
        for want in [
            "rot13d_workers_wanted 2\n",
            "rot13d_workers_serving 0\n",
            "rot13d_worker_restarts_total{reason=\"signal\"} 1\n",
            "rot13d_worker_restarts_total{reason=\"exit\"} 0\n",
            "rot13d_config_last_reload_success_timestamp_seconds 1700000000.25\n",
            "rot13d_connections_waiting 3\n",
            "process_cpu_seconds_total{role=\"worker\",pid=\"42\"} 0.5\n",
            "process_resident_memory_bytes{role=\"worker\",pid=\"42\"} 4096\n",
            "process_max_fds{role=\"worker\",pid=\"42\"} 1024\n",
            "# TYPE process_cpu_seconds_total counter\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        let build = format!("rot13d_build_info{{version=\"{}\",backend=\"poll\"}} 1\n", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&build), "{text}");
        assert!(!text.contains("process_open_fds{"), "a value not read is left out:\n{text}");
        assert!(text.contains("# TYPE process_open_fds gauge\n"), "{text}");
        let unread = m.render(&Scrape { waiting: None, ..scrape });
        assert!(!unread.contains("\nrot13d_connections_waiting "), "{unread}");
    }

    #[test]
    fn slot_table_hands_out_distinct_slots_and_reuses_freed_ones() {
        let mut t = SlotTable::default();
        let a: Vec<usize> = (0..5).map(|_| t.take()).collect();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        t.give_back(1);
        t.give_back(3);
        assert_eq!((t.take(), t.take(), t.take()), (1, 3, 5));
        assert_eq!((t.in_use(), t.len()), (6, 6));
        t.give_back(99);
        assert_eq!(t.in_use(), 6);
    }

    #[test]
    fn more_workers_than_a_chunk_get_their_own_slots() {
        let m = Metrics::new().expect("maps");
        let slots: Vec<Slot> = (0..CHUNK * 2 + 3).map(|_| m.acquire().expect("slot")).collect();
        for (i, s) in slots.iter().enumerate() {
            s.set(Counter::Open, 1);
            s.add(Counter::Lines, i as u64);
        }
        assert_eq!(m.total(Counter::Open), slots.len() as u64, "no two share a slot");
        let lines: u64 = (0..slots.len() as u64).sum();
        assert_eq!(m.total(Counter::Lines), lines);
        m.release(&slots[7]);
        assert_eq!(m.total(Counter::Open), slots.len() as u64 - 1, "a reaped worker's gauge goes");
        assert_eq!(m.total(Counter::Lines), lines, "its counters stay");
        let again = m.acquire().expect("slot");
        assert_eq!((again.id, again.get(Counter::Open)), (7, 0));
    }

    #[test]
    fn sums_and_renders() {
        let m = Metrics::new().expect("maps");
        let (a, b) = (m.acquire().expect("slot"), m.acquire().expect("slot"));
        a.add(Counter::Lines, 5);
        b.add(Counter::Lines, 7);
        b.set(Counter::Open, 1);
        let text = m.render(&Scrape::default());
        assert!(text.contains("rot13d_lines_total 12\n"));
        assert!(text.contains("# TYPE rot13d_connections_open gauge\nrot13d_connections_open 1\n"));
    }

    #[test]
    fn labeled_series_share_their_family_and_histograms_are_cumulative() {
        let m = Metrics::new().expect("maps");
        let (a, b) = (m.acquire().expect("slot"), m.acquire().expect("slot"));
        a.add(Counter::MovesToBulk, 2);
        b.add(Counter::MovesToBulk, 1);
        for ns in [500, 1_000, 1_001, 40_000, 2_000_000_000] {
            a.observe(Counter::DelayBulk, ns);
        }
        b.observe(Counter::DelayInteractive, 3_000);
        let text = m.render(&Scrape::default());
        assert_eq!(text.matches("# TYPE rot13d_lane_moves_total counter\n").count(), 1, "{text}");
        assert!(text.contains("rot13d_lane_moves_total{lane=\"bulk\"} 3\n"), "{text}");
        assert!(text.contains("rot13d_lane_moves_total{lane=\"interactive\"} 0\n"), "{text}");
        assert_eq!(text.matches("# TYPE rot13d_dispatch_delay_seconds histogram\n").count(), 1, "{text}");
        let bulk = |le: &str| format!("rot13d_dispatch_delay_seconds_bucket{{lane=\"bulk\",le=\"{le}\"}}");
        assert!(text.contains(&format!("{} 2\n", bulk("0.000001"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", bulk("0.0000015"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", bulk("0.00005"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", bulk("1"))), "{text}");
        assert!(text.contains(&format!("{} 5\n", bulk("+Inf"))), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_count{lane=\"bulk\"} 5\n"), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_sum{lane=\"bulk\"} 2.000042501\n"), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_count{lane=\"interactive\"} 1\n"), "{text}");
        assert_eq!(m.total(Counter::DelayBulk), 5);
        // Buckets: 1 µs .. 1 s, increasing, at most 5/3 apart.
        assert_eq!((BUCKETS_NS[0], BUCKETS_NS[BUCKETS_NS.len() - 1]), (1_000, 1_000_000_000));
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1] && w[1] * 3 <= w[0] * 5), "{BUCKETS_NS:?}");
        assert_eq!((bucket(0), bucket(1_000), bucket(1_001), bucket(u64::MAX)), (0, 0, 1, BUCKETS_NS.len()));
    }

    // Shared across fork: sys::shm's `shared_with_a_forked_child` (a test
    // thread can only fork through the unsafe `fork_unchecked`, which
    // belongs in sys).
}
