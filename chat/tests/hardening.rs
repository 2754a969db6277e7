//! Hardening: the limits of README "Limits" (connections, login time, request rate,
//! frame size, pipelining), a slow reader and a flood of malformed input — the
//! server must stay up, bounded in memory, responsive to well-behaved users, and
//! must not lose a message silently. (Outages of the database and Redis: `outages.rs`.)
//!
//! The memory-measuring tests run the `ChatServer` binary as a child process, so its
//! RSS is the server's alone.
//! Measured figures are printed (`cargo test --test hardening -- --nocapture`).

mod hardening_util;
mod util;

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chat::gateway::Limits;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use chat::session::QUEUE_HIGH;
use serde_json::json;

use hardening_util::chats::{assert_exactly_in_order, seq_of, stored_seqs, PING};
use hardening_util::pair::Pair;
use hardening_util::{cpu_secs, malformed, mib, RawReader, RssMonitor, ServerProc};
use util::{frame_bytes, metric, one_chat, settled, spawn_writer, Backend, Client, User};

/// Serialises the tests that load both cores (a child server under a flood), so
/// that their latency and memory figures are their own.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Cheap password hashes for the in-process servers: the hashing cost is not what
/// these tests are about, and it would dominate their time on two cores.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

/// A server on a fresh SQLite database with these limits.
fn start_with_limits(b: &Backend, limits: Limits, frame_limit: usize) -> ServerThread {
    fast_hashes();
    b.start_with(ServerOptions {
        frame_limit,
        limits,
        ..ServerOptions::default()
    })
}

// ---------------------------------------------------------------------------------
// 1. Limits
// ---------------------------------------------------------------------------------

/// Opens a connection and returns it once the server answered a PING; `None` if it
/// was refused with error 112 (and closed).
fn try_admit(addr: std::net::SocketAddr) -> Option<Client> {
    let mut c = Client::connect(addr);
    c.send_raw(PING);
    let v = c.recv();
    if v["msgid"] == 14 {
        return Some(c);
    }
    assert_eq!(v["msgid"], 11, "neither PONG nor an error: {v}");
    assert_eq!(v["errno"], 112, "refused with the wrong errno: {v}");
    c.expect_eof();
    None
}

/// max_connections 5: the 6th and later get error 112 and are closed; closing some
/// admits new ones again, up to the limit.
#[test]
fn limit_max_connections() {
    let b = Backend::sqlite();
    let limits = Limits {
        max_connections: 5,
        ..Limits::default()
    };
    let srv = start_with_limits(&b, limits, chat::codec::DEFAULT_FRAME_LIMIT);
    let mut admitted: Vec<Client> = (0..5)
        .map(|i| try_admit(srv.addr()).unwrap_or_else(|| panic!("connection {i} refused")))
        .collect();
    for _ in 0..3 {
        let mut c = Client::connect(srv.addr());
        let v = c.expect_error(112, None);
        assert_eq!(
            v,
            json!({"errmsg": v["errmsg"], "errno": 112, "msgid": 11}),
            "refusal has extra fields"
        );
        c.expect_eof();
    }
    for c in &mut admitted {
        c.barrier();
    }
    // Close two; the server notices, and two newcomers get in (but not a third).
    for c in admitted.drain(..2) {
        c.shutdown();
    }
    while admitted.len() < 5 {
        let c = util::poll(Duration::from_secs(5), "a slot freed by a close", || {
            try_admit(srv.addr())
        });
        admitted.push(c);
    }
    let mut sixth = Client::connect(srv.addr());
    sixth.expect_error(112, None);
    sixth.expect_eof();
    for c in &mut admitted {
        c.barrier();
    }
}

