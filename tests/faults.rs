//! Faults under load (issue 13): each test drives the real daemon with
//! clients that stream, injects one fault, asserts what SPEC §1–§3 promise
//! through it and prints its figure (`FIGURE name: ...`; the nextest group
//! `faults` shows the output of passing tests, `.config/nextest.toml`).
//!
//! These tests are heavy (thousands of connections, 20 s of reloads): the
//! group runs them one at a time, beside at most one other test.
//!
//! Which worker holds a connection is read from the kernel: the server
//! side's inode in `/proc/net/tcp`, found among a worker's `/proc/PID/fd`.

use crate::ensure;
use crate::util::{
    Client, Cyclic, Daemon, admin_config, cpu_ticks, ensure_bytes_eq, fail, fd_count, fd_count_back_to, figure, get,
    kill, mib, nth_admin_addr, poll_until, random_lines, refused, root_or_skip, rot13_model, rss_anon, serves,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// Unprivileged uids of no user, one per process-limited test (a process
/// limit counts per uid, and control.rs uses 54321 and 54322).
const NPROC_CURRENT_UID: &str = "54323";
const NPROC_RELOAD_UID: &str = "54324";

/// `len` bytes of lines (at most 100 bytes each) ending with LF, so that
/// the answer to the block repeated is its answer repeated.
fn block(seed: u64, len: usize) -> Vec<u8> {
    let mut b = random_lines(seed, len, 100);
    if let Some(last) = b.last_mut() {
        *last = b'\n';
    }
    b
}

// ---------------------------------------------------------------------------
// A streaming client.

/// What a [`Stream`] saw.
#[derive(Debug)]
struct Streamed {
    /// Bytes written.
    sent: u64,
    /// Bytes of answer received, each checked.
    answered: u64,
    /// The longest time between two reads.
    max_gap: Duration,
    /// The first error (write, read, or a wrong byte).
    error: Option<String>,
}

impl Streamed {
    /// Every byte sent was answered, nothing went wrong.
    fn whole(&self) -> bool {
        self.error.is_none() && self.answered == self.sent
    }
}

/// One client that streams: a writer thread sends a block of lines over
/// and over (one block every `pace`), a reader thread checks every byte of
/// the answer as it comes. [`finish`](Stream::finish) stops the writer,
/// half-closes and reads the rest until the server closes.
struct Stream {
    /// The client's local port (the connection's name in `/proc/net/tcp`).
    port: u16,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    writer: thread::JoinHandle<Option<String>>,
    reader: thread::JoinHandle<(u64, Duration, Option<String>)>,
}

impl Stream {
    fn start(addr: SocketAddr, block: Arc<Vec<u8>>, pace: Duration) -> io::Result<Stream> {
        let c = Client::connect(addr)?;
        let port = c.stream.local_addr()?.port();
        let mut w = c.stream.try_clone()?;
        let mut r = c.stream;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let b = block.clone();
        let writer = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Err(e) = w.write_all(&b) {
                    return Some(format!("write: {e}"));
                }
                se.fetch_add(b.len() as u64, Ordering::SeqCst);
                thread::sleep(pace);
            }
            w.shutdown(Shutdown::Write).err().map(|e| format!("half-close: {e}"))
        });
        let want = rot13_model(&block, 16384);
        let reader = thread::spawn(move || {
            let mut check = Cyclic::new(want);
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = Instant::now();
            let mut max_gap = Duration::ZERO;
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return (check.total as u64, max_gap, None),
                    Ok(n) => {
                        max_gap = max_gap.max(last.elapsed());
                        last = Instant::now();
                        if let Err(e) = check.feed(&buf[..n]) {
                            return (check.total as u64, max_gap, Some(e.to_string()));
                        }
                    }
                    Err(e) => return (check.total as u64, max_gap, Some(format!("read: {e}"))),
                }
            }
        });
        Ok(Stream { port, stop, sent, writer, reader })
    }

    /// Bytes written so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Tells the writer to half-close after the block it is sending.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the writer (if not yet), waits for the reader's EOF.
    fn finish(self) -> Streamed {
        self.stop();
        let werr = self.writer.join().unwrap_or_else(|_| Some("writer panicked".into()));
        let (answered, max_gap, rerr) =
            self.reader.join().unwrap_or_else(|_| (0, Duration::ZERO, Some("reader panicked".into())));
        Streamed { sent: self.sent.load(Ordering::SeqCst), answered, max_gap, error: werr.or(rerr) }
    }
}

/// The time (seconds since the epoch) of the first log line holding every
/// one of `patterns`.
fn first_log_time(d: &Daemon, patterns: &[&str]) -> Option<f64> {
    crate::util::log_time(crate::util::lines_with(&d.log().text(), patterns).first()?)
}

/// Server-side owners of connections to `server_port`: client port -> the
/// pid among `pids` whose fd table holds the accepted socket.
fn owners(server_port: u16, pids: &[i32]) -> io::Result<HashMap<u16, i32>> {
    let port_of = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut by_inode: HashMap<String, u16> = HashMap::new();
    for line in std::fs::read_to_string("/proc/net/tcp")?.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && port_of(f[1]) == Some(server_port) && port_of(f[2]).is_some_and(|p| p != 0) {
            by_inode.insert(format!("socket:[{}]", f[9]), port_of(f[2]).unwrap_or(0));
        }
    }
    let mut found = HashMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            if let Ok(link) = std::fs::read_link(e.path())
                && let Some(port) = by_inode.get(link.to_string_lossy().as_ref())
            {
                found.insert(*port, pid);
            }
        }
    }
    Ok(found)
}

/// Waits until the owner of every connection in `ports` is known.
fn wait_owners(server_port: u16, pids: &[i32], ports: &[u16]) -> io::Result<HashMap<u16, i32>> {
    let mut map = HashMap::new();
    let known = poll_until(T, || {
        map = owners(server_port, pids).unwrap_or_default();
        ports.iter().all(|p| map.contains_key(p))
    });
    ensure!(known, "owners of {ports:?} among {pids:?} not found: {map:?}");
    Ok(map)
}

