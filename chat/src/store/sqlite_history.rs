//! SQLite history as chunks: a batch's messages of one conversation are one row.
//!
//! The rule: the history writer's cost follows rows and pages, not messages. With one
//! row per message, a batch over a thousand busy conversations dirtied (and wrote to
//! the WAL) a page per message, the tail of each conversation's key range. Here a
//! batch stores each conversation's messages, in seq order, as one `historychunk` row
//! (up to [`CHUNK_MESSAGES`] messages or [`CHUNK_BYTES`] bytes; rows are appended in
//! rowid order, so their pages fill one after the other) with one small index entry
//! `(conv, seq)`; a batch gathered over a second costs a row per conversation.
//!
//! A chunk's `body` is its messages' texts joined by NUL bytes (a frame never holds
//! one: NUL ends a frame on the wire); a message with a NUL in it, if one ever came,
//! is a chunk of its own, whose body is taken whole. Retention removes whole chunks,
//! by the `ts` of their newest message: a message outlives its retention by at most
//! the writer's gathering time.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use super::social::{assign_seqs, counts, HistoryRecord};
use super::StoreError;
use crate::protocol::HistoryItem;

/// Messages per chunk at most: a HISTORY page (20 by default) reads one or two chunks.
pub(super) const CHUNK_MESSAGES: usize = 32;
/// Bytes of text per chunk at most (past the first message): the row stays within
/// one 4 KiB page, so reading a chunk never follows an overflow chain.
pub(super) const CHUNK_BYTES: usize = 3500;
/// Milliseconds between a chunk's oldest and newest message at most: retention removes
/// whole chunks, so an expired message outlives its retention by at most this.
pub(super) const CHUNK_SPAN_MS: i64 = 2000;
/// The writer connection's page cache (KiB): the index tails of the conversations a
/// batch touches stay in memory between batches.
pub(super) const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// The history tables (created with the rest of the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS historychunk (
  id INTEGER PRIMARY KEY,
  conv INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  last INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS historychunk_conv ON historychunk (conv, seq);
CREATE INDEX IF NOT EXISTS historychunk_ts ON historychunk (ts);
CREATE TABLE IF NOT EXISTS historyseq (
  conv INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL
);
";

/// Schema version 2 kept a row per message in `history`: each becomes a chunk of one.
pub(super) fn upgrade(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let old = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'")?
        .exists([])?;
    if old {
        log::info!("sqlite store: moving history to chunks (once)");
        tx.execute_batch(
            "INSERT INTO historychunk (conv, seq, last, ts, body) \
               SELECT conv, seq, seq, ts, CAST(message AS BLOB) FROM history ORDER BY ts;
             DROP TABLE history;",
        )?;
    }
    Ok(())
}

/// One row to insert.
struct Chunk<'a> {
    conv: i64,
    seq: i64,
    /// Its messages, in seq order.
    texts: Vec<&'a str>,
    /// The oldest message's time.
    first_ts: i64,
    /// The newest message's time (retention).
    ts: i64,
    /// The body's length so far: each text and its separator.
    bytes: usize,
    /// It holds a message with a NUL, which must be a chunk's only one.
    sealed: bool,
}

