//! The OS boundary: every FFI call of rot13d lives below this module.
//!
//! Each wrapper is safe to call: it checks its arguments, turns `-1` into an
//! `io::Error` and hands out owned types (`OwnedFd`) so that nothing above
//! `sys` needs `unsafe`. The layout follows mio's `src/sys/unix`: one file per
//! facility, thin, no policy.

pub mod epoll;
pub mod poll;
pub mod process;
pub mod select;
pub mod shm;
pub mod signal;
pub mod simd;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Runs a libc call and maps `-1` to the thread's `errno` (mio `syscall!`).
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(clippy::macro_metavars_in_unsafe)]
        // SAFETY: every caller passes arguments that satisfy the documented
        // contract of `libc::$fn` (valid pointers and lengths, open fds); the
        // call site comment says why.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Wraps a freshly returned fd so it is closed on drop.
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a
    // new descriptor, so nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if new != flags {
        syscall!(fcntl(fd, libc::F_SETFL, new))?;
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFD))?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        syscall!(fcntl(fd, libc::F_SETFD, new))?;
    }
    Ok(())
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC))?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// A non-blocking, close-on-exec eventfd starting at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    Ok(owned(fd))
}

/// A connected, non-blocking, close-on-exec `AF_UNIX` stream socket pair.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `read(2)` into `buf`; `Ok(0)` is end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// `write(2)` from `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is readable.
    let n = syscall!(write(fd, buf.as_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// `recv(2)` into `buf` with no flags; `Ok(0)` is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))?;
    Ok(n as usize)
}

/// `send(2)` with `MSG_NOSIGNAL`, so a reset peer gives `EPIPE`, not SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is readable.
    let n = syscall!(send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// Most buffers one `readv`/`writev` takes (Linux `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// `readv(2)` into up to [`IOV_MAX`] buffers.
pub fn readv(fd: RawFd, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(IOV_MAX);
    // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` on Unix and
    // each one describes a live, writable buffer; `n` does not exceed the slice.
    let r = syscall!(readv(fd, bufs.as_mut_ptr().cast(), n as libc::c_int))?;
    Ok(r as usize)
}

/// `writev(2)` from up to [`IOV_MAX`] buffers.
pub fn writev(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(IOV_MAX);
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix and
    // each one describes a live, readable buffer; `n` does not exceed the slice.
    let r = syscall!(writev(fd, bufs.as_ptr().cast(), n as libc::c_int))?;
    Ok(r as usize)
}

/// `sendmsg(2)` of several buffers with `MSG_NOSIGNAL` (a `writev` that
/// cannot raise SIGPIPE).
pub fn sendv(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(IOV_MAX);
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = n;
    // SAFETY: `msg` points at `n` live iovecs (IoSlice is iovec-compatible)
    // that stay borrowed for the duration of the call.
    let r = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL))?;
    Ok(r as usize)
}

/// Closes a raw fd that the caller owns (used where the fd was handed over
/// as a raw number, such as a bufferevent with close-on-free).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again; errors from
    // close are not actionable (the fd is gone either way on Linux).
    unsafe {
        libc::close(fd);
    }
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`, returning the peer address.
pub fn accept(fd: RawFd) -> io::Result<(OwnedFd, Option<std::net::SocketAddr>)> {
    // SAFETY: an all-zero sockaddr_storage is a valid out-buffer.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable sockaddr_storage of `len` bytes.
    let nfd = syscall!(accept4(
        fd,
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    Ok((owned(nfd), sockaddr_to_std(&storage)))
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its size is passed along.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}

/// `TCP_NODELAY` on a TCP socket.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// `shutdown(fd, SHUT_WR)`: send FIN after what is queued.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_WR))?;
    Ok(())
}

/// Sets `SO_LINGER` to zero so that close sends RST (an abortive close).
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the option value is a live linger struct and its size is passed.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&l as *const libc::linger).cast(),
        std::mem::size_of::<libc::linger>() as libc::socklen_t
    ))?;
    Ok(())
}

/// `dup(2)` with close-on-exec.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let n = syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0))?;
    Ok(owned(n))
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit out-parameter.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut r))?;
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(old, new)`.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: `r` is a valid rlimit; raising soft up to hard is allowed.
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &r))?;
    }
    Ok((soft, hard.max(soft)))
}

