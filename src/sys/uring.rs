//! Safe io_uring for the `uring` backend: a ring that carries poll
//! requests and their cancellations, nothing else. The `io-uring` crate
//! maps the rings; this file is the only user of its `unsafe` API.
//!
//! Why this is safe for every caller:
//!
//! - **No user memory is lent to the kernel.** A poll request
//!   (IORING_OP_POLL_ADD, one-shot or multishot) names an fd number, which
//!   the kernel resolves to its file when it takes the entry (as
//!   `epoll_ctl` does); a cancellation names a request by its user data;
//!   the wait's timeout is read during the call only. So a ring dropped with
//!   requests in flight leaves the kernel nothing of ours to write: Drop
//!   only unmaps the rings and closes the ring fd (the kernel then cancels
//!   what is left).
//! - **A poll holds the file, not the number.** Until it completes or is
//!   cancelled, a poll keeps a reference to the file it was armed on:
//!   closing the fd does not end it (epoll, by contrast, forgets a closed
//!   file). This is never unsafe, but it keeps a closed socket open, so the
//!   backend cancels the poll of an fd whose interest is deleted no later
//!   than the next `io_uring_enter` (see `reactor/backend/uring.rs`).
//! - **Fork.** The rings are shared memory (MAP_SHARED) and the ring fd is
//!   inherited, so an entry written by a child would be run by the parent's
//!   ring. Every method that writes an entry or enters the kernel first
//!   checks that the ring was made by this process (a count of forks kept by
//!   a `pthread_atfork` child hook: a load, not a `getpid` syscall) and
//!   fails with an error in a child (reads nothing either); dropping it
//!   there only unmaps the child's copy and closes its fd. The ring is
//!   set up SINGLE_ISSUER where the kernel has it, so the kernel itself
//!   refuses another task's submissions.
//!
//! Availability ([`probe`]): io_uring may be missing (ENOSYS: an old kernel,
//! `CONFIG_IO_URING=n`, or a seccomp filter answering ENOSYS) or forbidden
//! (EPERM: Docker's default seccomp profile, systemd's `SystemCallFilter=`
//! without the io_uring calls, `kernel.io_uring_disabled` = 2, or = 1 for a
//! process outside `kernel.io_uring_group` without CAP_SYS_ADMIN).
//! [`unavailable_reason`] turns the error into a sentence naming which.

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use libc::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLRDHUP};

/// The user data of cancellation entries; their completions carry nothing
/// the backend needs.
pub const CANCEL_USER_DATA: u64 = u64::MAX;

/// Forks this process has gone through (counted in every child).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // An atomic add: async-signal-safe, as a child hook must be.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork counter once per process.
fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the hook only does an atomic add; the other two hooks are
        // none (null is allowed for each).
        let r = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        if r != 0 {
            // Without the hook a child could not tell; say so loudly in
            // the one place that can: the backend then refuses (see new).
            FORKS.store(u64::MAX, Ordering::Relaxed);
        }
    });
}

/// How the ring was set up: the first set of flags the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG (Linux 6.1): completions
    /// are produced only inside `io_uring_enter`, in a batch.
    DeferTaskrun,
    /// COOP_TASKRUN | TASKRUN_FLAG (Linux 5.19).
    CoopTaskrun,
    /// No setup flags.
    Plain,
}

/// One completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The entry's user data.
    pub user_data: u64,
    /// The result: a poll mask (>= 0) or a negative errno.
    pub result: i32,
    /// Whether a multishot request stays armed (IORING_CQE_F_MORE).
    pub more: bool,
}

/// An io_uring instance for poll requests.
pub struct Ring {
    ring: IoUring,
    /// [`FORKS`] when the ring was made: the ring is this process's only
    /// while the count is unchanged.
    forks: u64,
    mode: Mode,
    skip_success: bool,
    /// Under valgrind, which holds signals back during io_uring_enter: a
    /// wait then ends every 100 ms so that they get in (profiling only).
    valgrind: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("fd", &self.ring.as_raw_fd()).field("mode", &self.mode).finish()
    }
}

fn not_ours() -> io::Error {
    io::Error::other("this io_uring belongs to the parent process (call reinit() after fork)")
}

