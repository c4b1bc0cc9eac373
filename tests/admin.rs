//! SPEC §3 `[admin]`: `GET /healthz` and `GET /metrics` (Prometheus text,
//! summed over all workers) on the admin listener.

use crate::ensure;
use crate::util::{Client, admin_daemon, alive, fail, get, metric, nth_admin_addr, poll_until, refused, rot13_model};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn healthz_answers_200() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let (code, body) = get(admin, "/healthz")?;
    ensure!((code, body.as_str()) == (200, "ok\n"), "/healthz: {code} {body:?}");
    let (code, _) = get(admin, "/no-such-page")?;
    ensure!(code == 404, "/no-such-page: {code}");
    Ok(())
}

#[test]
fn metrics_count_exactly_over_all_workers() -> io::Result<()> {
    let (d, admin) = admin_daemon(2, "")?;
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
    let (d, admin) = admin_daemon(1, "")?;
    ensure!(admin.ip().is_loopback(), "admin on {admin}");
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "rot13 listener not logged once:\n{}", d.log().text());
    Ok(())
}

/// A reload that moves the admin endpoint: the new address answers, the old
/// one is closed, with or without workers.
fn reload_moves_the_admin_endpoint(workers: usize) -> io::Result<()> {
    let (d, old) = admin_daemon(workers, "")?;
    std::fs::write(d.config_path(), "[admin]\nlisten = \"127.0.0.2:0\"\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    let new = nth_admin_addr(&d, 1)?;
    ensure!(new.ip().to_string() == "127.0.0.2", "admin moved to {new}");
    let (code, _) = get(new, "/healthz")?;
    ensure!(code == 200, "/healthz at the new address: {code}");
    ensure!(poll_until(T, || refused(old)), "the old admin address {old} still accepts");
    ensure!(d.log().count(&["WARN"]) == 0, "warnings on the reload:\n{}", d.log().text());
    Ok(())
}

#[test]
fn reload_moves_the_admin_endpoint_w0() -> io::Result<()> {
    reload_moves_the_admin_endpoint(0)
}

#[test]
fn reload_moves_the_admin_endpoint_w1() -> io::Result<()> {
    reload_moves_the_admin_endpoint(1)
}

/// A graceful stop keeps the admin endpoint while the workers drain:
/// `/healthz` answers 503 `stopping` (SPEC §3: 503 while draining and
/// stopping; a load balancer takes the node out), `/metrics` still shows
/// the busy client, which is served to its end; then the daemon exits 0
/// and the endpoint is gone with it.
fn stop_answers_503_while_draining(workers: usize) -> io::Result<()> {
    let (mut d, admin) = admin_daemon(workers, "")?;
    let mut c = Client::connect(d.addr())?;
    c.send(b"half a li")?;
    // The connection is accepted and counted before the stop.
    ensure!(
        poll_until(T, || get(admin, "/metrics").is_ok_and(|(_, b)| metric(&b, "rot13d_connections_open") == Some(1))),
        "the client was never counted"
    );
    ensure!(get(admin, "/healthz")? == (200, "ok\n".to_string()), "not healthy before the stop");
    d.signal(libc::SIGTERM)?;
    d.log().wait_count(&["draining"], workers.max(1), T)?;
    ensure!(poll_until(T, || refused(d.addr())), "new clients still accepted during the stop");
    let (code, body) = get(admin, "/healthz")?;
    ensure!((code, body.as_str()) == (503, "stopping\n"), "/healthz while draining: {code} {body:?}");
    let (code, body) = get(admin, "/metrics")?;
    ensure!(code == 200 && metric(&body, "rot13d_connections_open") == Some(1), "/metrics while draining: {code}");
    ensure!(alive(d.pid()), "the daemon exited with a busy client");
    c.send(b"ne\n")?;
    c.half_close()?;
    let got = c.read_to_end_within(T).map_err(|e| fail(format!("{e}; log:\n{}", d.log().text())))?;
    ensure!(got == rot13_model(b"half a line\n", 16384), "answer {got:?}");
    ensure!(d.wait_exit(T)?.success(), "exit status");
    ensure!(refused(admin), "the admin endpoint outlived the daemon");
    Ok(())
}

#[test]
fn stop_answers_503_while_draining_w0() -> io::Result<()> {
    stop_answers_503_while_draining(0)
}

#[test]
fn stop_answers_503_while_draining_w1() -> io::Result<()> {
    stop_answers_503_while_draining(1)
}

/// A worker closes the master's admin listener it inherits; a connection
/// that then gets the same fd number must be watched like any other (it
/// was not: the admin's accept event was left behind in the worker's base,
/// so the first connection of a single worker hung).
#[test]
fn every_connection_is_served_with_an_admin_listener() -> io::Result<()> {
    for workers in [1, 2] {
        let (d, _admin) = admin_daemon(workers, "")?;
        for i in 0..4 {
            let input = format!("line {i} of {workers}\n");
            let got = Client::connect(d.addr())?.roundtrip(input.as_bytes())?;
            ensure!(got == rot13_model(input.as_bytes(), 16384), "workers={workers}, connection {i}: {got:?}");
        }
    }
    Ok(())
}

/// An admin request in flight while the master forks workers (a reload)
/// is answered by the master alone and then closed: a worker must not keep
/// a copy of its socket (it did, so the client saw no EOF until that worker
/// exited).
#[test]
fn admin_request_open_across_a_reload_is_closed_after_its_answer() -> io::Result<()> {
    let (d, admin) = admin_daemon(1, "")?;
    // The first generation serves (a reload before that logs one "ready").
    d.log().wait_count(&["ready", "workers=1"], 1, T)?;
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")?;
    // The master has accepted it (it counts no admin connection, so wait
    // for a second request to be answered first).
    ensure!(get(admin, "/healthz")?.0 == 200, "healthz");
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["ready", "workers=1"], 2, T)?;
    s.write_all(b"Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(format!("no EOF after the answer: {e}; got {raw:?}")))?;
    let text = String::from_utf8_lossy(&raw);
    ensure!(text.starts_with("HTTP/1.1 200"), "answer {text:?}");
    ensure!(text.matches("HTTP/1.1").count() == 1, "answered more than once: {text:?}");
    // And no worker holds the server side of that connection.
    let inode = server_socket_inode(admin, s.local_addr()?.port())?;
    for pid in d.worker_pids() {
        // (A worker of the old generation may be gone already.)
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let held = fds
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]")));
        ensure!(!held, "worker {pid} holds the admin connection's socket");
    }
    Ok(())
}

