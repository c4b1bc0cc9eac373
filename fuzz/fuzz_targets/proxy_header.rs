//! Fuzzes the PROXY protocol header phase: arbitrary bytes in arbitrary
//! splits never panic and every split decides alike. The driver, input
//! layout included, is `rot13d::fuzzing::proxy_header`, shared with the
//! replay test (`tests/fuzz_replay.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rot13d::fuzzing::proxy_header(data) {
        panic!("{e}");
    }
});
