//! The metrics families of issue 12 at daemon level: each moves when it
//! should (restarts and the serving dip, reloads and their timestamp, lines
//! cut, connections waiting at `max_connections`, one `process_*` series
//! per live process), a real scrape passes `promtool check metrics`, and a
//! real Prometheus scrapes the admin endpoint every second and reads back
//! exactly the lines sent.
//!
//! promtool and prometheus come from the Debian package `prometheus`
//! (scripts/test.sh installs it).

use crate::ensure;
use crate::util::{Client, Log, TempDir, admin_daemon, fail, get, poll_until, rot13_model};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(10);

/// The value of the sample `series` (name and labels exactly as rendered).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The samples of family `name`: (labels, value).
fn samples<'a>(body: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, v) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{')).then_some((labels, v.parse().ok()?))
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn scrape(admin: SocketAddr) -> io::Result<String> {
    let (code, body) = get(admin, "/metrics")?;
    ensure!(code == 200, "/metrics: {code}\n{body}");
    Ok(body)
}

/// Scrapes until `cond` holds (bounded); the last body.
fn scrape_until(admin: SocketAddr, what: &str, mut cond: impl FnMut(&str) -> bool) -> io::Result<String> {
    let mut body = String::new();
    let ok = poll_until(T, || {
        body = scrape(admin).unwrap_or_default();
        cond(&body)
    });
    ensure!(ok, "{what}: never seen in\n{body}");
    Ok(body)
}

/// A scrape of a daemon that has served, cut a line, reloaded and lost a
/// worker passes `promtool check metrics` without a word; every family has
/// HELP and TYPE; `process_*` has one series per live process (the master
/// and each worker, by pid).
#[test]
fn promtool_checks_a_real_scrape() -> io::Result<()> {
    let (d, admin) = admin_daemon(2, "[server]\nmax_line = 8\n")?;
    let got = Client::connect(d.addr())?.roundtrip(b"short\na line longer than eight\n")?;
    ensure!(got == rot13_model(b"short\na line longer than eight\n", 8), "answer {got:?}");
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    d.log().wait_count(&["reactor", "generation=2"], 2, T)?;
    let body = scrape_until(admin, "two workers of generation 2 only", |b| {
        samples(b, "process_cpu_seconds_total").len() == 3 && value(b, "rot13d_workers_serving") == Some(2.0)
    })?;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("promtool (apt-get install prometheus): {e}")))?;
    child.stdin.take().ok_or_else(|| fail("no stdin"))?.write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {:?} {said}\n{body}", out.status);
    // HELP and TYPE for each family, once.
    let families: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    for f in &families {
        ensure!(body.matches(&format!("# HELP {f} ")).count() == 1, "{f}: HELP not once\n{body}");
    }
    for f in [
        "rot13d_build_info",
        "rot13d_workers_wanted",
        "rot13d_workers_serving",
        "rot13d_worker_restarts_total",
        "rot13d_reloads_total",
        "rot13d_config_last_reload_success_timestamp_seconds",
        "rot13d_config_last_reload_successful",
        "rot13d_connections_waiting",
        "rot13d_lines_cut_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        ensure!(families.contains(&f), "no family {f}:\n{body}");
    }
    // One series per live process: the master and the two current workers.
    let mut workers = d.worker_pids();
    workers.sort_unstable();
    for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"]
    {
        let s = samples(&body, family);
        let master = format!("{{role=\"master\",pid=\"{}\"}}", d.pid());
        ensure!(s.iter().any(|(l, v)| *l == master && *v >= 0.0), "{family}: no master series {master}\n{body}");
        let mut seen: Vec<i32> = s
            .iter()
            .filter_map(|(l, _)| l.strip_prefix("{role=\"worker\",pid=\"")?.strip_suffix("\"}")?.parse().ok())
            .collect();
        seen.sort_unstable();
        ensure!(seen == workers, "{family}: worker series {seen:?}, live workers {workers:?}\n{body}");
    }
    let (soft, _) = rot13d::sys::nofile_limit()?;
    ensure!(samples(&body, "process_max_fds").iter().all(|(_, v)| *v == soft as f64), "max fds, want {soft}:\n{body}");
    let start = samples(&body, "process_start_time_seconds");
    ensure!(start.iter().all(|(_, t)| *t <= now() + 1.0 && *t > now() - 120.0), "start times {start:?}");
    let text = d.log().text();
    let backend = text
        .lines()
        .filter(|l| l.contains("reactor") && l.contains("generation=2"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("backend=")))
        .unwrap_or("?");
    let build = format!("rot13d_build_info{{version=\"{}\",backend=\"{backend}\"}}", env!("CARGO_PKG_VERSION"));
    ensure!(value(&body, &build) == Some(1.0), "no {build} 1:\n{body}");
    ensure!(value(&body, "rot13d_lines_cut_total") == Some(1.0), "lines cut:\n{body}");
    Ok(())
}

