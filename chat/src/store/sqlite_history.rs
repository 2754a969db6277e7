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
//! A chunk's text is its messages' texts joined by NUL bytes (a frame never holds
//! one: NUL ends a frame on the wire); a message with a NUL in it, if one ever came,
//! is a chunk of its own, whose text is taken whole. Its `body` is that text LZ4
//! compressed (`codec` 1: the text's length as four little-endian bytes, then the
//! LZ4 block) when that is smaller, else the text itself (`codec` 0, and every
//! chunk written before compression). A conversation's frames repeat their fields,
//! so a chunk shrinks several times over: fewer pages to write, to copy at each
//! checkpoint and to keep. Retention removes whole chunks, by the `ts` of their
//! newest message: a message outlives its retention by at most the writer's
//! gathering time.

use std::borrow::Cow;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use super::social::HistoryRecord;
use super::StoreError;
use crate::protocol::HistoryItem;

/// Messages per chunk at most: a HISTORY page (20 by default) reads one or two chunks.
/// The writer's cost follows its rows (a B-tree insert, two index entries, a page
/// share): at chat-bench's 80,000 a batch over 1,000 conversations, 64 against 32
/// took it from 0.40-0.50 to 0.30-0.34 µs per message (`examples/history_append`).
pub(super) const CHUNK_MESSAGES: usize = 64;
/// Bytes of text per chunk at most (past the first message): compressed, a chunk of
/// chat frames stays within one 4 KiB page (64 frames of chat-bench's are ~1.4 KB),
/// so reading it does not follow an overflow chain; only text that does not
/// compress spills into one or two overflow pages.
pub(super) const CHUNK_BYTES: usize = 8000;
/// Milliseconds between a chunk's oldest and newest message at most: retention removes
/// whole chunks, so an expired message outlives its retention by at most this.
pub(super) const CHUNK_SPAN_MS: i64 = 2000;
/// The writer connection's page cache (KiB): the index tails of the conversations a
/// batch touches stay in memory between batches.
pub(super) const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Texts shorter than this are stored as they are: LZ4 gains nothing on them.
const COMPRESS_MIN: usize = 64;
/// Longest text stored compressed: a compressed body claiming more is corrupt (a
/// chunk's text is at most [`CHUNK_BYTES`], or one message, which the default frame
/// limit bounds far below; a longer one is stored as it is).
const TEXT_MAX: usize = 64 << 20;

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

/// One row to insert.
struct Row<'a> {
    conv: i64,
    seq: i64,
    last: i64,
    /// The newest message's time (retention).
    ts: i64,
    /// Its messages' texts joined by NUL bytes.
    text: &'a [u8],
}

/// The chunk being filled while a conversation's messages are cut.
struct Open {
    /// Messages in it.
    n: usize,
    /// The oldest message's time.
    first_ts: i64,
    /// The newest message's time.
    ts: i64,
    /// The text's length so far: each text and its separator.
    bytes: usize,
    /// It holds a message with a NUL, which must be a chunk's only one.
    sealed: bool,
}

impl Open {
    /// A chunk of `r` alone; `nul`: its text holds a NUL.
    fn new(r: &HistoryRecord, nul: bool) -> Open {
        Open {
            n: 1,
            first_ts: r.ts_ms,
            ts: r.ts_ms,
            bytes: r.text.len() + 1,
            sealed: nul,
        }
    }

    /// Whether `r` may join: room left, within [`CHUNK_SPAN_MS`], and neither it nor
    /// a message already in holds a NUL (such a message must be a chunk's only one).
    /// Constant time: a batch of a busy conversation is cut in one pass.
    fn takes(&self, r: &HistoryRecord, nul: bool) -> bool {
        let span = self.first_ts.min(r.ts_ms)..=self.ts.max(r.ts_ms);
        self.n < CHUNK_MESSAGES
            && self.bytes + r.text.len() <= CHUNK_BYTES
            && span.end() - span.start() <= CHUNK_SPAN_MS
            && !self.sealed
            && !nul
    }

    /// Adds `r`, which [`Open::takes`] accepted.
    fn push(&mut self, r: &HistoryRecord) {
        self.n += 1;
        self.first_ts = self.first_ts.min(r.ts_ms);
        self.ts = self.ts.max(r.ts_ms);
        self.bytes += r.text.len() + 1;
    }
}

