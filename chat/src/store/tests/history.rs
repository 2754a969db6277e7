//! History in chunks on both backends (pages across chunk edges, retention of whole
//! chunks), and on MySQL beside the `history` table of older servers: a batch is a
//! row per conversation, pages merge old rows and chunks, a damaged chunk is skipped.

use ::mysql::prelude::Queryable;

use super::{open_with, MysqlDb, SqliteDb, Store};
use crate::store::social::HistoryRecord;

backend_tests!(
    history_pages_cross_chunk_edges,
    history_prune_removes_whole_chunks
);

/// Message `i` of conversation `conv`: sent at 1,000 + `i` ms, text `{"msg":"m<i>"}`.
pub(super) fn rec(conv: i64, i: i64) -> HistoryRecord {
    HistoryRecord {
        conv,
        sender: 1,
        ts_ms: 1_000 + i,
        text: text(i),
    }
}

/// The text of message `i` ([`rec`]).
fn text(i: i64) -> String {
    format!(r#"{{"msg":"m{i}"}}"#)
}

/// The seqs of a page.
fn seqs(store: &dyn Store, conv: i64, before: Option<i64>, limit: i64) -> Vec<i64> {
    let page = store.history_page(conv, before, limit).unwrap();
    page.iter().map(|m| m.seq).collect()
}

/// Batches cut into chunks of different sizes read back as one sequence, from any
/// `before` (a chunk's edge or its middle), newest first, with `limit` respected.
fn history_pages_cross_chunk_edges(store: &dyn Store) {
    // 1 + 70 (two chunks: 64 and 6) + 3 messages of conversation 9, with conversation
    // 8 between: chunks 1, 2..=65, 66..=71, 72..=74.
    for n in [1, 70, 3] {
        let batch: Vec<_> = (0..n).flat_map(|i| [rec(9, i), rec(8, i)]).collect();
        store.append_history(&batch).unwrap();
    }
    let all = store.history_page(9, None, 100).unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=74).rev().collect::<Vec<_>>()
    );
    assert_eq!(all[0].text, text(2));
    assert_eq!(all[73].text, text(0));
    for before in [75, 74, 72, 71, 66, 65, 40, 2, 1] {
        let want: Vec<i64> = (1..before).rev().take(5).collect();
        assert_eq!(seqs(store, 9, Some(before), 5), want, "before {before}");
    }
    // A page over three chunks, from the middle of the newest to the oldest's.
    let want: Vec<i64> = (3..=72).rev().collect();
    assert_eq!(seqs(store, 9, Some(73), 70), want);
    assert_eq!(store.history_page(8, None, 100).unwrap().len(), 74);
}

/// Retention removes whole chunks, once their newest message expired, at most `max`
/// of them a call, and counts their messages.
fn history_prune_removes_whole_chunks(store: &dyn Store) {
    // Chunks 1..=64 (newest at 1,063 ms) and 65..=70 (1,069 ms); then 71..=73.
    store
        .append_history(&(0..70).map(|i| rec(5, i)).collect::<Vec<_>>())
        .unwrap();
    store
        .append_history(&(10_000..10_003).map(|i| rec(5, i)).collect::<Vec<_>>())
        .unwrap();
    // Message 64 (1,064 ms) expired, but its chunk's newest did not.
    assert_eq!(store.prune_history(1_065, 10).unwrap(), 64);
    assert_eq!(
        seqs(store, 5, None, 100),
        (65..=73).rev().collect::<Vec<_>>()
    );
    assert_eq!(store.prune_history(1_065, 10).unwrap(), 0);
    // One row a call: one chunk.
    assert_eq!(store.prune_history(i64::MAX, 1).unwrap(), 6);
    assert_eq!(store.prune_history(i64::MAX, 10).unwrap(), 3);
    assert_eq!(seqs(store, 5, None, 100), Vec::<i64>::new());
}

