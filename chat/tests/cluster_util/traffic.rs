//! Threaded traffic for the failure tests: a [`Peer`] is a logged-in client whose
//! reader thread records everything it receives; a [`Writer`] thread sends numbered
//! chat messages, each followed by a PING, so the k-th PONG confirms that the server
//! handled the k-th message. The [`Ledger`] then accounts for every delivery a sent
//! message owes: received live, stored (and returned in `offlinemsg`), lost, or
//! duplicated.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{frame_bytes, group_chat, one_chat, Client, Recv, PING};

/// What a peer's reader thread saw.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Chat frames (msgid 6 and 10), with when they arrived.
    pub chats: Vec<(Instant, Value)>,
    /// When each PONG arrived.
    pub pongs: Vec<Instant>,
    /// Anything else.
    pub other: Vec<Value>,
    /// The server closed the connection.
    pub eof: bool,
}

impl Inbox {
    /// The `msg` texts of the chat frames, in arrival order.
    pub fn texts(&self) -> Vec<String> {
        self.chats
            .iter()
            .map(|(_, v)| v["msg"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A logged-in user whose connection is read by a background thread.
pub struct Peer {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: String,
    writer: TcpStream,
    inbox: Arc<Mutex<Inbox>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Peer {
    /// Takes over a logged-in client.
    pub fn start(id: i64, name: &str, mut client: Client) -> Peer {
        let writer = client.writer();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let inbox = inbox.clone();
            let stop = stop.clone();
            thread::spawn(move || loop {
                match client.recv_by(Instant::now() + Duration::from_millis(100)) {
                    Recv::Frame(v) => {
                        let mut ib = inbox.lock().unwrap_or_else(|e| e.into_inner());
                        match v["msgid"].as_i64() {
                            Some(6 | 10) => ib.chats.push((Instant::now(), v)),
                            Some(14) => ib.pongs.push(Instant::now()),
                            _ => ib.other.push(v),
                        }
                    }
                    Recv::Eof => {
                        inbox.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
                        return;
                    }
                    Recv::Timeout if stop.load(Ordering::Acquire) => return,
                    Recv::Timeout => {}
                }
            })
        };
        Peer {
            id,
            name: name.to_owned(),
            writer,
            inbox,
            stop,
            reader: Some(reader),
        }
    }

    /// What was received so far.
    pub fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `pred` holds for the inbox; false after `limit`.
    pub fn wait(&self, limit: Duration, pred: impl Fn(&Inbox) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if pred(&self.inbox()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends raw bytes on the connection.
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.writer).write_all(bytes)
    }

    /// LOGINOUT, and waits for the PONG behind it (so every frame sent to this user
    /// after this returns is stored for the next login, not delivered here).
    pub fn logout(&self) {
        let pongs = self.inbox().pongs.len();
        let mut bytes = frame_bytes(&json!({"id": self.id, "msgid": 3}));
        bytes.extend_from_slice(PING);
        self.send_raw(&bytes).expect("send LOGINOUT");
        assert!(
            self.wait(super::client::TIMEOUT, |ib| ib.pongs.len() > pongs),
            "no PONG after LOGINOUT of {}",
            self.id
        );
    }

    /// Stops the reader and returns what it saw.
    pub fn finish(mut self) -> Inbox {
        self.stop.store(true, Ordering::Release);
        if let Some(r) = self.reader.take() {
            r.join().expect("reader thread");
        }
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

/// Where a writer sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// One-to-one.
    User(i64),
    /// A group, with the members other than the sender (the expected recipients).
    Group(i64, Vec<i64>),
}

/// One message a writer put on the wire.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Sender.
    pub from: i64,
    /// The sender's sequence number; the k-th PONG confirms message k.
    pub seq: usize,
    /// The unique `msg` text.
    pub text: String,
    /// Who must receive it.
    pub to: Vec<i64>,
    /// When the write returned.
    pub at: Instant,
}

/// A writer thread sending to its targets round-robin until stopped.
pub struct Writer {
    /// The sender.
    pub from: i64,
    /// Everything written so far (shared with the thread).
    pub sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<String>>>,
}

/// The `msg` text of message `seq` of `from` in a run tagged `tag`.
pub fn text_of(tag: &str, from: i64, seq: usize) -> String {
    format!("{tag}:{from}:{seq}")
}

/// Parses a text made by [`text_of`] into (sender, seq).
pub fn parse_text(text: &str) -> Option<(i64, usize)> {
    let mut it = text.rsplitn(3, ':');
    let seq = it.next()?.parse().ok()?;
    let from = it.next()?.parse().ok()?;
    Some((from, seq))
}

impl Writer {
    /// Starts writing as `peer` to `targets`, one message (chat + PING, one write)
    /// every `pace`.
    pub fn spawn(peer: &Peer, tag: &str, targets: Vec<Target>, pace: Duration) -> Writer {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut stream = peer.writer.try_clone().expect("clone the socket");
        let (from, name, tag) = (peer.id, peer.name.clone(), tag.to_owned());
        let handle = {
            let sent = sent.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::Acquire) {
                    let target = &targets[seq % targets.len()];
                    let text = text_of(&tag, from, seq);
                    let (frame, to) = match target {
                        Target::User(to) => (one_chat(from, &name, *to, &text), vec![*to]),
                        Target::Group(g, members) => {
                            (group_chat(from, &name, *g, &text), members.clone())
                        }
                    };
                    let mut bytes = frame_bytes(&frame);
                    bytes.extend_from_slice(PING);
                    if let Err(e) = stream.write_all(&bytes) {
                        return Some(format!("write of message {seq}: {e}"));
                    }
                    sent.lock().unwrap().push(Sent {
                        from,
                        seq,
                        text,
                        to,
                        at: Instant::now(),
                    });
                    seq += 1;
                    thread::sleep(pace);
                }
                None
            })
        };
        Writer {
            from,
            sent,
            stop,
            handle: Some(handle),
        }
    }

    /// How many messages were written so far.
    pub fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Stops the thread; returns what it wrote and the write error that ended it, if any.
    pub fn stop(mut self) -> (Vec<Sent>, Option<String>) {
        self.stop.store(true, Ordering::Release);
        let err = self
            .handle
            .take()
            .and_then(|h| h.join().expect("writer thread"));
        (std::mem::take(&mut *self.sent.lock().unwrap()), err)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Why a delivery is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The server never confirmed the message (no PONG): it may have died unread.
    Unconfirmed,
    /// Anything else: a bug.
    Lost,
}

/// A delivery that did not happen.
#[derive(Debug, Clone)]
pub struct Gap {
    /// The recipient.
    pub to: i64,
    /// The message.
    pub text: String,
    /// Why it is missing.
    pub why: Missing,
    /// When it was written, in ms relative to the kill (negative: before).
    pub written_ms: Option<i128>,
}

/// Counts of a ledger, for the report line.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Messages written.
    pub messages: usize,
    /// Deliveries owed (one per recipient per message).
    pub owed: usize,
    /// Received live.
    pub live: usize,
    /// Returned in `offlinemsg`.
    pub stored: usize,
    /// Deliveries that came more than once, (recipient, text, times).
    pub duplicated: Vec<(i64, String, usize)>,
    /// Missing deliveries.
    pub missing: Vec<Gap>,
    /// Frames nobody sent, or sent to someone else, (recipient, text).
    pub unexpected: Vec<(i64, String)>,
    /// Live frames of one sender that arrived out of order, (recipient, sender).
    pub reordered: Vec<(i64, i64)>,
    /// Stored frames of one sender listed out of order in a LOGIN_ACK, (recipient,
    /// sender).
    pub stored_reordered: Vec<(i64, i64)>,
}

impl Tally {
    /// Missing deliveries of one kind.
    pub fn count(&self, why: Missing) -> usize {
        self.missing.iter().filter(|m| m.why == why).count()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "messages {} deliveries owed {}: live {}, stored {}, duplicated {}, \
             unconfirmed-and-missing {}, lost {}, unexpected {}, \
             reordered {}",
            self.messages,
            self.owed,
            self.live,
            self.stored,
            self.duplicated.len(),
            self.count(Missing::Unconfirmed),
            self.count(Missing::Lost),
            self.unexpected.len(),
            self.reordered.len()
        )
    }
}

