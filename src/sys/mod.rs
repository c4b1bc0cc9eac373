//! The OS boundary: every FFI call of rot13d lives below this module.
//!
//! Each wrapper turns `-1` into an `io::Error` and hands out owned types
//! (`OwnedFd`) so that nothing above `sys` needs `unsafe`. A safe function
//! here is safe for every caller (std's I/O safety): one that closes,
//! duplicates onto or adopts a file descriptor takes or returns an
//! `OwnedFd`/`BorrowedFd<'_>`, checks what makes it sound, or is an
//! `unsafe fn` with a `# Safety` section. Functions that take a `RawFd` only
//! do I/O or set options on it: on a stale number they fail or act on
//! whatever file has that number, but never close or duplicate it.
//!
//! Every libc call is written out at its call site as
//! `cvt(unsafe { libc::call(..) })` with a `// SAFETY:` line, so that
//! `clippy::undocumented_unsafe_blocks` checks each one. The layout follows
//! mio's `src/sys/unix`: one file per facility, thin, no policy.

pub mod epoll;
pub mod poll;
pub mod process;
pub mod select;
pub mod shm;
pub mod signal;
pub mod simd;
mod socket;
pub mod uring;

pub use socket::{connect_nonblocking, take_socket_error};

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// A libc return type whose `-1` means "failed, see errno".
pub(crate) trait MinusOne: Copy + PartialEq {
    const MINUS_ONE: Self;
}

impl MinusOne for i32 {
    const MINUS_ONE: i32 = -1;
}
impl MinusOne for i64 {
    const MINUS_ONE: i64 = -1;
}
impl MinusOne for isize {
    const MINUS_ONE: isize = -1;
}

/// Maps a libc call's `-1` to the thread's `errno` (std's `cvt`, mio's
/// `syscall!`).
#[inline]
pub(crate) fn cvt<T: MinusOne>(r: T) -> io::Result<T> {
    if r == T::MINUS_ONE { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// A timeout as a `timespec` for the nanosecond waits (epoll_pwait2,
/// ppoll); `None` stays `None` (forever).
fn timespec(timeout: Option<Duration>) -> Option<libc::timespec> {
    timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    })
}

/// Wraps a freshly returned fd so it is closed on drop.
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a
    // new descriptor, so nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument; a bad fd is EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if new != flags {
        // SAFETY: F_SETFL takes an int of file status flags.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD takes no argument; a bad fd is EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        // SAFETY: F_SETFD takes an int of descriptor flags.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// Whether `fd` is an open descriptor of this process (`fcntl(F_GETFD)`
/// does not fail with EBADF).
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EBADF)
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// A non-blocking, close-on-exec eventfd starting at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    Ok(owned(fd))
}

/// A connected, non-blocking, close-on-exec `AF_UNIX` stream socket pair.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `read(2)` into `buf`; `Ok(0)` is end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `write(2)` from `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is readable.
    let n = cvt(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `recv(2)` into `buf` with no flags; `Ok(0)` is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(n as usize)
}

/// `recv(2)` with `MSG_TRUNC` on a TCP socket: up to `buf.len()` received
/// bytes are discarded by the kernel without being copied (`buf` is
/// passed, so the call is sound whatever the kernel does with it); their
/// count, `Ok(0)` at end of file. For load generators that need not look
/// at what they get back.
pub fn recv_discard(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) })?;
    Ok(n as usize)
}

/// `send(2)` with `MSG_NOSIGNAL`, so a reset peer gives `EPIPE`, not SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is readable.
    let n = cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })?;
    Ok(n as usize)
}

/// Most buffers one `readv`/`writev` takes (Linux `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// `readv(2)` into up to [`IOV_MAX`] buffers.
pub fn readv(fd: RawFd, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(IOV_MAX);
    // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` on Unix and
    // each one describes a live, writable buffer; `n` does not exceed the slice.
    let r = cvt(unsafe { libc::readv(fd, bufs.as_mut_ptr().cast(), n as libc::c_int) })?;
    Ok(r as usize)
}

/// `writev(2)` from up to [`IOV_MAX`] buffers.
pub fn writev(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(IOV_MAX);
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix and
    // each one describes a live, readable buffer; `n` does not exceed the slice.
    let r = cvt(unsafe { libc::writev(fd, bufs.as_ptr().cast(), n as libc::c_int) })?;
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
    let r = cvt(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })?;
    Ok(r as usize)
}

/// Closes `fd` and reports the error, if any (dropping an `OwnedFd`
/// closes it too but ignores errors).
pub fn close(fd: OwnedFd) -> io::Result<()> {
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` was owned by `fd`, whose ownership ended just above: no
    // one else closes or uses it. On Linux the descriptor is released even
    // when close reports an error, so it is never retried.
    cvt(unsafe { libc::close(raw) })?;
    Ok(())
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`, returning the peer address.
pub fn accept(fd: RawFd) -> io::Result<(OwnedFd, Option<std::net::SocketAddr>)> {
    // SAFETY: an all-zero sockaddr_storage is a valid out-buffer.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let addr = (&mut storage as *mut libc::sockaddr_storage).cast();
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: addr/len describe a writable sockaddr_storage of `len` bytes.
    let nfd = cvt(unsafe { libc::accept4(fd, addr, &mut len, flags) })?;
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
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option value is a live c_int and its size is passed along.
    cvt(unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), len) })?;
    Ok(())
}

/// `TCP_NODELAY` on a TCP socket.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// `shutdown(fd, SHUT_WR)`: send FIN after what is queued.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

/// Sets `SO_LINGER` to zero so that close sends RST (an abortive close).
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    let level = libc::SOL_SOCKET;
    // SAFETY: the option value is a live linger struct and its size is passed.
    cvt(unsafe { libc::setsockopt(fd, level, libc::SO_LINGER, (&l as *const libc::linger).cast(), len) })?;
    Ok(())
}

