//! Configuration keys whose effect no other test shows (issue 13): each
//! test here fails if its key were ignored. What the daemon does is seen
//! from outside: the listening socket's backlog (`ss`), the worker's
//! credentials (`/proc`), the timeouts and the number of `epoll_wait`
//! calls its loop makes (`strace`), which backend and base flags it runs
//! (the `reactor` event), and how many clients each worker serves.

use crate::ensure;
use crate::util::{Client, Daemon, Log, ensure_bytes_eq, fail, poll_until, root_or_skip, tcp_queues, wait_child};
use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// `ss -Hltn`: the backlog (Send-Q) of every socket listening on `port`.
fn listen_backlogs(port: u16) -> io::Result<Vec<u64>> {
    let out = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output()?;
    ensure!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).and_then(|q| q.parse().ok()))
        .collect())
}

#[test]
fn backlog_is_the_listen_backlog_of_every_worker_socket() -> io::Result<()> {
    let d = Daemon::builder().workers(2).config("[server]\nbacklog = 7\n").start()?;
    let q = listen_backlogs(d.addr().port())?;
    ensure!(q.len() >= 2 && q.iter().all(|&b| b == 7), "listen backlogs {q:?}, want 7 on every socket");
    let d = Daemon::builder().workers(1).start()?;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let q = listen_backlogs(d.addr().port())?;
    ensure!(!q.is_empty() && q.iter().all(|&b| b == 1024.min(somaxconn)), "default backlogs {q:?}, want 1024");
    Ok(())
}

/// `Uid:`, `Gid:` and `Groups:` of `/proc/PID/status`.
fn credentials(pid: i32) -> io::Result<(String, String, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    Ok((field("Uid:"), field("Gid:"), field("Groups:")))
}

#[test]
fn group_sets_the_workers_group() -> io::Result<()> {
    if !root_or_skip("to change group") {
        return Ok(());
    }
    // group alone: the gid changes, the uid stays.
    let d = Daemon::builder().workers(1).config("[server]\ngroup = \"65534\"\n").start()?;
    let (uid, gid, _) = credentials(d.serving_pid()?)?;
    ensure!((uid.as_str(), gid.as_str()) == ("0 0 0 0", "65534 65534 65534 65534"), "uid {uid:?}, gid {gid:?}");
    ensure_bytes_eq("served", &d.roundtrip(b"ok\n")?, b"bx\n")?;
    // With a user: the group given, not the user's own (nobody's is 65534);
    // the user's supplementary groups are set (nobody has none).
    let d = Daemon::builder().workers(1).config("[server]\nuser = \"nobody\"\ngroup = \"1\"\n").start()?;
    let (uid, gid, groups) = credentials(d.serving_pid()?)?;
    ensure!(
        (uid.as_str(), gid.as_str()) == ("65534 65534 65534 65534", "1 1 1 1"),
        "uid {uid:?}, gid {gid:?} (groups {groups:?})"
    );
    ensure!(groups.split_whitespace().all(|g| g == "1" || g == "65534"), "supplementary groups {groups:?}");
    ensure_bytes_eq("served", &d.roundtrip(b"ok\n")?, b"bx\n")
}

/// `strace -p PID` of the `epoll_wait` calls (or others) of one process,
/// stopped (by pid) on drop.
struct Strace {
    child: Child,
    out: std::path::PathBuf,
}

impl Strace {
    /// Attaches to `pid`; returns once strace says it is attached.
    fn attach(pid: i32, out: std::path::PathBuf) -> io::Result<Strace> {
        Strace::attach_tracing(pid, out, "trace=epoll_wait,epoll_pwait")
    }

    /// Attaches to `pid`, tracing what `filter` (strace's `-e`) selects.
    fn attach_tracing(pid: i32, out: std::path::PathBuf, filter: &str) -> io::Result<Strace> {
        let mut child = Command::new("strace")
            .args(["-p", &pid.to_string(), "-e", filter, "-o"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("strace (apt-get install strace): {e}")))?;
        let err = Log::capture(child.stderr.take().ok_or_else(|| fail("no strace stderr"))?);
        // Bounded: a strace that neither attaches nor exits fails the test.
        let mut st = Strace { child, out };
        if let Err(e) = err.wait_count(&["attached"], 1, T) {
            st.stop();
            return Err(fail(format!("strace did not attach to {pid}: {e}")));
        }
        Ok(st)
    }

