//! Signal delivery to event loops through self-pipes.
//!
//! `sigaction` installs one async-signal-safe handler for every watched
//! signal. It only `write(2)`s the signal number (one byte) to each pipe
//! registered for that signal, saving and restoring `errno`; the loop reads
//! the pipe as an ordinary read event. Several bases may watch the same
//! signal: each registers its own pipe, and every one is told.

use super::syscall;
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

/// Highest signal number handled (Linux has 64).
pub const NSIG: usize = 65;
/// How many pipes (bases) may watch one signal at once.
pub const SLOTS: usize = 8;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(-1);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicI32; SLOTS] = [EMPTY; SLOTS];
/// Write ends registered per signal; -1 = free. Read by the handler.
static TARGETS: [[AtomicI32; SLOTS]; NSIG] = [ROW; NSIG];

/// Serialises registration (never taken by the handler).
static REGISTRY: Mutex<[Option<libc::sigaction>; NSIG]> = Mutex::new([None; NSIG]);

extern "C" fn handler(sig: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's errno intact, as a signal handler must.
    let saved = unsafe { *libc::__errno_location() };
    if (sig as usize) < NSIG {
        let byte = sig as u8;
        for slot in &TARGETS[sig as usize] {
            let fd = slot.load(Ordering::Relaxed);
            if fd >= 0 {
                // SAFETY: write(2) is async-signal-safe; `byte` is a live
                // one-byte buffer. A full pipe (EAGAIN) already holds a
                // wake-up, so the result is ignored.
                unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
            }
        }
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = saved };
}

fn check(sig: i32) -> io::Result<()> {
    if sig <= 0 || sig as usize >= NSIG || sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("signal {sig} cannot be caught")));
    }
    Ok(())
}

/// Starts delivering `sig` as a byte on the pipe write end `fd`.
pub fn watch(sig: i32, fd: RawFd) -> io::Result<()> {
    check(sig)?;
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let row = &TARGETS[sig as usize];
    if row.iter().any(|s| s.load(Ordering::Relaxed) == fd) {
        return Ok(());
    }
    let free = row
        .iter()
        .find(|s| s.load(Ordering::Relaxed) < 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "too many bases watch this signal"))?;
    free.store(fd, Ordering::SeqCst);
    if reg[sig as usize].is_none() {
        // SAFETY: an all-zero sigaction is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sa_mask is a valid sigset_t inside `sa`.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: an all-zero sigaction is a valid out-buffer.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `sa` and `old` are valid sigaction structs; `handler` is
        // async-signal-safe.
        if let Err(e) = syscall!(sigaction(sig, &sa, &mut old)) {
            free.store(-1, Ordering::SeqCst);
            return Err(e);
        }
        reg[sig as usize] = Some(old);
    }
    Ok(())
}

/// Stops delivering `sig` to `fd`; the previous disposition comes back when
/// no pipe watches the signal any more.
pub fn unwatch(sig: i32, fd: RawFd) -> io::Result<()> {
    check(sig)?;
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let row = &TARGETS[sig as usize];
    for s in row {
        if s.load(Ordering::Relaxed) == fd {
            s.store(-1, Ordering::SeqCst);
        }
    }
    if row.iter().all(|s| s.load(Ordering::Relaxed) < 0)
        && let Some(old) = reg[sig as usize].take()
    {
        // SAFETY: `old` is the disposition sigaction returned earlier.
        syscall!(sigaction(sig, &old, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// Forgets every registration of `fd` without touching dispositions: used
/// after fork, when the child builds a new pipe and re-watches.
pub fn forget_fd(fd: RawFd) {
    let _reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    for row in &TARGETS {
        for s in row {
            if s.load(Ordering::Relaxed) == fd {
                s.store(-1, Ordering::SeqCst);
            }
        }
    }
}

/// Ignores `SIGPIPE` process-wide (writes to a reset socket return EPIPE).
pub fn ignore_sigpipe() {
    set_disposition(libc::SIGPIPE, libc::SIG_IGN);
}

/// Restores the default disposition of `sig`.
pub fn set_default(sig: i32) {
    set_disposition(sig, libc::SIG_DFL);
}

fn set_disposition(sig: i32, what: libc::sighandler_t) {
    // SAFETY: SIG_IGN/SIG_DFL are valid dispositions for a catchable signal.
    unsafe { libc::signal(sig, what) };
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    syscall!(kill(pid, sig))?;
    Ok(())
}

/// Sends `sig` to the calling thread (`raise(3)`): its handler has run
/// when this returns, so several calls are several deliveries (a signal
/// sent to the whole process may wait for another thread and merge with
/// the next one).
pub fn raise(sig: i32) -> io::Result<()> {
    // SAFETY: raise has no memory-safety preconditions.
    let r = unsafe { libc::raise(sig) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A saved signal mask.
#[derive(Clone, Copy)]
pub struct SigMask(libc::sigset_t);

/// Blocks every catchable signal in this thread; returns the old mask.
/// Around `fork()`, this keeps a signal from reaching the child before it
/// has its own handlers (the inherited handler would write into the
/// parent's pipe).
pub fn block_all() -> SigMask {
    // SAFETY: all-zero sigset_t values are valid out-buffers, filled below.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` and `old` are valid sigsets; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    SigMask(old)
}

/// Restores a mask saved by [`block_all`].
pub fn restore_mask(m: SigMask) {
    // SAFETY: `m.0` is a mask returned by pthread_sigmask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &m.0, std::ptr::null_mut());
    }
}

/// Unblocks every signal (a fresh child).
pub fn unblock_all() {
    // SAFETY: an all-zero sigset_t is a valid value, emptied below.
    let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `none` is a valid sigset.
    unsafe {
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Ignores `sig` (SIG_IGN).
pub fn ignore(sig: i32) {
    set_disposition(sig, libc::SIG_IGN);
}
