//! SPEC §2 systemd: `Type=notify` messages to `NOTIFY_SOCKET` (READY=1 once
//! every worker serves, RELOADING=1/READY=1 around a reload, STOPPING=1,
//! WATCHDOG=1 every half of `WATCHDOG_USEC`), and socket activation
//! (`LISTEN_FDS`/`LISTEN_PID`, `LISTEN_FDNAMES` naming the admin socket).

use crate::ensure;
use crate::util::{Daemon, Notify, TempDir, fail, log_time};
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(10);

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

#[test]
fn log_time_parses_rfc3339() {
    assert_eq!(log_time("1970-01-01T00:00:00.000000Z  INFO x"), Some(0.0));
    assert_eq!(log_time("2000-03-01T00:00:01.5Z x"), Some(951_868_801.5));
}

/// READY=1 comes after every worker logged its reactor (the log lines carry
/// earlier timestamps than READY's arrival); then STOPPING=1 on SIGTERM.
#[test]
fn ready_after_every_worker_serves() -> io::Result<()> {
    let n = Notify::new()?;
    // Receive concurrently with the start, so the arrival time is READY's.
    let rx = Notify { sock: n.sock.try_clone()?, dir: TempDir::new()?, path: n.path.clone() };
    let waiter = std::thread::spawn(move || rx.until("READY=1", T));
    let mut d = Daemon::builder().workers(2).env("NOTIFY_SOCKET", &n.path).start()?;
    let (_, ready_at) = waiter.join().map_err(|_| fail("waiter panicked"))??;
    let text = d.log().text();
    let reactors: Vec<f64> = text.lines().filter(|l| l.contains("reactor backend=")).filter_map(log_time).collect();
    ensure!(reactors.len() == 2, "reactor lines: {reactors:?}\n{text}");
    for r in &reactors {
        ensure!(
            (*r * 1e6) as i64 <= (secs(ready_at) * 1e6) as i64,
            "READY=1 arrived at {:.6} before a worker logged its reactor at {r:.6}\n{text}",
            secs(ready_at)
        );
    }
    d.signal(libc::SIGTERM)?;
    n.until("STOPPING=1", T)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

/// `NOTIFY_SOCKET=@NAME` is an abstract socket (SPEC §2: a path, or `@`
/// for an abstract name): READY=1, RELOADING=1 / READY=1, STOPPING=1
/// arrive there.
#[test]
fn notify_socket_with_an_abstract_name() -> io::Result<()> {
    let n = Notify::abstract_name()?;
    let mut d = Daemon::builder().workers(1).env("NOTIFY_SOCKET", &n.path).start()?;
    n.until("READY=1", T)?;
    d.signal(libc::SIGHUP)?;
    n.until("RELOADING=1", T)?;
    n.until("READY=1", T)?;
    d.signal(libc::SIGTERM)?;
    n.until("STOPPING=1", T)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

/// RELOADING=1 then READY=1 around a reload; STOPPING=1 at SIGQUIT too.
fn notify_reload_and_stop(workers: usize) -> io::Result<()> {
    let n = Notify::new()?;
    let mut d = Daemon::builder().workers(workers).config("[server]\n").env("NOTIFY_SOCKET", &n.path).start()?;
    n.until("READY=1", T)?;
    d.signal(libc::SIGHUP)?;
    let (seen, _) = n.until("RELOADING=1", T)?;
    ensure!(seen.len() == 1, "before RELOADING=1: {seen:?}");
    n.until("READY=1", T)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    d.signal(libc::SIGQUIT)?;
    n.until("STOPPING=1", T)?;
    let s = d.wait_exit(T)?;
    ensure!(s.code() == Some(0), "exit {s:?}");
    Ok(())
}

#[test]
fn notify_reload_and_stop_w1() -> io::Result<()> {
    notify_reload_and_stop(1)
}

#[test]
fn notify_reload_and_stop_w0() -> io::Result<()> {
    notify_reload_and_stop(0)
}

/// WATCHDOG_USEC = 400 ms: WATCHDOG=1 about every 200 ms.
#[test]
fn watchdog_pings_every_half_interval() -> io::Result<()> {
    let n = Notify::new()?;
    let _d = Daemon::builder().workers(1).env("NOTIFY_SOCKET", &n.path).env("WATCHDOG_USEC", "400000").start()?;
    n.until("READY=1", T)?;
    let t0 = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        n.until("WATCHDOG=1", Duration::from_secs(2))?;
        pings += 1;
    }
    let took = t0.elapsed();
    // 5 pings at 200 ms: at least ~0.8 s (the first may come at once).
    ensure!(took >= Duration::from_millis(750), "5 WATCHDOG=1 in {took:?}: more often than every 200 ms");
    ensure!(took <= Duration::from_secs(3), "5 WATCHDOG=1 took {took:?}");
    Ok(())
}

/// Socket activation: with `LISTEN_FDS=1` and `LISTEN_PID` = the daemon's
/// pid, fd 3 replaces `--listen`; every worker serves on it.
#[test]
fn socket_activation_replaces_listen() -> io::Result<()> {
    let (listener, addr, prefix) = activation_prefix()?;
    let d = Daemon::builder().workers(2).sh_prefix(&prefix).start()?;
    drop(listener);
    d.log().wait_count(&["socket-activated"], 1, T)?;
    let text = d.log().text();
    ensure!(d.addr() == addr, "daemon listens on {}, want the activated {addr}:\n{text}", d.addr());
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "--listen not replaced:\n{text}");
    for i in 0..10 {
        let l = format!("activated {i}\n");
        let got = crate::util::Client::connect(addr)?.roundtrip(l.as_bytes())?;
        crate::util::ensure_bytes_eq("activated", &got, &crate::util::rot13_model(l.as_bytes(), 16384))?;
    }
    Ok(())
}