/// Everything sent and received in one run.
#[derive(Default)]
pub struct Ledger {
    sent: Vec<Sent>,
    /// Sender → how many of its messages the server confirmed, and when.
    confirmed: HashMap<i64, Vec<Instant>>,
    /// Recipient → live `msg` texts in arrival order.
    live: HashMap<i64, Vec<String>>,
    /// Recipient → `msg` texts from `offlinemsg`, in order.
    stored: HashMap<i64, Vec<String>>,
}

impl Ledger {
    /// Adds a writer's messages, confirmed by the PONGs in its peer's inbox.
    pub fn sent(&mut self, sent: Vec<Sent>, pongs: &[Instant]) {
        if let Some(s) = sent.first() {
            self.confirmed
                .entry(s.from)
                .or_default()
                .extend_from_slice(pongs);
        }
        self.sent.extend(sent);
    }

    /// Finishes `peer` and adds what it received live (the traffic texts) and
    /// `sent`, the messages its writer sent, confirmed by the peer's PONGs.
    pub fn settle(&mut self, sent: Vec<Sent>, peer: Peer) {
        let id = peer.id;
        let ib = peer.finish();
        self.live(
            id,
            ib.texts()
                .into_iter()
                .filter(|t| parse_text(t).is_some())
                .collect(),
        );
        self.sent(sent, &ib.pongs);
    }

