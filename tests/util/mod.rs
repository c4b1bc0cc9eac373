//! Helpers of the daemon tests: the [`Daemon`] guard around the real binary,
//! a [`Client`] with bounded timeouts, and [`rot13_model`], the reference
//! implementation of SPEC §1 every answer is compared with.
//!
//! Rules (STYLE §8): no fixed ports (`--listen 127.0.0.1:0`, the port is
//! read from the log), no sleep as synchronisation (conditions are polled
//! with a deadline), every wait bounded, every process killed by pid.

// A helper library: not every topic uses every helper.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::SystemTime;
use std::time::{Duration, Instant};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_rot13d");

/// How long a daemon may take to start (listen and every reactor up).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Default read/write timeout of a [`Client`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Variables of the test's own environment that would change the daemon;
/// removed before each start (a test sets what it needs).
pub const ENV_CLEARED: [&str; 11] = [
    "RUST_LOG",
    "NO_COLOR",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "EVENT_NOEPOLL",
    "EVENT_NOPOLL",
    "EVENT_NOSELECT",
    "EVENT_EPOLL_USE_CHANGELIST",
];

/// An `io::Error` of kind `Other` (test failures carry their context).
/// Whether the daemon can run on `backend` here: false for `uring` where
/// io_uring is missing or forbidden, said on stderr (the test then skips).
pub fn backend_usable(backend: &str) -> bool {
    let name = backend.split('+').next().unwrap_or(backend);
    let have = rot13d::reactor::BackendKind::from_name(name).map_or(Ok(()), |k| k.available());
    capable(name, have.map_err(|why| format!("the {backend} backend is not available here: {why}")))
}

pub fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Returns `Err` with `msg` (and the values) unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::util::fail(format!($($fmt)+)));
        }
    };
}

/// Compares two byte strings; on a difference, fails naming the first
/// differing offset and a window around it.
pub fn ensure_bytes_eq(what: &str, got: &[u8], want: &[u8]) -> io::Result<()> {
    if got == want {
        return Ok(());
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(16);
    let window = |b: &[u8]| String::from_utf8_lossy(&b[lo.min(b.len())..(at + 48).min(b.len())]).into_owned();
    Err(fail(format!(
        "{what}: got {} bytes, want {}; first difference at byte {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )))
}

// ---------------------------------------------------------------------------
// The reference model of SPEC §1.

/// ROT13 of one byte: ASCII letters rotate, every other byte passes.
pub fn rot13_byte(b: u8) -> u8 {
    match b {
        b'a'..=b'm' | b'A'..=b'M' => b + 13,
        b'n'..=b'z' | b'N'..=b'Z' => b - 13,
        _ => b,
    }
}

/// What the server answers to `input` followed by end of input (SPEC §1):
/// lines split at LF; a complete line gives `rot13(line)` + LF; a line
/// longer than `max_line` is cut into `max_line` pieces, each followed by
/// LF (a piece is cut only when one more byte of the same line arrived, so
/// a line of exactly `max_line` is never cut); the final unterminated tail
/// gives `rot13(tail)` without LF.
pub fn rot13_model(input: &[u8], max_line: usize) -> Vec<u8> {
    assert!(max_line > 0);
    let mut out = Vec::with_capacity(input.len() + input.len() / max_line + 1);
    let mut len = 0usize;
    for &b in input {
        if b == b'\n' {
            out.push(b'\n');
            len = 0;
            continue;
        }
        if len == max_line {
            out.push(b'\n');
            len = 0;
        }
        out.push(rot13_byte(b));
        len += 1;
    }
    out
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `len` bytes of text: lines of random length (0..=`longest`) of random
/// bytes (all 256 values but LF), each ended by LF.
pub fn random_lines(seed: u64, len: usize, longest: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = rng.below(longest + 1);
        for _ in 0..n {
            let b = (rng.next_u64() >> 56) as u8;
            v.push(if b == b'\n' { b'x' } else { b });
        }
        v.push(b'\n');
    }
    v.truncate(len);
    v
}

// ---------------------------------------------------------------------------
// Running the binary once (CLI tests).

/// What a finished run of the binary left.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the binary with `args` and extra `env`, bounded by `timeout`
/// (killed by pid after it). Stdin is /dev/null.
pub fn run_bin(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> io::Result<Output> {
    run_wrapped(&[], args, env, timeout)
}

/// As [`run_bin`], through `wrapper` (a command that execs the rest of its
/// arguments, such as `setpriv ...`).
pub fn run_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)], timeout: Duration) -> io::Result<Output> {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for k in ENV_CLEARED {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let out = Log::capture(child.stdout.take().ok_or_else(|| fail("no stdout"))?);
    let err = Log::capture(child.stderr.take().ok_or_else(|| fail("no stderr"))?);
    let status = wait_child(&mut child, timeout);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("rot13d {args:?} did not exit within {timeout:?}: {e}\n{}", err.text())));
        }
    };
    // A process it left behind (a `--daemon` launcher's detached child)
    // may hold the pipes open: wait a moment for their end, never longer.
    let deadline = Instant::now() + READER_GRACE;
    out.wait_closed(deadline);
    err.wait_closed(deadline);
    Ok(Output { code: status.code(), stdout: out.text(), stderr: err.text() })
}

