//! A slow reader's stored backlog flushes to the end once it reads again (issue
//! #12): thousands of chats go to a recipient that reads nothing, so all but what
//! the kernel and the output high-water mark hold are stored; then the recipient
//! reads, and every message must arrive live, from the first, once, in order, with
//! nothing left in the store — over TCP (marks of 64 and 256 KiB), over a
//! WebSocket, and for a reader that reads in bursts while the flood goes on.
//!
//! The receivers' socket buffers are capped at 32 KiB *before* `connect`
//! (`util::connect_with_buffers`). Capped after it (the window scale was agreed
//! for a large buffer), a receive buffer of 4–16 KiB on loopback (MSS 64 KiB)
//! made the *kernel* send only on its persist timer (`ss -tnoi` showed the
//! server's socket holding ~3 MB with `timer:(persist…)`, its user space idle),
//! a few KB/s — the "delivery stops partway" seen with SO_RCVBUF 4096, which no
//! server change can speed up. (Set before `connect`, 4096 bytes are no problem:
//! a plain socket pair moved 1 MB in 0.0 s that way, 42.9 s the other.)

mod hardening_util;
mod util;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chat::gateway::Limits;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use chat::store::OfflineLimits;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use hardening_util::chats::{assert_exactly_in_order, read_seqs, seq_of, PING};
use hardening_util::RawReader;
use util::{Backend, Client, User};

/// How long a WebSocket reader may see nothing while messages are still due (the
/// TCP readers use `read_seqs`'s 10 s): far longer than a page takes to go out,
/// far shorter than waiting for a next login.
const GAP: Duration = Duration::from_secs(10);
/// The receivers' socket buffers (see the module comment).
const RCVBUF: usize = 32 * 1024;

/// A server with a low output high-water mark, no rate limit and an offline store
/// that takes the whole backlog (the bounds are not what this is about).
fn start(db: &Backend, high_water: usize) -> ServerThread {
    let _ = chat::password::set_cost(1024, 1);
    db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        limits: Limits {
            output_high_water: high_water,
            rate: 0,
            ..Limits::default()
        },
        offline: OfflineLimits {
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
            sender_percent: 100,
        },
        ..ServerOptions::default()
    })
}

/// A logged-in sender on a new connection.
fn sender(srv: &ServerThread) -> (Client, i64) {
    let mut c = Client::connect(srv.addr());
    let id = c.register("sender", "pw");
    c.login_ok(id, "pw");
    (c, id)
}

/// Sends `n` chats of `size` bytes numbered from 0 from `from` to `to`, 100 per
/// write each followed by a PING, and waits for every PONG: every chat was handled
/// (delivered below the mark or stored) when it returns.
fn flood(sender: &mut Client, from: i64, to: i64, n: usize, size: usize) {
    let pad = "s".repeat(size);
    for k in 0..n.div_ceil(100) {
        let mut bytes = Vec::new();
        for i in k * 100..((k + 1) * 100).min(n) {
            let chat = util::one_chat(from, "sender", to, &format!("{i:05} {pad}"));
            bytes.extend(util::frame_bytes(&chat));
        }
        bytes.extend_from_slice(PING);
        sender.send_raw(&bytes);
    }
    for _ in 0..n.div_ceil(100) {
        sender.expect_msgid(14);
    }
}

/// What arrived live is `0..n` and nothing is left in the store.
fn assert_all_live(got: &[usize], n: usize, left: usize, what: &str) {
    assert_exactly_in_order(got, n, what);
    assert_eq!(left, 0, "{what}: messages left in the store");
}

/// The TCP shape: 8,000 chats of 1 KiB to a legacy reader that reads nothing
/// (output mark `high_water`), then reads: all 8,000 arrive live, none is left
/// in the store.
fn tcp_backlog_flushes_to_the_end(high_water: usize) {
    const N: usize = 8000;
    let db = Backend::sqlite();
    let srv = start(&db, high_water);
    let mut reader = User::online_on(Client::with_buffers(srv.addr(), RCVBUF), "reader");
    let (mut sender, sid) = sender(&srv);
    flood(&mut sender, sid, reader.id, N, 1000);
    // The server's socket buffer (autotuned to ~4 MB on loopback) holds half.
    let stored = db.stored_for(reader.id);
    assert!(stored > N / 4, "only {stored} of {N} stored: no backlog");

    let mut r = RawReader::new(reader.c.stream());
    let got = read_seqs(&mut r, N, "the slow TCP reader");
    assert_eq!(r.pending(), 0, "half a frame after the last message");
    let left = db.stored_for(reader.id);
    eprintln!(
        "tcp, mark {high_water}: {stored} of {N} stored, {} read, {left} left stored",
        got.len()
    );
    assert_all_live(&got, N, left, "the slow TCP reader");
    reader.c.barrier();
    let ack = reader.relogin();
    assert!(ack.get("offlinemsg").is_none(), "stored too: {ack}");
}

