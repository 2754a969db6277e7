//! Against a stand-in for the original C++ server: bare, unterminated JSON replies (some
//! coalesced, one large and split), no ACKs, no PONGs. Checks what the client sends, that
//! it never waits for an extended reply, and that it paces its frames (the original server
//! parses each read as one frame).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chat::codec::FrameReader;
use chat::protocol::{Friend, GroupInfo, Member, Role};
use serde_json::{json, Value};

use util::{Client, TIMEOUT};

/// What the stand-in server saw.
#[derive(Default)]
struct Log {
    /// Every frame received, in order.
    frames: Vec<Value>,
    /// When each frame of `frames` was read: no earlier than the client wrote it.
    arrivals: Vec<Instant>,
    /// The client closed the connection.
    closed: bool,
}

type Shared = Arc<(Mutex<Log>, Condvar)>;

/// A one-connection server that answers like the original one, through `respond`.
struct Legacy {
    addr: SocketAddr,
    log: Shared,
}

impl Legacy {
    fn start(respond: impl Fn(&Value, &mut TcpStream) + Send + 'static) -> Legacy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Shared = Arc::default();
        let shared = log.clone();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut frames = FrameReader::default();
            let mut buf = [0u8; 1024];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                frames.push(&buf[..n]);
                let mut got = Vec::new();
                while let Some(v) = frames.next_frame().unwrap() {
                    got.push(v);
                }
                for v in &got {
                    respond(v, &mut stream);
                }
                let now = Instant::now();
                let (lock, cv) = &*shared;
                let mut log = lock.lock().unwrap();
                log.arrivals.extend(got.iter().map(|_| now));
                log.frames.extend(got);
                cv.notify_all();
            }
            // Like the original (muduo) server: the end of input closes the connection at
            // once, so a reply still on its way is lost.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let (lock, cv) = &*shared;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
        Legacy { addr, log }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Waits until `done` holds for the log; returns the frames.
    fn wait(&self, what: &str, done: impl Fn(&Log) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        let (lock, cv) = &*self.log;
        let mut log = lock.lock().unwrap();
        while !done(&log) {
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {what}: {:?}",
                log.frames
            );
            log = cv.wait_timeout(log, deadline - now).unwrap().0;
        }
        log.frames.clone()
    }

    /// When the `i`th frame was read.
    fn arrival(&self, i: usize) -> Instant {
        self.log.0.lock().unwrap().arrivals[i]
    }
}