/// How long, after a process exited, its output is awaited: a detached
/// child holding the same pipes must not hang the test.
pub const READER_GRACE: Duration = Duration::from_secs(2);

/// The variable naming the capabilities a run expects to have,
/// comma-separated ([`capable`]); `scripts/test.sh` sets it to those it
/// detects here on its own (not with the product's probes).
pub const REQUIRE_VAR: &str = "ROT13D_REQUIRE";

/// Whether a test can go on: `have` is `Ok`, or why `capability` (`uring`,
/// `root`, `two_cpus`, `users`; a backend by its name) is missing here.
/// Missing, it says `SKIPPED: why` on the test's output and returns false,
/// unless [`REQUIRE_VAR`] lists the capability (or `all`): then the test
/// fails, naming it. Every skip of the suite goes through here, so that a
/// box expected to have a capability cannot pass green without running
/// the tests that need it (nextest hides a passing test's output).
pub fn capable(capability: &str, have: Result<(), String>) -> bool {
    let Err(why) = have else { return true };
    let required = std::env::var(REQUIRE_VAR).unwrap_or_default();
    if required.split(',').map(str::trim).any(|c| c == capability || c == "all") {
        panic!("{capability} is required here ({REQUIRE_VAR}={required}) but missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Whether this runs as root ([`capable`] `root`); `needs` says what for.
pub fn root_or_skip(needs: &str) -> bool {
    let root = rot13d::sys::process::geteuid() == 0;
    capable("root", if root { Ok(()) } else { Err(format!("needs root {needs}")) })
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "process still running"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// `(state, ppid)` of `pid` from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `(pgrp, session, tty_nr)` of `pid` from `/proc/PID/stat` (fields 5-7).
pub fn proc_session(pid: i32) -> Option<(i32, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?, f.get(4)?.parse().ok()?))
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn proc_comm(pid: i32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Live (non-zombie) children of `parent`, sorted.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if let Some((state, ppid)) = proc_stat(pid)
                && ppid == parent
                && state != 'Z'
                && state != 'X'
            {
                v.push(pid);
            }
        }
    }
    v.sort_unstable();
    v
}

/// Open descriptors of `pid` (`/proc/PID/fd`).
pub fn fd_count(pid: i32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Waits (at most `timeout`) until `pid` holds `want` descriptors again;
/// the count it holds at the end (`want` unless the wait ran out).
pub fn fd_count_back_to(pid: i32, want: usize, timeout: Duration) -> usize {
    let mut n = 0;
    poll_until(timeout, || {
        n = fd_count(pid).unwrap_or(usize::MAX);
        n == want
    });
    n
}

/// CPU time (user + system) of `pid` in clock ticks (1/100 s), from
/// fields 14 and 15 of `/proc/PID/stat`.
pub fn cpu_ticks(pid: i32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = s[s.rfind(')').ok_or_else(|| fail("bad stat"))? + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| fail(format!("no field {i}")));
    Ok(t(14)? + t(15)?)
}

/// Resident set size of `pid` in bytes.
pub fn rss(pid: i32) -> io::Result<u64> {
    rot13d::sys::process::rss_bytes(pid).ok_or_else(|| fail(format!("no RSS of {pid}")))
}

/// Resident anonymous memory of `pid` in bytes (`RssAnon` of
/// `/proc/PID/status`): the heap and stacks, without the binary's code
/// pages, which a code path run for the first time adds to the RSS.
pub fn rss_anon(pid: i32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let l = s.lines().find(|l| l.starts_with("RssAnon:")).ok_or_else(|| fail(format!("no RssAnon of {pid}")))?;
    let kib: u64 = l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or_else(|| fail(l.to_string()))?;
    Ok(kib * 1024)
}

/// Bytes as MiB with two decimals, for figures.
pub fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Prints a figure of a test where the run's output shows it (the heavy
/// tests' group shows the output of passing tests too): `FIGURE name: ...`.
pub fn figure(name: &str, text: &str) {
    eprintln!("FIGURE {name}: {text}");
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    rot13d::sys::signal::kill(pid, sig)
}

/// SIGKILLs `pid`'s children, then `pid`; errors ignored (used by guards).
pub fn kill_tree(pid: i32) {
    if pid <= 0 {
        return;
    }
    for c in children_of(pid) {
        let _ = kill(c, libc::SIGKILL);
    }
    let _ = kill(pid, libc::SIGKILL);
}

// ---------------------------------------------------------------------------
// Temporary directories.

static TEMP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new() -> io::Result<TempDir> {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let p = std::env::temp_dir().join(format!("rot13d-itest-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The log on stderr.

/// The stderr of a process, appended by a reader thread; the flag is set
/// once the reader reached the end (every writer closed it).
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<String>, Condvar)>, Arc<std::sync::atomic::AtomicBool>);

impl Log {
    /// Starts a thread that appends every line of `r` (until EOF).
    pub fn capture(r: impl Read + Send + 'static) -> Log {
        let log = Log::default();
        let l = log.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        // Under the lock: a waiter checks the flag under it.
                        let _g = l.0.0.lock().unwrap_or_else(|e| e.into_inner());
                        l.1.store(true, Ordering::SeqCst);
                        l.0.1.notify_all();
                        break;
                    }
                    Ok(_) => {
                        let (m, c) = &*l.0;
                        m.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&line));
                        c.notify_all();
                    }
                }
            }
        });
        log
    }

    /// Waits until the stream ended (EOF) or `deadline` passed; whether
    /// it ended.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let (m, c) = &*self.0;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.1.load(Ordering::SeqCst) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = c.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines contain every one of `patterns`.
    pub fn count(&self, patterns: &[&str]) -> usize {
        self.text().lines().filter(|l| patterns.iter().all(|p| l.contains(p))).count()
    }

    /// Waits until at least `n` lines contain every one of `patterns`.
    pub fn wait_count(&self, patterns: &[&str], n: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.0;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.lines().filter(|l| patterns.iter().all(|p| l.contains(p))).count() >= n {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {n} log lines with {patterns:?} within {timeout:?}; log:\n{}", *g),
                ));
            }
            g = c.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon guard.

