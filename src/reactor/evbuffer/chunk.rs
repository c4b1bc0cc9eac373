//! The chunks of an [`EvBuffer`](super::EvBuffer) and the per-thread pool
//! that recycles their blocks (see the module documentation of `evbuffer`).

use std::cell::RefCell;

/// Most chunks the per-thread pool keeps.
pub const POOL_CHUNKS: usize = 8;

/// Smallest block the pool keeps (smaller ones go back to the allocator).
const POOL_MIN: usize = 4 * 1024;

/// Largest block the pool keeps.
const POOL_MAX: usize = 256 * 1024;

thread_local! {
    /// The per-thread free list of recycled blocks (see the module doc).
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes a pooled block of at least `min` bytes, if the pool has one.
pub(super) fn pool_take(min: usize) -> Option<Vec<u8>> {
    POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let i = pool.iter().rposition(|b| b.len() >= min)?;
        Some(pool.swap_remove(i))
    })
    .ok()
    .flatten()
}

/// Gives a block back to the pool, or to the allocator if it does not fit.
pub(super) fn pool_give(block: Vec<u8>) {
    if block.len() < POOL_MIN || block.len() > POOL_MAX || block.capacity() != block.len() {
        return;
    }
    // During thread teardown the pool may be gone: the block is then freed.
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut()
            && pool.len() < POOL_CHUNKS
        {
            pool.push(block);
        }
    });
}

/// Frees every block of this thread's chunk pool.
pub fn trim_pool() {
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            *pool = Vec::new();
        }
    });
}

/// Number of blocks in this thread's chunk pool.
pub fn pooled_chunks() -> usize {
    POOL.try_with(|pool| pool.try_borrow().map_or(0, |p| p.len())).unwrap_or(0)
}

/// A block plus the window of it that holds queued bytes.
pub(super) struct Chunk {
    /// The block, initialised over its whole `len()` (which is the usable
    /// size; spare `capacity` beyond it is never used).
    pub data: Vec<u8>,
    /// First queued byte.
    pub start: usize,
    /// One past the last queued byte; `data[end..]` is free space.
    pub end: usize,
}

impl Chunk {
    /// A chunk over `block` with no queued bytes.
    pub fn empty(data: Vec<u8>) -> Chunk {
        Chunk { data, start: 0, end: 0 }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn free(&self) -> usize {
        self.data.len() - self.end
    }

    /// At least half of the block holds queued bytes: worth moving whole
    /// rather than copying its bytes.
    pub fn dense(&self) -> bool {
        2 * self.len() >= self.data.len()
    }

    /// Copies as much of `src` as fits into the free space; returns how much.
    pub fn append(&mut self, src: &[u8]) -> usize {
        let n = self.free().min(src.len());
        self.data[self.end..self.end + n].copy_from_slice(&src[..n]);
        self.end += n;
        n
    }
}

/// A new empty chunk of at least `min` bytes: pooled if possible, else a
/// fresh zeroed block of `max(min, fresh)` bytes.
pub(super) fn new_chunk(min: usize, fresh: usize) -> Chunk {
    match pool_take(min) {
        Some(block) => Chunk::empty(block),
        None => Chunk::empty(vec![0; min.max(fresh)]),
    }
}
