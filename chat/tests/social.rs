//! History, presence, friends and groups (protocol.md §10), on both stores and across two
//! cluster nodes.

mod util;

use std::time::Duration;

use chat::bus::BusConfig;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use serde_json::{json, Value};
use util::{parsed, poll, Backend, User};

both_backends!(
    history_pages_newest_first,
    a_chat_the_workers_deliver_here_is_kept_once,
    group_history_for_members_only,
    presence_reaches_opted_in_friends,
    friend_request_accept_decline_remove,
    a_repeated_friend_request_notifies_once,
    leave_and_remove_members,
    concurrent_writers_share_one_sequence,
    creator_and_lowest_member_leave_at_once,
    joining_an_empty_group_makes_a_creator,
    concurrent_joins_of_an_empty_group_make_one_creator,
    retention_prunes_old_messages,
    a_clean_stop_keeps_gathered_messages,
);

/// Cheap password hashes: hashing is not what these tests are about.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

/// A user that registered and logged in with `"ext":1`.
fn ext_user(addr: std::net::SocketAddr, name: &str) -> User {
    let mut u = User::register(addr, name);
    u.c.send(&json!({"ext": 1, "id": u.id, "msgid": 1, "password": u.pw}));
    let ack = u.c.expect_msgid(2);
    assert_eq!(ack["errno"], 0, "{ack}");
    u
}

/// The next frame that is not a PRESENCE (tests other than presence's own see friends
/// log in and out).
fn next(u: &mut User) -> Value {
    loop {
        let v = u.c.recv();
        if v["msgid"] != 25 {
            return v;
        }
    }
}

/// [`next`], which must have this msgid.
fn expect(u: &mut User, msgid: i64) -> Value {
    let v = next(u);
    assert_eq!(v["msgid"], msgid, "expected msgid {msgid}, got {v}");
    v
}

/// Sends `req` (with the user's id and `"ext":1`) and returns the next frame (but
/// PRESENCE).
fn ask(u: &mut User, mut req: Value) -> Value {
    req["id"] = json!(u.id);
    req["ext"] = json!(1);
    u.c.send(&req);
    next(u)
}

/// Logs out and in again (opted in); returns the LOGIN_ACK.
fn relogin(u: &mut User) -> Value {
    expect_ack(&ask(u, json!({"msgid": 3})), 3, 0);
    let v = ask(u, json!({"msgid": 1, "password": u.pw}));
    assert_eq!(v["msgid"], 2, "{v}");
    assert_eq!(v["errno"], 0, "{v}");
    v
}

/// The ACK of a request of the extension: asserts reqmsgid and errno.
fn expect_ack(v: &Value, reqmsgid: i64, errno: i64) {
    assert_eq!(v["msgid"], 12, "expected an ACK, got {v}");
    assert_eq!(v["reqmsgid"], reqmsgid, "{v}");
    assert_eq!(v["errno"], errno, "{v}");
}

/// The `(seq, msg)` pairs of a HISTORY_ACK.
fn page(v: &Value) -> Vec<(i64, String)> {
    assert_eq!(v["msgid"], 24, "expected HISTORY_ACK, got {v}");
    v["msgs"]
        .as_array()
        .unwrap_or_else(|| panic!("no msgs in {v}"))
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["msg"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(i64, &str)]) -> Vec<(i64, String)> {
    list.iter().map(|(s, m)| (*s, (*m).to_owned())).collect()
}

