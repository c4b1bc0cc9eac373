//! The send pattern and its expected image.
//!
//! A run never builds data on the fly: it sends slices of one pre-generated
//! buffer of whole lines (printable ASCII, mixed case, each ending in LF) and
//! checks every byte it gets back against `rot13` of the same buffer at the
//! same stream offset. Both buffers hold the pattern twice in a row, so any
//! slice of up to `size` bytes starting anywhere is contiguous and the check
//! is one `memcmp` per read.

/// A repeating set of lines and its rot13 image.
pub struct Pattern {
    /// Bytes per line, LF included.
    pub line_len: usize,
    /// Bytes in one period (a whole number of lines).
    pub size: usize,
    send: Vec<u8>,
    expect: Vec<u8>,
}

/// The first byte that differs from what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the byte inside the checked slice.
    pub index: usize,
    /// The byte the server should have sent.
    pub expected: u8,
    /// The byte it sent.
    pub got: u8,
}

/// rot13 of one byte: ASCII letters rotate by 13, everything else passes.
///
/// Deliberately not `rot13d::rot13`: the expected image must not come from
/// the code under test.
pub fn rot13_byte(c: u8) -> u8 {
    match c {
        b'a'..=b'm' | b'A'..=b'M' => c + 13,
        b'n'..=b'z' | b'N'..=b'Z' => c - 13,
        _ => c,
    }
}

/// The printable bytes lines are made of: both cases (so rot13 changes them),
/// digits, space, punctuation, and CR (which SPEC §1 says passes unchanged).
const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:!?-_+=*/()[]{}<>@#$%^&~'\"\r";

impl Pattern {
    /// Lines of `line_len` bytes (LF included, at least 1), enough of them
    /// to fill at least `min_size` bytes; `seed` varies the content.
    pub fn new(line_len: usize, min_size: usize, seed: u64) -> Pattern {
        assert!(line_len >= 1, "line_len includes the LF, so it is at least 1");
        let lines = min_size.div_ceil(line_len).max(1);
        let size = lines * line_len;
        let mut send = Vec::with_capacity(2 * size);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..lines {
            for _ in 0..line_len - 1 {
                // xorshift64: cheap, deterministic, good enough for text.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                send.push(ALPHABET[(x % ALPHABET.len() as u64) as usize]);
            }
            send.push(b'\n');
        }
        send.extend_from_within(..size);
        let expect = send.iter().map(|&c| rot13_byte(c)).collect();
        Pattern { line_len, size, send, expect }
    }

    /// Number of lines in one period.
    pub fn lines(&self) -> usize {
        self.size / self.line_len
    }

    /// Up to `len` (at most `size`) bytes to send at stream offset `off`.
    pub fn send_at(&self, off: u64, len: usize) -> &[u8] {
        let o = (off % self.size as u64) as usize;
        &self.send[o..o + len.min(self.size)]
    }

    /// What the server must answer for the bytes at stream offset `off`.
    pub fn expect_at(&self, off: u64, len: usize) -> &[u8] {
        let o = (off % self.size as u64) as usize;
        &self.expect[o..o + len.min(self.size)]
    }

    /// Checks `got` (at most `size` bytes) against the expected answer at
    /// stream offset `off`.
    pub fn check(&self, off: u64, got: &[u8]) -> Result<(), Mismatch> {
        assert!(got.len() <= self.size, "checked slice longer than the pattern period");
        let want = self.expect_at(off, got.len());
        if want == got {
            return Ok(());
        }
        let index = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
        Err(Mismatch { index, expected: want[index], got: got[index] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rot13_is_an_involution_on_all_bytes() {
        for c in 0..=255u8 {
            assert_eq!(rot13_byte(rot13_byte(c)), c);
            assert_eq!(rot13_byte(c) != c, c.is_ascii_alphabetic());
        }
    }

    #[test]
    fn pattern_is_whole_lines_and_wraps() {
        let p = Pattern::new(64, 1000, 7);
        assert_eq!(p.size % 64, 0);
        assert!(p.size >= 1000);
        let s = p.send_at(0, p.size);
        assert_eq!(s.iter().filter(|&&c| c == b'\n').count(), p.lines());
        assert!(s.chunks(64).all(|l| l[63] == b'\n' && !l[..63].contains(&b'\n')));
        assert_eq!(p.send_at(p.size as u64 + 5, 10), p.send_at(5, 10));
        assert_eq!(p.send_at(p.size as u64 - 3, 10).len(), 10);
    }

    #[test]
    fn check_detects_every_single_wrong_byte() {
        let p = Pattern::new(17, 300, 3);
        for off in [0u64, 5, p.size as u64 - 4, 3 * p.size as u64 + 11] {
            let good = p.expect_at(off, 100).to_vec();
            assert_eq!(p.check(off, &good), Ok(()));
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0x20;
                let m = p.check(off, &bad).unwrap_err();
                assert_eq!(m.index, i);
                assert_eq!(m.expected, good[i]);
                assert_eq!(m.got, good[i] ^ 0x20);
            }
        }
    }
}
