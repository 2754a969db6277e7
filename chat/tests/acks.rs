//! Acknowledged delivery (issue 13, protocol.md §12): an ext client that logs in
//! with `"acks":1` gets a `dseq` on every chat frame and acknowledges them with
//! SEQ_ACK (19); a slow reader that drops its connection in the middle of a stream
//! and resumes with its last seq loses nothing and — dropping frames whose `dseq` it
//! has already seen — shows nothing twice, in order; a legacy recipient's bytes do
//! not change. `ACKS_N` sets the number of messages (BENCHMARKS.md runs 9,000).

mod util;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use chat::server_thread::ServerThread;
use util::{Backend, Client, User};

/// Cheap password hashes: the hashing cost is not what these tests are about.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

/// What the recipient shows: every chat frame's `msg` the first time its `dseq`
/// comes, and how many it dropped as already seen.
#[derive(Default)]
struct Shown {
    msgs: Vec<String>,
    seen: HashSet<u64>,
    last: u64,
    dropped: usize,
}

impl Shown {
    /// Takes one chat frame (JSON text): shown unless its `dseq` was seen.
    fn take(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).expect("a JSON chat frame");
        let dseq = v["dseq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no dseq: {text}"));
        assert!(
            text.ends_with(&format!(",\"dseq\":{dseq}}}")),
            "dseq is the last field: {text}"
        );
        if !self.seen.insert(dseq) {
            self.dropped += 1;
            return;
        }
        self.last = self.last.max(dseq);
        self.msgs.push(v["msg"].as_str().expect("msg").to_owned());
    }
}

/// The next frame's JSON text (without its NUL).
fn recv_text(c: &mut Client) -> String {
    let raw = c.recv_raw();
    String::from_utf8(raw[..raw.len() - 1].to_vec()).expect("utf-8")
}

/// Reads chat frames into `shown` until `want` distinct messages were shown,
/// acknowledging every 50 frames; ignores other frames.
fn read_until(c: &mut Client, shown: &mut Shown, want: usize, ack_every: usize) {
    let mut since_ack = 0;
    while shown.msgs.len() < want {
        let text = recv_text(c);
        if !text.contains("\"msgid\":6") {
            continue;
        }
        shown.take(&text);
        since_ack += 1;
        if since_ack >= ack_every {
            c.send(&json!({"msgid": 19, "seq": shown.last, "ext": 1}));
            since_ack = 0;
        }
    }
}

