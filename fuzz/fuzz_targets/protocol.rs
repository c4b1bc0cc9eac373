//! Fuzzes the protocol path: `Framer` over `EvBuffer`s fed in arbitrary
//! pieces (copied with `add`, adopted with `add_vec`, moved in with
//! `add_buffer`), with the output taken out in arbitrary amounts through
//! `remove_buffer`, input compaction with `shrink` at arbitrary points, and
//! the result checked against `protocol::reference_output` after every step.
//!
//! Input layout: byte 0 picks `max_line` (1..=64), bytes 1..9 seed the
//! choice of piece sizes and operations, the rest is the client's stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rot13d::reactor::evbuffer::EvBuffer;
use rot13d::protocol::{Framer, reference_output};

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

fn contents(buf: &EvBuffer) -> Vec<u8> {
    buf.chunks().flatten().copied().collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let max_line = 1 + data[0] as usize % 64;
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&data[1..9]);
    let mut rng = Rng(u64::from_le_bytes(seed) | 1);
    let stream = &data[9..];

    let mut framer = Framer::new(max_line);
    let mut input = EvBuffer::new();
    let mut output = EvBuffer::new();
    // What has left the output so far, as if written to the socket.
    let mut wire = EvBuffer::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = (1 + rng.below(3 * max_line + 4)).min(stream.len() - fed);
        let piece = &stream[fed..fed + n];
        match rng.below(3) {
            0 => input.add(piece),
            1 => input.add_vec(piece.to_vec()),
            _ => {
                let mut other = EvBuffer::new();
                other.add(piece);
                input.add_buffer(&mut other);
            }
        }
        fed += n;
        framer.process(&mut input, &mut output);
        assert!(input.len() <= max_line, "input bounded by max_line");
        if rng.below(4) == 0 {
            input.shrink();
        }
        let take = rng.below(output.len() + 1);
        output.remove_buffer(&mut wire, take);
        let mut sent = contents(&wire);
        sent.extend(contents(&output));
        assert_eq!(sent, reference_output(&stream[..fed], max_line, false));
    }
    framer.finish(&mut input, &mut output);
    assert!(input.is_empty());
    wire.add_buffer(&mut output);
    assert_eq!(contents(&wire), reference_output(stream, max_line, true));
});
