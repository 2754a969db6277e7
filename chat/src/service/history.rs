//! The history writer: one thread that appends chat messages to history in batches.
//!
//! Its rule: the chat path never waits for the database. Recording a message is a push
//! onto a channel (an IO loop may do it); the writer gathers what arrives for up to
//! [`GATHER`] (or [`MAX_BATCH`] messages, or [`GATHER_BYTES`] of text) and appends it
//! in one transaction. A batch
//! that spans many messages per conversation is what makes history cheap: the store
//! writes a conversation's share of a batch as one row (a chunk) and dirties its pages
//! once per batch, not once per message. A HISTORY request cuts the gathering short:
//! it first waits (bounded) until the writer wrote everything recorded before it, so a
//! client reads its own messages on the node it talks to; across nodes a page shows a
//! message once its node's writer committed it (within [`GATHER`] and a write).
//!
//! What a crash can lose: a clean shutdown writes everything queued
//! ([`HistoryWriter::finish`]); a killed process loses what it had not committed, the
//! messages of at most the last [`GATHER`] plus any backlog of a database slower than
//! the chat (bounded by [`QUEUE_CAP`] and [`QUEUE_BYTES`]). The messages themselves
//! were delivered.
//!
//! A batch that fails (database down) is kept and retried, with the messages behind it
//! queued, in order. The queue is bounded (`QUEUE_CAP` messages, `QUEUE_BYTES` of
//! text): past it, senders wait on workers (never on an IO loop: the fast path hands
//! over to the workers first), for at most `FULL_WAIT`, before they take any lock
//! ([`HistoryWriter::wait_room`]); a message that still finds no room is delivered
//! but not kept, and until a sender finds room again the others do not wait at all,
//! and the IO loops' fast path takes chats on again ([`HistoryWriter::has_room`]), so
//! chat goes on at its speed through a long database outage. The record itself,
//! which the router makes under the recipient's lock, never waits.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::store::social::HistoryRecord;
use crate::store::Store;

/// Messages per transaction at most, and queued messages that end a gathering: well
/// below [`FAST_PATH_LIMIT`], so that the loops' fast path never hands chats over
/// while the writer gathers. A batch's cost follows its conversations' rows: at
/// 20,000, chat-bench's 1,000 conversations got 20 messages a transaction, half of
/// what the SQLite store's chunks take.
const MAX_BATCH: usize = 50_000;
/// How long the writer gathers messages after the first of a batch before it writes
/// them (a HISTORY request's flush writes at once). At N = 1,000 conversations and
/// 10,000 msgs/s that is ten messages per conversation per transaction.
pub const GATHER: Duration = Duration::from_secs(1);
/// Bytes of text gathered at most: past them the writer writes at once (a run of
/// long messages would otherwise hold a second of them in memory). Large enough for
/// a second of chat-bench's one-to-one traffic (~90,000 frames of ~127 bytes, 11
/// MiB): at 4 MiB the writer wrote three times a second, and a batch's cost
/// follows its conversations' rows, not its messages.
const GATHER_BYTES: usize = 12 << 20;
/// Text recorded and not yet written at most: past it, a sender waits as on a full
/// queue ([`QUEUE_CAP`] alone would allow 100,000 frames of up to 64 KiB each, 6 GiB,
/// while the database is down or slower than the chat).
const QUEUE_BYTES: usize = 32 << 20;
/// How often a sender waiting for [`QUEUE_BYTES`] to drain looks again.
const BYTES_POLL: Duration = Duration::from_millis(5);
/// The fast path's margin below [`QUEUE_BYTES`], as [`FAST_PATH_LIMIT`]'s below
/// [`QUEUE_CAP`]: the loops never reach the bytes bound, so they never wait on it.
const FAST_PATH_BYTES_MARGIN: usize = 8 << 20;
/// How often a gathering writer looks whether a whole batch is queued already.
const GATHER_POLL: Duration = Duration::from_millis(50);
/// Messages queued for the writer at most: a chat sender whose message would pass this
/// waits (on a worker) until the writer catches up, so a database slower than the chat
/// traffic slows the senders down instead of growing memory without bound.
const QUEUE_CAP: usize = 100_000;
/// How long a sender waits for room in a full queue. After that the database is taken
/// to be down, and the message is delivered but not kept in history: chat goes on
/// through a database outage, as it did before history existed.
const FULL_WAIT: Duration = Duration::from_secs(1);
/// The IO loops' fast path hands chats to the workers once this many are queued, so
/// that it never waits on a full queue (the margin covers the loops' own pushes).
const FAST_PATH_LIMIT: usize = QUEUE_CAP - 10_000;
/// Pause after a failed batch before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often expired history is swept (when a retention is set).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per sweep statement: short statements, so writes interleave.
const PRUNE_CHUNK: i64 = 10_000;

