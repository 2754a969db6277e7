//! Identity is bound to the connection; a closed connection frees its account; a clean
//! shutdown closes every connection and leaves nobody "already online".

mod util;

use std::thread;
use std::time::{Duration, Instant};

use chat::server::ServerOptions;
use chat::server_thread::ServerThread;

use serde_json::json;
use util::{one_chat, Backend, Client, User};

both_backends!(
    requests_before_login_are_refused,
    spoofed_id_is_refused,
    logout_with_another_users_id,
    chats_behind_a_logout_are_refused,
    chats_behind_a_login_of_another_user_are_refused,
    close_without_logout_frees_the_account,
    messages_after_a_close_without_logout_are_stored,
    closed_while_login_runs,
    legacy_plaintext_password_is_rehashed_at_login,
    clean_shutdown_closes_and_frees,
    clean_shutdown_single_loop,
);

/// How long a reply behind deliberately slow password hashes may take on a busy machine.
const SLOW: Duration = Duration::from_secs(60);

#[test]
fn sqlite_clean_shutdown_with_a_stubborn_peer() {
    clean_shutdown_with_a_stubborn_peer(&Backend::sqlite());
}

/// Before login only LOGIN, REG and PING are served: everything else gets 107 and has
/// no effect.
fn requests_before_login_are_refused(b: &Backend) {
    let srv = b.start();
    let mut a = User::register(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    // `a` is registered on its connection but not logged in.
    a.c.send(&one_chat(a.id, "alice", bob.id, "sneaky"));
    a.c.expect_error(107, Some(6));
    a.c.send(&json!({"friendid": bob.id, "id": a.id, "msgid": 7}));
    a.c.expect_error(107, Some(7));
    a.c.send(&json!({"groupdesc": "", "groupname": "g", "id": a.id, "msgid": 8}));
    a.c.expect_error(107, Some(8));
    a.c.send(&json!({"groupid": 1, "id": a.id, "msgid": 9}));
    a.c.expect_error(107, Some(9));
    a.c.send(&util::group_chat(a.id, "alice", 1, "sneaky"));
    a.c.expect_error(107, Some(10));
    a.c.send(&json!({"id": bob.id, "msgid": 3}));
    a.c.expect_error(107, Some(3));
    a.c.barrier();
    bob.c.expect_quiet();
    // Nothing took effect: no friend, no group, no stored message; bob still online.
    let ack = a.login();
    assert_eq!(
        ack.as_object().unwrap().len(),
        4,
        "a bare LOGIN_ACK expected: {ack}"
    );
    a.c.send(&json!({"ext": 1, "groupdesc": "", "groupname": "g", "id": a.id, "msgid": 8}));
    a.c.expect_ack(8, 0);
    let mut other = Client::connect(srv.addr());
    assert_eq!(other.login(bob.id, &bob.pw)["errno"], 2);
}

/// After login, a request under another user's id gets 108 and has no effect: every
/// msgid that carries an acting id (3 is `logout_with_another_users_id`).
fn spoofed_id_is_refused(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::register(srv.addr(), "carol");
    // bob's group, so that a spoofed ADD_GROUP or GROUP_CHAT would have something to do.
    bob.c
        .send(&json!({"ext": 1, "groupdesc": "", "groupname": "bg", "id": bob.id, "msgid": 8}));
    let gid = bob.c.expect_ack(8, 0)["groupid"].as_i64().unwrap();
    a.c.send(&one_chat(carol.id, "carol", bob.id, "from carol, really"));
    a.c.expect_error(108, Some(6));
    a.c.send(&one_chat(carol.id, "carol", carol.id, "to myself"));
    a.c.expect_error(108, Some(6));
    a.c.send(&json!({"friendid": a.id, "id": carol.id, "msgid": 7}));
    a.c.expect_error(108, Some(7));
    a.c.send(&json!({"groupdesc": "", "groupname": "cg", "id": carol.id, "msgid": 8}));
    a.c.expect_error(108, Some(8));
    // carol into bob's group, and a group message as bob (a member) that would reach
    // alice once carol's join had worked, or be stored for carol.
    a.c.send(&json!({"groupid": gid, "id": carol.id, "msgid": 9}));
    a.c.expect_error(108, Some(9));
    a.c.send(&util::group_chat(bob.id, "bob", gid, "from bob, really"));
    a.c.expect_error(108, Some(10));
    a.c.barrier();
    bob.c.expect_quiet();
    // No group, friend or offline message for carol: a bare LOGIN_ACK.
    let ack = carol.c.login_ok(carol.id, &carol.pw);
    assert_eq!(
        ack.as_object().unwrap().len(),
        4,
        "a bare LOGIN_ACK expected: {ack}"
    );
    carol.c.expect_quiet();
    // A real message still flows.
    a.chat(bob.id, "real");
    assert_eq!(bob.c.expect_msgid(6)["name"], "alice");
}

/// LOGINOUT with another user's id is refused and does not log that user out.
fn logout_with_another_users_id(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    a.c.logout(bob.id);
    a.c.expect_error(108, Some(3));
    a.c.barrier();
    // bob is still online: messages reach him live, and his account is still taken.
    a.chat(bob.id, "are you there");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "are you there");
    let mut other = Client::connect(srv.addr());
    assert_eq!(other.login(bob.id, &bob.pw)["errno"], 2);
    // And alice is still logged in too.
    bob.chat(a.id, "yes");
    assert_eq!(a.c.expect_msgid(6)["msg"], "yes");
}

