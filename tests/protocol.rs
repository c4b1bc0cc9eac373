//! SPEC §1, byte for byte, against the real binary: every scenario runs for
//! each backend (`--backend epoll|poll|select`) and for `--workers 0|1|2`
//! (`scenario::epoll_w0` ... `scenario::select_w2`).

use crate::ensure;
use crate::util::{Client, Cyclic, Daemon, ensure_bytes_eq, random_lines, rot13_model};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::thread;

/// `--max-line` of every protocol daemon (small, so boundaries are cheap).
const MAX_LINE: usize = 100;

/// Expands `scenario(backend, workers)` into one test per backend and
/// worker count, in a module named after the scenario.
macro_rules! each_backend_and_workers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn epoll_w0() -> std::io::Result<()> { super::$name("epoll", 0) }
            #[test]
            fn epoll_w1() -> std::io::Result<()> { super::$name("epoll", 1) }
            #[test]
            fn epoll_w2() -> std::io::Result<()> { super::$name("epoll", 2) }
            #[test]
            fn poll_w0() -> std::io::Result<()> { super::$name("poll", 0) }
            #[test]
            fn poll_w1() -> std::io::Result<()> { super::$name("poll", 1) }
            #[test]
            fn poll_w2() -> std::io::Result<()> { super::$name("poll", 2) }
            #[test]
            fn select_w0() -> std::io::Result<()> { super::$name("select", 0) }
            #[test]
            fn select_w1() -> std::io::Result<()> { super::$name("select", 1) }
            #[test]
            fn select_w2() -> std::io::Result<()> { super::$name("select", 2) }
            #[test]
            fn epoll_changelist_w1() -> std::io::Result<()> { super::$name("epoll+changelist", 1) }
            #[test]
            fn uring_w0() -> std::io::Result<()> { super::on_uring(super::$name, 0) }
            #[test]
            fn uring_w2() -> std::io::Result<()> { super::on_uring(super::$name, 2) }
        }
    )*};
}

/// Runs `scenario` on `--backend uring`, or skips (visibly) where io_uring
/// is missing or forbidden.
fn on_uring(scenario: fn(&str, usize) -> io::Result<()>, workers: usize) -> io::Result<()> {
    if !crate::util::backend_usable("uring") {
        return Ok(());
    }
    scenario("uring", workers)
}

/// As `each_backend_and_workers`, for the heavy scenarios: every backend
/// once, epoll also in the master (`--workers 0`).
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn epoll_w0() -> std::io::Result<()> { super::$name("epoll", 0) }
            #[test]
            fn epoll_w1() -> std::io::Result<()> { super::$name("epoll", 1) }
            #[test]
            fn poll_w1() -> std::io::Result<()> { super::$name("poll", 1) }
            #[test]
            fn select_w1() -> std::io::Result<()> { super::$name("select", 1) }
            #[test]
            fn epoll_changelist_w1() -> std::io::Result<()> { super::$name("epoll+changelist", 1) }
            #[test]
            fn uring_w1() -> std::io::Result<()> { super::on_uring(super::$name, 1) }
        }
    )*};
}

each_backend_and_workers!(
    spec_examples,
    all_byte_values,
    utf8_and_non_ascii_pass_through,
    max_line_boundaries,
    eof_tail_without_lf,
    empty_lines,
    pipelined_lines,
    split_does_not_matter,
    concurrent_clients,
    long_lines_with_default_max_line,
);

each_backend!(large_stream_send_and_receive_concurrently);

/// A builder for `backend` (`epoll+changelist`: epoll with
/// `EVENT_EPOLL_USE_CHANGELIST` set) and `workers`.
fn builder(backend: &str, workers: usize) -> crate::util::DaemonBuilder {
    let b = Daemon::builder().workers(workers);
    match backend.strip_suffix("+changelist") {
        Some(base) => b.args(["--backend", base]).env("EVENT_EPOLL_USE_CHANGELIST", "1"),
        None => b.args(["--backend", backend]),
    }
}

/// A daemon with `backend`, `workers` and `--max-line 100`; checks that
/// every serving process runs `backend`.
fn daemon(backend: &str, workers: usize) -> io::Result<Daemon> {
    let max_line = MAX_LINE.to_string();
    let d = builder(backend, workers).args(["--max-line", &max_line]).start()?;
    let backend = backend.split('+').next().unwrap_or(backend);
    let want = workers.max(1);
    let got = d.log().count(&["reactor", &format!("backend={backend} ")]);
    ensure!(got == want, "{got} reactors with backend={backend}, want {want}:\n{}", d.log().text());
    Ok(d)
}

