//! The bus's per-node stream: the reader thread that delivers what other nodes
//! routed here and trims it once written, and the drain that moves what a dead
//! node left in its stream to the offline store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Connection, RedisResult};

use super::records::{self, DrainRecords};
use super::{
    Bus, BusError, BusHandler, BusMessage, Drain, Orphan, DELIVERY_WAIT, DRAIN_COUNT, DRAIN_LOCK,
    IO_TIMEOUT, READ_BLOCK, READ_COUNT, STREAM_FORMAT,
};

/// Numbers the drains of this process, for their lock tokens.
static DRAINS: AtomicU64 = AtomicU64::new(0);

/// How long the reader waits before it retries an entry it could not store.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

impl Bus {
    /// Moves what a dead (or cleanly stopped) node left in its stream to the store
    /// through `store` (given each step's frames, as (recipients, frame)), a step
    /// of [`DRAIN_COUNT`] entries at a time, then forgets the node. Only one node
    /// drains a given node at a time (a lock, extended at every step); an entry is
    /// deleted only after `store` took it, so a drainer that dies midway leaves the
    /// rest to the next (at worst a step is stored twice).
    pub fn drain_node(
        &self,
        node: &str,
        store: &dyn Fn(&[Orphan]) -> bool,
    ) -> Result<Drain, BusError> {
        let lock = format!("{}drain:{node}", self.keys.prefix_colon);
        // The lock's value names this drain, not just this node: two drains of
        // one node (a login and the keeper) must not share a lock.
        let token = format!(
            "{}#{}",
            self.cfg.node_id,
            DRAINS.fetch_add(1, Ordering::Relaxed)
        );
        let got: Option<String> = self.with_con(|c| {
            redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(DRAIN_LOCK.as_millis() as u64)
                .query(c)
        })?;
        if got.is_none() {
            return Ok(Drain::Busy);
        }
        let result = self.drain_steps(node, &lock, &token, store);
        let unlocked =
            self.with_con(|c| self.scripts.unlock.key(&lock).arg(&token).invoke::<i64>(c));
        if let Err(e) = unlocked {
            log::debug!("drain lock of {node} not released ({e}); it expires");
        }
        result
    }

    fn drain_steps(
        &self,
        node: &str,
        lock: &str,
        token: &str,
        store: &dyn Fn(&[Orphan]) -> bool,
    ) -> Result<Drain, BusError> {
        let p = &self.keys.prefix_colon;
        let queue = format!("{}{node}", self.keys.queue_prefix);
        let node_key = format!("{}{node}", self.keys.node_prefix);
        let records_key = format!("{}{node}", self.keys.records_prefix);
        // The dseqs the node gave frames it wrote and did not have acknowledged:
        // each such frame is stored with its dseq (see `records`). A drain that
        // dies midway leaves them to the next, which stores those of the entries
        // moved so far again, with the same dseqs (a client drops the copies).
        let mut recorded = self.with_con(|c| DrainRecords::load(c, &records_key))?;
        let mut first_step = true;
        let mut moved = 0usize;
        loop {
            let (state, range): (i64, StreamRangeReply) = self.with_con(|c| {
                self.scripts
                    .drain_take
                    .key(&node_key)
                    .key(&queue)
                    .key(lock)
                    .arg(token)
                    .arg(DRAIN_COUNT)
                    .arg(DRAIN_LOCK.as_millis() as u64)
                    .invoke(c)
            })?;
            match state {
                -1 => return Ok(Drain::Alive),
                -2 => return Ok(Drain::Busy),
                _ => {}
            }
            let mut frames = Vec::with_capacity(range.ids.len());
            if first_step {
                // Frames trimmed from the stream once written: older than its rest.
                frames = recorded.before(range.ids.first().map(|e| e.id.as_str()));
                first_step = false;
            }
            for entry in &range.ids {
                let Some((batch, msgs)) = entry_messages(entry) else {
                    log::error!("drain of {node}: {}, dropped", unreadable(entry));
                    continue;
                };
                for (i, msg) in msgs.into_iter().enumerate() {
                    // A flush notice to a dead node: its users log in elsewhere and
                    // get their stored messages there.
                    if let BusMessage::Deliver { to, frame } = msg {
                        recorded.split(&position(&entry.id, batch, i), to, frame, &mut frames);
                    }
                }
            }
            if !frames.is_empty() && !store(&frames) {
                return Err(BusError(format!(
                    "drain of {node}: the store refused; {moved} frame(s) moved so far"
                )));
            }
            moved += frames.len();
            let state: i64 = self.with_con(|c| {
                let mut inv = self.scripts.drained.key(&queue);
                inv.key(&node_key)
                    .key(&self.keys.online)
                    .key(format!("{p}nodeusers:{node}"))
                    .key(&self.keys.nodes)
                    .key(lock)
                    .key(&records_key)
                    .arg(node)
                    .arg(token);
                for entry in &range.ids {
                    inv.arg(&entry.id);
                }
                inv.invoke(c)
            })?;
            match state {
                1 => {
                    log::info!("bus: drained node {node}: {moved} undelivered frame(s) stored");
                    return Ok(Drain::Done);
                }
                -1 => return Ok(Drain::Alive),
                -2 => return Ok(Drain::Busy),
                _ => {}
            }
        }
    }

