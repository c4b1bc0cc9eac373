//! SPEC §2 and §3 from the outside: exit codes (64 usage, 71 OS, 78
//! configuration), what the messages name, the one-shot modes, and
//! `--daemon --pid-file`.

use crate::ensure;
use crate::util::{Client, Log, Output, TempDir, alive, kill, kill_tree, parse_listen_addr, poll_until, run_bin};
use std::io;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// Runs a serving command line that must fail at start (bounded; the
/// options keep it on loopback in one process).
fn run_serving(extra: &[&str], env: &[(&str, &str)]) -> io::Result<Output> {
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "0"];
    args.extend_from_slice(extra);
    run_bin(&args, env, T)
}

fn ensure_code(what: &str, out: &Output, code: i32) -> io::Result<()> {
    ensure!(out.code == Some(code), "{what}: exit {:?}, want {code}; stderr:\n{}", out.code, out.stderr);
    Ok(())
}

/// `path` given to a start (serving on 127.0.0.1:0, no workers) and to
/// `--check-config`, which predicts a start: both must exit `code`; each
/// output with the arguments it came from, for the caller's message checks.
fn start_and_check_config(path: &str, code: i32) -> io::Result<[(String, Output); 2]> {
    let start = run_serving(&["-c", path], &[])?;
    let check = run_bin(&["--check-config", path], &[], T)?;
    let outs = [(format!("-c {path} (a start)"), start), (format!("--check-config {path}"), check)];
    for (what, out) in &outs {
        ensure_code(what, out, code)?;
    }
    Ok(outs)
}

/// Writes `text` as `name` in `dir`; its path as a string.
fn write(dir: &TempDir, name: &str, text: &str) -> io::Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

#[test]
fn unknown_option_exits_64() -> io::Result<()> {
    let out = run_bin(&["--bogus"], &[], T)?;
    ensure_code("--bogus", &out, 64)?;
    ensure!(out.stderr.contains("--bogus"), "stderr does not name the option:\n{}", out.stderr);
    Ok(())
}

#[test]
fn unparsable_values_exit_64() -> io::Result<()> {
    for args in [
        &["--workers", "many"][..],
        &["--max-line", "x"],
        &["--listen", "nowhere"],
        &["--log-level", "loud"],
        &["--workers"],
        &["stray"],
    ] {
        let out = run_bin(args, &[], T)?;
        ensure_code(&format!("{args:?}"), &out, 64)?;
    }
    Ok(())
}

#[test]
fn daemon_without_pid_file_exits_64() -> io::Result<()> {
    let out = run_bin(&["--daemon", "--listen", "127.0.0.1:0"], &[], T)?;
    ensure_code("--daemon", &out, 64)?;
    ensure!(out.stderr.contains("--pid-file"), "stderr does not name --pid-file:\n{}", out.stderr);
    Ok(())
}

#[test]
fn version_and_help_exit_0() -> io::Result<()> {
    for flag in ["--version", "-V"] {
        let out = run_bin(&[flag], &[], T)?;
        ensure_code(flag, &out, 0)?;
        ensure!(out.stdout.trim() == "rot13d 0.1.0", "{flag}: {:?}", out.stdout);
    }
    for flag in ["--help", "-h"] {
        let out = run_bin(&[flag], &[], T)?;
        ensure_code(flag, &out, 0)?;
        for opt in ["--listen", "--workers", "--backend", "--max-line", "--daemon", "--pid-file", "--check-config"] {
            ensure!(out.stdout.contains(opt), "{flag} lacks {opt}:\n{}", out.stdout);
        }
    }
    Ok(())
}

#[test]
fn list_backends_prints_fastest_first() -> io::Result<()> {
    let out = run_bin(&["--list-backends"], &[], T)?;
    ensure_code("--list-backends", &out, 0)?;
    // uring is listed only where io_uring works (kernel, seccomp, sysctl).
    let uring =
        if rot13d::reactor::BackendKind::Uring.available().is_ok() { "uring et,o1,fds,early_close\n" } else { "" };
    let want = format!("epoll et,o1,early_close\npoll fds,early_close\nselect fds\n{uring}");
    ensure!(out.stdout == want, "--list-backends printed {:?}, not {want:?}", out.stdout);
    Ok(())
}

