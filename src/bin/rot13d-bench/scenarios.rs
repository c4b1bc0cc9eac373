//! The engine-driven scenarios: tput, lat, mixed, slow, oneshot.

use crate::engine::{Engine, Spec};
use crate::pattern::Pattern;
use crate::procstat;
use crate::report::Report;
use crate::{Common, Fail};
use clap::Args;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes one `read` takes at most.
const READ_CHUNK: usize = 128 * 1024;
/// Smallest pattern period (at least a window and a read): the send and
/// expect buffers, twice that each, stay in L2 (measured: 128 KiB costs the
/// generator ~15% less CPU per line than 512 KiB).
const PATTERN_MIN: usize = 128 * 1024;
/// How long to wait for the last answers once sending stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `addr`, from `src` (port chosen at connect time, so that one
/// source address serves many destinations) if given.
pub fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = src {
        use std::os::fd::AsRawFd;
        // IP_BIND_ADDRESS_NO_PORT: leave the port to connect(), which only
        // needs the 4-tuple to be unique (best effort: old kernels lack it).
        let _ = rot13d::sys::setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        s.bind(&SockAddr::from(SocketAddrV4::new(ip, 0)))?;
    }
    s.connect(&SockAddr::from(addr))?;
    Ok(s.into())
}

/// Connects `n` streams to the scenario's address, each begun with the
/// PROXY header `--proxy` asks for, with a useful error.
fn connect_n(c: &Common, n: usize) -> Result<Vec<TcpStream>, Fail> {
    let addr = c.addr;
    let one = |i: usize| -> Result<TcpStream, Fail> {
        let mut s = connect(addr, None).map_err(|e| Fail::io(format!("connect #{i} to {addr}: {e}")))?;
        c.proxy.send(&mut s).map_err(|e| Fail::io(format!("PROXY header on #{i} to {addr}: {e}")))?;
        Ok(s)
    };
    (0..n).map(one).collect()
}

/// Refuses lines the server would cut into max_line pieces (the expected
/// image is rot13 of the input byte for byte only without cuts).
pub fn check_line_len(line_len: usize, c: &Common) -> Result<(), Fail> {
    if line_len == 0 || line_len > c.max_line + 1 {
        return Err(Fail::io(format!(
            "--line-len {line_len}: must be 1..={} (LF included; longer lines are cut by the server)",
            c.max_line + 1
        )));
    }
    Ok(())
}

/// Checks the line length and builds its pattern.
pub fn pattern(line_len: usize, c: &Common, min: usize) -> Result<Rc<Pattern>, Fail> {
    check_line_len(line_len, c)?;
    Ok(Rc::new(Pattern::new(line_len, min.max(PATTERN_MIN), c.seed)))
}

fn pin(c: &Common) -> Result<(), Fail> {
    if let Some(cpu) = c.cpu {
        rot13d::sys::pin_to_cpu(cpu).map_err(|e| Fail::io(format!("pin to CPU {cpu}: {e}")))?;
    }
    Ok(())
}

/// What was measured over one window of a run.
pub struct Measured {
    /// Length of the window.
    pub secs: f64,
    /// Bulk bytes answered inside it.
    pub bulk: u64,
    /// Interactive round trips completed inside it.
    pub reqs: u64,
    /// Round-trip times inside it, sorted.
    pub lat: Vec<u32>,
    /// Server CPU ticks inside it (with `--server-pid`).
    pub server_ticks: Option<u64>,
    /// Our own CPU ticks inside it.
    pub self_ticks: u64,
    /// Server RSS at the end (with `--server-pid`).
    pub server_rss: Option<u64>,
}

/// Per-connection byte limit for `--lines`: N lines spread over the
/// connections.
fn limit_for(c: &Common, i: usize, n: usize, line_len: usize) -> u64 {
    match c.lines {
        Some(total) => {
            let per = total / n as u64 + u64::from((i as u64) < total % n as u64);
            per * line_len as u64
        }
        None => u64::MAX,
    }
}

