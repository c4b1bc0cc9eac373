//! `rot13d probe ADDR [--timeout SECS] [--proxy-protocol MODE]` (SPEC §2)
//! against the real daemon:
//! exit 0 with one line while it serves, exit 1 with a one-line reason when
//! nothing answers, and the serving options untouched by the subcommand.

use crate::ensure;
use crate::util::{Daemon, Output, run_bin};
use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn one_line(what: &str, text: &str) -> io::Result<()> {
    ensure!(text.lines().count() == 1 && text.ends_with('\n'), "{what}: not one line: {text:?}");
    Ok(())
}

fn ensure_unhealthy(out: &Output, reason: &str) -> io::Result<()> {
    ensure!(out.code == Some(1), "exit {:?}, want 1; stderr: {}", out.code, out.stderr);
    ensure!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    one_line("stderr", &out.stderr)?;
    ensure!(out.stderr.starts_with("unhealthy: ") && out.stderr.contains(reason), "no {reason:?} in {:?}", out.stderr);
    Ok(())
}

/// A healthy probe's output: one line naming `addr` on stdout, nothing on
/// stderr.
fn ensure_healthy_line(out: &Output, addr: &str) -> io::Result<()> {
    one_line("stdout", &out.stdout)?;
    ensure!(out.stdout.starts_with(&format!("healthy: {addr} answered ROT13 in ")), "{:?}", out.stdout);
    ensure!(out.stderr.is_empty(), "stderr: {:?}", out.stderr);
    Ok(())
}

#[test]
fn probe_is_healthy_against_a_serving_daemon() -> io::Result<()> {
    for workers in [0, 2] {
        let d = Daemon::start(workers, &[])?;
        let addr = d.addr().to_string();
        let out = run_bin(&["probe", &addr], &[], T)?;
        ensure!(out.code == Some(0), "workers={workers}: exit {:?}; stderr: {}", out.code, out.stderr);
        ensure_healthy_line(&out, &addr)?;
    }
    Ok(())
}

#[test]
fn probe_is_healthy_when_max_line_cuts_its_line() -> io::Result<()> {
    // The probe line is longer than 5 bytes: the answer comes in pieces.
    let d = Daemon::start(0, &["--max-line", "5"])?;
    let addr = d.addr().to_string();
    let out = run_bin(&["probe", &addr], &[], T)?;
    ensure!(out.code == Some(0), "exit {:?}; stderr: {}", out.code, out.stderr);
    ensure_healthy_line(&out, &addr)
}

/// Behind a load balancer (`proxy_protocol` on) the probe begins with a
/// header that names no client, as the server's mode takes it; without
/// one, the server closes unanswered and the probe says so.
#[test]
fn probe_speaks_the_proxy_protocol_of_the_server() -> io::Result<()> {
    for mode in ["v1", "v2", "any"] {
        let config = format!("[server]\nproxy_protocol = \"{mode}\"\n");
        let d = Daemon::builder().workers(0).config(&config).start()?;
        let addr = d.addr().to_string();
        let out = run_bin(&["probe", &addr, "--proxy-protocol", mode], &[], T)?;
        ensure!(out.code == Some(0), "{mode}: exit {:?}; stderr: {}", out.code, out.stderr);
        ensure_healthy_line(&out, &addr)?;
        ensure_unhealthy(&run_bin(&["probe", &addr], &[], T)?, "closed without answering")?;
    }
    let out = run_bin(&["probe", "127.0.0.1:1", "--proxy-protocol", "v3"], &[], T)?;
    ensure!(out.code == Some(64), "--proxy-protocol v3: exit {:?}", out.code);
    Ok(())
}

#[test]
fn probe_is_unhealthy_once_the_daemon_stopped() -> io::Result<()> {
    let mut d = Daemon::start(1, &[])?;
    let addr = d.addr().to_string();
    d.signal(libc::SIGTERM)?;
    let status = d.wait_exit(T)?;
    ensure!(status.code() == Some(0), "graceful stop: {status:?}");
    let out = run_bin(&["probe", &addr], &[], T)?;
    ensure_unhealthy(&out, "connect: Connection refused")
}

#[test]
fn probe_of_a_server_that_never_answers_times_out() -> io::Result<()> {
    // The kernel completes the handshake into the backlog; nobody reads.
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?.to_string();
    let started = Instant::now();
    let out = run_bin(&["probe", &addr, "--timeout", "0.5"], &[], T)?;
    let took = started.elapsed();
    ensure_unhealthy(&out, "timed out after 500ms waiting for the answer")?;
    ensure!(took >= Duration::from_millis(500) && took < Duration::from_secs(5), "took {took:?}");
    Ok(())
}

#[test]
fn probe_usage_errors_exit_64() -> io::Result<()> {
    for args in [&["probe"][..], &["probe", "127.0.0.1:1", "--timeout", "-1"], &["-w", "2", "probe", "127.0.0.1:1"]] {
        let out = run_bin(args, &[], T)?;
        ensure!(out.code == Some(64), "{args:?}: exit {:?}; stderr: {}", out.code, out.stderr);
    }
    Ok(())
}
