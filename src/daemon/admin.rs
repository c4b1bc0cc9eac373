//! The admin HTTP endpoint: `GET /metrics` (Prometheus text format, the
//! counters of every serving process summed from shared memory) and
//! `GET /healthz`. Served by the process that owns the counters (the
//! master, or the only process with `workers = 0`) on the control lane, one
//! request per connection (HTTP/1.0 style: the response closes it).

use super::metrics::Metrics;
use super::worker::LANE_CONTROL;
use crate::reactor::{BevEvent, BevOptions, BufferEvent, EventBase, EventFlags, EventId};
use crate::sys;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once.
const MAX_ADMIN_CONNS: usize = 64;

/// The state shared by the endpoint's connections.
pub struct Admin {
    metrics: Rc<Metrics>,
    healthy: Cell<bool>,
    open: Cell<usize>,
    listener: Cell<EventId>,
    fd: RawFd,
}

struct AdminConn {
    admin: Rc<Admin>,
}

impl Admin {
    /// Serves the endpoint on listening socket `fd` with `base`.
    pub fn start(base: &mut EventBase, fd: RawFd, metrics: Rc<Metrics>) -> std::io::Result<Rc<Admin>> {
        sys::set_nonblocking(fd, true)?;
        let admin = Rc::new(Admin {
            metrics,
            healthy: Cell::new(true),
            open: Cell::new(0),
            listener: Cell::new(EventId::INVALID),
            fd,
        });
        let a = admin.clone();
        let ev = base.new_event(fd, EventFlags::READ | EventFlags::PERSIST, move |base, _, _| a.accept(base));
        base.set_priority(ev, LANE_CONTROL)?;
        base.add(ev, None)?;
        admin.listener.set(ev);
        Ok(admin)
    }

    /// `/healthz` answers 503 once this is false (a stop began).
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.set(ok);
    }

    /// Stops listening (the socket itself belongs to the caller).
    pub fn stop(&self, base: &mut EventBase) {
        base.free(self.listener.get());
    }

    /// The listening socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn accept(self: &Rc<Self>, base: &mut EventBase) {
        for _ in 0..16 {
            if self.open.get() >= MAX_ADMIN_CONNS {
                return;
            }
            let Ok((fd, _)) = sys::accept(self.fd) else { return };
            let conn = AdminConn { admin: self.clone() };
            let Ok(bev) = BufferEvent::socket_new(base, fd, BevOptions::CLOSE_ON_FREE, conn) else { continue };
            self.open.set(self.open.get() + 1);
            bev.with(|b| {
                b.setcb(Some(on_read), None, Some(on_event));
                b.set_closecb(Some(on_close));
                let _ = b.set_priority(base, LANE_CONTROL);
                b.set_timeouts(base, Some(REQUEST_TIMEOUT), Some(REQUEST_TIMEOUT));
                let _ = b.enable(base, EventFlags::READ | EventFlags::WRITE);
            });
        }
    }
}

fn on_close(_base: &mut EventBase, bev: &mut BufferEvent<AdminConn>) {
    let a = &bev.ctx.admin;
    a.open.set(a.open.get().saturating_sub(1));
}

fn on_event(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>, _ev: BevEvent) {
    bev.free(base);
}

fn on_read(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>) {
    let end = bev.input.search(b"\r\n\r\n", 0).map(|p| p + 4).or_else(|| bev.input.search(b"\n\n", 0).map(|p| p + 2));
    let Some(end) = end else {
        if bev.input.len() > MAX_HEAD {
            respond(bev, "431 Request Header Fields Too Large", "text/plain", "request head too large\n");
            bev.close_when_flushed(base);
        }
        return;
    };
    let mut head = vec![0u8; end.min(MAX_HEAD)];
    let n = bev.input.copyout(&mut head);
    head.truncate(n);
    bev.input.drain(bev.input.len());
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = bev.ctx.admin.metrics.render();
            respond(bev, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body);
        }
        ("GET" | "HEAD", "/healthz") => {
            if bev.ctx.admin.healthy.get() {
                respond(bev, "200 OK", "text/plain", "ok\n");
            } else {
                respond(bev, "503 Service Unavailable", "text/plain", "stopping\n");
            }
        }
        ("GET" | "HEAD", _) => respond(bev, "404 Not Found", "text/plain", "not found\n"),
        _ => respond(bev, "405 Method Not Allowed", "text/plain", "method not allowed\n"),
    }
    if method == "HEAD" {
        // The body was queued too: a HEAD response keeps only the head.
        let mut all = vec![0u8; bev.output.len()];
        bev.output.copyout(&mut all);
        if let Some(p) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            bev.output.drain(bev.output.len());
            bev.output.add(&all[..p + 4]);
        }
    }
    bev.close_when_flushed(base);
}

fn respond(bev: &mut BufferEvent<AdminConn>, status: &str, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    bev.output.add(head.as_bytes());
    bev.output.add(body.as_bytes());
}
