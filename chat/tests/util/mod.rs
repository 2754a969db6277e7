//! Helpers shared by the chat integration tests: a fresh database per test on either
//! backend, a real server on `127.0.0.1:0`, and a blocking test client with a timeout on
//! every read, so a bug fails a test instead of hanging it.
//!
//! MySQL tests use `mysql://root@127.0.0.1:3306` (override: `CHAT_TEST_MYSQL_URL`, a server
//! URL without a database), create `chat_it_<pid>_<n>` and drop it afterwards, also when the
//! test panics. An unreachable MySQL fails them: there is no switch to skip them.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use chat::codec::FrameReader;
use serde_json::{json, Value};

/// How long any single wait for the server may take before the test fails: generous,
/// since a wait can cover hundreds of database commits on a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for. Short: every silence check is paired with a
/// PING barrier, which is what actually proves nothing was queued.
pub const SILENCE: Duration = Duration::from_millis(150);
/// The limit our test client puts on inbound frames: a LOGIN_ACK with hundreds of offline
/// messages is legitimately larger than the server's 64 KiB inbound limit.
pub const CLIENT_FRAME_LIMIT: usize = 16 * 1024 * 1024;
/// A fixed `time` field, so forwarded frames have predictable bytes.
pub const TIME: &str = "2024-01-02 03:04:05";

mod backend;
mod sockets;
#[allow(unused_imports)] // each test binary uses a different subset
pub use backend::{stored_rows, Backend};
#[allow(unused_imports)]
pub use sockets::{
    connect_from, connect_with_buffers, kernel_in_flight_max, settled, spawn_writer, tcp_queues,
    TcpQueues,
};

/// Polls `f` until it returns `Some`, failing after `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `sample` (a metric's name with its labels as the server prints
/// them, e.g. `chat_frames_in_total{msgid="other"}`) in the admin listener's
/// `/metrics` at `admin`; `None` if it is not there.
pub fn metric(admin: SocketAddr, sample: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).expect("connect to the admin listener");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read the scrape");
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// The bytes of `v` as our peers send it: compact JSON (sorted keys) then one `0x00`.
pub fn frame_bytes(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap();
    out.push(0);
    out
}

/// A ONE_CHAT request with the fixed [`TIME`].
pub fn one_chat(from: i64, name: &str, to: i64, msg: &str) -> Value {
    json!({"id": from, "msg": msg, "msgid": 6, "name": name, "time": TIME, "toid": to})
}

/// A GROUP_CHAT request with the fixed [`TIME`].
pub fn group_chat(from: i64, name: &str, group: i64, msg: &str) -> Value {
    json!({"groupid": group, "id": from, "msg": msg, "msgid": 10, "name": name, "time": TIME})
}

/// A blocking client over std TCP. Every read has a deadline of [`TIMEOUT`].
pub struct Client {
    stream: TcpStream,
    /// Received bytes not yet returned as frames.
    pending: Vec<u8>,
    /// Parses each received frame; also checks our framing (exactly one frame per NUL).
    reader: FrameReader,
    /// This connection sent `"ext":1` (sticky on the server too), so it gets ACKs.
    ext: bool,
}

