//! The PROXY protocol header phase (HAProxy's `proxy-protocol.txt`, SPEC §3
//! `proxy_protocol`): the first state of a connection behind a load
//! balancer, before the ROT13 stream. Pure: no I/O, no clock.
//!
//! The connection feeds its input [`EvBuffer`] to [`HeaderPhase::advance`]
//! after every read. It answers [`Progress::NeedMore`] until the header is
//! complete, then [`Progress::Done`] with the addresses (the header is
//! drained, so the next byte of the input is the first ROT13 byte), or
//! [`Progress::Refused`] with the reason (nothing drained; the connection
//! closes without answering). With `proxy_protocol = "off"`
//! [`Mode::phase`] gives `None`: no phase, nothing checked, and a
//! `PROXY ...` line is ROT13 input like any other.
//!
//! # Deciding early, whatever the split
//!
//! The outcome is a function of the bytes alone, never of how they were
//! split into reads: every check looks at a fixed position (or, for the
//! v2 body, a fixed length) and a refusal is decided by the first byte
//! that cannot belong to an acceptable header, so a wrong first byte
//! refuses at once and a header trickling in a byte at a time gives what
//! one segment gives. The phase never drains past the header.
//!
//! # Framing here, parsing in `ppp`
//!
//! `ppp` parses a complete header but cannot tell "incomplete" from
//! "invalid" on a prefix in a way that is stable as bytes arrive (e.g.
//! `PROXY TCP4 1.2.3.4 5.6.7.8 1 ` is a terminal error for it, yet one
//! more byte makes it valid). So this module only frames: it finds where
//! the header ends from the fixed prefix, then hands `ppp` the complete
//! header.
//! - v1: `PROXY ` then printable ASCII up to CR LF, at most 107 bytes with
//!   the CR LF (a 108th byte without the line ending is over-long). The
//!   line is copied to the stack and parsed there: no allocation.
//! - v2: the 12-byte signature, then byte 12 (version and command), 13
//!   (family and transport), 14..16 (body length). At 16 bytes `ppp`
//!   checks the fixed part (its checks before "partial" look only at these
//!   16 bytes); the header is complete at `16 + length` bytes, when it is
//!   made contiguous (`pullup`, which copies only a header split across
//!   chunks) and parsed. TLVs are skipped, whatever they hold.

use crate::reactor::EvBuffer;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::NonZeroU8;
use std::time::Duration;

/// A connection's header must be complete this long after its accept
/// (SPEC §3); the phase has no clock, the connection times it.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Longest v1 header, CR LF included (the spec's 107-byte line).
pub const V1_MAX: usize = 107;

/// The fixed part of a v2 header: signature, version/command, family,
/// length.
pub const V2_FIXED: usize = 16;

/// Longest v2 header: the fixed part and a body of `u16::MAX` bytes.
pub const V2_MAX: usize = V2_FIXED + u16::MAX as usize;

/// How a v1 header begins.
const V1_SIG: &[u8; 6] = b"PROXY ";

/// How a v2 header begins.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 LOCAL header without addresses or TLVs: the signature, version 2
/// command LOCAL (0x20), family AF_UNSPEC (0), length 0.
const V2_LOCAL: &[u8; 16] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// v2 byte 12, low nibble: the PROXY command (the other one, 0, is LOCAL).
const V2_CMD_PROXY: u8 = 0x1;

/// v2 byte 13 values this server takes with PROXY: TCP over IPv4, TCP over
/// IPv6.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// `[server] proxy_protocol`: which header every connection must begin
/// with. Parsed as the other enums of the configuration are (serde for the
/// file, `clap::ValueEnum` for an option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No header: the stream is ROT13 input from its first byte.
    #[default]
    Off,
    /// The text header, `PROXY TCP4|TCP6|UNKNOWN ...\r\n`.
    V1,
    /// The binary header.
    V2,
    /// Either, told apart by the first byte (`P` or CR).
    Any,
}

impl Mode {
    /// The header phase a new connection starts in; `None` with `Off`, so
    /// that a connection without the PROXY protocol holds nothing for it.
    pub const fn phase(self) -> Option<HeaderPhase> {
        let expect = match self {
            Mode::Off => return None,
            Mode::V1 => Expect::V1,
            Mode::V2 => Expect::V2,
            Mode::Any => Expect::Any,
        };
        Some(HeaderPhase::pack(State { expect, scanned: 0 }))
    }

