//! SPEC §2 signals: graceful stop (SIGTERM/SIGINT, `shutdown_grace`),
//! immediate stop (SIGQUIT), reload (SIGHUP), and a worker's death.

use crate::ensure;
use crate::util::{Client, Daemon, alive, ensure_bytes_eq, fail, kill, poll_until, random_lines, rot13_model};
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// Asserts that a new connection to `d` is refused now.
fn ensure_refused(d: &Daemon) -> io::Result<()> {
    match TcpStream::connect_timeout(&d.addr(), Duration::from_secs(2)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(fail(format!("connect after the stop signal: {e}, want connection refused"))),
        Ok(_) => Err(fail("a new connection was accepted after the stop signal")),
    }
}

/// Every serving process the log names is gone (within 1 s).
fn ensure_no_serving_process_left(d: &Daemon) -> io::Result<()> {
    for w in d.reactor_pids() {
        ensure!(poll_until(Duration::from_secs(1), || !alive(w)), "serving process {w} left after the master exited");
    }
    Ok(())
}

fn ensure_exit_0(d: &mut Daemon, within: Duration) -> io::Result<()> {
    let s = d.wait_exit(within)?;
    ensure!(s.code() == Some(0), "master exited {s:?}, want 0; log:\n{}", d.log().text());
    Ok(())
}

// ---------------------------------------------------------------------------
// Graceful stop.

/// A client that has sent part of a line when SIGTERM comes keeps being
/// served: it sends 1 MiB more after the signal, every answer arrives,
/// the connection closes after the client half-closes; new connections
/// are refused meanwhile; exit 0.
fn graceful_stop_serves_busy_client(backend: &str, workers: usize) -> io::Result<()> {
    let mut d = Daemon::start(workers, &["--max-line", "100", "--backend", backend])?;
    let mut c = d.connect()?;
    let mut input = b"first line\npartial".to_vec();
    c.send(&input)?;
    // The answer to the complete line shows the (same-segment) partial
    // line was read too.
    ensure_bytes_eq("before the signal", &c.read_exact(11)?, b"svefg yvar\n")?;
    d.signal(libc::SIGTERM)?;
    let serving = workers.max(1);
    d.log().wait_count(&["draining"], serving, T)?;
    ensure!(
        d.log().count(&["draining", "busy=1"]) == 1,
        "want exactly one serving process draining with busy=1:\n{}",
        d.log().text()
    );
    ensure_refused(&d)?;
    let mut rest = b" continues\n".to_vec();
    rest.extend(random_lines(5, 1024 * 1024, 150));
    rest.extend(b"\nand a tail");
    input.extend(&rest);
    let want = rot13_model(&input, 100);
    let mut w = c.stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> { w.write_all(&rest) });
    let mut got = Vec::new();
    // Read (concurrently with the writer) what the rest produces up to the
    // tail, then check the master still runs before half-closing.
    let before_tail = want.len() - b"and a tail".len();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < before_tail - 11 {
        let n = io::Read::read(&mut c.stream, &mut buf)?;
        ensure!(n > 0, "EOF after {} bytes while the client still sends", got.len() + 11);
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().map_err(|_| fail("writer panicked"))??;
    ensure!(alive(d.pid()), "master exited while a client was still connected");
    c.half_close()?;
    got.extend(c.read_to_end()?);
    ensure_bytes_eq("answers during the drain", &got, &want[11..])?;
    ensure_exit_0(&mut d, T)?;
    ensure_no_serving_process_left(&d)?;
    Ok(())
}

#[test]
fn graceful_stop_serves_busy_client_epoll_w0() -> io::Result<()> {
    graceful_stop_serves_busy_client("epoll", 0)
}

#[test]
fn graceful_stop_serves_busy_client_epoll_w1() -> io::Result<()> {
    graceful_stop_serves_busy_client("epoll", 1)
}

#[test]
fn graceful_stop_serves_busy_client_epoll_w2() -> io::Result<()> {
    graceful_stop_serves_busy_client("epoll", 2)
}

#[test]
fn graceful_stop_serves_busy_client_poll_w1() -> io::Result<()> {
    graceful_stop_serves_busy_client("poll", 1)
}

#[test]
fn graceful_stop_serves_busy_client_select_w0() -> io::Result<()> {
    graceful_stop_serves_busy_client("select", 0)
}

#[test]
fn graceful_stop_serves_busy_client_select_w2() -> io::Result<()> {
    graceful_stop_serves_busy_client("select", 2)
}

/// Idle connections (never sent a byte, or every answer read) are closed at
/// once on SIGTERM; with only idle connections the daemon exits at once
/// (long before the default 30 s grace).
fn graceful_stop_closes_idle_connections(workers: usize, sig: i32) -> io::Result<()> {
    let mut d = Daemon::start(workers, &["--log-level", "debug"])?;
    let mut fresh = d.connect()?;
    let mut answered = d.connect()?;
    answered.send(b"a\n")?;
    ensure_bytes_eq("answer", &answered.read_exact(2)?, b"n\n")?;
    // Both accepted (not waiting in the backlog).
    d.log().wait_count(&["connection accepted"], 2, T)?;
    let t0 = Instant::now();
    d.signal(sig)?;
    for (name, c) in [("fresh", &mut fresh), ("answered", &mut answered)] {
        let got = c.read_to_end_within(Duration::from_secs(3))?;
        ensure!(got.is_empty(), "{name} connection got {got:?} at the stop");
        ensure!(t0.elapsed() < Duration::from_secs(1), "{name} connection closed after {:?}", t0.elapsed());
    }
    ensure_exit_0(&mut d, Duration::from_secs(3))?;
    ensure!(t0.elapsed() < Duration::from_secs(3), "exit took {:?} with idle connections only", t0.elapsed());
    Ok(())
}