/// The inode of the server's socket of the TCP connection from local port
/// `client_port` to `server` (IPv4, from /proc/net/tcp).
fn server_socket_inode(server: SocketAddr, client_port: u16) -> io::Result<String> {
    let local = format!(":{:04X}", server.port());
    let remote = format!(":{client_port:04X}");
    std::fs::read_to_string("/proc/net/tcp")?
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1].ends_with(&local) && f[2].ends_with(&remote))
        .map(|f| f[9].to_string())
        .ok_or_else(|| fail(format!("no server socket for {server} <- port {client_port} in /proc/net/tcp")))
}

/// The status line the endpoint answers `request` with (then closes).
fn answer_to(admin: SocketAddr, request: &[u8]) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).lines().next().unwrap_or("").to_string())
}

/// A malformed head is answered 400, one over 8 KiB 431, and both closed;
/// the endpoint serves on.
#[test]
fn malformed_and_oversized_heads_are_refused() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let bad = answer_to(admin, b"GET /healthz\x01 HTTP/1.1\r\n\r\n")?;
    ensure!(bad.starts_with("HTTP/1.1 400"), "malformed: {bad:?}");
    let mut big = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend(b"\r\n\r\n");
    let large = answer_to(admin, &big)?;
    ensure!(large.starts_with("HTTP/1.1 431"), "oversized: {large:?}");
    ensure!(get(admin, "/healthz")?.0 == 200, "healthz after the refusals");
    Ok(())
}

/// Everything the endpoint sends to `request` (sent whole, the write side
/// then shut down if `half_close`) up to its close.
fn exchange(admin: SocketAddr, request: &[u8], half_close: bool) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(request)?;
    if half_close {
        s.shutdown(std::net::Shutdown::Write)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(format!("{request:?}: {e} after {raw:?}")))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The exact bytes of `GET /healthz` while healthy.
const HEALTHY: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

