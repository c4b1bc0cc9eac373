//! Resource limits of SPEC §1 and §3: backpressure keeps a worker's memory
//! bounded, `idle_timeout` closes idle connections, `max_connections`
//! leaves further clients waiting in the backlog.

use crate::ensure;
use crate::util::{
    Client, Cyclic, Daemon, cpu_ticks, ensure_bytes_eq, fail, fd_count, fd_count_back_to, poll_until, random_lines,
    rot13_model, server_held,
};
use rot13d::sys::process::rss_bytes;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// What the client of the backpressure test sends without reading.
const UNREAD: usize = 64 * MIB;
const KIB: u64 = 1024;

/// SPEC §1: a connection's memory stays below `max_line` + the write high
/// watermark + one read buffer; with the defaults 16 + 256 + 64 KiB.
const CONN_BOUND: u64 = (16 + 256 + 64) * KIB;

/// What a connection costs beyond its two buffers: the bufferevent with its
/// two events, slab slots and evmap entry (497 B measured for an idle
/// connection, BENCHMARKS.md), the buffers' chunk arrays and the
/// allocator's header per block; rounded up to a page.
const PER_CONN_ALLOWANCE: u64 = 4 * KIB;

/// What a serving process holds once, whatever its number of connections:
/// in the one callback that crosses the watermark (one connection at a
/// time: the loop is single-threaded), the read block taken for the next
/// partial line and the output block the pause then packs away, two read
/// blocks of 64 KiB. Blocks given back go to the chunk pool and are reused
/// by the next connection, so they are not counted again. One block more
/// since buffers are made on first use and given back when a connection
/// empties (issue 14's 232 B idle connection): with one client the growth
/// reached 496 KiB in 5 of 15 runs (at most 436 KiB before), while the
/// buffers' heap once paused stayed 304,033 B
/// (`bufferevent::framed_connection_memory_stays_within_the_spec_bound`),
/// so the extra block is the process's, not the connection's: with the
/// chunk pool off (`POOL_CHUNKS = 0`) 9 runs grew by 352-416 KiB, so it is
/// one block more held by the per-process chunk pool (at most 8).
const PER_PROCESS_ALLOWANCE: u64 = 3 * 64 * KIB;

/// On `--backend uring`, what the serving process holds once more: the
/// data path's buffer ring (32 receive blocks of 64 KiB, shared by every
/// connection: `reactor/backend/uring/data.rs`), resident once busy
/// spells have filled each of its blocks, the 8 blocks it keeps to refill
/// it, the chunk pool's 8 that given-back blocks fill beyond those, and a
/// mailbox's read's worth (64 KiB, and the block in flight).
const URING_RING_ALLOWANCE: u64 = (32 + 8 + 8 + 2) * 64 * KIB;

/// Most RSS growth allowed for `n` connections that do not read.
fn growth_bound(n: u64) -> u64 {
    n * (CONN_BOUND + PER_CONN_ALLOWANCE) + PER_PROCESS_ALLOWANCE
}

/// Once a connection's reading pauses and resumes again and again (a client
/// that reads, but slower than it sends), the blocks it gives back on the
/// way (packed away at each pause, drained from its output) are kept by
/// the chunk pool for the next reads: resident memory of the process, up
/// to `POOL_CHUNKS` = 8 blocks of 64 KiB, whatever the connection count.
const POOL_ALLOWANCE: u64 = 8 * 64 * KIB;

/// Most RSS growth allowed for one connection whose reading may pause and
/// resume many times.
fn cycling_bound() -> u64 {
    growth_bound(1) + POOL_ALLOWANCE
}

