//! The inbound stream decoder over a real socket, and bad input: each bad frame gets its
//! error reply, and the server keeps serving everyone else.

mod util;

use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use util::{expect_bytes, frame_bytes, one_chat, Backend, Client, User};

both_backends!(
    one_byte_at_a_time,
    hundred_frames_in_one_write,
    back_to_back_and_separators,
    garbage_bytes_close_the_connection,
    invalid_utf8_inside_a_frame,
    wrong_types_and_missing_fields,
    unknown_msgid_and_non_object,
    oversize_frame_closes_the_connection,
);

/// Two users chatting on the side; after each bad input they must still chat.
struct Bystanders {
    x: User,
    y: User,
    n: usize,
}

impl Bystanders {
    fn new(b: &std::net::SocketAddr) -> Bystanders {
        Bystanders {
            x: User::online(*b, "xavier"),
            y: User::online(*b, "yvonne"),
            n: 0,
        }
    }

    /// A round trip both ways; fails if the server stopped serving them.
    fn still_chat(&mut self) {
        self.n += 1;
        let m = format!("still here {}", self.n);
        self.x.chat(self.y.id, &m);
        assert_eq!(self.y.c.expect_msgid(6)["msg"], m.as_str());
        self.y.chat(self.x.id, &m);
        assert_eq!(self.x.c.expect_msgid(6)["msg"], m.as_str());
    }
}