/// login_timeout 1 s: idle, registering-only and ping-only connections get error 113
/// and are closed after about a second; a connection that logged in (even if it
/// logged out again) stays.
#[test]
fn limit_login_timeout() {
    let b = Backend::sqlite();
    let limits = Limits {
        login_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let srv = start_with_limits(&b, limits, chat::codec::DEFAULT_FRAME_LIMIT);
    let addr = srv.addr();
    let t0 = Instant::now();
    let mut registrar = Client::connect(addr);
    let mut idle = Client::connect(addr);
    let mut pinger = Client::connect(addr);
    let id = registrar.register("patient", "pw");
    let id2 = registrar.register("leaver", "pw");
    let mut user = Client::connect(addr);
    user.login_ok(id, "pw");
    let mut leaver = Client::connect(addr);
    leaver.login_ok(id2, "pw");
    leaver.logout(id2);
    leaver.barrier();

    // The pinger is busy but never logs in: that does not count.
    let pinger_thread = thread::spawn(move || {
        let mut pongs = 0;
        loop {
            pinger.send_raw(PING);
            let v = pinger.recv();
            if v["msgid"] == 14 {
                pongs += 1;
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert_eq!(
                (v["msgid"].as_i64(), v["errno"].as_i64()),
                (Some(11), Some(113)),
                "{v}"
            );
            pinger.expect_eof();
            return pongs;
        }
    });
    for (name, c) in [("idle", &mut idle), ("registrar", &mut registrar)] {
        c.expect_error(113, None);
        let at = t0.elapsed();
        assert!(
            at >= Duration::from_millis(900) && at < Duration::from_secs(4),
            "{name} connection timed out after {at:?}, expected about 1 s"
        );
        c.expect_eof();
    }
    let pongs = pinger_thread.join().expect("pinger");
    assert!(pongs >= 3, "the pinger was closed after only {pongs} PONGs");
    thread::sleep(Duration::from_millis(2500).saturating_sub(t0.elapsed()));
    user.barrier();
    leaver.barrier();
    user.expect_quiet();
    eprintln!("login timeout: idle/registrar/pinger closed at ~1 s ({pongs} PONGs first)");
}

/// rate 50/s, burst 20: of 500 PINGs in one write about 20 are answered and the rest
/// get error 109; the connection stays open and is served again once it slows down.
#[test]
fn limit_rate_pings() {
    let b = Backend::sqlite();
    let limits = Limits {
        rate: 50,
        burst: 20,
        ..Limits::default()
    };
    let srv = start_with_limits(&b, limits, chat::codec::DEFAULT_FRAME_LIMIT);
    let mut c = Client::connect(srv.addr());
    let t0 = Instant::now();
    c.send_raw(&PING.repeat(500));
    let (mut pongs, mut refused) = (0, 0);
    for _ in 0..500 {
        let v = c.recv();
        match (v["msgid"].as_i64(), v["errno"].as_i64()) {
            (Some(14), _) => pongs += 1,
            (Some(11), Some(109)) => {
                assert_eq!(v["reqmsgid"], 13, "{v}");
                refused += 1;
            }
            _ => panic!("unexpected reply to a PING flood: {v}"),
        }
    }
    let took = t0.elapsed().as_secs_f64();
    eprintln!("rate limit, 500 PINGs: {pongs} answered, {refused} refused (109) in {took:.3} s");
    assert_eq!(pongs + refused, 500);
    assert!(pongs >= 20, "the burst of 20 was not honoured: {pongs}");
    let allowed = 20.0 + 50.0 * took + 2.0;
    assert!(
        f64::from(pongs) <= allowed,
        "{pongs} PINGs answered in {took:.3} s, at most {allowed:.0} allowed"
    );
    c.expect_silence(Duration::from_millis(300));
    c.barrier();
}

/// rate 50/s, burst 20: of 500 chats in one write some are refused (109, to the
/// sender); the rest are delivered in order, and delivered + refused == sent.
#[test]
fn limit_rate_chats() {
    let b = Backend::sqlite();
    let limits = Limits {
        rate: 50,
        burst: 20,
        ..Limits::default()
    };
    let srv = start_with_limits(&b, limits, chat::codec::DEFAULT_FRAME_LIMIT);
    let mut a = User::online(srv.addr(), "flooder");
    let mut bob = User::online(srv.addr(), "bob");
    // The logins above took tokens too: start from a full bucket.
    thread::sleep(Duration::from_millis(500));
    let n = 500;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(frame_bytes(&one_chat(
            a.id,
            &a.name,
            bob.id,
            &format!("{i:05} hi"),
        )));
    }
    a.c.send_raw(&bytes);
    // Let the bucket refill a little so that the barrier's PING is served (if it is
    // refused too, try again).
    thread::sleep(Duration::from_millis(300));
    a.c.send_raw(PING);
    let mut refused = 0;
    loop {
        let v = a.c.recv();
        if v["msgid"] == 14 {
            break;
        }
        assert_eq!(
            (v["msgid"].as_i64(), v["errno"].as_i64()),
            (Some(11), Some(109)),
            "{v}"
        );
        match v["reqmsgid"].as_i64() {
            Some(6) => refused += 1,
            Some(13) => {
                thread::sleep(Duration::from_millis(100));
                a.c.send_raw(PING);
            }
            _ => panic!("109 about what? {v}"),
        }
    }
    let delivered: Vec<usize> = (0..n - refused)
        .map(|_| seq_of(&bob.c.expect_msgid(6)))
        .collect();
    bob.c.expect_quiet();
    eprintln!(
        "rate limit, 500 chats: {} delivered, {refused} refused",
        delivered.len()
    );
    assert!(refused > 0, "nothing was rate limited");
    assert!(delivered.len() >= 20, "the burst was not honoured");
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order: {delivered:?}"
    );
    assert_eq!(delivered.len() + refused, n, "delivered + refused != sent");
    // Still open and served at a normal pace.
    a.chat(bob.id, "99999 after");
    assert_eq!(seq_of(&bob.c.expect_msgid(6)), 99999);
}

