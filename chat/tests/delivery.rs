//! What arrives, exactly and in order: special characters, offline messages, and 500
//! pipelined messages online and offline.

mod util;

use chat::gateway::Limits;
use chat::server::ServerOptions;
use serde_json::{json, Value};
use util::{frame_bytes, one_chat, parsed, strings, Backend, Client, User};

both_backends!(
    special_characters_round_trip,
    offline_messages_in_order_exactly_once,
    pipelined_500_online,
    pipelined_500_offline,
    largest_frame_live_and_offline,
    slow_reader_gets_everything_in_order,
    messages_racing_a_login,
);

/// Strings that broke the legacy server (SQL by string formatting, a `'` lost a message)
/// or that stress escaping and UTF-8.
const NASTY: &[&str] = &[
    r#"say "hi""#,
    r"back\slash \\ \n \u0041",
    "'; DROP TABLE user; --",
    "'); DELETE FROM offlinemessage; --",
    "100% _under_ %_% LIKE",
    "中文消息，你好世界",
    "emoji 😀🎉👨‍👩‍👧 and 𝄞",
    "line1\nline2\r\nline3\ttab",
    "nul-ish \u{1} \u{1f} \u{7f}",
    "{\"msgid\":6}}]{[",
    "",
    " leading and trailing ",
];

/// Names with the same kind of trouble (at most 50 bytes each).
const NAMES: &[&str] = &[
    r#"O'Brien "Q" \"#,
    "'; DROP TABLE user; --",
    "100%_x",
    "张三😀",
    // (A line break is refused in a name since names are checked: a space that
    // does not break, and a backslash-n in two characters, are not.)
    "nbsp\u{a0}inside \\n",
];

/// Names and messages come back byte for byte: live, offline, one-to-one and group,
/// in LOGIN_ACK friend and member lists, and the tables survive.
fn special_characters_round_trip(b: &Backend) {
    let srv = b.start();
    let mut users: Vec<User> = NAMES.iter().map(|n| User::online(srv.addr(), n)).collect();
    let mut off = User::register(srv.addr(), "offline one");
    let (sender, rest) = users.split_first_mut().unwrap();

    for (i, m) in NASTY.iter().enumerate() {
        let to = &mut rest[i % rest.len()];
        sender.chat(to.id, m);
        let got = to.c.expect_msgid(6);
        assert_eq!(got["msg"].as_str(), Some(*m), "live message {m:?}");
        assert_eq!(got["name"].as_str(), Some(sender.name.as_str()));
        sender.chat(off.id, m);
    }
    sender.c.expect_quiet();

    // A group with a troublesome name and description, all users in it.
    let gname = "g'; DROP TABLE allgroup; -- 群 😀";
    let gdesc = "desc \"q\" \\ % _ \n 描述";
    sender.c.send(
        &json!({"ext": 1, "groupdesc": gdesc, "groupname": gname, "id": sender.id, "msgid": 8}),
    );
    let gid = sender.c.expect_ack(8, 0)["groupid"].as_i64().unwrap();
    for u in rest.iter_mut() {
        u.c.send(&json!({"groupid": gid, "id": u.id, "msgid": 9}));
        u.c.barrier();
    }
    // The offline user: every one-to-one message, exact, in order; then it joins the
    // group and goes offline again.
    let ack = off.login();
    let stored = parsed(&ack, "offlinemsg");
    let msgs: Vec<&str> = stored.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(msgs, NASTY.to_vec());
    assert!(stored
        .iter()
        .all(|m| m["name"].as_str() == Some(sender.name.as_str())));
    off.c
        .send(&json!({"groupid": gid, "id": off.id, "msgid": 9}));
    off.c.logout(off.id);
    off.c.barrier();

    for m in NASTY {
        sender.group_chat(gid, m);
        for u in rest.iter_mut() {
            let got = u.c.expect_msgid(10);
            assert_eq!(got["msg"].as_str(), Some(*m), "live group message {m:?}");
            assert_eq!(got["name"].as_str(), Some(sender.name.as_str()));
        }
    }
    sender.c.expect_quiet();
    let ack = off.login();
    let stored = parsed(&ack, "offlinemsg");
    let msgs: Vec<&str> = stored.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(msgs, NASTY.to_vec());
    assert!(stored
        .iter()
        .all(|m| m["groupid"] == gid && m["msgid"] == 10));

    // Friends and members listed with their names exactly.
    for u in rest.iter() {
        sender
            .c
            .send(&json!({"friendid": u.id, "id": sender.id, "msgid": 7}));
        sender.c.expect_ack(7, 0); // this connection opted in above
    }
    let ack = sender.relogin();
    let friends = parsed(&ack, "friends");
    let names: Vec<&str> = friends
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMES[1..].to_vec());
    let g = &parsed(&ack, "groups")[0];
    assert_eq!(g["groupname"].as_str(), Some(gname));
    assert_eq!(g["groupdesc"].as_str(), Some(gdesc));
    let members: Vec<String> = g["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m: Value = serde_json::from_str(s.as_str().unwrap()).unwrap();
            m["name"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut all = NAMES.to_vec();
    all.push("offline one");
    assert_eq!(members, all);
    assert_eq!(ack["name"].as_str(), Some(NAMES[0]));
    // The tables are intact: every user can still log in.
    for u in rest.iter_mut() {
        let ack = u.relogin();
        assert_eq!(ack["name"].as_str(), Some(u.name.as_str()));
    }
}

/// Offline messages from several senders, interleaved, come out in the order they were
/// sent, exactly once; live messages after login come after them.
fn offline_messages_in_order_exactly_once(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut c = User::online(srv.addr(), "carol");
    let mut bob = User::register(srv.addr(), "bob");
    // bob joins alice's group, then goes offline.
    a.c.send(&json!({"ext": 1, "groupname": "g", "id": a.id, "msgid": 8}));
    let gid = a.c.expect_ack(8, 0)["groupid"].as_i64().unwrap();
    bob.c.login_ok(bob.id, &bob.pw);
    bob.c
        .send(&json!({"groupid": gid, "id": bob.id, "msgid": 9}));
    bob.c.logout(bob.id);
    bob.c.barrier();
    let mut expected = Vec::new();
    for i in 0..6 {
        let sender = if i % 3 == 1 { &mut c } else { &mut a };
        let m = format!("offline {i} from {}", sender.name);
        sender.chat(bob.id, &m);
        // Stored before the next sender speaks, so the global order is defined.
        sender.c.barrier();
        expected.push(util::delivered_one_chat(
            sender.id,
            &sender.name,
            bob.id,
            &m,
        ));
    }
    // A group message in between the one-to-one ones.
    a.group_chat(gid, "group while away");
    a.c.barrier();
    expected.push(util::delivered_group_chat(
        a.id,
        "alice",
        gid,
        "group while away",
    ));
    c.chat(bob.id, "last");
    c.c.barrier();
    expected.push(util::delivered_one_chat(c.id, "carol", bob.id, "last"));

    let ack = bob.login();
    assert_eq!(strings(&ack, "offlinemsg"), expected);
    a.chat(bob.id, "live now");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "live now");
    bob.c.expect_quiet();
    // Exactly once: the next login has none.
    let ack = bob.relogin();
    assert!(ack.get("offlinemsg").is_none(), "delivered twice: {ack}");
    // And from a different connection too.
    bob.c.logout(bob.id);
    bob.c.barrier();
    let mut other = util::Client::connect(srv.addr());
    let ack = other.login_ok(bob.id, &bob.pw);
    assert!(ack.get("offlinemsg").is_none(), "delivered twice: {ack}");
}

