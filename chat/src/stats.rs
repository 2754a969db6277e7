//! Stats: the counters the lower floors bump on their hot paths and the admin
//! module reads. Rule: a bump is one relaxed atomic add — no lock, no allocation,
//! no syscall — so counting costs the IO loops and workers nothing they would notice.
//!
//! The counters every frame bumps (frames and bytes in and out, chats) are kept in
//! [`SHARDS`] cache-line-aligned copies, one picked per thread: two IO loops that
//! bumped one shared line per frame would pass it between their cores on every
//! message. A read sums the copies.
//!
//! The session events that also make an audit line (logins, logouts, kicks,
//! protocol errors) are bumped through `audit`, which writes the line and the
//! counter together.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Msgids counted one by one; a larger (or negative) one counts in the last slot.
pub const MSGID_SLOTS: usize = 64;
/// Errnos counted one by one; a larger one counts in the last slot.
pub const ERRNO_SLOTS: usize = 256;

/// What happened to a chat frame this node routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chat {
    /// Handed to a connection on this node (also a frame another node routed here).
    Local,
    /// Appended to another node's stream.
    Remote,
    /// Stored offline by this node.
    Stored,
}

/// How a login ended (see `audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Logged in.
    Ok,
    /// Refused: bad credentials, already online, or the server unavailable.
    Failed,
    /// Refused by the login throttle before the password was checked.
    Throttled,
}

/// Copies of the per-frame counters (see the module's doc).
pub const SHARDS: usize = 8;

/// The counters bumped per frame, one copy per [`SHARDS`]; aligned so that two
/// copies never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    frames_in: [AtomicU64; MSGID_SLOTS],
    frames_out: [AtomicU64; MSGID_SLOTS],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    chats: [AtomicU64; 3],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            frames_in: std::array::from_fn(|_| AtomicU64::new(0)),
            frames_out: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            chats: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

thread_local! {
    /// This thread's shard: threads take them in turn as they first count.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// The counters of one server. Shared as `Arc<Stats>`; every method is safe to
/// call from any thread.
#[derive(Debug)]
pub struct Stats {
    shards: Box<[Shard; SHARDS]>,
    logins: [AtomicU64; 3],
    logouts: AtomicU64,
    kicks: AtomicU64,
    protocol_errors: [AtomicU64; ERRNO_SLOTS],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            logins: std::array::from_fn(|_| AtomicU64::new(0)),
            logouts: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            protocol_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn slot(n: i64, slots: usize) -> usize {
    usize::try_from(n).map_or(slots - 1, |i| i.min(slots - 1))
}

/// The non-zero slots of a per-number array, as (number, count); the last slot
/// is "other" (-1).
fn nonzero(a: &[AtomicU64]) -> Vec<(i64, u64)> {
    let counts: Vec<u64> = a.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    nonzero_counts(&counts)
}

fn nonzero_counts(counts: &[u64]) -> Vec<(i64, u64)> {
    let last = counts.len() - 1;
    counts
        .iter()
        .enumerate()
        .filter_map(|(i, &n)| {
            let id = if i == last { -1 } else { i as i64 };
            (n > 0).then_some((id, n))
        })
        .collect()
}

impl Stats {
    /// The calling thread's shard.
    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(|s| *s)]
    }

    /// A per-frame counter summed over the shards.
    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    /// A per-msgid array summed over the shards, as [`nonzero`] gives it.
    fn sum_slots(&self, slots: impl Fn(&Shard) -> &[AtomicU64; MSGID_SLOTS]) -> Vec<(i64, u64)> {
        let mut counts = [0u64; MSGID_SLOTS];
        for s in self.shards.iter() {
            for (total, c) in counts.iter_mut().zip(slots(s)) {
                *total += c.load(Ordering::Relaxed);
            }
        }
        nonzero_counts(&counts)
    }

    /// A request frame of `msgid` arrived (parsed or not: -1 when unreadable).
    pub fn frame_in(&self, msgid: i64) {
        bump(&self.shard().frames_in[slot(msgid, MSGID_SLOTS)], 1);
    }

    /// Bytes read from a client.
    pub fn bytes_in(&self, n: usize) {
        bump(&self.shard().bytes_in, n as u64);
    }

    /// A frame (JSON text and its NUL) queued to one connection; its msgid is read
    /// from the text (see [`peek_msgid`]).
    pub fn frame_out(&self, frame: &[u8]) {
        self.frames_out_n(frame, 1);
    }

    /// [`Stats::frame_out`] for a frame whose msgid the caller knows: the IO loops'
    /// chat path, where looking the msgid up in the frame cost more than the rest of
    /// the count.
    pub fn frame_out_as(&self, frame: &[u8], msgid: i64) {
        self.count_out(msgid, frame.len(), 1);
    }

    /// The same frame queued to `n` connections (a fan-out).
    pub fn frames_out_n(&self, frame: &[u8], n: u64) {
        self.count_out(peek_msgid(frame).unwrap_or(-1), frame.len(), n);
    }

    /// `n` frames of `msgid`, `len` bytes each, queued.
    fn count_out(&self, msgid: i64, len: usize, n: u64) {
        let shard = self.shard();
        bump(&shard.frames_out[slot(msgid, MSGID_SLOTS)], n);
        bump(&shard.bytes_out, n * len as u64);
    }

    /// `n` chat frames went `how`.
    pub fn chats(&self, how: Chat, n: usize) {
        if n > 0 {
            bump(&self.shard().chats[how as usize], n as u64);
        }
    }

    pub(crate) fn login(&self, how: Login) {
        bump(&self.logins[how as usize], 1);
    }

    pub(crate) fn logout(&self) {
        bump(&self.logouts, 1);
    }

    pub(crate) fn kick(&self) {
        bump(&self.kicks, 1);
    }

    pub(crate) fn protocol_error(&self, errno: i64) {
        bump(&self.protocol_errors[slot(errno, ERRNO_SLOTS)], 1);
    }

    /// Read side, for the admin module: a copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            frames_in: self.sum_slots(|s| &s.frames_in),
            frames_out: self.sum_slots(|s| &s.frames_out),
            bytes_in: self.sum(|s| &s.bytes_in),
            bytes_out: self.sum(|s| &s.bytes_out),
            logins_ok: get(&self.logins[Login::Ok as usize]),
            logins_failed: get(&self.logins[Login::Failed as usize]),
            logins_throttled: get(&self.logins[Login::Throttled as usize]),
            logouts: get(&self.logouts),
            kicks: get(&self.kicks),
            protocol_errors: nonzero(&self.protocol_errors),
            chats_local: self.sum(|s| &s.chats[Chat::Local as usize]),
            chats_remote: self.sum(|s| &s.chats[Chat::Remote as usize]),
            chats_stored: self.sum(|s| &s.chats[Chat::Stored as usize]),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (msgid, frames) received; msgid -1 is "unreadable or out of range".
    pub frames_in: Vec<(i64, u64)>,
    /// (msgid, frames) sent; msgid -1 is "none found or out of range".
    pub frames_out: Vec<(i64, u64)>,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes queued to clients.
    pub bytes_out: u64,
    /// Successful logins.
    pub logins_ok: u64,
    /// Refused logins.
    pub logins_failed: u64,
    /// Logins refused by the throttle.
    pub logins_throttled: u64,
    /// Sessions that ended after a login.
    pub logouts: u64,
    /// Users kicked by an operator.
    pub kicks: u64,
    /// (errno, count) of protocol errors answered; errno -1 is "out of range".
    pub protocol_errors: Vec<(i64, u64)>,
    /// Chats handed to a connection here.
    pub chats_local: u64,
    /// Chats handed to another node.
    pub chats_remote: u64,
    /// Chats stored offline.
    pub chats_stored: u64,
}

