//! Behavioural tests of the reactor, run against every backend.
//!
//! `rtest!(name, |be| { ... })` expands the body into one module `name` with
//! a test per backend: `name::epoll`, `name::epoll_changelist`, `name::poll`,
//! `name::select` and `name::uring` (the ripgrep `rgtest!` idea); a uring
//! test skips, saying why on stderr, where io_uring is missing or
//! forbidden. A variant list narrows it
//! where a feature only exists on some backends:
//! `rtest!(name, [epoll, epoll_changelist], |be| { ... })`; `rtest!(name,
//! +et, |be| { ... })` adds `name::epoll_et` and `name::uring_et`, where
//! the io flags the body asks for through `be.io(..)` are edge-triggered.
//!
//! Timing assertions use the elapsed time as a lower bound and a generous
//! upper bound only (the machine is shared). Tests that touch process-wide
//! state (signal dispositions, fork) take [`process_lock`] so they also hold
//! under `cargo test`'s threads; nextest runs each test in its own process.

use rot13d::reactor::{
    BaseError, BaseFlags, EventBase, EventConfig, EventFlags, EventId, Features, LoopExit, LoopFlags,
};
use rot13d::sys;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One backend configuration of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    EpollChangelist,
    /// epoll with every io event of the test edge-triggered (`be.io(..)`).
    EpollEt,
    Poll,
    Select,
    Uring,
    /// uring with every io event of the test edge-triggered.
    UringEt,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll | Backend::EpollChangelist | Backend::EpollEt => "epoll",
            Backend::Poll => "poll",
            Backend::Select => "select",
            Backend::Uring | Backend::UringEt => "uring",
        }
    }

    /// Whether this process can use the backend; where it cannot (io_uring
    /// missing or forbidden) the test is skipped, visibly.
    pub fn available(self) -> bool {
        crate::util::backend_usable(self.name())
    }

    /// A config that can only pick this backend, environment ignored.
    pub fn config(self) -> EventConfig {
        let mut cfg = EventConfig::new();
        cfg.set_flag(BaseFlags::IGNORE_ENV);
        for other in ["epoll", "poll", "select", "uring"] {
            if other != self.name() {
                cfg.avoid(other);
            }
        }
        if self == Backend::EpollChangelist {
            cfg.set_flag(BaseFlags::EPOLL_USE_CHANGELIST);
        }
        cfg
    }

    pub fn base_with(self, cfg: &EventConfig) -> io::Result<EventBase> {
        let b = EventBase::with_config(cfg)?;
        assert_eq!(b.backend_name(), self.name());
        assert_eq!(b.uses_changelist(), self == Backend::EpollChangelist);
        Ok(b)
    }

    pub fn base(self) -> io::Result<EventBase> {
        self.base_with(&self.config())
    }

    /// The io flags a test asks for, edge-triggered in the `epoll_et` run.
    pub fn io(self, f: EventFlags) -> EventFlags {
        if matches!(self, Backend::EpollEt | Backend::UringEt) { f | EventFlags::ET } else { f }
    }
}

macro_rules! rtest {
    (@one $variant:ident, $be:expr) => {
        #[test]
        fn $variant() -> ::std::io::Result<()> {
            if !$be.available() {
                return Ok(());
            }
            body($be)
        }
    };
    (@variant epoll) => { rtest!(@one epoll, Backend::Epoll); };
    (@variant epoll_changelist) => { rtest!(@one epoll_changelist, Backend::EpollChangelist); };
    (@variant epoll_et) => { rtest!(@one epoll_et, Backend::EpollEt); };
    (@variant poll) => { rtest!(@one poll, Backend::Poll); };
    (@variant select) => { rtest!(@one select, Backend::Select); };
    (@variant uring) => { rtest!(@one uring, Backend::Uring); };
    (@variant uring_et) => { rtest!(@one uring_et, Backend::UringEt); };
    ($name:ident, [$($variant:ident),+], |$be:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_variables)]
            fn body($be: Backend) -> ::std::io::Result<()> $body
            $( rtest!(@variant $variant); )+
        }
    };
    ($name:ident, |$be:ident| $body:block) => {
        rtest!($name, [epoll, epoll_changelist, poll, select, uring], |$be| $body);
    };
    // Tests whose io events work edge-triggered too (they read everything
    // on each wake-up): also run as `name::epoll_et`.
    ($name:ident, +et, |$be:ident| $body:block) => {
        rtest!($name, [epoll, epoll_changelist, epoll_et, poll, select, uring, uring_et], |$be| $body);
    };
}
// Reused by the other test modules (`use crate::reactor::rtest;`).
pub(crate) use rtest;

// ----- helpers ---------------------------------------------------------------

/// Serialises tests that change process-wide state (signal handlers, fork).
pub fn process_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::socketpair()
}

pub fn put(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    assert_eq!(sys::write(fd.as_raw_fd(), bytes)?, bytes.len());
    Ok(())
}

/// Reads what is there (non-blocking fds): `None` on WouldBlock.
pub fn take(fd: RawFd) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    match sys::read(fd, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("read: {e}"),
    }
}

/// A shared call log.
#[derive(Clone, Default)]
pub struct Log(Rc<RefCell<Vec<(String, EventFlags)>>>);

impl Log {
    pub fn push(&self, tag: &str, res: EventFlags) {
        self.0.borrow_mut().push((tag.to_string(), res));
    }
    pub fn tags(&self) -> Vec<String> {
        self.0.borrow().iter().map(|(t, _)| t.clone()).collect()
    }
    pub fn res(&self) -> Vec<EventFlags> {
        self.0.borrow().iter().map(|(_, r)| *r).collect()
    }
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    /// A callback that records `tag`.
    pub fn cb(&self, tag: &str) -> impl FnMut(&mut EventBase, EventId, EventFlags) + 'static {
        let log = self.clone();
        let tag = tag.to_string();
        move |_, _, res| log.push(&tag, res)
    }
}

pub fn counter() -> Rc<Cell<usize>> {
    Rc::new(Cell::new(0))
}

/// A one-shot timer that fails the test if the loop is still running after
/// `secs` (instead of hanging until the harness kills it).
pub fn watchdog(b: &mut EventBase, secs: u64) -> io::Result<EventId> {
    let id = b.new_timer(move |_, _, _| panic!("watchdog: the loop ran for {secs}s"));
    b.add(id, Some(Duration::from_secs(secs)))?;
    Ok(id)
}

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Elapsed time on the clock a base reads: CLOCK_MONOTONIC_COARSE unless
/// PRECISE_TIMER (libevent's rule). Deadlines are taken on that clock, so
/// measured on it a timer never fires early; measured with `Instant` a
/// coarse deadline can come due a tick early, or more just after an idle
/// spell, when the coarse clock lags further. Start it before the adds it
/// times.
pub struct Watch {
    clock: sys::Clock,
    t0: Duration,
}

impl Watch {
    pub fn start(b: &EventBase) -> Watch {
        Watch { clock: b.clock(), t0: sys::monotonic(b.clock()) }
    }

    pub fn elapsed(&self) -> Duration {
        sys::monotonic(self.clock).saturating_sub(self.t0)
    }
}

/// Lower bound (the point of the test) and a generous upper bound.
#[track_caller]
fn assert_between(elapsed: Duration, lo: Duration, hi: Duration) {
    assert!(elapsed >= lo, "elapsed {elapsed:?} < lower bound {lo:?}");
    assert!(elapsed < hi, "elapsed {elapsed:?} >= upper bound {hi:?}");
}

// ----- io ----------------------------------------------------------------------

rtest!(read_event_fires_when_readable, +et, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    let l = log.clone();
    let fd = x.as_raw_fd();
    let ev = b.new_event(fd, be.io(EventFlags::READ), move |_, _, res| {
        l.push(&String::from_utf8_lossy(&take(fd).unwrap_or_default()), res);
    });
    b.add(ev, None)?;
    // Not readable yet: a non-blocking turn runs nothing.
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::Done);
    assert_eq!(log.len(), 0);
    put(&y, b"hi")?;
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    assert_eq!(log.tags(), ["hi"]);
    assert_eq!(log.res(), [EventFlags::READ]);
    // One-shot: no longer pending, and the loop has nothing left.
    assert_eq!(b.pending(ev, EventFlags::READ).0, EventFlags::NONE);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(())
});

rtest!(write_event_fires_when_writable, +et, |be| {
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let log = Log::default();
    let ev = b.new_event(x.as_raw_fd(), be.io(EventFlags::WRITE), log.cb("w"));
    b.add(ev, None)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.res(), [EventFlags::WRITE]);
    Ok(())
});

rtest!(persist_stays_pending_oneshot_does_not, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let persist = counter();
    let oneshot = counter();
    let (p, o) = (persist.clone(), oneshot.clone());
    let pe = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, move |_, _, _| p.set(p.get() + 1));
    let oe = b.new_event(x.as_raw_fd(), EventFlags::READ, move |_, _, _| o.set(o.get() + 1));
    b.add(pe, None)?;
    b.add(oe, None)?;
    put(&y, b"x")?;
    // Level-triggered and never read: every turn sees the fd readable.
    for _ in 0..3 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(persist.get(), 3);
    assert_eq!(oneshot.get(), 1);
    assert_eq!(b.pending(pe, EventFlags::READ).0, EventFlags::READ);
    assert_eq!(b.pending(oe, EventFlags::READ).0, EventFlags::NONE);
    // Re-adding the one-shot event makes it fire again.
    b.add(oe, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(oneshot.get(), 2);
    b.del(pe)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(())
});

