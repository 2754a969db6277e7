//! The history writer's tests.

use super::*;

use crate::store::tests::SqliteDb;

/// Makes `w`'s queue full (counts [`QUEUE_BYTES`] more queued) for `d` from
/// now, as a writer behind the chat would; join the handle to see it end.
pub(crate) fn full_for(w: &HistoryWriter, d: Duration) -> thread::JoinHandle<()> {
    let queued = w.tx.as_ref().expect("history on").queued.clone();
    queued.fetch_add(QUEUE_BYTES, Ordering::Relaxed);
    thread::spawn(move || {
        thread::sleep(d);
        queued.fetch_sub(QUEUE_BYTES, Ordering::Relaxed);
    })
}

/// A writer's handle with no writer thread behind it: what is recorded stays
/// queued (the receivers are returned so that the channels stay open).
fn unserved() -> (HistoryWriter, Receiver<HistoryRecord>, Receiver<Wake>) {
    let (records, records_rx) = crossbeam_channel::bounded(QUEUE_CAP);
    let (wakes, wakes_rx) = crossbeam_channel::unbounded();
    let tx = Channels {
        records,
        wakes,
        queued: Arc::new(AtomicUsize::new(0)),
        stalled: AtomicBool::new(false),
        unkept: Arc::default(),
        text_max: usize::MAX,
    };
    (HistoryWriter { tx: Some(tx) }, records_rx, wakes_rx)
}

/// The queued bytes of an [`unserved`] writer.
fn queued(w: &HistoryWriter) -> &AtomicUsize {
    &w.tx.as_ref().expect("history on").queued
}

