//! systemd's notify protocol: datagrams to `NOTIFY_SOCKET` (a path, or an
//! abstract name written `@name`). A no-op when the variable is unset.

use std::os::unix::net::UnixDatagram;

/// Sends `msg` (e.g. `READY=1`) if `NOTIFY_SOCKET` is set; errors are
/// logged at debug and otherwise ignored (systemd may be gone).
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    if let Err(e) = send(&path, msg) {
        tracing::debug!(target: "rot13d", error = %e, socket = %path, "sd_notify failed");
    }
}

fn send(path: &str, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), path)?;
    }
    Ok(())
}

/// Half of `WATCHDOG_USEC`, when systemd asks for watchdog pings.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.trim().parse::<i32>().ok())
        && pid != crate::sys::process::getpid()
    {
        return None;
    }
    Some(std::time::Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("rot13d-sdnotify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        send(dir.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&dir);
    }
}