/// Where io_uring is forbidden (EPERM: Docker's default seccomp profile,
/// systemd's SystemCallFilter=, kernel.io_uring_disabled) or missing
/// (ENOSYS: an old kernel): a seccomp filter on this test's thread, which
/// the processes it starts inherit, makes io_uring_setup fail so. uring is
/// then absent from --list-backends with the reason on stderr, asking for
/// it is a configuration error (78) saying why, and a base that avoids
/// epoll falls back to poll.
#[test]
fn uring_where_io_uring_is_forbidden_or_missing() -> io::Result<()> {
    for (errno, why) in [(libc::EPERM, "seccomp filter forbids io_uring"), (libc::ENOSYS, "the kernel has no io_uring")]
    {
        // A thread of its own: the filter stays with it (and its children).
        std::thread::spawn(move || -> io::Result<()> {
            rot13d::sys::uring::refuse_io_uring_setup(errno)?;
            let mut cfg = rot13d::reactor::EventConfig::new();
            cfg.set_flag(rot13d::reactor::BaseFlags::IGNORE_ENV).avoid("epoll").avoid("poll").avoid("select");
            match rot13d::reactor::EventBase::with_config(&cfg) {
                Err(rot13d::reactor::BaseError::Unavailable { backend: "uring", reason }) => {
                    ensure!(reason.contains(why), "errno {errno}: the reason {reason:?} does not say {why:?}")
                }
                other => return Err(crate::util::fail(format!("errno {errno}: a uring base gave {other:?}"))),
            }
            let mut cfg = rot13d::reactor::EventConfig::new();
            cfg.set_flag(rot13d::reactor::BaseFlags::IGNORE_ENV).avoid("epoll");
            ensure!(rot13d::reactor::EventBase::with_config(&cfg)?.backend_name() == "poll", "no fallback to poll");

            let out = run_bin(&["--list-backends"], &[], T)?;
            ensure_code("--list-backends", &out, 0)?;
            ensure!(!out.stdout.contains("uring"), "uring listed where io_uring_setup fails: {:?}", out.stdout);
            ensure!(
                out.stderr.contains("uring is not available") && out.stderr.contains(why),
                "--list-backends does not say why uring is absent:\n{}",
                out.stderr
            );
            let out = run_serving(&["--backend", "uring"], &[])?;
            ensure_code("--backend uring", &out, 78)?;
            ensure!(
                out.stderr.contains("uring backend is not available") && out.stderr.contains(why),
                "errno {errno}: stderr does not say why:\n{}",
                out.stderr
            );
            Ok(())
        })
        .join()
        .map_err(|_| crate::util::fail("the test thread panicked"))??;
    }
    Ok(())
}

#[test]
fn event_nouring_disables_uring() -> io::Result<()> {
    let out = run_serving(&["--backend", "uring"], &[("EVENT_NOURING", "")])?;
    ensure_code("--backend uring with EVENT_NOURING", &out, 78)?;
    ensure!(out.stderr.contains("disabled by environment: uring"), "stderr:\n{}", out.stderr);
    Ok(())
}

/// One bad configuration: its text, the line and the key the message must
/// name.
struct Bad {
    what: &'static str,
    text: &'static str,
    line: usize,
    key: &'static str,
}

const BAD_CONFIGS: [Bad; 4] = [
    Bad { what: "unknown key", text: "[server]\nworkers = 0\nbogus = 1\n", line: 3, key: "bogus" },
    Bad { what: "wrong type", text: "[server]\nworkers = 0\n\nmax_line = \"long\"\n", line: 4, key: "max_line" },
    Bad { what: "max_line = 0", text: "# rot13d\n[server]\nmax_line = 0\n", line: 3, key: "max_line" },
    Bad { what: "unknown section key", text: "[reactor]\nbackend = \"epoll\"\nturbo = true\n", line: 3, key: "turbo" },
];

/// The message names the file and `FILE:LINE`, and the key.
fn ensure_names(what: &str, stderr: &str, path: &str, line: usize, key: &str) -> io::Result<()> {
    ensure!(stderr.contains(&format!("{path}:{line}")), "{what}: stderr does not name {path}:{line}:\n{stderr}");
    ensure!(stderr.contains(key), "{what}: stderr does not name the key {key}:\n{stderr}");
    Ok(())
}

#[test]
fn bad_configuration_exits_78_naming_file_line_and_key() -> io::Result<()> {
    let dir = TempDir::new()?;
    for b in &BAD_CONFIGS {
        let path = write(&dir, "bad.toml", b.text)?;
        let out = run_serving(&["-c", &path], &[])?;
        ensure_code(b.what, &out, 78)?;
        ensure_names(b.what, &out.stderr, &path, b.line, b.key)?;
        ensure!(!out.stderr.contains("listening"), "{}: started listening:\n{}", b.what, out.stderr);
    }
    Ok(())
}

