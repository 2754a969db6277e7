//! The offline-store bomb: S senders each send M large chats to one offline user,
//! who then logs in. Measures what the victim's first reply weighs, the server's
//! peak RSS over its base, and checks that every stored message arrives, in each
//! sender's order (refusals are counted from the senders' ACKs, errno 206).
//!
//! Blocking std sockets, one thread per sender: this scenario is about the
//! server's memory and the victim's login, not about throughput.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{rss_kib, Args};

/// How long any one read may wait.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The victim's delivery is over when nothing came for this long.
const QUIET: Duration = Duration::from_secs(5);

/// A blocking connection that reads NUL-terminated frames.
pub(crate) struct Conn {
    pub(crate) s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Conn { s, buf: Vec::new() })
    }

    pub(crate) fn send(&mut self, v: &Value) -> io::Result<()> {
        let mut b = serde_json::to_vec(v).expect("JSON");
        b.push(0);
        self.s.write_all(&b)
    }

    /// The next frame's bytes (without the NUL); `None` at EOF or timeout.
    pub(crate) fn frame(&mut self) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == 0) {
                let f: Vec<u8> = self.buf.drain(..=p).collect();
                return Some(f[..f.len() - 1].to_vec());
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub(crate) fn value(&mut self) -> Option<Value> {
        self.frame().and_then(|f| serde_json::from_slice(&f).ok())
    }

    /// Registers `name`; the new id.
    pub(crate) fn register(&mut self, name: &str, pw: &str) -> i64 {
        self.send(&json!({"msgid": 4, "name": name, "password": pw}))
            .expect("send REG");
        let v = self.value().expect("REG_ACK");
        v["id"].as_i64().unwrap_or_else(|| panic!("register: {v}"))
    }

    /// Logs in; the LOGIN_ACK's bytes.
    pub(crate) fn login(&mut self, id: i64, pw: &str) -> Vec<u8> {
        self.send(&json!({"msgid": 1, "id": id, "password": pw}))
            .expect("send LOGIN");
        self.frame().expect("LOGIN_ACK")
    }
}

/// A sender thread: registers `name`, logs in (ext), sends `count` chats of
/// `pad_len` padding to `to`, each `"S:I:pad"` (S = `index`, I counting from 0),
/// then a PING; returns how many were refused with errno 206 (counted from the
/// ACKs until the PONG).
pub(crate) fn spawn_sender(
    addr: SocketAddr,
    name: String,
    pw: String,
    to: i64,
    index: usize,
    count: usize,
    pad_len: usize,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut c = Conn::connect(addr).expect("connect");
        let id = c.register(&name, &pw);
        let ack: Value = serde_json::from_slice(&c.login(id, &pw)).expect("LOGIN_ACK");
        assert_eq!(ack["errno"], 0, "sender login: {ack}");
        let mut reader = Conn {
            s: c.s.try_clone().expect("clone"),
            buf: std::mem::take(&mut c.buf),
        };
        // Counts refusals until the final PONG.
        let counter = thread::spawn(move || {
            let mut refused = 0u64;
            while let Some(v) = reader.value() {
                match v["msgid"].as_i64() {
                    Some(12) if v["errno"] == 206 => refused += 1,
                    Some(14) => break,
                    _ => {}
                }
            }
            refused
        });
        let pad = "x".repeat(pad_len);
        for i in 0..count {
            let msg = format!("{index}:{i:05}:{pad}");
            c.send(&json!({"msgid": 6, "id": id, "name": name, "toid": to,
                "to": to, "msg": msg, "time": "2026-01-01 00:00:00", "ext": 1}))
                .expect("send chat");
        }
        c.send(&json!({"msgid": 13})).expect("send PING");
        counter.join().expect("counter")
    })
}

/// The `msg` texts of a LOGIN_ACK's offline messages, in order.
pub(crate) fn offline_texts(ack: &Value) -> Vec<String> {
    ack["offlinemsg"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| serde_json::from_str::<Value>(m.as_str()?).ok())
        .filter_map(|m| m["msg"].as_str().map(str::to_owned))
        .collect()
}

/// Prints the senders' line of a report.
pub(crate) fn print_sent(sent_in: Duration, refused: &[u64]) {
    println!(
        "  sent in            {:.1} s; refused {:?} (errno 206)",
        sent_in.as_secs_f64(),
        refused
    );
}