/// History settings of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Keep history at all (`--no-history` turns it off; HISTORY then returns empty pages).
    pub enabled: bool,
    /// Delete messages older than this; `None` keeps them forever.
    pub retention: Option<Duration>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            enabled: true,
            retention: None,
        }
    }
}

/// The handle of the writer thread. Safe to call from any thread, IO loops included.
pub struct HistoryWriter {
    /// `None` when history is off. The thread ends once this is dropped.
    tx: Option<Channels>,
}

/// The writer's two queues. Records do not wake the writer while it gathers (a wake
/// per message cost more than the write); a flush request does, and so does the
/// record that takes the queued text past [`GATHER_BYTES`].
struct Channels {
    /// Messages to append, in the order recorded.
    records: Sender<HistoryRecord>,
    /// What cuts the gathering short.
    wakes: Sender<Wake>,
    /// Bytes of text recorded and not yet written.
    queued: Arc<AtomicUsize>,
    /// Set when a sender gave up waiting for room (the writer is stuck behind a
    /// database that is down or slower than the chat), cleared once a sender finds
    /// room: meanwhile senders do not wait. Each would hold a worker for
    /// [`FULL_WAIT`], and the node would deliver a few chats a second for as long as
    /// the outage lasts.
    stalled: AtomicBool,
    /// Messages delivered but not kept (see [`Unkept`]), shared with the writer.
    unkept: Arc<Unkept>,
    /// The longest text the store can keep ([`crate::store::social::SocialStore::history_text_max`]):
    /// a longer one, queued, would fail its batch at every retry and stop history
    /// for everyone behind it.
    text_max: usize,
}

impl Channels {
    /// Room was found: the stall, if any, is over (a load first: the flag's line is
    /// written only when it changes, not by every chat of the fast path).
    fn unstall(&self) {
        if self.stalled.load(Ordering::Relaxed) {
            self.stalled.store(false, Ordering::Relaxed);
        }
    }
}

/// Messages delivered but not kept: a count for the metrics, and the rule that a
/// stuck writer is logged once, not once per message (at the chat's speed, under a
/// recipient's lock), and its recovery once, with what it cost.
#[derive(Default)]
struct Unkept {
    /// Every message not kept since the start.
    total: AtomicU64,
    /// The stuck writer was logged, and its recovery is not yet.
    told: AtomicBool,
}

impl Unkept {
    /// One more message not kept because the queue is full.
    fn stuck(&self, sender: i64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if !self.told.swap(true, Ordering::Relaxed) {
            log::error!(
                "history: the writer is stuck (the database is down or slower than the \
                 chat): messages are delivered, not kept, until it catches up (the first: \
                 one of user {sender})"
            );
        }
    }
}

/// Why the writer should write now.
enum Wake {
    /// A flush request: answered once everything recorded before it is written.
    Flush(Sender<()>),
    /// [`GATHER_BYTES`] are queued.
    Full,
}

