//! SQLite history as chunks (`history_chunks`): a batch's messages of one
//! conversation are one row.
//!
//! The rule: the history writer's cost follows rows and pages, not messages. With one
//! row per message, a batch over a thousand busy conversations dirtied (and wrote to
//! the WAL) a page per message, the tail of each conversation's key range. Here a
//! batch stores each conversation's messages, in seq order, as one `historychunk` row
//! (rows are appended in rowid order, so their pages fill one after the other) with
//! one small index entry `(conv, seq)`; a batch gathered over a second costs a row
//! per conversation. Compressed, a chunk takes several times fewer pages to write, to
//! copy at each checkpoint and to keep.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use super::history_chunks::{encode, rows, Scratch, Stored};
use super::social::HistoryRecord;
use super::StoreError;
use crate::protocol::HistoryItem;

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
  body BLOB NOT NULL,
  codec INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS historychunk_conv ON historychunk (conv, seq);
CREATE INDEX IF NOT EXISTS historychunk_ts ON historychunk (ts);
CREATE TABLE IF NOT EXISTS historyseq (
  conv INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL
);
";

/// Schema version 3 had no `codec` (its bodies are texts, codec 0); version 2 kept a
/// row per message in `history`: each becomes a chunk of one.
pub(super) fn upgrade(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let has_codec = tx
        .prepare("SELECT 1 FROM pragma_table_info('historychunk') WHERE name = 'codec'")?
        .exists([])?;
    if !has_codec {
        tx.execute_batch("ALTER TABLE historychunk ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")?;
    }
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

/// Appends `batch` in one IMMEDIATE transaction on `conn` (see [`super::SocialStore`]).
pub(super) fn append(conn: &mut Connection, batch: &[HistoryRecord]) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut bump = tx.prepare_cached(
            "INSERT INTO historyseq (conv, seq) VALUES (?1, ?2) \
             ON CONFLICT (conv) DO UPDATE SET seq = seq + excluded.seq RETURNING seq",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO historychunk (conv, seq, last, ts, body, codec) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut scratch = Scratch::default();
        rows(
            batch,
            |conv, n| bump.query_row((conv, n), |row| row.get::<_, i64>(0)),
            |r| {
                let (body, codec) = encode(r.text, &mut scratch);
                insert
                    .execute((r.conv, r.seq, r.last, r.ts, body, codec))
                    .map(drop)
            },
        )?;
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
        "SELECT seq, last, body, codec FROM historychunk \
         WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC",
    )?;
    let mut rows = stmt.query((conv, before))?;
    while let Some(row) = rows.next()? {
        let (seq, last, codec): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(3)?);
        let body = match row.get_ref(2)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            _ => &[],
        };
        Stored {
            seq,
            last,
            codec,
            body,
        }
        .push_page(conv, before, limit, &mut out);
        if out.len() == limit {
            return Ok(out);
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
