//! MySQL history as chunks (`history_chunks`): a batch's messages of one conversation
//! are one `historychunk` row, as in SQLite.
//!
//! The rule: the history writer's cost in the database follows rows, not messages.
//! With a row per message (the `history` table of older servers) MariaDB spent ~5 µs
//! a message on the row, its two index entries and its log records; a batch
//! gathered over a second now writes a row per conversation, with a few statements
//! per thousand rows, and its bodies compressed.
//!
//! The `history` table stays: it holds what older servers wrote, and during a
//! rolling upgrade what older nodes still write. Both kinds of node draw seqs from
//! the one `historyseq` counter, so a seq is in one table or the other, never both,
//! and a page merges the two: the `limit` highest seqs below `before` of either.

use std::collections::HashMap;

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, Transaction, Value};

use super::history_chunks::{encode, rows, Scratch, Stored};
use super::mysql::{placeholders, retry_deadlock, tx_opts};
use super::social::{counts, HistoryRecord};
use super::StoreError;
use crate::protocol::HistoryItem;

/// Conversations per counter statement of a history batch (two placeholders each:
/// a statement takes at most 65,535), in ascending key order across statements.
const COUNTER_ROWS: usize = 10_000;
/// Chunks per multi-row INSERT at most (six placeholders each: 6,000 a statement).
const INSERT_ROWS: usize = 1_000;
/// Body bytes per multi-row INSERT at most (past them the statement is sent): well
/// below the default `max_allowed_packet` (16 MiB on MariaDB from 10.2.4, 4 MiB on
/// MySQL 5.7 and older MariaDB), also when every chunk is text that does not
/// compress. A statement over it would fail every retry of its batch.
const INSERT_BYTES: usize = 1 << 20;
/// Values per chunk row of the INSERT.
const INSERT_COLUMNS: usize = 6;
/// The largest body a `historychunk` row holds (MEDIUMBLOB).
const BODY_MAX: u64 = (1 << 24) - 1;
/// Room below `max_allowed_packet` for what travels with a body (the statement, the
/// other values, the protocol's headers); a quarter of a packet below 256 KiB.
const STATEMENT_MARGIN: u64 = 64 << 10;
/// `max_allowed_packet` assumed when the server does not tell (MySQL 5.7's default).
const PACKET_DEFAULT: u64 = 4 << 20;

/// The longest message text a chunk row can take on a server whose
/// `max_allowed_packet` is `packet`: a long message is a chunk of its own, whose body
/// is its text (or less, compressed); the client sends a value too long for one
/// statement's packet on its own, but the server refuses a value longer than
/// `max_allowed_packet`, and a MEDIUMBLOB holds 16 MiB. A longer text would fail its
/// batch at every retry, so history does not take it (see
/// `SocialStore::history_text_max`).
pub(super) fn text_max(packet: Option<u64>) -> usize {
    let packet = packet.unwrap_or(PACKET_DEFAULT);
    let max = packet
        .min(BODY_MAX)
        .saturating_sub(STATEMENT_MARGIN.min(packet / 4));
    usize::try_from(max).unwrap_or(usize::MAX)
}

/// Chunks per DELETE of a retention sweep (two placeholders each).
const DELETE_ROWS: usize = 1_000;

/// Appends `batch` in one transaction on `conn` (see [`super::SocialStore`]): the
/// conversations' counters first (ascending keys, so two nodes' batches lock
/// counter rows in the same order), then the chunks.
pub(super) fn append(conn: &mut Conn, batch: &[HistoryRecord]) -> Result<(), StoreError> {
    let counts = counts(batch);
    retry_deadlock(|| {
        let mut tx = conn.start_transaction(tx_opts())?;
        let last = bump_counters(&mut tx, &counts)?;
        let mut scratch = Scratch::default();
        let mut values: Vec<Value> = Vec::with_capacity(INSERT_ROWS * INSERT_COLUMNS);
        let mut bytes = 0;
        rows(
            batch,
            // A counter just bumped is there; were it not, the seqs start at 1.
            |conv, n| Ok(last.get(&conv).copied().unwrap_or(n)),
            |r| {
                let (body, codec) = encode(r.text, &mut scratch);
                bytes += body.len();
                values.extend([
                    Value::from(r.conv),
                    Value::from(r.seq),
                    Value::from(r.last),
                    Value::from(r.ts),
                    Value::Bytes(body.to_vec()),
                    Value::from(codec),
                ]);
                if values.len() < INSERT_ROWS * INSERT_COLUMNS && bytes < INSERT_BYTES {
                    return Ok(());
                }
                bytes = 0;
                insert_chunks(&mut tx, &mut values)
            },
        )?;
        insert_chunks(&mut tx, &mut values)?;
        tx.commit()
    })
}

/// Moves each conversation's counter on by its messages in the batch (`counts`, in
/// ascending key order), [`COUNTER_ROWS`] a statement, and returns the counters
/// after, read with a lock until the transaction ends.
fn bump_counters(
    tx: &mut Transaction<'_>,
    counts: &[(i64, i64)],
) -> Result<HashMap<i64, i64>, ::mysql::Error> {
    let mut last = HashMap::with_capacity(counts.len());
    for counts in counts.chunks(COUNTER_ROWS) {
        let values: Vec<Value> = counts
            .iter()
            .flat_map(|&(c, n)| [Value::from(c), Value::from(n)])
            .collect();
        tx.exec_drop(
            format!(
                "INSERT INTO historyseq (conv, seq) VALUES {} \
                 ON DUPLICATE KEY UPDATE seq = seq + VALUES(seq)",
                vec!["(?, ?)"; counts.len()].join(", ")
            ),
            values,
        )?;
        let keys: Vec<i64> = counts.iter().map(|&(c, _)| c).collect();
        last.extend(tx.exec::<(i64, i64), _, _>(
            format!(
                "SELECT conv, seq FROM historyseq WHERE conv IN ({}) FOR UPDATE",
                placeholders(keys.len())
            ),
            keys,
        )?);
    }
    Ok(last)
}