/// Samples the RSS of `pid` every 10 ms until stopped; the maximum.
struct RssSampler {
    pid: i32,
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let (s, m) = (stop.clone(), max.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(r) = rss_bytes(pid) {
                    m.fetch_max(r, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { pid, stop, max, handle: Some(handle) }
    }

    /// The largest RSS sampled so far, now included.
    fn max(&self) -> u64 {
        if let Some(r) = rss_bytes(self.pid) {
            self.max.fetch_max(r, Ordering::Relaxed);
        }
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `n` clients send without reading: each connection's reading pauses
/// (the `reading paused` trace event, once per connection) and the serving
/// process's RSS grows by at most [`growth_bound`]`(n)`: per connection
/// SPEC's bound plus [`PER_CONN_ALLOWANCE`], plus
/// [`PER_PROCESS_ALLOWANCE`] once. With one client, that client then reads
/// everything back, byte for byte; with several, the daemon still serves.
fn backpressure_bounds_memory(backend: &str, workers: usize, n: usize) -> io::Result<()> {
    let d = Daemon::builder()
        .workers(workers)
        .args(["--backend", backend])
        .env("RUST_LOG", "info,rot13d::reactor::bufferevent=trace")
        .start()?;
    let pid = d.serving_pid()?;
    // Warm up: one connection through, so lazily grown tables and the
    // chunk pool's working set count in the baseline.
    let warm = random_lines(1, MIB, 200);
    ensure_bytes_eq("warm-up", &d.roundtrip(&warm)?, &rot13_model(&warm, 16384))?;
    let baseline = rss_bytes(pid).ok_or_else(|| fail("no RSS"))?;
    let sampler = RssSampler::start(pid);

    let block = lf_block(3, MIB);
    let want = rot13_model(&block, 16384);
    // Enough to stall behind the kernel's socket buffers (several MiB).
    let times = if n == 1 { UNREAD / block.len() } else { 16 };
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..n {
        let c = d.connect()?;
        writers.push(spawn_writer(&c, block.clone(), times)?);
        clients.push(c);
    }
    // Every connection's reading pauses (backpressure)...
    d.log().wait_count(&["reading paused"], n, Duration::from_secs(20))?;
    // ...and stays paused: the writers stall.
    for (w, sent) in &writers {
        ensure!(
            !w.is_finished(),
            "a writer finished {} bytes ({} sent) without reading: no backpressure",
            times * MIB,
            sent.load(Ordering::Relaxed)
        );
    }
    let stalled_rss = rss_bytes(pid).unwrap_or(0);
    let growth = sampler.max().saturating_sub(baseline);
    let ring = if backend == "uring" { URING_RING_ALLOWANCE } else { 0 };
    let bound = growth_bound(n as u64) + ring;
    eprintln!(
        "backpressure, {n} clients: RSS baseline {} KiB, stalled {} KiB, max growth {} KiB = {} KiB per connection; bound {} KiB",
        baseline / KIB,
        stalled_rss / KIB,
        growth / KIB,
        growth / KIB / n as u64,
        bound / KIB
    );
    ensure!(
        growth <= bound,
        "RSS grew by {} KiB ({} KiB per connection) with {n} clients not reading; SPEC: {} KiB each, + {} KiB each and {} KiB per process allowed",
        growth / KIB,
        growth / KIB / n as u64,
        CONN_BOUND / KIB,
        PER_CONN_ALLOWANCE / KIB,
        PER_PROCESS_ALLOWANCE / KIB
    );

    if n == 1 {
        // Now read everything back, verifying as it comes.
        let mut c = clients.pop().ok_or_else(|| fail("no client"))?;
        let mut answer = Cyclic::new(want);
        let read = answer.read_to_end(&mut c.stream).and_then(|()| answer.ensure_repeats(times));
        let (w, _) = writers.pop().ok_or_else(|| fail("no writer"))?;
        let wrote = w.join().map_err(|_| fail("writer panicked"))?;
        read?;
        wrote?;
        let growth = sampler.max().saturating_sub(baseline);
        ensure!(growth <= cycling_bound() + ring, "RSS grew by {} KiB over the whole transfer", growth / KIB);
    } else {
        ensure_bytes_eq("another client meanwhile", &d.roundtrip(b"ok\n")?, b"bx\n")?;
    }
    Ok(())
}

#[test]
fn backpressure_bounds_memory_epoll_w0() -> io::Result<()> {
    backpressure_bounds_memory("epoll", 0, 1)
}

#[test]
fn backpressure_bounds_memory_epoll_w1() -> io::Result<()> {
    backpressure_bounds_memory("epoll", 1, 1)
}

#[test]
fn backpressure_bounds_memory_poll_w1() -> io::Result<()> {
    backpressure_bounds_memory("poll", 1, 1)
}

#[test]
fn backpressure_bounds_memory_select_w1() -> io::Result<()> {
    backpressure_bounds_memory("select", 1, 1)
}

#[test]
fn backpressure_bounds_memory_of_20_clients_epoll_w1() -> io::Result<()> {
    backpressure_bounds_memory("epoll", 1, 20)
}

/// `idle_timeout = 1`: an idle connection is closed after >= 1 s (and
/// within about one more second).
fn idle_daemon(workers: usize) -> io::Result<Daemon> {
    idle_daemon_on("epoll", workers)
}

fn idle_daemon_on(backend: &str, workers: usize) -> io::Result<Daemon> {
    Daemon::builder().workers(workers).args(["--backend", backend]).config("[server]\nidle_timeout = 1\n").start()
}

/// Upper bound of an idle close: SPEC says within one more second; 0.5 s
/// slack for a loaded CI machine.
const IDLE_LATEST: Duration = Duration::from_millis(2500);

fn idle_timeout_closes_idle_connection(backend: &str, workers: usize) -> io::Result<()> {
    let d = idle_daemon_on(backend, workers)?;
    // Never sent anything.
    let t0 = Instant::now();
    let mut c = d.connect()?;
    let got = c.read_to_end_within(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure_bytes_eq("idle connection", &got, b"")?;
    ensure!(took >= Duration::from_millis(990), "idle connection closed after {took:?}, before 1 s");
    ensure!(took <= IDLE_LATEST, "idle connection closed after {took:?}");
    // Sent complete lines, read the answers, then idle.
    let mut c = d.connect()?;
    c.send(b"one\ntwo\n")?;
    let t0 = Instant::now();
    ensure_bytes_eq("answers", &c.read_exact(8)?, b"bar\ngjb\n")?;
    let got = c.read_to_end_within(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure_bytes_eq("after the answers", &got, b"")?;
    ensure!(took >= Duration::from_millis(990), "closed after {took:?}, before 1 s");
    ensure!(took <= IDLE_LATEST, "closed after {took:?}");
    Ok(())
}

#[test]
fn idle_timeout_closes_idle_connection_epoll_w0() -> io::Result<()> {
    idle_timeout_closes_idle_connection("epoll", 0)
}

#[test]
fn idle_timeout_closes_idle_connection_epoll_w1() -> io::Result<()> {
    idle_timeout_closes_idle_connection("epoll", 1)
}

#[test]
fn idle_timeout_closes_idle_connection_poll_w1() -> io::Result<()> {
    idle_timeout_closes_idle_connection("poll", 1)
}

#[test]
fn idle_timeout_closes_idle_connection_select_w0() -> io::Result<()> {
    idle_timeout_closes_idle_connection("select", 0)
}

/// A buffered partial line is answered (no LF) before the idle close.
#[test]
fn idle_timeout_answers_partial_line_first() -> io::Result<()> {
    let d = idle_daemon(1)?;
    let mut c = d.connect()?;
    c.send(b"x\nabc")?;
    let t0 = Instant::now();
    ensure_bytes_eq("answer", &c.read_exact(2)?, b"k\n")?;
    let got = c.read_to_end_within(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure_bytes_eq("partial line at the idle close", &got, b"nop")?;
    ensure!(took >= Duration::from_millis(990), "closed after {took:?}, before 1 s");
    ensure!(took <= IDLE_LATEST, "closed after {took:?}");
    Ok(())
}

/// A client that sends a byte every 300 ms is never idle, even after 2 s.
#[test]
fn idle_timeout_spares_a_slow_but_active_client() -> io::Result<()> {
    let d = idle_daemon(1)?;
    let mut c = d.connect()?;
    for _ in 0..8 {
        c.send(b"a")?;
        // Pacing, not synchronisation: the gaps stay below idle_timeout.
        let early = c.read_some_within(Duration::from_millis(300))?;
        ensure!(early.is_none(), "got {early:?} while sending slowly (closed as idle?)");
    }
    c.send(b"\n")?;
    ensure_bytes_eq("slow line", &c.read_exact(9)?, b"nnnnnnnn\n")?;
    c.half_close()?;
    ensure_bytes_eq("EOF", &c.read_to_end()?, b"")
}

/// `max_connections = 2`: a third client connects (it waits in the
/// backlog, neither refused nor closed), is not served while two are open,
/// costs no CPU meanwhile, and is served once one of the two closes.
fn max_connections_third_waits_in_backlog(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nmax_connections = 2\n").start()?;
    let pid = d.serving_pid()?;
    let mut a = d.connect()?;
    let mut b = d.connect()?;
    for (n, c) in [("A", &mut a), ("B", &mut b)] {
        c.send(b"a\n")?;
        ensure_bytes_eq(n, &c.read_exact(2)?, b"n\n")?;
    }
    let mut third = Client::connect(d.addr())?;
    third.send(b"third\n")?;
    let cpu0 = cpu_ticks(pid)?;
    let early = third.read_some_within(Duration::from_millis(500))?;
    ensure!(early.is_none(), "the third client got {early:?} while two connections are open");
    let spent = cpu_ticks(pid)? - cpu0;
    ensure!(spent <= 10, "the serving process used {spent} ticks of CPU in 500 ms at the limit (spinning?)");
    // A and B still served.
    b.send(b"b\n")?;
    ensure_bytes_eq("B at the limit", &b.read_exact(2)?, b"o\n")?;
    drop(a);
    ensure_bytes_eq("third after A closed", &third.read_exact(6)?, b"guveq\n")?;
    third.half_close()?;
    ensure_bytes_eq("third EOF", &third.read_to_end()?, b"")?;
    // And a fourth one once the third left.
    ensure_bytes_eq("fourth", &d.roundtrip(b"four\n")?, b"sbhe\n")
}

#[test]
fn max_connections_third_waits_in_backlog_w0() -> io::Result<()> {
    max_connections_third_waits_in_backlog(0)
}

#[test]
fn max_connections_third_waits_in_backlog_w1() -> io::Result<()> {
    max_connections_third_waits_in_backlog(1)
}

/// Admin connections do not count against `max_connections` (SPEC §3),
/// and the rot13 limit does not hold the admin endpoint back: with
/// `workers = 0` (one process serves both) and `max_connections = 1`,
/// three admin clients holding unfinished heads leave the one rot13 slot
/// free, and `/healthz` answers while that slot is taken.
#[test]
fn admin_connections_do_not_count_against_max_connections() -> io::Result<()> {
    let d =
        Daemon::builder().workers(0).config(&crate::util::admin_config("[server]\nmax_connections = 1\n")).start()?;
    let admin = crate::util::nth_admin_addr(&d, 0)?;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(admin)?;
        s.write_all(b"GET /healthz HTTP/1.1\r\n")?;
        held.push(s);
    }
    // The admin connections are accepted: /healthz answers beside them.
    ensure!(crate::util::get(admin, "/healthz")?.0 == 200, "/healthz beside the held admin connections");
    let mut c = d.connect()?;
    c.send(b"abc\n")?;
    let got = c.read_some_within(Duration::from_secs(3))?;
    ensure!(got.as_deref() == Some(&b"nop\n"[..]), "the rot13 slot beside 3 admin connections: {got:?}");
    let (code, body) = crate::util::get(admin, "/healthz")?;
    ensure!((code, body.as_str()) == (200, "ok\n"), "/healthz at the rot13 limit: {code} {body:?}");
    drop(held);
    Ok(())
}

/// A client that resets its connection (RST, unread answers pending) frees
/// its slot; the other connection does not notice.
fn reset_connection_frees_its_slot(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nmax_connections = 2\n").start()?;
    let mut other = d.connect()?;
    other.send(b"before\n")?;
    ensure_bytes_eq("other before", &other.read_exact(7)?, b"orsber\n")?;
    let mut a = d.connect()?;
    // Fits in the socket buffers: sent without reading, no writer thread
    // (the RST needs the last descriptor of the socket closed).
    a.send(&random_lines(11, 256 * 1024, 100))?;
    // The server has answered something: A is being served.
    a.read_exact(1)?;
    socket2::SockRef::from(&a.stream).set_linger(Some(Duration::ZERO))?;
    drop(a);
    other.send(b"after\n")?;
    ensure_bytes_eq("other after the reset", &other.read_exact(6)?, b"nsgre\n")?;
    // The slot is free: a new client is served while `other` stays open.
    let mut b = d.connect()?;
    b.send(b"new\n")?;
    ensure_bytes_eq("new client", &b.read_exact(4)?, b"arj\n")?;
    b.half_close()?;
    ensure_bytes_eq("new client EOF", &b.read_to_end()?, b"")?;
    other.half_close()?;
    ensure_bytes_eq("other EOF", &other.read_to_end()?, b"")
}

#[test]
fn reset_connection_frees_its_slot_w0() -> io::Result<()> {
    reset_connection_frees_its_slot(0)
}

#[test]
fn reset_connection_frees_its_slot_w1() -> io::Result<()> {
    reset_connection_frees_its_slot(1)
}

/// Every backend serves more connections at once than FD_SETSIZE (1024):
/// select with sized fd sets.
fn beyond_fd_setsize(backend: &str) -> io::Result<()> {
    const N: usize = 1100;
    let (soft, _) = rot13d::sys::raise_nofile_limit()?;
    ensure!(soft as usize > N + 64 || rot13d::sys::nofile_limit()?.0 as usize > N + 64, "fd limit too low");
    let d = Daemon::start(1, &["--backend", backend])?;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(d.connect()?);
    }
    // Every connection open at once; each one answered.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("client {i}\n").as_bytes())?;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = rot13_model(format!("client {i}\n").as_bytes(), 16384);
        ensure_bytes_eq(&format!("client {i} of {N} on {backend}"), &c.read_exact(want.len())?, &want)?;
    }
    for c in &clients {
        c.half_close()?;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        ensure_bytes_eq(&format!("client {i} EOF"), &c.read_to_end()?, b"")?;
    }
    Ok(())
}

#[test]
fn beyond_fd_setsize_select() -> io::Result<()> {
    beyond_fd_setsize("select")
}

#[test]
fn beyond_fd_setsize_poll() -> io::Result<()> {
    beyond_fd_setsize("poll")
}

#[test]
fn beyond_fd_setsize_epoll() -> io::Result<()> {
    beyond_fd_setsize("epoll")
}

/// A thread that sends `block` `times` times (then half-closes) without
/// reading, and the bytes it has sent so far.
type Writer = (thread::JoinHandle<io::Result<()>>, Arc<AtomicUsize>);

fn spawn_writer(c: &Client, block: Vec<u8>, times: usize) -> io::Result<Writer> {
    let mut w = c.stream.try_clone()?;
    w.set_write_timeout(Some(Duration::from_secs(30)))?;
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let writer = thread::spawn(move || -> io::Result<()> {
        for _ in 0..times {
            for chunk in block.chunks(64 * 1024) {
                w.write_all(chunk)?;
                s.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
        w.shutdown(Shutdown::Write)
    });
    Ok((writer, sent))
}

/// [`spawn_writer`], returning once the writes stall (the server applies
/// backpressure).
fn stall_writer(c: &Client, block: Vec<u8>, times: usize) -> io::Result<Writer> {
    let (writer, sent) = spawn_writer(c, block, times)?;
    // Stalled: no progress for 300 ms (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (sent.load(Ordering::Relaxed), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(300) {
            break;
        }
        ensure!(Instant::now() < deadline && !writer.is_finished(), "the writer never stalled ({now} bytes)");
    }
    Ok((writer, sent))
}

/// A block of lines that ends with LF (so repeating it repeats its answer).
fn lf_block(seed: u64, len: usize) -> Vec<u8> {
    let mut b = random_lines(seed, len - 1, 300);
    b.push(b'\n');
    b
}

/// `write_timeout = 1`: output that makes no progress for 1 s (the client
/// does not read) closes the connection; the writer then fails.
#[test]
fn write_timeout_closes_a_client_that_does_not_read() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\nwrite_timeout = 1\n").start()?;
    let t0 = Instant::now();
    let c = d.connect()?;
    let (writer, _) = stall_writer(&c, lf_block(8, MIB), 64)?;
    ensure!(
        crate::util::poll_until(Duration::from_secs(5), || writer.is_finished()),
        "connection still open {:?} after the writes stalled (write_timeout 1 s)",
        t0.elapsed()
    );
    let took = t0.elapsed();
    let r = writer.join().map_err(|_| fail("writer panicked"))?;
    ensure!(r.is_err(), "the writer finished 64 MiB although the client never read");
    ensure!(took >= Duration::from_millis(990), "closed after {took:?}, before write_timeout");
    // Another client is still served.
    ensure_bytes_eq("after the write timeout", &d.roundtrip(b"ok\n")?, b"bx\n")
}

/// SIGTERM with `shutdown_grace = 1` while a client neither reads nor
/// finishes (output pending, blocked): closed after the grace without
/// waiting for the socket; the master exits 0.
#[test]
fn shutdown_grace_does_not_wait_for_a_blocked_client() -> io::Result<()> {
    let mut d = Daemon::builder().workers(1).config("[server]\nshutdown_grace = 1\n").start()?;
    let c = d.connect()?;
    let (writer, _) = stall_writer(&c, lf_block(8, MIB), 64)?;
    let t0 = Instant::now();
    d.signal(libc::SIGTERM)?;
    let s = d.wait_exit(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure!(s.code() == Some(0), "master exited {s:?}");
    ensure!(took >= Duration::from_millis(990), "exit {took:?} after SIGTERM, before the 1 s grace");
    ensure!(took < Duration::from_secs(4), "exit {took:?} after SIGTERM with a 1 s grace");
    // The connection is gone: the writer fails.
    ensure!(crate::util::poll_until(Duration::from_secs(5), || writer.is_finished()), "writer still blocked");
    let r = writer.join().map_err(|_| fail("writer panicked"))?;
    ensure!(r.is_err(), "the writer finished 64 MiB although the client never read");
    drop(c);
    Ok(())
}

/// One 32 MiB line without any LF, read concurrently: it streams back in
/// `max_line` pieces and the server's memory stays bounded.
#[test]
fn endless_line_streams_in_pieces_with_bounded_memory() -> io::Result<()> {
    const LEN: usize = 32 * MIB;
    let d = Daemon::start(1, &[])?;
    let pid = d.serving_pid()?;
    let warm = random_lines(1, MIB, 200);
    ensure_bytes_eq("warm-up", &d.roundtrip(&warm)?, &rot13_model(&warm, 16384))?;
    let baseline = rss_bytes(pid).ok_or_else(|| fail("no RSS"))?;
    let sampler = RssSampler::start(pid);
    let mut c = d.connect()?;
    let mut w = c.stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            w.write_all(&chunk)?;
        }
        w.shutdown(Shutdown::Write)
    });
    // 16384 'n' then LF, repeated; the last piece without LF (EOF).
    let pieces = LEN / 16384;
    let mut want_piece = vec![b'n'; 16384];
    want_piece.push(b'\n');
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    let expected = pieces * 16385 - 1;
    let read = (|| -> io::Result<()> {
        loop {
            let n = c.stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                let at = total + i;
                let want = if at == expected { 0 } else { want_piece[at % 16385] };
                ensure!(at < expected && b == want, "byte {at}: got {b:#04x}, want {want:#04x} (of {expected})");
            }
            total += n;
        }
        ensure!(total == expected, "answer has {total} bytes, want {expected}");
        Ok(())
    })();
    let wrote = writer.join().map_err(|_| fail("writer panicked"))?;
    read?;
    wrote?;
    let growth = sampler.max().saturating_sub(baseline);
    ensure!(growth <= cycling_bound(), "RSS grew by {} KiB for one endless line", growth / KIB);
    Ok(())
}

