//! A blocking chat client over std TCP for the cluster tests: NUL-terminated compact
//! JSON out, `chat::codec::FrameReader` in, and a deadline on every read, so a bug
//! fails a test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chat::codec::FrameReader;
use serde_json::{json, Value};

/// How long any single wait for a reply may take. Generous: the nodes are debug
/// builds sharing two cores with MariaDB, Redis and nginx.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A fixed `time` field for every chat frame we send.
pub const TIME: &str = "2024-01-02 03:04:05";
/// The inbound frame limit of the test client: a LOGIN_ACK carrying hundreds of
/// offline messages is legitimately large.
const CLIENT_FRAME_LIMIT: usize = 16 * 1024 * 1024;
/// The legacy "already online" message.
pub const MSG_ALREADY_ONLINE: &str = "this account is using, input another!";

/// What one read attempt produced.
#[derive(Debug)]
pub enum Recv {
    /// A whole frame.
    Frame(Value),
    /// Nothing before the deadline.
    Timeout,
    /// The server closed the connection.
    Eof,
}

/// The bytes of `v` as a legacy client sends it: compact JSON, then one `0x00`.
pub fn frame_bytes(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a Value always serialises");
    out.push(0);
    out
}

/// The bytes of a PING (msgid 13).
pub const PING: &[u8] = b"{\"msgid\":13}\0";

/// A ONE_CHAT request.
pub fn one_chat(from: i64, name: &str, to: i64, msg: &str) -> Value {
    json!({"id": from, "msg": msg, "msgid": 6, "name": name, "time": TIME, "toid": to})
}

/// A GROUP_CHAT request.
pub fn group_chat(from: i64, name: &str, group: i64, msg: &str) -> Value {
    json!({"groupid": group, "id": from, "msg": msg, "msgid": 10, "name": name, "time": TIME})
}

