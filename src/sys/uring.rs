//! Safe io_uring for the `uring` backend: a ring that carries poll
//! requests, their cancellations, and the completion data path of
//! bufferevents (multishot receives into provided buffers, sends). The
//! `io-uring` crate maps the rings; this file is the only user of its
//! `unsafe` API.
//!
//! Why this is safe for every caller:
//!
//! - **Memory lent to the kernel is owned here until its completion.** A
//!   send takes its [`Piece`]s by value ([`Ring::push_send`]) and keeps
//!   them, with the iovec array and `msghdr` that point into them, in a
//!   table of in-flight sends; the completion gives them back
//!   ([`Completion::sent`]). Receive buffers are blocks this file owns,
//!   offered to the kernel through a provided-buffer ring
//!   ([`Ring::provide`]); a receive completion hands the one block the
//!   kernel filled to the caller ([`Completion::buf`]), who may then do
//!   anything with it. No caller ever holds a reference to memory the
//!   kernel may write or read. Dropping the ring cancels every send and
//!   receive still out and waits for their completions; what the kernel
//!   may still hold after that (it never should) is leaked, never freed.
//! - **No other user memory is lent to the kernel.** A poll request
//!   (IORING_OP_POLL_ADD, one-shot or multishot) names an fd number, which
//!   the kernel resolves to its file when it takes the entry (as
//!   `epoll_ctl` does); a cancellation names a request by its user data;
//!   the wait's timeout is read during the call only. So a ring dropped with
//!   requests in flight leaves the kernel nothing of ours to write: Drop
//!   only unmaps the rings and closes the ring fd (the kernel then cancels
//!   what is left).
//! - **A poll holds the file, not the number.** Until it completes or is
//!   cancelled, a poll keeps a reference to the file it was armed on:
//!   closing the fd does not end it (epoll, by contrast, forgets a closed
//!   file). This is never unsafe, but it keeps a closed socket open, so the
//!   backend cancels the poll of an fd whose interest is deleted no later
//!   than the next `io_uring_enter` (see `reactor/backend/uring.rs`).
//! - **Fork.** The rings are shared memory (MAP_SHARED) and the ring fd is
//!   inherited, so an entry written by a child would be run by the parent's
//!   ring. Every method that writes an entry or enters the kernel first
//!   checks that the ring was made by this process (a count of forks kept by
//!   a `pthread_atfork` child hook: a load, not a `getpid` syscall) and
//!   fails with an error in a child (reads nothing either); dropping it
//!   there only unmaps the child's copy and closes its fd. The ring is
//!   set up SINGLE_ISSUER where the kernel has it, so the kernel itself
//!   refuses another task's submissions.
//!
//! Availability ([`probe`]): io_uring may be missing (ENOSYS: an old kernel,
//! `CONFIG_IO_URING=n`, or a seccomp filter answering ENOSYS) or forbidden
//! (EPERM: Docker's default seccomp profile, systemd's `SystemCallFilter=`
//! without the io_uring calls, `kernel.io_uring_disabled` = 2, or = 1 for a
//! process outside `kernel.io_uring_group` without CAP_SYS_ADMIN).
//! [`unavailable_reason`] turns the error into a sentence naming which.

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use libc::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLRDHUP};

/// The user data of cancellation entries; their completions carry nothing
/// the backend needs.
pub const CANCEL_USER_DATA: u64 = u64::MAX;

/// Forks this process has gone through (counted in every child).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // An atomic add: async-signal-safe, as a child hook must be.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork counter once per process.
fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the hook only does an atomic add; the other two hooks are
        // none (null is allowed for each).
        let r = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        if r != 0 {
            // Without the hook a child could not tell; say so loudly in
            // the one place that can: the backend then refuses (see new).
            FORKS.store(u64::MAX, Ordering::Relaxed);
        }
    });
}

/// How the ring was set up: the first set of flags the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG (Linux 6.1): completions
    /// are produced only inside `io_uring_enter`, in a batch.
    DeferTaskrun,
    /// COOP_TASKRUN | TASKRUN_FLAG (Linux 5.19).
    CoopTaskrun,
    /// No setup flags.
    Plain,
}

