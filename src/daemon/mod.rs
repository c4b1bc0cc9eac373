//! The daemon: command line, configuration, logging, and the processes that serve.

pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod settings;

pub use error::Error;
