//! Random sequences of add / del / free / activate on several events that
//! share a few sockets, with data put and drained between non-blocking loop
//! turns, checked against a model of level-triggered readiness: on a turn,
//! an event runs iff it was activated by hand or is pending and its socket is
//! ready for one of its directions, with exactly those bits; a one-shot event
//! is then no longer pending. This drives the evmap's per-fd interest
//! transitions and every backend's add/modify/delete (and the epoll
//! changelist's coalescing) through many orders.
//!
//! One allowance, for uring only: a poll request completes with the mask of
//! the wake-up that ended it, so data put and then drained between two turns
//! may still be reported readable on the next (a spurious readiness, read as
//! EAGAIN; epoll and poll look again when they wait). Such a READ is not
//! counted against the model; everything else must match exactly.

use super::*;
use proptest::prelude::*;

const PAIRS: usize = 3;
const EVENTS: usize = 6;

#[derive(Clone, Copy, Debug)]
enum Op {
    Add(usize),
    Del(usize),
    Free(usize),
    Put(usize),
    Drain(usize),
    Activate(usize, bool),
    Turn,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..EVENTS).prop_map(Op::Add),
        2 => (0..EVENTS).prop_map(Op::Del),
        1 => (0..EVENTS).prop_map(Op::Free),
        2 => (0..PAIRS).prop_map(Op::Put),
        2 => (0..PAIRS).prop_map(Op::Drain),
        1 => (0..EVENTS, any::<bool>()).prop_map(|(e, r)| Op::Activate(e, r)),
        3 => Just(Op::Turn),
    ]
}

/// Per event: its directions (1 read, 2 write, 3 both) and persistence.
fn specs() -> impl Strategy<Value = Vec<(u8, bool)>> {
    proptest::collection::vec((1u8..=3, any::<bool>()), EVENTS)
}

struct Model {
    pending: bool,
    active: EventFlags,
}

type Fired = Rc<RefCell<Vec<(usize, EventFlags)>>>;

fn flags_of(dirs: u8) -> EventFlags {
    let mut f = EventFlags::NONE;
    if dirs & 1 != 0 {
        f |= EventFlags::READ;
    }
    if dirs & 2 != 0 {
        f |= EventFlags::WRITE;
    }
    f
}

fn check(be: Backend, specs: &[(u8, bool)], ops: &[Op]) -> io::Result<()> {
    let mut b = be.base()?;
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..PAIRS).map(|_| pair()).collect::<io::Result<_>>()?;
    let fired: Fired = Rc::default();
    let mk = |b: &mut EventBase, k: usize| {
        let (dirs, persist) = specs[k];
        let mut f = flags_of(dirs);
        if persist {
            f |= EventFlags::PERSIST;
        }
        let log = fired.clone();
        b.new_event(pairs[k % PAIRS].0.as_raw_fd(), f, move |_, _, res| log.borrow_mut().push((k, res)))
    };
    let mut ids: Vec<EventId> = (0..EVENTS).map(|k| mk(&mut b, k)).collect();
    let mut model: Vec<Model> = (0..EVENTS).map(|_| Model { pending: false, active: EventFlags::NONE }).collect();
    let mut data = [false; PAIRS];
    // Pairs whose data was put and drained since the last turn.
    let mut drained = [false; PAIRS];
    for (step, &op) in ops.iter().enumerate() {
        match op {
            Op::Add(k) => {
                b.add(ids[k], None)?;
                model[k].pending = true;
            }
            Op::Del(k) => {
                b.del(ids[k])?;
                model[k] = Model { pending: false, active: EventFlags::NONE };
            }
            Op::Free(k) => {
                b.free(ids[k]);
                ids[k] = mk(&mut b, k);
                model[k] = Model { pending: false, active: EventFlags::NONE };
            }
            Op::Put(p) => {
                put(&pairs[p].1, b"d")?;
                data[p] = true;
            }
            Op::Drain(p) => {
                while take(pairs[p].0.as_raw_fd()).is_some_and(|v| !v.is_empty()) {}
                drained[p] |= data[p];
                data[p] = false;
            }
            Op::Activate(k, read) => {
                let res = if read { EventFlags::READ } else { EventFlags::WRITE };
                b.active(ids[k], res);
                model[k].active |= res;
            }
            Op::Turn => {
                let mut want = Vec::new();
                for (k, m) in model.iter_mut().enumerate() {
                    if m.pending {
                        let mut ready = EventFlags::WRITE;
                        if data[k % PAIRS] {
                            ready |= EventFlags::READ;
                        }
                        m.active |= flags_of(specs[k].0) & ready;
                    }
                    if !m.active.is_empty() {
                        want.push((k, m.active));
                        m.active = EventFlags::NONE;
                        if !specs[k].1 {
                            m.pending = false;
                        }
                    }
                }
                fired.borrow_mut().clear();
                b.run(LoopFlags::NONBLOCK)?;
                let mut got = fired.borrow().clone();
                if be.name() == "uring" {
                    for (k, res) in &mut got {
                        let wanted = want.iter().find(|w| w.0 == *k).map_or(EventFlags::NONE, |w| w.1);
                        if drained[*k % PAIRS] && !wanted.contains(EventFlags::READ) {
                            res.remove(EventFlags::READ);
                            // A one-shot event that fired spuriously is done.
                            if wanted.is_empty() && !specs[*k].1 {
                                model[*k].pending = false;
                            }
                        }
                    }
                    got.retain(|(_, res)| !res.is_empty());
                }
                drained = [false; PAIRS];
                got.sort_by_key(|e| e.0);
                assert_eq!(got, want, "{be:?}: turn at step {step} of {ops:?} with {specs:?}");
            }
        }
        for (k, m) in model.iter().enumerate() {
            let io = flags_of(specs[k].0);
            let (what, _) = b.pending(ids[k], io);
            let want = if m.pending { io } else { EventFlags::NONE } | (m.active & io);
            assert_eq!(what, want, "{be:?}: pending({k}) after step {step} ({op:?})");
        }
    }
    Ok(())
}

fn model_test(be: Backend) -> io::Result<()> {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    runner
        .run(&(specs(), proptest::collection::vec(op(), 1..80)), |(specs, ops)| {
            check(be, &specs, &ops).map_err(|e| TestCaseError::fail(e.to_string()))
        })
        .map_err(|e| io::Error::other(e.to_string()))
}

rtest!(random_add_del_activate_against_a_model, |be| { model_test(be) });