rtest!(edge_triggered_fires_once_per_edge, [epoll, epoll_changelist, uring], |be| {
    let mut b = be.base()?;
    assert!(b.features().contains(Features::ET));
    let (x, y) = pair()?;
    let n = counter();
    let c = n.clone();
    let ev = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST | EventFlags::ET, move |_, _, res| {
        assert_eq!(res, EventFlags::READ);
        c.set(c.get() + 1)
    });
    b.add(ev, None)?;
    put(&y, b"a")?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(n.get(), 1);
    // Still readable (nothing was read) but no new edge: nothing fires.
    for _ in 0..3 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(n.get(), 1);
    // New data is a new edge.
    put(&y, b"b")?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(n.get(), 2);
    assert_eq!(take(x.as_raw_fd()).as_deref(), Some(&b"ab"[..]));
    Ok(())
});

rtest!(fd_goes_back_to_level_triggered_after_its_et_events, [epoll, epoll_changelist, uring], |be| {
    // Edge-triggered read and write events on a socket are deleted and a
    // level-triggered write event takes the fd (in one batch of changes,
    // for the changelist): it fires on every turn while writable.
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let n = counter();
    let c = n.clone();
    let r = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST | EventFlags::ET, |_, _, _| {});
    let we = b.new_event(x.as_raw_fd(), EventFlags::WRITE | EventFlags::PERSIST | EventFlags::ET, |_, _, _| {});
    let w = b.new_event(x.as_raw_fd(), EventFlags::WRITE | EventFlags::PERSIST, move |_, _, _| c.set(c.get() + 1));
    b.add(r, None)?;
    b.add(we, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    b.del(r)?;
    b.del(we)?;
    b.add(w, None)?;
    for _ in 0..3 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(n.get(), 3, "the write event kept the ET mode of the deleted events");
    Ok(())
});

rtest!(edge_and_level_triggered_events_do_not_mix_on_one_fd, [epoll, epoll_changelist, uring], |be| {
    // epoll has one mode per fd. libevent refuses to mix: an event whose
    // mode differs from the events already on the fd is not added, rather
    // than silently turning the others edge-triggered (or level).
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let n = counter();
    let c = n.clone();
    let w = b.new_event(x.as_raw_fd(), EventFlags::WRITE | EventFlags::PERSIST, move |_, _, _| c.set(c.get() + 1));
    b.add(w, None)?;
    let r = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST | EventFlags::ET, |_, _, _| {});
    let e = b.add(r, None).expect_err("mixed ET and level-triggered on one fd");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(b.pending(r, EventFlags::READ).0, EventFlags::NONE);
    // The level-triggered write event is untouched: it fires every turn.
    for _ in 0..3 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(n.get(), 3);
    // The other way round, and events of one mode are fine together.
    b.del(w)?;
    b.add(r, None)?;
    assert!(b.add(w, None).is_err());
    let w_et = b.new_event(x.as_raw_fd(), EventFlags::WRITE | EventFlags::ET, |_, _, _| {});
    b.add(w_et, None)?;
    // With no event left on the fd, either mode may come.
    b.del(r)?;
    b.del(w_et)?;
    b.add(w, None)?;
    Ok(())
});

rtest!(early_close_is_reported, [epoll, epoll_changelist, poll, uring], |be| {
    let mut b = be.base()?;
    assert!(b.features().contains(Features::EARLY_CLOSE));
    let (x, y) = pair()?;
    let log = Log::default();
    let ev = b.new_event(x.as_raw_fd(), EventFlags::CLOSED, log.cb("closed"));
    b.add(ev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 0, "CLOSED fired while the peer is open");
    drop(y);
    watchdog(&mut b, 10)?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(log.len(), 1);
    assert!(log.res()[0].contains(EventFlags::CLOSED), "{:?}", log.res());
    Ok(())
});

rtest!(peer_close_reads_eof, +et, |be| {
    // Every backend reports a closed peer as readable (read gives 0).
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let fd = x.as_raw_fd();
    let ev = b.new_event(fd, be.io(EventFlags::READ), move |_, _, res| {
        *g.borrow_mut() = Some((res, take(fd)));
    });
    b.add(ev, None)?;
    drop(y);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(*got.borrow(), Some((EventFlags::READ, Some(Vec::new()))));
    Ok(())
});

/// A descriptor known by number (made with `fcntl(F_DUPFD)`, which has no
/// `OwnedFd` form without `unsafe`), closed on drop.
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0);
    }
}

rtest!(fd_closed_and_reopened_within_one_turn, +et, |be| {
    // A server's usual turn: a connection's event is freed and its socket
    // closed, and accept() hands out the same fd number for a new socket,
    // whose event is added before the loop polls again. The new socket must
    // be watched (with the epoll changelist the free and the add meet in one
    // batch of changes; libevent then still issues EPOLL_CTL_MOD, which
    // fails with ENOENT and is retried as ADD).
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let xfd = x.as_raw_fd();
    let old = b.new_event(xfd, be.io(EventFlags::READ | EventFlags::PERSIST), |_, _, _| panic!("old event ran"));
    b.add(old, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    // The socket to come, made before (so that it does not take the
    // number itself).
    let (p, peer) = pair()?;
    b.free(old);
    drop(x);
    // The same number for it, for certain: F_DUPFD hands out the lowest
    // free descriptor at or above xfd, and xfd was just closed (only
    // another thread taking it first could change that, and then the test
    // fails rather than check nothing).
    let fd = Fd(nix::fcntl::fcntl(p.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(xfd))?);
    drop(p);
    assert_eq!(fd.0, xfd, "fd {xfd} was not handed out again");
    let n = counter();
    let c = n.clone();
    let ev = b.new_event(fd.0, be.io(EventFlags::READ | EventFlags::PERSIST), move |_, _, _| {
        assert_eq!(take(xfd).as_deref(), Some(&b"new"[..]));
        c.set(c.get() + 1)
    });
    b.add(ev, None)?;
    put(&peer, b"new")?;
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(Duration::from_secs(2)))?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(n.get(), 1, "the new socket on fd {xfd} is not watched");
    Ok(())
});

rtest!(readd_in_one_turn_reports_unread_data, |be| {
    // A delete and an add of the same event with no dispatch in between
    // (with the changelist they meet in one batch): data that was there
    // before and is still unread is reported again, edge-triggered too (a
    // re-add polls the fd afresh, as a new ADD does).
    let rp = EventFlags::READ | EventFlags::PERSIST;
    let modes = match be {
        Backend::Poll | Backend::Select => vec![rp],
        _ => vec![rp, rp | EventFlags::ET],
    };
    for flags in modes {
        let mut b = be.base()?;
        let (x, y) = pair()?;
        let n = counter();
        let c = n.clone();
        let ev = b.new_event(x.as_raw_fd(), flags, move |_, _, _| c.set(c.get() + 1));
        b.add(ev, None)?;
        put(&y, b"unread")?;
        b.run(LoopFlags::NONBLOCK)?;
        assert_eq!(n.get(), 1);
        b.del(ev)?;
        b.add(ev, None)?;
        b.run(LoopFlags::NONBLOCK)?;
        assert_eq!(n.get(), 2, "unread data not reported after the re-add ({flags:?})");
        assert_eq!(take(x.as_raw_fd()).as_deref(), Some(&b"unread"[..]));
    }
    Ok(())
});

rtest!(same_file_back_on_its_fd_number_within_one_turn, +et, |be| {
    // The fd is closed while another fd keeps the file open, and dup2 puts
    // the same file back on the number before the loop polls again: the
    // re-added event is served (epoll keys its registrations by file and
    // number, and the old one is still there).
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let keep = sys::dup(x.as_fd())?;
    let xfd = x.as_raw_fd();
    let n = counter();
    let c = n.clone();
    let ev = b.new_event(xfd, be.io(EventFlags::READ | EventFlags::PERSIST), move |_, _, _| {
        assert_eq!(take(xfd).as_deref(), Some(&b"back"[..]));
        c.set(c.get() + 1);
    });
    b.add(ev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    b.del(ev)?;
    let xfd = x.into_raw_fd();
    // SAFETY: nothing owns `xfd` any more (x gave it up just above); the
    // result owns it again.
    let _x = unsafe { sys::dup2(keep.as_fd(), xfd)? };
    b.add(ev, None)?;
    put(&y, b"back")?;
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(Duration::from_secs(2)))?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(n.get(), 1, "the event on fd {xfd} is not served");
    Ok(())
});