/// Connections of every kind (answered, reset mid-stream, closed at once,
/// half-closed empty, dropped with unread answers) leave no descriptor
/// behind in the serving process.
fn no_fd_leak(backend: &str, workers: usize) -> io::Result<()> {
    let d = Daemon::start(workers, &["--backend", backend])?;
    let pid = d.serving_pid()?;
    // One connection first: lazily created descriptors count in the baseline.
    ensure_bytes_eq("warm-up", &d.roundtrip(b"warm\n")?, b"jnez\n")?;
    let baseline = fd_count(pid)?;
    for i in 0..100 {
        // Answered.
        ensure_bytes_eq("answered", &d.roundtrip(b"a\nb")?, b"n\no")?;
        // Closed at once, nothing sent.
        drop(d.connect()?);
        // Half-closed without data.
        ensure_bytes_eq("empty", &d.roundtrip(b"")?, b"")?;
        // Reset with data in flight.
        let mut c = d.connect()?;
        c.send(&random_lines(i, 32 * 1024, 100))?;
        socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO))?;
        drop(c);
        // Closed with answers unread.
        let mut c = d.connect()?;
        c.send(b"unread\n")?;
        drop(c);
    }
    let now = crate::util::fd_count_back_to(pid, baseline, Duration::from_secs(5));
    ensure!(now == baseline, "serving process has {now} fds after 500 connections, {baseline} before");
    ensure_bytes_eq("still serving", &d.roundtrip(b"ok\n")?, b"bx\n")
}

