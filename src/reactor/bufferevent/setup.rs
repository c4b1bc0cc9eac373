//! What a bufferevent is set up with: its callbacks, watermarks, timeouts,
//! lingering bound and options ([`BevSetup`]).
//!
//! Every connection of a server is set up alike, so the setup is shared:
//! one `Rc` for all of them instead of ~70 bytes in each. A setter on one
//! bufferevent ([`BufferEvent::setcb`](super::BufferEvent::setcb),
//! [`set_timeouts`](super::BufferEvent::set_timeouts), ...) copies the
//! setup first if it is shared (`Rc::make_mut`), so sharing never changes
//! what a setter means.

use super::{BevOptions, CloseCb, DEFAULT_LINGER, DataCb, EventCb};
use std::time::Duration;

/// An optional timeout in 8 bytes (nanoseconds; MAX = none), where
/// `Option<Duration>` takes 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Timeout(u64);

impl Timeout {
    pub const NONE: Timeout = Timeout(u64::MAX);
    pub fn new(d: Option<Duration>) -> Timeout {
        d.map_or(Timeout::NONE, |d| Timeout(d.as_nanos().min(u64::MAX as u128 - 1) as u64))
    }
    pub fn get(self) -> Option<Duration> {
        (self != Timeout::NONE).then(|| Duration::from_nanos(self.0))
    }
}

/// Callbacks, watermarks, timeouts and options of bufferevents, shareable
/// between many of them ([`BufferEvent::socket_with`](super::BufferEvent::socket_with)).
/// Built like this:
///
/// ```ignore
/// let setup = Rc::new(
///     BevSetup::new(BevOptions::CLOSE_ON_FREE)
///         .callbacks(Some(on_read), Some(on_write), Some(on_event))
///         .backpressure(256 * 1024, 64 * 1024)
///         .timeouts(Some(idle), Some(write)),
/// );
/// ```
pub struct BevSetup<C: 'static> {
    pub(super) readcb: Option<DataCb<C>>,
    pub(super) writecb: Option<DataCb<C>>,
    pub(super) eventcb: Option<EventCb<C>>,
    pub(super) closecb: Option<CloseCb<C>>,
    pub(super) read_low: u32,
    pub(super) read_high: u32,
    pub(super) write_low: u32,
    pub(super) bp_high: u32,
    pub(super) bp_low: u32,
    pub(super) read_timeout: Timeout,
    pub(super) write_timeout: Timeout,
    pub(super) options: BevOptions,
    /// The lingering bound of a close, ms (at most 65 s).
    pub(super) linger_ms: u16,
}

// Every field is Copy whatever C is (fn pointers), so no `C: Clone` bound.
impl<C: 'static> Clone for BevSetup<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C: 'static> Copy for BevSetup<C> {}

fn clamp32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

impl<C: 'static> BevSetup<C> {
    /// No callbacks, no watermarks, no timeouts, the default lingering;
    /// CLOSE_ON_FREE is always on (the bufferevent owns its socket).
    pub fn new(options: BevOptions) -> BevSetup<C> {
        BevSetup {
            readcb: None,
            writecb: None,
            eventcb: None,
            closecb: None,
            read_low: 0,
            read_high: 0,
            write_low: 0,
            bp_high: 0,
            bp_low: 0,
            read_timeout: Timeout::NONE,
            write_timeout: Timeout::NONE,
            options: options | BevOptions::CLOSE_ON_FREE,
            linger_ms: DEFAULT_LINGER.as_millis() as u16,
        }
    }

    /// The read, write and event callbacks (as `setcb`).
    pub fn callbacks(mut self, read: Option<DataCb<C>>, write: Option<DataCb<C>>, event: Option<EventCb<C>>) -> Self {
        (self.readcb, self.writecb, self.eventcb) = (read, write, event);
        self
    }

    /// The close callback (as `set_closecb`).
    pub fn close_callback(mut self, cb: Option<CloseCb<C>>) -> Self {
        self.closecb = cb;
        self
    }

    /// Read watermarks (as `set_watermark` with READ).
    pub fn read_watermarks(mut self, low: usize, high: usize) -> Self {
        (self.read_low, self.read_high) = (clamp32(low), clamp32(high));
        self
    }

    /// The write low watermark (as `set_watermark` with WRITE).
    pub fn write_low_watermark(mut self, low: usize) -> Self {
        self.write_low = clamp32(low);
        self
    }

    /// Output backpressure (as `set_backpressure`).
    pub fn backpressure(mut self, high: usize, low: usize) -> Self {
        self.bp_high = clamp32(high);
        self.bp_low = clamp32(low.min(high));
        self
    }

    /// Read and write timeouts (as `set_timeouts`).
    pub fn timeouts(mut self, read: Option<Duration>, write: Option<Duration>) -> Self {
        self.read_timeout = Timeout::new(read);
        self.write_timeout = Timeout::new(write);
        self
    }

    /// The lingering bound of a close (as `set_linger`).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger_ms = linger.as_millis().min(u16::MAX as u128) as u16;
        self
    }

    /// The options.
    pub fn options(&self) -> BevOptions {
        self.options
    }
}