impl Ring {
    /// A ring of `sq` submission and `cq` completion entries (rounded up to
    /// powers of two, clamped to the kernel's maxima), with the most
    /// efficient setup flags the kernel accepts. Fails where io_uring is
    /// missing or forbidden (see [`unavailable_reason`]) or lacks
    /// IORING_FEAT_EXT_ARG (Linux 5.11: a wait with a timeout in one call).
    pub fn new(sq: u32, cq: u32) -> io::Result<Ring> {
        watch_forks();
        let forks = FORKS.load(Ordering::Relaxed);
        if forks == u64::MAX {
            return Err(io::Error::other(
                "pthread_atfork failed: a forked child could not tell the ring is not its own",
            ));
        }
        let mut last = None;
        for mode in [Mode::DeferTaskrun, Mode::CoopTaskrun, Mode::Plain] {
            for submit_all in [true, false] {
                let mut b = IoUring::builder();
                // Not MADV_DONTFORK: a child must be able to unmap its copy
                // of the rings when it drops the ring (reinit); with the
                // range unmapped at fork, that munmap could hit a mapping
                // the child made there since.
                b.setup_cqsize(cq.max(sq)).setup_clamp();
                if submit_all {
                    b.setup_submit_all();
                }
                match mode {
                    Mode::DeferTaskrun => {
                        b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
                    }
                    Mode::CoopTaskrun => {
                        b.setup_coop_taskrun().setup_taskrun_flag();
                    }
                    Mode::Plain => {}
                }
                match b.build(sq) {
                    Ok(ring) => {
                        let p = ring.params();
                        if !p.is_feature_ext_arg() || !p.is_feature_nodrop() {
                            return Err(io::Error::new(
                                io::ErrorKind::Unsupported,
                                "the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11 or later needed)",
                            ));
                        }
                        let skip_success = p.is_feature_skip_cqe_on_success();
                        let valgrind =
                            std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"));
                        return Ok(Ring { ring, forks, mode, skip_success, valgrind });
                    }
                    // Flags this kernel does not know: try fewer.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
    }

    /// The setup flags in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether this process made the ring (not a forked child).
    #[inline]
    pub fn is_ours(&self) -> bool {
        FORKS.load(Ordering::Relaxed) == self.forks
    }

    /// Queues a poll of `fd` for `events` (POLLIN, POLLOUT, POLLRDHUP),
    /// `multishot` or one-shot, tagged `user_data`. `false` when the
    /// submission queue is full (submit, then try again).
    pub fn push_poll(&mut self, fd: RawFd, events: u32, multishot: bool, user_data: u64) -> io::Result<bool> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        let e = opcode::PollAdd::new(types::Fd(fd), events).multi(multishot).build().user_data(user_data);
        // SAFETY: a poll entry refers to no memory of ours: the kernel reads
        // the fd number and the mask from the entry itself, and the ring is
        // this process's (checked above), so no other process's ring sees it.
        Ok(unsafe { self.ring.submission().push(&e) }.is_ok())
    }

    /// Queues the cancellation of the request tagged `target`. Its own
    /// completion (user data [`CANCEL_USER_DATA`]) is skipped on success
    /// where the kernel can; the cancelled poll completes with -ECANCELED.
    pub fn push_cancel(&mut self, target: u64) -> io::Result<bool> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        let mut e = opcode::AsyncCancel::new(target).build().user_data(CANCEL_USER_DATA);
        if self.skip_success {
            e = e.flags(squeue::Flags::SKIP_SUCCESS);
        }
        // SAFETY: a cancellation refers to no memory of ours (the target is
        // a number); the ring is this process's (checked above).
        Ok(unsafe { self.ring.submission().push(&e) }.is_ok())
    }

    /// Entries queued and not yet submitted (none in a forked child: the
    /// rings are not even mapped there).
    pub fn queued(&mut self) -> usize {
        if !self.is_ours() {
            return 0;
        }
        self.ring.submission().len()
    }

    /// Whether the kernel may have completions that only an
    /// `io_uring_enter` brings out: deferred task work (TASKRUN) or
    /// completions that overflowed the completion ring.
    pub fn kernel_has_work(&mut self) -> bool {
        if !self.is_ours() {
            return false;
        }
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow() || self.mode == Mode::Plain
    }

    /// Whether completions overflowed the completion ring (the kernel keeps
    /// them until an enter makes room).
    pub fn overflowed(&mut self) -> bool {
        self.is_ours() && self.ring.submission().cq_overflow()
    }

    /// One `io_uring_enter`: submits every queued entry and, with `wait`,
    /// waits until at least one completion is there or `timeout` passed
    /// (`None` = no limit); without `wait` it only runs what the kernel owes
    /// (deferred task work). A timeout, a signal or a full completion ring
    /// (EBUSY) is `Ok`: the caller reaps what there is.
    pub fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        let to_submit = self.ring.submission().len() as u32;
        let timeout = match timeout {
            _ if !self.valgrind || !wait => timeout,
            Some(t) => Some(t.min(Duration::from_millis(100))),
            None => Some(Duration::from_millis(100)),
        };
        let ts = timeout.map(|t| types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos()));
        let mut args = types::SubmitArgs::new();
        if let Some(ts) = ts.as_ref() {
            args = args.timespec(ts);
        }
        // IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG (the crate keeps its
        // flag type private).
        let flags: u32 = 1 | 8;
        // SAFETY: `args` (and the timespec it points at) live across the
        // call, its size is the one the kernel expects for EXT_ARG, and the
        // entries it submits refer to no memory of ours (see push_poll); the
        // ring is this process's (checked above).
        let r = unsafe { self.ring.submitter().enter(to_submit, u32::from(wait), flags, Some(&args)) };
        if self.valgrind {
            // valgrind delivers a pending signal only in a call it knows
            // may block; io_uring_enter is not one.
            let _ = super::poll::poll(&mut [], 0);
        }
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `f` for every completion waiting, and frees their places.
    pub fn reap(&mut self, mut f: impl FnMut(Completion)) {
        if !self.is_ours() {
            return;
        }
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            f(Completion { user_data: c.user_data(), result: c.result(), more: cqueue::more(c.flags()) });
        }
    }
}

