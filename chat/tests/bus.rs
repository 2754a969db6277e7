//! The Redis bus on its own (no chat server): a node's stream reader, the frames it
//! holds back while they can be neither delivered nor stored, its dseq records, the
//! drain of a dead node's stream, and the reader's reconnect. Each test drives
//! `chat::bus::Bus` with a recording handler against a private `redis-server`
//! (so it may kill every client connection, refuse commands through its ACL, or
//! get a replica), in a few seconds: the fast selection the bus's mutation pass
//! runs (docs/mutants.md).
//!
//! `a_stream_recreated_behind_the_reader_is_read_from_its_start` writes one stream
//! entry by hand (fields `to` and `f`, the entry format of `bus/stream.rs`).

mod cluster_util;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::bus::{
    new_node_id, Bus, BusConfig, BusHandler, BusMessage, Claim, Counted, Drain, NodeInfo, Orphan,
    ThrottleRule, WaitReplicas,
};
use cluster_util::sentinel::SentinelRedis;
use cluster_util::{poll, redis_con, RedisServer};

const LIMIT: Duration = Duration::from_secs(20);

/// A bus handler that records what it is given. Deliveries to `failing` users fail
/// (as when the store is down); `acking` users get a dseq per frame; the reader's
/// batches count as written only while `writes_done` is set.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<(i64, String)>>,
    tries: Mutex<Vec<Instant>>,
    failing: Mutex<HashSet<i64>>,
    acking: Mutex<HashSet<i64>>,
    seqs: Mutex<HashMap<i64, u64>>,
    release: Mutex<Vec<(i64, u64)>>,
    flushes: Mutex<Vec<Vec<i64>>>,
    others: Mutex<Vec<BusMessage>>,
    /// The keeper's calls: "lost", "restored", "beat", "dead:<node>".
    calls: Mutex<Vec<String>>,
    /// The reader's "written" callbacks, kept for the test to call.
    deferred: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    defer: AtomicBool,
    writes_done: AtomicBool,
    /// How long a drain of a dead node takes (ms), and the drains running now
    /// and at most at once.
    drain_ms: AtomicU64,
    draining: AtomicUsize,
    most_draining: AtomicUsize,
}

impl Recorder {
    fn got_by(&self, user: i64) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(u, _)| *u == user)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl Recorder {
    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == what)
            .count()
    }
}

impl BusHandler for Recorder {
    fn on_message(&self, msg: BusMessage) -> Result<(), Orphan> {
        match msg {
            BusMessage::Deliver { to, frame } => {
                let failing = self.failing.lock().unwrap();
                let (bad, good): (Vec<i64>, Vec<i64>) =
                    to.into_iter().partition(|u| failing.contains(u));
                let mut got = self.got.lock().unwrap();
                got.extend(good.into_iter().map(|u| (u, frame.clone())));
                if bad.is_empty() {
                    return Ok(());
                }
                self.tries.lock().unwrap().push(Instant::now());
                Err((bad, frame))
            }
            BusMessage::Flush { to } => {
                self.flushes.lock().unwrap().push(to);
                Ok(())
            }
            other => {
                self.others.lock().unwrap().push(other);
                Ok(())
            }
        }
    }
    fn number(&self, to: &[i64], _len: usize) -> Vec<(i64, u64)> {
        let acking = self.acking.lock().unwrap();
        let mut seqs = self.seqs.lock().unwrap();
        to.iter()
            .filter(|u| acking.contains(u))
            .map(|&u| {
                let n = seqs.entry(u).or_insert(0);
                *n += 1;
                (u, *n)
            })
            .collect()
    }
    fn released(&self) -> Vec<(i64, u64)> {
        std::mem::take(&mut *self.release.lock().unwrap())
    }
    fn after_delivery(&self, done: Box<dyn FnOnce() + Send>) {
        if self.defer.load(Ordering::SeqCst) {
            self.deferred.lock().unwrap().push(done);
        } else if self.writes_done.load(Ordering::SeqCst) {
            done();
        }
    }
    fn on_dead_node(&self, node: &str) {
        self.call(format!("dead:{node}"));
        let now = self.draining.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_draining.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.drain_ms.load(Ordering::SeqCst)));
        self.draining.fetch_sub(1, Ordering::SeqCst);
    }
    fn on_presence_lost(&self) -> bool {
        self.call("lost".into());
        true
    }
    fn on_bus_restored(&self) {
        self.call("restored".into());
    }
    fn on_heartbeat(&self) {
        self.call("beat".into());
    }
}

fn node(url: &str, id: &str) -> Arc<Bus> {
    node_with_ttl(url, id, Duration::from_secs(60))
}

fn node_with_ttl(url: &str, id: &str, node_ttl: Duration) -> Arc<Bus> {
    node_with(url, id, node_ttl, WaitReplicas::default())
}

fn node_with(url: &str, id: &str, node_ttl: Duration, wait: WaitReplicas) -> Arc<Bus> {
    Bus::connect(BusConfig {
        url: url.into(),
        prefix: "bt".into(),
        node_id: id.into(),
        node_ttl,
        wait,
    })
    .expect("bus")
}

