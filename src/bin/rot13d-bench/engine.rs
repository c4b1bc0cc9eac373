//! The load engine: one thread, level-triggered epoll, non-blocking sockets.
//!
//! Every connection sends slices of its [`Pattern`] from a stream offset and
//! checks every byte it reads against the pattern's rot13 image at the same
//! offset. What a connection may have in flight (sent, not yet answered) is
//! bounded by its window, so neither side can deadlock on full socket
//! buffers: a bulk connection has a large window and writes in big slices,
//! an interactive one has a window of one line, which is a closed loop
//! (send a line, wait for its answer, send the next) whose round trips are
//! timed.

use crate::Fail;
use crate::pattern::Pattern;
use rot13d::sys::{
    self,
    epoll::{EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Epoll, Op},
};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

/// How one connection behaves.
#[derive(Clone)]
pub struct Spec {
    /// What it sends and expects.
    pub pattern: Rc<Pattern>,
    /// Most bytes sent but not yet answered.
    pub window: u64,
    /// Smallest write worth a syscall unless it is the last one.
    pub min_write: u64,
    /// Bytes to send in all (`u64::MAX`: until told to stop).
    pub limit: u64,
    /// Time each round trip (window should then be one line).
    pub interactive: bool,
    /// Count what comes back without reading or checking it (the kernel
    /// discards it: `MSG_TRUNC`), so that this connection costs the
    /// generator about half as much per byte as the server.
    pub discard: bool,
}

impl Spec {
    /// A bulk stream: at most `window` bytes unanswered, written a quarter
    /// window at a time at least.
    pub fn bulk(pattern: &Rc<Pattern>, window: u64, limit: u64, discard: bool) -> Spec {
        Spec { pattern: pattern.clone(), window, min_write: window / 4, limit, interactive: false, discard }
    }

    /// Closed-loop round trips of one `line`-byte line each, timed.
    pub fn interactive(pattern: &Rc<Pattern>, line: usize, limit: u64) -> Spec {
        let line = line as u64;
        Spec { pattern: pattern.clone(), window: line, min_write: line, limit, interactive: true, discard: false }
    }
}

struct Conn {
    _stream: TcpStream,
    fd: RawFd,
    spec: Spec,
    /// Stream offset of byte 0 in the pattern (a whole line, differs per
    /// connection so that connections send different data).
    base: u64,
    sent: u64,
    recv: u64,
    /// When the line in flight was sent (interactive).
    t0: Instant,
    /// The events registered with epoll.
    mask: u32,
    /// The write side is shut down: EOF from the server is expected.
    shut: bool,
    eof: bool,
}

/// A set of connections driven by one epoll loop.
pub struct Engine {
    ep: Epoll,
    conns: Vec<Conn>,
    rbuf: Vec<u8>,
    events: Vec<(u32, u64)>,
    reading: bool,
    /// Record round-trip times into `lat_ns`.
    pub record: bool,
    /// Bytes answered on bulk connections.
    pub bulk_bytes: u64,
    /// Bytes answered on interactive connections.
    pub inter_bytes: u64,
    /// Round trips completed on interactive connections.
    pub inter_reqs: u64,
    /// Round-trip times in ns while `record` is on.
    pub lat_ns: Vec<u32>,
}

fn io_fail(what: &str, e: io::Error) -> Fail {
    Fail::io(format!("{what}: {e}"))
}

impl Engine {
    /// An engine that reads at most `read_chunk` bytes per read.
    pub fn new(read_chunk: usize) -> Result<Engine, Fail> {
        Ok(Engine {
            ep: Epoll::new(512).map_err(|e| io_fail("epoll_create", e))?,
            conns: Vec::new(),
            rbuf: vec![0; read_chunk.max(1)],
            events: Vec::with_capacity(512),
            reading: true,
            record: false,
            bulk_bytes: 0,
            inter_bytes: 0,
            inter_reqs: 0,
            lat_ns: Vec::new(),
        })
    }

