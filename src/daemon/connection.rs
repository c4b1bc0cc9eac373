//! One client: a [`BufferEvent`] whose context is the protocol state.
//!
//! Life of a connection (each step a callback of the bufferevent):
//! - header (only with `[server] proxy_protocol`): every read is handed to
//!   the [`HeaderPhase`] first. Until the header is complete nothing is
//!   answered; once it is (drained from the input), the framer runs on what
//!   follows it in the same callback. A refused header (or none within
//!   [`proxy::DEADLINE`] of the accept) frees the connection at once,
//!   without a byte of answer. The deadline runs from the accept: the read
//!   timeout is armed with what is left of it after every read, and gets
//!   the idle timeout back when the header is done.
//! - read: [`Framer::process`] turns complete lines of the input into
//!   output in place; the bufferevent writes it at once and pauses reading
//!   while more than the write high watermark is pending (backpressure).
//! - EOF: the partial line is answered without LF, then close-when-flushed.
//! - read timeout (= idle_timeout): idle only if no output is pending;
//!   then answered as at EOF and closed. Otherwise reading resumes.
//! - write timeout: output made no progress for `write_timeout`: closed.
//! - error or reset: closed, everything it held freed.
//!
//! `rot13d_bytes_sent_total` counts bytes written to the socket, not
//! queued: `unsent` is what was queued and not yet counted; whenever a
//! callback runs (read, the write callback when the output drains, an
//! event) the output has shrunk by what the socket took since, and that is
//! counted. What a close drops unwritten is never counted; a close that
//! flushed (the bufferevent frees itself only once its output is empty)
//! counts the rest in `on_close`.
//!
//! What a connection knows beyond the stream (its client's address from a
//! PROXY header, the totals of its access record) is a [`Meta`], kept in
//! its worker's table (by connection id) and only when something needs it,
//! so that with the PROXY protocol, access records and DEBUG logs off it
//! costs no memory (a pointer in `Conn` would cost 16 B of every
//! connection's allocation: 8, rounded up by malloc), no allocation and no
//! clock read: one test of a flag of the worker's ("no connection has
//! one") per callback. `client=` in every log line of a connection is the header's
//! source when it gave one, else the socket's peer.

use super::metrics::Counter;
use super::proxy::{self, Header, HeaderPhase, Progress, Refusal};
use super::worker::{LANE_BULK, LANE_INTERACTIVE, Shared};
use crate::protocol::{Emitted, Framer};
use crate::reactor::{BevEvent, BevSetup, BufferEvent, EventBase, EventFlags};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// With lanes on, bulk connections read at most this much between two polls
/// of the backend: once their reads since the last forced poll reach it,
/// the turn ends (`loopcontinue`) and the ones still active wait for the
/// next turn, after the interactive lane. Measured (BENCHMARKS.md, lanes):
/// a turn then runs as many bulk reads as with lanes off (8 connections of
/// one 64 KiB read each fit), so bulk keeps its share of the loop, and an
/// interactive connection that becomes ready during the bulk pass waits at
/// most about one MiB of ROT13 (~0.7 ms) for the next poll.
pub const BULK_BYTES_PER_POLL: u64 = 1 << 20;

/// The per-connection state stored inside the bufferevent.
pub struct Conn {
    pub(crate) framer: Framer,
    pub(crate) shared: Rc<Shared>,
    pub(crate) id: u32,
    /// Input bytes already counted as received.
    pub(crate) carried: u32,
    /// Lane bookkeeping: bytes received in the current window...
    pub(crate) window_bytes: u32,
    /// ...which started at this time (ms of the base's clock; windows
    /// follow each other from the accept on)...
    pub(crate) window_start: u32,
    /// ...the previous window's bytes, as a fraction of bulk_after_bytes
    /// (of 65535, at most 1: a u16 that fits where the struct had padding)...
    pub(crate) prev_share: u16,
    /// ...and when the connection last moved bulk_after_bytes within a
    /// window.
    pub(crate) last_heavy: u32,
    /// The lane: the class its traffic puts it in, and (with lanes
    /// enabled) the priority it runs at.
    pub(crate) lane: u8,
    /// The PROXY header phase while it lasts (`None`: the ROT13 stream).
    pub(crate) proxy: Option<HeaderPhase>,
    /// When bytes last arrived (ms of the base's clock; the accept time
    /// before any).
    pub(crate) last_read: u32,
    /// Output bytes queued and not yet counted as sent.
    pub(crate) unsent: u32,
}

