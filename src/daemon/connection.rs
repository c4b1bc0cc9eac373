//! One client: a [`BufferEvent`] whose context is the protocol state.
//!
//! Life of a connection (each step a callback of the bufferevent):
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
//! A header read before the ROT13 stream (the PROXY protocol) goes in
//! `on_read`, before the framer, with a flag in `Conn` saying whether it is
//! done; flushing before the close is the bufferevent's own state
//! (`is_closing`).

use super::metrics::Counter;
use super::worker::{LANE_BULK, LANE_INTERACTIVE, Shared};
use crate::protocol::Framer;
use crate::reactor::{BevEvent, BufferEvent, EventBase, EventFlags};
use std::rc::Rc;

/// The per-connection state stored inside the bufferevent.
pub struct Conn {
    pub(crate) framer: Framer,
    pub(crate) shared: Rc<Shared>,
    pub(crate) id: u32,
    /// Input bytes already counted as received.
    pub(crate) carried: u32,
    /// Lane bookkeeping: bytes received in the current window...
    pub(crate) window_bytes: u32,
    /// ...which started at this time (ms of the base's clock)...
    pub(crate) window_start: u32,
    /// ...and when the connection last moved bulk_after_bytes in a window.
    pub(crate) last_heavy: u32,
    /// The lane (a priority of the worker's base).
    pub(crate) lane: u8,
    /// When bytes last arrived (ms of the base's clock; the accept time
    /// before any).
    pub(crate) last_read: u32,
    /// Output bytes queued and not yet counted as sent.
    pub(crate) unsent: u32,
}

/// The bufferevent of a connection.
pub type ConnBev = BufferEvent<Conn>;

/// Read callback: answer every complete line.
pub(crate) fn on_read(base: &mut EventBase, bev: &mut ConnBev) {
    count_written(bev);
    let before = bev.input().len();
    let received = before.saturating_sub(bev.ctx.carried as usize) as u64;
    update_lane(base, bev, received);
    let (input, output, ctx) = bev.parts_mut();
    let lines = ctx.framer.process(input, output);
    ctx.carried = input.len() as u32;
    ctx.unsent = output.len() as u32;
    let sh = &bev.ctx.shared;
    sh.count(Counter::BytesReceived, received);
    if lines > 0 {
        sh.count(Counter::Lines, lines as u64);
    }
}

/// Write callback (the output drained): count what was written.
pub(crate) fn on_write(_base: &mut EventBase, bev: &mut ConnBev) {
    count_written(bev);
}

/// Counts the bytes the socket took since the last look: the output only
/// shrinks between our callbacks, by what was written.
fn count_written(bev: &mut ConnBev) {
    let now = bev.output().len() as u32;
    let written = bev.ctx.unsent.saturating_sub(now);
    bev.ctx.unsent = now;
    if written > 0 {
        bev.ctx.shared.count(Counter::BytesSent, u64::from(written));
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
fn update_lane(base: &mut EventBase, bev: &mut ConnBev, received: u64) {
    let now = base.now().as_millis() as u32;
    bev.ctx.last_read = now;
    let Some(lanes) = bev.ctx.shared.lanes() else { return };
    let c = &mut bev.ctx;
    if now.wrapping_sub(c.window_start) >= lanes.window_ms {
        c.window_start = now;
        c.window_bytes = 0;
    }
    c.window_bytes = c.window_bytes.saturating_add(received.min(u32::MAX as u64) as u32);
    let want = if c.window_bytes >= lanes.bulk_after_bytes {
        c.last_heavy = now;
        LANE_BULK
    } else if c.lane == LANE_BULK as u8 && now.wrapping_sub(c.last_heavy) < lanes.quiet_ms {
        LANE_BULK
    } else {
        LANE_INTERACTIVE
    };
    if want as u8 != c.lane && bev.set_priority(base, want).is_ok() {
        tracing::trace!(target: "rot13d", fd = bev.fd(), lane = want, "lane changed");
        bev.ctx.lane = want as u8;
    }
}

/// Answers the buffered partial line (no LF) and counts it.
pub(crate) fn answer_tail(bev: &mut ConnBev) {
    count_written(bev);
    let (input, output, ctx) = bev.parts_mut();
    let n = ctx.framer.finish(input, output);
    ctx.carried = 0;
    ctx.unsent = output.len() as u32;
    if n > 0 {
        bev.ctx.shared.count(Counter::Lines, n as u64);
    }
}

/// Event callback: EOF, errors and timeouts.
pub(crate) fn on_event(base: &mut EventBase, bev: &mut ConnBev, ev: BevEvent) {
    count_written(bev);
    if ev.contains(BevEvent::EOF) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), "client finished sending");
        answer_tail(bev);
        close_flushed(base, bev);
    } else if ev.contains(BevEvent::ERROR) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), error = ?bev.last_error(), "connection error");
        bev.ctx.shared.count(Counter::Errors, 1);
        drop_unsent(bev);
        bev.free(base);
    } else if ev.contains(BevEvent::TIMEOUT | BevEvent::WRITING) {
        tracing::debug!(target: "rot13d", fd = bev.fd(), "write timeout");
        bev.ctx.shared.count(Counter::WriteTimeouts, 1);
        drop_unsent(bev);
        bev.free(base);
    } else if ev.contains(BevEvent::TIMEOUT | BevEvent::READING) {
        if bev.output().is_empty() {
            tracing::debug!(target: "rot13d", fd = bev.fd(), "idle timeout");
            bev.ctx.shared.count(Counter::IdleClosed, 1);
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
    let shared = bev.ctx.shared.clone();
    shared.connection_closed(base, bev.ctx.id);
}

#[cfg(test)]
mod tests {
    use super::ConnBev;

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
