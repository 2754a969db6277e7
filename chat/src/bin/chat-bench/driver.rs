//! The loop side of chat-bench: each loop thread drives its share of simulated
//! users (one TcpClient each) through setup and the scenario.

mod legacy_login;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use chat::codec::{self, Decoded, Decoder};
use chat::protocol::{self, msgid, GroupInfo};
use net::{Buffer, EventLoop, LoopHandle, TcpClient, TcpConnectionPtr};
use serde_json::{json, Value};

use crate::stats::Stats;
use crate::{Args, Scenario};

/// The run's phases, shared by every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Setup = 0,
    GroupSetup = 1,
    Warmup = 2,
    Measure = 3,
    Drain = 4,
    Done = 5,
}

/// State shared between the main thread and the loop threads.
pub struct Shared {
    pub args: Args,
    pub targets: Vec<SocketAddr>,
    phase: AtomicU8,
    /// Microseconds since `epoch` when measuring began.
    measure_start_us: AtomicU64,
    pub epoch: Instant,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub groups_ready: AtomicUsize,
    /// Deliveries so far (for the progress line).
    pub progress: AtomicU64,
    /// Deliveries expected for messages of the measured period and not seen yet
    /// (the drain after it waits for them).
    pub outstanding: AtomicI64,
    /// A tag that makes this run's user and group names unique.
    pub run_tag: String,
    /// A target is the original server: one request in flight per connection, and a
    /// pause after each request it never answers.
    pub legacy: bool,
}