/// The 500 chat requests of one write, as one byte string.
fn burst(from: &User, to: i64) -> Vec<u8> {
    (0..500)
        .flat_map(|i| frame_bytes(&one_chat(from.id, &from.name, to, &format!("msg #{i:03}"))))
        .collect()
}

/// 500 messages pipelined in one write reach an online recipient complete and in order.
fn pipelined_500_online(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    a.c.send_raw(&burst(&a, bob.id));
    for i in 0..500 {
        let got = bob.c.expect_msgid(6);
        assert_eq!(got["msg"], format!("msg #{i:03}"), "message {i}");
    }
    bob.c.expect_quiet();
    a.c.expect_quiet();
}

/// 500 messages pipelined to an offline recipient arrive in order at the next login.
fn pipelined_500_offline(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::register(srv.addr(), "bob");
    a.c.send_raw(&burst(&a, bob.id));
    a.c.barrier();
    let ack = bob.login();
    let off = parsed(&ack, "offlinemsg");
    assert_eq!(off.len(), 500);
    for (i, m) in off.iter().enumerate() {
        assert_eq!(m["msg"], format!("msg #{i:03}"), "message {i}");
        assert_eq!(m["toid"], bob.id);
    }
    bob.c.expect_quiet();
}

/// A chat frame of exactly the 64 KiB limit, mostly three-byte characters, is delivered
/// live and stored offline intact (the offline column must hold more than 64 KiB of
/// text once the frame is embedded in the LOGIN_ACK).
fn largest_frame_live_and_offline(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::register(srv.addr(), "carol");
    let limit = chat::codec::DEFAULT_FRAME_LIMIT;
    let sized = |to: i64| {
        let empty = one_chat(a.id, "alice", to, "").to_string().len();
        let room = limit - empty;
        let mut msg = "中".repeat(room / 3);
        msg.push_str(&"x".repeat(room % 3));
        let v = one_chat(a.id, "alice", to, &msg);
        assert_eq!(v.to_string().len(), limit);
        (v, msg)
    };
    let (live, msg) = sized(bob.id);
    a.c.send(&live);
    let got = bob.c.expect_msgid(6);
    assert_eq!(got["msg"].as_str(), Some(msg.as_str()));
    let (stored, msg) = sized(carol.id);
    a.c.send(&stored);
    a.c.expect_quiet();
    let ack = carol.login();
    assert_eq!(strings(&ack, "offlinemsg"), vec![stored.to_string()]);
    assert_eq!(
        parsed(&ack, "offlinemsg")[0]["msg"].as_str(),
        Some(msg.as_str())
    );
}

