//! The completion data path of the uring backend ([`DataPath`]): a
//! bufferevent's socket read by a multishot receive into provided buffers
//! and written by sends submitted with the loop's next `io_uring_enter`,
//! instead of a poll and a `read`/`sendmsg` system call each.
//!
//! - **Receive**: READ interest on an attached fd keeps one multishot
//!   receive armed (a cancel when the interest goes, as a poll's). An idle
//!   connection holds no buffer: the kernel takes a block from the shared
//!   buffer ring only when bytes arrive ([`RING_BLOCKS`] blocks of
//!   [`BLOCK`] bytes, topped up before each enter). The filled block is
//!   handed, whole and without a copy, to the fd's mailbox and from there
//!   to the bufferevent's input as a chunk. A receive that ends (EOF, an
//!   error) leaves that in the mailbox after the bytes; one that ran out of
//!   buffers (ENOBUFS) waits in line until blocks come back. A small
//!   receive (a request, at most `COPY_MAX` bytes) is copied out instead
//!   and its block given back to the ring at once. Bytes
//!   that complete after the interest went (a watermark, a pause) stay in
//!   the mailbox: none is lost, and they are reported when it comes back.
//! - **Send**: one in flight per fd, its pieces (the output's chunks) lent
//!   to `sys::uring` until the completion, which goes to the mailbox and is
//!   reported as WRITE; the bufferevent puts back what was not sent, in
//!   front of its output. The first try is non-blocking and completes in
//!   the submit (the enter then waits for one completion more); after a
//!   short send or EAGAIN the next one waits for room in the kernel.
//! - **Closing**: `fd_closed` cancels what is armed or in flight and
//!   submits that (and any send still queued, first) before the caller
//!   closes the number, so no entry can name a reused fd. Completions that
//!   come later are stale (their generation is gone): their blocks are
//!   reused, nothing else happens.

use super::{Bits, DATA_OP, READ, UringBackend, WRITE, user_data};
use crate::reactor::backend::{DataPath, Ready};
use crate::reactor::evbuffer;
use crate::reactor::event::EventFlags;
use crate::sys::uring::{Completion, Piece};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// Blocks in the buffer ring: 2 MiB of receive buffers, shared by every
/// connection of the base (the io_uring ceiling's pool size: larger ones
/// measured slower there, from L2 misses). A per-process cost, resident
/// once a busy spell has filled every block (tests/limits.rs allows it).
pub(super) const RING_BLOCKS: u16 = 32;

/// A receive of at most this many bytes is copied out of its block (which
/// goes back to the ring at once); a larger one hands its block over.
const COPY_MAX: usize = 8 * 1024;

/// Received bytes a mailbox holds before its receive is stopped.
const MAIL_MAX: usize = BLOCK;

/// Blocks the buffer ring starts with: two (128 KiB, resident once used,
/// whatever the number of idle connections).
const INITIAL_BLOCKS: u16 = 2;

/// Given-back blocks kept for the buffer ring beyond the chunk pool's.
const SPARE_BLOCKS: usize = 8;

/// One receive buffer: the evbuffer's read size, so that a bulk sender
/// costs one completion per 64 KiB, as one `read` on epoll.
pub(super) const BLOCK: usize = crate::reactor::evbuffer::DEFAULT_READ_SIZE;

/// The data path's state beside the per-fd entries.
#[derive(Debug, Default)]
pub(super) struct Data {
    mails: Vec<Mail>,
    free: Vec<u32>,
    /// Blocks given back (sent pieces), for the buffer ring.
    spare: Vec<Vec<u8>>,
    /// Attached fds: the buffer ring is filled only once there is one.
    pub(super) attached: usize,
    /// Blocks the ring is kept filled with: starts small (an idle server
    /// makes none of them resident) and doubles, up to [`RING_BLOCKS`],
    /// each time receives run out.
    target: u16,
    /// Fds whose receive ran out of buffers, in order: armed again as
    /// blocks come back, as many as there are (arming them all at once
    /// would have them all run out again, turn after turn).
    starved: VecDeque<RawFd>,
}

