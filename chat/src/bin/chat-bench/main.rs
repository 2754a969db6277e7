//! chat-bench: a load generator for the chat server (ours or the original C++ one).
//!
//! It speaks only the legacy protocol (ONE_CHAT carries both `toid` and `to`), runs on
//! the `net` reactor (one TcpClient per simulated user, spread over loop threads),
//! registers and logs in N users over one or several `host:port` targets with bounded
//! concurrency, then runs one scenario for a warm-up and a measured period and prints
//! a table and JSON. A message's send time travels inside its `msg` text, so latency
//! is measured end to end, sender to recipient.

mod bomb;
mod driver;
mod failover;
mod login_flood;
mod probe;
mod server_proc;
mod slow_reader;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use driver::{Phase, Shared};
use server_proc::{cpu_time, rss_kib, CpuTime};
use stats::Stats;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Each user chats with a partner: closed loop (window per sender) or open loop (--rate).
    OneToOne,
    /// G groups of S members; each group's creator sends, every other member receives.
    Group,
    /// Log in / log out storms: logins per second.
    Login,
    /// Hold N logged-in connections; with --server-pid, the server's RSS per connection.
    Idle,
    /// Offline-store bomb: --senders × --messages chats of --msg-size bytes to one
    /// offline user, who then logs in (see bomb.rs).
    Bomb,
    /// --senders × --messages chats of --msg-size bytes to one online legacy user
    /// who never reads, then closes and logs in again: what its close lost,
    /// against what the kernel held (see slow_reader.rs).
    SlowReader,
    /// N connections send wrong passwords for one account; --tries legitimate logins
    /// to other accounts are timed meanwhile (see login_flood.rs).
    LoginFlood,
    /// Users in pairs across nodes, resume-capable; one node killed with SIGKILL:
    /// time until its users chat again, lost, duplicates (see failover.rs).
    Failover,
}

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for the chat server."
)]
pub struct Args {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Server addresses, comma separated; users are spread over them round robin.
    #[arg(long, default_value = "127.0.0.1:6000", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Simulated users (one connection each).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: usize,
    /// Loop threads of the load generator.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Connections being set up (register + login) at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Messages in flight per sender (closed loop).
    #[arg(long, short = 'w', default_value_t = 1)]
    pub window: u32,
    /// Open loop: total messages per second (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Group scenario: number of groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Group scenario: members per group (users = groups × size).
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,
    /// Bytes of text per message (padded).
    #[arg(long, default_value_t = 32)]
    pub msg_size: usize,
    /// The server's pid: report its CPU time per delivered message (or login) and its
    /// RSS per connection (idle scenario).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Treat every target as the original C++ server without probing it (otherwise a
    /// target that does not answer PING is taken for one). Toward a legacy target each
    /// connection has at most one request in flight, and requests it never answers
    /// (CREATE_GROUP, LOGINOUT, ADD_GROUP) are followed by a pause of --legacy-gap-ms;
    /// a LOGIN after a LOGINOUT that the target dropped goes again (--legacy-retry-ms).
    #[arg(long)]
    pub legacy: bool,
    /// Pause after a request a legacy server never answers, before the next one. The
    /// original runs its database calls on its IO threads, so under load it may not read
    /// a connection for tens of milliseconds: two requests then reach it in one read,
    /// and it drops the second.
    #[arg(long, default_value_t = 100)]
    pub legacy_gap_ms: u64,
    /// Toward a legacy target, a LOGIN that follows a LOGINOUT and has no answer after
    /// this long is sent again: the original drops a request that reaches it in the
    /// same read as the one before (it parses up to the first NUL), which happens when
    /// its IO thread waited on its database for longer than --legacy-gap-ms.
    #[arg(long, default_value_t = 1000)]
    pub legacy_retry_ms: u64,
    /// Give up when setup makes no progress for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub setup_timeout: f64,
    /// Write the JSON report here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Password of the users the bench registers.
    #[arg(long, default_value = "bench-pw")]
    pub password: String,
    /// Bomb and slow-reader scenarios: senders.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Bomb and slow-reader scenarios: messages per sender.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// login-flood: legitimate logins timed during the flood.
    #[arg(long, default_value_t = 10)]
    pub tries: usize,
    /// failover: the pid of the node to kill with SIGKILL after the warm-up.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// failover: which of --targets that node is (0-based).
    #[arg(long, default_value_t = 0)]
    pub kill_target: usize,
    /// failover: the pids of the surviving nodes, whose CPU time is reported.
    #[arg(long, value_delimiter = ',')]
    pub survivor_pids: Vec<u32>,
    /// failover: admin addresses (host:port) of the nodes, whose
    /// `chat_password_hashes_total` is read before and after the kill.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
}

