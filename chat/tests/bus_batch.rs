//! The bus's stream format (issue #18): what one route call carries to one node is
//! one stream entry (field `b1`, frames packed with their recipients and lengths),
//! read back frame by frame in the order routed; a node whose heartbeat says it is
//! of the previous build gets one plain entry per frame, which that build reads;
//! and a dead node's batch entries, and the dseq records of frames it wrote from
//! them, are drained in order.
//!
//! Runs the bus against a private `redis-server` (a real socket), without nodes:
//! the test is both the sending node and the receiving one.

mod cluster_util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat::bus::{Bus, BusConfig, BusHandler, BusMessage, Claim, Drain, Orphan};
use parking_lot::Mutex;

use cluster_util::{poll, redis_con, RedisServer};

const PREFIX: &str = "bb";

fn bus(url: &str, node: &str) -> Arc<Bus> {
    Bus::connect(BusConfig {
        url: url.to_owned(),
        prefix: PREFIX.to_owned(),
        node_id: node.to_owned(),
        node_ttl: Duration::from_secs(30),
        wait: Default::default(),
    })
    .expect("bus")
}

/// A receiving node: keeps what it is handed, in order; numbers the frames of
/// `acking` (as a session that acknowledges what it reads would) and never
/// releases those records.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(Vec<i64>, String)>>,
    acking: Option<i64>,
    next_seq: AtomicU64,
}

impl BusHandler for Receiver {
    fn on_message(&self, msg: BusMessage) -> Result<(), Orphan> {
        if let BusMessage::Deliver { to, frame } = msg {
            self.got.lock().push((to, frame));
        }
        Ok(())
    }
    fn number(&self, to: &[i64], _len: usize) -> Vec<(i64, u64)> {
        match self.acking {
            Some(u) if to.contains(&u) => {
                vec![(u, self.next_seq.fetch_add(1, Ordering::Relaxed) + 1)]
            }
            _ => Vec::new(),
        }
    }
    fn after_delivery(&self, done: Box<dyn FnOnce() + Send>) {
        done();
    }
    fn on_dead_node(&self, _node: &str) {}
    fn on_presence_lost(&self) -> bool {
        true
    }
    fn on_bus_restored(&self) {}
    fn on_heartbeat(&self) {}
}

fn xlen(con: &mut redis::Connection, node: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(format!("{PREFIX}:q:{node}"))
        .query(con)
        .expect("XLEN")
}

/// Frames as the bus carries them: any text, including newlines, commas and
/// digits where a reader of a packed entry might trip.
fn frame(i: usize) -> String {
    format!(r#"{{"msgid":5,"id":9,"msg":"m{i}\n,{i}\n12\n","time":"t"}}"#)
}

#[test]
fn one_route_call_is_one_entry_per_node_read_back_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (bus(&redis.url(), "na"), bus(&redis.url(), "nb"));
    for u in [1, 2, 3] {
        assert_eq!(b.claim(u).unwrap(), Claim::Claimed);
    }
    // 30 frames to one user each, one to two users and one nobody has (99).
    let texts: Vec<String> = (0..32).map(frame).collect();
    let mut to: Vec<Vec<i64>> = (0..30).map(|i| vec![1 + (i % 3) as i64]).collect();
    to.push(vec![1, 99, 2]);
    to.push(vec![3]);
    let frames: Vec<(&[i64], &str)> = to
        .iter()
        .zip(&texts)
        .map(|(t, f)| (t.as_slice(), f.as_str()))
        .collect();
    let missed = a.route_many(&frames).expect("route");
    let mut want_missed = vec![Vec::new(); 32];
    want_missed[30] = vec![99];
    assert_eq!(missed, want_missed);

    let mut con = redis_con(&redis.url()).unwrap();
    assert_eq!(
        xlen(&mut con, "nb"),
        1,
        "32 frames for one node in one route call: one stream entry"
    );

    let rx = Arc::new(Receiver::default());
    let threads = b.spawn(rx.clone()).expect("bus threads");
    let got = poll(Duration::from_secs(10), "node b reads 32 frames", || {
        let got = rx.got.lock();
        (got.len() >= 32).then(|| got.clone())
    });
    let want: Vec<(Vec<i64>, String)> = to
        .iter()
        .map(|t| t.iter().copied().filter(|&u| u != 99).collect())
        .zip(texts.iter().cloned())
        .collect();
    assert_eq!(got, want, "every frame, to its recipients, in order");
    poll(Duration::from_secs(10), "node b trims its stream", || {
        (xlen(&mut con, "nb") == 0).then_some(())
    });
    threads.stop();
}

