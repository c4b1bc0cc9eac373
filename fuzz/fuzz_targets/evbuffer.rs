//! Fuzzes `EvBuffer`: an interpreter of its operations (readln in every
//! end-of-line style, moves between buffers, the pool, socket reads and
//! writes) checked against a byte-vector model after every step. The
//! driver, op encoding included, is `rot13d::fuzzing::evbuffer`, shared
//! with the replay test (`tests/fuzz_replay.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = rot13d::fuzzing::evbuffer(data) {
        panic!("{e}");
    }
});
