//! `conns`: K connections held open at once.
//!
//! One process may hold 20,000 fds at most here (hard RLIMIT_NOFILE) and one
//! source address has ~28,000 ephemeral ports, so the connections are spread
//! over several forked client processes and over 127.0.0.1..127.0.0.N. The
//! parent only coordinates (over a pipe pair per child, one text line per
//! step) and samples the server's RSS: before, with every connection open
//! and idle, after one verified line on each, and after all closed.

use crate::pattern::Pattern;
use crate::report::Report;
use crate::scenarios::{self, connect};
use crate::{Common, Fail, procstat};
use clap::Args;
use rot13d::sys::{self, process};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

/// Options of `conns`.
#[derive(Args, Clone, Debug)]
pub struct ConnsArgs {
    #[command(flatten)]
    c: Common,
    /// Client processes (default: one per 15,000 connections).
    #[arg(long)]
    procs: Option<usize>,
    /// Source addresses 127.0.0.1..127.0.0.N to spread connections over.
    #[arg(long, default_value_t = 4)]
    src_addrs: u8,
    /// Seconds to let the server settle before each RSS sample.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

/// Most connections one client process opens (fd hard limit minus slack).
const PER_PROC_MAX: usize = 19_500;

struct Kid {
    pid: i32,
    tx: File,
    rx: BufReader<File>,
}

fn pipe_files() -> Result<(File, File), Fail> {
    let (r, w) = sys::pipe().map_err(|e| Fail::io(format!("pipe: {e}")))?;
    for fd in [&r, &w] {
        use std::os::fd::AsRawFd;
        sys::set_nonblocking(fd.as_raw_fd(), false).map_err(|e| Fail::io(format!("pipe: {e}")))?;
    }
    Ok((File::from(r), File::from(w)))
}

impl Kid {
    fn say(&mut self, what: &str) -> Result<(), Fail> {
        writeln!(self.tx, "{what}").map_err(|e| Fail::io(format!("client {}: {e}", self.pid)))
    }

