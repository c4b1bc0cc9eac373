//! `EvBuffer`: libevent's byte queue (`struct evbuffer`) in safe Rust.
//!
//! # Layout
//!
//! A buffer is a `VecDeque` of chunks; a chunk owns a heap block
//! (`Vec<u8>`, fully initialised, so `readv` can fill it without `unsafe`)
//! and the `start..end` window of it that holds queued bytes. Bytes before
//! `start` were drained, bytes after `end` are free space for the next
//! `add` or `read_from`.
//!
//! - Adding never moves stored bytes: new bytes go into the tail chunk's
//!   free space, then into a new chunk. `add_vec` adopts
//!   the caller's allocation as a chunk (no copy).
//! - Draining the front never copies the rest: it advances `start` and pops
//!   the chunks it empties. No chunk in the queue is ever empty.
//! - `add_buffer` and
//!   `remove_buffer` move whole chunks between
//!   buffers (libevent's `evbuffer_add_buffer`/`evbuffer_remove_buffer`),
//!   except that, once the destination holds a couple of chunks, a chunk
//!   less than half full is copied into its tail and the block released, so
//!   that memory follows the byte count (tiny reads into 64 KiB blocks must
//!   not pile up in an output the client does not read). A
//!   chunk cut by `remove_buffer` copies only its *smaller* side: when most
//!   of it moves, the chunk itself moves and its tail (typically a partial
//!   line) is copied into a fresh chunk that stays behind, so the zero-copy
//!   read → rot13 in place → move to output path of the protocol copies at
//!   most one partial line per read.
//! - `readln` keeps a scan cursor per buffer: after a
//!   miss, the next search for the same style resumes where it stopped as
//!   long as only appends happened, so a line trickling in byte by byte is
//!   scanned once.
//! - `read_from` `readv`s into the tail chunk's free
//!   space plus one new chunk (libevent's `evbuffer_read` with two iovecs),
//!   or `recv`s into one of them;
//!   `write_to` gathers up to `IOV_MAX` chunks into one
//!   `sendmsg` (`writev` with `MSG_NOSIGNAL`; a single chunk goes out with
//!   `send`) and drains what was written. `recv` and `send` cost the kernel
//!   a little less than `read` and `sendmsg` (no VFS layer, no msghdr to
//!   copy in: about 2% of a 64-byte request's round trip, BENCHMARKS.md);
//!   on a pipe they fail with ENOTSOCK once and the buffer uses `read` and
//!   `write` from then on.
//!
//! # Read size
//!
//! `DEFAULT_READ_SIZE` is 64 KiB, changeable per buffer with
//! `set_read_size`. A bulk sender then costs one
//! `read` per 64 KiB, and SPEC §1 bounds a connection by "one read buffer
//! (64 KiB at most)", which this default meets. Measured
//! (`benches/buffers.rs`, group `pipeline`: 64-byte lines, read → frame →
//! write over a socketpair, CPU time of both ends): 4 KiB reads cost about
//! 25% more CPU than 16 or 64 KiB, and 16, 32 and 64 KiB were within the
//! noise of the shared test machine; a 64 KiB block stays well inside L2,
//! so nothing argues for less. Blocks come from the pool, so the size costs
//! memory only while a connection has unanswered bytes.
//!
//! # Chunk pool
//!
//! Read-sized chunks are recycled through a small per-thread free list (at
//! most `POOL_CHUNKS` blocks of 4 KiB..=256 KiB, fully initialised). A
//! chunk emptied by `drain`/`write_to`/`shrink`/drop goes back to the pool,
//! and `read_from`, `add` and the copy in `remove_buffer` take from it before
//! asking the allocator. In the steady state of a busy connection (read into
//! a pooled chunk, rot13 it in place, move it to the output, write it, drain
//! it) no `malloc` happens at all. The pool is per thread because the reactor
//! is single-threaded (one base per process); `trim_pool` frees it.
//!
//! # Idle memory
//!
//! `EvBuffer::new` allocates nothing; an empty buffer whose chunks were
//! drained keeps only its `VecDeque` array (a few dozen bytes per slot).
//! A connection that goes quiet holding a partial line still owns a pooled
//! 64 KiB chunk: `shrink` copies the bytes into one
//! exact-size allocation, returns the big chunks to the pool and releases
//! the queue array, so an idle connection holds `len + 40` bytes per buffer
//! (plus allocator overhead). The bufferevent calls it when a connection
//! becomes idle: on the input when a read pass ends with `WouldBlock` (the
//! socket is drained), and on the output when a write empties it. It costs
//! one small allocation and a copy of the partial line, nothing measurable
//! next to the syscalls (`pipeline/read64KiB_shrink_when_idle` in
//! `benches/buffers.rs`); see the usage sketch in `protocol`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::os::fd::RawFd;