#[test]
fn sigterm_closes_idle_connections_at_once_w0() -> io::Result<()> {
    graceful_stop_closes_idle_connections(0, libc::SIGTERM)
}

#[test]
fn sigterm_closes_idle_connections_at_once_w2() -> io::Result<()> {
    graceful_stop_closes_idle_connections(2, libc::SIGTERM)
}

#[test]
fn sigint_is_a_graceful_stop() -> io::Result<()> {
    graceful_stop_closes_idle_connections(1, libc::SIGINT)
}

/// `shutdown_grace = 1`: a client that never finishes gets its partial line
/// answered (no LF) and is closed 1 s after the signal; exit 0.
fn shutdown_grace_closes_unfinished_client(workers: usize) -> io::Result<()> {
    let mut d = Daemon::builder().workers(workers).config("[server]\nshutdown_grace = 1\n").start()?;
    let mut c = d.connect()?;
    c.send(b"x\nabc")?;
    ensure_bytes_eq("before the signal", &c.read_exact(2)?, b"k\n")?;
    let t0 = Instant::now();
    d.signal(libc::SIGTERM)?;
    d.log().wait_count(&["draining"], workers.max(1), T)?;
    ensure_refused(&d)?;
    // Still sending (no LF, no EOF).
    c.send(b"def")?;
    let got = c.read_to_end_within(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure_bytes_eq("partial line at the end of the grace", &got, b"nopqrs")?;
    ensure!(took >= Duration::from_millis(990), "closed {took:?} after SIGTERM, before the 1 s grace");
    ensure!(took < Duration::from_secs(3), "closed {took:?} after SIGTERM (grace 1 s)");
    ensure_exit_0(&mut d, T)
}

#[test]
fn shutdown_grace_closes_unfinished_client_w0() -> io::Result<()> {
    shutdown_grace_closes_unfinished_client(0)
}

#[test]
fn shutdown_grace_closes_unfinished_client_w1() -> io::Result<()> {
    shutdown_grace_closes_unfinished_client(1)
}

// ---------------------------------------------------------------------------
// Immediate stop.

fn sigquit_exits_within_1s(workers: usize) -> io::Result<()> {
    let mut d = Daemon::start(workers, &[])?;
    let workers_before = d.worker_pids();
    ensure!(workers_before.len() == workers, "workers {workers_before:?}, want {workers}");
    // A busy client (partial line, not finished) must not delay the stop.
    let mut c = d.connect()?;
    c.send(b"x\nbusy")?;
    ensure_bytes_eq("before the signal", &c.read_exact(2)?, b"k\n")?;
    let t0 = Instant::now();
    d.signal(libc::SIGQUIT)?;
    ensure_exit_0(&mut d, Duration::from_secs(1))?;
    ensure!(t0.elapsed() < Duration::from_secs(1), "SIGQUIT: exit after {:?}", t0.elapsed());
    for w in workers_before {
        ensure!(poll_until(Duration::from_secs(1), || !alive(w)), "worker {w} still alive after SIGQUIT");
    }
    // Closed without flushing: whatever comes, the connection ends.
    let mut buf = Vec::new();
    let _ = io::Read::read_to_end(&mut c.stream, &mut buf);
    ensure!(buf.is_empty(), "got {:?} after SIGQUIT (the partial line must not be answered)", buf);
    Ok(())
}

#[test]
fn sigquit_exits_within_1s_w0() -> io::Result<()> {
    sigquit_exits_within_1s(0)
}

#[test]
fn sigquit_exits_within_1s_w2() -> io::Result<()> {
    sigquit_exits_within_1s(2)
}

// ---------------------------------------------------------------------------
// Reload.

/// Connects, sends one line, half-closes, reads to EOF, in a loop until
/// `stop`; counts rounds and records every failure.
fn connect_loop(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    max_rounds: usize,
) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut failures = Vec::new();
        for i in 0..max_rounds {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let line = format!("reload round {i} Hello\n");
            let want = rot13_model(line.as_bytes(), 16384);
            match Client::connect(addr).and_then(|c| c.roundtrip(line.as_bytes())) {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!("round {i}: got {:?}", String::from_utf8_lossy(&got))),
                Err(e) => failures.push(format!("round {i}: {e}")),
            }
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        failures
    })
}