/// Inserts the chunk rows whose values `values` holds ([`INSERT_COLUMNS`] a row) in
/// one statement, and empties it.
fn insert_chunks(tx: &mut Transaction<'_>, values: &mut Vec<Value>) -> Result<(), ::mysql::Error> {
    let n = values.len() / INSERT_COLUMNS;
    if n == 0 {
        return Ok(());
    }
    tx.exec_drop(
        format!(
            "INSERT INTO historychunk (conv, seq, last, ts, body, codec) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ")
        ),
        std::mem::take(values),
    )
}

/// At most `limit` messages of `conv` with a seq below `before`, newest first, from
/// the chunks and the rows of the old table together.
pub(super) fn page(
    conn: &mut Conn,
    conv: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<HistoryItem>, StoreError> {
    let before = before.unwrap_or(i64::MAX);
    let want = usize::try_from(limit).unwrap_or(0);
    if want == 0 {
        return Ok(Vec::new());
    }
    // The chunks first, the old table's rows second: a conversation's seqs commit in
    // seq order (its counter row stays locked until a batch commits, on old and new
    // nodes alike), so every seq below one the first read saw is committed by the
    // time of the second, in either table. The other way round, an old node's row
    // committed between the reads could be missing from the middle of a page.
    // Each chunk below `below` holds a message below `before`; a chunk usually holds
    // many, so a couple are asked for at a time (more when some are unreadable and
    // skipped, or hold fewer).
    let mut new = Vec::new();
    let mut below = before;
    loop {
        let asked = (want - new.len()).min(2);
        let chunks: Vec<(i64, i64, i64, Vec<u8>)> = conn.exec(
            "SELECT seq, last, codec, body FROM historychunk \
             WHERE conv = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (conv, below, asked),
        )?;
        for (seq, last, codec, body) in &chunks {
            let chunk = Stored {
                seq: *seq,
                last: *last,
                codec: *codec,
                body,
            };
            if new.len() >= want {
                break;
            }
            chunk.push_page(conv, before, want, &mut new);
        }
        match chunks.last() {
            Some(&(seq, ..)) if chunks.len() == asked && new.len() < want => below = seq,
            _ => break,
        }
    }
    let old: Vec<(i64, String)> = conn.exec(
        "SELECT seq, message FROM history WHERE conv = ? AND seq < ? \
         ORDER BY seq DESC LIMIT ?",
        (conv, before, limit),
    )?;
    Ok(merge(old, new, want))
}

/// The `want` highest seqs of `old` (rows of the `history` table) and `new` (messages
/// of chunks), both newest first, newest first.
fn merge(old: Vec<(i64, String)>, new: Vec<HistoryItem>, want: usize) -> Vec<HistoryItem> {
    let mut old = old
        .into_iter()
        .map(|(seq, text)| HistoryItem { seq, text })
        .peekable();
    let mut new = new.into_iter().peekable();
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let from_old = match (old.peek(), new.peek()) {
            (Some(o), Some(n)) => o.seq > n.seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if from_old { old.next() } else { new.next() });
    }
    out
}

/// Deletes messages older than `cutoff_ms`, at most `max` rows: rows of the old
/// table first, then chunks whose newest message is older (the budget that is
/// left); returns how many messages went.
pub(super) fn prune(conn: &mut Conn, cutoff_ms: i64, max: i64) -> Result<u64, StoreError> {
    conn.exec_drop(
        "DELETE FROM history WHERE ts < ? ORDER BY ts LIMIT ?",
        (cutoff_ms, max),
    )?;
    let old_rows = conn.affected_rows();
    let left = max.saturating_sub(i64::try_from(old_rows).unwrap_or(i64::MAX));
    if left <= 0 {
        return Ok(old_rows);
    }
    // The chunks are read and locked, then deleted by key: a chunk counts its
    // messages, which a DELETE … LIMIT could not report.
    let messages = retry_deadlock(|| {
        let mut tx = conn.start_transaction(tx_opts())?;
        let expired: Vec<(i64, i64, i64)> = tx.exec(
            "SELECT conv, seq, last FROM historychunk WHERE ts < ? \
             ORDER BY ts LIMIT ? FOR UPDATE",
            (cutoff_ms, left),
        )?;
        for keys in expired.chunks(DELETE_ROWS) {
            let values: Vec<Value> = keys
                .iter()
                .flat_map(|&(conv, seq, _)| [Value::from(conv), Value::from(seq)])
                .collect();
            tx.exec_drop(
                format!(
                    "DELETE FROM historychunk WHERE (conv, seq) IN ({})",
                    vec!["(?, ?)"; keys.len()].join(", ")
                ),
                values,
            )?;
        }
        tx.commit()?;
        Ok(expired
            .iter()
            .map(|&(_, seq, last)| u64::try_from(last - seq + 1).unwrap_or(0))
            .sum::<u64>())
    })?;
    Ok(old_rows + messages)
}
