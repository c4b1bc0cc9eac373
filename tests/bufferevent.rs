//! Behavioural tests of [`BufferEvent`], run against every backend (the
//! `rtest!` matrix of `tests/reactor.rs`) and, where the transport matters,
//! over both an `AF_UNIX` socketpair and a real TCP connection on 127.0.0.1.
//!
//! Every wait is bounded: [`run_until`] turns the loop (`ONCE`, woken at
//! least every few milliseconds by a tick timer) until a condition holds or
//! a deadline passes. Times are asserted as lower bounds, with a generous
//! upper bound only. The peer side of a connection is a plain non-blocking
//! fd driven by the test between loop turns.

use crate::reactor::{Backend, Watch, put, rtest, watchdog};
use rot13d::protocol::Framer;
use rot13d::reactor::{Bev, BevEvent, BevOptions, BufferEvent, EventBase, EventFlags, LoopExit, LoopFlags, Suspend};
use rot13d::sys;
use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

// ----- helpers ---------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The longest any single wait of this suite may take.
const LIMIT: Duration = Duration::from_secs(10);

/// The transport under a bufferevent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Unix,
    Tcp,
}

const LINKS: [Link; 2] = [Link::Unix, Link::Tcp];

/// Socket buffer size for the flow-control tests: small, so that a peer
/// that does not read fills the path quickly (the kernel doubles it and
/// applies its own minimum).
const SMALL_BUF: usize = 16 * 1024;

/// A connected pair, both ends non-blocking: `(bufferevent side, peer)`.
/// `small` shrinks both ends' socket buffers.
fn link(kind: Link, small: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    match kind {
        Link::Unix => {
            let (a, b) = sys::socketpair()?;
            if small {
                for fd in [&a, &b] {
                    sys::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SMALL_BUF as i32)?;
                    sys::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, SMALL_BUF as i32)?;
                }
            }
            Ok((a, b))
        }
        Link::Tcp => {
            use socket2::{Domain, Socket, Type};
            let l = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
            let c = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
            if small {
                // Set before listen/connect so the window is negotiated small.
                for s in [&l, &c] {
                    s.set_recv_buffer_size(SMALL_BUF)?;
                    s.set_send_buffer_size(SMALL_BUF)?;
                }
            }
            l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            l.listen(4)?;
            // A blocking connect to a listening loopback port completes at
            // once (the handshake is done by the kernel), and so does accept.
            c.connect(&l.local_addr()?)?;
            let (s, _) = l.accept()?;
            for x in [&s, &c] {
                x.set_nonblocking(true)?;
                x.set_nodelay(true)?;
            }
            Ok((s.into(), c.into()))
        }
    }
}

/// A deterministic, non-repeating-looking byte pattern.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes as much of `data[*off..]` as the socket takes; true when it
/// refused more (full) before everything was written.
fn feed(fd: RawFd, data: &[u8], off: &mut usize) -> bool {
    while *off < data.len() {
        match sys::send(fd, &data[*off..]) {
            Ok(n) => *off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("peer write: {e}"),
        }
    }
    false
}

/// Reads everything available into `got`; true once end of file was read.
fn slurp(fd: RawFd, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match sys::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

/// Turns the loop until `done()` or `limit` passes; whether `done()` held.
/// A tick timer wakes a blocked `ONCE` turn so the deadline is honoured
/// even when nothing happens.
fn run_until(b: &mut EventBase, limit: Duration, mut done: impl FnMut(&mut EventBase) -> bool) -> io::Result<bool> {
    let tick = b.new_timer(|_, _, _| {});
    let end = Instant::now() + limit;
    let r = loop {
        if done(b) {
            break true;
        }
        let now = Instant::now();
        if now >= end {
            break false;
        }
        b.add(tick, Some((end - now).min(ms(20))))?;
        b.run(LoopFlags::ONCE)?;
    };
    b.free(tick);
    Ok(r)
}

/// Turns the loop (at most [`LIMIT`]) while reading `fd` until as many
/// bytes as `want` has came, then asserts they are `want`, byte for byte
/// (one more byte fails too).
fn expect_bytes(b: &mut EventBase, fd: RawFd, want: &[u8], what: &str) -> io::Result<()> {
    let mut got = Vec::new();
    let ok = run_until(b, LIMIT, |_| {
        slurp(fd, &mut got);
        got.len() >= want.len()
    })?;
    assert!(ok, "{what}: stalled at {} of {} bytes", got.len(), want.len());
    assert!(got == want, "{what}: bytes differ ({} of {})", got.len(), want.len());
    Ok(())
}

/// How many `ONCE` turns the loop makes in `dur` with a 20 ms tick timer as
/// the only other event: about `dur / 20ms` unless something spins.
fn turns_in(b: &mut EventBase, dur: Duration) -> io::Result<usize> {
    let tick = b.new_event(-1, EventFlags::PERSIST, |_, _, _| {});
    b.add(tick, Some(ms(20)))?;
    let end = Instant::now() + dur;
    let mut n = 0;
    while Instant::now() < end && n < 100_000 {
        b.run(LoopFlags::ONCE)?;
        n += 1;
    }
    b.free(tick);
    Ok(n)
}

/// CPU time of the calling thread so far (`/proc/thread-self/schedstat`).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// What `/proc/self/fd/<fd>` points at (`socket:[inode]`), if open.
fn fd_target(fd: RawFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// What the read callback does with the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum OnRead {
    /// Leave it.
    #[default]
    Keep,
    /// Move it into `ctx.got`.
    Drain,
    /// Move it into the output (an echo).
    Echo,
    /// Free the bufferevent.
    Free,
    /// Move it to this priority; record the outcome in `ctx.pri`.
    SetPriority(usize),
    /// Answer it as the daemon does: `ctx.framer` moves every complete
    /// line, rotated, to the output.
    Frame,
}

/// What the event callback does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum OnEvent {
    #[default]
    Record,
    Free,
    CloseWhenFlushed,
    /// Add these bytes to the output (no flush).
    Say(&'static [u8]),
}

/// Per-connection state of the test bufferevents: what the callbacks saw.
#[derive(Default)]
struct Ctx {
    on_read: OnRead,
    on_event: OnEvent,
    /// `input.len()` at each read callback.
    seen: Vec<usize>,
    /// Largest `input.len()` / `output.len()` seen in the read callback.
    max_in: usize,
    max_out: usize,
    /// `output.len()` at each write callback.
    out_seen: Vec<usize>,
    events: Vec<BevEvent>,
    /// `last_error()` at each event callback.
    errnos: Vec<Option<i32>>,
    /// `output.len()` at each event callback.
    out_at_event: Vec<usize>,
    got: Vec<u8>,
    closes: usize,
    /// A shared order log, and this bufferevent's name in it.
    log: Rc<RefCell<Vec<String>>>,
    tag: &'static str,
    /// Held by the context: its strong count tells whether the bufferevent
    /// itself was dropped.
    token: Rc<()>,
    /// Another bufferevent the read callback frees (once).
    victim: Option<Bev<Ctx>>,
    /// What the write callback feeds into the output, `chunk` bytes a call.
    produce: Vec<u8>,
    produced: usize,
    chunk: usize,
    /// The write callback frees the bufferevent.
    free_in_write: bool,
    /// OnRead::SetPriority: (whether set_priority succeeded, priority()
    /// before, priority() after).
    pri: Vec<(bool, Option<usize>, Option<usize>)>,
    /// OnRead::Frame: the protocol framer.
    framer: Framer,
}

type TBev = BufferEvent<Ctx>;

fn readcb(base: &mut EventBase, b: &mut TBev) {
    let n = b.input().len();
    b.ctx.seen.push(n);
    b.ctx.max_in = b.ctx.max_in.max(n);
    b.ctx.log.borrow_mut().push(format!("read{}", b.ctx.tag));
    if let Some(v) = b.ctx.victim.take() {
        v.with(|o| o.free(base)).expect("the victim is borrowed");
    }
    match b.ctx.on_read {
        OnRead::Keep => {}
        OnRead::Drain => {
            let mut v = vec![0u8; n];
            assert_eq!(b.input_mut().remove(&mut v), n);
            b.ctx.got.extend_from_slice(&v);
        }
        OnRead::Echo => {
            let (input, output, _) = b.parts_mut();
            output.add_buffer(input);
            b.ctx.max_out = b.ctx.max_out.max(b.pending_output());
        }
        OnRead::Free => b.free(base),
        OnRead::SetPriority(p) => {
            let before = b.priority(base);
            let ok = b.set_priority(base, p).is_ok();
            let after = b.priority(base);
            b.ctx.pri.push((ok, before, after));
            b.input_mut().drain(n);
        }
        OnRead::Frame => {
            let (input, output, ctx) = b.parts_mut();
            ctx.framer.process(input, output);
            ctx.max_out = ctx.max_out.max(output.len());
        }
    }
}

fn writecb(base: &mut EventBase, b: &mut TBev) {
    let n = b.pending_output();
    b.ctx.out_seen.push(n);
    b.ctx.log.borrow_mut().push("write".into());
    if b.ctx.free_in_write {
        b.free(base);
        return;
    }
    let (_, output, c) = b.parts_mut();
    if c.produced < c.produce.len() {
        let end = (c.produced + c.chunk).min(c.produce.len());
        output.add(&c.produce[c.produced..end]);
        c.produced = end;
    }
}

fn eventcb(base: &mut EventBase, b: &mut TBev, ev: BevEvent) {
    b.ctx.events.push(ev);
    b.ctx.errnos.push(b.last_error().and_then(|e| e.raw_os_error()));
    b.ctx.out_at_event.push(b.pending_output());
    b.ctx.log.borrow_mut().push(format!("event {ev:?}"));
    match b.ctx.on_event {
        OnEvent::Record => {}
        OnEvent::Free => b.free(base),
        OnEvent::CloseWhenFlushed => b.close_when_flushed(base),
        OnEvent::Say(bytes) => b.output_mut().add(bytes),
    }
}

fn closecb(base: &mut EventBase, b: &mut TBev) {
    b.ctx.closes += 1;
    b.ctx.log.borrow_mut().push("close".into());
    // Freeing again from the close callback is a no-op.
    b.free(base);
}

/// A bufferevent on `fd` with the recording callbacks.
/// On the io_uring data path the peer can have every byte before the
/// bufferevent has collected its send's completion (the next turn does):
/// turns the loop until it has. A no-op on the readiness path, where a
/// write is done when it returns.
fn settle_data_path(b: &mut EventBase, bev: &Bev<Ctx>) -> io::Result<()> {
    if with(bev, |e| e.is_on_data_path()) {
        assert!(run_until(b, LIMIT, |_| with(bev, |e| e.pending_output() == 0))?, "a send never completed");
        // The completion's turn: callbacks, then the buffers go back.
        b.run(LoopFlags::NONBLOCK)?;
    }
    Ok(())
}

fn new_bev(b: &mut EventBase, fd: OwnedFd, opts: BevOptions, ctx: Ctx) -> io::Result<Bev<Ctx>> {
    let bev = BufferEvent::socket_new(b, fd, opts, ctx)?;
    with(&bev, |e| {
        e.setcb(Some(readcb), Some(writecb), Some(eventcb));
        e.set_closecb(Some(closecb));
    });
    Ok(bev)
}

/// Runs `f` on the bufferevent (outside the loop, so never borrowed).
#[track_caller]
fn with<R>(bev: &Bev<Ctx>, f: impl FnOnce(&mut TBev) -> R) -> R {
    bev.with(f).expect("the bufferevent is borrowed")
}

fn ctx<R>(bev: &Bev<Ctx>, f: impl FnOnce(&Ctx) -> R) -> R {
    with(bev, |e| f(&e.ctx))
}

// ----- read callback and read watermarks ------------------------------------

rtest!(read_low_watermark, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
        with(&bev, |e| {
            e.set_watermark(&mut b, EventFlags::READ, 10, 0);
            e.enable(&mut b, EventFlags::READ)
        })?;
        // One byte below the low mark: read in, but no callback.
        put(&y, &[b'a'; 9])?;
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.input().len()) == 9)?, "{kind:?}: 9 bytes not read");
        for _ in 0..5 {
            b.run(LoopFlags::NONBLOCK)?;
        }
        assert_eq!(ctx(&bev, |c| c.seen.clone()), Vec::<usize>::new(), "{kind:?}: callback below the low mark");
        // At the mark.
        put(&y, b"b")?;
        assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.seen.len()) == 1)?, "{kind:?}: no callback at the mark");
        assert_eq!(ctx(&bev, |c| c.seen.clone()), [10], "{kind:?}");
        // Above it, in one write.
        put(&y, &[b'c'; 11])?;
        assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.seen.len()) == 2)?, "{kind:?}: no callback above");
        assert_eq!(ctx(&bev, |c| c.seen.clone()), [10, 11], "{kind:?}");
        // Below again.
        put(&y, &[b'd'; 9])?;
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.input().len()) == 9)?, "{kind:?}");
        b.run(LoopFlags::NONBLOCK)?;
        assert_eq!(ctx(&bev, |c| c.seen.len()), 2, "{kind:?}");
        assert_eq!(ctx(&bev, |c| c.got.clone()), b"aaaaaaaaabccccccccccc", "{kind:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(read_high_watermark_pauses_without_spinning, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
        const HIGH: usize = 16;
        with(&bev, |e| {
            e.set_watermark(&mut b, EventFlags::READ, 0, HIGH);
            e.enable(&mut b, EventFlags::READ)
        })?;
        let data = pattern(100);
        put(&y, &data)?;
        assert!(run_until(&mut b, LIMIT, |_| !with(&bev, |e| e.is_reading()))?, "{kind:?}: reading never paused");
        with(&bev, |e| {
            assert_eq!(e.input().len(), HIGH, "{kind:?}: input holds exactly the high mark");
            assert!(e.suspended().intersects(Suspend::WATERMARK), "{kind:?}: {:?}", e.suspended());
            assert!(e.enabled().contains(EventFlags::READ), "{kind:?}: still enabled, only suspended");
        });
        let calls = ctx(&bev, |c| c.seen.len());
        assert_eq!(calls, 1, "{kind:?}");

        // Data is waiting in the socket, yet the loop does not spin: the
        // read interest left the backend. Non-blocking turns run nothing
        // and the loop has nothing pending; blocking turns wait for the
        // tick timer only, and the thread stays (nearly) idle.
        for _ in 0..1000 {
            assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}: an event is still pending");
        }
        let cpu0 = thread_cpu();
        let turns = turns_in(&mut b, ms(200))?;
        let cpu = thread_cpu().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
        assert!(turns <= 40, "{kind:?}: {turns} turns in 200 ms: the loop spins");
        if let Some(cpu) = cpu {
            assert!(cpu < ms(100), "{kind:?}: {cpu:?} of CPU in 200 ms while paused");
        }
        assert_eq!(ctx(&bev, |c| c.seen.len()), calls, "{kind:?}: callback while paused");
        assert_eq!(with(&bev, |e| e.input().len()), HIGH, "{kind:?}: read while paused");

        // The owner consumes input outside a callback: reading resumes.
        with(&bev, |e| {
            let mut v = vec![0u8; HIGH];
            e.input_mut().remove(&mut v);
            e.ctx.got.extend_from_slice(&v);
            e.input_consumed(&mut b);
            assert!(e.is_reading(), "{kind:?}: reading did not resume");
            assert!(e.suspended().is_empty(), "{kind:?}");
        });
        // From now on the callback drains: reading goes on by itself.
        with(&bev, |e| e.ctx.on_read = OnRead::Drain);
        assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.got.len()) == data.len())?, "{kind:?}: stalled");
        ctx(&bev, |c| {
            assert_eq!(c.got, data, "{kind:?}");
            assert!(c.max_in <= HIGH, "{kind:?}: input reached {} > {HIGH}", c.max_in);
        });
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