/// A listening socket to pass as fd 3, its address, and the shell prefix
/// that passes it: the socket is inherited by the shell (this test process
/// spawns nothing else in between), which moves it to fd 3 and execs the
/// daemon with its own pid in `LISTEN_PID`.
fn activation_prefix() -> io::Result<(std::net::TcpListener, std::net::SocketAddr, String)> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let fd = listener.as_raw_fd();
    rot13d::sys::set_cloexec(fd, false)?;
    let prefix = if fd == 3 {
        "LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS;".to_string()
    } else {
        format!("exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS;")
    };
    Ok((listener, addr, prefix))
}

/// Socket activation with an admin endpoint, then a reload: the admin
/// listener is bound from the file as usual, and the reload keeps serving
/// on the activated socket (it neither binds `[server].listen` nor tries to
/// grow the passed socket into a reuseport group).
fn socket_activation_with_admin_and_reload(workers: usize) -> io::Result<()> {
    let (listener, addr, prefix) = activation_prefix()?;
    let d =
        Daemon::builder().workers(workers).config("[admin]\nlisten = \"127.0.0.1:0\"\n").sh_prefix(&prefix).start()?;
    drop(listener);
    d.log().wait_count(&["socket-activated"], 1, T)?;
    d.log().wait_count(&["listening", "kind=admin"], 1, T)?;
    let roundtrip = |tag: &str| -> io::Result<()> {
        let got = crate::util::Client::connect(addr)?.roundtrip(b"activated\n")?;
        crate::util::ensure_bytes_eq(tag, &got, b"npgvingrq\n")
    };
    roundtrip("before the reload")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    if workers > 0 {
        d.log().wait_count(&["reactor", "generation=2"], workers, T)?;
    }
    for i in 0..4 {
        roundtrip(&format!("after the reload, {i}"))?;
    }
    let text = d.log().text();
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "a rot13 listener was bound on reload:\n{text}");
    ensure!(d.log().count(&["ERROR"]) + d.log().count(&["WARN"]) == 0, "errors or warnings:\n{text}");
    Ok(())
}

#[test]
fn socket_activation_with_admin_and_reload_w2() -> io::Result<()> {
    socket_activation_with_admin_and_reload(2)
}

#[test]
fn socket_activation_with_admin_and_reload_w0() -> io::Result<()> {
    socket_activation_with_admin_and_reload(0)
}

/// Listening sockets on 127.0.0.1 to pass as fds 3, 4, ... and the
/// wrapper that passes them: `bash -c` (dash knows fds 0-9 only) moves each
/// inherited socket out of the way, then to its place from 3, sets
/// `LISTEN_PID` to its own pid, `LISTEN_FDS` and, if given,
/// `LISTEN_FDNAMES`, and execs the daemon (which keeps the pid).
fn activation(n: usize, names: Option<&str>) -> io::Result<(Vec<std::net::TcpListener>, Vec<String>)> {
    use std::os::fd::AsRawFd;
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
    let mut script = String::new();
    for (i, l) in listeners.iter().enumerate() {
        rot13d::sys::set_cloexec(l.as_raw_fd(), false)?;
        script += &format!("exec {}<&{fd} {fd}<&-; ", 100 + i, fd = l.as_raw_fd());
    }
    for i in 0..n {
        script += &format!("exec {}<&{} {}<&-; ", 3 + i, 100 + i, 100 + i);
    }
    script += &format!("export LISTEN_PID=$$ LISTEN_FDS={n}; ");
    if let Some(names) = names {
        script += &format!("export LISTEN_FDNAMES='{names}'; ");
    }
    script += "exec \"$0\" \"$@\"";
    Ok((listeners, vec!["bash".into(), "-c".into(), script]))
}