/// One-to-one messages, live and offline, fast path and worker path, are kept with
/// seqs 1, 2, … per conversation; pages come newest first, `before` pages back, `limit`
/// bounds them, `more` tells whether older ones exist; both sides read the same
/// conversation; a stranger's conversation is not mixed in.
fn history_pages_newest_first(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "ha");
    let mut bb = ext_user(server.addr(), "hb");
    let mut c = ext_user(server.addr(), "hc");
    for i in 1..=3 {
        a.chat(bb.id, &format!("a{i}"));
        bb.c.expect_msgid(6);
    }
    bb.chat(a.id, "b1");
    a.c.expect_msgid(6);
    c.chat(a.id, "c1");
    a.c.expect_msgid(6);
    // B goes offline: a message stored for it is in history too.
    bb.c.send(&json!({"ext": 1, "id": bb.id, "msgid": 3}));
    bb.c.expect_ack(3, 0);
    a.chat(bb.id, "a4");
    a.c.barrier();

    let v = ask(&mut a, json!({"msgid": 23, "peer": bb.id, "limit": 2}));
    assert_eq!(page(&v), pairs(&[(5, "a4"), (4, "b1")]));
    assert_eq!(v["more"], true);
    assert_eq!(v["peer"], bb.id);
    assert_eq!(v["msgs"][0]["id"], a.id);
    assert_eq!(v["msgs"][0]["name"], "ha");
    let v = ask(&mut a, json!({"msgid": 23, "peer": bb.id, "before": 4}));
    assert_eq!(page(&v), pairs(&[(3, "a3"), (2, "a2"), (1, "a1")]));
    assert_eq!(v["more"], false);
    // A page that ends exactly at the oldest message: nothing more.
    let v = ask(
        &mut a,
        json!({"msgid": 23, "peer": bb.id, "before": 4, "limit": 3}),
    );
    assert_eq!(page(&v), pairs(&[(3, "a3"), (2, "a2"), (1, "a1")]));
    assert_eq!(v["more"], false, "{v}");
    // The other side sees the same conversation.
    bb.login();
    let v = ask(&mut bb, json!({"msgid": 23, "peer": a.id, "limit": 100}));
    assert_eq!(page(&v).len(), 5);
    let v = ask(&mut c, json!({"msgid": 23, "peer": a.id}));
    assert_eq!(page(&v), pairs(&[(1, "c1")]));
    // Bad requests.
    let v = ask(&mut a, json!({"msgid": 23, "peer": 999_999}));
    expect_ack(&v, 23, 201);
    a.c.send(&json!({"ext": 1, "id": a.id, "msgid": 23, "peer": bb.id, "limit": 101}));
    a.c.expect_error(105, Some(23));
    a.c.send(&json!({"ext": 1, "id": a.id, "msgid": 23}));
    a.c.expect_error(104, Some(23));
}

/// The writer gathers messages for up to a second before it writes them: a clean stop
/// right after they were delivered still writes every one of them.
fn a_clean_stop_keeps_gathered_messages(b: &Backend) {
    use chat::protocol::Conversation;
    use chat::store::social::conv_key;
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "sa");
    let mut bb = ext_user(server.addr(), "sb");
    for i in 1..=3 {
        a.chat(bb.id, &format!("s{i}"));
        bb.c.expect_msgid(6);
    }
    // Closed connections: the stop does not wait out its grace period for them.
    let conv = conv_key(a.id, Conversation::Peer(bb.id)).unwrap();
    drop((a, bb));
    let t = std::time::Instant::now();
    server.stop();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "the stop took {:?}",
        t.elapsed()
    );
    let store = chat::store::open(&b.url()).expect("open");
    let kept = store.history_page(conv, None, 10).unwrap();
    assert_eq!(kept.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 2, 1]);
    assert!(kept[0].text.contains("s3"), "{}", kept[0].text);
}