// ---------------------------------------------------------------------------
// kill -9 of a worker.

/// Two workers, each with streaming connections; one is killed with
/// SIGKILL. The other's streams see nothing (every byte answered, no
/// error, no pause of a second); a replacement serves within 1 s (SPEC §2).
#[test]
fn kill_9_of_a_worker_spares_the_other_workers_streams() -> io::Result<()> {
    let d = Daemon::builder().workers(2).start()?;
    d.wait_for_log("master running", T)?;
    let before = d.worker_pids();
    ensure!(before.len() == 2, "workers {before:?}");
    let port = d.addr().port();
    let data = Arc::new(block(1, 4096));
    // The reuseport hash spreads connections: open them until each worker
    // holds at least three.
    let mut streams: Vec<Stream> = Vec::new();
    let owner = loop {
        streams.push(Stream::start(d.addr(), data.clone(), Duration::from_millis(2))?);
        let ports: Vec<u16> = streams.iter().map(|s| s.port).collect();
        let owner = wait_owners(port, &before, &ports)?;
        if before.iter().all(|w| owner.values().filter(|o| **o == *w).count() >= 3) {
            break owner;
        }
        ensure!(streams.len() < 64, "64 connections, not three on each worker: {owner:?}");
    };
    let (victim, survivor) = (before[0], before[1]);
    ensure!(poll_until(T, || streams.iter().all(|s| s.sent() > 0)), "streams not flowing");
    thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    kill(victim, libc::SIGKILL)?;
    // Sixteen probes right after the kill: the reuseport hash sends some to
    // the dead worker's socket, where they wait in its backlog until the
    // replacement accepts them. When the last is answered, the replacement
    // served (an upper bound on when it began to).
    let mut probes = Vec::new();
    for _ in 0..16 {
        let mut c = Client::connect(d.addr())?;
        c.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.send(b"probe\n")?;
        probes.push(c);
    }
    for (i, c) in probes.iter_mut().enumerate() {
        let a = c.read_exact(6).map_err(|e| fail(format!("probe {i} after the kill: {e}\n{}", d.log().text())))?;
        ensure_bytes_eq("probe", &a, b"cebor\n")?;
    }
    let took = t0.elapsed();
    let new: Vec<i32> = d.worker_pids().into_iter().filter(|p| !before.contains(p)).collect();
    ensure!(new.len() == 1, "workers after the kill: {:?} (before {before:?})", d.worker_pids());
    let replacement = new[0];
    let ports: Vec<u16> = probes.iter().map(|c| c.stream.local_addr().map(|a| a.port()).unwrap_or(0)).collect();
    let by = owners(port, &new)?;
    let on_new = ports.iter().filter(|p| by.contains_key(p)).count();
    ensure!(on_new > 0, "none of 16 probes reached the replacement {replacement}");
    drop(probes);
    // The daemon's own part: from the death it logged to the replacement's
    // `reactor` line.
    let died = first_log_time(&d, &["worker died", &format!("pid={victim} ")]);
    let up = first_log_time(&d, &["reactor", &format!("pid={replacement} ")]);
    let daemon_took = died.zip(up).map(|(a, b)| format!("{:.2?}", Duration::from_secs_f64((b - a).max(0.0))));
    let daemon_took = daemon_took.unwrap_or_else(|| "?".into());
    thread::sleep(Duration::from_millis(300));
    streams.iter().for_each(Stream::stop);
    let (mut kept, mut cut) = (Vec::new(), 0);
    for s in streams {
        let on = owner.get(&s.port).copied();
        let r = s.finish();
        if on == Some(survivor) {
            kept.push(r);
        } else if !r.whole() {
            cut += 1;
        }
    }
    let bytes: u64 = kept.iter().map(|r| r.sent).sum();
    let lost: u64 = kept.iter().map(|r| r.sent - r.answered.min(r.sent)).sum();
    let gap = kept.iter().map(|r| r.max_gap).max().unwrap_or_default();
    figure(
        "kill -9",
        &format!(
            "other worker's {} streams, {} sent, {lost} bytes lost, longest pause {gap:.2?}; {cut} streams of the \
             killed worker cut; replacement {replacement} served {on_new} of 16 probes, all answered \
             {took:.2?} after the kill (its reactor logged {daemon_took} after the death)",
            kept.len(),
            mib(bytes)
        ),
    );
    for (i, r) in kept.iter().enumerate() {
        ensure!(r.whole(), "surviving worker's stream {i} saw the kill: {r:?}");
    }
    ensure!(gap < Duration::from_secs(1), "a surviving stream paused {gap:?}");
    ensure!(took < Duration::from_secs(1), "the replacement served after {took:?}, want < 1 s");
    Ok(())
}

// ---------------------------------------------------------------------------
// Reloads under load.

/// Counts of the connect loops.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    lines: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    lost_lines: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(what);
    }
}

/// A client that connects, sends a few lines, half-closes and checks the
/// whole answer, in a loop until `stop`.
fn connect_loop(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = crate::util::Rng::new(seed);
        while !stop.load(Ordering::SeqCst) {
            let input = block(rng.next_u64(), 1 + rng.below(20_000));
            let want = rot13_model(&input, 16384);
            let lines = input.iter().filter(|b| **b == b'\n').count() as u64;
            let c = match Client::connect(addr) {
                Ok(c) => c,
                Err(e) => {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    tally.error(format!("connect: {e}"));
                    continue;
                }
            };
            tally.connections.fetch_add(1, Ordering::SeqCst);
            match c.roundtrip(&input) {
                Ok(got) if got == want => {
                    tally.lines.fetch_add(lines, Ordering::SeqCst);
                }
                Ok(got) => {
                    tally.cut.fetch_add(1, Ordering::SeqCst);
                    let answered = got.iter().filter(|b| **b == b'\n').count() as u64;
                    tally.lost_lines.fetch_add(lines.saturating_sub(answered), Ordering::SeqCst);
                    tally.lines.fetch_add(answered.min(lines), Ordering::SeqCst);
                    tally.error(format!("answer of {} bytes to {} bytes", got.len(), input.len()));
                }
                Err(e) => {
                    tally.cut.fetch_add(1, Ordering::SeqCst);
                    tally.lost_lines.fetch_add(lines, Ordering::SeqCst);
                    tally.error(format!("round trip: {e}"));
                }
            }
        }
    })
}