    /// A header this mode takes that names no client, as a health check
    /// sends it (`rot13d probe --proxy-protocol`): v1 `UNKNOWN`, v2 `LOCAL`
    /// for `v2` and `any`; nothing for `off`.
    pub const fn local_header(self) -> &'static [u8] {
        match self {
            Mode::Off => b"",
            Mode::V1 => b"PROXY UNKNOWN\r\n",
            Mode::V2 | Mode::Any => V2_LOCAL,
        }
    }

    /// The configuration spelling (`off`, `v1`, `v2`, `any`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::V1 => "v1",
            Mode::V2 => "v2",
            Mode::Any => "any",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which version a header was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

impl Version {
    /// `v1` or `v2`, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// An accepted header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Which version it was.
    pub version: Version,
    /// The client, as the proxy saw it. `None` for v2 `LOCAL` (the proxy's
    /// own health check) and v1 `UNKNOWN`: the socket's own peer address
    /// is the client then.
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the proxy (`None` as for
    /// `source`).
    pub destination: Option<SocketAddr>,
    /// Bytes the header took; already drained from the input.
    pub consumed: usize,
}

/// Why a connection's header was refused. The connection is then closed
/// without a byte of answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The first bytes cannot begin a header of the accepted version(s).
    Missing,
    /// The first byte begins a header of a version the mode does not take
    /// (v2's CR with `v1`, v1's `P` with `v2`).
    WrongVersion,
    /// It begins like a header but is not one: a bad field, address or
    /// port, a byte that is not printable ASCII in v1, LF without CR, an
    /// unknown v2 version or command, a v2 length too short for its
    /// addresses.
    Malformed,
    /// v1 without CR LF within 107 bytes.
    TooLong,
    /// v2 `PROXY` for anything but TCP over IPv4 or IPv6 (UDP, UNIX
    /// sockets, `AF_UNSPEC`).
    UnsupportedFamily,
    /// The client ended its stream inside the header.
    Truncated,
    /// No complete header within the deadline (5 s). The phase has no
    /// clock: the connection's timer decides this one.
    Timeout,
}

impl Refusal {
    /// Every reason, in a fixed order (for per-reason counters).
    pub const ALL: [Refusal; 7] = [
        Refusal::Missing,
        Refusal::WrongVersion,
        Refusal::Malformed,
        Refusal::TooLong,
        Refusal::UnsupportedFamily,
        Refusal::Truncated,
        Refusal::Timeout,
    ];

    /// A stable lowercase name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::WrongVersion => "wrong_version",
            Refusal::Malformed => "malformed",
            Refusal::TooLong => "too_long",
            Refusal::UnsupportedFamily => "unsupported_family",
            Refusal::Truncated => "truncated",
            Refusal::Timeout => "timeout",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`HeaderPhase::advance`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No decision yet: wait for more bytes.
    NeedMore,
    /// The header is complete, valid, and drained from the input.
    Done(Header),
    /// The connection must close; the input is untouched.
    Refused(Refusal),
}

/// Which version the phase still waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    V1,
    V2,
    /// Not decided: the first byte has not arrived.
    Any,
}

/// The header phase of one connection: the version expected and how far
/// the bytes are checked, packed in one byte (with a niche, so that
/// `Option<HeaderPhase>` is one byte too: it lives in the padding of a
/// connection's state), dropped once it is [`Done`](Progress::Done).
///
/// The byte, less one: `0..=105` v1 with that many bytes checked (a v1
/// header is decided by its 107th byte), then `0..=12` v2 with that much
/// of the signature seen, then one value for "either, nothing seen yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderPhase(NonZeroU8);

/// v1 states: 0..=105 bytes checked.
const V1_STATES: u8 = (V1_MAX - 1) as u8;
/// v2 states: 0..=12 bytes of the signature seen.
const V2_STATES: u8 = V2_SIG.len() as u8 + 1;
// Every state, and "either", in the 255 values of a NonZeroU8.
const _: () = assert!((V1_STATES as usize + V2_STATES as usize) < u8::MAX as usize);

/// The phase unpacked, while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    expect: Expect,
    /// Leading bytes of the input already checked (v1: all valid and none
    /// a CR; v2: the part of the signature seen).
    scanned: u8,
}