/// Three reloads while a client connects in a loop: no connection refused
/// or cut, every answer correct, a new generation each time.
fn reload_under_connect_loop(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nmax_line = 16384\n").start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let looper = connect_loop(d.addr(), stop.clone(), rounds.clone(), 5000);
    let result = (|| -> io::Result<()> {
        ensure!(poll_until(T, || rounds.load(Ordering::Relaxed) >= 20), "connect loop does not progress");
        for r in 1..=3usize {
            let n = rounds.load(Ordering::Relaxed);
            d.signal(libc::SIGHUP)?;
            d.log().wait_count(&["reloaded"], r, T)?;
            if workers > 0 {
                d.log().wait_count(&["reactor", &format!("generation={}", r + 1)], workers, T)?;
                d.log().wait_count(&["worker exited"], workers * r, T)?;
            }
            ensure!(
                poll_until(T, || rounds.load(Ordering::Relaxed) >= n + 30),
                "connect loop stalled after reload {r}"
            );
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let failures = looper.join().map_err(|_| fail("connect loop panicked"))?;
    result?;
    ensure!(
        failures.is_empty(),
        "{} of {} connections failed across reloads: {:?}",
        failures.len(),
        rounds.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    if workers > 0 {
        ensure!(d.worker_pids().len() == workers, "workers after reloads: {:?}", d.worker_pids());
    }
    Ok(())
}

#[test]
fn reload_under_connect_loop_refuses_and_cuts_nothing_w2() -> io::Result<()> {
    reload_under_connect_loop(2)
}

#[test]
fn reload_under_connect_loop_refuses_and_cuts_nothing_w0() -> io::Result<()> {
    reload_under_connect_loop(0)
}

/// A 15-byte line: cut with max_line 10, whole with max_line 20.
const LINE15: &[u8] = b"abcdefghijklmno\n";

fn ensure_max_line(d: &Daemon, max_line: usize) -> io::Result<()> {
    ensure_bytes_eq(&format!("max_line {max_line}"), &d.roundtrip(LINE15)?, &rot13_model(LINE15, max_line))
}

/// An invalid file on SIGHUP: logged, the daemon keeps serving with the old
/// settings and the old workers; a valid file afterwards still reloads.
fn reload_invalid_config_keeps_running(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nmax_line = 10\n").start()?;
    ensure_max_line(&d, 10)?;
    let pids = d.worker_pids();
    let path = d.config_path().to_string_lossy().into_owned();
    for (n, bad) in ["[server]\nmax_line = 0\n", "[server]\nmax_line = \n", "[server]\nbogus = 1\n"].iter().enumerate()
    {
        std::fs::write(d.config_path(), bad)?;
        d.signal(libc::SIGHUP)?;
        d.log().wait_count(&["ERROR", "reload failed"], n + 1, T)?;
        let line = d.log().text().lines().filter(|l| l.contains("reload failed")).nth(n).unwrap_or("").to_string();
        ensure!(line.contains(&path), "the reload error does not name the file: {line}");
        ensure!(alive(d.pid()), "master died on an invalid reload");
        ensure!(d.worker_pids() == pids, "workers changed on an invalid reload: {:?} -> {:?}", pids, d.worker_pids());
        ensure_max_line(&d, 10)?;
    }
    // A file that cannot be read (removed, as by a package upgrade's
    // window) is invalid too: named with why, nothing changes.
    std::fs::remove_file(d.config_path())?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["ERROR", "reload failed"], 4, T)?;
    let line = d.log().text().lines().filter(|l| l.contains("reload failed")).nth(3).unwrap_or("").to_string();
    ensure!(line.contains(&format!("{path}: cannot read the configuration file")), "a removed file: {line}");
    ensure!(d.worker_pids() == pids, "workers changed on a removed file: {:?} -> {:?}", pids, d.worker_pids());
    ensure_max_line(&d, 10)?;
    ensure!(d.log().count(&["reloaded"]) == 0, "an invalid file was applied:\n{}", d.log().text());
    std::fs::write(d.config_path(), "[server]\nmax_line = 20\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    if workers > 0 {
        d.log().wait_count(&["draining"], workers, T)?;
    }
    ensure_max_line(&d, 20)
}

#[test]
fn reload_invalid_config_keeps_running_w0() -> io::Result<()> {
    reload_invalid_config_keeps_running(0)
}

#[test]
fn reload_invalid_config_keeps_running_w1() -> io::Result<()> {
    reload_invalid_config_keeps_running(1)
}

/// `max_line` changed on reload: new connections get the new one; a
/// connection open across the reload keeps its generation's.
fn reload_max_line_applies_to_new_connections_only(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nmax_line = 10\n").start()?;
    // Connection A: busy across the reload (a partial line buffered), so
    // the retiring generation keeps serving it.
    let mut a = d.connect()?;
    a.send(b"x\nabcdefgh")?;
    ensure_bytes_eq("A before the reload", &a.read_exact(2)?, b"k\n")?;
    std::fs::write(d.config_path(), "[server]\nmax_line = 20\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    if workers > 0 {
        d.log().wait_count(&["reactor", "generation=2"], workers, T)?;
        // The old worker closed its listeners: B lands in generation 2.
        d.log().wait_count(&["draining"], workers, T)?;
    }
    ensure_max_line(&d, 20)?;
    a.send(b"ijklmno\nabcdefghijklmno\n")?;
    a.half_close()?;
    let want = rot13_model(b"abcdefghijklmno\nabcdefghijklmno\n", 10);
    ensure_bytes_eq("A after the reload (old max_line 10)", &a.read_to_end()?, &want)?;
    ensure_max_line(&d, 20)
}

#[test]
fn reload_max_line_applies_to_new_connections_only_w0() -> io::Result<()> {
    reload_max_line_applies_to_new_connections_only(0)
}

#[test]
fn reload_max_line_applies_to_new_connections_only_w1() -> io::Result<()> {
    reload_max_line_applies_to_new_connections_only(1)
}

// ---------------------------------------------------------------------------
// A worker's death.

/// The WARN line of the death of `pid`, once logged.
fn death_line(d: &Daemon, pid: i32, timeout: Duration) -> io::Result<String> {
    let p = format!("pid={pid} ");
    d.log().wait_count(&["WARN", "worker died", &p], 1, timeout)?;
    Ok(d.log().text().lines().find(|l| l.contains("worker died") && l.contains(&p)).unwrap_or("").to_string())
}

#[test]
fn killed_worker_is_replaced_within_1s() -> io::Result<()> {
    let d = Daemon::start(2, &[])?;
    d.wait_for_log("master running", T)?;
    let before = d.worker_pids();
    ensure!(before.len() == 2, "workers {before:?}");
    // A connection on each side of the kill keeps working if it is on the
    // surviving worker; new connections always work.
    let victim = before[0];
    let t0 = Instant::now();
    kill(victim, libc::SIGKILL)?;
    let line = death_line(&d, victim, Duration::from_secs(1))?;
    ensure!(line.contains("SIGKILL") || line.contains("signal 9"), "death line lacks the signal: {line}");
    d.log().wait_count(&["reactor", "backend="], 3, Duration::from_secs(1))?;
    let took = t0.elapsed();
    ensure!(took < Duration::from_secs(1), "replacement after {took:?}");
    let after = d.worker_pids();
    ensure!(after.len() == 2 && !after.contains(&victim), "workers after the kill: {after:?}");
    for i in 0..20 {
        let l = format!("after the kill {i}\n");
        ensure_bytes_eq("after the kill", &d.roundtrip(l.as_bytes())?, &rot13_model(l.as_bytes(), 16384))?;
    }
    Ok(())
}

/// More than 5 deaths in 10 s: the next replacement waits >= 1 s, the one
/// after >= 2 s (exponential).
#[test]
fn worker_crash_loop_backs_off() -> io::Result<()> {
    let d = Daemon::start(1, &[])?;
    for n in 1..=7usize {
        let w = d.worker_pids();
        ensure!(w.len() == 1, "workers before kill {n}: {w:?}");
        let t0 = Instant::now();
        kill(w[0], libc::SIGKILL)?;
        death_line(&d, w[0], T)?;
        if n <= 5 {
            d.log().wait_count(&["reactor", "backend="], n + 1, Duration::from_secs(1))?;
            continue;
        }
        // The sixth and seventh deaths within 10 s: backoff 1 s, then 2 s.
        let backoff = Duration::from_secs(1 << (n - 6));
        d.log().wait_count(&["workers keep dying"], n - 5, T)?;
        d.log().wait_count(&["reactor", "backend="], n + 1, backoff + Duration::from_secs(3))?;
        let took = t0.elapsed();
        ensure!(took + Duration::from_millis(10) >= backoff, "replacement {n} after {took:?}, want >= {backoff:?}");
        ensure!(took < backoff + Duration::from_secs(1), "replacement {n} after {took:?}, want about {backoff:?}");
    }
    ensure_bytes_eq("after the crash loop", &d.roundtrip(b"ok\n")?, b"bx\n")
}

/// The `listening addr=` addresses logged so far for `ip`.
fn listening_on(d: &Daemon, ip: &str) -> Vec<std::net::SocketAddr> {
    let p = format!("addr={ip}:");
    d.log()
        .text()
        .lines()
        .filter(|l| l.contains("listening") && l.contains(&p))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok()))
        .collect()
}

/// Listen-address changes on reload: a new address is bound and served, a
/// removed one closed (refused once the old generation drained), the
/// unchanged one served throughout.
#[test]
fn reload_applies_listen_changes() -> io::Result<()> {
    let d =
        Daemon::builder().workers(1).no_default_listen().config("[server]\nlisten = [\"127.0.0.1:0\"]\n").start()?;
    let first = d.addr();
    std::fs::write(d.config_path(), "[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    let second = *listening_on(&d, "127.0.0.2").first().ok_or_else(|| fail("127.0.0.2 not bound on reload"))?;
    d.log().wait_count(&["reactor", "generation=2"], 1, T)?;
    // Generation 1 drained (the cut of connections it accepted just before
    // its drain is the separate reload bug).
    d.log().wait_count(&["draining"], 1, T)?;
    for a in [first, second] {
        ensure_bytes_eq(&format!("served on {a}"), &Client::connect(a)?.roundtrip(b"both\n")?, b"obgu\n")?;
    }
    std::fs::write(d.config_path(), "[server]\nlisten = [\"127.0.0.2:0\"]\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 2, T)?;
    d.log().wait_count(&["listener closed", &format!("addr={first}")], 1, T)?;
    d.log().wait_count(&["reactor", "generation=3"], 1, T)?;
    // Generation 2 drained: its copy of the removed listener is closed.
    d.log().wait_count(&["draining"], 2, T)?;
    match TcpStream::connect_timeout(&first, Duration::from_secs(2)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => return Err(fail(format!("removed listener {first}: {other:?}, want refused"))),
    }
    ensure_bytes_eq("kept listener", &Client::connect(second)?.roundtrip(b"kept\n")?, b"xrcg\n")?;
    ensure!(listening_on(&d, "127.0.0.2").len() == 1, "127.0.0.2 bound twice:\n{}", d.log().text());
    Ok(())
}

/// The CPUs this test process may run on, from `/proc/self/status`
/// (`Cpus_allowed_list: 0-1,4`): not through the daemon's own code.
fn allowed_cpus() -> io::Result<Vec<u32>> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let list =
        s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).ok_or_else(|| fail("no Cpus_allowed_list"))?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| fail(list))?, b.parse().map_err(|_| fail(list))?);
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// `--workers auto` under `taskset -c CPUS`: one worker per CPU of that set.
fn workers_auto_under_taskset(cpus: &[u32]) -> io::Result<()> {
    let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
    let list = list.join(",");
    let want = cpus.len();
    let d = Daemon::builder().wrapper(&["taskset", "-c", &list]).workers_arg("auto", want).start()?;
    d.wait_for_log("master running", T)?;
    ensure!(d.worker_pids().len() == want, "taskset -c {list}: workers {:?}, want {want}", d.worker_pids());
    ensure!(d.log().count(&["reactor", "backend="]) == want, "taskset -c {list}: reactors:\n{}", d.log().text());
    ensure_bytes_eq("auto", &d.roundtrip(b"auto\n")?, b"nhgb\n")
}