    /// Detaches (strace writes what it holds as it exits) and returns the
    /// timeout argument (ms) of every `epoll_wait` that returned meanwhile.
    fn finish(mut self) -> io::Result<Vec<i64>> {
        self.stop();
        Ok(std::fs::read_to_string(&self.out)?
            .lines()
            .filter(|l| l.starts_with("epoll_wait(") || l.starts_with("epoll_pwait("))
            .filter_map(|l| {
                let (call, _) = l.rsplit_once(") = ")?;
                let args: Vec<&str> = call.rsplit(", ").collect();
                // epoll_wait(fd, events, max, timeout); epoll_pwait adds a mask.
                let at = if l.starts_with("epoll_pwait(") { 2 } else { 0 };
                args.get(at)?.trim().parse().ok()
            })
            .collect())
    }

    /// Detaches and returns every line strace wrote.
    fn lines(mut self) -> io::Result<Vec<String>> {
        self.stop();
        Ok(std::fs::read_to_string(&self.out)?.lines().map(str::to_owned).collect())
    }

    fn stop(&mut self) {
        let pid = self.child.id() as i32;
        let _ = crate::util::kill(pid, libc::SIGTERM);
        // Bounded: SIGTERM detaches (and strace writes what it holds); one
        // that does not exit on it is killed.
        if wait_child(&mut self.child, T).is_err() {
            let _ = crate::util::kill(pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With one idle connection open, the deadlines (ms) the worker's loop
/// waits for: each read re-arms the connection's idle timeout, and the
/// `epoll_wait` that follows is bounded by it, or not at all (-1).
fn idle_deadlines(config: &str) -> io::Result<Vec<i64>> {
    let d = Daemon::builder().workers(1).config(config).start()?;
    let mut c = d.connect()?;
    c.ping()?;
    let st = Strace::attach(d.serving_pid()?, d.dir().join("strace.txt"))?;
    for _ in 0..5 {
        c.ping()?;
    }
    // One wait returned per ping (strace may miss the first, while it
    // attaches): each began with the connection's idle timeout armed.
    let t = st.finish()?;
    ensure!(t.len() >= 3, "strace saw {t:?}");
    Ok(t)
}

#[test]
fn idle_timeout_zero_arms_no_deadline() -> io::Result<()> {
    let t = idle_deadlines("[server]\nidle_timeout = 0\n")?;
    ensure!(t.iter().all(|&ms| ms == -1), "idle_timeout = 0: the loop waited with timeouts {t:?} ms, want none (-1)");
    // The control: 7 s is a deadline of at most 7 s (300 s by default).
    let t = idle_deadlines("[server]\nidle_timeout = 7\n")?;
    ensure!(t.iter().all(|&ms| (5000..=7000).contains(&ms)), "idle_timeout = 7: timeouts {t:?} ms");
    let t = idle_deadlines("")?;
    ensure!(t.iter().all(|&ms| (290_000..=300_000).contains(&ms)), "default idle_timeout: timeouts {t:?} ms");
    Ok(())
}

/// `--backend uring` (issue 14): reads and sends are ring operations and
/// a turn's sends go with its wait. The connection's multishot receive
/// stays armed (no re-arm per line), the answer is a send submitted by the
/// enter that waits for the next line (to_submit 1, GETEVENTS, one
/// completion more than the send's own), so the worker makes no `recv`,
/// `send` or other system call per line, only `io_uring_enter`: one when
/// the next line comes within the wait's 50 us, else a second one that
/// collects the send's completion (under strace, most of the time), never
/// more than three.
#[test]
fn uring_submits_a_turns_changes_with_its_wait() -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    const PINGS: usize = 20;
    // No liveness ping (a recvmsg and an enter of its own) in the window.
    let d =
        Daemon::builder().workers(1).config("[server]\nworker_timeout = 0\n").args(["--backend", "uring"]).start()?;
    let mut c = d.connect()?;
    c.ping()?;
    let st = Strace::attach_tracing(d.serving_pid()?, d.dir().join("strace.txt"), "trace=all")?;
    for _ in 0..PINGS {
        c.ping()?;
    }
    let lines = st.lines()?;
    let enters: Vec<&String> = lines.iter().filter(|l| l.starts_with("io_uring_enter(")).collect();
    let others: Vec<&String> = lines.iter().filter(|l| l.contains('(') && !l.starts_with("io_uring_enter(")).collect();
    ensure!(others.is_empty(), "the worker made other calls while answering: {others:#?}");
    ensure!(enters.len() <= 3 * PINGS + 1, "{} io_uring_enter calls for {PINGS} lines: {enters:#?}", enters.len());
    // io_uring_enter(fd, to_submit, min_complete, flags, arg, argsz).
    let sends_with_the_wait = enters
        .iter()
        .filter(|l| {
            let a: Vec<&str> = l.trim_start_matches("io_uring_enter(").split(", ").collect();
            a.len() >= 4 && a[1] == "1" && a[2] == "2" && a[3].contains("IORING_ENTER_GETEVENTS")
        })
        .count();
    ensure!(
        sends_with_the_wait >= PINGS / 2,
        "enters that submit the answer and wait for the next line: {sends_with_the_wait}: {enters:#?}"
    );
    Ok(())
}

/// How many `epoll_wait` calls the worker makes to answer one line on each
/// of `n` connections that all became readable while it was stopped (so
/// that one wait reports all of them): 1 or 2 when a turn runs every ready
/// callback, about `n` when a limit ends each turn after one (`n - 1`
/// after the one that reported them, one fewer if strace missed the first
/// while attaching).
fn waits_for_a_batch(config: &str, n: usize) -> io::Result<usize> {
    // The worker is stopped on purpose, and a liveness ping would add a
    // wait: the master's check is off here.
    let config = format!("[server]\nworker_timeout = 0\n{config}");
    let d = Daemon::builder().workers(1).config(&config).start()?;
    let worker = d.serving_pid()?;
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut c = d.connect()?;
        c.ping()?;
        clients.push(c);
    }
    let st = Strace::attach(worker, d.dir().join("strace.txt"))?;
    crate::util::kill(worker, libc::SIGSTOP)?;
    let sent = (|| -> io::Result<()> {
        for c in &mut clients {
            c.send(b"x\n")?;
        }
        // Every line has reached the server's socket before it runs again.
        let ends: Vec<(SocketAddr, SocketAddr)> =
            clients.iter().map(|c| Ok((c.stream.peer_addr()?, c.stream.local_addr()?))).collect::<io::Result<_>>()?;
        let all_in = poll_until(T, || ends.iter().all(|&(s, c)| tcp_queues(s, c).is_some_and(|(_, rx)| rx == 2)));
        ensure!(all_in, "the lines did not reach the stopped worker's sockets");
        Ok(())
    })();
    crate::util::kill(worker, libc::SIGCONT)?;
    sent?;
    for c in &mut clients {
        ensure_bytes_eq("answer", &c.read_exact(2)?, b"k\n")?;
    }
    // Every wait that answered the batch has returned (and the one after
    // the last answer has begun).
    let waits = st.finish()?.len();
    eprintln!("{n} lines at once, {config:?}: {waits} epoll_wait calls returned");
    Ok(waits)
}

#[test]
fn max_dispatch_interval_ms_ends_a_turn_early() -> io::Result<()> {
    const N: usize = 24;
    // Lanes off and no limit: one wait reports every line, one turn runs them.
    let free = waits_for_a_batch("[lanes]\nenabled = false\n", N)?;
    ensure!(free <= 4, "without limits the batch took {free} waits");
    // 0 ms: each turn ends after its first callback.
    let limited = waits_for_a_batch("[lanes]\nenabled = false\n[reactor]\nmax_dispatch_interval_ms = 0\n", N)?;
    ensure!(limited >= N - 2, "max_dispatch_interval_ms = 0: the batch of {N} took only {limited} waits");
    Ok(())
}

#[test]
fn min_priority_is_where_the_limits_start() -> io::Result<()> {
    const N: usize = 24;
    // Connections run at the interactive priority, 1: a callback limit from
    // priority 2 on (bulk only) leaves them unbounded...
    let bulk_only = waits_for_a_batch("[reactor]\nmax_callbacks = 1\nmin_priority = 2\n", N)?;
    ensure!(bulk_only <= 4, "min_priority = 2: the interactive batch took {bulk_only} waits");
    // ...from priority 1 on it bounds them.
    let from_one = waits_for_a_batch("[reactor]\nmax_callbacks = 1\nmin_priority = 1\n", N)?;
    ensure!(from_one >= N - 2, "min_priority = 1: the batch of {N} took only {from_one} waits");
    Ok(())
}

#[test]
fn avoid_skips_backends() -> io::Result<()> {
    for (avoid, want) in [("[\"epoll\"]", "poll"), ("[\"epoll\", \"poll\"]", "select")] {
        let d = Daemon::builder().workers(1).config(&format!("[reactor]\navoid = {avoid}\n")).start()?;
        let n = d.log().count(&["reactor", &format!("backend={want} ")]);
        ensure!(n == 1, "avoid = {avoid}: want backend={want}:\n{}", d.log().text());
        ensure_bytes_eq("served", &d.roundtrip(b"ok\n")?, b"bx\n")?;
    }
    Ok(())
}

/// The `reactor` event of the one worker of a daemon with `config`.
fn reactor_line(config: &str) -> io::Result<String> {
    let d = Daemon::builder().workers(1).config(config).start()?;
    ensure_bytes_eq("served", &d.roundtrip(b"ok\n")?, b"bx\n")?;
    let text = d.log().text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("reactor") && l.contains("backend=")).collect();
    ensure!(lines.len() == 1, "reactor events:\n{text}");
    Ok(lines[0].to_string())
}

#[test]
fn base_flags_reach_the_workers_base() -> io::Result<()> {
    let plain = reactor_line("")?;
    for want in ["backend=epoll ", "changelist=false", "precise_timer=false", "cache_time=true"] {
        ensure!(plain.contains(want), "defaults: {want} not in {plain}");
    }
    for (key, want) in [
        ("epoll_changelist", "changelist=true"),
        ("precise_timer", "precise_timer=true"),
        ("no_cache_time", "cache_time=false"),
    ] {
        let line = reactor_line(&format!("[reactor]\n{key} = true\n"))?;
        ensure!(line.contains(want) && line.contains("backend=epoll "), "{key} = true: {want} not in {line}");
    }
    Ok(())
}

/// The established server-side sockets of `port` that process `pid` holds
/// (accepted connections), by inode.
fn accepted_by(pid: i32, port: u16) -> io::Result<usize> {
    let ours: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_str().and_then(|s| s.strip_prefix("socket:[")).map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // st 01 = ESTABLISHED; field 9 is the inode.
            f.len() > 9 && f[1].ends_with(&local) && f[3] == "01" && ours.contains(f[9])
        })
        .count())
}

