//! pingpong_server: the echo half of muduo's pingpong throughput benchmark.
//!
//! Usage: `pingpong_server <address> <port> <threads>`
//!
//! As in muduo, `threads` counts every thread that does IO: with 1 the single
//! base loop accepts and echoes; with N > 1 the base loop only accepts and N IO
//! loops echo.

use std::net::{IpAddr, SocketAddr};
use std::process::exit;
use std::sync::Arc;

use net::{EventLoop, TcpServer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("Usage: {} <address> <port> <threads>", args[0]);
        exit(2);
    }
    let ip: IpAddr = args[1].parse().unwrap_or_else(|e| fail("address", e));
    let port: u16 = args[2].parse().unwrap_or_else(|e| fail("port", e));
    let threads: usize = args[3].parse().unwrap_or_else(|e| fail("threads", e));

    let lp = EventLoop::new().expect("event loop");
    let server = TcpServer::new(&lp, SocketAddr::new(ip, port), "PingPongServer")
        .unwrap_or_else(|e| fail("listen", e));
    server.set_connection_callback(Arc::new(|conn| {
        if conn.connected() {
            // Small blocks must not wait for Nagle's algorithm.
            let _ = conn.set_tcp_no_delay(true);
        }
    }));
    server.set_message_callback(Arc::new(|conn, buf| {
        conn.send(buf.peek());
        buf.retrieve_all();
    }));
    if threads > 1 {
        server.set_thread_num(threads);
    }
    server.start().unwrap_or_else(|e| fail("start", e));
    eprintln!(
        "pingpong_server: listening on {} with {threads} IO thread(s)",
        server.local_addr()
    );
    lp.run();
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("pingpong_server: bad {what}: {e}");
    exit(2);
}
