//! The counters of rot13d, in one place: one slot per serving process (or
//! in-process generation), in shared memory mapped by the master before it
//! forks, so the master (and the admin endpoint) can sum them without
//! asking the workers.
//!
//! Slots are handed out when a worker is started and given back when it is
//! reaped ([`SlotTable`], a pure allocator), so two live workers never share
//! one, whatever the generations alive. When every slot is taken the master
//! maps another chunk before it forks; a child sees every chunk mapped
//! before its fork, and only ever touches its own slot. A counter of a
//! reaped worker stays in its slot (the sums never go down); its gauge is
//! zeroed. Gauges are stored as absolute values by their one writer, never
//! incremented and decremented, so none can wrap.
//!
//! A new family is one [`Counter`] variant and one row of [`DESCRIPTIONS`];
//! a labelled family is one variant and one row per label set, the rows of
//! a family next to each other (rendered under one `# HELP`/`# TYPE`).

use super::proxy::{Refusal, Version};
use crate::sys::shm::SharedCounters;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
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
    /// Bytes written to client sockets.
    BytesSent,
    /// Connections closed by the idle timeout.
    IdleClosed,
    /// Connections closed by the write timeout.
    WriteTimeouts,
    /// Connections closed by a reset or error.
    Errors,
    /// Times accepting paused on EMFILE/ENFILE.
    AcceptErrors,
    /// PROXY headers accepted, v1.
    ProxyHeadersV1,
    /// PROXY headers accepted, v2.
    ProxyHeadersV2,
    /// PROXY headers without a client address (v2 LOCAL, v1 UNKNOWN).
    ProxyLocal,
    /// Connections refused in the PROXY header phase, one per [`Refusal`]
    /// in [`Refusal::ALL`] order.
    ProxyRefusedMissing,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedWrongVersion,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedMalformed,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTooLong,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedUnsupportedFamily,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTruncated,
    /// See [`Counter::ProxyRefusedMissing`].
    ProxyRefusedTimeout,
}

impl Counter {
    /// The counter of headers of `version`.
    pub const fn proxy_header(version: Version) -> Counter {
        match version {
            Version::V1 => Counter::ProxyHeadersV1,
            Version::V2 => Counter::ProxyHeadersV2,
        }
    }

    /// The counter of connections refused for `why`.
    pub const fn proxy_refused(why: Refusal) -> Counter {
        match why {
            Refusal::Missing => Counter::ProxyRefusedMissing,
            Refusal::WrongVersion => Counter::ProxyRefusedWrongVersion,
            Refusal::Malformed => Counter::ProxyRefusedMalformed,
            Refusal::TooLong => Counter::ProxyRefusedTooLong,
            Refusal::UnsupportedFamily => Counter::ProxyRefusedUnsupportedFamily,
            Refusal::Truncated => Counter::ProxyRefusedTruncated,
            Refusal::Timeout => Counter::ProxyRefusedTimeout,
        }
    }
}

/// Number of counters per slot.
pub const COUNTERS: usize = DESCRIPTIONS.len();

/// A sample's labels: `(name, value)` pairs, none for most families.
pub type Labels = &'static [(&'static str, &'static str)];

const PROXY_HEADERS: &str = "rot13d_proxy_headers_total";
const PROXY_HEADERS_HELP: &str = "PROXY protocol headers accepted.";
const PROXY_REFUSED: &str = "rot13d_proxy_refused_total";
const PROXY_REFUSED_HELP: &str = "Connections closed unanswered for their PROXY protocol header.";

/// Prometheus name, type, help and labels of each counter, in [`Counter`]
/// order; the rows of a labelled family next to each other. Label values
/// are the names the logs use (`Refusal::as_str`, `Version::as_str`), as a
/// test checks.
pub const DESCRIPTIONS: [(Counter, &str, &str, &str, Labels); 19] = [
    (Counter::Accepted, "rot13d_connections_accepted_total", "counter", "Connections accepted.", &[]),
    (Counter::Open, "rot13d_connections_open", "gauge", "Connections open now.", &[]),
    (Counter::Lines, "rot13d_lines_total", "counter", "Lines (and max_line pieces) answered.", &[]),
    (Counter::BytesReceived, "rot13d_bytes_received_total", "counter", "Bytes received from clients.", &[]),
    (Counter::BytesSent, "rot13d_bytes_sent_total", "counter", "Bytes written to client sockets.", &[]),
    (Counter::IdleClosed, "rot13d_idle_closed_total", "counter", "Connections closed by the idle timeout.", &[]),
    (Counter::WriteTimeouts, "rot13d_write_timeouts_total", "counter", "Connections closed by the write timeout.", &[]),
    (Counter::Errors, "rot13d_connection_errors_total", "counter", "Connections closed by a reset or error.", &[]),
    (Counter::AcceptErrors, "rot13d_accept_errors_total", "counter", "Times accepting paused on a full fd table.", &[]),
    (Counter::ProxyHeadersV1, PROXY_HEADERS, "counter", PROXY_HEADERS_HELP, &[("version", "v1")]),
    (Counter::ProxyHeadersV2, PROXY_HEADERS, "counter", PROXY_HEADERS_HELP, &[("version", "v2")]),
    (
        Counter::ProxyLocal,
        "rot13d_proxy_local_headers_total",
        "counter",
        "PROXY headers without a client address (v2 LOCAL, v1 UNKNOWN): the socket's peer is the client.",
        &[],
    ),
    (Counter::ProxyRefusedMissing, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "missing")]),
    (Counter::ProxyRefusedWrongVersion, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "wrong_version")]),
    (Counter::ProxyRefusedMalformed, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "malformed")]),
    (Counter::ProxyRefusedTooLong, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "too_long")]),
    (
        Counter::ProxyRefusedUnsupportedFamily,
        PROXY_REFUSED,
        "counter",
        PROXY_REFUSED_HELP,
        &[("reason", "unsupported_family")],
    ),
    (Counter::ProxyRefusedTruncated, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "truncated")]),
    (Counter::ProxyRefusedTimeout, PROXY_REFUSED, "counter", PROXY_REFUSED_HELP, &[("reason", "timeout")]),
];