/// What completed for an fd and was not taken yet.
#[derive(Debug, Default)]
struct Mail {
    received: VecDeque<Piece>,
    /// After the received bytes: 0 nothing, 1 EOF, < 0 an errno.
    end: i32,
    /// A send's completion: result and pieces.
    sent: Option<(i32, Vec<Piece>)>,
    /// A send is in flight.
    sending: bool,
    /// A send failed with a reset: the socket's error went to it, and a
    /// receive ending after it is told that error, not EOF (as a read on
    /// epoll would have seen it).
    reset: i32,
}

impl Mail {
    fn is_empty(&self) -> bool {
        self.received.is_empty() && self.end == 0 && self.sent.is_none() && !self.sending && self.reset == 0
    }
}

impl UringBackend {
    fn mail(&mut self, fd: RawFd) -> &mut Mail {
        let s = &mut self.fds[fd as usize];
        if s.mail == 0 {
            let i = match self.data.free.pop() {
                Some(i) => i,
                None => {
                    self.data.mails.push(Mail::default());
                    self.data.mails.len() as u32 - 1
                }
            };
            s.mail = i + 1;
        }
        &mut self.data.mails[s.mail as usize - 1]
    }

    fn mail_ref(&self, fd: RawFd) -> Option<&Mail> {
        let i = self.fds.get(fd as usize)?.mail;
        (i != 0).then(|| &self.data.mails[i as usize - 1])
    }

    /// Frees `fd`'s mailbox if nothing is in it.
    fn tidy(&mut self, fd: RawFd) {
        let s = &mut self.fds[fd as usize];
        if s.mail != 0 && self.data.mails[s.mail as usize - 1].is_empty() {
            // A queue grown by a burst goes; a small one is kept (a busy
            // connection takes and gives a mailbox per request).
            let m = &mut self.data.mails[s.mail as usize - 1];
            if m.received.capacity() > 4 {
                m.received = VecDeque::new();
            }
            self.data.free.push(s.mail - 1);
            s.mail = 0;
        }
    }

    fn reuse(&mut self, block: Vec<u8>) {
        if block.len() == BLOCK && self.data.spare.len() < SPARE_BLOCKS {
            self.data.spare.push(block);
        } else {
            evbuffer::give_block(block);
        }
    }

    /// Fills the buffer ring up to its target (given-back blocks first),
    /// and arms again as many starved receives as it has blocks.
    pub(super) fn top_up_buffers(&mut self) {
        if self.data.attached == 0 {
            return;
        }
        let target = usize::from(self.data.target.clamp(INITIAL_BLOCKS, RING_BLOCKS));
        let offered = usize::from(RING_BLOCKS) - self.ring.buffers_missing();
        for _ in offered..target {
            let b = self.data.spare.pop().unwrap_or_else(|| evbuffer::take_block(BLOCK));
            if let Some(b) = self.ring.provide(b) {
                self.data.spare.push(b);
                break;
            }
        }
        let mut room = usize::from(RING_BLOCKS) - self.ring.buffers_missing();
        while room > 0
            && let Some(fd) = self.data.starved.pop_front()
        {
            let s = &mut self.fds[fd as usize];
            if s.has(Bits::STARVED) {
                s.set(Bits::STARVED, false);
                self.queue(fd);
                room -= 1;
            }
        }
    }

    /// Bytes received and not taken.
    fn mail_bytes(&self, fd: RawFd) -> usize {
        self.mail_ref(fd).map_or(0, |m| m.received.iter().map(|p| p.end - p.start).sum())
    }

    /// A mailbox holding a read's worth stops its receive (the cancel goes
    /// with the next enter) until the bufferevent has taken it: the
    /// mailbox is bounded as a socket read is, whatever the peer sends.
    fn bound_mail(&mut self, fd: RawFd) {
        if !self.fds[fd as usize].has(Bits::FULL) && self.mail_bytes(fd) >= MAIL_MAX {
            self.fds[fd as usize].set(Bits::FULL, true);
            self.queue(fd);
        }
    }

