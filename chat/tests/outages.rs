//! Outages: the database or Redis going away and coming back while users chat —
//! the server must stay up, answer with errors instead of hanging, recover by
//! itself, and account for every message (stored + delivered + refused == sent).
//!
//! The tests run private `mariadbd` and `redis-server` children (never the
//! machine's shared ones); a missing binary fails. Measured figures are printed
//! (`cargo test --test outages -- --nocapture`).

mod cluster_util;
mod hardening_util;
mod util;

use std::thread;
use std::time::{Duration, Instant};

use chat::bus::BusConfig;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use serde_json::json;

use hardening_util::chats::{
    chat_accepted, chats_until, drain_chats, offline_texts, recv_slow, Ledger,
};
use hardening_util::mariadb::MariaDb;
use hardening_util::{require_binary, unique};
use util::{parsed, Backend, Client, User};

/// Cheap password hashes for the in-process servers: the hashing cost is not what
/// these tests are about, and it would dominate their time on two cores.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

// ---------------------------------------------------------------------------------
// 4. Database down
// ---------------------------------------------------------------------------------

/// The private MariaDB is killed while A and B chat: REG, LOGIN, ADD_FRIEND and a
/// chat to an offline user get error replies within seconds, A and B keep chatting;
/// the database restarts and everything recovers by itself. Every chat is accounted
/// for: stored + delivered + refused == sent.
#[test]
fn database_down_and_back() {
    let mut db = MariaDb::start();
    fast_hashes();
    let srv = ServerThread::start(
        "127.0.0.1:0".parse().unwrap(),
        &db.url("chat"),
        ServerOptions::default(),
    )
    .expect("server on the private MariaDB");
    let addr = srv.addr();
    let mut a = User::online(addr, "alice");
    let mut b = User::online(addr, "bob");
    let mut e = User::online(addr, "eve");
    let c = User::register(addr, "carol"); // stays offline
    let (mut sent, mut delivered, mut refused) = (0, 0, 0);
    let mut expect_stored = Vec::new();
    let live = |from: &mut User, to: &mut User, text: &str| {
        let t = Instant::now();
        from.chat(to.id, text);
        let v = to.c.expect_msgid(6);
        assert_eq!(v["msg"], text);
        t.elapsed()
    };
    for i in 0..3 {
        live(&mut a, &mut b, &format!("ab pre {i}"));
        sent += 1;
        delivered += 1;
        let text = format!("{i:05} to carol before");
        assert!(chat_accepted(&mut e, c.id, &text), "chat to carol refused");
        sent += 1;
        expect_stored.push(text);
    }

    db.kill();
    let down = Instant::now();
    // Requests that need the database, on their own connections, at once.
    let reg = thread::spawn(move || {
        let mut n = Client::connect(addr);
        let t = Instant::now();
        n.send(&json!({"msgid": 4, "name": "newbie", "password": "pw"}));
        recv_slow(&n, t, Duration::from_secs(30))
    });
    let carol_id = c.id;
    let login = thread::spawn(move || {
        let mut n = Client::connect(addr);
        let t = Instant::now();
        n.send(&json!({"id": carol_id, "msgid": 1, "password": "pw-carol"}));
        recv_slow(&n, t, Duration::from_secs(30))
    });
    let bob_id = b.id;
    let friend = thread::spawn(move || {
        let t = Instant::now();
        e.c.send(&json!({"ext": 1, "friendid": bob_id, "id": e.id, "msgid": 7}));
        let (v, d) = recv_slow(&e.c, t, Duration::from_secs(30));
        (e, v, d)
    });
    // While those wait for the database, alice and bob chat live, and an unrelated
    // connection is served at once (the workers are not all tied up).
    let mut live_t = Vec::new();
    let chat_live = |a: &mut User, b: &mut User, tag: &str, live_t: &mut Vec<Duration>| {
        for i in 0..5 {
            live_t.push(live(a, b, &format!("ab {tag} {i}")));
            live_t.push(live(b, a, &format!("ba {tag} {i}")));
        }
        10
    };
    let n = chat_live(&mut a, &mut b, "down", &mut live_t);
    sent += n;
    delivered += n;
    let mut p = Client::connect(addr);
    let t = Instant::now();
    p.barrier();
    let ping_t = t.elapsed();
    let (mut e, friend, friend_t) = friend.join().expect("ADD_FRIEND thread");
    // Now that a checkout has failed, chats to the offline carol fail fast.
    let mut chat_t = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        sent += 1;
        if chat_accepted(&mut e, c.id, &format!("{i:05} to carol while down")) {
            panic!("a chat to an offline user was accepted with the database down");
        }
        refused += 1;
        chat_t.push(t.elapsed());
    }
    let n = chat_live(&mut a, &mut b, "still down", &mut live_t);
    sent += n;
    delivered += n;
    let (reg, reg_t) = reg.join().expect("REG thread");
    let (login, login_t) = login.join().expect("LOGIN thread");
    eprintln!(
        "database down: REG answered in {reg_t:?}, LOGIN in {login_t:?}, ADD_FRIEND in \
         {friend_t:?}, chats to offline in {chat_t:?}, an unrelated PING in {ping_t:?}; live \
         chat latencies {live_t:?}"
    );
    assert_eq!(
        (reg["msgid"].as_i64(), reg["errno"].as_i64()),
        (Some(5), Some(1)),
        "REG with the database down: {reg}"
    );
    assert!(
        reg["errmsg"].is_string(),
        "REG failure without errmsg: {reg}"
    );
    assert_eq!(
        login,
        json!({"errmsg": login["errmsg"], "errno": 110, "msgid": 2}),
        "LOGIN with the database down"
    );
    assert_eq!(
        (
            friend["msgid"].as_i64(),
            friend["errno"].as_i64(),
            friend["reqmsgid"].as_i64()
        ),
        (Some(11), Some(110), Some(7)),
        "ADD_FRIEND with the database down: {friend}"
    );
    // The first requests after the crash may wait for the pool's checkout timeout
    // (5 s); later ones fail fast (or probe for at most a second).
    for (what, d) in [("REG", reg_t), ("LOGIN", login_t), ("ADD_FRIEND", friend_t)] {
        assert!(d < Duration::from_secs(8), "{what} took {d:?} to fail");
    }
    for d in &chat_t {
        assert!(
            *d < Duration::from_secs(2),
            "a chat to offline took {d:?} to fail"
        );
    }
    assert!(ping_t < Duration::from_secs(1), "PING took {ping_t:?}");

    // Back up: the server recovers by itself.
    db.restart();
    let up = Instant::now();
    let mut n = Client::connect(addr);
    let newbie = util::poll(Duration::from_secs(30), "REG works again", || {
        n.send(&json!({"msgid": 4, "name": "newbie", "password": "pw"}));
        let (v, _) = recv_slow(&n, Instant::now(), Duration::from_secs(30));
        assert_eq!(v["msgid"], 5, "{v}");
        v["id"].as_i64()
    });
    let recovered = up.elapsed();
    n.login_ok(newbie, "pw");
    for i in 0..3 {
        let text = format!("{i:05} to carol after");
        sent += 1;
        if chat_accepted(&mut e, c.id, &text) {
            expect_stored.push(text);
        } else {
            refused += 1;
        }
    }
    e.c.send(&json!({"ext": 1, "friendid": b.id, "id": e.id, "msgid": 7}));
    e.c.expect_ack(7, 0);
    live(&mut a, &mut b, "ab after");
    sent += 1;
    delivered += 1;
    let mut carol = Client::connect(addr);
    let ack = carol.login_ok(c.id, &c.pw);
    let stored: Vec<String> = parsed(&ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect();
    eprintln!(
        "database back: REG works {recovered:?} after the restart ({:?} after the kill); \
         sent {sent} = delivered {delivered} + stored {} + refused {refused}",
        down.elapsed(),
        stored.len()
    );
    assert_eq!(stored, expect_stored, "carol's offline messages");
    // The sums are the test's own bookkeeping; what the server can get wrong is storing
    // a chat it refused or delivered. carol's stored list is exactly the accepted ones
    // (above); alice and bob got theirs live, so nothing is stored for them.
    for u in [&mut a, &mut b] {
        let ack = u.relogin();
        assert!(
            ack.get("offlinemsg").is_none(),
            "delivered live and stored too: {ack}"
        );
    }
    a.c.expect_quiet();
    b.c.expect_quiet();
}

