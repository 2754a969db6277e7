//! The WebSocket listener under attack: connections still in their HTTP phase
//! (a request head never finished) have their own small cap and a short time
//! limit, and never take the chat slots of `--max-connections` — 30 half-open
//! requests used to lock every new client, TCP and WebSocket, out for the whole
//! login time limit (60 s).

mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chat::admin::AdminOptions;
use chat::gateway::Limits;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;

use util::{connect_from, poll, Backend, Client};

/// The HTTP-phase time limit of these servers.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

fn start(db: &Backend, limits: Limits) -> ServerThread {
    let _ = chat::password::set_cost(1024, 1);
    db.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some(AdminOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: None,
        }),
        limits,
        ..ServerOptions::default()
    })
}

/// The WebSocket listener's open connections, from `/metrics`.
fn ws_connections(srv: &ServerThread) -> usize {
    util::metric(srv.admin_addr().unwrap(), "chat_websocket_connections").expect("the gauge")
        as usize
}

/// A connection to `addr` that sent half a request head.
fn half_open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    s
}

/// Everything `s` receives until the server closes it, or `None` if it did not
/// within `limit`.
fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Some(out),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// 30 half-open requests on the WebSocket listener of a server taking 8
/// connections: TCP clients still log in; beyond the HTTP-phase cap (4) the
/// half-open ones get 503 at once, the others are closed after the HTTP-phase
/// limit (2 s, not the 60 s login limit); then a browser upgrades again.
#[test]
fn half_open_http_requests_do_not_lock_clients_out() {
    let db = Backend::sqlite();
    let srv = start(
        &db,
        Limits {
            max_connections: 8,
            http_max: 4,
            http_timeout: HTTP_TIMEOUT,
            ..Limits::default()
        },
    );
    let ws = srv.ws_addr().unwrap();
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = (0..30).map(|_| half_open(ws)).collect();
    poll(Duration::from_secs(10), "30 connections accepted", || {
        (ws_connections(&srv) >= 30).then_some(())
    });

    // A TCP client is admitted and logs in (it was refused with error 112).
    let mut c = Client::connect(srv.addr());
    let id = c.register("tcp_user", "pw");
    c.login_ok(id, "pw");

    // Beyond the cap each got 503 and its close at once; the rest are closed by
    // the HTTP-phase limit.
    let mut busy = 0;
    for s in &mut held {
        let got = until_closed(s, HTTP_TIMEOUT * 4)
            .unwrap_or_else(|| panic!("a half-open request still open after {:?}", t0.elapsed()));
        if got.starts_with(b"HTTP/1.1 503 ") {
            busy += 1;
        } else {
            assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        }
    }
    assert_eq!(
        busy,
        30 - 4,
        "the half-open requests beyond the cap got 503"
    );
    assert!(
        t0.elapsed() < HTTP_TIMEOUT * 4,
        "closed only after {:?}",
        t0.elapsed()
    );

    // Their slots are free again: a browser upgrades and logs in.
    let mut sock = upgraded(ws);
    sock.send(tungstenite::Message::text(format!(
        r#"{{"ext":1,"id":{id},"msgid":1,"password":"pw"}}"#
    )))
    .unwrap();
    let reply = sock.read().expect("a reply").into_text().unwrap();
    // The TCP client holds the account: a reply means the session was admitted.
    assert!(reply.contains("\"msgid\":2"), "{reply}");
}

/// The whole reply to `request` on a new connection to `addr` (the server closes).
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    until_closed(&mut s, util::TIMEOUT).expect("the server closes")
}

/// RFC 6455 conformance found by the same attacker: a `Sec-WebSocket-Key` that is
/// not the base64 of 16 bytes, an HTTP/1.0 upgrade, an upgrade without a Host
/// header or with two, and one with two keys get 400 (§4.1, §4.2.1; all were
/// upgraded), and a protocol violation after the upgrade (an unmasked client
/// frame) is answered with a close frame of status 1002, not 1000 (§7.4.1).
#[test]
fn upgrades_breaking_rfc_6455_get_400_and_violations_close_with_1002() {
    let db = Backend::sqlite();
    let srv = start(&db, Limits::default());
    let ws = srv.ws_addr().unwrap();
    let upgrade = |version: &str, key: &str| {
        format!(
            "GET /ws HTTP/{version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    // No Host (§4.1: required), two Host headers, two keys: each was upgraded.
    let no_host = upgrade("1.1", good).replace("Host: x\r\n", "");
    let two_hosts = upgrade("1.1", good).replace("Host: x\r\n", "Host: x\r\nHost: y\r\n");
    let two_keys = upgrade("1.1", good).replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    );
    for request in [no_host, two_hosts, two_keys] {
        let reply = exchange(ws, request.as_bytes());
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400 "), "{request:?}: {reply}");
    }
    for (version, key) in [
        ("1.0", good),
        ("1.1", "garbage"),
        ("1.1", "dGhlIHNhbXBsZQ=="), // 11 bytes
        ("1.1", "not*base64*at*all*!!!!=="),
    ] {
        let reply = exchange(ws, upgrade(version, key).as_bytes());
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 400 "),
            "HTTP/{version} with key {key:?}: {reply}"
        );
    }

    let mut request = upgrade("1.1", good).into_bytes();
    tungstenite::protocol::frame::Frame::message(
        b"{\"msgid\":13}".to_vec(),
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    )
    .format(&mut request)
    .unwrap(); // unmasked: a client must mask (RFC 6455 §5.1)
    let reply = exchange(ws, &request);
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(reply.starts_with(b"HTTP/1.1 101 "));
    let rest = &reply[head_end..];
    assert!(
        rest.len() >= 4 && rest[0] == 0x88,
        "a close frame after the upgrade: {rest:?}"
    );
    let code = u16::from_be_bytes([rest[2], rest[3]]);
    assert_eq!(code, 1002, "the close status of a protocol violation");
}