rtest!(free_all_leaves_a_clean_base, +et, |be| {
    // What a forked worker does with its parent's events: after free_all
    // nothing is pending, and a new event on the same fd is watched.
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let old = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), |_, _, _| panic!("old ran"));
    b.add(old, None)?;
    let t = b.new_timer(|_, _, _| panic!("old timer ran"));
    b.add(t, Some(Duration::from_millis(1)))?;
    b.free_all();
    assert_eq!(b.pending(old, EventFlags::READ | EventFlags::TIMEOUT).0, EventFlags::NONE);
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    let n = counter();
    let c = n.clone();
    let xfd = x.as_raw_fd();
    let ev = b.new_event(xfd, be.io(EventFlags::READ | EventFlags::PERSIST), move |_, _, _| {
        take(xfd);
        c.set(c.get() + 1)
    });
    b.add(ev, None)?;
    put(&y, b"x")?;
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(Duration::from_secs(2)))?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(n.get(), 1, "the new event on the fd is not watched");
    Ok(())
});

// ----- timeouts ----------------------------------------------------------------

rtest!(pure_timeout_waits_at_least_its_duration, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    let t = b.new_timer(log.cb("t"));
    let start = Watch::start(&b);
    b.add(t, Some(ms(50)))?;
    let (what, left) = b.pending(t, EventFlags::TIMEOUT);
    assert_eq!(what, EventFlags::TIMEOUT);
    assert!(left.is_some_and(|l| l <= ms(50)), "{left:?}");
    // The timer is the only event: dispatch returns once it has run.
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(50), Duration::from_secs(5));
    assert_eq!(log.res(), [EventFlags::TIMEOUT]);
    assert_eq!(b.pending(t, EventFlags::TIMEOUT), (EventFlags::NONE, None));
    Ok(())
});

rtest!(timers_fire_in_deadline_order, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    // Deadlines count from the add: start the clock before it, or a
    // preemption between add and start makes the timers look early.
    let start = Watch::start(&b);
    for (tag, d) in [("c", 60), ("a", 20), ("b", 40)] {
        let t = b.new_timer(log.cb(tag));
        b.add(t, Some(ms(d)))?;
    }
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(60), Duration::from_secs(5));
    assert_eq!(log.tags(), ["a", "b", "c"]);
    Ok(())
});

rtest!(huge_timeouts_do_not_overflow, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    let t = b.new_timer(log.cb("never"));
    let (x, _y) = pair()?;
    let io = b.new_event(x.as_raw_fd(), EventFlags::READ, log.cb("io"));
    let soon = b.new_timer(log.cb("soon"));
    for d in [Duration::MAX, Duration::from_secs(u64::MAX / 2), Duration::from_secs(1 << 40)] {
        b.add(t, Some(d))?;
        b.add(io, Some(d))?;
        let (what, left) = b.pending(t, EventFlags::TIMEOUT);
        assert_eq!(what, EventFlags::TIMEOUT);
        assert!(left.is_some_and(|l| l > Duration::from_secs(1 << 30)), "{left:?}");
        b.add(soon, Some(ms(5)))?;
        b.run(LoopFlags::ONCE)?;
        assert_eq!(log.tags().last().map(String::as_str), Some("soon"));
    }
    assert_eq!(log.tags(), ["soon", "soon", "soon"]);
    Ok(())
});

rtest!(time_is_cached_per_turn, |be| {
    // now() is read once per turn; NO_CACHE_TIME reads the clock each time.
    // (The precise clock: the coarse one may tick only every 4 ms.)
    fn stamps(be: Backend, no_cache: bool) -> io::Result<Vec<Duration>> {
        let mut cfg = be.config();
        cfg.set_flag(BaseFlags::PRECISE_TIMER);
        if no_cache {
            cfg.set_flag(BaseFlags::NO_CACHE_TIME);
        }
        let mut b = be.base_with(&cfg)?;
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut ids = Vec::new();
        for refresh in [false, false, true] {
            let s = seen.clone();
            ids.push(b.new_timer(move |b, _, _| {
                if refresh {
                    b.update_cache_time();
                }
                s.borrow_mut().push(b.now());
                let until = Instant::now() + ms(3);
                while Instant::now() < until {}
            }));
        }
        for &id in &ids {
            b.active(id, EventFlags::TIMEOUT);
        }
        b.dispatch()?;
        let v = seen.borrow().clone();
        Ok(v)
    }
    let cached = stamps(be, false)?;
    assert_eq!(cached[0], cached[1], "one reading per turn");
    assert!(cached[2] >= cached[1] + ms(5), "update_cache_time refreshes it: {cached:?}");
    let fresh = stamps(be, true)?;
    assert!(fresh[1] >= fresh[0] + ms(2), "NO_CACHE_TIME: {fresh:?}");
    // Outside a loop the clock is read every time.
    let mut cfg = be.config();
    cfg.set_flag(BaseFlags::PRECISE_TIMER);
    let b = be.base_with(&cfg)?;
    let t0 = b.now();
    let until = Instant::now() + ms(10);
    while Instant::now() < until {}
    assert!(b.now() >= t0 + ms(5));
    Ok(())
});

rtest!(readding_a_timer_replaces_its_timeout, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    let t = b.new_timer(log.cb("t"));
    let start = Watch::start(&b);
    b.add(t, Some(ms(10)))?;
    b.add(t, Some(ms(80)))?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(80), Duration::from_secs(5));
    assert_eq!(log.len(), 1);
    // del cancels the timeout.
    b.add(t, Some(ms(10)))?;
    b.del(t)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.len(), 1);
    Ok(())
});

rtest!(io_event_timeout, +et, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    // Nothing to read: the timeout fires, and a one-shot event is done.
    let ev = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ), log.cb("idle"));
    let start = Watch::start(&b);
    b.add(ev, Some(ms(30)))?;
    assert_eq!(b.pending(ev, EventFlags::READ | EventFlags::TIMEOUT).0, EventFlags::READ | EventFlags::TIMEOUT);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(30), Duration::from_secs(5));
    assert_eq!(log.res(), [EventFlags::TIMEOUT]);
    // Data before the timeout: READ, and the timeout is cancelled.
    b.add(ev, Some(ms(30)))?;
    put(&y, b"z")?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.res(), [EventFlags::TIMEOUT, EventFlags::READ]);
    // A persistent event with a timeout times out again and again.
    take(x.as_raw_fd());
    let n = counter();
    let c = n.clone();
    let pe = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), move |b, id, res| {
        assert_eq!(res, EventFlags::TIMEOUT);
        c.set(c.get() + 1);
        if c.get() == 3 {
            b.del(id).unwrap();
        }
    });
    let start = Watch::start(&b);
    b.add(pe, Some(ms(15)))?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(45), Duration::from_secs(5));
    assert_eq!(n.get(), 3);
    Ok(())
});

rtest!(persistent_timer_repeats, |be| {
    let mut b = be.base()?;
    let n = counter();
    let c = n.clone();
    let stamps = Rc::new(RefCell::new(Vec::new()));
    let s = stamps.clone();
    let t = b.new_event(-1, EventFlags::PERSIST, move |b, id, res| {
        assert_eq!(res, EventFlags::TIMEOUT);
        // The base's time of the turn: the re-arm rule is stated in it.
        s.borrow_mut().push(b.now());
        c.set(c.get() + 1);
        if c.get() == 5 {
            b.del(id).unwrap();
        }
    });
    let start = Watch::start(&b);
    // Outside a loop now() reads the base's clock afresh.
    let t0 = b.now();
    b.add(t, Some(ms(20)))?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(n.get(), 5);
    assert_between(start.elapsed(), ms(100), Duration::from_secs(5));
    // Re-armed from its previous deadline (libevent's persist rule): run k
    // (from 0) comes no earlier than k + 1 intervals after the add, however
    // late the turns before it ran.
    let st = stamps.borrow();
    for (k, t) in st.iter().enumerate() {
        let since = *t - t0;
        assert!(since >= ms(20) * (k as u32 + 1), "run {k} after {since:?}");
    }
    Ok(())
});

rtest!(common_timeouts_fire_and_rearm, |be| {
    let mut b = be.base()?;
    let d = ms(25);
    b.init_common_timeout(d)?;
    assert!(b.is_common_timeout(d));
    assert!(!b.is_common_timeout(ms(26)));
    let order = Rc::new(RefCell::new(Vec::new()));
    let n = 500;
    let start = Watch::start(&b);
    for i in 0..n {
        let o = order.clone();
        let t = b.new_timer(move |b, id, res| {
            assert_eq!(res, EventFlags::TIMEOUT);
            o.borrow_mut().push(i);
            // Second round: re-arm with the same common timeout.
            if o.borrow().len() <= n {
                b.add(id, Some(d)).unwrap();
            }
        });
        b.add(t, Some(d))?;
    }
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(50), Duration::from_secs(10));
    let o = order.borrow();
    assert_eq!(o.len(), 2 * n);
    // FIFO per round: the order they were armed in.
    assert_eq!(o[..n], (0..n).collect::<Vec<_>>()[..]);
    assert_eq!(o[n..], (0..n).collect::<Vec<_>>()[..]);
    Ok(())
});

rtest!(common_and_heap_timeouts_mix, |be| {
    let mut b = be.base()?;
    b.init_common_timeout(ms(40))?;
    let log = Log::default();
    for (tag, d) in [("common40", 40), ("heap20", 20), ("heap60", 60)] {
        let t = b.new_timer(log.cb(tag));
        b.add(t, Some(ms(d)))?;
    }
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.tags(), ["heap20", "common40", "heap60"]);
    Ok(())
});

