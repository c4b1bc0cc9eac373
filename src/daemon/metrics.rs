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
//! A new family is one [`Counter`] variant and one row of [`DESCRIPTIONS`]
//! per series: a row's name may carry labels (`name{lane="bulk"}`); rows
//! of one family sit together and share its `# HELP` and `# TYPE`. A
//! [`Kind::Histogram`] series takes [`HISTOGRAM_CELLS`] cells of the slot
//! (a count per bucket of [`BUCKETS_NS`], then the sum in nanoseconds); the
//! cell offsets are computed from the table ([`OFFSETS`]).
//!
//! Every cell has one writer (the process owning the slot), so an update is
//! a relaxed load and store, not a locked read-modify-write: the data path
//! updates several counters per callback.

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
    /// Read callbacks of interactive connections.
    CallbacksInteractive,
    /// Read callbacks of bulk connections.
    CallbacksBulk,
    /// Connections that moved to the interactive lane.
    MovesToInteractive,
    /// Connections that moved to the bulk lane.
    MovesToBulk,
    /// Dispatch delay of interactive connections (a histogram).
    DelayInteractive,
    /// Dispatch delay of bulk connections (a histogram).
    DelayBulk,
}

/// What a series is, as Prometheus says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value stored as it is.
    Gauge,
    /// Durations counted per bucket of [`BUCKETS_NS`], with their sum.
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// Cells of a slot one series of this kind takes.
    const fn cells(self) -> usize {
        match self {
            Kind::Histogram => HISTOGRAM_CELLS,
            Kind::Counter | Kind::Gauge => 1,
        }
    }
}

/// Upper bounds (`le`) of the histogram buckets in nanoseconds: 1, 1.5, 2,
/// 3, 5 and 7 per decade from 1 µs to 1 s, so that neighbours differ by at
/// most 5/3 (a p99 interpolated within one is closer); above 1 s, `+Inf`.
pub const BUCKETS_NS: [u64; 37] = {
    let steps = [10, 15, 20, 30, 50, 70];
    let mut b = [0u64; 37];
    let (mut i, mut decade) = (0, 100u64);
    while i < 36 {
        b[i] = steps[i % 6] * decade;
        i += 1;
        if i % 6 == 0 {
            decade *= 10;
        }
    }
    b[36] = 1_000_000_000;
    b
};

/// Cells of a histogram: the buckets, `+Inf`, the sum.
pub const HISTOGRAM_CELLS: usize = BUCKETS_NS.len() + 2;

/// Help of the lane families (one text per family, its rows share it).
const CALLBACKS_HELP: &str = "Read callbacks of connections, by lane (with [lanes] enabled = false \
    connections are still classed by their traffic, but every lane runs at one priority).";
const MOVES_HELP: &str = "Connections moved to a lane by their traffic (bulk_after_bytes within \
    bulk_window_ms to bulk, quiet_ms below it back), by the lane moved to.";
const DELAY_HELP: &str = "Seconds from a connection's readiness (the backend's wait returning with \
    it ready) to its read callback, by lane.";

/// Prometheus name (with labels), type and help of each series, in
/// [`Counter`] order.
pub const DESCRIPTIONS: [(Counter, &str, Kind, &str); 15] = [
    (Counter::Accepted, "rot13d_connections_accepted_total", Kind::Counter, "Connections accepted."),
    (Counter::Open, "rot13d_connections_open", Kind::Gauge, "Connections open now."),
    (Counter::Lines, "rot13d_lines_total", Kind::Counter, "Lines (and max_line pieces) answered."),
    (Counter::BytesReceived, "rot13d_bytes_received_total", Kind::Counter, "Bytes received from clients."),
    (Counter::BytesSent, "rot13d_bytes_sent_total", Kind::Counter, "Bytes written to client sockets."),
    (Counter::IdleClosed, "rot13d_idle_closed_total", Kind::Counter, "Connections closed by the idle timeout."),
    (Counter::WriteTimeouts, "rot13d_write_timeouts_total", Kind::Counter, "Connections closed by the write timeout."),
    (Counter::Errors, "rot13d_connection_errors_total", Kind::Counter, "Connections closed by a reset or error."),
    (Counter::AcceptErrors, "rot13d_accept_errors_total", Kind::Counter, "Times accepting paused on a full fd table."),
    (Counter::CallbacksInteractive, "rot13d_lane_callbacks_total{lane=\"interactive\"}", Kind::Counter, CALLBACKS_HELP),
    (Counter::CallbacksBulk, "rot13d_lane_callbacks_total{lane=\"bulk\"}", Kind::Counter, CALLBACKS_HELP),
    (Counter::MovesToInteractive, "rot13d_lane_moves_total{lane=\"interactive\"}", Kind::Counter, MOVES_HELP),
    (Counter::MovesToBulk, "rot13d_lane_moves_total{lane=\"bulk\"}", Kind::Counter, MOVES_HELP),
    (Counter::DelayInteractive, "rot13d_dispatch_delay_seconds{lane=\"interactive\"}", Kind::Histogram, DELAY_HELP),
    (Counter::DelayBulk, "rot13d_dispatch_delay_seconds{lane=\"bulk\"}", Kind::Histogram, DELAY_HELP),
];

/// Where each series starts in a slot, in [`Counter`] order.
pub const OFFSETS: [usize; DESCRIPTIONS.len()] = {
    let mut o = [0; DESCRIPTIONS.len()];
    let (mut i, mut at) = (0, 0);
    while i < DESCRIPTIONS.len() {
        o[i] = at;
        at += DESCRIPTIONS[i].2.cells();
        i += 1;
    }
    o
};

/// Cells per slot.
pub const COUNTERS: usize = {
    let last = DESCRIPTIONS.len() - 1;
    OFFSETS[last] + DESCRIPTIONS[last].2.cells()
};