use crate::sys;

mod chunk;

use chunk::{Chunk, new_chunk, pool_give, pool_take};
pub use chunk::{POOL_CHUNKS, pooled_chunks, trim_pool};

/// A block of exactly `size` bytes for a receive that fills it outside an
/// evbuffer (the io_uring data path's buffer ring): from this thread's
/// chunk pool if it has one, else fresh.
pub fn take_block(size: usize) -> Vec<u8> {
    match pool_take(size) {
        Some(b) if b.len() == size => b,
        Some(b) => {
            pool_give(b);
            vec![0; size]
        }
        None => vec![0; size],
    }
}

/// Gives a block no longer needed to this thread's chunk pool (or to the
/// allocator, if it does not fit there).
pub fn give_block(block: Vec<u8>) {
    pool_give(block);
}

/// Bytes one [`EvBuffer::read_from`] asks for unless changed with
/// [`EvBuffer::set_read_size`].
pub const DEFAULT_READ_SIZE: usize = 64 * 1024;

/// Smallest read size [`EvBuffer::set_read_size`] accepts.
pub const MIN_READ_SIZE: usize = 64;

/// Largest read size [`EvBuffer::set_read_size`] accepts.
pub const MAX_READ_SIZE: usize = 1024 * 1024;

/// A buffer holding fewer chunks than this takes sparse chunks by move
/// anyway (see [`EvBuffer::add_buffer`]): at most this many blocks are
/// wasted, and the common case (output written at once) copies nothing.
pub const SPARSE_MOVES: usize = 2;

/// Smallest chunk `add`/`prepend` allocate, so that many small adds share one.
const MIN_CHUNK: usize = 1024;

/// Free space in the tail chunk worth a read of its own (no second iovec).
const TAIL_READ_MIN: usize = 4 * 1024;

/// Where a line ends, for [`EvBuffer::readln`] (libevent's
/// `enum evbuffer_eol_style`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Eol {
    /// `EVBUFFER_EOL_ANY`: the line ends at the first CR or LF, and the
    /// terminator is the whole run of CR and LF bytes that follows (so
    /// `"a\r\n\r\nb"` gives `"a"` then `"b"`). As in libevent, a CR at the
    /// very end of the buffer already ends the line; an LF arriving later
    /// then ends an empty line.
    #[doc(alias = "EVBUFFER_EOL_ANY")]
    Any,
    /// `EVBUFFER_EOL_CRLF`: the line ends at the first LF; one CR right
    /// before it is part of the terminator.
    #[doc(alias = "EVBUFFER_EOL_CRLF")]
    Crlf,
    /// `EVBUFFER_EOL_CRLF_STRICT`: the line ends at the first CR LF pair; a
    /// lone CR or LF is part of the line.
    #[doc(alias = "EVBUFFER_EOL_CRLF_STRICT")]
    CrlfStrict,
    /// `EVBUFFER_EOL_LF`: the line ends at the first LF.
    #[doc(alias = "EVBUFFER_EOL_LF")]
    Lf,
    /// `EVBUFFER_EOL_NUL`: the line ends at the first NUL byte.
    #[doc(alias = "EVBUFFER_EOL_NUL")]
    Nul,
}

/// A queue of bytes stored as a chain of chunks (libevent's `evbuffer`).
///
/// See the module documentation for the layout, the pool and when to call
/// [`shrink`](EvBuffer::shrink).
#[doc(alias = "evbuffer")]
pub struct EvBuffer {
    chunks: VecDeque<Chunk>,
    len: usize,
    read_size: u32,
    /// `readln`'s scan cursor: the last search for this style found no
    /// terminator starting before this offset, and only appends happened
    /// since. A line trickling in is thus scanned once, not once per read.
    eol_hint: Option<(Eol, u32)>,
    /// The fd last read or written is not a socket (a pipe): plain
    /// `read`/`write` without first trying `recv`/`send`.
    not_socket: bool,
}

impl Default for EvBuffer {
    fn default() -> Self {
        EvBuffer::new()
    }
}

impl fmt::Debug for EvBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvBuffer")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .field("read_size", &self.read_size)
            .finish()
    }
}

impl Drop for EvBuffer {
    fn drop(&mut self) {
        for c in self.chunks.drain(..) {
            pool_give(c.data);
        }
    }
}

