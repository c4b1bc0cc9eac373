//! Fuzzes the admin endpoint's request decision: arbitrary bytes in
//! arbitrary splits never panic, every split decides alike, and each
//! decision's response is well-formed HTTP/1.1. The driver, input layout
//! included, is `rot13d::fuzzing::admin_request`, shared with the replay
//! test (`tests/fuzz_replay.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rot13d::fuzzing::admin_request(data) {
        panic!("{e}");
    }
});