/// Parses the JSON-text strings of an array field of a LOGIN_ACK (`friends`,
/// `groups`, `offlinemsg`); a missing field is an empty list.
pub fn ack_list(ack: &Value, field: &str) -> Vec<Value> {
    ack.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| {
                    let text = s
                        .as_str()
                        .unwrap_or_else(|| panic!("{field} entry is not a string: {s}"));
                    serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("{field} entry {text:?} is not JSON: {e}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `"state"` of user `id` in a LOGIN_ACK's friend list.
pub fn friend_state(ack: &Value, id: i64) -> String {
    let friends = ack_list(ack, "friends");
    let f = friends
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("user {id} is not among the friends of {ack}"));
    f["state"].as_str().unwrap_or_default().to_owned()
}

/// The `"state"` of member `id` of group `gid` in a LOGIN_ACK.
pub fn member_state(ack: &Value, gid: i64, id: i64) -> String {
    let groups = ack_list(ack, "groups");
    let g = groups
        .iter()
        .find(|g| g["id"] == gid)
        .unwrap_or_else(|| panic!("group {gid} is not in {ack}"));
    let members = ack_list(g, "users");
    let m = members
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("user {id} is not a member of group {gid} in {ack}"));
    m["state"].as_str().unwrap_or_default().to_owned()
}

/// Asserts a delivered chat frame: msgid, sender, sender name, text.
pub fn check_chat(v: &Value, msgid: i64, from: i64, name: &str, msg: &str) {
    assert_eq!(v["msgid"], msgid, "{v}");
    assert_eq!(v["id"], from, "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["msg"], msg, "{v}");
}

/// A blocking client of one node (or of nginx).
pub struct Client {
    stream: TcpStream,
    reader: FrameReader,
}

impl Client {
    /// Connects to `127.0.0.1:port`.
    pub fn connect(port: u16) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Client {
            stream,
            reader: FrameReader::new(CLIENT_FRAME_LIMIT),
        }
    }

    /// A second handle on the socket, for a writer thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    /// Sends `v`, compact JSON + `0x00`, in one write.
    pub fn send(&mut self, v: &Value) {
        self.try_send_raw(&frame_bytes(v))
            .unwrap_or_else(|e| panic!("send {v}: {e}"));
    }

    /// Sends exactly `bytes`.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame, if one arrives before `deadline`. PRESENCE notices (msgid
    /// 25: a friend came or went) are skipped: these clients opt in to extended
    /// replies, and none of the tests here is about presence (social.rs is).
    pub fn recv_by(&mut self, deadline: Instant) -> Recv {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.reader.next_frame() {
                Ok(Some(v)) if v["msgid"] == 25 => continue,
                Ok(Some(v)) => return Recv::Frame(v),
                Ok(None) => {}
                Err(e) => panic!("undecodable bytes from the server: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return Recv::Eof,
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Recv::Timeout
                }
                // A reset is how a killed peer often shows up.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Recv::Eof,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame within [`TIMEOUT`].
    pub fn recv(&mut self) -> Value {
        match self.recv_by(Instant::now() + TIMEOUT) {
            Recv::Frame(v) => v,
            Recv::Timeout => panic!("no frame within {TIMEOUT:?}"),
            Recv::Eof => panic!("connection closed while waiting for a frame"),
        }
    }

    /// The next frame, which must satisfy `pred`.
    pub fn expect(&mut self, what: &str, pred: impl FnOnce(&Value) -> bool) -> Value {
        let v = self.recv();
        assert!(pred(&v), "expected {what}, got {v}");
        v
    }

    /// PING; the very next frame must be the PONG, which proves every earlier request
    /// of this connection was handled and nothing else was queued for it.
    pub fn barrier(&mut self) {
        self.try_send_raw(PING).expect("send PING");
        self.expect("PONG", |v| v["msgid"] == 14);
    }

    /// Asserts that the server closes the connection within `limit`, sending nothing first.
    pub fn expect_eof(&mut self, limit: Duration) {
        match self.recv_by(Instant::now() + limit) {
            Recv::Eof => {}
            Recv::Frame(v) => panic!("expected the connection to close, got {v}"),
            Recv::Timeout => panic!("the connection stayed open for {limit:?}"),
        }
    }

    /// Registers `name`; returns the new id.
    pub fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(&json!({"msgid": 4, "name": name, "password": password}));
        let v = self.expect("REG_ACK", |v| v["msgid"] == 5);
        assert_eq!(v["errno"], 0, "register {name}: {v}");
        v["id"].as_i64().expect("REG_ACK id")
    }

    /// Sends LOGIN; returns the LOGIN_ACK, whatever its errno.
    pub fn login(&mut self, id: i64, password: &str) -> Value {
        self.send(&json!({"id": id, "msgid": 1, "password": password}));
        self.expect("LOGIN_ACK", |v| v["msgid"] == 2)
    }

    /// Logs in; the ACK must say errno 0 for `id`.
    pub fn login_ok(&mut self, id: i64, password: &str) -> Value {
        let ack = self.login(id, password);
        assert_eq!(ack["errno"], 0, "login of {id} failed: {ack}");
        assert_eq!(ack["id"], id, "login of {id}: {ack}");
        ack
    }

    /// Logs in; the ACK must be the legacy errno 2, byte for byte.
    pub fn login_already_online(&mut self, id: i64, password: &str) {
        let ack = self.login(id, password);
        assert_eq!(
            ack,
            json!({"errmsg": MSG_ALREADY_ONLINE, "errno": 2, "msgid": 2}),
            "user {id} should be reported online elsewhere"
        );
    }

    /// LOGINOUT, then a PING: done when the PONG comes back (an opted-in
    /// connection gets the LOGINOUT ACK first).
    pub fn logout(&mut self, id: i64) {
        let mut bytes = frame_bytes(&json!({"id": id, "msgid": 3}));
        bytes.extend_from_slice(PING);
        self.try_send_raw(&bytes).expect("send LOGINOUT");
        loop {
            let v = self.recv();
            match v["msgid"].as_i64() {
                Some(14) => return,
                Some(12) if v["reqmsgid"] == 3 && v["errno"] == 0 => {}
                _ => panic!("expected the LOGINOUT ACK or PONG, got {v}"),
            }
        }
    }

    /// The ACK (msgid 12) of an opted-in request with msgid `req`; must be errno 0.
    fn expect_ack_ok(&mut self, req: i64) -> Value {
        let v = self.expect("ACK", |v| v["msgid"] == 12);
        assert_eq!(v["reqmsgid"], req, "ACK of the wrong request: {v}");
        assert_eq!(v["errno"], 0, "request {req} failed: {v}");
        v
    }

    /// ADD_FRIEND with the opt-in ACK.
    pub fn add_friend(&mut self, id: i64, friend: i64) {
        self.send(&json!({"ext": 1, "friendid": friend, "id": id, "msgid": 7}));
        self.expect_ack_ok(7);
    }

    /// CREATE_GROUP with the opt-in ACK; returns the group id.
    pub fn create_group(&mut self, id: i64, name: &str) -> i64 {
        self.send(
            &json!({"ext": 1, "groupdesc": "cluster test", "groupname": name,
                          "id": id, "msgid": 8}),
        );
        let v = self.expect_ack_ok(8);
        v["groupid"].as_i64().expect("CREATE_GROUP ACK groupid")
    }

    /// ADD_GROUP with the opt-in ACK.
    pub fn join_group(&mut self, id: i64, group: i64) {
        self.send(&json!({"ext": 1, "groupid": group, "id": id, "msgid": 9}));
        self.expect_ack_ok(9);
    }
}
