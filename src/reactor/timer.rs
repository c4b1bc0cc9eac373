//! Timeouts: a min-heap of deadlines (libevent `minheap-internal.h`) plus
//! common-timeout queues.
//!
//! A common timeout (libevent's `event_base_init_common_timeout`) is a
//! duration shared by many events, such as one idle timeout for every
//! connection. Events added with it go to the tail of a FIFO queue: since the
//! clock never goes back, `now + d` is never earlier than the tail's deadline,
//! so the queue stays sorted, and re-arming an event is an O(1) unlink and
//! push instead of an O(log n) heap operation. The loop looks at the heap top
//! and each queue head for the next deadline.
//!
//! Times are nanoseconds of the base's monotonic clock.

const NONE: u32 = u32::MAX;
const NO_QUEUE: u16 = u16::MAX;
/// At most this many distinct common timeouts (libevent allows 256).
pub const MAX_COMMON: usize = 256;

#[derive(Clone, Copy, Debug)]
struct Node {
    deadline: u64,
    /// Heap position, or NONE.
    heap: u32,
    /// Common queue, or NO_QUEUE.
    queue: u16,
    prev: u32,
    next: u32,
}

const EMPTY: Node = Node { deadline: 0, heap: NONE, queue: NO_QUEUE, prev: NONE, next: NONE };

#[derive(Clone, Copy, Debug)]
struct Queue {
    dur: u64,
    head: u32,
    tail: u32,
}

/// The timers of one base, indexed by event slot.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: Vec<(u64, u32)>,
    nodes: Vec<Node>,
    queues: Vec<Queue>,
}

impl Timers {
    /// Registers `dur` as a common timeout; false when the table is full.
    pub fn add_common(&mut self, dur: u64) -> bool {
        if self.queues.iter().any(|q| q.dur == dur) {
            return true;
        }
        if self.queues.len() >= MAX_COMMON {
            return false;
        }
        self.queues.push(Queue { dur, head: NONE, tail: NONE });
        true
    }

    /// Whether `dur` is a registered common timeout.
    pub fn is_common(&self, dur: u64) -> bool {
        self.queues.iter().any(|q| q.dur == dur)
    }

    fn node(&mut self, idx: u32) -> &mut Node {
        let i = idx as usize;
        if self.nodes.len() <= i {
            self.nodes.resize(i + 1, EMPTY);
        }
        &mut self.nodes[i]
    }

    /// Whether `idx` has a pending timeout.
    pub fn is_scheduled(&self, idx: u32) -> bool {
        self.nodes.get(idx as usize).is_some_and(|n| n.heap != NONE || n.queue != NO_QUEUE)
    }

    /// The deadline of `idx`, if scheduled.
    pub fn deadline(&self, idx: u32) -> Option<u64> {
        if self.is_scheduled(idx) { Some(self.nodes[idx as usize].deadline) } else { None }
    }

    /// Arms (or re-arms) `idx` to expire at `now + dur`.
    pub fn schedule(&mut self, idx: u32, now: u64, dur: u64) {
        self.schedule_at(idx, now.saturating_add(dur), dur);
    }

    /// The deadline `idx` had when last armed (still known after it
    /// expired), for re-arming a periodic timer without drift.
    pub fn last_deadline(&self, idx: u32) -> Option<u64> {
        self.nodes.get(idx as usize).map(|n| n.deadline)
    }

    /// Arms `idx` to expire at `deadline`; `dur` picks a common-timeout
    /// queue when the deadline keeps that queue sorted, else the heap.
    pub fn schedule_at(&mut self, idx: u32, deadline: u64, dur: u64) {
        // Re-armed to the deadline it already has: in the heap its place is
        // still right (equal deadlines have no order there); in a queue only
        // if it is the tail already, as a re-arm moves it behind every
        // other (events of one common timeout fire in re-arm order, as in
        // libevent). The common case on a busy connection: the base's clock
        // is read once per turn and the coarse clock ticks every 1 to 4 ms,
        // so a read event re-armed at each wake-up asks for the same
        // deadline again for several turns in a row.
        let Some(&n) = self.nodes.get(idx as usize) else {
            return self.insert(idx, deadline, dur);
        };
        if n.deadline == deadline && n.heap != NONE {
            return;
        }
        if let Some(q) = self.queues.get(n.queue as usize)
            && q.dur == dur
        {
            // Re-armed within its queue (a connection's idle timeout at
            // each read): the tail's deadline is never later than
            // `now + dur`, so the move keeps the queue sorted. An unlink and
            // a push, without the search for the queue or the general
            // cancel and insert (~60 instructions of every request of a
            // busy connection: BENCHMARKS.md, closed-loop latency).
            let tail = q.tail;
            if tail == idx {
                // Already last: it stays, if its new deadline is not
                // earlier than the one before it.
                if n.prev == NONE || self.nodes[n.prev as usize].deadline <= deadline {
                    self.nodes[idx as usize].deadline = deadline;
                    return;
                }
            } else if self.nodes[tail as usize].deadline <= deadline {
                let qi = n.queue as usize;
                if n.prev == NONE {
                    self.queues[qi].head = n.next;
                } else {
                    self.nodes[n.prev as usize].next = n.next;
                }
                // Not the tail: it has a next.
                self.nodes[n.next as usize].prev = n.prev;
                self.nodes[tail as usize].next = idx;
                let m = &mut self.nodes[idx as usize];
                m.deadline = deadline;
                m.prev = tail;
                m.next = NONE;
                self.queues[qi].tail = idx;
                return;
            }
        }
        self.cancel(idx);
        self.insert(idx, deadline, dur);
    }