/// `HEAD` gets `GET`'s status and headers, the Content-Length of the body
/// it leaves out; HTTP/1.0 and bare-LF heads are served alike.
#[test]
fn head_answers_like_get_without_the_body() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let head = exchange(admin, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false)?;
    ensure!(head == HEALTHY.trim_end_matches("ok\n"), "HEAD /healthz: {head:?}");
    let metrics = exchange(admin, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false)?;
    let (status, rest) = metrics.split_once("\r\n").unwrap_or_default();
    ensure!(status == "HTTP/1.1 200 OK", "HEAD /metrics: {metrics:?}");
    ensure!(rest.ends_with("\r\nConnection: close\r\n\r\n"), "HEAD /metrics has a body or no close: {metrics:?}");
    let length: usize = rest
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| fail(format!("HEAD /metrics without Content-Length: {metrics:?}")))?;
    ensure!(length > 100, "HEAD /metrics: Content-Length {length}");
    let missing = exchange(admin, b"HEAD /nope HTTP/1.1\r\n\r\n", false)?;
    ensure!(missing.starts_with("HTTP/1.1 404 ") && missing.ends_with("\r\n\r\n"), "HEAD /nope: {missing:?}");
    for old in [
        &b"GET /healthz HTTP/1.0\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"GET /healthz?x=1 HTTP/1.1\r\n\r\n",
    ] {
        let got = exchange(admin, old, false)?;
        ensure!(got == HEALTHY, "{:?}: {got:?}", String::from_utf8_lossy(old));
    }
    Ok(())
}

/// A method other than GET and HEAD is 405 with the `Allow` header RFC 9110
/// §15.5.6 requires of a 405; a body sent with it costs nothing.
#[test]
fn other_methods_are_405_naming_the_allowed_ones() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    for request in [
        &b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"DELETE /metrics HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"get /healthz HTTP/1.1\r\n\r\n",
    ] {
        let got = exchange(admin, request, false)?;
        ensure!(
            got == "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\n\
                    Content-Length: 19\r\nConnection: close\r\n\r\nmethod not allowed\n",
            "{:?}: {got:?}",
            String::from_utf8_lossy(request)
        );
    }
    Ok(())
}

/// One request per connection: a keep-alive request, even with a second
/// one pipelined behind it, gets one response saying `Connection: close`,
/// then the close.
#[test]
fn keep_alive_gets_one_response_and_the_close() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let two =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let got = exchange(admin, two, false)?;
    ensure!(got == HEALTHY, "keep-alive: {got:?}");
    Ok(())
}

/// A head the client's EOF leaves incomplete can never complete: it is
/// answered 400 at once (SPEC §3: malformed heads are answered 4xx and
/// closed), not left to the 5 s deadline or closed unanswered. A client
/// that sent nothing gets no answer.
#[test]
fn a_head_cut_by_the_clients_eof_is_answered_400() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let started = std::time::Instant::now();
    let got = exchange(admin, b"GET /healthz HTTP/1.1\r\nHo", true)?;
    ensure!(
        got == "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
                Connection: close\r\n\r\nincomplete request\n",
        "cut head: {got:?}"
    );
    ensure!(started.elapsed() < Duration::from_secs(3), "cut head answered after {:?}", started.elapsed());
    let got = exchange(admin, b"", true)?;
    ensure!(got.is_empty(), "nothing sent: {got:?}");
    ensure!(get(admin, "/healthz")?.0 == 200, "healthz after the cut heads");
    Ok(())
}

/// The limit of a head is its size (8 KiB), not its number of headers: a
/// head of 8192 bytes, or of 1,000 tiny headers, is served; 8193 bytes are
/// 431.
#[test]
fn the_head_limit_is_8_kib_whatever_the_headers() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let sized = |len: usize| {
        let mut h = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
        let pad = len - h.len() - 4;
        h.extend(std::iter::repeat_n(b'a', pad));
        h.extend(b"\r\n\r\n");
        assert_eq!(h.len(), len);
        h
    };
    ensure!(exchange(admin, &sized(8192), false)? == HEALTHY, "a head of 8192 bytes is not served");
    let over = exchange(admin, &sized(8193), false)?;
    ensure!(over.starts_with("HTTP/1.1 431 "), "8193 bytes: {over:?}");
    let mut many = b"GET /healthz HTTP/1.1\r\n".to_vec();
    for i in 0..1000 {
        many.extend(format!("h{}:\r\n", i % 10).as_bytes());
    }
    many.extend(b"\r\n");
    ensure!(many.len() <= 8192, "{} bytes", many.len());
    let got = exchange(admin, &many, false)?;
    ensure!(got == HEALTHY, "1,000 headers in {} bytes: {got:?}", many.len());
    Ok(())
}

/// Clients that trickle a head or never send one hold only their own
/// slots: another client is answered at once, not after their deadline.
#[test]
fn slow_admin_clients_do_not_hold_back_another() -> io::Result<()> {
    let (_d, admin) = admin_daemon(1, "")?;
    let mut slow = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))?;
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost")?;
        }
        slow.push(s);
    }
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (code, body) = get(admin, "/healthz")?;
        ensure!((code, body.as_str()) == (200, "ok\n"), "/healthz beside slow clients: {code} {body:?}");
        ensure!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    }
    drop(slow);
    Ok(())
}
