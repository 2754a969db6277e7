//! The client-facing extensions of issue 14: a chat sent with a `cid` is confirmed
//! (delivered or stored, with the `cid`), and CONTACTS (15) lists friends and groups
//! with live presence. Legacy peers never see either.

mod util;

use serde_json::{json, Value};
use util::{expect_bytes, parsed, Backend, Client, User};

both_backends!(
    one_chat_with_cid_is_confirmed_delivered_or_stored,
    group_chat_with_cid_counts_live_and_stored,
    no_cid_or_no_ext_means_no_confirmation,
    contacts_lists_friends_and_groups_with_presence,
);

/// A ONE_CHAT from an opted-in sender with a `cid`.
fn chat_cid(from: &User, to: i64, msg: &str, cid: i64) -> Value {
    let mut v = util::one_chat(from.id, &from.name, to, msg);
    v["ext"] = json!(1);
    v["cid"] = json!(cid);
    v
}

fn one_chat_with_cid_is_confirmed_delivered_or_stored(b: &Backend) {
    let srv = b.start();
    let mut alice = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let carol = User::register(srv.addr(), "carol");

    // Online recipient: delivered, and the recipient's frame carries neither ext nor cid.
    alice.c.send(&chat_cid(&alice, bob.id, "hi", 7));
    let ack = alice.c.expect_ack(6, 0);
    assert_eq!(
        (&ack["cid"], &ack["delivered"], &ack["stored"]),
        (&json!(7), &json!(1), &json!(0)),
        "{ack}"
    );
    assert_eq!(ack["errmsg"], "delivered", "{ack}");
    expect_bytes(
        &mut bob.c,
        &util::delivered_one_chat(alice.id, "alice", bob.id, "hi"),
    );

    // Offline recipient: stored for later.
    alice.c.send(&chat_cid(&alice, carol.id, "later", 8));
    let ack = alice.c.expect_ack(6, 0);
    assert_eq!(ack["errmsg"], "stored for later", "{ack}");
    assert_eq!(
        (&ack["cid"], &ack["stored"], &ack["toid"]),
        (&json!(8), &json!(1), &json!(carol.id))
    );

    // A refusal names the cid too.
    alice.c.send(&chat_cid(&alice, 999_999, "nobody", 9));
    let ack = alice.c.expect_ack(6, 201);
    assert_eq!((&ack["cid"], &ack["toid"]), (&json!(9), &json!(999_999)));

    // A cid that is not a non-negative integer is a protocol error.
    let mut bad = chat_cid(&alice, bob.id, "x", 1);
    bad["cid"] = json!("one");
    alice.c.send(&bad);
    alice.c.expect_error(105, Some(6));
    bad["cid"] = json!(-1);
    alice.c.send(&bad);
    alice.c.expect_error(105, Some(6));
    alice.c.expect_quiet();
    bob.c.expect_quiet();
}

fn group_chat_with_cid_counts_live_and_stored(b: &Backend) {
    let srv = b.start();
    let mut alice = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::online(srv.addr(), "carol");
    let gid = {
        alice.c.send(
            &json!({"ext": 1, "groupdesc": "", "groupname": "g", "id": alice.id, "msgid": 8}),
        );
        alice.c.expect_ack(8, 0)["groupid"].as_i64().unwrap()
    };
    for u in [&mut bob, &mut carol] {
        u.c.send(&json!({"ext": 1, "groupid": gid, "id": u.id, "msgid": 9}));
        u.c.expect_ack(9, 0);
    }
    carol.c.send(&json!({"ext": 1, "id": carol.id, "msgid": 3}));
    carol.c.expect_ack(3, 0);
    carol.c.barrier();

    let mut g = util::group_chat(alice.id, "alice", gid, "all");
    g["ext"] = json!(1);
    g["cid"] = json!(42);
    alice.c.send(&g);
    let ack = alice.c.expect_ack(10, 0);
    assert_eq!(
        (
            &ack["cid"],
            &ack["delivered"],
            &ack["stored"],
            &ack["groupid"]
        ),
        (&json!(42), &json!(1), &json!(1), &json!(gid)),
        "{ack}"
    );
    expect_bytes(
        &mut bob.c,
        &util::delivered_group_chat(alice.id, "alice", gid, "all"),
    );
    // The stored copy has no cid either.
    let login = carol.login();
    let stored = util::strings(&login, "offlinemsg");
    assert_eq!(
        stored,
        [util::delivered_group_chat(alice.id, "alice", gid, "all")]
    );

    // Not a member: the refusal carries the cid.
    let mut dave = User::online(srv.addr(), "dave");
    let mut g = util::group_chat(dave.id, "dave", gid, "let me in");
    g["ext"] = json!(1);
    g["cid"] = json!(43);
    dave.c.send(&g);
    let ack = dave.c.expect_ack(10, 205);
    assert_eq!(ack["cid"], 43, "{ack}");
}