/// What the chunks are for: a batch of N messages over C conversations is a chunk row
/// per conversation (per 64 messages of one), not a row per message.
#[test]
fn mysql_a_batch_is_a_row_per_conversation_not_per_message() {
    let db = MysqlDb::new();
    const CONVS: i64 = 1_000;
    // 50 messages in each of 1,000 conversations, and 130 in one more.
    let mut batch: Vec<_> = (0..50)
        .flat_map(|i| (1..=CONVS).map(move |c| rec(c, i)))
        .collect();
    batch.extend((0..130).map(|i| rec(CONVS + 1, i)));
    db.store.append_history(&batch).unwrap();
    let mut c = db._db.conn();
    let chunks: Option<i64> = c.query_first("SELECT COUNT(*) FROM historychunk").unwrap();
    let rows: Option<i64> = c.query_first("SELECT COUNT(*) FROM history").unwrap();
    // ceil(50 / 64) = 1 for each of the 1,000, ceil(130 / 64) = 3 for the other.
    assert_eq!(
        (chunks, rows),
        (Some(CONVS + 3), Some(0)),
        "(chunk rows, history rows) for {} messages",
        batch.len()
    );
    for conv in [1, CONVS / 2, CONVS] {
        let want: Vec<i64> = (1..=50).rev().collect();
        assert_eq!(
            seqs(&*db.store, conv, None, 100),
            want,
            "conversation {conv}"
        );
    }
    let want: Vec<i64> = (1..=130).rev().collect();
    assert_eq!(seqs(&*db.store, CONVS + 1, None, 200), want);
}

/// `len` bytes of letters and digits that LZ4 cannot shrink much (a chunk of one such
/// message is stored about as long as its text).
pub(crate) fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The longest text kept follows the server's packet: 64 KiB below it, at most a
/// MEDIUMBLOB's, a quarter below a small packet (not nothing), MySQL 5.7's default
/// when the server does not say.
#[test]
fn history_text_max_follows_the_packet() {
    use crate::store::mysql_history::text_max;
    const K: usize = 1024;
    let packet = |bytes: usize| Some(bytes as u64);
    assert_eq!(text_max(packet(16 * K * K)), 16 * K * K - 1 - 64 * K);
    assert_eq!(text_max(packet(1 << 30)), 16 * K * K - 1 - 64 * K);
    assert_eq!(text_max(packet(4 * K * K)), 4 * K * K - 64 * K);
    assert_eq!(text_max(packet(64 * K)), 48 * K);
    assert_eq!(text_max(None), 4 * K * K - 64 * K);
}

/// A message as long as the store says it keeps is kept, also in one statement with
/// ~1 MiB of other chunks (the client sends long values apart from the statement).
/// (Seen failing with `text_max` bounded by `max_allowed_packet` alone, not by the
/// MEDIUMBLOB column and a margin.)
#[test]
fn mysql_the_longest_text_history_takes_is_kept() {
    let db = MysqlDb::new();
    let max = db.store.history_text_max();
    assert!(
        max >= 1 << 20,
        "{max} bytes from the server's max_allowed_packet"
    );
    // 120 conversations of one incompressible 8,000-byte message (one chunk each,
    // ~940 KiB together, under the statement's INSERT_BYTES), then the long one.
    let mut batch: Vec<HistoryRecord> = (1..=120)
        .map(|c| HistoryRecord {
            conv: c,
            sender: 1,
            ts_ms: 1_000,
            text: incompressible(8_000, c as u64),
        })
        .collect();
    let long = incompressible(max, 7);
    batch.push(HistoryRecord {
        conv: 500,
        sender: 1,
        ts_ms: 1_000,
        text: long.clone(),
    });
    db.store
        .append_history(&batch)
        .expect("the batch is written");
    let page = db.store.history_page(500, None, 10).unwrap();
    assert_eq!(page.len(), 1);
    // (Compared apart from the message: a failure must not print 16 MiB.)
    assert!(page[0].text == long, "the long text read back whole");
    assert_eq!(
        db.store.history_page(120, None, 10).unwrap()[0].text,
        batch[119].text
    );
}

