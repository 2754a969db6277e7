//! Unit tests of the chat handlers: what history holds when a chat is refused, stored or confirmed.

use std::io::BufReader;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::protocol::Conversation;
use crate::service::history::tests::full_for;
use crate::service::tests::{read_frame, register, request, service_bounded, service_on, Sockets};
use crate::session::tests::at_delivery;
use crate::store::social::conv_key;
use crate::store::tests::SqliteDb;
use crate::store::OfflineLimits;

/// The `msg` fields of chat texts.
fn msgs<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    texts
        .into_iter()
        .map(|t| {
            let v: Value = serde_json::from_str(t).expect("a chat frame's JSON");
            v["msg"].as_str().expect("a msg").to_owned()
        })
        .collect()
}

/// The messages of conversation `conv` in history, oldest first, once the
/// writer wrote what was recorded.
fn history(db: &SqliteDb, service: &ChatService, conv: i64) -> Vec<String> {
    assert!(service.history().flush(Duration::from_secs(10)), "written");
    let page = db.store.history_page(conv, None, 10).expect("a page");
    let texts: Vec<String> = page.into_iter().rev().map(|m| m.text).collect();
    msgs(&texts)
}

/// A new group named `name` created by `creator` and joined by `members`.
fn group(db: &SqliteDb, creator: i64, name: &str, members: &[i64]) -> i64 {
    let g = db.store.create_group(creator, name, "").expect("the store");
    let g = g.expect("a new group");
    for &m in members {
        db.store.join_group(m, g).expect("joined");
    }
    g
}

/// Bounds that hold two messages for a recipient, all from one sender if so.
const TWO: OfflineLimits = OfflineLimits {
    max_messages: 2,
    max_bytes: 1 << 20,
    sender_percent: 100,
};

/// A chat for a recipient here whose output is congested goes to its offline
/// store; once that is full, a chat is refused (ACK 206) and is not kept in
/// history, which holds what the recipient got (protocol.md §10). Seen failing
/// with the chat recorded before the router sent it (as `one_chat_text` did):
/// "alice and bob's history, oldest first", left `["m0", "m1", "m2"]`.
#[test]
fn a_chat_refused_for_a_congested_recipient_here_is_not_in_history() {
    let db = SqliteDb::new();
    let service = service_bounded(&db, true, TWO);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let (a, a_client) = sockets.logged_in(&service, alice, "alice");
    let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
    b.set_congested(true);
    for (cid, msg) in ["m0", "m1", "m2"].into_iter().enumerate() {
        let chat = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob,
            "msg": msg, "cid": cid});
        service.run_job(&a, Job::Request(request(chat)));
    }
    let mut a_client = BufReader::new(a_client);
    let replies: Vec<Value> = (0..3)
        .map(|_| {
            let ack = read_frame(&mut a_client);
            json!([ack["cid"], ack["errno"], ack["stored"]])
        })
        .collect();
    assert_eq!(
        replies,
        [json!([0, 0, 1]), json!([1, 0, 1]), json!([2, 206, null])],
        "alice's replies: [cid, errno, stored]"
    );
    let stored = db.store.take_offline(bob).expect("the store");
    assert_eq!(msgs(&stored), ["m0", "m1"], "bob's offline messages");
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert_eq!(
        history(&db, &service, conv),
        ["m0", "m1"],
        "alice and bob's history, oldest first"
    );
}

/// A group chat refused for every other member (each congested here with a
/// full offline store) reached nobody and is not kept in history; one that
/// reached a member is kept, though refused for another, and so is one to a
/// group of the sender alone (refused for nobody). Seen failing with the group
/// chat recorded before the router sent it (as `group_chat` did): "the history
/// of bob's group", left `["to bob"]`.
#[test]
fn a_group_chat_refused_for_every_member_is_not_in_history() {
    let db = SqliteDb::new();
    let service = service_bounded(&db, true, TWO);
    let sockets = Sockets::start();
    let alice = register(&db, "alice");
    let (bob, carol) = (register(&db, "bob"), register(&db, "carol"));
    let with_bob = group(&db, alice, "b", &[bob]);
    let with_both = group(&db, alice, "bc", &[bob, carol]);
    let alone = group(&db, alice, "a", &[]);
    let (a, a_client) = sockets.logged_in(&service, alice, "alice");
    let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
    let (_c, c_client) = sockets.logged_in(&service, carol, "carol");
    b.set_congested(true);
    for msg in ["m0", "m1"] {
        let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": msg});
        service.run_job(&a, Job::Request(request(chat)));
    }
    let chats = [
        (with_bob, "to bob"),
        (with_both, "to both"),
        (alone, "to me"),
    ];
    for (groupid, msg) in chats {
        let chat = json!({"msgid": msgid::GROUP_CHAT, "ext": 1, "id": alice,
            "groupid": groupid, "msg": msg});
        service.run_job(&a, Job::Request(request(chat)));
    }
    let mut a_client = BufReader::new(a_client);
    let replies: Vec<Value> = (0..2)
        .map(|_| {
            let ack = read_frame(&mut a_client);
            json!([
                ack["groupid"],
                ack["errno"],
                ack["refused"],
                ack["delivered"]
            ])
        })
        .collect();
    assert_eq!(
        replies,
        [
            json!([with_bob, 206, [bob], 0]),
            json!([with_both, 206, [bob], 1])
        ],
        "alice's replies: [groupid, errno, refused, delivered]"
    );
    assert_eq!(
        read_frame(&mut BufReader::new(c_client))["msg"],
        "to both",
        "carol's frame"
    );
    let of = |g: i64| conv_key(alice, Conversation::Group(g)).expect("a group");
    let none: Vec<String> = Vec::new();
    assert_eq!(
        history(&db, &service, of(with_bob)),
        none,
        "the history of bob's group"
    );
    assert_eq!(
        history(&db, &service, of(with_both)),
        ["to both"],
        "the history of bob and carol's group"
    );
    assert_eq!(
        history(&db, &service, of(alone)),
        ["to me"],
        "alice's group"
    );
}

