//! TcpServer: an acceptor on the base loop handing connections to a pool of IO loops.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use mio::net::TcpStream;
use mio::Interest;

use crate::acceptor::Acceptor;
use crate::callbacks::{
    default_connection_callback, default_message_callback, ConnectionCallback,
    HighWaterMarkCallback, MessageCallback, ThreadInitCallback, WriteCompleteCallback,
};
use crate::event_loop::{EventLoop, LoopHandle, Slot};
use crate::event_loop_thread::EventLoopThreadPool;
use crate::tcp_connection::{ConnCallbacks, TcpConnection};

/// Connection ids are unique in the process, across servers and clients.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Whether to set `SO_REUSEPORT` on the listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReusePort {
    /// Only `SO_REUSEADDR` (the default).
    #[default]
    No,
    /// Also `SO_REUSEPORT`, so several processes can share the port.
    Yes,
}

/// A TCP server: accepts on the base loop, and runs each connection on one IO
/// loop of its pool. Lives on the base loop's thread; configure it, then `start`.
pub struct TcpServer {
    base: EventLoop,
    name: String,
    acceptor: Rc<Acceptor>,
    local_addr: SocketAddr,
    pool: Rc<RefCell<EventLoopThreadPool>>,
    callbacks: RefCell<ConnCallbacks>,
    thread_init: RefCell<Option<ThreadInitCallback>>,
    /// Live connections, across all IO loops.
    connections: Arc<AtomicUsize>,
    started: Cell<bool>,
}

impl TcpServer {
    /// Binds `addr` (port 0 picks a free port; see [`TcpServer::local_addr`]).
    /// Must be called on the base loop thread.
    pub fn new(
        base: &EventLoop,
        addr: SocketAddr,
        name: impl Into<String>,
    ) -> io::Result<TcpServer> {
        TcpServer::with_option(base, addr, name, ReusePort::No)
    }

