//! The admin HTTP endpoint: `GET /metrics` (Prometheus text format: the
//! counters of every serving process summed from shared memory, the
//! master's own values and what `sample.rs` reads at the scrape) and
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
use super::sample::SharedStatus;
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
/// Headers parsed without an allocation; a head with more (but within
/// [`MAX_HEAD`]) is parsed again with room for [`MAX_HEADERS`].
const INLINE_HEADERS: usize = 64;
/// Most headers [`MAX_HEAD`] + 1 bytes can hold (`a:` and LF, 3 bytes
/// each): the limit of a head is its size, never its number of headers.
const MAX_HEADERS: usize = (MAX_HEAD + 1) / 3 + 1;

/// What `/healthz` says: `None` = every wanted worker of the current
/// generation serves (200 `ok`); `Some(reason)` = 503 with that one line.
pub type Health = Rc<RefCell<Option<String>>>;

/// The state shared by the endpoint's connections.
pub struct Admin {
    metrics: Rc<Metrics>,
    status: SharedStatus,
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
        status: SharedStatus,
        health: Health,
    ) -> std::io::Result<Rc<Admin>> {
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        let admin = Rc::new(Admin {
            metrics,
            status,
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

    /// The body of `GET /metrics`.
    fn render_metrics(&self) -> String {
        let scrape = self.status.borrow().scrape();
        self.metrics.render(&scrape)
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

fn on_event(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>, ev: BevEvent) {
    // The client shut its write side mid-head: the head can never
    // complete, so it is answered now (it may still read), not at the
    // deadline. A client that sent nothing is closed unanswered.
    if ev.contains(BevEvent::EOF) && !ev.contains(BevEvent::ERROR) && !bev.input().is_empty() && !bev.is_closing() {
        answer(base, bev, Answer::Incomplete);
        return;
    }
    bev.free(base);
}

/// What the endpoint does with the request head received so far (at most
/// `MAX_HEAD + 1` bytes: reading stops there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Incomplete, and may still fit: wait for more (or the deadline).
    Wait,
    /// `GET /metrics` (`head_only`: the same by `HEAD`, without the body).
    Metrics {
        /// `HEAD`: the response has no body.
        head_only: bool,
    },
    /// `GET /healthz`.
    Healthz {
        /// `HEAD`: the response has no body.
        head_only: bool,
    },
    /// `GET` of another path: 404.
    NotFound {
        /// `HEAD`: the response has no body.
        head_only: bool,
    },
    /// Another method: 405.
    MethodNotAllowed,
    /// More than [`MAX_HEAD`] bytes: 431.
    TooLarge,
    /// Not an HTTP/1.x request head: 400.
    Malformed,
    /// The client's EOF cut the head short, so it can never complete: 400.
    Incomplete,
}

/// Decides what to answer to the request head `head` (the bytes received
/// so far); pure, so that the fuzz target checks that any split of the
/// same bytes decides alike.
pub fn judge(head: &[u8]) -> Answer {
    let head = &head[..head.len().min(MAX_HEAD + 1)];
    let mut headers = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    match judge_with(head, &mut headers) {
        // Rare (a client that sends dozens of headers): room for as many
        // as the head's bytes can hold, on the heap.
        None => judge_with(head, &mut vec![httparse::EMPTY_HEADER; MAX_HEADERS]).unwrap_or(Answer::TooLarge),
        Some(answer) => answer,
    }
}

/// [`judge`] with room for `headers.len()` headers; `None` if they do
/// not fit.
fn judge_with<'h>(head: &'h [u8], headers: &mut [httparse::Header<'h>]) -> Option<Answer> {
    let mut req = httparse::Request::new(headers);
    Some(match req.parse(head) {
        Err(httparse::Error::TooManyHeaders) => return None,
        Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => Answer::Wait,
        Ok(httparse::Status::Partial) => Answer::TooLarge,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Answer::TooLarge,
        Err(_) => Answer::Malformed,
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or("");
            let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
            let head_only = method == "HEAD";
            match (method, path) {
                ("GET" | "HEAD", "/metrics") => Answer::Metrics { head_only },
                ("GET" | "HEAD", "/healthz") => Answer::Healthz { head_only },
                ("GET" | "HEAD", _) => Answer::NotFound { head_only },
                _ => Answer::MethodNotAllowed,
            }
        }
    })
}

/// The whole response to `answer` (`None` for [`Answer::Wait`]): the
/// metrics and the health reason come from the caller.
pub fn response(answer: Answer, metrics: impl FnOnce() -> String, health: Option<&str>) -> Option<Vec<u8>> {
    const TEXT: &str = "text/plain";
    let (status, ctype, body, head_only) = match answer {
        Answer::Wait => return None,
        Answer::Metrics { head_only } => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics(), head_only),
        Answer::Healthz { head_only } => match health {
            None => ("200 OK", TEXT, "ok\n".to_string(), head_only),
            Some(why) => ("503 Service Unavailable", TEXT, format!("{why}\n"), head_only),
        },
        Answer::NotFound { head_only } => ("404 Not Found", TEXT, "not found\n".to_string(), head_only),
        Answer::MethodNotAllowed => ("405 Method Not Allowed", TEXT, "method not allowed\n".to_string(), false),
        Answer::TooLarge => {
            ("431 Request Header Fields Too Large", TEXT, "request head too large\n".to_string(), false)
        }
        Answer::Malformed => ("400 Bad Request", TEXT, "malformed request\n".to_string(), false),
        Answer::Incomplete => ("400 Bad Request", TEXT, "incomplete request\n".to_string(), false),
    };
    // RFC 9110 §15.5.6: a 405 names the methods the resource allows.
    let allow = if answer == Answer::MethodNotAllowed { "Allow: GET, HEAD\r\n" } else { "" };
    Some(render(status, allow, ctype, &body, !head_only))
}

fn on_read(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>) {
    let mut head = vec![0u8; bev.input().len().min(MAX_HEAD + 1)];
    let n = bev.input().copyout(&mut head);
    head.truncate(n);
    answer(base, bev, judge(&head));
}

/// Queues the response to `answer` (none while it waits for more) and
/// closes once it is written.
fn answer(base: &mut EventBase, bev: &mut BufferEvent<AdminConn>, answer: Answer) {
    let admin = bev.ctx.admin.clone();
    let Some(out) = response(answer, || admin.render_metrics(), admin.health.borrow().as_deref()) else {
        return;
    };
    let n = bev.input().len();
    bev.input_mut().drain(n);
    base.free(bev.ctx.deadline);
    bev.output_mut().add(&out);
    bev.close_when_flushed(base);
}

/// A response; `extra` holds more header lines (each ending CRLF);
/// `with_body` false for HEAD (the length is still the body's).
fn render(status: &str, extra: &str, ctype: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Queues a response; `with_body` false for HEAD.
fn respond(bev: &mut BufferEvent<AdminConn>, status: &str, ctype: &str, body: &str, with_body: bool) {
    bev.output_mut().add(&render(status, "", ctype, body, with_body));
}