/// A recipient that stops reading (a slow reader) loses nothing: what cannot be queued
/// is stored and flushed when its output drains, all in order, and afterwards the
/// connection serves its requests and live messages again.
fn slow_reader_gets_everything_in_order(b: &Backend) {
    let opts = ServerOptions {
        limits: Limits {
            output_high_water: 64 * 1024,
            ..Limits::default()
        },
        ..ServerOptions::default()
    };
    let srv = b.start_with(opts.clone());
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online_on(Client::with_buffers(srv.addr(), 32 * 1024), "bob");
    // Far more than the socket buffers hold, so the server's output for bob grows.
    let n = 300;
    let pad = "p".repeat(32 * 1024);
    for i in 0..n {
        a.chat(bob.id, &format!("{i:04} {pad}"));
    }
    a.c.barrier();
    // The congestion path was taken: with bob reading nothing, only what fits below the
    // high-water mark (plus the frame that crossed it) and in the kernel's buffers went
    // to his connection; the rest is in the store until his output drains.
    let frame = frame_bytes(&one_chat(a.id, "alice", bob.id, &format!("0000 {pad}"))).len();
    // Plus one page of stored frames (at most 1 MiB): if bob's kernel took the first
    // frames at once, a write-complete drains what was stored so far as a page,
    // which goes out whatever the mark (seen once under load: 2 frames over).
    let queued_max = opts.limits.output_high_water
        + frame
        + util::kernel_in_flight_max(bob.c.stream())
        + (1 << 20);
    let live_max = queued_max.div_ceil(frame);
    let stored = b.stored_for(bob.id);
    assert!(
        stored >= n - live_max && stored < n,
        "{stored} of {n} stored while bob read nothing (at most {live_max} may be queued)"
    );
    for i in 0..n {
        let got = bob.c.expect_msgid(6);
        let msg = got["msg"].as_str().unwrap();
        assert_eq!(&msg[..4], format!("{i:04}"), "message {i} out of order");
    }
    // Drained: the connection reads requests again and messages go live again.
    bob.c.barrier();
    a.chat(bob.id, "after the storm");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "after the storm");
    bob.c.expect_quiet();
    let ack = bob.relogin();
    assert!(ack.get("offlinemsg").is_none(), "delivered twice: {ack}");
}