// ----- write watermark ---------------------------------------------------------

/// Sends `n` bytes through a bufferevent with write low mark `low` to a
/// peer that reads everything as it comes; the write callback's view.
fn write_low_case(be: Backend, kind: Link, low: usize, n: usize) -> io::Result<Vec<usize>> {
    let mut b = be.base()?;
    let (x, y) = link(kind, true)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    let data = pattern(n);
    with(&bev, |e| {
        e.set_watermark(&mut b, EventFlags::WRITE, low, 0);
        e.output_mut().add(&data);
        e.enable(&mut b, EventFlags::WRITE)
    })?;
    expect_bytes(&mut b, y.as_raw_fd(), &data, &format!("{kind:?}"))?;
    settle_data_path(&mut b, &bev)?;
    let seen = ctx(&bev, |c| c.out_seen.clone());
    with(&bev, |e| e.free(&mut b));
    Ok(seen)
}

rtest!(write_low_watermark, |be| {
    const N: usize = 1 << 20;
    for kind in LINKS {
        // Low mark 0: the callback runs once, when everything went out.
        assert_eq!(write_low_case(be, kind, 0, N)?, [0], "{kind:?}");
        // Low mark above the total: it runs after the first partial write,
        // with output still pending.
        let seen = write_low_case(be, kind, 2 * N, N)?;
        assert!(seen.len() >= 2 && seen[0] > 0, "{kind:?}: {seen:?}");
        assert_eq!(seen.last(), Some(&0), "{kind:?}");
        // In between: only at or below the mark.
        let low = N / 4;
        let seen = write_low_case(be, kind, low, N)?;
        assert!(!seen.is_empty(), "{kind:?}");
        assert!(seen.iter().all(|&l| l <= low), "{kind:?}: callback above the low mark: {seen:?}");
        assert_eq!(seen.last(), Some(&0), "{kind:?}");
    }
    Ok(())
});

rtest!(output_added_by_the_write_callback_is_sent, |be| {
    // The classic producer: the write callback refills the output each
    // time it drained (to the low mark). No flush: it is a callback of
    // this bufferevent, so its output is written through.
    const N: usize = 512 * 1024;
    for opts in [BevOptions::default(), BevOptions::DEFER_CALLBACKS] {
        for (kind, low, chunk) in [(Link::Unix, 0, 16 * 1024), (Link::Tcp, 0, 16 * 1024), (Link::Unix, 0, 100)] {
            let what = format!("{opts:?} {kind:?} low={low} chunk={chunk}");
            let mut b = be.base()?;
            let (x, y) = link(kind, false)?;
            let data = pattern(if chunk < 1000 { 64 * 1024 } else { N });
            let c = Ctx { produce: data.clone(), chunk, ..Ctx::default() };
            let bev = new_bev(&mut b, x, opts, c)?;
            with(&bev, |e| {
                e.set_watermark(&mut b, EventFlags::WRITE, low, 0);
                e.ctx.produced = chunk;
                e.output_mut().add(&data[..chunk]);
                e.enable(&mut b, EventFlags::WRITE)
            })?;
            let mut got = Vec::new();
            let ok = run_until(&mut b, LIMIT, |_| {
                slurp(y.as_raw_fd(), &mut got);
                got.len() == data.len()
            })?;
            assert!(
                ok,
                "{what}: stalled at {} of {} (output {})",
                got.len(),
                data.len(),
                with(&bev, |e| e.pending_output())
            );
            assert!(got == data, "{what}: bytes differ");
            with(&bev, |e| e.free(&mut b));
        }
    }
    Ok(())
});