/// Group messages are kept per group; only members read them; a new member reads
/// what was said before it joined (the group's history, as in a chat room).
fn group_history_for_members_only(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "ga");
    let mut m = ext_user(server.addr(), "gm");
    let mut out = ext_user(server.addr(), "go");
    let v = ask(
        &mut a,
        json!({"msgid": 8, "groupname": "g-hist", "groupdesc": "d"}),
    );
    let gid = v["groupid"].as_i64().unwrap_or_else(|| panic!("{v}"));
    expect_ack(&ask(&mut m, json!({"msgid": 9, "groupid": gid})), 9, 0);
    a.group_chat(gid, "one");
    m.c.expect_msgid(10);
    m.group_chat(gid, "two");
    a.c.expect_msgid(10);
    let v = ask(&mut m, json!({"msgid": 23, "groupid": gid}));
    assert_eq!(page(&v), pairs(&[(2, "two"), (1, "one")]));
    assert_eq!(v["groupid"], gid);
    expect_ack(
        &ask(&mut out, json!({"msgid": 23, "groupid": gid})),
        23,
        205,
    );
    expect_ack(
        &ask(&mut out, json!({"msgid": 23, "groupid": 999_999})),
        23,
        202,
    );
    // A one-to-one message between members is another conversation.
    a.chat(m.id, "private");
    m.c.expect_msgid(6);
    let v = ask(&mut a, json!({"msgid": 23, "groupid": gid, "limit": 1}));
    assert_eq!(page(&v), pairs(&[(2, "two")]));
    assert_eq!(v["more"], true);
}

/// PRESENCE goes to friends who opted in when a user logs in, logs out and when its
/// connection drops; a legacy (not opted-in) friend gets nothing.
fn presence_reaches_opted_in_friends(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut watcher = ext_user(server.addr(), "pw");
    let mut legacy = User::online(server.addr(), "pl");
    let mut x = User::register(server.addr(), "px");
    // Both list x as a friend (legacy ADD_FRIEND, one way).
    expect_ack(
        &ask(&mut watcher, json!({"msgid": 7, "friendid": x.id})),
        7,
        0,
    );
    legacy
        .c
        .send(&json!({"msgid": 7, "id": legacy.id, "friendid": x.id}));
    legacy.c.barrier();

    x.login();
    let v = watcher.c.expect_msgid(25);
    assert_eq!(
        v,
        json!({"id": x.id, "msgid": 25, "name": "px", "state": "online"})
    );
    x.c.logout(x.id);
    let v = watcher.c.expect_msgid(25);
    assert_eq!(v["state"], "offline");
    x.login();
    assert_eq!(watcher.c.expect_msgid(25)["state"], "online");
    x.c.shutdown();
    assert_eq!(watcher.c.expect_msgid(25)["state"], "offline");
    watcher.c.expect_quiet();
    legacy.c.expect_quiet();
}

