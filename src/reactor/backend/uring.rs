//! The io_uring backend: readiness through IORING_OP_POLL_ADD, a turn's
//! registration changes and its wait in one `io_uring_enter`.
//!
//! - **Per fd, two polls**: one for READ (with CLOSED as POLLRDHUP), one
//!   for WRITE, so that a bufferevent toggling its write interest never
//!   disturbs the read poll. Each poll is tagged `(generation, direction,
//!   fd)`; a completion whose generation is not the armed one is stale (a
//!   cancelled poll, a number reused) and dropped.
//! - **Changes are kept** (like the epoll changelist) until `dispatch`,
//!   which turns them into entries: a cancel of a poll that no longer
//!   matches, a new poll where one is wanted; then one `io_uring_enter`
//!   submits them all and waits. An interest that went empty is never
//!   coalesced with a re-add: a poll holds the *file*, and the number may
//!   name another file by now (closed and reopened within the turn), so a
//!   re-add after a delete is a cancel and a fresh poll, resolved anew.
//! - **Level-triggered** events use one-shot polls, re-armed in the next
//!   turn's enter while the interest remains: a poll armed on a ready fd
//!   completes during the submit, so an fd nobody drained is reported on
//!   every turn, as epoll's level-triggered mode does. A multishot poll
//!   reports wake-ups, not levels, so it cannot stand in for that.
//! - **Edge-triggered** events (ET) use multishot polls: one completion per
//!   wake-up while armed, as EPOLLET reports one per edge; arming it (an add
//!   or re-add) reports an fd that is ready at once, as epoll does.
//! - **An fd left unwatched is let go of at once**: when a delete empties an
//!   fd's interest the base calls [`Backend::flush`], which submits the
//!   kept changes (the cancel among them) in an enter of their own, without
//!   waiting. libevent lets a caller close an fd right after deleting its
//!   event, and the poll's reference would otherwise keep the file open
//!   until the next turn: a closed listener still taking connections, a
//!   closed socket's peer seeing no EOF. Everything else (adds, changes of
//!   interest, re-arms) waits for the turn's one enter.
//! - A poll completing with an error (EBADF: the fd was closed while
//!   watched) gives the fd up in [`Ready::failed`].
//!
//! A non-blocking turn with nothing to submit and nothing the kernel owes
//! (no TASKRUN flag, no overflow) costs no system call at all.

use super::{Backend, DataPath, Kind, Ready};
use crate::reactor::event::EventFlags;
use crate::sys::uring::{self as su, Completion, Ring};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

mod data;

/// Submission entries: a turn with more changes submits in several enters.
const SQ_ENTRIES: u32 = 1024;
/// Completion entries, at least; more with a larger capacity hint. Past it
/// the kernel keeps completions on an overflow list (NODROP).
const MIN_CQ_ENTRIES: u32 = 4096;
const MAX_CQ_ENTRIES: u32 = 16384;

/// Completions' room kept between turns.
const DONE_KEPT: usize = 256;

const READ: usize = 0;
const WRITE: usize = 1;

flag_set! {
    /// An fd's bits of state.
    struct Bits(u8) {
        /// The interest went empty since the last flush: the number may
        /// name another file now, so nothing armed before may be kept.
        const EMPTIED = 0x01;
        /// In the list of fds to flush.
        const QUEUED = 0x02;
        /// On the completion data path (`data.rs`): READ interest is a
        /// multishot receive, WRITE interest waits for its sends.
        const DATA = 0x04;
        /// The armed READ poll is multishot.
        const MULTI_R = 0x08;
        /// The armed WRITE poll is multishot.
        const MULTI_W = 0x10;
        /// On the data path: its receive ran out of buffers; it waits in
        /// line to be armed again once blocks are back (`data.rs`).
        const STARVED = 0x20;
        /// On the data path: its mailbox holds a read's worth; the
        /// receive is stopped until the bufferevent takes it.
        const FULL = 0x40;
    }
}

/// Per fd, 16 bytes (one per connection: part of its idle memory).
#[derive(Clone, Copy, Debug, Default)]
struct FdState {
    /// Per direction, the generation of the armed request (a poll; on the
    /// data path the receive, and the send in flight), 0 when none.
    armed: [u32; 2],
    /// Its mailbox on the data path, + 1 (0: none).
    mail: u32,
    /// What the base wants (io bits and ET).
    want: EventFlags,
    bits: Bits,
    /// Per direction, the armed poll's mask, packed (see `pack`).
    masks: [u8; 2],
}

