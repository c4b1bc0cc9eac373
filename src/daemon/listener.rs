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

/// A bound, listening, non-blocking socket, or a SO_REUSEPORT group of
/// them on one address.
///
/// Accepts are spread over the workers by a reuseport group: one socket per
/// worker index, and the kernel hashes each new connection to one socket, so
/// the split is even and no worker is woken for a connection another takes
/// (measured: one shared socket split 10,000 short connections 34/66 over
/// two workers). Every socket of a group stays open in the master, so a
/// connection queued on the socket of a worker that died or retires waits
/// for the replacement instead of being reset; a group never shrinks (after
/// a reload to fewer workers, worker `i` serves every socket `j` with
/// `j % workers == i`).
#[derive(Debug)]
pub struct Listener {
    /// The address asked for (port 0 stays 0): the key across reloads.
    pub requested: SocketAddr,
    /// The address bound (the real port).
    pub local: SocketAddr,
    /// What it serves.
    pub kind: Kind,
    /// The socket (the first of the group).
    pub fd: OwnedFd,
    /// The other sockets of a reuseport group.
    pub group: Vec<OwnedFd>,
    backlog: u32,
    /// Passed by systemd: one socket all workers share, never grown.
    activated: bool,
}

impl Listener {
    /// The raw fd.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The sockets worker `index` of `workers` accepts on.
    pub fn fds_for(&self, index: usize, workers: usize) -> Vec<RawFd> {
        let all = std::iter::once(&self.fd).chain(self.group.iter());
        if self.group.is_empty() || workers == 0 {
            return all.map(|f| f.as_raw_fd()).collect();
        }
        all.enumerate().filter(|(j, _)| j % workers == index % workers).map(|(_, f)| f.as_raw_fd()).collect()
    }

    /// Grows a reuseport group to `n` sockets (reload to more workers).
    pub fn grow(&mut self, n: usize) -> Result<(), Error> {
        if self.activated || (self.group.is_empty() && n <= 1) {
            return Ok(());
        }
        while 1 + self.group.len() < n {
            let s = socket(self.local, self.backlog, true)?;
            self.group.push(OwnedFd::from(s));
        }
        Ok(())
    }

    /// Every socket of the group.
    pub fn all_fds(&self) -> Vec<RawFd> {
        std::iter::once(&self.fd).chain(self.group.iter()).map(|f| f.as_raw_fd()).collect()
    }
}

fn socket(addr: SocketAddr, backlog: u32, reuseport: bool) -> Result<Socket, Error> {
    let err = |source| Error::Listen { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if reuseport {
        sock.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(backlog.min(i32::MAX as u32) as i32).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    Ok(sock)
}

/// Binds `addr` with SO_REUSEADDR (and IPV6_V6ONLY for an IPv6 address, so
/// `[::]` and `0.0.0.0` can both be bound), listening with `backlog`; with
/// `group > 1`, as a SO_REUSEPORT group of that many sockets.
pub fn bind(addr: SocketAddr, backlog: u32, kind: Kind, group: usize) -> Result<Listener, Error> {
    let reuseport = group > 1;
    let sock = socket(addr, backlog, reuseport)?;
    let local = sock.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
    let mut l = Listener {
        requested: addr,
        local,
        kind,
        fd: OwnedFd::from(sock),
        group: Vec::new(),
        backlog,
        activated: false,
    };
    if reuseport {
        l.grow(group)?;
    }
    Ok(l)
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
        let owned =
            crate::sys::take_activated_fd(fd).map_err(|e| Error::os(format!("use socket-activated fd {fd}"), e))?;
        let sock = Socket::from(owned);
        let local = sock.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| {
            Error::os(format!("use socket-activated fd {fd}"), std::io::Error::other("not an inet socket"))
        })?;
        sock.set_nonblocking(true).map_err(|e| Error::os("set a socket non-blocking", e))?;
        out.push(Listener {
            requested: local,
            local,
            kind: Kind::Rot13,
            fd: OwnedFd::from(sock),
            group: Vec::new(),
            backlog: 0,
            activated: true,
        });
    }
    Ok(Some(out))
}
