//! The slow reader that disconnects: S senders each send M chats of --msg-size
//! bytes to one online user who never reads; once every chat was handled (each
//! sender's PING answered), the reader closes its connection unread and logs in
//! again on a new one. What it receives then is compared with what was accepted.
//!
//! A legacy reader acknowledges nothing, so what the server had already written
//! to the kernel when the connection closed is lost (docs/protocol.md §6); what
//! was still in the server's memory (its output buffer, frames kept aside by the
//! high-water mark, stored ones) must all come at the next login, in order. The
//! bench reads the kernel's queues of both sockets from /proc/net/tcp just
//! before the close (the server socket's unsent bytes and the reader's unread
//! ones) and reports the lost frames against what those bytes can hold.
//!
//! Blocking std sockets, one thread per sender, like the bomb.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bomb::{offline_texts, print_sent, sender_and_index, spawn_sender, Conn};
use crate::Args;

/// The reader's delivery is over when nothing came for this long.
const QUIET: Duration = Duration::from_secs(5);
/// How long the re-login may be refused as "already online" while the server
/// handles the close.
const RELOGIN_LIMIT: Duration = Duration::from_secs(15);

/// The kernel queues of one TCP socket, from /proc/net/tcp (IPv4).
#[derive(Debug, Default, Clone, Copy)]
struct Queues {
    /// Bytes sent but not acknowledged by the peer, or not sent yet.
    tx: u64,
    /// Bytes received that the process has not read.
    rx: u64,
}

/// The queues of the socket bound to `local` port and connected to `remote`
/// port on 127.0.0.1, if /proc lists it.
fn queues(local: u16, remote: u16) -> Option<Queues> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some(Queues {
            tx: u64::from_str_radix(tx, 16).ok()?,
            rx: u64::from_str_radix(rx, 16).ok()?,
        })
    })
}

/// Runs the scenario against `addr`; prints a report (text and one JSON line).
/// Exits 1 when a frame beyond what the kernel held was lost, or arrived out of
/// order or twice.
pub fn run(args: &Args, addr: SocketAddr) {
    let (senders, per_sender) = (args.senders, args.messages);
    let pw = args.password.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{}-{nanos}", std::process::id());
    let mut reader = Conn::connect(addr).expect("connect");
    let reader_id = reader.register(&format!("slow-reader-{tag}"), &pw);
    let ack: Value = serde_json::from_slice(&reader.login(reader_id, &pw)).expect("LOGIN_ACK");
    assert_eq!(ack["errno"], 0, "reader login: {ack}");

    let pad_len = args.msg_size.saturating_sub(16);
    let started = Instant::now();
    let refused: Vec<u64> = (0..senders)
        .map(|s| {
            let name = format!("slow-sender-{tag}-{s}");
            spawn_sender(addr, name, pw.clone(), reader_id, s, per_sender, pad_len)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    let sent_in = started.elapsed();

    // Every chat was handled (live, kept aside or stored). What the kernel holds
    // for the reader right now is what its close can lose.
    let local = reader.s.local_addr().expect("local address").port();
    let server_sock = queues(addr.port(), local).unwrap_or_default();
    let reader_sock = queues(local, addr.port()).unwrap_or_default();
    let in_kernel = server_sock.tx + reader_sock.rx;
    drop(reader);

    let login_at = Instant::now();
    let (mut again, first) = loop {
        let mut c = Conn::connect(addr).expect("connect");
        let first = c.login(reader_id, &pw);
        let v: Value = serde_json::from_slice(&first).expect("LOGIN_ACK");
        if v["errno"] == 0 {
            break (c, v);
        }
        assert!(
            login_at.elapsed() < RELOGIN_LIMIT,
            "the reader's re-login was refused for {RELOGIN_LIMIT:?}: {v}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let mut msgs = offline_texts(&first);
    let mut frame_len = 0;
    again.s.set_read_timeout(Some(QUIET)).expect("timeout");
    while let Some(f) = again.frame() {
        let Ok(v) = serde_json::from_slice::<Value>(&f) else {
            continue;
        };
        if v["msgid"] == 6 {
            frame_len = frame_len.max(f.len() + 1);
            msgs.push(v["msg"].as_str().unwrap_or_default().to_owned());
        }
    }

    // Per sender: what came must be increasing (in order, no duplicate); the
    // missing ones are the lost.
    let mut last: Vec<Option<usize>> = vec![None; senders];
    let mut got = vec![0u64; senders];
    let mut in_order = true;
    for m in &msgs {
        match sender_and_index(m) {
            Some((s, i)) if s < senders && last[s].is_none_or(|l| i > l) => {
                last[s] = Some(i);
                got[s] += 1;
            }
            _ => in_order = false,
        }
    }
    let accepted: u64 = (0..senders).map(|s| per_sender as u64 - refused[s]).sum();
    let received: u64 = got.iter().sum();
    let lost = accepted.saturating_sub(received);
    // The kernel can hold at most this many whole frames, plus one it had part of.
    let kernel_frames = match frame_len {
        0 => 0,
        n => in_kernel.div_ceil(n as u64) + 1,
    };
    let lost_from_memory = lost.saturating_sub(kernel_frames);
    println!(
        "slow-reader: {senders} senders x {per_sender} x {} B to one legacy user who never reads, then closes",
        args.msg_size
    );
    print_sent(sent_in, &refused);
    println!(
        "  kernel at close    {} B unsent by the server + {} B unread by the reader (<= {kernel_frames} frames of {frame_len} B)",
        server_sock.tx, reader_sock.rx
    );
    println!(
        "  received at login  {received} of {accepted} accepted; lost {lost}, beyond the kernel's {lost_from_memory}; in order: {in_order}"
    );
    let report = json!({
        "scenario": "slow-reader", "senders": senders, "messages": per_sender,
        "msg_size": args.msg_size, "refused": refused, "accepted": accepted,
        "received": received, "lost": lost, "lost_beyond_kernel": lost_from_memory,
        "kernel_unsent": server_sock.tx, "kernel_unread": reader_sock.rx,
        "frame_bytes": frame_len, "in_order": in_order, "send_s": sent_in.as_secs_f64(),
    });
    println!("{report}");
    if !in_order || lost_from_memory > 0 {
        std::process::exit(1);
    }
}