/// `--workers auto`: one worker per CPU this process may run on, the set
/// restricted with taskset to one CPU, then to two where there are two.
#[test]
fn workers_auto_starts_one_worker_per_cpu() -> io::Result<()> {
    let cpus = allowed_cpus()?;
    workers_auto_under_taskset(&cpus[..1])?;
    let two = if cpus.len() >= 2 { Ok(()) } else { Err(format!("two CPUs: this process may run on {cpus:?} only")) };
    if crate::util::capable("two_cpus", two) {
        workers_auto_under_taskset(&cpus[..2])?;
    }
    Ok(())
}

/// `idle_timeout` changed on reload applies to new connections (the
/// timeout of the new generation is registered in the serving process).
fn reload_changes_idle_timeout(workers: usize) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config("[server]\nidle_timeout = 30\n").start()?;
    std::fs::write(d.config_path(), "[server]\nidle_timeout = 1\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    if workers > 0 {
        d.log().wait_count(&["draining"], workers, T)?;
    }
    let t0 = Instant::now();
    let mut c = d.connect()?;
    let got = c.read_to_end_within(Duration::from_secs(5))?;
    let took = t0.elapsed();
    ensure_bytes_eq("idle connection after the reload", &got, b"")?;
    ensure!(took >= Duration::from_millis(990), "closed after {took:?}, before the new 1 s idle_timeout");
    ensure!(took <= Duration::from_millis(2500), "closed after {took:?} (idle_timeout 1 s)");
    Ok(())
}

