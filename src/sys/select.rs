//! Safe `select(2)` with fd sets sized to the largest fd.
//!
//! glibc's `fd_set` holds `FD_SETSIZE` (1024) bits and its `FD_SET` macro is
//! undefined behaviour past that. The kernel only reads `nfds` bits, in
//! whole `long`s, so a set of `ceil(nfds / 64)` words serves any fd (the way
//! libevent's `select.c` reallocates its sets). [`FdSet`] is that buffer.

use super::cvt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

const WORD_BITS: usize = 64;

/// A bit set of fds, grown on demand, with the kernel's `fd_set` layout
/// (an array of `unsigned long`, bit `fd % 64` of word `fd / 64`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdSet {
    words: Vec<u64>,
}

impl FdSet {
    /// An empty set.
    pub fn new() -> FdSet {
        FdSet { words: Vec::new() }
    }

    /// Makes room for fds below `nfds`.
    pub fn reserve_fds(&mut self, nfds: usize) {
        let need = nfds.div_ceil(WORD_BITS).max(1);
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
    }

    /// Adds `fd`.
    pub fn insert(&mut self, fd: RawFd) {
        let fd = fd as usize;
        self.reserve_fds(fd + 1);
        self.words[fd / WORD_BITS] |= 1 << (fd % WORD_BITS);
    }

    /// Removes `fd`.
    pub fn remove(&mut self, fd: RawFd) {
        let fd = fd as usize;
        if let Some(w) = self.words.get_mut(fd / WORD_BITS) {
            *w &= !(1 << (fd % WORD_BITS));
        }
    }

    /// Whether `fd` is in the set.
    pub fn contains(&self, fd: RawFd) -> bool {
        let fd = fd as usize;
        self.words.get(fd / WORD_BITS).is_some_and(|w| w & (1 << (fd % WORD_BITS)) != 0)
    }

    /// Copies `other` into `self` for fds below `nfds`, reusing the buffer.
    pub fn copy_from(&mut self, other: &FdSet, nfds: usize) {
        let n = nfds.div_ceil(WORD_BITS).max(1);
        self.words.clear();
        self.words.extend(other.words.iter().take(n));
        self.words.resize(n, 0);
    }

    /// Words in use.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn ptr(&mut self, nfds: usize) -> *mut libc::fd_set {
        self.reserve_fds(nfds);
        self.words.as_mut_ptr().cast()
    }
}

/// `select(nfds, read, write, NULL, timeout)`; EINTR gives `Ok(0)`.
///
/// Both sets are grown to hold `nfds` bits first, so the kernel never reads
/// or writes past them.
pub fn select(nfds: usize, read: &mut FdSet, write: &mut FdSet, timeout: Option<Duration>) -> io::Result<usize> {
    let mut tv = timeout.map(|t| libc::timeval {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    });
    let tvp = tv.as_mut().map_or(std::ptr::null_mut(), |t| t as *mut libc::timeval);
    let rp = read.ptr(nfds);
    let wp = write.ptr(nfds);
    // SAFETY: both set buffers hold at least `nfds` bits (ptr() grew them),
    // and `tvp` is null or points at a live timeval.
    match cvt(unsafe { libc::select(nfds as libc::c_int, rp, wp, std::ptr::null_mut(), tvp) }) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_past_fd_setsize() {
        let mut s = FdSet::new();
        s.insert(3);
        s.insert(1500);
        assert!(s.contains(3) && s.contains(1500) && !s.contains(4));
        s.remove(1500);
        assert!(!s.contains(1500));
        assert_eq!(s.words().len(), 1500 / 64 + 1);
    }
}