// ----- signals -----------------------------------------------------------------

rtest!(signal_events, |be| {
    let _g = process_lock();
    let mut b = be.base()?;
    let log = Log::default();
    let s1 = b.new_signal(libc::SIGUSR1, log.cb("usr1"));
    let s2 = b.new_signal(libc::SIGUSR2, log.cb("usr2"));
    b.add(s1, None)?;
    b.add(s2, None)?;
    assert_eq!(b.pending(s1, EventFlags::SIGNAL).0, EventFlags::SIGNAL);
    watchdog(&mut b, 10)?;
    sys::signal::raise(libc::SIGUSR1)?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(log.tags(), ["usr1"]);
    assert_eq!(log.res(), [EventFlags::SIGNAL]);
    // Signal events persist; both signals at once.
    sys::signal::raise(libc::SIGUSR2)?;
    sys::signal::raise(libc::SIGUSR1)?;
    while log.len() < 3 {
        b.run(LoopFlags::ONCE)?;
    }
    let mut t = log.tags();
    t.sort();
    assert_eq!(t, ["usr1", "usr1", "usr2"]);
    b.free(s1);
    b.free(s2);
    Ok(())
});

rtest!(signal_delivered_three_times_runs_three_times, |be| {
    // libevent calls a signal callback once per delivery (ncalls), even
    // when the deliveries arrive before the loop looks.
    let _g = process_lock();
    let mut b = be.base()?;
    let log = Log::default();
    let s1 = b.new_signal(libc::SIGUSR1, log.cb("usr1"));
    b.add(s1, None)?;
    watchdog(&mut b, 10)?;
    for _ in 0..3 {
        sys::signal::raise(libc::SIGUSR1)?;
    }
    while log.len() < 3 {
        b.run(LoopFlags::ONCE)?;
    }
    assert_eq!(log.tags(), ["usr1", "usr1", "usr1"]);
    b.free(s1);
    Ok(())
});

rtest!(signal_event_deleted_and_added_again, |be| {
    let _g = process_lock();
    let mut b = be.base()?;
    let n = counter();
    let c = n.clone();
    let sig = b.new_signal(libc::SIGUSR1, move |_, _, res| {
        assert_eq!(res, EventFlags::SIGNAL);
        c.set(c.get() + 1)
    });
    watchdog(&mut b, 10)?;
    for round in 1..=3 {
        b.add(sig, None)?;
        sys::signal::raise(libc::SIGUSR1)?;
        while n.get() < round {
            b.run(LoopFlags::ONCE)?;
        }
        // Deleted, it stops watching (the old disposition is back).
        b.del(sig)?;
        assert_eq!(b.pending(sig, EventFlags::SIGNAL).0, EventFlags::NONE);
    }
    assert_eq!(n.get(), 3);
    b.free(sig);
    Ok(())
});

rtest!(two_bases_receive_the_same_signal, |be| {
    let _g = process_lock();
    let mut b1 = be.base()?;
    let mut b2 = be.base()?;
    let (n1, n2) = (counter(), counter());
    let (c1, c2) = (n1.clone(), n2.clone());
    let s1 = b1.new_signal(libc::SIGUSR2, move |_, _, _| c1.set(c1.get() + 1));
    let s2 = b2.new_signal(libc::SIGUSR2, move |_, _, _| c2.set(c2.get() + 1));
    b1.add(s1, None)?;
    b2.add(s2, None)?;
    watchdog(&mut b1, 10)?;
    watchdog(&mut b2, 10)?;
    sys::signal::raise(libc::SIGUSR2)?;
    b1.run(LoopFlags::ONCE)?;
    b2.run(LoopFlags::ONCE)?;
    assert_eq!((n1.get(), n2.get()), (1, 1));
    // After one base lets go, the other still gets it.
    b1.free(s1);
    sys::signal::raise(libc::SIGUSR2)?;
    b2.run(LoopFlags::ONCE)?;
    assert_eq!((n1.get(), n2.get()), (1, 2));
    b2.free(s2);
    Ok(())
});

// ----- activation, pending, once -----------------------------------------------

rtest!(manual_activation, |be| {
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let log = Log::default();
    // Never readable, and not even pending: active() still runs it once.
    let ev = b.new_event(x.as_raw_fd(), EventFlags::READ, log.cb("io"));
    b.active(ev, EventFlags::READ);
    b.active(ev, EventFlags::WRITE);
    assert_eq!(b.num_active(), 1);
    assert_eq!(b.pending(ev, EventFlags::READ | EventFlags::WRITE).0, EventFlags::READ | EventFlags::WRITE);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.res(), [EventFlags::READ | EventFlags::WRITE]);
    let t = b.new_timer(log.cb("timer"));
    b.active(t, EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags(), ["io", "timer"]);
    // Deleting an active event takes it off the active queue.
    b.active(t, EventFlags::TIMEOUT);
    b.del(t)?;
    assert_eq!(b.num_active(), 0);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 2);
    // A stale id does nothing.
    b.free(t);
    b.active(t, EventFlags::TIMEOUT);
    assert_eq!(b.num_active(), 0);
    assert!(b.add(t, None).is_err());
    Ok(())
});

rtest!(pending_queries, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let ev = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, |_, _, _| {});
    let all = EventFlags::READ | EventFlags::WRITE | EventFlags::TIMEOUT | EventFlags::SIGNAL;
    assert_eq!(b.pending(ev, all), (EventFlags::NONE, None));
    b.add(ev, Some(Duration::from_secs(5)))?;
    let (what, left) = b.pending(ev, all);
    assert_eq!(what, EventFlags::READ | EventFlags::TIMEOUT);
    assert!(left.is_some_and(|l| l <= Duration::from_secs(5) && l > Duration::from_secs(4)), "{left:?}");
    // Only the bits asked about.
    assert_eq!(b.pending(ev, EventFlags::WRITE).0, EventFlags::NONE);
    assert_eq!(b.pending(ev, EventFlags::READ).0, EventFlags::READ);
    b.add(ev, None)?;
    assert_eq!(b.pending(ev, all), (EventFlags::READ, None));
    put(&y, b"!")?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(b.pending(ev, all).0, EventFlags::READ, "a persistent event stays pending after it ran");
    b.del(ev)?;
    assert_eq!(b.pending(ev, all), (EventFlags::NONE, None));
    b.free(ev);
    assert_eq!(b.pending(ev, all), (EventFlags::NONE, None));
    assert!(!b.is_valid(ev));
    Ok(())
});

rtest!(once_runs_once_and_frees_itself, +et, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    let start = Watch::start(&b);
    let l = log.clone();
    let io = b.once(x.as_raw_fd(), be.io(EventFlags::READ), None, move |_, res| l.push("io", res))?;
    let l = log.clone();
    let tm = b.once(-1, EventFlags::NONE, Some(ms(20)), move |_, res| l.push("timer", res))?;
    let l = log.clone();
    let io_to = b.once(x.as_raw_fd(), be.io(EventFlags::WRITE | EventFlags::READ), Some(ms(5)), move |_, res| {
        l.push("io_or_timeout", res)
    })?;
    assert!(b.is_valid(io) && b.is_valid(tm) && b.is_valid(io_to));
    // SIGNAL or PERSIST are refused.
    assert!(b.once(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), None, |_, _| {}).is_err());
    assert!(b.once(libc::SIGUSR1, EventFlags::SIGNAL, None, |_, _| {}).is_err());
    put(&y, b"q")?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), ms(20), Duration::from_secs(5));
    let mut got: Vec<(String, EventFlags)> = log.0.borrow().clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("io".to_string(), EventFlags::READ),
            ("io_or_timeout".to_string(), EventFlags::READ | EventFlags::WRITE),
            ("timer".to_string(), EventFlags::TIMEOUT),
        ]
    );
    assert!(!b.is_valid(io) && !b.is_valid(tm) && !b.is_valid(io_to));
    assert_eq!(b.num_events(), 0);
    // An io once that times out.
    take(x.as_raw_fd());
    let l = log.clone();
    b.once(x.as_raw_fd(), be.io(EventFlags::READ), Some(ms(10)), move |_, res| l.push("late", res))?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.0.borrow().last().cloned(), Some(("late".to_string(), EventFlags::TIMEOUT)));
    Ok(())
});

// ----- priorities --------------------------------------------------------------

rtest!(priority_init_rules, |be| {
    let mut b = be.base()?;
    assert_eq!(b.npriorities(), 1);
    assert!(b.priority_init(0).is_err());
    assert!(b.priority_init(256).is_err());
    b.priority_init(255)?;
    assert_eq!(b.npriorities(), 255);
    b.priority_init(3)?;
    assert_eq!(b.npriorities(), 3);
    // New events get n / 2.
    let e = b.new_timer(|_, _, _| {});
    assert_eq!(b.priority(e), Some(1));
    b.priority_init(4)?;
    let f = b.new_timer(|_, _, _| {});
    assert_eq!(b.priority(f), Some(2));
    assert!(b.set_priority(f, 4).is_err());
    b.set_priority(f, 3)?;
    assert_eq!(b.priority(f), Some(3));
    // Not while an event is active; not on an active event.
    b.active(f, EventFlags::TIMEOUT);
    assert!(b.priority_init(2).is_err());
    assert!(b.set_priority(f, 0).is_err());
    assert_eq!(b.npriorities(), 4);
    b.run(LoopFlags::NONBLOCK)?;
    b.priority_init(2)?;
    assert_eq!(b.priority(f), Some(1), "priorities are clamped to the new range");
    Ok(())
});