#[test]
fn reload_changes_idle_timeout_w0() -> io::Result<()> {
    reload_changes_idle_timeout(0)
}

#[test]
fn reload_changes_idle_timeout_w1() -> io::Result<()> {
    reload_changes_idle_timeout(1)
}

/// SIGQUIT during a graceful drain (a busy client, grace 30 s) still stops
/// within 1 s.
fn sigquit_during_drain(workers: usize) -> io::Result<()> {
    let mut d = Daemon::start(workers, &[])?;
    let mut c = d.connect()?;
    c.send(b"x\nbusy")?;
    ensure_bytes_eq("before the signal", &c.read_exact(2)?, b"k\n")?;
    d.signal(libc::SIGTERM)?;
    d.log().wait_count(&["draining", "busy=1"], 1, T)?;
    ensure!(alive(d.pid()), "master exited with a busy connection and 30 s of grace");
    let t0 = Instant::now();
    d.signal(libc::SIGQUIT)?;
    ensure_exit_0(&mut d, Duration::from_secs(1))?;
    ensure!(t0.elapsed() < Duration::from_secs(1), "SIGQUIT during the drain: exit after {:?}", t0.elapsed());
    ensure_no_serving_process_left(&d)?;
    Ok(())
}

#[test]
fn sigquit_during_drain_w0() -> io::Result<()> {
    sigquit_during_drain(0)
}

#[test]
fn sigquit_during_drain_w1() -> io::Result<()> {
    sigquit_during_drain(1)
}

/// SIGTERM while the only worker is dead and its replacement waits in the
/// crash-loop backoff: the master exits 0 at once.
#[test]
fn sigterm_during_crash_backoff_exits_at_once() -> io::Result<()> {
    let mut d = Daemon::start(1, &[])?;
    for n in 1..=6usize {
        let w = d.worker_pids();
        ensure!(w.len() == 1, "workers before kill {n}: {w:?}");
        kill(w[0], libc::SIGKILL)?;
        death_line(&d, w[0], T)?;
        if n <= 5 {
            d.log().wait_count(&["reactor", "backend="], n + 1, T)?;
        }
    }
    d.log().wait_count(&["workers keep dying"], 1, T)?;
    ensure!(d.worker_pids().is_empty(), "a worker runs during the backoff: {:?}", d.worker_pids());
    let t0 = Instant::now();
    d.signal(libc::SIGTERM)?;
    ensure_exit_0(&mut d, Duration::from_secs(2))?;
    ensure!(t0.elapsed() < Duration::from_secs(1), "exit {:?} after SIGTERM with no worker", t0.elapsed());
    ensure!(d.log().count(&["reactor", "backend="]) == 6, "a worker started after SIGTERM:\n{}", d.log().text());
    Ok(())
}

/// Several SIGHUPs in a row: every old generation retires; exactly
/// `workers` workers remain, all of the newest generation, serving.
#[test]
fn rapid_reloads_leave_exactly_the_configured_workers() -> io::Result<()> {
    let d = Daemon::builder().workers(2).config("[server]\n").start()?;
    for _ in 0..5 {
        d.signal(libc::SIGHUP)?;
    }
    // Signals may coalesce: at least one reload, at most five.
    d.log().wait_count(&["reloaded"], 1, T)?;
    // A reload still starting when the next comes is superseded (its
    // workers retire too): generation numbers may skip. What must hold: the
    // live workers are exactly the two of the newest generation, promoted.
    let settled = poll_until(T, || {
        let text = d.log().text();
        let reactors: Vec<(u32, i32)> = text
            .lines()
            .filter(|l| l.contains("reactor") && l.contains("backend="))
            .filter_map(|l| {
                let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
                Some((field("generation=")?.parse().ok()?, field("pid=")?.parse().ok()?))
            })
            .collect();
        let newest = reactors.iter().map(|(g, _)| *g).max().unwrap_or(0);
        let mut pids: Vec<i32> = reactors.iter().filter(|(g, _)| *g == newest).map(|(_, p)| *p).collect();
        pids.sort_unstable();
        let promoted = d.log().count(&["reloaded", &format!("generation={newest} ")]) == 1;
        newest > 1 && promoted && pids.len() == 2 && d.worker_pids() == pids
    });
    ensure!(settled, "workers {:?} after rapid reloads:\n{}", d.worker_pids(), d.log().text());
    for i in 0..10 {
        let l = format!("after reloads {i}\n");
        ensure_bytes_eq("after reloads", &d.roundtrip(l.as_bytes())?, &rot13_model(l.as_bytes(), 16384))?;
    }
    Ok(())
}

/// A reload that changes `workers` starts the new count.
#[test]
fn reload_changes_worker_count() -> io::Result<()> {
    // `--workers` on the command line would win over the file: leave it out.
    let d = Daemon::builder().workers(1).config("[server]\nworkers = 1\n").start_without_workers_arg()?;
    ensure!(d.worker_pids().len() == 1, "workers {:?}", d.worker_pids());
    std::fs::write(d.config_path(), "[server]\nworkers = 3\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reactor", "generation=2"], 3, T)?;
    d.log().wait_count(&["worker exited"], 1, T)?;
    ensure!(poll_until(T, || d.worker_pids().len() == 3), "workers after reload: {:?}", d.worker_pids());
    ensure_bytes_eq("after the reload", &d.roundtrip(b"three\n")?, b"guerr\n")
}

