//! `rot13d probe ADDR [--timeout SECS]` (SPEC §2): a health probe that
//! needs nothing but the binary, for a container's HEALTHCHECK or a load
//! balancer's script.
//!
//! It connects to ADDR, sends one line, shuts its write side (so the server
//! answers and closes as at any end of input), and checks that the answer is
//! that line's ROT13, byte for byte, LF included (cut in `max_line` pieces
//! when the server's `max_line` is shorter than the line). Exit 0 = healthy, with one
//! line on stdout; exit 1 = unhealthy, with a one-line reason on stderr
//! (Docker keeps both in the health log). The whole probe, name lookup,
//! connect, write and read, shares one deadline.

use super::proxy::Mode;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The line sent (without its LF): every letter in both cases and the bytes
/// just outside `A-Z` and `a-z`, so a server that rotates any letter wrongly,
/// or a neighbour of one, fails.
pub const LINE: &[u8] = b"rot13d probe ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 @[`{";

/// Its ROT13, the answer a healthy server sends (before the LF).
pub const ANSWER: &[u8] = b"ebg13q cebor NOPQRSTUVWXYZABCDEFGHIJKLM nopqrstuvwxyzabcdefghijklm 0123456789 @[`{";

/// Longest `--timeout`: a day (a probe is not a soak test).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// Shown after `rot13d probe --help` (and in rot13d-probe(8)).
const AFTER_LONG_HELP: &str = "\
Exit status:
  0   healthy: ADDR answered the line with its ROT13 within SECS
  1   unhealthy: no address of ADDR answered it (refused, timed out,
      closed early or a wrong answer); the reason is printed on stderr
  64  usage error: missing ADDR, an unparsable or out-of-range --timeout";

/// The command line of `rot13d probe`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(
    long_about = "Health probe: connect to ADDR, send one line, shut the write side and check\n\
        that exactly its ROT13 comes back before the server closes. One line on stdout\n\
        when healthy (exit 0), one reason on stderr when not (exit 1). Needs no shell or\n\
        other tool: made for a container's HEALTHCHECK.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct ProbeArgs {
    /// Address of the ROT13 listener: IP:PORT, [IPv6]:PORT or HOST:PORT
    #[arg(value_name = "ADDR")]
    pub addr: String,

    /// Seconds the whole probe may take, fractions allowed
    #[arg(long = "timeout", value_name = "SECS", default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// The server's [server] proxy_protocol: begin with a header it takes
    /// that names no client (v1 UNKNOWN; v2 LOCAL for v2 and any)
    #[arg(long = "proxy-protocol", value_name = "MODE", value_enum, default_value_t = Mode::Off)]
    pub proxy_protocol: Mode,
}

/// Parses `--timeout`: seconds, more than 0, at most a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= MAX_TIMEOUT_SECS => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("expected seconds, more than 0 and at most {MAX_TIMEOUT_SECS}")),
    }
}

/// Runs the probe, prints its one line, and returns the exit code: 0
/// healthy, 1 unhealthy.
pub fn run(args: &ProbeArgs) -> u8 {
    let started = Instant::now();
    match probe(&args.addr, args.timeout, args.proxy_protocol) {
        Ok(peer) => {
            println!("healthy: {peer} answered ROT13 in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            0
        }
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            1
        }
    }
}

/// One probe of `addr` within `timeout`, begun with the header of a
/// server whose `proxy_protocol` is `proxy`: the address that answered, or
/// why none did (starting with the address that failed).
pub fn probe(addr: &str, timeout: Duration, proxy: Mode) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| format!("{addr}: cannot resolve: {e}"))?.collect();
    if addrs.is_empty() {
        return Err(format!("{addr}: cannot resolve: no address"));
    }
    // Like a client would: the first address that accepts is the one asked.
    let mut last = String::new();
    for peer in addrs {
        let left = remaining(deadline).ok_or_else(|| format!("{peer}: timed out after {timeout:?} connecting"))?;
        match TcpStream::connect_timeout(&peer, left) {
            Ok(stream) => {
                return exchange(stream, deadline, timeout, proxy.local_header())
                    .map(|()| peer)
                    .map_err(|e| format!("{peer}: {e}"));
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                last = format!("{peer}: timed out after {timeout:?} connecting")
            }
            Err(e) => last = format!("{peer}: connect: {e}"),
        }
    }
    Err(last)
}