    /// Reads the child's next report: `Ok(words)`, or its error.
    fn hear(&mut self, want: &str) -> Result<Vec<String>, Fail> {
        let mut line = String::new();
        self.rx.read_line(&mut line).map_err(|e| Fail::io(format!("client {}: {e}", self.pid)))?;
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match words.first().map(String::as_str) {
            Some(w) if w == want => Ok(words),
            Some("mismatch") => Err(Fail::mismatch(line.trim_end()["mismatch ".len()..].to_string())),
            Some("err") => Err(Fail::io(line.trim_end()["err ".len()..].to_string())),
            _ => Err(Fail::io(format!("client {} exited or said {:?}", self.pid, line.trim_end()))),
        }
    }
}

/// `conns`: open K connections, sample, verify one line each, sample, close.
pub fn run(a: &ConnsArgs) -> Result<(), Fail> {
    let c = &a.c;
    if let Some(cpu) = c.cpu {
        sys::pin_to_cpu(cpu).map_err(|e| Fail::io(format!("pin: {e}")))?;
    }
    let k = c.conns.unwrap_or(10_000).max(1);
    let procs = a.procs.unwrap_or(k.div_ceil(15_000)).clamp(1, k);
    let per = k.div_ceil(procs);
    if per > PER_PROC_MAX {
        return Err(Fail::io(format!("{per} connections per process: use --procs {}", k.div_ceil(PER_PROC_MAX))));
    }
    let l = c.line_len.unwrap_or(64);
    scenarios::check_line_len(l, c)?;
    let pid = c.server_pid;
    let settle = Duration::from_secs_f64(a.settle);
    let rss = || pid.map(procstat::tree_rss);
    let rss_before = rss();
    std::io::stdout().flush().ok();

    let mut kids: Vec<Kid> = Vec::new();
    for p in 0..procs {
        let first = p * per;
        let count = per.min(k - first.min(k));
        let (down_r, down_w) = pipe_files()?;
        let (up_r, up_w) = pipe_files()?;
        match process::fork().map_err(|e| Fail::io(format!("fork: {e}")))? {
            process::Fork::Child => {
                // Close the siblings' pipe ends so that each child sees EOF
                // when the parent goes away.
                drop(std::mem::take(&mut kids));
                drop((down_w, up_r));
                let code = child(c, a.src_addrs.max(1), first, count, BufReader::new(down_r), up_w);
                process::exit_now(code);
            }
            process::Fork::Parent(pid) => kids.push(Kid { pid, tx: down_w, rx: BufReader::new(up_r) }),
        }
    }
    let result = parent(&mut kids, k, settle, rss);
    for kid in &mut kids {
        drop(kid.say("close"));
    }
    let mut codes = Vec::new();
    for kid in kids {
        let Kid { pid, tx, rx } = kid;
        drop((tx, rx));
        codes.push(process::wait_pid(pid));
    }
    let (open_secs, verify_secs, rss_idle, rss_active) = result?;
    if let Some(bad) = codes.iter().find(|s| !matches!(s, Ok(process::ExitStatus::Code(0)))) {
        return Err(Fail::io(format!("a client process ended with {bad:?}")));
    }
    std::thread::sleep(settle);
    let rss_closed = rss();
    let mut r = Report::new("conns", &c.label, &c.case);
    r.int("conns", k as u64)
        .int("procs", procs as u64)
        .int("src_addrs", a.src_addrs as u64)
        .num("open_secs", open_secs, 3)
        .num("verify_secs", verify_secs, 3);
    if let (Some(b), Some(i), Some(x), Some(z)) = (rss_before, rss_idle, rss_active, rss_closed) {
        r.num("rss_before_mib", b as f64 / 1048576.0, 2)
            .num("rss_idle_mib", i as f64 / 1048576.0, 2)
            .num("rss_after_line_mib", x as f64 / 1048576.0, 2)
            .num("rss_closed_mib", z as f64 / 1048576.0, 2)
            .num("bytes_per_idle_conn", (i as f64 - b as f64) / k as f64, 0)
            .num("bytes_per_conn_after_line", (x as f64 - b as f64) / k as f64, 0);
    }
    r.print(c.json);
    Ok(())
}

type Phases = (f64, f64, Option<u64>, Option<u64>);

fn parent(kids: &mut [Kid], k: usize, settle: Duration, rss: impl Fn() -> Option<u64>) -> Result<Phases, Fail> {
    let t = Instant::now();
    let mut opened = 0;
    for kid in kids.iter_mut() {
        opened += kid.hear("open")?.get(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    }
    let open_secs = t.elapsed().as_secs_f64();
    if opened != k {
        return Err(Fail::io(format!("only {opened} of {k} connections opened")));
    }
    std::thread::sleep(settle);
    let rss_idle = rss();
    let t = Instant::now();
    for kid in kids.iter_mut() {
        kid.say("go")?;
    }
    for kid in kids.iter_mut() {
        kid.hear("ok")?;
    }
    let verify_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(settle);
    Ok((open_secs, verify_secs, rss_idle, rss()))
}

/// A client process: open `count` connections, report, wait for `go`, send
/// one line on each and check every answer, report, wait for `close`.
fn child(c: &Common, src_addrs: u8, first: usize, count: usize, mut down: BufReader<File>, mut up: File) -> i32 {
    let mut tell = |s: String| {
        let _ = writeln!(up, "{s}");
    };
    if let Err(e) = sys::raise_nofile_limit() {
        tell(format!("err raise fd limit: {e}"));
        return 2;
    }
    let l = c.line_len.unwrap_or(64);
    let pat = Pattern::new(l, 64 * 1024, c.seed);
    let t = Instant::now();
    let mut socks: Vec<TcpStream> = Vec::with_capacity(count);
    for j in 0..count {
        let g = first + j;
        let src = Ipv4Addr::new(127, 0, 0, 1 + (g % src_addrs as usize) as u8);
        match connect(c.addr, Some(src)).and_then(|mut s| c.proxy.send(&mut s).map(|()| s)) {
            Ok(s) => socks.push(s),
            Err(e) => {
                tell(format!("err connect #{g} from {src}: {e} (after {:?})", t.elapsed()));
                return 2;
            }
        }
    }
    tell(format!("open {count}"));
    let mut cmd = String::new();
    if down.read_line(&mut cmd).is_err() || cmd.trim() != "go" {
        return 0;
    }
    let off = |g: usize| (g % pat.lines() * l) as u64;
    for (j, s) in socks.iter_mut().enumerate() {
        if let Err(e) = s.write_all(pat.send_at(off(first + j), l)) {
            tell(format!("err write on #{}: {e}", first + j));
            return 2;
        }
    }
    let mut buf = vec![0u8; l];
    for (j, s) in socks.iter_mut().enumerate() {
        let g = first + j;
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        if let Err(e) = s.read_exact(&mut buf) {
            tell(format!("err read on #{g}: {e}"));
            return 2;
        }
        if let Err(m) = pat.check(off(g), &buf) {
            tell(format!(
                "mismatch conn #{g}: byte {}: expected {:?} got {:?}",
                m.index, m.expected as char, m.got as char
            ));
            return 1;
        }
    }
    tell("ok".to_string());
    cmd.clear();
    let _ = down.read_line(&mut cmd);
    drop(socks);
    0
}