#[test]
fn invalid_toml_exits_78_naming_file_and_line() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = write(&dir, "bad.toml", "[server]\nworkers = 0\nmax_line = \n")?;
    let out = run_serving(&["-c", &path], &[])?;
    ensure_code("invalid TOML", &out, 78)?;
    ensure!(out.stderr.contains(&format!("{path}:3")), "stderr does not name {path}:3:\n{}", out.stderr);
    let out = run_bin(&["-c", &path, "--check-config"], &[], T)?;
    ensure_code("invalid TOML, --check-config", &out, 78)
}

#[test]
fn invalid_toml_names_the_key() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = write(&dir, "bad.toml", "[server]\nworkers = 0\nmax_line = \n")?;
    let out = run_serving(&["-c", &path], &[])?;
    ensure_code("invalid TOML", &out, 78)?;
    ensure_names("invalid TOML", &out.stderr, &path, 3, "max_line")
}

#[test]
fn max_line_zero_or_huge_on_command_line_exits_78() -> io::Result<()> {
    for v in ["0", "2000000000"] {
        let out = run_serving(&["--max-line", v], &[])?;
        ensure_code(&format!("--max-line {v}"), &out, 78)?;
        ensure!(out.stderr.contains("--max-line"), "stderr does not name --max-line:\n{}", out.stderr);
    }
    Ok(())
}

#[test]
fn backend_disabled_by_environment_exits_78() -> io::Result<()> {
    // Set to the empty string: any value disables.
    let out = run_serving(&["--backend", "select"], &[("EVENT_NOSELECT", "")])?;
    ensure_code("--backend select with EVENT_NOSELECT", &out, 78)?;
    ensure!(out.stderr.contains("backend"), "stderr does not name the backend:\n{}", out.stderr);
    let out = run_serving(&["--backend", "kqueue"], &[])?;
    ensure_code("--backend kqueue", &out, 78)?;
    // Another backend still works with EVENT_NOSELECT (one-shot check).
    let out = run_bin(&["--backend", "poll", "--check-config"], &[("EVENT_NOSELECT", "")], T)?;
    ensure_code("--backend poll --check-config with EVENT_NOSELECT", &out, 0)?;
    let out = run_bin(&["--backend", "select", "--check-config"], &[("EVENT_NOSELECT", "1")], T)?;
    ensure_code("--backend select --check-config with EVENT_NOSELECT", &out, 78)
}

#[test]
fn address_in_use_exits_71_naming_the_address() -> io::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = run_bin(&["--listen", &addr, "--workers", "1"], &[], T)?;
    ensure_code("address in use", &out, 71)?;
    ensure!(out.stderr.contains(&addr), "stderr does not name {addr}:\n{}", out.stderr);
    let os = io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    let os = os.split(" (os error").next().unwrap_or(&os).to_string();
    ensure!(out.stderr.contains(&os), "stderr does not give the OS error {os:?}:\n{}", out.stderr);
    Ok(())
}

/// A port below `net.ipv4.ip_unprivileged_port_start`, bound without
/// root: exit 71 naming the address and the OS error (SPEC §2).
#[test]
fn permission_denied_exits_71_naming_the_address() -> io::Result<()> {
    if !crate::util::root_or_skip("to start the daemon as nobody") {
        return Ok(());
    }
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    let have = if start > 1 { Ok(()) } else { Err(format!("every port is unprivileged here (start {start})")) };
    if !crate::util::capable("privileged_ports", have) {
        return Ok(());
    }
    let addr = format!("127.0.0.1:{}", start - 1);
    let args = ["--listen", addr.as_str(), "--workers", "1"];
    let out =
        crate::util::run_wrapped(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], &args, &[], T)?;
    ensure_code("permission denied", &out, 71)?;
    let os = io::Error::from_raw_os_error(libc::EACCES).to_string();
    let os = os.split(" (os error").next().unwrap_or(&os).to_string();
    ensure!(
        out.stderr.contains(&format!("cannot listen on {addr}: {os}")),
        "stderr does not name {addr} and {os:?}:\n{}",
        out.stderr
    );
    Ok(())
}

/// A configuration file that cannot be read is a configuration error
/// (78) naming the file and why, at start and for `--check-config`.
#[test]
fn a_missing_configuration_file_exits_78_naming_it() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = dir.join("missing.toml").to_string_lossy().into_owned();
    for (args, out) in start_and_check_config(&path, 78)? {
        ensure!(
            out.stderr.contains(&format!("{path}: cannot read the configuration file: No such file or directory")),
            "{args}: stderr does not name {path} and why:\n{}",
            out.stderr
        );
    }
    Ok(())
}