/// SIGHUP every 2 s for 20 s while four clients connect, send and check in
/// a loop and two streams run through every reload: 0 refused, 0 cut, 0
/// lost lines (SPEC §2: no client is refused or cut by a reload).
#[test]
fn sighup_every_2s_for_20s_under_load_refuses_cuts_and_loses_nothing() -> io::Result<()> {
    let d = Daemon::builder().workers(2).config("[server]\n").start()?;
    d.wait_for_log("master running", T)?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loops: Vec<_> = (0..4).map(|i| connect_loop(d.addr(), 100 + i, stop.clone(), tally.clone())).collect();
    let data = Arc::new(block(2, 4096));
    let streams: Vec<Stream> =
        (0..2).map(|_| Stream::start(d.addr(), data.clone(), Duration::from_millis(2))).collect::<io::Result<_>>()?;
    let t0 = Instant::now();
    let reloads = 10;
    for i in 0..reloads {
        let at = t0 + Duration::from_secs(1 + 2 * i);
        thread::sleep(at.saturating_duration_since(Instant::now()));
        d.signal(libc::SIGHUP)?;
    }
    thread::sleep((t0 + Duration::from_secs(20)).saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().map_err(|_| fail("a connect loop panicked"))?;
    }
    streams.iter().for_each(Stream::stop);
    let streamed: Vec<Streamed> = streams.into_iter().map(Stream::finish).collect();
    d.log().wait_count(&["reloaded"], reloads as usize, T)?;
    let superseded = d.log().count(&["supersedes"]);
    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let stream_bytes: u64 = streamed.iter().map(|s| s.answered).sum();
    figure(
        "SIGHUP every 2 s",
        &format!(
            "{reloads} reloads in 20 s ({superseded} superseded): {} connections, {} lines; 2 streams through every \
             reload, {} answered; {} refused, {} cut, {} lost lines",
            n(&tally.connections),
            n(&tally.lines),
            mib(stream_bytes),
            n(&tally.refused),
            n(&tally.cut),
            n(&tally.lost_lines),
        ),
    );
    let first = tally.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(n(&tally.refused) == 0 && n(&tally.cut) == 0 && n(&tally.lost_lines) == 0, "first failure: {first:?}");
    ensure!(n(&tally.connections) > 0, "no connection at all");
    for (i, s) in streamed.iter().enumerate() {
        ensure!(s.whole(), "stream {i} across the reloads: {s:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// SIGTERM under load.

/// Sixteen streams; SIGTERM; the clients go on sending for 200 ms, then
/// half-close. Eight end each block inside a line, so they are busy at the
/// signal (a partial line buffered): every byte they send is answered
/// until they half-close. The other eight send whole lines: one idle at the
/// signal (nothing buffered, nothing in flight) may be closed at once
/// (SPEC §2), and then every byte it sent before the signal was answered
/// and what it sent after is refused by a reset, never half answered. New
/// clients are refused; the master exits 0.
fn sigterm_under_load(workers: usize) -> io::Result<()> {
    let mut d = Daemon::builder().workers(workers).start()?;
    d.wait_for_log("master running", T)?;
    let lines = Arc::new(block(3, 4096));
    let mut partial = block(4, 4096);
    partial.extend_from_slice(b"a line cut by the block's end: ");
    let partial = Arc::new(partial);
    let mut streams = Vec::new();
    for i in 0..16 {
        let b = if i % 2 == 0 { partial.clone() } else { lines.clone() };
        streams.push((i % 2 == 0, b.len() as u64, Stream::start(d.addr(), b, Duration::from_millis(1))?));
    }
    ensure!(poll_until(T, || streams.iter().all(|(_, _, s)| s.sent() > 0)), "streams not flowing");
    thread::sleep(Duration::from_millis(500));
    let before: Vec<u64> = streams.iter().map(|(_, _, s)| s.sent()).collect();
    let t0 = Instant::now();
    d.signal(libc::SIGTERM)?;
    let addr = d.addr();
    ensure!(poll_until(Duration::from_secs(1), || refused(addr)), "new clients still accepted 1 s after SIGTERM");
    let refused_after = t0.elapsed();
    thread::sleep(Duration::from_millis(200).saturating_sub(t0.elapsed()));
    for (_, _, s) in &streams {
        s.stop();
    }
    let done: Vec<(bool, u64, Streamed)> = streams.into_iter().map(|(busy, len, s)| (busy, len, s.finish())).collect();
    let status = d.wait_exit(T)?;
    let exited = t0.elapsed();
    let sent: u64 = done.iter().map(|(_, _, s)| s.sent).sum();
    let at_signal: u64 = before.iter().sum();
    let closed_idle = done.iter().filter(|(busy, _, s)| !busy && !s.whole()).count();
    let unanswered_busy: u64 =
        done.iter().filter(|(b, _, _)| *b).map(|(_, _, s)| s.sent - s.answered.min(s.sent)).sum();
    figure(
        &format!("SIGTERM under load (workers = {workers})"),
        &format!(
            "16 streams, {} sent ({} after the signal); 8 busy at the signal: {unanswered_busy} bytes unanswered; 8 \
             on line boundaries: {closed_idle} closed as idle at the signal (after answering all they had sent), \
             the others answered to the last byte; new clients refused after {refused_after:.2?}; exit {:?} after {exited:.2?}",
            mib(sent),
            mib(sent - at_signal),
            status.code()
        ),
    );
    for (i, ((busy, len, s), sent_before)) in done.iter().zip(&before).enumerate() {
        ensure!(
            s.answered >= *sent_before,
            "stream {i}: {} answered of {sent_before} sent before SIGTERM: {s:?}",
            s.answered
        );
        if *busy {
            ensure!(s.whole(), "busy stream {i}: {s:?}");
        } else if !s.whole() {
            let reset = s.error.as_deref().is_some_and(|e| e.starts_with("write:"));
            ensure!(reset && s.answered % len == 0, "stream {i} closed at the signal: {s:?}");
        }
    }
    ensure!(status.code() == Some(0), "exit {status:?}:\n{}", d.log().text());
    Ok(())
}

#[test]
fn sigterm_under_load_answers_every_line_w0() -> io::Result<()> {
    sigterm_under_load(0)
}

#[test]
fn sigterm_under_load_answers_every_line_w2() -> io::Result<()> {
    sigterm_under_load(2)
}

/// `(tx_queue, rx_queue)` of the server side of the connection from local
/// port `client_port` to `server_port` (`/proc/net/tcp`).
fn server_queues(server_port: u16, client_port: u16) -> io::Result<Option<(u64, u64)>> {
    for line in std::fs::read_to_string("/proc/net/tcp")?.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        if f.len() > 4 && port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port) {
            let (tx, rx) = f[4].split_once(':').unwrap_or(("", ""));
            return Ok(Some((u64::from_str_radix(tx, 16).unwrap_or(0), u64::from_str_radix(rx, 16).unwrap_or(0))));
        }
    }
    Ok(None)
}

/// A client that stops reading for a while: the server has answered all
/// it received and written it to the socket, but part of the answer still
/// waits in the server's kernel send queue (the client's receive window is
/// full). A graceful stop (or a retire, once it has been quiet for 1 s)
/// must not take it for idle: closed then, the client's next line would
/// reset the connection and the kernel would drop the queued answer. It is
/// served until it half-closes: every byte answered.
fn drain_spares_an_answer_queued_in_the_kernel(retire: bool) -> io::Result<()> {
    let d = Daemon::builder().workers(1).config(&admin_config("")).start()?;
    let admin = nth_admin_addr(&d, 0)?;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_recv_buffer_size(4096)?;
    s.connect(&d.addr().into())?;
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(T))?;
    let input = block(5, 16 * 1024);
    c.write_all(&input)?;
    let me = c.local_addr()?.port();
    // Everything received and written to the socket (the counters agree),
    // part of it still queued in the server's kernel, nothing unread there.
    let counters = || -> io::Result<(u64, u64)> {
        let b = get(admin, "/metrics")?.1;
        let m = |n| crate::util::metric(&b, n).unwrap_or(0);
        Ok((m("rot13d_bytes_received_total"), m("rot13d_bytes_sent_total")))
    };
    let n = input.len() as u64;
    let mut seen = (0, 0, None);
    let queued = poll_until(T, || {
        let (r, w) = counters().unwrap_or_default();
        let q = server_queues(d.addr().port(), me).ok().flatten();
        seen = (r, w, q);
        r == n && w == n && q.is_some_and(|(tx, rx)| tx > 0 && rx == 0)
    });
    ensure!(queued, "not the state under test (received, sent, (tx, rx) queues): {seen:?}");
    if retire {
        // Quiet for the retiring worker's 1 s first.
        thread::sleep(Duration::from_millis(1100));
        d.signal(libc::SIGHUP)?;
        d.log().wait_count(&["draining", "retiring=true"], 1, T)?;
    } else {
        d.signal(libc::SIGTERM)?;
        d.log().wait_count(&["draining", "retiring=false"], 1, T)?;
    }
    let more = b"one more line\n";
    let sent_more = c.write_all(more);
    let _ = c.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let read = c.read_to_end(&mut got);
    let mut all = input.clone();
    all.extend_from_slice(more);
    ensure!(sent_more.is_ok() && read.is_ok(), "write {sent_more:?}, read {read:?} after {} bytes", got.len());
    ensure_bytes_eq("the slow reader's answer", &got, &rot13_model(&all, 16384))
}

