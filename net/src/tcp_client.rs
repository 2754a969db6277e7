//! TcpClient: one outgoing connection on a loop, with optional reconnect.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use crate::callbacks::{
    default_connection_callback, default_message_callback, ConnectionCallback, MessageCallback,
    TcpConnectionPtr, WriteCompleteCallback,
};
use crate::connector::Connector;
use crate::event_loop::EventLoop;
use crate::tcp_connection::ConnCallbacks;
use crate::tcp_server::establish_client;

struct ClientInner {
    lp: EventLoop,
    name: String,
    connector: Rc<Connector>,
    callbacks: RefCell<ConnCallbacks>,
    connection: RefCell<Option<TcpConnectionPtr>>,
    /// Reconnect after an established connection closes.
    retry: Cell<bool>,
    /// False after `disconnect` or `stop`.
    wanted: Cell<bool>,
}

/// A client connection with muduo's TcpClient semantics: non-blocking connect,
/// retry with backoff while the server is unreachable, self-connect rejected,
/// optional reconnect. Lives on one loop's thread; every method must be called there.
pub struct TcpClient {
    inner: Rc<ClientInner>,
}

impl TcpClient {
    /// A client for `addr` on `lp`. Must be called on the loop thread.
    pub fn new(lp: &EventLoop, addr: SocketAddr, name: impl Into<String>) -> TcpClient {
        let inner = Rc::new(ClientInner {
            lp: lp.clone(),
            name: name.into(),
            connector: Rc::new(Connector::new(addr)),
            callbacks: RefCell::new(ConnCallbacks {
                connection: Arc::new(default_connection_callback),
                message: Arc::new(default_message_callback),
                write_complete: None,
                high_water_mark: None,
            }),
            connection: RefCell::new(None),
            retry: Cell::new(false),
            wanted: Cell::new(false),
        });
        let weak = Rc::downgrade(&inner);
        inner
            .connector
            .set_new_stream_callback(Box::new(move |lp, stream| {
                if let Some(inner) = weak.upgrade() {
                    new_connection(&inner, lp, stream);
                }
            }));
        TcpClient { inner }
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Called when the connection comes up and goes down.
    pub fn set_connection_callback(&self, cb: ConnectionCallback) {
        self.inner.callbacks.borrow_mut().connection = cb;
    }

    /// Called when bytes arrive.
    pub fn set_message_callback(&self, cb: MessageCallback) {
        self.inner.callbacks.borrow_mut().message = cb;
    }

    /// Called when the output buffer drains.
    pub fn set_write_complete_callback(&self, cb: WriteCompleteCallback) {
        self.inner.callbacks.borrow_mut().write_complete = Some(cb);
    }

    /// Reconnect whenever an established connection closes.
    pub fn enable_retry(&self) {
        self.inner.retry.set(true);
    }

    /// Starts connecting (retrying with backoff until it succeeds or `stop`).
    pub fn connect(&self) {
        self.inner.wanted.set(true);
        self.inner.connector.start(&self.inner.lp);
    }

    /// Half-closes the established connection after its output drains; no reconnect.
    pub fn disconnect(&self) {
        self.inner.wanted.set(false);
        if let Some(conn) = &*self.inner.connection.borrow() {
            conn.shutdown();
        }
    }

    /// Stops connecting; an established connection stays up.
    pub fn stop(&self) {
        self.inner.wanted.set(false);
        self.inner.connector.stop(&self.inner.lp);
    }

    /// The established connection, if any.
    pub fn connection(&self) -> Option<TcpConnectionPtr> {
        self.inner.connection.borrow().clone()
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        self.inner.wanted.set(false);
        self.inner.connector.stop(&self.inner.lp);
        let conn = self.inner.connection.borrow_mut().take();
        if let Some(conn) = conn {
            conn.force_close();
        }
    }
}

fn new_connection(inner: &Rc<ClientInner>, lp: &EventLoop, stream: mio::net::TcpStream) {
    let name = format!("{}#{}", inner.name, lp.channel_count());
    let callbacks = inner.callbacks.borrow().clone();
    let conn = match establish_client(lp, stream, name, callbacks) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{}: {e}", inner.name);
            return;
        }
    };
    let weak: Weak<ClientInner> = Rc::downgrade(inner);
    conn.set_close_callback(Rc::new(move |_| {
        if let Some(inner) = weak.upgrade() {
            inner.connection.borrow_mut().take();
            if inner.retry.get() && inner.wanted.get() {
                log::debug!("{}: reconnecting", inner.name);
                inner.connector.restart(&inner.lp);
            }
        }
    }));
    *inner.connection.borrow_mut() = Some(conn.clone());
    conn.connect_established();
}
