//! The counters of rot13d, in one place: per serving process, in shared
//! memory mapped by the master before it forks, so the master (and the
//! admin endpoint) can sum them without asking the workers.

use crate::sys::shm::SharedCounters;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of a serving process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Connections accepted.
    Accepted = 0,
    /// Connections open now (a gauge).
    Open,
    /// Lines (and max_line pieces) answered.
    Lines,
    /// Bytes received from clients.
    BytesReceived,
    /// Bytes queued to clients.
    BytesSent,
    /// Connections closed by the idle timeout.
    IdleClosed,
    /// Connections closed by the write timeout.
    WriteTimeouts,
    /// Connections closed by a reset or error.
    Errors,
    /// Times accepting paused on EMFILE/ENFILE.
    AcceptErrors,
}

/// Number of counters per process.
pub const COUNTERS: usize = 9;

/// Prometheus name, type and help of each counter.
pub const DESCRIPTIONS: [(Counter, &str, &str, &str); COUNTERS] = [
    (Counter::Accepted, "rot13d_connections_accepted_total", "counter", "Connections accepted."),
    (Counter::Open, "rot13d_connections_open", "gauge", "Connections open now."),
    (Counter::Lines, "rot13d_lines_total", "counter", "Lines (and max_line pieces) answered."),
    (Counter::BytesReceived, "rot13d_bytes_received_total", "counter", "Bytes received from clients."),
    (Counter::BytesSent, "rot13d_bytes_sent_total", "counter", "Bytes queued to clients."),
    (Counter::IdleClosed, "rot13d_idle_closed_total", "counter", "Connections closed by the idle timeout."),
    (Counter::WriteTimeouts, "rot13d_write_timeouts_total", "counter", "Connections closed by the write timeout."),
    (Counter::Errors, "rot13d_connection_errors_total", "counter", "Connections closed by a reset or error."),
    (Counter::AcceptErrors, "rot13d_accept_errors_total", "counter", "Times accepting paused on a full fd table."),
];

/// The counter table of every serving-process slot.
#[derive(Debug)]
pub struct Metrics {
    shm: SharedCounters,
    slots: usize,
}

impl Metrics {
    /// Maps room for `slots` serving processes (before fork).
    pub fn new(slots: usize) -> io::Result<Metrics> {
        let slots = slots.max(1);
        Ok(Metrics { shm: SharedCounters::new(slots * COUNTERS)?, slots })
    }

    /// Number of process slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn cell(&self, slot: usize, c: Counter) -> &AtomicU64 {
        &self.shm.slots()[(slot % self.slots) * COUNTERS + c as usize]
    }

    /// Adds `n` to counter `c` of `slot`.
    pub fn add(&self, slot: usize, c: Counter, n: u64) {
        self.cell(slot, c).fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` (gauges).
    pub fn sub(&self, slot: usize, c: Counter, n: u64) {
        self.cell(slot, c).fetch_sub(n, Ordering::Relaxed);
    }

    /// Sets a gauge (a worker slot that is reused starts at zero open).
    pub fn set(&self, slot: usize, c: Counter, v: u64) {
        self.cell(slot, c).store(v, Ordering::Relaxed);
    }

    /// Reads a counter of one slot.
    pub fn get(&self, slot: usize, c: Counter) -> u64 {
        self.cell(slot, c).load(Ordering::Relaxed)
    }

    /// The sum over every slot.
    pub fn total(&self, c: Counter) -> u64 {
        (0..self.slots).map(|s| self.get(s, c)).sum()
    }

    /// The Prometheus text exposition of the sums.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (c, name, kind, help) in DESCRIPTIONS {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n", self.total(c)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_slots_and_renders() {
        let m = Metrics::new(3).unwrap();
        m.add(0, Counter::Lines, 5);
        m.add(2, Counter::Lines, 7);
        m.add(1, Counter::Open, 2);
        m.sub(1, Counter::Open, 1);
        assert_eq!(m.total(Counter::Lines), 12);
        assert_eq!(m.total(Counter::Open), 1);
        let text = m.render();
        assert!(text.contains("rot13d_lines_total 12\n"));
        assert!(text.contains("# TYPE rot13d_connections_open gauge\nrot13d_connections_open 1\n"));
    }
}
