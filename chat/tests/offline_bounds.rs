//! What one client sends never costs a recipient its messages or the server its
//! memory: a bounded offline store, a paged LOGIN_ACK, and a reader that leaves
//! with unwritten output losing nothing the server still held.

mod util;

use std::io::Read;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use chat::gateway::Limits;
use chat::server::ServerOptions;
use chat::store::OfflineLimits;
use serde_json::{json, Value};
use util::{one_chat, parsed, Backend, Client, User};

both_backends!(
    full_offline_store_refuses_the_new,
    full_member_is_refused_a_group_chat,
    login_ack_is_one_page_and_the_rest_follows,
    reader_that_leaves_loses_nothing_held,
);

/// `one_chat` with the ext opt-in, so refusals are acknowledged.
fn ext_chat(from: &User, to: i64, msg: &str) -> Value {
    let mut v = one_chat(from.id, &from.name, to, msg);
    v["ext"] = json!(1);
    v
}

/// The `msg` of every offline message in a LOGIN_ACK.
fn offline_msgs(ack: &Value) -> Vec<String> {
    parsed(ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect()
}

/// Beyond a recipient's bound a new message is refused (ACK errno 206 to an
/// opted-in sender, nothing to a legacy one), one sender cannot take more than its
/// share, and what was stored before is all delivered, in order.
fn full_offline_store_refuses_the_new(b: &Backend) {
    let srv = b.start_with(ServerOptions {
        offline: OfflineLimits {
            max_messages: 6,
            max_bytes: 1 << 20,
            sender_percent: 50,
        },
        ..ServerOptions::default()
    });
    let mut alice = User::online(srv.addr(), "alice");
    let mut carol = User::online(srv.addr(), "carol");
    let mut bob = User::register(srv.addr(), "bob");
    for i in 0..5 {
        alice.c.send(&ext_chat(&alice, bob.id, &format!("a{i}")));
    }
    // Alice's share is 3: the last two are refused, each acknowledged.
    for _ in 0..2 {
        let ack = alice.c.expect_ack(6, 206);
        assert_eq!(ack["toid"], bob.id);
    }
    alice.c.barrier();
    // A legacy sender gets no reply it would not understand.
    for i in 0..5 {
        carol.chat(bob.id, &format!("c{i}"));
    }
    carol.c.barrier();
    carol.c.expect_quiet();
    let ack = bob.login();
    assert_eq!(offline_msgs(&ack), ["a0", "a1", "a2", "c0", "c1", "c2"]);
    bob.c.expect_quiet();
    // Delivered means room again.
    bob.c.logout(bob.id);
    bob.c.barrier();
    alice.c.send(&ext_chat(&alice, bob.id, "again"));
    alice.c.barrier();
    let ack = bob.login();
    assert_eq!(offline_msgs(&ack), ["again"]);
    // A refused message is not kept in history either: the conversation holds
    // what bob got. (Mutation testing: with `one_chat_text` recording every frame
    // before it is sent, `here || !behind`, a3 and a4 were in it.)
    alice
        .c
        .send(&json!({"ext": 1, "id": alice.id, "msgid": 23, "peer": bob.id}));
    let page = alice.c.expect_msgid(24);
    let msgs: Vec<&str> = page["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["msg"].as_str().expect("msg"))
        .collect();
    assert_eq!(msgs, ["again", "a2", "a1", "a0"], "alice and bob's history");
}

/// A group member whose offline store is full is refused a group chat: the sender
/// gets one reply, errno 206 with `refused` (which member), the `cid` and the counts
/// of the others (that member neither live nor stored), and what was stored before
/// is intact.
/// (Checked: with `send_many`'s stored count `stored - refused` turned into `+`,
/// this fails.)
fn full_member_is_refused_a_group_chat(b: &Backend) {
    let srv = b.start_with(ServerOptions {
        offline: OfflineLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
            sender_percent: 100,
        },
        ..ServerOptions::default()
    });
    let mut alice = User::online(srv.addr(), "alice");
    let mut carol = User::online(srv.addr(), "carol");
    let mut bob = User::online(srv.addr(), "bob");
    let gid = alice.create_group("g");
    carol.join_group(gid);
    bob.join_group(gid);
    bob.c.logout(bob.id);
    bob.c.barrier();
    for i in 0..2 {
        alice.c.send(&ext_chat(&alice, bob.id, &format!("a{i}")));
    }
    alice.c.barrier();
    let mut g = util::group_chat(alice.id, "alice", gid, "to all");
    g["ext"] = json!(1);
    g["cid"] = json!(7);
    alice.c.send(&g);
    let ack = alice.c.expect_ack(10, 206);
    // One request, one reply: no confirmation follows the 206.
    alice.c.barrier();
    assert_eq!(
        (&ack["refused"], &ack["groupid"]),
        (&json!([bob.id]), &json!(gid)),
        "{ack}"
    );
    assert_eq!(
        (&ack["cid"], &ack["delivered"], &ack["stored"]),
        (&json!(7), &json!(1), &json!(0)),
        "{ack}"
    );
    assert_eq!(carol.c.expect_msgid(10)["msg"], "to all");
    let ack = bob.login();
    assert_eq!(offline_msgs(&ack), ["a0", "a1"]);
}

/// A long backlog: the LOGIN_ACK carries only its oldest page (well under
/// 256 KiB), the rest follows as chat frames, in order, and a message sent during
/// the delivery comes after all of it.
fn login_ack_is_one_page_and_the_rest_follows(b: &Backend) {
    let srv = b.start();
    let mut alice = User::online(srv.addr(), "alice");
    let mut bob = User::register(srv.addr(), "bob");
    let n = 60;
    let pad = "p".repeat(16 * 1024);
    for i in 0..n {
        alice.chat(bob.id, &format!("{i:03} {pad}"));
    }
    alice.c.barrier();
    bob.c
        .send(&json!({"id": bob.id, "msgid": 1, "password": bob.pw}));
    let raw = bob.c.recv_raw();
    assert!(raw.len() <= 256 * 1024, "LOGIN_ACK of {} bytes", raw.len());
    let ack: Value = serde_json::from_slice(&raw[..raw.len() - 1]).unwrap();
    assert_eq!(ack["errno"], 0);
    let mut got = offline_msgs(&ack);
    let paged = got.len();
    assert!(paged > 0 && paged < n, "{paged} of {n} in the LOGIN_ACK");
    // The page is what 128 KiB hold (seven of these), not the oldest alone.
    assert!(paged >= 4, "only {paged} of {n} in the LOGIN_ACK");
    alice.chat(bob.id, "late");
    while got.len() < n + 1 {
        got.push(bob.c.expect_msgid(6)["msg"].as_str().unwrap().to_owned());
    }
    let mut expected: Vec<String> = (0..n).map(|i| format!("{i:03} {pad}")).collect();
    expected.push("late".into());
    assert!(got == expected, "out of order ({paged} in the LOGIN_ACK)");
    bob.c.expect_quiet();
    let ack = bob.relogin();
    assert!(ack.get("offlinemsg").is_none(), "delivered twice");
}

/// The numbers (`NNN` at the start of `msg`) of the frames in `bytes`, read from a
/// connection to its end, and whether a torn last frame followed them.
fn numbered_frames(bytes: &[u8]) -> (Vec<usize>, bool) {
    let mut pieces: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
    let torn = !pieces.pop().unwrap_or_default().is_empty();
    let numbers = pieces
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(p).expect("a whole frame");
            v["msg"].as_str().unwrap()[..3].parse().unwrap()
        })
        .collect();
    (numbers, torn)
}

