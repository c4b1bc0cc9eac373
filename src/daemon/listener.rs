//! Listening sockets: bound by the master (socket2), inherited by the
//! workers across fork, kept open across reloads; or passed in by systemd
//! socket activation (`LISTEN_FDS`/`LISTEN_PID`).

use super::error::Error;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The ROT13 protocol.
    Rot13,
    /// The admin HTTP endpoint.
    Admin,
}

impl Kind {
    /// The name in logs (`kind=rot13`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rot13 => "rot13",
            Kind::Admin => "admin",
        }
    }
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub struct Listener {
    /// The address asked for (port 0 stays 0): the key across reloads.
    pub requested: SocketAddr,
    /// The address bound (the real port).
    pub local: SocketAddr,
    /// What it serves.
    pub kind: Kind,
    /// The socket.
    pub fd: OwnedFd,
}

impl Listener {
    /// The raw fd.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Binds `addr` with SO_REUSEADDR (and IPV6_V6ONLY for an IPv6 address, so
/// `[::]` and `0.0.0.0` can both be bound), listening with `backlog`.
pub fn bind(addr: SocketAddr, backlog: u32, kind: Kind) -> Result<Listener, Error> {
    let err = |source| Error::Listen { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(backlog.min(i32::MAX as u32) as i32).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    let local = sock.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
    Ok(Listener { requested: addr, local, kind, fd: OwnedFd::from(sock) })
}

/// The sockets systemd passed to this process, if any (`LISTEN_PID` is
/// our pid and `LISTEN_FDS` counts fds from 3).
pub fn activated() -> Result<Option<Vec<Listener>>, Error> {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<i32>().ok());
    let n = std::env::var("LISTEN_FDS").ok().and_then(|p| p.trim().parse::<i32>().ok());
    let (Some(pid), Some(n)) = (pid, n) else { return Ok(None) };
    if pid != crate::sys::process::getpid() || n <= 0 {
        return Ok(None);
    }
    // The variables stay set: removing them is `unsafe` in edition 2024,
    // and LISTEN_PID names only us, so no child takes the fds for its own.
    let mut out = Vec::new();
    for fd in 3..3 + n {
        crate::sys::set_cloexec(fd, true).map_err(|e| Error::os(format!("use socket-activated fd {fd}"), e))?;
        // The fds were passed to us by systemd and are ours alone.
        let owned = crate::sys::adopt_fd(fd);
        let sock = Socket::from(owned);
        let local = sock.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| {
            Error::os(format!("use socket-activated fd {fd}"), std::io::Error::other("not an inet socket"))
        })?;
        sock.set_nonblocking(true).map_err(|e| Error::os("set a socket non-blocking", e))?;
        out.push(Listener { requested: local, local, kind: Kind::Rot13, fd: OwnedFd::from(sock) });
    }
    Ok(Some(out))
}