/// The rows of `batch`: per conversation (ascending), in seq order. `bump(conv, n)`
/// moves a conversation's counter on by its `n` messages and returns the new value
/// (they get the last `n` seqs, in batch order); `insert` takes each row. One pass,
/// one allocation (the order), one buffer for the texts.
fn rows<E>(
    batch: &[HistoryRecord],
    mut bump: impl FnMut(i64, i64) -> Result<i64, E>,
    mut insert: impl FnMut(Row<'_>) -> Result<(), E>,
) -> Result<(), E> {
    // The batch's indices by conversation, in batch order within one: sorted with
    // their keys beside them, not looked up in the records at each comparison.
    let mut order: Vec<(i64, usize)> = batch.iter().map(|r| r.conv).zip(0..).collect();
    order.sort_unstable();
    let mut text = Vec::new();
    for msgs in order.chunk_by(|a, b| a.0 == b.0) {
        let conv = msgs[0].0;
        let n = msgs.len() as i64;
        let mut seq = bump(conv, n)? - n + 1;
        let mut emit = |chunk: &[(i64, usize)], ts: i64| {
            text.clear();
            for (k, &(_, i)) in chunk.iter().enumerate() {
                if k > 0 {
                    text.push(0);
                }
                text.extend_from_slice(batch[i].text.as_bytes());
            }
            let last = seq + chunk.len() as i64 - 1;
            let row = Row {
                conv,
                seq,
                last,
                ts,
                text: &text,
            };
            seq = last + 1;
            insert(row)
        };
        let mut open: Option<Open> = None;
        let mut start = 0;
        for (k, &(_, i)) in msgs.iter().enumerate() {
            let r = &batch[i];
            let nul = memchr::memchr(0, r.text.as_bytes()).is_some();
            match &mut open {
                Some(c) if c.takes(r, nul) => c.push(r),
                _ => {
                    if let Some(c) = open.take() {
                        emit(&msgs[start..k], c.ts)?;
                    }
                    start = k;
                    open = Some(Open::new(r, nul));
                }
            }
        }
        if let Some(c) = open {
            emit(&msgs[start..], c.ts)?;
        }
    }
    Ok(())
}

/// The stored form of a chunk's `text`: `(body, codec)` (see the module's doc),
/// compressed into `scratch` when that is smaller.
fn encode<'a>(text: &'a [u8], scratch: &'a mut Vec<u8>) -> (&'a [u8], i64) {
    // Past TEXT_MAX (a frame limit set that high) `decode` would refuse it.
    if text.len() < COMPRESS_MIN || text.len() > TEXT_MAX {
        return (text, 0);
    }
    scratch.clear();
    scratch.extend_from_slice(&(text.len() as u32).to_le_bytes());
    scratch.resize(4 + lz4_flex::block::get_maximum_output_size(text.len()), 0);
    match lz4_flex::block::compress_into(text, &mut scratch[4..]) {
        Ok(n) if 4 + n < text.len() => (&scratch[..4 + n], 1),
        _ => (text, 0),
    }
}