/// A user or group change on reload needs a restart (SPEC §2, SIGHUP):
/// the WARN line says so, the new generation keeps the running identity
/// (`field` of /proc/PID/status), the rest of the reload (here
/// `max_line`) applies.
fn reload_identity_change_is_refused_with_a_warning(line: &str, field: &str) -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\nmax_line = 10\n").start()?;
    std::fs::write(d.config_path(), format!("[server]\nmax_line = 20\n{line}\n"))?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reactor", "generation=2"], 1, T)?;
    let warn = "WARN rot13d: user/group changes need a restart; keeping the current ones";
    ensure!(d.log().count(&[warn]) == 1, "{line}: no {warn:?}:\n{}", d.log().text());
    d.log().wait_count(&["draining"], 1, T)?;
    ensure_max_line(&d, 20)?;
    // The old worker has drained (nothing to serve) and is gone.
    d.log().wait_count(&["worker exited"], 1, T)?;
    ensure!(poll_until(T, || d.worker_pids().len() == 1), "workers {:?}", d.worker_pids());
    let w = d.worker_pids();
    let id = |pid: i32| -> io::Result<String> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(s.lines().find(|l| l.starts_with(field)).unwrap_or("").to_string())
    };
    ensure!(id(w[0])? == id(d.pid())?, "{line}: the new worker changed: {} vs {}", id(w[0])?, id(d.pid())?);
    Ok(())
}

#[test]
fn reload_user_change_is_refused_with_a_warning() -> io::Result<()> {
    reload_identity_change_is_refused_with_a_warning("user = \"nobody\"", "Uid:")
}

#[test]
fn reload_group_change_is_refused_with_a_warning() -> io::Result<()> {
    reload_identity_change_is_refused_with_a_warning("group = \"nogroup\"", "Gid:")
}

/// A `[reactor]` change on reload applies to the new generation: its
/// workers build their own event base (here another backend and more
/// priorities); nothing is logged at WARN. With the master's base it is
/// epoll, with the new generation's poll.
#[test]
fn reload_reactor_change_applies_to_the_new_generation() -> io::Result<()> {
    let d = Daemon::builder().workers(2).config("[reactor]\nbackend = \"epoll\"\n").start()?;
    d.log().wait_count(&["reactor", "backend=epoll", "generation=1"], 2, T)?;
    ensure_bytes_eq("before the reload", &d.roundtrip(b"one\n")?, b"bar\n")?;
    std::fs::write(d.config_path(), "[reactor]\nbackend = \"poll\"\npriorities = 8\nmax_callbacks = 4\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reactor", "backend=poll", "generation=2"], 2, T)?;
    d.log().wait_count(&["draining"], 2, T)?;
    for i in 0..4 {
        ensure_bytes_eq(&format!("after the reload, {i}"), &d.roundtrip(b"two\n")?, b"gjb\n")?;
    }
    ensure!(d.log().count(&["WARN"]) == 0, "warnings:\n{}", d.log().text());
    // And back: a base like the master's again.
    std::fs::write(d.config_path(), "[reactor]\nbackend = \"epoll\"\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reactor", "backend=epoll", "generation=3"], 2, T)?;
    ensure_bytes_eq("after the second reload", &d.roundtrip(b"three\n")?, b"guerr\n")
}

/// A `[reactor]` no backend can satisfy fails the reload (logged at ERROR);
/// the old generation keeps serving.
#[test]
fn reload_with_an_impossible_reactor_keeps_running() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\nmax_line = 10\n").start()?;
    d.log().wait_count(&["ready"], 1, T)?;
    let pids = d.worker_pids();
    std::fs::write(
        d.config_path(),
        "[server]\nmax_line = 20\n[reactor]\navoid = [\"uring\"]\nrequire_features = [\"o1\", \"fds\"]\n",
    )?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["ERROR", "reload failed"], 1, T)?;
    ensure!(d.log().count(&["reloaded"]) == 0, "an impossible reactor was applied:\n{}", d.log().text());
    ensure!(d.worker_pids() == pids, "workers changed: {:?} -> {:?}", pids, d.worker_pids());
    ensure_max_line(&d, 10)
}

/// `--pid-file` without `--daemon`: written with the master's pid at
/// start, removed at a graceful stop.
#[test]
fn pid_file_without_daemon() -> io::Result<()> {
    let dir = crate::util::TempDir::new()?;
    let pf = dir.join("rot13d.pid");
    let pfs = pf.to_string_lossy().into_owned();
    let mut d = Daemon::start(1, &["--pid-file", &pfs])?;
    let content = std::fs::read_to_string(&pf)?;
    ensure!(content.trim() == d.pid().to_string(), "pid file holds {content:?}, master is {}", d.pid());
    d.signal(libc::SIGTERM)?;
    ensure_exit_0(&mut d, T)?;
    ensure!(!pf.exists(), "pid file left after the stop");
    Ok(())
}

/// A pid file that cannot be written is an OS error at start: exit 71.
#[test]
fn unwritable_pid_file_exits_71() -> io::Result<()> {
    let dir = crate::util::TempDir::new()?;
    let pf = dir.join("no-such-dir/rot13d.pid").to_string_lossy().into_owned();
    let out = crate::util::run_bin(&["--listen", "127.0.0.1:0", "--workers", "1", "--pid-file", &pf], &[], T)?;
    ensure!(out.code == Some(71), "exit {:?}, want 71:\n{}", out.code, out.stderr);
    ensure!(out.stderr.contains(&pf), "the message does not name {pf}:\n{}", out.stderr);
    Ok(())
}