/// Sends `input` on a fresh connection, half-closes, compares the answer
/// with `want`.
fn check(d: &Daemon, input: &[u8], want: &[u8]) -> io::Result<()> {
    let got = d.roundtrip(input)?;
    ensure_bytes_eq(&format!("answer to {:?}", String::from_utf8_lossy(&input[..input.len().min(40)])), &got, want)
}

/// As `check`, against the model.
fn check_model(d: &Daemon, input: &[u8]) -> io::Result<()> {
    check(d, input, &rot13_model(input, MAX_LINE))
}

fn spec_examples(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    check(&d, b"Hi\r\n", b"Uv\r\n")?;
    check(&d, b"Hello, World!\n", b"Uryyb, Jbeyq!\n")?;
    check(
        &d,
        b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\n",
        b"nopqrstuvwxyzabcdefghijklm NOPQRSTUVWXYZABCDEFGHIJKLM 0123456789\n",
    )?;
    // Two lines, CRLF and LF mixed, NUL kept.
    check(&d, b"a\0b\r\nURYYB\n", b"n\0o\r\nHELLO\n")?;
    // ROT13 twice is the identity.
    let once = d.roundtrip(b"The Quick Brown Fox\n")?;
    check(&d, &once, b"The Quick Brown Fox\n")
}

fn all_byte_values(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    // Every byte value but LF on one line of 255 bytes (cut at 100).
    let line: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    let mut input = line.clone();
    input.push(b'\n');
    check_model(&d, &input)?;
    // The same, explicitly: each byte on its own line.
    let mut input = Vec::new();
    let mut want = Vec::new();
    for b in 0..=255u8 {
        if b == b'\n' {
            continue;
        }
        input.extend([b, b'\n']);
        let r = match b {
            b'A'..=b'M' | b'a'..=b'm' => b + 13,
            b'N'..=b'Z' | b'n'..=b'z' => b - 13,
            _ => b,
        };
        want.extend([r, b'\n']);
    }
    check(&d, &input, &want)?;
    // All 256 values, LF included, as one stream (then the tail).
    let all: Vec<u8> = (0..=255u8).collect();
    check_model(&d, &all)
}

fn utf8_and_non_ascii_pass_through(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    check(&d, "Grüße, 世界! ÀÉÎ ñ\n".as_bytes(), "Teüßr, 世界! ÀÉÎ ñ\n".as_bytes())?;
    // Latin-1 letters are not letters to ROT13; no locale.
    check(&d, b"\xc0\xe9\xff\x80abc\n", b"\xc0\xe9\xff\x80nop\n")?;
    // A UTF-8 sequence that straddles the max_line cut passes unchanged.
    let mut input = vec![b'a'; MAX_LINE - 1];
    input.extend("é€".as_bytes());
    input.push(b'\n');
    let mut want = vec![b'n'; MAX_LINE - 1];
    want.push(0xc3);
    want.push(b'\n');
    want.push(0xa9);
    want.extend("€".as_bytes());
    want.push(b'\n');
    check(&d, &input, &want)?;
    check_model(&d, &input)
}

/// `len` bytes of `c` (never LF).
fn line(c: u8, len: usize) -> Vec<u8> {
    vec![c; len]
}

