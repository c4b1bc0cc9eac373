//! The backend interface (libevent's `struct eventop`) and its selection.
//!
//! A backend translates; it never decides policy. The base's evmap has
//! already reduced every event add/del to a per-fd transition, so a backend
//! sees only:
//!
//! - `name()`: the one string used in logs, the CLI, `avoid` and
//!   `EVENT_NO<NAME>`.
//! - `features()`: what it can do ([`Features`]).
//! - `need_reinit()`: whether its kernel state is shared across `fork()`
//!   (epoll) and must be rebuilt in the child.
//! - `add(fd, old, delta)` / `del(fd, old, delta)`: the fd was watched for
//!   `old` (READ/WRITE/CLOSED, plus ET if edge-triggered) and gains or loses
//!   `delta`. The backend merges them to pick add, modify or delete.
//! - `dispatch(timeout, ready)`: wait at most `timeout` (None = forever) and
//!   push `(fd, what)` pairs; never run callbacks. An interrupted wait is
//!   `Ok` with nothing ready. Sub-millisecond timeouts round up.
//! - Drop releases the backend's own state (never the user's fds).

mod epoll;
mod poll;
mod select;

pub use epoll::EpollBackend;
pub use poll::PollBackend;
pub use select::SelectBackend;

use super::event::EventFlags;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

flag_set! {
    /// What a backend can do (libevent's `EV_FEATURE_*`).
    pub struct Features(u8) {
        /// Edge-triggered events.
        const ET = 0x01;
        /// O(1) add, delete and dispatch of one ready event.
        const O1 = 0x02;
        /// Any kind of fd, not only sockets (files, pipes, ttys).
        const FDS = 0x04;
        /// Detects a peer's close without reading (`EV_CLOSED`).
        const EARLY_CLOSE = 0x08;
    }
}

impl Features {
    /// Parses a feature name as the CLI and config spell it.
    pub fn from_name(name: &str) -> Option<Features> {
        match name {
            "et" => Some(Features::ET),
            "o1" => Some(Features::O1),
            "fds" => Some(Features::FDS),
            "early_close" => Some(Features::EARLY_CLOSE),
            _ => None,
        }
    }
    /// `et,o1,early_close` style names, or `-` for none.
    pub fn names(self) -> String {
        let all = [
            (Features::ET, "et"),
            (Features::O1, "o1"),
            (Features::FDS, "fds"),
            (Features::EARLY_CLOSE, "early_close"),
        ];
        let v: Vec<&str> = all.iter().filter(|(f, _)| self.contains(*f)).map(|(_, n)| *n).collect();
        if v.is_empty() { "-".to_string() } else { v.join(",") }
    }
}

/// One event-notification mechanism.
pub trait Backend {
    /// `epoll`, `poll` or `select`.
    fn name(&self) -> &'static str;
    /// What it supports.
    fn features(&self) -> Features;
    /// Whether its state is shared with a forked child and must be rebuilt.
    fn need_reinit(&self) -> bool;
    /// `fd`, watched for `old`, now also wants `delta`.
    fn add(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()>;
    /// `fd`, watched for `old`, no longer wants `delta`.
    fn del(&mut self, fd: RawFd, old: EventFlags, delta: EventFlags) -> io::Result<()>;
    /// Waits and reports ready fds.
    fn dispatch(&mut self, timeout: Option<Duration>, ready: &mut Vec<(RawFd, EventFlags)>) -> io::Result<()>;
    /// `fd` was closed: the kernel forgot it. Only a backend that defers
    /// changes (the epoll changelist) needs to know, so that a reused fd
    /// number is registered afresh.
    fn fd_closed(&mut self, _fd: RawFd) {}
}

/// A backend that this build knows, with its static facts.
#[derive(Clone, Copy, Debug)]
pub struct BackendInfo {
    /// Its name.
    pub name: &'static str,
    /// Its features.
    pub features: Features,
}

/// The backends in order of preference, fastest first.
pub const PREFERENCE: [BackendInfo; 3] = [
    BackendInfo { name: "epoll", features: Features(0x01 | 0x02 | 0x08) },
    BackendInfo { name: "poll", features: Features(0x04 | 0x08) },
    BackendInfo { name: "select", features: Features(0x04) },
];

/// Whether `name` is a backend this build knows.
pub fn is_known(name: &str) -> bool {
    PREFERENCE.iter().any(|b| b.name == name)
}

/// The env variable that disables backend `name` (`EVENT_NOEPOLL`...).
pub fn env_var_for(name: &str) -> String {
    format!("EVENT_NO{}", name.to_ascii_uppercase())
}

/// Whether the environment disables `name`: set to any value, even empty.
pub fn disabled_by_env(name: &str) -> bool {
    std::env::var_os(env_var_for(name)).is_some()
}

/// The supported backends, fastest first (libevent's
/// `event_get_supported_methods`).
pub fn supported() -> Vec<BackendInfo> {
    PREFERENCE.to_vec()
}

/// Builds the backend called `name`.
pub(crate) fn create(name: &str, capacity: usize, changelist: bool) -> io::Result<Box<dyn Backend>> {
    Ok(match name {
        "epoll" => Box::new(EpollBackend::new(capacity, changelist)?),
        "poll" => Box::new(PollBackend::new(capacity)),
        "select" => Box::new(SelectBackend::new()),
        _ => return Err(io::Error::new(io::ErrorKind::NotFound, format!("unknown backend {name}"))),
    })
}

/// Rounds a timeout up to whole milliseconds for `epoll_wait`/`poll`, so a
/// sub-ms timer never becomes a zero-timeout busy loop (mio `epoll.rs`).
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}

/// A cheap xorshift for the "scan from a random start" fairness of select
/// and poll (libevent `select.c`).
pub(crate) fn next_random(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}
