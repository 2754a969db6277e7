//! TcpConnection: one established TCP connection, living on one loop; ConnHandle:
//! the `Send` handle other threads use to reach it.

use std::any::Any;
use std::cell::{Cell, RefCell, RefMut};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use mio::event::Event;
use mio::net::TcpStream;
use mio::Token;

use crate::buffer::Buffer;
use crate::callbacks::{
    CloseCallback, ConnectionCallback, HighWaterMarkCallback, MessageCallback,
    WriteCompleteCallback,
};
use crate::channel::Channel;
use crate::conn_handle::ConnHandle;
use crate::event_loop::{EventLoop, LoopHandle};
use crate::framer::OutputFramer;

/// How many `read` calls one readiness event may make before the connection yields
/// to the others on its loop; the rest is read in a deferred continuation.
const READ_BUDGET: usize = 16;
/// A bound on the bytes a connection reads from its socket before its message
/// callback runs: [`READ_BUDGET`] reads of at most [`Buffer::read_offer`] each. A
/// callback that stops reading (backpressure) leaves at most this much unread in user
/// space on top of what it had left. Twice what those reads can take since a read
/// offers at most 64 KiB (it offered up to 128 KiB with readv): the backpressure
/// tests' bounds are written in this unit, and what they measure held no less once
/// reads halved (websocket.rs's pings test held 2.26 MB against a bound of 2.2 at
/// half this).
pub const MAX_READ_BETWEEN_CALLBACKS: usize = READ_BUDGET * 2 * crate::buffer::EXTRA_BUF;
/// Sends shorter than this are coalesced until the end of the loop iteration; longer
/// ones are written at once when nothing is buffered (their syscall is cheap for
/// their size, and holding them back only adds latency).
const CORK_MAX: usize = 1024;
/// The default high-water mark of the output buffer: 64 MiB.
pub const DEFAULT_HIGH_WATER_MARK: usize = 64 * 1024 * 1024;

/// A connection's life: Connecting → Connected → (Disconnecting →) Disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted or connected, not yet announced to the user.
    Connecting,
    /// Established; reads and writes flow.
    Connected,
    /// `shutdown` or `force_close` was called; the socket is not closed yet.
    Disconnecting,
    /// Closed and removed from its loop.
    Disconnected,
}

/// The callbacks of one connection, copied from its server or client.
#[derive(Clone)]
pub(crate) struct ConnCallbacks {
    pub(crate) connection: ConnectionCallback,
    pub(crate) message: MessageCallback,
    pub(crate) write_complete: Option<WriteCompleteCallback>,
    pub(crate) high_water_mark: Option<(HighWaterMarkCallback, usize)>,
}

/// One TCP connection. Lives in its loop's slab; every method must be called on
/// that loop's thread. Hand [`TcpConnection::handle`] to other threads.
pub struct TcpConnection {
    name: String,
    /// Unique in the process: tells a reused slab slot's new occupant from the old one.
    id: u64,
    token: Cell<Token>,
    loop_handle: LoopHandle,
    stream: RefCell<TcpStream>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    state: Cell<State>,
    input: RefCell<Buffer>,
    output: RefCell<Buffer>,
    /// False while the user has paused reading (backpressure).
    reading: Cell<bool>,
    /// Readiness that arrived while reading was paused, so `start_read` resumes it.
    read_pending: Cell<bool>,
    callbacks: RefCell<ConnCallbacks>,
    high_water_mark: Cell<usize>,
    close_callback: RefCell<Option<CloseCallback>>,
    context: RefCell<Option<Box<dyn Any>>>,
    /// Output was appended while the loop was corked and waits for the loop's
    /// end-of-iteration flush (so it is taken once, however many frames).
    flush_queued: Cell<bool>,
    /// Output that `force_close` kept from being written, for
    /// [`TcpConnection::take_unsent_output`].
    discarded: RefCell<Vec<u8>>,
    /// The wire framing of what is sent (a WebSocket), if any: see [`OutputFramer`].
    framer: RefCell<Option<Box<dyn OutputFramer>>>,
}