fn no_cid_or_no_ext_means_no_confirmation(b: &Backend) {
    let srv = b.start();
    let mut alice = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    // A legacy client that happens to send a cid gets the legacy silence.
    let mut v = util::one_chat(alice.id, "alice", bob.id, "legacy");
    v["cid"] = json!(1);
    alice.c.send(&v);
    expect_bytes(
        &mut bob.c,
        &util::delivered_one_chat(alice.id, "alice", bob.id, "legacy"),
    );
    alice.c.expect_quiet();
    // An opted-in client without a cid: a successful chat still gets no ACK.
    let mut v = util::one_chat(alice.id, "alice", bob.id, "ext");
    v["ext"] = json!(1);
    alice.c.send(&v);
    bob.c.expect_msgid(6);
    alice.c.expect_quiet();
}

fn contacts_lists_friends_and_groups_with_presence(b: &Backend) {
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"ext": 1, "id": 1, "msgid": 15}));
    c.expect_error(107, Some(15));

    let mut alice = User::online(srv.addr(), "alice");
    let bob = User::online(srv.addr(), "bob");
    let carol = User::register(srv.addr(), "carol");
    for f in [bob.id, carol.id] {
        alice
            .c
            .send(&json!({"ext": 1, "friendid": f, "id": alice.id, "msgid": 7}));
        alice.c.expect_ack(7, 0);
    }
    // No friends, no groups: both lists present and empty.
    let mut lone = User::online(srv.addr(), "lone");
    lone.c.send(&json!({"id": lone.id, "msgid": 15}));
    expect_bytes(
        &mut lone.c,
        r#"{"errno":0,"friends":[],"groups":[],"msgid":16}"#,
    );

    alice
        .c
        .send(&json!({"ext": 1, "groupdesc": "d", "groupname": "g", "id": alice.id, "msgid": 8}));
    let gid = alice.c.expect_ack(8, 0)["groupid"].as_i64().unwrap();
    alice
        .c
        .send(&json!({"ext": 1, "id": alice.id, "msgid": 15}));
    let v = alice.c.expect_msgid(16);
    assert_eq!(v["errno"], 0, "{v}");
    let friends = parsed(&v, "friends");
    assert_eq!(
        friends,
        [
            json!({"id": bob.id, "name": "bob", "state": "online"}),
            json!({"id": carol.id, "name": "carol", "state": "offline"}),
        ]
    );
    let groups = parsed(&v, "groups");
    assert_eq!(groups.len(), 1, "{v}");
    assert_eq!(groups[0]["id"], gid);
    assert_eq!(groups[0]["groupname"], "g");
    let members: Vec<Value> = groups[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        members,
        [json!({"id": alice.id, "name": "alice", "role": "creator", "state": "online"})]
    );
    // Someone else's id is refused.
    alice.c.send(&json!({"ext": 1, "id": bob.id, "msgid": 15}));
    alice.c.expect_error(108, Some(15));
}

/// A chat's confirmation never overtakes the reply to an earlier request of the
/// same connection: a REG (whose password hash keeps a worker busy for a while)
/// and, in a write of its own while that runs, a chat with a `cid`: the REG_ACK
/// comes first, then the chat's ACK. (Mutation testing: with `Session::is_idle`
/// true while a job of the connection runs, the IO loop's fast path sent the
/// chat and its ACK ahead of the REG_ACK, and every other test passed.)
#[test]
fn a_confirmation_follows_the_reply_to_an_earlier_request() {
    let b = Backend::sqlite();
    let srv = b.start();
    let mut alice = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    for i in 0..3 {
        alice
            .c
            .send(&json!({"ext": 1, "msgid": 4, "name": format!("newbie{i}"), "password": "pw"}));
        // Let a worker take the REG before the chat is read.
        std::thread::sleep(std::time::Duration::from_millis(20));
        alice
            .c
            .send(&chat_cid(&alice, bob.id, &format!("after reg {i}"), i));
        let first = alice.c.recv();
        assert_eq!(first["msgid"], 5, "the REG_ACK must come first: {first}");
        let ack = alice.c.expect_ack(6, 0);
        assert_eq!(ack["cid"], i, "{ack}");
        assert_eq!(bob.c.expect_msgid(6)["msg"], format!("after reg {i}"));
    }
}