/// `dup(2)` with close-on-exec.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    dup_at_least(fd, 0)
}

/// A close-on-exec duplicate of `fd` numbered `min`, or the lowest free
/// number above it when `min` is taken (`F_DUPFD_CLOEXEC`). Unlike
/// `dup2`, it never closes a descriptor: safe for every caller.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no other.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    Ok(owned(n))
}

/// `dup2(2)`: makes descriptor number `dst` refer to `src`'s file (closing
/// what `dst` referred to) and returns it, owned.
///
/// # Safety
///
/// Nothing may own `dst` (it is closed, or the caller owned it and gives
/// it up here): whatever used the number before would then use `src`'s
/// file, and close it.
pub unsafe fn dup2(src: BorrowedFd<'_>, dst: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the caller promises that nothing owns `dst`; `src` is open
    // for the duration of the borrow.
    let n = cvt(unsafe { libc::dup2(src.as_raw_fd(), dst) })?;
    Ok(owned(n))
}

/// A standard stream of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdStream {
    /// fd 0.
    Stdin = 0,
    /// fd 1.
    Stdout = 1,
    /// fd 2.
    Stderr = 2,
}

/// Points a standard stream at `src`'s file, as a daemon does with
/// `/dev/null`. The three standard descriptors belong to the process, not
/// to an `OwnedFd` (std's `Stdin`/`Stdout`/`Stderr` only borrow them), so
/// replacing one is sound.
pub fn redirect_stdio(src: BorrowedFd<'_>, stream: StdStream) -> io::Result<()> {
    // SAFETY: `stream` is fd 0, 1 or 2, owned by the process (see above);
    // `src` is open for the duration of the borrow.
    cvt(unsafe { libc::dup2(src.as_raw_fd(), stream as RawFd) })?;
    Ok(())
}

/// Takes ownership of fd `fd` passed by the service manager (systemd
/// socket activation, `sd_listen_fds`): `LISTEN_PID` must name this process
/// and `fd` lie in `3..3 + LISTEN_FDS`, it must be open, and it must not
/// have been taken before (each passed fd is handed out once per process).
pub fn take_activated_fd(fd: RawFd) -> io::Result<OwnedFd> {
    static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<i32>().ok());
    let (Some(pid), Some(n)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no LISTEN_PID/LISTEN_FDS: no fds were passed"));
    };
    if pid != process::getpid() || !(3..3i64 + n as i64).contains(&(fd as i64)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} was not passed to this process")));
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if taken.contains(&fd) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("passed fd {fd} was already taken")));
    }
    if !is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    taken.push(fd);
    Ok(owned(fd))
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit out-parameter.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(old, new)`.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: `r` is a valid rlimit; raising soft up to hard is allowed.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) })?;
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

impl Clock {
    fn id(self) -> libc::clockid_t {
        match self {
            Clock::Precise => libc::CLOCK_MONOTONIC,
            Clock::Coarse => libc::CLOCK_MONOTONIC_COARSE,
        }
    }
}

/// Reads a monotonic clock as a `Duration` since an arbitrary origin.
pub fn monotonic(clock: Clock) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec out-parameter; monotonic clocks
    // always exist on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(clock.id(), &mut ts) };
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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec out-parameter.
    unsafe { libc::clock_getres(clock.id(), &mut ts) };
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
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no CPU {cpu}")));
    }
    // SAFETY: an all-zero cpu_set_t is an empty, valid set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set`; `cpu` is below
    // CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// Bytes received on a socket and not yet read (`FIONREAD`).
pub fn inq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut v) })?;
    Ok(v.max(0) as usize)
}

/// Bytes sent on a socket and not yet acknowledged by the peer (TCP) or
/// not yet read by it (Unix stream) (`SIOCOUTQ`).
pub fn outq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut v) })?;
    Ok(v.max(0) as usize)
}

/// The accept queue of a listening TCP socket: connections the kernel has
/// set up that no `accept` has taken yet. Linux reports it for a socket in
/// LISTEN state in TCP_INFO's `tcpi_unacked` (`sk_ack_backlog`; the backlog,
/// `sk_max_ack_backlog`, is in `tcpi_sacked`), which `ss -l` shows as
/// Recv-Q. A socket that is not listening is `InvalidInput`.
pub fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<u32> {
    /// `TCP_LISTEN` of the kernel's TCP states.
    const TCP_LISTEN: u8 = 10;
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid
    // in/out length; the kernel writes at most `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    if info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a listening TCP socket"));
    }
    Ok(info.tcpi_unacked)
}

/// Wakes a loop from other threads: an eventfd owned by the process that
/// made it. In a forked child every copy is inert (`wake` does nothing):
/// the eventfd is the parent's too, and a write would wake the parent's
/// loop. Dropping a copy in the child closes only the child's descriptor.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    pid: i32,
}

impl Waker {
    /// A fresh eventfd of this process.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker { fd: eventfd()?, pid: process::getpid() })
    }

    /// Whether it belongs to this process (false in a forked child).
    pub fn is_local(&self) -> bool {
        process::getpid() == self.pid
    }

    /// Makes the fd readable; false (and nothing written) in another
    /// process than the one that made it.
    pub fn wake(&self) -> bool {
        if !self.is_local() {
            return false;
        }
        // A full counter (EAGAIN) still means "wake up".
        let _ = write(self.fd.as_raw_fd(), &1u64.to_ne_bytes());
        true
    }

    /// Reads the counter back to zero (the loop side).
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = read(self.fd.as_raw_fd(), &mut buf);
    }

    /// The fd to watch for reading.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
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