/// Slots per mapped chunk.
pub const CHUNK: usize = 64;

/// Which slots are taken: the lowest free one is handed out first, and the
/// table grows when none is free. Pure, so that its decisions are tested
/// without memory maps or forks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotTable {
    used: Vec<bool>,
}

impl SlotTable {
    /// Takes the lowest free slot, growing the table when none is.
    pub fn take(&mut self) -> usize {
        match self.used.iter().position(|u| !u) {
            Some(i) => {
                self.used[i] = true;
                i
            }
            None => {
                self.used.push(true);
                self.used.len() - 1
            }
        }
    }

    /// Frees slot `i` (its worker was reaped).
    pub fn give_back(&mut self, i: usize) {
        if let Some(u) = self.used.get_mut(i) {
            *u = false;
        }
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }

    /// Slots ever needed at once (the table's size).
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no slot was ever taken.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// Every slot's counters, in chunks of shared memory.
#[derive(Debug)]
pub struct Metrics {
    chunks: RefCell<Vec<Rc<SharedCounters>>>,
    table: RefCell<SlotTable>,
}

/// One serving process's counters: its own slot, written only by it.
#[derive(Clone, Debug)]
pub struct Slot {
    chunk: Rc<SharedCounters>,
    base: usize,
    /// The slot's number (to give it back).
    pub id: usize,
}

impl Slot {
    fn cell(&self, c: Counter) -> &AtomicU64 {
        &self.chunk.slots()[self.base + c as usize]
    }

    /// Adds `n` to counter `c`.
    pub fn add(&self, c: Counter, n: u64) {
        self.cell(c).fetch_add(n, Ordering::Relaxed);
    }

    /// Sets gauge `c` to `v`.
    pub fn set(&self, c: Counter, v: u64) {
        self.cell(c).store(v, Ordering::Relaxed);
    }

    /// Reads counter `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.cell(c).load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// Maps the first chunk.
    pub fn new() -> io::Result<Metrics> {
        let m = Metrics { chunks: RefCell::new(Vec::new()), table: RefCell::new(SlotTable::default()) };
        m.map_chunk()?;
        Ok(m)
    }

    fn map_chunk(&self) -> io::Result<()> {
        let chunk = SharedCounters::new(CHUNK * COUNTERS)?;
        self.chunks.borrow_mut().push(Rc::new(chunk));
        Ok(())
    }

    /// A free slot for a worker about to start (call before its fork),
    /// mapping another chunk when every slot is taken.
    pub fn acquire(&self) -> io::Result<Slot> {
        let id = self.table.borrow_mut().take();
        while self.chunks.borrow().len() * CHUNK <= id {
            if let Err(e) = self.map_chunk() {
                self.table.borrow_mut().give_back(id);
                return Err(e);
            }
        }
        let chunk = self.chunks.borrow()[id / CHUNK].clone();
        let slot = Slot { chunk, base: (id % CHUNK) * COUNTERS, id };
        slot.set(Counter::Open, 0);
        Ok(slot)
    }

    /// Gives a reaped worker's slot back: its gauge goes to zero, its
    /// counters stay in the sums.
    pub fn release(&self, slot: &Slot) {
        slot.set(Counter::Open, 0);
        self.table.borrow_mut().give_back(slot.id);
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.table.borrow().in_use()
    }

    /// The sum over every slot.
    pub fn total(&self, c: Counter) -> u64 {
        let chunks = self.chunks.borrow();
        let cells = chunks.iter().flat_map(|ch| ch.slots().chunks_exact(COUNTERS));
        cells.map(|s| s[c as usize].load(Ordering::Relaxed)).fold(0u64, u64::wrapping_add)
    }