/// FRIEND_REQUEST → notice → FRIEND_REQUESTS lists it → decline; again → accept:
/// mutual friends (both LOGIN_ACKs list each other); asking the other way when a request
/// waits befriends at once; DEL_FRIEND removes both directions.
fn friend_request_accept_decline_remove(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "fa");
    let mut z = ext_user(server.addr(), "fz");
    let mut y = ext_user(server.addr(), "fy");

    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": z.id})), 26, 0);
    let n = expect(&mut z, 27);
    assert_eq!(n, json!({"from": a.id, "msgid": 27, "name": "fa"}));
    let v = ask(&mut z, json!({"msgid": 31}));
    assert_eq!(v["msgid"], 32);
    assert_eq!(v["requests"], json!([{"id": a.id, "name": "fa"}]));
    let v = ask(
        &mut z,
        json!({"msgid": 28, "friendid": a.id, "accept": false}),
    );
    expect_ack(&v, 28, 0);
    let n = expect(&mut a, 29);
    assert_eq!(n["accept"], false);
    assert_eq!(n["from"], z.id);
    expect_ack(
        &ask(
            &mut z,
            json!({"msgid": 28, "friendid": a.id, "accept": true}),
        ),
        28,
        210,
    );
    assert!(ask(&mut z, json!({"msgid": 31}))["requests"] == json!([]));

    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": z.id})), 26, 0);
    expect(&mut z, 27);
    expect_ack(
        &ask(
            &mut z,
            json!({"msgid": 28, "friendid": a.id, "accept": true}),
        ),
        28,
        0,
    );
    assert_eq!(expect(&mut a, 29)["accept"], true);
    expect_ack(
        &ask(&mut a, json!({"msgid": 26, "friendid": z.id})),
        26,
        211,
    );
    let ids = |ack: &Value| -> Vec<i64> {
        parsed(ack, "friends")
            .iter()
            .map(|f| f["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&relogin(&mut a)), vec![z.id]);
    assert_eq!(ids(&relogin(&mut z)), vec![a.id]);

    // y asks a while a's request to y waits: friends at once.
    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": y.id})), 26, 0);
    expect(&mut y, 27);
    expect_ack(&ask(&mut y, json!({"msgid": 26, "friendid": a.id})), 26, 0);
    assert_eq!(expect(&mut a, 29)["from"], y.id);
    assert_eq!(ids(&relogin(&mut y)), vec![a.id]);

    expect_ack(&ask(&mut z, json!({"msgid": 30, "friendid": a.id})), 30, 0);
    expect_ack(
        &ask(&mut z, json!({"msgid": 30, "friendid": a.id})),
        30,
        212,
    );
    assert_eq!(ids(&relogin(&mut a)), vec![y.id]);
    assert!(ids(&relogin(&mut z)).is_empty());
    let me = a.id;
    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": me})), 26, 204);
    expect_ack(
        &ask(&mut a, json!({"msgid": 26, "friendid": 999_999})),
        26,
        201,
    );
}

/// Asking again while one's request waits notifies nobody again: each repeat is
/// ACKed errno 0 with `"repeat":true`, the target gets one FRIEND_REQUEST_NOTICE and
/// lists the request once. Once the target answered (declined), asking again is a new
/// request: it is notified again.
fn a_repeated_friend_request_notifies_once(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "qa");
    let mut z = ext_user(server.addr(), "qz");
    let first = ask(&mut a, json!({"msgid": 26, "friendid": z.id}));
    expect_ack(&first, 26, 0);
    assert_eq!(first.get("repeat"), None, "{first}");
    assert_eq!(expect(&mut z, 27)["from"], a.id);
    let again: Vec<Value> = (0..3)
        .map(|_| ask(&mut a, json!({"msgid": 26, "friendid": z.id})))
        .collect();
    // Every request of a's was handled (notices sent) before the PONG.
    a.c.barrier();
    z.c.expect_quiet();
    for v in &again {
        expect_ack(v, 26, 0);
        assert_eq!(v["repeat"], true, "{v}");
        assert_eq!(v["friendid"], z.id, "{v}");
    }
    let v = ask(&mut z, json!({"msgid": 31}));
    assert_eq!(v["requests"], json!([{"id": a.id, "name": "qa"}]));

    // Declined: a request after the answer is a new one, notified again.
    let v = ask(
        &mut z,
        json!({"msgid": 28, "friendid": a.id, "accept": false}),
    );
    expect_ack(&v, 28, 0);
    assert_eq!(expect(&mut a, 29)["accept"], false);
    let v = ask(&mut a, json!({"msgid": 26, "friendid": z.id}));
    expect_ack(&v, 26, 0);
    assert_eq!(v.get("repeat"), None, "{v}");
    assert_eq!(expect(&mut z, 27)["from"], a.id);
}

/// GROUP_INFO lists members with role and online state; only the creator removes
/// members (the removed one is told and can no longer chat there); a member leaves;
/// when the creator leaves, the lowest remaining id becomes creator.
fn leave_and_remove_members(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut c = ext_user(server.addr(), "gc");
    let mut m1 = ext_user(server.addr(), "gm1");
    let mut m2 = ext_user(server.addr(), "gm2");
    let off = User::register(server.addr(), "goff");
    let v = ask(&mut c, json!({"msgid": 8, "groupname": "g-members"}));
    let gid = v["groupid"].as_i64().unwrap_or_else(|| panic!("{v}"));
    for u in [&mut m1, &mut m2] {
        expect_ack(&ask(u, json!({"msgid": 9, "groupid": gid})), 9, 0);
    }
    let mut offc = off.c;
    offc.login_ok(off.id, &off.pw);
    offc.send(&json!({"msgid": 9, "id": off.id, "groupid": gid}));
    offc.logout(off.id);
    offc.barrier();

    let v = ask(&mut m1, json!({"msgid": 35, "groupid": gid}));
    assert_eq!(v["msgid"], 36, "{v}");
    assert_eq!(v["groupname"], "g-members");
    let users = v["users"].as_array().unwrap();
    assert_eq!(users.len(), 4);
    assert_eq!(
        users[0],
        json!({"id": c.id, "name": "gc", "role": "creator", "state": "online"})
    );
    assert_eq!(users[1]["role"], "normal");
    assert_eq!(
        users[3],
        json!({"id": off.id, "name": "goff", "role": "normal", "state": "offline"})
    );

    let rm = |u: &mut User, who: i64| ask(u, json!({"msgid": 34, "groupid": gid, "userid": who}));
    expect_ack(&rm(&mut m1, m2.id), 34, 213);
    let cid = c.id;
    expect_ack(&rm(&mut c, cid), 34, 215);
    expect_ack(&rm(&mut c, m2.id), 34, 0);
    let n = m2.c.expect_msgid(37);
    assert_eq!(n, json!({"by": c.id, "groupid": gid, "msgid": 37}));
    expect_ack(&rm(&mut c, m2.id), 34, 214);
    expect_ack(&ask(&mut m2, json!({"msgid": 35, "groupid": gid})), 35, 205);
    m2.c.send(
        &json!({"ext": 1, "id": m2.id, "msgid": 10, "groupid": gid, "msg": "x", "name": "gm2"}),
    );
    m2.c.expect_ack(10, 205);

    expect_ack(&ask(&mut m1, json!({"msgid": 33, "groupid": gid})), 33, 0);
    expect_ack(&ask(&mut m1, json!({"msgid": 33, "groupid": gid})), 33, 205);
    expect_ack(
        &ask(&mut m1, json!({"msgid": 33, "groupid": 999_999})),
        33,
        202,
    );
    // m1 left: a group message no longer reaches it.
    c.group_chat(gid, "after");
    c.c.barrier();
    m1.c.expect_quiet();
    // The creator leaves: the one member left (off) becomes creator.
    expect_ack(&ask(&mut c, json!({"msgid": 33, "groupid": gid})), 33, 0);
    let mut offc2 = util::Client::connect(server.addr());
    offc2.send(&json!({"ext": 1, "id": off.id, "msgid": 1, "password": off.pw}));
    offc2.expect_msgid(2);
    offc2.send(&json!({"ext": 1, "id": off.id, "msgid": 35, "groupid": gid}));
    let v = offc2.expect_msgid(36);
    assert_eq!(
        v["users"],
        json!([{"id": off.id, "name": "goff", "role": "creator", "state": "online"}])
    );
}

/// Four writers (as four nodes would) append batches to one conversation at once: every
/// message gets its own seq, and the seqs are exactly 1..=N.
fn concurrent_writers_share_one_sequence(b: &Backend) {
    use chat::store::social::HistoryRecord;
    let store = chat::store::open(&b.url()).expect("open");
    std::thread::scope(|s| {
        for w in 0..4 {
            let store = &store;
            s.spawn(move || {
                for i in 0..25 {
                    let batch: Vec<HistoryRecord> = (0..4)
                        .map(|k| HistoryRecord {
                            conv: 77,
                            sender: w,
                            ts_ms: 1,
                            text: format!(r#"{{"msg":"{w}-{i}-{k}"}}"#),
                        })
                        .collect();
                    store.append_history(&batch).expect("append");
                }
            });
        }
    });
    let page = store.history_page(77, None, 1000).unwrap();
    let seqs: Vec<i64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=400).rev().collect::<Vec<_>>());
    // A batch's messages keep their order within the conversation.
    let pos = |t: &str| page.iter().position(|m| m.text.contains(t)).unwrap();
    assert!(pos("2-7-3") < pos("2-7-0"));
}