/// Which monotonic clock to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`: precise, a few tens of ns through the vDSO.
    Precise,
    /// `CLOCK_MONOTONIC_COARSE`: tick resolution (1-4 ms), cheaper.
    Coarse,
}

/// Reads a monotonic clock as a `Duration` since an arbitrary origin.
pub fn monotonic(clock: Clock) -> Duration {
    let id = match clock {
        Clock::Precise => libc::CLOCK_MONOTONIC,
        Clock::Coarse => libc::CLOCK_MONOTONIC_COARSE,
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec out-parameter; monotonic clocks
    // always exist on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time consumed so far by the calling thread, user and system
/// (`CLOCK_THREAD_CPUTIME_ID`). Benchmarks measure with it so that their
/// figures do not depend on what else the machine runs.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec out-parameter; the calling thread's
    // CPU clock always exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Resolution of a clock.
pub fn clock_resolution(clock: Clock) -> Duration {
    let id = match clock {
        Clock::Precise => libc::CLOCK_MONOTONIC,
        Clock::Coarse => libc::CLOCK_MONOTONIC_COARSE,
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec out-parameter.
    unsafe { libc::clock_getres(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Number of CPUs this process may run on (`sched_getaffinity`), at least 1.
pub fn available_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is an empty, valid set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    }
    // SAFETY: `set` was filled by sched_getaffinity.
    let n = unsafe { libc::CPU_COUNT(&set) };
    (n as usize).max(1)
}

/// Gives the allocator's free memory back to the kernel: glibc's
/// `malloc_trim(0)` releases free pages anywhere in the heap, not only at
/// its top, where plain `free` leaves the buffers of thousands of closed
/// connections resident. Does nothing with another C library.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only walks and releases the
    // allocator's own free memory, under the allocator's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pins the calling process (or thread) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is an empty, valid set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set`; cpu is bounded by the caller.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    syscall!(sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set))?;
    Ok(())
}

/// Borrows a raw fd for the duration of a call.
///
/// Returns `None` for a negative fd.
pub fn borrow(fd: RawFd) -> Option<BorrowedFd<'static>> {
    if fd < 0 {
        return None;
    }
    // SAFETY: callers only use the borrow during a call on an fd they keep
    // open for that long; BorrowedFd never closes it.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of an fd this process was handed at start (systemd
/// socket activation): it is closed when the result is dropped.
///
/// Returns an `OwnedFd`; the caller promises nothing else owns `fd`.
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    owned(fd)
}

/// `dup2(2)`: makes `new` refer to what `old` refers to.
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    syscall!(dup2(old, new))?;
    Ok(())
}

/// Bytes received on a socket and not yet read (`FIONREAD`).
pub fn inq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    syscall!(ioctl(fd, libc::FIONREAD, &mut v))?;
    Ok(v.max(0) as usize)
}

/// Bytes sent on a socket and not yet acknowledged by the peer (TCP) or
/// not yet read by it (Unix stream) (`SIOCOUTQ`).
pub fn outq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer.
    syscall!(ioctl(fd, libc::TIOCOUTQ, &mut v))?;
    Ok(v.max(0) as usize)
}

/// Asks the CPU to start loading the cache line at `p`, so that a later
/// access does not wait for memory. A hint only: it never faults and has no
/// effect another thread or the program can observe.
#[inline(always)]
pub fn prefetch<T: ?Sized>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it does not fault on any address (null,
    // dangling or unmapped) and reads nothing into the program; SSE, which it
    // needs, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