/// A worker killed: `rot13d_worker_restarts_total{reason="signal"}` counts
/// it. Replacements are immediate until more than 5 deaths in 10 s; the
/// sixth waits 1 s, and meanwhile `rot13d_workers_serving` is 0 of 1 (and
/// the killed worker's `process_*` series are gone).
#[test]
fn a_killed_worker_counts_as_a_restart_and_serving_dips() -> io::Result<()> {
    let (d, admin) = admin_daemon(1, "")?;
    let body = scrape(admin)?;
    ensure!(value(&body, "rot13d_workers_wanted") == Some(1.0), "wanted:\n{body}");
    ensure!(value(&body, "rot13d_workers_serving") == Some(1.0), "serving:\n{body}");
    let signal = "rot13d_worker_restarts_total{reason=\"signal\"}";
    ensure!(value(&body, signal) == Some(0.0), "restarts before:\n{body}");
    for n in 1..=6usize {
        let w = d.worker_pids();
        ensure!(w.len() == 1, "workers before kill {n}: {w:?}");
        crate::util::kill(w[0], libc::SIGKILL)?;
        d.log().wait_count(&["worker died"], n, T)?;
        if n < 6 {
            d.log().wait_count(&["reactor", "backend="], n + 1, T)?;
            continue;
        }
        // The sixth death within 10 s: the replacement waits 1 s.
        d.log().wait_count(&["workers keep dying"], 1, T)?;
        let body = scrape(admin)?;
        ensure!(value(&body, signal) == Some(6.0), "{signal} after 6 kills:\n{body}");
        ensure!(value(&body, "rot13d_workers_serving") == Some(0.0), "serving during the backoff:\n{body}");
        ensure!(value(&body, "rot13d_workers_wanted") == Some(1.0), "wanted during the backoff:\n{body}");
        let dead = format!("pid=\"{}\"", w[0]);
        ensure!(!body.contains(&dead), "the killed worker's series are still there:\n{body}");
        ensure!(samples(&body, "process_cpu_seconds_total").len() == 1, "only the master lives:\n{body}");
    }
    let body = scrape_until(admin, "serving again", |b| value(b, "rot13d_workers_serving") == Some(1.0))?;
    for reason in ["error", "exit"] {
        let series = format!("rot13d_worker_restarts_total{{reason=\"{reason}\"}}");
        ensure!(value(&body, &series) == Some(0.0), "{series}:\n{body}");
    }
    Ok(())
}