    /// Adds the `msg` texts `user` received live, in arrival order.
    pub fn live(&mut self, user: i64, texts: Vec<String>) {
        self.live.entry(user).or_default().extend(texts);
    }

    /// Adds the `offlinemsg` of a LOGIN_ACK of `user`.
    pub fn stored(&mut self, user: i64, ack: &Value) {
        let msgs = super::client::ack_list(ack, "offlinemsg");
        self.stored.entry(user).or_default().extend(
            msgs.iter()
                .map(|m| m["msg"].as_str().unwrap_or_default().to_owned()),
        );
    }

    /// How often `to` got `text` (live, stored).
    pub fn delivered(&self, to: i64, text: &str) -> (usize, usize) {
        let n = |m: &HashMap<i64, Vec<String>>| {
            m.get(&to)
                .map_or(0, |v| v.iter().filter(|t| *t == text).count())
        };
        (n(&self.live), n(&self.stored))
    }

    /// Accounts for every owed delivery. A missing one is excused only if the
    /// server never confirmed the message; `kill` (if a node was killed) dates the
    /// gaps for the report.
    pub fn tally(&self, kill: Option<Instant>) -> Tally {
        let mut t = Tally {
            messages: self.sent.len(),
            ..Tally::default()
        };
        let mut counts: HashMap<(i64, &str), (usize, usize)> = HashMap::new();
        for (user, texts) in &self.live {
            for s in texts {
                counts.entry((*user, s)).or_default().0 += 1;
            }
        }
        for (user, texts) in &self.stored {
            for s in texts {
                counts.entry((*user, s)).or_default().1 += 1;
            }
        }
        // Each sender's frames reach each recipient in order, live and in its stored list.
        t.reordered = out_of_order(&self.live);
        t.stored_reordered = out_of_order(&self.stored);
        let mut owed: HashMap<(i64, &str), ()> = HashMap::new();
        for s in &self.sent {
            let confirmed = self.confirmed.get(&s.from).map_or(0, Vec::len) > s.seq;
            for &r in &s.to {
                t.owed += 1;
                owed.insert((r, &s.text), ());
                let (live, stored) = counts
                    .get(&(r, s.text.as_str()))
                    .copied()
                    .unwrap_or_default();
                t.live += live;
                t.stored += stored;
                if live + stored > 1 {
                    t.duplicated.push((r, s.text.clone(), live + stored));
                }
                if live + stored > 0 {
                    continue;
                }
                let written_ms = kill.map(|k| {
                    if s.at >= k {
                        (s.at - k).as_millis() as i128
                    } else {
                        -((k - s.at).as_millis() as i128)
                    }
                });
                let why = if confirmed {
                    Missing::Lost
                } else {
                    Missing::Unconfirmed
                };
                t.missing.push(Gap {
                    to: r,
                    text: s.text.clone(),
                    why,
                    written_ms,
                });
            }
        }
        for (&(user, text), _) in counts.iter() {
            if !owed.contains_key(&(user, text)) {
                t.unexpected.push((user, text.to_owned()));
            }
        }
        t
    }
}

