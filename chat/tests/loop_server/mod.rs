//! A bare net server for tests that drive chat's per-connection parts (Outflow,
//! Session) on a real connection, without the chat gateway on top.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use net::{ConnHandle, EventLoop, LoopHandle, TcpServer};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A one-IO-loop server whose connection callback hands each new connection's
/// handle to the test; stopped (loop quit, thread joined) when dropped.
pub struct Server {
    /// The base loop, quit at the drop.
    base: LoopHandle,
    /// The thread running the base loop (and owning the IO loop's pool).
    thread: Option<JoinHandle<()>>,
    /// Each accepted connection's handle and peer address.
    conns: mpsc::Receiver<(ConnHandle, SocketAddr)>,
    /// Where it listens.
    addr: SocketAddr,
}

impl Server {
    /// Starts it on 127.0.0.1, a free port.
    pub fn start() -> Server {
        let (tx, conns) = mpsc::channel();
        let (up_tx, up) = mpsc::channel();
        let thread = thread::spawn(move || {
            let lp = EventLoop::new().expect("loop");
            let server = TcpServer::new(&lp, "127.0.0.1:0".parse().unwrap(), "test").unwrap();
            server.set_thread_num(1);
            let tx = parking_lot::Mutex::new(tx);
            server.set_connection_callback(Arc::new(move |conn| {
                if conn.connected() {
                    let _ = tx.lock().send((conn.handle(), conn.peer_addr()));
                }
            }));
            server.start().expect("start");
            up_tx.send((server.local_addr(), lp.handle())).unwrap();
            lp.run();
        });
        let (addr, base) = up.recv_timeout(TIMEOUT).expect("server up");
        Server {
            base,
            thread: Some(thread),
            conns,
            addr,
        }
    }

    /// Connects a client whose receive buffer is `rcvbuf` bytes (set before
    /// connecting, so the window stays small: what the client leaves unread piles
    /// up in the server's output), and returns it with the server side's handle
    /// and the client's address.
    pub fn connect(&self, rcvbuf: usize) -> (TcpStream, ConnHandle, SocketAddr) {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        sock.connect_timeout(&self.addr.into(), TIMEOUT)
            .expect("connect");
        let client = TcpStream::from(sock);
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (conn, peer) = self.conns.recv_timeout(TIMEOUT).expect("accepted");
        (client, conn, peer)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.base.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