rtest!(output_added_by_the_event_callback_is_sent, |be| {
    for opts in [BevOptions::default(), BevOptions::DEFER_CALLBACKS] {
        let mut b = be.base()?;
        let (x, y) = link(Link::Unix, false)?;
        let bev = new_bev(&mut b, x, opts, Ctx { on_event: OnEvent::Say(b"idle, bye\n"), ..Ctx::default() })?;
        with(&bev, |e| {
            e.set_timeouts(&mut b, Some(ms(20)), None);
            e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
        })?;
        let mut got = Vec::new();
        let ok = run_until(&mut b, ms(2000), |_| {
            slurp(y.as_raw_fd(), &mut got);
            !got.is_empty()
        })?;
        assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::READING | BevEvent::TIMEOUT], "{opts:?}");
        assert!(ok, "{opts:?}: the event callback's output was not sent");
        assert_eq!(got, b"idle, bye\n", "{opts:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

// ----- output backpressure -----------------------------------------------------

/// An echo with output backpressure `(HIGH, LOW)` and a peer that writes
/// 1 MiB without reading, then reads. With `write_first` false, WRITE is
/// enabled only once the peer starts reading (the output cannot drain at
/// all until then).
fn backpressure_case(be: Backend, kind: Link, opts: BevOptions, write_first: bool) -> io::Result<()> {
    const N: usize = 1 << 20;
    const HIGH: usize = 64 * 1024;
    const LOW: usize = 16 * 1024;
    let what = format!("{kind:?} {opts:?} write_first={write_first}");
    let mut b = be.base()?;
    let (x, y) = link(kind, true)?;
    let bev = new_bev(&mut b, x, opts, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
    let read_size = with(&bev, |e| {
        e.set_backpressure(&mut b, HIGH, LOW);
        e.input().read_size()
    });
    let first = if write_first { EventFlags::READ | EventFlags::WRITE } else { EventFlags::READ };
    with(&bev, |e| e.enable(&mut b, first))?;
    let data = pattern(N);
    let yfd = y.as_raw_fd();
    let mut off = 0;
    // The peer writes and does not read: the echo piles up in the output
    // until reading pauses; then the peer's own writes block.
    let paused = run_until(&mut b, LIMIT, |_| {
        let full = feed(yfd, &data, &mut off);
        full && with(&bev, |e| e.suspended().intersects(Suspend::BACKPRESSURE))
    })?;
    assert!(paused, "{what}: reading never paused (fed {off}, output {})", with(&bev, |e| e.pending_output()));
    let (out, reads) = with(&bev, |e| {
        assert!(!e.is_reading(), "{what}");
        assert!(e.pending_output() > HIGH, "{what}: paused at {} <= high", e.pending_output());
        (e.pending_output(), e.ctx.seen.len())
    });
    // Paused means paused: turns read nothing more.
    for _ in 0..200 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(with(&bev, |e| (e.pending_output(), e.ctx.seen.len())), (out, reads), "{what}");
    assert!(off < N, "{what}: the whole input went in while paused");

    // The peer reads: output drains, reading resumes, all arrives.
    if !write_first {
        with(&bev, |e| e.enable(&mut b, EventFlags::WRITE))?;
    }
    let mut got = Vec::new();
    let mut resumed = false;
    let ok = run_until(&mut b, LIMIT, |_| {
        feed(yfd, &data, &mut off);
        slurp(yfd, &mut got);
        with(&bev, |e| {
            // Hysteresis: never paused at or below the low mark.
            if e.suspended().intersects(Suspend::BACKPRESSURE) {
                assert!(e.pending_output() > LOW, "{what}: still paused at {}", e.pending_output());
            } else {
                resumed = true;
            }
        });
        got.len() == N
    })?;
    assert!(ok, "{what}: stalled at {} of {N} (fed {off})", got.len());
    assert!(resumed, "{what}");
    assert!(got == data, "{what}: echoed bytes differ");
    let max_out = ctx(&bev, |c| c.max_out);
    assert!(max_out <= HIGH + read_size, "{what}: output reached {max_out} > {HIGH} + {read_size}");
    with(&bev, |e| {
        assert!(e.suspended().is_empty(), "{what}: {:?}", e.suspended());
        e.free(&mut b)
    });
    Ok(())
}

rtest!(output_backpressure_bounds_memory_and_loses_nothing, |be| {
    for kind in LINKS {
        backpressure_case(be, kind, BevOptions::default(), true)?;
    }
    backpressure_case(be, Link::Tcp, BevOptions::DEFER_CALLBACKS, true)?;
    Ok(())
});

rtest!(output_backpressure_holds_while_writing_is_disabled, |be| {
    for kind in LINKS {
        backpressure_case(be, kind, BevOptions::default(), false)?;
    }
    Ok(())
});

/// The daemon's connection (a [`Framer`] answering lines, backpressure at
/// the default 256 KiB / 64 KiB, 64 KiB reads) against a peer that sends
/// `line`-byte lines and never reads. SPEC §1 bounds the connection's
/// memory by `max_line` + the high watermark + one read buffer; measured
/// here as the heap both buffers hold (blocks and chunk arrays) once
/// reading has paused, minus the chunk arrays' few hundred bytes
/// (`ARRAYS`, the one allowance).
fn framed_memory_case(be: Backend, line: usize) -> io::Result<usize> {
    const HIGH: usize = 256 * 1024;
    const LOW: usize = 64 * 1024;
    const MAX_LINE: usize = 16384;
    /// The two chunk arrays: a few slots of 40 bytes each.
    const ARRAYS: usize = 1024;
    let mut b = be.base()?;
    let (x, y) = link(Link::Tcp, false)?;
    let ctx = Ctx { on_read: OnRead::Frame, framer: Framer::new(MAX_LINE), ..Ctx::default() };
    let bev = new_bev(&mut b, x, BevOptions::default(), ctx)?;
    let read_size = with(&bev, |e| {
        e.set_backpressure(&mut b, HIGH, LOW);
        e.input().read_size()
    });
    with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
    // About 1 MiB of lines, sent over and over.
    let mut data = Vec::new();
    for i in 0..(1 << 20) / line + 1 {
        data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, line - 1));
        data.push(b'\n');
    }
    let yfd = y.as_raw_fd();
    let (mut off, mut fed) = (0, 0);
    let paused = run_until(&mut b, LIMIT, |_| {
        let before = off;
        let full = feed(yfd, &data, &mut off);
        fed += off - before;
        if off == data.len() {
            off = 0;
        }
        full && with(&bev, |e| e.suspended().intersects(Suspend::BACKPRESSURE))
    })?;
    assert!(paused, "{line} B lines: reading never paused (fed {fed})");
    let (held, bytes) =
        with(&bev, |e| (e.input().heap_size() + e.output().heap_size(), e.input().len() + e.output().len()));
    let bound = MAX_LINE + HIGH + read_size;
    assert!(
        held <= bound + ARRAYS,
        "{line} B lines: paused holding {held} bytes of heap for {bytes} bytes queued, more than {MAX_LINE} + {HIGH} + {read_size} = {bound} (+ {ARRAYS})"
    );
    with(&bev, |e| e.free(&mut b));
    Ok(held)
}

rtest!(framed_connection_memory_stays_within_the_spec_bound, |be| {
    // Short lines, lines of about a quarter of a read (each read leaves a
    // long partial line behind), max_line-long lines, and overlong lines
    // cut into pieces.
    for line in [100, 16_000, 16_385, 40_000] {
        let held = framed_memory_case(be, line)?;
        eprintln!("{line} B lines: paused holding {held} bytes of heap");
    }
    Ok(())
});

rtest!(output_backpressure_hysteresis, |be| {
    let mut b = be.base()?;
    let (x, _y) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    with(&bev, |e| -> io::Result<()> {
        e.enable(&mut b, EventFlags::READ)?;
        // Pending output above the high mark when it is set: paused.
        e.output_mut().add(&[0; 100]);
        e.set_backpressure(&mut b, 50, 20);
        assert!(e.suspended().intersects(Suspend::BACKPRESSURE) && !e.is_reading());
        // Below high but above low: still paused (re-checked by setting
        // the same marks again).
        e.output_mut().drain(60);
        e.set_backpressure(&mut b, 50, 20);
        assert!(e.suspended().intersects(Suspend::BACKPRESSURE), "resumed at 40 > low 20");
        // At low: resumes.
        e.output_mut().drain(20);
        e.set_backpressure(&mut b, 50, 20);
        assert!(e.suspended().is_empty() && e.is_reading());
        // Turning backpressure off lifts a pause.
        e.output_mut().add(&[0; 100]);
        e.set_backpressure(&mut b, 50, 20);
        assert!(!e.is_reading());
        e.set_backpressure(&mut b, 0, 0);
        assert!(e.suspended().is_empty() && e.is_reading());
        // Independent of the other reasons: a USER pause outlives it.
        e.suspend_read(&mut b, Suspend::USER);
        e.set_backpressure(&mut b, 50, 20);
        e.output_mut().drain(100);
        e.set_backpressure(&mut b, 50, 20);
        assert_eq!(e.suspended(), Suspend::USER);
        assert!(!e.is_reading());
        e.unsuspend_read(&mut b, Suspend::USER);
        assert!(e.is_reading());
        e.free(&mut b);
        Ok(())
    })
});

rtest!(echo_under_every_limit_loses_nothing, |be| {
    // An echo with a small read high watermark, output backpressure and
    // (or not) deferred callbacks, against a peer that writes and reads
    // at the same time: every byte comes back, in order, and the input
    // never holds more than the high mark.
    const N: usize = 256 * 1024;
    const HIGH_IN: usize = 3000;
    for opts in [BevOptions::default(), BevOptions::DEFER_CALLBACKS] {
        for kind in LINKS {
            let mut b = be.base()?;
            let (x, y) = link(kind, true)?;
            let bev = new_bev(&mut b, x, opts, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
            with(&bev, |e| {
                e.set_watermark(&mut b, EventFlags::READ, 0, HIGH_IN);
                e.set_backpressure(&mut b, 8 * 1024, 2 * 1024);
                e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
            })?;
            let data = pattern(N);
            let (mut off, mut got) = (0, Vec::new());
            let ok = run_until(&mut b, LIMIT, |_| {
                feed(y.as_raw_fd(), &data, &mut off);
                slurp(y.as_raw_fd(), &mut got);
                got.len() == N
            })?;
            assert!(ok, "{opts:?} {kind:?}: stalled at {} (fed {off})", got.len());
            assert!(got == data, "{opts:?} {kind:?}: bytes differ");
            assert!(ctx(&bev, |c| c.max_in) <= HIGH_IN, "{opts:?} {kind:?}");
            with(&bev, |e| e.free(&mut b));
        }
    }
    Ok(())
});

// ----- EOF and close when flushed ------------------------------------------------

rtest!(eof_then_close_when_flushed_sends_everything, |be| {
    const N: usize = 512 * 1024;
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, true)?;
        let c = Ctx { on_read: OnRead::Echo, on_event: OnEvent::CloseWhenFlushed, ..Ctx::default() };
        let token = c.token.clone();
        let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
        with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
        let data = pattern(N);
        let yfd = y.as_raw_fd();
        let mut off = 0;
        let mut shut = false;
        // The peer sends everything and its FIN without reading: the echo
        // waits in the output when EOF arrives.
        let eof = run_until(&mut b, LIMIT, |_| {
            if !feed(yfd, &data, &mut off) && !shut {
                sys::shutdown_write(yfd).expect("shutdown");
                shut = true;
            }
            !ctx(&bev, |c| c.events.is_empty())
        })?;
        assert!(eof, "{kind:?}: no EOF");
        with(&bev, |e| {
            assert_eq!(e.ctx.events, [BevEvent::READING | BevEvent::EOF], "{kind:?}");
            assert!(e.ctx.out_at_event[0] > 0, "{kind:?}: nothing pending at EOF: the test proves nothing");
            assert!(e.is_closing() && !e.is_freed(), "{kind:?}");
            assert!(!e.is_reading(), "{kind:?}");
        });
        // Now the peer reads: every byte, then end of file.
        let mut got = Vec::new();
        let mut peer_eof = false;
        assert!(run_until(&mut b, LIMIT, |_| {
            peer_eof = slurp(yfd, &mut got);
            peer_eof
        })?);
        assert_eq!(got.len(), N, "{kind:?}");
        assert!(got == data, "{kind:?}: bytes differ");
        with(&bev, |e| {
            assert!(e.is_freed(), "{kind:?}");
            assert_eq!(e.ctx.closes, 1, "{kind:?}");
            assert_eq!(e.ctx.events.len(), 1, "{kind:?}: {:?}", e.ctx.events);
        });
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}: events left");
        drop(bev);
        assert_eq!(Rc::strong_count(&token), 1, "{kind:?}: the base still holds the bufferevent");
    }
    Ok(())
});

rtest!(eof_without_output_is_reported, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
        with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
        put(&y, b"last words")?;
        drop(y);
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}");
        with(&bev, |e| {
            assert_eq!(e.ctx.got, b"last words", "{kind:?}");
            assert_eq!(e.ctx.events, [BevEvent::READING | BevEvent::EOF], "{kind:?}");
            assert!(!e.enabled().contains(EventFlags::READ) && !e.is_reading(), "{kind:?}: reading after EOF");
        });
        // Nothing left to spin on.
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(half_close_eof_then_still_writing, |be| {
    // The peer shuts down its sending side only: EOF is reported, reading
    // stops, and the bufferevent can still answer.
    for kind in LINKS {
        let mut b = be.base()?;
        let (bev, y) = enabled_bev(&mut b, kind, Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
        put(&y, b"question")?;
        sys::shutdown_write(y.as_raw_fd())?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}");
        ctx(&bev, |c| {
            assert_eq!(c.got, b"question", "{kind:?}");
            assert_eq!(c.events, [BevEvent::READING | BevEvent::EOF], "{kind:?}");
        });
        with(&bev, |e| {
            e.output_mut().add(b"answer");
            e.flush(&mut b);
        });
        let mut got = Vec::new();
        slurp(y.as_raw_fd(), &mut got);
        assert_eq!(got, b"answer", "{kind:?}");
        with(&bev, |e| e.close_when_flushed(&mut b));
        got.clear();
        assert!(slurp(y.as_raw_fd(), &mut got), "{kind:?}: no EOF after close");
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
    }
    Ok(())
});

// ----- reset by peer -------------------------------------------------------------

/// The peer closes abortively: with SO_LINGER 0 for TCP; for an AF_UNIX
/// socket, by closing with unread data (the kernel then resets the pair).
fn abort_peer(kind: Link, y: OwnedFd) -> io::Result<()> {
    if kind == Link::Tcp {
        sys::set_linger_zero(y.as_raw_fd())?;
    }
    drop(y);
    Ok(())
}

rtest!(reset_while_reading_reports_error_and_free_releases_all, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let c = Ctx { on_read: OnRead::Drain, on_event: OnEvent::Free, ..Ctx::default() };
        let token = c.token.clone();
        let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
        let fd = with(&bev, |e| e.fd());
        let target = fd_target(fd).expect("bufferevent fd open");
        with(&bev, |e| {
            // Unread data at the peer makes an AF_UNIX close a reset.
            e.output_mut().add(b"unread");
            e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
        })?;
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.pending_output() == 0))?);
        abort_peer(kind, y)?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}: nothing reported");
        with(&bev, |e| {
            let ev = e.ctx.events[0];
            assert!(ev.contains(BevEvent::ERROR), "{kind:?}: {ev:?}");
            assert!(ev.contains(BevEvent::READING) || ev.contains(BevEvent::WRITING), "{kind:?}: {ev:?}");
            let errno = e.ctx.errnos[0];
            assert!(matches!(errno, Some(libc::ECONNRESET | libc::EPIPE)), "{kind:?}: errno {errno:?}");
            assert!(e.is_freed(), "{kind:?}");
            assert_eq!(e.ctx.closes, 1, "{kind:?}");
            assert_eq!(e.fd(), -1, "{kind:?}");
            assert_eq!(e.ctx.events.len(), 1, "{kind:?}: {:?}", e.ctx.events);
        });
        // The socket is closed (the number may be reused: compare what it
        // names), and the base holds nothing of the bufferevent.
        assert_ne!(fd_target(fd), Some(target), "{kind:?}: the socket is still open");
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
        drop(bev);
        assert_eq!(Rc::strong_count(&token), 1, "{kind:?}: the bufferevent was not dropped");
    }
    Ok(())
});

