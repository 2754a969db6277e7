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
//! at that batch size.
//!
//! ```sh
//! cargo run --release -p chat --example history_append -- --db sqlite:/tmp/ha.db --batch 5000
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
}

fn args() -> Args {
    let mut a = Args {
        db: "sqlite:/tmp/history_append.db".into(),
        convs: 1000,
        batch: 1000,
        messages: 200_000,
        preload: 200_000,
        rate: 80_000,
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

fn main() {
    let a = args();
    let path = a.db.strip_prefix("sqlite:").expect("--db sqlite:PATH");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
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
    let (u0, s0) = thread_cpu_us();
    let t0 = Instant::now();
    for b in &batches {
        store.append_history(b).expect("append");
    }
    let wall = t0.elapsed();
    let (u1, s1) = thread_cpu_us();
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
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}
