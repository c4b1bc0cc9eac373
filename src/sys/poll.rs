//! Safe `poll(2)` over a slice of [`PollFd`].

use super::cvt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

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
    interrupted_is_zero(cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }))
}

/// `ppoll(2)`: the timeout as a timespec (nanoseconds; None = forever), no
/// signal mask change; EINTR gives `Ok(0)`.
pub fn ppoll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = super::timespec(timeout);
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd
    // records; `tsp` is null or points at a live timespec; a null mask
    // leaves the signal mask alone.
    let r = cvt(unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tsp, std::ptr::null()) });
    interrupted_is_zero(r)
}

fn interrupted_is_zero(r: io::Result<libc::c_int>) -> io::Result<usize> {
    match r {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}