/// frame_limit 4096: a frame just under it is served; one over it, complete or not,
/// gets error 106 and the close; others are not disturbed.
#[test]
fn limit_frame_size() {
    let b = Backend::sqlite();
    let srv = start_with_limits(&b, Limits::default(), 4096);
    let mut a = User::online(srv.addr(), "big");
    let mut bob = User::online(srv.addr(), "bob");
    let fits = "f".repeat(3900);
    a.chat(bob.id, &fits);
    assert_eq!(bob.c.expect_msgid(6)["msg"], fits.as_str());

    a.chat(bob.id, &"o".repeat(5000));
    let v = a.c.expect_error(106, None);
    assert!(v["errmsg"].as_str().unwrap().contains("4096"), "{v}");
    a.c.expect_eof();

    // Never completed: refused as soon as it passes the limit.
    let mut c = Client::connect(srv.addr());
    let mut open = b"{\"msgid\":13,\"pad\":\"".to_vec();
    open.resize(64 * 1024, b'z');
    c.send_raw(&open);
    c.expect_error(106, None);
    c.expect_eof();

    bob.c.expect_quiet();
    let mut a2 = User::online(srv.addr(), "after");
    a2.chat(bob.id, "still fine");
    assert_eq!(bob.c.expect_msgid(6)["msg"], "still fine");
}

/// A client pipelines 2,000,000 PINGs (26 MB) and reads none of the PONGs: the
/// server answers what the kernel can take and stops reading there, holding at most
/// what one readiness event reads (`net::MAX_READ_BETWEEN_CALLBACKS`), two marks of
/// replies and a full request queue, not a reply or a request for every PING.
///
/// What it holds is measured, not inferred from the writer: the PINGs it took from
/// the socket (written, minus what the kernel still queues at both ends) minus the
/// PONGs it handed back to the kernel (the server's send queue plus the client's
/// receive queue), from `/proc/net/tcp` once nothing moves. Whether the *writer*
/// stalls is not the kernel's promise: the server's receive buffer autotunes up to
/// `tcp_rmem`'s maximum (32 MiB here), and it was seen holding 16 and 21 MB of the
/// flood (the server having taken 5 MB): that made the earlier form of this test,
/// "the writer stalls before 26 MB", fail about 1 run in 4. (Without the fixes it
/// came with the server held 1.3 to 4 MB unanswered, its input buffer ratcheting up
/// by a read budget whenever a callback left a partial frame, and reading on while
/// a drain job had filled the queue: this test failed 2 runs of 6, with 2.27 and
/// 2.54 MB. `net/tests/tcp_server.rs` shows the ratchet every run.)
///
/// Not what kills a no-op `Gateway::on_high_water`: the strand's output gate bounds
/// replies by itself (measured: the same figures with the callback a no-op). That
/// is `websocket.rs` `ws_pings_without_reading_stop_the_reader`.
#[test]
fn pings_without_reading_are_bounded_in_the_server() {
    let _serial = heavy();
    const MARK: usize = 65536;
    let mut srv = backpressure_server(&MARK.to_string());
    let mut a = User::online(srv.addr, "pinger");
    a.c.barrier();
    let n = 2_000_000;
    let frames: Vec<Vec<u8>> = vec![PING.repeat(1000); n / 1000];
    let total = n * PING.len();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(a.c.stream(), frames, written.clone());
    let (sent, client, server) = settled(a.c.stream(), &written);
    srv.assert_alive();
    let taken = sent - client.send - server.recv;
    let answered = server.send + client.recv;
    let held = taken.saturating_sub(answered);
    let bound =
        net::MAX_READ_BETWEEN_CALLBACKS + 2 * MARK + (chat::session::QUEUE_HIGH + 1) * PING.len();
    eprintln!(
        "pings: {:.1} of {:.1} MiB written; the server took {:.1} MiB, answered {:.1} MiB \
         into the kernel, holds {held} B (bound {bound}); {:.1} MiB wait in its receive queue",
        mib_b(sent),
        mib_b(total),
        mib_b(taken),
        mib_b(answered),
        mib_b(server.recv)
    );
    assert!(answered > 0, "no PONG was written");
    assert!(
        held <= bound,
        "the server holds {held} B of PINGs it read and did not answer into the kernel \
         (bound {bound})"
    );
    a.c.shutdown();
    let _ = writer.join();
}