    /// Adds a connected stream; returns its index.
    pub fn add(&mut self, stream: TcpStream, spec: Spec) -> Result<usize, Fail> {
        let fd = stream.as_raw_fd();
        stream.set_nonblocking(true).map_err(|e| io_fail("set_nonblocking", e))?;
        stream.set_nodelay(true).map_err(|e| io_fail("set_nodelay", e))?;
        let i = self.conns.len();
        let lines = spec.pattern.lines() as u64;
        let base = (i as u64 * 7919 % lines) * spec.pattern.line_len as u64;
        let mask = if self.reading { EPOLLIN as u32 } else { 0 };
        self.ep.ctl(Op::Add, fd, mask, i as u64).map_err(|e| io_fail("epoll_ctl", e))?;
        self.conns.push(Conn {
            _stream: stream,
            fd,
            spec,
            base,
            sent: 0,
            recv: 0,
            t0: Instant::now(),
            mask,
            shut: false,
            eof: false,
        });
        Ok(i)
    }

    /// Starts sending on every connection.
    pub fn kick(&mut self) -> Result<(), Fail> {
        for i in 0..self.conns.len() {
            self.try_send(i)?;
        }
        Ok(())
    }

    /// Reading on or off (off: the server's answers pile up in the socket
    /// buffers and, past them, in the server).
    pub fn set_reading(&mut self, on: bool) -> Result<(), Fail> {
        self.reading = on;
        for i in 0..self.conns.len() {
            self.try_send(i)?;
        }
        Ok(())
    }

    /// Sends nothing more than the rest of the line in progress (a server
    /// answers a line only once its LF arrived).
    pub fn stop_sending(&mut self) {
        for c in &mut self.conns {
            let l = c.spec.pattern.line_len as u64;
            c.spec.limit = c.spec.limit.min(c.sent.div_ceil(l) * l);
        }
    }

    /// Every connection sent its limit and got all of it back.
    pub fn all_answered(&self) -> bool {
        self.conns.iter().all(|c| c.sent == c.spec.limit && c.recv == c.sent)
    }

    /// Every connection saw EOF after [`Engine::shutdown_all`].
    pub fn all_eof(&self) -> bool {
        self.conns.iter().all(|c| c.eof)
    }

    /// Bytes sent and received so far over all connections.
    pub fn totals(&self) -> (u64, u64) {
        self.conns.iter().fold((0, 0), |(s, r), c| (s + c.sent, r + c.recv))
    }

    /// Bytes answered on connection `i` so far.
    pub fn recv_of(&self, i: usize) -> u64 {
        self.conns[i].recv
    }

    /// Half-closes every connection (the server must then answer what is
    /// left and close).
    pub fn shutdown_all(&mut self) -> Result<(), Fail> {
        for c in &mut self.conns {
            sys::shutdown_write(c.fd).map_err(|e| io_fail("shutdown", e))?;
            c.shut = true;
        }
        Ok(())
    }

    /// One `epoll_wait` and the work it reports; returns the number of events.
    pub fn step(&mut self, timeout_ms: i32) -> Result<usize, Fail> {
        let mut evs = std::mem::take(&mut self.events);
        evs.clear();
        self.ep.wait(timeout_ms, |e| evs.push((e.events, e.data))).map_err(|e| io_fail("epoll_wait", e))?;
        let mut res = Ok(evs.len());
        for &(bits, i) in &evs {
            let i = i as usize;
            if self.reading
                && bits & (EPOLLIN | EPOLLHUP | EPOLLERR) as u32 != 0
                && let Err(e) = self.on_readable(i)
            {
                res = Err(e);
                break;
            }
            if let Err(e) = self.try_send(i) {
                res = Err(e);
                break;
            }
        }
        self.events = evs;
        res
    }