impl HistoryWriter {
    /// Starts the writer thread over `store` (none when history is off).
    pub fn start(store: Arc<dyn Store>, opts: &HistoryOptions) -> HistoryWriter {
        if !opts.enabled {
            return HistoryWriter { tx: None };
        }
        let (records, records_rx) = crossbeam_channel::bounded(QUEUE_CAP);
        let (wakes, wakes_rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let retention = opts.retention;
        let text_max = store.history_text_max();
        let unkept = Arc::new(Unkept::default());
        let writer = Writer {
            store,
            records: records_rx,
            wakes: wakes_rx,
            queued: queued.clone(),
            unkept: unkept.clone(),
        };
        thread::Builder::new()
            .name("history".into())
            .spawn(move || writer.run(retention))
            .expect("spawn the history writer");
        HistoryWriter {
            tx: Some(Channels {
                records,
                wakes,
                queued,
                stalled: AtomicBool::new(false),
                unkept,
                text_max,
            }),
        }
    }

    /// Whether history is kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the IO loops' fast path may record now (see [`FAST_PATH_LIMIT`]): below
    /// its bounds, or while the writer is stalled (a sender gave up waiting for room).
    /// Then nobody waits, and [`HistoryWriter::record`], which never waits, drops what
    /// finds no room: the loops deliver on, as with history off. Handed to the
    /// workers instead, every chat would queue behind whatever holds them, and on a
    /// database that hangs a few requests that need it (connections closing, a login)
    /// hold them all: chat stopped for as long as the database did not answer. Room
    /// below the bounds ends the stall, so that the next one is waited for again.
    pub fn has_room(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| {
            let room = tx.records.len() < FAST_PATH_LIMIT
                && tx.queued.load(Ordering::Relaxed) < QUEUE_BYTES - FAST_PATH_BYTES_MARGIN;
            if !room {
                return tx.stalled.load(Ordering::Relaxed);
            }
            tx.unstall();
            true
        })
    }

    /// Waits, at most [`FULL_WAIT`], until the queue has room for a message; false if
    /// it had none by then (the database is down or slower than the chat). Once a
    /// wait gave up, later ones do not wait until a sender finds room again (the
    /// `stalled` flag). Blocking: workers only, and before they take any lock
    /// ([`HistoryWriter::record`], which the router calls under a recipient's lock,
    /// never waits).
    pub fn wait_room(&self) -> bool {
        let Some(tx) = &self.tx else { return true };
        let full = || tx.queued.load(Ordering::Relaxed) >= QUEUE_BYTES || tx.records.is_full();
        if !full() {
            tx.unstall();
            return true;
        }
        if tx.stalled.load(Ordering::Relaxed) {
            return false;
        }
        let end = Instant::now() + FULL_WAIT;
        while full() {
            if Instant::now() >= end {
                tx.stalled.store(true, Ordering::Relaxed);
                return false;
            }
            thread::sleep(BYTES_POLL);
        }
        true
    }

