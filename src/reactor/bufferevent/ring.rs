//! A bufferevent's reads and writes on the io_uring data path
//! ([`DataPath`](crate::reactor::backend::DataPath)), chosen once at
//! creation where the base's backend has one and the fd is a stream
//! socket; everything else (watermarks, suspensions, timeouts, EOF and
//! errors told once, lingering) is the readiness path's code, unchanged.
//!
//! - A read takes what the ring received (the filled blocks become input
//!   chunks, no copy) instead of `recv`: same results (`Ok(0)` EOF,
//!   `WouldBlock` nothing). READ interest is the receive.
//! - A write lends the output's chunks to one send in flight (the bytes
//!   then count as pending output, `IoState::lent`); its completion puts
//!   back what the socket did not take, in front of what was added since,
//!   and starts the next send. A non-blocking send (the usual answer)
//!   completes in the next enter and is collected with the read event, so
//!   no write event is registered and deleted per answer (`inline_only`);
//!   the write event (and its timeout) is registered for a send that waits
//!   for room (after a short send or EAGAIN), for output queued behind a
//!   send, or while reading is off.

use super::iostate::IoState;
use crate::reactor::base::EventBase;
use crate::reactor::evbuffer::EvBuffer;
use crate::sys::uring::MAX_SEND_PIECES;
use std::io;
use std::os::fd::RawFd;

/// Whether the only output pending is a non-blocking send in flight: its
/// completion comes in the next enter, with the read event if reading
/// (no write event registered and deleted per send, and no timeout: it
/// cannot wait).
pub(super) fn inline_only(io: &IoState) -> bool {
    io.lent > 0 && !io.send_wait && io.output.is_empty()
}

fn no_data_path() -> io::Error {
    io::Error::other("the base's backend has no data path any more")
}

/// Moves up to `max` received bytes into `input`.
pub(super) fn recv(base: &mut EventBase, fd: RawFd, input: &mut EvBuffer, max: usize) -> io::Result<usize> {
    let dp = base.data_path().ok_or_else(no_data_path)?;
    dp.take_received(fd, max, &mut |p| input.add_piece(p))
}

/// Throws received bytes away (a closing bufferevent); how many, as
/// [`recv`].
pub(super) fn discard(base: &mut EventBase, fd: RawFd) -> io::Result<usize> {
    let dp = base.data_path().ok_or_else(no_data_path)?;
    let mut blocks = Vec::new();
    let r = dp.take_received(fd, usize::MAX, &mut |p| blocks.push(p.data));
    for b in blocks {
        dp.recycle(b);
    }
    r
}

/// Collects the send that completed, if any, and lends the output to the
/// next one. Whether bytes went out, and the error that stops writing.
/// Outside the loop a non-blocking send is submitted and collected at once
/// (write-through); in the loop the turn's enter submits it.
pub(super) fn send(base: &mut EventBase, fd: RawFd, io: &mut IoState) -> (bool, Option<io::Error>) {
    let mut progressed = false;
    loop {
        let Some(dp) = base.data_path() else { return (progressed, Some(no_data_path())) };
        if io.lent > 0 {
            // Still in flight: the output waits behind it.
            let Some((res, pieces)) = dp.take_sent(fd) else { return (progressed, None) };
            io.lent = 0;
            let sent = usize::try_from(res).unwrap_or(0);
            let total: usize = pieces.iter().map(|p| p.end - p.start).sum();
            progressed |= sent > 0;
            io.output.unsend(pieces, sent, |b| dp.recycle(b));
            if res < 0 && res != -libc::EAGAIN && res != -libc::EINTR {
                return (progressed, Some(io::Error::from_raw_os_error(-res)));
            }
            // Short or EAGAIN: the socket is full; the next send waits for
            // room.
            io.send_wait = sent < total;
        }
        if io.output.is_empty() {
            return (progressed, None);
        }
        let pieces = io.output.take_pieces(MAX_SEND_PIECES);
        let n: usize = pieces.iter().map(|p| p.end - p.start).sum();
        if let Err((e, pieces)) = dp.send(fd, pieces, io.send_wait) {
            io.output.unsend(pieces, 0, drop);
            return (progressed, Some(e));
        }
        io.lent = n;
        let waiting = io.send_wait;
        if waiting || !base.submit_data() {
            return (progressed, None);
        }
    }
}
