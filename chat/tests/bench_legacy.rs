//! chat-bench against servers it must not break or wait on forever: a stand-in for the
//! original C++ server (it parses each read as exactly one JSON document, as the
//! original does, and answers only REG and LOGIN), a port nobody listens on, and a
//! server that accepts but never answers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chat::protocol::msgid;
use serde_json::{json, Value};

/// What the stand-in knows: users, groups, and the connections of logged-in users.
#[derive(Default)]
struct LegacyState {
    users: Vec<String>,
    groups: Vec<(String, Vec<i64>)>,
    online: HashMap<i64, TcpStream>,
    /// Set when one read held anything but one JSON document (the original aborts).
    broken: Option<String>,
}

/// A server that behaves like the original where chat-bench can trip over it.
struct LegacyServer {
    port: u16,
    state: Arc<Mutex<LegacyState>>,
    stop: Arc<AtomicBool>,
}

impl LegacyServer {
    fn start() -> LegacyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(LegacyState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !stp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        thread::spawn(move || serve(s, st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        LegacyServer { port, state, stop }
    }

    fn broken(&self) -> Option<String> {
        self.state.lock().unwrap().broken.clone()
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn send(s: &mut TcpStream, v: &Value) {
    // The original sends `json.dump()` with no terminator.
    let _ = s.write_all(v.to_string().as_bytes());
}

/// One connection: every read must be one document, as `json::parse(retrieveAll())`.
fn serve(mut s: TcpStream, state: Arc<Mutex<LegacyState>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let Ok(v) = serde_json::from_str::<Value>(text.trim_end_matches('\0')) else {
            state.lock().unwrap().broken = Some(text.into_owned());
            return;
        };
        let mut st = state.lock().unwrap();
        let id = v["id"].as_i64().unwrap_or(0);
        match v["msgid"].as_i64().unwrap_or(0) {
            msgid::REG => {
                st.users.push(v["name"].as_str().unwrap_or("").to_owned());
                let id = st.users.len() as i64;
                send(
                    &mut s,
                    &json!({"errno": 0, "id": id, "msgid": msgid::REG_ACK}),
                );
            }
            msgid::LOGIN => {
                let groups: Vec<String> = (st.groups.iter().enumerate())
                    .filter(|(_, (_, m))| m.contains(&id))
                    .map(|(g, (name, _))| {
                        json!({"id": g as i64 + 1, "groupname": name, "groupdesc": "",
                               "users": []})
                        .to_string()
                    })
                    .collect();
                st.online.insert(id, s.try_clone().unwrap());
                let mut ack = json!({"errno": 0, "id": id, "msgid": msgid::LOGIN_ACK, "name": ""});
                if !groups.is_empty() {
                    ack["groups"] = json!(groups);
                }
                send(&mut s, &ack);
            }
            msgid::LOGINOUT => {
                st.online.remove(&id);
            }
            msgid::CREATE_GROUP => {
                let name = v["groupname"].as_str().unwrap_or("").to_owned();
                st.groups.push((name, vec![id]));
            }
            msgid::ADD_GROUP => {
                let g = v["groupid"].as_i64().unwrap_or(0) as usize;
                if let Some((_, members)) = st.groups.get_mut(g.wrapping_sub(1)) {
                    members.push(id);
                }
            }
            msgid::ONE_CHAT => {
                let to = v["to"].as_i64().unwrap_or(0);
                if let Some(peer) = st.online.get_mut(&to) {
                    send(peer, &v);
                }
            }
            msgid::GROUP_CHAT => {
                let g = v["groupid"].as_i64().unwrap_or(0) as usize;
                let members = st.groups.get(g.wrapping_sub(1)).map(|(_, m)| m.clone());
                for m in members.unwrap_or_default() {
                    if m != id {
                        if let Some(peer) = st.online.get_mut(&m) {
                            send(peer, &v);
                        }
                    }
                }
            }
            _ => {} // PING and anything else: no answer, as the original.
        }
    }
}

/// Runs chat-bench with `args`; fails the test if it takes longer than `limit`.
fn bench(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat-bench");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chat-bench {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "no JSON report; stdout {stdout}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn run_against_legacy(scenario: &str, extra: &[&str]) -> Value {
    let server = LegacyServer::start();
    let target = format!("127.0.0.1:{}", server.port);
    let mut args = vec![scenario, "--targets", &target, "-d", "1", "--warmup", "0.5"];
    args.extend_from_slice(extra);
    let out = bench(&args, Duration::from_secs(60));
    assert_eq!(server.broken(), None, "two requests in one read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report(&out)
}

#[test]
fn group_setup_never_sends_a_legacy_server_two_requests_at_once() {
    let r = run_against_legacy("group", &["--groups", "2", "--group-size", "5"]);
    assert!(r["delivered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn login_storm_never_sends_a_legacy_server_two_requests_at_once() {
    let r = run_against_legacy("login", &["-n", "10"]);
    assert!(r["logins"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn one_to_one_keeps_one_message_in_flight_toward_a_legacy_server() {
    let r = run_against_legacy("one-to-one", &["-n", "10", "-w", "8"]);
    assert!(r["delivered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["window"], 1, "{r}");
    let r = run_against_legacy("one-to-one", &["-n", "10", "--rate", "20000"]);
    assert!(r["delivered"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn a_refused_target_fails_fast() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let out = bench(
        &["one-to-one", "--targets", &target, "-n", "10"],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn a_setup_that_stalls_fails_fast() {
    // Accepts and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let out = bench(
        &[
            "one-to-one",
            "--targets",
            &target,
            "-n",
            "10",
            "--setup-timeout",
            "2",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stalled"), "{err}");
}