/// Why a connection ended, as the access record says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client finished sending; everything was answered.
    Eof,
    /// A reset or another socket error (also: a connection that could not
    /// be set up).
    Reset,
    /// No input for `idle_timeout`.
    IdleTimeout,
    /// Output made no progress for `write_timeout`.
    WriteTimeout,
    /// Closed by a graceful stop or a retiring generation.
    Shutdown,
    /// Refused in the PROXY header phase.
    ProxyHeader,
}

impl End {
    /// The stable name in the access record (`end=`).
    pub const fn as_str(self) -> &'static str {
        match self {
            End::Eof => "eof",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::WriteTimeout => "write_timeout",
            End::Shutdown => "shutdown",
            End::ProxyHeader => "proxy_header",
        }
    }
}

/// What a connection knows beyond its stream. Boxed in its worker's table,
/// and only allocated when something needs it: the PROXY protocol (the
/// accept time for the header deadline, then the header's source), an
/// access record, or DEBUG logs (the client's address in each line).
pub struct Meta {
    /// The client: the PROXY header's source, else the socket's peer.
    pub client: Option<SocketAddr>,
    /// The socket's peer (the proxy, behind one).
    pub peer: Option<SocketAddr>,
    /// The socket's own address (read at the accept for the access record).
    pub local: Option<SocketAddr>,
    /// When it was accepted (the base's clock, cached per loop turn).
    pub accepted: Duration,
    /// The generation's setup, which the bufferevent goes over to once the
    /// header phase is over...
    pub setup: Rc<BevSetup<Conn>>,
    /// ...and its write timeout, which the header phase keeps.
    pub write_timeout: Option<Duration>,
    /// Bytes read from the socket, a PROXY header included.
    pub bytes_in: u64,
    /// Bytes written to the socket.
    pub bytes_out: u64,
    /// Lines (and max_line pieces) answered.
    pub lines: u64,
    /// Why it ended (the last decision before the close).
    pub end: End,
    /// Log an access record when it closes.
    pub access: bool,
}

impl Meta {
    /// A connection's meta, if anything needs it (see the type).
    pub fn wanted(proxy: bool, access: bool) -> bool {
        proxy || access || tracing::enabled!(target: "rot13d", tracing::Level::DEBUG)
    }
}

/// An address in a log line, `-` when unknown.
pub struct Addr(pub Option<SocketAddr>);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// An IPv4 client of a dual-stack socket as IPv4 (`127.0.0.1:5`, not
/// `[::ffff:127.0.0.1]:5`): one client, one spelling in the logs.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl Conn {
    /// Runs `f` on the connection's [`Meta`], if it has one.
    fn meta<R>(&self, f: impl FnOnce(&mut Meta) -> R) -> Option<R> {
        self.shared.with_meta(self.id, f)
    }

    /// Adds to the access record's totals, if it keeps them.
    fn totals(&self, f: impl FnOnce(&mut Meta)) {
        self.shared.with_meta(self.id, |m| {
            if m.access {
                f(m)
            }
        });
    }

    /// The client's address for the logs (`-` when no [`Meta`] holds it).
    pub fn client(&self) -> Addr {
        Addr(self.meta(|m| m.client).flatten())
    }

    /// The socket's peer for the logs.
    pub fn peer(&self) -> Addr {
        Addr(self.meta(|m| m.peer).flatten())
    }

    /// Records why the connection ends (for the access record).
    pub fn set_end(&self, end: End) {
        self.meta(|m| m.end = end);
    }
}