impl HeaderPhase {
    const fn pack(st: State) -> HeaderPhase {
        let index = match st.expect {
            Expect::V1 => st.scanned,
            Expect::V2 => V1_STATES + st.scanned,
            Expect::Any => V1_STATES + V2_STATES,
        };
        HeaderPhase(NonZeroU8::MIN.saturating_add(index))
    }

    const fn state(self) -> State {
        let i = self.0.get() - 1;
        if i < V1_STATES {
            State { expect: Expect::V1, scanned: i }
        } else if i < V1_STATES + V2_STATES {
            State { expect: Expect::V2, scanned: i - V1_STATES }
        } else {
            State { expect: Expect::Any, scanned: 0 }
        }
    }

    /// Looks at the input (which only ever grows at the end during the
    /// phase) and decides if it can. Call after every read.
    ///
    /// After `Done` the phase is spent: drop it. After `Refused` every call
    /// refuses again, for the same reason.
    pub fn advance(&mut self, input: &mut EvBuffer) -> Progress {
        let mut st = self.state();
        let p = st.advance(input);
        *self = HeaderPhase::pack(st);
        p
    }

    /// What to do when the client ends its stream before the header is
    /// complete: `None` if it sent nothing at all (a plain connect and
    /// close, such as a TCP health check: no header was attempted),
    /// [`Refusal::Truncated`] if it stopped inside a header.
    ///
    /// Call [`advance`](HeaderPhase::advance) on the same input first: a
    /// header refused on its bytes keeps its own reason.
    pub fn end_of_input(&self, input: &EvBuffer) -> Option<Refusal> {
        (!input.is_empty()).then_some(Refusal::Truncated)
    }
}

impl State {
    fn advance(&mut self, input: &mut EvBuffer) -> Progress {
        debug_assert!(input.len() >= self.scanned as usize, "the input shrank during the header phase");
        if self.expect == Expect::Any {
            match input.byte_at(0) {
                None => return Progress::NeedMore,
                Some(b) if b == V1_SIG[0] => self.expect = Expect::V1,
                Some(b) if b == V2_SIG[0] => self.expect = Expect::V2,
                Some(_) => return Progress::Refused(Refusal::Missing),
            }
        }
        let step = match self.expect {
            Expect::V1 => self.advance_v1(input),
            _ => self.advance_v2(input),
        };
        match step {
            Ok(Some(header)) => Progress::Done(header),
            Ok(None) => Progress::NeedMore,
            Err(why) => Progress::Refused(why),
        }
    }

    fn advance_v1(&mut self, input: &mut EvBuffer) -> Result<Option<Header>, Refusal> {
        let mut line = [0u8; V1_MAX];
        let have = input.copyout(&mut line);
        let mut at = self.scanned as usize;
        while at < have {
            let b = line[at];
            if at < V1_SIG.len() {
                if b != V1_SIG[at] {
                    return Err(if at == 0 && b == V2_SIG[0] { Refusal::WrongVersion } else { Refusal::Missing });
                }
            } else if b == b'\r' {
                match (at + 1 < have).then(|| line[at + 1]) {
                    None => break,
                    Some(b'\n') => return parse_v1(input, &line[..at + 2]).map(Some),
                    Some(_) => return Err(Refusal::Malformed),
                }
            } else if !(b' '..=b'~').contains(&b) {
                return Err(Refusal::Malformed);
            } else if at + 2 >= V1_MAX {
                // The CR LF no longer fits in 107 bytes.
                return Err(Refusal::TooLong);
            }
            at += 1;
        }
        // `at` <= V1_MAX - 2 here: it fits the u8.
        self.scanned = at as u8;
        Ok(None)
    }

