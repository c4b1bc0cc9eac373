//! Unit tests of `EvBuffer`: each operation, the readln styles, fd I/O, and
//! a model test of random operation sequences.

use super::*;
use proptest::prelude::*;
use std::os::fd::{AsRawFd, OwnedFd};

fn contents(buf: &EvBuffer) -> Vec<u8> {
    let mut v = Vec::new();
    for s in buf.chunks() {
        assert!(!s.is_empty(), "no empty chunk is queued");
        v.extend_from_slice(s);
    }
    assert_eq!(v.len(), buf.len());
    v
}

/// A buffer holding `parts`, one chunk each (add_vec keeps boundaries).
fn chunked(parts: &[&[u8]]) -> EvBuffer {
    let mut b = EvBuffer::new();
    for p in parts {
        b.add_vec(p.to_vec());
    }
    b
}

#[test]
fn new_is_allocation_free() {
    let b = EvBuffer::new();
    assert_eq!(b.heap_size(), 0);
    assert!(b.is_empty());
    assert_eq!(b.chunk_count(), 0);
    assert!(std::mem::size_of::<EvBuffer>() <= 64);
}

#[test]
fn add_drain_remove_copyout() {
    let mut b = EvBuffer::new();
    b.add(b"hello ");
    b.add_vec(b"big ".to_vec());
    b.add(b"world");
    assert_eq!(contents(&b), b"hello big world");
    let mut peek = [0u8; 5];
    assert_eq!(b.copyout(&mut peek), 5);
    assert_eq!(&peek, b"hello");
    b.drain(6);
    let mut out = [0u8; 32];
    let n = b.remove(&mut out);
    assert_eq!(&out[..n], b"big world");
    assert!(b.is_empty());
    assert_eq!(b.remove(&mut out), 0);
    b.drain(10);
    assert!(b.is_empty());
}

#[test]
fn prepend_uses_front_room() {
    let mut b = EvBuffer::new();
    b.add(b"world");
    b.prepend(b"hello ");
    b.prepend(b">");
    assert_eq!(contents(&b), b">hello world");
    b.drain(3);
    b.prepend(b"HE");
    assert_eq!(contents(&b), b"HEllo world");
}

#[test]
fn search_across_chunks() {
    let b = chunked(&[b"ab", b"c\r", b"\nabcab", b"c"]);
    assert_eq!(b.search(b"abc", 0), Some(0));
    assert_eq!(b.search(b"abc", 1), Some(5));
    assert_eq!(b.search(b"abc", 6), Some(8));
    assert_eq!(b.search(b"\r\n", 0), Some(3));
    assert_eq!(b.search(b"c\r\na", 0), Some(2));
    assert_eq!(b.search(b"abcd", 0), None);
    assert_eq!(b.search(b"", 4), Some(4));
    assert_eq!(b.search(b"", 11), Some(11));
    assert_eq!(b.search(b"", 12), None);
    assert_eq!(b.search(b"c", 9), Some(10));
}

#[test]
fn readln_cr_and_lf_in_different_chunks() {
    for eol in [Eol::Crlf, Eol::CrlfStrict, Eol::Any] {
        let mut b = chunked(&[b"abc\r", b"\nxyz"]);
        assert_eq!(b.readln(eol).as_deref(), Some(&b"abc"[..]), "{eol:?}");
        assert_eq!(contents(&b), b"xyz");
    }
    let mut b = chunked(&[b"abc\r", b"\nxyz"]);
    assert_eq!(b.readln(Eol::Lf).as_deref(), Some(&b"abc\r"[..]));
    let mut b = chunked(&[b"abc\r", b"\r\n", b"\nx"]);
    assert_eq!(b.readln(Eol::Any).as_deref(), Some(&b"abc"[..]));
    assert_eq!(contents(&b), b"x");
}