/// The bufferevent of a connection.
pub type ConnBev = BufferEvent<Conn>;

/// Read callback: the header phase while it lasts, then answer every
/// complete line.
pub(crate) fn on_read(base: &mut EventBase, bev: &mut ConnBev) {
    // Counted in the lane it waited in, before this read may move it.
    let (calls, delay) = if bev.ctx.lane == LANE_BULK as u8 {
        (Counter::CallbacksBulk, Counter::DelayBulk)
    } else {
        (Counter::CallbacksInteractive, Counter::DelayInteractive)
    };
    let waited = base.dispatch_delay_nanos();
    bev.ctx.shared.count(calls, 1);
    bev.ctx.shared.observe(delay, waited);
    count_written(bev);
    let received = bev.input().len().saturating_sub(bev.ctx.carried as usize) as u64;
    if bev.ctx.lane == LANE_BULK as u8 {
        bev.ctx.shared.bulk_read(base, received);
    }
    update_lane(base, bev, received);
    bev.ctx.shared.count(Counter::BytesReceived, received);
    bev.ctx.totals(|m| m.bytes_in += received);
    if bev.ctx.proxy.is_some() && !header_phase(base, bev) {
        bev.ctx.carried = bev.input().len() as u32;
        return;
    }
    let (input, output, ctx) = bev.parts_mut();
    let emitted = ctx.framer.process(input, output);
    ctx.carried = input.len() as u32;
    ctx.unsent = output.len() as u32;
    count_emitted(ctx, emitted);
}

/// Counts the lines (and pieces) answered and the lines cut.
fn count_emitted(ctx: &Conn, e: Emitted) {
    if e.lines > 0 {
        ctx.shared.count(Counter::Lines, e.lines as u64);
        ctx.totals(|m| m.lines += e.lines as u64);
    }
    if e.cut > 0 {
        ctx.shared.count(Counter::LinesCut, e.cut as u64);
    }
}

/// The header phase after a read: whether the ROT13 stream starts now
/// (the header was complete, and is drained). Otherwise the connection
/// waits for more, with the read timeout armed for what is left of the
/// deadline, or it was refused and is freed.
fn header_phase(base: &mut EventBase, bev: &mut ConnBev) -> bool {
    let progress = {
        let (input, _, ctx) = bev.parts_mut();
        let Some(phase) = ctx.proxy.as_mut() else { return true };
        phase.advance(input)
    };
    match progress {
        Progress::NeedMore => {
            let left = deadline_left(base, bev);
            if left.is_zero() {
                refuse(base, bev, Refusal::Timeout);
            } else {
                let write = bev.ctx.meta(|m| m.write_timeout).flatten();
                bev.set_timeouts(base, Some(left), write);
            }
            false
        }
        Progress::Done(header) => {
            bev.ctx.proxy = None;
            header_done(base, bev, header);
            true
        }
        Progress::Refused(why) => {
            refuse(base, bev, why);
            false
        }
    }
}

/// What is left of the header deadline, which runs from the accept (not
/// from the last byte: a client sending a byte every few seconds must not
/// keep the phase open).
fn deadline_left(base: &EventBase, bev: &ConnBev) -> Duration {
    let accepted = bev.ctx.meta(|m| m.accepted).unwrap_or_else(|| base.now());
    proxy::DEADLINE.saturating_sub(base.now().saturating_sub(accepted))
}