fn main() {
    let mut args = Args::parse();
    if args.scenario == Scenario::Group {
        args.users = args.groups * args.group_size;
    }
    if args.users == 0 || args.threads == 0 {
        eprintln!("chat-bench: --users and --threads must be positive");
        std::process::exit(2);
    }
    chat::sys::raise_fd_limit();
    let targets: Vec<SocketAddr> = args
        .targets
        .iter()
        .map(|t| {
            t.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .unwrap_or_else(|| {
                    eprintln!("chat-bench: cannot resolve {t}");
                    std::process::exit(2)
                })
        })
        .collect();
    if args.scenario == Scenario::Bomb {
        return bomb::run(&args, targets[0]);
    }
    if args.scenario == Scenario::SlowReader {
        return slow_reader::run(&args, targets[0]);
    }
    if args.scenario == Scenario::LoginFlood {
        login_flood::run(&args, targets[0]);
        return;
    }
    if args.scenario == Scenario::Failover {
        return failover::run(&args, targets);
    }
    let legacy = probe::probe_all(&targets, args.legacy);
    if legacy && args.window > 1 {
        eprintln!(
            "chat-bench: legacy target: window {} lowered to 1",
            args.window
        );
        args.window = 1;
    }
    let rss_before = args.server_pid.and_then(rss_kib);
    let shared = Arc::new(Shared::new(args.clone(), targets, legacy));
    let mut handles = Vec::new();
    let mut loops = Vec::new();
    for t in 0..args.threads {
        let shared = shared.clone();
        let (tx, rx) = mpsc::channel();
        handles.push(
            thread::Builder::new()
                .name(format!("bench{t}"))
                .spawn(move || driver::run_loop(t, shared, tx))
                .expect("spawn a loop thread"),
        );
        loops.push(rx.recv().expect("loop thread started"));
    }

    // Setup: register and log in everyone.
    let started = Instant::now();
    wait_progress(&shared, "setup", args.setup_timeout, |s| {
        let done = s.ready.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
        (
            done >= args.users,
            format!("{done}/{} logged in", args.users),
        )
    });
    let setup_secs = started.elapsed().as_secs_f64();
    let failed = shared.failed.load(Ordering::Relaxed);
    eprintln!(
        "\nsetup: {} users ready in {setup_secs:.1}s ({failed} failed)",
        shared.ready.load(Ordering::Relaxed)
    );
    if shared.ready.load(Ordering::Relaxed) == 0 {
        eprintln!("chat-bench: no user could log in");
        std::process::exit(1);
    }
    if args.scenario == Scenario::Group {
        shared.set_phase(Phase::GroupSetup);
        for h in &loops {
            h.run_in_loop(|_| driver::with_driver(|d| d.setup_groups()));
        }
        wait_progress(&shared, "groups", args.setup_timeout, |s| {
            let done = s.groups_ready.load(Ordering::Relaxed);
            (
                done >= args.groups,
                format!("{done}/{} groups", args.groups),
            )
        });
        // Joins have no reply in the legacy protocol: give them a moment.
        thread::sleep(Duration::from_millis(500.max(2 * args.legacy_gap_ms)));
        eprintln!();
    }
    let rss_after_setup = args.server_pid.and_then(rss_kib);

    shared.set_phase(Phase::Warmup);
    for h in &loops {
        h.run_in_loop(|_| driver::with_driver(|d| d.start_traffic()));
    }
    thread::sleep(Duration::from_secs_f64(args.warmup));
    shared.set_phase(Phase::Measure);
    let cpu_start = args.server_pid.and_then(cpu_time);
    let measure_start = Instant::now();
    let mut last_print = Instant::now();
    while measure_start.elapsed().as_secs_f64() < args.duration {
        thread::sleep(Duration::from_millis(100));
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprint!(
                "\rmeasure: {:.0}s, {} delivered",
                measure_start.elapsed().as_secs_f64(),
                shared.progress.load(Ordering::Relaxed)
            );
        }
    }
    let measured = measure_start.elapsed().as_secs_f64();
    let cpu = args
        .server_pid
        .and_then(cpu_time)
        .zip(cpu_start)
        .map(|(end, start)| end.since(&start));
    shared.set_phase(Phase::Drain);
    drain(&shared);
    let rss_end = args.server_pid.and_then(rss_kib);

    let mut total = Stats::default();
    for h in &loops {
        let (tx, rx) = mpsc::channel();
        h.run_in_loop(move |_| {
            let _ = tx.send(driver::with_driver(|d| d.stats.clone()));
        });
        if let Ok(s) = rx.recv_timeout(Duration::from_secs(5)) {
            total.merge(&s);
        }
    }
    shared.set_phase(Phase::Done);
    for h in &loops {
        h.quit();
    }
    for h in handles {
        let _ = h.join();
    }
    eprintln!();
    let ready = shared.ready.load(Ordering::Relaxed);
    report(
        &args,
        &total,
        measured,
        (setup_secs, ready, failed),
        (rss_before, rss_after_setup, rss_end),
        cpu,
    );
}

