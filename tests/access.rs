//! SPEC §3 `[log] access` (issue 11): one INFO event `access` per closed
//! connection with the client and local address, duration, bytes in and
//! out, lines and why it ended, as text fields and as JSON with the same
//! stable names; none when off.

use crate::ensure;
use crate::util::{
    Client, Daemon, closed_unanswered, ensure_bytes_eq, fail, fields, get, lines_with, metric, nth_admin_addr,
    poll_until, proxy_v1,
};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// The access record of the connection whose client port is `peer` (text).
fn record(d: &Daemon, peer: SocketAddr) -> io::Result<BTreeMap<String, String>> {
    let pat = format!("peer={peer} ");
    d.log().wait_count(&["INFO rot13d: access ", &pat], 1, T)?;
    let lines = lines_with(&d.log().text(), &["INFO rot13d: access ", &pat]);
    ensure!(lines.len() == 1, "{} records for {peer}: {lines:?}", lines.len());
    Ok(fields(&lines[0]))
}

fn ensure_fields(what: &str, f: &BTreeMap<String, String>, want: &[(&str, String)]) -> io::Result<()> {
    for (k, v) in want {
        ensure!(f.get(*k) == Some(v), "{what}: {k} should be {v}: {f:?}");
    }
    Ok(())
}

/// Every field of a plain connection, exactly: the client is the socket's
/// peer, the local address the listener's, the duration at least the time
/// the client kept it open.
#[test]
fn an_access_record_per_connection_with_every_field() -> io::Result<()> {
    let d = Daemon::builder().workers(0).config("[log]\naccess = true\n").start()?;
    let mut c = d.connect()?;
    let peer = c.stream.local_addr()?;
    let t0 = Instant::now();
    c.send(b"Hello\nworld")?;
    ensure_bytes_eq("first line", &c.read_exact(6)?, b"Uryyb\n")?;
    thread::sleep(Duration::from_millis(300));
    c.half_close()?;
    ensure_bytes_eq("the rest", &c.read_to_end()?, b"jbeyq")?;
    let held = t0.elapsed();
    let f = record(&d, peer)?;
    ensure_fields(
        "eof",
        &f,
        &[
            ("client", peer.to_string()),
            ("peer", peer.to_string()),
            ("local", d.addr().to_string()),
            ("bytes_in", "11".into()),
            ("bytes_out", "11".into()),
            ("lines", "1".into()),
            ("end", "eof".into()),
        ],
    )?;
    let secs: f64 = f.get("duration_s").and_then(|s| s.parse().ok()).ok_or_else(|| fail(format!("{f:?}")))?;
    // The base's clock is coarse (a few ms): allow 20 ms below what the
    // client measured and 100 ms above it (the daemon accepted after the
    // client's connect returned and closed before its EOF was read, so a
    // duration counted from anything earlier, the worker's start say, is
    // caught).
    ensure!(secs >= 0.28 && secs <= held.as_secs_f64() + 0.1, "duration_s {secs}, held {held:?}");
    let keys: Vec<&str> = f.keys().map(String::as_str).collect();
    ensure!(
        keys == ["bytes_in", "bytes_out", "client", "duration_s", "end", "lines", "local", "peer"],
        "fields {keys:?}"
    );
    Ok(())
}

/// A writer that never reads its answers: sends until the server gives up.
fn flood(c: &Client) -> io::Result<thread::JoinHandle<()>> {
    let mut w = c.stream.try_clone()?;
    w.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(thread::spawn(move || {
        let block: Vec<u8> = b"0123456789abcdefghijklmnopqrstuvwxyz\n".repeat(1 << 14);
        for _ in 0..1024 {
            if w.write_all(&block).is_err() {
                return;
            }
        }
    }))
}