/// A chunk's text from its stored `body` and `codec`; `None` if it cannot be read.
fn decode(body: &[u8], codec: i64) -> Option<Cow<'_, [u8]>> {
    match codec {
        0 => Some(Cow::Borrowed(body)),
        1 => {
            let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
            if len > TEXT_MAX {
                return None;
            }
            let mut text = vec![0; len];
            match lz4_flex::block::decompress_into(&body[4..], &mut text) {
                Ok(n) if n == len => Some(Cow::Owned(text)),
                _ => None,
            }
        }
        _ => None,
    }
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
        let mut scratch = Vec::new();
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
        // One damaged chunk costs its own messages, not the conversation's older ones.
        let Some(text) = decode(body, codec) else {
            log::error!(
                "history: chunk {seq}..={last} of conversation {conv} cannot be read \
                 (codec {codec}); skipped"
            );
            continue;
        };
        let texts: Vec<&[u8]> = if seq == last {
            vec![&text]
        } else {
            text.split(|&b| b == 0).collect()
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

    /// The rows of `batch` as `(conv, seq, last, ts, text)`, each conversation's
    /// counter starting at `start(conv)`.
    fn cut(
        batch: &[HistoryRecord],
        start: impl Fn(i64) -> i64,
    ) -> Vec<(i64, i64, i64, i64, Vec<u8>)> {
        let mut out = Vec::new();
        rows::<()>(
            batch,
            |conv, n| Ok(start(conv) + n),
            |r| {
                out.push((r.conv, r.seq, r.last, r.ts, r.text.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn a_batch_is_a_chunk_per_conversation_in_seq_order() {
        let mut batch = [rec(2, "a"), rec(1, "b"), rec(2, "c"), rec(1, "d")];
        batch[1].ts_ms = 7;
        let got = cut(&batch, |conv| if conv == 1 { 2 } else { 9 });
        assert_eq!(
            got,
            [
                (1, 3, 4, 7, b"b\0d".to_vec()),
                (2, 10, 11, 5, b"a\0c".to_vec())
            ]
        );
    }

    /// How many texts each chunk of `batch` holds (seqs 1, 2, … in batch order).
    fn chunk_sizes(batch: &[HistoryRecord]) -> Vec<usize> {
        cut(batch, |_| 0)
            .iter()
            .map(|&(_, seq, last, _, _)| (last - seq + 1) as usize)
            .collect()
    }

    /// A chunk's text comes back from its stored form, compressed or not, and a
    /// body that does not decode is refused, not misread.
    #[test]
    fn bodies_round_trip_and_bad_ones_are_refused() {
        let mut scratch = Vec::new();
        let frame = r#"{"id":36,"msg":"hello there","msgid":6,"name":"alice","time":"2026-11-29 03:00:00","toid":41}"#;
        let texts = vec![frame; 20].join("\0");
        let (body, codec) = encode(texts.as_bytes(), &mut scratch);
        assert_eq!(codec, 1);
        assert!(
            body.len() * 4 < texts.len(),
            "{} of {}",
            body.len(),
            texts.len()
        );
        let body = body.to_vec();
        assert_eq!(decode(&body, 1).as_deref(), Some(texts.as_bytes()));
        // Short or incompressible texts are kept as they are.
        for raw in ["hi".as_bytes(), &(0..=255u8).collect::<Vec<_>>()] {
            let (stored, codec) = encode(raw, &mut scratch);
            assert_eq!((stored, codec), (raw, 0));
            assert_eq!(decode(raw, 0).as_deref(), Some(raw));
        }
        // A cut body, a wrong length, an absurd length, an unknown codec.
        let mut wrong_len = body.clone();
        wrong_len[0] = wrong_len[0].wrapping_add(1);
        let mut absurd = body.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        for (bad, codec) in [
            (&body[..body.len() / 2], 1),
            (&body[..3], 1),
            (&wrong_len[..], 1),
            (&absurd[..], 1),
            (&body[..], 2),
        ] {
            assert_eq!(
                decode(bad, codec),
                None,
                "{} bytes, codec {codec}",
                bad.len()
            );
        }
    }

    /// A text shorter than [`COMPRESS_MIN`] is stored as it is even when LZ4 would
    /// shrink it; from that length on it is compressed.
    #[test]
    fn only_texts_of_compress_min_bytes_are_compressed() {
        let mut scratch = Vec::new();
        for (len, want) in [(COMPRESS_MIN - 1, 0), (COMPRESS_MIN, 1)] {
            let text = vec![b'a'; len];
            let (_, codec) = encode(&text, &mut scratch);
            assert_eq!(codec, want, "the codec of {len} repeated bytes");
        }
    }

    /// A text of up to [`TEXT_MAX`] bytes is compressed and reads back; a longer one
    /// (a frame limit set that high) is stored as it is, so that it reads back too;
    /// a compressed body that claims more is refused, not allocated for.
    #[test]
    fn a_body_longer_than_text_max_is_refused() {
        let mut scratch = Vec::new();
        let text = vec![0; TEXT_MAX];
        let (body, codec) = encode(&text, &mut scratch);
        assert_eq!(codec, 1, "{TEXT_MAX} zeros compress");
        let got = decode(body, codec).map(|t| t.len());
        assert_eq!(got, Some(TEXT_MAX), "a body of {TEXT_MAX} bytes");
        let claims_more = {
            let mut b = body.to_vec();
            b[..4].copy_from_slice(&((TEXT_MAX + 1) as u32).to_le_bytes());
            b
        };
        assert_eq!(
            decode(&claims_more, 1),
            None,
            "a body claiming {} bytes",
            TEXT_MAX + 1
        );
        let longer = vec![0; TEXT_MAX + 1];
        let (body, codec) = encode(&longer, &mut scratch);
        assert_eq!(codec, 0, "{} bytes are stored as they are", TEXT_MAX + 1);
        assert_eq!(decode(body, codec).map(|t| t.len()), Some(TEXT_MAX + 1));
    }

    #[test]
    fn chunks_are_bounded_and_a_nul_stands_alone() {
        let batch: Vec<_> = (0..CHUNK_MESSAGES + 1).map(|_| rec(1, "x")).collect();
        assert_eq!(chunk_sizes(&batch), [CHUNK_MESSAGES, 1]);
        let big = "y".repeat(CHUNK_BYTES);
        let batch = [rec(1, "a"), rec(1, &big), rec(1, "b\0c"), rec(1, "d")];
        let sizes: Vec<_> = cut(&batch, |_| 0)
            .iter()
            .map(|&(_, seq, last, _, _)| (seq, last - seq + 1))
            .collect();
        assert_eq!(sizes, [(1, 1), (2, 1), (3, 1), (4, 1)]);
        // The byte bound counts each text and its separator: 3 × 2,667 - 1 = 8,000
        // fits, 3 × 2,668 - 1 does not.
        for (len, expect) in [(2666, [3, 3, 1]), (2667, [2, 2, 2])] {
            let text = "z".repeat(len);
            let batch: Vec<_> = (0..7).map(|_| rec(1, &text)).collect();
            let sizes = chunk_sizes(&batch);
            assert_eq!(sizes[..3], expect, "{len}: {sizes:?}");
        }
        // The first text's separator counts too: two of 4,000 make a text of 8,001.
        let text = "w".repeat(4000);
        assert_eq!(chunk_sizes(&[rec(1, &text), rec(1, &text)]), [1, 1]);
        // Every joined text's separator counts: 61 texts of 130 bytes are 7,990 bytes
        // with theirs, and a 62nd would make 8,121.
        let text = "v".repeat(130);
        let batch: Vec<_> = (0..70).map(|_| rec(1, &text)).collect();
        assert_eq!(chunk_sizes(&batch), [61, 9]);
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
