//! Listening sockets: bound by the master (socket2), inherited by the
//! workers across fork, kept open across reloads; or passed in by systemd
//! socket activation (`LISTEN_FDS`/`LISTEN_PID`, with `LISTEN_FDNAMES` a
//! socket named `admin` is the admin endpoint, the others rot13 listeners:
//! [`activated_kinds`]).
//!
//! A rot13 address is a SO_REUSEPORT group, one socket per worker index,
//! so that the kernel spreads connections evenly and a reload can grow the
//! group. SO_REUSEPORT also lets any other process of the same user join
//! the group: a second `rot13d` started by mistake would silently take part
//! of the traffic. So before an address is bound, a probe socket without
//! SO_REUSEPORT is bound to it: the kernel refuses it (EADDRINUSE) while
//! anyone else holds the address, listening or in a reuseport group
//! (checked on Linux 6.x: a plain SO_REUSEADDR bind conflicts with a
//! listening socket, wildcard or specific, whatever that one's options).
//! The probe is closed before the group binds; it never listened, so the
//! port is free again at once. The probe is bound with the group's own
//! options, IPV6_V6ONLY included, so it conflicts exactly where the group
//! would: a dual-stack `[::]:P` (`ipv6_only = false`) with anyone on
//! `0.0.0.0:P` or another IPv4 address of port P, an IPv6-only one not.

use super::error::{ConfigError, Error};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

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

/// A listening socket shared by the master and the serving processes or
/// generations that accept on it: closed when the last holder drops it.
pub type ListenFd = Rc<OwnedFd>;

/// A bound, listening, non-blocking socket, or a SO_REUSEPORT group of
/// them on one address.
///
/// Every socket of a group stays open in the master, so a connection queued
/// on the socket of a worker that died or retires waits for the replacement
/// instead of being reset; a group never shrinks (after a reload to fewer
/// workers, worker `i` serves every socket `j` with `j % workers == i`).
#[derive(Debug)]
pub struct Listener {
    /// The address asked for (port 0 stays 0): the key across reloads.
    pub requested: SocketAddr,
    /// The address bound (the real port).
    pub local: SocketAddr,
    /// What it serves.
    pub kind: Kind,
    /// The sockets: one, or the reuseport group (socket `j` for worker
    /// index `j`).
    pub socks: Vec<ListenFd>,
    backlog: u32,
    /// IPV6_V6ONLY of an IPv6 address (`[server] ipv6_only`).
    ipv6_only: bool,
    /// Passed by systemd: one socket all workers share, never grown.
    activated: bool,
}

impl Listener {
    /// The raw fd of the first socket (the admin endpoint's only one).
    pub fn raw(&self) -> RawFd {
        self.socks.first().map_or(-1, |s| s.as_raw_fd())
    }

    /// The sockets worker `index` of `workers` accepts on (all of them with
    /// a single serving process).
    pub fn fds_for(&self, index: usize, workers: usize) -> Vec<ListenFd> {
        let n = workers.max(1);
        self.socks.iter().enumerate().filter(|(j, _)| j % n == index % n).map(|(_, f)| f.clone()).collect()
    }

    /// Grows a reuseport group to `n` sockets (a reload to more workers).
    pub fn grow(&mut self, n: usize) -> Result<(), Error> {
        if self.activated || self.kind == Kind::Admin {
            return Ok(());
        }
        while self.socks.len() < n {
            let s = socket(self.local, self.backlog, true, self.ipv6_only)?;
            self.socks.push(Rc::new(OwnedFd::from(s)));
        }
        Ok(())
    }
}

