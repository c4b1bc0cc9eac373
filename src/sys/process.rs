//! fork, wait, identities, the master-worker channel: the process-level
//! calls of the master and workers. User and group calls go through `nix`.

use super::cvt;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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
/// (a worker must not outlive its master). Changing the uid or gid clears
/// it, so call this after dropping privileges, then check the parent again
/// (it may have died before the call).
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    let sig = nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?;
    nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)
}

/// The parent-death signal set now (0 = none).
pub fn parent_death_signal() -> io::Result<i32> {
    Ok(nix::sys::prctl::get_pdeathsig().map_err(io::Error::from)?.map_or(0, |s| s as i32))
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

/// Whom to run as after binding: `[server] user` and `group` resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The uid to switch to.
    pub uid: Option<u32>,
    /// The gid to switch to: `group`, else the user's primary group.
    pub gid: Option<u32>,
    /// The user's name in the user database, for its supplementary groups
    /// (`None`: a numeric uid the database does not know, or no user).
    pub name: Option<CString>,
}

/// Looks `user` and `group` up (names, or numeric ids). A numeric user
/// found in the user database gets its primary and supplementary groups
/// like a name; one it does not know needs `group` (never gid = uid).
/// `Err((key, why))` names the key at fault.
pub fn resolve_identity(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, (&'static str, String)> {
    use nix::unistd::{Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let mut id = Identity { uid: None, gid: None, name: None };
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(n) => {
                id.uid = Some(n);
                User::from_uid(Uid::from_raw(n))
            }
            Err(_) => User::from_name(u),
        };
        match found {
            Ok(Some(pw)) => {
                id.uid = Some(pw.uid.as_raw());
                id.gid = Some(pw.gid.as_raw());
                id.name = CString::new(pw.name).ok();
            }
            // A uid the user database does not know has no primary group
            // to take: the group must be named (never gid = uid, nor the
            // root group kept by default).
            Ok(None) if id.uid.is_some() && group.is_some() => {}
            Ok(None) if id.uid.is_some() => {
                return Err(("server.user", format!("uid {u} is not in the user database: set group too")));
            }
            Ok(None) => return Err(("server.user", format!("no such user `{u}`"))),
            Err(e) => return Err(("server.user", format!("cannot look up user `{u}`: {e}"))),
        }
    }
    if let Some(g) = group {
        match g.parse::<u32>() {
            Ok(n) => id.gid = Some(n),
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => id.gid = Some(gr.gid.as_raw()),
                Ok(None) => return Err(("server.group", format!("no such group `{g}`"))),
                Err(e) => return Err(("server.group", format!("cannot look up group `{g}`: {e}"))),
            },
        }
    }
    Ok(Some(id))
}

/// Switches to `id`: supplementary groups first (the user's, from the group
/// database, or just the new group), then the gid, then the uid.
pub fn drop_privileges(id: &Identity) -> io::Result<()> {
    use nix::unistd::{Gid, Uid, initgroups, setgid, setgroups, setuid};
    let gid = id.gid.map(Gid::from_raw);
    match (&id.name, gid) {
        (Some(name), Some(g)) => initgroups(name, g)?,
        (_, g) => setgroups(&[g.unwrap_or_else(Gid::current)])?,
    }
    if let Some(g) = gid {
        setgid(g)?;
    }
    if let Some(u) = id.uid {
        setuid(Uid::from_raw(u))?;
    }
    Ok(())
}

/// The supplementary groups of this process.
pub fn groups() -> io::Result<Vec<u32>> {
    Ok(nix::unistd::getgroups()?.into_iter().map(|g| g.as_raw()).collect())
}

/// What a detached daemon does to its environment: `/` as its working
/// directory (it must not keep a mount busy) and a umask of 022 (files it
/// creates do not inherit the caller's).
pub fn detach_environment() -> io::Result<()> {
    nix::unistd::chdir("/")?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    Ok(())
}

/// Sends `byte` and, if given, the fd `pass` (SCM_RIGHTS) on the Unix
/// socket `sock`: one command of the master to a worker.
pub fn send_command(sock: BorrowedFd<'_>, byte: u8, pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(std::slice::from_ref(&byte))];
    let fds: Vec<RawFd> = pass.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage<'_>> = if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT, None)?;
    Ok(())
}

/// Receives one command sent by [`send_command`]: `Ok(None)` at end of
/// stream (the other side is gone), `WouldBlock` when nothing is there.
pub fn recv_command(sock: BorrowedFd<'_>) -> io::Result<Option<(u8, Option<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut passed = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for
                // this message (SCM_RIGHTS): nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                passed.get_or_insert(owned);
            }
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((byte[0], passed)))
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
