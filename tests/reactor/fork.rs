//! `reinit()` after a real `fork()`.
//!
//! Without reinit, parent and child share kernel state through the base:
//! the epoll instance (an `epoll_ctl` in the child changes the parent's
//! interest list), the signal self-pipe and the wake-up eventfd (which the
//! child must never write: its signal handler and its old handles leave
//! them alone). With reinit each side has its own.
//!
//! A uring base refuses to run in a child that did not reinit (its ring
//! is the parent's, shared memory included): the child's loop fails with an
//! error and the parent's ring is never touched.
//!
//! Children report by exit code; every wait for a child is bounded (the
//! child is killed on timeout); parent and child synchronise through pipes
//! they wait on with an event loop and a timeout, never with sleeps.

use super::*;
use rot13d::reactor::{BevOptions, BufferEvent};
use rot13d::sys::process::{ExitStatus, Fork};
use std::panic::AssertUnwindSafe;

const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// Exit codes of a child.
const OK: i32 = 0;
const IO_ERROR: i32 = 90;
const PANIC: i32 = 91;

/// `fork(2)` from a test: the harness runs each test on a thread of its own,
/// so the checked `sys::process::fork` (one thread only) refuses.
fn fork() -> io::Result<Fork> {
    // SAFETY: the children of these tests touch nothing the harness's
    // other threads hold (they run only the state each test set up before
    // forking), and leave through `exit_now`.
    unsafe { sys::process::fork_unchecked() }
}

/// Whether the child's loop is refused: a uring base in a child that did
/// not reinit (the ring is the parent's).
fn refused_in_child(be: Backend, reinit: bool) -> bool {
    !reinit && be.name() == "uring"
}

/// Runs `body` in the child and leaves with its verdict (never returns).
fn child_exit(body: impl FnOnce() -> io::Result<i32>) -> ! {
    let code = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => IO_ERROR,
        Err(_) => PANIC,
    };
    sys::process::exit_now(code)
}

/// Waits for `pid` at most `timeout`; kills it (by pid) when late.
fn wait_child(pid: i32, timeout: Duration) -> io::Result<ExitStatus> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sys::process::wait_pid(pid));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            let _ = sys::signal::kill(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("child {pid} did not finish")))
        }
    }
}

/// Waits until `fd` is readable, at most `timeout`, on a base of its own.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut cfg = Backend::Poll.config();
    cfg.set_flag(BaseFlags::NOLOCK);
    let mut b = EventBase::with_config(&cfg)?;
    let got = Rc::new(Cell::new(false));
    let g = got.clone();
    b.once(fd, EventFlags::READ, Some(timeout), move |_, res| g.set(res.contains(EventFlags::READ)))?;
    b.dispatch()?;
    Ok(got.get())
}

/// One non-blocking turn even with nothing pending, so that an epoll
/// changelist reaches the kernel (a loop with no events returns before it
/// polls, leaving the changes queued).
fn flush(b: &mut EventBase) -> io::Result<()> {
    b.run(LoopFlags::NONBLOCK | LoopFlags::NO_EXIT_ON_EMPTY)?;
    Ok(())
}

/// Runs `b` until `done()` or `within` has passed; returns `done()`.
fn run_until(b: &mut EventBase, within: Duration, done: impl Fn() -> bool) -> io::Result<bool> {
    let stop = b.new_timer(|b, _, _| b.loopbreak());
    b.add(stop, Some(within))?;
    while !done() {
        b.run(LoopFlags::ONCE)?;
        if b.got_break() {
            break;
        }
    }
    b.free(stop);
    Ok(done())
}

/// Runs `b` until `count` grows or `within` has passed; whether it grew.
fn fires_within(b: &mut EventBase, count: &Rc<Cell<usize>>, within: Duration) -> io::Result<bool> {
    let before = count.get();
    run_until(b, within, || count.get() > before)
}

fn counting_read_event(b: &mut EventBase, fd: RawFd) -> (EventId, Rc<Cell<usize>>, Rc<Cell<usize>>) {
    let (fired, spurious) = (counter(), counter());
    let (f, s) = (fired.clone(), spurious.clone());
    let ev = b.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |_, _, _| {
        f.set(f.get() + 1);
        // Readiness that the parent's own socket does not have.
        if take(fd).is_none() {
            s.set(s.get() + 1);
        }
    });
    (ev, fired, spurious)
}