    /// Arms `idx`, not armed now, to expire at `deadline` (see
    /// [`schedule_at`](Self::schedule_at)).
    fn insert(&mut self, idx: u32, deadline: u64, dur: u64) {
        if let Some(q) = self.queues.iter().position(|q| q.dur == dur) {
            let tail = self.queues[q].tail;
            if tail == NONE || self.nodes[tail as usize].deadline <= deadline {
                let n = self.node(idx);
                n.deadline = deadline;
                n.queue = q as u16;
                n.prev = tail;
                n.next = NONE;
                if tail == NONE {
                    self.queues[q].head = idx;
                } else {
                    self.nodes[tail as usize].next = idx;
                }
                self.queues[q].tail = idx;
                return;
            }
        }
        self.node(idx).deadline = deadline;
        let pos = self.heap.len();
        self.heap.push((deadline, idx));
        self.nodes[idx as usize].heap = pos as u32;
        self.sift_up(pos);
    }

    /// Disarms `idx` (no-op when not armed).
    pub fn cancel(&mut self, idx: u32) {
        let Some(n) = self.nodes.get(idx as usize).copied() else { return };
        if n.queue != NO_QUEUE {
            let q = &mut self.queues[n.queue as usize];
            if n.prev == NONE {
                q.head = n.next;
            } else {
                self.nodes[n.prev as usize].next = n.next;
            }
            if n.next == NONE {
                self.queues[n.queue as usize].tail = n.prev;
            } else {
                self.nodes[n.next as usize].prev = n.prev;
            }
            let m = &mut self.nodes[idx as usize];
            m.queue = NO_QUEUE;
            m.prev = NONE;
            m.next = NONE;
        } else if n.heap != NONE {
            self.heap_remove(n.heap as usize);
        }
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut best = self.heap.first().map(|e| e.0);
        for q in &self.queues {
            if q.head != NONE {
                let d = self.nodes[q.head as usize].deadline;
                best = Some(best.map_or(d, |b| b.min(d)));
            }
        }
        best
    }

    /// Disarms and returns (in `out`) every timer due at `now`.
    pub fn pop_expired(&mut self, now: u64, out: &mut Vec<u32>) {
        // In deadline order across the heap and every queue (libevent keeps
        // each common queue's head in its one heap): timers that expire in
        // the same turn, after a late wake-up, run as they were due.
        loop {
            let mut next = match self.heap.first() {
                Some(&(d, _)) if d <= now => Some((d, None)),
                _ => None,
            };
            for (q, queue) in self.queues.iter().enumerate() {
                if queue.head != NONE {
                    let d = self.nodes[queue.head as usize].deadline;
                    if d <= now && next.is_none_or(|(best, _)| d < best) {
                        next = Some((d, Some(q)));
                    }
                }
            }
            match next {
                None => return,
                Some((_, None)) => {
                    let (_, idx) = self.heap[0];
                    self.heap_remove(0);
                    out.push(idx);
                }
                Some((_, Some(q))) => {
                    let head = self.queues[q].head;
                    self.cancel(head);
                    out.push(head);
                }
            }
        }
    }