#[test]
fn graceful_stop_spares_an_answer_queued_in_the_kernel() -> io::Result<()> {
    drain_spares_an_answer_queued_in_the_kernel(false)
}

#[test]
fn retire_spares_an_answer_queued_in_the_kernel() -> io::Result<()> {
    drain_spares_an_answer_queued_in_the_kernel(true)
}

// ---------------------------------------------------------------------------
// A generation that cannot start.

/// Sets the soft process limit of the running `pid`, as its own `uid`
/// (root here may lack CAP_SYS_RESOURCE, which changing another user's
/// limits needs; the hard limit stays, so the soft one can be raised again).
fn set_nproc(pid: i32, uid: &str, soft: u32) -> io::Result<()> {
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let s = std::process::Command::new("setpriv")
        .args([&reuid, &regid, "--clear-groups", "prlimit", "--pid", &pid.to_string(), &format!("--nproc={soft}:")])
        .status()?;
    ensure!(s.success(), "prlimit --pid {pid} --nproc={soft}: as {uid}: {s:?}");
    Ok(())
}

/// The `retry_s=` of every "cannot start a worker" line.
fn retries(d: &Daemon) -> Vec<u64> {
    d.log()
        .text()
        .lines()
        .filter(|l| l.contains("cannot start a worker"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("retry_s=")).and_then(|v| v.parse().ok()))
        .collect()
}

/// Waits for the `n`-th failed start; when it was seen.
fn nth_failed_start(d: &Daemon, n: usize) -> io::Result<Instant> {
    d.log().wait_count(&["cannot start a worker"], n, Duration::from_secs(40))?;
    Ok(Instant::now())
}

/// The time between consecutive failed starts, from the timestamps of the
/// master's own lines: when the test saw a line is no measure of when it
/// was logged (a test busy probing, on a loaded machine, sees one late and
/// the next gap short).
fn failed_start_gaps(d: &Daemon) -> Vec<Duration> {
    let at: Vec<f64> = crate::util::lines_with(&d.log().text(), &["cannot start a worker"])
        .iter()
        .filter_map(|l| crate::util::log_time(l))
        .collect();
    at.windows(2).map(|w| Duration::from_secs_f64((w[1] - w[0]).max(0.0))).collect()
}