fn slow_reader_drops_and_resumes(b: &Backend) {
    fast_hashes();
    let n: usize = std::env::var("ACKS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    // No rate limit, and room in the store for every message from one sender.
    let mut opts = chat::server::ServerOptions::default();
    opts.limits.rate = 0;
    opts.offline.max_messages = 1_000_000;
    opts.offline.max_bytes = 1 << 30;
    opts.offline.sender_percent = 100;
    let srv = b.start_with(opts);
    let mut r = User::register_on(Client::with_buffers(srv.addr(), 16 * 1024), "reader");
    r.c.send(&json!({"acks": 1, "ext": 1, "id": r.id, "msgid": 1, "password": r.pw}));
    let ack = r.c.expect_msgid(2);
    assert_eq!(ack["errno"], 0, "{ack}");
    let token = ack["token"].as_str().expect("token").to_owned();

    let (addr, rid) = (srv.addr(), r.id);
    let sender = thread::spawn(move || {
        let mut s = User::online(addr, "sender");
        let body = "x".repeat(900);
        for i in 0..n {
            s.chat(rid, &format!("m{i:05} {body}"));
        }
        s.c.barrier_within(Duration::from_secs(120));
    });

    // Read a third, acknowledging as it goes, then read 37 more without an ACK:
    // those are seen by the client but unacknowledged at the server.
    let mut shown = Shown::default();
    read_until(&mut r.c, &mut shown, n / 3, 50);
    r.c.send(&json!({"msgid": 19, "seq": shown.last, "ext": 1}));
    read_until(&mut r.c, &mut shown, n / 3 + 37, usize::MAX);
    r.c.shutdown();
    drop(r.c);

    let mut c = Client::connect(srv.addr());
    c.send(&json!({"ext": 1, "id": rid, "lastseq": shown.last, "msgid": 17, "token": token}));
    let ack = loop {
        let text = recv_text(&mut c);
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["msgid"] == 18 {
            break v;
        }
        eprintln!("before the RESUME_ACK: {text}");
    };
    assert_eq!(ack["errno"], 0, "{ack}");
    // (No `offlinemsg` when nothing was stored.)
    for m in ack["offlinemsg"].as_array().into_iter().flatten() {
        shown.take(m.as_str().expect("a string"));
    }
    read_until(&mut c, &mut shown, n, 50);
    sender.join().expect("sender");

    let expected: Vec<String> = (0..n)
        .map(|i| format!("m{i:05} {}", "x".repeat(900)))
        .collect();
    let lost = expected.iter().filter(|m| !shown.msgs.contains(m)).count();
    assert_eq!(lost, 0, "{lost} of {n} lost");
    assert_eq!(shown.msgs.len(), n, "a duplicate was shown");
    assert!(shown.msgs == expected, "shown out of order");
    assert!(
        shown.dropped >= 37,
        "the 37 seen-but-unacknowledged frames come again and are dropped ({} were)",
        shown.dropped
    );
    eprintln!(
        "acks: {n} sent, 0 lost, 0 shown twice, {} re-delivered and dropped",
        shown.dropped
    );
}

#[test]
fn slow_reader_drops_and_resumes_sqlite() {
    slow_reader_drops_and_resumes(&Backend::sqlite());
}

#[test]
fn slow_reader_drops_and_resumes_mysql() {
    slow_reader_drops_and_resumes(&Backend::mysql());
}

/// A server with no rate limit and room in the store, and an acking reader that was
/// sent a full window plus 200 chats (`{prefix}00000` on) and read the window without
/// acknowledging it. Returns the server, the reader, what it was shown, and how many
/// were sent (every one handled: the sender's barrier).
fn past_a_full_window(b: &Backend, prefix: &str) -> (ServerThread, User, Shown, usize) {
    fast_hashes();
    let mut opts = chat::server::ServerOptions::default();
    opts.limits.rate = 0;
    opts.offline.max_messages = 1_000_000;
    opts.offline.sender_percent = 100;
    let srv = b.start_with(opts);
    let mut r = User::register(srv.addr(), &format!("{prefix}-reader"));
    r.c.send(&json!({"acks": 1, "ext": 1, "id": r.id, "msgid": 1, "password": r.pw}));
    assert_eq!(r.c.expect_msgid(2)["errno"], 0);
    let mut s = User::online(srv.addr(), &format!("{prefix}-sender"));
    let window = chat::acks::WINDOW_FRAMES;
    let n = window + 200;
    for i in 0..n {
        s.chat(r.id, &format!("{prefix}{i:05}"));
    }
    s.c.barrier_within(Duration::from_secs(60));
    let mut shown = Shown::default();
    read_until(&mut r.c, &mut shown, window, usize::MAX);
    (srv, r, shown, n)
}

/// A reader that stops acknowledging is written one full window of frames and is
/// then held back (what follows is stored) until it acknowledges; its SEQ_ACK
/// brings the rest, in order. (Checked: with `Outflow::ack` always false, the
/// full window never drains and the rest never comes.)
#[test]
fn a_full_window_drains_at_the_ack() {
    let b = Backend::sqlite();
    let (_srv, mut r, mut shown, n) = past_a_full_window(&b, "m");
    // Every frame was handled (the sender's barrier): those past the window wait in
    // the server (stored, or spilled in memory when the loop's fast path offered
    // several before the first one raised the flag: a store count > 0 was flaky),
    // not in the reader's socket, where a frame written by now would be readable.
    r.c.expect_quiet();
    r.c.send(&json!({"msgid": 19, "seq": shown.last, "ext": 1}));
    read_until(&mut r.c, &mut shown, n, 50);
    let expected: Vec<String> = (0..n).map(|i| format!("m{i:05}")).collect();
    assert!(shown.msgs == expected, "shown out of order");
    assert_eq!(shown.dropped, 0);
}

/// A legacy recipient (and an ext one that did not ask for acks) gets the frame
/// without `dseq`; a sender's own `dseq` is not forwarded; SEQ_ACK on such a
/// connection is ignored without a reply.
#[test]
fn no_dseq_without_acks() {
    fast_hashes();
    let b = Backend::sqlite();
    let srv = b.start();
    let mut legacy = User::online(srv.addr(), "leg");
    let mut s = User::online(srv.addr(), "snd");
    let mut frame = util::one_chat(s.id, &s.name, legacy.id, "hi");
    frame["dseq"] = json!(7);
    s.c.send(&frame);
    util::expect_bytes(
        &mut legacy.c,
        &util::delivered_one_chat(s.id, &s.name, legacy.id, "hi"),
    );
    legacy.c.send(&json!({"msgid": 19, "seq": 3}));
    legacy.c.barrier();
}

/// The ack window is the session's: after an acking session's LOGINOUT, a login
/// without acks on the same connection gets its frames without `dseq` and is not
/// held back by the old window when it reads without acknowledging (more than a
/// window's worth arrive live). (Checked: without `Outflow::stop_acks` at the
/// LOGINOUT, the first frame carried a dseq.)
#[test]
fn a_login_after_loginout_does_not_inherit_the_window() {
    fast_hashes();
    let b = Backend::sqlite();
    let mut opts = chat::server::ServerOptions::default();
    opts.limits.rate = 0;
    let srv = b.start_with(opts);
    let mut a = User::register(srv.addr(), "ann");
    let bob = User::register(srv.addr(), "bob");
    a.c.send(&json!({"acks": 1, "ext": 1, "id": a.id, "msgid": 1, "password": a.pw}));
    assert_eq!(a.c.expect_msgid(2)["errno"], 0);
    a.c.send(&json!({"ext": 1, "id": a.id, "msgid": 3}));
    a.c.expect_msgid(12);
    a.c.send(&json!({"ext": 1, "id": bob.id, "msgid": 1, "password": bob.pw}));
    assert_eq!(a.c.expect_msgid(2)["errno"], 0);
    let mut s = User::online(srv.addr(), "sid");
    let n = chat::acks::WINDOW_FRAMES + 50;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let text = recv_text(&mut a.c);
            assert!(!text.contains("\"dseq\""), "frame {i}: {text}");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(v["msg"], format!("m{i:05}"), "{text}");
        }
    });
    for i in 0..n {
        s.chat(bob.id, &format!("m{i:05}"));
    }
    s.c.barrier_within(Duration::from_secs(60));
    reader.join().expect("every frame, live, without dseq");
    assert_eq!(b.stored_for(bob.id), 0, "nothing held back");
}