/// One completion.
#[derive(Debug)]
pub struct Completion {
    /// The entry's user data.
    pub user_data: u64,
    /// The result: a poll mask, a byte count (>= 0) or a negative errno.
    pub result: i32,
    /// Whether a multishot request stays armed (IORING_CQE_F_MORE).
    pub more: bool,
    /// A receive's block, now the caller's: its first `result` bytes are
    /// what was received.
    pub buf: Option<Vec<u8>>,
    /// A send's pieces, given back: `result` bytes of them were sent (a
    /// negative result: none).
    pub sent: Option<Vec<Piece>>,
}

/// Bytes `start..end` of a block: what a send takes (the shape of an
/// evbuffer chunk, so its blocks move in and out without a copy).
#[derive(Debug)]
pub struct Piece {
    /// The block.
    pub data: Vec<u8>,
    /// First byte to send.
    pub start: usize,
    /// One past the last.
    pub end: usize,
}

/// A send in flight: its pieces and the kernel's view of them, kept until
/// the completion (the kernel reads the bytes, and may read the iovecs and
/// the header, until then).
struct InFlight {
    pieces: Vec<Piece>,
    /// Kept alive for the kernel (never read here).
    _iov: Vec<libc::iovec>,
    _msg: Option<Box<libc::msghdr>>,
}

/// The user-data bit that marks a receive ([`Ring::push_recv`]): how this
/// file counts the receives still armed, with no table per receive.
pub const RECV_TAG: u64 = 1 << 29;

/// The user-data bit that marks a send or a receive (one that lends this
/// ring memory): a poll may not carry it, so no poll's completion can be
/// taken for a send's and hand its pieces back while the kernel reads them.
pub const DATA_TAG: u64 = 1 << 30;

/// A send [`Ring::push_send`] did not queue, with its pieces.
#[derive(Debug)]
pub struct SendRefused {
    /// Why: `None` when the submission queue is full.
    pub error: Option<io::Error>,
    /// The pieces, given back.
    pub pieces: Vec<Piece>,
}

/// Hashes a user data (a tag made by the backend, not by a peer) with
/// one multiplication: a send's table lookup is per request.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Most pieces one send takes (the kernel's UIO_MAXIOV).
pub const MAX_SEND_PIECES: usize = 1024;

/// The group id of the provided-buffer ring.
const BGID: u16 = 0;

/// A provided-buffer ring: an array of (address, length, id) entries the
/// kernel takes receive buffers from, and the blocks those name.
struct BufRing {
    /// The entries (mmap'd, page aligned, private to this process).
    base: *mut types::BufRingEntry,
    map_len: usize,
    entries: u16,
    /// The next entry to publish (the kernel's view moves when it is
    /// stored into the ring's tail field).
    tail: u16,
    /// The block each buffer id names while the kernel may fill it.
    blocks: Vec<Option<Vec<u8>>>,
    /// Ids with no block.
    free: Vec<u16>,
    /// Registered with the kernel (unregistered before the memory goes).
    registered: bool,
}

/// An io_uring instance for poll requests.
pub struct Ring {
    ring: IoUring,
    /// [`FORKS`] when the ring was made: the ring is this process's only
    /// while the count is unchanged.
    forks: u64,
    mode: Mode,
    skip_success: bool,
    /// Under valgrind, which holds signals back during io_uring_enter: a
    /// wait then ends every 100 ms so that they get in (profiling only).
    valgrind: bool,
    /// The kernel has IORING_FEAT_MIN_TIMEOUT (6.12).
    min_timeout: bool,
    /// Non-blocking sends queued since the last enter: each completes
    /// during that enter's submit, so its wait asks for that many more.
    inline_sends: u32,
    /// Sends in flight, by user data.
    sends: HashMap<u64, InFlight, BuildHasherDefault<TagHasher>>,
    /// Multishot receives armed (their user data has [`RECV_TAG`]).
    recvs: usize,
    bufs: Option<BufRing>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("fd", &self.ring.as_raw_fd()).field("mode", &self.mode).finish()
    }
}

fn not_ours() -> io::Error {
    io::Error::other("this io_uring belongs to the parent process (call reinit() after fork)")
}

