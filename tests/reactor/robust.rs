//! No single fd can end a loop, bounded queues and counters, and libevent's
//! documented behaviour where the reactor re-creates it (issue 10).
//!
//! A failed registration (the epoll changelist's deferred `epoll_ctl`, an fd
//! select or poll finds closed) belongs to that fd: its events are told once
//! and are no longer pending, the loop goes on, and the fd number is free
//! for a new socket.

use super::*;

/// A new read event on the socket that now has number `fd` is served: the
/// base does not believe the number is still registered from before.
///
/// The new socket is put on that number when it did not get it (a lower
/// number was free: `F_DUPFD` from it, which gets exactly the free
/// number), rather than hoping that the next socket gets it: it always
/// tests. Another thread of this process
/// could take the number first only when tests share a process (nextest
/// runs each in its own); then the test fails, it does not pass untested.
fn number_is_free_again(b: &mut EventBase, fd: RawFd) -> io::Result<()> {
    let (mut s, mut peer) = pair()?;
    if peer.as_raw_fd() == fd {
        std::mem::swap(&mut s, &mut peer);
    }
    if s.as_raw_fd() != fd {
        s = sys::dup_at_least(s.as_fd(), fd)?;
    }
    assert_eq!(s.as_raw_fd(), fd, "fd {fd} was taken by another thread of this process before it could be reused");
    let n = counter();
    let c = n.clone();
    let ev = b.new_event(s.as_raw_fd(), EventFlags::READ | EventFlags::PERSIST, move |_, _, _| {
        assert_eq!(take(fd).as_deref(), Some(&b"new"[..]));
        c.set(c.get() + 1)
    });
    b.add(ev, None)?;
    put(&peer, b"new")?;
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(Duration::from_secs(2)))?;
    while n.get() == 0 && !b.got_break() {
        b.run(LoopFlags::ONCE)?;
    }
    assert_eq!(n.get(), 1, "a new socket on fd {fd} is not watched");
    b.free(ev);
    b.free(stop);
    Ok(())
}

/// A ready fd with a read event that counts and drains, and a second fd
/// whose persistent read event logs as `bad`; the second fd is handed to
/// `spoil` (which closes it) after the event was added.
struct Spoiled {
    good_runs: Rc<Cell<usize>>,
    bad: EventId,
    bad_fd: RawFd,
    log: Log,
    _keep: (OwnedFd, OwnedFd, OwnedFd),
}

fn spoiled(b: &mut EventBase, spoil: impl FnOnce(OwnedFd)) -> io::Result<Spoiled> {
    let (x, y) = pair()?;
    let good_runs = counter();
    let c = good_runs.clone();
    let fd = x.as_raw_fd();
    let good = b.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |_, _, _| {
        take(fd);
        c.set(c.get() + 1)
    });
    b.add(good, None)?;
    put(&y, b"ready")?;
    let (p, q) = pair()?;
    let bad_fd = p.as_raw_fd();
    let log = Log::default();
    let bad = b.new_event(bad_fd, EventFlags::READ | EventFlags::PERSIST, log.cb("bad"));
    b.add(bad, None)?;
    spoil(p);
    Ok(Spoiled { good_runs, bad, bad_fd, log, _keep: (x, y, q) })
}

/// Several turns: none fails, the good fd is served, the bad fd's event is
/// told exactly once (ERROR with what it watched) and is no longer pending,
/// and the base has the error, `errno`.
fn check_told_once(b: &mut EventBase, s: &Spoiled, errno: i32) -> io::Result<()> {
    for turn in 0..4 {
        if let Err(e) = b.run(LoopFlags::NONBLOCK) {
            panic!("turn {turn}: one fd's failure ended the loop: {e}");
        }
    }
    assert_eq!(s.good_runs.get(), 1, "the ready fd was not served");
    assert_eq!(s.log.len(), 1, "the bad fd's event was told {} times (once expected)", s.log.len());
    assert_eq!(b.pending(s.bad, EventFlags::READ).0, EventFlags::NONE, "the event is still pending");
    assert_eq!(s.log.res(), [EventFlags::READ | EventFlags::ERROR]);
    let e = b.take_fd_error(s.bad_fd).expect("the fd's error");
    assert_eq!(e.raw_os_error(), Some(errno), "{e}");
    assert!(b.take_fd_error(s.bad_fd).is_none(), "taken once");
    Ok(())
}