/// A reader that never reads and then leaves: it is signed out at once (its
/// reading was paused), and every message the server still held — in the
/// connection's output, or stored — is delivered at its next login, in order,
/// ahead of newer ones. What the kernel had taken arrives on the old connection
/// before its end (read here to know exactly what it was); a frame the kernel
/// took only part of counts as written.
fn reader_that_leaves_loses_nothing_held(b: &Backend) {
    let srv = b.start_with(ServerOptions {
        limits: Limits {
            output_high_water: 128 * 1024,
            ..Limits::default()
        },
        ..ServerOptions::default()
    });
    let mut alice = User::online(srv.addr(), "alice");
    let bob = User::online(srv.addr(), "bob");
    // More than the socket buffers and the output's mark hold.
    let n = 100;
    let pad = "q".repeat(60 * 1024);
    for i in 0..n {
        alice.chat(bob.id, &format!("{i:03} {pad}"));
        if i % 20 == 19 {
            // Stored ones cost a commit each: keep each wait well within a timeout.
            alice.c.barrier();
        }
    }
    alice.c.barrier();
    // Bob read nothing, and leaves; what the kernel held still reaches him.
    let (id, pw) = (bob.id, bob.pw.clone());
    let old = bob.c.stream();
    old.shutdown(Shutdown::Write).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut kernel = Vec::new();
    (&mut &*old)
        .read_to_end(&mut kernel)
        .expect("the old connection ends");
    let (mut got, torn) = numbered_frames(&kernel);
    assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
    // The torn one counts as written: the rest must all come.
    let held_from = got.len() + usize::from(torn);
    assert!(
        held_from < n,
        "the kernel took everything: nothing was held"
    );
    // Signed out at once: a new login succeeds within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut c, ack) = loop {
        let mut c = Client::connect(srv.addr());
        let ack = c.login(id, &pw);
        if ack["errno"] == 0 {
            break (c, ack);
        }
        assert_eq!(ack["errno"], 2, "{ack}");
        assert!(Instant::now() < deadline, "still 'already online'");
        std::thread::sleep(Duration::from_millis(100));
    };
    alice.chat(id, "newer");
    got.truncate(0);
    let mut msgs = offline_msgs(&ack);
    loop {
        let m = c.expect_msgid(6)["msg"].as_str().unwrap().to_owned();
        if m == "newer" {
            break;
        }
        msgs.push(m);
    }
    got.extend(msgs.iter().map(|m| m[..3].parse::<usize>().unwrap()));
    assert_eq!(
        got,
        (held_from..n).collect::<Vec<_>>(),
        "after the kernel's {held_from}, not everything held came back in order"
    );
    c.expect_quiet();
}