/// A header was accepted: its source is the client from now on; the
/// generation's timeouts take over from the deadline.
fn header_done(base: &mut EventBase, bev: &mut ConnBev, header: Header) {
    let sh = &bev.ctx.shared;
    sh.count(Counter::proxy_header(header.version), 1);
    if header.source.is_none() {
        sh.count(Counter::ProxyLocal, 1);
    }
    let setup = bev
        .ctx
        .meta(|m| {
            if let Some(source) = header.source {
                m.client = Some(canonical(source));
            }
            m.setup.clone()
        })
        // A connection in the header phase always has its Meta; were it
        // gone, the current generation's setup is the next best.
        .unwrap_or_else(|| bev.ctx.shared.conn_setup());
    tracing::debug!(target: "rot13d", fd = bev.fd(), version = header.version.as_str(), client = %bev.ctx.client(),
        peer = %bev.ctx.peer(), destination = %Addr(header.destination.map(canonical)), bytes = header.consumed, "proxy header");
    bev.share_setup(base, &setup);
}

/// Closes a connection whose header was refused, without a byte of answer
/// (nothing was ever queued: the output is empty).
fn refuse(base: &mut EventBase, bev: &mut ConnBev, why: Refusal) {
    bev.ctx.shared.count(Counter::proxy_refused(why), 1);
    tracing::warn!(target: "rot13d", peer = %bev.ctx.peer(), reason = why.as_str(), bytes = bev.input().len(),
        "proxy header refused");
    bev.ctx.set_end(End::ProxyHeader);
    drop_unsent(bev);
    bev.free(base);
}

/// An event while the header phase lasts; whether it was handled here.
/// The end of input before a header is a plain close when nothing at all
/// came (a TCP health check connects and closes), a refusal otherwise; a
/// read timeout is the deadline. Errors take the usual path.
fn header_event(base: &mut EventBase, bev: &mut ConnBev, ev: BevEvent) -> bool {
    let Some(phase) = bev.ctx.proxy else { return false };
    if ev.contains(BevEvent::EOF) {
        match phase.end_of_input(bev.input()) {
            None => {
                tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(),
                    "client closed before a proxy header");
                bev.ctx.set_end(End::Eof);
                bev.free(base);
            }
            Some(why) => refuse(base, bev, why),
        }
        true
    } else if ev.contains(BevEvent::TIMEOUT | BevEvent::READING) {
        refuse(base, bev, Refusal::Timeout);
        true
    } else {
        false
    }
}

/// Write callback (the output drained): count what was written.
pub(crate) fn on_write(_base: &mut EventBase, bev: &mut ConnBev) {
    count_written(bev);
}

/// Counts the bytes the socket took since the last look: the output only
/// shrinks between our callbacks, by what was written.
fn count_written(bev: &mut ConnBev) {
    let now = bev.pending_output() as u32;
    let written = bev.ctx.unsent.saturating_sub(now);
    bev.ctx.unsent = now;
    if written > 0 {
        bev.ctx.shared.count(Counter::BytesSent, u64::from(written));
        bev.ctx.totals(|m| m.bytes_out += u64::from(written));
    }
}

/// Before a close that drops what is still queued: count what was
/// written, never the rest.
pub(crate) fn drop_unsent(bev: &mut ConnBev) {
    count_written(bev);
    bev.ctx.unsent = 0;
}

/// Closes once everything is written (a socket that already failed closes
/// now: what it had queued is dropped, not counted).
fn close_flushed(base: &mut EventBase, bev: &mut ConnBev) {
    if bev.last_error().is_some() {
        drop_unsent(bev);
    }
    bev.close_when_flushed(base);
}