/// The bucket of a duration of `ns` nanoseconds (`BUCKETS_NS.len()` is
/// `+Inf`).
pub fn bucket(ns: u64) -> usize {
    BUCKETS_NS.partition_point(|&b| b < ns)
}

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
        self.cell_at(c, 0)
    }

    fn cell_at(&self, c: Counter, i: usize) -> &AtomicU64 {
        &self.chunk.slots()[self.base + OFFSETS[c as usize] + i]
    }

    /// Adds `n` to counter `c`. The slot's process is its one writer: a
    /// load and a store, no locked instruction.
    pub fn add(&self, c: Counter, n: u64) {
        bump(self.cell(c), n);
    }

    /// Counts a duration of `ns` nanoseconds in histogram `c`.
    pub fn observe(&self, c: Counter, ns: u64) {
        bump(self.cell_at(c, bucket(ns)), 1);
        bump(self.cell_at(c, BUCKETS_NS.len() + 1), ns);
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

/// `cell += n` by its one writer (readers in other processes see either
/// value).
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
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

    /// The sum over every slot (of a histogram: its count).
    pub fn total(&self, c: Counter) -> u64 {
        match DESCRIPTIONS[c as usize].2 {
            Kind::Histogram => (0..=BUCKETS_NS.len()).map(|i| self.cell_total(c, i)).fold(0, u64::wrapping_add),
            Kind::Counter | Kind::Gauge => self.cell_total(c, 0),
        }
    }

    /// Cell `i` of series `c`, summed over every slot.
    fn cell_total(&self, c: Counter, i: usize) -> u64 {
        let chunks = self.chunks.borrow();
        let cells = chunks.iter().flat_map(|ch| ch.slots().chunks_exact(COUNTERS));
        cells.map(|s| s[OFFSETS[c as usize] + i].load(Ordering::Relaxed)).fold(0u64, u64::wrapping_add)
    }

    /// The Prometheus text exposition of the sums.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut family = "";
        for (c, series, kind, help) in DESCRIPTIONS {
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            if name != family {
                family = name;
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {}\n", kind.as_str());
            }
            if kind != Kind::Histogram {
                let _ = writeln!(out, "{series} {}", self.total(c));
                continue;
            }
            let with = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
                (true, _) => format!("{{{extra}}}").replace("{}", ""),
                (false, true) => format!("{{{labels}}}"),
                (false, false) => format!("{{{labels},{extra}}}"),
            };
            let mut cumulative = 0u64;
            for (i, le) in BUCKETS_NS.iter().enumerate() {
                cumulative = cumulative.wrapping_add(self.cell_total(c, i));
                let le = format!("le=\"{}\"", *le as f64 / 1e9);
                let _ = writeln!(out, "{name}_bucket{} {cumulative}", with(&le));
            }
            cumulative = cumulative.wrapping_add(self.cell_total(c, BUCKETS_NS.len()));
            let _ = writeln!(out, "{name}_bucket{} {cumulative}", with("le=\"+Inf\""));
            let sum = self.cell_total(c, BUCKETS_NS.len() + 1) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{} {sum}", with(""));
            let _ = writeln!(out, "{name}_count{} {cumulative}", with(""));
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

    #[test]
    fn labeled_series_share_their_family_and_histograms_are_cumulative() {
        let m = Metrics::new().expect("maps");
        let (a, b) = (m.acquire().expect("slot"), m.acquire().expect("slot"));
        a.add(Counter::MovesToBulk, 2);
        b.add(Counter::MovesToBulk, 1);
        for ns in [500, 1_000, 1_001, 40_000, 2_000_000_000] {
            a.observe(Counter::DelayBulk, ns);
        }
        b.observe(Counter::DelayInteractive, 3_000);
        let text = m.render();
        assert_eq!(text.matches("# TYPE rot13d_lane_moves_total counter\n").count(), 1, "{text}");
        assert!(text.contains("rot13d_lane_moves_total{lane=\"bulk\"} 3\n"), "{text}");
        assert!(text.contains("rot13d_lane_moves_total{lane=\"interactive\"} 0\n"), "{text}");
        assert_eq!(text.matches("# TYPE rot13d_dispatch_delay_seconds histogram\n").count(), 1, "{text}");
        let bulk = |le: &str| format!("rot13d_dispatch_delay_seconds_bucket{{lane=\"bulk\",le=\"{le}\"}}");
        assert!(text.contains(&format!("{} 2\n", bulk("0.000001"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", bulk("0.0000015"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", bulk("0.00005"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", bulk("1"))), "{text}");
        assert!(text.contains(&format!("{} 5\n", bulk("+Inf"))), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_count{lane=\"bulk\"} 5\n"), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_sum{lane=\"bulk\"} 2.000042501\n"), "{text}");
        assert!(text.contains("rot13d_dispatch_delay_seconds_count{lane=\"interactive\"} 1\n"), "{text}");
        assert_eq!(m.total(Counter::DelayBulk), 5);
        // Buckets: 1 µs .. 1 s, increasing, at most 5/3 apart.
        assert_eq!((BUCKETS_NS[0], BUCKETS_NS[BUCKETS_NS.len() - 1]), (1_000, 1_000_000_000));
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1] && w[1] * 3 <= w[0] * 5), "{BUCKETS_NS:?}");
        assert_eq!((bucket(0), bucket(1_000), bucket(1_001), bucket(u64::MAX)), (0, 0, 1, BUCKETS_NS.len()));
    }

    // Shared across fork: sys::shm's `shared_with_a_forked_child` (a test
    // thread can only fork through the unsafe `fork_unchecked`, which
    // belongs in sys).
}