/// After the measured period: waits 2 s, and then as long as deliveries of measured
/// messages are still outstanding and keep coming (none for 5 s: they are lost), at
/// most a minute. With a large window at high load the last messages of the period
/// arrive seconds after it; a fixed wait counted them lost.
fn drain(shared: &Shared) {
    const FIRST: Duration = Duration::from_secs(2);
    const SILENCE: Duration = Duration::from_secs(5);
    const MOST: Duration = Duration::from_secs(60);
    let start = Instant::now();
    thread::sleep(FIRST);
    let mut seen = shared.progress.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while shared.outstanding.load(Ordering::Relaxed) > 0
        && last_change.elapsed() < SILENCE
        && start.elapsed() < MOST
    {
        thread::sleep(Duration::from_millis(50));
        let now = shared.progress.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_change = Instant::now();
        }
    }
}

/// Waits until `f` says done, printing its progress line; exits the process when the
/// line has not changed for `stall_secs` (a target that stopped answering).
fn wait_progress(
    shared: &Shared,
    what: &str,
    stall_secs: f64,
    f: impl Fn(&Shared) -> (bool, String),
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut last_line = String::new();
    let mut changed = Instant::now();
    loop {
        let (done, line) = f(shared);
        if last.elapsed() >= Duration::from_millis(500) || done {
            eprint!("\r{what}: {line}   ");
            last = Instant::now();
        }
        if done {
            return;
        }
        if line != last_line {
            last_line = line;
            changed = Instant::now();
        } else if changed.elapsed().as_secs_f64() >= stall_secs {
            eprintln!(
                "\nchat-bench: {what} stalled at {last_line}: no progress for {stall_secs} s \
                 (is every target up and answering?)"
            );
            std::process::exit(1);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Prints the table and the JSON. `setup` is (seconds, users ready, users failed);
/// `rss` the server's RSS in KiB before setup, after it, and at the end; `cpu` the
/// server's CPU time over the measured period.
fn report(
    args: &Args,
    s: &Stats,
    secs: f64,
    setup: (f64, usize, usize),
    rss: (Option<u64>, Option<u64>, Option<u64>),
    cpu: Option<CpuTime>,
) {
    let (setup_secs, ready, failed) = setup;
    let (rss_before, rss_after_setup, rss_end) = rss;
    let lost = s.expected.saturating_sub(s.delivered);
    let mut report = json!({
        "scenario": format!("{:?}", args.scenario),
        "targets": args.targets,
        "users": args.users,
        "threads": args.threads,
        "window": args.window,
        "rate": args.rate,
        "seconds": secs,
        "setup_seconds": setup_secs,
        "setup_failed": failed,
        "sent": s.sent,
        "delivered": s.delivered,
        "expected": s.expected,
        "lost": lost,
        "errors": s.errors,
        "legacy_retries": s.legacy_retries,
        "sent_per_sec": s.sent as f64 / secs,
        "delivered_per_sec": s.delivered as f64 / secs,
        "latency": s.latency_json(),
    });
    if args.scenario == Scenario::Group {
        report["groups"] = json!(args.groups);
        report["group_size"] = json!(args.group_size);
    }
    if args.scenario == Scenario::Login {
        report["logins"] = json!(s.logins);
        report["logins_per_sec"] = json!(s.logins as f64 / secs);
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after_setup) {
        report["server_rss_kib_before"] = json!(before);
        report["server_rss_kib_after_setup"] = json!(after);
        report["server_rss_kib_end"] = json!(rss_end);
        // What each connection costs once held idle (at the end of the run); the
        // peak right after the login storm is reported beside it.
        let held = rss_end.unwrap_or(after);
        report["server_rss_bytes_per_connection"] =
            json!((held.saturating_sub(before) * 1024) as f64 / ready.max(1) as f64);
        report["server_rss_bytes_per_connection_after_setup"] =
            json!((after.saturating_sub(before) * 1024) as f64 / ready.max(1) as f64);
        report["connections_held"] = json!(ready);
    }
    if let Some(cpu) = cpu {
        // Per delivered message; per completed login in the login scenario.
        let units = if args.scenario == Scenario::Login {
            s.logins
        } else {
            s.delivered
        };
        let per = |us: u64| us as f64 / units.max(1) as f64;
        report["server_cpu_user_us"] = json!(cpu.user_us);
        report["server_cpu_sys_us"] = json!(cpu.sys_us);
        report["server_cpu_us_per_unit"] = json!(per(cpu.total_us()));
        report["server_cpu_sys_us_per_unit"] = json!(per(cpu.sys_us));
        report["server_cpu_cores"] = json!(cpu.total_us() as f64 / (secs * 1e6));
    }
    println!("scenario            {:?}", args.scenario);
    println!("users / threads     {} / {}", args.users, args.threads);
    println!("measured            {secs:.1} s (setup {setup_secs:.1} s, {failed} failed)");
    match args.scenario {
        Scenario::Login => println!(
            "logins              {} ({:.0}/s)",
            s.logins,
            s.logins as f64 / secs
        ),
        Scenario::Idle => {}
        _ => {
            println!(
                "sent                {} ({:.0}/s)",
                s.sent,
                s.sent as f64 / secs
            );
            println!(
                "delivered           {} ({:.0}/s)",
                s.delivered,
                s.delivered as f64 / secs
            );
            println!("lost                {lost}");
        }
    }
    println!("errors              {}", s.errors);
    if args.scenario != Scenario::Idle {
        println!(
            "latency µs          p50 {}  p99 {}  p99.9 {}  max {}",
            s.quantile(0.5),
            s.quantile(0.99),
            s.quantile(0.999),
            report["latency"]["max_us"]
        );
    }
    if args.scenario == Scenario::Idle {
        if let Some(cores) = report["server_cpu_cores"].as_f64() {
            println!("server CPU          {cores:.3} cores while idle");
        }
    } else if let Some(per) = report["server_cpu_us_per_unit"].as_f64() {
        let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
        let unit = if args.scenario == Scenario::Login {
            "login"
        } else {
            "delivered message"
        };
        println!(
            "server CPU          {per:.2} µs per {unit} ({:.2} µs sys, {:.2} cores)",
            f("server_cpu_sys_us_per_unit"),
            f("server_cpu_cores")
        );
    }
    if let Some(per) = report.get("server_rss_bytes_per_connection") {
        println!("server RSS          {per:.0} bytes per connection (held idle)");
    }
    println!("{report}");
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, format!("{report:#}\n")) {
            eprintln!("chat-bench: writing {}: {e}", path.display());
        }
    }
}