impl Ring {
    /// A ring of `sq` submission and `cq` completion entries (rounded up to
    /// powers of two, clamped to the kernel's maxima), with the most
    /// efficient setup flags the kernel accepts. Fails where io_uring is
    /// missing or forbidden (see [`unavailable_reason`]) or lacks
    /// IORING_FEAT_EXT_ARG (Linux 5.11: a wait with a timeout in one call).
    pub fn new(sq: u32, cq: u32) -> io::Result<Ring> {
        watch_forks();
        let forks = FORKS.load(Ordering::Relaxed);
        if forks == u64::MAX {
            return Err(io::Error::other(
                "pthread_atfork failed: a forked child could not tell the ring is not its own",
            ));
        }
        let mut last = None;
        for mode in [Mode::DeferTaskrun, Mode::CoopTaskrun, Mode::Plain] {
            for submit_all in [true, false] {
                let mut b = IoUring::builder();
                // Not MADV_DONTFORK: a child must be able to unmap its copy
                // of the rings when it drops the ring (reinit); with the
                // range unmapped at fork, that munmap could hit a mapping
                // the child made there since.
                b.setup_cqsize(cq.max(sq)).setup_clamp();
                if submit_all {
                    b.setup_submit_all();
                }
                match mode {
                    Mode::DeferTaskrun => {
                        b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
                    }
                    Mode::CoopTaskrun => {
                        b.setup_coop_taskrun().setup_taskrun_flag();
                    }
                    Mode::Plain => {}
                }
                match b.build(sq) {
                    Ok(ring) => {
                        let p = ring.params();
                        if !p.is_feature_ext_arg() || !p.is_feature_nodrop() {
                            return Err(io::Error::new(
                                io::ErrorKind::Unsupported,
                                "the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11 or later needed)",
                            ));
                        }
                        let skip_success = p.is_feature_skip_cqe_on_success();
                        let valgrind =
                            std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"));
                        let min_timeout = p.is_feature_min_timeout();
                        return Ok(Ring {
                            ring,
                            forks,
                            mode,
                            skip_success,
                            valgrind,
                            min_timeout,
                            inline_sends: 0,
                            sends: HashMap::default(),
                            recvs: 0,
                            bufs: None,
                        });
                    }
                    // Flags this kernel does not know: try fewer.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
    }

    /// The setup flags in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether this process made the ring (not a forked child).
    #[inline]
    pub fn is_ours(&self) -> bool {
        FORKS.load(Ordering::Relaxed) == self.forks
    }

    /// Queues a poll of `fd` for `events` (POLLIN, POLLOUT, POLLRDHUP),
    /// `multishot` or one-shot, tagged `user_data` (without [`DATA_TAG`] or
    /// [`RECV_TAG`]). `false` when the
    /// submission queue is full (submit, then try again).
    pub fn push_poll(&mut self, fd: RawFd, events: u32, multishot: bool, user_data: u64) -> io::Result<bool> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        if user_data & (DATA_TAG | RECV_TAG) != 0 || user_data == CANCEL_USER_DATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a poll's user data may not carry DATA_TAG or RECV_TAG",
            ));
        }
        let e = opcode::PollAdd::new(types::Fd(fd), events).multi(multishot).build().user_data(user_data);
        // SAFETY: a poll entry refers to no memory of ours: the kernel reads
        // the fd number and the mask from the entry itself, and the ring is
        // this process's (checked above), so no other process's ring sees it.
        Ok(unsafe { self.ring.submission().push(&e) }.is_ok())
    }

    /// Queues the cancellation of the request tagged `target`. Its own
    /// completion (user data [`CANCEL_USER_DATA`]) is skipped on success
    /// where the kernel can; the cancelled poll completes with -ECANCELED.
    pub fn push_cancel(&mut self, target: u64) -> io::Result<bool> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        let mut e = opcode::AsyncCancel::new(target).build().user_data(CANCEL_USER_DATA);
        if self.skip_success {
            e = e.flags(squeue::Flags::SKIP_SUCCESS);
        }
        // SAFETY: a cancellation refers to no memory of ours (the target is
        // a number); the ring is this process's (checked above).
        Ok(unsafe { self.ring.submission().push(&e) }.is_ok())
    }

    /// Entries queued and not yet submitted (none in a forked child: the
    /// rings are not even mapped there).
    pub fn queued(&mut self) -> usize {
        if !self.is_ours() {
            return 0;
        }
        self.ring.submission().len()
    }

    /// Whether the kernel may have completions that only an
    /// `io_uring_enter` brings out: deferred task work (TASKRUN) or
    /// completions that overflowed the completion ring.
    pub fn kernel_has_work(&mut self) -> bool {
        if !self.is_ours() {
            return false;
        }
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow() || self.mode == Mode::Plain
    }

    /// Whether completions overflowed the completion ring (the kernel keeps
    /// them until an enter makes room).
    pub fn overflowed(&mut self) -> bool {
        self.is_ours() && self.ring.submission().cq_overflow()
    }

    /// One `io_uring_enter`: submits every queued entry and, with `wait`,
    /// waits until at least one completion is there or `timeout` passed
    /// (`None` = no limit); without `wait` it only runs what the kernel owes
    /// (deferred task work). A timeout, a signal or a full completion ring
    /// (EBUSY) is `Ok`: the caller reaps what there is.
    pub fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        let to_submit = self.ring.submission().len() as u32;
        // The non-blocking sends complete during the submit: wait for one
        // completion more than they make, but once 50 us have passed any
        // completion will do (nothing else may come: the peers may be
        // waiting for what those sends carry). Without MIN_TIMEOUT, one.
        let mut want = u32::from(wait);
        let mut min_wait = 0;
        if wait && self.inline_sends > 0 && self.min_timeout {
            want += self.inline_sends;
            min_wait = 50;
        }
        self.inline_sends = 0;
        let timeout = match timeout {
            _ if !self.valgrind || !wait => timeout,
            Some(t) => Some(t.min(Duration::from_millis(100))),
            None => Some(Duration::from_millis(100)),
        };
        let ts = timeout.map(|t| types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos()));
        let mut args = types::SubmitArgs::new().min_wait_usec(min_wait);
        if let Some(ts) = ts.as_ref() {
            args = args.timespec(ts);
        }
        // IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG (the crate keeps its
        // flag type private).
        let flags: u32 = 1 | 8;
        // SAFETY: `args` (and the timespec it points at) live across the
        // call, its size is the one the kernel expects for EXT_ARG, and the
        // entries it submits refer to no memory of ours (see push_poll) but
        // what the in-flight tables and the buffer ring own until the
        // completions (see push_send, provide); the ring is this process's
        // (checked above).
        let r = unsafe { self.ring.submitter().enter(to_submit, want, flags, Some(&args)) };
        if self.valgrind {
            // valgrind delivers a pending signal only in a call it knows
            // may block; io_uring_enter is not one.
            let _ = super::poll::poll(&mut [], 0);
        }
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `f` for every completion waiting, and frees their places.
    pub fn reap(&mut self, mut f: impl FnMut(Completion)) {
        if !self.is_ours() {
            return;
        }
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            let (user_data, result, flags) = (c.user_data(), c.result(), c.flags());
            let more = cqueue::more(flags);
            let mut done = Completion { user_data, result, more, buf: None, sent: None };
            if let Some(bid) = cqueue::buffer_select(flags)
                && let Some(b) = self.bufs.as_mut()
            {
                // The kernel filled this block and is done with it (the
                // completion is posted after the copy): it is the caller's.
                done.buf = b.blocks.get_mut(bid as usize).and_then(Option::take);
                if done.buf.is_some() {
                    b.free.push(bid);
                }
            }
            if !more && user_data != CANCEL_USER_DATA {
                // (A cancellation's user data has every bit set: it is
                // neither a receive nor a send.)
                if user_data & RECV_TAG != 0 {
                    self.recvs = self.recvs.saturating_sub(1);
                } else if user_data & DATA_TAG != 0
                    && let Some(s) = self.sends.remove(&user_data)
                {
                    done.sent = Some(s.pieces);
                }
            }
            f(done);
        }
    }

    /// Sets up the provided-buffer ring receives take blocks from, with
    /// room for `entries` blocks (a power of two). Fails where the kernel
    /// has no buffer rings (before 5.19): the caller reads otherwise.
    pub fn setup_recv_buffers(&mut self, entries: u16) -> io::Result<()> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        if self.bufs.is_some() {
            return Ok(());
        }
        if !entries.is_power_of_two() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "buffer ring size must be a power of two"));
        }
        let map_len = (usize::from(entries) * std::mem::size_of::<types::BufRingEntry>()).max(4096);
        // SAFETY: an anonymous private mapping of map_len bytes at an
        // address the kernel picks: no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = BufRing {
            base: base.cast(),
            map_len,
            entries,
            tail: 0,
            blocks: (0..entries).map(|_| None).collect(),
            free: (0..entries).rev().collect(),
            registered: false,
        };
        // SAFETY: the mapping is page aligned, holds `entries` entries and
        // stays mapped until the group is unregistered (BufRing::release),
        // or for ever if that fails; it is zeroed, so the tail starts at 0.
        let r = unsafe { self.ring.submitter().register_buf_ring_with_flags(base as u64, entries, BGID, 0) };
        match r {
            Ok(()) => {
                b.registered = true;
                self.bufs = Some(b);
                Ok(())
            }
            Err(e) => {
                b.release(&self.ring);
                Err(e)
            }
        }
    }

    /// Whether receives have a buffer ring ([`setup_recv_buffers`](Self::setup_recv_buffers)).
    pub fn has_recv_buffers(&self) -> bool {
        self.bufs.is_some()
    }

    /// Blocks the buffer ring lacks (to fill with [`provide`](Self::provide)).
    pub fn buffers_missing(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.free.len())
    }

    /// Offers `block` to the kernel for receives; it comes back as the
    /// [`Completion::buf`] of the receive that fills it (or is freed with
    /// the ring). `Some(block)` back if the ring has no room, or the block
    /// is empty or too large to name.
    pub fn provide(&mut self, block: Vec<u8>) -> Option<Vec<u8>> {
        if !self.is_ours() || block.is_empty() || block.len() > u32::MAX as usize {
            return Some(block);
        }
        let Some(b) = self.bufs.as_mut() else { return Some(block) };
        let Some(bid) = b.free.pop() else { return Some(block) };
        let mask = b.entries - 1;
        // SAFETY: `tail & mask` < entries, inside the mapping; the kernel
        // reads an entry only once the tail is published past it (below),
        // and this entry is past the published tail, so nobody reads it now.
        unsafe {
            let e = &mut *b.base.add(usize::from(b.tail & mask));
            e.set_addr(block.as_ptr() as u64);
            e.set_len(block.len() as u32);
            e.set_bid(bid);
        }
        // The block's heap memory is the kernel's to fill from now on; the
        // Vec (pointer, length) is kept here and not touched until the
        // completion that names `bid`.
        b.blocks[usize::from(bid)] = Some(block);
        b.tail = b.tail.wrapping_add(1);
        // SAFETY: the tail field is the `resv` of the first entry, inside
        // the mapping; it is shared with the kernel, so it is written
        // through an atomic, with Release so the entry is seen first.
        unsafe {
            let tail = types::BufRingEntry::tail(b.base) as *const std::sync::atomic::AtomicU16;
            (*tail).store(b.tail, Ordering::Release);
        }
        None
    }

    /// Queues a multishot receive on `fd` into the buffer ring, tagged
    /// `user_data`, which must have [`DATA_TAG`] and [`RECV_TAG`] set (and no other request
    /// may): one completion per block filled, the last without `more` (EOF:
    /// result 0; ENOBUFS: the ring ran dry; ECANCELED). `false` when the
    /// submission queue is full.
    pub fn push_recv(&mut self, fd: RawFd, user_data: u64) -> io::Result<bool> {
        if !self.is_ours() {
            return Err(not_ours());
        }
        if user_data & (DATA_TAG | RECV_TAG) != DATA_TAG | RECV_TAG || user_data == CANCEL_USER_DATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a receive's user data needs DATA_TAG and RECV_TAG",
            ));
        }
        if self.bufs.is_none() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no buffer ring for receives"));
        }
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID).build().user_data(user_data);
        // SAFETY: the receive writes only into blocks of the buffer ring,
        // which this ring owns until their completions (see provide); the
        // ring is this process's (checked above).
        let ok = unsafe { self.ring.submission().push(&e) }.is_ok();
        if ok {
            self.recvs += 1;
        }
        Ok(ok)
    }

    /// Queues a send of `pieces` (at most [`MAX_SEND_PIECES`]) on `fd`,
    /// tagged `user_data`, which must have [`DATA_TAG`] (not [`RECV_TAG`])
    /// and be unique among the sends in flight.
    /// Non-blocking (`wait` false): it completes during the next enter's
    /// submit, short or with EAGAIN if the socket is full; waiting: the
    /// kernel sends when there is room. The pieces are this ring's until the
    /// completion gives them back ([`Completion::sent`]). Refused, with the
    /// pieces back: the submission queue is full (`error` None: enter, then
    /// try again), or the send is invalid or the ring not this process's.
    pub fn push_send(&mut self, fd: RawFd, pieces: Vec<Piece>, wait: bool, user_data: u64) -> Result<(), SendRefused> {
        let refuse = |pieces, error: Option<io::Error>| Err(SendRefused { error, pieces });
        if !self.is_ours() {
            return refuse(pieces, Some(not_ours()));
        }
        if pieces.is_empty()
            || user_data & (DATA_TAG | RECV_TAG) != DATA_TAG
            || pieces.len() > MAX_SEND_PIECES
            || self.sends.contains_key(&user_data)
            || pieces.iter().any(|p| p.start > p.end || p.end > p.data.len() || p.end - p.start > u32::MAX as usize)
        {
            return refuse(pieces, Some(io::Error::new(io::ErrorKind::InvalidInput, "invalid send")));
        }
        if self.ring.submission().is_full() {
            return refuse(pieces, None);
        }
        let flags = libc::MSG_NOSIGNAL | if wait { 0 } else { libc::MSG_DONTWAIT };
        // One piece (the usual answer) is a plain send: no iovec array and
        // no header to allocate per send.
        let (entry, iov, msg) = if let [one] = pieces.as_slice() {
            let e = opcode::Send::new(types::Fd(fd), one.data[one.start..].as_ptr(), (one.end - one.start) as u32)
                .flags(flags);
            (e.build(), Vec::new(), None)
        } else {
            let iov: Vec<libc::iovec> = pieces
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.data[p.start..].as_ptr() as *mut libc::c_void,
                    iov_len: p.end - p.start,
                })
                .collect();
            // SAFETY: msghdr is plain data, for which all-zero is valid.
            let mut m: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
            m.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_iovlen = iov.len() as _;
            let e = opcode::SendMsg::new(types::Fd(fd), &*m as *const libc::msghdr).flags(flags as u32);
            (e.build(), iov, Some(m))
        };
        let entry = entry.user_data(user_data);
        // SAFETY: the entry points at the pieces' bytes, the iovec array and
        // the header: heap memory that moves into `sends` below and stays
        // there, untouched, until the completion takes it out (or Drop has
        // waited for that completion, or leaks it); the ring is this
        // process's (checked above).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return refuse(pieces, None);
        }
        if !wait {
            self.inline_sends += 1;
        }
        self.sends.insert(user_data, InFlight { pieces, _iov: iov, _msg: msg });
        Ok(())
    }

    /// In a forked child: the sends the parent's ring had in flight, given
    /// back unsent (the child's copies of their pieces; whether the
    /// parent's kernel sends the parent's copies is the parent's affair).
    /// Nothing in the process that made the ring.
    pub fn take_sends_after_fork(&mut self) -> Vec<(u64, Vec<Piece>)> {
        if self.is_ours() {
            return Vec::new();
        }
        self.sends.drain().map(|(ud, s)| (ud, s.pieces)).collect()
    }

    /// Sends and receives still out (tests).
    pub fn ops_out(&self) -> (usize, usize) {
        (self.sends.len(), self.recvs)
    }
}

