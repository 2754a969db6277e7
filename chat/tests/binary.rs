//! The `ChatServer` binary as an operator first meets it: a host name to listen on,
//! the login time limit under its old environment name, JSON log lines with the
//! audit events, the admin listener, and a fatal error reported once, readably.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use util::Client;

/// A ChatServer child whose stderr lines arrive on a channel; killed when dropped.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    db: std::path::PathBuf,
}

impl Node {
    fn start(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Node {
        let db = std::env::temp_dir().join(format!("chat_bin_{tag}_{}.db", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ChatServer"));
        cmd.args(args)
            .arg("--db")
            .arg(format!("sqlite:{}", db.display()))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ChatServer");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Node { child, lines, db }
    }

    /// The next log line (a JSON object), within 10 s.
    fn next_json(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line within 10 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The address in the next log line whose message starts with `prefix`.
    fn addr_after(&self, prefix: &str) -> SocketAddr {
        loop {
            let v = self.next_json();
            let msg = v["msg"].as_str().unwrap_or_default().to_owned();
            if let Some(rest) = msg.strip_prefix(prefix) {
                let addr = rest.trim_start_matches("http://");
                let addr = addr.split_whitespace().next().unwrap();
                return addr.parse().expect("an address");
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn host_names_old_env_name_json_logs_and_admin() {
    let node = Node::start(
        "first",
        &[
            "localhost",
            "0",
            "--admin-addr",
            "localhost:0",
            "--log-format",
            "json",
        ],
        &[("CHAT_LOGIN_TIMEOUT", "1"), ("CHAT_ADMIN_TOKEN", "")],
    );
    let addr = node.addr_after("ChatServer listening on ");
    assert!(addr.ip().is_loopback(), "{addr}");
    let admin = node.addr_after("admin listening on ");
    // The admin listener answers.
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // CHAT_LOGIN_TIMEOUT (the old name of CHAT_LOGIN_TIMEOUT_SECS) still applies.
    let mut c = Client::connect(addr);
    c.expect_error(113, None);
    c.expect_eof();
    // A failed login makes one JSON audit line with the peer address.
    let mut c = Client::connect(addr);
    c.login(42, "nope");
    let peer = c.stream().local_addr().unwrap();
    loop {
        let v = node.next_json();
        if v["target"] == "audit" {
            assert_eq!(
                v["msg"],
                format!("login failed user=42 peer={peer} reason=bad-credentials")
            );
            assert_eq!(v["level"], "INFO");
            assert!(v["ts"].is_string());
            break;
        }
    }
}

/// Starts the binary with `args`, which must make it fail at startup, and returns
/// its one line of output, which must be an error in Display form.
fn fatal_error(name: &str, args: &[&str]) -> String {
    let mut node = Node::start(name, args, &[]);
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = node.child.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!status.success());
    // Until the reader thread saw the end of stderr.
    let mut lines = Vec::new();
    while let Ok(l) = node.lines.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    assert_eq!(lines.len(), 1, "one line, nothing else: {lines:?}");
    assert!(lines[0].contains("ERROR"), "one error line: {lines:?}");
    assert!(!lines[0].contains("Os {"), "Debug form: {lines:?}");
    lines.remove(0)
}

#[test]
fn a_fatal_error_is_reported_once_in_plain_words() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let error = fatal_error("fatal", &["127.0.0.1", &port]);
    assert!(
        error.contains(&format!(
            "cannot serve on 127.0.0.1:{port}: Address already in use"
        )),
        "{error}"
    );
}

/// A listener beside the chat one that cannot bind is named, not the chat one.
#[test]
fn a_busy_websocket_or_admin_address_is_the_one_named() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let chat = "127.0.0.1:0";
    let error = fatal_error("fatal-ws", &["127.0.0.1", "0", "--ws-addr", &busy]);
    assert!(
        error.contains(&format!(
            "cannot serve WebSocket on {busy}: Address already in use"
        )),
        "{error}"
    );
    assert!(!error.contains(chat), "names the chat listener: {error}");
    let error = fatal_error("fatal-admin", &["127.0.0.1", "0", "--admin-addr", &busy]);
    assert!(error.contains(&format!("admin listener {busy}")), "{error}");
    assert!(!error.contains(chat), "names the chat listener: {error}");
}

/// A frame limit that would refuse every frame is refused at startup, with the
/// option named.
#[test]
fn a_frame_limit_too_small_to_serve_is_refused() {
    let db = std::env::temp_dir().join(format!("chat_bin_flimit_{}.db", std::process::id()));
    for limit in ["0", "127"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ChatServer"))
            .args(["127.0.0.1", "0", "--frame-limit", limit, "--db"])
            .arg(format!("sqlite:{}", db.display()))
            .env_remove("CHAT_FRAME_LIMIT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ChatServer");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("--frame-limit {limit}: the server started");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success(), "--frame-limit {limit}: {err}");
        assert!(
            err.contains(&format!("invalid value '{limit}' for '--frame-limit"))
                && err.contains("too small"),
            "{err}"
        );
    }
    for p in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{p}", db.display()));
    }
}
