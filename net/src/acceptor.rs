//! Acceptor: the listening socket on the base loop; accepts until `WouldBlock` (internal).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::channel::Channel;
use crate::event_loop::{EventLoop, Slot};
use crate::timer_queue::TimerId;

/// Listen backlog.
const BACKLOG: i32 = 4096;
/// How long to wait before accepting again when no descriptor is left at all.
const EMFILE_RETRY: Duration = Duration::from_millis(100);

/// What the acceptor hands each new connection to.
pub(crate) type NewConnectionCallback = Box<dyn Fn(&EventLoop, TcpStream, SocketAddr)>;

pub(crate) struct Acceptor {
    listener: RefCell<TcpListener>,
    token: Cell<Option<Token>>,
    /// A spare descriptor (`/dev/null`): when accept fails with EMFILE we free it,
    /// accept the waiting connection and close it at once, so the peer is told no
    /// instead of waiting forever and the loop does not spin on a full backlog.
    idle_fd: RefCell<Option<File>>,
    retry_timer: Cell<Option<TimerId>>,
    /// Connections refused for want of descriptors since the last warning, and when
    /// that was: one line a second at most, however hard the flood.
    refused: Cell<u64>,
    refused_logged: Cell<Option<std::time::Instant>>,
    new_connection: RefCell<Option<NewConnectionCallback>>,
}

impl Acceptor {
    /// Binds `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT` when asked), non-blocking.
    pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Acceptor> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener = TcpListener::from_std(socket.into());
        Ok(Acceptor {
            listener: RefCell::new(listener),
            token: Cell::new(None),
            idle_fd: RefCell::new(File::open("/dev/null").ok()),
            retry_timer: Cell::new(None),
            refused: Cell::new(0),
            refused_logged: Cell::new(None),
            new_connection: RefCell::new(None),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.borrow().local_addr()
    }

    pub(crate) fn set_new_connection_callback(&self, cb: NewConnectionCallback) {
        *self.new_connection.borrow_mut() = Some(cb);
    }

    /// Starts listening for readiness on `lp`. Must be called on the loop thread.
    pub(crate) fn listen(self: &Rc<Self>, lp: &EventLoop) -> io::Result<()> {
        let me = self.clone();
        let token = lp.register(
            &mut *self.listener.borrow_mut(),
            Interest::READABLE,
            move |_| Slot::Other(me),
        )?;
        self.token.set(Some(token));
        // Connections may have queued before we registered: edge-triggered readiness
        // would not report them, so accept once now.
        self.accept_all(lp);
        Ok(())
    }

    /// Stops listening. Must be called on the loop thread.
    pub(crate) fn stop(&self, lp: &EventLoop) {
        if let Some(token) = self.token.take() {
            lp.deregister(token, &mut *self.listener.borrow_mut());
        }
        if let Some(timer) = self.retry_timer.take() {
            lp.cancel(timer);
        }
    }

    fn accept_all(self: &Rc<Self>, lp: &EventLoop) {
        loop {
            let accepted = self.listener.borrow().accept();
            match accepted {
                Ok((stream, peer)) => {
                    if let Some(cb) = &*self.new_connection.borrow() {
                        cb(lp, stream, peer);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // accept keeps failing with EMFILE even when the backlog is
                    // empty (the descriptor is allocated first), so only go round
                    // again after the spare really took a connection off the queue.
                    let spare = self.idle_fd.borrow_mut().take();
                    let Some(spare) = spare else {
                        self.retry_later(lp);
                        return;
                    };
                    drop(spare);
                    let refused = self.listener.borrow().accept();
                    // Close the refused connection first: the spare needs its descriptor.
                    let refused = refused.map(|(stream, _)| drop(stream));
                    *self.idle_fd.borrow_mut() = File::open("/dev/null").ok();
                    match refused {
                        Ok(()) => self.note_refused(),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => {
                            self.retry_later(lp);
                            return;
                        }
                    }
                }
                Err(e) => {
                    log::error!("accept failed: {e}");
                    self.retry_later(lp);
                    return;
                }
            }
        }
    }

    fn note_refused(&self) {
        self.refused.set(self.refused.get() + 1);
        let now = std::time::Instant::now();
        let due = self
            .refused_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            log::warn!(
                "accept: out of descriptors, refused {} connection(s)",
                self.refused.replace(0)
            );
            self.refused_logged.set(Some(now));
        }
    }

    /// With no spare descriptor left, try again on a timer rather than spinning.
    fn retry_later(self: &Rc<Self>, lp: &EventLoop) {
        if self.retry_timer.get().is_some() {
            return;
        }
        let me = self.clone();
        let id = lp.run_after(EMFILE_RETRY, move |lp| {
            me.retry_timer.set(None);
            if me.idle_fd.borrow().is_none() {
                *me.idle_fd.borrow_mut() = File::open("/dev/null").ok();
            }
            if me.token.get().is_some() {
                me.accept_all(lp);
            }
        });
        self.retry_timer.set(Some(id));
    }
}

impl Channel for Acceptor {
    fn handle_event(self: Rc<Self>, lp: &EventLoop, _event: &Event) {
        self.accept_all(lp);
    }
}
