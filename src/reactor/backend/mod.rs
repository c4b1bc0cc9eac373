//! The backend interface (libevent's `struct eventop`) and its selection.
//!
//! A backend translates; it never decides policy. The base's evmap has
//! already reduced every event add/del to a per-fd transition, so a backend
//! sees only:
//!
//! - [`kind()`](Backend::kind): which [`Kind`] it is. Its name (the one
//!   string for logs, the CLI, `avoid` and `EVENT_NO<NAME>`), its
//!   [`Features`] and whether it must be rebuilt after `fork()` are facts of
//!   the kind, written once in this file.
//! - [`method()`](Backend::method): libevent's `event_base_get_method`
//!   string, which names a mode too (`epoll (with changelist)`).
//! - [`change(fd, old, new)`](Backend::change): the fd was watched for
//!   `old` and now wants `new` (io bits READ/WRITE/CLOSED, plus ET while
//!   the fd's events are edge-triggered; NONE = not watched). The backend
//!   compares the two to pick add, modify or delete. It may apply the change
//!   at once or keep it until the next `dispatch` (the epoll changelist, a
//!   ring's submission queue). A change that fails at once returns the
//!   error; the backend has then forgotten the fd (the base tells every
//!   event left on it).
//! - [`dispatch(timeout, out)`](Backend::dispatch): apply what was kept,
//!   wait at most `timeout` (None = forever), and push `(fd, what)` pairs to
//!   [`Ready::events`]; never run callbacks. An fd the backend could not
//!   watch (a kept change that failed, an fd found closed) goes to
//!   [`Ready::failed`] with its error, forgotten by the backend: it is that
//!   fd's problem, never the loop's. An interrupted wait is `Ok` with
//!   nothing ready. Only an error of the backend itself is an `Err`.
//! - [`fd_closed(fd)`](Backend::fd_closed): the owner closed `fd`, so the
//!   kernel forgot it (a backend that keeps changes must not skip a re-add).
//! - [`flush()`](Backend::flush): the loop is about to return, or an fd's
//!   interest was emptied outside the loop: apply kept changes that must not
//!   wait for the next dispatch. Only a backend whose registrations hold the
//!   file (io_uring's polls) needs it: its deleted interest must be
//!   cancelled before the caller closes the fd and expects it closed.
//! - [`data_path()`](Backend::data_path): a backend that can read and
//!   send through its own operations (io_uring's receives and sends, not
//!   readiness) offers it as a [`DataPath`]; bufferevents created on the
//!   base then use it (chosen once, at creation). The others have none.
//! - Drop releases the backend's own state (never the user's fds).
//!
//! Selection ([`choose`]) walks [`Kind::PREFERENCE`], skipping a backend
//! that is avoided, lacks a required feature or is disabled by
//! `EVENT_NO<NAME>`, and one that fails to initialise: the next one is
//! tried, as libevent does (`event.c`, `event_base_new_with_config`).
//! `uring` is listed only where io_uring works ([`supported`]); where it is
//! missing or forbidden and nothing else qualifies, the reason is the error
//! ([`BaseError::Unavailable`]).

mod epoll;
mod poll;
mod select;
mod uring;

pub use epoll::EpollBackend;
pub use poll::PollBackend;
pub use select::SelectBackend;
pub use uring::UringBackend;