fn frame(text: &str) -> String {
    format!(r#"{{"msgid":5,"msg":"{text}"}}"#)
}

fn stamped(text: &str, n: u64) -> String {
    String::from_utf8(chat::acks::with_seq(frame(text).as_bytes(), n)).unwrap()
}

fn xlen(r: &mut redis::Connection, node: &str) -> usize {
    redis::cmd("XLEN")
        .arg(format!("bt:q:{node}"))
        .query(r)
        .unwrap()
}

fn hlen(r: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("HLEN").arg(key).query(r).unwrap()
}

/// Routes until Redis takes it (after a kill of every client, the first calls fail).
fn route(b: &Bus, to: &[i64], text: &str) -> Vec<i64> {
    poll(LIMIT, "a route call succeeds", || {
        b.route(to, &frame(text)).ok()
    })
}

fn started(url: &str, h: &Arc<Recorder>) -> (Arc<Bus>, chat::bus::BusThreads) {
    let a = node(url, "A");
    let threads = a.spawn(h.clone()).expect("bus threads");
    for u in [1, 2] {
        assert_eq!(a.claim(u).unwrap(), Claim::Claimed);
    }
    (a, threads)
}

#[test]
fn routed_frames_arrive_in_order_and_are_trimmed_once_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    h.writes_done.store(true, Ordering::SeqCst);
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    let mut want = Vec::new();
    for i in 0..40 {
        let text = format!("f{i}");
        assert_eq!(
            route(&b, &[1, 3, 2], &text),
            vec![3],
            "user 3 is on no node"
        );
        want.push(frame(&text));
    }
    let (m0, m1) = (frame("m0"), frame("m1"));
    let missed = b
        .route_many(&[(&[2, 1][..], &m0), (&[4][..], &m1)])
        .unwrap();
    assert_eq!(missed, vec![vec![], vec![4]]);
    want.push(m0);
    assert_eq!(
        b.locate(&[1, 2, 3]).unwrap(),
        vec![Some("A".into()), Some("A".into()), None]
    );
    poll(LIMIT, "all 82 frames delivered", || {
        (h.got.lock().unwrap().len() >= 82).then_some(())
    });
    assert_eq!(h.got_by(1), want);
    assert_eq!(h.got_by(2), want);
    let mut r = redis_con(&url).unwrap();
    // Written, so trimmed: the last entry too (the trim is inclusive).
    poll(LIMIT, "the stream trimmed to nothing", || {
        (xlen(&mut r, "A") == 0).then_some(())
    });
    threads.stop();
}

#[test]
fn a_frame_that_cannot_be_stored_is_held_retried_and_keeps_its_place() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    h.writes_done.store(true, Ordering::SeqCst);
    h.failing.lock().unwrap().insert(1);
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    route(&b, &[2], "g0");
    for i in 0..5 {
        route(&b, &[1, 2], &format!("f{i}"));
    }
    let want: Vec<String> = (0..5).map(|i| frame(&format!("f{i}"))).collect();
    poll(LIMIT, "user 2 gets its 6 frames", || {
        (h.got_by(2).len() == 6).then_some(())
    });
    // The reader goes on reading while it holds user 1's frames.
    route(&b, &[2], "g");
    poll(
        LIMIT,
        "user 2 gets a frame routed after the held ones",
        || (h.got_by(2).len() == 7).then_some(()),
    );
    poll(LIMIT, "four retries of the held frame", || {
        (h.tries.lock().unwrap().len() >= 5).then_some(())
    });
    let mut r = redis_con(&url).unwrap();
    // Trimmed up to the oldest held frame, not past it: if the node died now, its
    // drain would store them (g0, before it, is gone).
    poll(LIMIT, "the stream trimmed up to the held frames", || {
        (xlen(&mut r, "A") == 6).then_some(())
    });
    {
        let tries = h.tries.lock().unwrap();
        // The first retry may follow the first try at once; then one per 500 ms.
        for w in tries[1..].windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= Duration::from_millis(450), "retried after {gap:?}");
        }
    }
    assert!(h.got_by(1).is_empty());
    h.failing.lock().unwrap().clear();
    poll(LIMIT, "user 1 gets the held frames", || {
        (h.got_by(1).len() == 5).then_some(())
    });
    assert_eq!(h.got_by(1), want, "held frames in stream order");
    poll(LIMIT, "the stream trimmed once nothing is held", || {
        (xlen(&mut r, "A") == 0).then_some(())
    });
    threads.stop();
}