/// `LISTEN_FDNAMES=rot13:admin`: the socket named `admin` is the admin
/// endpoint (before, every passed socket was served as rot13, so the admin
/// socket answered `GET /healthz` with its ROT13); the configuration's
/// `[admin] listen` is not bound, then or at a reload, which keeps both
/// passed sockets.
fn socket_activation_names_the_admin_socket(workers: usize) -> io::Result<()> {
    let (listeners, wrapper) = activation(2, Some("rot13:admin"))?;
    let (rot13, admin) = (listeners[0].local_addr()?, listeners[1].local_addr()?);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d =
        Daemon::builder().workers(workers).config("[admin]\nlisten = \"127.0.0.2:0\"\n").wrapper(&wrapper).start()?;
    drop(listeners);
    // /healthz says 200 once the master has heard every worker's READY.
    d.wait_for_log(" ready ", T)?;
    d.log().wait_count(&["socket-activated", "rot13=1", "admin=1"], 1, T)?;
    ensure!(d.addr() == rot13, "serving rot13 on {}, want the passed {rot13}:\n{}", d.addr(), d.log().text());
    ensure!(crate::util::nth_admin_addr(&d, 0)? == admin, "admin endpoint not the passed {admin}:\n{}", d.log().text());
    let check = |when: &str| -> io::Result<()> {
        let (code, body) = crate::util::get(admin, "/healthz")?;
        ensure!(code == 200 && body == "ok\n", "{when}: /healthz on the passed admin socket: {code} {body:?}");
        let (code, body) = crate::util::get(admin, "/metrics")?;
        ensure!(code == 200 && body.contains("# TYPE rot13d_lines_total counter"), "{when}: /metrics: {code}");
        let got = crate::util::Client::connect(rot13)?.roundtrip(b"passed\n")?;
        crate::util::ensure_bytes_eq(when, &got, b"cnffrq\n")
    };
    check("at start")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    if workers > 0 {
        d.log().wait_count(&["reactor", "generation=2"], workers, T)?;
    }
    check("after a reload")?;
    let text = d.log().text();
    ensure!(d.log().count(&["listening", "kind=admin"]) == 1, "an admin listener was bound:\n{text}");
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "a rot13 listener was bound:\n{text}");
    ensure!(!text.contains("127.0.0.2"), "the file's admin address was used:\n{text}");
    ensure!(d.log().count(&["ERROR"]) + d.log().count(&["WARN"]) == 0, "errors or warnings:\n{text}");
    Ok(())
}

#[test]
fn socket_activation_names_the_admin_socket_w2() -> io::Result<()> {
    socket_activation_names_the_admin_socket(2)
}

#[test]
fn socket_activation_names_the_admin_socket_w0() -> io::Result<()> {
    socket_activation_names_the_admin_socket(0)
}

/// Only an admin socket passed: the rot13 listeners come from the
/// configuration (here `--listen 127.0.0.1:0`), bound by the daemon.
#[test]
fn socket_activation_of_the_admin_socket_alone() -> io::Result<()> {
    let (listeners, wrapper) = activation(1, Some("admin"))?;
    let admin = listeners[0].local_addr()?;
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d = Daemon::builder().workers(1).wrapper(&wrapper).start()?;
    drop(listeners);
    d.wait_for_log(" ready ", T)?;
    ensure!(d.addr() != admin && d.addr().port() != 0, "rot13 on {}", d.addr());
    ensure!(crate::util::nth_admin_addr(&d, 0)? == admin, "admin endpoint:\n{}", d.log().text());
    ensure!(crate::util::get(admin, "/healthz")?.0 == 200, "/healthz on the passed socket");
    crate::util::ensure_bytes_eq("bound rot13", &d.roundtrip(b"bound\n")?, b"obhaq\n")
}

