//! SQLite history in chunks: the upgrades of a version-2 file (a row per message) and
//! of a version-3 file (chunks stored as text), a damaged chunk, a newer schema. Pages
//! across chunk edges are `history`'s, on both backends.

use super::history::rec;
use super::{unique_suffix, FileGuard, SqliteDb};
use crate::store::open_with;

/// A new SQLite file (removed when the guard drops) with `sql` run in it (an older
/// version's tables; nothing if empty), and its URL.
fn file_with(sql: &str) -> (FileGuard, String) {
    let path = std::env::temp_dir().join(format!("chat_store_test_{}.db", unique_suffix()));
    let guard = FileGuard(path.clone());
    if !sql.is_empty() {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
    }
    (guard, format!("sqlite:{}", path.display()))
}

/// A file written by schema version 2 keeps its messages and seqs, and new messages
/// go on from the old counter.
#[test]
fn version_2_history_is_kept() {
    let (_file, url) = file_with(
        "CREATE TABLE history (conv INTEGER NOT NULL, seq INTEGER NOT NULL, \
               sender INTEGER NOT NULL, ts INTEGER NOT NULL, message TEXT NOT NULL, \
               PRIMARY KEY (conv, seq)) WITHOUT ROWID;
             CREATE INDEX history_ts ON history (ts);
             CREATE TABLE historyseq (conv INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
             INSERT INTO history VALUES (5, 1, 1, 10, 'one'), (5, 2, 2, 11, 'two'), (6, 1, 1, 12, 'x');
             INSERT INTO historyseq VALUES (5, 2), (6, 1);
             PRAGMA user_version = 2;",
    );
    let store = open_with(&url, 2).unwrap();
    store.append_history(&[rec(5, 3)]).unwrap();
    let page = store.history_page(5, None, 10).unwrap();
    let got: Vec<_> = page.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(got, [(3, r#"{"msg":"m3"}"#), (2, "two"), (1, "one")]);
    assert_eq!(store.history_page(6, None, 10).unwrap().len(), 1);
    drop(store);
    // A second open finds nothing left to move.
    let store = open_with(&url, 2).unwrap();
    assert_eq!(store.history_page(5, None, 10).unwrap().len(), 3);
}

/// A file written by schema version 3 (chunk bodies stored as text, no `codec`)
/// keeps its chunks readable, and new chunks are stored compressed beside them.
#[test]
fn version_3_chunks_stay_readable_beside_compressed_ones() {
    let (file, url) = file_with(
        "CREATE TABLE historychunk (id INTEGER PRIMARY KEY, conv INTEGER NOT NULL, \
               seq INTEGER NOT NULL, last INTEGER NOT NULL, ts INTEGER NOT NULL, \
               body BLOB NOT NULL);
             CREATE UNIQUE INDEX historychunk_conv ON historychunk (conv, seq);
             CREATE INDEX historychunk_ts ON historychunk (ts);
             CREATE TABLE historyseq (conv INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
             INSERT INTO historychunk (conv, seq, last, ts, body) \
               VALUES (5, 1, 2, 10, CAST('one' || char(0) || 'two' AS BLOB));
             INSERT INTO historyseq VALUES (5, 2);
             PRAGMA user_version = 3;",
    );
    let store = open_with(&url, 2).unwrap();
    let batch: Vec<_> = (3..43).map(|i| rec(5, i)).collect();
    store.append_history(&batch).unwrap();
    let page = store.history_page(5, None, 100).unwrap();
    let got: Vec<_> = page.iter().map(|m| (m.seq, m.text.clone())).collect();
    let mut want: Vec<_> = (3..43)
        .map(|i| (i, format!(r#"{{"msg":"m{i}"}}"#)))
        .collect();
    want.extend([(2, "two".to_string()), (1, "one".to_string())]);
    want[..40].reverse();
    assert_eq!(got, want);
    // The old chunk is still text; the new one (40 messages) is compressed.
    let conn = rusqlite::Connection::open(&file.0).unwrap();
    let codecs: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT seq, last, codec FROM historychunk WHERE conv = 5 ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(codecs, [(1, 2, 0), (3, 42, 1)]);
    // A second open finds nothing left to change.
    drop(store);
    let store = open_with(&url, 2).unwrap();
    assert_eq!(store.history_page(5, None, 100).unwrap().len(), 42);
}

/// A chunk whose body cannot be read (damaged, or written by a newer server) is
/// skipped: the conversation's pages still hold every other message.
#[test]
fn an_unreadable_chunk_is_skipped_not_fatal() {
    let db = SqliteDb::new();
    let store = &db.store;
    for from in [0, 100, 200] {
        let batch: Vec<_> = (from..from + 40).map(|i| rec(9, i)).collect();
        store.append_history(&batch).unwrap();
    }
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let n = conn
        .execute(
            "UPDATE historychunk SET body = X'FFFFFFFF00', codec = 1 WHERE conv = 9 AND seq = 41",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "the middle chunk");
    let page = store.history_page(9, None, 100).unwrap();
    let seqs: Vec<i64> = page.iter().map(|m| m.seq).collect();
    let want: Vec<i64> = (81..=120).rev().chain((1..=40).rev()).collect();
    assert_eq!(seqs, want);
    assert_eq!(page[40].text, r#"{"msg":"m39"}"#);
}

/// A file of a newer schema (one that a newer server wrote, compressed history and
/// all) is refused, not misread and set back.
#[test]
fn a_file_of_a_newer_schema_is_refused() {
    let (file, url) = file_with("");
    let path = &file.0;
    drop(open_with(&url, 1).unwrap());
    let conn = rusqlite::Connection::open(path).unwrap();
    let ours: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "user_version", ours + 1).unwrap();
    drop(conn);
    let err = open_with(&url, 1).err().expect("refused");
    assert!(err.to_string().contains("newer server"), "{err}");
    let conn = rusqlite::Connection::open(path).unwrap();
    let now: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(now, ours + 1, "the version is left as it was");
}
