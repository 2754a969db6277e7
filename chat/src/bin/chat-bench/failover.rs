//! The `failover` scenario: `-n` users spread over the `--targets` nodes chat in
//! pairs across nodes (every message with a `cid`, every user acking with
//! SEQ_ACK); after the warm-up the bench kills one node (`--kill-pid`, the node at
//! `--kill-target`) with SIGKILL. Its users reconnect (jittered backoff) to a
//! surviving node, as nginx would send them, and RESUME with their token and last
//! `dseq`. It reports the time until 99 % of them are chatting again (the first
//! chat, sent right after the resume, was confirmed), messages lost (confirmed but never received),
//! duplicates a client would have shown (a message shown twice under different
//! `dseq`s), the CPU the survivors spent (`--survivor-pids`) and the password hashes
//! they computed meanwhile (`--metrics`, their admin addresses).
//!
//! Plain threads over non-blocking sockets and `poll(2)`; each thread owns a slice
//! of the users.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chat::codec::FrameReader;
use serde_json::{json, Value};

use crate::server_proc::{cpu_time, CpuTime};
use crate::Args;

/// How long a blocking setup reply may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames a user reads between two SEQ_ACKs, at most.
const ACK_EVERY: u32 = 32;

/// One simulated user.
struct User {
    id: i64,
    partner: i64,
    token: String,
    conn: Option<Conn>,
    /// Index of the target it is connected to.
    target: usize,
    /// Next message number (its `cid` and part of its text).
    next_k: u64,
    next_send: Instant,
    /// cid → when sent after the last resume (for "chatting again").
    sent_at: HashMap<u64, Instant>,
    confirmed: HashSet<u64>,
    /// (sender, k) shown.
    shown: HashSet<(i64, u64)>,
    seen_dseq: HashSet<u64>,
    last_dseq: u64,
    since_ack: u32,
    dup_shown: u64,
    suppressed: u64,
    /// Reconnecting: the attempt number and when to try next.
    retry: Option<(u32, Instant)>,
    /// A RESUME is out.
    resuming: bool,
    /// RESUMEs sent (a refused or unanswered one is retried).
    resumes_sent: u32,
    resumed_at: Option<Instant>,
    /// Chatting again: a chat sent after the resume was confirmed.
    recovered_at: Option<Instant>,
    on_dead: bool,
}

/// A non-blocking connection with its buffers.
struct Conn {
    s: TcpStream,
    reader: FrameReader,
    out: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            reader: FrameReader::new(64 << 20),
            out: Vec::new(),
        })
    }

    fn queue(&mut self, v: &Value) {
        self.out.extend_from_slice(&chat::protocol::encode(v));
    }

    /// Writes what it can; an error means the connection is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.s.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what is there; returns the frames, or an error when it closed.
    fn read(&mut self) -> io::Result<Vec<Value>> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let mut frames = Vec::new();
        while let Ok(Some(v)) = self.reader.next_frame() {
            frames.push(v);
        }
        Ok(frames)
    }

    /// Blocking: sends `v` and waits for the reply with `msgid`.
    fn ask(&mut self, v: &Value, msgid: i64) -> io::Result<Value> {
        self.s.set_read_timeout(Some(SETUP_TIMEOUT))?;
        self.s.write_all(&chat::protocol::encode(v))?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            while let Ok(Some(r)) = self.reader.next_frame() {
                if r["msgid"] == msgid {
                    return Ok(r);
                }
            }
            let n = self.s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.reader.push(&buf[..n]);
        }
    }
}

/// What the threads share.
struct Shared {
    targets: Vec<SocketAddr>,
    dead: usize,
    period: Duration,
    killed_at: parking_lot::Mutex<Option<Instant>>,
    stop_sending: AtomicBool,
    stop: AtomicBool,
    ready: AtomicUsize,
    password: String,
    /// Every user's id by index, filled in during setup (pairs are i and i^1).
    ids: parking_lot::Mutex<Vec<i64>>,
    users: usize,
}