/// The creator and the member that would succeed it leave at the same moment: whichever
/// order the two leaves take, the group keeps a creator (the lowest remaining id).
fn creator_and_lowest_member_leave_at_once(b: &Backend) {
    use chat::store::social::LeaveGroup;
    use chat::store::Role;
    let store = chat::store::open(&b.url()).expect("open");
    let users: Vec<i64> = (0..4)
        .map(|i| store.register(&format!("lv{i}"), "x").unwrap().unwrap())
        .collect();
    for trial in 0..40 {
        let gid = store
            .create_group(users[0], &format!("lv-{trial}"), "")
            .unwrap()
            .unwrap();
        for &u in &users[1..] {
            store.join_group(u, gid).unwrap();
        }
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for &u in &users[..2] {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    start.wait();
                    let left = store.leave_group(u, gid).expect("leave");
                    assert!(matches!(left, LeaveGroup::Left { .. }), "{left:?}");
                });
            }
        });
        let members = store.group(gid).unwrap().unwrap().members;
        let roles: Vec<(i64, Role)> = members.iter().map(|m| (m.id, m.role)).collect();
        assert_eq!(
            roles,
            [(users[2], Role::Creator), (users[3], Role::Normal)],
            "trial {trial}"
        );
    }
}

/// The last member (the creator) leaves; the group stays, empty. Whoever joins it next
/// becomes its creator, and can remove a member who joined after.
fn joining_an_empty_group_makes_a_creator(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "ea");
    let mut bb = ext_user(server.addr(), "eb");
    let mut c = ext_user(server.addr(), "ec");
    let v = ask(&mut a, json!({"msgid": 8, "groupname": "g-empty"}));
    let gid = v["groupid"].as_i64().unwrap_or_else(|| panic!("{v}"));
    expect_ack(&ask(&mut a, json!({"msgid": 33, "groupid": gid})), 33, 0);
    expect_ack(&ask(&mut bb, json!({"msgid": 9, "groupid": gid})), 9, 0);
    expect_ack(&ask(&mut c, json!({"msgid": 9, "groupid": gid})), 9, 0);
    let v = ask(&mut c, json!({"msgid": 35, "groupid": gid}));
    assert_eq!(v["msgid"], 36, "{v}");
    assert_eq!(
        v["users"],
        json!([
            {"id": bb.id, "name": "eb", "role": "creator", "state": "online"},
            {"id": c.id, "name": "ec", "role": "normal", "state": "online"},
        ])
    );
    let v = ask(
        &mut bb,
        json!({"msgid": 34, "groupid": gid, "userid": c.id}),
    );
    expect_ack(&v, 34, 0);
    let n = c.c.expect_msgid(37);
    assert_eq!(n, json!({"by": bb.id, "groupid": gid, "msgid": 37}));
}