/// The only worker dies and its replacement cannot be forked (the process
/// limit of the daemon's uid, RLIMIT_NPROC, lowered to 1 while it runs):
/// each attempt waits twice as long as the one before (1, 2, 4 s), the
/// master stays up and logs why, `/healthz` says 503; once the limit is
/// raised, the next attempt serves and `/healthz` says 200 again.
#[test]
fn a_replacement_that_cannot_fork_backs_off_and_healthz_says_503() -> io::Result<()> {
    if !root_or_skip("to run the daemon as another uid and change its process limit") {
        return Ok(());
    }
    let (reuid, regid) = (format!("--reuid={NPROC_CURRENT_UID}"), format!("--regid={NPROC_CURRENT_UID}"));
    let d = Daemon::builder()
        .workers(1)
        .config(&admin_config(""))
        .wrapper(&["setpriv", &reuid, &regid, "--clear-groups"])
        .start()?;
    let admin = nth_admin_addr(&d, 0)?;
    ensure!(poll_until(T, || get(admin, "/healthz").is_ok_and(|(c, _)| c == 200)), "never healthy");
    set_nproc(d.pid(), NPROC_CURRENT_UID, 1)?;
    let w = d.worker_pids();
    ensure!(w.len() == 1, "workers {w:?}");
    kill(w[0], libc::SIGKILL)?;
    let t1 = nth_failed_start(&d, 1)?;
    let (code, body) = get(admin, "/healthz")?;
    let t2 = nth_failed_start(&d, 2)?;
    let t3 = nth_failed_start(&d, 3)?;
    ensure!(crate::util::alive(d.pid()), "the master died");
    let delays = retries(&d);
    let why = d.log().text().lines().find(|l| l.contains("cannot start a worker")).unwrap_or("").to_string();
    set_nproc(d.pid(), NPROC_CURRENT_UID, 2)?;
    let raised = Instant::now();
    ensure!(
        poll_until(Duration::from_secs(8), || get(admin, "/healthz").is_ok_and(|(c, _)| c == 200)),
        "not healthy after the limit was raised:\n{}",
        d.log().text()
    );
    let recovered = raised.elapsed();
    serves(&d, "after the backoff")?;
    figure(
        "a replacement that cannot fork",
        &format!(
            "RLIMIT_NPROC 1: retries after {delays:?} s (seen {:.2?}, {:.2?} apart); master up; /healthz {code} \
             {body:?}; healthy {recovered:.2?} after the limit was raised",
            t2 - t1,
            t3 - t2
        ),
    );
    ensure!(why.contains("ERROR") && why.contains("fork"), "the log does not say why: {why}");
    let gaps = failed_start_gaps(&d);
    let floors = [900, 1900].map(Duration::from_millis);
    ensure!(gaps.len() >= 2 && gaps.iter().zip(floors).all(|(g, f)| *g >= f), "retried too soon: {gaps:?} apart");
    ensure!(delays.len() >= 3 && delays[..3] == [1, 2, 4], "retry delays {delays:?}, want 1, 2, 4");
    ensure!(code == 503 && body == "degraded: 0 of 1 workers of generation 1 serving\n", "/healthz {code} {body:?}");
    Ok(())
}

/// A reload whose new workers cannot be forked (RLIMIT_NPROC 2: the master
/// and its one worker): each attempt waits twice as long (1, 2, 4, 8 s)
/// until the start bound (10 s) gives the generation up; the old one
/// serves throughout and the master says why. `/healthz` stays 200 "ok":
/// the current generation is the old one until the new one serves
/// (SPEC §3), and it serves.
#[test]
fn a_reload_whose_workers_cannot_fork_backs_off_and_the_old_generation_serves() -> io::Result<()> {
    if !root_or_skip("to run the daemon as another uid") {
        return Ok(());
    }
    let (reuid, regid) = (format!("--reuid={NPROC_RELOAD_UID}"), format!("--regid={NPROC_RELOAD_UID}"));
    let d = Daemon::builder()
        .workers(1)
        .config(&admin_config(""))
        .wrapper(&["prlimit", "--nproc=2:2", "setpriv", &reuid, &regid, "--clear-groups"])
        .start()?;
    let admin = nth_admin_addr(&d, 0)?;
    ensure!(poll_until(T, || get(admin, "/healthz").is_ok_and(|(c, _)| c == 200)), "never healthy");
    let first = d.worker_pids();
    let t0 = Instant::now();
    d.signal(libc::SIGHUP)?;
    let mut health = Vec::new();
    let mut served = 0;
    let mut times = Vec::new();
    for n in 1..=4 {
        times.push(nth_failed_start(&d, n)? - t0);
        let (code, body) = get(admin, "/healthz")?;
        health.push(code);
        ensure!(code == 200 && body == "ok\n", "/healthz {code} {body:?} while the old generation serves");
        serves(&d, &format!("during attempt {n}"))?;
        served += 1;
    }
    d.log().wait_count(&["ERROR", "reload failed", "did not serve in time"], 1, Duration::from_secs(15))?;
    let gave_up = t0.elapsed();
    serves(&d, "after the failed reload")?;
    ensure!(d.worker_pids() == first, "workers {first:?} -> {:?}", d.worker_pids());
    let delays = retries(&d);
    figure(
        "a reload that cannot fork",
        &format!(
            "RLIMIT_NPROC 2: attempts at {times:.2?}, retries after {delays:?} s; given up after {gave_up:.2?}; old \
             generation answered {served}/{served} probes; /healthz {health:?}"
        ),
    );
    let gaps = failed_start_gaps(&d);
    let floors = [900, 1900, 3900].map(Duration::from_millis);
    ensure!(
        gaps.len() >= 3 && gaps.iter().zip(floors).all(|(g, f)| *g >= f),
        "attempts {gaps:?} apart, want at least 1, 2, 4 s"
    );
    ensure!(delays.len() >= 4 && delays[..4] == [1, 2, 4, 8], "retry delays {delays:?}, want 1, 2, 4, 8");
    Ok(())
}