#[test]
fn a_dead_nodes_stream_and_records_are_stored_once_in_order() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    h.writes_done.store(true, Ordering::SeqCst);
    h.acking.lock().unwrap().insert(1);
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    let mut r = redis_con(&url).unwrap();
    route(&b, &[1, 2], "f1");
    route(&b, &[1, 2], "f2");
    poll(LIMIT, "f1 and f2 written and trimmed", || {
        (h.got.lock().unwrap().len() == 4 && xlen(&mut r, "A") == 0).then_some(())
    });
    assert_eq!(h.got_by(1), vec![stamped("f1", 1), stamped("f2", 2)]);
    assert_eq!(h.got_by(2), vec![frame("f1"), frame("f2")]);
    assert_eq!(hlen(&mut r, "bt:qa:A"), 2, "user 1's two frames recorded");
    // User 1 acknowledged f1: its record goes.
    h.release.lock().unwrap().push((1, 1));
    poll(LIMIT, "the acknowledged record deleted", || {
        (hlen(&mut r, "bt:qa:A") == 1).then_some(())
    });
    // From now on nothing counts as written: the stream keeps it.
    h.writes_done.store(false, Ordering::SeqCst);
    route(&b, &[1, 2], "f3");
    b.publish_flush("A", &[1]).unwrap();
    route(&b, &[1, 2], "f4");
    poll(LIMIT, "f3, the flush notice and f4 read", || {
        (h.got.lock().unwrap().len() == 8 && !h.flushes.lock().unwrap().is_empty()).then_some(())
    });
    assert_eq!(*h.flushes.lock().unwrap(), vec![vec![1]]);
    threads.stop();
    assert_eq!(xlen(&mut r, "A"), 3);
    assert_eq!(hlen(&mut r, "bt:qa:A"), 3);

    let stored = Mutex::new(Vec::<Orphan>::new());
    let keep = |frames: &[Orphan]| {
        stored.lock().unwrap().extend_from_slice(frames);
        true
    };
    // Alive (its key is there): not drained, nothing stored.
    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Alive);
    assert!(
        stored.lock().unwrap().is_empty(),
        "a live node's records stored"
    );
    let _: () = redis::cmd("DEL").arg("bt:node:A").query(&mut r).unwrap();
    // Another drain holds the lock.
    let _: () = redis::cmd("SET")
        .arg("bt:drain:A")
        .arg("other")
        .query(&mut r)
        .unwrap();
    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Busy);
    let _: () = redis::cmd("DEL").arg("bt:drain:A").query(&mut r).unwrap();
    assert!(stored.lock().unwrap().is_empty());
    // The store refuses: nothing is lost.
    assert!(b.drain_node("A", &|_: &[Orphan]| false).is_err());
    assert_eq!(xlen(&mut r, "A"), 3);
    assert_eq!(hlen(&mut r, "bt:qa:A"), 3);

    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Done);
    let want: Vec<Orphan> = vec![
        (vec![1], stamped("f2", 2)), // written (trimmed), not acknowledged
        (vec![1], stamped("f3", 3)),
        (vec![2], frame("f3")),
        (vec![1], stamped("f4", 4)),
        (vec![2], frame("f4")),
    ];
    assert_eq!(*stored.lock().unwrap(), want);
    assert_eq!(xlen(&mut r, "A"), 0);
    assert_eq!(hlen(&mut r, "bt:qa:A"), 0);
    let online: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("bt:online")
        .query(&mut r)
        .unwrap();
    assert!(
        online.is_empty(),
        "the dead node's users still online: {online:?}"
    );
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bt:nodes")
        .query(&mut r)
        .unwrap();
    assert_eq!(nodes, vec!["B".to_string()]);
    // Once forgotten, a drain stores nothing again.
    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Done);
    assert_eq!(stored.lock().unwrap().len(), 5);
}

#[test]
fn a_long_stream_is_drained_in_steps_each_frame_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    let (_a, threads) = started(&url, &h);
    threads.stop();
    let b = node(&url, "B");
    let texts: Vec<String> = (0..1100).map(|i| frame(&format!("f{i}"))).collect();
    // One route call per frame: a call's frames for a node are one stream entry
    // (protocol.md §9), and the drain's steps count entries.
    for t in &texts {
        let batch: [(&[i64], &str); 1] = [(&[1i64][..], t.as_str())];
        assert!(b.route_many(&batch).unwrap().iter().all(Vec::is_empty));
    }
    let mut r = redis_con(&url).unwrap();
    let _: () = redis::cmd("DEL").arg("bt:node:A").query(&mut r).unwrap();
    let stored = Mutex::new(Vec::<Orphan>::new());
    let steps = Mutex::new(0);
    let keep = |frames: &[Orphan]| {
        *steps.lock().unwrap() += 1;
        stored.lock().unwrap().extend_from_slice(frames);
        true
    };
    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Done);
    let got: Vec<String> = stored
        .lock()
        .unwrap()
        .iter()
        .map(|(to, f)| {
            assert_eq!(to, &vec![1]);
            f.clone()
        })
        .collect();
    assert_eq!(got, texts);
    assert_eq!(*steps.lock().unwrap(), 3, "500 entries a step");
    assert_eq!(xlen(&mut r, "A"), 0);
}

/// Kills every client connection of the private Redis but the caller's (the
/// subscriber's too).
fn kill_clients(r: &mut redis::Connection) {
    for kind in ["normal", "pubsub"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query(r)
            .unwrap();
    }
}

/// Waits until the reader, reconnected, blocks in XREAD again (it checked its
/// place in the stream before that).
fn reading_again(r: &mut redis::Connection) {
    poll(LIMIT, "the reader reconnected", || {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(r).unwrap();
        list.contains("cmd=xread").then_some(())
    });
}

#[test]
fn a_reconnected_reader_reads_on_without_repeating() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    for t in ["f0", "f1", "f2"] {
        route(&b, &[1], t);
    }
    poll(LIMIT, "3 frames read", || {
        (h.got_by(1).len() == 3).then_some(())
    });
    let mut r = redis_con(&url).unwrap();
    // Nothing was written (trimmed): after the reconnect the reader goes on
    // from where it was, not from the stream's start.
    kill_clients(&mut r);
    reading_again(&mut r);
    route(&b, &[1], "f3");
    poll(LIMIT, "f3 read", || (h.got_by(1).len() >= 4).then_some(()));
    route(&b, &[1], "f4");
    poll(LIMIT, "f4 read", || (h.got_by(1).len() >= 5).then_some(()));
    let want: Vec<String> = ["f0", "f1", "f2", "f3", "f4"].map(frame).to_vec();
    assert_eq!(h.got_by(1), want);
    threads.stop();
}