impl EvBuffer {
    /// An empty buffer. Allocates nothing.
    #[doc(alias = "evbuffer_new")]
    pub const fn new() -> EvBuffer {
        EvBuffer {
            chunks: VecDeque::new(),
            len: 0,
            read_size: DEFAULT_READ_SIZE as u32,
            eol_hint: None,
            not_socket: false,
        }
    }

    /// Number of queued bytes.
    #[doc(alias = "evbuffer_get_length")]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks holding the queued bytes.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The queued bytes, one slice per chunk, front to back. No slice is
    /// empty.
    #[doc(alias = "evbuffer_peek")]
    pub fn chunks(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator + '_ {
        self.chunks.iter().map(Chunk::bytes)
    }

    /// The queued bytes of chunk `i` (0 = front), as [`chunks`](EvBuffer::chunks)
    /// yields them; `None` past the last chunk.
    pub fn chunk(&self, i: usize) -> Option<&[u8]> {
        self.chunks.get(i).map(Chunk::bytes)
    }

    /// Forgets what kind of fd it was used with (a pooled buffer may next
    /// serve a socket after a pipe).
    pub(crate) fn forget_fd(&mut self) {
        self.not_socket = false;
    }

    /// Whether its chunk array has room for at most `n` chunks (a pooled
    /// empty buffer keeps a small one).
    pub fn chunks_capacity_within(&self, n: usize) -> bool {
        self.chunks.capacity() <= n
    }

    /// Heap bytes this buffer holds: its blocks plus its chunk array.
    pub fn heap_size(&self) -> usize {
        let blocks: usize = self.chunks.iter().map(|c| c.data.capacity()).sum();
        blocks + self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }

    /// Bytes one [`read_from`](EvBuffer::read_from) asks for at most.
    pub fn read_size(&self) -> usize {
        self.read_size as usize
    }

    /// Sets how many bytes one [`read_from`](EvBuffer::read_from) asks for
    /// at most, clamped to [`MIN_READ_SIZE`]..=[`MAX_READ_SIZE`].
    pub fn set_read_size(&mut self, size: usize) {
        self.read_size = size.clamp(MIN_READ_SIZE, MAX_READ_SIZE) as u32;
    }

    /// Appends a copy of `data`.
    #[doc(alias = "evbuffer_add")]
    pub fn add(&mut self, data: &[u8]) {
        self.add_with(data, |_| {});
    }