impl Client {
    /// Connects to `addr` with `TCP_NODELAY`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::on(TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect"))
    }

    /// [`Client::connect`] with the kernel buffers capped at `bytes` before the
    /// connect ([`connect_with_buffers`]).
    pub fn with_buffers(addr: SocketAddr, bytes: usize) -> Client {
        Client::on(connect_with_buffers(addr, bytes))
    }

    /// A client on a connected socket, with `TCP_NODELAY`.
    pub fn on(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Client {
            stream,
            pending: Vec::new(),
            reader: FrameReader::new(CLIENT_FRAME_LIMIT),
            ext: false,
        }
    }

    /// The socket, for tests that need to poke it directly.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `v` as a legacy client does: compact JSON + `0x00`, in one write.
    pub fn send(&mut self, v: &Value) {
        if v.get("ext") == Some(&json!(1)) || v.get("ext") == Some(&json!(true)) {
            self.ext = true;
        }
        self.send_raw(&frame_bytes(v));
    }

    /// Sends exactly `bytes`.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().unwrap();
    }

    /// Half-closes or closes the socket without any protocol goodbye.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads more bytes into `pending`; `Ok(false)` on EOF, `Err` on timeout or error.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The exact bytes of the next frame, its terminating `0x00` included.
    pub fn recv_raw(&mut self) -> Vec<u8> {
        self.recv_raw_within(TIMEOUT)
    }

    /// [`Client::recv_raw`] with a longer wait, for a reply behind deliberately slow
    /// work (password hashes of a high cost).
    pub fn recv_raw_within(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == 0) {
                return self.pending.drain(..=pos).collect();
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => panic!(
                    "connection closed while waiting for a frame (partial: {:?})",
                    String::from_utf8_lossy(&self.pending)
                ),
                Err(e) if is_timeout(&e) => panic!(
                    "no frame within {limit:?} (partial: {:?})",
                    String::from_utf8_lossy(&self.pending)
                ),
                Err(e) => panic!("read failed while waiting for a frame: {e}"),
            }
        }
    }

    /// The next frame, parsed. Asserts our outbound format on the way: one JSON object per
    /// `0x00`, compact, keys sorted (it must equal its own canonical serialisation).
    pub fn recv(&mut self) -> Value {
        let raw = self.recv_raw();
        self.reader.push(&raw);
        let v = self
            .reader
            .next_frame()
            .unwrap_or_else(|e| panic!("bad frame {:?}: {e}", String::from_utf8_lossy(&raw)))
            .unwrap_or_else(|| panic!("no whole frame in {:?}", String::from_utf8_lossy(&raw)));
        assert_eq!(self.reader.next_frame().unwrap(), None, "two frames in one");
        assert_eq!(self.reader.pending(), 0, "bytes after the frame's NUL");
        assert_eq!(
            String::from_utf8_lossy(&raw[..raw.len() - 1]),
            v.to_string(),
            "frame is not compact JSON with sorted keys"
        );
        v
    }

    /// The next frame, which must satisfy `pred`; returned.
    pub fn expect_frame(&mut self, what: &str, pred: impl FnOnce(&Value) -> bool) -> Value {
        let v = self.recv();
        assert!(pred(&v), "expected {what}, got {v}");
        v
    }

    /// The next frame, which must have this msgid.
    pub fn expect_msgid(&mut self, msgid: i64) -> Value {
        self.expect_frame(&format!("msgid {msgid}"), |v| v["msgid"] == msgid)
    }

    /// The next frame, which must be the protocol error `errno` (msgid 11) about a request
    /// with `reqmsgid` (`None`: no `reqmsgid` field); its errmsg must say something.
    pub fn expect_error(&mut self, errno: i64, reqmsgid: Option<i64>) -> Value {
        let v = self.recv();
        assert_eq!(v["msgid"], 11, "expected an error frame, got {v}");
        assert_eq!(v["errno"], errno, "wrong errno in {v}");
        assert_eq!(
            v.get("reqmsgid").and_then(Value::as_i64),
            reqmsgid,
            "wrong reqmsgid in {v}"
        );
        assert!(
            v["errmsg"].as_str().is_some_and(|s| !s.is_empty()),
            "no errmsg in {v}"
        );
        v
    }

    /// The next frame, which must be the ACK (msgid 12) of `reqmsgid` with `errno`.
    pub fn expect_ack(&mut self, reqmsgid: i64, errno: i64) -> Value {
        let v = self.recv();
        assert_eq!(v["msgid"], 12, "expected an ACK, got {v}");
        assert_eq!(v["reqmsgid"], reqmsgid, "wrong reqmsgid in {v}");
        assert_eq!(v["errno"], errno, "wrong errno in {v}");
        assert!(v["errmsg"].is_string(), "no errmsg in {v}");
        v
    }

    /// Asserts that nothing arrives (and the connection stays open) for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        match self.fill(Instant::now() + d) {
            Err(e) if is_timeout(&e) => {}
            Ok(true) => panic!(
                "expected silence, got {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
            Ok(false) => panic!("expected silence, the connection was closed"),
            Err(e) => panic!("expected silence, read failed: {e}"),
        }
    }

    /// PING, then the very next frame must be PONG: proves that every earlier request of
    /// this connection was handled and nothing else was sent to it before the PONG.
    pub fn barrier(&mut self) {
        self.barrier_within(TIMEOUT);
    }

    /// [`Client::barrier`] behind deliberately slow work: waits up to `limit`.
    pub fn barrier_within(&mut self, limit: Duration) {
        self.send_raw(b"{\"msgid\":13}\0");
        let raw = self.recv_raw_within(limit);
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "{\"msgid\":14}\0",
            "expected PONG and nothing before it"
        );
    }

    /// [`Client::expect_silence`] for [`SILENCE`], then a [`Client::barrier`].
    pub fn expect_quiet(&mut self) {
        self.expect_silence(SILENCE);
        self.barrier();
    }

    /// Asserts that the server closes the connection, with no more frames first.
    pub fn expect_eof(&mut self) {
        self.wait_eof(false);
    }

    /// Discards whatever still arrives, then asserts that the server closes the
    /// connection.
    pub fn expect_eof_after_any(&mut self) {
        self.wait_eof(true);
    }

    /// Reads until EOF (a reset counts), failing after [`TIMEOUT`]; bytes on the way
    /// fail too unless `discard`.
    fn wait_eof(&mut self, discard: bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if discard {
                self.pending.clear();
            }
            assert!(
                self.pending.is_empty(),
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            match self.fill(deadline) {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) if is_timeout(&e) => panic!("connection still open after {TIMEOUT:?}"),
                Err(e) => panic!("expected EOF, read failed: {e}"),
            }
        }
    }

    /// Registers `name`; returns the new id (asserting the exact REG_ACK bytes).
    pub fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(&json!({"msgid": 4, "name": name, "password": password}));
        let raw = self.recv_raw();
        let v: Value = serde_json::from_slice(&raw[..raw.len() - 1])
            .unwrap_or_else(|e| panic!("REG_ACK {:?}: {e}", String::from_utf8_lossy(&raw)));
        let id = v["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("registering {name:?} failed: {v}"));
        assert_eq!(
            String::from_utf8_lossy(&raw),
            format!("{{\"errno\":0,\"id\":{id},\"msgid\":5}}\0")
        );
        id
    }

    /// Sends LOGIN and returns the LOGIN_ACK, whatever its errno.
    pub fn login(&mut self, id: i64, password: &str) -> Value {
        self.send(&json!({"id": id, "msgid": 1, "password": password}));
        self.expect_msgid(2)
    }

    /// [`Client::login`] for a login behind slow password hashes: waits up to `limit`.
    pub fn login_within(&mut self, id: i64, password: &str, limit: Duration) -> Value {
        self.send(&json!({"id": id, "msgid": 1, "password": password}));
        let raw = self.recv_raw_within(limit);
        let v: Value = serde_json::from_slice(&raw[..raw.len() - 1]).expect("a JSON reply");
        assert_eq!(v["msgid"], 2, "expected a LOGIN_ACK, got {v}");
        v
    }

    /// Logs in and asserts success; returns the LOGIN_ACK.
    pub fn login_ok(&mut self, id: i64, password: &str) -> Value {
        let v = self.login(id, password);
        assert_eq!(v["errno"], 0, "login of {id} failed: {v}");
        assert_eq!(v["id"], id);
        v
    }

    /// Sends a legacy LOGINOUT (no reply expected).
    pub fn logout(&mut self, id: i64) {
        self.send(&json!({"id": id, "msgid": 3}));
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A LOGIN_ACK list (`friends`, `groups`, `offlinemsg`) as the strings it holds; empty when
/// the key is absent. Panics if an element is not a string.
pub fn strings(ack: &Value, key: &str) -> Vec<String> {
    match ack.get(key) {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not an array in {ack}"))
            .iter()
            .map(|s| {
                s.as_str()
                    .unwrap_or_else(|| panic!("{key} holds a non-string in {ack}"))
                    .to_owned()
            })
            .collect(),
    }
}

/// A LOGIN_ACK list with each string parsed as JSON.
pub fn parsed(ack: &Value, key: &str) -> Vec<Value> {
    strings(ack, key)
        .iter()
        .map(|s| serde_json::from_str(s).unwrap_or_else(|e| panic!("{key} element {s:?}: {e}")))
        .collect()
}

/// Logs `id` in on `c`, again and again within `limit`, until the account is free
/// (a login that is being undone holds it); returns the LOGIN_ACK.
pub fn login_when_free(c: &mut Client, id: i64, pw: &str, limit: Duration) -> Value {
    poll(limit, "the account free again", || {
        let v = c.login_within(id, pw, limit);
        (v["errno"] == 0).then_some(v)
    })
}

/// The `msg` of each offline message of a LOGIN_ACK, in order.
pub fn offline_msgs(ack: &Value) -> Vec<String> {
    parsed(ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().expect("a msg").to_owned())
        .collect()
}

/// A logged-in user of a test: its connection, id, name and password.
pub struct User {
    /// The user's connection.
    pub c: Client,
    /// The user id.
    pub id: i64,
    /// The registered name.
    pub name: String,
    /// The password.
    pub pw: String,
}

impl User {
    /// Registers `name` on a new connection to `addr` (not logged in).
    pub fn register(addr: SocketAddr, name: &str) -> User {
        User::register_on(Client::connect(addr), name)
    }

    /// Registers `name` on the connection `c` (not logged in).
    pub fn register_on(mut c: Client, name: &str) -> User {
        let pw = format!("pw-{name}");
        let id = c.register(name, &pw);
        User {
            c,
            id,
            name: name.to_owned(),
            pw,
        }
    }

    /// Registers `name` and logs in on the same connection.
    pub fn online(addr: SocketAddr, name: &str) -> User {
        User::online_on(Client::connect(addr), name)
    }

    /// Registers `name` and logs in on the connection `c`.
    pub fn online_on(c: Client, name: &str) -> User {
        let mut u = User::register_on(c, name);
        u.login();
        u
    }

    /// Logs in on the user's connection; returns the LOGIN_ACK.
    pub fn login(&mut self) -> Value {
        self.c.login_ok(self.id, &self.pw)
    }

    /// Logs out, waits until the server handled it (taking its ACK if the connection
    /// opted in), then logs in again: the way to see a fresh LOGIN_ACK.
    pub fn relogin(&mut self) -> Value {
        self.c.logout(self.id);
        if self.c.ext {
            self.c.expect_ack(3, 0);
        }
        self.c.barrier();
        self.login()
    }

    /// Sends a ONE_CHAT to `to` under the user's own id and name.
    pub fn chat(&mut self, to: i64, msg: &str) {
        let v = one_chat(self.id, &self.name, to, msg);
        self.c.send(&v);
    }

    /// Sends a GROUP_CHAT to `group` under the user's own id and name.
    pub fn group_chat(&mut self, group: i64, msg: &str) {
        let v = group_chat(self.id, &self.name, group, msg);
        self.c.send(&v);
    }

    /// Creates a group named `name` (asking for its ACK); returns its id.
    pub fn create_group(&mut self, name: &str) -> i64 {
        let v = json!({"ext": 1, "groupdesc": "", "groupname": name, "id": self.id, "msgid": 8});
        self.c.send(&v);
        self.c.expect_ack(8, 0)["groupid"].as_i64().unwrap()
    }

    /// Joins `group` and waits until it was handled (taking its ACK if the
    /// connection opted in).
    pub fn join_group(&mut self, group: i64) {
        let v = json!({"groupid": group, "id": self.id, "msgid": 9});
        self.c.send(&v);
        if self.c.ext {
            self.c.expect_ack(9, 0);
        }
        self.c.barrier();
    }
}

/// The frame a recipient gets for `one_chat(from, name, to, msg)`, exactly.
pub fn delivered_one_chat(from: i64, name: &str, to: i64, msg: &str) -> String {
    one_chat(from, name, to, msg).to_string()
}

/// The frame a member gets for `group_chat(from, name, group, msg)`, exactly.
pub fn delivered_group_chat(from: i64, name: &str, group: i64, msg: &str) -> String {
    group_chat(from, name, group, msg).to_string()
}

/// Receives the next frame and asserts it is exactly `expected` + `0x00`.
pub fn expect_bytes(c: &mut Client, expected: &str) {
    let raw = c.recv_raw();
    assert_eq!(String::from_utf8_lossy(&raw), format!("{expected}\0"));
}

/// Sanity check that `serde_json` sorts keys (no `preserve_order`), which the exact-bytes
/// helpers above rely on for their expected values.
pub fn assert_serde_sorts_keys() {
    assert_eq!(json!({"b": 1, "a": 2}).to_string(), r#"{"a":2,"b":1}"#);
}
