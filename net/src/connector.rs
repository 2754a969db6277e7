//! Connector: a non-blocking connect with retry and backoff (internal, used by TcpClient).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::channel::Channel;
use crate::event_loop::{EventLoop, Slot};
use crate::timer_queue::TimerId;

/// First retry delay; doubles up to [`MAX_RETRY_DELAY`].
const INIT_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Receives the connected stream.
pub(crate) type NewStreamCallback = Box<dyn Fn(&EventLoop, TcpStream)>;

pub(crate) struct Connector {
    addr: SocketAddr,
    /// False after `stop`: no more attempts.
    wanted: Cell<bool>,
    retry_delay: Cell<Duration>,
    /// The socket while a connect is in progress, with its token.
    pending: RefCell<Option<(TcpStream, Token)>>,
    timer: Cell<Option<TimerId>>,
    new_stream: RefCell<Option<NewStreamCallback>>,
}

impl Connector {
    pub(crate) fn new(addr: SocketAddr) -> Connector {
        Connector {
            addr,
            wanted: Cell::new(false),
            retry_delay: Cell::new(INIT_RETRY_DELAY),
            pending: RefCell::new(None),
            timer: Cell::new(None),
            new_stream: RefCell::new(None),
        }
    }

    pub(crate) fn set_new_stream_callback(&self, cb: NewStreamCallback) {
        *self.new_stream.borrow_mut() = Some(cb);
    }

    /// Starts connecting. Must be called on the loop thread.
    pub(crate) fn start(self: &Rc<Self>, lp: &EventLoop) {
        self.wanted.set(true);
        self.connect(lp);
    }

    /// Connects again from the initial delay (after an established connection closed).
    pub(crate) fn restart(self: &Rc<Self>, lp: &EventLoop) {
        self.retry_delay.set(INIT_RETRY_DELAY);
        self.start(lp);
    }

    /// Stops any attempt in progress and any scheduled retry.
    pub(crate) fn stop(&self, lp: &EventLoop) {
        self.wanted.set(false);
        if let Some(t) = self.timer.take() {
            lp.cancel(t);
        }
        if let Some((mut stream, token)) = self.pending.borrow_mut().take() {
            lp.deregister(token, &mut stream);
        }
    }

    fn connect(self: &Rc<Self>, lp: &EventLoop) {
        if !self.wanted.get() || self.pending.borrow().is_some() {
            return;
        }
        match TcpStream::connect(self.addr) {
            Ok(mut stream) => {
                let me = self.clone();
                match lp.register(&mut stream, Interest::WRITABLE, move |_| Slot::Other(me)) {
                    Ok(token) => *self.pending.borrow_mut() = Some((stream, token)),
                    Err(e) => {
                        log::error!("connector register: {e}");
                        self.retry(lp);
                    }
                }
            }
            Err(e) => {
                log::debug!("connect to {}: {e}", self.addr);
                self.retry(lp);
            }
        }
    }

    fn retry(self: &Rc<Self>, lp: &EventLoop) {
        if !self.wanted.get() {
            return;
        }
        let delay = self.retry_delay.get();
        log::debug!("connector: retry connecting to {} in {delay:?}", self.addr);
        let me = self.clone();
        let id = lp.run_after(delay, move |lp| {
            me.timer.set(None);
            me.connect(lp);
        });
        self.timer.set(Some(id));
        self.retry_delay.set((delay * 2).min(MAX_RETRY_DELAY));
    }

    /// Checks the finished connect: error, self-connect, or success.
    fn finish(stream: &TcpStream) -> io::Result<()> {
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        let peer = stream.peer_addr()?; // NotConnected when the connect failed
        if stream.local_addr()? == peer {
            return Err(io::Error::other("self connect"));
        }
        Ok(())
    }
}

impl Channel for Connector {
    fn handle_event(self: Rc<Self>, lp: &EventLoop, event: &Event) {
        if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
            return;
        }
        let Some((mut stream, token)) = self.pending.borrow_mut().take() else {
            return;
        };
        lp.deregister(token, &mut stream);
        match Connector::finish(&stream) {
            Ok(()) if self.wanted.get() => {
                self.retry_delay.set(INIT_RETRY_DELAY);
                if let Some(cb) = &*self.new_stream.borrow() {
                    cb(lp, stream);
                }
            }
            Ok(()) => {}
            Err(e) => {
                log::debug!("connect to {} failed: {e}", self.addr);
                drop(stream);
                self.retry(lp);
            }
        }
    }
}