#[test]
fn readln_styles_like_libevent() {
    let mut b = chunked(&[b"a\rb\r\r\nc\nd\0e"]);
    // CRLF: the first LF; one CR before it belongs to the terminator.
    assert_eq!(b.readln(Eol::Crlf).as_deref(), Some(&b"a\rb\r"[..]));
    assert_eq!(b.readln(Eol::Crlf).as_deref(), Some(&b"c"[..]));
    assert_eq!(b.readln(Eol::Crlf), None);
    assert_eq!(b.readln(Eol::Nul).as_deref(), Some(&b"d"[..]));
    assert_eq!(b.readln(Eol::Lf), None);
    assert_eq!(contents(&b), b"e");

    let mut b = chunked(&[b"a\nb\r\nc\r"]);
    assert_eq!(b.readln(Eol::CrlfStrict).as_deref(), Some(&b"a\nb"[..]));
    assert_eq!(b.readln(Eol::CrlfStrict), None);
    // ANY: a CR at the very end already ends the line (libevent quirk).
    assert_eq!(b.readln(Eol::Any).as_deref(), Some(&b"c"[..]));
    assert!(b.is_empty());

    let mut b = chunked(&[b"\n\r\nx\n"]);
    assert_eq!(b.readln(Eol::Any).as_deref(), Some(&b""[..]));
    assert_eq!(b.readln(Eol::Any).as_deref(), Some(&b"x"[..]));
    assert_eq!(b.readln(Eol::Any), None);
}

#[test]
fn readln_cursor_survives_appends_only() {
    let mut b = EvBuffer::new();
    b.add(b"ab");
    assert_eq!(b.readln(Eol::CrlfStrict), None);
    b.add(b"c\r");
    assert_eq!(b.readln(Eol::CrlfStrict), None);
    b.add(b"\nd\n");
    assert_eq!(b.readln(Eol::CrlfStrict).as_deref(), Some(&b"abc"[..]));
    // A miss for one style says nothing about another.
    assert_eq!(b.readln(Eol::Nul), None);
    assert_eq!(b.readln(Eol::Lf).as_deref(), Some(&b"d"[..]));
    // A change in front of the cursor resets it.
    b.add(b"xyz");
    assert_eq!(b.readln(Eol::Lf), None);
    b.prepend(b"\n");
    assert_eq!(b.readln(Eol::Lf).as_deref(), Some(&b""[..]));
    assert_eq!(b.readln(Eol::Lf), None);
    b.for_each_mut(0..1, |s| s[0] = b'\n');
    assert_eq!(b.readln(Eol::Lf).as_deref(), Some(&b""[..]));
    assert_eq!(contents(&b), b"yz");
}

#[test]
fn readln_with_lends_without_copy_and_gathers_spanning_lines() {
    let mut b = chunked(&[b"one\ntw", b"o\n"]);
    assert_eq!(b.readln_with(Eol::Lf, |l| l.to_vec()), Some(b"one".to_vec()));
    assert_eq!(b.readln_with(Eol::Lf, |l| l.len()), Some(3));
    assert_eq!(b.readln_with(Eol::Lf, |l| l.len()), None);
    assert!(b.is_empty());
}

#[test]
fn add_buffer_and_remove_buffer_move_chunks() {
    let mut a = chunked(&[b"0123", b"4567"]);
    let mut b = chunked(&[b"89"]);
    a.add_buffer(&mut b);
    assert!(b.is_empty());
    assert_eq!(contents(&a), b"0123456789");
    assert_eq!(a.chunk_count(), 3);

    let mut dst = EvBuffer::new();
    assert_eq!(a.remove_buffer(&mut dst, 4), 4);
    assert_eq!(dst.chunk_count(), 1, "a whole chunk moves");
    // Cut most of a chunk: the chunk moves, the rest is copied behind.
    assert_eq!(a.remove_buffer(&mut dst, 3), 3);
    assert_eq!(contents(&dst), b"0123456");
    assert_eq!(contents(&a), b"789");
    // Cut a little of a chunk: that little is copied.
    assert_eq!(a.remove_buffer(&mut dst, 1), 1);
    assert_eq!(contents(&dst), b"01234567");
    assert_eq!(a.remove_buffer(&mut dst, 100), 2);
    assert_eq!(contents(&dst), b"0123456789");
    assert!(a.is_empty());
}

#[test]
fn for_each_mut_spans_chunks() {
    let mut b = chunked(&[b"abc", b"def", b"ghi"]);
    b.for_each_mut(2..7, |s| s.make_ascii_uppercase());
    assert_eq!(contents(&b), b"abCDEFGhi");
    b.for_each_mut(7..100, |s| s.make_ascii_uppercase());
    assert_eq!(contents(&b), b"abCDEFGHI");
    b.for_each_mut(5..5, |_| panic!("empty range"));
}