/// Splits a bench message `"S:I:pad"` into (S, I).
pub(crate) fn sender_and_index(m: &str) -> Option<(usize, usize)> {
    let mut parts = m.splitn(3, ':');
    let s = parts.next()?.parse().ok()?;
    let i = parts.next()?.parse().ok()?;
    Some((s, i))
}

/// Samples a process's RSS until told to stop; keeps the peak (KiB).
fn sample_rss(pid: u32, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs the bomb against `addr`; prints a report (text and one JSON line).
pub fn run(args: &Args, addr: SocketAddr) {
    let (senders, per_sender) = (args.senders, args.messages);
    let pw = args.password.clone();
    let tag = format!(
        "{}{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1000
    );
    let mut victim = Conn::connect(addr).expect("connect");
    let victim_id = victim.register(&format!("bomb-victim-{tag}"), &pw);
    let base = args.server_pid.and_then(rss_kib);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base.unwrap_or(0)));
    let sampler = args
        .server_pid
        .map(|pid| sample_rss(pid, stop.clone(), peak.clone()));

    let pad_len = args.msg_size.saturating_sub(16);
    let started = Instant::now();
    let threads: Vec<_> = (0..senders)
        .map(|s| {
            let name = format!("bomb-sender-{tag}-{s}");
            spawn_sender(addr, name, pw.clone(), victim_id, s, per_sender, pad_len)
        })
        .collect();
    let refused: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    let sent_in = started.elapsed();

    let login_at = Instant::now();
    let first = victim.login(victim_id, &pw);
    let first_reply = login_at.elapsed();
    let ack: Value = serde_json::from_slice(&first).expect("LOGIN_ACK");
    assert_eq!(ack["errno"], 0, "victim login: {ack}");
    let mut msgs = offline_texts(&ack);
    let in_ack = msgs.len();
    victim.s.set_read_timeout(Some(QUIET)).expect("timeout");
    while let Some(v) = victim.value() {
        if v["msgid"] == 6 {
            msgs.push(v["msg"].as_str().unwrap_or_default().to_owned());
        }
    }
    let delivered_in = login_at.elapsed().saturating_sub(QUIET);
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        s.join().expect("sampler");
    }

    // Every stored message, in each sender's order: sender s's accepted ones are
    // exactly its first (M - refused[s]).
    let mut next = vec![0usize; senders];
    let mut in_order = true;
    for m in &msgs {
        let (s, i) = sender_and_index(m).unwrap_or((usize::MAX, usize::MAX));
        if s >= senders || i != next[s] {
            in_order = false;
            break;
        }
        next[s] += 1;
    }
    let complete = (0..senders).all(|s| next[s] as u64 + refused[s] == per_sender as u64);
    let stored: u64 = (0..senders).map(|s| per_sender as u64 - refused[s]).sum();
    let peak_kib = peak.load(Ordering::Relaxed);
    println!(
        "bomb: {senders} senders x {per_sender} x {} B to one offline user",
        args.msg_size
    );
    print_sent(sent_in, &refused);
    println!(
        "  first reply        {} bytes, {:.0} ms after LOGIN ({in_ack} messages in it)",
        first.len(),
        first_reply.as_secs_f64() * 1e3
    );
    println!("  delivered          {} of {stored} stored, in {:.1} s; in order: {in_order}; complete: {complete}", msgs.len(), delivered_in.as_secs_f64());
    if let Some(base) = base {
        println!(
            "  server RSS         base {} MiB, peak {} MiB (+{} MiB)",
            base / 1024,
            peak_kib / 1024,
            peak_kib.saturating_sub(base) / 1024
        );
    }
    let report = json!({
        "scenario": "bomb", "senders": senders, "messages": per_sender, "msg_size": args.msg_size,
        "refused": refused, "stored": stored, "delivered": msgs.len(), "in_order": in_order,
        "complete": complete, "first_reply_bytes": first.len(),
        "first_reply_ms": first_reply.as_secs_f64() * 1e3, "in_login_ack": in_ack,
        "send_s": sent_in.as_secs_f64(), "deliver_s": delivered_in.as_secs_f64(),
        "rss_base_kib": base, "rss_peak_kib": args.server_pid.map(|_| peak_kib),
    });
    println!("{report}");
    if !(in_order && complete) {
        std::process::exit(1);
    }
}
