//! SPEC §2 and §3 `ipv6_only` (issue 11): `[::1]` and `[::]` serve IPv6;
//! `ipv6_only = false` makes `[::]` dual stack (127.0.0.1 served through
//! it, logged as IPv4), `true` (the default) leaves IPv4 alone; a start
//! where another process holds the IPv4 side of a dual-stack port is
//! refused (71), and a configuration that lists both is a configuration
//! error (78).

use crate::ensure;
use crate::util::{Client, Daemon, TempDir, ensure_bytes_eq, fail, fields, lines_with, run_bin};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn v6_daemon(listen: &str, ipv6_only: bool, workers: usize) -> io::Result<Daemon> {
    let config = format!("[server]\nipv6_only = {ipv6_only}\n[log]\naccess = true\n");
    Daemon::builder().workers(workers).no_default_listen().args(["--listen", listen]).config(&config).start()
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}")), port)
}

/// One round trip to `addr`; the client's own address.
fn roundtrip(addr: SocketAddr) -> io::Result<SocketAddr> {
    let c = Client::connect(addr)?;
    let me = c.stream.local_addr()?;
    ensure_bytes_eq(&format!("through {addr}"), &c.roundtrip(b"Hello\nIPv6")?, b"Uryyb\nVCi6")?;
    Ok(me)
}

/// The access record of client `me` names it as `client`.
fn logged_client(d: &Daemon, me: SocketAddr, want: &str) -> io::Result<()> {
    let pat = format!("peer={want} ");
    d.log().wait_count(&["access", &pat], 1, T)?;
    let line = lines_with(&d.log().text(), &["access", &pat]).remove(0);
    ensure!(fields(&line).get("client").map(String::as_str) == Some(want), "client {me} logged as: {line}");
    Ok(())
}

#[test]
fn serves_on_ipv6_loopback() -> io::Result<()> {
    for workers in [0, 2] {
        let d = v6_daemon("[::1]:0", true, workers)?;
        ensure!(d.addr().is_ipv6() && d.addr().ip().is_loopback(), "listening on {}", d.addr());
        let me = roundtrip(d.addr())?;
        logged_client(&d, me, &me.to_string())?;
    }
    Ok(())
}

/// `ipv6_only = false`: the `[::]` socket takes 127.0.0.1 too; the client
/// is logged as `127.0.0.1:PORT`, not as a v4-mapped IPv6 address.
#[test]
fn dual_stack_serves_ipv4_through_the_ipv6_wildcard() -> io::Result<()> {
    for workers in [0, 2] {
        let d = v6_daemon("[::]:0", false, workers)?;
        let port = d.addr().port();
        ensure!(d.addr() == at("::", port), "listening on {}", d.addr());
        let me = roundtrip(at("127.0.0.1", port))?;
        ensure!(me.is_ipv4(), "{me}");
        logged_client(&d, me, &me.to_string())?;
        let me = roundtrip(at("::1", port))?;
        logged_client(&d, me, &me.to_string())?;
    }
    Ok(())
}

/// `ipv6_only = true` (the default): the `[::]` socket holds no IPv4 port:
/// another process binds 127.0.0.1 on the same port.
#[test]
fn ipv6_only_leaves_ipv4_alone() -> io::Result<()> {
    let d = Daemon::builder().workers(1).no_default_listen().args(["--listen", "[::]:0"]).start()?;
    let port = d.addr().port();
    roundtrip(at("::1", port))?;
    let v4 = TcpListener::bind(at("127.0.0.1", port)).map_err(|e| fail(format!("127.0.0.1:{port} is held: {e}")))?;
    drop(v4);
    Ok(())
}

/// Another process listens on 127.0.0.1:P: a dual-stack `[::]:P` is
/// refused at start (71, naming the address), whatever the worker count;
/// an IPv6-only one starts.
#[test]
fn dual_stack_is_refused_where_another_process_holds_ipv4() -> io::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let dir = TempDir::new()?;
    let listen = format!("[::]:{port}");
    for (ipv6_only, want) in [(false, Some(71)), (true, None)] {
        let cfg = dir.join(&format!("v6only-{ipv6_only}.toml"));
        std::fs::write(&cfg, format!("[server]\nipv6_only = {ipv6_only}\n"))?;
        let cfg = cfg.to_string_lossy().into_owned();
        match want {
            Some(code) => {
                for workers in ["0", "2"] {
                    let out = run_bin(&["-c", &cfg, "--listen", &listen, "--workers", workers], &[], T)?;
                    ensure!(out.code == Some(code), "ipv6_only = {ipv6_only}: exit {:?}:\n{}", out.code, out.stderr);
                    ensure!(out.stderr.contains(&listen), "the message does not name {listen}:\n{}", out.stderr);
                }
            }
            None => {
                let d =
                    Daemon::builder().workers(1).no_default_listen().args(["-c", &cfg, "--listen", &listen]).start()?;
                roundtrip(at("::1", port))?;
                drop(d);
            }
        }
    }
    drop(taken);
    Ok(())
}

/// Listing `0.0.0.0:P` and `[::]:P` with `ipv6_only = false` cannot work:
/// a configuration error naming the file, line and key.
#[test]
fn dual_stack_beside_ipv4_on_one_port_is_a_configuration_error() -> io::Result<()> {
    let dir = TempDir::new()?;
    let cfg = dir.join("overlap.toml");
    std::fs::write(&cfg, "[server]\nipv6_only = false\nlisten = [\"0.0.0.0:40713\",\n  \"[::]:40713\"]\n")?;
    let cfg = cfg.to_string_lossy().into_owned();
    let out = run_bin(&["-c", &cfg, "--check-config"], &[], T)?;
    ensure!(out.code == Some(78), "exit {:?}:\n{}", out.code, out.stderr);
    ensure!(
        out.stderr.contains(&format!("{cfg}:4"))
            && out.stderr.contains("server.listen")
            && out.stderr.contains("overlaps"),
        "the message does not name file, line and key:\n{}",
        out.stderr
    );
    Ok(())
}