rtest!(reset_while_writing_reports_error, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, true)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_event: OnEvent::Free, ..Ctx::default() })?;
        // Only writing: the reset must be seen by the write path.
        with(&bev, |e| {
            e.output_mut().add(&pattern(1 << 20));
            e.enable(&mut b, EventFlags::WRITE)
        })?;
        abort_peer(kind, y)?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}: nothing reported");
        with(&bev, |e| {
            assert_eq!(e.ctx.events, [BevEvent::WRITING | BevEvent::ERROR], "{kind:?}");
            let errno = e.ctx.errnos[0];
            assert!(matches!(errno, Some(libc::ECONNRESET | libc::EPIPE)), "{kind:?}: errno {errno:?}");
            assert!(e.is_freed(), "{kind:?}");
        });
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
    }
    Ok(())
});

/// An owner that records an error and keeps the bufferevent for a while
/// (frees it later): the dead socket must not keep the loop busy, nor be
/// reported again and again. `what` is what is enabled.
fn error_kept_case(be: Backend, kind: Link, what: EventFlags) -> io::Result<Vec<BevEvent>> {
    let mut b = be.base()?;
    let (x, y) = link(kind, true)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    with(&bev, |e| {
        // Unread data at the peer (the AF_UNIX reset), and more pending.
        e.output_mut().add(&pattern(1 << 20));
        e.enable(&mut b, what)
    })?;
    abort_peer(kind, y)?;
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}: nothing reported");
    let turns = turns_in(&mut b, ms(100))?;
    assert!(turns <= 20, "{kind:?} {what:?}: {turns} turns in 100 ms after the error: the loop spins");
    let events = ctx(&bev, |c| c.events.clone());
    assert!(events.iter().all(|e| e.contains(BevEvent::ERROR)), "{kind:?} {what:?}: {events:?}");
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?} {what:?}: events left after the error");
    with(&bev, |e| e.free(&mut b));
    Ok(events)
}

rtest!(errors_disable_the_failed_direction, |be| {
    for kind in LINKS {
        let ev = error_kept_case(be, kind, EventFlags::WRITE)?;
        assert_eq!(ev, [BevEvent::WRITING | BevEvent::ERROR], "{kind:?}");
        let ev = error_kept_case(be, kind, EventFlags::READ | EventFlags::WRITE)?;
        assert!(ev.len() <= 2, "{kind:?}: {ev:?}");
    }
    Ok(())
});

rtest!(close_when_flushed_after_a_write_error_frees, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, true)?;
        // An owner that answers every event with close_when_flushed.
        let c = Ctx { on_event: OnEvent::CloseWhenFlushed, ..Ctx::default() };
        let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
        with(&bev, |e| {
            e.output_mut().add(&pattern(1 << 20));
            e.enable(&mut b, EventFlags::WRITE)
        })?;
        abort_peer(kind, y)?;
        // Output that can never be delivered: it gives up and frees, once.
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "{kind:?}: never freed");
        ctx(&bev, |c| {
            assert_eq!(c.events, [BevEvent::WRITING | BevEvent::ERROR], "{kind:?}");
            assert_eq!(c.closes, 1, "{kind:?}");
        });
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
    }
    Ok(())
});

rtest!(read_error_is_reported_once, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
        with(&bev, |e| {
            e.output_mut().add(b"unread");
            e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
        })?;
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.pending_output() == 0))?);
        abort_peer(kind, y)?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}");
        for _ in 0..20 {
            b.run(LoopFlags::NONBLOCK)?;
        }
        with(&bev, |e| {
            assert_eq!(e.ctx.events, [BevEvent::READING | BevEvent::ERROR], "{kind:?}");
            assert!(!e.is_reading(), "{kind:?}");
            e.free(&mut b);
        });
    }
    Ok(())
});

rtest!(without_an_event_callback_eof_and_errors_free, |be| {
    for opts in [BevOptions::default(), BevOptions::DEFER_CALLBACKS] {
        for kind in LINKS {
            let mut b = be.base()?;
            let (x, y) = link(kind, false)?;
            let c = Ctx { on_read: OnRead::Drain, ..Ctx::default() };
            let token = c.token.clone();
            let bev = new_bev(&mut b, x, opts, c)?;
            with(&bev, |e| {
                e.setcb(Some(readcb), None, None);
                e.enable(&mut b, EventFlags::READ)
            })?;
            put(&y, b"bye")?;
            drop(y);
            let freed = run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?;
            assert!(freed, "{opts:?} {kind:?}: EOF with nobody listening did not free");
            // The data before the EOF still reached the read callback.
            assert_eq!(ctx(&bev, |c| (c.got.clone(), c.closes)), (b"bye".to_vec(), 1), "{opts:?} {kind:?}");
            assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{opts:?} {kind:?}");
            drop(bev);
            assert_eq!(Rc::strong_count(&token), 1, "{opts:?} {kind:?}");
        }
    }
    Ok(())
});

// ----- timeouts ----------------------------------------------------------------------

rtest!(read_timeout_fires_and_disables_reading, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, _y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
        let t0 = Watch::start(&b);
        with(&bev, |e| {
            e.set_timeouts(&mut b, Some(ms(100)), None);
            e.enable(&mut b, EventFlags::READ)
        })?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}: no timeout");
        let el = t0.elapsed();
        assert!(el >= ms(100), "{kind:?}: fired after {el:?}");
        assert!(el < ms(3000), "{kind:?}: fired after {el:?}");
        with(&bev, |e| {
            assert_eq!(e.ctx.events, [BevEvent::READING | BevEvent::TIMEOUT], "{kind:?}");
            assert!(!e.enabled().contains(EventFlags::READ), "{kind:?}");
            assert!(!e.is_reading(), "{kind:?}");
        });
        // Disabled: it does not fire again.
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(read_timeout_rearms_on_data, |be| {
    for common in [false, true] {
        read_timeout_rearm_case(be, common)?;
    }
    Ok(())
});

/// `common`: the timeout is a common timeout of the base (the O(1) queue
/// the daemon uses for its idle timeout).
fn read_timeout_rearm_case(be: Backend, common: bool) -> io::Result<()> {
    let mut b = be.base()?;
    if common {
        b.init_common_timeout(ms(150))?;
    }
    let (x, y) = link(Link::Tcp, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    let t0 = Watch::start(&b);
    with(&bev, |e| {
        e.set_timeouts(&mut b, Some(ms(150)), None);
        e.enable(&mut b, EventFlags::READ)
    })?;
    // Data at 80 ms and 160 ms, each before the timeout counted from the
    // previous activity.
    let yfd = y.as_raw_fd();
    for at in [80, 160] {
        b.once(-1, EventFlags::NONE, Some(ms(at)), move |_, _| {
            sys::write(yfd, b"x").expect("peer write");
        })?;
    }
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    let el = t0.elapsed();
    // The last data came at >= 160 ms, so the timeout cannot fire before
    // 160 + 150 ms.
    assert!(el >= ms(310), "common={common}: fired after {el:?}");
    assert!(el < ms(5000), "common={common}: fired after {el:?}");
    ctx(&bev, |c| {
        assert_eq!(c.got, b"xx", "common={common}");
        assert_eq!(c.events, [BevEvent::READING | BevEvent::TIMEOUT], "common={common}");
    });
    with(&bev, |e| e.free(&mut b));
    Ok(())
}

rtest!(write_timeout_fires_when_the_peer_does_not_read, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, _y) = link(kind, true)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
        let t0 = Watch::start(&b);
        with(&bev, |e| {
            e.set_timeouts(&mut b, None, Some(ms(100)));
            e.output_mut().add(&pattern(1 << 20));
            e.enable(&mut b, EventFlags::WRITE)
        })?;
        assert!(with(&bev, |e| e.pending_output() > 0), "{kind:?}: the socket took 1 MiB");
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?, "{kind:?}: no timeout");
        let el = t0.elapsed();
        assert!(el >= ms(100), "{kind:?}: fired after {el:?}");
        assert!(el < ms(3000), "{kind:?}: fired after {el:?}");
        with(&bev, |e| {
            assert_eq!(e.ctx.events, [BevEvent::WRITING | BevEvent::TIMEOUT], "{kind:?}");
            assert!(!e.enabled().contains(EventFlags::WRITE), "{kind:?}");
            assert!(e.pending_output() > 0, "{kind:?}: output is kept");
        });
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}: write event left");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(write_timeout_rearms_on_progress, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Tcp, true)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    let t0 = Watch::start(&b);
    with(&bev, |e| {
        e.set_timeouts(&mut b, None, Some(ms(150)));
        e.output_mut().add(&pattern(4 << 20));
        e.enable(&mut b, EventFlags::WRITE)
    })?;
    // The peer reads everything there is at 80 ms and at 160 ms: the
    // bufferevent makes progress each time, which restarts the timeout.
    let yfd = y.as_raw_fd();
    let read_at = Rc::new(RefCell::new(Vec::new()));
    for at in [80, 160] {
        let r = read_at.clone();
        b.once(-1, EventFlags::NONE, Some(ms(at)), move |_, _| {
            let mut got = Vec::new();
            slurp(yfd, &mut got);
            r.borrow_mut().push(got.len());
        })?;
    }
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    let el = t0.elapsed();
    assert!(read_at.borrow().iter().all(|&n| n > 0), "the peer read nothing: {:?}", read_at.borrow());
    assert!(el >= ms(310), "fired after {el:?}");
    assert!(el < ms(5000), "fired after {el:?}");
    assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::WRITING | BevEvent::TIMEOUT]);
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

rtest!(timeouts_can_be_changed_and_cleared, |be| {
    let mut b = be.base()?;
    let (x, _y) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    // Cleared while pending: never fires.
    with(&bev, |e| {
        e.set_timeouts(&mut b, Some(ms(30)), None);
        e.enable(&mut b, EventFlags::READ)?;
        e.set_timeouts(&mut b, None, None);
        Ok::<_, io::Error>(())
    })?;
    assert!(!run_until(&mut b, ms(150), |_| !ctx(&bev, |c| c.events.is_empty()))?, "a cleared timeout fired");
    // Set while reading is already enabled: it applies at once.
    let t0 = Watch::start(&b);
    with(&bev, |e| e.set_timeouts(&mut b, Some(ms(60)), None));
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    assert!(t0.elapsed() >= ms(60), "{:?}", t0.elapsed());
    assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::READING | BevEvent::TIMEOUT]);
    // Enabled again, it counts afresh.
    let t1 = Watch::start(&b);
    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.events.len()) == 2)?);
    assert!(t1.elapsed() >= ms(60), "{:?}", t1.elapsed());
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