/// Time left before `deadline`, `None` once it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Sends `header` and [`LINE`] and checks that exactly [`ANSWER`] and LF
/// come back before the server closes.
fn exchange(mut stream: TcpStream, deadline: Instant, timeout: Duration, header: &[u8]) -> Result<(), String> {
    let timed_out = || format!("timed out after {timeout:?} waiting for the answer");
    let mut line = header.to_vec();
    line.extend_from_slice(LINE);
    line.push(b'\n');
    stream.set_write_timeout(remaining(deadline)).map_err(|e| format!("set timeout: {e}"))?;
    stream.write_all(&line).map_err(|e| format!("send: {e}"))?;
    // End of input: a healthy server answers the line, then closes.
    stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    // The longest right answer: every byte its own piece (max_line = 1).
    let longest = 2 * LINE.len();
    let mut got = Vec::with_capacity(longest + 1);
    let mut buf = [0u8; 256];
    // Read until EOF, one byte past the longest answer at most: more is wrong too.
    while got.len() <= longest {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream.set_read_timeout(Some(left)).map_err(|e| format!("set timeout: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    check(&got)
}

/// Whether `got` is the healthy answer; the reason when it is not.
///
/// A server whose `max_line` is shorter than [`LINE`] sends it back in
/// pieces of `max_line` bytes, each followed by LF (SPEC §1), and is just as
/// healthy: the answer is [`ANSWER`] cut into equal pieces, the last one
/// 1..=`max_line` bytes, each with its LF.
fn check(got: &[u8]) -> Result<(), String> {
    if got.is_empty() {
        return Err("closed without answering".into());
    }
    let wrong = || Err(format!("wrong answer: {}", shown(got)));
    let Some(body) = got.strip_suffix(b"\n") else { return wrong() };
    let pieces: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let piece = pieces[0].len();
    let (last, full) = pieces.split_last().unwrap_or((&pieces[0], &[]));
    let cut_evenly = full.iter().all(|p| p.len() == piece) && (1..=piece).contains(&last.len());
    if cut_evenly && pieces.concat() == ANSWER { Ok(()) } else { wrong() }
}

/// `bytes` as an escaped string of at most 120 bytes, for the reason line.
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(120)];
    let more = if bytes.len() > cut.len() { "..." } else { "" };
    format!("\"{}\"{more} ({} bytes)", cut.escape_ascii(), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn rot13(b: &[u8]) -> Vec<u8> {
        let mut v = b.to_vec();
        crate::rot13::rot13_in_place(&mut v);
        v
    }

    #[test]
    fn answer_is_the_rot13_of_the_line() {
        assert_eq!(rot13(LINE), ANSWER);
        for c in b'a'..=b'z' {
            assert!(LINE.contains(&c) && LINE.contains(&c.to_ascii_uppercase()), "{}", c as char);
        }
    }

    #[test]
    fn timeout_parses_seconds() {
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "x", "", "NaN", "inf", "86401"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn check_names_what_was_wrong() {
        let mut good = ANSWER.to_vec();
        good.push(b'\n');
        assert_eq!(check(&good), Ok(()));
        assert_eq!(check(b""), Err("closed without answering".into()));
        assert_eq!(check(ANSWER), Err(format!("wrong answer: \"{}\" (82 bytes)", ANSWER.escape_ascii())));
        let echo = [LINE, b"\n"].concat();
        assert!(check(&echo).is_err_and(|r| r.starts_with("wrong answer: \"rot13d probe")), "an echo is no ROT13");
        let long = vec![b'\r'; 200];
        assert_eq!(check(&long), Err(format!("wrong answer: \"{}\"... (200 bytes)", "\\r".repeat(120))));
        // Cut in max_line pieces, as SPEC §1 sends an overlong line.
        for max_line in [1, 4, 81] {
            let pieces: Vec<Vec<u8>> = ANSWER.chunks(max_line).map(|c| [c, b"\n"].concat()).collect();
            assert_eq!(check(&pieces.concat()), Ok(()), "max_line {max_line}");
        }
        let cut = |at: &[usize]| {
            let mut out = Vec::new();
            let mut from = 0;
            for &to in at.iter().chain([ANSWER.len()].iter()) {
                out.extend_from_slice(&ANSWER[from..to]);
                out.push(b'\n');
                from = to;
            }
            out
        };
        assert_eq!(check(&cut(&[4, 8, 12])), Err(format!("wrong answer: {}", shown(&cut(&[4, 8, 12])))));
        assert!(check(&cut(&[3, 8])).is_err(), "pieces of 3 then 5 bytes are no max_line cut");
        assert!(check(&cut(&[4, 4])).is_err(), "an empty piece");
    }

    /// A one-connection server that reads a line and answers `reply(line)`.
    fn server(reply: fn(&[u8]) -> Vec<u8>) -> io::Result<(SocketAddr, thread::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let handle = thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut input = Vec::new();
                let _ = s.read_to_end(&mut input);
                let _ = s.write_all(&reply(&input));
            }
        });
        Ok((addr, handle))
    }

    #[test]
    fn healthy_server_passes() -> io::Result<()> {
        let (addr, h) = server(rot13)?;
        assert_eq!(probe(&addr.to_string(), Duration::from_secs(5), Mode::Off), Ok(addr));
        h.join().map_err(|_| io::Error::other("server panicked"))?;
        Ok(())
    }

    #[test]
    fn echo_server_fails() -> io::Result<()> {
        let (addr, h) = server(|line| line.to_vec())?;
        let r = probe(&addr.to_string(), Duration::from_secs(5), Mode::Off);
        assert!(r.as_ref().is_err_and(|e| e.contains("wrong answer")), "{r:?}");
        h.join().map_err(|_| io::Error::other("server panicked"))?;
        Ok(())
    }

    #[test]
    fn refused_port_fails_with_the_os_error() -> io::Result<()> {
        // Bound but not listening: connecting is refused, and no one else
        // can take the port while we hold it.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().map_err(io::Error::other)?.into())?;
        let addr = sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not inet"))?;
        let r = probe(&addr.to_string(), Duration::from_secs(5), Mode::Off);
        assert!(r.as_ref().is_err_and(|e| e.contains("connect") && e.contains("refused")), "{r:?}");
        Ok(())
    }

    #[test]
    fn silent_server_times_out_within_the_deadline() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let started = Instant::now();
        let r = probe(&addr.to_string(), Duration::from_millis(300), Mode::Off);
        let took = started.elapsed();
        assert!(r.as_ref().is_err_and(|e| e.contains("timed out") && e.contains("answer")), "{r:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        drop(listener);
        Ok(())
    }

    #[test]
    fn unresolvable_name_fails() {
        let r = probe("no such host", Duration::from_secs(1), Mode::Off);
        assert!(r.as_ref().is_err_and(|e| e.starts_with("no such host: cannot resolve")), "{r:?}");
    }
}