impl<'a> Chunk<'a> {
    /// A chunk of `r` (whose seq is `seq`) alone, with room for `capacity` texts.
    fn new(seq: i64, r: &'a HistoryRecord, capacity: usize) -> Chunk<'a> {
        let mut texts = Vec::with_capacity(capacity);
        texts.push(r.text.as_str());
        Chunk {
            conv: r.conv,
            seq,
            texts,
            first_ts: r.ts_ms,
            ts: r.ts_ms,
            bytes: r.text.len() + 1,
            sealed: r.text.contains('\0'),
        }
    }

    fn last(&self) -> i64 {
        self.seq + self.texts.len() as i64 - 1
    }

    /// Whether `r` may join: room left, within [`CHUNK_SPAN_MS`], and neither it nor
    /// a message already in holds a NUL (such a message must be a chunk's only one).
    /// Constant time: a batch of a busy conversation is cut in one pass.
    fn takes(&self, r: &HistoryRecord) -> bool {
        let span = self.first_ts.min(r.ts_ms)..=self.ts.max(r.ts_ms);
        self.texts.len() < CHUNK_MESSAGES
            && self.bytes + r.text.len() <= CHUNK_BYTES
            && span.end() - span.start() <= CHUNK_SPAN_MS
            && !self.sealed
            && !r.text.contains('\0')
    }

    /// Adds `r`, which [`Chunk::takes`] accepted.
    fn push(&mut self, r: &'a HistoryRecord) {
        self.texts.push(&r.text);
        self.first_ts = self.first_ts.min(r.ts_ms);
        self.ts = self.ts.max(r.ts_ms);
        self.bytes += r.text.len() + 1;
    }

    fn body(&self) -> Vec<u8> {
        self.texts.join("\0").into_bytes()
    }
}

/// `batch` with its seqs, cut into chunks: per conversation (ascending), in seq order.
fn chunks<'a>(batch: &'a [HistoryRecord], seqs: &[i64]) -> Vec<Chunk<'a>> {
    // The batch's indices by conversation, in batch order within one (a stable
    // sort): one allocation, not a vector per conversation.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].conv);
    let mut out: Vec<Chunk<'a>> = Vec::new();
    for msgs in order.chunk_by(|&a, &b| batch[a].conv == batch[b].conv) {
        let mut open: Option<Chunk<'a>> = None;
        let mut left = msgs.len();
        for &i in msgs {
            let r = &batch[i];
            match &mut open {
                Some(c) if c.takes(r) => c.push(r),
                _ => {
                    out.extend(open.take());
                    open = Some(Chunk::new(seqs[i], r, left.min(CHUNK_MESSAGES)));
                }
            }
            left -= 1;
        }
        out.extend(open);
    }
    out
}