    /// Appends a copy of `data` and calls `f` on the copy in place (one
    /// call per chunk it landed in), e.g. to rotate a line while copying it
    /// without an intermediate buffer.
    pub fn add_with(&mut self, data: &[u8], mut f: impl FnMut(&mut [u8])) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        let mut rest = data;
        if let Some(tail) = self.chunks.back_mut() {
            let at = tail.end;
            let n = tail.append(rest);
            if n > 0 {
                f(&mut tail.data[at..at + n]);
            }
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            let mut c = new_chunk(rest.len(), MIN_CHUNK);
            c.append(rest);
            f(c.bytes_mut());
            self.chunks.push_back(c);
        }
    }

    /// Appends `data`, taking over its allocation (no copy).
    #[doc(alias = "evbuffer_add_reference")]
    pub fn add_vec(&mut self, mut data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        // A block whose spare capacity is never used must not reach the
        // pool with that capacity unaccounted: trim costs nothing when the
        // caller sized it exactly, which is the common case.
        if data.capacity() > data.len() + data.len() / 4 + 64 {
            data.shrink_to_fit();
        }
        let end = data.len();
        self.chunks.push_back(Chunk { data, start: 0, end });
    }

    /// Appends bytes `start..end` of a block as a chunk of its own, without
    /// a copy (a receive's block from the io_uring data path). An empty
    /// piece is given back to the pool.
    pub fn add_piece(&mut self, p: sys::uring::Piece) {
        let sys::uring::Piece { data, start, end } = p;
        if start >= end || end > data.len() {
            pool_give(data);
            return;
        }
        self.len += end - start;
        self.chunks.push_back(Chunk { data, start, end });
    }

    /// Takes the first chunks out (at most `max` of them, all bytes), as
    /// pieces to lend to a send; [`unsend`](Self::unsend) puts back what
    /// the send did not take.
    pub fn take_pieces(&mut self, max: usize) -> Vec<sys::uring::Piece> {
        let n = self.chunks.len().min(max);
        let mut v = Vec::with_capacity(n);
        for c in self.chunks.drain(..n) {
            self.len -= c.len();
            v.push(sys::uring::Piece { data: c.data, start: c.start, end: c.end });
        }
        self.eol_hint = None;
        v
    }

    /// Puts the pieces of a send back in front of the queued bytes, less
    /// the first `sent` bytes, which the socket took: their blocks are
    /// handed to `spent` (to be reused). Order is kept: the pieces go
    /// before whatever was added while they were lent.
    pub fn unsend(&mut self, mut pieces: Vec<sys::uring::Piece>, mut sent: usize, mut spent: impl FnMut(Vec<u8>)) {
        // Advance past the sent bytes first, then push to the front from
        // the last piece on: no second list per short send.
        for p in pieces.iter_mut() {
            let n = (p.end - p.start).min(sent);
            sent -= n;
            p.start += n;
        }
        self.eol_hint = None;
        for p in pieces.into_iter().rev() {
            if p.start >= p.end {
                spent(p.data);
            } else {
                self.len += p.end - p.start;
                self.chunks.push_front(Chunk { data: p.data, start: p.start, end: p.end });
            }
        }
    }

    /// Inserts a copy of `data` before the queued bytes.
    #[doc(alias = "evbuffer_prepend")]
    pub fn prepend(&mut self, data: &[u8]) {
        let n = data.len();
        if n == 0 {
            return;
        }
        self.eol_hint = None;
        self.len += n;
        if let Some(front) = self.chunks.front_mut()
            && front.start >= n
        {
            front.data[front.start - n..front.start].copy_from_slice(data);
            front.start -= n;
            return;
        }
        let mut c = new_chunk(n, MIN_CHUNK);
        // Room in front for further prepends, unless the buffer was empty
        // (then the free space is more useful behind, for adds).
        let at = if self.chunks.is_empty() { 0 } else { c.data.len() - n };
        c.data[at..at + n].copy_from_slice(data);
        c.start = at;
        c.end = at + n;
        self.chunks.push_front(c);
    }

    /// Discards the first `n` bytes (all of them if `n >= len`).
    #[doc(alias = "evbuffer_drain")]
    pub fn drain(&mut self, n: usize) {
        let mut left = n.min(self.len);
        if left > 0 {
            self.eol_hint = None;
        }
        self.len -= left;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else { break };
            let cl = front.len();
            if cl <= left {
                left -= cl;
                if let Some(c) = self.chunks.pop_front() {
                    pool_give(c.data);
                }
            } else {
                front.start += left;
                left = 0;
            }
        }
    }

    /// Copies the first bytes into `dst` without draining them; returns how
    /// many (`min(len, dst.len())`).
    #[doc(alias = "evbuffer_copyout")]
    pub fn copyout(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len);
        let mut at = 0;
        for c in &self.chunks {
            if at == n {
                break;
            }
            let s = c.bytes();
            let k = s.len().min(n - at);
            dst[at..at + k].copy_from_slice(&s[..k]);
            at += k;
        }
        n
    }

    /// Moves the first bytes into `dst`; returns how many.
    #[doc(alias = "evbuffer_remove")]
    pub fn remove(&mut self, dst: &mut [u8]) -> usize {
        let n = self.copyout(dst);
        self.drain(n);
        n
    }

    /// Moves every byte of `other` to the end of `self`.
    ///
    /// Chunks move without copying if at least half full, or while `self`
    /// holds fewer than [`SPARSE_MOVES`] chunks. Otherwise the bytes of a
    /// sparse chunk (a small read into a big block) are copied into the tail
    /// and the block is released: else a client sending many tiny lines
    /// without reading the answers would pin one read-sized block per line
    /// in the output, and the memory of a connection would no longer follow
    /// its byte count (SPEC §1 bounds it). An output written at once (the
    /// usual case) never holds more than a chunk or two, so it never copies.
    #[doc(alias = "evbuffer_add_buffer")]
    pub fn add_buffer(&mut self, other: &mut EvBuffer) {
        if other.len == 0 {
            return;
        }
        other.eol_hint = None;
        if self.chunks.is_empty() && (other.chunks.len() <= SPARSE_MOVES || other.chunks.iter().all(Chunk::dense)) {
            // Take over the whole chunk array: no allocation.
            std::mem::swap(&mut self.chunks, &mut other.chunks);
            self.len = other.len;
        } else {
            while let Some(c) = other.chunks.pop_front() {
                self.push_chunk(c);
            }
        }
        other.len = 0;
    }

    /// Whether a chunk taken from another buffer should be moved here
    /// rather than copied: it is dense, or this buffer is short enough that
    /// the waste is bounded (the usual case: an output written at once).
    fn takes(&self, c: &Chunk) -> bool {
        c.dense() || self.chunks.len() < SPARSE_MOVES
    }

    /// Appends the bytes of a chunk taken from another buffer: the chunk
    /// itself if [`takes`](EvBuffer::takes) says so, else a copy (and the
    /// block is released).
    fn push_chunk(&mut self, c: Chunk) {
        if self.takes(&c) {
            self.len += c.len();
            self.chunks.push_back(c);
        } else {
            self.add(c.bytes());
            pool_give(c.data);
        }
    }

    /// Moves the first `n` bytes of `self` (all if fewer) to the end of
    /// `dst`; returns how many moved.
    ///
    /// Whole chunks move without copying (unless sparse, as in
    /// [`add_buffer`](EvBuffer::add_buffer)). A chunk cut in two copies its
    /// smaller side: if most of it moves, the chunk moves and the bytes that
    /// stay are copied into a fresh (pooled) chunk, which keeps free space
    /// behind them for the next read.
    #[doc(alias = "evbuffer_remove_buffer")]
    pub fn remove_buffer(&mut self, dst: &mut EvBuffer, n: usize) -> usize {
        let n = n.min(self.len);
        self.eol_hint = None;
        if n == self.len {
            dst.add_buffer(self);
            return n;
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else { break };
            let cl = front.len();
            if cl <= left {
                if let Some(c) = self.chunks.pop_front() {
                    dst.push_chunk(c);
                }
                self.len -= cl;
                left -= cl;
                continue;
            }
            if left >= cl - left && (2 * left >= front.data.len() || dst.chunks.len() < SPARSE_MOVES) {
                let stay = cl - left;
                let mut rest = new_chunk(stay, self.read_size as usize);
                rest.append(&front.bytes()[left..]);
                front.end = front.start + left;
                if let Some(c) = self.chunks.pop_front() {
                    dst.chunks.push_back(c);
                }
                self.chunks.push_front(rest);
                dst.len += left;
            } else {
                dst.add(&front.bytes()[..left]);
                front.start += left;
            }
            self.len -= left;
            left = 0;
        }
        n
    }

    /// Calls `f` on the queued bytes in `range` (clamped to the buffer), one
    /// mutable slice per chunk it spans. This is how the protocol rotates
    /// bytes in place before moving them to the output.
    pub fn for_each_mut(&mut self, range: Range<usize>, mut f: impl FnMut(&mut [u8])) {
        let end = range.end.min(self.len);
        let start = range.start;
        if start >= end {
            return;
        }
        self.eol_hint = None;
        let mut base = 0;
        for c in self.chunks.iter_mut() {
            let cl = c.len();
            let cend = base + cl;
            if cend > start {
                let lo = start.saturating_sub(base);
                let hi = (end - base).min(cl);
                f(&mut c.bytes_mut()[lo..hi]);
            }
            base = cend;
            if base >= end {
                break;
            }
        }
    }

    /// The byte at `pos`, if `pos < len`.
    pub fn byte_at(&self, pos: usize) -> Option<u8> {
        let mut base = 0;
        for c in &self.chunks {
            let cl = c.len();
            if pos < base + cl {
                return Some(c.data[c.start + pos - base]);
            }
            base += cl;
        }
        None
    }

    /// Makes the first `n` bytes (all if fewer) contiguous and returns them.
    ///
    /// Copies only when they span chunks; then they are gathered into one
    /// new chunk.
    #[doc(alias = "evbuffer_pullup")]
    pub fn pullup(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.len);
        // The caller may write through the slice (a terminator, say):
        // readln's cursor no longer proves anything about these bytes.
        self.eol_hint = None;
        let front_len = self.chunks.front().map_or(0, Chunk::len);
        if front_len < n {
            let mut c = new_chunk(n, n);
            for s in self.chunks.iter() {
                let k = (n - c.end).min(s.len());
                c.append(&s.bytes()[..k]);
                if c.end == n {
                    break;
                }
            }
            self.drain(n);
            self.len += n;
            self.chunks.push_front(c);
        }
        match self.chunks.front_mut() {
            Some(c) => &mut c.bytes_mut()[..n],
            None => &mut [],
        }
    }

    /// Finds the first position `>= from` where `pred` (a forward scan of
    /// one contiguous slice) matches, across chunks.
    fn scan(&self, from: usize, pred: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
        let mut base = 0;
        for c in &self.chunks {
            let s = c.bytes();
            let cend = base + s.len();
            if cend > from {
                let lo = from.saturating_sub(base);
                if let Some(i) = pred(&s[lo..]) {
                    return Some(base + lo + i);
                }
            }
            base = cend;
        }
        None
    }

    /// Position of the first `byte` at or after `from`.
    pub fn search_byte(&self, byte: u8, from: usize) -> Option<usize> {
        self.scan(from, |s| memchr::memchr(byte, s))
    }

    /// Whether the bytes from chunk `ci`, offset `off` (within its window)
    /// start with `needle`.
    fn matches_at(&self, ci: usize, off: usize, needle: &[u8]) -> bool {
        let mut rest = needle;
        let mut off = off;
        for c in self.chunks.range(ci..) {
            let s = &c.bytes()[off..];
            let k = s.len().min(rest.len());
            if s[..k] != rest[..k] {
                return false;
            }
            rest = &rest[k..];
            if rest.is_empty() {
                return true;
            }
            off = 0;
        }
        false
    }

    /// Position of the first occurrence of `needle` starting at or after
    /// `from`, including occurrences that span chunks. An empty needle
    /// matches at `from` if `from <= len`.
    #[doc(alias = "evbuffer_search")]
    pub fn search(&self, needle: &[u8], from: usize) -> Option<usize> {
        let m = needle.len();
        if m == 0 {
            return (from <= self.len).then_some(from);
        }
        if from >= self.len || m > self.len - from {
            return None;
        }
        if m == 1 {
            return self.search_byte(needle[0], from);
        }
        let finder = memchr::memmem::Finder::new(needle);
        let mut base = 0;
        for (ci, c) in self.chunks.iter().enumerate() {
            let s = c.bytes();
            let cend = base + s.len();
            if cend > from {
                let lo = from.saturating_sub(base);
                // A match inside the chunk starts before any that spans the
                // boundary, so the first inside wins.
                if let Some(i) = finder.find(&s[lo..]) {
                    return Some(base + lo + i);
                }
                let straddle = lo.max(s.len().saturating_sub(m - 1));
                for st in straddle..s.len() {
                    if self.matches_at(ci, st, needle) {
                        return Some(base + st);
                    }
                }
            }
            base = cend;
        }
        None
    }

    /// Finds the first line: `(line length, terminator length)`. Resumes
    /// at the scan cursor, and moves it on a miss.
    fn find_eol(&mut self, eol: Eol) -> Option<(usize, usize)> {
        let from = match self.eol_hint {
            Some((style, at)) if style == eol => at as usize,
            _ => 0,
        };
        let found = match eol {
            Eol::Lf => self.search_byte(b'\n', from).map(|i| (i, 1)),
            Eol::Nul => self.search_byte(0, from).map(|i| (i, 1)),
            Eol::CrlfStrict => self.search(b"\r\n", from).map(|i| (i, 2)),
            Eol::Crlf => self
                .search_byte(b'\n', from)
                .map(|i| if i > 0 && self.byte_at(i - 1) == Some(b'\r') { (i - 1, 2) } else { (i, 1) }),
            Eol::Any => self.scan(from, |s| memchr::memchr2(b'\r', b'\n', s)).map(|i| {
                let run_end = self.scan(i, |s| s.iter().position(|&b| b != b'\r' && b != b'\n'));
                (i, run_end.unwrap_or(self.len) - i)
            }),
        };
        if found.is_none() {
            // A final CR may yet pair with an LF: CRLF_STRICT rescans it.
            let at = if eol == Eol::CrlfStrict { self.len.saturating_sub(1) } else { self.len };
            // Offsets past u32 are not remembered: the next call rescans.
            self.eol_hint = u32::try_from(at).ok().map(|at| (eol, at));
        }
        found
    }

    /// Removes the first line and returns it without its terminator, or
    /// `None` (buffer untouched) if no complete line is queued.
    #[doc(alias = "evbuffer_readln")]
    pub fn readln(&mut self, eol: Eol) -> Option<Vec<u8>> {
        let (n, t) = self.find_eol(eol)?;
        let mut line = vec![0; n];
        self.copyout(&mut line);
        self.drain(n + t);
        Some(line)
    }

    /// Like [`readln`](EvBuffer::readln) but lends the line to `f` instead
    /// of allocating it; returns what `f` returns.
    ///
    /// No allocation when the line lies in one chunk (the usual case); a
    /// line spanning chunks is first gathered with
    /// [`pullup`](EvBuffer::pullup).
    pub fn readln_with<R>(&mut self, eol: Eol, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let (n, t) = self.find_eol(eol)?;
        let r = f(self.pullup(n));
        self.drain(n + t);
        Some(r)
    }

    /// Reads once from `fd` (a non-blocking socket or pipe), appending at
    /// most `min(max, read_size)` bytes; returns how many, `Ok(0)` meaning
    /// end of file. `WouldBlock` means nothing was ready.
    ///
    /// The bytes land in the tail chunk's free space and, when that is
    /// small, in one new (pooled) chunk too, with a single `readv`. `max ==
    /// 0` is refused (`InvalidInput`) so that `Ok(0)` always means EOF.
    #[doc(alias = "evbuffer_read")]
    pub fn read_from(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let want = max.min(self.read_size as usize);
        if want == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read of 0 bytes"));
        }
        let tail_free = self.chunks.back().map_or(0, Chunk::free);
        if tail_free >= want.min(TAIL_READ_MIN) {
            let Some(t) = self.chunks.back_mut() else { return Ok(0) };
            let n = want.min(tail_free);
            let r = recv_or_read(fd, &mut t.data[t.end..t.end + n], &mut self.not_socket)?;
            t.end += r;
            self.len += r;
            return Ok(r);
        }
        let mut fresh = new_chunk(want - tail_free, self.read_size as usize);
        let second = (want - tail_free).min(fresh.data.len());
        let res = match self.chunks.back_mut() {
            Some(t) if tail_free > 0 => {
                let end = t.end;
                let mut iov = [IoSliceMut::new(&mut t.data[end..]), IoSliceMut::new(&mut fresh.data[..second])];
                sys::readv(fd, &mut iov)
            }
            _ => recv_or_read(fd, &mut fresh.data[..second], &mut self.not_socket),
        };
        let r = match res {
            Ok(r) => r,
            Err(e) => {
                pool_give(fresh.data);
                return Err(e);
            }
        };
        let into_tail = r.min(tail_free);
        if into_tail > 0
            && let Some(t) = self.chunks.back_mut()
        {
            t.end += into_tail;
        }
        if r > into_tail {
            fresh.end = r - into_tail;
            self.chunks.push_back(fresh);
        } else {
            pool_give(fresh.data);
        }
        self.len += r;
        Ok(r)
    }

    /// Writes as much as `fd` takes of the queued bytes, gathering up to
    /// [`sys::IOV_MAX`] chunks into one `sendmsg(MSG_NOSIGNAL)` (a `writev`
    /// that cannot raise SIGPIPE; plain `writev` for a non-socket such as a
    /// pipe), drains what was written and returns how much. `Ok(0)` only for
    /// an empty buffer; `WouldBlock` when the socket is full.
    #[doc(alias = "evbuffer_write")]
    pub fn write_to(&mut self, fd: RawFd) -> io::Result<usize> {
        self.write_atmost(fd, usize::MAX)
    }

    /// Like [`write_to`](EvBuffer::write_to), writing at most `max` bytes
    /// (for rate limits). `Ok(0)` for an empty buffer or `max == 0`.
    #[doc(alias = "evbuffer_write_atmost")]
    pub fn write_atmost(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let n = match self.chunks.len() {
            0 => return Ok(0),
            1 => self.write_front(fd, max)?,
            2..=8 => self.gather_write::<8>(fd, max)?,
            9..=64 => self.gather_write::<64>(fd, max)?,
            _ => self.gather_write::<{ sys::IOV_MAX }>(fd, max)?,
        };
        self.drain(n);
        Ok(n)
    }

    /// One chunk (the usual output: an answer, or one read's worth of
    /// answers): `send`, which the kernel takes without a `msghdr` and an
    /// iovec array to copy in (`sendmsg`'s import), with `write` for a
    /// non-socket.
    fn write_front(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let Some(c) = self.chunks.front() else { return Ok(0) };
        let s = c.bytes();
        let s = &s[..s.len().min(max)];
        if self.not_socket {
            return sys::write(fd, s);
        }
        match sys::send(fd, s) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                self.not_socket = true;
                sys::write(fd, s)
            }
            r => r,
        }
    }

    /// One gathered write of at most `max` bytes from the first `N` chunks,
    /// with the same socket-or-pipe fallback as [`write_front`](Self::write_front).
    fn gather_write<const N: usize>(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); N];
        let mut k = 0;
        let mut left = max;
        for (slot, c) in iov.iter_mut().zip(self.chunks.iter()) {
            let s = c.bytes();
            let s = &s[..s.len().min(left)];
            *slot = IoSlice::new(s);
            k += 1;
            left -= s.len();
            if left == 0 {
                break;
            }
        }
        if self.not_socket {
            return sys::writev(fd, &iov[..k]);
        }
        match sys::sendv(fd, &iov[..k]) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                self.not_socket = true;
                sys::writev(fd, &iov[..k])
            }
            r => r,
        }
    }

    /// Packs the queued bytes into as few of the buffer's own blocks as
    /// hold them, front to back, and releases the blocks left empty (to the
    /// pool); a last block left partly free is replaced by an exact
    /// allocation. Afterwards the heap the buffer holds is its byte count
    /// plus the chunk array, whatever reads, cuts and partial writes left
    /// behind (a drained prefix of the front block, the free tail of a
    /// block whose partial line was cut off).
    ///
    /// For an output that has stopped growing: the bufferevent calls it
    /// when backpressure pauses reading (SPEC §1 bounds a connection's
    /// memory, not only its byte count). It copies every queued byte once
    /// or twice, so it is not for a buffer that is still being filled.
    pub fn compact(&mut self) {
        if self.len == 0 {
            self.shrink();
            return;
        }
        let chunks = self.chunks.make_contiguous();
        // Slide the front block's bytes to its start, then fill each block
        // in turn (`dst`) from the blocks after it (`src`).
        let slide = |c: &mut Chunk| {
            c.data.copy_within(c.start..c.end, 0);
            c.end -= c.start;
            c.start = 0;
        };
        slide(&mut chunks[0]);
        let mut dst = 0;
        for src in 1..chunks.len() {
            loop {
                if dst == src {
                    slide(&mut chunks[src]);
                    break;
                }
                let (head, tail) = chunks.split_at_mut(src);
                let (d, s) = (&mut head[dst], &mut tail[0]);
                let n = d.free().min(s.len());
                d.data[d.end..d.end + n].copy_from_slice(&s.data[s.start..s.start + n]);
                d.end += n;
                s.start += n;
                if s.len() == 0 {
                    break;
                }
                // `d` is full: the next block is filled next, either one
                // already emptied (it starts over) or `src` itself.
                dst += 1;
                if let Some(c) = head.get_mut(dst) {
                    c.start = 0;
                    c.end = 0;
                }
            }
        }
        for c in self.chunks.drain(dst + 1..) {
            pool_give(c.data);
        }
        if let Some(last) = self.chunks.back_mut()
            && last.free() > 0
        {
            let exact = last.bytes().to_vec();
            let old = std::mem::replace(last, Chunk { start: 0, end: exact.len(), data: exact });
            pool_give(old.data);
        }
        self.chunks.shrink_to_fit();
    }

    /// Compacts the buffer for a connection going idle.
    ///
    /// An empty buffer releases its chunks (to the pool) and its chunk
    /// array: it then holds no heap memory. A buffer holding a few bytes in
    /// big or several chunks copies them into one exact-size allocation and
    /// releases the rest. Does nothing when there is nothing to gain (one
    /// exact chunk already). Cost: one allocation and a copy of `len()`
    /// bytes, so call it when going idle, not after every read.
    #[doc(alias = "evbuffer_compact")]
    pub fn shrink(&mut self) {
        if self.len == 0 {
            for c in self.chunks.drain(..) {
                pool_give(c.data);
            }
            self.chunks = VecDeque::new();
            return;
        }
        let exact = self.chunks.len() == 1
            && self.chunks.capacity() == 1
            && self.chunks.front().is_some_and(|c| c.data.capacity() == self.len);
        if exact {
            return;
        }
        let mut block = Vec::with_capacity(self.len);
        for c in &self.chunks {
            block.extend_from_slice(c.bytes());
        }
        for c in self.chunks.drain(..) {
            pool_give(c.data);
        }
        let mut chunks = VecDeque::with_capacity(1);
        let end = block.len();
        chunks.push_back(Chunk { data: block, start: 0, end });
        self.chunks = chunks;
    }
}

/// One read into `buf`: `recv(2)` on a socket (a little cheaper in the
/// kernel than `read(2)`, which goes through the VFS first), `read(2)` on
/// anything else, which `not_socket` remembers.
fn recv_or_read(fd: RawFd, buf: &mut [u8], not_socket: &mut bool) -> io::Result<usize> {
    if *not_socket {
        return sys::read(fd, buf);
    }
    match sys::recv(fd, buf) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            *not_socket = true;
            sys::read(fd, buf)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests;