/// SEQ_ACK needs a login like any request other than LOGIN, REG and PING: before
/// one it gets error 107 (and after a LOGINOUT); one sent right behind a LOGIN
/// waits for it and is taken silently.
#[test]
fn seq_ack_before_login_is_refused() {
    fast_hashes();
    let b = Backend::sqlite();
    let srv = b.start();
    let u = User::register(srv.addr(), "early");
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"msgid": 19, "seq": 1}));
    c.expect_error(107, Some(19));
    let mut two =
        util::frame_bytes(&json!({"acks": 1, "ext": 1, "id": u.id, "msgid": 1, "password": u.pw}));
    two.extend(util::frame_bytes(&json!({"msgid": 19, "seq": 1})));
    c.send_raw(&two);
    assert_eq!(c.expect_msgid(2)["errno"], 0);
    c.barrier();
    c.send(&json!({"ext": 1, "id": u.id, "msgid": 3}));
    c.expect_msgid(12);
    c.send(&json!({"msgid": 19, "seq": 2}));
    c.expect_error(107, Some(19));
}

/// A RESUME that takes over a live acking session on the same node: the old one
/// gets error 121; what it was written and did not acknowledge is in the new
/// session's RESUME_ACK (it waited for the old one's close to put it back), with
/// the same `dseq`s, so the client drops what it saw; a frame it never saw (one
/// read by nobody) is shown. (Mutation testing: with `wait_put_back` a no-op, or
/// its limit check `>=` turned `<`, or `set_workers` giving a limit of 0, the
/// RESUME_ACK came without `offlinemsg`: the frames followed it by a flush; with
/// `Session::mark_put_back` a no-op, it came after the wait's whole 2.5 s.)
#[test]
fn a_takeover_gets_the_old_sessions_unacknowledged_frames() {
    fast_hashes();
    let b = Backend::sqlite();
    let srv = b.start();
    let mut s = User::online(srv.addr(), "snd");
    let mut r = User::register(srv.addr(), "rcv");
    r.c.send(&json!({"acks": 1, "ext": 1, "id": r.id, "msgid": 1, "password": r.pw}));
    let ack = r.c.expect_msgid(2);
    let token = ack["token"].as_str().expect("token").to_owned();
    for i in 0..5 {
        s.chat(r.id, &format!("t{i}"));
    }
    s.c.barrier();
    let mut shown = Shown::default();
    read_until(&mut r.c, &mut shown, 4, usize::MAX); // t4 written, never read

    let mut c = Client::connect(srv.addr());
    let sent = std::time::Instant::now();
    c.send(&json!({"ext": 1, "id": r.id, "lastseq": shown.last, "msgid": 17, "token": token}));
    // The old connection still holds t4, unread; then the notice.
    let notice = loop {
        let v: Value = serde_json::from_str(&recv_text(&mut r.c)).unwrap();
        if v["msgid"] == 11 {
            break v;
        }
    };
    assert_eq!(notice["errno"], 121, "{notice}");
    // The old client closes at once (else the server's close waits for it).
    r.c.shutdown();
    let ack = c.expect_frame("RESUME_ACK", |v| v["msgid"] == 18);
    assert_eq!(ack["errno"], 0, "{ack}");
    // It waited for the put-back, not for the wait's limit (2.5 s).
    let waited = sent.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(2),
        "the RESUME was answered after {waited:?}: the put-back was not signalled"
    );
    let again = ack["offlinemsg"]
        .as_array()
        .expect("the unacknowledged frames");
    assert_eq!(again.len(), 5, "{ack}");
    for m in again {
        shown.take(m.as_str().unwrap());
    }
    assert_eq!(shown.msgs, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(shown.dropped, 4);
}