impl FdState {
    fn has(&self, b: Bits) -> bool {
        self.bits.contains(b)
    }
    fn set(&mut self, b: Bits, on: bool) {
        if on {
            self.bits.insert(b);
        } else {
            self.bits.remove(b);
        }
    }
}

/// A poll mask in a byte (the three bits a backend asks for).
fn pack(m: u32) -> u8 {
    u8::from(m & su::POLLIN as u32 != 0)
        | u8::from(m & su::POLLRDHUP as u32 != 0) << 1
        | u8::from(m & su::POLLOUT as u32 != 0) << 2
}

const MULTI: [Bits; 2] = [Bits::MULTI_R, Bits::MULTI_W];

/// io_uring poll requests.
#[derive(Debug)]
pub struct UringBackend {
    ring: Ring,
    fds: Vec<FdState>,
    changed: Vec<RawFd>,
    /// The fds of `changed` whose interest went empty: what [`Backend::flush`]
    /// visits (never the whole of `changed`: a turn that closes k of n
    /// changed fds must cost k, not k * n).
    released: Vec<RawFd>,
    /// Completions being handled (kept for its memory).
    done: Vec<Completion>,
    /// The completion data path's state (`data.rs`).
    data: data::Data,
    /// Fds visited by the last flush (what the test of its cost counts).
    #[cfg(test)]
    flush_visits: usize,
    generation: u32,
    /// Edges and failures found outside `dispatch` (by `flush`), told by
    /// the next one.
    carry: Ready,
}

/// A request's tag: generation, direction, whether it is a data-path
/// operation (receive or send, not a poll), whether a receive
/// (`su::RECV_TAG`), fd (29 bits).
fn user_data(generation: u32, dir: usize, fd: RawFd) -> u64 {
    (u64::from(generation) << 32) | ((dir as u64) << 31) | (fd as u32 as u64 & FD_BITS)
}

const FD_BITS: u64 = 0x1fff_ffff;
/// The tag bit of data-path operations.
const DATA_OP: u64 = su::DATA_TAG;

/// The poll mask one direction of `want` asks for (0 = none).
fn mask(want: EventFlags, dir: usize) -> u32 {
    let mut m = 0;
    if dir == READ {
        if want.contains(EventFlags::READ) {
            m |= su::POLLIN as u32;
        }
        if want.contains(EventFlags::CLOSED) {
            m |= su::POLLRDHUP as u32;
        }
    } else if want.contains(EventFlags::WRITE) {
        m |= su::POLLOUT as u32;
    }
    m
}

/// What a completed poll's mask means: poll(2)'s `revents` bits, which
/// fit in 16 (as with epoll, an error wakes both directions and a hang-up
/// also closes the read side).
fn from_poll(r: u32) -> EventFlags {
    super::poll::from_poll(r as u16 as i16)
}

