//! Callbacks: every user callback type in one place.

use std::rc::Rc;
use std::sync::Arc;

use crate::buffer::Buffer;
use crate::event_loop::EventLoop;
use crate::tcp_connection::TcpConnection;

/// A connection as the loop thread sees it: shared by the loop and by callbacks.
pub type TcpConnectionPtr = Rc<TcpConnection>;

/// Work handed to a loop from any thread.
pub type Task = Box<dyn FnOnce(&EventLoop) + Send>;

/// A timer's action; runs on the loop thread.
pub type TimerCallback = Box<dyn FnMut(&EventLoop)>;

/// Called when a connection comes up and again when it goes down (check
/// [`TcpConnection::connected`]). Runs on the connection's loop thread.
pub type ConnectionCallback = Arc<dyn Fn(&TcpConnectionPtr) + Send + Sync>;

/// Called with the input buffer when bytes arrived. Consume what you handle;
/// the rest stays for the next call. Runs on the connection's loop thread.
pub type MessageCallback = Arc<dyn Fn(&TcpConnectionPtr, &mut Buffer) + Send + Sync>;

/// Called once the output buffer has been fully written to the socket.
pub type WriteCompleteCallback = Arc<dyn Fn(&TcpConnectionPtr) + Send + Sync>;

/// Called when the output buffer crosses the high-water mark upwards, with its size.
pub type HighWaterMarkCallback = Arc<dyn Fn(&TcpConnectionPtr, usize) + Send + Sync>;

/// Internal: lets the owner (server or client) forget a closed connection.
pub(crate) type CloseCallback = Rc<dyn Fn(&TcpConnectionPtr)>;

/// Runs on each loop thread of a pool right after its loop is created.
pub type ThreadInitCallback = Arc<dyn Fn(&EventLoop) + Send + Sync>;

/// The default connection callback: logs the transition.
pub fn default_connection_callback(conn: &TcpConnectionPtr) {
    log::trace!(
        "{} -> {} is {}",
        conn.local_addr(),
        conn.peer_addr(),
        if conn.connected() { "UP" } else { "DOWN" }
    );
}

/// The default message callback: discards the input.
pub fn default_message_callback(_conn: &TcpConnectionPtr, buf: &mut Buffer) {
    buf.retrieve_all();
}
