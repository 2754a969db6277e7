//! The WebSocket listener (`--ws-addr`, issue 17) without a browser: the web
//! client's files, the upgrade, one JSON frame per text message on the same
//! sessions as TCP (a WebSocket user and a TCP user chat), pings, binary and
//! broken messages, oversize messages and closes, with a real tungstenite client.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use util::{Backend, Client, TIMEOUT};

/// Cheap password hashes: hashing is not what these tests are about.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

fn start(db: &Backend, frame_limit: usize) -> ServerThread {
    fast_hashes();
    db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        frame_limit,
        ..ServerOptions::default()
    })
}

type Ws = WebSocket<TcpStream>;

/// A WebSocket client connected to `/ws`.
fn ws_connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ws, resp) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .expect("the upgrade is accepted");
    assert_eq!(resp.status(), 101);
    ws
}

fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next text message, parsed (every one must be exactly one JSON object).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message before the timeout") {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not one JSON object: {t:?}: {e}"))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

fn expect_msgid(ws: &mut Ws, msgid: i64) -> Value {
    let v = recv(ws);
    assert_eq!(v["msgid"], msgid, "expected msgid {msgid}, got {v}");
    v
}

/// Reads until the server's close; returns the ERROR frames seen before it.
fn expect_close(ws: &mut Ws) -> Vec<Value> {
    expect_close_code(ws).0
}

/// Reads until the server's close; returns the ERROR frames seen before it and
/// the status of the server's close frame, if one came.
fn expect_close_code(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut errors = Vec::new();
    let mut code = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => errors.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(frame)) => {
                code = frame.map(|f| u16::from(f.code));
                continue;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return (errors, code)
            }
            Err(tungstenite::Error::Protocol(_)) => return (errors, code), // FIN after our close
            Err(tungstenite::Error::Io(e)) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "no close in time");
                return (errors, code);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