rtest!(priorities_run_most_urgent_first, |be| {
    let mut b = be.base()?;
    b.priority_init(3)?;
    let log = Log::default();
    let mut ids = Vec::new();
    for (tag, pri) in [("p2", 2), ("p1", 1), ("p0", 0), ("p2b", 2)] {
        let t = b.new_timer(log.cb(tag));
        b.set_priority(t, pri)?;
        ids.push(t);
    }
    for &id in &ids {
        b.active(id, EventFlags::TIMEOUT);
    }
    b.dispatch()?;
    assert_eq!(log.tags(), ["p0", "p1", "p2", "p2b"]);
    Ok(())
});

rtest!(priority_changes_after_a_delete_while_active, |be| {
    // An event deleted while active must not keep its old place (or old
    // priority) in the active queues: re-activated, it is queued afresh.
    let mut b = be.base()?;
    let log = Log::default();
    // 1. Its queue disappears with priority_init: it must still run.
    b.priority_init(4)?;
    let e = b.new_timer(log.cb("e"));
    b.set_priority(e, 3)?;
    b.active(e, EventFlags::TIMEOUT);
    b.del(e)?;
    b.priority_init(2)?;
    b.active(e, EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags(), ["e"], "re-activated event lost after priority_init");
    assert_eq!(b.num_active(), 0);
    // 2. Its priority was lowered: it runs after an event activated before it.
    let f = b.new_timer(log.cb("f"));
    b.set_priority(e, 0)?;
    b.active(e, EventFlags::TIMEOUT);
    b.del(e)?;
    b.set_priority(e, 1)?;
    b.active(f, EventFlags::TIMEOUT);
    b.active(e, EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags()[1..], ["f", "e"]);
    // 3. Same priority: deleted, then re-activated after another one, it
    // goes behind it (FIFO by activation).
    b.active(e, EventFlags::TIMEOUT);
    b.del(e)?;
    b.active(f, EventFlags::TIMEOUT);
    b.active(e, EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags()[3..], ["f", "e"]);
    // 4. Freed while active, its slot reused by an event of another priority.
    let g = b.new_timer(log.cb("g"));
    b.set_priority(g, 0)?;
    b.active(g, EventFlags::TIMEOUT);
    b.free(g);
    let h = b.new_timer(log.cb("h"));
    assert_eq!(b.priority(h), Some(1));
    b.active(f, EventFlags::TIMEOUT);
    b.active(h, EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags()[5..], ["f", "h"]);
    Ok(())
});

rtest!(priority_init_from_a_callback, |be| {
    // Allowed from a callback when nothing else is active (libevent checks
    // only for active events); the loop must survive its queue vanishing
    // under it, even with a stale entry (an event deleted while active)
    // still behind the running one.
    let mut b = be.base()?;
    b.priority_init(3)?;
    let log = Log::default();
    let l = log.clone();
    let e = b.new_timer(move |b, _, _| {
        l.push("e", EventFlags::NONE);
        b.priority_init(1).expect("no event is active");
    });
    let f = b.new_timer(log.cb("f"));
    assert_eq!((b.priority(e), b.priority(f)), (Some(1), Some(1)));
    b.set_priority(e, 2)?;
    b.set_priority(f, 2)?;
    b.active(e, EventFlags::TIMEOUT);
    b.active(f, EventFlags::TIMEOUT);
    b.del(f)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.tags(), ["e"]);
    assert_eq!(b.npriorities(), 1);
    b.active(f, EventFlags::TIMEOUT);
    b.dispatch()?;
    assert_eq!(log.tags(), ["e", "f"]);
    Ok(())
});

/// The dispatch rule: a turn runs only the most urgent non-empty queue, and
/// from `min_priority` on at most `max_callbacks` callbacks (or
/// `max_interval` of them) before the backend is polled again. Ten bulk
/// events at priority 1; the first one makes a priority-0 socket readable.
fn dispatch_rule(be: Backend, limit: impl FnOnce(&mut EventConfig), spin: Duration) -> io::Result<Vec<String>> {
    let mut cfg = be.config();
    limit(&mut cfg);
    let mut b = be.base_with(&cfg)?;
    b.priority_init(2)?;
    let (x, y) = pair()?;
    let log = Log::default();
    let fd = x.as_raw_fd();
    let l = log.clone();
    let urgent = b.new_event(fd, be.io(EventFlags::READ), move |_, _, res| {
        take(fd);
        l.push("H", res)
    });
    b.set_priority(urgent, 0)?;
    b.add(urgent, None)?;
    let y = Rc::new(y);
    for i in 0..10 {
        let l = log.clone();
        let y = y.clone();
        let t = b.new_timer(move |_, _, res| {
            if i == 0 {
                put(&y, b"!").unwrap();
            }
            let until = Instant::now() + spin;
            while Instant::now() < until {}
            l.push(&format!("L{i}"), res);
        });
        assert_eq!(b.priority(t), Some(1));
        b.active(t, EventFlags::TIMEOUT);
    }
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(log.tags())
}

rtest!(dispatch_rule_max_callbacks, +et, |be| {
    let bulk_first: Vec<String> = (0..10).map(|i| format!("L{i}")).chain(["H".to_string()]).collect();
    assert_eq!(dispatch_rule(be, |_| {}, Duration::ZERO)?, bulk_first, "no limit: the turn finishes its queue");
    let got = dispatch_rule(
        be,
        |c| {
            c.set_max_dispatch_interval(None, Some(1), 1);
        },
        Duration::ZERO,
    )?;
    let mut want = vec!["L0".to_string(), "H".to_string()];
    want.extend((1..10).map(|i| format!("L{i}")));
    assert_eq!(got, want, "max_callbacks=1: the urgent event runs right after the first bulk callback");
    // The limit applies from min_priority on only: with min_priority 2 the
    // bulk queue (1) is unbounded again.
    let got = dispatch_rule(
        be,
        |c| {
            c.set_max_dispatch_interval(None, Some(1), 2);
        },
        Duration::ZERO,
    )?;
    assert_eq!(got, bulk_first);
    Ok(())
});

rtest!(dispatch_rule_max_interval, +et, |be| {
    // Each bulk callback spins 3 ms; the interval is 1 ms: the turn ends
    // after the first one.
    let got = dispatch_rule(
        be,
        |c| {
            c.set_max_dispatch_interval(Some(MS), None, 1);
        },
        ms(3),
    )?;
    assert_eq!(got[..2], ["L0".to_string(), "H".to_string()]);
    assert_eq!(got.len(), 11);
    Ok(())
});

// `dispatch_delay`: from readiness (the backend's wait returning with
// the fd ready) to the callback. Two sockets ready in the same turn: the
// first callback spins 5 ms, so the second one waited at least that long;
// with `max_callbacks = 1` the second runs a turn later and its delay
// still counts from the first turn's wait. Zero outside callbacks.
rtest!(dispatch_delay_counts_from_readiness, +et, |be| {
    for limited in [false, true] {
        let mut cfg = be.config();
        if limited {
            cfg.set_max_dispatch_interval(None, Some(1), 0);
        }
        let mut b = be.base_with(&cfg)?;
        assert_eq!(b.dispatch_delay(), Duration::ZERO);
        let seen: Rc<RefCell<Vec<Duration>>> = Rc::default();
        let mut keep = Vec::new();
        for _ in 0..2 {
            let (x, y) = pair()?;
            let fd = x.as_raw_fd();
            let seen = seen.clone();
            let ev = b.new_event(fd, be.io(EventFlags::READ), move |base, _, _| {
                take(fd);
                seen.borrow_mut().push(base.dispatch_delay());
                let until = Instant::now() + ms(5);
                while Instant::now() < until {}
            });
            b.add(ev, None)?;
            put(&y, b"!")?;
            keep.push((x, y));
        }
        assert_eq!(b.dispatch()?, LoopExit::NoEvents);
        let seen = seen.borrow();
        assert_eq!(seen.len(), 2, "limited={limited}");
        assert!(seen[0] < ms(5), "limited={limited}: the first callback waited {:?}", seen[0]);
        assert!(seen[1] >= ms(5), "limited={limited}: the second one ran after a 5 ms callback, waited {:?}", seen[1]);
        assert_eq!(b.dispatch_delay(), Duration::ZERO);
    }
    Ok(())
});

// ----- callbacks changing events -------------------------------------------------

