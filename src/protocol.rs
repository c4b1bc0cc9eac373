//! The rot13d line protocol (SPEC §1) as framing on `EvBuffer`s; no I/O.
//!
//! A [`Framer`](crate::protocol::Framer) turns the bytes of a connection's
//! input buffer into its responses in the output buffer: every complete
//! line becomes `rot13(line)` + LF, an overlong line is cut into pieces of
//! `max_line` bytes each followed by LF (a piece goes out once its
//! `max_line` bytes and one more byte of the same line are in, so a line of
//! exactly `max_line` bytes is never cut), and at end of input the partial
//! line goes out rotated, without LF
//! ([`Framer::finish`](crate::protocol::Framer::finish)). The output is a
//! pure function of the byte stream: it does not depend on how reads split
//! it.
//!
//! # The hot path
//!
//! `rot13(line) + LF == rot13(line + LF)`, because LF is not a letter. So
//! the response to a run of complete lines, none longer than `max_line`, is
//! the ROT13 of exactly those input bytes. `process` therefore:
//!
//! 1. finds the end `P` of the last complete line with reverse `memchr`s
//!    over windows of `max_line + 1` bytes (every line inside such a window
//!    is short enough, so one search per window proves the length limit),
//!    starting where the previous call stopped (a partial line is never
//!    rescanned);
//! 2. rotates `[0, P)` in place in the input chunks, counting its LFs on
//!    the way (the count is the number of lines answered);
//! 3. moves those bytes to the output with `EvBuffer::remove_buffer`, which
//!    moves whole chunks and copies at most the partial line left behind.
//!
//! No allocation and no per-line copy in the steady state. An overlong line
//! interrupts the run: the bytes before it go out as above, then each
//! `max_line` piece is rotated, moved and followed by an added LF.
//!
//! After `process` the input holds only the current partial line, at most
//! `max_line` bytes: per-connection input memory is bounded whatever the
//! client sends.
//!
//! # Use from a bufferevent
//!
//! ```ignore
//! // Readable (fd non-blocking; output below the high watermark):
//! loop {
//!     match input.read_from(fd, usize::MAX) {
//!         Ok(0) => {
//!             // EOF: flush the partial line, then write out and close.
//!             lines += framer.finish(&mut input, &mut output).lines;
//!             break;
//!         }
//!         Ok(_) => lines += framer.process(&mut input, &mut output).lines,
//!         Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
//!             input.shrink(); // drained: going idle, give the block back
//!             break;
//!         }
//!         Err(e) => return Err(e), // reset: drop the connection
//!     }
//!     if output.len() >= high_watermark { break; } // stop reading
//! }
//! // Writable (or right after processing):
//! while !output.is_empty() {
//!     match output.write_to(fd) {
//!         Ok(_) => {}
//!         Err(e) if e.kind() == io::ErrorKind::WouldBlock => break, // wait
//!         Err(e) => return Err(e),
//!     }
//! }
//! if output.is_empty() { output.shrink(); }
//! ```

use crate::reactor::evbuffer::EvBuffer;
use crate::rot13::rot13_in_place_count_lf;

/// The largest `max_line` a framer takes (the configuration allows 1 GiB).
pub const MAX_MAX_LINE: usize = 1 << 30;

/// The default `max_line` (SPEC §1).
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Line framing state of one connection.
///
/// The framer remembers how much of the partial line at the front of the
/// input it has already scanned, so only the input buffer it is used with
/// may be passed to it, and only bytes appended to that buffer (by reads)
/// may change it between calls. If the input is modified otherwise, call
/// [`reset`](Framer::reset).
#[derive(Clone, Debug)]
pub struct Framer {
    /// Longest line sent whole (LF excluded, CR included); at least 1 and
    /// at most [`MAX_MAX_LINE`], so its top bit is free: [`CUTTING`], set
    /// while the line at the front of the input is an overlong one whose
    /// first piece has gone out (a flag of its own would grow the framer,
    /// and every connection with it, by 4 bytes).
    max_line: u32,
    /// Bytes at the front of the input already known to hold no LF.
    scanned: u32,
}