#[test]
fn max_connections_is_per_worker_with_two_workers() -> io::Result<()> {
    const CLIENTS: usize = 20;
    let d = Daemon::builder().workers(2).config("[server]\nmax_connections = 2\n").start()?;
    let workers = d.worker_pids();
    ensure!(workers.len() == 2, "workers {workers:?}");
    let port = d.addr().port();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = d.connect()?;
        c.send(format!("{i}\n").as_bytes())?;
        clients.push(c);
    }
    // Each worker accepts exactly two; the others wait in its backlog. (20
    // clients hashed over two SO_REUSEPORT sockets: both get at least two
    // but for a chance of 21 in 2^19.)
    let mut counts = Vec::new();
    let settled = poll_until(T, || {
        counts = workers.iter().map(|&w| accepted_by(w, port).unwrap_or(0)).collect();
        counts == [2, 2]
    });
    ensure!(settled, "connections accepted per worker {counts:?}, want [2, 2]");
    // Exactly those four are answered: collect answers until four came
    // (bounded), then no other comes for a moment.
    for c in &clients {
        c.stream.set_nonblocking(true)?;
    }
    let mut served = Vec::new();
    // Reads what came, on every client but a closed one.
    let poll_answers = |clients: &mut [Client], closed: Option<usize>, served: &mut Vec<usize>| -> io::Result<()> {
        let mut buf = [0u8; 16];
        for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| Some(*i) != closed) {
            match c.stream.read(&mut buf) {
                Ok(n) => {
                    ensure_bytes_eq("answer", &buf[..n], format!("{i}\n").as_bytes())?;
                    served.push(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let deadline = std::time::Instant::now() + T;
    while served.len() < 4 && std::time::Instant::now() < deadline {
        poll_answers(&mut clients, None, &mut served)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    // Waiting clients stay unanswered (a bounded look: a negative).
    std::thread::sleep(Duration::from_millis(300));
    poll_answers(&mut clients, None, &mut served)?;
    ensure!(served.len() == 4, "served {served:?}, want 4 (2 per worker)");
    // One closes: its worker takes one more from its backlog and answers
    // it (the accepted counts alone are [2, 2] already before the close
    // is seen, so they cannot show this by themselves).
    let closed = served[0];
    clients[closed].stream.shutdown(Shutdown::Both)?;
    let deadline = std::time::Instant::now() + T;
    while served.len() < 5 && std::time::Instant::now() < deadline {
        poll_answers(&mut clients, Some(closed), &mut served)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure!(served.len() == 5, "after closing client {closed}: served {served:?}, want one more");
    let settled = poll_until(T, || {
        counts = workers.iter().map(|&w| accepted_by(w, port).unwrap_or(0)).collect();
        counts == [2, 2]
    });
    ensure!(settled, "after a close: accepted per worker {counts:?}, want [2, 2] again");
    Ok(())
}