/// A group chat whose other members are all offline reaches nobody at once, yet
/// the store took it for them: it is kept in history (only one refused for
/// every member is not, protocol.md §10).
#[test]
fn a_group_chat_stored_for_every_member_is_in_history() {
    let db = SqliteDb::new();
    let service = service_on(&db, true);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let g = group(&db, alice, "g", &[bob]);
    let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
    let chat = json!({"msgid": msgid::GROUP_CHAT, "id": alice, "groupid": g, "msg": "g"});
    service.run_job(&a, Job::Request(request(chat)));
    let stored = db.store.take_offline(bob).expect("the store");
    assert_eq!(msgs(&stored), ["g"], "bob's offline messages");
    let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
    assert_eq!(
        history(&db, &service, conv),
        ["g"],
        "the history of bob's group"
    );
}

/// A chat the bus took (`Job::Routed`, from a ONE_CHAT request) waits, as one
/// routed at once does, for room in history before the router records it: a
/// queue full for a moment (the writer behind) costs the sender a wait, not the
/// message. Seen failing with `routed`'s `!t.again` made `t.again` (only the fast
/// path's frames, recorded already, wait): "alice and bob's history", left `[]`.
#[test]
fn a_chat_back_from_the_bus_waits_for_room_in_history() {
    let db = SqliteDb::new();
    let service = service_on(&db, true);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
    let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "m"});
    let routed = Routed {
        ticket: RouteTicket {
            to: bob,
            from: alice,
            text: chat.to_string(),
            cid: None,
            again: false,
        },
        // Bob's node took it.
        result: Ok(Vec::new()),
        unfinished: None,
    };
    let full = full_for(service.history(), Duration::from_millis(200));
    service.run_job(&a, Job::Routed(Box::new(routed)));
    full.join().expect("the queue drained");
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert_eq!(
        history(&db, &service, conv),
        ["m"],
        "alice and bob's history"
    );
}

/// A chat read from a request, one-to-one or to a group, waits for room in
/// history before the router takes its locks and records it: a queue full for
/// a moment costs the sender a wait, not the message. Seen failing with
/// `one_chat_text`'s `wait_room()` deleted: "alice and bob's history", left
/// `[]`; with `group_chat`'s: "the history of bob's group", left `[]`.
#[test]
fn chats_from_requests_wait_for_room_in_history() {
    let db = SqliteDb::new();
    let service = service_on(&db, true);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let g = group(&db, alice, "g", &[bob]);
    let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
    let one = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "m"});
    let full = full_for(service.history(), Duration::from_millis(200));
    service.run_job(&a, Job::Request(request(one)));
    full.join().expect("the queue drained");
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert_eq!(
        history(&db, &service, conv),
        ["m"],
        "alice and bob's history"
    );
    let group = json!({"msgid": msgid::GROUP_CHAT, "id": alice, "groupid": g, "msg": "g"});
    let full = full_for(service.history(), Duration::from_millis(200));
    service.run_job(&a, Job::Request(request(group)));
    full.join().expect("the queue drained");
    let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
    assert_eq!(
        history(&db, &service, conv),
        ["g"],
        "the history of bob's group"
    );
}

/// A queue that stays full (the writer stuck behind the database): the first chat
/// waits for room, gives up and is not kept; the next does not wait. Both count in
/// `unkept`. (Seen failing without the `stalled` flag: "the second chat waited 1.0s".)
#[test]
fn chats_under_a_stuck_writer_go_on_unkept() {
    let db = SqliteDb::new();
    let service = service_on(&db, true);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
    let full = full_for(service.history(), Duration::from_secs(3));
    let chat = |m: &str| json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": m});
    let t = Instant::now();
    service.run_job(&a, Job::Request(request(chat("first"))));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    service.run_job(&a, Job::Request(request(chat("second"))));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the second chat waited {:?}",
        t.elapsed()
    );
    assert_eq!(service.history().unkept(), 2);
    full.join().expect("the queue drained");
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert!(history(&db, &service, conv).is_empty(), "nothing kept");
}