    /// Queues one message of conversation `conv`, without waiting: on a full queue,
    /// or when the text is longer than the store can keep, the message is delivered
    /// but not kept (logged). Callers that may wait call
    /// [`HistoryWriter::wait_room`] first; an IO loop calls it only after
    /// [`HistoryWriter::has_room`].
    pub fn record(&self, conv: i64, sender: i64, text: &str) {
        if let Some(tx) = &self.tx {
            if tx.queued.load(Ordering::Relaxed) >= QUEUE_BYTES {
                tx.unkept.stuck(sender);
                return;
            }
            if text.len() > tx.text_max {
                tx.unkept.total.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "history: a message of {sender} ({} bytes) is longer than the database \
                     keeps ({} bytes); it is not kept",
                    text.len(),
                    tx.text_max
                );
                return;
            }
            let rec = HistoryRecord {
                conv,
                sender,
                ts_ms: now_ms(),
                text: text.to_owned(),
            };
            // Counted before it is queued: the writer subtracts it once written.
            let len = rec.text.len();
            let before = tx.queued.fetch_add(len, Ordering::Relaxed);
            if tx.records.try_send(rec).is_err() {
                tx.queued.fetch_sub(len, Ordering::Relaxed);
                tx.unkept.stuck(sender);
                return;
            }
            if before < GATHER_BYTES && before + len >= GATHER_BYTES {
                let _ = tx.wakes.send(Wake::Full);
            }
        }
    }

    /// Messages delivered but not kept since the start: the queue was full (the
    /// writer stuck behind the database) or the text longer than the store keeps.
    pub fn unkept(&self) -> u64 {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.unkept.total.load(Ordering::Relaxed))
    }

    /// Waits until everything recorded before this call is written, at most `limit`.
    /// Blocking: workers only. False on timeout (the database is slow or down).
    pub fn flush(&self, limit: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if tx.wakes.send(Wake::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(limit).is_ok()
    }

    /// Writes what is queued, waiting at most `limit` (clean shutdown).
    pub fn finish(&self, limit: Duration) {
        if !self.flush(limit) {
            log::warn!("history: messages still queued at shutdown are not kept");
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The writer thread's ends of the channels.
struct Writer {
    store: Arc<dyn Store>,
    records: Receiver<HistoryRecord>,
    wakes: Receiver<Wake>,
    /// Bytes of text recorded and not yet written (the writer subtracts what it wrote).
    queued: Arc<AtomicUsize>,
    /// What was not kept (the writer logs its recovery).
    unkept: Arc<Unkept>,
}

impl Writer {
    /// The writer loop: wait for a message or a flush, gather, write (retrying),
    /// answer the flushes, sweep expired rows.
    fn run(self, retention: Option<Duration>) {
        let store = &*self.store;
        let mut next_prune = Instant::now();
        let mut batch: Vec<HistoryRecord> = Vec::new();
        let mut waiting: Vec<Sender<()>> = Vec::new();
        // What was not kept, in all, when the writer last said so.
        let mut reported = 0;
        loop {
            if let Some(keep) = retention {
                if Instant::now() >= next_prune {
                    prune(store, keep);
                    next_prune = Instant::now() + PRUNE_EVERY;
                }
            }
            let open = crossbeam_channel::select! {
                recv(self.records) -> r => match r {
                    Ok(r) => {
                        batch.push(r);
                        self.gather(&mut waiting)
                    }
                    Err(_) => false,
                },
                recv(self.wakes) -> w => {
                    if let Ok(Wake::Flush(done)) = w {
                        waiting.push(done);
                    }
                    true
                },
                default(PRUNE_EVERY) => continue,
            };
            // Everything recorded before a flush request is queued by now: take it
            // all, at most a batch per transaction.
            loop {
                batch.extend(self.records.try_iter().take(MAX_BATCH - batch.len()));
                let full = batch.len() == MAX_BATCH;
                while let Err(e) = store.append_history(&batch) {
                    log::warn!("history: {} message(s) not written yet: {e}", batch.len());
                    thread::sleep(RETRY_AFTER);
                }
                let bytes = batch.iter().map(|r| r.text.len()).sum();
                self.queued.fetch_sub(bytes, Ordering::Relaxed);
                if self.unkept.told.swap(false, Ordering::Relaxed) {
                    let total = self.unkept.total.load(Ordering::Relaxed);
                    log::warn!(
                        "history: writing again; {} message(s) delivered meanwhile were not kept",
                        total - reported
                    );
                    reported = total;
                }
                batch.clear();
                if !full {
                    break;
                }
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Waits, without taking messages, until [`GATHER`] passed, a batch or
    /// [`GATHER_BYTES`] are queued, or a flush came (into `waiting`). False once
    /// every sender is gone (shutdown: write what is queued, then stop).
    fn gather(&self, waiting: &mut Vec<Sender<()>>) -> bool {
        let deadline = Instant::now() + GATHER;
        loop {
            let now = Instant::now();
            if now >= deadline
                || self.records.len() >= MAX_BATCH
                || self.queued.load(Ordering::Relaxed) >= GATHER_BYTES
            {
                return true;
            }
            match self.wakes.recv_timeout((deadline - now).min(GATHER_POLL)) {
                Ok(Wake::Flush(done)) => {
                    waiting.push(done);
                    return true;
                }
                Ok(Wake::Full) => return true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// Deletes the messages older than `keep`, a chunk at a time.
fn prune(store: &dyn Store, keep: Duration) {
    let cutoff = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    loop {
        match store.prune_history(cutoff, PRUNE_CHUNK) {
            // A statement removes at most PRUNE_CHUNK rows, and a row holds one message
            // (an older server's) or a chunk of several: fewer messages than that means
            // the last.
            Ok(n) if n >= PRUNE_CHUNK as u64 => continue,
            Ok(n) => {
                if n > 0 {
                    log::info!("history: expired messages removed");
                }
                return;
            }
            Err(e) => {
                log::warn!("history: retention sweep failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
