//! A muduo-style reactor network library on mio.
//!
//! **One loop per thread.** An [`EventLoop`] waits for readiness with `mio::Poll`
//! (edge-triggered), dispatches it, runs due timers, then runs the tasks other
//! threads queued. A thread has at most one loop; the loop is neither `Send` nor
//! `Sync`. Other threads talk to it through its [`LoopHandle`] (`run_in_loop`,
//! `queue_in_loop`, `quit`, timers), which wakes it with a `mio::Waker`.
//!
//! **Servers.** A [`TcpServer`] accepts on its base loop and hands each
//! connection to the next IO loop of its [`EventLoopThreadPool`] (round robin).
//! A [`TcpConnection`] lives in its loop's slab for its whole life; callbacks get
//! it as a [`TcpConnectionPtr`] (an `Rc`) on that loop's thread. Other threads use
//! its [`ConnHandle`], which names the slot *and* the connection id, so it never
//! reaches a later connection that reuses the slot.
//!
//! **Clients.** A [`TcpClient`] connects without blocking, retries with backoff and
//! rejects self-connects.
//!
//! **Type map** (muduo → here): EventLoop → [`EventLoop`] + [`LoopHandle`];
//! Channel and Poller → the internal `Channel` trait and `mio::Poll`; TimerQueue →
//! internal, driven by the poll timeout; Acceptor and Connector → internal;
//! TcpServer, TcpClient, TcpConnection, Buffer, EventLoopThread(Pool) → same names.
//!
//! **Threading rules.** Every public method says whether it must be called on the
//! loop thread or is safe from any thread. User callbacks run on the loop thread of
//! the connection they concern. Write-complete and high-water-mark callbacks are
//! deferred until after the current event, never called inside the write path.
//! A failing peer closes only its own connection; a loop never stops for it.
//!
//! **Write coalescing** (where this port departs from muduo). Small sends made
//! while a loop handles one iteration's events, timers and queued tasks are
//! appended to their connection's output and written at the end of the iteration,
//! one `write` per connection: a member of several busy groups gets one syscall
//! per iteration instead of one per frame. Sends of 1 KiB or more go out at once
//! when nothing is buffered, as in muduo. Order is kept either way.
#![deny(missing_docs)]

mod acceptor;
mod buffer;
mod callbacks;
mod channel;
mod conn_handle;
mod connector;
mod event_loop;
mod event_loop_thread;
mod framer;
mod tcp_client;
mod tcp_connection;
mod tcp_server;
mod timer_queue;

pub use buffer::{Buffer, CHEAP_PREPEND, INITIAL_SIZE};
pub use callbacks::{
    default_connection_callback, default_message_callback, ConnectionCallback,
    HighWaterMarkCallback, MessageCallback, Task, TcpConnectionPtr, ThreadInitCallback,
    TimerCallback, WriteCompleteCallback,
};
pub use conn_handle::{send_to_all, ConnHandle};
pub use event_loop::{EventLoop, LoopHandle};
pub use event_loop_thread::{EventLoopThread, EventLoopThreadPool};
pub use framer::OutputFramer;
pub use tcp_client::TcpClient;
pub use tcp_connection::{
    State, TcpConnection, DEFAULT_HIGH_WATER_MARK, MAX_READ_BETWEEN_CALLBACKS,
};
pub use tcp_server::{ReusePort, TcpServer};
pub use timer_queue::TimerId;