/// Chats read in the same write as a LOGINOUT ahead of them run after it: each is
/// refused (107), none goes out under the user logged in when it was read (the IO
/// loop makes a chat's text as it reads it, for the user of that moment; the
/// worker checks that user is still the session's before it sends).
fn chats_behind_a_logout_are_refused(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut bytes = util::frame_bytes(&json!({"id": a.id, "msgid": 3}));
    for i in 0..20 {
        bytes.extend(util::frame_bytes(&one_chat(
            a.id,
            "alice",
            bob.id,
            &format!("late {i}"),
        )));
    }
    a.c.send_raw(&bytes);
    for _ in 0..20 {
        a.c.expect_error(107, Some(6));
    }
    a.c.barrier();
    a.login();
    a.chat(bob.id, "after the login");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "after the login");
}

/// Chats read in the same write as a LOGINOUT and a LOGIN of another user ahead
/// of them run after both: each is refused as another user's (108), and none
/// reaches its recipient. The IO loop made their text for alice as it read them;
/// the worker finds the session's user changed since and parses them again.
/// (Mutation testing: with that check always passing, `prepared_chat`'s guard →
/// `true`, carol's session sent the chats in alice's name, and every other test
/// passed.)
fn chats_behind_a_login_of_another_user_are_refused(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let carol = User::register(srv.addr(), "carol");
    let mut bytes = util::frame_bytes(&json!({"id": a.id, "msgid": 3}));
    bytes.extend(util::frame_bytes(
        &json!({"id": carol.id, "msgid": 1, "password": carol.pw}),
    ));
    for i in 0..20 {
        bytes.extend(util::frame_bytes(&one_chat(
            a.id,
            "alice",
            bob.id,
            &format!("as alice {i}"),
        )));
    }
    a.c.send_raw(&bytes);
    assert_eq!(a.c.expect_msgid(2)["errno"], 0, "carol's LOGIN_ACK");
    bob.c.expect_quiet();
    for _ in 0..20 {
        a.c.expect_error(108, Some(6));
    }
    a.c.barrier();
}

/// A connection closed without LOGINOUT logs its user out at once (for what is sent to
/// the user meanwhile, see `messages_after_a_close_without_logout_are_stored`).
fn close_without_logout_frees_the_account(b: &Backend) {
    let srv = b.start();
    let a = User::online(srv.addr(), "alice");
    a.c.shutdown();
    drop(a.c);
    let mut c = Client::connect(srv.addr());
    let ack = util::poll(Duration::from_secs(2), "alice freed after close", || {
        let v = c.login(a.id, &a.pw);
        (v["errno"] == 0).then_some(v)
    });
    assert_eq!(ack["name"], "alice");
    c.logout(a.id);
    c.barrier();
}