#[test]
fn pullup_gathers() {
    let mut b = chunked(&[b"ab", b"cd", b"ef"]);
    assert_eq!(b.pullup(3), b"abc");
    assert_eq!(contents(&b), b"abcdef");
    assert_eq!(b.pullup(100), b"abcdef");
    assert_eq!(b.chunk_count(), 1);
}

#[test]
fn shrink_releases_memory() {
    let mut b = EvBuffer::new();
    b.add(&[7u8; 10_000]);
    b.drain(9_990);
    assert!(b.heap_size() > 1000);
    b.shrink();
    assert_eq!(contents(&b), [7u8; 10]);
    assert!(b.heap_size() <= 10 + 64, "heap {}", b.heap_size());
    b.shrink();
    assert!(b.heap_size() <= 10 + 64);
    b.drain(10);
    b.shrink();
    assert_eq!(b.heap_size(), 0);
}

#[test]
fn compact_packs_bytes_into_full_blocks() {
    // A drained front, blocks with free tails, tiny chunks between.
    let mut b = EvBuffer::new();
    let mut model = Vec::new();
    for i in 0..6u8 {
        let mut block = vec![0u8; 4096];
        block.iter_mut().enumerate().for_each(|(j, x)| *x = i.wrapping_mul(31).wrapping_add(j as u8));
        let keep = 4096 - 700 * usize::from(i % 3);
        b.add_vec(block[..keep].to_vec());
        model.extend_from_slice(&block[..keep]);
        b.add(&[i; 3]);
        model.extend_from_slice(&[i; 3]);
    }
    b.drain(3000);
    model.drain(..3000);
    let before = b.heap_size();
    b.compact();
    assert_eq!(contents(&b), model);
    assert_eq!(b.chunks.iter().map(|c| c.data.len()).sum::<usize>(), model.len(), "every block full");
    assert!(b.heap_size() < before, "{} >= {before}", b.heap_size());
    // Still a working queue: more bytes append after the packed ones.
    b.add(b"tail");
    model.extend_from_slice(b"tail");
    assert_eq!(contents(&b), model);
    // Nothing queued: nothing held.
    b.drain(b.len());
    b.compact();
    assert_eq!(b.heap_size(), 0);
}

