//! Resume: what lets an interactive session survive a dropped connection — the
//! resume token, the `dseq`s of the chat frames already shown (so a frame the
//! server sends again is not shown twice), the SEQ_ACKs, and the reconnect loop
//! with jittered exponential backoff (protocol.md §11, §12).
//!
//! The rule: a chat frame is shown only if its `dseq` was not seen before in this
//! run; a frame without one (a legacy server, a piped session) is always shown.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat::protocol::msgid;
use serde_json::{json, Value};

use crate::session::Session;
use crate::transport::ReadHalf;

/// The `dseq`s remembered: far more than a server keeps unacknowledged (4,096).
const SEEN_MAX: usize = 65_536;
/// Send a SEQ_ACK after this many frames…
const ACK_FRAMES: u32 = 32;
/// …or when the last one is this old.
const ACK_AGE: Duration = Duration::from_secs(1);
/// The first retry's wait (before jitter); it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two attempts (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Reconnecting gives up (and the client exits as before) after this long.
const GIVE_UP: Duration = Duration::from_secs(120);

/// The resumable part of a session, in [`crate::session::State`].
#[derive(Debug, Default)]
pub struct Resume {
    /// Reconnect on a dropped connection (interactive, and not `--no-reconnect`).
    pub enabled: bool,
    /// The token of the last LOGIN_ACK or RESUME_ACK (our server, ext).
    pub token: Option<String>,
    /// The `dseq`s shown, the most recent [`SEEN_MAX`].
    seen: BTreeSet<u64>,
    /// The highest `dseq` seen: what a RESUME and a SEQ_ACK carry.
    pub last: u64,
    /// Frames taken since the last SEQ_ACK.
    unacked: u32,
    /// When the last SEQ_ACK went out.
    acked_at: Option<Instant>,
    /// The session was replaced by a newer one (error 121): do not come back.
    pub replaced: bool,
    /// A RESUME is on its way: its answer prints the notice.
    pub resuming: bool,
}

impl Resume {
    /// Takes a chat frame: true if it is to be shown (its `dseq`, if any, is new).
    pub fn take(&mut self, frame: &Value) -> bool {
        let Some(dseq) = frame.get("dseq").and_then(Value::as_u64) else {
            return true;
        };
        if !self.seen.insert(dseq) {
            return false;
        }
        if self.seen.len() > SEEN_MAX {
            self.seen.pop_first();
        }
        self.last = self.last.max(dseq);
        self.unacked += 1;
        true
    }

    /// The SEQ_ACK owed now, if any: after [`ACK_FRAMES`] frames, or with `force`
    /// (the heartbeat, or the input went quiet) once [`ACK_AGE`] passed.
    pub fn ack_due(&mut self, force: bool) -> Option<Value> {
        let old = self.acked_at.is_none_or(|t| t.elapsed() >= ACK_AGE);
        if self.unacked == 0 || (self.unacked < ACK_FRAMES && !(force && old)) {
            return None;
        }
        self.unacked = 0;
        self.acked_at = Some(Instant::now());
        Some(json!({"msgid": msgid::SEQ_ACK, "seq": self.last}))
    }

    /// The RESUME for user `id`, if there is a token to resume with.
    fn request(&self, id: i64) -> Option<Value> {
        let token = self.token.as_ref()?;
        Some(json!({
            "ext": 1, "id": id, "lastseq": self.last, "msgid": msgid::RESUME, "token": token
        }))
    }
}

/// The wait before attempt `n` (0-based): exponential, capped, and jittered to
/// 50–100 % so that the users of a failed node do not all come back at once.
pub fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_FIRST
        .saturating_mul(1u32 << n.min(8))
        .min(BACKOFF_MAX);
    exp.mul_f64(0.5 + 0.5 * jitter())
}

/// A number in [0, 1) that differs between clients and attempts (no crate needed
/// for this: the clock's nanoseconds and the pid, mixed).
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// After the connection dropped: if the session can be resumed, connects again to
/// the same address (with backoff, so a proxy in front picks a live node) and
/// sends RESUME; returns the new read half. `None`: exit as before.
pub fn reconnect(session: &Session) -> Option<ReadHalf> {
    let resume = {
        let st = session.state();
        let r = &st.resume;
        if !r.enabled || r.replaced || st.closing {
            return None;
        }
        r.request(st.user.as_ref()?.id)?
    };
    let started = Instant::now();
    let mut attempt = 0;
    while started.elapsed() < GIVE_UP {
        std::thread::sleep(backoff(attempt));
        attempt += 1;
        if session.state().closing {
            return None;
        }
        let Ok(read) = session.replace_connection() else {
            continue;
        };
        session.state().resume.resuming = true;
        if session.send(&resume).is_ok() {
            return Some(read);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_a_dseq_once_and_acks_in_batches() {
        let mut r = Resume::default();
        assert!(r.take(&json!({"msgid": 6, "dseq": 5})));
        assert!(!r.take(&json!({"msgid": 6, "dseq": 5})));
        assert!(
            r.take(&json!({"msgid": 6, "dseq": 3})),
            "a late one is shown"
        );
        assert!(r.take(&json!({"msgid": 6})));
        assert_eq!(r.last, 5);
        assert_eq!(r.ack_due(true), Some(json!({"msgid": 19, "seq": 5})));
        assert_eq!(r.ack_due(true), None);
        for s in 10..10 + u64::from(ACK_FRAMES) {
            r.take(&json!({"dseq": s}));
        }
        assert!(r.ack_due(false).is_some());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert!(backoff(0) >= BACKOFF_FIRST / 2 && backoff(0) <= BACKOFF_FIRST);
        assert!(backoff(30) <= BACKOFF_MAX && backoff(30) >= BACKOFF_MAX / 2);
    }
}
