//! Fuzzes the protocol path: the framer over `EvBuffer`s fed in arbitrary
//! pieces, checked against the reference after every step. The driver,
//! input layout included, is `rot13d::fuzzing::protocol`, shared with the
//! replay test (`tests/fuzz_replay.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rot13d::fuzzing::protocol(data) {
        panic!("{e}");
    }
});