#[test]
fn socket_round_trip_and_pool_reuse() -> io::Result<()> {
    let (a, b) = sys::socketpair()?;
    trim_pool();
    let mut out = EvBuffer::new();
    for i in 0..100u8 {
        out.add_vec(vec![i; 100]);
    }
    let sent = out.write_to(a.as_raw_fd())?;
    assert_eq!(sent, 10_000);
    assert!(out.is_empty());
    let mut inp = EvBuffer::new();
    let mut got = 0;
    while got < sent {
        got += inp.read_from(b.as_raw_fd(), usize::MAX)?;
    }
    let data = contents(&inp);
    assert_eq!(data.len(), 10_000);
    assert!(data.chunks(100).enumerate().all(|(i, c)| c.iter().all(|&x| x == i as u8)));
    // Nothing more: WouldBlock, not EOF.
    let e = inp.read_from(b.as_raw_fd(), 10).err().map(|e| e.kind());
    assert_eq!(e, Some(io::ErrorKind::WouldBlock));
    assert_eq!(inp.read_from(b.as_raw_fd(), 0).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    // Steady state: the read chunk goes out and back to the pool.
    out.add_buffer(&mut inp);
    out.write_to(a.as_raw_fd())?;
    assert!(pooled_chunks() >= 1);
    let before = pooled_chunks();
    let mut got = 0;
    while got < 10_000 {
        got += inp.read_from(b.as_raw_fd(), usize::MAX)?;
    }
    assert_eq!(pooled_chunks(), before - 1, "the read took a pooled chunk");
    drop(a);
    inp.drain(10_000);
    assert_eq!(inp.read_from(b.as_raw_fd(), 10)?, 0, "EOF");
    Ok(())
}

#[test]
fn partial_writes_drain_exactly_what_was_written() -> io::Result<()> {
    let (a, b) = sys::socketpair()?;
    let mut out = EvBuffer::new();
    let total = 64 * 65536;
    for i in 0..64u32 {
        out.add_vec((0..65536u32).map(|j| (i * 7 + j) as u8).collect());
    }
    let expected = contents(&out);
    let mut written = 0;
    loop {
        match out.write_to(a.as_raw_fd()) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    assert!(written > 0 && written < total, "the socket filled up");
    assert_eq!(written + out.len(), total);
    let mut got = EvBuffer::new();
    loop {
        // Drain the peer, then write the rest as room appears.
        while let Ok(n) = got.read_from(b.as_raw_fd(), usize::MAX) {
            assert!(n > 0);
        }
        if out.is_empty() && got.len() == total {
            break;
        }
        let _ = out.write_to(a.as_raw_fd());
    }
    assert_eq!(contents(&got), expected);
    Ok(())
}

#[test]
fn write_to_a_pipe_falls_back_to_writev() -> io::Result<()> {
    let (r, w) = sys::pipe()?;
    let mut out = chunked(&[b"ab", b"cd"]);
    assert_eq!(out.write_to(w.as_raw_fd())?, 4);
    let mut buf = [0u8; 8];
    assert_eq!(sys::read(r.as_raw_fd(), &mut buf)?, 4);
    assert_eq!(&buf[..4], b"abcd");
    Ok(())
}

#[test]
fn write_to_many_chunks_is_capped_at_iov_max() -> io::Result<()> {
    let (a, b) = sys::socketpair()?;
    let mut out = EvBuffer::new();
    for _ in 0..(sys::IOV_MAX + 10) {
        out.add_vec(vec![b'x']);
    }
    let n = out.write_to(a.as_raw_fd())?;
    assert_eq!(n, sys::IOV_MAX);
    assert_eq!(out.len(), 10);
    let mut inp = EvBuffer::new();
    assert_eq!(inp.read_from(b.as_raw_fd(), usize::MAX)?, n);
    Ok(())
}

// ---- model-based property test -------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Add(Vec<u8>),
    AddWith(Vec<u8>),
    AddVec(Vec<u8>),
    Prepend(Vec<u8>),
    Remove(usize),
    Drain(usize),
    Copyout(usize),
    Search(Vec<u8>, usize),
    SearchByte(u8, usize),
    ByteAt(usize),
    Readln(Eol),
    ReadlnWith(Eol),
    AddBuffer(Vec<Vec<u8>>),
    RemoveBuffer(usize),
    ForEachMut(usize, usize),
    Pullup(usize),
    Shrink,
    Compact,
    SetReadSize(usize),
    ReadFrom(Vec<u8>, usize),
    WriteTo,
    WriteAtmost(usize),
}

/// Bytes drawn mostly from a small alphabet so that lines and matches
/// happen often.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(vec![b'a', b'b', b'\r', b'\n', 0u8]),
        1 => any::<u8>(),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(byte(), 0..max)
}

fn eol() -> impl Strategy<Value = Eol> {
    prop::sample::select(vec![Eol::Any, Eol::Crlf, Eol::CrlfStrict, Eol::Lf, Eol::Nul])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => bytes(40).prop_map(Op::Add),
        1 => bytes(40).prop_map(Op::AddWith),
        4 => bytes(40).prop_map(Op::AddVec),
        1 => bytes(20).prop_map(Op::Prepend),
        1 => (0usize..50).prop_map(Op::Remove),
        1 => (0usize..50).prop_map(Op::Drain),
        1 => (0usize..50).prop_map(Op::Copyout),
        2 => (proptest::collection::vec(byte(), 0..4), 0usize..60).prop_map(|(n, f)| Op::Search(n, f)),
        1 => (byte(), 0usize..60).prop_map(|(b, f)| Op::SearchByte(b, f)),
        1 => (0usize..60).prop_map(Op::ByteAt),
        3 => eol().prop_map(Op::Readln),
        2 => eol().prop_map(Op::ReadlnWith),
        1 => proptest::collection::vec(bytes(20), 0..4).prop_map(Op::AddBuffer),
        2 => (0usize..60).prop_map(Op::RemoveBuffer),
        1 => (0usize..60, 0usize..60).prop_map(|(a, b)| Op::ForEachMut(a, b)),
        1 => (0usize..60).prop_map(Op::Pullup),
        1 => Just(Op::Shrink),
        1 => Just(Op::Compact),
        1 => (0usize..200).prop_map(Op::SetReadSize),
        2 => (bytes(300), 1usize..400).prop_map(|(d, m)| Op::ReadFrom(d, m)),
        1 => Just(Op::WriteTo),
        1 => (0usize..60).prop_map(Op::WriteAtmost),
    ]
}

