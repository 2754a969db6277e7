//! The router's cluster rules that only an outage one node sees, or a login on
//! another node racing a store, reach: the look again after a store, the flush of a
//! dead node's stored frames, the held-back rule after a failed route, and the
//! flush notices owed for it.
//!
//! Each test builds the pieces itself: a [`Router`] (node A) on its own SQLite store
//! and a `Bus` on a private `redis-server`, under a Redis user of its own, so that
//! an outage only A sees is that user's commands refused; node B is a bare `Bus`
//! on the same Redis whose handler records what reaches B's stream (frames and
//! flush notices, in order). Races are made by the calls' order: a bus answer
//! given to [`Router::finish_one`] after the user logged in on B stands for one
//! that was true when it was made.

mod cluster_util;
mod loop_server;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::bus::{Bus, BusConfig, BusHandler, BusMessage, BusThreads, Claim, Orphan};
use chat::router::{Outcome, Router};
use chat::session::Session;
use chat::stats::Stats;
use chat::store::{OfflineLimits, Store};
use cluster_util::{poll, redis_con, RedisServer};

const LIMIT: Duration = Duration::from_secs(10);
/// The Redis user of node A (its outages are this user's refused commands).
const A_USER: &str = "node-a";

/// Records, in order, what B's stream reader and subscriber hand over; a delivery
/// counts as written at once.
#[derive(Default)]
struct Seen(Mutex<Vec<BusMessage>>);