#[test]
fn a_stream_recreated_behind_the_reader_is_read_from_its_start() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    route(&b, &[1], "f0");
    poll(LIMIT, "f0 read", || (h.got_by(1).len() == 1).then_some(()));
    let mut r = redis_con(&url).unwrap();
    // The stream recreated with ids below what the reader read (as after a drain
    // of this node while it looked dead, or a Redis that lost it).
    let _: () = redis::cmd("DEL").arg("bt:q:A").query(&mut r).unwrap();
    let _: String = redis::cmd("XADD")
        .arg("bt:q:A")
        .arg("1-1")
        .arg("to")
        .arg("1")
        .arg("f")
        .arg(frame("early"))
        .query(&mut r)
        .unwrap();
    kill_clients(&mut r);
    poll(LIMIT, "the recreated stream's entry read", || {
        (h.got_by(1).len() == 2).then_some(())
    });
    assert_eq!(h.got_by(1), vec![frame("f0"), frame("early")]);
    // A stream gone altogether is read from its start too.
    let _: () = redis::cmd("DEL").arg("bt:q:A").query(&mut r).unwrap();
    kill_clients(&mut r);
    route(&b, &[1], "f1");
    poll(LIMIT, "f1 read", || (h.got_by(1).len() == 3).then_some(()));
    assert_eq!(h.got_by(1)[2], frame("f1"));
    threads.stop();
}

#[test]
fn presence_is_claimed_taken_over_released_and_swept() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node(&url, "A");
    let b = node(&url, "B");
    let c = node(&url, "C");
    assert_eq!(a.node_id(), "A");
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    assert_eq!(b.claim(1).unwrap(), Claim::Taken("A".into()));
    assert_eq!(b.take_over(1).unwrap(), Claim::Replaced("A".into()));
    assert_eq!(a.claim(1).unwrap(), Claim::Taken("B".into()));
    a.release(1).unwrap(); // not A's: stays B's
    assert_eq!(c.locate(&[1]).unwrap(), vec![Some("B".into())]);
    b.release(1).unwrap();
    assert_eq!(c.locate(&[1]).unwrap(), vec![None]);
    assert!(c.locate(&[]).unwrap().is_empty());
    assert!(c.route(&[], &frame("x")).unwrap().is_empty());
    assert!(c.route_many(&[]).unwrap().is_empty());

    // A node whose key was lost says so at its next heartbeat, once.
    let mut r = redis_con(&url).unwrap();
    assert!(a.heartbeat().unwrap());
    let _: () = redis::cmd("DEL").arg("bt:node:A").query(&mut r).unwrap();
    assert!(!a.heartbeat().unwrap());
    assert!(a.heartbeat().unwrap());

    // A dead node with frames in its stream: its users are orphaned until a drain.
    assert_eq!(a.claim(2).unwrap(), Claim::Claimed);
    assert!(b.route(&[2], &frame("f")).unwrap().is_empty());
    let _: () = redis::cmd("DEL").arg("bt:node:A").query(&mut r).unwrap();
    assert_eq!(b.claim(2).unwrap(), Claim::Orphaned("A".into()));
    // C is dead too, with nothing to drain: swept at once; A waits for its drain.
    assert_eq!(c.claim(3).unwrap(), Claim::Claimed);
    let _: () = redis::cmd("DEL").arg("bt:node:C").query(&mut r).unwrap();
    assert_eq!(b.sweep().unwrap(), (1, vec!["A".to_string()]));
    assert_eq!(b.claim(3).unwrap(), Claim::Claimed);
    let stored = Mutex::new(Vec::<Orphan>::new());
    let keep = |frames: &[Orphan]| {
        stored.lock().unwrap().extend_from_slice(frames);
        true
    };
    assert_eq!(b.drain_node("A", &keep).unwrap(), Drain::Done);
    assert_eq!(*stored.lock().unwrap(), vec![(vec![2], frame("f"))]);
    assert_eq!(b.claim(2).unwrap(), Claim::Claimed);
    assert_eq!(b.sweep().unwrap(), (0, vec![]));

    // A clean leave drops only the leaving node's users.
    let d = node(&url, "D");
    assert_eq!(d.claim(4).unwrap(), Claim::Claimed);
    b.leave().unwrap();
    assert_eq!(
        d.locate(&[2, 3, 4]).unwrap(),
        vec![None, None, Some("D".into())]
    );
    let mut nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bt:nodes")
        .query(&mut r)
        .unwrap();
    nodes.sort();
    assert_eq!(nodes, vec!["D".to_string()]);
    // A node that comes back under its old id forgets what it held.
    assert_eq!(node(&url, "D").locate(&[4]).unwrap(), vec![None]);
}