    /// The Prometheus text exposition of the sums: each family's `# HELP`
    /// and `# TYPE` once, then its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = "";
        for (c, name, kind, help, labels) in DESCRIPTIONS {
            if name != family {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                family = name;
            }
            out.push_str(name);
            for (i, (k, v)) in labels.iter().enumerate() {
                out.push_str(&format!("{}{k}=\"{v}\"", if i == 0 { '{' } else { ',' }));
            }
            if !labels.is_empty() {
                out.push('}');
            }
            out.push_str(&format!(" {}\n", self.total(c)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_in_counter_order() {
        for (i, (c, ..)) in DESCRIPTIONS.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn a_family_is_one_run_of_rows_with_one_kind_and_help() {
        for (i, (_, name, kind, help, _)) in DESCRIPTIONS.iter().enumerate() {
            let rows: Vec<usize> = (0..DESCRIPTIONS.len()).filter(|j| DESCRIPTIONS[*j].1 == *name).collect();
            assert_eq!(rows, (rows[0]..rows[0] + rows.len()).collect::<Vec<_>>(), "{name}: rows apart");
            for j in rows {
                assert_eq!((DESCRIPTIONS[j].2, DESCRIPTIONS[j].3), (*kind, *help), "{name}");
                if j != i {
                    assert_ne!(DESCRIPTIONS[j].4, DESCRIPTIONS[i].4, "{name}: two rows with one label set");
                }
            }
        }
    }

    #[test]
    fn proxy_counters_are_labelled_with_the_names_of_the_logs() {
        for why in Refusal::ALL {
            let (_, name, _, _, labels) = DESCRIPTIONS[Counter::proxy_refused(why) as usize];
            assert_eq!((name, labels), (PROXY_REFUSED, &[("reason", why.as_str())][..]));
        }
        for v in [Version::V1, Version::V2] {
            let (_, name, _, _, labels) = DESCRIPTIONS[Counter::proxy_header(v) as usize];
            assert_eq!((name, labels), (PROXY_HEADERS, &[("version", v.as_str())][..]));
        }
    }

    #[test]
    fn labelled_families_render_once_with_every_sample() {
        let m = Metrics::new().expect("maps");
        let s = m.acquire().expect("slot");
        s.add(Counter::proxy_refused(Refusal::TooLong), 2);
        s.add(Counter::ProxyHeadersV2, 5);
        let text = m.render();
        assert_eq!(text.matches("# TYPE rot13d_proxy_refused_total counter\n").count(), 1, "{text}");
        assert!(text.contains("rot13d_proxy_refused_total{reason=\"too_long\"} 2\n"), "{text}");
        assert!(text.contains("rot13d_proxy_refused_total{reason=\"timeout\"} 0\n"), "{text}");
        assert!(text.contains("rot13d_proxy_headers_total{version=\"v2\"} 5\n"), "{text}");
        assert_eq!(text.matches("rot13d_proxy_refused_total{").count(), Refusal::ALL.len());
        // Every sample line is `name[{labels}] value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').expect("a value");
            assert!(value.parse::<u64>().is_ok(), "{l}");
            assert!(!series.contains(' '), "{l}");
        }
    }

    #[test]
    fn slot_table_hands_out_distinct_slots_and_reuses_freed_ones() {
        let mut t = SlotTable::default();
        let a: Vec<usize> = (0..5).map(|_| t.take()).collect();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        t.give_back(1);
        t.give_back(3);
        assert_eq!((t.take(), t.take(), t.take()), (1, 3, 5));
        assert_eq!((t.in_use(), t.len()), (6, 6));
        t.give_back(99);
        assert_eq!(t.in_use(), 6);
    }

    #[test]
    fn more_workers_than_a_chunk_get_their_own_slots() {
        let m = Metrics::new().expect("maps");
        let slots: Vec<Slot> = (0..CHUNK * 2 + 3).map(|_| m.acquire().expect("slot")).collect();
        for (i, s) in slots.iter().enumerate() {
            s.set(Counter::Open, 1);
            s.add(Counter::Lines, i as u64);
        }
        assert_eq!(m.total(Counter::Open), slots.len() as u64, "no two share a slot");
        let lines: u64 = (0..slots.len() as u64).sum();
        assert_eq!(m.total(Counter::Lines), lines);
        m.release(&slots[7]);
        assert_eq!(m.total(Counter::Open), slots.len() as u64 - 1, "a reaped worker's gauge goes");
        assert_eq!(m.total(Counter::Lines), lines, "its counters stay");
        let again = m.acquire().expect("slot");
        assert_eq!((again.id, again.get(Counter::Open)), (7, 0));
    }

    #[test]
    fn sums_and_renders() {
        let m = Metrics::new().expect("maps");
        let (a, b) = (m.acquire().expect("slot"), m.acquire().expect("slot"));
        a.add(Counter::Lines, 5);
        b.add(Counter::Lines, 7);
        b.set(Counter::Open, 1);
        let text = m.render();
        assert!(text.contains("rot13d_lines_total 12\n"));
        assert!(text.contains("# TYPE rot13d_connections_open gauge\nrot13d_connections_open 1\n"));
    }
    // Shared across fork: sys::shm's `shared_with_a_forked_child` (a test
    // thread can only fork through the unsafe `fork_unchecked`, which
    // belongs in sys).
}