/// Several users join an empty group at the same moment: exactly one of them becomes
/// its creator, whichever order the joins take.
fn concurrent_joins_of_an_empty_group_make_one_creator(b: &Backend) {
    use chat::store::social::LeaveGroup;
    use chat::store::{JoinGroup, Role};
    let store = chat::store::open(&b.url()).expect("open");
    let users: Vec<i64> = (0..4)
        .map(|i| store.register(&format!("ej{i}"), "x").unwrap().unwrap())
        .collect();
    for trial in 0..40 {
        let gid = store
            .create_group(users[0], &format!("ej-{trial}"), "")
            .unwrap()
            .unwrap();
        let left = store.leave_group(users[0], gid).unwrap();
        assert_eq!(left, LeaveGroup::Left { new_creator: None });
        let start = std::sync::Barrier::new(users.len());
        std::thread::scope(|s| {
            for &u in &users {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    start.wait();
                    assert_eq!(store.join_group(u, gid).expect("join"), JoinGroup::Joined);
                });
            }
        });
        let members = store.group(gid).unwrap().unwrap().members;
        assert_eq!(members.len(), users.len(), "trial {trial}");
        let creators = members.iter().filter(|m| m.role == Role::Creator).count();
        assert_eq!(creators, 1, "trial {trial}: {members:?}");
    }
}