rtest!(a_paused_reader_does_not_time_out, |be| {
    // Reading paused at the high watermark takes the read event, and so
    // its timeout, out of the loop (as libevent's suspend does); the
    // timeout counts afresh once reading resumes.
    let mut b = be.base()?;
    let (x, y) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    with(&bev, |e| {
        e.set_watermark(&mut b, EventFlags::READ, 0, 4);
        e.set_timeouts(&mut b, Some(ms(50)), None);
        e.enable(&mut b, EventFlags::READ)
    })?;
    put(&y, b"12345678")?;
    assert!(run_until(&mut b, LIMIT, |_| !with(&bev, |e| e.is_reading()))?);
    assert!(!run_until(&mut b, ms(150), |_| !ctx(&bev, |c| c.events.is_empty()))?, "timed out while paused");
    let t0 = Watch::start(&b);
    with(&bev, |e| {
        e.input_mut().drain(4);
        e.input_consumed(&mut b);
    });
    // The other 4 bytes come in (and pause it again) ...
    assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.seen.len()) == 2)?);
    with(&bev, |e| {
        e.input_mut().drain(4);
        e.input_consumed(&mut b);
    });
    // ... then silence: the timeout fires, counted from the resume.
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    assert!(t0.elapsed() >= ms(50));
    assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::READING | BevEvent::TIMEOUT]);
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

// ----- connect -------------------------------------------------------------------------

rtest!(connect_reports_connected_and_sends_queued_output, |be| {
    let mut b = be.base()?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let bev = BufferEvent::connect(&mut b, l.local_addr()?, Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    with(&bev, |e| {
        e.setcb(Some(readcb), Some(writecb), Some(eventcb));
        // Queued before the connection is up: sent once it is.
        e.output_mut().add(b"hello");
        e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
    })?;
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::CONNECTED]);
    l.set_nonblocking(true)?;
    let mut srv = None;
    assert!(run_until(&mut b, LIMIT, |_| {
        srv = srv.take().or_else(|| l.accept().ok().map(|(s, _)| s));
        srv.is_some()
    })?);
    let srv = OwnedFd::from(srv.expect("accepted"));
    sys::set_nonblocking(srv.as_raw_fd(), true)?;
    let mut got = Vec::new();
    assert!(run_until(&mut b, LIMIT, |_| {
        slurp(srv.as_raw_fd(), &mut got);
        got.len() >= 5
    })?);
    assert_eq!(got, b"hello");
    // And the other way.
    put(&srv, b"world")?;
    assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.got.len()) == 5)?);
    assert_eq!(ctx(&bev, |c| c.got.clone()), b"world");
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

/// A listener whose accept queue is full (backlog 0, filled by four
/// connects): it drops further SYNs, so a connect to it stays under way.
/// The listener, the fillers and its address.
fn full_listener() -> io::Result<(socket2::Socket, Vec<socket2::Socket>, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    l.listen(0)?;
    let addr = l.local_addr()?.as_socket().expect("an inet address");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let c = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)?;
        let _ = c.connect(&addr.into());
        fillers.push(c);
    }
    Ok((l, fillers, addr))
}

/// Connects where the refusal cannot come at once, with `enable` (if any)
/// called while the connect is under way; the events seen. A listener with
/// a full accept queue drops the SYN (the connect is under way for sure);
/// then it closes, and the SYN's retransmission, about 1 s later, meets a
/// closed port: the refusal always arrives through the loop, so the error
/// path always runs (a refusal on the spot would return Err from connect).
fn refused_case(be: Backend, enable: EventFlags) -> io::Result<Vec<BevEvent>> {
    let mut b = be.base()?;
    let (l, fillers, addr) = full_listener()?;
    let bev = BufferEvent::connect(&mut b, addr, Ctx::default())?;
    drop(l);
    drop(fillers);
    with(&bev, |e| {
        e.setcb(Some(readcb), Some(writecb), Some(eventcb));
        e.enable(&mut b, enable)
    })?;
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    // The owner has not freed it yet: the dead socket must not keep the
    // loop busy (it polls ready for ever) nor be reported again.
    let turns = turns_in(&mut b, ms(100))?;
    assert!(turns <= 20, "{enable:?}: {turns} turns in 100 ms: the failed connect spins");
    let (events, errnos) = ctx(&bev, |c| (c.events.clone(), c.errnos.clone()));
    assert_eq!(events.len(), 1, "{enable:?}: {events:?}");
    assert!(events[0].contains(BevEvent::ERROR), "{enable:?}: {events:?}");
    assert_eq!(errnos[0], Some(libc::ECONNREFUSED), "{enable:?}");
    with(&bev, |e| e.free(&mut b));
    Ok(events)
}

rtest!(connect_to_a_closed_port_reports_refused, |be| {
    assert_eq!(refused_case(be, EventFlags::NONE)?, [BevEvent::ERROR]);
    // Reading enabled before the connect finished: the error is still the
    // connect's, reported once, and never followed by CONNECTED.
    refused_case(be, EventFlags::READ | EventFlags::WRITE)?;
    Ok(())
});

rtest!(connect_timeout, |be| {
    // A listener whose accept queue is full drops further SYNs, so a
    // connect to it stays under way: the write timeout bounds it.
    let mut b = be.base()?;
    let (_l, _fillers, addr) = full_listener()?;
    let t0 = Watch::start(&b);
    let bev = BufferEvent::connect(&mut b, addr, Ctx::default())?;
    with(&bev, |e| {
        e.setcb(Some(readcb), Some(writecb), Some(eventcb));
        e.set_timeouts(&mut b, None, Some(ms(100)));
    });
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
    let el = t0.elapsed();
    let ev = ctx(&bev, |c| c.events[0]);
    assert_eq!(ev, BevEvent::WRITING | BevEvent::TIMEOUT, "the connect was not held up: the test proves nothing");
    assert!(el >= ms(100), "fired after {el:?}");
    assert!(el < ms(3000), "fired after {el:?}");
    // Kept by the owner, the pending connect neither busies the loop nor
    // reports its timeout again each period (the write event that timed
    // it is no longer armed).
    let turns = turns_in(&mut b, ms(350))?;
    assert!(turns <= 40, "{turns} turns in 350 ms");
    let events = ctx(&bev, |c| c.events.clone());
    assert_eq!(events, [BevEvent::WRITING | BevEvent::TIMEOUT], "the connect timeout repeated");
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

// ----- enable / disable --------------------------------------------------------------

rtest!(enable_and_disable, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    // Nothing enabled at creation: data waits in the socket.
    assert_eq!(with(&bev, |e| e.enabled()), EventFlags::NONE);
    put(&y, b"one")?;
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    assert!(ctx(&bev, |c| c.seen.is_empty()));

    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    assert!(with(&bev, |e| e.is_reading()));
    assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.got.len()) == 3)?);

    with(&bev, |e| e.disable(&mut b, EventFlags::READ))?;
    assert!(with(&bev, |e| !e.is_reading() && !e.enabled().contains(EventFlags::READ)));
    put(&y, b"two")?;
    for _ in 0..10 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    assert_eq!(ctx(&bev, |c| c.got.clone()), b"one", "read while disabled");

    // WRITE disabled: output is kept, not sent, even on flush.
    with(&bev, |e| {
        e.output_mut().add(b"out");
        e.flush(&mut b);
    });
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    let mut got = Vec::new();
    slurp(y.as_raw_fd(), &mut got);
    assert!(got.is_empty(), "sent while WRITE is disabled");
    // Enabling WRITE sends it (write-through, no event needed).
    with(&bev, |e| e.enable(&mut b, EventFlags::WRITE))?;
    slurp(y.as_raw_fd(), &mut got);
    assert_eq!(got, b"out");
    assert_eq!(with(&bev, |e| e.enabled()), EventFlags::WRITE);

    // Disabling WRITE while the write event waits for a full socket
    // removes it from the loop.
    let (x2, y2) = link(Link::Unix, true)?;
    let bev2 = new_bev(&mut b, x2, BevOptions::default(), Ctx::default())?;
    with(&bev2, |e| {
        e.output_mut().add(&pattern(1 << 20));
        e.enable(&mut b, EventFlags::WRITE)
    })?;
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::Done, "the write event should be pending");
    with(&bev2, |e| e.disable(&mut b, EventFlags::WRITE))?;
    let mut sink = Vec::new();
    slurp(y2.as_raw_fd(), &mut sink);
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "write event left after disable");
    // Re-enabled, reading goes on where it stopped.
    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    assert!(run_until(&mut b, LIMIT, |_| ctx(&bev, |c| c.got.len()) == 6)?);
    assert_eq!(ctx(&bev, |c| c.got.clone()), b"onetwo");
    with(&bev, |e| e.free(&mut b));
    with(&bev2, |e| e.free(&mut b));
    Ok(())
});

// ----- free from callbacks -------------------------------------------------------------

rtest!(free_from_the_read_callback, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Unix, false)?;
    let c = Ctx { on_read: OnRead::Free, ..Ctx::default() };
    let token = c.token.clone();
    let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
    with(&bev, |e| {
        e.output_mut().add(b"dropped");
        e.disable(&mut b, EventFlags::WRITE)
    })?;
    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    put(&y, b"x")?;
    assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?);
    ctx(&bev, |c| {
        assert_eq!(c.seen, [1]);
        assert_eq!(c.closes, 1);
        assert!(c.events.is_empty(), "{:?}", c.events);
    });
    // The peer sees the close (free drops unsent output).
    let mut got = Vec::new();
    assert!(slurp(y.as_raw_fd(), &mut got), "no EOF at the peer");
    assert!(got.is_empty());
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    drop(bev);
    assert_eq!(Rc::strong_count(&token), 1);
    Ok(())
});

rtest!(free_from_the_event_callback, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Tcp, false)?;
    let c = Ctx { on_event: OnEvent::Free, ..Ctx::default() };
    let token = c.token.clone();
    let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
    // Readable and writable at once: the write event must not run on a
    // bufferevent freed by the read side's EOF.
    with(&bev, |e| {
        e.output_mut().add(&pattern(1 << 20));
        e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)
    })?;
    sys::shutdown_write(y.as_raw_fd())?;
    let mut sink = Vec::new();
    assert!(run_until(&mut b, LIMIT, |_| {
        slurp(y.as_raw_fd(), &mut sink);
        with(&bev, |e| e.is_freed())
    })?);
    ctx(&bev, |c| {
        assert_eq!(c.events, [BevEvent::READING | BevEvent::EOF]);
        assert_eq!(c.closes, 1);
    });
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    drop(bev);
    assert_eq!(Rc::strong_count(&token), 1);
    Ok(())
});

rtest!(free_from_any_callback_deferred_or_not, |be| {
    for opts in [BevOptions::default(), BevOptions::DEFER_CALLBACKS] {
        for from in ["read", "write", "event"] {
            let what = format!("{opts:?} from {from}");
            let mut b = be.base()?;
            let (x, y) = link(Link::Unix, false)?;
            let mut c = Ctx::default();
            match from {
                "read" => c.on_read = OnRead::Free,
                "write" => c.free_in_write = true,
                _ => c.on_event = OnEvent::Free,
            }
            let token = c.token.clone();
            let bev = new_bev(&mut b, x, opts, c)?;
            with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
            match from {
                "read" => put(&y, b"x")?,
                "write" => with(&bev, |e| {
                    e.output_mut().add(b"x");
                    e.flush(&mut b);
                }),
                _ => drop(y),
            }
            assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "{what}: not freed");
            assert_eq!(ctx(&bev, |c| c.closes), 1, "{what}");
            for _ in 0..3 {
                b.run(LoopFlags::NONBLOCK)?;
            }
            assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{what}");
            drop(bev);
            assert_eq!(Rc::strong_count(&token), 1, "{what}: not dropped");
        }
    }
    Ok(())
});

rtest!(close_callback_runs_once, |be| {
    let mut b = be.base()?;
    let (x, _y) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    // closecb frees again from inside; a second free is a no-op too.
    with(&bev, |e| e.free(&mut b));
    with(&bev, |e| e.free(&mut b));
    ctx(&bev, |c| {
        assert_eq!(c.closes, 1);
        assert_eq!(*c.log.borrow(), ["close"]);
    });
    // Calls on a freed bufferevent are harmless.
    with(&bev, |e| {
        e.output_mut().add(b"late");
        e.flush(&mut b);
        e.close_when_flushed(&mut b);
        let _ = e.enable(&mut b, EventFlags::READ);
        assert!(!e.is_reading());
    });
    assert_eq!(ctx(&bev, |c| c.closes), 1);
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    Ok(())
});

