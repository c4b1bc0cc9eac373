//! `EventConfig`: how an [`EventBase`](super::EventBase) is built.

use super::backend::{Features, Kind};
use std::time::Duration;

flag_set! {
    /// Base flags (libevent's `EVENT_BASE_FLAG_*`).
    pub struct BaseFlags(u8) {
        /// No locking: the base hands out no cross-thread handle.
        const NOLOCK = 0x01;
        /// Ignore the `EVENT_*` environment variables.
        const IGNORE_ENV = 0x02;
        /// Read the clock on every query instead of once per loop turn.
        const NO_CACHE_TIME = 0x08;
        /// epoll: coalesce changes per fd until the next dispatch.
        const EPOLL_USE_CHANGELIST = 0x10;
        /// Use the precise monotonic clock instead of the coarse one, and
        /// wait with sub-millisecond precision (libevent: epoll arms a
        /// timerfd; here epoll_pwait2 and ppoll).
        const PRECISE_TIMER = 0x20;
    }
}

/// The configuration of a base (libevent's `event_config`).
#[derive(Clone, Debug, Default)]
pub struct EventConfig {
    pub(crate) avoid: Vec<Kind>,
    pub(crate) require: Features,
    pub(crate) flags: BaseFlags,
    pub(crate) max_dispatch_interval: Option<Duration>,
    pub(crate) max_callbacks: Option<usize>,
    pub(crate) min_priority: usize,
    pub(crate) starve_limit: Option<usize>,
    pub(crate) capacity_hint: usize,
}

impl EventConfig {
    /// The defaults: fastest backend, no flags, no dispatch limits.
    #[doc(alias = "event_config_new")]
    pub fn new() -> EventConfig {
        EventConfig::default()
    }

    /// Never use the backend called `name` (`epoll`, `poll`, `select`); a
    /// name this build does not know avoids nothing (as in libevent).
    #[doc(alias = "event_config_avoid_method")]
    pub fn avoid(&mut self, name: &str) -> &mut Self {
        if let Some(k) = Kind::from_name(name) {
            self.avoid_backend(k);
        }
        self
    }

    /// Never use backend `kind`.
    pub fn avoid_backend(&mut self, kind: Kind) -> &mut Self {
        if !self.avoid.contains(&kind) {
            self.avoid.push(kind);
        }
        self
    }

    /// Whether `kind` is avoided.
    pub fn avoids(&self, kind: Kind) -> bool {
        self.avoid.contains(&kind)
    }

    /// The avoided backends as `epoll,poll`, or `-`.
    pub(crate) fn avoided_names(&self) -> String {
        let mut v: Vec<&str> = Kind::PREFERENCE.iter().filter(|k| self.avoids(**k)).map(|k| k.name()).collect();
        if v.is_empty() {
            v.push("-");
        }
        v.join(",")
    }

    /// Only use a backend that has every feature in `f`.
    #[doc(alias = "event_config_require_features")]
    pub fn require_features(&mut self, f: Features) -> &mut Self {
        self.require = f;
        self
    }

    /// Sets base flags.
    #[doc(alias = "event_config_set_flag")]
    pub fn set_flag(&mut self, f: BaseFlags) -> &mut Self {
        self.flags |= f;
        self
    }

    /// Bounds the callbacks of priorities `min_priority` and below in urgency:
    /// after `max_interval` of callbacks or `max_callbacks` callbacks the loop
    /// checks for more urgent events again.
    #[doc(alias = "event_config_set_max_dispatch_interval")]
    pub fn set_max_dispatch_interval(
        &mut self,
        max_interval: Option<Duration>,
        max_callbacks: Option<usize>,
        min_priority: usize,
    ) -> &mut Self {
        self.max_dispatch_interval = max_interval;
        self.max_callbacks = max_callbacks;
        self.min_priority = min_priority;
        self
    }

    /// Beyond libevent: a less urgent priority whose events were passed
    /// over `turns` loop turns in a row gets one pass (bounded by the
    /// max-dispatch settings) in the next turn. libevent's strict rule lets
    /// a steady stream of urgent events starve it for ever; `None` (the
    /// default) keeps that rule.
    pub fn set_starvation_limit(&mut self, turns: Option<usize>) -> &mut Self {
        self.starve_limit = turns;
        self
    }

    /// Expected number of fds, to size the backend's buffers.
    pub fn capacity_hint(&mut self, n: usize) -> &mut Self {
        self.capacity_hint = n;
        self
    }

    /// The flags set so far.
    pub fn flags(&self) -> BaseFlags {
        self.flags
    }

    /// The flags a base built now gets: the configured ones, plus
    /// `EVENT_EPOLL_USE_CHANGELIST` and `EVENT_PRECISE_TIMER` from the
    /// environment (set to any value) unless IGNORE_ENV.
    pub fn flags_in_force(&self) -> BaseFlags {
        let mut flags = self.flags;
        if !flags.contains(BaseFlags::IGNORE_ENV) {
            if std::env::var_os("EVENT_EPOLL_USE_CHANGELIST").is_some() {
                flags |= BaseFlags::EPOLL_USE_CHANGELIST;
            }
            if std::env::var_os("EVENT_PRECISE_TIMER").is_some() {
                flags |= BaseFlags::PRECISE_TIMER;
            }
        }
        flags
    }
}