/// Runs the engine: with `--lines`, until every line is answered; else a
/// warm-up, then `--duration` measured, then a drain in which every byte
/// still in flight is read and checked.
pub fn drive(eng: &mut Engine, c: &Common) -> Result<Measured, Fail> {
    let pid = c.server_pid;
    eng.kick()?;
    if c.lines.is_none() {
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < c.warmup {
            eng.step(10)?;
        }
    }
    let (b0, r0) = (eng.bulk_bytes, eng.inter_reqs);
    eng.lat_ns.clear();
    eng.record = true;
    let cpu0 = pid.map(procstat::tree_cpu_ticks);
    let self0 = procstat::self_cpu_ticks();
    let t0 = Instant::now();
    let mut last_progress = (Instant::now(), eng.totals().1);
    loop {
        if c.lines.is_some() {
            if eng.all_answered() {
                break;
            }
            let recv = eng.totals().1;
            if recv != last_progress.1 {
                last_progress = (Instant::now(), recv);
            } else if last_progress.0.elapsed() > DRAIN_TIMEOUT {
                return Err(Fail::io(format!("no answer for {DRAIN_TIMEOUT:?}")));
            }
        } else if t0.elapsed().as_secs_f64() >= c.duration {
            break;
        }
        eng.step(10)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    eng.record = false;
    let m = Measured {
        secs,
        bulk: eng.bulk_bytes - b0,
        reqs: eng.inter_reqs - r0,
        lat: {
            let mut l = std::mem::take(&mut eng.lat_ns);
            l.sort_unstable();
            l
        },
        server_ticks: pid.map(|p| procstat::tree_cpu_ticks(p).saturating_sub(cpu0.unwrap_or(0))),
        self_ticks: procstat::self_cpu_ticks() - self0,
        server_rss: pid.map(procstat::tree_rss),
    };
    eng.stop_sending();
    let t = Instant::now();
    while !eng.all_answered() {
        if t.elapsed() > DRAIN_TIMEOUT {
            let (s, r) = eng.totals();
            return Err(Fail::io(format!("drain: {r} of {s} bytes answered after {DRAIN_TIMEOUT:?}")));
        }
        eng.step(10)?;
    }
    Ok(m)
}

fn add_cpu(r: &mut Report, m: &Measured, units: f64) {
    if let Some(t) = m.server_ticks {
        r.num("server_cpu_s", procstat::ticks_to_us(t) / 1e6, 2);
        r.num("server_cpu_pct", procstat::ticks_to_us(t) / m.secs / 1e4, 1);
        if units > 0.0 {
            r.num("server_cpu_us_per_kline", procstat::ticks_to_us(t) / (units / 1000.0), 2);
        }
    }
    if let Some(rss) = m.server_rss {
        r.int("server_rss_kib", rss / 1024);
    }
    r.num("gen_cpu_pct", procstat::ticks_to_us(m.self_ticks) / m.secs / 1e4, 1);
    if units > 0.0 {
        r.num("gen_cpu_us_per_kline", procstat::ticks_to_us(m.self_ticks) / (units / 1000.0), 2);
    }
}

fn add_lat(r: &mut Report, lat: &[u32]) {
    if lat.is_empty() {
        return;
    }
    let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1e3;
    let mean = lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1e3;
    r.num("p50_us", q(0.50), 1)
        .num("p90_us", q(0.90), 1)
        .num("p99_us", q(0.99), 1)
        .num("p999_us", q(0.999), 1)
        .num("max_us", q(1.0), 1)
        .num("mean_us", mean, 1);
}

/// `tput`: C connections stream pipelined lines within a window each.
pub fn tput(c: &Common) -> Result<(), Fail> {
    pin(c)?;
    let n = c.conns.unwrap_or(64).max(1);
    let l = c.line_len.unwrap_or(64);
    let window = c.window.unwrap_or(128 * 1024).max(l as u64);
    let pat = pattern(l, c, window as usize)?;
    let mut eng = Engine::new(READ_CHUNK)?;
    for (i, s) in connect_n(c, n)?.into_iter().enumerate() {
        let limit = limit_for(c, i, n, l);
        eng.add(s, Spec::bulk(&pat, window, limit, c.discard))?;
    }
    let m = drive(&mut eng, c)?;
    let lines = m.bulk / l as u64;
    let mut r = Report::new("tput", &c.label, &c.case);
    r.int("conns", n as u64)
        .int("line_len", l as u64)
        .int("window", window)
        .num("secs", m.secs, 3)
        .int("lines", lines)
        .num("lines_per_s", lines as f64 / m.secs, 0)
        .num("mb_per_s", m.bulk as f64 / m.secs / 1e6, 1);
    add_cpu(&mut r, &m, lines as f64);
    r.print(c.json);
    Ok(())
}

/// `lat`: C connections each do closed-loop round trips of one line.
pub fn lat(c: &Common) -> Result<(), Fail> {
    pin(c)?;
    let n = c.conns.unwrap_or(1).max(1);
    let l = c.line_len.unwrap_or(64);
    let pat = pattern(l, c, 0)?;
    let mut eng = Engine::new(READ_CHUNK)?;
    for (i, s) in connect_n(c, n)?.into_iter().enumerate() {
        let limit = limit_for(c, i, n, l);
        eng.add(s, Spec::interactive(&pat, l, limit))?;
    }
    let m = drive(&mut eng, c)?;
    let mut r = Report::new("lat", &c.label, &c.case);
    r.int("conns", n as u64).int("line_len", l as u64).num("secs", m.secs, 3).int("reqs", m.reqs).num(
        "req_per_s",
        m.reqs as f64 / m.secs,
        0,
    );
    add_lat(&mut r, &m.lat);
    add_cpu(&mut r, &m, m.reqs as f64);
    r.print(c.json);
    Ok(())
}

/// Options of `mixed`.
#[derive(Args, Clone, Debug)]
pub struct MixedArgs {
    #[command(flatten)]
    c: Common,
    /// Bulk connections.
    #[arg(long, default_value_t = 4)]
    bulk: usize,
    /// Interactive (closed-loop) connections; their lines are --line-len.
    #[arg(long, default_value_t = 16)]
    interactive: usize,
    /// Line length of the bulk connections.
    #[arg(long, default_value_t = 4096)]
    bulk_line_len: usize,
}

/// `mixed`: bulk streams and interactive round trips at the same time.
pub fn mixed(a: &MixedArgs) -> Result<(), Fail> {
    let c = &a.c;
    pin(c)?;
    let l = c.line_len.unwrap_or(64);
    let window = c.window.unwrap_or(256 * 1024).max(a.bulk_line_len as u64);
    let bulk_pat = pattern(a.bulk_line_len, c, window as usize)?;
    let pat = pattern(l, c, 0)?;
    let mut eng = Engine::new(READ_CHUNK)?;
    // Interleave so that neither kind always comes first in a wait batch.
    let total = a.bulk + a.interactive;
    let mut streams = connect_n(c, total)?.into_iter();
    let (mut nb, mut ni) = (0, 0);
    while nb + ni < total {
        let bulk = nb < a.bulk && (ni >= a.interactive || nb * a.interactive <= ni * a.bulk);
        let s = streams.next().expect("connected all");
        let spec = if bulk {
            nb += 1;
            Spec::bulk(&bulk_pat, window, u64::MAX, c.discard)
        } else {
            ni += 1;
            Spec::interactive(&pat, l, u64::MAX)
        };
        eng.add(s, spec)?;
    }
    let c2 = Common { lines: None, ..c.clone() };
    let m = drive(&mut eng, &c2)?;
    let lines = m.bulk / a.bulk_line_len as u64;
    let mut r = Report::new("mixed", &c.label, &c.case);
    r.int("bulk", a.bulk as u64)
        .int("interactive", a.interactive as u64)
        .int("bulk_line_len", a.bulk_line_len as u64)
        .int("line_len", l as u64)
        .num("secs", m.secs, 3)
        .num("bulk_lines_per_s", lines as f64 / m.secs, 0)
        .num("bulk_mb_per_s", m.bulk as f64 / m.secs / 1e6, 1)
        .num("req_per_s", m.reqs as f64 / m.secs, 0);
    add_lat(&mut r, &m.lat);
    add_cpu(&mut r, &m, 0.0);
    r.print(c.json);
    Ok(())
}

/// Options of `slow`.
#[derive(Args, Clone, Debug)]
pub struct SlowArgs {
    #[command(flatten)]
    c: Common,
    /// MiB each client sends.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Most seconds during which the clients send but do not read.
    #[arg(long, default_value_t = 20.0)]
    hold: f64,
    /// Reading starts earlier once the server has taken nothing more for
    /// this many seconds (it applies backpressure) or everything was sent.
    #[arg(long, default_value_t = 0.5)]
    stall: f64,
}

/// `slow`: clients that send a lot and do not read; the server's RSS peak
/// shows whether it applies backpressure.
pub fn slow(a: &SlowArgs) -> Result<(), Fail> {
    let c = &a.c;
    pin(c)?;
    let pid = c.server_pid;
    let n = c.conns.unwrap_or(10).max(1);
    let l = c.line_len.unwrap_or(64);
    let pat = pattern(l, c, 0)?;
    let limit = a.mib * 1024 * 1024 / l as u64 * l as u64;
    let rss0 = pid.map(procstat::tree_rss);
    let mut peak = rss0.unwrap_or(0);
    let mut eng = Engine::new(READ_CHUNK)?;
    eng.set_reading(false)?;
    for s in connect_n(c, n)? {
        eng.add(
            s,
            Spec { pattern: pat.clone(), window: u64::MAX, min_write: 0, limit, interactive: false, discard: false },
        )?;
    }
    let sample = |peak: &mut u64| {
        if let Some(p) = pid {
            *peak = (*peak).max(procstat::tree_rss(p));
        }
    };
    eng.kick()?;
    let t = Instant::now();
    let mut last = Instant::now();
    let mut sent = (Instant::now(), 0);
    while t.elapsed().as_secs_f64() < a.hold && sent.1 < limit * n as u64 {
        eng.step(20)?;
        if last.elapsed() >= Duration::from_millis(20) {
            sample(&mut peak);
            last = Instant::now();
        }
        let s = eng.totals().0;
        if s != sent.1 {
            sent = (Instant::now(), s);
        } else if sent.0.elapsed().as_secs_f64() >= a.stall {
            break;
        }
    }
    let hold_secs = t.elapsed().as_secs_f64();
    let sent_on_hold = eng.totals().0;
    let rss_hold = pid.map(procstat::tree_rss);
    let t1 = Instant::now();
    eng.set_reading(true)?;
    let mut progress = (Instant::now(), 0);
    while !eng.all_answered() {
        eng.step(20)?;
        if last.elapsed() >= Duration::from_millis(20) {
            sample(&mut peak);
            last = Instant::now();
        }
        let r = eng.totals().1;
        if r != progress.1 {
            progress = (Instant::now(), r);
        } else if progress.0.elapsed() > DRAIN_TIMEOUT {
            return Err(Fail::io(format!("slow: no answer for {DRAIN_TIMEOUT:?}")));
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    let mut r = Report::new("slow", &c.label, &c.case);
    r.int("conns", n as u64)
        .int("line_len", l as u64)
        .num("mib_each", limit as f64 / 1048576.0, 1)
        .num("hold_secs", hold_secs, 2)
        .num("sent_during_hold_mib", sent_on_hold as f64 / 1048576.0, 1)
        .num("read_back_secs", secs, 3);
    if let (Some(r0), Some(rh)) = (rss0, rss_hold) {
        r.num("rss_before_mib", r0 as f64 / 1048576.0, 1)
            .num("rss_growth_at_hold_end_mib", (rh as f64 - r0 as f64) / 1048576.0, 1)
            .num("rss_peak_growth_mib", (peak - r0) as f64 / 1048576.0, 1);
    }
    r.print(c.json);
    Ok(())
}

/// Options of `oneshot`.
#[derive(Args, Clone, Debug)]
pub struct OneshotArgs {
    #[command(flatten)]
    c: Common,
    /// Bytes of an unterminated last line sent before the half-close (its
    /// answer, without LF, must come before EOF).
    #[arg(long, default_value_t = 0)]
    tail: usize,
}

/// `oneshot`: N lines on one connection, every answer read, half-close, EOF.
pub fn oneshot(a: &OneshotArgs) -> Result<(), Fail> {
    let c = &a.c;
    pin(c)?;
    let n = c.conns.unwrap_or(1).max(1);
    let l = c.line_len.unwrap_or(64);
    if a.tail >= l {
        return Err(Fail::io(format!("--tail {} must be shorter than a line ({l})", a.tail)));
    }
    let pat = pattern(l, c, 0)?;
    let total = c.lines.unwrap_or(200_000);
    let c2 = Common { lines: Some(total), ..c.clone() };
    let t = Instant::now();
    let cpu0 = c.server_pid.map(procstat::tree_cpu_ticks);
    let mut eng = Engine::new(READ_CHUNK)?;
    let mut full = Vec::new();
    for (i, s) in connect_n(c, n)?.into_iter().enumerate() {
        let lines = limit_for(&c2, i, n, l);
        full.push(lines);
        let limit = lines + a.tail as u64;
        let spec = Spec {
            pattern: pat.clone(),
            window: 256 * 1024,
            min_write: 16 * 1024,
            limit,
            interactive: false,
            discard: false,
        };
        eng.add(s, spec)?;
    }
    // Every complete line answered first (the libevent peer drops pending
    // output at EOF), then the tail, the half-close, its answer and EOF.
    let want_sent = full.iter().sum::<u64>() + (a.tail * n) as u64;
    eng.kick()?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !(0..n).all(|i| eng.recv_of(i) >= full[i]) || eng.totals().0 < want_sent {
        if Instant::now() > deadline {
            return Err(Fail::io("oneshot: answers did not arrive in time".into()));
        }
        eng.step(20)?;
    }
    eng.shutdown_all()?;
    while !eng.all_eof() {
        if Instant::now() > deadline {
            let (s, r) = eng.totals();
            return Err(Fail::io(format!("oneshot: no EOF ({r} of {s} bytes answered)")));
        }
        eng.step(20)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let mut r = Report::new("oneshot", &c.label, &c.case);
    r.int("conns", n as u64)
        .int("line_len", l as u64)
        .int("lines", total)
        .int("tail", a.tail as u64)
        .num("secs", secs, 3)
        .num("lines_per_s", total as f64 / secs, 0);
    if let (Some(p), Some(c0)) = (c.server_pid, cpu0) {
        let t = procstat::tree_cpu_ticks(p).saturating_sub(c0);
        r.num("server_cpu_us_per_kline", procstat::ticks_to_us(t) / (total as f64 / 1000.0), 2);
    }
    r.print(c.json);
    Ok(())
}