// ---------------------------------------------------------------------------------
// 5. Redis down
// ---------------------------------------------------------------------------------

/// The options of cluster node `id` on the Redis at `url`, keys under `prefix`.
fn node_options(url: &str, prefix: &str, id: &str, ttl: Duration) -> ServerOptions {
    ServerOptions {
        bus: Some(BusConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            node_id: id.to_owned(),
            node_ttl: ttl,
            wait: Default::default(),
        }),
        ..ServerOptions::default()
    }
}

/// A cluster node on the shared test database and the private Redis at `url`.
fn node(b: &Backend, url: &str, prefix: &str, id: &str) -> ServerThread {
    b.start_with(node_options(url, prefix, id, Duration::from_secs(2)))
}

/// Redis refuses writes (`min-replicas-to-write` with no replica) but keeps its data
/// while a user logs out: the release of its presence fails, and the presence is still
/// there afterwards; once Redis takes writes again the node retries the release, so the
/// user can log in on the other node instead of getting "already online" until the
/// first node dies. (A SIGSTOPped Redis would run the timed-out release anyway when it
/// resumes, so it could not show that the retry ran.)
#[test]
fn redis_refused_release_is_retried() {
    require_binary("redis-server");
    let b = Backend::mysql();
    fast_hashes();
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("hard_{}", unique());
    let n1 = node(&b, &redis.url(), &prefix, "refuse-n1");
    let n2 = node(&b, &redis.url(), &prefix, "refuse-n2");
    let mut u = User::online(n1.addr(), "refused");
    let mut other = Client::connect(n2.addr());
    let v = other.login(u.id, &u.pw);
    assert_eq!(v["errno"], 2, "online on node 1: {v}");

    let mut con = cluster_util::redis_con(&redis.url()).expect("connect to the test Redis");
    let online = format!("{prefix}:online");
    let refuse_writes = |con: &mut redis::Connection, n: u32| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(n)
            .query::<()>(con)
            .expect("CONFIG SET min-replicas-to-write");
    };
    refuse_writes(&mut con, 1);
    u.c.logout(u.id);
    u.c.barrier(); // the release has been tried by now
    let owner: Option<String> = redis::cmd("HGET")
        .arg(&online)
        .arg(u.id)
        .query(&mut con)
        .expect("HGET presence");
    refuse_writes(&mut con, 0);
    // Short of the 2 s node TTL: node 1 stays alive, so only a retried release frees u.
    assert_eq!(
        owner.as_deref(),
        Some("refuse-n1"),
        "the release did not fail, so nothing shows it is retried"
    );
    let ack = util::poll(
        Duration::from_secs(15),
        "the failed release is retried",
        || {
            let v = other.login(u.id, &u.pw);
            (v["errno"] == 0).then_some(v)
        },
    );
    assert_eq!(ack["id"], u.id);
}