rtest!(changelist_add_of_a_closed_fd_is_that_fds_problem, [epoll_changelist, uring], |be| {
    // With the changelist an add reaches the kernel at the next dispatch.
    // The fd is closed before that: EPOLL_CTL_ADD fails with EBADF.
    let mut b = be.base()?;
    let s = spoiled(&mut b, drop)?;
    check_told_once(&mut b, &s, libc::EBADF)?;
    number_is_free_again(&mut b, s.bad_fd)
});

rtest!(changelist_add_of_a_number_reused_by_a_file_is_that_fds_problem, [epoll_changelist], |be| {
    // The socket is closed and a regular file takes its number before the
    // changelist is flushed: EPOLL_CTL_ADD fails with EPERM.
    let mut b = be.base()?;
    let path = std::env::temp_dir().join(format!("rot13d-robust-{}", std::process::id()));
    let file = RefCell::new(None);
    let s = spoiled(&mut b, |p| {
        let fd = p.as_raw_fd();
        drop(p);
        let f = std::fs::File::create(&path).expect("temp file");
        assert_eq!(f.as_raw_fd(), fd, "the file did not get the socket's number");
        *file.borrow_mut() = Some(f);
    })?;
    let _ = std::fs::remove_file(&path);
    check_told_once(&mut b, &s, libc::EPERM)?;
    drop(file);
    Ok(())
});

rtest!(closed_fd_in_the_set_is_reported_once_and_dropped, [poll, select], |be| {
    // An fd closed without deleting its event: select fails with EBADF for
    // the whole set, poll flags POLLNVAL. The other fds are served, the bad
    // one's event is told once and dropped, and the loop goes on.
    let mut b = be.base()?;
    let s = spoiled(&mut b, drop)?;
    check_told_once(&mut b, &s, libc::EBADF)?;
    number_is_free_again(&mut b, s.bad_fd)
});

rtest!(hangup_is_reported_as_closed, [epoll, epoll_changelist, poll, uring], |be| {
    // A pipe's writer goes away: the reader gets HUP, never RDHUP. An event
    // waiting for CLOSED must hear of it (mio maps HUP to read-closed), not
    // leave the loop spinning on a HUP nobody is told of.
    let mut b = be.base()?;
    let (r, w) = sys::pipe()?;
    let log = Log::default();
    let ev = b.new_event(r.as_raw_fd(), EventFlags::CLOSED, log.cb("closed"));
    b.add(ev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 0, "CLOSED fired while the writer is open");
    drop(w);
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(Duration::from_secs(2)))?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(log.len(), 1, "the hangup was not reported");
    assert!(log.res()[0].contains(EventFlags::CLOSED), "{:?}", log.res());
    Ok(())
});

rtest!(readding_an_event_active_by_its_timeout_deactivates_it, |be| {
    // libevent's event_add: an event re-added with a timeout while it is
    // active *with* EV_TIMEOUT among its results leaves the active queue
    // (`ev_res & EV_TIMEOUT`), whatever else fired with it.
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let log = Log::default();
    let ev = b.new_event(x.as_raw_fd(), EventFlags::READ, log.cb("ev"));
    b.add(ev, Some(Duration::from_secs(30)))?;
    let kick = b.new_event(-1, EventFlags::NONE, move |b, _, _| {
        b.add(ev, Some(Duration::from_secs(30))).expect("re-add");
    });
    b.active(kick, EventFlags::TIMEOUT);
    b.active(ev, EventFlags::READ | EventFlags::TIMEOUT);
    b.run(LoopFlags::NONBLOCK)?;
    assert_eq!(log.len(), 0, "the re-added event still ran with {:?}", log.res());
    let (what, left) = b.pending(ev, EventFlags::READ | EventFlags::TIMEOUT);
    assert_eq!(what, EventFlags::READ | EventFlags::TIMEOUT, "re-armed, pending again");
    assert!(left.is_some_and(|l| l > Duration::from_secs(20)), "{left:?}");
    b.free(ev);
    Ok(())
});