/// The bit of `Framer::max_line` that says the current line was cut.
const CUTTING: u32 = 1 << 31;
const _: () = assert!(MAX_MAX_LINE < CUTTING as usize);

/// What one call of [`Framer::process`] or [`Framer::finish`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emitted {
    /// Lines and `max_line` pieces, each followed by LF (a partial line
    /// sent at the end of input is not counted).
    pub lines: usize,
    /// Overlong lines whose first piece went out: a line cut into `k`
    /// pieces counts once, in the call that sent its first one.
    pub cut: usize,
}

/// What one scan of the input found.
struct Scan {
    /// End (after its LF) of the last complete line of the run.
    run_end: usize,
    /// If the line starting at `run_end` is overlong: how many of its bytes
    /// are known to hold no LF (more than `max_line`).
    overlong: Option<usize>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(DEFAULT_MAX_LINE)
    }
}

impl Framer {
    /// A framer that cuts lines longer than `max_line` bytes (0 is taken
    /// as 1; configuration rejects 0 before this point).
    pub fn new(max_line: usize) -> Framer {
        Framer { max_line: max_line.clamp(1, MAX_MAX_LINE) as u32, scanned: 0 }
    }

    /// The longest line sent whole.
    pub fn max_line(&self) -> usize {
        (self.max_line & !CUTTING) as usize
    }

    /// Forgets the scan position (the input was changed behind the
    /// framer's back).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.max_line &= !CUTTING;
    }

    /// Bytes of the partial line waiting in `input` (its length after
    /// [`process`](Framer::process)); at most `max_line`.
    pub fn pending_partial(&self, input: &EvBuffer) -> usize {
        input.len()
    }

    /// Finds the run of complete, not overlong lines at the front of
    /// `input`, resuming the scan at `from` (bytes `[0, from)` hold no LF).
    ///
    /// Every LF need not be seen: all lines inside a window of
    /// `max_line + 1` bytes starting at a line start are short enough, so
    /// one reverse `memchr` per window finds the next line start to check
    /// from. With the default 16 KiB `max_line` that is a handful of scans
    /// per 64 KiB read whatever the line length; lines are counted later,
    /// while rotating (`emit`).
    fn scan(&self, input: &EvBuffer, from: usize) -> Scan {
        let max = self.max_line();
        let total = input.len();
        if from > max {
            return Scan { run_end: 0, overlong: Some(from) };
        }
        // Cursor: chunk `ci` starts at offset `base` and is the chunk where
        // the search resumes (at `pos`).
        let (mut ci, mut base) = (0usize, 0usize);
        let mut line_start: usize = 0;
        let mut pos = from;
        loop {
            let window_end = line_start.saturating_add(max).saturating_add(1).min(total);
            let found = if pos < window_end { rfind_lf(input, &mut ci, &mut base, pos, window_end) } else { None };
            match found {
                Some(lf) => {
                    line_start = lf + 1;
                    pos = line_start;
                }
                None if total - line_start > max => {
                    // `max + 1` bytes of this line and no LF among them.
                    return Scan { run_end: line_start, overlong: Some(max + 1) };
                }
                None => return Scan { run_end: line_start, overlong: None },
            }
        }
    }

    /// Rotates the first `n` bytes of `input` in place and moves them to
    /// `output`; returns how many LFs they hold.
    fn emit(input: &mut EvBuffer, output: &mut EvBuffer, n: usize) -> usize {
        let mut lines = 0;
        input.for_each_mut(0..n, |s| lines += rot13_in_place_count_lf(s));
        input.remove_buffer(output, n);
        lines
    }

    /// Moves the responses to every complete line of `input` (and every
    /// complete piece of an overlong line) to `output`; returns how many
    /// lines and pieces were emitted, and how many lines were cut. The
    /// partial line stays in `input`.
    pub fn process(&mut self, input: &mut EvBuffer, output: &mut EvBuffer) -> Emitted {
        if self.scanned as usize > input.len() {
            self.scanned = 0;
        }
        let mut emitted = Emitted::default();
        let max = self.max_line();
        // The usual interactive read: whole lines, each short enough, the
        // last one ending the input (at most `max + 1` bytes in all, ending
        // in LF). No scan: every byte goes out.
        let total = input.len();
        if total <= max + 1 && input.chunks().next_back().and_then(|c| c.last()) == Some(&b'\n') {
            emitted.lines = Self::emit(input, output, total);
            self.max_line &= !CUTTING;
            self.scanned = 0;
            return emitted;
        }
        loop {
            let scan = self.scan(input, self.scanned as usize);
            if scan.run_end > 0 {
                emitted.lines += Self::emit(input, output, scan.run_end);
                // The run's first line ended any cut one.
                self.max_line &= !CUTTING;
            }
            match scan.overlong {
                None => {
                    self.scanned = input.len().min(u32::MAX as usize) as u32;
                    return emitted;
                }
                Some(known) => {
                    Self::emit(input, output, max);
                    output.add(b"\n");
                    emitted.lines += 1;
                    if self.max_line & CUTTING == 0 {
                        emitted.cut += 1;
                        self.max_line |= CUTTING;
                    }
                    self.scanned = (known - max).min(u32::MAX as usize) as u32;
                }
            }
        }
    }

    /// End of input: emits what [`process`](Framer::process) would, then the
    /// partial line rotated and without LF. Returns what was emitted (the
    /// partial line is not counted in `lines`). `input` is empty after.
    pub fn finish(&mut self, input: &mut EvBuffer, output: &mut EvBuffer) -> Emitted {
        let emitted = self.process(input, output);
        let n = input.len();
        // The partial line holds no LF: nothing to count.
        Self::emit(input, output, n);
        self.scanned = 0;
        self.max_line &= !CUTTING;
        emitted
    }
}