/// Two nodes, users on both; the private Redis is killed: local delivery goes on,
/// cross-node messages are stored — for a user who is offline, until the next login;
/// Redis comes back (empty): the nodes reconnect and re-claim their users by
/// themselves and cross-node delivery resumes. stored + delivered == sent, no loss,
/// no duplicate.
#[test]
fn redis_down_and_back() {
    require_binary("redis-server");
    let b = Backend::mysql();
    fast_hashes();
    let mut redis = cluster_util::RedisServer::start();
    let prefix = format!("hard_{}", unique());
    let n1 = node(&b, &redis.url(), &prefix, "hard-n1");
    let n2 = node(&b, &redis.url(), &prefix, "hard-n2");
    let mut a1 = User::online(n1.addr(), "a1");
    let mut b1 = User::online(n1.addr(), "b1");
    let mut a2 = User::online(n2.addr(), "a2");
    let mut b2 = User::online(n2.addr(), "b2");
    let mut c2 = User::online(n2.addr(), "c2");
    let mut ledger = Ledger::default();
    let mut local = 0;
    let live = |from: &mut User, to: &mut User, text: &str, ledger: &mut Ledger| {
        from.chat(to.id, text);
        assert_eq!(to.c.expect_msgid(6)["msg"], text);
        ledger.sent(to.id, text);
        ledger.live(to.id, [text.to_owned()]);
    };
    live(&mut a1, &mut a2, "cross before", &mut ledger);
    live(&mut a1, &mut b1, "local before", &mut ledger);

    redis.kill();
    let down = Instant::now();
    b2.c.logout(b2.id);
    b2.c.barrier();
    // Cross-node, both ways, to online and offline users: not live, not lost.
    for i in 0..5 {
        for (to, text) in
            [(a2.id, "a2"), (b2.id, "b2")].map(|(to, n)| (to, format!("cross down {i} to {n}")))
        {
            a1.chat(to, &text);
            ledger.sent(to, &text);
        }
        let text = format!("cross down {i} to a1");
        a2.chat(a1.id, &text);
        ledger.sent(a1.id, &text);
    }
    a1.c.barrier();
    a2.c.barrier();
    let handled = down.elapsed();
    // Local delivery on both nodes goes on.
    for i in 0..5 {
        live(&mut a1, &mut b1, &format!("local n1 {i}"), &mut ledger);
        live(&mut b1, &mut a1, &format!("local n1 back {i}"), &mut ledger);
        live(&mut a2, &mut c2, &format!("local n2 {i}"), &mut ledger);
        live(&mut c2, &mut a2, &format!("local n2 back {i}"), &mut ledger);
        local += 4;
    }
    a1.c.expect_quiet();
    a2.c.expect_quiet();
    // A login needs presence in Redis: refused at once, not hung.
    let t = Instant::now();
    let v = b2.c.login(b2.id, &b2.pw);
    let login_t = t.elapsed();
    assert_eq!(v["errno"], 110, "LOGIN with Redis down: {v}");
    assert!(
        login_t < Duration::from_secs(3),
        "LOGIN took {login_t:?} to fail"
    );

    redis.restart();
    let up = Instant::now();
    // Cross-node delivery resumes by itself, each way (each node's subscriber
    // reconnects on its own): probe until one arrives live. Whatever else arrives
    // meanwhile (stored messages flushed once the recipient's node is reachable) is
    // counted as delivered.
    let mut probes = 0;
    let mut resumed = Vec::new();
    for forward in [true, false] {
        let (from, to) = if forward {
            (&mut a1, &mut a2)
        } else {
            (&mut a2, &mut a1)
        };
        let at = util::poll(
            Duration::from_secs(20),
            "cross-node delivery resumes",
            || {
                let text = format!("probe {probes} to {}", to.name);
                probes += 1;
                from.chat(to.id, &text);
                ledger.sent(to.id, &text);
                let got = drain_chats(&to.c, Duration::from_millis(300));
                let done = got.contains(&text);
                ledger.live(to.id, got);
                done.then(|| up.elapsed())
            },
        );
        resumed.push(at);
    }
    for i in 0..5 {
        for forward in [true, false] {
            let (from, to) = if forward {
                (&mut a1, &mut a2)
            } else {
                (&mut a2, &mut a1)
            };
            let text = format!("cross after {i} to {}", to.name);
            from.chat(to.id, &text);
            ledger.sent(to.id, &text);
            let got = chats_until(&to.c, &text, Duration::from_secs(5));
            assert!(got.contains(&text), "{text:?} not delivered live: {got:?}");
            ledger.live(to.id, got);
        }
    }
    // Whatever is still stored comes with the next login.
    for u in [&mut a1, &mut a2] {
        let got = drain_chats(&u.c, Duration::from_millis(300));
        ledger.live(u.id, got);
        let ack = u.relogin();
        ledger.stored(u.id, &ack);
    }
    // b2 logged out of node 2 while Redis was down: once Redis is back, b2 can log
    // in on node 1 (no stale "already online" left behind by the failed release).
    let mut elsewhere = Client::connect(n1.addr());
    let ack = util::poll(
        Duration::from_secs(10),
        "b2's presence released after the outage",
        || {
            let v = elsewhere.login(b2.id, &b2.pw);
            (v["errno"] == 0).then_some(v)
        },
    );
    ledger.stored(b2.id, &ack);
    assert_eq!(
        offline_texts(&ack).len(),
        5,
        "b2 was offline: its messages wait for its login"
    );
    let (sent, delivered, stored) = ledger.check();
    eprintln!(
        "redis down: cross-node chats handled in {handled:?}, LOGIN refused in {login_t:?}, \
         {local} local chats delivered; redis back: live again (1→2, 2→1) {resumed:?} after \
         the restart ({probes} probes); sent {sent} = delivered {delivered} + stored {stored}"
    );
    assert_eq!(delivered + stored, sent);
    b1.c.expect_quiet();
    c2.c.expect_quiet();
}