/// `LISTEN_FDNAMES` that does not fit `LISTEN_FDS`, or names two sockets
/// `admin`: refused at start, exit 78, naming the variable.
#[test]
fn listen_fdnames_that_do_not_fit_are_refused() -> io::Result<()> {
    for (n, names, why) in [(1, "rot13:admin", "names 2 sockets"), (2, "admin:admin", "more than one")] {
        let (listeners, wrapper) = activation(n, Some(names))?;
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let out = crate::util::run_wrapped(&wrapper, &["--listen", "127.0.0.1:0"], &[], T)?;
        drop(listeners);
        ensure!(out.code == Some(78), "{names} for {n} fds: exit {:?}\n{}", out.code, out.stderr);
        ensure!(out.stderr.contains("LISTEN_FDNAMES") && out.stderr.contains(why), "{names}: {}", out.stderr);
    }
    Ok(())
}

/// `LISTEN_PID` naming another process: the passed fds are not ours;
/// `--listen` applies.
#[test]
fn socket_activation_for_another_pid_is_ignored() -> io::Result<()> {
    let d = Daemon::builder().workers(1).env("LISTEN_PID", "1").env("LISTEN_FDS", "1").start()?;
    ensure!(d.log().count(&["socket-activated"]) == 0, "used fds meant for pid 1:\n{}", d.log().text());
    crate::util::ensure_bytes_eq("own listener", &d.roundtrip(b"own\n")?, b"bja\n")
}

/// `[admin] listen` is checked for overlap with `[server] listen` on the
/// addresses actually used: a file whose two addresses clash (here
/// `0.0.0.0:P` over `127.0.0.1:P`, P a port this test holds so that
/// nothing could bind it) starts when both are replaced by passed sockets,
/// and keeps serving across a reload (which checks the file again).
/// Before, it was refused with exit 78 although socket activation replaced
/// both addresses.
fn overlap_replaced_by_passed_sockets(workers: usize) -> io::Result<()> {
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let p = held.local_addr()?.port();
    let (listeners, wrapper) = activation(2, Some("rot13:admin"))?;
    let (rot13, admin) = (listeners[0].local_addr()?, listeners[1].local_addr()?);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let config = format!("[server]\nlisten = [\"127.0.0.1:{p}\"]\n[admin]\nlisten = \"0.0.0.0:{p}\"\n");
    let d = Daemon::builder().workers(workers).no_default_listen().config(&config).wrapper(&wrapper).start()?;
    drop(listeners);
    d.wait_for_log(" ready ", T)?;
    ensure!(d.addr() == rot13, "serving rot13 on {}, want the passed {rot13}:\n{}", d.addr(), d.log().text());
    let (code, body) = crate::util::get(admin, "/healthz")?;
    ensure!(code == 200 && body == "ok\n", "/healthz on the passed admin socket: {code} {body:?}");
    crate::util::ensure_bytes_eq("passed", &crate::util::Client::connect(rot13)?.roundtrip(b"passed\n")?, b"cnffrq\n")?;
    d.signal(libc::SIGHUP)?;
    d.log().wait_count(&["reloaded"], 1, T)?;
    let text = d.log().text();
    ensure!(d.log().count(&["ERROR"]) + d.log().count(&["WARN"]) == 0, "errors or warnings:\n{text}");
    ensure!(!text.contains(&format!(":{p}")), "the file's addresses were used:\n{text}");
    drop(held);
    Ok(())
}

#[test]
fn overlap_replaced_by_passed_sockets_w0() -> io::Result<()> {
    overlap_replaced_by_passed_sockets(0)
}

#[test]
fn overlap_replaced_by_passed_sockets_w2() -> io::Result<()> {
    overlap_replaced_by_passed_sockets(2)
}

/// The other way round: only the rot13 socket is passed, and the file's
/// `[admin] listen` is the wildcard on its port. The overlap is with the
/// address in use, so it is a configuration error (78, naming
/// `admin.listen`), not a bind failure (71) after the check passed on the
/// file's own, replaced `[server] listen`.
#[test]
fn admin_overlapping_a_passed_socket_is_a_config_error() -> io::Result<()> {
    let (listeners, wrapper) = activation(1, None)?;
    let p = listeners[0].local_addr()?.port();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let dir = TempDir::new()?;
    let path = dir.join("rot13d.toml");
    std::fs::write(&path, format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"0.0.0.0:{p}\"\n"))?;
    let path = path.display().to_string();
    let out = crate::util::run_wrapped(&wrapper, &["-c", &path, "--workers", "1"], &[], T)?;
    drop(listeners);
    ensure!(out.code == Some(78), "exit {:?}, want 78:\n{}", out.code, out.stderr);
    ensure!(
        out.stderr.contains("admin.listen") && out.stderr.contains(&format!("0.0.0.0:{p} overlaps 127.0.0.1:{p}")),
        "{}",
        out.stderr
    );
    Ok(())
}
