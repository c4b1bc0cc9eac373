//! SPEC §3 `[admin]`: `GET /healthz` and `GET /metrics` (Prometheus text,
//! summed over all workers) on the admin listener.

use crate::ensure;
use crate::util::{Client, Daemon, fail, poll_until, rot13_model};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn admin_daemon(workers: usize) -> io::Result<(Daemon, SocketAddr)> {
    let d = Daemon::builder().workers(workers).config("[admin]\nlisten = \"127.0.0.1:0\"\n").start()?;
    d.log().wait_count(&["listening", "kind=admin"], 1, T)?;
    let text = d.log().text();
    let line = text.lines().find(|l| l.contains("listening") && l.contains("kind=admin")).unwrap_or("");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| fail(format!("no admin address in {line:?}")))?;
    ensure!(addr != d.addr(), "admin and rot13 share {addr}");
    Ok((d, addr))
}

/// `GET path`: status code and body (the server closes after answering a
/// `Connection: close` request; every read bounded by 3 s).
fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
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
fn metric(body: &str, name: &str) -> Option<u64> {
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

#[test]
fn healthz_answers_200() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1)?;
    let (code, _) = get(admin, "/healthz")?;
    ensure!(code == 200, "/healthz: {code}");
    let (code, _) = get(admin, "/no-such-page")?;
    ensure!(code == 404, "/no-such-page: {code}");
    Ok(())
}

#[test]
fn metrics_count_exactly_over_all_workers() -> io::Result<()> {
    let (d, admin) = admin_daemon(2)?;
    let inputs: [&[u8]; 3] = [b"one\ntwo\n", b"three\n", b"four\nfive\nsix\n"];
    let mut sent = 0;
    for i in inputs {
        let want = rot13_model(i, 16384);
        let got = Client::connect(d.addr())?.roundtrip(i)?;
        ensure!(got == want, "answer {got:?}");
        sent += want.len() as u64;
    }
    let received: u64 = inputs.iter().map(|i| i.len() as u64).sum();
    // The counters settle once every connection is closed on the server.
    let mut body = get(admin, "/metrics")?.1;
    let settled = poll_until(T, || {
        body = get(admin, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric(&body, "rot13d_connections_open") == Some(0)
            && metric(&body, "rot13d_connections_accepted_total") == Some(3)
    });
    ensure!(settled, "metrics never settled:\n{body}");
    for (name, want) in [
        ("rot13d_connections_accepted_total", 3),
        ("rot13d_connections_open", 0),
        ("rot13d_lines_total", 6),
        ("rot13d_bytes_received_total", received),
        ("rot13d_bytes_sent_total", sent),
    ] {
        ensure!(metric(&body, name) == Some(want), "{name} = {:?}, want {want}:\n{body}", metric(&body, name));
    }
    Ok(())
}

#[test]
fn admin_listener_is_logged_with_kind_admin() -> io::Result<()> {
    let (d, admin) = admin_daemon(1)?;
    ensure!(admin.ip().is_loopback(), "admin on {admin}");
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "rot13 listener not logged once:\n{}", d.log().text());
    Ok(())
}
