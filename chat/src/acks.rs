//! Acknowledged delivery: the sequence numbers an acking connection's chat frames
//! carry, and the frames it has not acknowledged yet (protocol.md §12).
//!
//! The rule: every chat frame written to an acking connection gets `"dseq":N` as
//! its last field, in write order, and stays in the window until the client's
//! cumulative SEQ_ACK covers it; at the close whatever is still in the window goes
//! back to the offline store *with* its seq, so a resumed client that already saw
//! it drops it instead of showing it twice. A frame that already carries a seq
//! (one put back earlier) keeps it.
//!
//! A frame from another node's sender comes through this node's Redis stream; the
//! stream reader numbers it for its acking recipients *before* it is handed over
//! ([`AckWindow::reserve`]) and records that number in Redis (`bus::records`), so
//! that if this node is killed the drain stores it with the same `dseq`: a client
//! that read it drops the copy, and one that did not (it sat in a kernel buffer)
//! gets it. The record goes once the client acknowledged the frame ([`Records`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Frames a client may leave unacknowledged; beyond this (or [`WINDOW_BYTES`]) new
/// frames are stored instead, until an ACK makes room.
pub const WINDOW_FRAMES: usize = 4096;
/// Bytes of unacknowledged frames, at most (see [`WINDOW_FRAMES`]).
pub const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// The suffix the seq is written with: `,"dseq":N}` closes the frame.
const SEQ_KEY: &[u8] = b",\"dseq\":";

/// The (user, dseq) pairs of stream frames whose Redis record (see the module
/// doc) is no longer needed: acknowledged, or back in the offline store with their
/// seq. Filled by the windows, emptied by the stream reader, which deletes them.
#[derive(Debug, Default)]
pub struct Records {
    released: Mutex<Vec<(i64, u64)>>,
}

impl Records {
    /// Takes the pairs released since the last call.
    pub fn take(&self) -> Vec<(i64, u64)> {
        std::mem::take(&mut *self.released.lock())
    }

    fn release(&self, pairs: impl Iterator<Item = (i64, u64)>) {
        self.released.lock().extend(pairs);
    }
}

/// One connection's acknowledgement window.
#[derive(Debug)]
pub struct AckWindow {
    /// The seq the next unstamped frame gets.
    next: u64,
    /// Written, unacknowledged frames (seq, JSON text with the seq, whether its seq
    /// is recorded in Redis), oldest first.
    unacked: VecDeque<(u64, Vec<u8>, bool)>,
    /// Seqs given to stream frames ([`AckWindow::reserve`]) not written here yet.
    reserved: HashSet<u64>,
    /// The user, and where to release recorded seqs; set by the first reservation.
    records: Option<(i64, Arc<Records>)>,
    /// Their total size, for [`WINDOW_BYTES`].
    bytes: usize,
    /// A frame was held back (or a drain skipped) because the window was full: the
    /// ACK that makes room must start the drain of what was stored meanwhile.
    blocked: bool,
}

impl AckWindow {
    /// A window whose first new frame gets `base`.
    pub fn new(base: u64) -> AckWindow {
        AckWindow {
            next: base.max(1),
            unacked: VecDeque::new(),
            reserved: HashSet::new(),
            records: None,
            bytes: 0,
            blocked: false,
        }
    }

    /// Records a chat frame (JSON text, without its NUL) as written and returns
    /// it with its seq: its own if it has one, else the next.
    pub fn stamp(&mut self, text: &[u8]) -> Vec<u8> {
        let (seq, stamped) = match seq_of(text) {
            Some(seq) => (seq, text.to_vec()),
            None => (self.next, with_seq(text, self.next)),
        };
        self.next = self.next.max(seq + 1);
        self.bytes += stamped.len();
        let recorded = self.reserved.remove(&seq);
        self.unacked.push_back((seq, stamped.clone(), recorded));
        stamped
    }