/// An older server's database (no `historychunk`, a row per message in `history`)
/// gains the table when a newer server opens it; what older nodes go on writing
/// there during a rolling upgrade (seqs from the shared counter) and the chunks read
/// back as one sequence, and retention sweeps both.
#[test]
fn mysql_pages_merge_old_rows_and_chunks() {
    let db = MysqlDb::new();
    let mut c = db._db.conn();
    c.query_drop("DROP TABLE historychunk").unwrap();
    // What an older node writes: counter first, then a row per message.
    let old_node = |c: &mut ::mysql::Conn, seqs: std::ops::RangeInclusive<i64>, ts: i64| {
        c.exec_drop(
            "INSERT INTO historyseq (conv, seq) VALUES (9, ?) \
             ON DUPLICATE KEY UPDATE seq = seq + VALUES(seq)",
            (seqs.clone().count(),),
        )
        .unwrap();
        for s in seqs {
            c.exec_drop(
                "INSERT INTO history (conv, seq, sender, ts, message) VALUES (9, ?, 1, ?, ?)",
                (s, ts + s, format!("old {s}")),
            )
            .unwrap();
        }
    };
    old_node(&mut c, 1..=3, 0);
    let store = open_with(&db._db.url(), 2).expect("reopen");
    // Seqs 4..=73 in chunks 4..=67 and 68..=73, rows 74 and 75, then chunk 76..=78.
    store
        .append_history(&(0..70).map(|i| rec(9, i)).collect::<Vec<_>>())
        .unwrap();
    old_node(&mut c, 74..=75, 100_000);
    store
        .append_history(&(100..103).map(|i| rec(9, i)).collect::<Vec<_>>())
        .unwrap();
    let text_of = |seq: i64| match seq {
        1..=3 | 74..=75 => format!("old {seq}"),
        4..=73 => text(seq - 4),
        _ => text(seq - 76 + 100),
    };
    let all = store.history_page(9, None, 100).unwrap();
    let got: Vec<(i64, &str)> = all.iter().map(|m| (m.seq, m.text.as_str())).collect();
    let want: Vec<(i64, String)> = (1..=78).rev().map(|s| (s, text_of(s))).collect();
    let want: Vec<(i64, &str)> = want.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(got, want);
    for before in [79, 78, 77, 76, 75, 74, 73, 70, 68, 67, 40, 5, 4, 3, 2, 1] {
        for limit in [1, 5] {
            let want: Vec<i64> = (1..before).rev().take(limit).collect();
            assert_eq!(
                seqs(&*store, 9, Some(before), limit as i64),
                want,
                "before {before}, limit {limit}"
            );
        }
    }
    // Rows 1..=3 (1..3 ms) and chunk 4..=67 (newest 1,063 ms) expired.
    assert_eq!(store.prune_history(1_064, 10).unwrap(), 3 + 64);
    assert_eq!(
        seqs(&*store, 9, None, 100),
        (68..=78).rev().collect::<Vec<_>>()
    );
    // The budget is rows: one old row takes it all.
    assert_eq!(store.prune_history(i64::MAX, 1).unwrap(), 1);
    assert_eq!(store.prune_history(i64::MAX, 10).unwrap(), 1 + 6 + 3);
    assert_eq!(seqs(&*store, 9, None, 100), Vec::<i64>::new());
}

/// A chunk whose body cannot be read (damaged, or of a newer server's codec) is
/// skipped: pages hold every other message, also when the damaged chunk was one of
/// the chunks a page asked for and the next ones must be read in its place.
#[test]
fn mysql_an_unreadable_chunk_is_skipped_not_fatal() {
    let db = MysqlDb::new();
    for from in [0, 100, 200] {
        let batch: Vec<_> = (from..from + 40).map(|i| rec(9, i)).collect();
        db.store.append_history(&batch).unwrap();
    }
    let mut c = db._db.conn();
    c.query_drop(
        "UPDATE historychunk SET body = X'FFFFFFFF00', codec = 1 WHERE conv = 9 AND seq = 41",
    )
    .unwrap();
    assert_eq!(c.affected_rows(), 1, "the middle chunk");
    let page = db.store.history_page(9, None, 100).unwrap();
    let got: Vec<i64> = page.iter().map(|m| m.seq).collect();
    let want: Vec<i64> = (81..=120).rev().chain((1..=40).rev()).collect();
    assert_eq!(got, want);
    assert_eq!(page[40].text, text(39));
    let store = &*db.store;
    assert_eq!(
        seqs(store, 9, Some(81), 1),
        [40],
        "the damaged chunk was the one read"
    );
    let want: Vec<i64> = (81..=89).rev().chain([40, 39, 38]).collect();
    assert_eq!(seqs(store, 9, Some(90), 12), want);
}
