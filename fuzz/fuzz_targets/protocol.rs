//! Fuzzes the protocol path: `Framer` over `EvBuffer`s fed in arbitrary
//! pieces (copied with `add`, adopted with `add_vec`, moved in with
//! `add_buffer`), with the output taken out in arbitrary amounts through
//! `remove_buffer`, input compaction with `shrink` at arbitrary points, and
//! the result checked against `protocol::reference_output` after every step
//! (`protocol::drive_framing`, shared with the property test).
//!
//! Input layout: byte 0 picks `max_line` (1..=64), bytes 1..9 seed the
//! choice of piece sizes and operations, the rest is the client's stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rot13d::protocol::drive_framing;

/// xorshift64*: cheap, deterministic choices from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let max_line = 1 + data[0] as usize % 64;
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&data[1..9]);
    let mut rng = Rng(u64::from_le_bytes(seed) | 1);
    let steps = std::iter::from_fn(|| {
        Some((1 + rng.below(3 * max_line + 4), rng.below(3) as u8, rng.below(4) == 0, rng.next() as usize))
    });
    if let Err(e) = drive_framing(&data[9..], max_line, steps) {
        panic!("{e}");
    }
});