/// How to start a [`Daemon`].
#[derive(Clone)]
pub struct DaemonBuilder {
    args: Vec<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
    workers: usize,
    workers_arg: Option<String>,
    listen: bool,
    json: bool,
    sh_prefix: Option<String>,
    wrapper: Vec<String>,
}

impl DaemonBuilder {
    /// Runs the binary through `wrapper` (a command that execs the rest of
    /// its arguments, such as `setpriv ...` or `prlimit ...`): the pid
    /// stays the daemon's.
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Passes `--workers ARG` verbatim (e.g. `auto`); the start waits for
    /// `serving` reactor lines.
    pub fn workers_arg(mut self, arg: &str, serving: usize) -> Self {
        self.workers_arg = Some(arg.to_string());
        self.workers = serving;
        self
    }

    /// Sets `--workers N` (default 1); the start waits for `max(N, 1)`
    /// `reactor backend=` lines.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Writes `toml` to `rot13d.toml` in the daemon's temp dir and passes
    /// `-c` with it.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Passes `--log-format json` and waits for the JSON form of the
    /// `listening` and `reactor` events.
    pub fn json_log(mut self) -> Self {
        self.args.extend(["--log-format".to_string(), "json".to_string()]);
        self.expect_json()
    }

    /// Reads the start-up lines as JSON (the configuration asks for it).
    pub fn expect_json(mut self) -> Self {
        self.json = true;
        self
    }