/// `--check-config` predicts a start: a `[log] file` the daemon could not
/// open fails the check with the start's exit code and message, and a
/// file that can be opened passes without being created by the check.
#[test]
fn check_config_opens_the_log_file_as_a_start_would() -> io::Result<()> {
    let dir = TempDir::new()?;
    let missing = dir.join("no-such-dir").join("rot13d.log").to_string_lossy().into_owned();
    let bad = write(&dir, "bad-log.toml", &format!("[log]\nfile = \"{missing}\"\n"))?;
    let want = format!("rot13d: cannot open the log file {missing}: No such file or directory");
    for (args, out) in start_and_check_config(&bad, 71)? {
        ensure!(out.stderr.contains(&want), "{args}: stderr lacks {want:?}:\n{}", out.stderr);
    }
    let fresh = dir.join("fresh.log");
    let good = write(&dir, "good-log.toml", &format!("[log]\nfile = \"{}\"\n", fresh.display()))?;
    let out = run_bin(&["--check-config", &good], &[], T)?;
    ensure_code("--check-config with a log file that can be created", &out, 0)?;
    ensure!(!fresh.exists(), "--check-config created the log file {}", fresh.display());
    Ok(())
}

#[test]
fn check_config_accepts_good_and_refuses_bad() -> io::Result<()> {
    let dir = TempDir::new()?;
    let good = write(
        &dir,
        "good.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nmax_line = 100\nidle_timeout = 5\n\
         shutdown_grace = 1\n[reactor]\nbackend = \"poll\"\n",
    )?;
    let out = run_bin(&["-c", &good, "--check-config"], &[], T)?;
    ensure_code("good --check-config", &out, 0)?;
    let out = run_bin(&["--check-config"], &[], T)?;
    ensure_code("defaults --check-config", &out, 0)?;
    // `--check-config FILE` is `-c FILE --check-config` (issue 12's form).
    let out = run_bin(&["--check-config", &good], &[], T)?;
    ensure_code("--check-config good", &out, 0)?;
    for b in &BAD_CONFIGS {
        let path = write(&dir, "bad.toml", b.text)?;
        let out = run_bin(&["-c", &path, "--check-config"], &[], T)?;
        ensure_code(&format!("{} --check-config", b.what), &out, 78)?;
        ensure_names(b.what, &format!("{}{}", out.stdout, out.stderr), &path, b.line, b.key)?;
        let out = run_bin(&["--check-config", &path], &[], T)?;
        ensure_code(&format!("--check-config {}", b.what), &out, 78)?;
    }
    let out = run_bin(&["-c", &dir.join("missing.toml").to_string_lossy(), "--check-config"], &[], T)?;
    ensure!(out.code != Some(0), "a missing file passed --check-config");
    Ok(())
}

#[test]
fn print_config_output_passes_check_config() -> io::Result<()> {
    let dir = TempDir::new()?;
    let cfg = write(&dir, "in.toml", "[server]\nmax_line = 123\nidle_timeout = 7\n[reactor]\nbackend = \"poll\"\n")?;
    let out = run_bin(&["-c", &cfg, "--print-config", "--listen", "127.0.0.1:0", "--workers", "3"], &[], T)?;
    ensure_code("--print-config", &out, 0)?;
    for want in ["max_line = 123", "idle_timeout = 7", "\"127.0.0.1:0\"", "workers = 3", "backend = \"poll\""] {
        ensure!(out.stdout.contains(want), "--print-config lacks {want:?}:\n{}", out.stdout);
    }
    let printed = write(&dir, "printed.toml", &out.stdout)?;
    let check = run_bin(&["-c", &printed, "--check-config"], &[], T)?;
    ensure_code("--check-config of --print-config", &check, 0)?;
    // Printing the printed file again gives the same settings (comments
    // aside: the header names the file).
    let again = run_bin(&["-c", &printed, "--print-config"], &[], T)?;
    ensure_code("--print-config again", &again, 0)?;
    let settings = |s: &str| s.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    ensure!(
        settings(&again.stdout) == settings(&out.stdout),
        "not a fixed point:\n{}\n---\n{}",
        out.stdout,
        again.stdout
    );
    // The defaults too.
    let out = run_bin(&["--print-config"], &[], T)?;
    ensure_code("--print-config defaults", &out, 0)?;
    let printed = write(&dir, "defaults.toml", &out.stdout)?;
    ensure_code("defaults --check-config", &run_bin(&["-c", &printed, "--check-config"], &[], T)?, 0)
}

/// Kills the detached daemon (and its workers) on drop.
struct PidGuard(i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        kill_tree(self.0);
    }
}