rtest!(more_than_0xffff_events_on_one_fd_are_refused, [epoll, poll], |be| {
    // libevent's evmap refuses a 65536th reader (or writer) on one fd: the
    // per-direction counts are 16 bits.
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let fd = x.as_raw_fd();
    let mut first = None;
    for _ in 0..0xffff {
        let id = b.new_event(fd, EventFlags::READ, |_, _, _| {});
        b.add(id, None)?;
        first.get_or_insert(id);
    }
    let extra = b.new_event(fd, EventFlags::READ, |_, _, _| {});
    let e = b.add(extra, None).expect_err("a 65536th reader was accepted");
    assert_eq!(b.pending(extra, EventFlags::READ).0, EventFlags::NONE);
    eprintln!("refused: {e}");
    // Writers count apart.
    let w = b.new_event(fd, EventFlags::WRITE, |_, _, _| {});
    b.add(w, None)?;
    // A reader leaves: one more fits.
    b.del(first.expect("a reader"))?;
    b.add(extra, None)?;
    Ok(())
});

#[test]
fn priority_init_refuses_more_than_255() -> io::Result<()> {
    // EVENT_MAX_PRIORITIES is 256 and libevent requires fewer.
    let mut b = Backend::Epoll.base()?;
    assert!(b.priority_init(256).is_err(), "256 priorities accepted");
    b.priority_init(255)?;
    assert_eq!(b.npriorities(), 255);
    Ok(())
}

#[test]
fn clock_is_coarse_unless_precise_timer() -> io::Result<()> {
    // libevent (evutil_configure_monotonic_time_): CLOCK_MONOTONIC_COARSE
    // unless EVENT_BASE_FLAG_PRECISE_TIMER, whatever its resolution. Outside
    // a loop `now()` reads the base's clock, so it falls between two
    // readings of that clock (and almost never between two readings of the
    // other one: they differ by up to a tick).
    let b = Backend::Epoll.base()?;
    let c1 = sys::monotonic(sys::Clock::Coarse);
    let n = b.now();
    let c2 = sys::monotonic(sys::Clock::Coarse);
    assert!(c1 <= n && n <= c2, "not the coarse clock: {c1:?} <= {n:?} <= {c2:?}");
    let mut cfg = Backend::Epoll.config();
    cfg.set_flag(BaseFlags::PRECISE_TIMER);
    let b = Backend::Epoll.base_with(&cfg)?;
    let p1 = sys::monotonic(sys::Clock::Precise);
    let n = b.now();
    let p2 = sys::monotonic(sys::Clock::Precise);
    assert!(p1 <= n && n <= p2, "PRECISE_TIMER: not the precise clock: {p1:?} <= {n:?} <= {p2:?}");
    Ok(())
}

rtest!(precise_timer_waits_less_than_a_millisecond, |be| {
    // PRECISE_TIMER: a 300 µs timer is not rounded up to a whole millisecond
    // (libevent 2.1 arms a timerfd for epoll). Every wait lasts at least its
    // timeout; the shortest of ten is well under 1 ms unless the machine
    // delays every single wake-up.
    let mut cfg = be.config();
    cfg.set_flag(BaseFlags::PRECISE_TIMER);
    let mut b = be.base_with(&cfg)?;
    let t = b.new_timer(|_, _, _| {});
    let want = Duration::from_micros(300);
    let mut shortest = Duration::MAX;
    for _ in 0..10 {
        let start = Instant::now();
        b.add(t, Some(want))?;
        assert_eq!(b.dispatch()?, LoopExit::NoEvents);
        let el = start.elapsed();
        assert!(el >= want, "waited {el:?} < {want:?}");
        shortest = shortest.min(el);
    }
    assert!(shortest < Duration::from_micros(900), "the shortest of ten 300 µs waits took {shortest:?}");
    Ok(())
});

/// Whether the environment probe can still build a base when every fd is
/// taken (see `env_probe`): the first backend (epoll) needs an fd and fails
/// to initialise; libevent then tries the next one.
#[test]
fn a_backend_that_fails_to_initialise_gives_way_to_the_next() -> io::Result<()> {
    assert_eq!(probe_with_env(&[("ROT13D_PROBE_NO_FDS", "1")], true)?, "poll changelist=false precise=false");
    Ok(())
}

#[test]
fn method_names_the_changelist_and_the_backend_name_stays_plain() -> io::Result<()> {
    // libevent's event_base_get_method names the mode; logs, the CLI and
    // `avoid` use the plain name.
    for (be, method) in [
        (Backend::Epoll, "epoll"),
        (Backend::EpollChangelist, "epoll (with changelist)"),
        (Backend::Poll, "poll"),
        (Backend::Select, "select"),
    ] {
        let b = be.base()?;
        assert_eq!(b.method(), method);
        assert_eq!(b.backend_name(), be.name());
        assert_eq!(b.backend().name(), be.name());
    }
    Ok(())
}

