//! WebSocket listener (`--ws-addr`): browsers chat on the same sessions as TCP
//! clients. Each connection starts as HTTP: a `GET` of the web client's files
//! ([`web`]) is answered and closed; an upgrade (RFC 6455) turns it into a chat
//! connection of the [`Gateway`], whose frames travel one per text message —
//! [`WsReader`] reads them with tungstenite's protocol layer, and [`WsFramer`]
//! (the connection's [`net::OutputFramer`]) frames everything the server sends, on
//! every send path, so the rest of the server does not know the difference.
//! Everything here runs on net's IO loops and never blocks.

mod framer;
pub mod http;
mod reader;
pub mod web;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use net::{Buffer, EventLoop, LoopHandle, TcpConnectionPtr, TcpServer, TimerId};

pub use framer::{text_message, WsFramer};
pub use reader::{WsEvent, WsReader};

use crate::gateway::Gateway;

/// How long a connection may take to send its HTTP request when the login
/// time limit is off (otherwise that limit applies to the request too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's state before its upgrade: the request's time limit.
struct HttpPhase {
    timer: TimerId,
}

/// The WebSocket / web client listener, beside the TCP one.
pub struct WsServer {
    tcp: TcpServer,
}

impl WsServer {
    /// Binds `addr`; connections are served once [`WsServer::attach`] gave it the
    /// gateway. Must be called on the base loop thread.
    pub fn bind(lp: &EventLoop, addr: SocketAddr, io_threads: usize) -> io::Result<WsServer> {
        let tcp = TcpServer::new(lp, addr, "ChatServer-ws")?;
        tcp.set_thread_num(io_threads);
        Ok(WsServer { tcp })
    }

    /// Routes the connections to `gateway` after their upgrade. Must be called on
    /// the base loop thread, before [`WsServer::start`].
    pub fn attach(&self, gateway: Arc<Gateway>) {
        let tcp = &self.tcp;
        let g = gateway.clone();
        tcp.set_connection_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            on_connection(&g, conn)
        }));
        let g = gateway.clone();
        tcp.set_message_callback(Arc::new(
            move |conn: &TcpConnectionPtr, buf: &mut Buffer| on_message(&g, conn, buf),
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

fn on_connection(gw: &Gateway, conn: &TcpConnectionPtr) {
    if conn.connected() {
        let limit = gw.limits().login_timeout;
        let limit = if limit.is_zero() {
            REQUEST_TIMEOUT
        } else {
            limit
        };
        let handle = conn.handle();
        let timer = conn.loop_handle().run_after(limit, move |lp| {
            if let Some(c) = handle.get(lp) {
                if c.with_context(|_: &mut HttpPhase| ()).is_some() {
                    c.force_close();
                }
            }
        });
        conn.set_context(HttpPhase { timer });
        return;
    }
    match conn.with_context(|h: &mut HttpPhase| h.timer) {
        Some(timer) => conn.loop_handle().cancel(timer),
        None => gw.on_connection(conn),
    }
}

fn on_message(gw: &Gateway, conn: &TcpConnectionPtr, buf: &mut Buffer) {
    let timer = conn.with_context(|h: &mut HttpPhase| h.timer);
    let Some(timer) = timer else {
        gw.on_ws_message(conn, buf);
        return;
    };
    match http::parse(buf.peek()) {
        http::Request::Partial => {}
        http::Request::Upgrade { key, consumed } => {
            buf.retrieve(consumed);
            conn.loop_handle().cancel(timer);
            conn.send(&http::upgrade_response(&key));
            let close_sent = Rc::new(Cell::new(false));
            conn.set_framer(Box::new(WsFramer::new(close_sent.clone())));
            gw.on_ws_upgraded(conn, WsReader::new(gw.frame_limit(), close_sent));
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