#[test]
fn a_tcp_backlog_flushes_to_the_end_mark_64k() {
    tcp_backlog_flushes_to_the_end(64 * 1024);
}

#[test]
fn a_tcp_backlog_flushes_to_the_end_mark_256k() {
    tcp_backlog_flushes_to_the_end(256 * 1024);
}

/// A WebSocket client connected to `/ws` whose socket buffers are [`RCVBUF`].
fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = util::connect_with_buffers(addr, RCVBUF);
    stream.set_read_timeout(Some(GAP)).unwrap();
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .expect("the upgrade is accepted");
    ws
}

/// The next text message, parsed; `None` after [`GAP`] of silence.
fn ws_recv(ws: &mut WebSocket<TcpStream>) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a text message, got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("the WebSocket failed: {e}"),
        }
    }
}

/// Sends `v` and returns the reply.
fn ws_request(ws: &mut WebSocket<TcpStream>, v: &Value) -> Value {
    ws.send(Message::text(v.to_string())).unwrap();
    ws_recv(ws).unwrap_or_else(|| panic!("no reply to {v}"))
}

/// The WebSocket shape: a browser gets 2,400 chats of 4 KB while it reads
/// nothing (mark 64 KiB), then reads: all 2,400 arrive live.
#[test]
fn a_websocket_backlog_flushes_to_the_end() {
    const N: usize = 2400;
    let db = Backend::sqlite();
    let srv = start(&db, 64 * 1024);
    let mut ws = ws_connect(srv.ws_addr().unwrap());
    let reg = json!({"ext": 1, "msgid": 4, "name": "reader", "password": "pw"});
    let reader = ws_request(&mut ws, &reg)["id"].as_i64().unwrap();
    let login = json!({"ext": 1, "id": reader, "msgid": 1, "password": "pw"});
    let ack = ws_request(&mut ws, &login);
    assert_eq!(ack["errno"], 0, "{ack}");
    let (mut sender, sid) = sender(&srv);
    flood(&mut sender, sid, reader, N, 4000);
    let stored = db.stored_for(reader);
    assert!(stored > N / 4, "only {stored} of {N} stored: no backlog");

    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        match ws_recv(&mut ws) {
            Some(v) if v["msgid"] == 6 => got.push(seq_of(&v)),
            Some(v) => panic!("unexpected frame {v}"),
            None => break,
        }
    }
    let left = db.stored_for(reader);
    eprintln!(
        "websocket: {stored} of {N} stored, {} read, {left} left stored",
        got.len()
    );
    assert_all_live(&got, N, left, "the slow WebSocket reader");
}

/// The racing shape: a reader that reads in bursts (1,000 messages, then a pause)
/// while 20,000 chats of 1 KiB keep coming, so the connection goes through many
/// cycles of congestion, paged drains and last pages with live frames racing
/// them: every message arrives live, once, in order, and nothing stays stored.
#[test]
fn a_reader_that_reads_in_bursts_during_a_flood_gets_everything_live() {
    const N: usize = 20_000;
    let db = Backend::sqlite();
    let srv = start(&db, 64 * 1024);
    let mut reader = User::online_on(Client::with_buffers(srv.addr(), RCVBUF), "reader");
    let (mut sender, sid) = sender(&srv);
    let to = reader.id;
    let flood = std::thread::spawn(move || flood(&mut sender, sid, to, N, 1000));
    let mut got = Vec::with_capacity(N);
    let mut r = RawReader::new(reader.c.stream());
    while got.len() < N {
        let burst = read_seqs(&mut r, 1000.min(N - got.len()), "the bursty reader");
        if burst.is_empty() {
            break;
        }
        got.extend(burst);
        std::thread::sleep(Duration::from_millis(100));
    }
    flood.join().expect("the flood");
    let left = db.stored_for(reader.id);
    eprintln!("bursts: {} of {N} read, {left} left stored", got.len());
    assert_all_live(&got, N, left, "the bursty reader");
    reader.c.barrier();
}