/// Polls `store` until conversation `conv`'s newest message has seq `seq`, for at
/// most `limit`; false if it never does.
fn written(store: &dyn Store, conv: i64, seq: i64, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        let page = store.history_page(conv, None, 1).expect("page");
        if page.first().is_some_and(|m| m.seq == seq) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The IO loops' fast path stops recording just below each of its two bounds:
/// [`FAST_PATH_LIMIT`] messages and [`FAST_PATH_BYTES_MARGIN`] below
/// [`QUEUE_BYTES`]; with history off it always may.
#[test]
fn the_fast_path_stops_below_both_bounds() {
    let (w, records, _wakes) = unserved();
    let tx = w.tx.as_ref().unwrap();
    // Far from the bounds (a backlog of 1,000 messages, 1 MiB short of the
    // senders' wait) the fast path records; the loops must stop further off.
    for _ in 0..1_000 {
        w.record(1, 1, "");
    }
    assert!(w.has_room(), "1,000 queued");
    queued(&w).store(QUEUE_BYTES - (1 << 20), Ordering::Relaxed);
    assert!(!w.has_room(), "1 MiB short of QUEUE_BYTES");
    queued(&w).store(0, Ordering::Relaxed);
    for _ in 1_000..FAST_PATH_LIMIT - 1 {
        let rec = HistoryRecord {
            conv: 1,
            sender: 1,
            ts_ms: 0,
            text: String::new(),
        };
        tx.records.try_send(rec).expect("room");
    }
    assert!(w.has_room(), "{} queued", FAST_PATH_LIMIT - 1);
    w.record(1, 1, "");
    assert!(!w.has_room(), "{FAST_PATH_LIMIT} queued");
    records.try_iter().for_each(drop);
    assert!(w.has_room());
    let bytes = QUEUE_BYTES - FAST_PATH_BYTES_MARGIN;
    queued(&w).store(bytes - 1, Ordering::Relaxed);
    assert!(w.has_room(), "{} bytes queued", bytes - 1);
    queued(&w).store(bytes, Ordering::Relaxed);
    assert!(!w.has_room(), "{bytes} bytes queued");

    let db = SqliteDb::new();
    let off = HistoryOptions {
        enabled: false,
        retention: None,
    };
    let off = HistoryWriter::start(db.store.clone(), &off);
    assert!(!off.enabled() && off.has_room() && off.flush(Duration::ZERO));
    assert!(HistoryWriter::start(db.store.clone(), &HistoryOptions::default()).enabled());
}

/// A record counts its bytes and queues the message; the one that takes the
/// queued text to [`GATHER_BYTES`] wakes the writer, once.
#[test]
fn the_record_that_reaches_the_gather_bound_wakes_the_writer_once() {
    let (w, records, wakes) = unserved();
    let quarter = "q".repeat(GATHER_BYTES / 4);
    for i in 1..=5 {
        w.record(7, 1, &quarter);
        assert_eq!(queued(&w).load(Ordering::Relaxed), i * quarter.len());
        assert_eq!(records.len(), i);
        let woken = wakes.try_iter().count();
        assert_eq!(woken, usize::from(i == 4), "wakes after record {i}");
    }
    let rec = records.try_recv().expect("queued");
    assert_eq!(
        (rec.conv, rec.sender, rec.text.len()),
        (7, 1, quarter.len())
    );
    assert!(rec.ts_ms > 1_600_000_000_000, "a time in ms: {}", rec.ts_ms);
}

/// A sender waits for room in `w`'s full queue for the whole [`FULL_WAIT`], then
/// gives up.
fn gives_up_after_the_full_wait(w: &HistoryWriter) {
    let t = Instant::now();
    assert!(!w.wait_room(), "no room");
    assert!(t.elapsed() >= FULL_WAIT, "gave up after {:?}", t.elapsed());
}

/// With [`QUEUE_BYTES`] queued (or [`QUEUE_CAP`] messages) a sender waits
/// [`FULL_WAIT`] for room, then gives up; a record never waits (the router makes
/// it under a recipient's lock): the message is not kept, and its bytes are not
/// counted.
#[test]
fn a_full_queue_holds_a_sender_for_the_full_wait_then_drops() {
    let (w, records, _wakes) = unserved();
    assert!(w.wait_room(), "room at once");
    // Full by bytes, then by messages: a waiting sender gives up after the full
    // wait; a record (the router's, under a lock) drops at once.
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    gives_up_after_the_full_wait(&w);
    let t = Instant::now();
    w.record(1, 1, "dropped");
    assert!(t.elapsed() < FULL_WAIT, "a record waited {:?}", t.elapsed());
    assert_eq!(records.len(), 0);
    assert_eq!(queued(&w).load(Ordering::Relaxed), QUEUE_BYTES);

    queued(&w).store(0, Ordering::Relaxed);
    assert!(w.wait_room(), "room again");
    for _ in 0..QUEUE_CAP {
        w.record(1, 1, "");
    }
    gives_up_after_the_full_wait(&w);
    let t = Instant::now();
    w.record(1, 1, "dropped");
    assert!(t.elapsed() < FULL_WAIT, "a record waited {:?}", t.elapsed());
    assert_eq!(records.len(), QUEUE_CAP);
    assert_eq!(queued(&w).load(Ordering::Relaxed), 0);
    // Room again once the writer took one.
    records.try_recv().expect("queued");
    assert!(w.wait_room(), "room after one was taken");
}

/// Once a sender gave up waiting, the next ones do not wait while the queue stays
/// full (each would hold a worker for the full wait: during a database outage the
/// node delivered a few chats a second); the first to find room again ends that,
/// and a queue full again is waited for again. (Seen failing without the `stalled`
/// flag: "sender 2 waited 1.001s".)
#[test]
fn after_one_sender_gave_up_the_others_do_not_wait() {
    let (w, _records, _wakes) = unserved();
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    assert!(!w.wait_room(), "no room");
    for n in 2..=4 {
        let t = Instant::now();
        assert!(!w.wait_room(), "no room");
        assert!(
            t.elapsed() < FULL_WAIT / 2,
            "sender {n} waited {:?}",
            t.elapsed()
        );
    }
    queued(&w).store(0, Ordering::Relaxed);
    assert!(w.wait_room(), "room again");
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    gives_up_after_the_full_wait(&w);
}

/// Once a sender gave up waiting for room (the writer stalled), the IO loops' fast
/// path takes chats on (they are delivered, not kept) instead of handing each to the
/// workers, which a hung database can hold all of; room below the fast path's bound
/// ends the stall, and a full queue is waited for again. (Seen failing without the
/// stall in `has_room`: "the fast path goes on through a stall". On MariaDB stopped
/// with SIGSTOP under chat-bench one-to-one, 8 connections closing meanwhile held
/// the 8 workers and chat went from 420k/s to 0 until the database was resumed.)
#[test]
fn a_stalled_writer_lets_the_fast_path_on() {
    let (w, _records, _wakes) = unserved();
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    assert!(!w.has_room(), "a full queue: the workers wait for room");
    assert!(!w.wait_room(), "no room");
    assert!(w.has_room(), "the fast path goes on through a stall");
    w.record(1, 1, "delivered, not kept");
    assert_eq!(w.unkept(), 1);
    queued(&w).store(0, Ordering::Relaxed);
    assert!(w.has_room(), "room again");
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    assert!(!w.has_room(), "the next stall is waited for again");
    gives_up_after_the_full_wait(&w);
}

/// What a full queue drops is counted (the metrics' `chat_history_unkept`), and
/// said once per stall, not once per message: the first drop logs, the writer's
/// next write logs the recovery and readies the next stall's line.
#[test]
fn a_stuck_writer_counts_what_it_does_not_keep_and_says_so_once() {
    let (w, records, _wakes) = unserved();
    let unkept = w.tx.as_ref().expect("history on").unkept.clone();
    queued(&w).store(QUEUE_BYTES, Ordering::Relaxed);
    for _ in 0..3 {
        w.record(1, 1, "dropped");
    }
    assert_eq!(w.unkept(), 3);
    assert!(unkept.told.load(Ordering::Relaxed), "the stall was told");
    // A writer over the same count writes a batch: the recovery is told.
    let db = SqliteDb::new();
    queued(&w).store(0, Ordering::Relaxed);
    w.record(2, 1, "kept");
    let (wakes, wakes_rx) = crossbeam_channel::unbounded();
    let writer = Writer {
        store: db.store.clone(),
        records,
        wakes: wakes_rx,
        queued: Arc::new(AtomicUsize::new(0)),
        unkept: unkept.clone(),
    };
    let thread = thread::spawn(move || writer.run(None));
    let (done, answered) = crossbeam_channel::bounded(1);
    wakes.send(Wake::Flush(done)).expect("open");
    answered
        .recv_timeout(Duration::from_secs(30))
        .expect("flush answered");
    assert!(
        !unkept.told.load(Ordering::Relaxed),
        "the recovery was told"
    );
    assert_eq!(w.unkept(), 3, "the count stays");
    assert_eq!(db.store.history_page(2, None, 10).expect("page").len(), 1);
    drop((w, wakes));
    thread.join().expect("the writer ends");
}

/// A flush answers once the writer wrote what came before it — false when no
/// writer answers in time; a message is written within the gathering without
/// any flush, and so is the next one (the writer goes on after a batch).
#[test]
fn flushes_and_gatherings_write_everything() {
    let (w, _records, _wakes) = unserved();
    assert!(!w.flush(Duration::from_millis(20)), "nobody wrote it");

    let db = SqliteDb::new();
    let store = db.store.clone();
    let writer = HistoryWriter::start(store.clone(), &HistoryOptions::default());
    writer.record(3, 1, "flushed");
    assert!(writer.flush(Duration::from_secs(30)), "flush not answered");
    let page = store.history_page(3, None, 10).expect("page");
    assert_eq!(page.len(), 1, "written before the flush's answer");
    for seq in 2..=3 {
        writer.record(3, 1, &format!("gathered {seq}"));
        assert!(
            written(&*store, 3, seq, 20 * GATHER),
            "message {seq} not written without a flush"
        );
    }
}

/// The writer gathers: messages recorded one after the other, the first taken
/// by the writer before the others come, are one batch (with SQLite, one row of
/// their conversation), written at the flush that cuts the gathering short.
#[test]
fn messages_recorded_while_the_writer_gathers_are_one_batch() {
    let db = SqliteDb::new();
    let store = db.store.clone();
    let writer = HistoryWriter::start(store.clone(), &HistoryOptions::default());
    let records = &writer.tx.as_ref().expect("history on").records;
    writer.record(4, 1, "first");
    let end = Instant::now() + Duration::from_secs(30);
    while !records.is_empty() {
        assert!(Instant::now() < end, "the writer took no message");
        thread::sleep(Duration::from_millis(1));
    }
    writer.record(4, 1, "second");
    writer.record(4, 1, "third");
    assert!(writer.flush(Duration::from_secs(30)), "flush not answered");
    assert_eq!(store.history_page(4, None, 10).expect("page").len(), 3);
    // One statement of one row: the first row of the conversation holds all three.
    let first_row = store.prune_history(i64::MAX, 1).expect("prune");
    assert_eq!(first_row, 3, "messages in the first batch");
}

/// A clean shutdown's `finish` returns once what was queued is written: the
/// message recorded just before it is in the store at once, not after the
/// writer's [`GATHER`].
#[test]
fn finish_returns_once_the_queue_is_written() {
    let db = SqliteDb::new();
    let store = db.store.clone();
    let writer = HistoryWriter::start(store.clone(), &HistoryOptions::default());
    writer.record(5, 1, "the last words");
    let t = Instant::now();
    writer.finish(Duration::from_secs(30));
    let page = store.history_page(5, None, 10).expect("page");
    assert_eq!(
        page.len(),
        1,
        "not written when finish returned (after {:?})",
        t.elapsed()
    );
}

/// One flush writes everything recorded before it, also more than one batch,
/// and a batch is never more than [`MAX_BATCH`]: here the writer holds the first
/// message and gathers when a batch and nine more are queued behind it, and the
/// flush. (Mutation testing: with the batch's room `MAX_BATCH - batch.len()`
/// turned into a sum, the first batch took more than `MAX_BATCH`, was not taken
/// for a full one, and the flush was answered with 7 messages unwritten; the
/// test missed it whenever the writer saw the flush before the first message.)
#[test]
fn a_flush_writes_more_than_a_batch() {
    let db = SqliteDb::new();
    let (records, records_rx) = crossbeam_channel::bounded(QUEUE_CAP);
    let (wakes, wakes_rx) = crossbeam_channel::unbounded();
    let n = MAX_BATCH + 10;
    let texts: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let send = |text: &String| {
        let rec = HistoryRecord {
            conv: 9,
            sender: 1,
            ts_ms: now_ms(),
            text: text.clone(),
        };
        records.send(rec).expect("room");
    };
    // Fewer than a batch first: the writer takes one and gathers (it waits for a
    // wake, the queued bytes being far below GATHER_BYTES).
    texts[..MAX_BATCH - 1].iter().for_each(send);
    let writer = Writer {
        store: db.store.clone(),
        records: records_rx,
        wakes: wakes_rx,
        queued: Arc::new(AtomicUsize::new(texts.iter().map(String::len).sum())),
        unkept: Arc::default(),
    };
    let thread = thread::spawn(move || writer.run(None));
    let end = Instant::now() + Duration::from_secs(30);
    while records.len() == MAX_BATCH - 1 {
        assert!(Instant::now() < end, "the writer took no message");
        thread::sleep(Duration::from_millis(1));
    }
    texts[MAX_BATCH - 1..].iter().for_each(send);
    let (done, answered) = crossbeam_channel::bounded(1);
    wakes.send(Wake::Flush(done)).expect("open");
    answered
        .recv_timeout(Duration::from_secs(60))
        .expect("flush answered");
    let page = db.store.history_page(9, None, 1).expect("page");
    assert_eq!(page.first().map(|m| m.seq), Some(n as i64));
    drop((records, wakes));
    thread.join().expect("the writer ends");
}

/// One sweep removes every expired message, also when a row holds several (an
/// attacker saw 20,000 of 30,000 expired chunks of 3 left for the next minute: the
/// sweep read 30,000 messages from 10,000 rows as "not a full statement" and stopped).
#[test]
fn a_sweep_removes_all_expired_chunks() {
    let db = SqliteDb::new();
    let convs = PRUNE_CHUNK + 500;
    let batch: Vec<HistoryRecord> = (0..convs)
        .flat_map(|c| {
            (0..3).map(move |i| HistoryRecord {
                conv: c + 1,
                sender: 1,
                ts_ms: 5,
                text: format!("m{i}"),
            })
        })
        .collect();
    db.store.append_history(&batch).expect("append");
    prune(&*db.store, Duration::from_secs(1));
    for conv in [1, convs / 2, convs] {
        let left = db.store.history_page(conv, None, 10).expect("page");
        assert!(
            left.is_empty(),
            "conversation {conv} kept {} expired",
            left.len()
        );
    }
}

/// A message of user 1 in conversation `conv`, sent at `ts_ms`.
fn sent_at(conv: i64, ts_ms: i64) -> HistoryRecord {
    HistoryRecord {
        conv,
        sender: 1,
        ts_ms,
        text: format!("at {ts_ms}"),
    }
}

/// A sweep removes what is older than the retention and keeps the rest: an hour's
/// retention removes a message of two hours ago, not one of half an hour ago.
#[test]
fn a_sweep_cuts_at_the_retention() {
    let db = SqliteDb::new();
    let hour = 3_600_000;
    let now = now_ms();
    db.store
        .append_history(&[sent_at(1, now - 2 * hour), sent_at(2, now - hour / 2)])
        .expect("append");
    prune(&*db.store, Duration::from_secs(3_600));
    let left = |conv| db.store.history_page(conv, None, 10).expect("page").len();
    assert_eq!((left(1), left(2)), (0, 1), "(expired, fresh) left");
}

/// A writer with a retention sweeps when it starts (and every [`PRUNE_EVERY`]
/// after): a message older than the retention is gone soon after the start,
/// a fresh one stays.
#[test]
fn a_writer_with_a_retention_sweeps_at_its_start() {
    let db = SqliteDb::new();
    let hour = 3_600_000;
    let now = now_ms();
    db.store
        .append_history(&[sent_at(1, now - 2 * hour), sent_at(2, now)])
        .expect("append");
    let opts = HistoryOptions {
        enabled: true,
        retention: Some(Duration::from_secs(3_600)),
    };
    let _writer = HistoryWriter::start(db.store.clone(), &opts);
    let left = |conv| db.store.history_page(conv, None, 10).expect("page").len();
    let end = Instant::now() + Duration::from_secs(20);
    while left(1) > 0 {
        assert!(Instant::now() < end, "the expired message is still there");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(left(2), 1, "the fresh message was swept");
}

/// A message longer than the store keeps (MySQL: past `max_allowed_packet`, with
/// a `--frame-limit` set that high) is delivered but not kept, and history goes
/// on: queued, its batch failed at every retry and the writer kept nothing more
/// (seen failing with `record`'s length check removed: "the flush after the long
/// message was not answered" after 20 s, the batch retried every half second).
#[test]
fn mysql_a_message_longer_than_the_store_keeps_does_not_stop_history() {
    let db = crate::store::tests::MysqlDb::new();
    let store = db.store.clone();
    let writer = HistoryWriter::start(store.clone(), &HistoryOptions::default());
    // Longer than a MEDIUMBLOB holds (whatever the server's max_allowed_packet),
    // and than what the store says it keeps.
    let long = crate::store::tests::history::incompressible(17 << 20, 3);
    assert!(long.len() > store.history_text_max());
    writer.record(6, 1, "before");
    writer.record(6, 1, &long);
    writer.record(6, 1, "after");
    assert!(
        writer.flush(Duration::from_secs(20)),
        "the flush after the long message was not answered"
    );
    let page = store.history_page(6, None, 10).expect("page");
    // (The first 20 characters: a failure must not print 17 MiB.)
    let texts: Vec<String> = page
        .iter()
        .map(|m| m.text.chars().take(20).collect())
        .collect();
    assert_eq!(texts, ["after", "before"]);
    assert_eq!(
        queued(&writer).load(Ordering::Relaxed),
        0,
        "bytes queued after the flush"
    );
}

/// A flood of large messages is written once [`GATHER_BYTES`] are queued, not held
/// for the whole [`GATHER`] (the writer's memory would grow with the byte rate:
/// `hardening.rs` `limit_pipelining_without_reading` saw +24 MiB while unread).
#[test]
fn a_gather_ends_once_its_bytes_are_queued() {
    let db = SqliteDb::new();
    let store = db.store.clone();
    let writer = HistoryWriter::start(store.clone(), &HistoryOptions::default());
    let text = "x".repeat(60 * 1024);
    let t0 = Instant::now();
    // The writer takes the first message at once; the rest gather past the bound.
    for _ in 0..GATHER_BYTES / text.len() + 3 {
        writer.record(7, 1, &text);
    }
    let seen = loop {
        if !store.history_page(7, None, 1).expect("page").is_empty() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < 3 * GATHER,
            "nothing written in {:?}",
            3 * GATHER
        );
        thread::sleep(Duration::from_millis(5));
    };
    drop(writer);
    // A gathering held for its whole time makes this at least GATHER (its clock
    // starts after t0); what is under it is the write, so only GATHER itself is a
    // bound that load cannot break (GATHER / 2 failed under a loaded lib run).
    assert!(
        seen < GATHER,
        "{} MiB queued were written only after {seen:?} (the gathering lasts {GATHER:?})",
        GATHER_BYTES >> 20
    );
}
