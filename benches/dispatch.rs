//! Dispatch cost per backend, by libevent's `test/bench.c` method, and the
//! cost of re-arming timers through a common timeout against the heap.
//!
//! Dispatch: N socket pairs, each read end with a persistent read event whose
//! callback reads one byte and, while writes remain, writes one byte to the
//! next pair (a fire chain). A round re-adds every event and flushes with a
//! non-blocking turn (untimed, as bench.c does), writes one byte to A pairs
//! spread over the N, then times `run(ONCE | NONBLOCK)` turns until every
//! byte written (A + W) has been read. Prints the median and best µs per
//! round.
//!
//! Timers: 100,000 timer events re-armed in a shuffled order with one
//! duration, registered as a common timeout (O(1) FIFO queue) or not (binary
//! heap); prints ns per re-arm.
//!
//! ```text
//! cargo bench --bench dispatch -- [--rounds R] [--sizes 100,1000,9900]
//!     [--backends epoll,epoll_changelist,poll,select,uring] [--active A] [--writes W]
//!     [--timers N] [--no-dispatch] [--no-timers] [--no-readd] [--et]
//! ```
//! Lines starting with `RESULT` are for `scripts/bench-dispatch.sh`.

use rot13d::reactor::{BaseFlags, EventBase, EventConfig, EventFlags, LoopFlags};
use rot13d::sys;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Args {
    rounds: usize,
    sizes: Vec<usize>,
    backends: Vec<String>,
    active: usize,
    writes: usize,
    timers: usize,
    dispatch: bool,
    timer_bench: bool,
    readd: bool,
    et: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: 25,
        sizes: vec![100, 1000, 9900],
        backends: ["epoll", "epoll_changelist", "poll", "select"].map(String::from).to_vec(),
        active: 100,
        writes: 100,
        timers: 100_000,
        dispatch: true,
        timer_bench: true,
        readd: true,
        et: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        // Run without `--bench`, as `cargo test --benches` does: a smoke
        // run that checks the harness works, not a measurement.
        a.rounds = 2;
        a.sizes = vec![100];
        a.timers = 1000;
    }
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => a.rounds = val().parse().expect("--rounds"),
            "--sizes" => a.sizes = val().split(',').map(|s| s.parse().expect("--sizes")).collect(),
            "--backends" => a.backends = val().split(',').map(String::from).collect(),
            "--active" => a.active = val().parse().expect("--active"),
            "--writes" => a.writes = val().parse().expect("--writes"),
            "--timers" => a.timers = val().parse().expect("--timers"),
            "--no-dispatch" => a.dispatch = false,
            "--no-timers" => a.timer_bench = false,
            // Keep the events added between rounds (profiling the timed
            // part alone); bench.c re-adds them.
            "--no-readd" => a.readd = false,
            // Edge-triggered events (epoll: EPOLLET; uring: multishot
            // polls): each write makes one edge, read by its callback.
            "--et" => a.et = true,
            // What cargo passes to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn config(backend: &str) -> EventConfig {
    let mut cfg = EventConfig::new();
    cfg.set_flag(BaseFlags::IGNORE_ENV);
    let name = if backend == "epoll_changelist" { "epoll" } else { backend };
    for other in ["epoll", "poll", "select", "uring"] {
        if other != name {
            cfg.avoid(other);
        }
    }
    if backend == "epoll_changelist" {
        cfg.set_flag(BaseFlags::EPOLL_USE_CHANGELIST);
    }
    cfg
}

struct Chain {
    count: usize,
    fired: usize,
    writes: usize,
    wfds: Vec<RawFd>,
    failures: usize,
}

