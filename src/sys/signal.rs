//! Signal delivery to event loops through self-pipes.
//!
//! `sigaction` installs one async-signal-safe handler for every watched
//! signal. It only `write(2)`s the signal number (one byte) to each pipe
//! registered for that signal, saving and restoring `errno`; the loop reads
//! the pipe as an ordinary read event. Several bases may watch the same
//! signal: each registers its own pipe ([`SignalTarget`], which owns the
//! write end and unregisters it before closing it), and every one is told.
//!
//! Each registration carries the pid of the process that made it, and the
//! handler serves only its own process's: after `fork()` the child inherits
//! the parent's table (and handler), but the parent's pipes are shared with
//! the parent, so a signal caught in the child must not be written there.
//! A child's base re-registers on its own pipe when it is reinitialised. A
//! signal that no pipe of this process watches (a child that did not
//! reinitialise) takes the disposition it had before the first handler was
//! installed, if that was the default, as if rot13d had never caught it.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Highest signal number handled (Linux has 64).
pub const NSIG: usize = 65;
/// How many pipes (bases) may watch one signal at once.
pub const SLOTS: usize = 8;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; SLOTS] = [EMPTY; SLOTS];
/// Write ends registered per signal, as `pid << 32 | fd`; 0 = free. Read by
/// the handler.
static TARGETS: [[AtomicU64; SLOTS]; NSIG] = [ROW; NSIG];

#[allow(clippy::declare_interior_mutable_const)]
const NO: AtomicBool = AtomicBool::new(false);
/// Per signal: its disposition before our handler was the default one.
static WAS_DEFAULT: [AtomicBool; NSIG] = [NO; NSIG];

/// Serialises registration (never taken by the handler): the dispositions
/// saved when the handler was installed. A std mutex: a child forked while
/// another thread of the parent held it (registering a signal) would wait
/// for ever in its reinit; rot13d forks single-threaded (the checked
/// `process::fork`), and registration is rare and short.
static REGISTRY: Mutex<[Option<libc::sigaction>; NSIG]> = Mutex::new([None; NSIG]);

fn pack(pid: i32, fd: i32) -> u64 {
    ((pid as u32 as u64) << 32) | fd as u32 as u64
}

/// The fd of entry `v` if process `me` registered it (not free, not
/// inherited through fork). Plain arithmetic: the handler calls it.
#[inline]
fn mine(v: u64, me: i32) -> Option<i32> {
    (v != 0 && (v >> 32) as u32 as i32 == me).then_some(v as u32 as i32)
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions and is async-signal-safe.
    unsafe { libc::getpid() }
}

extern "C" fn handler(sig: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's errno intact, as a signal handler must.
    let saved = unsafe { *libc::__errno_location() };
    if (sig as usize) < NSIG {
        let me = pid();
        let byte = sig as u8;
        let mut told = false;
        for slot in &TARGETS[sig as usize] {
            if let Some(fd) = mine(slot.load(Ordering::Relaxed), me) {
                told = true;
                // SAFETY: write(2) is async-signal-safe; `byte` is a live
                // one-byte buffer. A full pipe (EAGAIN) already holds a
                // wake-up, so the result is ignored.
                unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
            }
        }
        if !told && WAS_DEFAULT[sig as usize].load(Ordering::Relaxed) {
            // SAFETY: signal(2) and raise(3) are async-signal-safe; the
            // raised signal is blocked while this handler runs and then
            // takes its default action.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
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

/// Whether any pipe of this process watches `sig`.
fn watched_here(sig: usize, me: i32) -> bool {
    TARGETS[sig].iter().any(|s| mine(s.load(Ordering::Relaxed), me).is_some())
}

/// The write end of a base's self-pipe, as the signal handler's target.
/// Dropping it stops every delivery to it, then closes it.
#[derive(Debug)]
pub struct SignalTarget {
    write: OwnedFd,
}

impl SignalTarget {
    /// Wraps the write end of a non-blocking pipe.
    pub fn new(write: OwnedFd) -> SignalTarget {
        SignalTarget { write }
    }

    /// Starts delivering `sig` as a byte on the pipe.
    pub fn watch(&self, sig: i32) -> io::Result<()> {
        check(sig)?;
        let me = pid();
        let entry = pack(me, self.write.as_raw_fd());
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let row = &TARGETS[sig as usize];
        if row.iter().any(|s| s.load(Ordering::Relaxed) == entry) {
            return Ok(());
        }
        let first_here = !watched_here(sig as usize, me);
        // A free slot, or one another process registered (inherited through
        // fork, meaningless here).
        let free = row
            .iter()
            .find(|s| mine(s.load(Ordering::Relaxed), me).is_none())
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "too many bases watch this signal"))?;
        free.store(entry, Ordering::SeqCst);
        if first_here && let Err(e) = install(sig, &mut reg) {
            free.store(0, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    /// Stops delivering `sig` to this pipe; the previous disposition comes
    /// back when no pipe of this process watches the signal any more.
    pub fn unwatch(&self, sig: i32) -> io::Result<()> {
        check(sig)?;
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        unwatch_locked(sig as usize, pack(pid(), self.write.as_raw_fd()), &mut reg)
    }
}

impl Drop for SignalTarget {
    fn drop(&mut self) {
        let entry = pack(pid(), self.write.as_raw_fd());
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        for (sig, row) in TARGETS.iter().enumerate().skip(1) {
            if row.iter().any(|s| s.load(Ordering::Relaxed) == entry) {
                let _ = unwatch_locked(sig, entry, &mut reg);
            }
        }
    }
}

fn unwatch_locked(sig: usize, entry: u64, reg: &mut [Option<libc::sigaction>; NSIG]) -> io::Result<()> {
    let mut had = false;
    for s in &TARGETS[sig] {
        if s.load(Ordering::Relaxed) == entry {
            s.store(0, Ordering::SeqCst);
            had = true;
        }
    }
    if had
        && !watched_here(sig, pid())
        && let Some(old) = reg[sig].take()
    {
        // SAFETY: `old` is the disposition sigaction returned earlier.
        cvt(unsafe { libc::sigaction(sig as i32, &old, std::ptr::null_mut()) })?;
    }
    Ok(())
}

/// Installs the handler for `sig`, saving the disposition it replaces
/// unless one is saved already (a child re-installing after fork).
fn install(sig: i32, reg: &mut [Option<libc::sigaction>; NSIG]) -> io::Result<()> {
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
    cvt(unsafe { libc::sigaction(sig, &sa, &mut old) })?;
    let slot = &mut reg[sig as usize];
    if slot.is_none() {
        WAS_DEFAULT[sig as usize].store(old.sa_sigaction == libc::SIG_DFL, Ordering::Relaxed);
        *slot = Some(old);
    }
    Ok(())
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
    // SAFETY: kill takes no pointers.
    cvt(unsafe { libc::kill(pid, sig) })?;
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