#[test]
fn a_node_of_the_previous_build_gets_plain_entries() {
    let redis = RedisServer::start();
    let a = bus(&redis.url(), "na");
    let mut con = redis_con(&redis.url()).unwrap();
    // What the previous build's heartbeat and claim leave in Redis.
    redis::cmd("SET")
        .arg(format!("{PREFIX}:node:old"))
        .arg("1")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut con)
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{PREFIX}:online"))
        .arg(5)
        .arg("old")
        .query::<()>(&mut con)
        .unwrap();
    let texts: Vec<String> = (0..3).map(frame).collect();
    let frames: Vec<(&[i64], &str)> = texts.iter().map(|f| (&[5i64][..], f.as_str())).collect();
    a.route_many(&frames).expect("route");
    // One entry per frame, with exactly the fields the previous build reads.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{PREFIX}:q:old"))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let fields: Vec<_> = entries.into_iter().map(|(_, f)| f).collect();
    let want: Vec<_> = texts
        .iter()
        .map(|f| {
            vec![
                ("to".to_owned(), "5".to_owned()),
                ("f".to_owned(), f.clone()),
            ]
        })
        .collect();
    assert_eq!(fields, want);
}

#[test]
fn a_dead_nodes_batches_and_records_are_drained_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (bus(&redis.url(), "na"), bus(&redis.url(), "nb"));
    for u in [1, 2] {
        assert_eq!(b.claim(u).unwrap(), Claim::Claimed);
    }
    let texts: Vec<String> = (0..20).map(frame).collect();
    let to = |i: usize| if i.is_multiple_of(2) { [1i64] } else { [2i64] };
    let route = |range: std::ops::Range<usize>| {
        let tos: Vec<[i64; 1]> = range.clone().map(to).collect();
        let frames: Vec<(&[i64], &str)> = tos
            .iter()
            .zip(&texts[range])
            .map(|(t, f)| (&t[..], f.as_str()))
            .collect();
        assert!(a.route_many(&frames).unwrap().iter().all(Vec::is_empty));
    };
    // Node b reads (and numbers user 1's frames of) the first ten, which it
    // wrote and trims; user 1 never acknowledges them.
    route(0..10);
    let rx = Arc::new(Receiver {
        acking: Some(1),
        ..Receiver::default()
    });
    let threads = b.spawn(rx.clone()).expect("bus threads");
    poll(Duration::from_secs(10), "node b reads 10 frames", || {
        (rx.got.lock().len() >= 10).then_some(())
    });
    threads.stop();
    let mut con = redis_con(&redis.url()).unwrap();
    assert_eq!(xlen(&mut con, "nb"), 0, "node b trimmed what it wrote");
    // Then it dies, with ten more in its stream.
    route(10..20);
    redis::cmd("DEL")
        .arg(format!("{PREFIX}:node:nb"))
        .query::<()>(&mut con)
        .unwrap();
    let stored = Mutex::new(Vec::new());
    let store = |frames: &[Orphan]| {
        stored.lock().extend_from_slice(frames);
        true
    };
    assert_eq!(a.drain_node("nb", &store).unwrap(), Drain::Done);
    // User 1's five unacknowledged frames with the dseqs it was given, in order,
    // then the ten never read.
    let mut want: Vec<Orphan> = (0..5)
        .map(|k| {
            let f = &texts[2 * k];
            let stamped = format!("{},\"dseq\":{}}}", &f[..f.len() - 1], k + 1);
            (vec![1], stamped)
        })
        .collect();
    want.extend((10..20).map(|i| (to(i).to_vec(), texts[i].clone())));
    assert_eq!(*stored.lock(), want);
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{PREFIX}:q:nb"))
        .query(&mut con)
        .unwrap();
    assert!(!exists, "the drained stream is gone");
}