    /// Number of armed timers (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let mut n = self.heap.len();
        for q in &self.queues {
            let mut c = q.head;
            while c != NONE {
                n += 1;
                c = self.nodes[c as usize].next;
            }
        }
        n
    }

    fn heap_remove(&mut self, pos: usize) {
        let idx = self.heap[pos].1;
        self.nodes[idx as usize].heap = NONE;
        let last = self.heap.len() - 1;
        if pos != last {
            self.heap.swap(pos, last);
            self.heap.pop();
            let moved = self.heap[pos].1;
            self.nodes[moved as usize].heap = pos as u32;
            if pos > 0 && self.heap[pos].0 < self.heap[(pos - 1) / 2].0 {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        } else {
            self.heap.pop();
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[parent].0 <= self.heap[pos].0 {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let l = 2 * pos + 1;
            if l >= len {
                break;
            }
            let r = l + 1;
            let c = if r < len && self.heap[r].0 < self.heap[l].0 { r } else { l };
            if self.heap[pos].0 <= self.heap[c].0 {
                break;
            }
            self.swap(pos, c);
            pos = c;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        let ia = self.heap[a].1;
        let ib = self.heap[b].1;
        self.nodes[ia as usize].heap = a as u32;
        self.nodes[ib as usize].heap = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A timer's node: 24 of the 232 bytes of an idle connection (its idle
    /// timeout; BENCHMARKS.md, memory per idle connection).
    #[test]
    fn a_timer_node_takes_24_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 24);
    }

    #[test]
    fn heap_orders_and_cancels() {
        let mut t = Timers::default();
        for (i, d) in [50u64, 10, 30, 20, 40].iter().enumerate() {
            t.schedule(i as u32, 0, *d);
        }
        assert_eq!(t.next_deadline(), Some(10));
        t.cancel(1);
        assert_eq!(t.next_deadline(), Some(20));
        let mut out = Vec::new();
        t.pop_expired(35, &mut out);
        assert_eq!(out, vec![3, 2]);
        assert!(!t.is_scheduled(3) && t.is_scheduled(0));
    }

    #[test]
    fn common_queue_is_fifo_and_rearm_is_o1() {
        let mut t = Timers::default();
        assert!(t.add_common(100));
        for i in 0..5u32 {
            t.schedule(i, i as u64, 100);
        }
        assert!(t.heap.is_empty(), "common timeouts never touch the heap");
        t.schedule(0, 10, 100); // re-arm: moves to the tail
        assert_eq!(t.next_deadline(), Some(101));
        let mut out = Vec::new();
        t.pop_expired(104, &mut out);
        assert_eq!(out, vec![1, 2, 3, 4]);
        assert_eq!(t.deadline(0), Some(110));
        t.cancel(0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn expired_heap_and_common_timers_come_out_in_deadline_order() {
        let mut t = Timers::default();
        assert!(t.add_common(40));
        t.schedule(0, 0, 40); // common, due at 40
        t.schedule(1, 0, 20); // heap, 20
        t.schedule(2, 0, 60); // heap, 60
        t.schedule(3, 5, 40); // common, 45
        // A late wake-up: every one has expired.
        let mut out = Vec::new();
        t.pop_expired(100, &mut out);
        assert_eq!(out, vec![1, 0, 3, 2]);
    }

    #[test]
    fn rearming_to_the_same_deadline_keeps_the_order() {
        let mut t = Timers::default();
        assert!(t.add_common(100));
        for i in 0..4u32 {
            t.schedule(i, 0, 100);
        }
        t.schedule(9, 0, 30);
        // Same clock reading, same timeout: the tail of a queue and a heap
        // entry stay; any other entry of a queue goes behind the rest.
        t.schedule(3, 0, 100);
        t.schedule(9, 0, 30);
        t.schedule(0, 0, 100);
        // A later reading moves 1 behind the rest.
        t.schedule(1, 5, 100);
        let mut out = Vec::new();
        t.pop_expired(100, &mut out);
        assert_eq!(out, vec![9, 2, 3, 0]);
        assert_eq!(t.deadline(1), Some(105));
        assert_eq!(t.len(), 1);
    }

    proptest! {
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u32..16, 0u64..50, 0u8..4), 1..200)) {
            let mut t = Timers::default();
            t.add_common(7);
            let mut model: std::collections::BTreeMap<u32, u64> = Default::default();
            let mut now = 0u64;
            for (idx, d, op) in ops {
                match op {
                    0 => { t.schedule(idx, now, d); model.insert(idx, now + d); }
                    1 => { t.schedule(idx, now, 7); model.insert(idx, now + 7); }
                    2 => { t.cancel(idx); model.remove(&idx); }
                    _ => {
                        now += d;
                        let mut out = Vec::new();
                        t.pop_expired(now, &mut out);
                        let mut want: Vec<u32> = model.iter().filter(|(_, dl)| **dl <= now).map(|(i, _)| *i).collect();
                        model.retain(|_, dl| *dl > now);
                        out.sort();
                        want.sort();
                        prop_assert_eq!(out, want);
                    }
                }
                prop_assert_eq!(t.next_deadline(), model.values().min().copied());
                prop_assert_eq!(t.len(), model.len());
            }
        }
    }
}