#[test]
fn no_fd_leak_epoll_w1() -> io::Result<()> {
    no_fd_leak("epoll", 1)
}

#[test]
fn no_fd_leak_poll_w0() -> io::Result<()> {
    no_fd_leak("poll", 0)
}

#[test]
fn no_fd_leak_select_w1() -> io::Result<()> {
    no_fd_leak("select", 1)
}

/// `idle_timeout = 1`, `write_timeout = 0`: a client that sends without
/// reading for 3 s is not idle (output is pending): the connection stays,
/// backpressure still holds memory, and every answer arrives afterwards.
#[test]
fn idle_timeout_spares_a_connection_with_pending_output() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\nidle_timeout = 1\nwrite_timeout = 0\n").start()?;
    let pid = d.serving_pid()?;
    let warm = random_lines(1, MIB, 200);
    ensure_bytes_eq("warm-up", &d.roundtrip(&warm)?, &rot13_model(&warm, 16384))?;
    let baseline = rss_bytes(pid).ok_or_else(|| fail("no RSS"))?;
    let sampler = RssSampler::start(pid);
    let block = {
        let mut b = random_lines(21, MIB - 1, 300);
        b.push(b'\n');
        b
    };
    let want = rot13_model(&block, 16384);
    let times = 48;
    let mut c = d.connect()?;
    c.stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut w = c.stream.try_clone()?;
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let writer = thread::spawn(move || -> io::Result<()> {
        for _ in 0..times {
            for chunk in block.chunks(64 * 1024) {
                w.write_all(chunk)?;
                s.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
        w.shutdown(Shutdown::Write)
    });
    // Pending output for three idle periods (a fixed span is the point).
    thread::sleep(Duration::from_secs(3));
    let sent_while_blocked = sent.load(Ordering::Relaxed);
    ensure!(sent_while_blocked < times * MIB, "all {sent_while_blocked} bytes read without the client reading");
    let growth = sampler.max().saturating_sub(baseline);
    ensure!(growth <= growth_bound(1), "RSS grew by {} KiB while blocked across idle timeouts", growth / KIB);
    let mut answer = Cyclic::new(want);
    let read = answer.read_to_end(&mut c.stream).and_then(|()| answer.ensure_repeats(times));
    let wrote = writer.join().map_err(|_| fail("writer panicked"))?;
    read?;
    wrote?;
    let growth = sampler.max().saturating_sub(baseline);
    ensure!(growth <= cycling_bound(), "RSS grew by {} KiB once read back", growth / KIB);
    Ok(())
}

/// `write_timeout = 1` measures lack of progress, not pending time: a
/// client that reads slowly (200 KiB every 50 ms, so the server's output
/// stays pending for 3 s) keeps its connection, and every byte arrives.
#[test]
fn write_timeout_spares_a_slow_reader() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\nwrite_timeout = 1\n").start()?;
    let mut c = d.connect()?;
    let block = lf_block(9, MIB);
    let times = 12;
    let mut answer = Cyclic::new(rot13_model(&block, 16384));
    let mut w = c.stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        for _ in 0..times {
            w.write_all(&block)?;
        }
        w.shutdown(Shutdown::Write)
    });
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Pacing, not synchronisation: a slow reader.
        thread::sleep(Duration::from_millis(50));
        let mut burst = 0;
        while burst < 200 * 1024 {
            let n = c.stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            answer.feed(&buf[..n])?;
            burst += n;
        }
        if burst < 200 * 1024 {
            break;
        }
    }
    answer.ensure_repeats(times)?;
    ensure!(t0.elapsed() >= Duration::from_secs(2), "the slow reader took only {:?}", t0.elapsed());
    writer.join().map_err(|_| fail("writer panicked"))?
}