/// MiB of a byte count, for messages.
fn mib_b(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

/// A client pipelines 10,000 requests (8 KiB chats to itself, 80 MiB) and reads no
/// reply: the server stops reading it (the writer stalls) instead of buffering, its
/// RSS stays far below the volume, and once the client reads, every message arrives
/// exactly once, in order.
#[test]
fn limit_pipelining_without_reading() {
    let _serial = heavy();
    let mut srv = backpressure_server("65536");
    let mut a = User::online_on(Client::with_buffers(srv.addr, 64 * 1024), "piper");
    a.c.barrier();
    let base = srv.rss_kib();
    let monitor = RssMonitor::start(srv.pid());
    const N: usize = 10_000;
    let pad = "p".repeat(8 * 1024);
    let written = Arc::new(AtomicUsize::new(0));
    let mut total = 0;
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let f = frame_bytes(&one_chat(a.id, &a.name, a.id, &format!("{i:05} {pad}")));
            total += f.len();
            f
        })
        .collect();
    let writer = spawn_writer(a.c.stream(), frames, written.clone());
    // The writer must stall: no progress for a second while far from done.
    let stalled_at = wait_for_stall(&written, total, Duration::from_secs(1));
    let peak_unread = monitor.stop();
    let monitor = RssMonitor::start(srv.pid());

    // Now read: everything arrives, live, in order (what was stored while the output
    // was full is flushed when it drains).
    let mut r = RawReader::new(a.c.stream());
    let live = hardening_util::chats::read_seqs(&mut r, N, "the pipelining connection");
    assert_eq!(r.pending(), 0, "bytes after the last message");
    writer.join().expect("writer").expect("writer failed");
    let peak_read = monitor.stop();
    let ack = a.relogin();
    let mut all = live.clone();
    all.extend(stored_seqs(&ack));
    srv.assert_alive();
    eprintln!(
        "pipelining: writer stalled after {:.1} of {:.1} MiB; server RSS base {:.1} MiB, \
         peak until the stall {:.1} MiB (+{:.1}), peak while read {:.1} MiB (+{:.1}); \
         {} live + {} stored of {N}",
        stalled_at as f64 / 1048576.0,
        total as f64 / 1048576.0,
        mib(base),
        mib(peak_unread),
        mib(peak_unread.saturating_sub(base)),
        mib(peak_read),
        mib(peak_read.saturating_sub(base)),
        live.len(),
        all.len() - live.len()
    );
    assert_exactly_in_order(&all, N, "pipelined self-chats");
    // Not reading costs the server little: that is the bound that matters. Once read,
    // the 79 MiB flow through its buffers, the stored-and-flushed path (SQLite page
    // caches of several pooled connections) and the allocator's per-thread arenas:
    // measured +9 to +45 MiB, so that bound is only a sanity check.
    for (what, peak, bound) in [("unread", peak_unread, 24), ("read", peak_read, 96)] {
        assert!(
            peak.saturating_sub(base) < bound * 1024,
            "server RSS grew by {:.1} MiB ({what}) for {:.1} MiB pipelined",
            mib(peak - base),
            total as f64 / 1048576.0
        );
    }
}

/// A connection pipelines 60 KB chats behind a LOGIN whose password check takes
/// seconds: its requests queue on the strand meanwhile, and the server stops
/// reading it after about a MiB of queued frames (the strand's byte bound), not
/// after 256 of them (15 MiB): what a sender can make the server hold is bounded
/// in bytes. Measured as the server's RSS while the writer is stalled (kernel
/// socket buffers are not in it).
#[test]
fn queued_request_bytes_are_bounded() {
    let _serial = heavy();
    // The hash must outlast the writer's stall (300 ms without progress) by far:
    // 1 MiB x 1500 passes took ~0.4 s on a quiet machine, and the writer then
    // finished before it stalled ("read all 22 MiB", seen failing 1 run in 3);
    // 6000 passes take ~1.6 s.
    let mut srv = backpressure_extra(&["--argon2-passes", "6000"]);
    let victim = User::register(srv.addr, "qb-victim");
    let mut c = Client::connect(srv.addr);
    let id = c.register("qb-flooder", "pw");
    c.barrier();
    let pad = "q".repeat(60_000);
    let mut frames = vec![frame_bytes(
        &json!({"msgid": 1, "id": id, "password": "pw"}),
    )];
    frames.extend((0..400).map(|i| {
        frame_bytes(&one_chat(
            id,
            "qb-flooder",
            victim.id,
            &format!("{i:05} {pad}"),
        ))
    }));
    // Wait for the stall (no progress for 300 ms) while the hash runs. The RSS
    // bound: 1 MiB queued, the frame being decoded, the input buffer and the
    // hash's 1 MiB; 256 queued frames would be 15 MiB of them.
    let quiet = Duration::from_millis(300);
    let writer = flood_until_stalled(&srv, c.stream(), frames, quiet, "requests");
    // Everything is handled once the check is done: the writer finishes and
    // every chat is stored for the victim, in order.
    writer.join().expect("writer").expect("writer failed");
    assert_eq!(c.expect_msgid(2)["errno"], 0, "the flooder's LOGIN_ACK");
    c.barrier_within(Duration::from_secs(60));
    assert_eq!(
        srv.stored_for(victim.id),
        400,
        "chats stored for the victim"
    );
    srv.assert_alive();
}

/// Frames cut short by a NUL (each refused with error 100) queue behind a LOGIN
/// whose password check takes seconds like any request: the server stops reading
/// the connection at the strand's bound instead of queueing a refusal for every
/// two bytes it reads, and its memory stays flat. (Mutation testing: with
/// `Gateway::decode` dropping the pause that path's refusal reports, the server
/// read the flood for as long as the check ran.)
#[test]
fn nul_cut_frames_count_against_the_queue_bound() {
    let _serial = heavy();
    // A check three times as long as `queued_request_bytes_are_bounded`'s: what
    // is read meanwhile is what an unbounded queue would hold (measured: +7 MiB
    // with 6000 passes at load 19, +1.4 MiB bounded).
    let mut srv = backpressure_extra(&["--argon2-passes", "20000"]);
    let mut c = Client::connect(srv.addr);
    c.barrier();
    // A LOGIN as a user that does not exist costs the hash all the same (and no
    // registration, which would cost one before the flood).
    let mut frames = vec![frame_bytes(
        &json!({"msgid": 1, "id": 424_242, "password": "pw"}),
    )];
    // 24 MiB of `{` NUL: 12 million frames, each cut short.
    frames.extend((0..384).map(|_| b"{\0".repeat(32 * 1024)));
    // A long quiet: the memory is watched for most of the check's time, in
    // which an unbounded queue would go on growing. The RSS bound: 256 queued
    // refusals and the hash's 1 MiB; a refusal per frame read while the check
    // ran would be tens of MiB.
    let quiet = Duration::from_millis(1500);
    let writer = flood_until_stalled(&srv, c.stream(), frames, quiet, "NUL-cut frames");
    srv.assert_alive();
    c.shutdown();
    let _ = writer.join();
}

