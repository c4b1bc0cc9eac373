//! What `/metrics` reads from the system at each scrape, beside the
//! counters the serving processes keep in shared memory: the accept queues
//! of the rot13 listeners, and the `process_*` families of every live
//! process of the daemon. The master keeps a [`Status`] up to date (its
//! own values, its processes, its listeners); the admin endpoint, served by
//! the master, turns it into a [`Scrape`] when asked.
//!
//! # Connections waiting
//!
//! At `max_connections` a serving process stops accepting and further
//! clients wait in the kernel's accept queue of the listener (SPEC §3). The
//! master holds every rot13 listening socket (each socket of a reuseport
//! group, the activated ones), so it reads each queue's length with
//! TCP_INFO ([`sys::accept_queue`]) and sums them. That is what waits at
//! the scrape, not a count of clients that ever waited; connections pass
//! through the queue in passing too, for the moment before a worker
//! accepts them.
//!
//! # The process families: one series per process
//!
//! Prometheus' client guidelines define `process_*` for one process, from
//! its own `/proc/self`. rot13d is a master and workers, and their values
//! do not all sum: `process_max_fds` and `process_open_fds` matter per
//! process (EMFILE is one process's limit, and `open / max` an alert per
//! process), `process_start_time_seconds` of a sum means nothing, and a
//! sum of CPU seconds over the live processes would go down when a worker
//! exits. So every family has one series per live process, labelled
//! `role` (`master` or `worker`) and `pid`, as the Python client's
//! multi-process mode does for its per-process gauges (`liveall`: one
//! series per live process, labelled by pid). `sum(process_resident_memory_bytes)`
//! is the daemon's memory (pages shared after fork counted in each), and
//! `sum(rate(process_cpu_seconds_total[5m]))` its CPU. A worker's series
//! end when it is reaped; pids change at every reload and restart, which
//! is few series. With `workers = 0` there is one process, `role="master"`.
//!
//! The master reads `/proc/<pid>` of its workers (procfs). A value it
//! cannot read (a worker that dropped privileges is not dumpable, so a
//! master without CAP_SYS_PTRACE cannot open its `fd` directory) is left
//! out rather than guessed, as the guidelines ask.

use super::metrics::{ProcessSample, Scrape, Stats};
use crate::sys;
use procfs::process::{LimitValue, Process};
use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::{Rc, Weak};

/// What the master publishes for the admin endpoint.
#[derive(Debug, Default)]
pub struct Status {
    /// The master's own values.
    pub stats: Stats,
    /// The current generation's event backend.
    pub backend: &'static str,
    /// The live processes, `(role, pid)`, the master first.
    pub processes: Vec<(&'static str, i32)>,
    /// The rot13 listening sockets; weak, so that a listener the master
    /// closes is not kept open by this view.
    pub listeners: Vec<Weak<OwnedFd>>,
}

/// The master's status, shared with the admin endpoint.
pub type SharedStatus = Rc<RefCell<Status>>;

impl Status {
    /// Reads what a scrape shows now.
    pub fn scrape(&self) -> Scrape {
        let me = sys::process::getpid();
        Scrape {
            stats: self.stats,
            backend: self.backend,
            waiting: waiting(&self.listeners),
            processes: self.processes.iter().map(|&(role, pid)| process(role, pid, pid == me)).collect(),
        }
    }
}

/// The summed accept queues of `listeners` (`None` if none could be read).
fn waiting(listeners: &[Weak<OwnedFd>]) -> Option<u64> {
    let queues: Vec<u64> = listeners
        .iter()
        .filter_map(Weak::upgrade)
        .filter_map(|fd| sys::accept_queue(fd.as_fd()).ok())
        .map(u64::from)
        .collect();
    (!queues.is_empty()).then(|| queues.iter().sum())
}

/// Process `pid` (`me`: this process) as `/proc` shows it.
fn process(role: &'static str, pid: i32, me: bool) -> ProcessSample {
    let mut s = ProcessSample { role, pid, ..ProcessSample::default() };
    let Ok(p) = (if me { Process::myself() } else { Process::new(pid) }) else { return s };
    if let Ok(stat) = p.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        s.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
        s.resident_bytes = Some(stat.rss * procfs::page_size());
        if let Ok(boot) = procfs::boot_time_secs() {
            s.start_time = Some(boot as f64 + stat.starttime as f64 / ticks);
        }
    }
    s.open_fds = p.fd_count().ok().map(|n| n as u64);
    s.max_fds = p.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
        LimitValue::Value(v) => Some(v),
        LimitValue::Unlimited => None,
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// TCP_INFO of a listening socket counts the connections queued for
    /// accept (checked here on the running kernel, not assumed).
    #[test]
    fn the_accept_queue_is_counted() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd: OwnedFd = l.try_clone().expect("dup").into();
        assert_eq!(sys::accept_queue(fd.as_fd()).expect("listening"), 0);
        let addr = l.local_addr().expect("addr");
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        // The server side joins the queue when the client's ACK arrives,
        // just after connect returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sys::accept_queue(fd.as_fd()).expect("listening") < 3 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(sys::accept_queue(fd.as_fd()).expect("listening"), 3);
        let (_one, _) = l.accept().expect("accept");
        assert_eq!(sys::accept_queue(fd.as_fd()).expect("listening"), 2);
        let rc = Rc::new(fd);
        assert_eq!(waiting(&[Rc::downgrade(&rc)]), Some(2));
        let connected: OwnedFd = clients.into_iter().next().expect("a client").into();
        assert!(sys::accept_queue(connected.as_fd()).is_err(), "a connected socket is not a listener");
        let weak = Rc::downgrade(&rc);
        drop(rc);
        assert_eq!(waiting(&[weak]), None, "a closed listener is not read");
    }

    #[test]
    fn this_process_is_sampled() {
        let me = sys::process::getpid();
        let s = process("master", me, true);
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0), "{s:?}");
        assert!(s.resident_bytes.is_some_and(|r| r > 0), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        let (soft, _) = sys::nofile_limit().expect("getrlimit");
        assert_eq!(s.max_fds, Some(soft));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
        assert!(s.start_time.is_some_and(|t| t <= now + 1.0 && t > now - 86400.0), "{s:?}");
        let gone = process("worker", i32::MAX, false);
        assert_eq!((gone.cpu_seconds, gone.open_fds), (None, None), "no such process: no values");
    }
}