/// An acking LOGIN whose connection closes while it runs (a deliberately slow
/// hash, one worker): its offline messages, stamped into its window, go back to
/// the store once — not once from the window and once more from the undone login.
#[test]
fn an_acking_login_closed_while_it_runs_stores_its_messages_once() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let b = Backend::sqlite();
    let store = chat::store::open(&b.url()).expect("open the store");
    let pw = "pw-slow";
    let params = argon2::Params::new(32 * 1024, 4, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"acking-closed-login").unwrap();
    let slow = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let alice = store.register("alice", &slow).unwrap().expect("alice");
    let srv = b.start_with(chat::server::ServerOptions {
        workers: 1,
        ..Default::default()
    });
    let mut bob = User::online(srv.addr(), "bob");
    for i in 0..3 {
        bob.chat(alice, &format!("before {i}"));
    }
    bob.c.barrier();
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"acks": 1, "ext": 1, "id": alice, "msgid": 1, "password": pw}));
    c.shutdown();
    drop(c);
    bob.chat(alice, "during");
    bob.c.barrier_within(Duration::from_secs(60));
    let mut d = Client::connect(srv.addr());
    let ack = util::login_when_free(&mut d, alice, pw, Duration::from_secs(60));
    let msgs = util::offline_msgs(&ack);
    assert_eq!(
        msgs,
        ["before 0", "before 1", "before 2", "during"],
        "{ack}"
    );
    // A legacy LOGIN: frames the acking session put back lose their dseq.
    assert!(!ack.to_string().contains("dseq"), "{ack}");
}

/// A wave of RESUMEs taking over silent acking sessions (a network blip: the old
/// connections stay open, unread) must not stall the node: a RESUME that waits
/// for its old session's put-back holds a worker, and the put-back needs one, so
/// only half the workers may wait at once. Here 8 take-overs on 2 workers: each
/// answered within one put-back wait (a silent old connection is closed after
/// 2 s), not one after another (they waited 2.5 s each, two at a time, and the
/// last one ~10 s, before); a bystander's PING within a second; and every session
/// gets its unacknowledged frames once, in order.
#[test]
fn a_wave_of_takeovers_does_not_stall_the_node() {
    fast_hashes();
    let b = Backend::sqlite();
    let srv = b.start_with(chat::server::ServerOptions {
        workers: 2,
        ..chat::server::ServerOptions::default()
    });
    const N: usize = 8;
    let mut s = User::online(srv.addr(), "wave-snd");
    let mut olds = Vec::new();
    for i in 0..N {
        let mut r = User::register(srv.addr(), &format!("wave{i}"));
        r.c.send(&json!({"acks": 1, "ext": 1, "id": r.id, "msgid": 1, "password": r.pw}));
        let token = r.c.expect_msgid(2)["token"].as_str().unwrap().to_owned();
        s.chat(r.id, &format!("w{i}a"));
        s.chat(r.id, &format!("w{i}b"));
        olds.push((r, token)); // written to it, never read: unacknowledged
    }
    s.c.barrier();
    let mut bystander = User::online(srv.addr(), "wave-by");
    let addr = srv.addr();
    let waves: Vec<_> = olds
        .iter()
        .map(|(r, token)| {
            let (id, token) = (r.id, token.clone());
            thread::spawn(move || {
                let t = std::time::Instant::now();
                let mut c = Client::connect(addr);
                c.send(&json!({"ext": 1, "id": id, "lastseq": 0, "msgid": 17, "token": token}));
                let ack = c.expect_frame("RESUME_ACK", |v| v["msgid"] == 18);
                let took = t.elapsed();
                assert_eq!(ack["errno"], 0, "{ack}");
                let mut shown = Shown::default();
                for m in ack["offlinemsg"].as_array().into_iter().flatten() {
                    shown.take(m.as_str().unwrap());
                }
                // What was put back after the RESUME_ACK comes as a flush.
                while shown.msgs.len() < 2 {
                    shown.take(&recv_text(&mut c));
                }
                (took, shown.msgs)
            })
        })
        .collect();
    let t = std::time::Instant::now();
    bystander.c.barrier();
    let ping = t.elapsed();
    for (i, w) in waves.into_iter().enumerate() {
        let (took, msgs) = w.join().expect("a resume");
        assert!(
            took < Duration::from_secs(3),
            "RESUME {i} answered after {took:?}"
        );
        assert_eq!(msgs, [format!("w{i}a"), format!("w{i}b")], "session {i}");
    }
    assert!(
        ping < Duration::from_secs(1),
        "a bystander's PING took {ping:?}"
    );
    drop(olds);
}