    /// Starts the binary through `sh -c 'PREFIX exec BIN ARGS'` (e.g. to
    /// move an inherited fd to 3 and set `LISTEN_PID=$$`).
    pub fn sh_prefix(mut self, prefix: &str) -> Self {
        self.sh_prefix = Some(prefix.to_string());
        self
    }

    /// Leaves out `--listen 127.0.0.1:0` (the caller passes its own).
    pub fn no_default_listen(mut self) -> Self {
        self.listen = false;
        self
    }

    /// As [`start`](DaemonBuilder::start) without `--workers` (the file
    /// decides); waits for the builder's worker count of reactors.
    pub fn start_without_workers_arg(mut self) -> io::Result<Daemon> {
        self.workers_arg = Some(String::new());
        self.start()
    }

    /// Starts the binary and waits (bounded) until it listens and every
    /// serving process logged its reactor.
    pub fn start(self) -> io::Result<Daemon> {
        let dir = TempDir::new()?;
        let mut cmd = match &self.sh_prefix {
            // `sh -c 'PREFIX exec "$0" "$@"' BIN ARGS...`: the shell's pid
            // becomes the daemon's.
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("{prefix} exec \"$0\" \"$@\""), BIN]);
                c
            }
            None if !self.wrapper.is_empty() => {
                let mut c = Command::new(&self.wrapper[0]);
                c.args(&self.wrapper[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let config_path = dir.join("rot13d.toml");
        if let Some(c) = &self.config {
            std::fs::write(&config_path, c)?;
            cmd.arg("-c").arg(&config_path);
        }
        if self.listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let workers = self.workers_arg.clone().unwrap_or_else(|| self.workers.to_string());
        if !workers.is_empty() {
            cmd.args(["--workers", &workers]);
        }
        cmd.args(&self.args);
        for k in ENV_CLEARED {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let log = Log::capture(child.stderr.take().ok_or_else(|| fail("no stderr"))?);
        let mut d = Daemon {
            child: Some(child),
            pid,
            log,
            addr: None,
            dir,
            config_path,
            status: None,
            workers: self.workers,
            seen: Mutex::new(Vec::new()),
        };
        let (listening, reactor): (&[&str], &[&str]) = if self.json {
            (&["\"message\":\"listening\"", "\"kind\":\"rot13\""], &["\"message\":\"reactor\"", "\"backend\":"])
        } else {
            (&["listening addr=", "kind=rot13"], &["reactor", "backend="])
        };
        d.log.wait_count(listening, 1, START_TIMEOUT)?;
        d.addr = Some(parse_listen_addr(&d.log.text()).ok_or_else(|| fail("no address in the log"))?);
        d.log.wait_count(reactor, self.workers.max(1), START_TIMEOUT)?;
        d.worker_pids();
        Ok(d)
    }
}

/// The first rot13 `listening` address of `log` (text or JSON lines).
pub fn parse_listen_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|l| {
        if l.contains("listening") && l.contains("kind=rot13") {
            let a = &l[l.find("addr=")? + 5..];
            a.split_whitespace().next()?.parse().ok()
        } else if l.contains("\"message\":\"listening\"") && l.contains("\"kind\":\"rot13\"") {
            let a = &l[l.find("\"addr\":\"")? + 8..];
            a.split('"').next()?.parse().ok()
        } else {
            None
        }
    })
}