#[test]
fn daemon_mode_detaches_serves_and_removes_pid_file() -> io::Result<()> {
    let dir = TempDir::new()?;
    let pid_file = dir.join("rot13d.pid");
    let mut launcher = Command::new(crate::util::BIN)
        .args(["--daemon", "--pid-file"])
        .arg(&pid_file)
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let log = Log::capture(launcher.stderr.take().ok_or_else(|| crate::util::fail("no stderr"))?);
    let status = crate::util::wait_child(&mut launcher, T);
    // Whatever happens next, kill what the pid file names.
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().parse().unwrap_or(0);
    let _guard = PidGuard(pid);
    let status = status?;
    ensure!(status.code() == Some(0), "launcher exited {status:?}; log:\n{}", log.text());
    // The pid file exists and names a live process other than the launcher.
    ensure!(pid > 0, "no pid in {} after the launcher exited", pid_file.display());
    ensure!(pid != launcher.id() as i32 && alive(pid), "pid file names {pid}, not a live detached process");
    // The listeners are bound before the launcher exits; the log (the
    // inherited stderr) names the address.
    log.wait_count(&["listening addr="], 1, T)?;
    let addr = parse_listen_addr(&log.text()).ok_or_else(|| crate::util::fail("no address"))?;
    let got = Client::connect(addr)?.roundtrip(b"Daemon\n")?;
    crate::util::ensure_bytes_eq("detached daemon", &got, b"Qnrzba\n")?;
    // A new session (setsid, then a second fork): the detached process is
    // in a session and process group of their own, not the test's, and is
    // not their leader, so it can never acquire a controlling terminal.
    let me = std::process::id() as i32;
    let (ours, theirs) = (crate::util::proc_session(me), crate::util::proc_session(pid));
    let (Some((_, our_sid, _)), Some((pgrp, sid, tty))) = (ours, theirs) else {
        return Err(crate::util::fail(format!("no session of {me} or {pid}")));
    };
    ensure!(sid != our_sid && sid > 0, "detached daemon {pid} is in session {sid}, the test's is {our_sid}");
    ensure!(pgrp == sid, "detached daemon {pid}: process group {pgrp}, not its session's {sid}");
    ensure!(sid != pid, "detached daemon {pid} leads its session (no second fork)");
    ensure!(tty == 0, "detached daemon {pid} has a controlling terminal ({tty})");
    kill(pid, libc::SIGTERM)?;
    ensure!(
        poll_until(T, || !pid_file.exists()),
        "pid file {} still there after SIGTERM; log:\n{}",
        pid_file.display(),
        log.text()
    );
    ensure!(poll_until(T, || !alive(pid)), "daemon {pid} still running after SIGTERM");
    Ok(())
}

/// A launcher whose detached daemon keeps the inherited stderr: `run_bin`
/// returns once the launcher exits (the daemon holds the pipe, a reader
/// waiting for its EOF would hang the test), with what it logged so far.
#[test]
fn daemon_mode_launcher_returns_while_the_daemon_holds_its_stderr() -> io::Result<()> {
    let dir = TempDir::new()?;
    let pid_file = dir.join("rot13d.pid");
    let pf = pid_file.to_string_lossy().into_owned();
    let t0 = std::time::Instant::now();
    let out = run_bin(&["--daemon", "--pid-file", &pf, "--listen", "127.0.0.1:0", "--workers", "1"], &[], T);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().parse().unwrap_or(0);
    let _guard = PidGuard(pid);
    let out = out?;
    ensure_code("--daemon", &out, 0)?;
    ensure!(pid > 0 && alive(pid), "no detached daemon: pid file names {pid}");
    ensure!(t0.elapsed() < T, "the launcher's output took {:?}", t0.elapsed());
    ensure!(out.stderr.contains("listening addr="), "the launcher's stderr lacks `listening`:\n{}", out.stderr);
    Ok(())
}

#[test]
fn daemon_mode_start_failure_exits_with_the_error_code() -> io::Result<()> {
    let dir = TempDir::new()?;
    let pid_file = dir.join("rot13d.pid");
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let pf = pid_file.to_string_lossy().into_owned();
    let out = run_bin(&["--daemon", "--pid-file", &pf, "--listen", &addr, "--workers", "1"], &[], T)?;
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().parse().unwrap_or(0);
    let _guard = PidGuard(pid);
    ensure_code("--daemon with the address in use", &out, 71)?;
    let os = io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    let want = format!("rot13d: cannot listen on {addr}: {os}");
    ensure!(out.stderr.lines().any(|l| l == want), "no line {want:?} in:\n{}", out.stderr);
    ensure!(!pid_file.exists(), "pid file left behind after a failed start");
    Ok(())
}