/// Runs the scenario and prints the report.
pub fn run(args: &Args, targets: Vec<SocketAddr>) {
    let Some(pid) = args.kill_pid else {
        eprintln!("chat-bench failover: --kill-pid is required");
        std::process::exit(2);
    };
    if targets.len() < 2 || args.kill_target >= targets.len() {
        eprintln!("chat-bench failover: two or more --targets, --kill-target among them");
        std::process::exit(2);
    }
    let n = args.users & !1;
    // Every user sends one chat per `period` (--rate: messages per second in all).
    let rate = if args.rate > 0.0 { args.rate } else { n as f64 };
    let shared = Arc::new(Shared {
        targets,
        dead: args.kill_target,
        period: Duration::from_secs_f64(n as f64 / rate),
        killed_at: parking_lot::Mutex::new(None),
        stop_sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        password: args.password.clone(),
        ids: parking_lot::Mutex::new(vec![0; n]),
        users: n,
    });
    let threads = args.threads.max(1);
    let tag = std::process::id();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let shared = shared.clone();
            let names: Vec<(usize, String)> = (0..n)
                .filter(|i| i % threads == t)
                .map(|i| (i, format!("fo{tag}_{i}")))
                .collect();
            thread::spawn(move || worker(&shared, names))
        })
        .collect();
    while shared.ready.load(Ordering::Relaxed) < n {
        eprint!(
            "\rsetup: {}/{n} logged in",
            shared.ready.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("\rsetup: {n}/{n} logged in; traffic for {} s", args.warmup);
    thread::sleep(Duration::from_secs_f64(args.warmup));

    let cpu0: Vec<Option<CpuTime>> = args.survivor_pids.iter().map(|&p| cpu_time(p)).collect();
    let hashes0 = hash_total(&args.metrics);
    let t0 = Instant::now();
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc != 0 {
        eprintln!(
            "chat-bench failover: kill {pid}: {}",
            io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    *shared.killed_at.lock() = Some(t0);
    eprintln!("killed {pid} (the node at {})", shared.targets[shared.dead]);
    thread::sleep(Duration::from_secs_f64(args.duration));
    let cpu: Vec<Option<CpuTime>> = args
        .survivor_pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, c0)| Some(cpu_time(p)?.since(c0.as_ref()?)))
        .collect();
    let hashes = hash_total(&args.metrics).zip(hashes0).map(|(a, b)| a - b);
    let window = t0.elapsed().as_secs_f64();
    shared.stop_sending.store(true, Ordering::Relaxed);
    // In-flight and stored frames arrive meanwhile.
    thread::sleep(Duration::from_secs(3));
    shared.stop.store(true, Ordering::Relaxed);
    let users: Vec<User> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a failover thread"))
        .collect();
    report(args, &users, t0, window, &cpu, hashes);
}

fn report(
    args: &Args,
    users: &[User],
    t0: Instant,
    window: f64,
    cpu: &[Option<CpuTime>],
    hashes: Option<u64>,
) {
    let by_id: HashMap<i64, &User> = users.iter().map(|u| (u.id, u)).collect();
    let mut lost = 0u64;
    let mut confirmed = 0u64;
    for u in users {
        let p = by_id[&u.partner];
        confirmed += u.confirmed.len() as u64;
        lost += u
            .confirmed
            .iter()
            .filter(|k| !p.shown.contains(&(u.id, **k)))
            .count() as u64;
    }
    let dups: u64 = users.iter().map(|u| u.dup_shown).sum();
    let suppressed: u64 = users.iter().map(|u| u.suppressed).sum();
    let dead: Vec<&User> = users.iter().filter(|u| u.on_dead).collect();
    let times = since_kill(&dead, t0, |u| u.recovered_at);
    let q = |f: f64| quantile(&times, f);
    // The two halves of "chatting again": the RESUME_ACK, then the first chat's
    // confirmation; and how many RESUMEs that took (a 110 or a refused connect retries).
    let resumed = since_kill(&dead, t0, |u| u.resumed_at);
    let tries: Vec<u32> = dead.iter().map(|u| u.resumes_sent).collect();
    let retried = tries.iter().filter(|&&n| n > 1).count();
    let max_tries = tries.iter().copied().max().unwrap_or(0);
    let recovered = times.iter().filter(|t| t.is_finite()).count();
    let cpu_us: Vec<Value> = cpu
        .iter()
        .map(|c| {
            c.map_or(
                Value::Null,
                |c| json!({"user_us": c.user_us, "sys_us": c.sys_us}),
            )
        })
        .collect();
    let r = json!({
        "scenario": "Failover",
        "targets": args.targets,
        "users": users.len(),
        "users_on_killed_node": dead.len(),
        "recovered": recovered,
        "recovery_p50_s": q(0.5),
        "recovery_p99_s": q(0.99),
        "recovery_max_s": q(1.0),
        "resumed_p50_s": quantile(&resumed, 0.5),
        "resumed_p99_s": quantile(&resumed, 0.99),
        "users_resumed_after_retries": retried,
        "max_resumes_sent": max_tries,
        "confirmed": confirmed,
        "lost": lost,
        "duplicates_shown": dups,
        "redelivered_and_dropped": suppressed,
        "survivor_cpu_window_s": window,
        "survivor_cpu": cpu_us,
        "survivor_password_hashes": hashes,
    });
    println!(
        "scenario            Failover ({} users, {} on the killed node)",
        users.len(),
        dead.len()
    );
    println!(
        "chatting again      p50 {:.2} s  p99 {:.2} s  max {:.2} s ({recovered}/{} recovered)",
        q(0.5),
        q(0.99),
        q(1.0),
        dead.len()
    );
    println!(
        "resumed (RESUME_ACK) p50 {:.2} s  p99 {:.2} s; {retried} user(s) sent more than one RESUME (max {max_tries})",
        quantile(&resumed, 0.5),
        quantile(&resumed, 0.99),
    );
    println!("confirmed           {confirmed}");
    println!("lost                {lost} (confirmed, never received)");
    println!("duplicates shown    {dups} ({suppressed} re-delivered and dropped by dseq)");
    for (pid, c) in args.survivor_pids.iter().zip(cpu) {
        if let Some(c) = c {
            println!(
                "survivor {pid:<10} {:.3} s user + {:.3} s sys over the {window:.1} s after the kill",
                c.user_us as f64 / 1e6,
                c.sys_us as f64 / 1e6
            );
        }
    }
    match hashes {
        Some(h) => println!("password hashes     {h} on the survivors after the kill"),
        None => println!("password hashes     unknown (give --metrics)"),
    }
    println!("{r}");
    if let Some(path) = &args.json {
        let _ = std::fs::write(path, format!("{r:#}\n"));
    }
}

/// The sum of `chat_password_hashes_total` over the admin endpoints that answer.
fn hash_total(admins: &[String]) -> Option<u64> {
    if admins.is_empty() {
        return None;
    }
    let mut sum = 0;
    for a in admins {
        let Ok(mut s) = TcpStream::connect(a) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {a}\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        sum += body
            .lines()
            .find(|l| l.starts_with("chat_password_hashes_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(sum)
}

/// One thread: registers and logs in its users (blocking), then runs their traffic.
fn worker(shared: &Shared, names: Vec<(usize, String)>) -> Vec<User> {
    let n_targets = shared.targets.len();
    let mut users = Vec::new();
    for (i, name) in names {
        let target = i % n_targets;
        let addr = shared.targets[target];
        let mut c = Conn::connect(addr).expect("connect for setup");
        let reg = json!({"msgid": 4, "name": name, "password": shared.password, "ext": 1});
        let r = c.ask(&reg, 5).expect("REG");
        let id = r["id"].as_i64().expect("REG_ACK id");
        let login = json!({"msgid": 1, "id": id, "password": shared.password, "ext": 1, "acks": 1});
        let r = c.ask(&login, 2).expect("LOGIN");
        assert_eq!(r["errno"], 0, "login of {id}: {r}");
        c.s.set_nonblocking(true).expect("non-blocking");
        shared.ids.lock()[i] = id;
        let mut u = User {
            id,
            partner: 0,
            token: r["token"].as_str().expect("a token").to_owned(),
            conn: Some(c),
            target,
            next_k: 1,
            next_send: Instant::now(),
            sent_at: HashMap::new(),
            confirmed: HashSet::new(),
            shown: HashSet::new(),
            seen_dseq: HashSet::new(),
            last_dseq: 0,
            since_ack: 0,
            dup_shown: 0,
            suppressed: 0,
            retry: None,
            resuming: false,
            resumes_sent: 0,
            resumed_at: None,
            recovered_at: None,
            on_dead: target == shared.dead,
        };
        for m in r["offlinemsg"].as_array().into_iter().flatten() {
            if let Some(v) = m.as_str().and_then(|t| serde_json::from_str(t).ok()) {
                u.chat(&v);
            }
        }
        users.push((i, u));
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
    // Users i and i^1 are partners (on different nodes): known once all are in.
    while shared.ready.load(Ordering::Relaxed) < shared.users {
        thread::sleep(Duration::from_millis(10));
    }
    let ids = shared.ids.lock().clone();
    let mut users: Vec<User> = users
        .into_iter()
        .map(|(i, mut u)| {
            u.partner = ids[i ^ 1];
            u
        })
        .collect();
    traffic(shared, &mut users);
    users
}

impl User {
    /// Takes a chat frame: shown once per `dseq`; a message shown again under a new
    /// `dseq` is a duplicate a client would have shown.
    fn chat(&mut self, v: &Value) {
        if let Some(d) = v["dseq"].as_u64() {
            if !self.seen_dseq.insert(d) {
                self.suppressed += 1;
                return;
            }
            self.last_dseq = self.last_dseq.max(d);
            self.since_ack += 1;
        }
        let Some((from, k)) = v["msg"].as_str().and_then(parse_msg) else {
            return;
        };
        if !self.shown.insert((from, k)) {
            self.dup_shown += 1;
        }
    }

    fn frame(&mut self, v: &Value, now: Instant) {
        match v["msgid"].as_i64() {
            Some(6) => self.chat(v),
            Some(12) if v["errno"] == 0 => {
                if let Some(cid) = v["cid"].as_u64() {
                    self.confirmed.insert(cid);
                    if self.resumed_at.is_some()
                        && self.recovered_at.is_none()
                        && self.sent_at.contains_key(&cid)
                    {
                        self.recovered_at = Some(now);
                    }
                }
            }
            Some(18) => {
                self.resuming = false;
                if v["errno"] == 0 {
                    self.token = v["token"].as_str().unwrap_or_default().to_owned();
                    self.resumed_at = Some(now);
                    self.sent_at.clear();
                    // The person types right away: "chatting again" is then the
                    // resume plus one confirmed round trip.
                    self.next_send = now;
                    for m in v["offlinemsg"].as_array().into_iter().flatten() {
                        if let Some(f) = m.as_str().and_then(|t| serde_json::from_str(t).ok()) {
                            self.chat(&f);
                        }
                    }
                } else {
                    self.drop_conn(now);
                }
            }
            // An "unavailable" answer to RESUME (a drain under way): try again.
            Some(11) if v["reqmsgid"] == 17 => self.drop_conn(now),
            _ => {}
        }
    }

    /// The connection is gone: reconnect after a jittered backoff.
    fn drop_conn(&mut self, now: Instant) {
        self.conn = None;
        self.resuming = false;
        let attempt = self.retry.map_or(0, |(a, _)| a + 1);
        self.retry = Some((attempt, now + backoff(attempt, self.id)));
    }
}

/// Seconds from the kill (`t0`) to `at` of each user, sorted (infinite: never).
fn since_kill(users: &[&User], t0: Instant, at: impl Fn(&User) -> Option<Instant>) -> Vec<f64> {
    let mut v: Vec<f64> = users
        .iter()
        .map(|u| at(u).map_or(f64::INFINITY, |t| (t - t0).as_secs_f64()))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `f` quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], f: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1]
}

/// 50 ms doubling to 1 s, jittered to 50–100 % by the user id and attempt.
fn backoff(attempt: u32, id: i64) -> Duration {
    let base = Duration::from_millis(50 << attempt.min(4));
    let j = ((id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) ^ (u64::from(attempt) * 7919);
    base.mul_f64(0.5 + 0.5 * ((j % 1000) as f64 / 1000.0))
}

/// `fo:<sender>:<k>` → (sender, k).
fn parse_msg(m: &str) -> Option<(i64, u64)> {
    let mut it = m.strip_prefix("fo:")?.split(':');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The traffic loop: send on schedule, read, ack, reconnect, until told to stop.
fn traffic(shared: &Shared, users: &mut [User]) {
    let n_targets = shared.targets.len();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let sending = !shared.stop_sending.load(Ordering::Relaxed);
        for u in users.iter_mut() {
            if u.conn.is_none() {
                let due = u.retry.is_some_and(|(_, at)| at <= now);
                if due {
                    // As nginx would: a live node (the next one after the dead).
                    let mut t = (u.target + 1 + u.id as usize) % n_targets;
                    if t == shared.dead {
                        t = (t + 1) % n_targets;
                    }
                    match Conn::connect(shared.targets[t]) {
                        Ok(mut c) => {
                            let _ = c.s.set_nonblocking(true);
                            c.queue(&json!({"ext": 1, "id": u.id, "lastseq": u.last_dseq,
                                "msgid": 17, "token": u.token}));
                            u.conn = Some(c);
                            u.target = t;
                            u.resuming = true;
                            u.resumes_sent += 1;
                        }
                        Err(_) => u.drop_conn(now),
                    }
                }
                continue;
            }
            if sending && !u.resuming && u.next_send <= now {
                let k = u.next_k;
                u.next_k += 1;
                u.next_send = now + shared.period;
                let msg = json!({"cid": k, "ext": 1, "id": u.id, "msg": format!("fo:{}:{k}", u.id),
                    "msgid": 6, "to": u.partner, "toid": u.partner});
                if u.resumed_at.is_some() {
                    u.sent_at.insert(k, now);
                }
                u.conn.as_mut().expect("connected").queue(&msg);
            }
            if u.since_ack >= ACK_EVERY || (u.since_ack > 0 && !sending) {
                let ack = json!({"msgid": 19, "seq": u.last_dseq});
                u.conn.as_mut().expect("connected").queue(&ack);
                u.since_ack = 0;
            }
            let c = u.conn.as_mut().expect("connected");
            if c.flush().is_err() {
                u.drop_conn(now);
            }
        }
        fds.clear();
        fds.extend(users.iter().filter_map(|u| {
            u.conn.as_ref().map(|c| libc::pollfd {
                fd: c.s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
        }));
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
        let now = Instant::now();
        for u in users.iter_mut() {
            let Some(c) = u.conn.as_mut() else { continue };
            match c.read() {
                Ok(frames) => frames.iter().for_each(|v| u.frame(v, now)),
                Err(_) => u.drop_conn(now),
            }
        }
    }
}
