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
use crate::protocol::{Emitted, Framer};
use crate::reactor::{BevEvent, BufferEvent, EventBase, EventFlags};
use std::rc::Rc;

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
    // Counted in the lane it waited in, before this read may move it.
    let (calls, delay) = if bev.ctx.lane == LANE_BULK as u8 {
        (Counter::CallbacksBulk, Counter::DelayBulk)
    } else {
        (Counter::CallbacksInteractive, Counter::DelayInteractive)
    };
    let d = base.dispatch_delay();
    let waited = d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos()));
    bev.ctx.shared.count(calls, 1);
    bev.ctx.shared.observe(delay, waited);
    count_written(bev);
    let before = bev.input().len();
    let received = before.saturating_sub(bev.ctx.carried as usize) as u64;
    if bev.ctx.lane == LANE_BULK as u8 {
        bev.ctx.shared.bulk_read(base, received);
    }
    update_lane(base, bev, received);
    let (input, output, ctx) = bev.parts_mut();
    let emitted = ctx.framer.process(input, output);
    ctx.carried = input.len() as u32;
    ctx.unsent = output.len() as u32;
    let sh = &bev.ctx.shared;
    sh.count(Counter::BytesReceived, received);
    count_emitted(sh, emitted);
}

/// Counts the lines (and pieces) answered and the lines cut.
fn count_emitted(sh: &Shared, e: Emitted) {
    if e.lines > 0 {
        sh.count(Counter::Lines, e.lines as u64);
    }
    if e.cut > 0 {
        sh.count(Counter::LinesCut, e.cut as u64);
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
///
/// "Heavy" is more than `bulk_after_bytes` within `bulk_window_ms`, over a
/// window that slides: the bytes of the current window plus those of the
/// previous one, weighted by how much of it the sliding window still
/// covers (as if they came evenly). A fixed window alone would miss a
/// burst split by its edge. It is back `quiet_ms` after the last heavy
/// read. With lanes disabled the class is still kept (metrics, the debug
/// log), and every class runs at the interactive priority.
fn update_lane(base: &mut EventBase, bev: &mut ConnBev, received: u64) {
    let t = base.now();
    let now = t.as_secs().wrapping_mul(1000).wrapping_add(u64::from(t.subsec_millis())) as u32;
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
    tracing::debug!(target: "rot13d", fd = bev.fd(), lane = if to_bulk { "bulk" } else { "interactive" }, priority,
        window_bytes = bev.ctx.window_bytes, "lane changed");
}

/// Answers the buffered partial line (no LF) and counts it.
pub(crate) fn answer_tail(bev: &mut ConnBev) {
    count_written(bev);
    let (input, output, ctx) = bev.parts_mut();
    let emitted = ctx.framer.finish(input, output);
    ctx.carried = 0;
    ctx.unsent = output.len() as u32;
    count_emitted(&ctx.shared, emitted);
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
