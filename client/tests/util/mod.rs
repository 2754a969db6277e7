//! Helpers shared by the client's integration tests: a real ChatServer on its own thread
//! with an SQLite temp file, the built `ChatClient` binary driven through pipes, and a raw
//! protocol connection for fast test setup.
//!
//! Every wait has a deadline ([`TIMEOUT`]): a child that does not finish in time is killed
//! and the test fails with the transcript, instead of hanging.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat::codec::FrameReader;

pub mod proxy;
use chat::protocol::{encode, msgid};
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use serde_json::{json, Value};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The password every test user gets.
pub const PW: &str = "pw";

/// The top menu and its prompt, as printed.
pub const MENU: &str = "========================\n1. login\n2. register\n3. quit\n\
                        ========================\nchoice:";

/// A ChatServer on its own thread over a fresh SQLite file, removed on drop.
pub struct TestServer {
    server: Option<ServerThread>,
    addr: SocketAddr,
    db: PathBuf,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with a free port and an empty database.
    pub fn start() -> TestServer {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let db = std::env::temp_dir().join(format!(
            "chatclient-test-{}-{}-{nanos}.db",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let server = launch(&db, |_| {});
        TestServer {
            addr: server.addr(),
            server: Some(server),
            db,
        }
    }

    /// Stops the server and starts a new one (on a new port) over the same database, with
    /// options changed by `tune` (e.g. a login timeout too short for test setup).
    pub fn restart_with(&mut self, tune: impl FnOnce(&mut ServerOptions)) {
        self.stop();
        let server = launch(&self.db, tune);
        self.addr = server.addr();
        self.server = Some(server);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port, as the client's second argument.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Stops the server as SIGTERM would (its users are logged out, connections closed).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }

    /// Registers `name` with [`PW`] over a raw connection and returns the new id.
    pub fn register(&self, name: &str) -> i64 {
        let mut raw = Raw::connect(self.addr);
        raw.send(json!({"msgid": msgid::REG, "name": name, "password": PW}));
        let ack = raw.recv_msgid(msgid::REG_ACK);
        assert_eq!(ack["errno"], 0, "register {name}: {ack}");
        ack["id"].as_i64().unwrap()
    }

    /// A raw connection logged in as `id` (with `"ext":1`, so it gets ACKs).
    pub fn login(&self, id: i64) -> Raw {
        let mut raw = Raw::connect(self.addr);
        raw.send(json!({"ext": 1, "id": id, "msgid": msgid::LOGIN, "password": PW}));
        let ack = raw.recv_msgid(msgid::LOGIN_ACK);
        assert_eq!(ack["errno"], 0, "login {id}: {ack}");
        raw.id = id;
        raw
    }
}

/// A server thread on 127.0.0.1:0 over the SQLite file `db`.
fn launch(db: &std::path::Path, tune: impl FnOnce(&mut ServerOptions)) -> ServerThread {
    let mut opts = ServerOptions {
        io_threads: 1,
        workers: 2,
        ..ServerOptions::default()
    };
    tune(&mut opts);
    ServerThread::start(
        "127.0.0.1:0".parse().unwrap(),
        &format!("sqlite:{}", db.display()),
        opts,
    )
    .expect("server starts")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A bare protocol connection, for setting up users, friends and groups quickly.
pub struct Raw {
    stream: TcpStream,
    frames: FrameReader,
    /// The logged-in user, 0 before login.
    pub id: i64,
}

impl Raw {
    /// Connects with a read timeout of [`TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            stream,
            frames: FrameReader::default(),
            id: 0,
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, v: Value) {
        self.stream.write_all(&encode(&v)).expect("send");
    }

    /// The next frame; panics after [`TIMEOUT`].
    pub fn recv(&mut self) -> Value {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(v) = self.frames.next_frame().expect("a valid frame") {
                return v;
            }
            let n = self
                .stream
                .read(&mut buf)
                .expect("a frame within the timeout");
            assert!(n > 0, "server closed the raw connection");
            self.frames.push(&buf[..n]);
        }
    }

    /// The next frame with this msgid, skipping others.
    pub fn recv_msgid(&mut self, id: i64) -> Value {
        loop {
            let v = self.recv();
            if v["msgid"] == id {
                return v;
            }
        }
    }

    /// Sends an opted-in request as this user and returns the ACK (msgid 12) answering it.
    pub fn request(&mut self, mut v: Value) -> Value {
        v["ext"] = json!(1);
        v["id"] = json!(self.id);
        let req = v["msgid"].clone();
        self.send(v);
        loop {
            let a = self.recv_msgid(msgid::ACK);
            if a["reqmsgid"] == req {
                return a;
            }
        }
    }

    /// Adds `friend` to this user's friends.
    pub fn add_friend(&mut self, friend: i64) {
        let a = self.request(json!({"friendid": friend, "msgid": msgid::ADD_FRIEND}));
        assert_eq!(a["errno"], 0, "{a}");
    }

    /// Creates a group and returns its id.
    pub fn create_group(&mut self, name: &str, desc: &str) -> i64 {
        let a = self
            .request(json!({"groupdesc": desc, "groupname": name, "msgid": msgid::CREATE_GROUP}));
        assert_eq!(a["errno"], 0, "{a}");
        a["groupid"].as_i64().unwrap()
    }

    /// Joins a group.
    pub fn join_group(&mut self, group: i64) {
        let a = self.request(json!({"groupid": group, "msgid": msgid::ADD_GROUP}));
        assert_eq!(a["errno"], 0, "{a}");
    }
}

/// Text collected from a child's pipe, with a condvar to wait for more.
type Collected = Arc<(Mutex<String>, Condvar)>;

fn collect(mut pipe: impl Read + Send + 'static) -> (Collected, JoinHandle<()>) {
    let shared: Collected = Arc::default();
    let out = shared.clone();
    let t = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending = Vec::new();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            // Keep a partial UTF-8 sequence for the next read.
            let valid = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(e) => panic!("client printed invalid UTF-8: {e}"),
            };
            let text = String::from_utf8(pending.drain(..valid).collect()).unwrap();
            let (lock, cv) = &*out;
            lock.lock().unwrap().push_str(&text);
            cv.notify_all();
        }
    });
    (shared, t)
}

