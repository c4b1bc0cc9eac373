//! Safe `poll(2)` over a slice of [`PollFd`].

use super::syscall;
use std::io;
use std::os::fd::RawFd;

pub use libc::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLRDHUP};

/// `struct pollfd`, a plain value type.
pub type PollFd = libc::pollfd;

/// A `pollfd` for `fd` watching `events`.
pub fn pollfd(fd: RawFd, events: i16) -> PollFd {
    libc::pollfd { fd, events, revents: 0 }
}

/// `poll(2)` with a timeout in ms (-1 = forever); EINTR gives `Ok(0)`.
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd records.
    match syscall!(poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms)) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}