impl UringBackend {
    /// A fresh ring sized for about `capacity` fds. Where io_uring is
    /// missing or forbidden the error is `Unsupported`, with the reason.
    pub fn new(capacity: usize) -> io::Result<UringBackend> {
        let cq = (capacity.saturating_mul(2).min(MAX_CQ_ENTRIES as usize) as u32).clamp(MIN_CQ_ENTRIES, MAX_CQ_ENTRIES);
        let ring = Ring::new(SQ_ENTRIES, cq).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EACCES) => {
                io::Error::new(io::ErrorKind::Unsupported, su::unavailable_reason(&e))
            }
            _ => e,
        })?;
        tracing::debug!(target: "rot13d::reactor", mode = ?ring.mode(), "io_uring ring set up");
        let mut ring = ring;
        // Where the kernel has buffer rings (5.19), bufferevents read and
        // send through the ring (`data.rs`); elsewhere they use polls.
        if let Err(e) = ring.setup_recv_buffers(data::RING_BLOCKS) {
            tracing::debug!(target: "rot13d::reactor", error = %e, "no provided-buffer ring: bufferevents use polls");
        }
        Ok(UringBackend {
            ring,
            fds: Vec::new(),
            changed: Vec::new(),
            released: Vec::new(),
            done: Vec::new(),
            data: data::Data::default(),
            #[cfg(test)]
            flush_visits: 0,
            generation: 0,
            carry: Ready::default(),
        })
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize(i + 1, FdState::default());
        }
        &mut self.fds[i]
    }

    fn queue(&mut self, fd: RawFd) {
        let s = self.state(fd);
        if !s.has(Bits::QUEUED) {
            s.set(Bits::QUEUED, true);
            self.changed.push(fd);
        }
    }

    /// Marks `fd`'s interest emptied: whatever is armed on it must go, in
    /// the next flush or dispatch.
    fn release(&mut self, fd: RawFd) {
        let s = self.state(fd);
        if !s.has(Bits::EMPTIED) {
            s.set(Bits::EMPTIED, true);
            self.released.push(fd);
        }
        self.queue(fd);
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    /// Makes room in the submission queue: submits what is queued (no
    /// wait), and reaps what that completed into `out` if given (else the
    /// completions wait in the ring for the next dispatch).
    fn make_room(&mut self, out: &mut Option<&mut Ready>) -> io::Result<()> {
        self.ring.enter(false, None)?;
        if let Some(out) = out.as_deref_mut() {
            self.reap(out);
        }
        Ok(())
    }

    /// Queues an entry with `push` (false: the submission queue is full),
    /// making room until it fits.
    fn push_entry(
        &mut self,
        out: &mut Option<&mut Ready>,
        mut push: impl FnMut(&mut Ring) -> io::Result<bool>,
    ) -> io::Result<()> {
        while !push(&mut self.ring)? {
            self.make_room(out)?;
        }
        Ok(())
    }

    /// Turns every kept change into entries.
    fn flush_changes(&mut self, mut out: Option<&mut Ready>) -> io::Result<()> {
        let mut i = 0;
        // Completions reaped while making room may queue re-arms: they are
        // appended and handled in this same pass.
        while i < self.changed.len() {
            let fd = self.changed[i];
            i += 1;
            self.fds[fd as usize].set(Bits::QUEUED, false);
            self.apply(fd, &mut out)?;
        }
        self.changed.clear();
        self.released.clear();
        // As with `done`: a burst's lists are not kept.
        self.changed.shrink_to(DONE_KEPT);
        self.released.shrink_to(DONE_KEPT);
        Ok(())
    }

    /// Turns the kept changes of the fds whose interest went empty into
    /// entries (their polls must go now), keeping the rest for the turn's
    /// enter. Whether a cancel was queued.
    fn flush_releases(&mut self) -> io::Result<bool> {
        let mut cancelled = false;
        let mut out = None;
        while let Some(fd) = self.released.pop() {
            #[cfg(test)]
            {
                self.flush_visits += 1;
            }
            // Still in `changed` (queued): the turn's pass finds it
            // applied and queues nothing more for it.
            if self.fds[fd as usize].has(Bits::EMPTIED) {
                cancelled |= self.apply(fd, &mut out)?;
            }
        }
        Ok(cancelled)
    }

    /// Queues what makes `fd`'s polls match its interest: a cancel of a
    /// poll that no longer fits (or of any, when the interest went empty
    /// since), a poll where one is wanted and none fits. Whether a cancel
    /// was queued.
    fn apply(&mut self, fd: RawFd, out: &mut Option<&mut Ready>) -> io::Result<bool> {
        if self.fds[fd as usize].has(Bits::DATA) {
            return self.apply_data(fd, out);
        }
        let s = &mut self.fds[fd as usize];
        let (want, emptied) = (s.want, s.has(Bits::EMPTIED));
        s.set(Bits::EMPTIED, false);
        let multishot = want.contains(EventFlags::ET);
        let mut cancelled = false;
        for dir in [READ, WRITE] {
            let s = self.fds[fd as usize];
            let m = mask(want, dir);
            let armed = s.armed[dir];
            let keep = armed != 0 && !emptied && s.masks[dir] == pack(m) && s.has(MULTI[dir]) == multishot;
            if armed != 0 && !keep {
                self.fds[fd as usize].armed[dir] = 0;
                let target = user_data(armed, dir, fd);
                self.push_entry(out, |r| r.push_cancel(target))?;
                cancelled = true;
            }
            if m != 0 && !keep {
                let g = self.next_generation();
                let s = &mut self.fds[fd as usize];
                s.armed[dir] = g;
                s.masks[dir] = pack(m);
                s.set(MULTI[dir], multishot);
                let ud = user_data(g, dir, fd);
                self.push_entry(out, |r| r.push_poll(fd, m, multishot, ud))?;
            }
        }
        Ok(cancelled)
    }

    fn reap(&mut self, out: &mut Ready) {
        let mut done = std::mem::take(&mut self.done);
        self.ring.reap(|c| done.push(c));
        for c in done.drain(..) {
            self.complete(c, out);
        }
        // A burst (thousands of connections at once) must not leave its
        // list behind: part of every idle connection's share otherwise.
        done.shrink_to(DONE_KEPT);
        self.done = done;
    }

    fn complete(&mut self, c: Completion, out: &mut Ready) {
        if c.user_data == su::CANCEL_USER_DATA {
            return;
        }
        if c.user_data & DATA_OP != 0 {
            self.complete_data(c, out);
            return;
        }
        let fd = (c.user_data & FD_BITS) as RawFd;
        let dir = ((c.user_data >> 31) & 1) as usize;
        let generation = (c.user_data >> 32) as u32;
        let Some(s) = self.fds.get_mut(fd as usize) else { return };
        if s.armed[dir] != generation || s.has(Bits::DATA) {
            return; // a cancelled poll, or one of a number reused since
        }
        if !c.more {
            s.armed[dir] = 0;
            // Still wanted: arm again in the next enter (level-triggered:
            // it reports at once if the fd is still ready).
            if mask(s.want, dir) != 0 {
                self.queue(fd);
            }
        }
        let s = &mut self.fds[fd as usize];
        if c.result == -libc::ECANCELED || s.has(Bits::EMPTIED) {
            return;
        }
        if c.result < 0 || c.result as u32 & su::POLLNVAL as u32 != 0 {
            let errno = if c.result < 0 { -c.result } else { libc::EBADF };
            // The fd is given up: nothing of it stays armed or wanted.
            s.want = EventFlags::NONE;
            out.failed.push((fd, io::Error::from_raw_os_error(errno)));
            self.release(fd);
            return;
        }
        let what = from_poll(c.result as u32);
        if !what.is_empty() {
            // Both directions of an fd may report in one turn: the base
            // merges what it activates.
            out.events.push((fd, what));
        }
    }

    /// Submits what is queued, without waiting, outside a dispatch, and
    /// reaps what that completed. What completed may be stale by the next
    /// dispatch (the caller may drain the fd meanwhile): a level-triggered
    /// report is dropped and its poll armed again then, so the next wait
    /// sees the fd as it is; an edge, and data-path mail (kept until
    /// taken), are told by that dispatch.
    fn enter_and_reap(&mut self) -> io::Result<()> {
        self.ring.enter(false, None)?;
        let mut done = std::mem::take(&mut self.done);
        self.ring.reap(|c| done.push(c));
        let mut out = Ready::default();
        for c in done.drain(..) {
            self.complete(c, &mut out);
        }
        // A burst (thousands of connections at once) must not leave its
        // list behind: part of every idle connection's share otherwise.
        done.shrink_to(DONE_KEPT);
        self.done = done;
        for (fd, what) in out.events {
            let s = &self.fds[fd as usize];
            if s.want.contains(EventFlags::ET) || s.has(Bits::DATA) {
                self.carry.events.push((fd, what));
            }
        }
        self.carry.failed.append(&mut out.failed);
        Ok(())
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> Kind {
        Kind::Uring
    }

    fn change(&mut self, fd: RawFd, _old: EventFlags, new: EventFlags) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.state(fd).want = new & (EventFlags::IO | EventFlags::ET);
        if (new & EventFlags::IO).is_empty() {
            self.release(fd);
        } else {
            self.queue(fd);
        }
        if self.fds[fd as usize].has(Bits::DATA) {
            self.changed_data(fd);
        }
        Ok(())
    }

    fn fd_closed(&mut self, fd: RawFd) {
        if fd < 0 {
            return;
        }
        self.release(fd);
        if self.fds[fd as usize].has(Bits::DATA) {
            self.detach(fd);
        }
    }

    fn data_path(&mut self) -> Option<&mut dyn DataPath> {
        if self.ring.has_recv_buffers() { Some(self) } else { None }
    }

    fn dispatch(&mut self, timeout: Option<Duration>, out: &mut Ready) -> io::Result<()> {
        if !self.ring.is_ours() {
            return Err(io::Error::other("the io_uring backend is the parent's: call reinit() after fork"));
        }
        if !self.carry.events.is_empty() || !self.carry.failed.is_empty() {
            out.failed.append(&mut self.carry.failed);
            for (fd, what) in self.carry.events.drain(..) {
                let s = &self.fds[fd as usize];
                let what = what & s.want;
                if !s.has(Bits::EMPTIED) && !what.is_empty() {
                    out.events.push((fd, what));
                }
            }
        }
        self.top_up_buffers();
        if !self.changed.is_empty() {
            self.flush_changes(Some(out))?;
        }
        // Events of failed fds are about to be told: no waiting for them.
        if timeout == Some(Duration::ZERO) || !out.failed.is_empty() || !out.events.is_empty() {
            // Submit and run what the kernel owes, if anything; no wait.
            if self.ring.queued() > 0 || self.ring.kernel_has_work() {
                self.ring.enter(false, None)?;
            }
        } else {
            self.ring.enter(true, timeout)?;
        }
        self.reap(out);
        // Completions that overflowed the ring come out with more enters.
        for _ in 0..4 {
            if !self.ring.overflowed() {
                break;
            }
            self.ring.enter(false, None)?;
            self.reap(out);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // In a forked child that did not reinit, nothing registered is ours
        // to let go of (the polls are the parent's): nothing to do.
        if !self.ring.is_ours() {
            return Ok(());
        }
        // Only a poll that must let go of its file makes this enter: the
        // rest of the kept changes wait for the turn's own.
        #[cfg(test)]
        {
            self.flush_visits = 0;
        }
        if !self.released.is_empty() && self.flush_releases()? {
            self.enter_and_reap()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_results_translate_like_epoll() {
        let rw = EventFlags::READ | EventFlags::WRITE;
        assert_eq!(from_poll(su::POLLERR as u32), rw);
        assert_eq!(from_poll(su::POLLHUP as u32), rw | EventFlags::CLOSED);
        assert_eq!(from_poll((su::POLLIN | su::POLLRDHUP) as u32), EventFlags::READ | EventFlags::CLOSED);
        assert_eq!(
            mask(EventFlags::READ | EventFlags::CLOSED | EventFlags::WRITE, READ),
            (su::POLLIN | su::POLLRDHUP) as u32
        );
        assert_eq!(mask(EventFlags::READ | EventFlags::WRITE, WRITE), su::POLLOUT as u32);
        assert_eq!(mask(EventFlags::WRITE, READ), 0);
        let ud = user_data(0xdead_beef, WRITE, 0x1234);
        assert_eq!((ud >> 32) as u32, 0xdead_beef);
        assert_eq!((ud >> 31) & 1, 1);
        assert_eq!(ud & FD_BITS, 0x1234);
        assert_eq!(ud & DATA_OP, 0);
        assert_eq!(std::mem::size_of::<FdState>(), 16);
    }

    /// A delete that leaves an fd unwatched flushes that fd only, not every
    /// fd with a change kept for the turn: closing k connections in a turn
    /// that re-arms n others cost k * n before (bench.c's re-add of 9,900
    /// events: 50 M fds visited per round).
    #[test]
    fn a_release_flushes_only_the_released_fd() {
        if crate::sys::uring::probe().is_err() {
            eprintln!("SKIPPED: io_uring is not available here");
            return;
        }
        let mut b = UringBackend::new(64).unwrap();
        // Numbers only: nothing is armed before a dispatch, so neither the
        // changes nor the flush hand the kernel an fd.
        for fd in 1000..2000 {
            b.change(fd, EventFlags::NONE, EventFlags::READ).unwrap();
        }
        for fd in 1000..1010 {
            b.change(fd, EventFlags::READ, EventFlags::NONE).unwrap();
            b.flush().unwrap();
            assert_eq!(b.flush_visits, 1, "a flush after deleting fd {fd}");
        }
        // The rest is still kept for the turn.
        assert_eq!(b.changed.len(), 1000);
        assert!(b.fds[1500].has(Bits::QUEUED) && b.fds[1005].want.is_empty());
    }
}