/// A LOGIN and a chat, each fed one byte per write, still work.
fn one_byte_at_a_time(b: &Backend) {
    let srv = b.start();
    let mut a = User::register(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let trickle = |c: &mut Client, bytes: &[u8]| {
        for &byte in bytes {
            c.send_raw(&[byte]);
            thread::sleep(Duration::from_micros(300));
        }
    };
    let login = frame_bytes(&json!({"id": a.id, "msgid": 1, "password": a.pw}));
    trickle(&mut a.c, &login);
    assert_eq!(a.c.expect_msgid(2)["errno"], 0);
    let chat = frame_bytes(&one_chat(a.id, "alice", bob.id, "你好 {\"}\" 😀"));
    trickle(&mut a.c, &chat);
    expect_bytes(
        &mut bob.c,
        &util::delivered_one_chat(a.id, "alice", bob.id, "你好 {\"}\" 😀"),
    );
    a.c.expect_quiet();
}

/// 100 frames in one write: 50 chats and 50 PINGs, all handled in order.
fn hundred_frames_in_one_write(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(frame_bytes(&one_chat(
            a.id,
            "alice",
            bob.id,
            &format!("m{i}"),
        )));
        burst.extend(frame_bytes(&json!({"msgid": 13})));
    }
    a.c.send_raw(&burst);
    for _ in 0..50 {
        expect_bytes(&mut a.c, r#"{"msgid":14}"#);
    }
    for i in 0..50 {
        assert_eq!(bob.c.expect_msgid(6)["msg"], format!("m{i}"));
    }
    a.c.expect_quiet();
    bob.c.expect_quiet();
}

/// Frames back to back without separators, and with every separator, before and between.
fn back_to_back_and_separators(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let bare = |i: usize| one_chat(a.id, "alice", bob.id, &format!("b{i}")).to_string();
    // No separator at all, legacy-server style.
    let stream = format!("{}{}{}{{\"msgid\":13}}", bare(0), bare(1), bare(2));
    a.c.send_raw(stream.as_bytes());
    expect_bytes(&mut a.c, r#"{"msgid":14}"#);
    // Every separator, several in a row, leading and trailing.
    let stream = format!(
        "\0 \t\r\n{}\0\0{}\n{}\r\n{} \t {}\0\n",
        bare(3),
        bare(4),
        bare(5),
        bare(6),
        bare(7)
    );
    a.c.send_raw(stream.as_bytes());
    // Pretty-printed JSON with newlines inside the frame is a frame too.
    let pretty = serde_json::to_string_pretty(&one_chat(a.id, "alice", bob.id, "b8")).unwrap();
    a.c.send_raw(pretty.as_bytes());
    a.c.send_raw(b"\n\n");
    for i in 0..9 {
        assert_eq!(bob.c.expect_msgid(6)["msg"], format!("b{i}"));
    }
    a.c.expect_quiet();
    bob.c.expect_quiet();
}

/// Bytes that cannot start a frame: error 100, then the connection is closed; a user
/// logged in on it is logged out.
fn garbage_bytes_close_the_connection(b: &Backend) {
    let srv = b.start();
    let mut side = Bystanders::new(&srv.addr());
    let mut a = User::online(srv.addr(), "alice");
    a.c.send_raw(b"hello world\0");
    a.c.expect_error(100, None);
    a.c.expect_eof();
    side.still_chat();
    // The account was freed by the close.
    let mut again = Client::connect(srv.addr());
    util::poll(Duration::from_secs(2), "alice freed after garbage", || {
        let v = again.login(a.id, &a.pw);
        (v["errno"] == 0).then_some(())
    });
    // Garbage after a good frame in the same write: the good one is served first.
    let mut c = Client::connect(srv.addr());
    c.send_raw(b"{\"msgid\":13}\0\x01\x02\x03");
    expect_bytes(&mut c, r#"{"msgid":14}"#);
    c.expect_error(100, None);
    c.expect_eof();
    side.still_chat();
}

/// Invalid UTF-8 inside a `{...}` frame: error 100, and the connection keeps working.
fn invalid_utf8_inside_a_frame(b: &Backend) {
    let srv = b.start();
    let mut side = Bystanders::new(&srv.addr());
    let mut a = User::online(srv.addr(), "alice");
    let mut bad = format!("{{\"id\":{},\"msg\":\"", a.id).into_bytes();
    bad.extend_from_slice(b"\xff\xfe\xc3");
    bad.extend_from_slice(format!("\",\"msgid\":6,\"toid\":{}}}\0", side.x.id).as_bytes());
    a.c.send_raw(&bad);
    a.c.expect_error(100, None);
    // Not JSON at all, but braces balance: also 100, also recoverable.
    a.c.send_raw(b"{not json}\0");
    a.c.expect_error(100, None);
    side.x.c.expect_quiet();
    a.c.barrier();
    a.chat(side.x.id, "still logged in");
    assert_eq!(side.x.c.expect_msgid(6)["msg"], "still logged in");
    side.still_chat();
}

/// Wrong types (105) and missing fields (104), before and after login; nothing delivered.
fn wrong_types_and_missing_fields(b: &Backend) {
    let srv = b.start();
    let mut side = Bystanders::new(&srv.addr());
    let mut c = Client::connect(srv.addr());
    // (request, errno, reqmsgid, the field the errmsg must name)
    let before: Vec<(Value, i64, Option<i64>, &str)> = vec![
        (
            json!({"id": "1", "msgid": 1, "password": "p"}),
            105,
            Some(1),
            "id",
        ),
        (
            json!({"id": 1, "msgid": 1, "password": 7}),
            105,
            Some(1),
            "password",
        ),
        (json!({"msgid": 1, "password": "p"}), 104, Some(1), "id"),
        (json!({"msgid": 4, "name": "n"}), 104, Some(4), "password"),
        (
            json!({"msgid": 4, "name": ["n"], "password": "p"}),
            105,
            Some(4),
            "name",
        ),
        (json!({"msgid": "1"}), 102, None, "msgid"),
        (json!({"id": 1}), 102, None, "msgid"),
        (json!({"ext": "yes", "msgid": 13}), 105, Some(13), "ext"),
    ];
    for (req, errno, reqmsgid, field) in before {
        c.send(&req);
        expect_error_naming(&mut c, errno, reqmsgid, field, &req);
    }
    let id = c.register("alice", "pa");
    c.login_ok(id, "pa");
    let to = side.x.id;
    let after: Vec<(Value, i64, Option<i64>, &str)> = vec![
        (
            json!({"id": id, "msg": 5, "msgid": 6, "toid": to}),
            105,
            Some(6),
            "msg",
        ),
        (
            json!({"id": id, "msg": "m", "msgid": 6, "toid": to.to_string()}),
            105,
            Some(6),
            "toid",
        ),
        (
            json!({"id": id, "msg": "m", "msgid": 6, "name": 3, "toid": to}),
            105,
            Some(6),
            "name",
        ),
        (
            json!({"id": id, "msg": "m", "msgid": 6, "time": null, "toid": to}),
            105,
            Some(6),
            "time",
        ),
        (
            json!({"id": id, "msg": "m", "msgid": 6, "toid": -to}),
            105,
            Some(6),
            "toid",
        ),
        (
            json!({"id": id, "msgid": 6, "toid": to}),
            104,
            Some(6),
            "msg",
        ),
        (
            json!({"id": id, "msg": "m", "msgid": 6}),
            104,
            Some(6),
            "toid",
        ),
        (json!({"id": id, "msgid": 7}), 104, Some(7), "friendid"),
        (
            json!({"groupid": 1.5, "id": id, "msgid": 9}),
            105,
            Some(9),
            "groupid",
        ),
        (
            json!({"groupid": 1, "id": id, "msgid": 10}),
            104,
            Some(10),
            "msg",
        ),
        (json!({"id": id, "msgid": 8}), 104, Some(8), "groupname"),
        (
            json!({"groupname": "g", "groupdesc": 1, "id": id, "msgid": 8}),
            105,
            Some(8),
            "groupdesc",
        ),
        (json!({"msgid": 3}), 104, Some(3), "id"),
    ];
    for (req, errno, reqmsgid, field) in after {
        c.send(&req);
        expect_error_naming(&mut c, errno, reqmsgid, field, &req);
    }
    side.x.c.expect_quiet();
    // The connection still works, still logged in.
    c.send(&one_chat(id, "alice", to, "ok now"));
    assert_eq!(side.x.c.expect_msgid(6)["msg"], "ok now");
    side.still_chat();
}

/// The next frame is error `errno` about `reqmsgid`, and its errmsg names `field`.
fn expect_error_naming(
    c: &mut Client,
    errno: i64,
    reqmsgid: Option<i64>,
    field: &str,
    req: &Value,
) {
    let v = c.expect_error(errno, reqmsgid);
    let msg = v["errmsg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("\"{field}\"")),
        "errmsg {msg:?} does not name field {field:?} (request {req})"
    );
}

/// Unknown msgid (103) and a top-level array (101): the connection keeps working.
fn unknown_msgid_and_non_object(b: &Backend) {
    let srv = b.start();
    let mut side = Bystanders::new(&srv.addr());
    let mut c = Client::connect(srv.addr());
    for m in [99, 0, 2, 5, 11, 12, 14, 16] {
        c.send(&json!({"msgid": m}));
        c.expect_error(103, Some(m));
    }
    c.send_raw(b"[1,{\"msgid\":13}]\0");
    c.expect_error(101, None);
    c.send_raw(b"[]");
    c.expect_error(101, None);
    c.barrier();
    side.still_chat();
    let id = c.register("alice", "pa");
    c.login_ok(id, "pa");
    c.send(&json!({"id": id, "msgid": 42}));
    c.expect_error(103, Some(42));
    c.send(&one_chat(id, "alice", side.y.id, "after errors"));
    assert_eq!(side.y.c.expect_msgid(6)["msg"], "after errors");
    side.still_chat();
}

/// A frame over 64 KiB: error 106, then closed. A frame of 60 KiB is fine.
fn oversize_frame_closes_the_connection(b: &Backend) {
    let srv = b.start();
    let mut side = Bystanders::new(&srv.addr());
    let mut a = User::online(srv.addr(), "alice");
    let big = "x".repeat(60 * 1024);
    a.chat(side.y.id, &big);
    assert_eq!(side.y.c.expect_msgid(6)["msg"], big.as_str());

    let huge = "y".repeat(64 * 1024 + 1);
    a.chat(side.y.id, &huge);
    let v = a.c.expect_error(106, None);
    assert!(v["errmsg"].as_str().unwrap().contains("65536"), "{v}");
    a.c.expect_eof();
    side.y.c.expect_quiet();
    side.still_chat();

    // An unterminated oversize frame trips the limit too (never completes).
    let mut c = Client::connect(srv.addr());
    let mut open = b"{\"msg\":\"".to_vec();
    open.resize(70 * 1024, b'z');
    c.send_raw(&open);
    c.expect_error(106, None);
    c.expect_eof();
    side.still_chat();

    // The account of the closed connection is free again.
    let mut again = Client::connect(srv.addr());
    util::poll(Duration::from_secs(2), "alice freed after oversize", || {
        let v = again.login(a.id, &a.pw);
        (v["errno"] == 0).then_some(())
    });
}
