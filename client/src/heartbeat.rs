//! Heartbeat: while logged in, a PING (msgid 13) at login and then every interval.
//!
//! Our server answers with a PONG, which the reader counts and otherwise ignores; the first
//! PONG is also how the client learns that the server is ours. A legacy server ignores
//! msgid 13 harmlessly.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::session::Session;

/// The interval when `CHAT_HEARTBEAT_SECS` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The interval from `CHAT_HEARTBEAT_SECS` (seconds, fractions allowed; `0` disables the
/// periodic PING); the default when unset or unreadable.
pub fn interval_from_env() -> Option<Duration> {
    match std::env::var("CHAT_HEARTBEAT_SECS") {
        Ok(v) => parse_interval(&v),
        Err(_) => Some(DEFAULT_INTERVAL),
    }
}

/// Parses a number of seconds; `None` for zero, the default for garbage.
fn parse_interval(v: &str) -> Option<Duration> {
    match v.trim().parse::<f64>() {
        Ok(0.0) => None,
        Ok(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(86_400.0))),
        _ => Some(DEFAULT_INTERVAL),
    }
}

/// Starts the heartbeat thread; it ends when the session closes.
pub fn spawn(session: Arc<Session>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || run(&session))
}

fn run(session: &Session) {
    loop {
        let mut st = session.state();
        loop {
            if st.closing {
                return;
            }
            let now = Instant::now();
            match st.next_ping {
                // No connection: the next login connects again and resets the due time.
                _ if st.reader_done => st = session.wait(st, Duration::from_secs(3600)),
                Some(due) if due <= now => break,
                Some(due) => st = session.wait(st, due - now),
                None => st = session.wait(st, Duration::from_secs(3600)),
            }
        }
        st.next_ping = session.heartbeat().map(|i| Instant::now() + i);
        let ack = st.resume.ack_due(true);
        drop(st);
        // A failed write means the connection is gone; the reader reports that.
        if let Some(ack) = ack {
            let _ = session.send(&ack);
        }
        let _ = session.ping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("0"), None);
        assert_eq!(parse_interval("0.0"), None);
        assert_eq!(parse_interval(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("x"), Some(DEFAULT_INTERVAL));
        assert_eq!(parse_interval("-1"), Some(DEFAULT_INTERVAL));
        assert_eq!(parse_interval("inf"), Some(DEFAULT_INTERVAL));
    }
}