/// `/proc/PID/status`'s `Uid:`/`Gid:` (real, effective, saved, fs) or
/// `Groups:` of `pid`, as numbers.
fn ids_of(pid: i32, field: &str) -> io::Result<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let l = s.lines().find(|l| l.starts_with(field)).ok_or_else(|| fail(format!("no {field} for {pid}")))?;
    Ok(l[field.len()..].split_whitespace().filter_map(|x| x.parse().ok()).collect())
}

/// `config` (user and/or group; needs root): the serving process runs with
/// exactly `uid`, `gid` and the supplementary `groups` after binding; with
/// workers the master keeps root.
fn drops_privileges_to(workers: usize, config: &str, uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let d = Daemon::builder().workers(workers).config(config).start()?;
    let serving = d.serving_pid()?;
    ensure!(ids_of(serving, "Uid:")? == vec![uid; 4], "{config:?}: uids {:?}, want {uid}", ids_of(serving, "Uid:")?);
    ensure!(ids_of(serving, "Gid:")? == vec![gid; 4], "{config:?}: gids {:?}, want {gid}", ids_of(serving, "Gid:")?);
    ensure!(
        ids_of(serving, "Groups:")? == groups,
        "{config:?}: groups {:?}, want {groups:?}",
        ids_of(serving, "Groups:")?
    );
    if workers > 0 {
        ensure!(ids_of(d.pid(), "Uid:")? == vec![0; 4], "master uids {:?}", ids_of(d.pid(), "Uid:")?);
        ensure!(ids_of(d.pid(), "Gid:")? == vec![0; 4], "master gids {:?}", ids_of(d.pid(), "Gid:")?);
    }
    ensure_bytes_eq("after the drop", &d.roundtrip(b"nobody\n")?, b"abobql\n")
}

/// The ids of `user` and of `group` from the databases, or a visible skip.
fn ids_or_skip(user: &str, group: &str) -> Option<(u32, u32)> {
    if !crate::util::root_or_skip("to drop privileges") {
        return None;
    }
    let ids = (
        nix::unistd::User::from_name(user).ok().flatten().map(|u| u.uid.as_raw()),
        nix::unistd::Group::from_name(group).ok().flatten().map(|g| g.gid.as_raw()),
    );
    match ids {
        (Some(u), Some(g)) => Some((u, g)),
        _ => {
            crate::util::capable("users", Err(format!("needs a user {user:?} and a group {group:?}")));
            None
        }
    }
}

/// `user = "nobody"`: uid and gid nobody's (its primary group, 65534 on
/// Debian), and its supplementary groups (none besides that one).
fn user_drops_privileges(workers: usize) -> io::Result<()> {
    let Some((uid, gid)) = ids_or_skip("nobody", "nogroup") else { return Ok(()) };
    drops_privileges_to(workers, "[server]\nuser = \"nobody\"\n", uid, gid, &[gid])
}

#[test]
fn user_drops_privileges_w0() -> io::Result<()> {
    user_drops_privileges(0)
}

#[test]
fn user_drops_privileges_w1() -> io::Result<()> {
    user_drops_privileges(1)
}

/// `user` and `group`: the group replaces the user's primary group (and is
/// among its supplementary groups: initgroups adds it).
fn user_and_group_drop_privileges(workers: usize) -> io::Result<()> {
    let Some((uid, gid)) = ids_or_skip("nobody", "daemon") else { return Ok(()) };
    ensure!(gid != 65534, "the test wants a group other than nobody's own");
    drops_privileges_to(workers, "[server]\nuser = \"nobody\"\ngroup = \"daemon\"\n", uid, gid, &[gid])
}

#[test]
fn user_and_group_drop_privileges_w0() -> io::Result<()> {
    user_and_group_drop_privileges(0)
}

#[test]
fn user_and_group_drop_privileges_w1() -> io::Result<()> {
    user_and_group_drop_privileges(1)
}

/// `group` alone: the gid changes, the supplementary groups are that group
/// only (root's are dropped), the uid stays.
#[test]
fn group_alone_changes_only_the_group() -> io::Result<()> {
    let Some((_, gid)) = ids_or_skip("nobody", "daemon") else { return Ok(()) };
    drops_privileges_to(1, "[server]\ngroup = \"daemon\"\n", 0, gid, &[gid])
}

/// `shutdown_grace = 0`: at SIGTERM a busy client's partial line is
/// answered (no LF) and the connection closed at once; exit 0.
#[test]
fn shutdown_grace_zero_closes_at_once() -> io::Result<()> {
    let mut d = Daemon::builder().workers(1).config("[server]\nshutdown_grace = 0\n").start()?;
    let mut c = d.connect()?;
    c.send(b"x\nabc")?;
    ensure_bytes_eq("before the signal", &c.read_exact(2)?, b"k\n")?;
    let t0 = Instant::now();
    d.signal(libc::SIGTERM)?;
    let got = c.read_to_end_within(Duration::from_secs(3))?;
    ensure_bytes_eq("partial line at once", &got, b"nop")?;
    ensure!(t0.elapsed() < Duration::from_secs(1), "closed {:?} after SIGTERM with grace 0", t0.elapsed());
    ensure_exit_0(&mut d, T)
}

/// Deterministic form of the reload race: a client whose connection the
/// old generation accepted, but whose first bytes arrive only after the
/// reload, must still be served (SPEC: no client is refused or cut).
#[test]
fn reload_does_not_cut_a_connection_that_has_not_sent_yet() -> io::Result<()> {
    let d = Daemon::builder().workers(1).config("[server]\n").args(["--log-level", "debug"]).start()?;
    let mut c = d.connect()?;
    d.log().wait_count(&["connection accepted"], 1, T)?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["draining"], 1, T)?;
    c.send(b"late\n")?;
    c.half_close()?;
    ensure_bytes_eq("first bytes after the reload", &c.read_to_end()?, b"yngr\n")
}

