//! Before any load: each target must accept a connection, and each is classified as
//! ours (answers PING with PONG) or legacy (the original C++ server, which ignores
//! msgid 13). A legacy server parses whatever one read returns as one JSON document,
//! so the driver never lets it see two requests at once.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Ours: PING is answered, requests may be pipelined.
    Ext,
    /// The original: one request per read, no reply to PING.
    Legacy,
}

/// How long a target has to answer PING before it counts as legacy.
const PING_WAIT: Duration = Duration::from_millis(1500);
/// How long connecting may take before the target counts as down.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// Connects to `addr` and tells its dialect; an error says why the target is unusable.
/// With `force_legacy` it only checks that the target accepts connections.
pub fn probe(addr: SocketAddr, force_legacy: bool) -> Result<Dialect, String> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_WAIT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if force_legacy {
        return Ok(Dialect::Legacy);
    }
    s.write_all(b"{\"msgid\":13}\0")
        .map_err(|e| format!("{addr}: writing the probe: {e}"))?;
    let deadline = Instant::now() + PING_WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Dialect::Legacy);
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("{addr}: {e}"))?;
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("{addr} closed the connection at once")),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // Ours answers `{"msgid":14}` (field order is not promised).
                let text = String::from_utf8_lossy(&got);
                if text.contains("\"msgid\":14") {
                    return Ok(Dialect::Ext);
                }
                if got.len() > 64 * 1024 {
                    return Err(format!("{addr} answered PING with something else"));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Dialect::Legacy)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{addr}: reading the probe reply: {e}")),
        }
    }
}

/// Probes every target; exits the process with a clear message if one is unusable.
/// Returns whether any target is legacy (then every connection is paced).
pub fn probe_all(targets: &[SocketAddr], force_legacy: bool) -> bool {
    let mut legacy = false;
    for &t in targets {
        match probe(t, force_legacy) {
            Ok(d) => {
                eprintln!("target {t}: {d:?}");
                legacy |= d == Dialect::Legacy;
            }
            Err(e) => {
                eprintln!("chat-bench: {e}");
                std::process::exit(1);
            }
        }
    }
    legacy
}
