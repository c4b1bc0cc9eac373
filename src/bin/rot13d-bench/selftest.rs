//! `selftest`: the verifier must catch a single wrong byte, and the engine
//! must drive a tiny in-process rot13 echo server to completion (and fail
//! with exit code 1 when that server corrupts one byte). The unit tests run
//! the same checks.

use crate::pattern::{Pattern, rot13_byte};
use crate::{Common, Fail, scenarios};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

/// Starts a thread-per-connection server answering `rot13(input)` byte for
/// byte (the protocol's output for lines up to max_line), half-closing after
/// EOF; with `corrupt_at`, the byte at that stream offset of every
/// connection is flipped.
pub fn echo_server(corrupt_at: Option<u64>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s, corrupt_at));
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream, corrupt_at: Option<u64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for b in &mut buf[..n] {
            *b = rot13_byte(*b);
        }
        if let Some(k) = corrupt_at
            && (off..off + n as u64).contains(&k)
        {
            buf[(k - off) as usize] ^= 0x01;
        }
        off += n as u64;
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Options for a short run against `addr`.
pub fn common(addr: SocketAddr, conns: usize, lines: u64) -> Common {
    Common {
        addr,
        conns: Some(conns),
        line_len: Some(64),
        duration: 1.0,
        warmup: 0.0,
        lines: Some(lines),
        cpu: None,
        json: false,
        server_pid: None,
        window: Some(8 * 1024),
        max_line: 16384,
        seed: 5,
        discard: false,
        label: "selftest".into(),
        case: String::new(),
    }
}

/// The verifier reports the first wrong byte wherever it is.
pub fn check_single_byte() -> Result<(), Fail> {
    let p = Pattern::new(64, 4096, 9);
    let good = p.expect_at(100, 3000).to_vec();
    p.check(100, &good).map_err(|m| Fail::io(format!("good data rejected: {m:?}")))?;
    for i in [0, 1, 63, 64, 1500, 2999] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        match p.check(100, &bad) {
            Err(m) if m.index == i => {}
            other => {
                return Err(Fail::io(format!("byte {i} flipped: verifier said {other:?}")));
            }
        }
    }
    Ok(())
}

/// Runs every check; fails on the first that does not hold.
pub fn run() -> Result<(), Fail> {
    check_single_byte()?;
    let good = echo_server(None).map_err(|e| Fail::io(format!("echo server: {e}")))?;
    scenarios::tput(&common(good, 4, 50_000))?;
    scenarios::lat(&common(good, 2, 2_000))?;
    let bad = echo_server(Some(123_457)).map_err(|e| Fail::io(format!("echo server: {e}")))?;
    match scenarios::tput(&common(bad, 2, 10_000)) {
        Err(f) if f.code == 1 => eprintln!("selftest: corrupted byte caught: {}", f.msg),
        Err(f) => {
            return Err(Fail::io(format!("corrupt server: wrong failure: {}", f.msg)));
        }
        Ok(()) => return Err(Fail::io("corrupt server: run passed".into())),
    }
    println!("selftest ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_catches_one_byte() {
        check_single_byte().unwrap();
    }

    #[test]
    fn tput_and_lat_against_echo_thread() {
        let a = echo_server(None).unwrap();
        scenarios::tput(&common(a, 3, 30_001)).unwrap();
        scenarios::lat(&common(a, 2, 500)).unwrap();
        let mut c = common(a, 2, 0);
        c.lines = None;
        c.duration = 0.2;
        scenarios::tput(&c).unwrap();
    }

    #[test]
    fn tput_fails_on_one_corrupted_byte() {
        let a = echo_server(Some(70_001)).unwrap();
        let f = scenarios::tput(&common(a, 1, 5_000)).unwrap_err();
        assert_eq!(f.code, 1, "{}", f.msg);
        assert!(f.msg.contains("stream offset 70001"), "{}", f.msg);
    }
}