impl Shared {
    pub fn new(args: Args, targets: Vec<SocketAddr>, legacy: bool) -> Shared {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Shared {
            args,
            targets,
            phase: AtomicU8::new(Phase::Setup as u8),
            measure_start_us: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            groups_ready: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            outstanding: AtomicI64::new(0),
            run_tag: format!("{:x}", (nanos as u64) & 0xff_ffff_ffff),
            legacy,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Setup,
            1 => Phase::GroupSetup,
            2 => Phase::Warmup,
            3 => Phase::Measure,
            4 => Phase::Drain,
            _ => Phase::Done,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        if p == Phase::Measure {
            self.measure_start_us
                .store(self.now_us(), Ordering::Release);
        }
        self.phase.store(p as u8, Ordering::Release);
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether a message sent at `us` belongs to the measured period.
    /// Sending stops when the measured period ends, so the send time alone tells:
    /// a message belongs to the measurement iff it was sent after it began. The same
    /// test at the sender and at the recipient keeps `sent` and `delivered` exact.
    fn measured(&self, us: u64) -> bool {
        us >= self.measure_start_us.load(Ordering::Acquire)
    }

    fn sending(&self) -> bool {
        matches!(self.phase(), Phase::Warmup | Phase::Measure)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserState {
    Idle,
    Connecting,
    Registering,
    LoggingIn,
    Ready,
    /// Group setup: the creator logs in again to learn its group's id.
    Relogin,
    /// Login scenario: logged out, logging in again.
    Cycling,
    Failed,
}

struct User {
    client: Option<TcpClient>,
    conn: Option<TcpConnectionPtr>,
    name: String,
    id: i64,
    state: UserState,
    /// Index (in this loop) of the user this one chats with.
    partner: usize,
    seq: u64,
    /// Chat messages sent and not yet delivered (a legacy target gets at most one).
    in_flight: u32,
    /// Login scenario: when the pending LOGIN was (first) sent.
    login_sent_us: u64,
    /// Counts LOGINs scheduled for this user; a pending send or retry timer that sees
    /// another number has been overtaken and does nothing.
    login_try: u64,
    /// LOGINs sent again while the one before might still be answered (legacy).
    dup_logins: u32,
}

struct Group {
    members: Vec<usize>,
    name: String,
    id: i64,
    /// seq → deliveries still expected (closed loop completion).
    pending: HashMap<u64, usize>,
    seq: u64,
}

/// What the connection context holds.
struct ConnCtx {
    user: usize,
    decoder: Decoder,
}

/// One loop thread's users and figures.
pub struct Driver {
    shared: Arc<Shared>,
    lp: EventLoop,
    users: Vec<User>,
    groups: Vec<Group>,
    /// Next user to start setting up, and how many are in setup now.
    next_setup: usize,
    in_setup: usize,
    max_in_setup: usize,
    pub stats: Stats,
    padding: String,
    /// Open loop: messages owed so far, and the round-robin sender.
    owed: f64,
    last_tick: Instant,
    next_sender: usize,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's driver.
pub fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    DRIVER.with(|d| {
        f(d.borrow_mut()
            .as_mut()
            .expect("driver on a bench loop thread"))
    })
}

/// A loop thread: creates its users and runs until quit.
pub fn run_loop(index: usize, shared: Arc<Shared>, handle_tx: mpsc::Sender<LoopHandle>) {
    let lp = EventLoop::new().expect("event loop");
    let args = &shared.args;
    let threads = args.threads;
    // Users i with i % threads == index live here; groups are kept whole.
    let (mine, groups) = if args.scenario == Scenario::Group {
        let gs: Vec<usize> = (0..args.groups).filter(|g| g % threads == index).collect();
        let mut members = Vec::new();
        let mut groups = Vec::new();
        for g in gs {
            let first = members.len();
            members.extend(g * args.group_size..(g + 1) * args.group_size);
            groups.push(Group {
                members: (first..first + args.group_size).collect(),
                name: format!("bg{}_{g}", shared.run_tag),
                id: 0,
                pending: HashMap::new(),
                seq: 0,
            });
        }
        (members, groups)
    } else {
        (
            (0..args.users).filter(|i| i % threads == index).collect(),
            Vec::new(),
        )
    };
    let n = mine.len();
    let users = mine
        .iter()
        .enumerate()
        .map(|(local, &global)| User {
            client: None,
            conn: None,
            name: format!("b{}_{global}", shared.run_tag),
            id: 0,
            state: UserState::Idle,
            partner: if n > 1 { (local + 1) % n } else { local },
            seq: 0,
            in_flight: 0,
            login_sent_us: 0,
            login_try: 0,
            dup_logins: 0,
        })
        .collect();
    let max_in_setup = (args.concurrency / threads).max(1);
    let padding = "x".repeat(args.msg_size.saturating_sub(24));
    DRIVER.with(|d| {
        *d.borrow_mut() = Some(Driver {
            shared: shared.clone(),
            lp: lp.clone(),
            users,
            groups,
            next_setup: 0,
            in_setup: 0,
            max_in_setup,
            stats: Stats::default(),
            padding,
            owed: 0.0,
            last_tick: Instant::now(),
            next_sender: 0,
        })
    });
    with_driver(|d| d.start_more_setup());
    let _ = handle_tx.send(lp.handle());
    lp.run();
    DRIVER.with(|d| d.borrow_mut().take());
}

fn send(conn: &TcpConnectionPtr, v: &Value) {
    conn.send(&protocol::encode(v));
}

impl Driver {
    fn start_more_setup(&mut self) {
        while self.in_setup < self.max_in_setup && self.next_setup < self.users.len() {
            let i = self.next_setup;
            self.next_setup += 1;
            self.in_setup += 1;
            self.connect(i);
        }
    }

    fn connect(&mut self, i: usize) {
        let targets = &self.shared.targets;
        let addr = targets[i % targets.len()];
        let client = TcpClient::new(&self.lp, addr, self.users[i].name.clone());
        client.set_connection_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            if conn.connected() {
                conn.set_context(ConnCtx {
                    user: i,
                    decoder: Decoder::new(16 * 1024 * 1024),
                });
                let _ = conn.set_tcp_no_delay(true);
                let conn = conn.clone();
                with_driver(|d| d.on_up(i, conn));
            } else {
                with_driver(|d| d.on_down(i));
            }
        }));
        client.set_message_callback(Arc::new(on_bytes));
        client.connect();
        self.users[i].client = Some(client);
        self.users[i].state = UserState::Connecting;
    }

    fn on_up(&mut self, i: usize, conn: TcpConnectionPtr) {
        let u = &mut self.users[i];
        u.state = UserState::Registering;
        send(
            &conn,
            &json!({"msgid": msgid::REG, "name": u.name, "password": self.shared.args.password}),
        );
        u.conn = Some(conn);
    }

    fn on_down(&mut self, i: usize) {
        let u = &mut self.users[i];
        u.conn = None;
        if matches!(
            u.state,
            UserState::Connecting | UserState::Registering | UserState::LoggingIn
        ) {
            self.setup_failed(i);
        } else if u.state != UserState::Failed && self.shared.phase() < Phase::Drain {
            u.state = UserState::Failed;
            self.stats.errors += 1;
        }
    }

    fn setup_failed(&mut self, i: usize) {
        self.users[i].state = UserState::Failed;
        if let Some(c) = &self.users[i].client {
            c.stop();
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.in_setup -= 1;
        self.start_more_setup();
    }

    /// Runs `then` once a request the original never answers has surely been read on
    /// its own: after --legacy-gap-ms toward a legacy target, at once toward ours (which
    /// handles a connection's requests in order, pipelined or not).
    fn after_unanswered(&mut self, then: impl FnOnce(&mut Driver) + 'static) {
        if !self.shared.legacy {
            return then(self);
        }
        let mut then = Some(then);
        let gap = Duration::from_millis(self.shared.args.legacy_gap_ms);
        self.lp.run_after(gap, move |_| {
            if let Some(f) = then.take() {
                with_driver(f);
            }
        });
    }

    fn on_frame(&mut self, i: usize, v: Value) {
        let id = v.get("msgid").and_then(Value::as_i64).unwrap_or(0);
        let errno = v.get("errno").and_then(Value::as_i64);
        let ok = errno == Some(0);
        if self.legacy_login_reply(i, id, &v) {
            return;
        }
        match (id, self.users[i].state) {
            (msgid::REG_ACK, UserState::Registering) => {
                if ok {
                    self.users[i].id = v["id"].as_i64().unwrap_or(0);
                    self.users[i].state = UserState::LoggingIn;
                    self.login(i);
                } else {
                    eprintln!("\nregister {} failed: {v}", self.users[i].name);
                    self.setup_failed(i);
                }
            }
            (msgid::LOGIN_ACK, UserState::LoggingIn) => {
                if ok {
                    self.users[i].state = UserState::Ready;
                    self.shared.ready.fetch_add(1, Ordering::Relaxed);
                    self.in_setup -= 1;
                    self.start_more_setup();
                } else {
                    eprintln!("\nlogin {} failed: {v}", self.users[i].name);
                    self.setup_failed(i);
                }
            }
            (msgid::LOGIN_ACK, UserState::Relogin) => self.on_relogin(i, &v),
            (msgid::LOGIN_ACK, UserState::Cycling) => {
                let u = &mut self.users[i];
                u.state = UserState::Ready;
                if ok {
                    let now = self.shared.now_us();
                    if self.shared.measured(u.login_sent_us) {
                        self.stats.logins += 1;
                        self.stats.record(now - u.login_sent_us);
                    }
                } else if self.shared.measured(u.login_sent_us) {
                    self.stats.errors += 1;
                }
                self.shared.progress.fetch_add(1, Ordering::Relaxed);
                if self.shared.sending() {
                    self.cycle_login(i);
                }
            }
            (msgid::ONE_CHAT, _) => self.on_chat(parse_msg(&v)),
            (msgid::GROUP_CHAT, _) => {
                let gid = v.get("groupid").and_then(Value::as_i64).unwrap_or(0);
                self.on_group_chat(gid, parse_msg(&v))
            }
            _ => {
                // Error frames and anything unexpected.
                if !ok || id == msgid::ERROR {
                    self.stats.errors += 1;
                    if self.stats.errors <= 3 {
                        eprintln!("\n{}: error reply {v}", self.users[i].name);
                    }
                }
            }
        }
    }

    /// The text of a message and its send time (µs since the epoch).
    fn message_text(&mut self, sender: usize, seq: u64) -> (String, u64) {
        let us = self.shared.now_us();
        (format!("{sender} {seq} {us} {}", self.padding), us)
    }

    fn send_chat(&mut self, i: usize) {
        let seq = {
            let u = &mut self.users[i];
            u.seq += 1;
            u.in_flight += 1;
            u.seq
        };
        let (text, us) = self.message_text(i, seq);
        let u = &self.users[i];
        let to = self.users[u.partner].id;
        if let Some(conn) = &u.conn {
            // Written by hand: the generator must cost less than the server it loads.
            // Names and texts are plain ASCII here, nothing needs escaping.
            let frame = format!(
                r#"{{"id":{},"msg":"{text}","msgid":{},"name":"{}","time":"2026-01-01 00:00:00","to":{to},"toid":{to}}}"#,
                u.id,
                msgid::ONE_CHAT,
                u.name
            );
            let mut bytes = frame.into_bytes();
            bytes.push(0);
            conn.send(&bytes);
            if self.shared.measured(us) {
                self.stats.sent += 1;
                self.stats.expected += 1;
                self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a received chat frame; returns its (sender, seq).
    fn record_delivery(&mut self, msg: Option<(usize, u64, u64)>) -> Option<(usize, u64)> {
        let Some((sender, seq, sent_us)) = msg else {
            self.stats.errors += 1;
            return None;
        };
        let now = self.shared.now_us();
        if self.shared.measured(sent_us) {
            self.stats.delivered += 1;
            self.stats.record(now.saturating_sub(sent_us));
            self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
        Some((sender, seq))
    }

    fn on_chat(&mut self, msg: Option<(usize, u64, u64)>) {
        let Some((sender, _)) = self.record_delivery(msg) else {
            return;
        };
        if let Some(u) = self.users.get_mut(sender) {
            u.in_flight = u.in_flight.saturating_sub(1);
        }
        if self.shared.sending() && self.shared.args.rate == 0.0 && sender < self.users.len() {
            self.send_chat(sender);
        }
    }

    fn on_group_chat(&mut self, gid: i64, msg: Option<(usize, u64, u64)>) {
        let Some((_, seq)) = self.record_delivery(msg) else {
            return;
        };
        let Some(g) = self.groups.iter().position(|g| g.id == gid) else {
            return;
        };
        let complete = match self.groups[g].pending.get_mut(&seq) {
            Some(left) => {
                *left -= 1;
                *left == 0
            }
            None => false,
        };
        if complete {
            self.groups[g].pending.remove(&seq);
            if self.shared.sending() && self.shared.args.rate == 0.0 {
                self.send_group(g);
            }
        }
    }

    fn send_group(&mut self, g: usize) {
        let creator = self.groups[g].members[0];
        let seq = {
            let grp = &mut self.groups[g];
            grp.seq += 1;
            grp.pending.insert(grp.seq, grp.members.len() - 1);
            grp.seq
        };
        let (text, us) = self.message_text(creator, seq);
        let u = &self.users[creator];
        let gid = self.groups[g].id;
        if let Some(conn) = &u.conn {
            send(
                conn,
                &json!({"msgid": msgid::GROUP_CHAT, "id": u.id, "name": u.name, "groupid": gid,
                        "msg": text, "time": "2026-01-01 00:00:00"}),
            );
            if self.shared.measured(us) {
                self.stats.sent += 1;
                let n = self.groups[g].members.len() - 1;
                self.stats.expected += n as u64;
                self.shared
                    .outstanding
                    .fetch_add(n as i64, Ordering::Relaxed);
            }
        }
    }

    /// Group setup: each creator creates its group, then logs out and in again to learn
    /// its id (the legacy protocol answers neither CREATE_GROUP nor LOGINOUT).
    pub fn setup_groups(&mut self) {
        for g in 0..self.groups.len() {
            let creator = self.groups[g].members[0];
            let name = self.groups[g].name.clone();
            let u = &mut self.users[creator];
            if let Some(conn) = &u.conn {
                send(
                    conn,
                    &json!({"msgid": msgid::CREATE_GROUP, "id": u.id, "groupname": name,
                            "groupdesc": "chat-bench"}),
                );
                u.state = UserState::Relogin;
            }
            self.after_unanswered(move |d| d.logout_then_login(creator, true));
        }
    }

    fn on_relogin(&mut self, i: usize, v: &Value) {
        self.users[i].state = UserState::Ready;
        let Some(g) = self.groups.iter().position(|g| g.members[0] == i) else {
            return;
        };
        let found = v
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().and_then(GroupInfo::from_wire))
            .find(|gi| gi.name == self.groups[g].name);
        let Some(info) = found else {
            eprintln!("\ngroup {} was not created: {v}", self.groups[g].name);
            self.stats.errors += 1;
            return;
        };
        self.groups[g].id = info.id;
        for &m in &self.groups[g].members[1..] {
            let u = &self.users[m];
            if let Some(conn) = &u.conn {
                send(
                    conn,
                    &json!({"msgid": msgid::ADD_GROUP, "id": u.id, "groupid": info.id}),
                );
            }
        }
        self.shared.groups_ready.fetch_add(1, Ordering::Relaxed);
    }

    fn cycle_login(&mut self, i: usize) {
        let u = &mut self.users[i];
        if u.conn.is_some() {
            u.state = UserState::Cycling;
            if self.shared.measured(self.shared.now_us()) {
                self.stats.sent += 1;
            }
        }
        self.logout_then_login(i, true);
    }

    /// Starts the scenario's traffic (closed loop) or its send timer (open loop).
    pub fn start_traffic(&mut self) {
        let args = &self.shared.args;
        let ready: Vec<usize> = (0..self.users.len())
            .filter(|&i| self.users[i].state == UserState::Ready)
            .collect();
        match args.scenario {
            Scenario::Idle
            | Scenario::Bomb
            | Scenario::LoginFlood
            | Scenario::SlowReader
            | Scenario::Failover => {}
            Scenario::Login => {
                for i in ready {
                    self.cycle_login(i);
                }
            }
            Scenario::OneToOne if args.rate > 0.0 => self.start_open_loop(),
            Scenario::OneToOne => {
                let window = args.window;
                for i in ready {
                    for _ in 0..window {
                        self.send_chat(i);
                    }
                }
            }
            Scenario::Group if args.rate > 0.0 => self.start_open_loop(),
            Scenario::Group => {
                let window = args.window;
                for g in 0..self.groups.len() {
                    if self.groups[g].id != 0 {
                        for _ in 0..window {
                            self.send_group(g);
                        }
                    }
                }
            }
        }
    }

    fn start_open_loop(&mut self) {
        self.last_tick = Instant::now();
        self.lp.run_every(Duration::from_millis(1), |_| {
            with_driver(|d| d.open_loop_tick());
        });
    }

    fn open_loop_tick(&mut self) {
        if !self.shared.sending() {
            return;
        }
        let now = Instant::now();
        let per_loop = self.shared.args.rate / self.shared.args.threads as f64;
        self.owed += per_loop * now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let group = self.shared.args.scenario == Scenario::Group;
        let senders = if group {
            self.groups.len()
        } else {
            self.users.len()
        };
        if senders == 0 {
            return;
        }
        // Toward a legacy target a sender with a message in flight is passed over, so
        // the rate is then at most the one asked for.
        let legacy = self.shared.legacy;
        while self.owed >= 1.0 {
            self.owed -= 1.0;
            let s = self.next_sender % senders;
            self.next_sender += 1;
            if group {
                let g = &self.groups[s];
                if g.id != 0 && (!legacy || g.pending.is_empty()) {
                    self.send_group(s);
                }
            } else {
                let u = &self.users[s];
                if u.state == UserState::Ready && (!legacy || u.in_flight == 0) {
                    self.send_chat(s);
                }
            }
        }
    }
}

/// `msg` is "<sender> <seq> <sent µs> <padding>".
fn parse_msg(v: &Value) -> Option<(usize, u64, u64)> {
    parse_msg_text(v.get("msg")?.as_str()?)
}

fn parse_msg_text(msg: &str) -> Option<(usize, u64, u64)> {
    let mut it = msg.split(' ');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// The fields of a chat frame the bench reads, without building a `Value`.
#[derive(serde::Deserialize)]
struct LightChat<'a> {
    msgid: i64,
    #[serde(borrow)]
    msg: Option<std::borrow::Cow<'a, str>>,
    groupid: Option<i64>,
}

/// A frame as the loop hands it to the driver.
enum Incoming {
    /// A chat frame, read cheaply: (group id for group chats, the parsed `msg`).
    Chat(Option<i64>, Option<(usize, u64, u64)>),
    /// Anything else, in full.
    Other(Value),
}

fn classify(bytes: &[u8]) -> Option<Incoming> {
    if let Ok(c) = serde_json::from_slice::<LightChat>(bytes) {
        let msg = c.msg.as_deref().and_then(parse_msg_text);
        match c.msgid {
            msgid::ONE_CHAT => return Some(Incoming::Chat(None, msg)),
            msgid::GROUP_CHAT => return Some(Incoming::Chat(Some(c.groupid.unwrap_or(0)), msg)),
            _ => {}
        }
    }
    codec::parse_frame(bytes).ok().map(Incoming::Other)
}

/// The message callback: cut frames (ours end in NUL, the original's don't) and
/// hand them to the driver.
fn on_bytes(conn: &TcpConnectionPtr, buf: &mut Buffer) {
    let mut frames = Vec::new();
    let user = {
        let mut ctx = conn.context();
        let Some(c) = ctx.as_mut().and_then(|b| b.downcast_mut::<ConnCtx>()) else {
            buf.retrieve_all();
            return;
        };
        loop {
            match c.decoder.decode(buf.peek()) {
                Ok(Decoded::Incomplete { skip }) => {
                    buf.retrieve(skip);
                    break;
                }
                Ok(Decoded::Frame { start, end }) => {
                    if let Some(f) = classify(&buf.peek()[start..end]) {
                        frames.push(f);
                    }
                    buf.retrieve(end);
                }
                Ok(Decoded::Unterminated { end }) => buf.retrieve(end),
                Err(_) => {
                    buf.retrieve_all();
                    c.decoder.reset();
                    break;
                }
            }
        }
        c.user
    };
    with_driver(|d| {
        for f in frames {
            match f {
                Incoming::Chat(None, msg) => d.on_chat(msg),
                Incoming::Chat(Some(gid), msg) => d.on_group_chat(gid, msg),
                Incoming::Other(v) => d.on_frame(user, v),
            }
        }
    });
}