/// With `workers = 0` too, a listen-address change on reload is applied
/// (SPEC: new addresses bound, removed ones closed).
#[test]
fn reload_applies_listen_changes_w0() -> io::Result<()> {
    let d =
        Daemon::builder().workers(0).no_default_listen().config("[server]\nlisten = [\"127.0.0.1:0\"]\n").start()?;
    std::fs::write(d.config_path(), "[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    d.log().wait_count(&["listening", "addr=127.0.0.2:"], 1, Duration::from_secs(2))?;
    let second = *listening_on(&d, "127.0.0.2").first().ok_or_else(|| fail("127.0.0.2 not bound on reload"))?;
    ensure_bytes_eq("new listener", &Client::connect(second)?.roundtrip(b"new\n")?, b"arj\n")
}

/// The master killed with SIGKILL: its workers do not outlive it (they
/// drain and exit), and the port is released.
#[test]
fn workers_do_not_outlive_a_killed_master() -> io::Result<()> {
    let mut d = Daemon::start(2, &[])?;
    let workers = d.worker_pids();
    ensure!(workers.len() == 2, "workers {workers:?}");
    kill(d.pid(), libc::SIGKILL)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code().is_none(), "master status {s:?}, want killed");
    for w in &workers {
        ensure!(poll_until(Duration::from_secs(2), || !alive(*w)), "worker {w} still alive 2 s after its master died");
    }
    ensure_refused(&d)
}

/// systemd's default `KillMode=control-group` sends SIGTERM to every
/// process of the service at once: a busy client is still served to the
/// end and the master exits 0.
#[test]
fn sigterm_to_every_process_at_once_is_still_graceful() -> io::Result<()> {
    let mut d = Daemon::start(2, &[])?;
    let mut c = d.connect()?;
    c.send(b"x\npartial")?;
    ensure_bytes_eq("before the signal", &c.read_exact(2)?, b"k\n")?;
    for w in d.worker_pids() {
        kill(w, libc::SIGTERM)?;
    }
    d.signal(libc::SIGTERM)?;
    d.log().wait_count(&["draining", "busy=1"], 1, T)?;
    c.send(b" line\nmore\n")?;
    c.half_close()?;
    ensure_bytes_eq("answers during the stop", &c.read_to_end()?, b"cnegvny yvar\nzber\n")?;
    ensure_exit_0(&mut d, T)?;
    ensure_no_serving_process_left(&d)?;
    Ok(())
}

/// SIGHUP immediately followed by SIGTERM: both generations stop, exit 0,
/// no worker left behind.
#[test]
fn sigterm_right_after_sighup_stops_every_generation() -> io::Result<()> {
    let mut d = Daemon::builder().workers(2).config("[server]\n").start()?;
    d.signal(libc::SIGHUP)?;
    d.signal(libc::SIGTERM)?;
    ensure_exit_0(&mut d, T)?;
    let started = d.reactor_pids();
    ensure!(started.len() == 2 || started.len() == 4, "{started:?} reactors started:\n{}", d.log().text());
    for w in started {
        ensure!(poll_until(Duration::from_secs(2), || !alive(w)), "worker {w} left after the stop");
    }
    ensure_refused(&d)
}

/// Accepts spread over the workers (a SO_REUSEPORT group, one socket per
/// worker): 10,000 short connections over 2 workers, each worker's share
/// (from its `draining accepted=N` line at stop) within 20% of an even split.
#[test]
fn short_connections_split_evenly_over_two_workers() -> io::Result<()> {
    use std::io::{Read, Write};
    let mut d = Daemon::builder().workers(2).start()?;
    let addr = d.addr();
    const N: usize = 10_000;
    for i in 0..N {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"a\n")?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b)?;
        ensure!(&b == b"n\n", "connection {i}: {b:?}");
    }
    d.signal(libc::SIGTERM)?;
    let status = d.wait_exit(Duration::from_secs(20))?;
    ensure!(status.code() == Some(0), "exit {status:?}");
    let text = d.log().text();
    let shares: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("draining"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("accepted=")))
        .filter_map(|n| n.parse().ok())
        .collect();
    ensure!(shares.len() == 2, "expected two draining lines: {shares:?}\n{text}");
    ensure!(shares.iter().sum::<usize>() == N, "accepted {shares:?} != {N}");
    for s in &shares {
        ensure!(*s >= N / 2 * 8 / 10 && *s <= N / 2 * 12 / 10, "uneven split {shares:?}");
    }
    Ok(())
}

/// SPEC §2: after SIGTERM a connection that was busy is "served as usual
/// until the client shuts down its write side" — also through pauses in
/// which it has nothing buffered (it is not closed as idle later on).
#[test]
fn busy_connection_survives_pauses_during_a_drain() -> io::Result<()> {
    let mut d = Daemon::builder().workers(0).start()?;
    let mut c = d.connect()?;
    // Busy at the signal: a partial line is buffered.
    c.send(b"ab")?;
    let mut probe = d.connect()?;
    probe.send(b"x\n")?;
    ensure_bytes_eq("probe", &probe.read_exact(2)?, b"k\n")?;
    d.signal(libc::SIGTERM)?;
    d.wait_for_log("draining", T)?;
    c.send(b"c\n")?;
    ensure_bytes_eq("first line", &c.read_exact(4)?, b"nop\n")?;
    // Nothing buffered now; the client pauses (the behaviour under test).
    thread::sleep(Duration::from_millis(700));
    c.send(b"d\n")?;
    ensure_bytes_eq("after the pause", &c.read_exact(2)?, b"q\n")?;
    c.half_close()?;
    ensure_bytes_eq("then EOF", &c.read_to_end()?, b"")?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

#[test]
fn graceful_stop_serves_busy_client_uring_w1() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    graceful_stop_serves_busy_client("uring", 1)
}