/// A running `rot13d` (master), killed with its workers on drop.
pub struct Daemon {
    child: Option<Child>,
    pid: i32,
    log: Log,
    addr: Option<SocketAddr>,
    dir: TempDir,
    config_path: PathBuf,
    status: Option<ExitStatus>,
    workers: usize,
    /// Every worker pid seen, killed on drop if still a rot13d (a worker
    /// outliving its master is no longer its child).
    seen: Mutex<Vec<i32>>,
}

impl Daemon {
    /// A builder with `--workers 1` and `--listen 127.0.0.1:0`.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            args: Vec::new(),
            config: None,
            env: Vec::new(),
            workers: 1,
            workers_arg: None,
            listen: true,
            json: false,
            sh_prefix: None,
            wrapper: Vec::new(),
        }
    }

    /// Starts with `--workers N` and the extra `args`.
    pub fn start(workers: usize, args: &[&str]) -> io::Result<Daemon> {
        Daemon::builder().workers(workers).args(args).start()
    }

    /// The bound rot13 address.
    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Live worker processes (children of the master), sorted.
    pub fn worker_pids(&self) -> Vec<i32> {
        let w = children_of(self.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &w {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        w
    }

    /// The pids of every `reactor` line logged so far (every serving
    /// process ever started, master included with `--workers 0`).
    pub fn reactor_pids(&self) -> Vec<i32> {
        self.log
            .text()
            .lines()
            .filter(|l| l.contains("reactor") && l.contains("backend="))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")).and_then(|p| p.parse().ok()))
            .collect()
    }

    /// The pid serving connections: the only worker, or the master with
    /// `--workers 0`.
    pub fn serving_pid(&self) -> io::Result<i32> {
        if self.workers == 0 {
            return Ok(self.pid);
        }
        let w = self.worker_pids();
        ensure!(w.len() == 1, "want exactly one worker, have {w:?}");
        Ok(w[0])
    }

    /// The config file path (written by [`DaemonBuilder::config`]).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The daemon's temp dir.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// The stderr captured so far.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Waits until a log line contains `pattern`.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> io::Result<()> {
        self.log.wait_count(&[pattern], 1, timeout)
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        kill(self.pid, sig)
    }

    /// Waits until the master exits; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let child = self.child.as_mut().ok_or_else(|| fail("no child"))?;
        let s = wait_child(child, timeout).map_err(|e| {
            fail(format!("master {} did not exit within {timeout:?}: {e}\n{}", self.pid, self.log.text()))
        })?;
        self.status = Some(s);
        // What it logged last may still be in the pipe: read to its end
        // (once every worker is gone too; bounded, as a worker may not be).
        self.log.wait_closed(Instant::now() + READER_GRACE);
        Ok(s)
    }

    /// Connects a [`Client`].
    pub fn connect(&self) -> io::Result<Client> {
        Client::connect(self.addr())
    }

    /// One connection: sends `input`, half-closes, returns everything read
    /// until EOF.
    pub fn roundtrip(&self, input: &[u8]) -> io::Result<Vec<u8>> {
        self.connect()?.roundtrip(input)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut pids = children_of(self.pid);
        pids.extend(self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter());
        for p in pids {
            if alive(p) && proc_comm(p).as_deref() == Some("rot13d") {
                let _ = kill(p, libc::SIGKILL);
            }
        }
        if self.status.is_none() {
            let _ = kill(self.pid, libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = wait_child(&mut c, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// The client.

/// A TCP client with bounded read and write timeouts.
pub struct Client {
    /// The connection.
    pub stream: TcpStream,
}

impl Client {
    /// Connects to `addr` (5 s at most) with [`IO_TIMEOUT`] on reads and
    /// writes, `TCP_NODELAY` on.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream })
    }

    /// Sends all of `b`.
    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.stream.write_all(b)
    }

    /// One round trip of a short line: `ping\n` must come back as
    /// `cvat\n`, byte for byte.
    pub fn ping(&mut self) -> io::Result<()> {
        self.send(b"ping\n")?;
        ensure_bytes_eq("ping", &self.read_exact(5)?, b"cvat\n")
    }

    /// Shuts down the write side (EOF for the server).
    pub fn half_close(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n];
        self.stream.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads until EOF.
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.stream.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Reads until EOF with `timeout` on each read.
    pub fn read_to_end_within(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let r = self.read_to_end();
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        r
    }

    /// Waits at most `timeout` for something to read: `Ok(None)` if nothing
    /// came, `Ok(Some(bytes))` (empty at EOF) otherwise.
    pub fn read_some_within(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0; 64 * 1024];
        let r = self.stream.read(&mut buf);
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        match r {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `input` (from a thread, so that neither side blocks the other),
    /// half-closes, and returns everything read until EOF.
    pub fn roundtrip(self, input: &[u8]) -> io::Result<Vec<u8>> {
        self.roundtrip_chunked(input, usize::MAX)
    }

    /// As [`roundtrip`](Client::roundtrip), writing at most `chunk` bytes a
    /// `write` call.
    pub fn roundtrip_chunked(mut self, input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut w = self.stream.try_clone()?;
        let data = input.to_vec();
        let writer = thread::spawn(move || -> io::Result<()> {
            for c in data.chunks(chunk.max(1)) {
                w.write_all(c)?;
            }
            w.shutdown(Shutdown::Write)
        });
        let read = self.read_to_end();
        let wrote = writer.join().map_err(|_| fail("writer panicked"))?;
        wrote?;
        read
    }
}

/// Verifies, as bytes arrive, an answer that is `want` repeated.
pub struct Cyclic {
    want: Vec<u8>,
    /// Bytes verified so far.
    pub total: usize,
}

impl Cyclic {
    /// Expects `want` repeated.
    pub fn new(want: Vec<u8>) -> Cyclic {
        assert!(!want.is_empty());
        Cyclic { want, total: 0 }
    }

    /// Checks the next bytes of the answer.
    pub fn feed(&mut self, got: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < got.len() {
            let at = (self.total + done) % self.want.len();
            let k = (got.len() - done).min(self.want.len() - at);
            if got[done..done + k] != self.want[at..at + k] {
                let i = got[done..done + k].iter().zip(&self.want[at..at + k]).position(|(a, b)| a != b).unwrap_or(0);
                return Err(fail(format!(
                    "answer differs at byte {}: got {:#04x}, want {:#04x}",
                    self.total + done + i,
                    got[done + i],
                    self.want[at + i]
                )));
            }
            done += k;
        }
        self.total += got.len();
        Ok(())
    }

    /// Reads `r` to EOF, checking every byte.
    pub fn read_to_end(&mut self, r: &mut impl Read) -> io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.feed(&buf[..n])?;
        }
    }

    /// The answer was exactly `times` repetitions.
    pub fn ensure_repeats(&self, times: usize) -> io::Result<()> {
        let want = self.want.len() * times;
        if self.total != want {
            return Err(fail(format!("answer has {} bytes, want {want}", self.total)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// HTTP (the admin endpoint) and sd_notify.

/// `GET path`: status code and body (the server closes after answering a
/// `Connection: close` request; every read bounded by 3 s).
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(format!("GET {path}: {e} after {} bytes", raw.len())))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status_line = text.lines().next().unwrap_or("");
    ensure!(status_line.starts_with("HTTP/1."), "GET {path}: not HTTP: {text:?}");
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The sum of every sample of `name` (with or without labels).
pub fn metric(body: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0) + v as u64);
    }
    found
}

/// The address of the `n`-th (from 0) admin listener logged.
pub fn nth_admin_addr(d: &Daemon, n: usize) -> io::Result<SocketAddr> {
    d.log().wait_count(&["listening", "kind=admin"], n + 1, START_TIMEOUT)?;
    let text = d.log().text();
    let line = text.lines().filter(|l| l.contains("listening") && l.contains("kind=admin")).nth(n).unwrap_or("");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| fail(format!("no admin address in {line:?}")))
}

/// A configuration with an admin endpoint on `127.0.0.1:0`, then `extra`.
pub fn admin_config(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{extra}")
}

/// `workers` workers with an admin endpoint on `127.0.0.1:0` (then `extra`
/// config lines), once the master knows every worker serves: a worker logs
/// `reactor` before it reports READY, so `/healthz` may still say 503
/// `starting` and `rot13d_workers_serving` be below wanted until the
/// master's `ready` line. The admin address.
pub fn admin_daemon(workers: usize, extra: &str) -> io::Result<(Daemon, SocketAddr)> {
    let d = Daemon::builder().workers(workers).config(&admin_config(extra)).start()?;
    d.wait_for_log(" ready ", START_TIMEOUT)?;
    let addr = nth_admin_addr(&d, 0)?;
    ensure!(addr != d.addr(), "admin and rot13 share {addr}");
    Ok((d, addr))
}

/// One round trip of the line `what` answered correctly (5 s at most).
pub fn serves(d: &Daemon, what: &str) -> io::Result<()> {
    let line = format!("{what}\n");
    let mut c = d.connect()?;
    c.send(line.as_bytes())?;
    c.half_close()?;
    let got = c.read_to_end_within(Duration::from_secs(5)).map_err(|e| fail(format!("{what}: {e}")))?;
    ensure_bytes_eq(what, &got, &rot13_model(line.as_bytes(), 16384))
}

/// Whether connecting to `addr` is refused (nothing listens there).
pub fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// A NOTIFY_SOCKET datagram socket that records what the daemon sends.
pub struct Notify {
    /// The socket.
    pub sock: UnixDatagram,
    /// Its directory.
    pub dir: TempDir,
    /// Its path, for NOTIFY_SOCKET.
    pub path: String,
}

impl Notify {
    /// A socket in a fresh directory.
    pub fn new() -> io::Result<Notify> {
        let dir = TempDir::new()?;
        let p = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&p)?;
        Ok(Notify { sock, path: p.to_string_lossy().into_owned(), dir })
    }

    /// A socket with an abstract name (no file): `path` is `@NAME`, the
    /// form systemd passes for one.
    pub fn abstract_name() -> io::Result<Notify> {
        use std::os::linux::net::SocketAddrExt;
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("rot13d-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let sock = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?)?;
        Ok(Notify { sock, path: format!("@{name}"), dir: TempDir::new()? })
    }

    /// The next message and when it arrived (bounded by `timeout`).
    pub fn recv(&self, timeout: Duration) -> io::Result<(String, SystemTime)> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).map_err(|e| fail(format!("no notify message within {timeout:?}: {e}")))?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), SystemTime::now()))
    }

    /// Receives until a message holds `field` (e.g. `READY=1`); returns
    /// every message seen, and when the wanted one arrived.
    pub fn until(&self, field: &str, timeout: Duration) -> io::Result<(Vec<String>, SystemTime)> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "no {field} within {timeout:?}; got {seen:?}");
            let (m, at) = self.recv(left).map_err(|e| fail(format!("waiting for {field} (got {seen:?}): {e}")))?;
            let hit = m.lines().any(|l| l == field);
            seen.push(m);
            if hit {
                return Ok((seen, at));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The PROXY protocol and log fields.

/// The v2 signature.
pub const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header for a TCP connection from `src` to `dst` (same family).
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
}

