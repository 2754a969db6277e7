//! history_append: the history writer's CPU per message, by batch size.
//!
//! Appends `--messages` chat frames (about 130 bytes, as chat-bench sends) spread
//! round-robin over `--convs` conversations, in batches of `--batch`, through
//! `SocialStore::append_history` on a fresh store, after `--preload` messages (so
//! that each conversation's tail is a page of its own, as on a server that ran a
//! while). Message `i` is stamped `i / --rate` seconds after the first, as at a
//! server taking `--rate` messages a second (chunks span at most two seconds, so the
//! stamps decide how many messages a chunk can hold). Prints the thread's user and
//! system CPU per appended message, which is what one-to-one chat pays for history
//! at that batch size. With `--db mysql://…/NAME` the database NAME is dropped
//! before and after; the database server's CPU is not this thread's:
//! `--server-pid $(pgrep -x mariadbd)` prints that process's CPU per message too
//! (from /proc, over the same appends).
//!
//! ```sh
//! cargo run --release -p chat --example history_append -- --db sqlite:/tmp/ha.db --batch 5000
//! cargo run --release -p chat --example history_append -- \
//!     --db mysql://root@127.0.0.1:3306/ha_bench --batch 50000
//! ```

use std::time::Instant;

use chat::store::social::HistoryRecord;

struct Args {
    db: String,
    convs: i64,
    batch: usize,
    messages: usize,
    preload: usize,
    rate: u64,
    /// A process whose CPU over the appends is printed per message (the database server).
    server_pid: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        db: "sqlite:/tmp/history_append.db".into(),
        convs: 1000,
        batch: 1000,
        messages: 200_000,
        preload: 200_000,
        rate: 80_000,
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("a value after each option");
        match k.as_str() {
            "--db" => a.db = v(),
            "--convs" => a.convs = v().parse().expect("--convs N"),
            "--batch" => a.batch = v().parse().expect("--batch N"),
            "--messages" => a.messages = v().parse().expect("--messages N"),
            "--preload" => a.preload = v().parse().expect("--preload N"),
            "--rate" => a.rate = v().parse().expect("--rate MSGS_PER_SEC"),
            "--server-pid" => a.server_pid = Some(v().parse().expect("--server-pid PID")),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// This thread's (user, system) CPU time in microseconds.
fn thread_cpu_us() -> (i64, i64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// Process `pid`'s user + system CPU time in microseconds (utime and stime of
/// /proc/PID/stat, fields 14 and 15, in clock ticks).
fn process_cpu_us(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<i64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().expect("a tick count"))
        .collect();
    // SAFETY: sysconf only reads a configuration value.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    (f[0] + f[1]) * 1_000_000 / tck
}

/// `n` records from message number `from` on, round-robin over `convs` conversations,
/// `rate` a second.
fn records(from: usize, n: usize, convs: i64, rate: u64) -> Vec<HistoryRecord> {
    (from..from + n)
        .map(|i| {
            let c = (i as i64 % convs) * 2 + 1;
            HistoryRecord {
                conv: (c << 32) | (c + 1),
                sender: c,
                ts_ms: 1_800_000_000_000 + (i as u64 * 1000 / rate.max(1)) as i64,
                text: format!(
                    "{{\"id\":{c},\"msg\":\"message number {i} of the benchmark, padded to a \
                     chat-bench size\",\"msgid\":6,\"name\":\"u{c}\",\"time\":\"2026-11-28 15:00:00\",\"toid\":{}}}",
                    c + 1
                ),
            }
        })
        .collect()
}

/// Removes the SQLite file (and its WAL companions) or the MySQL database of `db`.
fn remove(db: &str) {
    if let Some(path) = db.strip_prefix("sqlite:") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    } else {
        use mysql::prelude::Queryable;
        let (server, name) = db.rsplit_once('/').expect("--db mysql://HOST:PORT/NAME");
        let mut c = mysql::Conn::new(mysql::Opts::from_url(server).expect("a URL"))
            .expect("connect to the MySQL server");
        c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .expect("drop the database");
    }
}

fn main() {
    let a = args();
    remove(&a.db);
    let store = chat::store::open_with(&a.db, 4).expect("open the store");
    let mut done = 0;
    while done < a.preload {
        let n = 20_000.min(a.preload - done);
        store
            .append_history(&records(done, n, a.convs, a.rate))
            .expect("preload");
        done += n;
    }
    let batches: Vec<Vec<HistoryRecord>> = (0..a.messages.div_ceil(a.batch))
        .map(|b| {
            let from = a.preload + b * a.batch;
            records(from, a.batch.min(a.messages - b * a.batch), a.convs, a.rate)
        })
        .collect();
    let server0 = a.server_pid.map(process_cpu_us);
    let (u0, s0) = thread_cpu_us();
    let t0 = Instant::now();
    for b in &batches {
        store.append_history(b).expect("append");
    }
    let wall = t0.elapsed();
    let (u1, s1) = thread_cpu_us();
    let server1 = a.server_pid.map(process_cpu_us);
    let n = a.messages as f64;
    println!(
        "batch {} convs {}: {:.2} us/msg CPU ({:.2} user, {:.2} sys), {:.0} msgs/s wall",
        a.batch,
        a.convs,
        ((u1 - u0) + (s1 - s0)) as f64 / n,
        (u1 - u0) as f64 / n,
        (s1 - s0) as f64 / n,
        n / wall.as_secs_f64()
    );
    if let (Some(pid), Some(c0), Some(c1)) = (a.server_pid, server0, server1) {
        println!(
            "process {pid}: {:.2} us/msg CPU ({:.0}% of a core)",
            (c1 - c0) as f64 / n,
            (c1 - c0) as f64 / wall.as_micros().max(1) as f64 * 100.0
        );
    }
    drop(store);
    remove(&a.db);
}