    /// Reports what `fd`'s mailbox holds that its interest wants (for the
    /// next dispatch).
    fn report_mail(&mut self, fd: RawFd) {
        let want = self.fds[fd as usize].want;
        let Some(m) = self.mail_ref(fd) else { return };
        let mut what = EventFlags::NONE;
        if want.contains(EventFlags::READ) && (!m.received.is_empty() || m.end != 0) {
            what |= EventFlags::READ;
        }
        if m.sent.is_some() {
            if want.contains(EventFlags::WRITE) {
                what |= EventFlags::WRITE;
            } else if want.contains(EventFlags::READ) {
                what |= EventFlags::READ;
            }
        }
        if !what.is_empty() {
            self.carry.events.push((fd, what));
        }
    }

    /// An attached fd's interest changed: reported what waits for it.
    pub(super) fn changed_data(&mut self, fd: RawFd) {
        self.report_mail(fd);
    }

    /// Queues what makes `fd`'s receive match its interest (see
    /// `apply`); a send is never cancelled here, only by `detach`: its
    /// bytes must arrive even while nothing watches it. Whether a cancel
    /// was queued.
    pub(super) fn apply_data(&mut self, fd: RawFd, out: &mut Option<&mut Ready>) -> io::Result<bool> {
        let s = self.fds[fd as usize];
        self.fds[fd as usize].set(Bits::EMPTIED, false);
        let ended = self.mail_ref(fd).is_some_and(|m| m.end != 0);
        let wanted = s.want.contains(EventFlags::READ) && !ended && !s.has(Bits::STARVED) && !s.has(Bits::FULL);
        let armed = s.armed[READ];
        let mut cancelled = false;
        if armed != 0 && (!wanted || s.has(Bits::EMPTIED)) {
            self.fds[fd as usize].armed[READ] = 0;
            let target = user_data(armed, READ, fd) | DATA_OP | crate::sys::uring::RECV_TAG;
            self.push_entry(out, |r| r.push_cancel(target))?;
            cancelled = true;
        }
        if wanted && self.fds[fd as usize].armed[READ] == 0 {
            let g = self.next_generation();
            self.fds[fd as usize].armed[READ] = g;
            let ud = user_data(g, READ, fd) | DATA_OP | crate::sys::uring::RECV_TAG;
            self.push_entry(out, |r| r.push_recv(fd, ud))?;
        }
        Ok(cancelled)
    }