#[test]
fn calls_fail_while_redis_is_down_and_work_again_after() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = node(&url, "A");
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    redis.kill();
    // The breaker is open: for half a second after a failure calls fail fast,
    // without trying Redis (checked only for a call that began within 400 ms
    // of the failure, as a test held up on a loaded machine may not).
    let fails_fast = |failed: Instant, what: &str| {
        let early = failed.elapsed() < Duration::from_millis(400);
        let e = a.route(&[1], &frame("x")).unwrap_err();
        if early {
            assert_eq!(
                e.to_string(),
                "redis: unavailable (recent failure)",
                "{what}"
            );
        }
    };
    assert!(a.claim(1).is_err());
    fails_fast(Instant::now(), "after a failed call");
    // The readiness check's ping says so too.
    assert!(a.ping().is_err(), "a ping answered by a dead Redis");
    // Then one call probes Redis, finds it still down, and the breaker opens
    // again (for half a second, not for good).
    std::thread::sleep(Duration::from_millis(600));
    assert!(a.claim(1).is_err());
    fails_fast(Instant::now(), "after a failed probe");
    redis.restart();
    // The breaker lets a probe through half a second after the failure.
    poll(Duration::from_secs(5), "the bus works again", || {
        a.heartbeat().ok()
    });
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
}

#[test]
fn an_error_reply_leaves_the_breaker_closed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut r = redis_con(&url).unwrap();
    let a = node(&url, "A");
    acl(&mut r, &["-evalsha", "-eval"]);
    assert!(a.claim(1).is_err(), "Redis refuses scripts");
    acl(&mut r, &["+evalsha", "+eval"]);
    // Redis answered: its connection and the server are fine, the next call
    // goes through.
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
}

#[test]
fn one_caller_probes_a_frozen_redis_while_the_others_fail_fast() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node(&url, "A");
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    // Frozen: connects still succeed (the kernel accepts), answers never come.
    let pid = redis.pid().expect("redis runs");
    cluster_util::signal(pid, "-STOP");
    assert!(a.heartbeat().is_err(), "a frozen Redis answered");
    // The breaker's half a second over: the next caller probes (and waits
    // IO_TIMEOUT, 2 s, for the frozen Redis); the callers that come meanwhile
    // must fail fast, not each wait on Redis too.
    std::thread::sleep(Duration::from_millis(600));
    const CALLERS: usize = 5;
    let start = std::sync::Barrier::new(CALLERS);
    let calls: Vec<(Instant, Duration, String)> = std::thread::scope(|s| {
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    let e = a.heartbeat().unwrap_err();
                    (t, t.elapsed(), e.to_string())
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    cluster_util::signal(pid, "-CONT");
    let fast = "redis: unavailable (recent failure)";
    let probes: Vec<&(Instant, Duration, String)> =
        calls.iter().filter(|(_, _, e)| e != fast).collect();
    assert!(!probes.is_empty(), "nobody probed: {calls:?}");
    // The probe holds the breaker half-open for BREAKER (500 ms): a caller that
    // began later than that after the first may probe too (a loaded machine).
    let first = calls.iter().map(|(t, _, _)| *t).min().unwrap();
    let late = calls
        .iter()
        .filter(|(t, _, _)| *t - first >= Duration::from_millis(400))
        .count();
    assert!(
        probes.len() <= 1 + late,
        "{} of {CALLERS} callers probed the frozen Redis: {calls:?}",
        probes.len()
    );
}

#[test]
fn login_failures_lock_the_account_until_a_success() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), "A");
    let rule = ThrottleRule {
        free_attempts: 2,
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
        forget_after: Duration::from_secs(60),
    };
    assert_eq!(a.login_attempt(7, &rule).unwrap(), Counted::Yes(None));
    assert_eq!(
        a.login_attempt(7, &rule).unwrap(),
        Counted::Yes(Some(Duration::from_secs(10)))
    );
    match a.login_attempt(7, &rule).unwrap() {
        Counted::Locked(left) => assert!(left > Duration::from_secs(5), "{left:?}"),
        other => panic!("not locked: {other:?}"),
    }
    // Another account is not affected.
    assert_eq!(a.login_attempt(8, &rule).unwrap(), Counted::Yes(None));
    a.login_succeeded(7).unwrap();
    assert_eq!(a.login_attempt(7, &rule).unwrap(), Counted::Yes(None));
}