/// SPEC §1 written byte by byte, slowly and obviously: the response to the
/// byte stream `input` with lines cut at `max_line` (0 taken as 1), followed
/// by the end of input if `eof`.
///
/// The reference model for tests, fuzzing and integration tests; the daemon
/// uses [`Framer`].
pub fn reference_output(input: &[u8], max_line: usize, eof: bool) -> Vec<u8> {
    let max_line = max_line.max(1);
    let mut out = Vec::with_capacity(input.len() + input.len() / max_line + 1);
    let mut line = 0usize;
    for &b in input {
        if b == b'\n' {
            out.push(b'\n');
            line = 0;
        } else {
            if line == max_line {
                out.push(b'\n');
                line = 0;
            }
            out.push(crate::rot13::rot13_byte(b));
            line += 1;
        }
    }
    if !eof {
        // The partial line is not sent yet.
        out.truncate(out.len() - line);
    }
    out
}

/// One step of [`drive_framing`]: feed up to `n` bytes (`how`: 0 `add`, 1
/// `add_vec`, else `add_buffer`), compact the input (`shrink`), then move
/// `take % (output length + 1)` bytes of output to the wire.
pub type FramingStep = (usize, u8, bool, usize);

/// Drives a [`Framer`] over `stream` as `steps` say, checking against
/// [`reference_output`] after every step and at the end: the shared driver
/// of the property test and the fuzz target. The first difference is the
/// error.
pub fn drive_framing(
    stream: &[u8],
    max_line: usize,
    mut steps: impl Iterator<Item = FramingStep>,
) -> Result<(), String> {
    fn contents(buf: &EvBuffer) -> Vec<u8> {
        buf.chunks().flatten().copied().collect()
    }
    let mut framer = Framer::new(max_line);
    let max_line = framer.max_line();
    let mut input = EvBuffer::new();
    let mut output = EvBuffer::new();
    // What has left the output so far, as if written to the socket.
    let mut wire = EvBuffer::new();
    let mut fed = 0;
    while fed < stream.len() {
        let Some((n, how, shrink, take)) = steps.next() else { break };
        let n = n.clamp(1, stream.len() - fed);
        let piece = &stream[fed..fed + n];
        match how {
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
        if input.len() > max_line {
            return Err(format!("{} bytes of input held, max_line {max_line}", input.len()));
        }
        if shrink {
            input.shrink();
        }
        let take = take % (output.len() + 1);
        output.remove_buffer(&mut wire, take);
        let mut sent = contents(&wire);
        sent.extend(contents(&output));
        if sent != reference_output(&stream[..fed], max_line, false) {
            return Err(format!("output after {fed} of {} bytes differs from the reference", stream.len()));
        }
    }
    framer.finish(&mut input, &mut output);
    if !input.is_empty() {
        return Err("input left after finish".into());
    }
    wire.add_buffer(&mut output);
    if contents(&wire) != reference_output(&stream[..fed], max_line, true) {
        return Err(format!("output at the end ({fed} bytes fed) differs from the reference"));
    }
    Ok(())
}

/// The last LF in `[lo, hi)` of `input`, searching backwards from `hi`.
///
/// `(ci, base)` is a cursor: chunk `ci` starts at offset `base` and holds
/// `lo` (or ends at it). It is moved forward to the chunk holding the LF
/// found, so a scan over the whole input visits each chunk O(1) times.
fn rfind_lf(input: &EvBuffer, ci: &mut usize, base: &mut usize, lo: usize, hi: usize) -> Option<usize> {
    // Walk forward to the chunk holding `hi - 1`, remembering the way.
    let (mut last, mut last_base) = (*ci, *base);
    while let Some(s) = input.chunk(last) {
        if last_base + s.len() >= hi {
            break;
        }
        last_base += s.len();
        last += 1;
    }
    // Then search backwards, chunk by chunk, down to `lo`.
    let (mut k, mut kbase) = (last, last_base);
    loop {
        let s = input.chunk(k)?;
        let a = lo.max(kbase) - kbase;
        let b = hi.min(kbase + s.len()) - kbase;
        if a < b
            && let Some(i) = memchr::memrchr(b'\n', &s[a..b])
        {
            *ci = k;
            *base = kbase;
            return Some(kbase + a + i);
        }
        if kbase <= lo || k == 0 {
            // Nothing in [lo, hi): resume later searches where this ended.
            *ci = last;
            *base = last_base;
            return None;
        }
        k -= 1;
        kbase -= input.chunk(k)?.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(input: &[u8], max_line: usize, eof: bool) -> Vec<u8> {
        reference_output(input, max_line, eof)
    }

    fn contents(buf: &EvBuffer) -> Vec<u8> {
        let mut v = Vec::new();
        for s in buf.chunks() {
            v.extend_from_slice(s);
        }
        v
    }

    /// Feeds `parts` one by one, checking the output after each against
    /// the reference, then EOF; returns the final output.
    fn run(parts: &[&[u8]], max_line: usize) -> Vec<u8> {
        let mut framer = Framer::new(max_line);
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        let mut seen = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            seen.extend_from_slice(p);
            // Copy into free space, or keep the piece as its own chunk, so
            // scans cross chunk boundaries.
            if i % 3 == 1 {
                input.add(p)
            } else {
                input.add_vec(p.to_vec())
            }
            framer.process(&mut input, &mut output);
            assert_eq!(contents(&output), reference(&seen, max_line, false), "after {seen:?}");
            assert!(input.len() <= framer.max_line());
        }
        framer.finish(&mut input, &mut output);
        assert!(input.is_empty());
        let out = contents(&output);
        assert_eq!(out, reference(&seen, max_line, true));
        out
    }

    fn letters(n: usize) -> Vec<u8> {
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn spec_examples() {
        assert_eq!(run(&[b"Hi\r\n"], 100), b"Uv\r\n");
        assert_eq!(run(&[b"Hello\nWorld\n"], 100), b"Uryyb\nJbeyq\n");
        assert_eq!(run(&[b"H", b"i\r", b"\n"], 100), b"Uv\r\n");
        assert_eq!(run(&[b"\n\n"], 100), b"\n\n");
        assert_eq!(run(&[b"no newline"], 100), b"ab arjyvar");
        assert_eq!(run(&[], 100), b"");
    }

    /// The whole-lines shortcut of `process` (a read of at most
    /// `max_line + 1` bytes ending in LF) at its edges: a line of exactly
    /// `max_line` bytes plus LF goes out whole, one byte more is cut, and a
    /// read that ends a line cut earlier ends the cut (counted once).
    #[test]
    fn whole_lines_shortcut_keeps_the_cut_rules() {
        let max = 8;
        let mut exact = letters(max);
        exact.push(b'\n');
        assert_eq!(run(&[&exact], max), reference(&exact, max, true));
        let mut over = letters(max + 1);
        over.push(b'\n');
        assert_eq!(run(&[&over], max), reference(&over, max, true));
        let mut f = Framer::new(max);
        let (mut input, mut output) = (EvBuffer::new(), EvBuffer::new());
        input.add(&letters(max + 3));
        assert_eq!(f.process(&mut input, &mut output), Emitted { lines: 1, cut: 1 });
        input.add(b"xy\nab\n");
        assert_eq!(contents(&input).len(), 9, "the shortcut's case: max + 1 bytes ending in LF");
        assert_eq!(f.process(&mut input, &mut output), Emitted { lines: 2, cut: 0 });
        input.add(&letters(max + 3));
        assert_eq!(f.process(&mut input, &mut output), Emitted { lines: 1, cut: 1 }, "a new cut counts again");
        let mut all = letters(max + 3);
        all.extend_from_slice(b"xy\nab\n");
        all.extend_from_slice(&letters(max + 3));
        assert_eq!(contents(&output), reference(&all, max, false));
    }

    #[test]
    fn process_counts_lines_and_leaves_the_partial_line() {
        let mut f = Framer::new(100);
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        input.add(b"ab\ncd\nef");
        assert_eq!(f.process(&mut input, &mut output).lines, 2);
        assert_eq!(contents(&output), b"no\npq\n");
        assert_eq!(contents(&input), b"ef");
        assert_eq!(f.pending_partial(&input), 2);
        input.add(b"\n");
        assert_eq!(f.process(&mut input, &mut output), Emitted { lines: 1, cut: 0 });
        assert_eq!(contents(&output), b"no\npq\nrs\n");
        assert_eq!(f.finish(&mut input, &mut output), Emitted::default());
    }

    #[test]
    fn max_line_boundaries() {
        for max in [1usize, 2, 3, 4, 100] {
            for len in [max - 1, max, max + 1, 2 * max, 2 * max + 1, 3 * max + 2] {
                let line = letters(len);
                let mut with_lf = line.clone();
                with_lf.push(b'\n');
                // Whole, then byte by byte, with and without LF.
                run(&[&with_lf], max);
                run(&[&line], max);
                let bytes: Vec<&[u8]> = with_lf.chunks(1).collect();
                run(&bytes, max);
                let bytes: Vec<&[u8]> = line.chunks(1).collect();
                run(&bytes, max);
            }
        }
    }

    /// Every line longer than max_line is counted as cut once, in the call
    /// that sends its first piece, however the input is split, with or
    /// without its LF (at EOF); the framer stays 8 bytes.
    #[test]
    fn cut_lines_are_counted_once_each() {
        assert_eq!(std::mem::size_of::<Framer>(), 8);
        let model = |input: &[u8], max: usize| input.split(|b| *b == b'\n').filter(|l| l.len() > max).count();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for max in [1usize, 2, 4, 7] {
            for _ in 0..200 {
                let input: Vec<u8> =
                    (0..next(40)).map(|_| if next(5) == 0 { b'\n' } else { b'a' + next(26) as u8 }).collect();
                let mut f = Framer::new(max);
                let (mut i, mut o) = (EvBuffer::new(), EvBuffer::new());
                let (mut at, mut cut, mut lines) = (0, 0, 0);
                while at < input.len() {
                    let n = (1 + next(6)).min(input.len() - at);
                    i.add(&input[at..at + n]);
                    at += n;
                    let e = f.process(&mut i, &mut o);
                    cut += e.cut;
                    lines += e.lines;
                }
                let e = f.finish(&mut i, &mut o);
                cut += e.cut;
                lines += e.lines;
                assert_eq!(cut, model(&input, max), "max {max}, input {:?}", String::from_utf8_lossy(&input));
                assert_eq!(f.max_line(), max, "the flag never leaks into max_line");
                let out = contents(&o);
                assert_eq!(lines, out.iter().filter(|b| **b == b'\n').count());
            }
        }
        // A line of exactly 2 * max: cut once, in the call that saw max + 1 bytes.
        let mut f = Framer::new(4);
        let (mut i, mut o) = (EvBuffer::new(), EvBuffer::new());
        i.add(b"abcd");
        assert_eq!(f.process(&mut i, &mut o), Emitted { lines: 0, cut: 0 });
        i.add(b"e");
        assert_eq!(f.process(&mut i, &mut o), Emitted { lines: 1, cut: 1 });
        i.add(b"fghijkl");
        assert_eq!(f.process(&mut i, &mut o), Emitted { lines: 1, cut: 0 }, "the same line, cut again");
        i.add(b"\nabcde");
        assert_eq!(f.process(&mut i, &mut o), Emitted { lines: 2, cut: 1 }, "its end, then a new overlong line");
        f.reset();
        assert_eq!(f.max_line(), 4);
    }

    #[test]
    fn huge_max_line_does_not_overflow() {
        assert_eq!(run(&[b"ab\ncd", b"e\n"], usize::MAX), b"no\npqr\n");
        assert_eq!(Framer::new(0).max_line(), 1);
    }

    #[test]
    fn exact_max_line_is_never_cut() {
        let mut f = Framer::new(4);
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        input.add(b"abcd");
        assert_eq!(f.process(&mut input, &mut output).lines, 0);
        assert!(output.is_empty(), "4 bytes of a 4-byte max line wait");
        input.add(b"\n");
        assert_eq!(f.process(&mut input, &mut output).lines, 1);
        assert_eq!(contents(&output), b"nopq\n");
    }

    #[test]
    fn piece_goes_out_when_one_more_byte_arrives() {
        let mut f = Framer::new(4);
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        input.add(b"abcd");
        f.process(&mut input, &mut output);
        assert!(output.is_empty());
        input.add(b"\r");
        assert_eq!(f.process(&mut input, &mut output).lines, 1);
        assert_eq!(contents(&output), b"nopq\n");
        assert_eq!(contents(&input), b"\r");
        input.add(b"\n");
        f.process(&mut input, &mut output);
        assert_eq!(contents(&output), b"nopq\n\r\n");
    }

    #[test]
    fn long_line_in_one_read_is_cut_in_pieces() {
        let line = letters(10 * 100 + 7);
        let out = run(&[&line, b"\nxy\n"], 100);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 11 + 1);
    }

    #[test]
    fn eof_tails() {
        assert_eq!(run(&[b"abc\nde"], 100), b"nop\nqr");
        assert_eq!(run(&[b"abc\nde\r"], 100), b"nop\nqr\r");
        assert_eq!(run(&[b"abcde"], 2), b"no\npq\nr");
        assert_eq!(run(&[b"abcd"], 2), b"no\npq");
    }

    #[test]
    fn bulk_input_spanning_many_reads() {
        // Many 64-byte lines through read-sized chunks: the zero-copy path.
        let mut data = Vec::new();
        for i in 0..5000 {
            let mut l = letters(63);
            l[0] = b'0' + (i % 10) as u8;
            data.extend_from_slice(&l);
            data.push(b'\n');
        }
        let parts: Vec<&[u8]> = data.chunks(65536).collect();
        run(&parts, DEFAULT_MAX_LINE);
        let parts: Vec<&[u8]> = data.chunks(1000).collect();
        run(&parts, 100);
    }

    #[test]
    fn idle_connection_memory_is_small() -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (client, server) = crate::sys::socketpair()?;
        let mut data = Vec::new();
        for _ in 0..2000 {
            data.extend_from_slice(b"The quick brown fox jumps over the lazy dog\r\n");
        }
        data.extend_from_slice(b"partial line, no LF yet");
        let mut framer = Framer::default();
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        let mut sent = 0;
        let mut echoed = 0;
        let mut scratch = vec![0u8; 1 << 16];
        let expected = reference_output(&data, DEFAULT_MAX_LINE, false);
        while sent < data.len() || echoed < expected.len() {
            if sent < data.len()
                && let Ok(n) = crate::sys::write(client.as_raw_fd(), &data[sent..])
            {
                sent += n;
            }
            while let Ok(n) = input.read_from(server.as_raw_fd(), usize::MAX) {
                assert!(n > 0);
                framer.process(&mut input, &mut output);
            }
            while !output.is_empty() && output.write_to(server.as_raw_fd()).is_ok() {}
            if let Ok(n) = crate::sys::read(client.as_raw_fd(), &mut scratch) {
                echoed += n;
            }
        }
        assert_eq!(echoed, expected.len());
        assert_eq!(input.len(), 23);
        // Going idle: compact both sides.
        input.shrink();
        output.shrink();
        let total = input.heap_size()
            + output.heap_size()
            + 2 * std::mem::size_of::<EvBuffer>()
            + std::mem::size_of::<Framer>();
        assert!(total < 512, "idle connection holds {total} bytes");
        assert_eq!(output.heap_size(), 0);
        // And it still works afterwards.
        crate::sys::write(client.as_raw_fd(), b"!\n")?;
        input.read_from(server.as_raw_fd(), usize::MAX)?;
        assert_eq!(framer.process(&mut input, &mut output).lines, 1);
        assert_eq!(contents(&output), b"cnegvny yvar, ab YS lrg!\n");
        Ok(())
    }

    #[test]
    fn memory_follows_bytes_when_the_client_does_not_read() -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (client, server) = crate::sys::socketpair()?;
        let mut framer = Framer::default();
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        // Tiny lines, each in its own read (each read lands in a 64 KiB
        // block), answers never written.
        for _ in 0..2000 {
            crate::sys::write(client.as_raw_fd(), b"hello\n")?;
            input.read_from(server.as_raw_fd(), usize::MAX)?;
            framer.process(&mut input, &mut output);
        }
        assert_eq!(output.len(), 2000 * 6);
        assert!(output.heap_size() <= 2 * output.len() + 2 * 65536, "heap {}", output.heap_size());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_split_gives_the_reference_output(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b'Z'), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..24),
            max_line in 1usize..12,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&data[at..c]);
                at = c;
            }
            parts.push(&data[at..]);
            let split = run(&parts, max_line);
            let whole = run(&[&data], max_line);
            prop_assert_eq!(split, whole);
        }

        /// The driver of `fuzz/fuzz_targets/protocol.rs`: pieces fed three
        /// ways, input compacted and output taken out at random points.
        #[test]
        fn framing_with_moves_and_shrinks(
            stream in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'q'), any::<u8>()], 0..400),
            steps in proptest::collection::vec((1usize..40, 0u8..3, any::<bool>(), any::<u16>()), 1..60),
            max_line in 1usize..20,
        ) {
            let steps = steps.into_iter().map(|(n, how, shrink, take)| (n, how, shrink, take as usize)).cycle();
            prop_assert_eq!(drive_framing(&stream, max_line, steps), Ok(()));
        }
    }
}