/// A v2 header: `ver_cmd` (0x21 PROXY, 0x20 LOCAL), `fam` (0x11 TCP4,
/// 0x21 TCP6, ...) and `body` (addresses and TLVs).
pub fn proxy_v2_raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// A v2 PROXY header for TCP from `src` to `dst` (same family), followed
/// by `tlvs` (raw type-length-value bytes).
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("mixed families {src} {dst}"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    proxy_v2_raw(0x21, fam, &body)
}

/// A v2 LOCAL header (a proxy's health check).
pub fn proxy_v2_local() -> Vec<u8> {
    proxy_v2_raw(0x20, 0x00, &[])
}

/// Reads until the server closes; fails if a single byte arrives. A reset
/// (the kernel's answer to data sent after the close) counts as closed.
pub fn closed_unanswered(c: &mut Client, within: Duration) -> io::Result<()> {
    c.stream.set_read_timeout(Some(within))?;
    let mut buf = [0u8; 4096];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => return Err(fail(format!("answered {:?}", String::from_utf8_lossy(&buf[..n])))),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("not closed within {within:?}: {e}"))),
        }
    }
}

/// The time of a log line (`2026-11-28T01:22:21.192743Z ...`) as seconds
/// since the epoch (differences stay right across midnight).
pub fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + s)
}