fn socket(addr: SocketAddr, backlog: u32, reuseport: bool, ipv6_only: bool) -> Result<Socket, Error> {
    let err = |source| Error::Listen { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if reuseport {
        sock.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        // Set either way: the system default (net.ipv6.bindv6only) must
        // not decide.
        sock.set_only_v6(ipv6_only).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    if backlog > 0 {
        sock.listen(backlog.min(i32::MAX as u32) as i32).map_err(err)?;
    }
    sock.set_nonblocking(true).map_err(err)?;
    Ok(sock)
}

/// Binds `addr`: the admin endpoint as one socket, a rot13 address as a
/// SO_REUSEPORT group of `group` sockets (at least one) after a probe that
/// fails with EADDRINUSE if anyone else holds the address (see the module
/// documentation). SO_REUSEADDR always; IPV6_V6ONLY for an IPv6 address
/// as `ipv6_only` says (true: `[::]` and `0.0.0.0` can both be bound).
pub fn bind(addr: SocketAddr, backlog: u32, kind: Kind, group: usize, ipv6_only: bool) -> Result<Listener, Error> {
    let (first, local) = match kind {
        Kind::Admin => {
            let s = socket(addr, backlog, false, ipv6_only)?;
            let local = s.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
            (Some(s), local)
        }
        Kind::Rot13 => {
            // The probe: no SO_REUSEPORT, never listening; dropped at once.
            let probe = socket(addr, 0, false, ipv6_only)?;
            let local = probe.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
            drop(probe);
            (None, local)
        }
    };
    let mut l = Listener {
        requested: addr,
        local,
        kind,
        socks: first.into_iter().map(|s| Rc::new(OwnedFd::from(s))).collect(),
        backlog,
        ipv6_only,
        activated: false,
    };
    l.grow(group.max(1))?;
    Ok(l)
}

/// The name that makes a passed socket the admin endpoint.
pub const ADMIN_FDNAME: &str = "admin";

/// What each of `n` passed sockets serves, from `LISTEN_FDNAMES`
/// (`names`; colon-separated, one name per fd, as `sd_listen_fds_with_names`
/// reads it): a socket named [`ADMIN_FDNAME`] is the admin endpoint, any
/// other name a rot13 listener; without the variable every socket is a
/// rot13 listener. A name list of another length than `n`, or more than
/// one `admin` (the endpoint is one socket, as `[admin] listen` is one
/// address), is refused with the reason.
pub fn activated_kinds(names: Option<&str>, n: usize) -> Result<Vec<Kind>, String> {
    let Some(names) = names else { return Ok(vec![Kind::Rot13; n]) };
    let names: Vec<&str> = names.split(':').collect();
    if names.len() != n {
        return Err(format!("it names {} sockets ({names:?}) but LISTEN_FDS passes {n}", names.len()));
    }
    let kinds: Vec<Kind> =
        names.iter().map(|&name| if name == ADMIN_FDNAME { Kind::Admin } else { Kind::Rot13 }).collect();
    if kinds.iter().filter(|k| **k == Kind::Admin).count() > 1 {
        return Err(format!("more than one socket is named {ADMIN_FDNAME:?}; the admin endpoint is one socket"));
    }
    Ok(kinds)
}

/// The sockets systemd passed to this process, if any (`LISTEN_PID` is
/// our pid and `LISTEN_FDS` counts fds from 3), each of the kind its name
/// in `LISTEN_FDNAMES` says ([`activated_kinds`]).
pub fn activated() -> Result<Option<Vec<Listener>>, Error> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<i32>().ok());
    let (Some(pid), Some(n)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else { return Ok(None) };
    if pid != crate::sys::process::getpid() || n <= 0 {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let kinds = activated_kinds(names.as_deref(), n as usize).map_err(|message| ConfigError::Invalid {
        key: "LISTEN_FDNAMES".into(),
        message,
        path: None,
        line: None,
    })?;
    // The variables stay set: removing them is `unsafe` in edition 2024,
    // and LISTEN_PID names only us, so no child takes the fds for its own.
    let mut out = Vec::new();
    for (fd, kind) in (3..3 + n).zip(kinds) {
        let unusable = |e| Error::os(format!("use socket-activated fd {fd}"), e);
        crate::sys::set_cloexec(fd, true).map_err(unusable)?;
        // The fds were passed to us by systemd and are ours alone.
        let sock = Socket::from(crate::sys::take_activated_fd(fd).map_err(unusable)?);
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| unusable(std::io::Error::other("not an inet socket")))?;
        sock.set_nonblocking(true).map_err(|e| Error::os("set a socket non-blocking", e))?;
        out.push(Listener {
            requested: local,
            local,
            kind,
            socks: vec![Rc::new(OwnedFd::from(sock))],
            backlog: 0,
            ipv6_only: true,
            activated: true,
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_address_is_refused_even_with_reuseport() {
        let first = bind("127.0.0.1:0".parse().expect("literal"), 16, Kind::Rot13, 2, true).expect("free port");
        assert_eq!(first.socks.len(), 2);
        let again = bind(first.local, 16, Kind::Rot13, 2, true);
        match again {
            Err(Error::Listen { addr, source }) => {
                assert_eq!(addr, first.local);
                assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE));
            }
            other => panic!("a second group on {} was allowed: {other:?}", first.local),
        }
        // Our own group still grows (a reload to more workers).
        let mut first = first;
        first.grow(4).expect("grows");
        assert_eq!(first.socks.len(), 4);
    }

    /// A socket of another process: listening on `addr`, plain options.
    fn other(addr: SocketAddr, v6only: bool) -> Socket {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        if addr.is_ipv6() {
            s.set_only_v6(v6only).expect("v6only");
        }
        s.bind(&addr.into()).expect("bind");
        s.listen(4).expect("listen");
        s
    }

    fn port_of(s: &Socket) -> u16 {
        s.local_addr().ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port())
    }

    fn refused(r: Result<Listener, Error>) -> bool {
        matches!(r, Err(Error::Listen { source, .. }) if source.raw_os_error() == Some(libc::EADDRINUSE))
    }

    #[test]
    fn a_dual_stack_group_is_refused_where_ipv4_is_taken() {
        let v4 = other("0.0.0.0:0".parse().expect("literal"), true);
        let wild6: SocketAddr = format!("[::]:{}", port_of(&v4)).parse().expect("literal");
        assert!(refused(bind(wild6, 16, Kind::Rot13, 2, false)), "dual stack [::] beside another's 0.0.0.0");
        let only6 = bind(wild6, 16, Kind::Rot13, 2, true).expect("IPv6 only does not conflict with IPv4");
        assert_eq!(only6.socks.len(), 2);
        drop(only6);
        // The other way round: another's dual-stack [::] holds IPv4 too.
        let dual = other("[::]:0".parse().expect("literal"), false);
        let wild4: SocketAddr = format!("0.0.0.0:{}", port_of(&dual)).parse().expect("literal");
        assert!(refused(bind(wild4, 16, Kind::Rot13, 1, true)), "0.0.0.0 beside another's dual-stack [::]");
        let lo4: SocketAddr = format!("127.0.0.1:{}", port_of(&dual)).parse().expect("literal");
        assert!(refused(bind(lo4, 16, Kind::Rot13, 1, true)));
    }

    #[test]
    fn a_dual_stack_group_serves_ipv4_and_an_ipv6_only_one_does_not() {
        let dual = bind("[::]:0".parse().expect("literal"), 16, Kind::Rot13, 1, false).expect("free port");
        let port = dual.local.port();
        let v4 = std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 through [::]");
        drop(v4);
        drop(dual);
        let only = bind("[::]:0".parse().expect("literal"), 16, Kind::Rot13, 1, true).expect("free port");
        // Nobody holds IPv4 on that port: another process may bind it.
        let v4 = other(format!("0.0.0.0:{}", only.local.port()).parse().expect("literal"), true);
        assert_eq!(port_of(&v4), only.local.port());
    }

    #[test]
    fn fd_names_say_which_socket_is_the_admin_endpoint() {
        use Kind::{Admin, Rot13};
        assert_eq!(activated_kinds(None, 2), Ok(vec![Rot13, Rot13]), "no names: all rot13");
        assert_eq!(activated_kinds(Some("rot13:admin"), 2), Ok(vec![Rot13, Admin]));
        assert_eq!(activated_kinds(Some("admin:rot13:other"), 3), Ok(vec![Admin, Rot13, Rot13]));
        // systemd's default name is the socket unit's; an empty one is a name too.
        assert_eq!(activated_kinds(Some("rot13d.socket"), 1), Ok(vec![Rot13]));
        assert_eq!(activated_kinds(Some(""), 1), Ok(vec![Rot13]));
        assert_eq!(activated_kinds(Some("Admin"), 1), Ok(vec![Rot13]), "names are case-sensitive");
        let short = activated_kinds(Some("admin"), 2).expect_err("one name for two fds");
        assert!(short.contains("names 1 sockets") && short.contains("LISTEN_FDS passes 2"), "{short}");
        let two = activated_kinds(Some("admin:admin"), 2).expect_err("two admin sockets");
        assert!(two.contains("more than one"), "{two}");
    }

    #[test]
    fn a_single_worker_group_can_grow() {
        let mut l = bind("127.0.0.1:0".parse().expect("literal"), 16, Kind::Rot13, 1, true).expect("free port");
        l.grow(3).expect("one worker's socket joins a group");
        assert_eq!(l.fds_for(1, 3).len(), 1);
        assert_eq!(l.fds_for(0, 2).len(), 2, "sockets 0 and 2");
        assert_eq!(l.fds_for(0, 0).len(), 3, "a single serving process takes them all");
    }
}