#[test]
fn the_admin_view_of_nodes_users_and_health() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    h.writes_done.store(true, Ordering::SeqCst);
    let (a, threads) = started(&url, &h);
    let b = node(&url, "B");
    let c = node(&url, "C");
    assert_eq!(c.claim(5).unwrap(), Claim::Claimed);
    // C dies with a frame in its stream: A's keeper cannot sweep it away (the
    // recorder's drain does nothing), so it stays listed, dead.
    assert!(c.route(&[5], &frame("c")).unwrap().is_empty());
    let mut r = redis_con(&url).unwrap();
    let _: () = redis::cmd("DEL").arg("bt:node:C").query(&mut r).unwrap();
    // An entry written long ago (by hand: ids are milliseconds): the lag shows it.
    let _: String = redis::cmd("XADD")
        .arg("bt:q:A")
        .arg("1000-1")
        .arg("to")
        .arg("1")
        .arg("f")
        .arg(frame("late"))
        .query(&mut r)
        .unwrap();
    poll(LIMIT, "the old entry read", || {
        (h.got_by(1).len() == 1).then_some(())
    });
    assert!(
        a.stream_lag() > Duration::from_secs(86_400),
        "{:?}",
        a.stream_lag()
    );
    let info = |id: &str, alive, users| NodeInfo {
        id: id.into(),
        alive,
        users,
    };
    assert_eq!(
        b.nodes().unwrap(),
        vec![info("A", true, 2), info("B", true, 0), info("C", false, 1)]
    );
    assert_eq!(
        b.online_users().unwrap(),
        vec![(1, "A".to_string()), (2, "A".to_string())]
    );
    assert!(b.ping().is_ok());

    assert_eq!(b.route_counts(), (0, 0));
    route(&b, &[1], "f");
    let (m0, m1) = (frame("m0"), frame("m1"));
    b.route_many(&[(&[1][..], &m0), (&[2][..], &m1)]).unwrap();
    assert_eq!(b.route_counts(), (2, 3));

    poll(LIMIT, "3 frames read", || {
        (h.got_by(1).len() == 3).then_some(())
    });
    assert!(
        a.stream_lag() < Duration::from_secs(10),
        "{:?}",
        a.stream_lag()
    );

    // The heartbeat: fresh within half the node's TTL, stale before the TTL is
    // over (the node would look dead to the others then), and its round trip.
    assert!(a.heartbeat_fresh());
    assert!(a.heartbeat_age().unwrap() < Duration::from_secs(30));
    assert!(a.redis_rtt() > Duration::ZERO, "no round trip recorded");
    let ttl = Duration::from_secs(1);
    let short = node_with_ttl(&url, "S", ttl);
    assert!(short.heartbeat_age().is_some());
    poll(LIMIT, "the node's one heartbeat as old as its TTL", || {
        (short.heartbeat_age().unwrap() >= ttl).then_some(())
    });
    assert!(
        !short.heartbeat_fresh(),
        "fresh at {:?}, with a TTL of {ttl:?}",
        short.heartbeat_age()
    );

    // Broadcasts reach every node's subscriber (once it subscribed).
    subscribed(&b, &h);
    b.publish_kick("A", 1).unwrap();
    b.publish_replaced("A", 2).unwrap();
    b.broadcast_notice(&[1], &frame("n")).unwrap();
    let want = [
        BusMessage::Kick {
            user: 1,
            node: "A".into(),
            replaced: false,
        },
        BusMessage::Kick {
            user: 2,
            node: "A".into(),
            replaced: true,
        },
        BusMessage::Notice {
            to: vec![1],
            frame: frame("n"),
        },
    ];
    poll(LIMIT, "the kicks and the notice arrive", || {
        let others = h.others.lock().unwrap();
        let tail: Vec<&BusMessage> = others
            .iter()
            .filter(|m| !matches!(m, BusMessage::Invalidate { .. }))
            .collect();
        (tail.len() == 3).then(|| assert_eq!(tail, want.iter().collect::<Vec<_>>()))
    });
    threads.stop();
}

#[test]
fn the_keeper_beats_reclaims_and_finds_dead_nodes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    // A heartbeat every 100 ms.
    let a = node_with_ttl(&url, "A", Duration::from_millis(400));
    let threads = a.spawn(h.clone()).expect("bus threads");
    poll(LIMIT, "heartbeats reach the handler", || {
        (h.count("beat") >= 3).then_some(())
    });
    assert_eq!(h.count("lost"), 0);
    assert_eq!(h.count("restored"), 0, "no outage, nothing to restore");
    let mut r = redis_con(&url).unwrap();
    // Heartbeats fail (Redis refuses scripts), then work again: the keeper has
    // what was stored meanwhile delivered. (Had the node's key expired
    // meanwhile, on a machine that held this test up, it re-claims, then
    // restores too.)
    acl(&mut r, &["-evalsha", "-eval"]);
    // The keeper sweeps (a script too) after each beat it gets: of three
    // scripts refused in a row one at least was a heartbeat.
    poll(LIMIT, "a heartbeat refused", || {
        (command_stat(&mut r, "evalsha", "rejected_calls") >= 3).then_some(())
    });
    acl(&mut r, &["+evalsha", "+eval"]);
    poll(LIMIT, "restored after failed heartbeats", || {
        (h.count("restored") >= 1).then_some(())
    });
    // Redis forgot the node: the keeper has it re-claim its users, then flush.
    let (lost, restored) = (h.count("lost"), h.count("restored"));
    let _: () = redis::cmd("DEL").arg("bt:node:A").query(&mut r).unwrap();
    poll(LIMIT, "the presence re-claimed", || {
        (h.count("lost") == lost + 1 && h.count("restored") > restored).then_some(())
    });
    // A dead node with an undrained stream: the keeper's sweep starts its drain.
    let x = node(&url, "X");
    assert_eq!(x.claim(9).unwrap(), Claim::Claimed);
    assert!(a.route(&[9], &frame("f")).unwrap().is_empty());
    let _: () = redis::cmd("DEL").arg("bt:node:X").query(&mut r).unwrap();
    poll(LIMIT, "the dead node handed to a drain", || {
        (h.count("dead:X") >= 1).then_some(())
    });
    // The subscriber lost its connection: once subscribed again, it has the
    // handler deliver what was stored meanwhile.
    let restored = h.count("restored");
    kill_clients(&mut r);
    poll(LIMIT, "a flush after the subscriber came back", || {
        (h.count("restored") > restored).then_some(())
    });
    threads.stop();
}

