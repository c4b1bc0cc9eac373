//! The socket calls the reactor makes itself (an outgoing connect, its
//! result), through socket2, so that `reactor` holds raw numbers only as
//! `OwnedFd`/`BorrowedFd`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A non-blocking, close-on-exec TCP socket connecting to `addr`; whether
/// the connect is still under way (`EINPROGRESS`: wait for writability,
/// then [`take_socket_error`]).
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
    let pending = match sock.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(e),
    };
    Ok((OwnedFd::from(sock), pending))
}

/// The socket's pending error (`SO_ERROR`), cleared by reading it: how a
/// non-blocking connect ended.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    socket2::SockRef::from(&fd).take_error()
}

/// Whether `fd` is a stream socket (`SO_TYPE`): what the io_uring data
/// path of a bufferevent takes (receives and sends; a pipe or a file has
/// neither).
pub fn is_stream_socket(fd: BorrowedFd<'_>) -> bool {
    socket2::SockRef::from(&fd).r#type().is_ok_and(|t| t == socket2::Type::STREAM)
}