/// The WebSocket twin of [`nul_cut_frames_count_against_the_queue_bound`]: binary
/// messages (each refused with error 100) behind a slow LOGIN on a WebSocket
/// queue like any request, and the server stops reading them at the strand's
/// bound: while the check runs it has read no more than that many. (Mutation
/// testing: with `Gateway::on_ws_message` dropping the pause a binary message's
/// refusal reports, it read every message of the read that crossed the bound,
/// thousands; the memory bound alone missed it, +7.7 MiB.)
#[test]
fn binary_websocket_messages_count_against_the_queue_bound() {
    let _serial = heavy();
    let mut srv = backpressure_extra(&[
        "--argon2-passes",
        "20000",
        "--ws-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let (addr, admin) = (srv.http_addr("WebSocket"), srv.http_addr("admin"));
    let read = || metric(admin, "chat_frames_in_total{msgid=\"other\"}").unwrap_or(0.0);
    let stream = TcpStream::connect(addr).expect("connect to the WebSocket listener");
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .expect("the upgrade is accepted");
    // A LOGIN as a user that does not exist costs the hash all the same.
    let login = json!({"msgid": 1, "id": 424_242, "password": "pw"});
    ws.send(tungstenite::Message::text(login.to_string()))
        .expect("send the LOGIN");
    // 24 MiB of empty binary messages (FIN and binary, masked, length 0, a zero
    // mask key): 4 million of them.
    let frames = (0..128)
        .map(|_| [0x82, 0x80, 0, 0, 0, 0].repeat(32 * 1024))
        .collect();
    let quiet = Duration::from_millis(1500);
    let writer = flood_until_stalled(&srv, ws.get_ref(), frames, quiet, "binary messages");
    let decoded = read();
    // Nothing came back yet, so the LOGIN's check was still running when the
    // count was read (its reply is written before reading could resume).
    let s = ws.get_ref();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    assert!(
        s.peek(&mut [0]).is_err(),
        "the LOGIN's check ended before the writer stalled: nothing was measured behind it"
    );
    eprintln!("binary messages read behind the LOGIN: {decoded}");
    let bound = (QUEUE_HIGH + 1) as f64;
    assert!(
        decoded <= bound,
        "{decoded} binary messages were read behind a LOGIN (the strand's bound: {bound})"
    );
    srv.assert_alive();
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

/// The TCP twin of [`binary_websocket_messages_count_against_the_queue_bound`], on
/// the IO loop's chat path: a logged-in user's ONE_CHATs behind its own slow REG
/// (the hash runs on a worker, so the strand is busy) are each made into a job on
/// the loop, and the server stops reading them at the strand's bound: while the
/// hash runs it has read no more than that many. (Mutation testing: with
/// `Gateway::decode` dropping the pause that path's job reports, it read every
/// chat of the read that crossed the bound.)
#[test]
fn chats_behind_a_busy_strand_count_against_the_queue_bound() {
    let _serial = heavy();
    // No login time limit: a registration and a login at this cost can take
    // longer than its minute on a loaded machine.
    let mut srv = backpressure_extra(&[
        "--argon2-passes",
        "20000",
        "--admin-addr",
        "127.0.0.1:0",
        "--login-timeout-secs",
        "0",
    ]);
    let admin = srv.http_addr("admin");
    let read = || metric(admin, "chat_frames_in_total{msgid=\"6\"}").unwrap_or(0.0);
    let slow = Duration::from_secs(120);
    let mut c = Client::connect(srv.addr);
    c.send(&json!({"msgid": 4, "name": "cb-flooder", "password": "pw"}));
    let ack: serde_json::Value =
        serde_json::from_slice(c.recv_raw_within(slow).split_last().unwrap().1).unwrap();
    let id = ack["id"].as_i64().expect("the flooder's REG_ACK");
    assert_eq!(
        c.login_within(id, "pw", slow)["errno"],
        0,
        "the flooder's LOGIN"
    );
    let before = read();
    // A REG, whose hash keeps the strand busy, then 24 MiB of small chats to a
    // user that does not exist (each ~100 bytes: one read holds hundreds).
    let mut frames = vec![frame_bytes(
        &json!({"msgid": 4, "name": "cb-other", "password": "pw"}),
    )];
    let chat = frame_bytes(&one_chat(id, "cb-flooder", 424_242, "x"));
    let per = 32 * 1024 / chat.len();
    frames.extend((0..24 * 1024 * 1024 / (per * chat.len())).map(|_| chat.repeat(per)));
    let quiet = Duration::from_millis(1500);
    let writer = flood_until_stalled(&srv, c.stream(), frames, quiet, "chats");
    let decoded = read() - before;
    // Nothing came back yet, so the REG's hash was still running when the count
    // was read (its REG_ACK is written before reading could resume).
    let s = c.stream();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    assert!(
        s.peek(&mut [0]).is_err(),
        "the REG's hash ended before the writer stalled: nothing was measured behind it"
    );
    eprintln!("chats read behind the REG: {decoded}");
    let bound = (QUEUE_HIGH + 1) as f64;
    assert!(
        decoded <= bound,
        "{decoded} chats were read behind a REG (the strand's bound: {bound})"
    );
    srv.assert_alive();
    c.shutdown();
    let _ = writer.join();
}

/// A WebSocket user's binary messages behind its own slow REG pause reading at
/// the strand's bound, and reading stays paused while the user's output drains
/// (a peer's chats delivered to it, each write completing): the stalled writer
/// does not move. (Mutation testing: with `update_reading`'s `||` made `&&`, the
/// first write-complete let the loop read another batch of the flood, up to
/// `READ_BUDGET` reads, into the input buffer. A WebSocket shows it because its
/// layer takes every byte out of the input buffer: on TCP the bytes a pause leaves
/// there are handed back to `on_message` first, which stops reading again.)
#[test]
fn a_paused_websocket_is_not_read_while_its_output_drains() {
    let _serial = heavy();
    // No login time limit: registrations and logins at this cost can take longer
    // than its minute on a loaded machine.
    let mut srv = backpressure_extra(&[
        "--argon2-passes",
        "20000",
        "--ws-addr",
        "127.0.0.1:0",
        "--login-timeout-secs",
        "0",
    ]);
    let addr = srv.http_addr("WebSocket");
    let slow = Duration::from_secs(120);
    let tcp = srv.addr;
    let peer = thread::spawn(move || slow_user(tcp, "pw-peer"));
    let stream = TcpStream::connect(addr).expect("connect to the WebSocket listener");
    stream.set_read_timeout(Some(slow)).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .expect("the upgrade is accepted");
    let mut ask = |v: serde_json::Value| -> serde_json::Value {
        ws.send(tungstenite::Message::text(v.to_string()))
            .expect("send a request");
        match ws.read().expect("a reply") {
            tungstenite::Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    };
    let id = ask(json!({"msgid": 4, "name": "pw-reader", "password": "pw"}))["id"]
        .as_i64()
        .expect("a REG_ACK with an id");
    let ack = ask(json!({"msgid": 1, "id": id, "password": "pw"}));
    assert_eq!(ack["errno"], 0, "the WebSocket user's LOGIN: {ack}");
    let (mut p, peer_id) = peer.join().expect("the peer's login");
    // A REG, whose hash keeps the strand busy, then 24 MiB of empty binary
    // messages (each refused with error 100, a job each): reading pauses.
    let reg = json!({"msgid": 4, "name": "pw-other", "password": "pw"});
    ws.send(tungstenite::Message::text(reg.to_string()))
        .expect("send the REG");
    let frames: Vec<Vec<u8>> = (0..128)
        .map(|_| [0x82, 0x80, 0, 0, 0, 0].repeat(32 * 1024))
        .collect();
    let total = frames.iter().map(Vec::len).sum();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(ws.get_ref(), frames, written.clone());
    let quiet = Duration::from_millis(500);
    let stalled = wait_for_stall(&written, total, quiet);
    // The peer's chats go out to the user one by one, each write completing.
    // Anything else (the REG_ACK) means the hash ended: reading may resume.
    let mut other = None;
    for i in 0..10 {
        p.send(&one_chat(peer_id, "pw-peer", id, &format!("live {i}")));
        loop {
            match ws.read().expect("the peer's chat") {
                tungstenite::Message::Text(t) if t.as_str().contains("live") => break,
                m => other = other.or(Some(m)),
            }
        }
    }
    let after = wait_for_stall(&written, total, quiet);
    if other.is_none() {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        other = ws.read().ok();
    }
    assert_eq!(
        after - stalled,
        0,
        "bytes the server read of a paused connection while its output drained \
         (before the REG's check ended, unless this came: {other:?})"
    );
    assert!(
        other.is_none(),
        "the REG's hash ended before the measure: nothing was measured behind it ({other:?})"
    );
    srv.assert_alive();
    let _ = ws.get_ref().shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

/// A user registered and logged in on a server whose password hashes are slow.
fn slow_user(addr: std::net::SocketAddr, name: &str) -> (Client, i64) {
    let slow = Duration::from_secs(120);
    let mut c = Client::connect(addr);
    c.send(&json!({"msgid": 4, "name": name, "password": "pw"}));
    let raw = c.recv_raw_within(slow);
    let ack: serde_json::Value = serde_json::from_slice(&raw[..raw.len() - 1]).unwrap();
    let id = ack["id"].as_i64().expect("a REG_ACK with an id");
    assert_eq!(c.login_within(id, "pw", slow)["errno"], 0, "{name}'s LOGIN");
    (c, id)
}

/// Writes `frames` to `stream` from a thread until the server stops reading it (no
/// progress for `quiet`), and checks that the server's RSS grew by less than 8 MiB
/// meanwhile; returns the writer. `what` names the flood in the figures.
fn flood_until_stalled(
    srv: &ServerProc,
    stream: &TcpStream,
    frames: Vec<Vec<u8>>,
    quiet: Duration,
    what: &str,
) -> thread::JoinHandle<Result<(), String>> {
    let base = srv.rss_kib();
    let monitor = RssMonitor::start(srv.pid());
    let total: usize = frames.iter().map(Vec::len).sum();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(stream, frames, written.clone());
    let stalled_at = wait_for_stall(&written, total, quiet);
    let grew = monitor.stop().saturating_sub(base);
    eprintln!(
        "queued {what}: writer stalled after {:.1} MiB; server RSS +{:.1} MiB",
        stalled_at as f64 / 1048576.0,
        mib(grew)
    );
    assert!(
        grew < 8 * 1024,
        "server RSS grew by {:.1} MiB while one connection's {what} waited",
        mib(grew)
    );
    writer
}

// ---------------------------------------------------------------------------------
// 2. Slow reader
// ---------------------------------------------------------------------------------

/// 20,000 messages of 1 KiB to a recipient that does not read (high water 256 KiB):
/// another pair keeps chatting with low latency, RSS stays bounded, and once the
/// reader reads, every message arrives live, exactly once, in order, and nothing
/// is left for its next login.
#[test]
fn slow_reader() {
    let _serial = heavy();
    // Without history: its writer's page cache (up to 16 MiB) fills as it writes the
    // flood's 20 MiB, in whichever phase it catches up (on CI once during the drain,
    // behind a locked database: +36.6 MiB), which is not what this test measures.
    let mut srv = backpressure_extra(&["--output-high-water", "262144", "--no-history"]);
    let addr = srv.addr;
    let mut sender = User::online(addr, "sender");
    let mut reader = User::online(addr, "reader");
    let pair = Pair::start(
        User::online(addr, "pair_p"),
        User::online(addr, "pair_q"),
        Duration::from_millis(10),
    );
    const N: usize = 20_000;
    const PER_WRITE: usize = 100;
    let pad = "s".repeat(1000);
    let base = srv.rss_kib();
    let monitor = RssMonitor::start(srv.pid());
    let t0 = Instant::now();
    for k in 0..N / PER_WRITE {
        let mut bytes = Vec::new();
        for i in k * PER_WRITE..(k + 1) * PER_WRITE {
            let text = format!("{i:05} {pad}");
            bytes.extend(frame_bytes(&one_chat(
                sender.id,
                &sender.name,
                reader.id,
                &text,
            )));
        }
        bytes.extend_from_slice(PING);
        sender.c.send_raw(&bytes);
    }
    // A PONG per write: the server has handled every message.
    for _ in 0..N / PER_WRITE {
        sender.c.expect_msgid(14);
    }
    let flood = t0.elapsed();
    let rounds_during = pair.rounds();
    let peak_flood = monitor.stop();
    let lat = pair.stop();
    sender.c.expect_quiet();
    // The backlog went to the store: only what fits below the high-water mark (plus the
    // frame that crossed it) and in the kernel's buffers was queued for the reader —
    // and one drained page (1 MiB): if the kernel took the first frames at once, a
    // write-complete drains what was stored so far as a page, whatever the mark
    // (failed once in a release run: 4,452 queued for at most 4,218 without it).
    let frame = frame_bytes(&one_chat(
        sender.id,
        &sender.name,
        reader.id,
        &format!("00000 {pad}"),
    ))
    .len();
    let queued_max = 262_144 + frame + util::kernel_in_flight_max(reader.c.stream()) + (1 << 20);
    let live_max = queued_max.div_ceil(frame);
    let stored_unread = srv.stored_for(reader.id);
    assert!(
        stored_unread >= N - live_max,
        "{stored_unread} of {N} stored while the reader read nothing (at most {live_max} queued)"
    );

    let monitor = RssMonitor::start(srv.pid());
    let t1 = Instant::now();
    let mut r = RawReader::new(reader.c.stream());
    let live = hardening_util::chats::read_seqs(&mut r, N, "the slow reader");
    assert_eq!(r.pending(), 0, "bytes after the last message");
    let drain = t1.elapsed();
    let peak_drain = monitor.stop();
    let left = srv.stored_for(reader.id);
    let ack = reader.relogin();
    let stored = stored_seqs(&ack);
    srv.assert_alive();
    eprintln!(
        "slow reader: {N} x 1 KiB handled in {:.1} s, read back in {:.1} s; {} live + {} \
         stored at relogin; server RSS base {:.1} MiB, peak while unread {:.1} MiB (+{:.1}), \
         peak while draining {:.1} MiB (+{:.1}); other pair during the flood: {lat}",
        flood.as_secs_f64(),
        drain.as_secs_f64(),
        live.len(),
        stored.len(),
        mib(base),
        mib(peak_flood),
        mib(peak_flood.saturating_sub(base)),
        mib(peak_drain),
        mib(peak_drain.saturating_sub(base)),
    );
    // Everything live as soon as the reader reads (§6: "as soon as the obstacle
    // clears"), nothing left for the next login.
    assert_exactly_in_order(&live, N, "slow reader's messages, live");
    assert_eq!(
        (left, stored.len()),
        (0, 0),
        "left in the store for the next login"
    );
    // While the reader reads nothing, the backlog is in the database, not in memory.
    // When it drains, the backlog (~19 MiB here) comes out of the store one page
    // (1 MiB, router.rs DRAIN_BYTES) at a time as the socket takes it (measured
    // without history, debug: +5.2 to +5.4 MiB unread, +9.9 to +10.3 draining; the
    // whole backlog in memory at once is +20 MiB of text, twice that as frames).
    for (what, peak, bound) in [("unread", peak_flood, 16), ("draining", peak_drain, 24)] {
        assert!(
            peak.saturating_sub(base) < bound * 1024,
            "server RSS grew by {:.1} MiB ({what})",
            mib(peak - base)
        );
    }
    assert!(
        rounds_during >= 20,
        "the other pair chatted only {rounds_during} times during the flood"
    );
    assert!(
        lat.quantile(0.99) < 500.0 && lat.max() < 2000.0,
        "the other pair was slowed down: {lat}"
    );
}

// ---------------------------------------------------------------------------------
// 3. Malformed flood
// ---------------------------------------------------------------------------------

/// 10,000 malformed frames of every kind from 50 connections at once, while two
/// well-behaved users chat: each bad frame gets its error (fatal ones the close), the
/// server stays up with bounded memory, and the good users' messages all arrive in
/// order.
#[test]
fn malformed_flood() {
    let _serial = heavy();
    let mut srv = ServerProc::start(&[]);
    let addr = srv.addr;
    let pair = Pair::start(
        User::online(addr, "good_a"),
        User::online(addr, "good_b"),
        Duration::from_millis(5),
    );
    let base = srv.rss_kib();
    let monitor = RssMonitor::start(srv.pid());
    let (cpu_srv, cpu_me) = (cpu_secs(srv.pid()), cpu_secs(std::process::id()));
    let t0 = Instant::now();
    const THREADS: u64 = 50;
    const PER_THREAD: usize = 200;
    let floods: Vec<_> = (0..THREADS)
        .map(|seed| thread::spawn(move || malformed::flood(addr, seed, PER_THREAD)))
        .collect();
    let mut total = malformed::FloodStats::default();
    let mut failures = Vec::new();
    for h in floods {
        match h.join().expect("flood thread panicked") {
            Ok(s) => {
                total.frames += s.frames;
                total.connections += s.connections;
                total.errors_checked += s.errors_checked;
                total.fatal_closes += s.fatal_closes;
            }
            Err(e) => failures.push(e),
        }
    }
    let took = t0.elapsed();
    let rounds_during = pair.rounds();
    let (cpu_srv, cpu_me) = (
        cpu_secs(srv.pid()) - cpu_srv,
        cpu_secs(std::process::id()) - cpu_me,
    );
    let lat = pair.stop();
    let peak = monitor.stop();
    srv.assert_alive();
    eprintln!(
        "malformed flood: {} frames over {} connections in {:.1} s (CPU: server {cpu_srv:.1} s, \
         test {cpu_me:.1} s), {} error replies checked, {} fatal closes; server RSS base \
         {:.1} MiB, peak {:.1} MiB (+{:.1}); good pair: {lat}",
        total.frames,
        total.connections,
        took.as_secs_f64(),
        total.errors_checked,
        total.fatal_closes,
        mib(base),
        mib(peak),
        mib(peak.saturating_sub(base)),
    );
    assert!(
        failures.is_empty(),
        "{} flood threads failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(total.frames, THREADS as usize * PER_THREAD);
    assert!(
        rounds_during >= 5,
        "the good pair chatted only {rounds_during} times during the flood"
    );
    assert!(lat.max() < 3000.0, "the good pair was stalled: {lat}");
    assert!(
        peak.saturating_sub(base) < 64 * 1024,
        "server RSS grew by {:.1} MiB",
        mib(peak - base)
    );
    // And it still serves newcomers.
    let mut late = User::online(addr, "late");
    late.c.barrier();
}

/// Waits until a writer thread's progress (`written` of `total` bytes) stopped for
/// `quiet`, and returns where; fails if it wrote everything or never stalled
/// within 30 s.
fn wait_for_stall(written: &AtomicUsize, total: usize, quiet: Duration) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        thread::sleep(quiet / 10);
        let now = written.load(Ordering::Relaxed);
        assert!(
            now < total,
            "the server read all {} MiB without the client reading a reply",
            total >> 20
        );
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(Instant::now() < deadline, "the writer never stalled");
    }
}

/// A server for the backpressure tests: no rate limit, output high-water mark `hw`,
/// and room in the offline store for everything (backpressure, not the offline
/// bounds, is under test there).
fn backpressure_server(hw: &str) -> ServerProc {
    backpressure_extra(&["--output-high-water", hw])
}

/// [`backpressure_server`]'s options (default high-water mark) plus `extra`.
fn backpressure_extra(extra: &[&str]) -> ServerProc {
    let mut args = vec![
        "--rate",
        "0",
        "--offline-max-messages",
        "1000000",
        "--offline-max-bytes",
        "1073741824",
        "--offline-sender-percent",
        "100",
    ];
    args.extend_from_slice(extra);
    ServerProc::start(&args)
}