/// The (recipient, sender) pairs whose traffic texts in `by_user` go backwards in a
/// sender's sequence numbers.
fn out_of_order(by_user: &HashMap<i64, Vec<String>>) -> Vec<(i64, i64)> {
    let mut bad = Vec::new();
    let mut last: HashMap<(i64, i64), usize> = HashMap::new();
    for (user, texts) in by_user {
        for s in texts {
            let Some((from, seq)) = parse_text(s) else {
                continue;
            };
            let last = last.entry((*user, from)).or_insert(0);
            if seq < *last && !bad.contains(&(*user, from)) {
                bad.push((*user, from));
            }
            *last = (*last).max(seq);
        }
    }
    bad
}

/// One side of a two-user run: its writer, its peer, the user's name, its node.
pub type Side<'a> = (Writer, Peer, &'a str, usize);

/// Ends a run of two users on two nodes writing to each other: stops the writers,
/// waits until the server handled every message and a last marker each way
/// arrived (so everything routed before it has too), logs both out, and logs each
/// in on the other's node to collect what was stored. Returns the ledger and what
/// each side sent.
pub fn settle_pair(c: &super::Cluster, sides: [Side<'_>; 2]) -> (Ledger, [Vec<Sent>; 2]) {
    let [(wa, pa, na, ia), (wb, pb, nb, ib)] = sides;
    let (sa, ea) = wa.stop();
    let (sb, eb) = wb.stop();
    assert!(ea.is_none() && eb.is_none(), "writes failed: {ea:?} {eb:?}");
    for (p, n) in [(&pa, sa.len()), (&pb, sb.len())] {
        assert!(
            p.wait(Duration::from_secs(10), |ib| ib.pongs.len() >= n),
            "not every message of {} was handled",
            p.id
        );
    }
    let (a, b) = (pa.id, pb.id);
    pa.send_raw(&frame_bytes(&one_chat(a, na, b, "marker")))
        .unwrap();
    pb.send_raw(&frame_bytes(&one_chat(b, nb, a, "marker")))
        .unwrap();
    for p in [&pa, &pb] {
        assert!(
            p.wait(Duration::from_secs(10), |ib| ib
                .texts()
                .iter()
                .any(|t| t == "marker")),
            "marker to {}",
            p.id
        );
    }
    let mut ledger = Ledger::default();
    for (sent, p) in [(sa.clone(), pa), (sb.clone(), pb)] {
        p.logout();
        ledger.settle(sent, p);
    }
    let (_ca, ack) = super::login(c.port(ib), a, na);
    ledger.stored(a, &ack);
    let (_cb, ack) = super::login(c.port(ia), b, nb);
    ledger.stored(b, &ack);
    (ledger, [sa, sb])
}

/// Prints `t` (and its duplicates) under `label`; asserts that nothing is missing,
/// unexpected or out of order.
pub fn assert_complete(label: &str, t: &Tally) {
    println!("{label}: {t}");
    for d in &t.duplicated {
        println!("{label}: DUPLICATED {d:?}");
    }
    assert!(t.missing.is_empty(), "missing: {:?}", t.missing);
    assert!(t.unexpected.is_empty(), "unexpected: {:?}", t.unexpected);
    assert!(t.reordered.is_empty(), "reordered: {:?}", t.reordered);
}

/// Prints `t` (and its duplicates and reorderings) under `label`; asserts that
/// nothing is missing or unexpected (order is not checked).
pub fn assert_none_lost(label: &str, t: &Tally) {
    println!("{label}: {t}");
    for d in &t.duplicated {
        println!("{label}: DUPLICATED {d:?}");
    }
    for r in &t.reordered {
        println!("{label}: REORDERED {r:?}");
    }
    assert!(t.missing.is_empty(), "missing: {:?}", t.missing);
    assert!(t.unexpected.is_empty(), "unexpected: {:?}", t.unexpected);
}
