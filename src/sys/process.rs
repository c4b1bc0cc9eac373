//! fork, wait, identities: the process-level calls of the master and workers.

use super::cvt;
use std::ffi::CString;
use std::io;

/// Which side of a fork we are on.
#[derive(Debug, PartialEq, Eq)]
pub enum Fork {
    /// The parent, with the child's pid.
    Parent(i32),
    /// The child.
    Child,
}

/// `fork(2)`, refused unless the calling process has exactly one thread.
///
/// A child of a multi-threaded process inherits only the calling thread:
/// locks the others held stay locked for ever, data they were changing
/// stays half-changed, and their `JoinHandle`s name threads that do not
/// exist. With a single thread none of that can happen, and the child may
/// go on running ordinary Rust code (rot13d forks only from the master's
/// single thread: no background writer threads). The thread count is read
/// from `/proc/self/stat`; no other thread can appear before the fork, as
/// only this one could start it.
pub fn fork() -> io::Result<Fork> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork refused: the process has {threads} threads (a child would inherit one)"
        )));
    }
    // SAFETY: the process has a single thread (checked above), so the child
    // inherits no lock or state of another thread.
    unsafe { fork_unchecked() }
}

/// `fork(2)` whatever the number of threads.
///
/// # Safety
///
/// With other threads running, the child may only call async-signal-safe
/// functions until it execs or `_exit`s (POSIX), and must not touch what
/// those threads may have held or been changing (a lock, a queue, a
/// `JoinHandle`): in the child the threads are gone mid-step. Tests use it
/// to fork from the test harness's threads, with children that run only
/// what they set up themselves and leave through [`exit_now`].
pub unsafe fn fork_unchecked() -> io::Result<Fork> {
    // SAFETY: fork takes no arguments; the caller upholds the conditions on
    // the child's code stated above.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 { Fork::Child } else { Fork::Parent(pid) })
}

/// Threads of this process (`num_threads`, field 20 of `/proc/self/stat`).
fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read the thread count from /proc/self/stat"))
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

/// Short name of a common signal.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// `waitpid(-1, WNOHANG)`: one exited child, if any.
pub fn try_wait_any() -> io::Result<Option<(i32, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-parameter.
    let pid = match cvt(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some((pid, decode(status))))
}

/// `waitpid(pid, 0)`: blocks until `pid` ends.
pub fn wait_pid(pid: i32) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-parameter.
        match cvt(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(decode(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn decode(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// This process's pid.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// The parent's pid.
pub fn getppid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// Asks the kernel to send `sig` to this process when its parent dies
/// (a worker must not outlive its master).
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Effective uid.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Looks up a user by name or numeric id: `(uid, primary gid)`.
pub fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(Some((uid, uid)));
    }
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-buffer.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives `pw` use.
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if res.is_null() {
        return Ok(None);
    }
    Ok(Some((pw.pw_uid, pw.pw_gid)))
}

/// Looks up a group by name or numeric id.
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero group is a valid out-buffer.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if res.is_null() {
        return Ok(None);
    }
    Ok(Some(gr.gr_gid))
}

/// Drops privileges: supplementary groups cleared, then gid, then uid.
pub fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    if let Some(g) = gid {
        // SAFETY: a zero-length group list with a null pointer is valid.
        cvt(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: setgid takes no pointers.
        cvt(unsafe { libc::setgid(g) })?;
    }
    if let Some(u) = uid {
        // SAFETY: setuid takes no pointers.
        cvt(unsafe { libc::setuid(u) })?;
    }
    Ok(())
}

/// `_exit(2)`: leaves without running destructors or atexit handlers (used
/// by a forked child that must not flush the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Resident set size of a process in bytes, from /proc (None if gone).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}
