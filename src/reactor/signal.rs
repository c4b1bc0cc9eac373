//! Signal events: a self-pipe per base whose read end is an internal read
//! event of that base. `sys::signal`'s handler writes the signal number to
//! every pipe that watches it, so several bases can watch one signal.

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The pipe of one base and which signals it watches.
#[derive(Debug)]
pub(crate) struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Per signal number: the event slots watching it.
    pub events: Vec<Vec<u32>>,
}

impl SignalPipe {
    pub fn new() -> io::Result<SignalPipe> {
        let (read, write) = sys::pipe()?;
        Ok(SignalPipe { read, write, events: vec![Vec::new(); sys::signal::NSIG] })
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Adds slot `idx` as a watcher of `sig`, installing the handler for the
    /// first one.
    pub fn add(&mut self, sig: i32, idx: u32) -> io::Result<()> {
        let list = self
            .events
            .get_mut(sig as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad signal {sig}")))?;
        if list.is_empty() {
            sys::signal::watch(sig, self.write.as_raw_fd())?;
        }
        let list = &mut self.events[sig as usize];
        list.push(idx);
        Ok(())
    }

    /// Removes slot `idx`; the old disposition returns with the last one.
    pub fn del(&mut self, sig: i32, idx: u32) -> io::Result<()> {
        let Some(list) = self.events.get_mut(sig as usize) else { return Ok(()) };
        list.retain(|&i| i != idx);
        if list.is_empty() {
            sys::signal::unwatch(sig, self.write.as_raw_fd())?;
        }
        Ok(())
    }

    /// Reads every pending signal number; counts per signal in `counts`.
    pub fn drain(&self, counts: &mut [u32; sys::signal::NSIG]) {
        let mut buf = [0u8; 256];
        while let Ok(n) = sys::read(self.read.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if let Some(c) = counts.get_mut(b as usize) {
                    *c += 1;
                }
            }
            if n < buf.len() {
                break;
            }
        }
    }

    /// After fork: a new pipe, the same watchers, re-registered with the
    /// handler (the inherited pipe is shared with the parent).
    pub fn reinit(&mut self) -> io::Result<()> {
        let (read, write) = sys::pipe()?;
        let old_write = self.write.as_raw_fd();
        for (sig, list) in self.events.iter().enumerate() {
            if !list.is_empty() {
                sys::signal::watch(sig as i32, write.as_raw_fd())?;
            }
        }
        sys::signal::forget_fd(old_write);
        self.read = read;
        self.write = write;
        Ok(())
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (sig, list) in self.events.iter().enumerate() {
            if !list.is_empty() {
                let _ = sys::signal::unwatch(sig as i32, self.write.as_raw_fd());
            }
        }
        sys::signal::forget_fd(self.write.as_raw_fd());
    }
}
