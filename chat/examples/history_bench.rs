//! history_bench: HISTORY latency through the server with millions of stored messages.
//!
//! Bulk-loads `--rows` messages (default 10 million) into a private database or file —
//! the store's own batched append, as the history writer stores them — spread
//! over `--convs` one-to-one conversations, one of which (between the two users the
//! bench logs in as) gets `--hot` messages. Then starts a real server on it and times
//! `--requests` HISTORY requests over TCP (a random `before` in the hot conversation,
//! and the newest page of random other ones), printing p50/p99/max. The database or file
//! is removed at the end (`--keep` keeps it, and a later run with `--keep` reuses it).
//!
//! ```sh
//! cargo run --release -p chat --example history_bench -- --db sqlite:/tmp/hb.db
//! cargo run --release -p chat --example history_bench -- \
//!     --db mysql://root@127.0.0.1:3306/chat_hbench
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use serde_json::{json, Value};

struct Args {
    db: String,
    rows: i64,
    convs: i64,
    hot: i64,
    requests: usize,
    limit: i64,
    keep: bool,
}

fn args() -> Args {
    let mut a = Args {
        db: "sqlite:/tmp/history_bench.db".into(),
        rows: 10_000_000,
        convs: 1000,
        hot: 200_000,
        requests: 2000,
        limit: 20,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("a value after each option");
        match k.as_str() {
            "--db" => a.db = v(),
            "--rows" => a.rows = v().parse().expect("--rows N"),
            "--convs" => a.convs = v().parse().expect("--convs N"),
            "--hot" => a.hot = v().parse().expect("--hot N"),
            "--requests" => a.requests = v().parse().expect("--requests N"),
            "--limit" => a.limit = v().parse().expect("--limit N"),
            "--keep" => a.keep = true,
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// A cheap xorshift: reproducible, and no dependency for a bench.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n.max(1) as u64) as i64
    }
}

/// The conversation key of users `a` and `b` (as `store::social::conv_key`).
fn pair(a: i64, b: i64) -> i64 {
    (a.min(b) << 32) | a.max(b)
}

/// A stored chat frame of about 120 bytes.
fn frame(from: i64, to: i64, i: i64) -> String {
    json!({"id": from, "msg": format!("message number {i} with some ordinary text"),
           "msgid": 6, "name": format!("user{from}"), "time": "2026-11-28 10:00:00", "toid": to})
    .to_string()
}

/// Rows of the bulk load, conversation by conversation: `(conv, seq, sender, ts, text)`.
/// The hot pair is users 1 and 2; the others pair user 1 with users 3, 4, ….
fn rows(a: &Args) -> impl Iterator<Item = (i64, i64, i64, i64, String)> + '_ {
    let per = (a.rows - a.hot).max(0) / a.convs.max(1);
    let base_ts = 1_700_000_000_000i64;
    let hot = (1..=a.hot).map(move |s| {
        let from = 1 + (s % 2);
        (pair(1, 2), s, from, base_ts + s, frame(from, 3 - from, s))
    });
    let cold = (0..a.convs).flat_map(move |c| {
        let (u, v) = (1, 3 + c);
        (1..=per).map(move |s| {
            let (from, to) = if s % 2 == 0 { (u, v) } else { (v, u) };
            (pair(u, v), s, from, base_ts + s, frame(from, to, s))
        })
    });
    hot.chain(cold)
}

/// Both stores keep history in chunks (a conversation's share of a writer batch per
/// row): load through the store's own append, 20,000 messages per transaction, as
/// the history writer would at 20,000 msgs/s (each conversation's rows come in seq
/// order, so each gets the seqs of `rows`).
fn load(store: &dyn chat::store::Store, a: &Args) -> Result<(), chat::store::StoreError> {
    use chat::store::social::HistoryRecord;
    let mut batch = Vec::with_capacity(20_000);
    for (n, (conv, _seq, sender, ts_ms, text)) in rows(a).enumerate() {
        batch.push(HistoryRecord {
            conv,
            sender,
            ts_ms,
            text,
        });
        if batch.len() == 20_000 {
            store.append_history(&batch)?;
            batch.clear();
        }
        if n % 1_000_000 == 0 {
            eprintln!("  {n} rows");
        }
    }
    store.append_history(&batch)
}