    /// Numbers a frame of another node's sender for `user` before it is handed
    /// over (the caller records the number in Redis first); the frame then carries
    /// it when written. Frames written here meanwhile get higher numbers, so this
    /// one can come after them: the only frames out of `dseq` order besides those
    /// put back late.
    pub fn reserve(&mut self, user: i64, records: &Arc<Records>) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.reserved.insert(seq);
        self.records.get_or_insert_with(|| (user, records.clone()));
        seq
    }

    /// Releases the records of `seqs` (acknowledged, or stored again).
    fn release(&self, seqs: impl Iterator<Item = u64>) {
        if let Some((user, records)) = &self.records {
            records.release(seqs.map(|s| (*user, s)));
        }
    }

    /// Whether the window is at its bound (live frames must wait in the store).
    pub fn is_full(&self) -> bool {
        self.unacked.len() >= WINDOW_FRAMES || self.bytes >= WINDOW_BYTES
    }

    /// Notes that a frame or a drain waited for room.
    pub fn block(&mut self) {
        self.blocked = true;
    }

    /// The client has everything up to the frame with `seq`: drops it and all
    /// written before it (or, if no frame has that seq, those with a seq at or
    /// below it from the front). True if a blocked window has room again.
    pub fn ack(&mut self, seq: u64) -> bool {
        let upto = self.unacked.iter().position(|(s, _, _)| *s == seq);
        let n = upto.map_or_else(
            || {
                self.unacked
                    .iter()
                    .take_while(|(s, _, _)| *s <= seq)
                    .count()
            },
            |i| i + 1,
        );
        let mut recorded = Vec::new();
        for (s, f, rec) in self.unacked.drain(..n) {
            self.bytes -= f.len();
            if rec {
                recorded.push(s);
            }
        }
        self.release(recorded.into_iter());
        let room = self.blocked && !self.is_full();
        if room {
            self.blocked = false;
        }
        room
    }

    /// Takes every unacknowledged frame's text (with its seq), oldest first (the
    /// caller stores them again: their records, and those of frames reserved but
    /// not written here, which are stored or on their way to the store, go).
    pub fn take(&mut self) -> Vec<String> {
        self.bytes = 0;
        let recorded: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, _, rec)| *rec)
            .map(|(s, _, _)| *s)
            .chain(self.reserved.drain())
            .collect();
        self.release(recorded.into_iter());
        self.unacked
            .drain(..)
            .map(|(_, f, _)| String::from_utf8_lossy(&f).into_owned())
            .collect()
    }

    /// How many frames are unacknowledged.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// True when every written frame was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// The first seq of a new session: above the client's `last` seen, above every
/// seq among the stored frames it is about to get (`stored`), and at least the
/// wall clock in microseconds, so that no earlier session of the user (whose
/// frames can still be put back late, by a node that closes it after the resume)
/// used the numbers it hands out — unless it wrote more than one frame per
/// microsecond of its life.
pub fn first_seq<'a>(last: u64, stored: impl Iterator<Item = &'a str>) -> u64 {
    let stored = stored
        .filter_map(|t| seq_of(t.as_bytes()))
        .max()
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let first = last.max(stored).saturating_add(1).max(now);
    // Every dseq must stay a JSON integer a browser reads exactly and the client
    // can acknowledge (SEQ_ACK takes 0..=2^53): a `lastseq` (or a stored dseq)
    // that leaves no room below 2^53 is not one this server handed out, so the
    // session starts again from the clock.
    if first > MAX_FIRST_SEQ {
        now
    } else {
        first
    }
}

/// The highest first seq of a session: 2^32 frames below 2^53.
const MAX_FIRST_SEQ: u64 = (1 << 53) - (1 << 32);

/// The seq a frame's text ends with (`,"dseq":N}`), if any. Only the server writes
/// it there: a sender's own `dseq` is removed from what it sends, and a delivered
/// chat frame's last field is otherwise `time` or later.
pub fn seq_of(text: &[u8]) -> Option<u64> {
    let body = text.strip_suffix(b"}")?;
    let digits = body.len() - body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, num) = body.split_at(digits);
    if num.is_empty() || num.len() > 19 || !head.ends_with(SEQ_KEY) {
        return None;
    }
    std::str::from_utf8(num).ok()?.parse().ok()
}

