//! rot13d: a ROT13 line-protocol TCP daemon on a libevent-style reactor of
//! its own. See README.md for the product and `reactor` for the design.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// The OS boundary: all FFI and every `unsafe` block of the crate.
#[allow(unsafe_code)]
pub mod sys;

/// The daemon: command line, configuration, logging, processes.
pub mod daemon;