/// Writes a user's presence (user → node) straight into the cluster's Redis, as a
/// node that then went away would have left it.
fn set_presence(r: &mut redis::Connection, prefix: &str, uid: i64, node: &str) {
    redis::cmd("HSET")
        .arg(format!("{prefix}:online"))
        .arg(uid)
        .arg(node)
        .query::<i64>(r)
        .unwrap();
}

/// A frame routed to a node whose database is down, for a user who just left that
/// node (presence still points there): the node can neither deliver nor store it,
/// so it holds it (and the frames behind it for that user), keeps it in its stream
/// and retries until the database is back; then the user's next login returns
/// every such frame, in order. (Before, the node logged the frame as lost.)
#[test]
fn frames_a_node_cannot_store_wait_in_its_stream() {
    require_binary("redis-server");
    let mut db = MariaDb::start();
    fast_hashes();
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("rq_{}", unique());
    let start = |id: &str| {
        ServerThread::start(
            "127.0.0.1:0".parse().unwrap(),
            &db.url("chat"),
            node_options(&redis.url(), &prefix, id, Duration::from_secs(5)),
        )
        .expect("node on the private MariaDB")
    };
    let (n1, n2) = (start("rq-n1"), start("rq-n2"));
    let mut a = User::online(n1.addr(), "ann");
    let mut z = User::register(n2.addr(), "zed");
    // As if zed had been on node 2 and left just after a route chose it.
    let mut r = cluster_util::redis_con(&redis.url()).expect("private redis");
    set_presence(&mut r, &prefix, z.id, "rq-n2");

    db.kill();
    let texts: Vec<String> = (0..5)
        .map(|i| format!("while the db is down {i}"))
        .collect();
    for t in &texts {
        a.chat(z.id, t);
    }
    a.c.barrier(); // node 1 routed them all to node 2's stream
    let queue = format!("{prefix}:q:rq-n2");
    // Node 2 holds them while the database is down (retrying every half second),
    // past its pool's first 5 s wait for a connection and the breaker's first trips.
    thread::sleep(Duration::from_secs(8));
    let kept: i64 = redis::cmd("XLEN").arg(&queue).query(&mut r).unwrap();
    // One entry per route call: the five frames, one sender's, may share calls.
    assert!(
        (1..=texts.len() as i64).contains(&kept),
        "frames kept in node 2's stream: {kept} entries"
    );

    db.restart();
    let t = Instant::now();
    util::poll(
        Duration::from_secs(30),
        "node 2 stores the kept frames",
        || {
            let left: i64 = redis::cmd("XLEN").arg(&queue).query(&mut r).unwrap();
            (left == 0).then_some(())
        },
    );
    println!(
        "kept frames stored {:.2?} after the database came back",
        t.elapsed()
    );
    let ack = z.login();
    assert_eq!(offline_texts(&ack), texts, "zed's offline messages");
}

