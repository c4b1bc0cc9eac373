//! What the server process tree costs: CPU time and resident memory from
//! /proc.
//!
//! A server may be one process (the peers, `rot13d --workers 0`) or a master
//! with workers (`rot13d --workers N`), so every figure is summed over the
//! process and all its descendants, found by walking ppid links.

use std::collections::HashMap;

/// Clock ticks per second of /proc/PID/stat times (`USER_HZ`, 100 on every
/// Linux architecture rot13d runs on; the kernel ABI fixes it for userspace).
pub const USER_HZ: u64 = 100;

/// `utime + stime` of one process (all its threads), in ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and all its live descendants.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(pp) = ppid(p) {
                children.entry(pp).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU ticks used so far by `pid` and its descendants.
pub fn tree_cpu_ticks(pid: i32) -> u64 {
    tree(pid).into_iter().filter_map(cpu_ticks).sum()
}

/// Resident bytes of `pid` and its descendants.
pub fn tree_rss(pid: i32) -> u64 {
    tree(pid).into_iter().filter_map(rot13d::sys::process::rss_bytes).sum()
}

/// CPU ticks used so far by this process.
pub fn self_cpu_ticks() -> u64 {
    cpu_ticks(rot13d::sys::process::getpid()).unwrap_or(0)
}

/// Ticks to microseconds.
pub fn ticks_to_us(t: u64) -> f64 {
    t as f64 * 1e6 / USER_HZ as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_visible() {
        let me = rot13d::sys::process::getpid();
        assert!(cpu_ticks(me).is_some());
        assert!(tree(me).contains(&me));
        assert!(tree_rss(me) > 0);
    }
}