/// The top-level msgid of a wire frame, read without parsing it: the value of
/// the `"msgid":` key at the outermost object's level. Strings are skipped
/// whole (a `"msgid":` inside a chat's text is not a key), and so are nested
/// objects and arrays (the frames inside a HISTORY_ACK's `msgs`, which serde_json
/// writes after the top-level `msgid`, carry msgids of their own).
pub fn peek_msgid(frame: &[u8]) -> Option<i64> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < frame.len() {
        match frame[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                // To the closing quote: past every escaped character.
                loop {
                    let k = memchr::memchr2(b'"', b'\\', &frame[i..])?;
                    if frame[i + k] == b'\\' {
                        i += k + 2;
                    } else {
                        i += k;
                        break;
                    }
                }
                if depth == 1 && &frame[start..i] == b"msgid" && frame.get(i + 1) == Some(&b':') {
                    return int_at(&frame[i + 2..]);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The integer at the front of `digits` (JSON: an optional minus, then digits).
fn int_at(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.first() {
        Some(b'-') => (true, &digits[1..]),
        _ => (false, digits),
    };
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 18 {
        return None;
    }
    let n: i64 = std::str::from_utf8(&digits[..len]).ok()?.parse().ok()?;
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_the_top_level_msgid() {
        assert_eq!(peek_msgid(br#"{"errno":0,"msgid":2,"name":"a"}"#), Some(2));
        assert_eq!(
            peek_msgid(br#"{"id":1,"msg":"say \"msgid\":9","msgid":5,"toid":2}"#),
            Some(5)
        );
        assert_eq!(peek_msgid(b"{\"msgid\":-3}\0"), Some(-3));
        assert_eq!(peek_msgid(br#"{"x":1}"#), None);
        assert_eq!(peek_msgid(br#"{"msgid":"5"}"#), None);
        // A HISTORY_ACK: the frames in its `msgs` come after the top-level key.
        assert_eq!(
            peek_msgid(br#"{"errno":0,"more":false,"msgid":24,"msgs":[{"msgid":6,"msg":"a\"b"}],"peer":2}"#),
            Some(24)
        );
        // A key in a nested object before it, and an escaped backslash at a
        // string's end.
        assert_eq!(
            peek_msgid(br#"{"a":{"msgid":7},"b":"x\\","msgid":3}"#),
            Some(3)
        );
        assert_eq!(peek_msgid(br#"{"msg":"unterminated"#), None);
        assert_eq!(peek_msgid(b"}}{\"msgid\":1}"), None);
    }

    #[test]
    fn counts_by_slot() {
        let s = Stats::default();
        s.frame_in(5);
        s.frame_in(5);
        s.frame_in(1000);
        s.frames_out_n(b"{\"msgid\":6}\0", 3);
        s.chats(Chat::Remote, 2);
        // Counted on other threads (other shards) too: a read sums them all.
        std::thread::scope(|scope| {
            for _ in 0..2 * SHARDS {
                scope.spawn(|| {
                    s.frame_in(7);
                    s.bytes_in(10);
                    s.chats(Chat::Local, 1);
                });
            }
        });
        let snap = s.snapshot();
        assert_eq!(
            snap.frames_in,
            vec![(5, 2), (7, 2 * SHARDS as u64), (-1, 1)]
        );
        assert_eq!(snap.bytes_in, 20 * SHARDS as u64);
        assert_eq!(snap.chats_local, 2 * SHARDS as u64);
        assert_eq!(snap.frames_out, vec![(6, 3)]);
        assert_eq!(snap.bytes_out, 36);
        assert_eq!(snap.chats_remote, 2);
    }
}