    fn on_readable(&mut self, i: usize) -> Result<(), Fail> {
        let c = &mut self.conns[i];
        if c.eof {
            return Ok(());
        }
        let cap = self.rbuf.len().min(c.spec.pattern.size);
        let r = if c.spec.discard {
            sys::recv_discard(c.fd, &mut self.rbuf[..cap])
        } else {
            sys::read(c.fd, &mut self.rbuf[..cap])
        };
        let n = match r {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                return Ok(());
            }
            Err(e) => {
                return Err(Fail::io(format!("conn {i}: read after {} of {} bytes answered: {e}", c.recv, c.sent)));
            }
        };
        if n == 0 {
            if c.shut && c.recv == c.sent {
                c.eof = true;
                let _ = self.ep.ctl(Op::Del, c.fd, 0, 0);
                c.mask = 0;
                return Ok(());
            }
            return Err(Fail::io(format!(
                "conn {i}: server closed the connection after {} of {} bytes answered",
                c.recv, c.sent
            )));
        }
        let got = &self.rbuf[..n];
        if c.recv + n as u64 > c.sent {
            return Err(Fail::mismatch(format!(
                "conn {i}: server sent {} bytes more than it was sent (stream offset {})",
                c.recv + n as u64 - c.sent,
                c.sent
            )));
        }
        if c.spec.discard {
            c.recv += n as u64;
            self.bulk_bytes += n as u64;
            return Ok(());
        }
        if let Err(m) = c.spec.pattern.check(c.base + c.recv, got) {
            let at = c.recv + m.index as u64;
            let line = at / c.spec.pattern.line_len as u64;
            let col = at % c.spec.pattern.line_len as u64;
            let from = m.index.saturating_sub(16);
            let to = (m.index + 16).min(n);
            return Err(Fail::mismatch(format!(
                "conn {i}: wrong byte at stream offset {at} (line {line}, column {col}): expected {:?} got {:?}; \
                 expected {:?}, got {:?}",
                m.expected as char,
                m.got as char,
                String::from_utf8_lossy(&c.spec.pattern.expect_at(c.base + c.recv, n)[from..to]),
                String::from_utf8_lossy(&got[from..to]),
            )));
        }
        c.recv += n as u64;
        if c.spec.interactive {
            self.inter_bytes += n as u64;
            if c.recv == c.sent {
                self.inter_reqs += 1;
                if self.record {
                    let ns = c.t0.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                    self.lat_ns.push(ns);
                }
            }
        } else {
            self.bulk_bytes += n as u64;
        }
        Ok(())
    }

    fn try_send(&mut self, i: usize) -> Result<(), Fail> {
        let c = &mut self.conns[i];
        let room = c.spec.window.saturating_sub(c.sent - c.recv);
        let left = c.spec.limit - c.sent;
        let amt = room.min(left).min(c.spec.pattern.size as u64);
        let mut want_out = false;
        if amt > 0 && (amt >= c.spec.min_write || amt == left) && !c.shut {
            if c.sent == c.recv {
                c.t0 = Instant::now();
            }
            match sys::send(c.fd, c.spec.pattern.send_at(c.base + c.sent, amt as usize)) {
                Ok(n) => {
                    c.sent += n as u64;
                    // Short: the socket buffer is full. Full but capped by
                    // the pattern period: there is more to send right away.
                    want_out = (n as u64) < amt || (room > amt && left > amt);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => want_out = true,
                Err(e) => {
                    return Err(Fail::io(format!(
                        "conn {i}: send after {} bytes sent, {} answered: {e}",
                        c.sent, c.recv
                    )));
                }
            }
        }
        let mask = if self.reading && !c.eof { EPOLLIN as u32 } else { 0 } | if want_out { EPOLLOUT as u32 } else { 0 };
        if mask != c.mask && !c.eof {
            self.ep.ctl(Op::Mod, c.fd, mask, i as u64).map_err(|e| io_fail("epoll_ctl", e))?;
            c.mask = mask;
        }
        Ok(())
    }
}