    fn advance_v2(&mut self, input: &mut EvBuffer) -> Result<Option<Header>, Refusal> {
        let mut fixed = [0u8; V2_FIXED];
        let have = input.copyout(&mut fixed);
        let sig_have = have.min(V2_SIG.len());
        for at in self.scanned as usize..sig_have {
            if fixed[at] != V2_SIG[at] {
                return Err(if at == 0 && fixed[0] == V1_SIG[0] { Refusal::WrongVersion } else { Refusal::Missing });
            }
        }
        self.scanned = sig_have as u8;
        if have < V2_FIXED {
            return Ok(None);
        }
        // ppp's checks before "partial" (version, command, family,
        // transport, length against the family) look at these 16 bytes
        // only, so their verdict is final whatever follows.
        let verdict = ppp::v2::Header::try_from(&fixed[..]);
        let proxy = fixed[12] & 0x0f == V2_CMD_PROXY;
        match verdict {
            Err(ppp::v2::ParseError::Version(_) | ppp::v2::ParseError::Command(_)) => return Err(Refusal::Malformed),
            _ if proxy && fixed[13] != V2_TCP4 && fixed[13] != V2_TCP6 => return Err(Refusal::UnsupportedFamily),
            Ok(_) | Err(ppp::v2::ParseError::Partial(..)) => {}
            Err(_) => return Err(Refusal::Malformed),
        }
        let total = V2_FIXED + u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        if input.len() < total {
            return Ok(None);
        }
        let header = match ppp::v2::Header::try_from(&input.pullup(total)[..]) {
            Ok(h) => h,
            Err(_) => return Err(Refusal::Malformed),
        };
        let (source, destination) = match (header.command, header.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => (
                Some(SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port))),
                Some(SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port))),
            ),
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => (
                Some(SocketAddr::V6(SocketAddrV6::new(a.source_address, a.source_port, 0, 0))),
                Some(SocketAddr::V6(SocketAddrV6::new(a.destination_address, a.destination_port, 0, 0))),
            ),
            (ppp::v2::Command::Proxy, _) => return Err(Refusal::UnsupportedFamily),
            (ppp::v2::Command::Local, _) => (None, None),
        };
        input.drain(total);
        Ok(Some(Header { version: Version::V2, source, destination, consumed: total }))
    }
}