rtest!(callback_deletes_and_readds_itself, +et, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let n = counter();
    let c = n.clone();
    let fd = x.as_raw_fd();
    // A one-shot event re-adds itself twice, then stops.
    let ev = b.new_event(fd, be.io(EventFlags::READ), move |b, id, _| {
        take(fd);
        c.set(c.get() + 1);
        if c.get() < 3 {
            b.add(id, None).unwrap();
        }
    });
    b.add(ev, None)?;
    for _ in 0..3 {
        put(&y, b"k")?;
        b.run(LoopFlags::ONCE)?;
    }
    assert_eq!(n.get(), 3);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    // A persistent event deletes itself: it stops.
    let m = counter();
    let c = m.clone();
    let pe = b.new_event(fd, be.io(EventFlags::READ | EventFlags::PERSIST), move |b, id, _| {
        c.set(c.get() + 1);
        b.del(id).unwrap();
    });
    b.add(pe, None)?;
    put(&y, b"k")?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(m.get(), 1);
    Ok(())
});

rtest!(callback_frees_itself_and_others, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    // `victim` is active in the same turn; `killer` runs first and frees
    // it and itself, then allocates a new event (which may reuse a slot).
    let victim = b.new_timer(log.cb("victim"));
    let l = log.clone();
    let newcomer: Rc<Cell<Option<EventId>>> = Rc::new(Cell::new(None));
    let nc = newcomer.clone();
    let killer = b.new_timer(move |b, me, _| {
        l.push("killer", EventFlags::NONE);
        b.free(victim);
        b.free(me);
        let id = b.new_timer(l.cb("newcomer"));
        b.add(id, Some(MS)).unwrap();
        nc.set(Some(id));
    });
    b.active(killer, EventFlags::TIMEOUT);
    b.active(victim, EventFlags::TIMEOUT);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.tags(), ["killer", "newcomer"]);
    assert!(!b.is_valid(killer) && !b.is_valid(victim));
    let id = newcomer.get().expect("newcomer");
    assert!(b.is_valid(id));
    assert_ne!(id, killer);
    assert_ne!(id, victim);
    // A slot reused after free never answers to the old id.
    b.free(id);
    let again = b.new_timer(|_, _, _| {});
    assert!(b.is_valid(again) && !b.is_valid(id));
    Ok(())
});

rtest!(callback_deletes_another_active_event, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    let fd = x.as_raw_fd();
    // Two events on one readable fd; whichever runs first deletes the other.
    let ids: Rc<RefCell<Vec<EventId>>> = Rc::default();
    for tag in ["a", "b"] {
        let l = log.clone();
        let ids2 = ids.clone();
        let id = b.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |b, me, _| {
            l.push(tag, EventFlags::NONE);
            for &other in ids2.borrow().iter() {
                if other != me {
                    b.del(other).unwrap();
                }
            }
        });
        ids.borrow_mut().push(id);
        b.add(id, None)?;
    }
    put(&y, b"1")?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 1, "the deleted event still ran: {:?}", log.tags());
    Ok(())
});

// ----- several events on one fd ------------------------------------------------

rtest!(read_and_write_events_on_one_socket, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let (r, w) = (counter(), counter());
    let (cr, cw) = (r.clone(), w.clone());
    let fd = x.as_raw_fd();
    let rev = b.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |_, _, res| {
        assert_eq!(res, EventFlags::READ);
        take(fd);
        cr.set(cr.get() + 1)
    });
    let wev = b.new_event(fd, EventFlags::WRITE | EventFlags::PERSIST, move |_, _, res| {
        assert_eq!(res, EventFlags::WRITE);
        cw.set(cw.get() + 1)
    });
    b.add(rev, None)?;
    b.add(wev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!((r.get(), w.get()), (0, 1));
    put(&y, b"r")?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!((r.get(), w.get()), (1, 2));
    // Deleting the write event leaves the read interest in place.
    b.del(wev)?;
    put(&y, b"r")?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!((r.get(), w.get()), (2, 2));
    // And the other way round.
    b.add(wev, None)?;
    b.del(rev)?;
    put(&y, b"r")?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!((r.get(), w.get()), (2, 3));
    b.del(wev)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(())
});

rtest!(two_read_events_on_one_fd, |be| {
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    let e1 = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, log.cb("1"));
    let e2 = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, log.cb("2"));
    b.add(e1, None)?;
    b.add(e2, None)?;
    put(&y, b"x")?;
    b.run(LoopFlags::NONBLOCK)?;
    let mut t = log.tags();
    t.sort();
    assert_eq!(t, ["1", "2"]);
    b.del(e1)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags()[2..], ["2".to_string()]);
    b.del(e2)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 3);
    Ok(())
});

rtest!(five_events_on_one_fd, |be| {
    // More events than an fd's entry holds inline: every one that watches
    // what is ready runs, once per turn, and a deleted one no more.
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let log = Log::default();
    let fd = x.as_raw_fd();
    let reads: Vec<_> = ["r1", "r2", "r3", "r4"]
        .into_iter()
        .map(|t| b.new_event(fd, EventFlags::READ | EventFlags::PERSIST, log.cb(t)))
        .collect();
    let w = b.new_event(fd, EventFlags::WRITE, log.cb("w"));
    for &e in reads.iter().chain([&w]) {
        b.add(e, None)?;
    }
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.tags(), ["w"], "only the write event: nothing to read yet");
    put(&y, b"x")?;
    b.run(LoopFlags::NONBLOCK)?;
    let mut t = log.tags()[1..].to_vec();
    t.sort();
    assert_eq!(t, ["r1", "r2", "r3", "r4"]);
    b.del(reads[1])?;
    b.del(reads[2])?;
    b.run(LoopFlags::NONBLOCK)?;
    let mut t = log.tags()[5..].to_vec();
    t.sort();
    assert_eq!(t, ["r1", "r4"]);
    Ok(())
});

// ----- loop control --------------------------------------------------------------

rtest!(empty_loop_returns_no_events, |be| {
    let mut b = be.base()?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::NoEvents);
    // An event that exists but is not pending does not keep the loop alive.
    let (x, _y) = pair()?;
    b.new_event(x.as_raw_fd(), EventFlags::READ, |_, _, _| {});
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(())
});

rtest!(loop_once_and_nonblock, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    let fast = b.new_timer(log.cb("fast"));
    let slow = b.new_timer(log.cb("slow"));
    let start = Watch::start(&b);
    b.add(fast, Some(ms(10)))?;
    b.add(slow, Some(Duration::from_secs(30)))?;
    // NONBLOCK: nothing is due, it returns at once.
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::Done);
    assert!(start.elapsed() < ms(500));
    assert_eq!(log.len(), 0);
    // ONCE: blocks for the first timer only.
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    assert_between(start.elapsed(), ms(10), Duration::from_secs(5));
    assert_eq!(log.tags(), ["fast"]);
    assert_eq!(b.pending(slow, EventFlags::TIMEOUT).0, EventFlags::TIMEOUT);
    Ok(())
});

rtest!(no_exit_on_empty_with_loopexit, |be| {
    let mut b = be.base()?;
    let start = Watch::start(&b);
    b.loopexit(Some(ms(30)))?;
    assert_eq!(b.run(LoopFlags::NO_EXIT_ON_EMPTY)?, LoopExit::Done);
    assert_between(start.elapsed(), ms(30), Duration::from_secs(5));
    assert!(b.got_exit() && !b.got_break());
    // With nothing to wake it but a thread handle.
    let h = b.handle()?;
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        std::thread::sleep(ms(20));
        h.loopexit();
    });
    assert_eq!(b.run(LoopFlags::NO_EXIT_ON_EMPTY)?, LoopExit::Done);
    assert!(start.elapsed() >= ms(20), "ended before the handle's loopexit");
    assert!(b.got_exit());
    t.join().expect("thread");
    Ok(())
});

rtest!(loopexit_with_delay, |be| {
    let mut b = be.base()?;
    let n = counter();
    let c = n.clone();
    let tick = b.new_event(-1, EventFlags::PERSIST, move |_, _, _| c.set(c.get() + 1));
    b.add(tick, Some(ms(5)))?;
    let start = Watch::start(&b);
    b.loopexit(Some(ms(60)))?;
    assert_eq!(b.dispatch()?, LoopExit::Done);
    assert_between(start.elapsed(), ms(60), Duration::from_secs(5));
    assert!(b.got_exit() && !b.got_break());
    assert!(n.get() >= 1, "ticks {}", n.get());
    // got_exit is reset by the next run.
    b.del(tick)?;
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert!(!b.got_exit());
    Ok(())
});

rtest!(loopexit_now_ends_after_the_current_turn, |be| {
    // A level-triggered event that never reads would keep the loop busy for
    // ever; loopexit(None) lets this turn's callbacks run and then stops.
    let mut b = be.base()?;
    let (x, y) = pair()?;
    put(&y, b"unread")?;
    let n = counter();
    let c = n.clone();
    let ev = b.new_event(x.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, move |_, _, _| c.set(c.get() + 1));
    b.add(ev, None)?;
    b.loopexit(None)?;
    assert_eq!(b.dispatch()?, LoopExit::Done);
    assert!(b.got_exit());
    assert_eq!(n.get(), 1);
    // The request was used up: a NONBLOCK turn runs the event again.
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(n.get(), 2);
    assert!(!b.got_exit());
    Ok(())
});