/// A reload to a user that does not exist: the configuration is refused
/// (the user is resolved when it is loaded, naming the key), the running
/// generation keeps serving and `/healthz` says 200.
#[test]
fn a_reload_to_a_user_that_does_not_exist_is_refused() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config(&admin_config("")).start()?;
    let admin = nth_admin_addr(&d, 0)?;
    let first = d.worker_pids();
    std::fs::write(d.config_path(), admin_config("[server]\nuser = \"no-such-user-r13\"\n"))?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["ERROR", "reload failed", "server.user"], 1, T)?;
    serves(&d, "after the refused reload")?;
    ensure!(d.worker_pids() == first, "workers {first:?} -> {:?}", d.worker_pids());
    let (code, body) = get(admin, "/healthz")?;
    ensure!(code == 200 && body == "ok\n", "/healthz {code} {body:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Slowloris.

/// How many slowloris clients.
const SLOW_CLIENTS: usize = 10_000;
/// What a worker may keep (resident heap, `RssAnon`) per connection of a
/// burst once it is over: the reactor's tables keep the size the burst gave
/// them: two event slots (~48 B each) and two timer nodes (24 B each) a
/// connection, its fd's entry in the fd map (40 B) and the epoll backend's
/// per-fd state, ≈ 200 B (measured 220–235 B with page rounding).
/// Everything the daemon itself holds for a connection (its buffers, its
/// entry in the worker's table, ~580 B in all) is given back.
const KEPT_PER_CONNECTION: u64 = 256;

/// Opens `n` connections from ten loopback addresses (the ephemeral ports
/// of one would be a third used), each sending `partial`; when each was sent.
fn slow_clients(to: SocketAddr, n: usize, partial: &[u8]) -> io::Result<Vec<(TcpStream, Instant)>> {
    use socket2::{Domain, Socket, Type};
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let src = SocketAddr::from(([127, 0, 0, 2 + (i % 10) as u8], 0));
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&src.into())?;
        s.connect(&to.into()).map_err(|e| fail(format!("connection {i}: {e}")))?;
        let mut s: TcpStream = s.into();
        s.write_all(partial).map_err(|e| fail(format!("connection {i}: send: {e}")))?;
        s.set_nonblocking(true)?;
        v.push((s, Instant::now()));
    }
    Ok(v)
}

/// Reads every connection until EOF (bounded by `deadline`): what each
/// received, and how long after its last byte it was closed. Epoll, so
/// that the reader's own cost follows the connections that are ready, not
/// the 10,000 it holds.
fn read_until_closed(
    conns: &[(TcpStream, Instant)],
    deadline: Instant,
) -> io::Result<Vec<(Vec<u8>, Option<Duration>)>> {
    use rot13d::sys::epoll::{EPOLLIN, EPOLLRDHUP, Epoll, Op};
    use std::os::fd::AsRawFd;
    let mut ep = Epoll::new(1024)?;
    for (i, (c, _)) in conns.iter().enumerate() {
        ep.ctl(Op::Add, c.as_raw_fd(), (EPOLLIN | EPOLLRDHUP) as u32, i as u64)?;
    }
    let mut out: Vec<(Vec<u8>, Option<Duration>)> = vec![(Vec::new(), None); conns.len()];
    let (mut open, mut buf, mut ready) = (conns.len(), [0u8; 256], Vec::new());
    while open > 0 && Instant::now() < deadline {
        ready.clear();
        ep.wait(100, |e| ready.push(e.data as usize))?;
        for &i in &ready {
            if out[i].1.is_some() {
                continue;
            }
            loop {
                match (&conns[i].0).read(&mut buf) {
                    Ok(0) => {
                        out[i].1 = Some(conns[i].1.elapsed());
                        open -= 1;
                        ep.ctl(Op::Del, conns[i].0.as_raw_fd(), 0, 0)?;
                        break;
                    }
                    Ok(n) => out[i].0.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(fail(format!("connection {i}: {e}"))),
                }
            }
        }
    }
    Ok(out)
}

