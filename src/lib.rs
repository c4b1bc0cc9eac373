//! rot13d: a ROT13 line-protocol TCP daemon on a libevent-style reactor of
//! its own. See README.md for the product and `reactor` for the design.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// The OS boundary: all FFI and every `unsafe` block of the crate.
#[allow(unsafe_code)]
pub mod sys;

/// The libevent-style reactor: event base, backends, timers, signals, buffers.
pub mod reactor;

/// ROT13 over byte slices: branchless, auto-vectorised.
pub mod rot13;

/// The rot13d line protocol (SPEC §1) as framing on `EvBuffer`s; no I/O.
pub mod protocol;

/// The daemon around the reactor: CLI, config, master, workers, connections.
pub mod daemon;

/// The fuzz targets' drivers, shared by `fuzz/` and the replay test.
#[doc(hidden)]
pub mod fuzzing;