/// An upgrade request from `source`; the status line of the server's answer.
fn upgrade_from(source: [u8; 4], addr: SocketAddr) -> String {
    let mut s = connect_from(source, addr);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

/// Issue #12: one address kept every HTTP-phase slot with half-open requests
/// (reopening each as it was closed), and every upgrade got 503. Now one address
/// holds at most `http_per_ip` of them: another address upgrades meanwhile.
#[test]
fn one_address_cannot_hold_the_http_phase() {
    let db = Backend::sqlite();
    let srv = start(
        &db,
        Limits {
            http_max: 4,
            http_per_ip: 2,
            http_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
    );
    let ws = srv.ws_addr().unwrap();
    let mut held: Vec<TcpStream> = (0..10).map(|_| half_open(ws)).collect();
    poll(Duration::from_secs(10), "10 connections accepted", || {
        (ws_connections(&srv) >= 10).then_some(())
    });
    // Beyond its share, 127.0.0.1's requests got 503 at once.
    let mut busy = 0;
    for s in &mut held {
        if let Some(got) = until_closed(s, Duration::from_millis(500)) {
            assert!(
                got.starts_with(b"HTTP/1.1 503 "),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
            busy += 1;
        }
    }
    assert_eq!(busy, 10 - 2, "127.0.0.1 holds only its share");
    // Its own upgrade waits for its half-open requests; another address's does not.
    assert!(upgrade_from([127, 0, 0, 1], ws).starts_with("HTTP/1.1 503 "));
    let status = upgrade_from([127, 0, 0, 2], ws);
    assert!(
        status.starts_with("HTTP/1.1 101 "),
        "127.0.0.2 got {status:?}"
    );
    drop(held);
}

/// A WebSocket client upgraded to `/ws` on `addr`.
fn upgraded(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    let (sock, resp) =
        tungstenite::client::client(format!("ws://{addr}/ws"), stream).expect("an upgrade");
    assert_eq!(resp.status(), 101);
    sock
}

/// The WebSocket's reply to a PING: PONG if its session was admitted, the
/// refusal (error 112) if it was not.
fn ws_ping(sock: &mut tungstenite::WebSocket<TcpStream>) -> serde_json::Value {
    sock.send(tungstenite::Message::text(r#"{"msgid":13}"#))
        .unwrap();
    loop {
        match sock.read().expect("a reply") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The TCP client's reply to a PING (PONG, or the refusal 112).
fn tcp_ping(addr: SocketAddr) -> (Client, serde_json::Value) {
    let mut c = Client::connect(addr);
    c.send_raw(b"{\"msgid\":13}\0");
    let v = c.recv();
    (c, v)
}

/// Upgraded WebSocket connections and TCP ones share `max_connections` (2 here):
/// with two browsers in, a TCP client is refused with error 112 (and closed), and
/// so is a third browser; once a browser leaves, a TCP client gets in. (Mutation
/// testing: the sum of the two counts in `Gateway::admit` replaced by a product
/// or a difference passed every other test.)
#[test]
fn websockets_and_tcp_clients_share_the_connection_limit() {
    let db = Backend::sqlite();
    let srv = start(
        &db,
        Limits {
            max_connections: 2,
            ..Limits::default()
        },
    );
    let ws = srv.ws_addr().unwrap();
    let mut first = upgraded(ws);
    let mut second = upgraded(ws);
    for sock in [&mut first, &mut second] {
        let v = ws_ping(sock);
        assert_eq!(v["msgid"], 14, "a browser under the limit was refused: {v}");
    }

    let (mut c, v) = tcp_ping(srv.addr());
    assert_eq!(
        (v["msgid"].as_i64(), v["errno"].as_i64()),
        (Some(11), Some(112)),
        "a TCP client beyond two browsers: {v}"
    );
    c.expect_eof();
    let mut third = upgraded(ws);
    let v = ws_ping(&mut third);
    assert_eq!(
        (v["msgid"].as_i64(), v["errno"].as_i64()),
        (Some(11), Some(112)),
        "a third browser: {v}"
    );

    first.close(None).unwrap();
    drop(first);
    let (mut c, _) = poll(Duration::from_secs(5), "a slot freed by a browser", || {
        let (c, v) = tcp_ping(srv.addr());
        (v["msgid"] == 14).then_some((c, v))
    });
    c.barrier();
    let v = ws_ping(&mut second);
    assert_eq!(v["msgid"], 14, "the remaining browser: {v}");
}