/// Whether io_uring works in this process, probed once with a small ring:
/// `Err` holds the reason ([`unavailable_reason`]).
///
/// The probe's ring is kept, never destroyed: tearing a ring down makes
/// the kernel send task work to every task that used it (TWA_SIGNAL), which
/// interrupts that thread's next blocking call that has a timeout with
/// EINTR (a socket read with SO_RCVTIMEO, say). A probe must not do that
/// to its caller. (A base's ring is torn down with the base, which its
/// owner chose.)
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| match Ring::new(2, 2) {
            Ok(ring) => {
                std::mem::forget(ring);
                Ok(())
            }
            Err(e) => Err(unavailable_reason(&e)),
        })
        .clone()
}

/// A sentence saying why io_uring cannot be used, from the error of setting
/// a ring up (and, for EPERM, the `kernel.io_uring_*` sysctls as they are).
pub fn unavailable_reason(e: &io::Error) -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let sysctls = if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        (read("/proc/sys/kernel/io_uring_disabled"), read("/proc/sys/kernel/io_uring_group"))
    } else {
        (None, None)
    };
    reason(e, sysctls.0.as_deref(), sysctls.1.as_deref())
}

/// [`unavailable_reason`] given the values of `kernel.io_uring_disabled`
/// and `kernel.io_uring_group` (None: no such sysctl, a kernel before 6.6).
fn reason(e: &io::Error, disabled: Option<&str>, group: Option<&str>) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "io_uring_setup: {e}: the kernel has no io_uring (Linux 5.11 or later built with \
             CONFIG_IO_URING), or a seccomp filter answers ENOSYS"
        ),
        Some(libc::EPERM | libc::EACCES) => match disabled {
            Some("2") => {
                format!("io_uring_setup: {e}: kernel.io_uring_disabled = 2 disables io_uring for every process")
            }
            Some("1") => format!(
                "io_uring_setup: {e}: kernel.io_uring_disabled = 1 allows io_uring only to members of \
                 kernel.io_uring_group ({}) and to CAP_SYS_ADMIN, and this process is neither",
                group.unwrap_or("-1")
            ),
            _ => format!(
                "io_uring_setup: {e}: a seccomp filter forbids io_uring (Docker's default profile does; \
                 under systemd, SystemCallFilter= must allow io_uring_setup io_uring_enter io_uring_register)"
            ),
        },
        Some(libc::ENOMEM) => {
            format!("io_uring_setup: {e}: no memory for the rings (RLIMIT_MEMLOCK on Linux before 5.12?)")
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

/// Installs a seccomp filter on the calling thread (and the processes it
/// starts from now on) that fails `io_uring_setup` with `errno`, as Docker's
/// default profile (EPERM) or an old kernel (ENOSYS) would: how the tests
/// reproduce a host where io_uring is forbidden. Sets `no_new_privs` first,
/// as an unprivileged filter requires. x86-64 and aarch64 only.
pub fn refuse_io_uring_setup(errno: i32) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(io::Error::new(io::ErrorKind::Unsupported, "seccomp filter: unknown architecture"));
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_ERRNO: u32 = 0x0005_0000;
        let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let ret = libc::BPF_RET | libc::BPF_K;
        // seccomp_data: nr at offset 0, arch at offset 4.
        let prog = [
            stmt(ld, 4),
            jeq(ARCH, 1, 0),
            stmt(ret, RET_ALLOW),
            stmt(ld, 0),
            jeq(libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(ret, RET_ERRNO | (errno as u32 & 0xffff)),
            stmt(ret, RET_ALLOW),
        ];
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        super::cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        // SAFETY: `fprog` points at `prog`, both alive across the call; the
        // kernel copies the program and keeps no pointer to it.
        super::cvt(unsafe {
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog, 0, 0)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way io_uring can be missing or forbidden is named as such (the
    /// sysctl cases cannot be set up in a test without changing the whole
    /// host, so they are checked here with the values given).
    #[test]
    fn reasons_name_the_cause() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let r = reason(&eperm, Some("2"), Some("-1"));
        assert!(r.contains("kernel.io_uring_disabled = 2 disables io_uring for every process"), "{r}");
        let r = reason(&eperm, Some("1"), Some("1001"));
        assert!(r.contains("kernel.io_uring_disabled = 1") && r.contains("kernel.io_uring_group (1001)"), "{r}");
        for disabled in [Some("0"), None] {
            let r = reason(&eperm, disabled, None);
            assert!(r.contains("a seccomp filter forbids io_uring") && r.contains("SystemCallFilter="), "{r}");
        }
        let r = reason(&io::Error::from_raw_os_error(libc::ENOSYS), Some("2"), None);
        assert!(r.contains("the kernel has no io_uring"), "{r}");
        let r = reason(&io::Error::from_raw_os_error(libc::ENOMEM), None, None);
        assert!(r.contains("RLIMIT_MEMLOCK"), "{r}");
    }
}
