//! The admin HTTP endpoint: `GET /metrics` (Prometheus text format, the
//! counters of every serving process summed from shared memory) and
//! `GET /healthz`. Served by the master on the control lane, one request per
//! connection (the response closes it).
//!
//! Limits, so that no client can hold the master: the request head is
//! parsed by `httparse` and may take [`MAX_HEAD`] bytes (431 beyond, 400
//! when malformed); it must be complete [`HEAD_DEADLINE`] after the accept,
//! however slowly it trickles in (408, then closed); at [`MAX_ADMIN_CONNS`]
//! the listener's read interest is removed, so the kernel queues further
//! clients and the loop spends nothing on them until a slot frees.

use super::listener::ListenFd;
use super::metrics::Metrics;
use super::worker::LANE_CONTROL;
use crate::reactor::{BevEvent, BevOptions, BufferEvent, EventBase, EventFlags, EventId};
use crate::sys;
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// A request head must be complete this long after the accept.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Admin connections served at once.
pub const MAX_ADMIN_CONNS: usize = 64;
/// Most headers of a request.
const MAX_HEADERS: usize = 64;

/// What `/healthz` says: `None` = every wanted worker of the current
/// generation serves (200 `ok`); `Some(reason)` = 503 with that one line.
pub type Health = Rc<RefCell<Option<String>>>;

/// The state shared by the endpoint's connections.
pub struct Admin {
    metrics: Rc<Metrics>,
    health: Health,
    open: Cell<usize>,
    listener: Cell<EventId>,
    /// The listener's read interest is off (at the connection cap).
    paused: Cell<bool>,
    fd: ListenFd,
}

struct AdminConn {
    admin: Rc<Admin>,
    /// The head deadline's timer.
    deadline: EventId,
}

impl Admin {
    /// Serves the endpoint on listening socket `fd` with `base`.
    pub fn start(
        base: &mut EventBase,
        fd: ListenFd,
        metrics: Rc<Metrics>,
        health: Health,
    ) -> std::io::Result<Rc<Admin>> {
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        let admin = Rc::new(Admin {
            metrics,
            health,
            open: Cell::new(0),
            listener: Cell::new(EventId::INVALID),
            paused: Cell::new(false),
            fd,
        });
        let a = admin.clone();
        let ev = base.new_event(raw, EventFlags::READ | EventFlags::PERSIST, move |base, _, _| a.accept(base));
        base.set_priority(ev, LANE_CONTROL)?;
        base.add(ev, None)?;
        admin.listener.set(ev);
        Ok(admin)
    }

    /// Stops listening; connections in flight are still answered. The
    /// socket closes once its last holder lets go of it.
    pub fn stop(&self, base: &mut EventBase) {
        base.free(self.listener.get());
    }

    /// The listening socket.
    pub fn fd(&self) -> &ListenFd {
        &self.fd
    }

    /// Takes the listener's read interest away at the cap, gives it back
    /// below it.
    fn sync_interest(&self, base: &mut EventBase) {
        let full = self.open.get() >= MAX_ADMIN_CONNS;
        if full == self.paused.get() || !base.is_valid(self.listener.get()) {
            return;
        }
        self.paused.set(full);
        let r = if full { base.del(self.listener.get()) } else { base.add(self.listener.get(), None) };
        if let Err(e) = r {
            tracing::warn!(target: "rot13d", error = %e, "cannot change the admin listener's interest");
        }
    }

    fn accept(self: &Rc<Self>, base: &mut EventBase) {
        for _ in 0..16 {
            if self.open.get() >= MAX_ADMIN_CONNS {
                break;
            }
            let Ok((fd, _)) = sys::accept(self.fd.as_raw_fd()) else { break };
            let conn = AdminConn { admin: self.clone(), deadline: EventId::INVALID };
            let Ok(bev) = BufferEvent::socket_new(base, fd, BevOptions::CLOSE_ON_FREE, conn) else { continue };
            self.open.set(self.open.get() + 1);
            let late = bev.clone();
            let timer = base.once(-1, EventFlags::NONE, Some(HEAD_DEADLINE), move |base, _| {
                late.with(|b| {
                    if !b.is_freed() && !b.is_closing() {
                        let n = b.input().len();
                        b.input_mut().drain(n);
                        respond(b, "408 Request Timeout", "text/plain", "request head not complete in time\n", true);
                        b.close_when_flushed(base);
                    }
                });
            });
            bev.with(|b| {
                if let Ok(t) = timer {
                    let _ = base.set_priority(t, LANE_CONTROL);
                    b.ctx.deadline = t;
                }
                b.setcb(Some(on_read), None, Some(on_event));
                b.set_closecb(Some(on_close));
                let _ = b.set_priority(base, LANE_CONTROL);
                // Reading stops once a head can no longer fit.
                b.set_watermark(base, EventFlags::READ, 0, MAX_HEAD + 1);
                b.set_timeouts(base, None, Some(HEAD_DEADLINE));
                let _ = b.enable(base, EventFlags::READ | EventFlags::WRITE);
            });
        }
        self.sync_interest(base);
    }
}

fn on_close(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>) {
    base.free(bev.ctx.deadline);
    let a = bev.ctx.admin.clone();
    a.open.set(a.open.get().saturating_sub(1));
    a.sync_interest(base);
}

fn on_event(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>, _ev: BevEvent) {
    bev.free(base);
}

fn on_read(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>) {
    let mut head = vec![0u8; bev.input().len().min(MAX_HEAD + 1)];
    let n = bev.input().copyout(&mut head);
    head.truncate(n);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(&head);
    let (status, ctype, body, is_head) = match parsed {
        Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => return,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            ("431 Request Header Fields Too Large", "text/plain", "request head too large\n".to_string(), false)
        }
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            ("431 Request Header Fields Too Large", "text/plain", "request head too large\n".to_string(), false)
        }
        Err(_) => ("400 Bad Request", "text/plain", "malformed request\n".to_string(), false),
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or("");
            let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
            let is_head = method == "HEAD";
            let admin = &bev.ctx.admin;
            let answer = match (method, path) {
                ("GET" | "HEAD", "/metrics") => {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", admin.metrics.render())
                }
                ("GET" | "HEAD", "/healthz") => match admin.health.borrow().as_deref() {
                    None => ("200 OK", "text/plain", "ok\n".to_string()),
                    Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
                ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_string()),
            };
            (answer.0, answer.1, answer.2, is_head)
        }
    };
    let n = bev.input().len();
    bev.input_mut().drain(n);
    base.free(bev.ctx.deadline);
    respond(bev, status, ctype, &body, !is_head);
    bev.close_when_flushed(base);
}

/// Queues a response; `with_body` false for HEAD.
fn respond(bev: &mut BufferEvent<AdminConn>, status: &str, ctype: &str, body: &str, with_body: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    bev.output_mut().add(head.as_bytes());
    if with_body {
        bev.output_mut().add(body.as_bytes());
    }
}
