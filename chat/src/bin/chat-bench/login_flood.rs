//! The `login-flood` scenario: a wrong-password flood against one account from
//! `-n` connections, while a legitimate user logs in to another account now and
//! then. It reports how long those logins took (worst of `--tries`), how many of
//! the flood's guesses the server actually checked and how many it refused as
//! throttled, and — before the flood — whether a wrong id and a wrong password
//! take the same time to be refused.
//!
//! Blocking sockets and plain threads: this measures the server's latency under
//! a flood, not the load generator's throughput.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chat::codec::FrameReader;
use serde_json::{json, Value};

use crate::Args;

/// How long any one reply may take before the bench gives up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Failures per account in the timing probe: below the default throttle (5).
const PROBES_PER_ACCOUNT: usize = 4;

/// A blocking connection that speaks frames.
struct Conn {
    stream: TcpStream,
    reader: FrameReader,
}

impl Conn {
    fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Conn {
            stream,
            reader: FrameReader::new(16 << 20),
        })
    }

    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        self.stream.write_all(&chat::protocol::encode(v))
    }

    fn recv(&mut self) -> std::io::Result<Value> {
        let mut buf = [0u8; 8192];
        loop {
            match self.reader.next_frame() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.reader.push(&buf[..n]);
        }
    }

    /// Sends `v` and waits for the reply with `msgid`; returns it and the round trip.
    fn ask(&mut self, v: &Value, msgid: i64) -> std::io::Result<(Value, Duration)> {
        let t = Instant::now();
        self.send(v)?;
        loop {
            let r = self.recv()?;
            if r["msgid"] == msgid {
                return Ok((r, t.elapsed()));
            }
        }
    }
}

fn register(addr: SocketAddr, name: &str, pw: &str) -> i64 {
    let mut c = Conn::connect(addr).expect("connect");
    let (v, _) = c
        .ask(&json!({"msgid": 4, "name": name, "password": pw}), 5)
        .expect("REG");
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("registering {name} failed: {v}"))
}

fn login(c: &mut Conn, id: i64, pw: &str) -> (Value, Duration) {
    c.ask(&json!({"ext": 1, "id": id, "msgid": 1, "password": pw}), 2)
        .expect("LOGIN")
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Runs the scenario against `addr`.
pub fn run(args: &Args, addr: SocketAddr) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{:x}{nanos:x}", std::process::id());
    let pw = args.password.as_str();
    let victim = register(addr, &format!("victim{tag}"), pw);
    let others: Vec<i64> = (0..args.tries.max(1))
        .map(|i| register(addr, &format!("legit{tag}_{i}"), pw))
        .collect();

    // 1. Timing: a wrong password for existing accounts against ids that do not exist.
    let probes: Vec<i64> = (0..args.tries.max(1))
        .map(|i| register(addr, &format!("probe{tag}_{i}"), pw))
        .collect();
    let mut c = Conn::connect(addr).expect("connect");
    let (mut wrong_pw, mut wrong_id) = (Vec::new(), Vec::new());
    for (k, &id) in probes.iter().enumerate() {
        for j in 0..PROBES_PER_ACCOUNT {
            let (v, t) = login(&mut c, id, "not-the-password");
            assert_eq!(v["errno"], 1, "{v}");
            wrong_pw.push(t);
            let ghost = i64::from(u32::MAX) + (k * PROBES_PER_ACCOUNT + j) as i64;
            let (v, t) = login(&mut c, ghost, "not-the-password");
            assert_eq!(v["errno"], 1, "{v}");
            wrong_id.push(t);
        }
    }
    println!(
        "refusal time, median of {}: wrong password {:.2} ms, unknown id {:.2} ms",
        wrong_pw.len(),
        median_ms(wrong_pw),
        median_ms(wrong_id)
    );

    // 2. Baseline: the legitimate logins with no flood.
    let legit = |id: i64| {
        let mut c = Conn::connect(addr).expect("connect");
        let (v, t) = login(&mut c, id, pw);
        let ok = v["errno"] == 0;
        let _ = c.send(&json!({"id": id, "msgid": 3}));
        (ok, t)
    };
    let base: Vec<Duration> = others.iter().map(|&id| legit(id).1).collect();
    println!(
        "legitimate login, no flood: worst {:.1} ms, median {:.1} ms",
        base.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
        median_ms(base.clone())
    );

    // 3. The flood: each connection sends wrong passwords for `victim`, one at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..args.users)
        .map(|_| {
            let (stop, checked, throttled) = (stop.clone(), checked.clone(), throttled.clone());
            thread::spawn(move || {
                let Ok(mut c) = Conn::connect(addr) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok((v, _)) = c.ask(
                        &json!({"ext": 1, "id": victim, "msgid": 1, "password": "guess"}),
                        2,
                    ) else {
                        return;
                    };
                    match v["errno"].as_i64() {
                        Some(114) => throttled.fetch_add(1, Ordering::Relaxed),
                        _ => checked.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(args.warmup));
    let measure = Instant::now();
    let (c0, t0) = (
        checked.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed),
    );
    let gap = Duration::from_secs_f64(args.duration / others.len() as f64);
    let mut during = Vec::new();
    let mut failed = 0;
    for &id in &others {
        let (ok, t) = legit(id);
        failed += usize::from(!ok);
        during.push(t);
        thread::sleep(gap.saturating_sub(t));
    }
    let secs = measure.elapsed().as_secs_f64();
    let (c1, t1) = (
        checked.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let (v, _) = login(&mut Conn::connect(addr).expect("connect"), victim, pw);
    for f in flooders {
        let _ = f.join();
    }
    println!(
        "flood from {} connections, {secs:.1} s: legitimate login worst {:.1} ms, median {:.1} ms, {failed} of {} refused",
        args.users,
        during.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64() * 1e3,
        median_ms(during.clone()),
        during.len()
    );
    println!(
        "victim: {} guesses checked ({:.2}/s), {} refused as throttled ({:.0}/s); its own password now: errno {}{}",
        c1 - c0,
        (c1 - c0) as f64 / secs,
        t1 - t0,
        (t1 - t0) as f64 / secs,
        v["errno"],
        v.get("retryafter")
            .map(|r| format!(", retry after {r} s"))
            .unwrap_or_default()
    );
}
