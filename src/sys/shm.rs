//! Anonymous shared memory mapped before fork: the per-worker counters live
//! here so the master can sum them without asking the workers.

use super::cvt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// A `MAP_SHARED | MAP_ANONYMOUS` region of `AtomicU64` slots, shared with
/// every child forked after it was created.
#[derive(Debug)]
pub struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the region holds only atomics, which are Sync; the mapping lives
// until drop.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: every access goes through AtomicU64.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Maps `len` zeroed counters.
    pub fn new(len: usize) -> io::Result<SharedCounters> {
        let bytes = (len.max(1)) * std::mem::size_of::<AtomicU64>();
        // SAFETY: an anonymous shared mapping with no address hint; the
        // result is checked against MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedCounters { ptr, len: len.max(1) })
    }

    /// The counters.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `len` zero-initialised AtomicU64 (all
        // zero bits is a valid AtomicU64) and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<AtomicU64>();
        // SAFETY: ptr/bytes are exactly the mapping created in new().
        let _ = cvt(unsafe { libc::munmap(self.ptr.as_ptr().cast(), bytes) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::process::{self, Fork};
    use std::sync::atomic::Ordering;

    #[test]
    fn shared_with_a_forked_child() {
        let c = SharedCounters::new(2).expect("map");
        // SAFETY: the child only stores to the mapping and leaves through
        // `_exit`; it touches nothing the test harness's threads hold.
        match unsafe { process::fork_unchecked() }.expect("fork") {
            Fork::Child => {
                c.slots()[1].store(42, Ordering::SeqCst);
                process::exit_now(0);
            }
            Fork::Parent(pid) => {
                process::wait_pid(pid).expect("wait");
                assert_eq!(c.slots()[1].load(Ordering::SeqCst), 42);
            }
        }
    }
}