    /// Like [`TcpServer::new`], choosing `SO_REUSEPORT`. Must be called on the base loop thread.
    pub fn with_option(
        base: &EventLoop,
        addr: SocketAddr,
        name: impl Into<String>,
        reuse_port: ReusePort,
    ) -> io::Result<TcpServer> {
        let name = name.into();
        let acceptor = Rc::new(Acceptor::bind(addr, reuse_port == ReusePort::Yes)?);
        let local_addr = acceptor.local_addr()?;
        Ok(TcpServer {
            base: base.clone(),
            pool: Rc::new(RefCell::new(EventLoopThreadPool::new(base, name.clone()))),
            name,
            acceptor,
            local_addr,
            callbacks: RefCell::new(ConnCallbacks {
                connection: Arc::new(default_connection_callback),
                message: Arc::new(default_message_callback),
                write_complete: None,
                high_water_mark: None,
            }),
            thread_init: RefCell::new(None),
            connections: Arc::new(AtomicUsize::new(0)),
            started: Cell::new(false),
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bound address (with the real port when bound to port 0). Safe to call from any thread.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of IO threads; 0 (the default) runs everything on the base loop.
    /// Must be called before `start`.
    pub fn set_thread_num(&self, n: usize) {
        assert!(!self.started.get(), "set_thread_num after start");
        self.pool.borrow_mut().set_thread_num(n);
    }

    /// Runs on each IO loop as it starts. Must be called before `start`.
    pub fn set_thread_init_callback(&self, cb: ThreadInitCallback) {
        *self.thread_init.borrow_mut() = Some(cb);
    }

    /// Called when a connection comes up and when it goes down. Must be called before `start`.
    pub fn set_connection_callback(&self, cb: ConnectionCallback) {
        self.callbacks.borrow_mut().connection = cb;
    }

    /// Called when bytes arrive. Must be called before `start`.
    pub fn set_message_callback(&self, cb: MessageCallback) {
        self.callbacks.borrow_mut().message = cb;
    }

    /// Called when a connection's output buffer drains. Must be called before `start`.
    pub fn set_write_complete_callback(&self, cb: WriteCompleteCallback) {
        self.callbacks.borrow_mut().write_complete = Some(cb);
    }

    /// Called when a connection's output buffer crosses `mark` bytes upwards.
    /// Must be called before `start`.
    pub fn set_high_water_mark_callback(&self, cb: HighWaterMarkCallback, mark: usize) {
        self.callbacks.borrow_mut().high_water_mark = Some((cb, mark));
    }

    /// Live connections. Safe to call from any thread (through a clone of the counter).
    pub fn connection_count(&self) -> Arc<AtomicUsize> {
        self.connections.clone()
    }

    /// Every IO loop's handle (the base loop's when there are no IO threads).
    pub fn io_loops(&self) -> Vec<LoopHandle> {
        self.pool.borrow().all_loops()
    }

    /// Starts the IO threads and listening. Idempotent. Must be called on the base loop thread.
    pub fn start(&self) -> io::Result<()> {
        if self.started.replace(true) {
            return Ok(());
        }
        let init = self.thread_init.borrow().clone();
        self.pool.borrow_mut().start(&self.base, init)?;
        let pool = self.pool.clone();
        let callbacks = self.callbacks.borrow().clone();
        let connections = self.connections.clone();
        let prefix = format!("{}-{}", self.name, self.local_addr);
        self.acceptor
            .set_new_connection_callback(Box::new(move |_lp, stream, peer| {
                let io_loop = pool.borrow().next_loop();
                let id = next_conn_id();
                let name = format!("{prefix}#{id}");
                let callbacks = callbacks.clone();
                let connections = connections.clone();
                io_loop.run_in_loop(move |lp| {
                    establish(lp, stream, peer, name, id, callbacks, connections)
                });
            }));
        self.acceptor.listen(&self.base)
    }

    /// Stops accepting new connections; established ones go on. Must be called on the base loop thread.
    pub fn stop_accepting(&self) {
        self.acceptor.stop(&self.base);
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.acceptor.stop(&self.base);
    }
}

/// Creates the connection on its IO loop and announces it.
fn establish(
    lp: &EventLoop,
    stream: TcpStream,
    peer: SocketAddr,
    name: String,
    id: u64,
    callbacks: ConnCallbacks,
    connections: Arc<AtomicUsize>,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            log::debug!("{name}: local_addr: {e}");
            return;
        }
    };
    let conn = Rc::new(TcpConnection::new(
        lp, name, id, stream, local, peer, callbacks,
    ));
    if let Err(e) = register_connection(lp, &conn) {
        log::error!("{}: register failed: {e}", conn.name());
        return;
    }
    connections.fetch_add(1, Ordering::Relaxed);
    conn.set_close_callback(Rc::new(move |_| {
        connections.fetch_sub(1, Ordering::Relaxed);
    }));
    conn.connect_established();
}

/// Registers a connected stream on `lp` as a connection (shared with TcpClient).
pub(crate) fn establish_client(
    lp: &EventLoop,
    stream: TcpStream,
    name: String,
    callbacks: ConnCallbacks,
) -> io::Result<Rc<TcpConnection>> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let conn = Rc::new(TcpConnection::new(
        lp,
        name,
        next_conn_id(),
        stream,
        local,
        peer,
        callbacks,
    ));
    register_connection(lp, &conn)?;
    Ok(conn)
}

/// Puts a connection in its loop's slab, registered for both directions
/// (edge-triggered, so writability costs nothing until a write would block).
fn register_connection(lp: &EventLoop, conn: &Rc<TcpConnection>) -> io::Result<()> {
    let slot_conn = conn.clone();
    let token = lp.register(
        &mut *conn.stream_mut(),
        Interest::READABLE | Interest::WRITABLE,
        move |_| Slot::Connection(slot_conn),
    )?;
    conn.set_token(token);
    Ok(())
}