impl BufRing {
    /// Unregisters the group and unmaps the entries, or leaks them if the
    /// kernel refuses (it could still read them).
    fn release(&mut self, ring: &IoUring) {
        if self.registered {
            if ring.submitter().unregister_buf_ring(BGID).is_err() {
                self.leak();
                return;
            }
            self.registered = false;
        }
        if !self.base.is_null() {
            // SAFETY: the mapping made in setup_recv_buffers, of map_len
            // bytes, no longer registered with the kernel.
            unsafe { libc::munmap(self.base.cast(), self.map_len) };
            self.base = std::ptr::null_mut();
        }
    }

    /// Gives up the entries and the blocks for good: the kernel may still
    /// use them.
    fn leak(&mut self) {
        self.base = std::ptr::null_mut();
        for b in self.blocks.iter_mut() {
            if let Some(b) = b.take() {
                std::mem::forget(b);
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.sends.is_empty() && self.recvs == 0 && self.bufs.is_none() {
            return;
        }
        if !self.is_ours() {
            // A forked child: the kernel works on the parent's memory; the
            // copies here are the child's to free. Its buffer ring mapping
            // is private (copied at fork) and registered only in the
            // parent's ring.
            if let Some(b) = self.bufs.as_mut() {
                b.registered = false;
                b.release(&self.ring);
            }
            return;
        }
        // Cancel every request still out (IORING_ASYNC_CANCEL_ANY), and
        // wait for the completions of the sends and receives: until then
        // the kernel may use their memory.
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(CANCEL_USER_DATA);
        loop {
            // SAFETY: a cancellation refers to no memory of ours.
            if unsafe { self.ring.submission().push(&e) }.is_ok() || self.enter(false, None).is_err() {
                break;
            }
        }
        for _ in 0..200 {
            if self.sends.is_empty() && self.recvs == 0 {
                break;
            }
            if self.enter(true, Some(Duration::from_millis(5))).is_err() {
                break;
            }
            self.reap(drop);
        }
        if !self.sends.is_empty() || self.recvs != 0 {
            // The kernel did not let go: its memory stays, leaked.
            for (_, s) in self.sends.drain() {
                std::mem::forget(s);
            }
            if let Some(b) = self.bufs.as_mut() {
                b.leak();
            }
            return;
        }
        if let Some(b) = self.bufs.as_mut() {
            b.release(&self.ring);
        }
    }
}

/// Whether io_uring works in this process, probed once with a small ring:
/// `Err` holds the reason ([`unavailable_reason`]).
///
/// The probe's ring is kept, never destroyed: tearing a ring down makes
/// the kernel send task work to every task that used it (TWA_SIGNAL), which
/// interrupts that thread's next blocking call that has a timeout with
/// EINTR (a socket read with SO_RCVTIMEO, say). A probe must not do that
/// to its caller. (A base's ring is torn down with the base, which its
/// owner chose.)
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| match Ring::new(2, 2) {
            Ok(ring) => {
                std::mem::forget(ring);
                Ok(())
            }
            Err(e) => Err(unavailable_reason(&e)),
        })
        .clone()
}