#[test]
fn the_keeper_acts_at_the_heartbeats_pace() {
    let redis = RedisServer::start();
    let h = Arc::new(Recorder::default());
    // A heartbeat every second: the keeper's 100 ms waits for one are no beats.
    let a = node_with_ttl(&redis.url(), "A", Duration::from_secs(4));
    let threads = a.spawn(h.clone()).expect("bus threads");
    poll(LIMIT, "the first heartbeat", || {
        (h.count("beat") >= 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let beats = h.count("beat");
    assert!(
        beats <= 3,
        "{beats} heartbeats handled in 1.5 s, one a second"
    );
    threads.stop();
}

#[test]
fn a_pooled_connection_serves_call_after_call() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node(&url, "A");
    let mut r = redis_con(&url).unwrap();
    let before = server_stat(&mut r, "total_connections_received");
    for _ in 0..20 {
        assert!(a.heartbeat().unwrap());
    }
    let made = server_stat(&mut r, "total_connections_received") - before;
    assert!(made <= 1, "{made} connections made for 20 calls");
}

#[test]
fn a_bus_on_sentinel_leaves_a_master_demoted_behind_its_back() {
    let s = SentinelRedis::start(Duration::from_secs(2));
    let h = Arc::new(Recorder::default());
    h.writes_done.store(true, Ordering::SeqCst);
    // A heartbeat every minute: only the master's change, not a heartbeat, can
    // have the keeper re-claim within the test's 20 s.
    let a = node_with_ttl(&s.url, "A", Duration::from_secs(240));
    let threads = a.spawn(h.clone()).expect("bus threads");
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    let b = node(&s.url, "B");
    subscribed(&b, &h);
    // Connections made again to the same master are no failover.
    let first = s.master_port();
    let mut r = redis_con(&format!("redis://127.0.0.1:{first}")).unwrap();
    let restored = h.count("restored");
    kill_clients(&mut r);
    poll(LIMIT, "the subscriber connected again", || {
        (h.count("restored") > restored).then_some(())
    });
    // The pool's connections were killed too: it makes a new one.
    poll(LIMIT, "a call on a new pooled connection", || {
        a.heartbeat().ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.count("lost"), 0, "a re-claim with no failover");
    // The old master becomes a replica with the bus's connections still open:
    // writes there get READONLY, and the bus must go to the new master.
    s.swap_quietly();
    poll(LIMIT, "the sentinels name a new master", || {
        (s.master_port() != first).then_some(())
    });
    poll(LIMIT, "a claim on the new master", || a.claim(2).ok());
    // The new master may lack claims the old one acknowledged: the keeper
    // re-claims the node's users at once.
    poll(LIMIT, "the keeper re-claims after the failover", || {
        (h.count("lost") >= 1).then_some(())
    });
    // (It forgot what the new master said was here; the recorder claims nothing.)
    assert_eq!(a.claim(2).unwrap(), Claim::Claimed);
    threads.stop();
}

#[test]
fn bus_threads_dropped_unstopped_end_and_let_go_of_the_bus() {
    let redis = RedisServer::start();
    let h = Arc::new(Recorder::default());
    let (a, threads) = started(&redis.url(), &h);
    assert!(Arc::strong_count(&a) > 1, "the threads hold the bus");
    // A server dropped without its shutdown: the drop ends and joins them.
    drop(threads);
    assert_eq!(Arc::strong_count(&a), 1, "a bus thread runs on");
}

#[test]
fn a_quiet_subscriber_stays_subscribed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    let (a, threads) = started(&url, &h);
    subscribed(&a, &h);
    // Its reads time out every 250 ms while nothing is published: that is no
    // reason to subscribe again (and to have the handler flush every local user,
    // as after an outage).
    std::thread::sleep(Duration::from_millis(1000));
    let mut r = redis_con(&url).unwrap();
    assert_eq!(
        command_stat(&mut r, "subscribe", "calls"),
        1,
        "subscribed again"
    );
    assert_eq!(h.count("restored"), 0);
    threads.stop();
}

#[test]
fn a_dead_node_is_drained_by_one_thread_at_a_time() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    // A drain takes half a second; the keeper sweeps every 100 ms.
    h.drain_ms.store(500, Ordering::SeqCst);
    let a = node_with_ttl(&url, "A", Duration::from_millis(400));
    let threads = a.spawn(h.clone()).expect("bus threads");
    // X dies with a frame in its stream, which the recorder never drains.
    let x = node(&url, "X");
    assert_eq!(x.claim(9).unwrap(), Claim::Claimed);
    assert!(a.route(&[9], &frame("f")).unwrap().is_empty());
    let mut r = redis_con(&url).unwrap();
    let _: () = redis::cmd("DEL").arg("bt:node:X").query(&mut r).unwrap();
    poll(
        LIMIT,
        "three drains of the dead node, one after the other",
        || (h.count("dead:X") >= 3).then_some(()),
    );
    assert_eq!(
        h.most_draining.load(Ordering::SeqCst),
        1,
        "drains of one node at once"
    );
    threads.stop();
}

#[test]
fn a_stopping_reader_trims_what_was_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let h = Arc::new(Recorder::default());
    h.defer.store(true, Ordering::SeqCst);
    let (_a, threads) = started(&url, &h);
    let b = node(&url, "B");
    route(&b, &[1], "f0");
    poll(LIMIT, "f0 read", || {
        (h.deferred.lock().unwrap().len() == 1).then_some(())
    });
    // Past the reader's wait for the batch (1 s): it blocks in XREAD. The batch
    // is written and the node stops in the same turn of the reader: it trims
    // before it leaves, or the stop's own drain would store f0 again.
    std::thread::sleep(Duration::from_millis(1200));
    let mut r = redis_con(&url).unwrap();
    assert_eq!(xlen(&mut r, "A"), 1);
    for done in h.deferred.lock().unwrap().drain(..) {
        done();
    }
    threads.stop();
    assert_eq!(xlen(&mut r, "A"), 0, "written, not trimmed at the stop");
}

