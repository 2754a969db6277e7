//! Reading and accounting helpers of the hardening tests: sequence-numbered
//! messages, replies that may take longer than the test client's timeout, chats
//! drained from a connection, and a per-recipient ledger of sent and received.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Next, RawReader};
use crate::util::{frame_bytes, one_chat, parsed, Client, User};

/// A PING frame.
pub const PING: &[u8] = b"{\"msgid\":13}\0";

/// Reads up to `n` one-to-one chats from `r` (10 s of silence ends it early) and
/// returns their sequence numbers in arrival order; `who` names the connection in
/// the panic for any other frame or an end of stream.
pub fn read_seqs(r: &mut RawReader, n: usize, who: &str) -> Vec<usize> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        match r.next_within(Duration::from_secs(10)) {
            Next::Frame(v) if v["msgid"] == 6 => seqs.push(seq_of(&v)),
            Next::Frame(v) => panic!("unexpected frame for {who}: {v}"),
            Next::Timeout => break,
            Next::Eof => panic!("the server closed {who}"),
        }
    }
    seqs
}

/// The sequence number at the start of a message text (`"00042 ..."`).
pub fn seq_of(msg: &Value) -> usize {
    let text = msg["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no msg in {msg}"));
    text.split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sequence number in {text:?}"))
}

/// The sequence numbers in the `offlinemsg` of a LOGIN_ACK.
pub fn stored_seqs(ack: &Value) -> Vec<usize> {
    parsed(ack, "offlinemsg").iter().map(seq_of).collect()
}

/// Asserts that `got` is exactly `0..n`, naming the first difference.
pub fn assert_exactly_in_order(got: &[usize], n: usize, what: &str) {
    if let Some(i) = (0..n.min(got.len())).find(|&i| got[i] != i) {
        panic!(
            "{what}: position {i} holds message {} (got {} of {n})",
            got[i],
            got.len()
        );
    }
    assert_eq!(got.len(), n, "{what}: {} messages for {n} sent", got.len());
}

/// The next frame on `c` within `limit` (longer than the client's own timeout: a
/// failing database may take seconds), and how long since `t` it took.
pub fn recv_slow(c: &Client, t: Instant, limit: Duration) -> (Value, Duration) {
    let mut r = RawReader::new(c.stream());
    let v = match r.next_within(limit) {
        Next::Frame(v) => v,
        other => panic!("no reply within {limit:?}: {other:?}"),
    };
    assert_eq!(r.pending(), 0, "more than one frame arrived");
    (v, t.elapsed())
}

/// Sends a chat from `from` and reads until its PONG barrier: `true` if it was
/// accepted, `false` if refused with error 110 (anything else fails).
pub fn chat_accepted(from: &mut User, to: i64, text: &str) -> bool {
    let mut bytes = frame_bytes(&one_chat(from.id, &from.name, to, text));
    bytes.extend_from_slice(PING);
    from.c.send_raw(&bytes);
    let mut r = RawReader::new(from.c.stream());
    let mut refused = false;
    loop {
        let v = match r.next_within(Duration::from_secs(30)) {
            Next::Frame(v) => v,
            other => panic!("no reply to a chat and PING within 30 s: {other:?}"),
        };
        match (v["msgid"].as_i64(), v["errno"].as_i64()) {
            (Some(14), _) => {
                assert_eq!(r.pending(), 0, "a frame after the PONG");
                return !refused;
            }
            (Some(11), Some(110)) if v["reqmsgid"] == 6 && !refused => refused = true,
            _ => panic!("unexpected reply to a chat: {v}"),
        }
    }
}

/// The chat texts that arrive on `c` until it is quiet for `quiet` (via a reader
/// that leaves nothing behind).
pub fn drain_chats(c: &Client, quiet: Duration) -> Vec<String> {
    let mut r = RawReader::new(c.stream());
    let mut out = Vec::new();
    loop {
        match r.next_within(quiet) {
            Next::Frame(v) if v["msgid"] == 6 => out.push(v["msg"].as_str().unwrap().to_owned()),
            Next::Frame(v) => panic!("unexpected frame {v}"),
            Next::Timeout => break,
            Next::Eof => panic!("disconnected"),
        }
    }
    assert_eq!(r.pending(), 0, "half a frame left");
    out
}

/// The chat texts that arrive on `c` up to and including `text`, or all that
/// arrived within `limit` if it does not.
pub fn chats_until(c: &Client, text: &str, limit: Duration) -> Vec<String> {
    let mut r = RawReader::new(c.stream());
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        match r.next_by(deadline) {
            Next::Frame(v) if v["msgid"] == 6 => {
                let msg = v["msg"].as_str().unwrap().to_owned();
                let done = msg == text;
                out.push(msg);
                if done {
                    break;
                }
            }
            Next::Frame(v) => panic!("unexpected frame {v}"),
            Next::Timeout => break,
            Next::Eof => panic!("disconnected"),
        }
    }
    assert_eq!(r.pending(), 0, "a frame after {text:?}");
    out
}

/// The `msg` texts of a LOGIN_ACK's offline messages.
pub fn offline_texts(ack: &Value) -> Vec<String> {
    parsed(ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect()
}

/// Per recipient: what was sent to it, and what it got (live or stored).
#[derive(Default)]
pub struct Ledger {
    sent: BTreeMap<i64, Vec<String>>,
    live: BTreeMap<i64, Vec<String>>,
    stored: BTreeMap<i64, Vec<String>>,
}

impl Ledger {
    pub fn sent(&mut self, to: i64, text: &str) {
        self.sent.entry(to).or_default().push(text.to_owned());
    }

    pub fn live(&mut self, to: i64, texts: impl IntoIterator<Item = String>) {
        self.live.entry(to).or_default().extend(texts);
    }

    pub fn stored(&mut self, to: i64, ack: &Value) {
        self.stored
            .entry(to)
            .or_default()
            .extend(offline_texts(ack));
    }

    /// Asserts that every recipient got exactly what was sent to it, once; returns
    /// (sent, live, stored) totals.
    pub fn check(&self) -> (usize, usize, usize) {
        let n = |m: &BTreeMap<i64, Vec<String>>| m.values().map(Vec::len).sum();
        for (to, sent) in &self.sent {
            let mut got: Vec<&String> = self.live.get(to).into_iter().flatten().collect();
            got.extend(self.stored.get(to).into_iter().flatten());
            got.sort();
            let mut want: Vec<&String> = sent.iter().collect();
            want.sort();
            assert_eq!(got, want, "user {to}: received (live + stored) != sent");
        }
        (n(&self.sent), n(&self.live), n(&self.stored))
    }
}
