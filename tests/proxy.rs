//! SPEC §3 `[server] proxy_protocol` (issue 11): the header is consumed and
//! never ROT13 input, whatever the split; a bad header, or none within 5 s
//! of the connect, closes the connection without a byte of answer, a WARN
//! names the peer and the reason and a counter counts it; `off` keeps a
//! `PROXY` line ROT13 input; the header's source is the client's address
//! in the logs and the access record.

use crate::ensure;
use crate::util::{
    Client, Daemon, V2_SIG, closed_unanswered, ensure_bytes_eq, fail, fields, get, lines_with, metric, nth_admin_addr,
    poll_until, proxy_v1, proxy_v2, proxy_v2_local, proxy_v2_raw, rot13_model,
};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// A daemon with `proxy_protocol = mode`, `server` more lines of
/// `[server]`, then `rest` (other sections), and the admin endpoint.
fn proxy_daemon(mode: &str, workers: usize, server: &str, rest: &str) -> io::Result<(Daemon, SocketAddr)> {
    let config = format!("[server]\nproxy_protocol = \"{mode}\"\n{server}{rest}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let d = Daemon::builder().workers(workers).config(&config).start()?;
    let admin = nth_admin_addr(&d, 0)?;
    Ok((d, admin))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `/metrics` once every connection is closed and `accepted` were accepted.
fn settled_metrics(admin: SocketAddr, accepted: u64) -> io::Result<String> {
    let mut body = String::new();
    let ok = poll_until(T, || {
        body = get(admin, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric(&body, "rot13d_connections_open") == Some(0)
            && metric(&body, "rot13d_connections_accepted_total") == Some(accepted)
    });
    ensure!(ok, "metrics never settled at {accepted} accepted, none open:\n{body}");
    Ok(body)
}

fn refused_count(body: &str, reason: &str) -> Option<u64> {
    metric(body, &format!("rot13d_proxy_refused_total{{reason=\"{reason}\"}}"))
}

/// Bytes after the header: text, header-like lines (ROT13 input now) and a
/// partial line.
fn stream_data() -> Vec<u8> {
    let mut d = b"Hello, World!\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
    d.extend_from_slice(V2_SIG);
    d.extend_from_slice(b"tail");
    d
}

#[derive(Clone, Copy, Debug)]
enum Split {
    /// Header and data in one write (one segment).
    Whole,
    /// Every byte its own write, a millisecond apart.
    ByteAtATime,
    /// The header, then the data.
    HeaderThenData,
}

fn send_split(c: &mut Client, header: &[u8], data: &[u8], split: Split) -> io::Result<()> {
    match split {
        Split::Whole => c.send(&[header, data].concat()),
        Split::HeaderThenData => {
            c.send(header)?;
            thread::sleep(Duration::from_millis(5));
            c.send(data)
        }
        Split::ByteAtATime => {
            for b in [header, data].concat() {
                c.send(&[b])?;
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
    }
}

/// Every accepted form (v1 TCP4, TCP6, UNKNOWN; v2 TCP4, TCP6 with TLVs,
/// LOCAL), each in one segment with data, a byte at a time, and header
/// then data: the answer is exactly ROT13 of what follows the header, and
/// the access record names the header's source (the socket's peer for
/// UNKNOWN and LOCAL).
fn headers_are_consumed(workers: usize) -> io::Result<()> {
    let (d, admin) = proxy_daemon("any", workers, "", "[log]\naccess = true\n")?;
    let (src4, dst4) = (addr("192.0.2.1:50000"), addr("198.51.100.7:40713"));
    let (src6, dst6) = (addr("[2001:db8::1]:65535"), addr("[2001:db8::2:3]:40713"));
    // ALPN "r13", a NOOP of 3 bytes, an unknown type of 0 bytes, a custom
    // type of 200 bytes.
    let mut tlvs = vec![0x01, 0, 3, b'r', b'1', b'3', 0x04, 0, 3, 0, 0, 0, 0xe0, 0, 0, 0xee, 0, 200];
    tlvs.extend_from_slice(&[b'x'; 200]);
    let cases: Vec<(&str, Vec<u8>, Option<SocketAddr>)> = vec![
        ("v1 TCP4", proxy_v1(src4, dst4), Some(src4)),
        ("v1 TCP6", proxy_v1(src6, dst6), Some(src6)),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), None),
        ("v2 TCP4", proxy_v2(src4, dst4, &[]), Some(src4)),
        ("v2 TCP6 with TLVs", proxy_v2(src6, dst6, &tlvs), Some(src6)),
        ("v2 LOCAL", proxy_v2_local(), None),
    ];
    let data = stream_data();
    let want = rot13_model(&data, 16384);
    let mut accepted = 0;
    for (name, header, client) in &cases {
        for split in [Split::Whole, Split::ByteAtATime, Split::HeaderThenData] {
            let mut c = d.connect()?;
            let local = c.stream.local_addr()?;
            send_split(&mut c, header, &data, split)?;
            c.half_close()?;
            let got = c.read_to_end()?;
            ensure_bytes_eq(&format!("{name}, {split:?}"), &got, &want)?;
            accepted += 1;
            let peer = format!("peer={local} ");
            d.log().wait_count(&["INFO rot13d: access ", &peer], 1, T)?;
            let line = lines_with(&d.log().text(), &["INFO rot13d: access ", &peer]).remove(0);
            let f = fields(&line);
            let client = client.unwrap_or(local).to_string();
            let lines = data.iter().filter(|b| **b == b'\n').count().to_string();
            for (k, v) in [
                ("client", client.as_str()),
                ("bytes_in", &(header.len() + data.len()).to_string()),
                ("bytes_out", &want.len().to_string()),
                ("lines", &lines),
                ("end", "eof"),
            ] {
                ensure!(f.get(k).map(String::as_str) == Some(v), "{name}, {split:?}: {k} should be {v}: {line}");
            }
        }
    }
    let body = settled_metrics(admin, accepted)?;
    for (series, want) in [
        ("rot13d_proxy_headers_total{version=\"v1\"}", 9),
        ("rot13d_proxy_headers_total{version=\"v2\"}", 9),
        ("rot13d_proxy_local_headers_total", 6),
        ("rot13d_proxy_refused_total", 0),
        ("rot13d_lines_total", accepted * 6),
    ] {
        ensure!(metric(&body, series) == Some(want), "{series} = {:?}, want {want}:\n{body}", metric(&body, series));
    }
    ensure!(!d.log().text().contains(" WARN "), "a WARN for good headers:\n{}", d.log().text());
    Ok(())
}

#[test]
fn headers_are_consumed_whatever_the_split_w0() -> io::Result<()> {
    headers_are_consumed(0)
}

#[test]
fn headers_are_consumed_whatever_the_split_w2() -> io::Result<()> {
    headers_are_consumed(2)
}

/// A v1 line of exactly `len` bytes, CR LF included.
fn v1_of_len(len: usize) -> Vec<u8> {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(len - 2, b'x');
    line.extend_from_slice(b"\r\n");
    line
}

/// One bad case: the bytes, whether the client then ends its stream, and
/// the reason it is refused for.
struct Bad {
    what: &'static str,
    bytes: Vec<u8>,
    eof: bool,
    reason: &'static str,
}

fn bad(what: &'static str, bytes: &[u8], eof: bool, reason: &'static str) -> Bad {
    Bad { what, bytes: bytes.to_vec(), eof, reason }
}

fn bad_cases(mode: &str) -> Vec<Bad> {
    let v2_tcp4 = proxy_v2(addr("192.0.2.1:1"), addr("192.0.2.2:2"), &[]);
    match mode {
        "v1" => vec![
            bad("no header", b"hello\n", false, "missing"),
            bad("a v2 header", &v2_tcp4, false, "wrong_version"),
            bad("a port missing", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", false, "malformed"),
            bad("LF without CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", false, "malformed"),
            bad("an IPv6 address in TCP4", b"PROXY TCP4 ::1 ::2 1 2\r\n", false, "malformed"),
            bad("108 bytes", &v1_of_len(108), false, "too_long"),
            bad("cut short", b"PROXY TCP4 1.2", true, "truncated"),
        ],
        "v2" => vec![
            bad("a v1 header", b"PROXY UNKNOWN\r\n", false, "wrong_version"),
            bad("HTTP", b"GET / HTTP/1.0\r\n\r\n", false, "missing"),
            bad(
                "UDP over IPv4",
                &proxy_v2_raw(0x21, 0x12, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
                false,
                "unsupported_family",
            ),
            bad("version 1", &proxy_v2_raw(0x11, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]), false, "malformed"),
            bad("TCP4 too short", &proxy_v2_raw(0x21, 0x11, &[1, 2, 3, 4]), false, "malformed"),
            bad("cut short", &v2_tcp4[..20], true, "truncated"),
        ],
        _ => vec![
            bad("TLS", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false, "missing"),
            bad("lower case", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", false, "missing"),
            bad("cut short", &V2_SIG[..5], true, "truncated"),
        ],
    }
}

/// Every bad case of `mode`: closed without a byte of answer, a WARN with
/// the peer, the reason and the bytes, the counter of its reason; a
/// connection that only connects and closes is no WARN; a good connection
/// open meanwhile notices nothing.
fn bad_headers(mode: &str, workers: usize) -> io::Result<()> {
    let (d, admin) = proxy_daemon(mode, workers, "", "")?;
    let mut good = d.connect()?;
    let good_header = if mode == "v2" { proxy_v2_local() } else { b"PROXY UNKNOWN\r\n".to_vec() };
    good.send(&good_header)?;
    let cases = bad_cases(mode);
    for (i, case) in cases.iter().enumerate() {
        let mut c = d.connect()?;
        let local = c.stream.local_addr()?;
        c.send(&case.bytes)?;
        if case.eof {
            c.half_close()?;
        }
        closed_unanswered(&mut c, T).map_err(|e| fail(format!("{mode} {}: {e}", case.what)))?;
        let peer = format!("peer={local} ");
        d.log().wait_count(&["WARN rot13d: proxy header refused ", &peer], 1, T)?;
        let line = lines_with(&d.log().text(), &["proxy header refused", &peer]).remove(0);
        let f = fields(&line);
        let bytes = case.bytes.len().to_string();
        ensure!(
            f.get("reason").map(String::as_str) == Some(case.reason) && f.get("bytes") == Some(&bytes),
            "{mode} {}: want reason={} bytes={bytes}: {line}",
            case.what,
            case.reason
        );
        // The good connection notices nothing.
        let line = format!("line {i}\n");
        good.send(line.as_bytes())?;
        let got = good.read_exact(line.len())?;
        ensure_bytes_eq(
            &format!("{mode}: the good connection after {}", case.what),
            &got,
            &rot13_model(line.as_bytes(), 16384),
        )?;
    }
    // A TCP health check: connect, close. No WARN, no refusal.
    let c = d.connect()?;
    let quiet = c.stream.local_addr()?;
    drop(c);
    drop(good);
    let body = settled_metrics(admin, cases.len() as u64 + 2)?;
    ensure!(
        lines_with(&d.log().text(), &["WARN", &format!("peer={quiet} ")]).is_empty(),
        "a WARN for a plain connect and close:\n{}",
        d.log().text()
    );
    for reason in ["missing", "wrong_version", "malformed", "too_long", "unsupported_family", "truncated", "timeout"] {
        let want = cases.iter().filter(|c| c.reason == reason).count() as u64;
        ensure!(
            refused_count(&body, reason) == Some(want),
            "{mode}: {reason} counted {:?}, want {want}:\n{body}",
            refused_count(&body, reason)
        );
    }
    ensure!(metric(&body, "rot13d_proxy_headers_total") == Some(1), "{body}");
    ensure!(metric(&body, "rot13d_lines_total") == Some(cases.len() as u64), "{body}");
    Ok(())
}

#[test]
fn bad_v1_headers_are_closed_unanswered_w0() -> io::Result<()> {
    bad_headers("v1", 0)
}

#[test]
fn bad_v1_headers_are_closed_unanswered_w2() -> io::Result<()> {
    bad_headers("v1", 2)
}

#[test]
fn bad_v2_headers_are_closed_unanswered_w0() -> io::Result<()> {
    bad_headers("v2", 0)
}

#[test]
fn bad_v2_headers_are_closed_unanswered_w2() -> io::Result<()> {
    bad_headers("v2", 2)
}

#[test]
fn bad_headers_of_either_version_are_closed_unanswered_w1() -> io::Result<()> {
    bad_headers("any", 1)
}

/// No complete header within 5 s of the connect: refused (reason
/// `timeout`), also for a client that keeps sending a byte a second (the
/// deadline runs from the accept, not from the last byte). A header
/// trickling in within the 5 s starts the stream, and from then on the
/// idle timeout applies, not what was left of the deadline.
fn the_header_deadline_runs_from_the_connect(workers: usize) -> io::Result<()> {
    let (d, admin) = proxy_daemon("v1", workers, "", "")?;
    let t0 = Instant::now();
    let mut silent = d.connect()?;
    let mut trickle = d.connect()?;
    let mut slow_ok = d.connect()?;
    let (silent_addr, trickle_addr) = (silent.stream.local_addr()?, trickle.stream.local_addr()?);
    // A byte a second, for 9 s: the line would end long after 5 s.
    let mut w = trickle.stream.try_clone()?;
    let trickler = thread::spawn(move || {
        for b in b"PROXY TCP4 1.2.3.4 " {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    // Complete after ~3 s: 15 bytes, one each 200 ms.
    let mut w = slow_ok.stream.try_clone()?;
    let slow = thread::spawn(move || -> io::Result<()> {
        for b in b"PROXY UNKNOWN\r\n" {
            w.write_all(&[*b])?;
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    });
    closed_unanswered(&mut silent, T)?;
    let silent_took = t0.elapsed();
    closed_unanswered(&mut trickle, T)?;
    let trickle_took = t0.elapsed();
    for (what, took) in [("silent", silent_took), ("trickling", trickle_took)] {
        ensure!(took >= Duration::from_millis(4990), "{what} client closed after {took:?}, before 5 s");
        ensure!(
            took < Duration::from_millis(7500),
            "{what} client closed after {took:?}: the deadline is 5 s from the connect"
        );
    }
    slow.join().map_err(|_| fail("slow writer panicked"))??;
    let _ = trickler.join();
    // Well past the deadline (the passing of time is the subject, there is
    // no event to await); the stream of the slow client goes on.
    thread::sleep(Duration::from_millis(6500).saturating_sub(t0.elapsed()));
    slow_ok.send(b"abc\n")?;
    ensure_bytes_eq("after a slow header", &slow_ok.read_exact(4)?, b"nop\n")?;
    for (peer, bytes) in [(silent_addr, "0"), (trickle_addr, "")] {
        let peer = format!("peer={peer} ");
        d.log().wait_count(&["proxy header refused", &peer, "reason=timeout"], 1, T)?;
        if !bytes.is_empty() {
            let line = lines_with(&d.log().text(), &["proxy header refused", &peer]).remove(0);
            ensure!(fields(&line).get("bytes").map(String::as_str) == Some(bytes), "{line}");
        }
    }
    drop(slow_ok);
    let body = settled_metrics(admin, 3)?;
    ensure!(refused_count(&body, "timeout") == Some(2), "{body}");
    Ok(())
}

#[test]
fn the_header_deadline_runs_from_the_connect_w0() -> io::Result<()> {
    the_header_deadline_runs_from_the_connect(0)
}

#[test]
fn the_header_deadline_runs_from_the_connect_w2() -> io::Result<()> {
    the_header_deadline_runs_from_the_connect(2)
}

/// `off` (the default): a PROXY line and the v2 signature are ROT13 input
/// like any other, byte for byte.
#[test]
fn off_takes_a_proxy_header_as_rot13_input() -> io::Result<()> {
    let d = Daemon::builder().workers(0).config("[admin]\nlisten = \"127.0.0.1:0\"\n").start()?;
    let admin = nth_admin_addr(&d, 0)?;
    let mut input = proxy_v1(addr("192.0.2.1:50000"), addr("198.51.100.7:40713"));
    input.extend_from_slice(&proxy_v2(addr("192.0.2.1:50000"), addr("198.51.100.7:40713"), &[]));
    input.extend_from_slice(b"\nHello\n");
    let got = d.roundtrip(&input)?;
    ensure_bytes_eq("proxy_protocol = off", &got, &rot13_model(&input, 16384))?;
    ensure!(got.starts_with(b"CEBKL GPC4 192.0.2.1"), "{:?}", String::from_utf8_lossy(&got));
    let body = settled_metrics(admin, 1)?;
    ensure!(metric(&body, "rot13d_proxy_headers_total") == Some(0), "{body}");
    ensure!(metric(&body, "rot13d_proxy_refused_total") == Some(0), "{body}");
    Ok(())
}

/// The grace period of a stop ends while a connection is inside its
/// header: nothing is answered (a partial header is never ROT13 input,
/// where a partial line would be answered).
#[test]
fn a_partial_header_is_never_answered_at_the_end_of_the_grace() -> io::Result<()> {
    let (mut d, _) = proxy_daemon("v1", 1, "shutdown_grace = 1\n", "")?;
    let mut c = d.connect()?;
    c.send(b"PROXY TCP4 192.0.2.1 ")?;
    // The server has the bytes once it counts them.
    let admin = nth_admin_addr(&d, 0)?;
    let seen = poll_until(T, || {
        get(admin, "/metrics").is_ok_and(|(_, b)| metric(&b, "rot13d_bytes_received_total") == Some(21))
    });
    ensure!(seen, "the server never received the partial header");
    d.signal(libc::SIGTERM)?;
    closed_unanswered(&mut c, T)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

/// With DEBUG logs, the lines of a connection behind a proxy name the
/// header's client (`client=`), the proxy as `peer=`.
#[test]
fn log_lines_name_the_headers_client() -> io::Result<()> {
    let (d, _) = proxy_daemon("v2", 1, "", "[log]\nlevel = \"debug\"\n")?;
    let src = addr("[2001:db8::7]:4242");
    let mut c = d.connect()?;
    let local = c.stream.local_addr()?;
    c.send(&proxy_v2(src, addr("[2001:db8::1]:40713"), &[]))?;
    c.send(b"abc\n")?;
    ensure_bytes_eq("answer", &c.read_exact(4)?, b"nop\n")?;
    c.half_close()?;
    ensure!(c.read_to_end()?.is_empty(), "more after the half-close");
    d.log().wait_count(&["client finished sending", "client=[2001:db8::7]:4242"], 1, T)?;
    let header = lines_with(&d.log().text(), &["DEBUG rot13d: proxy header "]);
    ensure!(header.len() == 1, "{header:?}");
    let f = fields(&header[0]);
    for (k, v) in [
        ("version", "v2".to_string()),
        ("client", src.to_string()),
        ("peer", local.to_string()),
        ("destination", "[2001:db8::1]:40713".to_string()),
        ("bytes", "52".to_string()),
    ] {
        ensure!(f.get(k) == Some(&v), "{k} should be {v}: {}", header[0]);
    }
    Ok(())
}

/// A graceful stop behind a load balancer: the balancer has placed each
/// connection's client already and cannot send it elsewhere, so a stop
/// spares a connection that read within the last second (its header just
/// in, its first line on the way) and closes it once it has been idle for
/// a second, not at the grace's end (30 s); one quiet for longer is closed
/// at once, as without the PROXY protocol.
fn a_stop_spares_a_client_that_just_connected(workers: usize) -> io::Result<()> {
    let (mut d, admin) = proxy_daemon("v2", workers, "", "[log]\naccess = true\n")?;
    let headers = |n| {
        poll_until(T, || get(admin, "/metrics").is_ok_and(|(_, b)| metric(&b, "rot13d_proxy_headers_total") == Some(n)))
    };
    let (old_src, new_src) = (addr("192.0.2.1:1001"), addr("192.0.2.2:1002"));
    let mut old = d.connect()?;
    old.send(&proxy_v2(old_src, addr("192.0.2.9:40713"), &[]))?;
    ensure!(headers(1), "the first header was never read");
    // The quiet time a stop waits for is the subject here, not a wait for
    // an event: the old connection is idle for longer than it.
    thread::sleep(Duration::from_millis(1200));
    let mut new = d.connect()?;
    new.send(&proxy_v2(new_src, addr("192.0.2.9:40713"), &[]))?;
    ensure!(headers(2), "the second header was never read");
    d.signal(libc::SIGTERM)?;
    // Every serving process drains; between them, one connection is busy.
    d.log().wait_count(&["INFO rot13d: draining "], workers.max(1), T)?;
    let busy: usize = lines_with(&d.log().text(), &["INFO rot13d: draining "])
        .iter()
        .map(|l| fields(l).get("busy").and_then(|b| b.parse::<usize>().ok()).unwrap_or(99))
        .sum();
    ensure!(busy == 1, "{busy} busy at the stop, want 1:\n{}", d.log().text());
    closed_unanswered(&mut old, T).map_err(|e| fail(format!("the connection quiet for 1.2 s: {e}")))?;
    // The client's first line arrives after the stop began: answered.
    new.send(b"Hello after the stop\n")?;
    let got = new.read_exact(21)?;
    ensure_bytes_eq("the connection that had just begun", &got, b"Uryyb nsgre gur fgbc\n")?;
    // Idle from now on: closed a second later, answered in full.
    let answered = Instant::now();
    ensure!(new.read_to_end()?.is_empty(), "more after the answer");
    let took = answered.elapsed();
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "the spared connection closed {took:?} after its last answer, want about 1 s"
    );
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}:\n{}", d.log().text());
    for (src, end, lines) in [(old_src, "shutdown", "0"), (new_src, "shutdown", "1")] {
        let rec = lines_with(&d.log().text(), &["INFO rot13d: access ", &format!("client={src} ")]);
        ensure!(rec.len() == 1, "{src}: {rec:?}");
        let f = fields(&rec[0]);
        ensure!(
            f.get("end").map(String::as_str) == Some(end) && f.get("lines").map(String::as_str) == Some(lines),
            "{src}: want end={end} lines={lines}: {}",
            rec[0]
        );
    }
    Ok(())
}

#[test]
fn a_stop_spares_a_client_that_just_connected_w0() -> io::Result<()> {
    a_stop_spares_a_client_that_just_connected(0)
}

#[test]
fn a_stop_spares_a_client_that_just_connected_w2() -> io::Result<()> {
    a_stop_spares_a_client_that_just_connected(2)
}

/// A reload (SIGHUP) that turns `proxy_protocol` on applies to connections
/// accepted from then on; one open across it keeps its generation's
/// setting (SPEC §2): a `PROXY` line stays ROT13 input there.
fn a_reload_turns_the_header_on_for_new_connections(workers: usize) -> io::Result<()> {
    let (d, admin) = proxy_daemon("off", workers, "", "")?;
    let mut old = d.connect()?;
    // A partial line keeps it busy through the old generation's retirement.
    old.send(b"abc")?;
    let received = |n| {
        poll_until(T, || {
            get(admin, "/metrics").is_ok_and(|(_, b)| metric(&b, "rot13d_bytes_received_total") == Some(n))
        })
    };
    ensure!(received(3), "the partial line never arrived");
    let text = std::fs::read_to_string(d.config_path())?.replace("proxy_protocol = \"off\"", "proxy_protocol = \"v2\"");
    std::fs::write(d.config_path(), text)?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["INFO rot13d: reloaded "], 1, T)?;
    // The old workers stop accepting when they begin to drain.
    d.log().wait_count(&["INFO rot13d: draining ", "retiring=true"], workers, T)?;
    let line = b"\nPROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n";
    old.send(line)?;
    let want = rot13_model(&[&b"abc"[..], line].concat(), 16384);
    ensure_bytes_eq("the connection open across the reload", &old.read_exact(want.len())?, &want)?;
    let mut new = d.connect()?;
    new.send(&[proxy_v2(addr("192.0.2.1:1"), addr("192.0.2.2:2"), &[]), b"Hello\n".to_vec()].concat())?;
    ensure_bytes_eq("a new connection with a header", &new.read_exact(6)?, b"Uryyb\n")?;
    let mut bare = d.connect()?;
    bare.send(b"Hello\n")?;
    closed_unanswered(&mut bare, T).map_err(|e| fail(format!("a new connection without a header: {e}")))?;
    d.log().wait_count(&["WARN rot13d: proxy header refused ", "reason=missing "], 1, T)?;
    Ok(())
}

#[test]
fn a_reload_turns_the_header_on_for_new_connections_w0() -> io::Result<()> {
    a_reload_turns_the_header_on_for_new_connections(0)
}

#[test]
fn a_reload_turns_the_header_on_for_new_connections_w2() -> io::Result<()> {
    a_reload_turns_the_header_on_for_new_connections(2)
}

/// A proxy on a dual-stack socket names an IPv4 client as an IPv4-mapped
/// IPv6 address (TCP6 `::ffff:a.b.c.d`): logged as IPv4, as a dual-stack
/// listener's own IPv4 clients are, so that one client has one spelling in
/// the logs whichever way it came.
#[test]
fn a_mapped_ipv4_client_in_a_header_is_logged_as_ipv4() -> io::Result<()> {
    let (d, _) = proxy_daemon("any", 1, "", "[log]\naccess = true\n")?;
    let (mapped, dst) = (addr("[::ffff:192.0.2.1]:50000"), addr("[::ffff:198.51.100.7]:40713"));
    for header in [proxy_v1(mapped, dst), proxy_v2(mapped, dst, &[])] {
        let mut c = d.connect()?;
        let local = c.stream.local_addr()?;
        c.send(&header)?;
        c.send(b"abc\n")?;
        ensure_bytes_eq("answer", &c.read_exact(4)?, b"nop\n")?;
        c.half_close()?;
        ensure!(c.read_to_end()?.is_empty(), "more after the half-close");
        let peer = format!("peer={local} ");
        d.log().wait_count(&["INFO rot13d: access ", &peer], 1, T)?;
        let line = lines_with(&d.log().text(), &["INFO rot13d: access ", &peer]).remove(0);
        ensure!(fields(&line).get("client").map(String::as_str) == Some("192.0.2.1:50000"), "{line}");
    }
    Ok(())
}