/// Parses a complete v1 line (CR LF included) and drains it from `input`.
fn parse_v1(input: &mut EvBuffer, line: &[u8]) -> Result<Header, Refusal> {
    let (source, destination) = match ppp::v1::Header::try_from(line) {
        Ok(h) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => (
                Some(SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port))),
                Some(SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port))),
            ),
            ppp::v1::Addresses::Tcp6(a) => (
                Some(SocketAddr::V6(SocketAddrV6::new(a.source_address, a.source_port, 0, 0))),
                Some(SocketAddr::V6(SocketAddrV6::new(a.destination_address, a.destination_port, 0, 0))),
            ),
            ppp::v1::Addresses::Unknown => (None, None),
        },
        // The spec says to ignore whatever follows UNKNOWN up to the CR LF;
        // ppp splits a line into at most 7 fields and then misses the line
        // ending when UNKNOWN is followed by 5 or more.
        Err(_) if line.starts_with(b"PROXY UNKNOWN ") => (None, None),
        Err(_) => return Err(Refusal::Malformed),
    };
    input.drain(line.len());
    Ok(Header { version: Version::V1, source, destination, consumed: line.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(buf: &EvBuffer) -> Vec<u8> {
        buf.chunks().flatten().copied().collect()
    }

    /// Feeds `stream` in one piece; returns the outcome and what is left.
    fn whole(mode: Mode, stream: &[u8]) -> (Progress, Vec<u8>) {
        let mut phase = mode.phase().expect("a mode with a phase");
        let mut input = EvBuffer::new();
        input.add(stream);
        let p = phase.advance(&mut input);
        (p, contents(&input))
    }

    /// Feeds `stream` a byte at a time (each its own chunk), stopping at
    /// the first decision; returns it, the bytes fed by then, and what is
    /// left of the input.
    fn trickle(mode: Mode, stream: &[u8]) -> (Progress, usize, Vec<u8>) {
        let mut phase = mode.phase().expect("a mode with a phase");
        let mut input = EvBuffer::new();
        for (i, b) in stream.iter().enumerate() {
            input.add_vec(vec![*b]);
            let p = phase.advance(&mut input);
            if p != Progress::NeedMore {
                return (p, i + 1, contents(&input));
            }
        }
        (Progress::NeedMore, stream.len(), contents(&input))
    }

    fn done(version: Version, source: &str, destination: &str, consumed: usize) -> Progress {
        Progress::Done(Header {
            version,
            source: Some(source.parse().unwrap()),
            destination: Some(destination.parse().unwrap()),
            consumed,
        })
    }

    fn local(version: Version, consumed: usize) -> Progress {
        Progress::Done(Header { version, source: None, destination: None, consumed })
    }

    /// A v2 header: signature, `ver_cmd`, `fam`, length of `body`, `body`.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        v2(0x21, 0x11, &[192, 0, 2, 1, 198, 51, 100, 7, 0xc3, 0x50, 0x9f, 0x09])
    }

    fn v2_tcp6() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::2:3".parse::<std::net::Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0xff, 0xff, 0x9f, 0x09]);
        v2(0x21, 0x21, &body)
    }

    /// Every accepted case: (mode, header, expected).
    fn accepted() -> Vec<(Mode, Vec<u8>, Progress)> {
        let t4 = b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 40713\r\n".to_vec();
        let t6 = b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 65535 0\r\n".to_vec();
        let unk = b"PROXY UNKNOWN\r\n".to_vec();
        let mut v2_tlv = v2_tcp4();
        // ALPN "r13", NOOP of 3 bytes, and an unknown type 0xE0 of 0 bytes.
        let tlvs = [0x01, 0, 3, b'r', b'1', b'3', 0x04, 0, 3, 0, 0, 0, 0xe0, 0, 0];
        v2_tlv[15] += tlvs.len() as u8;
        v2_tlv.extend_from_slice(&tlvs);
        let v2_local = v2(0x20, 0x00, &[]);
        // LOCAL may carry a family and addresses: they are ignored.
        let v2_local_addr = v2(0x20, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        let mut cases = Vec::new();
        for mode in [Mode::V1, Mode::Any] {
            cases.push((mode, t4.clone(), done(Version::V1, "192.0.2.1:50000", "198.51.100.7:40713", t4.len())));
            cases.push((
                mode,
                t6.clone(),
                done(Version::V1, "[2001:db8::1]:65535", "[::ffff:198.51.100.7]:0", t6.len()),
            ));
            cases.push((mode, unk.clone(), local(Version::V1, unk.len())));
        }
        for mode in [Mode::V2, Mode::Any] {
            cases.push((mode, v2_tcp4(), done(Version::V2, "192.0.2.1:50000", "198.51.100.7:40713", 28)));
            cases.push((mode, v2_tcp6(), done(Version::V2, "[2001:db8::1]:65535", "[2001:db8::2:3]:40713", 52)));
            cases.push((
                mode,
                v2_tlv.clone(),
                done(Version::V2, "192.0.2.1:50000", "198.51.100.7:40713", 28 + tlvs.len()),
            ));
            cases.push((mode, v2_local.clone(), local(Version::V2, 16)));
            cases.push((mode, v2_local_addr.clone(), local(Version::V2, 28)));
        }
        cases
    }

    #[test]
    fn off_has_no_phase() {
        assert_eq!(Mode::Off.phase(), None);
        assert_eq!(Mode::default(), Mode::Off);
        for m in [Mode::V1, Mode::V2, Mode::Any] {
            assert!(m.phase().is_some());
        }
    }

    #[test]
    fn each_mode_takes_its_local_header() {
        assert!(Mode::Off.local_header().is_empty());
        for (mode, version) in [(Mode::V1, Version::V1), (Mode::V2, Version::V2), (Mode::Any, Version::V2)] {
            let h = mode.local_header();
            assert_eq!(whole(mode, h), (local(version, h.len()), vec![]), "{mode}");
        }
        // config/haproxy.cfg's health check sends exactly this header.
        let hex: String = V2_LOCAL.iter().map(|b| format!("{b:02x}")).collect();
        let cfg = include_str!("../../config/haproxy.cfg");
        assert!(cfg.contains(&format!("tcp-check send-binary {hex}\n")), "haproxy.cfg does not send {hex}");
    }

    #[test]
    fn the_phase_is_one_byte_and_packs_every_state() {
        assert_eq!(std::mem::size_of::<HeaderPhase>(), 1);
        assert_eq!(std::mem::size_of::<Option<HeaderPhase>>(), 1);
        let mut all = vec![State { expect: Expect::Any, scanned: 0 }];
        all.extend((0..V1_STATES).map(|scanned| State { expect: Expect::V1, scanned }));
        all.extend((0..V2_STATES).map(|scanned| State { expect: Expect::V2, scanned }));
        let mut bytes: Vec<u8> = all.iter().map(|st| HeaderPhase::pack(*st).0.get()).collect();
        for st in &all {
            assert_eq!(HeaderPhase::pack(*st).state(), *st);
        }
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), all.len(), "two states share a byte");
    }

    #[test]
    fn mode_spellings_are_one_in_toml_cli_and_logs() {
        use clap::ValueEnum;
        #[derive(Deserialize, Serialize)]
        struct T {
            p: Mode,
        }
        for &m in Mode::value_variants() {
            let text = format!("p = \"{m}\"\n");
            assert_eq!(toml::from_str::<T>(&text).unwrap().p, m);
            assert_eq!(toml::to_string(&T { p: m }).unwrap(), text);
            assert_eq!(Mode::from_str(m.as_str(), false), Ok(m));
        }
        assert_eq!(Mode::value_variants().len(), 4);
        assert!(toml::from_str::<T>("p = \"v3\"").is_err());
        assert!(toml::from_str::<T>("p = \"V1\"").is_err());
    }

    #[test]
    fn each_accepted_form_in_one_piece_leaves_no_byte() {
        for (mode, header, expected) in accepted() {
            assert_eq!(whole(mode, &header), (expected, vec![]), "{mode} {header:?}");
        }
    }

    #[test]
    fn each_accepted_form_a_byte_at_a_time_decides_at_its_last_byte() {
        for (mode, header, expected) in accepted() {
            assert_eq!(trickle(mode, &header), (expected, header.len(), vec![]), "{mode} {header:?}");
        }
    }

    #[test]
    fn data_in_the_same_segment_stays_for_the_stream() {
        let data = b"Hello\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n\r\n\0\r\nQUIT\nrest";
        for (mode, header, expected) in accepted() {
            let mut stream = header.clone();
            stream.extend_from_slice(data);
            assert_eq!(whole(mode, &stream), (expected, data.to_vec()), "{mode} {header:?}");
            // A byte at a time: decided at the header's last byte, nothing
            // of the data read.
            assert_eq!(trickle(mode, &stream), (expected, header.len(), vec![]), "{mode} {header:?}");
        }
    }

    #[test]
    fn a_header_split_across_chunks_anywhere() {
        for (mode, header, expected) in accepted() {
            for cut in 1..header.len() {
                let mut phase = mode.phase().unwrap();
                let mut input = EvBuffer::new();
                input.add_vec(header[..cut].to_vec());
                assert_eq!(phase.advance(&mut input), Progress::NeedMore, "{mode} cut {cut}");
                input.add_vec(header[cut..].to_vec());
                input.add(b"x");
                assert_eq!(phase.advance(&mut input), expected, "{mode} cut {cut}");
                assert_eq!(contents(&input), b"x");
            }
        }
    }

    #[test]
    fn any_tells_the_versions_apart_by_the_first_byte() {
        assert_eq!(trickle(Mode::Any, b"P").0, Progress::NeedMore);
        assert_eq!(trickle(Mode::Any, b"\r").0, Progress::NeedMore);
        for first in [b'G', b'p', b'\n', 0, 0x16, b' '] {
            assert_eq!(trickle(Mode::Any, &[first, b'x']), (Progress::Refused(Refusal::Missing), 1, vec![first]));
        }
        assert!(matches!(
            whole(Mode::Any, b"PROXY UNKNOWN\r\n").0,
            Progress::Done(Header { version: Version::V1, .. })
        ));
        assert!(matches!(whole(Mode::Any, &v2_tcp4()).0, Progress::Done(Header { version: Version::V2, .. })));
        // Once the first byte chose v1, the v2 signature is no header.
        assert_eq!(whole(Mode::Any, b"P\r\n\r\n").0, Progress::Refused(Refusal::Missing));
    }

    #[test]
    fn wrong_version_refuses_at_the_first_byte() {
        assert_eq!(trickle(Mode::V1, &v2_tcp4()), (Progress::Refused(Refusal::WrongVersion), 1, b"\r".to_vec()));
        assert_eq!(whole(Mode::V1, &v2_tcp4()), (Progress::Refused(Refusal::WrongVersion), v2_tcp4()));
        let v1 = b"PROXY UNKNOWN\r\n";
        assert_eq!(trickle(Mode::V2, v1), (Progress::Refused(Refusal::WrongVersion), 1, b"P".to_vec()));
        assert_eq!(whole(Mode::V2, v1), (Progress::Refused(Refusal::WrongVersion), v1.to_vec()));
    }

    #[test]
    fn missing_refuses_at_the_first_byte_that_cannot_begin_a_header() {
        let cases: &[(Mode, &[u8], usize)] = &[
            (Mode::V1, b"hello\n", 1),
            (Mode::V1, b"PRIVMSG #x\n", 3),
            (Mode::V1, b"PROXY\r\n", 6),
            (Mode::V1, b"PROXYTCP4 ", 6),
            (Mode::V1, b"proxy TCP4\r\n", 1),
            (Mode::V2, b"hello\n", 1),
            (Mode::V2, b"\r\n\r\nX", 5),
            (Mode::V2, b"\r\n\r\n\0\r\nQUIX\n", 11),
            (Mode::Any, b"hello\n", 1),
            (Mode::Any, b"PROXX", 5),
            (Mode::Any, b"\r\nGET", 3),
        ];
        for &(mode, stream, at) in cases {
            let (p, fed, left) = trickle(mode, stream);
            assert_eq!((p, fed), (Progress::Refused(Refusal::Missing), at), "{mode} {stream:?}");
            assert_eq!(left, &stream[..at], "nothing drained");
            assert_eq!(whole(mode, stream), (Progress::Refused(Refusal::Missing), stream.to_vec()));
        }
    }

    #[test]
    fn malformed_v1() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWN \xc3\xa9\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n",
        ];
        for &stream in cases {
            assert_eq!(whole(Mode::V1, stream), (Progress::Refused(Refusal::Malformed), stream.to_vec()), "{stream:?}");
            assert_eq!(trickle(Mode::Any, stream).0, Progress::Refused(Refusal::Malformed), "{stream:?}");
        }
        // A bad byte refuses when it arrives, not at the line's end.
        assert_eq!(trickle(Mode::V1, b"PROXY TCP4 \n1.2.3.4").1, 12);
        assert_eq!(trickle(Mode::V1, b"PROXY \x16\x03\x01").1, 7);
    }

    #[test]
    fn unknown_ignores_whatever_precedes_the_line_end() {
        for stream in [
            &b"PROXY UNKNOWN ffff:f:f:f:f:f:f:ffff ffff:f:f:f:f:f:f:ffff 65535 65535\r\n"[..],
            b"PROXY UNKNOWN a b c d e f g\r\n",
            b"PROXY UNKNOWN x\r\n",
        ] {
            assert_eq!(whole(Mode::V1, stream), (local(Version::V1, stream.len()), vec![]), "{stream:?}");
        }
    }

    /// A v1 line of exactly `len` bytes (CR LF included).
    fn v1_of_len(len: usize) -> Vec<u8> {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(len - 2, b'x');
        line.extend_from_slice(b"\r\n");
        line
    }

    #[test]
    fn v1_at_107_bytes_is_accepted_and_108_is_too_long() {
        let ok = v1_of_len(107);
        assert_eq!(whole(Mode::V1, &ok), (local(Version::V1, 107), vec![]));
        assert_eq!(trickle(Mode::V1, &ok), (local(Version::V1, 107), 107, vec![]));
        let long = v1_of_len(108);
        // Decided at byte 106: the CR can no longer be at 106 or before.
        assert_eq!(trickle(Mode::V1, &long), (Progress::Refused(Refusal::TooLong), 106, long[..106].to_vec()));
        assert_eq!(whole(Mode::V1, &long), (Progress::Refused(Refusal::TooLong), long.clone()));
        // A longest real TCP6 line (104 bytes) is well within.
        let t6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(t6.len(), 104);
        assert!(matches!(whole(Mode::V1, t6).0, Progress::Done(_)));
        // Without any line end at all.
        assert_eq!(
            whole(Mode::V1, &[b"PROXY ".as_slice(), &[b'1'; 200]].concat()).0,
            Progress::Refused(Refusal::TooLong)
        );
    }

    #[test]
    fn v2_fixed_part_errors() {
        let addr4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let cases: &[(Vec<u8>, Refusal)] = &[
            // version 1 and 3 in the version nibble
            (v2(0x11, 0x11, &addr4), Refusal::Malformed),
            (v2(0x31, 0x11, &addr4), Refusal::Malformed),
            // command 2
            (v2(0x22, 0x11, &addr4), Refusal::Malformed),
            // TCP4 with a body too short for its addresses
            (v2(0x21, 0x11, &addr4[..8]), Refusal::Malformed),
            (v2(0x21, 0x21, &addr4), Refusal::Malformed),
            // UDP4, UDP6, UNIX stream, AF_UNSPEC, an undefined family or
            // transport with PROXY
            (v2(0x21, 0x12, &addr4), Refusal::UnsupportedFamily),
            (v2(0x21, 0x22, &[0; 36]), Refusal::UnsupportedFamily),
            (v2(0x21, 0x31, &[0; 216]), Refusal::UnsupportedFamily),
            (v2(0x21, 0x00, &[]), Refusal::UnsupportedFamily),
            (v2(0x21, 0x10, &addr4), Refusal::UnsupportedFamily),
            (v2(0x21, 0x41, &addr4), Refusal::UnsupportedFamily),
            (v2(0x21, 0x13, &addr4), Refusal::UnsupportedFamily),
            // LOCAL with an undefined family is not a header ppp takes
            (v2(0x20, 0x41, &[]), Refusal::Malformed),
        ];
        for (stream, why) in cases {
            assert_eq!(whole(Mode::V2, stream), (Progress::Refused(*why), stream.clone()), "{stream:?}");
            // Decided on the fixed 16 bytes, before the body.
            assert_eq!(trickle(Mode::Any, stream), (Progress::Refused(*why), 16, stream[..16].to_vec()), "{stream:?}");
        }
    }

    #[test]
    fn v2_waits_for_its_whole_body() {
        let mut big = v2(0x21, 0x21, &[7; 36]);
        // A TLV of 60,000 bytes after the addresses.
        let tlv_len: u16 = 60_000;
        let total_body = 36 + 3 + tlv_len as usize;
        big[14..16].copy_from_slice(&(total_body as u16).to_be_bytes());
        big.push(0xee);
        big.extend_from_slice(&tlv_len.to_be_bytes());
        big.resize(V2_FIXED + total_body, 9);
        let mut phase = Mode::V2.phase().unwrap();
        let mut input = EvBuffer::new();
        for piece in big.chunks(4096) {
            assert_eq!(phase.advance(&mut input), Progress::NeedMore);
            input.add_vec(piece.to_vec());
        }
        input.add(b"ab\n");
        match phase.advance(&mut input) {
            Progress::Done(h) => {
                assert_eq!(h.consumed, big.len());
                assert_eq!(h.source, Some("[707:707:707:707:707:707:707:707]:1799".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(contents(&input), b"ab\n");
    }

    #[test]
    fn the_longest_v2_header() {
        let body = vec![0u8; u16::MAX as usize];
        let h = v2(0x20, 0x00, &body);
        assert_eq!(h.len(), V2_MAX);
        assert_eq!(whole(Mode::V2, &h), (local(Version::V2, V2_MAX), vec![]));
    }

    #[test]
    fn a_refusal_repeats_and_drains_nothing() {
        let mut phase = Mode::V1.phase().unwrap();
        let mut input = EvBuffer::new();
        input.add(b"PROXY TCP4 \x01");
        for _ in 0..3 {
            assert_eq!(phase.advance(&mut input), Progress::Refused(Refusal::Malformed));
            input.add(b"more");
        }
        assert!(contents(&input).starts_with(b"PROXY TCP4 \x01more"));
    }

    #[test]
    fn end_of_input() {
        let phase = Mode::Any.phase().unwrap();
        assert_eq!(phase.end_of_input(&EvBuffer::new()), None);
        let mut input = EvBuffer::new();
        input.add(b"PROXY TCP4 1.2");
        let mut phase = Mode::Any.phase().unwrap();
        assert_eq!(phase.advance(&mut input), Progress::NeedMore);
        assert_eq!(phase.end_of_input(&input), Some(Refusal::Truncated));
    }

    #[test]
    fn refusal_names_are_stable_and_indexed() {
        let names: Vec<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            ["missing", "wrong_version", "malformed", "too_long", "unsupported_family", "truncated", "timeout"]
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