/// `text` without the `dseq` a server wrote last into it: what a connection that
/// does not ack gets (a legacy client never sees the field).
pub fn strip_seq(text: &[u8]) -> Option<Vec<u8>> {
    seq_of(text)?;
    let body = text.strip_suffix(b"}")?;
    let cut = body.len() - body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let mut out = body[..cut - SEQ_KEY.len()].to_vec();
    out.push(b'}');
    Some(out)
}

/// `text` (a JSON object with at least one field) with `"dseq":seq` as its last field.
pub fn with_seq(text: &[u8], seq: u64) -> Vec<u8> {
    let body = text.strip_suffix(b"}").unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() + 28);
    out.extend_from_slice(body);
    out.extend_from_slice(SEQ_KEY);
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_in_order_and_keeps_an_earlier_seq() {
        let mut w = AckWindow::new(10);
        assert_eq!(w.stamp(br#"{"msgid":6}"#), br#"{"msgid":6,"dseq":10}"#);
        assert_eq!(
            w.stamp(br#"{"msgid":6,"dseq":40}"#),
            br#"{"msgid":6,"dseq":40}"#
        );
        assert_eq!(w.stamp(br#"{"msgid":5}"#), br#"{"msgid":5,"dseq":41}"#);
        assert_eq!(seq_of(br#"{"msgid":6,"dseq":41}"#), Some(41));
        assert_eq!(seq_of(br#"{"msgid":6,"xseq":41}"#), None);
        assert_eq!(seq_of(br#"{"msg":"a,\"seq\":4","time":"t"}"#), None);
        assert!(!w.ack(40));
        assert_eq!(w.take(), [r#"{"msgid":5,"dseq":41}"#]);
        assert_eq!(strip_seq(br#"{"a":1,"dseq":7}"#).unwrap(), br#"{"a":1}"#);
        assert_eq!(strip_seq(br#"{"a":1}"#), None);
    }

    #[test]
    fn ack_of_an_unknown_seq_drops_those_below_it() {
        let mut w = AckWindow::new(1);
        for _ in 0..3 {
            w.stamp(b"{\"a\":1}");
        }
        w.ack(2);
        assert_eq!(w.len(), 1);
        w.ack(100);
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_window_blocks_until_an_ack() {
        let mut w = AckWindow::new(1);
        for _ in 0..WINDOW_FRAMES {
            w.stamp(b"{\"a\":1}");
        }
        assert!(w.is_full());
        w.block();
        assert!(w.ack(1));
        assert!(!w.ack(2), "unblocked once");
    }

    #[test]
    fn reserved_seqs_are_released_when_acked_or_taken() {
        let records = Arc::new(Records::default());
        let mut w = AckWindow::new(10);
        let a = w.reserve(7, &records);
        let b = w.reserve(7, &records);
        assert_eq!((a, b), (10, 11));
        assert_eq!(w.stamp(br#"{"m":1}"#), br#"{"m":1,"dseq":12}"#);
        w.stamp(&with_seq(br#"{"m":2}"#, a));
        assert!(records.take().is_empty());
        w.ack(a);
        assert_eq!(records.take(), [(7, a)]);
        // `b` was never written here (stored instead): released with the window.
        assert!(w.take().is_empty());
        assert_eq!(records.take(), [(7, b)]);
    }

    #[test]
    fn first_seq_is_above_what_was_seen_and_stored() {
        let big = 1u64 << 52;
        let stored = [format!(r#"{{"a":1,"dseq":{big}}}"#)];
        assert_eq!(first_seq(5, stored.iter().map(String::as_str)), big + 1);
        assert!(first_seq(0, std::iter::empty()) > 1_700_000_000_000_000);
        // A lastseq that leaves no room below 2^53 (SEQ_ACK's limit) restarts from
        // the clock: the frames it numbers can still be acknowledged.
        let clock = first_seq(0, std::iter::empty());
        let capped = first_seq(1 << 53, std::iter::empty());
        assert!(capped >= clock && capped < 1 << 52, "{capped}");
    }
}