    /// A receive's or a send's completion.
    pub(super) fn complete_data(&mut self, c: Completion, out: &mut Ready) {
        let fd = (c.user_data & super::FD_BITS) as RawFd;
        let dir = ((c.user_data >> 31) & 1) as usize;
        let generation = (c.user_data >> 32) as u32;
        let fresh = self.fds.get(fd as usize).is_some_and(|s| s.has(Bits::DATA) && s.armed[dir] == generation);
        if !fresh {
            // Cancelled, or of an fd closed since: only the memory is left.
            if let Some(b) = c.buf {
                self.reuse(b);
            }
            for p in c.sent.into_iter().flatten() {
                self.reuse(p.data);
            }
            return;
        }
        let want = self.fds[fd as usize].want;
        if dir == READ {
            if let Some(b) = c.buf {
                let n = usize::try_from(c.result).unwrap_or(0).min(b.len());
                if n > COPY_MAX {
                    // A bulk receive: the block itself becomes input.
                    self.mail(fd).received.push_back(Piece { data: b, start: 0, end: n });
                    self.bound_mail(fd);
                } else {
                    // A small one (a request): its bytes are copied out and
                    // the block goes straight back to the ring, so that
                    // many small receives neither run the ring dry nor make
                    // blocks cycle through the allocator.
                    if n > 0 {
                        let data = b[..n].to_vec();
                        self.mail(fd).received.push_back(Piece { data, start: 0, end: n });
                        self.bound_mail(fd);
                    }
                    if let Some(b) = self.ring.provide(b) {
                        self.reuse(b);
                    }
                }
            }
            if !c.more {
                self.fds[fd as usize].armed[READ] = 0;
                match c.result {
                    0 => {
                        let m = self.mail(fd);
                        m.end = if m.reset != 0 { m.reset } else { 1 };
                    }
                    r if r == -libc::ECANCELED => {}
                    // Out of buffers: in line for the next blocks, and the
                    // ring grows.
                    r if r == -libc::ENOBUFS => {
                        self.data.target = self.data.target.clamp(INITIAL_BLOCKS, RING_BLOCKS / 2) * 2;
                        let s = &mut self.fds[fd as usize];
                        if !s.has(Bits::STARVED) {
                            s.set(Bits::STARVED, true);
                            self.data.starved.push_back(fd);
                        }
                    }
                    // Ended by the kernel for its own reasons: armed again.
                    r if r > 0 => {
                        if want.contains(EventFlags::READ) {
                            self.queue(fd);
                        }
                    }
                    r => self.mail(fd).end = r,
                }
            }
            if want.contains(EventFlags::READ)
                && self.mail_ref(fd).is_some_and(|m| !m.received.is_empty() || m.end != 0)
            {
                out.events.push((fd, EventFlags::READ));
            }
            self.tidy(fd);
        } else {
            self.fds[fd as usize].armed[WRITE] = 0;
            let m = self.mail(fd);
            m.sending = false;
            if c.result == -libc::ECONNRESET || c.result == -libc::EPIPE {
                m.reset = -libc::ECONNRESET;
            }
            m.sent = Some((c.result, c.sent.unwrap_or_default()));
            // With the write event if registered, else with the read event
            // (a non-blocking send's, `bufferevent/ring.rs`).
            if want.contains(EventFlags::WRITE) {
                out.events.push((fd, EventFlags::WRITE));
            } else if want.contains(EventFlags::READ) {
                out.events.push((fd, EventFlags::READ));
            }
        }
    }

    /// `fd` is about to be closed: cancel its receive and its send, submit
    /// that (after whatever is queued for it), forget its mail.
    pub(super) fn detach(&mut self, fd: RawFd) {
        let send = std::mem::take(&mut self.fds[fd as usize].armed[WRITE]);
        // The receive's cancel (the interest was released).
        let _ = self.flush_releases();
        if send != 0 {
            let target = user_data(send, WRITE, fd) | DATA_OP;
            let _ = self.push_entry(&mut None, |r| r.push_cancel(target));
        }
        let s = &mut self.fds[fd as usize];
        s.set(Bits::DATA, false);
        s.set(Bits::STARVED, false);
        s.set(Bits::FULL, false);
        s.armed = [0; 2];
        if s.mail != 0 {
            let m = std::mem::take(&mut self.data.mails[s.mail as usize - 1]);
            self.data.free.push(s.mail - 1);
            s.mail = 0;
            for p in m.received.into_iter().chain(m.sent.into_iter().flat_map(|s| s.1)) {
                self.reuse(p.data);
            }
        }
        self.data.attached = self.data.attached.saturating_sub(1);
        // The number is closed next and may be reused at once: nothing
        // queued may still name it.
        if self.ring.queued() > 0 {
            let _ = self.ring.enter(false, None);
        }
    }
}

impl DataPath for UringBackend {
    fn attach(&mut self, fd: RawFd) -> bool {
        if fd < 0 || fd as u64 > super::FD_BITS || !self.ring.has_recv_buffers() {
            return false;
        }
        let s = self.state(fd);
        if !(s.want & EventFlags::IO).is_empty() || s.has(Bits::DATA) {
            return false;
        }
        s.set(Bits::DATA, true);
        s.armed = [0; 2];
        self.data.attached += 1;
        true
    }