/// libevent's `evbuffer_search_eol`, written naively on the model.
fn model_eol(m: &[u8], eol: Eol) -> Option<(usize, usize)> {
    let pos = |b: u8| m.iter().position(|&x| x == b);
    match eol {
        Eol::Lf => pos(b'\n').map(|i| (i, 1)),
        Eol::Nul => pos(0).map(|i| (i, 1)),
        Eol::CrlfStrict => m.windows(2).position(|w| w == b"\r\n").map(|i| (i, 2)),
        Eol::Crlf => {
            // libevent: walk CR/LF bytes; LF ends, CR LF ends, lone CR skipped.
            let mut i = 0;
            while i < m.len() {
                if m[i] == b'\n' {
                    return Some((i, 1));
                }
                if m[i] == b'\r' && m.get(i + 1) == Some(&b'\n') {
                    return Some((i, 2));
                }
                i += 1;
            }
            None
        }
        Eol::Any => {
            let i = m.iter().position(|&x| x == b'\r' || x == b'\n')?;
            let run = m[i..].iter().take_while(|&&x| x == b'\r' || x == b'\n').count();
            Some((i, run))
        }
    }
}

struct Pair {
    a: OwnedFd,
    b: OwnedFd,
    /// Bytes written to `b` not yet read from `a`.
    in_flight: VecDeque<u8>,
}

