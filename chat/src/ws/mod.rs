//! WebSocket listener (`--ws-addr`): browsers chat on the same sessions as TCP
//! clients. Each connection starts as HTTP: a `GET` of the web client's files
//! ([`web`]) is answered and closed; an upgrade (RFC 6455) turns it into a chat
//! connection of the [`Gateway`], whose frames travel one per text message —
//! [`WsReader`] reads them with tungstenite's protocol layer, and [`WsFramer`]
//! (the connection's [`net::OutputFramer`]) frames everything the server sends, on
//! every send path, so the rest of the server does not know the difference.
//! Everything here runs on net's IO loops and never blocks.
//!
//! The HTTP phase is bounded on its own ([`crate::gateway::Limits::http_max`] connections at
//! once, [`crate::gateway::Limits::http_per_ip`] of them from one peer address,
//! [`crate::gateway::Limits::http_timeout`] each, from the accept): only upgraded
//! connections take chat slots (`--max-connections`), so half-open requests
//! cannot lock chat clients out.

mod framer;
pub mod http;
mod reader;
pub mod web;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use net::{Buffer, EventLoop, LoopHandle, TcpConnectionPtr, TcpServer, TimerId};
use parking_lot::Mutex;

pub use framer::{text_message, CloseState, WsFramer};
pub use reader::{WsEvent, WsReader};

use crate::gateway::Gateway;

/// A connection's state before its upgrade: the HTTP phase's time limit.
struct HttpPhase {
    timer: TimerId,
    /// Counted in [`Counts::http`] (and its address's count); false for one
    /// refused because too many were in their HTTP phase, in all or from its
    /// address (its input is discarded).
    counted: bool,
}

/// The listener's connections by phase (its `TcpServer` counts them all).
#[derive(Debug, Default)]
struct Counts {
    /// In their HTTP phase (refused ones excepted).
    http: AtomicUsize,
    /// The same, by peer address (addresses with none are removed).
    http_by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Upgraded: chat connections, counted against `--max-connections`.
    chat: Arc<AtomicUsize>,
}

impl Counts {
    /// Counts a new connection from `ip` into the HTTP phase; false (counting
    /// nothing) if the phase is full, in all or for `ip`. Safe from any thread.
    fn enter_http(&self, ip: IpAddr, limits: &crate::gateway::Limits) -> bool {
        let mut by_ip = self.http_by_ip.lock();
        if by_ip.get(&ip).copied().unwrap_or(0) >= limits.http_per_ip {
            return false;
        }
        if self.http.fetch_add(1, Ordering::AcqRel) >= limits.http_max {
            self.http.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        *by_ip.entry(ip).or_insert(0) += 1;
        true
    }

    /// A connection from `ip` counted by [`Counts::enter_http`] left the HTTP
    /// phase (upgraded or closed).
    fn leave_http(&self, ip: IpAddr) {
        self.http.fetch_sub(1, Ordering::AcqRel);
        let mut by_ip = self.http_by_ip.lock();
        if let Some(n) = by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

/// The WebSocket / web client listener, beside the TCP one.
pub struct WsServer {
    tcp: TcpServer,
    counts: Arc<Counts>,
}

impl WsServer {
    /// Binds `addr`; connections are served once [`WsServer::attach`] gave it the
    /// gateway. Must be called on the base loop thread.
    pub fn bind(lp: &EventLoop, addr: SocketAddr, io_threads: usize) -> io::Result<WsServer> {
        let tcp = TcpServer::new(lp, addr, "ChatServer-ws")?;
        tcp.set_thread_num(io_threads);
        Ok(WsServer {
            tcp,
            counts: Arc::default(),
        })
    }

    /// Routes the connections to `gateway` after their upgrade. Must be called on
    /// the base loop thread, before [`WsServer::start`].
    pub fn attach(&self, gateway: Arc<Gateway>) {
        let tcp = &self.tcp;
        let g = gateway.clone();
        let counts = self.counts.clone();
        tcp.set_connection_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            on_connection(&g, &counts, conn)
        }));
        let g = gateway.clone();
        let counts = self.counts.clone();
        tcp.set_message_callback(Arc::new(
            move |conn: &TcpConnectionPtr, buf: &mut Buffer| on_message(&g, &counts, conn, buf),
        ));
        let g = gateway.clone();
        tcp.set_write_complete_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            g.on_write_complete(conn)
        }));
        let mark = gateway.limits().output_high_water;
        let g = gateway;
        tcp.set_high_water_mark_callback(
            Arc::new(move |conn: &TcpConnectionPtr, size| g.on_high_water(conn, size)),
            mark,
        );
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The live connection counter (HTTP ones included).
    pub fn connection_count(&self) -> Arc<AtomicUsize> {
        self.tcp.connection_count()
    }

    /// The upgraded (chat) connections: what counts against `--max-connections`.
    pub fn chat_connection_count(&self) -> Arc<AtomicUsize> {
        self.counts.chat.clone()
    }

    /// Starts its IO threads and listening. Must be called on the base loop thread.
    pub fn start(&self) -> io::Result<()> {
        self.tcp.start()
    }

    /// Its IO loops.
    pub fn io_loops(&self) -> Vec<LoopHandle> {
        self.tcp.io_loops()
    }

    /// Stops accepting. Must be called on the base loop thread.
    pub fn stop_accepting(&self) {
        self.tcp.stop_accepting();
    }
}