/// Sends one frame and reads the next, with a timeout.
fn round_trip(s: &mut TcpStream, buf: &mut Vec<u8>, v: &Value) -> Value {
    let mut out = serde_json::to_vec(v).unwrap();
    out.push(0);
    s.write_all(&out).unwrap();
    loop {
        if let Some(p) = buf.iter().position(|&b| b == 0) {
            let frame: Vec<u8> = buf.drain(..=p).collect();
            return serde_json::from_slice(&frame[..p]).unwrap();
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).expect("a reply within the timeout");
        assert!(n > 0, "server closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() {
    let a = args();
    let _ = chat::password::set_cost(1024, 1);
    let store = chat::store::open_with(&a.db, 4).expect("open the store");
    let fresh = store.user(1).unwrap().is_none();
    if fresh {
        let hash = chat::password::hash("pw");
        for i in 0..a.convs + 2 {
            store.register(&format!("bench-{i}"), &hash).unwrap();
        }
        let t = Instant::now();
        eprintln!("bulk-loading {} rows into {}", a.rows, a.db);
        load(&*store, &a).expect("load");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "loaded {} rows in {secs:.1} s ({:.0} rows/s)",
            a.rows,
            a.rows as f64 / secs
        );
    }
    drop(store);

    // No request rate limit: the bench sends HISTORY back to back, faster than a
    // person (the default 1000/s would refuse some with 109 on a quiet machine).
    let mut opts = ServerOptions::default();
    opts.limits.rate = 0;
    let server = ServerThread::start("127.0.0.1:0".parse().unwrap(), &a.db, opts).expect("server");
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let ack = round_trip(
        &mut s,
        &mut buf,
        &json!({"ext": 1, "id": 1, "msgid": 1, "password": "pw"}),
    );
    assert_eq!(ack["errno"], 0, "{ack}");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per = (a.rows - a.hot).max(0) / a.convs.max(1);
    let mut lat_us: Vec<u64> = Vec::with_capacity(a.requests);
    for i in 0..a.requests {
        // A quarter: a random point of the hot conversation; a quarter: its newest
        // page; half: a random point of a random other one (all over the table).
        let req = match i % 4 {
            0 => json!({"id": 1, "msgid": 23, "peer": 2,
                        "before": 1 + rng.below(a.hot), "limit": a.limit}),
            1 => json!({"id": 1, "msgid": 23, "peer": 2, "limit": a.limit}),
            _ => json!({"id": 1, "msgid": 23, "peer": 3 + rng.below(a.convs),
                        "before": 1 + rng.below(per.max(1)), "limit": a.limit}),
        };
        let t = Instant::now();
        let v = round_trip(&mut s, &mut buf, &req);
        lat_us.push(t.elapsed().as_micros() as u64);
        assert_eq!(v["msgid"], 24, "{v}");
    }
    lat_us.sort_unstable();
    let q = |p: f64| lat_us[((lat_us.len() as f64 * p) as usize).min(lat_us.len() - 1)];
    println!(
        "HISTORY limit {} over {} stored rows: {} requests, p50 {} us, p99 {} us, max {} us",
        a.limit,
        a.rows,
        lat_us.len(),
        q(0.50),
        q(0.99),
        lat_us[lat_us.len() - 1]
    );
    drop(s);
    server.stop();
    if !a.keep {
        cleanup(&a.db);
    }
}

fn cleanup(db: &str) {
    if let Some(path) = db.strip_prefix("sqlite:") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    } else if let Some((server, name)) = db.rsplit_once('/') {
        use mysql::prelude::Queryable;
        if let Ok(mut c) = mysql::Conn::new(mysql::Opts::from_url(server).expect("a URL")) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"));
        }
    }
}