#[test]
fn unsatisfiable_reactor_requirements_exit_78_naming_file_line_and_key() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = write(&dir, "r.toml", "[reactor]\nbackend = \"select\"\nrequire_features = [\"o1\"]\n")?;
    for (args, out) in start_and_check_config(&path, 78)? {
        // One line naming the file, the line and the key on that line
        // (`backend` is line 2, `require_features` line 3), and why.
        let names = |line: &str| {
            [(2, "backend"), (3, "require_features")].iter().any(|(n, key)| {
                line.starts_with(&format!(
                    "rot13d: {path}:{n}: invalid value for reactor.{key}: no event backend satisfies the configuration"
                ))
            })
        };
        ensure!(
            out.stderr.lines().any(names),
            "{args}: no line naming {path}:LINE, its reactor key and why:\n{}",
            out.stderr
        );
    }
    Ok(())
}

/// Every backend disabled by `EVENT_NO*` is a configuration error (78)
/// saying so (the file case is the test above).
#[test]
fn unsatisfiable_reactor_requirements_exit_78() -> io::Result<()> {
    let out = run_bin(
        &["--check-config"],
        &[("EVENT_NOEPOLL", ""), ("EVENT_NOPOLL", ""), ("EVENT_NOSELECT", ""), ("EVENT_NOURING", "")],
        T,
    )?;
    ensure_code("every backend disabled", &out, 78)?;
    ensure!(
        out.stderr.lines().any(|l| l.starts_with("rot13d: invalid value for reactor.")
            && l.contains("no event backend satisfies the configuration")
            && l.contains("disabled by environment: epoll,poll,select,uring")),
        "no line saying every backend is disabled by the environment:\n{}",
        out.stderr
    );
    Ok(())
}

#[test]
fn backend_error_from_the_command_line_names_the_option() -> io::Result<()> {
    let out = run_serving(&["--backend", "kqueue"], &[])?;
    ensure_code("--backend kqueue", &out, 78)?;
    ensure!(out.stderr.contains("--backend"), "the message does not name --backend:\n{}", out.stderr);
    Ok(())
}

/// `EVENT_NO*` disable backends (the next fastest is used) unless
/// `[reactor] ignore_env = true`.
#[test]
fn environment_disables_backends_unless_ignore_env() -> io::Result<()> {
    let d = crate::util::Daemon::builder().workers(0).env("EVENT_NOEPOLL", "").start()?;
    ensure!(d.log().count(&["reactor", "backend=poll "]) == 1, "EVENT_NOEPOLL:\n{}", d.log().text());
    drop(d);
    let d = crate::util::Daemon::builder().workers(1).env("EVENT_NOEPOLL", "1").env("EVENT_NOPOLL", "").start()?;
    ensure!(d.log().count(&["reactor", "backend=select "]) == 1, "EVENT_NOEPOLL+NOPOLL:\n{}", d.log().text());
    crate::util::ensure_bytes_eq("select by environment", &d.roundtrip(b"env\n")?, b"rai\n")?;
    drop(d);
    let d = crate::util::Daemon::builder()
        .workers(0)
        .env("EVENT_NOEPOLL", "")
        .config("[reactor]\nignore_env = true\n")
        .start()?;
    ensure!(d.log().count(&["reactor", "backend=epoll "]) == 1, "ignore_env:\n{}", d.log().text());
    Ok(())
}

/// Several `--listen`: each address is bound, logged and served (IPv6
/// loopback too when the host has it).
#[test]
fn several_listen_addresses_are_all_served() -> io::Result<()> {
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut args = vec!["--listen", "127.0.0.2:0"];
    if v6 {
        args.extend(["--listen", "[::1]:0"]);
    }
    let d = crate::util::Daemon::builder().workers(2).args(&args).start()?;
    let text = d.log().text();
    let addrs: Vec<std::net::SocketAddr> = text
        .lines()
        .filter(|l| l.contains("listening") && l.contains("kind=rot13"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok()))
        .collect();
    let want = if v6 { 3 } else { 2 };
    ensure!(addrs.len() == want, "listening lines: {addrs:?}, want {want}:\n{text}");
    ensure!(addrs.iter().all(|a| a.port() != 0), "port 0 logged: {addrs:?}");
    for a in addrs {
        for i in 0..4 {
            let l = format!("to {a} #{i}\n");
            let got = Client::connect(a)?.roundtrip(l.as_bytes())?;
            crate::util::ensure_bytes_eq(&format!("on {a}"), &got, &crate::util::rot13_model(l.as_bytes(), 16384))?;
        }
    }
    Ok(())
}