/// A recipient whose connection closed is kept in the hub until its sign-out
/// (queued behind its requests): a chat for it then goes to its offline store,
/// and once that is full it is refused and not kept in history, one-to-one or
/// to a group. Seen failing with `to_session`'s `!session.is_closed()` deleted:
/// "alice and bob's history", left `["m"]`; with `deliver_local`'s: "the
/// history of bob's group", left `["g"]`.
#[test]
fn a_chat_refused_for_a_closed_recipient_here_is_not_in_history() {
    let db = SqliteDb::new();
    let service = service_bounded(&db, true, TWO);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let g = group(&db, alice, "g", &[bob]);
    let (a, a_client) = sockets.logged_in(&service, alice, "alice");
    let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
    for _ in 0..2 {
        let refused = db.store.store_offline_many(&[bob], alice, "{}", &TWO);
        assert!(refused.expect("the store").is_empty(), "bob's store fills");
    }
    b.mark_closed();
    let one = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob, "msg": "m"});
    service.run_job(&a, Job::Request(request(one)));
    let group = json!({"msgid": msgid::GROUP_CHAT, "ext": 1, "id": alice, "groupid": g,
        "msg": "g"});
    service.run_job(&a, Job::Request(request(group)));
    let mut a_client = BufReader::new(a_client);
    let replies: Vec<Value> = (0..2)
        .map(|_| {
            let ack = read_frame(&mut a_client);
            json!([ack["reqmsgid"], ack["errno"]])
        })
        .collect();
    assert_eq!(
        replies,
        [
            json!([msgid::ONE_CHAT, 206]),
            json!([msgid::GROUP_CHAT, 206])
        ],
        "alice's replies: [reqmsgid, errno]"
    );
    let none: Vec<String> = Vec::new();
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert_eq!(
        history(&db, &service, conv),
        none,
        "alice and bob's history"
    );
    let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
    assert_eq!(
        history(&db, &service, conv),
        none,
        "the history of bob's group"
    );
}

/// A recipient whose connection closes while the IO loop's fast path hands it a
/// chat (after the path found it open) gets the chat stored, and a sender that
/// asked is told so, before the reply to its next request. Seen failing with
/// `route_again` → (): "bob's offline messages", left `[]`; with `routed_again`
/// → (): "alice's first frame: {"msgid":14}" (the PONG).
#[test]
fn a_chat_for_a_recipient_closing_under_the_fast_path_is_stored_and_confirmed() {
    let db = SqliteDb::new();
    let service = service_on(&db, false);
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let (a, a_client) = sockets.logged_in(&service, alice, "alice");
    let (_b, _b_client) = sockets.logged_in(&service, bob, "bob");
    let chat = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob,
        "msg": "in the gap", "cid": 7});
    // Bob's connection closes after `try_send_local` found it open, as the
    // chat is handed to it.
    let sent = at_delivery(Session::mark_closed, || service.try_fast(&a, request(chat)));
    let job = sent.expect_err("closed after the check: a job for the workers");
    assert!(matches!(job, Job::Route { to, .. } if to == bob), "{job:?}");
    service.run_job(&a, job);
    service.run_job(&a, Job::Request(request(json!({"msgid": msgid::PING}))));
    let stored = db.store.take_offline(bob).expect("the store");
    assert_eq!(msgs(&stored), ["in the gap"], "bob's offline messages");
    let first = read_frame(&mut BufReader::new(a_client));
    let confirmation = (&first["msgid"], &first["cid"], &first["stored"]);
    assert_eq!(
        confirmation,
        (&json!(msgid::ACK), &json!(7), &json!(1)),
        "alice's first frame: {first}"
    );
}

/// A chat a worker delivers to a recipient here is in history before it is
/// handed to the recipient's connection, so a reply recorded from then on (the
/// recipient answering at once) comes after it in the conversation. Seen
/// failing with the router's `record()` moved after `deliver_live` in
/// `to_session` (recorded once delivered): "alice and bob's history, oldest
/// first", left `["reply", "question"]`.
#[test]
fn a_reply_follows_the_chat_it_answers_in_history() {
    let db = SqliteDb::new();
    let service = Arc::new(service_on(&db, true));
    let sockets = Sockets::start();
    let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
    let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
    let (_b, _b_client) = sockets.logged_in(&service, bob, "bob");
    let s = service.clone();
    let reply = json!({"msgid": msgid::ONE_CHAT, "id": bob, "toid": alice, "msg": "reply"});
    let answer = move |to: &Session| {
        assert_eq!(to.user_id(), bob, "only bob gets a frame");
        s.record_chat(bob, alice, &reply.to_string());
    };
    // The workers' path (`one_chat_text`), as for a chat read behind a request.
    let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "question"});
    at_delivery(answer, || service.run_job(&a, Job::Request(request(chat))));
    let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
    assert_eq!(
        history(&db, &service, conv),
        ["question", "reply"],
        "alice and bob's history, oldest first"
    );
}