/// The `key=value` fields of a text log line (values bare or quoted).
pub fn fields(line: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), &q[(end + 1).min(q.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next;
    }
    out
}

/// The lines of `log` holding every one of `patterns`.
pub fn lines_with(log: &str, patterns: &[&str]) -> Vec<String> {
    log.lines().filter(|l| patterns.iter().all(|p| l.contains(p))).map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// What the kernel holds.

/// `(tx_queue, rx_queue)` of the IPv4 TCP socket bound to `local` and
/// connected to `remote`, from `/proc/net/tcp`: bytes written by its
/// process and not yet acknowledged by the peer, and bytes received and
/// not yet read by its process.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port())),
        SocketAddr::V6(_) => None,
    };
    let (l, r) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?))
    })
}

/// The bytes a server holds in its own memory for one connection (read from
/// the socket and not yet written back), counted from outside: of the
/// `written` bytes a client sent and the `read` bytes it has read back,
/// what is neither in the kernel on the way in (the client's send queue,
/// the server's receive queue) nor on the way out (the server's send
/// queue, the client's receive queue). ROT13 answers byte for byte, so
/// that is the server's pending output plus its partial line. Read twice
/// until two snapshots agree (the two sockets are two lines of the table).
pub fn server_held(client: &TcpStream, written: u64, read: u64) -> io::Result<u64> {
    let (local, server) = (client.local_addr()?, client.peer_addr()?);
    let snap = || -> io::Result<(u64, u64, u64, u64)> {
        let (ctx, crx) = tcp_queues(local, server).ok_or_else(|| fail("client socket not in /proc/net/tcp"))?;
        let (stx, srx) = tcp_queues(server, local).ok_or_else(|| fail("server socket not in /proc/net/tcp"))?;
        Ok((ctx, crx, stx, srx))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = snap()?;
    loop {
        let now = snap()?;
        if now == last {
            let (ctx, crx, stx, srx) = now;
            let kernel = ctx + crx + stx + srx;
            return written.checked_sub(read + kernel).ok_or_else(|| {
                fail(format!("the kernel holds {kernel} bytes, more than the {written} written - {read} read"))
            });
        }
        ensure!(Instant::now() < deadline, "the socket queues never settled: {last:?} then {now:?}");
        last = now;
    }
}