/// Messages that keep coming while the recipient logs in are neither lost nor
/// duplicated: those stored before the login are in the LOGIN_ACK, the rest follow it
/// live, and together they are exactly the messages sent, in order. The writer keeps
/// sending until the LOGIN_ACK is in, and a little after, so the login really races
/// with the stream: some must come stored and some live.
fn messages_racing_a_login(b: &Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let srv = b.start();
    let a = User::online(srv.addr(), "alice");
    let mut bob = User::register(srv.addr(), "bob");
    let (bob_id, a_id) = (bob.id, a.id);
    let mut sender = a.c;
    let acked = std::sync::Arc::new(AtomicBool::new(false));
    let stop = acked.clone();
    let (started, go) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut i = 0;
        let mut after = 0;
        while after < 20 {
            // Read before the send: a message counted here went out after the test
            // had the LOGIN_ACK, so it cannot have been stored before the login.
            let late = stop.load(Ordering::SeqCst);
            sender.send(&one_chat(a_id, "alice", bob_id, &format!("r{i}")));
            i += 1;
            if i == 50 {
                // The first ones are surely stored; now let bob log in.
                sender.barrier();
                started.send(()).unwrap();
            }
            if i > 50 {
                // Spread the rest over the login, which takes a password hash.
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            if late {
                after += 1;
            }
        }
        sender.barrier();
        i
    });
    go.recv_timeout(util::TIMEOUT).expect("writer started");
    let ack = bob.login();
    acked.store(true, Ordering::SeqCst);
    let mut got: Vec<String> = parsed(&ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect();
    let stored = got.len();
    let n = writer.join().expect("writer");
    assert!(stored >= 50, "only {stored} stored before the login");
    assert!(
        stored + 20 <= n,
        "{stored} of {n} stored: nothing went live"
    );
    while got.len() < n {
        got.push(bob.c.expect_msgid(6)["msg"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(got, expected, "{stored} of them came in the LOGIN_ACK");
    bob.c.expect_quiet();
}

/// Chat frames of every shape the IO loop may forward without building a `Value`
/// (extra fields, spaces, unsorted keys, a spoofed name) or not (escapes, floats,
/// nested values, `ext`) arrive exactly as the `Value` path writes them: keys sorted,
/// compact, the sender's real name, no `ext`.
#[test]
fn chat_frames_of_any_shape_arrive_as_the_value_path_writes_them() {
    let b = Backend::sqlite();
    let srv = b.start();
    let mut from = User::online(srv.addr(), "shape sender");
    let mut to = User::online(srv.addr(), "shape reader");
    let (f, t) = (from.id, to.id);
    let frames = [
        format!(
            r#"{{"msgid":6,"id":{f},"toid":{t},"to":{t},"msg":"plain","name":"x","time":"t"}}"#
        ),
        format!(r#"{{ "time" : "t", "to" : {t}, "msgid" : 6, "msg" : "spaced", "id" : {f} }}"#),
        format!(
            r#"{{"zz":null,"a":true,"b":-7,"msgid":6,"id":{f},"toid":{t},"msg":"日本","time":"t"}}"#
        ),
        format!(r#"{{"msgid":6,"id":{f},"toid":{t},"msg":"esc \"q\" \u0041","time":"t"}}"#),
        format!(r#"{{"msgid":6,"id":{f},"toid":{t},"msg":"m","time":"t","x":1.50,"y":[1, 2]}}"#),
        format!(r#"{{"msgid":6,"id":{f},"toid":{t},"msg":"m","time":"t","ext":1}}"#),
        format!(r#"{{"msgid":6,"id":{f},"toid":{t},"msg":"m","time":"t","n":-0,"k":1e2}}"#),
    ];
    for frame in &frames {
        let mut bytes = frame.clone().into_bytes();
        bytes.push(0);
        from.c.send_raw(&bytes);
        let mut want: Value = serde_json::from_str(frame).unwrap();
        want["name"] = json!("shape sender");
        want.as_object_mut().unwrap().remove("ext");
        let raw = to.c.recv_raw();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            format!("{want}\0"),
            "sent {frame}"
        );
    }
}

/// Chats delivered to a session while its LOGIN is being answered are held until
/// the LOGIN_ACK goes out. If the connection closes meanwhile, they go back to the
/// store with the ACK's offline messages, and the next login gets every chat, in
/// order. The test holds that login between its hub entry and its ACK with a
/// MySQL table lock (its friends are read there). (Mutation testing: with
/// `frame_text` turned into `""` the held chats were lost, into `"xyzzy"` garbage
/// was stored, and every other test passed.)
#[test]
fn chats_held_for_a_login_whose_connection_closed_are_stored() {
    use ::mysql::prelude::Queryable;
    let b = Backend::mysql();
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let bob = User::register(srv.addr(), "bob");
    let opts = ::mysql::Opts::from_url(&b.url()).expect("a MySQL URL");
    let mut lock = ::mysql::Conn::new(opts).expect("connect to MySQL");
    lock.query_drop("LOCK TABLES friend WRITE")
        .expect("lock the friend table");
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"id": bob.id, "msgid": 1, "password": bob.pw}));
    let mut sent = Vec::new();
    let mut chat = |a: &mut User, text: String| {
        let mut v = one_chat(a.id, &a.name, bob.id, &text);
        v["ext"] = json!(1);
        v["cid"] = json!(sent.len());
        a.c.send(&v);
        sent.push(text);
        let ack = a.c.expect_ack(6, 0);
        ack["delivered"] == 1
    };
    // Stored until bob's login has entered the hub; then held for its ACK.
    let deadline = std::time::Instant::now() + util::TIMEOUT;
    let mut i = 0;
    while !chat(&mut a, format!("{i:03} before")) {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's login never held a chat"
        );
        i += 1;
    }
    for j in 0..3 {
        assert!(
            chat(&mut a, format!("{j:03} held")),
            "not held for bob's login"
        );
    }
    c.shutdown();
    // Once the server has seen the close, chats are stored again.
    let deadline = std::time::Instant::now() + util::TIMEOUT;
    let mut k = 0;
    while chat(&mut a, format!("{k:03} after the close")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was never seen"
        );
        k += 1;
    }
    lock.query_drop("UNLOCK TABLES").expect("unlock");
    let mut again = Client::connect(srv.addr());
    let ack = util::login_when_free(&mut again, bob.id, &bob.pw, util::TIMEOUT);
    assert_eq!(util::offline_msgs(&ack), sent, "bob's offline messages");
}