/// A sentence saying why io_uring cannot be used, from the error of setting
/// a ring up (and, for EPERM, the `kernel.io_uring_*` sysctls as they are).
pub fn unavailable_reason(e: &io::Error) -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let sysctls = if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        (read("/proc/sys/kernel/io_uring_disabled"), read("/proc/sys/kernel/io_uring_group"))
    } else {
        (None, None)
    };
    reason(e, sysctls.0.as_deref(), sysctls.1.as_deref())
}

/// [`unavailable_reason`] given the values of `kernel.io_uring_disabled`
/// and `kernel.io_uring_group` (None: no such sysctl, a kernel before 6.6).
fn reason(e: &io::Error, disabled: Option<&str>, group: Option<&str>) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "io_uring_setup: {e}: the kernel has no io_uring (Linux 5.11 or later built with \
             CONFIG_IO_URING), or a seccomp filter answers ENOSYS"
        ),
        Some(libc::EPERM | libc::EACCES) => match disabled {
            Some("2") => {
                format!("io_uring_setup: {e}: kernel.io_uring_disabled = 2 disables io_uring for every process")
            }
            Some("1") => format!(
                "io_uring_setup: {e}: kernel.io_uring_disabled = 1 allows io_uring only to members of \
                 kernel.io_uring_group ({}) and to CAP_SYS_ADMIN, and this process is neither",
                group.unwrap_or("-1")
            ),
            _ => format!(
                "io_uring_setup: {e}: a seccomp filter forbids io_uring (Docker's default profile does; \
                 under systemd, SystemCallFilter= must allow io_uring_setup io_uring_enter io_uring_register)"
            ),
        },
        Some(libc::ENOMEM) => {
            format!("io_uring_setup: {e}: no memory for the rings (RLIMIT_MEMLOCK on Linux before 5.12?)")
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

/// Installs a seccomp filter on the calling thread (and the processes it
/// starts from now on) that fails `io_uring_setup` with `errno`, as Docker's
/// default profile (EPERM) or an old kernel (ENOSYS) would: how the tests
/// reproduce a host where io_uring is forbidden. Sets `no_new_privs` first,
/// as an unprivileged filter requires. x86-64 and aarch64 only.
pub fn refuse_io_uring_setup(errno: i32) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(io::Error::new(io::ErrorKind::Unsupported, "seccomp filter: unknown architecture"));
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_ERRNO: u32 = 0x0005_0000;
        let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let ret = libc::BPF_RET | libc::BPF_K;
        // seccomp_data: nr at offset 0, arch at offset 4.
        let prog = [
            stmt(ld, 4),
            jeq(ARCH, 1, 0),
            stmt(ret, RET_ALLOW),
            stmt(ld, 0),
            jeq(libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(ret, RET_ERRNO | (errno as u32 & 0xffff)),
            stmt(ret, RET_ALLOW),
        ];
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        super::cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        // SAFETY: `fprog` points at `prog`, both alive across the call; the
        // kernel copies the program and keeps no pointer to it.
        super::cvt(unsafe {
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog, 0, 0)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way io_uring can be missing or forbidden is named as such (the
    /// sysctl cases cannot be set up in a test without changing the whole
    /// host, so they are checked here with the values given).
    #[test]
    fn reasons_name_the_cause() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let r = reason(&eperm, Some("2"), Some("-1"));
        assert!(r.contains("kernel.io_uring_disabled = 2 disables io_uring for every process"), "{r}");
        let r = reason(&eperm, Some("1"), Some("1001"));
        assert!(r.contains("kernel.io_uring_disabled = 1") && r.contains("kernel.io_uring_group (1001)"), "{r}");
        for disabled in [Some("0"), None] {
            let r = reason(&eperm, disabled, None);
            assert!(r.contains("a seccomp filter forbids io_uring") && r.contains("SystemCallFilter="), "{r}");
        }
        let r = reason(&io::Error::from_raw_os_error(libc::ENOSYS), Some("2"), None);
        assert!(r.contains("the kernel has no io_uring"), "{r}");
        let r = reason(&io::Error::from_raw_os_error(libc::ENOMEM), None, None);
        assert!(r.contains("RLIMIT_MEMLOCK"), "{r}");
    }

    /// A failed cancellation's completion (user data all ones) is no
    /// receive's: the count Drop waits on stays right. And a poll may not
    /// carry a send's or a receive's tag bits.
    #[test]
    fn uring_cancel_completions_and_polls_are_no_data_ops() {
        use std::os::fd::AsRawFd;
        let Ok(mut ring) = Ring::new(8, 8) else { return };
        if ring.setup_recv_buffers(4).is_err() {
            return;
        }
        assert!(ring.provide(vec![0; 64]).is_none());
        let (a, _b) = super::super::socketpair().unwrap();
        assert!(ring.push_recv(a.as_raw_fd(), DATA_TAG | RECV_TAG | 7).unwrap());
        assert_eq!(ring.ops_out(), (0, 1));
        // Nothing carries this tag: the cancellation fails (ENOENT), and a
        // failure is always posted.
        assert!(ring.push_cancel(12345).unwrap());
        ring.enter(false, None).unwrap();
        let mut seen = Vec::new();
        ring.reap(|c| seen.push((c.user_data, c.result)));
        assert_eq!(seen, [(CANCEL_USER_DATA, -libc::ENOENT)]);
        assert_eq!(ring.ops_out(), (0, 1));
        for ud in [DATA_TAG | 1, RECV_TAG | 1, CANCEL_USER_DATA] {
            let e = ring.push_poll(a.as_raw_fd(), 1, false, ud).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