/// A running `ChatClient` with piped stdin, stdout and stderr. Killed on drop.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Collected,
    err: Collected,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    /// `ChatClient 127.0.0.1 <port>` with the default environment.
    pub fn spawn(server: &TestServer) -> Client {
        Client::spawn_args(&["127.0.0.1", &server.port()], &[])
    }

    /// `ChatClient <args>` with extra environment variables.
    pub fn spawn_args(args: &[&str], envs: &[(&str, &str)]) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ChatClient"))
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ChatClient");
        let (out, t1) = collect(child.stdout.take().unwrap());
        let (err, t2) = collect(child.stderr.take().unwrap());
        Client {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            threads: vec![t1, t2],
        }
    }

    /// Writes `text` to the client's stdin.
    pub fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    /// Writes raw bytes to the client's stdin.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to the client");
        stdin.flush().unwrap();
    }

    /// Closes stdin: the end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.out.0.lock().unwrap().clone()
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.err.0.lock().unwrap().clone()
    }

    /// Waits until stdout contains `needle` `count` times; returns stdout.
    pub fn wait_for_n(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let (lock, cv) = &*self.out;
        let mut out = lock.lock().unwrap();
        while out.matches(needle).count() < count {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out waiting for {count} × {needle:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    *out,
                    self.stderr()
                );
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
        out.clone()
    }

    /// Waits until stdout contains `needle`; returns stdout.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_n(needle, 1)
    }

    /// Waits for the process to exit (killing it after [`TIMEOUT`]) and for its output.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ChatClient did not exit in time\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        status
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished scripted run printed.
pub struct Run {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// Runs `ChatClient` against `server` with `script` piped to stdin, to the end.
pub fn run_script(server: &TestServer, script: &str) -> Run {
    let mut c = Client::spawn(server);
    c.send(script);
    c.close_stdin();
    let status = c.wait_exit();
    Run {
        status,
        stdout: c.stdout(),
        stderr: c.stderr(),
    }
}

/// A piped client logged in as `id`, its banner and command list printed.
pub fn logged_in(server: &TestServer, id: i64) -> Client {
    let mut c = Client::spawn(server);
    c.send(&login(id));
    c.wait_for("show command list >>>");
    c
}

/// The login script for `id` with [`PW`].
pub fn login(id: i64) -> String {
    format!("1\n{id}\n{PW}\n")
}

/// The one line of `out` that ends with `suffix`, checking that it starts with a
/// `YYYY-MM-DD HH:MM:SS` time; returns the part before the time.
pub fn timed_line<'a>(out: &'a str, suffix: &str) -> &'a str {
    let hits: Vec<&str> = out.lines().filter(|l| l.ends_with(suffix)).collect();
    assert_eq!(hits.len(), 1, "lines ending with {suffix:?} in:\n{out}");
    let line = hits[0];
    let prefix = &line[..line.len() - suffix.len()];
    let time = &prefix[prefix.len().saturating_sub(19)..];
    let b = time.as_bytes();
    assert!(
        time.len() == 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':',
        "no time stamp in {line:?}"
    );
    &prefix[..prefix.len() - 19]
}