/// The retention sweep removes messages older than the cutoff only, a bounded number of
/// rows at a time.
fn retention_prunes_old_messages(b: &Backend) {
    use chat::store::social::HistoryRecord;
    let store = chat::store::open(&b.url()).expect("open");
    let rec = |ts_ms: i64, t: &str| HistoryRecord {
        conv: 5,
        sender: 1,
        ts_ms,
        text: format!(r#"{{"msg":"{t}"}}"#),
    };
    let batch: Vec<HistoryRecord> = (0..5)
        .map(|i| rec(100 + i, "old"))
        .chain([rec(10_000, "new")])
        .collect();
    store.append_history(&batch).unwrap();
    // At most 3 rows a sweep: three messages on MySQL, the five in one chunk on
    // SQLite (written within a chunk's 2 s of each other), then nothing more.
    let first = store.prune_history(1_000, 3).unwrap();
    assert!(first == 3 || first == 5, "first sweep removed {first}");
    let second = store.prune_history(1_000, 3).unwrap();
    assert_eq!(first + second, 5);
    assert_eq!(store.prune_history(1_000, 3).unwrap(), 0);
    let left = store.history_page(5, None, 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 6);
    assert!(left[0].text.contains("new"));
}

/// A chat to a recipient here that the workers deliver (it came behind another
/// request, so the IO loop could not take it) is kept once, recorded before the
/// recipient sees it. (Mutation testing: with `one_chat_done` recording it again
/// after the delivery, its `&&` turned into `||`, the page had it twice.)
fn a_chat_the_workers_deliver_here_is_kept_once(b: &Backend) {
    fast_hashes();
    let server = b.start();
    let mut a = ext_user(server.addr(), "wa");
    let mut bb = ext_user(server.addr(), "wb");
    let mut burst = util::frame_bytes(&json!({"msgid": 13}));
    burst.extend(util::frame_bytes(&util::one_chat(
        a.id,
        "wa",
        bb.id,
        "behind a ping",
    )));
    a.c.send_raw(&burst);
    expect(&mut a, 14);
    assert_eq!(expect(&mut bb, 6)["msg"], "behind a ping");
    let v = ask(&mut a, json!({"msgid": 23, "peer": bb.id}));
    assert_eq!(page(&v), pairs(&[(1, "behind a ping")]));
}

/// Two nodes on one database and Redis: presence crosses nodes, and a message sent on
/// one node is in the history read on the other, with one sequence for the
/// conversation whichever node wrote. A group chat that reached its members only on
/// another node is kept too. (Mutation testing: with `send_many` recording a chat
/// the bus took, `routed > missed.len()`, made `false`, the group's page was empty.)
#[test]
fn two_nodes_presence_and_history() {
    let b = Backend::mysql();
    fast_hashes();
    let prefix = format!("chat_social_{}", std::process::id());
    let node = |id: &str| cluster_node(&b, &prefix, id);
    let (n1, n2) = (node("n1"), node("n2"));
    let mut a = ext_user(n1.addr(), "xa");
    let mut z = User::register(n2.addr(), "xz");
    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": z.id})), 26, 0);
    z.c.send(&json!({"ext": 1, "id": z.id, "msgid": 1, "password": z.pw}));
    z.c.expect_msgid(2);
    // The request's notice went out through the broadcast while z was offline; it may
    // still reach z's new session (a live notice races a login): skip it.
    let mut v = ask(
        &mut z,
        json!({"msgid": 28, "friendid": a.id, "accept": true}),
    );
    if v["msgid"] == 27 {
        v = next(&mut z);
    }
    expect_ack(&v, 28, 0);
    assert_eq!(a.c.expect_msgid(29)["from"], z.id);
    z.c.send(&json!({"ext": 1, "id": z.id, "msgid": 3}));
    z.c.expect_ack(3, 0);
    assert_eq!(a.c.expect_msgid(25)["state"], "offline");
    z.login();
    assert_eq!(a.c.expect_msgid(25)["state"], "online");

    a.chat(z.id, "from n1");
    z.c.expect_msgid(6);
    // A HISTORY on n1 waits for n1's writer: "from n1" has its seq before z answers.
    assert_eq!(
        page(&ask(&mut a, json!({"msgid": 23, "peer": z.id}))).len(),
        1
    );
    z.chat(a.id, "from n2");
    a.c.expect_msgid(6);
    // Each node's writer commits on its own: poll until both are in.
    let got = poll(util::TIMEOUT, "both messages in history", || {
        let v = ask(&mut z, json!({"msgid": 23, "peer": a.id}));
        let p = page(&v);
        (p.len() == 2).then_some(p)
    });
    assert_eq!(got, pairs(&[(2, "from n2"), (1, "from n1")]));
    let gid = a.create_group("xg");
    z.join_group(gid);
    a.group_chat(gid, "to n2");
    assert_eq!(z.c.expect_msgid(10)["msg"], "to n2");
    let v = ask(&mut a, json!({"msgid": 23, "groupid": gid}));
    assert_eq!(page(&v), pairs(&[(1, "to n2")]), "the group's history");
    drop((n1, n2));
    cleanup_redis(&prefix);
}

/// Across nodes the database decides: a's request, asked again from the node where
/// z is (a notice would be delivered directly) and from the other one (a notice would
/// go through the broadcast), finds the request waiting and notifies nobody again.
/// The next notice z gets is a third user's request, sent after the repeats.
#[test]
fn a_repeated_friend_request_across_nodes_notifies_once() {
    let b = Backend::mysql();
    fast_hashes();
    let prefix = format!("chat_social_repeat_{}", std::process::id());
    let node = |id: &str| cluster_node(&b, &prefix, id);
    let (n1, n2) = (node("r1"), node("r2"));
    let mut a = ext_user(n1.addr(), "ya");
    let mut z = ext_user(n2.addr(), "yz");
    let mut w = ext_user(n1.addr(), "yw");
    expect_ack(&ask(&mut a, json!({"msgid": 26, "friendid": z.id})), 26, 0);
    assert_eq!(expect(&mut z, 27)["from"], a.id);
    // Again from n1, then from n2 (a logs out and in there).
    let from_n1 = ask(&mut a, json!({"msgid": 26, "friendid": z.id}));
    expect_ack(&ask(&mut a, json!({"msgid": 3})), 3, 0);
    let mut a2 = User {
        c: util::Client::connect(n2.addr()),
        id: a.id,
        name: a.name.clone(),
        pw: a.pw.clone(),
    };
    a2.c.send(&json!({"ext": 1, "id": a2.id, "msgid": 1, "password": a2.pw}));
    assert_eq!(a2.c.expect_msgid(2)["errno"], 0);
    let from_n2 = ask(&mut a2, json!({"msgid": 26, "friendid": z.id}));
    a2.c.barrier();
    // A positive control behind the repeats: w's request is the next thing z hears.
    expect_ack(&ask(&mut w, json!({"msgid": 26, "friendid": z.id})), 26, 0);
    assert_eq!(
        expect(&mut z, 27)["from"],
        w.id,
        "a repeated request notified z again"
    );
    for v in [&from_n1, &from_n2] {
        expect_ack(v, 26, 0);
        assert_eq!(v["repeat"], true, "{v}");
    }
    let v = ask(&mut z, json!({"msgid": 31}));
    assert_eq!(
        v["requests"],
        json!([{"id": a.id, "name": "ya"}, {"id": w.id, "name": "yw"}])
    );
    drop((n1, n2));
    cleanup_redis(&prefix);
}

/// A node `id` of the cluster on `b`'s database and the local Redis under `prefix`.
fn cluster_node(b: &Backend, prefix: &str, id: &str) -> ServerThread {
    b.start_with(ServerOptions {
        bus: Some(BusConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: prefix.to_owned(),
            node_id: id.into(),
            node_ttl: Duration::from_secs(5),
            wait: Default::default(),
        }),
        ..ServerOptions::default()
    })
}

/// Removes the test's Redis keys.
fn cleanup_redis(prefix: &str) {
    if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") {
        if let Ok(mut con) = client.get_connection() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut con)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut con);
            }
        }
    }
}
