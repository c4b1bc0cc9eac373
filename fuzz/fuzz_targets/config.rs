//! Fuzzes the configuration loader: arbitrary text as a configuration file
//! never panics, a refusal names the file (and a line within it), and an
//! accepted configuration prints as TOML that loads back alike. The driver
//! is `rot13d::fuzzing::config`, shared with the replay test
//! (`tests/fuzz_replay.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rot13d::fuzzing::config(data) {
        panic!("{e}");
    }
});
