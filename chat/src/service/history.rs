//! The history writer: one thread that appends chat messages to history in batches.
//!
//! Its rule: the chat path never waits for the database. Recording a message is a push
//! onto a channel (an IO loop may do it); the writer takes whatever piled up while it
//! wrote the previous batch and appends it in one transaction, so under load the cost
//! per message is a fraction of a round trip. A batch that fails (database down) is
//! kept and retried, with the messages behind it queued, in order. The queue is bounded
//! (`QUEUE_CAP`): past it, senders wait on workers (never on an IO loop: the fast path
//! hands over to the workers first), for at most `FULL_WAIT`; a message that still
//! finds no room is delivered but not kept, so chat survives a long database outage. A HISTORY request first
//! waits (bounded) until the writer wrote everything recorded before it, so a client
//! reads its own messages on the node it talks to; across nodes a page shows a message
//! once its node's writer committed it (milliseconds).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::store::social::HistoryRecord;
use crate::store::Store;

/// Messages per transaction at most.
const MAX_BATCH: usize = 2000;
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

/// What the writer thread is asked to do.
enum Command {
    /// Append one message.
    Record(HistoryRecord),
    /// Answer once everything sent before this was written.
    Flush(Sender<()>),
}

/// The handle of the writer thread. Safe to call from any thread, IO loops included.
pub struct HistoryWriter {
    /// `None` when history is off. The thread ends once this is dropped.
    tx: Option<Sender<Command>>,
}

impl HistoryWriter {
    /// Starts the writer thread over `store` (none when history is off).
    pub fn start(store: Arc<dyn Store>, opts: &HistoryOptions) -> HistoryWriter {
        if !opts.enabled {
            return HistoryWriter { tx: None };
        }
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAP);
        let retention = opts.retention;
        thread::Builder::new()
            .name("history".into())
            .spawn(move || run(&*store, &rx, retention))
            .expect("spawn the history writer");
        HistoryWriter { tx: Some(tx) }
    }

    /// Whether history is kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the IO loops' fast path may record now (see [`FAST_PATH_LIMIT`]).
    pub fn has_room(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.len() < FAST_PATH_LIMIT)
    }

    /// Queues one message of conversation `conv`. Waits while the queue is full (at
    /// most [`FULL_WAIT`]): on an IO loop, call it only after [`HistoryWriter::has_room`].
    pub fn record(&self, conv: i64, sender: i64, text: &str) {
        if let Some(tx) = &self.tx {
            let rec = Command::Record(HistoryRecord {
                conv,
                sender,
                ts_ms: now_ms(),
                text: text.to_owned(),
            });
            if tx.send_timeout(rec, FULL_WAIT).is_err() {
                log::error!("history: the writer is stuck; a message of {sender} is not kept");
            }
        }
    }

    /// Waits until everything recorded before this call is written, at most `limit`.
    /// Blocking: workers only. False on timeout (the database is slow or down).
    pub fn flush(&self, limit: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if tx.send(Command::Flush(done_tx)).is_err() {
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

/// The writer loop: batch, write (retrying), answer flushes, sweep expired rows.
fn run(store: &dyn Store, rx: &Receiver<Command>, retention: Option<Duration>) {
    let mut next_prune = Instant::now();
    let mut batch: Vec<HistoryRecord> = Vec::new();
    let mut waiting: Vec<Sender<()>> = Vec::new();
    loop {
        if let Some(keep) = retention {
            if Instant::now() >= next_prune {
                prune(store, keep);
                next_prune = Instant::now() + PRUNE_EVERY;
            }
        }
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut next = Some(first);
        while let Some(c) = next.take() {
            match c {
                Command::Record(r) => batch.push(r),
                Command::Flush(done) => waiting.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        while let Err(e) = store.append_history(&batch) {
            log::warn!("history: {} message(s) not written yet: {e}", batch.len());
            thread::sleep(RETRY_AFTER);
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Deletes the messages older than `keep`, a chunk at a time.
fn prune(store: &dyn Store, keep: Duration) {
    let cutoff = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    loop {
        match store.prune_history(cutoff, PRUNE_CHUNK) {
            Ok(n) if n as i64 == PRUNE_CHUNK => continue,
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