    fn take_received(&mut self, fd: RawFd, max: usize, into: &mut dyn FnMut(Piece)) -> io::Result<usize> {
        if self.mail_ref(fd).is_none() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let m = self.mail(fd);
        let mut n = 0;
        while n < max {
            let Some(p) = m.received.front_mut() else { break };
            let len = p.end - p.start;
            if len <= max - n {
                n += len;
                if let Some(p) = m.received.pop_front() {
                    into(p);
                }
            } else {
                // A watermark cuts the block: the part that fits, copied.
                let k = max - n;
                let head = p.data[p.start..p.start + k].to_vec();
                p.start += k;
                n += k;
                into(Piece { data: head, start: 0, end: k });
            }
        }
        let r = if n > 0 {
            Ok(n)
        } else if m.end != 0 {
            let end = std::mem::take(&mut m.end);
            if end == 1 { Ok(0) } else { Err(io::Error::from_raw_os_error(-end)) }
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        };
        if self.fds[fd as usize].has(Bits::FULL) && self.mail_bytes(fd) < MAIL_MAX {
            // Taken: the receive goes on.
            self.fds[fd as usize].set(Bits::FULL, false);
            self.queue(fd);
        }
        // Left for the next turn (more bytes than `max`, or the EOF after
        // them): reported again while the interest lasts.
        self.report_mail(fd);
        self.tidy(fd);
        r
    }

    fn send(&mut self, fd: RawFd, pieces: Vec<Piece>, wait: bool) -> Result<(), (io::Error, Vec<Piece>)> {
        let attached = self.fds.get(fd as usize).is_some_and(|s| s.has(Bits::DATA) && s.armed[WRITE] == 0);
        if !attached {
            return Err((io::Error::other("no send possible on this fd now"), pieces));
        }
        let g = self.next_generation();
        let ud = user_data(g, WRITE, fd) | DATA_OP;
        let mut pieces = pieces;
        loop {
            match self.ring.push_send(fd, pieces, wait, ud) {
                Ok(()) => break,
                Err(r) => {
                    if let Some(e) = r.error {
                        return Err((e, r.pieces));
                    }
                    pieces = r.pieces;
                    if let Err(e) = self.make_room(&mut None) {
                        return Err((e, pieces));
                    }
                }
            }
        }
        self.fds[fd as usize].armed[WRITE] = g;
        self.mail(fd).sending = true;
        Ok(())
    }

    fn submit(&mut self) -> bool {
        self.ring.queued() > 0 && self.enter_and_reap().is_ok()
    }

    fn take_sent(&mut self, fd: RawFd) -> Option<(i32, Vec<Piece>)> {
        self.mail_ref(fd)?;
        let r = self.mail(fd).sent.take();
        self.tidy(fd);
        r
    }

    fn recycle(&mut self, block: Vec<u8>) {
        self.reuse(block);
    }

    fn move_to(&mut self, to: &mut dyn DataPath) {
        let mut unsent: Vec<(RawFd, Vec<Piece>)> =
            self.ring.take_sends_after_fork().into_iter().map(|(ud, p)| ((ud & super::FD_BITS) as RawFd, p)).collect();
        for fd in 0..self.fds.len() as RawFd {
            if !self.fds[fd as usize].has(Bits::DATA) {
                continue;
            }
            let s = self.fds[fd as usize];
            let m =
                if s.mail != 0 { std::mem::take(&mut self.data.mails[s.mail as usize - 1]) } else { Mail::default() };
            let mut sent = m.sent;
            if m.sending
                && let Some(i) = unsent.iter().position(|u| u.0 == fd)
            {
                sent = Some((-libc::EAGAIN, unsent.swap_remove(i).1));
            }
            if to.attach(fd) {
                to.adopt(fd, m.received.into(), m.end, sent);
            }
        }
    }

    fn adopt(&mut self, fd: RawFd, received: Vec<Piece>, end: i32, sent: Option<(i32, Vec<Piece>)>) {
        if received.is_empty() && end == 0 && sent.is_none() {
            return;
        }
        let m = self.mail(fd);
        m.received.extend(received);
        m.end = end;
        m.sent = sent;
        // Told once the replayed interest is in (the dispatch keeps only
        // what the interest wants).
        self.carry.events.push((fd, EventFlags::READ | EventFlags::WRITE));
    }
}