/// `--listen` replaces `[server].listen` (SPEC §2), at start and at every
/// reload: the file's address, held by another socket here, is never
/// bound, while the file's other keys apply.
#[test]
fn listen_option_replaces_the_files_list_also_at_a_reload() -> io::Result<()> {
    let held = TcpListener::bind("127.0.0.1:0")?;
    let file = held.local_addr()?;
    let d = crate::util::Daemon::builder()
        .workers(1)
        .config(&format!("[server]\nlisten = [\"{file}\"]\nmax_line = 4\n"))
        .start()?;
    ensure!(d.addr() != file, "serves on the file's {file}");
    crate::util::ensure_bytes_eq("max_line from the file", &d.roundtrip(b"abcdef\n")?, b"nopq\nrs\n")?;
    d.signal(libc::SIGHUP)?;
    d.wait_for_log(" reloaded ", T)?;
    crate::util::ensure_bytes_eq("after the reload", &d.roundtrip(b"abcdef\n")?, b"nopq\nrs\n")?;
    let text = d.log().text();
    ensure!(d.log().count(&["listening", "kind=rot13"]) == 1, "listening lines:\n{text}");
    ensure!(!text.contains(&file.to_string()), "the file's {file} was tried:\n{text}");
    Ok(())
}

/// `--log-format json`: every line of stderr is one JSON object; the
/// `listening` event carries `addr` and `kind`.
#[test]
fn json_log_lines_are_objects() -> io::Result<()> {
    let d = crate::util::Daemon::builder().workers(1).json_log().start()?;
    crate::util::ensure_bytes_eq("json", &d.roundtrip(b"json\n")?, b"wfba\n")?;
    let text = d.log().text();
    for l in text.lines() {
        ensure!(l.starts_with('{') && l.ends_with('}'), "not a JSON object line: {l:?}");
        ensure!(l.contains("\"timestamp\":") && l.contains("\"level\":"), "no timestamp/level: {l:?}");
    }
    ensure!(text.contains(&format!("\"addr\":\"{}\"", d.addr())), "no addr field:\n{text}");
    Ok(())
}

/// `[log] level` and `format` apply from the file, and `--log-level` /
/// `--log-format` win over them (SPEC §2: options override the file).
#[test]
fn log_level_and_format_from_the_file_the_options_win() -> io::Result<()> {
    let d = crate::util::Daemon::builder().workers(1).config("[log]\nformat = \"json\"\n").expect_json().start()?;
    let text = d.log().text();
    ensure!(text.lines().all(|l| l.starts_with('{') && l.ends_with('}')), "[log] format = json:\n{text}");
    drop(d);
    let warn = "[log]\nformat = \"json\"\nlevel = \"warn\"\n";
    let d = crate::util::Daemon::builder()
        .workers(1)
        .config(warn)
        .args(["--log-format", "text", "--log-level", "info"])
        .start()?;
    let text = d.log().text();
    ensure!(!text.contains('{') && text.contains(" INFO rot13d: listening addr="), "options over the file:\n{text}");
    drop(d);
    // The file's level alone: a start that fails (a held port) logs no INFO.
    let dir = TempDir::new()?;
    let cfg = write(&dir, "warn.toml", "[log]\nlevel = \"warn\"\n")?;
    let held = TcpListener::bind("127.0.0.1:0")?;
    let addr = held.local_addr()?.to_string();
    let out = run_bin(&["-c", &cfg, "--listen", &addr, "--workers", "0"], &[], T)?;
    ensure_code("level = warn, a held port", &out, 71)?;
    ensure!(!out.stderr.contains(" INFO ") && out.stderr.contains(&addr), "level = warn:\n{}", out.stderr);
    let out = run_bin(&["-c", &cfg, "--listen", &addr, "--workers", "0", "--log-level", "info"], &[], T)?;
    ensure!(out.stderr.contains(" INFO "), "--log-level info over level = warn:\n{}", out.stderr);
    Ok(())
}