fn ws_register(ws: &mut Ws, name: &str) -> i64 {
    send(
        ws,
        &json!({"ext": 1, "msgid": 4, "name": name, "password": "pw"}),
    );
    let ack = expect_msgid(ws, 5);
    ack["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("REG failed: {ack}"))
}

fn ws_login(ws: &mut Ws, id: i64) -> Value {
    send(
        ws,
        &json!({"ext": 1, "id": id, "msgid": 1, "password": "pw"}),
    );
    let ack = expect_msgid(ws, 2);
    assert_eq!(ack["errno"], 0, "{ack}");
    ack
}

/// A plain HTTP request; the whole response (the server closes after it).
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn serves_the_web_client_and_refuses_other_requests() {
    let db = Backend::sqlite();
    let server = start(&db, 64 * 1024);
    let ws = server.ws_addr().expect("a ws listener");
    let page = http(ws, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(page.contains("Content-Security-Policy: default-src 'self'"));
    assert!(
        page.contains("<script src=\"app.js\""),
        "the page loads its script"
    );
    let js = http(ws, "GET /app.js HTTP/1.1\r\n\r\n");
    assert!(js.contains("text/javascript") && js.contains("new WebSocket"));
    assert!(http(ws, "GET /style.css HTTP/1.1\r\n\r\n").contains("text/css"));
    assert!(http(ws, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(ws, "POST / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let old = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n";
    assert!(http(ws, old).starts_with("HTTP/1.1 426"));
    assert!(http(ws, "\x16\x03\x01\x02\r\n\r\n").starts_with("HTTP/1.1 400"));
    // The TCP listener still speaks the chat protocol, not HTTP.
    let mut c = Client::connect(server.addr());
    c.send(&json!({"msgid": 13}));
    c.expect_msgid(14);
}

#[test]
fn a_websocket_user_and_a_tcp_user_chat_on_the_same_sessions() {
    let db = Backend::sqlite();
    let server = start(&db, 64 * 1024);
    let mut ws = ws_connect(server.ws_addr().unwrap());
    let ann = ws_register(&mut ws, "ann");
    let mut tcp = Client::connect(server.addr());
    let bob = tcp.register("bob", "pw");
    tcp.login_ok(bob, "pw");
    let ack = ws_login(&mut ws, ann);
    assert!(
        ack["token"].is_string(),
        "a WebSocket is ext: it gets a token"
    );
    // Two frames sent in one WebSocket message are both read; each reply is its own message.
    let two = format!(
        "{}{}",
        json!({"msgid": 13}),
        json!({"cid": 1, "ext": 1, "id": ann, "msg": "hi bob", "msgid": 6, "name": "ann", "toid": bob})
    );
    ws.send(Message::text(two)).unwrap();
    expect_msgid(&mut ws, 14);
    let confirm = expect_msgid(&mut ws, 12);
    assert_eq!(
        (confirm["cid"].as_i64(), confirm["delivered"].as_i64()),
        (Some(1), Some(1))
    );
    let got = tcp.expect_msgid(6);
    assert_eq!(
        (got["msg"].as_str(), got["id"].as_i64()),
        (Some("hi bob"), Some(ann))
    );
    tcp.send(&util::one_chat(bob, "bob", ann, "hi ann"));
    let got = expect_msgid(&mut ws, 6);
    assert_eq!(got["msg"], "hi ann");
    // A message near the frame limit (64 KiB) goes through: the WebSocket layer's
    // own bound is the frame limit, not less. (Mutation testing: with
    // `Gateway::frame_limit` returning 0 or 1 every other test passed.)
    let big = "b".repeat(60 * 1024);
    send(&mut ws, &util::one_chat(ann, "ann", bob, &big));
    assert_eq!(tcp.expect_msgid(6)["msg"], big.as_str());
    // A ping is answered with a pong by the protocol layer.
    ws.send(Message::Ping(b"p".to_vec().into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("expected the pong, got {other:?}"),
    }
    // A clean close logs the user out: the password logs in again at once.
    ws.close(None).unwrap();
    expect_close(&mut ws);
    let mut again = ws_connect(server.ws_addr().unwrap());
    util::poll(TIMEOUT, "ann logged out after the close", || {
        send(
            &mut again,
            &json!({"ext": 1, "id": ann, "msgid": 1, "password": "pw"}),
        );
        let ack = expect_msgid(&mut again, 2);
        (ack["errno"] != 2)
            .then_some(())
            .inspect(|()| assert_eq!(ack["errno"], 0, "{ack}"))
    });
}

#[test]
fn bad_messages_get_errors_and_broken_streams_are_closed() {
    let db = Backend::sqlite();
    let server = start(&db, 1024);
    let addr = server.ws_addr().unwrap();
    let mut ws = ws_connect(addr);
    ws.send(Message::Binary(b"{\"msgid\":13}".to_vec().into()))
        .unwrap();
    let e = expect_msgid(&mut ws, 11);
    assert_eq!(e["errno"], 100, "{e}");
    ws.send(Message::text("{not json")).unwrap();
    assert_eq!(expect_msgid(&mut ws, 11)["errno"], 100);
    // A truncated object: the message's end cut it (there is no NUL to speak of).
    ws.send(Message::text("{\"msgid\":13")).unwrap();
    let e = expect_msgid(&mut ws, 11);
    assert_eq!(
        (&e["errno"], &e["errmsg"]),
        (
            &json!(100),
            &json!("WebSocket message ended before its JSON was complete")
        ),
        "{e}"
    );
    ws.send(Message::text("[1,2]")).unwrap();
    assert_eq!(expect_msgid(&mut ws, 11)["errno"], 101);
    send(&mut ws, &json!({"msgid": 99}));
    assert_eq!(expect_msgid(&mut ws, 11)["errno"], 103);
    // Still usable after all that.
    send(&mut ws, &json!({"msgid": 13}));
    expect_msgid(&mut ws, 14);

    // A message over the frame limit: errno 106, then a close saying 1009
    // (message too big, RFC 6455 §7.4.1).
    let big = json!({"msgid": 13, "pad": "x".repeat(1100)});
    send(&mut ws, &big);
    let (errors, code) = expect_close_code(&mut ws);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["errno"], 106);
    assert_eq!(code, Some(1009), "the close status of a message too big");
    // One over the protocol layer's bound is refused before it is buffered whole.
    let mut ws = ws_connect(addr);
    ws.send(Message::text("x".repeat(4096))).unwrap();
    let (errors, code) = expect_close_code(&mut ws);
    assert_eq!(errors.first().map(|e| e["errno"].clone()), Some(json!(106)));
    assert_eq!(code, Some(1009), "the close status of a message too big");

    // An unmasked client frame breaks RFC 6455: the connection is closed.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut frame = Vec::new();
    Frame::message(b"{\"msgid\":13}".to_vec(), OpCode::Data(Data::Text), true)
        .format(&mut frame)
        .unwrap();
    raw.write_all(&frame).unwrap();
    let mut got = Vec::new();
    raw.read_to_end(&mut got).expect("the server closes");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        !text.contains("\"msgid\":14"),
        "an unmasked frame is not read: {text}"
    );
}

/// Messages that arrive in one read are all answered: the server reads them one
/// at a time and goes on to the next after each, not only when more bytes come.
/// (Mutation testing: with `Gateway::on_ws_message` stopping after every message
/// whose frame it decoded whole, the second PING of the write waited for bytes
/// that never came.)
#[test]
fn messages_in_one_write_are_all_answered() {
    let db = Backend::sqlite();
    let server = start(&db, 1024);
    let mut ws = ws_connect(server.ws_addr().unwrap());
    for _ in 0..3 {
        ws.write(Message::text(json!({"msgid": 13}).to_string()))
            .unwrap();
    }
    ws.flush().unwrap();
    for _ in 0..3 {
        expect_msgid(&mut ws, 14);
    }
}

#[test]
fn the_login_time_limit_and_a_clean_close_apply_to_websockets() {
    let db = Backend::sqlite();
    fast_hashes();
    let server = db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        limits: chat::gateway::Limits {
            login_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..ServerOptions::default()
    });
    let mut ws = ws_connect(server.ws_addr().unwrap());
    let errors = expect_close(&mut ws);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["errno"], 113);
}

/// A browser that does not read while 8,000 messages of 1 KiB come (output
/// high-water mark 64 KiB): the overflow is stored, not buffered without bound or
/// dropped, and what it then reads live, up to a PING's answer, is the messages
/// from the first on, each once, in order, through the WebSocket framing.
#[test]
fn a_slow_websocket_reader_has_its_overflow_stored() {
    let db = Backend::sqlite();
    fast_hashes();
    let server = db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        limits: chat::gateway::Limits {
            output_high_water: 64 * 1024,
            rate: 0,
            ..Default::default()
        },
        ..ServerOptions::default()
    });
    let addr = server.ws_addr().unwrap();
    // Small kernel buffers, set before connect (see util::connect_with_buffers).
    let stream = util::connect_with_buffers(addr, 32 * 1024);
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream).unwrap();
    let reader = ws_register(&mut ws, "reader");
    ws_login(&mut ws, reader);
    let mut sender = Client::connect(server.addr());
    let sid = sender.register("sender", "pw");
    sender.login_ok(sid, "pw");
    const N: usize = 8000;
    let pad = "s".repeat(1000);
    for k in 0..N / 100 {
        let mut bytes = Vec::new();
        for i in k * 100..(k + 1) * 100 {
            let chat = util::one_chat(sid, "sender", reader, &format!("{i:05} {pad}"));
            bytes.extend(util::frame_bytes(&chat));
        }
        bytes.extend_from_slice(b"{\"msgid\":13}\0");
        sender.send_raw(&bytes);
    }
    for _ in 0..N / 100 {
        sender.expect_msgid(14);
    }
    assert!(
        util::stored_rows(&db.url(), reader) > 0,
        "the overflow was stored (the output is bounded)"
    );
    let mut seqs = Vec::new();
    send(&mut ws, &json!({"msgid": 13}));
    loop {
        let v = recv(&mut ws);
        match v["msgid"].as_i64() {
            Some(14) => break,
            Some(6) => {
                let msg = v["msg"].as_str().expect("a chat text");
                seqs.push(msg[..5].parse::<usize>().expect("a sequence number"));
            }
            _ => {}
        }
    }
    assert!(!seqs.is_empty(), "some came live");
    assert_eq!(
        seqs,
        (0..seqs.len()).collect::<Vec<_>>(),
        "from the first, once, in order"
    );
}