fn bench_dispatch(
    backend: &str,
    n: usize,
    active: usize,
    writes: usize,
    rounds: usize,
    readd: bool,
    et: bool,
) -> io::Result<Vec<Duration>> {
    let mut base = EventBase::with_config(&config(backend))?;
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..n).map(|_| sys::socketpair()).collect::<io::Result<_>>()?;
    let chain = Rc::new(RefCell::new(Chain {
        count: 0,
        fired: 0,
        writes: 0,
        wfds: pairs.iter().map(|p| p.1.as_raw_fd()).collect(),
        failures: 0,
    }));
    let mut ids = Vec::with_capacity(n);
    for (i, (r, _)) in pairs.iter().enumerate() {
        let fd = r.as_raw_fd();
        let chain = chain.clone();
        let flags = if et {
            EventFlags::READ | EventFlags::PERSIST | EventFlags::ET
        } else {
            EventFlags::READ | EventFlags::PERSIST
        };
        ids.push(base.new_event(fd, flags, move |_, _, _| {
            let mut c = chain.borrow_mut();
            let mut ch = [0u8; 1];
            match sys::recv(fd, &mut ch) {
                Ok(k) => c.count += k,
                Err(_) => c.failures += 1,
            }
            if c.writes > 0 {
                // As bench.c: wrap with a compare, not a division.
                let next = if i + 1 >= c.wfds.len() { i + 1 - c.wfds.len() } else { i + 1 };
                if sys::send(c.wfds[next], b"e").ok() != Some(1) {
                    c.failures += 1;
                }
                c.writes -= 1;
                c.fired += 1;
            }
        }));
    }
    let space = (n / active.min(n)).max(1);
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for &id in &ids {
            if readd || round == 0 {
                base.del(id)?;
                base.add(id, None)?;
            }
        }
        base.run(LoopFlags::ONCE | LoopFlags::NONBLOCK)?;
        {
            let mut c = chain.borrow_mut();
            c.fired = 0;
            for i in 0..active.min(n) {
                sys::send(c.wfds[i * space], b"e")?;
                c.fired += 1;
            }
            c.count = 0;
            c.writes = writes;
        }
        let start = Instant::now();
        loop {
            base.run(LoopFlags::ONCE | LoopFlags::NONBLOCK)?;
            let c = chain.borrow();
            if c.count == c.fired {
                break;
            }
        }
        times.push(start.elapsed());
    }
    let failures = chain.borrow().failures;
    if failures > 0 {
        return Err(io::Error::other(format!("{failures} failed reads/writes")));
    }
    Ok(times)
}

fn median_min(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(v[v.len() / 2]), us(v[0]))
}

/// ns per re-arm of `n` timers, `passes` times each, in a shuffled order.
fn bench_rearm(common: bool, n: usize, passes: usize) -> io::Result<f64> {
    let mut base = EventBase::with_config(&config("epoll"))?;
    let d = Duration::from_secs(60);
    if common {
        base.init_common_timeout(d)?;
    }
    let ids: Vec<_> = (0..n).map(|_| base.new_timer(|_, _, _| {})).collect();
    for &id in &ids {
        base.add(id, Some(d))?;
    }
    // A fixed shuffle (xorshift), the same for both variants.
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x2545_f491_u32;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        order.swap(i, x as usize % (i + 1));
    }
    let start = Instant::now();
    for _ in 0..passes {
        for &i in &order {
            base.add(ids[i], Some(d))?;
        }
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / (n * passes) as f64;
    for id in ids {
        base.free(id);
    }
    Ok(ns)
}

fn main() -> io::Result<()> {
    let args = parse_args();
    let (soft, hard) = sys::raise_nofile_limit()?;
    if args.dispatch {
        println!(
            "# rot13d dispatch: bench.c method, A={} active, W={} writes, {} rounds; RLIMIT_NOFILE {soft} -> {hard}",
            args.active, args.writes, args.rounds
        );
        for &n in &args.sizes {
            if (2 * n + 64) as u64 > hard {
                println!("# N={n} skipped: needs {} fds, limit {hard}", 2 * n + 64);
                continue;
            }
            for b in &args.backends {
                let (med, min) =
                    median_min(bench_dispatch(b, n, args.active, args.writes, args.rounds, args.readd, args.et)?);
                println!("RESULT rot13d {b} {n} {med:.1} {min:.1}");
            }
        }
    }
    if args.timer_bench {
        let n = args.timers;
        // Warm up the allocator and caches, then measure.
        bench_rearm(true, n, 1)?;
        let common = bench_rearm(true, n, 5)?;
        let heap = bench_rearm(false, n, 5)?;
        println!("# re-arming {n} timers in a shuffled order, 5 passes, ns per re-arm");
        println!("TIMER common {common:.1}");
        println!("TIMER heap {heap:.1}");
    }
    Ok(())
}
