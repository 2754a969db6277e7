//! The output gate (issue #12, "replies bypass the output high-water mark"): a
//! client that writes a burst of small requests with large replies (HISTORY) and
//! reads nothing made the server build every reply — 256 × 6 MB — in its memory.
//! While a connection's output is over its high-water mark the server does not
//! run that connection's next request; the replies it holds stay under the mark
//! plus one reply (plus what the kernel takes). (That all of them then come, in
//! order, once the client reads is not checked here: see the end of the test.)

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chat::admin::AdminOptions;
use chat::gateway::Limits;
use chat::server::ServerOptions;
use serde_json::json;

use util::{kernel_in_flight_max, Backend, Client, User};

/// The output high-water mark under test.
const MARK: usize = 64 * 1024;
/// One stored message's text: a HISTORY reply of `limit` messages is `limit` of these.
const TEXT: usize = 30_000;
/// Messages A leaves for B (the largest HISTORY reply's size).
const STORED: usize = 30;
/// HISTORY requests B writes in one burst and does not read.
const REQUESTS: usize = 64;

/// The bytes of the frames the server has handed to its connections so far
/// (`/metrics`): what a reply costs the server once it is built.
fn bytes_out(admin: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(admin).expect("connect to the admin listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read the scrape");
    body.lines()
        .find_map(|l| l.strip_prefix("chat_bytes_out_total "))
        .expect("chat_bytes_out in /metrics")
        .trim()
        .parse()
        .expect("a count")
}

/// The `limit` of request `i`: replies differ in size, so their order shows.
fn limit(i: usize) -> usize {
    STORED - i % 10
}

#[test]
fn requests_wait_while_the_output_is_over_the_mark() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(ServerOptions {
        admin: Some(AdminOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: None,
        }),
        limits: Limits {
            output_high_water: MARK,
            rate: 0,
            ..Limits::default()
        },
        ..ServerOptions::default()
    });
    let admin = srv.admin_addr().expect("the admin listener runs");
    let mut a = User::online(srv.addr(), "gate_a");
    // B's kernel buffers are small (set before connect), so that its unread
    // replies pile up in the server rather than in the kernel.
    let mut bob = User::register_on(Client::with_buffers(srv.addr(), 4096), "gate_b");
    for i in 0..STORED {
        a.chat(bob.id, &format!("{i:04}{}", "x".repeat(TEXT)));
    }
    a.c.barrier();
    bob.login();
    // The stored messages the LOGIN_ACK did not carry come as frames: read them.
    bob.c.send_raw(b"{\"msgid\":13}\0");
    while bob.c.recv()["msgid"] != 14 {}
    let before = bytes_out(admin);

    let burst: Vec<u8> = (0..REQUESTS)
        .flat_map(|i| {
            let req = json!({"msgid": 23, "id": bob.id, "peer": a.id, "limit": limit(i)});
            let mut f = serde_json::to_vec(&req).unwrap();
            f.push(0);
            f
        })
        .collect();
    bob.c.send_raw(&burst);

    // Wait until the server stops building replies (the count holds for a
    // second); without the gate it builds all of them at once.
    let mut sent = bytes_out(admin) - before;
    let mut still = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while still.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = bytes_out(admin) - before;
        if now != sent {
            sent = now;
            still = Instant::now();
        }
    }
    // What the kernel holds, the mark, one reply over it and one on its way.
    let bound = kernel_in_flight_max(bob.c.stream()) + MARK + 2 * (STORED * TEXT + 4096);
    let all = REQUESTS * (STORED - 5) * TEXT;
    eprintln!(
        "reply gate: {sent} B of replies built while B read nothing (bound {bound}, all {all})"
    );
    assert!(
        (sent as usize) <= bound,
        "{sent} B of replies were built for a client that reads nothing \
         (the kernel's buffers, the mark and one reply hold at most {bound} B)"
    );

    // Not checked here: that B then reads every reply in order (~48 MB through a
    // 4 KiB buffer; when that buffer was shrunk after connect, loopback sent only on
    // the persist timer and the read crawled past the 10 s frame timeout). Replies'
    // order is covered by the suites that pipeline requests (framing.rs, messages.rs).
    srv.stop();
}