/// The `name=` number of a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The watermarks at work, seen from outside the daemon: a client sends
/// 100 B lines without reading; once reading pauses, what the server holds
/// (what the client wrote minus what the four socket queues hold,
/// [`server_held`]) is above the high watermark and at most one 64 KiB read
/// (plus a partial line) beyond it, as the daemon's own `reading paused`
/// event says too. Then the client reads: reading resumes only once the
/// pending output is at the low watermark or below (the `reading resumed`
/// event; the kernel's send buffer of several MiB makes the output drain
/// to nothing in one write, so its level at resumption cannot be seen
/// from outside), and every byte comes back.
fn watermarks_are_the_thresholds(config: &str, high: u64, low: u64) -> io::Result<()> {
    const LINE: usize = 100;
    const READ: u64 = 64 * 1024;
    let d = Daemon::builder()
        .args(["--backend", "epoll"])
        .config(config)
        .env("RUST_LOG", "info,rot13d::reactor::bufferevent=trace")
        .start()?;
    let block = {
        let mut b = Vec::new();
        for i in 0..(MIB / LINE) {
            b.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, LINE - 1));
            b.push(b'\n');
        }
        b
    };
    let mut c = d.connect()?;
    c.stream.set_nonblocking(true)?;
    let (mut sent, mut off) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.stream.write(&block[off..]) {
            Ok(n) => {
                sent.extend_from_slice(&block[off..off + n]);
                off = (off + n) % block.len();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if d.log().count(&["reading paused"]) > 0 {
                    break;
                }
                ensure!(Instant::now() < deadline, "reading never paused ({} bytes sent)", sent.len());
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    c.stream.set_nonblocking(false)?;
    let held = server_held(&c.stream, sent.len() as u64, 0)?;
    let log = d.log().text();
    let paused: Vec<&str> = log.lines().filter(|l| l.contains("reading paused")).collect();
    ensure!(paused.len() == 1, "paused {} times without the client reading:\n{log}", paused.len());
    let pending = field(paused[0], "pending").ok_or_else(|| fail(format!("no pending= in {:?}", paused[0])))?;
    eprintln!("paused: the server holds {held} bytes (pending output {pending}), high {high}");
    ensure!(held > high, "reading paused with {held} bytes held, not above the high watermark {high}");
    ensure!(
        held <= high + READ + LINE as u64,
        "reading paused only at {held} bytes held: more than one read ({READ}) beyond the high watermark {high}"
    );
    ensure!(
        pending > high && pending <= held && held - pending < LINE as u64,
        "the pause event says {pending} pending, the kernel's count {held} held (a partial line apart)"
    );

    // The client reads everything; the server then resumes, finishes.
    c.half_close()?;
    let got = c.read_to_end()?;
    ensure_bytes_eq("answers", &got, &rot13_model(&sent, 16384))?;
    let log = d.log().text();
    let resumed: Vec<u64> =
        log.lines().filter(|l| l.contains("reading resumed")).filter_map(|l| field(l, "pending")).collect();
    ensure!(!resumed.is_empty(), "reading never resumed:\n{log}");
    ensure!(resumed.iter().all(|&p| p <= low), "resumed at pending output {resumed:?}, above the low watermark {low}");
    let lows: Vec<u64> =
        log.lines().filter(|l| l.contains("reading resumed")).filter_map(|l| field(l, "low")).collect();
    ensure!(lows.iter().all(|&l| l == low), "low watermark in effect {lows:?}, want {low}");
    Ok(())
}

#[test]
fn watermarks_are_the_thresholds_by_default() -> io::Result<()> {
    watermarks_are_the_thresholds("", 256 * 1024, 64 * 1024)
}

#[test]
fn watermarks_are_the_configured_thresholds() -> io::Result<()> {
    watermarks_are_the_thresholds(
        "[server]\nwrite_high_watermark = 100000\nwrite_low_watermark = 30000\n",
        100_000,
        30_000,
    )
}

#[test]
fn backpressure_bounds_memory_uring_w1() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    backpressure_bounds_memory("uring", 1, 1)
}