/// Moves a connection to the bulk lane after heavy traffic and back once it
/// has been quiet: a bulk sender then waits behind interactive clients.
///
/// "Heavy" is more than `bulk_after_bytes` within `bulk_window_ms`, over a
/// window that slides: the bytes of the current window plus those of the
/// previous one, weighted by how much of it the sliding window still
/// covers (as if they came evenly). A fixed window alone would miss a
/// burst split by its edge. It is back `quiet_ms` after the last heavy
/// read. With lanes disabled the class is still kept (metrics, the debug
/// log), and every class runs at the interactive priority.
fn update_lane(base: &mut EventBase, bev: &mut ConnBev, received: u64) {
    let now = (base.now_nanos() / 1_000_000) as u32;
    bev.ctx.last_read = now;
    let lanes = bev.ctx.shared.lanes();
    let c = &mut bev.ctx;
    let (window, threshold) = (lanes.window_ms.max(1), lanes.bulk_after_bytes.max(1));
    let elapsed = now.wrapping_sub(c.window_start);
    if elapsed >= window {
        let whole = elapsed / window;
        c.prev_share = if whole == 1 {
            (u64::from(c.window_bytes.min(threshold)) * 65535 / u64::from(threshold)) as u16
        } else {
            0
        };
        c.window_start = c.window_start.wrapping_add(whole * window);
        c.window_bytes = 0;
    }
    c.window_bytes = c.window_bytes.saturating_add(received.min(u32::MAX as u64) as u32);
    // The previous window's bytes, weighted by the part of it the sliding
    // window still covers (only worked out when they could matter).
    let (bytes, threshold) = (u64::from(c.window_bytes), u64::from(threshold));
    let prev = u64::from(c.prev_share) * threshold / 65535;
    let heavy = bytes >= threshold
        || (bytes + prev >= threshold && {
            let left = u64::from(window - now.wrapping_sub(c.window_start).min(window));
            bytes + prev * left / u64::from(window) >= threshold
        });
    let want = if heavy {
        c.last_heavy = now;
        LANE_BULK
    } else if c.lane == LANE_BULK as u8 && now.wrapping_sub(c.last_heavy) < lanes.quiet_ms {
        LANE_BULK
    } else {
        LANE_INTERACTIVE
    };
    if want as u8 == c.lane {
        return;
    }
    let priority = if lanes.enabled { want } else { LANE_INTERACTIVE };
    if lanes.enabled && bev.set_priority(base, want).is_err() {
        return;
    }
    bev.ctx.lane = want as u8;
    let to_bulk = want == LANE_BULK;
    bev.ctx.shared.count(if to_bulk { Counter::MovesToBulk } else { Counter::MovesToInteractive }, 1);
    tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(),
        lane = if to_bulk { "bulk" } else { "interactive" }, priority, window_bytes = bev.ctx.window_bytes,
        "lane changed");
}

/// Answers the buffered partial line (no LF) and counts it. Not during
/// the header phase: a partial header is never ROT13 input.
pub(crate) fn answer_tail(bev: &mut ConnBev) {
    count_written(bev);
    if bev.ctx.proxy.is_some() {
        return;
    }
    let (input, output, ctx) = bev.parts_mut();
    let emitted = ctx.framer.finish(input, output);
    ctx.carried = 0;
    ctx.unsent = output.len() as u32;
    count_emitted(ctx, emitted);
}

/// Event callback: EOF, errors and timeouts.
pub(crate) fn on_event(base: &mut EventBase, bev: &mut ConnBev, ev: BevEvent) {
    count_written(bev);
    if header_event(base, bev, ev) {
        return;
    }
    if ev.contains(BevEvent::EOF) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(), "client finished sending");
        bev.ctx.set_end(End::Eof);
        answer_tail(bev);
        close_flushed(base, bev);
    } else if ev.contains(BevEvent::ERROR) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(), error = ?bev.last_error(),
            "connection error");
        bev.ctx.shared.count(Counter::Errors, 1);
        bev.ctx.set_end(End::Reset);
        drop_unsent(bev);
        bev.free(base);
    } else if ev.contains(BevEvent::TIMEOUT | BevEvent::WRITING) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(), "write timeout");
        bev.ctx.shared.count(Counter::WriteTimeouts, 1);
        bev.ctx.set_end(End::WriteTimeout);
        drop_unsent(bev);
        bev.free(base);
    } else if ev.contains(BevEvent::TIMEOUT | BevEvent::READING) {
        if bev.pending_output() == 0 {
            tracing::debug!(target: "rot13d", fd = bev.fd(), client = %bev.ctx.client(), "idle timeout");
            bev.ctx.shared.count(Counter::IdleClosed, 1);
            bev.ctx.set_end(End::IdleTimeout);
            answer_tail(bev);
            close_flushed(base, bev);
        } else {
            // Output is pending: not idle; the write timeout watches it.
            let _ = bev.enable(base, EventFlags::READ);
        }
    }
}

