//! ConnHandle: the `Send` handle other threads use to reach a TcpConnection on its
//! loop; a closed connection's handle reaches nothing, even if its slot is reused.

use std::sync::Arc;

use crate::callbacks::TcpConnectionPtr;
use crate::event_loop::{EventLoop, LoopHandle};

/// A connection as other threads see it: `Send + Sync + Clone`, cheap to copy.
/// Operations are carried out on the connection's loop; once the connection is
/// closed they do nothing, even if its slab slot holds a newer connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub(crate) loop_handle: LoopHandle,
    pub(crate) token: usize,
    pub(crate) id: u64,
}

impl ConnHandle {
    /// The connection's process-wide unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The handle of the connection's loop.
    pub fn loop_handle(&self) -> &LoopHandle {
        &self.loop_handle
    }

    /// Runs `f` with the connection on its loop thread, if it is still there.
    /// Safe to call from any thread.
    pub fn run(&self, f: impl FnOnce(&TcpConnectionPtr) + Send + 'static) {
        self.with(move |conn| {
            if let Some(conn) = conn {
                f(conn);
            }
        });
    }

    /// Runs `f` on the connection's loop thread with the connection, or with `None`
    /// if it closed meanwhile (so the caller can keep what it meant to send).
    /// Safe to call from any thread.
    pub fn with(&self, f: impl FnOnce(Option<&TcpConnectionPtr>) + Send + 'static) {
        let (token, id) = (self.token, self.id);
        self.loop_handle.run_in_loop(move |lp| {
            f(lp.connection(token, id).as_ref());
        });
    }

    /// Looks the connection up on its loop. Must be called on the connection's loop thread.
    pub fn get(&self, lp: &EventLoop) -> Option<TcpConnectionPtr> {
        lp.connection(self.token, self.id)
    }

    /// Sends bytes; sends from one thread arrive in the order made. Safe to call from any thread.
    pub fn send(&self, data: impl Into<Vec<u8>>) {
        let data = data.into();
        self.run(move |conn| conn.send(&data));
    }

    /// Half-closes once the output is written. Safe to call from any thread.
    pub fn shutdown(&self) {
        self.run(|conn| conn.shutdown());
    }

    /// Closes at once. Safe to call from any thread.
    pub fn force_close(&self) {
        self.run(|conn| conn.force_close());
    }
}

/// Sends the same bytes to many connections with one task per loop instead of one
/// per connection (a group message's fan-out). For each connection the bytes keep
/// their place among the other sends made from this thread. Safe to call from any thread.
pub fn send_to_all(conns: &[ConnHandle], data: &Arc<[u8]>) {
    let mut by_loop: Vec<(LoopHandle, Vec<(usize, u64)>)> = Vec::new();
    for c in conns {
        match by_loop
            .iter_mut()
            .find(|(lh, _)| lh.same_loop(&c.loop_handle))
        {
            Some((_, v)) => v.push((c.token, c.id)),
            None => by_loop.push((c.loop_handle.clone(), vec![(c.token, c.id)])),
        }
    }
    for (lh, targets) in by_loop {
        let data = data.clone();
        lh.run_in_loop(move |lp| {
            for (token, id) in targets {
                if let Some(conn) = lp.connection(token, id) {
                    conn.send(&data);
                }
            }
        });
    }
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("token", &self.token)
            .field("id", &self.id)
            .finish()
    }
}