#[test]
fn features_are_libevents() -> io::Result<()> {
    // event_base_get_features of libevent 2.1.12 on Linux (checked against
    // the library: epoll 0x0b, poll 0x0c, select 0x04).
    for (be, f) in [
        (Backend::Epoll, Features::ET | Features::O1 | Features::EARLY_CLOSE),
        (Backend::Poll, Features::FDS | Features::EARLY_CLOSE),
        (Backend::Select, Features::FDS),
    ] {
        assert_eq!(be.base()?.features(), f, "{be:?}");
    }
    Ok(())
}

rtest!(a_thread_handle_refuses_past_its_bound, [epoll], |be| {
    // Activations from other threads merge per event; distinct ones are
    // bounded. The loop then runs each once.
    let mut b = be.base()?;
    let h = b.handle()?;
    let n = counter();
    let mut ids = Vec::new();
    for _ in 0..rot13d::reactor::MAX_QUEUED_ACTIVATIONS + 1 {
        let c = n.clone();
        ids.push(b.new_timer(move |_, _, _| c.set(c.get() + 1)));
    }
    let t = std::thread::spawn(move || {
        let mut refused = 0;
        for _ in 0..3 {
            for id in &ids {
                refused += usize::from(h.activate(*id, EventFlags::TIMEOUT).is_err());
            }
        }
        refused
    });
    let refused = t.join().expect("thread");
    assert_eq!(refused, 3, "the one past the bound, each round");
    for _ in 0..3 {
        b.run(LoopFlags::NONBLOCK | LoopFlags::NO_EXIT_ON_EMPTY)?;
    }
    assert_eq!(n.get(), rot13d::reactor::MAX_QUEUED_ACTIVATIONS);
    Ok(())
});

/// Whether the peer of a closed socket sees its end: EOF (a read of 0).
fn peer_sees_eof(peer: &OwnedFd) -> bool {
    matches!(sys::read(peer.as_raw_fd(), &mut [0u8; 16]), Ok(0))
}

rtest!(socket_closed_right_after_its_event_is_deleted_is_closed, +et, |be| {
    // libevent lets a caller close an fd right after deleting its event,
    // inside a callback (a server closing a connection, a listener at a
    // stop) or outside the loop, and the file must be gone at once: the
    // peer sees EOF, a listener refuses. An io_uring poll holds the file
    // until cancelled, so a delete that leaves the fd unwatched is
    // submitted then, not at the next turn (a closed listener went on
    // taking connections: lifecycle::graceful_stop_serves_busy_client_uring_w1).
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let ev = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), |_, _, _| {});
    b.add(ev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    let x = RefCell::new(Some(x));
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    let t = b.new_timer(move |b, _, _| {
        b.free(ev);
        drop(x.borrow_mut().take());
        s.set(Some(peer_sees_eof(&y)));
    });
    b.add(t, Some(Duration::ZERO))?;
    b.run(LoopFlags::ONCE)?;
    assert_eq!(seen.get(), Some(true), "inside a callback: the peer saw no EOF");
    // Outside the loop.
    let (x, y) = pair()?;
    let ev = b.new_event(x.as_raw_fd(), be.io(EventFlags::READ | EventFlags::PERSIST), |_, _, _| {});
    b.add(ev, None)?;
    b.run(LoopFlags::NONBLOCK)?;
    b.del(ev)?;
    drop(x);
    assert!(peer_sees_eof(&y), "outside the loop: the peer saw no EOF");
    Ok(())
});

#[test]
fn probing_io_uring_does_not_interrupt_the_callers_next_blocking_call() -> io::Result<()> {
    // Tearing a ring down sends task work to each task that used it, which
    // ends that thread's next blocking call with a timeout early (EINTR).
    // The availability probe (`--list-backends`, a test's skip check) kept
    // its ring only for the probe: a client's timed read right after
    // failed with EINTR (protocol::max_line_boundaries::uring_w0, about one
    // run in two). The probe now keeps its ring.
    let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    a.set_read_timeout(Some(Duration::from_millis(300)))?;
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    let e = io::Read::read(&mut &a, &mut [0u8; 8]).expect_err("no data was sent");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the read ended with {e} instead of its timeout");
    Ok(())
}