fn on_connection(gw: &Gateway, counts: &Counts, conn: &TcpConnectionPtr) {
    if conn.connected() {
        let limits = gw.limits();
        let handle = conn.handle();
        let timer = conn
            .loop_handle()
            .run_after(limits.http_timeout, move |lp| {
                if let Some(c) = handle.get(lp) {
                    if c.with_context(|_: &mut HttpPhase| ()).is_some() {
                        c.force_close();
                    }
                }
            });
        let counted = counts.enter_http(conn.peer_addr().ip(), limits);
        conn.set_context(HttpPhase { timer, counted });
        if !counted {
            log::debug!("{}: too many HTTP-phase connections, 503", conn.name());
            finish(conn, &http::busy());
        }
        return;
    }
    match conn.with_context(|h: &mut HttpPhase| (h.timer, h.counted)) {
        Some((timer, counted)) => {
            conn.loop_handle().cancel(timer);
            if counted {
                counts.leave_http(conn.peer_addr().ip());
            }
        }
        None => {
            counts.chat.fetch_sub(1, Ordering::AcqRel);
            gw.on_connection(conn);
        }
    }
}

fn on_message(gw: &Gateway, counts: &Counts, conn: &TcpConnectionPtr, buf: &mut Buffer) {
    let phase = conn.with_context(|h: &mut HttpPhase| (h.timer, h.counted));
    let Some((timer, counted)) = phase else {
        gw.on_ws_message(conn, buf);
        return;
    };
    if !counted {
        buf.retrieve_all(); // refused: its 503 is on its way
        return;
    }
    match http::parse(buf.peek()) {
        http::Request::Partial => {}
        http::Request::Upgrade { key, consumed } => {
            buf.retrieve(consumed);
            conn.loop_handle().cancel(timer);
            // From the HTTP phase's count to the chat connections' (the gateway's
            // admission counts it from here on).
            counts.leave_http(conn.peer_addr().ip());
            counts.chat.fetch_add(1, Ordering::AcqRel);
            conn.send(&http::upgrade_response(&key));
            let close = CloseState::new();
            conn.set_framer(Box::new(WsFramer::new(close.clone())));
            gw.on_ws_upgraded(conn, WsReader::new(gw.frame_limit(), close));
            if !buf.is_empty() {
                gw.on_ws_message(conn, buf);
            }
        }
        http::Request::Get { path, head } => {
            buf.retrieve_all();
            let reply = match web::asset(&path) {
                Some(a) => http::response(200, "OK", a.content_type, &[web::CSP], a.body, head),
                None => http::plain(404, "Not Found", "not found\n"),
            };
            // Still in the HTTP phase (counted, timed) until its reply is written
            // and the client closed.
            finish(conn, &reply);
        }
        http::Request::Refuse(reply) => {
            buf.retrieve_all();
            finish(conn, &reply);
        }
    }
}

/// Sends a whole HTTP response and closes once it is written.
fn finish(conn: &TcpConnectionPtr, reply: &[u8]) {
    conn.send(reply);
    conn.shutdown();
}
