//! History in chunks, the form both stores keep it in: a batch's messages of one
//! conversation, in seq order, are one `historychunk` row (the conversation, its
//! first and last seq, its newest message's time, the body and the body's codec).
//!
//! The rule: a chunk's seqs are `seq..=last`, one per message, in the order of its
//! texts. Both stores cut a batch with [`rows`] and read a chunk back with
//! [`Stored::push_page`], so they store and read alike and only their SQL differs.
//!
//! A chunk holds up to [`CHUNK_MESSAGES`] messages, [`CHUNK_BYTES`] bytes of text and
//! [`CHUNK_SPAN_MS`] between its oldest and newest message; retention removes whole
//! chunks, by the `ts` of their newest message, so a message outlives its retention
//! by at most that span. A chunk's text is its messages' texts joined by NUL bytes
//! (a frame never holds one: NUL ends a frame on the wire); a message with a NUL in
//! it, if one ever came, is a chunk of its own, whose text is taken whole. Its
//! `body` is that text LZ4 compressed (`codec` 1: the text's length as four
//! little-endian bytes, then the LZ4 block) when that is smaller, else the text
//! itself (`codec` 0, and every SQLite chunk written before compression). A
//! conversation's frames repeat their fields, so a chunk shrinks several times over.
//! A body that does not decode (damaged, or of a codec only a newer server knows)
//! costs its own messages, not the page: it is skipped and logged.

use std::borrow::Cow;

use super::social::HistoryRecord;
use crate::protocol::HistoryItem;

/// Messages per chunk at most: a HISTORY page (20 by default) reads one or two chunks.
/// The writer's cost follows its rows (a B-tree insert, two index entries, a page
/// share): on SQLite, at chat-bench's 80,000 a batch over 1,000 conversations, 64
/// against 32 took it from 0.40-0.50 to 0.30-0.34 µs per message
/// (`examples/history_append`).
pub(super) const CHUNK_MESSAGES: usize = 64;
/// Bytes of text per chunk at most (past the first message): compressed, a chunk of
/// chat frames stays within one 4 KiB SQLite page (64 frames of chat-bench's are
/// ~1.4 KB), so reading it does not follow an overflow chain; only text that does
/// not compress spills into one or two overflow pages.
pub(super) const CHUNK_BYTES: usize = 8000;
/// Milliseconds between a chunk's oldest and newest message at most: retention removes
/// whole chunks, so an expired message outlives its retention by at most this.
pub(super) const CHUNK_SPAN_MS: i64 = 2000;
/// Texts shorter than this are stored as they are: LZ4 gains nothing on them.
const COMPRESS_MIN: usize = 64;
/// Longest text stored compressed: a compressed body claiming more is corrupt (a
/// chunk's text is at most [`CHUNK_BYTES`], or one message, which the default frame
/// limit bounds far below; a longer one is stored as it is).
const TEXT_MAX: usize = 64 << 20;

/// One chunk row to insert, as [`rows`] hands it over.
pub(super) struct Row<'a> {
    /// The conversation.
    pub(super) conv: i64,
    /// The first message's seq.
    pub(super) seq: i64,
    /// The last message's seq.
    pub(super) last: i64,
    /// The newest message's time (retention).
    pub(super) ts: i64,
    /// Its messages' texts joined by NUL bytes.
    pub(super) text: &'a [u8],
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
pub(super) fn rows<E>(
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

/// What [`encode`] reuses from one chunk to the next: the output, which stays at its
/// largest size (re-zeroing it per chunk was a memset of ~9 KB), and LZ4's hash
/// table (a fresh one per chunk was a zeroed 8 KiB allocation): together a third of
/// the writer thread's instructions under callgrind.
#[derive(Default)]
pub(super) struct Scratch {
    out: Vec<u8>,
    table: lz4_flex::block::CompressTable,
}

/// The stored form of a chunk's `text`: `(body, codec)` (see the module's doc),
/// compressed into `scratch` when that is smaller.
pub(super) fn encode<'a>(text: &'a [u8], scratch: &'a mut Scratch) -> (&'a [u8], i64) {
    // Past TEXT_MAX (a frame limit set that high) `decode` would refuse it.
    if text.len() < COMPRESS_MIN || text.len() > TEXT_MAX {
        return (text, 0);
    }
    let need = 4 + lz4_flex::block::get_maximum_output_size(text.len());
    if scratch.out.len() < need {
        scratch.out.resize(need, 0);
    }
    let out = &mut scratch.out[..need];
    out[..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into_with_table(text, &mut out[4..], &mut scratch.table) {
        Ok(n) if 4 + n < text.len() => (&out[..4 + n], 1),
        _ => (text, 0),
    }
}

/// A chunk's text from its stored `body` and `codec`; `None` if it cannot be read.
pub(super) fn decode(body: &[u8], codec: i64) -> Option<Cow<'_, [u8]>> {
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

/// A chunk as a page query reads it.
pub(super) struct Stored<'a> {
    /// The first message's seq.
    pub(super) seq: i64,
    /// The last message's seq.
    pub(super) last: i64,
    /// How `body` is stored (see the module's doc).
    pub(super) codec: i64,
    /// The stored text.
    pub(super) body: &'a [u8],
}