/// Waits until `h`'s subscriber hears the invalidations `b` broadcasts (once it
/// subscribed).
fn subscribed(b: &Bus, h: &Recorder) {
    poll(LIMIT, "the subscriber gets an invalidation", || {
        b.broadcast_invalidate(0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let others = h.others.lock().unwrap();
        others
            .contains(&BusMessage::Invalidate { group: 0 })
            .then_some(())
    });
}

/// A figure of `INFO commandstats` for command `cmd` (lower case): `calls`,
/// `rejected_calls`, … (0 before its first call).
fn command_stat(r: &mut redis::Connection, cmd: &str, figure: &str) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(r).unwrap();
    let (line, field) = (format!("cmdstat_{cmd}:"), format!("{figure}="));
    stats
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix(field.as_str())))
        .map_or(0, |n| n.parse().unwrap())
}

/// A figure of `INFO stats`: `total_connections_received`, …
fn server_stat(r: &mut redis::Connection, figure: &str) -> u64 {
    let stats: String = redis::cmd("INFO").arg("stats").query(r).unwrap();
    let field = format!("{figure}:");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(field.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Changes what the private Redis allows its (default) user: `["-subscribe"]`, …
fn acl(r: &mut redis::Connection, rules: &[&str]) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rules)
        .query(r)
        .unwrap();
}

#[test]
fn a_subscriber_that_cannot_subscribe_backs_off() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut r = redis_con(&url).unwrap();
    // Redis answers but refuses SUBSCRIBE: every life of the subscriber fails
    // before it got going, so its retries back off (0.1, 0.2, 0.4, 0.8, 1.6 s,
    // then every 2 s) instead of hammering Redis.
    acl(&mut r, &["-subscribe"]);
    let h = Arc::new(Recorder::default());
    let (_a, threads) = started(&url, &h);
    std::thread::sleep(Duration::from_secs(3));
    let tries = command_stat(&mut r, "subscribe", "rejected_calls");
    assert!((1..=10).contains(&tries), "{tries} SUBSCRIBE tries in 3 s");
    acl(&mut r, &["+subscribe"]);
    let b = node(&url, "B");
    subscribed(&b, &h);
    threads.stop();
}

#[test]
fn writes_wait_for_replicas_until_they_fall_short_then_pause() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut r = redis_con(&url).unwrap();
    let wait = WaitReplicas {
        replicas: 1,
        timeout: Duration::from_millis(100),
    };
    let a = node_with(&url, "A", Duration::from_secs(60), wait);
    let waits = |r: &mut redis::Connection| command_stat(r, "wait", "calls");
    assert_eq!(
        waits(&mut r),
        0,
        "the node's start writes nothing to wait for"
    );
    // No replica: the claim waits its 100 ms in vain, and the writes of the next
    // second (WAIT_PAUSE) do not wait at all.
    let t0 = Instant::now();
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    let claimed = Instant::now();
    assert_eq!(waits(&mut r), 1, "a claim waits for the replicas");
    assert!(a.route(&[1], &frame("f0")).unwrap().is_empty());
    // The pause began after the WAIT's 100 ms: this route fell in it if it
    // returned within 1.05 s of t0 (not so on a machine that stalled that long).
    if t0.elapsed() < Duration::from_millis(1050) {
        assert_eq!(waits(&mut r), 1, "a write waited in the pause");
    }
    // The pause began before the claim returned.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(claimed.elapsed()));
    assert!(a.route(&[1], &frame("f1")).unwrap().is_empty());
    assert_eq!(waits(&mut r), 2, "the pause over, writes wait again");
}

#[test]
fn a_node_id_made_up_at_start_names_the_process() {
    let id = new_node_id();
    let pid = format!("{}-", std::process::id());
    assert!(id.len() > pid.len() && id.starts_with(&pid), "{id}");
}

#[test]
fn a_write_the_replica_acknowledged_pauses_no_waiting() {
    let (redis, replica) = (RedisServer::start(), RedisServer::start());
    let url = redis.url();
    let mut r = redis_con(&url).unwrap();
    let mut rr = redis_con(&replica.url()).unwrap();
    // The copy goes from socket to memory at once: no dump.rdb in the test's
    // directory, no 5 s wait for more replicas.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg("0")
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-load")
        .arg("on-empty-db")
        .query(&mut rr)
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(redis.port)
        .query(&mut rr)
        .unwrap();
    poll(LIMIT, "the replica in sync", || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut r).unwrap();
        info.contains("state=online").then_some(())
    });
    let wait = WaitReplicas {
        replicas: 1,
        timeout: Duration::from_secs(10),
    };
    let a = node_with(&url, "A", Duration::from_secs(60), wait);
    assert_eq!(a.claim(1).unwrap(), Claim::Claimed);
    assert!(a.route(&[1], &frame("f0")).unwrap().is_empty());
    assert_eq!(
        command_stat(&mut r, "wait", "calls"),
        2,
        "the replica acknowledged the claim: the route waits for it too"
    );
}