fn max_line_boundaries(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    let n = |len| line(b'n', len);
    let lf = |mut v: Vec<u8>| {
        v.push(b'\n');
        v
    };
    let cat = |parts: &[Vec<u8>]| parts.concat();
    // (input length, answer to `a`*len + LF, answer to `a`*len at EOF)
    let cases: Vec<(usize, Vec<u8>, Vec<u8>)> = vec![
        (99, lf(n(99)), n(99)),
        (100, lf(n(100)), n(100)),
        (101, cat(&[lf(n(100)), lf(n(1))]), cat(&[lf(n(100)), n(1)])),
        (200, cat(&[lf(n(100)), lf(n(100))]), cat(&[lf(n(100)), n(100)])),
        (201, cat(&[lf(n(100)), lf(n(100)), lf(n(1))]), cat(&[lf(n(100)), lf(n(100)), n(1)])),
    ];
    for (len, with_lf, at_eof) in &cases {
        let input = line(b'a', *len);
        check(&d, &lf(input.clone()), with_lf)?;
        check(&d, &input, at_eof)?;
        ensure_bytes_eq("model with LF", &rot13_model(&lf(input.clone()), MAX_LINE), with_lf)?;
        ensure_bytes_eq("model at EOF", &rot13_model(&input, MAX_LINE), at_eof)?;
    }
    // CR counts: 99 letters + CR = 100 bytes, never cut; 100 + CR is cut
    // before the CR.
    check(&d, &cat(&[line(b'a', 99), b"\r\n".to_vec()]), &cat(&[n(99), b"\r\n".to_vec()]))?;
    check(&d, &cat(&[line(b'a', 100), b"\r\n".to_vec()]), &cat(&[lf(n(100)), b"\r\n".to_vec()]))?;
    // A line of exactly max_line whose LF arrives in a later segment is not
    // cut: the piece waits for one more byte of the same line.
    let mut c = d.connect()?;
    c.send(&line(b'a', 100))?;
    let early = c.read_some_within(std::time::Duration::from_millis(200))?;
    ensure!(early.is_none(), "a line of exactly max_line was answered before its LF: {early:?}");
    c.send(b"\nb")?;
    c.half_close()?;
    ensure_bytes_eq("100 bytes, LF later", &c.read_to_end()?, &cat(&[lf(n(100)), b"o".to_vec()]))?;
    // A piece is sent as soon as max_line bytes and one more byte of the
    // same line arrived: no LF, no EOF needed.
    let mut c = d.connect()?;
    c.send(&line(b'a', 101))?;
    ensure_bytes_eq("first piece before the LF", &c.read_exact(101)?, &lf(n(100)))?;
    c.send(&line(b'a', 100))?;
    ensure_bytes_eq("second piece before the LF", &c.read_exact(101)?, &lf(n(100)))?;
    c.send(b"\n")?;
    ensure_bytes_eq("rest of the line", &c.read_exact(2)?, b"n\n")?;
    c.half_close()?;
    ensure_bytes_eq("EOF", &c.read_to_end()?, b"")?;
    // All boundary lines pipelined on one connection.
    let mut all = Vec::new();
    for len in [0, 1, 99, 100, 101, 199, 200, 201, 300, 1000] {
        all.extend(lf(line(b'z', len)));
    }
    check_model(&d, &all)
}

fn eof_tail_without_lf(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    check(&d, b"abc", b"nop")?;
    check(&d, b"x\nabc", b"k\nnop")?;
    check(&d, b"", b"")?;
    check(&d, b"\r", b"\r")?;
    // A tail that arrives in pieces, then EOF.
    let mut c = d.connect()?;
    c.send(b"Hel")?;
    c.send(b"lo")?;
    c.half_close()?;
    ensure_bytes_eq("tail in two pieces", &c.read_to_end()?, b"Uryyb")
}

fn empty_lines(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    check(&d, b"\n", b"\n")?;
    check(&d, b"\n\n\n", b"\n\n\n")?;
    check(&d, b"\r\n\r\n", b"\r\n\r\n")?;
    check(&d, b"a\n\nb\n\n", b"n\n\no\n\n")?;
    let many = vec![b'\n'; 100_000];
    check(&d, &many, &many)
}

fn pipelined_lines(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend(format!("line {i} of the Pipeline\n").as_bytes());
    }
    check_model(&d, &input)?;
    // Request-response on one connection: each answer before the next line.
    let mut c = d.connect()?;
    for i in 0..200 {
        let l = format!("ping {i}\n");
        c.send(l.as_bytes())?;
        let got = c.read_exact(l.len())?;
        ensure_bytes_eq("ping-pong", &got, &rot13_model(l.as_bytes(), MAX_LINE))?;
    }
    c.half_close()?;
    ensure_bytes_eq("after ping-pong", &c.read_to_end()?, b"")
}

fn split_does_not_matter(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    let mut input = random_lines(7, 3000, 250);
    input.extend(line(b'q', 150)); // an overlong tail at EOF
    let want = rot13_model(&input, MAX_LINE);
    for chunk in [usize::MAX, 1, 2, 3, 7, 99, 100, 101, 512] {
        let got = d.connect()?.roundtrip_chunked(&input, chunk)?;
        ensure_bytes_eq(&format!("input in writes of {chunk} bytes"), &got, &want)?;
    }
    // Random write sizes.
    let mut rng = crate::util::Rng::new(99);
    let mut c = d.connect()?;
    let mut w = c.stream.try_clone()?;
    let data = input.clone();
    let writer = thread::spawn(move || -> io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            let n = (1 + rng.below(300)).min(data.len() - at);
            w.write_all(&data[at..at + n])?;
            at += n;
        }
        w.shutdown(Shutdown::Write)
    });
    let got = c.read_to_end();
    writer.join().map_err(|_| crate::util::fail("writer panicked"))??;
    ensure_bytes_eq("random write sizes", &got?, &want)
}