/// The child deletes the event it inherited. With a shared epoll instance
/// that deletes the parent's registration too: the parent's event silently
/// stops firing although its base still calls it pending. poll and select
/// keep no kernel state, so they are immune even without reinit.
fn child_del(be: Backend, reinit: bool) -> io::Result<()> {
    let _g = process_lock();
    let mut b = be.base()?;
    let (x, y) = pair()?;
    let (ev, fired, _) = counting_read_event(&mut b, x.as_raw_fd());
    b.add(ev, None)?;
    flush(&mut b)?; // the changelist reaches the kernel
    match fork()? {
        Fork::Child => child_exit(|| {
            if reinit {
                b.reinit()?;
            }
            b.del(ev)?;
            flush(&mut b)?;
            Ok(OK)
        }),
        Fork::Parent(pid) => {
            let want = if refused_in_child(be, reinit) { IO_ERROR } else { OK };
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(want));
            assert_eq!(b.pending(ev, EventFlags::READ).0, EventFlags::READ);
            put(&y, b"parent data")?;
            let ran = fires_within(&mut b, &fired, ms(300))?;
            let hazard = !reinit && be.name() == "epoll";
            assert_eq!(ran, !hazard, "reinit={reinit} backend={be:?}: parent's event fired={ran}");
            Ok(())
        }
    }
}

rtest!(fork_child_del_without_reinit, |be| { child_del(be, false) });
rtest!(fork_child_del_with_reinit, |be| { child_del(be, true) });

/// The child registers a socket of its own that has the number of one of
/// the parent's watched fds. On a shared epoll instance the parent is woken
/// for the child's socket: its event fires with nothing to read. After
/// reinit the child's registration goes to its own instance, and the child's
/// loop serves its own socket.
fn child_registers_colliding_fd(be: Backend, reinit: bool) -> io::Result<()> {
    let _g = process_lock();
    let mut b = be.base()?;
    let (x, _y) = pair()?;
    let xfd = x.as_raw_fd();
    let (ev, fired, spurious) = counting_read_event(&mut b, xfd);
    b.add(ev, None)?;
    flush(&mut b)?;
    let (ready_r, ready_w) = sys::pipe()?;
    let (go_r, go_w) = sys::pipe()?;
    match fork()? {
        Fork::Child => child_exit(move || {
            if reinit {
                b.reinit()?;
            }
            // Give up x in this process and take its number for a new
            // socket. With reinit, the inherited event is deleted first as
            // it should be. Without, the delete would reach the shared
            // instance and remove the parent's registration (see child_del),
            // so x is closed first and the delete finds nothing to remove.
            if reinit {
                b.free(ev);
                flush(&mut b)?;
                drop(x);
            } else {
                drop(x);
                b.free(ev);
                flush(&mut b)?;
            }
            // Fill every lower gap so that the socketpair gets x's number.
            let mut fillers = Vec::new();
            loop {
                let f = sys::dup(std::os::fd::AsFd::as_fd(&ready_w))?;
                if f.as_raw_fd() == xfd {
                    break;
                }
                assert!(f.as_raw_fd() < xfd, "fd {xfd} was not the lowest free");
                fillers.push(f);
            }
            let (cx, cy) = pair()?;
            assert_eq!(cx.as_raw_fd(), xfd);
            let (mine, mine_fired, _) = counting_read_event(&mut b, cx.as_raw_fd());
            b.add(mine, None)?;
            put(&cy, b"child data")?;
            // The child's loop serves its own socket (on the shared instance
            // too: the wake-up is for x either way).
            let own_ok = run_until(&mut b, Duration::from_secs(5), || mine_fired.get() > 0)?;
            // Keep the socket readable until the parent has looked.
            put(&cy, b"more")?;
            sys::write(ready_w.as_raw_fd(), b"r")?;
            wait_readable(go_r.as_raw_fd(), CHILD_TIMEOUT)?;
            drop(fillers);
            Ok(if own_ok { OK } else { 11 })
        }),
        Fork::Parent(pid) if refused_in_child(be, reinit) => {
            // The child's loop fails before it registers anything; the
            // parent's event still serves its own socket.
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(IO_ERROR));
            assert!(take(ready_r.as_raw_fd()).is_none(), "the refused child got ready");
            put(&_y, b"parent data")?;
            assert!(fires_within(&mut b, &fired, Duration::from_secs(5))?, "the parent's event");
            assert_eq!(spurious.get(), 0);
            Ok(())
        }
        Fork::Parent(pid) => {
            let ready = wait_readable(ready_r.as_raw_fd(), CHILD_TIMEOUT)?;
            let ran = ready && fires_within(&mut b, &fired, ms(300))?;
            sys::write(go_w.as_raw_fd(), b"g")?;
            let status = wait_child(pid, CHILD_TIMEOUT)?;
            assert!(ready, "child never got ready ({status})");
            assert_eq!(status, ExitStatus::Code(OK));
            let hazard = !reinit && be.name() == "epoll";
            assert_eq!(ran, hazard, "reinit={reinit} backend={be:?}: parent woken for the child's fd={ran}");
            if hazard {
                assert_eq!(spurious.get(), fired.get(), "every wake-up was for the child's socket");
            }
            Ok(())
        }
    }
}