use super::base::BaseError;
use super::config::{BaseFlags, EventConfig};
use super::event::EventFlags;
use crate::sys::uring::Piece;
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
    const NAMES: [(Features, &'static str); 4] =
        [(Features::ET, "et"), (Features::O1, "o1"), (Features::FDS, "fds"), (Features::EARLY_CLOSE, "early_close")];

    /// Parses a feature name as the CLI and config spell it.
    pub fn from_name(name: &str) -> Option<Features> {
        Features::NAMES.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// `et,o1,early_close` style names, or `-` for none.
    pub fn names(self) -> String {
        let v: Vec<&str> = Features::NAMES.iter().filter(|(f, _)| self.contains(*f)).map(|(_, n)| *n).collect();
        if v.is_empty() { "-".to_string() } else { v.join(",") }
    }
}

/// The backends this build knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// epoll(7).
    Epoll,
    /// poll(2).
    Poll,
    /// select(2) with fd sets sized to the largest fd.
    Select,
    /// io_uring(7) poll requests (IORING_OP_POLL_ADD).
    Uring,
}

impl Kind {
    /// Every backend, fastest first: the order selection tries them in.
    /// uring comes last: it measures faster than the others in no case
    /// that holds for every workload (BENCHMARKS.md, "io_uring backend":
    /// slower than epoll per level-triggered firing, slower than poll with
    /// few fds), so it is never a default, only chosen by name (or where
    /// every other backend is avoided or disabled).
    pub const PREFERENCE: [Kind; 4] = [Kind::Epoll, Kind::Poll, Kind::Select, Kind::Uring];

    /// `epoll`, `uring`, `poll` or `select`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Epoll => "epoll",
            Kind::Poll => "poll",
            Kind::Select => "select",
            Kind::Uring => "uring",
        }
    }

    /// What it can do: libevent 2.1's figures on Linux (epoll: ET, O1 and
    /// EARLY_CLOSE through EPOLLRDHUP; poll: FDS, and EARLY_CLOSE through
    /// POLLRDHUP; select: FDS). uring: ET through multishot polls, O1, FDS
    /// (a poll request takes any file poll(2) takes) and EARLY_CLOSE through
    /// POLLRDHUP.
    pub const fn features(self) -> Features {
        match self {
            Kind::Epoll => Features(Features::ET.0 | Features::O1.0 | Features::EARLY_CLOSE.0),
            Kind::Poll => Features(Features::FDS.0 | Features::EARLY_CLOSE.0),
            Kind::Select => Features::FDS,
            Kind::Uring => Features(Features::ET.0 | Features::O1.0 | Features::FDS.0 | Features::EARLY_CLOSE.0),
        }
    }

    /// Whether its kernel state is shared with a forked child, so that
    /// `reinit()` must build a new one (epoll's instance, io_uring's ring;
    /// poll and select keep theirs in our memory, which fork copies).
    pub const fn need_reinit(self) -> bool {
        matches!(self, Kind::Epoll | Kind::Uring)
    }

    /// Whether it can be used in this process: `Err` says why not
    /// (io_uring missing or forbidden). Probed once per process.
    pub fn available(self) -> Result<(), String> {
        match self {
            Kind::Uring => crate::sys::uring::probe(),
            _ => Ok(()),
        }
    }

    /// The backend called `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::PREFERENCE.into_iter().find(|k| k.name() == name)
    }

    /// The variable that disables it: `EVENT_NOEPOLL`, `EVENT_NOPOLL`,
    /// `EVENT_NOSELECT`, `EVENT_NOURING`.
    pub const fn env_var(self) -> &'static str {
        match self {
            Kind::Epoll => "EVENT_NOEPOLL",
            Kind::Poll => "EVENT_NOPOLL",
            Kind::Select => "EVENT_NOSELECT",
            Kind::Uring => "EVENT_NOURING",
        }
    }

    /// Whether the environment disables it: its variable set to any value,
    /// even empty.
    pub fn disabled_by_env(self) -> bool {
        std::env::var_os(self.env_var()).is_some()
    }

    /// Its static facts.
    pub const fn info(self) -> BackendInfo {
        BackendInfo { kind: self, name: self.name(), features: self.features() }
    }

    /// A fresh backend of this kind, sized for about `capacity` fds, in the
    /// modes `flags` ask for (EPOLL_USE_CHANGELIST, PRECISE_TIMER).
    pub fn create(self, capacity: usize, flags: BaseFlags) -> io::Result<Box<dyn Backend>> {
        let precise = flags.contains(BaseFlags::PRECISE_TIMER);
        Ok(match self {
            Kind::Epoll => {
                Box::new(EpollBackend::new(capacity, flags.contains(BaseFlags::EPOLL_USE_CHANGELIST), precise)?)
            }
            Kind::Poll => Box::new(PollBackend::new(capacity, precise)),
            Kind::Select => Box::new(SelectBackend::new()),
            Kind::Uring => Box::new(UringBackend::new(capacity)?),
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one wait found (filled by [`Backend::dispatch`]).
#[derive(Debug, Default)]
pub struct Ready {
    /// Ready fds and what for (READ, WRITE, CLOSED).
    pub events: Vec<(RawFd, EventFlags)>,
    /// Fds the backend could not watch, with the error; it has forgotten
    /// them.
    pub failed: Vec<(RawFd, io::Error)>,
}

impl Ready {
    /// Empties both lists, keeping their memory.
    pub fn clear(&mut self) {
        self.events.clear();
        self.failed.clear();
    }
}

/// One event-notification mechanism (see the module documentation).
pub trait Backend {
    /// Which backend it is.
    fn kind(&self) -> Kind;
    /// libevent's method name: the kind's name, or the name of its mode
    /// (`epoll (with changelist)`).
    fn method(&self) -> &'static str {
        self.kind().name()
    }
    /// `fd`, watched for `old`, now wants `new`.
    fn change(&mut self, fd: RawFd, old: EventFlags, new: EventFlags) -> io::Result<()>;
    /// Applies kept changes, waits, reports ready and failed fds.
    fn dispatch(&mut self, timeout: Option<Duration>, out: &mut Ready) -> io::Result<()>;
    /// `fd` was closed: the kernel forgot it. Only a backend that keeps
    /// changes (the epoll changelist) needs to know, so that a reused fd
    /// number is registered afresh.
    fn fd_closed(&mut self, _fd: RawFd) {}
    /// Applies kept changes now (no wait): the loop returns, or interest
    /// was deleted outside it. Only a backend whose registrations keep the
    /// file open (io_uring) needs to.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The completion data path, where the backend has one (io_uring).
    fn data_path(&mut self) -> Option<&mut dyn DataPath> {
        None
    }
}

/// Reads and sends as operations of the backend (io_uring's multishot
/// receives into provided buffers, and sends), for a bufferevent's socket.
///
/// An attached fd's READ interest keeps a receive armed (no buffer is held
/// while nothing arrives) instead of a poll, and its WRITE interest waits
/// for the completion of its send instead of writability. What completes
/// is kept per fd until taken ("mail") and reported as readiness: READ
/// when received bytes, EOF or an error wait, WRITE when a send
/// completed. Memory lent to the kernel (a send's pieces, the receive
/// buffers) is owned by `sys::uring` until its completion.
pub trait DataPath {
    /// Puts `fd`, a connected stream socket with no event watching it
    /// yet, on the data path until [`Backend::fd_closed`]. Whether it is.
    fn attach(&mut self, fd: RawFd) -> bool;
    /// Hands up to `max` received bytes of `fd` to `into`, in order, as
    /// pieces; how many. `Ok(0)`: end of file; `WouldBlock`: nothing yet;
    /// an error ends the receiving (told once, after the bytes before it).
    fn take_received(&mut self, fd: RawFd, max: usize, into: &mut dyn FnMut(Piece)) -> io::Result<usize>;
    /// Starts a send of `pieces` on `fd` (one at a time per fd), submitted
    /// with the next enter: non-blocking, or with `wait` once the socket
    /// was found full. Refused (the pieces back): one is in flight, or the
    /// ring cannot take it.
    fn send(&mut self, fd: RawFd, pieces: Vec<Piece>, wait: bool) -> Result<(), (io::Error, Vec<Piece>)>;
    /// Submits what is queued (sends) without waiting, and collects what
    /// completed (a non-blocking send completes in the submit): the loop
    /// is not running, so its next enter may be far. Whether it did.
    fn submit(&mut self) -> bool;
    /// The completion of `fd`'s send, once it came: the result (bytes sent,
    /// or a negative errno) and the pieces, given back.
    fn take_sent(&mut self, fd: RawFd) -> Option<(i32, Vec<Piece>)>;
    /// A block the caller is done with (a sent piece's): reused as a
    /// receive buffer where it fits.
    fn recycle(&mut self, block: Vec<u8>);
    /// After `fork()`, in the child: moves every attached fd and what it
    /// had received or had in flight (given back unsent, as a send's
    /// EAGAIN) to `to`, the child's new backend.
    fn move_to(&mut self, to: &mut dyn DataPath);
    /// Takes over an fd of another data path (see [`move_to`](Self::move_to)):
    /// its received bytes, the end that followed them, a send's completion.
    fn adopt(&mut self, fd: RawFd, received: Vec<Piece>, end: i32, sent: Option<(i32, Vec<Piece>)>);
}

/// A backend that this build knows, with its static facts.
#[derive(Clone, Copy, Debug)]
pub struct BackendInfo {
    /// Which one.
    pub kind: Kind,
    /// Its name.
    pub name: &'static str,
    /// Its features.
    pub features: Features,
}

/// The supported backends, fastest first (libevent's
/// `event_get_supported_methods`): those this process can use (`uring` only
/// where io_uring works, see [`Kind::available`]).
pub fn supported() -> Vec<BackendInfo> {
    Kind::PREFERENCE.iter().filter(|k| k.available().is_ok()).map(|k| k.info()).collect()
}

/// Builds the backend `cfg` asks for: the first of [`Kind::PREFERENCE`]
/// that is not avoided, has every required feature, is not disabled by the
/// environment (with `flags` lacking IGNORE_ENV) and initialises. `flags`
/// are the base's flags in force (the config's and the environment's).
pub fn choose(cfg: &EventConfig, flags: BaseFlags, capacity: usize) -> Result<Box<dyn Backend>, BaseError> {
    let use_env = !flags.contains(BaseFlags::IGNORE_ENV);
    let mut env_off = Vec::new();
    let mut failed = None;
    for kind in Kind::PREFERENCE {
        if cfg.avoids(kind) || !kind.features().contains(cfg.require) {
            continue;
        }
        if use_env && kind.disabled_by_env() {
            env_off.push(kind.name());
            continue;
        }
        match kind.create(capacity, flags) {
            Ok(b) => return Ok(b),
            Err(e) => {
                tracing::debug!(target: "rot13d::reactor", backend = %kind, error = %e, "backend failed to initialise; trying the next");
                failed = Some((kind, e));
            }
        }
    }
    if let Some((kind, e)) = failed {
        // Missing or forbidden (io_uring): a fact of the host, said as one.
        if e.kind() == io::ErrorKind::Unsupported {
            return Err(BaseError::Unavailable { backend: kind.name(), reason: e.to_string() });
        }
        return Err(BaseError::Io(e));
    }
    Err(BaseError::NoBackend {
        required: cfg.require.names(),
        avoided: cfg.avoided_names(),
        env: if env_off.is_empty() { "-".into() } else { env_off.join(",") },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_match_libevent() {
        for k in Kind::PREFERENCE {
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert_eq!(k.env_var(), format!("EVENT_NO{}", k.name().to_ascii_uppercase()));
        }
        assert_eq!(Kind::from_name("kqueue"), None);
        // event_base_get_features of libevent 2.1.12 on Linux, per method.
        assert_eq!(Kind::Epoll.features().0, 0x0b);
        assert_eq!(Kind::Poll.features().0, 0x0c);
        assert_eq!(Kind::Select.features().0, 0x04);
        // libevent has no io_uring backend: ours can do all four.
        assert_eq!(Kind::Uring.features().names(), "et,o1,fds,early_close");
        assert_eq!(Kind::Epoll.features().names(), "et,o1,early_close");
        assert_eq!(Features::from_name("early_close"), Some(Features::EARLY_CLOSE));
        assert_eq!(Features::empty().names(), "-");
    }
}