/// Why it ended: eof, reset, idle_timeout, write_timeout, and shutdown
/// (an idle connection closed at once, a busy one at the grace's end).
#[test]
fn the_record_says_why_the_connection_ended() -> io::Result<()> {
    let config = "[server]\nidle_timeout = 2\nwrite_timeout = 1\nshutdown_grace = 1\n\
                  [log]\naccess = true\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut d = Daemon::builder().workers(1).config(config).start()?;
    let admin = nth_admin_addr(&d, 0)?;

    let mut eof = d.connect()?;
    eof.send(b"a\n")?;
    eof.half_close()?;
    ensure_bytes_eq("eof", &eof.read_to_end()?, b"n\n")?;
    ensure_fields("eof", &record(&d, eof.stream.local_addr()?)?, &[("end", "eof".into()), ("lines", "1".into())])?;

    let mut reset = d.connect()?;
    let reset_addr = reset.stream.local_addr()?;
    reset.send(b"a\n")?;
    ensure_bytes_eq("before the reset", &reset.read_exact(2)?, b"n\n")?;
    socket2::SockRef::from(&reset.stream).set_linger(Some(Duration::ZERO))?;
    drop(reset);
    ensure_fields("reset", &record(&d, reset_addr)?, &[("end", "reset".into()), ("bytes_out", "2".into())])?;

    let mut idle = d.connect()?;
    idle.send(b"abc")?;
    ensure_bytes_eq("idle: the partial line first", &idle.read_to_end_within(T)?, b"nop")?;
    ensure_fields(
        "idle_timeout",
        &record(&d, idle.stream.local_addr()?)?,
        &[("end", "idle_timeout".into()), ("bytes_in", "3".into()), ("bytes_out", "3".into())],
    )?;

    let stuck = d.connect()?;
    let writer = flood(&stuck)?;
    let f = record(&d, stuck.stream.local_addr()?)?;
    ensure_fields("write_timeout", &f, &[("end", "write_timeout".into())])?;
    let (sent, got): (u64, u64) = (
        f.get("bytes_out").and_then(|v| v.parse().ok()).unwrap_or(0),
        f.get("bytes_in").and_then(|v| v.parse().ok()).unwrap_or(0),
    );
    ensure!(sent > 0 && sent < got, "bytes_out {sent}, bytes_in {got}: {f:?}");
    drop(stuck);
    writer.join().map_err(|_| fail("writer panicked"))?;

    // Shutdown: one idle connection (closed at once), one with a partial
    // line (answered and closed when the 1 s grace ends).
    let quiet = d.connect()?;
    let mut busy = d.connect()?;
    busy.send(b"xyz")?;
    let open = poll_until(T, || {
        get(admin, "/metrics").is_ok_and(|(_, b)| {
            metric(&b, "rot13d_connections_open") == Some(2)
                && metric(&b, "rot13d_bytes_received_total").is_some_and(|n| n >= 3)
        })
    });
    ensure!(open, "the two connections were never open together");
    d.signal(libc::SIGTERM)?;
    ensure_bytes_eq("busy at the grace's end", &busy.read_to_end_within(T)?, b"klm")?;
    for (c, out) in [(&quiet, "0"), (&busy, "3")] {
        ensure_fields(
            "shutdown",
            &record(&d, c.stream.local_addr()?)?,
            &[("end", "shutdown".into()), ("bytes_out", out.into())],
        )?;
    }
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

/// JSON: the same names, numbers as numbers; a refused PROXY header ends
/// as `proxy_header`, a header's source is the client.
#[test]
fn json_records_have_the_same_fields_typed() -> io::Result<()> {
    let config = "[server]\nproxy_protocol = \"any\"\n[log]\naccess = true\n";
    let d = Daemon::builder().workers(1).config(config).json_log().start()?;
    let src: SocketAddr = "192.0.2.44:1234".parse().map_err(|e| fail(format!("{e}")))?;
    let mut good = d.connect()?;
    let good_addr = good.stream.local_addr()?;
    let mut input = proxy_v1(src, "198.51.100.1:40713".parse().map_err(|e| fail(format!("{e}")))?);
    input.extend_from_slice(b"one\ntwo\n");
    good.send(&input)?;
    good.half_close()?;
    ensure_bytes_eq("through the header", &good.read_to_end()?, b"bar\ngjb\n")?;
    let mut bad = d.connect()?;
    let bad_addr = bad.stream.local_addr()?;
    bad.send(b"hello\n")?;
    closed_unanswered(&mut bad, T)?;
    for (peer, client, end, bytes_in, bytes_out, lines) in
        [(good_addr, src, "eof", input.len() as u64, 8, 2), (bad_addr, bad_addr, "proxy_header", 6, 0, 0)]
    {
        let pat = format!("\"peer\":\"{peer}\"");
        d.log().wait_count(&["\"message\":\"access\"", &pat], 1, T)?;
        let line = lines_with(&d.log().text(), &["\"message\":\"access\"", &pat]).remove(0);
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| fail(format!("{e}: {line}")))?;
        let want = serde_json::json!({
            "level": "INFO",
            "target": "rot13d",
            "message": "access",
            "client": client.to_string(),
            "peer": peer.to_string(),
            "local": d.addr().to_string(),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "lines": lines,
            "end": end,
        });
        for (k, w) in want.as_object().into_iter().flatten() {
            ensure!(v.get(k) == Some(w), "{k} should be {w}: {line}");
        }
        ensure!(v.get("duration_s").is_some_and(|d| d.is_f64()), "duration_s not a number: {line}");
        ensure!(v.get("timestamp").is_some_and(|t| t.is_string()), "{line}");
    }
    Ok(())
}

/// Off (the default): no record at all.
#[test]
fn no_record_when_off() -> io::Result<()> {
    let mut d = Daemon::builder().workers(1).start()?;
    ensure_bytes_eq("answer", &d.roundtrip(b"abc\n")?, b"nop\n")?;
    ensure_bytes_eq("a partial line", &d.roundtrip(b"x")?, b"k")?;
    d.signal(libc::SIGTERM)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    let log = d.log().text();
    ensure!(!log.contains(" access "), "an access record while off:\n{log}");
    Ok(())
}