rtest!(free_another_bufferevent_that_is_active, |be| {
    let mut b = be.base()?;
    let (x1, y1) = link(Link::Unix, false)?;
    let (x2, y2) = link(Link::Unix, false)?;
    let log = Rc::new(RefCell::new(Vec::new()));
    let c = |tag| Ctx { on_read: OnRead::Drain, log: log.clone(), tag, ..Ctx::default() };
    let one = new_bev(&mut b, x1, BevOptions::default(), c(" one"))?;
    let two = new_bev(&mut b, x2, BevOptions::default(), c(" two"))?;
    // Each frees the other: whichever runs first in the turn wins.
    with(&one, |e| e.ctx.victim = Some(two.clone()));
    with(&two, |e| e.ctx.victim = Some(one.clone()));
    for bev in [&one, &two] {
        with(bev, |e| e.enable(&mut b, EventFlags::READ))?;
    }
    put(&y1, b"x")?;
    put(&y2, b"x")?;
    // Both ready in one turn; the loser was active and must not run.
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    for _ in 0..5 {
        b.run(LoopFlags::NONBLOCK)?;
    }
    let l = log.borrow().clone();
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[1], "close", "{l:?}");
    let (winner, loser) = if l[0] == "read one" { (&one, &two) } else { (&two, &one) };
    assert!(with(loser, |e| e.is_freed() && e.ctx.closes == 1 && e.ctx.seen.is_empty()));
    assert!(with(winner, |e| !e.is_freed()));
    with(winner, |e| e.free(&mut b));
    // Break the handle cycle left in the loser's context.
    with(loser, |e| e.ctx.victim = None);
    assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    Ok(())
});

rtest!(close_when_flushed_with_nothing_pending_shuts_down_at_once, |be| {
    // Nothing to write: the peer sees EOF at once; the socket lingers until
    // the peer's EOF, then closes, with no callback but the close callback.
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
        with(&bev, |e| -> io::Result<()> {
            e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)?;
            e.close_when_flushed(&mut b);
            assert!(e.is_lingering() && !e.is_freed(), "{kind:?}");
            Ok(())
        })?;
        let mut got = Vec::new();
        assert!(slurp(y.as_raw_fd(), &mut got), "{kind:?}: no EOF at the peer");
        assert!(got.is_empty());
        assert_eq!(ctx(&bev, |c| c.closes), 0);
        drop(y);
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "{kind:?}: not freed");
        assert_eq!(ctx(&bev, |c| (c.closes, c.events.len())), (1, 0), "{kind:?}");
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    }
    Ok(())
});

rtest!(close_when_flushed_after_the_peers_eof_closes_at_once, |be| {
    // The peer finished first (the usual end of a request): once the output
    // is written there is nothing to wait for.
    for kind in LINKS {
        let mut b = be.base()?;
        let (bev, y) = enabled_bev(&mut b, kind, Ctx::default())?;
        sys::shutdown_write(y.as_raw_fd())?;
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
        assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::READING | BevEvent::EOF], "{kind:?}");
        with(&bev, |e| {
            e.output_mut().add(b"bye");
            e.close_when_flushed(&mut b);
            assert!(e.is_freed(), "{kind:?}");
        });
        let mut got = Vec::new();
        assert!(slurp(y.as_raw_fd(), &mut got), "{kind:?}: no EOF at the peer");
        assert_eq!(got, b"bye");
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    }
    Ok(())
});

/// A bufferevent on a fresh link of `kind` (default buffers) with reading
/// and writing enabled; and the peer's end.
fn enabled_bev(b: &mut EventBase, kind: Link, ctx: Ctx) -> io::Result<(Bev<Ctx>, OwnedFd)> {
    let (x, y) = link(kind, false)?;
    let bev = new_bev(b, x, BevOptions::default(), ctx)?;
    with(&bev, |e| e.enable(b, EventFlags::READ | EventFlags::WRITE))?;
    Ok((bev, y))
}

/// A bufferevent on a fresh link that answers "answer" and closes when
/// flushed, lingering at most `linger`; and the peer's end.
fn answer_and_close(b: &mut EventBase, kind: Link, linger: Duration) -> io::Result<(Bev<Ctx>, OwnedFd)> {
    let (bev, y) = enabled_bev(b, kind, Ctx::default())?;
    with(&bev, |e| -> io::Result<()> {
        e.set_linger(linger);
        e.output_mut().add(b"answer");
        e.close_when_flushed(b);
        Ok(())
    })?;
    Ok((bev, y))
}

rtest!(lingering_ends_early_for_a_quiet_peer_that_has_everything, |be| {
    // The peer reads the answer and EOF but keeps its socket open and says
    // nothing: once every byte is acknowledged (TCP) or read (Unix), the
    // close completes long before the lingering bound.
    for kind in LINKS {
        let mut b = be.base()?;
        let start = Instant::now();
        let (bev, y) = answer_and_close(&mut b, kind, Duration::from_secs(30))?;
        let mut got = Vec::new();
        let mut eof = false;
        let freed = run_until(&mut b, LIMIT, |_| {
            eof = eof || slurp(y.as_raw_fd(), &mut got);
            with(&bev, |e| e.is_freed())
        })?;
        assert!(freed, "{kind:?}: still lingering");
        assert!(start.elapsed() < Duration::from_secs(5), "{kind:?}: {:?}", start.elapsed());
        slurp(y.as_raw_fd(), &mut got);
        assert_eq!(got, b"answer", "{kind:?}");
        assert_eq!(ctx(&bev, |c| (c.closes, c.events.len())), (1, 0), "{kind:?}");
    }
    Ok(())
});

rtest!(lingering_waits_for_a_peer_that_has_not_read, |be| {
    // A Unix peer that has not read the answer yet: the close waits (up to
    // the bound), and the answer is still there to read afterwards.
    let mut b = be.base()?;
    let start = Watch::start(&b);
    let (bev, y) = answer_and_close(&mut b, Link::Unix, Duration::from_millis(300))?;
    assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "still lingering");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290), "{took:?}");
    let mut got = Vec::new();
    assert!(slurp(y.as_raw_fd(), &mut got));
    assert_eq!(got, b"answer");
    Ok(())
});

rtest!(lingering_ends_after_its_bound, |be| {
    // A peer that neither closes nor stops sending: the lingering ends at
    // its bound all the same (not restarted by each read).
    let mut b = be.base()?;
    let start = Watch::start(&b);
    let (bev, y) = answer_and_close(&mut b, Link::Tcp, Duration::from_millis(300))?;
    let mut got = Vec::new();
    let freed = run_until(&mut b, LIMIT, |_| {
        let mut buf = [0u8; 64];
        if let Ok(n) = sys::read(y.as_raw_fd(), &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        let _ = sys::write(y.as_raw_fd(), b"chatter");
        with(&bev, |e| e.is_freed())
    })?;
    assert!(freed, "still lingering");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(got, b"answer");
    assert_eq!(ctx(&bev, |c| (c.closes, c.events.len())), (1, 0));
    Ok(())
});

rtest!(dropping_the_base_closes_a_live_bufferevent, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Unix, false)?;
    let c = Ctx::default();
    let token = c.token.clone();
    let bev = new_bev(&mut b, x, BevOptions::default(), c)?;
    let fd = with(&bev, |e| e.fd());
    let target = fd_target(fd);
    with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
    drop(bev);
    // The base's events hold it: still open.
    assert_eq!(fd_target(fd), target);
    drop(b);
    assert_eq!(Rc::strong_count(&token), 1, "the bufferevent outlived its base");
    assert_ne!(fd_target(fd), target, "its socket is still open");
    let mut got = Vec::new();
    assert!(slurp(y.as_raw_fd(), &mut got), "no EOF at the peer");
    Ok(())
});

