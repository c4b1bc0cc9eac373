//! Signal events: a self-pipe per base whose read end is an internal read
//! event of that base. `sys::signal`'s handler writes the signal number to
//! every pipe of this process that watches it, so several bases can watch
//! one signal.
//!
//! Delivery: when the pipe is readable the base drains it
//! ([`Signals::drain`]), counting deliveries per signal, and activates each
//! watching event once; its callback then runs once per delivery since it
//! last ran (libevent's `ev_ncalls`), counted here until it runs
//! ([`Signals::take_calls`]) or is deleted ([`Signals::forget_calls`]).

use crate::sys;
use crate::sys::signal::{NSIG, SignalTarget};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The pipe of one base, which signals it watches, and the deliveries its
/// activated signal events owe.
#[derive(Debug)]
pub(crate) struct Signals {
    read: OwnedFd,
    target: SignalTarget,
    /// Per signal number: the event slots watching it.
    events: Vec<Vec<u32>>,
    /// Activated signal events with how many deliveries they owe.
    calls: Vec<(u32, u32)>,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        let (read, write) = sys::pipe()?;
        Ok(Signals { read, target: SignalTarget::new(write), events: vec![Vec::new(); NSIG], calls: Vec::new() })
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
            self.target.watch(sig)?;
        }
        self.events[sig as usize].push(idx);
        Ok(())
    }

    /// Removes slot `idx`; the old disposition returns with the last one.
    pub fn del(&mut self, sig: i32, idx: u32) -> io::Result<()> {
        let Some(list) = self.events.get_mut(sig as usize) else { return Ok(()) };
        list.retain(|&i| i != idx);
        if list.is_empty() {
            self.target.unwatch(sig)?;
        }
        Ok(())
    }

    /// Reads every pending signal number; returns the events to activate,
    /// each once, having added the deliveries to what they owe.
    pub fn drain(&mut self) -> Vec<u32> {
        let mut counts = [0u32; NSIG];
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
        let mut fire = Vec::new();
        for (sig, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            for &idx in &self.events[sig] {
                match self.calls.iter_mut().find(|(i, _)| *i == idx) {
                    Some((_, c)) => *c = c.saturating_add(n),
                    None => self.calls.push((idx, n)),
                }
                fire.push(idx);
            }
        }
        fire
    }

    /// The deliveries event `idx` owes, now that it runs (at least one).
    pub fn take_calls(&mut self, idx: u32) -> u32 {
        match self.calls.iter().position(|(i, _)| *i == idx) {
            Some(p) => self.calls.swap_remove(p).1.max(1),
            None => 1,
        }
    }

    /// Event `idx` left the active queue without running: it owes nothing.
    pub fn forget_calls(&mut self, idx: u32) {
        if !self.calls.is_empty() {
            self.calls.retain(|(i, _)| *i != idx);
        }
    }

    /// After fork: a new pipe, the same watchers, registered with the
    /// handler (the inherited pipe is shared with the parent; dropping its
    /// target here closes only the child's copy).
    pub fn reinit(&mut self) -> io::Result<()> {
        let (read, write) = sys::pipe()?;
        let target = SignalTarget::new(write);
        for (sig, list) in self.events.iter().enumerate() {
            if !list.is_empty() {
                target.watch(sig as i32)?;
            }
        }
        self.read = read;
        self.target = target;
        Ok(())
    }
}