rtest!(fork_child_fd_without_reinit, |be| { child_registers_colliding_fd(be, false) });
rtest!(fork_child_fd_with_reinit, |be| { child_registers_colliding_fd(be, true) });

/// A signal caught in the child. Registrations carry the pid that made
/// them, so the child's handler never writes into the pipe it shares with
/// the parent (before, the parent's signal event fired for a signal the
/// parent never got). Without reinit no pipe of the child watches the
/// signal, so it takes its default action (SIGUSR2 ends the child), as if
/// the child had never caught it; after reinit the child's own loop gets
/// it. Either way the parent sees nothing, and its own signals still work.
fn child_signal(be: Backend, reinit: bool) -> io::Result<()> {
    let _g = process_lock();
    let mut b = be.base()?;
    let n = counter();
    let c = n.clone();
    let sig = b.new_signal(libc::SIGUSR2, move |_, _, _| c.set(c.get() + 1));
    b.add(sig, None)?;
    match fork()? {
        Fork::Child => child_exit(|| {
            if reinit {
                b.reinit()?;
            }
            sys::signal::raise(libc::SIGUSR2)?;
            if !reinit {
                // Not reached: the default action ended the child.
                return Ok(16);
            }
            let got = fires_within(&mut b, &n, Duration::from_secs(5))?;
            Ok(if got && n.get() == 1 { OK } else { 12 })
        }),
        Fork::Parent(pid) => {
            let want = if reinit { ExitStatus::Code(OK) } else { ExitStatus::Signal(libc::SIGUSR2) };
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, want);
            // The child has exited: whatever it wrote is in the pipe by now.
            b.run(LoopFlags::NONBLOCK)?;
            b.run(LoopFlags::NONBLOCK)?;
            assert_eq!(n.get(), 0, "reinit={reinit}: parent saw the child's signal");
            sys::signal::raise(libc::SIGUSR2)?;
            assert!(fires_within(&mut b, &n, Duration::from_secs(5))?, "the parent's own signal");
            b.free(sig);
            Ok(())
        }
    }
}

rtest!(fork_child_signal_without_reinit, |be| { child_signal(be, false) });
rtest!(fork_child_signal_with_reinit, |be| { child_signal(be, true) });

// After reinit both sides run full loops on the inherited events: the
// parent and the child each serve a socket pair of their own through the
// events they had before the fork, plus a timer, independently.
rtest!(fork_both_sides_work_after_reinit, |be| {
    let _g = process_lock();
    let mut b = be.base()?;
    let (pa, pb) = pair()?; // the parent's
    let (ca, cb) = pair()?; // the child's
    let (pev, pfired, _) = counting_read_event(&mut b, pa.as_raw_fd());
    let (cev, cfired, _) = counting_read_event(&mut b, ca.as_raw_fd());
    b.add(pev, None)?;
    b.add(cev, None)?;
    flush(&mut b)?;
    match fork()? {
        Fork::Child => child_exit(|| {
            b.reinit()?;
            b.del(pev)?;
            let t = counter();
            let tc = t.clone();
            let timer = b.new_timer(move |_, _, _| tc.set(tc.get() + 1));
            b.add(timer, Some(ms(10)))?;
            put(&cb, b"c")?;
            let io = run_until(&mut b, Duration::from_secs(5), || cfired.get() > 0)?;
            let tm = run_until(&mut b, Duration::from_secs(5), || t.get() > 0)?;
            Ok(if io && tm && pfired.get() == 0 { OK } else { 13 })
        }),
        Fork::Parent(pid) => {
            b.del(cev)?;
            put(&pb, b"p")?;
            assert!(fires_within(&mut b, &pfired, Duration::from_secs(5))?);
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(OK));
            assert_eq!(cfired.get(), 0);
            put(&pb, b"p")?;
            assert!(fires_within(&mut b, &pfired, Duration::from_secs(5))?);
            Ok(())
        }
    }
});