/// Messages sent to a user right after its connection closed without LOGINOUT are
/// stored, also while the sign-out is still queued behind the connection's earlier
/// requests (eight REGs, each a password hash): the closed session is still in the
/// hub then, and a delivery to it must be refused and stored, not sent into the void.
fn messages_after_a_close_without_logout_are_stored(b: &Backend) {
    let srv = b.start();
    let mut bob = User::online(srv.addr(), "bob");
    let mut a = User::online(srv.addr(), "alice");
    let regs: Vec<u8> = (0..8)
        .flat_map(|i| {
            util::frame_bytes(&json!({"msgid": 4, "name": format!("filler{i}"), "password": "p"}))
        })
        .collect();
    a.c.send_raw(&regs);
    a.c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    // EOF (after whatever REG_ACKs made it): the server has seen the close.
    a.c.expect_eof_after_any();
    bob.chat(a.id, "right after the close");
    bob.c.barrier_within(SLOW);
    let mut c = Client::connect(srv.addr());
    let ack = util::poll(SLOW, "alice freed after the close", || {
        let v = c.login_within(a.id, &a.pw, SLOW);
        (v["errno"] == 0).then_some(v)
    });
    let off = util::parsed(&ack, "offlinemsg");
    assert_eq!(off.len(), 1, "{ack}");
    assert_eq!(off[0]["msg"], "right after the close");
}

/// A connection that closes while its LOGIN runs (a deliberately slow password hash):
/// the login is undone, so the account is free again, and the offline messages it took
/// are stored again, in order, with what arrived for the user meanwhile after them.
/// The next LOGIN waits behind it (one worker), so it cannot take the messages first.
fn closed_while_login_runs(b: &Backend) {
    let store = chat::store::open(&b.url()).expect("open the store");
    let pw = "pw-slow";
    let alice = store
        .register("alice", &slow_hash(pw))
        .unwrap()
        .expect("alice registered");
    // One worker: requests run one at a time in arrival order, so the closed login
    // finishes (and is undone) before the next LOGIN of alice is looked at.
    let srv = b.start_with(ServerOptions {
        workers: 1,
        ..ServerOptions::default()
    });
    let mut bob = User::online(srv.addr(), "bob");
    for i in 0..3 {
        bob.chat(alice, &format!("before {i}"));
    }
    bob.c.barrier();
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"id": alice, "msgid": 1, "password": pw}));
    c.shutdown();
    drop(c);
    bob.chat(alice, "during");
    bob.c.barrier_within(SLOW);
    let mut d = Client::connect(srv.addr());
    let ack = util::login_when_free(&mut d, alice, pw, SLOW);
    let msgs = util::offline_msgs(&ack);
    assert_eq!(
        msgs,
        ["before 0", "before 1", "before 2", "during"],
        "{ack}"
    );
}

/// An argon2id hash of `pw` that takes a good fraction of a second to check.
fn slow_hash(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(32 * 1024, 4, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"closed-while-login").unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A password stored in plaintext by the legacy server is accepted once at login and
/// replaced by an argon2 hash then; a wrong password neither logs in nor re-hashes.
fn legacy_plaintext_password_is_rehashed_at_login(b: &Backend) {
    let store = chat::store::open(&b.url()).expect("open the store");
    let id = store
        .register("oldtimer", "plain-pw")
        .unwrap()
        .expect("registered with a plaintext password");
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    assert_eq!(c.login(id, "plain-pw-wrong")["errno"], 1);
    assert_eq!(store.user(id).unwrap().unwrap().password, "plain-pw");
    c.login_ok(id, "plain-pw");
    let stored = store.user(id).unwrap().unwrap().password;
    assert!(stored.starts_with("$argon2"), "not re-hashed: {stored:?}");
    assert_eq!(
        chat::password::verify(&stored, "plain-pw"),
        chat::password::Verified::Ok
    );
    c.logout(id);
    c.barrier();
    // The hash works at the next login; the plaintext no longer matches byte for byte.
    c.login_ok(id, "plain-pw");
    c.logout(id);
    c.barrier();
    assert_eq!(c.login(id, "$argon2")["errno"], 1);
}

/// Waits for EOF on each client on its own thread, then closes it, as a real client
/// does when the server goes away.
fn close_on_eof(clients: Vec<Client>) -> Vec<thread::JoinHandle<()>> {
    clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                c.expect_eof();
                drop(c);
            })
        })
        .collect()
}

/// Stops `srv` and checks it was prompt: clients that close on EOF do not hold it up.
fn stop_promptly(srv: ServerThread) {
    let started = Instant::now();
    srv.stop();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop() took {took:?} although every client closed on EOF"
    );
}

