//! systemd's service notification protocol (`Type=notify`), without a
//! library: datagrams on `$NOTIFY_SOCKET` saying READY, STATUS, WATCHDOG
//! and STOPPING. Does nothing when not started by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// Sends `state` (e.g. "READY=1\nSTATUS=...") to the service manager.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::debug!("notifying the service manager: {e}");
    }
}

/// The service is up (the master mounted, the slave follows its topic).
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    notify(&format!("STATUS={status}"));
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    notify("STOPPING=1");
}

/// Keeps systemd's watchdog (`WatchdogSec=`) fed: `tick` from a loop that
/// only runs while the service is healthy sends WATCHDOG=1 at half the
/// interval systemd asked for.
pub struct Watchdog {
    every: Option<Duration>,
    last: Mutex<Option<Instant>>,
}

impl Watchdog {
    /// The watchdog systemd asked for (WATCHDOG_USEC), if any.
    pub fn from_env() -> Self {
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|us| Duration::from_micros(us) / 2);
        Watchdog {
            every,
            last: Mutex::new(None),
        }
    }

    /// Pings the watchdog when half its interval passed.
    pub fn tick(&self) {
        let Some(every) = self.every else {
            return;
        };
        let mut last = self.last.lock();
        if last.is_none_or(|t| t.elapsed() >= every) {
            notify("WATCHDOG=1");
            *last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("kafkafs-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = UnixDatagram::bind(&dir).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &dir);
        std::env::set_var("WATCHDOG_USEC", "2000000");
        ready("following topic t");
        Watchdog::from_env().tick();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=following topic t");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_file(&dir);
    }
}