// ----- handles and other bases across fork (issue 10) ------------------------------

// A BaseHandle cloned before the fork names the parent's base. In the child
// it must stay inert: before, it wrote the eventfd the child shares with the
// parent, and the parent's loop woke for the child's calls. The child gets a
// handle of its own from its base after reinit.
rtest!(fork_handle_from_before_the_fork_does_not_reach_the_parent, |be| {
    let _g = process_lock();
    let mut b = be.base()?;
    let old = b.handle()?;
    flush(&mut b)?;
    match fork()? {
        Fork::Child => child_exit(move || {
            b.reinit()?;
            old.wake();
            old.loopbreak();
            // The child's own handle works.
            let n = counter();
            let c = n.clone();
            let ev = b.new_timer(move |_, _, _| c.set(c.get() + 1));
            b.handle()?.activate(ev, EventFlags::TIMEOUT)?;
            let got = fires_within(&mut b, &n, Duration::from_secs(5))?;
            Ok(if got { OK } else { 14 })
        }),
        Fork::Parent(pid) => {
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(OK));
            // Only a timer is pending: a ONCE turn blocks until it fires,
            // unless something wakes the loop first.
            let t = counter();
            let tc = t.clone();
            let timer = b.new_timer(move |_, _, _| tc.set(tc.get() + 1));
            b.add(timer, Some(ms(300)))?;
            b.run(LoopFlags::ONCE)?;
            assert_eq!(t.get(), 1, "the parent's loop was woken by a handle used in the child");
            assert!(!b.got_break());
            Ok(())
        }
    }
});

// A signal raised in the child must not reach a base of the parent that the
// child never reinitialised (the parent's other loops: before, their pipes
// stayed registered in the child, and the child's handler wrote into them).
rtest!(fork_other_bases_signals_stay_in_the_parent, |be| {
    let _g = process_lock();
    let mut a = be.base()?;
    let mut other = be.base()?;
    let (na, no) = (counter(), counter());
    let (ca, co) = (na.clone(), no.clone());
    let sa = a.new_signal(libc::SIGUSR2, move |_, _, _| ca.set(ca.get() + 1));
    a.add(sa, None)?;
    let so = other.new_signal(libc::SIGUSR2, move |_, _, _| co.set(co.get() + 1));
    other.add(so, None)?;
    match fork()? {
        Fork::Child => child_exit(|| {
            a.reinit()?;
            sys::signal::raise(libc::SIGUSR2)?;
            let got = fires_within(&mut a, &na, Duration::from_secs(5))?;
            Ok(if got && na.get() == 1 { OK } else { 15 })
        }),
        Fork::Parent(pid) => {
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(OK));
            // The child has exited: whatever it wrote is in the pipes by now.
            other.run(LoopFlags::NONBLOCK)?;
            other.run(LoopFlags::NONBLOCK)?;
            assert_eq!(no.get(), 0, "the child's signal reached another base of the parent");
            a.run(LoopFlags::NONBLOCK)?;
            assert_eq!(na.get(), 0, "the child's signal reached the parent's base");
            sys::signal::raise(libc::SIGUSR2)?;
            assert!(fires_within(&mut other, &no, Duration::from_secs(5))?, "the parent's own signal");
            assert!(fires_within(&mut a, &na, Duration::from_secs(5))?, "the parent's own signal");
            a.free(sa);
            other.free(so);
            Ok(())
        }
    }
});