/// Frames an acking user's window held back in memory (spilled: the window was full
/// when the IO loop was offered them) when that user sends LOGINOUT are the user's:
/// the next user who logs in on the same connection never gets them (the drain that
/// follows that login once sent them: issue #11's "possible cross-user leak"), and
/// they are not lost — the first user gets them at its next login, in order, ahead
/// of the frames stored after them.
#[test]
fn frames_spilled_before_a_loginout_stay_with_their_user() {
    let b = Backend::sqlite();
    let (srv, mut a, _, n) = past_a_full_window(&b, "a");
    let window = chat::acks::WINDOW_FRAMES;
    let bob = User::register(srv.addr(), "spill-b");
    // The first frame past the full window is spilled (and raises the flag that
    // stores the later ones), so fewer than the rest are stored.
    let stored = util::stored_rows(&b.url(), a.id);
    assert!(
        stored < n - window,
        "nothing was spilled ({stored} of the {} past the window stored)",
        n - window
    );
    // LOGINOUT and bob's LOGIN in one write: both are queued before the LOGINOUT's
    // reply is written, so the drain that write asks for runs after bob's login.
    let mut bytes = util::frame_bytes(&json!({"id": a.id, "msgid": 3}));
    bytes.extend(util::frame_bytes(
        &json!({"id": bob.id, "msgid": 1, "password": bob.pw}),
    ));
    a.c.send_raw(&bytes);
    let mut theirs = Vec::new();
    let mut logged_in = false;
    let mut barrier_sent = false;
    loop {
        let v = a.c.recv();
        match v["msgid"].as_i64() {
            Some(2) => {
                assert_eq!(
                    (v["errno"].as_i64(), v["id"].as_i64()),
                    (Some(0), Some(bob.id)),
                    "{v}"
                );
                theirs.extend(util::offline_msgs(&v));
                logged_in = true;
            }
            Some(6) => theirs.push(v["msg"].as_str().unwrap_or_default().to_owned()),
            Some(14) => break,
            _ => {}
        }
        if logged_in && !barrier_sent {
            // Behind the drain queued by the LOGINOUT reply's write.
            a.c.send_raw(b"{\"msgid\":13}\0");
            barrier_sent = true;
        }
    }
    assert!(
        theirs.is_empty(),
        "bob got {} frame(s) addressed to the user before him: {:?}",
        theirs.len(),
        &theirs[..theirs.len().min(5)]
    );
    // Nothing past the window is lost: the spilled frames went back to the store,
    // ahead of the ones stored after them. (The window's frames were written and
    // are not put back at a LOGINOUT, §12.)
    let mut again = Client::connect(srv.addr());
    let ack = again.login_ok(a.id, &a.pw);
    let mut got = util::offline_msgs(&ack);
    again.send_raw(b"{\"msgid\":13}\0");
    loop {
        let v = again.recv();
        match v["msgid"].as_i64() {
            Some(6) => got.push(v["msg"].as_str().unwrap_or_default().to_owned()),
            Some(14) => break,
            _ => {}
        }
    }
    let expected: Vec<String> = (window..n).map(|i| format!("a{i:05}")).collect();
    assert!(
        got == expected,
        "a's frames past the window: {} of {}, first {:?}",
        got.len(),
        expected.len(),
        &got[..got.len().min(3)]
    );
}