rtest!(fd_number_reused_after_free, |be| {
    // Free a reading bufferevent and wrap a new socket that gets the same
    // fd number, all between two turns: the backend (a changelist above
    // all) must not lose or misapply the new registration.
    let mut b = be.base()?;
    let (x, _y) = link(Link::Unix, false)?;
    let old = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    with(&old, |e| e.enable(&mut b, EventFlags::READ))?;
    b.run(LoopFlags::NONBLOCK)?; // the registration reaches the kernel
    let fd = with(&old, |e| e.fd());
    with(&old, |e| {
        e.disable(&mut b, EventFlags::READ)?;
        e.free(&mut b);
        Ok::<_, io::Error>(())
    })?;
    let (x2, y2) = link(Link::Unix, false)?;
    assert_eq!(x2.as_raw_fd(), fd, "the fd number was not reused: the test proves nothing");
    let new = new_bev(&mut b, x2, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    with(&new, |e| e.enable(&mut b, EventFlags::READ))?;
    put(&y2, b"fresh")?;
    assert!(run_until(&mut b, LIMIT, |_| ctx(&new, |c| c.got.len()) == 5)?, "the new socket is not watched");
    assert_eq!(ctx(&new, |c| c.got.clone()), b"fresh");
    with(&new, |e| e.free(&mut b));
    Ok(())
});

// ----- priority --------------------------------------------------------------------------

rtest!(set_priority, |be| {
    let mut b = be.base()?;
    b.priority_init(3)?;
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut bevs = Vec::new();
    let mut peers = Vec::new();
    // Created in the order low, high: the urgent one must still run first.
    for (tag, pri) in [(" low", 2), (" high", 0)] {
        let (x, y) = link(Link::Unix, false)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { log: log.clone(), tag, ..Ctx::default() })?;
        with(&bev, |e| -> io::Result<()> {
            e.set_priority(&mut b, pri)?;
            assert_eq!(e.priority(&b), Some(pri));
            e.enable(&mut b, EventFlags::READ)
        })?;
        bevs.push(bev);
        peers.push(y);
    }
    assert!(with(&bevs[0], |e| e.set_priority(&mut b, 3)).is_err(), "priority 3 of 3 accepted");
    assert_eq!(with(&bevs[0], |e| e.priority(&b)), Some(2));
    // Both sockets readable before the turn: one ONCE turn runs both, the
    // urgent one first.
    for y in &peers {
        put(y, b"x")?;
    }
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    assert_eq!(*log.borrow(), ["read high", "read low"]);
    for bev in &bevs {
        with(bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(deferred_callbacks_keep_the_priority, |be| {
    // An urgent bufferevent with DEFER_CALLBACKS and a less urgent plain
    // one, both readable in one turn: the urgent one's (deferred) read
    // callback still runs first.
    let mut b = be.base()?;
    b.priority_init(3)?;
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut keep = Vec::new();
    for (tag, pri, opts) in [(" urgent", 0, BevOptions::DEFER_CALLBACKS), (" normal", 1, BevOptions::default())] {
        let (x, y) = link(Link::Unix, false)?;
        let bev = new_bev(&mut b, x, opts, Ctx { on_read: OnRead::Drain, log: log.clone(), tag, ..Ctx::default() })?;
        with(&bev, |e| -> io::Result<()> {
            e.set_priority(&mut b, pri)?;
            e.enable(&mut b, EventFlags::READ)
        })?;
        put(&y, b"x")?;
        keep.push((bev, y));
    }
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    assert_eq!(*log.borrow(), ["read urgent", "read normal"]);
    for (bev, _) in &keep {
        with(bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(set_priority_from_a_callback_is_all_or_nothing, |be| {
    // From the read callback while the write event is active in the same
    // turn, the base refuses to move the (active) write event: then
    // nothing may have moved (else the bufferevent's events sit at two
    // priorities while priority() reports one of them).
    let mut b = be.base()?;
    b.priority_init(3)?;
    let (x, y) = link(Link::Unix, true)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::SetPriority(2), ..Ctx::default() })?;
    with(&bev, |e| -> io::Result<()> {
        e.set_priority(&mut b, 0)?;
        e.enable(&mut b, EventFlags::READ)?;
        // Fill the socket so the write event is registered, waiting.
        e.output_mut().add(&pattern(1 << 20));
        e.enable(&mut b, EventFlags::WRITE)
    })?;
    // Make it readable and writable at once.
    let mut sink = Vec::new();
    slurp(y.as_raw_fd(), &mut sink);
    put(&y, b"x")?;
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.pri.is_empty()))?);
    // One outcome: the socket was readable and writable before the turn,
    // so both events are active when the read callback runs (the backend
    // reports both, every callback of the turn runs after); the base
    // refuses to move the active write event, and nothing moved.
    let (ok, before, after) = ctx(&bev, |c| c.pri[0]);
    if with(&bev, |e| e.is_on_data_path()) {
        // On the io_uring data path the write event is active only in the
        // turn its send completes, which need not be the read's: either
        // outcome, but all or nothing.
        assert_eq!(after, if ok { Some(2) } else { before }, "all or nothing: ({ok}, {before:?}, {after:?})");
        with(&bev, |e| e.free(&mut b));
        return Ok(());
    }
    assert_eq!(
        (ok, before, after),
        (false, Some(0), Some(0)),
        "set_priority from the read callback: (ok, before, after)"
    );
    // Once the turn is over nothing is active: the same move succeeds.
    with(&bev, |e| e.set_priority(&mut b, 2))?;
    assert_eq!(with(&bev, |e| e.priority(&b)), Some(2));
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

// ----- deferred callbacks ----------------------------------------------------------------

rtest!(deferred_callbacks_run_from_their_own_event, |be| {
    for defer in [false, true] {
        let mut b = be.base()?;
        let (x, y) = link(Link::Unix, false)?;
        let log = Rc::new(RefCell::new(Vec::new()));
        let opts = if defer { BevOptions::DEFER_CALLBACKS } else { BevOptions::default() };
        let bev = new_bev(&mut b, x, opts, Ctx { on_read: OnRead::Drain, log: log.clone(), ..Ctx::default() })?;
        with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
        // A plain read event on another socket, ready in the same turn.
        let (p, q) = link(Link::Unix, false)?;
        let l = log.clone();
        let pfd = p.as_raw_fd();
        let other = b.new_event(pfd, EventFlags::READ, move |_, _, _| {
            let mut sink = Vec::new();
            slurp(pfd, &mut sink);
            l.borrow_mut().push("other".into());
        });
        b.add(other, None)?;
        put(&y, b"data")?;
        put(&q, b"data")?;
        // One non-blocking pass runs the I/O callbacks ready now; a
        // deferred read callback is queued behind them, for the next pass.
        b.run(LoopFlags::NONBLOCK)?;
        let first = log.borrow().clone();
        if defer {
            assert_eq!(first, ["other"], "deferred read callback ran inside the I/O callback");
            assert_eq!(with(&bev, |e| e.input().len()), 4, "the I/O callback did not read");
            b.run(LoopFlags::NONBLOCK)?;
            assert_eq!(*log.borrow(), ["other", "read"]);
        } else {
            assert_eq!(first.len(), 2, "{first:?}");
            assert!(first.contains(&"read".to_string()));
        }
        assert_eq!(ctx(&bev, |c| c.got.clone()), b"data");

        // A deferred event callback (EOF) also runs after the I/O pass.
        log.borrow_mut().clear();
        drop(y);
        assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()))?);
        assert_eq!(ctx(&bev, |c| c.events.clone()), [BevEvent::READING | BevEvent::EOF]);
        with(&bev, |e| e.free(&mut b));
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents);
    }
    Ok(())
});

rtest!(deferred_callbacks_within_one_once_turn, |be| {
    let mut b = be.base()?;
    let (x, y) = link(Link::Tcp, false)?;
    let bev = new_bev(&mut b, x, BevOptions::DEFER_CALLBACKS, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
    with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
    put(&y, b"ping")?;
    // ONCE runs everything that became active, the deferred event included:
    // the echo is out when the (single) turn returns.
    watchdog(&mut b, 10)?;
    assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
    assert_eq!(ctx(&bev, |c| c.seen.clone()), [4]);
    let mut got = Vec::new();
    slurp(y.as_raw_fd(), &mut got);
    assert_eq!(got, b"ping");
    with(&bev, |e| e.free(&mut b));
    Ok(())
});

// ----- write-through ---------------------------------------------------------------------

rtest!(write_through_sends_in_the_same_turn, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (bev, y) = enabled_bev(&mut b, kind, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
        for round in 0..3 {
            let msg = format!("line {round}\n");
            put(&y, msg.as_bytes())?;
            // Exactly one turn: the read callback's output goes out in it.
            let wd = watchdog(&mut b, 10)?;
            assert_eq!(b.run(LoopFlags::ONCE)?, LoopExit::Done);
            b.free(wd);
            assert_eq!(ctx(&bev, |c| c.seen.len()), round + 1, "{kind:?}");
            let mut got = Vec::new();
            slurp(y.as_raw_fd(), &mut got);
            assert_eq!(got, msg.as_bytes(), "{kind:?}: echo not sent within the turn");
            assert!(with(&bev, |e| e.output().is_empty()), "{kind:?}");
            // And no write event is left pending: with reading disabled the
            // loop has nothing at all. (On the io_uring data path the send
            // went out with the turn's enter and its completion is
            // collected by the next turn, which then leaves nothing.)
            with(&bev, |e| e.disable(&mut b, EventFlags::READ))?;
            if with(&bev, |e| e.is_on_data_path()) {
                assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::Done, "{kind:?}: the send's completion");
                assert_eq!(with(&bev, |e| e.pending_output()), 0, "{kind:?}");
            }
            assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}: a write event is pending");
            with(&bev, |e| e.enable(&mut b, EventFlags::READ))?;
        }
        // Output added outside any callback goes out on flush(), also
        // without an event.
        with(&bev, |e| {
            e.output_mut().add(b"pushed");
            e.flush(&mut b);
        });
        let mut got = Vec::new();
        slurp(y.as_raw_fd(), &mut got);
        assert_eq!(got, b"pushed", "{kind:?}");
        with(&bev, |e| e.disable(&mut b, EventFlags::READ))?;
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(write_event_is_registered_only_while_the_socket_is_full, |be| {
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, true)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
        let data = pattern(1 << 20);
        with(&bev, |e| {
            e.output_mut().add(&data);
            e.enable(&mut b, EventFlags::WRITE)
        })?;
        // Full: the write event waits in the loop.
        assert!(with(&bev, |e| e.pending_output() > 0), "{kind:?}");
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::Done, "{kind:?}: no write event while full");
        expect_bytes(&mut b, y.as_raw_fd(), &data, &format!("{kind:?}"))?;
        settle_data_path(&mut b, &bev)?;
        // Drained: it is gone again.
        assert_eq!(b.run(LoopFlags::NONBLOCK)?, LoopExit::NoEvents, "{kind:?}: write event left");
        assert_eq!(ctx(&bev, |c| c.out_seen.clone()), [0], "{kind:?}");
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
});

rtest!(an_idle_bufferevent_keeps_only_its_read_event, |be| {
    // Between requests a connection holds its socket, its read event and
    // a small struct: no buffers, no write event (they come back from a
    // per-thread pool when bytes arrive). This is the memory of an idle
    // connection (BENCHMARKS.md); after a request, and after a burst that
    // filled the socket, it must be back there.
    for kind in LINKS {
        let mut b = be.base()?;
        let (x, y) = link(kind, true)?;
        let bev = new_bev(&mut b, x, BevOptions::default(), Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
        with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
        let idle_events = b.num_events();
        assert_eq!(idle_events, 1, "{kind:?}: a fresh bufferevent has its read event only");
        assert!(with(&bev, |e| !e.is_busy()), "{kind:?}: busy before any byte");
        // One request, one answer.
        put(&y, b"hello\n")?;
        expect_bytes(&mut b, y.as_raw_fd(), b"hello\n", &format!("{kind:?}"))?;
        settle_data_path(&mut b, &bev)?;
        assert!(with(&bev, |e| !e.is_busy()), "{kind:?}: buffers kept after the answer went out");
        assert_eq!(b.num_events(), idle_events, "{kind:?}: an event kept after the answer went out");
        // A burst the socket cannot take at once: the write event exists
        // while output waits, and goes with the buffers once it is written.
        let data = pattern(1 << 20);
        with(&bev, |e| {
            e.output_mut().add(&data);
            e.flush(&mut b);
        });
        assert!(with(&bev, |e| e.is_busy() && e.pending_output() > 0), "{kind:?}: the socket took 1 MiB at once");
        assert_eq!(b.num_events(), idle_events + 1, "{kind:?}: no write event while the socket is full");
        expect_bytes(&mut b, y.as_raw_fd(), &data, &format!("{kind:?}"))?;
        settle_data_path(&mut b, &bev)?;
        assert!(with(&bev, |e| !e.is_busy()), "{kind:?}: buffers kept after the burst");
        assert_eq!(b.num_events(), idle_events, "{kind:?}: the write event outlived the burst");
        with(&bev, |e| e.free(&mut b));
        assert_eq!(b.num_events(), 0, "{kind:?}");
    }
    Ok(())
});

fn close_while_the_peer_sends(be: Backend) -> io::Result<()> {
    // The owner answers and closes while the peer is still sending (the
    // rest of a pipelined request, say): reading stops at once, so what
    // the peer sends afterwards is never read. Closing a TCP socket with
    // unread input makes the kernel send RST and drop what it still had
    // to send: the answer must still reach the peer entirely.
    const N: usize = 256 * 1024;
    let mut b = be.base()?;
    let (x, y) = link(Link::Tcp, true)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    let data = pattern(N);
    with(&bev, |e| -> io::Result<()> {
        e.enable(&mut b, EventFlags::READ | EventFlags::WRITE)?;
        e.output_mut().add(&data);
        e.close_when_flushed(&mut b);
        Ok(())
    })?;
    // The peer keeps sending a little, and reads.
    put(&y, b"more request bytes")?;
    let mut got = Vec::new();
    let mut outcome = None;
    let done = run_until(&mut b, LIMIT, |_| {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match sys::read(y.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    outcome = Some(Ok(()));
                    return true;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    outcome = Some(Err(e));
                    return true;
                }
            }
        }
    })?;
    assert!(done, "the peer saw neither EOF nor an error");
    assert_eq!(got.len(), N, "the peer got {} of {N} answer bytes, then {outcome:?}", got.len());
    assert!(got == data);
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    // The socket lingers until the peer closes too.
    assert!(with(&bev, |e| e.is_lingering() && !e.is_freed()));
    put(&y, b"and a last word")?;
    drop(y);
    assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "not freed after the peer's EOF");
    Ok(())
}

mod close_when_flushed_while_the_peer_still_sends {
    use super::*;
    #[test]
    fn epoll() -> io::Result<()> {
        close_while_the_peer_sends(Backend::Epoll)
    }
    #[test]
    fn poll() -> io::Result<()> {
        close_while_the_peer_sends(Backend::Poll)
    }
    #[test]
    fn uring() -> io::Result<()> {
        if !Backend::Uring.available() {
            return Ok(());
        }
        close_while_the_peer_sends(Backend::Uring)
    }
}

// ----- a socket the backend cannot watch (issue 10) ---------------------------------