    /// The stream reader: (re)connects, reads this node's stream from where it left
    /// off, hands each entry to the handler, waits until the IO loops wrote the
    /// batch, and trims the stream up to it with the next read.
    pub(super) fn reader(&self, handler: &dyn BusHandler) {
        let mut last = String::from("0-0");
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<String>();
        let mut held = Held::default();
        // dseq records to delete (see `records`), kept across reconnects.
        let mut released = Vec::new();
        self.reconnecting("reader", || {
            let state = (&mut last, &mut held, &mut released);
            self.read_loop(handler, state, &done_tx, &done_rx)
        });
    }

    /// After a (re)connect: if the stream is gone or was recreated behind `last`
    /// (Redis restarted, or a drain of this node while it looked dead), read it
    /// from the start, or new entries would be skipped as already read.
    /// Returns whether it reset `last`.
    fn check_last(&self, con: &mut Connection, last: &mut String) -> RedisResult<bool> {
        if last.as_str() == "0-0" {
            return Ok(false);
        }
        let exists: bool = redis::cmd("EXISTS").arg(&self.keys.queue_me).query(con)?;
        let behind = !exists || {
            let info: redis::streams::StreamInfoStreamReply = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&self.keys.queue_me)
                .query(con)?;
            id_key(&info.last_generated_id) < id_key(last.as_str())
        };
        if behind {
            log::info!("bus reader: stream was recreated; reading it from the start");
            *last = String::from("0-0");
        }
        Ok(behind)
    }

    /// One connection's life of the reader. The error says whether it read anything.
    fn read_loop(
        &self,
        handler: &dyn BusHandler,
        (last, held, released): (&mut String, &mut Held, &mut Vec<(i64, u64)>),
        done_tx: &Sender<String>,
        done_rx: &Receiver<String>,
    ) -> Result<(), (redis::RedisError, bool)> {
        let mut con = self.connector.connect().map_err(|e| (e, false))?;
        con.set_read_timeout(Some(IO_TIMEOUT + READ_BLOCK))
            .map_err(|e| (e, false))?;
        let mut read_any = false;
        let mut delivered: Option<String> = None;
        // The end of the last batch written: trimmed up to it, or up to a held frame.
        let mut written: Option<String> = None;
        if self.check_last(&mut con, last).map_err(|e| (e, false))? {
            // Batches of the old stream must not trim the new one.
            while done_rx.try_recv().is_ok() {}
        }
        loop {
            // A batch whose writes finished after the wait below is trimmed now.
            if let Some(id) = done_rx.try_iter().last() {
                delivered = Some(id);
            }
            let held_from = held.oldest();
            held.retry(handler);
            if held.oldest() != held_from {
                // Held frames went out: trim what they kept, or a drain of this
                // node would store them again though nothing new came in.
                delivered = delivered.or_else(|| written.clone());
            }
            let mut pipe = redis::pipe();
            released.extend(handler.released());
            if let Some(cmd) = records::hdel(&self.keys.records_me, released) {
                pipe.add_command(cmd).ignore();
            }
            let trimming = delivered.is_some() || !released.is_empty();
            if let Some(id) = delivered.take() {
                written = Some(id.clone());
                // Everything up to `id` is in the sockets (or stored): forget it,
                // except from the oldest frame still held back on.
                let mut minid = next_id(&id);
                if let Some(oldest) = held.oldest().filter(|o| id_key(o) < id_key(&minid)) {
                    minid = oldest;
                }
                pipe.cmd("XTRIM")
                    .arg(&self.keys.queue_me)
                    .arg("MINID")
                    .arg(minid)
                    .ignore();
            }
            if self.stop.load(Ordering::Acquire) {
                // Trimmed before leaving, or the stop's own drain would store what
                // was delivered already.
                if trimming {
                    pipe.query::<()>(&mut con).map_err(|e| (e, read_any))?;
                }
                return Ok(());
            }
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.queue_me)
                .arg(last.as_str());
            let (reply,): (Option<StreamReadReply>,) =
                pipe.query(&mut con).map_err(|e| (e, read_any))?;
            released.clear();
            read_any = true;
            let Some(reply) = reply else { continue };
            let entries = || reply.keys.iter().flat_map(|k| &k.ids);
            let Some(end) = entries().last().map(|e| e.id.clone()) else {
                continue;
            };
            if let Some(oldest) = entries().next() {
                self.entry_read(&oldest.id);
            }
            // Numbered for acking sessions and recorded before anything goes out
            // (see `records`); a failed record re-reads the batch.
            let mut numbered = Vec::new();
            let mut recs = Vec::new();
            for entry in entries() {
                let Some((batch, msgs)) = entry_messages(entry) else {
                    log::error!("bus: {}, skipped", unreadable(entry));
                    continue;
                };
                for (i, msg) in msgs.into_iter().enumerate() {
                    let seqs = match &msg {
                        BusMessage::Deliver { to, frame } => handler
                            .number(to, frame.len())
                            .into_iter()
                            .map(|(u, n)| {
                                let stamped = with_seq(frame, n);
                                let at = position(&entry.id, batch, i);
                                recs.push((records::field(u, n), records::value(&at, &stamped)));
                                (u, stamped)
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    numbered.push((&entry.id, msg, seqs));
                }
            }
            if let Some(cmd) = records::hset(&self.keys.records_me, &recs) {
                cmd.query::<()>(&mut con).map_err(|e| (e, read_any))?;
            }
            for (id, msg, seqs) in numbered {
                match msg {
                    BusMessage::Deliver { mut to, frame } => {
                        for (u, stamped) in seqs {
                            to.retain(|&r| r != u);
                            held.deliver(handler, id, vec![u], stamped);
                        }
                        if !to.is_empty() {
                            held.deliver(handler, id, to, frame);
                        }
                    }
                    m => {
                        // Flush notices: nothing of theirs can fail here.
                        let _ = handler.on_message(m);
                    }
                }
            }
            *last = end.clone();
            let tx = done_tx.clone();
            handler.after_delivery(Box::new(move || {
                let _ = tx.send(end);
            }));
            // Usually a loop iteration away; a late one is covered by a later batch.
            if let Ok(id) = done_rx.recv_timeout(DELIVERY_WAIT) {
                delivered = Some(done_rx.try_iter().last().unwrap_or(id));
            }
        }
    }
}

/// Frames the reader could neither deliver nor store (the store was down), kept
/// per recipient in stream order and retried every [`RETRY_PAUSE`]; later frames
/// for those recipients queue behind them, so order holds. The stream is not
/// trimmed past the oldest one, so if the node dies they are drained from there.
#[derive(Default)]
pub(super) struct Held {
    by_user: HashMap<i64, VecDeque<(String, String)>>,
    last_try: Option<Instant>,
}

impl Held {
    /// Hands entry `id`'s frame to the handler for the recipients with nothing held;
    /// keeps it for the others and for those whose delivery failed.
    fn deliver(&mut self, handler: &dyn BusHandler, id: &str, to: Vec<i64>, frame: String) {
        let (wait, go): (Vec<i64>, Vec<i64>) =
            to.into_iter().partition(|u| self.by_user.contains_key(u));
        let mut keep = wait;
        let mut frame = Some(frame);
        if !go.is_empty() {
            // Copied only when some recipients wait: a failed delivery hands it back.
            let copy = (!keep.is_empty()).then(|| frame.clone()).flatten();
            let msg = BusMessage::Deliver {
                to: go,
                frame: frame.take().unwrap_or_default(),
            };
            frame = copy;
            if let Err((failed, back)) = handler.on_message(msg) {
                log::warn!("bus reader: a frame for {failed:?} could not be stored; held");
                keep.extend(failed);
                frame = Some(back);
            }
        }
        let Some(frame) = frame else { return };
        for u in keep {
            self.by_user
                .entry(u)
                .or_default()
                .push_back((id.to_owned(), frame.clone()));
        }
    }

    /// Retries the held frames, oldest first per recipient, at most every
    /// [`RETRY_PAUSE`].
    fn retry(&mut self, handler: &dyn BusHandler) {
        if self.by_user.is_empty() || self.last_try.is_some_and(|t| t.elapsed() < RETRY_PAUSE) {
            return;
        }
        self.last_try = Some(Instant::now());
        self.by_user.retain(|&u, frames| {
            while let Some((_, frame)) = frames.front() {
                let msg = BusMessage::Deliver {
                    to: vec![u],
                    frame: frame.clone(),
                };
                if handler.on_message(msg).is_err() {
                    return true;
                }
                frames.pop_front();
            }
            false
        });
    }

    /// The id of the oldest held entry.
    fn oldest(&self) -> Option<String> {
        self.by_user
            .values()
            .filter_map(|f| f.front())
            .map(|(id, _)| id)
            .min_by_key(|id| id_key(id))
            .cloned()
    }
}

/// A stream entry id `ms-seq` as a comparable pair ((0, 0) if unreadable).
pub(super) fn id_key(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

/// Where a frame sits in the stream, as a dseq record names it: its entry's id, and
/// for a frame of a batch entry `#` and its index there.
fn position(id: &str, batch: bool, i: usize) -> String {
    if batch {
        format!("{id}#{i}")
    } else {
        id.to_owned()
    }
}

/// A [`position`] as a comparable triple (entry id as [`id_key`] reads it, index).
pub(super) fn position_key(at: &str) -> (u64, u64, u64) {
    let (id, i) = at.split_once('#').unwrap_or((at, "0"));
    let (ms, seq) = id_key(id);
    (ms, seq, i.parse().unwrap_or(0))
}

/// The id right after a stream entry id `ms-seq` (for an inclusive trim).
fn next_id(id: &str) -> String {
    match id.split_once('-').map(|(ms, seq)| (ms, seq.parse::<u64>())) {
        Some((ms, Ok(seq))) => format!("{ms}-{}", seq.saturating_add(1)),
        _ => id.to_owned(),
    }
}

/// User ids joined by commas, as in a stream entry.
pub(super) fn id_text(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// User ids joined by commas.
fn id_list(text: &str) -> Vec<i64> {
    text.split(',').filter_map(|u| u.parse().ok()).collect()
}

/// Decodes a stream entry into what it carries, in order: a batch (field
/// [`STREAM_FORMAT`]: true, its frames) or a plain entry (false, one message).
/// `None` if it is unreadable (a batch that does not parse is refused whole).
fn entry_messages(entry: &StreamId) -> Option<(bool, Vec<BusMessage>)> {
    match entry.map.get(STREAM_FORMAT) {
        Some(redis::Value::BulkString(packed)) => unpack(packed).map(|m| (true, m)),
        Some(_) => None,
        None => entry_message(entry).map(|m| (false, vec![m])),
    }
}

/// The frames of a batch entry: per frame, uids joined by commas, LF, the frame's
/// length in bytes, LF, the frame.
fn unpack(mut rest: &[u8]) -> Option<Vec<BusMessage>> {
    fn line<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
        let nl = memchr::memchr(b'\n', rest)?;
        let text = std::str::from_utf8(&rest[..nl]).ok()?;
        *rest = &rest[nl + 1..];
        Some(text)
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let to = id_list(line(&mut rest)?);
        let len: usize = line(&mut rest)?.parse().ok()?;
        let frame = String::from_utf8(rest.get(..len)?.to_vec()).ok()?;
        rest = &rest[len..];
        if to.is_empty() {
            return None;
        }
        out.push(BusMessage::Deliver { to, frame });
    }
    Some(out)
}

/// Why an entry could not be read, for the log: its id and field names (a format
/// of another build says which).
fn unreadable(entry: &StreamId) -> String {
    let mut fields: Vec<&str> = entry.map.keys().map(String::as_str).collect();
    fields.sort_unstable();
    format!("unreadable stream entry {} (fields {fields:?})", entry.id)
}

/// Decodes a stream entry: a frame (`to`, user ids joined by commas, and `f`) or a
/// flush notice (`flush`, user ids).
fn entry_message(entry: &StreamId) -> Option<BusMessage> {
    if let Some(to) = entry.get::<String>("flush") {
        return Some(BusMessage::Flush { to: id_list(&to) });
    }
    let to = id_list(&entry.get::<String>("to")?);
    let frame: String = entry.get("f")?;
    (!to.is_empty()).then_some(BusMessage::Deliver { to, frame })
}

/// `frame` (JSON text) with `"dseq":n` as its last field.
fn with_seq(frame: &str, n: u64) -> String {
    String::from_utf8_lossy(&crate::acks::with_seq(frame.as_bytes(), n)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert_eq!(next_id("1700000000000-5"), "1700000000000-6");
        assert!(id_key("1700000000000-5") < id_key("1700000000001-0"));
        assert!(id_key("9-10") > id_key("9-9"));
        assert_eq!(id_key("junk"), (0, 0));
    }

    #[test]
    fn stream_entries() {
        let entry = |fields: &[(&str, &str)]| StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..StreamId::default()
        };
        assert_eq!(
            entry_message(&entry(&[("to", "1,2"), ("f", "{}")])),
            Some(BusMessage::Deliver {
                to: vec![1, 2],
                frame: "{}".into()
            })
        );
        assert_eq!(
            entry_message(&entry(&[("flush", "7")])),
            Some(BusMessage::Flush { to: vec![7] })
        );
        assert_eq!(entry_message(&entry(&[("to", "x"), ("f", "{}")])), None);
        assert_eq!(entry_message(&entry(&[("f", "{}")])), None);
    }

    #[test]
    fn batch_entries() {
        let deliver = |to: &[i64], f: &str| BusMessage::Deliver {
            to: to.to_vec(),
            frame: f.into(),
        };
        let packed = "1,2\n7\n{\"a\":\n}3\n0\n5\n3\n4\n5";
        assert_eq!(
            unpack(packed.as_bytes()),
            Some(vec![
                deliver(&[1, 2], "{\"a\":\n}"),
                deliver(&[3], ""),
                deliver(&[5], "4\n5")
            ])
        );
        assert_eq!(unpack(b""), Some(Vec::new()));
        // Cut short, a length past the end, no recipients, a bad length: refused whole.
        for bad in ["1\n4\n{}", "1\n9\n{}\n", "\n2\n{}", "1\nx\n{}", "1\n2"] {
            assert_eq!(unpack(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(position("5-1", true, 3), "5-1#3");
        assert_eq!(position("5-1", false, 0), "5-1");
        assert!(position_key("5-1#3") > position_key("5-1"));
        assert!(position_key("5-1#3") < position_key("5-2"));
        assert!(position_key("5-1#10") > position_key("5-1#9"));
    }
}