/// SPEC §2's log lines, in the text format: the master logs one
/// `INFO rot13d: listening addr=ADDR kind=rot13|admin` per bound socket
/// (the real port for port 0), which workers do not repeat; each serving
/// process logs one `INFO rot13d: reactor backend=NAME`; stderr is a pipe
/// here, so no terminal colour codes reach journald or `docker logs`.
#[test]
fn listening_and_reactor_lines_have_the_documented_shape() -> io::Result<()> {
    let d = crate::util::Daemon::builder()
        .workers(2)
        .args(["--backend", "poll"])
        .config(&crate::util::admin_config(""))
        .start()?;
    d.wait_for_log(" ready ", T)?;
    let text = d.log().text();
    ensure!(!text.contains('\x1b'), "colour codes in the log:\n{text}");
    let admin = crate::util::nth_admin_addr(&d, 0)?;
    for (addr, kind) in [(d.addr(), "rot13"), (admin, "admin")] {
        ensure!(addr.port() != 0, "{kind} logged port 0");
        let tail = format!(" INFO rot13d: listening addr={addr} kind={kind}");
        let lines: Vec<&str> =
            text.lines().filter(|l| l.contains(" listening ") && l.contains(&format!("kind={kind}"))).collect();
        ensure!(lines.len() == 1, "{kind}: want one listening line:\n{text}");
        // `TIME INFO rot13d: listening addr=... kind=...`, nothing after.
        let (time, rest) = lines[0].split_once(' ').unwrap_or_default();
        ensure!(crate::util::log_time(lines[0]).is_some(), "no timestamp: {time:?} in {:?}", lines[0]);
        ensure!(format!(" {}", rest.trim_start()) == tail, "{kind}: {:?}, want ...{tail:?}", lines[0]);
    }
    let reactors: Vec<&str> = text.lines().filter(|l| l.contains(" INFO rot13d: reactor backend=poll ")).collect();
    let mut pids = d.reactor_pids();
    pids.sort_unstable();
    ensure!(
        reactors.len() == 2 && pids == d.worker_pids(),
        "reactor lines {reactors:?}, pids {pids:?}, workers {:?}",
        d.worker_pids()
    );
    Ok(())
}

/// `RUST_LOG` wins over `--log-level`.
#[test]
fn rust_log_wins_over_log_level() -> io::Result<()> {
    let d = crate::util::Daemon::builder()
        .workers(0)
        .args(["--log-level", "error"])
        .env("RUST_LOG", "rot13d=debug")
        .start()?;
    crate::util::ensure_bytes_eq("answer", &d.roundtrip(b"x\n")?, b"k\n")?;
    d.log().wait_count(&["DEBUG", "connection accepted"], 1, T)
}

/// Values valid alone but not together (low watermark above the high one).
#[test]
fn inconsistent_watermarks_exit_78() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = write(&dir, "w.toml", "[server]\nwrite_high_watermark = 1000\nwrite_low_watermark = 2000\n")?;
    let out = run_bin(&["-c", &path, "--check-config"], &[], T)?;
    ensure_code("low > high watermark", &out, 78)?;
    ensure!(
        out.stderr.contains(&format!("{path}:2")) || out.stderr.contains(&format!("{path}:3")),
        "no FILE:LINE in:\n{}",
        out.stderr
    );
    ensure!(out.stderr.contains("watermark"), "no key in:\n{}", out.stderr);
    let out = run_serving(&["-c", &path], &[])?;
    ensure_code("low > high watermark, serving", &out, 78)
}

/// With no options: `0.0.0.0:40713`, `workers = auto`, the documented
/// defaults (read through --print-config; the port is not bound).
#[test]
fn defaults_are_the_documented_ones() -> io::Result<()> {
    let out = run_bin(&["--print-config"], &[], T)?;
    ensure_code("--print-config", &out, 0)?;
    for want in [
        "listen = [\"0.0.0.0:40713\"]",
        "max_line = 16384",
        "idle_timeout = 300",
        "write_timeout = 60",
        "write_high_watermark = 262144",
        "write_low_watermark = 65536",
        "shutdown_grace = 30",
        "proxy_protocol = \"off\"",
        "ipv6_only = true",
        "level = \"info\"",
        "format = \"text\"",
        "access = false",
    ] {
        ensure!(out.stdout.lines().any(|l| l.trim() == want), "defaults lack {want:?}:\n{}", out.stdout);
    }
    // `[admin] listen` absent = off; `[log] file` absent = stderr.
    for absent in ["listen = \"", "file ="] {
        ensure!(
            !out.stdout.lines().any(|l| l.trim().starts_with(absent)),
            "a default sets {absent:?}:\n{}",
            out.stdout
        );
    }
    // auto, printed in its configured form (SPEC §2: --print-config keeps
    // `workers = "auto"`), whatever the CPUs.
    ensure!(out.stdout.lines().any(|l| l.trim() == "workers = \"auto\""), "workers is not auto:\n{}", out.stdout);
    Ok(())
}

/// Several problems in one file: each is reported with its line and key.
#[test]
fn every_problem_is_reported() -> io::Result<()> {
    let dir = TempDir::new()?;
    let path = write(&dir, "m.toml", "[server]\nmax_line = 0\nbacklog = 0\n[reactor]\npriorities = 0\n")?;
    let out = run_bin(&["-c", &path, "--check-config"], &[], T)?;
    ensure_code("three problems", &out, 78)?;
    let all = format!("{}{}", out.stdout, out.stderr);
    for (line, key) in [(2, "max_line"), (3, "backlog"), (5, "priorities")] {
        ensure_names("three problems", &all, &path, line, key)?;
    }
    Ok(())
}
