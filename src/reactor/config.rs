//! `EventConfig`: how an [`EventBase`](super::EventBase) is built.

use super::backend::Features;
use std::time::Duration;

/// Base flags (libevent's `EVENT_BASE_FLAG_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BaseFlags(u8);

impl BaseFlags {
    /// No locking: the base hands out no cross-thread handle.
    pub const NOLOCK: BaseFlags = BaseFlags(0x01);
    /// Ignore the `EVENT_*` environment variables.
    pub const IGNORE_ENV: BaseFlags = BaseFlags(0x02);
    /// Read the clock on every query instead of once per loop turn.
    pub const NO_CACHE_TIME: BaseFlags = BaseFlags(0x08);
    /// epoll: coalesce changes per fd until the next dispatch.
    pub const EPOLL_USE_CHANGELIST: BaseFlags = BaseFlags(0x10);
    /// Use the precise monotonic clock instead of the coarse one.
    pub const PRECISE_TIMER: BaseFlags = BaseFlags(0x20);

    /// Whether every bit of `o` is set.
    pub const fn contains(self, o: BaseFlags) -> bool {
        self.0 & o.0 == o.0
    }
    /// No flag.
    pub const fn empty() -> BaseFlags {
        BaseFlags(0)
    }
}

impl std::ops::BitOr for BaseFlags {
    type Output = BaseFlags;
    fn bitor(self, r: BaseFlags) -> BaseFlags {
        BaseFlags(self.0 | r.0)
    }
}
impl std::ops::BitOrAssign for BaseFlags {
    fn bitor_assign(&mut self, r: BaseFlags) {
        self.0 |= r.0;
    }
}

impl std::fmt::Debug for BaseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (BaseFlags::NOLOCK, "NOLOCK"),
            (BaseFlags::IGNORE_ENV, "IGNORE_ENV"),
            (BaseFlags::NO_CACHE_TIME, "NO_CACHE_TIME"),
            (BaseFlags::EPOLL_USE_CHANGELIST, "EPOLL_USE_CHANGELIST"),
            (BaseFlags::PRECISE_TIMER, "PRECISE_TIMER"),
        ];
        let set: Vec<&str> = names.iter().filter(|(b, _)| self.contains(*b) && b.0 != 0).map(|(_, n)| *n).collect();
        if set.is_empty() { f.write_str("NONE") } else { f.write_str(&set.join(" | ")) }
    }
}

/// The configuration of a base (libevent's `event_config`).
#[derive(Clone, Debug, Default)]
pub struct EventConfig {
    pub(crate) avoid: Vec<String>,
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

    /// Never use the backend called `name` (`epoll`, `poll`, `select`).
    #[doc(alias = "event_config_avoid_method")]
    pub fn avoid(&mut self, name: &str) -> &mut Self {
        self.avoid.push(name.to_string());
        self
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
}