fn apply(buf: &mut EvBuffer, model: &mut Vec<u8>, op: Op, pair: &mut Pair) {
    match op {
        Op::Add(d) => {
            buf.add(&d);
            model.extend_from_slice(&d);
        }
        Op::AddWith(d) => {
            buf.add_with(&d, |s| s.iter_mut().for_each(|x| *x ^= 0x20));
            model.extend(d.iter().map(|x| x ^ 0x20));
        }
        Op::AddVec(d) => {
            model.extend_from_slice(&d);
            buf.add_vec(d);
        }
        Op::Prepend(d) => {
            buf.prepend(&d);
            model.splice(0..0, d);
        }
        Op::Remove(n) => {
            let mut out = vec![0; n];
            let k = buf.remove(&mut out);
            assert_eq!(k, n.min(model.len()));
            assert_eq!(&out[..k], &model[..k]);
            model.drain(..k);
        }
        Op::Drain(n) => {
            buf.drain(n);
            model.drain(..n.min(model.len()));
        }
        Op::Copyout(n) => {
            let mut out = vec![0; n];
            let k = buf.copyout(&mut out);
            assert_eq!(&out[..k], &model[..n.min(model.len())]);
        }
        Op::Search(needle, from) => {
            let expected = if needle.is_empty() {
                (from <= model.len()).then_some(from)
            } else {
                (from..model.len()).find(|&i| model[i..].starts_with(&needle))
            };
            assert_eq!(buf.search(&needle, from), expected, "search {needle:?} from {from}");
        }
        Op::SearchByte(b, from) => {
            let expected = (from..model.len()).find(|&i| model[i] == b);
            assert_eq!(buf.search_byte(b, from), expected);
        }
        Op::ByteAt(i) => assert_eq!(buf.byte_at(i), model.get(i).copied()),
        Op::Readln(eol) => {
            let expected = model_eol(model, eol).map(|(n, t)| {
                let line = model[..n].to_vec();
                model.drain(..n + t);
                line
            });
            assert_eq!(buf.readln(eol), expected, "{eol:?}");
        }
        Op::ReadlnWith(eol) => {
            let expected = model_eol(model, eol).map(|(n, t)| {
                let line = model[..n].to_vec();
                model.drain(..n + t);
                line
            });
            assert_eq!(buf.readln_with(eol, |l| l.to_vec()), expected, "{eol:?}");
        }
        Op::AddBuffer(parts) => {
            let mut other = EvBuffer::new();
            for p in parts {
                model.extend_from_slice(&p);
                other.add_vec(p);
            }
            buf.add_buffer(&mut other);
            assert!(other.is_empty());
        }
        Op::RemoveBuffer(n) => {
            let mut dst = EvBuffer::new();
            dst.add(b"head");
            let k = buf.remove_buffer(&mut dst, n);
            assert_eq!(k, n.min(model.len()));
            let moved: Vec<u8> = model.drain(..k).collect();
            let mut expected = b"head".to_vec();
            expected.extend_from_slice(&moved);
            assert_eq!(contents(&dst), expected);
            // Put them back at the front to keep the sequence going.
            dst.drain(4);
            dst.add_buffer(buf);
            std::mem::swap(buf, &mut dst);
            model.splice(0..0, moved);
        }
        Op::ForEachMut(a, b) => {
            buf.for_each_mut(a..b, |s| s.iter_mut().for_each(|x| *x = x.wrapping_add(1)));
            let end = b.min(model.len());
            if a < end {
                model[a..end].iter_mut().for_each(|x| *x = x.wrapping_add(1));
            }
        }
        Op::Pullup(n) => {
            let k = n.min(model.len());
            assert_eq!(buf.pullup(n), &model[..k]);
        }
        Op::Shrink => {
            buf.shrink();
            assert!(buf.heap_size() <= model.len() + 64);
        }
        Op::Compact => {
            buf.compact();
            // Every block it keeps is full.
            assert_eq!(buf.chunks.iter().map(|c| c.data.len()).sum::<usize>(), model.len());
        }
        Op::SetReadSize(n) => buf.set_read_size(n),
        Op::ReadFrom(data, max) => {
            if !data.is_empty() {
                let w = sys::write(pair.b.as_raw_fd(), &data).expect("socketpair has room");
                assert_eq!(w, data.len());
                pair.in_flight.extend(&data);
            }
            match buf.read_from(pair.a.as_raw_fd(), max) {
                Ok(r) => {
                    assert!(r > 0 && r <= max.min(buf.read_size()) && r <= pair.in_flight.len());
                    model.extend(pair.in_flight.drain(..r));
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    assert!(pair.in_flight.is_empty());
                }
            }
        }
        Op::WriteTo | Op::WriteAtmost(_) => {
            let (n, want) = match op {
                Op::WriteAtmost(max) => (buf.write_atmost(pair.a.as_raw_fd(), max).expect("write"), max),
                _ => (buf.write_to(pair.a.as_raw_fd()).expect("write_to"), usize::MAX),
            };
            assert_eq!(n, model.len().min(want), "small buffers go out whole");
            let mut got = vec![0; n];
            let mut at = 0;
            while at < n {
                at += sys::read(pair.b.as_raw_fd(), &mut got[at..]).expect("echo read");
            }
            assert_eq!(got, model[..n]);
            model.drain(..n);
        }
    }
    assert_eq!(contents(buf), *model);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_a_byte_queue_model(ops in proptest::collection::vec(op(), 1..60)) {
        let (a, b) = sys::socketpair().expect("socketpair");
        let mut pair = Pair { a, b, in_flight: VecDeque::new() };
        let mut buf = EvBuffer::new();
        let mut model = Vec::new();
        for op in ops {
            apply(&mut buf, &mut model, op, &mut pair);
        }
    }

    #[test]
    fn readln_on_any_chunking(
        data in bytes(80),
        cuts in proptest::collection::vec(0usize..80, 0..10),
        eol in eol(),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort_unstable();
        let mut buf = EvBuffer::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            buf.add_vec(data[at..c].to_vec());
            at = c;
        }
        let mut model = data.clone();
        loop {
            let expected = model_eol(&model, eol).map(|(n, t)| {
                let line = model[..n].to_vec();
                model.drain(..n + t);
                line
            });
            let got = buf.readln(eol);
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(contents(&buf), model.clone());
            if got.is_none() {
                break;
            }
        }
    }
}

/// A short send's pieces go back in front of what was added while they
/// were lent, less the bytes sent; the fully sent blocks are spent.
#[test]
fn unsend_puts_the_unsent_bytes_back_in_order() {
    let mut b = chunked(&[b"abc", b"def", b"ghi"]);
    let pieces = b.take_pieces(usize::MAX);
    assert_eq!(pieces.len(), 3);
    assert!(b.is_empty());
    b.add(b"jk");
    let mut spent = Vec::new();
    b.unsend(pieces, 4, |d| spent.push(d));
    assert_eq!(contents(&b), b"efghijk");
    assert_eq!(spent, [b"abc".to_vec()]);
    let pieces = b.take_pieces(2);
    b.unsend(pieces, 5, |d| spent.push(d));
    assert_eq!(contents(&b), b"jk");
    assert_eq!(spent.len(), 3);
    let pieces = b.take_pieces(1);
    b.unsend(pieces, 0, |d| spent.push(d));
    assert_eq!(contents(&b), b"jk");
    assert_eq!(spent.len(), 3);
}