impl BusHandler for Seen {
    fn on_message(&self, msg: BusMessage) -> Result<(), Orphan> {
        self.0.lock().unwrap().push(msg);
        Ok(())
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

/// A flush notice for `user`, as B gets it.
fn flush(user: i64) -> BusMessage {
    BusMessage::Flush { to: vec![user] }
}

/// A chat frame for `to`, as B gets it.
fn deliver(to: &[i64], text: &str) -> BusMessage {
    BusMessage::Deliver {
        to: to.to_vec(),
        frame: text.to_owned(),
    }
}

/// A ONE_CHAT's text from `from` carrying `msg`.
fn chat(from: i64, msg: &str) -> String {
    format!(r#"{{"id":{from},"msg":"{msg}","msgid":5}}"#)
}

/// Removes an SQLite file and its WAL companions on drop.
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Node A (the router under test, its store and bus), node B and their Redis.
struct Nodes {
    router: Router,
    store: Arc<dyn Store>,
    /// What reached B's stream, in order.
    seen: Arc<Seen>,
    b: Arc<Bus>,
    /// Redis as its administrator (the default user).
    admin: redis::Connection,
    // Dropped in this order: B's threads, then Redis, then the file.
    _b_threads: BusThreads,
    _redis: RedisServer,
    _file: FileGuard,
}

impl Nodes {
    /// Both nodes up, A's router bounded by `limits`.
    fn start(limits: OfflineLimits) -> Nodes {
        static N: AtomicUsize = AtomicUsize::new(0);
        let redis = RedisServer::start();
        let mut admin = redis_con(&redis.url()).expect("private redis");
        redis::cmd("ACL")
            .arg(&["SETUSER", A_USER, "on", ">a-secret", "~*", "&*", "+@all"])
            .query::<()>(&mut admin)
            .expect("ACL SETUSER");
        let bus = |url: String, id: &str| {
            Bus::connect(BusConfig {
                url,
                prefix: "rt".into(),
                node_id: id.into(),
                node_ttl: Duration::from_secs(60),
                wait: Default::default(),
            })
            .expect("bus")
        };
        let a_url = format!("redis://{A_USER}:a-secret@127.0.0.1:{}", redis.port);
        let a = bus(a_url, "A");
        let b = bus(redis.url(), "B");
        let seen = Arc::new(Seen::default());
        let b_threads = b.spawn(seen.clone()).expect("B's bus threads");
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("chat_router_{}_{n}.db", std::process::id()));
        let file = FileGuard(path.clone());
        let store =
            chat::store::open_with(&format!("sqlite:{}", path.display()), 4).expect("store");
        let router = Router::new(store.clone(), Some(a), Arc::new(Stats::default()), limits);
        Nodes {
            router,
            store,
            seen,
            b,
            admin,
            _b_threads: b_threads,
            _redis: redis,
            _file: file,
        }
    }

    /// A new user.
    fn user(&self, name: &str) -> i64 {
        self.store
            .register(name, "x")
            .expect("register")
            .expect("a free name")
    }

    /// A new user, logged in on B.
    fn user_on_b(&self, name: &str) -> i64 {
        let u = self.user(name);
        assert_eq!(self.b.claim(u).expect("claim on B"), Claim::Claimed);
        u
    }

    /// Redis refuses node A's commands: an outage only A sees.
    fn cut_a(&mut self) {
        self.acl_a("-@all");
    }

    /// Redis serves node A again; returns once A's heartbeat went through (A's
    /// bus fails fast for a while after a failure), as A's keeper would see it
    /// before it retries what failed.
    fn restore_a(&mut self) {
        self.acl_a("+@all");
        let a = self.router.bus().expect("A has a bus");
        poll(LIMIT, "A's heartbeat goes through", || a.heartbeat().ok());
    }

    fn acl_a(&mut self, rule: &str) {
        redis::cmd("ACL")
            .arg(&["SETUSER", A_USER, rule])
            .query::<()>(&mut self.admin)
            .expect("ACL SETUSER");
    }

    /// Waits until B got `n` messages (`what`); returns them.
    fn b_got(&self, n: usize, what: &str) -> Vec<BusMessage> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let got = self.seen.0.lock().unwrap().clone();
            if got.len() >= n {
                assert_eq!(got.len(), n, "B got more than {what}: {got:?}");
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "B never got {what}; in {LIMIT:?} it got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The texts stored for `user`, taken.
    fn take_stored(&self, user: i64) -> Vec<String> {
        self.store.take_offline(user).expect("take_offline")
    }
}

/// A frame the bus found no node for, stored after the recipient logged in on B
/// meanwhile, is flushed there: after a store the router looks again. (Checked:
/// with `after_bus`'s `outcome == Outcome::Stored` turned into `!=`: "B never got a
/// flush notice for the stored frame; in 10s it got []".)
#[test]
fn a_frame_stored_while_its_user_logged_in_elsewhere_is_flushed_there() {
    let nodes = Nodes::start(OfflineLimits::default());
    let from = nodes.user("alice");
    let bob = nodes.user_on_b("bob");
    // The bus said "bob is on no node" just before his login on B took effect.
    let text = chat(from, "raced");
    let outcome = nodes
        .router
        .finish_one(bob, from, &text, Ok(vec![bob]), || {})
        .expect("finish_one");
    assert_eq!(outcome, Outcome::Stored);
    assert_eq!(
        nodes.b_got(1, "a flush notice for the stored frame"),
        [flush(bob)]
    );
    assert_eq!(nodes.take_stored(bob), [text]);
}

/// A dead node's frames stored again are flushed to those of their recipients who
/// are online on another node — not to those the store refused (full). (Checked:
/// with `store_orphans`' filter `!refused.contains(u)` turned into
/// `refused.contains(u)`, B's first notice was for the refused user: "left:
/// [Flush { to: [3] }, Deliver ...], right: [Flush { to: [2] }, Deliver ...]".)
#[test]
fn orphans_stored_again_are_flushed_where_their_recipients_are() {
    let limits = OfflineLimits {
        max_messages: 1,
        sender_percent: 100,
        ..OfflineLimits::default()
    };
    let nodes = Nodes::start(limits);
    let from = nodes.user("alice");
    let bob = nodes.user_on_b("bob");
    let carol = nodes.user_on_b("carol");
    let dave = nodes.user_on_b("dave");
    let full = nodes
        .store
        .store_offline_many(&[carol], from, &chat(from, "earlier"), &limits)
        .expect("store");
    assert!(full.is_empty(), "carol's one message stored");
    let orphan = chat(from, "orphan");
    nodes
        .router
        .store_orphans(&[(vec![bob, carol], orphan.clone())])
        .expect("store_orphans");
    // A frame routed to B after them: whatever notice they got is ahead of it.
    let probe = chat(from, "probe");
    assert_eq!(
        nodes.router.send_one(dave, from, &probe).expect("send"),
        Outcome::Remote
    );
    assert_eq!(
        nodes.b_got(2, "the flush notice, then the probe"),
        [flush(bob), deliver(&[dave], &probe)]
    );
    assert_eq!(nodes.take_stored(bob), [orphan]);
    assert_eq!(nodes.take_stored(carol), [chat(from, "earlier")], "refused");
}

/// After a route failed (an outage only A saw), the user's frames keep being
/// stored — one-to-one and in a group chat, where the other members still get
/// theirs live — until the retry sent the flush notice owed for the first
/// (`an_owed_flush_notice_goes_out_at_the_retry`); each store is followed by a
/// flush notice once Redis answers. So no frame overtakes the ones stored during
/// the outage. (Checked: with `held_back`'s `!` deleted, and with
/// `mark_unchecked` → (), the frame after the outage went live: "left: Remote,
/// right: Stored"; with `send_many`'s `!held.is_empty()` → `held.is_empty()`, the
/// group frame went live to both: "left: (0, []), right: (1, [])"; with its
/// `!held.contains(u)` → `held.contains(u)`, it went live to bob, and carol got
/// nothing: "left: [.., Deliver { to: [2] ..}, ..], right: [.., Deliver { to:
/// [3] ..}, ..]"; with `check.retain`'s `!` deleted, no notice followed the group
/// frame's store: "B never got two flush notices for bob, the group frame for
/// carol; in 10s it got [Flush { to: [2] }, Deliver { to: [3] .. }]".)
#[test]
fn a_user_stored_for_during_an_outage_is_held_back_until_flushed() {
    let mut nodes = Nodes::start(OfflineLimits::default());
    let from = nodes.user("alice");
    let bob = nodes.user_on_b("bob");
    let carol = nodes.user_on_b("carol");
    nodes.cut_a();
    let during = chat(from, "during");
    assert_eq!(
        nodes.router.send_one(bob, from, &during).expect("send"),
        Outcome::Stored,
        "bob is on B, but A's route failed"
    );
    nodes.restore_a();
    let held = chat(from, "held");
    assert_eq!(
        nodes.router.send_one(bob, from, &held).expect("send"),
        Outcome::Stored,
        "a frame for bob after the outage, before his flush notice"
    );
    let group = chat(from, "group");
    assert_eq!(
        nodes
            .router
            .send_many(&[bob, carol], from, &group, || {})
            .expect("send_many"),
        (1, vec![]),
        "stored for bob only"
    );
    assert_eq!(
        nodes.b_got(3, "two flush notices for bob, the group frame for carol"),
        [flush(bob), deliver(&[carol], &group), flush(bob)]
    );
    assert_eq!(nodes.take_stored(bob), [during, held, group]);
}

/// The flush notice owed for a user stored for during an outage goes out at the
/// next retry (after a heartbeat), and only then do the user's frames go live
/// again. (Checked: with `retry_rechecks` → (): "B never got the owed flush notice;
/// in 10s it got []".)
#[test]
fn an_owed_flush_notice_goes_out_at_the_retry() {
    let mut nodes = Nodes::start(OfflineLimits::default());
    let from = nodes.user("alice");
    let bob = nodes.user_on_b("bob");
    nodes.cut_a();
    let during = chat(from, "during");
    assert_eq!(
        nodes.router.send_one(bob, from, &during).expect("send"),
        Outcome::Stored
    );
    nodes.restore_a();
    nodes.router.retry_rechecks();
    assert_eq!(nodes.b_got(1, "the owed flush notice"), [flush(bob)]);
    let after = chat(from, "after");
    assert_eq!(
        nodes.router.send_one(bob, from, &after).expect("send"),
        Outcome::Remote,
        "live again once the notice went out"
    );
    assert_eq!(
        nodes.b_got(2, "the notice, then the live frame"),
        [flush(bob), deliver(&[bob], &after)]
    );
    assert_eq!(nodes.take_stored(bob), [during]);
}

/// Reads `n` NUL-ended frames from `client` (within [`loop_server::TIMEOUT`]).
fn read_frames(client: &mut TcpStream, n: usize) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut buf = [0; 4096];
    while bytes.iter().filter(|&&b| b == 0).count() < n {
        match client.read(&mut buf) {
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&bytes)),
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
            Err(e) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    bytes
        .split(|&b| b == 0)
        .take(n)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// A session on `server`, with the client end of its connection.
fn session(server: &loop_server::Server) -> (TcpStream, Arc<Session>) {
    let (client, conn, peer) = server.connect(64 << 10);
    let stats = Arc::new(Stats::default());
    (client, Arc::new(Session::new(conn, peer, stats, 1 << 20)))
}

/// A flush notice for a user online here delivers what is stored for the user, in
/// order. (Checked: with `flush_here` → (): "still stored, left: [\"{..one..}\",
/// \"{..two..}\"], right: []".)
#[test]
fn flush_here_delivers_what_is_stored_for_a_local_user() {
    let nodes = Nodes::start(OfflineLimits::default());
    let from = nodes.user("alice");
    let bob = nodes.user("bob");
    let server = loop_server::Server::start();
    let (mut client, session) = session(&server);
    nodes.router.hub().lock(bob).insert(bob, session);
    let texts = [chat(from, "one"), chat(from, "two")];
    for t in &texts {
        let refused = nodes
            .store
            .store_offline_many(&[bob], from, t, &OfflineLimits::default())
            .expect("store");
        assert!(refused.is_empty());
    }
    nodes.router.flush_here(&[bob]);
    assert_eq!(nodes.take_stored(bob), Vec::<String>::new(), "still stored");
    assert_eq!(read_frames(&mut client, 2), texts);
}

/// Frames a closing connection never got go back to the store ahead of what was
/// stored since, and a newer session of the user here (a login that came in while
/// the old connection closed) gets them at once, in that order. (Checked: with
/// `restore_and_flush`'s guard `session.id() != closed.id()` → `false`: "still
/// stored, left: [\"{..put back..}\", \"{..later..}\"], right: []".)
#[test]
fn frames_put_back_at_a_close_go_to_a_newer_session_at_once() {
    let nodes = Nodes::start(OfflineLimits::default());
    let from = nodes.user("alice");
    let bob = nodes.user("bob");
    let server = loop_server::Server::start();
    let (_old_client, old) = session(&server);
    let (mut client, newer) = session(&server);
    nodes.router.hub().lock(bob).insert(bob, newer);
    let later = chat(from, "later");
    let refused = nodes
        .store
        .store_offline_many(&[bob], from, &later, &OfflineLimits::default())
        .expect("store");
    assert!(refused.is_empty());
    let put_back = chat(from, "put back");
    nodes
        .router
        .restore_and_flush(bob, &old, vec![put_back.clone()]);
    assert_eq!(nodes.take_stored(bob), Vec::<String>::new(), "still stored");
    assert_eq!(read_frames(&mut client, 2), [put_back, later]);
}