rtest!(loopbreak_stops_after_the_current_callback, |be| {
    let mut b = be.base()?;
    let log = Log::default();
    let mut ids = Vec::new();
    for i in 0..3 {
        let l = log.clone();
        ids.push(b.new_timer(move |b, _, _| {
            l.push(&format!("{i}"), EventFlags::NONE);
            b.loopbreak();
        }));
    }
    for &id in &ids {
        b.active(id, EventFlags::TIMEOUT);
    }
    assert_eq!(b.dispatch()?, LoopExit::Done);
    assert!(b.got_break() && !b.got_exit());
    assert_eq!(log.tags(), ["0"]);
    assert_eq!(b.num_active(), 2);
    // The next run picks up where it stopped (and breaks again).
    b.dispatch()?;
    assert_eq!(log.tags(), ["0", "1"]);
    b.dispatch()?;
    assert_eq!(b.num_active(), 0);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert!(!b.got_break());
    Ok(())
});

rtest!(loopcontinue_polls_again_before_the_rest, +et, |be| {
    let mut b = be.base()?;
    b.priority_init(2)?;
    let (x, y) = pair()?;
    let log = Log::default();
    let fd = x.as_raw_fd();
    let l = log.clone();
    let urgent = b.new_event(fd, be.io(EventFlags::READ), move |_, _, _| {
        take(fd);
        l.push("H", EventFlags::NONE)
    });
    b.set_priority(urgent, 0)?;
    b.add(urgent, None)?;
    let mut ids = Vec::new();
    for i in 0..3 {
        let l = log.clone();
        let yfd = y.as_raw_fd();
        ids.push(b.new_timer(move |b, _, _| {
            l.push(&format!("L{i}"), EventFlags::NONE);
            if i == 0 {
                sys::write(yfd, b"!").unwrap();
                b.loopcontinue();
            }
        }));
    }
    for &id in &ids {
        b.active(id, EventFlags::TIMEOUT);
    }
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_eq!(log.tags(), ["L0", "H", "L1", "L2"]);
    // Outside a loop it does nothing.
    b.loopcontinue();
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    Ok(())
});

rtest!(running_loop_cannot_be_reentered, |be| {
    let mut b = be.base()?;
    let seen = Rc::new(Cell::new(false));
    let s = seen.clone();
    let t = b.new_timer(move |b, _, _| {
        let e = b.dispatch().expect_err("re-entered the loop");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        s.set(true);
    });
    b.active(t, EventFlags::TIMEOUT);
    b.dispatch()?;
    assert!(seen.get());
    Ok(())
});

// ----- fds, threads, limits --------------------------------------------------

rtest!(dropping_the_base_leaves_user_fds_open, +et, |be| {
    let (x, y) = pair()?;
    {
        let mut b = be.base()?;
        let r = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), |_, _, _| {});
        let w = b.new_event(x.as_raw_fd(), be.io(EventFlags::WRITE | EventFlags::PERSIST), |_, _, _| {});
        let z = b.new_event(y.as_raw_fd(), be.io(EventFlags::READ), |_, _, _| {});
        b.add(r, Some(Duration::from_secs(5)))?;
        b.add(w, None)?;
        b.add(z, None)?;
        b.run(LoopFlags::NONBLOCK)?;
        let _ = b.once(y.as_raw_fd(), be.io(EventFlags::WRITE), None, |_, _| {})?;
    }
    // Both ends still work after the base is gone.
    put(&x, b"alive")?;
    assert_eq!(take(y.as_raw_fd()).as_deref(), Some(&b"alive"[..]));
    put(&y, b"too")?;
    assert_eq!(take(x.as_raw_fd()).as_deref(), Some(&b"too"[..]));
    Ok(())
});

rtest!(thread_handle_activates_and_breaks, |be| {
    let mut b = be.base()?;
    let h = b.handle()?;
    let (to_thread, from_cb) = std::sync::mpsc::channel::<()>();
    let log = Log::default();
    let l = log.clone();
    let ev = b.new_timer(move |_, _, res| {
        l.push("activated", res);
        to_thread.send(()).unwrap();
    });
    let t = std::thread::spawn(move || {
        h.activate(ev, EventFlags::READ).expect("activate");
        // Break only once the callback has run.
        from_cb.recv_timeout(Duration::from_secs(10)).expect("callback never ran");
        h.wake();
        h.loopbreak();
    });
    // Nothing is pending: only the handle can end this loop.
    watchdog(&mut b, 20)?;
    assert_eq!(b.run(LoopFlags::NO_EXIT_ON_EMPTY)?, LoopExit::Done);
    assert!(b.got_break());
    assert_eq!(log.res(), [EventFlags::READ]);
    t.join().expect("thread");
    // A NOLOCK base has no handle.
    let mut cfg = be.config();
    cfg.set_flag(BaseFlags::NOLOCK);
    let mut nolock = be.base_with(&cfg)?;
    assert!(nolock.handle().is_err());
    Ok(())
});

rtest!(thread_handles_lose_no_wakeups, |be| {
    // Three threads each activate their own event 200 times, waiting for
    // the callback's acknowledgement before the next activation (so no
    // activation can coalesce with another); the last one out breaks the
    // loop. Every activation must arrive.
    const THREADS: usize = 3;
    const ROUNDS: usize = 200;
    let mut b = be.base()?;
    let total = counter();
    let mut joins = Vec::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..THREADS {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
        let t = total.clone();
        let ev = b.new_timer(move |_, _, _| {
            t.set(t.get() + 1);
            ack_tx.send(()).unwrap();
        });
        let h = b.handle()?;
        let done = done.clone();
        joins.push(std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                h.activate(ev, EventFlags::TIMEOUT).expect("activate");
                ack_rx.recv_timeout(Duration::from_secs(10)).expect("activation lost");
            }
            if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == THREADS {
                h.loopbreak();
            }
        }));
    }
    watchdog(&mut b, 30)?;
    assert_eq!(b.run(LoopFlags::NO_EXIT_ON_EMPTY)?, LoopExit::Done);
    assert!(b.got_break());
    for j in joins {
        j.join().expect("thread");
    }
    assert_eq!(total.get(), THREADS * ROUNDS);
    Ok(())
});

rtest!(fds_above_fd_setsize, +et, |be| {
    // Enough socketpairs that the newest fds are well past 1024.
    let mut pairs = Vec::new();
    while pairs.last().is_none_or(|(_, y): &(OwnedFd, OwnedFd)| y.as_raw_fd() < 1100) {
        pairs.push(pair()?);
    }
    let mut b = be.base()?;
    let n = counter();
    let high: Vec<&(OwnedFd, OwnedFd)> = pairs.iter().rev().take(8).collect();
    for (x, y) in &high {
        for fd in [x.as_raw_fd(), y.as_raw_fd()] {
            assert!(fd >= 1024);
            let c = n.clone();
            let ev = b.new_event(fd, be.io(EventFlags::READ), move |_, _, _| {
                assert_eq!(take(fd).as_deref(), Some(&b"hi"[..]));
                c.set(c.get() + 1)
            });
            b.add(ev, None)?;
        }
    }
    // One low fd too, so the set spans both ranges.
    let (lx, ly) = &pairs[0];
    let c = n.clone();
    let lfd = lx.as_raw_fd();
    let low = b.new_event(lfd, be.io(EventFlags::READ), move |_, _, _| {
        take(lfd);
        c.set(c.get() + 1)
    });
    b.add(low, None)?;
    for (x, y) in &high {
        put(x, b"hi")?;
        put(y, b"hi")?;
    }
    put(ly, b"lo")?;
    watchdog(&mut b, 10)?;
    while n.get() < 17 {
        b.run(LoopFlags::ONCE)?;
    }
    assert_eq!(n.get(), 17);
    Ok(())
});

// ----- configuration -----------------------------------------------------------

#[test]
fn config_errors() {
    // Only uring has both (where io_uring works; elsewhere none has).
    let mut cfg = EventConfig::new();
    cfg.set_flag(BaseFlags::IGNORE_ENV).avoid("uring").require_features(Features::O1 | Features::FDS);
    assert!(matches!(EventBase::with_config(&cfg), Err(BaseError::NoBackend { .. })));

    let mut cfg = EventConfig::new();
    cfg.set_flag(BaseFlags::IGNORE_ENV).avoid("epoll").avoid("poll").avoid("select").avoid("uring");
    let e = EventBase::with_config(&cfg).expect_err("no backend left");
    assert!(matches!(e, BaseError::NoBackend { .. }));
    assert!(e.to_string().contains("epoll,poll,select,uring"), "{e}");

    let mut cfg = EventConfig::new();
    cfg.set_flag(BaseFlags::IGNORE_ENV).avoid("epoll").avoid("uring").require_features(Features::ET);
    assert!(matches!(EventBase::with_config(&cfg), Err(BaseError::NoBackend { .. })));
}