impl TcpConnection {
    pub(crate) fn new(
        lp: &EventLoop,
        name: String,
        id: u64,
        stream: TcpStream,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        callbacks: ConnCallbacks,
    ) -> TcpConnection {
        let hwm = callbacks
            .high_water_mark
            .as_ref()
            .map_or(DEFAULT_HIGH_WATER_MARK, |(_, m)| *m);
        TcpConnection {
            name,
            id,
            token: Cell::new(Token(usize::MAX)),
            loop_handle: lp.handle(),
            stream: RefCell::new(stream),
            local_addr,
            peer_addr,
            state: Cell::new(State::Connecting),
            // Empty until used: an idle connection costs no buffer memory, and the
            // first read sizes the input to what actually arrived.
            input: RefCell::new(Buffer::with_capacity(0)),
            output: RefCell::new(Buffer::with_capacity(0)),
            reading: Cell::new(true),
            read_pending: Cell::new(false),
            callbacks: RefCell::new(callbacks),
            high_water_mark: Cell::new(hwm),
            close_callback: RefCell::new(None),
            context: RefCell::new(None),
            flush_queued: Cell::new(false),
            discarded: RefCell::new(Vec::new()),
            framer: RefCell::new(None),
        }
    }

    /// The connection's name, unique per server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process-wide unique connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Our end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.get()
    }

    /// True while established.
    pub fn connected(&self) -> bool {
        self.state.get() == State::Connected
    }

    /// True once closed.
    pub fn disconnected(&self) -> bool {
        self.state.get() == State::Disconnected
    }

    /// The handle of the loop this connection lives on.
    pub fn loop_handle(&self) -> &LoopHandle {
        &self.loop_handle
    }

    /// A `Send + Sync` handle that other threads use to send to or close this
    /// connection. It can never reach another connection that reuses the slot.
    pub fn handle(&self) -> ConnHandle {
        ConnHandle {
            loop_handle: self.loop_handle.clone(),
            token: self.token.get().0,
            id: self.id,
        }
    }

    /// Bytes waiting in the output buffer. Must be called on the loop thread.
    pub fn output_bytes(&self) -> usize {
        self.output.borrow().readable_bytes()
    }

    /// Takes the output that was never written to the socket (what was buffered
    /// when the connection closed, or when `force_close` discarded it), oldest
    /// first; a user that must not lose what it sent looks here in its close
    /// callback. Must be called on the loop thread.
    /// With a framer, the bytes are given back as they were sent, whole frames only
    /// ([`OutputFramer::decode_unsent`]).
    pub fn take_unsent_output(&self) -> Vec<u8> {
        let mut out = std::mem::take(&mut *self.discarded.borrow_mut());
        let mut buf = self.output.borrow_mut();
        out.extend_from_slice(buf.peek());
        buf.retrieve_all();
        match self.framer.borrow_mut().as_mut() {
            Some(f) => f.decode_unsent(&out),
            None => out,
        }
    }

    /// Puts `framer` between [`TcpConnection::send`] and the wire from now on (set
    /// it before the first framed send). Must be called on the loop thread.
    pub fn set_framer(&self, framer: Box<dyn OutputFramer>) {
        *self.framer.borrow_mut() = Some(framer);
    }

    /// Whether a framer is set.
    pub fn has_framer(&self) -> bool {
        self.framer.borrow().is_some()
    }

    /// Sets the output size at which the high-water-mark callback fires.
    pub fn set_high_water_mark(&self, mark: usize) {
        self.high_water_mark.set(mark);
    }

    /// The per-connection slot for whatever the application keeps with a connection.
    pub fn context(&self) -> RefMut<'_, Option<Box<dyn Any>>> {
        self.context.borrow_mut()
    }

    /// Stores `value` in the context slot.
    pub fn set_context<T: Any>(&self, value: T) {
        *self.context.borrow_mut() = Some(Box::new(value));
    }

    /// Runs `f` on the context if it holds a `T`.
    pub fn with_context<T: Any, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut ctx = self.context.borrow_mut();
        ctx.as_mut().and_then(|b| b.downcast_mut::<T>()).map(f)
    }

    /// Enables or disables Nagle's algorithm (true disables it).
    pub fn set_tcp_no_delay(&self, on: bool) -> io::Result<()> {
        self.stream.borrow().set_nodelay(on)
    }

    /// Sends `data`: written at once when nothing is queued, the rest buffered until
    /// the socket is writable. Dropped if the connection is not established.
    ///
    /// While its loop handles events and tasks, the bytes are appended and written at
    /// the end of that iteration together with whatever else the connection was sent
    /// meanwhile, so many small frames cost one `write`.
    ///
    /// With a framer set, `data` is framed first ([`OutputFramer::encode`]).
    pub fn send(self: &Rc<Self>, data: &[u8]) {
        if !self.can_send() {
            return;
        }
        let mut framer = self.framer.borrow_mut();
        if let Some(f) = framer.as_mut() {
            let mut wire = Vec::with_capacity(data.len() + 16);
            f.encode(data, self.output_bytes(), &mut wire);
            drop(framer);
            self.write_out(&wire);
        } else {
            drop(framer);
            self.write_out(data);
        }
    }

    /// Sends `data` as it is, past the framer (which is told, [`OutputFramer::raw`]):
    /// the framing protocol's own bytes, such as a handshake reply or a pong.
    pub fn send_wire(self: &Rc<Self>, data: &[u8]) {
        if !self.can_send() {
            return;
        }
        if let Some(f) = self.framer.borrow_mut().as_mut() {
            f.raw(data.len(), self.output_bytes());
        }
        self.write_out(data);
    }

    fn can_send(&self) -> bool {
        let up = self.state.get() == State::Connected;
        if !up {
            log::debug!(
                "{}: send on a connection that is not up, dropped",
                self.name
            );
        }
        up
    }

    fn write_out(self: &Rc<Self>, data: &[u8]) {
        let mut written = 0;
        let mut fault = false;
        // Written now only when nothing is buffered and the loop is not corked; a
        // connection already waiting for the flush just appends.
        let direct =
            self.output.borrow().is_empty() && !self.flush_queued.get() && !self.cork(data);
        if direct {
            loop {
                match (&*self.stream.borrow()).write(&data[written..]) {
                    Ok(n) => {
                        written += n;
                        if written == data.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("{}: write failed: {e}", self.name);
                        fault = true;
                        break;
                    }
                }
            }
            if written == data.len() {
                self.queue_write_complete();
                return;
            }
        }
        if fault {
            self.force_close();
            return;
        }
        let rest = &data[written..];
        let old_len = self.output.borrow().readable_bytes();
        self.output.borrow_mut().append(rest);
        if !self.flush_queued.get() {
            // Corked bytes are judged at the flush, by what the socket did not take.
            self.check_high_water(old_len, old_len + rest.len());
        }
    }

    /// Queues the high-water-mark callback if the output grew across the mark.
    fn check_high_water(self: &Rc<Self>, old_len: usize, new_len: usize) {
        let mark = self.high_water_mark.get();
        if old_len < mark && new_len >= mark {
            let cb = self.callbacks.borrow().high_water_mark.clone();
            if let (Some((cb, _)), Some(lp)) = (cb, EventLoop::current()) {
                let conn = self.clone();
                lp.defer(move |_| cb(&conn, new_len));
            }
        }
    }

    /// Hands the connection to its loop's end-of-iteration flush if the loop is
    /// corked and `data` is small enough to hold back; true if so.
    fn cork(self: &Rc<Self>, data: &[u8]) -> bool {
        if data.len() >= CORK_MAX || !EventLoop::current().is_some_and(|lp| lp.cork(self)) {
            return false;
        }
        self.flush_queued.set(true);
        true
    }

    /// Closes our writing half once everything queued has been written; reading
    /// goes on until the peer closes. A framer's closing bytes go out last.
    pub fn shutdown(self: &Rc<Self>) {
        if self.state.get() == State::Connected {
            let closing = self.framer.borrow_mut().as_mut().and_then(|f| f.closing());
            if let Some(bytes) = closing {
                self.send_wire(&bytes);
            }
            self.state.set(State::Disconnecting);
            if self.output.borrow().is_empty() {
                self.shutdown_write();
            }
        }
    }

    /// Closes the connection now, discarding unsent output. The close callbacks run
    /// after the current event.
    pub fn force_close(self: &Rc<Self>) {
        if matches!(self.state.get(), State::Connected | State::Disconnecting) {
            self.state.set(State::Disconnecting);
            // Not written by a flush or writable event before the close runs; kept
            // for `take_unsent_output`.
            let mut out = self.output.borrow_mut();
            self.discarded.borrow_mut().extend_from_slice(out.peek());
            out.retrieve_all();
            if let Some(lp) = EventLoop::current() {
                let conn = self.clone();
                lp.defer(move |lp| conn.handle_close(lp));
            }
        }
    }

    /// Pauses reading: bytes stay in the kernel and TCP flow control pushes back.
    pub fn stop_read(&self) {
        self.reading.set(false);
    }

    /// Resumes reading, handling any readiness that arrived meanwhile; bytes the
    /// message callback left in the input buffer are handed to it again.
    pub fn start_read(self: &Rc<Self>) {
        if self.reading.replace(true) {
            return;
        }
        let pending = self.read_pending.replace(false);
        let unread = !self.input.borrow().is_empty();
        if pending || unread {
            if let Some(lp) = EventLoop::current() {
                let conn = self.clone();
                lp.defer(move |lp| conn.resume(lp, pending));
            }
        }
    }

    /// The deferred half of `start_read`.
    fn resume(self: &Rc<Self>, lp: &EventLoop, pending: bool) {
        if !self.reading.get() || self.state.get() == State::Disconnected {
            self.read_pending.set(self.read_pending.get() || pending);
            return;
        }
        if !self.input.borrow().is_empty() {
            let cb = self.callbacks.borrow().message.clone();
            let mut input = self.input.borrow_mut();
            cb(self, &mut input);
        }
        if pending {
            self.handle_read(lp, false);
        }
    }

    /// Hands the input buffer, even an empty one, to the message callback after
    /// the current event if the connection is reading by then: for a layer that keeps
    /// bytes it took from the input (a WebSocket's decoder) and must go on with them
    /// when reading resumes. Must be called on the loop thread.
    pub fn redeliver(self: &Rc<Self>) {
        if let Some(lp) = EventLoop::current() {
            let conn = self.clone();
            lp.defer(move |_| {
                if conn.reading.get() && conn.state.get() != State::Disconnected {
                    let cb = conn.callbacks.borrow().message.clone();
                    let mut input = conn.input.borrow_mut();
                    cb(&conn, &mut input);
                }
            });
        }
    }

    /// True unless reading is paused.
    pub fn is_reading(&self) -> bool {
        self.reading.get()
    }

    pub(crate) fn set_token(&self, token: Token) {
        self.token.set(token);
    }

    pub(crate) fn set_close_callback(&self, cb: CloseCallback) {
        *self.close_callback.borrow_mut() = Some(cb);
    }

    pub(crate) fn stream_mut(&self) -> RefMut<'_, TcpStream> {
        self.stream.borrow_mut()
    }

    /// Called once the connection is registered on its loop.
    pub(crate) fn connect_established(self: &Rc<Self>) {
        debug_assert_eq!(self.state.get(), State::Connecting);
        self.state.set(State::Connected);
        let cb = self.callbacks.borrow().connection.clone();
        cb(self);
    }

    fn queue_write_complete(self: &Rc<Self>) {
        let cb = self.callbacks.borrow().write_complete.clone();
        if let (Some(cb), Some(lp)) = (cb, EventLoop::current()) {
            lp.defer_write_complete(self.clone(), cb);
        }
    }

    fn shutdown_write(&self) {
        if let Err(e) = self.stream.borrow().shutdown(Shutdown::Write) {
            log::debug!("{}: shutdown: {e}", self.name);
        }
    }

    /// Reads what the socket has. A read that returns less than it offered means
    /// the socket is empty (edge-triggered readiness fires again on new data), so it
    /// stops there and saves the `read` that would say `WouldBlock` — unless the
    /// peer's FIN or an error was reported (`to_eof`): no new edge would announce the
    /// end of stream, so it reads until the kernel says so.
    fn handle_read(self: &Rc<Self>, lp: &EventLoop, to_eof: bool) {
        if self.state.get() == State::Disconnected {
            return;
        }
        if !self.reading.get() {
            if to_eof {
                // The peer closed (FIN) or reset the connection while we were not
                // reading: nothing would notice it until reading resumes, which for
                // a reader that left may be never. Close now, as an EOF does.
                log::debug!("{}: peer closed while reading was paused", self.name);
                self.handle_close(lp);
                return;
            }
            self.read_pending.set(true);
            return;
        }
        let mut got = 0;
        let mut closed = false;
        let mut reads = 0;
        while reads < READ_BUDGET {
            reads += 1;
            let (offered, result) = {
                let mut input = self.input.borrow_mut();
                let offered = input.read_offer();
                (offered, input.read_from(&mut &*self.stream.borrow()))
            };
            match result {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) if n < offered && !to_eof => {
                    got += n;
                    reads = 0;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    reads = 0;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("{}: read failed: {e}", self.name);
                    closed = true;
                    break;
                }
            }
        }
        if got > 0 && self.state.get() != State::Disconnected {
            let cb = self.callbacks.borrow().message.clone();
            let mut input = self.input.borrow_mut();
            cb(self, &mut input);
            if input.is_empty() && input.internal_capacity() > 64 * 1024 {
                input.shrink(0); // a burst is over: give its memory back
            }
        }
        if closed {
            self.handle_close(lp);
        } else if reads == READ_BUDGET {
            // Budget spent before WouldBlock: the edge will not fire again, so come
            // back after the other sockets of this loop had their turn.
            let conn = self.clone();
            lp.defer(move |lp| conn.handle_read(lp, to_eof));
        }
    }

    /// The loop's end-of-iteration flush of output appended while it was corked.
    pub(crate) fn flush_output(self: &Rc<Self>) {
        self.flush_queued.set(false);
        self.handle_write();
        if self.state.get() == State::Connected {
            // The output was empty when the cork began.
            let left = self.output.borrow().readable_bytes();
            self.check_high_water(0, left);
        }
    }

    fn handle_write(self: &Rc<Self>) {
        if self.state.get() == State::Disconnected {
            return;
        }
        let mut out = self.output.borrow_mut();
        if out.is_empty() {
            return;
        }
        let mut fault = false;
        while !out.is_empty() {
            match (&*self.stream.borrow()).write(out.peek()) {
                Ok(n) => out.retrieve(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("{}: write failed: {e}", self.name);
                    fault = true;
                    break;
                }
            }
        }
        let drained = out.is_empty();
        if drained && out.internal_capacity() > 1024 * 1024 {
            out.shrink(0); // a burst is over: give its memory back
        }
        drop(out);
        if fault {
            self.force_close();
        } else if drained {
            self.queue_write_complete();
            if self.state.get() == State::Disconnecting {
                self.shutdown_write();
            }
        }
    }

    pub(crate) fn handle_close(self: &Rc<Self>, lp: &EventLoop) {
        if self.state.get() == State::Disconnected {
            return;
        }
        self.state.set(State::Disconnected);
        lp.deregister(self.token.get(), &mut *self.stream.borrow_mut());
        let cb = self.callbacks.borrow().connection.clone();
        cb(self);
        let close = self.close_callback.borrow_mut().take();
        if let Some(close) = close {
            close(self);
        }
    }
}

impl Channel for TcpConnection {
    fn handle_event(self: Rc<Self>, lp: &EventLoop, event: &Event) {
        if event.is_writable() {
            self.handle_write();
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.handle_read(lp, event.is_read_closed() || event.is_error());
        }
        if event.is_write_closed() && !event.is_readable() && self.output_bytes() > 0 {
            // The peer is gone and we still have output: nothing will drain it.
            self.handle_close(lp);
        }
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        log::trace!("{} dropped in state {:?}", self.name, self.state.get());
    }
}