// Another thread keeps using a handle while the process forks: the child's
// reinit must not take the handle's lock (the thread that may hold it does
// not exist in the child, so it would never be released). Many forks, so
// that some land while the lock is held; a child that hangs is killed.
#[test]
fn fork_while_another_thread_uses_a_handle() -> io::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _g = process_lock();
    let mut b = Backend::Epoll.base()?;
    let h = b.handle()?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let hammer = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            h.wake();
        }
    });
    let mut result = Ok(());
    for i in 0..100 {
        match fork()? {
            Fork::Child => child_exit(|| {
                b.reinit()?;
                Ok(OK)
            }),
            Fork::Parent(pid) => match wait_child(pid, Duration::from_secs(3)) {
                Ok(ExitStatus::Code(OK)) => {}
                other => {
                    result = Err(io::Error::other(format!("fork {i}: child {pid}: {other:?}")));
                    break;
                }
            },
        }
    }
    stop.store(true, Ordering::Relaxed);
    hammer.join().expect("hammer thread");
    result
}

// ----- the io_uring data path across fork (issue 14 section 3) ---------------------

fn echo_readcb(_: &mut EventBase, b: &mut BufferEvent<()>) {
    let (input, output, _) = b.parts_mut();
    output.add_buffer(input);
}

/// Reads what `fd` has within `within` (bounded), until `want` bytes came.
fn read_n(fd: RawFd, want: usize, within: Duration) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let end = Instant::now() + within;
    while got.len() < want && Instant::now() < end {
        if !wait_readable(fd, end.saturating_duration_since(Instant::now()))? {
            break;
        }
        let mut buf = [0u8; 4096];
        match sys::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A bufferevent on the io_uring data path survives `fork()` + reinit on
/// both sides: the child's new ring takes over its fd (its receive armed
/// afresh, its echo sent by the child's ring), the parent's keeps serving
/// its own, and neither side sees the other's bytes.
#[test]
fn fork_data_path_bufferevents_serve_on_both_sides() -> io::Result<()> {
    if !Backend::Uring.available() {
        return Ok(());
    }
    let _g = process_lock();
    let mut b = Backend::Uring.base()?;
    let (pa, pb) = pair()?; // served by the parent
    let (ca, cb) = pair()?; // served by the child
    let pbev = BufferEvent::socket_new(&mut b, pa, BevOptions::default(), ())?;
    let cbev = BufferEvent::socket_new(&mut b, ca, BevOptions::default(), ())?;
    for bev in [&pbev, &cbev] {
        bev.with(|e| {
            assert!(e.is_on_data_path());
            e.setcb(Some(echo_readcb), None, None);
            e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
        })
        .unwrap_or(Ok(()))?;
    }
    // Both receives armed in the parent's ring before the fork.
    flush(&mut b)?;
    match fork()? {
        Fork::Child => child_exit(|| {
            b.reinit()?;
            pbev.with(|e| e.free(&mut b));
            put(&cb, b"child\n")?;
            let got = RefCell::new(Vec::new());
            let ok = run_until(&mut b, Duration::from_secs(5), || {
                let mut buf = [0u8; 64];
                if let Ok(n) = sys::read(cb.as_raw_fd(), &mut buf) {
                    got.borrow_mut().extend_from_slice(&buf[..n]);
                }
                got.borrow().len() >= 6
            })?;
            Ok(if ok && *got.borrow() == b"child\n" { OK } else { 14 })
        }),
        Fork::Parent(pid) => {
            b.reinit()?;
            cbev.with(|e| e.free(&mut b));
            assert_eq!(wait_child(pid, CHILD_TIMEOUT)?, ExitStatus::Code(OK));
            put(&pb, b"parent\n")?;
            let got = RefCell::new(Vec::new());
            assert!(run_until(&mut b, Duration::from_secs(5), || {
                let mut buf = [0u8; 64];
                if let Ok(n) = sys::read(pb.as_raw_fd(), &mut buf) {
                    got.borrow_mut().extend_from_slice(&buf[..n]);
                }
                got.borrow().len() >= 7
            })?);
            assert_eq!(*got.borrow(), b"parent\n");
            // The child's bytes never reached the parent's socket.
            assert!(read_n(pb.as_raw_fd(), 1, Duration::from_millis(50))?.is_empty());
            pbev.with(|e| e.free(&mut b));
            Ok(())
        }
    }
}