fn concurrent_clients(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    let addr = d.addr();
    // All clients connect first, so they are served at the same time.
    let clients: Vec<Client> = (0..40).map(|_| Client::connect(addr)).collect::<io::Result<_>>()?;
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            thread::spawn(move || -> io::Result<()> {
                let input = random_lines(1000 + i as u64, 20_000 + i * 997, 180);
                let want = rot13_model(&input, MAX_LINE);
                let got = c.roundtrip_chunked(&input, 1 + i * 37)?;
                ensure_bytes_eq(&format!("client {i}"), &got, &want)
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| crate::util::fail("client panicked"))??;
    }
    Ok(())
}

fn long_lines_with_default_max_line(backend: &str, workers: usize) -> io::Result<()> {
    let d = builder(backend, workers).start()?;
    let mut input = random_lines(77, 600 * 1024, 40_000);
    input.extend(line(b'Z', 20_000));
    let want = rot13_model(&input, 16384);
    for chunk in [usize::MAX, 1000, 16384, 16385] {
        let got = d.connect()?.roundtrip_chunked(&input, chunk)?;
        ensure_bytes_eq(&format!("long lines in writes of {chunk}"), &got, &want)?;
    }
    Ok(())
}

/// Size of the stream of `large_stream_send_and_receive_concurrently`.
pub const LARGE_STREAM: usize = 50 * 1024 * 1024;

fn large_stream_send_and_receive_concurrently(backend: &str, workers: usize) -> io::Result<()> {
    let d = daemon(backend, workers)?;
    // A 1 MiB block that ends with LF, repeated: the answer is the block's
    // answer repeated, verified as it arrives.
    let block = {
        let mut b = random_lines(42, 1024 * 1024 - 1, 300);
        b.push(b'\n');
        b
    };
    let want = rot13_model(&block, MAX_LINE);
    let times = LARGE_STREAM / block.len();
    let mut c = d.connect()?;
    let mut w = c.stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        for _ in 0..times {
            for chunk in block.chunks(60_000) {
                w.write_all(chunk)?;
            }
        }
        w.shutdown(Shutdown::Write)
    });
    let mut answer = Cyclic::new(want);
    let result = answer.read_to_end(&mut c.stream).and_then(|()| answer.ensure_repeats(times));
    let wrote = writer.join().map_err(|_| crate::util::fail("writer panicked"))?;
    result?;
    wrote
}

#[test]
fn model_matches_spec_examples() {
    assert_eq!(rot13_model(b"Hi\r\n", 16384), b"Uv\r\n");
    assert_eq!(rot13_model(b"abc", 2), b"no\np");
    assert_eq!(rot13_model(b"ab\n", 2), b"no\n");
    assert_eq!(rot13_model(b"abc\n", 2), b"no\np\n");
    assert_eq!(rot13_model(b"abcd", 2), b"no\npq");
    assert_eq!(rot13_model(b"\n\n", 1), b"\n\n");
    assert_eq!(rot13_model(b"x", 1), b"k");
}

/// Tiny write watermarks (below max_line): the output is still exact for a
/// client that reads slowly in small pieces.
#[test]
fn tiny_watermarks_keep_the_output_exact() -> io::Result<()> {
    let d = Daemon::builder()
        .workers(1)
        .config("[server]\nwrite_high_watermark = 1024\nwrite_low_watermark = 256\nmax_line = 4096\n")
        .start()?;
    let input = random_lines(31, 300 * 1024, 10_000);
    let want = rot13_model(&input, 4096);
    let mut c = d.connect()?;
    let mut w = c.stream.try_clone()?;
    let data = input.clone();
    let writer = thread::spawn(move || -> io::Result<()> {
        w.write_all(&data)?;
        w.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 700];
    loop {
        let n = c.stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().map_err(|_| crate::util::fail("writer panicked"))??;
    ensure_bytes_eq("tiny watermarks", &got, &want)
}
