//! ServerThread: a ChatServer running on its own thread, for tests, benchmarks and
//! embedding; stopping it runs the same clean shutdown as SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use net::{EventLoop, LoopHandle};

use crate::server::{ChatServer, ServerOptions};
use crate::store;

/// A running server: its address, and a handle to stop it.
pub struct ServerThread {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    base: LoopHandle,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Opens the store at `db_url` and serves on `addr` (use port 0 in tests).
    pub fn start(addr: SocketAddr, db_url: &str, opts: ServerOptions) -> io::Result<ServerThread> {
        let db_url = db_url.to_owned();
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("chat-server".into())
            .spawn(move || {
                let started = (|| -> io::Result<(EventLoop, ChatServer)> {
                    let store = store::open(&db_url).map_err(io::Error::other)?;
                    store.set_all_offline().map_err(io::Error::other)?;
                    let lp = EventLoop::new()?;
                    let server = ChatServer::new(&lp, addr, store, opts)?;
                    server.start()?;
                    Ok((lp, server))
                })();
                match started {
                    Ok((lp, server)) => {
                        let addrs = (server.local_addr(), server.admin_addr(), server.ws_addr());
                        let _ = tx.send(Ok((addrs, lp.handle())));
                        lp.run();
                        server.shutdown(&lp, Duration::from_secs(5));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let ((addr, admin, ws), base) = rx
            .recv()
            .map_err(|_| io::Error::other("server thread died during start"))??;
        Ok(ServerThread {
            addr,
            admin,
            ws,
            base,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, if the options asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The WebSocket listener's address, if the options asked for one.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws
    }

    /// Stops the server as SIGTERM would and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.base.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