/// 10,000 clients each send a partial line and nothing more (slowloris):
/// while they wait the daemon spends no CPU; each is answered its partial
/// line and closed `idle_timeout` after its last byte (within one more
/// second, SPEC §3); afterwards the worker's fd count is what it was and
/// its resident heap at most [`KEPT_PER_CONNECTION`] a connection above it; a second
/// burst grows it no further. With `strict`, the RSS must be back within
/// 1 MiB (the reactor's tables too).
fn slowloris(strict: bool) -> io::Result<()> {
    const N: usize = SLOW_CLIENTS;
    const IDLE: Duration = Duration::from_secs(6);
    const TURN: Duration = Duration::from_millis(100);
    rot13d::sys::raise_nofile_limit()?;
    let (limit, _) = rot13d::sys::nofile_limit()?;
    ensure!(limit as usize > N + 100, "this process may open {limit} fds, the test needs {N} and some");
    let d = Daemon::builder().workers(1).config(&format!("[server]\nidle_timeout = {}\n", IDLE.as_secs())).start()?;
    let w = d.serving_pid()?;
    serves(&d, "warm up")?;
    let (fd0, rss0) = (fd_count(w)?, rss_anon(w)?);
    let partial = b"GET / HTTP/1.1\r\nHost: slow";
    let answer = rot13_model(partial, 16384);
    let t_start = Instant::now();
    let conns = slow_clients(d.addr(), N, partial)?;
    let connect_took = t_start.elapsed();
    let mut held = 0;
    ensure!(
        poll_until(T, || {
            held = fd_count(w).unwrap_or(0);
            held >= fd0 + N
        }),
        "the worker holds {held} fds, {fd0} + {N} wanted"
    );
    let rss_full = rss_anon(w)?;
    // Idle: until shortly before the first connection's timeout.
    let quiet_until = conns[0].1 + IDLE - Duration::from_millis(500);
    let (c0, m0, q0) = (cpu_ticks(w)?, cpu_ticks(d.pid())?, Instant::now());
    ensure!(quiet_until > q0 + Duration::from_secs(1), "connecting took {connect_took:?}: no idle second left");
    thread::sleep(quiet_until - q0);
    let quiet = q0.elapsed();
    let (cpu_w, cpu_m) = (cpu_ticks(w)? - c0, cpu_ticks(d.pid())? - m0);
    let c1 = cpu_ticks(w)?;
    let got = read_until_closed(&conns, conns[N - 1].1 + IDLE + Duration::from_secs(5))?;
    // The worker's CPU over the closes: against their spread, it tells a
    // slow worker from a machine that does not give it the CPU.
    let cpu_closing = cpu_ticks(w)? - c1;
    let open = got.iter().filter(|(_, t)| t.is_none()).count();
    let wrong = got.iter().filter(|(g, _)| g[..] != answer[..]).count();
    let times: Vec<Duration> = got.iter().filter_map(|(_, t)| *t).collect();
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    drop(conns);
    let settle = || fd_count_back_to(w, fd0, T);
    let fds_end = settle();
    let rss_end = rss_anon(w)?;
    // A second burst, closed by the clients: nothing more is kept.
    drop(slow_clients(d.addr(), N, partial)?);
    let fds_again = settle();
    let rss_again = rss_anon(w)?;
    let ticks_per_s = |t: u64| t as f64 / quiet.as_secs_f64();
    let kept = rss_end.saturating_sub(rss0);
    figure(
        "slowloris",
        &format!(
            "{N} idle connections from 10 addresses (connected in {connect_took:.2?}): worker +{} fds, RssAnon {} -> {} \
             ({} B a connection); over {quiet:.2?} idle the worker used {cpu_w} and the master {cpu_m} CPU ticks \
             ({:.1}% of a core); closed {first:.2?} to {last:.2?} after their last byte (idle_timeout {IDLE:?}; \
             the worker used {cpu_closing} CPU ticks closing them), {} of {N} answered their partial line; afterwards fds {fd0} -> {fds_end}, RssAnon {} -> {} ({} B a \
             connection kept); after a second burst fds {fds_again}, RssAnon {}",
            held - fd0,
            mib(rss0),
            mib(rss_full),
            rss_full.saturating_sub(rss0) / N as u64,
            ticks_per_s(cpu_w + cpu_m),
            N - wrong,
            mib(rss0),
            mib(rss_end),
            kept / N as u64,
            mib(rss_again)
        ),
    );
    ensure!(
        open == 0,
        "{open} of {N} connections still open {:?} after the last was idle",
        IDLE + Duration::from_secs(5)
    );
    ensure!(wrong == 0, "{wrong} connections were not answered exactly {answer:?}");
    // The reactor arms a timeout from the time cached at the start of its
    // turn (libevent's semantics; `no_cache_time` reads the clock instead),
    // so under this burst one may fire a turn early: 1.6 ms was seen.
    ensure!(first + TURN >= IDLE, "a connection closed after {first:?}, before idle_timeout {IDLE:?} - {TURN:?}");
    ensure!(last <= IDLE + Duration::from_secs(1), "a connection closed after {last:?}, idle_timeout {IDLE:?} + 1 s");
    // Ticks are 1/100 s: at most 2 per second of idle = 2% of a core.
    let idle_cpu_ok = (cpu_w + cpu_m) as f64 <= 2.0 * quiet.as_secs_f64();
    ensure!(idle_cpu_ok, "{cpu_w} + {cpu_m} CPU ticks over {quiet:?} with only idle clients");
    ensure!(fds_end == fd0 && fds_again == fd0, "the worker holds {fds_end}, then {fds_again} fds; {fd0} before");
    let allowed = if strict { 1 << 20 } else { KEPT_PER_CONNECTION * N as u64 };
    ensure!(
        kept <= allowed,
        "RssAnon {} afterwards, {} before: {kept} B kept, {allowed} allowed",
        mib(rss_end),
        mib(rss0)
    );
    ensure!(
        rss_again <= rss_end + (256 << 10),
        "a second burst grew RssAnon from {} to {}",
        mib(rss_end),
        mib(rss_again)
    );
    Ok(())
}

#[test]
fn slowloris_10000_idle_connections_are_closed_at_idle_timeout() -> io::Result<()> {
    slowloris(false)
}

/// The reactor's part (src/reactor, being restructured by issue 10): its
/// event slots, fd map and timer nodes keep the size of the largest burst,
/// ~2 MiB after 10,000 connections. Reported, not fixed here.
#[test]
#[ignore = "the reactor's tables keep their high-water size (~2 MiB after 10,000 connections): issue 13 report"]
fn slowloris_rss_returns_to_the_start_reactor_included() -> io::Result<()> {
    slowloris(true)
}

// ---------------------------------------------------------------------------
// A full fd table.