impl Stored<'_> {
    /// Adds to `out`, newest first, this chunk's messages whose seq is below
    /// `before`, until `out` holds `limit`. A chunk that cannot be decoded adds
    /// nothing and is logged (with `conv`, its conversation): one damaged chunk costs
    /// its own messages, not the conversation's older ones.
    pub(super) fn push_page(
        &self,
        conv: i64,
        before: i64,
        limit: usize,
        out: &mut Vec<HistoryItem>,
    ) {
        let (seq, last, codec) = (self.seq, self.last, self.codec);
        if out.len() >= limit {
            return;
        }
        let unreadable = || {
            log::error!(
                "history: chunk {seq}..={last} of conversation {conv} cannot be read \
                 (codec {codec}); skipped"
            );
        };
        let Some(text) = decode(self.body, codec) else {
            return unreadable();
        };
        let texts: Vec<&[u8]> = if seq == last {
            vec![&text]
        } else {
            text.split(|&b| b == 0).collect()
        };
        // A body that splits into another count than its seqs span would give its
        // texts the wrong seqs.
        if i64::try_from(texts.len()).ok() != last.checked_sub(seq).map(|d| d + 1) {
            return unreadable();
        }
        for (i, text) in texts.iter().enumerate().rev() {
            if out.len() >= limit {
                return;
            }
            let s = seq + i as i64;
            if s >= before {
                continue;
            }
            out.push(HistoryItem {
                seq: s,
                text: String::from_utf8_lossy(text).into_owned(),
            });
        }
    }
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
        let mut scratch = Scratch::default();
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

    /// One scratch serves a batch's chunks, large and small, in any order: each body
    /// reads back as its own text (the output keeps its largest size; the hash table
    /// is cleared for each chunk, its allocation kept).
    #[test]
    fn a_scratch_reused_for_chunks_of_any_size() {
        let mut scratch = Scratch::default();
        let text = |n: usize, seed: u8| -> Vec<u8> {
            (0..n)
                .map(|i| b"abcdefgh{}\":,0123"[(i * 7 + usize::from(seed)) % 17])
                .collect()
        };
        for (n, seed) in [
            (40_000, 1),
            (200, 2),
            (70_000, 3),
            (64, 4),
            (8_000, 5),
            (65, 1),
        ] {
            let t = text(n, seed);
            let (body, codec) = encode(&t, &mut scratch);
            assert_eq!(codec, 1, "{n} bytes compress");
            let body = body.to_vec();
            assert_eq!(decode(&body, codec).as_deref(), Some(&t[..]), "{n} bytes");
        }
    }

    /// A body whose texts do not match its seq span is skipped, not read with the
    /// wrong seqs (or its oldest dropped).
    #[test]
    fn a_chunk_of_the_wrong_count_is_skipped() {
        let mut out = Vec::new();
        for (seq, last, body) in [(1, 3, &b"a\0b"[..]), (4, 5, b"a\0b\0c"), (7, 7, b"x")] {
            let chunk = Stored {
                seq,
                last,
                codec: 0,
                body,
            };
            chunk.push_page(9, 100, 10, &mut out);
        }
        let seqs: Vec<i64> = out.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [7], "only the chunk that matches its span");
    }

    /// A text shorter than [`COMPRESS_MIN`] is stored as it is even when LZ4 would
    /// shrink it; from that length on it is compressed.
    #[test]
    fn only_texts_of_compress_min_bytes_are_compressed() {
        let mut scratch = Scratch::default();
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
        let mut scratch = Scratch::default();
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