/// A reload: `rot13d_reloads_total{result="ok"}` +1, the success timestamp
/// moves to the reload's time; an invalid file: `result="invalid"` +1,
/// `rot13d_config_last_reload_successful` 0, the timestamp stays.
fn reloads_are_counted_by_result(workers: usize) -> io::Result<()> {
    let (d, admin) = admin_daemon(workers, "")?;
    let stamp = "rot13d_config_last_reload_success_timestamp_seconds";
    let (ok, invalid) = ("rot13d_reloads_total{result=\"ok\"}", "rot13d_reloads_total{result=\"invalid\"}");
    let successful = "rot13d_config_last_reload_successful";
    let body = scrape(admin)?;
    let started = value(&body, stamp).ok_or_else(|| fail(format!("no {stamp}:\n{body}")))?;
    ensure!(started <= now() && started > now() - 60.0, "{stamp} at start {started}, now {}", now());
    ensure!((value(&body, ok), value(&body, successful)) == (Some(0.0), Some(1.0)), "before:\n{body}");

    let t0 = now();
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    let body = scrape_until(admin, "reloads ok 1", |b| value(b, ok) == Some(1.0))?;
    let t1 = now();
    let at = value(&body, stamp).unwrap_or(0.0);
    ensure!(at >= t0 && at <= t1, "{stamp} = {at}, the reload was between {t0} and {t1}\n{body}");
    ensure!(value(&body, successful) == Some(1.0), "{successful}:\n{body}");

    std::fs::write(d.config_path(), "[admin]\nlisten = \"127.0.0.1:0\"\nno_such_key = 1\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["configuration invalid"], 1, T)?;
    let body = scrape_until(admin, "reloads invalid 1", |b| value(b, invalid) == Some(1.0))?;
    ensure!(value(&body, successful) == Some(0.0), "{successful} after an invalid reload:\n{body}");
    ensure!(value(&body, stamp) == Some(at), "{stamp} moved on an invalid reload:\n{body}");
    ensure!(value(&body, ok) == Some(1.0), "{ok}:\n{body}");
    for r in ["failed", "timeout", "superseded"] {
        let series = format!("rot13d_reloads_total{{result=\"{r}\"}}");
        ensure!(value(&body, &series) == Some(0.0), "{series}:\n{body}");
    }
    Ok(())
}

#[test]
fn reloads_are_counted_by_result_w0() -> io::Result<()> {
    reloads_are_counted_by_result(0)
}

#[test]
fn reloads_are_counted_by_result_w2() -> io::Result<()> {
    reloads_are_counted_by_result(2)
}

/// Lines longer than max_line: each counted once in
/// `rot13d_lines_cut_total`, its pieces in `rot13d_lines_total`; a line of
/// exactly max_line is not cut.
#[test]
fn long_lines_are_counted_as_cut() -> io::Result<()> {
    let (d, admin) = admin_daemon(1, "[server]\nmax_line = 10\n")?;
    let mut input = b"exactly 10\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 35));
    input.extend(b"\nshort\n");
    input.extend(std::iter::repeat_n(b'y', 11));
    let got = Client::connect(d.addr())?.roundtrip_chunked(&input, 3)?;
    ensure!(got == rot13_model(&input, 10), "answer {:?}", String::from_utf8_lossy(&got));
    // 35 bytes: 4 pieces; 11 bytes at EOF: a piece and the tail.
    let body = scrape_until(admin, "the connection closed", |b| value(b, "rot13d_connections_open") == Some(0.0))?;
    ensure!(value(&body, "rot13d_lines_cut_total") == Some(2.0), "lines cut:\n{body}");
    ensure!(value(&body, "rot13d_lines_total") == Some(1.0 + 4.0 + 1.0 + 1.0), "lines:\n{body}");
    Ok(())
}

/// At `max_connections` further clients wait in the accept queue:
/// `rot13d_connections_waiting` says how many, and goes back to 0 once
/// they are served.
#[test]
fn clients_beyond_max_connections_are_counted_as_waiting() -> io::Result<()> {
    let (d, admin) = admin_daemon(1, "[server]\nmax_connections = 2\n")?;
    let mut open = Vec::new();
    for i in 0..2 {
        let mut c = d.connect()?;
        c.send(b"in\n")?;
        ensure!(c.read_exact(3)? == b"va\n", "client {i} not served");
        open.push(c);
    }
    let waiting: Vec<Client> = (0..3).map(|_| d.connect()).collect::<io::Result<_>>()?;
    let body = scrape_until(admin, "3 waiting", |b| value(b, "rot13d_connections_waiting") == Some(3.0))?;
    ensure!(value(&body, "rot13d_connections_open") == Some(2.0), "open:\n{body}");
    drop(open);
    for (i, c) in waiting.into_iter().enumerate() {
        let got = c.roundtrip(b"late\n")?;
        ensure!(got == b"yngr\n", "waiting client {i}: {got:?}");
    }
    scrape_until(admin, "none waiting", |b| value(b, "rot13d_connections_waiting") == Some(0.0))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// A real Prometheus.

/// A Prometheus server on 127.0.0.1 (port 0: it logs the one it got),
/// with its storage in a temp dir; killed by pid on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: Log,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`/metrics`) every second.
    fn start(target: SocketAddr) -> io::Result<Prometheus> {
        let dir = TempDir::new()?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rot13d\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .args(["--web.listen-address=127.0.0.1:0", "--log.level=info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("prometheus (apt-get install prometheus): {e}")))?;
        let log = Log::capture(child.stderr.take().ok_or_else(|| fail("no stderr"))?);
        let mut p = Prometheus { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log, _dir: dir };
        // `msg="Listening on" address=127.0.0.1:PORT`: the bound port.
        p.log.wait_count(&["msg=\"Listening on\"", "address=127.0.0.1:"], 1, T)?;
        p.log.wait_count(&["Server is ready to receive web requests"], 1, T)?;
        let text = p.log.text();
        let line = text.lines().find(|l| l.contains("msg=\"Listening on\"")).unwrap_or("");
        p.addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| fail(format!("no address in {line:?}")))?;
        Ok(p)
    }

    /// The `data.result` of an instant query of `promql`.
    fn query(&self, promql: &str) -> io::Result<Vec<serde_json::Value>> {
        let q: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        // HTTP/1.0: the answer ends at EOF, never chunked.
        write!(s, "GET /api/v1/query?query={q} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| fail(format!("{e}: {raw}")))?;
        ensure!(v["status"] == "success", "query {promql}: {raw}");
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The raw samples of `series` in the last `secs` seconds: (time, value).
    fn samples(&self, series: &str, secs: u32) -> io::Result<Vec<(f64, f64)>> {
        let result = self.query(&format!("{series}[{secs}s]"))?;
        let values = result.first().and_then(|r| r["values"].as_array().cloned()).unwrap_or_default();
        Ok(values.iter().filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?))).collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = crate::util::kill(self.child.id() as i32, libc::SIGKILL);
        let _ = crate::util::wait_child(&mut self.child, Duration::from_secs(5));
    }
}

/// Prometheus scrapes the admin endpoint every second: `up` is 1, and
/// `rot13d_lines_total` grows by exactly the lines sent: from the last
/// sample of a scrape that ended before the traffic began (its timestamp,
/// the scrape's start, plus its `scrape_duration_seconds`) to the first of
/// one that began after the last answer came back.
#[test]
fn prometheus_scrapes_the_admin_endpoint() -> io::Result<()> {
    let (d, admin) = admin_daemon(2, "")?;
    let p = Prometheus::start(admin)?;
    let up = |p: &Prometheus| -> io::Result<Option<String>> {
        let r = p.query("up")?;
        Ok(r.first().and_then(|s| s["value"][1].as_str().map(str::to_string)))
    };
    let mut last = None;
    let scraped = poll_until(Duration::from_secs(20), || {
        last = up(&p).unwrap_or_default();
        last.as_deref() == Some("1")
    });
    ensure!(scraped, "up is {last:?}, not 1; prometheus:\n{}", p.log.text());
    // Scrapes as (start, end): a loaded machine may hold one up for long
    // after it began, so its start alone does not say it saw no traffic.
    let scrapes = |p: &Prometheus| -> io::Result<Vec<(f64, f64)>> {
        Ok(p.samples("scrape_duration_seconds", 60)?.into_iter().map(|(t, d)| (t, t + d)).collect())
    };
    let ended_before = |scrapes: &[(f64, f64)], t: f64| scrapes.iter().any(|(_, end)| *end < t);
    let mut seen = Vec::new();
    ensure!(
        poll_until(T, || {
            seen = scrapes(&p).unwrap_or_default();
            ended_before(&seen, now() - 0.01)
        }),
        "no scrape has ended: {seen:?}"
    );
    let start = now();
    let inputs: [&[u8]; 3] = [b"one\ntwo\nthree\n", b"four\n", b"five\nsix\nseven\neight\n"];
    for i in inputs {
        let got = Client::connect(d.addr())?.roundtrip(i)?;
        ensure!(got == rot13_model(i, 16384), "answer {got:?}");
    }
    let sent = 8.0;
    // Every line was counted before its answer was written: a scrape that
    // starts from now on sees them all.
    let done = now();
    let mut after = Vec::new();
    let seen = poll_until(Duration::from_secs(20), || {
        after = p.samples("rot13d_lines_total", 60).unwrap_or_default();
        // Prometheus may date a scrape up to 2 ms before it began.
        after.last().is_some_and(|(t, _)| *t > done + 0.01)
    });
    ensure!(seen, "no sample after the traffic: {after:?}");
    let ends = scrapes(&p)?;
    let ended = |t: f64| ends.iter().find(|(s, _)| (s - t).abs() < 0.0005).map(|(_, e)| *e);
    let v0 = after.iter().filter(|(t, _)| ended(*t).is_some_and(|e| e + 0.01 < start)).map(|(_, v)| *v).next_back();
    let v0 =
        v0.ok_or_else(|| fail(format!("no sample of a scrape ended before the traffic in {after:?}, {ends:?}")))?;
    let v1 = after.iter().find(|(t, _)| *t > done + 0.01).map_or(0.0, |(_, v)| *v);
    ensure!(v1 - v0 == sent, "rot13d_lines_total went {v0} -> {v1}, want +{sent}: {after:?}");
    ensure!(up(&p)?.as_deref() == Some("1"), "up after the traffic");
    Ok(())
}