/// The worker's fd table fills (the daemon runs with 64 fds, hard, and
/// `max_connections = 1000`, so the cap never protects it): accept fails
/// with EMFILE, accepting pauses (one WARN, no CPU spent meanwhile), the
/// clients it could not take wait in the backlog, neither refused nor
/// closed, and are served as the first ones leave: all 150 answered.
#[test]
fn a_full_fd_table_pauses_accepting_without_spinning_and_loses_no_client() -> io::Result<()> {
    const N: usize = 150;
    let d = Daemon::builder()
        .workers(1)
        .config("[server]\nmax_connections = 1000\n")
        .wrapper(&["prlimit", "--nofile=64:64"])
        .start()?;
    let w = d.serving_pid()?;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = Client::connect(d.addr())?;
        c.send(format!("client {i}\n").as_bytes())?;
        clients.push(c);
    }
    d.wait_for_log("file descriptor table full", T)?;
    let held = fd_count(w)?;
    let (c0, t0) = (cpu_ticks(w)?, Instant::now());
    thread::sleep(Duration::from_secs(1));
    let (ticks, quiet) = (cpu_ticks(w)? - c0, t0.elapsed());
    // Served in order: each answered (at once, or once a slot freed), then gone.
    let t1 = Instant::now();
    for (i, mut c) in clients.into_iter().enumerate() {
        let want = rot13_model(format!("client {i}\n").as_bytes(), 16384);
        let got = c.read_exact(want.len()).map_err(|e| fail(format!("client {i} of {N}: {e}")))?;
        ensure_bytes_eq(&format!("client {i}"), &got, &want)?;
    }
    let served = t1.elapsed();
    let warnings = d.log().count(&["WARN", "file descriptor table full"]);
    figure(
        "fd table full",
        &format!(
            "RLIMIT_NOFILE 64: the worker's table full ({held} open), {N} clients; {warnings} WARN; {ticks} CPU ticks over \
             {quiet:.2?} while full; all {N} answered in {served:.2?}, the waiting ones as slots freed"
        ),
    );
    ensure!(ticks <= 2, "{ticks} CPU ticks in {quiet:?} with a full fd table: accepting spins");
    ensure!(warnings == 1, "{warnings} WARN lines about the full table, want 1 (at most one per 10 s)");
    serves(&d, "after the full table")
}

// ---------------------------------------------------------------------------
// Clients that go away.

/// How a client of [`clients_that_go_away`] ends.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// Sends lines and a partial one, reads part of the answer, resets.
    ResetMidStream,
    /// Sends lines, half-closes, reads the whole answer.
    HalfClose,
    /// Sends without reading until the server's output backs up, then
    /// closes with answers unread (a reset while the server writes).
    VanishWhileWritten,
}

fn leave(addr: SocketAddr, how: Leave, seed: u64) -> io::Result<()> {
    match how {
        Leave::ResetMidStream => {
            let mut c = Client::connect(addr)?;
            let mut input = block(seed, 32 * 1024);
            input.extend_from_slice(b"and a partial line");
            c.send(&input)?;
            let _ = c.read_exact(1024)?;
            socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO))?;
        }
        Leave::HalfClose => {
            let input = block(seed, 32 * 1024);
            let got = Client::connect(addr)?.roundtrip(&input)?;
            ensure_bytes_eq("half-closed client", &got, &rot13_model(&input, 16384))?;
        }
        Leave::VanishWhileWritten => {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            // A small receive buffer: the server's output backs up sooner.
            s.set_recv_buffer_size(4096)?;
            s.connect(&addr.into())?;
            let mut s: TcpStream = s.into();
            s.set_write_timeout(Some(Duration::from_millis(300)))?;
            let chunk = block(seed, 64 * 1024);
            for _ in 0..64 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// `n` clients leaving `how`, 16 at a time.
fn clients_that_go_away(addr: SocketAddr, how: Leave, n: usize, seed: u64) -> io::Result<()> {
    let per = n / 16;
    let hs: Vec<_> = (0..16u64)
        .map(|t| {
            thread::spawn(move || -> io::Result<()> {
                for i in 0..per as u64 {
                    leave(addr, how, seed + t * 1000 + i)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| fail("a client thread panicked"))??;
    }
    Ok(())
}

/// Resets mid-stream, half-closes, and clients that vanish while the
/// server writes to them: for each, 3 × 320 clients after a warm-up round;
/// the worker's `/proc/PID/fd` count is exactly what it was and its
/// resident heap (`RssAnon`) within 64 KiB (16 pages) of it, plus the chunk
/// pool's 8 blocks of 64 KiB for the clients that vanish while written to.
#[test]
fn clients_that_reset_half_close_or_vanish_leave_fds_and_rss_as_they_were() -> io::Result<()> {
    let d = Daemon::builder().workers(1).start()?;
    let w = d.serving_pid()?;
    // One connection first: descriptors created lazily count in the baseline.
    serves(&d, "warm up")?;
    let fd0 = fd_count(w)?;
    // Waits until the worker holds no connection's descriptor; the count.
    let settled = || fd_count_back_to(w, fd0, T);
    let mut failures = Vec::new();
    for (k, how) in [Leave::ResetMidStream, Leave::HalfClose, Leave::VanishWhileWritten].into_iter().enumerate() {
        let seed = 1000 * k as u64;
        // A warm-up round: the allocator's pools for this kind of client
        // exist before the baseline is taken.
        clients_that_go_away(d.addr(), how, 320, seed)?;
        let warm = settled();
        ensure!(warm == fd0, "{how:?}: {warm} fds after the warm-up round, {fd0} before");
        let rss0 = rss_anon(w)?;
        let t0 = Instant::now();
        for round in 1..=3 {
            clients_that_go_away(d.addr(), how, 320, seed + 100 * round)?;
        }
        let took = t0.elapsed();
        let fd1 = settled();
        let rss1 = rss_anon(w)?;
        figure(
            &format!("{how:?}"),
            &format!("960 clients in {took:.2?}: worker fds {fd0} -> {fd1}, RssAnon {} -> {}", mib(rss0), mib(rss1)),
        );
        // The clients that vanish while written to leave their output's
        // 64 KiB blocks to the per-process chunk pool (at most
        // POOL_CHUNKS = 8 kept for the next connections), and how full the
        // pool is after a round depends on how many overlapped: 0-500 KiB
        // of difference seen run to run (0.95 -> 1.08 MiB once in a loaded
        // suite). Their allowance is that pool on top of the 64 KiB:
        // 960 clients leaking 600 B each would still exceed it; smaller
        // leaks are memcheck's and the soak's to find.
        let allowance = match how {
            Leave::VanishWhileWritten => (8 + 1) * (64 << 10),
            _ => 64 << 10,
        };
        if fd1 != fd0 || rss1 > rss0 + allowance {
            failures.push(format!("{how:?}: fds {fd0} -> {fd1}, RssAnon {} -> {}", mib(rss0), mib(rss1)));
        }
    }
    ensure!(failures.is_empty(), "{failures:?}");
    serves(&d, "still serving")
}