/// A node that crashed and is started again under the same `--node-id` (as
/// `scripts/cluster.sh` names them) forgets the presence its earlier process left:
/// a user who was online there can log in on another node at once, instead of
/// getting "already online" for as long as the new process lives.
#[test]
fn a_node_restarted_under_its_old_id_forgets_its_old_users() {
    require_binary("redis-server");
    let b = Backend::mysql();
    fast_hashes();
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("rs_{}", unique());
    let n2 = node(&b, &redis.url(), &prefix, "rs-n2");
    let mut u = User::register(n2.addr(), "uma");
    // What a kill -9 of node 1 leaves behind: uma online there.
    let mut r = cluster_util::redis_con(&redis.url()).expect("private redis");
    set_presence(&mut r, &prefix, u.id, "rs-n1");
    redis::cmd("SADD")
        .arg(format!("{prefix}:nodeusers:rs-n1"))
        .arg(u.id)
        .query::<i64>(&mut r)
        .unwrap();
    let n1 = node(&b, &redis.url(), &prefix, "rs-n1");
    let v = u.c.login(u.id, &u.pw);
    assert_eq!(v["errno"], 0, "login on node 2 after node 1 restarted: {v}");
    let at: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:online"))
        .arg(u.id)
        .query(&mut r)
        .unwrap();
    assert_eq!(at.as_deref(), Some("rs-n2"));
    drop(n1);
}