/// `ServerThread::stop` with users logged in closes their connections; a new server on
/// the same database lets them log in again, and the `state` column says offline.
fn clean_shutdown_closes_and_frees(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let idle = Client::connect(srv.addr()); // connected, never logged in
    a.chat(bob.id, "before shutdown");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "before shutdown");
    let readers = close_on_eof(vec![a.c, bob.c, idle]);
    stop_promptly(srv);
    for r in readers {
        r.join().expect("a client did not see EOF");
    }

    let store = chat::store::open(&b.url()).expect("reopen the store");
    for id in [a.id, bob.id] {
        let row = store.user(id).unwrap().expect("user kept");
        assert!(
            !row.online,
            "user {id} still marked online after a clean shutdown"
        );
    }
    drop(store);

    let srv = b.start();
    let mut a2 = Client::connect(srv.addr());
    let mut b2 = Client::connect(srv.addr());
    a2.login_ok(a.id, &a.pw);
    b2.login_ok(bob.id, &bob.pw);
    a2.send(&one_chat(a.id, "alice", bob.id, "after restart"));
    assert_eq!(b2.expect_msgid(6)["msg"], "after restart");
    let readers = close_on_eof(vec![a2, b2]);
    stop_promptly(srv);
    for r in readers {
        r.join().expect("a client did not see EOF");
    }
}

/// Every connection lives on the base loop (`io_threads: 0`): stop still closes them.
fn clean_shutdown_single_loop(b: &Backend) {
    let opts = ServerOptions {
        io_threads: 0,
        ..ServerOptions::default()
    };
    let srv = b.start_with(opts.clone());
    let a = User::online(srv.addr(), "alice");
    let readers = close_on_eof(vec![a.c]);
    stop_promptly(srv);
    for r in readers {
        r.join().expect("a client did not see EOF");
    }
    let srv = b.start_with(opts);
    Client::connect(srv.addr()).login_ok(a.id, &a.pw);
}

/// A peer that never closes its side cannot hold `stop()` up forever: after the grace
/// period its connection is closed anyway.
fn clean_shutdown_with_a_stubborn_peer(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let started = Instant::now();
    srv.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "stop() took {took:?}");
    a.c.expect_eof();
}

/// After a LOGINOUT the frames a connection never wrote belong to nobody: a
/// connection logs in as ann, logs out, logs in as bob and reads none of the
/// messages sent to bob; at its close, what was still in its output is dropped,
/// never stored for ann (nor for user 1). (Mutation testing: with
/// `Session::forget_last_user` doing nothing, or remembering user 1, bob's
/// messages went into ann's store and every other test passed.)
#[test]
fn unwritten_frames_after_a_loginout_are_stored_for_nobody() {
    let b = Backend::sqlite();
    let srv = b.start_with(ServerOptions {
        limits: chat::gateway::Limits {
            output_high_water: 64 * 1024,
            ..chat::gateway::Limits::default()
        },
        ..ServerOptions::default()
    });
    let ann = User::register(srv.addr(), "ann");
    let bob = User::register(srv.addr(), "bob");
    let mut sender = User::online(srv.addr(), "cy");
    let mut c = Client::connect(srv.addr());
    c.login_ok(ann.id, &ann.pw);
    c.logout(ann.id);
    c.barrier();
    c.login_ok(bob.id, &bob.pw);
    c.barrier();
    // Far more than the kernel's buffers hold: bob's output reaches its mark, the
    // rest is stored for bob.
    let n = 600;
    let pad = "p".repeat(32 * 1024);
    for i in 0..n {
        sender.chat(bob.id, &format!("{i:04} {pad}"));
    }
    sender.c.barrier();
    let stored = b.stored_for(bob.id);
    assert!(
        stored > 0 && stored < n,
        "{stored} of {n} stored for bob: the congestion path was not taken"
    );
    c.shutdown();
    // Bob's account is free once the close was handled (its frames put back or dropped).
    let mut again = Client::connect(srv.addr());
    util::login_when_free(&mut again, bob.id, &bob.pw, Duration::from_secs(10));
    for (who, id) in [("ann", ann.id), ("cy", sender.id), ("user 1", 1)] {
        assert_eq!(b.stored_for(id), 0, "bob's frames stored for {who}");
    }
}