/// Appends `batch` in one IMMEDIATE transaction on `conn` (see [`super::SocialStore`]).
pub(super) fn append(conn: &mut Connection, batch: &[HistoryRecord]) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let counts = counts(batch);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut last = HashMap::with_capacity(counts.len());
    {
        let mut bump = tx.prepare_cached(
            "INSERT INTO historyseq (conv, seq) VALUES (?1, ?2) \
             ON CONFLICT (conv) DO UPDATE SET seq = seq + excluded.seq RETURNING seq",
        )?;
        for &(conv, n) in &counts {
            let seq: i64 = bump.query_row((conv, n), |row| row.get(0))?;
            last.insert(conv, seq);
        }
    }
    let seqs = assign_seqs(batch, &counts, &last);
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO historychunk (conv, seq, last, ts, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for c in chunks(batch, &seqs) {
            insert.execute((c.conv, c.seq, c.last(), c.ts, c.body()))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// At most `limit` messages of `conv` with a seq below `before`, newest first.
pub(super) fn page(
    conn: &Connection,
    conv: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<HistoryItem>, StoreError> {
    let before = before.unwrap_or(i64::MAX);
    let limit = usize::try_from(limit).unwrap_or(0);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, last, body FROM historychunk WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC",
    )?;
    let mut rows = stmt.query((conv, before))?;
    while let Some(row) = rows.next()? {
        let (seq, last): (i64, i64) = (row.get(0)?, row.get(1)?);
        let body = match row.get_ref(2)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            _ => &[],
        };
        let texts: Vec<&[u8]> = if seq == last {
            vec![body]
        } else {
            body.split(|&b| b == 0).collect()
        };
        for (i, text) in texts.iter().enumerate().rev() {
            let s = seq + i as i64;
            if s >= before {
                continue;
            }
            out.push(HistoryItem {
                seq: s,
                text: String::from_utf8_lossy(text).into_owned(),
            });
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Deletes at most `max` chunks whose newest message is older than `cutoff_ms`;
/// returns how many messages they held.
pub(super) fn prune(conn: &Connection, cutoff_ms: i64, max: i64) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM historychunk WHERE id IN \
         (SELECT id FROM historychunk WHERE ts < ?1 ORDER BY ts LIMIT ?2) \
         RETURNING last - seq + 1",
    )?;
    let removed = stmt.query_map((cutoff_ms, max), |row| row.get::<_, i64>(0))?;
    let mut n = 0u64;
    for r in removed {
        n += r?.max(0) as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(conv: i64, text: &str) -> HistoryRecord {
        HistoryRecord {
            conv,
            sender: 1,
            ts_ms: 5,
            text: text.into(),
        }
    }

    #[test]
    fn a_batch_is_a_chunk_per_conversation_in_seq_order() {
        let batch = [rec(2, "a"), rec(1, "b"), rec(2, "c"), rec(1, "d")];
        let cs = chunks(&batch, &[10, 3, 11, 4]);
        let got: Vec<_> = cs
            .iter()
            .map(|c| (c.conv, c.seq, c.last(), c.body()))
            .collect();
        assert_eq!(
            got,
            [(1, 3, 4, b"b\0d".to_vec()), (2, 10, 11, b"a\0c".to_vec())]
        );
    }

    /// How many texts each chunk of `batch` holds (seqs 1, 2, … in batch order).
    fn chunk_sizes(batch: &[HistoryRecord]) -> Vec<usize> {
        let seqs: Vec<i64> = (1..=batch.len() as i64).collect();
        chunks(batch, &seqs).iter().map(|c| c.texts.len()).collect()
    }

    #[test]
    fn chunks_are_bounded_and_a_nul_stands_alone() {
        let batch: Vec<_> = (0..CHUNK_MESSAGES + 1).map(|_| rec(1, "x")).collect();
        assert_eq!(chunk_sizes(&batch), [CHUNK_MESSAGES, 1]);
        let big = "y".repeat(CHUNK_BYTES);
        let batch = [rec(1, "a"), rec(1, &big), rec(1, "b\0c"), rec(1, "d")];
        let sizes: Vec<_> = chunks(&batch, &[1, 2, 3, 4])
            .iter()
            .map(|c| (c.seq, c.texts.len()))
            .collect();
        assert_eq!(sizes, [(1, 1), (2, 1), (3, 1), (4, 1)]);
        // The byte bound counts each text and its separator: 3 × 1,166 + 2 = 3,500
        // fits, 3 × 1,167 + 2 does not.
        for (len, expect) in [(1166, [3, 3, 1]), (1167, [2, 2, 2])] {
            let text = "z".repeat(len);
            let batch: Vec<_> = (0..7).map(|_| rec(1, &text)).collect();
            let sizes = chunk_sizes(&batch);
            assert_eq!(sizes[..3], expect, "{len}: {sizes:?}");
        }
        // The first text's separator counts too: two of 1,750 make a body of 3,501.
        let text = "w".repeat(1750);
        assert_eq!(chunk_sizes(&[rec(1, &text), rec(1, &text)]), [1, 1]);
        // Every joined text's separator counts: 31 texts of 109 bytes are 3,410 bytes
        // with theirs, and a 32nd would make 3,519.
        let text = "v".repeat(109);
        let batch: Vec<_> = (0..40).map(|_| rec(1, &text)).collect();
        assert_eq!(chunk_sizes(&batch), [31, 9]);
        let mut late = rec(1, "late");
        late.ts_ms += CHUNK_SPAN_MS + 1;
        let batch = [rec(1, "a"), rec(1, "b"), late];
        assert_eq!(chunk_sizes(&batch), [2, 1]);
        // The span, with the times of today's clock: exactly CHUNK_SPAN_MS still joins.
        let at = |ts_ms| HistoryRecord {
            ts_ms,
            ..rec(1, "t")
        };
        let t0 = 1_764_000_000_000;
        let batch = [at(t0), at(t0 + CHUNK_SPAN_MS), at(t0 + CHUNK_SPAN_MS + 1)];
        assert_eq!(chunk_sizes(&batch), [2, 1]);
    }
}