#[test]
fn config_picks_by_features() -> io::Result<()> {
    let pick = |avoid: &[&str], f: Features| -> io::Result<&'static str> {
        let mut cfg = EventConfig::new();
        cfg.set_flag(BaseFlags::IGNORE_ENV).require_features(f);
        for a in avoid {
            cfg.avoid(a);
        }
        Ok(EventBase::with_config(&cfg)?.backend_name())
    };
    assert_eq!(pick(&[], Features::empty())?, "epoll");
    assert_eq!(pick(&[], Features::FDS)?, "poll");
    assert_eq!(pick(&[], Features::EARLY_CLOSE)?, "epoll");
    assert_eq!(pick(&["epoll"], Features::EARLY_CLOSE)?, "poll");
    assert_eq!(pick(&["poll"], Features::FDS)?, "select");
    // uring is never picked for a feature: it comes after select.
    if rot13d::reactor::BackendKind::Uring.available().is_ok() {
        assert_eq!(pick(&["poll", "select"], Features::FDS)?, "uring");
    }
    let names: Vec<&str> = EventBase::supported_backends().iter().map(|b| b.name).collect();
    let mut want = vec!["epoll", "poll", "select"];
    if rot13d::reactor::BackendKind::Uring.available().is_ok() {
        want.push("uring");
    }
    assert_eq!(names, want);
    assert!(!EventBase::version().is_empty());
    Ok(())
}

/// The environment is process-wide, so the `EVENT_*` variables are tried in
/// a child: this test binary re-run on [`env_probe`] alone.
fn probe_with_env(vars: &[(&str, &str)], ignore_env: bool) -> io::Result<String> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["reactor::env_probe", "--exact", "--nocapture", "--test-threads=1"]);
    for v in [
        "EVENT_NOEPOLL",
        "EVENT_NOPOLL",
        "EVENT_NOSELECT",
        "EVENT_NOURING",
        "EVENT_EPOLL_USE_CHANGELIST",
        "EVENT_PRECISE_TIMER",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("ROT13D_ENV_PROBE", if ignore_env { "ignore" } else { "1" });
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "probe failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.split_once("PROBE ").map(|(_, rest)| rest))
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("no PROBE line in {text}")))
}

/// Prints what `EventBase::new()` picked; a no-op unless run by
/// [`probe_with_env`].
#[test]
fn env_probe() {
    let Ok(mode) = std::env::var("ROT13D_ENV_PROBE") else { return };
    let mut cfg = EventConfig::new();
    if mode == "ignore" {
        cfg.set_flag(BaseFlags::IGNORE_ENV);
    }
    // Every fd taken: a backend that needs one cannot initialise.
    let mut fill = Vec::new();
    if std::env::var_os("ROT13D_PROBE_NO_FDS").is_some() {
        while let Ok(fd) = sys::dup(std::io::stdout().as_fd()) {
            fill.push(fd);
        }
    }
    let made = EventBase::with_config(&cfg);
    drop(fill);
    match made {
        Ok(b) => println!(
            "PROBE {} changelist={} precise={}",
            b.backend_name(),
            b.uses_changelist(),
            b.flags().contains(BaseFlags::PRECISE_TIMER)
        ),
        Err(e) => println!("PROBE error {}", matches!(e, BaseError::NoBackend { .. })),
    }
}

#[test]
fn environment_variables_disable_backends() -> io::Result<()> {
    assert_eq!(probe_with_env(&[], false)?, "epoll changelist=false precise=false");
    assert_eq!(probe_with_env(&[("EVENT_NOEPOLL", "1")], false)?, "poll changelist=false precise=false");
    // Set to anything, even empty.
    assert_eq!(
        probe_with_env(&[("EVENT_NOEPOLL", ""), ("EVENT_NOPOLL", "")], false)?,
        "select changelist=false precise=false"
    );
    // With the other three disabled, uring is what is left (where io_uring
    // works); EVENT_NOURING takes it away too.
    let left = if rot13d::reactor::BackendKind::Uring.available().is_ok() {
        "uring changelist=false precise=false"
    } else {
        "error true"
    };
    assert_eq!(probe_with_env(&[("EVENT_NOEPOLL", "1"), ("EVENT_NOPOLL", "1"), ("EVENT_NOSELECT", "1")], false)?, left);
    assert_eq!(
        probe_with_env(
            &[("EVENT_NOEPOLL", "1"), ("EVENT_NOPOLL", "1"), ("EVENT_NOSELECT", "1"), ("EVENT_NOURING", "")],
            false
        )?,
        "error true"
    );
    assert_eq!(probe_with_env(&[("EVENT_EPOLL_USE_CHANGELIST", "1")], false)?, "epoll changelist=true precise=false");
    assert_eq!(probe_with_env(&[("EVENT_PRECISE_TIMER", "1")], false)?, "epoll changelist=false precise=true");
    // IGNORE_ENV: none of it counts.
    assert_eq!(
        probe_with_env(&[("EVENT_NOEPOLL", "1"), ("EVENT_EPOLL_USE_CHANGELIST", "1")], true)?,
        "epoll changelist=false precise=false"
    );
    Ok(())
}

// ----- common timeouts at scale ----------------------------------------------

/// Arms `n` timers with `d`, then re-arms all of them, in reverse, from
/// inside one callback (so the cached time gives every one the same
/// deadline); returns the order they fire in and the re-arm time.
fn rearm_all(n: usize, d: Duration, common: bool) -> io::Result<(Vec<u32>, Duration)> {
    let mut b = Backend::Epoll.base()?;
    if common {
        b.init_common_timeout(d)?;
    }
    assert_eq!(b.is_common_timeout(d), common);
    let order: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let mut ids = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let o = order.clone();
        let id = b.new_timer(move |_, _, res| {
            debug_assert_eq!(res, EventFlags::TIMEOUT);
            o.borrow_mut().push(i)
        });
        b.add(id, Some(d))?;
        ids.push(id);
    }
    let rearm_time = Rc::new(Cell::new(Duration::ZERO));
    let rt = rearm_time.clone();
    let kick = b.new_timer(move |b, _, _| {
        let start = Instant::now();
        for id in ids.iter().rev() {
            b.add(*id, Some(d)).unwrap();
        }
        rt.set(start.elapsed());
    });
    b.active(kick, EventFlags::TIMEOUT);
    let start = Watch::start(&b);
    assert_eq!(b.dispatch()?, LoopExit::NoEvents);
    assert_between(start.elapsed(), d, Duration::from_secs(60));
    let o = order.borrow().clone();
    Ok((o, rearm_time.get()))
}

/// 100,000 events re-armed with one common timeout. With equal deadlines
/// they fire exactly in re-arm order, and each exactly once: the FIFO queue
/// of the common timeout, where a re-arm is an unlink and a push at the
/// tail. The control is the same run with the duration not registered as
/// common: the binary heap does not keep that order among equal deadlines,
/// so the order seen above is the queue's doing.
#[test]
fn common_timeout_rearms_100k_events_in_o1_queue() -> io::Result<()> {
    const N: usize = 100_000;
    let fifo: Vec<u32> = (0..N as u32).rev().collect();
    let (order, common_time) = rearm_all(N, ms(30), true)?;
    assert_eq!(order.len(), N, "every event fires exactly once");
    assert!(order == fifo, "common timeout: not in re-arm (FIFO) order");
    let (heap_order, heap_time) = rearm_all(N, ms(30), false)?;
    assert_eq!(heap_order.len(), N);
    assert!(heap_order != fifo, "control: the heap kept FIFO order too; the test cannot tell the paths apart");
    eprintln!(
        "re-armed {N} events: common timeout {:?} ({:?} each), heap {:?} ({:?} each)",
        common_time,
        common_time / N as u32,
        heap_time,
        heap_time / N as u32
    );
    Ok(())
}

// After the macro, so that its textual scope reaches the module.
mod fork;
mod model;
mod robust;

rtest!(starvation_limit_lets_a_busy_base_run_low_priorities, |be| {
    // An urgent event that re-activates itself every time it runs keeps
    // priority 0 busy for ever. libevent's strict rule never runs priority 1
    // then; with a starvation limit of 2 it runs once every few turns.
    for limit in [None, Some(2)] {
        let mut cfg = be.config();
        cfg.set_starvation_limit(limit);
        let mut b = be.base_with(&cfg)?;
        b.priority_init(2)?;
        let urgent_runs = counter();
        let low_runs = counter();
        let u = urgent_runs.clone();
        let urgent = b.new_event(-1, EventFlags::NONE, move |b, id, _| {
            u.set(u.get() + 1);
            b.active(id, EventFlags::TIMEOUT);
        });
        b.set_priority(urgent, 0)?;
        let l = low_runs.clone();
        let low = b.new_event(-1, EventFlags::PERSIST, move |_, _, _| l.set(l.get() + 1));
        b.set_priority(low, 1)?;
        b.active(urgent, EventFlags::TIMEOUT);
        b.active(low, EventFlags::TIMEOUT);
        for _ in 0..10 {
            b.run(LoopFlags::NONBLOCK)?;
        }
        assert_eq!(urgent_runs.get(), 10);
        match limit {
            None => assert_eq!(low_runs.get(), 0, "strict priorities starve the low one"),
            Some(_) => assert_eq!(low_runs.get(), 1, "the low one ran once after two skipped turns"),
        }
        b.del(urgent)?;
    }
    Ok(())
});