#[test]
fn idle_timeout_closes_idle_connection_uring_w0() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    idle_timeout_closes_idle_connection("uring", 0)
}

#[test]
fn no_fd_leak_uring_w1() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    no_fd_leak("uring", 1)
}

#[test]
fn beyond_fd_setsize_uring() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    beyond_fd_setsize("uring")
}

/// More armed receives than the uring data path's buffer ring has blocks,
/// all woken by one burst: every connection is answered and, when the
/// clients leave, every one is closed. (An early version of the data path
/// left receives starved of blocks unanswered for good, spun on
/// `io_uring_enter`, grew without bound and ignored SIGTERM: found with
/// 3,000 idle connections each then sending one line.)
#[test]
fn a_burst_on_more_armed_receives_than_ring_blocks_is_answered_uring() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    const N: usize = 3000;
    let (soft, _) = rot13d::sys::raise_nofile_limit()?;
    ensure!(soft as usize > N + 64, "fd limit too low");
    let d = Daemon::start(0, &["--backend", "uring"])?;
    let base = fd_count(d.pid())?;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(d.connect()?);
    }
    // Every connection accepted (its receive armed in the same turn)
    // before any sends: the burst then finds all N receives waiting.
    ensure!(
        poll_until(Duration::from_secs(20), || fd_count(d.pid()).is_ok_and(|n| n >= base + N)),
        "the server did not accept {N} connections"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("client {i}\n").as_bytes())?;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = rot13_model(format!("client {i}\n").as_bytes(), 16384);
        let got = c.read_exact(want.len()).map_err(|e| fail(format!("client {i} of {N}: no answer: {e}")))?;
        ensure_bytes_eq(&format!("client {i} of {N}"), &got, &want)?;
    }
    drop(clients);
    let left = fd_count_back_to(d.pid(), base, Duration::from_secs(20));
    ensure!(left == base, "the server holds {left} fds after every client left, want {base}");
    Ok(())
}