/// A LOGIN of a user whom the cluster's presence puts on a dead node (its
/// liveness key gone) whose stream still holds a frame for them (no keeper drained
/// it yet) drains that stream first: the frame is among the LOGIN_ACK's offline
/// messages. (Mutation testing: with the drain's result read the wrong way round
/// in `enter`, its `!` deleted, or the retry bound `drains > 3` turned into
/// `drains < 3`, the LOGIN was answered "unavailable", and every in-process test
/// passed.)
#[test]
fn a_login_drains_the_dead_node_that_holds_the_user() {
    require_binary("redis-server");
    let b = Backend::mysql();
    fast_hashes();
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("od_{}", unique());
    let n1 = node(&b, &redis.url(), &prefix, "od-n1");
    let mut u = User::register(n1.addr(), "orla");
    // What a dead node leaves behind when its keeper-to-be has not run yet: the
    // user online there, and a frame for them in its stream.
    let mut r = cluster_util::redis_con(&redis.url()).expect("private redis");
    set_presence(&mut r, &prefix, u.id, "od-ghost");
    let frame = json!({"id": 999, "msg": "left behind", "msgid": 6, "name": "gus", "toid": u.id});
    redis::cmd("XADD")
        .arg(format!("{prefix}:q:od-ghost"))
        .arg("*")
        .arg("to")
        .arg(u.id.to_string())
        .arg("f")
        .arg(frame.to_string())
        .query::<String>(&mut r)
        .expect("a frame in the dead node's stream");
    let ack = u.c.login(u.id, &u.pw);
    assert_eq!(ack["errno"], 0, "LOGIN over a dead node's stream: {ack}");
    assert_eq!(offline_texts(&ack), ["left behind"], "{ack}");
    drop(n1);
}

/// A node whose subscription was cut misses the group invalidations published
/// meanwhile: when it subscribes again it drops its member cache, so a group chat
/// sent there reaches a member who joined on another node while it was deaf.
/// (Mutation testing: with `on_bus_restored` doing nothing, that member got nothing
/// until the cache's 30 s ran out, and every other test passed.)
#[test]
fn a_node_that_was_deaf_forgets_its_member_cache() {
    require_binary("redis-server");
    let b = Backend::mysql();
    fast_hashes();
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("df_{}", unique());
    let n1 = node(&b, &redis.url(), &prefix, "df-n1");
    let n2 = node(&b, &redis.url(), &prefix, "df-n2");
    let mut alice = User::online(n1.addr(), "alice");
    let mut carol = User::online(n1.addr(), "carol");
    let mut bob = User::online(n2.addr(), "bob");
    alice
        .c
        .send(&json!({"ext": 1, "groupdesc": "", "groupname": "deaf", "id": alice.id, "msgid": 8}));
    let gid = alice.c.expect_ack(8, 0)["groupid"]
        .as_i64()
        .expect("a groupid");
    bob.c
        .send(&json!({"ext": 1, "groupid": gid, "id": bob.id, "msgid": 9}));
    bob.c.expect_ack(9, 0);
    // Node 2 reads the members (alice, bob) into its cache.
    bob.group_chat(gid, "cached");
    assert_eq!(alice.c.expect_msgid(10)["msg"], "cached");
    // Both nodes go deaf: their subscriptions cut, new ones refused.
    let mut r = cluster_util::redis_con(&redis.url()).expect("private redis");
    let acl = |r: &mut redis::Connection, rule: &str| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .query::<()>(r)
            .expect("ACL SETUSER");
    };
    let subscribers = |r: &mut redis::Connection| {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}:ch:all"))
            .query(r)
            .expect("PUBSUB NUMSUB");
        n
    };
    acl(&mut r, "-subscribe");
    // And no membership version can be written: the join's MULTI (SET, PUBLISH) is
    // refused whole, as when Redis is down, so node 2 cannot see the change in the
    // version either.
    acl(&mut r, "-set");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query::<i64>(&mut r)
        .expect("CLIENT KILL");
    assert_eq!(subscribers(&mut r), 0, "subscribers left");
    // Carol joins on node 1: neither its invalidation nor its version reaches a node.
    carol
        .c
        .send(&json!({"ext": 1, "groupid": gid, "id": carol.id, "msgid": 9}));
    carol.c.expect_ack(9, 0);
    acl(&mut r, "+set");
    acl(&mut r, "+subscribe");
    util::poll(
        Duration::from_secs(20),
        "both nodes subscribed again",
        || (subscribers(&mut r) == 2).then_some(()),
    );
    bob.group_chat(gid, "after");
    assert_eq!(
        carol.c.expect_msgid(10)["msg"],
        "after",
        "carol, who joined meanwhile"
    );
    assert_eq!(alice.c.expect_msgid(10)["msg"], "after");
}