/// A WebSocket is extended from the start, for every request (§13): with no
/// `"ext"` field anywhere, a SEQ_ACK before login gets error 107 like any other
/// request, a LOGIN with `"acks":1` acks (frames carry a `dseq`), and a RESUME
/// with `lastseq` is served (not 122) and gets what was not acknowledged again,
/// with its `dseq`.
#[test]
fn a_websocket_acks_and_resumes_without_the_ext_field() {
    let db = Backend::sqlite();
    let server = start(&db, 64 * 1024);
    let mut ws = ws_connect(server.ws_addr().unwrap());
    let ann = ws_register(&mut ws, "ann");
    send(&mut ws, &json!({"msgid": 19, "seq": 1}));
    let e = expect_msgid(&mut ws, 11);
    assert_eq!(
        (e["errno"].as_i64(), e["reqmsgid"].as_i64()),
        (Some(107), Some(19))
    );
    send(
        &mut ws,
        &json!({"acks": 1, "id": ann, "msgid": 1, "password": "pw"}),
    );
    let ack = expect_msgid(&mut ws, 2);
    assert_eq!(ack["errno"], 0, "{ack}");
    let token = ack["token"].as_str().expect("a token").to_owned();

    let mut tcp = Client::connect(server.addr());
    let bob = tcp.register("bob", "pw");
    tcp.login_ok(bob, "pw");
    for m in ["one", "two", "three"] {
        tcp.send(&util::one_chat(bob, "bob", ann, m));
    }
    let got: Vec<Value> = (0..3).map(|_| expect_msgid(&mut ws, 6)).collect();
    let seqs: Vec<u64> = got
        .iter()
        .map(|v| v["dseq"].as_u64().unwrap_or_else(|| panic!("no dseq: {v}")))
        .collect();
    send(&mut ws, &json!({"msgid": 19, "seq": seqs[0]}));
    send(&mut ws, &json!({"msgid": 13}));
    expect_msgid(&mut ws, 14);
    drop(ws);

    let mut back = ws_connect(server.ws_addr().unwrap());
    let ack = util::poll(TIMEOUT, "the old session closed", || {
        send(
            &mut back,
            &json!({"id": ann, "lastseq": seqs[2], "msgid": 17, "token": token}),
        );
        let ack = expect_msgid(&mut back, 18);
        (ack["errno"] != 110).then_some(ack)
    });
    assert_eq!(ack["errno"], 0, "{ack}");
    let again: Vec<(String, u64)> = ack["offlinemsg"]
        .as_array()
        .expect("the unacknowledged frames")
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_str(s.as_str().unwrap()).unwrap();
            (
                v["msg"].as_str().unwrap().to_owned(),
                v["dseq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        again,
        [("two".to_owned(), seqs[1]), ("three".to_owned(), seqs[2])]
    );
}

/// Issue #12: binary messages and pings were not charged to the rate limit
/// (5,000 of each got 5,000 ERROR 100 and 5,000 pongs). Now each takes a token
/// like a text request: beyond the burst a binary message gets ERROR 109 and a
/// ping is not answered.
#[test]
fn binary_messages_and_pings_count_against_the_rate_limit() {
    const N: usize = 200;
    const BURST: u32 = 20;
    let db = Backend::sqlite();
    fast_hashes();
    let server = db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        limits: chat::gateway::Limits {
            rate: 10,
            burst: BURST,
            ..Default::default()
        },
        ..ServerOptions::default()
    });
    let mut ws = ws_connect(server.ws_addr().unwrap());
    let t0 = std::time::Instant::now();
    for _ in 0..N {
        ws.write(Message::binary(vec![b'x'])).unwrap();
    }
    for _ in 0..N {
        ws.write(Message::Ping(vec![b'p'].into())).unwrap();
    }
    ws.flush().unwrap();
    let (mut bad, mut limited, mut pongs) = (0, 0, 0);
    let mut count = |ws: &mut Ws, until_binary_done: bool| loop {
        if until_binary_done && bad + limited == N {
            return;
        }
        match ws.read().expect("a message before the timeout") {
            Message::Pong(_) => pongs += 1,
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match (v["msgid"].as_i64(), v["errno"].as_i64()) {
                    (Some(11), Some(100)) => bad += 1,
                    (Some(11), Some(109)) => limited += 1,
                    (Some(14), _) if !until_binary_done => return,
                    _ => panic!("unexpected {v}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    count(&mut ws, true);
    // Tokens back for the barrier: a chat PING, answered after every pong.
    std::thread::sleep(Duration::from_millis(300));
    send(&mut ws, &json!({"msgid": 13}));
    count(&mut ws, false);
    let answered = bad + pongs;
    // The burst plus what the rate refilled meanwhile.
    let allowed = BURST as usize + (t0.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    eprintln!("{N} binary + {N} pings: {bad} ERROR 100, {limited} ERROR 109, {pongs} pongs (allowed {allowed})");
    assert_eq!(bad + limited, N, "every binary message is answered");
    assert!(
        answered <= allowed,
        "{answered} answered beyond the rate limit ({allowed})"
    );
    assert!(limited >= N - allowed, "{limited} ERROR 109");
}

/// A WebSocket client floods pings (26 MB) and reads none of the pongs. Pongs are
/// written by the IO loop itself, not through the session's strand, so its output
/// gate does not hold them back: the high-water callback (`Gateway::on_high_water`)
/// stopping the reader at the mark is what bounds them. What the server holds is
/// measured as in `hardening.rs` `pings_without_reading_are_bounded_in_the_server`:
/// the pings it took from the socket minus the pongs it handed back to the kernel,
/// from `/proc/net/tcp` once nothing moves. (Seen failing with the callback a
/// no-op: the server read all 26 MB and held ~21 MB of pongs.)
#[test]
fn ws_pings_without_reading_stop_the_reader() {
    const MARK: usize = 64 * 1024;
    const PAYLOAD: usize = 125; // the most a control frame carries
    let db = Backend::sqlite();
    fast_hashes();
    let server = db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        limits: chat::gateway::Limits {
            output_high_water: MARK,
            rate: 0,
            ..Default::default()
        },
        ..ServerOptions::default()
    });
    let mut ws = ws_connect(server.ws_addr().unwrap());
    let id = ws_register(&mut ws, "ws-pinger");
    ws_login(&mut ws, id);
    send(&mut ws, &json!({"msgid": 13}));
    expect_msgid(&mut ws, 14);
    // A masked client ping: FIN + opcode 9, mask bit + length, the key, the payload.
    let mut ping = vec![0x89, 0x80 | PAYLOAD as u8, 1, 2, 3, 4];
    ping.extend((0..PAYLOAD).map(|i| b'p' ^ [1, 2, 3, 4][i % 4]));
    let pong_len = 2 + PAYLOAD;
    let frames: Vec<Vec<u8>> = vec![ping.repeat(1000); 200];
    let total: usize = frames.iter().map(Vec::len).sum();
    let written = Arc::new(AtomicUsize::new(0));
    let stream = ws.get_ref();
    let writer = util::spawn_writer(stream, frames, written.clone());
    let (sent, client, server_end) = util::settled(stream, &written);
    let taken = (sent - client.send - server_end.recv) / ping.len();
    let answered = (server_end.send + client.recv) / pong_len;
    let held = taken.saturating_sub(answered) * pong_len;
    // The mark, and the pongs of what the server read before it stopped: the
    // callback runs one loop iteration late when the pongs crossed the mark in the
    // iteration's corked flush, so up to two reads' worth (measured: 0.4 to 2.6 MB).
    let bound = 2 * net::MAX_READ_BETWEEN_CALLBACKS + 2 * MARK;
    eprintln!(
        "ws pings: {sent} of {total} B written; the server took {taken} pings, \
         answered {answered} into the kernel, holds {held} B of pongs (bound {bound})"
    );
    assert!(answered > 0, "no pong was written");
    assert!(
        held <= bound,
        "the server holds {held} B of pongs for a client that reads none (bound {bound})"
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}
