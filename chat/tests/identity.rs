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
    close_without_logout_frees_the_account,
    clean_shutdown_closes_and_frees,
    clean_shutdown_single_loop,
);

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

/// After login, a request under another user's id gets 108 and has no effect.
fn spoofed_id_is_refused(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::register(srv.addr(), "carol");
    a.c.send(&one_chat(carol.id, "carol", bob.id, "from carol, really"));
    a.c.expect_error(108, Some(6));
    a.c.send(&one_chat(carol.id, "carol", carol.id, "to myself"));
    a.c.expect_error(108, Some(6));
    a.c.send(&json!({"friendid": a.id, "id": carol.id, "msgid": 7}));
    a.c.expect_error(108, Some(7));
    a.c.send(&json!({"groupdesc": "", "groupname": "cg", "id": carol.id, "msgid": 8}));
    a.c.expect_error(108, Some(8));
    a.c.barrier();
    bob.c.expect_quiet();
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

/// A connection closed without LOGINOUT logs its user out at once; messages sent
/// meanwhile are stored, not lost.
fn close_without_logout_frees_the_account(b: &Backend) {
    let srv = b.start();
    let mut bob = User::online(srv.addr(), "bob");
    let a = User::online(srv.addr(), "alice");
    a.c.shutdown();
    drop(a.c);
    let mut c = Client::connect(srv.addr());
    let ack = util::poll(Duration::from_secs(2), "alice freed after close", || {
        let v = c.login(a.id, &a.pw);
        (v["errno"] == 0).then_some(v)
    });
    assert_eq!(ack["name"], "alice");

    // Close again, this time with a message sent to the closed user right after.
    c.shutdown();
    drop(c);
    let mut c = Client::connect(srv.addr());
    util::poll(
        Duration::from_secs(2),
        "alice freed after second close",
        || {
            let v = c.login(a.id, &a.pw);
            (v["errno"] == 0).then_some(())
        },
    );
    c.logout(a.id);
    c.barrier();
    bob.chat(a.id, "while you were away");
    bob.c.barrier();
    let ack = c.login_ok(a.id, &a.pw);
    let off = util::parsed(&ack, "offlinemsg");
    assert_eq!(off.len(), 1, "{ack}");
    assert_eq!(off[0]["msg"], "while you were away");
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