/// The original server's framing: compact JSON, no terminator.
fn bare(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn count(frames: &[Value], msgid: i64) -> usize {
    frames.iter().filter(|f| f["msgid"] == msgid).count()
}

#[test]
fn full_session_against_the_original_server() {
    let big = "x".repeat(100_000);
    let big_for_server = big.clone();
    let legacy = Legacy::start(move |req, stream| match req["msgid"].as_i64() {
        Some(4) => stream
            .write_all(&bare(&json!({"errno":0,"id":77,"msgid":5})))
            .unwrap(),
        Some(1) => {
            let friends = [Friend {
                id: 23,
                name: "bob".into(),
                online: true,
            }
            .to_wire()];
            let groups = [GroupInfo {
                id: 3,
                name: "g".into(),
                desc: "d".into(),
                members: vec![
                    Member {
                        id: 22,
                        name: "alice".into(),
                        role: Role::Creator,
                        online: true,
                    },
                    Member {
                        id: 23,
                        name: "bob".into(),
                        role: Role::Normal,
                        online: false,
                    },
                ],
            }
            .to_wire()];
            let offline = [
                json!({"id":23,"msg":"offline one","msgid":6,"name":"bob",
                       "time":"2024-01-01 00:00:00","toid":22})
                .to_string(),
                json!({"groupid":3,"id":23,"msg":"offline two","msgid":10,"name":"bob",
                       "time":"2024-01-01 00:00:01"})
                .to_string(),
            ];
            let ack = json!({"errno":0,"friends":friends,"groups":groups,"id":22,"msgid":2,
                             "name":"alice","offlinemsg":offline});
            let live = json!({"id":23,"msg":"live: coalesced","msgid":6,"name":"bob",
                              "time":"2024-01-01 00:00:02","toid":22});
            // The ACK and a live message in one write, back to back.
            stream
                .write_all(&[bare(&ack), bare(&live)].concat())
                .unwrap();
            // A 100 KB group message in three writes.
            let grp = bare(&json!({"groupid":3,"id":23,"msg":big_for_server,"msgid":10,
                                   "name":"bob","time":"2024-01-01 00:00:03"}));
            for part in grp.chunks(grp.len() / 3 + 1) {
                stream.write_all(part).unwrap();
                stream.flush().unwrap();
                thread::sleep(Duration::from_millis(20));
            }
        }
        _ => {}
    });

    let mut c = Client::spawn_args(
        &["127.0.0.1", &legacy.port()],
        &[("CHAT_HEARTBEAT_SECS", "0.1")],
    );
    c.send("2\nzed\npw\n");
    c.wait_for("zed register success, userid is 77, do not forget it!\n");
    c.send("1\n22\npw\n");
    let out = c.wait_for(&format!("{big}\n"));
    let prompts = "userid:userpassword:";
    let login = out.find(prompts).unwrap() + prompts.len();
    let help = "show command list >>>\n";
    let at = out.find(help).unwrap();
    assert_eq!(
        &out[login..at],
        "======================login user======================\n\
         current login user => id:22 name:alice\n\
         ----------------------friend list---------------------\n\
         23 bob online\n\
         ----------------------group list----------------------\n\
         3 g d\n\
         22 alice online creator\n\
         23 bob offline normal\n\
         ======================================================\n\
         2024-01-01 00:00:00 [23]bob said: offline one\n\
         群消息[3]:2024-01-01 00:00:01 [23]bob said: offline two\n"
    );
    let last_help = "quit : 注销并退出，格式quit\n";
    let after = &out[out.find(last_help).unwrap() + last_help.len()..];
    assert_eq!(
        after,
        format!(
            "2024-01-01 00:00:02 [23]bob said: live: coalesced\n\
             群消息[3]:2024-01-01 00:00:03 [23]bob said: {big}\n"
        )
    );

    // Commands go out although no server reply ever comes.
    let typed = Instant::now();
    c.send("chat:23:a:b\naddfriend:5\ncreategroup:g2:d: 2\naddgroup:3\ngroupchat:3:m\n");
    c.send("chat:23:1\nchat:23:2\nchat:23:3\nchat:23:4\nchat:23:5\n");
    let frames = legacy.wait("the ten commands and three PINGs", |log| {
        count(&log.frames, 6) == 6 && count(&log.frames, 13) >= 3
    });
    // Paced: the client keeps LEGACY_SEND_GAP (40 ms) between any two frames it writes,
    // PINGs included. Every command was written after `typed` and read after it was
    // written, so the last one cannot be read before `typed` + 40 ms per frame since the
    // first command, however the reads split (a client writing them back to back is read
    // within a few ms of `typed`).
    let first = frames.iter().position(|f| f["msgid"] == 6).unwrap();
    let last = frames.iter().rposition(|f| f["msgid"] == 6).unwrap();
    let gaps = u32::try_from(last - first).unwrap();
    let took = legacy.arrival(last) - typed;
    assert!(
        took >= Duration::from_millis(40) * gaps,
        "{} frames in {took:?}: not paced",
        gaps + 1
    );
    let requests: Vec<&Value> = frames.iter().filter(|f| f["msgid"] != 13).collect();
    let text = |v: &Value| v.to_string();
    assert_eq!(
        text(requests[0]),
        r#"{"ext":1,"msgid":4,"name":"zed","password":"pw"}"#
    );
    assert_eq!(
        text(requests[1]),
        r#"{"ext":1,"id":22,"msgid":1,"password":"pw"}"#
    );
    let chat = requests[2];
    assert_eq!(chat["time"].as_str().unwrap().len(), 19);
    let mut chat = chat.clone();
    chat["time"] = json!("T");
    assert_eq!(
        text(&chat),
        r#"{"ext":1,"id":22,"msg":"a:b","msgid":6,"name":"alice","time":"T","to":23,"toid":23}"#
    );
    assert_eq!(
        text(requests[3]),
        r#"{"ext":1,"friendid":5,"id":22,"msgid":7}"#
    );
    assert_eq!(
        text(requests[4]),
        r#"{"ext":1,"groupdesc":"d: 2","groupname":"g2","id":22,"msgid":8}"#
    );
    assert_eq!(
        text(requests[5]),
        r#"{"ext":1,"groupid":3,"id":22,"msgid":9}"#
    );
    let mut g = requests[6].clone();
    g["time"] = json!("T");
    assert_eq!(
        text(&g),
        r#"{"ext":1,"groupid":3,"id":22,"msg":"m","msgid":10,"name":"alice","time":"T"}"#
    );
    let more: Vec<&str> = requests[7..]
        .iter()
        .map(|r| r["msg"].as_str().unwrap())
        .collect();
    assert_eq!(more, ["1", "2", "3", "4", "5"]);
    for p in frames.iter().filter(|f| f["msgid"] == 13) {
        assert_eq!(text(p), r#"{"msgid":13}"#);
    }

    // The end of input logs out and exits 0, though the server never answers.
    c.close_stdin();
    let frames = legacy.wait("LOGINOUT and close", |log| log.closed);
    let last = frames.iter().rev().find(|f| f["msgid"] != 13).unwrap();
    assert_eq!(text(last), r#"{"ext":1,"id":22,"msgid":3}"#);
    assert!(c.wait_exit().success(), "{}", c.stderr());
    assert_eq!(c.stderr(), "");
    assert!(!c.stdout()[at..].contains("error"));
}

#[test]
fn end_of_piped_input_waits_for_late_replies() {
    let legacy = Legacy::start(|req, stream| match req["msgid"].as_i64() {
        Some(1) => stream
            .write_all(&bare(&json!({"errno":0,"id":22,"msgid":2,"name":"alice"})))
            .unwrap(),
        Some(6) => {
            // Bob answers a little later, while the server keeps reading.
            let mut stream = stream.try_clone().unwrap();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(150));
                let reply = json!({"id":23,"msg":"pong: late","msgid":6,"name":"bob",
                                   "time":"T","toid":22});
                let _ = stream.write_all(&bare(&reply));
            });
        }
        _ => {}
    });
    let mut c = Client::spawn_args(&["127.0.0.1", &legacy.port()], &[]);
    c.send("1\n22\npw\nchat:23:ping\n");
    c.close_stdin();
    assert!(c.wait_exit().success(), "{}", c.stderr());
    assert!(
        c.stdout().ends_with("T [23]bob said: pong: late\n"),
        "{}",
        c.stdout()
    );
    let frames = legacy.wait("LOGINOUT", |log| log.closed);
    assert_eq!(frames.last().unwrap()["msgid"], 3);
}

#[test]
fn legacy_login_failure_and_register_failure() {
    let legacy = Legacy::start(|req, stream| {
        let reply = match req["msgid"].as_i64() {
            Some(1) => json!({"errmsg":"id or password is invalid!","errno":1,"msgid":2}),
            Some(4) => json!({"errno":1,"msgid":5}),
            _ => return,
        };
        stream.write_all(&bare(&reply)).unwrap();
    });
    let mut c = Client::spawn_args(&["127.0.0.1", &legacy.port()], &[]);
    c.send("1\n22\nbad\n2\nbob\npw\n3\n");
    assert!(c.wait_exit().success());
    let out = c.stdout();
    assert!(
        out.contains("userid:userpassword:id or password is invalid!\n===="),
        "{out}"
    );
    assert!(
        out.contains("username:userpassword:bob is already exist, register error!\n===="),
        "{out}"
    );
}