rtest!(socket_the_backend_gives_up_is_an_error_of_that_connection, [epoll_changelist], |be| {
    // With the changelist the read event reaches the kernel at the next
    // dispatch. Before that the socket's number is made to refer to
    // /dev/null (as if the fd had been closed and reused behind the
    // bufferevent's back): EPOLL_CTL_ADD fails with EPERM. The bufferevent
    // hears of it as an error of its own, once; the loop and the other
    // connection go on.
    let mut b = be.base()?;
    let (x, _y) = link(Link::Unix, false)?;
    let (ox, oy) = link(Link::Unix, false)?;
    let bev = new_bev(&mut b, x, BevOptions::default(), Ctx::default())?;
    let other = new_bev(&mut b, ox, BevOptions::default(), Ctx { on_read: OnRead::Drain, ..Ctx::default() })?;
    with(&bev, |e| {
        e.setcb(Some(readcb), Some(writecb), Some(eventcb));
        e.enable(&mut b, EventFlags::READ)
    })?;
    with(&other, |e| e.enable(&mut b, EventFlags::READ))?;
    let null = std::fs::File::open("/dev/null")?;
    let fd = with(&bev, |e| e.fd());
    // SAFETY: the number stays owned by the bufferevent, which closes it
    // when freed; only the file behind it changes (the misuse under test),
    // and the returned OwnedFd is forgotten so nothing closes it twice.
    std::mem::forget(unsafe { sys::dup2(std::os::fd::AsFd::as_fd(&null), fd)? });
    put(&oy, b"still served")?;
    assert!(run_until(&mut b, LIMIT, |_| !ctx(&bev, |c| c.events.is_empty()) && ctx(&other, |c| c.got.len()) == 12)?);
    let turns = turns_in(&mut b, ms(100))?;
    assert!(turns <= 20, "{turns} turns in 100 ms: something spins");
    let (events, errnos) = ctx(&bev, |c| (c.events.clone(), c.errnos.clone()));
    assert_eq!(events, [BevEvent::READING | BevEvent::ERROR]);
    assert_eq!(errnos, [Some(libc::EPERM)]);
    assert!(with(&bev, |e| !e.is_reading()));
    with(&bev, |e| e.free(&mut b));
    with(&other, |e| e.free(&mut b));
    Ok(())
});

// ----- the io_uring data path (issue 14 section 3) ------------------------------

/// A uring base whose bufferevents are on the data path (receives and
/// sends through the ring), or `None` where io_uring is unavailable.
fn data_path_base() -> io::Result<Option<EventBase>> {
    if !Backend::Uring.available() {
        return Ok(None);
    }
    Ok(Some(Backend::Uring.base()?))
}

/// A bufferevent over a new link of `kind` (`small`: small socket
/// buffers), on the data path: `(bufferevent, peer)`.
fn data_bev(b: &mut EventBase, kind: Link, small: bool, ctx: Ctx) -> io::Result<(Bev<Ctx>, OwnedFd)> {
    let (x, y) = link(kind, small)?;
    let bev = new_bev(b, x, BevOptions::default(), ctx)?;
    assert!(with(&bev, |e| e.is_on_data_path()), "{kind:?}: not on the data path");
    Ok((bev, y))
}

/// A send in flight (the socket full, the rest waiting in the kernel) when
/// the owner frees the bufferevent: the pieces stay the ring's until their
/// completion (no use after free whatever the kernel does), the socket is
/// closed (the peer reads what was sent, then EOF), and the loop is left
/// with nothing.
#[test]
fn data_path_free_with_a_send_in_flight() -> io::Result<()> {
    let Some(mut b) = data_path_base()? else { return Ok(()) };
    for kind in LINKS {
        let (bev, y) = data_bev(&mut b, kind, true, Ctx::default())?;
        let data = pattern(1 << 20);
        with(&bev, |e| {
            e.output_mut().add(&data);
            e.enable(&mut b, EventFlags::WRITE)
        })?;
        // One turn: the first send came back short, the next one waits.
        b.run(LoopFlags::NONBLOCK)?;
        assert!(with(&bev, |e| e.pending_output() > 0), "{kind:?}: the socket took 1 MiB");
        with(&bev, |e| e.free(&mut b));
        // What reached the socket is a prefix of the data, then EOF (or a
        // reset, for the unread rest): never other bytes.
        let mut got = Vec::new();
        let eof = run_until(&mut b, LIMIT, |_| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match sys::read(y.as_raw_fd(), &mut buf) {
                    Ok(0) => return true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            }
        })?;
        assert!(eof, "{kind:?}: the freed socket was not closed");
        assert!(got.len() < data.len() && got[..] == data[..got.len()], "{kind:?}: {} bytes not a prefix", got.len());
        // The cancelled send's completion comes and goes: nothing left.
        assert!(run_until(&mut b, LIMIT, |b| b.run(LoopFlags::NONBLOCK).ok() == Some(LoopExit::NoEvents))?);
    }
    Ok(())
}

/// Short sends: a peer that reads slowly through small socket buffers;
/// every byte arrives, in order, while the owner adds more output behind
/// the sends in flight; then a close when flushed loses nothing either.
#[test]
fn data_path_short_sends_keep_order_and_every_byte() -> io::Result<()> {
    let Some(mut b) = data_path_base()? else { return Ok(()) };
    for kind in LINKS {
        let (bev, y) = data_bev(&mut b, kind, true, Ctx::default())?;
        with(&bev, |e| e.enable(&mut b, EventFlags::WRITE))?;
        let data = pattern(3 << 19);
        let mut got = Vec::new();
        let mut added = 0;
        let ok = run_until(&mut b, LIMIT, |b| {
            if added < data.len() {
                let n = (data.len() - added).min(100_000);
                with(&bev, |e| {
                    e.output_mut().add(&data[added..added + n]);
                    e.flush(b);
                });
                added += n;
            }
            // A slow reader: at most 16 KiB a turn.
            let mut buf = [0u8; 16 * 1024];
            if let Ok(n) = sys::read(y.as_raw_fd(), &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= data.len()
        })?;
        assert!(ok, "{kind:?}: stalled at {} of {}", got.len(), data.len());
        assert!(got == data, "{kind:?}: bytes differ");
        // The rest of a close: output, then EOF.
        let tail = pattern(300_000);
        with(&bev, |e| {
            e.output_mut().add(&tail);
            e.close_when_flushed(&mut b);
        });
        got.clear();
        let ok = run_until(&mut b, LIMIT, |_| slurp(y.as_raw_fd(), &mut got))?;
        assert!(ok && got == tail, "{kind:?}: close lost bytes ({} of {})", got.len(), tail.len());
        assert!(run_until(&mut b, LIMIT, |_| with(&bev, |e| e.is_freed()))?, "{kind:?}");
    }
    Ok(())
}

/// The read high watermark on the data path: reading stops (the receive
/// is cancelled: no more than the mark is ever in the input), what the
/// ring had received meanwhile is kept, and consuming resumes it; every
/// byte arrives once, in order.
#[test]
fn data_path_watermark_stops_and_resumes_the_receive() -> io::Result<()> {
    const HIGH: usize = 4096;
    let Some(mut b) = data_path_base()? else { return Ok(()) };
    for kind in LINKS {
        let (bev, y) = data_bev(&mut b, kind, false, Ctx { on_read: OnRead::Keep, ..Ctx::default() })?;
        with(&bev, |e| {
            e.set_watermark(&mut b, EventFlags::READ, 0, HIGH);
            e.enable(&mut b, EventFlags::READ)
        })?;
        let data = pattern(200_000);
        let mut off = 0;
        let mut got = Vec::new();
        let ok = run_until(&mut b, LIMIT, |b| {
            feed(y.as_raw_fd(), &data, &mut off);
            with(&bev, |e| {
                assert!(e.input().len() <= HIGH, "{kind:?}: input {} above the mark", e.input().len());
                if e.suspended().intersects(Suspend::WATERMARK) {
                    assert!(!e.is_reading(), "{kind:?}: paused but reading");
                    // Consume: the pause lifts.
                    let n = e.input().len();
                    let mut buf = vec![0u8; n];
                    e.input_mut().remove(&mut buf);
                    got.extend_from_slice(&buf);
                    e.input_consumed(b);
                }
            });
            got.len() + with(&bev, |e| e.input().len()) >= data.len()
        })?;
        with(&bev, |e| {
            let n = e.input().len();
            let mut buf = vec![0u8; n];
            e.input_mut().remove(&mut buf);
            got.extend_from_slice(&buf);
        });
        assert!(ok, "{kind:?}: stalled at {} of {}", got.len(), data.len());
        assert!(got == data, "{kind:?}: bytes differ ({} of {})", got.len(), data.len());
        with(&bev, |e| e.free(&mut b));
    }
    Ok(())
}

/// A connection freed while its receive is armed (an idle connection):
/// the ring lets go of the file before the fd is closed, so the peer sees
/// EOF at once, and the fd number, reused by the next socket, is not
/// reached by the old receive.
#[test]
fn data_path_free_with_a_receive_armed_closes_the_socket() -> io::Result<()> {
    let Some(mut b) = data_path_base()? else { return Ok(()) };
    for kind in LINKS {
        let (bev, y) = data_bev(&mut b, kind, false, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
        with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
        // The receive is armed by the turn's enter.
        b.run(LoopFlags::NONBLOCK)?;
        with(&bev, |e| e.free(&mut b));
        let mut got = Vec::new();
        // No loop turn: the close must already be done.
        assert!(slurp(y.as_raw_fd(), &mut got) && got.is_empty(), "{kind:?}: the peer saw no EOF");
        // The number again, for a new connection: it echoes, and only it.
        let (bev2, y2) = data_bev(&mut b, kind, false, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
        with(&bev2, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
        put(&y2, b"again\n")?;
        expect_bytes(&mut b, y2.as_raw_fd(), b"again\n", &format!("{kind:?}"))?;
        with(&bev2, |e| e.free(&mut b));
    }
    Ok(())
}

/// Receive blocks go back to the ring: a long echo through one connection
/// cycles the same few blocks (the process's memory does not grow with
/// the bytes moved) and the connection ends idle, holding none.
#[test]
fn data_path_gives_the_receive_blocks_back() -> io::Result<()> {
    let Some(mut b) = data_path_base()? else { return Ok(()) };
    let (bev, y) = data_bev(&mut b, Link::Tcp, false, Ctx { on_read: OnRead::Echo, ..Ctx::default() })?;
    with(&bev, |e| e.enable(&mut b, EventFlags::READ | EventFlags::WRITE))?;
    let chunk = pattern(256 * 1024);
    // One echo of the chunk through the connection; what came back.
    let echo = |b: &mut EventBase| -> io::Result<Vec<u8>> {
        let (mut off, mut got) = (0, Vec::new());
        assert!(run_until(b, LIMIT, |_| {
            feed(y.as_raw_fd(), &chunk, &mut off);
            slurp(y.as_raw_fd(), &mut got);
            got.len() >= chunk.len()
        })?);
        Ok(got)
    };
    // Warm: the ring grows to what this traffic needs.
    for _ in 0..4 {
        echo(&mut b)?;
    }
    let me = std::process::id() as i32;
    let rss0 = sys::process::rss_bytes(me).unwrap_or(0);
    for round in 0..64 {
        assert!(echo(&mut b)? == chunk, "round {round}: bytes differ");
    }
    let grew = sys::process::rss_bytes(me).unwrap_or(0).saturating_sub(rss0);
    // 16 MiB moved; the ring is at most 32 blocks of 64 KiB.
    assert!(grew <= 2 * 1024 * 1024, "RSS grew by {grew} B moving 16 MiB");
    settle_data_path(&mut b, &bev)?;
    assert!(with(&bev, |e| !e.is_busy()), "buffers kept after the echo");
    with(&bev, |e| e.free(&mut b));
    Ok(())
}