/// Close callback: the worker forgets the connection.
pub(crate) fn on_close(base: &mut EventBase, bev: &mut ConnBev) {
    // Freed by the bufferevent itself after a flushed close: every byte
    // still counted as unsent was written (paths that drop output zeroed
    // it before freeing).
    let flushed = std::mem::take(&mut bev.ctx.unsent);
    if flushed > 0 {
        bev.ctx.shared.count(Counter::BytesSent, u64::from(flushed));
    }
    if let Some(mut m) = bev.ctx.shared.take_meta(bev.ctx.id) {
        m.bytes_out += u64::from(flushed);
        if m.access {
            access_record(base, m.as_ref());
        }
    }
    let shared = bev.ctx.shared.clone();
    shared.connection_closed(base, bev.ctx.id);
}

/// The access record of a closed connection (`[log] access`): one INFO
/// event `access` with stable field names (README, "Access records").
fn access_record(base: &EventBase, m: &Meta) {
    // The base's clock has millisecond resolution at best (cached per loop
    // turn, coarse by default).
    let duration_s = base.now().saturating_sub(m.accepted).as_millis() as f64 / 1000.0;
    tracing::info!(target: "rot13d", client = %Addr(m.client), peer = %Addr(m.peer), local = %Addr(m.local),
        duration_s, bytes_in = m.bytes_in, bytes_out = m.bytes_out, lines = m.lines, end = m.end.as_str(), "access");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stays_small() {
        // The header phase fits in Conn's last byte of padding; what only
        // some connections need is in the worker's table.
        assert_eq!(std::mem::size_of::<Option<HeaderPhase>>(), 1);
        assert!(std::mem::size_of::<Conn>() <= 48, "Conn is {} bytes", std::mem::size_of::<Conn>());
        assert!(std::mem::size_of::<ConnBev>() <= 272, "ConnBev is {} bytes", std::mem::size_of::<ConnBev>());
    }

    #[test]
    fn end_names_are_stable() {
        let all = [End::Eof, End::Reset, End::IdleTimeout, End::WriteTimeout, End::Shutdown, End::ProxyHeader];
        let names: Vec<_> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, ["eof", "reset", "idle_timeout", "write_timeout", "shutdown", "proxy_header"]);
    }

    #[test]
    fn dual_stack_clients_are_logged_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:5".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[::1]:5".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        assert_eq!(Addr(None).to_string(), "-");
    }

    #[test]
    fn an_idle_connection_fits_its_budget() {
        // The one allocation of an idle connection is its
        // Rc<RefCell<BufferEvent<Conn>>>: 16 bytes of counts, the RefCell's
        // flag and the bufferevent. Up to 120 bytes glibc serves from a
        // 128-byte chunk; with its event slot (48), timer node (24), fd-map
        // entry (24) and table entry (8) that is 232 bytes per idle
        // connection, under the 256 of issue 14 (BENCHMARKS.md). It is 112
        // today: the PROXY-protocol phase (2 bytes) fits in Conn's padding
        // and a boxed access record (8) in the 8 spare bytes.
        let rc_box = 16 + std::mem::size_of::<std::cell::RefCell<ConnBev>>();
        assert!(rc_box <= 120, "a connection's allocation grew to {rc_box} bytes (budget 120)");
    }
}
